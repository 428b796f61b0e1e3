//! Group administration: reset, list, describe, counters.

use std::fs;
use std::sync::atomic::Ordering;

use spool_protocol::{Offset, PartitionId};

use super::ack_log::AckRecord;
use super::{storage_error, GroupInfo, GroupMode, GroupPartitionInfo, PendingMessage, ResetTo};
use crate::broker::{Broker, BrokerError};
use crate::storage::StorageError;

impl Broker {
    /// Moves every partition of a group with no members to `to`.
    pub fn reset_group(&self, group: &str, to: ResetTo) -> Result<(), BrokerError> {
        self.reset_group_partitions(group, to, None)
    }

    /// Moves one partition of a group with no members (here) to `to`, or
    /// every partition if `only` is `None`.
    pub fn reset_group_partitions(
        &self,
        group: &str,
        to: ResetTo,
        only: Option<PartitionId>,
    ) -> Result<(), BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        if !g.members.lock().ids.is_empty() {
            return Err(BrokerError::GroupHasMembers(group.to_string()));
        }
        let topic = self.topic(&g.topic)?;
        if let Some(p) = only {
            topic.partition(p)?;
        }
        for (p, log) in topic.partitions.iter().enumerate() {
            if only.is_some_and(|o| o.0 as usize != p) {
                continue;
            }
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
        tracing::info!(group, ?to, partition = ?only, "group reset");
        Ok(())
    }

    /// Deletes a group that has no members: its state and files. Its
    /// dead-letter topic stays (delete it as a topic).
    pub fn delete_group(&self, group: &str) -> Result<(), BrokerError> {
        self.check_open()?;
        let g = self.group(group)?;
        if !g.members.lock().ids.is_empty() {
            return Err(BrokerError::GroupHasMembers(group.to_string()));
        }
        self.remove_group(group)
    }

    /// Removes a group whatever its members (a cluster removes its copy of
    /// a group the cluster deleted). Without its metadata file a directory
    /// is no group at the next open, so that goes first: a crash part-way
    /// leaves nothing that could open as a half-deleted group.
    pub(crate) fn remove_group(&self, group: &str) -> Result<(), BrokerError> {
        self.groups()
            .remove(group)
            .ok_or_else(|| BrokerError::GroupNotFound(group.to_string()))?;
        let dir = self.groups_dir().join(group);
        let removed = fs::remove_file(dir.join(super::META_FILE))
            .and_then(|()| fs::remove_dir_all(&dir))
            .map_err(|e| StorageError::io(&dir, e))
            .and_then(|()| crate::storage::atomic_file::sync_dir(&self.groups_dir()));
        removed.map_err(|e| storage_error(&format!("deleting group {group}"), e))?;
        tracing::info!(group, "group deleted");
        Ok(())
    }

    /// The delivered, unsettled messages of queue group `group` (of one
    /// partition, or all), by partition and offset, at most `max`.
    pub fn pending_messages(
        &self,
        group: &str,
        partition: Option<PartitionId>,
        max: usize,
    ) -> Result<Vec<PendingMessage>, BrokerError> {
        let g = self.group(group)?;
        if g.mode != GroupMode::Queue {
            return Err(BrokerError::GroupMismatch {
                group: group.to_string(),
                reason: "a stream-mode group has no pending messages (its members commit offsets)"
                    .into(),
            });
        }
        let topic = self.topic(&g.topic)?;
        let partitions = topic.partitions.len() as u32;
        if let Some(want) = partition.filter(|p| p.0 >= partitions) {
            return Err(BrokerError::PartitionNotFound {
                topic: g.topic.clone(),
                partition: want,
                partitions,
            });
        }
        let now = self.config().clock.now_ms();
        let mut out = Vec::new();
        for p in 0..partitions {
            let p = PartitionId(p);
            if partition.is_some_and(|want| want != p) {
                continue;
            }
            let gp = g.partition(p)?;
            for (offset, member, deliveries, due_ms) in gp.queue.unsettled() {
                if out.len() >= max {
                    return Ok(out);
                }
                out.push(PendingMessage {
                    partition: p,
                    offset: Offset(offset),
                    deliveries,
                    member,
                    due_in_ms: due_ms.saturating_sub(now),
                });
            }
        }
        Ok(out)
    }

    /// All groups, sorted by name.
    pub fn list_groups(&self) -> Vec<GroupInfo> {
        self.group_names()
            .into_iter()
            .filter_map(|n| self.describe_group(&n).ok())
            .collect()
    }

    /// The names of all groups, sorted: no state read.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups().iter().map(|g| g.key().clone()).collect();
        names.sort();
        names
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
