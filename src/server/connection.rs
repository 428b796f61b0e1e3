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
//!
//! Malformed input gets an error response and the connection is closed;
//! other connections are unaffected. A bad frame header answers with
//! correlation id 0 (the header, and so the id, cannot be trusted); an
//! undecodable body answers with the request's own correlation id and kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use spool_protocol::messages::{kind, DecodeError};
use spool_protocol::{
    ErrorCode, ErrorResponse, Frame, FrameCodec, FrameError, FrameWriter, Request, Response,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::errors::error;
use super::handlers;
use super::ServerContext;
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
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame_bytes: spool_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_requests: 8192,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

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
pub async fn serve(stream: TcpStream, ctx: Arc<ServerContext>, shutdown: CancellationToken) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let limits = ctx.limits.clone();
    let (rd, wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameCodec::new(limits.max_frame_bytes));
    let (tx, mut rx) = mpsc::channel::<Outgoing>(RESPONSE_QUEUE);

    let writer = tokio::spawn(async move {
        let mut sink = FrameWriter::new(wr, usize::MAX);
        // The writer holds large response parts (fetched segment slices)
        // without copying them, so their permits are kept until the socket
        // took every byte queued with them.
        let mut written_with = Vec::new();
        while let Some(out) = rx.recv().await {
            // Batch whatever else is ready into one write.
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
    });

    let bytes_budget = Arc::new(Semaphore::new(limits.max_in_flight_bytes));
    let request_budget = Arc::new(Semaphore::new(limits.max_in_flight_requests));
    let mut tasks = JoinSet::new();
    let mut handshaken = false;
    // Group members joined over this connection: they leave with it, so a
    // consumer that dies hands its unacked messages back at once.
    let mut joined: Vec<(String, crate::broker::MemberId)> = Vec::new();
    let mut last_frame = Instant::now();

    loop {
        while tasks.try_join_next().is_some() {}
        let deadline = if handshaken {
            limits.idle_timeout
        } else {
            limits.handshake_timeout
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(deadline.saturating_sub(last_frame.elapsed()), frames.next()) => next,
        };
        let frame = match next {
            Err(_elapsed) => {
                if !handshaken {
                    let _ = tx
                        .send(
                            error(ErrorCode::HandshakeRequired, "no handshake in time")
                                .to_frame(0, 0)
                                .into(),
                        )
                        .await;
                    break;
                }
                if tasks.is_empty() {
                    tracing::debug!(?peer, "closing idle connection");
                    break;
                }
                // Long polls are still running: not idle.
                last_frame = Instant::now();
                continue;
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                metrics::PROTOCOL_ERRORS.inc();
                tracing::info!(?peer, error = %err, "closing connection: bad frame");
                let code = match err {
                    FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    FrameError::Io(_) => break,
                    _ => ErrorCode::MalformedFrame,
                };
                let _ = tx
                    .send(error(code, err.to_string()).to_frame(0, 0).into())
                    .await;
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        last_frame = Instant::now();
        let (frame_kind, correlation_id) = (frame.kind, frame.correlation_id);
        let request = match Request::decode(frame.kind, frame.body.clone()) {
            Ok(request) => request,
            Err(DecodeError::UnknownKind(k)) => {
                // The frame boundary is intact: refuse this request only.
                let reply = error(
                    ErrorCode::UnknownRequest,
                    format!("unknown request kind {k}"),
                );
                if tx
                    .send(reply.to_frame(frame_kind, correlation_id).into())
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Err(err) => {
                metrics::PROTOCOL_ERRORS.inc();
                tracing::info!(?peer, error = %err, "closing connection: malformed request body");
                let reply = error(ErrorCode::MalformedFrame, err.to_string());
                let _ = tx
                    .send(reply.to_frame(frame_kind, correlation_id).into())
                    .await;
                break;
            }
        };

        if !handshaken {
            let reply = match request {
                Request::Handshake {
                    min_version,
                    max_version,
                    features,
                    ..
                } => handlers::handshake::handle(
                    min_version,
                    max_version,
                    features,
                    limits.max_frame_bytes,
                ),
                _ => Err(error(
                    ErrorCode::HandshakeRequired,
                    "the first request must be a handshake",
                )),
            };
            let ok = reply.is_ok();
            if tx
                .send(to_frame(reply, frame_kind, correlation_id).into())
                .await
                .is_err()
                || !ok
            {
                break;
            }
            handshaken = true;
            continue;
        }

        // Take the request's share of the budgets before dispatching it; this
        // await is the backpressure on a client that does not read.
        let cost = request_cost(&request, frame.body.len()).min(limits.max_in_flight_bytes) as u32;
        let permits = tokio::select! {
            _ = shutdown.cancelled() => break,
            permits = async {
                let bytes = bytes_budget.clone().acquire_many_owned(cost).await;
                let request = request_budget.clone().acquire_owned().await;
                (bytes, request)
            } => permits,
        };
        let (Ok(bytes_permit), Ok(request_permit)) = permits else {
            break;
        };
        let permits = (bytes_permit, request_permit);

        let started = Instant::now();
        let tx = tx.clone();
        let ctx = ctx.clone();
        match request {
            Request::Produce {
                topic,
                partition,
                batch,
            } => {
                // Appended here, in arrival order; only the wait is async.
                let pending = handlers::produce::start(&ctx.broker, &topic, partition, &batch);
                tasks.spawn(async move {
                    let reply = match pending {
                        Ok(pending) => handlers::produce::finish(pending).await,
                        Err(e) => Err(e),
                    };
                    respond(&tx, reply, frame_kind, correlation_id, started, permits).await;
                });
            }
            request @ Request::JoinGroup { .. } => {
                // Joined here, so the member is on this connection's list
                // before any later request can use it.
                // Joining may create the group (files, fsync): off the async
                // workers, but awaited here so later requests see the member.
                let join = handlers::on_blocking_thread(&ctx.broker, move |broker| {
                    handlers::groups::join(broker, &request)
                });
                let reply = match join.await {
                    Ok((response, group, member)) => {
                        joined.push((group, member));
                        Ok(response)
                    }
                    Err(e) => Err(e),
                };
                tasks.spawn(async move {
                    respond(&tx, reply, frame_kind, correlation_id, started, permits).await;
                });
            }
            request => {
                tasks.spawn(async move {
                    let reply = dispatch(&ctx, request).await;
                    respond(&tx, reply, frame_kind, correlation_id, started, permits).await;
                });
            }
        }
    }

    // Let what was accepted finish (bounded: fetches wait at most 30 s), then
    // close the writer, which flushes what is queued.
    drop(frames);
    // Leave groups first: a client that is gone must not hold messages
    // while its in-flight requests (a long-polling delivery, say) finish.
    for (group, member) in joined {
        if let Err(err) = ctx.broker.leave_group(&group, member) {
            tracing::debug!(group, member, error = %err, "leaving group at disconnect");
        }
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

async fn dispatch(ctx: &ServerContext, request: Request) -> Result<Response, ErrorResponse> {
    match request {
        Request::Fetch {
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        } => {
            // At shutdown a long poll answers at once with what there is.
            let wait_ms = if ctx.shutdown.is_cancelled() {
                0
            } else {
                max_wait_ms
            };
            tokio::select! {
                reply = handlers::fetch::handle(&ctx.broker, &topic, partition, offset, max_bytes, wait_ms) => reply,
                _ = ctx.shutdown.cancelled() => {
                    handlers::fetch::handle(&ctx.broker, &topic, partition, offset, max_bytes, 0).await
                }
            }
        }
        Request::CreateTopic {
            name,
            partitions,
            settings,
        } => {
            let defaults = ctx.topic_defaults.clone();
            handlers::on_blocking_thread(&ctx.broker, move |broker| {
                handlers::topics::create(broker, &defaults, &name, partitions, &settings)
            })
            .await
        }
        Request::DeleteTopic { name } => {
            handlers::on_blocking_thread(&ctx.broker, move |broker| {
                handlers::topics::delete(broker, &name)
            })
            .await
        }
        Request::ListTopics => Ok(handlers::topics::list(&ctx.broker)),
        Request::DescribeTopic { name } => handlers::topics::describe(&ctx.broker, &name),
        request @ Request::Deliver { .. } => {
            // Like a fetch: a waiting delivery answers at once at shutdown.
            tokio::select! {
                reply = handlers::groups::handle(&ctx.broker, request.clone(), ctx.shutdown.is_cancelled()) => reply,
                _ = ctx.shutdown.cancelled() => handlers::groups::handle(&ctx.broker, request, true).await,
            }
        }
        request @ (Request::LeaveGroup { .. }
        | Request::GroupAssignment { .. }
        | Request::Ack { .. }
        | Request::Nack { .. }
        | Request::Touch { .. }
        | Request::CommitOffset { .. }
        | Request::CommittedOffsets { .. }
        | Request::ListGroups
        | Request::DescribeGroup { .. }) => {
            handlers::groups::handle(&ctx.broker, request, false).await
        }
        Request::ResetGroup { group, to } => {
            handlers::on_blocking_thread(&ctx.broker, move |broker| {
                handlers::groups::reset(broker, &group, to)
            })
            .await
        }
        Request::OffsetForTimestamp {
            topic,
            partition,
            timestamp_ms,
        } => {
            // Scans batch headers of the partition's segments.
            handlers::on_blocking_thread(&ctx.broker, move |broker| {
                handlers::fetch::offset_for_timestamp(broker, &topic, partition, timestamp_ms)
            })
            .await
        }
        Request::JoinGroup { .. } => Err(error(
            ErrorCode::Internal,
            "join is dispatched in order, not here",
        )),
        Request::Handshake { .. } => {
            Err(error(ErrorCode::MalformedFrame, "handshake already done"))
        }
        Request::Produce { .. } => Err(error(
            ErrorCode::Internal,
            "produce is dispatched in order, not here",
        )),
    }
}

/// Bytes a request may hold in memory while in flight: its own frame, plus
/// for a fetch the response it may build.
fn request_cost(request: &Request, body_len: usize) -> usize {
    let response = match request {
        Request::Fetch { max_bytes, .. } => *max_bytes as usize,
        // Message sizes are unknown up front; budget a typical batch.
        Request::Deliver { .. } => 1 << 20,
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
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    metrics::REQUEST_SECONDS
        .with_label_values(&[kind_name(kind_)])
        .observe(started.elapsed().as_secs_f64());
    // A closed channel means the client is gone; nothing to do.
    let out = Outgoing {
        frame: to_frame(reply, kind_, correlation_id),
        permits: Some(permits),
    };
    let _ = tx.send(out).await;
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
