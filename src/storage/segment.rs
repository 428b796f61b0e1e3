//! One segment file: batches back to back, named by the offset of its first
//! record (`00000000000000000000.log`), written with `pwritev` and read
//! through a memory map.
//!
//! The active segment is created sparse at its full capacity and mapped
//! once, read-only. Each batch is written into the file with one `pwritev`
//! (the batch, with its base offset patched in a copy of its header), which
//! copies every byte once into the page cache. Copying into a shared
//! writable map instead costs a page fault per fresh page and needs the
//! blocks reserved ahead (a store into an unbacked page of a full disk is a
//! SIGBUS, not an error); measured with `cargo bench --bench storage --
//! append`, the write is the faster of the two for every batch size (see
//! the README's performance notes). A full disk fails the write with
//! `ENOSPC`, a clean error, and the batch is not published.
//!
//! A sealed segment is trimmed to its exact length, never changes again,
//! and is mapped only while something reads it: [`Segment::evict_if_idle`]
//! unmaps it (and drops its index) when it goes cold, so resident memory
//! follows the working set, not the data set.
//!
//! Bytes below a segment's published length are immutable; this is what
//! makes handing out `Bytes` that borrow the map sound.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use bytes::Bytes;
use spool_protocol::batch::{self, BatchHeader, HEADER_LEN_V1};
use spool_protocol::Offset;

use super::faults;
use super::index::{self, IndexEntry};
use super::mapping::SegmentMap;
use super::{monotonic_ms, StorageError};

const PAGE_BYTES: u64 = 4096;
/// What an append into a recycled file writes after its batch: an all-zero
/// header, which a scan takes for the end of the data.
const END_MARKER: [u8; HEADER_LEN_V1] = [0; HEADER_LEN_V1];

/// The file name of the segment starting at `base`.
pub fn log_file_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

/// Parses a segment file name back into its base offset.
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// A segment as the log and its readers see it.
pub struct Segment {
    base: Offset,
    log_path: PathBuf,
    index_path: PathBuf,
    /// Bytes of whole batches; published with `Release` after the bytes
    /// below it are final.
    len: AtomicU64,
    /// Bytes known to be on stable storage.
    flushed_len: AtomicU64,
    /// Offset after the last batch.
    end_offset: AtomicU64,
    /// `len` and `end_offset` as one pair, for the flush: the durable mark
    /// needs the exact offset that ends at the length it flushed.
    published: Mutex<Published>,
    sealed: AtomicBool,
    map: Mutex<Option<Arc<SegmentMap>>>,
    /// The active segment's file, shared with its writer, for the flusher's
    /// `fdatasync`; `None` once sealed.
    file: Mutex<Option<Arc<File>>>,
    index: RwLock<Vec<IndexEntry>>,
    last_access_ms: AtomicU64,
    /// Bytes below this were handed back to the page cache with
    /// `MADV_DONTNEED` (active segment only).
    released: AtomicU64,
    /// Bytes below this were given to the disk to write (`interval` only:
    /// see [`Segment::start_writeback`]); a flush still has to wait for
    /// them.
    writeback_from: AtomicU64,
}

/// A batch boundary of a segment: its byte position and the offset of the
/// batch that starts there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Byte position.
    pub len: u64,
    /// Offset.
    pub end_offset: Offset,
}

/// The writer's half of the active segment: only the partition's append
/// path, holding the log's writer lock, touches it.
pub struct ActiveFile {
    file: Arc<File>,
    capacity: u64,
    pos: u64,
    next_offset: Offset,
    bytes_since_index: u64,
    index_interval_bytes: u64,
    /// Largest record timestamp appended to the segment so far.
    max_timestamp_ms: i64,
    /// The file holds older bytes past `pos` (a recycled file): every
    /// append also writes a zero header after its batch, so that recovery
    /// finds the end of the data there (see `recycle.rs`).
    stale_tail: bool,
}

/// What recovery found in the active segment.
#[derive(Debug)]
pub struct Recovered {
    /// Offset after the last valid batch.
    pub next_offset: Offset,
    /// Where and why the tail was cut, if it was.
    pub truncated: Option<(u64, String)>,
    /// Damaged batches kept in place (unreadable) because valid ones follow.
    pub damaged: Vec<Damaged>,
}

impl Segment {
    fn new(dir: &Path, base: Offset, len: u64, end_offset: Offset, sealed: bool) -> Segment {
        let log_path = dir.join(log_file_name(base));
        let index_path = log_path.with_extension("index");
        Segment {
            base,
            log_path,
            index_path,
            len: AtomicU64::new(len),
            flushed_len: AtomicU64::new(len),
            end_offset: AtomicU64::new(end_offset.0),
            published: Mutex::new(Published { len, end_offset }),
            sealed: AtomicBool::new(sealed),
            map: Mutex::new(None),
            file: Mutex::new(None),
            index: RwLock::new(Vec::new()),
            last_access_ms: AtomicU64::new(monotonic_ms()),
            released: AtomicU64::new(0),
            writeback_from: AtomicU64::new(len),
        }
    }

    /// Base offset: the offset of the first record.
    pub fn base(&self) -> Offset {
        self.base
    }

    /// Offset after the last batch written to this segment.
    pub fn end_offset(&self) -> Offset {
        Offset(self.end_offset.load(Ordering::Acquire))
    }

    /// Bytes of whole batches.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Bytes known to be on stable storage.
    pub fn flushed_len(&self) -> u64 {
        self.flushed_len.load(Ordering::Acquire)
    }

    /// True once the segment is sealed and will never change.
    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Path of the segment file.
    pub fn path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the segment currently holds a memory map.
    pub fn is_mapped(&self) -> bool {
        self.map.lock().is_some()
    }

    /// Last modification time of the file, for retention by age.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        fs::metadata(&self.log_path).and_then(|m| m.modified()).ok()
    }

    /// A sealed segment found on disk at open. Nothing is read or mapped
    /// until the first read touches it.
    pub fn open_sealed(
        dir: &Path,
        base: Offset,
        end_offset: Offset,
    ) -> Result<Segment, StorageError> {
        let path = dir.join(log_file_name(base));
        let len = fs::metadata(&path)
            .map_err(|e| StorageError::io(&path, e))?
            .len();
        Ok(Segment::new(dir, base, len, end_offset, true))
    }

    /// Creates a new, empty active segment. `capacity` is the logical size
    /// of the sparse file and the map; no block is allocated yet.
    pub fn create(
        dir: &Path,
        base: Offset,
        capacity: u64,
        index_interval_bytes: u32,
    ) -> Result<(Arc<Segment>, ActiveFile), StorageError> {
        let segment = Segment::new(dir, base, 0, base, false);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&segment.log_path)
            .map_err(|e| StorageError::io(&segment.log_path, e))?;
        Segment::activate(segment, file, capacity, index_interval_bytes, false)
    }

    /// Creates a new, empty active segment in the file at `recycled` (a
    /// dropped segment's, see `recycle.rs`), renamed to the new segment's
    /// name. Its old bytes stay until appends overwrite them.
    pub fn create_recycled(
        dir: &Path,
        base: Offset,
        capacity: u64,
        index_interval_bytes: u32,
        recycled: &Path,
    ) -> Result<(Arc<Segment>, ActiveFile), StorageError> {
        let segment = Segment::new(dir, base, 0, base, false);
        let path = segment.log_path.clone();
        if path.exists() {
            return Err(StorageError::io(
                &path,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        fs::rename(recycled, &path).map_err(|e| StorageError::io(&path, e))?;
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(StorageError::io(&path, e));
            }
        };
        Segment::activate(segment, file, capacity, index_interval_bytes, true)
    }

    /// Sizes and maps a new segment's `file`; removes it on failure.
    fn activate(
        segment: Segment,
        file: File,
        capacity: u64,
        index_interval_bytes: u32,
        stale_tail: bool,
    ) -> Result<(Arc<Segment>, ActiveFile), StorageError> {
        let path = segment.log_path.clone();
        let mapped = (|| {
            file.set_len(capacity)
                .map_err(|e| StorageError::io(&path, e))?;
            SegmentMap::map_ro(&file, capacity, &path)
        })();
        let map = match mapped {
            Ok(map) => Arc::new(map),
            Err(err) => {
                // Leave no half-made segment behind for recovery to trip over.
                let _ = fs::remove_file(&path);
                return Err(err);
            }
        };
        let file = Arc::new(file);
        *segment.file.lock() = Some(file.clone());
        let active = ActiveFile {
            file,
            capacity,
            pos: 0,
            next_offset: segment.base,
            bytes_since_index: u64::MAX,
            index_interval_bytes: u64::from(index_interval_bytes),
            max_timestamp_ms: i64::MIN,
            stale_tail,
        };
        *segment.map.lock() = Some(map);
        Ok((Arc::new(segment), active))
    }

    /// The segment itself if nothing but `segment` holds it or a slice of
    /// its map, which is what makes writing its file again sound (see
    /// `mapping.rs`): nothing else can reach its bytes. Else `segment`.
    pub fn unshared(segment: Arc<Segment>) -> Result<Segment, Arc<Segment>> {
        let segment = Arc::try_unwrap(segment)?;
        let map_shared = segment
            .map
            .lock()
            .as_ref()
            .is_some_and(|map| Arc::strong_count(map) > 1);
        if map_shared {
            return Err(Arc::new(segment));
        }
        Ok(segment)
    }

    /// Renames the (dropped, unshared) segment's file to `to` for reuse and
    /// deletes its index.
    pub fn move_for_reuse(self, to: &Path) -> Result<(), StorageError> {
        fs::rename(&self.log_path, to).map_err(|e| StorageError::io(&self.log_path, e))?;
        self.remove_index()
    }

    /// Opens the last segment of a log for appending and repairs its tail.
    ///
    /// With `trust_index` (the broker shut down cleanly) the scan starts at
    /// the last index entry; otherwise every batch is checked from the start.
    /// Below `durable` (the durable mark: bytes a flush put on disk) a batch
    /// that fails its check is damage, kept in place and reported, and the
    /// scan goes on with the next valid batch. Whatever follows the last
    /// valid batch past it (a torn write, garbage, or stale batches beyond a
    /// hole) is cut off and zeroed, so it can never be mistaken for data
    /// later.
    pub fn recover_active(
        dir: &Path,
        base: Offset,
        min_capacity: u64,
        index_interval_bytes: u32,
        trust_index: bool,
        durable: Option<Published>,
    ) -> Result<(Arc<Segment>, ActiveFile, Recovered), StorageError> {
        let segment = Segment::new(dir, base, 0, base, false);
        let path = segment.log_path.clone();
        let io = |e| StorageError::io(&path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let capacity = file_len.max(min_capacity);
        if file_len < capacity {
            file.set_len(capacity).map_err(io)?;
        }
        let map = SegmentMap::map_ro(&file, capacity, &path)?;
        // No reader sees this file yet and nothing else writes it while we
        // scan. The scan stops where the written data does (or at the
        // durable mark, which is written data): reading a hole through a
        // map of a full tmpfs is a SIGBUS, not zeros.
        let scan_end = data_end(&file, capacity)
            .max(durable.map_or(0, |d| d.len))
            .min(capacity);
        let bytes = map.prefix(scan_end as usize);

        let mut entries = if trust_index {
            let stored = index::load(&segment.index_path, capacity).unwrap_or_default();
            // Only the last entry's batch needs re-checking; the scan
            // below verifies everything after it.
            match stored.last() {
                Some(last) if entry_matches(bytes, base, last) => stored,
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let (start_pos, start_offset, max_before) = match entries.pop() {
            Some(e) => (
                u64::from(e.position),
                base.plus(u64::from(e.relative_offset)),
                e.max_timestamp_before_ms,
            ),
            None => (0, base, i64::MIN),
        };
        // A mark past the file's end, or behind where the scan starts, cannot
        // describe this file: ignore it.
        let durable = durable
            .filter(|d| d.len <= capacity && d.len >= start_pos && d.end_offset >= start_offset);
        let scan = scan(
            bytes,
            ScanFrom {
                pos: start_pos,
                expected: start_offset,
                max_timestamp_ms: max_before,
            },
            base,
            index_interval_bytes,
            &mut entries,
            durable,
        );
        drop(map);

        // Cut and zero everything after the last valid batch: truncating to
        // the valid length and extending again turns the rest into a hole.
        // After a clean shutdown that ended on a zero header the rest is
        // known to be zeros already (or, in a recycled file, older bytes
        // behind the zero header the last append wrote), and the fsync can
        // be skipped. After a
        // crash, the fsync also makes durable whatever the dead process left
        // in the page cache, which is now served as data.
        let cut = scan.stop.is_some() || !trust_index;
        if cut {
            file.set_len(scan.end_pos).map_err(io)?;
            file.set_len(capacity).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // A recycled file's older bytes past the zero header that ended the
        // scan (only a cut removes them): appends go on marking the end.
        let stale_tail =
            !cut && data_end(&file, capacity) > scan.end_pos.next_multiple_of(PAGE_BYTES);
        let map = Arc::new(SegmentMap::map_ro(&file, capacity, &path)?);

        segment.len.store(scan.end_pos, Ordering::Release);
        segment.flushed_len.store(scan.end_pos, Ordering::Release);
        segment
            .end_offset
            .store(scan.next_offset.0, Ordering::Release);
        *segment.published.lock() = Published {
            len: scan.end_pos,
            end_offset: scan.next_offset,
        };
        *segment.index.write() = entries;
        *segment.map.lock() = Some(map);
        let file = Arc::new(file);
        *segment.file.lock() = Some(file.clone());
        let _ = fs::remove_file(&segment.index_path);

        let active = ActiveFile {
            file,
            capacity,
            pos: scan.end_pos,
            next_offset: scan.next_offset,
            bytes_since_index: scan.bytes_since_index,
            index_interval_bytes: u64::from(index_interval_bytes),
            max_timestamp_ms: scan.max_timestamp_ms,
            stale_tail,
        };
        let recovered = Recovered {
            next_offset: scan.next_offset,
            truncated: scan.stop.map(|reason| (scan.end_pos, reason)),
            damaged: scan.damaged,
        };
        Ok((Arc::new(segment), active, recovered))
    }

    /// Reads whole batches starting with the one that holds `offset`, up to
    /// `max_bytes` (at least one batch), never past `limit_len` bytes and
    /// never a batch that starts after offset `through`. Every batch
    /// returned has passed its CRC check. `None` if the segment holds
    /// nothing at or after `offset` below `limit_len`.
    pub fn read(
        &self,
        offset: Offset,
        through: Offset,
        max_bytes: u64,
        limit_len: u64,
    ) -> Result<Option<(Bytes, Offset)>, StorageError> {
        if offset < self.base {
            return Ok(None);
        }
        self.last_access_ms.store(monotonic_ms(), Ordering::Relaxed);
        let map = self.mapped()?;
        let limit = limit_len.min(self.len()).min(map.len() as u64);
        let relative = u32::try_from(offset.0 - self.base.0).unwrap_or(u32::MAX);
        let (mut pos, mut expected) = self.walk_start(relative, limit);
        // `limit` is at most the published length and the map's length.
        let bytes = map.prefix(limit as usize);

        let mut first: Option<u64> = None;
        while pos < limit {
            if first.is_some() && expected > through {
                // Not asked for: not even CRC-checked.
                break;
            }
            let header = match self.checked_header(bytes, pos, expected) {
                Ok(h) => h,
                Err(err) if first.is_none() => match step_over_damage(bytes, pos, expected)
                    .or_else(|| resync(bytes, pos, expected, self.resync_bound(pos, limit)?))
                {
                    // A damaged batch before the one asked for: only its
                    // own offsets are unreadable.
                    Some((next_pos, next)) if next <= offset && next_pos <= limit => {
                        tracing::debug!(error = %err, "stepping over a damaged batch");
                        pos = next_pos;
                        expected = next;
                        continue;
                    }
                    _ => return Err(err),
                },
                Err(err) => {
                    // Serve what was good before the bad batch; the next read
                    // starts at the bad one and reports it.
                    tracing::debug!(error = %err, "stopping read before corrupt batch");
                    break;
                }
            };
            let len = u64::from(header.batch_len);
            if header.next_offset() <= offset {
                pos += len;
                expected = header.next_offset();
                continue;
            }
            let begin = *first.get_or_insert(pos);
            if pos > begin && pos + len - begin > max_bytes {
                break;
            }
            pos += len;
            expected = header.next_offset();
            if pos - begin >= max_bytes {
                break;
            }
        }
        if first.is_none() && offset < self.end_offset() && pos >= limit && limit == self.len() {
            // The file ends before the offsets it should hold (a sealed
            // segment cut short). Saying "nothing here" would look like the
            // end of the log to a consumer; this is damage, so report it.
            return Err(StorageError::Corrupt {
                path: self.log_path.clone(),
                position: pos,
                offset: expected,
                reason: format!(
                    "segment data ends at byte {pos}, before offset {offset} (segment should end at offset {})",
                    self.end_offset()
                ),
            });
        }
        Ok(first.map(|begin| (map.bytes(begin as usize, (pos - begin) as usize), expected)))
    }

    /// Where a walk to the batch holding relative offset `relative` starts:
    /// the index entry at or before it among those below byte `limit` (a
    /// batch position and its offset), else the segment's start.
    fn walk_start(&self, relative: u32, limit: u64) -> (u64, Offset) {
        match index::lookup(&self.index.read(), relative, limit) {
            Some(e) => (
                u64::from(e.position),
                self.base.plus(u64::from(e.relative_offset)),
            ),
            None => (0, self.base),
        }
    }

    /// The batch boundary at or before `offset`: the byte position and
    /// base offset of the batch holding `offset` (or of the end, for the
    /// segment's end offset). Walks from the index entry before it,
    /// checking each batch.
    pub fn boundary_at(&self, offset: Offset) -> Result<Published, StorageError> {
        let map = self.mapped()?;
        let len = self.len().min(map.len() as u64);
        let relative = u32::try_from(offset.0.saturating_sub(self.base.0)).unwrap_or(u32::MAX);
        let (mut pos, mut expected) = self.walk_start(relative, len);
        let bytes = map.prefix(len as usize);
        while pos < len {
            let header = self.checked_header(bytes, pos, expected)?;
            if header.next_offset() > offset {
                break;
            }
            pos += u64::from(header.batch_len);
            expected = header.next_offset();
        }
        Ok(Published {
            len: pos,
            end_offset: expected,
        })
    }

    /// How far a read may search for valid data after damage at `pos`
    /// that no length leads over: to the next index entry (a batch
    /// boundary known when it was written), else to the segment's end when
    /// the read may see all of it.
    fn resync_bound(&self, pos: u64, limit: u64) -> Option<Published> {
        let next_entry = self
            .index
            .read()
            .iter()
            .find(|e| u64::from(e.position) > pos)
            .copied();
        match next_entry {
            Some(e) if u64::from(e.position) <= limit => Some(Published {
                len: u64::from(e.position),
                end_offset: self.base.plus(u64::from(e.relative_offset)),
            }),
            Some(_) => None,
            None => {
                let published = *self.published.lock();
                (limit >= published.len).then_some(published)
            }
        }
    }

    /// The offset from which a search for the first record at or after
    /// `timestamp_ms` must scan this segment: no record before it can match
    /// (see `index::lookup_time`). Maps the segment if needed.
    pub fn time_search_start(&self, timestamp_ms: i64) -> Result<Offset, StorageError> {
        self.mapped()?;
        let entries = self.index.read();
        Ok(
            match index::lookup_time(&entries, timestamp_ms, self.len()) {
                Some(e) => self.base.plus(u64::from(e.relative_offset)),
                None => self.base,
            },
        )
    }

    /// Parses and CRC-checks the batch at `pos`, which must start at
    /// `expected`.
    fn checked_header(
        &self,
        bytes: &[u8],
        pos: u64,
        expected: Offset,
    ) -> Result<BatchHeader, StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: self.log_path.clone(),
            position: pos,
            offset: expected,
            reason,
        };
        check_batch(&bytes[pos as usize..], expected).map_err(corrupt)
    }

    /// The segment's map, mapping the file (and loading or rebuilding its
    /// index) on first use after open or eviction.
    fn mapped(&self) -> Result<Arc<SegmentMap>, StorageError> {
        let mut slot = self.map.lock();
        if let Some(map) = slot.as_ref() {
            return Ok(map.clone());
        }
        let path = &self.log_path;
        let file = File::open(path).map_err(|e| StorageError::io(path, e))?;
        let len = self.len();
        let map = if len == 0 {
            SegmentMap::empty(path)?
        } else {
            SegmentMap::map_ro(&file, len, path)?
        };
        let map = Arc::new(map);
        let entries = match index::load(&self.index_path, len) {
            Some(entries) => entries,
            None => self.rebuild_index(&map, len),
        };
        *self.index.write() = entries;
        *slot = Some(map.clone());
        Ok(map)
    }

    /// Scans a sealed segment to rebuild its missing or stale index.
    fn rebuild_index(&self, map: &SegmentMap, len: u64) -> Vec<IndexEntry> {
        // A sealed segment's bytes never change; `len` is the file length
        // the map was made with.
        let bytes = map.prefix(len as usize);
        let mut entries = Vec::new();
        let from = ScanFrom {
            pos: 0,
            expected: self.base,
            max_timestamp_ms: i64::MIN,
        };
        // Every byte of a sealed segment was flushed when it was sealed, and
        // its end offset is the next segment's base: damage anywhere in it
        // can be stepped over to the next valid batch.
        let whole = Published {
            len,
            end_offset: self.end_offset(),
        };
        let scan = scan(bytes, from, self.base, 4096, &mut entries, Some(whole));
        for d in &scan.damaged {
            tracing::error!(
                path = %self.log_path.display(),
                position = d.position,
                offsets = %format!("{}..{}", d.base, d.next),
                reason = %d.reason,
                "damaged batch in a sealed segment: its offsets are reported as corrupt, never served",
            );
        }
        if scan.next_offset == self.end_offset() {
            if let Err(err) = index::store(&self.index_path, &entries, len) {
                tracing::warn!(path = %self.index_path.display(), error = %err, "could not write rebuilt index");
            }
        } else {
            // Reads of the range past the bad batch report it as corrupt.
            tracing::error!(
                path = %self.log_path.display(),
                position = scan.end_pos,
                valid_until_offset = %scan.next_offset,
                expected_end_offset = %self.end_offset(),
                reason = scan.stop.as_deref().unwrap_or("ends early"),
                "sealed segment is damaged; the damaged range will be reported, not served",
            );
        }
        entries
    }

    /// Drops this process's page mappings of the written part of the
    /// active segment except its newest `keep_bytes`, so that resident
    /// memory does not grow with every byte a partition takes. The data
    /// stays in the page cache (dirty pages included: this is a shared file
    /// mapping), and readers fault pages back in from there. Returns the
    /// bytes released.
    pub fn release_resident(&self, keep_bytes: u64) -> u64 {
        let slot = self.map.lock();
        let Some(map) = slot.as_ref() else { return 0 };
        self.release_below(map, self.len().saturating_sub(keep_bytes))
    }

    /// Unmaps this process's pages of `released..upto` (rounded down to a
    /// page). Besides bounding resident memory, this makes flushes cheap:
    /// writeback write-protects every dirty page that is still mapped, one
    /// TLB-shootdown IPI per page, while unmapping a range costs one.
    fn release_below(&self, map: &SegmentMap, upto: u64) -> u64 {
        let upto = upto & !(PAGE_BYTES - 1);
        let from = self.released.load(Ordering::Relaxed);
        if upto <= from || upto > map.len() as u64 {
            return 0;
        }
        match map.release(from as usize, (upto - from) as usize) {
            Ok(()) => {
                self.released.fetch_max(upto, Ordering::Relaxed);
                upto - from
            }
            Err(_) => 0,
        }
    }

    /// Unmaps a cold sealed segment. Returns true if it was unmapped.
    pub fn evict_if_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        if !self.is_sealed()
            || now_ms.saturating_sub(self.last_access_ms.load(Ordering::Relaxed)) < idle_ms
        {
            return false;
        }
        let mut slot = self.map.lock();
        if slot.take().is_none() {
            return false;
        }
        *self.index.write() = Vec::new();
        true
    }

    /// Seals the segment: trims the file to its exact length and writes its
    /// index. With `durable`, the data and the trim are fsynced first.
    pub fn seal(&self, active: ActiveFile, durable: bool) -> Result<(), StorageError> {
        let path = &self.log_path;
        let io = |e| StorageError::io(path, e);
        debug_assert_eq!(
            active.pos,
            self.len(),
            "writer and published length disagree"
        );
        if let Some(map) = self.map.lock().as_ref() {
            self.release_below(map, active.pos);
        }
        active.file.set_len(active.pos).map_err(io)?;
        if durable {
            faults::sync_all(&active.file, path).map_err(io)?;
        }
        self.flushed_len.store(active.pos, Ordering::Release);
        *self.file.lock() = None;
        let entries = self.index.read().clone();
        if let Err(err) = index::store(&self.index_path, &entries, active.pos) {
            // The index is only an accelerator: it is rebuilt when missing.
            tracing::warn!(path = %self.index_path.display(), error = %err, "could not write index");
        }
        self.sealed.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes the active segment's index at a clean shutdown so the next open
    /// need not rescan the segment.
    pub fn checkpoint_index(&self) -> Result<(), StorageError> {
        let entries = self.index.read().clone();
        let capacity = self.map.lock().as_ref().map_or(0, |m| m.len());
        index::store(&self.index_path, &entries, capacity as u64)
    }

    /// Starts the disk writing the active segment's bytes written since the
    /// last call, if there are at least `min_bytes` of them, without
    /// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Returns
    /// the bytes handed over.
    ///
    /// Why: under `interval` the kernel would otherwise leave every
    /// appended page dirty until the flush, so the disk idles while
    /// producers fill the page cache and then has a whole interval's worth
    /// to write inside one `fdatasync`, which acknowledgements wait for once
    /// it runs past the interval. Written behind as it arrives, the data is
    /// mostly on its way when the flush comes, and the flush only waits for
    /// the rest. Durability is unchanged: only the flush counts.
    pub fn start_writeback(&self, min_bytes: u64) -> u64 {
        let len = self.published.lock().len & !(PAGE_BYTES - 1);
        let from = self
            .writeback_from
            .load(Ordering::Relaxed)
            .max(self.flushed_len())
            & !(PAGE_BYTES - 1);
        if len < from.saturating_add(min_bytes.max(1)) {
            return 0;
        }
        let Some(file) = self.file.lock().clone() else {
            return 0;
        };
        // Advice, not a promise: a failure here leaves the bytes to the
        // flush, which reports its own errors.
        if start_writeback_range(&file, from, len - from).is_err() {
            return 0;
        }
        self.writeback_from.fetch_max(len, Ordering::Relaxed);
        len - from
    }

    /// Flushes the active segment (`fdatasync`) and records the last
    /// batch boundary published before it as durable. Returns that
    /// boundary, and whether anything was flushed to reach it. Called under
    /// the log's flush lock only.
    pub fn flush(&self) -> Result<(Published, bool), StorageError> {
        let published = *self.published.lock();
        let len = published.len;
        let flushed = self.flushed_len();
        if len <= flushed {
            return Ok((published, false));
        }
        if let Some(map) = self.map.lock().clone() {
            // Readers' pages below `len` are never written again; unmapping
            // them keeps resident memory to the working set.
            self.release_below(&map, len);
        }
        let file = self.file.lock().clone();
        if let Some(file) = file {
            faults::sync_data(&file, &self.log_path)
                .map_err(|e| StorageError::io(&self.log_path, e))?;
        }
        self.flushed_len.fetch_max(len, Ordering::AcqRel);
        debug_assert!(
            self.flushed_len() <= self.len(),
            "durable past the written length"
        );
        Ok((published, true))
    }

    /// Deletes the segment's files. Readers holding a slice keep the
    /// unlinked pages until they drop it.
    pub fn delete(&self) -> Result<(), StorageError> {
        fs::remove_file(&self.log_path).map_err(|e| StorageError::io(&self.log_path, e))?;
        self.remove_index()
    }

    /// Deletes the segment's index file, if it has one.
    fn remove_index(&self) -> Result<(), StorageError> {
        match fs::remove_file(&self.index_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(&self.index_path, e)),
        }
    }
}

impl ActiveFile {
    /// Bytes that can still be appended before the segment is full.
    pub fn remaining(&self) -> u64 {
        self.capacity - self.pos
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Offset the next batch will get.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Writes a validated batch into the segment with its base offset
    /// stamped, and publishes it to readers. The caller checked that it
    /// fits. A failed write publishes nothing: the next append writes over
    /// whatever part of it landed.
    pub fn append(
        &mut self,
        segment: &Segment,
        batch_bytes: &[u8],
        header: &BatchHeader,
    ) -> Result<Offset, StorageError> {
        let len = batch_bytes.len() as u64;
        assert!(len <= self.remaining(), "append past segment capacity");
        let end_marker = if self.stale_tail {
            &END_MARKER[..(self.remaining() - len).min(END_MARKER.len() as u64) as usize]
        } else {
            &[]
        };
        // A sealed segment never changes again: readers hold slices of it.
        assert!(!segment.is_sealed(), "append to a sealed segment");
        assert!(
            batch_bytes.len() >= HEADER_LEN_V1,
            "a batch has at least a header"
        );
        let base = self.next_offset;
        let mut header_bytes = [0u8; HEADER_LEN_V1];
        header_bytes.copy_from_slice(&batch_bytes[..HEADER_LEN_V1]);
        batch::set_base_offset(&mut header_bytes, base);
        // Above the published length, by the log's single writer (module
        // docs of `mapping.rs`).
        faults::write_all_vectored_at(
            &self.file,
            &segment.log_path,
            &[&header_bytes, &batch_bytes[HEADER_LEN_V1..], end_marker],
            self.pos,
        )
        .map_err(|e| StorageError::io(&segment.log_path, e))?;
        if self.bytes_since_index >= self.index_interval_bytes {
            let entry = IndexEntry {
                relative_offset: (base.0 - segment.base.0) as u32,
                position: self.pos as u32,
                max_timestamp_before_ms: self.max_timestamp_ms,
            };
            segment.index.write().push(entry);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index = self.bytes_since_index.saturating_add(len);
        self.pos += len;
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp_ms);
        self.next_offset = base.plus(u64::from(header.record_count));
        debug_assert!(self.next_offset > base, "offsets only grow");
        // Publish the length first: whoever sees the new end offset (with
        // Acquire) then also sees a length covering its bytes, which is what
        // the flush path relies on.
        segment.len.store(self.pos, Ordering::Release);
        segment
            .end_offset
            .store(self.next_offset.0, Ordering::Release);
        *segment.published.lock() = Published {
            len: self.pos,
            end_offset: self.next_offset,
        };
        Ok(base)
    }
}

/// A batch that fails its CRC check between valid batches: damage in the
/// middle of a segment (a flipped bit), not an unfinished write. Its
/// offsets are unreadable; everything around it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    /// Byte position of the batch.
    pub position: u64,
    /// Its first offset.
    pub base: Offset,
    /// The offset after it (where the next valid batch starts).
    pub next: Offset,
    /// What is wrong with it.
    pub reason: String,
}

/// The header of the batch at the start of `rest` if it parses, passes its
/// CRC and starts at `expected`; else what is wrong with it.
fn check_batch(rest: &[u8], expected: Offset) -> Result<BatchHeader, String> {
    let header = BatchHeader::parse(rest).map_err(|e| e.to_string())?;
    batch::verify_crc(rest, &header).map_err(|e| e.to_string())?;
    if header.base_offset != expected {
        return Err(format!(
            "batch has base offset {}, not the expected {expected}",
            header.base_offset
        ));
    }
    Ok(header)
}

/// If the batch at `pos` (which should start at `expected`) fails its CRC
/// but its header still parses with that base offset, and the bytes right
/// after it by its length are a valid batch starting at the offset after
/// it, the damage is that batch's alone: where to go on. Otherwise (a
/// damaged length or count, or nothing valid after) `None`: a resync by
/// length cannot be trusted.
fn step_over_damage(bytes: &[u8], pos: u64, expected: Offset) -> Option<(u64, Offset)> {
    let header = BatchHeader::parse(bytes.get(pos as usize..)?).ok()?;
    if header.base_offset != expected {
        return None;
    }
    let next_pos = pos.checked_add(u64::from(header.batch_len))?;
    let rest = bytes.get(next_pos as usize..)?;
    let next = BatchHeader::parse(rest).ok()?;
    batch::verify_crc(rest, &next).ok()?;
    (next.base_offset == header.next_offset()).then_some((next_pos, header.next_offset()))
}

/// Where valid data resumes after damage at `pos` (which should hold the
/// batch starting at `expected`) that lies below the durable mark: the
/// first later position holding a valid batch that continues the offsets
/// and ends by the mark, else the mark itself. `None` if the mark does not
/// lie past the damage (then it is an unfinished tail after all).
fn resync(bytes: &[u8], pos: u64, expected: Offset, durable: Published) -> Option<(u64, Offset)> {
    if pos >= durable.len || durable.end_offset <= expected {
        return None;
    }
    let limit = durable.len.min(bytes.len() as u64);
    for at in pos + 1..limit {
        let rest = &bytes[at as usize..limit as usize];
        let Ok(header) = BatchHeader::parse(rest) else {
            continue;
        };
        let fits = at + u64::from(header.batch_len) <= limit;
        if fits
            && header.base_offset > expected
            && header.next_offset() <= durable.end_offset
            && batch::verify_crc(rest, &header).is_ok()
        {
            return Some((at, header.base_offset));
        }
    }
    Some((durable.len, durable.end_offset))
}

/// What a read-only check of a segment file's bytes found (`spool
/// verify`): the damaged batches recovery would keep in place, where the
/// valid batches end, the offset after them, and why the scan stopped
/// short of the end, if it did.
pub struct Checked {
    /// Damaged batches with valid batches after them.
    pub damaged: Vec<Damaged>,
    /// Byte position after the last valid batch.
    pub end_pos: u64,
    /// Offset after the last valid batch.
    pub next_offset: Offset,
    /// Why the scan stopped before the end of the bytes (other than the
    /// zeroed tail of a preallocated file).
    pub stop: Option<String>,
}

/// Checks every batch of a segment's bytes (base offset `base`) as
/// recovery would, changing nothing; `durable` as for recovery (the
/// durable mark of an active segment, the whole of a sealed one).
pub fn check_bytes(bytes: &[u8], base: Offset, durable: Option<Published>) -> Checked {
    let from = ScanFrom {
        pos: 0,
        expected: base,
        max_timestamp_ms: i64::MIN,
    };
    let scan = scan(bytes, from, base, u32::MAX, &mut Vec::new(), durable);
    Checked {
        damaged: scan.damaged,
        end_pos: scan.end_pos,
        next_offset: scan.next_offset,
        stop: scan.stop,
    }
}

/// Result of scanning a segment's batches.
struct Scan {
    end_pos: u64,
    next_offset: Offset,
    bytes_since_index: u64,
    /// Largest record timestamp of the batches scanned (and before them).
    max_timestamp_ms: i64,
    /// Why the scan stopped before the end, if it hit something other than
    /// the zeroed tail of a preallocated file or the end of the bytes.
    stop: Option<String>,
    /// Damaged batches stepped over (valid batches follow each).
    damaged: Vec<Damaged>,
}

/// Walks batches from `pos`, checking length, CRC and offset continuity,
/// appending index entries every `interval` bytes, until the first batch that
/// fails or an all-zero header. Below `durable` (bytes known to have been
/// written whole) a failure is damage instead: the scan finds the next
/// valid batch (by the damaged batch's length, else by searching for a
/// valid header, else at `durable` itself), records the range as damaged,
/// indexes the batch after it so that reads find it, and goes on.
fn scan(
    bytes: &[u8],
    from: ScanFrom,
    base: Offset,
    interval: u32,
    entries: &mut Vec<IndexEntry>,
    durable: Option<Published>,
) -> Scan {
    let ScanFrom {
        mut pos,
        mut expected,
        mut max_timestamp_ms,
    } = from;
    let interval = u64::from(interval);
    let mut since_index = u64::MAX;
    let end = bytes.len() as u64;
    let mut damaged = Vec::new();
    let stop = loop {
        if pos == end {
            break None;
        }
        let rest = &bytes[pos as usize..];
        let head = &rest[..rest.len().min(HEADER_LEN_V1)];
        let checked = if head.iter().all(|&b| b == 0) {
            match durable {
                Some(d) if pos < d.len => Err("zeros where a batch was written".to_string()),
                _ => break None,
            }
        } else {
            check_batch(rest, expected)
        };
        let reason = match checked {
            Ok(header) => {
                if since_index >= interval {
                    entries.push(IndexEntry {
                        relative_offset: (expected.0 - base.0) as u32,
                        position: pos as u32,
                        max_timestamp_before_ms: max_timestamp_ms,
                    });
                    since_index = 0;
                }
                since_index = since_index.saturating_add(u64::from(header.batch_len));
                pos += u64::from(header.batch_len);
                expected = header.next_offset();
                max_timestamp_ms = max_timestamp_ms.max(header.max_timestamp_ms);
                continue;
            }
            Err(reason) => reason,
        };
        let resumed = step_over_damage(bytes, pos, expected)
            .map(|found| (found, false))
            .or_else(|| resync(bytes, pos, expected, durable?).map(|found| (found, true)));
        let Some(((next_pos, next), searched)) = resumed else {
            break Some(reason);
        };
        damaged.push(Damaged {
            position: pos,
            base: expected,
            next,
            reason,
        });
        // Indexed like any batch, so reads find what follows; after a range
        // found by searching, the next batch gets an entry of its own, since
        // no length leads a reader over the damage.
        since_index = if searched {
            u64::MAX
        } else {
            since_index.saturating_add(next_pos - pos)
        };
        pos = next_pos;
        expected = next;
    };
    Scan {
        end_pos: pos,
        next_offset: expected,
        bytes_since_index: since_index,
        max_timestamp_ms,
        stop,
        damaged,
    }
}

/// Where a scan starts: a batch boundary, the offset expected there, and the
/// largest timestamp of the batches before it.
struct ScanFrom {
    pos: u64,
    expected: Offset,
    max_timestamp_ms: i64,
}

/// True if the index entry points at a valid batch with the right offset.
fn entry_matches(bytes: &[u8], base: Offset, entry: &IndexEntry) -> bool {
    let pos = entry.position as usize;
    if pos >= bytes.len() {
        return false;
    }
    let rest = &bytes[pos..];
    match BatchHeader::parse(rest) {
        Ok(h) => {
            batch::verify_crc(rest, &h).is_ok()
                && h.base_offset == base.plus(u64::from(entry.relative_offset))
        }
        Err(_) => false,
    }
}

/// Where `file`'s written data ends: its first hole (page-rounded), or
/// `len` where the file system cannot tell. Scans of a sparse active
/// segment stop there, so that they never fault in a hole: on tmpfs that
/// allocates a page, and on a full one it is a SIGBUS.
pub(super) fn data_end(file: &File, len: u64) -> u64 {
    rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(0)).map_or(len, |hole| hole.min(len))
}

/// Writes `len` zero bytes at `offset` (through the fault seam).
pub(super) fn write_zeros(file: &File, path: &Path, offset: u64, len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = offset;
    while at < offset + len {
        let n = ZEROS.len().min((offset + len - at) as usize);
        faults::write_all_at(file, path, &ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Starts write-out of `len` bytes of `file` from `from` (whole pages).
#[cfg(target_os = "linux")]
fn start_writeback_range(file: &File, from: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (libc::off64_t::try_from(from), libc::off64_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: `file` is an open descriptor for the duration of the call;
    // sync_file_range reads no memory of ours.
    let done =
        unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the flush writes everything.
#[cfg(not(target_os = "linux"))]
fn start_writeback_range(_file: &File, _from: u64, _len: u64) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = log_file_name(Offset(1234));
        assert_eq!(name, "00000000000000001234.log");
        assert_eq!(parse_log_file_name(&name), Some(Offset(1234)));
        assert_eq!(parse_log_file_name("1234.log"), None);
        assert_eq!(parse_log_file_name("0000000000000000123x.log"), None);
        assert_eq!(parse_log_file_name("00000000000000001234.index"), None);
    }
}
