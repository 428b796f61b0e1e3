//! Consumer groups through the embedded API: queue deliveries, acks, nacks,
//! deadlines, dead letters, restarts; stream commits and assignment.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use spool::broker::{GroupConfig, GroupMode, ResetTo, SettleResult};
use spool::{Broker, BrokerConfig, Message, Offset, PartitionId, SyncPolicy, TopicConfig};

const NO_WAIT: Duration = Duration::ZERO;

fn config(ack_wait_ms: u64, max_deliveries: u32) -> GroupConfig {
    GroupConfig {
        ack_wait_ms,
        max_deliveries,
        max_in_flight: 1000,
    }
}

async fn fill(broker: &Broker, topic: &str, partitions: u32, per_partition: u32) {
    broker
        .create_topic(topic, TopicConfig::new(partitions).sync(SyncPolicy::Never))
        .unwrap();
    for p in 0..partitions {
        let msgs: Vec<_> = (0..per_partition)
            .map(|i| Message::new(format!("{p}-{i}")))
            .collect();
        broker.produce(topic, PartitionId(p), &msgs).await.unwrap();
    }
}

/// What a member is handed right now (no waiting): (offset, deliveries).
async fn due(broker: &Broker, member: u64) -> Vec<(Offset, u32)> {
    broker
        .deliver("g", member, 10, NO_WAIT)
        .await
        .unwrap()
        .iter()
        .map(|d| (d.offset, d.deliveries))
        .collect()
}

#[tokio::test]
async fn several_members_ack_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    fill(&broker, "jobs", 3, 200).await;
    let members: Vec<_> = (0..3)
        .map(|_| {
            broker
                .join_group("workers", "jobs", GroupMode::Queue, config(5000, 5))
                .unwrap()
        })
        .collect();
    let mut acked = BTreeSet::new();
    'outer: loop {
        for &m in &members {
            let got = broker.deliver("workers", m, 37, NO_WAIT).await.unwrap();
            if got.is_empty() && acked.len() == 600 {
                break 'outer;
            }
            let items: Vec<_> = got.iter().map(|d| (d.partition, d.offset)).collect();
            for (r, d) in broker
                .ack("workers", m, &items)
                .await
                .unwrap()
                .into_iter()
                .zip(&got)
            {
                assert_eq!(r, SettleResult::Ok);
                assert_eq!(
                    d.value,
                    format!("{}-{}", d.partition.0, d.offset.0).into_bytes()
                );
                assert!(
                    acked.insert((d.partition, d.offset)),
                    "delivered twice: {d:?}"
                );
            }
        }
    }
    let info = broker.describe_group("workers").unwrap();
    assert!(info
        .partitions
        .iter()
        .all(|p| p.lag == 0 && p.in_flight == 0));
}

/// Deadlines, delays and touches on a manual clock: exact to the
/// millisecond, and no sleeping.
#[tokio::test]
async fn nack_delay_touch_deadline_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let clock = spool::broker::Clock::manual(1_000_000);
    let broker_config = BrokerConfig {
        clock: clock.clone(),
        ..BrokerConfig::default()
    };
    let broker = Broker::open(dir.path(), broker_config).unwrap();
    fill(&broker, "t", 1, 3).await;
    let m = broker
        .join_group("g", "t", GroupMode::Queue, config(1200, 2))
        .unwrap();
    let got = broker.deliver("g", m, 3, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 3);
    let (p, o0, o1, o2) = (PartitionId(0), Offset(0), Offset(1), Offset(2));

    // Nack 0 with a 2000 ms delay; keep 1 alive by touching it; let 2's
    // 1200 ms deadline pass.
    assert_eq!(
        broker
            .nack("g", m, &[(p, o0)], Duration::from_millis(2000))
            .unwrap(),
        [SettleResult::Ok]
    );
    for _ in 0..14 {
        clock.advance(100);
        assert_eq!(
            broker.touch("g", m, &[(p, o1)]).unwrap(),
            [SettleResult::Ok]
        );
    }
    // At 1400 ms only 2 is due: expired, back with its count up. 0 is still
    // delayed, 1 touched.
    assert_eq!(due(&broker, m).await, [(o2, 2)]);
    // 0 comes back once its delay is over, not a millisecond before.
    clock.advance(599);
    assert_eq!(due(&broker, m).await, []);
    clock.advance(1);
    assert_eq!(due(&broker, m).await, [(o0, 2)]);
    broker.ack("g", m, &[(p, o1)]).await.unwrap();

    // 0 and 2 now had their 2 deliveries: each goes to the DLQ at its next
    // deadline, 2 at 2600 ms and 0 at 3200 ms, not a millisecond before.
    let dead_letters = |broker: &Broker| {
        broker
            .read("g.dlq", PartitionId(0), Offset(0), 1 << 20)
            .map_or(0, |f| f.records().count())
    };
    for (advance_ms, dead) in [(599, 0), (1, 1), (599, 1), (1, 2)] {
        clock.advance(advance_ms);
        assert_eq!(due(&broker, m).await, []);
        assert_eq!(dead_letters(&broker), dead);
    }
    let dlq = broker
        .read("g.dlq", PartitionId(0), Offset(0), 1 << 20)
        .unwrap();
    let dead: Vec<_> = dlq.records().map(|r| r.unwrap()).collect();
    assert_eq!(dead.len(), 2);
    for r in &dead {
        assert_eq!(r.header(b"spool.dlq.topic"), Some(&b"t"[..]));
        assert_eq!(r.header(b"spool.dlq.group"), Some(&b"g"[..]));
        assert_eq!(r.header(b"spool.dlq.deliveries"), Some(&b"2"[..]));
        assert_eq!(
            r.header(b"spool.dlq.reason"),
            Some(&b"max_deliveries_exceeded"[..])
        );
        let offset = std::str::from_utf8(r.header(b"spool.dlq.offset").unwrap()).unwrap();
        assert_eq!(r.value, format!("0-{offset}").as_bytes());
    }
    let info = broker.describe_group("g").unwrap();
    assert_eq!(info.partitions[0].dead_letters, 2);
    assert_eq!(info.partitions[0].lag, 0);
}

#[tokio::test]
async fn a_leaving_member_frees_its_messages_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    fill(&broker, "t", 1, 5).await;
    let a = broker
        .join_group("g", "t", GroupMode::Queue, config(60_000, 5))
        .unwrap();
    let b = broker
        .join_group("g", "t", GroupMode::Queue, config(60_000, 5))
        .unwrap();
    assert_eq!(broker.deliver("g", a, 5, NO_WAIT).await.unwrap().len(), 5);
    assert!(broker.deliver("g", b, 5, NO_WAIT).await.unwrap().is_empty());
    broker.leave_group("g", a).unwrap();
    let got = broker.deliver("g", b, 5, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|d| d.deliveries == 2));
    assert!(matches!(
        broker.deliver("g", a, 1, NO_WAIT).await,
        Err(spool::BrokerError::UnknownMember { .. })
    ));
}

#[tokio::test]
async fn acks_survive_a_restart_and_unacked_messages_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
        fill(&broker, "t", 2, 50).await;
        let m = broker
            .join_group("g", "t", GroupMode::Queue, config(60_000, 5))
            .unwrap();
        let got = broker.deliver("g", m, 100, NO_WAIT).await.unwrap();
        assert_eq!(got.len(), 100);
        // Ack the even offsets only; the odd ones are in flight at the "crash".
        let evens: Vec<_> = got
            .iter()
            .filter(|d| d.offset.0 % 2 == 0)
            .map(|d| (d.partition, d.offset))
            .collect();
        broker.ack("g", m, &evens).await.unwrap();
        // Dropped without close: the ack log alone must carry the acks.
        std::mem::drop(broker);
    }
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let m = broker
        .join_group("g", "t", GroupMode::Queue, config(60_000, 5))
        .unwrap();
    let got = broker.deliver("g", m, 1000, NO_WAIT).await.unwrap();
    let offsets: BTreeSet<_> = got.iter().map(|d| (d.partition.0, d.offset.0)).collect();
    let expected: BTreeSet<_> = (0..2)
        .flat_map(|p| (0..50).filter(|o| o % 2 == 1).map(move |o| (p, o)))
        .collect();
    assert_eq!(offsets, expected);
}

#[tokio::test]
async fn stream_groups_commit_and_share_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    fill(&broker, "s", 5, 10).await;
    let a = broker
        .join_group("readers", "s", GroupMode::Stream, GroupConfig::default())
        .unwrap();
    let (gen_a, only_a) = broker.group_assignment("readers", a).unwrap();
    assert_eq!(only_a.len(), 5);
    let b = broker
        .join_group("readers", "s", GroupMode::Stream, GroupConfig::default())
        .unwrap();
    let (gen, pa) = broker.group_assignment("readers", a).unwrap();
    let (_, pb) = broker.group_assignment("readers", b).unwrap();
    assert!(gen > gen_a, "a join must bump the generation");
    assert_eq!(pa.len() + pb.len(), 5);
    assert!(pa.iter().all(|p| !pb.contains(p)));
    broker
        .commit_offset("readers", PartitionId(3), Offset(7))
        .await
        .unwrap();
    // Same name, other mode: refused.
    assert!(broker
        .join_group("readers", "s", GroupMode::Queue, GroupConfig::default())
        .is_err());
    broker.leave_group("readers", b).unwrap();
    assert_eq!(broker.group_assignment("readers", a).unwrap().1.len(), 5);
    broker.leave_group("readers", a).unwrap();
    broker.close().unwrap();

    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let committed = broker.committed_offsets("readers").unwrap();
    assert_eq!(committed[3], (PartitionId(3), Some(Offset(7))));
    assert_eq!(committed[0].1, None);
    broker.reset_group("readers", ResetTo::Latest).unwrap();
    assert!(broker
        .committed_offsets("readers")
        .unwrap()
        .iter()
        .all(|(_, c)| *c == Some(Offset(10))));
    assert_eq!(
        broker.describe_group("readers").unwrap().partitions[0].lag,
        0
    );
}

/// Group and ack-state files carry a format version that is checked before
/// the body is decoded: a file from another format version is refused with
/// an error naming the file, never decoded into wrong values.
#[tokio::test]
async fn group_files_of_another_format_version_are_refused_by_name() {
    for file in ["group.meta", "0.ackstate"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
            fill(&broker, "jobs", 1, 10).await;
            let m = broker
                .join_group("workers", "jobs", GroupMode::Queue, config(5000, 5))
                .unwrap();
            let got = broker.deliver("workers", m, 3, NO_WAIT).await.unwrap();
            let items: Vec<_> = got.iter().map(|d| (d.partition, d.offset)).collect();
            broker.ack("workers", m, &items).await.unwrap();
            broker.close().unwrap();
        }
        let group_dir = dir.path().join("groups").join("workers");
        let path = group_dir.join(file);
        if file.ends_with("ackstate") {
            // Snapshots are written on compaction; write one of a future version.
            std::fs::write(&path, b"SPAS\x02\x00\x00\x00\x00").unwrap();
        } else {
            let mut bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..4], b"SPGM");
            bytes[4] = 2;
            std::fs::write(&path, bytes).unwrap();
        }
        let err = Broker::open(dir.path(), BrokerConfig::default())
            .err()
            .expect("a file of format version 2 must be refused");
        let text = err.to_string();
        assert!(
            text.contains(file) && text.contains("format version 2 is not supported"),
            "{text}"
        );
    }
}

/// Topics, groups and members of a group are bounded; the bound is exact
/// and frees up again when something is removed.
#[tokio::test]
async fn topics_groups_and_members_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = BrokerConfig {
        max_topics: 2,
        max_groups: 1,
        max_members_per_group: 2,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(dir.path(), limits).unwrap();
    let topic = || TopicConfig::new(1).sync(SyncPolicy::Never);
    broker.create_topic("a", topic()).unwrap();
    broker.create_topic("b", topic()).unwrap();
    let err = broker.create_topic("c", topic()).unwrap_err();
    assert!(
        matches!(
            err,
            spool::BrokerError::LimitReached {
                what: "topics",
                limit: 2
            }
        ),
        "{err}"
    );
    // An existing name is still "exists", not "limit".
    assert!(matches!(
        broker.create_topic("a", topic()),
        Err(spool::BrokerError::TopicExists(_))
    ));
    broker.delete_topic("b").unwrap();
    broker.create_topic("c", topic()).unwrap();

    let join = |group: &str| broker.join_group(group, "a", GroupMode::Queue, config(5000, 5));
    join("g").unwrap();
    join("g").unwrap();
    let err = join("g").unwrap_err();
    assert!(
        matches!(
            err,
            spool::BrokerError::LimitReached {
                what: "members of one group",
                ..
            }
        ),
        "{err}"
    );
    let err = broker
        .join_group("h", "c", GroupMode::Queue, config(5000, 5))
        .unwrap_err();
    assert!(
        matches!(
            err,
            spool::BrokerError::LimitReached {
                what: "consumer groups",
                ..
            }
        ),
        "{err}"
    );
}

/// `max_in_flight` bounds what one member holds even when it has many
/// delivers outstanding at once (a pipelining client does exactly that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_holds_for_concurrent_delivers_of_one_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    fill(&broker, "jobs", 64, 20).await;
    let group_config = GroupConfig {
        ack_wait_ms: 60_000,
        max_deliveries: 5,
        max_in_flight: 300,
    };
    for round in 0..50 {
        let group = format!("g{round}");
        let member = broker
            .join_group(&group, "jobs", GroupMode::Queue, group_config)
            .unwrap();
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let broker = broker.clone();
                let group = group.clone();
                tokio::spawn(async move { broker.deliver(&group, member, 1000, NO_WAIT).await })
            })
            .collect();
        let mut held = 0;
        for call in calls {
            held += call.await.unwrap().unwrap().len();
        }
        assert!(
            held <= 300,
            "round {round}: one member holds {held} > max_in_flight 300"
        );
        broker.leave_group(&group, member).unwrap();
    }
}

/// Acks of an `always` topic are synced by the flusher thread, not on the
/// acking task, and concurrent acks share syncs (group commit). Every ack
/// still holds after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_of_an_always_topic_share_ack_log_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker
        .create_topic("jobs", TopicConfig::new(1).sync(SyncPolicy::Always))
        .unwrap();
    let msgs: Vec<_> = (0..400).map(|i| Message::new(format!("{i}"))).collect();
    broker.produce("jobs", PartitionId(0), &msgs).await.unwrap();
    let m = broker
        .join_group("g", "jobs", GroupMode::Queue, config(60_000, 5))
        .unwrap();
    let got = broker.deliver("g", m, 400, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 400);
    let before = broker.storage_stats().ack_log_syncs;
    let acks: Vec<_> = got
        .iter()
        .map(|d| {
            let broker = broker.clone();
            let item = (d.partition, d.offset);
            tokio::spawn(async move { broker.ack("g", m, &[item]).await })
        })
        .collect();
    for ack in acks {
        assert_eq!(ack.await.unwrap().unwrap(), [SettleResult::Ok]);
    }
    let syncs = broker.storage_stats().ack_log_syncs - before;
    assert!(syncs >= 1, "acks of an always topic were never synced");
    assert!(
        syncs < 400,
        "{syncs} syncs for 400 concurrent acks: no group commit"
    );
    broker.leave_group("g", m).unwrap();
    broker.close().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    let m = broker
        .join_group("g", "jobs", GroupMode::Queue, config(60_000, 5))
        .unwrap();
    assert!(broker
        .deliver("g", m, 400, NO_WAIT)
        .await
        .unwrap()
        .is_empty());
}

/// A delivery's answer carries at most 8 MiB of batches past the first:
/// messages taken beyond that are handed back at once, not counted as
/// delivered, and come with the next delivery.
#[tokio::test]
async fn a_delivery_stops_at_its_byte_budget_and_hands_the_rest_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
    broker
        .create_topic("big", TopicConfig::new(1).sync(SyncPolicy::Never))
        .unwrap();
    // Twenty batches of one 1 MiB message each.
    for i in 0..20u8 {
        let value = vec![i; 1 << 20];
        broker
            .produce("big", PartitionId(0), &[Message::new(value)])
            .await
            .unwrap();
    }
    let m = broker
        .join_group("g", "big", GroupMode::Queue, config(60_000, 2))
        .unwrap();
    let first = broker.deliver("g", m, 20, NO_WAIT).await.unwrap();
    assert!(
        (8..=10).contains(&first.len()),
        "8 MiB and the batch that crosses it: {} messages",
        first.len()
    );
    let rest = broker.deliver("g", m, 20, NO_WAIT).await.unwrap();
    let mut offsets: Vec<u64> = first.iter().chain(&rest).map(|d| d.offset.0).collect();
    offsets.sort_unstable();
    assert!(
        offsets.len() >= 16,
        "the second delivery continues: {offsets:?}"
    );
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    for d in first.iter().chain(&rest) {
        assert_eq!(
            d.deliveries, 1,
            "offset {} counted a delivery that never went out",
            d.offset
        );
        assert_eq!(d.value.len(), 1 << 20);
        assert!(d.value.iter().all(|&b| u64::from(b) == d.offset.0));
    }
}
