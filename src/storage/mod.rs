//! Storage: a partition's log as a directory of segment files.
//!
//! Storage knows nothing of topics or the network. It is handed validated
//! record batches and stores them byte for byte; it hands back slices of its
//! memory maps. The layout and the recovery rules are in `PROTOCOL.md`
//! ("Segment files") and in the module docs of `segment` and `log`.

pub(crate) mod atomic_file;
pub mod durable_mark;
pub mod faults;
mod flusher;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod index;
pub mod leader_epochs;
mod log;
mod mapping;
pub(crate) mod meta_file;
pub mod producers;
mod recycle;
mod segment;
pub mod verify;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use spool_protocol::{BatchError, Offset};
use thiserror::Error;

pub use self::flusher::{FileSync, Flusher, SyncPolicy};
pub use self::log::{AppendInfo, Fetched, FetchedRecords, PartitionLog};
pub use self::segment::Published;

/// Largest segment a log may be configured with: positions in the sparse
/// index are 32-bit.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Smallest segment size accepted, to keep roll frequency sane.
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 4 * 1024;

/// How a partition log behaves. Set per topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogConfig {
    /// A segment is rolled once the next batch would take it past this size.
    pub segment_size_bytes: u64,
    /// When appended bytes are forced to disk.
    pub sync: SyncPolicy,
    /// Drop sealed segments whose last write is older than this.
    pub retention_ms: Option<u64>,
    /// Drop the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// One sparse index entry per this many bytes of batches.
    pub index_interval_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size_bytes: 256 * 1024 * 1024,
            sync: SyncPolicy::Interval { ms: 100 },
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            index_interval_bytes: 4096,
        }
    }
}

impl LogConfig {
    /// Checks the limits; a config that fails here is never stored.
    pub fn validate(&self) -> Result<(), StorageError> {
        if !(MIN_SEGMENT_SIZE_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&self.segment_size_bytes) {
            return Err(StorageError::InvalidConfig(format!(
                "segment_size_bytes must be between {MIN_SEGMENT_SIZE_BYTES} and {MAX_SEGMENT_SIZE_BYTES}, got {}",
                self.segment_size_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(StorageError::InvalidConfig(
                "index_interval_bytes must be at least 1".into(),
            ));
        }
        if let SyncPolicy::Interval { ms } = self.sync {
            if ms == 0 {
                return Err(StorageError::InvalidConfig(
                    "sync interval must be at least 1 ms (use `always` for 0)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Retention by age as a duration.
    pub fn retention(&self) -> Option<Duration> {
        self.retention_ms.map(Duration::from_millis)
    }
}

/// Everything that can go wrong in storage, with the file or offset involved.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O call failed on this path.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system has no room for the next bytes. Nothing was written;
    /// the append can be retried once space is freed.
    #[error("no space left on device for {path}")]
    NoSpace {
        /// The segment that needed room.
        path: PathBuf,
    },
    /// A batch on disk failed its length or CRC check. It is never served.
    #[error("corrupt batch in {path} at byte {position} (expected offset {offset}): {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad batch.
        position: u64,
        /// The offset the bad batch should have started at.
        offset: Offset,
        /// What is wrong.
        reason: String,
    },
    /// The requested offset is not in the log.
    #[error("offset {requested} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// What was asked for.
        requested: Offset,
        /// First offset still in the log.
        start: Offset,
        /// Next offset to be written.
        end: Offset,
    },
    /// The batch handed to storage is not valid.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// A metadata file is of another kind or version, or does not decode.
    #[error("bad metadata in {path}: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid log configuration: {0}")]
    InvalidConfig(String),
    /// An idempotent producer's batch does not follow its last one: a
    /// predecessor has not arrived yet (retry after it), or it is older
    /// than anything remembered. Nothing was appended.
    #[error("producer {producer}: batch starts at sequence {got}, expected {expected}")]
    OutOfOrderSequence {
        /// The producer.
        producer: u64,
        /// The sequence number the partition expects from it next.
        expected: u32,
        /// The batch's first.
        got: u32,
    },
    /// A fenced batch's token is below the highest one the partition has
    /// accepted for its lock: its writer lost the lock. Nothing was
    /// appended.
    #[error("fenced: lock {lock:?} token {token} is below {highest}, already accepted by this partition")]
    Fenced {
        /// The lock.
        lock: String,
        /// The batch's token.
        token: u64,
        /// The highest accepted.
        highest: u64,
    },
    /// A fenced batch names a lock beyond the partition's bound on locks
    /// it remembers tokens for. Nothing was appended.
    #[error("partition already remembers fencing tokens for {0} locks")]
    TooManyFences(usize),
}

/// Milliseconds since the Unix epoch by the wall clock (batch timestamps
/// are on this clock; 0 if the clock is before 1970), a simulation's
/// inside one.
pub fn wall_clock_ms() -> i64 {
    crate::simulation::unix_time().as_millis() as i64
}

impl StorageError {
    /// Wraps an I/O error, turning ENOSPC into [`StorageError::NoSpace`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        let path = path.into();
        if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
            StorageError::NoSpace { path }
        } else {
            StorageError::Io { path, source }
        }
    }
}

/// Milliseconds on a monotonic clock local to this process (a
/// simulation's clock inside one); used for idle tracking and queue-group
/// deadlines, never stored.
pub fn monotonic_ms() -> u64 {
    if let Some(ms) = crate::simulation::clock_ms() {
        return ms;
    }
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}
