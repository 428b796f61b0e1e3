//! Numeric error codes that travel on the wire. A code's number never
//! changes and a retired code is never reused.

use std::fmt;

/// Why the server refused a request. Sent as a `u16` in error responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The server does not speak any protocol version the client offered.
    UnsupportedVersion = 1,
    /// The frame or its body does not parse. The connection is closed.
    MalformedFrame = 2,
    /// The frame is larger than the server accepts. The connection is closed.
    FrameTooLarge = 3,
    /// The request kind is unknown to this server.
    UnknownRequest = 4,
    /// The first request on a connection must be a handshake.
    HandshakeRequired = 5,
    /// No such topic.
    TopicNotFound = 10,
    /// The topic exists already.
    TopicExists = 11,
    /// The topic name breaks the naming rules.
    InvalidTopicName = 12,
    /// The partition does not exist.
    PartitionNotFound = 13,
    /// A configuration value is out of range.
    InvalidConfig = 14,
    /// No such consumer group.
    GroupNotFound = 15,
    /// The group exists for another topic or mode.
    GroupMismatch = 16,
    /// The member is not (or no longer) in the group: join again.
    UnknownMember = 17,
    /// The group has members; the operation needs it idle.
    GroupHasMembers = 18,
    /// The batch failed validation (length, CRC or structure); nothing was stored.
    InvalidBatch = 20,
    /// The batch is larger than the server accepts; nothing was stored.
    BatchTooLarge = 21,
    /// The offset is not in the log.
    OffsetOutOfRange = 22,
    /// Stored data failed its CRC check; the range is not served.
    CorruptData = 23,
    /// The server's disk is full; nothing was stored. Retry later.
    NoSpace = 24,
    /// Another storage failure.
    StorageError = 25,
    /// An idempotent producer's batch does not follow its previous one to
    /// the partition (a predecessor has not arrived yet). Nothing was
    /// stored; retry after the earlier batches.
    OutOfOrderSequence = 26,
    /// The server is shutting down; retry against it later.
    ShuttingDown = 30,
    /// The server has too many connections.
    TooManyConnections = 31,
    /// A configured bound (topics, groups, members of a group) would be
    /// passed; the message names it.
    LimitReached = 32,
    /// Cluster: this broker does not lead the partition. The message is
    /// `leader <id> at <client address>` when the leader is known; refresh
    /// metadata and send there.
    NotLeader = 40,
    /// Cluster: no broker may serve the partition now (its broker's lease
    /// lapsed, or this broker's own lease did). Retry after a metadata
    /// refresh.
    PartitionUnavailable = 41,
    /// Cluster: the control plane could not commit the change in time (no
    /// Raft leader, no quorum). Retry.
    ClusterUnavailable = 42,
    /// Cluster: a produce with `acks=all` found fewer in-sync replicas
    /// than the cluster's minimum; nothing was stored. Or a topic's
    /// replication needs more brokers than have joined. Retry once a
    /// replica (or broker) is back.
    NotEnoughReplicas = 43,
    /// Cluster: a replica fetch named another leader epoch than the
    /// partition's: the follower refreshes its view and fetches again.
    LeaderEpochMismatch = 44,
    /// Cluster: the batch was stored by the leader but its in-sync
    /// replicas did not confirm it in time (or the leader lost its lease
    /// first). It may or may not survive a failover: retry (an idempotent
    /// producer's retry is never stored twice).
    NotReplicated = 45,
    /// Locks: a fenced batch carried a lower fencing token than one the
    /// partition already accepted for the same lock: its writer no longer
    /// holds the lock. Nothing was stored.
    Fenced = 50,
    /// Locks: the session is unknown or has expired (its locks are
    /// released). Open a new one.
    SessionExpired = 51,
    /// Locks: the session does not hold that lock (or wait for it).
    LockNotHeld = 52,
    /// Security: the credentials were wrong (or too many attempts came
    /// from this address lately). Nothing else is served on the connection
    /// until an authentication succeeds.
    AuthenticationFailed = 53,
    /// Security: the principal may not do this; the message names the
    /// operation and the resource. Also: not authenticated yet.
    NotAuthorized = 54,
    /// A bug on the server side.
    Internal = 99,
}

impl ErrorCode {
    /// Decodes a code; unknown numbers (from a newer server) become `None`.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => UnsupportedVersion,
            2 => MalformedFrame,
            3 => FrameTooLarge,
            4 => UnknownRequest,
            5 => HandshakeRequired,
            10 => TopicNotFound,
            11 => TopicExists,
            12 => InvalidTopicName,
            13 => PartitionNotFound,
            14 => InvalidConfig,
            15 => GroupNotFound,
            16 => GroupMismatch,
            17 => UnknownMember,
            18 => GroupHasMembers,
            20 => InvalidBatch,
            21 => BatchTooLarge,
            22 => OffsetOutOfRange,
            23 => CorruptData,
            24 => NoSpace,
            25 => StorageError,
            26 => OutOfOrderSequence,
            30 => ShuttingDown,
            31 => TooManyConnections,
            32 => LimitReached,
            40 => NotLeader,
            41 => PartitionUnavailable,
            42 => ClusterUnavailable,
            43 => NotEnoughReplicas,
            44 => LeaderEpochMismatch,
            45 => NotReplicated,
            50 => Fenced,
            51 => SessionExpired,
            52 => LockNotHeld,
            53 => AuthenticationFailed,
            54 => NotAuthorized,
            99 => Internal,
            _ => return None,
        })
    }

    /// True if retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NoSpace
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManyConnections
                | ErrorCode::NotLeader
                | ErrorCode::PartitionUnavailable
                | ErrorCode::ClusterUnavailable
                | ErrorCode::OutOfOrderSequence
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::LeaderEpochMismatch
                | ErrorCode::NotReplicated
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for n in 0..200u16 {
            if let Some(code) = ErrorCode::from_u16(n) {
                assert_eq!(code as u16, n);
            }
        }
        assert_eq!(ErrorCode::from_u16(24), Some(ErrorCode::NoSpace));
        assert_eq!(ErrorCode::from_u16(6), None);
    }
}
