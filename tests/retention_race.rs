//! Reads racing retention: a reader asking for the log's first offset
//! while retention drops the segment holding it must get either the
//! records or `OffsetOutOfRange` (and then reset), never an empty answer,
//! which reads as "nothing here yet" and leaves a consumer waiting forever
//! at an offset that is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spool::storage::{LogConfig, PartitionLog, StorageError};
use spool::{Batch, BatchBuilder, SyncPolicy};

const SEGMENT: u64 = 16 * 1024;

#[test]
fn a_read_at_the_start_while_retention_drops_it_is_out_of_range_never_empty() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_size_bytes: SEGMENT,
        sync: SyncPolicy::Never,
        retention_ms: None,
        retention_bytes: Some(2 * SEGMENT),
        index_interval_bytes: 4096,
    };
    let log = Arc::new(PartitionLog::open(dir.path(), config, false).unwrap());
    let mut batch = BatchBuilder::with_capacity(2048);
    for _ in 0..8 {
        batch
            .push(1_700_000_000_000, None, &[7u8; 200], &[])
            .unwrap();
    }
    let batch = batch.finish().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Appends and retention as fast as they go: a segment is dropped every
    // ten appends or so.
    let writer = {
        let (log, stop, batch) = (log.clone(), stop.clone(), batch.clone());
        std::thread::spawn(move || {
            let mut dropped = 0;
            while !stop.load(Ordering::Relaxed) {
                log.append(Batch::validate(&batch).unwrap()).unwrap();
                dropped += log.enforce_retention(std::time::SystemTime::now()).unwrap();
            }
            dropped
        })
    };
    let started = Instant::now();
    let (mut reads, mut out_of_range, mut empty) = (0u64, 0u64, 0u64);
    while started.elapsed() < Duration::from_secs(2) {
        let start = log.start_offset();
        match log.read(start, 1 << 20) {
            // Empty although the answer's own end says records follow.
            Ok(fetched) if fetched.batches.is_empty() && fetched.from_offset < fetched.log_end => {
                eprintln!("empty answer: {fetched:?}");
                empty += 1;
            }
            Ok(_) => {}
            Err(StorageError::OffsetOutOfRange { .. }) => out_of_range += 1,
            Err(err) => panic!("read at {start:?}: {err}"),
        }
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let dropped = writer.join().unwrap();
    eprintln!(
        "{reads} reads, {out_of_range} out of range, {empty} empty; {dropped} segments dropped"
    );
    assert!(dropped > 100, "retention dropped only {dropped} segments");
    assert_eq!(
        empty, 0,
        "reads at an offset retention was removing came back empty"
    );
}
