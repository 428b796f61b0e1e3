//! `spool-peers`: the workload of `spool bench` (one producer, one consumer,
//! fixed-size messages carrying their send time and sequence number) against
//! Redis Streams and NATS JetStream, driven by their well-known Rust clients.
//! Prints one JSON object with the same keys as `spool bench --json`.
//!
//! Queue mode acks every message (Redis: XREADGROUP + XACK; NATS: pull
//! consumer with explicit acks); stream mode reads without acks (Redis:
//! XREAD; NATS: pull consumer with no acks). Producers pipeline: Redis sends
//! XADDs in pipelines of `--batch`, NATS keeps `--batch` publish acks
//! outstanding.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

mod locks;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    Redis,
    Nats,
    /// Locks only (`--locks`).
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Stream,
    Queue,
}

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, value_enum)]
    peer: Peer,
    /// redis://HOST:PORT or nats://HOST:PORT
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[arg(long, value_enum, default_value_t = Mode::Queue)]
    mode: Mode,
    /// Pipeline depth of the producer and batch size of the consumer.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Label for the durability setting, echoed in the output.
    #[arg(long, default_value = "")]
    durability: String,
    /// The lock workload of `spool bench --locks` (Redis or etcd).
    #[arg(long)]
    locks: bool,
    /// Sessions contending for one lock.
    #[arg(long, default_value_t = 4)]
    lock_clients: u32,
    /// Seconds of each lock part.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
}

fn payload(size: usize, sent_ns: u64, seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(16));
    v.extend_from_slice(&sent_ns.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.resize(size.max(16), b'x');
    v
}

fn parse(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < 16 {
        return None;
    }
    Some((
        u64::from_le_bytes(p[0..8].try_into().ok()?),
        u64::from_le_bytes(p[8..16].try_into().ok()?),
    ))
}

struct Tally {
    epoch: Instant,
    e2e: Histogram<u64>,
    next_seq: u64,
    received: u64,
    out_of_order: u64,
}

impl Tally {
    fn new(epoch: Instant) -> Result<Tally> {
        Ok(Tally {
            epoch,
            e2e: hist()?,
            next_seq: 0,
            received: 0,
            out_of_order: 0,
        })
    }

    fn see(&mut self, p: &[u8]) {
        if let Some((sent, seq)) = parse(p) {
            let now = self.epoch.elapsed().as_nanos() as u64;
            let _ = self.e2e.record(now.saturating_sub(sent).max(1000));
            if seq != self.next_seq {
                self.out_of_order += 1;
            }
            self.next_seq = seq + 1;
            self.received += 1;
        }
    }
}

fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let epoch = Instant::now();
    if args.locks {
        let peer = match args.peer {
            Peer::Redis => "redis",
            Peer::Etcd => "etcd",
            Peer::Nats => bail!("no lock workload for NATS"),
        };
        let duration = Duration::from_secs_f64(args.duration_secs);
        let report = locks::run(peer, &args.url, args.lock_clients, duration).await?;
        println!("{report}");
        return Ok(());
    }
    let (produce_secs, consume_secs, ack, tally) = match args.peer {
        Peer::Redis => redis_run(&args, epoch).await?,
        Peer::Nats => nats_run(&args, epoch).await?,
        Peer::Etcd => bail!("etcd runs only the lock workload (--locks)"),
    };
    if tally.received != args.messages {
        bail!("received {} of {} messages", tally.received, args.messages);
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) / 1000;
    let produce = args.messages as f64 / produce_secs;
    let consume = args.messages as f64 / consume_secs;
    println!(
        "{}",
        serde_json::json!({
            "peer": match args.peer { Peer::Redis => "redis-streams", Peer::Nats => "nats-jetstream", Peer::Etcd => "etcd" },
            "mode": match args.mode { Mode::Stream => "stream", Mode::Queue => "queue" },
            "durability": args.durability,
            "size": args.size,
            "messages_verified": tally.received,
            "out_of_order": tally.out_of_order,
            "produce_msgs_per_sec": produce,
            "consume_msgs_per_sec": consume,
            "produce_mb_per_sec": produce * args.size as f64 / 1e6,
            "ack_p50_us": us(&ack, 0.5), "ack_p99_us": us(&ack, 0.99),
            "e2e_p50_us": us(&tally.e2e, 0.5), "e2e_p99_us": us(&tally.e2e, 0.99),
        })
    );
    Ok(())
}

async fn redis_run(args: &Args, epoch: Instant) -> Result<(f64, f64, Histogram<u64>, Tally)> {
    let client = redis::Client::open(args.url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let key = format!(
        "bench-{}",
        epoch.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    if args.mode == Mode::Queue {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("g")
            .arg("$")
            .arg("MKSTREAM")
            .query_async::<()>(&mut admin)
            .await?;
    }
    let start = Instant::now();
    let producer = {
        let (client, key, args) = (client.clone(), key.clone(), args.clone());
        tokio::spawn(async move {
            let mut con = client.get_multiplexed_async_connection().await?;
            let mut ack = hist()?;
            let mut seq = 0u64;
            while seq < args.messages {
                let mut pipe = redis::pipe();
                let n = (args.messages - seq).min(args.batch as u64);
                let sent = epoch.elapsed().as_nanos() as u64;
                for i in 0..n {
                    pipe.cmd("XADD").arg(&key).arg("*").arg("d").arg(payload(
                        args.size,
                        sent,
                        seq + i,
                    ));
                }
                let _: Vec<String> = pipe.query_async(&mut con).await?;
                let now = epoch.elapsed().as_nanos() as u64;
                for _ in 0..n {
                    let _ = ack.record(now.saturating_sub(sent).max(1000));
                }
                seq += n;
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut tally = Tally::new(epoch)?;
    let mut last_id = "0".to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    while tally.received < args.messages {
        if Instant::now() > deadline {
            bail!("redis consumer stalled at {}", tally.received);
        }
        let reply: redis::streams::StreamReadReply = match args.mode {
            Mode::Queue => {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(args.batch)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut con)
                    .await?
            }
            Mode::Stream => {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(args.batch)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last_id)
                    .query_async(&mut con)
                    .await?
            }
        };
        let mut ids = Vec::new();
        for k in reply.keys {
            for entry in k.ids {
                let data: Vec<u8> = entry.get("d").context("entry without payload")?;
                tally.see(&data);
                last_id = entry.id.clone();
                ids.push(entry.id);
            }
        }
        if args.mode == Mode::Queue && !ids.is_empty() {
            // Every message acked: one XACK naming each id.
            let _: u64 = redis::cmd("XACK")
                .arg(&key)
                .arg("g")
                .arg(&ids)
                .query_async(&mut con)
                .await?;
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();
    let (produce_secs, ack) = producer.await??;
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut admin).await?;
    Ok((produce_secs, consume_secs, ack, tally))
}

async fn nats_run(args: &Args, epoch: Instant) -> Result<(f64, f64, Histogram<u64>, Tally)> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = async_nats::connect(args.url.as_str()).await?;
    let js = jetstream::new(client);
    let name = format!(
        "BENCH{}",
        epoch.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let subject = format!("bench.{name}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("c".into()),
            ack_policy: match args.mode {
                Mode::Queue => consumer::AckPolicy::Explicit,
                Mode::Stream => consumer::AckPolicy::None,
            },
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let producer = {
        let (js, subject, args) = (js.clone(), subject.clone(), args.clone());
        tokio::spawn(async move {
            let mut ack = hist()?;
            let mut window = VecDeque::new();
            for seq in 0..args.messages {
                let sent = epoch.elapsed().as_nanos() as u64;
                let future = js
                    .publish(subject.clone(), payload(args.size, sent, seq).into())
                    .await?;
                window.push_back((sent, future));
                if window.len() >= args.batch {
                    if let Some((sent, f)) = window.pop_front() {
                        f.await?;
                        let _ = ack.record(
                            (epoch.elapsed().as_nanos() as u64)
                                .saturating_sub(sent)
                                .max(1000),
                        );
                    }
                }
            }
            while let Some((sent, f)) = window.pop_front() {
                f.await?;
                let _ = ack.record(
                    (epoch.elapsed().as_nanos() as u64)
                        .saturating_sub(sent)
                        .max(1000),
                );
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let mut tally = Tally::new(epoch)?;
    let mut messages = consumer.messages().await?;
    while tally.received < args.messages {
        let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .context("nats consumer stalled")?
            .context("nats consumer ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tally.see(&message.payload);
        if args.mode == Mode::Queue {
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();
    let (produce_secs, ack) = producer.await??;
    js.delete_stream(&name).await?;
    Ok((produce_secs, consume_secs, ack, tally))
}
