//! TLS on the client port, through the real binary: a client that trusts
//! the broker's CA round-trips messages; one that trusts another CA is
//! refused with a clear error, at once; garbage and plain-text clients on
//! the TLS port hurt nothing; with `--tls-client-ca`, a client without a
//! certificate from that CA is refused and one with it is served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cli::{spool, stderr, stdout};
use common::pki::Pki;
use common::server::SpoolServer;
use spool::client::{Client, ConnectOptions, TlsOptions, TopicOptions};

fn tls_server(pki: &Pki, extra: &[&str]) -> SpoolServer {
    let (cert, key) = pki.issue("broker", &["127.0.0.1", "localhost"]);
    let mut args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    SpoolServer::temporary_with(&args)
}

fn options(tls: TlsOptions) -> ConnectOptions {
    ConnectOptions {
        tls: Some(tls),
        connect_attempts: 1,
        ..ConnectOptions::default()
    }
}

async fn round_trip(client: &Client) {
    client
        .create_topic("secret", 1, TopicOptions::default())
        .await
        .expect("create over TLS");
    let batch = common::cluster::batch("over tls");
    let (base, next) = client
        .produce_batch("secret", 0, batch)
        .await
        .expect("produce over TLS");
    assert_eq!((base, next), (0, 1));
}

#[tokio::test]
async fn a_client_that_trusts_the_brokers_ca_is_served_and_others_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "good");
    let other = Pki::new(dir.path(), "other");
    let server = tls_server(&pki, &[]);

    let tls = TlsOptions::with_ca_file(&pki.ca_file("good")).expect("CA");
    let client = Client::connect_with(server.addr, options(tls.clone()))
        .await
        .expect("TLS connect");
    round_trip(&client).await;
    // By name as well as by IP.
    let named = Client::connect_with(server.addr, options(tls.server_name("localhost")))
        .await
        .expect("TLS connect by name");
    assert_eq!(named.list_topics().await.expect("list").len(), 1);

    // A client that trusts another CA: refused at once, saying why.
    let started = Instant::now();
    let wrong = TlsOptions::with_ca_file(&other.ca_file("other")).expect("CA");
    let err = Client::connect_with(server.addr, options(wrong))
        .await
        .err()
        .expect("a broker its CA did not sign must be refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake") && text.contains("certificate"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The wrong name: refused too.
    let tls = TlsOptions::with_ca_file(&pki.ca_file("good")).expect("CA");
    let err = Client::connect_with(server.addr, options(tls.server_name("elsewhere.example")))
        .await
        .err()
        .expect("a certificate for another name must be refused");
    assert!(err.to_string().contains("certificate"), "{err}");

    // Garbage where a ClientHello belongs, and a plain-text client: the
    // connection is closed, the broker goes on serving.
    for junk in [
        &b"\x16\x03\x01\xff\xffgarbage"[..],
        b"SP\x01\x00 not a TLS hello at all",
    ] {
        let mut raw = TcpStream::connect(server.addr).expect("raw connect");
        raw.write_all(junk).expect("write junk");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut raw, &mut buf);
    }
    let plain = Client::connect_with(
        server.addr,
        ConnectOptions {
            connect_attempts: 1,
            connect_timeout: Duration::from_secs(3),
            ..ConnectOptions::default()
        },
    )
    .await;
    assert!(plain.is_err(), "a plain-text client got through a TLS port");
    assert_eq!(client.list_topics().await.expect("still served").len(), 1);
    let metrics = server.http_get("/metrics");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("spool_tls_handshake_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("handshake failures counted");
    assert!(failures >= 3, "{failures}");

    // The command line: --tls-ca.
    let addr = server.addr.to_string();
    let ca = pki.ca_file("good").display().to_string();
    let ok = spool(&["topics", "list", "--addr", &addr, "--tls-ca", &ca], None);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("secret"), "{}", stdout(&ok));
    let bad_ca = other.ca_file("other").display().to_string();
    let bad = spool(
        &["topics", "list", "--addr", &addr, "--tls-ca", &bad_ca],
        None,
    );
    assert_eq!(bad.status.code(), Some(3), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("certificate"), "{}", stderr(&bad));
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "good");
    let clients = Pki::new(dir.path(), "clients");
    let rogue = Pki::new(dir.path(), "rogue");
    let client_ca = clients.ca_file("clients").display().to_string();
    let server = tls_server(&pki, &["--tls-client-ca", &client_ca]);

    let no_cert = TlsOptions::with_ca_file(&pki.ca_file("good")).expect("CA");
    let refused = match Client::connect_with(server.addr, options(no_cert)).await {
        Err(e) => e.to_string(),
        // TLS 1.3 finishes the client's side before the server checks:
        // the refusal then arrives on the first request.
        Ok(client) => client
            .list_topics()
            .await
            .err()
            .map(|e| e.to_string())
            .expect("a client without a certificate must be refused"),
    };
    assert!(!refused.is_empty());

    let (cert, key) = clients.issue("alice", &["alice"]);
    let with_cert =
        TlsOptions::with_client_cert(&pki.ca_file("good"), &cert, &key).expect("identity");
    let client = Client::connect_with(server.addr, options(with_cert))
        .await
        .expect("mutual TLS");
    round_trip(&client).await;

    let (cert, key) = rogue.issue("mallory", &["mallory"]);
    let rogue_cert =
        TlsOptions::with_client_cert(&pki.ca_file("good"), &cert, &key).expect("identity");
    let refused = match Client::connect_with(server.addr, options(rogue_cert)).await {
        Err(_) => true,
        Ok(client) => client.list_topics().await.is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");
}

#[tokio::test]
async fn with_auth_a_client_certificate_names_the_principal_and_needs_no_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "good");
    let clients = Pki::new(dir.path(), "clients");
    let client_ca = clients.ca_file("clients").display().to_string();
    let server = tls_server(&pki, &["--tls-client-ca", &client_ca, "--auth"]);
    let as_cert = |file: &str, cn: &str| {
        let (cert, key) = clients.issue_named(file, cn, &[]);
        TlsOptions::with_client_cert(&pki.ca_file("good"), &cert, &key).expect("identity")
    };

    // Alice's certificate makes her alice: refused by the rules (naming
    // her), not asked for a password.
    let alice = Client::connect_with(server.addr, options(as_cert("alice", "alice")))
        .await
        .expect("alice connects");
    let err = alice
        .create_topic("orders.eu", 1, TopicOptions::default())
        .await
        .expect_err("no rule yet");
    assert!(
        err.to_string().contains("alice may not create topic"),
        "{err}"
    );

    // The admin's certificate, through the command line: allows her.
    let (cert, key) = clients.issue_named("admin", "admin", &[]);
    let addr = server.addr.to_string();
    let ca = pki.ca_file("good").display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-client-cert",
            &cert,
            "--tls-client-key",
            &key,
        ]);
        spool(&all, None)
    };
    let out = cli(&[
        "acl",
        "add",
        "alice",
        "--allow",
        "create,produce",
        "--topic",
        "orders.*",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    alice
        .create_topic("orders.eu", 1, TopicOptions::default())
        .await
        .expect("allowed now");
    alice
        .produce_batch("orders.eu", 0, common::cluster::batch("by certificate"))
        .await
        .expect("produce");
    let out = cli(&["topics", "list"]);
    assert!(stdout(&out).contains("orders.eu"), "{}", stderr(&out));

    // A certificate whose name is no user name names nobody: the
    // connection must still authenticate with a password.
    let nobody = Client::connect_with(server.addr, options(as_cert("odd", "not a user!")))
        .await
        .expect("connects");
    let err = nobody.list_topics().await.expect_err("no principal");
    assert!(err.to_string().contains("authenticate first"), "{err}");
}
