//! A cluster of real `spool serve` processes on loopback ports: topics are
//! created through one broker, produced through another and consumed
//! through the third, with each partition's requests routed to its leader;
//! a SIGKILLed control-plane leader is replaced and admin calls work again.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{batch, eventually, index_of, metadata, Cluster};
use common::history::{self, Acked, Consumed, Violation};
use spool::client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, StartAt, TopicOptions,
};
use spool::protocol::requests::MetadataResponse;

/// The cluster tests run one at a time: each runs three brokers, and two
/// cores cannot run four clusters at once without stretching the lease
/// timings these tests measure.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One copy per partition: these tests are about placement, leases and
/// hand-off moves (replicated partitions are `tests/replication.rs`').
fn unreplicated() -> TopicOptions {
    TopicOptions {
        replication: Some(1),
        ..TopicOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_create_produce_and_consume_through_different_brokers() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3);
    let via = |i: usize| cluster.brokers[i].addr;
    let admin = Client::connect(via(0)).await.expect("connect 1");
    // The cluster is ready once every broker has joined (by heartbeat).
    eventually(Duration::from_secs(20), "three live brokers", || async {
        let m = metadata(&admin).await.map_err(|e| e.to_string())?;
        let alive = m.brokers.iter().filter(|b| b.alive).count();
        (alive == 3).then_some(()).ok_or(format!("{alive} alive"))
    })
    .await;
    admin
        .create_topic("orders", 12, unreplicated())
        .await
        .expect("create through broker 1");
    // Refused the second time, through another broker (forwarded).
    let second = Client::connect(via(1)).await.expect("connect 2");
    let again = second
        .create_topic("orders", 12, unreplicated())
        .await
        .expect_err("created twice");
    assert_eq!(again.code(), Some(spool::protocol::ErrorCode::TopicExists));

    // Every partition has a leader, and the leaders are spread.
    let m = metadata(&second).await.expect("metadata");
    let topic = m
        .topics
        .iter()
        .find(|t| t.name == "orders")
        .expect("orders");
    let mut led: HashMap<u64, usize> = HashMap::new();
    for p in &topic.partitions {
        *led.entry(p.leader.expect("a leader")).or_default() += 1;
    }
    assert_eq!(
        led.len(),
        3,
        "12 partitions on fewer than 3 brokers: {led:?}"
    );

    // Ready to write once every broker holds its own lease: a write to
    // every partition of a probe topic succeeds (12 partitions: all three
    // brokers lead some).
    admin
        .create_topic("probe", 12, unreplicated())
        .await
        .expect("probe topic");
    for p in 0..12u32 {
        eventually(
            Duration::from_secs(10),
            "a write to every partition",
            || async {
                let mut b = spool::protocol::BatchBuilder::new();
                b.push(0, None, b"probe", &[]).map_err(|e| e.to_string())?;
                let batch = b.finish().map_err(|e| e.to_string())?;
                second
                    .produce_batch("probe", p, batch)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }

    // Produce through broker 2.
    for i in 0..3 {
        let c = Client::connect(via(i)).await.expect("connect");
        eventually(
            Duration::from_secs(10),
            "topic known everywhere",
            || async {
                c.describe_topic("orders")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }
    let producer = Producer::new(second.clone(), ProducerConfig::default());
    const N: u64 = 100_000;
    let mut acks = Vec::with_capacity(N as usize);
    for i in 0..N {
        let key = format!("key-{}", i % 1000);
        let delivery = producer
            .send("orders", Some(key.as_bytes()), i.to_be_bytes())
            .await
            .expect("send");
        acks.push(delivery);
    }
    producer.flush().await.expect("flush");
    for ack in acks {
        ack.await.expect("acknowledged");
    }

    // Consume through broker 3: every message once, in order per key.
    let third = Client::connect(via(2)).await.expect("connect 3");
    let mut consumer = Consumer::new(
        third,
        "orders",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .expect("consumer");
    let mut last_per_key: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut where_: HashMap<Vec<u8>, (u32, u64)> = HashMap::new();
    let mut seen = 0u64;
    while seen < N {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("consumer stalled")
            .expect("consumer ended")
            .expect("message");
        let value = u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes"));
        let key = m.key.expect("key").to_vec();
        let prev_at = where_.insert(key.clone(), (m.partition, m.offset));
        if let Some(prev) = last_per_key.insert(key, value) {
            assert!(
                prev < value,
                "out of order: {prev} at {prev_at:?} then {value} at {:?}",
                (m.partition, m.offset)
            );
        }
        seen += 1;
    }
    assert_eq!(last_per_key.len(), 1000);

    // The command line shows the same picture, through any broker.
    let list = format!("{},{}", via(2), via(0));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(args)
            .output()
            .expect("run spool");
        assert!(out.status.success(), "spool {args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let status = run(&["cluster", "status", "--addr", &list]);
    assert!(status.contains("controller: broker "), "{status}");
    assert_eq!(status.matches("\talive\t").count(), 3, "{status}");
    assert_eq!(status.matches(" ms ago").count(), 3, "lease ages: {status}");
    assert!(status.contains("(Raft term "), "{status}");
    let described = run(&["topics", "describe", "orders", "--addr", &list]);
    assert_eq!(described.matches("leader=").count(), 12, "{described}");
    // Nothing more (no duplicates) arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "more than {N} messages"
    );
}

/// A broker to fail, with the partitions of topic `t` (12, created here)
/// it leads and those it does not.
struct Victim {
    id: u64,
    index: usize,
    theirs: Vec<u32>,
    ours: Vec<u32>,
}

impl Victim {
    /// Creates topic `t` and picks a broker that leads some of it and is
    /// not the control plane's leader (failing the controller is another
    /// test).
    async fn pick(cluster: &Cluster) -> Victim {
        let client = cluster.client(0).await;
        cluster.ready(&client, 3).await;
        client
            .create_topic("t", 12, unreplicated())
            .await
            .expect("create");
        let m = metadata(&client).await.expect("metadata");
        let controller = m.controller.expect("controller");
        let leaders: Vec<u64> = m
            .topics
            .iter()
            .find(|t| t.name == "t")
            .expect("t")
            .partitions
            .iter()
            .map(|p| p.leader.expect("leader"))
            .collect();
        let id = (1..=3u64)
            .find(|id| *id != controller && leaders.contains(id))
            .expect("a non-controller leading a partition");
        let (theirs, ours) = (0..12u32).partition(|p| leaders[*p as usize] == id);
        Victim {
            id,
            index: index_of(id),
            theirs,
            ours,
        }
    }
}

/// Every record value in back-to-back batches.
fn values_of(mut batches: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !batches.is_empty() {
        let batch = spool::protocol::Batch::validate(batches).expect("a valid batch");
        out.extend(batch.records().map(|r| r.value.to_vec()));
        batches = &batches[batch.bytes().len()..];
    }
    out
}

/// SIGKILL the control plane's leader: the others elect a new one and admin
/// calls work again within 3 s; the killed broker restarts as a follower
/// with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_elects_another_and_it_rejoins_intact() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3);
    let client = cluster.client(0).await;
    cluster.ready(&client, 3).await;
    client
        .create_topic("before", 3, unreplicated())
        .await
        .expect("create");
    let controller = metadata(&client)
        .await
        .expect("metadata")
        .controller
        .expect("a controller");
    let victim = index_of(controller);
    let survivor = cluster.client((victim + 1) % 3).await;
    cluster.brokers[victim].kill();
    let killed_at = Instant::now();
    eventually(Duration::from_secs(10), "admin after the kill", || async {
        survivor
            .create_topic("after", 3, unreplicated())
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let recovered = killed_at.elapsed();
    eprintln!("admin calls work again {recovered:?} after SIGKILL of the controller");
    assert!(recovered < Duration::from_secs(3), "took {recovered:?}");
    let m = metadata(&survivor).await.expect("metadata");
    assert_ne!(
        m.controller,
        Some(controller),
        "the dead broker still leads"
    );

    cluster.restart(victim);
    let back = Client::connect(cluster.brokers[victim].addr)
        .await
        .expect("connect to the restarted broker");
    // Its state came back from disk and caught up: both topics, alive again.
    eventually(
        Duration::from_secs(10),
        "the restarted broker caught up",
        || async {
            let m = metadata(&back).await.map_err(|e| e.to_string())?;
            let names: Vec<&str> = m.topics.iter().map(|t| t.name.as_str()).collect();
            let alive = m.brokers.iter().filter(|b| b.alive).count();
            (names.contains(&"before") && names.contains(&"after") && alive == 3)
                .then_some(())
                .ok_or(format!("topics {names:?}, {alive} alive"))
        },
    )
    .await;
}

/// SIGSTOP a broker past its lease: the cluster marks it expired within
/// TTL + 1 s, its partitions answer PartitionUnavailable while the others
/// keep working, and after SIGCONT it serves them again with nothing lost.
/// A write that reached it while it was stopped is answered once it wakes,
/// and stored at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_loses_its_partitions_and_gets_them_back() {
    let _serial = SERIAL.lock().await;
    use rustix::process::Signal;
    use spool::protocol::requests::{FetchRequest, ProduceRequest};
    use spool::protocol::ErrorCode;

    let cluster = Cluster::start(3);
    // Pause a broker that is not the controller and leads something.
    let Victim {
        id: victim_id,
        index: victim,
        theirs,
        ours,
    } = Victim::pick(&cluster).await;
    let other = cluster.client((victim + 1) % 3).await;
    for p in 0..12u32 {
        eventually(
            Duration::from_secs(10),
            "a first write everywhere",
            || async {
                other
                    .produce_batch("t", p, batch("before"))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }

    // A write sent straight to the victim as it stops waits in its socket.
    let direct = Client::connect(cluster.brokers[victim].addr)
        .await
        .expect("connect to the victim");
    let conn = direct.connection().await.expect("connection");
    cluster.signal(victim, Signal::STOP);
    let stopped_at = Instant::now();
    let pending = conn
        .start(&ProduceRequest {
            topic: "t".into(),
            partition: theirs[0],
            acks: Default::default(),
            batch: batch("while paused"),
        })
        .await
        .expect("queued");

    eventually(
        Duration::from_secs(10),
        "the paused broker expired",
        || async {
            let m = metadata(&other).await.map_err(|e| e.to_string())?;
            let alive = m
                .brokers
                .iter()
                .find(|b| b.id == victim_id)
                .map(|b| b.alive);
            (alive == Some(false))
                .then_some(())
                .ok_or(format!("alive: {alive:?}"))
        },
    )
    .await;
    let expired = stopped_at.elapsed();
    eprintln!("paused broker expired {expired:?} after SIGSTOP");
    assert!(
        expired < Duration::from_millis(1500 + 1000),
        "took {expired:?} (TTL 1.5 s + 1 s)"
    );
    // Its partitions are unavailable; the others keep taking writes. (A
    // client learns of the change when a broker redirects it or when it
    // asks; this one asks, as its request to the paused broker would
    // otherwise wait for it.)
    other.refresh_routes().await;
    let refused = other
        .produce_batch("t", theirs[0], batch("refused"))
        .await
        .expect_err("written to a partition whose broker is paused");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PartitionUnavailable),
        "{refused}"
    );
    for &p in &ours {
        other
            .produce_batch("t", p, batch("during"))
            .await
            .expect("a live broker's partition");
    }

    cluster.signal(victim, Signal::CONT);
    // The write that waited in its socket is answered. It is refused if it
    // is read before the broker renews its lease, and may be taken after
    // the renewal has committed (then the broker leads the partition
    // again); which one depends on scheduling. Either way it is stored at
    // most once. (That a broker with a lapsed lease refuses writes is
    // checked deterministically by the cut-link test.)
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("an answer after SIGCONT");
    let queued_taken = match answer {
        Ok(_) => true,
        Err(err) => {
            assert!(
                matches!(
                    err.code(),
                    Some(ErrorCode::PartitionUnavailable) | Some(ErrorCode::NotLeader)
                ),
                "{err}"
            );
            false
        }
    };
    // It renews its lease and serves its partitions again, with nothing
    // lost: the write from before the pause is still there.
    for &p in &theirs {
        eventually(Duration::from_secs(10), "serving again", || async {
            other
                .produce_batch("t", p, batch("after"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
    }
    let fetched = other
        .call_partition(
            "t",
            theirs[0],
            &FetchRequest {
                topic: "t".into(),
                partition: theirs[0],
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            },
        )
        .await
        .expect("fetch");
    let values = values_of(&fetched.batches);
    assert_eq!(values.first().map(Vec::as_slice), Some(&b"before"[..]));
    assert!(values.iter().any(|v| v == b"after"), "{values:?}");
    assert!(
        !values.iter().any(|v| v == b"refused"),
        "a refused write was stored: {values:?}"
    );
    let paused = values.iter().filter(|v| *v == b"while paused").count();
    assert_eq!(paused, usize::from(queued_taken), "{values:?}");
}

/// Cut every link between one broker and the others: it stops accepting
/// writes once its own lease is gone (and before the others count it out),
/// the rest of the cluster expires it and keeps serving its own partitions,
/// and when the links heal it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_from_its_peers_stops_taking_writes() {
    let _serial = SERIAL.lock().await;
    use spool::protocol::ErrorCode;

    let cluster = Cluster::start_linked(3);
    let Victim {
        id: victim_id,
        index: victim,
        theirs,
        ours,
    } = Victim::pick(&cluster).await;
    // Clients still reach every broker: only peer links are cut.
    let direct = Client::connect(cluster.brokers[victim].addr)
        .await
        .expect("connect to the victim");
    eventually(Duration::from_secs(10), "writes at the victim", || async {
        direct
            .produce_batch("t", theirs[0], batch("before"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;

    cluster.isolate(victim, true);
    let cut_at = Instant::now();
    // The victim refuses writes on its own once its lease lapses.
    let refused_after = eventually(Duration::from_secs(5), "the victim refusing", || async {
        match direct.produce_batch("t", theirs[0], batch("cut")).await {
            Err(e) if e.code() == Some(ErrorCode::PartitionUnavailable) => Ok(cut_at.elapsed()),
            Err(e) => Err(e.to_string()),
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err("still accepted".to_string())
            }
        }
    })
    .await;
    eprintln!("cut-off broker refused writes {refused_after:?} after the cut");
    assert!(
        refused_after < Duration::from_millis(1500),
        "still took writes {refused_after:?} after the cut: past the TTL the others count"
    );
    // The others expire it and keep serving their own partitions.
    let other = cluster.client((victim + 1) % 3).await;
    eventually(Duration::from_secs(10), "the others expire it", || async {
        let m = metadata(&other).await.map_err(|e| e.to_string())?;
        let alive = m
            .brokers
            .iter()
            .find(|b| b.id == victim_id)
            .map(|b| b.alive);
        (alive == Some(false))
            .then_some(())
            .ok_or(format!("alive: {alive:?}"))
    })
    .await;
    other.refresh_routes().await;
    for &p in &ours {
        other
            .produce_batch("t", p, batch("during"))
            .await
            .expect("a connected broker's partition");
    }

    cluster.isolate(victim, false);
    eventually(
        Duration::from_secs(15),
        "the victim serving again",
        || async {
            direct
                .produce_batch("t", theirs[0], batch("healed"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Every partition's leader, by metadata.
async fn leaders_of(client: &Client, topic: &str) -> Vec<Option<u64>> {
    metadata(client)
        .await
        .expect("metadata")
        .topics
        .iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.iter().map(|p| p.leader).collect())
        .unwrap_or_default()
}

/// Waits until every partition of `topic` is led where placement over
/// `members` puts it; returns the partitions that changed leader, as
/// (before, after).
async fn settle_on(
    client: &Client,
    topic: &str,
    partitions: u32,
    members: &[u64],
    before: &[Option<u64>],
) -> Vec<(Option<u64>, Option<u64>)> {
    use spool::cluster::{placement, NodeId};
    let members: Vec<NodeId> = members.iter().copied().map(NodeId).collect();
    let target: Vec<Option<u64>> = (0..partitions)
        .map(|p| placement::preferred_leader(topic, spool::PartitionId(p), &members).map(|n| n.0))
        .collect();
    eventually(
        Duration::from_secs(60),
        "partitions at their placement",
        || async {
            client.refresh_routes().await;
            let now = leaders_of(client, topic).await;
            (now == target)
                .then_some(())
                .ok_or(format!("leaders {now:?}, placement {target:?}"))
        },
    )
    .await;
    before
        .iter()
        .zip(&target)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (*a, *b))
        .collect()
}

/// Add a fourth broker while a producer and a consumer run, then remove
/// one: the partitions that move are about 1/N of them, writes pause only
/// while each switches, and every acknowledged message is consumed exactly
/// once, in order per partition, across both changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_join_and_leave_under_load_without_losing_a_message() {
    let _serial = SERIAL.lock().await;
    const PARTITIONS: u32 = 48;
    let mut cluster = Cluster::start(3);
    let client = cluster.client(0).await;
    cluster.ready(&client, 3).await;
    client
        .create_topic("moves", PARTITIONS, unreplicated())
        .await
        .expect("create");

    // A producer sends numbered messages under 200 keys until told to stop,
    // remembering what was acknowledged and the longest wait for an ack.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer_client = cluster.client(1).await;
    let producing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let producer = Producer::new(producer_client, ProducerConfig::default());
            let mut acked: Vec<Acked> = Vec::new();
            let mut longest = Duration::ZERO;
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let mut pending = Vec::new();
                for _ in 0..200 {
                    let key = format!("key-{}", seq % 200);
                    let sent = Instant::now();
                    let delivery = producer
                        .send("moves", Some(key.as_bytes()), seq.to_be_bytes())
                        .await
                        .expect("send");
                    pending.push((key, seq, sent, delivery));
                    seq += 1;
                }
                for (key, n, sent, delivery) in pending {
                    match delivery.await {
                        Ok(_) => {
                            acked.push(Acked {
                                key: key.into_bytes(),
                                seq: n,
                            });
                            longest = longest.max(sent.elapsed());
                        }
                        Err(e) => panic!("message {n} not acknowledged: {e}"),
                    }
                }
            }
            (acked, longest)
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = leaders_of(&client, "moves").await;
    cluster.add_broker(4);
    // Only what placement gives the new broker moves, and only to it (the
    // 1/N bound itself is shown over 1,000 partitions by the placement
    // table test; 48 partitions are too few for it to hold exactly).
    let moves = settle_on(&client, "moves", PARTITIONS, &[1, 2, 3, 4], &before).await;
    eprintln!(
        "adding broker 4 moved {} of {PARTITIONS} partitions ({:.1}%, ideal 25%)",
        moves.len(),
        100.0 * moves.len() as f64 / f64::from(PARTITIONS)
    );
    assert!(!moves.is_empty(), "nothing moved to the new broker");
    assert!(
        moves.iter().all(|(_, to)| *to == Some(4)),
        "a partition moved between old brokers: {moves:?}"
    );
    // The operator makes the new broker a voter (through the binary), so
    // that removing an old voter below leaves three.
    let added = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(["cluster", "add", "4", "--voter", "--addr"])
        .arg(cluster.brokers[2].addr.to_string())
        .output()
        .expect("spool cluster add");
    assert!(
        added.status.success(),
        "cluster add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let voters = |m: &MetadataResponse| -> Vec<u64> {
        m.brokers.iter().filter(|b| b.voter).map(|b| b.id).collect()
    };
    assert_eq!(
        voters(&metadata(&client).await.expect("metadata")),
        vec![1, 2, 3, 4]
    );

    let before = leaders_of(&client, "moves").await;
    let removal = client
        .call(&spool::protocol::requests::RemoveBrokerRequest {
            id: 2,
            force: false,
        })
        .await;
    removal.expect("remove broker 2");
    let moves = settle_on(&client, "moves", PARTITIONS, &[1, 3, 4], &before).await;
    eprintln!(
        "removing broker 2 moved {} of {PARTITIONS} partitions ({:.1}%, ideal 25%)",
        moves.len(),
        100.0 * moves.len() as f64 / f64::from(PARTITIONS)
    );
    assert!(
        moves.iter().all(|(from, _)| *from == Some(2)),
        "a partition moved that broker 2 did not hold: {moves:?}"
    );
    eventually(Duration::from_secs(5), "broker 2 gone", || async {
        let m = metadata(&client).await.map_err(|e| e.to_string())?;
        m.brokers
            .iter()
            .all(|b| b.id != 2)
            .then_some(())
            .ok_or("broker 2 is still a member".to_string())
    })
    .await;
    // It left the control plane's voters too: a quorum is two of 1, 3, 4.
    let status = eventually(Duration::from_secs(10), "broker 2 not a voter", || async {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(["cluster", "status", "--addr"])
            .arg(cluster.brokers[0].addr.to_string())
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let voter_lines = text.lines().filter(|l| l.contains("\tvoter\t")).count();
        (voter_lines == 3 && !text.contains("\n  2\t"))
            .then_some(text.clone())
            .ok_or(text)
    })
    .await;
    eprintln!("{status}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (acked, longest) = producing.await.expect("producer");
    eprintln!(
        "{} messages acknowledged; longest wait for an ack {longest:?}",
        acked.len()
    );

    // Every acknowledged message, exactly once, in order per key.
    let reader = cluster.client(2).await;
    let mut consumer = Consumer::new(
        reader,
        "moves",
        StartAt::Earliest,
        ConsumerConfig::default(),
    )
    .await
    .expect("consumer");
    let mut consumed = Vec::new();
    let acked_seqs: std::collections::HashSet<u64> = acked.iter().map(|a| a.seq).collect();
    let mut consumed_acked = 0;
    while consumed_acked < acked.len() {
        // Nothing for 10 s: the rest is lost; the checker says which.
        let Ok(next) = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await else {
            break;
        };
        let m = next.expect("consumer ended").expect("message");
        let seq = u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes"));
        consumed_acked += usize::from(acked_seqs.contains(&seq));
        consumed.push(Consumed {
            partition: m.partition,
            offset: m.offset,
            key: m.key.expect("key").to_vec(),
            seq,
        });
    }
    // Anything stored but not yet acknowledged when the producer stopped
    // may follow; collect it too, so a duplicate there is caught as well.
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        consumed.push(Consumed {
            partition: m.partition,
            offset: m.offset,
            key: m.key.expect("key").to_vec(),
            seq: u64::from_be_bytes(m.value[..8].try_into().expect("8 bytes")),
        });
    }
    let violations = history::check(&acked, &consumed);
    assert!(violations.is_empty(), "history violations: {violations:?}");

    // With broker 2 out of the voters, losing broker 4 as well leaves a
    // quorum (1 and 3 of 1, 3, 4); had 2 stayed a voter it would not (2 of
    // 1, 2, 3, 4).
    cluster.brokers[1].kill();
    cluster.brokers[3].kill();
    let admin = Client::connect_any(
        &[cluster.brokers[0].addr, cluster.brokers[2].addr],
        spool::client::ConnectOptions::default(),
    )
    .await
    .expect("connect");
    eventually(
        Duration::from_secs(15),
        "admin with two brokers gone",
        || async {
            match admin.create_topic("after-removal", 3, unreplicated()).await {
                Ok(()) => Ok(()),
                Err(e) if e.code() == Some(spool::protocol::ErrorCode::TopicExists) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// A stream-mode group in a cluster: members join the group's coordinator
/// through different brokers, commit through the control plane, and when
/// the coordinator's broker is paused past its lease the group moves to
/// another coordinator that knows every committed offset; when it comes
/// back the members move back and nothing is left unread or uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_group_keeps_its_offsets_when_its_coordinator_is_paused() {
    let _serial = SERIAL.lock().await;
    use rustix::process::Signal;
    use spool::client::GroupConsumer;
    use spool::protocol::requests::{
        CommittedOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, FindCoordinatorRequest,
        ListGroupsRequest,
    };
    use spool::protocol::ErrorCode;

    const PARTITIONS: u32 = 6;
    const N: u64 = 6_000;
    let cluster = Cluster::start(3);
    let admin = cluster.client(0).await;
    cluster.ready(&admin, 3).await;
    admin
        .create_topic("g", PARTITIONS, unreplicated())
        .await
        .expect("create");
    let producer = Producer::new(cluster.client(1).await, ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..N {
        let key = format!("k{}", i % 97);
        let delivery = eventually(Duration::from_secs(10), "send", || async {
            producer
                .send("g", Some(key.as_bytes()), i.to_be_bytes())
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        acks.push(delivery);
    }
    producer.flush().await.expect("flush");
    let mut ends = vec![0u64; PARTITIONS as usize];
    for delivery in acks {
        let stored = delivery.await.expect("acked");
        let end = &mut ends[stored.partition as usize];
        *end = (*end).max(stored.offset + 1);
    }

    let seen: Arc<parking_lot::Mutex<HashMap<(u32, u64), u32>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut members = Vec::new();
    for i in 0..2 {
        // A member gives up on a coordinator that does not answer within
        // 2 s (the default is 30 s), so that it moves during the pause.
        let mut addrs: Vec<SocketAddr> = cluster.brokers.iter().map(|b| b.addr).collect();
        addrs.rotate_left(i + 1);
        let options = spool::client::ConnectOptions {
            request_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let client = Client::connect_any(&addrs, options).await.expect("connect");
        let mut member = GroupConsumer::join(
            client,
            "readers",
            "g",
            StartAt::Earliest,
            ConsumerConfig::default(),
        )
        .await
        .expect("join");
        let (seen, stop) = (seen.clone(), stop.clone());
        members.push(tokio::spawn(async move {
            let (mut errors, mut unavailable) = (0u32, 0u32);
            while !stop.is_cancelled() {
                match member.next_within(Duration::from_millis(200)).await {
                    Some(Ok(m)) => {
                        *seen.lock().entry((m.partition, m.offset)).or_default() += 1;
                        // Paced, so that the pause below lands mid-stream.
                        if m.offset % 50 == 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if let Err(e) = member.commit(&m).await {
                            errors += 1;
                            eprintln!("commit failed: {e}");
                        }
                    }
                    // With one copy per partition, the paused broker's
                    // partitions are unavailable until it is back: said,
                    // and retried by the member.
                    Some(Err(e)) if e.code() == Some(ErrorCode::PartitionUnavailable) => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Some(Err(e)) => {
                        errors += 1;
                        eprintln!("member error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    None => {}
                }
            }
            (errors, unavailable)
        }));
    }

    let find = FindCoordinatorRequest {
        group: "readers".into(),
    };
    let coordinator = admin.call(&find).await.expect("coordinator").id;
    eventually(Duration::from_secs(30), "a third consumed", || async {
        let n = seen.lock().len() as u64;
        (n >= N / 3).then_some(()).ok_or(format!("{n} seen"))
    })
    .await;
    let committed = |client: Client| async move {
        client
            .call_group(
                "readers",
                &CommittedOffsetsRequest {
                    group: "readers".into(),
                },
            )
            .await
            .map(|c| c.offsets)
    };
    let describe = |client: Client| async move {
        client
            .call_group(
                "readers",
                &DescribeGroupRequest {
                    group: "readers".into(),
                },
            )
            .await
            .map_err(|e| e.to_string())
    };
    let before = committed(admin.clone()).await.expect("committed before");
    let victim = index_of(coordinator);
    cluster.signal(victim, Signal::STOP);
    let paused_at = Instant::now();
    // Another broker coordinates once the paused one's lease is gone, and
    // it has every offset committed before the pause.
    let watcher = cluster.client((victim + 1) % 3).await;
    let next = eventually(Duration::from_secs(10), "a new coordinator", || async {
        let id = watcher.call(&find).await.map_err(|e| e.to_string())?.id;
        (id != coordinator).then_some(id).ok_or("same".to_string())
    })
    .await;
    eprintln!(
        "group coordinator moved from {coordinator} to {next} {:?} after SIGSTOP",
        paused_at.elapsed()
    );
    let during = committed(watcher.clone())
        .await
        .expect("committed at the new coordinator");
    for ((p, old), (_, new)) in before.iter().zip(&during) {
        assert!(
            new.unwrap_or(0) >= old.unwrap_or(0),
            "partition {p}: committed {old:?} before the move, {new:?} after"
        );
    }
    // Long enough for the members to give up on the paused coordinator
    // and join the new one.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused_at.elapsed())).await;
    let moved_members = eventually(
        Duration::from_secs(10),
        "members at the new coordinator",
        || async {
            let g = describe(watcher.clone()).await?;
            (g.members == 2)
                .then_some(g.members)
                .ok_or(format!("{} members", g.members))
        },
    )
    .await;
    eprintln!("{moved_members} members rejoined at broker {next}");
    cluster.signal(victim, Signal::CONT);

    eventually(Duration::from_secs(60), "every message read", || async {
        let seen = seen.lock();
        let missing: u64 = (0..PARTITIONS)
            .map(|p| {
                (0..ends[p as usize])
                    .filter(|o| !seen.contains_key(&(p, *o)))
                    .count() as u64
            })
            .sum();
        (missing == 0)
            .then_some(())
            .ok_or(format!("{missing} not yet read"))
    })
    .await;
    // Every partition's committed offset reaches its end, and the
    // coordinator (the paused broker again) describes the group so.
    let described = eventually(Duration::from_secs(20), "all committed", || async {
        let g = describe(admin.clone()).await?;
        let lag: u64 = g.partitions.iter().map(|p| p.end - p.position).sum();
        let members = g.members;
        (lag == 0 && members == 2)
            .then_some(g)
            .ok_or(format!("lag {lag}, {members} members"))
    })
    .await;
    assert_eq!(
        described
            .partitions
            .iter()
            .map(|p| p.end)
            .collect::<Vec<_>>(),
        ends
    );
    stop.cancel();
    let (mut errors, mut unavailable) = (0, 0);
    for member in members {
        let (e, u) = member.await.expect("member task");
        errors += e;
        unavailable += u;
    }
    let again = seen.lock().values().filter(|n| **n > 1).count();
    eprintln!(
        "{N} messages, {again} read more than once across the move, {errors} errors and \
         {unavailable} PartitionUnavailable answers seen by members"
    );
    assert_eq!(errors, 0, "members saw errors across the move");

    // With its members gone the group can be deleted through any broker
    // (the client finds the coordinator); every broker then forgets it,
    // and the name is free for another topic.
    let delete = DeleteGroupRequest {
        group: "readers".into(),
    };
    eventually(Duration::from_secs(10), "group deleted", || async {
        admin
            .call_group("readers", &delete)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    for i in 0..cluster.brokers.len() {
        let client = cluster.client(i).await;
        eventually(Duration::from_secs(10), "group gone everywhere", || async {
            let groups = client
                .call(&ListGroupsRequest)
                .await
                .map_err(|e| e.to_string())?
                .groups;
            groups
                .iter()
                .all(|g| g.name != "readers")
                .then_some(())
                .ok_or(format!("broker {i} still lists it"))
        })
        .await;
    }
    let err = admin
        .call_group("readers", &delete)
        .await
        .expect_err("deleted twice");
    assert_eq!(err.code(), Some(ErrorCode::GroupNotFound), "{err}");
}

/// The history checker finds each kind of broken history (so the tests
/// that find none are saying something).
#[test]
fn the_history_checker_catches_lost_duplicated_and_reordered_messages() {
    let acked: Vec<Acked> = (0..4)
        .map(|seq| Acked {
            key: vec![b'k', (seq % 2) as u8],
            seq,
        })
        .collect();
    let read = |seqs: &[(u64, u64)]| -> Vec<Consumed> {
        seqs.iter()
            .map(|&(offset, seq)| Consumed {
                partition: 0,
                offset,
                key: vec![b'k', (seq % 2) as u8],
                seq,
            })
            .collect()
    };
    assert!(history::check(&acked, &read(&[(0, 0), (1, 1), (2, 2), (3, 3)])).is_empty());
    assert_eq!(
        history::check(&acked, &read(&[(0, 0), (1, 1), (2, 2)])),
        vec![Violation::Lost(3)]
    );
    assert!(
        history::check(&acked, &read(&[(0, 0), (1, 1), (2, 2), (3, 3), (4, 3)]))
            .contains(&Violation::Duplicated(3))
    );
    assert!(
        history::check(&acked, &read(&[(0, 2), (1, 1), (2, 0), (3, 3)]))
            .iter()
            .any(|v| matches!(
                v,
                Violation::Reordered {
                    before: 2,
                    after: 0,
                    ..
                }
            ))
    );
    assert!(
        history::check(&acked, &read(&[(1, 0), (0, 1), (2, 2), (3, 3)]))
            .iter()
            .any(|v| matches!(v, Violation::OffsetsBackwards { .. }))
    );
}
