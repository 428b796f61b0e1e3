//! The entry point shared by the `segment_recovery` cargo-fuzz target and
//! the bounded random-input test in the normal suite, so both exercise
//! exactly the same code: open a partition directory made of arbitrary
//! files, the way a crash, a bad disk or an operator could leave it.
//!
//! Promises checked: opening never panics (refusing is fine: it is
//! reported); every batch a read serves passes its CRC and structure checks,
//! with contiguous, growing offsets; and a log that opened takes a new append
//! at its end and serves it back.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use spool_protocol::batch::Batches;
use spool_protocol::{Batch, BatchBuilder, Offset};

use super::{LogConfig, PartitionLog, SyncPolicy};

/// Decodes `data` into segment and index files, opens them as a partition
/// log and checks the promises above. Panics only when one is broken.
///
/// Input: byte 0 holds flags (bit 0: the directory was shut down cleanly,
/// so indexes are trusted); then records of u8 kind (even: segment, odd:
/// index), u16 LE base offset, u16 LE length, and that many bytes of file.
///
/// Returns how many records the recovered log served (0 if it refused to
/// open), so a test can check that an undamaged input really recovers.
pub fn exercise_recovery(data: &[u8]) -> u64 {
    let Some((&flags, mut rest)) = data.split_first() else {
        return 0;
    };
    let dir = TempDir::new();
    while rest.len() >= 5 {
        let kind = rest[0];
        let base = u64::from(u16::from_le_bytes([rest[1], rest[2]]));
        let len = usize::from(u16::from_le_bytes([rest[3], rest[4]])).min(rest.len() - 5);
        let bytes = &rest[5..5 + len];
        rest = &rest[5 + len..];
        let ext = if kind % 2 == 0 { "log" } else { "index" };
        let _ = fs::write(dir.0.join(format!("{base:020}.{ext}")), bytes);
    }
    let config = LogConfig {
        segment_size_bytes: 64 * 1024,
        sync: SyncPolicy::Never,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 256,
    };
    let Ok(log) = PartitionLog::open(&dir.0, config, flags & 1 == 1) else {
        return 0;
    };
    let mut served = 0u64;
    let (start, end) = (log.start_offset(), log.next_offset());
    assert!(start <= end, "start {start} past end {end}");
    let mut offset = start;
    while offset < end {
        let fetched = match log.read(offset, 16 * 1024) {
            Ok(fetched) => fetched,
            // A damaged range is reported, never served: step over it.
            Err(_) => {
                offset = Offset(offset.0 + 1);
                continue;
            }
        };
        assert!(
            !fetched.batches.is_empty(),
            "empty read at {offset} before {end}"
        );
        let mut expected = None;
        for batch in Batches::new(&fetched.batches) {
            let batch = batch.expect("a served batch must pass its checks");
            let header = batch.header();
            if let Some(next) = expected {
                assert_eq!(header.base_offset, next, "offsets not contiguous");
            }
            assert!(header.next_offset() <= end, "served past the log's end");
            expected = Some(header.next_offset());
            served += batch.records().filter(|r| r.offset >= offset).count() as u64;
        }
        assert!(fetched.next_offset > offset, "read made no progress");
        offset = fetched.next_offset;
    }
    let mut builder = BatchBuilder::new();
    if builder.push(0, None, b"after recovery", &[]).is_err() {
        return served;
    }
    let Ok(bytes) = builder.finish() else {
        return served;
    };
    let Ok(batch) = Batch::validate(&bytes) else {
        return served;
    };
    if let Ok(info) = log.append(batch) {
        assert_eq!(
            info.base_offset, end,
            "an append after recovery must go at the end"
        );
        let fetched = log
            .read(info.base_offset, 1 << 20)
            .expect("the batch just appended must be readable");
        let first = Batches::new(&fetched.batches)
            .next()
            .expect("a read of the new batch returns it")
            .expect("the new batch passes its checks");
        assert_eq!(first.header().base_offset, info.base_offset);
    }
    served
}

/// A fresh directory removed on drop (std only: fuzz targets carry no
/// test dependencies).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "spool-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        let _ = fs::create_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
