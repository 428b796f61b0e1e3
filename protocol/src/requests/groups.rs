//! Consumer groups: membership, stream-mode offsets, and administration.
//! (Queue-mode delivery and settling are in `queue.rs`.)

use bytes::{BufMut, BytesMut};

use crate::codec::{put_list, put_option_u64, put_string, DecodeError, Reader, Wire};

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
    fn get(r: &mut Reader) -> Result<WireGroupMode, DecodeError> {
        match r.u8("mode")? {
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

/// A consumer group's description: the reply to describe group.
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

/// Join (creating if needed) a group bound to `topic` in `mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGroupRequest {
    /// Group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// 1 stream, 2 queue.
    pub mode: WireGroupMode,
    /// Ack deadline for a new group (0: default 30 s).
    pub ack_wait_ms: u64,
    /// Deliveries before dead-lettering for a new group (0: default 5).
    pub max_deliveries: u32,
    /// Unsettled messages per member for a new group (0: default 1000).
    pub max_in_flight: u32,
}

/// Joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGroupResponse {
    /// The new member's id.
    pub member: u64,
    /// Assignment generation.
    pub generation: u32,
    /// Stream mode: assigned partitions.
    pub partitions: Vec<u32>,
}

/// Leave a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
}

/// Stream mode: the member's partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAssignmentRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
}

/// Stream mode assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAssignmentResponse {
    /// Generation.
    pub generation: u32,
    /// Partitions.
    pub partitions: Vec<u32>,
}

/// Stream mode: commit `offset` (the next to consume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOffsetRequest {
    /// Group.
    pub group: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// Stream mode: committed offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffsetsRequest {
    /// Group.
    pub group: String,
}

/// Per partition, the committed offset if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffsetsResponse {
    /// (partition, committed offset).
    pub offsets: Vec<(u32, Option<u64>)>,
}

/// List groups (an empty body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListGroupsRequest;

/// All groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListGroupsResponse {
    /// Every group.
    pub groups: Vec<WireGroup>,
}

/// Describe a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeGroupRequest {
    /// Group.
    pub group: String,
}

/// Reset a group (it must have no members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetGroupRequest {
    /// Group.
    pub group: String,
    /// Where to (u8 tag, then u64 offset, 0 unless the tag is 3).
    pub to: WireResetTarget,
    /// Only this partition (`None`: all). A clustered broker sends a
    /// queue group's reset of one partition to that partition's leader.
    pub partition: Option<u32>,
}

impl Wire for WireGroupPartition {
    const MIN_LEN: usize = 36;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partition);
        b.put_u64_le(self.position);
        b.put_u64_le(self.end);
        b.put_u32_le(self.in_flight);
        b.put_u32_le(self.pending);
        b.put_u64_le(self.dead_letters);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireGroupPartition {
            partition: r.u32("partition")?,
            position: r.u64("position")?,
            end: r.u64("end")?,
            in_flight: r.u32("in_flight")?,
            pending: r.u32("pending")?,
            dead_letters: r.u64("dead_letters")?,
        })
    }
}

impl Wire for WireGroup {
    const MIN_LEN: usize = 41;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        put_string(b, &self.topic);
        b.put_u8(self.mode as u8);
        b.put_u64_le(self.ack_wait_ms);
        b.put_u32_le(self.max_deliveries);
        b.put_u32_le(self.max_in_flight);
        b.put_u32_le(self.members);
        b.put_u64_le(self.redeliveries);
        put_list(b, &self.partitions);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireGroup {
            name: r.string("name")?,
            topic: r.string("topic")?,
            mode: WireGroupMode::get(r)?,
            ack_wait_ms: r.u64("ack_wait_ms")?,
            max_deliveries: r.u32("max_deliveries")?,
            max_in_flight: r.u32("max_in_flight")?,
            members: r.u32("members")?,
            redeliveries: r.u64("redeliveries")?,
            partitions: r.list("partition count")?,
        })
    }
}

impl Wire for JoinGroupRequest {
    const MIN_LEN: usize = 21;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        put_string(b, &self.topic);
        b.put_u8(self.mode as u8);
        b.put_u64_le(self.ack_wait_ms);
        b.put_u32_le(self.max_deliveries);
        b.put_u32_le(self.max_in_flight);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(JoinGroupRequest {
            group: r.string("group")?,
            topic: r.string("topic")?,
            mode: WireGroupMode::get(r)?,
            ack_wait_ms: r.u64("ack_wait_ms")?,
            max_deliveries: r.u32("max_deliveries")?,
            max_in_flight: r.u32("max_in_flight")?,
        })
    }
}

impl Wire for JoinGroupResponse {
    const MIN_LEN: usize = 16;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.member);
        b.put_u32_le(self.generation);
        put_list(b, &self.partitions);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(JoinGroupResponse {
            member: r.u64("member")?,
            generation: r.u32("generation")?,
            partitions: r.list("partitions")?,
        })
    }
}

impl Wire for LeaveGroupRequest {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(LeaveGroupRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
        })
    }
}

impl Wire for GroupAssignmentRequest {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(GroupAssignmentRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
        })
    }
}

impl Wire for GroupAssignmentResponse {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.generation);
        put_list(b, &self.partitions);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(GroupAssignmentResponse {
            generation: r.u32("generation")?,
            partitions: r.list("partitions")?,
        })
    }
}

impl Wire for CommitOffsetRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u32_le(self.partition);
        b.put_u64_le(self.offset);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CommitOffsetRequest {
            group: r.string("group")?,
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
        })
    }
}

impl Wire for CommittedOffsetsRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CommittedOffsetsRequest {
            group: r.string("group")?,
        })
    }
}

impl Wire for CommittedOffsetsResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.offsets);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CommittedOffsetsResponse {
            offsets: r.list("partition count")?,
        })
    }
}

impl Wire for ListGroupsRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListGroupsRequest)
    }
}

impl Wire for ListGroupsResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.groups);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListGroupsResponse {
            groups: r.list("group count")?,
        })
    }
}

impl Wire for DescribeGroupRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DescribeGroupRequest {
            group: r.string("group")?,
        })
    }
}

impl Wire for ResetGroupRequest {
    const MIN_LEN: usize = 12;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        let (tag, offset) = match self.to {
            WireResetTarget::Earliest => (1, 0),
            WireResetTarget::Latest => (2, 0),
            WireResetTarget::Offset(o) => (3, o),
        };
        b.put_u8(tag);
        b.put_u64_le(offset);
        match self.partition {
            Some(p) => {
                b.put_u8(1);
                b.put_u32_le(p);
            }
            None => b.put_u8(0),
        }
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ResetGroupRequest {
            group: r.string("group")?,
            to: match (r.u8("to")?, r.u64("offset")?) {
                (1, _) => WireResetTarget::Earliest,
                (2, _) => WireResetTarget::Latest,
                (3, o) => WireResetTarget::Offset(o),
                _ => return Err(DecodeError::BadValue("to")),
            },
            partition: r.option("partition present", |r| r.u32("partition"))?,
        })
    }
}

/// Delete a group (it must have no members). Its dead-letter topic stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteGroupRequest {
    /// Group.
    pub group: String,
}

impl Wire for DeleteGroupRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DeleteGroupRequest {
            group: r.string("group")?,
        })
    }
}

/// A queue group's delivered, unsettled messages (Redis's `XPENDING`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessagesRequest {
    /// Group.
    pub group: String,
    /// Only this partition; none: all.
    pub partition: Option<u64>,
    /// At most this many.
    pub max: u32,
}

/// One unsettled message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WirePending {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Times delivered.
    pub deliveries: u32,
    /// The member holding it; 0 while it waits for redelivery.
    pub member: u64,
    /// Milliseconds until its ack deadline (held) or its redelivery
    /// (waiting).
    pub due_in_ms: u64,
}

/// The reply: by partition and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessagesResponse {
    /// The messages.
    pub messages: Vec<WirePending>,
}

impl Wire for PendingMessagesRequest {
    const MIN_LEN: usize = 2 + 1 + 4;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        put_option_u64(b, self.partition);
        b.put_u32_le(self.max);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PendingMessagesRequest {
            group: r.string("group")?,
            partition: r.option_u64("partition")?,
            max: r.u32("max")?,
        })
    }
}

impl Wire for WirePending {
    const MIN_LEN: usize = 4 + 8 + 4 + 8 + 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partition);
        b.put_u64_le(self.offset);
        b.put_u32_le(self.deliveries);
        b.put_u64_le(self.member);
        b.put_u64_le(self.due_in_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WirePending {
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
            deliveries: r.u32("deliveries")?,
            member: r.u64("member")?,
            due_in_ms: r.u64("due_in_ms")?,
        })
    }
}

impl Wire for PendingMessagesResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.messages);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(PendingMessagesResponse {
            messages: r.list("message count")?,
        })
    }
}
