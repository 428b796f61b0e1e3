//! Queue-mode delivery: handing messages out within each member's
//! `max_in_flight`, and moving messages that used up their deliveries to the
//! dead-letter topic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::requests::{WireAcquired, WireDeliveredPartition};
use spool_protocol::{BatchBuilder, Offset, PartitionId, RecordParts};

use super::ack_log::AckRecord;
use super::queue_state::{Delivery, MemberId, SettleResult};
use super::{storage_error, DeliveredMessage, Group, GroupMode, MAX_DELIVER_MESSAGES};
use crate::broker::topic::{Topic, TopicConfig};
use crate::broker::{Broker, BrokerError};
use crate::storage::{PartitionLog, StorageError};

impl Broker {
    /// Queue mode: hands `member` up to `max` messages, waiting up to
    /// `max_wait` for some to become deliverable. Messages whose deliveries
    /// are used up are moved to the dead-letter topic on the way.
    pub async fn deliver(
        &self,
        group: &str,
        member: MemberId,
        max: usize,
        max_wait: Duration,
    ) -> Result<Vec<DeliveredMessage>, BrokerError> {
        let delivered = self
            .deliver_batches_from(group, member, max, max_wait, &|_| true)
            .await?;
        let mut out = Vec::with_capacity(delivered.iter().map(|p| p.message_count()).sum());
        for p in &delivered {
            let partition = PartitionId(p.partition);
            let found = p
                .for_each_message(false, |record, deliveries, part| {
                    let RecordParts {
                        key,
                        value,
                        headers,
                    } = record.parts_in(part);
                    out.push(DeliveredMessage {
                        partition,
                        offset: record.offset,
                        deliveries,
                        timestamp_ms: record.timestamp_ms,
                        key,
                        value,
                        headers,
                    });
                })
                .map_err(|e| storage_error("reading messages for delivery", e.into()))?;
            if found != p.message_count() {
                return Err(storage_error(
                    "reading messages for delivery",
                    StorageError::Corrupt {
                        path: Default::default(),
                        position: 0,
                        offset: Offset(p.acquired.first().map_or(0, |a| a.first)),
                        reason: format!(
                            "partition {partition}: {found} of {} records handed out were read",
                            p.message_count()
                        ),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Queue mode, as stored: up to `max` messages for `member` from the
    /// partitions `serves` accepts (in a cluster: those this broker leads;
    /// the others' deadlines, redeliveries and dead letters are their
    /// leaders'), as the stored batches holding them and which records of
    /// those are the member's. Nothing is parsed or copied: the batches are
    /// slices of the segments' maps, CRC-checked as they are read.
    pub async fn deliver_batches_from(
        &self,
        group: &str,
        member: MemberId,
        max: usize,
        max_wait: Duration,
        serves: &(dyn Fn(PartitionId) -> bool + Sync),
    ) -> Result<Vec<WireDeliveredPartition>, BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        if g.mode != GroupMode::Queue {
            return Err(BrokerError::GroupMismatch {
                group: group.to_string(),
                reason: "deliveries are for queue-mode groups; stream groups fetch and commit"
                    .into(),
            });
        }
        let topic = self.topic(&g.topic)?;
        let max = max.clamp(1, MAX_DELIVER_MESSAGES);
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            g.check_member(member)?;
            // Register for wake-ups before looking, so nothing is missed.
            let changed = g.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let mut moved: Vec<_> = topic
                .partitions
                .iter()
                .map(|log| Box::pin(log.visible_end_moved()))
                .collect();
            for m in &mut moved {
                m.as_mut().enable();
            }
            let (out, next_event_ms) = self.deliver_once(&g, &topic, member, max, serves).await?;
            if !out.is_empty() && g.check_member(member).is_err() {
                // The member left while we were taking messages for it (its
                // connection closed): hand them back at once.
                let now = self.config().clock.now_ms();
                for p in &g.partitions {
                    p.lock().queue.release_member(member, now);
                }
                g.changed.notify_waiters();
                return Err(BrokerError::UnknownMember {
                    group: group.to_string(),
                    member,
                });
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            let wake = match next_event_ms {
                Some(at) => deadline.min(
                    tokio::time::Instant::now()
                        + Duration::from_millis(at.saturating_sub(self.config().clock.now_ms())),
                ),
                None => deadline,
            };
            tokio::select! {
                _ = changed => {}
                _ = futures_util::future::select_all(moved) => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn deliver_once(
        &self,
        g: &Group,
        topic: &Topic,
        member: MemberId,
        max: usize,
        serves: &(dyn Fn(PartitionId) -> bool + Sync),
    ) -> Result<(Vec<WireDeliveredPartition>, Option<u64>), BrokerError> {
        let mut reservation = g.reserve(member, max);
        let mut syncs = Vec::new();
        let mut out = Vec::new();
        let mut next_event: Option<u64> = None;
        let mut budget = MAX_DELIVER_BYTES;
        let n = topic.partitions.len();
        let start = g.rotation.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let p = (start + i) % n;
            let partition = PartitionId(p as u32);
            if !serves(partition) {
                continue;
            }
            let log = &topic.partitions[p];
            let now = self.config().clock.now_ms();
            let (mut took, exhausted) = {
                let mut gp = g.partition(partition)?;
                if gp.queue.drop_below(log.start_offset().0) {
                    let floor = log.start_offset().0;
                    syncs.extend(
                        gp.append(&[AckRecord::Floor(floor)])
                            .map_err(|e| storage_error("recording retention floor", e))?,
                    );
                }
                gp.queue.expire(now);
                let exhausted = gp.queue.exhausted(now, g.config.max_deliveries);
                let took = if reservation.count > 0 && budget > 0 {
                    gp.queue.take(
                        member,
                        now,
                        g.config.ack_wait_ms,
                        reservation.count,
                        g.config.max_deliveries,
                        log.visible_end().0,
                    )
                } else {
                    Vec::new()
                };
                if let Some(at) = gp.queue.next_event_ms() {
                    next_event = Some(next_event.map_or(at, |e| e.min(at)));
                }
                (took, exhausted)
            };
            if !exhausted.is_empty() {
                self.dead_letter(g, topic, partition, &exhausted).await?;
            }
            if took.is_empty() {
                continue;
            }
            took.sort_unstable_by_key(|d| d.offset);
            let read = match read_delivered(log, &took, budget) {
                Ok(read) => read,
                Err(err) => {
                    // Hand them back before reporting: nothing is lost.
                    if let Ok(mut gp) = g.partition(partition) {
                        for d in &took {
                            gp.queue.untake(member, d.offset, now);
                        }
                    }
                    return Err(storage_error(
                        &format!("reading {}/{p} for delivery", topic.name),
                        err,
                    ));
                }
            };
            budget = budget.saturating_sub(read.bytes);
            {
                let mut gp = g.partition(partition)?;
                for d in &read.unread {
                    gp.queue.untake(member, d.offset, now);
                }
                // Delivery counts must be durable before the messages go
                // out, or a power loss could hand a message out more than
                // max_deliveries times.
                let counts: Vec<AckRecord> = read
                    .runs
                    .iter()
                    .filter(|r| r.deliveries > 1)
                    .flat_map(|r| (r.first..r.end()).map(|o| AckRecord::Delivered(o, r.deliveries)))
                    .collect();
                syncs.extend(
                    gp.append(&counts)
                        .map_err(|e| storage_error("recording delivery counts", e))?,
                );
            }
            if !read.damaged.is_empty() {
                // Unreadable: never delivered; dead-lettered with the damage
                // named.
                self.dead_letter(g, topic, partition, &read.damaged).await?;
            }
            let count: usize = read.runs.iter().map(|r| r.count as usize).sum();
            if count == 0 {
                continue;
            }
            reservation.taken(count);
            let redeliveries: usize = read
                .runs
                .iter()
                .filter(|r| r.deliveries > 1)
                .map(|r| r.count as usize)
                .sum();
            tracing::trace!(
                group = %g.name,
                partition = p,
                first = read.runs.first().map(|r| r.first),
                last = read.runs.last().map(|r| r.end() - 1),
                n = count,
                "delivering"
            );
            g.stats
                .deliveries
                .fetch_add(count as u64, Ordering::Relaxed);
            g.stats
                .redeliveries
                .fetch_add(redeliveries as u64, Ordering::Relaxed);
            out.push(WireDeliveredPartition {
                partition: partition.0,
                acquired: read.runs,
                batches: read.batches,
            });
        }
        self.sync_ack_logs(syncs).await?;
        Ok((out, next_event))
    }

    /// Copies messages to `<group>.dlq` (creating it), then settles them.
    async fn dead_letter(
        &self,
        g: &Group,
        topic: &Topic,
        partition: PartitionId,
        exhausted: &[super::queue_state::Delivery],
    ) -> Result<(), BrokerError> {
        let dlq = format!("{}.dlq", g.name);
        let sink = self.dead_letter_sink().cloned();
        if sink.is_none() && self.topic(&dlq).is_err() {
            let config = TopicConfig::new(1).sync(topic.config.log.sync);
            // Creating a topic writes and fsyncs files: not on an async worker.
            let (broker, name) = (self.clone(), dlq.clone());
            let created =
                crate::simulation::spawn_blocking(move || broker.create_topic(&name, config))
                    .await
                    .unwrap_or_else(|join| {
                        Err(BrokerError::InvalidConfig(format!(
                            "creating the dead-letter topic failed: {join}"
                        )))
                    });
            match created {
                Ok(()) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let log = topic.partition(partition)?;
        let offsets: Vec<u64> = exhausted.iter().map(|d| d.offset).collect();
        let records = read_records(log, &offsets)
            .map_err(|e| storage_error("reading messages to dead-letter", e))?;
        let mut builder = BatchBuilder::new();
        let mut damaged = 0usize;
        for (d, r) in exhausted.iter().zip(&records) {
            let partition_text = partition.0.to_string();
            let offset_text = d.offset.to_string();
            let deliveries_text = d.deliveries.to_string();
            // A message whose batch is damaged goes as an empty record whose
            // reason names the damage: the group steps over it, and an
            // operator sees what was lost.
            let empty = OwnedRecord {
                timestamp_ms: 0,
                key: None,
                value: Bytes::new(),
                headers: Vec::new(),
            };
            let (r, reason) = match r {
                Ok(r) => (r, "max_deliveries_exceeded".to_string()),
                Err(why) => {
                    damaged += 1;
                    (&empty, format!("corrupt_batch: {why}"))
                }
            };
            let mut headers: Vec<(&[u8], &[u8])> = r
                .headers
                .iter()
                .map(|(n, v)| (n.as_ref(), v.as_ref()))
                .collect();
            headers.extend([
                (&b"spool.dlq.topic"[..], topic.name.as_bytes()),
                (b"spool.dlq.partition", partition_text.as_bytes()),
                (b"spool.dlq.offset", offset_text.as_bytes()),
                (b"spool.dlq.group", g.name.as_bytes()),
                (b"spool.dlq.deliveries", deliveries_text.as_bytes()),
                (b"spool.dlq.reason", reason.as_bytes()),
            ]);
            builder.push(r.timestamp_ms, r.key.as_deref(), &r.value, &headers)?;
        }
        if damaged > 0 {
            tracing::error!(group = %g.name, topic = %topic.name, %partition, damaged, "messages in a damaged batch cannot be read: dead-lettered with the damage as reason, the group goes on");
            #[cfg(feature = "server")]
            crate::metrics::CORRUPT_DEAD_LETTERS.inc_by(damaged as u64);
        }
        let batch = builder.finish()?;
        match sink {
            Some(sink) => sink.write(dlq, batch).await?,
            None => {
                self.append(&dlq, PartitionId(0), &batch).await?;
            }
        }
        let (count, sync) = {
            let mut gp = g.partition(partition)?;
            let mut settled = Vec::new();
            for d in exhausted {
                if gp.queue.settle(d.offset) == SettleResult::Ok {
                    settled.push(AckRecord::DeadLettered(d.offset));
                }
            }
            gp.dead_letters += settled.len() as u64;
            let sync = gp
                .append(&settled)
                .map_err(|e| storage_error("recording dead letters", e))?;
            (settled.len(), sync)
        };
        self.sync_ack_logs(sync).await?;
        g.stats
            .dead_letters
            .fetch_add(count as u64, Ordering::Relaxed);
        tracing::info!(group = %g.name, topic = %topic.name, %partition, count, "moved messages to the dead-letter topic");
        Ok(())
    }
}

/// What one delivery answer may carry of a partition's stored batches
/// beyond the first: a batch holds records that are not the member's (acked,
/// or another member's), so scattered redeliveries could otherwise each
/// pull in a whole batch. What does not fit is handed back.
const MAX_DELIVER_BYTES: u64 = 8 << 20;

/// The batches read for a partition's deliveries.
struct DeliveryRead {
    /// Back-to-back stored batches, in offset order, covering `runs`.
    batches: Vec<Bytes>,
    /// Their bytes.
    bytes: u64,
    /// What they cover: runs of consecutive offsets with one delivery count.
    runs: Vec<WireAcquired>,
    /// In damaged batches: dead-lettered instead.
    damaged: Vec<Delivery>,
    /// Past the byte budget: handed back.
    unread: Vec<Delivery>,
}

/// Reads the stored batches holding `took` (sorted by offset): one read
/// per stretch of consecutive offsets, each stopping at the batch that
/// holds the stretch's last offset. An offset in a damaged batch is
/// reported instead of read; any other failure fails the whole read.
fn read_delivered(
    log: &Arc<PartitionLog>,
    took: &[Delivery],
    budget: u64,
) -> Result<DeliveryRead, StorageError> {
    let mut read = DeliveryRead {
        batches: Vec::new(),
        bytes: 0,
        runs: Vec::new(),
        damaged: Vec::new(),
        unread: Vec::new(),
    };
    let mut i = 0;
    while i < took.len() {
        if read.bytes >= budget && !read.batches.is_empty() {
            read.unread.extend_from_slice(&took[i..]);
            break;
        }
        let mut last = i;
        while last + 1 < took.len() && took[last + 1].offset == took[last].offset + 1 {
            last += 1;
        }
        let from = Offset(took[i].offset);
        let max_bytes = (budget.saturating_sub(read.bytes)).max(1);
        let fetched = match log.read_through(from, Offset(took[last].offset), max_bytes) {
            Ok(fetched) => fetched,
            Err(damage @ StorageError::Corrupt { .. }) => {
                tracing::debug!(offset = from.0, error = %damage, "damaged batch: not delivered");
                read.damaged.push(took[i]);
                i += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if fetched.batches.is_empty() {
            // Below the visible end when taken; gone since (retention):
            // handed back, and settled by the next delivery's floor.
            read.unread.extend_from_slice(&took[i..]);
            break;
        }
        while i < took.len() && took[i].offset < fetched.next_offset.0 {
            push_to_runs(&mut read.runs, took[i]);
            i += 1;
        }
        read.bytes += fetched.batches.len() as u64;
        read.batches.push(fetched.batches);
    }
    Ok(read)
}

/// Adds a delivery (above every one before it) to its run, or starts one.
fn push_to_runs(runs: &mut Vec<WireAcquired>, d: Delivery) {
    if let Some(run) = runs.last_mut() {
        if run.end() == d.offset && run.deliveries == d.deliveries && run.count < u32::MAX {
            run.count += 1;
            return;
        }
    }
    runs.push(WireAcquired {
        first: d.offset,
        count: 1,
        deliveries: d.deliveries,
    });
}

/// A record read back for delivery, owned.
struct OwnedRecord {
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(Bytes, Bytes)>,
}

/// Reads the records at `offsets` (ascending or not) from a partition log,
/// with as few reads as the offsets' spread allows. Keys and values are
/// zero-copy slices of the segment map. An offset in a damaged batch gives
/// the damage instead of a record; any other failure fails the whole read.
fn read_records(
    log: &Arc<PartitionLog>,
    offsets: &[u64],
) -> Result<Vec<Result<OwnedRecord, String>>, StorageError> {
    let mut wanted: Vec<(u64, usize)> = offsets.iter().copied().zip(0..).collect();
    wanted.sort_unstable();
    let mut found: Vec<Option<Result<OwnedRecord, String>>> =
        (0..offsets.len()).map(|_| None).collect();
    let mut i = 0;
    while i < wanted.len() {
        // One batch per read (storage returns at least one whole batch):
        // reading ahead would CRC and walk records nobody asked for.
        let fetched = match log.read(Offset(wanted[i].0), 1) {
            Ok(fetched) => fetched,
            Err(damage @ StorageError::Corrupt { .. }) => {
                found[wanted[i].1] = Some(Err(damage.to_string()));
                i += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if fetched.batches.is_empty() {
            break;
        }
        let bytes = &fetched.batches;
        for record in fetched.records() {
            let record = record?;
            while i < wanted.len() && wanted[i].0 < record.offset.0 {
                // Not in this read (should not happen: offsets are dense).
                i += 1;
            }
            if i < wanted.len() && wanted[i].0 == record.offset.0 {
                let RecordParts {
                    key,
                    value,
                    headers,
                } = record.parts_in(bytes);
                found[wanted[i].1] = Some(Ok(OwnedRecord {
                    timestamp_ms: record.timestamp_ms,
                    key,
                    value,
                    headers,
                }));
                i += 1;
            }
        }
        if i < wanted.len() && wanted[i].0 < fetched.next_offset.0 {
            i += 1;
        }
    }
    found
        .into_iter()
        .zip(offsets)
        .map(|(r, o)| {
            r.ok_or_else(|| StorageError::OffsetOutOfRange {
                requested: Offset(*o),
                start: log.start_offset(),
                end: log.visible_end(),
            })
        })
        .collect()
}
