//! `spool topics create|list|describe|delete`.

use spool::client::{TopicDescription, TopicOptions};
use spool::SyncPolicy;

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
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
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// List topics.
    List {
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Show a topic's settings and partition offsets.
    Describe {
        /// Topic name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Delete a topic and all its messages.
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
            addr,
        } => {
            let client = crate::connect(&addr).await?;
            let settings = TopicOptions {
                sync: sync.map(Into::into),
                segment_size_bytes: segment_bytes,
                retention_ms,
                retention_bytes,
            };
            client
                .create_topic(&name, partitions.unwrap_or(0), settings)
                .await?;
            let created = client.describe_topic(&name).await?;
            let n = created.partitions.len();
            println!(
                "created topic {name} with {n} {}",
                if n == 1 { "partition" } else { "partitions" }
            );
        }
        TopicsCommand::List { addr } => {
            let client = crate::connect(&addr).await?;
            for t in client.list_topics().await? {
                let messages: u64 = t.partitions.iter().map(|p| p.end - p.start).sum();
                println!(
                    "{}\tpartitions={}\tmessages={messages}",
                    t.name,
                    t.partitions.len()
                );
            }
        }
        TopicsCommand::Describe { name, addr } => {
            let client = crate::connect(&addr).await?;
            let leaders = partition_leaders(&client, &name).await;
            print_topic(&client.describe_topic(&name).await?, &leaders);
        }
        TopicsCommand::Delete { name, addr } => {
            let client = crate::connect(&addr).await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// Each partition's leader and its address, in a cluster (empty for a
/// single node).
async fn partition_leaders(
    client: &spool::client::Client,
    topic: &str,
) -> std::collections::HashMap<u32, String> {
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
        .map(|p| {
            let leader = match p.leader {
                Some(l) => format!("leader={l} ({})", addr_of.get(&l).unwrap_or(&"?")),
                None => "leader=none (unavailable)".to_string(),
            };
            (p.partition, leader)
        })
        .collect()
}

fn print_topic(t: &TopicDescription, leaders: &std::collections::HashMap<u32, String>) {
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
    for p in &t.partitions {
        match leaders.get(&p.partition) {
            // Offsets are the leader's; another broker's copy is empty.
            Some(leader) => println!("    {}\t{leader}", p.partition),
            None => println!("    {}\tstart={}\tend={}", p.partition, p.start, p.end),
        }
    }
}
