//! Requests as a clustered broker answers them: metadata, whether this
//! broker serves a partition, and admin changes committed through the
//! control plane.

use spool_protocol::requests::{
    AddVoterRequest, CreateTopicRequest, DeleteTopicRequest, MetadataResponse, RemoveBrokerRequest,
    WireBroker, WirePartitionLeader, WireReplica, WireTopicLeaders,
};
use spool_protocol::{ErrorCode, ErrorResponse, PartitionId};

use crate::broker::{Broker, TopicConfig};
use crate::cluster::node::{ClusterAdminError, ClusterNode, NotServed};
use crate::server::errors::{error, response_for};
use crate::server::handlers::topics;

/// `Ok` if this broker serves `(topic, partition)` now (its writes, or
/// only its reads); otherwise the error that tells the client where to go.
pub fn check_serves(
    node: &ClusterNode,
    topic: &str,
    partition: u32,
    write: bool,
) -> Result<(), ErrorResponse> {
    node.check_serves(topic, PartitionId(partition), write)
        .map_err(|why| refusal(why, &format!("topic {topic}")))
}

/// The error that tells a client why this broker does not serve `what`
/// (a partition, a group) and where to go instead.
pub fn refusal(why: NotServed, what: &str) -> ErrorResponse {
    match why {
        NotServed::NotLeader { leader, addr } => {
            crate::metrics::NOT_LEADER.inc();
            error(ErrorCode::NotLeader, format!("leader {leader} at {addr}"))
        }
        NotServed::Unavailable(reason) => error(ErrorCode::PartitionUnavailable, reason),
        NotServed::UnknownTopic => error(ErrorCode::TopicNotFound, format!("{what} not found")),
    }
}

/// The cluster's brokers and every partition's leader.
pub fn metadata(node: &ClusterNode) -> MetadataResponse {
    let state = node.state();
    let (ages, term) = node.lease_view();
    let voters = node.voters();
    MetadataResponse {
        epoch: state.placement_epoch,
        controller: node.controller().map(|n| n.0),
        term,
        brokers: state
            .members
            .values()
            .map(|m| WireBroker {
                id: m.id.0,
                addr: m.client_addr.clone(),
                alive: state.is_alive(m.id),
                lease_age_ms: ages.get(&m.id).map(|a| a.as_millis() as u64),
                voter: voters.contains(&m.id),
            })
            .collect(),
        topics: state
            .topics
            .iter()
            .map(|(name, spec)| WireTopicLeaders {
                name: name.clone(),
                partitions: (0..spec.config.partitions)
                    .map(|p| {
                        let assignment = state.assignment(name, PartitionId(p));
                        WirePartitionLeader {
                            partition: p,
                            leader: state.leader(name, PartitionId(p)).map(|n| n.0),
                            leader_epoch: assignment.map_or(0, |a| a.leader_epoch),
                            replicas: assignment
                                .map(|a| {
                                    a.replicas
                                        .iter()
                                        .map(|r| WireReplica {
                                            broker: r.0,
                                            in_sync: a.in_sync.contains(r),
                                            lag: node.replicas().lag(name, p, *r),
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A single-node server's metadata: itself, leading everything.
pub fn single_node_metadata(broker: &Broker, addr: &str) -> MetadataResponse {
    MetadataResponse {
        epoch: 0,
        controller: None,
        term: 0,
        brokers: vec![WireBroker {
            id: 0,
            addr: addr.to_string(),
            alive: true,
            lease_age_ms: None,
            voter: false,
        }],
        topics: broker
            .list_topics()
            .iter()
            .map(|t| WireTopicLeaders {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| WirePartitionLeader {
                        partition: p.partition.0,
                        leader: Some(0),
                        leader_epoch: 0,
                        replicas: vec![WireReplica {
                            broker: 0,
                            in_sync: true,
                            lag: Some(0),
                        }],
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Creates a topic through the control plane.
pub async fn create_topic(
    node: &ClusterNode,
    defaults: &TopicConfig,
    request: &CreateTopicRequest,
) -> Result<(), ErrorResponse> {
    let config = topics::config_for(defaults, request);
    // By default three copies, or one per broker in a smaller cluster.
    let replication = request
        .settings
        .replication
        .unwrap_or_else(|| node.state().eligible().len().clamp(1, 3) as u32);
    node.create_topic(&request.name, config, replication)
        .await
        .map_err(|e| admin_error(&e))
}

/// Deletes a topic through the control plane.
pub async fn delete_topic(
    node: &ClusterNode,
    request: &DeleteTopicRequest,
) -> Result<(), ErrorResponse> {
    node.delete_topic(&request.name)
        .await
        .map_err(|e| admin_error(&e))
}

/// The error for an admin change that did not happen.
pub fn admin_error(e: &ClusterAdminError) -> ErrorResponse {
    match e {
        ClusterAdminError::Broker(e) => response_for(e),
        ClusterAdminError::Control(e) => error(ErrorCode::ClusterUnavailable, e.to_string()),
        ClusterAdminError::NotEnoughBrokers(why) => error(ErrorCode::NotEnoughReplicas, why),
    }
}

/// Makes a member a voter of the control plane.
pub async fn add_voter(node: &ClusterNode, request: &AddVoterRequest) -> Result<(), ErrorResponse> {
    match node
        .add_voter(crate::cluster::NodeId(request.id))
        .await
        .map_err(|e| admin_error(&e))?
    {
        crate::cluster::Outcome::Refused(reason) => Err(error(ErrorCode::InvalidConfig, reason)),
        _ => Ok(()),
    }
}

/// Removes a broker (draining it first unless forced).
pub async fn remove_broker(
    node: &ClusterNode,
    request: &RemoveBrokerRequest,
) -> Result<(), ErrorResponse> {
    match node
        .remove_member(crate::cluster::NodeId(request.id), request.force)
        .await
        .map_err(|e| admin_error(&e))?
    {
        crate::cluster::Outcome::Refused(reason) => Err(error(ErrorCode::InvalidConfig, reason)),
        _ => Ok(()),
    }
}
