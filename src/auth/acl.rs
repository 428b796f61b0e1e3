//! Access rules: a principal may do some operations on the resources of a
//! kind whose names match a pattern (`orders.*`: the prefix `orders.`;
//! `*`: all; otherwise the exact name). Deny by default.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{AuthError, Operation, ResourceKind};

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

    pub(super) fn same_target(&self, other: &Rule) -> bool {
        self.principal == other.principal
            && self.kind == other.kind
            && self.pattern == other.pattern
    }
}

/// Allows `rule`'s operations (merged into a rule for the same principal,
/// kind and pattern).
pub fn add(rules: &mut Vec<Rule>, rule: &Rule) -> Result<(), AuthError> {
    if rule.operations.is_empty() || rule.pattern.is_empty() || rule.principal.is_empty() {
        return Err(AuthError::Invalid(
            "a rule needs a principal, a pattern and at least one operation".into(),
        ));
    }
    if let Some(existing) = rules.iter_mut().find(|r| r.same_target(rule)) {
        existing.operations.extend(rule.operations.iter().copied());
        return Ok(());
    }
    if rules.len() >= MAX_RULES {
        return Err(AuthError::Invalid(format!(
            "{MAX_RULES} rules exist already"
        )));
    }
    rules.push(rule.clone());
    Ok(())
}

/// Takes `rule`'s operations away from the rule for the same principal,
/// kind and pattern (removing it when none is left).
pub fn remove(rules: &mut Vec<Rule>, rule: &Rule) -> Result<(), AuthError> {
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
}

/// True if one of `rules` allows it.
pub fn allows(
    rules: &[Rule],
    principal: &str,
    operation: Operation,
    kind: ResourceKind,
    name: &str,
) -> bool {
    rules
        .iter()
        .any(|r| r.operations.contains(&operation) && r.matches(principal, kind, name))
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
        use Operation::*;
        use ResourceKind::*;
        let mut rules = Vec::new();
        add(
            &mut rules,
            &rule("alice", Topic, "orders.*", &[Produce, Consume]),
        )
        .expect("add");
        add(&mut rules, &rule("*", Topic, "public", &[Consume])).expect("add");
        assert!(allows(&rules, "alice", Produce, Topic, "orders.eu"));
        assert!(!allows(&rules, "alice", Produce, Topic, "payments"));
        assert!(!allows(&rules, "alice", Delete, Topic, "orders.eu"));
        assert!(!allows(&rules, "alice", Consume, Group, "orders.eu"));
        assert!(allows(&rules, "bob", Consume, Topic, "public"));
        assert!(!allows(&rules, "bob", Consume, Topic, "public2"));
        // Removing one operation keeps the others.
        remove(&mut rules, &rule("alice", Topic, "orders.*", &[Produce])).expect("remove");
        assert!(!allows(&rules, "alice", Produce, Topic, "orders.eu"));
        assert!(allows(&rules, "alice", Consume, Topic, "orders.eu"));
        assert!(remove(&mut rules, &rule("carol", Topic, "x", &[Produce])).is_err());
        assert!(add(&mut rules, &rule("carol", Topic, "x", &[])).is_err());
    }
}
