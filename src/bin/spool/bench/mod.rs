//! `spool bench`: produce and consume through a broker and measure it.
//!
//! Every producer and consumer is a task with its own connection. Each
//! payload carries its send time, producer id and sequence number, and a
//! CRC of its filler, so the consumers check every message: none missing,
//! none twice, order per partition (stream mode) and payload intact. A run
//! that does not verify fails with exit code 1, whatever its speed.
//!
//! Without `--addr` the bench starts a broker and server in this process on
//! a loopback port (data in a temporary directory, or `--data`): the client
//! path is the same as against a remote broker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spool::client::{
    Client, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig, QueueConsumer,
    QueueOptions, TopicOptions, WireSync,
};
use spool::server::{CancellationToken, Server, ServerConfig};
use spool::{Broker, BrokerConfig, SyncPolicy};

use self::pace::{spawn_ack_collector, Pace};
use self::payload::{check_received, fillers, write_payload, Seen, SendTimes, PAYLOAD_HEADER};
use self::report::{Latency, Report};
use self::timeline::{ProcessProbe, Timeline};
use crate::{resolve, Failure};

mod in_process;
mod local_cluster;
mod locks;
mod pace;
mod payload;
mod report;
mod timeline;

/// When a produce counts as stored (see `ProducerConfig::acks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AcksArg {
    /// Every in-sync replica has it.
    All,
    /// The leader has it.
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Consumers read partitions (split among them) from the start.
    Stream,
    /// Consumers share a queue-mode group and ack every message.
    Queue,
}

/// Arguments of `spool bench`.
#[derive(clap::Args, Clone)]
#[command(after_help = "Examples:
  spool bench                                           # 1M x 100 B, in-process broker
  spool bench --size 1024 --consumers 0 --sync always   # produce only, fsync per batch
  spool bench --mode queue --consumers 4 --partitions 4 # a queue group, every message acked
  spool bench --replication 3 --partitions 3            # a local 3-broker cluster, acks=all
  spool bench --locks --lock-clients 4                  # lock acquire+release latency, handovers/s
  spool bench --size 1024 --consumers 0 --in-process     # appends through the embedded API, no socket
  spool bench --addr 127.0.0.1:7070 --duration-secs 30 --rate 10000 --json")]
pub struct BenchArgs {
    /// Benchmark a running broker instead of starting one.
    #[arg(long)]
    addr: Option<String>,
    /// Messages to produce in all (ignored with --duration-secs).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Produce for this long instead of a fixed count.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Bytes per message (at least 24).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Producer tasks, each on its own connection.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Consumer tasks, each on its own connection (0: produce only).
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// stream (read partitions) or queue (group deliveries, every message acked).
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    mode: Mode,
    /// Queue mode: messages a consumer asks for per delivery (its
    /// `prefetch`; it may hold four deliveries unacked); each delivery's
    /// acks go in one request.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    deliver_max: u32,
    /// Sync policy of the benchmark topic: always, interval, interval:MS, never.
    #[arg(long, default_value = "interval")]
    sync: SyncPolicy,
    /// Retention by size of each of the benchmark topic's partitions
    /// (default: keep everything). A run that writes past it measures the
    /// steady state of a broker at its retention limit, where new segments
    /// are written over recycled ones; consumers that fall behind it lose
    /// messages and fail the run.
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Segment size of the benchmark topic (default: the broker's).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Bytes each producer holds between send and acknowledgement (the
    /// client's `buffer_bytes`; default: the client's default).
    #[arg(long)]
    buffer_bytes: Option<usize>,
    /// Producer batches on the wire at once (the client's
    /// `max_in_flight`; default: the client's default).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Producer linger in milliseconds (0: send whenever the producer's
    /// queue runs empty).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// Offered load in messages per second, over all producers (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds at the start excluded from throughput and latency figures.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Producers without idempotence (to measure what it costs).
    #[arg(long)]
    no_idempotence: bool,
    /// Copies of each partition. Above 1 without --addr, the bench starts
    /// a cluster of this many brokers (at least 3) as local processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replication: u32,
    /// When a produce counts as stored: every in-sync replica has it, or
    /// the leader alone.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Print one JSON object at the end instead of a table.
    #[arg(long)]
    json: bool,
    /// Data directory of the embedded broker (default: a temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Benchmark distributed locks instead of messages: uncontended
    /// acquire+release latency and rate, then handovers per second between
    /// --lock-clients sessions waiting for one lock (each part runs
    /// --duration-secs, default 5).
    #[arg(long)]
    locks: bool,
    /// Sessions contending for one lock with --locks.
    #[arg(long, default_value_t = 4)]
    lock_clients: u32,
    /// Speak TLS to the in-process broker, with a certificate made for the
    /// run (to measure what TLS costs). Against --addr, pass --tls-ca.
    #[arg(long, conflicts_with = "addr")]
    tls: bool,
    /// Write `report.json` (the report and per-second samples of
    /// throughput, latency, broker CPU and memory) and `report.html`
    /// (charts of them) into this directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// The broker's process id, with --addr: its CPU time and memory are
    /// reported (without --addr the broker is this process).
    #[arg(long, requires = "addr")]
    broker_pid: Option<u32>,
    /// Producers append through the embedded API (`Broker::append_pending`,
    /// batches of --batch-bytes, --max-in-flight appends waiting to be
    /// durable) instead of a connection: what the storage path takes
    /// without a socket's copies. Consumers still connect over loopback.
    /// Not with --addr, --tls or --replication above 1; the appends carry
    /// no producer id (the embedded API has no idempotence).
    #[arg(long, conflicts_with_all = ["addr", "tls"])]
    in_process: bool,
}

/// A latency histogram for the whole run, and one for the current second
/// (`--output`'s samples).
struct Latencies {
    total: Histogram<u64>,
    second: Histogram<u64>,
}

impl Latencies {
    fn new() -> Result<Latencies, Failure> {
        Ok(Latencies {
            total: histogram()?,
            second: histogram()?,
        })
    }

    /// `n` messages took `ns` each.
    fn record_n(&mut self, ns: u64, n: u64) {
        let _ = self.total.record_n(ns, n);
        let _ = self.second.record_n(ns, n);
    }

    /// This second's histogram, leaving an empty one.
    fn take_second(&mut self) -> Histogram<u64> {
        let empty = Histogram::new_from(&self.second);
        std::mem::replace(&mut self.second, empty)
    }
}

/// Counters shared by all tasks.
struct Shared {
    epoch: Instant,
    warmup_ns: u64,
    acked: AtomicU64,
    consumed: AtomicU64,
    /// When the latest received batch arrived (ns since `epoch`): the end
    /// of consumption, read exactly rather than by the waiting loop's poll.
    last_arrival_ns: AtomicU64,
    /// Messages that arrived damaged: they will never verify, so waiting
    /// for them would only end in a stall.
    damaged: AtomicU64,
    ack_latency: Mutex<Latencies>,
    e2e_latency: Mutex<Latencies>,
    errors: Mutex<Vec<String>>,
    fillers: Vec<Vec<u8>>,
    filler_crcs: Vec<u32>,
}

impl Shared {
    /// Nothing counted yet; payloads of `size` bytes.
    fn new(size: usize, warmup_secs: f64) -> Result<Shared, Failure> {
        let (fillers, filler_crcs) = fillers(size);
        Ok(Shared {
            fillers,
            filler_crcs,
            epoch: Instant::now(),
            warmup_ns: (warmup_secs.max(0.0) * 1e9) as u64,
            acked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            damaged: AtomicU64::new(0),
            ack_latency: Mutex::new(Latencies::new()?),
            e2e_latency: Mutex::new(Latencies::new()?),
            errors: Mutex::new(Vec::new()),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn error(&self, message: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            errors.push(message);
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.size < PAYLOAD_HEADER {
        return Err(Failure::usage(format!(
            "--size must be at least {PAYLOAD_HEADER}"
        )));
    }
    if args.producers == 0 || args.partitions == 0 {
        return Err(Failure::usage(
            "--producers and --partitions must be at least 1",
        ));
    }
    if args.in_process && args.replication > 1 {
        return Err(Failure::usage(
            "--in-process runs one embedded broker: not with --replication above 1",
        ));
    }
    let mut local_cluster = None;
    let (addr, embedded) = match &args.addr {
        Some(addr) => (resolve(addr)?, None),
        None if args.replication > 1 => {
            let cluster =
                local_cluster::LocalCluster::start(args.replication.max(3) as usize).await?;
            let addr = cluster.addrs[0];
            local_cluster = Some(cluster);
            (addr, None)
        }
        None => {
            let embedded = Embedded::start(args.data.as_deref(), args.tls).await?;
            (embedded.addr, Some(embedded))
        }
    };
    let connect = match embedded.as_ref().and_then(|e| e.client_tls.clone()) {
        Some(tls) => spool::client::ConnectOptions {
            tls: Some(tls),
            ..crate::connect_options()
        },
        None => crate::connect_options(),
    };

    if args.locks {
        let duration = Duration::from_secs_f64(args.duration_secs.unwrap_or(5.0).max(0.1));
        let measured = locks::run(addr, &connect, args.lock_clients, duration).await;
        if let Some(embedded) = embedded {
            embedded.stop().await;
        }
        drop(local_cluster);
        let report = measured?;
        if args.json {
            println!("{}", report.to_json());
        } else {
            report.print_table();
        }
        return Ok(());
    }

    let admin = Client::connect_with(addr, connect.clone()).await?;
    let topic = format!(
        "bench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let sync: WireSync = args.sync.into();
    let options = TopicOptions {
        sync: Some(sync),
        retention_ms: Some(0),
        retention_bytes: args.retention_bytes,
        segment_size_bytes: args.segment_bytes,
        replication: Some(args.replication),
    };
    admin.create_topic(&topic, args.partitions, options).await?;

    let shared = Arc::new(Shared::new(args.size, args.warmup_secs)?);
    // The broker's process: this one when the broker runs in it.
    let (broker_pid, broker_process) = match (embedded.is_some(), args.broker_pid) {
        (true, _) => (
            Some(std::process::id()),
            "the bench process: broker and clients".to_string(),
        ),
        (false, Some(pid)) => (Some(pid), format!("pid {pid}")),
        (false, None) => (None, "not observed (--broker-pid)".to_string()),
    };
    let broker_at_start = broker_pid.and_then(|pid| ProcessProbe::new(pid).usage());
    let timeline = Arc::new(Mutex::new(Timeline::new(broker_pid)));
    let progress = spawn_progress(shared.clone(), timeline.clone());

    // Consumers first, so nothing they should see is missed.
    let stop = CancellationToken::new();
    let mut consumers = Vec::new();
    for c in 0..args.consumers {
        let client = Client::connect_with(addr, connect.clone()).await?;
        let (args, shared, topic, stop) =
            (args.clone(), shared.clone(), topic.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            consume(c, client, &args, &topic, &shared, stop).await
        }));
    }

    let produce_started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let (args, shared, topic) = (args.clone(), shared.clone(), topic.clone());
        match embedded.as_ref().filter(|_| args.in_process) {
            Some(embedded) => {
                let broker = embedded.broker.clone();
                producers.push(tokio::spawn(async move {
                    in_process::produce(p, broker, &args, &topic, &shared).await
                }));
            }
            None => {
                let client = Client::connect_with(addr, connect.clone()).await?;
                producers.push(tokio::spawn(async move {
                    produce(p, client, &args, &topic, &shared).await
                }));
            }
        }
    }
    let mut produced = 0u64;
    let mut produced_per_producer = vec![0; producers.len()];
    for (p, handle) in producers.into_iter().enumerate() {
        match handle.await {
            Ok(Ok(n)) => {
                produced += n;
                produced_per_producer[p] = n;
            }
            Ok(Err(e)) => shared.error(format!("producer {p}: {e}")),
            Err(e) => shared.error(format!("producer {p} panicked: {e}")),
        }
    }
    let produce_elapsed = produce_started.elapsed();
    let acked_at_end = shared.acked.load(Ordering::Relaxed);

    // Wait for the consumers to see everything (or to stall).
    let mut last_progress = (shared.consumed.load(Ordering::Relaxed), Instant::now());
    let arrived =
        || shared.consumed.load(Ordering::Acquire) + shared.damaged.load(Ordering::Relaxed);
    while args.consumers > 0 && arrived() < produced {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = shared.consumed.load(Ordering::Relaxed);
        if now != last_progress.0 {
            last_progress = (now, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(30) {
            shared.error(format!("consumers stalled at {now} of {produced} messages"));
            break;
        }
    }
    // Up to the last arrival, not to when the 20 ms poll above noticed it
    // (which would cost a short run several percent).
    let consume_elapsed = if args.consumers > 0 && arrived() >= produced {
        Duration::from_nanos(shared.last_arrival_ns.load(Ordering::Acquire))
            .saturating_sub(produce_started.duration_since(shared.epoch))
    } else {
        produce_started.elapsed()
    };
    stop.cancel();
    let mut seen: Vec<Seen> = Vec::new();
    let mut consumer_failed = false;
    for (c, handle) in consumers.into_iter().enumerate() {
        match handle.await {
            // What a failed consumer saw before it failed still counts.
            Ok((s, result)) => {
                if let Err(e) = result {
                    consumer_failed = true;
                    shared.error(format!("consumer {c} stopped: {e}"));
                }
                seen.push(s);
            }
            Err(e) => {
                consumer_failed = true;
                shared.error(format!("consumer {c} panicked: {e}"));
            }
        }
    }
    progress.abort();
    // The part of the run after the last whole second.
    record_sample(&shared, &timeline);
    eprintln!();

    // Verify: every (producer, seq) exactly once, intact, in order.
    let verification = payload::verify(&seen, &produced_per_producer);
    if args.consumers > 0 {
        verification.report_errors(produced, args.mode, consumer_failed, &shared);
    }
    let (verified, duplicates) = (verification.verified, verification.duplicates);

    let warmup = Duration::from_nanos(shared.warmup_ns);
    let rate = |count: u64, elapsed: Duration| {
        // Exclude the warm-up when the run is long enough to have one.
        let (count, elapsed) = if elapsed > warmup * 2 {
            let share = (elapsed - warmup).as_secs_f64() / elapsed.as_secs_f64();
            ((count as f64 * share) as u64, elapsed - warmup)
        } else {
            (count, elapsed)
        };
        count as f64 / elapsed.as_secs_f64().max(1e-9)
    };
    let produce_rate = rate(acked_at_end, produce_elapsed);
    let consume_rate = if args.consumers > 0 {
        rate(verified, consume_elapsed)
    } else {
        0.0
    };
    let ack = shared.ack_latency.lock().total.clone();
    let e2e = shared.e2e_latency.lock().total.clone();
    let broker_at_end = broker_pid.and_then(|pid| ProcessProbe::new(pid).usage());
    let errors = shared.errors.lock().clone();
    let report = Report {
        mode: format!("{:?}", args.mode).to_lowercase(),
        sync: args.sync.to_string(),
        size: args.size,
        producers: args.producers,
        producers_in_process: args.in_process,
        consumers: args.consumers,
        partitions: args.partitions,
        replication: args.replication,
        acks: format!("{:?}", args.acks).to_lowercase(),
        messages_produced: produced,
        messages_verified: verified,
        duplicates,
        produce_secs: produce_elapsed.as_secs_f64(),
        produce_msgs_per_sec: produce_rate,
        produce_mb_per_sec: produce_rate * args.size as f64 / 1e6,
        consume_msgs_per_sec: consume_rate,
        consume_mb_per_sec: consume_rate * args.size as f64 / 1e6,
        broker_cpu_secs: broker_at_start
            .zip(broker_at_end)
            .map(|(start, end)| end.cpu_secs - start.cpu_secs),
        broker_peak_rss_mib: broker_at_end.map(|u| u.peak_rss_mib),
        ack: Latency::of(&ack),
        e2e: Latency::of(&e2e).filter(|_| args.consumers > 0),
        errors: errors.clone(),
    };
    if report.ack.is_none() {
        eprintln!(
            "spool bench: latencies not measured: the run ended within its {} s warm-up (give it more messages, or --warmup-secs 0)",
            args.warmup_secs
        );
    }
    if args.json {
        println!(
            "{}",
            report
                .to_json()
                .map_err(|e| Failure::refused(e.to_string()))?
        );
    } else {
        report.print_table();
    }
    if let Some(dir) = &args.output {
        let value = report
            .to_value()
            .map_err(|e| Failure::refused(e.to_string()))?;
        let samples = timeline.lock().samples.clone();
        timeline::write(dir, &value, &broker_process, &samples).map_err(|e| {
            Failure::refused(format!("cannot write the report to {}: {e}", dir.display()))
        })?;
        eprintln!(
            "spool bench: wrote {} and {}",
            dir.join("report.json").display(),
            dir.join("report.html").display()
        );
    }

    // Leave a remote broker as we found it.
    if let Err(e) = admin.delete_topic(&topic).await {
        eprintln!("spool bench: could not delete topic {topic}: {e}");
    }
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    drop(local_cluster);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "benchmark failed verification: {}",
            errors.join("; ")
        )))
    }
}

/// A broker and server in this process on a loopback port, for a bench
/// without `--addr`: the client path is the same as against a remote one.
struct Embedded {
    addr: std::net::SocketAddr,
    /// The broker the server serves, for `--in-process` producers.
    broker: Broker,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), spool::BrokerError>>,
    /// Removed when the bench ends (unless `--data` named a directory).
    _dir: Option<tempfile::TempDir>,
    /// How clients reach it over TLS, if it speaks TLS.
    client_tls: Option<spool::client::TlsOptions>,
    _certs: Option<tempfile::TempDir>,
}

impl Embedded {
    async fn start(data: Option<&std::path::Path>, tls: bool) -> Result<Embedded, Failure> {
        let (dir, path) = match data {
            Some(path) => (None, path.to_path_buf()),
            None => {
                let dir = tempfile::tempdir()
                    .map_err(|e| Failure::io("creating a temporary directory", e))?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let broker = Broker::open(&path, BrokerConfig::default())?;
        let mut config = ServerConfig::default();
        let (client_tls, certs) = if tls {
            let (server_tls, client_tls, certs) = bench_certificates()?;
            config.tls = Some(server_tls);
            (Some(client_tls), Some(certs))
        } else {
            (None, None)
        };
        let server = Server::bind(([127, 0, 0, 1], 0).into(), broker.clone(), config)
            .await
            .map_err(|e| Failure::io("binding the embedded server", e))?;
        let addr = server
            .local_addr()
            .map_err(|e| Failure::io("embedded server", e))?;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(server.run(shutdown.clone()));
        Ok(Embedded {
            addr,
            broker,
            shutdown,
            server,
            _dir: dir,
            client_tls,
            _certs: certs,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.server.await;
    }
}

/// A CA and a certificate for 127.0.0.1 made for one bench run: the
/// server's TLS, the clients' trust, and the directory holding the PEMs.
fn bench_certificates() -> Result<
    (
        spool::server::tls::ServerTls,
        spool::client::TlsOptions,
        tempfile::TempDir,
    ),
    Failure,
> {
    let failed = |e: &dyn std::fmt::Display| Failure::refused(format!("bench certificates: {e}"));
    let dir = tempfile::tempdir().map_err(|e| Failure::io("creating a temporary directory", e))?;
    let ca_key = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| failed(&e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(|e| failed(&e))?;
    let key = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .and_then(|p| p.signed_by(&key, &ca, &ca_key))
        .map_err(|e| failed(&e))?;
    let path = |name: &str| dir.path().join(name);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(path(name), pem)
            .map_err(|e| Failure::io("writing a bench certificate", e))?;
    }
    let server =
        spool::server::tls::ServerTls::load(&path("cert.pem"), &path("key.pem"), None, None)
            .map_err(|e| failed(&e))?;
    let client =
        spool::client::TlsOptions::with_ca_file(&path("ca.pem")).map_err(|e| failed(&e))?;
    Ok((server, client, dir))
}

fn histogram() -> Result<Histogram<u64>, Failure> {
    // 1 us to 1 min in ns, 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| Failure::usage(e.to_string()))
}

/// Adds a sample to the timeline: what happened since the last one.
fn record_sample(shared: &Shared, timeline: &Mutex<Timeline>) {
    let counts = (
        shared.acked.load(Ordering::Relaxed),
        shared.consumed.load(Ordering::Relaxed),
    );
    let ack = shared.ack_latency.lock().take_second();
    let e2e = shared.e2e_latency.lock().take_second();
    timeline
        .lock()
        .record(shared.epoch.elapsed().as_secs_f64(), counts, &ack, &e2e);
}

fn spawn_progress(
    shared: Arc<Shared>,
    timeline: Arc<Mutex<Timeline>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (0u64, 0u64, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (acked, consumed) = (
                shared.acked.load(Ordering::Relaxed),
                shared.consumed.load(Ordering::Relaxed),
            );
            let secs = last.2.elapsed().as_secs_f64();
            record_sample(&shared, &timeline);
            eprint!(
                "\r[{:>5.1}s] produced {acked} ({:.0}/s)  consumed {consumed} ({:.0}/s)    ",
                shared.epoch.elapsed().as_secs_f64(),
                (acked - last.0) as f64 / secs,
                (consumed - last.1) as f64 / secs
            );
            last = (acked, consumed, Instant::now());
        }
    })
}

async fn produce(
    id: u32,
    client: Client,
    args: &BenchArgs,
    topic: &str,
    shared: &Arc<Shared>,
) -> Result<u64, String> {
    let config = ProducerConfig {
        buffer_bytes: args
            .buffer_bytes
            .unwrap_or(ProducerConfig::default().buffer_bytes),
        batch_bytes: args.batch_bytes,
        linger: Duration::from_millis(args.linger_ms),
        max_in_flight: args
            .max_in_flight
            .unwrap_or(ProducerConfig::default().max_in_flight),
        idempotent: !args.no_idempotence,
        acks: match args.acks {
            AcksArg::All => spool::client::Acks::All,
            AcksArg::Leader => spool::client::Acks::Leader,
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let mut pace = Pace::new(id, args, shared);
    let (tx, collector) = spawn_ack_collector::<DeliveryFuture, _, _>(shared);
    let hand_over = |group: (DeliveryFuture, SendTimes)| {
        tx.send(group)
            .map_err(|_| "ack collector stopped".to_string())
    };
    let mut seq = 0u64;
    let mut payload = Vec::with_capacity(args.size);
    // The batch the latest messages went to, and their send times: one
    // future and one clock read per batch, not per message.
    let mut group: Option<(DeliveryFuture, SendTimes)> = None;
    loop {
        if pace.idles() {
            if let Some(g) = group.take() {
                hand_over(g)?;
            }
        }
        let Some(sent_ns) = pace.next(seq, shared).await else {
            break;
        };
        write_payload(&mut payload, shared, sent_ns, id, seq);
        let delivery = producer
            .send(topic, None, &payload)
            .await
            .map_err(|e| e.to_string())?;
        match &mut group {
            Some((current, sent)) if current.shares_batch_with(&delivery) => sent.push(sent_ns),
            _ => {
                let mut sent = SendTimes::default();
                sent.push(sent_ns);
                if let Some(g) = group.replace((delivery, sent)) {
                    hand_over(g)?;
                }
            }
        }
        seq += 1;
    }
    if let Some(g) = group.take() {
        hand_over(g)?;
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    drop(tx);
    collector.await.map_err(|e| e.to_string())?;
    Ok(seq)
}

async fn consume(
    id: u32,
    client: Client,
    args: &BenchArgs,
    topic: &str,
    shared: &Arc<Shared>,
    stop: CancellationToken,
) -> (Seen, Result<(), String>) {
    let mut seen = Seen::new(args.producers, args.partitions);
    let result = consume_into(&mut seen, id, client, args, topic, shared, stop).await;
    (seen, result)
}

async fn consume_into(
    seen: &mut Seen,
    id: u32,
    client: Client,
    args: &BenchArgs,
    topic: &str,
    shared: &Arc<Shared>,
    stop: CancellationToken,
) -> Result<(), String> {
    match args.mode {
        Mode::Stream => {
            let positions = (0..args.partitions)
                .filter(|p| p % args.consumers == id)
                .map(|p| (p, 0))
                .collect();
            let mut consumer =
                Consumer::from_positions(client, topic, positions, ConsumerConfig::default());
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = consumer.next_batch() => next,
                };
                match next {
                    Some(Ok(batch)) => check_received(
                        seen,
                        shared,
                        batch.iter().map(|m| (m.partition, &m.value[..])),
                        true,
                    ),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => break,
                }
            }
        }
        Mode::Queue => {
            let options = QueueOptions {
                prefetch: args.deliver_max,
                max_in_flight: args.deliver_max.saturating_mul(4),
                max_wait: Duration::from_millis(100),
                ..QueueOptions::default()
            };
            let mut consumer = QueueConsumer::join(client, "bench", topic, options)
                .await
                .map_err(|e| e.to_string())?;
            let mut acks = None;
            while !stop.is_cancelled() {
                let batch = consumer.receive_batch().await.map_err(|e| e.to_string())?;
                check_received(
                    seen,
                    shared,
                    batch.iter().map(|m| (m.partition, &m.value[..])),
                    false,
                );
                // Every message acked, the acks pipelined with the next delivery.
                let sent = consumer
                    .send_acks(&batch)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(previous) = acks.replace(sent) {
                    previous.await.map_err(|e| e.to_string())?;
                }
            }
            if let Some(last) = acks {
                last.await.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}
