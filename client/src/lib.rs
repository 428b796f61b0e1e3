//! `spool-client`: the async client for a Spool server: admin calls, a batching
//! [`Producer`] and a prefetching [`Consumer`].
//!
//! ```no_run
//! use spool_client::{Client, Producer, ProducerConfig, Consumer, ConsumerConfig, StartAt};
//!
//! # async fn demo() -> Result<(), spool_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7070".parse().unwrap()).await?;
//! client.create_topic("events", 4, Default::default()).await?;
//!
//! let producer = Producer::new(client.clone(), ProducerConfig::default());
//! let delivery = producer.send("events", Some(b"user-1".as_slice()), "signed up").await?;
//! producer.flush().await?;
//! let stored = delivery.await?; // partition and offset of the message
//! println!("stored at {}/{}", stored.partition, stored.offset);
//!
//! let mut consumer = Consumer::new(client, "events", StartAt::Earliest, ConsumerConfig::default()).await?;
//! while let Some(message) = consumer.next().await {
//!     let message = message?;
//!     println!("{}: {:?}", message.offset, message.value);
//! }
//! # Ok(()) }
//! ```

mod accumulator;
mod connection;
mod consumer;
pub mod dead_letters;
mod delivery;
mod group;
mod locks;
mod producer;
mod queue_consumer;
mod routing;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use spool_protocol::requests::{
    CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, FindCoordinatorRequest,
    LeaveGroupRequest, ListTopicsRequest, MetadataRequest, ProduceRequest, TopicSettings,
    WireTopic,
};
use spool_protocol::{Call, ErrorCode};
use thiserror::Error;
use tokio::sync::Mutex;

pub use self::connection::{ConnectOptions, Connection, Credentials};
pub use self::consumer::{ConsumedMessage, Consumer, ConsumerConfig, StartAt};
pub use self::dead_letters::{DeadLetter, ReplayOptions, ReplayReport};
pub use self::group::GroupConsumer;
pub use self::locks::{LockGuard, LockOptions, Session};
pub use self::producer::{system_clock_ms, Delivery, DeliveryFuture, Producer, ProducerConfig};
pub use self::queue_consumer::{QueueConsumer, QueueOptions, QueuedMessage, Settled};
pub use self::tls::TlsOptions;
pub use spool_protocol::requests::{
    Acks, TopicSettings as TopicOptions, WireSync, WireTopic as TopicDescription,
};

/// How long [`Client::call_group`] keeps finding a moving coordinator:
/// a lease TTL for the old one to be counted out plus a Raft election,
/// with room to spare on a loaded machine.
pub const GROUP_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// What a client call can fail with.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// Could not reach the server.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The last error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The connection broke; the request may or may not have been applied.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The server answered with an error.
    #[error("{message} (server error {}, code {raw_code})", code.map_or_else(|| "unknown".to_string(), |c| format!("{c:?}")))]
    Server {
        /// The code, if this client knows it.
        code: Option<ErrorCode>,
        /// The code as sent.
        raw_code: u16,
        /// The server's explanation.
        message: String,
    },
    /// The server's answer did not make sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request is invalid before it is sent (e.g. an unknown topic).
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => *code,
            _ => None,
        }
    }

    /// True if the same request may succeed later.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Disconnected(_) | ClientError::Connect { .. } => true,
            ClientError::Server { code, .. } => code.is_some_and(|c| c.is_retriable()),
            _ => false,
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Disconnected(e.to_string())
    }
}

/// A handle to a server or a cluster. Cheap to clone; clones share one
/// pipelined connection per broker, re-established on the next call after
/// it breaks. In a cluster it sends each partition's requests to the
/// partition's leader, learning where that is from the brokers.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    options: ConnectOptions,
    conn: Arc<Mutex<Arc<Connection>>>,
    /// Where partitions live, once a broker said it is not this one.
    routes: Arc<parking_lot::RwLock<Option<Arc<routing::Routes>>>>,
    /// Connections to other brokers, by address.
    brokers: Arc<Mutex<std::collections::HashMap<String, Arc<Connection>>>>,
    /// Set once metadata was asked for (a single-node server has no routes).
    routes_checked: Arc<std::sync::atomic::AtomicBool>,
    /// Each group's coordinator's address, once asked (clusters only).
    coordinators: Arc<parking_lot::RwLock<std::collections::HashMap<String, String>>>,
}

impl Client {
    /// Connects with default options.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(
        addr: SocketAddr,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let conn = Connection::connect(addr, &options).await?;
        Ok(Client {
            addr,
            options,
            conn: Arc::new(Mutex::new(Arc::new(conn))),
            routes: Arc::default(),
            brokers: Arc::default(),
            routes_checked: Arc::default(),
            coordinators: Arc::default(),
        })
    }

    /// Connects to the first of `addrs` that answers (a cluster's
    /// bootstrap list: any broker will do, it tells the client the rest).
    pub async fn connect_any(
        addrs: &[SocketAddr],
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let mut last = ClientError::Invalid("no address given".into());
        for &addr in addrs {
            match Client::connect_with(addr, options.clone()).await {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The connection for `(topic, partition)`: its leader's, if a broker
    /// has told this client where that is, else the default one.
    pub async fn partition_connection(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Connection>, ClientError> {
        let leader = self
            .routes
            .read()
            .as_ref()
            .and_then(|r| r.leader(topic, partition).map(str::to_string));
        // Always by address: the home connection may have moved to another
        // broker while this one was down, and would then carry the
        // partition's requests to a broker that does not lead it.
        match leader {
            Some(addr) => self.broker_connection(&addr).await,
            None => self.connection().await,
        }
    }

    /// Every broker's address, alive ones first (empty for a single
    /// server, or before routes were learnt).
    /// True once metadata has shown the server to be part of a cluster.
    pub(crate) fn is_clustered(&self) -> bool {
        self.routes.read().is_some()
    }

    pub(crate) fn broker_addrs(&self) -> Vec<String> {
        self.routes
            .read()
            .as_ref()
            .map(|r| r.brokers.clone())
            .unwrap_or_default()
    }

    pub(crate) async fn broker_connection(
        &self,
        addr: &str,
    ) -> Result<Arc<Connection>, ClientError> {
        let mut brokers = self.brokers.lock().await;
        if let Some(conn) = brokers.get(addr).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let sock: SocketAddr = addr.parse().map_err(|_| {
            ClientError::Protocol(format!("broker address {addr:?} is not an address"))
        })?;
        // One attempt: a partition leader that refuses connections may be
        // dead, and only fresh metadata (the caller's retry) says who
        // leads now; backing off on the dead address would only wait.
        let options = ConnectOptions {
            connect_attempts: 1,
            ..self.options.clone()
        };
        let conn = Arc::new(Connection::connect(sock, &options).await?);
        brokers.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// Sends a request about `(topic, partition)` to the broker that serves
    /// it. A broker that says it does not serve it makes the client refresh
    /// its routes and try once more at once; what still fails is returned
    /// (retriable, if the partition is only unavailable for now).
    pub async fn call_partition<C: Call>(
        &self,
        topic: &str,
        partition: u32,
        request: &C,
    ) -> Result<C::Reply, ClientError> {
        let first = match self.partition_connection(topic, partition).await {
            Ok(conn) => conn.call(request).await,
            Err(e) => Err(e),
        };
        match first {
            Err(e) if routing::is_routing_error(&e) => {
                self.refresh_routes().await;
                self.partition_connection(topic, partition)
                    .await?
                    .call(request)
                    .await
            }
            other => other,
        }
    }

    /// Sends a request about consumer group `group` to the broker that
    /// coordinates it (in a cluster; a single server does everything).
    /// While the coordinator moves (its broker died, the membership
    /// changed) the client asks again where it is and retries, for up to
    /// [`GROUP_RETRY_BUDGET`]; what still fails is returned.
    pub async fn call_group<C: Call>(
        &self,
        group: &str,
        request: &C,
    ) -> Result<C::Reply, ClientError> {
        self.learn_routes().await;
        if self.routes.read().is_none() {
            return self.call(request).await;
        }
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let result = match self.coordinator_connection(group).await {
                Ok(conn) => conn.call(request).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) if e.is_retriable() && started.elapsed() < GROUP_RETRY_BUDGET => {
                    tracing::debug!(group, error = %e, "group coordinator moved or unreachable; asking again");
                    self.coordinators.write().remove(group);
                    self.refresh_routes().await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// The address of `group`'s coordinator, as last learned.
    pub(crate) fn coordinator_of(&self, group: &str) -> Option<String> {
        self.coordinators.read().get(group).cloned()
    }

    async fn coordinator_connection(&self, group: &str) -> Result<Arc<Connection>, ClientError> {
        let known = self.coordinators.read().get(group).cloned();
        let addr = match known {
            Some(addr) => addr,
            None => {
                let request = FindCoordinatorRequest {
                    group: group.to_string(),
                };
                let addr = self.call(&request).await?.addr;
                self.coordinators
                    .write()
                    .insert(group.to_string(), addr.clone());
                addr
            }
        };
        if addr == self.addr.to_string() {
            self.connection().await
        } else {
            self.broker_connection(&addr).await
        }
    }

    /// Asks a broker where every partition is now. Errors are logged and
    /// leave the old routes in place (the next failure asks again).
    pub async fn refresh_routes(&self) {
        match self.call(&MetadataRequest).await {
            Ok(metadata) => {
                let routes = routing::Routes::from_metadata(&metadata);
                tracing::debug!(epoch = ?routes.as_ref().map(|r| r.epoch), "routes refreshed");
                *self.routes.write() = routes;
            }
            Err(e) => tracing::debug!(error = %e, "metadata refresh failed"),
        }
    }

    /// Learns where partitions live before a producer or consumer starts on
    /// a topic, so its first requests already go to the right brokers (a
    /// retried first batch could otherwise overtake another). One metadata
    /// request the first time; nothing after.
    pub(crate) async fn learn_routes(&self) {
        let known = self.routes.read().is_some()
            || self
                .routes_checked
                .swap(true, std::sync::atomic::Ordering::AcqRel);
        if !known {
            self.refresh_routes().await;
        }
    }

    /// Refreshes the routes if `err` says a partition is served elsewhere;
    /// for retry loops that sent a request some other way.
    pub async fn note_error(&self, err: &ClientError) {
        if routing::is_routing_error(err) {
            self.refresh_routes().await;
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current connection, reconnecting if it broke. In a cluster, if
    /// the broker it was made to is gone, any other known broker will do
    /// (admin requests are forwarded; partition requests are routed).
    pub async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        let mut conn = self.conn.lock().await;
        if conn.is_closed() {
            // In a cluster other brokers can answer: one attempt at this
            // one, then the others.
            let clustered = self
                .routes
                .read()
                .as_ref()
                .is_some_and(|r| r.brokers.len() > 1);
            let options = ConnectOptions {
                connect_attempts: if clustered {
                    1
                } else {
                    self.options.connect_attempts
                },
                ..self.options.clone()
            };
            let fresh = match Connection::connect(self.addr, &options).await {
                Ok(fresh) => fresh,
                Err(first) => {
                    let others: Vec<String> = self
                        .routes
                        .read()
                        .as_ref()
                        .map(|r| r.brokers.clone())
                        .unwrap_or_default();
                    let mut found = None;
                    for addr in others.iter().filter(|a| **a != self.addr.to_string()) {
                        let Ok(sock) = addr.parse::<SocketAddr>() else {
                            continue;
                        };
                        if let Ok(c) = Connection::connect(sock, &options).await {
                            found = Some(c);
                            break;
                        }
                    }
                    found.ok_or(first)?
                }
            };
            *conn = Arc::new(fresh);
        }
        Ok(conn.clone())
    }

    /// Sends one request and waits for its reply (for requests this client
    /// has no method for).
    pub async fn call<C: Call>(&self, request: &C) -> Result<C::Reply, ClientError> {
        self.connection().await?.call(request).await
    }

    /// Leaves a group without waiting (for `Drop`, which cannot await). The
    /// server also drops a member when its connection closes; this makes it
    /// leave at once on a connection that stays open.
    pub(crate) fn leave_in_background(&self, group: &str, member: u64) {
        let client = self.clone();
        let request = LeaveGroupRequest {
            group: group.to_string(),
            member,
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let group = request.group.clone();
                let _ = client.call_group(&group, &request).await;
            });
        }
    }

    /// Creates a topic; unset settings take the server's defaults.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        settings: TopicSettings,
    ) -> Result<(), ClientError> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            partitions,
            settings,
        };
        self.call(&request).await
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = DeleteTopicRequest {
            name: name.to_string(),
        };
        self.call(&request).await
    }

    /// Lists topics with their partitions' offsets (in a cluster, each
    /// partition's as its leader has them).
    pub async fn list_topics(&self) -> Result<Vec<WireTopic>, ClientError> {
        let topics = self.call(&ListTopicsRequest).await?.topics;
        let mut merged = Vec::with_capacity(topics.len());
        for topic in topics {
            merged.push(self.with_leaders_offsets(topic).await?);
        }
        Ok(merged)
    }

    /// Describes one topic (in a cluster, each partition's offsets as its
    /// leader has them).
    pub async fn describe_topic(&self, name: &str) -> Result<WireTopic, ClientError> {
        let request = DescribeTopicRequest {
            name: name.to_string(),
        };
        let described = self.call(&request).await?;
        self.with_leaders_offsets(described).await
    }

    /// A broker describes its own copy of each partition, which in a
    /// cluster is current only for the partitions it leads: replaces every
    /// other partition's offsets with its leader's answer.
    async fn with_leaders_offsets(&self, mut topic: WireTopic) -> Result<WireTopic, ClientError> {
        self.learn_routes().await;
        let Some(routes) = self.routes.read().clone() else {
            return Ok(topic);
        };
        let mut by_leader: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for p in &topic.partitions {
            if let Some(addr) = routes.leader(&topic.name, p.partition) {
                by_leader
                    .entry(addr.to_string())
                    .or_default()
                    .push(p.partition);
            }
        }
        let request = DescribeTopicRequest {
            name: topic.name.clone(),
        };
        for (addr, partitions) in by_leader {
            let conn = if addr == self.addr.to_string() {
                self.connection().await?
            } else {
                self.broker_connection(&addr).await?
            };
            let theirs = conn.call(&request).await?;
            for slot in topic
                .partitions
                .iter_mut()
                .filter(|p| partitions.contains(&p.partition))
            {
                if let Some(fresh) = theirs
                    .partitions
                    .iter()
                    .find(|t| t.partition == slot.partition)
                {
                    *slot = *fresh;
                }
            }
        }
        Ok(topic)
    }

    /// Appends one prebuilt batch; returns `(base_offset, next_offset)`.
    pub async fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<(u64, u64), ClientError> {
        let request = ProduceRequest {
            topic: topic.to_string(),
            partition,
            acks: spool_protocol::requests::Acks::All,
            batch,
        };
        let stored = self.call_partition(topic, partition, &request).await?;
        Ok((stored.base_offset, stored.next_offset))
    }
}
