//! Small newtypes shared by the wire, the broker and storage, so that an
//! offset is never confused with a byte position or a partition number.

use std::fmt;

/// The position of a record in a partition's log: the first record ever
/// appended has offset 0 and every record after it the next integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `count` records after this one.
    ///
    /// Panics on overflow: 2^64 records cannot be reached by any log, so
    /// reaching it means an offset was computed from corrupt input that
    /// should have been rejected earlier.
    #[inline]
    pub fn plus(self, count: u64) -> Offset {
        match self.0.checked_add(count) {
            Some(next) => Offset(next),
            None => panic!("offset overflow: {} + {}", self.0, count),
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The partition a keyed record goes to: CRC-32 (IEEE) of the key modulo
/// the partition count. The broker and every client use this one function,
/// so a key lands in the same partition whoever routes it.
///
/// `partitions` must be at least 1.
#[inline]
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    PartitionId(crc32fast::hash(key) % partitions.max(1))
}

/// The index of a partition within its topic, counted from 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
