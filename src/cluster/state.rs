//! The cluster's replicated state: what the Raft log's entries build, the
//! same on every broker once applied. Pure data and a deterministic
//! `apply`; no clocks, no I/O (the lease *timing* lives with the Raft leader
//! in `leases.rs`, and only its decisions are committed here).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use spool_protocol::PartitionId;

use crate::broker::{GroupConfig, GroupMode, TopicConfig};
use crate::cluster::placement::{self, NodeId};

/// Who holds a lease: a broker (its failure detector) or, for distributed
/// locks, a client session. One table and one set of rules for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaseHolder {
    /// A member broker.
    Broker(NodeId),
    /// A client's lock session.
    Session(u64),
}

pub use crate::leases::Lease;

/// A broker added to the cluster (alive or not: its lease says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Where clients reach it.
    pub client_addr: String,
    /// Where other brokers reach it (Raft and partition hand-off).
    pub peer_addr: String,
}

/// A topic as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Partitions and log settings.
    pub config: TopicConfig,
    /// Copies of each partition, the leader's included.
    pub replication: u32,
}

/// A consumer group as the cluster knows it.
///
/// A stream-mode group: its topic and the offsets it committed; its
/// members live with its coordinator (they are connections, not state
/// worth a log entry each).
///
/// A queue-mode group (`queue` set): its topic and settings. Its delivery
/// state lives beside each partition on the partition's replicas (the
/// leader hands messages out; followers copy its ack records with the
/// data), so Raft sees no per-message traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The topic it reads.
    pub topic: String,
    /// Committed offset per partition: where the group resumes.
    pub offsets: BTreeMap<u32, u64>,
    /// Queue-mode settings; `None` for a stream-mode group.
    pub queue: Option<GroupConfig>,
}

impl GroupSpec {
    /// Queue mode if it has queue settings, else stream mode.
    pub fn mode(&self) -> GroupMode {
        if self.queue.is_some() {
            GroupMode::Queue
        } else {
            GroupMode::Stream
        }
    }
}

/// One change to the state: the payload of a Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add (or re-address) a member; its lease starts alive.
    AddMember(Member),
    /// Remove a member for good. Refused while it still holds partitions,
    /// unless `force`: then its partitions are handed to the others empty
    /// and their data on it is given up.
    RemoveMember {
        /// Whom.
        id: NodeId,
        /// Give up the data it holds.
        force: bool,
    },
    /// Stop placing partitions on a member, so they move off it before it
    /// is removed.
    Decommission(NodeId),
    /// A partition's new holder has copied its log: from now on the holder
    /// takes no writes for it, so the copy can finish.
    BeginMove {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The broker taking it over.
        to: NodeId,
    },
    /// The new holder has everything: it leads the partition from now on.
    FinishMove {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The broker taking it over.
        to: NodeId,
    },
    /// Give up a move (its target is gone): the holder takes writes again.
    AbortMove {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The Raft leader saw no heartbeat from `holder` for a whole TTL.
    ExpireLease {
        /// Whose.
        holder: LeaseHolder,
        /// The grant the leader timed out; a stale decision is ignored.
        generation: u64,
    },
    /// A holder whose lease had expired heartbeats again.
    RenewLease(LeaseHolder),
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Settings.
        spec: TopicSpec,
    },
    /// Delete a topic (and the groups that read it).
    DeleteTopic(String),
    /// Create a stream-mode group on a topic.
    CreateGroup {
        /// Name.
        name: String,
        /// The topic it reads.
        topic: String,
    },
    /// Make a member a voter of the control plane (the Raft leader then
    /// changes the Raft membership to match).
    PromoteVoter(NodeId),
    /// Commit a group's offsets (partition, next offset to read).
    CommitOffsets {
        /// The group.
        group: String,
        /// Where it resumes, per partition.
        offsets: Vec<(u32, u64)>,
    },
    /// Delete a stream-mode group and its offsets. (Appended last: older
    /// log entries decode by variant index.)
    DeleteGroup(String),
    /// A replicated partition's leader changes its in-sync set (a follower
    /// fell behind for too long, or caught up again). Applied only if the
    /// partition is still at `leader_epoch`: a deposed leader's proposal
    /// is void.
    SetInSync {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The proposer's leader epoch.
        leader_epoch: u64,
        /// The new set, the leader included.
        in_sync: Vec<NodeId>,
    },
    /// Hand a replicated partition's leadership back to its preferred
    /// (first) replica, which is alive and in sync: after failovers and
    /// restarts leadership would otherwise pile up on the survivors.
    /// Applied only at `leader_epoch`.
    PreferLeader {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The epoch the decision was made at.
        leader_epoch: u64,
    },
    /// Reassignment, first step: a copy of a replicated partition on
    /// `replica`, where placement now wants one (a broker joined, or one
    /// holding a copy is being decommissioned). It follows the leader
    /// outside the in-sync set and joins it once caught up.
    AddReplica {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The broker to copy it to.
        replica: NodeId,
    },
    /// Reassignment, last step: the partition's copies become `replicas`
    /// (placement order), every one of them in sync. Copies left out are
    /// dropped; if the leader is one of them, the first of `replicas`
    /// leads at a new epoch.
    SetReplicas {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The new copies, preferred leader first.
        replicas: Vec<NodeId>,
    },
    /// Create a queue-mode group on a replicated topic. Its dead-letter
    /// topic `<name>.dlq` must exist already (created first, as a topic).
    CreateQueueGroup {
        /// Name.
        name: String,
        /// The topic it reads.
        topic: String,
        /// Its settings, the same on every replica.
        config: GroupConfig,
    },
    /// Opens a client's lock session: a lease in the lease table, expired
    /// by the Raft leader like a broker's.
    OpenSession {
        /// Its TTL.
        ttl_ms: u64,
    },
    /// Ends a lock session: its locks go to their next waiters.
    CloseSession(u64),
    /// Takes a lock for a session, or queues it.
    AcquireLock {
        /// The lock.
        name: String,
        /// The session.
        session: u64,
        /// Queue if held (else answer busy).
        wait: bool,
    },
    /// Releases a lock the session holds, or leaves its queue.
    ReleaseLock {
        /// The lock.
        name: String,
        /// The session.
        session: u64,
    },
    /// Leaves a lock's queue (a wait that ran out); a grant that came first
    /// stands.
    LeaveLockQueue {
        /// The lock.
        name: String,
        /// The session.
        session: u64,
    },
    /// A change to the users, access rules or quotas.
    Security(crate::auth::SecurityChange),
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied; the state changed.
    Applied,
    /// Valid but nothing to do (a stale expiry, a renewal of a live lease).
    Unchanged,
    /// Refused, with the reason (a topic that exists, a member that does not).
    Refused(String),
    /// A lock session opened, with its id.
    SessionOpened(u64),
    /// What an acquire did.
    Lock(crate::locks::Acquired),
    /// An acquire queued when the largest token granted was `last_token`:
    /// its grant, when it comes, has a larger one. (A broker whose applied
    /// state lags may still show this session holding the lock under an
    /// earlier grant it has since released; that one is not this one.)
    LockQueued {
        /// The largest token granted when it queued.
        last_token: u64,
    },
    /// A lock command refused.
    LockRefused(crate::locks::LockError),
}

/// Who holds a partition's data now, who has copies, and where it is
/// moving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The leader: the broker whose log is the partition's, which takes
    /// its writes and serves its reads.
    pub holder: NodeId,
    /// A move under way (replication 1 only): the holder takes no writes
    /// until it finishes.
    pub moving_to: Option<NodeId>,
    /// Every broker with a copy, in placement order, the holder among them.
    pub replicas: Vec<NodeId>,
    /// The replicas that hold every acknowledged record, the holder among
    /// them: a new leader is chosen only from these.
    pub in_sync: Vec<NodeId>,
    /// Bumped by every change of leader. A replica's log records where
    /// each epoch began, which is how a returning replica finds where its
    /// history left the leader's (KIP-101).
    pub leader_epoch: u64,
}

impl Assignment {
    /// A partition led by `replicas[0]`, every replica in sync.
    fn new(replicas: Vec<NodeId>) -> Assignment {
        Assignment {
            holder: replicas[0],
            moving_to: None,
            in_sync: replicas.clone(),
            replicas,
            leader_epoch: 1,
        }
    }

    /// True if the partition has copies on more than one broker.
    pub fn replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    /// Hands leadership to `to`, which must hold every acknowledged record.
    fn lead(&mut self, to: NodeId) {
        self.holder = to;
        self.leader_epoch += 1;
    }

    /// Gives the partition, whole and alone, to `to` (a finished move, or a
    /// forced removal that gave up the data).
    fn give_to(&mut self, to: NodeId) {
        self.lead(to);
        self.moving_to = None;
        self.replicas = vec![to];
        self.in_sync = vec![to];
    }
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Member brokers by id.
    pub members: BTreeMap<NodeId, Member>,
    /// Leases of brokers and sessions.
    pub leases: BTreeMap<LeaseHolder, Lease>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicSpec>,
    /// Bumped by every change that can move a partition's leader: members
    /// added or removed, leases expiring or coming back, topics created or
    /// deleted. A broker acts on a placement only at the epoch it saw.
    pub placement_epoch: u64,
    /// Default lease TTL for brokers, in milliseconds.
    pub broker_ttl_ms: u64,
    /// Per topic, per partition: who holds it. Placement says where a
    /// partition should be; this says where its data is, and it changes
    /// only when a move has copied the data (or a forced removal gave it
    /// up). Never re-created empty behind anyone's back.
    pub assignments: BTreeMap<String, Vec<Assignment>>,
    /// Members being drained: placement avoids them.
    pub leaving: BTreeSet<NodeId>,
    /// Ids removed from the cluster; a removed broker that still heartbeats
    /// is not added back (its id is not reused for other data).
    pub removed: BTreeSet<NodeId>,
    /// Stream-mode consumer groups by name.
    pub groups: BTreeMap<String, GroupSpec>,
    /// Members promoted to voters after the cluster started (the initial
    /// voters are the `--peers` list, in the Raft membership itself).
    pub promoted: BTreeSet<NodeId>,
    /// Locks held and awaited by client sessions (whose leases are in
    /// `leases`), and the fencing-token counter.
    pub locks: crate::locks::LockTable,
    /// Users, access rules and quotas (with `spool serve --auth`).
    pub security: crate::auth::SecurityData,
}

impl ClusterState {
    /// Ends a lock session: its lease goes, its locks go to their next
    /// waiters.
    fn end_session(&mut self, session: u64) {
        self.leases.remove(&LeaseHolder::Session(session));
        self.locks.drop_session(session);
    }

    /// An empty cluster whose broker leases last `broker_ttl_ms`.
    pub fn new(broker_ttl_ms: u64) -> ClusterState {
        ClusterState {
            broker_ttl_ms,
            ..ClusterState::default()
        }
    }

    /// Applies one committed command. Deterministic: every broker gets the
    /// same state from the same log.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::AddMember(member) => {
                if self.removed.contains(&member.id) {
                    return Outcome::Refused(format!(
                        "broker {} was removed from the cluster; give it a new id",
                        member.id
                    ));
                }
                let known = self.members.get(&member.id);
                if known == Some(member) {
                    return Outcome::Unchanged;
                }
                let readdressed = known.is_some();
                self.members.insert(member.id, member.clone());
                self.leases
                    .entry(LeaseHolder::Broker(member.id))
                    .or_insert(Lease {
                        ttl_ms: self.broker_ttl_ms,
                        alive: true,
                        generation: 0,
                    });
                if !readdressed {
                    self.placement_epoch += 1;
                }
                Outcome::Applied
            }
            Command::RemoveMember { id, force } => {
                if !self.members.contains_key(id) {
                    return Outcome::Refused(format!("broker {id} is not a member"));
                }
                let held = self.held_by(*id);
                if !held.is_empty() && !force {
                    return Outcome::Refused(format!(
                        "broker {id} still holds {} partitions: decommission it and wait until they have moved, or force the removal to give up their data",
                        held.len()
                    ));
                }
                self.members.remove(id);
                self.leaving.remove(id);
                self.promoted.remove(id);
                self.removed.insert(*id);
                self.leases.remove(&LeaseHolder::Broker(*id));
                // Forced: a replicated partition keeps its other copies (led
                // by an in-sync one if any is left); one it held alone
                // starts empty on its new placement. Moves to it are
                // abandoned.
                let eligible = self.eligible();
                for (topic, parts) in self.assignments.iter_mut() {
                    for (p, a) in parts.iter_mut().enumerate() {
                        if a.moving_to == Some(*id) {
                            a.moving_to = None;
                        }
                        if !a.replicas.contains(id) {
                            continue;
                        }
                        a.replicas.retain(|r| r != id);
                        a.in_sync.retain(|r| r != id);
                        if a.holder != *id {
                            continue;
                        }
                        match (a.in_sync.first(), a.replicas.first()) {
                            (Some(&next), _) => a.lead(next),
                            (None, Some(&next)) => {
                                a.in_sync = vec![next];
                                a.lead(next);
                            }
                            (None, None) => {
                                if let Some(next) = placement::preferred_leader(
                                    topic,
                                    PartitionId(p as u32),
                                    &eligible,
                                ) {
                                    a.give_to(next);
                                }
                            }
                        }
                    }
                }
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::Decommission(id) => {
                if !self.members.contains_key(id) {
                    return Outcome::Refused(format!("broker {id} is not a member"));
                }
                if !self.leaving.insert(*id) {
                    return Outcome::Unchanged;
                }
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::BeginMove {
                topic,
                partition,
                to,
            } => {
                let member = self.members.contains_key(to);
                match self.assignment_mut(topic, *partition) {
                    Some(a)
                        if member
                            && !a.replicated()
                            && a.holder != *to
                            && a.moving_to.is_none() =>
                    {
                        a.moving_to = Some(*to);
                        self.placement_epoch += 1;
                        Outcome::Applied
                    }
                    Some(_) => {
                        Outcome::Refused(format!("{topic}/{partition} cannot move to {to} now"))
                    }
                    None => Outcome::Refused(format!("no partition {topic}/{partition}")),
                }
            }
            Command::FinishMove {
                topic,
                partition,
                to,
            } => match self.assignment_mut(topic, *partition) {
                Some(a) if a.moving_to == Some(*to) => {
                    a.give_to(*to);
                    self.placement_epoch += 1;
                    Outcome::Applied
                }
                _ => Outcome::Refused(format!("{topic}/{partition} is not moving to {to}")),
            },
            Command::AbortMove { topic, partition } => match self.assignment_mut(topic, *partition)
            {
                Some(a) if a.moving_to.is_some() => {
                    a.moving_to = None;
                    self.placement_epoch += 1;
                    Outcome::Applied
                }
                _ => Outcome::Unchanged,
            },
            Command::ExpireLease {
                holder: LeaseHolder::Session(session),
                generation,
            } => match self.leases.get(&LeaseHolder::Session(*session)) {
                Some(lease) if lease.alive && lease.generation == *generation => {
                    self.end_session(*session);
                    Outcome::Applied
                }
                _ => Outcome::Unchanged,
            },
            Command::OpenSession { ttl_ms } => {
                if self
                    .leases
                    .keys()
                    .filter(|h| matches!(h, LeaseHolder::Session(_)))
                    .count()
                    >= crate::locks::MAX_SESSIONS
                {
                    return Outcome::LockRefused(crate::locks::LockError::LimitReached(format!(
                        "{} sessions are open already",
                        crate::locks::MAX_SESSIONS
                    )));
                }
                let id = self.locks.new_session();
                self.leases.insert(
                    LeaseHolder::Session(id),
                    Lease {
                        ttl_ms: *ttl_ms,
                        alive: true,
                        generation: 0,
                    },
                );
                Outcome::SessionOpened(id)
            }
            Command::CloseSession(session) => {
                if !self.leases.contains_key(&LeaseHolder::Session(*session)) {
                    return Outcome::LockRefused(crate::locks::LockError::SessionExpired(*session));
                }
                self.end_session(*session);
                Outcome::Applied
            }
            Command::AcquireLock {
                name,
                session,
                wait,
            } => {
                if !self.leases.contains_key(&LeaseHolder::Session(*session)) {
                    return Outcome::LockRefused(crate::locks::LockError::SessionExpired(*session));
                }
                match self.locks.acquire(name, *session, *wait) {
                    Ok(crate::locks::Acquired::Queued) => Outcome::LockQueued {
                        last_token: self.locks.last_token(),
                    },
                    Ok(acquired) => Outcome::Lock(acquired),
                    Err(e) => Outcome::LockRefused(e),
                }
            }
            Command::ReleaseLock { name, session } => match self.locks.release(name, *session) {
                Ok(_) => Outcome::Applied,
                Err(e) => Outcome::LockRefused(e),
            },
            Command::Security(change) => match self.security.apply(change) {
                Ok(()) => Outcome::Applied,
                Err(e) => Outcome::Refused(e.to_string()),
            },
            Command::LeaveLockQueue { name, session } => {
                self.locks.leave_queue(name, *session);
                // Whether a grant came first, so the waiter's broker need
                // not wait to apply this entry to know.
                match self.locks.holder(name) {
                    Some((holder, token)) if holder == *session => {
                        Outcome::Lock(crate::locks::Acquired::Granted(token))
                    }
                    _ => Outcome::Lock(crate::locks::Acquired::Busy),
                }
            }
            Command::ExpireLease { holder, generation } => match self.leases.get_mut(holder) {
                Some(lease) if lease.alive && lease.generation == *generation => {
                    lease.alive = false;
                    if let LeaseHolder::Broker(dead) = holder {
                        self.fail_over(*dead);
                        self.placement_epoch += 1;
                    }
                    Outcome::Applied
                }
                _ => Outcome::Unchanged,
            },
            Command::RenewLease(holder) => match self.leases.get_mut(holder) {
                Some(lease) if !lease.alive => {
                    lease.alive = true;
                    lease.generation += 1;
                    if matches!(holder, LeaseHolder::Broker(_)) {
                        self.placement_epoch += 1;
                    }
                    Outcome::Applied
                }
                Some(_) => Outcome::Unchanged,
                None => Outcome::Refused(format!("{holder:?} holds no lease")),
            },
            Command::CreateTopic { name, spec } => {
                if self.topics.contains_key(name) {
                    return Outcome::Refused(format!("topic {name} already exists"));
                }
                let eligible = self.eligible();
                if eligible.is_empty() {
                    return Outcome::Refused("the cluster has no brokers to place it on".into());
                }
                let copies = spec.replication.max(1) as usize;
                if copies > eligible.len() {
                    return Outcome::Refused(format!(
                        "replication {copies} needs {copies} brokers; the cluster has {}",
                        eligible.len()
                    ));
                }
                let assigned = (0..spec.config.partitions)
                    .map(|p| {
                        Assignment::new(placement::replicas(
                            name,
                            PartitionId(p),
                            &eligible,
                            copies,
                        ))
                    })
                    .collect();
                self.assignments.insert(name.clone(), assigned);
                self.topics.insert(name.clone(), spec.clone());
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::DeleteTopic(name) => {
                if self.topics.remove(name).is_none() {
                    return Outcome::Refused(format!("no topic {name}"));
                }
                self.assignments.remove(name);
                self.groups.retain(|_, g| g.topic != *name);
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::CreateGroup { name, topic } => match self.groups.get(name) {
                Some(g) if g.queue.is_some() => {
                    Outcome::Refused(format!("group {name} is a queue-mode group"))
                }
                Some(g) if g.topic == *topic => Outcome::Unchanged,
                Some(g) => {
                    Outcome::Refused(format!("group {name} reads topic {}, not {topic}", g.topic))
                }
                None if !self.topics.contains_key(topic) => {
                    Outcome::Refused(format!("topic {topic} not found"))
                }
                None => {
                    self.groups.insert(
                        name.clone(),
                        GroupSpec {
                            topic: topic.clone(),
                            offsets: BTreeMap::new(),
                            queue: None,
                        },
                    );
                    Outcome::Applied
                }
            },
            Command::AddReplica {
                topic,
                partition,
                replica,
            } => {
                let member = self.members.contains_key(replica);
                match self.assignment_mut(topic, *partition) {
                    Some(a) if member && a.replicated() && !a.replicas.contains(replica) => {
                        a.replicas.push(*replica);
                        self.placement_epoch += 1;
                        Outcome::Applied
                    }
                    Some(a) if a.replicas.contains(replica) => Outcome::Unchanged,
                    Some(_) => Outcome::Refused(format!(
                        "{topic}/{partition} cannot get a copy on broker {replica}"
                    )),
                    None => Outcome::Refused(format!("no partition {topic}/{partition}")),
                }
            }
            Command::SetReplicas {
                topic,
                partition,
                replicas,
            } => match self.assignment_mut(topic, *partition) {
                Some(a) if a.replicas == *replicas => Outcome::Unchanged,
                Some(a)
                    if a.replicated()
                        && !replicas.is_empty()
                        && replicas.iter().all(|r| a.in_sync.contains(r)) =>
                {
                    a.replicas = replicas.clone();
                    a.in_sync.retain(|r| replicas.contains(r));
                    if !replicas.contains(&a.holder) {
                        a.lead(replicas[0]);
                    }
                    self.placement_epoch += 1;
                    Outcome::Applied
                }
                Some(_) => Outcome::Refused(format!(
                    "{topic}/{partition}: every new copy must be in sync first"
                )),
                None => Outcome::Refused(format!("no partition {topic}/{partition}")),
            },
            Command::CreateQueueGroup {
                name,
                topic,
                config,
            } => match self.groups.get(name) {
                Some(g) if g.topic == *topic && g.queue.is_some() => Outcome::Unchanged,
                Some(g) => Outcome::Refused(format!(
                    "group {name} already reads topic {} in {} mode",
                    g.topic,
                    g.mode()
                )),
                None if !self.topics.contains_key(topic) => {
                    Outcome::Refused(format!("topic {topic} not found"))
                }
                None if !self.topics.contains_key(&format!("{name}.dlq")) => {
                    Outcome::Refused(format!("dead-letter topic {name}.dlq not found"))
                }
                None => {
                    self.groups.insert(
                        name.clone(),
                        GroupSpec {
                            topic: topic.clone(),
                            offsets: BTreeMap::new(),
                            queue: Some(*config),
                        },
                    );
                    Outcome::Applied
                }
            },
            Command::PromoteVoter(id) => {
                if !self.members.contains_key(id) {
                    return Outcome::Refused(format!(
                        "broker {id} is not a member: start it with --node-id {id} and --peers first"
                    ));
                }
                if self.promoted.insert(*id) {
                    Outcome::Applied
                } else {
                    Outcome::Unchanged
                }
            }
            Command::CommitOffsets { group, offsets } => {
                let Some(g) = self.groups.get_mut(group) else {
                    return Outcome::Refused(format!("group {group} not found"));
                };
                let partitions = self.topics.get(&g.topic).map_or(0, |t| t.config.partitions);
                if let Some((p, _)) = offsets.iter().find(|(p, _)| *p >= partitions) {
                    return Outcome::Refused(format!("topic {} has no partition {p}", g.topic));
                }
                g.offsets.extend(offsets.iter().copied());
                Outcome::Applied
            }
            Command::DeleteGroup(name) => match self.groups.remove(name) {
                Some(_) => Outcome::Applied,
                None => Outcome::Refused(format!("group {name} not found")),
            },
            Command::SetInSync {
                topic,
                partition,
                leader_epoch,
                in_sync,
            } => {
                let alive: BTreeSet<NodeId> = self
                    .member_ids()
                    .into_iter()
                    .filter(|m| self.is_alive(*m))
                    .collect();
                let Some(a) = self.assignment_mut(topic, *partition) else {
                    return Outcome::Refused(format!("no partition {topic}/{partition}"));
                };
                if a.leader_epoch != *leader_epoch {
                    return Outcome::Refused(format!(
                        "{topic}/{partition} is at leader epoch {}, not {leader_epoch}",
                        a.leader_epoch
                    ));
                }
                if !in_sync.contains(&a.holder) || in_sync.iter().any(|r| !a.replicas.contains(r)) {
                    return Outcome::Refused(format!(
                        "{in_sync:?} is not a set of {topic}/{partition}'s replicas with its leader"
                    ));
                }
                // In placement order, and never a broker whose lease is
                // gone (its expiry took it out; it must catch up anew).
                let holder = a.holder;
                let set: Vec<NodeId> = a
                    .replicas
                    .iter()
                    .filter(|r| in_sync.contains(r) && (**r == holder || alive.contains(r)))
                    .copied()
                    .collect();
                if set == a.in_sync {
                    return Outcome::Unchanged;
                }
                a.in_sync = set;
                Outcome::Applied
            }
            Command::PreferLeader {
                topic,
                partition,
                leader_epoch,
            } => {
                let eligible =
                    self.off_preferred()
                        .contains(&(topic.clone(), *partition, *leader_epoch));
                match self.assignment_mut(topic, *partition) {
                    Some(a) if eligible => {
                        let preferred = a.replicas[0];
                        a.lead(preferred);
                        self.placement_epoch += 1;
                        Outcome::Applied
                    }
                    _ => Outcome::Unchanged,
                }
            }
        }
    }

    /// Replicated partitions whose preferred replica is alive and in sync
    /// but does not lead: `(topic, partition, leader epoch)`.
    pub fn off_preferred(&self) -> Vec<(String, u32, u64)> {
        let mut out = Vec::new();
        for (topic, parts) in &self.assignments {
            for (p, a) in parts.iter().enumerate() {
                let preferred = a.replicas[0];
                if a.replicated()
                    && a.holder != preferred
                    && a.in_sync.contains(&preferred)
                    && self.is_alive(preferred)
                {
                    out.push((topic.clone(), p as u32, a.leader_epoch));
                }
            }
        }
        out
    }

    /// A broker's lease expired: every replicated partition it led moves to
    /// the first live in-sync replica with a new leader epoch (none is
    /// left: the partition waits for it, since any other replica may lack
    /// acknowledged records), and it leaves every in-sync set.
    fn fail_over(&mut self, dead: NodeId) {
        let alive: BTreeSet<NodeId> = self
            .member_ids()
            .into_iter()
            .filter(|m| self.is_alive(*m))
            .collect();
        for a in self.assignments.values_mut().flatten() {
            if !a.replicated() || !a.in_sync.contains(&dead) {
                continue;
            }
            if a.holder != dead {
                a.in_sync.retain(|r| *r != dead);
                continue;
            }
            let next = a
                .replicas
                .iter()
                .find(|r| **r != dead && a.in_sync.contains(r) && alive.contains(r))
                .copied();
            if let Some(next) = next {
                a.in_sync.retain(|r| *r != dead);
                a.lead(next);
            }
        }
    }

    /// The broker that coordinates `group` (its membership and offset
    /// commits): placement of the group's name over the eligible members
    /// whose lease is alive, so a group never waits on a dead coordinator
    /// longer than a lease.
    pub fn coordinator(&self, group: &str) -> Option<NodeId> {
        let alive: Vec<NodeId> = self
            .eligible()
            .into_iter()
            .filter(|m| self.is_alive(*m))
            .collect();
        placement::preferred_leader(&format!("__group/{group}"), PartitionId(0), &alive)
    }

    /// The member ids, in order.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    /// True if `node`'s lease is committed alive.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.leases
            .get(&LeaseHolder::Broker(node))
            .is_some_and(|l| l.alive)
    }

    /// Members placement may put partitions on (not being drained).
    pub fn eligible(&self) -> Vec<NodeId> {
        self.members
            .keys()
            .filter(|m| !self.leaving.contains(m))
            .copied()
            .collect()
    }

    /// Where the partition should be, by placement over the eligible
    /// members (alive or not), preferred first.
    pub fn replicas(&self, topic: &str, partition: PartitionId) -> Vec<NodeId> {
        let count = self
            .topics
            .get(topic)
            .map_or(1, |t| t.replication.max(1) as usize);
        placement::replicas(topic, partition, &self.eligible(), count)
    }

    /// The partition's assignment.
    pub fn assignment(&self, topic: &str, partition: PartitionId) -> Option<&Assignment> {
        self.assignments
            .get(topic)
            .and_then(|parts| parts.get(partition.0 as usize))
    }

    fn assignment_mut(&mut self, topic: &str, partition: u32) -> Option<&mut Assignment> {
        self.assignments
            .get_mut(topic)
            .and_then(|parts| parts.get_mut(partition as usize))
    }

    /// Where the partition's data is: its holder.
    pub fn owner(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.assignment(topic, partition).map(|a| a.holder)
    }

    /// The broker that takes the partition's writes: its holder, while its
    /// lease is alive and no move is finishing. `None` means unavailable.
    pub fn leader(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.assignment(topic, partition)
            .filter(|a| a.moving_to.is_none() && self.is_alive(a.holder))
            .map(|a| a.holder)
    }

    /// How many partitions have no leader now.
    pub fn partitions_without_leader(&self) -> usize {
        self.assignments
            .iter()
            .flat_map(|(topic, parts)| (0..parts.len()).map(move |p| (topic, p as u32)))
            .filter(|(topic, p)| self.leader(topic, PartitionId(*p)).is_none())
            .count()
    }

    /// The broker that serves the partition's reads: its holder while its
    /// lease is alive, also during a move (the new holder reads from it).
    pub fn read_leader(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.assignment(topic, partition)
            .filter(|a| self.is_alive(a.holder))
            .map(|a| a.holder)
    }

    /// Every partition `node` has a copy of.
    pub fn held_by(&self, node: NodeId) -> Vec<(String, u32)> {
        self.assignments
            .iter()
            .flat_map(|(t, parts)| {
                parts
                    .iter()
                    .enumerate()
                    .filter(move |(_, a)| a.replicas.contains(&node))
                    .map(move |(p, _)| (t.clone(), p as u32))
            })
            .collect()
    }

    /// The next reassignment step of each replicated partition whose copies
    /// are not where placement wants them (over the eligible members, so a
    /// dead broker keeps its copies and a decommissioned one loses them):
    /// add a missing copy on a live broker, or, once every wanted copy is
    /// in sync, settle on exactly those. Nothing while the leader is down.
    pub fn reassignments(&self) -> Vec<Command> {
        let mut out = Vec::new();
        for (topic, parts) in &self.assignments {
            for (p, a) in parts.iter().enumerate() {
                if !a.replicated() || !self.is_alive(a.holder) {
                    continue;
                }
                let target = self.replicas(topic, PartitionId(p as u32));
                if target.len() < 2 || a.replicas == target {
                    continue;
                }
                let missing: Vec<NodeId> = target
                    .iter()
                    .filter(|r| !a.replicas.contains(r) && self.is_alive(**r))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    out.extend(missing.into_iter().map(|replica| Command::AddReplica {
                        topic: topic.clone(),
                        partition: p as u32,
                        replica,
                    }));
                } else if target.iter().all(|r| a.in_sync.contains(r)) {
                    out.push(Command::SetReplicas {
                        topic: topic.clone(),
                        partition: p as u32,
                        replicas: target,
                    });
                }
            }
        }
        out
    }

    /// Unreplicated partitions whose placement says they belong elsewhere
    /// than their holder: `(topic, partition, holder, target)`. (Replicated
    /// partitions move copy by copy: [`ClusterState::reassignments`].)
    pub fn misplaced(&self) -> Vec<(String, u32, NodeId, NodeId)> {
        let mut out = Vec::new();
        for (topic, parts) in &self.assignments {
            for (p, a) in parts.iter().enumerate().filter(|(_, a)| !a.replicated()) {
                if let Some(target) = self.replicas(topic, PartitionId(p as u32)).first() {
                    if *target != a.holder {
                        out.push((topic.clone(), p as u32, a.holder, *target));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id: NodeId(id),
            client_addr: format!("127.0.0.1:{}", 7070 + id),
            peer_addr: format!("127.0.0.1:{}", 7170 + id),
        }
    }

    fn three() -> ClusterState {
        let mut s = ClusterState::new(1500);
        for id in 1..=3 {
            assert_eq!(s.apply(&Command::AddMember(member(id))), Outcome::Applied);
        }
        s.apply(&Command::CreateTopic {
            name: "t".into(),
            spec: TopicSpec {
                config: TopicConfig::new(12),
                replication: 1,
            },
        });
        s
    }

    #[test]
    fn an_expired_broker_leads_nothing_until_it_renews() {
        let mut s = three();
        let victim = s.owner("t", PartitionId(0)).expect("owner");
        assert_eq!(s.leader("t", PartitionId(0)), Some(victim));
        let epoch = s.placement_epoch;
        let expire = Command::ExpireLease {
            holder: LeaseHolder::Broker(victim),
            generation: 0,
        };
        assert_eq!(s.apply(&expire), Outcome::Applied);
        assert!(s.placement_epoch > epoch);
        // Replication 1: the partition has no leader, it is not re-created
        // elsewhere.
        assert_eq!(s.leader("t", PartitionId(0)), None);
        assert_eq!(s.owner("t", PartitionId(0)), Some(victim));
        assert_eq!(
            s.apply(&Command::RenewLease(LeaseHolder::Broker(victim))),
            Outcome::Applied
        );
        assert_eq!(s.leader("t", PartitionId(0)), Some(victim));
        // The expiry decided about generation 0 is stale now.
        assert_eq!(s.apply(&expire), Outcome::Unchanged);
        assert!(s.is_alive(victim));
    }

    #[test]
    fn replaying_the_same_log_gives_the_same_state() {
        let log = [
            Command::AddMember(member(1)),
            Command::AddMember(member(2)),
            Command::CreateTopic {
                name: "a".into(),
                spec: TopicSpec {
                    config: TopicConfig::new(3),
                    replication: 1,
                },
            },
            Command::ExpireLease {
                holder: LeaseHolder::Broker(NodeId(2)),
                generation: 0,
            },
            Command::AddMember(member(3)),
            Command::RemoveMember {
                id: NodeId(1),
                force: true,
            },
            Command::DeleteTopic("nope".into()),
        ];
        let run = || {
            let mut s = ClusterState::new(1500);
            let outcomes: Vec<Outcome> = log.iter().map(|c| s.apply(c)).collect();
            (s, outcomes)
        };
        let (a, outcomes) = run();
        assert_eq!(run(), (a.clone(), outcomes.clone()));
        assert!(matches!(outcomes[6], Outcome::Refused(_)));
        assert_eq!(a.member_ids(), vec![NodeId(2), NodeId(3)]);
        // A snapshot (bincode) restores the same state.
        let bytes = bincode::serde::encode_to_vec(&a, bincode::config::standard()).expect("encode");
        let (back, _): (ClusterState, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        assert_eq!(back, a);
    }

    #[test]
    fn groups_commit_offsets_follow_their_topic_and_move_off_a_dead_coordinator() {
        let mut s = three();
        let create = |topic: &str| Command::CreateGroup {
            name: "g".into(),
            topic: topic.into(),
        };
        assert!(matches!(s.apply(&create("nope")), Outcome::Refused(_)));
        assert_eq!(s.apply(&create("t")), Outcome::Applied);
        assert_eq!(s.apply(&create("t")), Outcome::Unchanged);
        s.apply(&Command::CreateTopic {
            name: "u".into(),
            spec: TopicSpec {
                config: TopicConfig::new(1),
                replication: 1,
            },
        });
        assert!(matches!(s.apply(&create("u")), Outcome::Refused(_)));
        let commit = |offsets: Vec<(u32, u64)>| Command::CommitOffsets {
            group: "g".into(),
            offsets,
        };
        assert_eq!(s.apply(&commit(vec![(3, 40), (0, 7)])), Outcome::Applied);
        assert_eq!(s.apply(&commit(vec![(3, 41)])), Outcome::Applied);
        assert!(matches!(
            s.apply(&commit(vec![(12, 1)])),
            Outcome::Refused(_)
        ));
        assert_eq!(s.groups["g"].offsets, BTreeMap::from([(0, 7), (3, 41)]));

        let coordinator = s.coordinator("g").expect("a coordinator");
        s.apply(&Command::ExpireLease {
            holder: LeaseHolder::Broker(coordinator),
            generation: 0,
        });
        let next = s.coordinator("g").expect("another coordinator");
        assert_ne!(next, coordinator);

        // Deleting a group drops its offsets; a second delete is refused.
        assert_eq!(s.apply(&Command::DeleteGroup("g".into())), Outcome::Applied);
        assert!(s.groups.is_empty());
        assert!(matches!(
            s.apply(&Command::DeleteGroup("g".into())),
            Outcome::Refused(_)
        ));
        assert_eq!(s.apply(&create("t")), Outcome::Applied);
        assert!(
            s.groups["g"].offsets.is_empty(),
            "offsets outlived the group"
        );

        s.apply(&Command::DeleteTopic("t".into()));
        assert!(s.groups.is_empty());
        assert!(matches!(
            s.apply(&commit(vec![(0, 1)])),
            Outcome::Refused(_)
        ));
    }

    fn replicated() -> ClusterState {
        let mut s = ClusterState::new(1500);
        for id in 1..=3 {
            s.apply(&Command::AddMember(member(id)));
        }
        let create = Command::CreateTopic {
            name: "r".into(),
            spec: TopicSpec {
                config: TopicConfig::new(6),
                replication: 3,
            },
        };
        assert_eq!(s.apply(&create), Outcome::Applied);
        s
    }

    fn expire(s: &mut ClusterState, id: NodeId) {
        let generation = s.leases[&LeaseHolder::Broker(id)].generation;
        let expiry = Command::ExpireLease {
            holder: LeaseHolder::Broker(id),
            generation,
        };
        assert_eq!(s.apply(&expiry), Outcome::Applied);
    }

    /// Applies every planned reassignment step, then marks every copy in
    /// sync (as leaders would once their new followers caught up), until
    /// nothing is left to do; returns how many rounds it took.
    fn settle_reassignments(s: &mut ClusterState) -> usize {
        for round in 0..10 {
            let steps = s.reassignments();
            if steps.is_empty() {
                return round;
            }
            for step in steps {
                assert_eq!(s.apply(&step), Outcome::Applied, "{step:?}");
            }
            for a in s.assignments.values_mut().flatten() {
                a.in_sync = a.replicas.clone();
            }
        }
        panic!("reassignment does not settle");
    }

    #[test]
    fn a_decommissioned_broker_hands_its_copies_to_the_others_and_holds_none() {
        let mut s = replicated();
        assert!(s.reassignments().is_empty(), "placement is met at creation");
        assert_eq!(s.apply(&Command::AddMember(member(4))), Outcome::Applied);
        // A new broker takes some copies (rendezvous placement moves about
        // a quarter of them), and leaders stay in sync while they move.
        assert!(settle_reassignments(&mut s) > 0);
        assert!(!s.held_by(NodeId(4)).is_empty());
        for (topic, parts) in &s.assignments {
            for (p, a) in parts.iter().enumerate() {
                assert_eq!(a.replicas, s.replicas(topic, PartitionId(p as u32)));
                assert!(a.replicas.contains(&a.holder));
            }
        }
        // Decommissioned: every copy it had goes elsewhere, a partition it
        // led gets a new leader at a new epoch.
        let led: Vec<(String, usize, u64)> = s
            .assignments
            .iter()
            .flat_map(|(t, parts)| {
                parts
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.holder == NodeId(4))
                    .map(move |(p, a)| (t.clone(), p, a.leader_epoch))
            })
            .collect();
        assert_eq!(s.apply(&Command::Decommission(NodeId(4))), Outcome::Applied);
        settle_reassignments(&mut s);
        assert!(s.held_by(NodeId(4)).is_empty());
        for (t, p, epoch) in led {
            let a = &s.assignments[&t][p];
            assert!(a.holder != NodeId(4) && a.leader_epoch > epoch);
        }
        for a in s.assignments.values().flatten() {
            assert_eq!(a.replicas.len(), 3);
        }
        assert_eq!(
            s.apply(&Command::RemoveMember {
                id: NodeId(4),
                force: false
            }),
            Outcome::Applied
        );
    }

    #[test]
    fn copies_are_settled_only_once_every_new_one_is_in_sync() {
        let mut s = replicated();
        s.apply(&Command::AddMember(member(4)));
        let add = s
            .reassignments()
            .into_iter()
            .find(|c| matches!(c, Command::AddReplica { .. }))
            .expect("a copy to add");
        let Command::AddReplica {
            topic, partition, ..
        } = &add
        else {
            unreachable!()
        };
        let (topic, partition) = (topic.clone(), *partition);
        assert_eq!(s.apply(&add), Outcome::Applied);
        assert_eq!(s.apply(&add), Outcome::Unchanged);
        let target = s.replicas(&topic, PartitionId(partition));
        let set = Command::SetReplicas {
            topic: topic.clone(),
            partition,
            replicas: target.clone(),
        };
        // The new copy is not in sync yet: refused, and not planned.
        assert!(matches!(s.apply(&set), Outcome::Refused(_)));
        assert!(!s.reassignments().contains(&set));
        let a = s.assignment_mut(&topic, partition).expect("assigned");
        a.in_sync = a.replicas.clone();
        assert!(s.reassignments().contains(&set));
        assert_eq!(s.apply(&set), Outcome::Applied);
        assert_eq!(
            s.assignment(&topic, PartitionId(partition))
                .expect("a")
                .replicas,
            target
        );
        // A dead broker keeps its copies: nothing to do while it is down.
        let before = s.reassignments().len();
        expire(&mut s, NodeId(4));
        assert!(s.reassignments().len() <= before);
    }

    #[test]
    fn a_dead_leader_is_replaced_by_the_next_live_in_sync_replica_with_a_new_epoch() {
        let mut s = replicated();
        let p = PartitionId(0);
        let a = s.assignment("r", p).expect("assigned").clone();
        assert_eq!(a.replicas.len(), 3);
        assert_eq!(a.in_sync, a.replicas);
        assert_eq!((a.holder, a.leader_epoch), (a.replicas[0], 1));
        // Too many copies for the brokers there are: refused.
        let too_many = Command::CreateTopic {
            name: "x".into(),
            spec: TopicSpec {
                config: TopicConfig::new(1),
                replication: 4,
            },
        };
        assert!(matches!(s.apply(&too_many), Outcome::Refused(_)));

        // The second replica leaves the in-sync set (the leader said so),
        // then the leader dies: the third, not the second, takes over.
        let (l, f1, f2) = (a.replicas[0], a.replicas[1], a.replicas[2]);
        let shrink = Command::SetInSync {
            topic: "r".into(),
            partition: 0,
            leader_epoch: 1,
            in_sync: vec![l, f2],
        };
        assert_eq!(s.apply(&shrink), Outcome::Applied);
        expire(&mut s, l);
        let b = s.assignment("r", p).expect("assigned").clone();
        assert_eq!((b.holder, b.leader_epoch), (f2, 2));
        assert_eq!(b.in_sync, vec![f2]);
        assert_eq!(s.leader("r", p), Some(f2));
        // The deposed leader's proposals are void now.
        let stale = Command::SetInSync {
            topic: "r".into(),
            partition: 0,
            leader_epoch: 1,
            in_sync: vec![l, f1, f2],
        };
        assert!(matches!(s.apply(&stale), Outcome::Refused(_)));
        // f1 catches up and rejoins; a dead broker is never added.
        let rejoin = Command::SetInSync {
            topic: "r".into(),
            partition: 0,
            leader_epoch: 2,
            in_sync: vec![l, f1, f2],
        };
        assert_eq!(s.apply(&rejoin), Outcome::Applied);
        assert_eq!(
            s.assignment("r", p).expect("assigned").in_sync,
            vec![f1, f2]
        );
        // The last in-sync replicas die: no unclean election, the
        // partition waits for one of them.
        expire(&mut s, f1);
        expire(&mut s, f2);
        let c = s.assignment("r", p).expect("assigned").clone();
        assert_eq!((c.holder, c.leader_epoch), (f2, 2));
        assert_eq!(s.leader("r", p), None);
        s.apply(&Command::RenewLease(LeaseHolder::Broker(f2)));
        assert_eq!(s.leader("r", p), Some(f2));
        // Back, in sync, and preferred: leadership returns to the first
        // replica at a new epoch, once.
        s.apply(&Command::RenewLease(LeaseHolder::Broker(l)));
        s.apply(&Command::SetInSync {
            topic: "r".into(),
            partition: 0,
            leader_epoch: 2,
            in_sync: vec![l, f2],
        });
        assert!(s.off_preferred().contains(&("r".to_string(), 0, 2)));
        let prefer = Command::PreferLeader {
            topic: "r".into(),
            partition: 0,
            leader_epoch: 2,
        };
        assert_eq!(s.apply(&prefer), Outcome::Applied);
        assert_eq!(s.leader("r", p), Some(l));
        assert_eq!(s.assignment("r", p).expect("assigned").leader_epoch, 3);
        assert_eq!(s.apply(&prefer), Outcome::Unchanged);
        // Replicated partitions do not take part in hand-off moves.
        assert!(s.misplaced().is_empty());
    }

    #[test]
    fn duplicate_topics_and_unknown_members_are_refused() {
        let mut s = three();
        let again = Command::CreateTopic {
            name: "t".into(),
            spec: TopicSpec {
                config: TopicConfig::new(1),
                replication: 1,
            },
        };
        assert!(matches!(s.apply(&again), Outcome::Refused(_)));
        assert!(matches!(
            s.apply(&Command::RemoveMember {
                id: NodeId(9),
                force: false
            }),
            Outcome::Refused(_)
        ));
        // Re-adding a member with the same addresses changes nothing.
        let epoch = s.placement_epoch;
        assert_eq!(s.apply(&Command::AddMember(member(1))), Outcome::Unchanged);
        assert_eq!(s.placement_epoch, epoch);
    }

    #[test]
    fn a_new_member_takes_partitions_only_by_moves_and_a_leaving_one_drains() {
        let mut s = three();
        let before: Vec<NodeId> = (0..12)
            .map(|p| s.owner("t", PartitionId(p)).expect("holder"))
            .collect();
        s.apply(&Command::AddMember(member(4)));
        // Nothing moved by itself: the data is where it was.
        let now: Vec<NodeId> = (0..12)
            .map(|p| s.owner("t", PartitionId(p)).expect("holder"))
            .collect();
        assert_eq!(before, now);
        let misplaced = s.misplaced();
        assert!(!misplaced.is_empty() && misplaced.iter().all(|m| m.3 == NodeId(4)));
        let (topic, p, from, to) = misplaced[0].clone();
        let begin = Command::BeginMove {
            topic: topic.clone(),
            partition: p,
            to,
        };
        assert_eq!(s.apply(&begin), Outcome::Applied);
        // Writes pause during the switch; reads stay with the holder.
        assert_eq!(s.leader(&topic, PartitionId(p)), None);
        assert_eq!(s.read_leader(&topic, PartitionId(p)), Some(from));
        assert!(matches!(s.apply(&begin), Outcome::Refused(_)));
        let finish = Command::FinishMove {
            topic: topic.clone(),
            partition: p,
            to,
        };
        assert_eq!(s.apply(&finish), Outcome::Applied);
        assert_eq!(s.leader(&topic, PartitionId(p)), Some(NodeId(4)));
        assert!(matches!(s.apply(&finish), Outcome::Refused(_)));

        // A member holding partitions is not removed unless forced.
        let holder = before[0];
        let remove = Command::RemoveMember {
            id: holder,
            force: false,
        };
        assert!(matches!(s.apply(&remove), Outcome::Refused(_)));
        assert_eq!(s.apply(&Command::Decommission(holder)), Outcome::Applied);
        let held = s.held_by(holder);
        assert!(!held.is_empty());
        assert!(held.iter().all(|(t, p)| s
            .misplaced()
            .iter()
            .any(|m| &m.0 == t && m.1 == *p && m.2 == holder)));
        for (t, p) in held {
            let to = s.replicas(&t, PartitionId(p))[0];
            assert_ne!(to, holder);
            for c in [
                Command::BeginMove {
                    topic: t.clone(),
                    partition: p,
                    to,
                },
                Command::FinishMove {
                    topic: t.clone(),
                    partition: p,
                    to,
                },
            ] {
                assert_eq!(s.apply(&c), Outcome::Applied);
            }
        }
        assert_eq!(s.apply(&remove), Outcome::Applied);
        assert!(!s.members.contains_key(&holder));

        // Forced: its partitions start over elsewhere.
        let victim = s.owner("t", PartitionId(0)).expect("holder");
        assert_eq!(
            s.apply(&Command::RemoveMember {
                id: victim,
                force: true
            }),
            Outcome::Applied
        );
        assert!((0..12).all(|p| s.owner("t", PartitionId(p)) != Some(victim)));
    }
}
