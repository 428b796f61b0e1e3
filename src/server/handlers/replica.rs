//! Replication as the server sees it: a follower's fetch, and the wait of
//! an `acks=all` produce for the in-sync replicas.

use std::time::Duration;

use spool_protocol::requests::{ReplicaFetchRequest, ReplicaFetchResponse};
use spool_protocol::{ErrorCode, ErrorResponse, Offset};

use crate::cluster::node::ClusterNode;
use crate::cluster::replication::{AckError, ReplicaFetchError};
use crate::server::errors::{error, response_for};
use crate::server::handlers::fetch::MAX_WAIT_CAP_MS;

/// Answers a follower (waiting up to `max_wait_ms` at the end of the log).
pub async fn fetch(
    node: &ClusterNode,
    request: &ReplicaFetchRequest,
    max_wait_ms: u32,
) -> Result<ReplicaFetchResponse, ErrorResponse> {
    let wait = Duration::from_millis(u64::from(max_wait_ms.min(MAX_WAIT_CAP_MS)));
    node.replicas()
        .replica_fetch(node.broker(), request, wait)
        .await
        .map_err(|e| match e {
            ReplicaFetchError::NotLeading(_) => error(ErrorCode::NotLeader, e.to_string()),
            ReplicaFetchError::EpochMismatch { .. } => {
                error(ErrorCode::LeaderEpochMismatch, e.to_string())
            }
            ReplicaFetchError::Broker(b) => response_for(&b),
        })
}

/// The error for a produce the replicas did not confirm.
pub fn ack_error(e: &AckError) -> ErrorResponse {
    error(e.code(), e.to_string())
}

/// After acks of a queue group were recorded here: waits until the
/// in-sync replicas of each of `partitions` hold them (at once for a
/// partition with one copy).
pub async fn wait_acks_replicated(
    node: &ClusterNode,
    topic: &str,
    group: &str,
    partitions: impl IntoIterator<Item = u32>,
) -> Result<(), ErrorResponse> {
    let state = node.state();
    for p in partitions {
        let replicated = state
            .assignment(topic, spool_protocol::PartitionId(p))
            .is_some_and(|a| a.replicated());
        if !replicated {
            continue;
        }
        let end = node
            .broker()
            .group_journal_end(group, spool_protocol::PartitionId(p))
            .map_err(|e| response_for(&e))?;
        node.replicas()
            .wait_group_replicated(node.id(), topic, p, group, end, || node.lease_valid())
            .await
            .map_err(|e| ack_error(&e))?;
    }
    Ok(())
}

/// Waits until the in-sync replicas hold everything below `end` (at once
/// for a partition with one copy: the leader's is all there is).
pub async fn wait_replicated(
    node: &ClusterNode,
    topic: &str,
    partition: u32,
    end: u64,
) -> Result<(), ErrorResponse> {
    let replicated = node
        .state()
        .assignment(topic, spool_protocol::PartitionId(partition))
        .is_some_and(|a| a.replicated());
    if !replicated {
        return Ok(());
    }
    node.replicas()
        .wait_replicated(topic, partition, Offset(end), || node.lease_valid())
        .await
        .map_err(|e| ack_error(&e))
}
