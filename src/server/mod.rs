//! The standalone server: a TCP listener speaking the Spool protocol to the
//! [`crate::Broker`], plus an HTTP endpoint for `/metrics` and `/health`.
//!
//! Shape (after mini-redis): [`Server::run`] accepts connections up to a
//! limit and spawns one `connection` task each; `handlers` turn requests
//! into responses; shutdown is a cancellation token that stops accepting,
//! lets every connection finish what it accepted, then closes the broker
//! (flushing every partition).

pub(crate) mod connection;
pub mod console;
pub mod display;
mod errors;
mod frame_reader;
mod handlers;
pub mod http;
pub mod tls;

use crate::cluster::node::ClusterNode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spool_client::transport::{Listener, Socket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::broker::{Broker, TopicConfig};
use crate::metrics;

pub use connection::ConnectionLimits;
use frame_reader::FrameBudget;
pub use tokio_util::sync::CancellationToken;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most client connections at once; more are refused with an error.
    pub max_connections: usize,
    /// Most client connections at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// Bytes of request frames that all connections together may hold while
    /// they are received and until they are appended (or decoded). A frame
    /// larger than this takes all of it.
    pub frame_memory: usize,
    /// Settings for topics whose creator left them unset.
    pub topic_defaults: TopicConfig,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
    /// This broker's part in a cluster; `None` for a single-node server.
    pub cluster: Option<Arc<ClusterNode>>,
    /// TLS on the client port; `None`: plain TCP.
    pub tls: Option<tls::ServerTls>,
    /// Users and access rules: every connection must authenticate and
    /// every request is checked. `None`: anyone who reaches the port may do
    /// everything.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The cluster's mutual TLS: a client certificate it signed is a
    /// broker's.
    pub peer_tls: Option<crate::cluster::peer_tls::PeerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 1024,
            max_connections_per_ip: 512,
            limits: ConnectionLimits::default(),
            frame_memory: DEFAULT_FRAME_MEMORY,
            topic_defaults: TopicConfig::new(1),
            shutdown_grace: Duration::from_secs(30),
            cluster: None,
            tls: None,
            auth: None,
            peer_tls: None,
        }
    }
}

/// Default [`ServerConfig::frame_memory`]: four of the largest frames.
pub const DEFAULT_FRAME_MEMORY: usize = 256 * 1024 * 1024;

/// What every connection task shares.
pub struct ServerContext {
    /// The broker.
    pub broker: Broker,
    /// Per-connection limits.
    pub limits: ConnectionLimits,
    /// Memory for frames being received, shared by all connections.
    frame_budget: FrameBudget,
    /// Defaults for topic creation.
    pub topic_defaults: TopicConfig,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// This broker's part in a cluster; `None` for a single-node server.
    pub cluster: Option<Arc<ClusterNode>>,
    /// The address clients reach this server at (single-node metadata).
    pub advertised: String,
    /// When the server started.
    pub started: std::time::Instant,
    /// Users and access rules, when authentication is on.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The cluster's mutual TLS, to tell brokers' certificates.
    pub peer_tls: Option<crate::cluster::peer_tls::PeerTls>,
    /// The client port speaks TLS.
    pub tls_on: bool,
}

/// A bound, not yet running, server.
pub struct Server {
    listener: Listener,
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
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Server::with_listener(listener.into(), broker, config)
    }

    /// A server on a listener already bound (so that a busy port is found
    /// before the broker opens its data directory), of TCP or of another
    /// network ([`spool_client::transport`]).
    pub fn with_listener(
        listener: Listener,
        broker: Broker,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        metrics::register_all();
        let ctx = Arc::new(ServerContext {
            broker,
            limits: config.limits.clone(),
            frame_budget: FrameBudget::new(config.frame_memory),
            topic_defaults: config.topic_defaults.clone(),
            shutdown: CancellationToken::new(),
            cluster: config.cluster.clone(),
            advertised: listener.local_addr()?.to_string(),
            started: std::time::Instant::now(),
            auth: config.auth.clone(),
            peer_tls: config.peer_tls.clone(),
            tls_on: config.tls.is_some(),
        });
        Ok(Server {
            listener,
            config,
            ctx,
        })
    }

    /// What its connections share: the console's admin actions go
    /// through the same dispatch.
    pub fn context(&self) -> Arc<ServerContext> {
        self.ctx.clone()
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
        if let (Some(node), Some(auth)) = (&ctx.cluster, &ctx.auth) {
            // In a cluster, users, rules and quotas are the Raft state's.
            tokio::spawn(node.clone().mirror_security(auth.clone()));
        }
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let per_ip = Arc::new(PerSource::new(config.max_connections_per_ip));
        let mut refusals = RefusalLog::default();
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
            let Some(source) = per_ip.admit(peer.ip()) else {
                metrics::CONNECTIONS_REJECTED.inc();
                refusals.note(peer, "per-address", config.max_connections_per_ip);
                connections.spawn(refuse(stream, "connection limit per address reached"));
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::CONNECTIONS_REJECTED.inc();
                refusals.note(peer, "server", config.max_connections);
                connections.spawn(refuse(stream, "connection limit reached"));
                continue;
            };
            metrics::CONNECTIONS_TOTAL.inc();
            metrics::CONNECTIONS.inc();
            let ctx = ctx.clone();
            let token = ctx.shutdown.clone();
            let tls = config.tls.clone();
            connections.spawn(async move {
                connection::serve(stream, peer, tls.as_ref(), ctx, token).await;
                metrics::CONNECTIONS.dec();
                drop(slot);
                drop(source);
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

/// Connections open per source address, against a limit.
struct PerSource {
    limit: usize,
    open: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admitted connection of a source: counted until dropped.
struct SourceSlot {
    ip: std::net::IpAddr,
    sources: Arc<PerSource>,
}

impl PerSource {
    fn new(limit: usize) -> PerSource {
        PerSource {
            limit: limit.max(1),
            open: parking_lot::Mutex::default(),
        }
    }

    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            ip,
            sources: self.clone(),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Logs refused connections at most once a second, with how many were
/// refused since the last line (a flood of attempts must not flood the log).
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn note(&mut self, peer: SocketAddr, which: &str, limit: usize) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(%peer, limit, also_refused = self.suppressed, "refusing connection: {which} limit reached");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Tells a client over a connection limit why it is refused, then closes.
async fn refuse(stream: Socket, why: &'static str) {
    use futures_util::SinkExt;
    let mut sink =
        tokio_util::codec::FramedWrite::new(stream, spool_protocol::FrameCodec::default());
    let frame = errors::error(spool_protocol::ErrorCode::TooManyConnections, why).to_frame(0, 0);
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(frame)).await;
}
