//! The cluster's replicated state: what the Raft log's entries build, the
//! same on every broker once applied. Pure data and a deterministic
//! `apply`; no clocks, no I/O (the lease *timing* lives with the Raft leader
//! in `leases.rs`, and only its decisions are committed here).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spool_protocol::PartitionId;

use crate::broker::TopicConfig;
use crate::cluster::placement::{self, NodeId};

/// Who holds a lease: a broker (its failure detector) or, for distributed
/// locks, a client session. One table and one set of rules for both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaseHolder {
    /// A member broker.
    Broker(NodeId),
    /// A client session (granted by a later issue's lock service).
    Session(u64),
}

/// A lease as committed: alive or expired, and which grant it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Time to live of each grant, in milliseconds.
    pub ttl_ms: u64,
    /// False once the Raft leader committed its expiry.
    pub alive: bool,
    /// Bumped by every renewal after an expiry, so an expiry decided about
    /// an older grant cannot kill a newer one.
    pub generation: u64,
}

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
    /// Copies of each partition (1 until replication lands).
    pub replication: u32,
}

/// One change to the state: the payload of a Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add (or re-address) a member; its lease starts alive.
    AddMember(Member),
    /// Remove a member for good. Its partitions move to the others.
    RemoveMember(NodeId),
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
    /// Delete a topic.
    DeleteTopic(String),
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
}

impl ClusterState {
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
            Command::RemoveMember(id) => {
                if self.members.remove(id).is_none() {
                    return Outcome::Refused(format!("broker {id} is not a member"));
                }
                self.leases.remove(&LeaseHolder::Broker(*id));
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::ExpireLease { holder, generation } => match self.leases.get_mut(holder) {
                Some(lease) if lease.alive && lease.generation == *generation => {
                    lease.alive = false;
                    if matches!(holder, LeaseHolder::Broker(_)) {
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
                self.topics.insert(name.clone(), spec.clone());
                self.placement_epoch += 1;
                Outcome::Applied
            }
            Command::DeleteTopic(name) => {
                if self.topics.remove(name).is_none() {
                    return Outcome::Refused(format!("no topic {name}"));
                }
                self.placement_epoch += 1;
                Outcome::Applied
            }
        }
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

    /// The partition's replicas over all members (alive or not), preferred
    /// first.
    pub fn replicas(&self, topic: &str, partition: PartitionId) -> Vec<NodeId> {
        let count = self
            .topics
            .get(topic)
            .map_or(1, |t| t.replication.max(1) as usize);
        placement::replicas(topic, partition, &self.member_ids(), count)
    }

    /// The partition's owner: where its data lives with replication 1, its
    /// first replica. `None` if there are no members.
    pub fn owner(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.replicas(topic, partition).first().copied()
    }

    /// The partition's leader: the first replica whose lease is alive.
    /// `None` means unavailable (with replication 1: its one broker is out).
    pub fn leader(&self, topic: &str, partition: PartitionId) -> Option<NodeId> {
        self.replicas(topic, partition)
            .into_iter()
            .find(|n| self.is_alive(*n))
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
            Command::RemoveMember(NodeId(1)),
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
            s.apply(&Command::RemoveMember(NodeId(9))),
            Outcome::Refused(_)
        ));
        // Re-adding a member with the same addresses changes nothing.
        let epoch = s.placement_epoch;
        assert_eq!(s.apply(&Command::AddMember(member(1))), Outcome::Unchanged);
        assert_eq!(s.placement_epoch, epoch);
    }
}
