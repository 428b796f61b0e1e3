//! `spool users add|remove|list` and `spool acl add|remove|list`: offline
//! on a stopped broker's data directory (`--data`, e.g. the first admin
//! before the first start), or online through a broker (`--addr`, as an
//! admin).

use std::io::BufRead;
use std::path::PathBuf;

use spool::auth::{Auth, ResourceKind, Rule};
use spool::protocol::requests::{
    AddAclRequest, DeleteUserRequest, ListAclsRequest, ListUsersRequest, RemoveAclRequest,
    UpsertUserRequest, WireAcl,
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
                Where::Offline(auth) => auth.users.upsert(&name, &password).map_err(refused)?,
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
                Where::Offline(auth) => auth.users.remove(&name).map_err(refused)?,
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
                Where::Offline(auth) => auth.users.names(),
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
                Where::Offline(auth) => auth.acls.add(rule).map_err(refused)?,
                Where::Online(client) => client.call(&AddAclRequest { acl }).await?,
            }
            println!("rule added");
        }
        AclCommand::Remove(args) => {
            let (acl, rule, target) = args.rule()?;
            match at(target).await? {
                Where::Offline(auth) => auth.acls.remove(&rule).map_err(refused)?,
                Where::Online(client) => client.call(&RemoveAclRequest { acl }).await?,
            }
            println!("rule removed");
        }
        AclCommand::List { target, json } => {
            let acls = match at(target).await? {
                Where::Offline(auth) => auth.acls.list().iter().map(Rule::to_wire).collect(),
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
