//! Settling deliveries (ack, nack, touch) and stream-mode commits.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use spool_protocol::{Offset, PartitionId};

use super::ack_log::{with_runs, AckRecord};
use super::queue_state::{MemberId, SettleResult};
use super::{storage_error, GroupPartition};
use crate::broker::{Broker, BrokerError};
use crate::storage::FileSync;

impl Broker {
    /// Stream mode: records `offset` as the next offset the group will
    /// consume in `partition`. Durable when this returns.
    pub async fn commit_offset(
        &self,
        group: &str,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<(), BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        let sync = {
            let mut p = g.partition(partition)?;
            let sync = p
                .append(&[AckRecord::Committed(offset.0)])
                .map_err(|e| storage_error(&format!("committing {group}/{partition}"), e))?;
            p.committed = Some(offset.0);
            sync
        };
        self.sync_ack_logs(sync).await
    }

    /// Stream mode: the committed offset of every partition (`None`: never
    /// committed).
    pub fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(PartitionId, Option<Offset>)>, BrokerError> {
        let g = self.group(group)?;
        (0..g.partitions.len() as u32)
            .map(|p| {
                Ok((
                    PartitionId(p),
                    g.partition(PartitionId(p))?.committed.map(Offset),
                ))
            })
            .collect()
    }

    /// Queue mode: acks deliveries. An ack is durable when this returns
    /// (for topics whose sync policy is `always`, concurrent acks share one
    /// sync of the group's ack log).
    pub async fn ack(
        &self,
        group: &str,
        member: MemberId,
        items: &[(PartitionId, Offset)],
    ) -> Result<Vec<SettleResult>, BrokerError> {
        let (results, syncs) = self.settle_many(group, items, |gp, offset| {
            let r = gp.queue.ack(member, offset);
            (
                r,
                (r == SettleResult::Ok).then_some(AckRecord::Acked(offset)),
            )
        })?;
        self.sync_ack_logs(syncs).await?;
        Ok(results)
    }

    /// Queue mode: hands deliveries back for redelivery after `delay`.
    pub fn nack(
        &self,
        group: &str,
        member: MemberId,
        items: &[(PartitionId, Offset)],
        delay: Duration,
    ) -> Result<Vec<SettleResult>, BrokerError> {
        let now = self.config().clock.now_ms();
        let delay_ms = delay.as_millis().min(u128::from(u64::MAX)) as u64;
        // A nack writes nothing: no sync to wait for.
        self.settle_many(group, items, |gp, offset| {
            (gp.queue.nack(member, offset, now, delay_ms), None)
        })
        .map(|(results, _)| results)
    }

    /// Queue mode: extends the ack deadline of deliveries (work in progress).
    pub fn touch(
        &self,
        group: &str,
        member: MemberId,
        items: &[(PartitionId, Offset)],
    ) -> Result<Vec<SettleResult>, BrokerError> {
        let now = self.config().clock.now_ms();
        let g = self.group(group)?;
        let wait = g.config.ack_wait_ms;
        self.settle_many(group, items, |gp, offset| {
            (gp.queue.touch(member, offset, now, wait), None)
        })
        .map(|(results, _)| results)
    }

    fn settle_many(
        &self,
        group: &str,
        items: &[(PartitionId, Offset)],
        mut apply: impl FnMut(&mut GroupPartition, u64) -> (SettleResult, Option<AckRecord>),
    ) -> Result<(Vec<SettleResult>, Vec<FileSync>), BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        let mut results = vec![SettleResult::NotInFlight; items.len()];
        let mut by_partition: BTreeMap<PartitionId, Vec<usize>> = BTreeMap::new();
        for (i, (p, _)) in items.iter().enumerate() {
            by_partition.entry(*p).or_default().push(i);
        }
        let mut acked = 0u64;
        let mut syncs = Vec::new();
        for (p, indexes) in by_partition {
            let mut gp = g.partition(p)?;
            let mut records = Vec::new();
            for i in indexes {
                let (result, record) = apply(&mut gp, items[i].1 .0);
                results[i] = result;
                if let Some(r) = record {
                    records.push(r);
                }
            }
            acked += records.len() as u64;
            syncs.extend(
                gp.append(&with_runs(records))
                    .map_err(|e| storage_error(&format!("recording acks of {group}/{p}"), e))?,
            );
        }
        g.stats.acks.fetch_add(acked, Ordering::Relaxed);
        // Acks free in-flight capacity; nacks make messages deliverable.
        g.changed.notify_waiters();
        Ok((results, syncs))
    }
}
