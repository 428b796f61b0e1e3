//! Queue-mode consumption: the broker hands messages out to the group's
//! members; each is acked, nacked (redelivered, optionally after a delay) or
//! touched (deadline extended) by the member that got it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};

use spool_protocol::requests::{
    AckRequest, DeliverRequest, DeliverResponse, JoinGroupRequest, NackRequest, SettleResponse,
    TouchRequest,
};
use spool_protocol::{Call, ErrorCode, RecordParts, WireGroupMode};

use super::{Client, ClientError, Connection};

/// Queue consumer settings. The group settings apply when the first member
/// creates the group; later members get the group's.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Time to ack a delivery before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a message goes to `<group>.dlq`.
    pub max_deliveries: u32,
    /// Unacked messages this consumer may hold.
    pub max_in_flight: u32,
    /// Messages asked for per request.
    pub prefetch: u32,
    /// How long one request waits for messages: `receive` asks again
    /// until one arrives, `receive_batch` returns an empty batch.
    pub max_wait: Duration,
    /// Ack every message as it is received (fire and forget).
    pub auto_ack: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            max_in_flight: 1000,
            prefetch: 256,
            max_wait: Duration::from_millis(500),
            auto_ack: false,
        }
    }
}

/// A message handed to this consumer: `deliveries` above 1 means a
/// redelivery. Keys and values are slices of the received frame, not
/// copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Deliveries so far, this one included (1 the first time).
    pub deliveries: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (a slice of the answer: not copied).
    pub value: Bytes,
    /// Headers.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// The messages of a delivery answer, checked: every batch passes its CRC
/// check, and every record handed out is in them.
fn messages_of(response: &DeliverResponse) -> Result<Vec<QueuedMessage>, ClientError> {
    let mut out = Vec::with_capacity(response.partitions.iter().map(|p| p.message_count()).sum());
    for p in &response.partitions {
        let found = p
            .for_each_message(true, |record, deliveries, part| {
                let RecordParts {
                    key,
                    value,
                    headers,
                } = record.parts_in(part);
                out.push(QueuedMessage {
                    partition: p.partition,
                    offset: record.offset.0,
                    deliveries,
                    timestamp_ms: record.timestamp_ms,
                    key,
                    value,
                    headers,
                });
            })
            .map_err(|e| {
                ClientError::Protocol(format!("delivery of partition {}: {e}", p.partition))
            })?;
        if found != p.message_count() {
            return Err(ClientError::Protocol(format!(
                "delivery of partition {} handed out {} messages but carried {found}",
                p.partition,
                p.message_count()
            )));
        }
    }
    Ok(out)
}

/// What an ack, nack or touch did. An answer with a code this client does
/// not know fails to decode (a protocol error) instead of being guessed.
pub use spool_protocol::WireSettle as Settled;

/// A member of a queue-mode group. Dropping it leaves the group, which makes
/// its unacked messages deliverable to the others at once (so does losing
/// its connection).
///
/// In a cluster each partition's leader hands out that partition's
/// messages, so the consumer joins the group at every broker, asks them all
/// for deliveries (their long polls run side by side), and settles each
/// message with the broker that delivered it. A broker that dies is joined
/// again once it is back; its partitions' new leaders deliver what it had
/// handed out and was not acknowledged.
pub struct QueueConsumer {
    client: Client,
    group: String,
    topic: String,
    options: QueueOptions,
    /// One per broker (a single server: one, on the client's connection).
    sessions: Vec<Session>,
    buffer: VecDeque<QueuedMessage>,
    /// The session that delivered each message not settled yet.
    holders: HashMap<(u32, u64), usize>,
    /// Delivery requests under way. In a mutex only so that a consumer can
    /// be shared between threads; it is used through `&mut self`.
    polls: parking_lot::Mutex<FuturesUnordered<Poll>>,
    /// When the cluster's brokers were last listed (a broker that joins
    /// later may lead partitions of the topic).
    listed_at: tokio::time::Instant,
    /// The server is part of a cluster (its metadata said so at join):
    /// the brokers are listed again every [`BROKER_LIST_REFRESH`].
    clustered: bool,
    /// The brokers as last listed (a cluster only): a session with a
    /// broker removed since is not asked again.
    brokers: Vec<String>,
}

type Poll = Pin<Box<dyn Future<Output = (usize, Result<DeliverResponse, ClientError>)> + Send>>;

/// This consumer's membership at one broker.
struct Session {
    /// The broker; `None`: the client's own connection (a single server).
    addr: Option<String>,
    /// The connection it joined on (membership lives with it).
    conn: Option<Arc<Connection>>,
    /// Its member id there; 0 until joined.
    member: u64,
    polling: bool,
    /// After a failure: not tried again before this.
    retry_at: Option<tokio::time::Instant>,
}

/// Settlement items of one session: its index, the items' places in the
/// request, the items.
type SessionItems = (usize, Vec<usize>, Vec<(u32, u64)>);

/// How often a consumer in a cluster looks for brokers that joined it.
const BROKER_LIST_REFRESH: Duration = Duration::from_secs(5);

/// How long a broker that failed is left alone before it is tried again.
const SESSION_RETRY: Duration = Duration::from_millis(200);

impl QueueConsumer {
    /// Joins `group` (created on `topic` if new).
    pub async fn join(
        client: Client,
        group: &str,
        topic: &str,
        options: QueueOptions,
    ) -> Result<QueueConsumer, ClientError> {
        client.learn_routes().await;
        let brokers = client.broker_addrs();
        // A cluster, however many brokers it lists now (one that is still
        // forming may list one): every broker is joined, and brokers that
        // join later are found by listing them again.
        let clustered = client.is_clustered();
        let brokers = if clustered && brokers.is_empty() {
            client.refresh_routes().await;
            client.broker_addrs()
        } else {
            brokers
        };
        if clustered && brokers.is_empty() {
            return Err(ClientError::Server {
                code: Some(ErrorCode::ClusterUnavailable),
                raw_code: ErrorCode::ClusterUnavailable as u16,
                message: "the cluster lists no brokers yet (still forming)".into(),
            });
        }
        let sessions = if clustered {
            brokers.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let mut consumer = QueueConsumer {
            client,
            group: group.to_string(),
            topic: topic.to_string(),
            options,
            sessions: sessions
                .into_iter()
                .map(|addr| Session {
                    addr,
                    conn: None,
                    member: 0,
                    polling: false,
                    retry_at: None,
                })
                .collect(),
            buffer: VecDeque::new(),
            holders: HashMap::new(),
            polls: parking_lot::Mutex::new(FuturesUnordered::new()),
            listed_at: tokio::time::Instant::now(),
            brokers: Vec::new(),
            clustered,
        };
        tracing::debug!(group, sessions = ?consumer.sessions.iter().map(|s| s.addr.clone()).collect::<Vec<_>>(), "joining");
        // At least one broker must take the member (and, the first time,
        // create the group); the others are joined as they answer.
        let mut first_error = None;
        for i in 0..consumer.sessions.len() {
            if let Err(e) = consumer.join_session(i).await {
                consumer.sessions[i].retry_at = Some(tokio::time::Instant::now() + SESSION_RETRY);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) if consumer.sessions.iter().all(|s| s.member == 0) => Err(e),
            _ => Ok(consumer),
        }
    }

    fn clustered(&self) -> bool {
        self.clustered
    }

    async fn connection_of(&self, i: usize) -> Result<Arc<Connection>, ClientError> {
        match &self.sessions[i].addr {
            Some(addr) => self.client.broker_connection(addr).await,
            None => self.client.connection().await,
        }
    }

    async fn join_session(&mut self, i: usize) -> Result<(), ClientError> {
        let request = JoinGroupRequest {
            group: self.group.clone(),
            topic: self.topic.clone(),
            mode: WireGroupMode::Queue,
            ack_wait_ms: self.options.ack_wait.as_millis().max(1) as u64,
            max_deliveries: self.options.max_deliveries,
            max_in_flight: self.options.max_in_flight,
        };
        let conn = self.connection_of(i).await?;
        let member = conn.call(&request).await?.member;
        let session = &mut self.sessions[i];
        session.conn = Some(conn);
        session.member = member;
        session.retry_at = None;
        Ok(())
    }

    /// Starts a delivery request at every session that has none running,
    /// joining again where the membership was lost.
    async fn start_polls(&mut self, wait: Duration) -> Result<(), ClientError> {
        let now = tokio::time::Instant::now();
        let clustered = self.clustered();
        if clustered && now.duration_since(self.listed_at) >= BROKER_LIST_REFRESH {
            self.listed_at = now;
            self.client.refresh_routes().await;
            self.brokers = self.client.broker_addrs();
            for addr in self.brokers.clone() {
                if !self.sessions.iter().any(|s| s.addr.as_ref() == Some(&addr)) {
                    tracing::debug!(group = %self.group, broker = %addr, "joining a broker listed since");
                    self.sessions.push(Session {
                        addr: Some(addr),
                        conn: None,
                        member: 0,
                        polling: false,
                        retry_at: None,
                    });
                }
            }
        }
        for i in 0..self.sessions.len() {
            let s = &self.sessions[i];
            if s.polling || s.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let removed = s
                .addr
                .as_ref()
                .is_some_and(|a| !self.brokers.is_empty() && !self.brokers.contains(a));
            if removed {
                continue;
            }
            let lost = s.member == 0 || s.conn.as_ref().is_none_or(|c| c.is_closed());
            if lost {
                if let Err(e) = self.join_session(i).await {
                    if !self.clustered() {
                        return Err(e);
                    }
                    self.sessions[i].retry_at = Some(now + SESSION_RETRY);
                    continue;
                }
            }
            let s = &mut self.sessions[i];
            let Some(conn) = s.conn.clone() else {
                continue;
            };
            let request = DeliverRequest {
                group: self.group.clone(),
                member: s.member,
                max_messages: self.options.prefetch.max(1),
                max_wait_ms: wait.as_millis().min(u128::from(u32::MAX)) as u32,
            };
            match conn.start(&request).await {
                Ok(reply) => {
                    s.polling = true;
                    self.polls
                        .get_mut()
                        .push(Box::pin(async move { (i, reply.await) }));
                }
                Err(e) if !clustered && !lost_membership(&e) => return Err(e),
                Err(_) => {
                    s.member = 0;
                    s.retry_at = Some(now + SESSION_RETRY);
                }
            }
        }
        Ok(())
    }

    /// The next message: waits as long as it takes (an idle queue is not
    /// the end of it). After a broker restart or a lost connection it joins
    /// again by itself; an error it cannot get past is returned. For a
    /// bounded wait, [`QueueConsumer::receive_timeout`].
    pub async fn receive(&mut self) -> Result<QueuedMessage, ClientError> {
        loop {
            if let Some(m) = self.receive_timeout(self.options.max_wait).await? {
                return Ok(m);
            }
        }
    }

    /// The next message, or `Ok(None)` if none arrived within `wait`.
    pub async fn receive_timeout(
        &mut self,
        wait: Duration,
    ) -> Result<Option<QueuedMessage>, ClientError> {
        if let Some(m) = self.buffer.pop_front() {
            return Ok(Some(m));
        }
        let deadline = tokio::time::Instant::now() + wait;
        // A single server gets one second chance after a lost membership
        // (a restart): joined again, asked again.
        let mut rejoins = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.start_polls(left).await?;
            if self.polls.get_mut().is_empty() {
                // Every broker failed just now: wait for the first retry.
                let next = self
                    .sessions
                    .iter()
                    .filter_map(|s| s.retry_at)
                    .min()
                    .unwrap_or(deadline)
                    .min(deadline);
                tokio::time::sleep_until(next).await;
                if tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            let Ok(Some((i, result))) =
                tokio::time::timeout_at(deadline, self.polls.get_mut().next()).await
            else {
                return Ok(None);
            };
            self.sessions[i].polling = false;
            match result {
                Ok(response) => {
                    let messages = messages_of(&response)?;
                    if self.options.auto_ack && !messages.is_empty() {
                        let items: Vec<(u32, u64)> =
                            messages.iter().map(|m| (m.partition, m.offset)).collect();
                        self.settle_at(
                            i,
                            AckRequest {
                                group: self.group.clone(),
                                member: self.sessions[i].member,
                                items,
                            },
                        )
                        .await?;
                    } else if self.clustered {
                        // A single server delivered everything itself.
                        for m in &messages {
                            self.holders.insert((m.partition, m.offset), i);
                        }
                    }
                    self.buffer.extend(messages);
                    if let Some(m) = self.buffer.pop_front() {
                        return Ok(Some(m));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) if lost_membership(&e) => {
                    let clustered = self.clustered();
                    let s = &mut self.sessions[i];
                    s.member = 0;
                    if clustered {
                        s.retry_at = Some(tokio::time::Instant::now() + SESSION_RETRY);
                    } else {
                        rejoins += 1;
                        if rejoins > 1 {
                            return Err(e);
                        }
                    }
                }
                Err(e) if !self.clustered() => return Err(e),
                Err(e) => {
                    tracing::debug!(broker = ?self.sessions[i].addr, error = %e, "delivery failed; retrying there");
                    self.sessions[i].retry_at = Some(tokio::time::Instant::now() + SESSION_RETRY);
                }
            }
        }
    }

    /// Everything one delivery brings (up to `prefetch` messages), or an
    /// empty vector if nothing arrived within `max_wait`. Pair it with
    /// [`QueueConsumer::ack_many`] for high throughput: one request to get a
    /// batch, one to ack every message in it.
    pub async fn receive_batch(&mut self) -> Result<Vec<QueuedMessage>, ClientError> {
        if self.buffer.is_empty() {
            if let Some(first) = self.receive_timeout(self.options.max_wait).await? {
                self.buffer.push_front(first);
            }
        }
        Ok(self.buffer.drain(..).collect())
    }

    /// Acks a message: it will not be delivered again. Durable on return
    /// (in a cluster: on every in-sync replica of its partition).
    pub async fn ack(&mut self, message: &QueuedMessage) -> Result<Settled, ClientError> {
        Ok(self.ack_many(std::slice::from_ref(message)).await?[0])
    }

    /// Acks several messages in one request (per broker).
    pub async fn ack_many(
        &mut self,
        messages: &[QueuedMessage],
    ) -> Result<Vec<Settled>, ClientError> {
        let pending = self.send_acks(messages).await?;
        pending.await
    }

    /// Sends acks for `messages` and returns at once; the returned future
    /// resolves to their results. The requests leave before this returns,
    /// so a consumer can ask for its next batch while the acks are in
    /// flight (acks and deliveries share one pipelined connection).
    pub async fn send_acks(
        &mut self,
        messages: &[QueuedMessage],
    ) -> Result<
        impl std::future::Future<Output = Result<Vec<Settled>, ClientError>> + Send + 'static,
        ClientError,
    > {
        let items: Vec<(u32, u64)> = messages.iter().map(|m| (m.partition, m.offset)).collect();
        let mut parts = Vec::new();
        for (i, places, items) in self.by_session(&items) {
            let request = AckRequest {
                group: self.group.clone(),
                member: self.sessions[i].member,
                items,
            };
            let expected = places.len();
            let conn = self.session_connection(i).await?;
            let reply = conn.start(&request).await?;
            parts.push((places, expected, reply));
        }
        let count = items.len();
        Ok(async move {
            let mut all = vec![Settled::NotInFlight; count];
            for (places, expected, reply) in parts {
                let results = settled_from(reply.await?, expected)?;
                for (at, r) in places.into_iter().zip(results) {
                    all[at] = r;
                }
            }
            Ok(all)
        })
    }

    /// Hands a message back for redelivery after `delay`.
    pub async fn nack(
        &mut self,
        message: &QueuedMessage,
        delay: Duration,
    ) -> Result<Settled, ClientError> {
        let i = self.holder(message);
        let results = self
            .settle_at(
                i,
                NackRequest {
                    group: self.group.clone(),
                    member: self.sessions[i].member,
                    delay_ms: delay.as_millis().min(u128::from(u32::MAX)) as u32,
                    items: vec![(message.partition, message.offset)],
                },
            )
            .await?;
        self.holders.remove(&(message.partition, message.offset));
        Ok(results[0])
    }

    /// Extends a message's ack deadline by the group's ack wait (work in
    /// progress).
    pub async fn touch(&self, message: &QueuedMessage) -> Result<Settled, ClientError> {
        let i = self.holder(message);
        let results = self
            .settle_at(
                i,
                TouchRequest {
                    group: self.group.clone(),
                    member: self.sessions[i].member,
                    items: vec![(message.partition, message.offset)],
                },
            )
            .await?;
        Ok(results[0])
    }

    fn holder(&self, message: &QueuedMessage) -> usize {
        self.holders
            .get(&(message.partition, message.offset))
            .copied()
            .unwrap_or(0)
    }

    /// `items` grouped by the session that delivered them, with their
    /// places in `items`; forgets them as held.
    fn by_session(&mut self, items: &[(u32, u64)]) -> Vec<SessionItems> {
        if !self.clustered {
            return vec![(0, (0..items.len()).collect(), items.to_vec())];
        }
        let mut groups: Vec<SessionItems> = Vec::new();
        for (at, item) in items.iter().enumerate() {
            let i = self.holders.remove(item).unwrap_or(0);
            match groups.iter_mut().find(|g| g.0 == i) {
                Some(g) => {
                    g.1.push(at);
                    g.2.push(*item);
                }
                None => groups.push((i, vec![at], vec![*item])),
            }
        }
        groups
    }

    async fn session_connection(&self, i: usize) -> Result<Arc<Connection>, ClientError> {
        match &self.sessions[i].conn {
            Some(conn) => Ok(conn.clone()),
            None => Err(ClientError::Disconnected(
                "the broker that delivered the message is not joined any more".into(),
            )),
        }
    }

    async fn settle_at<C: Settle>(
        &self,
        i: usize,
        request: C,
    ) -> Result<Vec<Settled>, ClientError> {
        let expected = request.items().len();
        let conn = self.session_connection(i).await?;
        settled_from(conn.call(&request).await?, expected)
    }

    /// This consumer's member id (in a cluster, at the first broker).
    pub fn member(&self) -> u64 {
        self.sessions.first().map_or(0, |s| s.member)
    }
}

/// The membership is gone with the connection or the broker's restart:
/// join again.
fn lost_membership(e: &ClientError) -> bool {
    e.code() == Some(ErrorCode::UnknownMember) || matches!(e, ClientError::Disconnected(_))
}

/// The requests that settle deliveries: one result per item comes back.
trait Settle: Call<Reply = SettleResponse> {
    fn items(&self) -> &[(u32, u64)];
}

impl Settle for AckRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

impl Settle for NackRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

impl Settle for TouchRequest {
    fn items(&self) -> &[(u32, u64)] {
        &self.items
    }
}

fn settled_from(response: SettleResponse, expected: usize) -> Result<Vec<Settled>, ClientError> {
    let codes = response.results;
    if codes.len() != expected {
        return Err(ClientError::Protocol(format!(
            "{} results for {expected} items",
            codes.len()
        )));
    }
    Ok(codes)
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        for s in &self.sessions {
            match (&s.conn, s.member) {
                (_, 0) => {}
                (Some(conn), member) if self.sessions.len() > 1 => {
                    leave_on(conn.clone(), &self.group, member)
                }
                (_, member) => self.client.leave_in_background(&self.group, member),
            }
        }
    }
}

/// Leaves a group on one broker's connection without waiting (for `Drop`).
fn leave_on(conn: Arc<Connection>, group: &str, member: u64) {
    let request = spool_protocol::requests::LeaveGroupRequest {
        group: group.to_string(),
        member,
    };
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = conn.call(&request).await;
        });
    }
}
