//! Queue-mode groups: deliver, and settle (ack, nack, touch) what was
//! delivered.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes, put_list, put_option, put_string, DecodeError, Reader, Wire};

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

/// Queue mode: up to `max_messages`, waiting up to `max_wait_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
    /// Most messages.
    pub max_messages: u32,
    /// Longest wait.
    pub max_wait_ms: u32,
}

/// Messages handed out (may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverResponse {
    /// The messages, each now in flight to the member.
    pub messages: Vec<WireDelivery>,
}

/// Queue mode: settle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
    /// (partition, offset) pairs.
    pub items: Vec<(u32, u64)>,
}

/// Queue mode: redeliver after a delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
    /// Delay before redelivery.
    pub delay_ms: u32,
    /// (partition, offset) pairs.
    pub items: Vec<(u32, u64)>,
}

/// Queue mode: extend deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TouchRequest {
    /// Group.
    pub group: String,
    /// Member.
    pub member: u64,
    /// (partition, offset) pairs.
    pub items: Vec<(u32, u64)>,
}

/// One result per item of an ack, nack or touch, in the request's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettleResponse {
    /// The results.
    pub results: Vec<WireSettle>,
}

impl Wire for WireDelivery {
    const MIN_LEN: usize = 33;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partition);
        b.put_u64_le(self.offset);
        b.put_u32_le(self.deliveries);
        b.put_i64_le(self.timestamp_ms);
        put_option(b, self.key.as_ref(), |b, k| put_bytes(b, k));
        put_bytes(b, &self.value);
        put_list(b, &self.headers);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireDelivery {
            partition: r.u32("partition")?,
            offset: r.u64("offset")?,
            deliveries: r.u32("deliveries")?,
            timestamp_ms: r.i64("timestamp")?,
            key: r.option("key present", |r| r.bytes("key"))?,
            value: r.bytes("value")?,
            headers: r.list("header count")?,
        })
    }
}

impl Wire for WireSettle {
    const MIN_LEN: usize = 1;

    fn put(&self, b: &mut BytesMut) {
        b.put_u8(*self as u8);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        match r.u8("settle result")? {
            0 => Ok(WireSettle::Ok),
            1 => Ok(WireSettle::AlreadySettled),
            2 => Ok(WireSettle::NotInFlight),
            _ => Err(DecodeError::BadValue("settle result")),
        }
    }
}

impl Wire for DeliverRequest {
    const MIN_LEN: usize = 18;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
        b.put_u32_le(self.max_messages);
        b.put_u32_le(self.max_wait_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DeliverRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
            max_messages: r.u32("max_messages")?,
            max_wait_ms: r.u32("max_wait_ms")?,
        })
    }
}

impl Wire for DeliverResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.messages);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(DeliverResponse {
            messages: r.list("message count")?,
        })
    }
}

impl Wire for AckRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
        put_list(b, &self.items);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AckRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
            items: r.list("item count")?,
        })
    }
}

impl Wire for NackRequest {
    const MIN_LEN: usize = 18;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
        b.put_u32_le(self.delay_ms);
        put_list(b, &self.items);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(NackRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
            delay_ms: r.u32("delay_ms")?,
            items: r.list("item count")?,
        })
    }
}

impl Wire for TouchRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.group);
        b.put_u64_le(self.member);
        put_list(b, &self.items);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(TouchRequest {
            group: r.string("group")?,
            member: r.u64("member")?,
            items: r.list("item count")?,
        })
    }
}

impl Wire for SettleResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        put_list(b, &self.results);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(SettleResponse {
            results: r.list("results")?,
        })
    }
}
