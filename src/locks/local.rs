//! The lock service of a single broker (standalone or embedded): the
//! broker itself decides when a session expires, on its monotonic clock,
//! by the same rules as a cluster's Raft leader (`crate::leases`), and
//! persists the lock table before it answers, so a grant survives a crash
//! and tokens keep growing across restarts.
//!
//! `<dir>/locks` holds the table and the sessions' leases (not their
//! deadlines: after a restart every session gets a whole TTL from the
//! open, as under a new Raft leader, so a client that reconnects in time
//! keeps its locks).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::table::{Acquired, LockInfo, LockTable, SessionId};
use super::{check_name, check_ttl, LockError, MAX_SESSIONS};
use crate::leases::{Lease, LeaseTracker};
use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

const KIND: MetaKind = MetaKind {
    magic: *b"SPLK",
    version: 1,
};
/// The file, in the broker's directory.
pub const FILE: &str = "locks";
/// How often expiries are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Persisted {
    table: LockTable,
    sessions: BTreeMap<SessionId, Lease>,
}

struct State {
    persisted: Persisted,
    tracker: LeaseTracker<SessionId>,
}

/// Counts for metrics (grants and releases are counted where they are
/// answered, in the server; only expiries happen here alone).
#[derive(Debug, Default)]
pub struct LockCounts {
    /// Sessions expired.
    pub expiries: AtomicU64,
}

/// A listed lock, with how long its holder's session has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedLock {
    /// The lock.
    pub info: LockInfo,
    /// Time left before the holder's session expires without a
    /// keep-alive.
    pub expires_in: Option<Duration>,
}

/// A single broker's locks and sessions.
pub struct LocalLocks {
    path: PathBuf,
    state: Mutex<State>,
    /// Bumped on every change; waiters watch it.
    changed: watch::Sender<u64>,
    expirer: OnceLock<()>,
    /// Counts for metrics.
    pub counts: LockCounts,
}

impl LocalLocks {
    /// Opens the lock table kept in `dir`.
    pub fn open(dir: &Path) -> Result<Arc<LocalLocks>, LockError> {
        let path = dir.join(FILE);
        let persisted: Persisted = meta_file::read(&path, KIND)?.unwrap_or_default();
        let mut tracker = LeaseTracker::default();
        tracker.on_leadership(Instant::now(), &persisted.sessions, &HashMap::new());
        Ok(Arc::new(LocalLocks {
            path,
            state: Mutex::new(State { persisted, tracker }),
            changed: watch::channel(0).0,
            expirer: OnceLock::new(),
            counts: LockCounts::default(),
        }))
    }

    /// Applies `change` to a copy of the table, stores the copy durably,
    /// and only then makes it the table: a failed write changes nothing.
    fn change<R>(
        &self,
        change: impl FnOnce(&mut Persisted) -> Result<R, LockError>,
    ) -> Result<R, LockError> {
        let mut state = self.state.lock();
        let mut next = state.persisted.clone();
        let result = change(&mut next)?;
        meta_file::write(&self.path, KIND, &next, Durability::Synced)?;
        state.persisted = next;
        drop(state);
        self.changed.send_modify(|v| *v += 1);
        Ok(result)
    }

    /// Runs `f` off the async threads: changes wait for an fsync.
    async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&LocalLocks) -> Result<R, LockError> + Send + 'static,
    ) -> Result<R, LockError> {
        let me = self.clone();
        crate::simulation::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| LockError::Storage(format!("lock table task failed: {e}")))?
    }

    /// Starts the task that expires sessions, once.
    fn ensure_expirer(self: &Arc<Self>) {
        self.expirer.get_or_init(|| {
            let me: Weak<LocalLocks> = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(EXPIRY_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(locks) = me.upgrade() else { return };
                    let due = {
                        let mut state = locks.state.lock();
                        let state = &mut *state;
                        state.tracker.due(Instant::now(), &state.persisted.sessions)
                    };
                    if due.is_empty() {
                        continue;
                    }
                    let expired = locks
                        .blocking(move |l| l.expire(due.into_iter().map(|e| e.holder).collect()))
                        .await;
                    if let Err(e) = expired {
                        tracing::error!(error = %e, "session expiry not stored");
                    }
                }
            });
        });
    }

    fn expire(&self, sessions: Vec<SessionId>) -> Result<(), LockError> {
        self.change(|p| {
            for session in &sessions {
                if p.sessions.remove(session).is_some() {
                    p.table.drop_session(*session);
                }
            }
            Ok(())
        })?;
        for session in &sessions {
            tracing::info!(
                session,
                "lock session expired: no keep-alive for a whole TTL"
            );
        }
        self.counts
            .expiries
            .fetch_add(sessions.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Opens a session that lives `ttl` past each keep-alive.
    pub async fn open_session(self: &Arc<Self>, ttl: Duration) -> Result<SessionId, LockError> {
        check_ttl(ttl)?;
        self.ensure_expirer();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.blocking(move |l| {
            let id = l.change(|p| {
                if p.sessions.len() >= MAX_SESSIONS {
                    return Err(LockError::LimitReached(format!(
                        "{MAX_SESSIONS} sessions are open already"
                    )));
                }
                let id = p.table.new_session();
                p.sessions.insert(
                    id,
                    Lease {
                        ttl_ms,
                        alive: true,
                        generation: 0,
                    },
                );
                Ok(id)
            })?;
            let mut state = l.state.lock();
            let state = &mut *state;
            state
                .tracker
                .heartbeat(id, Instant::now(), &state.persisted.sessions);
            Ok(id)
        })
        .await
    }

    /// Keeps `session` alive for another TTL from now; returns the TTL.
    pub fn keep_alive(&self, session: SessionId) -> Result<Duration, LockError> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let ttl = state.persisted.sessions.get(&session).map(|l| l.ttl_ms);
        match (
            state
                .tracker
                .heartbeat(session, Instant::now(), &state.persisted.sessions),
            ttl,
        ) {
            (Some(_), Some(ttl_ms)) => Ok(Duration::from_millis(ttl_ms)),
            _ => Err(LockError::SessionExpired(session)),
        }
    }

    /// Ends `session` now: its locks go to their next waiters.
    pub async fn close_session(self: &Arc<Self>, session: SessionId) -> Result<(), LockError> {
        self.blocking(move |l| {
            l.change(|p| {
                p.sessions
                    .remove(&session)
                    .ok_or(LockError::SessionExpired(session))?;
                p.table.drop_session(session);
                Ok(())
            })
        })
        .await
    }

    /// Takes `lock` for `session`, waiting up to `wait` in its queue.
    /// `None` if another session held it for the whole wait.
    pub async fn acquire(
        self: &Arc<Self>,
        lock: &str,
        session: SessionId,
        wait: Duration,
    ) -> Result<Option<u64>, LockError> {
        check_name(lock)?;
        let mut changes = self.changed.subscribe();
        let name = lock.to_string();
        let first = self
            .blocking(move |l| {
                l.change(|p| {
                    if !p.sessions.contains_key(&session) {
                        return Err(LockError::SessionExpired(session));
                    }
                    p.table.acquire(&name, session, !wait.is_zero())
                })
            })
            .await?;
        match first {
            Acquired::Granted(token) => return Ok(Some(token)),
            Acquired::Busy => return Ok(None),
            Acquired::Queued => {}
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Granted (by a release or an expiry), or out of the queue.
            {
                let state = self.state.lock();
                let p = &state.persisted;
                if let Some((holder, token)) = p.table.holder(lock) {
                    if holder == session {
                        return Ok(Some(token));
                    }
                }
                if !p.sessions.contains_key(&session) {
                    return Err(LockError::SessionExpired(session));
                }
                if !p.table.is_waiting(lock, session) {
                    return Ok(None);
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(LockError::Unavailable("lock service closed".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The wait ran out: leave the queue; a grant that came first stands.
        let name = lock.to_string();
        self.blocking(move |l| {
            l.change(|p| Ok(p.table.leave_queue(&name, session)))?;
            let state = l.state.lock();
            let holder = state.persisted.table.holder(&name);
            Ok(holder
                .filter(|(h, _)| *h == session)
                .map(|(_, token)| token))
        })
        .await
    }

    /// Releases `lock`, which `session` must hold (or leaves its queue).
    pub async fn release(
        self: &Arc<Self>,
        lock: &str,
        session: SessionId,
    ) -> Result<(), LockError> {
        check_name(lock)?;
        let name = lock.to_string();
        self.blocking(move |l| l.change(|p| p.table.release(&name, session).map(|_| ())))
            .await
    }

    /// The locks whose names start with `prefix`, and the largest token
    /// granted so far.
    pub fn list(&self, prefix: &str) -> (Vec<ListedLock>, u64) {
        let state = self.state.lock();
        let now = Instant::now();
        let sessions = &state.persisted.sessions;
        let locks = state
            .persisted
            .table
            .list(prefix)
            .into_iter()
            .map(|info| {
                let expires_in = info.holder.and_then(|(session, _)| {
                    let ttl = Duration::from_millis(sessions.get(&session)?.ttl_ms);
                    let age = state.tracker.age(session, now, sessions)?;
                    Some(ttl.saturating_sub(age))
                });
                ListedLock { info, expires_in }
            })
            .collect();
        (locks, state.persisted.table.last_token())
    }
}
