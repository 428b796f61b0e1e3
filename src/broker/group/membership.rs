//! Joining and leaving groups, and the stream-mode partition assignment.

use std::collections::BTreeSet;
use std::sync::Arc;

use spool_protocol::PartitionId;

use super::queue_state::MemberId;
use super::{Group, GroupConfig, GroupMode};
use crate::broker::{Broker, BrokerError};

/// The range assignment: members sorted by id, partitions split into
/// contiguous runs, the first `partitions % members` members one larger.
pub fn assign(partitions: u32, members: &BTreeSet<MemberId>, member: MemberId) -> Vec<PartitionId> {
    let Some(index) = members.iter().position(|&m| m == member) else {
        return Vec::new();
    };
    let n = members.len() as u32;
    let index = index as u32;
    let base = partitions / n;
    let extra = partitions % n;
    let start = index * base + index.min(extra);
    let len = base + u32::from(index < extra);
    (start..start + len).map(PartitionId).collect()
}

impl Broker {
    /// Joins `group` (creating it, bound to `topic` in `mode` with `config`,
    /// if it does not exist) and returns the new member's id. A group is
    /// bound to its topic and mode for life.
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        mode: GroupMode,
        config: GroupConfig,
    ) -> Result<MemberId, BrokerError> {
        self.check_open()?;
        let existing = self.groups().get(group).map(|g| g.clone());
        let g = match existing {
            Some(g) => g,
            None => self.create_group(group, topic, mode, config)?,
        };
        if g.topic != topic || g.mode != mode {
            return Err(BrokerError::GroupMismatch {
                group: group.to_string(),
                reason: format!("the group consumes {} in {:?} mode", g.topic, g.mode),
            });
        }
        let member = self.next_member_id();
        let mut members = g.members.lock();
        let limit = self.config().max_members_per_group;
        if members.ids.len() >= limit {
            return Err(BrokerError::LimitReached {
                what: "members of one group",
                limit,
            });
        }
        members.ids.insert(member);
        members.generation += 1;
        Ok(member)
    }

    /// Opens `group` here if it is new (a cluster's committed queue group),
    /// without joining it.
    pub fn open_group(
        &self,
        group: &str,
        topic: &str,
        mode: GroupMode,
        config: GroupConfig,
    ) -> Result<(), BrokerError> {
        self.check_open()?;
        self.create_group(group, topic, mode, config).map(|_| ())
    }

    /// The topic `group` reads.
    pub fn group_topic(&self, group: &str) -> Result<String, BrokerError> {
        self.group(group).map(|g| g.topic.clone())
    }

    /// True if `group` is open here.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups().contains_key(group)
    }

    fn create_group(
        &self,
        group: &str,
        topic: &str,
        mode: GroupMode,
        config: GroupConfig,
    ) -> Result<Arc<Group>, BrokerError> {
        let _admin = self.admin_lock();
        let limit = self.config().max_groups;
        if self.groups().len() >= limit && !self.groups().contains_key(group) {
            return Err(BrokerError::LimitReached {
                what: "consumer groups",
                limit,
            });
        }
        Ok(match self.groups().entry(group.to_string()) {
            dashmap::Entry::Occupied(g) => g.get().clone(),
            dashmap::Entry::Vacant(slot) => {
                let topic = self.topic(topic)?;
                let created = Arc::new(Group::create(
                    &self.groups_dir(),
                    group,
                    &topic,
                    mode,
                    config,
                )?);
                tracing::info!(group, topic = %topic.name, %mode, "group created");
                slot.insert(created.clone());
                created
            }
        })
    }

    /// Leaves a group. In queue mode whatever the member held becomes
    /// deliverable to the others at once.
    pub fn leave_group(&self, group: &str, member: MemberId) -> Result<(), BrokerError> {
        let g = self.group(group)?;
        {
            let mut members = g.members.lock();
            if !members.ids.remove(&member) {
                return Ok(());
            }
            members.generation += 1;
        }
        let now = self.config().clock.now_ms();
        for p in &g.partitions {
            p.lock().queue.release_member(member, now);
        }
        g.changed.notify_waiters();
        Ok(())
    }

    /// Stream mode: this member's partitions, and the generation they were
    /// computed for (it changes whenever membership does).
    pub fn group_assignment(
        &self,
        group: &str,
        member: MemberId,
    ) -> Result<(u32, Vec<PartitionId>), BrokerError> {
        let g = self.group(group)?;
        let members = g.members.lock();
        if !members.ids.contains(&member) {
            return Err(BrokerError::UnknownMember {
                group: group.to_string(),
                member,
            });
        }
        Ok((
            members.generation,
            assign(g.partitions.len() as u32, &members.ids, member),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_covers_every_partition_once() {
        for members in 1..6u64 {
            let ids: BTreeSet<MemberId> = (10..10 + members).collect();
            for partitions in 0..13u32 {
                let mut all: Vec<u32> = ids
                    .iter()
                    .flat_map(|&m| assign(partitions, &ids, m))
                    .map(|p| p.0)
                    .collect();
                all.sort();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
                let sizes: Vec<usize> = ids
                    .iter()
                    .map(|&m| assign(partitions, &ids, m).len())
                    .collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
        assert!(assign(4, &BTreeSet::from([1]), 2).is_empty());
    }
}
