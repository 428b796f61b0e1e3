//! `spool bench --in-process`: producers that append through the embedded
//! API (`Broker::append_pending`) instead of a connection.
//!
//! Over loopback the client and the broker share this machine's cores, and
//! each byte is copied into a batch, into the socket, out of it and into
//! the page cache. An application embedding the broker pays only the first
//! and the last of those, so this measures what the storage path takes on
//! its own: appends against the disk's or the page cache's rate. Payloads,
//! send times, partitions (sticky, moving round per batch, as the client's)
//! and acknowledgement latencies are as in the socket path, so consumers
//! (still over loopback) verify every message the same way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use spool::broker::PendingAppend;
use spool::{BatchBuilder, Broker, PartitionId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::payload::{write_payload, SendTimes};
use super::{BenchArgs, Shared, STAMP_EVERY};

/// Appends in flight (applied, waiting to be durable) when neither
/// `--max-in-flight` nor the client's default says otherwise.
fn max_in_flight(args: &BenchArgs) -> usize {
    args.max_in_flight
        .unwrap_or(spool::client::ProducerConfig::default().max_in_flight)
        .max(1)
}

/// One in-process producer: `args.messages / args.producers` messages (or
/// `--duration-secs` of them), in batches of `--batch-bytes`. Returns how
/// many it appended.
pub(super) async fn produce(
    id: u32,
    broker: Broker,
    args: &BenchArgs,
    topic: &str,
    shared: &Arc<Shared>,
) -> Result<u64, String> {
    let share = args.messages / u64::from(args.producers)
        + u64::from(u64::from(id) < args.messages % u64::from(args.producers));
    let deadline_ns = args
        .duration_secs
        .map(|s| shared.now_ns() + Duration::from_secs_f64(s).as_nanos() as u64);
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(f64::from(args.producers) / r.max(1) as f64));
    let started = tokio::time::Instant::now();
    let in_flight = Arc::new(Semaphore::new(max_in_flight(args)));

    // Durable waits resolve on their own, each timed when it does (as the
    // socket path's acknowledgements).
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(PendingAppend, SendTimes, OwnedSemaphorePermit)>();
    let collector = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    item = rx.recv(), if open => match item {
                        Some((append, sent, permit)) => pending.push(async move {
                            let result = append.durable().await;
                            drop(permit);
                            (sent, result)
                        }),
                        None => open = false,
                    },
                    Some((sent, result)) = pending.next(), if !pending.is_empty() => {
                        let sent: SendTimes = sent;
                        match result {
                            Ok(_) => {
                                shared.acked.fetch_add(sent.count(), Ordering::Relaxed);
                                let now = shared.now_ns();
                                sent.record(now, shared.warmup_ns, &mut shared.ack_latency.lock());
                            }
                            Err(e) => shared.error(format!("an append failed: {e}")),
                        }
                    }
                    else => break,
                }
            }
        })
    };

    let mut batches = 0u32;
    let mut append = |batch: BatchBuilder, sent: SendTimes, permit| {
        let bytes = batch.finish().map_err(|e| e.to_string())?;
        let partition = PartitionId((id + batches) % args.partitions);
        batches = batches.wrapping_add(1);
        let pending = broker
            .append_pending(topic, partition, &bytes)
            .map_err(|e| format!("append to {topic}/{partition}: {e}"))?;
        tx.send((pending, sent, permit))
            .map_err(|_| "ack collector stopped".to_string())
    };

    let mut seq = 0u64;
    let mut payload = Vec::with_capacity(args.size);
    let mut open: Option<(BatchBuilder, SendTimes, OwnedSemaphorePermit)> = None;
    let mut sent_ns = 0;
    loop {
        if deadline_ns.is_none() && seq >= share {
            break;
        }
        if let Some(interval) = interval {
            // A producer at a fixed rate appends what it holds before it
            // idles, as the client's does with no linger.
            if let Some((batch, sent, permit)) = open.take() {
                append(batch, sent, permit)?;
            }
            tokio::time::sleep_until(started + interval * seq as u32).await;
        }
        if interval.is_some() || seq % STAMP_EVERY == 0 {
            sent_ns = shared.now_ns();
            if deadline_ns.is_some_and(|d| sent_ns >= d) {
                break;
            }
        }
        write_payload(&mut payload, shared, sent_ns, id, seq);
        let (batch, sent, _) = match &mut open {
            Some(open) => open,
            None => {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                let batch = BatchBuilder::with_capacity(args.batch_bytes + args.size + 64);
                open.insert((batch, SendTimes::default(), permit))
            }
        };
        batch
            .push(unix_ms(), None, &payload, &[])
            .map_err(|e| e.to_string())?;
        sent.push(sent_ns);
        seq += 1;
        if batch.len_bytes() >= args.batch_bytes {
            if let Some((batch, sent, permit)) = open.take() {
                append(batch, sent, permit)?;
            }
        }
    }
    if let Some((batch, sent, permit)) = open.take() {
        append(batch, sent, permit)?;
    }
    drop(tx);
    collector.await.map_err(|e| e.to_string())?;
    Ok(seq)
}

/// The record timestamp, read per message as the client does.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
