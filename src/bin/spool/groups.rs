//! `spool groups list|describe|reset`.

use spool::protocol::requests::{
    DescribeGroupRequest, ListGroupsRequest, ResetGroupRequest, WireGroup,
};
use spool::protocol::{WireGroupMode, WireResetTarget};

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups with their lag.
    List {
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Show a group: settings, members, and per partition its position,
    /// lag, in-flight count and dead letters.
    Describe {
        /// Group name.
        name: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Move a group (with no members) to earliest, latest or an offset.
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
        GroupsCommand::List { addr } => {
            let client = crate::connect(&addr).await?;
            let groups = client.call(&ListGroupsRequest).await?.groups;
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
        GroupsCommand::Describe { name, addr } => {
            let client = crate::connect(&addr).await?;
            print_group(&client.call(&DescribeGroupRequest { group: name }).await?);
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
            };
            client.call(&request).await?;
            println!("reset group {name} to {to}");
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
