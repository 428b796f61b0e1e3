//! Authentication and authorization for the server (the embedded broker
//! has none: the application is its own principal).
//!
//! - [`users`]: user names and their salted argon2id password hashes.
//! - [`acl`]: access rules (principal, operations, resource pattern); deny
//!   by default, the user `admin` may do everything.
//! - [`data`]: users, rules and quotas together, and the changes to them
//!   (applied by a single broker, or committed through Raft in a cluster).
//! - [`required`]: what each request kind needs, decided for every kind in
//!   one exhaustive match.
//! - [`quotas`]: byte rates and connection limits per principal, enforced
//!   by slowing down.

/// TLS, users, access rules and the threat model (`docs/security.md`).
pub mod guide {
    #![doc = include_str!("../../docs/security.md")]
}
pub mod acl;
pub mod data;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod quotas;
pub mod required;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

pub use acl::Rule;
pub use data::{SecurityChange, SecurityData};
pub use quotas::{ConnectionQuota, Direction, Quota};

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

/// A server's users, rules and quotas, the meters of the principals
/// connected now, and failed-attempt counts.
///
/// A single broker changes them itself ([`Auth::change`]) and keeps them
/// in `<data>/users`, `<data>/acls` and `<data>/quotas` (each replaced
/// atomically and synced). In a cluster they live in the Raft state; each
/// broker takes every committed state ([`Auth::replace`]) and keeps the
/// same files as a copy.
pub struct Auth {
    dir: PathBuf,
    data: RwLock<SecurityData>,
    meters: quotas::Meters,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// A hash to verify against for unknown users, so that the time taken
    /// does not say whether a user exists.
    decoy: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let data = self.data.read();
        f.debug_struct("Auth")
            .field("users", &data.users.len())
            .field("rules", &data.rules.len())
            .field("quotas", &data.quotas.len())
            .finish()
    }
}

const USERS: MetaKind = MetaKind {
    magic: *b"SPUS",
    version: 1,
};
const RULES: MetaKind = MetaKind {
    magic: *b"SPAC",
    version: 1,
};
const QUOTAS: MetaKind = MetaKind {
    magic: *b"SPQU",
    version: 1,
};

impl Auth {
    /// Opens the users, rules and quotas kept in `dir`.
    pub fn open(dir: &Path) -> Result<Auth, AuthError> {
        let users: std::collections::BTreeMap<String, String> =
            meta_file::read(&dir.join(users::FILE), USERS)?.unwrap_or_default();
        let rules: Vec<Rule> = meta_file::read(&dir.join(acl::FILE), RULES)?.unwrap_or_default();
        let quotas: std::collections::BTreeMap<String, Quota> =
            meta_file::read(&dir.join(quotas::FILE), QUOTAS)?.unwrap_or_default();
        let data = SecurityData {
            initialized: !(users.is_empty() && rules.is_empty() && quotas.is_empty()),
            users,
            rules,
            quotas,
        };
        Ok(Auth {
            dir: dir.to_path_buf(),
            data: RwLock::new(data),
            meters: quotas::Meters::default(),
            failures: Mutex::default(),
            decoy: users::hash_password("not a password of anyone")?,
        })
    }

    /// Writes the parts of `next` that differ from `current`.
    fn save(&self, current: &SecurityData, next: &SecurityData) -> Result<(), AuthError> {
        if current.users != next.users {
            meta_file::write(
                &self.dir.join(users::FILE),
                USERS,
                &next.users,
                Durability::Synced,
            )?;
        }
        if current.rules != next.rules {
            meta_file::write(
                &self.dir.join(acl::FILE),
                RULES,
                &next.rules,
                Durability::Synced,
            )?;
        }
        if current.quotas != next.quotas {
            meta_file::write(
                &self.dir.join(quotas::FILE),
                QUOTAS,
                &next.quotas,
                Durability::Synced,
            )?;
        }
        Ok(())
    }

    /// Applies `change` and saves it (a single broker, or offline).
    pub fn change(&self, change: SecurityChange) -> Result<(), AuthError> {
        let mut data = self.data.write();
        let mut next = data.clone();
        next.apply(&change)?;
        self.save(&data, &next)?;
        *data = next;
        Ok(())
    }

    /// Takes `next` whole (a cluster's committed state) and saves it.
    pub fn replace(&self, next: &SecurityData) -> Result<(), AuthError> {
        // Called for every committed cluster state, which mostly leaves
        // security alone: readers (every request's access check) are not
        // held up for that.
        if *self.data.read() == *next {
            return Ok(());
        }
        let mut data = self.data.write();
        if *data == *next {
            return Ok(());
        }
        self.save(&data, next)?;
        *data = next.clone();
        Ok(())
    }

    /// Everything, as it stands.
    pub fn data(&self) -> SecurityData {
        self.data.read().clone()
    }

    /// The users' names.
    pub fn user_names(&self) -> Vec<String> {
        self.data.read().users.keys().cloned().collect()
    }

    /// The quota that applies to `principal` now.
    pub fn quota_of(&self, principal: &str) -> Quota {
        self.data.read().quota_of(principal)
    }

    /// Counts a new connection of `principal`: its share of the principal's
    /// meters, or an error when the principal holds as many connections as
    /// its quota allows.
    pub fn connect(self: &Arc<Self>, principal: &str) -> Result<ConnectionQuota, AuthError> {
        let limit = self.quota_of(principal).max_connections;
        let meter = self.meters.join(principal, limit)?;
        Ok(ConnectionQuota {
            auth: self.clone(),
            principal: principal.to_string(),
            meter,
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
        let stored = self.data.read().users.get(user).cloned();
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy.clone());
        if users::verify_against(&hash, password) && known {
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
            || acl::allows(&self.data.read().rules, principal, operation, kind, name)
    }
}
