//! The standalone server: a TCP listener speaking the Spool protocol to the
//! [`crate::Broker`], plus an HTTP endpoint for `/metrics` and `/health`.
//!
//! Shape (after mini-redis): [`Server::run`] accepts connections up to a
//! limit and spawns one `connection` task each; `handlers` turn requests
//! into responses; shutdown is a cancellation token that stops accepting,
//! lets every connection finish what it accepted, then closes the broker
//! (flushing every partition).

mod connection;
mod errors;
mod handlers;
pub mod http;

use crate::cluster::node::ClusterNode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::broker::{Broker, TopicConfig};
use crate::metrics;

pub use connection::ConnectionLimits;
pub use tokio_util::sync::CancellationToken;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most client connections at once; more are refused with an error.
    pub max_connections: usize,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// Settings for topics whose creator left them unset.
    pub topic_defaults: TopicConfig,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// This broker's part in a cluster; `None` for a single-node server.
    pub cluster: Option<Arc<ClusterNode>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            limits: ConnectionLimits::default(),
            topic_defaults: TopicConfig::new(1),
            shutdown_grace: Duration::from_secs(30),
            cluster: None,
        }
    }
}

/// What every connection task shares.
pub struct ServerContext {
    /// The broker.
    pub broker: Broker,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// Defaults for topic creation.
    pub topic_defaults: TopicConfig,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// This broker's part in a cluster; `None` for a single-node server.
    pub cluster: Option<Arc<ClusterNode>>,
    /// The address clients reach this server at (single-node metadata).
    pub advertised: String,
}

/// A bound, not yet running, server.
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    ctx: Arc<ServerContext>,
}

impl Server {
    /// Binds the listener.
    pub async fn bind(
        addr: SocketAddr,
        broker: Broker,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        metrics::register_all();
        let ctx = Arc::new(ServerContext {
            broker,
            limits: config.limits.clone(),
            topic_defaults: config.topic_defaults.clone(),
            shutdown: CancellationToken::new(),
            cluster: config.cluster.clone(),
            advertised: listener.local_addr()?.to_string(),
        });
        Ok(Server {
            listener,
            config,
            ctx,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, waits for
    /// connections to finish (up to the grace period) and closes the broker.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), crate::BrokerError> {
        let Server {
            listener,
            config,
            ctx,
        } = self;
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(ok) => ok,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::CONNECTIONS_REJECTED.inc();
                tracing::warn!(%peer, limit = config.max_connections, "refusing connection: limit reached");
                connections.spawn(refuse(stream));
                continue;
            };
            metrics::CONNECTIONS_TOTAL.inc();
            metrics::CONNECTIONS.inc();
            let ctx = ctx.clone();
            let token = ctx.shutdown.clone();
            connections.spawn(async move {
                connection::serve(stream, ctx, token).await;
                metrics::CONNECTIONS.dec();
                drop(slot);
            });
        }
        tracing::info!(
            connections = connections.len(),
            "shutting down: finishing in-flight requests"
        );
        drop(listener);
        ctx.shutdown.cancel();
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
            connections.abort_all();
        }
        ctx.broker.close()?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Tells a client over the connection limit why it is refused, then closes.
async fn refuse(stream: tokio::net::TcpStream) {
    use futures_util::SinkExt;
    let mut sink =
        tokio_util::codec::FramedWrite::new(stream, spool_protocol::FrameCodec::default());
    let frame = errors::error(
        spool_protocol::ErrorCode::TooManyConnections,
        "connection limit reached",
    )
    .to_frame(0, 0);
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
}
