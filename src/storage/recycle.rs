//! Segment files that retention dropped, kept (at most [`POOL_FILES`] per
//! log) to become the log's next active segments.
//!
//! An append into a fresh sparse file makes the page cache allocate and
//! zero a page for every 4 KiB and the file system allocate blocks; a write
//! over pages the cache already holds is a copy (`cargo bench --bench
//! storage -- append`: `pwrite_cached` against `pwrite_fresh`). A broker at
//! its retention limit drops a segment about as often as it starts one, so
//! instead of unlinking the oldest it renames it, and the next roll writes
//! over it: PostgreSQL recycles its WAL files for the same reason.
//!
//! What keeps the old bytes from being read as data:
//!
//! - Every append into a recycled file also writes a zero header right
//!   after its batch (`ActiveFile::append`), so recovery after a crash of
//!   the process finds the end where it finds it in a fresh file: at the
//!   first all-zero header. After a power loss, unflushed pages may show
//!   the old bytes instead of zeros: they fail the CRC or offset check and
//!   are cut as a torn tail, as a half-written batch is.
//! - A dropped segment's offsets are all below the log's start, and every
//!   later segment starts at or above it (truncation never goes below the
//!   start), so an old batch can never continue a new segment's offsets.
//!
//! And what keeps recycling from costing anything:
//!
//! - A segment is recycled only when nothing but retention holds it or any
//!   slice of its map ([`Segment::unshared`]): a consumer's zero-copy read
//!   of the old bytes must not see them overwritten. Otherwise it is
//!   deleted, as before.
//! - A file is reused only while its pages are still in the page cache
//!   ([`RecyclePool::take`] samples them with `RWF_NOWAIT` reads): a write
//!   of part of a page the cache does not hold reads the page from disk
//!   first, a synchronous read inside an append. A cold file is deleted.
//!
//! The pool costs disk space: up to [`POOL_FILES`] segments per log beyond
//! what retention keeps, which is the size the log had just before
//! retention dropped them. Pool files (`recycle-N.free`) left by a crash
//! are deleted when the log opens.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::segment::Segment;
use super::StorageError;

/// Files a log keeps for reuse. Retention runs every 250 ms, so two cover
/// a log that rolls up to two segments between runs (2 GiB/s with 256 MiB
/// segments).
pub(crate) const POOL_FILES: usize = 2;
/// Pages sampled to decide whether a file is still in the page cache.
const SAMPLED_PAGES: u64 = 64;
const PAGE_BYTES: u64 = 4096;
const PREFIX: &str = "recycle-";
const SUFFIX: &str = ".free";

/// A log's recycled segment files, newest last.
#[derive(Debug)]
pub(crate) struct RecyclePool {
    dir: PathBuf,
    files: Mutex<Pool>,
    /// Files handed out for reuse.
    reused: AtomicU64,
}

#[derive(Debug, Default)]
struct Pool {
    files: Vec<PathBuf>,
    /// Names the next file; names are never reused while the log is open.
    next_name: u64,
}

impl RecyclePool {
    /// An empty pool for the log in `dir`; deletes pool files an earlier
    /// process left (their pages may be long gone from the cache, and they
    /// are not part of the log).
    pub(crate) fn open(dir: &Path) -> RecyclePool {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if is_pool_file(&entry.file_name().to_string_lossy()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        RecyclePool {
            dir: dir.to_path_buf(),
            files: Mutex::new(Pool::default()),
            reused: AtomicU64::new(0),
        }
    }

    /// Takes a segment retention dropped (already out of the log's segment
    /// list): keeps its file for reuse if the pool has room and nothing
    /// else holds the segment, else deletes it.
    pub(crate) fn offer(&self, segment: std::sync::Arc<Segment>) -> Result<(), StorageError> {
        let mut pool = self.files.lock();
        if pool.files.len() >= POOL_FILES {
            drop(pool);
            return segment.delete();
        }
        let segment = match Segment::unshared(segment) {
            Ok(segment) => segment,
            Err(shared) => {
                drop(pool);
                return shared.delete();
            }
        };
        let to = self.dir.join(format!("{PREFIX}{}{SUFFIX}", pool.next_name));
        pool.next_name += 1;
        segment.move_for_reuse(&to)?;
        pool.files.push(to);
        Ok(())
    }

    /// A pool file whose pages are still cached, for the next segment;
    /// deletes the ones that went cold.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        loop {
            let path = self.files.lock().files.pop()?;
            if File::open(&path).is_ok_and(|file| pages_cached(&file)) {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Some(path);
            }
            tracing::debug!(file = %path.display(), "recycled segment file went cold: deleted");
            let _ = fs::remove_file(&path);
        }
    }

    /// Files in the pool.
    pub(crate) fn len(&self) -> usize {
        self.files.lock().files.len()
    }

    /// Files handed out for reuse so far.
    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
}

fn is_pool_file(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// True if every sampled page of `file` is in the page cache: a read with
/// `RWF_NOWAIT` fails with `EAGAIN` rather than wait for the disk. Also
/// false where the kernel or file system cannot say.
#[cfg(target_os = "linux")]
fn pages_cached(file: &File) -> bool {
    use rustix::io::{preadv2, ReadWriteFlags};
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return false;
    };
    let pages = len / PAGE_BYTES;
    if pages == 0 {
        return false;
    }
    let step = (pages / SAMPLED_PAGES).max(1);
    let mut byte = [0u8; 1];
    (0..pages).step_by(step as usize).all(|page| {
        let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
        matches!(
            preadv2(file, &mut bufs, page * PAGE_BYTES, ReadWriteFlags::NOWAIT),
            Ok(1)
        )
    })
}

#[cfg(not(target_os = "linux"))]
fn pages_cached(_file: &File) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_file_names_are_recognised_and_nothing_else() {
        assert!(is_pool_file("recycle-0.free"));
        assert!(is_pool_file("recycle-17.free"));
        assert!(!is_pool_file("recycle-.free"));
        assert!(!is_pool_file("recycle-1.log"));
        assert!(!is_pool_file("00000000000000000000.log"));
    }

    #[test]
    fn a_file_just_written_is_cached_and_an_empty_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        assert!(pages_cached(&File::open(&path).unwrap()));
        // Dropped from the cache (clean pages go on request): not cached.
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert!(!pages_cached(&file));
        let empty = dir.path().join("e");
        fs::write(&empty, b"").unwrap();
        assert!(!pages_cached(&File::open(&empty).unwrap()));
    }
}
