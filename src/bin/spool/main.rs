//! The `spool` command line: run a broker, administer topics, produce and
//! consume from a shell.
//!
//! Exit codes: 0 success; 1 the server or broker refused (the message says
//! why); 2 bad usage; 3 cannot reach the server; 4 I/O error on local input
//! or output.

mod bench;
mod cluster;
mod consume;
mod dlq;
mod groups;
mod inspect;
mod locks;
mod produce;
mod security;
mod serve;
mod status;
mod topics;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The broker and the client allocate many small buffers across threads;
/// mimalloc handles that far better than glibc's allocator (measured with
/// `spool bench`: see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use spool::client::ClientError;

#[derive(Parser)]
#[command(
    name = "spool",
    version,
    about = "Spool: an embedded persistent message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Connect to brokers over TLS, trusting this CA certificate (PEM).
    #[arg(long, global = true, env = "SPOOL_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// TLS: the name the brokers' certificates must carry [default: the
    /// address's IP].
    #[arg(
        long,
        global = true,
        env = "SPOOL_TLS_SERVER_NAME",
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,
    /// TLS: present this client certificate (PEM; mutual TLS). With
    /// `--auth`, the broker takes the certificate's common name as the
    /// user, and no password is needed.
    #[arg(
        long,
        global = true,
        env = "SPOOL_TLS_CLIENT_CERT",
        requires_all = ["tls_ca", "tls_client_key"]
    )]
    tls_client_cert: Option<std::path::PathBuf>,
    /// TLS: the key of --tls-client-cert (PEM).
    #[arg(
        long,
        global = true,
        env = "SPOOL_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    tls_client_key: Option<std::path::PathBuf>,
    /// Authenticate as this user; the password comes from the
    /// SPOOL_PASSWORD environment variable (never the command line).
    #[arg(long, global = true, env = "SPOOL_USER")]
    user: Option<String>,
}

/// How client commands connect (set once from the global flags).
static CONNECT: std::sync::OnceLock<spool::client::ConnectOptions> = std::sync::OnceLock::new();

/// The connection options of client commands.
pub fn connect_options() -> spool::client::ConnectOptions {
    CONNECT.get().cloned().unwrap_or_default()
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: serve the Spool protocol and /metrics until SIGINT/SIGTERM.
    Serve(Box<serve::ServeArgs>),
    /// One look at a running server: version, uptime, data, disk, cluster.
    Status(status::StatusArgs),
    /// Create, list, describe and delete topics on a running broker.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// List, describe and reset consumer groups.
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Inspect a cluster: brokers, leases, controller, partition leaders.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Run a command while holding a distributed lock.
    Lock(locks::LockArgs),
    /// Distributed locks: list holders, tokens and waiters.
    Locks {
        #[command(subcommand)]
        command: locks::LocksCommand,
    },
    /// Users (with `spool serve --auth`): add, remove, list.
    Users {
        #[command(subcommand)]
        command: security::UsersCommand,
    },
    /// Access rules (with `spool serve --auth`): add, remove, list.
    Acl {
        #[command(subcommand)]
        command: security::AclCommand,
    },
    /// A queue group's dead letters: list them, replay them.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Quotas (with `spool serve --auth`): byte rates and connection
    /// limits per principal.
    Quotas {
        #[command(subcommand)]
        command: security::QuotasCommand,
    },
    /// Send each line of stdin (or a file) as one message.
    Produce(produce::ProduceArgs),
    /// Print message values, one per line.
    Consume(consume::ConsumeArgs),
    /// Measure produce and consume throughput and latency, verifying every message.
    Bench(bench::BenchArgs),
    /// Print a data directory's topics and offsets offline, reading only
    /// (what recovery would cut is not counted).
    Inspect(inspect::InspectArgs),
    /// Check every file of a data directory offline (CRC of every batch,
    /// indexes, metadata) without changing it; exit 1 on damage.
    Verify(inspect::VerifyArgs),
}

/// An error with the exit code a shell should see.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Exit `code` with `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Local I/O (stdin, stdout, files).
    pub fn io(what: &str, err: std::io::Error) -> Failure {
        Failure::new(4, format!("{what}: {err}"))
    }

    /// The broker refused or failed.
    pub fn refused(message: impl Into<String>) -> Failure {
        Failure::new(1, message)
    }

    /// Bad usage that clap could not catch.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(2, message)
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        match err {
            ClientError::Connect { .. } | ClientError::Disconnected(_) => {
                Failure::new(3, format!("{err} (is `spool serve` running there?)"))
            }
            other => Failure::new(1, other.to_string()),
        }
    }
}

impl From<spool::BrokerError> for Failure {
    fn from(err: spool::BrokerError) -> Failure {
        use spool::{BrokerError, StorageError};
        // A local file or directory that cannot be read or written (no
        // permission, not a directory, full disk) is a local I/O error.
        let code = match &err {
            BrokerError::Storage {
                source: StorageError::Io { .. } | StorageError::NoSpace { .. },
                ..
            } => 4,
            _ => 1,
        };
        Failure::new(code, err.to_string())
    }
}

/// `word`, or its plural for a count `n` other than 1.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::refused(format!("encoding JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Default server address of the client commands.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7070";

/// Parses `HOST:PORT`, resolving a host name.
/// Connects to a broker, or to the first reachable one of a cluster's
/// comma-separated bootstrap list (`a:7070,b:7070`).
pub async fn connect(addrs: &str) -> Result<spool::client::Client, Failure> {
    let resolved = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(resolve)
        .collect::<Result<Vec<_>, _>>()?;
    if resolved.is_empty() {
        return Err(Failure::usage("--addr names no broker"));
    }
    Ok(spool::client::Client::connect_any(&resolved, connect_options()).await?)
}

pub fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| Failure::usage(format!("bad address {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Failure::usage(format!("address {addr:?} resolves to nothing")))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut options = spool::client::ConnectOptions::default();
    if let Some(ca) = &cli.tls_ca {
        let tls = match (&cli.tls_client_cert, &cli.tls_client_key) {
            (Some(cert), Some(key)) => spool::client::TlsOptions::with_client_cert(ca, cert, key),
            _ => spool::client::TlsOptions::with_ca_file(ca),
        };
        match tls {
            Ok(tls) => {
                options.tls = Some(match &cli.tls_server_name {
                    Some(name) => tls.server_name(name),
                    None => tls,
                })
            }
            Err(e) => {
                eprintln!("spool: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(user) = &cli.user {
        let Ok(password) = std::env::var("SPOOL_PASSWORD") else {
            eprintln!("spool: --user {user} needs the password in SPOOL_PASSWORD");
            return ExitCode::from(2);
        };
        options.credentials = Some(spool::client::Credentials {
            user: user.clone(),
            password,
        });
    }
    let _ = CONNECT.set(options);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("spool: cannot start the runtime: {err}");
            return ExitCode::from(4);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Topics { command } => topics::run(command).await,
            Command::Groups { command } => groups::run(command).await,
            Command::Cluster { command } => cluster::run(command).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Lock(args) => locks::run_lock(args).await,
            Command::Users { command } => security::run_users(command).await,
            Command::Acl { command } => security::run_acl(command).await,
            Command::Quotas { command } => security::run_quotas(command).await,
            Command::Dlq { command } => dlq::run(command).await,
            Command::Locks { command } => locks::run_locks(command).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Inspect(args) => inspect::run(args),
            Command::Verify(args) => inspect::verify(args),
            Command::Bench(args) => bench::run(args).await,
            Command::Status(args) => status::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // An empty message passes a command's own exit status on.
            if !failure.message.is_empty() {
                eprintln!("spool: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}
