//! `spool status`: one look at a server (like `redis-cli INFO` or `nats
//! server report jetstream`): version, uptime, where it listens and keeps
//! its data, what it stores and how much disk is left, and in a cluster
//! the brokers and the controller.

use spool::protocol::requests::{ListGroupsRequest, MetadataRequest, ServerStatusRequest};

use spool::server::display::{bytes, duration};

use crate::{Failure, DEFAULT_ADDR};

/// Arguments of `spool status`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  spool status
  spool status --addr 10.0.0.5:7070 --json")]
pub struct StatusArgs {
    #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> Result<(), Failure> {
    let client = crate::connect(&args.addr).await?;
    let status = client.call(&ServerStatusRequest).await?;
    let topics = client.list_topics().await?;
    let groups = client.call(&ListGroupsRequest).await?.groups;
    let metadata = client.call(&MetadataRequest).await?;
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let messages: u64 = topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| p.end - p.start)
        .sum();
    let cluster = metadata.brokers.iter().any(|b| b.id != 0);
    if args.json {
        let brokers: Vec<_> = metadata
            .brokers
            .iter()
            .map(|b| serde_json::json!({ "id": b.id, "addr": b.addr, "alive": b.alive, "voter": b.voter }))
            .collect();
        let mut o = serde_json::json!({
            "version": status.version,
            "uptime_ms": status.uptime_ms,
            "node": status.node,
            "listen": status.listen,
            "data_dir": status.data_dir,
            "stored_bytes": status.stored_bytes,
            "disk_free_bytes": status.disk_free_bytes,
            "disk_total_bytes": status.disk_total_bytes,
            "topics": topics.len(),
            "partitions": partitions,
            "messages": messages,
            "groups": groups.len(),
        });
        if cluster {
            o["cluster"] = serde_json::json!({
                "controller": metadata.controller,
                "term": metadata.term,
                "placement_epoch": metadata.epoch,
                "brokers": brokers,
            });
        }
        return crate::print_json(&o);
    }
    println!(
        "spool {} up {}",
        status.version,
        duration(status.uptime_ms / 1000)
    );
    println!("  listen: {}", status.listen);
    println!(
        "  data: {} ({} stored, {} free of {})",
        status.data_dir,
        bytes(status.stored_bytes),
        bytes(status.disk_free_bytes),
        bytes(status.disk_total_bytes)
    );
    println!(
        "  topics: {} ({partitions} {}, {messages} {})",
        topics.len(),
        crate::plural(partitions as u64, "partition"),
        crate::plural(messages, "message")
    );
    println!("  groups: {}", groups.len());
    if cluster {
        let controller = metadata
            .controller
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        println!(
            "  cluster: node {}, controller {controller}, term {}, placement epoch {}",
            status.node, metadata.term, metadata.epoch
        );
        for b in &metadata.brokers {
            println!(
                "    broker {}\t{}\t{}{}",
                b.id,
                b.addr,
                if b.alive { "alive" } else { "expired" },
                if b.voter { "\tvoter" } else { "" }
            );
        }
    }
    Ok(())
}
