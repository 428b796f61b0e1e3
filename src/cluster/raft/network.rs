//! Raft's messages between brokers: one TCP connection per peer, each
//! message a length-prefixed bincode frame, one request and its answer at a
//! time (openraft sends to each peer in order anyway).
//!
//! This is the peer port (`--peer-listen`); clients never speak it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spool_client::transport::{Listener, Transport};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::{LeaseDesk, Raft, TypeConfig};
use crate::cluster::peer_tls::PeerTls;
use crate::cluster::state::{Command, Member, Outcome};

type NodeIdRaw = u64;

/// Largest peer frame: a snapshot of the cluster state travels in one.
const MAX_PEER_FRAME: usize = 64 << 20;
/// How long one peer call may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
pub(super) enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeIdRaw>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A broker's heartbeat, for the Raft leader's lease clock, with how
    /// to reach it (the leader adds it as a member if it is not one).
    Heartbeat(Member),
    /// A command for the Raft leader to commit.
    Propose(Command),
    /// A client's lock session keep-alive, for the Raft leader's lease
    /// clock.
    SessionKeepAlive(u64),
}

#[derive(Serialize, Deserialize)]
pub(super) enum PeerResponse {
    Append(Result<AppendEntriesResponse<NodeIdRaw>, RaftError<NodeIdRaw>>),
    Vote(Result<VoteResponse<NodeIdRaw>, RaftError<NodeIdRaw>>),
    Snapshot(
        Result<InstallSnapshotResponse<NodeIdRaw>, RaftError<NodeIdRaw, InstallSnapshotError>>,
    ),
    /// Counted by the leader, with the index of the last entry it had
    /// applied, or why not (not the leader; no such lease).
    Heartbeat(Result<u64, String>),
    /// Committed, or why not (not the leader, no quorum).
    Propose(Result<Outcome, String>),
    /// Counted, with the session's TTL in milliseconds, or why not.
    SessionKeepAlive(Result<u64, crate::locks::LockError>),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_PEER_FRAME)
        .new_codec()
}

fn encode<T: Serialize>(value: &T) -> Result<bytes::Bytes, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bincode::serde::decode_from_slice(bytes, bincode::config::standard()) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(format!("{} bytes after the message", bytes.len() - used)),
        Err(e) => Err(e.to_string()),
    }
}

/// Where this broker dials each peer: the address in the Raft membership,
/// unless `--peer-route` overrides it (a peer behind NAT or a proxy, as seen
/// from here).
#[derive(Clone, Debug, Default)]
pub struct PeerRoutes(pub Arc<BTreeMap<NodeIdRaw, String>>);

impl PeerRoutes {
    /// The address to dial for `peer`, whose membership address is
    /// `listed`.
    pub fn dial(&self, peer: NodeIdRaw, listed: &str) -> String {
        self.0
            .get(&peer)
            .cloned()
            .unwrap_or_else(|| listed.to_string())
    }
}

/// Makes connections to peers: where to dial them, and how.
#[derive(Clone, Debug, Default)]
pub struct Network {
    /// Overrides of where to dial.
    pub routes: PeerRoutes,
    /// Mutual TLS with peers, if the cluster uses it.
    pub tls: Option<PeerTls>,
    /// Where sockets come from: TCP, or a simulation's network.
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeIdRaw, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            addr: self.routes.dial(target, &node.addr),
            client: PeerClient::new(self),
        }
    }
}

/// One peer, connected on first use and again after any failure.
pub struct PeerConnection {
    target: NodeIdRaw,
    addr: String,
    client: PeerClient,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerIoError(String);

impl PeerConnection {
    async fn call<E>(
        &mut self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw, E>>>
    where
        E: std::error::Error,
    {
        // Openraft backs off from an unreachable peer but retries a network
        // error at once: a failed connect is the former.
        let target = self.target;
        self.client
            .call(&self.addr, &request, timeout)
            .await
            .map_err(|e| match e {
                PeerCallError::Connect(e) => {
                    RPCError::Unreachable(Unreachable::new(&PeerIoError(e)))
                }
                PeerCallError::Exchange(e) => RPCError::Network(NetworkError::new(&PeerIoError(
                    format!("peer {target}: {e}"),
                ))),
            })
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<NodeIdRaw, E>,
    ) -> RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw, E>> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

fn mismatch<E: std::error::Error>() -> RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw, E>> {
    RPCError::Network(NetworkError::new(&PeerIoError(
        "peer answered a different request kind".into(),
    )))
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<NodeIdRaw>,
        RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw>>,
    > {
        match self
            .call(PeerRequest::Append(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::Append(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeIdRaw>,
        RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::Snapshot(rpc), option.hard_ttl())
            .await?
        {
            PeerResponse::Snapshot(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeIdRaw>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeIdRaw>, RPCError<NodeIdRaw, BasicNode, RaftError<NodeIdRaw>>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await? {
            PeerResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            _ => Err(mismatch()),
        }
    }
}

/// Why a peer call failed.
#[derive(Debug)]
pub(super) enum PeerCallError {
    /// No connection could be made.
    Connect(String),
    /// The request or its answer was lost, malformed or late.
    Exchange(String),
}

impl std::fmt::Display for PeerCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerCallError::Connect(e) | PeerCallError::Exchange(e) => f.write_str(e),
        }
    }
}

/// A peer connection's byte stream: plain TCP or TLS.
trait PeerIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin> PeerIo for T {}

/// A connection to one peer (for Raft, heartbeats and forwarded commands
/// alike), made on first use and again after a failure.
pub(super) struct PeerClient {
    addr: String,
    tls: Option<PeerTls>,
    transport: Transport,
    conn: Option<Framed<Box<dyn PeerIo>, LengthDelimitedCodec>>,
}

impl PeerClient {
    /// A client dialling peers over `network`'s transport, with its TLS if
    /// the cluster uses TLS.
    pub(super) fn new(network: &Network) -> PeerClient {
        PeerClient {
            addr: String::new(),
            tls: network.tls.clone(),
            transport: network.transport.clone(),
            conn: None,
        }
    }

    /// Connects to `addr`, with the TLS handshake if the cluster uses TLS.
    async fn connect(&self, addr: &str) -> Result<Box<dyn PeerIo>, String> {
        let sock: SocketAddr = addr
            .parse()
            .map_err(|_| format!("peer address {addr:?} is not IP:PORT"))?;
        let stream = self
            .transport
            .connect(sock)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(stream));
        };
        let stream = tls
            .client
            .connect(sock, stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(stream))
    }

    /// Sends `request` to the peer at `addr` and waits up to `timeout` for
    /// its answer, connecting first if need be (within [`CONNECT_TIMEOUT`]
    /// or `timeout`, whichever is shorter).
    pub(super) async fn call(
        &mut self,
        addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerCallError> {
        if self.addr != addr {
            self.addr = addr.to_string();
            self.conn = None;
        }
        if self.conn.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT.min(timeout), self.connect(addr))
                .await
                .map_err(|_| PeerCallError::Connect(format!("connecting to {addr} timed out")))?
                .map_err(PeerCallError::Connect)?;
            self.conn = Some(Framed::new(stream, codec()));
        }
        let exchange = async {
            let framed = self
                .conn
                .as_mut()
                .ok_or_else(|| "not connected".to_string())?;
            framed
                .send(encode(request)?)
                .await
                .map_err(|e| e.to_string())?;
            match framed.next().await {
                Some(Ok(frame)) => decode::<PeerResponse>(&frame),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("peer closed the connection".to_string()),
            }
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result.map_err(|e| format!("{addr}: {e}")),
            Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
        };
        if result.is_err() {
            self.conn = None;
        }
        result.map_err(PeerCallError::Exchange)
    }
}

/// Answers peers' Raft messages on `listener` until `stop` is cancelled.
pub(super) async fn serve_peers(
    listener: Listener,
    raft: Raft,
    desk: std::sync::Arc<LeaseDesk>,
    tls: Option<PeerTls>,
    stop: CancellationToken,
) {
    let refusals = Arc::new(PeerRefusals::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let raft = raft.clone();
        let desk = desk.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let stream: Box<dyn PeerIo> = match tls {
                None => Box::new(stream),
                Some(tls) => {
                    let deadline = crate::server::tls::HANDSHAKE_DEADLINE;
                    match tokio::time::timeout(deadline, tls.server.acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(e)) => return refusals.note(peer, &e.to_string()),
                        Err(_) => return refusals.note(peer, "no TLS handshake in time"),
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_peer(stream, peer, raft, desk) => {}
            }
        });
    }
}

/// Logs peers refused at the TLS handshake, once a minute per address (a
/// misconfigured broker retries every heartbeat).
#[derive(Default)]
struct PeerRefusals {
    logged: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, tokio::time::Instant>>,
}

impl PeerRefusals {
    fn note(&self, peer: SocketAddr, error: &str) {
        crate::metrics::TLS_HANDSHAKE_FAILURES.inc();
        let mut logged = self.logged.lock();
        let now = tokio::time::Instant::now();
        let recent = logged
            .get(&peer.ip())
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60));
        if !recent {
            logged.insert(peer.ip(), now);
            tracing::warn!(%peer, error, "refused a peer at the TLS handshake (is its certificate signed by the cluster CA?)");
        }
    }
}

async fn serve_peer(
    stream: Box<dyn PeerIo>,
    peer: SocketAddr,
    raft: Raft,
    desk: std::sync::Arc<LeaseDesk>,
) {
    let mut framed = Framed::new(stream, codec());
    while let Some(frame) = framed.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer connection broke");
                return;
            }
        };
        let request = match decode::<PeerRequest>(&frame) {
            Ok(request) => request,
            Err(e) => {
                // Not a Spool peer, or another version: drop this connection.
                tracing::warn!(%peer, error = %e, "malformed peer message; closing");
                return;
            }
        };
        let response = match request {
            PeerRequest::Append(rpc) => PeerResponse::Append(raft.append_entries(rpc).await),
            PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await),
            PeerRequest::Snapshot(rpc) => PeerResponse::Snapshot(raft.install_snapshot(rpc).await),
            PeerRequest::Heartbeat(member) => PeerResponse::Heartbeat(desk.heartbeat(member)),
            PeerRequest::Propose(command) => {
                PeerResponse::Propose(desk.propose_here(command).await)
            }
            PeerRequest::SessionKeepAlive(session) => {
                PeerResponse::SessionKeepAlive(desk.session_heartbeat(session))
            }
        };
        let bytes = match encode(&response) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot encode a peer response");
                return;
            }
        };
        if framed.send(bytes).await.is_err() {
            return;
        }
    }
}
