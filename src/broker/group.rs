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

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spool_protocol::{BatchBuilder, Offset, PartitionId};
use tokio::sync::Notify;

use super::ack_log::{AckLog, AckRecord, AckState};
use super::queue::{MemberId, QueueState, SettleResult};
use super::topic::{self, Topic, TopicConfig};
use super::{Broker, BrokerError};
use crate::storage::meta_file::{self, MetaKind};
use crate::storage::{atomic_file, FileSync, PartitionLog, StorageError, SyncPolicy};

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

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut members = self.group.members.lock();
        if let Some(r) = members.reserved.get_mut(&self.member) {
            *r -= self.count;
            if *r == 0 {
                members.reserved.remove(&self.member);
            }
        }
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
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (p, log) in topic.partitions.iter().enumerate() {
            let (ack_log, state) = AckLog::open(&dir, p as u32, sync).map_err(|e| {
                storage_error(&format!("opening group {} partition {p}", meta.name), e)
            })?;
            let mut queue =
                QueueState::restore(state.floor, state.settled.iter().copied(), &state.counts);
            queue.drop_below(log.start_offset().0);
            partitions.push(Mutex::new(GroupPartition {
                queue,
                log: ack_log,
                committed: state.committed,
                dead_letters: state.dead_letters,
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
            continue;
        }
        if let Some(group) = Group::open(entry.path(), &topic_of)? {
            groups.push(group);
        }
    }
    Ok(groups)
}

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
                tracing::info!(group, topic = %topic.name, ?mode, "group created");
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
            let (out, next_event_ms) = self.deliver_once(&g, &topic, member, max).await?;
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
    ) -> Result<(Vec<DeliveredMessage>, Option<u64>), BrokerError> {
        let reservation = g.reserve(member, max);
        let mut remaining = reservation.count;
        let mut syncs = Vec::new();
        let mut out = Vec::new();
        let mut next_event: Option<u64> = None;
        let n = topic.partitions.len();
        let start = g.rotation.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let p = (start + i) % n;
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
                let took = if remaining > 0 {
                    gp.queue.take(
                        member,
                        now,
                        g.config.ack_wait_ms,
                        remaining,
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
            remaining -= took.len();
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
                    for (d, r) in took.iter().zip(records) {
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
        exhausted: &[super::queue::Delivery],
    ) -> Result<(), BrokerError> {
        let dlq = format!("{}.dlq", g.name);
        if self.topic(&dlq).is_err() {
            let config = TopicConfig::new(1).sync(topic.config.log.sync);
            // Creating a topic writes and fsyncs files: not on an async worker.
            let (broker, name) = (self.clone(), dlq.clone());
            let created = tokio::task::spawn_blocking(move || broker.create_topic(&name, config))
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
        for (d, r) in exhausted.iter().zip(&records) {
            let partition_text = partition.0.to_string();
            let offset_text = d.offset.to_string();
            let deliveries_text = d.deliveries.to_string();
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
                (b"spool.dlq.reason", b"max_deliveries_exceeded"),
            ]);
            builder.push(r.timestamp_ms, r.key.as_deref(), &r.value, &headers)?;
        }
        let batch = builder.finish()?;
        self.append(&dlq, PartitionId(0), &batch).await?;
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
        let mut by_partition: HashMap<PartitionId, Vec<usize>> = HashMap::new();
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
                gp.append(&records)
                    .map_err(|e| storage_error(&format!("recording acks of {group}/{p}"), e))?,
            );
        }
        g.stats.acks.fetch_add(acked, Ordering::Relaxed);
        // Acks free in-flight capacity; nacks make messages deliverable.
        g.changed.notify_waiters();
        Ok((results, syncs))
    }

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

    fn group(&self, name: &str) -> Result<Arc<Group>, BrokerError> {
        self.groups()
            .get(name)
            .map(|g| g.value().clone())
            .ok_or_else(|| BrokerError::GroupNotFound(name.to_string()))
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
/// zero-copy slices of the segment map.
fn read_records(
    log: &Arc<PartitionLog>,
    offsets: &[u64],
) -> Result<Vec<OwnedRecord>, StorageError> {
    let mut wanted: Vec<(u64, usize)> = offsets.iter().copied().zip(0..).collect();
    wanted.sort_unstable();
    let mut found: Vec<Option<OwnedRecord>> = (0..offsets.len()).map(|_| None).collect();
    let mut i = 0;
    while i < wanted.len() {
        // One batch per read (storage returns at least one whole batch):
        // reading ahead would CRC and walk records nobody asked for.
        let fetched = log.read(Offset(wanted[i].0), 1)?;
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
                found[wanted[i].1] = Some(OwnedRecord {
                    timestamp_ms: record.timestamp_ms,
                    key: record.key.map(|k| bytes.slice_ref(k)),
                    value: bytes.slice_ref(record.value),
                    headers: record
                        .headers()
                        .map(|(n, v)| (bytes.slice_ref(n), bytes.slice_ref(v)))
                        .collect(),
                });
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
