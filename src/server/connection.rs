//! One task per client connection.
//!
//! The reader half decodes frames and dispatches requests; every request
//! may be in flight at once (pipelining) and responses go back in completion
//! order, matched by correlation id. Appends are applied in arrival order
//! before anything is awaited, so a producer pipelining batches to one
//! partition gets them stored in the order it sent them.
//!
//! Limits, each named in [`ConnectionLimits`]:
//! - bytes in flight: a request's bytes (and, for a fetch, its byte budget)
//!   are taken from a per-connection budget before it is dispatched. A client
//!   that stops reading responses stops having its requests read: the slow
//!   reader slows only itself, and the broker never buffers more than the
//!   budget for it.
//! - requests in flight, idle time, and the handshake deadline.
//! - memory for frames across all connections, and a deadline for each
//!   frame once it has started: see `frame_reader`.
//!
//! Malformed input gets an error response and the connection is closed;
//! other connections are unaffected. A bad frame header answers with
//! correlation id 0 (the header, and so the id, cannot be trusted); an
//! undecodable body answers with the request's own correlation id and kind.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use spool_protocol::requests::{kind, Acks, CoordinatorResponse};
use spool_protocol::DecodeError;
use spool_protocol::{ErrorCode, ErrorResponse, Frame, FrameError, FrameWriter, Request, Response};
use std::net::SocketAddr;

use spool_client::transport::Socket;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::errors::error;
use super::frame_reader::{FrameMemory, FrameReader, ReadError, ReadHalf};
use super::handlers;
use super::ServerContext;
use crate::auth::{ConnectionQuota, Direction};
use crate::broker::MemberId;
use crate::metrics;

/// Per-connection bounds.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Bytes of requests and fetch budgets in flight at once.
    pub max_in_flight_bytes: usize,
    /// Requests in flight at once.
    pub max_in_flight_requests: usize,
    /// A connection with nothing in flight and no frame for this long is closed.
    pub idle_timeout: Duration,
    /// The handshake must arrive within this.
    pub handshake_timeout: Duration,
    /// A frame that has started must be complete within this (for its
    /// header, and again for its body once there is memory for it).
    pub frame_deadline: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame_bytes: spool_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_requests: 8192,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            frame_deadline: Duration::from_secs(30),
        }
    }
}

/// Largest frame before the handshake: a handshake is a few bytes, and a
/// client that has not said who it is gets no large share of the memory.
const MAX_HANDSHAKE_FRAME: usize = 64 * 1024;

/// Responses waiting for the writer.
const RESPONSE_QUEUE: usize = 1024;

/// A response on its way to the socket, holding its share of the
/// connection's budgets until the writer has passed it on: releasing them
/// when it is merely queued would let a client that never reads pile up
/// responses without bound.
struct Outgoing {
    frame: Frame,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Outgoing {
        Outgoing {
            frame,
            permits: None,
        }
    }
}

/// Serves one connection until the client leaves, breaks the protocol, idles
/// out, or the server shuts down (in which case in-flight requests finish).
pub async fn serve(
    stream: Socket,
    peer: std::net::SocketAddr,
    tls: Option<&crate::server::tls::ServerTls>,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let peer = Some(peer);
    // Who a verified client certificate says the client is.
    let mut certified = None;
    let (rd, wr): (ReadHalf, WriteHalf) = match tls {
        None => stream.into_split(),
        Some(tls) => {
            let deadline = crate::server::tls::HANDSHAKE_DEADLINE;
            let failed = match tokio::time::timeout(deadline, tls.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    certified = stream.get_ref().1.peer_certificates().and_then(|chain| {
                        crate::server::tls::certified_principal(chain, ctx.peer_tls.as_ref())
                    });
                    let (rd, wr) = tokio::io::split(stream);
                    Ok((Box::new(rd) as ReadHalf, Box::new(wr) as WriteHalf))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no TLS handshake within {deadline:?}")),
            };
            match failed {
                Ok(halves) => halves,
                Err(e) => {
                    crate::metrics::TLS_HANDSHAKE_FAILURES.inc();
                    tracing::debug!(?peer, error = %e, "TLS handshake failed");
                    return;
                }
            }
        }
    };
    let mut frames = FrameReader::new(rd);
    let (tx, rx) = mpsc::channel::<Outgoing>(RESPONSE_QUEUE);
    let writer = tokio::spawn(write_responses(wr, rx));
    let mut handler = Handler::new(ctx, shutdown, peer, tx);
    handler.certified = certified;
    handler.run(&mut frames).await;
    // Let what was accepted finish (bounded: fetches wait at most 30 s), then
    // close the writer, which flushes what is queued.
    drop(frames);
    handler.finish().await;
    let _ = writer.await;
}

/// Writes responses in the order they complete, batching whatever is ready
/// into one write.
/// The write half of a connection: plain TCP or TLS.
type WriteHalf = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

async fn write_responses(wr: WriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut sink = FrameWriter::new(wr, usize::MAX);
    // The writer holds large response parts (fetched segment slices)
    // without copying them, so their permits are kept until the socket
    // took every byte queued with them.
    let mut written_with = Vec::new();
    while let Some(out) = rx.recv().await {
        written_with.push(out.permits);
        if sink.feed(out.frame).await.is_err() {
            return;
        }
        while let Ok(out) = rx.try_recv() {
            written_with.push(out.permits);
            if sink.feed(out.frame).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        written_with.clear();
    }
}

/// What to do with a frame that arrived.
enum Decoded {
    /// Serve it.
    Request(Request),
    /// Refused on its own (unknown kind); the connection goes on.
    Refused,
    /// The connection is done.
    Close,
}

/// One connection's state, with a small method per step of serving it (as
/// mini-redis's `Handler`): read the next frame, decode it, handshake, admit
/// it against the budgets, dispatch it.
struct Handler {
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
    peer: Option<SocketAddr>,
    tx: mpsc::Sender<Outgoing>,
    bytes_budget: Arc<Semaphore>,
    request_budget: Arc<Semaphore>,
    tasks: JoinSet<()>,
    /// Acquires waiting in a lock's queue: dropped with the connection
    /// (the session stays queued until it ends or expires; a client that
    /// reconnects asks again and finds its place or its grant).
    lock_waits: JoinSet<()>,
    handshaken: bool,
    /// Group members joined over this connection: they leave with it, so a
    /// consumer that dies hands its unacked messages back at once.
    joined: Vec<(String, MemberId)>,
    last_frame: Instant,
    /// Who the connection acts as, once authenticated.
    principal: Option<String>,
    /// Its principal's quota, once authenticated.
    quota: Option<Arc<ConnectionQuota>>,
    /// The principal its client certificate names, if any: with
    /// authentication on, the connection acts as it from the handshake on.
    certified: Option<String>,
}

type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Handler {
    fn new(
        ctx: Arc<ServerContext>,
        shutdown: CancellationToken,
        peer: Option<SocketAddr>,
        tx: mpsc::Sender<Outgoing>,
    ) -> Handler {
        Handler {
            bytes_budget: Arc::new(Semaphore::new(ctx.limits.max_in_flight_bytes)),
            request_budget: Arc::new(Semaphore::new(ctx.limits.max_in_flight_requests)),
            ctx,
            shutdown,
            peer,
            tx,
            tasks: JoinSet::new(),
            lock_waits: JoinSet::new(),
            handshaken: false,
            joined: Vec::new(),
            last_frame: Instant::now(),
            principal: None,
            quota: None,
            certified: None,
        }
    }

    async fn run(&mut self, frames: &mut FrameReader) {
        loop {
            while self.tasks.try_join_next().is_some() {}
            while self.lock_waits.try_join_next().is_some() {}
            let Some((frame, memory)) = self.next_frame(frames).await else {
                return;
            };
            let (kind_, correlation_id) = (frame.kind, frame.correlation_id);
            let body_len = frame.body.len();
            let request = match self.decode(frame).await {
                Decoded::Request(request) => request,
                Decoded::Refused => continue,
                Decoded::Close => return,
            };
            if !self.handshaken {
                if !self.handshake(request, kind_, correlation_id).await {
                    return;
                }
                continue;
            }
            if let Some(reply) = self.gate(&request).await {
                let sent = self
                    .tx
                    .send(to_frame(reply, kind_, correlation_id).into())
                    .await;
                if sent.is_err() {
                    return;
                }
                continue;
            }
            let Some(permits) = self.admit(&request, body_len).await else {
                return;
            };
            self.dispatch(request, kind_, correlation_id, permits).await;
            // A produce's batch is appended by now; what other requests keep
            // of their (small) bodies is counted in the connection's budget.
            drop(memory);
            if kind_ == kind::PRODUCE {
                let pause = charge(self.quota.as_deref(), Direction::Produce, body_len);
                // Reading nothing more is what slows the client down (its
                // requests wait in its socket, then in its own window).
                wait_out(&self.shutdown, pause).await;
            }
        }
    }

    /// The next frame, or `None` when the connection should close (the
    /// client left, idled out, skipped the handshake, or sent a bad frame,
    /// which is answered first).
    async fn next_frame(&mut self, frames: &mut FrameReader) -> Option<(Frame, FrameMemory)> {
        loop {
            let limits = &self.ctx.limits;
            let deadline = if self.handshaken {
                limits.idle_timeout
            } else {
                limits.handshake_timeout
            };
            let wait = deadline.saturating_sub(self.last_frame.elapsed());
            let next = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                next = tokio::time::timeout(wait, frames.ready()) => next,
            };
            match next {
                Err(_elapsed) => {
                    if !self.handshaken {
                        let reply = error(ErrorCode::HandshakeRequired, "no handshake in time");
                        let _ = self.tx.send(reply.to_frame(0, 0).into()).await;
                        return None;
                    }
                    if self.tasks.is_empty() {
                        tracing::debug!(peer = ?self.peer, "closing idle connection");
                        return None;
                    }
                    // Long polls are still running: not idle.
                    self.last_frame = Instant::now();
                }
                Ok(Ok(false) | Err(_)) => return None,
                Ok(Ok(true)) => return self.read_frame(frames).await,
            }
        }
    }

    /// The frame that has started to arrive, or `None` after answering
    /// why it cannot be read.
    async fn read_frame(&mut self, frames: &mut FrameReader) -> Option<(Frame, FrameMemory)> {
        let limits = &self.ctx.limits;
        let max = if self.handshaken {
            limits.max_frame_bytes
        } else {
            MAX_HANDSHAKE_FRAME
        };
        let read = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            read = frames.read(max, &self.ctx.frame_budget, limits.frame_deadline) => read,
        };
        let (code, message) = match read {
            Ok(frame) => {
                self.last_frame = Instant::now();
                return Some(frame);
            }
            Err(ReadError::Frame(FrameError::Io(_))) => return None,
            Err(ReadError::Frame(err @ FrameError::TooLarge { .. })) => {
                (ErrorCode::FrameTooLarge, err.to_string())
            }
            Err(ReadError::Frame(err)) => (ErrorCode::MalformedFrame, err.to_string()),
            Err(ReadError::Deadline(deadline)) => (
                ErrorCode::LimitReached,
                format!("frame not received within the frame deadline of {deadline:?}"),
            ),
        };
        metrics::PROTOCOL_ERRORS.inc();
        tracing::info!(peer = ?self.peer, error = %message, "closing connection: bad frame");
        // The header cannot be trusted: correlation id 0.
        let reply = error(code, message);
        let _ = self.tx.send(reply.to_frame(0, 0).into()).await;
        None
    }

    async fn decode(&self, frame: Frame) -> Decoded {
        let (kind_, correlation_id) = (frame.kind, frame.correlation_id);
        match Request::decode(frame.kind, frame.body) {
            Ok(request) => Decoded::Request(request),
            Err(DecodeError::UnknownKind(k)) => {
                // The frame boundary is intact: refuse this request only.
                let reply = error(
                    ErrorCode::UnknownRequest,
                    format!("unknown request kind {k}"),
                );
                match self
                    .tx
                    .send(reply.to_frame(kind_, correlation_id).into())
                    .await
                {
                    Ok(()) => Decoded::Refused,
                    Err(_) => Decoded::Close,
                }
            }
            Err(err) => {
                metrics::PROTOCOL_ERRORS.inc();
                tracing::info!(peer = ?self.peer, error = %err, "closing connection: malformed request body");
                let reply = error(ErrorCode::MalformedFrame, err.to_string());
                let _ = self
                    .tx
                    .send(reply.to_frame(kind_, correlation_id).into())
                    .await;
                Decoded::Close
            }
        }
    }

    /// Answers the first request, which must be a handshake. False: close.
    async fn handshake(&mut self, request: Request, kind_: u16, correlation_id: u32) -> bool {
        let reply = match request {
            Request::Handshake(hello) => {
                handlers::handshake::handle(&hello, self.ctx.limits.max_frame_bytes)
                    .map(Response::from)
            }
            _ => Err(error(
                ErrorCode::HandshakeRequired,
                "the first request must be a handshake",
            )),
        };
        // A client certificate authenticates the connection by itself.
        let reply = match (reply, self.ctx.auth.clone(), self.certified.clone()) {
            (Ok(reply), Some(auth), Some(principal)) => {
                self.act_as(&auth, principal).map(|()| reply)
            }
            (reply, _, _) => reply,
        };
        let ok = reply.is_ok();
        let sent = self
            .tx
            .send(to_frame(reply, kind_, correlation_id).into())
            .await;
        self.handshaken = ok;
        ok && sent.is_ok()
    }

    /// Makes the connection act as `principal` (authenticated by password
    /// or certificate), counted against its connection quota (brokers have
    /// none).
    fn act_as(
        &mut self,
        auth: &Arc<crate::auth::Auth>,
        principal: String,
    ) -> Result<(), ErrorResponse> {
        // A connection that authenticates again stops counting as its
        // former principal's first.
        self.quota = None;
        self.principal = None;
        if !crate::auth::is_broker(&principal) {
            let quota = auth.connect(&principal).map_err(|e| {
                metrics::QUOTA_CONNECTIONS_REFUSED.inc();
                tracing::warn!(principal = %principal, peer = ?self.peer, error = %e, "connection refused by its principal's quota");
                super::handlers::security::auth_error(&e)
            })?;
            self.quota = Some(Arc::new(quota));
        }
        tracing::debug!(principal = %principal, peer = ?self.peer, "authenticated");
        self.principal = Some(principal);
        Ok(())
    }

    /// With authentication on: answers an authentication, or refuses a
    /// request its principal may not make (`None`: go on and serve it).
    async fn gate(&mut self, request: &Request) -> Option<Result<Response, ErrorResponse>> {
        use crate::auth::required::{needs, Needs};
        let auth = self.ctx.auth.clone()?;
        if let Request::Authenticate(r) = request {
            return Some(self.authenticate(auth, r.clone()).await);
        }
        let needed = needs(request);
        if needed == Needs::Nothing {
            return None;
        }
        let Some(principal) = &self.principal else {
            return Some(Err(error(
                ErrorCode::NotAuthorized,
                "authenticate first: this broker requires a user and password",
            )));
        };
        let Needs::All(needs) = needed else {
            return None;
        };
        for (operation, kind, name) in needs {
            if !auth.allowed(principal, operation, kind, &name) {
                tracing::warn!(principal = %principal, peer = ?self.peer, operation = operation.name(), resource = kind.name(), name = %name, "request refused by the access rules");
                metrics::AUTHORIZATION_REFUSALS.inc();
                return Some(Err(error(
                    ErrorCode::NotAuthorized,
                    format!(
                        "{principal} may not {} {} {name:?}",
                        operation.name(),
                        kind.name()
                    ),
                )));
            }
        }
        None
    }

    async fn authenticate(
        &mut self,
        auth: Arc<crate::auth::Auth>,
        r: spool_protocol::requests::AuthenticateRequest,
    ) -> Result<Response, ErrorResponse> {
        if r.mechanism != "PLAIN" {
            return Err(error(
                ErrorCode::AuthenticationFailed,
                format!(
                    "unknown mechanism {:?} (this broker speaks PLAIN)",
                    r.mechanism
                ),
            ));
        }
        let ip = self.peer.map(|p| p.ip());
        let user = r.user.clone();
        // argon2 is slow on purpose: off the async threads.
        let checking = auth.clone();
        let checked = crate::simulation::spawn_blocking(move || {
            checking.authenticate(ip, &r.user, &r.password)
        })
        .await
        .map_err(|e| {
            error(
                ErrorCode::Internal,
                format!("authentication task failed: {e}"),
            )
        })?;
        match checked {
            Ok(principal) => {
                self.act_as(&auth, principal.clone())?;
                Ok(spool_protocol::requests::AuthenticateResponse { principal }.into())
            }
            Err(e) => {
                metrics::AUTHENTICATION_FAILURES.inc();
                tracing::warn!(user = %user, peer = ?self.peer, error = %e, "authentication failed");
                Err(error(ErrorCode::AuthenticationFailed, e.to_string()))
            }
        }
    }

    /// Takes the request's share of the budgets; this wait is the
    /// backpressure on a client that does not read. `None`: shutting down.
    async fn admit(&self, request: &Request, body_len: usize) -> Option<Permits> {
        let cost = request_cost(request, body_len).min(self.ctx.limits.max_in_flight_bytes) as u32;
        let permits = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            permits = async {
                let bytes = self.bytes_budget.clone().acquire_many_owned(cost).await;
                let request = self.request_budget.clone().acquire_owned().await;
                (bytes, request)
            } => permits,
        };
        match permits {
            (Ok(bytes), Ok(request)) => Some((bytes, request)),
            _ => None,
        }
    }

    async fn dispatch(
        &mut self,
        request: Request,
        kind_: u16,
        correlation_id: u32,
        permits: Permits,
    ) {
        let started = Instant::now();
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        match request {
            Request::Produce(r) => {
                // Appended here, in arrival order; only the wait is async.
                let start =
                    || handlers::produce::start(&ctx.broker, &r.topic, r.partition, &r.batch);
                let all = r.acks == Acks::All;
                let pending = match &ctx.cluster {
                    Some(node) => {
                        // Checked and appended under the fence: see
                        // `ClusterNode::write_fence`.
                        let _fence = node.write_fence();
                        handlers::cluster::check_serves(node, &r.topic, r.partition, true).and_then(
                            |()| {
                                if all {
                                    node.replicas()
                                        .check_in_sync(&r.topic, r.partition)
                                        .map_err(|e| handlers::replica::ack_error(&e))?;
                                }
                                start()
                            },
                        )
                    }
                    None => start(),
                };
                self.tasks.spawn(async move {
                    let reply = match pending {
                        Ok(pending) => match handlers::produce::finish(pending).await {
                            Ok(stored) => match &ctx.cluster {
                                Some(node)
                                    if all
                                        && !crate::simulation::sabotaged(
                                            crate::simulation::Sabotage::AckBeforeReplicated,
                                        ) =>
                                {
                                    handlers::replica::wait_replicated(
                                        node,
                                        &r.topic,
                                        r.partition,
                                        stored.next_offset,
                                    )
                                    .await
                                    .map(|()| stored.into())
                                }
                                _ => Ok(stored.into()),
                            },
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    respond(&tx, reply, kind_, correlation_id, started, permits).await;
                });
            }
            Request::JoinGroup(r) => {
                // Joined here, so the member is on this connection's list
                // before any later request can use it. Joining may create the
                // group (files, fsync; in a cluster a Raft commit): off the
                // async workers, but awaited.
                let group = r.group.clone();
                let joined = match &ctx.cluster {
                    Some(node) if r.mode == spool_protocol::WireGroupMode::Queue => {
                        handlers::cluster_queues::join(node, &ctx.broker, r).await
                    }
                    Some(node) => handlers::cluster_groups::join(node, &ctx.broker, r).await,
                    None => {
                        handlers::on_blocking_thread(&ctx.broker, move |broker| {
                            handlers::groups::join(broker, &r)
                        })
                        .await
                    }
                };
                let reply = match joined {
                    Ok((response, member)) => {
                        self.joined.push((group, member));
                        Ok(response.into())
                    }
                    Err(e) => Err(e),
                };
                self.tasks.spawn(async move {
                    respond(&tx, reply, kind_, correlation_id, started, permits).await;
                });
            }
            Request::AcquireLock(r) if r.wait_ms > 0 => {
                self.lock_waits.spawn(async move {
                    let reply = dispatch(&ctx, Request::AcquireLock(r)).await;
                    respond(&tx, reply, kind_, correlation_id, started, permits).await;
                });
            }
            request @ (Request::Fetch(_) | Request::Deliver(_)) => {
                let quota = self.quota.clone();
                self.tasks.spawn(async move {
                    let reply = dispatch(&ctx, request).await;
                    let frame = to_frame(reply, kind_, correlation_id);
                    let bytes = frame.body.len() + frame.tail_len();
                    // Held back, not cut short: the client waits for what
                    // it asked for as long as its rate requires.
                    let pause = charge(quota.as_deref(), Direction::Fetch, bytes);
                    wait_out(&ctx.shutdown, pause).await;
                    send_frame(&tx, frame, kind_, started, permits).await;
                });
            }
            request => {
                self.tasks.spawn(async move {
                    let reply = dispatch(&ctx, request).await;
                    respond(&tx, reply, kind_, correlation_id, started, permits).await;
                });
            }
        }
    }

    /// Leaves the connection's groups, then waits for its requests.
    async fn finish(mut self) {
        // Leave groups first: a client that is gone must not hold messages
        // while its in-flight requests (a long-polling delivery, say) finish.
        for (group, member) in self.joined.drain(..) {
            if let Err(err) = self.ctx.broker.leave_group(&group, member) {
                tracing::debug!(group, member, error = %err, "leaving group at disconnect");
            }
        }
        self.lock_waits.abort_all();
        while self.tasks.join_next().await.is_some() {}
        while self.lock_waits.join_next().await.is_some() {}
    }
}

pub(crate) async fn dispatch(
    ctx: &ServerContext,
    request: Request,
) -> Result<Response, ErrorResponse> {
    let broker = &ctx.broker;
    // A long poll (fetch, delivery) answers at once at shutdown with what
    // there is.
    let stopping = || ctx.shutdown.is_cancelled();
    if let Some(node) = &ctx.cluster {
        match &request {
            Request::Fetch(r) => {
                handlers::cluster::check_serves(node, &r.topic, r.partition, false)?
            }
            Request::OffsetForTimestamp(r) => {
                handlers::cluster::check_serves(node, &r.topic, r.partition, false)?
            }
            Request::CreateTopic(r) => {
                return handlers::cluster::create_topic(node, &ctx.topic_defaults, r)
                    .await
                    .map(Response::from)
            }
            Request::DeleteTopic(r) => {
                return handlers::cluster::delete_topic(node, r)
                    .await
                    .map(Response::from)
            }
            Request::Metadata(_) => return Ok(handlers::cluster::metadata(node).into()),
            Request::RemoveBroker(r) => {
                return handlers::cluster::remove_broker(node, r)
                    .await
                    .map(Response::from)
            }
            Request::LeaveGroup(r) => {
                return handlers::cluster_groups::leave(node, broker, r).map(Response::from)
            }
            Request::GroupAssignment(r) => {
                return handlers::cluster_groups::assignment(node, broker, r).map(Response::from)
            }
            Request::Deliver(r) => {
                return tokio::select! {
                    reply = handlers::cluster_queues::deliver(node, broker, r, stopping()) => reply,
                    _ = ctx.shutdown.cancelled() => {
                        handlers::cluster_queues::deliver(node, broker, r, true).await
                    }
                }
                .map(Response::from)
            }
            Request::Ack(r) => {
                return handlers::cluster_queues::ack(node, broker, r)
                    .await
                    .map(Response::from)
            }
            Request::Nack(r) => {
                return handlers::cluster_queues::nack(node, broker, r).map(Response::from)
            }
            Request::Touch(r) => {
                return handlers::cluster_queues::touch(node, broker, r).map(Response::from)
            }
            Request::PendingMessages(r) => {
                return handlers::cluster_queues::pending(node, broker, r).map(Response::from)
            }
            Request::DeleteGroup(r) => {
                return handlers::cluster_groups::delete(node, broker, r)
                    .await
                    .map(Response::from)
            }
            Request::CommitOffset(r) => {
                return handlers::cluster_groups::commit_offset(node, r)
                    .await
                    .map(Response::from)
            }
            Request::CommittedOffsets(r) => {
                return handlers::cluster_groups::committed_offsets(node, r).map(Response::from)
            }
            Request::ListGroups(_) => {
                return handlers::cluster_groups::list(node, broker)
                    .await
                    .map(Response::from)
            }
            Request::DescribeGroup(r) => {
                return handlers::cluster_groups::describe(node, broker, r)
                    .await
                    .map(Response::from)
            }
            Request::ResetGroup(r) => {
                return handlers::cluster_groups::reset(node, broker, r)
                    .await
                    .map(Response::from)
            }
            Request::FindCoordinator(r) => {
                return handlers::cluster_groups::find_coordinator(node, r).map(Response::from)
            }
            Request::AddVoter(r) => {
                return handlers::cluster::add_voter(node, r)
                    .await
                    .map(Response::from)
            }
            _ => {}
        }
    }
    match request {
        Request::ReplicaFetch(r) => match &ctx.cluster {
            Some(node) => {
                let wait_ms = if stopping() { 0 } else { r.max_wait_ms };
                tokio::select! {
                    reply = handlers::replica::fetch(node, &r, wait_ms) => reply,
                    _ = ctx.shutdown.cancelled() => handlers::replica::fetch(node, &r, 0).await,
                }
                .map(Response::from)
            }
            None => Err(error(
                ErrorCode::InvalidConfig,
                "this server is a single node, not a cluster",
            )),
        },
        Request::Fetch(r) => {
            let wait_ms = if stopping() { 0 } else { r.max_wait_ms };
            tokio::select! {
                reply = handlers::fetch::handle(broker, &r, wait_ms) => reply,
                _ = ctx.shutdown.cancelled() => handlers::fetch::handle(broker, &r, 0).await,
            }
            .map(Response::from)
        }
        Request::Deliver(r) => tokio::select! {
            reply = handlers::groups::deliver(broker, &r, stopping(), &|_| true) => reply,
            _ = ctx.shutdown.cancelled() => {
                handlers::groups::deliver(broker, &r, true, &|_| true).await
            }
        }
        .map(Response::from),
        Request::CreateTopic(r) => {
            let defaults = ctx.topic_defaults.clone();
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::topics::create(broker, &defaults, &r).map(Response::from)
            })
            .await
        }
        Request::DeleteTopic(r) => {
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::topics::delete(broker, &r).map(Response::from)
            })
            .await
        }
        Request::ListTopics(_) => Ok(handlers::topics::list(broker).into()),
        Request::DescribeTopic(r) => handlers::topics::describe(broker, &r).map(Response::from),
        Request::LeaveGroup(r) => handlers::groups::leave(broker, &r).map(Response::from),
        Request::GroupAssignment(r) => handlers::groups::assignment(broker, &r).map(Response::from),
        Request::Ack(r) => handlers::groups::ack(broker, &r).await.map(Response::from),
        Request::Nack(r) => handlers::groups::nack(broker, &r).map(Response::from),
        Request::Touch(r) => handlers::groups::touch(broker, &r).map(Response::from),
        Request::CommitOffset(r) => handlers::groups::commit_offset(broker, &r)
            .await
            .map(Response::from),
        Request::CommittedOffsets(r) => {
            handlers::groups::committed_offsets(broker, &r).map(Response::from)
        }
        Request::ListGroups(_) => Ok(handlers::groups::list(broker).into()),
        Request::DescribeGroup(r) => handlers::groups::describe(broker, &r).map(Response::from),
        Request::PendingMessages(r) => {
            handlers::groups::pending(broker, &r, &|_| true).map(Response::from)
        }
        Request::DeleteGroup(r) => {
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::groups::delete(broker, &r).map(Response::from)
            })
            .await
        }
        Request::ResetGroup(r) => {
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::groups::reset(broker, &r).map(Response::from)
            })
            .await
        }
        Request::OffsetForTimestamp(r) => {
            // Reads index files and batch headers.
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::fetch::offset_for_timestamp(broker, &r).map(Response::from)
            })
            .await
        }
        Request::JoinGroup(_) => Err(error(
            ErrorCode::Internal,
            "join is dispatched in order, not here",
        )),
        Request::RemoveBroker(_) | Request::AddVoter(_) => Err(error(
            ErrorCode::InvalidConfig,
            "this server is a single node, not a cluster",
        )),
        Request::Metadata(_) => {
            Ok(handlers::cluster::single_node_metadata(broker, &ctx.advertised).into())
        }
        Request::InitProducer(_) => {
            let node = ctx.cluster.as_ref().map_or(0, |n| n.id().0);
            handlers::on_blocking_thread(broker, move |broker| {
                handlers::produce::init_producer(broker, node).map(Response::from)
            })
            .await
        }
        Request::ServerStatus(_) => {
            let node = ctx.cluster.as_ref().map_or(0, |n| n.id().0);
            let (started, listen) = (ctx.started, ctx.advertised.clone());
            handlers::on_blocking_thread(broker, move |broker| {
                Ok(handlers::status::status(broker, started, &listen, node).into())
            })
            .await
        }
        Request::FindCoordinator(_) => Ok(CoordinatorResponse {
            id: 0,
            addr: ctx.advertised.clone(),
        }
        .into()),
        Request::Authenticate(_) => Ok(spool_protocol::requests::AuthenticateResponse {
            principal: "anonymous".into(),
        }
        .into()),
        admin @ (Request::UpsertUser(_)
        | Request::DeleteUser(_)
        | Request::ListUsers(_)
        | Request::AddAcl(_)
        | Request::RemoveAcl(_)
        | Request::ListAcls(_)
        | Request::SetQuota(_)
        | Request::RemoveQuota(_)
        | Request::ListQuotas(_)) => {
            handlers::security::handle(ctx.auth.clone(), ctx.cluster.as_ref(), admin).await
        }
        lock @ (Request::OpenSession(_)
        | Request::KeepAlive(_)
        | Request::CloseSession(_)
        | Request::AcquireLock(_)
        | Request::ReleaseLock(_)
        | Request::ListLocks(_)) => {
            handlers::locks::handle(broker, ctx.cluster.as_ref(), lock).await
        }
        Request::Handshake(_) => Err(error(ErrorCode::MalformedFrame, "handshake already done")),
        Request::Produce(_) => Err(error(
            ErrorCode::Internal,
            "produce is dispatched in order, not here",
        )),
    }
}

/// Bytes a request may hold in memory while in flight: its own frame, plus
/// for a fetch the response it may build.
fn request_cost(request: &Request, body_len: usize) -> usize {
    let response = match request {
        Request::Fetch(r) => r.max_bytes as usize,
        Request::ReplicaFetch(r) => r.max_bytes as usize,
        // Message sizes are unknown up front; budget a typical batch.
        Request::Deliver(_) => 1 << 20,
        _ => 0,
    };
    (body_len + response).max(1)
}

fn to_frame(reply: Result<Response, ErrorResponse>, kind_: u16, correlation_id: u32) -> Frame {
    match reply {
        Ok(response) => response.to_frame(kind_, correlation_id),
        Err(err) => err.to_frame(kind_, correlation_id),
    }
}

async fn respond(
    tx: &mpsc::Sender<Outgoing>,
    reply: Result<Response, ErrorResponse>,
    kind_: u16,
    correlation_id: u32,
    started: Instant,
    permits: Permits,
) {
    let frame = to_frame(reply, kind_, correlation_id);
    send_frame(tx, frame, kind_, started, permits).await;
}

async fn send_frame(
    tx: &mpsc::Sender<Outgoing>,
    frame: Frame,
    kind_: u16,
    started: Instant,
    permits: Permits,
) {
    metrics::REQUEST_SECONDS
        .with_label_values(&[kind_name(kind_)])
        .observe(started.elapsed().as_secs_f64());
    // A closed channel means the client is gone; nothing to do.
    let out = Outgoing {
        frame,
        permits: Some(permits),
    };
    let _ = tx.send(out).await;
}

/// Counts a transfer against the connection's quota (with auth on): how
/// long to pause, with the bytes and the pause in the metrics.
fn charge(quota: Option<&ConnectionQuota>, direction: Direction, bytes: usize) -> Duration {
    let Some(quota) = quota else {
        return Duration::ZERO;
    };
    let labels = [quota.principal(), direction.name()];
    metrics::QUOTA_BYTES
        .with_label_values(&labels)
        .inc_by(bytes as u64);
    let pause = quota.charge(direction, bytes);
    if !pause.is_zero() {
        metrics::QUOTA_THROTTLE_SECONDS
            .with_label_values(&labels)
            .inc_by(pause.as_secs_f64());
    }
    pause
}

/// Waits out a quota's pause, or until shutdown. A zero pause returns at
/// once: even a zero-length tokio sleep waits for the timer's next tick
/// (about a millisecond), which capped a connection at ~1,000 produces a
/// second and added that much to every fetch before this check.
async fn wait_out(shutdown: &CancellationToken, pause: Duration) {
    if pause.is_zero() {
        return;
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(pause) => {}
    }
}

fn kind_name(k: u16) -> &'static str {
    match k {
        kind::HANDSHAKE => "handshake",
        kind::PRODUCE => "produce",
        kind::FETCH => "fetch",
        kind::CREATE_TOPIC => "create_topic",
        kind::DELETE_TOPIC => "delete_topic",
        kind::LIST_TOPICS => "list_topics",
        kind::DESCRIBE_TOPIC => "describe_topic",
        kind::JOIN_GROUP => "join_group",
        kind::LEAVE_GROUP => "leave_group",
        kind::GROUP_ASSIGNMENT => "group_assignment",
        kind::DELIVER => "deliver",
        kind::ACK => "ack",
        kind::NACK => "nack",
        kind::TOUCH => "touch",
        kind::COMMIT_OFFSET => "commit_offset",
        kind::COMMITTED_OFFSETS => "committed_offsets",
        kind::LIST_GROUPS => "list_groups",
        kind::DESCRIBE_GROUP => "describe_group",
        kind::RESET_GROUP => "reset_group",
        kind::OFFSET_FOR_TIMESTAMP => "offset_for_timestamp",
        _ => "unknown",
    }
}
