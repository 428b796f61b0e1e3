//! Dead-letter replay through the real binary: messages a queue group gave
//! up on are listed by `spool dlq list`, produced again by `spool dlq
//! replay` (in part, then the rest, then to another topic), delivered
//! again to the group with their provenance and a replay count, and acked.

mod common;

use std::time::{Duration, Instant};

use common::cli::{spool, stderr, stdout};
use common::server::SpoolServer;
use spool::client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, QueueConsumer, QueueOptions,
    QueuedMessage, Settled, StartAt, TopicOptions,
};

fn header<'a>(headers: &'a [(bytes::Bytes, bytes::Bytes)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.as_ref() == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Receives until `n` messages came or 10 s passed.
async fn receive(consumer: &mut QueueConsumer, n: usize) -> Vec<QueuedMessage> {
    receive_within(consumer, n, Duration::from_secs(10)).await
}

/// Nothing is delivered within 1.5 s.
async fn nothing_more(consumer: &mut QueueConsumer) -> bool {
    receive_within(consumer, 1, Duration::from_millis(1500))
        .await
        .is_empty()
}

async fn receive_within(
    consumer: &mut QueueConsumer,
    n: usize,
    within: Duration,
) -> Vec<QueuedMessage> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(200))
            .await
            .expect("receive")
        {
            got.push(m);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replayed_through_the_cli_are_delivered_again_and_acked() {
    let server = SpoolServer::temporary();
    let client: Client = server
        .client_with_topic("orders", 2, TopicOptions::default())
        .await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..6 {
        let key = format!("k{i}");
        let value = format!("order {i}");
        acks.push(
            producer
                .send("orders", Some(key.as_bytes()), value.as_bytes())
                .await
                .expect("send"),
        );
    }
    for a in acks {
        a.await.expect("stored");
    }
    let options = QueueOptions {
        ack_wait: Duration::from_millis(500),
        max_deliveries: 1,
        max_wait: Duration::from_millis(100),
        ..QueueOptions::default()
    };
    let mut consumer = QueueConsumer::join(client.clone(), "billing", "orders", options)
        .await
        .expect("join");
    // Every message's one delivery is used up unacked: they go to
    // billing.dlq.
    let first = receive(&mut consumer, 6).await;
    assert_eq!(first.len(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(nothing_more(&mut consumer).await, "redelivered");

    let addr = server.addr.to_string();
    let list = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "billing", "--json", "--addr", &addr];
        args.extend(extra);
        let out = spool(&args, None);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&out)).expect("JSON")
    };
    let letters = list(&[]);
    assert_eq!(letters.len(), 6, "{letters:?}");
    for l in &letters {
        assert_eq!(l["topic"], "orders");
        assert_eq!(l["reason"], "max_deliveries_exceeded");
        assert_eq!(l["deliveries"], 1);
        assert_eq!(l["replays"], 0);
        assert!(l["value"].as_str().is_some_and(|v| v.starts_with("order ")));
    }

    // Four back, then the rest: each is delivered again, with where it
    // came from and its replay count, and can be acked.
    let replay = |extra: &[&str]| {
        let mut args = vec!["dlq", "replay", "billing", "--addr", &addr];
        args.extend(extra);
        let out = spool(&args, None);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert!(replay(&["--count", "4"]).contains("replayed 4 dead letters"));
    assert_eq!(list(&[]).len(), 2);
    let again = receive(&mut consumer, 4).await;
    assert_eq!(again.len(), 4);
    for m in &again {
        assert_eq!(header(&m.headers, "spool.dlq.replays"), Some("1"));
        assert_eq!(header(&m.headers, "spool.dlq.topic"), Some("orders"));
        let original: u64 = header(&m.headers, "spool.dlq.offset")
            .and_then(|o| o.parse().ok())
            .expect("provenance");
        let before = first
            .iter()
            .find(|f| f.partition == m.partition && f.offset == original)
            .expect("the original, in the same partition");
        assert_eq!((&before.key, &before.value), (&m.key, &m.value));
        assert!(m.offset > original, "appended anew");
        assert_eq!(consumer.ack(m).await.expect("ack"), Settled::Ok);
    }
    assert!(replay(&[]).contains("replayed 2 dead letters"));
    let rest = receive(&mut consumer, 2).await;
    assert_eq!(rest.len(), 2);
    for m in &rest {
        assert_eq!(consumer.ack(m).await.expect("ack"), Settled::Ok);
    }
    assert!(list(&[]).is_empty());
    assert!(replay(&[]).contains("replayed 0 dead letters"));

    // New dead letters can go to another topic instead.
    let late = producer
        .send("orders", Some(b"k9"), b"order 9")
        .await
        .expect("send");
    late.await.expect("stored");
    assert_eq!(receive(&mut consumer, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(nothing_more(&mut consumer).await, "redelivered");
    client
        .create_topic("orders.retry", 1, TopicOptions::default())
        .await
        .expect("retry topic");
    let out = replay(&["--to", "orders.retry"]);
    assert!(
        out.contains("replayed 1 dead letters") && out.contains("1 to orders.retry"),
        "{out}"
    );
    let mut retry = Consumer::new(
        client.clone(),
        "orders.retry",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .expect("consumer");
    let m = retry
        .next_within(Duration::from_secs(5))
        .await
        .expect("replayed to orders.retry")
        .expect("read");
    assert_eq!(m.value.as_ref(), b"order 9");
    assert_eq!(header(&m.headers, "spool.dlq.topic"), Some("orders"));
    assert_eq!(header(&m.headers, "spool.dlq.replays"), Some("1"));
    assert!(list(&[]).is_empty());
    assert!(
        receive(&mut consumer, 1).await.is_empty(),
        "the original topic got it too"
    );

    // A group that never dead-lettered anything has no dead-letter topic.
    let out = spool(&["dlq", "replay", "nobody", "--addr", &addr], None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nobody.dlq"), "{}", stderr(&out));
}
