//! Authentication and authorization for the server (the embedded broker
//! has none: the application is its own principal).
//!
//! - [`users`]: users and their salted argon2id password hashes, in
//!   `<data>/users`.
//! - [`acl`]: access rules (principal, operations, resource pattern), in
//!   `<data>/acls`; deny by default, the user `admin` may do everything.
//! - [`required`]: what each request kind needs, decided for every kind in
//!   one exhaustive match.
//! - [`quotas`]: byte rates and connection limits per principal, in
//!   `<data>/quotas`, enforced by slowing down.

/// TLS, users, access rules and the threat model (`docs/security.md`).
pub mod guide {
    #![doc = include_str!("../../docs/security.md")]
}
pub mod acl;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod quotas;
pub mod required;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use acl::{AclStore, Rule};
pub use quotas::{ConnectionQuota, Direction, Quota, QuotaStore};
pub use users::UserStore;

/// The user who may do everything.
pub const ADMIN: &str = "admin";
/// How the principals of the cluster's brokers begin (they come from
/// certificates signed by the cluster CA; no user name has a `:`). Brokers
/// may do everything.
pub const BROKER_PREFIX: &str = "broker:";

/// The principal of the broker whose certificate names it `name`.
pub fn broker_principal(name: &str) -> String {
    format!("{BROKER_PREFIX}{name}")
}

/// True for a broker's principal.
pub fn is_broker(principal: &str) -> bool {
    principal.starts_with(BROKER_PREFIX)
}
/// Failed authentications from one address within [`FAILURE_WINDOW`]
/// after which its attempts are refused unchecked until the window ends.
pub const MAX_FAILURES: u32 = 5;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What a principal does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Append to a topic.
    Produce,
    /// Read a topic; join, consume and settle in a group.
    Consume,
    /// Create a topic.
    Create,
    /// Delete a topic or a group.
    Delete,
    /// See what exists and how it stands.
    Describe,
    /// Change the cluster, users and rules; reset groups.
    Admin,
    /// Take and release locks.
    Lock,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Produce,
        Operation::Consume,
        Operation::Create,
        Operation::Delete,
        Operation::Describe,
        Operation::Admin,
        Operation::Lock,
    ];

    /// Its name on the command line and the wire.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Describe => "describe",
            Operation::Admin => "admin",
            Operation::Lock => "lock",
        }
    }

    /// The operation named `name`.
    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.name() == name)
    }
}

/// What kind of thing a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// Topics, by name.
    Topic,
    /// Consumer groups, by name.
    Group,
    /// Locks, by name.
    Lock,
    /// The broker or cluster as a whole (its name is always `*`).
    Cluster,
}

impl ResourceKind {
    /// Its wire number.
    pub fn wire(self) -> u8 {
        match self {
            ResourceKind::Topic => 1,
            ResourceKind::Group => 2,
            ResourceKind::Lock => 3,
            ResourceKind::Cluster => 4,
        }
    }

    /// The kind numbered `n` on the wire.
    pub fn from_wire(n: u8) -> Option<ResourceKind> {
        Some(match n {
            1 => ResourceKind::Topic,
            2 => ResourceKind::Group,
            3 => ResourceKind::Lock,
            4 => ResourceKind::Cluster,
            _ => return None,
        })
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Group => "group",
            ResourceKind::Lock => "lock",
            ResourceKind::Cluster => "cluster",
        }
    }
}

/// Why a security call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user or password (which one is not said).
    #[error("authentication failed for user {0:?}")]
    BadCredentials(String),
    /// Too many failures from this address lately.
    #[error("too many failed attempts from {0}; try again later")]
    RateLimited(IpAddr),
    /// The name or password breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No such user, rule or quota.
    #[error("{0}")]
    NotFound(String),
    /// The principal holds as many connections as its quota allows.
    #[error("{0}")]
    TooManyConnections(String),
    /// The users or rules file could not be read or written.
    #[error("security storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// A server's users, rules and failed-attempt counts.
pub struct Auth {
    /// Users.
    pub users: UserStore,
    /// Access rules.
    pub acls: AclStore,
    /// Byte rates and connection limits.
    pub quotas: std::sync::Arc<QuotaStore>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("users", &self.users.names().len())
            .field("rules", &self.acls.list().len())
            .finish()
    }
}

impl Auth {
    /// Opens the users and rules kept in `dir`.
    pub fn open(dir: &Path) -> Result<Auth, AuthError> {
        Ok(Auth {
            users: UserStore::open(dir)?,
            acls: AclStore::open(dir)?,
            quotas: std::sync::Arc::new(QuotaStore::open(dir)?),
            failures: Mutex::default(),
        })
    }

    /// Checks `user`'s password (slow by design: run it off the async
    /// threads). Returns the principal.
    pub fn authenticate(
        &self,
        from: Option<IpAddr>,
        user: &str,
        password: &str,
    ) -> Result<String, AuthError> {
        if let Some(ip) = from {
            let mut failures = self.failures.lock();
            if let Some((count, since)) = failures.get(&ip).copied() {
                if since.elapsed() >= FAILURE_WINDOW {
                    failures.remove(&ip);
                } else if count >= MAX_FAILURES {
                    return Err(AuthError::RateLimited(ip));
                }
            }
        }
        if self.users.verify(user, password) {
            return Ok(user.to_string());
        }
        if let Some(ip) = from {
            let mut failures = self.failures.lock();
            let entry = failures.entry(ip).or_insert((0, Instant::now()));
            entry.0 += 1;
        }
        Err(AuthError::BadCredentials(user.to_string()))
    }

    /// True if `principal` may do `operation` on the resource of `kind`
    /// named `name`.
    pub fn allowed(
        &self,
        principal: &str,
        operation: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> bool {
        principal == ADMIN
            || is_broker(principal)
            || self.acls.allows(principal, operation, kind, name)
    }
}
