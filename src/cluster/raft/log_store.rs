//! The Raft log and vote, on disk.
//!
//! The log is one append-only file of records `[u32 length][u32 CRC-32 of
//! the body][body: bincode of the entry]`, fsynced before openraft is told
//! an append is durable. On open every record is checked; the first one
//! whose length or CRC is wrong is a torn tail (a crash mid-append, never
//! acknowledged) and is cut off, as segments' torn tails are. The vote, the
//! last purged log id and the committed log id live in a small metadata file
//! replaced atomically.
//!
//! The control plane's log is small (membership, topics, lease decisions;
//! heartbeats never reach it), so every live entry is also kept in memory
//! and the file is rewritten without the purged prefix after a snapshot.
//! File I/O runs on one writer thread, in order, so the async runtime's
//! workers never wait on an fsync; in a deterministic simulation
//! ([`crate::simulation`]) it runs on the calling task instead, in the same
//! order, so an append is durable at a moment only the seed decides.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

type NodeIdRaw = u64;

const META: MetaKind = MetaKind {
    magic: *b"SPRV",
    version: 1,
};
const RECORD_HEADER: usize = 8;
/// Rewrite the file once this many purged entries sit at its front.
const COMPACT_AFTER: usize = 1024;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeIdRaw>>,
    committed: Option<LogId<NodeIdRaw>>,
    purged: Option<LogId<NodeIdRaw>>,
}

struct Inner {
    meta: Meta,
    /// Live entries by index, with each record's file position.
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    /// Where the next record goes.
    file_len: u64,
    /// Records in the file before the first live entry.
    dead_records: usize,
    writer: Writer,
}

/// Who does the file I/O: the writer thread, or (in a simulation) the
/// caller, at once.
enum Writer {
    Thread(std::sync::mpsc::Sender<WriteOp>),
    Inline(WriteState),
}

/// The file the writes go to.
struct WriteState {
    dir: PathBuf,
    path: PathBuf,
    file: File,
}

enum WriteOp {
    Append {
        bytes: Vec<u8>,
        done: LogFlushed<TypeConfig>,
    },
    Truncate {
        len: u64,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Replace {
        bytes: Vec<u8>,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    Meta {
        meta: Meta,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
}

/// The durable Raft log of one broker. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("raft.log")
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("raft.meta")
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeIdRaw> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

fn encode_record(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(entry, bincode::config::standard())
        .map_err(|e| e.to_string())?;
    let mut record = Vec::with_capacity(RECORD_HEADER + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    Ok(record)
}

/// Reads every whole, CRC-valid record; returns them with their positions
/// and the length of the valid prefix.
fn read_records(bytes: &[u8]) -> (Vec<(Entry<TypeConfig>, u64)>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= RECORD_HEADER {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let Some(body) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok((entry, used)) = bincode::serde::decode_from_slice::<Entry<TypeConfig>, _>(
            body,
            bincode::config::standard(),
        ) else {
            break;
        };
        if used != len {
            break;
        }
        out.push((entry, at as u64));
        at += RECORD_HEADER + len;
    }
    (out, at as u64)
}

impl LogStore {
    /// Opens (creating) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path) -> Result<LogStore, crate::storage::StorageError> {
        use crate::storage::StorageError as SE;
        std::fs::create_dir_all(dir).map_err(|e| SE::io(dir, e))?;
        let meta: Meta = meta_file::read(&meta_path(dir), META)?.unwrap_or_default();
        let path = log_path(dir);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| SE::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| SE::io(&path, e))?;
        let (records, valid) = read_records(&bytes);
        if valid < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                kept = valid,
                cut = bytes.len() as u64 - valid,
                "raft log: cutting a torn tail"
            );
            file.set_len(valid).map_err(|e| SE::io(&path, e))?;
            file.sync_all().map_err(|e| SE::io(&path, e))?;
        }
        let purged_index = meta.purged.map(|l| l.index);
        let mut entries = BTreeMap::new();
        let mut dead_records = 0;
        for (entry, at) in records {
            if purged_index.is_some_and(|p| entry.log_id.index <= p) {
                dead_records += 1;
                continue;
            }
            entries.insert(entry.log_id.index, (entry, at));
        }
        let state = WriteState {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
        };
        let writer = if crate::simulation::active() {
            Writer::Inline(state)
        } else {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("spool-raft-log".into())
                .spawn(move || write_loop(state, rx))
                .map_err(|e| SE::io(&path, e))?;
            Writer::Thread(tx)
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner {
                meta,
                entries,
                file_len: valid,
                dead_records,
                writer,
            })),
        })
    }

    /// Changes the metadata and has the writer store it, after every
    /// write queued before.
    async fn update_meta(
        &self,
        change: impl FnOnce(&mut Meta),
    ) -> Result<(), StorageError<NodeIdRaw>> {
        let wait = {
            let mut inner = self.inner.lock();
            change(&mut inner.meta);
            let meta = inner.meta.clone();
            inner.queue(|done| WriteOp::Meta { meta, done })?
        };
        finished(wait).await
    }
}

impl Inner {
    /// Queues a write; its result arrives on the returned receiver. Called
    /// under the lock, so writes reach the file in the order the in-memory
    /// log changed.
    fn queue(
        &mut self,
        op: impl FnOnce(tokio::sync::oneshot::Sender<std::io::Result<()>>) -> WriteOp,
    ) -> Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>, StorageError<NodeIdRaw>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.write(op(done))?;
        Ok(wait)
    }

    /// Hands `op` to the writer thread, or does it here.
    fn write(&mut self, op: WriteOp) -> Result<(), StorageError<NodeIdRaw>> {
        match &mut self.writer {
            Writer::Thread(tx) => tx.send(op).map_err(|_| io_err("raft log writer stopped")),
            Writer::Inline(state) => {
                state.perform(op);
                Ok(())
            }
        }
    }
}

async fn finished(
    wait: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
) -> Result<(), StorageError<NodeIdRaw>> {
    wait.await
        .map_err(|_| io_err("raft log writer stopped"))?
        .map_err(io_err)
}

fn write_loop(mut state: WriteState, rx: std::sync::mpsc::Receiver<WriteOp>) {
    while let Ok(op) = rx.recv() {
        state.perform(op);
    }
}

impl WriteState {
    /// Does one write and reports its outcome to whoever waits for it.
    fn perform(&mut self, op: WriteOp) {
        let WriteState { dir, path, file } = self;
        match op {
            WriteOp::Append { bytes, done } => {
                let result = file.write_all(&bytes).and_then(|()| file.sync_data());
                if let Err(e) = &result {
                    tracing::error!(path = %path.display(), error = %e, "raft log append failed");
                }
                done.log_io_completed(result);
            }
            WriteOp::Truncate { len, done } => {
                let _ = done.send(file.set_len(len).and_then(|()| file.sync_all()));
            }
            WriteOp::Replace { bytes, done } => {
                let result =
                    crate::storage::atomic_file::write_atomic(path, &bytes, Durability::Synced)
                        .map_err(|e| std::io::Error::other(e.to_string()))
                        .and_then(|()| OpenOptions::new().read(true).append(true).open(&*path));
                let _ = done.send(result.map(|reopened| *file = reopened));
            }
            WriteOp::Meta { meta, done } => {
                let result = meta_file::write(&meta_path(dir), META, &meta, Durability::Synced)
                    .map_err(|e| std::io::Error::other(e.to_string()));
                let _ = done.send(result);
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeIdRaw>> {
        let inner = self.inner.lock();
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeIdRaw>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|(e, _)| e.log_id)
            .or(inner.meta.purged);
        Ok(LogState {
            last_purged_log_id: inner.meta.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeIdRaw>) -> Result<(), StorageError<NodeIdRaw>> {
        let vote = *vote;
        self.update_meta(|m| m.vote = Some(vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeIdRaw>>, StorageError<NodeIdRaw>> {
        Ok(self.inner.lock().meta.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeIdRaw>>,
    ) -> Result<(), StorageError<NodeIdRaw>> {
        self.update_meta(|m| m.committed = committed).await
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<NodeIdRaw>>, StorageError<NodeIdRaw>> {
        Ok(self.inner.lock().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeIdRaw>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock();
        let mut bytes = Vec::new();
        for entry in entries {
            let record = encode_record(&entry).map_err(io_err)?;
            let at = inner.file_len + bytes.len() as u64;
            bytes.extend_from_slice(&record);
            inner.entries.insert(entry.log_id.index, (entry, at));
        }
        inner.file_len += bytes.len() as u64;
        // Readable at once; durable when the writer calls back.
        inner.write(WriteOp::Append {
            bytes,
            done: callback,
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeIdRaw>) -> Result<(), StorageError<NodeIdRaw>> {
        let wait = {
            let mut inner = self.inner.lock();
            let cut = inner.entries.split_off(&log_id.index);
            let Some(&(_, len)) = cut.values().next() else {
                return Ok(());
            };
            inner.file_len = len;
            inner.queue(|done| WriteOp::Truncate { len, done })?
        };
        finished(wait).await
    }

    async fn purge(&mut self, log_id: LogId<NodeIdRaw>) -> Result<(), StorageError<NodeIdRaw>> {
        let (stored, replaced) = {
            let mut inner = self.inner.lock();
            let keep = inner.entries.split_off(&(log_id.index + 1));
            inner.dead_records += inner.entries.len();
            inner.entries = keep;
            inner.meta.purged = Some(log_id);
            // Compact once enough dead records sit at the front: rewrite the
            // live entries into a new file and swap it in.
            let rewrite = if inner.dead_records >= COMPACT_AFTER {
                let mut bytes = Vec::new();
                let mut moved = BTreeMap::new();
                for (index, (entry, _)) in std::mem::take(&mut inner.entries) {
                    let at = bytes.len() as u64;
                    bytes.extend_from_slice(&encode_record(&entry).map_err(io_err)?);
                    moved.insert(index, (entry, at));
                }
                inner.entries = moved;
                inner.file_len = bytes.len() as u64;
                inner.dead_records = 0;
                Some(bytes)
            } else {
                None
            };
            // The purge point is stored before the file is rewritten: a
            // crash between the two leaves dead records that the next open
            // skips, never a gap.
            let meta = inner.meta.clone();
            let stored = inner.queue(|done| WriteOp::Meta { meta, done })?;
            let replaced = match rewrite {
                Some(bytes) => Some(inner.queue(|done| WriteOp::Replace { bytes, done })?),
                None => None,
            };
            (stored, replaced)
        };
        finished(stored).await?;
        if let Some(replaced) = replaced {
            finished(replaced).await?;
        }
        Ok(())
    }
}
