//! Queue-mode groups as a clustered broker answers them.
//!
//! A queue group is committed through the control plane (with its
//! dead-letter topic) and open on every broker. Its delivery state on a
//! partition lives with the partition: the leader hands the partition's
//! messages out and records acks; the followers copy those records with
//! the data (see `broker::group::replica`). So a member joins every broker
//! that leads a partition of the topic and asks each for deliveries; each
//! broker hands out only what it leads, and settles only that. An ack is
//! answered once every in-sync replica of the partition has it, so a new
//! leader never hands out an acknowledged message again; what was delivered
//! and not acknowledged is delivered again by the new leader.

use spool_protocol::requests::{
    AckRequest, DeliverRequest, DeliverResponse, JoinGroupRequest, JoinGroupResponse, NackRequest,
    PendingMessagesRequest, PendingMessagesResponse, ResetGroupRequest, SettleResponse,
    TouchRequest,
};
use spool_protocol::{ErrorCode, ErrorResponse, PartitionId, WireSettle};

use crate::broker::{Broker, MemberId, SettleResult};
use crate::cluster::node::ClusterNode;
use crate::server::errors::{error, response_for};
use crate::server::handlers::{cluster, groups, on_blocking_thread, replica};

/// Registers the group cluster-wide if it is new, then joins it here.
pub async fn join(
    node: &ClusterNode,
    broker: &Broker,
    request: JoinGroupRequest,
) -> Result<(JoinGroupResponse, MemberId), ErrorResponse> {
    node.create_queue_group(&request.group, &request.topic, groups::config_of(&request))
        .await
        .map_err(|e| cluster::admin_error(&e))?;
    on_blocking_thread(broker, move |broker| groups::join(broker, &request)).await
}

fn topic_of(broker: &Broker, group: &str) -> Result<String, ErrorResponse> {
    broker.group_topic(group).map_err(|e| response_for(&e))
}

/// Hands out messages of the partitions this broker leads.
pub async fn deliver(
    node: &ClusterNode,
    broker: &Broker,
    request: &DeliverRequest,
    shutting_down: bool,
) -> Result<DeliverResponse, ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let serves = |p: PartitionId| node.check_serves(&topic, p, true).is_ok();
    groups::deliver(broker, request, shutting_down, &serves).await
}

/// Splits settlement items into those of partitions this broker leads
/// (with their places in the request) and the rest. Each partition is
/// checked once, however many of its messages the request settles.
fn served(node: &ClusterNode, topic: &str, items: &[(u32, u64)]) -> (Vec<usize>, Vec<(u32, u64)>) {
    let mut leads: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
    items
        .iter()
        .enumerate()
        .filter(|(_, (p, _))| {
            *leads
                .entry(*p)
                .or_insert_with(|| node.check_serves(topic, PartitionId(*p), true).is_ok())
        })
        .map(|(i, item)| (i, *item))
        .unzip()
}

/// The answer for every item: the broker's for those it settled, and
/// `NotInFlight` for those of partitions it does not lead (any more): their
/// leader delivers them again.
fn merge(
    count: usize,
    places: &[usize],
    results: Result<Vec<SettleResult>, crate::BrokerError>,
) -> Result<SettleResponse, ErrorResponse> {
    let done = groups::settled(results)?;
    let mut all = vec![WireSettle::NotInFlight; count];
    for (&i, r) in places.iter().zip(done.results) {
        all[i] = r;
    }
    Ok(SettleResponse { results: all })
}

/// Acks what this broker leads; answers once the partitions' in-sync
/// replicas have the acks.
pub async fn ack(
    node: &ClusterNode,
    broker: &Broker,
    request: &AckRequest,
) -> Result<SettleResponse, ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let (places, items) = served(node, &topic, &request.items);
    let results = broker
        .ack(&request.group, request.member, &groups::to_items(&items))
        .await;
    if results.is_ok() {
        let mut partitions: Vec<u32> = items.iter().map(|(p, _)| *p).collect();
        partitions.sort_unstable();
        partitions.dedup();
        replica::wait_acks_replicated(node, &topic, &request.group, partitions).await?;
    }
    merge(request.items.len(), &places, results)
}

/// Nacks what this broker leads.
pub fn nack(
    node: &ClusterNode,
    broker: &Broker,
    request: &NackRequest,
) -> Result<SettleResponse, ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let (places, items) = served(node, &topic, &request.items);
    let results = broker.nack(
        &request.group,
        request.member,
        &groups::to_items(&items),
        std::time::Duration::from_millis(u64::from(request.delay_ms)),
    );
    merge(request.items.len(), &places, results)
}

/// Extends deadlines of what this broker leads.
pub fn touch(
    node: &ClusterNode,
    broker: &Broker,
    request: &TouchRequest,
) -> Result<SettleResponse, ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let (places, items) = served(node, &topic, &request.items);
    let results = broker.touch(&request.group, request.member, &groups::to_items(&items));
    merge(request.items.len(), &places, results)
}

/// Resets the group on each partition at the partition's leader: here for
/// those this broker leads, forwarded (with the partition named) for the
/// others. Each leader refuses while members joined it, and answers once
/// the partition's in-sync replicas have the reset. A partition that could
/// not be reset is named in the error; the others stay reset.
pub async fn reset(
    node: &ClusterNode,
    broker: &Broker,
    request: &ResetGroupRequest,
) -> Result<(), ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let partitions: Vec<u32> = match request.partition {
        Some(p) => vec![p],
        None => {
            let count = node
                .state()
                .topics
                .get(&topic)
                .map_or(0, |t| t.config.partitions);
            (0..count).collect()
        }
    };
    let mut failed = Vec::new();
    for p in partitions {
        let result = if node.check_serves(&topic, PartitionId(p), true).is_ok() {
            let one = ResetGroupRequest {
                partition: Some(p),
                ..request.clone()
            };
            match on_blocking_thread(broker, move |broker| groups::reset(broker, &one)).await {
                Ok(()) => replica::wait_acks_replicated(node, &topic, &request.group, [p]).await,
                Err(e) => Err(e),
            }
        } else if request.partition.is_some() {
            // Sent here as the leader, which this broker no longer is.
            cluster::check_serves(node, &topic, p, true)
        } else {
            forward_reset(node, &topic, p, request).await
        };
        if let Err(e) = result {
            failed.push(format!("partition {p}: {}", e.message));
        }
    }
    if failed.is_empty() {
        tracing::info!(group = %request.group, to = ?request.to, "queue group reset");
        return Ok(());
    }
    Err(error(
        ErrorCode::PartitionUnavailable,
        format!(
            "group {} was not reset on every partition (the others are): {}",
            request.group,
            failed.join("; ")
        ),
    ))
}

/// Asks the leader of partition `p` to reset the group there.
async fn forward_reset(
    node: &ClusterNode,
    topic: &str,
    p: u32,
    request: &ResetGroupRequest,
) -> Result<(), ErrorResponse> {
    let state = node.state();
    let addr = state
        .leader(topic, PartitionId(p))
        .and_then(|l| state.members.get(&l))
        .map(|m| m.client_addr.clone())
        .ok_or_else(|| {
            error(
                ErrorCode::PartitionUnavailable,
                format!("{topic}/{p} has no leader now"),
            )
        })?;
    let client = node
        .client_to(&addr)
        .await
        .map_err(|e| error(ErrorCode::PartitionUnavailable, e))?;
    let one = ResetGroupRequest {
        partition: Some(p),
        ..request.clone()
    };
    client.call(&one).await.map_err(|e| {
        let code = e.code().unwrap_or(ErrorCode::PartitionUnavailable);
        error(code, format!("at the leader {addr}: {e}"))
    })
}

/// The unsettled messages of the partitions this broker leads.
pub fn pending(
    node: &ClusterNode,
    broker: &Broker,
    request: &PendingMessagesRequest,
) -> Result<PendingMessagesResponse, ErrorResponse> {
    let topic = topic_of(broker, &request.group)?;
    let serves = |p: PartitionId| node.check_serves(&topic, p, true).is_ok();
    groups::pending(broker, request, &serves)
}
