//! The places a new user lost time or trust (the first-hour issue), each
//! through the real binary against a real server.

mod common;

use std::time::{Duration, Instant};

use common::cli::{spool, stderr, stdout};
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

/// `(partition, offset, key, value)` of every message, through `consume
/// --format json`.
fn consumed(addr: &str, topic: &str, extra: &[&str]) -> Vec<(u64, u64, Option<String>, String)> {
    let mut args = vec![
        "consume", "--topic", topic, "--addr", addr, "--format", "json",
    ];
    args.extend_from_slice(extra);
    let out = spool(&args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
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
    let out = spool(
        &["produce", "--topic", "t", "--addr", &addr],
        Some("a\nb\nc\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "produced 3 messages");
    let mut partitions: Vec<u64> = consumed(&addr, "t", &[]).iter().map(|m| m.0).collect();
    partitions.sort();
    assert_eq!(partitions, vec![0, 1, 2]);

    create(&addr, "k", "2");
    let out = spool(
        &[
            "produce",
            "--topic",
            "k",
            "--addr",
            &addr,
            "--key-separator",
            ":",
        ],
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
    let out = spool(
        &[
            "produce",
            "--topic",
            "k",
            "--addr",
            &addr,
            "--key-separator",
            ":",
        ],
        Some("no separator here\n"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 1 has no key separator"),
        "{}",
        stderr(&out)
    );

    create(&addr, "p", "3");
    let out = spool(
        &[
            "produce",
            "--topic",
            "p",
            "--addr",
            &addr,
            "--partition",
            "2",
        ],
        Some("x\ny\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let all = consumed(&addr, "p", &[]);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|m| m.0 == 2), "{all:?}");
    let out = spool(
        &[
            "produce",
            "--topic",
            "p",
            "--addr",
            &addr,
            "--partition",
            "3",
        ],
        Some("x\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no partition 3"),
        "{}",
        stderr(&out)
    );
    let out = spool(&["produce", "--topic", "p", "--addr", &addr], Some("one\n"));
    assert_eq!(stdout(&out).trim(), "produced 1 message");
}
