//! Queue-mode groups: deliver, and settle (ack, nack, touch) what was
//! delivered.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{BatchError, Batches, Record};
use crate::codec::{put_list, put_string, DecodeError, Reader, Wire};

/// A run of consecutive offsets of one partition handed out to a member
/// together, each delivered `deliveries` times (this time included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireAcquired {
    /// The run's first offset.
    pub first: u64,
    /// Offsets in the run (at least 1).
    pub count: u32,
    /// Deliveries so far of each, this one included.
    pub deliveries: u32,
}

impl WireAcquired {
    /// One past the run's last offset.
    pub fn end(&self) -> u64 {
        self.first.saturating_add(u64::from(self.count))
    }
}

/// The messages a Deliver hands out from one partition: the stored batches
/// that hold them, sent as they are stored (as a Fetch sends them), and
/// which of their records are this member's. A batch can hold records
/// that are not: handed to another member, acked, or not asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireDeliveredPartition {
    /// Partition.
    pub partition: u32,
    /// The records handed out, in runs, in offset order.
    pub acquired: Vec<WireAcquired>,
    /// Back-to-back stored batches covering every acquired offset, in
    /// offset order, in one or more parts (a decoded answer has one).
    pub batches: Vec<Bytes>,
}

impl WireDeliveredPartition {
    /// Offsets handed out.
    pub fn message_count(&self) -> usize {
        self.acquired.iter().map(|a| a.count as usize).sum()
    }

    /// Calls `f` with each acquired record, in offset order, its delivery
    /// count and the part holding it (for zero-copy slices), and returns
    /// how many it found: fewer than [`Self::message_count`] means the
    /// batches lack some (or hold records that do not parse). With
    /// `check_crc`, every batch's CRC is checked before its records are
    /// read: batches off the network ([`crate::Batch::from_broker`]). Without,
    /// only headers are parsed: batches a broker just read back from its
    /// own storage, which checked them.
    pub fn for_each_message<'a>(
        &'a self,
        check_crc: bool,
        mut f: impl FnMut(Record<'a>, u32, &'a Bytes),
    ) -> Result<usize, BatchError> {
        let mut runs = self.acquired.iter().peekable();
        let mut found = 0;
        'parts: for part in &self.batches {
            let batches = if check_crc {
                Batches::from_broker(part)
            } else {
                Batches::stored(part)
            };
            for batch in batches {
                let batch = batch?;
                let (base, next) = (batch.header().base_offset.0, batch.header().next_offset().0);
                while runs.peek().is_some_and(|r| r.end() <= base) {
                    runs.next();
                }
                let Some(&&run) = runs.peek() else {
                    break 'parts;
                };
                if run.first >= next {
                    // Nothing of this batch was handed out.
                    continue;
                }
                let mut run = run;
                for record in batch.records() {
                    let offset = record.offset.0;
                    while offset >= run.end() {
                        runs.next();
                        match runs.peek() {
                            Some(&&next_run) => run = next_run,
                            None => break 'parts,
                        }
                    }
                    if offset >= run.first {
                        f(record, run.deliveries, part);
                        found += 1;
                    }
                }
            }
        }
        Ok(found)
    }
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

/// Messages handed out (may be empty), by partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverResponse {
    /// The partitions with messages now in flight to the member.
    pub partitions: Vec<WireDeliveredPartition>,
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

impl Wire for WireAcquired {
    const MIN_LEN: usize = 16;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.first);
        b.put_u32_le(self.count);
        b.put_u32_le(self.deliveries);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireAcquired {
            first: r.u64("acquired first")?,
            count: r.u32("acquired count")?,
            deliveries: r.u32("deliveries")?,
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

/// Every partition's header (partition, runs, length of its batches)
/// comes first, then every partition's batches in the same order: the
/// batches are the frame's tail, written from the segments' maps.
impl Wire for DeliverResponse {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.partitions.len() as u32);
        for p in &self.partitions {
            b.put_u32_le(p.partition);
            put_list(b, &p.acquired);
            b.put_u32_le(p.batches.iter().map(Bytes::len).sum::<usize>() as u32);
        }
    }

    fn tail(&self) -> Vec<Bytes> {
        self.partitions
            .iter()
            .flat_map(|p| p.batches.iter().filter(|b| !b.is_empty()).cloned())
            .collect()
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        let n = r.u32("partition count")? as usize;
        let mut heads = Vec::with_capacity(n.min(r.remaining() / 12));
        for _ in 0..n {
            let partition = r.u32("partition")?;
            let acquired: Vec<WireAcquired> = r.list("acquired count")?;
            let len = r.u32("batches")? as usize;
            heads.push((partition, acquired, len));
        }
        let mut partitions = Vec::with_capacity(heads.len());
        for (partition, acquired, len) in heads {
            let batches = r.raw(len, "batches")?;
            partitions.push(WireDeliveredPartition {
                partition,
                acquired,
                batches: if batches.is_empty() {
                    Vec::new()
                } else {
                    vec![batches]
                },
            });
        }
        Ok(DeliverResponse { partitions })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{set_base_offset, BatchBuilder};
    use crate::Offset;

    /// A batch of `count` records from `base`, each valued by its offset.
    fn batch(base: u64, count: u64) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for o in base..base + count {
            b.push(1, None, o.to_string().as_bytes(), &[]).unwrap();
        }
        let mut bytes = b.finish().unwrap().to_vec();
        set_base_offset(&mut bytes, Offset(base));
        bytes
    }

    fn run(first: u64, count: u32, deliveries: u32) -> WireAcquired {
        WireAcquired {
            first,
            count,
            deliveries,
        }
    }

    fn walk(p: &WireDeliveredPartition, check_crc: bool) -> Result<Vec<(u64, u32)>, BatchError> {
        let mut seen = Vec::new();
        let found = p.for_each_message(check_crc, |r, deliveries, part| {
            assert_eq!(r.value, r.offset.0.to_string().as_bytes());
            assert!(part.as_ptr_range().contains(&r.value.as_ptr()));
            seen.push((r.offset.0, deliveries));
        })?;
        assert_eq!(found, seen.len());
        Ok(seen)
    }

    #[test]
    fn only_the_acquired_records_of_the_batches_are_walked() {
        // Batches 0..10, 10..20 in one part, 20..25 in another.
        let mut first = batch(0, 10);
        first.extend(batch(10, 10));
        let p = WireDeliveredPartition {
            partition: 3,
            acquired: vec![run(2, 3, 1), run(5, 1, 2), run(12, 9, 1), run(23, 1, 4)],
            batches: vec![Bytes::from(first), Bytes::from(batch(20, 5))],
        };
        let expected: Vec<(u64, u32)> = (2..5)
            .map(|o| (o, 1))
            .chain([(5, 2)])
            .chain((12..21).map(|o| (o, 1)))
            .chain([(23, 4)])
            .collect();
        assert_eq!(p.message_count(), expected.len());
        for check_crc in [true, false] {
            assert_eq!(walk(&p, check_crc).unwrap(), expected);
        }
    }

    #[test]
    fn batches_lacking_acquired_records_show_in_the_count() {
        let p = WireDeliveredPartition {
            partition: 0,
            acquired: vec![run(8, 4, 1), run(30, 2, 1)],
            batches: vec![Bytes::from(batch(0, 10))],
        };
        assert_eq!(walk(&p, true).unwrap(), [(8, 1), (9, 1)]);
        assert_eq!(p.message_count(), 6);
    }

    #[test]
    fn a_damaged_batch_is_refused_when_checking_crcs() {
        let mut bytes = batch(0, 10);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        let p = WireDeliveredPartition {
            partition: 0,
            acquired: vec![run(0, 10, 1)],
            batches: vec![Bytes::from(bytes)],
        };
        assert!(matches!(walk(&p, true), Err(BatchError::Crc { .. })));
    }
}
