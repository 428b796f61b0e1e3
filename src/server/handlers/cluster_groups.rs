//! Stream-mode consumer groups as a clustered broker answers them. Each
//! group has one coordinator (placement of its name over the live brokers):
//! members join it and ask it for their partitions, and it commits their
//! offsets through the control plane, so a new coordinator (after the old
//! one's lease lapsed, or a membership change) knows every committed
//! offset. Members are connections and live only with the coordinator they
//! joined; when it changes they get `NotLeader` and join the new one.
//!
//! Queue-mode groups have no coordinator: see `cluster_queues`.

use spool_protocol::requests::{
    CommitOffsetRequest, CommittedOffsetsRequest, CommittedOffsetsResponse, CoordinatorResponse,
    DeleteGroupRequest, DescribeGroupRequest, FindCoordinatorRequest, GroupAssignmentRequest,
    GroupAssignmentResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    ListGroupsResponse, ResetGroupRequest, WireGroup, WireGroupPartition,
};
use spool_protocol::{ErrorCode, ErrorResponse, WireGroupMode, WireResetTarget};

use crate::broker::{Broker, BrokerError, GroupConfig, MemberId};
use crate::cluster::node::ClusterNode;
use crate::cluster::state::{ClusterState, GroupSpec};
use crate::server::errors::{error, response_for};
use crate::server::handlers::{cluster, groups, on_blocking_thread};

/// `Ok` if this broker coordinates `group` now.
pub fn coordinates(node: &ClusterNode, group: &str) -> Result<(), ErrorResponse> {
    node.check_coordinates(group)
        .map_err(|why| cluster::refusal(why, &format!("group {group}")))
}

/// Who coordinates `group`.
pub fn find_coordinator(
    node: &ClusterNode,
    request: &FindCoordinatorRequest,
) -> Result<CoordinatorResponse, ErrorResponse> {
    let state = node.state();
    let id = state.coordinator(&request.group).ok_or_else(|| {
        error(
            ErrorCode::ClusterUnavailable,
            format!("no live broker to coordinate group {}", request.group),
        )
    })?;
    Ok(CoordinatorResponse {
        id: id.0,
        addr: state
            .members
            .get(&id)
            .map(|m| m.client_addr.clone())
            .unwrap_or_default(),
    })
}

/// True for a committed queue-mode group: it has no coordinator, every
/// broker has it open (see `cluster_queues`).
fn is_queue(node: &ClusterNode, group: &str) -> bool {
    node.state()
        .groups
        .get(group)
        .is_some_and(|g| g.queue.is_some())
}

/// `GroupHasMembers` if members joined `group` at this coordinator.
fn no_members_here(broker: &Broker, group: &str) -> Result<(), ErrorResponse> {
    if broker.describe_group(group).is_ok_and(|g| g.members > 0) {
        return Err(response_for(&BrokerError::GroupHasMembers(
            group.to_string(),
        )));
    }
    Ok(())
}

/// The committed group `name`, or `GroupNotFound`.
fn group_spec<'a>(state: &'a ClusterState, name: &str) -> Result<&'a GroupSpec, ErrorResponse> {
    state
        .groups
        .get(name)
        .ok_or_else(|| response_for(&BrokerError::GroupNotFound(name.to_string())))
}

/// Joins a stream-mode group here, its coordinator: registers the group
/// through the control plane if it is new, then joins the local group
/// that holds its members.
pub async fn join(
    node: &ClusterNode,
    broker: &Broker,
    request: JoinGroupRequest,
) -> Result<(JoinGroupResponse, MemberId), ErrorResponse> {
    coordinates(node, &request.group)?;
    node.create_group(&request.group, &request.topic)
        .await
        .map_err(|e| cluster::admin_error(&e))?;
    on_blocking_thread(broker, move |broker| groups::join(broker, &request)).await
}

/// A member's partitions. A coordinator that has not seen the group yet
/// (it took over from another) does not know the member either: it must
/// join here.
pub fn assignment(
    node: &ClusterNode,
    broker: &Broker,
    request: &GroupAssignmentRequest,
) -> Result<GroupAssignmentResponse, ErrorResponse> {
    coordinates(node, &request.group)?;
    match groups::assignment(broker, request) {
        Err(e)
            if e.code() == Some(ErrorCode::GroupNotFound)
                && node.state().groups.contains_key(&request.group) =>
        {
            Err(response_for(&BrokerError::UnknownMember {
                group: request.group.clone(),
                member: request.member,
            }))
        }
        other => other,
    }
}

/// Leaves; a member this coordinator never had has nothing to leave.
pub fn leave(
    node: &ClusterNode,
    broker: &Broker,
    request: &LeaveGroupRequest,
) -> Result<(), ErrorResponse> {
    if !is_queue(node, &request.group) {
        coordinates(node, &request.group)?;
    }
    match groups::leave(broker, request) {
        Err(e) if e.code() == Some(ErrorCode::GroupNotFound) => Ok(()),
        other => other,
    }
}

/// Commits an offset through the control plane.
pub async fn commit_offset(
    node: &ClusterNode,
    request: &CommitOffsetRequest,
) -> Result<(), ErrorResponse> {
    coordinates(node, &request.group)?;
    node.commit_offsets(&request.group, vec![(request.partition, request.offset)])
        .await
        .map_err(|e| cluster::admin_error(&e))
}

/// The committed offsets, as this broker has applied them.
pub fn committed_offsets(
    node: &ClusterNode,
    request: &CommittedOffsetsRequest,
) -> Result<CommittedOffsetsResponse, ErrorResponse> {
    coordinates(node, &request.group)?;
    let state = node.state();
    let group = group_spec(&state, &request.group)?;
    let partitions = state
        .topics
        .get(&group.topic)
        .map_or(0, |t| t.config.partitions);
    Ok(CommittedOffsetsResponse {
        offsets: (0..partitions)
            .map(|p| (p, group.offsets.get(&p).copied()))
            .collect(),
    })
}

/// One group, described by its coordinator: members from here, offsets
/// from the control plane, partition ends from their leaders (a partition
/// no broker serves now shows its committed position as its end: its lag
/// is unknown until its broker is back).
pub async fn describe(
    node: &ClusterNode,
    broker: &Broker,
    request: &DescribeGroupRequest,
) -> Result<WireGroup, ErrorResponse> {
    if is_queue(node, &request.group) {
        // Every broker copies each partition's state (position, settled,
        // dead letters) from its leader; members and in-flight counts are
        // this broker's own.
        return groups::describe(broker, request);
    }
    coordinates(node, &request.group)?;
    describe_here(node, broker, &request.group).await
}

async fn describe_here(
    node: &ClusterNode,
    broker: &Broker,
    name: &str,
) -> Result<WireGroup, ErrorResponse> {
    let state = node.state();
    let group = group_spec(&state, name)?;
    let ranges = node
        .partition_ranges(&group.topic)
        .await
        .map_err(|e| error(ErrorCode::PartitionUnavailable, e))?;
    let local = broker.describe_group(name).ok();
    let config = local
        .as_ref()
        .map_or_else(GroupConfig::default, |g| g.config);
    Ok(WireGroup {
        name: name.to_string(),
        topic: group.topic.clone(),
        mode: WireGroupMode::Stream,
        ack_wait_ms: config.ack_wait_ms,
        max_deliveries: config.max_deliveries,
        max_in_flight: config.max_in_flight,
        members: local.as_ref().map_or(0, |g| g.members as u32),
        redeliveries: 0,
        partitions: ranges
            .iter()
            .zip(0u32..)
            .map(|(range, p)| {
                let committed = group.offsets.get(&p).copied();
                let (position, end) = match (*range, committed) {
                    (Some((_, end)), Some(c)) => (c, end),
                    (Some((start, end)), None) => (start, end),
                    (None, c) => (c.unwrap_or(0), c.unwrap_or(0)),
                };
                WireGroupPartition {
                    partition: p,
                    position,
                    end,
                    in_flight: 0,
                    pending: 0,
                    dead_letters: 0,
                }
            })
            .collect(),
    })
}

/// Every group: each described by its coordinator (asked over its client
/// port when that is another broker).
pub async fn list(
    node: &ClusterNode,
    broker: &Broker,
) -> Result<ListGroupsResponse, ErrorResponse> {
    let state = node.state();
    let mut groups = Vec::new();
    for name in state.groups.keys() {
        let coordinator = state.coordinator(name);
        let described = if is_queue(node, name) {
            groups::describe(
                broker,
                &DescribeGroupRequest {
                    group: name.clone(),
                },
            )
        } else if coordinator == Some(node.id()) {
            describe_here(node, broker, name).await
        } else {
            let addr = coordinator
                .and_then(|c| state.members.get(&c))
                .map(|m| m.client_addr.clone())
                .unwrap_or_default();
            let request = DescribeGroupRequest {
                group: name.clone(),
            };
            match node.client_to(&addr).await {
                Ok(client) => client.call(&request).await.map_err(|e| {
                    error(
                        ErrorCode::ClusterUnavailable,
                        format!("describing group {name} at its coordinator {addr}: {e}"),
                    )
                }),
                Err(e) => Err(error(ErrorCode::ClusterUnavailable, e)),
            }
        };
        groups.push(described?);
    }
    Ok(ListGroupsResponse { groups })
}

/// Moves every partition's committed offset of a group with no members.
pub async fn reset(
    node: &ClusterNode,
    broker: &Broker,
    request: &ResetGroupRequest,
) -> Result<(), ErrorResponse> {
    if is_queue(node, &request.group) {
        return super::cluster_queues::reset(node, broker, request).await;
    }
    coordinates(node, &request.group)?;
    let state = node.state();
    let group = group_spec(&state, &request.group)?;
    no_members_here(broker, &request.group)?;
    let ranges = node
        .partition_ranges(&group.topic)
        .await
        .map_err(|e| error(ErrorCode::PartitionUnavailable, e))?;
    let mut offsets = Vec::with_capacity(ranges.len());
    for (range, p) in ranges.iter().zip(0u32..) {
        let (start, end) = range.ok_or_else(|| {
            error(
                ErrorCode::PartitionUnavailable,
                format!(
                    "{}/{p} is unavailable (its broker's lease has lapsed): cannot reset now",
                    group.topic
                ),
            )
        })?;
        let to = match request.to {
            WireResetTarget::Earliest => start,
            WireResetTarget::Latest => end,
            WireResetTarget::Offset(o) => o.clamp(start, end),
        };
        offsets.push((p, to));
    }
    node.commit_offsets(&request.group, offsets)
        .await
        .map_err(|e| cluster::admin_error(&e))?;
    tracing::info!(group = %request.group, to = ?request.to, "group reset");
    Ok(())
}

/// Deletes a stream-mode group: at its coordinator, with no members there.
/// Every broker then drops its own copy (see `ClusterNode`'s sync).
pub async fn delete(
    node: &ClusterNode,
    broker: &Broker,
    request: &DeleteGroupRequest,
) -> Result<(), ErrorResponse> {
    if !is_queue(node, &request.group) {
        coordinates(node, &request.group)?;
    }
    group_spec(&node.state(), &request.group)?;
    no_members_here(broker, &request.group)?;
    node.delete_group(&request.group)
        .await
        .map_err(|e| cluster::admin_error(&e))?;
    // This broker's copy goes now rather than at the next sync.
    let group = request.group.clone();
    on_blocking_thread(broker, move |broker| match broker.remove_group(&group) {
        Ok(()) | Err(BrokerError::GroupNotFound(_)) => Ok(()),
        Err(e) => Err(response_for(&e)),
    })
    .await
}
