//! `spool-peers --locks`: the lock workload of `spool bench --locks`
//! against Redis (`SET key token NX PX ttl` and a compare-and-delete
//! script: no queue, waiters poll every millisecond; no fencing token) and
//! etcd (its lock service through the v3 JSON gateway: a lease per session,
//! `lock` waits in etcd's revision-ordered queue, the lock key's revision is
//! a fencing token).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One lock client of either peer.
enum Locker {
    Redis {
        conn: redis::aio::MultiplexedConnection,
        token: u64,
    },
    Etcd {
        http: reqwest::Client,
        url: String,
        lease: String,
        key: Option<String>,
    },
}

const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl Locker {
    async fn connect(peer: &str, url: &str) -> Result<Locker> {
        Ok(match peer {
            "redis" => {
                let client = redis::Client::open(url)?;
                Locker::Redis {
                    conn: client.get_multiplexed_async_connection().await?,
                    token: rand_token(),
                }
            }
            "etcd" => {
                let http = reqwest::Client::new();
                let granted: Value =
                    post(&http, url, "/v3/lease/grant", json!({"TTL": 60})).await?;
                let lease = granted["ID"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| granted["ID"].as_i64().map(|i| i.to_string()))
                    .context("lease grant without an ID")?;
                Locker::Etcd {
                    http,
                    url: url.to_string(),
                    lease,
                    key: None,
                }
            }
            other => bail!("no lock peer {other}"),
        })
    }

    /// Takes `name`; with `wait`, until granted.
    async fn acquire(&mut self, name: &str, wait: bool) -> Result<bool> {
        match self {
            Locker::Redis { conn, token } => loop {
                *token += 1;
                let set: Option<String> = redis::cmd("SET")
                    .arg(name)
                    .arg(*token)
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query_async(conn)
                    .await?;
                if set.is_some() {
                    return Ok(true);
                }
                if !wait {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            },
            Locker::Etcd {
                http,
                url,
                lease,
                key,
            } => {
                let body = json!({"name": B64.encode(name), "lease": lease});
                let locked: Value = post(http, url, "/v3/lock/lock", body).await?;
                *key = Some(
                    locked["key"]
                        .as_str()
                        .context("lock answer without a key")?
                        .to_string(),
                );
                Ok(true)
            }
        }
    }

    async fn release(&mut self, name: &str) -> Result<()> {
        match self {
            Locker::Redis { conn, token } => {
                let _: i64 = redis::Script::new(RELEASE)
                    .key(name)
                    .arg(*token)
                    .invoke_async(conn)
                    .await?;
            }
            Locker::Etcd { http, url, key, .. } => {
                let key = key.take().context("release without a lock")?;
                let _: Value = post(http, url, "/v3/lock/unlock", json!({"key": key})).await?;
            }
        }
        Ok(())
    }
}

fn rand_token() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        << 8
}

async fn post(http: &reqwest::Client, url: &str, path: &str, body: Value) -> Result<Value> {
    let reply = http
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = reply.status();
    let value: Value = reply.json().await?;
    if !status.is_success() {
        bail!("POST {path}: {status} {value}");
    }
    Ok(value)
}

/// Uncontended cycles, then handovers between `clients` waiting for one
/// lock, `duration` each; prints the same keys as `spool bench --locks`.
pub async fn run(peer: &str, url: &str, clients: u32, duration: Duration) -> Result<Value> {
    let mut one = Locker::connect(peer, url).await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        if !one.acquire("bench-uncontended", false).await? {
            bail!("a free lock was not granted");
        }
        one.release("bench-uncontended").await?;
        hist.record(t.elapsed().as_micros() as u64)?;
        cycles += 1;
    }
    let cycles_per_sec = cycles as f64 / started.elapsed().as_secs_f64();

    let stop_at = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (peer, url) = (peer.to_string(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut locker = Locker::connect(&peer, &url).await?;
            let mut grants = 0u64;
            while Instant::now() < stop_at {
                locker.acquire("bench-contended", true).await?;
                locker.release("bench-contended").await?;
                grants += 1;
            }
            Ok::<u64, anyhow::Error>(grants)
        }));
    }
    let mut handovers = 0;
    for task in tasks {
        handovers += task.await??;
    }
    let handovers_per_sec = handovers as f64 / started.elapsed().as_secs_f64();
    Ok(json!({
        "system": peer,
        "uncontended_cycles": cycles,
        "uncontended_cycles_per_sec": cycles_per_sec,
        "uncontended_p50_us": hist.value_at_quantile(0.5),
        "uncontended_p99_us": hist.value_at_quantile(0.99),
        "contended_clients": clients.max(1),
        "contended_handovers": handovers,
        "contended_handovers_per_sec": handovers_per_sec,
    }))
}
