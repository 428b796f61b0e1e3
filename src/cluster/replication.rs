//! Replication of partitions between brokers: a partition with more than
//! one replica is led by its holder, and its followers copy it by fetching
//! (the same stored batches, byte for byte).
//!
//! - **Leader**: answers replica fetches, tracks each follower's position
//!   ([`ReplicaProgress`]), raises the log's high watermark (readers see
//!   only below it) and proposes in-sync set changes through the control
//!   plane. A produce with `acks=all` is answered once the high watermark
//!   passes it.
//! - **Follower**: one task per partition fetches from the leader at the
//!   leader epoch the committed state names, cuts its log where its
//!   history left the leader's (the leader says where, from its epochs:
//!   KIP-101), records the leader's epochs and appends.
//! - **Role changes** happen in one place, [`ClusterNode::reconcile`],
//!   run on every committed change: a follower task is stopped and awaited
//!   before the broker starts an epoch as leader, so no fetched batch lands
//!   in a new leader's log under its new epoch.
//!
//! Safety rests on three rules. The leader counts, for the high watermark,
//! every replica in the committed in-sync set *and* every replica it has
//! proposed to add, so no replica enters the set (and becomes electable)
//! missing a record the leader acknowledged. A replica leaves the set only
//! by a committed change, after which the leader stops waiting for it. A
//! new leader is chosen (by the control plane, when the old one's lease
//! expires) only from the in-sync set.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use dashmap::DashMap;
use spool_protocol::requests::{
    ReplicaFetchRequest, ReplicaFetchResponse, WireEpoch, WireGroupChanges,
};
use spool_protocol::{Batch, ErrorCode, Offset, PartitionId};
use tokio_util::sync::CancellationToken;

use super::node::ClusterNode;
use super::placement::NodeId;
use super::replica_progress::ReplicaProgress;
use super::state::{Assignment, ClusterState, Command};
use crate::broker::BrokerError;
use crate::storage::leader_epochs::EpochStart;
use crate::storage::PartitionLog;

/// How much longer than its long-poll wait a follower waits for a fetch's
/// answer before it drops the connection and fetches again.
const FETCH_ANSWER_GRACE: Duration = Duration::from_secs(5);

/// Tunables of replication.
#[derive(Clone, Copy, Debug)]
pub struct ReplicationSettings {
    /// `acks=all` needs at least this many in-sync replicas (capped at the
    /// topic's replication).
    pub min_in_sync: usize,
    /// A follower that has not caught up with the leader's end for this
    /// long leaves the in-sync set.
    pub max_lag: Duration,
    /// How long an `acks=all` produce waits for its followers.
    pub ack_timeout: Duration,
}

impl Default for ReplicationSettings {
    fn default() -> Self {
        ReplicationSettings {
            min_in_sync: 2,
            // Longer than a lease (1.5 s): a follower that died leaves
            // with its lease; this catches one that lives but cannot keep
            // up (a slow disk, a cut link to the leader only).
            max_lag: Duration::from_secs(3),
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a follower proposed back into a partition's in-sync set has
/// to bring its copies of the queue groups' state up to the leader's
/// (one fetch, normally); the proposal goes ahead without it otherwise.
const GROUP_CATCH_UP: Duration = Duration::from_secs(1);

/// Followers' cursors into queue groups' journals, as a leader keeps them:
/// (group, follower) -> (journal, first record it lacks).
type GroupCursors = HashMap<(String, NodeId), (u64, u64)>;

/// `follower` holds `group`'s journal `journal` up to record `seq`.
fn cursor_reached(
    cursors: &GroupCursors,
    group: &str,
    follower: NodeId,
    (journal, seq): (u64, u64),
) -> bool {
    cursors
        .get(&(group.to_string(), follower))
        .is_some_and(|&(j, s)| j == journal && s >= seq)
}

/// A partition this broker leads.
struct Leading {
    epoch: u64,
    log: Arc<PartitionLog>,
    progress: parking_lot::Mutex<ReplicaProgress>,
    /// The in-sync set as committed.
    committed: parking_lot::Mutex<BTreeSet<NodeId>>,
    /// A proposal in flight: counted for the high watermark until decided.
    proposing: parking_lot::Mutex<Option<BTreeSet<NodeId>>>,
    /// Replication factor's share of `min_in_sync`.
    min_in_sync: usize,
    /// Each follower's cursor into each queue group's journal on this
    /// partition: (group, follower) -> (journal, first record it lacks).
    group_cursors: parking_lot::Mutex<GroupCursors>,
    /// Woken when a follower's group cursor moves.
    cursors_moved: tokio::sync::Notify,
}

impl Leading {
    /// The set the high watermark waits for: committed, plus any replica a
    /// proposal in flight would add.
    fn apply_in_sync(&self) {
        let mut effective = self.committed.lock().clone();
        if let Some(proposed) = &*self.proposing.lock() {
            effective.extend(proposed.iter().copied());
        }
        let mut progress = self.progress.lock();
        progress.set_in_sync(&effective, self.log.next_offset());
        self.log.set_high_watermark(progress.high_watermark());
    }
}

/// A follower task.
struct Following {
    leader: NodeId,
    epoch: u64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// This broker's replication: the partitions it leads and follows.
pub struct Replicas {
    settings: ReplicationSettings,
    leading: DashMap<(String, u32), Arc<Leading>>,
    /// Ordered, as every map whose order decides what runs next: a
    /// simulated cluster replays from its seed only if that order does.
    following: tokio::sync::Mutex<BTreeMap<(String, u32), Following>>,
    started: Instant,
}

/// Why a replica fetch was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaFetchError {
    /// This broker does not lead the partition (at any epoch).
    #[error("broker does not lead {0}")]
    NotLeading(String),
    /// It leads at another epoch than the follower's.
    #[error("{what} is at leader epoch {ours}, the fetch named {theirs}")]
    EpochMismatch {
        /// The partition.
        what: String,
        /// The leader's.
        ours: u64,
        /// The follower's.
        theirs: u64,
    },
    /// Reading the log failed.
    #[error("{0}")]
    Broker(#[from] BrokerError),
}

/// Why an `acks=all` produce was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// Too few replicas in sync to take the write.
    #[error("{what} has {in_sync} in-sync replicas, fewer than the minimum {min}")]
    NotEnoughReplicas {
        /// The partition.
        what: String,
        /// In sync now.
        in_sync: usize,
        /// Needed.
        min: usize,
    },
    /// Stored here, not confirmed by the followers in time.
    #[error("{0}")]
    NotReplicated(String),
}

impl AckError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AckError::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            AckError::NotReplicated(_) => ErrorCode::NotReplicated,
        }
    }
}

impl Replicas {
    /// Nothing led or followed yet.
    pub fn new(settings: ReplicationSettings) -> Replicas {
        Replicas {
            settings,
            leading: DashMap::new(),
            following: tokio::sync::Mutex::default(),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The partitions this broker leads, in key order (a DashMap's own
    /// order differs from run to run).
    fn leading_sorted(&self) -> Vec<((String, u32), Arc<Leading>)> {
        let mut all: Vec<_> = self
            .leading
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// True if this broker leads `(topic, partition)` at `epoch` and has
    /// started that epoch in its log (writes before that would carry no
    /// epoch).
    pub fn leads(&self, topic: &str, partition: u32, epoch: u64) -> bool {
        self.leading
            .get(&(topic.to_string(), partition))
            .is_some_and(|l| l.epoch == epoch)
    }

    /// How many records `replica` is behind the end of a partition this
    /// broker leads (0 for the leader itself); `None` if it leads it not.
    pub fn lag(&self, topic: &str, partition: u32, replica: NodeId) -> Option<u64> {
        let leading = self.leading.get(&(topic.to_string(), partition))?;
        let end = leading.log.next_offset();
        let position = leading.progress.lock().position(replica).unwrap_or(end);
        Some(end.0.saturating_sub(position.0))
    }

    /// Before appending with `acks=all`: refuses if too few replicas are in
    /// sync (nothing is stored then).
    pub fn check_in_sync(&self, topic: &str, partition: u32) -> Result<(), AckError> {
        let Some(leading) = self.leading.get(&(topic.to_string(), partition)) else {
            return Ok(());
        };
        let in_sync = leading.committed.lock().len();
        if in_sync < leading.min_in_sync {
            return Err(AckError::NotEnoughReplicas {
                what: format!("{topic}/{partition}"),
                in_sync,
                min: leading.min_in_sync,
            });
        }
        Ok(())
    }

    /// Waits until `done` holds for a partition this broker leads, woken
    /// by `moved` (and every 100 ms, which notices a leadership change that
    /// nothing else follows); `what` names what is waited for in errors.
    /// Returns the leadership it waited under.
    async fn wait_followers(
        &self,
        topic: &str,
        partition: u32,
        what: &str,
        moved: impl Fn(&Leading) -> tokio::sync::futures::Notified<'_>,
        done: impl Fn(&Leading) -> bool,
    ) -> Result<Arc<Leading>, AckError> {
        let Some(leading) = self
            .leading
            .get(&(topic.to_string(), partition))
            .map(|l| l.clone())
        else {
            return Err(AckError::NotReplicated(format!(
                "this broker stopped leading {topic}/{partition} before its followers confirmed {what}"
            )));
        };
        let deadline = tokio::time::Instant::now() + self.settings.ack_timeout;
        loop {
            // Registered before looking, so no change in between is missed.
            let woken = moved(&leading);
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.leads(topic, partition, leading.epoch) {
                return Err(AckError::NotReplicated(format!(
                    "leadership of {topic}/{partition} moved before its followers confirmed {what}"
                )));
            }
            if done(&leading) {
                return Ok(leading.clone());
            }
            let wake = (deadline - tokio::time::Instant::now()).min(Duration::from_millis(100));
            if tokio::time::timeout(wake, woken).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Err(AckError::NotReplicated(format!(
                    "the in-sync replicas of {topic}/{partition} did not confirm {what} within {:?}",
                    self.settings.ack_timeout
                )));
            }
        }
    }

    /// Waits until every in-sync replica holds the records below `end`.
    /// `lease_valid` is asked at the end: a leader whose own lease lapsed
    /// may already be replaced, so it confirms nothing more.
    pub async fn wait_replicated(
        &self,
        topic: &str,
        partition: u32,
        end: Offset,
        lease_valid: impl Fn() -> bool,
    ) -> Result<(), AckError> {
        let leading = self
            .wait_followers(
                topic,
                partition,
                "the batch",
                |l| l.log.visible_end_moved(),
                // This leadership's own high watermark, not the log's: once
                // it ends, the log's is the next leader's, which counts other
                // records (this broker, a follower now, may already have cut
                // the batch and copied the new leader's records over its
                // offsets: found by the simulation, seed 5034, an ack for a
                // batch no replica kept).
                |l| l.progress.lock().high_watermark() >= end,
            )
            .await?;
        let what = || format!("{topic}/{partition}");
        let in_sync = leading.committed.lock().len();
        if in_sync < leading.min_in_sync {
            // It is on fewer copies than promised: say so (Kafka's
            // NOT_ENOUGH_REPLICAS_AFTER_APPEND).
            return Err(AckError::NotEnoughReplicas {
                what: what(),
                in_sync,
                min: leading.min_in_sync,
            });
        }
        if !lease_valid() {
            return Err(AckError::NotReplicated(format!(
                "this broker's lease lapsed before it could confirm a batch of {}",
                what()
            )));
        }
        Ok(())
    }

    /// Waits until every in-sync follower has a queue group's journal of a
    /// partition this broker leads up to record `seq` (an ack made here is
    /// then on every replica a new leader may come from). Like
    /// [`Replicas::wait_replicated`], a leader whose lease lapsed confirms
    /// nothing.
    pub async fn wait_group_replicated(
        &self,
        me: NodeId,
        topic: &str,
        partition: u32,
        group: &str,
        (journal, seq): (u64, u64),
        lease_valid: impl Fn() -> bool,
    ) -> Result<(), AckError> {
        let done = |leading: &Leading| {
            let mut waiting_for = leading.committed.lock().clone();
            if let Some(proposed) = &*leading.proposing.lock() {
                waiting_for.extend(proposed.iter().copied());
            }
            waiting_for.remove(&me);
            let cursors = leading.group_cursors.lock();
            waiting_for
                .iter()
                .all(|f| cursor_reached(&cursors, group, *f, (journal, seq)))
        };
        let what = format!("the acks of group {group}");
        self.wait_followers(
            topic,
            partition,
            &what,
            |l| l.cursors_moved.notified(),
            done,
        )
        .await?;
        if !lease_valid() {
            return Err(AckError::NotReplicated(format!(
                "this broker's lease lapsed before it could confirm {what} on {topic}/{partition}"
            )));
        }
        Ok(())
    }

    /// Answers a follower: where its log left this one's history, or the
    /// batches after its end and what it lacks of the queue groups' state
    /// (waiting up to `max_wait` for some).
    pub async fn replica_fetch(
        &self,
        broker: &crate::broker::Broker,
        request: &ReplicaFetchRequest,
        max_wait: Duration,
    ) -> Result<ReplicaFetchResponse, ReplicaFetchError> {
        let what = || format!("{}/{}", request.topic, request.partition);
        let leading = self
            .leading
            .get(&(request.topic.clone(), request.partition))
            .map(|l| l.clone())
            .ok_or_else(|| ReplicaFetchError::NotLeading(what()))?;
        if leading.epoch != request.leader_epoch {
            return Err(ReplicaFetchError::EpochMismatch {
                what: what(),
                ours: leading.epoch,
                theirs: request.leader_epoch,
            });
        }
        let log = &leading.log;
        let offset = Offset(request.offset);
        let answer = |diverging: Option<EpochStart>,
                      fetched: Option<crate::storage::Fetched>,
                      groups: Vec<WireGroupChanges>| {
            let epochs = log
                .epochs_after(request.last_epoch)
                .into_iter()
                .map(|e| WireEpoch {
                    epoch: e.epoch,
                    start: e.start.0,
                })
                .collect();
            ReplicaFetchResponse {
                leader_epoch: leading.epoch,
                high_watermark: log.high_watermark().unwrap_or(Offset(0)).0,
                log_start: log.start_offset().0,
                log_end: log.next_offset().0,
                diverging: diverging.map(|e| WireEpoch {
                    epoch: e.epoch,
                    start: e.start.0,
                }),
                epochs,
                groups,
                batches: fetched.map(|f| f.batches).unwrap_or_default(),
            }
        };
        if let Some(at) = divergence(log, offset, request.last_epoch) {
            return Ok(answer(Some(at), None, Vec::new()));
        }
        {
            let follower = NodeId(request.replica);
            let mut cursors = leading.group_cursors.lock();
            for c in &request.groups {
                cursors.insert((c.group.clone(), follower), (c.journal, c.seq));
            }
        }
        leading.cursors_moved.notify_waiters();
        let partition = PartitionId(request.partition);
        {
            let mut progress = leading.progress.lock();
            progress.record_fetch(
                NodeId(request.replica),
                offset,
                log.next_offset(),
                self.now_ms(),
            );
            log.set_high_watermark(progress.high_watermark());
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let max_bytes = u64::from(request.max_bytes.max(1));
        loop {
            let moved = log.visible_end_moved();
            tokio::pin!(moved);
            moved.as_mut().enable();
            // Registered before the journals are read, so no record added
            // in between goes unnoticed.
            let notifiers = broker.group_journal_notifiers(&request.topic);
            let mut grew: Vec<_> = notifiers.iter().map(|n| Box::pin(n.notified())).collect();
            for g in &mut grew {
                g.as_mut().enable();
            }
            let groups = broker.group_changes(&request.topic, partition, &request.groups);
            let fetched =
                log.read_replica(offset, max_bytes)
                    .map_err(|source| BrokerError::Storage {
                        context: format!("reading {} for a replica at {offset}", what()),
                        source,
                    })?;
            // Read first, then check that this broker still leads at this
            // epoch: a leadership dropped is dropped before the log turns
            // follower and is cut, so what was read belongs to this epoch.
            // Without the check, a fetch that waited through the change
            // answered from a log cut and refilled by the next leader,
            // records the asker appended after its own diverged ones
            // (found by the simulation, seed 10007).
            if !self.leads(&request.topic, request.partition, leading.epoch) {
                return Err(ReplicaFetchError::NotLeading(what()));
            }
            if !fetched.batches.is_empty()
                || !groups.is_empty()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(answer(None, Some(fetched), groups));
            }
            let grew = async {
                if grew.is_empty() {
                    std::future::pending::<()>().await
                } else {
                    futures_util::future::select_all(grew).await;
                }
            };
            let _ = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = moved => {}
                    _ = grew => {}
                }
            })
            .await;
        }
    }
}

/// Whether a follower whose log ends at `offset`, with `last_epoch` its
/// latest epoch, has left this log's history: `None` if its log is a
/// prefix of this one's, else the largest epoch here not above
/// `last_epoch` and where it ends here (Kafka's OffsetsForLeaderEpoch);
/// epoch 0 with this log's start when there is none.
fn divergence(log: &PartitionLog, offset: Offset, last_epoch: u64) -> Option<EpochStart> {
    let none_here = EpochStart {
        epoch: 0,
        start: log.start_offset(),
    };
    if last_epoch == 0 {
        // No epochs: an empty log is a prefix of any; records without an
        // epoch have nothing to be matched by.
        return (offset > Offset(0)).then_some(none_here);
    }
    match log.epoch_end(last_epoch) {
        Some(end) if end.epoch == last_epoch && end.start >= offset => None,
        Some(end) => Some(end),
        None => Some(none_here),
    }
}

/// Where a follower cuts its log when its leader says it diverged: the
/// smaller of the leader's end of `theirs.epoch` and its own end of that
/// epoch (its own end of the largest epoch it has not above it), so that
/// what is left is the same on both.
fn cut_point(log: &PartitionLog, theirs: EpochStart) -> Offset {
    let own_end = if theirs.epoch == 0 {
        log.start_offset()
    } else {
        match log.epoch_end(theirs.epoch) {
            Some(mine) => mine.start,
            None => log.start_offset(),
        }
    };
    theirs.start.min(own_end).max(log.start_offset())
}

impl ClusterNode {
    /// Brings this broker's roles in line with `state`: starts leading the
    /// replicated partitions it holds (a new epoch in its log), follows the
    /// others it has a copy of, stops what it no longer does.
    pub(super) async fn reconcile(self: &Arc<Self>, state: &ClusterState) {
        let me = self.id();
        let replicas = &self.replicas;
        let mut lead: BTreeMap<(String, u32), &Assignment> = BTreeMap::new();
        let mut follow: BTreeMap<(String, u32), (NodeId, u64)> = BTreeMap::new();
        for (topic, parts) in &state.assignments {
            for (p, a) in parts.iter().enumerate() {
                if !a.replicated() || !a.replicas.contains(&me) {
                    continue;
                }
                let key = (topic.clone(), p as u32);
                if a.holder == me {
                    lead.insert(key, a);
                } else {
                    follow.insert(key, (a.holder, a.leader_epoch));
                }
            }
        }
        // Stale roles end before new ones begin: a partition this broker
        // is about to lead has its fetcher stopped before the epoch
        // begins, and one it stops leading is dropped before a fetcher
        // starts copying another leader's records into its log (a replica
        // fetch still served from the old leadership would hand those to
        // its own followers as this epoch's).
        {
            let mut following = replicas.following.lock().await;
            let stale: Vec<(String, u32)> = following
                .iter()
                .filter(|(k, f)| follow.get(*k) != Some(&(f.leader, f.epoch)))
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                if let Some(f) = following.remove(&key) {
                    f.stop.cancel();
                    let _ = f.task.await;
                }
            }
            replicas
                .leading
                .retain(|k, l| lead.get(k).is_some_and(|a| a.leader_epoch == l.epoch));
            for (key, (leader, epoch)) in &follow {
                if following.contains_key(key) {
                    continue;
                }
                let Some(addr) = state.members.get(leader).map(|m| m.client_addr.clone()) else {
                    continue;
                };
                let stop = CancellationToken::new();
                let task = tokio::spawn(self.clone().follow(
                    key.0.clone(),
                    key.1,
                    addr,
                    *epoch,
                    stop.clone(),
                ));
                following.insert(
                    key.clone(),
                    Following {
                        leader: *leader,
                        epoch: *epoch,
                        stop,
                        task,
                    },
                );
            }
        }
        for (key, a) in lead {
            if let Some(leading) = replicas.leading.get(&key).map(|l| l.clone()) {
                // Copies added or dropped by a reassignment.
                leading
                    .progress
                    .lock()
                    .set_replicas(&a.replicas, replicas.now_ms());
                let committed: BTreeSet<NodeId> = a.in_sync.iter().copied().collect();
                if *leading.committed.lock() != committed {
                    *leading.committed.lock() = committed;
                    leading.apply_in_sync();
                }
                continue;
            }
            if !self.lease_valid() {
                // Not before this broker's state has caught up with the
                // Raft leader's (the lease says so): a broker restarted on
                // a stale state would begin an epoch it no longer holds.
                continue;
            }
            if self
                .broker
                .partition_log(&key.0, PartitionId(key.1))
                .is_err()
            {
                // A new topic: create it here now rather than wait for the
                // topic sync, so its writes start without a retry.
                let (broker, name, snapshot) =
                    (self.broker.clone(), key.0.clone(), Arc::new(state.clone()));
                let _ = crate::simulation::spawn_blocking(move || {
                    super::node::ensure_local(&broker, &name, &snapshot)
                })
                .await;
            }
            if let Err(e) = self.start_leading(&key.0, key.1, a).await {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "cannot take the lead yet; retrying");
            }
        }
    }

    async fn start_leading(
        &self,
        topic: &str,
        partition: u32,
        a: &Assignment,
    ) -> Result<(), String> {
        let log = self
            .broker
            .partition_log(topic, PartitionId(partition))
            .map_err(|e| e.to_string())?;
        let epoch = a.leader_epoch;
        let started = {
            let log = log.clone();
            // Durable (an fsync): off the async workers.
            crate::simulation::spawn_blocking(move || log.begin_epoch(epoch))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        // What it knew as a follower is on every in-sync replica; from
        // there on the followers' fetches raise it.
        let hwm = log
            .high_watermark()
            .unwrap_or(Offset(0))
            .max(log.start_offset())
            .min(log.next_offset());
        let replicas = &self.replicas;
        let progress = ReplicaProgress::new(
            self.id(),
            &a.replicas,
            &a.in_sync,
            hwm,
            replicas.now_ms(),
            replicas.settings.max_lag.as_millis() as u64,
        );
        let leading = Arc::new(Leading {
            epoch,
            log,
            progress: parking_lot::Mutex::new(progress),
            committed: parking_lot::Mutex::new(a.in_sync.iter().copied().collect()),
            proposing: parking_lot::Mutex::new(None),
            min_in_sync: replicas.settings.min_in_sync.min(a.replicas.len()),
            group_cursors: parking_lot::Mutex::default(),
            cursors_moved: tokio::sync::Notify::new(),
        });
        leading.apply_in_sync();
        replicas
            .leading
            .insert((topic.to_string(), partition), leading);
        crate::metrics::LEADERSHIPS_TAKEN.inc();
        tracing::info!(topic, partition, epoch, start = %started, high_watermark = %hwm, "leading partition");
        Ok(())
    }

    /// Publishes the replication gauges for the partitions this broker
    /// leads.
    pub(super) fn publish_replication_metrics(&self) {
        let (mut under, mut lag, mut led) = (0i64, 0u64, 0i64);
        for entry in self.replicas.leading.iter() {
            let leading = entry.value();
            led += 1;
            let end = leading.log.next_offset();
            let progress = leading.progress.lock();
            if leading.committed.lock().len() < progress.replica_count() {
                under += 1;
            }
            lag = lag.max(progress.max_lag(end));
        }
        crate::metrics::UNDER_REPLICATED.set(under);
        crate::metrics::REPLICATION_LAG.set(lag as i64);
        crate::metrics::LEADING_REPLICATED.set(led);
    }

    /// Proposes in-sync set changes for the partitions this broker leads:
    /// followers that stopped catching up leave, caught-up ones return.
    pub(super) fn propose_in_sync(self: &Arc<Self>) {
        let now = self.replicas.now_ms();
        for ((topic, partition), leading) in self.replicas.leading_sorted() {
            let Some(proposed) = leading.progress.lock().proposed_in_sync(now) else {
                continue;
            };
            {
                let mut proposing = leading.proposing.lock();
                if proposing.is_some() {
                    continue;
                }
                *proposing = Some(proposed.clone());
            }
            leading.apply_in_sync();
            let node = self.clone();
            tokio::spawn(async move {
                let Some(proposed) = node
                    .with_groups_caught_up(&topic, partition, &leading, proposed)
                    .await
                else {
                    *leading.proposing.lock() = None;
                    leading.apply_in_sync();
                    return;
                };
                let command = Command::SetInSync {
                    topic: topic.clone(),
                    partition,
                    leader_epoch: leading.epoch,
                    in_sync: proposed.iter().copied().collect(),
                };
                let outcome = node.submit(command).await;
                tracing::info!(topic, partition, in_sync = ?proposed, outcome = ?outcome, "proposed an in-sync set");
                // Decided either way: from the next committed state on,
                // the committed set alone counts.
                let mut state = node.state_watch();
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    state.wait_for(|s| {
                        s.assignment(&topic, PartitionId(partition))
                            .is_none_or(|a| {
                                a.leader_epoch != leading.epoch
                                    || a.in_sync.iter().copied().collect::<BTreeSet<_>>()
                                        == proposed
                            })
                    }),
                )
                .await;
                *leading.proposing.lock() = None;
                if let Some(a) = node.state().assignment(&topic, PartitionId(partition)) {
                    if a.leader_epoch == leading.epoch {
                        *leading.committed.lock() = a.in_sync.iter().copied().collect();
                    }
                }
                leading.apply_in_sync();
            });
        }
    }

    /// A proposal without the followers it would add that do not hold
    /// every queue group's state of the partition up to where the leader's
    /// journals end once the proposal is in flight (`None` if nothing is
    /// left to propose). Acks confirmed before the proposal did not wait
    /// for those followers; one that returned without them and later led
    /// would deliver acknowledged messages again (found by the simulation,
    /// seed 10315: a follower cut off for 2 s came back with its data but
    /// with a group state 340 acks old). Acks made from the proposal on
    /// wait for it, so the point it must reach stays put: it is waited
    /// for, up to `GROUP_CATCH_UP`.
    async fn with_groups_caught_up(
        &self,
        topic: &str,
        partition: u32,
        leading: &Leading,
        proposed: BTreeSet<NodeId>,
    ) -> Option<BTreeSet<NodeId>> {
        let committed = leading.committed.lock().clone();
        let joining: Vec<NodeId> = proposed
            .iter()
            .filter(|r| !committed.contains(r) && **r != self.id())
            .copied()
            .collect();
        if joining.is_empty() {
            return Some(proposed);
        }
        // Read after the proposal was registered (`proposing`): an ack
        // made before is below these ends, one made after waits for the
        // joining followers too.
        let targets = self
            .broker
            .group_journal_ends(topic, PartitionId(partition));
        let deadline = tokio::time::Instant::now() + GROUP_CATCH_UP;
        let unready = loop {
            let woken = leading.cursors_moved.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let unready: Vec<NodeId> = {
                let cursors = leading.group_cursors.lock();
                joining
                    .iter()
                    .filter(|f| {
                        !targets.iter().all(|(group, journal, end)| {
                            cursor_reached(&cursors, group, **f, (*journal, *end))
                        })
                    })
                    .copied()
                    .collect()
            };
            if unready.is_empty() || tokio::time::Instant::now() >= deadline {
                break unready;
            }
            let _ = tokio::time::timeout_at(deadline, woken).await;
        };
        if unready.is_empty() {
            return Some(proposed);
        }
        tracing::debug!(topic, partition, followers = ?unready, "not proposed back in sync: their copy of a queue group's state is behind");
        let trimmed: BTreeSet<NodeId> = proposed
            .into_iter()
            .filter(|r| !unready.contains(r))
            .collect();
        if trimmed == committed {
            return None;
        }
        *leading.proposing.lock() = Some(trimmed.clone());
        leading.apply_in_sync();
        Some(trimmed)
    }

    /// One follower: fetches `(topic, partition)` from the leader at
    /// `addr` at `epoch` until stopped.
    async fn follow(
        self: Arc<Self>,
        topic: String,
        partition: u32,
        addr: String,
        epoch: u64,
        stop: CancellationToken,
    ) {
        let mut client: Option<spool_client::Client> = None;
        let mut backoff = Duration::from_millis(20);
        loop {
            if stop.is_cancelled() {
                return;
            }
            let step = async {
                let c = match &client {
                    Some(c) => c.clone(),
                    None => {
                        let sock: std::net::SocketAddr = addr
                            .parse()
                            .map_err(|_| format!("leader address {addr:?} is not an address"))?;
                        let c = spool_client::Client::connect_with(sock, self.to_brokers.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                        client = Some(c.clone());
                        c
                    }
                };
                self.fetch_once(&c, &topic, partition, epoch).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = step => r,
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(20),
                Err(e) => {
                    tracing::debug!(topic, partition, leader = %addr, epoch, error = %e, "replica fetch failed; retrying");
                    client = None;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Appends stored batches copied from another broker (a leader, or a
    /// partition's old holder) to the local copy, each at the offset it had
    /// there: batches wholly below `from` are skipped, each of `epochs`
    /// that starts within a batch is noted before it, and a batch that
    /// lands elsewhere (or as a duplicate) means the logs disagree.
    pub(super) async fn append_copied(
        &self,
        topic: &str,
        partition: u32,
        log: &PartitionLog,
        batches: &[u8],
        from: Offset,
        epochs: &[WireEpoch],
    ) -> Result<(), String> {
        let mut rest = batches;
        let mut noted = log.latest_epoch().map_or(0, |e| e.epoch);
        while !rest.is_empty() {
            let batch = Batch::validate(rest).map_err(|e| e.to_string())?;
            let len = batch.bytes().len();
            let base = batch.header().base_offset;
            let next = batch.header().next_offset();
            rest = &rest[len..];
            if next <= from {
                continue;
            }
            for e in epochs {
                if e.epoch > noted && e.start < next.0 {
                    // An epoch that began below what this copy had before
                    // the fetch would claim records it got in an older
                    // epoch: the logs parted unnoticed. Refused, never
                    // noted (the copy would pass for the leader's).
                    if e.start < from.0 {
                        return Err(format!(
                            "the leader's epoch {} starts at {}, below this copy's end {from}: the logs disagree",
                            e.epoch, e.start
                        ));
                    }
                    log.note_epoch(e.epoch, Offset(e.start))
                        .map_err(|err| err.to_string())?;
                    noted = e.epoch;
                }
            }
            let info = self
                .broker
                .append(topic, PartitionId(partition), batch.bytes())
                .await
                .map_err(|e| e.to_string())?;
            if info.base_offset != base || info.duplicate {
                return Err(format!(
                    "a batch copied from offset {base} landed at {} here{}: the logs disagree",
                    info.base_offset,
                    if info.duplicate {
                        " as a duplicate"
                    } else {
                        ""
                    }
                ));
            }
        }
        Ok(())
    }

    /// One fetch and what follows from it: a cut, or appends.
    async fn fetch_once(
        &self,
        client: &spool_client::Client,
        topic: &str,
        partition: u32,
        epoch: u64,
    ) -> Result<(), String> {
        let log = self
            .broker
            .partition_log(topic, PartitionId(partition))
            .map_err(|e| e.to_string())?;
        let end = log.next_offset();
        let request = ReplicaFetchRequest {
            topic: topic.to_string(),
            partition,
            replica: self.id().0,
            leader_epoch: epoch,
            offset: end.0,
            last_epoch: log.latest_epoch().map_or(0, |e| e.epoch),
            max_bytes: 1 << 20,
            max_wait_ms: 500,
            groups: self.broker.group_cursors(topic, PartitionId(partition)),
        };
        // Bounded: a fetch the leader never answers (a half-open
        // connection) must not stall the follower; it reconnects instead.
        let bound = Duration::from_millis(u64::from(request.max_wait_ms)) + FETCH_ANSWER_GRACE;
        let answer = tokio::time::timeout(bound, client.call(&request))
            .await
            .map_err(|_| format!("no answer from the leader within {bound:?}"))?
            .map_err(|e| e.to_string())?;
        tracing::trace!(
            topic,
            partition,
            epoch,
            offset = request.offset,
            last_epoch = request.last_epoch,
            diverging = ?answer.diverging,
            epochs = ?answer.epochs,
            bytes = answer.batches.len(),
            high_watermark = answer.high_watermark,
            "replica fetch answered"
        );
        if let Some(at) = answer
            .diverging
            .filter(|_| !crate::simulation::sabotaged(crate::simulation::Sabotage::SkipTruncation))
        {
            let cut = cut_point(
                &log,
                EpochStart {
                    epoch: at.epoch,
                    start: Offset(at.start),
                },
            );
            tracing::warn!(topic, partition, from = %cut, end = %end, epoch, "cutting this replica's log where it left the leader's");
            let log = log.clone();
            crate::simulation::spawn_blocking(move || log.truncate_to(cut))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            crate::metrics::REPLICA_TRUNCATIONS.inc();
            return Ok(());
        }
        if answer.log_start > end.0 {
            return Err(format!(
                "the leader's log starts at {} (retention), past this replica's end {end}",
                answer.log_start
            ));
        }
        self.append_copied(topic, partition, &log, &answer.batches, end, &answer.epochs)
            .await?;
        log.set_high_watermark(Offset(answer.high_watermark).min(log.next_offset()));
        // Group state names offsets below the leader's high watermark:
        // taken only once this copy's log reaches it, so that a group is
        // never ahead of the log it reads here.
        if !answer.groups.is_empty() && log.next_offset().0 >= answer.high_watermark {
            let broker = self.broker.clone();
            let groups = answer.groups;
            crate::simulation::spawn_blocking(move || {
                broker.apply_group_changes(PartitionId(partition), &groups)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LogConfig;
    use spool_protocol::BatchBuilder;

    fn log(dir: &std::path::Path) -> PartitionLog {
        let config = LogConfig {
            segment_size_bytes: 1 << 20,
            ..LogConfig::default()
        };
        PartitionLog::open(dir, config, false).expect("open")
    }

    fn append(log: &PartitionLog, n: usize) {
        for i in 0..n {
            let mut b = BatchBuilder::new();
            b.push(0, None, format!("r{i}").as_bytes(), &[])
                .expect("push");
            let bytes = b.finish().expect("batch");
            log.append(Batch::validate(&bytes).expect("valid"))
                .expect("append");
        }
    }

    /// Runs the follower's side of the exchange until the leader finds no
    /// divergence; returns the cuts made. Fails if it does not settle.
    fn settle(leader: &PartitionLog, follower: &PartitionLog) -> Vec<Offset> {
        let mut cuts = Vec::new();
        for _ in 0..4 {
            let last = follower.latest_epoch().map_or(0, |e| e.epoch);
            match divergence(leader, follower.next_offset(), last) {
                None => return cuts,
                Some(theirs) => {
                    let cut = cut_point(follower, theirs);
                    follower.truncate_to(cut).expect("truncate");
                    cuts.push(cut);
                }
            }
        }
        panic!("no agreement after 4 exchanges: cuts {cuts:?}");
    }

    #[test]
    fn a_cut_above_the_high_watermark_keeps_the_producer_state_of_what_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let batch = |sequence: u32| {
            let mut b = BatchBuilder::new();
            for i in 0..2 {
                b.push(0, None, format!("s{sequence}-{i}").as_bytes(), &[])
                    .expect("push");
            }
            b.finish_from(7, sequence).expect("batch")
        };
        for s in 0..4 {
            let bytes = batch(s * 2);
            log.append(Batch::validate(&bytes).expect("valid"))
                .expect("append");
        }
        // A follower's bound: only the first batch is known replicated.
        log.set_high_watermark(Offset(2));
        assert_eq!(log.truncate_to(Offset(6)).expect("truncate"), Offset(6));
        // The producer's next batch after the three kept follows on.
        let next = batch(6);
        let info = log
            .append(Batch::validate(&next).expect("valid"))
            .expect("the batch after the kept ones is in order");
        assert_eq!(info.base_offset, Offset(6));
        assert!(!info.duplicate);
    }

    #[test]
    fn an_epoch_begun_without_records_is_forgotten_not_named_forever() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, follower) = (log(a.path()), log(b.path()));
        leader.begin_epoch(1).unwrap();
        append(&leader, 3);
        follower.note_epoch(1, Offset(0)).unwrap();
        append(&follower, 3);
        // The follower briefly believed it led epoch 2 and wrote nothing;
        // the real leader went from 1 to 3.
        follower.begin_epoch(2).unwrap();
        leader.begin_epoch(3).unwrap();
        append(&leader, 2);
        assert_eq!(settle(&leader, &follower), vec![Offset(3)]);
        assert_eq!(follower.latest_epoch().map(|e| e.epoch), Some(1));
        assert_eq!(follower.next_offset(), Offset(3));
    }

    #[test]
    fn records_of_an_epoch_the_leader_never_had_are_cut_at_its_start() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (leader, follower) = (log(a.path()), log(b.path()));
        leader.begin_epoch(1).unwrap();
        append(&leader, 2);
        follower.note_epoch(1, Offset(0)).unwrap();
        append(&follower, 2);
        // The follower led epoch 2 alone for two records; the leader kept
        // epoch 1 going to offset 5, then epoch 3.
        follower.begin_epoch(2).unwrap();
        append(&follower, 2);
        append(&leader, 3);
        leader.begin_epoch(3).unwrap();
        append(&leader, 1);
        // Epoch 1 ends at 5 on the leader, epoch 2 starts at 2 on the
        // follower: everything from 2 goes.
        assert_eq!(settle(&leader, &follower), vec![Offset(2)]);
        assert_eq!(follower.next_offset(), Offset(2));
        assert_eq!(follower.latest_epoch().map(|e| e.epoch), Some(1));
        // A follower that is a prefix is left alone; an empty one too.
        assert_eq!(settle(&leader, &follower), vec![]);
        let c = tempfile::tempdir().unwrap();
        assert_eq!(settle(&leader, &log(c.path())), vec![]);
    }
}
