//! Replicated partitions on real `spool serve` processes: followers copy
//! their leader byte for byte, `acks=all` waits for them, a dead leader's
//! partitions move to an in-sync follower with a new leader epoch, and a
//! returning replica cuts its log where its history left the leader's.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{eventually, metadata, Cluster};
use common::ReadRecord;
use spool::client::{Client, Producer, ProducerConfig, TopicOptions};
use spool::protocol::requests::{MetadataResponse, WirePartitionLeader};
use spool::{Broker, BrokerConfig};

/// One cluster at a time: two cores run every broker and client.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn replicated(n: u32) -> TopicOptions {
    TopicOptions {
        replication: Some(n),
        ..TopicOptions::default()
    }
}

fn partition<'a>(m: &'a MetadataResponse, topic: &str, p: u32) -> &'a WirePartitionLeader {
    m.topics
        .iter()
        .find(|t| t.name == topic)
        .and_then(|t| t.partitions.iter().find(|x| x.partition == p))
        .unwrap_or_else(|| panic!("no {topic}/{p} in metadata"))
}

/// Waits until every partition of `topic` has a leader and all
/// `replicas` replicas in sync, with no lag the leader knows of.
async fn fully_replicated(cluster: &Cluster, topic: &str, partitions: u32, replicas: usize) {
    replicated_within(cluster, topic, partitions, replicas, 0).await
}

/// Like [`fully_replicated`], but each follower may be up to `max_lag`
/// records behind (a producer still running).
async fn replicated_within(
    cluster: &Cluster,
    topic: &str,
    partitions: u32,
    replicas: usize,
    max_lag: u64,
) {
    eventually(Duration::from_secs(30), "every replica in sync", || async {
        // Only a partition's leader knows its followers' lag: ask all.
        let mut lagging = Vec::new();
        let mut views = Vec::new();
        for b in &cluster.brokers {
            let Ok(client) = Client::connect(b.addr).await else {
                continue;
            };
            if let Ok(m) = metadata(&client).await {
                views.push(m);
            }
        }
        if views.len() < cluster.brokers.len() {
            return Err(format!("{} brokers answer", views.len()));
        }
        let first = &views[0];
        for p in 0..partitions {
            let wanted = partition(first, topic, p);
            // Every broker's view agrees (one just back from a pause
            // answers from its stale state until it catches up).
            let in_sync_everywhere = views.iter().all(|m| {
                let x = partition(m, topic, p);
                x.leader == wanted.leader
                    && x.leader_epoch == wanted.leader_epoch
                    && x.replicas.iter().filter(|r| r.in_sync).count() >= replicas
            });
            if !in_sync_everywhere {
                lagging.push(format!("{p}: views differ"));
            }
            let Some(leader) = wanted.leader else {
                lagging.push(format!("{p}: no leader"));
                continue;
            };
            let in_sync = wanted.replicas.iter().filter(|r| r.in_sync).count();
            if in_sync < replicas {
                lagging.push(format!("{p}: {in_sync} in sync"));
            }
            let Some(at_leader) = views
                .iter()
                .map(|m| partition(m, topic, p))
                .find(|x| x.replicas.iter().any(|r| r.lag.is_some()) && x.leader == Some(leader))
            else {
                lagging.push(format!("{p}: leader {leader} not heard"));
                continue;
            };
            if at_leader
                .replicas
                .iter()
                .any(|r| r.lag.is_none_or(|lag| lag > max_lag))
            {
                lagging.push(format!("{p}: lag {:?}", at_leader.replicas));
            }
        }
        lagging
            .is_empty()
            .then_some(())
            .ok_or_else(|| lagging.join("; "))
    })
    .await;
}

/// Each broker's copy of every partition of `topic`, read from its data
/// directory once the brokers are stopped.
fn copies(cluster: &Cluster, topic: &str, partitions: u32) -> Vec<Vec<Vec<ReadRecord>>> {
    cluster
        .brokers
        .iter()
        .map(|b| {
            let broker = Broker::open(&b.dir, BrokerConfig::default()).expect("open a copy");
            let logs = (0..partitions)
                .map(|p| common::read_all(&broker, topic, p))
                .collect();
            broker.close().expect("close");
            logs
        })
        .collect()
}

/// acks=all with three copies: every acknowledged message is on every
/// replica, the logs are the same record for record at the same offsets,
/// and the partition metadata shows leader, epoch and in-sync replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_holds_every_acknowledged_message_at_the_same_offset() {
    let _serial = SERIAL.lock().await;
    const PARTITIONS: u32 = 3;
    const N: u64 = 3_000;
    let mut cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("r", PARTITIONS, replicated(3))
        .await
        .expect("create");
    let m = metadata(&admin).await.expect("metadata");
    for p in 0..PARTITIONS {
        let x = partition(&m, "r", p);
        assert_eq!(x.replicas.len(), 3, "{x:?}");
        assert!(x.leader_epoch >= 1, "{x:?}");
        assert_eq!(x.leader, Some(x.replicas[0].broker), "{x:?}");
    }
    let producer = Producer::new(cluster.client(1).await, ProducerConfig::default());
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..N {
        let key = format!("k{}", i % 31);
        let send = producer.send("r", Some(key.as_bytes()), i.to_be_bytes());
        pending.push(send.await.expect("send"));
    }
    producer.flush().await.expect("flush");
    let mut acked: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for delivery in pending {
        let stored = delivery.await.expect("acknowledged");
        acked
            .entry(stored.partition)
            .or_default()
            .push(stored.offset);
    }
    eprintln!(
        "{N} messages acknowledged by 3 replicas in {:?}",
        started.elapsed()
    );
    fully_replicated(&cluster, "r", PARTITIONS, 3).await;
    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "r", PARTITIONS);
    let total: usize = copies[0].iter().map(Vec::len).sum();
    assert_eq!(total as u64, N, "broker 1 holds {total} of {N} messages");
    for (i, copy) in copies.iter().enumerate().skip(1) {
        for p in 0..PARTITIONS as usize {
            assert_eq!(
                copy[p].len(),
                copies[0][p].len(),
                "broker {} partition {p}",
                i + 1
            );
            assert!(
                copy[p] == copies[0][p],
                "broker {} partition {p} differs",
                i + 1
            );
        }
    }
    for (p, offsets) in acked {
        for offset in offsets {
            assert!(
                copies[0][p as usize].iter().any(|r| r.offset == offset),
                "acknowledged {p}@{offset} missing"
            );
        }
    }
}

/// What a kill loop saw.
struct KillLoop {
    /// Per kill of a leader: from the SIGKILL to the first acknowledged
    /// produce on each partition it led, at its new leader.
    failovers: Vec<Duration>,
    /// The checker's findings over the acknowledged and the stored.
    violations: Vec<common::history::Violation>,
    /// Acknowledged messages.
    acked: usize,
    /// Messages the queue group's consumer acked (confirmed).
    consumed: usize,
}

fn seq_of(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

/// Three brokers, a topic of 6 partitions with 3 replicas; a producer with
/// acks=all and a queue group consumer that acks everything run flat out
/// while `kills` times a broker is SIGKILLed (the leader of some partition
/// 3 times in 4) and restarted. Afterwards the consumer drains the topic.
/// Violations: an acknowledged message lost, doubled or out of order in
/// the final logs; a message the consumer acked (confirmed) delivered
/// again, or not in the final log where it was delivered from; a stored
/// message the consumer never acked.
async fn kill_loop(kills: usize) -> KillLoop {
    use common::history::{Consumed, Violation};
    use spool::client::{QueueConsumer, QueueOptions, Settled};
    use std::collections::HashSet;
    use std::sync::Arc;

    const PARTITIONS: u32 = 6;
    let mut cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("h", PARTITIONS, replicated(3))
        .await
        .expect("create");
    fully_replicated(&cluster, "h", PARTITIONS, 3).await;

    let stop = tokio_util::sync::CancellationToken::new();
    // Paced a little: two cores also run three brokers.
    let (producer, acked) = spawn_producer(
        cluster.client(1).await,
        "h",
        16,
        (64, Duration::from_millis(2)),
        stop.clone(),
    );
    // What the consumer acked, confirmed; and what was delivered again
    // after that.
    let consumed: Arc<parking_lot::Mutex<Vec<Consumed>>> = Arc::default();
    let redelivered: Arc<parking_lot::Mutex<Vec<Violation>>> = Arc::default();
    // Messages whose ack failed: applied or not, nobody knows.
    let uncertain: Arc<parking_lot::Mutex<HashSet<(u32, u64)>>> = Arc::default();
    // Set once the producer has stopped: the consumer drains what is left
    // (until nothing comes for 5 s) and returns.
    let drain = tokio_util::sync::CancellationToken::new();
    let consumer = {
        let client = cluster.client(2).await;
        let (consumed, redelivered, uncertain, drain) = (
            consumed.clone(),
            redelivered.clone(),
            uncertain.clone(),
            drain.clone(),
        );
        tokio::spawn(async move {
            let options = QueueOptions {
                ack_wait: Duration::from_secs(5),
                max_deliveries: u32::MAX,
                max_in_flight: 4_096,
                prefetch: 512,
                max_wait: Duration::from_millis(200),
                ..QueueOptions::default()
            };
            let mut member = eventually(Duration::from_secs(30), "join", || async {
                QueueConsumer::join(client.clone(), "h-workers", "h", options.clone())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            let mut confirmed: HashSet<(u32, u64, u64)> = HashSet::new();
            let mut idle_since = Instant::now();
            loop {
                if drain.is_cancelled() && idle_since.elapsed() > Duration::from_secs(5) {
                    return;
                }
                let batch = match member.receive_batch().await {
                    Ok(batch) => batch,
                    Err(e) => {
                        eprintln!("receive: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if batch.is_empty() {
                    continue;
                }
                idle_since = Instant::now();
                let seqs: Vec<Option<u64>> = batch.iter().map(|m| seq_of(&m.value)).collect();
                for (m, seq) in batch.iter().zip(&seqs) {
                    if let Some(seq) = seq {
                        if confirmed.contains(&(m.partition, m.offset, *seq)) {
                            redelivered
                                .lock()
                                .push(Violation::RedeliveredAfterAck(*seq));
                        }
                    }
                }
                let results = match member.ack_many(&batch).await {
                    Ok(results) => results,
                    Err(e) => {
                        // Not confirmed (a leader died under it): delivered
                        // again by the new one.
                        eprintln!("ack of {} failed: {e}", batch.len());
                        uncertain
                            .lock()
                            .extend(batch.iter().map(|m| (m.partition, m.offset)));
                        continue;
                    }
                };
                for ((m, seq), r) in batch.iter().zip(seqs).zip(results) {
                    if let (Some(seq), Settled::Ok) = (seq, r) {
                        confirmed.insert((m.partition, m.offset, seq));
                        consumed.lock().push(Consumed {
                            partition: m.partition,
                            offset: m.offset,
                            key: m.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
                            seq,
                        });
                    }
                }
            }
        })
    };

    let probe = {
        let addrs: Vec<std::net::SocketAddr> = cluster.brokers.iter().map(|b| b.addr).collect();
        let options = spool::client::ConnectOptions {
            request_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        Client::connect_any(&addrs, options)
            .await
            .expect("probe client")
    };
    let mut failovers = Vec::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_random = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    for kill in 0..kills {
        let view = metadata(&probe).await.expect("metadata");
        let leaders: Vec<Option<u64>> = (0..PARTITIONS)
            .map(|p| partition(&view, "h", p).leader)
            .collect();
        let victim = if next_random(4) < 3 {
            leaders[next_random(PARTITIONS as u64) as usize].unwrap_or(1)
        } else {
            next_random(3) + 1
        };
        let led: Vec<u32> = (0..PARTITIONS)
            .filter(|p| leaders[*p as usize] == Some(victim))
            .collect();
        let i = (victim - 1) as usize;
        cluster.brokers[i].kill();
        let killed_at = Instant::now();
        if std::env::var_os("SPOOL_TEST_LOG").is_some() {
            eprintln!(
                "kill {kill}: broker {victim} killed at {:?}",
                std::time::SystemTime::now()
            );
        }
        if !led.is_empty() {
            for &p in &led {
                loop {
                    let probe_batch = common::cluster::batch("probe");
                    let tried_at = killed_at.elapsed();
                    match probe.produce_batch("h", p, probe_batch).await {
                        Ok(_) => break,
                        Err(e) if killed_at.elapsed() < Duration::from_secs(30) => {
                            if std::env::var_os("SPOOL_TEST_LOG").is_some() {
                                eprintln!("probe {p} at {tried_at:?}: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await
                        }
                        Err(e) => {
                            let other = cluster.client((i + 1) % 3).await;
                            let view = metadata(&other).await;
                            panic!("kill {kill} of broker {victim}: {p} has no leader 30 s after the kill: {e}; metadata: {view:?}")
                        }
                    }
                }
            }
            failovers.push(killed_at.elapsed());
            let controller = view.controller;
            eprintln!(
                "kill {kill}: broker {victim} (controller: {}) led {led:?}; writes resumed after {:?}",
                controller == Some(victim),
                killed_at.elapsed()
            );
        }
        cluster.restart(i);
        // Under load a follower is rarely exactly at the leader's end.
        replicated_within(&cluster, "h", PARTITIONS, 3, 2_000).await;
        // One failure at a time: the next kill waits until every voter has
        // heard the restarted broker's heartbeats and it has heard theirs
        // (brokers beat every 300 ms). A new controller times each lease
        // from the last heartbeat it heard and a whole TTL from its
        // election for one it never heard, so a controller killed right
        // after another broker restarted fails over a TTL later (seen:
        // 2.6 s, kills 92 ms apart): two failures, not one.
        tokio::time::sleep(2 * spool::cluster::raft::LEASE_HEARTBEAT).await;
    }
    stop.cancel();
    producer.await.expect("producer");
    drain.cancel();
    consumer.await.expect("consumer");
    fully_replicated(&cluster, "h", PARTITIONS, 3).await;
    // Every message settled, as each partition's leader has it: the group's
    // position (all below is settled) is the partition's end. (An ack that
    // failed may or may not have been applied; this says it was, or the
    // message came again and was acked.)
    let mut behind = Vec::new();
    let view = metadata(&probe).await.expect("metadata");
    for p in 0..PARTITIONS {
        let leader = partition(&view, "h", p).leader.expect("a leader");
        let at_leader = Client::connect(cluster.brokers[common::cluster::index_of(leader)].addr)
            .await
            .expect("connect to the leader");
        let described = at_leader
            .call(&spool::protocol::requests::DescribeGroupRequest {
                group: "h-workers".into(),
            })
            .await
            .expect("describe the group");
        let part = described
            .partitions
            .iter()
            .find(|x| x.partition == p)
            .expect("the partition");
        if part.position != part.end {
            behind.push(common::history::Violation::GroupBehind {
                partition: p,
                position: part.position,
                end: part.end,
            });
        }
    }
    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "h", PARTITIONS);
    for (i, copy) in copies.iter().enumerate().skip(1) {
        for p in 0..PARTITIONS as usize {
            assert!(
                copy[p] == copies[0][p],
                "broker {} partition {p} differs from broker 1: {} vs {} records",
                i + 1,
                copy[p].len(),
                copies[0][p].len()
            );
        }
    }
    let stored = stored_history(&copies[0]);
    let acked = acked.lock().clone();
    let mut violations = common::history::check(&acked, &stored);
    // What the consumer read was acknowledged-safe: it is in the final log
    // at the offset it was read from.
    let at: std::collections::HashMap<(u32, u64), u64> = stored
        .iter()
        .map(|c| ((c.partition, c.offset), c.seq))
        .collect();
    let consumed = consumed.lock().clone();
    for c in &consumed {
        if at.get(&(c.partition, c.offset)) != Some(&c.seq) {
            violations.push(common::history::Violation::AckedElsewhere(c.seq));
        }
    }
    violations.extend(redelivered.lock().iter().cloned());
    violations.extend(behind);
    // The consumer acked every stored message.
    let acked_by_consumer: HashSet<(u32, u64)> =
        consumed.iter().map(|c| (c.partition, c.offset)).collect();
    let uncertain = uncertain.lock().clone();
    for s in &stored {
        let key = (s.partition, s.offset);
        if !acked_by_consumer.contains(&key) && !uncertain.contains(&key) {
            violations.push(common::history::Violation::NeverAcked(s.seq));
        }
    }
    KillLoop {
        failovers,
        violations,
        acked: acked.len(),
        consumed: consumed.len(),
    }
}

/// An idempotent producer with acks=all (retrying for up to a minute)
/// sending 8-byte sequence numbers from 0 to `topic` under `keys` keys
/// until `stop`, at most 2,000 unconfirmed, sleeping `pace.1` every
/// `pace.0` messages; returns its task and what was acknowledged.
fn spawn_producer(
    client: Client,
    topic: &'static str,
    keys: u64,
    pace: (u64, Duration),
    stop: tokio_util::sync::CancellationToken,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<parking_lot::Mutex<Vec<common::history::Acked>>>,
) {
    use common::history::Acked;
    let acked: std::sync::Arc<parking_lot::Mutex<Vec<Acked>>> = Default::default();
    let config = ProducerConfig {
        delivery_timeout: Duration::from_secs(60),
        retries: u32::MAX,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config);
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                let key = format!("k{}", seq % keys).into_bytes();
                match producer.send(topic, Some(&key), seq.to_be_bytes()).await {
                    Ok(delivery) => {
                        let acked = acked.clone();
                        in_flight.spawn(async move {
                            if delivery.await.is_ok() {
                                acked.lock().push(Acked { key, seq });
                            }
                        });
                    }
                    Err(e) => eprintln!("send: {e}"),
                }
                seq += 1;
                while in_flight.len() > 2_000 {
                    in_flight.join_next().await;
                }
                if seq % pace.0 == 0 {
                    tokio::time::sleep(pace.1).await;
                }
            }
            let _ = producer.flush().await;
            while in_flight.join_next().await.is_some() {}
        })
    };
    (task, acked)
}

/// Every producer message in a broker's copy, in log order per partition.
fn stored_history(copy: &[Vec<ReadRecord>]) -> Vec<common::history::Consumed> {
    copy.iter()
        .enumerate()
        .flat_map(|(p, records)| {
            records.iter().filter_map(move |r| {
                Some(common::history::Consumed {
                    partition: p as u32,
                    offset: r.offset,
                    key: r.key.clone().unwrap_or_default(),
                    seq: seq_of(&r.value)?,
                })
            })
        })
        .collect()
}

/// The headline: brokers SIGKILLed and restarted again and again under
/// load (50 times, mostly a leader; `SPOOL_REPLICATION_KILLS` for more)
/// lose no message acknowledged with acks=all, store none twice, keep
/// every partition's replicas identical; the queue group acks every stored
/// message and never gets one again once its ack was confirmed; each
/// failover takes under 2 s at the median.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_killed_fifty_times_under_load_lose_no_acknowledged_message() {
    let _serial = SERIAL.lock().await;
    let kills = std::env::var("SPOOL_REPLICATION_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(50);
    let report = kill_loop(kills).await;
    let mut sorted = report.failovers.clone();
    sorted.sort();
    let pct = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{kills} kills, {} of a leader: failover p50 {:?}, p99 {:?}, max {:?}; {} acknowledged, {} acked by the queue group",
        sorted.len(),
        pct(0.5),
        pct(0.99),
        sorted.last().copied().unwrap_or_default(),
        report.acked,
        report.consumed
    );
    assert!(report.acked > 10_000, "only {} acknowledged", report.acked);
    assert!(report.consumed > 0, "the queue group acked nothing");
    assert!(
        report.violations.is_empty(),
        "{} violations, first: {:?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(10)]
    );
    assert!(
        pct(0.5) < Duration::from_secs(2),
        "median failover {:?}",
        pct(0.5)
    );
}

/// A batch of 8-byte sequence numbers under `key`.
fn seq_batch(key: &str, seqs: std::ops::Range<u64>) -> bytes::Bytes {
    let mut b = spool::protocol::BatchBuilder::new();
    for seq in seqs {
        b.push(0, Some(key.as_bytes()), &seq.to_be_bytes(), &[])
            .expect("push");
    }
    b.finish().expect("batch")
}

fn acked_range(key: &str, seqs: std::ops::Range<u64>) -> Vec<common::history::Acked> {
    seqs.map(|seq| common::history::Acked {
        key: key.as_bytes().to_vec(),
        seq,
    })
    .collect()
}

/// An isolatable 3-broker cluster with a 1-partition topic of 3 replicas,
/// all in sync; with its partition's metadata.
async fn one_partition(topic: &str) -> (Cluster, Client, WirePartitionLeader) {
    let cluster = Cluster::start_isolatable(3, &[]);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic(topic, 1, replicated(3))
        .await
        .expect("create");
    fully_replicated(&cluster, topic, 1, 3).await;
    let p = partition(&metadata(&admin).await.expect("metadata"), topic, 0).clone();
    (cluster, admin, p)
}

/// Produces `batches` batches of 5 sequence numbers from `first` under
/// `key` with acks=all through `client`, each retried for up to 10 s (a
/// leader may be changing); returns what was acknowledged.
async fn produce_all(
    client: &Client,
    topic: &str,
    key: &str,
    first: u64,
    batches: u64,
) -> Vec<common::history::Acked> {
    let mut acked = Vec::new();
    for i in 0..batches {
        let seqs = first + i * 5..first + i * 5 + 5;
        eventually(Duration::from_secs(10), "an acks=all produce", || async {
            client
                .produce_batch(topic, 0, seq_batch(key, seqs.clone()))
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        acked.extend(acked_range(key, seqs));
    }
    acked
}

/// Waits until a broker other than `old_leader` leads partition 0 of
/// `topic`, as `client` sees it.
async fn new_leader(client: &Client, topic: &str, old_leader: u64) -> WirePartitionLeader {
    eventually(Duration::from_secs(10), "a new leader", || async {
        let m = metadata(client).await.map_err(|e| e.to_string())?;
        let p = partition(&m, topic, 0).clone();
        match p.leader {
            Some(n) if n != old_leader => Ok(p),
            other => Err(format!("leader {other:?}")),
        }
    })
    .await
}

/// The divergence KIP-101 fixed. Leader L holds records its followers
/// never got (acknowledged with acks=leader while they could not fetch,
/// and one acks=all batch that was never confirmed); L dies, an in-sync
/// follower leads at a new epoch and takes acks=all writes; L comes back
/// and cuts its log exactly where its epoch ended on the new leader, then
/// copies the rest: all three logs end identical, every acks=all message
/// is there, and the checker reports the acks=leader ones as lost (it
/// must: that is what acks=leader allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_leader_cuts_what_the_new_leader_never_had() {
    use spool::client::Acks;
    use spool::protocol::requests::ProduceRequest;
    let _serial = SERIAL.lock().await;
    let (mut cluster, admin, old) = one_partition("kip").await;
    let l = old.leader.expect("a leader");
    let li = (l - 1) as usize;

    // A: on every replica.
    let mut acked = produce_all(&admin, "kip", "a", 0, 20).await;
    fully_replicated(&cluster, "kip", 1, 3).await;

    // B: the followers cannot reach L; L alone takes acks=leader writes.
    cluster.front(li, true);
    let direct = Client::connect(cluster.brokers[li].addr)
        .await
        .expect("direct");
    for i in 0..10 {
        let request = ProduceRequest {
            topic: "kip".into(),
            partition: 0,
            acks: Acks::Leader,
            batch: seq_batch("b", 1000 + i * 5..1000 + i * 5 + 5),
        };
        direct.call(&request).await.expect("acks=leader");
        acked.extend(acked_range("b", 1000 + i * 5..1000 + i * 5 + 5));
    }
    // C: acks=all at L cannot be confirmed by anyone.
    let unconfirmed = {
        let request = ProduceRequest {
            topic: "kip".into(),
            partition: 0,
            acks: Acks::All,
            batch: seq_batch("c", 2000..2005),
        };
        let direct = direct.clone();
        tokio::spawn(async move { direct.call(&request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !unconfirmed.is_finished(),
        "acks=all answered without followers"
    );

    // L dies; an in-sync follower leads at a new epoch.
    cluster.brokers[li].kill();
    let survivor = cluster.client((li + 1) % 3).await;
    let new = new_leader(&survivor, "kip", l).await;
    assert!(new.leader_epoch > old.leader_epoch, "{old:?} -> {new:?}");
    assert!(
        !matches!(unconfirmed.await, Ok(Ok(_))),
        "the acks=all batch at the dead leader was confirmed"
    );

    // D: acks=all at the new leader.
    acked.extend(produce_all(&survivor, "kip", "d", 3000, 20).await);

    // L comes back as a follower and cuts its log.
    cluster.front(li, false);
    cluster.restart(li);
    fully_replicated(&cluster, "kip", 1, 3).await;
    let metrics = cluster.brokers[li].http_get("/metrics");
    let cuts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spool_replica_truncations_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(cuts >= 1.0, "the returning leader did not cut its log");

    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "kip", 1);
    for (i, copy) in copies.iter().enumerate() {
        assert!(
            copy[0] == copies[0][0],
            "broker {} differs from broker 1: {} vs {} records",
            i + 1,
            copy[0].len(),
            copies[0][0].len()
        );
    }
    let stored = stored_history(&copies[0]);
    assert!(
        stored.iter().all(|c| c.key != b"c"),
        "the unconfirmed acks=all batch survived"
    );
    let violations = common::history::check(&acked, &stored);
    let lost: Vec<u64> = violations
        .iter()
        .filter_map(|v| match v {
            common::history::Violation::Lost(seq) => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        violations.len(),
        lost.len(),
        "violations other than loss: {violations:?}"
    );
    assert_eq!(
        lost,
        (1000..1050).collect::<Vec<u64>>(),
        "exactly the acks=leader messages are lost"
    );
}

/// A paused follower (SIGSTOP, longer than a lease) leaves the in-sync
/// set and acks=all goes on with the other two; continued, it catches up
/// and is back in the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_leaves_the_in_sync_set_and_returns_when_caught_up() {
    use rustix::process::Signal;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("p", 1, replicated(3))
        .await
        .expect("create");
    fully_replicated(&cluster, "p", 1, 3).await;
    let before = partition(&metadata(&admin).await.expect("metadata"), "p", 0).clone();
    let leader = before.leader.expect("leader");
    // Not the control plane's leader: pausing that one also pauses every
    // lease for an election (another test's concern).
    let controller = metadata(&admin).await.expect("metadata").controller;
    let follower = before
        .replicas
        .iter()
        .map(|r| r.broker)
        .find(|b| *b != leader && Some(*b) != controller)
        .expect("a follower that is not the controller");
    let fi = (follower - 1) as usize;
    let client = cluster.client((fi + 1) % 3).await;
    cluster.signal(fi, Signal::STOP);
    let paused_at = Instant::now();
    let mut n = 0u64;
    let mut slowest = Duration::ZERO;
    // Writes go on while it is paused: the first wait for its lease to
    // lapse (acks=all waits for every in-sync replica), later ones do not.
    while paused_at.elapsed() < Duration::from_secs(5) {
        let sent = Instant::now();
        // Retried as a producer would (a retriable refusal is an answer,
        // not a failure); what counts is how long a write takes.
        loop {
            match client
                .produce_batch("p", 0, seq_batch("k", n..n + 10))
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_retriable() && sent.elapsed() < Duration::from_secs(4) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!(
                    "acks=all with one follower paused, {:?} into the pause: {e}",
                    paused_at.elapsed()
                ),
            }
        }
        slowest = slowest.max(sent.elapsed());
        n += 10;
    }
    let during = partition(&metadata(&client).await.expect("metadata"), "p", 0).clone();
    let in_sync: Vec<u64> = during
        .replicas
        .iter()
        .filter(|r| r.in_sync)
        .map(|r| r.broker)
        .collect();
    assert!(
        !in_sync.contains(&follower) && in_sync.len() == 2,
        "paused broker {follower} still in sync: {during:?}"
    );
    // The operator's view says so too.
    let status = |at: usize| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(["cluster", "status", "--addr"])
            .arg(cluster.brokers[at].addr.to_string())
            .output()
            .expect("spool cluster status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status((fi + 1) % 3);
    assert!(
        text.contains("replicated partitions: 1 (1 under-replicated)"),
        "{text}"
    );
    let listed: Vec<String> = in_sync.iter().map(u64::to_string).collect();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("p/0"))
        .unwrap_or_else(|| panic!("no line for p/0 in:\n{text}"));
    assert!(
        line.contains(&format!("leader {leader}"))
            && line.contains(&format!("in-sync {}", listed.join(","))),
        "{line}"
    );
    eprintln!("{n} messages acknowledged during a 5 s pause; slowest produce {slowest:?}");
    assert!(n >= 100, "only {n} messages in 5 s");
    assert!(
        slowest < Duration::from_secs(4),
        "a produce waited {slowest:?}"
    );
    cluster.signal(fi, Signal::CONT);
    let rejoined = Instant::now();
    fully_replicated(&cluster, "p", 1, 3).await;
    eprintln!("back in sync {:?} after SIGCONT", rejoined.elapsed());
    let after = partition(&metadata(&client).await.expect("metadata"), "p", 0).clone();
    assert_eq!(after.leader, Some(leader), "leadership moved: {after:?}");
    assert!(after.replicas.iter().all(|r| r.in_sync), "{after:?}");
    let text = status(fi);
    assert!(
        text.contains("replicated partitions: 1 (0 under-replicated)"),
        "{text}"
    );
}

/// The leader is cut off from everything (peers and clients): it loses its
/// lease and stops acknowledging, a follower takes over, and nothing the
/// old leader acknowledged after the cut (to a client on its side of the
/// cut) is missing from or contradicts the new leader's log. Healed, it
/// rejoins as a follower with the same log as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_stops_acknowledging_and_loses_nothing_it_acknowledged() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, admin, old) = one_partition("cut").await;
    let l = old.leader.expect("leader");
    let li = (l - 1) as usize;
    let mut acked = produce_all(&admin, "cut", "a", 0, 10).await;
    cluster.isolate(li, true);
    let cut_at = Instant::now();
    // A client on the leader's side of the cut keeps writing to it.
    let inside = Client::connect(cluster.brokers[li].addr)
        .await
        .expect("inside");
    let mut seq = 100u64;
    let mut refused = 0;
    while cut_at.elapsed() < Duration::from_secs(4) {
        let request = spool::protocol::requests::ProduceRequest {
            topic: "cut".into(),
            partition: 0,
            acks: spool::client::Acks::All,
            batch: seq_batch("b", seq..seq + 5),
        };
        match tokio::time::timeout(Duration::from_millis(500), inside.call(&request)).await {
            Ok(Ok(_)) => acked.extend(acked_range("b", seq..seq + 5)),
            _ => refused += 1,
        }
        seq += 5;
    }
    assert!(refused > 0, "the cut-off leader kept acknowledging");
    // The others elect a new leader and take writes.
    let outside = cluster.client((li + 1) % 3).await;
    let new = new_leader(&outside, "cut", l).await;
    assert!(new.leader_epoch > old.leader_epoch);
    acked.extend(produce_all(&outside, "cut", "c", 5000, 10).await);
    cluster.isolate(li, false);
    fully_replicated(&cluster, "cut", 1, 3).await;
    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "cut", 1);
    for (i, copy) in copies.iter().enumerate() {
        assert!(copy[0] == copies[0][0], "broker {} differs", i + 1);
    }
    let violations = common::history::check(&acked, &stored_history(&copies[0]));
    assert!(violations.is_empty(), "{violations:?}");
}

/// A queue group on replicated partitions: a member acks some messages and
/// holds others, the leader of most partitions is SIGKILLed, and a new
/// member gets from the new leaders every message that was not
/// acknowledged and none that was (the group's state on a partition is
/// copied to its followers with the data, and an ack is answered only once
/// they have it). A message nacked until its deliveries run out lands in
/// the group's dead-letter topic, itself replicated, through its leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_loses_no_ack_and_no_message_when_its_leader_dies() {
    use spool::client::{QueueConsumer, QueueOptions};
    use std::collections::BTreeSet;

    let _serial = SERIAL.lock().await;
    const PARTITIONS: u32 = 3;
    const N: u64 = 3_000;
    let mut cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("work", PARTITIONS, replicated(3))
        .await
        .expect("create");
    fully_replicated(&cluster, "work", PARTITIONS, 3).await;
    let producer = Producer::new(cluster.client(1).await, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for seq in 0..N {
        let key = format!("k{}", seq % 31).into_bytes();
        deliveries.push(
            producer
                .send("work", Some(&key), seq.to_be_bytes())
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");
    for d in deliveries {
        d.await.expect("acknowledged");
    }

    let options = QueueOptions {
        // Long: every redelivery below comes from the failover, not from
        // a deadline.
        ack_wait: Duration::from_secs(120),
        max_deliveries: 3,
        max_in_flight: 5_000,
        ..QueueOptions::default()
    };
    let mut first =
        QueueConsumer::join(cluster.client(2).await, "workers", "work", options.clone())
            .await
            .expect("join");
    let (mut acked, mut held) = (BTreeSet::new(), BTreeSet::new());
    while acked.len() + held.len() < 2_000 {
        let m = first
            .receive_timeout(Duration::from_secs(10))
            .await
            .expect("receive")
            .expect("a message within 10 s");
        let seq = seq_of(&m.value).expect("a sequence number");
        if seq % 3 == 0 {
            held.insert(seq);
        } else {
            assert_eq!(
                first.ack(&m).await.expect("ack"),
                spool::client::Settled::Ok
            );
            acked.insert(seq);
        }
    }

    // The broker leading most partitions dies; the first member goes too
    // (it leaves at the survivors, so what it held there is free at once).
    let view = metadata(&admin).await.expect("metadata");
    let mut led = BTreeMap::<u64, u32>::new();
    for p in 0..PARTITIONS {
        *led.entry(partition(&view, "work", p).leader.expect("leader"))
            .or_default() += 1;
    }
    let victim = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id)
        .expect("a leader");
    let victim_index = common::cluster::index_of(victim);
    cluster.brokers[victim_index].kill();
    drop(first);

    let survivor = (victim_index + 1) % 3;
    let client = cluster.client(survivor).await;
    let mut second = eventually(Duration::from_secs(20), "join after the kill", || async {
        QueueConsumer::join(client.clone(), "workers", "work", options.clone())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let mut got = BTreeSet::new();
    let mut redelivered_acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dead: Option<u64> = None;
    while got.len() < (N as usize - acked.len()) && Instant::now() < deadline {
        let Some(m) = second
            .receive_timeout(Duration::from_secs(1))
            .await
            .expect("receive")
        else {
            continue;
        };
        let seq = seq_of(&m.value).expect("a sequence number");
        if acked.contains(&seq) {
            redelivered_acked.push(seq);
            continue;
        }
        // One message is nacked until its deliveries run out.
        if dead.is_none_or(|d| d == seq) && m.deliveries < options.max_deliveries {
            dead = Some(seq);
            second.nack(&m, Duration::ZERO).await.expect("nack");
            continue;
        }
        if dead == Some(seq) {
            // Its last delivery: not acked either, so it is dead-lettered.
            second.nack(&m, Duration::ZERO).await.expect("nack");
            got.insert(seq);
            continue;
        }
        assert_eq!(
            second.ack(&m).await.expect("ack"),
            spool::client::Settled::Ok
        );
        got.insert(seq);
    }
    assert!(
        redelivered_acked.is_empty(),
        "{} acknowledged messages delivered again after the failover, first {:?}",
        redelivered_acked.len(),
        &redelivered_acked[..redelivered_acked.len().min(10)]
    );
    let missing: Vec<u64> = (0..N)
        .filter(|s| !acked.contains(s) && !got.contains(s))
        .collect();
    assert!(
        missing.is_empty(),
        "{} unacknowledged messages never delivered after the failover, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(held.iter().all(|s| got.contains(s)));

    // The dead letter: wait for a delivery pass to move it, then find it
    // on every live replica of the dead-letter topic.
    let dead = dead.expect("a message was nacked");
    let _ = second.receive_timeout(Duration::from_millis(500)).await;
    drop(second);
    cluster.restart(victim_index);
    fully_replicated(&cluster, "workers.dlq", 1, 3).await;

    // Reset to the start (once the members are gone), at any broker: each
    // partition's leader resets its part; every message comes again.
    fully_replicated(&cluster, "work", PARTITIONS, 3).await;
    eventually(Duration::from_secs(20), "reset the group", || async {
        admin
            .call_group(
                "workers",
                &spool::protocol::requests::ResetGroupRequest {
                    group: "workers".into(),
                    to: spool::protocol::WireResetTarget::Earliest,
                    partition: None,
                },
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let mut third =
        QueueConsumer::join(cluster.client(0).await, "workers", "work", options.clone())
            .await
            .expect("join after the reset");
    let mut again = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while again.len() < N as usize && Instant::now() < deadline {
        if let Some(m) = third
            .receive_timeout(Duration::from_secs(1))
            .await
            .expect("receive")
        {
            again.extend(seq_of(&m.value));
        }
    }
    assert_eq!(again.len(), N as usize, "after a reset to the start");
    drop(third);
    for b in &mut cluster.brokers {
        b.terminate();
    }
    for (i, copy) in copies(&cluster, "workers.dlq", 1).iter().enumerate() {
        let values: Vec<Option<u64>> = copy[0].iter().map(|r| seq_of(&r.value)).collect();
        assert_eq!(
            values,
            vec![Some(dead)],
            "broker {}'s copy of the dead-letter topic",
            i + 1
        );
    }
}

/// Reassignment: a broker joins and takes copies of replicated partitions
/// (each follows, catches up, joins the in-sync set, and the copy it
/// replaces is dropped); removed again, its copies go back. A producer
/// with acks=all runs throughout and loses nothing; the remaining brokers'
/// logs end up identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_move_to_a_new_broker_and_off_a_removed_one_without_loss() {
    use std::sync::Arc;

    let _serial = SERIAL.lock().await;
    const PARTITIONS: u32 = 4;
    let mut cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("re", PARTITIONS, replicated(3))
        .await
        .expect("create");
    fully_replicated(&cluster, "re", PARTITIONS, 3).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let (producer, acked) = spawn_producer(
        cluster.client(1).await,
        "re",
        8,
        (32, Duration::from_millis(5)),
        stop.clone(),
    );

    // A queue group reads throughout: it must get every message, whichever
    // broker leads each partition as copies and leaders move.
    let consumed: Arc<parking_lot::Mutex<std::collections::BTreeSet<u64>>> = Arc::default();
    let drained = tokio_util::sync::CancellationToken::new();
    let consumer = {
        use spool::client::{QueueConsumer, QueueOptions};
        let client = cluster.client(2).await;
        let (consumed, drained) = (consumed.clone(), drained.clone());
        tokio::spawn(async move {
            let options = QueueOptions {
                ack_wait: Duration::from_secs(5),
                max_deliveries: u32::MAX,
                ..QueueOptions::default()
            };
            let mut member = QueueConsumer::join(client, "re-workers", "re", options)
                .await
                .expect("join");
            while !drained.is_cancelled() {
                let Ok(batch) = member.receive_batch().await else {
                    continue;
                };
                if !batch.is_empty() && member.ack_many(&batch).await.is_ok() {
                    consumed
                        .lock()
                        .extend(batch.iter().filter_map(|m| seq_of(&m.value)));
                }
            }
        })
    };

    let copies_on = |m: &MetadataResponse, id: u64| -> usize {
        (0..PARTITIONS)
            .filter(|p| {
                partition(m, "re", *p)
                    .replicas
                    .iter()
                    .any(|r| r.broker == id)
            })
            .count()
    };
    cluster.add_broker(4);
    eventually(Duration::from_secs(60), "copies on broker 4", || async {
        let m = metadata(&admin).await.map_err(|e| e.to_string())?;
        let settled = (0..PARTITIONS).all(|p| {
            let x = partition(&m, "re", p);
            x.replicas.len() == 3 && x.replicas.iter().all(|r| r.in_sync)
        });
        (settled && copies_on(&m, 4) > 0)
            .then_some(())
            .ok_or(format!("{:?}", m.topics))
    })
    .await;
    let moved = copies_on(&metadata(&admin).await.expect("metadata"), 4);
    eprintln!("broker 4 took copies of {moved} of {PARTITIONS} partitions");

    admin
        .call(&spool::protocol::requests::RemoveBrokerRequest {
            id: 4,
            force: false,
        })
        .await
        .expect("remove broker 4 (its copies move back first)");
    let m = metadata(&admin).await.expect("metadata");
    assert_eq!(copies_on(&m, 4), 0);
    for p in 0..PARTITIONS {
        assert_eq!(partition(&m, "re", p).replicas.len(), 3);
    }
    cluster.brokers[3].terminate();
    cluster.brokers.pop();

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    producer.await.expect("producer");
    let acked_seqs: std::collections::BTreeSet<u64> = acked.lock().iter().map(|a| a.seq).collect();
    eventually(
        Duration::from_secs(30),
        "the queue group read everything",
        || async {
            let missing = acked_seqs.difference(&consumed.lock()).count();
            (missing == 0)
                .then_some(())
                .ok_or(format!("{missing} acknowledged messages not consumed"))
        },
    )
    .await;
    drained.cancel();
    consumer.await.expect("consumer");
    fully_replicated(&cluster, "re", PARTITIONS, 3).await;
    for b in &mut cluster.brokers {
        b.terminate();
    }
    let copies = copies(&cluster, "re", PARTITIONS);
    for (i, copy) in copies.iter().enumerate().skip(1) {
        assert!(copy == &copies[0], "broker {} differs from broker 1", i + 1);
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > 1_000, "only {} acknowledged", acked.len());
    let violations = common::history::check(&acked, &stored_history(&copies[0]));
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(10)]
    );
}
