//! A broker with 1,000 partitions holding data opens without mapping its
//! sealed segments, keeps its resident memory small, maps a sealed segment
//! only while it is read and unmaps it once it goes cold.

mod common;

use std::time::{Duration, Instant};

use spool::{BatchBuilder, Broker, BrokerConfig, Offset, PartitionId, SyncPolicy, TopicConfig};

const TOPICS: u32 = 10;
const PARTITIONS_PER_TOPIC: u32 = 100;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn config() -> BrokerConfig {
    BrokerConfig {
        unmap_idle_segments_ms: 300,
        ..BrokerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_partitions_open_lazily_and_unmap_cold_segments() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Three 12 KiB batches per partition with 16 KiB segments: two sealed
    // segments and an active one each.
    let mut b = BatchBuilder::new();
    for _ in 0..100 {
        b.push(0, None, &[7u8; 120], &[]).unwrap();
    }
    let batch = b.finish().unwrap();
    {
        let broker = Broker::open(dir.path(), config()).unwrap();
        for t in 0..TOPICS {
            let topic = format!("t{t}");
            let cfg = TopicConfig::new(PARTITIONS_PER_TOPIC)
                .sync(SyncPolicy::Never)
                .segment_size_bytes(16 * 1024);
            broker.create_topic(&topic, cfg).unwrap();
            for p in 0..PARTITIONS_PER_TOPIC {
                for _ in 0..3 {
                    broker.append(&topic, PartitionId(p), &batch).await.unwrap();
                }
            }
        }
        broker.close().unwrap();
    }

    let rss_before = rss_kib();
    let started = Instant::now();
    let broker = Broker::open(dir.path(), config()).unwrap();
    let open_time = started.elapsed();
    let stats = broker.storage_stats();
    let rss_open = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "opened {} partitions in {open_time:?}, RSS +{rss_open} KiB, {stats:?}",
        stats.partitions
    );
    assert_eq!(stats.partitions, 1000);
    assert_eq!(stats.segments, 3000);
    // Only the active segments are mapped after open.
    assert_eq!(stats.mapped_segments, 1000);
    assert!(
        rss_open < 64 * 1024,
        "opening 1,000 partitions grew RSS by {rss_open} KiB"
    );

    // Reading the oldest data maps sealed segments...
    for t in 0..TOPICS {
        for p in 0..PARTITIONS_PER_TOPIC {
            let fetched = broker
                .read(&format!("t{t}"), PartitionId(p), Offset(0), 1 << 20)
                .unwrap();
            assert_eq!(fetched.records().count(), 100);
        }
    }
    assert_eq!(broker.storage_stats().mapped_segments, 2000);
    // ...and once they go cold the flusher's housekeeping unmaps them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.storage_stats().mapped_segments > 1000 {
        assert!(
            Instant::now() < deadline,
            "cold segments were never unmapped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
