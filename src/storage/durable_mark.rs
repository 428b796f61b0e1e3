//! The durable mark: the last batch boundary of the active segment that a
//! flush put on disk, rewritten after every flush that moved it.
//!
//! Recovery cuts the active segment at the first batch it cannot read, on
//! the theory that it is a write that never finished. Below the mark that
//! theory is wrong: those bytes were flushed (and, under `always`,
//! acknowledged), so a batch there that fails its check is damage. Recovery
//! keeps such a range in place as unreadable, finds the valid batches after
//! it, and appends after the mark, so an offset that was ever acknowledged
//! or served is never given to another message.
//!
//! The file is written after the flush returns and without an fsync of its
//! own (that would double the cost of every flush): whenever it is on disk,
//! what it describes was on disk before it. A power failure can lose its
//! last update, and the mark is then older than the data, which only makes
//! recovery fall back to cutting at the first unreadable batch past it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Published;
use spool_protocol::Offset;

/// File name, in the partition's directory.
pub const FILE_NAME: &str = "durable-mark";

const MAGIC: u32 = 0x4B52_4D44; // "DMRK"
const LEN: usize = 4 + 8 + 8 + 8 + 4;

/// Where the active segment's data was last flushed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableMark {
    /// Base offset of the segment the mark is in.
    pub segment: Offset,
    /// The batch boundary.
    pub at: Published,
}

impl DurableMark {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.segment.0.to_le_bytes());
        b[12..20].copy_from_slice(&self.at.len.to_le_bytes());
        b[20..28].copy_from_slice(&self.at.end_offset.0.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<DurableMark> {
        let b: &[u8; LEN] = b.get(..LEN)?.try_into().ok()?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != MAGIC || crc32fast::hash(&b[..28]) != crc
        {
            return None;
        }
        let (segment, len, end_offset) = (Offset(u64_at(4)), u64_at(12), Offset(u64_at(20)));
        (end_offset >= segment).then_some(DurableMark {
            segment,
            at: Published { len, end_offset },
        })
    }

    /// The mark in `dir`, if there is a readable one. A damaged or missing
    /// mark is no mark: recovery then trusts the scan alone, as before.
    pub fn load(dir: &Path) -> Option<DurableMark> {
        let path = dir.join(FILE_NAME);
        let bytes = std::fs::read(&path).ok()?;
        let mark = DurableMark::decode(&bytes);
        if mark.is_none() {
            tracing::warn!(path = %path.display(), "unreadable durable mark ignored");
        }
        mark
    }
}

/// Rewrites the mark in place, keeping the file open between flushes.
#[derive(Debug)]
pub struct MarkWriter {
    path: PathBuf,
    file: Option<File>,
    failing: bool,
}

impl MarkWriter {
    /// A writer for the mark of the partition in `dir`.
    pub fn new(dir: &Path) -> MarkWriter {
        MarkWriter {
            path: dir.join(FILE_NAME),
            file: None,
            failing: false,
        }
    }

    /// Records `mark`. A failure is logged (once until it works again) and
    /// otherwise ignored: the mark only sharpens recovery, and the flush it
    /// follows did succeed.
    pub fn write(&mut self, mark: DurableMark) {
        let written = self.file().and_then(|f| f.write_all_at(&mark.encode(), 0));
        match written {
            Ok(()) => self.failing = false,
            Err(err) => {
                self.file = None;
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %err, "could not write the durable mark");
                }
                self.failing = true;
            }
        }
    }

    fn file(&mut self) -> std::io::Result<&File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            self.file = Some(file);
        }
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("mark file not open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_damage_is_no_mark() {
        let mark = DurableMark {
            segment: Offset(100),
            at: Published {
                len: 4096,
                end_offset: Offset(160),
            },
        };
        let bytes = mark.encode();
        assert_eq!(DurableMark::decode(&bytes), Some(mark));
        for i in 0..LEN {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert_eq!(DurableMark::decode(&bad), None, "flip at byte {i}");
        }
        assert_eq!(DurableMark::decode(&bytes[..LEN - 1]), None);
    }

    #[test]
    fn the_writer_rewrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = MarkWriter::new(dir.path());
        for end in [10u64, 20, 30] {
            let mark = DurableMark {
                segment: Offset(0),
                at: Published {
                    len: end * 100,
                    end_offset: Offset(end),
                },
            };
            writer.write(mark);
            assert_eq!(DurableMark::load(dir.path()), Some(mark));
        }
    }
}
