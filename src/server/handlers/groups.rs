//! Consumer groups: join/leave, queue deliveries and settlement, stream
//! commits and assignment, administration.

use std::time::Duration;

use spool_protocol::requests::{
    AckRequest, CommitOffsetRequest, CommittedOffsetsRequest, CommittedOffsetsResponse,
    DeleteGroupRequest, DeliverRequest, DeliverResponse, DescribeGroupRequest,
    GroupAssignmentRequest, GroupAssignmentResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, ListGroupsResponse, NackRequest, PendingMessagesRequest,
    PendingMessagesResponse, ResetGroupRequest, SettleResponse, TouchRequest, WireGroup,
    WireGroupPartition, WirePending,
};
use spool_protocol::{
    ErrorResponse, Offset, PartitionId, WireGroupMode, WireResetTarget, WireSettle,
};

use crate::broker::{
    Broker, BrokerError, GroupConfig, GroupInfo, GroupMode, MemberId, ResetTo, SettleResult,
};
use crate::server::errors::response_for;

/// Longest a delivery may wait, whatever the client asks.
pub const MAX_WAIT_CAP_MS: u32 = 30_000;

/// Joins; the caller remembers `(group, member)` to leave when the
/// connection closes.
pub fn join(
    broker: &Broker,
    request: &JoinGroupRequest,
) -> Result<(JoinGroupResponse, MemberId), ErrorResponse> {
    let mode = GroupMode::from(request.mode);
    let config = config_of(request);
    let member = broker
        .join_group(&request.group, &request.topic, mode, config)
        .map_err(fail)?;
    let (generation, partitions) = match mode {
        GroupMode::Stream => broker
            .group_assignment(&request.group, member)
            .map_err(fail)?,
        GroupMode::Queue => (0, Vec::new()),
    };
    let response = JoinGroupResponse {
        member,
        generation,
        partitions: partitions.iter().map(|p| p.0).collect(),
    };
    Ok((response, member))
}

/// The queue settings a join asks for (zero on the wire: the default).
pub fn config_of(request: &JoinGroupRequest) -> GroupConfig {
    let defaults = GroupConfig::default();
    GroupConfig {
        ack_wait_ms: nonzero_or(request.ack_wait_ms, defaults.ack_wait_ms),
        max_deliveries: nonzero_or(request.max_deliveries, defaults.max_deliveries),
        max_in_flight: nonzero_or(request.max_in_flight, defaults.max_in_flight),
    }
}

/// Leaves.
pub fn leave(broker: &Broker, request: &LeaveGroupRequest) -> Result<(), ErrorResponse> {
    broker
        .leave_group(&request.group, request.member)
        .map_err(fail)
}

/// Stream mode: the member's partitions.
pub fn assignment(
    broker: &Broker,
    request: &GroupAssignmentRequest,
) -> Result<GroupAssignmentResponse, ErrorResponse> {
    let (generation, partitions) = broker
        .group_assignment(&request.group, request.member)
        .map_err(fail)?;
    Ok(GroupAssignmentResponse {
        generation,
        partitions: partitions.iter().map(|p| p.0).collect(),
    })
}

/// Queue mode: hands out messages of the partitions `serves` accepts
/// (all but in a cluster), waiting for some unless `shutting_down`.
pub async fn deliver(
    broker: &Broker,
    request: &DeliverRequest,
    shutting_down: bool,
    serves: &(dyn Fn(PartitionId) -> bool + Sync),
) -> Result<DeliverResponse, ErrorResponse> {
    let wait_ms = if shutting_down {
        0
    } else {
        request.max_wait_ms.min(MAX_WAIT_CAP_MS)
    };
    let partitions = broker
        .deliver_batches_from(
            &request.group,
            request.member,
            request.max_messages as usize,
            Duration::from_millis(u64::from(wait_ms)),
            serves,
        )
        .await
        .map_err(fail)?;
    Ok(DeliverResponse { partitions })
}

/// Queue mode: acks (durable before the reply).
pub async fn ack(broker: &Broker, request: &AckRequest) -> Result<SettleResponse, ErrorResponse> {
    settled(
        broker
            .ack(&request.group, request.member, &to_items(&request.items))
            .await,
    )
}

/// Queue mode: hands deliveries back for redelivery after the delay.
pub fn nack(broker: &Broker, request: &NackRequest) -> Result<SettleResponse, ErrorResponse> {
    settled(broker.nack(
        &request.group,
        request.member,
        &to_items(&request.items),
        Duration::from_millis(u64::from(request.delay_ms)),
    ))
}

/// Queue mode: extends deadlines.
pub fn touch(broker: &Broker, request: &TouchRequest) -> Result<SettleResponse, ErrorResponse> {
    settled(broker.touch(&request.group, request.member, &to_items(&request.items)))
}

/// Stream mode: commits an offset.
pub async fn commit_offset(
    broker: &Broker,
    request: &CommitOffsetRequest,
) -> Result<(), ErrorResponse> {
    broker
        .commit_offset(
            &request.group,
            PartitionId(request.partition),
            Offset(request.offset),
        )
        .await
        .map_err(fail)
}

/// Stream mode: the committed offsets.
pub fn committed_offsets(
    broker: &Broker,
    request: &CommittedOffsetsRequest,
) -> Result<CommittedOffsetsResponse, ErrorResponse> {
    Ok(CommittedOffsetsResponse {
        offsets: broker
            .committed_offsets(&request.group)
            .map_err(fail)?
            .into_iter()
            .map(|(p, o)| (p.0, o.map(|o| o.0)))
            .collect(),
    })
}

/// Every group.
pub fn list(broker: &Broker) -> ListGroupsResponse {
    ListGroupsResponse {
        groups: broker.list_groups().iter().map(to_wire).collect(),
    }
}

/// One group.
pub fn describe(
    broker: &Broker,
    request: &DescribeGroupRequest,
) -> Result<WireGroup, ErrorResponse> {
    Ok(to_wire(
        &broker.describe_group(&request.group).map_err(fail)?,
    ))
}

/// Resets a group (blocking: the server runs it on a blocking thread).
pub fn reset(broker: &Broker, request: &ResetGroupRequest) -> Result<(), ErrorResponse> {
    broker
        .reset_group_partitions(
            &request.group,
            request.to.into(),
            request.partition.map(PartitionId),
        )
        .map_err(fail)
}

/// Deletes a group (blocking: the server runs it on a blocking thread).
pub fn delete(broker: &Broker, request: &DeleteGroupRequest) -> Result<(), ErrorResponse> {
    broker.delete_group(&request.group).map_err(fail)
}

/// A queue group's unsettled messages on the partitions `serves` accepts.
pub fn pending(
    broker: &Broker,
    request: &PendingMessagesRequest,
    serves: &(dyn Fn(PartitionId) -> bool + Sync),
) -> Result<PendingMessagesResponse, ErrorResponse> {
    let partition = match request.partition {
        Some(p) => Some(PartitionId(u32::try_from(p).map_err(|_| {
            fail(BrokerError::InvalidConfig(format!("no partition {p}")))
        })?)),
        None => None,
    };
    let messages = broker
        .pending_messages(&request.group, partition, request.max as usize)
        .map_err(fail)?
        .into_iter()
        .filter(|m| serves(m.partition))
        .map(|m| WirePending {
            partition: m.partition.0,
            offset: m.offset.0,
            deliveries: m.deliveries,
            member: m.member.unwrap_or(0),
            due_in_ms: m.due_in_ms,
        })
        .collect();
    Ok(PendingMessagesResponse { messages })
}

fn nonzero_or<T: PartialEq + Default>(asked: T, default: T) -> T {
    if asked == T::default() {
        default
    } else {
        asked
    }
}

fn fail(err: crate::BrokerError) -> ErrorResponse {
    response_for(&err)
}

pub(crate) fn to_items(items: &[(u32, u64)]) -> Vec<(PartitionId, Offset)> {
    items
        .iter()
        .map(|&(p, o)| (PartitionId(p), Offset(o)))
        .collect()
}

pub(crate) fn settled(
    results: Result<Vec<SettleResult>, crate::BrokerError>,
) -> Result<SettleResponse, ErrorResponse> {
    Ok(SettleResponse {
        results: results
            .map_err(fail)?
            .into_iter()
            .map(WireSettle::from)
            .collect(),
    })
}

// The one conversion each between the wire's and the broker's group types.
impl From<WireGroupMode> for GroupMode {
    fn from(mode: WireGroupMode) -> GroupMode {
        match mode {
            WireGroupMode::Stream => GroupMode::Stream,
            WireGroupMode::Queue => GroupMode::Queue,
        }
    }
}

impl From<GroupMode> for WireGroupMode {
    fn from(mode: GroupMode) -> WireGroupMode {
        match mode {
            GroupMode::Stream => WireGroupMode::Stream,
            GroupMode::Queue => WireGroupMode::Queue,
        }
    }
}

impl From<WireResetTarget> for ResetTo {
    fn from(to: WireResetTarget) -> ResetTo {
        match to {
            WireResetTarget::Earliest => ResetTo::Earliest,
            WireResetTarget::Latest => ResetTo::Latest,
            WireResetTarget::Offset(o) => ResetTo::Offset(o),
        }
    }
}

impl From<SettleResult> for WireSettle {
    fn from(result: SettleResult) -> WireSettle {
        match result {
            SettleResult::Ok => WireSettle::Ok,
            SettleResult::AlreadySettled => WireSettle::AlreadySettled,
            SettleResult::NotInFlight => WireSettle::NotInFlight,
        }
    }
}

/// The wire form of a group description.
pub fn to_wire(g: &GroupInfo) -> WireGroup {
    WireGroup {
        name: g.name.clone(),
        topic: g.topic.clone(),
        mode: g.mode.into(),
        ack_wait_ms: g.config.ack_wait_ms,
        max_deliveries: g.config.max_deliveries,
        max_in_flight: g.config.max_in_flight,
        members: g.members as u32,
        redeliveries: g.redeliveries,
        partitions: g
            .partitions
            .iter()
            .map(|p| WireGroupPartition {
                partition: p.partition.0,
                position: p.position.0,
                end: p.end.0,
                in_flight: p.in_flight as u32,
                pending: p.pending as u32,
                dead_letters: p.dead_letters,
            })
            .collect(),
    }
}
