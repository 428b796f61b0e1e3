//! The cluster's lock service: sessions and locks are commands in the Raft
//! log (so every grant is committed before it is answered, and the token
//! counter survives any broker), sessions are leases the Raft leader
//! expires like brokers', and an acquire that queues waits here until this
//! broker's applied state shows the grant.

use std::time::Duration;

use crate::cluster::node::ClusterNode;
use crate::cluster::state::{Command, LeaseHolder, Outcome};
use crate::locks::local::ListedLock;
use crate::locks::{check_name, check_ttl, Acquired, LockError, SessionId};

fn unexpected(outcome: Outcome) -> LockError {
    LockError::Unavailable(format!("unexpected outcome {outcome:?}"))
}

impl ClusterNode {
    async fn lock_command(&self, command: Command) -> Result<Outcome, LockError> {
        match self.submit(command).await {
            Ok(Outcome::LockRefused(e)) => Err(e),
            Ok(outcome) => Ok(outcome),
            Err(e) => Err(LockError::Unavailable(e.to_string())),
        }
    }

    /// Opens a lock session that lives `ttl` past each keep-alive the Raft
    /// leader hears.
    pub async fn open_session(&self, ttl: Duration) -> Result<SessionId, LockError> {
        check_ttl(ttl)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self.lock_command(Command::OpenSession { ttl_ms }).await? {
            Outcome::SessionOpened(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Keeps `session` alive at the Raft leader.
    pub async fn keep_session_alive(&self, session: SessionId) -> Result<Duration, LockError> {
        self.control().keep_session_alive(session).await
    }

    /// Ends `session`: its locks go to their next waiters.
    pub async fn close_session(&self, session: SessionId) -> Result<(), LockError> {
        self.lock_command(Command::CloseSession(session))
            .await
            .map(|_| ())
    }

    /// Takes `lock` for `session`, waiting up to `wait` in its queue.
    pub async fn acquire_lock(
        &self,
        lock: &str,
        session: SessionId,
        wait: Duration,
    ) -> Result<Option<u64>, LockError> {
        check_name(lock)?;
        let mut state = self.state_watch();
        let command = Command::AcquireLock {
            name: lock.to_string(),
            session,
            wait: !wait.is_zero(),
        };
        let queued_after = match self.lock_command(command).await? {
            Outcome::Lock(Acquired::Granted(token)) => return Ok(Some(token)),
            Outcome::Lock(Acquired::Busy) => return Ok(None),
            Outcome::LockQueued { last_token } => last_token,
            other => return Err(unexpected(other)),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let now = state.borrow_and_update();
                if let Some((holder, token)) = now.locks.holder(lock) {
                    // Only a grant made after this acquire queued: this
                    // broker's state may lag behind the release of an
                    // earlier grant to the same session.
                    if holder == session && token > queued_after {
                        return Ok(Some(token));
                    }
                }
                if !now.leases.contains_key(&LeaseHolder::Session(session)) {
                    return Err(LockError::SessionExpired(session));
                }
            }
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return Err(LockError::Unavailable("shutting down".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let leave = Command::LeaveLockQueue {
            name: lock.to_string(),
            session,
        };
        match self.lock_command(leave).await? {
            Outcome::Lock(Acquired::Granted(token)) => Ok(Some(token)),
            Outcome::Lock(_) => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Releases `lock`, which `session` must hold (or leaves its queue).
    pub async fn release_lock(&self, lock: &str, session: SessionId) -> Result<(), LockError> {
        check_name(lock)?;
        let command = Command::ReleaseLock {
            name: lock.to_string(),
            session,
        };
        self.lock_command(command).await.map(|_| ())
    }

    /// The locks whose names start with `prefix` as this broker's state
    /// has them, and the largest token granted. Expiry times are known
    /// only on the Raft leader.
    pub fn list_locks(&self, prefix: &str) -> (Vec<ListedLock>, u64) {
        let state = self.state();
        let locks = state
            .locks
            .list(prefix)
            .into_iter()
            .map(|info| ListedLock {
                expires_in: info
                    .holder
                    .and_then(|(session, _)| self.control().session_expires_in(session)),
                info,
            })
            .collect();
        (locks, state.locks.last_token())
    }
}
