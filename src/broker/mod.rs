//! The broker: topics and partitions over storage, and the embedded API.
//!
//! The broker never sees a socket; the server (and an embedding
//! application) call [`Broker`] directly.

#[allow(clippy::module_inception)]
mod broker;
mod clock;
mod group;
mod producer_ids;
mod topic;
pub mod verify;

use std::path::PathBuf;

use spool_protocol::{BatchError, PartitionId};
use thiserror::Error;

use crate::storage::StorageError;

pub use self::broker::{
    Broker, BrokerConfig, DeadLetterSink, Message, PendingAppend, StorageStats,
};
pub use self::clock::Clock;
pub use self::group::queue_state::{MemberId, SettleResult};
pub use self::group::{
    DeliveredMessage, GroupConfig, GroupInfo, GroupMode, GroupPartitionInfo, PendingMessage,
    ResetTo,
};
pub use self::producer_ids::ID_BITS as PRODUCER_ID_BITS;
pub use self::topic::{PartitionOffsets, TopicConfig, TopicInfo};

/// Everything a broker call can fail with.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// No topic by that name.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// A topic by that name exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The name breaks the naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The partition number is not below the topic's partition count.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: PartitionId,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The batch failed validation; nothing was stored.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the broker accepts.
    #[error("batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Its length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// No consumer group by that name.
    #[error("consumer group {0:?} does not exist")]
    GroupNotFound(String),
    /// The group exists for another topic or mode.
    #[error("consumer group {group:?}: {reason}")]
    GroupMismatch {
        /// The group.
        group: String,
        /// What does not match.
        reason: String,
    },
    /// The member id is not (or no longer) in the group.
    #[error("member {member} is not in consumer group {group:?} (join again)")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member id.
        member: u64,
    },
    /// A reset needs the group to have no members.
    #[error("consumer group {0:?} has members; stop its consumers before resetting it")]
    GroupHasMembers(String),
    /// Another process has this data directory open.
    #[error("data directory {0} is in use by another process")]
    DirectoryLocked(PathBuf),
    /// A configured bound (see [`BrokerConfig`]) would be passed.
    #[error("limit reached: at most {limit} {what}")]
    LimitReached {
        /// What is counted.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// The broker was closed.
    #[error("the broker is closed")]
    Closed,
    /// Dead letters could not be written to their topic (in a cluster, its
    /// leader did not take them); the messages stay unsettled and are
    /// dead-lettered on a later delivery.
    #[error("dead-letter topic {topic:?} did not take the messages: {reason}")]
    DeadLetterUnavailable {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A storage operation failed.
    #[error("{context}: {source}")]
    Storage {
        /// What the broker was doing.
        context: String,
        /// The storage error.
        #[source]
        source: StorageError,
    },
}
