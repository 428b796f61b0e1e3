//! A cluster over TLS, through the real binary: three brokers with mutual
//! TLS on the peer port and TLS on the client port replicate a topic with
//! acks=all (followers fetch from leaders over TLS, presenting the
//! cluster's certificate); a broker whose certificate another CA signed,
//! and one that speaks clear text, cannot join.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{metadata, Cluster};
use common::pki::Pki;
use common::server::SpoolServer;
use spool::client::{Client, ConnectOptions, Producer, ProducerConfig, TlsOptions, TopicOptions};

fn tls_flags(pki: &Pki, file: &str) -> Vec<String> {
    let (cert, key) = pki.issue_named(file, file, &["127.0.0.1"]);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let ca = pki.ca_file("cluster").display().to_string();
    [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--peer-tls-cert",
        &cert,
        "--peer-tls-key",
        &key,
        "--peer-tls-ca",
        &ca,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn handshake_failures(server: &SpoolServer) -> u64 {
    server
        .http_get("/metrics")
        .lines()
        .find(|l| l.starts_with("spool_tls_handshake_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_and_refuses_brokers_without_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let rogue = Pki::new(dir.path(), "rogue");
    let flags = tls_flags(&pki, "broker");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, false, &flags);

    let tls = TlsOptions::with_ca_file(&pki.ca_file("cluster")).expect("CA");
    let options = ConnectOptions {
        tls: Some(tls),
        ..ConnectOptions::default()
    };
    let addrs: Vec<SocketAddr> = cluster.brokers.iter().map(|b| b.addr).collect();
    let client = Client::connect_any(&addrs, options.clone())
        .await
        .expect("TLS client");
    cluster.ready(&client, 3).await;

    // acks=all needs the followers' copies, which they fetch over TLS.
    client
        .create_topic(
            "secure",
            2,
            TopicOptions {
                replication: Some(3),
                ..TopicOptions::default()
            },
        )
        .await
        .expect("create");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..200 {
        let value = format!("m{i}");
        deliveries.push(
            producer
                .send("secure", Some(value.as_bytes()), value.as_bytes())
                .await
                .expect("send"),
        );
    }
    for d in deliveries {
        d.await.expect("acknowledged by all in-sync replicas");
    }
    // Every replica of every partition is in sync: the followers did
    // fetch everything over TLS.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metadata(&client).await.expect("metadata");
        let topic = m.topics.iter().find(|t| t.name == "secure").expect("topic");
        let in_sync: Vec<usize> = topic
            .partitions
            .iter()
            .map(|p| p.replicas.iter().filter(|r| r.in_sync).count())
            .collect();
        if in_sync.iter().all(|n| *n == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas not in sync over TLS: {in_sync:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broker with another CA's certificate, and one in clear text: the
    // voters refuse them at the handshake, and they never become members.
    let before: u64 = cluster.brokers[..3].iter().map(handshake_failures).sum();
    cluster.add_broker_with(4, &tls_flags(&rogue, "rogue"));
    cluster.add_broker_with(5, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = metadata(&client).await.expect("metadata");
    let members: Vec<u64> = m.brokers.iter().map(|b| b.id).collect();
    assert_eq!(
        members,
        vec![1, 2, 3],
        "a broker without the cluster's certificate joined"
    );
    let after: u64 = cluster.brokers[..3].iter().map(handshake_failures).sum();
    assert!(
        after >= before + 2,
        "refused peers not counted: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_users_and_rules_are_the_clusters_and_brokers_replicate_as_brokers() {
    use spool::protocol::requests::{AddAclRequest, ListUsersRequest, UpsertUserRequest, WireAcl};
    const ADMIN_PASSWORD: &str = "admin-password-1";
    const ALICE_PASSWORD: &str = "alice-password-1";
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "cluster");
    let mut flags = tls_flags(&pki, "broker");
    flags.push("--auth".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(3, false, &flags);

    // The admin is created offline on broker 1 only, which seeds the
    // cluster's (still unset) users when it comes back.
    cluster.brokers[0].kill();
    let data = cluster.brokers[0].dir.display().to_string();
    let out = common::cli::spool(
        &["users", "add", "admin", "--data", &data],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert!(out.status.success(), "{}", common::cli::stderr(&out));
    cluster.restart(0);

    let tls = TlsOptions::with_ca_file(&pki.ca_file("cluster")).expect("CA");
    let as_user = |user: &str, password: &str| ConnectOptions {
        tls: Some(tls.clone()),
        connect_attempts: 1,
        ..common::server::as_user(user, password)
    };
    // The admin logs in at broker 3, which never had a users file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin = loop {
        match Client::connect_with(cluster.brokers[2].addr, as_user("admin", ADMIN_PASSWORD)).await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "admin never known at broker 3: {e}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    // Alice is created at broker 3 and allowed at broker 2.
    admin
        .call(&UpsertUserRequest {
            name: "alice".into(),
            password: ALICE_PASSWORD.into(),
        })
        .await
        .expect("alice");
    let at_broker_2 =
        Client::connect_with(cluster.brokers[1].addr, as_user("admin", ADMIN_PASSWORD))
            .await
            .expect("admin at broker 2");
    at_broker_2
        .call(&AddAclRequest {
            acl: WireAcl {
                principal: "alice".into(),
                resource_kind: 1,
                pattern: "orders.*".into(),
                operations: vec!["create".into(), "produce".into(), "describe".into()],
            },
        })
        .await
        .expect("rule");
    let names = at_broker_2
        .call(&ListUsersRequest)
        .await
        .expect("list")
        .names;
    assert_eq!(names, vec!["admin".to_string(), "alice".to_string()]);

    // Alice, at broker 1: a replicated topic, acks=all (the followers
    // fetch as brokers, by certificate), and nothing beyond her rule.
    let addrs: Vec<SocketAddr> = cluster.brokers.iter().map(|b| b.addr).collect();
    let alice = Client::connect_any(&addrs, as_user("alice", ALICE_PASSWORD))
        .await
        .expect("alice logs in");
    cluster.ready(&alice, 3).await;
    alice
        .create_topic(
            "orders.eu",
            1,
            TopicOptions {
                replication: Some(3),
                ..TopicOptions::default()
            },
        )
        .await
        .expect("her topic");
    let producer = Producer::new(alice.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..50 {
        let value = format!("o{i}");
        deliveries.push(
            producer
                .send("orders.eu", None, value.as_bytes())
                .await
                .expect("send"),
        );
    }
    for d in deliveries {
        d.await.expect("replicated to every in-sync broker");
    }
    let err = alice
        .create_topic("payments", 1, TopicOptions::default())
        .await
        .expect_err("not her topic");
    assert!(
        err.to_string().contains("alice may not create topic"),
        "{err}"
    );

    // Every broker keeps the cluster's users in its own files too.
    let data = cluster.brokers[1].dir.display().to_string();
    let out = common::cli::spool(&["users", "list", "--data", &data], None);
    assert_eq!(common::cli::stdout(&out), "admin\nalice\n");
}
