//! The cluster's control plane: which brokers are members, whose lease is
//! alive, where each partition lives. Built on openraft; see
//! `docs/cluster.md`.

pub mod leases;
pub mod node;
pub mod placement;
pub mod raft;
pub mod state;

pub use placement::NodeId;
pub use state::{ClusterState, Command, Outcome};
