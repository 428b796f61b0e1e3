//! Durable state of one consumer group on one partition: an append-only log
//! of small CRC-checked records (acks, dead letters, delivery counts,
//! committed offsets, resets), compacted now and then into a snapshot
//! (bincode, replaced atomically) after which the log starts empty.
//!
//! Replay is not idempotent (a reset re-opens settled offsets, so a dead
//! letter replayed after it counts again). So the log and the snapshot carry
//! a *generation*: compaction writes the snapshot with generation g+1, then
//! empties the log and starts it with a header naming g+1. A log whose
//! generation is below the snapshot's was folded into it before a crash cut
//! the compaction short, and is dropped instead of replayed. A torn record at
//! the end of the log (crash mid-write) fails its CRC and is cut on open.
//!
//! Log header (20 bytes): magic `SPAL`, u32 format version, u64 generation,
//! u32 CRC-32 of the first 16 bytes. Record: u8 kind, u64 offset, u32 value,
//! u32 CRC-32 of the first 13 bytes. All little-endian. Version 2 added the
//! run of acks (kind 7); a version-1 log is read and folded into the
//! snapshot at open, so a log holding runs always says version 2. The snapshot
//! (`.ackstate`) is a metadata file (see `storage::meta_file`), magic `SPAS`.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};
use crate::storage::verify::Problem;
use crate::storage::{FileSync, StorageError};

const RECORD_LEN: usize = 17;
const LOG_MAGIC: [u8; 4] = *b"SPAL";
const LOG_VERSION: u32 = 2;
/// The version before runs of acks, still read.
const LOG_VERSION_WITHOUT_RUNS: u32 = 1;
const LOG_HEADER_LEN: usize = 20;
const SNAPSHOT_KIND: MetaKind = MetaKind {
    magic: *b"SPAS",
    version: 1,
};
/// The log is compacted into a snapshot after this many records (4.5 MB
/// of log, replayed on open in milliseconds). A compaction costs two
/// fsyncs and a rename whatever the state's size, under the group
/// partition's lock: at 16 Ki records a queue group acking 700k messages/s
/// compacted 40 times a second and stalled its deliveries and acks on
/// them.
pub const COMPACT_AFTER_RECORDS: u64 = 256 * 1024;

/// One change of group state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckRecord {
    /// The offset was acked.
    Acked(u64),
    /// `count` offsets from the first were acked: consumers ack in order,
    /// so one record (and one CRC) stands for a whole ack request's worth.
    AckedRun(u64, u32),
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
            AckRecord::AckedRun(first, count) => {
                for o in run(first, count) {
                    self.settle(o);
                }
            }
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
    file: Arc<File>,
    /// Named by the log's header; the snapshot names the same one.
    generation: u64,
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
        let (log_path, snapshot_path) = paths(dir, partition);
        // The snapshot is (generation of the log that follows it, state).
        let (generation, mut state): (u64, AckState) =
            meta_file::read(&snapshot_path, SNAPSHOT_KIND)?.unwrap_or_default();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| StorageError::io(&log_path, e))?;
        let mut log = AckLog {
            log_path,
            snapshot_path,
            file: Arc::new(file),
            generation,
            records_since_snapshot: 0,
            sync,
        };
        let (log_generation, version) = match parse_header(&log.log_path, &bytes)? {
            Some(header) => header,
            // Empty, or a header torn by a crash right after a compaction
            // emptied the log: nothing to replay.
            None => {
                log.restart(generation)?;
                return Ok((log, state));
            }
        };
        if log_generation < generation {
            tracing::info!(path = %log.log_path.display(), "ack log was already folded into the snapshot; dropping it");
            log.restart(generation)?;
            return Ok((log, state));
        }
        if log_generation > generation {
            return Err(StorageError::Metadata {
                path: log.log_path.clone(),
                reason: format!(
                    "ack log generation {log_generation} is newer than its snapshot's ({}): the snapshot is missing or stale",
                    generation
                ),
            });
        }
        let records = &bytes[LOG_HEADER_LEN..];
        let mut valid = 0usize;
        for chunk in records.chunks(RECORD_LEN) {
            match decode(chunk) {
                Some(record) => {
                    state.apply(record);
                    valid += RECORD_LEN;
                    log.records_since_snapshot += 1;
                }
                None => break,
            }
        }
        if valid < records.len() {
            tracing::warn!(path = %log.log_path.display(), valid, len = records.len(), "cutting torn tail of ack log");
            let io = |e| StorageError::io(&log.log_path, e);
            log.file
                .set_len((LOG_HEADER_LEN + valid) as u64)
                .map_err(io)?;
            log.file.sync_all().map_err(io)?;
        }
        if version == LOG_VERSION_WITHOUT_RUNS {
            // Runs are appended from now on: the log they go into must say
            // version 2, or an older Spool would read them as damage.
            log.compact(&state)?;
        }
        Ok((log, state))
    }

    /// Empties the log and starts it with the header of `generation`.
    fn restart(&mut self, generation: u64) -> Result<(), StorageError> {
        let io = |e| StorageError::io(&self.log_path, e);
        self.file.set_len(0).map_err(io)?;
        let mut header = Vec::with_capacity(LOG_HEADER_LEN);
        header.extend_from_slice(&LOG_MAGIC);
        header.extend_from_slice(&LOG_VERSION.to_le_bytes());
        header.extend_from_slice(&generation.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        (&*self.file).write_all(&header).map_err(io)?;
        if self.sync {
            // Records are only ever appended after a durable header.
            self.file.sync_data().map_err(io)?;
        }
        self.generation = generation;
        self.records_since_snapshot = 0;
        Ok(())
    }

    /// True once enough records have piled up that the caller should hand
    /// over a snapshot ([`AckLog::compact`]).
    pub fn wants_compaction(&self) -> bool {
        self.records_since_snapshot >= COMPACT_AFTER_RECORDS
    }

    /// Appends records in one write. For a log that must be synced, returns
    /// the sync to wait for before acknowledging what the records say: the
    /// caller hands it to the flusher once it holds no lock, so no lock and
    /// no async worker waits on the disk, and concurrent acks share a sync.
    pub fn append(&mut self, records: &[AckRecord]) -> Result<Option<FileSync>, StorageError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(records.len() * RECORD_LEN);
        for r in records {
            encode(*r, &mut buf);
        }
        (&*self.file)
            .write_all(&buf)
            .map_err(|e| StorageError::io(&self.log_path, e))?;
        self.records_since_snapshot += records.len() as u64;
        Ok(self.sync.then(|| FileSync {
            file: self.file.clone(),
            path: self.log_path.clone(),
        }))
    }

    /// Writes `state` (which must include every record appended so far) as
    /// the snapshot and empties the log.
    pub fn compact(&mut self, state: &AckState) -> Result<(), StorageError> {
        let generation = self.generation + 1;
        meta_file::write(
            &self.snapshot_path,
            SNAPSHOT_KIND,
            &(generation, state),
            Durability::Synced,
        )?;
        self.restart(generation)
    }
}

/// Checks `<dir>/<partition>.acklog` and its snapshot without changing
/// either (`spool verify`): what the next open would refuse, or cut.
pub fn check(dir: &Path, partition: u32) -> Vec<Problem> {
    let (log_path, snapshot_path) = paths(dir, partition);
    let mut problems = Vec::new();
    let problem = |file: &Path, position, kind, detail: String| Problem {
        file: file.to_path_buf(),
        position,
        kind,
        detail,
    };
    let generation = match meta_file::read::<(u64, AckState)>(&snapshot_path, SNAPSHOT_KIND) {
        Ok(snapshot) => snapshot.map_or(0, |(generation, _)| generation),
        Err(e) => {
            let detail = format!("{e}: the group cannot open until it is restored or removed");
            problems.push(problem(&snapshot_path, None, "ack_state", detail));
            return problems;
        }
    };
    let bytes = match fs::read(&log_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return problems,
        Err(e) => {
            problems.push(problem(&log_path, None, "ack_log", e.to_string()));
            return problems;
        }
    };
    match parse_header(&log_path, &bytes) {
        Err(e) => problems.push(problem(&log_path, Some(0), "ack_log", e.to_string())),
        Ok(Some((log_generation, _))) if log_generation > generation => problems.push(problem(
            &log_path,
            Some(0),
            "ack_log",
            format!("generation {log_generation} is newer than its snapshot's ({generation})"),
        )),
        Ok(Some((log_generation, _))) if log_generation == generation => {
            let records = &bytes[LOG_HEADER_LEN..];
            let valid = records
                .chunks(RECORD_LEN)
                .take_while(|chunk| decode(chunk).is_some())
                .count()
                * RECORD_LEN;
            if valid < records.len() {
                // A torn last record is a crash's normal leftover; anything
                // more is acks and deliveries lost.
                let torn_only = records.len() - valid < RECORD_LEN;
                problems.push(problem(
                    &log_path,
                    Some((LOG_HEADER_LEN + valid) as u64),
                    if torn_only { "torn_record" } else { "ack_log" },
                    format!(
                        "{} bytes after the last valid record are cut on open{}",
                        records.len() - valid,
                        if torn_only {
                            ""
                        } else {
                            ": acks or deliveries recorded there are lost (messages may be delivered again)"
                        }
                    ),
                ));
            }
        }
        // Empty, torn header, or already folded into the snapshot.
        Ok(_) => {}
    }
    problems
}

/// Partition `partition`'s ack log and its snapshot in group directory
/// `dir`.
fn paths(dir: &Path, partition: u32) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{partition}.acklog")),
        dir.join(format!("{partition}.ackstate")),
    )
}

/// The generation and format version named by the log's header; `None` for
/// an empty log or a header torn before it was complete.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<Option<(u64, u32)>, StorageError> {
    if bytes.len() < LOG_HEADER_LEN {
        return Ok(None);
    }
    let bad = |reason: String| StorageError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let header = &bytes[..LOG_HEADER_LEN];
    let crc = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    if header[..4] != LOG_MAGIC || crc32fast::hash(&header[..16]) != crc {
        return Err(bad("not an ack log (bad magic or header CRC)".into()));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if version != LOG_VERSION && version != LOG_VERSION_WITHOUT_RUNS {
        return Err(bad(format!(
            "ack log format version {version} is not supported (this Spool reads versions {LOG_VERSION_WITHOUT_RUNS} and {LOG_VERSION})"
        )));
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&header[8..16]);
    Ok(Some((u64::from_le_bytes(generation), version)))
}

fn encode(record: AckRecord, buf: &mut Vec<u8>) {
    let (kind, offset, value) = match record {
        AckRecord::Acked(o) => (1u8, o, 0u32),
        AckRecord::AckedRun(first, count) => (7, first, count),
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
        7 => AckRecord::AckedRun(offset, value),
        _ => return None,
    })
}

/// The offsets of a run of `count` acks from `first` (cut at the end of the
/// offset space rather than wrapping).
pub fn run(first: u64, count: u32) -> std::ops::Range<u64> {
    first..first.saturating_add(u64::from(count))
}

/// The same records with each stretch of acks of consecutive offsets as one
/// run: what an ack request of in-order deliveries writes.
pub fn with_runs(records: Vec<AckRecord>) -> Vec<AckRecord> {
    let mut out: Vec<AckRecord> = Vec::with_capacity(records.len().min(16));
    for r in records {
        let AckRecord::Acked(o) = r else {
            out.push(r);
            continue;
        };
        let longer = match out.last() {
            Some(&AckRecord::Acked(first)) if first.checked_add(1) == Some(o) => {
                Some(AckRecord::AckedRun(first, 2))
            }
            Some(&AckRecord::AckedRun(first, count))
                if count < u32::MAX && first.checked_add(u64::from(count)) == Some(o) =>
            {
                Some(AckRecord::AckedRun(first, count + 1))
            }
            _ => None,
        };
        match (longer, out.last_mut()) {
            (Some(longer), Some(last)) => *last = longer,
            _ => out.push(r),
        }
    }
    out
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
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            (LOG_HEADER_LEN + 3 * RECORD_LEN) as u64
        );
    }

    /// A crash between writing the snapshot and emptying the log leaves
    /// records that the snapshot already holds. Replaying them again must not
    /// count anything twice, even across a reset (which re-opens settled
    /// offsets, so "settling is a set insert" does not make replay harmless).
    #[test]
    fn a_log_already_folded_into_the_snapshot_is_not_replayed_again() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("0.acklog");
        let (mut log, mut state) = AckLog::open(dir.path(), 0, false).unwrap();
        let records = [
            AckRecord::DeadLettered(5),
            AckRecord::Reset(0),
            AckRecord::Delivered(3, 2),
        ];
        log.append(&records).unwrap();
        records.iter().for_each(|r| state.apply(*r));
        assert_eq!(state.dead_letters, 1);
        let unfolded_log = fs::read(&log_path).unwrap();
        log.compact(&state).unwrap();
        drop(log);
        // The crash: the snapshot is in place, the log still holds its records.
        fs::write(&log_path, &unfolded_log).unwrap();
        let (mut log, reopened) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!(reopened, state);
        assert_eq!(reopened.dead_letters, 1);
        // Records appended after the recovery are replayed once.
        log.append(&[AckRecord::DeadLettered(7)]).unwrap();
        drop(log);
        let (_log, again) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!(again.dead_letters, 2);
        assert!(again.settled.contains(&7));
    }

    #[test]
    fn consecutive_acks_are_written_as_runs() {
        use AckRecord::*;
        let records = vec![
            Acked(4),
            Acked(5),
            Acked(6),
            Acked(8),
            Delivered(9, 2),
            Acked(9),
            Acked(10),
            Acked(u64::MAX),
        ];
        assert_eq!(
            with_runs(records),
            [
                AckedRun(4, 3),
                Acked(8),
                Delivered(9, 2),
                AckedRun(9, 2),
                Acked(u64::MAX)
            ]
        );
        // Out of order or repeated: left as they are.
        assert_eq!(
            with_runs(vec![Acked(3), Acked(2), Acked(2)]),
            [Acked(3), Acked(2), Acked(2)]
        );
    }

    #[test]
    fn runs_replay_like_the_acks_they_stand_for() {
        let dir = tempfile::tempdir().unwrap();
        let acks: Vec<AckRecord> = (0..1000).chain(1500..1600).map(AckRecord::Acked).collect();
        let mut expected = AckState::default();
        acks.iter().for_each(|r| expected.apply(*r));
        {
            let (mut log, _) = AckLog::open(dir.path(), 0, false).unwrap();
            let runs = with_runs(acks);
            assert_eq!(runs.len(), 2);
            log.append(&runs).unwrap();
        }
        let (_log, replayed) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!(replayed, expected);
        assert_eq!(replayed.floor, 1000);
        assert_eq!(replayed.settled.len(), 100);
    }

    /// A log written before runs existed is read, then folded into the
    /// snapshot, so the runs appended after it go to a log that says
    /// version 2 (an older Spool refuses it rather than cutting the runs as
    /// damage).
    #[test]
    fn a_version_1_log_is_read_and_folded_before_runs_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.acklog");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&LOG_MAGIC);
        bytes.extend_from_slice(&LOG_VERSION_WITHOUT_RUNS.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        for r in [
            AckRecord::Acked(0),
            AckRecord::Acked(1),
            AckRecord::Acked(3),
        ] {
            encode(r, &mut bytes);
        }
        fs::write(&path, &bytes).unwrap();
        let (mut log, state) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!((state.floor, state.settled.len()), (2, 1));
        let header = fs::read(&path).unwrap();
        assert_eq!(header.len(), LOG_HEADER_LEN, "folded into the snapshot");
        assert_eq!(
            parse_header(&path, &header).unwrap(),
            Some((1, LOG_VERSION))
        );
        log.append(&[AckRecord::AckedRun(2, 1)]).unwrap();
        drop(log);
        let (_log, reopened) = AckLog::open(dir.path(), 0, false).unwrap();
        assert_eq!((reopened.floor, reopened.settled.len()), (4, 0));
    }
}
