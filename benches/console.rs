//! How long the web console takes to render its pages for a broker with
//! 1,000 partitions (10 topics of 100, each with a few messages) and 20
//! consumer groups: the target is under 50 ms a page.
//!
//! Run: `cargo bench --bench console`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use spool::broker::{GroupConfig, GroupMode};
use spool::server::console::Console;
use spool::{BatchBuilder, Broker, BrokerConfig, PartitionId, SyncPolicy, TopicConfig};

const TOPICS: u32 = 10;
const PARTITIONS: u32 = 100;

fn pages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    rt.block_on(async {
        for t in 0..TOPICS {
            let name = format!("topic-{t}");
            broker
                .create_topic(
                    &name,
                    TopicConfig::new(PARTITIONS)
                        .sync(SyncPolicy::Never)
                        .segment_size_bytes(64 * 1024),
                )
                .unwrap();
            for p in 0..PARTITIONS {
                let mut b = BatchBuilder::new();
                for i in 0..20 {
                    b.push(0, Some(b"key"), format!("message {i}").as_bytes(), &[])
                        .unwrap();
                }
                broker
                    .append(&name, PartitionId(p), &b.finish().unwrap())
                    .await
                    .unwrap();
            }
        }
    });
    for g in 0..20 {
        let mode = if g % 2 == 0 {
            GroupMode::Queue
        } else {
            GroupMode::Stream
        };
        broker
            .join_group(
                &format!("group-{g}"),
                &format!("topic-{}", g % TOPICS),
                mode,
                GroupConfig::default(),
            )
            .unwrap();
    }
    let console = Console {
        broker: broker.clone(),
        cluster: None,
        started: std::time::Instant::now(),
        auth: None,
        admin: None,
    };
    let mut group = c.benchmark_group("console_1000_partitions");
    group.measurement_time(Duration::from_secs(5));
    for path in [
        "/",
        "/topics",
        "/topics/topic-3",
        "/topics/topic-3/messages",
        "/groups",
        "/groups/group-4",
        "/locks",
    ] {
        group.bench_function(path, |b| {
            b.iter(|| {
                let page = console
                    .page(path, Some("partition=7&offset=0"), None)
                    .unwrap();
                assert_eq!(page.status, 200);
                page.body.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
