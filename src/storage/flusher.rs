//! When appended bytes reach stable storage.
//!
//! Appends are written into the segment file, so the moment an append
//! returns its bytes are in the kernel's page cache: a crash of the process (SIGKILL,
//! panic, OOM kill) loses nothing that was appended, under every policy.
//! The policy only decides what survives a crash of the *machine* (power
//! loss, kernel panic):
//!
//! - [`SyncPolicy::Always`]: an append is acknowledged only after its bytes
//!   were flushed (`fdatasync`, which also persists the block allocation).
//!   Concurrent appenders share flushes: one flush covers everything written
//!   before it started (group commit). Readers see a batch only once it is
//!   durable, so no consumer ever acts on a message a power loss could undo.
//! - [`SyncPolicy::Interval`]: a background flush about every `ms`
//!   milliseconds, started early enough that the oldest unflushed append is
//!   at most `ms` old when it ends. A power loss loses at most `ms` of
//!   acknowledged appends, however slow the disk: when the flusher falls
//!   behind, acknowledgements wait for the flush
//!   ([`PartitionLog::ack_waits_for_flush`]), which slows producers down to
//!   what the disk takes. Between flushes, bytes appended in bulk are
//!   handed to the disk as they come ([`PartitionLog::start_writeback`],
//!   every few milliseconds, a megabyte or more at a time), so the disk
//!   writes all along instead of only inside the flush; only the flush
//!   makes anything durable.
//! - [`SyncPolicy::Never`]: the OS writes back when it likes (typically
//!   within 30 s on Linux); a power loss can lose that much.
//!
//! One [`Flusher`] thread per broker does all flushing, so no tokio worker
//! ever blocks on the disk. Serialising flushes across partitions costs
//! little: they go to the same device and file-system journal anyway.
//!
//! In a deterministic simulation ([`crate::simulation`]) there is no
//! thread: a sync is done on the calling task when it is asked for, so it
//! completes at a moment that depends only on the seed. Nothing flushes in
//! the background there (`interval` acknowledgements find their flush due
//! and make it themselves), and retention and unmapping do not run.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use spool_protocol::Offset;
use tokio::sync::oneshot;

use super::log::PartitionLog;
use super::{monotonic_ms, StorageError};

/// How often the flusher runs retention and unmaps cold segments.
const HOUSEKEEPING_INTERVAL_MS: u64 = 250;
/// Upper bound on the flusher's sleep, so housekeeping is never late by more.
const MAX_TICK_MS: u64 = 1000;
/// While an `interval` log has unflushed appends, the flusher looks this
/// often for written bytes to start on their way to the disk
/// (`PartitionLog::start_writeback`): a few megabytes at a time at full
/// speed, so the disk is busy all along rather than only inside flushes.
const WRITEBACK_TICK_MS: u64 = 5;

/// When appended bytes are forced to disk. See the module docs for what
/// each promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SyncPolicy {
    /// Flush before acknowledging; concurrent appends share a flush.
    Always,
    /// Flush in the background every `ms` milliseconds.
    Interval {
        /// Milliseconds between flushes.
        ms: u64,
    },
    /// Leave write-back to the operating system.
    Never,
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Interval { ms } => write!(f, "interval:{ms}"),
            SyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for SyncPolicy {
    type Err = String;

    /// Accepts `always`, `never`, `interval` (100 ms) or `interval:MS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            "interval" => Ok(SyncPolicy::Interval { ms: 100 }),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse().ok())
                .filter(|&ms| ms > 0)
                .map(|ms| SyncPolicy::Interval { ms })
                .ok_or_else(|| {
                    format!("unknown sync policy {other:?}: expected always, never, interval or interval:MS")
                }),
        }
    }
}

/// What a sync request gets when the flusher thread is gone.
fn stopped(path: std::path::PathBuf) -> StorageError {
    StorageError::Io {
        path,
        source: std::io::Error::other("flusher thread has stopped"),
    }
}

/// Where a sync's outcome goes.
type Done = oneshot::Sender<Result<(), StorageError>>;

enum Request {
    Sync {
        log: Arc<PartitionLog>,
        target: Offset,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    SyncFile {
        file: FileSync,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    Watch(Weak<PartitionLog>),
    Shutdown,
}

/// A small append-only file (a consumer group's ack log) whose written
/// bytes must reach the disk before something is acknowledged. The flusher
/// syncs it once for every request about it in the same burst (group commit
/// for acks).
#[derive(Clone, Debug)]
#[must_use = "what the records say is not durable until this sync is done"]
pub struct FileSync {
    /// The open file.
    pub file: Arc<std::fs::File>,
    /// Its path, for errors.
    pub path: std::path::PathBuf,
}

impl FileSync {
    /// Syncs on the calling thread (admin paths that may block).
    pub fn sync_now(&self) -> Result<(), StorageError> {
        super::faults::sync_data(&self.file, &self.path)
            .map_err(|e| StorageError::io(&self.path, e))
    }
}

/// The broker's flushing and housekeeping thread.
pub struct Flusher {
    /// `None` in a simulation: syncs are done by the caller.
    tx: Option<mpsc::Sender<Request>>,
    /// Ack-log syncs done (one per file per burst, however many asked).
    file_syncs: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread (none in a simulation). Sealed segments unread
    /// for `unmap_idle_ms` are unmapped by its housekeeping.
    pub fn start(unmap_idle_ms: u64) -> std::io::Result<Flusher> {
        let file_syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if crate::simulation::active() {
            return Ok(Flusher {
                tx: None,
                file_syncs,
                thread: None,
            });
        }
        let (tx, rx) = mpsc::channel();
        let counter = file_syncs.clone();
        let thread = std::thread::Builder::new()
            .name("spool-flusher".into())
            .spawn(move || run(rx, unmap_idle_ms, &counter))?;
        Ok(Flusher {
            tx: Some(tx),
            file_syncs,
            thread: Some(thread),
        })
    }

    /// Puts a log under the flusher's care: interval flushes (if its policy
    /// asks for them), retention and unmapping of cold segments.
    pub fn watch(&self, log: &Arc<PartitionLog>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Watch(Arc::downgrade(log)));
        }
    }

    /// Asks for `log` to be made durable up to `target` (exclusive); the
    /// returned future resolves when it is. The request is sent before this
    /// returns, so callers need not hold anything across the await.
    pub fn request_sync(
        &self,
        log: Arc<PartitionLog>,
        target: Offset,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let path = log.dir().to_path_buf();
        let waiter = if log.durable_offset() >= target {
            None
        } else {
            match &self.tx {
                None => Some(Err(log.flush_until(target))),
                Some(tx) => {
                    let (done, wait) = oneshot::channel();
                    Some(Ok(tx
                        .send(Request::Sync { log, target, done })
                        .map(|()| wait)))
                }
            }
        };
        async move {
            let gone = || stopped(path);
            match waiter {
                None => Ok(()),
                Some(Err(flushed_here)) => flushed_here,
                Some(Ok(Err(_))) => Err(gone()),
                Some(Ok(Ok(wait))) => wait.await.map_err(|_| gone())?,
            }
        }
    }

    /// Asks for everything written to `file` so far to be synced; the
    /// returned future resolves when it is. Sent before this returns.
    pub fn request_file_sync(
        &self,
        file: FileSync,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let path = file.path.clone();
        let sent = match &self.tx {
            None => {
                self.file_syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(file.sync_now())
            }
            Some(tx) => {
                let (done, wait) = oneshot::channel();
                Ok(tx.send(Request::SyncFile { file, done }).map(|()| wait))
            }
        };
        async move {
            let gone = || stopped(path.clone());
            match sent {
                Err(synced_here) => synced_here,
                Ok(sent) => sent.map_err(|_| gone())?.await.map_err(|_| gone())?,
            }
        }
    }

    /// Ack-log syncs done since the flusher started.
    pub fn file_sync_count(&self) -> u64 {
        self.file_syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the thread after it has served every request already sent.
    pub fn shutdown(&mut self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Request::Shutdown);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(rx: mpsc::Receiver<Request>, unmap_idle_ms: u64, file_syncs: &std::sync::atomic::AtomicU64) {
    let mut watched: Vec<Weak<PartitionLog>> = Vec::new();
    let mut next_housekeeping_ms = monotonic_ms() + HOUSEKEEPING_INTERVAL_MS;
    loop {
        // Sleep until the first interval flush falls due, so it starts on
        // time (`interval_flush_in`). A log with nothing to flush is looked
        // at again within a quarter period: an append made meanwhile falls
        // due at least half a period after it.
        let now_ms = monotonic_ms();
        let tick_ms = watched
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|log| match log.config().sync {
                SyncPolicy::Interval { ms } => Some(match log.interval_flush_in(now_ms) {
                    Some(due_in) => due_in.min(WRITEBACK_TICK_MS),
                    None => ms / 4,
                }),
                _ => None,
            })
            .min()
            .unwrap_or(MAX_TICK_MS)
            // Retention and unmapping run on time whatever the logs' policies.
            .min(next_housekeeping_ms.saturating_sub(now_ms))
            .clamp(1, MAX_TICK_MS);
        let mut requests = Vec::new();
        match rx.recv_timeout(Duration::from_millis(tick_ms)) {
            Ok(first) => {
                requests.push(first);
                requests.extend(rx.try_iter());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut shutdown = false;
        // One sync per file per burst, answered to every request about it.
        let mut files: Vec<(FileSync, Vec<Done>)> = Vec::new();
        for request in requests {
            match request {
                // The first request of a burst flushes everything written so
                // far; the ones after it usually find their target durable.
                Request::Sync { log, target, done } => {
                    let _ = done.send(log.flush_until(target));
                }
                Request::SyncFile { file, done } => {
                    match files
                        .iter_mut()
                        .find(|(f, _)| Arc::ptr_eq(&f.file, &file.file))
                    {
                        Some((_, waiters)) => waiters.push(done),
                        None => files.push((file, vec![done])),
                    }
                }
                Request::Watch(log) => watched.push(log),
                Request::Shutdown => shutdown = true,
            }
        }
        for (file, waiters) in files {
            let synced = super::faults::sync_data(&file.file, &file.path);
            file_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for done in waiters {
                let _ = done.send(match &synced {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StorageError::io(
                        &file.path,
                        // io::Error is not Clone: each waiter gets the OS
                        // error number (so ENOSPC stays `NoSpace`), or the
                        // kind and text.
                        match e.raw_os_error() {
                            Some(code) => std::io::Error::from_raw_os_error(code),
                            None => std::io::Error::new(e.kind(), e.to_string()),
                        },
                    )),
                });
            }
        }
        if shutdown {
            return;
        }
        let now_ms = monotonic_ms();
        watched.retain(|weak| weak.strong_count() > 0);
        for log in watched.iter().filter_map(Weak::upgrade) {
            match log.interval_flush_in(now_ms) {
                Some(0) => {
                    if let Err(err) = log.flush() {
                        tracing::error!(dir = %log.dir().display(), error = %err, "interval flush failed");
                    }
                }
                Some(_) => {
                    log.start_writeback();
                }
                None => {}
            }
        }
        if now_ms >= next_housekeeping_ms {
            next_housekeeping_ms = now_ms + HOUSEKEEPING_INTERVAL_MS;
            let now = SystemTime::now();
            for log in watched.iter().filter_map(Weak::upgrade) {
                if let Err(err) = log.enforce_retention(now) {
                    tracing::warn!(dir = %log.dir().display(), error = %err, "retention failed");
                }
                log.unmap_idle(now_ms, unmap_idle_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print() {
        for (text, policy) in [
            ("always", SyncPolicy::Always),
            ("never", SyncPolicy::Never),
            ("interval:250", SyncPolicy::Interval { ms: 250 }),
        ] {
            assert_eq!(text.parse::<SyncPolicy>(), Ok(policy));
            assert_eq!(policy.to_string(), text);
        }
        assert_eq!(
            "interval".parse::<SyncPolicy>(),
            Ok(SyncPolicy::Interval { ms: 100 })
        );
        assert!("interval:0".parse::<SyncPolicy>().is_err());
        assert!("sometimes".parse::<SyncPolicy>().is_err());
    }
}
