//! `spool produce`: each input line is one message.

use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;

use bytes::Bytes;
use spool::client::{Producer, ProducerConfig};

use crate::{Failure, DEFAULT_ADDR};

/// Deliveries awaited at once; beyond this the oldest is awaited first, so
/// memory stays bounded on endless input.
const MAX_PENDING: usize = 100_000;

/// Arguments of `spool produce`.
#[derive(clap::Args)]
pub struct ProduceArgs {
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: String,
    /// Topic to produce to.
    #[arg(long)]
    topic: String,
    /// Key for every message (picks the partition); none: spread round robin.
    #[arg(long)]
    key: Option<String>,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Do not make the producer idempotent (a batch retried after a lost
    /// answer may then be stored twice).
    #[arg(long)]
    no_idempotence: bool,
}

pub async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let client = crate::connect(&args.addr).await?;
    // Fail early and clearly on a missing topic.
    client.describe_topic(&args.topic).await?;
    let config = ProducerConfig {
        idempotent: !args.no_idempotence,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let key = args.key.map(Bytes::from);

    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    let file = args.file.clone();
    // Reading stdin blocks; keep it off the async workers.
    std::thread::spawn(move || {
        let reader: Box<dyn BufRead> = match file {
            Some(path) => match std::fs::File::open(&path) {
                Ok(f) => Box::new(std::io::BufReader::new(f)),
                Err(e) => {
                    let _ = lines_tx.blocking_send(Err(e));
                    return;
                }
            },
            None => Box::new(std::io::BufReader::new(std::io::stdin())),
        };
        for line in reader.split(b'\n') {
            let line = line.map(|mut l| {
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                l
            });
            let stop = line.is_err();
            if lines_tx.blocking_send(line).is_err() || stop {
                return;
            }
        }
    });

    let mut pending = VecDeque::new();
    let mut acked = 0u64;
    let mut first_error = None;
    while let Some(line) = lines_rx.recv().await {
        let line = line.map_err(|e| Failure::io("reading input", e))?;
        pending.push_back(producer.send(&args.topic, key.as_deref(), line).await?);
        if pending.len() >= MAX_PENDING {
            if let Some(delivery) = pending.pop_front() {
                settle(delivery.await, &mut acked, &mut first_error);
            }
        }
    }
    producer.flush().await?;
    for delivery in pending {
        settle(delivery.await, &mut acked, &mut first_error);
    }
    println!("produced {acked} messages");
    match first_error {
        None => Ok(()),
        Some(err) => Err(Failure::from(err)),
    }
}

fn settle(
    result: Result<spool::client::Delivery, spool::client::ClientError>,
    acked: &mut u64,
    first_error: &mut Option<spool::client::ClientError>,
) {
    match result {
        Ok(_) => *acked += 1,
        Err(err) => {
            first_error.get_or_insert(err);
        }
    }
}
