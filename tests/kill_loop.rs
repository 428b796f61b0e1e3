//! SIGKILL a real `spool serve` again and again while four idempotent
//! producers write to it, restarting it on the same port each time: the
//! producers retry through every kill, and in the end every acknowledged
//! message is stored exactly once, in send order per producer (the history
//! checker of `tests/common/history.rs`).
//!
//! CI runs 50 kills per sync policy. The long run:
//! `SPOOL_KILLS=1000 cargo test --release --test kill_loop -- --nocapture`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::history::{self, Acked, Consumed};
use common::server::SpoolServer;
use spool::client::{
    Client, ConnectOptions, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt,
};

const PRODUCERS: u32 = 4;

/// One kill loop at a time: two would share two cores with eight producers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kills() -> u32 {
    std::env::var("SPOOL_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50)
}

async fn kill_loop(sync: &str) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let flags: Vec<String> = vec![
        "--listen".into(),
        listen,
        "--default-sync".into(),
        sync.into(),
    ];
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = SpoolServer::temporary_with(&args);
    let addr = server.addr;
    server
        .client()
        .await
        .create_topic("k", PRODUCERS, Default::default())
        .await
        .expect("create");

    let stop = Arc::new(AtomicBool::new(false));
    let mut producing = Vec::new();
    for p in 0..PRODUCERS {
        let stop = stop.clone();
        producing.push(tokio::spawn(async move {
            let options = ConnectOptions {
                request_timeout: Duration::from_secs(5),
                ..ConnectOptions::default()
            };
            // The server may be down right now: keep trying.
            let client = loop {
                if let Ok(c) = Client::connect_with(addr, options.clone()).await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let producer = Producer::new(
                client,
                ProducerConfig {
                    batch_bytes: 16 * 1024,
                    delivery_timeout: Duration::from_secs(60),
                    retries: u32::MAX,
                    ..ProducerConfig::default()
                },
            );
            let key = format!("producer-{p}");
            let (mut acked, mut failed) = (Vec::new(), 0u64);
            // Unique across producers: the checker keys on it.
            let mut seq = u64::from(p) << 40;
            while !stop.load(Ordering::Acquire) {
                let mut pending = Vec::new();
                for _ in 0..500 {
                    match producer
                        .send("k", Some(key.as_bytes()), seq.to_be_bytes())
                        .await
                    {
                        Ok(delivery) => pending.push((seq, delivery)),
                        Err(_) => failed += 1,
                    }
                    seq += 1;
                }
                for (n, delivery) in pending {
                    match delivery.await {
                        Ok(_) => acked.push(Acked {
                            key: key.clone().into_bytes(),
                            seq: n,
                        }),
                        Err(_) => failed += 1,
                    }
                }
                // Paced, so that a thousand kills keep the history (held in
                // memory for the checker) to some millions of messages.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed)
        }));
    }

    // The killer: SIGKILL at a random moment, restart on the same port.
    let rounds = kills();
    let started = Instant::now();
    let mut server = server;
    for round in 0..rounds {
        let pause = 50 + (round * 7919 % 200);
        tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
        let flags = flags.clone();
        server = tokio::task::spawn_blocking(move || server.restart(&args_owned(&flags)))
            .await
            .expect("restart");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    let mut failed = 0;
    for task in producing {
        let (a, f) = task.await.expect("producer task");
        acked.extend(a);
        failed += f;
    }
    eprintln!(
        "sync {sync}: {rounds} kills in {:?}, {} messages acknowledged, {failed} failed",
        started.elapsed(),
        acked.len()
    );

    // Everything stored, read back after one more kill and restart.
    let server = tokio::task::spawn_blocking(move || server.restart(&args_owned(&flags)))
        .await
        .expect("restart");
    let client = server.client().await;
    let end: u64 = client
        .describe_topic("k")
        .await
        .expect("describe")
        .partitions
        .iter()
        .map(|p| p.end)
        .sum();
    let mut consumer = Consumer::new(client, "k", StartAt::Earliest, ConsumerConfig::default())
        .await
        .expect("consumer");
    let mut consumed = Vec::new();
    while (consumed.len() as u64) < end {
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a message within 10 s")
            .expect("consumer ended")
            .expect("message");
        consumed.push(Consumed {
            partition: m.partition,
            offset: m.offset,
            key: m.key.expect("key").to_vec(),
            seq: u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes")),
        });
    }
    let violations = history::check(&acked, &consumed);
    assert!(
        violations.is_empty(),
        "sync {sync}: {} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert!(
        acked.len() > 1000,
        "too little was acknowledged to say much"
    );
}

fn args_owned(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_and_duplicates_nothing_sync_always() {
    let _serial = SERIAL.lock().await;
    kill_loop("always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_and_duplicates_nothing_sync_interval() {
    let _serial = SERIAL.lock().await;
    kill_loop("interval").await;
}
