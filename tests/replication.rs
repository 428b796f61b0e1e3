//! Replicated partitions on real `spool serve` processes: followers copy
//! their leader byte for byte, `acks=all` waits for them, a dead leader's
//! partitions move to an in-sync follower with a new leader epoch, and a
//! returning replica cuts its log where its history left the leader's.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{eventually, metadata, Cluster};
use common::ReadRecord;
use spool::client::{Client, Producer, ProducerConfig, TopicOptions};
use spool::protocol::requests::{MetadataResponse, WirePartitionLeader};
use spool::{Broker, BrokerConfig};

/// One cluster at a time: two cores run every broker and client.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn replicated(n: u32) -> TopicOptions {
    TopicOptions {
        replication: Some(n),
        ..TopicOptions::default()
    }
}

fn partition<'a>(m: &'a MetadataResponse, topic: &str, p: u32) -> &'a WirePartitionLeader {
    m.topics
        .iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.partitions.iter().find(|x| x.partition == p))
        .unwrap_or_else(|| panic!("no {topic}/{p} in metadata"))
}

/// Waits until every partition of `topic` has a leader and all
/// `replicas` replicas in sync, with no lag the leader knows of.
async fn fully_replicated(cluster: &Cluster, topic: &str, partitions: u32, replicas: usize) {
    eventually(
        Duration::from_secs(30),
        "every replica in sync",
        || async {
            // Only a partition's leader knows its followers' lag: ask all.
            let mut lagging = Vec::new();
            let mut views = Vec::new();
            for b in &cluster.brokers {
                let Ok(client) = Client::connect(b.addr).await else {
                    continue;
                };
                if let Ok(m) = metadata(&client).await {
                    views.push(m);
                }
            }
            let first = views.first().ok_or("no broker answers")?;
            for p in 0..partitions {
                let wanted = partition(first, topic, p);
                let Some(leader) = wanted.leader else {
                    lagging.push(format!("{p}: no leader"));
                    continue;
                };
                let in_sync = wanted.replicas.iter().filter(|r| r.in_sync).count();
                if in_sync < replicas {
                    lagging.push(format!("{p}: {in_sync} in sync"));
                }
                let Some(at_leader) = views
                    .iter()
                    .map(|m| partition(m, topic, p))
                    .find(|x| x.replicas.iter().any(|r| r.lag.is_some()) && x.leader == Some(leader))
                else {
                    lagging.push(format!("{p}: leader {leader} not heard"));
                    continue;
                };
                if at_leader.replicas.iter().any(|r| r.lag != Some(0)) {
                    lagging.push(format!("{p}: lag {:?}", at_leader.replicas));
                }
            }
            lagging
                .is_empty()
                .then_some(())
                .ok_or_else(|| lagging.join("; "))
        },
    )
    .await;
}

/// Each broker's copy of every partition of `topic`, read from its data
/// directory once the brokers are stopped.
fn copies(cluster: &Cluster, topic: &str, partitions: u32) -> Vec<Vec<Vec<ReadRecord>>> {
    cluster
        .brokers
        .iter()
        .map(|b| {
            let broker = Broker::open(&b.dir, BrokerConfig::default()).expect("open a copy");
            let logs = (0..partitions)
                .map(|p| common::read_all(&broker, topic, p))
                .collect();
            broker.close().expect("close");
            logs
        })
        .collect()
}

/// acks=all with three copies: every acknowledged message is on every
/// replica, the logs are the same record for record at the same offsets,
/// and the partition metadata shows leader, epoch and in-sync replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_holds_every_acknowledged_message_at_the_same_offset() {
    let _serial = SERIAL.lock().await;
    const PARTITIONS: u32 = 3;
    const N: u64 = 3_000;
    let mut cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("r", PARTITIONS, replicated(3))
        .await
        .expect("create");
    let m = metadata(&admin).await.expect("metadata");
    for p in 0..PARTITIONS {
        let x = partition(&m, "r", p);
        assert_eq!(x.replicas.len(), 3, "{x:?}");
        assert!(x.leader_epoch >= 1, "{x:?}");
        assert_eq!(x.leader, Some(x.replicas[0].broker), "{x:?}");
    }
    let producer = Producer::new(cluster.client(1).await, ProducerConfig::default());
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..N {
        let key = format!("k{}", i % 31);
        let send = producer.send("r", Some(key.as_bytes()), i.to_be_bytes());
        pending.push(send.await.expect("send"));
    }
    producer.flush().await.expect("flush");
    let mut acked: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for delivery in pending {
        let stored = delivery.await.expect("acknowledged");
        acked.entry(stored.partition).or_default().push(stored.offset);
    }
    eprintln!("{N} messages acknowledged by 3 replicas in {:?}", started.elapsed());
    fully_replicated(&cluster, "r", PARTITIONS, 3).await;
    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "r", PARTITIONS);
    let total: usize = copies[0].iter().map(Vec::len).sum();
    assert_eq!(total as u64, N, "broker 1 holds {total} of {N} messages");
    for (i, copy) in copies.iter().enumerate().skip(1) {
        for p in 0..PARTITIONS as usize {
            assert_eq!(
                copy[p].len(),
                copies[0][p].len(),
                "broker {} partition {p}",
                i + 1
            );
            assert!(copy[p] == copies[0][p], "broker {} partition {p} differs", i + 1);
        }
    }
    for (p, offsets) in acked {
        for offset in offsets {
            assert!(
                copies[0][p as usize].iter().any(|r| r.offset == offset),
                "acknowledged {p}@{offset} missing"
            );
        }
    }
}
