//! Typed request and response bodies: one struct per request kind (and one
//! per reply that has fields), each with its byte encoding beside it.
//!
//! The body of each kind is specified in `PROTOCOL.md`; the files here are
//! its implementation, grouped as the server's handlers are: handshake,
//! produce, fetch, topics, groups, queue. [`Request`] and [`Response`] are
//! the sum types a server decodes into and answers with; a client names the
//! request struct it sends and gets back its [`Call::Reply`], so a reply of
//! the wrong kind cannot be mistaken for the right one.

mod fetch;
mod groups;
mod handshake;
mod locks;
mod metadata;
mod produce;
mod queue;
mod replica;
mod security;
mod topics;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_string, Reader};
pub use crate::codec::{DecodeError, Wire};
use crate::error_code::ErrorCode;
use crate::frame::{Frame, FLAG_ERROR, FLAG_RESPONSE};

pub use fetch::{
    FetchRequest, FetchResponse, OffsetForTimestampRequest, OffsetForTimestampResponse,
};
pub use groups::{
    CommitOffsetRequest, CommittedOffsetsRequest, CommittedOffsetsResponse, DeleteGroupRequest,
    DescribeGroupRequest, GroupAssignmentRequest, GroupAssignmentResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, ListGroupsResponse,
    PendingMessagesRequest, PendingMessagesResponse, ResetGroupRequest, WireGroup, WireGroupMode,
    WireGroupPartition, WirePending, WireResetTarget,
};
pub use handshake::{HandshakeRequest, HandshakeResponse};
pub use locks::{
    lock_safety_margin, AcquireLockRequest, AcquireLockResponse, CloseSessionRequest,
    KeepAliveRequest, ListLocksRequest, ListLocksResponse, LockOptions, OpenSessionRequest,
    OpenSessionResponse, ReleaseLockRequest, WireLock, DEFAULT_LOCK_TTL,
};
pub use metadata::{
    AddVoterRequest, CoordinatorResponse, FindCoordinatorRequest, MetadataRequest,
    MetadataResponse, RemoveBrokerRequest, ServerStatusRequest, ServerStatusResponse, WireBroker,
    WirePartitionLeader, WireReplica, WireTopicLeaders,
};
pub use produce::{
    Acks, InitProducerRequest, InitProducerResponse, ProduceRequest, ProduceResponse,
};
pub use queue::{
    AckRequest, DeliverRequest, DeliverResponse, NackRequest, SettleResponse, TouchRequest,
    WireAcquired, WireDeliveredPartition, WireSettle,
};
pub use replica::{
    ReplicaFetchRequest, ReplicaFetchResponse, WireAckRecord, WireAckState, WireEpoch,
    WireGroupChanges, WireGroupCursor,
};
pub use security::{
    AddAclRequest, AuthenticateRequest, AuthenticateResponse, DeleteUserRequest, ListAclsRequest,
    ListAclsResponse, ListQuotasRequest, ListQuotasResponse, ListUsersRequest, ListUsersResponse,
    RemoveAclRequest, RemoveQuotaRequest, SetQuotaRequest, UpsertUserRequest, WireAcl, WireQuota,
};
pub use topics::{
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, ListTopicsRequest,
    ListTopicsResponse, TopicSettings, WirePartition, WireSync, WireTopic,
};

/// Protocol versions this code speaks (the request set, negotiated by the
/// handshake; distinct from the frame format version).
pub const PROTOCOL_VERSION_MIN: u16 = 3;
/// See [`PROTOCOL_VERSION_MIN`].
pub const PROTOCOL_VERSION_MAX: u16 = 3;

/// Request kinds.
pub mod kind {
    /// Handshake: must be the first request on a connection.
    pub const HANDSHAKE: u16 = 1;
    /// Append one batch to a partition.
    pub const PRODUCE: u16 = 2;
    /// Read batches from a partition, optionally waiting for data.
    pub const FETCH: u16 = 3;
    /// Create a topic.
    pub const CREATE_TOPIC: u16 = 4;
    /// Delete a topic.
    pub const DELETE_TOPIC: u16 = 5;
    /// List all topics.
    pub const LIST_TOPICS: u16 = 6;
    /// Describe one topic.
    pub const DESCRIBE_TOPIC: u16 = 7;
    /// Join (or create) a consumer group.
    pub const JOIN_GROUP: u16 = 10;
    /// Leave a consumer group.
    pub const LEAVE_GROUP: u16 = 11;
    /// Stream mode: this member's partitions.
    pub const GROUP_ASSIGNMENT: u16 = 12;
    /// Queue mode: hand out messages.
    pub const DELIVER: u16 = 13;
    /// Queue mode: settle deliveries.
    pub const ACK: u16 = 14;
    /// Queue mode: return deliveries for redelivery.
    pub const NACK: u16 = 15;
    /// Queue mode: extend ack deadlines.
    pub const TOUCH: u16 = 16;
    /// Stream mode: commit an offset.
    pub const COMMIT_OFFSET: u16 = 17;
    /// Stream mode: read committed offsets.
    pub const COMMITTED_OFFSETS: u16 = 18;
    /// List consumer groups.
    pub const LIST_GROUPS: u16 = 19;
    /// Describe one consumer group.
    pub const DESCRIBE_GROUP: u16 = 20;
    /// Reset a consumer group's position.
    pub const RESET_GROUP: u16 = 21;
    /// First offset at or after a timestamp.
    pub const OFFSET_FOR_TIMESTAMP: u16 = 22;
    /// The cluster's brokers and partition leaders.
    pub const METADATA: u16 = 23;
    /// Remove a broker from the cluster.
    pub const REMOVE_BROKER: u16 = 24;
    /// The broker that coordinates a consumer group.
    pub const FIND_COORDINATOR: u16 = 25;
    /// Make a member a voter of the control plane.
    pub const ADD_VOTER: u16 = 26;
    /// A producer id for an idempotent producer.
    pub const INIT_PRODUCER: u16 = 27;
    /// `ServerStatusRequest`.
    pub const SERVER_STATUS: u16 = 28;
    /// `DeleteGroupRequest`.
    pub const DELETE_GROUP: u16 = 29;
    /// `PendingMessagesRequest`.
    pub const PENDING_MESSAGES: u16 = 30;
    /// `ReplicaFetchRequest`: a follower copies a partition.
    pub const REPLICA_FETCH: u16 = 31;
    /// `OpenSessionRequest`: a lock session.
    pub const OPEN_SESSION: u16 = 32;
    /// `KeepAliveRequest`: renew a lock session.
    pub const KEEP_ALIVE: u16 = 33;
    /// `CloseSessionRequest`: end a lock session.
    pub const CLOSE_SESSION: u16 = 34;
    /// `AcquireLockRequest`: take a lock, waiting in its queue.
    pub const ACQUIRE_LOCK: u16 = 35;
    /// `ReleaseLockRequest`: release a lock or leave its queue.
    pub const RELEASE_LOCK: u16 = 36;
    /// `ListLocksRequest`: locks, holders, tokens and waiters.
    pub const LIST_LOCKS: u16 = 37;
    /// `AuthenticateRequest`: credentials, right after the handshake.
    pub const AUTHENTICATE: u16 = 38;
    /// `UpsertUserRequest`: create a user or change a password.
    pub const UPSERT_USER: u16 = 39;
    /// `DeleteUserRequest`.
    pub const DELETE_USER: u16 = 40;
    /// `ListUsersRequest`.
    pub const LIST_USERS: u16 = 41;
    /// `AddAclRequest`: allow a principal operations on resources.
    pub const ADD_ACL: u16 = 42;
    /// `RemoveAclRequest`.
    pub const REMOVE_ACL: u16 = 43;
    /// `ListAclsRequest`.
    pub const LIST_ACLS: u16 = 44;
    /// `SetQuotaRequest`: a principal's byte rates and connection limit.
    pub const SET_QUOTA: u16 = 45;
    /// `RemoveQuotaRequest`.
    pub const REMOVE_QUOTA: u16 = 46;
    /// `ListQuotasRequest`.
    pub const LIST_QUOTAS: u16 = 47;
}

/// A request body: its kind number and the type of its successful reply.
pub trait Call: Wire + Into<Request> {
    /// The kind number in the frame header.
    const KIND: u16;
    /// The body of a successful reply.
    type Reply: Wire + Into<Response>;

    /// Encodes the request as a frame.
    fn to_frame(&self, correlation_id: u32) -> Frame {
        body_frame(self, Self::KIND, 0, correlation_id)
    }

    /// How long the server may hold this request before answering: a long
    /// poll's wait (zero for everything else). A client's timeout for the
    /// request is this plus its own allowance.
    fn server_wait(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

fn body_frame<T: Wire>(body: &T, kind: u16, flags: u8, correlation_id: u32) -> Frame {
    let mut b = BytesMut::new();
    body.put(&mut b);
    Frame {
        kind,
        flags,
        correlation_id,
        body: b.freeze(),
        tail: body.tail(),
    }
}

/// Declares every request kind once: its variant in [`Request`], its body
/// struct, its kind number, its reply type, and for a long poll the field
/// that says how long the server may hold it. Everything that dispatches
/// on the kind is generated from this one table, so adding a kind is one
/// line here plus its struct.
macro_rules! requests {
    ($($(#[$doc:meta])* $variant:ident($request:ty) = $kind:ident => $reply:ty $(, waits $wait:ident)?;)*) => {
        /// A request, as a server decodes it.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Request {
            $($(#[$doc])* $variant($request),)*
        }

        impl Request {
            /// The request's kind number.
            pub fn kind(&self) -> u16 {
                match self {
                    $(Request::$variant(_) => kind::$kind,)*
                }
            }

            /// Encodes the request as a frame.
            pub fn to_frame(&self, correlation_id: u32) -> Frame {
                match self {
                    $(Request::$variant(r) => r.to_frame(correlation_id),)*
                }
            }

            /// Decodes a request body of the given kind.
            pub fn decode(kind_: u16, body: Bytes) -> Result<Request, DecodeError> {
                match kind_ {
                    $(kind::$kind => <$request>::decode(body).map(Request::$variant),)*
                    other => Err(DecodeError::UnknownKind(other)),
                }
            }
        }

        impl Response {
            /// Decodes a (non-error) response body to a request of kind `kind_`.
            pub fn decode(kind_: u16, body: Bytes) -> Result<Response, DecodeError> {
                match kind_ {
                    $(kind::$kind => <$reply>::decode(body).map(Response::from),)*
                    other => Err(DecodeError::UnknownKind(other)),
                }
            }
        }

        $(
            impl From<$request> for Request {
                fn from(request: $request) -> Request {
                    Request::$variant(request)
                }
            }

            impl Call for $request {
                const KIND: u16 = kind::$kind;
                type Reply = $reply;

                $(
                    fn server_wait(&self) -> std::time::Duration {
                        std::time::Duration::from_millis(u64::from(self.$wait))
                    }
                )?
            }
        )*
    };
}

requests! {
    /// First request on every connection.
    Handshake(HandshakeRequest) = HANDSHAKE => HandshakeResponse;
    /// Append a batch.
    Produce(ProduceRequest) = PRODUCE => ProduceResponse;
    /// Read batches.
    Fetch(FetchRequest) = FETCH => FetchResponse, waits max_wait_ms;
    /// Create a topic.
    CreateTopic(CreateTopicRequest) = CREATE_TOPIC => ();
    /// Delete a topic.
    DeleteTopic(DeleteTopicRequest) = DELETE_TOPIC => ();
    /// List topics.
    ListTopics(ListTopicsRequest) = LIST_TOPICS => ListTopicsResponse;
    /// Describe a topic.
    DescribeTopic(DescribeTopicRequest) = DESCRIBE_TOPIC => WireTopic;
    /// Join a group.
    JoinGroup(JoinGroupRequest) = JOIN_GROUP => JoinGroupResponse;
    /// Leave a group.
    LeaveGroup(LeaveGroupRequest) = LEAVE_GROUP => ();
    /// Stream mode: the member's partitions.
    GroupAssignment(GroupAssignmentRequest) = GROUP_ASSIGNMENT => GroupAssignmentResponse;
    /// Queue mode: hand out messages.
    Deliver(DeliverRequest) = DELIVER => DeliverResponse, waits max_wait_ms;
    /// Queue mode: settle.
    Ack(AckRequest) = ACK => SettleResponse;
    /// Queue mode: redeliver after a delay.
    Nack(NackRequest) = NACK => SettleResponse;
    /// Queue mode: extend deadlines.
    Touch(TouchRequest) = TOUCH => SettleResponse;
    /// Stream mode: commit an offset.
    CommitOffset(CommitOffsetRequest) = COMMIT_OFFSET => ();
    /// Stream mode: committed offsets.
    CommittedOffsets(CommittedOffsetsRequest) = COMMITTED_OFFSETS => CommittedOffsetsResponse;
    /// List groups.
    ListGroups(ListGroupsRequest) = LIST_GROUPS => ListGroupsResponse;
    /// Describe a group.
    DescribeGroup(DescribeGroupRequest) = DESCRIBE_GROUP => WireGroup;
    /// Reset a group.
    ResetGroup(ResetGroupRequest) = RESET_GROUP => ();
    /// First offset at or after a timestamp.
    OffsetForTimestamp(OffsetForTimestampRequest) = OFFSET_FOR_TIMESTAMP => OffsetForTimestampResponse;
    /// The cluster's brokers and partition leaders.
    Metadata(MetadataRequest) = METADATA => MetadataResponse;
    /// Remove a broker from the cluster.
    RemoveBroker(RemoveBrokerRequest) = REMOVE_BROKER => ();
    /// The broker that coordinates a group.
    FindCoordinator(FindCoordinatorRequest) = FIND_COORDINATOR => CoordinatorResponse;
    /// Make a member a voter.
    AddVoter(AddVoterRequest) = ADD_VOTER => ();
    /// A producer id.
    InitProducer(InitProducerRequest) = INIT_PRODUCER => InitProducerResponse;
    /// What a server says about itself.
    ServerStatus(ServerStatusRequest) = SERVER_STATUS => ServerStatusResponse;
    /// Delete a group.
    DeleteGroup(DeleteGroupRequest) = DELETE_GROUP => ();
    /// A queue group's unsettled messages.
    PendingMessages(PendingMessagesRequest) = PENDING_MESSAGES => PendingMessagesResponse;
    /// A follower copies a partition from its leader.
    ReplicaFetch(ReplicaFetchRequest) = REPLICA_FETCH => ReplicaFetchResponse, waits max_wait_ms;
    /// Open a lock session.
    OpenSession(OpenSessionRequest) = OPEN_SESSION => OpenSessionResponse;
    /// Renew a lock session.
    KeepAlive(KeepAliveRequest) = KEEP_ALIVE => ();
    /// End a lock session.
    CloseSession(CloseSessionRequest) = CLOSE_SESSION => ();
    /// Take a lock.
    AcquireLock(AcquireLockRequest) = ACQUIRE_LOCK => AcquireLockResponse, waits wait_ms;
    /// Release a lock.
    ReleaseLock(ReleaseLockRequest) = RELEASE_LOCK => ();
    /// List locks.
    ListLocks(ListLocksRequest) = LIST_LOCKS => ListLocksResponse;
    /// Authenticate the connection.
    Authenticate(AuthenticateRequest) = AUTHENTICATE => AuthenticateResponse;
    /// Create a user or set a password.
    UpsertUser(UpsertUserRequest) = UPSERT_USER => ();
    /// Remove a user.
    DeleteUser(DeleteUserRequest) = DELETE_USER => ();
    /// List users.
    ListUsers(ListUsersRequest) = LIST_USERS => ListUsersResponse;
    /// Add an access rule.
    AddAcl(AddAclRequest) = ADD_ACL => ();
    /// Remove an access rule.
    RemoveAcl(RemoveAclRequest) = REMOVE_ACL => ();
    /// List access rules.
    ListAcls(ListAclsRequest) = LIST_ACLS => ListAclsResponse;
    /// Set a principal's quota.
    SetQuota(SetQuotaRequest) = SET_QUOTA => ();
    /// Remove a principal's quota.
    RemoveQuota(RemoveQuotaRequest) = REMOVE_QUOTA => ();
    /// List quotas.
    ListQuotas(ListQuotasRequest) = LIST_QUOTAS => ListQuotasResponse;
}

/// Declares the successful replies: one variant per reply type, with the
/// conversions from each.
macro_rules! responses {
    ($($(#[$doc:meta])* $variant:ident($reply:ty),)*) => {
        /// A successful response, as a server answers. The kind it answers
        /// travels beside it (an empty body answers several kinds; a settle
        /// reply answers ack, nack and touch).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Response {
            /// An empty body: topic created or deleted, group left, offset
            /// committed, group reset.
            Done,
            $($(#[$doc])* $variant($reply),)*
        }

        impl Response {
            /// Encodes the response to a request of kind `kind_` as a frame.
            pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
                match self {
                    Response::Done => body_frame(&(), kind_, FLAG_RESPONSE, correlation_id),
                    $(Response::$variant(r) => body_frame(r, kind_, FLAG_RESPONSE, correlation_id),)*
                }
            }
        }

        impl From<()> for Response {
            fn from((): ()) -> Response {
                Response::Done
            }
        }

        $(
            impl From<$reply> for Response {
                fn from(reply: $reply) -> Response {
                    Response::$variant(reply)
                }
            }
        )*
    };
}

responses! {
    /// Handshake accepted.
    Handshake(HandshakeResponse),
    /// Batch stored.
    Produce(ProduceResponse),
    /// Batches read.
    Fetch(FetchResponse),
    /// All topics.
    ListTopics(ListTopicsResponse),
    /// One topic.
    DescribeTopic(WireTopic),
    /// Joined.
    JoinGroup(JoinGroupResponse),
    /// Stream mode assignment.
    GroupAssignment(GroupAssignmentResponse),
    /// Messages handed out.
    Deliver(DeliverResponse),
    /// Ack, nack or touch results.
    Settle(SettleResponse),
    /// Committed offsets.
    CommittedOffsets(CommittedOffsetsResponse),
    /// All groups.
    ListGroups(ListGroupsResponse),
    /// One group.
    DescribeGroup(WireGroup),
    /// The offset found.
    OffsetForTimestamp(OffsetForTimestampResponse),
    /// Brokers and partition leaders.
    Metadata(MetadataResponse),
    /// A group's coordinator.
    FindCoordinator(CoordinatorResponse),
    /// A producer id.
    InitProducer(InitProducerResponse),
    /// A server's status.
    ServerStatus(ServerStatusResponse),
    /// Unsettled messages.
    PendingMessages(PendingMessagesResponse),
    /// Replica fetch.
    ReplicaFetch(ReplicaFetchResponse),
    /// A lock session opened.
    OpenSession(OpenSessionResponse),
    /// An acquire's outcome.
    AcquireLock(AcquireLockResponse),
    /// Locks.
    ListLocks(ListLocksResponse),
    /// Authenticated.
    Authenticate(AuthenticateResponse),
    /// Users.
    ListUsers(ListUsersResponse),
    /// Access rules.
    ListAcls(ListAclsResponse),
    /// Quotas.
    ListQuotas(ListQuotasResponse),
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The code (a raw number if this code base does not know it).
    pub code: u16,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorResponse {
    /// The known code, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }

    /// Encodes as an error frame answering a request of kind `kind_`.
    pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
        body_frame(self, kind_, FLAG_RESPONSE | FLAG_ERROR, correlation_id)
    }
}

impl Wire for ErrorResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        b.put_u16_le(self.code);
        put_string(b, &self.message);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ErrorResponse {
            code: r.u16("code")?,
            message: r.string("message")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Round trips and truncation of every kind: `protocol/tests/round_trip.rs`.

    /// The hex dump in PROTOCOL.md, byte for byte.
    #[test]
    fn handshake_matches_the_documented_example() {
        use tokio_util::codec::Encoder;
        let request = HandshakeRequest {
            min_version: 3,
            max_version: 3,
            features: 0,
            client_id: "cli".into(),
        };
        let mut wire = BytesMut::new();
        crate::FrameCodec::default()
            .encode(request.to_frame(1), &mut wire)
            .unwrap();
        let expected = "1d 00 00 00 53 50 01 00 01 00 00 00 01 00 00 00 \
                        03 00 03 00 00 00 00 00 00 00 00 00 03 00 63 6c 69";
        let hex: Vec<String> = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!(
            Request::decode(999, Bytes::new()),
            Err(DecodeError::UnknownKind(999))
        );
        assert_eq!(
            Response::decode(999, Bytes::new()),
            Err(DecodeError::UnknownKind(999))
        );
    }

    /// A code this side does not know is a decode error, never mapped to a
    /// neighbouring value (an unknown settle code used to read as NotInFlight).
    #[test]
    fn unknown_settle_codes_modes_and_reset_targets_are_refused() {
        let mut settle = BytesMut::new();
        settle.put_u32_le(2);
        settle.put_slice(&[0, 7]);
        assert_eq!(
            Response::decode(kind::ACK, settle.freeze()),
            Err(DecodeError::BadValue("settle result"))
        );

        let join = JoinGroupRequest {
            group: "g".into(),
            topic: "t".into(),
            mode: WireGroupMode::Queue,
            ack_wait_ms: 1,
            max_deliveries: 1,
            max_in_flight: 1,
        }
        .to_frame(1);
        let mut body = join.body.to_vec();
        let mode_at = 2 + 1 + 2 + 1; // after the u16-prefixed strings "g" and "t"
        assert_eq!(body[mode_at], 2);
        body[mode_at] = 3;
        assert_eq!(
            Request::decode(kind::JOIN_GROUP, Bytes::from(body)),
            Err(DecodeError::BadValue("mode"))
        );

        let reset = ResetGroupRequest {
            group: "g".into(),
            to: WireResetTarget::Earliest,
            partition: None,
        }
        .to_frame(1);
        let mut body = reset.body.to_vec();
        body[3] = 4; // the tag after the u16-prefixed "g"
        assert_eq!(
            Request::decode(kind::RESET_GROUP, Bytes::from(body)),
            Err(DecodeError::BadValue("to"))
        );
    }

    /// Only long polls ask the server to hold them; a client's timeout for
    /// them grows by their wait.
    #[test]
    fn only_long_polls_wait() {
        let fetch = FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1,
            max_wait_ms: 2500,
        };
        assert_eq!(fetch.server_wait(), std::time::Duration::from_millis(2500));
        let deliver = DeliverRequest {
            group: "g".into(),
            member: 1,
            max_messages: 1,
            max_wait_ms: 700,
        };
        assert_eq!(deliver.server_wait(), std::time::Duration::from_millis(700));
        assert_eq!(ListTopicsRequest.server_wait(), std::time::Duration::ZERO);
    }

    /// The kind a request struct declares is the kind its enum variant
    /// reports, and a reply decodes to the variant its type converts to.
    #[test]
    fn call_kinds_agree_with_the_enum() {
        let request = DeleteTopicRequest { name: "t".into() };
        assert_eq!(
            Request::from(request.clone()).kind(),
            <DeleteTopicRequest as Call>::KIND
        );
        let frame = request.to_frame(7);
        assert_eq!(frame.kind, kind::DELETE_TOPIC);
        assert_eq!(
            Response::decode(kind::DELETE_TOPIC, Bytes::new()),
            Ok(Response::Done)
        );
    }
}
