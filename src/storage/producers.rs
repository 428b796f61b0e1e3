//! Idempotent producers' state for one partition: the last few batches
//! each producer appended, by sequence number, so that a retried batch is
//! answered with the offsets it got the first time instead of being stored
//! again, and a batch that arrives before its predecessor is refused
//! instead of reordering the partition (Kafka's idempotent producer).
//!
//! The table is rebuilt on open from the batches themselves (their headers
//! carry the producer id and sequence): from a snapshot written when a
//! segment is rolled, which covers everything before the new segment, plus
//! a scan of the active segment. So it is exactly as durable as the batches
//! it describes, and never claims a batch that recovery cut off.
//!
//! Fencing tokens live here too, for the same reasons: a fenced batch
//! carries its lock and token (see `spool_protocol::batch::ATTR_FENCED`),
//! and the table keeps the highest token accepted per lock, rebuilt from
//! the batches like the producers' sequences, replicated with them byte for
//! byte, and checked by the partition's leader before an append (Kafka's
//! producer epochs fence zombie producers the same way).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spool_protocol::batch::{BatchHeader, Fence, NO_PRODUCER};
use spool_protocol::Offset;

use super::meta_file::{self, MetaKind};
use super::StorageError;

/// Batches remembered per producer: a retry of any of the producer's last
/// this-many batches to the partition is recognised. The client keeps at
/// most this many batches in flight per partition.
pub const RECENT_BATCHES: usize = spool_protocol::batch::IDEMPOTENCE_WINDOW;
/// Producers remembered per partition; past it the longest idle is
/// forgotten (its retries then count as new, as after expiry).
pub const MAX_PRODUCERS: usize = 10_000;
/// A producer that has appended nothing for this long is forgotten.
pub const PRODUCER_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;
/// Locks a partition remembers fencing tokens for. Never forgotten (a
/// forgotten lock would let a stale holder write again); a fenced batch
/// for one more lock is refused.
pub const MAX_FENCES: usize = 10_000;

const SNAPSHOT: MetaKind = MetaKind {
    magic: *b"SPPR",
    version: 2,
};

/// What a batch is, given what its producer sent before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sequenced {
    /// Not seen: append it.
    New,
    /// Appended before, at these offsets: answer with them.
    Duplicate {
        /// Its first offset.
        base_offset: Offset,
        /// One past its last.
        next_offset: Offset,
    },
    /// Its first sequence number is not the one after the producer's last
    /// batch: a predecessor has not arrived (refuse, the producer retries
    /// in order), or it is older than anything remembered.
    OutOfOrder {
        /// The sequence number expected next.
        expected: u32,
        /// The batch's.
        got: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SentBatch {
    base_sequence: u32,
    last_sequence: u32,
    base_offset: u64,
    next_offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerState {
    recent: VecDeque<SentBatch>,
    /// When the broker last appended for it (wall clock; batch timestamps
    /// are the producer's and may be anything). A table rebuilt by a scan
    /// counts from the scan: an expiry comes later, never earlier.
    last_append_ms: i64,
}

/// Every idempotent producer's recent batches in one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<u64, ProducerState>,
    /// The highest fencing token accepted per lock.
    fences: BTreeMap<String, u64>,
}

impl ProducerTable {
    /// Classifies a batch about to be appended.
    pub fn check(&self, header: &BatchHeader) -> Sequenced {
        if header.producer_id == NO_PRODUCER {
            return Sequenced::New;
        }
        // A producer not remembered must start at 0: a later batch that
        // overtook its first (both retried, say) must wait for it. One
        // forgotten while it was idle (expiry) waits too, until its client
        // gives up on the batch and starts over with a new id.
        let Some(state) = self.producers.get(&header.producer_id) else {
            return if header.base_sequence == 0 {
                Sequenced::New
            } else {
                Sequenced::OutOfOrder {
                    expected: 0,
                    got: header.base_sequence,
                }
            };
        };
        let last_sequence = header.last_sequence();
        if let Some(sent) = state
            .recent
            .iter()
            .find(|b| b.base_sequence == header.base_sequence && b.last_sequence == last_sequence)
        {
            return Sequenced::Duplicate {
                base_offset: Offset(sent.base_offset),
                next_offset: Offset(sent.next_offset),
            };
        }
        let expected = state
            .recent
            .back()
            .map_or(header.base_sequence, |b| b.last_sequence.wrapping_add(1));
        if header.base_sequence == expected {
            Sequenced::New
        } else {
            Sequenced::OutOfOrder {
                expected,
                got: header.base_sequence,
            }
        }
    }

    /// Refuses a fenced batch whose token is below the highest accepted
    /// for its lock (equal is the same holder writing again).
    pub fn check_fence(&self, fence: Option<Fence<'_>>) -> Result<(), StorageError> {
        let Some(fence) = fence else { return Ok(()) };
        match self.fences.get(fence.lock) {
            Some(&highest) if fence.token < highest => Err(StorageError::Fenced {
                lock: fence.lock.to_string(),
                token: fence.token,
                highest,
            }),
            None if self.fences.len() >= MAX_FENCES => {
                Err(StorageError::TooManyFences(self.fences.len()))
            }
            _ => Ok(()),
        }
    }

    /// The highest token accepted for `lock`.
    pub fn fence(&self, lock: &str) -> Option<u64> {
        self.fences.get(lock).copied()
    }

    /// Records a batch appended at `now_ms` (its header with the assigned
    /// offset, and its fence if it has one).
    pub fn record(&mut self, header: &BatchHeader, fence: Option<Fence<'_>>, now_ms: i64) {
        if let Some(fence) = fence {
            let highest = self.fences.entry(fence.lock.to_string()).or_default();
            *highest = (*highest).max(fence.token);
        }
        if header.producer_id == NO_PRODUCER {
            return;
        }
        let state = self.producers.entry(header.producer_id).or_default();
        if state.recent.len() == RECENT_BATCHES {
            state.recent.pop_front();
        }
        state.recent.push_back(SentBatch {
            base_sequence: header.base_sequence,
            last_sequence: header.last_sequence(),
            base_offset: header.base_offset.0,
            next_offset: header.next_offset().0,
        });
        state.last_append_ms = state.last_append_ms.max(now_ms);
        if self.producers.len() > MAX_PRODUCERS {
            self.forget_idlest();
        }
    }

    /// Forgets producers idle for [`PRODUCER_EXPIRY_MS`] before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        self.producers
            .retain(|_, s| now_ms.saturating_sub(s.last_append_ms) < PRODUCER_EXPIRY_MS);
    }

    fn forget_idlest(&mut self) {
        if let Some(idlest) = self
            .producers
            .iter()
            .min_by_key(|(_, s)| s.last_append_ms)
            .map(|(id, _)| *id)
        {
            self.producers.remove(&idlest);
        }
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True if none is.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Writes the table as of the start of the segment based at `base`.
    /// Not synced: a lost or torn snapshot is rebuilt by scanning.
    pub fn save(&self, dir: &Path, base: Offset) -> Result<(), StorageError> {
        meta_file::write(
            &snapshot_path(dir, base),
            SNAPSHOT,
            self,
            super::atomic_file::Durability::Unsynced,
        )
    }

    /// The table as of the start of the segment based at `base`, if its
    /// snapshot is there and reads.
    pub fn load(dir: &Path, base: Offset) -> Option<ProducerTable> {
        let path = snapshot_path(dir, base);
        match meta_file::read(&path, SNAPSHOT) {
            Ok(table) => table,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable producer snapshot; rebuilding it from the log");
                None
            }
        }
    }
}

/// The snapshot file of the segment based at `base`.
pub fn snapshot_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.producers", base.0))
}

/// The base offset of a snapshot file's name, if it is one.
pub fn parse_snapshot_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".producers")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Offset))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_protocol::batch::{set_base_offset, Batch, BatchBuilder};

    fn header(producer: u64, sequence: u32, records: u32, offset: u64) -> BatchHeader {
        let mut b = BatchBuilder::new();
        for i in 0..records {
            b.push(1_000 + i64::from(i), None, b"v", &[]).expect("push");
        }
        let mut bytes = b.finish_from(producer, sequence).expect("finish").to_vec();
        set_base_offset(&mut bytes, Offset(offset));
        *Batch::validate(&bytes).expect("valid").header()
    }

    #[test]
    fn retries_are_recognised_and_gaps_refused() {
        let mut t = ProducerTable::default();
        let first = header(7, 0, 3, 0);
        assert_eq!(t.check(&first), Sequenced::New);
        t.record(&first, None, 1_000);
        // The same batch again: its original offsets.
        assert_eq!(
            t.check(&header(7, 0, 3, 99)),
            Sequenced::Duplicate {
                base_offset: Offset(0),
                next_offset: Offset(3)
            }
        );
        // The next one must start at sequence 3.
        assert_eq!(
            t.check(&header(7, 5, 1, 3)),
            Sequenced::OutOfOrder {
                expected: 3,
                got: 5
            }
        );
        assert_eq!(t.check(&header(7, 3, 1, 3)), Sequenced::New);
        // Other producers and producer-less batches are independent; a new
        // producer starts at 0.
        assert_eq!(t.check(&header(8, 0, 1, 3)), Sequenced::New);
        assert_eq!(
            t.check(&header(8, 40, 1, 3)),
            Sequenced::OutOfOrder {
                expected: 0,
                got: 40
            }
        );
        assert_eq!(t.check(&header(NO_PRODUCER, 0, 3, 3)), Sequenced::New);
    }

    #[test]
    fn only_the_recent_batches_are_remembered_and_idle_producers_expire() {
        let mut t = ProducerTable::default();
        for i in 0..(RECENT_BATCHES as u32 + 2) {
            t.record(&header(1, i, 1, u64::from(i)), None, 1_000);
        }
        // The oldest two are forgotten: a retry of them is out of order.
        assert!(matches!(
            t.check(&header(1, 0, 1, 0)),
            Sequenced::OutOfOrder { .. }
        ));
        assert!(matches!(
            t.check(&header(1, 2, 1, 0)),
            Sequenced::Duplicate { .. }
        ));
        t.expire(1_000 + PRODUCER_EXPIRY_MS - 1);
        assert_eq!(t.len(), 1);
        t.expire(1_000 + PRODUCER_EXPIRY_MS + 1);
        assert!(t.is_empty());
    }

    #[test]
    fn sequences_wrap() {
        let mut t = ProducerTable::default();
        t.record(&header(3, u32::MAX - 1, 2, 0), None, 1_000);
        assert_eq!(t.check(&header(3, 0, 1, 2)), Sequenced::New);
    }

    #[test]
    fn a_snapshot_round_trips_and_names_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = ProducerTable::default();
        t.record(&header(9, 0, 2, 10), None, 1_000);
        t.save(dir.path(), Offset(12)).expect("save");
        assert_eq!(ProducerTable::load(dir.path(), Offset(12)), Some(t));
        assert_eq!(ProducerTable::load(dir.path(), Offset(13)), None);
        assert_eq!(
            parse_snapshot_name("00000000000000000012.producers"),
            Some(Offset(12))
        );
        assert_eq!(parse_snapshot_name("12.producers"), None);
    }

    #[test]
    fn a_lower_token_is_fenced_and_the_table_keeps_the_highest_per_lock() {
        let fenced = |lock: &str, token: u64| {
            let mut b = BatchBuilder::new().fenced(lock, token).expect("fence");
            b.push(1, None, b"v", &[(b"h", b"x")]).expect("push");
            b.push(2, None, b"w", &[]).expect("push");
            b.finish().expect("finish").to_vec()
        };
        let mut t = ProducerTable::default();
        let first = fenced("jobs", 7);
        let batch = Batch::validate(&first).expect("valid");
        let fence = batch.fence().expect("a fence");
        assert_eq!((fence.lock, fence.token), ("jobs", 7));
        assert_eq!(
            batch.records().next().and_then(|r| r.header(b"h")),
            Some(&b"x"[..])
        );
        assert!(t.check_fence(Some(fence)).is_ok());
        t.record(batch.header(), Some(fence), 1_000);
        // The same holder again, and a newer one: accepted.
        let same = fenced("jobs", 7);
        let same = Batch::validate(&same).expect("valid");
        assert!(t.check_fence(same.fence()).is_ok());
        let newer = fenced("jobs", 9);
        let newer = Batch::validate(&newer).expect("valid");
        t.record(newer.header(), newer.fence(), 1_000);
        // The old holder, a zombie now: refused, naming both tokens.
        match t.check_fence(same.fence()) {
            Err(StorageError::Fenced {
                lock,
                token,
                highest,
            }) => {
                assert_eq!((lock.as_str(), token, highest), ("jobs", 7, 9))
            }
            other => panic!("expected Fenced, got {other:?}"),
        }
        // Another lock's tokens are its own; an unfenced batch is never fenced.
        let other = fenced("reports", 1);
        assert!(t
            .check_fence(Batch::validate(&other).expect("valid").fence())
            .is_ok());
        assert!(t.check_fence(None).is_ok());
        assert_eq!(t.fence("jobs"), Some(9));
    }

    #[test]
    fn a_fenced_batch_without_its_header_is_invalid() {
        let mut b = BatchBuilder::new().fenced("jobs", 3).expect("fence");
        b.push(1, None, b"v", &[]).expect("push");
        let mut bytes = b.finish().expect("finish").to_vec();
        // Rename the header ("spool.fence" -> "spool.fencf") and fix the CRC.
        let at = bytes
            .windows(11)
            .position(|w| w == b"spool.fence")
            .expect("header present");
        bytes[at + 10] = b'f';
        let crc = crc32fast::hash(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Batch::validate(&bytes).err(),
            Some(spool_protocol::BatchError::BadFence)
        );
        assert!(BatchBuilder::new().fenced("", 1).is_err());
        assert!(BatchBuilder::new().fenced(&"x".repeat(256), 1).is_err());
    }
}
