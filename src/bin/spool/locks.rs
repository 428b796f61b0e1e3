//! `spool lock NAME -- COMMAND...` and `spool locks list`.

use std::time::Duration;

use spool::client::LockOptions;

use crate::{Failure, DEFAULT_ADDR};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 2m)"))
}

/// Runs a command while holding a lock.
#[derive(clap::Args)]
#[command(
    after_help = "The command gets the grant's fencing token in SPOOL_LOCK_TOKEN (and the \
lock's name in SPOOL_LOCK_NAME); pass it with every write to what the lock protects. If the lock \
is lost (the session could not be kept alive) the command gets SIGTERM, then SIGKILL 10 s later.\n\n\
Exit status: the command's (128+N if a signal N ended it); 1 if the lock was lost or not \
granted within --wait; 3 if no broker answers.\n\n\
Examples:\n  spool lock nightly-report -- ./report.sh\n  spool lock deploy --ttl 30s --wait 1m -- make deploy"
)]
pub struct LockArgs {
    /// The lock's name.
    name: String,
    /// The session's TTL: how long the lock outlives this process if it
    /// stops keeping it alive.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// Give up if not granted within this long (default: wait until
    /// granted).
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum LocksCommand {
    /// Locks with their holders, tokens, expiry and waiters.
    #[command(
        after_help = "Examples:\n  spool locks list\n  spool locks list --prefix jobs/ --json"
    )]
    List {
        /// Only locks whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, env = "SPOOL_ADDR", default_value = DEFAULT_ADDR)]
        addr: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_lock(args: LockArgs) -> Result<(), Failure> {
    let client = crate::connect(&args.addr).await?;
    let options = LockOptions {
        ttl: args.ttl,
        wait: args.wait,
    };
    let Some(guard) = client.lock(&args.name, options).await? else {
        return Err(Failure::refused(format!(
            "lock {:?} was not granted within the wait",
            args.name
        )));
    };
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| Failure::usage("no command given"))?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("SPOOL_LOCK_TOKEN", guard.token().to_string())
        .env("SPOOL_LOCK_NAME", &args.name)
        .spawn()
        .map_err(|e| Failure::io(&format!("cannot run {program:?}"), e))?;
    let status = tokio::select! {
        status = child.wait() => status,
        () = guard.lost() => {
            eprintln!("spool: lock {:?} lost; stopping the command", args.name);
            let pid = child
                .id()
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                }
            }
            return Err(Failure::refused(format!("lock {:?} was lost while the command ran", args.name)));
        }
    }
    .map_err(|e| Failure::io("waiting for the command", e))?;
    if let Err(e) = guard.release().await {
        eprintln!("spool: releasing the lock: {e}");
    }
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    if code == 0 {
        Ok(())
    } else {
        Err(Failure::new(u8::try_from(code).unwrap_or(1), String::new()))
    }
}

pub async fn run_locks(command: LocksCommand) -> Result<(), Failure> {
    match command {
        LocksCommand::List { prefix, addr, json } => {
            let client = crate::connect(&addr).await?;
            let listed = client.list_locks(&prefix).await?;
            if json {
                let locks: Vec<serde_json::Value> = listed
                    .locks
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "name": l.name,
                            "holder_session": l.holder,
                            "token": l.token,
                            "expires_in_ms": l.expires_in_ms,
                            "waiters": l.waiters,
                        })
                    })
                    .collect();
                return crate::print_json(&serde_json::json!({
                    "last_token": listed.last_token,
                    "locks": locks,
                }));
            }
            if listed.locks.is_empty() {
                println!(
                    "no locks held or awaited (last token granted: {})",
                    listed.last_token
                );
                return Ok(());
            }
            println!(
                "{:<32} {:>10} {:>12} {:>10} {:>8}",
                "LOCK", "SESSION", "TOKEN", "EXPIRES", "WAITERS"
            );
            for l in &listed.locks {
                let holder = l.holder.map_or("-".to_string(), |s| s.to_string());
                let expires = l
                    .expires_in_ms
                    .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
                println!(
                    "{:<32} {:>10} {:>12} {:>10} {:>8}",
                    l.name,
                    holder,
                    l.token,
                    expires,
                    l.waiters.len()
                );
            }
            println!("last token granted: {}", listed.last_token);
            Ok(())
        }
    }
}
