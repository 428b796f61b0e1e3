//! Broker errors as wire error codes.

use spool_protocol::{ErrorCode, ErrorResponse};

use crate::broker::BrokerError;
use crate::storage::StorageError;

/// The wire code for a broker error.
pub fn code_for(err: &BrokerError) -> ErrorCode {
    match err {
        BrokerError::TopicNotFound(_) => ErrorCode::TopicNotFound,
        BrokerError::TopicExists(_) => ErrorCode::TopicExists,
        BrokerError::InvalidTopicName { .. } => ErrorCode::InvalidTopicName,
        BrokerError::PartitionNotFound { .. } => ErrorCode::PartitionNotFound,
        BrokerError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        BrokerError::InvalidBatch(_) => ErrorCode::InvalidBatch,
        BrokerError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
        BrokerError::Closed => ErrorCode::ShuttingDown,
        BrokerError::DeadLetterUnavailable { .. } => ErrorCode::PartitionUnavailable,
        BrokerError::GroupNotFound(_) => ErrorCode::GroupNotFound,
        BrokerError::GroupMismatch { .. } => ErrorCode::GroupMismatch,
        BrokerError::UnknownMember { .. } => ErrorCode::UnknownMember,
        BrokerError::GroupHasMembers(_) => ErrorCode::GroupHasMembers,
        BrokerError::LimitReached { .. } => ErrorCode::LimitReached,
        BrokerError::DirectoryLocked(_) => ErrorCode::StorageError,
        BrokerError::Storage { source, .. } => match source {
            StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StorageError::Corrupt { .. } => ErrorCode::CorruptData,
            StorageError::NoSpace { .. } => ErrorCode::NoSpace,
            StorageError::InvalidBatch(_) => ErrorCode::InvalidBatch,
            StorageError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            StorageError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            StorageError::Fenced { .. } => ErrorCode::Fenced,
            StorageError::TooManyFences(_) => ErrorCode::LimitReached,
            StorageError::Io { .. } | StorageError::Metadata { .. } => ErrorCode::StorageError,
        },
    }
}

/// The error response for a broker error.
pub fn response_for(err: &BrokerError) -> ErrorResponse {
    error(code_for(err), err.to_string())
}

/// An error response with a code and message.
pub fn error(code: ErrorCode, message: impl Into<String>) -> ErrorResponse {
    crate::metrics::REQUEST_ERRORS
        .with_label_values(&[&(code as u16).to_string()])
        .inc();
    if code == ErrorCode::Fenced {
        crate::metrics::FENCED_WRITES.inc();
    }
    ErrorResponse {
        code: code as u16,
        message: message.into(),
    }
}
