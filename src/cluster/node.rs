//! A broker in a cluster: its control-plane node, and what the server asks
//! of it: may this broker serve that partition, commit this admin change,
//! and keep the local broker's topics in step with the committed state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spool_protocol::PartitionId;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, TopicConfig};
use crate::cluster::placement::NodeId;
use crate::cluster::raft::{ControlPlane, ControlPlaneError};
use crate::cluster::state::{ClusterState, Command, Outcome, TopicSpec};

/// How long an admin change may wait for the control plane (an election
/// takes up to about 2 s).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this broker will not serve a partition now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    /// Another broker serves it.
    NotLeader {
        /// Its id.
        leader: NodeId,
        /// Where clients reach it.
        addr: String,
    },
    /// No broker may serve it now: its broker's lease has lapsed, or this
    /// broker's own lease has.
    Unavailable(String),
    /// The cluster has no such topic.
    UnknownTopic,
}

/// This broker's membership in a cluster.
pub struct ClusterNode {
    control: ControlPlane,
    broker: Broker,
    stop: CancellationToken,
}

impl ClusterNode {
    /// Wraps a started control plane and keeps `broker`'s topics in step
    /// with the committed state until shut down.
    pub fn new(control: ControlPlane, broker: Broker) -> Arc<ClusterNode> {
        let node = Arc::new(ClusterNode {
            control,
            broker,
            stop: CancellationToken::new(),
        });
        tokio::spawn(sync_topics(
            node.control.state.clone(),
            node.broker.clone(),
            node.stop.clone(),
        ));
        node
    }

    /// This broker's id.
    pub fn id(&self) -> NodeId {
        self.control.id
    }

    /// The committed cluster state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.control.state.borrow().clone()
    }

    /// The control plane's Raft leader, if known.
    pub fn controller(&self) -> Option<NodeId> {
        self.control.leader()
    }

    /// Whether this broker may serve `(topic, partition)` now.
    pub fn check_serves(&self, topic: &str, partition: PartitionId) -> Result<(), NotServed> {
        let state = self.state();
        if !state.topics.contains_key(topic) {
            return Err(NotServed::UnknownTopic);
        }
        match state.leader(topic, partition) {
            Some(leader) if leader == self.id() => {
                if self.control.lease_valid() {
                    Ok(())
                } else {
                    // Refuse before the Raft leader could count us out.
                    Err(NotServed::Unavailable(format!(
                        "broker {} leads {topic}/{partition} but its own lease has lapsed",
                        self.id()
                    )))
                }
            }
            Some(leader) => Err(NotServed::NotLeader {
                leader,
                addr: state
                    .members
                    .get(&leader)
                    .map(|m| m.client_addr.clone())
                    .unwrap_or_default(),
            }),
            None => Err(NotServed::Unavailable(format!(
                "{topic}/{partition} lives on broker {}, whose lease has lapsed",
                state
                    .owner(topic, partition)
                    .map_or_else(|| "none".to_string(), |o| o.to_string())
            ))),
        }
    }

    /// Creates a topic cluster-wide (committed through Raft), then here.
    pub async fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
        replication: u32,
    ) -> Result<(), ClusterAdminError> {
        config
            .log
            .validate()
            .map_err(|e| ClusterAdminError::Broker(BrokerError::InvalidConfig(e.to_string())))?;
        let command = Command::CreateTopic {
            name: name.to_string(),
            spec: TopicSpec {
                config,
                replication,
            },
        };
        match self.control.submit(command, ADMIN_TIMEOUT).await? {
            Outcome::Refused(_) => Err(ClusterAdminError::Broker(BrokerError::TopicExists(
                name.to_string(),
            ))),
            _ => {
                self.wait_applied(|s| s.topics.contains_key(name)).await;
                ensure_local(&self.broker, name, &self.state());
                Ok(())
            }
        }
    }

    /// Deletes a topic cluster-wide.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterAdminError> {
        match self
            .control
            .submit(Command::DeleteTopic(name.to_string()), ADMIN_TIMEOUT)
            .await?
        {
            Outcome::Refused(_) => Err(ClusterAdminError::Broker(BrokerError::TopicNotFound(
                name.to_string(),
            ))),
            _ => {
                self.wait_applied(|s| !s.topics.contains_key(name)).await;
                Ok(())
            }
        }
    }

    /// Waits (briefly) until this broker has applied what was committed.
    async fn wait_applied(&self, done: impl Fn(&ClusterState) -> bool) {
        let mut state = self.control.state.clone();
        let _ = tokio::time::timeout(ADMIN_TIMEOUT, state.wait_for(|s| done(s))).await;
    }

    /// Stops the control plane.
    pub async fn shutdown(self: Arc<Self>) {
        self.stop.cancel();
        match Arc::try_unwrap(self) {
            Ok(node) => node.control.shutdown().await,
            Err(_) => tracing::debug!("cluster node still shared at shutdown"),
        }
    }
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id())
            .finish()
    }
}

/// An admin change that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterAdminError {
    /// The control plane could not commit it in time.
    #[error("{0}")]
    Control(#[from] ControlPlaneError),
    /// The broker refused it.
    #[error("{0}")]
    Broker(BrokerError),
}

/// Creates the topic locally (every partition; only the ones this broker
/// leads are served) if the committed state has it and the broker does not.
fn ensure_local(broker: &Broker, name: &str, state: &ClusterState) {
    let Some(spec) = state.topics.get(name) else {
        return;
    };
    if broker.describe_topic(name).is_ok() {
        return;
    }
    match broker.create_topic(name, spec.config.clone()) {
        Ok(()) | Err(BrokerError::TopicExists(_)) => {}
        Err(e) => tracing::error!(topic = name, error = %e, "cannot create a committed topic here"),
    }
}

/// Applies committed topic changes to the local broker: creates committed
/// topics it lacks, and deletes a topic only when a committed deletion
/// removed it (a local topic the cluster never had is left alone).
async fn sync_topics(
    mut state: tokio::sync::watch::Receiver<Arc<ClusterState>>,
    broker: Broker,
    stop: CancellationToken,
) {
    let mut known: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        let now = state.borrow_and_update().clone();
        let broker2 = broker.clone();
        let gone: Vec<String> = known
            .keys()
            .filter(|t| !now.topics.contains_key(*t))
            .cloned()
            .collect();
        let names: Vec<String> = now.topics.keys().cloned().collect();
        let snapshot = now.clone();
        // Topic creation and deletion touch files: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            for name in &names {
                ensure_local(&broker2, name, &snapshot);
            }
            for name in &gone {
                tracing::info!(topic = %name, "deleting a topic the cluster deleted");
                if let Err(e) = broker2.delete_topic(name) {
                    tracing::warn!(topic = %name, error = %e, "cannot delete a deleted topic here");
                }
            }
        })
        .await;
        known = now.topics.keys().map(|t| (t.clone(), ())).collect();
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}
