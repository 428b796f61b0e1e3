//! The embedded API end to end on real files.

mod common;

use common::{init_tracing, read_all};
use spool::{
    Broker, BrokerConfig, BrokerError, Message, Offset, PartitionId, SyncPolicy, TopicConfig,
};

fn small_topic(partitions: u32, sync: SyncPolicy) -> TopicConfig {
    TopicConfig::new(partitions)
        .sync(sync)
        .segment_size_bytes(16 * 1024)
}

#[tokio::test]
async fn produce_read_reopen_and_roll() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        broker
            .create_topic("events", small_topic(3, SyncPolicy::Interval { ms: 5 }))
            .unwrap();
        for i in 0..600u32 {
            let msg = Message::new(format!("value-{i:05}-{}", "x".repeat(100)));
            let info = broker
                .produce("events", PartitionId(i % 3), &[msg])
                .await
                .unwrap();
            assert_eq!(info.base_offset, Offset(u64::from(i / 3)));
        }
        for p in 0..3 {
            let records = read_all(&broker, "events", p);
            assert_eq!(records.len(), 200);
            for (j, r) in records.iter().enumerate() {
                let i = j as u32 * 3 + p;
                assert!(r.value.starts_with(format!("value-{i:05}").as_bytes()));
            }
        }
        broker.close().unwrap();
    }
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let info = broker.describe_topic("events").unwrap();
    assert_eq!(info.partitions.len(), 3);
    for p in &info.partitions {
        assert_eq!((p.start, p.end), (Offset(0), Offset(200)));
    }
    // 200 records of ~130 bytes each = ~26 KiB per partition: more than one segment.
    let seg_files = std::fs::read_dir(dir.path().join("topics/events/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(
        seg_files >= 2,
        "expected a roll, found {seg_files} segments"
    );
    // Appends continue where the log left off.
    let info = broker
        .produce("events", PartitionId(1), &[Message::new("after")])
        .await
        .unwrap();
    assert_eq!(info.base_offset, Offset(200));
    assert_eq!(
        read_all(&broker, "events", 1).last().unwrap().value,
        b"after"
    );
}

#[tokio::test]
async fn keyed_messages_stick_to_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker.create_topic("t", TopicConfig::new(8)).unwrap();
    let mut seen = std::collections::HashMap::new();
    for i in 0..100 {
        let key = format!("user-{}", i % 10);
        let (p, _) = broker
            .produce_keyed("t", Message::new(format!("{i}")).with_key(key.clone()))
            .await
            .unwrap();
        assert_eq!(*seen.entry(key).or_insert(p), p);
    }
    // Ten keys over eight partitions spread over more than one partition.
    let used: std::collections::HashSet<_> = seen.values().collect();
    assert!(used.len() > 1);
    // The mapping is a documented function of the key: CRC-32 mod partitions.
    assert_eq!(
        broker.partition_for_key("t", b"user-3").unwrap(),
        PartitionId(crc32fast::hash(b"user-3") % 8)
    );
}

#[tokio::test]
async fn topic_admin_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker.create_topic("a", TopicConfig::new(1)).unwrap();
    broker
        .create_topic("b", TopicConfig::new(2).sync(SyncPolicy::Always))
        .unwrap();
    assert!(matches!(
        broker.create_topic("a", TopicConfig::new(1)),
        Err(BrokerError::TopicExists(_))
    ));
    assert!(matches!(
        broker.create_topic("../x", TopicConfig::new(1)),
        Err(BrokerError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        broker.create_topic("z", TopicConfig::new(0)),
        Err(BrokerError::InvalidConfig(_))
    ));
    let names: Vec<_> = broker.list_topics().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(matches!(
        broker
            .produce("b", PartitionId(2), &[Message::new("x")])
            .await,
        Err(BrokerError::PartitionNotFound { partitions: 2, .. })
    ));
    assert!(matches!(
        broker
            .produce("nope", PartitionId(0), &[Message::new("x")])
            .await,
        Err(BrokerError::TopicNotFound(_))
    ));
    // A batch with a broken CRC is refused and stores nothing.
    let mut bad = spool::BatchBuilder::new();
    bad.push(1, None, b"payload", &[]).unwrap();
    let mut bad = bad.finish().unwrap().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        broker.append("a", PartitionId(0), &bad).await,
        Err(BrokerError::InvalidBatch(_))
    ));
    assert_eq!(broker.offsets("a", PartitionId(0)).unwrap().end, Offset(0));
    // A valid batch with bytes after it is refused whole, not truncated.
    let mut good = spool::BatchBuilder::new();
    good.push(1, None, b"payload", &[]).unwrap();
    let mut trailing = good.finish().unwrap().to_vec();
    trailing.extend_from_slice(b"extra");
    assert!(matches!(
        broker.append("a", PartitionId(0), &trailing).await,
        Err(BrokerError::InvalidBatch(_))
    ));
    assert_eq!(broker.offsets("a", PartitionId(0)).unwrap().end, Offset(0));
    // Reading past the end is a clear error.
    assert!(broker.read("a", PartitionId(0), Offset(5), 1024).is_err());

    broker
        .produce("b", PartitionId(1), &[Message::new("keep?")])
        .await
        .unwrap();
    broker.delete_topic("b").unwrap();
    assert!(matches!(
        broker.delete_topic("b"),
        Err(BrokerError::TopicNotFound(_))
    ));
    broker.create_topic("b", TopicConfig::new(2)).unwrap();
    assert_eq!(
        broker.offsets("b", PartitionId(1)).unwrap().end,
        Offset(0),
        "deleted data came back"
    );
    drop(broker);
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert_eq!(broker.list_topics().len(), 2);
}

#[test]
fn a_directory_is_opened_by_one_broker_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert!(matches!(
        Broker::open(dir.path(), BrokerConfig::default()),
        Err(BrokerError::DirectoryLocked(_))
    ));
    drop(first);
    let second = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    second.create_topic("t", TopicConfig::new(1)).unwrap();
    // close() releases the directory while clones still exist; every clone
    // then refuses work rather than touch files another broker may own.
    let clone = second.clone();
    second.close().unwrap();
    let third = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    assert!(matches!(
        clone.read("t", PartitionId(0), Offset(0), 10),
        Err(BrokerError::Closed)
    ));
    assert!(matches!(
        clone.create_topic("u", TopicConfig::new(1)),
        Err(BrokerError::Closed)
    ));
    assert_eq!(third.list_topics().len(), 1);
}

#[tokio::test]
async fn always_sync_with_concurrent_producers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker
        .create_topic("durable", small_topic(1, SyncPolicy::Always))
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let broker = broker.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                broker
                    .produce(
                        "durable",
                        PartitionId(0),
                        &[Message::new(format!("{t}-{i}"))],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = read_all(&broker, "durable", 0);
    assert_eq!(records.len(), 800);
    let unique: std::collections::HashSet<_> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(unique.len(), 800);
    // Group commit: concurrent producers share flushes.
    let flushes = broker.storage_stats().flushes;
    eprintln!("800 acknowledged appends, {flushes} flushes");
    assert!(
        flushes > 0 && flushes < 800,
        "{flushes} flushes for 800 appends"
    );
}

#[tokio::test]
async fn retention_by_size_drops_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let config = small_topic(1, SyncPolicy::Never).retention_bytes(Some(40 * 1024));
    broker.create_topic("r", config).unwrap();
    for i in 0..2000 {
        broker
            .produce("r", PartitionId(0), &[Message::new(format!("{i:0100}"))])
            .await
            .unwrap();
    }
    // The flusher runs retention every 250 ms (housekeeping).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let offsets = broker.offsets("r", PartitionId(0)).unwrap();
        if offsets.start > Offset(0) {
            assert_eq!(offsets.end, Offset(2000));
            let records = read_all(&broker, "r", 0);
            assert_eq!(records.first().unwrap().offset, offsets.start.0);
            assert!(records.len() < 2000);
            // Reading below the start is an error, not silent data.
            assert!(broker.read("r", PartitionId(0), Offset(0), 1024).is_err());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Retention runs on the flusher's housekeeping period (250 ms) under
/// every policy, not only when some `interval` log wakes the flusher: with
/// only `never` topics it once slept up to a second between runs, letting
/// a partition grow past its retention for that long.
#[tokio::test]
async fn retention_runs_every_housekeeping_period_without_interval_topics() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let config = small_topic(1, SyncPolicy::Never).retention_bytes(Some(32 * 1024));
    broker.create_topic("r", config).unwrap();
    let started = std::time::Instant::now();
    let mut start = Offset(0);
    let mut moved_at = Vec::new();
    let mut i = 0;
    // Always a segment or more past retention: every run drops something.
    while started.elapsed() < std::time::Duration::from_secs(3) {
        for _ in 0..20 {
            broker
                .produce("r", PartitionId(0), &[Message::new(format!("{i:0200}"))])
                .await
                .unwrap();
            i += 1;
        }
        let now = broker.offsets("r", PartitionId(0)).unwrap().start;
        if now != start {
            start = now;
            moved_at.push(started.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut gaps: Vec<_> = moved_at.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    eprintln!(
        "retention moved the start {} times; gaps {gaps:?}",
        moved_at.len()
    );
    assert!(
        gaps.len() >= 3,
        "retention ran {} times in 3 s",
        moved_at.len()
    );
    let median = gaps[gaps.len() / 2];
    assert!(
        median < std::time::Duration::from_millis(600),
        "retention ran every {median:?} (median), not every 250 ms"
    );
}

#[tokio::test]
async fn long_poll_wakes_on_append_and_times_out_empty() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        broker
            .create_topic("lp", TopicConfig::new(1).sync(sync))
            .unwrap();
        let waiting = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let fetched = broker
                    .read_wait(
                        "lp",
                        PartitionId(0),
                        Offset(0),
                        1024,
                        std::time::Duration::from_secs(20),
                    )
                    .await
                    .unwrap();
                (fetched, started.elapsed())
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        broker
            .produce("lp", PartitionId(0), &[Message::new("wake up")])
            .await
            .unwrap();
        let (fetched, waited) = waiting.await.unwrap();
        assert_eq!(fetched.records().next().unwrap().unwrap().value, b"wake up");
        assert!(
            waited < std::time::Duration::from_secs(10),
            "{sync}: woke only after {waited:?}"
        );

        let started = std::time::Instant::now();
        let empty = broker
            .read_wait(
                "lp",
                PartitionId(0),
                Offset(1),
                1024,
                std::time::Duration::from_millis(150),
            )
            .await
            .unwrap();
        assert!(empty.batches.is_empty());
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    }
}

#[tokio::test]
async fn offsets_can_be_found_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker
        .create_topic("ts", small_topic(1, SyncPolicy::Never))
        .unwrap();
    // Timestamps 1000, 1010, ..., across many batches and segments.
    for b in 0..100i64 {
        let msgs: Vec<_> = (0..10i64)
            .map(|i| Message {
                timestamp_ms: Some(1000 + (b * 10 + i) * 10),
                ..Message::new(format!("{:0100}", b * 10 + i))
            })
            .collect();
        broker.produce("ts", PartitionId(0), &msgs).await.unwrap();
    }
    let p = PartitionId(0);
    assert_eq!(broker.offset_for_timestamp("ts", p, 0).unwrap(), Offset(0));
    assert_eq!(
        broker.offset_for_timestamp("ts", p, 1000).unwrap(),
        Offset(0)
    );
    assert_eq!(
        broker.offset_for_timestamp("ts", p, 1001).unwrap(),
        Offset(1)
    );
    assert_eq!(
        broker.offset_for_timestamp("ts", p, 5550).unwrap(),
        Offset(455)
    );
    assert_eq!(
        broker.offset_for_timestamp("ts", p, 10_990).unwrap(),
        Offset(999)
    );
    assert_eq!(
        broker.offset_for_timestamp("ts", p, 11_000).unwrap(),
        Offset(1000)
    );
}
