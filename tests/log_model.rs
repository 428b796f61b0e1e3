//! Property test: random sequences of appends (rolling small segments),
//! clean and unclean reopens and reads agree with a plain in-memory model.
//! Every batch comes from one idempotent producer; retries of any of its
//! recent batches (across rolls and reopens) are answered with their
//! original offsets and store nothing, and a batch that skips a sequence
//! number is refused.

use proptest::prelude::*;
use spool::protocol::batch::Batches;
use spool::storage::{LogConfig, PartitionLog};
use spool::{Batch, BatchBuilder, Offset, SyncPolicy};

#[derive(Clone, Debug)]
enum Op {
    /// Append one batch with records of these value lengths.
    Append(Vec<usize>),
    /// Reopen, after a clean close or as after a crash.
    Reopen { clean: bool },
    /// Read from `model_len * fraction` with a byte limit.
    Read { fraction: f64, max_bytes: u64 },
    /// Send one of the producer's recent batches again (`back` batches
    /// before the last).
    Retry { back: usize },
    /// Send a batch whose sequence skips one number.
    Gap,
    /// Cut the log back to the batch holding `model_len * fraction`.
    Truncate { fraction: f64 },
}

/// The producer every batch comes from.
const PRODUCER: u64 = 77;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(0usize..700, 1..12).prop_map(Op::Append),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        3 => (0.0f64..=1.0, 1u64..20_000).prop_map(|(fraction, max_bytes)| Op::Read { fraction, max_bytes }),
        2 => (0usize..spool::storage::producers::RECENT_BATCHES).prop_map(|back| Op::Retry { back }),
        1 => Just(Op::Gap),
        1 => (0.0f64..=1.0).prop_map(|fraction| Op::Truncate { fraction }),
    ]
}

fn value(offset: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (offset * 31 + i) as u8).collect()
}

fn config(sync: SyncPolicy) -> LogConfig {
    LogConfig {
        segment_size_bytes: 4096,
        sync,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 512,
    }
}

fn run(ops: Vec<Op>, sync: SyncPolicy) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    // The producer's batches as sent, with the offsets they got.
    let mut sent: Vec<(bytes::Bytes, Offset)> = Vec::new();
    for op in ops {
        match op {
            Op::Truncate { fraction } => {
                let target = ((model.len() as f64) * fraction) as u64;
                // The batch holding `target` starts at the last base at or
                // before it.
                let expected = sent
                    .iter()
                    .map(|(_, base)| base.0)
                    .filter(|&b| b <= target)
                    .max()
                    .unwrap_or(0)
                    .max(if target == model.len() as u64 {
                        target
                    } else {
                        0
                    });
                let end = log.truncate_to(Offset(target)).unwrap();
                prop_assert_eq!(end, Offset(expected));
                model.truncate(expected as usize);
                sent.retain(|(_, base)| base.0 < expected);
                prop_assert_eq!(log.next_offset(), end);
            }
            Op::Retry { back } => {
                let Some((bytes, base)) = sent.iter().rev().nth(back).cloned() else {
                    continue;
                };
                let info = log.append(Batch::validate(&bytes).unwrap()).unwrap();
                prop_assert!(info.duplicate, "a retry was appended again");
                prop_assert_eq!(info.base_offset, base);
                prop_assert_eq!(log.next_offset(), Offset(model.len() as u64));
            }
            Op::Gap => {
                let mut b = BatchBuilder::new();
                b.push(0, None, b"gap", &[]).unwrap();
                let bytes = b.finish_from(PRODUCER, model.len() as u32 + 1).unwrap();
                let refused = log.append(Batch::validate(&bytes).unwrap());
                prop_assert!(
                    matches!(
                        refused,
                        Err(spool::storage::StorageError::OutOfOrderSequence { .. })
                    ),
                    "{:?}",
                    refused
                );
            }
            Op::Append(lens) => {
                let mut b = BatchBuilder::new();
                for (i, len) in lens.iter().enumerate() {
                    b.push(i as i64, None, &value(model.len() + i, *len), &[])
                        .unwrap();
                }
                let bytes = b.finish_from(PRODUCER, model.len() as u32).unwrap();
                let info = log.append(Batch::validate(&bytes).unwrap()).unwrap();
                prop_assert!(!info.duplicate);
                prop_assert_eq!(info.base_offset, Offset(model.len() as u64));
                sent.push((bytes, info.base_offset));
                for len in &lens {
                    model.push(value(model.len(), *len));
                }
                log.flush().unwrap();
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                }
                drop(log);
                log = PartitionLog::open(dir.path(), config(sync), clean).unwrap();
                prop_assert_eq!(log.next_offset(), Offset(model.len() as u64));
            }
            Op::Read {
                fraction,
                max_bytes,
            } => {
                let from = ((model.len() as f64) * fraction) as u64;
                let fetched = log.read(Offset(from), max_bytes).unwrap();
                prop_assert_eq!(fetched.log_end, Offset(model.len() as u64));
                if from == model.len() as u64 {
                    prop_assert!(fetched.batches.is_empty());
                    continue;
                }
                let batches: Vec<_> = Batches::new(&fetched.batches)
                    .collect::<Result<_, _>>()
                    .unwrap();
                prop_assert!(!batches.is_empty());
                // Only whole batches, the first holding `from`; the byte
                // limit is exceeded only by a single batch.
                prop_assert!(batches[0].header().base_offset.0 <= from);
                prop_assert!(batches[0].header().next_offset().0 > from);
                prop_assert!(batches.len() == 1 || fetched.batches.len() as u64 <= max_bytes);
                let mut expected = batches[0].header().base_offset.0;
                for batch in &batches {
                    for r in batch.records() {
                        prop_assert_eq!(r.offset.0, expected);
                        prop_assert_eq!(r.value, model[expected as usize].as_slice());
                        expected += 1;
                    }
                }
                prop_assert_eq!(fetched.next_offset.0, expected);
            }
        }
    }
    // Everything reads back in order after a final crash-style reopen.
    drop(log);
    let log = PartitionLog::open(dir.path(), config(sync), false).unwrap();
    let mut next = 0u64;
    while next < model.len() as u64 {
        let fetched = log.read(Offset(next), 8192).unwrap();
        for batch in Batches::new(&fetched.batches) {
            for r in batch.unwrap().records().filter(|r| r.offset.0 >= next) {
                prop_assert_eq!(r.value, model[r.offset.0 as usize].as_slice());
            }
        }
        prop_assert!(fetched.next_offset.0 > next);
        next = fetched.next_offset.0;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_agrees_with_model_sync_never(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, SyncPolicy::Never)?;
    }

    #[test]
    fn log_agrees_with_model_sync_always(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, SyncPolicy::Always)?;
    }
}

/// Releasing an active segment's resident pages (MADV_DONTNEED on the shared
/// map) must not change a byte: not of flushed data, and not of dirty,
/// never-flushed data under `never`.
#[test]
fn releasing_resident_pages_keeps_every_byte() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(sync);
        config.segment_size_bytes = 64 * 1024 * 1024;
        let log = PartitionLog::open(dir.path(), config.clone(), false).unwrap();
        let mut model = Vec::new();
        for round in 0..3 {
            for _ in 0..200 {
                let mut b = BatchBuilder::new();
                for _ in 0..10 {
                    b.push(0, None, &value(model.len(), 1000), &[]).unwrap();
                    model.push(value(model.len(), 1000));
                }
                let bytes = b.finish().unwrap();
                let info = log.append(Batch::validate(&bytes).unwrap()).unwrap();
                if sync == SyncPolicy::Always {
                    log.flush_until(info.next_offset).unwrap();
                }
            }
            // Far in the future: everything is idle; releases all but the tail.
            log.unmap_idle(u64::MAX / 2, 1);
            let mut next = 0u64;
            while next < model.len() as u64 {
                let fetched = log.read(Offset(next), 1 << 20).unwrap();
                for r in fetched.records() {
                    let r = r.unwrap();
                    assert_eq!(
                        r.value,
                        model[r.offset.0 as usize].as_slice(),
                        "round {round}, offset {}",
                        r.offset
                    );
                }
                next = fetched.next_offset.0;
            }
        }
        drop(log);
        let log = PartitionLog::open(dir.path(), config, false).unwrap();
        assert_eq!(log.next_offset(), Offset(model.len() as u64));
        let fetched = log.read(Offset(0), 1 << 20).unwrap();
        assert_eq!(
            fetched.records().next().unwrap().unwrap().value,
            model[0].as_slice()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// The time index answers exactly what a scan of every record would:
    /// the first offset whose timestamp is at least the target (the end if
    /// none), with timestamps that go backwards as well as forwards, across
    /// many segments, and after clean and unclean reopens and a lost index.
    #[test]
    fn timestamp_lookups_match_a_full_scan(
        batches in proptest::collection::vec(proptest::collection::vec(0i64..5_000, 1..8), 1..120),
        random_targets in proptest::collection::vec(-10i64..5_100, 1..20),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), -1i64..=1), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut timestamps = Vec::new();
        {
            let log = PartitionLog::open(dir.path(), config(SyncPolicy::Never), false).unwrap();
            for stamps in &batches {
                let mut b = BatchBuilder::new();
                for &ts in stamps {
                    b.push(ts, None, &value(timestamps.len(), 40), &[]).unwrap();
                    timestamps.push(ts);
                }
                let bytes = b.finish().unwrap();
                log.append(Batch::validate(&bytes).unwrap()).unwrap();
            }
            log.close().unwrap();
        }
        // Targets at and next to stored timestamps (where an off-by-one in
        // the index would show), and anywhere.
        let targets: Vec<i64> = picks
            .iter()
            .map(|(i, delta)| timestamps[i.index(timestamps.len())] + delta)
            .chain(random_targets)
            .collect();
        let expected = |t: i64| {
            Offset(timestamps.iter().position(|&ts| ts >= t).unwrap_or(timestamps.len()) as u64)
        };
        for (round, clean) in [(0, true), (1, false), (2, true)] {
            if round == 2 {
                // A lost index is rebuilt, time entries included.
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    let path = entry.unwrap().path();
                    if path.extension().is_some_and(|e| e == "index") {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            }
            let log = PartitionLog::open(dir.path(), config(SyncPolicy::Never), clean).unwrap();
            for &t in &targets {
                prop_assert_eq!(log.offset_for_timestamp(t).unwrap(), expected(t), "target {} round {}", t, round);
            }
            log.close().unwrap();
        }
    }
}

/// A snapshot of the producers written at a clean close describes batches
/// that a later recovery may cut (a torn tail after the next crash): it
/// must not be used then, or a producer's resend of a cut batch would be
/// answered as a duplicate of data that is gone.
#[test]
fn a_producer_snapshot_past_the_recovered_end_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = || LogConfig {
        segment_size_bytes: 1 << 20,
        ..config(SyncPolicy::Never)
    };
    let batch = |seq: u32| {
        let mut b = BatchBuilder::new();
        for i in 0..3 {
            b.push(0, None, format!("{seq}-{i}").as_bytes(), &[])
                .unwrap();
        }
        b.finish_from(PRODUCER, seq).unwrap()
    };
    let log = PartitionLog::open(dir.path(), config(), false).unwrap();
    let mut kept_len = 0u64;
    for n in 0..5u32 {
        let bytes = batch(n * 3);
        if n < 4 {
            kept_len += bytes.len() as u64;
        }
        log.append(Batch::validate(&bytes).unwrap()).unwrap();
    }
    log.close().unwrap();
    drop(log);
    // The last batch torn off, as after a crash; the durable mark that
    // would tell recovery it had been flushed is lost too (a power failure
    // can lose its last update), so recovery cuts it.
    std::fs::remove_file(dir.path().join("durable-mark")).unwrap();
    let segment = dir.path().join("00000000000000000000.log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(kept_len + 10)
        .unwrap();
    let log = PartitionLog::open(dir.path(), config(), false).unwrap();
    assert_eq!(log.next_offset(), Offset(12));
    let resent = log.append(Batch::validate(&batch(12)).unwrap()).unwrap();
    assert!(!resent.duplicate, "a cut batch was answered as stored");
    assert_eq!(resent.base_offset, Offset(12));
    assert_eq!(log.next_offset(), Offset(15));
}

/// Truncation never shrinks a mapped file: slices read before it stay
/// readable (a shrunk file would fault them: SIGBUS), and appends go on
/// from the cut, across a reopen, with the producer's sequence resuming
/// at the cut.
#[test]
fn slices_survive_a_truncation_and_appends_resume_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config(SyncPolicy::Always), false).unwrap();
    let batch = |seq: u32, n: usize| {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(0, None, &value(seq as usize + i, 300), &[]).unwrap();
        }
        b.finish_from(PRODUCER, seq).unwrap()
    };
    for seq in (0..120u32).step_by(4) {
        log.append(Batch::validate(&batch(seq, 4)).unwrap())
            .unwrap();
    }
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    let held: Vec<bytes::Bytes> = (0..120u64)
        .step_by(8)
        .map(|o| log.read(Offset(o), 1 << 20).unwrap().batches)
        .collect();
    let end = log.truncate_to(Offset(42)).unwrap();
    assert_eq!(end, Offset(40));
    let touched: u64 = held
        .iter()
        .flat_map(|b| b.iter())
        .map(|&x| u64::from(x))
        .sum();
    assert!(touched > 0);
    // The producer resumes at the cut: sequence 40 is next, not 120.
    let info = log.append(Batch::validate(&batch(40, 4)).unwrap()).unwrap();
    assert_eq!((info.base_offset, info.duplicate), (Offset(40), false));
    log.close().unwrap();
    drop(log);
    let log = PartitionLog::open(dir.path(), config(SyncPolicy::Always), true).unwrap();
    assert_eq!(log.next_offset(), Offset(44));
    let mut offset = 0;
    while offset < 44 {
        let fetched = log.read(Offset(offset), 1 << 20).unwrap();
        for r in fetched.records() {
            let r = r.unwrap();
            assert_eq!(r.value, &value(r.offset.0 as usize, 300)[..]);
        }
        offset = fetched.next_offset.0;
    }
}

/// Copies every batch of `from` starting at `at` into `to`, byte for byte
/// (as a follower's fetch will); offsets agree because `to` ends at `at`.
fn copy_batches(from: &PartitionLog, to: &PartitionLog, mut at: Offset) {
    assert_eq!(to.next_offset(), at);
    // Under `always` only what is flushed is visible.
    from.flush().unwrap();
    while at < from.next_offset() {
        let fetched = from.read(at, 1 << 20).unwrap();
        assert!(!fetched.batches.is_empty(), "nothing to copy at {at}");
        for batch in spool::protocol::batch::Batches::new(&fetched.batches) {
            let batch = batch.unwrap();
            let info = to.append(Batch::validate(batch.bytes()).unwrap()).unwrap();
            assert_eq!(info.base_offset, batch.header().base_offset);
        }
        at = fetched.next_offset;
    }
}

/// The divergence KIP-101 fixed, on two real logs. Leader L and follower F
/// share epoch 1; L has two batches F never fetched (never committed). Both
/// die; F comes back first, leads epoch 2 and takes writes at the offsets
/// L's extra batches had. L returns, asks F where its latest epoch ended,
/// cuts there, fetches epoch 2, and both logs end up byte for byte the
/// same. Keeping L's log as it was leaves offsets that name different
/// records on the two replicas (checked before the cut).
#[test]
fn a_returning_leader_cuts_where_its_epoch_ended_on_the_new_leader() {
    let (l_dir, f_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let l = PartitionLog::open(l_dir.path(), config(SyncPolicy::Always), false).unwrap();
    let f = PartitionLog::open(f_dir.path(), config(SyncPolicy::Always), false).unwrap();
    let batch = |tag: &str, n: usize| {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(0, None, format!("{tag}-{i}").as_bytes(), &[])
                .unwrap();
        }
        b.finish().unwrap()
    };
    assert_eq!(l.begin_epoch(1).unwrap(), Offset(0));
    for i in 0..5 {
        l.append(Batch::validate(&batch(&format!("e1-{i}"), 2)).unwrap())
            .unwrap();
    }
    f.note_epoch(1, Offset(0)).unwrap();
    copy_batches(&l, &f, Offset(0));
    // Two more on L only: never replicated, never acknowledged to all.
    for i in 5..7 {
        l.append(Batch::validate(&batch(&format!("e1-{i}"), 2)).unwrap())
            .unwrap();
    }
    assert_eq!((l.next_offset(), f.next_offset()), (Offset(14), Offset(10)));

    // F leads epoch 2 and takes writes where L's extra batches were.
    assert_eq!(f.begin_epoch(2).unwrap(), Offset(10));
    for i in 0..3 {
        f.append(Batch::validate(&batch(&format!("e2-{i}"), 2)).unwrap())
            .unwrap();
    }
    l.flush().unwrap();
    f.flush().unwrap();
    let diverged = l.read(Offset(10), 1 << 20).unwrap().batches
        != f.read(Offset(10), 1 << 20).unwrap().batches;
    assert!(diverged, "offset 10 names different records on L and F");

    // L returns: where did its latest epoch end on F?
    let asked = l.latest_epoch().unwrap().epoch;
    let end = f.epoch_end(asked).unwrap();
    assert_eq!((end.epoch, end.start), (1, Offset(10)));
    assert_eq!(l.truncate_to(end.start).unwrap(), Offset(10));
    l.note_epoch(2, Offset(10)).unwrap();
    copy_batches(&f, &l, Offset(10));

    let all = |log: &PartitionLog| {
        log.flush().unwrap();
        log.read(Offset(0), 1 << 20).unwrap().batches
    };
    assert_eq!(all(&l), all(&f), "the logs differ after the catch-up");
    assert_eq!(l.latest_epoch(), f.latest_epoch());
    assert_eq!(l.epoch_end(1).unwrap().start, Offset(10));
}

/// A replicated partition's readers see only records below the high
/// watermark: reads stop there, the visible end is it, a waiting reader
/// wakes when it moves up, and a truncation never leaves it past the end.
/// An unreplicated log has no such bound, before or after a truncation.
#[tokio::test]
async fn reads_stop_at_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(
        PartitionLog::open(dir.path(), config(SyncPolicy::Never), false).unwrap(),
    );
    for seq in 0..5u32 {
        let mut b = BatchBuilder::new();
        b.push(0, None, &value(seq as usize * 2, 10), &[]).unwrap();
        b.push(0, None, &value(seq as usize * 2 + 1, 10), &[])
            .unwrap();
        log.append(Batch::validate(&b.finish().unwrap()).unwrap())
            .unwrap();
    }
    assert_eq!(log.high_watermark(), None);
    assert_eq!(log.visible_end(), Offset(10));
    log.set_high_watermark(Offset(4));
    assert_eq!(log.visible_end(), Offset(4));
    let fetched = log.read(Offset(0), 1 << 20).unwrap();
    assert_eq!(fetched.next_offset, Offset(4));
    assert_eq!(fetched.log_end, Offset(4));
    assert!(log.read(Offset(4), 1 << 20).unwrap().batches.is_empty());

    let waiting = {
        let log = log.clone();
        tokio::spawn(async move {
            let moved = log.visible_end_moved();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if log.visible_end() == Offset(4) {
                moved.await;
            }
            log.visible_end()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    log.set_high_watermark(Offset(8));
    let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("a reader waiting at the high watermark was not woken")
        .unwrap();
    assert_eq!(seen, Offset(8));

    assert_eq!(log.truncate_to(Offset(6)).unwrap(), Offset(6));
    assert_eq!(log.high_watermark(), Some(Offset(6)));
    log.clear_high_watermark();
    assert_eq!(log.visible_end(), Offset(6));
    assert_eq!(log.truncate_to(Offset(2)).unwrap(), Offset(2));
    assert_eq!(log.high_watermark(), None, "a truncation set a bound");
}
