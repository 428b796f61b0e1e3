//! Access rules: a principal may do some operations on the resources of a
//! kind whose names match a pattern (`orders.*`: the prefix `orders.`;
//! `*`: all; otherwise the exact name). Deny by default. `<data>/acls`,
//! replaced atomically and synced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::{AuthError, Operation, ResourceKind};
use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

const KIND: MetaKind = MetaKind {
    magic: *b"SPAC",
    version: 1,
};
/// The file, in the data directory.
pub const FILE: &str = "acls";
/// Most rules.
pub const MAX_RULES: usize = 10_000;

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// A user, or `*` for every authenticated principal.
    pub principal: String,
    /// What kind of resource.
    pub kind: ResourceKind,
    /// Name, prefix (`name*`) or `*`.
    pub pattern: String,
    /// What is allowed.
    pub operations: BTreeSet<Operation>,
}

impl Rule {
    /// The rule a wire rule describes.
    pub fn from_wire(acl: &spool_protocol::requests::WireAcl) -> Result<Rule, AuthError> {
        let kind = ResourceKind::from_wire(acl.resource_kind)
            .ok_or_else(|| AuthError::Invalid("unknown resource kind".into()))?;
        let operations = acl
            .operations
            .iter()
            .map(|o| {
                Operation::parse(o).ok_or_else(|| {
                    AuthError::Invalid(format!(
                        "unknown operation {o:?} (produce, consume, create, delete, describe, admin, lock)"
                    ))
                })
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        Ok(Rule {
            principal: acl.principal.clone(),
            kind,
            pattern: acl.pattern.clone(),
            operations,
        })
    }

    /// The rule on the wire.
    pub fn to_wire(&self) -> spool_protocol::requests::WireAcl {
        spool_protocol::requests::WireAcl {
            principal: self.principal.clone(),
            resource_kind: self.kind.wire(),
            pattern: self.pattern.clone(),
            operations: self
                .operations
                .iter()
                .map(|o| o.name().to_string())
                .collect(),
        }
    }

    fn matches(&self, principal: &str, kind: ResourceKind, name: &str) -> bool {
        (self.principal == principal || self.principal == "*")
            && self.kind == kind
            && match self.pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => self.pattern == name,
            }
    }

    fn same_target(&self, other: &Rule) -> bool {
        self.principal == other.principal
            && self.kind == other.kind
            && self.pattern == other.pattern
    }
}

/// The rules.
pub struct AclStore {
    path: PathBuf,
    rules: RwLock<Vec<Rule>>,
}

impl AclStore {
    /// Opens the rules kept in `dir`.
    pub fn open(dir: &Path) -> Result<AclStore, AuthError> {
        let path = dir.join(FILE);
        let rules = meta_file::read(&path, KIND)?.unwrap_or_default();
        Ok(AclStore {
            path,
            rules: RwLock::new(rules),
        })
    }

    fn replace(
        &self,
        change: impl FnOnce(&mut Vec<Rule>) -> Result<(), AuthError>,
    ) -> Result<(), AuthError> {
        let mut rules = self.rules.write();
        let mut next = rules.clone();
        change(&mut next)?;
        meta_file::write(&self.path, KIND, &next, Durability::Synced)?;
        *rules = next;
        Ok(())
    }

    /// Allows `rule`'s operations (merged into a rule for the same
    /// principal, kind and pattern).
    pub fn add(&self, rule: Rule) -> Result<(), AuthError> {
        if rule.operations.is_empty() || rule.pattern.is_empty() || rule.principal.is_empty() {
            return Err(AuthError::Invalid(
                "a rule needs a principal, a pattern and at least one operation".into(),
            ));
        }
        self.replace(|rules| {
            if let Some(existing) = rules.iter_mut().find(|r| r.same_target(&rule)) {
                existing.operations.extend(rule.operations);
                return Ok(());
            }
            if rules.len() >= MAX_RULES {
                return Err(AuthError::Invalid(format!(
                    "{MAX_RULES} rules exist already"
                )));
            }
            rules.push(rule);
            Ok(())
        })
    }

    /// Takes `rule`'s operations away from the rule for the same
    /// principal, kind and pattern (removing it when none is left).
    pub fn remove(&self, rule: &Rule) -> Result<(), AuthError> {
        self.replace(|rules| {
            let Some(at) = rules.iter().position(|r| r.same_target(rule)) else {
                return Err(AuthError::NotFound(format!(
                    "no rule for {} on {} {:?}",
                    rule.principal,
                    rule.kind.name(),
                    rule.pattern
                )));
            };
            let existing = &mut rules[at];
            existing.operations.retain(|o| !rule.operations.contains(o));
            if existing.operations.is_empty() {
                rules.remove(at);
            }
            Ok(())
        })
    }

    /// Every rule.
    pub fn list(&self) -> Vec<Rule> {
        self.rules.read().clone()
    }

    /// True if some rule allows it.
    pub fn allows(
        &self,
        principal: &str,
        operation: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> bool {
        self.rules
            .read()
            .iter()
            .any(|r| r.operations.contains(&operation) && r.matches(principal, kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(principal: &str, kind: ResourceKind, pattern: &str, ops: &[Operation]) -> Rule {
        Rule {
            principal: principal.into(),
            kind,
            pattern: pattern.into(),
            operations: ops.iter().copied().collect(),
        }
    }

    #[test]
    fn prefixes_exact_names_and_deny_by_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acls = AclStore::open(dir.path()).expect("open");
        use Operation::*;
        use ResourceKind::*;
        acls.add(rule("alice", Topic, "orders.*", &[Produce, Consume]))
            .expect("add");
        acls.add(rule("*", Topic, "public", &[Consume]))
            .expect("add");
        assert!(acls.allows("alice", Produce, Topic, "orders.eu"));
        assert!(!acls.allows("alice", Produce, Topic, "payments"));
        assert!(!acls.allows("alice", Delete, Topic, "orders.eu"));
        assert!(!acls.allows("alice", Consume, Group, "orders.eu"));
        assert!(acls.allows("bob", Consume, Topic, "public"));
        assert!(!acls.allows("bob", Consume, Topic, "public2"));
        // Removing one operation keeps the others; the rules persist.
        acls.remove(&rule("alice", Topic, "orders.*", &[Produce]))
            .expect("remove");
        let acls = AclStore::open(dir.path()).expect("reopen");
        assert!(!acls.allows("alice", Produce, Topic, "orders.eu"));
        assert!(acls.allows("alice", Consume, Topic, "orders.eu"));
        assert!(acls.remove(&rule("carol", Topic, "x", &[Produce])).is_err());
    }
}
