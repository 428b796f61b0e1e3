//! `spool produce`: each input line is one message.
//!
//! The whole command has one deadline (`--timeout-secs`): a server that
//! dies mid-input costs at most that, never one retry budget per unsent
//! batch. Long inputs report progress on stderr once a second, and a
//! failure says how many lines were acknowledged and from which line to
//! resume.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use spool::client::{ClientError, Delivery, DeliveryFuture, Producer, ProducerConfig};
use tokio::time::Instant;

use crate::{Failure, DEFAULT_ADDR};

/// Deliveries awaited at once; beyond this the oldest is awaited first, so
/// memory stays bounded on endless input.
const MAX_PENDING: usize = 100_000;

/// Arguments of `spool produce`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  seq 1 1000 | spool produce --topic orders
  spool produce --topic orders --file orders.txt --key-separator ':'   # KEY:VALUE lines
  spool produce --topic orders --partition 2 --key user-7 < lines.txt")]
pub struct ProduceArgs {
    #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Key for every message (picks the partition). Without a key, lines
    /// go to the partitions in turn, one line each.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Each line is KEY SEP VALUE: split at the first SEP (a line without
    /// one is an error).
    #[arg(long)]
    key_separator: Option<String>,
    /// Produce every line to this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Give up after this long in all (connecting, sending, waiting for
    /// acknowledgements).
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Do not make the producer idempotent (a batch retried after a lost
    /// answer may then be stored twice).
    #[arg(long)]
    no_idempotence: bool,
}

/// A line on its way: partition, key, value.
struct Routed {
    partition: u32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// Where each line goes.
struct Router {
    partitions: u32,
    pinned: Option<u32>,
    key: Option<Vec<u8>>,
    separator: Option<Vec<u8>>,
}

impl Router {
    /// `(partition, key, value)` of line `number` (from 1). Unkeyed lines
    /// take the partitions in turn, so even three lines spread.
    fn route(&self, number: u64, line: Vec<u8>) -> Result<Routed, String> {
        let (key, value) = match &self.separator {
            Some(sep) => {
                let at = find(&line, sep).ok_or_else(|| {
                    format!(
                        "line {number} has no key separator {:?}",
                        String::from_utf8_lossy(sep)
                    )
                })?;
                (Some(line[..at].to_vec()), line[at + sep.len()..].to_vec())
            }
            None => (self.key.clone(), line),
        };
        let partition = match (self.pinned, &key) {
            (Some(p), _) => p,
            (None, Some(key)) => spool::protocol::partition_for_key(key, self.partitions).0,
            (None, None) => ((number - 1) % u64::from(self.partitions)) as u32,
        };
        Ok(Routed {
            partition,
            key,
            value,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Counts of the run, for progress and the final word.
#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    /// The first line that was not acknowledged, and why.
    first_failed: Option<(u64, ClientError)>,
}

impl Tally {
    fn settle(&mut self, line: u64, result: Result<Delivery, ClientError>) {
        match result {
            Ok(_) => self.acked += 1,
            Err(err) => {
                self.first_failed.get_or_insert((line, err));
            }
        }
    }
}

pub async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let deadline = Instant::now() + timeout;
    let timed_out = || {
        Failure::new(
            3,
            format!(
                "no answer within --timeout-secs {} (is `spool serve` running there?)",
                timeout.as_secs()
            ),
        )
    };
    let client = tokio::time::timeout_at(deadline, crate::connect(&args.addr))
        .await
        .map_err(|_| timed_out())??;
    // Fail early and clearly on a missing topic or partition.
    let described = tokio::time::timeout_at(deadline, client.describe_topic(&args.topic))
        .await
        .map_err(|_| timed_out())??;
    let partitions = described.partitions.len() as u32;
    if let Some(p) = args.partition {
        if p >= partitions {
            return Err(Failure::usage(format!(
                "topic {} has no partition {p} (it has {partitions})",
                args.topic
            )));
        }
    }
    let router = Router {
        partitions: partitions.max(1),
        pinned: args.partition,
        key: args.key.map(String::into_bytes),
        separator: args
            .key_separator
            .map(String::into_bytes)
            .filter(|s| !s.is_empty()),
    };
    let config = ProducerConfig {
        idempotent: !args.no_idempotence,
        delivery_timeout: timeout,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let mut lines = read_lines(args.file.clone());

    let mut pending: VecDeque<(u64, DeliveryFuture)> = VecDeque::new();
    let mut tally = Tally::default();
    let mut stop: Option<Failure> = None;
    let started = Instant::now();
    let mut progress =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let mut shown_progress = false;
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = progress.tick() => {
                eprintln!("spool produce: {} lines sent, {} acknowledged", tally.sent, tally.acked);
                shown_progress = true;
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                stop = Some(timed_out());
                break;
            }
        };
        let Some(line) = line else { break };
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                stop = Some(err);
                break;
            }
        };
        let number = tally.sent + 1;
        let Routed {
            partition,
            key,
            value,
        } = match router.route(number, line) {
            Ok(routed) => routed,
            Err(why) => {
                stop = Some(Failure::usage(why));
                break;
            }
        };
        let sent = tokio::time::timeout_at(
            deadline,
            producer.send_to(&args.topic, partition, key.as_deref(), value),
        )
        .await;
        match sent {
            Ok(Ok(delivery)) => {
                tally.sent = number;
                pending.push_back((number, delivery));
            }
            Ok(Err(err)) => {
                stop = Some(Failure::from(err));
                break;
            }
            Err(_) => {
                stop = Some(timed_out());
                break;
            }
        }
        // Settle what is done, in line order, so the count stays current.
        loop {
            let full = pending.len() >= MAX_PENDING;
            let Some((number, front)) = pending.front_mut() else {
                break;
            };
            let number = *number;
            let settled = if full {
                match tokio::time::timeout_at(deadline, front).await {
                    Ok(result) => Some(result),
                    Err(_) => break,
                }
            } else {
                match futures_util::FutureExt::now_or_never(&mut *front) {
                    Some(result) => Some(result),
                    None => break,
                }
            };
            if let Some(result) = settled {
                pending.pop_front();
                tally.settle(number, result);
            }
        }
    }
    // Whatever was handed to the producer is waited for, within the same
    // deadline.
    let _ = tokio::time::timeout_at(deadline, producer.flush()).await;
    for (number, delivery) in pending {
        match tokio::time::timeout_at(deadline, delivery).await {
            Ok(result) => tally.settle(number, result),
            Err(_) => {
                stop.get_or_insert_with(timed_out);
                tally.first_failed.get_or_insert((
                    number,
                    ClientError::Disconnected("no acknowledgement in time".into()),
                ));
            }
        }
    }
    if shown_progress {
        eprintln!(
            "spool produce: {} lines sent, {} acknowledged",
            tally.sent, tally.acked
        );
    }
    println!(
        "produced {} {}",
        tally.acked,
        crate::plural(tally.acked, "message")
    );
    let failure = match (stop, tally.first_failed) {
        (None, None) => return Ok(()),
        (stop, Some((line, err))) => {
            let why = stop.unwrap_or_else(|| Failure::from(err));
            Failure::new(
                why.code,
                format!(
                    "{}; {} of {} lines acknowledged, resume from line {line} (lines after it may have been stored too: the partitions are independent)",
                    why.message, tally.acked, tally.sent
                ),
            )
        }
        (Some(why), None) => Failure::new(
            why.code,
            format!(
                "{}; all {} lines sent were acknowledged, resume from line {}",
                why.message,
                tally.acked,
                tally.sent + 1
            ),
        ),
    };
    Err(failure)
}

/// Lines of `file` (or stdin) from a reader thread (reading blocks); an
/// unreadable input is one error naming the file.
fn read_lines(file: Option<PathBuf>) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, Failure>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    std::thread::spawn(move || {
        let name = file
            .as_ref()
            .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
        let reader: Box<dyn BufRead> = match &file {
            Some(path) => match std::fs::File::open(path) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    let _ = tx.blocking_send(Err(Failure::io(&format!("reading {name}"), e)));
                    return;
                }
            },
            None => Box::new(std::io::BufReader::new(std::io::stdin())),
        };
        for line in reader.split(b'\n') {
            let line = line
                .map(|mut l| {
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    l
                })
                .map_err(|e| Failure::io(&format!("reading {name}"), e));
            let stop = line.is_err();
            if tx.blocking_send(line).is_err() || stop {
                return;
            }
        }
    });
    rx
}
