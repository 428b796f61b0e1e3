//! A segment file's shared memory map, and all of storage's `unsafe` code.
//!
//! Soundness rests on one rule that the segment and log code keep (and
//! assert): bytes below a segment's *published length* are never written
//! again. The log appends only above it, under its writer lock, and a sealed
//! file is trimmed to exactly that length. So:
//!
//! - [`SegmentMap::prefix`] hands out `&[u8]` of the published bytes, tied
//!   to the borrow of the map;
//! - [`SegmentMap::bytes`] hands out `Bytes` of them that keep the map alive
//!   (an `Arc`) for as long as any reader holds them;
//! - [`SegmentMap::write_batch`] copies a batch above the published length,
//!   which only the single writer does.
//!
//! Callers pass lengths that are published (or, during recovery, a map no
//! reader can see yet); every function checks its range against the map.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use spool_protocol::batch::{set_base_offset, HEADER_LEN_V1};
use spool_protocol::Offset;

use super::faults;
use super::StorageError;

/// A shared, writable map of one segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap(MmapRaw);

impl SegmentMap {
    /// Maps the first `len` bytes of `file`, shared and writable.
    pub(crate) fn map_rw(file: &File, len: u64, path: &Path) -> Result<SegmentMap, StorageError> {
        MmapOptions::new()
            .len(len as usize)
            .map_raw(file)
            .map(SegmentMap)
            .map_err(|e| StorageError::io(path, e))
    }

    /// Maps the first `len` bytes of a sealed `file`, read-only.
    pub(crate) fn map_ro(file: &File, len: u64, path: &Path) -> Result<SegmentMap, StorageError> {
        MmapOptions::new()
            .len(len as usize)
            .map_raw_read_only(file)
            .map(SegmentMap)
            .map_err(|e| StorageError::io(path, e))
    }

    /// memmap2 cannot map zero bytes: an empty segment gets an anonymous
    /// one-page map that no read looks into (its published length is 0).
    pub(crate) fn empty(path: &Path) -> Result<SegmentMap, StorageError> {
        MmapOptions::new()
            .len(1)
            .map_anon()
            .map(|m| SegmentMap(MmapRaw::from(m)))
            .map_err(|e| StorageError::io(path, e))
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The first `len` bytes, which the caller knows are published (or not
    /// yet visible to any reader, during recovery).
    pub(crate) fn prefix(&self, len: usize) -> &[u8] {
        assert!(
            len <= self.len(),
            "prefix {len} past the map's {}",
            self.len()
        );
        // SAFETY: inside the map (checked); published bytes are never written
        // again (module docs), so no write races this shared borrow, whose
        // lifetime is tied to the map's.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), len) }
    }

    /// `len` published bytes from `start`, as `Bytes` that keep the map
    /// alive: the zero-copy slice a read hands to a consumer or the socket.
    pub(crate) fn bytes(self: &Arc<Self>, start: usize, len: usize) -> Bytes {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len()),
            "slice {start}+{len} past the map's {}",
            self.len()
        );
        Bytes::from_owner(MapSlice {
            map: self.clone(),
            start,
            len,
        })
    }

    /// Copies a validated batch to `pos` and stamps its base offset. Only
    /// the segment's single writer calls this, above the published length;
    /// the caller publishes the bytes afterwards.
    pub(crate) fn write_batch(&self, pos: usize, batch: &[u8], base: Offset) {
        assert!(
            batch.len() >= HEADER_LEN_V1,
            "a batch has at least a header"
        );
        assert!(
            pos.checked_add(batch.len())
                .is_some_and(|end| end <= self.len()),
            "write {pos}+{} past the map's {}",
            batch.len(),
            self.len()
        );
        // SAFETY: inside the map (checked); above the published length, so
        // no reader looks at these bytes, and the log's writer lock makes this
        // the only writer. The mutable borrow ends before publication.
        unsafe {
            let dst = self.0.as_mut_ptr().add(pos);
            std::ptr::copy_nonoverlapping(batch.as_ptr(), dst, batch.len());
            set_base_offset(std::slice::from_raw_parts_mut(dst, HEADER_LEN_V1), base);
        }
    }

    /// Drops this process's mappings of the pages in `start..start + len`.
    /// On a shared file map the contents (dirty or not) stay in the page
    /// cache and fault back in on the next access, so readers see no change.
    pub(crate) fn release(&self, start: usize, len: usize) -> io::Result<()> {
        // SAFETY: MADV_DONTNEED on a shared file mapping only unmaps pages;
        // their contents are kept by the page cache (see above). memmap2
        // checks the range against the map.
        unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        }
    }

    /// Asks the kernel to fault in the pages of a range about to be written
    /// (a hint; old kernels refuse it and nothing changes).
    pub(crate) fn prefault_for_write(&self, start: usize, len: usize) {
        let _ = self
            .0
            .advise_range(memmap2::Advice::PopulateWrite, start, len);
    }

    /// Flushes a range to the file (`msync`), through the fault seam.
    pub(crate) fn flush(&self, path: &Path, start: usize, len: usize) -> io::Result<()> {
        faults::flush_map(&self.0, path, start, len)
    }
}

/// A published slice of a map, owned so that `Bytes` can borrow it.
struct MapSlice {
    map: Arc<SegmentMap>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        // Range checked when the slice was made; the `Arc` keeps the map.
        &self.map.prefix(self.start + self.len)[self.start..]
    }
}
