//! The real `spool` binary driven over TCP by the real client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::server::SpoolServer;
use spool::client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt, TopicOptions, WireSync,
};
use spool::protocol::requests::{FetchRequest, ProduceRequest};
use spool::protocol::BatchBuilder;

fn options(sync: WireSync) -> TopicOptions {
    TopicOptions {
        sync: Some(sync),
        ..TopicOptions::default()
    }
}

/// Reads `expected` messages from the start of `topic`.
async fn consume_all(
    client: &Client,
    topic: &str,
    expected: usize,
) -> Vec<spool::client::ConsumedMessage> {
    let mut consumer = Consumer::new(
        client.clone(),
        topic,
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .unwrap();
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
        let message = next
            .expect("consumer stalled")
            .expect("consumer ended")
            .unwrap();
        out.push(message);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_across_partitions_in_order() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("orders", 4, options(WireSync::Interval(50)))
        .await;

    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..20_000u32 {
        let key = format!("k{}", i % 100);
        let value = format!("{key}:{i}");
        deliveries.push(
            producer
                .send("orders", Some(key.as_bytes()), value)
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let mut per_partition: HashMap<u32, Vec<u64>> = HashMap::new();
    for d in deliveries {
        let d = d.await.unwrap();
        per_partition.entry(d.partition).or_default().push(d.offset);
    }
    assert!(
        per_partition.len() > 1,
        "keys should spread over partitions"
    );
    for offsets in per_partition.values() {
        // Each partition's deliveries are 0..n, each exactly once.
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(sorted, (0..offsets.len() as u64).collect::<Vec<_>>());
    }

    let messages = consume_all(&client, "orders", 20_000).await;
    let mut last_seq: HashMap<String, u32> = HashMap::new();
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    for m in &messages {
        let text = std::str::from_utf8(&m.value).unwrap();
        let (key, seq) = text.split_once(':').unwrap();
        let seq: u32 = seq.parse().unwrap();
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
        // Per key (hence per partition) order is the produce order.
        if let Some(prev) = last_seq.insert(key.to_string(), seq) {
            assert!(prev < seq, "key {key}: {seq} after {prev}");
        }
        if let Some(prev) = last_offset.insert(m.partition, m.offset) {
            assert_eq!(
                m.offset,
                prev + 1,
                "partition {} skipped or repeated",
                m.partition
            );
        }
    }
    assert_eq!(last_seq.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_name_where_each_message_landed_and_dropping_the_producer_sends_what_is_open() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("acc", 3, options(WireSync::Interval(50)))
        .await;
    // Small batches so that some fill and leave while others stay open, a
    // linger nothing will wait out, and a queue small enough that `send`
    // waits for space.
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 4096,
            linger: Duration::from_secs(600),
            buffer_bytes: 2048,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..3_000u32 {
        let value = format!("v{i}");
        let key = format!("k{}", i % 7);
        let key = (i % 3 != 0).then_some(key.as_bytes());
        deliveries.push((
            value.clone(),
            producer.send("acc", key, value).await.unwrap(),
        ));
        if i == 1_000 {
            // Too large for any batch: refused at once, and its queue slot
            // is given back (or the sends after it would stall).
            let huge = vec![0u8; spool::protocol::batch::MAX_BATCH_LEN];
            let refused = producer.send("acc", None, &huge).await;
            assert!(
                matches!(refused, Err(spool::client::ClientError::Invalid(_))),
                "{:?}",
                refused.err()
            );
        }
    }
    let unknown = producer.send("no-such-topic", None, "x").await;
    assert!(unknown.is_err(), "a send to a missing topic must fail");
    // No flush: dropping the last handle sends the open batches.
    drop(producer);
    let mut landed = HashMap::new();
    for (value, delivery) in deliveries {
        let d = tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .expect("delivery never resolved")
            .unwrap();
        assert!(
            landed.insert((d.partition, d.offset), value).is_none(),
            "two messages delivered to one offset"
        );
    }
    for m in consume_all(&client, "acc", 3_000).await {
        assert_eq!(
            landed.get(&(m.partition, m.offset)).map(|v| v.as_bytes()),
            Some(&m.value[..]),
            "the delivery of the message at {}/{} named another place",
            m.partition,
            m.offset
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_requests_are_applied_in_order() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("pipe", 1, options(WireSync::Always))
        .await;
    let conn = client.connection().await.unwrap();
    // 5,000 produce requests on the wire before the first answer is awaited.
    let mut calls = Vec::new();
    for i in 0..5_000u32 {
        let mut b = BatchBuilder::new();
        b.push(0, None, format!("{i}").as_bytes(), &[]).unwrap();
        let request = ProduceRequest {
            topic: "pipe".into(),
            partition: 0,
            acks: Default::default(),
            batch: b.finish().unwrap(),
        };
        calls.push(conn.start(&request).await.unwrap());
    }
    for (i, call) in calls.into_iter().enumerate() {
        // Offsets follow the order the requests were sent in.
        assert_eq!(call.await.unwrap().base_offset, i as u64);
    }
    let messages = consume_all(&client, "pipe", 5_000).await;
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.value, format!("{i}").as_bytes());
    }
}

/// A connection's produces are not paced by the timer: the quota check
/// once waited out a zero-length sleep after each produce, one timer tick
/// (about 1 ms), which capped every connection at ~1,000 produce requests
/// a second (2,000 took 2.2 s; 0.03 s without the wait) and put tens of
/// milliseconds on acknowledgements at modest rates of small batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_produces_on_one_connection_are_not_paced_by_the_timer() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("small", 1, options(WireSync::Interval(100)))
        .await;
    let conn = client.connection().await.unwrap();
    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    for i in 0..2_000u32 {
        let mut b = BatchBuilder::new();
        b.push(0, None, format!("{i}").as_bytes(), &[]).unwrap();
        let request = ProduceRequest {
            topic: "small".into(),
            partition: 0,
            acks: Default::default(),
            batch: b.finish().unwrap(),
        };
        calls.push(conn.start(&request).await.unwrap());
    }
    for call in calls {
        call.await.unwrap();
    }
    let took = started.elapsed();
    eprintln!("2,000 pipelined produces answered in {took:?}");
    assert!(
        took < Duration::from_millis(1_000),
        "2,000 pipelined produces took {took:?}: about a timer tick each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_produce_and_consume_loses_nothing() {
    let mut server = SpoolServer::temporary();
    {
        let client = server
            .client_with_topic("keep", 3, options(WireSync::Interval(1000)))
            .await;
        let producer = Producer::new(client, ProducerConfig::default());
        let mut deliveries = Vec::new();
        for i in 0..5_000u32 {
            deliveries.push(producer.send("keep", None, format!("m{i}")).await.unwrap());
        }
        producer.flush().await.unwrap();
        for d in deliveries {
            d.await.unwrap();
        }
    }
    server.terminate();
    let server = server.restart(&[]);
    let client = server.client().await;
    let messages = consume_all(&client, "keep", 5_000).await;
    let mut values: Vec<_> = messages
        .iter()
        .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
        .collect();
    values.sort();
    let mut expected: Vec<_> = (0..5_000).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut server = SpoolServer::temporary();
    let client = server
        .client_with_topic("load", 2, options(WireSync::Never))
        .await;
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    // Producers run flat out; every acknowledged delivery is recorded.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let producer = producer.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let value = format!("{t}-{i}");
                let Ok(delivery) = producer.send("load", None, value.as_bytes()).await else {
                    return;
                };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if let Ok(d) = delivery.await {
                        acked.lock().unwrap().push((d.partition, d.offset, value));
                    }
                });
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "only {} acks before the kill",
        acked.len()
    );

    let server = server.restart(&[]);
    let client = server.client().await;
    let topic = client.describe_topic("load").await.unwrap();
    let total: u64 = topic.partitions.iter().map(|p| p.end).sum();
    let messages = consume_all(&client, "load", total as usize).await;
    let stored: HashMap<(u32, u64), Bytes> = messages
        .into_iter()
        .map(|m| ((m.partition, m.offset), m.value))
        .collect();
    for (partition, offset, value) in &acked {
        let got = stored
            .get(&(*partition, *offset))
            .unwrap_or_else(|| panic!("acked {partition}/{offset} lost"));
        assert_eq!(
            got,
            value.as_bytes(),
            "acked {partition}/{offset} holds the wrong message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_traffic() {
    let server = SpoolServer::temporary();
    assert!(server.http_get("/health").contains("ok"));
    // A fresh broker (no topics, no groups) still renders its metrics.
    let empty = server.http_get("/metrics");
    assert!(
        empty.starts_with("HTTP/1.0 200") || empty.starts_with("HTTP/1.1 200"),
        "{empty}"
    );
    assert!(empty.contains("spool_connections"), "{empty}");
    let client = server
        .client_with_topic("m", 1, TopicOptions::default())
        .await;
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = server.http_get("/metrics");
    let mut b = BatchBuilder::new();
    for i in 0..10 {
        b.push(0, None, format!("v{i}").as_bytes(), &[]).unwrap();
    }
    client
        .produce_batch("m", 0, b.finish().unwrap())
        .await
        .unwrap();
    consume_all(&client, "m", 10).await;
    let after = server.http_get("/metrics");
    assert_eq!(
        value(&after, "spool_messages_in_total{topic=\"m\"}")
            - value(&before, "spool_messages_in_total{topic=\"m\"}"),
        10.0
    );
    assert!(value(&after, "spool_messages_out_total{topic=\"m\"}") >= 10.0);
    assert_eq!(
        value(
            &after,
            "spool_partition_end_offset{partition=\"0\",topic=\"m\"}"
        ),
        10.0
    );
    assert!(
        value(
            &after,
            "spool_request_duration_seconds_count{kind=\"produce\"}"
        ) >= 1.0
    );
    assert!(value(&after, "spool_connections") >= 1.0);
    assert!(after.contains("spool_flush_duration_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_requests_then_exits_cleanly() {
    let mut server = SpoolServer::temporary();
    let client = server
        .client_with_topic("t", 1, options(WireSync::Interval(60_000)))
        .await;
    let mut b = BatchBuilder::new();
    b.push(0, None, b"before shutdown", &[]).unwrap();
    client
        .produce_batch("t", 0, b.finish().unwrap())
        .await
        .unwrap();
    // A long poll at the end of the log is in flight when SIGTERM arrives.
    let conn = client.connection().await.unwrap();
    let poll = conn
        .start(&FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            max_bytes: 1024,
            max_wait_ms: 25_000,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    server.terminate(); // asserts a successful exit
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the long poll"
    );
    match poll.await {
        Ok(fetched) => assert!(fetched.batches.is_empty()),
        Err(err) => panic!("the in-flight fetch was not answered: {err}"),
    }
    // Closed cleanly: the data (written with a 60 s sync interval) was flushed
    // and the next start trusts the shutdown marker.
    assert!(server.dir.join("clean-shutdown").exists());
    let server = server.restart(&[]);
    let client = server.client().await;
    assert_eq!(
        consume_all(&client, "t", 1).await[0].value,
        "before shutdown".as_bytes()
    );
}

/// A server that stops answering (paused here, as a partitioned or hung
/// one would be) costs a request its timeout, not forever; the connection
/// is given up and the next call makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_server_that_never_answers_times_out() {
    let server = SpoolServer::temporary();
    let options = spool::client::ConnectOptions {
        request_timeout: Duration::from_millis(500),
        connect_attempts: 1,
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let client = Client::connect_with(server.addr, options)
        .await
        .expect("connect");
    client.list_topics().await.expect("answered while running");
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).expect("pid");
    common::server::pause(server.pid());
    let asked = std::time::Instant::now();
    let err = client
        .list_topics()
        .await
        .expect_err("a paused server answered");
    let waited = asked.elapsed();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    assert!(err.is_retriable(), "{err}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "gave up after {waited:?}"
    );
    // Running again: the next call reconnects and is answered.
    client.list_topics().await.expect("answered after SIGCONT");
}

/// The producer holds at most `buffer_bytes` of messages between `send`
/// and their acknowledgement: against a broker that stopped answering
/// (SIGSTOP), `send` takes messages until the buffer is full and then
/// waits, instead of queueing without bound; once the broker runs again
/// every message taken is stored.
#[tokio::test]
async fn a_producer_buffers_at_most_buffer_bytes_then_send_waits() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("buf", 1, options(WireSync::Interval(50)))
        .await;
    const BUFFER: usize = 64 * 1024;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 8 * 1024,
            buffer_bytes: BUFFER,
            ..ProducerConfig::default()
        },
    );
    // The first send learns the topic while the broker still answers.
    producer
        .send("buf", None, b"first")
        .await
        .unwrap()
        .await
        .unwrap();
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    common::server::pause(server.pid());
    let value = vec![7u8; 1000];
    let record = BatchBuilder::encoded_record_len(0, 0, None, &value, &[]);
    let mut deliveries = Vec::new();
    let blocked = loop {
        match tokio::time::timeout(Duration::from_secs(1), producer.send("buf", None, &value)).await
        {
            Ok(sent) => deliveries.push(sent.unwrap()),
            Err(_) => break deliveries.len(),
        }
        assert!(deliveries.len() < 10 * BUFFER / record, "send never waited");
    };
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    eprintln!("{blocked} messages of {record} bytes taken with a {BUFFER}-byte buffer");
    assert!(blocked * record <= BUFFER, "{blocked} messages held");
    assert!(
        (blocked + 1) * record > BUFFER,
        "send waited with room left"
    );
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    producer.flush().await.unwrap();
    assert_eq!(
        consume_all(&client, "buf", blocked + 1).await.len(),
        blocked + 1
    );
}
