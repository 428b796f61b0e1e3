//! One module per request kind: each turns a decoded request into a
//! response using the broker, and knows nothing of sockets.

use spool_protocol::{ErrorCode, ErrorResponse};

use crate::broker::Broker;
use crate::server::errors::error;

/// Runs a handler that touches the disk synchronously (creating or deleting
/// topics and groups, fsyncs, directory removal, full scans) on tokio's
/// blocking pool, so no async worker ever waits on the disk.
pub async fn on_blocking_thread<T: Send + 'static>(
    broker: &Broker,
    handler: impl FnOnce(&Broker) -> Result<T, ErrorResponse> + Send + 'static,
) -> Result<T, ErrorResponse> {
    let broker = broker.clone();
    crate::simulation::spawn_blocking(move || handler(&broker))
        .await
        .unwrap_or_else(|join| {
            Err(error(
                ErrorCode::Internal,
                format!("admin task failed: {join}"),
            ))
        })
}

pub mod cluster;
pub mod cluster_groups;
pub mod cluster_queues;
pub mod fetch;
pub mod groups;
pub mod handshake;
pub mod locks;
pub mod produce;
pub mod replica;
pub mod security;
pub mod status;
pub mod topics;
