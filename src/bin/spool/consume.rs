//! `spool consume`: print message values, one per line.

use std::collections::HashMap;
use std::io::Write;

use spool::client::{Client, Consumer, ConsumerConfig, StartAt};

use crate::{Failure, DEFAULT_ADDR};

/// Arguments of `spool consume`.
#[derive(clap::Args)]
pub struct ConsumeArgs {
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: String,
    /// Topic to consume.
    #[arg(long)]
    topic: String,
    /// earliest, latest, an offset (in every partition), or time:MS (the
    /// first message at or after MS milliseconds since the Unix epoch).
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Keep waiting for new messages instead of exiting at the end of the log.
    #[arg(long)]
    follow: bool,
    /// Consume as a member of this queue-mode group: the broker shares the
    /// messages out among the group's consumers.
    #[arg(long)]
    group: Option<String>,
    /// With --group: ack each message after printing it (a killed consumer's
    /// unprinted messages are redelivered). Without it, messages are acked
    /// as they are received.
    #[arg(long, requires = "group")]
    ack: bool,
}

pub async fn run(args: ConsumeArgs) -> Result<(), Failure> {
    let start = match args.from.as_str() {
        "earliest" => StartAt::Earliest,
        "latest" => StartAt::Latest,
        other => match other.strip_prefix("time:") {
            Some(ms) => StartAt::Timestamp(ms.parse().map_err(|_| {
                Failure::usage(format!("--from time: takes milliseconds, not {ms:?}"))
            })?),
            None => StartAt::Offset(other.parse().map_err(|_| {
                Failure::usage(format!(
                    "--from takes earliest, latest, an offset or time:MS, not {other:?}"
                ))
            })?),
        },
    };
    let client = crate::connect(&args.addr).await?;
    if let Some(group) = &args.group {
        return consume_group(client, group, &args).await;
    }
    let topic = client.describe_topic(&args.topic).await?;
    // Without --follow, stop at the end each partition had when we started.
    let mut remaining: HashMap<u32, u64> = HashMap::new();
    let mut positions = Vec::new();
    for p in &topic.partitions {
        let from = start
            .resolve(&client, &args.topic, p.partition, p.start, p.end)
            .await?;
        if from < p.end {
            remaining.insert(p.partition, p.end);
        }
        positions.push((p.partition, from));
    }
    if args.count == Some(0) || (!args.follow && remaining.is_empty()) {
        return Ok(());
    }
    let mut consumer =
        Consumer::from_positions(client, &args.topic, positions, ConsumerConfig::default());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    while let Some(message) = consumer.next().await {
        let message = message?;
        let write = out
            .write_all(&message.value)
            .and_then(|()| out.write_all(b"\n"));
        match write {
            Ok(()) => {}
            // `spool consume | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::io("writing output", e)),
        }
        printed += 1;
        if args.follow {
            let _ = out.flush();
        }
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        if !args.follow {
            if let Some(end) = remaining.get(&message.partition) {
                if message.offset + 1 >= *end {
                    remaining.remove(&message.partition);
                }
            }
            if remaining.is_empty() {
                break;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::io("writing output", e))
        }
        _ => Ok(()),
    }
}

/// `--group`: queue-mode consumption, printing then acking each message.
async fn consume_group(client: Client, group: &str, args: &ConsumeArgs) -> Result<(), Failure> {
    use spool::client::{QueueConsumer, QueueOptions};
    client.describe_topic(&args.topic).await?;
    let options = QueueOptions {
        auto_ack: !args.ack,
        // Hold only what one print-and-ack needs, so a killed consumer
        // strands as little as possible.
        // (and never more than --count: leftovers would be redelivered,
        // counting toward max_deliveries).
        prefetch: (if args.ack { 16 } else { 256 })
            .min(args.count.unwrap_or(u64::MAX).clamp(1, 256) as u32),
        max_wait: std::time::Duration::from_millis(1000),
        ..QueueOptions::default()
    };
    let mut consumer = QueueConsumer::join(client, group, &args.topic, options).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    while args.count.is_none_or(|n| printed < n) {
        let Some(message) = consumer.receive().await? else {
            if args.follow {
                continue;
            }
            break; // nothing to deliver: the group is caught up
        };
        let write = out
            .write_all(&message.value)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        match write {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::io("writing output", e)),
        }
        // Printed (and flushed) first, acked second: at least once.
        if args.ack {
            consumer.ack(&message).await?;
        }
        printed += 1;
    }
    Ok(())
}
