//! Topic administration: create, delete, list, describe.

use spool_protocol::requests::{
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, ListTopicsResponse,
    WirePartition, WireSync, WireTopic,
};
use spool_protocol::ErrorResponse;

use crate::broker::{Broker, TopicConfig, TopicInfo};
use crate::server::errors::response_for;
use crate::storage::SyncPolicy;

/// Creates a topic; settings the client left unset come from `defaults`.
pub fn create(
    broker: &Broker,
    defaults: &TopicConfig,
    request: &CreateTopicRequest,
) -> Result<(), ErrorResponse> {
    if let Some(n) = request.settings.replication.filter(|&n| n > 1) {
        return Err(crate::server::errors::error(
            spool_protocol::ErrorCode::InvalidConfig,
            format!("replication {n} needs a cluster; a single server keeps one copy"),
        ));
    }
    broker
        .create_topic(&request.name, config_for(defaults, request))
        .map_err(|e| response_for(&e))
}

/// The configuration a create request asks for: its settings over
/// `defaults`.
pub fn config_for(defaults: &TopicConfig, request: &CreateTopicRequest) -> TopicConfig {
    let settings = &request.settings;
    let mut config = defaults.clone();
    if request.partitions != 0 {
        config.partitions = request.partitions;
    }
    if let Some(sync) = settings.sync {
        config.log.sync = sync.into();
    }
    if let Some(size) = settings.segment_size_bytes {
        config.log.segment_size_bytes = size;
    }
    if let Some(ms) = settings.retention_ms {
        config.log.retention_ms = (ms != 0).then_some(ms);
    }
    if let Some(bytes) = settings.retention_bytes {
        config.log.retention_bytes = (bytes != 0).then_some(bytes);
    }
    config
}

/// Deletes a topic.
pub fn delete(broker: &Broker, request: &DeleteTopicRequest) -> Result<(), ErrorResponse> {
    broker
        .delete_topic(&request.name)
        .map_err(|e| response_for(&e))
}

/// Lists all topics.
pub fn list(broker: &Broker) -> ListTopicsResponse {
    ListTopicsResponse {
        topics: broker.list_topics().iter().map(to_wire).collect(),
    }
}

/// Describes one topic.
pub fn describe(
    broker: &Broker,
    request: &DescribeTopicRequest,
) -> Result<WireTopic, ErrorResponse> {
    broker
        .describe_topic(&request.name)
        .map(|t| to_wire(&t))
        .map_err(|e| response_for(&e))
}

// The one conversion between the wire's and storage's sync policies; the
// client and the command line use it too (`.into()`).
impl From<SyncPolicy> for WireSync {
    fn from(sync: SyncPolicy) -> WireSync {
        match sync {
            SyncPolicy::Always => WireSync::Always,
            SyncPolicy::Interval { ms } => WireSync::Interval(ms),
            SyncPolicy::Never => WireSync::Never,
        }
    }
}

impl From<WireSync> for SyncPolicy {
    fn from(sync: WireSync) -> SyncPolicy {
        match sync {
            WireSync::Always => SyncPolicy::Always,
            WireSync::Interval(ms) => SyncPolicy::Interval { ms },
            WireSync::Never => SyncPolicy::Never,
        }
    }
}

fn to_wire(t: &TopicInfo) -> WireTopic {
    WireTopic {
        name: t.name.clone(),
        sync: t.config.log.sync.into(),
        segment_size_bytes: t.config.log.segment_size_bytes,
        retention_ms: t.config.log.retention_ms.unwrap_or(0),
        retention_bytes: t.config.log.retention_bytes.unwrap_or(0),
        partitions: t
            .partitions
            .iter()
            .map(|p| WirePartition {
                partition: p.partition.0,
                start: p.start.0,
                end: p.end.0,
            })
            .collect(),
    }
}
