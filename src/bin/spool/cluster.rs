//! `spool cluster status | add | remove`.

use std::collections::BTreeMap;

use spool::protocol::requests::{MetadataRequest, MetadataResponse};

use crate::{Failure, DEFAULT_ADDR};

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Add a broker: start it first (`spool serve --node-id N --peers
    /// <voters> ...`; it joins by heartbeat, and placement moves its share
    /// of the partitions to it). This waits until it is a live member, and
    /// with --voter makes it a voter of the control plane (e.g. to grow
    /// from 3 voters to 5).
    #[command(
        after_help = "Examples:\n  spool cluster add 4 --addr 127.0.0.1:7070\n  spool cluster add 5 --voter --addr 127.0.0.1:7070,127.0.0.1:7071"
    )]
    Add {
        /// The broker's id.
        id: u64,
        /// Also make it a voter.
        #[arg(long)]
        voter: bool,
        /// How long to wait for it to join, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        /// A broker, or a comma-separated list of them.
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Remove a broker: its partitions move to the others first (each log
    /// is copied before it switches), then it leaves the cluster (and the
    /// control plane's voters, if it was one).
    #[command(
        after_help = "Examples:\n  spool cluster remove 3\n  spool cluster remove 3 --force   # the broker is gone for good: give up its data"
    )]
    Remove {
        /// The broker's id.
        id: u64,
        /// Remove it now and give up the data it holds (for a broker that
        /// is gone for good).
        #[arg(long)]
        force: bool,
        /// A broker, or a comma-separated list of them.
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
    /// Brokers (alive or expired), the control plane's leader, the
    /// placement epoch, how many partitions each broker leads, and each
    /// replicated partition's leader, leader epoch, in-sync replicas and
    /// followers' lag.
    #[command(
        after_help = "Examples:\n  spool cluster status --addr 127.0.0.1:7070,127.0.0.1:7071"
    )]
    Status {
        /// A broker, or a comma-separated list of them.
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
    },
}

pub async fn run(command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::Remove { id, force, addr } => {
            let client = crate::connect(&addr).await?;
            if force {
                eprintln!("removing broker {id} by force: the data it holds is given up");
            }
            client
                .call(&spool::protocol::requests::RemoveBrokerRequest { id, force })
                .await?;
            println!("removed broker {id}");
        }
        ClusterCommand::Add {
            id,
            voter,
            wait,
            addr,
        } => {
            let client = crate::connect(&addr).await?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            loop {
                let m = client.call(&MetadataRequest).await?;
                if m.brokers.iter().all(|b| b.id == 0) {
                    return Err(Failure::refused(
                        "this server is a single node, not a cluster".to_string(),
                    ));
                }
                if let Some(b) = m.brokers.iter().find(|b| b.id == id && b.alive) {
                    println!("broker {id} is a live member at {}", b.addr);
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(Failure::refused(format!(
                        "broker {id} has not joined within {wait} s: start it with \
                         `spool serve --node-id {id} --peers <voters> ...`"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            if voter {
                client
                    .call(&spool::protocol::requests::AddVoterRequest { id })
                    .await?;
                println!("broker {id} is a voter");
            }
        }
        ClusterCommand::Status { addr } => {
            let client = crate::connect(&addr).await?;
            let mut m = client.call(&MetadataRequest).await?;
            // Lease ages are known only to the control plane's leader: ask
            // it, if this broker is not it.
            let controller_addr = m
                .controller
                .and_then(|c| m.brokers.iter().find(|b| b.id == c))
                .map(|b| b.addr.clone());
            if m.brokers.iter().all(|b| b.lease_age_ms.is_none()) {
                if let Some(addr) = controller_addr {
                    if let Ok(controller) = crate::connect(&addr).await {
                        if let Ok(theirs) = controller.call(&MetadataRequest).await {
                            m = theirs;
                        }
                    }
                }
            }
            // Followers' lag is known only to each partition's leader.
            let mut views = Vec::new();
            for b in m.brokers.iter().filter(|b| b.alive) {
                if let Ok(c) = crate::connect(&b.addr).await {
                    if let Ok(view) = c.call(&MetadataRequest).await {
                        views.push(view);
                    }
                }
            }
            merge_lags(&mut m, &views);
            print!("{}", status(&m));
        }
    }
    Ok(())
}

/// The status report, as printed.
fn status(m: &MetadataResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if m.brokers.iter().all(|b| b.id == 0) {
        let _ = writeln!(
            out,
            "single node (no cluster flags): {}",
            m.brokers.first().map_or("", |b| b.addr.as_str())
        );
        return out;
    }
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unavailable = 0usize;
    for t in &m.topics {
        for p in &t.partitions {
            match p.leader {
                Some(l) => *led.entry(l).or_default() += 1,
                None => unavailable += 1,
            }
        }
    }
    let controller = m.controller.map_or_else(
        || "none (election under way)".to_string(),
        |c| c.to_string(),
    );
    let _ = writeln!(
        out,
        "controller: broker {controller} (Raft term {})",
        m.term
    );
    let _ = writeln!(out, "placement epoch: {}", m.epoch);
    let _ = writeln!(out, "brokers:");
    for b in &m.brokers {
        let heard = b
            .lease_age_ms
            .map_or_else(|| "heard ?".to_string(), |ms| format!("heard {ms} ms ago"));
        let _ = writeln!(
            out,
            "  {}\t{}\t{}\t{}\t{heard}\tleads {} partitions",
            b.id,
            b.addr,
            if b.alive { "alive" } else { "EXPIRED" },
            if b.voter { "voter" } else { "member" },
            led.get(&b.id).copied().unwrap_or(0)
        );
    }
    if unavailable > 0 {
        let _ = writeln!(out, "unavailable partitions: {unavailable}");
    }
    let replicated: Vec<_> = m
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.as_str(), p)))
        .filter(|(_, p)| p.replicas.len() > 1)
        .collect();
    if replicated.is_empty() {
        return out;
    }
    let under = replicated
        .iter()
        .filter(|(_, p)| p.replicas.iter().any(|r| !r.in_sync))
        .count();
    let _ = writeln!(
        out,
        "replicated partitions: {} ({under} under-replicated)",
        replicated.len()
    );
    for (topic, p) in replicated {
        let ids = |f: &dyn Fn(&spool::protocol::requests::WireReplica) -> bool| {
            p.replicas
                .iter()
                .filter(|r| f(r))
                .map(|r| r.broker.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let lags = p
            .replicas
            .iter()
            .filter(|r| Some(r.broker) != p.leader)
            .map(|r| {
                let lag = r.lag.map_or_else(|| "?".to_string(), |l| l.to_string());
                format!("{}:{lag}", r.broker)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "  {topic}/{}	leader {}	epoch {}	replicas {}	in-sync {}	lag {lags}",
            p.partition,
            p.leader
                .map_or_else(|| "NONE".to_string(), |l| l.to_string()),
            p.leader_epoch,
            ids(&|_| true),
            ids(&|r| r.in_sync),
        );
    }
    out
}

/// Copies each partition's replica list (with the followers' lag) from
/// the view of the broker that leads it: only a leader knows its
/// followers' positions.
fn merge_lags(m: &mut MetadataResponse, views: &[MetadataResponse]) {
    for t in &mut m.topics {
        for p in &mut t.partitions {
            let at_leader = views
                .iter()
                .flat_map(|v| v.topics.iter().filter(|x| x.name == t.name))
                .flat_map(|x| x.partitions.iter())
                .find(|x| {
                    x.partition == p.partition
                        && x.leader == p.leader
                        && x.leader_epoch == p.leader_epoch
                        && x.replicas.iter().any(|r| r.lag.is_some())
                });
            if let Some(found) = at_leader {
                p.replicas = found.replicas.clone();
            }
        }
    }
}
