//! Crash tests: a child process appends as fast as it can and reports every
//! acknowledged append on stdout; the parent SIGKILLs it at a random moment,
//! reopens the directory and checks that every acknowledged append is there,
//! in order, exactly once, and that the log keeps taking appends. Many kill
//! points per sync policy, each round recovering what the last one left.
//!
//! The child is this same test binary re-executed with `--ignored --exact
//! crash_child`, so it is a real process writing real files.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::read_all;
use rand::{Rng, SeedableRng};
use spool::{Broker, BrokerConfig, Message, Offset, PartitionId, SyncPolicy, TopicConfig};

const DIR_ENV: &str = "SPOOL_CRASH_CHILD_DIR";
const SYNC_ENV: &str = "SPOOL_CRASH_CHILD_SYNC";
/// Set: the topic keeps two segments (retention by size), so segment files
/// are dropped and recycled while the child appends.
const RETENTION_ENV: &str = "SPOOL_CRASH_CHILD_RETENTION";
const RETAINED_BYTES: u64 = 64 * 1024;
const TOPIC: &str = "crash";
const PARTITIONS: u32 = 2;
const ROUNDS_PER_POLICY: usize = 12;

/// The value of the record at `offset` of `partition`: self-describing, so a
/// duplicate, a gap or a misplaced record is caught by reading it back.
fn value_for(partition: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{partition}:{offset}:").into_bytes();
    v.resize(v.len() + len, b'a' + (offset % 26) as u8);
    v
}

fn check_value(partition: u32, offset: u64, value: &[u8]) {
    let text = String::from_utf8_lossy(value);
    let mut parts = text.splitn(3, ':');
    let p: u32 = parts.next().unwrap().parse().unwrap();
    let o: u64 = parts.next().unwrap().parse().unwrap();
    let fill = parts.next().unwrap();
    assert_eq!(
        (p, o),
        (partition, offset),
        "record at {partition}/{offset} is {text:?}"
    );
    assert!(
        fill.bytes().all(|b| b == b'a' + (offset % 26) as u8),
        "payload damaged at {offset}"
    );
}

fn topic_config(sync: SyncPolicy, retention: bool) -> TopicConfig {
    // Small segments so kills land in the middle of rolls too.
    TopicConfig::new(PARTITIONS)
        .sync(sync)
        .segment_size_bytes(32 * 1024)
        .retention_bytes(retention.then_some(RETAINED_BYTES))
}

#[test]
#[ignore = "child process of the crash tests; they run it"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let sync: SyncPolicy = std::env::var(SYNC_ENV).unwrap().parse().unwrap();
    let retention = std::env::var_os(RETENTION_ENV).is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let broker = Broker::open(&dir, BrokerConfig::default()).unwrap();
        if broker.describe_topic(TOPIC).is_err() {
            broker
                .create_topic(TOPIC, topic_config(sync, retention))
                .unwrap();
        }
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut out = std::io::stdout().lock();
        loop {
            let p = rng.random_range(0..PARTITIONS);
            let next = broker.offsets(TOPIC, PartitionId(p)).unwrap().end.0;
            let n = rng.random_range(1..20u64);
            let messages: Vec<Message> = (0..n)
                .map(|i| Message::new(value_for(p, next + i, rng.random_range(0..400))))
                .collect();
            let info = broker
                .produce(TOPIC, PartitionId(p), &messages)
                .await
                .unwrap();
            assert_eq!(info.base_offset, Offset(next));
            use std::io::Write;
            writeln!(out, "ACK {p} {next} {n}").unwrap();
            if next % 64 == 0 {
                let recycled = broker.storage_stats().segments_recycled;
                writeln!(out, "RECYCLED {recycled}").unwrap();
            }
            out.flush().unwrap();
        }
    });
}

/// Runs the child until it has acknowledged something, kills it with SIGKILL
/// after a random delay, and returns the acks it reported as `(partition,
/// base, count)`.
fn run_and_kill(
    dir: &std::path::Path,
    sync: SyncPolicy,
    retention: bool,
    rng: &mut impl Rng,
) -> (Vec<(u32, u64, u64)>, u64) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(SYNC_ENV, sync.to_string());
    if retention {
        command.env(RETENTION_ENV, "1");
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            let mut recycled = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                match parts.next() {
                    Some("ACK") => {}
                    Some("RECYCLED") => {
                        recycled = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                        continue;
                    }
                    _ => continue,
                }
                let nums: Vec<u64> = parts.map(|x| x.parse().unwrap()).collect();
                acks.lock()
                    .unwrap()
                    .push((nums[0] as u32, nums[1], nums[2]));
            }
            recycled
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "child never acknowledged an append"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Retention runs every 250 ms: a retention run lets it drop and
    // recycle segments first.
    let most = if retention { 1_000 } else { 120 };
    std::thread::sleep(Duration::from_millis(rng.random_range(0..most)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let recycled = reader.join().unwrap();
    let acks = acks.lock().unwrap().clone();
    (acks, recycled)
}

fn crash_rounds(sync: SyncPolicy, retention: bool) {
    common::init_tracing();
    // Recycling needs a file system that can say whether a page is cached
    // (`RWF_NOWAIT` reads): the build's disk rather than a tmpfs `/tmp`.
    let dir = if retention {
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5900_1000 + sync.to_string().len() as u64);
    let mut all_acks = Vec::new();
    let mut total_acked = 0u64;
    let mut segments_recycled = 0;
    for round in 0..ROUNDS_PER_POLICY {
        let (acks, recycled) = run_and_kill(dir.path(), sync, retention, &mut rng);
        segments_recycled += recycled;
        total_acked += acks.iter().map(|a| a.2).sum::<u64>();
        all_acks.extend(acks);
        // On odd rounds the next child recovers straight from this kill (a
        // full rescan); on even rounds, and the last, the parent checks and
        // then closes cleanly (the next child trusts the index checkpoint).
        if round % 2 == 1 && round + 1 < ROUNDS_PER_POLICY {
            continue;
        }

        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        if retention {
            // Let retention (every 250 ms) drop what the child left past
            // the limit, so that the log's start stays put while it is read.
            let starts = || -> Vec<Offset> {
                (0..PARTITIONS)
                    .map(|p| broker.offsets(TOPIC, PartitionId(p)).unwrap().start)
                    .collect()
            };
            let mut last = starts();
            for _ in 0..25 {
                std::thread::sleep(Duration::from_millis(800));
                let now = starts();
                if now == last {
                    break;
                }
                last = now;
            }
        }
        for p in 0..PARTITIONS {
            // read_all checks offsets are contiguous from the start.
            let records = read_all(&broker, TOPIC, p);
            for r in &records {
                check_value(p, r.offset, &r.value);
            }
            let end = broker.offsets(TOPIC, PartitionId(p)).unwrap().end.0;
            assert_eq!(
                records.first().map_or(end, |r| r.offset) + records.len() as u64,
                end
            );
            if !retention {
                assert_eq!(
                    records.len() as u64,
                    end,
                    "nothing dropped without retention"
                );
            }
            for &(ap, base, n) in all_acks.iter().filter(|a| a.0 == p) {
                assert!(
                    base + n <= end,
                    "round {round}: acked {p}/{base}+{n} lost, log ends at {end}"
                );
                assert_eq!(ap, p);
            }
        }
        // The recovered log takes appends at the right offsets.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = round as u32 % PARTITIONS;
            let end = broker.offsets(TOPIC, PartitionId(p)).unwrap().end.0;
            let info = broker
                .produce(
                    TOPIC,
                    PartitionId(p),
                    &[Message::new(value_for(p, end, 10))],
                )
                .await
                .unwrap();
            assert_eq!(info.base_offset, Offset(end));
        });
        broker.close().unwrap();
    }
    assert!(total_acked > 0);
    if retention {
        assert!(
            segments_recycled >= ROUNDS_PER_POLICY as u64,
            "{segments_recycled} segments recycled in {ROUNDS_PER_POLICY} rounds: recycling was barely exercised"
        );
    }
}

#[test]
fn sigkill_loses_no_acknowledged_append_sync_always() {
    crash_rounds(SyncPolicy::Always, false);
}

#[test]
fn sigkill_loses_no_acknowledged_append_sync_interval() {
    crash_rounds(SyncPolicy::Interval { ms: 20 }, false);
}

#[test]
fn sigkill_loses_no_acknowledged_append_sync_never() {
    crash_rounds(SyncPolicy::Never, false);
}

/// The same with retention dropping segments and new ones written over
/// their recycled files: the kills land in the middle of that too, and
/// nothing old is ever read back as data.
#[test]
fn sigkill_loses_no_acknowledged_append_with_recycled_segments() {
    crash_rounds(SyncPolicy::Interval { ms: 20 }, true);
    crash_rounds(SyncPolicy::Never, true);
}
