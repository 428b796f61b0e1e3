//! Typed request and response bodies, and their byte encoding.
//!
//! Primitives are little-endian; `string` is a `u16` length and UTF-8
//! bytes, `bytes` a `u32` length and raw bytes, `option<T>` a `u8` (0 or 1)
//! followed by `T` when 1. The body of each kind is specified in
//! `PROTOCOL.md`; this file is its implementation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::error_code::ErrorCode;
use crate::frame::{Frame, FLAG_ERROR, FLAG_RESPONSE};

/// Protocol versions this code speaks (the request set, negotiated by the
/// handshake; distinct from the frame format version).
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// See [`PROTOCOL_VERSION_MIN`].
pub const PROTOCOL_VERSION_MAX: u16 = 1;

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
}

/// A body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body ends before a field does.
    #[error("body truncated while reading {0}")]
    Truncated(&'static str),
    /// A string is not UTF-8.
    #[error("field {0} is not UTF-8")]
    BadUtf8(&'static str),
    /// A field holds a value outside its range.
    #[error("field {0} is out of range")]
    BadValue(&'static str),
    /// Bytes are left after the last field.
    #[error("{0} bytes after the end of the body")]
    TrailingBytes(usize),
    /// A request kind this code does not know.
    #[error("unknown request kind {0}")]
    UnknownKind(u16),
}

/// Sync policy as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSync {
    /// Flush before acknowledging.
    Always,
    /// Flush every `ms` milliseconds.
    Interval(u64),
    /// Leave it to the OS.
    Never,
}

/// How a consumer group consumes, as carried on the wire (u8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WireGroupMode {
    /// Offsets committed by the consumer (Kafka style).
    Stream = 1,
    /// The broker hands out messages and tracks acks.
    Queue = 2,
}

impl WireGroupMode {
    fn from_u8(v: u8) -> Result<WireGroupMode, DecodeError> {
        match v {
            1 => Ok(WireGroupMode::Stream),
            2 => Ok(WireGroupMode::Queue),
            _ => Err(DecodeError::BadValue("mode")),
        }
    }
}

/// Where a group reset moves every partition's position to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireResetTarget {
    /// The first stored offset (u8 1 on the wire).
    Earliest,
    /// The end of the log (u8 2).
    Latest,
    /// This offset, clamped to each partition's range (u8 3).
    Offset(u64),
}

/// The outcome of settling (ack, nack, touch) one delivery, as carried on
/// the wire (u8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WireSettle {
    /// Done.
    Ok = 0,
    /// Already settled (acked or dead-lettered), possibly by another member.
    AlreadySettled = 1,
    /// Not in flight to this member (never delivered, or redelivered to
    /// someone else after its deadline).
    NotInFlight = 2,
}

impl WireSettle {
    fn from_u8(v: u8) -> Result<WireSettle, DecodeError> {
        match v {
            0 => Ok(WireSettle::Ok),
            1 => Ok(WireSettle::AlreadySettled),
            2 => Ok(WireSettle::NotInFlight),
            _ => Err(DecodeError::BadValue("settle result")),
        }
    }
}

/// Optional topic settings; `None` means "the server's default".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Sync policy.
    pub sync: Option<WireSync>,
    /// Segment size.
    pub segment_size_bytes: Option<u64>,
    /// Retention by age; `Some(0)` keeps forever.
    pub retention_ms: Option<u64>,
    /// Retention by size; `Some(0)` means no limit.
    pub retention_bytes: Option<u64>,
}

/// Offsets of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WirePartition {
    /// Partition number.
    pub partition: u32,
    /// First offset stored.
    pub start: u64,
    /// Next offset to be written.
    pub end: u64,
}

/// A topic's configuration and offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireTopic {
    /// Name.
    pub name: String,
    /// Sync policy.
    pub sync: WireSync,
    /// Segment size.
    pub segment_size_bytes: u64,
    /// Retention by age (0: forever).
    pub retention_ms: u64,
    /// Retention by size (0: no limit).
    pub retention_bytes: u64,
    /// One entry per partition.
    pub partitions: Vec<WirePartition>,
}

/// A message handed out by a queue-mode group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireDelivery {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Deliveries so far, this one included.
    pub deliveries: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// One partition of a group description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireGroupPartition {
    /// Partition.
    pub partition: u32,
    /// Queue: all below is settled. Stream: committed offset.
    pub position: u64,
    /// End of the partition.
    pub end: u64,
    /// Delivered and unsettled.
    pub in_flight: u32,
    /// Waiting for redelivery.
    pub pending: u32,
    /// Dead-lettered, ever.
    pub dead_letters: u64,
}

/// A consumer group's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireGroup {
    /// Name.
    pub name: String,
    /// Topic it consumes.
    pub topic: String,
    /// How it consumes.
    pub mode: WireGroupMode,
    /// Ack deadline.
    pub ack_wait_ms: u64,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// Unsettled messages per member.
    pub max_in_flight: u32,
    /// Members now.
    pub members: u32,
    /// Redeliveries since the server started.
    pub redeliveries: u64,
    /// Per partition.
    pub partitions: Vec<WireGroupPartition>,
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// First request on every connection.
    Handshake {
        /// Lowest protocol version the client speaks.
        min_version: u16,
        /// Highest protocol version the client speaks.
        max_version: u16,
        /// Feature bits the client would like (none defined yet).
        features: u64,
        /// Free-form client name, for logs.
        client_id: String,
    },
    /// Append a batch.
    Produce {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// One record batch in the storage format.
        batch: Bytes,
    },
    /// Read batches.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// First offset wanted.
        offset: u64,
        /// Byte budget (at least one batch is returned).
        max_bytes: u32,
        /// How long to wait for data at the end of the log.
        max_wait_ms: u32,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partition count; 0 takes the server's default.
        partitions: u32,
        /// Settings; unset ones take the server's defaults.
        settings: TopicSettings,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// List topics.
    ListTopics,
    /// Describe a topic.
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// Join (creating if needed) a group bound to `topic` in `mode`.
    JoinGroup {
        /// Group.
        group: String,
        /// Topic.
        topic: String,
        /// 1 stream, 2 queue.
        mode: WireGroupMode,
        /// Ack deadline for a new group (0: default 30 s).
        ack_wait_ms: u64,
        /// Deliveries before dead-lettering for a new group (0: default 5).
        max_deliveries: u32,
        /// Unsettled messages per member for a new group (0: default 1000).
        max_in_flight: u32,
    },
    /// Leave a group.
    LeaveGroup {
        /// Group.
        group: String,
        /// Member.
        member: u64,
    },
    /// Stream mode: the member's partitions.
    GroupAssignment {
        /// Group.
        group: String,
        /// Member.
        member: u64,
    },
    /// Queue mode: up to `max_messages`, waiting up to `max_wait_ms`.
    Deliver {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// Most messages.
        max_messages: u32,
        /// Longest wait.
        max_wait_ms: u32,
    },
    /// Queue mode: settle.
    Ack {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// (partition, offset) pairs.
        items: Vec<(u32, u64)>,
    },
    /// Queue mode: redeliver after a delay.
    Nack {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// Delay before redelivery.
        delay_ms: u32,
        /// (partition, offset) pairs.
        items: Vec<(u32, u64)>,
    },
    /// Queue mode: extend deadlines.
    Touch {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// (partition, offset) pairs.
        items: Vec<(u32, u64)>,
    },
    /// Stream mode: commit `offset` (the next to consume).
    CommitOffset {
        /// Group.
        group: String,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
    },
    /// Stream mode: committed offsets.
    CommittedOffsets {
        /// Group.
        group: String,
    },
    /// List groups.
    ListGroups,
    /// Describe a group.
    DescribeGroup {
        /// Group.
        group: String,
    },
    /// First offset of a partition at or after a timestamp.
    OffsetForTimestamp {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Milliseconds since the Unix epoch.
        timestamp_ms: i64,
    },
    /// Reset a group (it must have no members).
    ResetGroup {
        /// Group.
        group: String,
        /// Where to (u8 tag, then u64 offset, 0 unless the tag is 3).
        to: WireResetTarget,
    },
}

/// A successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Handshake accepted.
    Handshake {
        /// The protocol version chosen.
        version: u16,
        /// Features both sides support.
        features: u64,
        /// Largest frame the server accepts.
        max_frame_bytes: u32,
        /// Server name and version.
        server_id: String,
    },
    /// Batch stored.
    Produce {
        /// Offset of its first record.
        base_offset: u64,
        /// Offset after its last record.
        next_offset: u64,
    },
    /// Batches read.
    Fetch {
        /// First offset in the log.
        log_start: u64,
        /// Offset after the last visible record.
        log_end: u64,
        /// Where the next fetch should start.
        next_offset: u64,
        /// Whole batches as stored (may be empty).
        batches: Bytes,
    },
    /// Topic created.
    CreateTopic,
    /// Topic deleted.
    DeleteTopic,
    /// All topics.
    ListTopics(Vec<WireTopic>),
    /// One topic.
    DescribeTopic(WireTopic),
    /// Joined.
    JoinGroup {
        /// The new member's id.
        member: u64,
        /// Assignment generation.
        generation: u32,
        /// Stream mode: assigned partitions.
        partitions: Vec<u32>,
    },
    /// Left.
    LeaveGroup,
    /// Stream mode assignment.
    GroupAssignment {
        /// Generation.
        generation: u32,
        /// Partitions.
        partitions: Vec<u32>,
    },
    /// Messages handed out (may be empty).
    Deliver(Vec<WireDelivery>),
    /// One result per item, in the request's order.
    Settle(Vec<WireSettle>),
    /// Committed.
    CommitOffset,
    /// Per partition, the committed offset if any.
    CommittedOffsets(Vec<(u32, Option<u64>)>),
    /// All groups.
    ListGroups(Vec<WireGroup>),
    /// One group.
    DescribeGroup(WireGroup),
    /// Reset done.
    ResetGroup,
    /// The offset found.
    OffsetForTimestamp(u64),
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
}

impl Request {
    /// The request's kind number.
    pub fn kind(&self) -> u16 {
        match self {
            Request::Handshake { .. } => kind::HANDSHAKE,
            Request::Produce { .. } => kind::PRODUCE,
            Request::Fetch { .. } => kind::FETCH,
            Request::CreateTopic { .. } => kind::CREATE_TOPIC,
            Request::DeleteTopic { .. } => kind::DELETE_TOPIC,
            Request::ListTopics => kind::LIST_TOPICS,
            Request::DescribeTopic { .. } => kind::DESCRIBE_TOPIC,
            Request::JoinGroup { .. } => kind::JOIN_GROUP,
            Request::LeaveGroup { .. } => kind::LEAVE_GROUP,
            Request::GroupAssignment { .. } => kind::GROUP_ASSIGNMENT,
            Request::Deliver { .. } => kind::DELIVER,
            Request::Ack { .. } => kind::ACK,
            Request::Nack { .. } => kind::NACK,
            Request::Touch { .. } => kind::TOUCH,
            Request::CommitOffset { .. } => kind::COMMIT_OFFSET,
            Request::CommittedOffsets { .. } => kind::COMMITTED_OFFSETS,
            Request::ListGroups => kind::LIST_GROUPS,
            Request::DescribeGroup { .. } => kind::DESCRIBE_GROUP,
            Request::ResetGroup { .. } => kind::RESET_GROUP,
            Request::OffsetForTimestamp { .. } => kind::OFFSET_FOR_TIMESTAMP,
        }
    }

    /// Encodes the request as a frame.
    pub fn to_frame(&self, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        let mut tail = Bytes::new();
        match self {
            Request::Handshake {
                min_version,
                max_version,
                features,
                client_id,
            } => {
                b.put_u16_le(*min_version);
                b.put_u16_le(*max_version);
                b.put_u64_le(*features);
                put_string(&mut b, client_id);
            }
            Request::Produce {
                topic,
                partition,
                batch,
            } => {
                put_string(&mut b, topic);
                b.put_u32_le(*partition);
                // The batch is the body's last field: sent from its own
                // buffer, not copied.
                b.put_u32_le(batch.len() as u32);
                tail = batch.clone();
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                put_string(&mut b, topic);
                b.put_u32_le(*partition);
                b.put_u64_le(*offset);
                b.put_u32_le(*max_bytes);
                b.put_u32_le(*max_wait_ms);
            }
            Request::CreateTopic {
                name,
                partitions,
                settings,
            } => {
                put_string(&mut b, name);
                b.put_u32_le(*partitions);
                match settings.sync {
                    None => b.put_u8(0),
                    Some(sync) => {
                        b.put_u8(1);
                        put_sync(&mut b, sync);
                    }
                }
                put_option(&mut b, settings.segment_size_bytes);
                put_option(&mut b, settings.retention_ms);
                put_option(&mut b, settings.retention_bytes);
            }
            Request::DeleteTopic { name } | Request::DescribeTopic { name } => {
                put_string(&mut b, name)
            }
            Request::ListTopics | Request::ListGroups => {}
            Request::JoinGroup {
                group,
                topic,
                mode,
                ack_wait_ms,
                max_deliveries,
                max_in_flight,
            } => {
                put_string(&mut b, group);
                put_string(&mut b, topic);
                b.put_u8(*mode as u8);
                b.put_u64_le(*ack_wait_ms);
                b.put_u32_le(*max_deliveries);
                b.put_u32_le(*max_in_flight);
            }
            Request::LeaveGroup { group, member } | Request::GroupAssignment { group, member } => {
                put_string(&mut b, group);
                b.put_u64_le(*member);
            }
            Request::Deliver {
                group,
                member,
                max_messages,
                max_wait_ms,
            } => {
                put_string(&mut b, group);
                b.put_u64_le(*member);
                b.put_u32_le(*max_messages);
                b.put_u32_le(*max_wait_ms);
            }
            Request::Ack {
                group,
                member,
                items,
            }
            | Request::Touch {
                group,
                member,
                items,
            } => {
                put_string(&mut b, group);
                b.put_u64_le(*member);
                put_items(&mut b, items);
            }
            Request::Nack {
                group,
                member,
                delay_ms,
                items,
            } => {
                put_string(&mut b, group);
                b.put_u64_le(*member);
                b.put_u32_le(*delay_ms);
                put_items(&mut b, items);
            }
            Request::CommitOffset {
                group,
                partition,
                offset,
            } => {
                put_string(&mut b, group);
                b.put_u32_le(*partition);
                b.put_u64_le(*offset);
            }
            Request::CommittedOffsets { group } | Request::DescribeGroup { group } => {
                put_string(&mut b, group)
            }
            Request::ResetGroup { group, to } => {
                put_string(&mut b, group);
                let (tag, offset) = match *to {
                    WireResetTarget::Earliest => (1, 0),
                    WireResetTarget::Latest => (2, 0),
                    WireResetTarget::Offset(o) => (3, o),
                };
                b.put_u8(tag);
                b.put_u64_le(offset);
            }
            Request::OffsetForTimestamp {
                topic,
                partition,
                timestamp_ms,
            } => {
                put_string(&mut b, topic);
                b.put_u32_le(*partition);
                b.put_i64_le(*timestamp_ms);
            }
        }
        Frame {
            kind: self.kind(),
            flags: 0,
            correlation_id,
            body: b.freeze(),
            tail,
        }
    }

    /// Decodes a request body of the given kind.
    pub fn decode(kind_: u16, body: Bytes) -> Result<Request, DecodeError> {
        let mut r = Reader(body);
        let request = match kind_ {
            kind::HANDSHAKE => Request::Handshake {
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
                features: r.u64("features")?,
                client_id: r.string("client_id")?,
            },
            kind::PRODUCE => Request::Produce {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                batch: r.bytes("batch")?,
            },
            kind::FETCH => Request::Fetch {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                max_bytes: r.u32("max_bytes")?,
                max_wait_ms: r.u32("max_wait_ms")?,
            },
            kind::CREATE_TOPIC => {
                let name = r.string("name")?;
                let partitions = r.u32("partitions")?;
                let sync = match r.u8("sync present")? {
                    0 => None,
                    1 => Some(r.sync()?),
                    _ => return Err(DecodeError::BadValue("sync present")),
                };
                Request::CreateTopic {
                    name,
                    partitions,
                    settings: TopicSettings {
                        sync,
                        segment_size_bytes: r.option("segment_size_bytes")?,
                        retention_ms: r.option("retention_ms")?,
                        retention_bytes: r.option("retention_bytes")?,
                    },
                }
            }
            kind::DELETE_TOPIC => Request::DeleteTopic {
                name: r.string("name")?,
            },
            kind::LIST_TOPICS => Request::ListTopics,
            kind::DESCRIBE_TOPIC => Request::DescribeTopic {
                name: r.string("name")?,
            },
            kind::JOIN_GROUP => Request::JoinGroup {
                group: r.string("group")?,
                topic: r.string("topic")?,
                mode: WireGroupMode::from_u8(r.u8("mode")?)?,
                ack_wait_ms: r.u64("ack_wait_ms")?,
                max_deliveries: r.u32("max_deliveries")?,
                max_in_flight: r.u32("max_in_flight")?,
            },
            kind::LEAVE_GROUP => Request::LeaveGroup {
                group: r.string("group")?,
                member: r.u64("member")?,
            },
            kind::GROUP_ASSIGNMENT => Request::GroupAssignment {
                group: r.string("group")?,
                member: r.u64("member")?,
            },
            kind::DELIVER => Request::Deliver {
                group: r.string("group")?,
                member: r.u64("member")?,
                max_messages: r.u32("max_messages")?,
                max_wait_ms: r.u32("max_wait_ms")?,
            },
            kind::ACK => Request::Ack {
                group: r.string("group")?,
                member: r.u64("member")?,
                items: r.items()?,
            },
            kind::NACK => Request::Nack {
                group: r.string("group")?,
                member: r.u64("member")?,
                delay_ms: r.u32("delay_ms")?,
                items: r.items()?,
            },
            kind::TOUCH => Request::Touch {
                group: r.string("group")?,
                member: r.u64("member")?,
                items: r.items()?,
            },
            kind::COMMIT_OFFSET => Request::CommitOffset {
                group: r.string("group")?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
            },
            kind::COMMITTED_OFFSETS => Request::CommittedOffsets {
                group: r.string("group")?,
            },
            kind::LIST_GROUPS => Request::ListGroups,
            kind::DESCRIBE_GROUP => Request::DescribeGroup {
                group: r.string("group")?,
            },
            kind::RESET_GROUP => Request::ResetGroup {
                group: r.string("group")?,
                to: match (r.u8("to")?, r.u64("offset")?) {
                    (1, _) => WireResetTarget::Earliest,
                    (2, _) => WireResetTarget::Latest,
                    (3, o) => WireResetTarget::Offset(o),
                    _ => return Err(DecodeError::BadValue("to")),
                },
            },
            kind::OFFSET_FOR_TIMESTAMP => Request::OffsetForTimestamp {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                timestamp_ms: r.u64("timestamp_ms")? as i64,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Response {
    /// Encodes the response to the request `kind` as a frame.
    pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        let mut tail = Bytes::new();
        match self {
            Response::Handshake {
                version,
                features,
                max_frame_bytes,
                server_id,
            } => {
                b.put_u16_le(*version);
                b.put_u64_le(*features);
                b.put_u32_le(*max_frame_bytes);
                put_string(&mut b, server_id);
            }
            Response::Produce {
                base_offset,
                next_offset,
            } => {
                b.put_u64_le(*base_offset);
                b.put_u64_le(*next_offset);
            }
            Response::Fetch {
                log_start,
                log_end,
                next_offset,
                batches,
            } => {
                b.put_u64_le(*log_start);
                b.put_u64_le(*log_end);
                b.put_u64_le(*next_offset);
                // Usually a slice of a segment's map: written to the socket
                // from there, not copied.
                b.put_u32_le(batches.len() as u32);
                tail = batches.clone();
            }
            Response::CreateTopic | Response::DeleteTopic => {}
            Response::ListTopics(topics) => {
                b.put_u32_le(topics.len() as u32);
                for t in topics {
                    put_topic(&mut b, t);
                }
            }
            Response::DescribeTopic(topic) => put_topic(&mut b, topic),
            Response::JoinGroup {
                member,
                generation,
                partitions,
            } => {
                b.put_u64_le(*member);
                b.put_u32_le(*generation);
                put_u32s(&mut b, partitions);
            }
            Response::GroupAssignment {
                generation,
                partitions,
            } => {
                b.put_u32_le(*generation);
                put_u32s(&mut b, partitions);
            }
            Response::LeaveGroup | Response::CommitOffset | Response::ResetGroup => {}
            Response::Deliver(messages) => {
                b.put_u32_le(messages.len() as u32);
                for m in messages {
                    b.put_u32_le(m.partition);
                    b.put_u64_le(m.offset);
                    b.put_u32_le(m.deliveries);
                    b.put_i64_le(m.timestamp_ms);
                    match &m.key {
                        None => b.put_u8(0),
                        Some(k) => {
                            b.put_u8(1);
                            put_bytes(&mut b, k);
                        }
                    }
                    put_bytes(&mut b, &m.value);
                    b.put_u32_le(m.headers.len() as u32);
                    for (n, v) in &m.headers {
                        put_bytes(&mut b, n);
                        put_bytes(&mut b, v);
                    }
                }
            }
            Response::Settle(results) => {
                b.put_u32_le(results.len() as u32);
                b.extend(results.iter().map(|r| *r as u8));
            }
            Response::CommittedOffsets(offsets) => {
                b.put_u32_le(offsets.len() as u32);
                for (p, o) in offsets {
                    b.put_u32_le(*p);
                    put_option(&mut b, *o);
                }
            }
            Response::ListGroups(groups) => {
                b.put_u32_le(groups.len() as u32);
                for g in groups {
                    put_group(&mut b, g);
                }
            }
            Response::DescribeGroup(g) => put_group(&mut b, g),
            Response::OffsetForTimestamp(offset) => b.put_u64_le(*offset),
        }
        Frame {
            kind: kind_,
            flags: FLAG_RESPONSE,
            correlation_id,
            body: b.freeze(),
            tail,
        }
    }

    /// Decodes a (non-error) response body to a request of kind `kind_`.
    pub fn decode(kind_: u16, body: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader(body);
        let response = match kind_ {
            kind::HANDSHAKE => Response::Handshake {
                version: r.u16("version")?,
                features: r.u64("features")?,
                max_frame_bytes: r.u32("max_frame_bytes")?,
                server_id: r.string("server_id")?,
            },
            kind::PRODUCE => Response::Produce {
                base_offset: r.u64("base_offset")?,
                next_offset: r.u64("next_offset")?,
            },
            kind::FETCH => Response::Fetch {
                log_start: r.u64("log_start")?,
                log_end: r.u64("log_end")?,
                next_offset: r.u64("next_offset")?,
                batches: r.bytes("batches")?,
            },
            kind::CREATE_TOPIC => Response::CreateTopic,
            kind::DELETE_TOPIC => Response::DeleteTopic,
            kind::LIST_TOPICS => {
                let n = r.u32("topic count")?;
                // Each topic takes well over 16 bytes: bound the
                // pre-allocation by what the body can hold.
                let mut topics = Vec::with_capacity((n as usize).min(r.0.len() / 16));
                for _ in 0..n {
                    topics.push(r.topic()?);
                }
                Response::ListTopics(topics)
            }
            kind::DESCRIBE_TOPIC => Response::DescribeTopic(r.topic()?),
            kind::JOIN_GROUP => Response::JoinGroup {
                member: r.u64("member")?,
                generation: r.u32("generation")?,
                partitions: r.u32s("partitions")?,
            },
            kind::LEAVE_GROUP => Response::LeaveGroup,
            kind::GROUP_ASSIGNMENT => Response::GroupAssignment {
                generation: r.u32("generation")?,
                partitions: r.u32s("partitions")?,
            },
            kind::DELIVER => {
                let n = r.u32("message count")?;
                let mut messages = Vec::with_capacity((n as usize).min(r.0.len() / 33));
                for _ in 0..n {
                    let partition = r.u32("partition")?;
                    let offset = r.u64("offset")?;
                    let deliveries = r.u32("deliveries")?;
                    let timestamp_ms = r.u64("timestamp")? as i64;
                    let key = match r.u8("key present")? {
                        0 => None,
                        1 => Some(r.bytes("key")?),
                        _ => return Err(DecodeError::BadValue("key present")),
                    };
                    let value = r.bytes("value")?;
                    let h = r.u32("header count")?;
                    let mut headers = Vec::with_capacity((h as usize).min(r.0.len() / 8));
                    for _ in 0..h {
                        headers.push((r.bytes("header name")?, r.bytes("header value")?));
                    }
                    messages.push(WireDelivery {
                        partition,
                        offset,
                        deliveries,
                        timestamp_ms,
                        key,
                        value,
                        headers,
                    });
                }
                Response::Deliver(messages)
            }
            kind::ACK | kind::NACK | kind::TOUCH => Response::Settle(
                r.bytes("results")?
                    .iter()
                    .map(|&v| WireSettle::from_u8(v))
                    .collect::<Result<_, _>>()?,
            ),
            kind::COMMIT_OFFSET => Response::CommitOffset,
            kind::COMMITTED_OFFSETS => {
                let n = r.u32("partition count")?;
                let mut offsets = Vec::with_capacity((n as usize).min(r.0.len() / 5));
                for _ in 0..n {
                    offsets.push((r.u32("partition")?, r.option("committed")?));
                }
                Response::CommittedOffsets(offsets)
            }
            kind::LIST_GROUPS => {
                let n = r.u32("group count")?;
                let mut groups = Vec::with_capacity((n as usize).min(r.0.len() / 32));
                for _ in 0..n {
                    groups.push(r.group()?);
                }
                Response::ListGroups(groups)
            }
            kind::DESCRIBE_GROUP => Response::DescribeGroup(r.group()?),
            kind::RESET_GROUP => Response::ResetGroup,
            kind::OFFSET_FOR_TIMESTAMP => Response::OffsetForTimestamp(r.u64("offset")?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(response)
    }
}

impl ErrorResponse {
    /// Encodes as an error frame answering a request of kind `kind_`.
    pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        b.put_u16_le(self.code);
        put_string(&mut b, &self.message);
        Frame {
            kind: kind_,
            flags: FLAG_RESPONSE | FLAG_ERROR,
            correlation_id,
            body: b.freeze(),
            tail: Bytes::new(),
        }
    }

    /// Decodes an error body.
    pub fn decode(body: Bytes) -> Result<ErrorResponse, DecodeError> {
        let mut r = Reader(body);
        let e = ErrorResponse {
            code: r.u16("code")?,
            message: r.string("message")?,
        };
        r.finish()?;
        Ok(e)
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    // Names and messages longer than a u16 are cut at a char boundary,
    // never sent with a wrong length.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_u16_le(end as u16);
    b.put_slice(&s.as_bytes()[..end]);
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32_le(bytes.len() as u32);
    b.put_slice(bytes);
}

fn put_option(b: &mut BytesMut, v: Option<u64>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            b.put_u64_le(v);
        }
    }
}

fn put_sync(b: &mut BytesMut, sync: WireSync) {
    let (tag, ms) = match sync {
        WireSync::Always => (1, 0),
        WireSync::Interval(ms) => (2, ms),
        WireSync::Never => (3, 0),
    };
    b.put_u8(tag);
    b.put_u64_le(ms);
}

fn put_items(b: &mut BytesMut, items: &[(u32, u64)]) {
    b.put_u32_le(items.len() as u32);
    for (p, o) in items {
        b.put_u32_le(*p);
        b.put_u64_le(*o);
    }
}

fn put_u32s(b: &mut BytesMut, values: &[u32]) {
    b.put_u32_le(values.len() as u32);
    for v in values {
        b.put_u32_le(*v);
    }
}

fn put_group(b: &mut BytesMut, g: &WireGroup) {
    put_string(b, &g.name);
    put_string(b, &g.topic);
    b.put_u8(g.mode as u8);
    b.put_u64_le(g.ack_wait_ms);
    b.put_u32_le(g.max_deliveries);
    b.put_u32_le(g.max_in_flight);
    b.put_u32_le(g.members);
    b.put_u64_le(g.redeliveries);
    b.put_u32_le(g.partitions.len() as u32);
    for p in &g.partitions {
        b.put_u32_le(p.partition);
        b.put_u64_le(p.position);
        b.put_u64_le(p.end);
        b.put_u32_le(p.in_flight);
        b.put_u32_le(p.pending);
        b.put_u64_le(p.dead_letters);
    }
}

fn put_topic(b: &mut BytesMut, t: &WireTopic) {
    put_string(b, &t.name);
    put_sync(b, t.sync);
    b.put_u64_le(t.segment_size_bytes);
    b.put_u64_le(t.retention_ms);
    b.put_u64_le(t.retention_bytes);
    b.put_u32_le(t.partitions.len() as u32);
    for p in &t.partitions {
        b.put_u32_le(p.partition);
        b.put_u64_le(p.start);
        b.put_u64_le(p.end);
    }
}

/// Bounds-checked reads from a body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated(field))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.0.get_u16_le())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_u32_le())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.0.get_u64_le())
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8(field))
    }

    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.need(len, field)?;
        Ok(self.0.split_to(len))
    }

    fn option(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.u64(field)?)),
            _ => Err(DecodeError::BadValue(field)),
        }
    }

    fn sync(&mut self) -> Result<WireSync, DecodeError> {
        let tag = self.u8("sync")?;
        let ms = self.u64("sync interval")?;
        match tag {
            1 => Ok(WireSync::Always),
            2 if ms > 0 => Ok(WireSync::Interval(ms)),
            3 => Ok(WireSync::Never),
            _ => Err(DecodeError::BadValue("sync")),
        }
    }

    fn topic(&mut self) -> Result<WireTopic, DecodeError> {
        let name = self.string("name")?;
        let sync = self.sync()?;
        let segment_size_bytes = self.u64("segment_size_bytes")?;
        let retention_ms = self.u64("retention_ms")?;
        let retention_bytes = self.u64("retention_bytes")?;
        let n = self.u32("partition count")?;
        let mut partitions = Vec::with_capacity((n as usize).min(self.0.len() / 20));
        for _ in 0..n {
            partitions.push(WirePartition {
                partition: self.u32("partition")?,
                start: self.u64("start")?,
                end: self.u64("end")?,
            });
        }
        Ok(WireTopic {
            name,
            sync,
            segment_size_bytes,
            retention_ms,
            retention_bytes,
            partitions,
        })
    }

    fn items(&mut self) -> Result<Vec<(u32, u64)>, DecodeError> {
        let n = self.u32("item count")?;
        let mut items = Vec::with_capacity((n as usize).min(self.0.len() / 12));
        for _ in 0..n {
            items.push((self.u32("partition")?, self.u64("offset")?));
        }
        Ok(items)
    }

    fn u32s(&mut self, field: &'static str) -> Result<Vec<u32>, DecodeError> {
        let n = self.u32(field)?;
        let mut values = Vec::with_capacity((n as usize).min(self.0.len() / 4));
        for _ in 0..n {
            values.push(self.u32(field)?);
        }
        Ok(values)
    }

    fn group(&mut self) -> Result<WireGroup, DecodeError> {
        let name = self.string("name")?;
        let topic = self.string("topic")?;
        let mode = WireGroupMode::from_u8(self.u8("mode")?)?;
        let ack_wait_ms = self.u64("ack_wait_ms")?;
        let max_deliveries = self.u32("max_deliveries")?;
        let max_in_flight = self.u32("max_in_flight")?;
        let members = self.u32("members")?;
        let redeliveries = self.u64("redeliveries")?;
        let n = self.u32("partition count")?;
        let mut partitions = Vec::with_capacity((n as usize).min(self.0.len() / 36));
        for _ in 0..n {
            partitions.push(WireGroupPartition {
                partition: self.u32("partition")?,
                position: self.u64("position")?,
                end: self.u64("end")?,
                in_flight: self.u32("in_flight")?,
                pending: self.u32("pending")?,
                dead_letters: self.u64("dead_letters")?,
            });
        }
        Ok(WireGroup {
            name,
            topic,
            mode,
            ack_wait_ms,
            max_deliveries,
            max_in_flight,
            members,
            redeliveries,
            partitions,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
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
        let request = Request::Handshake {
            min_version: 1,
            max_version: 1,
            features: 0,
            client_id: "cli".into(),
        };
        let mut wire = BytesMut::new();
        crate::FrameCodec::default()
            .encode(request.to_frame(1), &mut wire)
            .unwrap();
        let expected = "1d 00 00 00 53 50 01 00 01 00 00 00 01 00 00 00 \
                        01 00 01 00 00 00 00 00 00 00 00 00 03 00 63 6c 69";
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

        let join = Request::JoinGroup {
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

        let reset = Request::ResetGroup {
            group: "g".into(),
            to: WireResetTarget::Earliest,
        }
        .to_frame(1);
        let mut body = reset.body.to_vec();
        body[3] = 4; // the tag after the u16-prefixed "g"
        assert_eq!(
            Request::decode(kind::RESET_GROUP, Bytes::from(body)),
            Err(DecodeError::BadValue("to"))
        );
    }
}
