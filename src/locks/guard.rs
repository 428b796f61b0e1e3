//! The embedded lock API: [`crate::Broker::lock`] returns a [`LockGuard`]
//! that keeps its session alive, tells when the lock is lost, and releases
//! it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::local::LocalLocks;
use super::{safety_margin, LockError, SessionId};

pub use spool_protocol::requests::LockOptions;

/// A held lock. Its session is kept alive by a task until the guard is
/// released or dropped (dropping releases it in the background).
pub struct LockGuard {
    locks: Arc<LocalLocks>,
    name: String,
    session: SessionId,
    token: u64,
    lost: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
    released: bool,
}

impl LockGuard {
    /// Opens a session and waits for `name` as `options` say. `Ok(None)`
    /// when the wait ran out.
    pub(crate) async fn acquire(
        locks: Arc<LocalLocks>,
        name: &str,
        options: &LockOptions,
    ) -> Result<Option<LockGuard>, LockError> {
        let session = locks.open_session(options.ttl).await?;
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(locks.clone(), session, options.ttl, lost_tx));
        let left = options.wait;
        let token = loop {
            // An unbounded wait is a series of hour-long ones.
            let wait = left.unwrap_or(Duration::from_secs(3600));
            match locks.acquire(name, session, wait).await {
                Ok(Some(token)) => break Some(token),
                Ok(None) if left.is_none() => continue,
                Ok(None) => break None,
                Err(e) => {
                    keeper.abort();
                    let _ = locks.close_session(session).await;
                    return Err(e);
                }
            }
        };
        let Some(token) = token else {
            keeper.abort();
            let _ = locks.close_session(session).await;
            return Ok(None);
        };
        Ok(Some(LockGuard {
            locks,
            name: name.to_string(),
            session,
            token,
            lost,
            keeper,
            released: false,
        }))
    }

    /// The grant's fencing token: larger than every token granted before.
    /// Hand it to every resource the lock protects (a fenced produce takes
    /// it), so that one can refuse a holder that lost the lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session holding it.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// True once the lock is lost (or about to be: the session could not
    /// be kept alive and its TTL minus a safety margin has passed).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lock is lost. Stop working on what it protects.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper stopped: the lock is no longer kept.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Releases the lock and ends its session.
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.keeper.abort();
        let released = self.locks.release(&self.name, self.session).await;
        let closed = self.locks.close_session(self.session).await;
        released.and(closed)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.keeper.abort();
        let (locks, session) = (self.locks.clone(), self.session);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = locks.close_session(session).await;
            });
        }
    }
}

/// Keeps `session` alive every third of its TTL; flags the lock lost when
/// the session is gone, or when no keep-alive succeeded for the TTL minus
/// the safety margin (the broker may expire it soon after).
async fn keep_alive(
    locks: Arc<LocalLocks>,
    session: SessionId,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let valid_for = ttl.saturating_sub(safety_margin(ttl));
    let mut valid_until = tokio::time::Instant::now() + valid_for;
    loop {
        let next = (tokio::time::Instant::now() + ttl / 3).min(valid_until);
        tokio::time::sleep_until(next).await;
        let sent = tokio::time::Instant::now();
        match locks.keep_alive(session) {
            Ok(_) => valid_until = sent + valid_for,
            Err(LockError::SessionExpired(_)) => {
                lost.send_replace(true);
                return;
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= valid_until {
            lost.send_replace(true);
            return;
        }
    }
}
