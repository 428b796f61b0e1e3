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

use std::sync::Arc;

use spool::broker::PendingAppend;
use spool::storage::wall_clock_ms;
use spool::{BatchBuilder, Broker, PartitionId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pace::{spawn_ack_collector, Pace};
use super::payload::{write_payload, SendTimes};
use super::{BenchArgs, Shared};

/// Appends applied and waiting to be durable at once: `--max-in-flight`,
/// or the client producer's default, as on the socket path.
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
    let mut pace = Pace::new(id, args, shared);
    let in_flight = Arc::new(Semaphore::new(max_in_flight(args)));
    // A durable wait and its in-flight permit, given back when it resolves.
    let durable = |append: PendingAppend, permit: OwnedSemaphorePermit| async move {
        let result = append.durable().await;
        drop(permit);
        result
    };
    let (tx, collector) = spawn_ack_collector(shared);

    let mut batches = 0u32;
    let mut append = |(batch, sent, permit): (BatchBuilder, SendTimes, OwnedSemaphorePermit)| {
        let bytes = batch.finish().map_err(|e| e.to_string())?;
        let partition = PartitionId((id + batches) % args.partitions);
        batches = batches.wrapping_add(1);
        let pending = broker
            .append_pending(topic, partition, &bytes)
            .map_err(|e| format!("append to {topic}/{partition}: {e}"))?;
        tx.send((durable(pending, permit), sent))
            .map_err(|_| "ack collector stopped".to_string())
    };

    let mut seq = 0u64;
    let mut payload = Vec::with_capacity(args.size);
    let mut open: Option<(BatchBuilder, SendTimes, OwnedSemaphorePermit)> = None;
    loop {
        // At a fixed rate, what it holds is appended before it idles, as
        // the client's producer sends with no linger.
        if pace.idles() {
            if let Some(held) = open.take() {
                append(held)?;
            }
        }
        let Some(sent_ns) = pace.next(seq, shared).await else {
            break;
        };
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
            .push(wall_clock_ms(), None, &payload, &[])
            .map_err(|e| e.to_string())?;
        sent.push(sent_ns);
        seq += 1;
        if batch.len_bytes() >= args.batch_bytes {
            if let Some(full) = open.take() {
                append(full)?;
            }
        }
    }
    if let Some(held) = open.take() {
        append(held)?;
    }
    drop(tx);
    collector.await.map_err(|e| e.to_string())?;
    Ok(seq)
}
