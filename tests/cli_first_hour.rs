//! The places a new user lost time or trust (the first-hour issue), each
//! through the real binary against a real server.

mod common;

use std::time::{Duration, Instant};

use common::cli::{consume_json, spool, stderr, stdout};
use common::server::SpoolServer;

fn create(addr: &str, topic: &str, partitions: &str) {
    let out = spool(
        &[
            "topics",
            "create",
            topic,
            "--partitions",
            partitions,
            "--addr",
            addr,
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `spool produce --topic TOPIC EXTRA...` against `addr`, fed `input`.
fn produce(addr: &str, topic: &str, extra: &[&str], input: Option<&str>) -> std::process::Output {
    let mut args = vec!["produce", "--topic", topic, "--addr", addr];
    args.extend_from_slice(extra);
    spool(&args, input)
}

/// `(partition, offset, key, value)` of every message, through `consume
/// --format json`.
fn consumed(addr: &str, topic: &str, extra: &[&str]) -> Vec<(u64, u64, Option<String>, String)> {
    consume_json(addr, topic, extra)
        .into_iter()
        .map(|v| {
            (
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
                v["key"].as_str().map(str::to_string),
                v["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A server killed while `spool produce` sends a 100k-line file: the
/// command ends within its deadline (it went silent for 168 s before),
/// with exit 3, saying how many lines were acknowledged and where to
/// resume; progress went to stderr meanwhile.
#[test]
fn produce_gives_up_at_its_deadline_and_says_where_to_resume() {
    let mut server = SpoolServer::temporary_with(&["--default-sync", "always"]);
    let addr = server.addr.to_string();
    create(&addr, "t", "3");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("lines.txt");
    let text: String = (0..100_000)
        .map(|i| format!("line-{i:06}-{}\n", "x".repeat(200)))
        .collect();
    std::fs::write(&input, text).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args([
            "produce",
            "--topic",
            "t",
            "--addr",
            &addr,
            "--timeout-secs",
            "4",
            "--file",
        ])
        .arg(&input)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    server.kill();
    let out = child.wait_with_output().unwrap();
    let took = killed.elapsed();
    let err = stderr(&out);
    assert!(
        took < Duration::from_secs(8),
        "produce ran {took:?} after the kill"
    );
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("lines acknowledged, resume from line"),
        "{err}"
    );
    let acked: u64 = stdout(&out)
        .trim()
        .strip_prefix("produced ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", stdout(&out)));
    assert!(acked < 100_000, "everything acknowledged before the kill?");
    eprintln!("{err}");
}

/// Unkeyed lines spread over the partitions one line each (3 lines into 3
/// partitions all went to partition 0 before); `--key-separator` splits
/// keys off; `--partition` pins.
#[test]
fn produce_spreads_unkeyed_lines_parses_keys_and_pins_partitions() {
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    create(&addr, "t", "3");
    let out = produce(&addr, "t", &[], Some("a\nb\nc\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "produced 3 messages");
    let mut partitions: Vec<u64> = consumed(&addr, "t", &[]).iter().map(|m| m.0).collect();
    partitions.sort();
    assert_eq!(partitions, vec![0, 1, 2]);

    create(&addr, "k", "2");
    let out = produce(
        &addr,
        "k",
        &["--key-separator", ":"],
        Some("user-1:hello\nuser-2:a:b\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut got: Vec<(Option<String>, String)> = consumed(&addr, "k", &[])
        .into_iter()
        .map(|m| (m.2, m.3))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Some("user-1".into()), "hello".into()),
            (Some("user-2".into()), "a:b".into())
        ]
    );
    let out = produce(
        &addr,
        "k",
        &["--key-separator", ":"],
        Some("no separator here\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 1 has no key separator"),
        "{}",
        stderr(&out)
    );

    create(&addr, "p", "3");
    let out = produce(&addr, "p", &["--partition", "2"], Some("x\ny\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    let all = consumed(&addr, "p", &[]);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| m.0 == 2), "{all:?}");
    let out = produce(&addr, "p", &["--partition", "3"], Some("x\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no partition 3"),
        "{}",
        stderr(&out)
    );
    let out = produce(&addr, "p", &[], Some("one\n"));
    assert_eq!(stdout(&out).trim(), "produced 1 message");
}

/// `--from N` on a topic whose partitions differ in length applies N to
/// each partition, clamped to its range (it failed with OffsetOutOfRange
/// on an empty partition, or not, at random); `--partition` reads one
/// partition; `--from` with `--group` is refused instead of ignored.
#[test]
fn consume_from_an_offset_is_defined_per_partition() {
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    create(&addr, "t", "3");
    let out = produce(
        &addr,
        "t",
        &["--partition", "0"],
        Some("m0\nm1\nm2\nm3\nm4\nm5\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..5 {
        let got: Vec<String> = consumed(&addr, "t", &["--from", "3"])
            .into_iter()
            .map(|m| m.3)
            .collect();
        assert_eq!(got, vec!["m3", "m4", "m5"]);
    }
    let got: Vec<(u64, u64)> = consumed(&addr, "t", &["--from", "4", "--partition", "0"])
        .into_iter()
        .map(|m| (m.0, m.1))
        .collect();
    assert_eq!(got, vec![(0, 4), (0, 5)]);
    assert!(consumed(&addr, "t", &["--partition", "1"]).is_empty());
    // Past the end: nothing, not an error.
    assert!(consumed(&addr, "t", &["--from", "100"]).is_empty());
    let out = spool(
        &[
            "consume",
            "--topic",
            "t",
            "--addr",
            &addr,
            "--partition",
            "7",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no partition 7"),
        "{}",
        stderr(&out)
    );
    for flag in [["--from", "latest"], ["--partition", "0"]] {
        let out = spool(
            &[
                "consume", "--topic", "t", "--addr", &addr, "--group", "g", flag[0], flag[1],
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{flag:?} with --group");
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{}",
            stderr(&out)
        );
    }
}

/// `spool.example.toml` loads as it is, describes every flag of `spool
/// serve` (one name per setting: a key is its flag with `_` for `-`), and
/// `default_partitions` in a config file works (it was refused).
#[test]
fn the_example_config_loads_and_names_every_flag() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/spool.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let help = stdout(&spool(&["serve", "--help"], None));
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        // The global client flags (--tls-ca, --tls-server-name,
        // --tls-client-cert, --tls-client-key, --user) show in every
        // command's help; they say how to reach a broker, they are not
        // settings of one.
        .filter(|w| {
            !w.is_empty()
                && !matches!(
                    *w,
                    "help"
                        | "config"
                        | "tls-ca"
                        | "tls-server-name"
                        | "tls-client-cert"
                        | "tls-client-key"
                        | "user"
                )
        })
        .collect();
    assert!(flags.len() > 15, "{help}");
    for flag in flags {
        let key = flag.replace('-', "_");
        assert!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("\n# {key} = ")),
            "spool.example.toml does not describe --{flag}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let server = SpoolServer::start_with(&dir.path().join("data"), &["--config", example]);
    let addr = server.addr.to_string();
    let out = spool(&["topics", "create", "t", "--addr", &addr], None);
    assert_eq!(stdout(&out).trim(), "created topic t with 1 partition");

    let config = dir.path().join("three.toml");
    std::fs::write(&config, "default_partitions = 3\n").unwrap();
    let server = SpoolServer::start_with(
        &dir.path().join("data3"),
        &["--config", config.to_str().unwrap()],
    );
    let addr = server.addr.to_string();
    let out = spool(&["topics", "create", "t", "--addr", &addr], None);
    assert_eq!(stdout(&out).trim(), "created topic t with 3 partitions");
    let out = spool(
        &[
            "topics",
            "create",
            "z",
            "--partitions",
            "0",
            "--addr",
            &addr,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
}

/// A data directory that cannot be created is a local I/O error (exit 4,
/// as README says, not 1); a second server on a busy port fails before it
/// creates or opens its data directory.
#[test]
fn serve_exit_codes_and_binding_before_opening() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let bad = file.join("data");
    let out = spool(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--data",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));

    let server = SpoolServer::temporary();
    let second = dir.path().join("second");
    let out = spool(
        &[
            "serve",
            "--listen",
            &server.addr.to_string(),
            "--metrics",
            "127.0.0.1:0",
            "--data",
            second.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("binding"), "{}", stderr(&out));
    assert!(
        !second.exists(),
        "the data directory was created before binding"
    );
}

/// The README's worker loop: `receive()` waits for the next message
/// however long the queue is idle (it returned None after 500 ms, which
/// ended the loop); `receive_timeout` is the bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_receive_waits_until_a_message_arrives() {
    use spool::client::{QueueConsumer, QueueOptions, TopicOptions};
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("jobs", 1, TopicOptions::default())
        .await;
    let mut jobs = QueueConsumer::join(client.clone(), "workers", "jobs", QueueOptions::default())
        .await
        .unwrap();
    assert!(jobs
        .receive_timeout(Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    let started = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut batch = spool::BatchBuilder::new();
        batch.push(0, None, b"late job", &[]).unwrap();
        client
            .produce_batch("jobs", 0, batch.finish().unwrap())
            .await
            .unwrap();
    });
    let job = tokio::time::timeout(Duration::from_secs(10), jobs.receive())
        .await
        .expect("receive gave up")
        .unwrap();
    assert_eq!(&job.value[..], b"late job");
    assert!(started.elapsed() >= Duration::from_millis(1400));
}

fn json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--addr", addr, "--json"]);
    let out = spool(&all, None);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stdout(&out)))
}

/// `spool status` in text and JSON, and `--json` on the read-only admin
/// commands, all agreeing with what was stored.
#[test]
fn status_and_json_admin_output() {
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    create(&addr, "t", "2");
    let out = produce(&addr, "t", &[], Some("a\nb\nc\nd\ne\n"));
    assert!(out.status.success());

    let text = stdout(&spool(&["status", "--addr", &addr], None));
    assert!(
        text.starts_with(&format!("spool {} up ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("topics: 1 (2 partitions, 5 messages)"),
        "{text}"
    );
    assert!(text.contains("groups: 0"), "{text}");
    assert!(text.contains(&format!("listen: {addr}")), "{text}");
    let status = json(&addr, &["status"]);
    assert_eq!(status["messages"], 5);
    assert_eq!(status["partitions"], 2);
    assert!(status["stored_bytes"].as_u64().unwrap() > 0);
    assert!(
        status["disk_total_bytes"].as_u64().unwrap() >= status["disk_free_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        std::path::Path::new(status["data_dir"].as_str().unwrap()),
        server.dir.as_path()
    );

    let topics = json(&addr, &["topics", "list"]);
    assert_eq!(topics[0]["name"], "t");
    let ends: u64 = topics[0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, 5);
    let described = json(&addr, &["topics", "describe", "t"]);
    assert_eq!(described["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(described["retention_ms"], 7 * 24 * 3600 * 1000);
    assert!(described["retention_bytes"].is_null());

    assert_eq!(json(&addr, &["groups", "list"]), serde_json::json!([]));
    assert_eq!(
        stdout(&spool(&["groups", "list", "--addr", &addr], None)).trim(),
        "no groups"
    );
    let out = spool(
        &[
            "consume", "--topic", "t", "--group", "g", "--ack", "--count", "5", "--addr", &addr,
        ],
        None,
    );
    assert_eq!(stdout(&out).lines().count(), 5, "{}", stderr(&out));
    let group = json(&addr, &["groups", "describe", "g"]);
    assert_eq!(group["mode"], "queue");
    assert_eq!(group["lag"], 0);
    assert_eq!(group["dead_letter_topic"], "g.dlq");
    assert_eq!(json(&addr, &["groups", "list"])[0]["name"], "g");
}

/// `spool groups pending` shows who holds each delivered message, how
/// often it went out and when it is due; `spool groups delete` refuses a
/// group with members, then deletes it for good (also across a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_pending_and_delete() {
    use spool::client::{QueueConsumer, QueueOptions};
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    create(&addr, "t", "1");
    let out = produce(&addr, "t", &[], Some("a\nb\nc\nd\n"));
    assert!(out.status.success());
    let client = server.client().await;
    let options = QueueOptions {
        prefetch: 3,
        ..QueueOptions::default()
    };
    let mut worker = QueueConsumer::join(client, "w", "t", options)
        .await
        .unwrap();
    let first = worker.receive().await.unwrap();
    worker.nack(&first, Duration::from_secs(60)).await.unwrap();

    let pending = json(&addr, &["groups", "pending", "w"]);
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert_eq!(pending[0]["offset"], 0);
    assert_eq!(pending[0]["state"], "waiting");
    assert!(pending[0]["due_in_ms"].as_u64().unwrap() > 50_000);
    for m in &pending[1..] {
        assert_eq!(m["state"], "in_flight");
        assert_eq!(m["deliveries"], 1);
        assert!(m["member"].as_u64().unwrap() > 0);
        assert!(m["due_in_ms"].as_u64().unwrap() <= 30_000);
    }
    let text = stdout(&spool(
        &["groups", "pending", "w", "--max", "1", "--addr", &addr],
        None,
    ));
    assert_eq!(text.lines().count(), 1, "{text}");

    let out = spool(&["groups", "delete", "w", "--addr", &addr], None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("members"), "{}", stderr(&out));
    drop(worker);
    let started = Instant::now();
    loop {
        let out = spool(&["groups", "delete", "w", "--addr", &addr], None);
        if out.status.success() {
            assert_eq!(stdout(&out).trim(), "deleted group w");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(json(&addr, &["groups", "list"]), serde_json::json!([]));
    let out = spool(&["groups", "pending", "w", "--addr", &addr], None);
    assert_eq!(out.status.code(), Some(1));
    let server = server.restart(&[]);
    let addr = server.addr.to_string();
    assert_eq!(json(&addr, &["groups", "list"]), serde_json::json!([]));
}

/// Every command's `--help` ends with examples (as the `nats` CLI's do).
#[test]
fn every_command_has_examples_in_its_help() {
    let commands: &[&[&str]] = &[
        &["serve"],
        &["status"],
        &["produce"],
        &["consume"],
        &["bench"],
        &["inspect"],
        &["verify"],
        &["topics", "create"],
        &["topics", "list"],
        &["topics", "describe"],
        &["topics", "delete"],
        &["groups", "list"],
        &["groups", "describe"],
        &["groups", "pending"],
        &["groups", "reset"],
        &["groups", "delete"],
        &["cluster", "add"],
        &["cluster", "remove"],
        &["cluster", "status"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let help = stdout(&spool(&args, None));
        let examples = help.split("Examples:").nth(1).unwrap_or_default();
        assert!(
            examples.contains(&format!("spool {}", command.join(" "))),
            "`spool {}` --help has no example of itself:\n{help}",
            command.join(" ")
        );
    }
}

/// A missing input file is named in the error, exit 4 (local I/O).
#[test]
fn produce_names_a_missing_file() {
    let server = SpoolServer::temporary();
    let addr = server.addr.to_string();
    create(&addr, "t", "1");
    let out = produce(&addr, "t", &["--file", "/nonexistent/lines.txt"], None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/lines.txt"),
        "{}",
        stderr(&out)
    );
}

/// Each command's line in `spool --help` says what that command does (the
/// `produce` summary once sat above `lock`, whose line then read "Send each
/// line of stdin ... Run a command while holding a distributed lock", and
/// `produce` showed "Arguments of `spool produce`").
#[test]
fn every_command_has_its_own_summary() {
    let help = stdout(&spool(&["--help"], None));
    let line = |command: &str| {
        help.lines()
            .find(|l| l.split_whitespace().next() == Some(command))
            .unwrap_or_else(|| panic!("no line for {command} in:\n{help}"))
            .to_string()
    };
    assert!(line("produce").contains("Send each line"), "{help}");
    assert!(
        line("lock").contains("holding a distributed lock"),
        "{help}"
    );
    assert!(!line("lock").contains("Send each line"), "{help}");
    for l in help.lines() {
        assert!(
            !l.contains("Arguments of"),
            "a summary names no command's job: {l}"
        );
    }
}
