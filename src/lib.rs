// The README's links are relative to the repository; in these docs the
// same names point at the documents' copies in the crates (in Markdown the
// first definition of a link name wins).
#![doc = "[protocol-spec]: crate::protocol::spec"]
#![cfg_attr(feature = "server", doc = "[cluster-doc]: crate::cluster::guide")]
#![doc = "[locks-doc]: crate::locks::guide"]
#![cfg_attr(feature = "auth", doc = "[security-doc]: crate::auth::guide")]
#![doc = ""]
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

#[cfg(feature = "auth")]
pub mod auth;
pub mod broker;
#[cfg(feature = "server")]
pub mod cluster;
pub mod leases;
pub mod locks;
#[cfg(feature = "server")]
pub(crate) mod metrics;
#[cfg(feature = "server")]
pub mod server;
pub mod simulation;
pub mod storage;

/// The bundled client (crate `spool-client`), re-exported so that one
/// dependency gives both ends. A client-only application depends on
/// `spool-client` alone and compiles no broker.
#[cfg(feature = "server")]
pub use spool_client as client;

pub use broker::{
    Broker, BrokerConfig, BrokerError, Message, PartitionOffsets, TopicConfig, TopicInfo,
};
pub use spool_protocol as protocol;
pub use spool_protocol::{Batch, BatchBuilder, Offset, PartitionId, Record};
pub use storage::{AppendInfo, Fetched, StorageError, SyncPolicy};
