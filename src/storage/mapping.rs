//! A segment file's read-only shared memory map, and all of storage's
//! `unsafe` code.
//!
//! Nothing writes through a map: the log's single writer `pwrite`s batches
//! into the file (`segment.rs`), and on Linux the page cache makes those
//! bytes visible through every shared map of the file. Soundness rests on
//! one rule that the segment and log code keep (and assert): bytes below a
//! segment's *published length* are never written again. The writer
//! appends only above it, publishes a batch (a `Release` store of the
//! length) after its `pwrite` returned, and a sealed file is trimmed to
//! exactly that length. So:
//!
//! - [`SegmentMap::prefix`] hands out `&[u8]` of the published bytes, tied
//!   to the borrow of the map;
//! - [`SegmentMap::bytes`] hands out `Bytes` of them that keep the map alive
//!   (an `Arc`) for as long as any reader holds them.
//!
//! Callers pass lengths that are published (or, during recovery, a map no
//! reader can see yet); every function checks its range against the map.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::StorageError;

/// A shared, read-only map of one segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap(MmapRaw);

impl SegmentMap {
    /// Maps the first `len` bytes of `file`, shared and read-only. The map
    /// may reach past the file's end (an active segment's map covers its
    /// capacity); only written, published bytes are ever read.
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
