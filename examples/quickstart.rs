//! Embedded quick start: open a broker on a directory, produce, read back.
//!
//! `cargo run --release --example quickstart [DIR]`. The default directory
//! is `spool-quickstart` under the system's temp directory, its own: a
//! `spool serve` running from the Quick start holds `./spool-data` (a
//! broker locks its directory), and the example must not need it stopped.
//! Run it twice: the second run finds the first run's messages on disk.

use spool::{Broker, BrokerConfig, Message, PartitionId, SyncPolicy, TopicConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(
        || std::env::temp_dir().join("spool-quickstart"),
        std::path::PathBuf::from,
    );
    println!("data in {}", dir.display());
    let broker = Broker::open(&dir, BrokerConfig::default())?;
    if broker.describe_topic("greetings").is_err() {
        broker.create_topic("greetings", TopicConfig::new(1).sync(SyncPolicy::Always))?;
    }
    let ack = broker
        .produce(
            "greetings",
            PartitionId(0),
            &[Message::new("hello"), Message::new("world")],
        )
        .await?;
    println!("stored at offsets {}..{}", ack.base_offset, ack.next_offset);

    let offsets = broker.offsets("greetings", PartitionId(0))?;
    let mut next = offsets.start;
    while next < offsets.end {
        let fetched = broker.read("greetings", PartitionId(0), next, 1 << 20)?;
        for record in fetched.records() {
            let record = record?;
            println!(
                "{}: {}",
                record.offset,
                String::from_utf8_lossy(record.value)
            );
        }
        next = fetched.next_offset;
    }
    broker.close()?;
    Ok(())
}
