//! A produce whose answer is lost (the broker stored the batch, then the
//! connection dropped before the client heard) is retried by the client.
//! Through a proxy that drops the connection carrying the next answer, in
//! front of a real `spool serve`: an idempotent producer's retries are
//! stored once and in order; a non-idempotent producer's are stored twice
//! (the defect idempotence fixes, reproduced deterministically).

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::server::SpoolServer;
use spool::client::{Client, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt};

const ROUNDS: u64 = 10;
const PER_ROUND: u64 = 400;

/// Produces `ROUNDS * PER_ROUND` numbered messages through a proxy that
/// loses one answer per round, with many small batches in flight; returns
/// the numbers stored, in partition order.
async fn produce_losing_answers(idempotent: bool, sync: &str) -> Vec<u64> {
    let server = SpoolServer::temporary_with(&["--default-sync", sync]);
    let admin = server.client().await;
    admin
        .create_topic("t", 1, Default::default())
        .await
        .expect("create");
    let proxy = Proxy::start(server.addr);
    let client = Client::connect(proxy.addr).await.expect("connect");
    let producer = Producer::new(
        client,
        ProducerConfig {
            idempotent,
            batch_bytes: 512,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            if i == PER_ROUND / 2 {
                proxy.lose_next_reply();
            }
            let n = round * PER_ROUND + i;
            deliveries.push(
                producer
                    .send("t", None, n.to_be_bytes())
                    .await
                    .expect("send"),
            );
        }
        producer.flush().await.expect("flush");
    }
    for (n, delivery) in deliveries.into_iter().enumerate() {
        if let Err(e) = delivery.await {
            panic!("message {n} failed: {e}");
        }
    }
    // Read everything back straight from the server.
    let end = admin
        .describe_topic("t")
        .await
        .expect("describe")
        .partitions[0]
        .end;
    let mut consumer = Consumer::new(admin, "t", StartAt::Earliest, ConsumerConfig::default())
        .await
        .expect("consumer");
    let mut stored = Vec::new();
    while (stored.len() as u64) < end {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a message within 10 s")
            .expect("consumer ended")
            .expect("message");
        stored.push(u64::from_be_bytes(
            message.value[..8].try_into().expect("8 bytes"),
        ));
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producers_retries_are_stored_once_and_in_order() {
    for sync in ["never", "always"] {
        let stored = produce_losing_answers(true, sync).await;
        let expected: Vec<u64> = (0..ROUNDS * PER_ROUND).collect();
        assert_eq!(
            stored.len(),
            expected.len(),
            "sync {sync}: {} stored for {} sent",
            stored.len(),
            expected.len()
        );
        assert_eq!(stored, expected, "sync {sync}: stored out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_a_retry_after_a_lost_answer_is_stored_twice() {
    let stored = produce_losing_answers(false, "never").await;
    let sent = ROUNDS * PER_ROUND;
    let mut unique = stored.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len() as u64, sent, "a message was lost");
    let duplicates = stored.len() as u64 - sent;
    eprintln!("{duplicates} messages stored twice in {ROUNDS} lost answers");
    assert!(
        duplicates > 0,
        "no duplicate without idempotence: the proxy lost no answer after a store"
    );
}
