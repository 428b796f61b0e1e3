//! Produce: append one batch to a partition.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_string, DecodeError, Reader, Wire};

/// Append a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// One record batch in the storage format.
    pub batch: Bytes,
}

/// Batch stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceResponse {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset after its last record.
    pub next_offset: u64,
}

impl Wire for ProduceRequest {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_u32_le(self.batch.len() as u32);
    }

    /// The batch is the body's last field: sent from its own buffer, not
    /// copied.
    fn tail(&self) -> Bytes {
        self.batch.clone()
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ProduceRequest {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            batch: r.bytes("batch")?,
        })
    }
}

impl Wire for ProduceResponse {
    const MIN_LEN: usize = 16;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.base_offset);
        b.put_u64_le(self.next_offset);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ProduceResponse {
            base_offset: r.u64("base_offset")?,
            next_offset: r.u64("next_offset")?,
        })
    }
}

/// Ask for a producer id, for an idempotent producer (an empty body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitProducerRequest;

/// A producer id no other producer of this server (or cluster) has had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitProducerResponse {
    /// Never 0 (0 means "no producer" in a batch).
    pub producer_id: u64,
}

impl Wire for InitProducerRequest {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<Self, DecodeError> {
        Ok(InitProducerRequest)
    }
}

impl Wire for InitProducerResponse {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.producer_id);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(InitProducerResponse {
            producer_id: r.u64("producer id")?,
        })
    }
}
