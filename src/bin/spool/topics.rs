//! `spool topics create|list|describe|delete`.

use spool::client::{TopicDescription, TopicOptions};
use spool::SyncPolicy;

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    #[command(
        after_help = "Examples:\n  spool topics create orders --partitions 6 --sync always\n  spool topics create logs --retention-ms 86400000 --segment-bytes 67108864"
    )]
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions, 1 or more [default: the server's].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        partitions: Option<u32>,
        /// always, interval, interval:MS or never [default: the server's].
        #[arg(long)]
        sync: Option<SyncPolicy>,
        /// Segment size in bytes [default: the server's].
        #[arg(long)]
        segment_bytes: Option<u64>,
        /// Retention by age in ms, 0 = forever [default: the server's].
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Retention by size in bytes per partition, 0 = unlimited [default: the server's].
        #[arg(long)]
        retention_bytes: Option<u64>,
        /// Copies of each partition in a cluster [default: 3, or the
        /// broker count if smaller].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        replication: Option<u32>,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// List topics.
    #[command(
        after_help = "Examples:\n  spool topics list\n  spool topics list --json | jq '.[].name'"
    )]
    List {
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON (an array of topics, as describe --json prints one).
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's settings and partition offsets.
    #[command(
        after_help = "Examples:\n  spool topics describe orders\n  spool topics describe orders --json"
    )]
    Describe {
        /// Topic name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and all its messages.
    #[command(after_help = "Examples:\n  spool topics delete orders")]
    Delete {
        /// Topic name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
}

pub async fn run(command: TopicsCommand) -> Result<(), Failure> {
    match command {
        TopicsCommand::Create {
            name,
            partitions,
            sync,
            segment_bytes,
            retention_ms,
            retention_bytes,
            replication,
            addr,
        } => {
            let client = crate::connect(&addr).await?;
            let settings = TopicOptions {
                sync: sync.map(Into::into),
                segment_size_bytes: segment_bytes,
                retention_ms,
                retention_bytes,
                replication,
            };
            client
                .create_topic(&name, partitions.unwrap_or(0), settings)
                .await?;
            let created = client.describe_topic(&name).await?;
            let n = created.partitions.len() as u64;
            println!(
                "created topic {name} with {n} {}",
                crate::plural(n, "partition")
            );
        }
        TopicsCommand::List { addr, json } => {
            let client = crate::connect(&addr).await?;
            let topics = client.list_topics().await?;
            if json {
                let all: Vec<_> = topics
                    .iter()
                    .map(|t| topic_json(t, &Default::default()))
                    .collect();
                return crate::print_json(&serde_json::Value::Array(all));
            }
            if topics.is_empty() {
                println!("no topics");
            }
            for t in topics {
                let messages: u64 = t.partitions.iter().map(|p| p.end - p.start).sum();
                println!(
                    "{}\tpartitions={}\tmessages={messages}",
                    t.name,
                    t.partitions.len()
                );
            }
        }
        TopicsCommand::Describe { name, addr, json } => {
            let client = crate::connect(&addr).await?;
            let leaders = partition_leaders(&client, &name).await;
            let topic = client.describe_topic(&name).await?;
            if json {
                return crate::print_json(&topic_json(&topic, &leaders));
            }
            print_topic(&topic, &leaders);
        }
        TopicsCommand::Delete { name, addr } => {
            let client = crate::connect(&addr).await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// A topic as JSON: settings, and per partition its offsets (and leader
/// in a cluster).
fn topic_json(
    t: &TopicDescription,
    leaders: &std::collections::HashMap<u32, (u64, String)>,
) -> serde_json::Value {
    let partitions: Vec<_> = t
        .partitions
        .iter()
        .map(|p| {
            let mut o = serde_json::json!({
                "partition": p.partition,
                "start": p.start,
                "end": p.end,
                "messages": p.end - p.start,
            });
            if let Some((id, addr)) = leaders.get(&p.partition) {
                o["leader"] = serde_json::json!({ "id": id, "addr": addr });
            }
            o
        })
        .collect();
    serde_json::json!({
        "name": t.name,
        "sync": SyncPolicy::from(t.sync).to_string(),
        "segment_bytes": t.segment_size_bytes,
        "retention_ms": (t.retention_ms != 0).then_some(t.retention_ms),
        "retention_bytes": (t.retention_bytes != 0).then_some(t.retention_bytes),
        "partitions": partitions,
    })
}

/// Each partition's leader (id and address), in a cluster (empty for a
/// single node; a partition without a leader is absent).
async fn partition_leaders(
    client: &spool::client::Client,
    topic: &str,
) -> std::collections::HashMap<u32, (u64, String)> {
    let Ok(m) = client
        .call(&spool::protocol::requests::MetadataRequest)
        .await
    else {
        return Default::default();
    };
    if m.brokers.iter().all(|b| b.id == 0) {
        return Default::default();
    }
    let addr_of: std::collections::HashMap<u64, &str> =
        m.brokers.iter().map(|b| (b.id, b.addr.as_str())).collect();
    m.topics
        .iter()
        .filter(|t| t.name == topic)
        .flat_map(|t| t.partitions.iter())
        .filter_map(|p| {
            let l = p.leader?;
            Some((
                p.partition,
                (l, addr_of.get(&l).unwrap_or(&"?").to_string()),
            ))
        })
        .collect()
}

fn print_topic(t: &TopicDescription, leaders: &std::collections::HashMap<u32, (u64, String)>) {
    let sync = SyncPolicy::from(t.sync);
    let or_none = |v: u64| {
        if v == 0 {
            "none".to_string()
        } else {
            v.to_string()
        }
    };
    println!(
        "topic {}\n  sync: {sync}\n  segment_bytes: {}\n  retention_ms: {}\n  retention_bytes: {}\n  partitions:",
        t.name,
        t.segment_size_bytes,
        or_none(t.retention_ms),
        or_none(t.retention_bytes)
    );
    let cluster = !leaders.is_empty();
    for p in &t.partitions {
        match leaders.get(&p.partition) {
            Some((id, addr)) => println!(
                "    {}\tstart={}\tend={}\tleader={id} ({addr})",
                p.partition, p.start, p.end
            ),
            None if cluster => println!("    {}\tleader=none (unavailable)", p.partition),
            None => println!("    {}\tstart={}\tend={}", p.partition, p.start, p.end),
        }
    }
}
