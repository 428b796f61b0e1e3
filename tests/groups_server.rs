//! Consumer groups through the real `spool` binary and the real client.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::SpoolServer;
use spool::client::{
    Client, Consumer, ConsumerConfig, GroupConsumer, Producer, ProducerConfig, QueueConsumer,
    QueueOptions, Settled, StartAt, TopicOptions,
};
use spool::protocol::requests::DescribeGroupRequest;

async fn produce(client: &Client, topic: &str, n: u32) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(
            producer
                .send(topic, Some(format!("k{i}").as_bytes()), format!("m{i}"))
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    for a in acks {
        a.await.unwrap();
    }
}

async fn group_lag(client: &Client, group: &str) -> (u64, u32) {
    let g = client
        .call(&DescribeGroupRequest {
            group: group.into(),
        })
        .await
        .expect("describe group");
    (
        g.partitions.iter().map(|p| p.end - p.position).sum(),
        g.partitions.iter().map(|p| p.in_flight).sum(),
    )
}

#[derive(Default)]
struct Ledger {
    /// Acks that came back `Ok`, per message.
    ok: HashMap<(u32, u64), u32>,
    /// Acks whose answer was lost (connection broke): applied or not.
    uncertain: HashSet<(u32, u64)>,
}

/// Several consumers on their own connections; some "crash" (drop their
/// connection with messages in flight), the broker is SIGKILLed and
/// restarted on the same port in the middle. Every message ends up acked,
/// no message is acked successfully twice, and nothing is left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_acked_exactly_once_through_crashes() {
    const MESSAGES: u32 = 3000;
    let mut server = SpoolServer::temporary();
    let addr = server.addr;
    let admin = Client::connect(addr).await.unwrap();
    admin
        .create_topic("work", 3, TopicOptions::default())
        .await
        .unwrap();
    produce(&admin, "work", MESSAGES).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let ledger = ledger.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let options = QueueOptions {
                ack_wait: Duration::from_secs(3),
                prefetch: 20,
                max_wait: Duration::from_millis(200),
                ..QueueOptions::default()
            };
            let mut handled = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(client) = Client::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(mut consumer) =
                    QueueConsumer::join(client, "workers", "work", options.clone()).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let message = match consumer.receive_timeout(Duration::from_millis(200)).await {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        Err(_) => break, // reconnect
                    };
                    handled += 1;
                    // Workers 0 and 1 crash every 150 messages, holding
                    // whatever they prefetched.
                    if w < 2 && handled % 150 == 0 {
                        break;
                    }
                    let key = (message.partition, message.offset);
                    match consumer.ack(&message).await {
                        Ok(Settled::Ok) => *ledger.lock().unwrap().ok.entry(key).or_insert(0) += 1,
                        Ok(_) => {}
                        Err(_) => {
                            ledger.lock().unwrap().uncertain.insert(key);
                            break;
                        }
                    }
                }
            }
        }));
    }

    // Kill the broker once a third of the messages are acked.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.lock().unwrap().ok.len() < MESSAGES as usize / 3 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let server = server.restart(&["--listen", &addr.to_string()]);
    assert_eq!(server.addr, addr);

    let admin = Client::connect(addr).await.unwrap();
    loop {
        let (lag, in_flight) = group_lag(&admin, "workers").await;
        if lag == 0 && in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group never caught up: lag {lag}, in flight {in_flight}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    let ends: Vec<u64> = admin
        .describe_topic("work")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.end)
        .collect();
    {
        let ledger = ledger.lock().unwrap();
        let twice: Vec<_> = ledger.ok.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "acked successfully more than once: {twice:?}"
        );
        for (p, end) in ends.iter().enumerate() {
            for o in 0..*end {
                let key = (p as u32, o);
                assert!(
                    ledger.ok.contains_key(&key) || ledger.uncertain.contains(&key),
                    "message {key:?} was never acked"
                );
            }
        }
    }
    let total: u64 = admin
        .describe_topic("work")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.end)
        .sum();
    assert_eq!(total, MESSAGES as u64);
}

/// Never-acked messages reach `<group>.dlq` after `max_deliveries`, with
/// headers saying where from; a nack delay holds a message back; touch keeps
/// one past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_nack_delay_and_touch_over_the_wire() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("t", 1, TopicOptions::default())
        .await;
    produce(&client, "t", 3).await;
    let options = QueueOptions {
        ack_wait: Duration::from_millis(1000),
        max_deliveries: 2,
        prefetch: 3,
        max_wait: Duration::from_millis(100),
        ..QueueOptions::default()
    };
    let mut consumer = QueueConsumer::join(client.clone(), "g", "t", options)
        .await
        .unwrap();
    let mut first = Vec::new();
    while first.len() < 3 {
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(100))
            .await
            .unwrap()
        {
            first.push(m);
        }
    }
    let started = Instant::now();
    assert_eq!(
        consumer
            .nack(&first[0], Duration::from_millis(1600))
            .await
            .unwrap(),
        Settled::Ok
    );
    // Keep message 1 alive past its deadline; let message 2's pass.
    let mut redelivered = Vec::new();
    while started.elapsed() < Duration::from_millis(1400) {
        assert_eq!(consumer.touch(&first[1]).await.unwrap(), Settled::Ok);
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(100))
            .await
            .unwrap()
        {
            redelivered.push(m);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Only message 2 came back (deadline), with its count up.
    assert_eq!(redelivered.len(), 1, "{redelivered:?}");
    assert_eq!(
        (redelivered[0].offset, redelivered[0].deliveries),
        (first[2].offset, 2)
    );
    // Message 0 comes back only after its nack delay.
    let again = loop {
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(100))
            .await
            .unwrap()
        {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    };
    assert!(started.elapsed() >= Duration::from_millis(1600));
    assert_eq!((again.offset, again.deliveries), (first[0].offset, 2));
    assert_eq!(consumer.ack(&first[1]).await.unwrap(), Settled::Ok);

    // Messages 0 and 2 have used their two deliveries: past the deadline
    // they are dead-lettered, not delivered.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(consumer
        .receive_timeout(Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    let mut dlq = Consumer::new(
        client.clone(),
        "g.dlq",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .unwrap();
    let mut dead = Vec::new();
    while dead.len() < 2 {
        dead.push(
            dlq.next_within(Duration::from_secs(5))
                .await
                .expect("dead letters")
                .unwrap(),
        );
    }
    let header = |m: &spool::client::ConsumedMessage, name: &str| {
        m.headers
            .iter()
            .find(|(n, _)| n.as_ref() == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let mut offsets: Vec<u64> = dead
        .iter()
        .map(|m| header(m, "spool.dlq.offset").unwrap().parse().unwrap())
        .collect();
    offsets.sort();
    assert_eq!(offsets, [first[0].offset, first[2].offset]);
    for m in &dead {
        assert_eq!(header(m, "spool.dlq.topic").as_deref(), Some("t"));
        assert_eq!(header(m, "spool.dlq.group").as_deref(), Some("g"));
        assert_eq!(header(m, "spool.dlq.partition").as_deref(), Some("0"));
        assert_eq!(header(m, "spool.dlq.deliveries").as_deref(), Some("2"));
        assert_eq!(
            header(m, "spool.dlq.reason").as_deref(),
            Some("max_deliveries_exceeded")
        );
    }
    let metrics = server.http_get("/metrics");
    assert!(
        metrics.contains("spool_group_events_total{event=\"dead_letters\",group=\"g\"} 2"),
        "{metrics}"
    );
}

/// Stream groups: two members split the partitions; a member that leaves
/// hands its partitions over; committed offsets are where the others resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_group_members_share_partitions_and_resume_from_commits() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("s", 4, TopicOptions::default())
        .await;
    produce(&client, "s", 400).await;

    let c1 = server.client().await;
    let mut a = GroupConsumer::join(
        c1,
        "readers",
        "s",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .unwrap();
    let c2 = server.client().await;
    let mut b = GroupConsumer::join(
        c2,
        "readers",
        "s",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .unwrap();
    // Let `a` notice the rebalance caused by `b` (reading one message on
    // the way, which counts).
    let mut seen = HashSet::new();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    if let Some(m) = a.next_within(Duration::from_millis(10)).await {
        let m = m.unwrap();
        seen.insert((m.partition, m.offset));
        a.commit(&m).await.unwrap();
    }
    let (pa, pb): (HashSet<u32>, HashSet<u32>) = (
        a.partitions().iter().copied().collect(),
        b.partitions().iter().copied().collect(),
    );
    assert_eq!(pa.len() + pb.len(), 4);
    assert!(pa.is_disjoint(&pb));

    // `b` consumes and commits some of what it owns, then leaves.
    let mut b_done = 0;
    while b_done < 50 {
        let m = b
            .next_within(Duration::from_secs(5))
            .await
            .expect("b starved")
            .unwrap();
        assert!(pb.contains(&m.partition));
        b.commit(&m).await.unwrap();
        seen.insert((m.partition, m.offset));
        b_done += 1;
    }
    drop(b);
    // `a` takes over everything and reads the rest: nothing b committed, all the others.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "a read only {} of 400",
            seen.len()
        );
        if let Some(m) = a.next_within(Duration::from_millis(500)).await {
            let m = m.unwrap();
            assert!(
                seen.insert((m.partition, m.offset)),
                "{:?} read again after it was committed",
                (m.partition, m.offset)
            );
            a.commit(&m).await.unwrap();
        }
    }
    assert_eq!(a.partitions().len(), 4);
    let (lag, _) = group_lag(&client, "readers").await;
    assert_eq!(lag, 0);
}
