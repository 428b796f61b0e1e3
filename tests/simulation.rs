//! A deterministic simulation of a whole cluster (turmoil): 3 or 5 real
//! brokers (the same `Broker`, control plane, replication and server code
//! as `spool serve`, over `spool::client::transport`), a producer and a
//! queue-group consumer (the real client), and random faults on a
//! simulated network and clock, all on one thread. Everything follows from
//! the seed (`spool::simulation`), so a failing seed fails the same way
//! every time:
//!
//! ```sh
//! SPOOL_SIM_SEED=1234 cargo test --test simulation one_seed -- --nocapture
//! ```
//!
//! Faults: a broker crashed (its process state gone, its files kept, as
//! SIGKILL) and restarted later; a broker cut off from everyone, or from
//! its peers only (clients still reach it), then healed; a link held
//! (nothing crosses it, as a long stall) then released. After the faults
//! everything is healed, the producer stops, the consumer drains the topic
//! and the checks run: every replica's log the same record for record;
//! every acknowledged message stored exactly once, in send order per key;
//! no message whose ack was confirmed delivered again; every stored
//! message acked by the group.
//!
//! `cargo test --test simulation` runs a few dozen seeds; the long mode
//! runs as many as asked: `SPOOL_SIM_SEEDS=2000 cargo test --release --test
//! simulation many_seeds -- --ignored --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::history::{Acked, Consumed, Violation};
use common::sim_net;
use parking_lot::Mutex;
use spool::client::{
    Acks, Client, ConnectOptions, Producer, ProducerConfig, QueueConsumer, QueueOptions, Settled,
    TopicOptions,
};
use spool::cluster::node::{ClusterConfig, ClusterNode};
use spool::cluster::raft::{Network, RaftTimings};
use spool::cluster::replication::ReplicationSettings;
use spool::cluster::state::Member;
use spool::cluster::NodeId;
use spool::protocol::requests::{DescribeGroupRequest, MetadataRequest, MetadataResponse};
use spool::server::{CancellationToken, Server, ServerConfig};
use spool::{Broker, BrokerConfig};

const CLIENT_PORT: u16 = 7070;
const PEER_PORT: u16 = 7170;
const TOPIC: &str = "sim";
const GROUP: &str = "sim-workers";

/// What one simulated run does.
#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    brokers: u64,
    partitions: u32,
    /// Simulated time during which faults are injected.
    faults_for: Duration,
    /// Producer acknowledgement level (the checker holds every run to
    /// `acks=all`'s promise, so `Leader` under faults must fail it).
    acks: Acks,
}

impl Scenario {
    fn new(seed: u64, brokers: u64) -> Scenario {
        Scenario {
            seed,
            brokers,
            partitions: 4,
            faults_for: Duration::from_secs(20),
            acks: Acks::All,
        }
    }
}

/// What a run saw.
#[derive(Debug, Default)]
struct Report {
    violations: Vec<Violation>,
    /// Everything that happened, in order, with simulated times: faults,
    /// acknowledgements, deliveries, acks, and the final logs. Two runs of
    /// one seed must produce the same trace.
    trace: Vec<String>,
    acked: usize,
    consumed: usize,
    faults: usize,
    sim_time: Duration,
}

/// SplitMix64, for the fault schedule (separate from the brokers' own
/// seeded numbers, so adding a fault kind does not shift their draws).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn host(id: u64) -> String {
    format!("broker{id}")
}

fn ip_of(id: u64) -> IpAddr {
    turmoil::lookup(host(id))
}

fn client_addr(id: u64) -> SocketAddr {
    SocketAddr::new(ip_of(id), CLIENT_PORT)
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A shared, ordered log of what happened.
#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    fn note(&self, line: impl Into<String>) {
        let line = line.into();
        if std::env::var_os("SPOOL_SIM_LOG").is_some() {
            eprintln!("{line}");
        }
        self.0.lock().push(line);
    }
}

/// One broker's software: the same assembly as `spool serve` with cluster
/// flags, on the simulated network. Restarted from the same directory
/// after a crash.
async fn broker_software(
    id: u64,
    brokers: u64,
    dir: PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    let ip = ip_of(id);
    let voters = (1..=brokers)
        .map(|i| (NodeId(i), SocketAddr::new(ip_of(i), PEER_PORT).to_string()))
        .collect();
    let transport = sim_net::transport();
    let broker = Broker::open(&dir, BrokerConfig::default())?;
    let config = ClusterConfig {
        me: Member {
            id: NodeId(id),
            client_addr: SocketAddr::new(ip, CLIENT_PORT).to_string(),
            peer_addr: SocketAddr::new(ip, PEER_PORT).to_string(),
        },
        dir: dir.join("cluster"),
        peer_listen: SocketAddr::new(ip, PEER_PORT),
        voters,
        lease_ttl_ms: 1500,
        timings: RaftTimings::default(),
        network: Network {
            transport: transport.clone(),
            ..Network::default()
        },
        replication: ReplicationSettings::default(),
        to_brokers: ConnectOptions {
            transport: transport.clone(),
            ..ConnectOptions::default()
        },
    };
    let node = ClusterNode::start(config, broker.clone()).await?;
    let listener = transport.bind(SocketAddr::new(ip, CLIENT_PORT)).await?;
    let server = Server::with_listener(
        listener,
        broker,
        ServerConfig {
            cluster: Some(node),
            ..ServerConfig::default()
        },
    )?;
    server.run(CancellationToken::new()).await?;
    Ok(())
}

fn client_options() -> ConnectOptions {
    ConnectOptions {
        transport: sim_net::transport(),
        request_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    }
}

/// A client of the cluster, through whichever broker answers.
async fn connect(brokers: u64) -> Client {
    let addrs: Vec<SocketAddr> = (1..=brokers).map(client_addr).collect();
    loop {
        match Client::connect_any(&addrs, client_options()).await {
            Ok(client) => return client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Retries `f` until it succeeds (the cluster may be electing, or a
/// broker down).
async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempts = 0u32;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                attempts += 1;
                if attempts % 50 == 0 {
                    eprintln!("{what}: still failing at {:?}: {e}", now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the clients share with each other and with the harness.
#[derive(Default)]
struct Shared {
    /// Set by the harness once the faults are over and healed.
    healed: tokio::sync::Notify,
    healed_flag: std::sync::atomic::AtomicBool,
    /// Set by the producer once it has stopped and every send settled.
    produced: std::sync::atomic::AtomicBool,
    /// Set by the consumer once it has drained the topic.
    drained: std::sync::atomic::AtomicBool,
    acked: Mutex<Vec<Acked>>,
    consumed: Mutex<Vec<Consumed>>,
    redelivered: Mutex<Vec<Violation>>,
    uncertain: Mutex<HashSet<(u32, u64)>>,
    behind: Mutex<Vec<Violation>>,
}

impl Shared {
    fn is_healed(&self) -> bool {
        self.healed_flag.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn seq_of(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// Creates the topic, then sends sequence numbers under 8 keys, paced,
/// until the faults are over, and waits for every send to settle.
async fn producer(scenario: Scenario, shared: Arc<Shared>, trace: Trace) -> turmoil::Result {
    let client = connect(scenario.brokers).await;
    retry("create topic", || async {
        match client
            .create_topic(
                TOPIC,
                scenario.partitions,
                TopicOptions {
                    replication: Some(3),
                    ..TopicOptions::default()
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("already exists") => {
                trace.note(format!("{:?} create: {e}", now()));
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
    .await;
    trace.note(format!("{:?} topic created", now()));
    let producer = Producer::new(
        client,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(120),
            retries: u32::MAX,
            acks: scenario.acks,
            ..ProducerConfig::default()
        },
    );
    let mut in_flight = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    while !shared.is_healed() {
        let key = format!("k{}", seq % 8).into_bytes();
        match producer.send(TOPIC, Some(&key), seq.to_be_bytes()).await {
            Ok(delivery) => {
                let (shared, trace) = (shared.clone(), trace.clone());
                in_flight.spawn(async move {
                    match delivery.await {
                        Ok(at) => {
                            trace.note(format!(
                                "{:?} acked {seq} at {}/{}",
                                now(),
                                at.partition,
                                at.offset
                            ));
                            shared.acked.lock().push(Acked { key, seq });
                        }
                        Err(e) => trace.note(format!("{:?} failed {seq}: {e}", now())),
                    }
                });
            }
            Err(e) => trace.note(format!("{:?} send {seq}: {e}", now())),
        }
        seq += 1;
        while in_flight.len() > 1_000 {
            in_flight.join_next().await;
        }
        if seq % 32 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = producer.flush().await;
    while in_flight.join_next().await.is_some() {}
    trace.note(format!("{:?} producer done after {seq} sends", now()));
    shared
        .produced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// A queue-group member that acks everything it gets, until the producer
/// is done and nothing has come for 5 s.
async fn consumer(scenario: Scenario, shared: Arc<Shared>, trace: Trace) -> turmoil::Result {
    let client = connect(scenario.brokers).await;
    let options = QueueOptions {
        ack_wait: Duration::from_secs(5),
        max_deliveries: u32::MAX,
        max_in_flight: 4_096,
        prefetch: 512,
        max_wait: Duration::from_millis(200),
        ..QueueOptions::default()
    };
    let mut member = retry("join", || {
        QueueConsumer::join(client.clone(), GROUP, TOPIC, options.clone())
    })
    .await;
    trace.note(format!("{:?} consumer joined", now()));
    let mut confirmed: HashSet<(u32, u64, u64)> = HashSet::new();
    let mut idle_since = now();
    loop {
        let produced = shared.produced.load(std::sync::atomic::Ordering::SeqCst);
        if produced && now().saturating_sub(idle_since) > Duration::from_secs(5) {
            break;
        }
        let batch = match member.receive_batch().await {
            Ok(batch) => batch,
            Err(e) => {
                trace.note(format!("{:?} receive: {e}", now()));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if batch.is_empty() {
            if std::env::var_os("SPOOL_SIM_LOG").is_some() {
                eprintln!("{:?} empty batch", now());
            }
            continue;
        }
        idle_since = now();
        let seqs: Vec<Option<u64>> = batch.iter().map(|m| seq_of(&m.value)).collect();
        for (m, seq) in batch.iter().zip(&seqs) {
            if let Some(seq) = seq {
                if confirmed.contains(&(m.partition, m.offset, *seq)) {
                    shared
                        .redelivered
                        .lock()
                        .push(Violation::RedeliveredAfterAck(*seq));
                }
            }
        }
        let results = match member.ack_many(&batch).await {
            Ok(results) => results,
            Err(e) => {
                trace.note(format!("{:?} ack of {} failed: {e}", now(), batch.len()));
                shared
                    .uncertain
                    .lock()
                    .extend(batch.iter().map(|m| (m.partition, m.offset)));
                continue;
            }
        };
        for ((m, seq), r) in batch.iter().zip(seqs).zip(results) {
            if let (Some(seq), Settled::Ok) = (seq, r) {
                trace.note(format!(
                    "{:?} consumed {seq} at {}/{}",
                    now(),
                    m.partition,
                    m.offset
                ));
                confirmed.insert((m.partition, m.offset, seq));
                shared.consumed.lock().push(Consumed {
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
                    seq,
                });
            }
        }
    }
    trace.note(format!("{:?} consumer drained", now()));
    shared
        .drained
        .store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// Every broker's metadata, once each answers.
async fn views(brokers: u64) -> Option<Vec<MetadataResponse>> {
    let mut views = Vec::new();
    for id in 1..=brokers {
        let client = Client::connect_with(client_addr(id), client_options())
            .await
            .ok()?;
        views.push(client.call(&MetadataRequest).await.ok()?);
    }
    Some(views)
}

/// Why the cluster is not yet settled: every partition with one leader
/// every broker agrees on, every replica in sync, no follower lag.
fn unsettled(views: &[MetadataResponse], partitions: u32) -> Option<String> {
    for p in 0..partitions {
        let of = |m: &MetadataResponse| {
            m.topics
                .iter()
                .find(|t| t.name == TOPIC)
                .and_then(|t| t.partitions.iter().find(|x| x.partition == p))
                .cloned()
        };
        let first = of(&views[0])?;
        let leader = first.leader?;
        for m in views {
            let x = of(m)?;
            if x.leader != Some(leader) || x.leader_epoch != first.leader_epoch {
                return Some(format!("{p}: views differ"));
            }
            if x.replicas.iter().any(|r| !r.in_sync) {
                return Some(format!("{p}: not all in sync"));
            }
        }
        let at_leader = of(&views[(leader - 1) as usize])?;
        if at_leader
            .replicas
            .iter()
            .any(|r| r.lag.is_none_or(|l| l > 0))
        {
            return Some(format!("{p}: lagging {:?}", at_leader.replicas));
        }
    }
    None
}

/// After the drain: waits until the cluster has settled, then checks at
/// each partition's leader that the group has settled every message.
async fn auditor(scenario: Scenario, shared: Arc<Shared>, trace: Trace) -> turmoil::Result {
    while !shared.drained.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let views = retry("settle", || async {
        let views = views(scenario.brokers)
            .await
            .ok_or_else(|| "a broker does not answer".to_string())?;
        match unsettled(&views, scenario.partitions) {
            None => Ok(views),
            Some(why) => Err(why),
        }
    })
    .await;
    trace.note(format!("{:?} settled", now()));
    for p in 0..scenario.partitions {
        let leader = views[0]
            .topics
            .iter()
            .find(|t| t.name == TOPIC)
            .and_then(|t| t.partitions.iter().find(|x| x.partition == p))
            .and_then(|x| x.leader)
            .ok_or("no leader")?;
        let client = Client::connect_with(client_addr(leader), client_options()).await?;
        let described = client
            .call(&DescribeGroupRequest {
                group: GROUP.into(),
            })
            .await?;
        let part = described
            .partitions
            .iter()
            .find(|x| x.partition == p)
            .ok_or("partition missing from the group")?;
        trace.note(format!(
            "group {p}: position {} end {}",
            part.position, part.end
        ));
        if part.position != part.end {
            shared.behind.lock().push(Violation::GroupBehind {
                partition: p,
                position: part.position,
                end: part.end,
            });
        }
    }
    Ok(())
}

/// Faults, drawn from the seed. At most one broker is faulty at a time
/// with 3 brokers, two with 5, so the cluster can make progress most of
/// the time; safety is checked whatever happens.
#[derive(Debug)]
enum Fault {
    /// Crashed; restarted at the end.
    Crashed(u64),
    /// Cut off from every other host (brokers and clients).
    Isolated(u64),
    /// Cut off from the other brokers; clients still reach it.
    CutFromPeers(u64),
    /// Nothing crosses the links between these two brokers.
    Held(u64, u64),
}

impl Fault {
    fn broker(&self) -> u64 {
        match self {
            Fault::Crashed(b) | Fault::Isolated(b) | Fault::CutFromPeers(b) => *b,
            Fault::Held(a, _) => *a,
        }
    }
}

const CLIENTS: [&str; 3] = ["producer", "consumer", "auditor"];

fn others(brokers: u64, b: u64) -> impl Iterator<Item = String> {
    (1..=brokers).filter(move |o| *o != b).map(host)
}

fn inject(sim: &mut turmoil::Sim<'_>, brokers: u64, fault: &Fault) {
    match *fault {
        Fault::Crashed(b) => sim.crash(host(b)),
        Fault::Isolated(b) => {
            for o in others(brokers, b).chain(CLIENTS.iter().map(|c| c.to_string())) {
                sim.partition(host(b), o);
            }
        }
        Fault::CutFromPeers(b) => {
            for o in others(brokers, b) {
                sim.partition(host(b), o);
            }
        }
        Fault::Held(a, b) => sim.hold(host(a), host(b)),
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, brokers: u64, fault: &Fault) {
    match *fault {
        Fault::Crashed(b) => sim.bounce(host(b)),
        Fault::Isolated(b) => {
            for o in others(brokers, b).chain(CLIENTS.iter().map(|c| c.to_string())) {
                sim.repair(host(b), o);
            }
        }
        Fault::CutFromPeers(b) => {
            for o in others(brokers, b) {
                sim.repair(host(b), o);
            }
        }
        Fault::Held(a, b) => sim.release(host(a), host(b)),
    }
}

/// Where the simulation's files go: memory if the machine has a tmpfs
/// (the brokers fsync; on a real disk that is most of the run time).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("spool-sim").tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}

/// Log lines stamped with simulated time (the wall clock says nothing
/// about a simulation, and differs between two runs of one seed).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:?}", turmoil::sim_elapsed().unwrap_or_default())
    }
}

/// Runs one scenario and checks its history.
fn run(scenario: &Scenario) -> Report {
    if let Ok(filter) = std::env::var("SPOOL_SIM_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
    let _sim_thread = spool::simulation::enter(scenario.seed, turmoil::sim_elapsed);
    let root = scratch();
    let trace = Trace::default();
    let shared = Arc::new(Shared::default());
    let mut report = Report::default();
    {
        let mut sim = turmoil::Builder::new()
            .rng_seed(scenario.seed)
            .simulation_duration(Duration::from_secs(600))
            .min_message_latency(Duration::from_micros(100))
            .max_message_latency(Duration::from_millis(5))
            .build();
        for id in 1..=scenario.brokers {
            let dir = root.path().join(host(id));
            let brokers = scenario.brokers;
            sim.host(host(id), move || broker_software(id, brokers, dir.clone()));
        }
        sim.client(
            "producer",
            producer(scenario.clone(), shared.clone(), trace.clone()),
        );
        sim.client(
            "consumer",
            consumer(scenario.clone(), shared.clone(), trace.clone()),
        );
        sim.client(
            "auditor",
            auditor(scenario.clone(), shared.clone(), trace.clone()),
        );

        let mut rng = Rng(scenario.seed ^ 0x5EED_F417);
        let max_faulty = if scenario.brokers >= 5 { 2 } else { 1 };
        let mut active: Vec<(Fault, Duration)> = Vec::new();
        // Faults start once the topic exists and traffic flows.
        let faults_from = Duration::from_secs(5);
        let faults_until = faults_from + scenario.faults_for;
        let mut next_fault = faults_from + rng.millis(0, 1_000);
        let mut healed = false;
        loop {
            let done = sim.step().unwrap_or_else(|e| {
                panic!(
                    "seed {}: a host failed at {:?}: {e}",
                    scenario.seed,
                    sim.elapsed()
                )
            });
            if done {
                break;
            }
            let t = sim.elapsed();
            // Heal what is due.
            let mut i = 0;
            while i < active.len() {
                if active[i].1 <= t || (t >= faults_until && !healed) {
                    let (fault, _) = active.remove(i);
                    trace.note(format!("{t:?} heal {fault:?}"));
                    heal(&mut sim, scenario.brokers, &fault);
                } else {
                    i += 1;
                }
            }
            if t >= faults_until && !healed {
                healed = true;
                trace.note(format!("{t:?} faults over"));
                shared
                    .healed_flag
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                shared.healed.notify_waiters();
            }
            if !healed && t >= next_fault {
                next_fault = t + rng.millis(500, 3_000);
                if active.len() < max_faulty {
                    let busy: BTreeSet<u64> = active
                        .iter()
                        .flat_map(|(f, _)| match f {
                            Fault::Held(a, b) => vec![*a, *b],
                            f => vec![f.broker()],
                        })
                        .collect();
                    let free: Vec<u64> = (1..=scenario.brokers)
                        .filter(|b| !busy.contains(b))
                        .collect();
                    if free.len() >= 2 {
                        let b = free[rng.below(free.len() as u64) as usize];
                        let fault = match rng.below(4) {
                            0 => Fault::Crashed(b),
                            1 => Fault::Isolated(b),
                            2 => Fault::CutFromPeers(b),
                            _ => {
                                let rest: Vec<u64> =
                                    free.iter().copied().filter(|o| *o != b).collect();
                                Fault::Held(b, rest[rng.below(rest.len() as u64) as usize])
                            }
                        };
                        let lasts = rng.millis(300, 4_000);
                        trace.note(format!("{t:?} inject {fault:?} for {lasts:?}"));
                        inject(&mut sim, scenario.brokers, &fault);
                        report.faults += 1;
                        active.push((fault, t + lasts));
                    }
                }
            }
        }
        report.sim_time = sim.elapsed();
    }
    // The simulation (and every broker in it) is gone: read the copies.
    let copies: Vec<Vec<Vec<common::ReadRecord>>> = (1..=scenario.brokers)
        .map(|id| {
            let broker = Broker::open(root.path().join(host(id)), BrokerConfig::default())
                .unwrap_or_else(|e| panic!("seed {}: open broker {id}: {e}", scenario.seed));
            let logs = (0..scenario.partitions)
                .map(|p| common::read_all(&broker, TOPIC, p))
                .collect();
            broker.close().expect("close");
            logs
        })
        .collect();
    let mut violations = Vec::new();
    // Replicas: the topic's 3 copies of each partition are the same.
    let mut holders: BTreeMap<u32, Vec<(u64, &Vec<common::ReadRecord>)>> = BTreeMap::new();
    for (i, copy) in copies.iter().enumerate() {
        for (p, records) in copy.iter().enumerate() {
            holders
                .entry(p as u32)
                .or_default()
                .push((i as u64 + 1, records));
        }
    }
    let stored: Vec<Consumed> = (0..scenario.partitions)
        .flat_map(|p| {
            // The longest copy stands for the partition; the others must
            // equal it (a broker holding no copy has an empty log).
            let copies = &holders[&p];
            let longest = copies
                .iter()
                .max_by_key(|(_, r)| r.len())
                .map(|(_, r)| (*r).clone())
                .unwrap_or_default();
            let equal = copies.iter().filter(|(_, r)| **r == longest).count();
            if equal < 3 {
                let lens: Vec<(u64, usize)> = copies.iter().map(|(b, r)| (*b, r.len())).collect();
                panic!(
                    "seed {}: partition {p}: only {equal} copies agree: {lens:?}",
                    scenario.seed
                );
            }
            longest.into_iter().filter_map(move |r| {
                Some(Consumed {
                    partition: p,
                    offset: r.offset,
                    key: r.key.clone().unwrap_or_default(),
                    seq: seq_of(&r.value)?,
                })
            })
        })
        .collect();
    for s in &stored {
        trace.note(format!("stored {} at {}/{}", s.seq, s.partition, s.offset));
    }
    let acked = shared.acked.lock().clone();
    violations.extend(common::history::check(&acked, &stored));
    let at: HashMap<(u32, u64), u64> = stored
        .iter()
        .map(|c| ((c.partition, c.offset), c.seq))
        .collect();
    let consumed = shared.consumed.lock().clone();
    for c in &consumed {
        if at.get(&(c.partition, c.offset)) != Some(&c.seq) {
            violations.push(Violation::AckedElsewhere(c.seq));
        }
    }
    violations.extend(shared.redelivered.lock().iter().cloned());
    violations.extend(shared.behind.lock().iter().cloned());
    let by_consumer: HashSet<(u32, u64)> =
        consumed.iter().map(|c| (c.partition, c.offset)).collect();
    let uncertain = shared.uncertain.lock().clone();
    for s in &stored {
        let key = (s.partition, s.offset);
        if !by_consumer.contains(&key) && !uncertain.contains(&key) {
            violations.push(Violation::NeverAcked(s.seq));
        }
    }
    report.violations = violations;
    report.acked = acked.len();
    report.consumed = consumed.len();
    report.trace = trace.0.lock().clone();
    report
}

fn check_seed(scenario: &Scenario) -> Report {
    let started = std::time::Instant::now();
    let report = run(scenario);
    eprintln!(
        "seed {} ({} brokers): {} faults, {} acknowledged, {} consumed, {:?} simulated in {:?}, {} violations",
        scenario.seed,
        scenario.brokers,
        report.faults,
        report.acked,
        report.consumed,
        report.sim_time,
        started.elapsed(),
        report.violations.len()
    );
    report
}

/// Fails with the first violations (a broken run can have thousands).
fn assert_sound(scenario: &Scenario, report: &Report) {
    if report.violations.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    for v in &report.violations {
        *kinds.entry(kind(v)).or_default() += 1;
    }
    panic!(
        "seed {} with {} brokers: {} violations {kinds:?}, the first: {:?}\nreplay: SPOOL_SIM_SEED={} SPOOL_SIM_BROKERS={} SPOOL_SIM_LOG=1 cargo test --test simulation one_seed -- --nocapture",
        scenario.seed,
        scenario.brokers,
        report.violations.len(),
        &report.violations[..report.violations.len().min(10)],
        scenario.seed,
        scenario.brokers,
    );
}

fn kind(v: &Violation) -> &'static str {
    match v {
        Violation::Lost(_) => "lost",
        Violation::Duplicated(_) => "duplicated",
        Violation::Reordered { .. } => "reordered",
        Violation::OffsetsBackwards { .. } => "offsets backwards",
        Violation::RedeliveredAfterAck(_) => "redelivered after ack",
        Violation::NeverAcked(_) => "never acked",
        Violation::AckedElsewhere(_) => "acked elsewhere",
        Violation::GroupBehind { .. } => "group behind",
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One seed, `SPOOL_SIM_SEED` (default 1), with `SPOOL_SIM_BROKERS`
/// brokers (default 3): the way to replay a failure.
#[test]
fn one_seed() {
    let scenario = Scenario::new(
        env_u64("SPOOL_SIM_SEED").unwrap_or(1),
        env_u64("SPOOL_SIM_BROKERS").unwrap_or(3),
    );
    let report = check_seed(&scenario);
    if let Some(path) = std::env::var_os("SPOOL_SIM_TRACE_FILE") {
        std::fs::write(path, report.trace.join("\n")).expect("write the trace");
    }
    assert_sound(&scenario, &report);
}

/// The point of the simulation: a seed replays exactly. Two runs of one
/// seed see the same faults at the same simulated times, the same
/// acknowledgements, deliveries and acks in the same order, and end with
/// the same logs.
#[test]
fn a_seed_replays_exactly() {
    let scenario = Scenario {
        faults_for: Duration::from_secs(10),
        ..Scenario::new(7, 3)
    };
    let first = check_seed(&scenario);
    let second = check_seed(&scenario);
    assert_sound(&scenario, &first);
    if let Some(i) = (0..first.trace.len().max(second.trace.len()))
        .find(|&i| first.trace.get(i) != second.trace.get(i))
    {
        let around = |t: &[String]| t[i.saturating_sub(3)..(i + 3).min(t.len())].join("\n  ");
        panic!(
            "seed {}: the runs part at event {i} of {}/{}:\nfirst:\n  {}\nsecond:\n  {}",
            scenario.seed,
            first.trace.len(),
            second.trace.len(),
            around(&first.trace),
            around(&second.trace)
        );
    }
    assert!(first.acked > 1_000, "{} acknowledged", first.acked);
    assert!(first.faults > 0);
}
