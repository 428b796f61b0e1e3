//! Distributed locks on real processes: `spool serve` (one broker or a
//! three-broker cluster) and lock-holding worker processes (this test
//! binary run again as `lock_worker`), paused with SIGSTOP past their TTL
//! while they hold the lock, with brokers SIGKILLed under them in the
//! cluster. A checker reads what the workers did to two fenced resources,
//! a topic (fenced produce) and a shared counter file that checks tokens,
//! and finds any stale write or lost increment; run with the token checks
//! off, the same checker must find some.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::consume_json;
use common::cluster::{eventually, Cluster};
use common::server::SpoolServer;
use spool::client::{Client, ClientError, LockOptions, TopicOptions};
use spool::protocol::requests::{
    AcquireLockRequest, KeepAliveRequest, OpenSessionRequest, ReleaseLockRequest,
};
use spool::protocol::{BatchBuilder, ErrorCode};

/// One process-heavy test at a time: two cores run brokers and workers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LOCK: &str = "counter";
const TOPIC: &str = "counter-log";
const TTL: Duration = Duration::from_secs(1);

fn rounds(default: usize) -> usize {
    std::env::var("SPOOL_LOCK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- worker

/// The shared counter file: "highest-token counter". Each operation holds
/// an flock for its own duration only (the file's own atomicity, as a
/// database row has); mutual exclusion across the read and the write is the
/// lock's job, and the token check is what stops a holder that lost it.
struct CounterFile(PathBuf);

impl CounterFile {
    fn op<T>(&self, f: impl FnOnce(&mut std::fs::File, u64, u64) -> T) -> T {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.0)
            .expect("open counter file");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read counter file");
        let mut words = text
            .split_whitespace()
            .map(|w| w.parse::<u64>().expect("number"));
        let (highest, counter) = (words.next().unwrap_or(0), words.next().unwrap_or(0));
        f(&mut file, highest, counter)
    }

    fn read(&self) -> (u64, u64) {
        self.op(|_, highest, counter| (highest, counter))
    }

    /// Reads the counter for a read-modify-write under `token`: the token
    /// is recorded first (refused if below the highest), so a holder that
    /// lost the lock before this cannot write its stale result after it.
    /// Without that claim, a zombie that read before the new holder and
    /// writes after the new holder's read still loses an increment. Unfenced,
    /// a plain read.
    fn claim(&self, token: u64, fenced: bool) -> Option<u64> {
        self.op(|file, highest, counter| {
            if !fenced {
                return Some(counter);
            }
            if token < highest {
                return None;
            }
            Self::store(file, highest.max(token), counter);
            Some(counter)
        })
    }

    fn store(file: &mut std::fs::File, highest: u64, counter: u64) {
        file.set_len(0).expect("truncate");
        file.rewind().expect("rewind");
        write!(file, "{highest} {counter}").expect("write counter file");
        file.sync_data().expect("sync counter file");
    }

    /// Writes `value` if `token` is not below the highest seen (or
    /// always, unfenced). True if written.
    fn write(&self, token: u64, value: u64, fenced: bool) -> bool {
        self.op(|file, highest, _| {
            if fenced && token < highest {
                return false;
            }
            Self::store(file, highest.max(token), value);
            true
        })
    }
}

/// Run by the contention tests as a separate process (`SPOOL_LOCK_WORKER`
/// set); does nothing in a normal test run.
#[tokio::test]
#[ignore = "a worker process of the lock contention tests"]
async fn lock_worker() {
    let Ok(index) = std::env::var("SPOOL_LOCK_WORKER") else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let dir = PathBuf::from(var("SPOOL_LOCK_DIR"));
    let rounds: usize = var("SPOOL_LOCK_ROUNDS").parse().expect("rounds");
    let fenced = var("SPOOL_LOCK_FENCED") == "1";
    let addrs: Vec<std::net::SocketAddr> = var("SPOOL_LOCK_ADDRS")
        .split(',')
        .map(|a| a.parse().expect("address"))
        .collect();
    let client = Client::connect_any(&addrs, Default::default())
        .await
        .expect("connect");
    let counter = CounterFile(dir.join("counter"));
    let mut log = std::fs::File::create(dir.join(format!("worker-{index}.log"))).expect("log");
    let mut session: Option<spool::client::Session> = None;
    let mut done = 0;
    // The token of the last grant, while its release may have failed (a
    // broker killed under it): acquiring again then answers the same
    // grant, which is not a new one.
    let mut held: Option<u64> = None;
    while done < rounds {
        let s = match &session {
            Some(s) if !s.is_lost() => s,
            _ => {
                let opened = match client.open_session(TTL).await {
                    Ok(s) => s,
                    Err(e) => {
                        writeln!(log, "error open {e}").expect("log");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                std::fs::write(
                    dir.join(format!("worker-{index}.session")),
                    opened.id().to_string(),
                )
                .expect("session file");
                session.insert(opened)
            }
        };
        let token = match s.acquire(LOCK, None).await {
            Ok(Some(token)) => token,
            Ok(None) => continue,
            Err(e) => {
                writeln!(log, "error acquire {e}").expect("log");
                session = None;
                held = None;
                continue;
            }
        };
        if held == Some(token) {
            writeln!(log, "regrant {token}").expect("log");
        } else {
            writeln!(log, "grant {token}").expect("log");
        }
        held = Some(token);
        // Read, work, write: a pause in the middle is the zombie case.
        match counter.claim(token, fenced) {
            Some(value) => {
                std::thread::sleep(Duration::from_millis(3));
                if counter.write(token, value + 1, fenced) {
                    writeln!(log, "inc {token} {}", value + 1).expect("log");
                } else {
                    writeln!(log, "stale-file {token}").expect("log");
                }
            }
            None => writeln!(log, "stale-file {token}").expect("log"),
        }
        let mut b = BatchBuilder::new();
        if fenced {
            b = b.fenced(LOCK, token).expect("fence");
        }
        b.push(0, None, format!("{index} {token}").as_bytes(), &[])
            .expect("push");
        match client
            .produce_batch(TOPIC, 0, b.finish().expect("batch"))
            .await
        {
            Ok(_) => writeln!(log, "produced {token}").expect("log"),
            Err(e) if e.code() == Some(ErrorCode::Fenced) => {
                writeln!(log, "fenced {token}").expect("log")
            }
            Err(e) => writeln!(log, "error produce {token} {e}").expect("log"),
        }
        match s.release(LOCK).await {
            Ok(()) => held = None,
            Err(e) => writeln!(log, "error release {token} {e}").expect("log"),
        }
        done += 1;
    }
    writeln!(log, "done").expect("log");
}

// --------------------------------------------------------------- harness

struct Workers {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Workers {
    fn start(dir: &Path, n: usize, rounds: usize, fenced: bool, addrs: &str) -> Workers {
        let exe = std::env::current_exe().expect("test binary");
        let children = (0..n)
            .map(|i| {
                Command::new(&exe)
                    .args(["lock_worker", "--exact", "--ignored", "--nocapture"])
                    .env("SPOOL_LOCK_WORKER", i.to_string())
                    .env("SPOOL_LOCK_DIR", dir)
                    .env("SPOOL_LOCK_ROUNDS", rounds.to_string())
                    .env("SPOOL_LOCK_FENCED", if fenced { "1" } else { "0" })
                    .env("SPOOL_LOCK_ADDRS", addrs)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn a worker")
            })
            .collect();
        Workers {
            dir: dir.to_path_buf(),
            children,
        }
    }

    fn running(&mut self) -> bool {
        self.children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of the worker whose session is `session`.
    fn pid_of(&self, session: u64) -> Option<i32> {
        (0..self.children.len()).find_map(|i| {
            let text =
                std::fs::read_to_string(self.dir.join(format!("worker-{i}.session"))).ok()?;
            (text.trim().parse::<u64>().ok()? == session).then(|| self.children[i].id() as i32)
        })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: i32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Pauses the lock's holder (whoever it is at the time) with SIGSTOP for
/// longer than its TTL, then continues it. Returns whether a holder was
/// found.
async fn pause_holder(client: &Client, workers: &Workers) -> bool {
    let Ok(listed) = client.list_locks(LOCK).await else {
        return false;
    };
    let Some(pid) = listed
        .locks
        .iter()
        .find(|l| l.name == LOCK)
        .and_then(|l| l.holder)
        .and_then(|s| workers.pid_of(s))
    else {
        return false;
    };
    signal(pid, rustix::process::Signal::STOP);
    tokio::time::sleep(TTL + Duration::from_millis(1200)).await;
    signal(pid, rustix::process::Signal::CONT);
    true
}

/// What the checker found.
#[derive(Debug, Default)]
struct Findings {
    grants: usize,
    /// Acquires that answered the grant still held after a failed release.
    regrants: usize,
    increments: usize,
    refused_file: usize,
    refused_topic: usize,
    violations: Vec<String>,
}

/// Checks the run: tokens unique and growing per worker; the counter file
/// lost no increment; the topic holds no write with a lower token after a
/// higher one.
fn check(dir: &Path, workers: usize, topic_tokens: &[u64]) -> Findings {
    let mut f = Findings::default();
    let mut all_tokens = BTreeMap::new();
    let mut written_values = BTreeMap::new();
    for i in 0..workers {
        let text = std::fs::read_to_string(dir.join(format!("worker-{i}.log"))).unwrap_or_default();
        let mut last = 0;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["grant", token] => {
                    let token: u64 = token.parse().expect("token");
                    f.grants += 1;
                    if token <= last {
                        f.violations
                            .push(format!("worker {i}: token {token} after {last}"));
                    }
                    last = token;
                    if let Some(other) = all_tokens.insert(token, i) {
                        f.violations
                            .push(format!("token {token} granted to workers {other} and {i}"));
                    }
                }
                ["inc", token, value] => {
                    f.increments += 1;
                    let value: u64 = value.parse().expect("value");
                    if let Some(t) = written_values.insert(value, token.to_string()) {
                        f.violations.push(format!(
                            "counter value {value} written twice (tokens {t} and {token}): an increment was lost"
                        ));
                    }
                }
                ["regrant", token] => {
                    f.regrants += 1;
                    if token.parse::<u64>().ok() != Some(last) {
                        f.violations.push(format!(
                            "worker {i}: regrant {token} of a grant it did not hold"
                        ));
                    }
                }
                ["stale-file", _] => f.refused_file += 1,
                ["fenced", _] => f.refused_topic += 1,
                _ => {}
            }
        }
    }
    // One stale write rolls the counter back, and every value after it is
    // written again: report the first few of those.
    let lost = f
        .violations
        .iter()
        .filter(|v| v.contains("written twice"))
        .count();
    if lost > 10 {
        let mut kept = 0;
        f.violations.retain(|v| {
            kept += usize::from(v.contains("written twice"));
            !v.contains("written twice") || kept <= 10
        });
        f.violations.push(format!(
            "... {} more counter values written twice",
            lost - 10
        ));
    }
    let (_, counter) = CounterFile(dir.join("counter")).read();
    if counter as usize != f.increments {
        f.violations.push(format!(
            "counter is {counter} after {} accepted increments",
            f.increments
        ));
    }
    let mut highest = 0;
    for (at, token) in topic_tokens.iter().enumerate() {
        if *token < highest {
            f.violations.push(format!(
                "topic offset {at}: token {token} accepted after {highest}"
            ));
        }
        highest = highest.max(*token);
    }
    f
}

fn topic_tokens(addr: &str) -> Vec<u64> {
    consume_json(addr, TOPIC, &["--from", "earliest"])
        .iter()
        .map(|m| {
            let value = m["value"].as_str().expect("text value");
            value
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.parse().ok())
                .expect("worker token")
        })
        .collect()
}

/// Runs `n` workers against the brokers at `addrs` until they finish,
/// pausing holders all along; `chaos` runs between pauses (a broker kill
/// in the cluster test). Returns the number of pauses that hit a holder.
/// One contention run's settings.
struct Run<'a> {
    dir: &'a Path,
    workers: usize,
    rounds: usize,
    fenced: bool,
    addrs: &'a str,
    deadline: Duration,
}

async fn contend(
    client: &Client,
    run: &Run<'_>,
    mut chaos: impl FnMut(usize, Option<u64>),
) -> usize {
    let (rounds, deadline) = (run.rounds, run.deadline);
    let mut workers = Workers::start(run.dir, run.workers, rounds, run.fenced, run.addrs);
    let started = Instant::now();
    let mut pauses = 0;
    let mut step = 0;
    while workers.running() {
        assert!(
            started.elapsed() < deadline,
            "workers did not finish {rounds} rounds within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        if pause_holder(client, &workers).await {
            pauses += 1;
        }
        let controller = common::cluster::metadata(client)
            .await
            .ok()
            .and_then(|m| m.controller);
        chaos(step, controller);
        step += 1;
    }
    for (i, c) in workers.children.iter_mut().enumerate() {
        let status = c.wait().expect("worker status");
        assert!(status.success(), "worker {i} failed: {status}");
    }
    pauses
}

// ----------------------------------------------------------------- tests

/// Eight workers, `rounds` each, against one broker, holders paused all
/// along; what the checker found and how many pauses hit a holder.
async fn one_broker_run(rounds: usize, fenced: bool) -> (Findings, usize, SpoolServer) {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic(TOPIC, 1, TopicOptions::default())
        .await;
    let work = tempfile::tempdir().expect("tempdir");
    let addr = server.addr.to_string();
    let run = Run {
        dir: work.path(),
        workers: 8,
        rounds,
        fenced,
        addrs: &addr,
        deadline: Duration::from_secs(600),
    };
    let pauses = contend(&client, &run, |_, _| {}).await;
    let findings = check(work.path(), 8, &topic_tokens(&addr));
    (findings, pauses, server)
}

#[tokio::test]
async fn eight_workers_share_a_lock_on_one_broker_and_no_stale_write_gets_through() {
    let _serial = SERIAL.lock().await;
    let rounds = rounds(1000);
    let (f, pauses, server) = one_broker_run(rounds, true).await;
    eprintln!("single broker: {f:?}, {pauses} holders paused");
    assert!(f.violations.is_empty(), "{:#?}", f.violations);
    assert_eq!(f.grants + f.regrants, 8 * rounds);
    assert!(pauses >= 3, "only {pauses} pauses hit a holder");
    // The pauses made zombies, and the checks stopped them.
    assert!(
        f.refused_file + f.refused_topic > 0,
        "no stale write was even tried: {f:?}"
    );
    let metrics = server.http_get("/metrics");
    assert!(metrics.contains("spool_lock_grants_total"), "{metrics}");
}

/// The checker can fail: with the token checks off (the file takes any
/// write, batches carry no fence) the same run loses increments or lets
/// stale writes through.
#[tokio::test]
async fn without_token_checks_the_checker_finds_stale_writes() {
    let _serial = SERIAL.lock().await;
    let (f, pauses, _server) = one_broker_run(120, false).await;
    eprintln!("unfenced: {f:?}, {pauses} holders paused");
    assert!(
        !f.violations.is_empty(),
        "the checker found nothing wrong in a run without token checks: {f:?}"
    );
}

#[tokio::test]
async fn eight_workers_share_a_lock_across_a_cluster_with_brokers_killed() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3);
    let client = cluster.client(0).await;
    cluster.ready(&client, 3).await;
    client
        .create_topic(
            TOPIC,
            1,
            TopicOptions {
                replication: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("create topic");
    let work = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<String> = cluster.brokers.iter().map(|b| b.addr.to_string()).collect();
    let rounds = rounds(150);
    let mut killed = Vec::new();
    let mut down = None;
    let pauses = {
        let cluster = &mut cluster;
        let killed = &mut killed;
        contend(
            &client,
            &Run {
                dir: work.path(),
                workers: 8,
                rounds,
                fenced: true,
                addrs: &addrs.join(","),
                deadline: Duration::from_secs(900),
            },
            move |step, controller| {
                // Every 6th step SIGKILL a broker, the Raft leader every
                // other time, and restart it 3 steps later.
                if step % 6 == 0 {
                    let i = match controller {
                        Some(id) if step % 12 == 0 => common::cluster::index_of(id),
                        _ => (step / 6) % 3,
                    };
                    cluster.brokers[i].kill();
                    killed.push((i, controller == Some(i as u64 + 1)));
                    down = Some(i);
                } else if step % 6 == 3 {
                    if let Some(i) = down.take() {
                        cluster.restart(i);
                    }
                }
            },
        )
        .await
    };
    for i in 0..3 {
        if !cluster.brokers[i].is_running() {
            cluster.restart(i);
        }
    }
    let f = check(work.path(), 8, &topic_tokens(&addrs.join(",")));
    eprintln!("cluster: {f:?}, {pauses} holders paused, brokers killed: {killed:?}");
    assert!(f.violations.is_empty(), "{:#?}", f.violations);
    assert_eq!(f.grants + f.regrants, 8 * rounds);
    assert!(
        killed.iter().any(|(_, leader)| *leader),
        "the Raft leader was never killed: {killed:?}"
    );

    // Tokens keep growing across a full restart of every broker.
    let before = client.list_locks("").await.expect("list").last_token;
    for i in 0..3 {
        cluster.brokers[i].kill();
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    let client = cluster.client(0).await;
    let guard = eventually(
        Duration::from_secs(30),
        "a grant after the restart",
        || async {
            client
                .lock("after-restart", LockOptions::default())
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not granted".to_string())
        },
    )
    .await;
    assert!(
        guard.token() > before,
        "token {} after {before}",
        guard.token()
    );
    guard.release().await.expect("release");
}

/// Session expiry hands the lock on within TTL + 1 s; a release by a
/// session that does not hold it is refused; bad names and TTLs get clear
/// errors; and tokens keep growing across a restart of the broker.
#[tokio::test]
async fn expiry_refusals_limits_and_tokens_across_a_restart_on_one_broker() {
    let _serial = SERIAL.lock().await;
    let server = SpoolServer::temporary();
    let client = server.client().await;
    let open = |ttl_ms| OpenSessionRequest { ttl_ms };
    let a = client.call(&open(1000)).await.expect("open a").session;
    let b = client.call(&open(5000)).await.expect("open b").session;
    let acquire = |session, wait_ms| AcquireLockRequest {
        name: "exp".into(),
        session,
        wait_ms,
    };
    let first = client.call(&acquire(a, 0)).await.expect("a acquires");
    let token_a = first.token.expect("free lock granted");
    // Not the holder: refused.
    let refused = client
        .call(&ReleaseLockRequest {
            name: "exp".into(),
            session: b,
        })
        .await
        .expect_err("b does not hold it");
    assert_eq!(refused.code(), Some(ErrorCode::LockNotHeld), "{refused}");
    // a stops keeping alive: b gets the lock within TTL + 1 s of a's last
    // keep-alive (its open, just before the acquire).
    let started = Instant::now();
    let second = client.call(&acquire(b, 10_000)).await.expect("b waits");
    let waited = started.elapsed();
    let token_b = second.token.expect("granted after a expired");
    assert!(token_b > token_a);
    assert!(waited <= Duration::from_millis(2000), "took {waited:?}");
    assert!(
        waited >= Duration::from_millis(700),
        "only {waited:?}: expired early"
    );
    let gone = client
        .call(&KeepAliveRequest { session: a })
        .await
        .expect_err("a expired");
    assert_eq!(gone.code(), Some(ErrorCode::SessionExpired), "{gone}");

    // Limits: clear errors, nothing changed.
    let long = "x".repeat(300);
    let err = client
        .call(&AcquireLockRequest {
            name: long,
            session: b,
            wait_ms: 0,
        })
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Some(ErrorCode::InvalidConfig));
    assert!(err.to_string().contains("at most 255"), "{err}");
    let err: ClientError = client
        .call(&open(86_400_000))
        .await
        .expect_err("absurd TTL");
    assert!(err.to_string().contains("out of range"), "{err}");

    // Tokens grow across a SIGKILL and restart.
    let server = server.restart(&[]);
    let client = server.client().await;
    let guard = client
        .lock("exp2", LockOptions::default())
        .await
        .expect("lock")
        .expect("granted");
    assert!(guard.token() > token_b, "{} after {token_b}", guard.token());
    guard.release().await.expect("release");
}

#[tokio::test]
async fn the_embedded_broker_hands_a_lock_over_in_arrival_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = spool::Broker::open(dir.path(), Default::default()).expect("open");
    let first = broker
        .lock("job", Default::default())
        .await
        .expect("lock")
        .expect("granted");
    let mut waiting = Vec::new();
    for i in 0..3u64 {
        let broker = broker.clone();
        waiting.push(tokio::spawn(async move {
            let guard = broker
                .lock("job", Default::default())
                .await
                .expect("lock")
                .expect("granted");
            (i, guard.token(), guard)
        }));
        // Queue them in a known order.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy = broker
        .lock(
            "job",
            spool::locks::LockOptions {
                wait: Some(Duration::ZERO),
                ..Default::default()
            },
        )
        .await
        .expect("try");
    assert!(busy.is_none(), "a held lock was granted to a try");
    let mut last = first.token();
    first.release().await.expect("release");
    for (expected, task) in waiting.into_iter().enumerate() {
        let (i, token, guard) = task.await.expect("waiter");
        assert_eq!(i, expected as u64, "granted out of order");
        assert!(token > last, "token {token} after {last}");
        last = token;
        guard.release().await.expect("release");
    }
    drop(broker);
    // The token counter is stored with the broker: it keeps growing.
    let broker = spool::Broker::open(dir.path(), Default::default()).expect("reopen");
    let again = broker
        .lock("job", Default::default())
        .await
        .expect("lock")
        .expect("granted");
    assert!(again.token() > last);
    assert!(!again.is_lost());
    again.release().await.expect("release");
}

/// `spool lock` hands the command its token and exit status; when the
/// lock is lost (the `spool lock` process itself paused past its TTL) the
/// command gets SIGTERM and `spool lock` exits 1, and the lock is handed
/// on with a larger token.
#[tokio::test]
async fn spool_lock_runs_a_command_and_stops_it_when_the_lock_is_lost() {
    let _serial = SERIAL.lock().await;
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    let spool = env!("CARGO_BIN_EXE_spool");
    let out = Command::new(spool)
        .args(["lock", "cli", "--addr", &addr, "--"])
        .args([
            "sh",
            "-c",
            "echo token=$SPOOL_LOCK_TOKEN name=$SPOOL_LOCK_NAME; exit 7",
        ])
        .output()
        .expect("run spool lock");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("token=1 name=cli"), "{stdout}");

    let work = tempfile::tempdir().expect("tempdir");
    let marker = work.path().join("terminated");
    let script = format!(
        "trap 'echo yes > {}; exit 0' TERM; while true; do sleep 0.1; done",
        marker.display()
    );
    let mut holder = Command::new(spool)
        .args([
            "lock", "cli", "--ttl", "1s", "--addr", &addr, "--", "sh", "-c", &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spool lock");
    let client = server.client().await;
    let first = eventually(Duration::from_secs(10), "the lock held", || async {
        let listed = client.list_locks("cli").await.map_err(|e| e.to_string())?;
        listed
            .locks
            .first()
            .filter(|l| l.holder.is_some())
            .map(|l| l.token)
            .ok_or_else(|| "not held yet".to_string())
    })
    .await;
    signal(holder.id() as i32, rustix::process::Signal::STOP);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Expired meanwhile: someone else holds it now.
    let next = client
        .lock(
            "cli",
            LockOptions {
                wait: Some(Duration::from_secs(5)),
                ..Default::default()
            },
        )
        .await
        .expect("lock")
        .expect("handed on after the holder's session expired");
    assert!(next.token() > first);
    signal(holder.id() as i32, rustix::process::Signal::CONT);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = holder.try_wait().expect("status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "spool lock did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    if let Some(mut e) = holder.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default().trim(),
        "yes",
        "the command did not get SIGTERM"
    );
    next.release().await.expect("release");
    let metrics = server.http_get("/metrics");
    assert!(
        metrics.contains("spool_lock_session_expiries_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("lock"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
