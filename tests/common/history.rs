//! Checks a produce/consume history against what a broker promises:
//! every acknowledged message is consumed, none twice, in the order it was
//! produced per key, at increasing offsets per partition.

use std::collections::{HashMap, HashSet};

/// A message a producer had acknowledged: its key and its sequence number
/// (sequence numbers increase in send order; one key's sends are ordered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub key: Vec<u8>,
    pub seq: u64,
}

/// A message as a consumer read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub seq: u64,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Acknowledged, never consumed.
    Lost(u64),
    /// Consumed more than once.
    Duplicated(u64),
    /// A key's messages consumed out of send order.
    Reordered {
        key: Vec<u8>,
        before: u64,
        after: u64,
    },
    /// A partition's offsets did not increase.
    OffsetsBackwards {
        partition: u32,
        before: u64,
        after: u64,
    },
    /// A queue group delivered again a message whose ack it had confirmed.
    RedeliveredAfterAck(u64),
    /// Stored, never acked by the queue group that should have drained it.
    NeverAcked(u64),
    /// Acked by a queue group where the final log holds something else.
    AckedElsewhere(u64),
    /// A queue group's partition not settled to its end after a drain.
    GroupBehind {
        partition: u32,
        position: u64,
        end: u64,
    },
    /// A replica's copy of a partition is not its leader's, record for
    /// record, once the cluster has settled.
    ReplicasDiffer {
        partition: u32,
        broker: u64,
        /// Where: the first offset whose record differs, or the two
        /// lengths.
        at: String,
    },
    /// The cluster did not get back to a settled state (every partition
    /// led, every replica in sync) after the faults ended, or a broker
    /// failed outright.
    Stuck(String),
}

/// Every violation in the history (empty: it is sound).
pub fn check(acked: &[Acked], consumed: &[Consumed]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut seen = HashSet::new();
    let mut last_seq: HashMap<&[u8], u64> = HashMap::new();
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    for c in consumed {
        if !seen.insert(c.seq) {
            violations.push(Violation::Duplicated(c.seq));
        }
        if let Some(&before) = last_seq.get(c.key.as_slice()) {
            if before >= c.seq {
                violations.push(Violation::Reordered {
                    key: c.key.clone(),
                    before,
                    after: c.seq,
                });
            }
        }
        last_seq.insert(&c.key, c.seq);
        if let Some(&before) = last_offset.get(&c.partition) {
            if before >= c.offset {
                violations.push(Violation::OffsetsBackwards {
                    partition: c.partition,
                    before,
                    after: c.offset,
                });
            }
        }
        last_offset.insert(c.partition, c.offset);
    }
    for a in acked {
        if !seen.contains(&a.seq) {
            violations.push(Violation::Lost(a.seq));
        }
    }
    violations
}
