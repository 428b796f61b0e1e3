//! The `spool` command line.
//!
//! `spool inspect` opens a data directory offline (it takes the directory
//! lock, so the broker must not be running) and prints its topics and
//! partition offsets: the quickest way to see what a crash left behind,
//! since opening runs the same recovery the broker does.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spool::{Broker, BrokerConfig};

#[derive(Parser)]
#[command(
    name = "spool",
    version,
    about = "Spool: an embedded persistent message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a data directory (recovering it like the broker would) and print
    /// its topics, partitions and offsets.
    Inspect {
        /// The data directory.
        #[arg(long, default_value = "./spool-data")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("spool: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect { data } => {
            if !data.join("topics").is_dir() {
                anyhow::bail!(
                    "{} is not a Spool data directory (no topics/ inside)",
                    data.display()
                );
            }
            let broker = Broker::open(&data, BrokerConfig::default())?;
            let topics = broker.list_topics();
            if topics.is_empty() {
                println!("no topics in {}", data.display());
            }
            for topic in topics {
                println!(
                    "{}  partitions={} sync={} segment_size_bytes={}",
                    topic.name,
                    topic.config.partitions,
                    topic.config.log.sync,
                    topic.config.log.segment_size_bytes
                );
                for p in topic.partitions {
                    println!("  {:>4}  start={}  end={}", p.partition, p.start, p.end);
                }
            }
            broker.close()?;
            Ok(())
        }
    }
}
