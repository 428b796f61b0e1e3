//! A reader at the tail of a log under `always` while a writer appends and
//! a flusher flushes, with tiny segments rolling all the time: every read
//! stays within the visible end it reports, and reading at (or past, up to
//! the appended end) the visible end returns nothing instead of failing.
//! Before the fix a read returned a batch past its own `log_end` (the
//! flush's byte length ran ahead of its end offset), and the next read
//! failed with `OffsetOutOfRange`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spool::protocol::batch::Batches;
use spool::storage::{LogConfig, PartitionLog};
use spool::{Batch, BatchBuilder, Offset, SyncPolicy};

#[test]
fn tail_reads_never_pass_the_visible_end_under_always() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_size_bytes: 4096,
        sync: SyncPolicy::Always,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 512,
    };
    let log = Arc::new(PartitionLog::open(dir.path(), config, false).expect("open"));
    const BATCHES: u64 = 5_000;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..BATCHES {
                let mut b = BatchBuilder::new();
                for r in 0..(1 + i % 3) {
                    b.push(0, None, &[r as u8; 200], &[]).expect("push");
                }
                let bytes = b.finish().expect("finish");
                log.append(Batch::validate(&bytes).expect("valid"))
                    .expect("append");
            }
        })
    };
    let flusher = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                log.flush().expect("flush");
            }
        })
    };
    let mut position = Offset(0);
    let mut reads = 0u64;
    let total: u64 = (0..BATCHES).map(|i| 1 + i % 3).sum();
    while position.0 < total {
        let fetched = log
            .read(position, 64 * 1024)
            .unwrap_or_else(|e| panic!("read at {position} after {reads} reads: {e}"));
        reads += 1;
        assert!(
            fetched.next_offset <= fetched.log_end,
            "read past its own visible end: next {} > end {}",
            fetched.next_offset,
            fetched.log_end
        );
        for batch in Batches::new(&fetched.batches) {
            let batch = batch.expect("a valid batch");
            assert!(batch.header().next_offset() <= fetched.log_end);
        }
        // A position between the visible and the appended end waits.
        let ahead = log.next_offset();
        if ahead > fetched.log_end {
            let early = log.read(ahead, 1024).expect("read at the appended end");
            assert!(early.batches.is_empty() || early.log_end >= ahead);
        }
        position = fetched.next_offset;
    }
    done.store(true, Ordering::Release);
    writer.join().expect("writer");
    flusher.join().expect("flusher");
    eprintln!(
        "{reads} reads at the tail, {} segments",
        log.segment_count()
    );
}
