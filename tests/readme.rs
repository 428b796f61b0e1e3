//! Every `sh` block of README.md, run as written in a fresh directory, so
//! the Quick start can never drift from the code again.
//!
//! What the test changes, and only this: `spool` is the binary under test
//! (the README's alias runs the same thing through cargo); the fixed ports
//! of the examples (7070-7072, 9090-9092, 7170-7172) become free ones, so
//! the test runs beside anything else; `cargo run --release -- serve` is
//! `spool serve`; a `--follow` command, which waits by design, must still
//! be waiting after two seconds; `bench` sizes are cut so the block runs in
//! seconds in a debug build; commands right after servers were started in
//! the background are retried until the cluster answers (a reader would
//! wait a moment too). The output a comment promises (`# prints: ...`) is
//! checked.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `sh` blocks of README.md, each as its lines.
fn sh_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut in_other_block = false;
    for line in readme.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (Some(_), true) => blocks.extend(current.take()),
            (Some(block), false) => block.push(line.to_string()),
            (None, true) if !in_other_block && line.trim() == "```sh" => current = Some(Vec::new()),
            (None, true) => in_other_block = !in_other_block,
            (None, false) => {}
        }
    }
    blocks
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs README commands in a shell whose `spool` is the binary under test,
/// in `dir`, with the example ports mapped to free ones.
struct Shell {
    dir: tempfile::TempDir,
    ports: Vec<(String, String)>,
    background: Vec<Child>,
    after_background: bool,
}

impl Shell {
    fn new() -> Shell {
        let mut ports = Vec::new();
        for base in [7070u16, 9090, 7170] {
            for i in 0..3 {
                ports.push(((base + i).to_string(), free_port().to_string()));
            }
        }
        Shell {
            dir: tempfile::tempdir().unwrap(),
            ports,
            background: Vec::new(),
            after_background: false,
        }
    }

    fn port(&self, example: u16) -> String {
        let example = example.to_string();
        self.ports
            .iter()
            .find(|(from, _)| *from == example)
            .map(|(_, to)| to.clone())
            .unwrap()
    }

    /// The line as this test runs it.
    fn rewrite(&self, line: &str) -> String {
        let mut line = line
            .replace("cargo run --release -- serve", "spool serve")
            .replace("--messages 1000000", "--messages 20000")
            .replace("--duration-secs 30", "--duration-secs 2");
        for (from, to) in &self.ports {
            line = line.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
        }
        line
    }

    fn command(&self, line: &str) -> Command {
        let bin = env!("CARGO_BIN_EXE_spool");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("spool() {{ \"{bin}\" \"$@\"; }}\n{line}"))
            .current_dir(self.dir.path())
            .env("RUST_LOG", "error")
            .env("SPOOL_ADDR", format!("127.0.0.1:{}", self.port(7070)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs one README line; returns its standard output.
    fn run(&mut self, readme_line: &str, env: &mut Vec<(String, String)>) -> String {
        let code = readme_line.split(" #").next().unwrap_or("").trim();
        if code.is_empty() || code.starts_with('#') || code.starts_with("alias spool=") {
            return String::new();
        }
        if code.starts_with("cargo test") {
            // The test command itself: .ci/run must run exactly it.
            let ci = include_str!("../.ci/run");
            assert!(ci.contains(code), ".ci/run does not run `{code}`");
            return String::new();
        }
        // `NAME=VALUE` lines set a variable for the lines after.
        if let Some((name, value)) = code.split_once('=') {
            if !name.contains(' ') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                env.push((name.to_string(), self.rewrite(value)));
                return String::new();
            }
        }
        let line = self.rewrite(code);
        if let Some(rest) = line.strip_prefix("curl -s ") {
            // curl may not be installed where the tests run: fetch the
            // page here and apply the grep.
            let (url, grep) = rest.split_once(" | grep ").expect("curl ... | grep WORD");
            let (host, path) = url.split_once('/').expect("HOST:PORT/PATH");
            let page = common::server::http_get(host, &format!("/{path}"));
            let matched: Vec<&str> = page.lines().filter(|l| l.contains(grep.trim())).collect();
            assert!(
                !matched.is_empty(),
                "`{readme_line}` matched nothing in:\n{page}"
            );
            return matched.join("\n");
        }
        let exports: String = env.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        let serve = line.contains("spool serve");
        if serve {
            // A server: in the background, where the README puts it (or
            // as the other shell of the Quick start).
            let line = line.trim_end_matches('&').trim();
            let line = if line.contains("--listen") {
                line.to_string()
            } else {
                format!(
                    "{line} --listen 127.0.0.1:{} --metrics 127.0.0.1:{}",
                    self.port(7070),
                    self.port(9090)
                )
            };
            // exec the binary itself, so that killing the child kills it.
            let line = line.replacen(
                "spool serve",
                &format!("\"{}\" serve", env!("CARGO_BIN_EXE_spool")),
                1,
            );
            let mut cmd = self.command(&format!("{exports}exec {line}"));
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            self.background.push(cmd.spawn().unwrap());
            self.after_background = true;
            std::thread::sleep(Duration::from_millis(300));
            return String::new();
        }
        if line.contains("--follow") {
            let mut child = self.command(&format!("{exports}{line}")).spawn().unwrap();
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                child.try_wait().unwrap().is_none(),
                "`{readme_line}` stopped instead of waiting for new messages"
            );
            let _ = child.kill();
            let _ = child.wait();
            return String::new();
        }
        let started = Instant::now();
        loop {
            let out = self.command(&format!("{exports}{line}")).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                if let Some(promise) = readme_line.split("# prints: ").nth(1) {
                    assert_eq!(text.trim(), promise.trim(), "output of `{readme_line}`");
                }
                return text;
            }
            // A cluster started a moment ago may not answer yet.
            if !self.after_background || started.elapsed() > Duration::from_secs(20) {
                panic!(
                    "`{readme_line}` (run as `{line}`) failed with {:?}:\n{}{}",
                    out.status.code(),
                    text,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// The embedded example, run as README says right after the Quick start:
/// in the same directory, while the server holds `./spool-data` (it failed
/// there with DirectoryLocked when it used that directory too).
fn quickstart_runs_beside_the_server(shell: &Shell) {
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_spool"))
        .with_file_name("examples")
        .join("quickstart");
    if !example.exists() {
        // `cargo test` builds examples; a filtered build may not have.
        eprintln!(
            "skipping the quickstart example: {} not built",
            example.display()
        );
        return;
    }
    let temp = shell.dir.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    for run in 1..=2 {
        let out = Command::new(&example)
            .current_dir(shell.dir.path())
            .env("TMPDIR", &temp)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "quickstart run {run}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The second run finds the first run's messages too.
        assert_eq!(text.matches(": hello").count(), run, "{text}");
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn every_readme_command_block_runs_as_written() {
    let blocks = sh_blocks();
    assert!(blocks.len() >= 5, "README has {} sh blocks", blocks.len());
    // Blocks that run against one server share it, in README order (the
    // group commands use the topic the Rust example above them fills);
    // the cluster block gets a shell of its own.
    let mut single = Shell::new();
    let mut env = Vec::new();
    for block in &blocks {
        let text = block.join("\n");
        if text.contains("--node-id") {
            let mut cluster = Shell::new();
            let mut cluster_env = Vec::new();
            for line in block {
                cluster.run(line, &mut cluster_env);
            }
            continue;
        }
        if text.contains("--group workers") {
            // What the queue example in README produces first.
            single.run("spool topics create jobs --partitions 2", &mut env);
            let lines: String = (0..10).map(|i| format!("job-{i}\\n")).collect();
            single.run(
                &format!("printf '{lines}' | spool produce --topic jobs"),
                &mut env,
            );
        }
        let mut outputs = Vec::new();
        for line in block {
            outputs.push((line.clone(), single.run(line, &mut env)));
        }
        if text.contains("serve") && !text.contains("--node-id") {
            quickstart_runs_beside_the_server(&single);
        }
        for (line, out) in outputs {
            if line.contains("# prints the three lines") {
                let mut got: Vec<&str> = out.lines().collect();
                got.sort();
                assert_eq!(got, vec!["first", "second", "third"], "`{line}`");
            }
            if line.contains("--group workers --ack --count 10") {
                assert_eq!(out.lines().count(), 10, "`{line}`: {out}");
            }
        }
    }
}
