//! The cluster's control plane: which brokers are members, whose lease is
//! alive, where each partition lives. Built on openraft; see
//! `docs/cluster.md`.

/// How the cluster works, how to run one, and what its tests show
/// (`docs/cluster.md`).
pub mod guide {
    #![doc = include_str!("../../docs/cluster.md")]
}
mod dead_letters;
mod locks;
pub mod node;
pub mod peer_tls;
pub mod placement;
pub mod raft;
pub mod replica_progress;
pub mod replication;
pub mod security;
pub mod state;

pub use placement::NodeId;
pub use state::{ClusterState, Command, Outcome};
