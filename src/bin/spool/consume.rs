//! `spool consume`: print message values, one per line.

use std::collections::HashMap;
use std::io::Write;

use spool::client::{Client, Consumer, ConsumerConfig, StartAt};

use crate::{Failure, DEFAULT_ADDR};

/// Arguments of `spool consume`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  spool consume --topic orders                          # everything, then exit
  spool consume --topic orders --from latest --follow   # new messages as they come
  spool consume --topic orders --from 1500 --partition 2 --count 10 --format json
  spool consume --topic jobs --group workers --ack      # share the work; ack after printing")]
pub struct ConsumeArgs {
    #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    /// Topic to consume.
    #[arg(long)]
    topic: String,
    /// earliest (the default), latest, an offset, or time:MS (the first
    /// message at or after MS milliseconds since the Unix epoch). An offset
    /// applies to each partition read, clamped to that partition's range.
    /// Not with --group: a group delivers from its own position.
    #[arg(long, conflicts_with = "group")]
    from: Option<String>,
    /// Read only this partition (not with --group).
    #[arg(long, conflicts_with = "group")]
    partition: Option<u32>,
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
    /// text: each value on a line of its own. json: one JSON object per
    /// line with partition, offset, timestamp_ms, key, headers and value
    /// (and deliveries, with --group); bytes that are not UTF-8 are given
    /// as key_hex / value_hex / a header's value_hex instead.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// How `spool consume` prints a message.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value, then a newline.
    Text,
    /// One JSON object per line.
    Json,
}

/// One message as printed.
struct Printed<'a> {
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    key: Option<&'a [u8]>,
    value: &'a [u8],
    headers: &'a [(bytes::Bytes, bytes::Bytes)],
    deliveries: Option<u32>,
}

impl Printed<'_> {
    fn write(&self, format: Format, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            Format::Text => {
                out.write_all(self.value)?;
            }
            Format::Json => {
                let mut object = serde_json::Map::new();
                object.insert("partition".into(), self.partition.into());
                object.insert("offset".into(), self.offset.into());
                object.insert("timestamp_ms".into(), self.timestamp_ms.into());
                if let Some(n) = self.deliveries {
                    object.insert("deliveries".into(), n.into());
                }
                match self.key {
                    Some(key) => put_bytes(&mut object, "key", key),
                    None => {
                        object.insert("key".into(), serde_json::Value::Null);
                    }
                }
                let headers: Vec<serde_json::Value> = self
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let mut h = serde_json::Map::new();
                        h.insert(
                            "name".into(),
                            String::from_utf8_lossy(name).into_owned().into(),
                        );
                        put_bytes(&mut h, "value", value);
                        serde_json::Value::Object(h)
                    })
                    .collect();
                object.insert("headers".into(), headers.into());
                put_bytes(&mut object, "value", self.value);
                serde_json::to_writer(&mut *out, &serde_json::Value::Object(object))?;
            }
        }
        out.write_all(b"\n")
    }
}

/// `name`: the bytes as a string if they are UTF-8, else `name_hex`.
pub fn put_bytes(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    bytes: &[u8],
) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            object.insert(name.into(), text.into());
        }
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            object.insert(format!("{name}_hex"), hex.into());
        }
    }
}

pub async fn run(args: ConsumeArgs) -> Result<(), Failure> {
    let start = match args.from.as_deref().unwrap_or("earliest") {
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
    if let Some(p) = args.partition {
        if !topic.partitions.iter().any(|d| d.partition == p) {
            return Err(Failure::usage(format!(
                "topic {} has no partition {p} (it has {})",
                args.topic,
                topic.partitions.len()
            )));
        }
    }
    // Without --follow, stop at the end each partition had when we started.
    let mut remaining: HashMap<u32, u64> = HashMap::new();
    let mut positions = Vec::new();
    let chosen = topic
        .partitions
        .iter()
        .filter(|d| args.partition.is_none_or(|p| p == d.partition));
    for p in chosen {
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
        let write = Printed {
            partition: message.partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
            key: message.key.as_deref(),
            value: &message.value,
            headers: &message.headers,
            deliveries: None,
        }
        .write(args.format, &mut out);
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
    let options_wait = options.max_wait;
    let mut consumer = QueueConsumer::join(client, group, &args.topic, options).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    while args.count.is_none_or(|n| printed < n) {
        let Some(message) = consumer.receive_timeout(options_wait).await? else {
            if args.follow {
                continue;
            }
            break; // nothing to deliver: the group is caught up
        };
        let write = Printed {
            partition: message.partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
            key: message.key.as_deref(),
            value: &message.value,
            headers: &message.headers,
            deliveries: Some(message.deliveries),
        }
        .write(args.format, &mut out)
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
