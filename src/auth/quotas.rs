//! Quotas: how many bytes a principal may produce and fetch per second,
//! and how many connections it may hold. Like Kafka's, a principal over its
//! rate is slowed down, never refused: a produce is stored and answered,
//! then its connection reads nothing more until the principal is back
//! within its rate; a fetch or delivery answer is held back for as long.
//! Every connection of a principal draws on one meter, so opening more
//! connections does not buy more bandwidth.
//!
//! The principal `*` is the quota of everyone without one of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::AuthError;

/// The file, in the data directory.
pub const FILE: &str = "quotas";
/// The principal whose quota applies to everyone without one.
pub const DEFAULT_PRINCIPAL: &str = "*";
/// Most quotas.
pub const MAX_QUOTAS: usize = 10_000;
/// How much a principal may send at once after being idle, in seconds of
/// its rate. Short, so that its rate over any few seconds is close to the
/// quota; a batch larger than this is still taken whole (and paid for by a
/// longer pause after it).
const BURST_SECONDS: f64 = 0.2;

/// One principal's limits; `None`: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Produced bytes per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Fetched (and delivered) bytes per second.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Connections at once.
    pub max_connections: Option<u32>,
}

impl Quota {
    /// The quota a wire quota describes (0: unlimited).
    pub fn from_wire(q: &spool_protocol::requests::WireQuota) -> (String, Quota) {
        let some = |n: u64| (n > 0).then_some(n);
        (
            q.principal.clone(),
            Quota {
                produce_bytes_per_sec: some(q.produce_bytes_per_sec),
                fetch_bytes_per_sec: some(q.fetch_bytes_per_sec),
                max_connections: (q.max_connections > 0).then_some(q.max_connections),
            },
        )
    }

    /// `principal`'s quota on the wire.
    pub fn to_wire(&self, principal: &str) -> spool_protocol::requests::WireQuota {
        spool_protocol::requests::WireQuota {
            principal: principal.to_string(),
            produce_bytes_per_sec: self.produce_bytes_per_sec.unwrap_or(0),
            fetch_bytes_per_sec: self.fetch_bytes_per_sec.unwrap_or(0),
            max_connections: self.max_connections.unwrap_or(0),
        }
    }
}

/// Which rate a transfer counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Bytes a client sends to be stored.
    Produce,
    /// Bytes a client is sent (fetches and deliveries).
    Fetch,
}

impl Direction {
    /// Its label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Produce => "produce",
            Direction::Fetch => "fetch",
        }
    }
}

/// The meters of the principals connected now, by principal.
#[derive(Default)]
pub(super) struct Meters(Mutex<HashMap<String, Arc<Meter>>>);

impl Meters {
    /// Counts a new connection of `principal` against `limit`.
    pub(super) fn join(
        &self,
        principal: &str,
        limit: Option<u32>,
    ) -> Result<Arc<Meter>, AuthError> {
        let mut meters = self.0.lock();
        let meter = meters
            .entry(principal.to_string())
            .or_insert_with(|| Arc::new(Meter::default()))
            .clone();
        let mut connections = meter.connections.lock();
        if let Some(limit) = limit {
            if *connections >= limit {
                return Err(AuthError::TooManyConnections(format!(
                    "{principal} already holds {connections} connections, the most its quota allows"
                )));
            }
        }
        *connections += 1;
        drop(connections);
        Ok(meter)
    }

    fn leave(&self, principal: &str, meter: &Meter) {
        let mut meters = self.0.lock();
        let mut connections = meter.connections.lock();
        *connections = connections.saturating_sub(1);
        if *connections == 0 {
            // The last connection takes the meter with it: a principal
            // that reconnects starts with an empty bucket (no burst saved
            // up while away).
            meters.remove(principal);
        }
    }
}

/// A token bucket in bytes: full at `rate × BURST_SECONDS`, and allowed to
/// go into debt by one transfer, which its owner then waits out.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            tokens: 0.0,
            at: Instant::now(),
        }
    }
}

impl Bucket {
    /// Takes `bytes` at `rate` bytes/s: how long to pause afterwards.
    fn take(&mut self, now: Instant, bytes: u64, rate: u64) -> Duration {
        let rate = rate as f64;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(rate * BURST_SECONDS) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// One principal's rates and connection count, shared by its connections.
#[derive(Debug, Default)]
pub(super) struct Meter {
    produce: Mutex<Bucket>,
    fetch: Mutex<Bucket>,
    connections: Mutex<u32>,
}

/// A connection's share of its principal's quota: counted among the
/// principal's connections until dropped.
pub struct ConnectionQuota {
    pub(super) auth: Arc<super::Auth>,
    pub(super) principal: String,
    pub(super) meter: Arc<Meter>,
}

impl std::fmt::Debug for ConnectionQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionQuota")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl ConnectionQuota {
    /// Counts `bytes` moved in `direction`: how long the connection must
    /// pause to keep its principal within its rate (zero when it has none).
    pub fn charge(&self, direction: Direction, bytes: usize) -> Duration {
        let quota = self.auth.quota_of(&self.principal);
        let (rate, bucket) = match direction {
            Direction::Produce => (quota.produce_bytes_per_sec, &self.meter.produce),
            Direction::Fetch => (quota.fetch_bytes_per_sec, &self.meter.fetch),
        };
        match rate {
            Some(rate) => bucket.lock().take(Instant::now(), bytes as u64, rate),
            None => Duration::ZERO,
        }
    }

    /// The principal.
    pub fn principal(&self) -> &str {
        &self.principal
    }
}

impl Drop for ConnectionQuota {
    fn drop(&mut self) {
        self.auth.meters.leave(&self.principal, &self.meter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_and_makes_debt_wait() {
        let start = Instant::now();
        let mut bucket = Bucket {
            tokens: 0.0,
            at: start,
        };
        let rate = 1_000_000;
        // A second's worth of refill, capped at the burst: 200 kB pass.
        let at = start + Duration::from_secs(1);
        assert_eq!(bucket.take(at, 200_000, rate), Duration::ZERO);
        // The next 500 kB at the same instant: half a second of debt.
        let pause = bucket.take(at, 500_000, rate);
        assert!((pause.as_secs_f64() - 0.5).abs() < 1e-6, "{pause:?}");
        // Sent at exactly the rate, after waiting out the debt: no pause
        // beyond the transfer's own time.
        let later = at + pause + Duration::from_millis(100);
        let pause = bucket.take(later, 100_000, rate);
        assert_eq!(pause, Duration::ZERO);
    }

    #[test]
    fn quotas_fall_back_to_the_default_and_limit_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = Arc::new(super::super::Auth::open(dir.path()).expect("open"));
        let limited = Quota {
            produce_bytes_per_sec: Some(1000),
            fetch_bytes_per_sec: None,
            max_connections: Some(2),
        };
        let set = |principal: &str, quota| super::super::SecurityChange::SetQuota {
            principal: principal.into(),
            quota,
        };
        auth.change(set("alice", limited)).expect("set");
        let one = Quota {
            max_connections: Some(1),
            ..Quota::default()
        };
        auth.change(set(DEFAULT_PRINCIPAL, one))
            .expect("set default");
        assert!(auth.change(set("bad name!", limited)).is_err());
        let auth = Arc::new(super::super::Auth::open(dir.path()).expect("reopen"));
        assert_eq!(auth.quota_of("alice"), limited);
        assert_eq!(auth.quota_of("bob").max_connections, Some(1));

        let a1 = auth.connect("alice").expect("first");
        let a2 = auth.connect("alice").expect("second");
        assert!(auth.connect("alice").is_err(), "a third connection");
        drop(a1);
        let _a3 = auth.connect("alice").expect("a slot came free");
        // Alice's connections share one meter: the second pays for the
        // first's bytes.
        assert_eq!(a2.charge(Direction::Fetch, 1 << 30), Duration::ZERO);
        let first = a2.charge(Direction::Produce, 1000);
        assert!(first >= Duration::from_millis(900), "{first:?}");
    }
}
