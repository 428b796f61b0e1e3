//! A cluster of real `spool serve` processes on loopback ports, each
//! broker-to-broker link optionally through its own cuttable proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spool::client::{Client, ClientError};
use spool::protocol::requests::{MetadataRequest, MetadataResponse};

use super::proxy::Proxy;
use super::server::SpoolServer;

/// Small segments: every broker preallocates one per partition it has.
pub const SEGMENT_BYTES: u64 = 1 << 20;

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

pub struct Cluster {
    pub brokers: Vec<SpoolServer>,
    /// `links[i][k]`: the proxy broker `i` dials broker `k` through (with
    /// `Cluster::start_linked`); `links[i][i]` is unused.
    pub links: Vec<Vec<Option<Proxy>>>,
    /// `fronts[i]`: the proxy in front of broker `i`'s client port, which
    /// it advertises (with `Cluster::start_isolatable`): every other
    /// broker (a follower fetching) and every routed client goes through
    /// it; `brokers[i].addr` still reaches the broker directly.
    pub fronts: Vec<Proxy>,
    /// Each broker's `spool serve` flags, to restart it as it was.
    pub flags: Vec<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: u64) -> Cluster {
        Cluster::start_inner(n, false, false, &[])
    }

    /// A cluster whose brokers all get `extra` flags too.
    pub fn start_with(n: u64, linked: bool, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, linked, false, extra)
    }

    /// A cluster whose brokers can be cut off completely: every
    /// broker-to-broker link and every broker's advertised client port
    /// runs through its own proxy.
    pub fn start_isolatable(n: u64, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, true, true, extra)
    }

    /// A cluster whose every broker-to-broker link runs through its own
    /// proxy, so that links can be cut.
    pub fn start_linked(n: u64) -> Cluster {
        Cluster::start_inner(n, true, false, &[])
    }

    fn start_inner(n: u64, linked: bool, fronted: bool, extra: &[&str]) -> Cluster {
        // Ports are picked free and then bound by the brokers: another
        // process can take one in between. Start afresh when that happens.
        let mut last = String::new();
        for _ in 0..3 {
            match Cluster::try_start(n, linked, fronted, extra) {
                Ok(cluster) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("cluster did not start: {last}");
    }

    fn try_start(n: u64, linked: bool, fronted: bool, extra: &[&str]) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let clients: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let peer_list = peers
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let fronts: Vec<Proxy> = if fronted {
            clients.iter().map(|c| Proxy::start(*c)).collect()
        } else {
            Vec::new()
        };
        let links: Vec<Vec<Option<Proxy>>> = (0..n as usize)
            .map(|i| {
                (0..n as usize)
                    .map(|k| (linked && i != k).then(|| Proxy::start(peers[k])))
                    .collect()
            })
            .collect();
        let flags: Vec<Vec<String>> = (0..n as usize)
            .map(|i| {
                let routes = links[i]
                    .iter()
                    .enumerate()
                    .filter_map(|(k, p)| p.as_ref().map(|p| format!("{}={}", k + 1, p.addr)))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut flags = vec![
                    "--listen".to_string(),
                    clients[i].to_string(),
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--peer-listen".to_string(),
                    peers[i].to_string(),
                    "--peers".to_string(),
                    peer_list.clone(),
                    "--default-segment-bytes".to_string(),
                    SEGMENT_BYTES.to_string(),
                ];
                if linked {
                    flags.extend(["--peer-route".to_string(), routes]);
                }
                if let Some(front) = fronts.get(i) {
                    flags.extend(["--advertise".to_string(), front.addr.to_string()]);
                }
                flags.extend(extra.iter().map(|f| f.to_string()));
                flags
            })
            .collect();
        let mut brokers = Vec::new();
        for (i, broker_flags) in flags.iter().enumerate() {
            let data = dir.path().join(format!("broker-{}", i + 1));
            std::fs::create_dir_all(&data).expect("mkdir");
            let args: Vec<&str> = broker_flags.iter().map(String::as_str).collect();
            // Started brokers are killed when `brokers` drops on failure.
            brokers.push(SpoolServer::try_start_with(&data, &args)?);
        }
        Ok(Cluster {
            brokers,
            links,
            fronts,
            flags,
            _dir: dir,
        })
    }

    /// Starts broker `id` (not one of the voters) and has it join: it
    /// heartbeats the voters until the leader adds it.
    pub fn add_broker(&mut self, id: u64) {
        self.add_broker_with(id, &[]);
    }

    /// As [`Cluster::add_broker`], with `extra` flags.
    pub fn add_broker_with(&mut self, id: u64, extra: &[String]) {
        let peer_list = self.flags[0][7].clone();
        let mut flags: Vec<String> = vec![
            "--listen".into(),
            free_port().to_string(),
            "--node-id".into(),
            id.to_string(),
            "--peer-listen".into(),
            free_port().to_string(),
            "--peers".into(),
            peer_list,
            "--default-segment-bytes".into(),
            SEGMENT_BYTES.to_string(),
        ];
        flags.extend(extra.iter().cloned());
        let data = self.brokers[0]
            .dir
            .parent()
            .expect("cluster dir")
            .join(format!("broker-{id}"));
        std::fs::create_dir_all(&data).expect("mkdir");
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.brokers.push(SpoolServer::start_with(&data, &args));
        self.flags.push(flags);
    }

    /// Cuts (or heals) the proxy in front of broker `i`'s client port.
    pub fn front(&self, i: usize, cut: bool) {
        if let Some(front) = self.fronts.get(i) {
            if cut {
                front.cut();
            } else {
                front.heal();
            }
        }
    }

    /// Cuts (or heals) every link to and from broker `i` (its client port
    /// too, if it is behind a front proxy).
    pub fn isolate(&self, i: usize, cut: bool) {
        self.front(i, cut);
        for (a, row) in self.links.iter().enumerate() {
            for (b, proxy) in row.iter().enumerate() {
                if let Some(proxy) = proxy.as_ref().filter(|_| a == i || b == i) {
                    if cut {
                        proxy.cut();
                    } else {
                        proxy.heal();
                    }
                }
            }
        }
    }

    /// Starts broker `i` again (after a kill) with the same flags and data.
    pub fn restart(&mut self, i: usize) {
        let args: Vec<&str> = self.flags[i].iter().map(String::as_str).collect();
        let dir = self.brokers[i].dir.clone();
        self.brokers[i].kill();
        self.brokers[i] = SpoolServer::start_with(&dir, &args);
    }

    pub fn signal(&self, i: usize, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.brokers[i].pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    }

    /// A client that knows every broker, for when some are down.
    pub async fn client(&self, first: usize) -> Client {
        let mut addrs: Vec<SocketAddr> = self.brokers.iter().map(|b| b.addr).collect();
        addrs.rotate_left(first);
        Client::connect_any(&addrs, spool::client::ConnectOptions::default())
            .await
            .expect("connect")
    }

    /// Waits until all `n` brokers are alive in the committed state, and
    /// then for each to have a heartbeat counted against that live lease
    /// (one heartbeat period, 300 ms, and some slack): only then do they
    /// take writes.
    pub async fn ready(&self, client: &Client, n: usize) {
        eventually(Duration::from_secs(20), "every broker alive", || async {
            let m = metadata(client).await.map_err(|e| e.to_string())?;
            let alive = m.brokers.iter().filter(|b| b.alive).count();
            (alive == n).then_some(()).ok_or(format!("{alive} alive"))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

pub fn batch(text: &str) -> bytes::Bytes {
    let mut b = spool::protocol::BatchBuilder::new();
    b.push(0, None, text.as_bytes(), &[]).expect("push");
    b.finish().expect("batch")
}

/// Index into `cluster.brokers` of broker `id`.
pub fn index_of(id: u64) -> usize {
    (id - 1) as usize
}

pub async fn metadata(client: &Client) -> Result<MetadataResponse, ClientError> {
    client.call(&MetadataRequest).await
}

/// Retries `what` until it succeeds or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {within:?}: {e}"),
        }
    }
}
