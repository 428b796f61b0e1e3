//! Distributed locks: sessions kept alive by this client, locks with
//! fencing tokens, and a lost-lock notification.
//!
//! ```no_run
//! # async fn demo(client: spool_client::Client) -> Result<(), spool_client::ClientError> {
//! use spool_client::LockOptions;
//! if let Some(guard) = client.lock("nightly-report", LockOptions::default()).await? {
//!     tokio::select! {
//!         _ = guard.lost() => eprintln!("lock lost: stop writing"),
//!         _ = async { /* work, passing guard.token() to every write */ } => {}
//!     }
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use spool_protocol::requests::{
    lock_safety_margin, AcquireLockRequest, CloseSessionRequest, KeepAliveRequest,
    ListLocksRequest, ListLocksResponse, OpenSessionRequest, ReleaseLockRequest,
};
use spool_protocol::{Call, ErrorCode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Client, ClientError};

/// How long one acquire request waits at the server before asking again
/// (a wait survives a broker failing over this way).
const WAIT_CHUNK: Duration = Duration::from_secs(20);
/// How long a call is retried through retriable errors (a cluster
/// electing a new Raft leader).
const RETRY_BUDGET: Duration = Duration::from_secs(10);

pub use spool_protocol::requests::LockOptions;

struct SessionInner {
    client: Client,
    id: u64,
    lost: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.keeper.abort();
        let (client, session) = (self.client.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.call(&CloseSessionRequest { session }).await;
            });
        }
    }
}

/// A lock session: a lease this client keeps alive (a keep-alive every
/// third of its TTL) until it is closed or dropped. Locks are held by
/// sessions; when the session is lost, so are they.
pub struct Session {
    inner: Arc<SessionInner>,
}

impl Client {
    /// Opens a lock session with `ttl`.
    pub async fn open_session(&self, ttl: Duration) -> Result<Session, ClientError> {
        // In a cluster, learn the other brokers: a session outlives the
        // broker it was opened at.
        self.refresh_routes().await;
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        let sent = tokio::time::Instant::now();
        let opened = call_retrying(self, &OpenSessionRequest { ttl_ms }).await?;
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(self.clone(), opened.session, ttl, sent, lost_tx));
        Ok(Session {
            inner: Arc::new(SessionInner {
                client: self.clone(),
                id: opened.session,
                lost,
                keeper,
            }),
        })
    }

    /// Takes lock `name` in a session of its own, waiting as `options`
    /// say. `Ok(None)` if the wait ran out.
    pub async fn lock(
        &self,
        name: &str,
        options: LockOptions,
    ) -> Result<Option<LockGuard>, ClientError> {
        let session = self.open_session(options.ttl).await?;
        match session.acquire(name, options.wait).await {
            Ok(Some(token)) => Ok(Some(LockGuard {
                session,
                name: name.to_string(),
                token,
            })),
            Ok(None) => {
                let _ = session.close().await;
                Ok(None)
            }
            Err(e) => {
                let _ = session.close().await;
                Err(e)
            }
        }
    }

    /// The locks whose names start with `prefix`: holders, tokens, expiry
    /// and waiters.
    pub async fn list_locks(&self, prefix: &str) -> Result<ListLocksResponse, ClientError> {
        call_retrying(
            self,
            &ListLocksRequest {
                prefix: prefix.to_string(),
            },
        )
        .await
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Takes `name`, waiting in its queue up to `wait` (`None`: until
    /// granted). Returns the grant's fencing token, or `None` if the wait
    /// ran out.
    pub async fn acquire(
        &self,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<Option<u64>, ClientError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(tokio::time::Instant::now()),
                None => WAIT_CHUNK,
            };
            let request = AcquireLockRequest {
                name: name.to_string(),
                session: self.inner.id,
                wait_ms: u32::try_from(left.min(WAIT_CHUNK).as_millis()).unwrap_or(u32::MAX),
            };
            let reply = call_retrying(&self.inner.client, &request).await?;
            if let Some(token) = reply.token {
                return Ok(Some(token));
            }
            let done = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if done || request.wait_ms == 0 {
                return Ok(None);
            }
        }
    }

    /// Takes `name` only if it is free now.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<u64>, ClientError> {
        self.acquire(name, Some(Duration::ZERO)).await
    }

    /// Releases `name` (or leaves its queue). Refused (`LockNotHeld`) if
    /// this session neither holds nor waits for it.
    pub async fn release(&self, name: &str) -> Result<(), ClientError> {
        let request = ReleaseLockRequest {
            name: name.to_string(),
            session: self.inner.id,
        };
        call_retrying(&self.inner.client, &request).await
    }

    /// True once the session is lost: expired at the server, or not kept
    /// alive for its TTL minus the safety margin.
    pub fn is_lost(&self) -> bool {
        *self.inner.lost.borrow()
    }

    /// Resolves when the session is lost (and with it every lock it held).
    pub async fn lost(&self) {
        let mut lost = self.inner.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Ends the session now: its locks go to their next waiters.
    pub async fn close(self) -> Result<(), ClientError> {
        self.inner.keeper.abort();
        let request = CloseSessionRequest {
            session: self.inner.id,
        };
        match call_retrying(&self.inner.client, &request).await {
            Err(e) if e.code() == Some(ErrorCode::SessionExpired) => Ok(()),
            other => other,
        }
    }
}

/// A held lock, in a session of its own.
pub struct LockGuard {
    session: Session,
    name: String,
    token: u64,
}

impl LockGuard {
    /// The grant's fencing token: larger than every token granted before.
    /// Pass it with every write to what the lock protects.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session holding it.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// True once the lock is lost.
    pub fn is_lost(&self) -> bool {
        self.session.is_lost()
    }

    /// Resolves when the lock is lost: stop acting on it.
    pub async fn lost(&self) {
        self.session.lost().await
    }

    /// Releases the lock and ends its session.
    pub async fn release(self) -> Result<(), ClientError> {
        let released = self.session.release(&self.name).await;
        let closed = self.session.close().await;
        released.and(closed)
    }
}

/// Sends `request`, retrying retriable errors for a while.
async fn call_retrying<C: Call>(client: &Client, request: &C) -> Result<C::Reply, ClientError> {
    let deadline = tokio::time::Instant::now() + RETRY_BUDGET;
    loop {
        match client.call(request).await {
            Err(e) if e.is_retriable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Keeps `session` alive every third of its TTL. Flags it lost when the
/// server says it expired, or when no keep-alive has been answered for the
/// TTL minus the safety margin, counted from when it was sent (earlier
/// than the server heard it, so this client gives up first).
async fn keep_alive(
    client: Client,
    session: u64,
    ttl: Duration,
    opened: tokio::time::Instant,
    lost: watch::Sender<bool>,
) {
    let valid_for = ttl.saturating_sub(lock_safety_margin(ttl));
    let mut valid_until = opened + valid_for;
    let mut beat = ttl / 3;
    loop {
        let next = (tokio::time::Instant::now() + beat).min(valid_until);
        tokio::time::sleep_until(next).await;
        if tokio::time::Instant::now() >= valid_until {
            lost.send_replace(true);
            return;
        }
        let sent = tokio::time::Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        match tokio::time::timeout(left, client.call(&KeepAliveRequest { session })).await {
            Ok(Ok(())) => {
                valid_until = sent + valid_for;
                beat = ttl / 3;
            }
            Ok(Err(e)) if e.code() == Some(ErrorCode::SessionExpired) => {
                lost.send_replace(true);
                return;
            }
            // A broker or the network failing: try again soon, a session
            // outlives a failover if a keep-alive gets through in time.
            Ok(Err(e)) => {
                tracing::debug!(session, error = %e, "keep-alive failed");
                beat = Duration::from_millis(200);
            }
            Err(_) => beat = Duration::from_millis(200),
        }
    }
}
