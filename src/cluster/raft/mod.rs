//! The control plane's consensus: openraft, with Spool's own durable log
//! (`log_store.rs`), a state machine over [`ClusterState`]
//! (`state_machine.rs`) and a TCP transport between brokers
//! (`network.rs`).

// openraft's trait methods return its `StorageError` and `RaftError` by
// value (over 200 bytes); our helpers return the same types to feed them.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod runtime;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use log_store::LogStore;
pub use network::{Network, PeerRoutes};
pub use state_machine::{ApplyFence, StateMachine};

use crate::cluster::placement::NodeId;
use crate::cluster::state::{ClusterState, Command, LeaseHolder, Member, Outcome};
use crate::leases::LeaseTracker;
use crate::locks::LockError;

openraft::declare_raft_types!(
    /// Spool's Raft types: entries carry a [`Command`], applying one yields
    /// an [`Outcome`].
    pub TypeConfig:
        D = Command,
        R = Outcome,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SpoolRuntime,
);

/// A Raft node of the control plane.
pub type Raft = openraft::Raft<TypeConfig>;

/// Timings of the control plane's Raft group.
#[derive(Clone, Debug)]
pub struct RaftTimings {
    /// Leader heartbeat to followers.
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in this range starts
    /// an election.
    pub election_timeout: (Duration, Duration),
}

impl Default for RaftTimings {
    /// Chosen for two busy cores: a heartbeat every 100 ms and an election
    /// after 0.3-0.6 s of silence leave room for scheduling stalls of a
    /// couple of hundred milliseconds without a spurious election (one
    /// costs a re-election, never safety). openraft's voters also refuse
    /// to vote for `election_timeout.1` after they last heard a leader (its
    /// leader lease), so losing the leader costs that plus one random
    /// timeout, 0.9-1.2 s: a new controller is in place before the dead
    /// broker's 1.5 s lease runs out, and a failover that loses the
    /// controller too takes no longer than one that does not.
    fn default() -> RaftTimings {
        RaftTimings {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        }
    }
}

/// The beat of a broker's heartbeats, every [`LEASE_HEARTBEAT`] until
/// stopped; after a stall, one beat, not a burst of the missed ones.
struct Heartbeats {
    tick: tokio::time::Interval,
    stop: CancellationToken,
}

impl Heartbeats {
    fn new(stop: CancellationToken) -> Heartbeats {
        let mut tick = tokio::time::interval(LEASE_HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Heartbeats { tick, stop }
    }

    /// Waits for the next beat; false once stopped.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

/// How often a broker heartbeats the Raft leader.
pub const LEASE_HEARTBEAT: Duration = Duration::from_millis(300);
/// How much earlier than the leader a broker counts its own lease out.
pub const LEASE_SAFETY_MARGIN: Duration = Duration::from_millis(300);

/// How often the Raft leader hands partitions back to their preferred
/// replicas.
pub const PREFERRED_LEADER_CHECK: Duration = Duration::from_secs(5);
/// How often the Raft leader takes the next step of reassigning
/// replicated partitions' copies to where placement wants them.
pub const REASSIGNMENT_CHECK: Duration = Duration::from_secs(1);

/// One broker's part of the control plane: its Raft node, the committed
/// cluster state, and the tasks answering peers, keeping leases and
/// heartbeating.
pub struct ControlPlane {
    /// This broker.
    pub id: NodeId,
    /// The Raft node.
    pub raft: Raft,
    /// The committed cluster state, updated as entries apply.
    pub state: watch::Receiver<Arc<ClusterState>>,
    /// Hold it from checking a write against `state` to appending it.
    pub fence: ApplyFence,
    desk: Arc<LeaseDesk>,
    stop: CancellationToken,
}

/// The lease side of a broker: the leader's lease clock when it leads, and
/// its own lease as acknowledged by the leader.
pub(crate) struct LeaseDesk {
    id: NodeId,
    /// How others reach this broker, sent with every heartbeat.
    me: Member,
    /// Where and how to dial peers.
    network: Network,
    /// The voters' peer addresses, tried in turn while no leader is known
    /// (a new broker's first heartbeats).
    voters: Vec<(NodeId, String)>,
    raft: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    tracker: parking_lot::Mutex<LeaseTracker<LeaseHolder>>,
    /// The Raft term this node leads in, once its lease clock started.
    leading_term: parking_lot::Mutex<Option<u64>>,
    /// Until when this broker may act on its own lease.
    own_lease_until: parking_lot::Mutex<Option<tokio::time::Instant>>,
    /// Heartbeats sent while no leader was known (picks the next voter).
    tried: std::sync::atomic::AtomicUsize,
    /// When this node last heard each broker's heartbeat, leader or not:
    /// what it starts its lease clock from if it becomes the leader.
    heard: parking_lot::Mutex<HashMap<LeaseHolder, tokio::time::Instant>>,
    /// Set while a Raft membership change is under way (one at a time).
    changing_voters: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseDesk {
    fn leading(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.id.0) && m.state == openraft::ServerState::Leader
    }

    /// A broker's heartbeat, counted if this node leads. A broker that is
    /// not a member yet (or moved) is added first; its lease starts alive.
    /// Answers the index of the last entry this leader has applied: the
    /// broker acts on its lease only once its own state has caught up that
    /// far.
    pub(crate) fn heartbeat(&self, member: Member) -> Result<u64, String> {
        self.heard
            .lock()
            .insert(LeaseHolder::Broker(member.id), tokio::time::Instant::now());
        if !self.leading() || self.leading_term.lock().is_none() {
            return Err(format!("broker {} is not the Raft leader", self.id));
        }
        let state = self.state.borrow().clone();
        let holder = LeaseHolder::Broker(member.id);
        if state.removed.contains(&member.id) {
            return Err(format!("broker {} was removed from the cluster", member.id));
        }
        // A broker that is not in the Raft group (not one of the voters)
        // follows it as a learner, so it has the committed state too.
        let in_group = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .nodes()
            .any(|(id, _)| *id == member.id.0);
        if !in_group {
            let raft = self.raft.clone();
            let (id, addr) = (member.id, member.peer_addr.clone());
            tokio::spawn(async move {
                tracing::info!(broker = %id, peer = %addr, "adding a broker to the Raft group as a learner");
                if let Err(e) = raft.add_learner(id.0, BasicNode { addr }, false).await {
                    tracing::warn!(broker = %id, error = %e, "cannot add a learner");
                }
            });
        }
        let command = if state.members.get(&member.id) != Some(&member) {
            tracing::info!(broker = %member.id, client = %member.client_addr, "adding a member that heartbeats");
            Some(Command::AddMember(member))
        } else {
            let expired =
                self.tracker
                    .lock()
                    .heartbeat(holder, tokio::time::Instant::now(), &state.leases);
            expired
                .unwrap_or(false)
                .then_some(Command::RenewLease(holder))
        };
        let alive = state.leases.get(&holder).is_some_and(|l| l.alive);
        let Some(command) = command else {
            if alive {
                // Counted against a lease the committed state has alive:
                // the holder may act on it for another TTL (minus its
                // margin).
                let applied = self.raft.metrics().borrow().last_applied;
                return Ok(applied.map_or(0, |l| l.index));
            }
            return Err(format!("{holder:?} holds no lease"));
        };
        let raft = self.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.client_write(command).await {
                tracing::debug!(error = %e, "membership or renewal not committed");
            }
        });
        // Not a lease to act on yet: it is expired (or not granted) until
        // the renewal commits, and a heartbeat after that is counted.
        Err(format!(
            "broker {} has no live lease yet; renewal proposed",
            holder_id(holder)
        ))
    }

    /// A lock session's keep-alive, counted if this node leads and its
    /// lease clock runs. Answers the session's TTL in milliseconds.
    pub(crate) fn session_heartbeat(&self, session: u64) -> Result<u64, LockError> {
        if !self.leading() || self.leading_term.lock().is_none() {
            return Err(LockError::Unavailable(format!(
                "broker {} is not the Raft leader",
                self.id
            )));
        }
        let state = self.state.borrow().clone();
        let holder = LeaseHolder::Session(session);
        match self
            .tracker
            .lock()
            .heartbeat(holder, tokio::time::Instant::now(), &state.leases)
        {
            Some(false) => Ok(state.leases.get(&holder).map_or(0, |l| l.ttl_ms)),
            _ => Err(LockError::SessionExpired(session)),
        }
    }

    /// How long the holder of lock session `session` has before this
    /// leader expires it, if this node leads.
    pub(crate) fn session_expires_in(&self, session: u64) -> Option<Duration> {
        if !self.leading() {
            return None;
        }
        let state = self.state.borrow().clone();
        let holder = LeaseHolder::Session(session);
        let ttl = Duration::from_millis(state.leases.get(&holder)?.ttl_ms);
        let age = self
            .tracker
            .lock()
            .age(holder, tokio::time::Instant::now(), &state.leases)?;
        Some(ttl.saturating_sub(age))
    }

    /// Commits `command` if this node leads.
    pub(crate) async fn propose_here(&self, command: Command) -> Result<Outcome, String> {
        if !self.leading() {
            return Err(format!("broker {} is not the Raft leader", self.id));
        }
        self.raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| e.to_string())
    }

    /// The Raft leader and its peer address, if known.
    fn leader_peer(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| self.network.routes.dial(leader, &n.addr));
        addr.map(|addr| (NodeId(leader), addr))
    }

    /// Every 100 ms: start the lease clock on becoming leader, and commit
    /// the expiries that are due.
    async fn keep_leases(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_rebalance = tokio::time::Instant::now();
        let mut last_reassignment = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let term = {
                let m = self.raft.metrics();
                let m = m.borrow();
                crate::metrics::RAFT_TERM.set(m.current_term as i64);
                crate::metrics::RAFT_LEADER.set(m.current_leader.map_or(0, |l| l as i64));
                crate::metrics::RAFT_APPLIED.set(m.last_applied.map_or(0, |l| l.index as i64));
                let state = self.state.borrow();
                crate::metrics::PLACEMENT_EPOCH.set(state.placement_epoch as i64);
                crate::metrics::PARTITIONS_WITHOUT_LEADER
                    .set(state.partitions_without_leader() as i64);
                drop(state);
                m.current_term
            };
            if !self.leading() {
                *self.leading_term.lock() = None;
                continue;
            }
            let now = tokio::time::Instant::now();
            let state = self.state.borrow().clone();
            let due = {
                let mut leading = self.leading_term.lock();
                let mut tracker = self.tracker.lock();
                if *leading != Some(term) {
                    tracker.on_leadership(now, &state.leases, &self.heard.lock());
                    *leading = Some(term);
                    tracing::info!(node = %self.id, term, leases = state.leases.len(), "leading: each lease runs from the last heartbeat heard here");
                }
                tracker
                    .due(now, &state.leases)
                    .into_iter()
                    .map(|e| Command::ExpireLease {
                        holder: e.holder,
                        generation: e.generation,
                    })
                    .collect::<Vec<_>>()
            };
            // A move whose target has lost its lease would keep the
            // partition's writes paused: give it up.
            let stalled: Vec<Command> = state
                .assignments
                .iter()
                .flat_map(|(topic, parts)| {
                    parts.iter().enumerate().filter_map(|(p, a)| {
                        a.moving_to
                            .filter(|to| !state.is_alive(*to))
                            .map(|_| Command::AbortMove {
                                topic: topic.clone(),
                                partition: p as u32,
                            })
                    })
                })
                .collect();
            for command in stalled {
                tracing::info!(?command, "aborting a move whose target lost its lease");
                if let Err(e) = self.raft.client_write(command).await {
                    tracing::warn!(error = %e, "move abort not committed");
                }
            }
            for command in due {
                tracing::info!(?command, "lease expired: no heartbeat for a whole TTL");
                crate::metrics::LEASE_EXPIRIES.inc();
                if matches!(
                    command,
                    Command::ExpireLease {
                        holder: LeaseHolder::Session(_),
                        ..
                    }
                ) {
                    crate::metrics::LOCK_SESSION_EXPIRIES.inc();
                }
                if let Err(e) = self.raft.client_write(command).await {
                    tracing::warn!(error = %e, "lease expiry not committed");
                }
            }
            // Copies of replicated partitions to where placement wants
            // them, a step at a time (Redpanda moves them by itself;
            // Kafka asks an operator to run a reassignment).
            if last_reassignment.elapsed() >= REASSIGNMENT_CHECK {
                last_reassignment = tokio::time::Instant::now();
                for command in state.reassignments() {
                    tracing::info!(?command, "reassigning a partition's copies");
                    if let Err(e) = self.raft.client_write(command).await {
                        tracing::warn!(error = %e, "reassignment step not committed");
                    }
                }
            }
            // Leadership back to preferred replicas that are in sync
            // again (Kafka's auto leader rebalance), every few seconds so
            // a broker that just caught up is not handed work at once.
            if last_rebalance.elapsed() >= PREFERRED_LEADER_CHECK {
                last_rebalance = tokio::time::Instant::now();
                for (topic, partition, leader_epoch) in state.off_preferred() {
                    let command = Command::PreferLeader {
                        topic,
                        partition,
                        leader_epoch,
                    };
                    tracing::info!(?command, "moving leadership back to the preferred replica");
                    if let Err(e) = self.raft.client_write(command).await {
                        tracing::warn!(error = %e, "preferred leader not committed");
                    }
                }
            }
            self.match_raft_membership(&state);
        }
    }

    /// Brings the Raft membership in line with the committed state, one
    /// change at a time: removed brokers leave it (first as voters, then as
    /// learners), promoted live members become voters.
    fn match_raft_membership(&self, state: &ClusterState) {
        use std::sync::atomic::Ordering;
        let (voters, learners) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                membership.voter_ids().collect::<BTreeSet<u64>>(),
                membership.learner_ids().collect::<BTreeSet<u64>>(),
            )
        };
        let removed = |ids: &BTreeSet<u64>| -> BTreeSet<u64> {
            ids.iter()
                .copied()
                .filter(|id| state.removed.contains(&NodeId(*id)))
                .collect()
        };
        let change: openraft::ChangeMembers<u64, BasicNode> = {
            let (gone_voters, gone_learners) = (removed(&voters), removed(&learners));
            let promote: BTreeSet<u64> = state
                .promoted
                .iter()
                .map(|n| n.0)
                .filter(|id| learners.contains(id) && state.is_alive(NodeId(*id)))
                .collect();
            // Never remove the last voters: a group with none cannot commit.
            if !gone_voters.is_empty() && gone_voters.len() < voters.len() {
                openraft::ChangeMembers::RemoveVoters(gone_voters)
            } else if !gone_learners.is_empty() {
                openraft::ChangeMembers::RemoveNodes(gone_learners)
            } else if !promote.is_empty() {
                openraft::ChangeMembers::AddVoterIds(promote)
            } else {
                return;
            }
        };
        if self.changing_voters.swap(true, Ordering::AcqRel) {
            return;
        }
        let (raft, changing) = (self.raft.clone(), self.changing_voters.clone());
        tokio::spawn(async move {
            tracing::info!(
                ?change,
                "changing the Raft membership to match the cluster state"
            );
            if let Err(e) = raft.change_membership(change, false).await {
                tracing::warn!(error = %e, "Raft membership change failed; will retry");
            }
            changing.store(false, Ordering::Release);
        });
    }

    /// Sends this broker's heartbeat to the voters that do not lead too
    /// (not counted by them): a voter that becomes the leader then times
    /// each lease from the last heartbeat it heard instead of giving every
    /// broker (a dead one included) a whole fresh TTL, which would add a
    /// TTL to every failover that loses the control plane's leader too.
    async fn heartbeat_voters(self: Arc<Self>, stop: CancellationToken) {
        let mut peer = network::PeerClient::new(&self.network);
        let mut beats = Heartbeats::new(stop);
        while beats.next().await {
            let leader = self.leader_peer().map(|(id, _)| id);
            self.heard
                .lock()
                .insert(LeaseHolder::Broker(self.id), tokio::time::Instant::now());
            for (id, addr) in &self.voters {
                if Some(*id) == leader || *id == self.id {
                    continue;
                }
                let addr = self.network.routes.dial(id.0, addr);
                let request = network::PeerRequest::Heartbeat(self.me.clone());
                // Short: a dead voter must not delay the others' beats.
                let _ = peer.call(&addr, &request, LEASE_HEARTBEAT / 3).await;
            }
        }
    }

    /// Waits (up to a heartbeat period) until this node has applied the
    /// entry at `index`.
    async fn caught_up_to(&self, index: u64) -> Result<(), String> {
        let applied = |raft: &Raft| raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        if applied(&self.raft) >= index {
            return Ok(());
        }
        self.raft
            .wait(Some(LEASE_HEARTBEAT))
            .applied_index_at_least(Some(index), "the leader's state")
            .await
            .map(|_| ())
            .map_err(|e| format!("state not caught up with the leader's index {index}: {e}"))
    }

    /// Heartbeats the leader every [`LEASE_HEARTBEAT`] and records how long
    /// this broker's own lease lasts.
    async fn heartbeat_leader(self: Arc<Self>, stop: CancellationToken) {
        let mut peer = network::PeerClient::new(&self.network);
        let mut beats = Heartbeats::new(stop);
        while beats.next().await {
            let holder = LeaseHolder::Broker(self.id);
            let ttl = self.state.borrow().leases.get(&holder).map(|l| l.ttl_ms);
            let sent = tokio::time::Instant::now();
            let leader = self.leader_peer().or_else(|| {
                // No leader known yet: try the voters in turn.
                let n = self.voters.len().max(1);
                self.voters
                    .get(
                        self.tried
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            % n,
                    )
                    .cloned()
            });
            let counted = match leader {
                Some((leader, _)) if leader == self.id => {
                    // The leader counts its own heartbeat only after a
                    // quorum confirms it still leads: a leader that was
                    // paused and deposed meanwhile must not extend its own
                    // lease on its stale view.
                    match tokio::time::timeout(LEASE_HEARTBEAT, self.raft.get_read_log_id()).await {
                        Ok(Ok(_)) => self.heartbeat(self.me.clone()).map(|_| ()),
                        Ok(Err(e)) => Err(format!("leadership not confirmed: {e}")),
                        Err(_) => Err("leadership not confirmed in time".to_string()),
                    }
                }
                Some((_, addr)) => {
                    let request = network::PeerRequest::Heartbeat(self.me.clone());
                    match peer.call(&addr, &request, LEASE_HEARTBEAT).await {
                        // Acted on only once this broker's own state has
                        // caught up with the leader's: a broker restarted
                        // on a stale state must not serve from it (lead a
                        // partition it no longer leads, expose a high
                        // watermark nobody agreed to).
                        Ok(network::PeerResponse::Heartbeat(Ok(index))) => {
                            self.caught_up_to(index).await
                        }
                        Ok(network::PeerResponse::Heartbeat(Err(e))) => Err(e),
                        Ok(_) => Err("peer answered a different request kind".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("no Raft leader known".to_string()),
            };
            match (counted, ttl) {
                // Only a lease the cluster has committed can be acted on.
                (Ok(()), Some(ttl)) => {
                    let until = (sent + Duration::from_millis(ttl))
                        .checked_sub(LEASE_SAFETY_MARGIN)
                        .unwrap_or(sent);
                    *self.own_lease_until.lock() = Some(until);
                }
                (Ok(()), None) => {}
                (Err(e), _) => {
                    tracing::debug!(node = %self.id, error = %e, "heartbeat not counted")
                }
            }
        }
    }
}

fn holder_id(holder: LeaseHolder) -> String {
    match holder {
        LeaseHolder::Broker(id) => id.to_string(),
        LeaseHolder::Session(id) => format!("session {id}"),
    }
}

/// Why the control plane did not start or a write did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// Its files could not be opened.
    #[error("control plane storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// The peer port could not be bound.
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Raft refused (not the leader, shutting down, misconfigured).
    #[error("raft: {0}")]
    Raft(String),
}

impl ControlPlane {
    /// Starts this broker's Raft node with its files in `dir`, answering
    /// peers on `peer_listen`. `voters` names every voting broker and its
    /// peer address; on the first start of a new cluster they form its
    /// initial membership (every voter may propose the same one: openraft
    /// accepts it once).
    pub async fn start(
        me: Member,
        dir: &Path,
        peer_listen: SocketAddr,
        voters: &BTreeMap<NodeId, String>,
        initial: ClusterState,
        timings: &RaftTimings,
        network: Network,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let id = me.id;
        let log = LogStore::open(dir)?;
        let fence = ApplyFence::default();
        let (machine, state) = StateMachine::open(dir, initial, fence.clone())?;
        let config = openraft::Config {
            cluster_name: "spool".into(),
            heartbeat_interval: timings.heartbeat.as_millis() as u64,
            election_timeout_min: timings.election_timeout.0.as_millis() as u64,
            election_timeout_max: timings.election_timeout.1.as_millis() as u64,
            // The state is small: snapshot every 1,000 entries and keep a
            // few hundred after it for slow followers.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 200,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ControlPlaneError::Raft(e.to_string()))?,
        );
        let listener = network
            .transport
            .bind(peer_listen)
            .await
            .map_err(|source| ControlPlaneError::Listen {
                addr: peer_listen,
                source,
            })?;
        let raft = Raft::new(id.0, config, network.clone(), log, machine)
            .await
            .map_err(|e| ControlPlaneError::Raft(e.to_string()))?;
        let stop = CancellationToken::new();
        let desk = Arc::new(LeaseDesk {
            id,
            me,
            voters: voters
                .iter()
                .map(|(id, addr)| (*id, network.routes.dial(id.0, addr)))
                .collect(),
            network: network.clone(),
            raft: raft.clone(),
            state: state.clone(),
            tracker: parking_lot::Mutex::new(LeaseTracker::default()),
            leading_term: parking_lot::Mutex::new(None),
            own_lease_until: parking_lot::Mutex::new(None),
            tried: std::sync::atomic::AtomicUsize::new(0),
            heard: parking_lot::Mutex::default(),
            changing_voters: Arc::default(),
        });
        tokio::spawn(network::serve_peers(
            listener,
            raft.clone(),
            desk.clone(),
            network.tls.clone(),
            stop.clone(),
        ));
        tokio::spawn(desk.clone().keep_leases(stop.clone()));
        tokio::spawn(desk.clone().heartbeat_leader(stop.clone()));
        tokio::spawn(desk.clone().heartbeat_voters(stop.clone()));

        let fresh = raft.metrics().borrow().last_log_index.is_none();
        // Only voters start the group; another broker is added to it as a
        // learner by the leader when it first heartbeats.
        if fresh && voters.contains_key(&id) {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|(id, addr)| (id.0, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(node = %id, voters = voters.len(), "control plane initialized")
                }
                // Another voter initialized it first, or this one did before
                // a restart: both are fine.
                Err(e) => {
                    tracing::debug!(node = %id, error = %e, "control plane already initialized")
                }
            }
        }
        Ok(ControlPlane {
            id,
            raft,
            state,
            fence,
            desk,
            stop,
        })
    }

    /// Commits `command` through the Raft leader, wherever it is: here, or
    /// forwarded over the peer port. Rides out an election under way, up to
    /// `within`.
    pub async fn submit(
        &self,
        command: Command,
        within: Duration,
    ) -> Result<Outcome, ControlPlaneError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut peer = network::PeerClient::new(&self.desk.network);
        loop {
            let attempt = match self.desk.leader_peer() {
                Some((leader, _)) if leader == self.id => {
                    self.desk.propose_here(command.clone()).await
                }
                Some((_, addr)) => {
                    let request = network::PeerRequest::Propose(command.clone());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match peer
                        .call(&addr, &request, left.max(Duration::from_millis(1)))
                        .await
                    {
                        Ok(network::PeerResponse::Propose(result)) => result,
                        Ok(_) => Err("peer answered a different request kind".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("no Raft leader known (an election is under way)".to_string()),
            };
            match attempt {
                Ok(outcome) => return Ok(outcome),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(ControlPlaneError::Raft(e))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "command not committed yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Commits `command` here, which only works on the Raft leader;
    /// elsewhere it fails with the leader's id in the message.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ControlPlaneError> {
        self.raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| ControlPlaneError::Raft(e.to_string()))
    }

    /// Keeps lock session `session` alive at the Raft leader, wherever it
    /// is. Answers the session's TTL.
    pub async fn keep_session_alive(&self, session: u64) -> Result<Duration, LockError> {
        let ttl_ms = match self.desk.leader_peer() {
            Some((leader, _)) if leader == self.id => self.desk.session_heartbeat(session)?,
            Some((_, addr)) => {
                let request = network::PeerRequest::SessionKeepAlive(session);
                let mut peer = network::PeerClient::new(&self.desk.network);
                match peer.call(&addr, &request, LEASE_HEARTBEAT).await {
                    Ok(network::PeerResponse::SessionKeepAlive(result)) => result?,
                    Ok(_) => {
                        return Err(LockError::Unavailable(
                            "peer answered a different request kind".into(),
                        ))
                    }
                    Err(e) => return Err(LockError::Unavailable(e.to_string())),
                }
            }
            None => {
                return Err(LockError::Unavailable(
                    "no Raft leader known (an election is under way)".into(),
                ))
            }
        };
        Ok(Duration::from_millis(ttl_ms))
    }

    /// How long lock session `session` has before the Raft leader expires
    /// it, if this broker is that leader.
    pub fn session_expires_in(&self, session: u64) -> Option<Duration> {
        self.desk.session_expires_in(session)
    }

    /// The voters of the Raft group, as this node knows them.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .map(NodeId)
            .collect()
    }

    /// The current Raft leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader.map(NodeId)
    }

    /// How long ago the leader last heard each broker, if this node is the
    /// leader (only it times leases).
    pub fn lease_ages(&self) -> BTreeMap<NodeId, Duration> {
        if !self.desk.leading() {
            return BTreeMap::new();
        }
        let state = self.state.borrow().clone();
        let now = tokio::time::Instant::now();
        let tracker = self.desk.tracker.lock();
        state
            .members
            .keys()
            .filter_map(|id| {
                tracker
                    .age(LeaseHolder::Broker(*id), now, &state.leases)
                    .map(|age| (*id, age))
            })
            .collect()
    }

    /// The Raft term this node is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// True while this broker may act on its lease (serve writes): the
    /// leader acknowledged a heartbeat sent less than TTL minus the safety
    /// margin ago. The leader counts from when it received that heartbeat,
    /// later than it was sent, so this turns false before the leader can
    /// expire the lease.
    pub fn lease_valid(&self) -> bool {
        self.desk
            .own_lease_until
            .lock()
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Stops the node and its peer listener.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}
