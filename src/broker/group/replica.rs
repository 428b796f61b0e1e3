//! A queue group's state as it moves between a partition's replicas.
//!
//! The partition's leader hands messages out and records acks, dead
//! letters and delivery counts in its ack log; every such record also goes
//! into an in-memory [`Journal`], numbered. A follower says which journal
//! it copies and the number of the first record it lacks (a cursor); the
//! leader answers with the records after it, or with its whole state when
//! the cursor names another journal (a new leader, a restarted one) or
//! records it no longer keeps. The follower writes what it gets to its own
//! ack log, so that when it leads it hands out exactly what was not
//! acknowledged: an ack is confirmed to the consumer only once every
//! in-sync replica has it (the cluster layer waits for their cursors).
//!
//! A journal's id is drawn afresh each time a group's partition is opened
//! or copies another replica's state, so a cursor never matches a journal
//! whose history it did not see.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use spool_protocol::requests::{WireAckRecord, WireAckState, WireGroupChanges, WireGroupCursor};
use spool_protocol::PartitionId;

use super::ack_log::{AckRecord, AckState};
use super::queue_state::QueueState;
use super::{storage_error, GroupMode, GroupPartition};
use crate::broker::{Broker, BrokerError};
use crate::storage::FileSync;

/// Records a journal keeps (about 400 KiB): a follower further behind gets
/// the whole state instead.
const JOURNAL_RECORDS: usize = 1 << 14;
/// Records sent per group in one answer.
const RECORDS_PER_ANSWER: usize = 8_192;

/// The numbered recent records of one group on one partition. It keeps
/// records only once a follower has asked for them: a single server, or a
/// partition with one copy, only counts them.
pub(super) struct Journal {
    id: u64,
    /// The number of `records[0]`.
    start: u64,
    records: VecDeque<AckRecord>,
    /// A follower has asked.
    wanted: bool,
}

impl Journal {
    pub(super) fn new() -> Journal {
        Journal {
            id: fresh_id(),
            start: 0,
            records: VecDeque::new(),
            wanted: false,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    pub(super) fn push(&mut self, records: &[AckRecord]) {
        if !self.wanted {
            self.start += records.len() as u64;
            return;
        }
        self.records.extend(records.iter().copied());
        while self.records.len() > JOURNAL_RECORDS {
            self.records.pop_front();
            self.start += 1;
        }
    }

    /// The records from `seq` on (at most `max`), if this journal has them.
    fn since(&self, seq: u64, max: usize) -> Option<Vec<AckRecord>> {
        if seq < self.start || seq > self.end() {
            return None;
        }
        let skip = (seq - self.start) as usize;
        Some(self.records.iter().skip(skip).take(max).copied().collect())
    }
}

/// A journal id no other opening of a group has (0 means "none"): 64
/// random bits.
fn fresh_id() -> u64 {
    crate::simulation::random_u64().max(1)
}

impl GroupPartition {
    /// Replaces this replica's state with the leader's (durably: the
    /// snapshot is written and the log emptied).
    fn install(&mut self, state: AckState) -> Result<(), crate::storage::StorageError> {
        self.log.compact(&state)?;
        self.restore(&state);
        Ok(())
    }

    /// Records this replica adds itself (it leads): numbered in its
    /// journal, for its followers.
    pub(super) fn journal_local(&mut self, records: &[AckRecord]) {
        if records.is_empty() {
            return;
        }
        self.copying = None;
        self.journal.push(records);
        self.grew.notify_waiters();
    }

    /// Applies the leader's records after this replica's state; returns the
    /// sync to wait for before saying it has them.
    fn apply(
        &mut self,
        records: &[AckRecord],
    ) -> Result<Option<FileSync>, crate::storage::StorageError> {
        let mut state = self.snapshot();
        for r in records {
            state.apply(*r);
        }
        let sync = self.log.append(records)?;
        self.restore(&state);
        if self.log.wants_compaction() {
            self.log.compact(&state)?;
        }
        Ok(sync)
    }

    fn restore(&mut self, state: &AckState) {
        // The state changed outside this replica's journal: a cursor into
        // the old one must not match it any more.
        self.journal = Journal::new();
        self.queue = QueueState::restore(state.floor, state.settled.iter().copied(), &state.counts);
        self.committed = state.committed;
        self.dead_letters = state.dead_letters;
    }
}

fn to_wire(r: AckRecord) -> WireAckRecord {
    let (kind, offset, value) = match r {
        AckRecord::Acked(o) => (1, o, 0),
        AckRecord::AckedRun(first, count) => (7, first, count),
        AckRecord::DeadLettered(o) => (2, o, 0),
        AckRecord::Delivered(o, n) => (3, o, n),
        AckRecord::Committed(o) => (4, o, 0),
        AckRecord::Floor(o) => (5, o, 0),
        AckRecord::Reset(o) => (6, o, 0),
    };
    WireAckRecord {
        kind,
        offset,
        value,
    }
}

fn from_wire(r: &WireAckRecord) -> Result<AckRecord, BrokerError> {
    Ok(match r.kind {
        1 => AckRecord::Acked(r.offset),
        2 => AckRecord::DeadLettered(r.offset),
        3 => AckRecord::Delivered(r.offset, r.value),
        4 => AckRecord::Committed(r.offset),
        5 => AckRecord::Floor(r.offset),
        6 => AckRecord::Reset(r.offset),
        7 => AckRecord::AckedRun(r.offset, r.value),
        kind => {
            return Err(BrokerError::InvalidConfig(format!(
                "unknown ack record kind {kind} from the leader"
            )))
        }
    })
}

fn state_to_wire(s: &AckState) -> WireAckState {
    WireAckState {
        floor: s.floor,
        settled: s.settled.iter().copied().collect(),
        counts: s.counts.iter().map(|(&o, &n)| (n, o)).collect(),
        dead_letters: s.dead_letters,
    }
}

fn state_from_wire(s: &WireAckState) -> AckState {
    AckState::new(
        s.floor,
        s.settled.iter().copied().collect::<BTreeSet<u64>>(),
        s.counts.iter().map(|&(n, o)| (o, n)).collect(),
        None,
        s.dead_letters,
    )
}

impl Broker {
    /// The queue groups reading `topic`.
    fn queue_groups_of(&self, topic: &str) -> Vec<Arc<super::Group>> {
        self.groups()
            .iter()
            .filter(|g| g.topic == topic && g.mode == GroupMode::Queue)
            .map(|g| g.value().clone())
            .collect()
    }

    /// A follower's cursors: for each queue group of `topic`, the leader's
    /// journal it copies and the first record it lacks (journal 0: it has
    /// copied none yet, or led itself since).
    pub fn group_cursors(&self, topic: &str, partition: PartitionId) -> Vec<WireGroupCursor> {
        self.queue_groups_of(topic)
            .into_iter()
            .filter_map(|g| {
                let gp = g.partition(partition).ok()?;
                let (journal, seq) = gp.copying.unwrap_or((0, 0));
                Some(WireGroupCursor {
                    group: g.name.clone(),
                    journal,
                    seq,
                })
            })
            .collect()
    }

    /// What a follower with `cursors` lacks of this (leading) replica's
    /// queue groups on `partition`. A group the follower did not name is
    /// sent whole.
    pub fn group_changes(
        &self,
        topic: &str,
        partition: PartitionId,
        cursors: &[WireGroupCursor],
    ) -> Vec<WireGroupChanges> {
        let mut out = Vec::new();
        for g in self.queue_groups_of(topic) {
            let Ok(mut gp) = g.partition(partition) else {
                continue;
            };
            gp.journal.wanted = true;
            let journal = &gp.journal;
            let cursor = cursors.iter().find(|c| c.group == g.name);
            let records = cursor
                .filter(|c| c.journal == journal.id)
                .and_then(|c| journal.since(c.seq, RECORDS_PER_ANSWER).map(|r| (c.seq, r)));
            match records {
                Some((_, records)) if records.is_empty() => {}
                Some((from, records)) => out.push(WireGroupChanges {
                    group: g.name.clone(),
                    journal: journal.id,
                    seq: from + records.len() as u64,
                    state: None,
                    records: records.into_iter().map(to_wire).collect(),
                }),
                None => out.push(WireGroupChanges {
                    group: g.name.clone(),
                    journal: journal.id,
                    seq: journal.end(),
                    state: Some(state_to_wire(&gp.snapshot())),
                    records: Vec::new(),
                }),
            }
        }
        out
    }

    /// Where this (leading) replica's journal of `group` on `partition`
    /// ends now: an ack made before this call is replicated once every
    /// in-sync follower's cursor reaches it.
    pub fn group_journal_end(
        &self,
        group: &str,
        partition: PartitionId,
    ) -> Result<(u64, u64), BrokerError> {
        let g = self.group(group)?;
        let gp = g.partition(partition)?;
        Ok((gp.journal.id, gp.journal.end()))
    }

    /// Where this (leading) replica's journal of each queue group of
    /// `topic` on `partition` ends now: (group, journal, end).
    pub fn group_journal_ends(
        &self,
        topic: &str,
        partition: PartitionId,
    ) -> Vec<(String, u64, u64)> {
        self.queue_groups_of(topic)
            .into_iter()
            .filter_map(|g| {
                let gp = g.partition(partition).ok()?;
                Some((g.name.clone(), gp.journal.id, gp.journal.end()))
            })
            .collect()
    }

    /// What is notified when a record is added to the journal of a queue
    /// group of `topic` (register with `notified().enable()` before
    /// asking for [`Broker::group_changes`], so nothing is missed).
    pub fn group_journal_notifiers(&self, topic: &str) -> Vec<Arc<Notify>> {
        self.queue_groups_of(topic)
            .iter()
            .map(|g| g.journal_grew.clone())
            .collect()
    }

    /// A follower applies what its leader sent of its queue groups on
    /// `partition`, durably (this blocks on the disk: call it off the
    /// async workers). Groups it does not have yet are skipped: its next
    /// cursors do not name them, so it gets them whole once it does.
    pub fn apply_group_changes(
        &self,
        partition: PartitionId,
        changes: &[WireGroupChanges],
    ) -> Result<(), BrokerError> {
        for c in changes {
            let Ok(g) = self.group(&c.group) else {
                continue;
            };
            let records = c
                .records
                .iter()
                .map(from_wire)
                .collect::<Result<Vec<_>, _>>()?;
            let context = || format!("copying group {} partition {partition}", c.group);
            let sync = {
                let mut gp = g.partition(partition)?;
                match &c.state {
                    Some(state) => gp
                        .install(state_from_wire(state))
                        .map_err(|e| storage_error(&context(), e))?,
                    None if gp.copying
                        != Some((c.journal, c.seq.saturating_sub(records.len() as u64))) =>
                    {
                        // Records that do not follow what this replica has
                        // (another journal, or another point in it): not
                        // applicable; its next cursor gets the state.
                        continue;
                    }
                    None => {}
                }
                let sync = gp
                    .apply(&records)
                    .map_err(|e| storage_error(&context(), e))?;
                gp.copying = Some((c.journal, c.seq));
                sync
            };
            if let Some(sync) = sync {
                sync.sync_now().map_err(|e| storage_error(&context(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::{BrokerConfig, GroupConfig, Message, TopicConfig};
    use crate::storage::SyncPolicy;
    use spool_protocol::Offset;

    const P: PartitionId = PartitionId(0);

    async fn replica(dir: &std::path::Path) -> Broker {
        let broker = Broker::open(dir, BrokerConfig::default()).expect("open");
        broker
            .create_topic("t", TopicConfig::new(1).sync(SyncPolicy::Never))
            .expect("topic");
        let messages: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
        broker.produce("t", P, &messages).await.expect("produce");
        broker
            .open_group("g", "t", GroupMode::Queue, GroupConfig::default())
            .expect("group");
        broker
    }

    async fn ack(broker: &Broker, member: u64, offsets: std::ops::Range<u64>) {
        let items: Vec<_> = offsets.map(|o| (P, Offset(o))).collect();
        broker.ack("g", member, &items).await.expect("ack");
    }

    /// The follower's side of one exchange; returns what the leader sent.
    fn exchange(leader: &Broker, follower: &Broker) -> Vec<WireGroupChanges> {
        let cursors = follower.group_cursors("t", P);
        let changes = leader.group_changes("t", P, &cursors);
        follower
            .apply_group_changes(P, &changes)
            .expect("apply the leader's changes");
        changes
    }

    #[tokio::test]
    async fn a_follower_copies_acks_and_takes_over_without_redelivering_them() {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, follower) = (replica(ld.path()).await, replica(fd.path()).await);
        let member = leader
            .join_group("g", "t", GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let got = leader
            .deliver("g", member, 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.len(), 10);
        ack(&leader, member, 0..4).await;

        // First contact: the whole state.
        let first = exchange(&leader, &follower);
        assert_eq!(first.len(), 1);
        assert!(first[0].state.is_some(), "{first:?}");
        // Up to date: nothing to send.
        assert!(leader
            .group_changes("t", P, &follower.group_cursors("t", P))
            .is_empty());
        // Then only the records after the cursor.
        ack(&leader, member, 4..6).await;
        let next = exchange(&leader, &follower);
        assert_eq!(next.len(), 1);
        assert!(next[0].state.is_none());
        // Two acks of consecutive offsets: one run.
        assert_eq!(next[0].records.len(), 1, "{next:?}");
        assert_eq!((next[0].records[0].kind, next[0].records[0].value), (7, 2));
        let (journal, end) = leader.group_journal_end("g", P).unwrap();
        let cursor = &follower.group_cursors("t", P)[0];
        assert_eq!((cursor.journal, cursor.seq), (journal, end));

        // The follower leads: what the leader handed out and was not acked
        // goes out again, and nothing that was acked.
        let new_member = follower
            .join_group("g", "t", GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let again = follower
            .deliver("g", new_member, 10, Duration::ZERO)
            .await
            .unwrap();
        let offsets: Vec<u64> = again.iter().map(|m| m.offset.0).collect();
        assert_eq!(offsets, vec![6, 7, 8, 9]);

        // Once it changed the state itself, its cursor names no journal;
        // the old leader, now following it, is sent the whole state, and
        // then agrees.
        ack(&follower, new_member, 6..8).await;
        assert_eq!(follower.group_cursors("t", P)[0].journal, 0);
        let back = exchange(&follower, &leader);
        assert!(back[0].state.is_some());
        let describe = |b: &Broker| b.describe_group("g").unwrap().partitions[0].position;
        assert_eq!(describe(&leader), Offset(8));
        assert_eq!(describe(&follower), Offset(8));
        // The old leader's own deliveries are gone with its state: it
        // hands out only the two unacked ones once it leads again.
        let m = leader
            .join_group("g", "t", GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let left = leader.deliver("g", m, 10, Duration::ZERO).await.unwrap();
        let offsets: Vec<u64> = left.iter().map(|m| m.offset.0).collect();
        assert_eq!(offsets, vec![8, 9]);
    }

    #[test]
    fn a_journal_sends_what_it_has_and_nothing_older() {
        let mut j = Journal::new();
        j.push(&[AckRecord::Acked(0)]);
        // Not wanted yet: counted, not kept.
        assert_eq!(j.end(), 1);
        assert_eq!(j.since(0, 10), None);
        assert_eq!(j.since(1, 10), Some(vec![]));
        j.wanted = true;
        let many: Vec<AckRecord> = (1..=JOURNAL_RECORDS as u64 + 5)
            .map(AckRecord::Acked)
            .collect();
        j.push(&many);
        assert_eq!(j.end(), JOURNAL_RECORDS as u64 + 6);
        // The oldest fell out: a follower there gets the whole state.
        assert_eq!(j.since(1, 10), None);
        let tail = j.since(j.end() - 2, 10).expect("kept");
        assert_eq!(tail.len(), 2);
        // Past the end: another journal's cursor, not this one's.
        assert_eq!(j.since(j.end() + 1, 10), None);
    }
}
