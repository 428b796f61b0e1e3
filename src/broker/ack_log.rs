//! Durable state of one consumer group on one partition: an append-only log
//! of small CRC-checked records (acks, dead letters, delivery counts,
//! committed offsets, resets), compacted now and then into a snapshot
//! (bincode, replaced atomically) after which the log starts empty.
//!
//! Replaying a record twice changes nothing (settling is a set insert,
//! counts take the maximum, a reset or commit overwrites), so a crash between
//! writing a snapshot and truncating the log is harmless. A torn record at
//! the end of the log (crash mid-write) fails its CRC and is cut on open.
//!
//! Record: u8 kind, u64 offset, u32 value, u32 CRC-32 of the first 13 bytes.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::atomic_file::{write_atomic, Durability};
use crate::storage::StorageError;

const RECORD_LEN: usize = 17;
const SNAPSHOT_VERSION: u32 = 1;
/// The log is compacted into a snapshot after this many records.
pub const COMPACT_AFTER_RECORDS: u64 = 16 * 1024;

/// One change of group state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckRecord {
    /// The offset was acked.
    Acked(u64),
    /// The offset was moved to the dead-letter topic.
    DeadLettered(u64),
    /// The offset has been delivered this many times.
    Delivered(u64, u32),
    /// The stream-mode committed offset (next offset to consume).
    Committed(u64),
    /// Everything below this offset is settled (retention removed it).
    Floor(u64),
    /// Forget everything; restart at this offset.
    Reset(u64),
}

/// What the log and snapshot say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckState {
    version: u32,
    /// Every offset below this is settled.
    pub floor: u64,
    /// Settled offsets at or above `floor`.
    pub settled: BTreeSet<u64>,
    /// Delivery counts of unsettled offsets that were redelivered.
    pub counts: HashMap<u64, u32>,
    /// Stream-mode committed offset.
    pub committed: Option<u64>,
    /// Messages moved to the dead-letter topic, ever.
    pub dead_letters: u64,
}

impl AckState {
    /// A state to snapshot.
    pub fn new(
        floor: u64,
        settled: BTreeSet<u64>,
        counts: HashMap<u64, u32>,
        committed: Option<u64>,
        dead_letters: u64,
    ) -> AckState {
        AckState {
            version: SNAPSHOT_VERSION,
            floor,
            settled,
            counts,
            committed,
            dead_letters,
        }
    }

    /// Applies one record (replay).
    pub fn apply(&mut self, record: AckRecord) {
        match record {
            AckRecord::Acked(o) => self.settle(o),
            AckRecord::DeadLettered(o) => {
                if o >= self.floor && !self.settled.contains(&o) {
                    self.dead_letters += 1;
                }
                self.settle(o);
            }
            AckRecord::Delivered(o, n) => {
                if o >= self.floor && !self.settled.contains(&o) {
                    let count = self.counts.entry(o).or_insert(0);
                    *count = (*count).max(n);
                }
            }
            AckRecord::Committed(o) => self.committed = Some(o),
            AckRecord::Floor(o) => {
                if o > self.floor {
                    self.floor = o;
                    self.settled = self.settled.split_off(&o);
                    self.counts.retain(|&k, _| k >= o);
                }
            }
            AckRecord::Reset(o) => {
                self.floor = o;
                self.settled.clear();
                self.counts.clear();
                self.committed = Some(o);
            }
        }
    }

    fn settle(&mut self, offset: u64) {
        if offset < self.floor {
            return;
        }
        self.counts.remove(&offset);
        self.settled.insert(offset);
        while self.settled.remove(&self.floor) {
            self.floor += 1;
        }
    }
}

/// The ack log of one group partition.
///
/// The live state is kept by the caller (the group's delivery state); the
/// log only replays it at open and snapshots what the caller hands it.
pub struct AckLog {
    log_path: PathBuf,
    snapshot_path: PathBuf,
    file: File,
    records_since_snapshot: u64,
    sync: bool,
}

impl AckLog {
    /// Opens (or creates) `<dir>/<partition>.acklog` and its snapshot,
    /// cutting a torn tail. With `sync`, every append is fsynced before it
    /// returns.
    pub fn open(
        dir: &Path,
        partition: u32,
        sync: bool,
    ) -> Result<(AckLog, AckState), StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let log_path = dir.join(format!("{partition}.acklog"));
        let snapshot_path = dir.join(format!("{partition}.ackstate"));
        let mut state = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let (state, _): (AckState, usize) =
                    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                        .map_err(|e| StorageError::Corrupt {
                            path: snapshot_path.clone(),
                            position: 0,
                            offset: spool_protocol::Offset(0),
                            reason: format!("ack snapshot does not decode: {e}"),
                        })?;
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AckState::default(),
            Err(e) => return Err(StorageError::io(&snapshot_path, e)),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let mut valid = 0usize;
        let mut records = 0u64;
        for chunk in bytes.chunks(RECORD_LEN) {
            match decode(chunk) {
                Some(record) => {
                    state.apply(record);
                    valid += RECORD_LEN;
                    records += 1;
                }
                None => break,
            }
        }
        if valid < bytes.len() {
            tracing::warn!(path = %log_path.display(), valid, len = bytes.len(), "cutting torn tail of ack log");
            file.set_len(valid as u64)
                .map_err(|e| StorageError::io(&log_path, e))?;
            file.sync_all()
                .map_err(|e| StorageError::io(&log_path, e))?;
        }
        state.version = SNAPSHOT_VERSION;
        let log = AckLog {
            log_path,
            snapshot_path,
            file,
            records_since_snapshot: records,
            sync,
        };
        Ok((log, state))
    }

    /// True once enough records have piled up that the caller should hand
    /// over a snapshot ([`AckLog::compact`]).
    pub fn wants_compaction(&self) -> bool {
        self.records_since_snapshot >= COMPACT_AFTER_RECORDS
    }

    /// Appends records in one write.
    pub fn append(&mut self, records: &[AckRecord]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * RECORD_LEN);
        for r in records {
            encode(*r, &mut buf);
        }
        self.file
            .write_all(&buf)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        if self.sync {
            self.file
                .sync_data()
                .map_err(|e| StorageError::io(&self.log_path, e))?;
        }
        self.records_since_snapshot += records.len() as u64;
        Ok(())
    }

    /// Writes `state` (which must include every record appended so far) as
    /// the snapshot and empties the log.
    pub fn compact(&mut self, state: &AckState) -> Result<(), StorageError> {
        let mut state = state.clone();
        state.version = SNAPSHOT_VERSION;
        let bytes =
            bincode::serde::encode_to_vec(&state, bincode::config::standard()).map_err(|e| {
                StorageError::Io {
                    path: self.snapshot_path.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        write_atomic(&self.snapshot_path, &bytes, Durability::Synced)?;
        self.file
            .set_len(0)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.records_since_snapshot = 0;
        Ok(())
    }
}

fn encode(record: AckRecord, buf: &mut Vec<u8>) {
    let (kind, offset, value) = match record {
        AckRecord::Acked(o) => (1u8, o, 0u32),
        AckRecord::DeadLettered(o) => (2, o, 0),
        AckRecord::Delivered(o, n) => (3, o, n),
        AckRecord::Committed(o) => (4, o, 0),
        AckRecord::Floor(o) => (5, o, 0),
        AckRecord::Reset(o) => (6, o, 0),
    };
    let start = buf.len();
    buf.push(kind);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

fn decode(chunk: &[u8]) -> Option<AckRecord> {
    if chunk.len() != RECORD_LEN {
        return None;
    }
    let crc = u32::from_le_bytes([chunk[13], chunk[14], chunk[15], chunk[16]]);
    if crc32fast::hash(&chunk[..13]) != crc {
        return None;
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&chunk[1..9]);
    let offset = u64::from_le_bytes(o);
    let value = u32::from_le_bytes([chunk[9], chunk[10], chunk[11], chunk[12]]);
    Some(match chunk[0] {
        1 => AckRecord::Acked(offset),
        2 => AckRecord::DeadLettered(offset),
        3 => AckRecord::Delivered(offset, value),
        4 => AckRecord::Committed(offset),
        5 => AckRecord::Floor(offset),
        6 => AckRecord::Reset(offset),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_compaction_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut state) = AckLog::open(dir.path(), 0, false).unwrap();
            let first = [
                AckRecord::Acked(0),
                AckRecord::Acked(2),
                AckRecord::Delivered(1, 3),
            ];
            log.append(&first).unwrap();
            first.iter().for_each(|r| state.apply(*r));
            assert_eq!(state.floor, 1);
            log.compact(&state).unwrap();
            log.append(&[
                AckRecord::DeadLettered(1),
                AckRecord::Committed(9),
                AckRecord::Acked(5),
            ])
            .unwrap();
        }
        // A torn record at the end.
        let path = dir.path().join("0.acklog");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[1, 2, 3, 4, 5]).unwrap();
        drop(f);
        let (_log, s) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!(s.floor, 3);
        assert_eq!(s.settled.iter().copied().collect::<Vec<_>>(), [5]);
        assert!(s.counts.is_empty());
        assert_eq!((s.committed, s.dead_letters), (Some(9), 1));
        assert_eq!(fs::metadata(&path).unwrap().len(), 3 * RECORD_LEN as u64);
    }

    #[test]
    fn replaying_the_log_over_a_newer_snapshot_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut expected) = AckLog::open(dir.path(), 3, false).unwrap();
        let records = [
            AckRecord::Acked(0),
            AckRecord::Reset(10),
            AckRecord::Acked(10),
            AckRecord::Delivered(12, 2),
        ];
        log.append(&records).unwrap();
        records.iter().for_each(|r| expected.apply(*r));
        // Snapshot written but the log not truncated (crash in between).
        let bytes = bincode::serde::encode_to_vec(&expected, bincode::config::standard()).unwrap();
        fs::write(dir.path().join("3.ackstate"), bytes).unwrap();
        drop(log);
        let (_log, state) = AckLog::open(dir.path(), 3, false).unwrap();
        assert_eq!(state, expected);
    }
}
