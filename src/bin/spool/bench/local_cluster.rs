//! A throwaway cluster for `spool bench --replication N` without `--addr`:
//! N (at least 3) `spool serve` processes of this same executable on
//! loopback ports, each with its own temporary data directory, stopped
//! (SIGKILL) when the bench ends.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spool::client::Client;
use spool::protocol::requests::MetadataRequest;

use crate::Failure;

/// The running brokers.
pub struct LocalCluster {
    children: Vec<Child>,
    /// Client addresses, broker 1 first.
    pub addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

fn free_port() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("picking a free port: {e}"))
}

impl LocalCluster {
    /// Starts `n` brokers and waits until every one is a live member.
    pub async fn start(n: usize) -> Result<LocalCluster, Failure> {
        let mut last = String::new();
        // A picked port can be taken before the broker binds it: retry.
        for _ in 0..3 {
            match LocalCluster::try_start(n).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(Failure::refused(format!(
            "the local cluster did not start: {last}"
        )))
    }

    async fn try_start(n: usize) -> Result<LocalCluster, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let peers: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let peer_list = peers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            children: Vec::new(),
            addrs: Vec::new(),
            _dir: dir,
        };
        for (i, peer) in peers.iter().enumerate() {
            let data = cluster._dir.path().join(format!("broker-{}", i + 1));
            std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
            let listen = free_port()?;
            let mut child = Command::new(&exe)
                .arg("serve")
                .arg("--data")
                .arg(&data)
                .args(["--listen", &listen.to_string()])
                .args(["--metrics", "127.0.0.1:0"])
                .args(["--node-id", &(i + 1).to_string()])
                .args(["--peer-listen", &peer.to_string()])
                .args(["--peers", &peer_list])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            cluster.children.push(child);
            if !line.starts_with("listening on") {
                return Err(format!("broker {} did not start: {line:?}", i + 1));
            }
            cluster.addrs.push(listen);
        }
        let client = Client::connect(cluster.addrs[0])
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(m) = client.call(&MetadataRequest).await {
                if m.brokers.len() == n && m.brokers.iter().all(|b| b.alive) {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{n} brokers not all alive within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Each broker acts on its lease only once a heartbeat was counted
        // against the committed one.
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(cluster)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
