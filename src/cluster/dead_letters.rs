//! Dead letters in a cluster: a queue group's `<group>.dlq` is a cluster
//! topic like any other, so the partition's leader that gives up on a
//! message writes it there through the topic's leader (with `acks=all`),
//! not into its own copy of the topic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use bytes::Bytes;

use crate::broker::{BrokerError, DeadLetterSink};
use crate::cluster::node::ClusterNode;

/// Writes dead letters to their topic's leader, wherever it is.
pub(super) struct ClusterDeadLetters {
    /// Weak: the broker holds the sink, and the node holds the broker.
    pub(super) node: Weak<ClusterNode>,
}

impl DeadLetterSink for ClusterDeadLetters {
    fn write(
        &self,
        topic: String,
        batch: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>> {
        let node = self.node.upgrade();
        Box::pin(async move {
            let unavailable = |reason: String| BrokerError::DeadLetterUnavailable {
                topic: topic.clone(),
                reason,
            };
            let node = node.ok_or(BrokerError::Closed)?;
            let state = node.state();
            let me = state
                .members
                .get(&node.id())
                .map(|m| m.client_addr.clone())
                .ok_or_else(|| unavailable("this broker is not a member yet".into()))?;
            // The client finds the partition's leader itself (this broker
            // included) and follows it when it moves.
            let client = node.client_to(&me).await.map_err(unavailable)?;
            client
                .produce_batch(&topic, 0, batch)
                .await
                .map(|_| ())
                .map_err(|e| unavailable(e.to_string()))
        })
    }
}
