//! Running the `spool` command line as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `spool ARGS`, feeding `stdin` if given, and waits for it.
pub fn spool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        // The command may exit before reading all of it (a refused flag).
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    child.wait_with_output().unwrap()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The messages `spool consume --topic TOPIC --format json EXTRA...` prints
/// from the server at `addr`, one JSON object each.
pub fn consume_json(addr: &str, topic: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "consume", "--topic", topic, "--format", "json", "--addr", addr,
    ];
    args.extend_from_slice(extra);
    let out = spool(&args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .collect()
}
