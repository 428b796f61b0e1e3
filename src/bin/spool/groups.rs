//! `spool groups list|describe|pending|reset|delete`.

use spool::protocol::requests::{
    DeleteGroupRequest, DescribeGroupRequest, ListGroupsRequest, PendingMessagesRequest,
    ResetGroupRequest, WireGroup,
};
use spool::protocol::{WireGroupMode, WireResetTarget};

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups with their lag.
    #[command(after_help = "Examples:\n  spool groups list\n  spool groups list --json")]
    List {
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON (an array of groups, as describe --json prints one).
        #[arg(long)]
        json: bool,
    },
    /// Show a group: settings, members, and per partition its position,
    /// lag, in-flight count and dead letters.
    #[command(
        after_help = "Examples:\n  spool groups describe workers\n  spool groups describe workers --json"
    )]
    Describe {
        /// Group name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A queue group's delivered, unsettled messages: who holds each, how
    /// often it was delivered, and when its deadline (or redelivery) is.
    #[command(
        after_help = "Examples:\n  spool groups pending workers\n  spool groups pending workers --partition 2 --max 20 --json"
    )]
    Pending {
        /// Group name.
        name: String,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        max: u32,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a group with no members (its offsets or ack state; its
    /// dead-letter topic stays).
    #[command(after_help = "Examples:\n  spool groups delete workers")]
    Delete {
        /// Group name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Move a group (with no members) to earliest, latest or an offset.
    #[command(
        after_help = "Examples:\n  spool groups reset workers --to earliest\n  spool groups reset workers --to 1500"
    )]
    Reset {
        /// Group name.
        name: String,
        /// earliest, latest or an offset.
        #[arg(long)]
        to: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
}

pub async fn run(command: GroupsCommand) -> Result<(), Failure> {
    match command {
        GroupsCommand::List { addr, json } => {
            let client = crate::connect(&addr).await?;
            let groups = client.call(&ListGroupsRequest).await?.groups;
            if json {
                let all = groups.iter().map(group_json).collect();
                return crate::print_json(&serde_json::Value::Array(all));
            }
            if groups.is_empty() {
                println!("no groups");
            }
            for g in groups {
                let lag = lag(&g);
                println!(
                    "{}\ttopic={}\tmode={}\tmembers={}\tlag={lag}",
                    g.name,
                    g.topic,
                    mode(g.mode),
                    g.members
                );
            }
        }
        GroupsCommand::Describe { name, addr, json } => {
            let client = crate::connect(&addr).await?;
            let group = client.call(&DescribeGroupRequest { group: name }).await?;
            if json {
                return crate::print_json(&group_json(&group));
            }
            print_group(&group);
        }
        GroupsCommand::Reset { name, to, addr } => {
            let target = match to.as_str() {
                "earliest" => WireResetTarget::Earliest,
                "latest" => WireResetTarget::Latest,
                other => WireResetTarget::Offset(other.parse().map_err(|_| {
                    Failure::usage(format!(
                        "--to takes earliest, latest or an offset, not {other:?}"
                    ))
                })?),
            };
            let client = crate::connect(&addr).await?;
            let request = ResetGroupRequest {
                group: name.clone(),
                to: target,
                partition: None,
            };
            client.call_group(&name, &request).await?;
            println!("reset group {name} to {to}");
        }
        GroupsCommand::Delete { name, addr } => {
            let client = crate::connect(&addr).await?;
            let request = DeleteGroupRequest {
                group: name.clone(),
            };
            client.call_group(&name, &request).await?;
            println!("deleted group {name}");
        }
        GroupsCommand::Pending {
            name,
            partition,
            max,
            addr,
            json,
        } => {
            let client = crate::connect(&addr).await?;
            let request = PendingMessagesRequest {
                group: name.clone(),
                partition: partition.map(u64::from),
                max,
            };
            let messages = client.call_group(&name, &request).await?.messages;
            if json {
                let all = messages
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "partition": m.partition,
                            "offset": m.offset,
                            "deliveries": m.deliveries,
                            "member": (m.member != 0).then_some(m.member),
                            "state": if m.member != 0 { "in_flight" } else { "waiting" },
                            "due_in_ms": m.due_in_ms,
                        })
                    })
                    .collect();
                return crate::print_json(&serde_json::Value::Array(all));
            }
            if messages.is_empty() {
                println!("no pending messages in group {name}");
            }
            for m in messages {
                let state = if m.member != 0 {
                    format!("member={}\tdeadline_in_ms={}", m.member, m.due_in_ms)
                } else {
                    format!("waiting\tredelivery_in_ms={}", m.due_in_ms)
                };
                println!(
                    "{}\toffset={}\tdeliveries={}\t{state}",
                    m.partition, m.offset, m.deliveries
                );
            }
        }
    }
    Ok(())
}

fn mode(m: WireGroupMode) -> &'static str {
    match m {
        WireGroupMode::Stream => "stream",
        WireGroupMode::Queue => "queue",
    }
}

/// Messages not yet consumed (stream) or settled (queue), over all
/// partitions.
fn lag(g: &WireGroup) -> u64 {
    g.partitions
        .iter()
        .map(|p| p.end.saturating_sub(p.position))
        .sum()
}

/// A group as JSON: what `describe` prints, field for field.
fn group_json(g: &WireGroup) -> serde_json::Value {
    let partitions: Vec<_> = g
        .partitions
        .iter()
        .map(|p| {
            serde_json::json!({
                "partition": p.partition,
                "position": p.position,
                "end": p.end,
                "lag": p.end.saturating_sub(p.position),
                "in_flight": p.in_flight,
                "pending": p.pending,
                "dead_letters": p.dead_letters,
            })
        })
        .collect();
    let mut o = serde_json::json!({
        "name": g.name,
        "topic": g.topic,
        "mode": mode(g.mode),
        "members": g.members,
        "lag": lag(g),
        "redeliveries": g.redeliveries,
        "partitions": partitions,
    });
    if g.mode == WireGroupMode::Queue {
        o["ack_wait_ms"] = g.ack_wait_ms.into();
        o["max_deliveries"] = g.max_deliveries.into();
        o["max_in_flight"] = g.max_in_flight.into();
        o["dead_letter_topic"] = format!("{}.dlq", g.name).into();
    }
    o
}

fn print_group(g: &WireGroup) {
    let dead: u64 = g.partitions.iter().map(|p| p.dead_letters).sum();
    let in_flight: u32 = g.partitions.iter().map(|p| p.in_flight).sum();
    let lag = lag(g);
    println!(
        "group {}\n  topic: {}\n  mode: {}",
        g.name,
        g.topic,
        mode(g.mode)
    );
    if g.mode == WireGroupMode::Queue {
        println!(
            "  ack_wait_ms: {}\n  max_deliveries: {}\n  max_in_flight: {}\n  dead_letter_topic: {}.dlq",
            g.ack_wait_ms, g.max_deliveries, g.max_in_flight, g.name
        );
    }
    println!(
        "  members: {}\n  lag: {lag}\n  in_flight: {in_flight}\n  redeliveries: {}\n  dead_letters: {dead}\n  partitions:",
        g.members, g.redeliveries
    );
    for p in &g.partitions {
        println!(
            "    {}\tposition={}\tend={}\tlag={}\tin_flight={}\tpending={}\tdead_letters={}",
            p.partition,
            p.position,
            p.end,
            p.end.saturating_sub(p.position),
            p.in_flight,
            p.pending,
            p.dead_letters
        );
    }
}
