//! Fetch (read batches from a partition) and offset-for-timestamp (where
//! to start reading for a point in time).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_string, DecodeError, Reader, Wire};

/// Read batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Byte budget (at least one batch is returned).
    pub max_bytes: u32,
    /// How long to wait for data at the end of the log.
    pub max_wait_ms: u32,
}

/// Batches read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResponse {
    /// First offset in the log.
    pub log_start: u64,
    /// Offset after the last visible record.
    pub log_end: u64,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// Whole batches as stored (may be empty).
    pub batches: Bytes,
}

/// First offset of a partition at or after a timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetForTimestampRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// The offset found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetForTimestampResponse {
    /// First offset whose batch may hold a record at or after the
    /// timestamp; the log end if there is none.
    pub offset: u64,
}

impl Wire for FetchRequest {
    const MIN_LEN: usize = 22;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_u64_le(self.offset);
        b.put_u32_le(self.max_bytes);
        b.put_u32_le(self.max_wait_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(FetchRequest {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
            max_bytes: r.u32("max_bytes")?,
            max_wait_ms: r.u32("max_wait_ms")?,
        })
    }
}

impl Wire for FetchResponse {
    const MIN_LEN: usize = 28;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.log_start);
        b.put_u64_le(self.log_end);
        b.put_u64_le(self.next_offset);
        b.put_u32_le(self.batches.len() as u32);
    }

    /// Usually a slice of a segment's map: written to the socket from
    /// there, not copied.
    fn tail(&self) -> Vec<Bytes> {
        vec![self.batches.clone()]
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(FetchResponse {
            log_start: r.u64("log_start")?,
            log_end: r.u64("log_end")?,
            next_offset: r.u64("next_offset")?,
            batches: r.bytes("batches")?,
        })
    }
}

impl Wire for OffsetForTimestampRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_i64_le(self.timestamp_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OffsetForTimestampRequest {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            timestamp_ms: r.i64("timestamp_ms")?,
        })
    }
}

impl Wire for OffsetForTimestampResponse {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.offset);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OffsetForTimestampResponse {
            offset: r.u64("offset")?,
        })
    }
}
