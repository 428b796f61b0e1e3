//! Distributed locks with fencing tokens, for the embedded broker, the
//! single server and the cluster alike.
//!
//! A client opens a **session**: a lease with a TTL that it keeps alive.
//! Sessions hold **locks**; each grant carries a **fencing token** larger
//! than every token granted before, for any lock. A session that stops
//! keeping alive expires a TTL after the last keep-alive the deciding node
//! heard, and its locks go to their next waiters (first come, first
//! served). A holder that was paused may still believe it holds the lock
//! after that: fenced writes (a batch carrying the lock and token, see
//! `spool_protocol::batch::ATTR_FENCED`) are how a Spool topic, or any
//! resource that checks tokens, refuses it.
//!
//! - [`table`]: the lock table, pure data (shared with the cluster's Raft
//!   state).
//! - [`local`]: the lock service of a single broker, deciding expiries on
//!   its own clock and persisting the table.
//! - [`guard`]: the embedded API, [`crate::Broker::lock`].

/// How locks work, why fencing tokens, and what the tests show
/// (`docs/locks.md`).
pub mod guide {
    #![doc = include_str!("../../docs/locks.md")]
}
pub mod guard;
pub mod local;
pub mod table;

use std::time::Duration;

use thiserror::Error;

use crate::storage::StorageError;

pub use guard::{LockGuard, LockOptions};
pub use local::LocalLocks;
pub use table::{Acquired, Grant, LockInfo, LockTable, SessionId};

/// Longest lock name, in bytes.
pub const MAX_LOCK_NAME: usize = spool_protocol::batch::MAX_LOCK_NAME;
/// Shortest session TTL: shorter would expire sessions on an ordinary
/// scheduling hiccup of a busy two-core machine.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest session TTL: a crashed holder keeps its locks this long.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// The TTL of a session when none is asked for.
pub const DEFAULT_TTL: Duration = spool_protocol::requests::DEFAULT_LOCK_TTL;
/// Most locks held or awaited at once.
pub const MAX_LOCKS: usize = 100_000;
/// Most sessions waiting for one lock.
pub const MAX_WAITERS: usize = 10_000;
/// Most sessions open at once.
pub const MAX_SESSIONS: usize = 100_000;

/// Why a lock call failed.
#[derive(Clone, Debug, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
pub enum LockError {
    /// The session is unknown or expired; its locks were released.
    #[error("lock session {0} is unknown or expired")]
    SessionExpired(SessionId),
    /// The session neither holds nor waits for the lock.
    #[error("session {session} does not hold lock {lock:?}")]
    NotHeld {
        /// The lock.
        lock: String,
        /// The session.
        session: SessionId,
    },
    /// The lock's name breaks the rules.
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidName {
        /// The name (cut to 64 bytes).
        name: String,
        /// Which rule.
        reason: String,
    },
    /// The TTL is outside [`MIN_TTL`]..=[`MAX_TTL`].
    #[error("lock session TTL of {ttl_ms} ms is out of range (1000..=3600000 ms)")]
    InvalidTtl {
        /// The TTL asked for.
        ttl_ms: u64,
    },
    /// A bound on locks, waiters or sessions would be passed.
    #[error("lock limit reached: {0}")]
    LimitReached(String),
    /// The lock table could not be stored; nothing changed.
    #[error("lock table storage: {0}")]
    Storage(String),
    /// The cluster could not decide now (no Raft leader, no quorum).
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
}

impl From<StorageError> for LockError {
    fn from(e: StorageError) -> LockError {
        LockError::Storage(e.to_string())
    }
}

/// Checks a lock's name: 1 to [`MAX_LOCK_NAME`] bytes, no control
/// characters.
pub fn check_name(name: &str) -> Result<(), LockError> {
    let bad = |reason: String| LockError::InvalidName {
        name: name.chars().take(64).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty".into()));
    }
    if name.len() > MAX_LOCK_NAME {
        return Err(bad(format!(
            "{} bytes long, at most {MAX_LOCK_NAME}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("contains control characters".into()));
    }
    Ok(())
}

/// Checks a session's TTL.
pub fn check_ttl(ttl: Duration) -> Result<(), LockError> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(LockError::InvalidTtl {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

pub use spool_protocol::requests::lock_safety_margin as safety_margin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ttls_are_checked() {
        assert!(check_name("jobs/nightly").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_LOCK_NAME)).is_ok());
        let long = check_name(&"x".repeat(MAX_LOCK_NAME + 1)).expect_err("too long");
        assert!(
            long.to_string().contains("256 bytes long, at most 255"),
            "{long}"
        );
        assert!(check_name("a\nb").is_err());
        assert!(check_ttl(DEFAULT_TTL).is_ok());
        assert_eq!(
            check_ttl(Duration::from_millis(10)),
            Err(LockError::InvalidTtl { ttl_ms: 10 })
        );
        assert!(check_ttl(Duration::from_secs(86_400)).is_err());
        assert_eq!(
            safety_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(2)),
            Duration::from_millis(400)
        );
    }
}
