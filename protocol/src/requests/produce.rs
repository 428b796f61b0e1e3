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
    /// When the answer may come (matters only for a replicated partition).
    pub acks: Acks,
    /// One record batch in the storage format.
    pub batch: Bytes,
}

/// How many copies a produce waits for before it is answered. Each copy
/// is as durable as the topic's sync policy makes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica has the batch, and they are at least the
    /// cluster's minimum (else `NotEnoughReplicas`): survives the loss of
    /// any broker but one of them.
    #[default]
    All,
    /// The leader alone has it: faster, and lost if the leader fails
    /// before its followers fetch it.
    Leader,
}

impl Acks {
    fn code(self) -> u8 {
        match self {
            Acks::All => 0,
            Acks::Leader => 1,
        }
    }
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
    const MIN_LEN: usize = 11;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.topic);
        b.put_u32_le(self.partition);
        b.put_u8(self.acks.code());
        b.put_u32_le(self.batch.len() as u32);
    }

    /// The batch is the body's last field: sent from its own buffer, not
    /// copied.
    fn tail(&self) -> Vec<Bytes> {
        vec![self.batch.clone()]
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ProduceRequest {
            topic: r.string("topic")?,
            partition: r.u32("partition")?,
            acks: match r.u8("acks")? {
                0 => Acks::All,
                1 => Acks::Leader,
                _ => return Err(DecodeError::BadValue("acks")),
            },
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
