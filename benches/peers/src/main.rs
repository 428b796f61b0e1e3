//! `spool-peers`: the workload of `spool bench` (one producer, one consumer,
//! fixed-size messages carrying their send time and sequence number) against
//! Redis Streams, NATS JetStream, RabbitMQ and Apache Iggy, driven by their
//! well-known Rust clients. Prints one JSON object with the same keys as
//! `spool bench --json`.
//!
//! Each client is tuned as an expert would (the settings were raised until
//! more no longer helped on a 2-core machine; README's table names them):
//!
//! - Redis: `--inflight` pipelines of `--batch` XADDs in flight; queue mode
//!   reads with XREADGROUP COUNT `--batch` and sends each XACK (naming every
//!   id) in the same round trip as the next XREADGROUP; stream mode XREAD.
//! - NATS: `--batch` publish acks outstanding; the pull consumer fetches
//!   `--batch` messages at a time with `max_ack_pending` 20,000, acking each
//!   message (queue) or with no acks (stream).
//! - RabbitMQ (AMQP 0.9.1, `lapin`): queue mode is a durable quorum queue
//!   with publisher confirms (`--batch` unconfirmed publishes outstanding)
//!   and consumer acks, prefetch `--prefetch`, each message acknowledged
//!   (cumulatively, `multiple`, every `--batch` / 10 deliveries); stream mode
//!   is a RabbitMQ stream read from its first offset with the same
//!   prefetch and confirms.
//! - Iggy (`iggy` client crate over TCP): batches of `--batch` messages, one
//!   send in flight, as `iggy-bench` does; the consumer polls `--batch`
//!   messages by offset. Stream mode only: Iggy has no per-message acks.

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
    Rabbitmq,
    Iggy,
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
    /// Redis: XADD pipelines in flight at once.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// RabbitMQ: the consumer's prefetch window.
    #[arg(long, default_value_t = 2000)]
    prefetch: u16,
    /// Offered load in messages per second: each message is sent on its
    /// own at its time (a latency run); flat out without it.
    #[arg(long)]
    rate: Option<u64>,
    /// Iggy: produce only, no consumer (for the produce-only comparison).
    #[arg(long)]
    produce_only: bool,
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

    /// Nanoseconds since the epoch: read once for messages that arrived
    /// together, as `spool bench` does.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A message that arrived on its own.
    fn see(&mut self, p: &[u8]) {
        let now = self.now();
        self.see_at(p, now);
    }

    /// A message of a batch that arrived at `now`.
    fn see_at(&mut self, p: &[u8], now: u64) {
        if let Some((sent, seq)) = parse(p) {
            let _ = self.e2e.record(now.saturating_sub(sent).max(1000));
            if seq != self.next_seq {
                self.out_of_order += 1;
            }
            self.next_seq = seq + 1;
            self.received += 1;
        }
    }
}

impl Args {
    /// Messages per producer request: one at a time under `--rate`.
    fn produce_batch(&self) -> usize {
        if self.rate.is_some() {
            1
        } else {
            self.batch.max(1)
        }
    }

    /// Waits until message `seq` is due under `--rate` (from `start`).
    async fn pace(&self, start: Instant, seq: u64) {
        if let Some(rate) = self.rate {
            let due = start + Duration::from_secs_f64(seq as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Records the time since `sent` (ns on the `epoch` clock), at least 1 us.
fn record_since(h: &mut Histogram<u64>, epoch: Instant, sent: u64) {
    let _ = h.record(
        (epoch.elapsed().as_nanos() as u64)
            .saturating_sub(sent)
            .max(1000),
    );
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
            Peer::Nats | Peer::Rabbitmq | Peer::Iggy => bail!("no lock workload for this peer"),
        };
        let duration = Duration::from_secs_f64(args.duration_secs);
        let report = locks::run(peer, &args.url, args.lock_clients, duration).await?;
        println!("{report}");
        return Ok(());
    }
    let (produce_secs, consume_secs, ack, tally) = match args.peer {
        Peer::Redis => redis_run(&args, epoch).await?,
        Peer::Nats => nats_run(&args, epoch).await?,
        Peer::Rabbitmq => rabbit_run(&args, epoch).await?,
        Peer::Iggy => iggy_run(&args, epoch).await?,
        Peer::Etcd => bail!("etcd runs only the lock workload (--locks)"),
    };
    if args.produce_only && args.peer != Peer::Iggy {
        bail!("--produce-only is for --peer iggy");
    }
    if !args.produce_only && tally.received != args.messages {
        bail!("received {} of {} messages", tally.received, args.messages);
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) / 1000;
    let produce = args.messages as f64 / produce_secs;
    let consume = if args.produce_only {
        0.0
    } else {
        args.messages as f64 / consume_secs
    };
    println!(
        "{}",
        serde_json::json!({
            "peer": match args.peer { Peer::Redis => "redis-streams", Peer::Nats => "nats-jetstream", Peer::Rabbitmq => "rabbitmq", Peer::Iggy => "iggy", Peer::Etcd => "etcd" },
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
            use futures_util::stream::FuturesOrdered;
            let con = client.get_multiplexed_async_connection().await?;
            let mut ack = hist()?;
            let mut seq = 0u64;
            // Pipelines complete in order on the one connection; keeping
            // several in flight overlaps the server's work on one with the
            // network and client work of the next.
            let mut in_flight = FuturesOrdered::new();
            // Under --rate the pipeline has room for every message of a
            // latency run: answers are timed as they arrive, never held
            // behind the pacing.
            let depth = if args.rate.is_some() {
                usize::MAX
            } else {
                args.inflight.max(1)
            };
            loop {
                tokio::select! {
                    biased;
                    Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                        let (sent, n) = done?;
                        let now = epoch.elapsed().as_nanos() as u64;
                        for _ in 0..n {
                            let _ = ack.record(now.saturating_sub(sent).max(1000));
                        }
                    }
                    _ = args.pace(start, seq), if seq < args.messages && in_flight.len() < depth => {
                        let mut pipe = redis::pipe();
                        let n = (args.messages - seq).min(args.produce_batch() as u64);
                        let sent = epoch.elapsed().as_nanos() as u64;
                        for i in 0..n {
                            pipe.cmd("XADD").arg(&key).arg("*").arg("d").arg(payload(
                                args.size,
                                sent,
                                seq + i,
                            ));
                        }
                        let mut con = con.clone();
                        in_flight.push_back(async move {
                            let r: redis::RedisResult<Vec<String>> = pipe.query_async(&mut con).await;
                            r.map(|_| (sent, n))
                        });
                        seq += n;
                    }
                    else => break,
                }
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let mut con = client.get_multiplexed_async_connection().await?;
    let mut tally = Tally::new(epoch)?;
    let mut last_id = "0".to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut to_ack: Vec<String> = Vec::new();
    while tally.received < args.messages {
        if Instant::now() > deadline {
            bail!("redis consumer stalled at {}", tally.received);
        }
        let reply: redis::streams::StreamReadReply = match args.mode {
            Mode::Queue => {
                // The previous batch's XACK rides in the same round trip as
                // this XREADGROUP.
                let mut pipe = redis::pipe();
                if !to_ack.is_empty() {
                    pipe.cmd("XACK").arg(&key).arg("g").arg(&to_ack).ignore();
                }
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(args.batch)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">");
                let (reply,): (redis::streams::StreamReadReply,) =
                    pipe.query_async(&mut con).await?;
                to_ack.clear();
                reply
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
        let now = tally.now();
        for k in reply.keys {
            for entry in k.ids {
                let data: Vec<u8> = entry.get("d").context("entry without payload")?;
                tally.see_at(&data, now);
                last_id = entry.id.clone();
                ids.push(entry.id);
            }
        }
        if args.mode == Mode::Queue {
            // Every message acked: one XACK naming each id.
            to_ack = ids;
        }
    }
    if !to_ack.is_empty() {
        let _: u64 = redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&to_ack)
            .query_async(&mut con)
            .await?;
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
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let producer = {
        let (js, subject, args) = (js.clone(), subject.clone(), args.clone());
        tokio::spawn(async move {
            let mut ack = hist()?;
            // Publish acks awaited as they arrive, `--batch` outstanding.
            let mut window = futures_util::stream::FuturesOrdered::new();
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    biased;
                    Some(done) = window.next(), if !window.is_empty() => {
                        let sent: u64 = done?;
                        record_since(&mut ack, epoch, sent);
                    }
                    _ = args.pace(start, seq), if seq < args.messages && window.len() < args.batch => {
                        let sent = epoch.elapsed().as_nanos() as u64;
                        let future = js
                            .publish(subject.clone(), payload(args.size, sent, seq).into())
                            .await?;
                        window.push_back(async move {
                            future.await.map(|_| sent).map_err(|e| anyhow::anyhow!("{e}"))
                        });
                        seq += 1;
                    }
                    else => break,
                }
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let mut tally = Tally::new(epoch)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await?;
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

async fn rabbit_run(args: &Args, epoch: Instant) -> Result<(f64, f64, Histogram<u64>, Tally)> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let queue = format!(
        "bench-{}",
        epoch.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let admin = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    let mut arguments = FieldTable::default();
    let kind = match args.mode {
        Mode::Queue => "quorum",
        Mode::Stream => "stream",
    };
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    let start = Instant::now();
    let producer = {
        let (url, queue, args) = (args.url.clone(), queue.clone(), args.clone());
        tokio::spawn(async move {
            let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let mut ack = hist()?;
            // Confirms awaited as they arrive, `--batch` outstanding.
            let mut window = futures_util::stream::FuturesOrdered::new();
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    biased;
                    Some(done) = window.next(), if !window.is_empty() => {
                        let (sent, acked): (u64, bool) = done?;
                        if !acked {
                            bail!("rabbitmq refused a publish");
                        }
                        record_since(&mut ack, epoch, sent);
                    }
                    _ = args.pace(start, seq), if seq < args.messages && window.len() < args.batch => {
                        let sent = epoch.elapsed().as_nanos() as u64;
                        let confirm = channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions::default(),
                                &payload(args.size, sent, seq),
                                BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?;
                        window.push_back(async move {
                            confirm.await.map(|c| (sent, c.is_ack())).map_err(anyhow::Error::from)
                        });
                        seq += 1;
                    }
                    else => break,
                }
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consume_arguments = FieldTable::default();
    if args.mode == Mode::Stream {
        consume_arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
    }
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            consume_arguments,
        )
        .await?;
    let mut tally = Tally::new(epoch)?;
    let ack_every = (args.batch / 10).max(1) as u64;
    while tally.received < args.messages {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("rabbitmq consumer stalled")?
            .context("rabbitmq consumer ended")??;
        tally.see(&delivery.data);
        // Every message is acknowledged: cumulatively, up to this one.
        if tally.received % ack_every == 0 || tally.received == args.messages {
            delivery.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();
    let (produce_secs, ack) = producer.await??;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok((produce_secs, consume_secs, ack, tally))
}

async fn iggy_run(args: &Args, epoch: Instant) -> Result<(f64, f64, Histogram<u64>, Tally)> {
    use iggy::prelude::*;
    if args.mode == Mode::Queue {
        bail!("Iggy has no per-message acknowledgements: stream mode only");
    }
    let address = args.url.trim_start_matches("tcp://").to_string();
    let connect = |address: String| async move {
        let client = IggyClient::builder()
            .with_tcp()
            .with_server_address(address)
            .build()?;
        client.connect().await?;
        client
            .login_user(DEFAULT_ROOT_USERNAME, DEFAULT_ROOT_PASSWORD)
            .await?;
        anyhow::Ok(client)
    };
    let admin = connect(address.clone()).await?;
    let name = format!(
        "bench-{}",
        epoch.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let stream = admin.create_stream(&name).await?;
    let stream_id = Identifier::numeric(stream.id)?;
    let topic = admin
        .create_topic(
            &stream_id,
            "t",
            1,
            CompressionAlgorithm::None,
            None,
            IggyExpiry::NeverExpire,
            MaxTopicSize::ServerDefault,
        )
        .await?;
    let topic_id = Identifier::numeric(topic.id)?;
    let partition = topic
        .partitions
        .first()
        .map(|p| p.id)
        .context("topic without partitions")?;
    let start = Instant::now();
    let producer = {
        let (address, args) = (address.clone(), args.clone());
        let (stream_id, topic_id) = (stream_id.clone(), topic_id.clone());
        tokio::spawn(async move {
            let client = connect(address).await?;
            let partitioning = Partitioning::partition_id(partition);
            let mut ack = hist()?;
            let mut seq = 0u64;
            while seq < args.messages {
                args.pace(start, seq).await;
                let n = (args.messages - seq).min(args.produce_batch() as u64);
                let sent = epoch.elapsed().as_nanos() as u64;
                let mut messages = (0..n)
                    .map(|i| {
                        IggyMessage::builder()
                            .payload(payload(args.size, sent, seq + i).into())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                client
                    .send_messages(&stream_id, &topic_id, &partitioning, &mut messages)
                    .await?;
                let now = epoch.elapsed().as_nanos() as u64;
                for _ in 0..n {
                    let _ = ack.record(now.saturating_sub(sent).max(1000));
                }
                seq += n;
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), ack))
        })
    };
    let client = connect(address).await?;
    let consumer = Consumer::default();
    let mut tally = Tally::new(epoch)?;
    let mut offset = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while !args.produce_only && tally.received < args.messages {
        if Instant::now() > deadline {
            bail!("iggy consumer stalled at {}", tally.received);
        }
        let polled = client
            .poll_messages(
                &stream_id,
                &topic_id,
                Some(partition),
                &consumer,
                &PollingStrategy::offset(offset),
                args.batch as u32,
                false,
            )
            .await?;
        if polled.messages.is_empty() {
            tokio::time::sleep(Duration::from_micros(100)).await;
            continue;
        }
        offset += polled.messages.len() as u64;
        let now = tally.now();
        for m in &polled.messages {
            tally.see_at(&m.payload, now);
        }
    }
    let consume_secs = start.elapsed().as_secs_f64();
    let (produce_secs, ack) = producer.await??;
    admin.delete_stream(&stream_id).await?;
    Ok((produce_secs, consume_secs, ack, tally))
}
