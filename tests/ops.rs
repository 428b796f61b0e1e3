//! The shipped alert rules (`ops/prometheus/spool-alerts.yml`) and
//! dashboard (`ops/grafana/spool-dashboard.json`) name only metrics a live
//! broker exports: a broker with users, a throttled principal, a topic and
//! a queue group is scraped, and every `spool_*` name the files use must
//! be there (a histogram's `_bucket`, `_sum` and `_count` count as its own).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cli::{spool, stderr};
use common::server::SpoolServer;

const RULES: &str = include_str!("../ops/prometheus/spool-alerts.yml");
const DASHBOARD: &str = include_str!("../ops/grafana/spool-dashboard.json");

/// Every `spool_...` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("spool_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The names in `used` that the scrape `exposition` does not have.
fn missing(used: &BTreeSet<String>, exposition: &str) -> Vec<String> {
    let typed = |name: &str, kind: Option<&str>| {
        exposition.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("#")
                && w.next() == Some("TYPE")
                && w.next() == Some(name)
                && kind.is_none_or(|k| w.next() == Some(k))
        })
    };
    used.iter()
        .filter(|name| {
            let histogram_part = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .any(|base| typed(base, Some("histogram")));
            !typed(name, None) && !histogram_part
        })
        .cloned()
        .collect()
}

#[test]
fn the_checker_finds_a_metric_that_does_not_exist() {
    let exposition = "# HELP spool_a A\n# TYPE spool_a counter\nspool_a 1\n# TYPE spool_h histogram\nspool_h_bucket{le=\"1\"} 0\n";
    let used =
        metric_names("rate(spool_a[1m]) + spool_h_bucket + spool_no_such_metric and not xspool_b");
    assert_eq!(
        used,
        ["spool_a", "spool_h_bucket", "spool_no_such_metric"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(missing(&used, exposition), vec!["spool_no_such_metric"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_exported() {
    const PASSWORD: &str = "admin-password-1";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    let out = spool(
        &["users", "add", "admin", "--data", &data],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = spool(
        &["quotas", "set", "admin", "--produce", "1k", "--data", &data],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let server = SpoolServer::start_with(dir.path(), &["--auth"]);
    let addr = server.addr.to_string();
    let as_admin = |args: &[&str], stdin: Option<&str>| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(args)
            .args(["--addr", &addr, "--user", "admin"])
            .env("SPOOL_PASSWORD", PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                if let (Some(mut input), Some(text)) = (child.stdin.take(), stdin) {
                    input.write_all(text.as_bytes())?;
                }
                child.wait_with_output()
            })
            .expect("run spool");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    as_admin(&["topics", "create", "orders"], None);
    // Over the 1 kB/s quota: throttled.
    let lines: String = (0..100)
        .map(|i| format!("order {i:04} {}\n", "x".repeat(20)))
        .collect();
    as_admin(&["produce", "--topic", "orders"], Some(&lines));
    as_admin(
        &[
            "consume", "--topic", "orders", "--group", "billing", "--count", "5",
        ],
        None,
    );
    as_admin(&["consume", "--topic", "orders", "--count", "3"], None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exposition = server.http_get("/metrics");

    let mut used = metric_names(RULES);
    used.extend(metric_names(DASHBOARD));
    assert!(used.len() >= 20, "{used:?}");
    let absent = missing(&used, &exposition);
    assert!(
        absent.is_empty(),
        "the rules or dashboard use metrics the broker does not export: {absent:?}"
    );
}
