//! Recycled segment files (`storage/recycle.rs`): retention's dropped
//! segments become the next active segments, their old bytes overwritten
//! in place. Nothing old may ever be read as data: not by readers of the
//! live log, not by recovery after a crash or a clean close, not by
//! `spool verify`; and a reader holding a slice of a dropped segment keeps
//! the bytes it was given.

use bytes::Bytes;
use spool::storage::verify::check_partition;
use spool::storage::{LogConfig, PartitionLog};
use spool::{Batch, BatchBuilder, Offset, SyncPolicy};

const SEGMENT: u64 = 64 * 1024;

/// A directory on the disk the build is on: recycling needs a file system
/// that can say whether a page is cached (`RWF_NOWAIT` reads), which a
/// tmpfs `/tmp` may not.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        segment_size_bytes: SEGMENT,
        sync,
        retention_ms: None,
        retention_bytes: Some(2 * SEGMENT),
        index_interval_bytes: 4096,
    }
}

/// A batch of `n` records whose values name their offsets (from `first`)
/// and vary in length, so that batch boundaries fall at different places
/// in each life of a recycled file.
fn batch_at(first: u64, n: u64) -> Bytes {
    let mut b = BatchBuilder::with_capacity(4096);
    for i in 0..n {
        let offset = first + i;
        let mut value = format!("value of {offset}:").into_bytes();
        value.resize(
            value.len() + (offset % 97) as usize,
            b'a' + (offset % 26) as u8,
        );
        b.push(1_700_000_000_000, None, &value, &[]).unwrap();
    }
    b.finish().unwrap()
}

fn check_value(offset: u64, value: &[u8]) {
    let prefix = format!("value of {offset}:");
    assert!(
        value.starts_with(prefix.as_bytes()),
        "record {offset} holds {:?}",
        String::from_utf8_lossy(&value[..value.len().min(40)])
    );
    let fill = &value[prefix.len()..];
    assert_eq!(fill.len() as u64, offset % 97, "record {offset}'s length");
    assert!(fill.iter().all(|&c| c == b'a' + (offset % 26) as u8));
}

/// Appends batches until `until` offsets, enforcing retention after each.
fn append_until(log: &PartitionLog, until: u64) {
    while log.next_offset().0 < until {
        let next = log.next_offset().0;
        let n = 1 + next % 13;
        let bytes = batch_at(next, n);
        let info = log.append(Batch::validate(&bytes).unwrap()).unwrap();
        assert_eq!(info.base_offset, Offset(next));
        log.enforce_retention(std::time::SystemTime::now()).unwrap();
    }
}

/// Reads every record from the log's start to its end, checking each.
fn check_log(log: &PartitionLog) -> u64 {
    // Under `always` readers see only what a flush made durable.
    log.flush().unwrap();
    let (start, end) = (log.start_offset().0, log.next_offset().0);
    let mut offset = start;
    while offset < end {
        let fetched = log.read(Offset(offset), 64 * 1024).unwrap();
        assert!(
            !fetched.batches.is_empty(),
            "nothing at {offset}, end {end}"
        );
        for record in fetched.records() {
            let record = record.unwrap();
            assert_eq!(record.offset.0, offset, "offsets continue");
            check_value(offset, record.value);
            offset += 1;
        }
    }
    assert_eq!(offset, end);
    end - start
}

fn assert_verifies(dir: &std::path::Path) {
    let check = check_partition(dir).unwrap();
    assert!(
        check.problems.is_empty(),
        "spool verify finds problems: {:?}",
        check.problems
    );
}

/// Pool files (`recycle-N.free`) in the log's directory.
fn pool_files_on_disk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".free"))
        .count()
}

#[test]
fn retention_recycles_files_and_no_old_byte_is_ever_read() {
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Interval { ms: 50 },
        SyncPolicy::Always,
    ] {
        let dir = disk_dir();
        let log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
        append_until(&log, 40_000);
        let reused = log.reused_file_count();
        assert!(reused >= 20, "{sync}: rolls reused {reused} files");
        assert_eq!(pool_files_on_disk(dir.path()), log.recycled_file_count());
        assert!(check_log(&log) > 0);
        log.flush().unwrap();
        // The live files, old bytes behind the active segment's data and
        // all, are what verify and recovery read.
        assert_verifies(dir.path());
        let end = log.next_offset();

        // A crash of the process (the page cache keeps every write): the
        // log comes back at the same end, with nothing old in it.
        drop(log);
        let log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
        assert_eq!(log.next_offset(), end, "{sync}: recovered end");
        assert_eq!(
            log.recycled_file_count(),
            0,
            "pool files are deleted at open"
        );
        check_log(&log);
        append_until(&log, end.0 + 5_000);
        assert!(
            log.reused_file_count() > 0,
            "{sync}: no reuse after reopening"
        );
        check_log(&log);
        assert_verifies(dir.path());

        // A clean close keeps the active segment's old bytes (no cut): the
        // next open trusts the index, and appends go on marking the end.
        let end = log.next_offset();
        log.close().unwrap();
        drop(log);
        let log = PartitionLog::open(dir.path(), config(sync), true).unwrap();
        assert_eq!(log.next_offset(), end);
        append_until(&log, end.0 + 3_000);
        let end = log.next_offset();
        drop(log);
        assert_verifies(dir.path());
        let log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
        assert_eq!(log.next_offset(), end, "{sync}: end after crash");
        check_log(&log);
    }
}

#[test]
fn a_dropped_segment_a_reader_still_holds_is_not_written_over() {
    let dir = disk_dir();
    let log = PartitionLog::open(dir.path(), config(SyncPolicy::Never), false).unwrap();
    append_until(&log, 3_000);
    // A consumer's zero-copy read of the oldest segment, held while
    // retention drops that segment and later rolls reuse files.
    let start = log.start_offset();
    let held = log.read(start, 16 * 1024).unwrap();
    let copy = held.batches.to_vec();
    append_until(&log, 40_000);
    assert!(
        log.start_offset() > held.next_offset,
        "the held segment was dropped"
    );
    assert!(log.reused_file_count() > 5, "files were reused meanwhile");
    assert_eq!(held.batches.as_ref(), &copy[..], "held bytes changed");
    let mut offset = held.from_offset.0;
    for record in held.records() {
        let record = record.unwrap();
        check_value(record.offset.0, record.value);
        offset = record.offset.0 + 1;
    }
    assert!(offset > start.0);
    check_log(&log);
}
