#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod broker;
pub mod client;
pub mod metrics;
pub mod server;
pub mod storage;

pub use broker::{
    Broker, BrokerConfig, BrokerError, Message, PartitionOffsets, TopicConfig, TopicInfo,
};
pub use spool_protocol as protocol;
pub use spool_protocol::{Batch, BatchBuilder, Offset, PartitionId, Record};
pub use storage::{AppendInfo, Fetched, StorageError, SyncPolicy};
