//! `spool inspect`: offline view of a data directory.

use std::path::PathBuf;

use spool::{Broker, BrokerConfig};

use crate::Failure;

/// Arguments of `spool inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The data directory (the broker must not be running on it).
    #[arg(long, default_value = "./spool-data")]
    data: PathBuf,
}

pub fn run(args: InspectArgs) -> Result<(), Failure> {
    if !args.data.join("topics").is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a Spool data directory (no topics/ inside)",
            args.data.display()
        )));
    }
    let broker = Broker::open(&args.data, BrokerConfig::default())?;
    let topics = broker.list_topics();
    if topics.is_empty() {
        println!("no topics in {}", args.data.display());
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
