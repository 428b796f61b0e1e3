//! `spool bench` runs against an embedded broker, reports throughput and
//! verifies every message (the figures themselves are not asserted).

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_spool"))
        .arg("bench")
        .args(args)
        .args(["--json", "--warmup-secs", "0"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spool bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn stream_bench_reports_throughput_and_verifies_every_message() {
    let r = bench(&[
        "--messages",
        "50000",
        "--size",
        "100",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--partitions",
        "4",
    ]);
    assert_eq!(r["messages_produced"], 50000);
    assert_eq!(r["messages_verified"], 50000);
    assert_eq!(r["duplicates"], 0);
    for key in [
        "produce_msgs_per_sec",
        "consume_msgs_per_sec",
        "produce_mb_per_sec",
    ] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {}", r[key]);
    }
    for key in ["e2e_p50_us", "e2e_p99_us", "ack_p99_us"] {
        assert!(r[key].as_u64().is_some(), "{key} missing");
    }
}

#[test]
fn queue_bench_acks_every_message_for_a_few_seconds() {
    let r = bench(&[
        "--duration-secs",
        "2",
        "--size",
        "256",
        "--producers",
        "1",
        "--consumers",
        "2",
        "--partitions",
        "2",
        "--mode",
        "queue",
        "--sync",
        "always",
    ]);
    let produced = r["messages_produced"].as_u64().unwrap();
    assert!(produced > 0);
    assert_eq!(r["messages_verified"].as_u64().unwrap(), produced);
    assert!(r["consume_msgs_per_sec"].as_f64().unwrap() > 0.0);
}

/// `--output DIR`: one sample per second of the run in `report.json`, whose
/// rates add up to what was produced, the broker's CPU and memory, and a
/// page of charts.
#[test]
fn output_writes_per_second_samples_and_a_page_of_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let r = bench(&[
        "--duration-secs",
        "3",
        "--rate",
        "20000",
        "--output",
        out.to_str().unwrap(),
    ]);
    let produced = r["messages_produced"].as_f64().unwrap();
    assert!(r["broker_cpu_secs"].as_f64().unwrap() > 0.0);
    assert!(r["broker_peak_rss_mib"].as_f64().unwrap() > 1.0);
    assert!(r["ack_p95_us"].as_u64().is_some() && r["e2e_p9999_us"].as_u64().is_some());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["report"]["messages_produced"], r["messages_produced"]);
    let samples = json["samples"].as_array().unwrap();
    // One a second, and one for the rest of the run.
    assert!(
        (3..=5).contains(&samples.len()),
        "{} samples",
        samples.len()
    );
    // 20,000 msg/s offered: each full second inside the run saw about that.
    let inside = &samples[..2];
    for s in inside {
        let rate = s["produced_per_sec"].as_f64().unwrap();
        assert!((15_000.0..25_000.0).contains(&rate), "{s}");
        assert!(s["ack_p99_us"].as_u64().is_some(), "{s}");
        assert!(s["broker_rss_mib"].as_f64().unwrap() > 1.0, "{s}");
    }
    let summed: f64 = samples
        .iter()
        .map(|s| s["produced_per_sec"].as_f64().unwrap() * s["secs"].as_f64().unwrap())
        .sum();
    assert!(
        (summed - produced).abs() < produced * 0.2,
        "samples add up to {summed}, {produced} produced"
    );
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 5);
    assert!(!page.contains("<script"));
}

#[test]
fn a_bad_run_is_refused_not_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(["bench", "--size", "8", "--messages", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_run_shorter_than_its_warm_up_reports_latency_as_not_measured() {
    let out = Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(["bench", "--messages", "2000", "--size", "64"])
        .args(["--json", "--warmup-secs", "60"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["messages_verified"], 2000);
    for key in ["ack_p50_us", "ack_p99_us", "e2e_p50_us", "e2e_max_us"] {
        assert!(
            r[key].is_null(),
            "{key}: {} (not measured must not read 0)",
            r[key]
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("latencies not measured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--in-process`: producers append through the embedded API; consumers,
/// over loopback, verify every message of every partition, at full speed
/// (batches of --batch-bytes) and at a fixed rate (a batch per message).
#[test]
fn in_process_producers_append_through_the_embedded_api_and_verify() {
    let r = bench(&[
        "--in-process",
        "--messages",
        "60000",
        "--size",
        "200",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--partitions",
        "3",
        "--batch-bytes",
        "16384",
        "--sync",
        "always",
    ]);
    assert_eq!(r["producers_in_process"], true);
    assert_eq!(r["messages_produced"], 60000);
    assert_eq!(r["messages_verified"], 60000);
    assert_eq!(r["duplicates"], 0);
    assert!(r["ack_p99_us"].as_u64().is_some());

    let r = bench(&[
        "--in-process",
        "--duration-secs",
        "1",
        "--rate",
        "5000",
        "--size",
        "64",
    ]);
    let produced = r["messages_produced"].as_u64().unwrap();
    assert!(
        (3_500..=5_500).contains(&produced),
        "{produced} at 5,000/s for 1 s"
    );
    assert_eq!(r["messages_verified"].as_u64().unwrap(), produced);
    assert!(r["e2e_p99_us"].as_u64().is_some());
}

#[test]
fn in_process_producers_need_the_embedded_broker() {
    for args in [
        &["--in-process", "--addr", "127.0.0.1:1"][..],
        &["--in-process", "--replication", "3"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_spool"))
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--in-process"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
