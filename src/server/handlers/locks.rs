//! Lock sessions and locks: answered by the broker's own lock service on a
//! single node, by the cluster's (through Raft) in a cluster.

use std::sync::Arc;
use std::time::Duration;

use spool_protocol::requests::{
    AcquireLockRequest, AcquireLockResponse, ListLocksResponse, OpenSessionResponse, WireLock,
};
use spool_protocol::{ErrorCode, ErrorResponse, Request, Response};

use crate::broker::Broker;
use crate::cluster::node::ClusterNode;
use crate::locks::local::ListedLock;
use crate::locks::{LocalLocks, LockError};
use crate::server::errors::error;

/// Longest wait an acquire may ask for in one request.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Who decides: this broker, or the cluster.
enum Service {
    Local(Arc<LocalLocks>),
    Cluster(Arc<ClusterNode>),
}

/// The wire error for a lock error.
pub fn lock_error(e: &LockError) -> ErrorResponse {
    let code = match e {
        LockError::SessionExpired(_) => ErrorCode::SessionExpired,
        LockError::NotHeld { .. } => ErrorCode::LockNotHeld,
        LockError::InvalidName { .. } | LockError::InvalidTtl { .. } => ErrorCode::InvalidConfig,
        LockError::LimitReached(_) => ErrorCode::LimitReached,
        LockError::Storage(_) => ErrorCode::StorageError,
        LockError::Unavailable(_) => ErrorCode::ClusterUnavailable,
    };
    error(code, e.to_string())
}

/// Counts an acquire waiting in a queue here while it lives.
struct Waiting;

impl Waiting {
    fn new() -> Waiting {
        crate::metrics::LOCK_WAITERS.inc();
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        crate::metrics::LOCK_WAITERS.dec();
    }
}

/// Answers a lock request (`request` must be one of the lock kinds).
pub async fn handle(
    broker: &Broker,
    cluster: Option<&Arc<ClusterNode>>,
    request: Request,
) -> Result<Response, ErrorResponse> {
    let service = match cluster {
        Some(node) => Service::Cluster(node.clone()),
        None => Service::Local(broker.locks().map_err(|e| lock_error(&e))?),
    };
    answer(&service, request).await.map_err(|e| lock_error(&e))
}

async fn answer(service: &Service, request: Request) -> Result<Response, LockError> {
    Ok(match request {
        Request::OpenSession(r) => {
            let ttl = Duration::from_millis(u64::from(r.ttl_ms));
            let session = match service {
                Service::Local(l) => l.open_session(ttl).await?,
                Service::Cluster(c) => c.open_session(ttl).await?,
            };
            OpenSessionResponse {
                session,
                ttl_ms: r.ttl_ms,
            }
            .into()
        }
        Request::KeepAlive(r) => {
            match service {
                Service::Local(l) => l.keep_alive(r.session)?,
                Service::Cluster(c) => c.keep_session_alive(r.session).await?,
            };
            ().into()
        }
        Request::CloseSession(r) => {
            match service {
                Service::Local(l) => l.close_session(r.session).await?,
                Service::Cluster(c) => c.close_session(r.session).await?,
            };
            ().into()
        }
        Request::AcquireLock(r) => acquire(service, r).await?.into(),
        Request::ReleaseLock(r) => {
            match service {
                Service::Local(l) => l.release(&r.name, r.session).await?,
                Service::Cluster(c) => c.release_lock(&r.name, r.session).await?,
            };
            crate::metrics::LOCK_RELEASES.inc();
            ().into()
        }
        Request::ListLocks(r) => {
            let (locks, last_token) = match service {
                Service::Local(l) => l.list(&r.prefix),
                Service::Cluster(c) => c.list_locks(&r.prefix),
            };
            ListLocksResponse {
                last_token,
                locks: locks.into_iter().map(wire_lock).collect(),
            }
            .into()
        }
        other => {
            return Err(LockError::Unavailable(format!(
                "request kind {} is not a lock request",
                other.kind()
            )))
        }
    })
}

async fn acquire(
    service: &Service,
    r: AcquireLockRequest,
) -> Result<AcquireLockResponse, LockError> {
    let wait = Duration::from_millis(u64::from(r.wait_ms)).min(MAX_WAIT);
    let _waiting = (!wait.is_zero()).then(Waiting::new);
    let token = match service {
        Service::Local(l) => l.acquire(&r.name, r.session, wait).await?,
        Service::Cluster(c) => c.acquire_lock(&r.name, r.session, wait).await?,
    };
    if token.is_some() {
        crate::metrics::LOCK_GRANTS.inc();
    }
    Ok(AcquireLockResponse { token })
}

fn wire_lock(l: ListedLock) -> WireLock {
    WireLock {
        name: l.info.name,
        holder: l.info.holder.map(|(session, _)| session),
        token: l.info.holder.map_or(0, |(_, token)| token),
        expires_in_ms: l
            .expires_in
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        waiters: l.info.waiters,
    }
}
