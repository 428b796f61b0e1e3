//! Damaged files: a torn tail of the active segment past its durable mark
//! (bytes no flush had put on disk) is cut on open; damage below the mark,
//! or with valid batches after it, in the active segment or a sealed one,
//! costs the damaged batch's offsets alone (reported as an error, never
//! served, never given to another message) and everything after it is kept
//! and served.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::read_all;
use spool::protocol::batch::BatchHeader;
use spool::storage::durable_mark::{DurableMark, MarkWriter};
use spool::storage::Published;
use spool::{
    Broker, BrokerConfig, BrokerError, Message, Offset, PartitionId, StorageError, SyncPolicy,
    TopicConfig,
};

const TOPIC: &str = "t";

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("topics").join(TOPIC).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

/// `(position, header)` of every batch in a segment file.
fn batches(path: &Path) -> Vec<(u64, BatchHeader)> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Ok(h) = BatchHeader::parse(&bytes[pos..]) {
        out.push((pos as u64, h));
        pos += h.batch_len as usize;
    }
    out
}

fn flip_byte(path: &Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, position).unwrap();
    file.write_all_at(&[b[0] ^ 0x5a], position).unwrap();
}

/// Rewrites the partition's durable mark to say that the active segment
/// was flushed up to the batch at `pos` (offset `offset`) and no further:
/// what a crash leaves when the batches after it were never flushed, which
/// is the only way a tail can be torn.
fn flushed_only_up_to(active: &Path, pos: u64, offset: Offset) {
    let base: u64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    MarkWriter::new(active.parent().unwrap()).write(DurableMark {
        segment: Offset(base),
        at: Published {
            len: pos,
            end_offset: offset,
        },
    });
}

/// Writes 300 batches of 3 records (about 60 KiB) into one partition with
/// 16 KiB segments, and closes the broker cleanly.
async fn fill(dir: &Path) {
    fill_partitions(dir, 1).await;
}

/// As `fill`, into partition 0 of a topic of `partitions`; every other
/// partition `p` gets 10 messages `p<p>-<i>`.
async fn fill_partitions(dir: &Path, partitions: u32) {
    let broker = Broker::open(dir, BrokerConfig::default()).unwrap();
    let config = TopicConfig::new(partitions)
        .sync(SyncPolicy::Never)
        .segment_size_bytes(16 * 1024);
    broker.create_topic(TOPIC, config).unwrap();
    for b in 0..300u64 {
        let msgs: Vec<_> = (0..3)
            .map(|i| Message::new(format!("{:060}", b * 3 + i)))
            .collect();
        broker.produce(TOPIC, PartitionId(0), &msgs).await.unwrap();
    }
    for p in 1..partitions {
        for i in 0..10 {
            let m = Message::new(format!("p{p}-{i}"));
            broker.produce(TOPIC, PartitionId(p), &[m]).await.unwrap();
        }
    }
    broker.close().unwrap();
}

fn check_prefix(broker: &Broker, end: u64) {
    let records = read_all(broker, TOPIC, 0);
    assert_eq!(records.len() as u64, end);
    for r in records {
        assert_eq!(r.value, format!("{:060}", r.offset).into_bytes());
    }
}

async fn torn_tail_is_cut(trust_index: bool) {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    if !trust_index {
        fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
    }
    let active = segments(dir.path()).pop().unwrap();
    let (pos, last) = *batches(&active).last().unwrap();
    // Cut the last batch in half, as a crash in the middle of its write-back
    // would; the flush before had reached the batch's start.
    flushed_only_up_to(&active, pos, last.base_offset);
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(pos + u64::from(last.batch_len) / 2)
        .unwrap();

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert_eq!(
        broker.offsets(TOPIC, PartitionId(0)).unwrap().end,
        last.base_offset
    );
    check_prefix(&broker, last.base_offset.0);
    // The log goes on from the cut.
    let info = broker
        .produce(
            TOPIC,
            PartitionId(0),
            &[Message::new(format!("{:060}", 897))],
        )
        .await
        .unwrap();
    assert_eq!(info.base_offset, Offset(897));
    drop(broker);
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    check_prefix(&broker, 898);
}

#[tokio::test]
async fn torn_tail_is_cut_after_clean_shutdown() {
    torn_tail_is_cut(true).await;
}

#[tokio::test]
async fn torn_tail_is_cut_after_crash() {
    torn_tail_is_cut(false).await;
}

/// Damage to the last batch of the active segment past the durable mark
/// looks like a write that never finished: it is cut.
#[tokio::test]
async fn bit_flip_in_an_unflushed_last_batch_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
    let active = segments(dir.path()).pop().unwrap();
    let all = batches(&active);
    let (pos, last) = all[all.len() - 1];
    flushed_only_up_to(&active, pos, last.base_offset);
    flip_byte(&active, pos + u64::from(last.batch_len) - 10);

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert_eq!(
        broker.offsets(TOPIC, PartitionId(0)).unwrap().end,
        last.base_offset
    );
    check_prefix(&broker, last.base_offset.0);
}

/// Damage to flushed batches at the end of the active segment is not a
/// torn tail: the data was on disk (and, under `always`, acknowledged).
/// Recovery keeps the range in place as unreadable, and the next append
/// goes after it, so those offsets never name another message (before the
/// durable mark the last batch was cut and its offsets reused). Covers a
/// flipped bit, and a zeroed run whose lengths cannot be followed, which
/// needs a search for where valid data resumes.
#[tokio::test]
async fn damage_to_flushed_batches_at_the_end_is_kept_and_their_offsets_never_reused() {
    for zero_two_batches in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path()).await;
        fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
        let active = segments(dir.path()).pop().unwrap();
        let all = batches(&active);
        let (pos, last) = all[all.len() - 1];
        let first_lost = if zero_two_batches {
            // The last two batches' headers: no length leads over them.
            let (before, second_last) = all[all.len() - 2];
            use std::os::unix::fs::FileExt;
            let file = OpenOptions::new().write(true).open(&active).unwrap();
            file.write_all_at(&[0u8; 64], before).unwrap();
            file.write_all_at(&[0u8; 64], pos).unwrap();
            second_last.base_offset
        } else {
            flip_byte(&active, pos + u64::from(last.batch_len) - 10);
            last.base_offset
        };

        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        let end = broker.offsets(TOPIC, PartitionId(0)).unwrap().end;
        assert_eq!(end, last.next_offset(), "the damaged end was cut");
        for lost in first_lost.0..end.0 {
            let read = broker.read(TOPIC, PartitionId(0), Offset(lost), 1 << 20);
            assert!(
                matches!(
                    read,
                    Err(BrokerError::Storage {
                        source: StorageError::Corrupt { .. },
                        ..
                    })
                ),
                "offset {lost} of a damaged batch: {read:?}"
            );
        }
        let records = read_all_before(&broker, first_lost.0);
        assert_eq!(records, first_lost.0, "the batches before the damage");
        let info = broker
            .produce(TOPIC, PartitionId(0), &[Message::new("after the damage")])
            .await
            .unwrap();
        assert_eq!(info.base_offset, end, "an offset was reused");
        drop(broker);
        // And again after a restart, with the new batch readable.
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        let fetched = broker.read(TOPIC, PartitionId(0), end, 1 << 20).unwrap();
        let values: Vec<_> = fetched.records().map(|r| r.unwrap().value).collect();
        assert_eq!(values, vec![bytes::Bytes::from("after the damage")]);
    }
}

/// How many records from offset 0 read cleanly and in order.
fn read_all_before(broker: &Broker, end: u64) -> u64 {
    let mut offset = 0;
    while offset < end {
        let fetched = broker
            .read(TOPIC, PartitionId(0), Offset(offset), 1 << 20)
            .unwrap();
        for r in fetched.records() {
            let r = r.unwrap();
            if r.offset.0 < end {
                assert_eq!(r.value, format!("{:060}", r.offset.0).into_bytes());
            }
        }
        if fetched.next_offset.0 == offset {
            break;
        }
        offset = fetched.next_offset.0;
    }
    offset.min(end)
}

/// A flipped bit in the middle of the active segment is not a torn tail:
/// after a crash, recovery keeps every valid batch after the damaged one
/// (before the fix it cut them all), only the damaged batch's offsets
/// fail, and reads starting after it are served (before the fix they
/// failed up to the next index entry).
#[tokio::test]
async fn bit_flip_in_the_middle_of_the_active_segment_costs_one_batch() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
    let active = segments(dir.path()).pop().unwrap();
    let all = batches(&active);
    assert!(all.len() >= 6, "need batches after the damage");
    let (pos, victim) = all[1];
    flip_byte(&active, pos + u64::from(victim.batch_len) - 10);

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert_eq!(
        broker.offsets(TOPIC, PartitionId(0)).unwrap().end,
        Offset(900),
        "acknowledged batches after the damage were cut"
    );
    for offset in victim.base_offset.0..victim.next_offset().0 {
        match broker.read(TOPIC, PartitionId(0), Offset(offset), 1 << 20) {
            Err(BrokerError::Storage {
                source: StorageError::Corrupt { offset: at, .. },
                ..
            }) => assert_eq!(at, victim.base_offset),
            other => panic!("offset {offset}: expected a corruption error, got {other:?}"),
        }
    }
    // Every batch after it reads, from its own first offset on.
    for &(_, h) in &all[2..] {
        let fetched = broker
            .read(TOPIC, PartitionId(0), h.base_offset, 1 << 20)
            .unwrap_or_else(|e| panic!("offset {} after the damage: {e}", h.base_offset));
        let first = spool::Batch::validate(&fetched.batches).unwrap();
        assert_eq!(first.header().base_offset, h.base_offset);
    }
    // Appends continue after the kept batches.
    let stored = broker
        .produce(TOPIC, PartitionId(0), &[Message::new("after")])
        .await
        .unwrap();
    assert_eq!(stored.base_offset, Offset(900));
}

#[tokio::test]
async fn bit_flip_in_a_sealed_segment_is_reported_not_served() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let files = segments(dir.path());
    assert!(
        files.len() >= 3,
        "need sealed segments, got {}",
        files.len()
    );
    let sealed = &files[0];
    let in_sealed = batches(sealed);
    let (pos, victim) = in_sealed[in_sealed.len() / 2];
    flip_byte(sealed, pos + u64::from(victim.batch_len) - 5);

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    // Nothing was truncated: the damage is in the middle of the log.
    assert_eq!(
        broker.offsets(TOPIC, PartitionId(0)).unwrap().end,
        Offset(900)
    );
    // Every offset of the damaged batch reports corruption.
    for offset in victim.base_offset.0..victim.next_offset().0 {
        match broker.read(TOPIC, PartitionId(0), Offset(offset), 1 << 20) {
            Err(BrokerError::Storage {
                source: StorageError::Corrupt { offset: at, .. },
                ..
            }) => assert_eq!(at, victim.base_offset),
            other => panic!("offset {offset}: expected a corruption error, got {other:?}"),
        }
    }
    // A read that starts before the damage returns only the good batches before it.
    let before = broker
        .read(TOPIC, PartitionId(0), Offset(0), 1 << 20)
        .unwrap();
    assert_eq!(before.next_offset, victim.base_offset);
    // The next segment is untouched and served.
    let next_base = batches(&files[1])[0].1.base_offset;
    let after = broker
        .read(TOPIC, PartitionId(0), next_base, 1 << 20)
        .unwrap();
    assert!(!after.batches.is_empty());
    spool::Batch::validate(&after.batches).unwrap();
}

#[tokio::test]
async fn stale_or_missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let files = segments(dir.path());
    // Remove one sealed index and garble another.
    fs::remove_file(files[0].with_extension("index")).unwrap();
    fs::write(files[1].with_extension("index"), b"garbage").unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    check_prefix(&broker, 900);
    assert!(
        files[0].with_extension("index").exists(),
        "index was not rebuilt"
    );
}

#[tokio::test]
async fn truncated_sealed_segment_reports_the_missing_range() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let files = segments(dir.path());
    let sealed = &files[0];
    let in_sealed = batches(sealed);
    let (pos, victim) = in_sealed[in_sealed.len() / 2];
    // Lose the second half of a sealed segment.
    OpenOptions::new()
        .write(true)
        .open(sealed)
        .unwrap()
        .set_len(pos)
        .unwrap();

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let end_of_sealed = batches(&files[1])[0].1.base_offset;
    for offset in [victim.base_offset.0, end_of_sealed.0 - 1] {
        // Not an empty answer, which a consumer would read as the end of the log.
        match broker.read(TOPIC, PartitionId(0), Offset(offset), 1 << 20) {
            Err(BrokerError::Storage {
                source: StorageError::Corrupt { .. },
                ..
            }) => {}
            other => panic!("offset {offset}: expected a corruption error, got {other:?}"),
        }
    }
    assert!(broker
        .read(TOPIC, PartitionId(0), end_of_sealed, 1 << 20)
        .is_ok());
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let modified = fs::metadata(&p).unwrap().modified().unwrap();
                out.push((p.clone(), fs::read(&p).unwrap(), modified));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn spool_bin(args: &[&str]) -> std::process::Output {
    common::cli::spool(args, None)
}

/// `spool verify` finds a flipped bit in a sealed segment and a torn tail,
/// names file and byte, writes a JSON report, exits 1, and changes
/// nothing (nor does `spool inspect`); `--repair` applies recovery (the
/// tail is cut), after which only the damaged batch remains reported.
#[tokio::test]
async fn verify_reports_damage_without_touching_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    let data = dir.path().to_str().unwrap().to_string();
    let clean = spool_bin(&["verify", "--data", &data]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no problems"));

    let files = segments(dir.path());
    let in_sealed = batches(&files[0]);
    let (pos, victim) = in_sealed[in_sealed.len() / 2];
    flip_byte(&files[0], pos + u64::from(victim.batch_len) - 5);
    let active = files.last().unwrap().clone();
    let (tail_pos, last) = *batches(&active).last().unwrap();
    flushed_only_up_to(&active, tail_pos, last.base_offset);
    OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap()
        .set_len(tail_pos + u64::from(last.batch_len) / 2)
        .unwrap();

    let before = snapshot_files(dir.path());
    let report = dir.path().join("..").join(format!(
        "report-{}.json",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    let out = spool_bin(&[
        "verify",
        "--data",
        &data,
        "--report",
        report.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "damaged_batch in {} at byte {pos}",
            files[0].display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "torn_tail in {} at byte {tail_pos}",
            active.display()
        )),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    let _ = fs::remove_file(&report);
    assert_eq!(json["damage"], true);
    let problems = &json["topics"][0]["partitions"][0][1]["problems"];
    assert_eq!(problems[0]["kind"], "damaged_batch");
    assert_eq!(problems[0]["position"], pos);
    let inspected = spool_bin(&["inspect", "--data", &data]);
    assert!(inspected.status.success());
    assert_eq!(
        snapshot_files(dir.path()),
        before,
        "verify or inspect changed the directory"
    );

    let repaired = spool_bin(&["verify", "--data", &data, "--repair"]);
    let text = String::from_utf8_lossy(&repaired.stdout).to_string();
    assert_eq!(repaired.status.code(), Some(1), "{text}");
    let after_repair = text.split("repairing").nth(1).expect("a repair pass");
    assert!(!after_repair.contains("torn_tail"), "{text}");
    assert!(after_repair.contains("damaged_batch"), "{text}");
}

/// One delivery of up to `max` messages to `member` of queue group "g"
/// (waiting up to `wait_ms`), every one acked; what was delivered, as
/// (partition, offset).
async fn deliver_and_ack(
    broker: &Broker,
    member: spool::broker::MemberId,
    max: usize,
    wait_ms: u64,
) -> Result<Vec<(u32, u64)>, BrokerError> {
    let batch = broker
        .deliver("g", member, max, std::time::Duration::from_millis(wait_ms))
        .await?;
    let items: Vec<_> = batch.iter().map(|m| (m.partition, m.offset)).collect();
    broker.ack("g", member, &items).await.unwrap();
    Ok(items.iter().map(|(p, o)| (p.0, o.0)).collect())
}

/// Recovery cut the log below a group's position (the last batch was
/// damaged): the offsets written next must reach the group, not be
/// skipped as if already acknowledged. The group moves back to the end.
#[tokio::test]
async fn a_group_past_a_cut_end_moves_back_and_gets_the_new_messages() {
    use spool::broker::{GroupConfig, GroupMode};
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    {
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        let member = broker
            .join_group("g", TOPIC, GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let mut acked = 0;
        while acked < 900 {
            acked += deliver_and_ack(&broker, member, 1000, 100)
                .await
                .unwrap()
                .len();
        }
        broker.close().unwrap();
    }
    fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
    let active = segments(dir.path()).pop().unwrap();
    let (pos, last) = *batches(&active).last().unwrap();
    // Under `never` a group reads what no flush has covered yet.
    flushed_only_up_to(&active, pos, last.base_offset);
    flip_byte(&active, pos + u64::from(last.batch_len) - 10);

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let end = broker.offsets(TOPIC, PartitionId(0)).unwrap().end;
    assert_eq!(end, last.base_offset, "the damaged last batch is cut");
    let fresh: Vec<_> = (0..3).map(|i| Message::new(format!("new-{i}"))).collect();
    broker.produce(TOPIC, PartitionId(0), &fresh).await.unwrap();
    let member = broker
        .join_group("g", TOPIC, GroupMode::Queue, GroupConfig::default())
        .unwrap();
    let delivered = broker
        .deliver("g", member, 1000, std::time::Duration::from_millis(500))
        .await
        .unwrap();
    let values: Vec<_> = delivered
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).to_string())
        .collect();
    assert_eq!(
        values,
        vec!["new-0", "new-1", "new-2"],
        "the group skipped reused offsets"
    );
}

/// A queue group meets a damaged batch: its messages are dead-lettered
/// with the damage as the reason, every other message (of that partition
/// and the others) is delivered, and the group goes on. Before, the
/// delivery failed outright, on every partition, for good.
#[tokio::test]
async fn a_queue_group_steps_over_a_damaged_batch() {
    use spool::broker::{GroupConfig, GroupMode};
    let dir = tempfile::tempdir().unwrap();
    fill_partitions(dir.path(), 2).await;
    let sealed = &segments(dir.path())[0];
    let in_sealed = batches(sealed);
    let (pos, victim) = in_sealed[in_sealed.len() / 2];
    flip_byte(sealed, pos + u64::from(victim.batch_len) - 5);

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let member = broker
        .join_group("g", TOPIC, GroupMode::Queue, GroupConfig::default())
        .unwrap();
    let mut delivered = std::collections::BTreeSet::new();
    loop {
        let batch = deliver_and_ack(&broker, member, 500, 200)
            .await
            .expect("delivery goes on past the damaged batch");
        if batch.is_empty() {
            break;
        }
        delivered.extend(batch);
    }
    assert_eq!(delivered.len(), 900 - 3 + 10);
    for o in victim.base_offset.0..victim.next_offset().0 {
        assert!(
            !delivered.contains(&(0, o)),
            "a damaged offset was delivered"
        );
    }
    let info = broker.describe_group("g").unwrap();
    assert_eq!(
        info.partitions.iter().map(|p| p.dead_letters).sum::<u64>(),
        3
    );
    let dead = broker
        .read("g.dlq", PartitionId(0), Offset(0), 1 << 20)
        .unwrap();
    let batch = spool::Batch::validate(&dead.batches).unwrap();
    let mut reasons = 0;
    for r in batch.records() {
        let reason =
            String::from_utf8_lossy(r.header(b"spool.dlq.reason").expect("a reason")).to_string();
        assert!(reason.starts_with("corrupt_batch: "), "{reason}");
        reasons += 1;
    }
    assert_eq!(reasons, 3);
}

/// Byte ranges of segment files that a damage touched.
type Touched = Vec<(PathBuf, std::ops::Range<u64>)>;

/// One kind of damage for the matrix: what it does to a filled directory,
/// and the byte ranges of segment files it touched (the batches that
/// overlap them are the ones whose offsets may be lost).
struct Damage {
    name: &'static str,
    apply: fn(&Path) -> Touched,
}

fn write_at(path: &Path, position: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, position).unwrap();
}

/// The batch in the middle of segment `which` (0: the first, sealed; -1:
/// the last, active), and where it lies.
fn middle_batch(dir: &Path, which: isize) -> (PathBuf, u64, BatchHeader) {
    let files = segments(dir);
    let file = if which < 0 {
        files[files.len() - 1].clone()
    } else {
        files[which as usize].clone()
    };
    let all = batches(&file);
    let (pos, header) = all[all.len() / 2];
    (file, pos, header)
}

fn flip_in(dir: &Path, which: isize, field_at: fn(&BatchHeader) -> u64) -> Touched {
    let (file, pos, header) = middle_batch(dir, which);
    let at = pos + field_at(&header);
    flip_byte(&file, at);
    vec![(file, at..at + 1)]
}

const MATRIX: &[Damage] = &[
    Damage {
        name: "flipped bit in a value, sealed segment",
        apply: |dir| flip_in(dir, 0, |h| u64::from(h.batch_len) - 5),
    },
    Damage {
        name: "flipped bit in a value, active segment",
        apply: |dir| flip_in(dir, -1, |h| u64::from(h.batch_len) - 5),
    },
    Damage {
        name: "flipped bit in a batch length, sealed segment",
        apply: |dir| flip_in(dir, 0, |_| 9),
    },
    Damage {
        name: "flipped bit in a batch length, active segment",
        apply: |dir| flip_in(dir, -1, |_| 9),
    },
    Damage {
        name: "flipped bit in a base offset, active segment",
        apply: |dir| flip_in(dir, -1, |_| 2),
    },
    Damage {
        name: "flipped bit in a record count, sealed segment",
        apply: |dir| flip_in(dir, 0, |_| 20),
    },
    Damage {
        name: "flipped bit in a timestamp, sealed segment",
        apply: |dir| flip_in(dir, 0, |_| 36),
    },
    Damage {
        name: "flipped bit in a stored CRC, active segment",
        apply: |dir| flip_in(dir, -1, |_| 13),
    },
    Damage {
        name: "flipped bit in the last batch, active segment",
        apply: |dir| {
            let active = segments(dir).pop().unwrap();
            let (pos, last) = *batches(&active).last().unwrap();
            let at = pos + u64::from(last.batch_len) - 3;
            flip_byte(&active, at);
            vec![(active, at..at + 1)]
        },
    },
    Damage {
        name: "a zeroed 4 KiB page, sealed segment",
        apply: |dir| {
            let sealed = segments(dir)[0].clone();
            write_at(&sealed, 4096, &[0u8; 4096]);
            vec![(sealed, 4096..8192)]
        },
    },
    Damage {
        name: "a zeroed 4 KiB page, active segment",
        apply: |dir| {
            let active = segments(dir).pop().unwrap();
            write_at(&active, 4096, &[0u8; 4096]);
            vec![(active, 4096..8192)]
        },
    },
    Damage {
        name: "garbage over two batches, active segment",
        apply: |dir| {
            let (file, pos, _) = middle_batch(dir, -1);
            write_at(&file, pos + 7, &[0xA5u8; 300]);
            vec![(file, pos + 7..pos + 307)]
        },
    },
    Damage {
        name: "a garbage index file, sealed segment",
        apply: |dir| {
            let index = segments(dir)[0].with_extension("index");
            fs::write(index, b"not an index").unwrap();
            Vec::new()
        },
    },
    Damage {
        name: "a garbage durable mark",
        apply: |dir| {
            let mark = segments(dir)[0].parent().unwrap().join("durable-mark");
            fs::write(mark, [0xFFu8; 32]).unwrap();
            Vec::new()
        },
    },
    Damage {
        name: "a garbage producers' snapshot",
        apply: |dir| {
            let partition = segments(dir)[0].parent().unwrap().to_path_buf();
            for entry in fs::read_dir(&partition).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "producers") {
                    fs::write(path, b"garbage").unwrap();
                }
            }
            Vec::new()
        },
    },
];

/// Every kind of damage in `MATRIX`, each on a fresh directory reopened as
/// after a crash: exactly the offsets of the batches the damage touched are
/// lost (reads of them fail as corrupt, never return other bytes), every
/// other message reads back intact, a queue group delivers all of those and
/// dead-letters exactly the lost ones with the damage as reason, a second
/// partition is untouched, and the next message gets a new offset.
#[tokio::test]
async fn corruption_matrix_costs_only_the_damaged_batches() {
    use spool::broker::{GroupConfig, GroupMode};
    use std::collections::BTreeSet;
    for damage in MATRIX {
        let dir = tempfile::tempdir().unwrap();
        fill_partitions(dir.path(), 2).await;
        fs::remove_file(dir.path().join("clean-shutdown")).unwrap();
        let mut layout = Vec::new();
        for file in segments(dir.path()) {
            for (pos, header) in batches(&file) {
                layout.push((file.clone(), pos, header));
            }
        }
        let touched = (damage.apply)(dir.path());
        let mut expected_lost = BTreeSet::new();
        for (file, pos, header) in &layout {
            let range = *pos..pos + u64::from(header.batch_len);
            if touched
                .iter()
                .any(|(f, r)| f == file && r.start < range.end && range.start < r.end)
            {
                expected_lost.extend(header.base_offset.0..header.next_offset().0);
            }
        }
        assert!(
            touched.is_empty() || !expected_lost.is_empty(),
            "{}: the damage touched no batch",
            damage.name
        );

        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        let end = broker.offsets(TOPIC, PartitionId(0)).unwrap().end;
        assert_eq!(end, Offset(900), "{}: the log's end moved", damage.name);
        let mut lost = BTreeSet::new();
        for offset in 0..900u64 {
            match broker.read(TOPIC, PartitionId(0), Offset(offset), 1) {
                Ok(fetched) => {
                    let record = fetched
                        .records()
                        .map(|r| r.unwrap())
                        .find(|r| r.offset == Offset(offset))
                        .unwrap_or_else(|| panic!("{}: offset {offset} missing", damage.name));
                    assert_eq!(
                        record.value,
                        format!("{offset:060}").into_bytes(),
                        "{}: wrong bytes served at {offset}",
                        damage.name
                    );
                }
                Err(BrokerError::Storage {
                    source: StorageError::Corrupt { .. },
                    ..
                }) => {
                    lost.insert(offset);
                }
                Err(e) => panic!("{}: reading {offset}: {e}", damage.name),
            }
        }
        assert_eq!(lost, expected_lost, "{}: lost offsets", damage.name);

        let member = broker
            .join_group("g", TOPIC, GroupMode::Queue, GroupConfig::default())
            .unwrap();
        let mut delivered = BTreeSet::new();
        loop {
            let batch = deliver_and_ack(&broker, member, 1000, 100)
                .await
                .unwrap_or_else(|e| panic!("{}: delivery: {e}", damage.name));
            if batch.is_empty() {
                break;
            }
            for m in batch {
                assert!(delivered.insert(m), "{}: delivered twice", damage.name);
            }
        }
        let expected_delivered: BTreeSet<_> = (0..900u64)
            .filter(|o| !expected_lost.contains(o))
            .map(|o| (0, o))
            .chain((0..10).map(|o| (1, o)))
            .collect();
        assert_eq!(delivered, expected_delivered, "{}: delivered", damage.name);
        let dead_letters = match broker.read("g.dlq", PartitionId(0), Offset(0), 1 << 20) {
            Ok(fetched) => fetched.records().count(),
            Err(BrokerError::TopicNotFound(_)) => 0,
            Err(e) => panic!("{}: reading dead letters: {e}", damage.name),
        };
        assert_eq!(
            dead_letters,
            expected_lost.len(),
            "{}: dead letters",
            damage.name
        );

        let next = broker
            .produce(TOPIC, PartitionId(0), &[Message::new("next")])
            .await
            .unwrap();
        assert_eq!(
            next.base_offset,
            Offset(900),
            "{}: offset reused",
            damage.name
        );
    }
}

/// `spool verify` checks consumer groups too: a flipped byte in the middle
/// of an ack log (acks lost) is damage, named by file and byte, exit 1; a
/// torn last record (a crash's normal leftover, never confirmed) is
/// reported but is not damage; a garbage group.meta is damage.
#[tokio::test]
async fn verify_checks_group_ack_logs_and_metadata() {
    use spool::broker::{GroupConfig, GroupMode};
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path()).await;
    {
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        let member = broker
            .join_group("g", TOPIC, GroupMode::Queue, GroupConfig::default())
            .unwrap();
        // Small deliveries: each ack request writes one run of acks per
        // partition, and the log needs a dozen records.
        for _ in 0..30 {
            deliver_and_ack(&broker, member, 10, 100).await.unwrap();
        }
        broker.close().unwrap();
    }
    let data = dir.path().to_str().unwrap().to_string();
    let group_dir = dir.path().join("groups").join("g");
    let ack_log = group_dir.join("0.acklog");
    let len = fs::metadata(&ack_log).unwrap().len();
    assert!(len > 20 + 17 * 10, "an ack log with records: {len} bytes");

    // A torn last record: reported, not damage.
    OpenOptions::new()
        .write(true)
        .open(&ack_log)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let out = spool_bin(&["verify", "--data", &data]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("group g: torn_record"), "{text}");

    // A flipped byte among the records: acks lost, damage.
    flip_byte(&ack_log, 20 + 17 * 3 + 4);
    let out = spool_bin(&["verify", "--data", &data]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "group g: ack_log in {} at byte {}",
            ack_log.display(),
            20 + 17 * 3
        )),
        "{text}"
    );

    fs::write(group_dir.join("group.meta"), b"garbage").unwrap();
    let out = spool_bin(&["verify", "--data", &data]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("group g: metadata in"), "{text}");
}
