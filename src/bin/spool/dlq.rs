//! `spool dlq list|replay`: a queue group's dead letters, and moving them
//! back for delivery.

use spool::client::{DeadLetter, ReplayOptions};

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// A group's dead letters not replayed yet: where each came from, how
    /// often it was delivered, why the group gave up on it.
    #[command(
        after_help = "Examples:\n  spool dlq list workers\n  spool dlq list workers --max 10 --json"
    )]
    List {
        /// The queue group.
        group: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        max: usize,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON (one object per dead letter).
        #[arg(long)]
        json: bool,
    },
    /// Produce a group's dead letters again, to the topic and partition
    /// each came from (or to --to), with their headers and a replay count;
    /// the next replay resumes after the last one replayed.
    #[command(
        after_help = "Examples:\n  spool dlq replay workers\n  spool dlq replay workers --count 10\n  spool dlq replay workers --to orders.retry"
    )]
    Replay {
        /// The queue group.
        group: String,
        /// At most this many [default: every one there is now].
        #[arg(long)]
        count: Option<u64>,
        /// Produce them to this topic instead (a keyed one to its key's
        /// partition).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
}

fn to_json(d: &DeadLetter) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for (name, value) in [
        ("dlq_offset", d.offset.into()),
        ("topic", d.topic.clone().into()),
        ("partition", d.partition.into()),
        ("offset", d.original_offset.into()),
        ("deliveries", d.deliveries.into()),
        ("reason", d.reason.clone().into()),
        ("replays", d.replays.into()),
        ("timestamp_ms", d.timestamp_ms.into()),
    ] {
        object.insert(name.to_string(), value);
    }
    if let Some(key) = &d.key {
        crate::consume::put_bytes(&mut object, "key", key);
    }
    crate::consume::put_bytes(&mut object, "value", &d.value);
    serde_json::Value::Object(object)
}

/// At most 60 characters of the value, as text if it is UTF-8.
fn preview(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if text.chars().count() > 60 => {
            format!("{}...", text.chars().take(57).collect::<String>())
        }
        Ok(text) => text.to_string(),
        Err(_) => format!("<{} bytes>", value.len()),
    }
}

pub async fn run(command: DlqCommand) -> Result<(), Failure> {
    match command {
        DlqCommand::List {
            group,
            max,
            addr,
            json,
        } => {
            let client = crate::connect(&addr).await?;
            let letters = client.dead_letters(&group, max).await?;
            if json {
                return crate::print_json(&serde_json::Value::Array(
                    letters.iter().map(to_json).collect(),
                ));
            }
            println!(
                "{:>8}  {:<24} {:>5} {:>10} {:>5} {:>7}  {:<24} VALUE",
                "DLQ", "TOPIC", "PART", "OFFSET", "TRIES", "REPLAYS", "REASON"
            );
            for d in &letters {
                println!(
                    "{:>8}  {:<24} {:>5} {:>10} {:>5} {:>7}  {:<24} {}",
                    d.offset,
                    d.topic,
                    d.partition,
                    d.original_offset,
                    d.deliveries,
                    d.replays,
                    d.reason,
                    preview(&d.value)
                );
            }
        }
        DlqCommand::Replay {
            group,
            count,
            to,
            addr,
        } => {
            let client = crate::connect(&addr).await?;
            let report = client
                .replay_dead_letters(&group, ReplayOptions { count, to })
                .await?;
            println!("replayed {} dead letters", report.replayed);
            for (topic, n) in &report.by_topic {
                println!("  {n} to {topic}");
            }
        }
    }
    Ok(())
}
