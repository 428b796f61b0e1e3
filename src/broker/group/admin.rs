//! Group administration: reset, list, describe, counters.

use std::sync::atomic::Ordering;

use spool_protocol::{Offset, PartitionId};

use super::ack_log::AckRecord;
use super::{storage_error, GroupInfo, GroupMode, GroupPartitionInfo, ResetTo};
use crate::broker::{Broker, BrokerError};

impl Broker {
    /// Moves every partition of a group with no members to `to`.
    pub fn reset_group(&self, group: &str, to: ResetTo) -> Result<(), BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        if !g.members.lock().ids.is_empty() {
            return Err(BrokerError::GroupHasMembers(group.to_string()));
        }
        let topic = self.topic(&g.topic)?;
        for (p, log) in topic.partitions.iter().enumerate() {
            let (start, end) = (log.start_offset().0, log.visible_end().0);
            let target = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Offset(o) => o.clamp(start, end),
            };
            let mut gp = g.partition(PartitionId(p as u32))?;
            let sync = gp
                .append(&[AckRecord::Reset(target)])
                .map_err(|e| storage_error(&format!("resetting {group}/{p}"), e))?;
            // An admin call: it waits for the disk on the caller's thread
            // (the server runs it on a blocking thread).
            if let Some(sync) = sync {
                sync.sync_now()
                    .map_err(|e| storage_error(&format!("resetting {group}/{p}"), e))?;
            }
            gp.queue.reset(target);
            gp.committed = Some(target);
        }
        tracing::info!(group, ?to, "group reset");
        Ok(())
    }

    /// All groups, sorted by name.
    pub fn list_groups(&self) -> Vec<GroupInfo> {
        let mut names: Vec<String> = self.groups().iter().map(|g| g.key().clone()).collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.describe_group(&n).ok())
            .collect()
    }

    /// A group's settings, members and per-partition progress.
    pub fn describe_group(&self, group: &str) -> Result<GroupInfo, BrokerError> {
        let g = self.group(group)?;
        let topic = self.topic(&g.topic)?;
        let now = self.config().clock.now_ms();
        let mut partitions = Vec::new();
        for (p, log) in topic.partitions.iter().enumerate() {
            let mut gp = g.partition(PartitionId(p as u32))?;
            gp.queue.expire(now);
            let end = log.visible_end();
            let position = match g.mode {
                GroupMode::Queue => gp.queue.low_water_mark().max(log.start_offset().0),
                GroupMode::Stream => gp.committed.unwrap_or(log.start_offset().0),
            };
            partitions.push(GroupPartitionInfo {
                partition: PartitionId(p as u32),
                position: Offset(position),
                end,
                lag: end.0.saturating_sub(position),
                in_flight: gp.queue.in_flight_count(),
                pending: gp.queue.pending_count(),
                dead_letters: gp.dead_letters,
            });
        }
        let members = g.members.lock().ids.len();
        Ok(GroupInfo {
            name: g.name.clone(),
            topic: g.topic.clone(),
            mode: g.mode,
            config: g.config,
            members,
            redeliveries: g.stats.redeliveries.load(Ordering::Relaxed),
            partitions,
        })
    }

    /// Counters of a group since the broker started: deliveries,
    /// redeliveries, acks, dead letters.
    pub fn group_counters(&self, group: &str) -> Result<[u64; 4], BrokerError> {
        let g = self.group(group)?;
        let s = &g.stats;
        Ok([
            s.deliveries.load(Ordering::Relaxed),
            s.redeliveries.load(Ordering::Relaxed),
            s.acks.load(Ordering::Relaxed),
            s.dead_letters.load(Ordering::Relaxed),
        ])
    }
}
