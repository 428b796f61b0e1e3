//! Authentication and access rules through the real binary, request kind
//! by request kind: without credentials, with a wrong password, as a user
//! without rules, and as a user whose rules allow it. The table of sample
//! requests must name every kind the protocol has, so a new kind cannot
//! slip in without a decision here (and `spool::auth::required::needs`,
//! an exhaustive match, will not compile without one).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use common::cli::{spool, stderr};
use common::server::SpoolServer;
use futures_util::{SinkExt, StreamExt};
use spool::auth::required::{needs, Needs};
use spool::protocol::requests::*;
use spool::protocol::{ErrorCode, ErrorResponse, FrameCodec, Request, Wire, WireGroupMode};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const ADMIN_PASSWORD: &str = "admin-password-1";
const ALICE_PASSWORD: &str = "alice-password-1";

/// A bare protocol connection: any request, any answer.
struct Raw {
    framed: Framed<TcpStream, FrameCodec>,
    next: u32,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw {
            framed: Framed::new(stream, FrameCodec::default()),
            next: 1,
        };
        let hello = Request::Handshake(HandshakeRequest {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            features: 0,
            client_id: "security-test".into(),
        });
        raw.send(&hello).await.expect("handshake");
        raw
    }

    /// Sends `request`; the error code and message if refused.
    async fn send(&mut self, request: &Request) -> Result<(), (Option<ErrorCode>, String)> {
        self.next += 1;
        self.framed
            .send(request.to_frame(self.next))
            .await
            .expect("send");
        let frame = self
            .framed
            .next()
            .await
            .expect("an answer")
            .expect("a frame");
        if frame.is_error() {
            let e = ErrorResponse::decode(frame.body).expect("error body");
            return Err((e.code(), e.message));
        }
        Ok(())
    }

    async fn login(
        &mut self,
        user: &str,
        password: &str,
    ) -> Result<(), (Option<ErrorCode>, String)> {
        self.send(&Request::Authenticate(AuthenticateRequest {
            mechanism: "PLAIN".into(),
            user: user.into(),
            password: password.into(),
        }))
        .await
    }
}

/// One request of every kind, on resources named `orders.t`, group `g1`,
/// lock `l1`.
fn samples() -> Vec<Request> {
    let topic = || "orders.t".to_string();
    let group = || "g1".to_string();
    vec![
        Request::Handshake(HandshakeRequest {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            features: 0,
            client_id: "again".into(),
        }),
        Request::CreateTopic(CreateTopicRequest {
            name: topic(),
            partitions: 1,
            settings: TopicSettings::default(),
        }),
        Request::Produce(ProduceRequest {
            topic: topic(),
            partition: 0,
            acks: Acks::All,
            batch: common::cluster::batch("x"),
        }),
        Request::Fetch(FetchRequest {
            topic: topic(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
        }),
        Request::ListTopics(ListTopicsRequest),
        Request::DescribeTopic(DescribeTopicRequest { name: topic() }),
        Request::JoinGroup(JoinGroupRequest {
            group: group(),
            topic: topic(),
            mode: WireGroupMode::Queue,
            ack_wait_ms: 0,
            max_deliveries: 0,
            max_in_flight: 0,
        }),
        Request::GroupAssignment(GroupAssignmentRequest {
            group: group(),
            member: 1,
        }),
        Request::Deliver(DeliverRequest {
            group: group(),
            member: 1,
            max_messages: 1,
            max_wait_ms: 0,
        }),
        Request::Ack(AckRequest {
            group: group(),
            member: 1,
            items: vec![],
        }),
        Request::Nack(NackRequest {
            group: group(),
            member: 1,
            delay_ms: 0,
            items: vec![],
        }),
        Request::Touch(TouchRequest {
            group: group(),
            member: 1,
            items: vec![],
        }),
        Request::CommitOffset(CommitOffsetRequest {
            group: group(),
            partition: 0,
            offset: 0,
        }),
        Request::CommittedOffsets(CommittedOffsetsRequest { group: group() }),
        Request::ListGroups(ListGroupsRequest),
        Request::DescribeGroup(DescribeGroupRequest { group: group() }),
        Request::PendingMessages(PendingMessagesRequest {
            group: group(),
            partition: None,
            max: 1,
        }),
        Request::LeaveGroup(LeaveGroupRequest {
            group: group(),
            member: 1,
        }),
        Request::ResetGroup(ResetGroupRequest {
            group: group(),
            to: WireResetTarget::Earliest,
            partition: None,
        }),
        Request::DeleteGroup(DeleteGroupRequest { group: group() }),
        Request::OffsetForTimestamp(OffsetForTimestampRequest {
            topic: topic(),
            partition: 0,
            timestamp_ms: 0,
        }),
        Request::Metadata(MetadataRequest),
        Request::RemoveBroker(RemoveBrokerRequest {
            id: 9,
            force: false,
        }),
        Request::FindCoordinator(FindCoordinatorRequest { group: group() }),
        Request::AddVoter(AddVoterRequest { id: 9 }),
        Request::InitProducer(InitProducerRequest),
        Request::ServerStatus(ServerStatusRequest),
        Request::ReplicaFetch(ReplicaFetchRequest {
            topic: topic(),
            partition: 0,
            replica: 9,
            leader_epoch: 0,
            offset: 0,
            last_epoch: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
            groups: vec![],
        }),
        Request::OpenSession(OpenSessionRequest { ttl_ms: 5000 }),
        Request::KeepAlive(KeepAliveRequest { session: 1 }),
        Request::AcquireLock(AcquireLockRequest {
            name: "l1".into(),
            session: 1,
            wait_ms: 0,
        }),
        Request::ReleaseLock(ReleaseLockRequest {
            name: "l1".into(),
            session: 1,
        }),
        Request::ListLocks(ListLocksRequest {
            prefix: String::new(),
        }),
        Request::CloseSession(CloseSessionRequest { session: 1 }),
        Request::Authenticate(AuthenticateRequest {
            mechanism: "PLAIN".into(),
            user: "alice".into(),
            password: ALICE_PASSWORD.into(),
        }),
        Request::UpsertUser(UpsertUserRequest {
            name: "zed".into(),
            password: "zed-password-1".into(),
        }),
        Request::ListUsers(ListUsersRequest),
        Request::DeleteUser(DeleteUserRequest { name: "zed".into() }),
        Request::AddAcl(AddAclRequest {
            acl: WireAcl {
                principal: "zed".into(),
                resource_kind: 1,
                pattern: "z*".into(),
                operations: vec!["consume".into()],
            },
        }),
        Request::ListAcls(ListAclsRequest),
        Request::RemoveAcl(RemoveAclRequest {
            acl: WireAcl {
                principal: "zed".into(),
                resource_kind: 1,
                pattern: "z*".into(),
                operations: vec!["consume".into()],
            },
        }),
        Request::SetQuota(SetQuotaRequest {
            quota: WireQuota {
                principal: "zed".into(),
                produce_bytes_per_sec: 1 << 20,
                fetch_bytes_per_sec: 0,
                max_connections: 0,
            },
        }),
        Request::ListQuotas(ListQuotasRequest),
        Request::RemoveQuota(RemoveQuotaRequest {
            principal: "zed".into(),
        }),
        Request::DeleteTopic(DeleteTopicRequest { name: topic() }),
    ]
}

#[test]
fn the_samples_cover_every_request_kind() {
    let covered: BTreeSet<u16> = samples().iter().map(Request::kind).collect();
    let all: BTreeSet<u16> = (0..=u16::from(u8::MAX))
        .filter(|k| {
            Request::decode(*k, Bytes::new()).err()
                != Some(spool::protocol::DecodeError::UnknownKind(*k))
        })
        .collect();
    assert_eq!(
        covered, all,
        "request kinds without a sample (and so without an access check here)"
    );
}

/// A broker with `--auth` whose users were created offline before its
/// first start; the directory lives as long as the returned handle.
fn auth_server() -> (SpoolServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (user, password) in [("admin", ADMIN_PASSWORD), ("alice", ALICE_PASSWORD)] {
        let out = spool(
            &[
                "users",
                "add",
                user,
                "--data",
                &dir.path().display().to_string(),
            ],
            Some(&format!("{password}\n")),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    (SpoolServer::start_with(dir.path(), &["--auth"]), dir)
}

fn refused(result: &Result<(), (Option<ErrorCode>, String)>) -> bool {
    matches!(result, Err((Some(ErrorCode::NotAuthorized), _)))
}

#[tokio::test]
async fn every_request_kind_is_checked_without_credentials_without_rules_and_with_them() {
    let (server, _dir) = auth_server();

    // No credentials: only the handshake and authentication get through.
    let mut anonymous = Raw::connect(server.addr).await;
    for request in samples() {
        let answer = anonymous.send(&request).await;
        match request {
            Request::Handshake(_) => assert!(!refused(&answer), "{answer:?}"),
            Request::Authenticate(_) => {}
            other => assert!(
                refused(&answer),
                "kind {} answered without credentials: {answer:?}",
                other.kind()
            ),
        }
    }

    // A wrong password.
    let mut wrong = Raw::connect(server.addr).await;
    let answer = wrong.login("alice", "not-her-password").await;
    assert!(
        matches!(answer, Err((Some(ErrorCode::AuthenticationFailed), _))),
        "{answer:?}"
    );
    let after = wrong.send(&Request::ListTopics(ListTopicsRequest)).await;
    assert!(refused(&after), "a failed login still served: {after:?}");

    // Alice, no rules: everything that needs a rule is refused, naming the
    // operation and the resource.
    let mut alice = Raw::connect(server.addr).await;
    alice.login("alice", ALICE_PASSWORD).await.expect("login");
    for request in samples() {
        let needed = needs(&request);
        let answer = alice.send(&request).await;
        match needed {
            Needs::All(ref list) => {
                let Err((Some(ErrorCode::NotAuthorized), message)) = &answer else {
                    panic!("kind {} served without a rule: {answer:?}", request.kind());
                };
                let (op, kind, name) = &list[0];
                assert!(
                    message.contains(op.name())
                        && message.contains(kind.name())
                        && message.contains(name.as_str()),
                    "{message}"
                );
            }
            Needs::Nothing | Needs::Authenticated => {
                assert!(
                    !refused(&answer),
                    "kind {} refused: {answer:?}",
                    request.kind()
                )
            }
        }
    }

    // Rules for every operation on her resources: nothing refused.
    let mut admin = Raw::connect(server.addr).await;
    admin
        .login("admin", ADMIN_PASSWORD)
        .await
        .expect("admin login");
    let all_ops: Vec<String> = spool::auth::Operation::ALL
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    for (kind, pattern) in [(1, "orders.*"), (2, "g*"), (3, "l*"), (4, "*")] {
        let acl = WireAcl {
            principal: "alice".into(),
            resource_kind: kind,
            pattern: pattern.into(),
            operations: all_ops.clone(),
        };
        admin
            .send(&Request::AddAcl(AddAclRequest { acl }))
            .await
            .expect("add rule");
    }
    for request in samples() {
        let answer = alice.send(&request).await;
        assert!(
            !refused(&answer),
            "kind {} refused with rules: {answer:?}",
            request.kind()
        );
    }
}

#[tokio::test]
async fn a_principal_allowed_on_a_prefix_cannot_touch_other_topics_and_guessing_is_slowed() {
    let (server, _dir) = auth_server();
    let addr = server.addr.to_string();
    let as_user = |user: &str, password: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(args)
            .args(["--addr", &addr, "--user", user])
            .env("SPOOL_PASSWORD", password)
            .output()
            .expect("run spool");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = as_user("admin", ADMIN_PASSWORD, &["topics", "create", "payments"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = as_user(
        "admin",
        ADMIN_PASSWORD,
        &[
            "acl",
            "add",
            "alice",
            "--allow",
            "produce,consume,create,describe",
            "--topic",
            "orders.*",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = as_user("alice", ALICE_PASSWORD, &["topics", "create", "orders.eu"]);
    assert_eq!(code, Some(0), "{err}");

    let mut alice = Raw::connect(server.addr).await;
    alice.login("alice", ALICE_PASSWORD).await.expect("login");
    let produce = |topic: &str| {
        Request::Produce(ProduceRequest {
            topic: topic.into(),
            partition: 0,
            acks: Acks::All,
            batch: common::cluster::batch("m"),
        })
    };
    let fetch = |topic: &str| {
        Request::Fetch(FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
        })
    };
    alice.send(&produce("orders.eu")).await.expect("her topic");
    alice.send(&fetch("orders.eu")).await.expect("her topic");
    for request in [produce("payments"), fetch("payments")] {
        let answer = alice.send(&request).await;
        let Err((Some(ErrorCode::NotAuthorized), message)) = &answer else {
            panic!("alice reached payments: {answer:?}");
        };
        assert!(message.contains("payments"), "{message}");
    }
    // The CLI's exit code and message for a refusal.
    let (code, err) = as_user("alice", ALICE_PASSWORD, &["topics", "delete", "orders.eu"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("may not delete topic"), "{err}");

    // Five wrong guesses from one address, and then even the right
    // password is refused for a while.
    for _ in 0..spool::auth::MAX_FAILURES {
        let mut guess = Raw::connect(server.addr).await;
        assert!(guess.login("alice", "guess-guess").await.is_err());
    }
    let mut late = Raw::connect(server.addr).await;
    let answer = late.login("alice", ALICE_PASSWORD).await;
    let Err((Some(ErrorCode::AuthenticationFailed), message)) = &answer else {
        panic!("not rate-limited: {answer:?}");
    };
    assert!(message.contains("too many failed attempts"), "{message}");
}

/// Acknowledged value bytes of a producer sending `size`-byte messages to
/// `topic` as `user` until `stop` is set.
fn producing(
    addr: SocketAddr,
    user: &'static str,
    password: &'static str,
    topic: &'static str,
    size: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::Ordering;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = acked.clone();
    tokio::spawn(async move {
        let client =
            spool::client::Client::connect_with(addr, common::server::as_user(user, password))
                .await
                .expect("connect");
        let producer = spool::client::Producer::new(client, Default::default());
        let value = vec![7u8; size];
        while !stop.load(Ordering::Relaxed) {
            let delivery = producer.send(topic, None, &value).await.expect("send");
            let counted = counted.clone();
            tokio::spawn(async move {
                if delivery.await.is_ok() {
                    counted.fetch_add(size as u64, Ordering::Relaxed);
                }
            });
        }
    });
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_slow_a_principal_to_its_rate_and_leave_others_alone() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    const BOB_PASSWORD: &str = "bob-password-1";
    const CAROL_PASSWORD: &str = "carol-password-1";
    const RATE: u64 = 1_000_000;
    let (server, _dir) = auth_server();
    let mut admin = Raw::connect(server.addr).await;
    admin.login("admin", ADMIN_PASSWORD).await.expect("login");
    admin
        .send(&Request::UpsertUser(UpsertUserRequest {
            name: "bob".into(),
            password: BOB_PASSWORD.into(),
        }))
        .await
        .expect("bob");
    admin
        .send(&Request::UpsertUser(UpsertUserRequest {
            name: "carol".into(),
            password: CAROL_PASSWORD.into(),
        }))
        .await
        .expect("carol");
    for principal in ["alice", "bob"] {
        let acl = WireAcl {
            principal: principal.into(),
            resource_kind: 1,
            pattern: "q.*".into(),
            operations: vec!["produce".into(), "consume".into(), "describe".into()],
        };
        admin
            .send(&Request::AddAcl(AddAclRequest { acl }))
            .await
            .expect("rule");
    }
    for topic in ["q.alice", "q.bob"] {
        admin
            .send(&Request::CreateTopic(CreateTopicRequest {
                name: topic.into(),
                partitions: 1,
                settings: TopicSettings::default(),
            }))
            .await
            .expect("topic");
    }
    // Through the command line, as scripts would.
    let addr = server.addr.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(["quotas", "set", "alice", "--produce", "1M", "--fetch", "1M"])
        .args(["--addr", &addr, "--user", "admin"])
        .env("SPOOL_PASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("spool quotas set");
    assert!(out.status.success(), "{}", stderr(&out));
    admin
        .send(&Request::SetQuota(SetQuotaRequest {
            quota: WireQuota {
                principal: "carol".into(),
                produce_bytes_per_sec: 0,
                fetch_bytes_per_sec: 0,
                max_connections: 3,
            },
        }))
        .await
        .expect("carol's quota");

    // Bob alone, then Alice beside him: Bob's rate must not drop to hers,
    // and hers must be her quota.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let bob = producing(
        server.addr,
        "bob",
        BOB_PASSWORD,
        "q.bob",
        4096,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (b0, t0) = (bob.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bob_alone = (bob.load(Ordering::Relaxed) - b0) as f64 / t0.elapsed().as_secs_f64();
    let alice = producing(
        server.addr,
        "alice",
        ALICE_PASSWORD,
        "q.alice",
        4096,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (a1, b1, t1) = (
        alice.load(Ordering::Relaxed),
        bob.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let secs = t1.elapsed().as_secs_f64();
    let alice_rate = (alice.load(Ordering::Relaxed) - a1) as f64 / secs;
    let bob_beside = (bob.load(Ordering::Relaxed) - b1) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    eprintln!(
        "bob alone {bob_alone:.0} B/s, beside alice {bob_beside:.0} B/s; alice {alice_rate:.0} B/s"
    );
    assert!(
        (0.8..=1.2).contains(&(alice_rate / RATE as f64)),
        "alice produced {alice_rate:.0} B/s under a quota of {RATE} B/s"
    );
    assert!(
        bob_beside > 5.0 * RATE as f64 && bob_beside > 0.5 * bob_alone,
        "bob slowed down: {bob_alone:.0} B/s alone, {bob_beside:.0} B/s beside alice"
    );

    // Fetching: Alice reads 2.5 MB of her topic at 1 MB/s (less one
    // burst), one fetch at a time.
    let mut reader = Raw::connect(server.addr).await;
    reader.login("alice", ALICE_PASSWORD).await.expect("login");
    let started = Instant::now();
    let (mut offset, mut read) = (0u64, 0usize);
    while read < 2_500_000 {
        reader.next += 1;
        let fetch = Request::Fetch(FetchRequest {
            topic: "q.alice".into(),
            partition: 0,
            offset,
            max_bytes: 256 * 1024,
            max_wait_ms: 0,
        });
        reader
            .framed
            .send(fetch.to_frame(reader.next))
            .await
            .expect("send");
        let frame = reader.framed.next().await.expect("answer").expect("frame");
        assert!(!frame.is_error(), "fetch refused");
        let Ok(Response::Fetch(r)) = Response::decode(frame.kind, frame.body.clone()) else {
            panic!("not a fetch response");
        };
        assert!(r.next_offset > offset, "no progress at {offset}");
        offset = r.next_offset;
        read += frame.body.len();
    }
    let took = started.elapsed().as_secs_f64();
    let fetch_rate = read as f64 / took;
    assert!(
        (0.8..=1.2).contains(&(fetch_rate / RATE as f64)),
        "alice fetched {fetch_rate:.0} B/s under a quota of {RATE} B/s"
    );

    // Carol may hold three connections.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(server.addr).await;
        c.login("carol", CAROL_PASSWORD)
            .await
            .expect("within the limit");
        held.push(c);
    }
    let mut fourth = Raw::connect(server.addr).await;
    let answer = fourth.login("carol", CAROL_PASSWORD).await;
    let Err((Some(ErrorCode::LimitReached), message)) = &answer else {
        panic!("a fourth connection for carol: {answer:?}");
    };
    assert!(message.contains("carol"), "{message}");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    fourth
        .login("carol", CAROL_PASSWORD)
        .await
        .expect("a slot came free");

    // The pauses are in the metrics, by principal.
    let metrics = server.http_get("/metrics");
    let throttled = metrics
        .lines()
        .find(|l| {
            l.starts_with("spool_quota_throttle_seconds_total")
                && l.contains("principal=\"alice\"")
                && l.contains("direction=\"produce\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(throttled > 1.0, "alice's produce pauses: {throttled}");
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("spool_quota_throttle_seconds_total")
                && l.contains("principal=\"bob\"")),
        "bob was throttled"
    );
}
