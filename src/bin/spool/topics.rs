//! `spool topics create|list|describe|delete`.

use spool::client::{Client, TopicDescription, TopicOptions};
use spool::SyncPolicy;

use crate::{resolve, Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions [default: the server's].
        #[arg(long)]
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
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// List topics.
    List {
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Show a topic's settings and partition offsets.
    Describe {
        /// Topic name.
        name: String,
        #[arg(long, default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Delete a topic and all its messages.
    Delete {
        /// Topic name.
        name: String,
        #[arg(long, default_value = DEFAULT_ADDR)]
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
            let client = Client::connect(resolve(&addr)?).await?;
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
            println!(
                "created topic {name} with {} partitions",
                created.partitions.len()
            );
        }
        TopicsCommand::List { addr } => {
            let client = Client::connect(resolve(&addr)?).await?;
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
            let client = Client::connect(resolve(&addr)?).await?;
            print_topic(&client.describe_topic(&name).await?);
        }
        TopicsCommand::Delete { name, addr } => {
            let client = Client::connect(resolve(&addr)?).await?;
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

fn print_topic(t: &TopicDescription) {
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
        println!("    {}\tstart={}\tend={}", p.partition, p.start, p.end);
    }
}
