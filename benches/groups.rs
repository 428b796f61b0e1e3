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
    broker
        .create_topic("t", TopicConfig::new(PARTITIONS).sync(SyncPolicy::Never))
        .unwrap();
    let per_partition = MESSAGES / u64::from(PARTITIONS);
    rt.block_on(async {
        for p in 0..PARTITIONS {
            for _ in 0..per_partition / 1000 {
                let mut b = BatchBuilder::new();
                for _ in 0..1000 {
                    b.push(0, None, &[b'x'; 100], &[]).unwrap();
                }
                broker
                    .append("t", PartitionId(p), &b.finish().unwrap())
                    .await
                    .unwrap();
            }
        }
    });
    (dir, broker)
}

fn consume(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, broker) = setup(&rt);
    let groups = AtomicU64::new(0);
    let mut group = c.benchmark_group("consume_100b");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(MESSAGES));

    group.bench_function("stream_commit_per_chunk", |b| {
        b.iter_custom(|iters| {
            // Groups are created (files, fsync) before the clock starts.
            let names: Vec<String> = (0..iters)
                .map(|_| {
                    let name = format!("s{}", groups.fetch_add(1, Ordering::Relaxed));
                    broker
                        .join_group(&name, "t", GroupMode::Stream, GroupConfig::default())
                        .unwrap();
                    name
                })
                .collect();
            let start = Instant::now();
            for name in &names {
                rt.block_on(async {
                    let mut seen = 0u64;
                    for p in 0..PARTITIONS {
                        let mut next = Offset(0);
                        loop {
                            let fetched = broker.read("t", PartitionId(p), next, 1 << 20).unwrap();
                            if fetched.batches.is_empty() {
                                break;
                            }
                            seen += fetched
                                .records()
                                .map(|r| r.unwrap().value.len() as u64 / 100)
                                .sum::<u64>();
                            next = fetched.next_offset;
                            broker
                                .commit_offset(name, PartitionId(p), next)
                                .await
                                .unwrap();
                        }
                    }
                    assert_eq!(seen, MESSAGES);
                });
            }
            start.elapsed()
        })
    });

    for (label, ack_each) in [
        ("queue_ack_batched_per_delivery", false),
        ("queue_ack_one_call_per_message", true),
    ] {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let config = GroupConfig {
                    max_in_flight: DELIVER_BATCH as u32,
                    ..GroupConfig::default()
                };
                let members: Vec<(String, u64)> = (0..iters)
                    .map(|_| {
                        let name = format!("q{}", groups.fetch_add(1, Ordering::Relaxed));
                        let member = broker
                            .join_group(&name, "t", GroupMode::Queue, config)
                            .unwrap();
                        (name, member)
                    })
                    .collect();
                let start = Instant::now();
                for (name, member) in &members {
                    let (name, member) = (name.as_str(), *member);
                    let mut acked = 0u64;
                    rt.block_on(async {
                        loop {
                            let got = broker
                                .deliver(name, member, DELIVER_BATCH, Duration::ZERO)
                                .await
                                .unwrap();
                            if got.is_empty() {
                                break;
                            }
                            if ack_each {
                                for m in &got {
                                    broker
                                        .ack(name, member, &[(m.partition, m.offset)])
                                        .await
                                        .unwrap();
                                }
                            } else {
                                let items: Vec<_> =
                                    got.iter().map(|m| (m.partition, m.offset)).collect();
                                broker.ack(name, member, &items).await.unwrap();
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

/// The same over loopback TCP with the real server and client: what a
/// remote consumer sees.
fn consume_tcp(c: &mut Criterion) {
    use spool::client::{Client, Consumer, ConsumerConfig, QueueConsumer, QueueOptions};
    use spool::server::{CancellationToken, Server, ServerConfig};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_dir, broker) = setup(&rt);
    let shutdown = CancellationToken::new();
    let addr = rt.block_on(async {
        let server = Server::bind(
            "127.0.0.1:0".parse().unwrap(),
            broker.clone(),
            ServerConfig::default(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(shutdown.clone()));
        addr
    });
    let client = rt.block_on(Client::connect(addr)).unwrap();
    let groups = AtomicU64::new(0);
    let mut group = c.benchmark_group("consume_100b_tcp");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(MESSAGES));

    group.bench_function("stream", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    let positions = (0..PARTITIONS).map(|p| (p, 0)).collect();
                    let mut consumer = Consumer::from_positions(
                        client.clone(),
                        "t",
                        positions,
                        ConsumerConfig::default(),
                    );
                    for _ in 0..MESSAGES {
                        consumer.next().await.unwrap().unwrap();
                    }
                }
            });
            start.elapsed()
        })
    });

    group.bench_function("queue_ack_every_message", |b| {
        b.iter_custom(|iters| {
            let options = QueueOptions {
                prefetch: DELIVER_BATCH as u32,
                max_in_flight: 2 * DELIVER_BATCH as u32,
                max_wait: Duration::from_millis(50),
                ..QueueOptions::default()
            };
            let mut consumers = Vec::new();
            rt.block_on(async {
                for _ in 0..iters {
                    let name = format!("tq{}", groups.fetch_add(1, Ordering::Relaxed));
                    consumers.push(
                        QueueConsumer::join(client.clone(), &name, "t", options.clone())
                            .await
                            .unwrap(),
                    );
                }
            });
            let start = Instant::now();
            rt.block_on(async {
                for consumer in &mut consumers {
                    let mut acked = 0u64;
                    let mut in_flight_acks = None;
                    while acked < MESSAGES {
                        let batch = consumer.receive_batch().await.unwrap();
                        // One ack per message, sent together, and pipelined
                        // with the next delivery request.
                        let acks = consumer.send_acks(&batch).await.unwrap();
                        if let Some(previous) = in_flight_acks.replace(acks) {
                            previous.await.unwrap();
                        }
                        acked += batch.len() as u64;
                    }
                    if let Some(last) = in_flight_acks {
                        last.await.unwrap();
                    }
                }
            });
            start.elapsed()
        })
    });
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, consume, consume_tcp);
criterion_main!(benches);
