//! Queue consumption with per-message acks against stream consumption, on
//! the embedded broker, 100-byte messages. Each iteration consumes the whole
//! prefilled topic (100,000 messages over 4 partitions) as a fresh group.
//!
//! Run: `cargo bench --bench groups`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spool::broker::{GroupConfig, GroupMode};
use spool::{BatchBuilder, Broker, BrokerConfig, Offset, PartitionId, SyncPolicy, TopicConfig};

const PARTITIONS: u32 = 4;
const MESSAGES: u64 = 100_000;
const DELIVER_BATCH: usize = 1000;

fn setup(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker.create_topic("t", TopicConfig::new(PARTITIONS).sync(SyncPolicy::Never)).unwrap();
    let per_partition = MESSAGES / u64::from(PARTITIONS);
    rt.block_on(async {
        for p in 0..PARTITIONS {
            for _ in 0..per_partition / 1000 {
                let mut b = BatchBuilder::new();
                for _ in 0..1000 {
                    b.push(0, None, &[b'x'; 100], &[]).unwrap();
                }
                broker.append("t", PartitionId(p), &b.finish().unwrap()).await.unwrap();
            }
        }
    });
    (dir, broker)
}

fn consume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_dir, broker) = setup(&rt);
    let groups = AtomicU64::new(0);
    let mut group = c.benchmark_group("consume_100b");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(MESSAGES));

    group.bench_function("stream_commit_per_chunk", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let name = format!("s{}", groups.fetch_add(1, Ordering::Relaxed));
                broker.join_group(&name, "t", GroupMode::Stream, GroupConfig::default()).unwrap();
                let mut seen = 0u64;
                for p in 0..PARTITIONS {
                    let mut next = Offset(0);
                    loop {
                        let fetched = broker.read("t", PartitionId(p), next, 1 << 20).unwrap();
                        if fetched.batches.is_empty() {
                            break;
                        }
                        seen += fetched.records().map(|r| r.unwrap().value.len() as u64 / 100).sum::<u64>();
                        next = fetched.next_offset;
                        broker.commit_offset(&name, PartitionId(p), next).unwrap();
                    }
                }
                assert_eq!(seen, MESSAGES);
            }
            start.elapsed()
        })
    });

    for (label, ack_each) in [("queue_ack_batched_per_delivery", false), ("queue_ack_one_call_per_message", true)] {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let name = format!("q{}", groups.fetch_add(1, Ordering::Relaxed));
                    let config = GroupConfig {
                        max_in_flight: DELIVER_BATCH as u32,
                        ..GroupConfig::default()
                    };
                    let member = broker.join_group(&name, "t", GroupMode::Queue, config).unwrap();
                    let mut acked = 0u64;
                    rt.block_on(async {
                        loop {
                            let got = broker.deliver(&name, member, DELIVER_BATCH, Duration::ZERO).await.unwrap();
                            if got.is_empty() {
                                break;
                            }
                            if ack_each {
                                for m in &got {
                                    broker.ack(&name, member, &[(m.partition, m.offset)]).unwrap();
                                }
                            } else {
                                let items: Vec<_> = got.iter().map(|m| (m.partition, m.offset)).collect();
                                broker.ack(&name, member, &items).unwrap();
                            }
                            acked += got.len() as u64;
                        }
                    });
                    assert_eq!(acked, MESSAGES);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, consume);
criterion_main!(benches);
