//! The sparse offset index of one segment: every `index_interval_bytes` of
//! data, one entry mapping a batch's offset (relative to the segment's base)
//! to its byte position, so a read seeks close to its offset and scans only a
//! few batches.
//!
//! Each entry also carries the largest record timestamp of the batches
//! *before* it in the segment. That running maximum never decreases, so a
//! timestamp lookup binary-searches it for the last entry before which no
//! record can match, and scans at most one index interval from there: the
//! sparse offset index doubles as a time index (Kafka keeps a separate
//! `.timeindex`; one file is enough here).
//!
//! On disk (`<base>.index`) the entries are followed by a footer that records
//! the segment length they describe and a CRC. An index whose footer does not
//! check out, or that describes a different segment length, is stale and is
//! rebuilt by scanning the segment: the index is an accelerator, never the
//! source of truth.

use std::fs;
use std::path::Path;

use super::StorageError;

/// One index entry: the batch starting at `position` has base offset
/// `segment base + relative_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset relative to the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch within the segment file.
    pub position: u32,
    /// Largest record timestamp of every batch before this one in the
    /// segment (`i64::MIN` if none).
    pub max_timestamp_before_ms: i64,
}

const ENTRY_LEN: usize = 16;
const FOOTER_MAGIC: u32 = 0x5850_5349; // "ISPX" little-endian
/// Version 2 added `max_timestamp_before_ms`; a version-1 file is stale
/// and rebuilt from its segment like any other.
const FOOTER_VERSION: u32 = 2;
/// magic u32, version u32, segment_len u64, entry_count u32, crc u32.
const FOOTER_LEN: usize = 24;

/// Finds the entry with the greatest relative offset `<= relative` whose
/// batch starts below byte `limit` (entries of the active segment may run
/// ahead of the length a reader was allowed to see), i.e. the batch to start
/// scanning from. `None` means scan from position 0. Both conditions are
/// monotone over the entries, so one binary search serves.
pub fn lookup(entries: &[IndexEntry], relative: u32, limit: u64) -> Option<IndexEntry> {
    let idx =
        entries.partition_point(|e| e.relative_offset <= relative && u64::from(e.position) < limit);
    idx.checked_sub(1).map(|i| entries[i])
}

/// Where a search for the first record at or after `timestamp_ms` starts:
/// the last entry before which every batch's timestamps are smaller (the
/// running maximum is monotone, so one binary search), among the entries
/// whose batch starts below byte `limit`. `None`: from the segment's start.
pub fn lookup_time(entries: &[IndexEntry], timestamp_ms: i64, limit: u64) -> Option<IndexEntry> {
    let idx = entries.partition_point(|e| {
        e.max_timestamp_before_ms < timestamp_ms && u64::from(e.position) < limit
    });
    idx.checked_sub(1).map(|i| entries[i])
}

/// Loads an index file, returning `None` if it is missing, torn, or does
/// not describe a segment of exactly `segment_len` bytes.
pub fn load(path: &Path, segment_len: u64) -> Option<Vec<IndexEntry>> {
    let bytes = fs::read(path).ok()?;
    decode(&bytes, segment_len)
}

fn decode(bytes: &[u8], segment_len: u64) -> Option<Vec<IndexEntry>> {
    if bytes.len() < FOOTER_LEN || (bytes.len() - FOOTER_LEN) % ENTRY_LEN != 0 {
        return None;
    }
    let (body, footer) = bytes.split_at(bytes.len() - FOOTER_LEN);
    let u32_at = |b: &[u8], p: usize| u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]);
    let magic = u32_at(footer, 0);
    let version = u32_at(footer, 4);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&footer[8..16]);
    let stored_len = u64::from_le_bytes(len_bytes);
    let count = u32_at(footer, 16) as usize;
    let crc = u32_at(footer, 20);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher.update(&footer[..20]);
    if magic != FOOTER_MAGIC
        || version != FOOTER_VERSION
        || stored_len != segment_len
        || count * ENTRY_LEN != body.len()
        || hasher.finalize() != crc
    {
        return None;
    }
    let entries: Vec<IndexEntry> = body
        .chunks_exact(ENTRY_LEN)
        .map(|c| {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&c[8..16]);
            IndexEntry {
                relative_offset: u32_at(c, 0),
                position: u32_at(c, 4),
                max_timestamp_before_ms: i64::from_le_bytes(ts),
            }
        })
        .collect();
    // Entries must grow (offsets and positions strictly, the running
    // timestamp maximum never shrinks) and point inside the segment;
    // anything else is a bug or corruption, and rebuilding is always safe.
    let ordered = entries.windows(2).all(|w| {
        w[0].relative_offset < w[1].relative_offset
            && w[0].position < w[1].position
            && w[0].max_timestamp_before_ms <= w[1].max_timestamp_before_ms
    });
    let in_bounds = entries.iter().all(|e| u64::from(e.position) < segment_len);
    (ordered && in_bounds).then_some(entries)
}

/// Writes the index atomically, so a crash leaves the old file or the new.
pub fn store(path: &Path, entries: &[IndexEntry], segment_len: u64) -> Result<(), StorageError> {
    let mut bytes = Vec::with_capacity(entries.len() * ENTRY_LEN + FOOTER_LEN);
    for e in entries {
        bytes.extend_from_slice(&e.relative_offset.to_le_bytes());
        bytes.extend_from_slice(&e.position.to_le_bytes());
        bytes.extend_from_slice(&e.max_timestamp_before_ms.to_le_bytes());
    }
    let body_len = bytes.len();
    bytes.extend_from_slice(&FOOTER_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&FOOTER_VERSION.to_le_bytes());
    bytes.extend_from_slice(&segment_len.to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&bytes[..body_len + 20]);
    bytes.extend_from_slice(&crc.to_le_bytes());

    // Unsynced: a torn or lost index fails its footer check on load and is
    // rebuilt from the segment.
    super::atomic_file::write_atomic(path, &bytes, super::atomic_file::Durability::Unsynced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<IndexEntry> {
        (0..10)
            .map(|i| IndexEntry {
                relative_offset: i * 7,
                position: i * 4096,
                max_timestamp_before_ms: i64::from(i) * 1000 - 3000,
            })
            .collect()
    }

    #[test]
    fn round_trips_and_rejects_stale_or_torn_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        store(&path, &entries(), 50_000).unwrap();
        assert_eq!(load(&path, 50_000), Some(entries()));
        // Describes a different segment length: stale.
        assert_eq!(load(&path, 50_001), None);
        // Torn: any truncation or flipped byte is rejected.
        let bytes = fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 50_000), None, "accepted cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[3] ^= 0x40;
        assert_eq!(decode(&flipped, 50_000), None);
    }

    #[test]
    fn lookup_finds_floor_entry() {
        let e = entries();
        assert_eq!(lookup(&e, 0, u64::MAX), Some(e[0]));
        assert_eq!(lookup(&e, 6, u64::MAX), Some(e[0]));
        assert_eq!(lookup(&e, 7, u64::MAX), Some(e[1]));
        assert_eq!(lookup(&e, 1000, u64::MAX), Some(e[9]));
        assert_eq!(lookup(&[], 5, u64::MAX), None);
        // An entry at or past the readable limit is not used.
        assert_eq!(lookup(&e, 1000, 3 * 4096), Some(e[2]));
        assert_eq!(lookup(&e, 1000, 0), None);
    }
}
