//! Starting and stopping the real `spool` binary for integration tests.
//!
//! The usual fixture is `SpoolServer::temporary()` (a fresh data directory
//! that lives as long as the server, and its restarts) with
//! `server.client().await` or `server.client_with_topic(..).await`.
#![allow(dead_code)]

use std::sync::Arc;

use spool::client::{Client, TopicOptions};

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `spool serve` child process on ephemeral loopback ports.
pub struct SpoolServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    /// The temporary data directory this server (and its restarts) owns.
    temp: Option<Arc<tempfile::TempDir>>,
}

impl SpoolServer {
    /// Starts `spool serve` on `dir` with extra flags, waiting until it
    /// reports its addresses.
    pub fn start_with(dir: &Path, extra: &[&str]) -> SpoolServer {
        SpoolServer::try_start_with(dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start_with`, but a server that exits at once (a port taken
    /// since it was picked, say) is an error, not a panic.
    pub fn try_start_with(dir: &Path, extra: &[&str]) -> Result<SpoolServer, String> {
        // A test may pin the port (to restart on the same address).
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
            .arg("serve")
            .args(listen)
            .args(["--metrics", "127.0.0.1:0", "--data"])
            .arg(dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SPOOL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("SPOOL_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn spool serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read spool serve stdout");
        // "listening on ADDR metrics on ADDR"
        let words: Vec<&str> = line.split_whitespace().collect();
        if !(words.len() == 6 && words[0] == "listening") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("spool serve did not start: first line {line:?}"));
        }
        Ok(SpoolServer {
            child: Some(child),
            addr: words[2].parse().unwrap(),
            metrics: words[5].parse().unwrap(),
            dir: dir.to_path_buf(),
            temp: None,
        })
    }

    pub fn start(dir: &Path) -> SpoolServer {
        SpoolServer::start_with(dir, &[])
    }

    /// A server on a fresh temporary data directory.
    pub fn temporary() -> SpoolServer {
        SpoolServer::temporary_with(&[])
    }

    /// A server on a fresh temporary data directory, with extra flags.
    pub fn temporary_with(extra: &[&str]) -> SpoolServer {
        let temp = Arc::new(tempfile::tempdir().expect("temporary directory"));
        let mut server = SpoolServer::start_with(temp.path(), extra);
        server.temp = Some(temp);
        server
    }

    /// Starts the server again on the same data directory (killing it first
    /// if it still runs), with extra flags.
    pub fn restart(mut self, extra: &[&str]) -> SpoolServer {
        self.kill();
        let mut next = SpoolServer::start_with(&self.dir, extra);
        next.temp = self.temp.take();
        next
    }

    /// A client connected to the server.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr)
            .await
            .expect("connect to spool serve")
    }

    /// A client connected to the server, and a topic created through it.
    pub async fn client_with_topic(
        &self,
        topic: &str,
        partitions: u32,
        options: TopicOptions,
    ) -> Client {
        let client = self.client().await;
        client
            .create_topic(topic, partitions, options)
            .await
            .expect("create topic");
        client
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit (within 30 s).
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        for _ in 0..300 {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "spool serve exited with {status} after SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("spool serve did not exit within 30 s of SIGTERM");
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// True while the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET a path from the metrics endpoint (plain HTTP/1.0 over a socket).
    pub fn http_get(&self, path: &str) -> String {
        http_get(&self.metrics.to_string(), path)
    }
}

/// Connection options that authenticate as `user` with `password`.
pub fn as_user(user: &str, password: &str) -> spool::client::ConnectOptions {
    spool::client::ConnectOptions {
        credentials: Some(spool::client::Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    }
}

/// Stops process `pid` (SIGSTOP) and returns once the kernel reports it
/// stopped: the signal takes effect when the process is next scheduled,
/// which on a loaded machine can be after it answered a few more
/// requests.
pub fn pause(pid: u32) {
    let target = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(target, rustix::process::Signal::STOP).expect("SIGSTOP");
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(&stat).ok().and_then(|s| {
        s.rsplit(')')
            .next()
            .map(|rest| rest.trim_start().starts_with('T'))
    }) != Some(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Resident memory of process `pid`, in KiB (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The whole response (headers and body) to `GET path` from `host`, over
/// plain HTTP/1.0.
pub fn http_get(host: &str, path: &str) -> String {
    http(host, "GET", path, &[], "")
}

/// The whole response to `method path` from `host` with `headers` and
/// `body`, over plain HTTP/1.0.
pub fn http(host: &str, method: &str, path: &str, headers: &[String], body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).expect("connect for HTTP");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

impl Drop for SpoolServer {
    fn drop(&mut self) {
        self.kill();
    }
}
