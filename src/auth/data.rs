//! What a broker's security knows (users and their password hashes,
//! access rules, quotas) and the changes to it. Pure and deterministic: a
//! single broker applies a change and saves its files; a cluster commits
//! the change through Raft and every broker applies it to the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::acl::{self, Rule};
use super::quotas::{Quota, DEFAULT_PRINCIPAL, MAX_QUOTAS};
use super::users;
use super::AuthError;

/// Users, rules and quotas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityData {
    /// User name to salted argon2id hash (a PHC string).
    pub users: BTreeMap<String, String>,
    /// Access rules.
    pub rules: Vec<Rule>,
    /// Quotas by principal (`*`: everyone without one).
    pub quotas: BTreeMap<String, Quota>,
    /// Set by the first change (a cluster's state starts unset, and the
    /// first broker with users of its own seeds it).
    pub initialized: bool,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityChange {
    /// Creates a user or sets its password (already hashed: applying a
    /// change is cheap and deterministic).
    UpsertUser {
        /// The user.
        name: String,
        /// Its salted argon2id hash.
        hash: String,
    },
    /// Removes a user.
    DeleteUser(String),
    /// Adds a rule's operations.
    AddRule(Rule),
    /// Takes a rule's operations away.
    RemoveRule(Rule),
    /// Sets a principal's quota.
    SetQuota {
        /// The principal.
        principal: String,
        /// Its quota.
        quota: Quota,
    },
    /// Removes a principal's quota.
    RemoveQuota(String),
    /// Takes `data` as the whole state if nothing was set yet (a cluster's
    /// first broker with users seeds it); otherwise does nothing.
    Seed(SecurityData),
}

impl SecurityChange {
    /// Creates `name` with `password` (checked and hashed: slow).
    pub fn new_user(name: &str, password: &str) -> Result<SecurityChange, AuthError> {
        users::check_name(name)?;
        Ok(SecurityChange::UpsertUser {
            name: name.to_string(),
            hash: users::hash_password(password)?,
        })
    }
}

impl SecurityData {
    /// True if there is nothing: no user, rule or quota.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.rules.is_empty() && self.quotas.is_empty()
    }

    /// Applies `change`, or says why not (and changes nothing).
    pub fn apply(&mut self, change: &SecurityChange) -> Result<(), AuthError> {
        match change {
            SecurityChange::UpsertUser { name, hash } => {
                users::check_name(name)?;
                users::check_hash(hash)?;
                self.users.insert(name.clone(), hash.clone());
            }
            SecurityChange::DeleteUser(name) => {
                if self.users.remove(name).is_none() {
                    return Err(AuthError::NotFound(format!("no user {name:?}")));
                }
            }
            SecurityChange::AddRule(rule) => acl::add(&mut self.rules, rule)?,
            SecurityChange::RemoveRule(rule) => acl::remove(&mut self.rules, rule)?,
            SecurityChange::SetQuota { principal, quota } => {
                if principal != DEFAULT_PRINCIPAL {
                    users::check_name(principal)?;
                }
                if !self.quotas.contains_key(principal) && self.quotas.len() >= MAX_QUOTAS {
                    return Err(AuthError::Invalid(format!(
                        "{MAX_QUOTAS} quotas exist already"
                    )));
                }
                self.quotas.insert(principal.clone(), *quota);
            }
            SecurityChange::RemoveQuota(principal) => {
                if self.quotas.remove(principal).is_none() {
                    return Err(AuthError::NotFound(format!("no quota for {principal:?}")));
                }
            }
            SecurityChange::Seed(data) => {
                if self.initialized {
                    return Ok(());
                }
                *self = data.clone();
            }
        }
        self.initialized = true;
        Ok(())
    }

    /// True if `change` shows in this state (applied, or overtaken by
    /// nothing that undid it): what a broker waits for before answering.
    pub fn reflects(&self, change: &SecurityChange) -> bool {
        match change {
            SecurityChange::UpsertUser { name, hash } => self.users.get(name) == Some(hash),
            SecurityChange::DeleteUser(name) => !self.users.contains_key(name),
            SecurityChange::AddRule(rule) => self
                .rules
                .iter()
                .any(|r| r.same_target(rule) && rule.operations.is_subset(&r.operations)),
            SecurityChange::RemoveRule(rule) => !self
                .rules
                .iter()
                .any(|r| r.same_target(rule) && !r.operations.is_disjoint(&rule.operations)),
            SecurityChange::SetQuota { principal, quota } => {
                self.quotas.get(principal) == Some(quota)
            }
            SecurityChange::RemoveQuota(principal) => !self.quotas.contains_key(principal),
            SecurityChange::Seed(_) => self.initialized,
        }
    }

    /// The quota that applies to `principal` (its own, else `*`'s).
    pub fn quota_of(&self, principal: &str) -> Quota {
        self.quotas
            .get(principal)
            .or_else(|| self.quotas.get(DEFAULT_PRINCIPAL))
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_takes_only_an_unset_state_and_refused_changes_change_nothing() {
        let mut data = SecurityData::default();
        let mut seed = SecurityData::default();
        seed.apply(&SecurityChange::new_user("admin", "admin-password").expect("user"))
            .expect("apply");
        data.apply(&SecurityChange::Seed(seed.clone()))
            .expect("seed");
        assert_eq!(data.users, seed.users);
        assert!(data.initialized);

        // Emptied later, it stays set: a second seed does not bring the
        // removed user back.
        data.apply(&SecurityChange::DeleteUser("admin".into()))
            .expect("delete");
        data.apply(&SecurityChange::Seed(seed)).expect("no-op");
        assert!(data.users.is_empty());

        let before = data.clone();
        assert!(data
            .apply(&SecurityChange::UpsertUser {
                name: "bob".into(),
                hash: "not a hash".into(),
            })
            .is_err());
        assert!(data
            .apply(&SecurityChange::RemoveQuota("nobody".into()))
            .is_err());
        assert_eq!(data, before);
    }
}
