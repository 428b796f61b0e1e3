//! One TCP connection to a server, shared by every clone of a client.
//!
//! Requests are pipelined: [`Connection::start`] queues the frame at once
//! (so requests leave in the order they were started) and returns a future
//! for the response, which the reader task routes back by correlation id.
//! When the connection breaks, every pending request fails with
//! [`ClientError::Disconnected`].
//!
//! Bounds: at most [`ConnectOptions::max_pending_requests`] requests are
//! queued or awaiting their response at once ([`Connection::start`] waits
//! for a slot), which also bounds the outgoing queue; a response frame
//! larger than [`ConnectOptions::max_frame_bytes`] breaks the connection
//! before any memory is reserved for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use spool_protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use spool_protocol::requests::{HandshakeRequest, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use spool_protocol::{Call, ErrorResponse, Frame, FrameCodec, FrameWriter, Wire};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::FramedRead;

use super::ClientError;
use crate::transport::{Socket, Transport};

/// A request awaiting its response, holding one of the connection's slots
/// until the response (or the disconnect) is delivered.
struct Waiter {
    done: oneshot::Sender<Result<Frame, ClientError>>,
    _slot: OwnedSemaphorePermit,
}

type Pending = Arc<Mutex<HashMap<u32, Waiter>>>;

/// A connected socket: plain, or TLS over it.
enum Either {
    Plain(Socket),
    Tls(Box<tokio_rustls::client::TlsStream<Socket>>),
}

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Attempts before giving up (at least 1).
    pub connect_attempts: u32,
    /// Pause before the second attempt; doubles each time, up to 2 s.
    pub retry_backoff: Duration,
    /// Deadline for each TCP connect and the handshake.
    pub connect_timeout: Duration,
    /// Name sent in the handshake, for the server's logs.
    pub client_id: String,
    /// Largest response frame accepted (the length field's value); a larger
    /// one is a protocol error that closes the connection.
    pub max_frame_bytes: usize,
    /// Requests queued or awaiting a response at once; more wait.
    pub max_pending_requests: usize,
    /// How long a request may go unanswered, beyond the time the server is
    /// asked to hold it (a fetch's or delivery's wait), before the client
    /// gives up on it and on the connection (a paused or partitioned
    /// server). The error is retriable.
    pub request_timeout: Duration,
    /// Speak TLS to the brokers (`None`: plain TCP).
    pub tls: Option<crate::TlsOptions>,
    /// Authenticate every connection as this user (`None`: do not).
    pub credentials: Option<Credentials>,
    /// Where sockets come from: TCP, unless a test runs the client over a
    /// simulated network.
    pub transport: Transport,
}

/// A user and password to authenticate with.
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never a password in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            client_id: format!("spool-client {}", env!("CARGO_PKG_VERSION")),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_pending_requests: 4096,
            request_timeout: Duration::from_secs(30),
            tls: None,
            credentials: None,
            transport: Transport::tcp(),
        }
    }
}

/// A live, handshaken connection.
pub struct Connection {
    tx: mpsc::UnboundedSender<Frame>,
    pending: Pending,
    slots: Arc<Semaphore>,
    next_id: AtomicU32,
    closed: Arc<AtomicBool>,
    request_timeout: Duration,
    /// Largest frame the server accepts.
    pub max_frame_bytes: u32,
}

impl Connection {
    /// Connects (retrying with backoff) and performs the handshake.
    pub async fn connect(
        addr: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let mut backoff = options.retry_backoff;
        let mut last_err = None;
        for attempt in 0..options.connect_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            let connected = tokio::time::timeout(options.connect_timeout, async {
                let stream = options.transport.connect(addr).await?;
                match &options.tls {
                    None => Ok::<_, std::io::Error>(Either::Plain(stream)),
                    Some(tls) => Ok(Either::Tls(Box::new(tls.connect(addr, stream).await?))),
                }
            })
            .await;
            match connected {
                Ok(Ok(Either::Plain(Socket::Tcp(stream)))) => {
                    // Owned halves: no lock between reader and writer.
                    let (rd, wr) = stream.into_split();
                    return Connection::handshake(rd, wr, options).await;
                }
                Ok(Ok(Either::Plain(socket))) => {
                    let (rd, wr) = socket.into_split();
                    return Connection::handshake(rd, wr, options).await;
                }
                Ok(Ok(Either::Tls(stream))) => {
                    let (rd, wr) = tokio::io::split(*stream);
                    return Connection::handshake(rd, wr, options).await;
                }
                // A certificate the client does not trust: trying again
                // will not help.
                Ok(Err(err))
                    if options.tls.is_some() && err.kind() == std::io::ErrorKind::InvalidData =>
                {
                    return Err(ClientError::Connect {
                        addr,
                        source: Arc::new(err),
                    })
                }
                Ok(Err(err)) => last_err = Some(err),
                Err(_) => {
                    last_err = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        Err(ClientError::Connect {
            addr,
            source: Arc::new(last_err.unwrap_or_else(|| std::io::Error::other("no attempt made"))),
        })
    }

    async fn handshake<R, W>(
        rd: R,
        wr: W,
        options: &ConnectOptions,
    ) -> Result<Connection, ClientError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // Unbounded in type, bounded in fact: a frame is queued only by a
        // request that holds one of `slots`.
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let slots = Arc::new(Semaphore::new(options.max_pending_requests.max(1)));
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));

        tokio::spawn(async move {
            // Requests were sized by `Call::to_frame`; the server's own
            // limit, learned in the handshake, is enforced by the server.
            let mut sink = FrameWriter::new(wr, usize::MAX);
            while let Some(frame) = rx.recv().await {
                if sink.feed(frame).await.is_err() {
                    return;
                }
                // Whatever else is ready goes out in the same write.
                while let Ok(frame) = rx.try_recv() {
                    if sink.feed(frame).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        {
            let pending = pending.clone();
            let closed = closed.clone();
            let max_frame_bytes = options.max_frame_bytes;
            tokio::spawn(async move {
                let mut frames = FramedRead::new(rd, FrameCodec::new(max_frame_bytes));
                let reason = loop {
                    match frames.next().await {
                        Some(Ok(frame)) => {
                            let waiter = pending.lock().remove(&frame.correlation_id);
                            match waiter {
                                Some(waiter) => {
                                    let _ = waiter.done.send(Ok(frame));
                                }
                                None if frame.is_error() => {
                                    // Correlation 0: the server is closing us.
                                    let message = ErrorResponse::decode(frame.body)
                                        .map(|e| e.message)
                                        .unwrap_or_else(|e| e.to_string());
                                    break format!("server closed the connection: {message}");
                                }
                                None => tracing::warn!(
                                    id = frame.correlation_id,
                                    "response to no request"
                                ),
                            }
                        }
                        Some(Err(err)) => break err.to_string(),
                        None => break "connection closed by the server".to_string(),
                    }
                };
                closed.store(true, Ordering::Release);
                let mut waiters: Vec<_> = pending.lock().drain().collect();
                // In the order they were sent, not the map's: the tasks they
                // wake run in this order, and a simulation replays only if
                // that order is the same every time.
                waiters.sort_unstable_by_key(|(id, _)| *id);
                for (_, waiter) in waiters {
                    let _ = waiter
                        .done
                        .send(Err(ClientError::Disconnected(reason.clone())));
                }
            });
        }

        let mut conn = Connection {
            tx,
            pending,
            slots,
            next_id: AtomicU32::new(1),
            closed,
            request_timeout: options.request_timeout,
            max_frame_bytes: 0,
        };
        let hello = HandshakeRequest {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            features: 0,
            client_id: options.client_id.clone(),
        };
        let reply = tokio::time::timeout(options.connect_timeout, async {
            conn.start(&hello).await?.await
        })
        .await
        .map_err(|_| ClientError::Disconnected("handshake timed out".into()))??;
        conn.max_frame_bytes = reply.max_frame_bytes;
        if let Some(credentials) = &options.credentials {
            let request = spool_protocol::requests::AuthenticateRequest {
                mechanism: "PLAIN".into(),
                user: credentials.user.clone(),
                password: credentials.password.clone(),
            };
            tokio::time::timeout(options.connect_timeout, async {
                conn.start(&request).await?.await
            })
            .await
            .map_err(|_| ClientError::Disconnected("authentication timed out".into()))??;
        }
        Ok(conn)
    }

    /// True once the connection has broken.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `request` as soon as one of the connection's request slots is
    /// free, and returns a future for its response. Requests started one
    /// after another leave in that order.
    pub async fn start<C: Call>(
        &self,
        request: &C,
    ) -> Result<
        impl std::future::Future<Output = Result<C::Reply, ClientError>> + Send + 'static,
        ClientError,
    > {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Disconnected("connection is closed".into()))?;
        if self.is_closed() {
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (done, wait) = oneshot::channel();
        self.pending.lock().insert(id, Waiter { done, _slot: slot });
        // The reader marks the connection closed before it fails every
        // waiter: a waiter added after that would wait out the whole
        // request timeout for an answer nobody will deliver.
        if self.is_closed() {
            self.pending.lock().remove(&id);
            return Err(ClientError::Disconnected("connection is closed".into()));
        }
        let frame = request.to_frame(id);
        if self.tx.send(frame).is_err() {
            self.pending.lock().remove(&id);
            return Err(ClientError::Disconnected(
                "connection writer stopped".into(),
            ));
        }
        let limit = self.request_timeout + request.server_wait();
        let (pending, closed) = (self.pending.clone(), self.closed.clone());
        Ok(async move {
            let frame = match tokio::time::timeout(limit, wait).await {
                Ok(answer) => {
                    answer.map_err(|_| ClientError::Disconnected("connection dropped".into()))??
                }
                Err(_) => {
                    // No answer: the server is paused, gone or cut off. Give
                    // up on this connection too; the next call makes a new
                    // one (to another broker, in a cluster, if need be).
                    pending.lock().remove(&id);
                    closed.store(true, Ordering::Release);
                    return Err(ClientError::Disconnected(format!(
                        "no answer within {limit:?}"
                    )));
                }
            };
            if frame.is_error() {
                let err = ErrorResponse::decode(frame.body)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Err(ClientError::Server {
                    code: err.code(),
                    raw_code: err.code,
                    message: err.message,
                });
            }
            C::Reply::decode(frame.body).map_err(|e| ClientError::Protocol(e.to_string()))
        })
    }

    /// Sends `request` and waits for its response.
    pub async fn call<C: Call>(&self, request: &C) -> Result<C::Reply, ClientError> {
        self.start(request).await?.await
    }
}
