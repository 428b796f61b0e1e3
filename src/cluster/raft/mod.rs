//! The control plane's consensus: openraft, with Spool's own durable log
//! (`log_store.rs`), a state machine over [`ClusterState`]
//! (`state_machine.rs`) and a TCP transport between brokers
//! (`network.rs`).

// openraft's trait methods return its `StorageError` and `RaftError` by
// value (over 200 bytes); our helpers return the same types to feed them.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use log_store::LogStore;
pub use network::Network;
pub use state_machine::StateMachine;

use crate::cluster::placement::NodeId;
use crate::cluster::state::{ClusterState, Command, Outcome};

openraft::declare_raft_types!(
    /// Spool's Raft types: entries carry a [`Command`], applying one yields
    /// an [`Outcome`].
    pub TypeConfig:
        D = Command,
        R = Outcome,
        SnapshotData = std::io::Cursor<Vec<u8>>,
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
    /// after 0.5-1 s of silence leave room for scheduling stalls of a few
    /// hundred milliseconds without a spurious election. openraft's voters
    /// also refuse to vote for `election_timeout.1` after they last heard a
    /// leader (its leader lease), so losing the leader costs that plus one
    /// random timeout: measured 1-2 s here, inside the 3 s we promise.
    fn default() -> RaftTimings {
        RaftTimings {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        }
    }
}

/// One broker's part of the control plane: its Raft node, the committed
/// cluster state, and the task answering peers.
pub struct ControlPlane {
    /// This broker.
    pub id: NodeId,
    /// The Raft node.
    pub raft: Raft,
    /// The committed cluster state, updated as entries apply.
    pub state: watch::Receiver<Arc<ClusterState>>,
    stop: CancellationToken,
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
        id: NodeId,
        dir: &Path,
        peer_listen: SocketAddr,
        voters: &BTreeMap<NodeId, String>,
        initial: ClusterState,
        timings: &RaftTimings,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let log = LogStore::open(dir)?;
        let (machine, state) = StateMachine::open(dir, initial)?;
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
        let listener =
            TcpListener::bind(peer_listen)
                .await
                .map_err(|source| ControlPlaneError::Listen {
                    addr: peer_listen,
                    source,
                })?;
        let raft = Raft::new(id.0, config, Network, log, machine)
            .await
            .map_err(|e| ControlPlaneError::Raft(e.to_string()))?;
        let stop = CancellationToken::new();
        tokio::spawn(network::serve_peers(listener, raft.clone(), stop.clone()));

        let fresh = raft.metrics().borrow().last_log_index.is_none();
        if fresh {
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
            stop,
        })
    }

    /// Commits `command` through the Raft leader. Only the leader can
    /// write; elsewhere this fails with the leader's id in the message.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ControlPlaneError> {
        self.raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| ControlPlaneError::Raft(e.to_string()))
    }

    /// The current Raft leader, if this node knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader.map(NodeId)
    }

    /// Stops the node and its peer listener.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}
