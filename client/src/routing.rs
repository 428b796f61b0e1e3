//! Which broker to send a partition's requests to, in a cluster.
//!
//! A client starts with no routes and sends everything to the broker it
//! connected to; a single-node server never answers `NotLeader`, so there
//! nothing here ever runs. The first `NotLeader` or `PartitionUnavailable`
//! makes the client fetch `Metadata` and from then on send each partition's
//! requests to its leader, refreshing whenever a broker sends it elsewhere.

use std::collections::HashMap;
use std::sync::Arc;

use spool_protocol::requests::MetadataResponse;
use spool_protocol::ErrorCode;

use crate::ClientError;

/// Partition leaders' client addresses, as of one metadata answer.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Placement epoch of the answer.
    pub epoch: u64,
    leaders: HashMap<(String, u32), String>,
    /// Every broker's address, alive first: where to go when the one we
    /// talk to is gone.
    pub brokers: Vec<String>,
}

impl Routes {
    /// The routes in `m`, or `None` for a single-node server (one broker,
    /// id 0), whose clients keep using the address they connected to. A
    /// cluster that lists no broker yet (still forming) is a cluster: its
    /// routes are empty until the next refresh.
    pub(crate) fn from_metadata(m: &MetadataResponse) -> Option<Arc<Routes>> {
        if !m.brokers.is_empty() && m.brokers.iter().all(|b| b.id == 0) {
            return None;
        }
        let addr_of: HashMap<u64, &str> =
            m.brokers.iter().map(|b| (b.id, b.addr.as_str())).collect();
        let mut leaders = HashMap::new();
        for t in &m.topics {
            for p in &t.partitions {
                if let Some(addr) = p.leader.and_then(|l| addr_of.get(&l)) {
                    leaders.insert((t.name.clone(), p.partition), addr.to_string());
                }
            }
        }
        let mut brokers: Vec<_> = m.brokers.iter().collect();
        brokers.sort_by_key(|b| !b.alive);
        Some(Arc::new(Routes {
            epoch: m.epoch,
            leaders,
            brokers: brokers.into_iter().map(|b| b.addr.clone()).collect(),
        }))
    }

    pub(crate) fn leader(&self, topic: &str, partition: u32) -> Option<&str> {
        self.leaders
            .get(&(topic.to_string(), partition))
            .map(String::as_str)
    }
}

/// True if `err` means "this partition is served elsewhere, or not right
/// now": the routes should be refreshed before a retry.
pub(crate) fn is_routing_error(err: &ClientError) -> bool {
    // A broker that cannot be reached may be dead: its partitions get new
    // leaders once its lease lapses, and only fresh metadata says where.
    matches!(
        err,
        ClientError::Connect { .. } | ClientError::Disconnected(_)
    ) || matches!(
        err.code(),
        Some(ErrorCode::NotLeader) | Some(ErrorCode::PartitionUnavailable)
    )
}
