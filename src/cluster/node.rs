//! A broker in a cluster: its control-plane node, and what the server asks
//! of it: may this broker serve that partition, commit this admin change,
//! and keep the local broker's topics in step with the committed state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spool_protocol::PartitionId;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, GroupConfig, GroupMode, TopicConfig};
use crate::cluster::placement::NodeId;
use crate::cluster::raft::{ControlPlane, ControlPlaneError};
use crate::cluster::replication::{Replicas, ReplicationSettings};
use crate::cluster::state::{ClusterState, Command, Outcome, TopicSpec};

/// How long an admin change may wait for the control plane (an election
/// takes up to about 2 s).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this broker will not serve a partition now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    /// Another broker serves it.
    NotLeader {
        /// Its id.
        leader: NodeId,
        /// Where clients reach it.
        addr: String,
    },
    /// No broker may serve it now: its broker's lease has lapsed, or this
    /// broker's own lease has.
    Unavailable(String),
    /// The cluster has no such topic.
    UnknownTopic,
}

/// Everything a broker needs to take part in a cluster: who it is, whom
/// it starts with, how it reaches them and how it replicates. `spool
/// serve` fills it from its flags; the simulation from its seed.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This broker: id, client address, peer address.
    pub me: crate::cluster::state::Member,
    /// Where the control plane keeps its Raft log and snapshots.
    pub dir: std::path::PathBuf,
    /// Where to listen for peers.
    pub peer_listen: std::net::SocketAddr,
    /// The voters and their peer addresses (the same on every voter).
    pub voters: BTreeMap<NodeId, String>,
    /// Broker lease time to live.
    pub lease_ttl_ms: u64,
    /// The Raft group's heartbeat and election timings.
    pub timings: crate::cluster::raft::RaftTimings,
    /// Where and how to dial peers' peer ports.
    pub network: crate::cluster::raft::Network,
    /// Replication settings (minimum in-sync replicas, lag bound).
    pub replication: ReplicationSettings,
    /// How to reach other brokers' client ports (replication, forwarded
    /// requests): the same transport as `network`, and TLS with the
    /// cluster's certificate when the client port speaks TLS.
    pub to_brokers: spool_client::ConnectOptions,
}

/// This broker's membership in a cluster.
pub struct ClusterNode {
    pub(super) control: ControlPlane,
    pub(super) broker: Broker,
    /// How this broker connects to other brokers' client ports (TLS with
    /// the cluster's certificate when the client port speaks TLS).
    pub(super) to_brokers: spool_client::ConnectOptions,
    /// The replicated partitions this broker leads and follows.
    pub(super) replicas: Replicas,
    pub(super) stop: CancellationToken,
    /// Client connections to other brokers' client ports, by address (for
    /// what only a partition's leader or a group's coordinator knows).
    others: tokio::sync::Mutex<BTreeMap<String, spool_client::Client>>,
}

impl ClusterNode {
    /// Starts this broker's control plane from `config` and joins `broker`
    /// to the cluster.
    pub async fn start(
        config: ClusterConfig,
        broker: Broker,
    ) -> Result<Arc<ClusterNode>, ControlPlaneError> {
        let control = ControlPlane::start(
            config.me,
            &config.dir,
            config.peer_listen,
            &config.voters,
            ClusterState::new(config.lease_ttl_ms),
            &config.timings,
            config.network,
        )
        .await?;
        Ok(ClusterNode::new(
            control,
            broker,
            config.replication,
            config.to_brokers,
        ))
    }

    /// Wraps a started control plane and keeps `broker`'s topics in step
    /// with the committed state until shut down.
    pub fn new(
        control: ControlPlane,
        broker: Broker,
        replication: ReplicationSettings,
        to_brokers: spool_client::ConnectOptions,
    ) -> Arc<ClusterNode> {
        let node = Arc::new(ClusterNode {
            control,
            broker,
            to_brokers,
            replicas: Replicas::new(replication),
            stop: CancellationToken::new(),
            others: tokio::sync::Mutex::default(),
        });
        tokio::spawn(sync_topics(
            node.control.state.clone(),
            node.broker.clone(),
            node.stop.clone(),
        ));
        tokio::spawn(node.clone().take_over_partitions());
        tokio::spawn(node.clone().keep_roles());
        let sink = super::dead_letters::ClusterDeadLetters {
            node: Arc::downgrade(&node),
        };
        if let Err(e) = node.broker.set_dead_letter_sink(Arc::new(sink)) {
            tracing::error!(error = %e, "dead letters stay local");
        }
        node
    }

    /// Keeps this broker's replication roles in line with the committed
    /// state (on every change, and every 100 ms for what could not be done
    /// at once), and proposes in-sync set changes.
    async fn keep_roles(self: Arc<Self>) {
        let mut state = self.control.state.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = state.borrow_and_update().clone();
            self.reconcile(&now).await;
            self.propose_in_sync();
            self.publish_replication_metrics();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }

    /// Commits a command through the control plane.
    pub(super) async fn submit(&self, command: Command) -> Result<Outcome, ControlPlaneError> {
        self.control.submit(command, ADMIN_TIMEOUT).await
    }

    /// The control plane.
    pub(super) fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// A watcher of the committed state.
    pub(super) fn state_watch(&self) -> tokio::sync::watch::Receiver<Arc<ClusterState>> {
        self.control.state.clone()
    }

    /// The broker this node serves.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The replicated partitions' side of produce and fetch.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// True while this broker's own lease holds.
    pub fn lease_valid(&self) -> bool {
        self.control.lease_valid()
    }

    /// This broker's id.
    pub fn id(&self) -> NodeId {
        self.control.id
    }

    /// The committed cluster state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.control.state.borrow().clone()
    }

    /// How long ago the leader last heard each broker (empty unless this
    /// broker is the leader), and the Raft term.
    pub fn lease_view(&self) -> (std::collections::BTreeMap<NodeId, Duration>, u64) {
        (self.control.lease_ages(), self.control.term())
    }

    /// The control plane's Raft leader, if known.
    pub fn controller(&self) -> Option<NodeId> {
        self.control.leader()
    }

    /// Whether this broker may serve `(topic, partition)` now: writes (or
    /// reads, when `write` is false; they go on during a move).
    pub fn check_serves(
        &self,
        topic: &str,
        partition: PartitionId,
        write: bool,
    ) -> Result<(), NotServed> {
        let state = self.state();
        if !state.topics.contains_key(topic) {
            return Err(NotServed::UnknownTopic);
        }
        let leader = if write {
            state.leader(topic, partition)
        } else {
            state.read_leader(topic, partition)
        };
        match leader {
            Some(leader) if leader == self.id() => {
                let epoch_started = state
                    .assignment(topic, partition)
                    .filter(|a| a.replicated())
                    .is_none_or(|a| self.replicas.leads(topic, partition.0, a.leader_epoch));
                if !epoch_started {
                    Err(NotServed::Unavailable(format!(
                        "broker {} is taking over {topic}/{partition}: retry in a moment",
                        self.id()
                    )))
                } else if self.broker.partition_log(topic, partition).is_err() {
                    // Committed, not yet created here (the topic sync runs
                    // beside the request path): retriable, unlike a topic
                    // that does not exist.
                    Err(NotServed::Unavailable(format!(
                        "{topic}/{partition} is being created on broker {}: retry in a moment",
                        self.id()
                    )))
                } else if self.control.lease_valid() {
                    Ok(())
                } else {
                    // Refuse before the Raft leader could count us out.
                    Err(NotServed::Unavailable(format!(
                        "broker {} leads {topic}/{partition} but its own lease has lapsed",
                        self.id()
                    )))
                }
            }
            Some(leader) => Err(NotServed::NotLeader {
                leader,
                addr: state
                    .members
                    .get(&leader)
                    .map(|m| m.client_addr.clone())
                    .unwrap_or_default(),
            }),
            None => Err(NotServed::Unavailable(
                match state.assignment(topic, partition) {
                    Some(a) if a.moving_to.is_some() && state.is_alive(a.holder) => format!(
                    "{topic}/{partition} is moving from broker {} to {}: writes resume in a moment",
                    a.holder,
                    a.moving_to.map_or(0, |n| n.0)
                ),
                    Some(a) => format!(
                        "{topic}/{partition} lives on broker {}, whose lease has lapsed",
                        a.holder
                    ),
                    None => format!("{topic}/{partition} has no holder"),
                },
            )),
        }
    }

    /// Held by a write from its `check_serves` to its append, so that a
    /// state change (a partition starting to move away) is published only
    /// after the writes it would forbid have landed.
    pub fn write_fence(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.control.fence.hold()
    }

    /// Creates a topic cluster-wide (committed through Raft), then here.
    pub async fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
        replication: u32,
    ) -> Result<(), ClusterAdminError> {
        config
            .log
            .validate()
            .map_err(|e| ClusterAdminError::Broker(BrokerError::InvalidConfig(e.to_string())))?;
        let command = Command::CreateTopic {
            name: name.to_string(),
            spec: TopicSpec {
                config,
                replication,
            },
        };
        match self.control.submit(command, ADMIN_TIMEOUT).await? {
            // Refused because it exists, or because too few brokers have
            // joined yet for its copies (a cluster still forming): the
            // second is not the first, and is worth retrying.
            Outcome::Refused(_) if self.state().topics.contains_key(name) => Err(
                ClusterAdminError::Broker(BrokerError::TopicExists(name.to_string())),
            ),
            Outcome::Refused(why) => Err(ClusterAdminError::NotEnoughBrokers(why)),
            _ => {
                self.wait_applied(|s| s.topics.contains_key(name)).await;
                ensure_local(&self.broker, name, &self.state());
                // Answer once every live broker knows the topic, so that
                // a client's first produce, routed to any of them, is not
                // told the topic does not exist.
                self.wait_members_applied(self.state().placement_epoch)
                    .await;
                Ok(())
            }
        }
    }

    /// Waits (up to 2 s) until every other live member that can be reached
    /// answers metadata at placement epoch `epoch` or later. One that
    /// cannot be reached is skipped: it may be dead, and it learns the
    /// change when it is back.
    async fn wait_members_applied(&self, epoch: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let state = self.state();
        for member in state.members.values() {
            if member.id == self.id() || !state.is_alive(member.id) {
                continue;
            }
            while tokio::time::Instant::now() < deadline {
                let Ok(client) = self.client_to(&member.client_addr).await else {
                    break;
                };
                let answer = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.call(&spool_protocol::requests::MetadataRequest),
                )
                .await;
                match answer {
                    Ok(Ok(m)) if m.epoch >= epoch => break,
                    Ok(Ok(_)) => {}
                    // Unreachable or not answering: skip it.
                    _ => break,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Deletes a topic cluster-wide.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterAdminError> {
        match self
            .control
            .submit(Command::DeleteTopic(name.to_string()), ADMIN_TIMEOUT)
            .await?
        {
            Outcome::Refused(_) => Err(ClusterAdminError::Broker(BrokerError::TopicNotFound(
                name.to_string(),
            ))),
            _ => {
                self.wait_applied(|s| !s.topics.contains_key(name)).await;
                Ok(())
            }
        }
    }

    /// `Ok` if this broker coordinates `group` now (its joins, assignments
    /// and commits), and its own lease holds; otherwise where to go.
    pub fn check_coordinates(&self, group: &str) -> Result<(), NotServed> {
        let state = self.state();
        match state.coordinator(group) {
            Some(me) if me == self.id() && self.control.lease_valid() => Ok(()),
            Some(me) if me == self.id() => Err(NotServed::Unavailable(format!(
                "broker {me} coordinates group {group} but its own lease has lapsed"
            ))),
            Some(other) => Err(NotServed::NotLeader {
                leader: other,
                addr: state
                    .members
                    .get(&other)
                    .map(|m| m.client_addr.clone())
                    .unwrap_or_default(),
            }),
            None => Err(NotServed::Unavailable(format!(
                "no live broker to coordinate group {group}"
            ))),
        }
    }

    /// Registers a queue-mode group on `topic` cluster-wide if it is new:
    /// first its dead-letter topic `<name>.dlq` (one partition, as many
    /// copies as `topic`), then the group; returns once this broker has it
    /// open. Every broker opens it (its state on a partition lives on the
    /// partition's replicas).
    pub async fn create_queue_group(
        &self,
        name: &str,
        topic: &str,
        config: GroupConfig,
    ) -> Result<(), ClusterAdminError> {
        let state = self.state();
        let Some(spec) = state.topics.get(topic) else {
            return Err(ClusterAdminError::Broker(BrokerError::TopicNotFound(
                topic.to_string(),
            )));
        };
        if !state.groups.contains_key(name) {
            let dlq = format!("{name}.dlq");
            if !state.topics.contains_key(&dlq) {
                let config = TopicConfig::new(1).sync(spec.config.log.sync);
                match self.create_topic(&dlq, config, spec.replication).await {
                    Ok(()) | Err(ClusterAdminError::Broker(BrokerError::TopicExists(_))) => {}
                    Err(e) => return Err(e),
                }
            }
            let command = Command::CreateQueueGroup {
                name: name.to_string(),
                topic: topic.to_string(),
                config,
            };
            if let Outcome::Refused(reason) = self.control.submit(command, ADMIN_TIMEOUT).await? {
                return Err(ClusterAdminError::Broker(BrokerError::GroupMismatch {
                    group: name.to_string(),
                    reason,
                }));
            }
            self.wait_applied(|s| s.groups.contains_key(name)).await;
        }
        match self.state().groups.get(name) {
            Some(g) if g.topic == topic && g.queue.is_some() => {}
            Some(g) => {
                return Err(ClusterAdminError::Broker(BrokerError::GroupMismatch {
                    group: name.to_string(),
                    reason: format!("the group reads {} in {} mode", g.topic, g.mode()),
                }))
            }
            None => {
                return Err(ClusterAdminError::Control(ControlPlaneError::Raft(
                    "the group's creation was not applied here in time".into(),
                )))
            }
        }
        let (broker, snapshot, name) = (self.broker.clone(), self.state(), name.to_string());
        let _ = crate::simulation::spawn_blocking(move || {
            ensure_local_group(&broker, &name, &snapshot)
        })
        .await;
        Ok(())
    }

    /// Registers a stream-mode group on `topic` cluster-wide (committed
    /// through Raft) if it is new; an existing one must read the same topic.
    pub async fn create_group(&self, name: &str, topic: &str) -> Result<(), ClusterAdminError> {
        let state = self.state();
        match state.groups.get(name) {
            Some(g) if g.topic == topic => return Ok(()),
            _ if !state.topics.contains_key(topic) => {
                return Err(ClusterAdminError::Broker(BrokerError::TopicNotFound(
                    topic.to_string(),
                )))
            }
            _ => {}
        }
        let command = Command::CreateGroup {
            name: name.to_string(),
            topic: topic.to_string(),
        };
        match self.control.submit(command, ADMIN_TIMEOUT).await? {
            Outcome::Refused(reason) => {
                Err(ClusterAdminError::Broker(BrokerError::GroupMismatch {
                    group: name.to_string(),
                    reason,
                }))
            }
            _ => {
                self.wait_applied(|s| s.groups.contains_key(name)).await;
                Ok(())
            }
        }
    }

    /// Deletes a stream-mode group through the control plane; returns once
    /// this broker has applied it.
    pub async fn delete_group(&self, name: &str) -> Result<(), ClusterAdminError> {
        match self
            .control
            .submit(Command::DeleteGroup(name.to_string()), ADMIN_TIMEOUT)
            .await?
        {
            Outcome::Refused(_) => Err(ClusterAdminError::Broker(BrokerError::GroupNotFound(
                name.to_string(),
            ))),
            _ => {
                self.wait_applied(|s| !s.groups.contains_key(name)).await;
                Ok(())
            }
        }
    }

    /// Commits a group's offsets through Raft; answers once this broker has
    /// applied them too, so that its next `committed` shows them.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<(u32, u64)>,
    ) -> Result<(), ClusterAdminError> {
        let command = Command::CommitOffsets {
            group: group.to_string(),
            offsets: offsets.clone(),
        };
        match self.control.submit(command, ADMIN_TIMEOUT).await? {
            Outcome::Refused(reason) => Err(ClusterAdminError::Broker(
                if self.state().groups.contains_key(group) {
                    BrokerError::InvalidConfig(reason)
                } else {
                    BrokerError::GroupNotFound(group.to_string())
                },
            )),
            _ => {
                // A concurrent commit to the same partition may overwrite
                // ours first; then this waits out its (short) bound.
                let mut state = self.control.state.clone();
                let applied = |s: &Arc<ClusterState>| {
                    s.groups
                        .get(group)
                        .is_some_and(|g| offsets.iter().all(|(p, o)| g.offsets.get(p) == Some(o)))
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), state.wait_for(applied)).await;
                Ok(())
            }
        }
    }

    /// A client connection to the broker whose client port is `addr`.
    pub async fn client_to(&self, addr: &str) -> Result<spool_client::Client, String> {
        let mut others = self.others.lock().await;
        if let Some(client) = others.get(addr) {
            return Ok(client.clone());
        }
        let sock: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| format!("broker address {addr:?} is not an address"))?;
        // One attempt: a broker that refuses is down, and every caller
        // has something better to do than back off on it.
        let options = spool_client::ConnectOptions {
            connect_attempts: 1,
            ..self.to_brokers.clone()
        };
        let client = spool_client::Client::connect_with(sock, options)
            .await
            .map_err(|e| e.to_string())?;
        others.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Every partition's `(start, end)` offsets, each from the broker that
    /// serves its reads (this one's own copies are only right for the
    /// partitions it holds); `None` for a partition no broker serves now.
    pub async fn partition_ranges(&self, topic: &str) -> Result<Vec<Option<(u64, u64)>>, String> {
        let state = self.state();
        let spec = state
            .topics
            .get(topic)
            .ok_or_else(|| format!("topic {topic} not found"))?;
        let mut by_leader: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for p in 0..spec.config.partitions {
            if let Some(leader) = state.read_leader(topic, PartitionId(p)) {
                by_leader.entry(leader).or_default().push(p);
            }
        }
        let mut ranges = vec![None; spec.config.partitions as usize];
        for (leader, partitions) in by_leader {
            let described = if leader == self.id() {
                let local = self
                    .broker
                    .describe_topic(topic)
                    .map_err(|e| e.to_string())?;
                local
                    .partitions
                    .iter()
                    .map(|p| (p.partition.0, p.start.0, p.end.0))
                    .collect::<Vec<_>>()
            } else {
                let addr = state
                    .members
                    .get(&leader)
                    .map(|m| m.client_addr.clone())
                    .unwrap_or_default();
                let request = spool_protocol::requests::DescribeTopicRequest {
                    name: topic.to_string(),
                };
                let client = self.client_to(&addr).await?;
                let answer = client.call(&request).await.map_err(|e| e.to_string())?;
                answer
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.start, p.end))
                    .collect()
            };
            for (p, start, end) in described {
                if partitions.contains(&p) {
                    if let Some(slot) = ranges.get_mut(p as usize) {
                        *slot = Some((start, end));
                    }
                }
            }
        }
        Ok(ranges)
    }

    /// Waits (briefly) until this broker has applied what was committed.
    pub(super) async fn wait_applied(&self, done: impl Fn(&ClusterState) -> bool) {
        let mut state = self.control.state.clone();
        let _ = tokio::time::timeout(ADMIN_TIMEOUT, state.wait_for(|s| done(s))).await;
    }

    /// The control plane's voters.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.control.voters()
    }

    /// Makes member `id` a voter of the control plane: commits the wish,
    /// then waits (up to 30 s, while it catches up) until the Raft leader
    /// has changed the membership and this broker has seen it.
    pub async fn add_voter(&self, id: NodeId) -> Result<Outcome, ClusterAdminError> {
        let outcome = self
            .control
            .submit(Command::PromoteVoter(id), ADMIN_TIMEOUT)
            .await?;
        if let Outcome::Refused(_) = outcome {
            return Ok(outcome);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.voters().contains(&id) {
            if tokio::time::Instant::now() > deadline {
                return Ok(Outcome::Refused(format!(
                    "broker {id} is not a voter after 30 s: is it running, alive and caught up?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(broker = %id, "broker is a voter of the control plane");
        Ok(Outcome::Applied)
    }

    /// Removes a member: drains it first (placement stops choosing it and
    /// its partitions move off), then removes it. With `force`, removes it
    /// at once and gives up the data it holds.
    pub async fn remove_member(
        &self,
        id: NodeId,
        force: bool,
    ) -> Result<Outcome, ClusterAdminError> {
        if !force {
            if let Outcome::Refused(reason) = self
                .control
                .submit(Command::Decommission(id), ADMIN_TIMEOUT)
                .await?
            {
                return Ok(Outcome::Refused(reason));
            }
            // Wait for its partitions to move (each move copies a log).
            let mut state = self.control.state.clone();
            let drained = tokio::time::timeout(
                Duration::from_secs(120),
                state.wait_for(|s| s.held_by(id).is_empty()),
            )
            .await;
            if drained.is_err() {
                return Ok(Outcome::Refused(format!(
                    "broker {id} still holds {} partitions after 120 s",
                    self.state().held_by(id).len()
                )));
            }
        } else {
            tracing::warn!(broker = %id, partitions = self.state().held_by(id).len(), "forced removal: the data this broker holds is given up");
        }
        Ok(self
            .control
            .submit(Command::RemoveMember { id, force }, ADMIN_TIMEOUT)
            .await?)
    }

    /// Copies every partition that placement gives this broker from its
    /// current holder, then takes it over: the hand-off. Checks every
    /// 250 ms; one move at a time per partition.
    async fn take_over_partitions(self: Arc<Self>) {
        let moving: Arc<parking_lot::Mutex<std::collections::BTreeSet<(String, u32)>>> =
            Arc::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let state = self.state();
            if !self.control.lease_valid() {
                continue;
            }
            for (topic, partition, holder, target) in state.misplaced() {
                if target != self.id() || !state.is_alive(holder) {
                    continue;
                }
                if !moving.lock().insert((topic.clone(), partition)) {
                    continue;
                }
                let node = self.clone();
                let moving = moving.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.take_over(&topic, partition, holder).await {
                        tracing::warn!(topic, partition, from = %holder, error = %e, "partition hand-off failed; will retry");
                    }
                    moving.lock().remove(&(topic, partition));
                });
            }
        }
    }

    /// Moves `(topic, partition)` from `holder` to this broker: copy its log
    /// while it takes writes, stop its writes (a committed BeginMove),
    /// copy the rest once the holder has applied that, then take over (a
    /// committed FinishMove). Writes pause only between the two commits.
    async fn take_over(&self, topic: &str, partition: u32, holder: NodeId) -> Result<(), String> {
        let state = self.state();
        let addr = state
            .members
            .get(&holder)
            .map(|m| m.client_addr.clone())
            .ok_or_else(|| format!("holder {holder} is not a member"))?;
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| format!("bad address {addr}"))?;
        let client = spool_client::Client::connect_with(addr, self.to_brokers.clone())
            .await
            .map_err(|e| e.to_string())?;
        {
            let broker = self.broker.clone();
            let (name, snapshot) = (topic.to_string(), self.state());
            crate::simulation::spawn_blocking(move || ensure_local(&broker, &name, &snapshot))
                .await
                .map_err(|e| e.to_string())?;
        }
        let resuming = state
            .assignment(topic, PartitionId(partition))
            .is_some_and(|a| a.moving_to == Some(self.id()));
        if !resuming {
            self.copy_from(&client, topic, partition).await?;
            let begin = Command::BeginMove {
                topic: topic.to_string(),
                partition,
                to: self.id(),
            };
            if let Outcome::Refused(reason) = self
                .control
                .submit(begin, ADMIN_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(reason);
            }
        }
        let paused_at = tokio::time::Instant::now();
        self.wait_applied(|s| {
            s.assignment(topic, PartitionId(partition))
                .is_some_and(|a| a.moving_to.is_some())
        })
        .await;
        let epoch = self.state().placement_epoch;
        // The holder stops taking writes once it has applied the move:
        // wait for its placement epoch to reach ours, then copy the rest.
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            let theirs = client
                .call(&spool_protocol::requests::MetadataRequest)
                .await
                .map_err(|e| e.to_string())?
                .epoch;
            if theirs >= epoch {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("holder {holder} did not apply the move in time"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.copy_from(&client, topic, partition).await?;
        let finish = Command::FinishMove {
            topic: topic.to_string(),
            partition,
            to: self.id(),
        };
        match self
            .control
            .submit(finish, ADMIN_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?
        {
            Outcome::Refused(reason) => Err(reason),
            _ => {
                let pause = paused_at.elapsed();
                crate::metrics::HANDOFF_PAUSE_SECONDS.observe(pause.as_secs_f64());
                tracing::info!(topic, partition, from = %holder, to = %self.id(), pause_ms = pause.as_millis() as u64, "partition handed off");
                Ok(())
            }
        }
    }

    /// Appends to the local copy of `(topic, partition)` every batch the
    /// holder has past it, until the copy reaches the holder's end.
    async fn copy_from(
        &self,
        client: &spool_client::Client,
        topic: &str,
        partition: u32,
    ) -> Result<(), String> {
        let log = self
            .broker
            .partition_log(topic, PartitionId(partition))
            .map_err(|e| format!("no local partition {topic}/{partition}: {e}"))?;
        loop {
            let local = log.next_offset().0;
            let fetched = client
                .call(&spool_protocol::requests::FetchRequest {
                    topic: topic.to_string(),
                    partition,
                    offset: local,
                    max_bytes: 4 << 20,
                    max_wait_ms: 0,
                })
                .await
                .map_err(|e| e.to_string())?;
            if fetched.log_start > local {
                return Err(format!(
                    "the holder's log starts at {} (retention), past this copy's end {local}: not copied",
                    fetched.log_start
                ));
            }
            if fetched.batches.is_empty() {
                if local >= fetched.log_end {
                    return Ok(());
                }
                return Err(format!(
                    "holder returned nothing below its end {}",
                    fetched.log_end
                ));
            }
            self.append_copied(
                topic,
                partition,
                &log,
                &fetched.batches,
                spool_protocol::Offset(local),
                &[],
            )
            .await?;
        }
    }

    /// Stops the control plane.
    pub async fn shutdown(self: Arc<Self>) {
        self.stop.cancel();
        match Arc::try_unwrap(self) {
            Ok(node) => node.control.shutdown().await,
            Err(_) => tracing::debug!("cluster node still shared at shutdown"),
        }
    }
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id())
            .finish()
    }
}

/// An admin change that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterAdminError {
    /// The control plane could not commit it in time.
    #[error("{0}")]
    Control(#[from] ControlPlaneError),
    /// The broker refused it.
    #[error("{0}")]
    Broker(BrokerError),
    /// Fewer brokers are members than the topic's copies need.
    #[error("{0}")]
    NotEnoughBrokers(String),
}

/// Creates the topic locally (every partition; only the ones this broker
/// leads are served) if the committed state has it and the broker does not.
pub(super) fn ensure_local(broker: &Broker, name: &str, state: &ClusterState) {
    let Some(spec) = state.topics.get(name) else {
        return;
    };
    if broker.describe_topic(name).is_ok() {
        return;
    }
    match broker.create_topic(name, spec.config.clone()) {
        Ok(()) | Err(BrokerError::TopicExists(_)) => {}
        Err(e) => tracing::error!(topic = name, error = %e, "cannot create a committed topic here"),
    }
}

/// Opens here a committed queue group this broker lacks (its topic must
/// be here already).
pub(super) fn ensure_local_group(broker: &Broker, name: &str, state: &ClusterState) {
    let Some(spec) = state.groups.get(name) else {
        return;
    };
    let Some(config) = spec.queue else {
        return;
    };
    ensure_local(broker, &spec.topic, state);
    if let Err(e) = broker.open_group(name, &spec.topic, GroupMode::Queue, config) {
        tracing::error!(group = name, error = %e, "cannot open a committed queue group here");
    }
}

/// Applies committed topic changes to the local broker: creates committed
/// topics it lacks, and deletes a topic only when a committed deletion
/// removed it (a local topic the cluster never had is left alone).
async fn sync_topics(
    mut state: tokio::sync::watch::Receiver<Arc<ClusterState>>,
    broker: Broker,
    stop: CancellationToken,
) {
    let mut known: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        let now = state.borrow_and_update().clone();
        let broker2 = broker.clone();
        let gone: Vec<String> = known
            .keys()
            .filter(|t| !now.topics.contains_key(*t))
            .cloned()
            .collect();
        let names: Vec<String> = now.topics.keys().cloned().collect();
        // This broker's copies of groups the cluster deleted (a coordinator
        // keeps one for the members that joined it).
        // Names only: this runs on every applied change, offset commits
        // included, and describing each group reads every partition's end.
        let deleted_groups: Vec<String> = broker
            .group_names()
            .into_iter()
            .filter(|g| !now.groups.contains_key(g))
            .collect();
        let snapshot = now.clone();
        // Topic creation and deletion touch files: off the async workers.
        let _ = crate::simulation::spawn_blocking(move || {
            for name in &names {
                ensure_local(&broker2, name, &snapshot);
            }
            for (name, spec) in &snapshot.groups {
                if spec.queue.is_some() && !broker2.has_group(name) {
                    ensure_local_group(&broker2, name, &snapshot);
                }
            }
            for name in &gone {
                tracing::info!(topic = %name, "deleting a topic the cluster deleted");
                if let Err(e) = broker2.delete_topic(name) {
                    tracing::warn!(topic = %name, error = %e, "cannot delete a deleted topic here");
                }
            }
            for name in &deleted_groups {
                if let Err(e) = broker2.remove_group(name) {
                    tracing::warn!(group = %name, error = %e, "cannot remove a deleted group here");
                }
            }
        })
        .await;
        known = now.topics.keys().map(|t| (t.clone(), ())).collect();
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}
