//! A read-only check of one partition's files (`spool verify`): every batch
//! of every segment CRC-checked, offsets continuous across segments, index
//! files and the producers' snapshot readable. Nothing is written: the
//! problems found are what recovery would repair (or could not), named by
//! file and byte position.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Serialize;
use spool_protocol::Offset;

use super::durable_mark::DurableMark;
use super::mapping::SegmentMap;
use super::producers::{parse_snapshot_name, ProducerTable};
use super::segment::{self, check_bytes};
use super::Published;
use super::StorageError;

/// One thing wrong with a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Byte position in it, where that means something.
    pub position: Option<u64>,
    /// `damaged_batch` (unreadable, the rest served), `corrupt` (a sealed
    /// segment unreadable from here on), `torn_tail` (recovery would cut
    /// from here), `gap` (offsets missing between segments), `metadata` (a
    /// topic's or group's settings unreadable), `ack_log` or `ack_state` (a
    /// group's acks or deliveries lost or unreadable), `index`, `snapshot`
    /// or `torn_record` (rebuilt or cut on open, nothing lost: a torn last
    /// ack record was never confirmed).
    pub kind: &'static str,
    /// What is wrong, with the offsets concerned.
    pub detail: String,
}

impl Problem {
    /// True if data is lost or unreadable (an index or snapshot problem is
    /// only a rebuild on the next open).
    pub fn is_damage(&self) -> bool {
        !matches!(self.kind, "index" | "snapshot" | "torn_record")
    }
}

/// What a partition's check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionCheck {
    /// Segment files checked.
    pub segments: usize,
    /// Bytes of batches checked.
    pub bytes: u64,
    /// First offset.
    pub start: u64,
    /// Offset after the last valid batch.
    pub end: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

/// Checks the partition directory `dir`, changing nothing.
pub fn check_partition(dir: &Path) -> Result<PartitionCheck, StorageError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        if let Some(base) = segment::parse_log_file_name(&entry.file_name().to_string_lossy()) {
            bases.push(base);
        }
    }
    bases.sort();
    let mut check = PartitionCheck {
        segments: bases.len(),
        start: bases.first().map_or(0, |b| b.0),
        ..PartitionCheck::default()
    };
    let mut expected: Option<Offset> = None;
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::log_file_name(base));
        let last = i + 1 == bases.len();
        if let Some(expected) = expected.filter(|e| *e != base) {
            check.problems.push(Problem {
                file: path.clone(),
                position: None,
                kind: "gap",
                detail: format!(
                    "segment starts at offset {base}; the one before ends at {expected}"
                ),
            });
        }
        let file = File::open(&path).map_err(|e| StorageError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io(&path, e))?
            .len();
        let map = if len == 0 {
            SegmentMap::empty(&path)?
        } else {
            SegmentMap::map_ro(&file, len, &path)?
        };
        // Damage below what is known to have been written whole is kept
        // and stepped over by recovery, not cut: check as it would.
        let durable = match bases.get(i + 1) {
            Some(&next) => Some(Published {
                len,
                end_offset: next,
            }),
            None => DurableMark::load(dir)
                .filter(|mark| mark.segment == base)
                .map(|mark| mark.at),
        };
        // Never into a hole of a sparse active segment (see `data_end`).
        let scan_end = super::segment::data_end(&file, len)
            .max(durable.map_or(0, |d| d.len))
            .min(len);
        let found = check_bytes(map.prefix(scan_end as usize), base, durable);
        check.bytes += found.end_pos;
        for d in &found.damaged {
            check.problems.push(Problem {
                file: path.clone(),
                position: Some(d.position),
                kind: "damaged_batch",
                detail: format!(
                    "offsets {}..{} unreadable ({}); kept in place, the batches after it are served",
                    d.base, d.next, d.reason
                ),
            });
        }
        if let Some(reason) = found.stop {
            check.problems.push(Problem {
                file: path.clone(),
                position: Some(found.end_pos),
                kind: if last { "torn_tail" } else { "corrupt" },
                detail: if last {
                    format!(
                        "{reason}: recovery would cut the log at offset {}",
                        found.next_offset
                    )
                } else {
                    format!(
                        "{reason}: offsets from {} on are unreadable in this segment",
                        found.next_offset
                    )
                },
            });
        }
        if !last {
            let index = path.with_extension("index");
            if index.exists() && super::index::load(&index, len).is_none() {
                check.problems.push(Problem {
                    file: index,
                    position: None,
                    kind: "index",
                    detail: "unreadable or stale: rebuilt on the next open".into(),
                });
            }
        }
        expected = Some(found.next_offset);
        check.end = found.next_offset.0;
    }
    if let Err(e) = super::leader_epochs::LeaderEpochs::open(dir) {
        check.problems.push(Problem {
            file: dir.join(super::leader_epochs::FILE_NAME),
            position: None,
            kind: "metadata",
            detail: e.to_string(),
        });
    }
    for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(base) = parse_snapshot_name(&name) {
            if ProducerTable::load(dir, base).is_none() {
                check.problems.push(Problem {
                    file: entry.path(),
                    position: None,
                    kind: "snapshot",
                    detail: "producers' snapshot unreadable: rebuilt by a scan on the next open"
                        .into(),
                });
            }
        }
    }
    Ok(check)
}
