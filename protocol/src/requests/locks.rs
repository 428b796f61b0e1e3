//! Distributed locks: client sessions (leases kept alive by the client)
//! and the locks they hold, each grant with a fencing token.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::codec::{put_list, put_option_u64, put_string, DecodeError, Reader, Wire};

/// A session's TTL when none is asked for.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);

/// How much earlier than the deciding broker a lock holder counts its
/// session out, so that it stops work before the lock can be handed on: a
/// fifth of the TTL, at most 2 s. The broker's embedded guard and the
/// client both use it.
pub fn lock_safety_margin(ttl: Duration) -> Duration {
    (ttl / 5).min(Duration::from_secs(2))
}

/// How to take a lock (the embedded broker's `Broker::lock` and the
/// client's `Client::lock` take the same options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// The session's TTL: how long the lock outlives its holder's last
    /// keep-alive the deciding broker heard.
    pub ttl: Duration,
    /// Longest wait in the lock's queue; `None` waits until granted.
    pub wait: Option<Duration>,
}

impl Default for LockOptions {
    fn default() -> LockOptions {
        LockOptions {
            ttl: DEFAULT_LOCK_TTL,
            wait: None,
        }
    }
}

/// Opens a session: a lease the client keeps alive with
/// [`KeepAliveRequest`]s. Locks are held by sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSessionRequest {
    /// How long the session outlives its last keep-alive.
    pub ttl_ms: u32,
}

/// The session opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSessionResponse {
    /// Its id, unique for the life of the broker's (or cluster's) data.
    pub session: u64,
    /// Its TTL.
    pub ttl_ms: u32,
}

/// Keeps a session alive for another TTL from when the server hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepAliveRequest {
    /// The session.
    pub session: u64,
}

/// Ends a session now, releasing its locks and giving up its waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseSessionRequest {
    /// The session.
    pub session: u64,
}

/// Takes a lock for a session, waiting in the lock's FIFO queue for up to
/// `wait_ms` (0: only if it is free now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireLockRequest {
    /// The lock's name.
    pub name: String,
    /// The session that will hold it.
    pub session: u64,
    /// Longest wait in the queue; a wait that runs out leaves the queue.
    pub wait_ms: u32,
}

/// The outcome of an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireLockResponse {
    /// The grant's fencing token, or `None` when the lock stayed with
    /// another session for the whole wait.
    pub token: Option<u64>,
}

/// Releases a lock the session holds, or leaves its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseLockRequest {
    /// The lock's name.
    pub name: String,
    /// The session.
    pub session: u64,
}

/// Lists the locks whose names start with `prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListLocksRequest {
    /// Name prefix ("" for every lock).
    pub prefix: String,
}

/// One lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireLock {
    /// Its name.
    pub name: String,
    /// The holding session, if any.
    pub holder: Option<u64>,
    /// The holder's fencing token (0 when free).
    pub token: u64,
    /// Milliseconds until the holder's session expires if it is not kept
    /// alive, as the deciding broker times it (`None` when free or unknown
    /// here).
    pub expires_in_ms: Option<u64>,
    /// Waiting sessions, first in line first.
    pub waiters: Vec<u64>,
}

/// The locks, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListLocksResponse {
    /// The largest fencing token granted so far.
    pub last_token: u64,
    /// The locks.
    pub locks: Vec<WireLock>,
}

impl Wire for OpenSessionRequest {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.ttl_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OpenSessionRequest {
            ttl_ms: r.u32("ttl_ms")?,
        })
    }
}

impl Wire for OpenSessionResponse {
    const MIN_LEN: usize = 12;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.session);
        b.put_u32_le(self.ttl_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(OpenSessionResponse {
            session: r.u64("session")?,
            ttl_ms: r.u32("ttl_ms")?,
        })
    }
}

impl Wire for KeepAliveRequest {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.session);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(KeepAliveRequest {
            session: r.u64("session")?,
        })
    }
}

impl Wire for CloseSessionRequest {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.session);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(CloseSessionRequest {
            session: r.u64("session")?,
        })
    }
}

impl Wire for AcquireLockRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        b.put_u64_le(self.session);
        b.put_u32_le(self.wait_ms);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AcquireLockRequest {
            name: r.string("name")?,
            session: r.u64("session")?,
            wait_ms: r.u32("wait_ms")?,
        })
    }
}

impl Wire for AcquireLockResponse {
    const MIN_LEN: usize = 1;

    fn put(&self, b: &mut BytesMut) {
        put_option_u64(b, self.token);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(AcquireLockResponse {
            token: r.option_u64("token")?,
        })
    }
}

impl Wire for ReleaseLockRequest {
    const MIN_LEN: usize = 10;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        b.put_u64_le(self.session);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ReleaseLockRequest {
            name: r.string("name")?,
            session: r.u64("session")?,
        })
    }
}

impl Wire for ListLocksRequest {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.prefix);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListLocksRequest {
            prefix: r.string("prefix")?,
        })
    }
}

impl Wire for WireLock {
    const MIN_LEN: usize = 2 + 1 + 8 + 1 + 4;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, &self.name);
        put_option_u64(b, self.holder);
        b.put_u64_le(self.token);
        put_option_u64(b, self.expires_in_ms);
        put_list(b, &self.waiters);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(WireLock {
            name: r.string("name")?,
            holder: r.option_u64("holder")?,
            token: r.u64("token")?,
            expires_in_ms: r.option_u64("expires_in_ms")?,
            waiters: r.list("waiter count")?,
        })
    }
}

impl Wire for ListLocksResponse {
    const MIN_LEN: usize = 12;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(self.last_token);
        put_list(b, &self.locks);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(ListLocksResponse {
            last_token: r.u64("last_token")?,
            locks: r.list("lock count")?,
        })
    }
}
