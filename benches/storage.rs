//! Criterion micro-benchmarks of the storage hot paths: building and
//! validating batches, appending them under each sync policy, and reading a
//! log sequentially. Each reports messages/s and bytes/s for 100-byte and
//! 1 KiB messages in batches of 1,000; appends also for a batch of a single
//! 100-byte message (the per-append cost).
//!
//! `append/memcpy` is the yardstick for the append path: the same 1 KiB x
//! 1,000 batch (about 1 MiB) copied into a 256 MiB buffer, larger than any
//! cache, as a write into the page cache must. An append cannot beat it.
//! `append/pwrite_fresh` is the kernel's floor: the same batch written with
//! one `pwrite` into a fresh sparse file, as an append into a new segment
//! is; `append/pwrite_cached` the same write over pages already in the page
//! cache. `append/never_recycled` and `append/interval:100_recycled`
//! append at the retention limit, where new segments are written over
//! recycled files.
//!
//! Run: `cargo bench --bench storage` (add `-- append` etc. to filter).

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spool::storage::{LogConfig, PartitionLog};
use spool::{Batch, BatchBuilder, Offset, SyncPolicy};

const RECORDS_PER_BATCH: usize = 1000;
const SIZES: [usize; 2] = [100, 1024];
/// Appended batches: (records, value bytes).
const APPEND_SHAPES: [(usize, usize); 3] = [
    (1, 100),
    (RECORDS_PER_BATCH, 100),
    (RECORDS_PER_BATCH, 1024),
];

fn batch(value_len: usize) -> Bytes {
    batch_of(RECORDS_PER_BATCH, value_len)
}

fn batch_of(records: usize, value_len: usize) -> Bytes {
    let value = vec![0x61u8; value_len];
    let mut b = BatchBuilder::with_capacity(records * (value_len + 8) + 64);
    for i in 0..records {
        b.push(1_700_000_000_000 + i as i64, None, &value, &[])
            .unwrap();
    }
    b.finish().unwrap()
}

/// Messages, and bytes as stored (payload plus batch and record framing).
fn throughput(batch_len: usize) -> Throughput {
    throughput_of(RECORDS_PER_BATCH, batch_len)
}

fn throughput_of(records: usize, batch_len: usize) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: records as u64,
        bytes: batch_len as u64,
    }
}

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        segment_size_bytes: SEGMENT_BYTES,
        sync,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 4096,
    }
}

fn build_and_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for size in SIZES {
        let bytes = batch(size);
        group.throughput(throughput(bytes.len()));
        let value = vec![0x61u8; size];
        group.bench_with_input(BenchmarkId::new("build", size), &size, |b, _| {
            b.iter(|| {
                let mut builder = BatchBuilder::with_capacity(RECORDS_PER_BATCH * (size + 8) + 64);
                for i in 0..RECORDS_PER_BATCH {
                    builder
                        .push(i as i64, None, black_box(&value), &[])
                        .unwrap();
                }
                builder.finish().unwrap()
            })
        });
        group.bench_with_input(BenchmarkId::new("validate", size), &bytes, |b, bytes| {
            b.iter(|| {
                Batch::validate(black_box(bytes))
                    .unwrap()
                    .header()
                    .record_count
            })
        });
        group.bench_with_input(
            BenchmarkId::new("validate_and_iterate", size),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    Batch::validate(black_box(bytes))
                        .unwrap()
                        .records()
                        .map(|r| r.value.len())
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Interval { ms: 100 },
        SyncPolicy::Always,
    ] {
        for (records, size) in APPEND_SHAPES {
            let bytes = batch_of(records, size);
            group.throughput(throughput_of(records, bytes.len()));
            let id = BenchmarkId::new(sync.to_string(), format!("{records}x{size}"));
            group.bench_with_input(id, &bytes, |b, bytes| {
                b.iter_custom(|iters| {
                    // A fresh log per sample keeps the disk footprint bounded.
                    let dir = tempfile::tempdir().unwrap();
                    let log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
                    let batch = Batch::validate(bytes).unwrap();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let info = log.append(batch).unwrap();
                        if sync == SyncPolicy::Always {
                            log.flush_until(info.next_offset).unwrap();
                        }
                    }
                    start.elapsed()
                })
            });
        }
    }
    // At the retention limit: retention drops a segment about every time
    // one rolls, and the next roll writes over the dropped file while its
    // pages are cached (`storage/recycle.rs`). One log for all samples,
    // filled past its retention first, so every sample is steady state.
    let bytes = batch(1024);
    group.throughput(throughput(bytes.len()));
    for sync in [SyncPolicy::Never, SyncPolicy::Interval { ms: 100 }] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            retention_bytes: Some(2 * SEGMENT_BYTES),
            ..config(sync)
        };
        let log = PartitionLog::open(dir.path(), config, false).unwrap();
        let batch = Batch::validate(&bytes).unwrap();
        let mut appended = 0u64;
        let mut append = |log: &PartitionLog| {
            log.append(batch).unwrap();
            appended += bytes.len() as u64;
            // Retention runs every 250 ms in a broker: about every 64 MiB
            // at these rates.
            if appended % (64 << 20) < bytes.len() as u64 {
                log.enforce_retention(std::time::SystemTime::now()).unwrap();
            }
        };
        while log.reused_file_count() < 2 {
            append(&log);
        }
        let id = BenchmarkId::new(format!("{sync}_recycled"), "1000x1024");
        group.bench_function(id, |b| b.iter(|| append(&log)));
        assert!(log.reused_file_count() > 2, "segments were recycled");
    }
    let mut ring = vec![1u8; 256 * 1024 * 1024];
    let slots = ring.len() / bytes.len();
    let mut slot = 0;
    group.bench_function(BenchmarkId::new("memcpy", "1000x1024"), |b| {
        b.iter(|| {
            let at = slot * bytes.len();
            ring[at..at + bytes.len()].copy_from_slice(black_box(&bytes));
            slot = (slot + 1) % slots;
            black_box(&ring[at]);
        })
    });
    drop(ring);
    // The kernel's part of an append, without Spool: one `pwrite` of the
    // batch into a fresh sparse file of the segment size, as an append
    // into a new segment does (the page cache takes a fresh page for every
    // 4 KiB). An append cannot beat this either.
    group.bench_function(BenchmarkId::new("pwrite_fresh", "1000x1024"), |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().unwrap();
            let mut files = 0;
            let mut file = sparse_file(dir.path(), files);
            let mut pos = 0u64;
            let start = Instant::now();
            for _ in 0..iters {
                if pos + bytes.len() as u64 > SEGMENT_BYTES {
                    files += 1;
                    file = sparse_file(dir.path(), files);
                    pos = 0;
                }
                file.write_all_at(black_box(&bytes), pos).unwrap();
                pos += bytes.len() as u64;
            }
            start.elapsed()
        })
    });
    // The same write over pages already in the page cache (a 256 MiB file
    // written once before): what the page cache costs once its pages
    // exist, the bound for reusing old segment files.
    let dir = tempfile::tempdir().unwrap();
    let cached = sparse_file(dir.path(), 0);
    let zeros = vec![0u8; 4 << 20];
    for at in (0..SEGMENT_BYTES).step_by(zeros.len()) {
        cached.write_all_at(&zeros, at).unwrap();
    }
    let mut pos = 0u64;
    group.bench_function(BenchmarkId::new("pwrite_cached", "1000x1024"), |b| {
        b.iter(|| {
            if pos + bytes.len() as u64 > SEGMENT_BYTES {
                pos = 0;
            }
            cached.write_all_at(black_box(&bytes), pos).unwrap();
            pos += bytes.len() as u64;
        })
    });
    group.finish();
}

const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

fn sparse_file(dir: &std::path::Path, n: u32) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join(format!("{n}.log")))
        .unwrap();
    file.set_len(SEGMENT_BYTES).unwrap();
    file
}

fn sequential_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    for size in SIZES {
        let bytes = batch(size);
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config(SyncPolicy::Never), false).unwrap();
        let batches = 200;
        for _ in 0..batches {
            log.append(Batch::validate(&bytes).unwrap()).unwrap();
        }
        let end = log.next_offset();
        group.throughput(throughput(bytes.len()));
        // Storage's part: locate the batch, CRC-check it, hand out a
        // zero-copy slice of the map.
        group.bench_function(BenchmarkId::new("sequential", size), |b| {
            let mut offset = Offset(0);
            b.iter(|| {
                if offset >= end {
                    offset = Offset(0);
                }
                let fetched = log.read(offset, bytes.len() as u64).unwrap();
                offset = fetched.next_offset;
                fetched.batches.len()
            })
        });
        // Plus what a consumer does with it: validate the structure and walk
        // every record.
        group.bench_function(BenchmarkId::new("sequential_and_walk", size), |b| {
            let mut offset = Offset(0);
            b.iter(|| {
                if offset >= end {
                    offset = Offset(0);
                }
                let fetched = log.read(offset, bytes.len() as u64).unwrap();
                let total: usize = fetched.records().map(|r| r.unwrap().value.len()).sum();
                offset = fetched.next_offset;
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build_and_validate, append, sequential_read);
criterion_main!(benches);
