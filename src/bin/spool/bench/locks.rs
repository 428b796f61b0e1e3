//! `spool bench --locks`: lock latency and throughput through the client.
//!
//! Uncontended: one session takes and releases one lock, one cycle after
//! another (each is two committed changes: a grant and a release).
//! Contended: `--lock-clients` sessions, each on its own connection, all
//! wait for the same lock and release it at once; every grant is a
//! handover. Every token is checked to be larger than the one before, per
//! client and over all grants.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spool::client::{Client, ConnectOptions};

use crate::Failure;

/// What a lock benchmark measured.
pub struct LockReport {
    pub cycles: u64,
    pub cycles_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub clients: u32,
    pub handovers: u64,
    pub handovers_per_sec: f64,
}

impl LockReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "system": "spool",
            "uncontended_cycles": self.cycles,
            "uncontended_cycles_per_sec": self.cycles_per_sec,
            "uncontended_p50_us": self.p50_us,
            "uncontended_p99_us": self.p99_us,
            "contended_clients": self.clients,
            "contended_handovers": self.handovers,
            "contended_handovers_per_sec": self.handovers_per_sec,
        })
    }

    pub fn print_table(&self) {
        println!("locks: acquire + release through the client");
        println!(
            "  uncontended: {} cycles, {:.0} cycles/s, p50 {} us, p99 {} us",
            self.cycles, self.cycles_per_sec, self.p50_us, self.p99_us
        );
        println!(
            "  contended:   {} clients, {} handovers, {:.0} handovers/s",
            self.clients, self.handovers, self.handovers_per_sec
        );
    }
}

fn refused(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::refused(format!("lock bench: {what}: {e}"))
}

/// Runs both parts against the broker at `addr` for about `duration` each.
pub async fn run(
    addr: SocketAddr,
    connect: &ConnectOptions,
    clients: u32,
    duration: Duration,
) -> Result<LockReport, Failure> {
    let client = Client::connect_with(addr, connect.clone()).await?;
    let session = client
        .open_session(Duration::from_secs(10))
        .await
        .map_err(|e| refused("open a session", e))?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| refused("histogram", e))?;
    let mut last = 0;
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        let token = session
            .try_acquire("bench-uncontended")
            .await
            .map_err(|e| refused("acquire", e))?
            .ok_or_else(|| refused("acquire", "a free lock was not granted"))?;
        if token <= last {
            return Err(refused("tokens", format!("token {token} after {last}")));
        }
        last = token;
        session
            .release("bench-uncontended")
            .await
            .map_err(|e| refused("release", e))?;
        let _ = hist.record(t.elapsed().as_micros() as u64);
        cycles += 1;
    }
    let cycles_per_sec = cycles as f64 / started.elapsed().as_secs_f64();
    let _ = session.close().await;

    // Contended: every client waits for the same lock.
    let highest = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (highest, connect) = (highest.clone(), connect.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect_with(addr, connect).await?;
            let session = client
                .open_session(Duration::from_secs(10))
                .await
                .map_err(|e| refused("open a session", e))?;
            let mut grants = 0u64;
            let mut mine = 0;
            while Instant::now() < stop_at {
                let Some(token) = session
                    .acquire("bench-contended", Some(Duration::from_secs(5)))
                    .await
                    .map_err(|e| refused("acquire", e))?
                else {
                    continue;
                };
                if token <= mine {
                    return Err(refused("tokens", format!("token {token} after {mine}")));
                }
                mine = token;
                highest.fetch_max(token, Ordering::Relaxed);
                session
                    .release("bench-contended")
                    .await
                    .map_err(|e| refused("release", e))?;
                grants += 1;
            }
            let _ = session.close().await;
            Ok::<u64, Failure>(grants)
        }));
    }
    let mut handovers = 0;
    for task in tasks {
        handovers += task.await.map_err(|e| refused("a client task", e))??;
    }
    let handovers_per_sec = handovers as f64 / started.elapsed().as_secs_f64();
    Ok(LockReport {
        cycles,
        cycles_per_sec,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        clients: clients.max(1),
        handovers,
        handovers_per_sec,
    })
}
