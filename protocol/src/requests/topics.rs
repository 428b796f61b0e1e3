//! Topic administration: create, delete, list, describe.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_list, put_option, put_option_u64, put_string, DecodeError, Reader, Wire};

/// Sync policy as carried on the wire (a u8 tag and a u64 interval).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSync {
    /// Flush before acknowledging.
    Always,
    /// Flush every `ms` milliseconds.
    Interval(u64),
    /// Leave it to the OS.
    Never,
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
    /// Copies of each partition in a cluster (the cluster's default, 3 or
    /// its broker count if smaller, when `None`). A single server keeps
    /// one copy and refuses more.
    pub replication: Option<u32>,
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

/// A topic's configuration and offsets: the reply to describe topic.
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

/// Create a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicRequest {
    /// Name.
    pub name: String,
    /// Partition count; 0 takes the server's default.
    pub partitions: u32,
    /// Settings; unset ones take the server's defaults.
    pub settings: TopicSettings,
}

/// Delete a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTopicRequest {
    /// Name.
    pub name: String,
}

/// List topics (an empty body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListTopicsRequest;

/// All topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListTopicsResponse {
    /// Every topic.
    pub topics: Vec<WireTopic>,
}

/// Describe a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribeTopicRequest {
    /// Name.
    pub name: String,
}

impl Wire for WireSync {
    const MIN_LEN: usize = 9;

    fn put(&self, b: &mut BytesMut) {
        let (tag, ms) = match *self {
            WireSync::Always => (1, 0),
            WireSync::Interval(ms) => (2, ms),
            WireSync::Never => (3, 0),
        };
        b.put_u8(tag);
        b.put_u64_le(ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let tag = r.u8("sync")?;
        let ms = r.u64("sync interval")?;
        match tag {
            1 => Ok(WireSync::Always),
            2 if ms > 0 => Ok(WireSync::Interval(ms)),
            3 => Ok(WireSync::Never),
            _ => Err(DecodeError::BadValue("sync")),
        }
    }
}

impl Wire for WirePartition {
    const MIN_LEN: usize = 20;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partition);
        b.put_u64_le(self.start);
        b.put_u64_le(self.end);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WirePartition {
            partition: r.u32("partition")?,
            start: r.u64("start")?,
            end: r.u64("end")?,
        })
    }
}

impl Wire for WireTopic {
    const MIN_LEN: usize = 39;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        self.sync.put(b);
        b.put_u64_le(self.segment_size_bytes);
        b.put_u64_le(self.retention_ms);
        b.put_u64_le(self.retention_bytes);
        put_list(b, &self.partitions);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireTopic {
            name: r.string("name")?,
            sync: WireSync::get(r)?,
            segment_size_bytes: r.u64("segment_size_bytes")?,
            retention_ms: r.u64("retention_ms")?,
            retention_bytes: r.u64("retention_bytes")?,
            partitions: r.list("partition count")?,
        })
    }
}

impl Wire for CreateTopicRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        b.put_u32_le(self.partitions);
        put_option(b, self.settings.sync.as_ref(), |b, s| s.put(b));
        put_option_u64(b, self.settings.segment_size_bytes);
        put_option_u64(b, self.settings.retention_ms);
        put_option_u64(b, self.settings.retention_bytes);
        // 0: the default (no topic has zero copies).
        b.put_u32_le(self.settings.replication.unwrap_or(0));
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CreateTopicRequest {
            name: r.string("name")?,
            partitions: r.u32("partitions")?,
            settings: TopicSettings {
                sync: r.option("sync present", WireSync::get)?,
                segment_size_bytes: r.option_u64("segment_size_bytes")?,
                retention_ms: r.option_u64("retention_ms")?,
                retention_bytes: r.option_u64("retention_bytes")?,
                replication: Some(r.u32("replication")?).filter(|&n| n > 0),
            },
        })
    }
}

impl Wire for DeleteTopicRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DeleteTopicRequest {
            name: r.string("name")?,
        })
    }
}

impl Wire for ListTopicsRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListTopicsRequest)
    }
}

impl Wire for ListTopicsResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.topics);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListTopicsResponse {
            topics: r.list("topic count")?,
        })
    }
}

impl Wire for DescribeTopicRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DescribeTopicRequest {
            name: r.string("name")?,
        })
    }
}
