//! Queue-mode delivery: handing messages out within each member's
//! `max_in_flight`, and moving messages that used up their deliveries to the
//! dead-letter topic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::{BatchBuilder, Offset, PartitionId};

use super::ack_log::AckRecord;
use super::queue_state::{MemberId, SettleResult};
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
        self.deliver_from(group, member, max, max_wait, &|_| true)
            .await
    }

    /// [`Broker::deliver`] from the partitions `serves` accepts only (in a
    /// cluster: those this broker leads). The others are not touched:
    /// their deadlines, redeliveries and dead letters are their leader's.
    pub async fn deliver_from(
        &self,
        group: &str,
        member: MemberId,
        max: usize,
        max_wait: Duration,
        serves: &(dyn Fn(PartitionId) -> bool + Sync),
    ) -> Result<Vec<DeliveredMessage>, BrokerError> {
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
    ) -> Result<(Vec<DeliveredMessage>, Option<u64>), BrokerError> {
        let mut reservation = g.reserve(member, max);
        let mut syncs = Vec::new();
        let mut out = Vec::new();
        let mut next_event: Option<u64> = None;
        let n = topic.partitions.len();
        let start = g.rotation.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let p = (start + i) % n;
            if !serves(PartitionId(p as u32)) {
                continue;
            }
            let log = &topic.partitions[p];
            let now = self.config().clock.now_ms();
            let (took, exhausted) = {
                let mut gp = g.partition(PartitionId(p as u32))?;
                if gp.queue.drop_below(log.start_offset().0) {
                    let floor = log.start_offset().0;
                    syncs.extend(
                        gp.append(&[AckRecord::Floor(floor)])
                            .map_err(|e| storage_error("recording retention floor", e))?,
                    );
                }
                gp.queue.expire(now);
                let exhausted = gp.queue.exhausted(now, g.config.max_deliveries);
                let took = if reservation.count > 0 {
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
                let counts: Vec<AckRecord> = took
                    .iter()
                    .filter(|d| d.deliveries > 1)
                    .map(|d| AckRecord::Delivered(d.offset, d.deliveries))
                    .collect();
                syncs.extend(
                    gp.append(&counts)
                        .map_err(|e| storage_error("recording delivery counts", e))?,
                );
                if let Some(at) = gp.queue.next_event_ms() {
                    next_event = Some(next_event.map_or(at, |e| e.min(at)));
                }
                (took, exhausted)
            };
            if !exhausted.is_empty() {
                self.dead_letter(g, topic, PartitionId(p as u32), &exhausted)
                    .await?;
            }
            if took.is_empty() {
                continue;
            }
            reservation.taken(took.len());
            tracing::trace!(
                group = %g.name,
                partition = p,
                first = took.first().map(|d| d.offset),
                last = took.last().map(|d| d.offset),
                n = took.len(),
                "delivering"
            );
            let redeliveries = took.iter().filter(|d| d.deliveries > 1).count() as u64;
            g.stats
                .deliveries
                .fetch_add(took.len() as u64, Ordering::Relaxed);
            g.stats
                .redeliveries
                .fetch_add(redeliveries, Ordering::Relaxed);
            let offsets: Vec<u64> = took.iter().map(|d| d.offset).collect();
            match read_records(log, &offsets) {
                Ok(records) => {
                    let mut damaged = Vec::new();
                    for (d, r) in took.iter().zip(records) {
                        let r = match r {
                            Ok(r) => r,
                            // Unreadable: never delivered; dead-lettered
                            // below with the damage named.
                            Err(_) => {
                                damaged.push(*d);
                                continue;
                            }
                        };
                        out.push(DeliveredMessage {
                            partition: PartitionId(p as u32),
                            offset: Offset(d.offset),
                            deliveries: d.deliveries,
                            timestamp_ms: r.timestamp_ms,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                        });
                    }
                    if !damaged.is_empty() {
                        self.dead_letter(g, topic, PartitionId(p as u32), &damaged)
                            .await?;
                    }
                }
                Err(err) => {
                    // Hand them back before reporting: nothing is lost.
                    if let Ok(mut gp) = g.partition(PartitionId(p as u32)) {
                        for o in &offsets {
                            gp.queue.nack(member, *o, self.config().clock.now_ms(), 0);
                        }
                    }
                    return Err(storage_error(
                        &format!("reading {}/{p} for delivery", topic.name),
                        err,
                    ));
                }
            }
        }
        // Delivery counts must be durable before the messages go out, or a
        // power loss could hand a message out more than max_deliveries times.
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
                found[wanted[i].1] = Some(Ok(OwnedRecord {
                    timestamp_ms: record.timestamp_ms,
                    key: record.key.map(|k| bytes.slice_ref(k)),
                    value: bytes.slice_ref(record.value),
                    headers: record
                        .headers()
                        .map(|(n, v)| (bytes.slice_ref(n), bytes.slice_ref(v)))
                        .collect(),
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
