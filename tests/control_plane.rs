//! The control plane's Raft group over real TCP on loopback and real files:
//! three nodes elect a leader, commit commands, survive losing the leader,
//! and a restarted node comes back with its state from disk.
//! (Process-level fault tests, SIGKILL and cut links, are in `cluster.rs`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use spool::cluster::raft::{ControlPlane, RaftTimings};
use spool::cluster::state::{Member, TopicSpec};
use spool::cluster::{ClusterState, Command, NodeId, Outcome};
use spool::TopicConfig;

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn start(id: u64, root: &Path, voters: &BTreeMap<NodeId, String>) -> ControlPlane {
    let addr: SocketAddr = voters[&NodeId(id)].parse().expect("addr");
    // The port was just freed by a previous node or by `free_port`; retry
    // briefly if the OS has not released it yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ControlPlane::start(
            Member {
                id: NodeId(id),
                client_addr: format!("127.0.0.1:{}", 7000 + id),
                peer_addr: addr.to_string(),
            },
            &root.join(format!("node-{id}")),
            addr,
            voters,
            ClusterState::new(1500),
            &RaftTimings::default(),
            spool::cluster::raft::Network::default(),
        )
        .await
        {
            Ok(node) => return node,
            Err(e) if Instant::now() < deadline => {
                eprintln!("node {id} not started yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node {id}: {e}"),
        }
    }
}

/// Waits until one of `nodes` reports itself leader; returns its index.
async fn leader_of(nodes: &[&ControlPlane], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.leader() == Some(n.id) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits `command` through whichever node leads, riding out an election
/// under way (what a forwarding broker does for its clients).
async fn commit(nodes: &[ControlPlane], command: Command) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let at = leader_of(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
        match nodes[at].propose(command.clone()).await {
            Ok(outcome) => return outcome,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying at the next leader: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{command:?} never committed: {e}"),
        }
    }
}

async fn wait_for(node: &ControlPlane, what: &str, check: impl Fn(&ClusterState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = node.state.clone();
    loop {
        if check(&state.borrow_and_update()) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "node {}: {what} never happened", node.id);
        let _ = tokio::time::timeout(left, state.changed()).await;
    }
}

fn member(id: u64) -> Command {
    Command::AddMember(Member {
        id: NodeId(id),
        client_addr: format!("127.0.0.1:{}", 7000 + id),
        peer_addr: format!("127.0.0.1:{}", 7100 + id),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_commit_survive_the_leader_and_recover_from_disk() {
    let root = tempfile::tempdir().expect("tempdir");
    let voters: BTreeMap<NodeId, String> = (1..=3)
        .map(|id| (NodeId(id), free_port().to_string()))
        .collect();
    let mut nodes = vec![
        start(1, root.path(), &voters).await,
        start(2, root.path(), &voters).await,
        start(3, root.path(), &voters).await,
    ];
    // Every broker adds itself as a member by heartbeating the leader.
    for node in &nodes {
        wait_for(node, "3 members", |s| s.members.len() == 3).await;
    }
    let topic = Command::CreateTopic {
        name: "orders".into(),
        spec: TopicSpec {
            config: TopicConfig::new(12),
            replication: 1,
        },
    };
    assert_eq!(commit(&nodes, topic.clone()).await, Outcome::Applied);
    // Committed means refused the second time, on every node's copy.
    assert!(matches!(commit(&nodes, topic).await, Outcome::Refused(_)));
    // A follower cannot write; it says so instead of pretending.
    let first = leader_of(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let follower = (first + 1) % 3;
    assert!(nodes[follower].propose(member(9)).await.is_err());
    // Submitted through a follower, a command is forwarded to the leader.
    let forwarded = Command::CreateTopic {
        name: "forwarded".into(),
        spec: TopicSpec {
            config: TopicConfig::new(2),
            replication: 1,
        },
    };
    assert_eq!(
        nodes[follower]
            .submit(forwarded, Duration::from_secs(5))
            .await
            .expect("forwarded"),
        Outcome::Applied
    );
    for node in &nodes {
        wait_for(node, "3 members and the topic", |s| {
            s.members.len() == 3
                && s.topics.contains_key("orders")
                && s.topics.contains_key("forwarded")
        })
        .await;
    }
    // Heartbeats keep every lease alive well past its 1.5 s TTL, and each
    // broker knows its own lease is good.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &nodes {
        let state = node.state.borrow().clone();
        for id in 1..=3 {
            assert!(
                state.is_alive(NodeId(id)),
                "broker {id} expired while heartbeating"
            );
        }
        assert!(
            node.lease_valid(),
            "broker {} thinks its lease lapsed",
            node.id
        );
    }

    // Lose the leader: the other two elect a new one and commit again.
    let old = nodes.remove(first);
    let old_id = old.id;
    let stopping = Instant::now();
    old.shutdown().await;
    eprintln!("old leader stopped in {:?}", stopping.elapsed());
    // From here on it is as gone as a SIGKILLed process.
    let lost_at = Instant::now();
    let second = leader_of(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let after = Command::CreateTopic {
        name: "after".into(),
        spec: TopicSpec {
            config: TopicConfig::new(1),
            replication: 1,
        },
    };
    assert_eq!(
        nodes[second].propose(after).await.expect("create"),
        Outcome::Applied
    );
    let recovered = lost_at.elapsed();
    eprintln!("new leader committing {recovered:?} after the old one stopped");
    assert!(recovered < Duration::from_secs(3), "took {recovered:?}");
    // The new leader times every lease afresh and expires the silent one's
    // after one TTL; the two live brokers keep theirs.
    wait_for(&nodes[second], "the stopped broker's lease expiring", |s| {
        !s.is_alive(old_id)
    })
    .await;
    let expired = lost_at.elapsed();
    eprintln!("stopped broker's lease expired {expired:?} after it stopped");
    assert!(
        expired < recovered + Duration::from_millis(1500 + 1000),
        "took {expired:?}"
    );
    let state = nodes[second].state.borrow().clone();
    assert_eq!(state.members.len(), 3);
    assert_eq!(
        state.leases.values().filter(|l| l.alive).count(),
        2,
        "a live broker was expired"
    );

    // The old leader restarts from its files, whose log ends in a torn
    // record (a crash mid-append): the tail is cut, it has everything it
    // had, and it catches up on what was committed without it.
    let log = root
        .path()
        .join(format!("node-{}", old_id.0))
        .join("raft.log");
    let whole = std::fs::metadata(&log).expect("raft.log").len();
    assert!(whole > 0, "nothing was logged");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5]).expect("tear");
    }
    let back = start(old_id.0, root.path(), &voters).await;
    wait_for(&back, "catching up and renewing its lease", |s| {
        s.members.len() == 3 && s.topics.contains_key("after") && s.is_alive(old_id)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !back.lease_valid() {
        assert!(
            Instant::now() < deadline,
            "the restarted broker never got its lease back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
    back.shutdown().await;
    let after = std::fs::metadata(&log).expect("raft.log").len();
    assert!(after >= whole, "records before the torn tail were lost");
    let bytes = std::fs::read(&log).expect("read");
    assert!(
        !bytes.windows(9).any(|w| w == [200, 0, 0, 0, 1, 2, 3, 4, 5]),
        "the torn record is still there"
    );
}
