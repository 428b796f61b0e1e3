//! A cluster of real `spool serve` processes on loopback ports: topics are
//! created through one broker, produced through another and consumed
//! through the third, with each partition's requests routed to its leader;
//! a SIGKILLed control-plane leader is replaced and admin calls work again.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::server::SpoolServer;
use spool::client::{
    Client, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt, TopicOptions,
};
use spool::protocol::requests::{MetadataRequest, MetadataResponse};

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

struct Cluster {
    brokers: Vec<SpoolServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let clients: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peer_list = peers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..n as usize)
            .map(|i| {
                let data = dir.path().join(format!("broker-{}", i + 1));
                std::fs::create_dir_all(&data).expect("mkdir");
                let (client, peer, id) = (
                    clients[i].to_string(),
                    peers[i].to_string(),
                    (i + 1).to_string(),
                );
                SpoolServer::start_with(
                    &data,
                    &[
                        "--listen",
                        &client,
                        "--node-id",
                        &id,
                        "--peer-listen",
                        &peer,
                        "--peers",
                        &peer_list,
                        "--default-segment-bytes",
                        "4194304",
                    ],
                )
            })
            .collect();
        Cluster { brokers, _dir: dir }
    }
}

async fn metadata(client: &Client) -> Result<MetadataResponse, ClientError> {
    client.call(&MetadataRequest).await
}

/// Retries `what` until it succeeds or `within` passes.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_create_produce_and_consume_through_different_brokers() {
    let cluster = Cluster::start(3);
    let via = |i: usize| cluster.brokers[i].addr;
    let admin = Client::connect(via(0)).await.expect("connect 1");
    // The cluster is ready once every broker has joined (by heartbeat).
    eventually(Duration::from_secs(20), "three live brokers", || async {
        let m = metadata(&admin).await.map_err(|e| e.to_string())?;
        let alive = m.brokers.iter().filter(|b| b.alive).count();
        (alive == 3).then_some(()).ok_or(format!("{alive} alive"))
    })
    .await;
    admin
        .create_topic("orders", 12, TopicOptions::default())
        .await
        .expect("create through broker 1");
    // Refused the second time, through another broker (forwarded).
    let second = Client::connect(via(1)).await.expect("connect 2");
    let again = second
        .create_topic("orders", 12, TopicOptions::default())
        .await
        .expect_err("created twice");
    assert_eq!(again.code(), Some(spool::protocol::ErrorCode::TopicExists));

    // Every partition has a leader, and the leaders are spread.
    let m = metadata(&second).await.expect("metadata");
    let topic = m
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    let mut led: HashMap<u64, usize> = HashMap::new();
    for p in &topic.partitions {
        *led.entry(p.leader.expect("a leader")).or_default() += 1;
    }
    assert_eq!(
        led.len(),
        3,
        "12 partitions on fewer than 3 brokers: {led:?}"
    );

    // Ready to write once every broker holds its own lease: a write to
    // every partition of a probe topic succeeds (12 partitions: all three
    // brokers lead some).
    admin
        .create_topic("probe", 12, TopicOptions::default())
        .await
        .expect("probe topic");
    for p in 0..12u32 {
        eventually(
            Duration::from_secs(10),
            "a write to every partition",
            || async {
                let mut b = spool::protocol::BatchBuilder::new();
                b.push(0, None, b"probe", &[]).map_err(|e| e.to_string())?;
                let batch = b.finish().map_err(|e| e.to_string())?;
                second
                    .produce_batch("probe", p, batch)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }

    // Produce through broker 2.
    for i in 0..3 {
        let c = Client::connect(via(i)).await.expect("connect");
        eventually(
            Duration::from_secs(10),
            "topic known everywhere",
            || async {
                c.describe_topic("orders")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }
    let producer = Producer::new(second.clone(), ProducerConfig::default());
    const N: u64 = 100_000;
    let mut acks = Vec::with_capacity(N as usize);
    for i in 0..N {
        let key = format!("key-{}", i % 1000);
        let delivery = producer
            .send("orders", Some(key.as_bytes()), i.to_be_bytes())
            .await
            .expect("send");
        acks.push(delivery);
    }
    producer.flush().await.expect("flush");
    for ack in acks {
        ack.await.expect("acknowledged");
    }

    // Consume through broker 3: every message once, in order per key.
    let third = Client::connect(via(2)).await.expect("connect 3");
    let mut consumer = Consumer::new(
        third,
        "orders",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .expect("consumer");
    let mut last_per_key: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut where_: HashMap<Vec<u8>, (u32, u64)> = HashMap::new();
    let mut seen = 0u64;
    while seen < N {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("consumer stalled")
            .expect("consumer ended")
            .expect("message");
        let value = u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes"));
        let key = m.key.expect("key").to_vec();
        let prev_at = where_.insert(key.clone(), (m.partition, m.offset));
        if let Some(prev) = last_per_key.insert(key, value) {
            assert!(
                prev < value,
                "out of order: {prev} at {prev_at:?} then {value} at {:?}",
                (m.partition, m.offset)
            );
        }
        seen += 1;
    }
    assert_eq!(last_per_key.len(), 1000);
    // Nothing more (no duplicates) arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "more than {N} messages"
    );
}
