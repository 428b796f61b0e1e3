//! Consumer groups: named, bound to one topic, in one of two modes.
//!
//! - **Stream**: members read partitions themselves and commit offsets; the
//!   topic's partitions are shared out among the members (range assignment
//!   over member ids, recomputed with a new generation whenever a member
//!   joins or leaves).
//! - **Queue**: the broker hands messages out ([`Broker::deliver`]); each
//!   delivery has an ack deadline; ack settles it, nack (with an optional
//!   delay) or a missed deadline makes it deliverable again with its delivery
//!   count up; after `max_deliveries` it is copied to the dead-letter topic
//!   `<group>.dlq` (headers say where from and why) and settled. Each member
//!   has at most `max_in_flight` unsettled messages. When a member leaves (a
//!   server connection closes), what it held is deliverable again at once.
//!
//! State per partition is a [`QueueState`] made durable by an [`AckLog`].
//! Acks are in the ack log before they are confirmed; what was delivered but
//! not acked at a crash is delivered again (at least once).
//!
//! On disk: `<dir>/groups/<group>/group.meta` (bincode) and
//! `<dir>/groups/<group>/<partition>.acklog|.ackstate`.
//!
//! This module holds the types, the group's state and its files; the
//! broker's group API is split by job: `membership` (join, leave,
//! assignment), `delivery` (queue deliveries and dead-lettering), `settle`
//! (acks, nacks, touches, stream commits), `admin` (reset, list, describe).
//! `queue` is the per-partition delivery state machine, `ack_log` its
//! durable record.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spool_protocol::{Offset, PartitionId};
use tokio::sync::Notify;

mod ack_log;
mod admin;
mod delivery;
mod membership;
pub(crate) mod queue_state;
mod replica;
mod settle;

use self::ack_log::{AckLog, AckRecord, AckState};
use self::queue_state::{MemberId, QueueState};
use self::replica::Journal;
use super::topic::{self, Topic};
use super::{Broker, BrokerError};
use crate::storage::meta_file::{self, MetaKind};
use crate::storage::{atomic_file, FileSync, StorageError, SyncPolicy};

const META_FILE: &str = "group.meta";
/// `group.meta`: the group's name, topic, mode and configuration.
const META_KIND: MetaKind = MetaKind {
    magic: *b"SPGM",
    version: 1,
};
/// Largest number of messages one delivery hands out.
pub const MAX_DELIVER_MESSAGES: usize = 10_000;

/// How a group consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupMode {
    /// Members read partitions and commit offsets.
    Stream,
    /// The broker hands out messages that members ack.
    Queue,
}

impl std::fmt::Display for GroupMode {
    /// `stream` or `queue`, as the command line spells them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GroupMode::Stream => "stream",
            GroupMode::Queue => "queue",
        })
    }
}

/// Queue-mode settings, fixed when the group is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Time a member has to ack a delivery before it is redelivered.
    pub ack_wait_ms: u64,
    /// Deliveries before a message goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// Unsettled messages one member may hold.
    pub max_in_flight: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            ack_wait_ms: 30_000,
            max_deliveries: 5,
            max_in_flight: 1000,
        }
    }
}

/// Where a group reset moves every partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The first stored offset.
    Earliest,
    /// The end of the log: skip everything stored.
    Latest,
    /// This offset (clamped to what is stored).
    Offset(u64),
}

/// A message handed out in queue mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredMessage {
    /// Its partition.
    pub partition: PartitionId,
    /// Its offset.
    pub offset: Offset,
    /// Deliveries so far, this one included (1 the first time).
    pub deliveries: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Its key.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Its headers.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// One partition's view of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPartitionInfo {
    /// The partition.
    pub partition: PartitionId,
    /// Queue: every offset below is settled. Stream: the committed offset.
    pub position: Offset,
    /// The partition's end offset.
    pub end: Offset,
    /// `end - position`.
    pub lag: u64,
    /// Delivered, not settled.
    pub in_flight: usize,
    /// Waiting for redelivery.
    pub pending: usize,
    /// Moved to the dead-letter topic, ever.
    pub dead_letters: u64,
}

/// A delivered message of a queue group that is not settled yet (Redis's
/// `XPENDING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingMessage {
    /// Its partition.
    pub partition: PartitionId,
    /// Its offset.
    pub offset: Offset,
    /// Times delivered so far.
    pub deliveries: u32,
    /// The member holding it; `None` while it waits for redelivery (a nack
    /// delay, or its deadline passed and it has not gone out again).
    pub member: Option<MemberId>,
    /// Milliseconds until its ack deadline (held) or until it may be
    /// delivered again (waiting); 0 if that time has come.
    pub due_in_ms: u64,
}

/// What `describe_group` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub name: String,
    /// The topic it consumes.
    pub topic: String,
    /// Its mode.
    pub mode: GroupMode,
    /// Its settings.
    pub config: GroupConfig,
    /// Members now.
    pub members: usize,
    /// Redeliveries since the broker started.
    pub redeliveries: u64,
    /// Per partition.
    pub partitions: Vec<GroupPartitionInfo>,
}

#[derive(Serialize, Deserialize)]
struct GroupMeta {
    name: String,
    topic: String,
    mode: GroupMode,
    config: GroupConfig,
}

struct GroupPartition {
    queue: QueueState,
    log: AckLog,
    committed: Option<u64>,
    dead_letters: u64,
    /// Recent records, numbered, for the partition's followers.
    journal: Journal,
    /// The leader's journal this replica copies and the first record of
    /// it that it lacks; `None` once it changes its state itself.
    copying: Option<(u64, u64)>,
    /// The group's [`Group::journal_grew`].
    grew: Arc<Notify>,
}

impl GroupPartition {
    fn snapshot(&self) -> AckState {
        AckState::new(
            self.queue.low_water_mark(),
            self.queue.settled_above_lwm().collect::<BTreeSet<_>>(),
            self.queue
                .delivery_counts()
                .filter(|&(_, n)| n > 1)
                .collect(),
            self.committed,
            self.dead_letters,
        )
    }

    /// Appends to the ack log; the returned sync (for `always` topics) must
    /// be waited for, with no lock held, before the records are acknowledged
    /// ([`Broker::sync_ack_logs`]).
    fn append(&mut self, records: &[AckRecord]) -> Result<Option<FileSync>, StorageError> {
        let sync = self.log.append(records)?;
        self.journal_local(records);
        if self.log.wants_compaction() {
            // Compaction writes its snapshot durably itself (rare: every
            // `COMPACT_AFTER_RECORDS` records).
            let snapshot = self.snapshot();
            self.log.compact(&snapshot)?;
        }
        Ok(sync)
    }
}

#[derive(Default)]
struct Members {
    ids: BTreeSet<MemberId>,
    generation: u32,
    /// Deliveries that concurrent delivers of a member may still take: a
    /// member's pipelined delivers each reserve their share here, under
    /// this lock, so together they never pass `max_in_flight`.
    reserved: HashMap<MemberId, usize>,
}

/// A member's share of `max_in_flight` claimed by one deliver; handed back
/// on drop (by then what it took is counted as in flight).
struct Reservation<'a> {
    group: &'a Group,
    member: MemberId,
    count: usize,
}

impl Reservation<'_> {
    /// Hands back `n` of the claim: they were just taken, so the member's
    /// in-flight count holds them now (counting them twice would starve the
    /// member's other delivers).
    fn taken(&mut self, n: usize) {
        let n = n.min(self.count);
        if n == 0 {
            return;
        }
        self.count -= n;
        let mut members = self.group.members.lock();
        if let Some(r) = members.reserved.get_mut(&self.member) {
            *r -= n;
            if *r == 0 {
                members.reserved.remove(&self.member);
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let rest = self.count;
        self.taken(rest);
    }
}

/// Counters since the broker started, for metrics and describe.
#[derive(Default)]
pub struct GroupStats {
    /// Messages handed out (first deliveries and redeliveries).
    pub deliveries: AtomicU64,
    /// Of which redeliveries.
    pub redeliveries: AtomicU64,
    /// Acks that settled a message.
    pub acks: AtomicU64,
    /// Messages moved to the dead-letter topic.
    pub dead_letters: AtomicU64,
}

/// An open group.
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) mode: GroupMode,
    pub(crate) config: GroupConfig,
    partitions: Vec<Mutex<GroupPartition>>,
    members: Mutex<Members>,
    /// Woken when something may have become deliverable.
    changed: Notify,
    /// Woken when a partition's journal grows (followers wait on it).
    journal_grew: Arc<Notify>,
    pub(crate) stats: GroupStats,
    rotation: AtomicUsize,
}

impl Group {
    fn create(
        groups_dir: &Path,
        name: &str,
        topic: &Topic,
        mode: GroupMode,
        config: GroupConfig,
    ) -> Result<Group, BrokerError> {
        topic::validate_name(name)?;
        if config.max_deliveries == 0 || config.max_in_flight == 0 || config.ack_wait_ms == 0 {
            return Err(BrokerError::InvalidConfig(
                "ack_wait_ms, max_deliveries and max_in_flight must be at least 1".into(),
            ));
        }
        let dir = groups_dir.join(name);
        fs::create_dir_all(&dir)
            .map_err(|e| storage_error("creating group", StorageError::io(&dir, e)))?;
        let meta = GroupMeta {
            name: name.to_string(),
            topic: topic.name.clone(),
            mode,
            config,
        };
        meta_file::write(
            &dir.join(META_FILE),
            META_KIND,
            &meta,
            atomic_file::Durability::Synced,
        )
        .map_err(|e| storage_error("creating group", e))?;
        Group::open_partitions(dir, meta, topic)
    }

    /// Checks a group's directory without changing it (`spool verify`):
    /// its metadata, and each partition's ack log and snapshot. Returns the
    /// group's name (the directory's if the metadata does not read).
    pub(crate) fn check_dir(dir: &Path) -> (String, Vec<crate::storage::verify::Problem>) {
        let meta_path = dir.join(META_FILE);
        let mut name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut problems = Vec::new();
        match meta_file::read_existing::<GroupMeta>(&meta_path, META_KIND) {
            Ok(meta) => name = meta.name,
            Err(e) => problems.push(crate::storage::verify::Problem {
                file: meta_path,
                position: None,
                kind: "metadata",
                detail: e.to_string(),
            }),
        }
        let mut partitions: Vec<u32> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (p, ext) = name.split_once('.')?;
                matches!(ext, "acklog" | "ackstate").then(|| p.parse().ok())?
            })
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        for p in partitions {
            problems.extend(ack_log::check(dir, p));
        }
        (name, problems)
    }

    fn open(
        dir: PathBuf,
        topic_of: impl Fn(&str) -> Option<Arc<Topic>>,
    ) -> Result<Option<Group>, BrokerError> {
        let meta_path = dir.join(META_FILE);
        let meta: GroupMeta = meta_file::read_existing(&meta_path, META_KIND)
            .map_err(|e| storage_error("reading group metadata", e))?;
        let Some(topic) = topic_of(&meta.topic) else {
            tracing::warn!(group = %meta.name, topic = %meta.topic, "group's topic is gone; ignoring the group");
            return Ok(None);
        };
        Group::open_partitions(dir, meta, &topic).map(Some)
    }

    fn open_partitions(dir: PathBuf, meta: GroupMeta, topic: &Topic) -> Result<Group, BrokerError> {
        let sync = topic.config.log.sync == SyncPolicy::Always;
        let journal_grew = Arc::new(Notify::new());
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (p, log) in topic.partitions.iter().enumerate() {
            let (mut ack_log, state) = AckLog::open(&dir, p as u32, sync).map_err(|e| {
                storage_error(&format!("opening group {} partition {p}", meta.name), e)
            })?;
            let mut queue =
                QueueState::restore(state.floor, state.settled.iter().copied(), &state.counts);
            queue.drop_below(log.start_offset().0);
            let mut committed = state.committed;
            // Recovery cut the log below where this group had got to (a
            // damaged last batch): the offsets past the end will be used
            // again by new messages, which the group must not skip. Move
            // the group back to the end, durably, and say so.
            let end = log.next_offset().0;
            let ahead = state.floor > end
                || state.settled.last().is_some_and(|&o| o >= end)
                || state.counts.keys().any(|&o| o >= end)
                || committed.is_some_and(|c| c > end);
            if ahead {
                // A reset record sets both the queue position and the
                // committed offset on replay: each mode's own, capped.
                let to = match meta.mode {
                    GroupMode::Stream => committed.unwrap_or(0).min(end),
                    GroupMode::Queue => queue.low_water_mark().min(end),
                };
                tracing::warn!(
                    group = %meta.name,
                    partition = p,
                    position = queue.low_water_mark(),
                    committed = ?committed,
                    end,
                    "the partition's log ends below the group's position (recovery cut it): the group moves back to the end, so the offsets written next are delivered",
                );
                let sync = ack_log.append(&[AckRecord::Reset(to)]).map_err(|e| {
                    storage_error(&format!("moving group {} partition {p} back", meta.name), e)
                })?;
                if let Some(sync) = sync {
                    sync.sync_now().map_err(|e| {
                        storage_error(&format!("moving group {} partition {p} back", meta.name), e)
                    })?;
                }
                queue.reset(to);
                committed = Some(to);
            }
            partitions.push(Mutex::new(GroupPartition {
                queue,
                log: ack_log,
                committed,
                dead_letters: state.dead_letters,
                journal: Journal::new(),
                copying: None,
                grew: journal_grew.clone(),
            }));
        }
        Ok(Group {
            name: meta.name,
            topic: meta.topic,
            mode: meta.mode,
            config: meta.config,
            partitions,
            members: Mutex::new(Members::default()),
            changed: Notify::new(),
            journal_grew,
            stats: GroupStats::default(),
            rotation: AtomicUsize::new(0),
        })
    }

    fn partition(&self, p: PartitionId) -> Result<MutexGuard<'_, GroupPartition>, BrokerError> {
        let slot =
            self.partitions
                .get(p.0 as usize)
                .ok_or_else(|| BrokerError::PartitionNotFound {
                    topic: self.topic.clone(),
                    partition: p,
                    partitions: self.partitions.len() as u32,
                })?;
        Ok(slot.lock())
    }

    fn check_member(&self, member: MemberId) -> Result<(), BrokerError> {
        let members = self.members.lock();
        if members.ids.contains(&member) {
            Ok(())
        } else {
            Err(BrokerError::UnknownMember {
                group: self.name.clone(),
                member,
            })
        }
    }

    /// Claims up to `max` deliveries of `member`'s `max_in_flight`.
    fn reserve(&self, member: MemberId, max: usize) -> Reservation<'_> {
        // Partition locks are taken under the members lock here and nowhere
        // the other way round.
        let mut members = self.members.lock();
        let held = self.in_flight_of(member) + members.reserved.get(&member).copied().unwrap_or(0);
        let count = max.min((self.config.max_in_flight as usize).saturating_sub(held));
        if count > 0 {
            *members.reserved.entry(member).or_insert(0) += count;
        }
        Reservation {
            group: self,
            member,
            count,
        }
    }

    fn in_flight_of(&self, member: MemberId) -> usize {
        self.partitions
            .iter()
            .map(|p| p.lock().queue.in_flight_of(member))
            .sum()
    }
}

fn storage_error(context: &str, source: StorageError) -> BrokerError {
    BrokerError::Storage {
        context: context.to_string(),
        source,
    }
}

/// Opens every group under `groups_dir` whose topic still exists.
pub(crate) fn open_all(
    groups_dir: &Path,
    topic_of: impl Fn(&str) -> Option<Arc<Topic>>,
) -> Result<Vec<Group>, BrokerError> {
    fs::create_dir_all(groups_dir)
        .map_err(|e| storage_error("creating groups directory", StorageError::io(groups_dir, e)))?;
    let mut groups = Vec::new();
    let entries = fs::read_dir(groups_dir)
        .map_err(|e| storage_error("listing groups", StorageError::io(groups_dir, e)))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| storage_error("listing groups", StorageError::io(groups_dir, e)))?;
        if !entry.path().join(META_FILE).exists() {
            // What an interrupted deletion (or creation) left: no group.
            if entry.path().is_dir() {
                tracing::info!(dir = %entry.path().display(), "removing a group directory without metadata");
                let _ = fs::remove_dir_all(entry.path());
            }
            continue;
        }
        if let Some(group) = Group::open(entry.path(), &topic_of)? {
            groups.push(group);
        }
    }
    Ok(groups)
}

impl Broker {
    fn group(&self, name: &str) -> Result<Arc<Group>, BrokerError> {
        self.groups()
            .get(name)
            .map(|g| g.value().clone())
            .ok_or_else(|| BrokerError::GroupNotFound(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::{BrokerConfig, Message, TopicConfig};

    /// A thread that panics while holding a group's partition lock must not
    /// take the group down with it: the locks do not poison (they used to,
    /// and every later call on the group failed with `Closed`).
    #[tokio::test]
    async fn a_panic_under_a_group_lock_does_not_break_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        broker
            .create_topic("t", TopicConfig::new(1).sync(SyncPolicy::Never))
            .unwrap();
        broker
            .produce("t", PartitionId(0), &[Message::new("a")])
            .await
            .unwrap();
        let m = broker
            .join_group("g", "t", GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let group = broker.group("g").unwrap();
        let panicked = std::thread::spawn(move || {
            let _held = group.partitions[0].lock();
            panic!("a bug while holding the partition lock");
        })
        .join();
        assert!(panicked.is_err());
        let got = broker.deliver("g", m, 1, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        broker
            .ack("g", m, &[(got[0].partition, got[0].offset)])
            .await
            .unwrap();
    }
}
