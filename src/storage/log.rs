//! A partition's log: its segments in offset order, the last one active.
//!
//! Appends are serialised by one writer lock per partition (never a lock
//! across partitions) and cost one `pwritev` into the active segment. Reads
//! take no writer lock: they find their segment under a brief read lock on
//! the segment list and then read bytes below the segment's published length,
//! which never change.
//!
//! Flushing is separate from appending: [`PartitionLog::flush_until`] is the
//! group commit. Whoever takes the flush lock flushes everything written so
//! far, so appenders that queued behind it usually find their bytes already
//! durable. After a failed flush the log refuses appends until it is
//! reopened: after an `fsync` error the kernel may have dropped the dirty
//! pages, and retrying could report success for data that is gone.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use spool_protocol::batch::{BatchHeader, Records, MAX_BATCH_LEN};
use spool_protocol::{Batch, BatchError, Offset, Record};

use super::durable_mark::{DurableMark, MarkWriter};
use super::leader_epochs::{EpochStart, LeaderEpochs};
use super::producers::{ProducerTable, Sequenced};
use super::recycle::RecyclePool;
use super::segment::{self, ActiveFile, Segment};
use super::{monotonic_ms, wall_clock_ms, LogConfig, StorageError, SyncPolicy};

/// Newest bytes of an active segment kept mapped (the tail consumers read).
const ACTIVE_RESIDENT_BYTES: u64 = 64 * 1024;
/// `oldest_unflushed_ms` when no append waits for a flush.
const NONE_PENDING: u64 = u64::MAX;
/// An `interval:MS` flush starts this fraction of `MS` (at least 1 ms)
/// earlier than the last flush's duration requires: the flusher thread may
/// wake late on a busy machine, a flush may take longer than the last one,
/// and `monotonic_ms` rounds down. A flush that ends after its deadline
/// makes every acknowledgement during it wait (measured: 1-4 ms at 10k
/// msg/s on the two-core bench machine, about every 100 ms, which alone
/// set the produce-ack p99). The price is flushing about a tenth more often.
const FLUSH_SLACK_DIVISOR: u64 = 10;
/// Under `interval`, the flusher hands appended bytes to the disk as they
/// come (`Segment::start_writeback`) once at least this many wait, so that
/// a slow trickle of small appends costs no extra disk writes: its bytes
/// wait for the flush as before.
const WRITEBACK_MIN_BYTES: u64 = 1 << 20;

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset after its last record.
    pub next_offset: Offset,
    /// True if the batch was a retry of one its idempotent producer had
    /// appended already: nothing was appended, and these are the offsets
    /// it got then.
    pub duplicate: bool,
}

/// The answer to a read.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Whole batches, back to back, exactly as stored. Empty at the end of
    /// the log. The first batch may start before the requested offset.
    pub batches: Bytes,
    /// Offset after the last record returned: where the next read goes.
    pub next_offset: Offset,
    /// First offset in the log.
    pub log_start: Offset,
    /// Offset after the last record readers may see.
    pub log_end: Offset,
    /// The offset that was asked for.
    pub from_offset: Offset,
}

impl Fetched {
    /// The records from the requested offset on.
    pub fn records(&self) -> FetchedRecords<'_> {
        FetchedRecords {
            rest: &self.batches,
            current: None,
            from: self.from_offset,
            failed: false,
        }
    }
}

/// Iterator over the records of a [`Fetched`], skipping those before the
/// requested offset (a read starts at the batch that holds it).
pub struct FetchedRecords<'a> {
    rest: &'a [u8],
    current: Option<Records<'a>>,
    from: Offset,
    failed: bool,
}

impl<'a> Iterator for FetchedRecords<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self
                .current
                .as_mut()
                .and_then(|records| records.find(|r| r.offset >= self.from))
            {
                return Some(Ok(record));
            }
            if self.rest.is_empty() || self.failed {
                return None;
            }
            // Storage CRC-checked these bytes on the way out, and validated
            // their structure when they were appended.
            match Batch::from_stored(self.rest) {
                Ok(batch) => {
                    self.rest = &self.rest[batch.bytes().len()..];
                    self.current = Some(batch.records());
                }
                Err(err) => {
                    self.failed = true;
                    return Some(Err(err));
                }
            }
        }
    }
}

struct Writer {
    active: Arc<Segment>,
    file: ActiveFile,
    /// Idempotent producers' recent batches: checked and updated with
    /// every append, under this lock.
    producers: ProducerTable,
}

/// One partition's log. See the module docs.
pub struct PartitionLog {
    dir: PathBuf,
    config: LogConfig,
    writer: Mutex<Writer>,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Held while flushing; writes the durable mark after each flush.
    flush_lock: Mutex<MarkWriter>,
    /// Files of segments retention dropped, for the next rolls to reuse.
    recycled: RecyclePool,
    /// Where each leadership of the partition began (replication).
    epochs: Mutex<LeaderEpochs>,
    /// Replication: the offset below which every in-sync replica has the
    /// records; readers see nothing at or past it. `u64::MAX` (no bound)
    /// for an unreplicated partition.
    high_watermark: AtomicU64,
    start_offset: AtomicU64,
    next_offset: AtomicU64,
    durable_offset: AtomicU64,
    /// `interval`: when the oldest append that no flush covers yet was
    /// made (`NONE_PENDING` when there is none), when the oldest append
    /// the running flush covers was made (its bytes are not durable until
    /// it ends), and how long the last flush took. Together they bound the
    /// loss window (`interval_flush_in`, `ack_waits_for_flush`).
    oldest_unflushed_ms: AtomicU64,
    flushing_oldest_ms: AtomicU64,
    last_flush_duration_ms: AtomicU64,
    /// Appends whose acknowledgement waited for a flush because the
    /// flusher lagged (`interval` only).
    flush_waits: AtomicU64,
    /// Bytes handed to the disk ahead of their flush (`start_writeback`).
    written_behind: AtomicU64,
    flushes: AtomicU64,
    failed: AtomicBool,
    /// Set while appends fail for want of disk space (logged once each way).
    out_of_space: AtomicBool,
    /// Woken whenever the visible end moves, for long-polling readers.
    visible_end_moved: tokio::sync::Notify,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, repairing a torn tail.
    ///
    /// `clean_shutdown` says the previous process closed the log properly,
    /// so the active segment's index checkpoint can be trusted and only the
    /// bytes after it are rescanned.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clean_shutdown: bool,
    ) -> Result<PartitionLog, StorageError> {
        config.validate()?;
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let recycled = RecyclePool::open(dir);
        let mut bases = Vec::new();
        let mut stray = Vec::new();
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
            let entry = entry.map_err(|e| StorageError::io(dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = segment::parse_log_file_name(&name) {
                bases.push(base);
            } else if let Some(at) = super::producers::parse_snapshot_name(&name) {
                snapshots.push(at);
            } else if name.ends_with(".tmp") {
                stray.push(entry.path());
            }
        }
        for path in stray {
            let _ = fs::remove_file(path);
        }
        bases.sort();
        let capacity = capacity_for(&config);
        let (active, file) = match bases.last() {
            None => {
                let (seg, file) =
                    Segment::create(dir, Offset(0), capacity, config.index_interval_bytes)?;
                super::atomic_file::sync_dir(dir)?;
                (seg, file)
            }
            Some(&last) => {
                let durable = DurableMark::load(dir)
                    .filter(|mark| mark.segment == last)
                    .map(|mark| mark.at);
                let (seg, file, recovered) = Segment::recover_active(
                    dir,
                    last,
                    capacity,
                    config.index_interval_bytes,
                    clean_shutdown,
                    durable,
                )?;
                for d in &recovered.damaged {
                    tracing::error!(
                        segment = %seg.path().display(),
                        position = d.position,
                        offsets = %format!("{}..{}", d.base, d.next),
                        reason = %d.reason,
                        "damaged batch in the active segment, below its durable mark or with valid batches after it: kept in place, its offsets are reported as corrupt and never served (nor reused); the batches after it are served",
                    );
                    #[cfg(feature = "server")]
                    crate::metrics::CORRUPT_BATCHES.inc();
                }
                if let Some((position, reason)) = &recovered.truncated {
                    tracing::warn!(
                        segment = %seg.path().display(),
                        position,
                        next_offset = %recovered.next_offset,
                        reason = %reason,
                        "truncated torn or corrupt tail of the active segment",
                    );
                }
                (seg, file)
            }
        };
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for pair in bases.windows(2) {
            segments.push(Arc::new(Segment::open_sealed(dir, pair[0], pair[1])?));
        }
        segments.push(active.clone());
        let start = segments[0].base();
        let next = file.next_offset();
        let active_base = active.base();
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            config,
            writer: Mutex::new(Writer {
                active,
                file,
                producers: ProducerTable::default(),
            }),
            segments: RwLock::new(segments),
            flush_lock: Mutex::new(MarkWriter::new(dir)),
            recycled,
            epochs: Mutex::new(LeaderEpochs::open(dir)?),
            high_watermark: AtomicU64::new(u64::MAX),
            start_offset: AtomicU64::new(start.0),
            next_offset: AtomicU64::new(next.0),
            durable_offset: AtomicU64::new(next.0),
            oldest_unflushed_ms: AtomicU64::new(NONE_PENDING),
            flushing_oldest_ms: AtomicU64::new(NONE_PENDING),
            last_flush_duration_ms: AtomicU64::new(0),
            flush_waits: AtomicU64::new(0),
            written_behind: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            out_of_space: AtomicBool::new(false),
            visible_end_moved: tokio::sync::Notify::new(),
        };
        let table = log.rebuild_producers(snapshots, active_base)?;
        log.lock_writer().producers = table;
        Ok(log)
    }

    /// The producers' table of the log as it stands: from the newest of
    /// the `snapshots` (by offset) inside the active segment (a clean close
    /// writes one at its end, a roll one at its start; nothing before the
    /// log's start when it starts there), then the batches after it.
    /// Snapshots past the end describe batches that were cut, and only the
    /// one at the active segment's start is kept.
    fn rebuild_producers(
        &self,
        mut snapshots: Vec<Offset>,
        active_base: Offset,
    ) -> Result<ProducerTable, StorageError> {
        let (dir, start, next) = (&self.dir, self.start_offset(), self.next_offset());
        snapshots.sort();
        let usable = snapshots
            .iter()
            .rev()
            .filter(|&&at| at >= active_base && at <= next)
            .find_map(|&at| ProducerTable::load(dir, at).map(|table| (table, at)));
        let (table, scan_from) = match usable {
            Some(found) => found,
            None if active_base == start => (ProducerTable::default(), active_base),
            None => {
                tracing::info!(dir = %dir.display(), "no producer snapshot for the active segment: scanning the whole log");
                (ProducerTable::default(), start)
            }
        };
        for &at in snapshots.iter().filter(|&&at| at != active_base) {
            let _ = fs::remove_file(super::producers::snapshot_path(dir, at));
        }
        self.replay_producers(table, scan_from)
    }

    /// Starts leader epoch `epoch` at the log's end (this broker now leads
    /// the partition); returns that offset. Nothing is appended meanwhile.
    pub fn begin_epoch(&self, epoch: u64) -> Result<Offset, StorageError> {
        let writer = self.lock_writer();
        let start = writer.file.next_offset();
        self.epochs.lock().assign(epoch, start)?;
        Ok(start)
    }

    /// Records that the leader's epoch `epoch` starts at `start` (a
    /// follower, before appending that epoch's records).
    pub fn note_epoch(&self, epoch: u64, start: Offset) -> Result<(), StorageError> {
        self.epochs.lock().assign(epoch, start)
    }

    /// The latest leader epoch this log holds records of, and its start.
    pub fn latest_epoch(&self) -> Option<EpochStart> {
        self.epochs.lock().latest()
    }

    /// The epochs newer than `epoch`, oldest first: what a leader sends a
    /// follower whose latest epoch is `epoch`.
    pub fn epochs_after(&self, epoch: u64) -> Vec<EpochStart> {
        self.epochs
            .lock()
            .entries()
            .iter()
            .filter(|e| e.epoch > epoch)
            .copied()
            .collect()
    }

    /// Where `epoch` ended in this log (see [`LeaderEpochs::end_of`]): what
    /// a leader answers a returning replica, which then cuts its log there.
    pub fn epoch_end(&self, epoch: u64) -> Option<EpochStart> {
        self.epochs.lock().end_of(epoch, self.next_offset())
    }

    /// Removes every record from `offset` on: the log then ends at the
    /// start of the batch holding `offset` (at `offset` itself when a batch
    /// starts there), which is returned. Nothing happens at or past the
    /// end. Replication needs this: a replica whose log holds records its
    /// leader never committed cuts back to where their histories agree
    /// before it fetches again (the divergence Kafka's KIP-101 fixed).
    ///
    /// No mapped file ever shrinks here, so a reader still holding a slice
    /// never faults: later segments are unlinked (their pages live on with
    /// the slices), and the cut segment's bytes past the cut are overwritten
    /// with zeros, then it is reopened as the active segment exactly as
    /// recovery would. Callers truncate only what no consumer may see
    /// (above the high watermark). A crash part-way leaves a shorter or
    /// longer log, never a damaged one: later segments go first, newest
    /// first, and the zeros are written and synced before the reopen. The
    /// producers' table is rebuilt for the shorter log; what consumer
    /// groups recorded past the cut is the caller's to move back.
    pub fn truncate_to(&self, offset: Offset) -> Result<Offset, StorageError> {
        let mut writer = self.lock_writer();
        let mut mark = self.flush_lock.lock();
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        let (start, end) = (self.start_offset(), writer.file.next_offset());
        if offset >= end {
            // No record to remove, but an epoch that starts here holds
            // none either: a replica that began an epoch it never wrote in
            // forgets it, or it would name it to its leader forever.
            self.epochs.lock().truncate_from_end(offset)?;
            return Ok(end);
        }
        if offset < start {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let segments: Vec<Arc<Segment>> = self.segments.read().clone();
        let Some(keep) = segments.iter().rposition(|s| s.base() <= offset) else {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        };
        let cut_segment = segments[keep].clone();
        let cut = cut_segment.boundary_at(offset)?;
        for later in segments[keep + 1..].iter().rev() {
            later.delete()?;
            let _ = fs::remove_file(super::producers::snapshot_path(&self.dir, later.base()));
        }
        if keep + 1 < segments.len() {
            super::atomic_file::sync_dir(&self.dir)?;
        }
        zero_from(cut_segment.path(), cut.len, cut_segment.len())?;
        let (active, file, recovered) = Segment::recover_active(
            &self.dir,
            cut_segment.base(),
            capacity_for(&self.config),
            self.config.index_interval_bytes,
            false,
            None,
        )?;
        if recovered.next_offset != cut.end_offset {
            self.failed.store(true, Ordering::Release);
            return Err(StorageError::Corrupt {
                path: active.path().to_path_buf(),
                position: cut.len,
                offset: cut.end_offset,
                reason: format!(
                    "truncation to {} reopened the segment ending at {}",
                    cut.end_offset, recovered.next_offset
                ),
            });
        }
        {
            let mut published = self.segments.write();
            published.truncate(keep);
            published.push(active.clone());
        }
        writer.active = active;
        writer.file = file;
        self.next_offset.store(cut.end_offset.0, Ordering::Release);
        // Everything kept was on disk before, and the cut is synced.
        self.durable_offset
            .store(cut.end_offset.0, Ordering::Release);
        mark.write(DurableMark {
            segment: cut_segment.base(),
            at: cut,
        });
        let snapshots = list_snapshots(&self.dir);
        writer.producers = self.rebuild_producers(snapshots, cut_segment.base())?;
        self.epochs.lock().truncate_from_end(cut.end_offset)?;
        // A bound past the end would let readers wait for records that
        // are gone; nothing below the cut was ever above it.
        let _ = self
            .high_watermark
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hwm| {
                (hwm != u64::MAX && hwm > cut.end_offset.0).then_some(cut.end_offset.0)
            });
        tracing::info!(dir = %self.dir.display(), from = %end, to = %cut.end_offset, "log truncated");
        Ok(cut.end_offset)
    }

    /// `table` brought up to the log's end by the batches from `from` on.
    fn replay_producers(
        &self,
        mut table: ProducerTable,
        from: Offset,
    ) -> Result<ProducerTable, StorageError> {
        let mut offset = from;
        let end = self.next_offset();
        let now_ms = wall_clock_ms();
        let mut unreadable = 0u64;
        while offset < end {
            // Every stored batch counts, above the high watermark too: a
            // replica's table must know what its log holds, or the next
            // batch its leader sends looks out of order.
            let fetched = match self.read_replica(offset, 4 << 20) {
                Ok(fetched) => fetched,
                // A damaged batch: its producer's state is unknown (a retry
                // of it counts as new); step through its offsets to what
                // follows.
                Err(StorageError::Corrupt { .. }) => {
                    unreadable += 1;
                    offset = offset.plus(1);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if fetched.batches.is_empty() {
                break;
            }
            let mut rest: &[u8] = &fetched.batches;
            while !rest.is_empty() {
                let header = BatchHeader::parse(rest)?;
                if header.next_offset() > offset {
                    let fence = if header.fenced {
                        Batch::from_stored(rest).ok()
                    } else {
                        None
                    };
                    table.record(&header, fence.as_ref().and_then(Batch::fence), now_ms);
                }
                rest = rest.get(header.batch_len as usize..).unwrap_or_default();
            }
            offset = fetched.next_offset;
        }
        if unreadable > 0 {
            tracing::warn!(dir = %self.dir.display(), unreadable, "damaged offsets skipped while rebuilding the producers' state");
        }
        Ok(table)
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's configuration.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> Offset {
        Offset(self.start_offset.load(Ordering::Acquire))
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> Offset {
        Offset(self.next_offset.load(Ordering::Acquire))
    }

    /// Offset up to which (exclusive) the log is known to be on disk.
    pub fn durable_offset(&self) -> Offset {
        Offset(self.durable_offset.load(Ordering::Acquire))
    }

    /// Offset after the last record readers may see: under `always` only
    /// durable records are visible, and in a replicated partition only
    /// records below the high watermark.
    pub fn visible_end(&self) -> Offset {
        let local = match self.config.sync {
            SyncPolicy::Always => self.durable_offset(),
            _ => self.next_offset(),
        };
        local.min(Offset(self.high_watermark.load(Ordering::Acquire)))
    }

    /// Replication: readers see only records below `hwm` from now on (the
    /// offset every in-sync replica has). Waiting readers are woken when it
    /// moves up.
    pub fn set_high_watermark(&self, hwm: Offset) {
        let old = self.high_watermark.swap(hwm.0, Ordering::AcqRel);
        if hwm.0 > old || old == u64::MAX {
            self.visible_end_moved.notify_waiters();
        }
    }

    /// The high watermark, if the partition is replicated.
    pub fn high_watermark(&self) -> Option<Offset> {
        let hwm = self.high_watermark.load(Ordering::Acquire);
        (hwm != u64::MAX).then_some(Offset(hwm))
    }

    /// Drops the high-watermark bound (the partition is not replicated
    /// any more): readers see what the sync policy allows.
    pub fn clear_high_watermark(&self) {
        self.high_watermark.store(u64::MAX, Ordering::Release);
        self.visible_end_moved.notify_waiters();
    }

    /// Flushes (`fdatasync` calls) done so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Whether the acknowledgement of an append just made must wait for a
    /// flush. Always under `always`. Under `interval:MS`, when the oldest
    /// append no flush covers yet is more than `MS` old: the flusher is
    /// behind (the disk is slower than the producers), and holding the
    /// acknowledgements back until the flush is done is what keeps a power
    /// loss from losing more than `MS` of acknowledged appends. Counted in
    /// [`PartitionLog::flush_wait_count`].
    pub fn ack_waits_for_flush(&self) -> bool {
        match self.config.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Never => false,
            SyncPolicy::Interval { ms } => {
                let oldest = self
                    .oldest_unflushed_ms
                    .load(Ordering::SeqCst)
                    .min(self.flushing_oldest_ms.load(Ordering::SeqCst));
                let lagging = oldest != NONE_PENDING && monotonic_ms().saturating_sub(oldest) > ms;
                if lagging {
                    self.flush_waits.fetch_add(1, Ordering::Relaxed);
                }
                lagging
            }
        }
    }

    /// Appends whose acknowledgement waited for a lagging `interval` flush.
    pub fn flush_wait_count(&self) -> u64 {
        self.flush_waits.load(Ordering::Relaxed)
    }

    /// A future that completes the next time the visible end moves. Create
    /// (and `enable`) it before checking the end, then await it, so that no
    /// append between the check and the wait is missed.
    pub fn visible_end_moved(&self) -> tokio::sync::futures::Notified<'_> {
        self.visible_end_moved.notified()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        {
            let s = self.segments.read();
            s.len()
        }
    }

    /// Files of dropped segments kept for the next segments to write over
    /// (see `recycle.rs`).
    pub fn recycled_file_count(&self) -> usize {
        self.recycled.len()
    }

    /// Segments started in a recycled file since the log was opened.
    pub fn reused_file_count(&self) -> u64 {
        self.recycled.reused()
    }

    /// Number of segments currently memory-mapped.
    pub fn mapped_segment_count(&self) -> usize {
        {
            let s = self.segments.read();
            s.iter().filter(|seg| seg.is_mapped()).count()
        }
    }

    /// Total bytes of batches in all segments.
    pub fn size_bytes(&self) -> u64 {
        {
            let s = self.segments.read();
            s.iter().map(|seg| seg.len()).sum()
        }
    }

    /// Appends a validated batch, assigning it the next offsets. The bytes
    /// are in the page cache when this returns; call
    /// [`PartitionLog::flush_until`] for durability against power loss.
    pub fn append(&self, batch: Batch<'_>) -> Result<AppendInfo, StorageError> {
        let result = self.append_now(batch);
        match &result {
            Err(StorageError::NoSpace { path })
                if !self.out_of_space.swap(true, Ordering::AcqRel) =>
            {
                tracing::error!(dir = %self.dir.display(), file = %path.display(), "appends fail: no space left on the device; they resume once space is freed");
            }
            Ok(_)
                if self.out_of_space.load(Ordering::Relaxed)
                    && self.out_of_space.swap(false, Ordering::AcqRel) =>
            {
                tracing::warn!(dir = %self.dir.display(), "appends work again: disk space was freed");
            }
            _ => {}
        }
        result
    }

    /// True while appends fail for want of disk space.
    pub fn out_of_space(&self) -> bool {
        self.out_of_space.load(Ordering::Relaxed)
    }

    fn append_now(&self, batch: Batch<'_>) -> Result<AppendInfo, StorageError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        let bytes = batch.bytes();
        let len = bytes.len() as u64;
        let mut writer = self.lock_writer();
        let fence = batch.fence();
        match writer.producers.check(batch.header()) {
            Sequenced::New => {}
            Sequenced::Duplicate {
                base_offset,
                next_offset,
            } => {
                return Ok(AppendInfo {
                    base_offset,
                    next_offset,
                    duplicate: true,
                })
            }
            Sequenced::OutOfOrder { expected, got } => {
                return Err(StorageError::OutOfOrderSequence {
                    producer: batch.header().producer_id,
                    expected,
                    got,
                })
            }
        }
        writer.producers.check_fence(fence)?;
        if writer.file.position() > 0
            && writer.file.position() + len > self.config.segment_size_bytes
        {
            self.roll(&mut writer)?;
        }
        let writer = &mut *writer;
        let previous_next = writer.file.next_offset();
        let base_offset = writer.file.append(&writer.active, bytes, batch.header())?;
        let next_offset = writer.file.next_offset();
        // Offsets only grow, with no gap: each batch starts where the last ended.
        assert_eq!(
            base_offset, previous_next,
            "a batch must start at the log's end"
        );
        debug_assert!(next_offset > base_offset);
        if batch.header().producer_id != spool_protocol::batch::NO_PRODUCER || fence.is_some() {
            let mut stored = *batch.header();
            stored.base_offset = base_offset;
            writer.producers.record(&stored, fence, wall_clock_ms());
        }
        self.next_offset.store(next_offset.0, Ordering::SeqCst);
        if self.oldest_unflushed_ms.load(Ordering::SeqCst) == NONE_PENDING {
            // After the batch was published: see `flush_locked`.
            let _ = self.oldest_unflushed_ms.compare_exchange(
                NONE_PENDING,
                monotonic_ms(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        if self.config.sync == SyncPolicy::Never {
            // Nothing will ever flush explicitly; durable means "in the page
            // cache" for this policy.
            self.durable_offset.store(next_offset.0, Ordering::Release);
        }
        if self.config.sync != SyncPolicy::Always {
            self.visible_end_moved.notify_waiters();
        }
        Ok(AppendInfo {
            base_offset,
            next_offset,
            duplicate: false,
        })
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&self, writer: &mut MutexGuard<'_, Writer>) -> Result<(), StorageError> {
        let base = writer.file.next_offset();
        // The producers as of the new segment's start: recovery loads this
        // and scans only the new segment. Losing it costs a longer scan.
        let old_base = writer.active.base();
        writer.producers.expire(wall_clock_ms());
        match writer.producers.save(&self.dir, base) {
            Ok(()) => {
                let _ = fs::remove_file(super::producers::snapshot_path(&self.dir, old_base));
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the producer snapshot")
            }
        }
        // Create the new segment first: if the disk is full the old one
        // stays active and untouched.
        let (capacity, interval) = (capacity_for(&self.config), self.config.index_interval_bytes);
        let recycled = self.recycled.take().and_then(|from| {
            Segment::create_recycled(&self.dir, base, capacity, interval, &from)
                .inspect_err(|e| {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot reuse a recycled segment file: creating a new one");
                    let _ = fs::remove_file(&from);
                })
                .ok()
        });
        let (active, file) = match recycled {
            Some(created) => created,
            None => Segment::create(&self.dir, base, capacity, interval)?,
        };
        let durable = self.config.sync != SyncPolicy::Never;
        let old_active = std::mem::replace(&mut writer.active, active.clone());
        let old_file = std::mem::replace(&mut writer.file, file);
        let sealed = {
            // Sealing flushes under the flush lock, so the durable offset
            // it publishes never runs ahead of a concurrent group commit.
            let _flush = self.flush_lock.lock();
            let sealed = old_active.seal(old_file, durable).and_then(|()| {
                if durable {
                    super::atomic_file::sync_dir(&self.dir)
                } else {
                    Ok(())
                }
            });
            if sealed.is_ok() && durable {
                self.durable_offset
                    .fetch_max(old_active.end_offset().0, Ordering::AcqRel);
            }
            sealed
        };
        if let Err(err) = &sealed {
            // The old segment's bytes may not be on disk; stop taking appends
            // rather than acknowledge on top of them (see module docs).
            self.failed.store(true, Ordering::Release);
            tracing::error!(dir = %self.dir.display(), error = %err, "sealing segment failed; the log refuses appends until reopened");
        }
        // Published only after the old segment is sealed, so a flush that
        // finds the new segment last knows the old one is on disk.
        self.segments.write().push(active);
        tracing::debug!(dir = %self.dir.display(), base = %base, "rolled segment");
        sealed
    }

    /// Reads whole batches from the one holding `offset`, up to `max_bytes`
    /// (but at least one batch). At the end of the log the answer is empty.
    pub fn read(&self, offset: Offset, max_bytes: u64) -> Result<Fetched, StorageError> {
        self.read_below(
            offset,
            Offset(u64::MAX),
            max_bytes,
            self.visible_end(),
            true,
        )
    }

    /// Like [`PartitionLog::read`], but no batch that starts after
    /// `through`: the batches holding `offset..=through` and no more (unless
    /// `max_bytes` stops it first). What a queue group's delivery reads.
    pub fn read_through(
        &self,
        offset: Offset,
        through: Offset,
        max_bytes: u64,
    ) -> Result<Fetched, StorageError> {
        self.read_below(offset, through, max_bytes, self.visible_end(), true)
    }

    /// Like [`PartitionLog::read`], but up to the log's end: past the high
    /// watermark and, under `always`, past what is flushed. What a
    /// partition's leader sends its followers (they must get records
    /// before the records can count as replicated).
    pub fn read_replica(&self, offset: Offset, max_bytes: u64) -> Result<Fetched, StorageError> {
        self.read_below(
            offset,
            Offset(u64::MAX),
            max_bytes,
            self.next_offset(),
            false,
        )
    }

    /// Reads below `end`; `flushed_only`: under `always`, only what is
    /// flushed of the active segment.
    fn read_below(
        &self,
        offset: Offset,
        through: Offset,
        max_bytes: u64,
        end: Offset,
        flushed_only: bool,
    ) -> Result<Fetched, StorageError> {
        // One end, read once, bounds the whole answer. An offset appended
        // but not yet visible (under `always`: not yet flushed) is not out
        // of range: it reads as the end, and a long poll waits.
        let start = self.start_offset();
        let appended = self.next_offset().max(end);
        if offset < start || offset > appended {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start,
                end: appended,
            });
        }
        let empty = |next_offset| Fetched {
            batches: Bytes::new(),
            next_offset,
            log_start: start,
            log_end: end,
            from_offset: offset,
        };
        if offset >= end {
            return Ok(empty(offset));
        }
        let candidates: Vec<Arc<Segment>> = {
            let segments = self.segments.read();
            let idx = segments
                .partition_point(|s| s.base() <= offset)
                .saturating_sub(1);
            segments[idx..].iter().take(2).cloned().collect()
        };
        for seg in candidates {
            let limit = match self.config.sync {
                SyncPolicy::Always if flushed_only && !seg.is_sealed() => seg.flushed_len(),
                _ => seg.len(),
            };
            match seg.read(offset, through, max_bytes, limit) {
                Ok(Some((batches, next_offset))) => {
                    // The flushed length may cover a batch appended after
                    // `end` was read: never hand out past `end`.
                    let (batches, next_offset) = if next_offset > end {
                        match within(&batches, end) {
                            Some(kept) => kept,
                            None => return Ok(empty(offset)),
                        }
                    } else {
                        (batches, next_offset)
                    };
                    return Ok(Fetched {
                        batches,
                        next_offset,
                        log_start: start,
                        log_end: end,
                        from_offset: offset,
                    });
                }
                Ok(None) => continue,
                Err(err) if offset < self.start_offset() => {
                    // Retention removed the segment while we were reading.
                    tracing::debug!(error = %err, "segment removed during read");
                    return Err(StorageError::OffsetOutOfRange {
                        requested: offset,
                        start: self.start_offset(),
                        end,
                    });
                }
                Err(err) => return Err(err),
            }
        }
        if offset < self.start_offset() {
            // Retention removed the segment after `start` was read: the
            // candidates all begin past the offset. An empty answer would
            // leave the reader waiting at an offset that is gone.
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                start: self.start_offset(),
                end,
            });
        }
        Ok(empty(offset))
    }

    /// The first offset whose record timestamp is at or after
    /// `timestamp_ms`, or the visible end if there is none. Scans batch
    /// headers from the start of the log, skipping every batch whose largest
    /// timestamp is earlier (no time index yet: cost grows with the log).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Offset, StorageError> {
        let end = self.visible_end();
        let start = self.start_offset();
        let segments = self.segments.read().clone();
        // Segment by segment, scanning only from where the time index says a
        // match can begin (at most one index interval before it).
        for segment in &segments {
            let segment_end = segment.end_offset().min(end);
            let from = segment.time_search_start(timestamp_ms)?.max(start);
            if from >= segment_end {
                continue;
            }
            if let Some(found) = self.first_at_or_after(timestamp_ms, from, segment_end)? {
                return Ok(found);
            }
        }
        Ok(end)
    }

    /// The first record in `from..until` whose timestamp is at least
    /// `timestamp_ms`.
    fn first_at_or_after(
        &self,
        timestamp_ms: i64,
        from: Offset,
        until: Offset,
    ) -> Result<Option<Offset>, StorageError> {
        let mut next = from;
        while next < until {
            let fetched = self.read(next, 1 << 20)?;
            if fetched.batches.is_empty() {
                break;
            }
            let mut rest: &[u8] = &fetched.batches;
            while let Ok(header) = spool_protocol::BatchHeader::parse(rest) {
                if header.max_timestamp_ms >= timestamp_ms {
                    let batch = Batch::from_stored(rest)?;
                    if let Some(r) = batch.records().find(|r| {
                        r.timestamp_ms >= timestamp_ms && r.offset >= next && r.offset < until
                    }) {
                        return Ok(Some(r.offset));
                    }
                }
                rest = &rest[(header.batch_len as usize).min(rest.len())..];
            }
            next = fetched.next_offset;
        }
        Ok(None)
    }

    /// Group commit: returns once everything before `target` is on disk.
    pub fn flush_until(&self, target: Offset) -> Result<(), StorageError> {
        if self.durable_offset() >= target {
            return Ok(());
        }
        let mut mark = self.flush_lock.lock();
        if self.durable_offset() >= target {
            return Ok(());
        }
        self.flush_locked(&mut mark)
    }

    /// Flushes everything appended so far.
    pub fn flush(&self) -> Result<(), StorageError> {
        let mut mark = self.flush_lock.lock();
        self.flush_locked(&mut mark)
    }

    fn flush_locked(&self, mark: &mut MarkWriter) -> Result<(), StorageError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(self.failed_error());
        }
        let Some(active) = self.active_segment() else {
            return Ok(());
        };
        #[cfg(feature = "server")]
        let started = std::time::Instant::now();
        let started_ms = monotonic_ms();
        // The appends this flush covers stay exposed until it ends: their
        // time moves to `flushing_oldest_ms` (never leaving both empty).
        // `oldest_unflushed_ms` is cleared before the flush reads the
        // published end, so an append the flush misses published its batch
        // after that, finds it cleared and stamps its own time
        // (`append_now`).
        self.flushing_oldest_ms.store(
            self.oldest_unflushed_ms.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        let covered = self
            .oldest_unflushed_ms
            .swap(NONE_PENDING, Ordering::SeqCst);
        self.flushing_oldest_ms.fetch_min(covered, Ordering::SeqCst);
        let flushed = active.flush();
        self.flushing_oldest_ms
            .store(NONE_PENDING, Ordering::SeqCst);
        // The one metric storage feeds directly: flush time is only known here.
        #[cfg(feature = "server")]
        crate::metrics::FLUSH_SECONDS.observe(started.elapsed().as_secs_f64());
        let (end, moved) = match flushed {
            Ok(flushed) => flushed,
            Err(err) => {
                self.failed.store(true, Ordering::Release);
                tracing::error!(dir = %self.dir.display(), error = %err, "flush failed; the log refuses appends until reopened");
                return Err(err);
            }
        };
        if moved {
            mark.write(DurableMark {
                segment: active.base(),
                at: end,
            });
        }
        // (durable <= written is asserted by the segment's flush; the log's
        // own `next_offset` is published after the segment's, so a flush
        // may briefly run ahead of it.)
        self.durable_offset
            .fetch_max(end.end_offset.0, Ordering::AcqRel);
        self.last_flush_duration_ms
            .store(monotonic_ms() - started_ms, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if self.config.sync == SyncPolicy::Always {
            self.visible_end_moved.notify_waiters();
        }
        Ok(())
    }

    /// Under `interval`, starts the disk writing the active segment's bytes
    /// appended since the last call (at least [`WRITEBACK_MIN_BYTES`]),
    /// without waiting; see [`Segment::start_writeback`]. Returns the bytes
    /// handed over (0 under other policies).
    pub fn start_writeback(&self) -> u64 {
        if !matches!(self.config.sync, SyncPolicy::Interval { .. }) {
            return 0;
        }
        let started = self
            .active_segment()
            .map_or(0, |segment| segment.start_writeback(WRITEBACK_MIN_BYTES));
        self.written_behind.fetch_add(started, Ordering::Relaxed);
        started
    }

    /// The segment appends go to (the last one).
    fn active_segment(&self) -> Option<Arc<Segment>> {
        self.segments.read().last().cloned()
    }

    /// Bytes handed to the disk ahead of their flush since the log was
    /// opened ([`PartitionLog::start_writeback`]).
    pub fn written_behind_bytes(&self) -> u64 {
        self.written_behind.load(Ordering::Relaxed)
    }

    /// Under `interval:MS`, with appends that no flush covers yet: how many
    /// milliseconds from `now_ms` until a flush must start (0: it is due)
    /// so that it ends before the oldest of them is `MS` old and producers
    /// never wait for it (`ack_waits_for_flush`) while the disk keeps up.
    /// The lead is twice the last flush's duration plus a tenth of `MS`
    /// ([`FLUSH_SLACK_DIVISOR`]), at most `MS / 2`. `None` when nothing waits
    /// to be flushed, under other policies, and once a flush failed (the
    /// log refuses appends until reopened).
    pub fn interval_flush_in(&self, now_ms: u64) -> Option<u64> {
        let SyncPolicy::Interval { ms } = self.config.sync else {
            return None;
        };
        let oldest = self.oldest_unflushed_ms.load(Ordering::SeqCst);
        if oldest == NONE_PENDING
            || self.durable_offset() >= self.next_offset()
            || self.failed.load(Ordering::Acquire)
        {
            return None;
        }
        let lead = self
            .last_flush_duration_ms
            .load(Ordering::Relaxed)
            .saturating_mul(2)
            .saturating_add((ms / FLUSH_SLACK_DIVISOR).max(1))
            .min(ms / 2);
        Some(oldest.saturating_add(ms - lead).saturating_sub(now_ms))
    }

    /// Drops the oldest sealed segments while they are older than the
    /// retention age or the log is larger than the retention size. The
    /// active segment is never dropped. Returns how many were dropped.
    pub fn enforce_retention(&self, now: SystemTime) -> Result<usize, StorageError> {
        if self.config.retention_ms.is_none() && self.config.retention_bytes.is_none() {
            return Ok(0);
        }
        let mut dropped = Vec::new();
        {
            let mut segments = self.segments.write();
            let mut total: u64 = segments.iter().map(|s| s.len()).sum();
            while segments.len() > 1 && segments[0].is_sealed() {
                let oldest = &segments[0];
                let too_old = self.config.retention().is_some_and(|age| {
                    oldest
                        .modified()
                        .and_then(|m| now.duration_since(m).ok())
                        .is_some_and(|elapsed| elapsed > age)
                });
                let too_big = self.config.retention_bytes.is_some_and(|max| total > max);
                if !(too_old || too_big) {
                    break;
                }
                total -= oldest.len();
                dropped.push(segments.remove(0));
                self.start_offset
                    .store(segments[0].base().0, Ordering::Release);
            }
        }
        let count = dropped.len();
        for seg in dropped {
            tracing::info!(segment = %seg.path().display(), "retention dropped segment");
            self.recycled.offer(seg)?;
        }
        if count > 0 {
            self.epochs
                .lock()
                .truncate_from_start(self.start_offset())?;
        }
        Ok(count)
    }

    /// Unmaps sealed segments nobody has read for `idle_ms`, and releases
    /// the resident pages of the active segment but its newest 64 KiB.
    pub fn unmap_idle(&self, now_ms: u64, idle_ms: u64) -> usize {
        let segments = self.segments.read().clone();
        if let Some(active) = segments.last() {
            active.release_resident(ACTIVE_RESIDENT_BYTES);
        }
        segments
            .iter()
            .filter(|s| s.evict_if_idle(now_ms, idle_ms))
            .count()
    }

    /// Flushes everything and writes the active segment's index so the next
    /// open can skip the rescan.
    pub fn close(&self) -> Result<(), StorageError> {
        self.flush()?;
        let writer = self.lock_writer();
        // The next open loads this instead of re-reading the active
        // segment; losing it costs only that read.
        if let Err(e) = writer.producers.save(&self.dir, writer.file.next_offset()) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the producer snapshot");
        }
        writer.active.checkpoint_index()
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock()
    }

    fn failed_error(&self) -> StorageError {
        StorageError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("an earlier flush failed; reopen the log to recover"),
        }
    }
}

/// Logical size of a new segment's sparse file and map: room for one more
/// maximal batch past the roll threshold, so a batch never has to be split
/// and an oversized batch still fits an empty segment.
fn capacity_for(config: &LogConfig) -> u64 {
    config.segment_size_bytes + MAX_BATCH_LEN as u64
}

/// The leading whole batches of `batches` that end at or before `end`, and
/// the offset after them; `None` if not even the first does.
fn within(batches: &Bytes, end: Offset) -> Option<(Bytes, Offset)> {
    let mut len = 0usize;
    let mut next = None;
    while let Ok(header) = BatchHeader::parse(&batches[len..]) {
        if header.next_offset() > end {
            break;
        }
        len += header.batch_len as usize;
        next = Some(header.next_offset());
        if len >= batches.len() {
            break;
        }
    }
    next.map(|next| (batches.slice(..len), next))
}

/// Overwrites bytes `from..to` of the file at `path` with zeros and syncs
/// it, leaving its length alone (a mapped file must not shrink).
fn zero_from(path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    if to <= from {
        return Ok(());
    }
    let io = |e| StorageError::io(path, e);
    let file = fs::OpenOptions::new().write(true).open(path).map_err(io)?;
    segment::write_zeros(&file, path, from, to - from).map_err(io)?;
    file.sync_data().map_err(io)
}

/// The offsets of the producers' snapshots in `dir`.
fn list_snapshots(dir: &Path) -> Vec<Offset> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| super::producers::parse_snapshot_name(&e.file_name().to_string_lossy()))
        .collect()
}
