//! `spool users add|remove|list`, `spool acl add|remove|list` and
//! `spool quotas set|remove|list`: offline
//! on a stopped broker's data directory (`--data`, e.g. the first admin
//! before the first start), or online through a broker (`--addr`, as an
//! admin).

use std::io::BufRead;
use std::path::PathBuf;

use spool::auth::{Auth, Quota, ResourceKind, Rule, SecurityChange};
use spool::protocol::requests::{
    AddAclRequest, DeleteUserRequest, ListAclsRequest, ListQuotasRequest, ListUsersRequest,
    RemoveAclRequest, RemoveQuotaRequest, SetQuotaRequest, UpsertUserRequest, WireAcl,
};

use crate::{Failure, DEFAULT_ADDR};

/// Where to apply a change.
#[derive(clap::Args)]
pub struct Target {
    /// Change a stopped broker's data directory directly.
    #[arg(long, conflicts_with = "addr")]
    data: Option<PathBuf>,
    /// Change it through a running broker (as an admin).
    #[arg(long, env = "SPOOL_ADDR")]
    addr: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user, or set a user's password; the password is read from
    /// standard input (never from the command line).
    #[command(
        after_help = "Examples:\n  echo \"$PW\" | spool users add admin --data ./spool-data\n  spool users add alice --addr 127.0.0.1:7070 < password.txt"
    )]
    Add {
        /// The user.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a user.
    Remove {
        /// The user.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List users.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// Which resources a rule is about.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct ResourceArgs {
    /// Topics: a name, a prefix ending in `*`, or `*`.
    #[arg(long)]
    topic: Option<String>,
    /// Consumer groups: a name, a prefix ending in `*`, or `*`.
    #[arg(long)]
    group: Option<String>,
    /// Locks: a name, a prefix ending in `*`, or `*`.
    #[arg(long)]
    lock: Option<String>,
    /// The cluster (or single broker) as a whole.
    #[arg(long)]
    cluster: bool,
}

/// A rule to add or remove, and where.
#[derive(clap::Args)]
pub struct RuleArgs {
    /// A user, or `*` for every authenticated principal.
    principal: String,
    /// Comma-separated operations.
    #[arg(long, value_delimiter = ',', required = true)]
    allow: Vec<String>,
    #[command(flatten)]
    resource: ResourceArgs,
    #[command(flatten)]
    target: Target,
}

impl RuleArgs {
    /// The rule, on the wire and checked, and where to apply it.
    fn rule(self) -> Result<(WireAcl, Rule, Target), Failure> {
        let (kind, pattern) = match self.resource {
            ResourceArgs { topic: Some(p), .. } => (ResourceKind::Topic, p),
            ResourceArgs { group: Some(p), .. } => (ResourceKind::Group, p),
            ResourceArgs { lock: Some(p), .. } => (ResourceKind::Lock, p),
            _ => (ResourceKind::Cluster, "*".to_string()),
        };
        let acl = WireAcl {
            principal: self.principal,
            resource_kind: kind.wire(),
            pattern,
            operations: self.allow,
        };
        // The broker checks it too; checked here, a typo is a usage error
        // before anything is sent.
        let rule = Rule::from_wire(&acl).map_err(|e| Failure::usage(e.to_string()))?;
        Ok((acl, rule, self.target))
    }
}

#[derive(clap::Subcommand)]
pub enum AclCommand {
    /// Allow a principal operations on resources.
    #[command(
        after_help = "Operations: produce, consume, create, delete, describe, admin, lock.\n\nExamples:\n  spool acl add alice --allow produce,consume --topic 'orders.*'\n  spool acl add alice --allow consume --group 'billing-*'\n  spool acl add '*' --allow describe --cluster"
    )]
    Add(RuleArgs),
    /// Take operations away from a principal's rule.
    Remove(RuleArgs),
    /// List the rules.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum QuotasCommand {
    /// Set a principal's quota (replacing the one it had); a principal over
    /// its rates is slowed down, not refused.
    #[command(
        after_help = "Rates are bytes per second, with an optional unit: 500k, 1M, 1MiB, 2G (k, M, G: powers of 1000; Ki, Mi, Gi: of 1024).\n\nExamples:\n  spool quotas set alice --produce 1MiB --fetch 5MiB --connections 10\n  spool quotas set '*' --connections 50"
    )]
    Set {
        /// A user, or `*` for everyone without a quota of their own.
        principal: String,
        /// Produced bytes per second [default: unlimited].
        #[arg(long, value_parser = parse_rate)]
        produce: Option<u64>,
        /// Fetched and delivered bytes per second [default: unlimited].
        #[arg(long, value_parser = parse_rate)]
        fetch: Option<u64>,
        /// Connections at once [default: unlimited].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        connections: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a principal's quota (it falls back to `*`'s, or none).
    Remove {
        /// The principal.
        principal: String,
        #[command(flatten)]
        target: Target,
    },
    /// List quotas.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A byte rate: a number with an optional unit (k, M, G in powers of 1000;
/// Ki, Mi, Gi in powers of 1024; a trailing `B` and `/s` are allowed).
fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_end_matches("/s").trim_end_matches('B');
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a positive byte rate"))
}

fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::io("reading the password from standard input", e))?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Failure::usage("no password on standard input"));
    }
    Ok(password)
}

fn offline(dir: &std::path::Path) -> Result<Auth, Failure> {
    Auth::open(dir).map_err(|e| Failure::refused(e.to_string()))
}

enum Where {
    Offline(Auth),
    Online(spool::client::Client),
}

async fn at(target: Target) -> Result<Where, Failure> {
    match target.data {
        Some(dir) => Ok(Where::Offline(offline(&dir)?)),
        None => Ok(Where::Online(
            crate::connect(target.addr.as_deref().unwrap_or(DEFAULT_ADDR)).await?,
        )),
    }
}

fn refused(e: impl std::fmt::Display) -> Failure {
    Failure::refused(e.to_string())
}

pub async fn run_users(command: UsersCommand) -> Result<(), Failure> {
    match command {
        UsersCommand::Add { name, target } => {
            let password = read_password()?;
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::new_user(&name, &password).map_err(refused)?)
                    .map_err(refused)?,
                Where::Online(client) => {
                    client
                        .call(&UpsertUserRequest {
                            name: name.clone(),
                            password,
                        })
                        .await?
                }
            }
            println!("user {name} saved");
        }
        UsersCommand::Remove { name, target } => {
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::DeleteUser(name.clone()))
                    .map_err(refused)?,
                Where::Online(client) => {
                    client
                        .call(&DeleteUserRequest { name: name.clone() })
                        .await?
                }
            }
            println!("user {name} removed");
        }
        UsersCommand::List { target } => {
            let names = match at(target).await? {
                Where::Offline(auth) => auth.user_names(),
                Where::Online(client) => client.call(&ListUsersRequest).await?.names,
            };
            for name in names {
                println!("{name}");
            }
        }
    }
    Ok(())
}

pub async fn run_acl(command: AclCommand) -> Result<(), Failure> {
    match command {
        AclCommand::Add(args) => {
            let (acl, rule, target) = args.rule()?;
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::AddRule(rule))
                    .map_err(refused)?,
                Where::Online(client) => client.call(&AddAclRequest { acl }).await?,
            }
            println!("rule added");
        }
        AclCommand::Remove(args) => {
            let (acl, rule, target) = args.rule()?;
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::RemoveRule(rule))
                    .map_err(refused)?,
                Where::Online(client) => client.call(&RemoveAclRequest { acl }).await?,
            }
            println!("rule removed");
        }
        AclCommand::List { target, json } => {
            let acls = match at(target).await? {
                Where::Offline(auth) => auth.data().rules.iter().map(Rule::to_wire).collect(),
                Where::Online(client) => client.call(&ListAclsRequest).await?.acls,
            };
            if json {
                let rules: Vec<serde_json::Value> = acls
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "principal": a.principal,
                            "resource": ResourceKind::from_wire(a.resource_kind).map(|k| k.name()),
                            "pattern": a.pattern,
                            "operations": a.operations,
                        })
                    })
                    .collect();
                return crate::print_json(&serde_json::Value::Array(rules));
            }
            for a in &acls {
                let kind = ResourceKind::from_wire(a.resource_kind).map_or("?", |k| k.name());
                println!(
                    "{:<20} {:<8} {:<32} {}",
                    a.principal,
                    kind,
                    a.pattern,
                    a.operations.join(",")
                );
            }
        }
    }
    Ok(())
}

pub async fn run_quotas(command: QuotasCommand) -> Result<(), Failure> {
    match command {
        QuotasCommand::Set {
            principal,
            produce,
            fetch,
            connections,
            target,
        } => {
            let quota = Quota {
                produce_bytes_per_sec: produce,
                fetch_bytes_per_sec: fetch,
                max_connections: connections,
            };
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::SetQuota {
                        principal: principal.clone(),
                        quota,
                    })
                    .map_err(refused)?,
                Where::Online(client) => {
                    client
                        .call(&SetQuotaRequest {
                            quota: quota.to_wire(&principal),
                        })
                        .await?
                }
            }
            println!("quota for {principal} saved");
        }
        QuotasCommand::Remove { principal, target } => {
            match at(target).await? {
                Where::Offline(auth) => auth
                    .change(SecurityChange::RemoveQuota(principal.clone()))
                    .map_err(refused)?,
                Where::Online(client) => {
                    client
                        .call(&RemoveQuotaRequest {
                            principal: principal.clone(),
                        })
                        .await?
                }
            }
            println!("quota for {principal} removed");
        }
        QuotasCommand::List { target, json } => {
            let quotas: Vec<(String, Quota)> = match at(target).await? {
                Where::Offline(auth) => auth.data().quotas.into_iter().collect(),
                Where::Online(client) => client
                    .call(&ListQuotasRequest)
                    .await?
                    .quotas
                    .iter()
                    .map(Quota::from_wire)
                    .collect(),
            };
            if json {
                let list: Vec<serde_json::Value> = quotas
                    .iter()
                    .map(|(principal, q)| {
                        serde_json::json!({
                            "principal": principal,
                            "produce_bytes_per_sec": q.produce_bytes_per_sec,
                            "fetch_bytes_per_sec": q.fetch_bytes_per_sec,
                            "max_connections": q.max_connections,
                        })
                    })
                    .collect();
                return crate::print_json(&serde_json::Value::Array(list));
            }
            let show = |n: Option<u64>| n.map_or("unlimited".to_string(), |n| format!("{n} B/s"));
            println!(
                "{:<20} {:>16} {:>16} {:>12}",
                "PRINCIPAL", "PRODUCE", "FETCH", "CONNECTIONS"
            );
            for (principal, q) in &quotas {
                println!(
                    "{:<20} {:>16} {:>16} {:>12}",
                    principal,
                    show(q.produce_bytes_per_sec),
                    show(q.fetch_bytes_per_sec),
                    q.max_connections
                        .map_or("unlimited".to_string(), |n| n.to_string())
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_take_decimal_and_binary_units() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("1MiB"), Ok(1 << 20));
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("2G"), Ok(2_000_000_000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("1 parsec").is_err());
        assert!(parse_rate("99999999999999999999G").is_err());
    }
}
