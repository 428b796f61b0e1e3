//! Consumer groups: join/leave, queue deliveries and settlement, stream
//! commits and assignment, administration.

use std::time::Duration;

use spool_protocol::messages::{WireDelivery, WireGroup, WireGroupPartition};
use spool_protocol::{ErrorCode, ErrorResponse, Offset, PartitionId, Request, Response};
use spool_protocol::{WireGroupMode, WireResetTarget, WireSettle};

use crate::broker::{Broker, GroupConfig, GroupInfo, GroupMode, MemberId, ResetTo, SettleResult};
use crate::server::errors::{error, response_for};

/// Longest a delivery may wait, whatever the client asks.
pub const MAX_WAIT_CAP_MS: u32 = 30_000;

/// Joins; the caller remembers `(group, member)` to leave when the
/// connection closes.
pub fn join(
    broker: &Broker,
    request: &Request,
) -> Result<(Response, String, MemberId), ErrorResponse> {
    let Request::JoinGroup {
        group,
        topic,
        mode,
        ack_wait_ms,
        max_deliveries,
        max_in_flight,
    } = request
    else {
        return Err(error(
            ErrorCode::Internal,
            "join handler got another request",
        ));
    };
    let mode = GroupMode::from(*mode);
    let defaults = GroupConfig::default();
    let config = GroupConfig {
        ack_wait_ms: if *ack_wait_ms == 0 {
            defaults.ack_wait_ms
        } else {
            *ack_wait_ms
        },
        max_deliveries: if *max_deliveries == 0 {
            defaults.max_deliveries
        } else {
            *max_deliveries
        },
        max_in_flight: if *max_in_flight == 0 {
            defaults.max_in_flight
        } else {
            *max_in_flight
        },
    };
    let member = broker
        .join_group(group, topic, mode, config)
        .map_err(|e| response_for(&e))?;
    let (generation, partitions) = match mode {
        GroupMode::Stream => broker
            .group_assignment(group, member)
            .map_err(|e| response_for(&e))?,
        GroupMode::Queue => (0, Vec::new()),
    };
    let response = Response::JoinGroup {
        member,
        generation,
        partitions: partitions.iter().map(|p| p.0).collect(),
    };
    Ok((response, group.clone(), member))
}

/// Everything else about groups.
pub async fn handle(
    broker: &Broker,
    request: Request,
    shutting_down: bool,
) -> Result<Response, ErrorResponse> {
    let fail = |e: crate::BrokerError| response_for(&e);
    match request {
        Request::LeaveGroup { group, member } => {
            broker.leave_group(&group, member).map_err(fail)?;
            Ok(Response::LeaveGroup)
        }
        Request::GroupAssignment { group, member } => {
            let (generation, partitions) = broker.group_assignment(&group, member).map_err(fail)?;
            Ok(Response::GroupAssignment {
                generation,
                partitions: partitions.iter().map(|p| p.0).collect(),
            })
        }
        Request::Deliver {
            group,
            member,
            max_messages,
            max_wait_ms,
        } => {
            let wait_ms = if shutting_down {
                0
            } else {
                max_wait_ms.min(MAX_WAIT_CAP_MS)
            };
            let messages = broker
                .deliver(
                    &group,
                    member,
                    max_messages as usize,
                    Duration::from_millis(u64::from(wait_ms)),
                )
                .await
                .map_err(fail)?;
            Ok(Response::Deliver(
                messages
                    .into_iter()
                    .map(|m| WireDelivery {
                        partition: m.partition.0,
                        offset: m.offset.0,
                        deliveries: m.deliveries,
                        timestamp_ms: m.timestamp_ms,
                        key: m.key,
                        value: m.value,
                        headers: m.headers,
                    })
                    .collect(),
            ))
        }
        Request::Ack {
            group,
            member,
            items,
        } => settle(broker.ack(&group, member, &to_items(&items)).await),
        Request::Nack {
            group,
            member,
            delay_ms,
            items,
        } => settle(broker.nack(
            &group,
            member,
            &to_items(&items),
            Duration::from_millis(u64::from(delay_ms)),
        )),
        Request::Touch {
            group,
            member,
            items,
        } => settle(broker.touch(&group, member, &to_items(&items))),
        Request::CommitOffset {
            group,
            partition,
            offset,
        } => {
            broker
                .commit_offset(&group, PartitionId(partition), Offset(offset))
                .await
                .map_err(fail)?;
            Ok(Response::CommitOffset)
        }
        Request::CommittedOffsets { group } => Ok(Response::CommittedOffsets(
            broker
                .committed_offsets(&group)
                .map_err(fail)?
                .into_iter()
                .map(|(p, o)| (p.0, o.map(|o| o.0)))
                .collect(),
        )),
        Request::ListGroups => Ok(Response::ListGroups(
            broker.list_groups().iter().map(to_wire).collect(),
        )),
        Request::DescribeGroup { group } => Ok(Response::DescribeGroup(to_wire(
            &broker.describe_group(&group).map_err(fail)?,
        ))),
        _ => Err(error(
            ErrorCode::Internal,
            "group handler got another request",
        )),
    }
}

/// Resets a group (blocking: the server runs it on a blocking thread).
pub fn reset(broker: &Broker, group: &str, to: WireResetTarget) -> Result<Response, ErrorResponse> {
    broker
        .reset_group(group, to.into())
        .map(|()| Response::ResetGroup)
        .map_err(|e| response_for(&e))
}

fn to_items(items: &[(u32, u64)]) -> Vec<(PartitionId, Offset)> {
    items
        .iter()
        .map(|&(p, o)| (PartitionId(p), Offset(o)))
        .collect()
}

fn settle(
    results: Result<Vec<SettleResult>, crate::BrokerError>,
) -> Result<Response, ErrorResponse> {
    let results = results.map_err(|e| response_for(&e))?;
    Ok(Response::Settle(
        results.into_iter().map(WireSettle::from).collect(),
    ))
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
