//! The broker's clock for consumer-group timing: ack deadlines, nack delays,
//! redelivery. Real brokers use the process's monotonic clock; tests use a
//! manual clock that they move forward, so a 30-second deadline takes no
//! time to test and a slow machine cannot make a timing test flaky.
//!
//! Only queue-state time goes through this clock. Long-poll waits
//! (`deliver` with a wait) still sleep on tokio's timer: a manual clock's
//! `advance` does not wake them, so tests that advance it deliver with no
//! wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::monotonic_ms;

/// Milliseconds on a monotonic clock, real or manual.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The process's monotonic clock (the default).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `start_ms` until [`Clock::advance`]
    /// moves it. Clones share the time.
    pub fn manual(start_ms: u64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(start_ms))),
        }
    }

    /// Now, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            None => monotonic_ms(),
            Some(t) => t.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward by `ms`. Returns false (and does
    /// nothing) on the system clock, which nobody moves.
    pub fn advance(&self, ms: u64) -> bool {
        match &self.manual {
            None => false,
            Some(t) => {
                t.fetch_add(ms, Ordering::AcqRel);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = Clock::manual(1_000);
        let twin = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        assert!(twin.advance(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert!(!Clock::system().advance(1));
    }
}
