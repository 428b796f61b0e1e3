//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cli;
pub mod cluster;
pub mod history;
pub mod pki;
pub mod proxy;
pub mod server;
pub mod sim_net;

use spool::{Batch, Broker, Offset, PartitionId};

/// One record read back from a partition, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub offset: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Reads every record of a partition from its start to its end, checking that
/// offsets are contiguous.
pub fn read_all(broker: &Broker, topic: &str, partition: u32) -> Vec<ReadRecord> {
    let p = PartitionId(partition);
    let offsets = broker.offsets(topic, p).unwrap();
    let mut out = Vec::new();
    let mut next = offsets.start;
    while next < offsets.end {
        let fetched = broker.read(topic, p, next, 64 * 1024).unwrap();
        assert!(
            !fetched.batches.is_empty(),
            "empty read at {next} before end {}",
            offsets.end
        );
        let mut rest: &[u8] = &fetched.batches;
        while !rest.is_empty() {
            let batch = Batch::validate(rest).unwrap();
            for r in batch.records() {
                if r.offset < next {
                    continue;
                }
                assert_eq!(r.offset, next, "offsets not contiguous");
                out.push(ReadRecord {
                    offset: r.offset.0,
                    key: r.key.map(|k| k.to_vec()),
                    value: r.value.to_vec(),
                });
                next = Offset(next.0 + 1);
            }
            rest = &rest[batch.bytes().len()..];
        }
        assert_eq!(fetched.next_offset, next);
    }
    out
}

/// Installs a tracing subscriber once so failing tests show the broker's logs.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
