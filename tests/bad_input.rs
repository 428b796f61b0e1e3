//! Hostile and broken clients on raw sockets. Each gets a clear error code
//! or a closed connection; the broker never panics, never allocates what a
//! header announces, keeps serving everyone else, and stores nothing from a
//! rejected batch.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::SpoolServer;
use spool::client::{Client, TopicOptions};
use spool::protocol::frame::{FLAG_ERROR, FRAME_VERSION, MAGIC};
use spool::protocol::requests::*;
use spool::protocol::Wire;
use spool::protocol::{BatchBuilder, ErrorCode, ErrorResponse, Request};

struct Raw(TcpStream);

struct RawFrame {
    kind: u16,
    flags: u8,
    correlation_id: u32,
    body: Vec<u8>,
}

impl Raw {
    fn connect(server: &SpoolServer) -> Raw {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    /// Connects from another loopback address (all of 127/8 is local).
    async fn connect_from(server: &SpoolServer, source: &str) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let s = socket
            .connect(server.addr)
            .await
            .unwrap()
            .into_std()
            .unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed on us; that is fine.
        let _ = self.0.write_all(bytes);
    }

    fn send(&mut self, request: &Request, correlation_id: u32) {
        let frame = request.to_frame(correlation_id);
        self.send_frame(
            frame.kind,
            correlation_id,
            &frame.full_body(),
            MAGIC,
            FRAME_VERSION,
        );
    }

    fn send_frame(
        &mut self,
        kind_: u16,
        correlation_id: u32,
        body: &[u8],
        magic: u16,
        version: u8,
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(&(12 + body.len() as u32).to_le_bytes());
        b.extend_from_slice(&magic.to_le_bytes());
        b.push(version);
        b.push(0);
        b.extend_from_slice(&kind_.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&correlation_id.to_le_bytes());
        b.extend_from_slice(body);
        self.send_raw(&b);
    }

    /// The next frame, or `None` at end of stream.
    fn recv(&mut self) -> Option<RawFrame> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).ok()?;
        let len = u32::from_le_bytes(len) as usize;
        let mut rest = vec![0u8; len];
        self.0.read_exact(&mut rest).ok()?;
        Some(RawFrame {
            flags: rest[3],
            kind: u16::from_le_bytes([rest[4], rest[5]]),
            correlation_id: u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]),
            body: rest[12..].to_vec(),
        })
    }

    fn expect_error(&mut self, code: ErrorCode) -> RawFrame {
        let frame = self
            .recv()
            .expect("expected an error frame, got end of stream");
        assert!(frame.flags & FLAG_ERROR != 0, "expected an error frame");
        let err = ErrorResponse::decode(frame.body.clone().into()).unwrap();
        assert_eq!(err.code(), Some(code), "message: {}", err.message);
        frame
    }

    fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected the connection closed, read {n} more bytes"),
        }
    }

    fn handshake(&mut self) {
        self.send(
            &Request::Handshake(HandshakeRequest {
                min_version: spool::protocol::requests::PROTOCOL_VERSION_MIN,
                max_version: spool::protocol::requests::PROTOCOL_VERSION_MAX,
                features: 0,
                client_id: "raw".into(),
            }),
            1,
        );
        let frame = self.recv().unwrap();
        assert_eq!(frame.flags & FLAG_ERROR, 0, "handshake refused");
    }
}

/// The server still answers a well-behaved client.
async fn still_serving(server: &SpoolServer) {
    let client = Client::connect(server.addr)
        .await
        .expect("server stopped accepting");
    client
        .list_topics()
        .await
        .expect("server stopped answering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_an_error_and_a_closed_connection() {
    let server = SpoolServer::temporary();
    let mut raw = Raw::connect(&server);
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // "GET " read as a length is ~540 MB: refused as too large before anything else.
    raw.expect_error(ErrorCode::FrameTooLarge);
    raw.expect_closed();

    let mut raw = Raw::connect(&server);
    raw.send_raw(&[0x20, 0, 0, 0, 0xde, 0xad, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    raw.expect_error(ErrorCode::MalformedFrame); // bad magic
    raw.expect_closed();
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_4_gib_is_refused_without_allocating() {
    let server = SpoolServer::temporary();
    let rss_before = server.rss_kib();
    let mut raw = Raw::connect(&server);
    let mut header = vec![0xff, 0xff, 0xff, 0xff];
    header.extend_from_slice(&MAGIC.to_le_bytes());
    header.extend_from_slice(&[FRAME_VERSION, 0, 2, 0, 0, 0, 7, 0, 0, 0]);
    raw.send_raw(&header);
    raw.expect_error(ErrorCode::FrameTooLarge);
    raw.expect_closed();
    let grew = server.rss_kib().saturating_sub(rss_before);
    assert!(grew < 16 * 1024, "RSS grew by {grew} KiB");
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frames_and_early_hangups_are_harmless() {
    let server = SpoolServer::temporary();
    for cut in [1usize, 3, 4, 10, 15] {
        let mut raw = Raw::connect(&server);
        let frame = Request::ListTopics(ListTopicsRequest).to_frame(1);
        let mut bytes = (12u32 + frame.full_body().len() as u32)
            .to_le_bytes()
            .to_vec();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[
            FRAME_VERSION,
            0,
            kind::LIST_TOPICS as u8,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
        ]);
        raw.send_raw(&bytes[..cut.min(bytes.len())]);
        drop(raw);
    }
    // Half a frame, then silence: the server waits, holding no more than the half.
    let mut raw = Raw::connect(&server);
    raw.handshake();
    raw.send_raw(&[100, 0, 0, 0, 0x53, 0x50, 1]);
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_specific_codes() {
    let server = SpoolServer::temporary();

    // Anything before the handshake.
    let mut raw = Raw::connect(&server);
    raw.send(&Request::ListTopics(ListTopicsRequest), 5);
    raw.expect_error(ErrorCode::HandshakeRequired);
    raw.expect_closed();

    // A client that only speaks a future protocol version.
    let mut raw = Raw::connect(&server);
    raw.send(
        &Request::Handshake(HandshakeRequest {
            min_version: 7,
            max_version: 9,
            features: 0,
            client_id: "future".into(),
        }),
        1,
    );
    raw.expect_error(ErrorCode::UnsupportedVersion);
    raw.expect_closed();

    // An unknown request kind: refused, and the connection stays usable.
    let mut raw = Raw::connect(&server);
    raw.handshake();
    raw.send_frame(999, 42, b"whatever", MAGIC, FRAME_VERSION);
    let frame = raw.expect_error(ErrorCode::UnknownRequest);
    assert_eq!((frame.kind, frame.correlation_id), (999, 42));
    raw.send(&Request::ListTopics(ListTopicsRequest), 43);
    let frame = raw.recv().unwrap();
    assert_eq!((frame.flags & FLAG_ERROR, frame.correlation_id), (0, 43));

    // A known kind with an undecodable body: refused and closed.
    raw.send_frame(kind::PRODUCE, 44, &[1, 2, 3], MAGIC, FRAME_VERSION);
    raw.expect_error(ErrorCode::MalformedFrame);
    raw.expect_closed();

    // A frame format version from the future.
    let mut raw = Raw::connect(&server);
    raw.send_frame(kind::HANDSHAKE, 1, &[], MAGIC, 9);
    raw.expect_error(ErrorCode::MalformedFrame);
    raw.expect_closed();
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_wrong_crc_stores_nothing() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("t", 1, TopicOptions::default())
        .await;
    let mut b = BatchBuilder::new();
    b.push(0, None, b"precious", &[]).unwrap();
    let mut batch = b.finish().unwrap().to_vec();
    let last = batch.len() - 2;
    batch[last] ^= 0x01;
    let mut raw = Raw::connect(&server);
    raw.handshake();
    raw.send(
        &Request::Produce(ProduceRequest {
            topic: "t".into(),
            partition: 0,
            acks: Default::default(),
            batch: batch.into(),
        }),
        2,
    );
    raw.expect_error(ErrorCode::InvalidBatch);
    assert_eq!(
        client.describe_topic("t").await.unwrap().partitions[0].end,
        0
    );
    // The connection is still good for a valid batch.
    let mut b = BatchBuilder::new();
    b.push(0, None, b"fine", &[]).unwrap();
    raw.send(
        &Request::Produce(ProduceRequest {
            topic: "t".into(),
            partition: 0,
            acks: Default::default(),
            batch: b.finish().unwrap(),
        }),
        3,
    );
    assert_eq!(raw.recv().unwrap().flags & FLAG_ERROR, 0);
    assert_eq!(
        client.describe_topic("t").await.unwrap().partitions[0].end,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_slows_only_itself() {
    let server = SpoolServer::temporary();
    let client = server
        .client_with_topic("big", 1, TopicOptions::default())
        .await;
    for _ in 0..4 {
        let mut b = BatchBuilder::new();
        for _ in 0..1024 {
            b.push(0, None, &[7u8; 1000], &[]).unwrap();
        }
        client
            .produce_batch("big", 0, b.finish().unwrap())
            .await
            .unwrap();
    }
    let rss_before = server.rss_kib();
    // Ask for ~1 MiB again and again and never read an answer: 2 GiB of
    // responses if the server did not hold back.
    let mut greedy = Raw::connect(&server);
    greedy.handshake();
    greedy
        .0
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    for i in 0..2000u32 {
        let request = Request::Fetch(FetchRequest {
            topic: "big".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        });
        let frame = request.to_frame(i + 10);
        let mut bytes = (12u32 + frame.full_body().len() as u32)
            .to_le_bytes()
            .to_vec();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&[FRAME_VERSION, 0]);
        bytes.extend_from_slice(&frame.kind.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&frame.correlation_id.to_le_bytes());
        bytes.extend_from_slice(&frame.full_body());
        // Once the server stops reading us, our writes time out: stop there.
        if greedy.0.write_all(&bytes).is_err() {
            break;
        }
    }
    // Everyone else is served normally meanwhile.
    let started = Instant::now();
    let other = server.client().await;
    other
        .create_topic("small", 1, TopicOptions::default())
        .await
        .unwrap();
    for i in 0..100 {
        let mut b = BatchBuilder::new();
        b.push(0, None, format!("{i}").as_bytes(), &[]).unwrap();
        other
            .produce_batch("small", 0, b.finish().unwrap())
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a stuck reader slowed others"
    );
    let grew = server.rss_kib().saturating_sub(rss_before);
    // Bounded by the per-connection in-flight budget (64 MiB) plus buffers.
    assert!(
        grew < 160 * 1024,
        "server RSS grew by {grew} KiB for one stuck reader"
    );
    drop(greedy);
    still_serving(&server).await;
}

/// One address cannot take every slot: past its own limit it is refused
/// (and the refusals are logged at most once a second), while another
/// address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let server =
        SpoolServer::temporary_with(&["--max-connections", "8", "--max-connections-per-ip", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(&server);
        c.handshake();
        held.push(c);
    }
    for _ in 0..50 {
        let mut refused = Raw::connect(&server);
        refused.expect_error(ErrorCode::TooManyConnections);
        refused.expect_closed();
    }
    let mut other = Raw::connect_from(&server, "127.0.0.2").await;
    other.handshake();
    // A slot comes back when its connection closes.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(&server);
    again.handshake();
    drop((again, held, other));
    std::thread::sleep(Duration::from_millis(200));
    still_serving(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_idle_timeout() {
    let server = SpoolServer::temporary_with(&[
        "--max-connections",
        "2",
        "--max-connections-per-ip",
        "2",
        "--idle-timeout-secs",
        "1",
    ]);
    let mut a = Raw::connect(&server);
    a.handshake();
    let mut b = Raw::connect(&server);
    b.handshake();
    let mut c = Raw::connect(&server);
    c.expect_error(ErrorCode::TooManyConnections);
    c.expect_closed();
    // Idle connections are closed after the timeout, freeing their slots.
    std::thread::sleep(Duration::from_millis(1500));
    a.expect_closed();
    b.expect_closed();
    still_serving(&server).await;
}

/// A hostile (or broken) server announcing a 4 GiB response: the client
/// refuses the frame at its header, before reserving anything or waiting for
/// the rest, and says why.
#[tokio::test]
async fn a_client_refuses_a_response_frame_over_its_limit_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 64];
        let _ = socket.read(&mut hello).await.unwrap();
        let mut header = Vec::new();
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&[FRAME_VERSION, 1]);
        header.extend_from_slice(&kind::HANDSHAKE.to_le_bytes());
        header.extend_from_slice(&[0, 0]);
        header.extend_from_slice(&1u32.to_le_bytes());
        socket.write_all(&header).await.unwrap();
        // Keep the socket open: a client that waits for the body hangs.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let options = spool::client::ConnectOptions {
        connect_attempts: 1,
        connect_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let started = Instant::now();
    let err = Client::connect_with(addr, options)
        .await
        .err()
        .expect("a 4 GiB response frame must be refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    server.abort();
}

/// The metrics endpoint serves a bounded number of connections: 64 idle
/// ones do not grow the server further, a 65th is closed at once, and once
/// they go the endpoint answers again.
#[test]
fn the_metrics_endpoint_bounds_its_connections() {
    let server = SpoolServer::temporary();
    let idle: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(server.metrics).unwrap())
        .collect();
    // Let the server accept all of them.
    std::thread::sleep(Duration::from_millis(50));
    let health = || {
        let mut s = TcpStream::connect(server.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let answer = health();
    assert!(
        !answer.contains("200"),
        "a connection over the limit was served: {answer:?}"
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if health().contains("200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "the endpoint did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a frame of `kind` announcing `body_len` bytes of body, then the
/// first `send` bytes of `body` (zeros), through a tokio socket.
async fn send_large_frame(
    stream: &mut tokio::net::TcpStream,
    kind_: u16,
    body_len: usize,
    body: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut head = Vec::new();
    head.extend_from_slice(&(12 + body_len as u32).to_le_bytes());
    head.extend_from_slice(&MAGIC.to_le_bytes());
    head.push(FRAME_VERSION);
    head.push(0);
    head.extend_from_slice(&kind_.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&7u32.to_le_bytes());
    stream.write_all(&head).await?;
    stream.write_all(body).await
}

async fn tokio_handshake(server: &SpoolServer) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let hello = Request::Handshake(HandshakeRequest {
        min_version: spool::protocol::requests::PROTOCOL_VERSION_MIN,
        max_version: spool::protocol::requests::PROTOCOL_VERSION_MAX,
        features: 0,
        client_id: "large".into(),
    })
    .to_frame(1);
    let mut codec = spool::protocol::FrameCodec::default();
    let mut wire = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(&mut codec, hello, &mut wire).unwrap();
    stream.write_all(&wire).await.unwrap();
    let mut reply = bytes::BytesMut::new();
    loop {
        if let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, &mut reply).unwrap() {
            assert_eq!(frame.flags & FLAG_ERROR, 0, "handshake refused");
            return stream;
        }
        assert_ne!(stream.read_buf(&mut reply).await.unwrap(), 0, "closed");
    }
}

/// The error code of the next frame on `stream` (an error frame is
/// expected), or `None` if it closed first.
async fn next_error(stream: &mut tokio::net::TcpStream) -> Option<ErrorCode> {
    use tokio::io::AsyncReadExt;
    let mut codec = spool::protocol::FrameCodec::default();
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, &mut buf).ok()? {
            assert!(frame.flags & FLAG_ERROR != 0, "expected an error frame");
            return ErrorResponse::decode(frame.body).ok()?.code();
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Samples the server's resident memory every 10 ms until `done`; the
/// highest value seen, in MiB.
fn watch_rss(pid: u32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

fn rss_mib(pid: u32) -> u64 {
    common::server::rss_kib_of(pid) / 1024
}

/// 100 connections each sending a 60 MiB frame at once: the server reads
/// them through its frame budget (128 MiB here), so its memory stays within
/// the budget plus a small margin, and returns to where it was afterwards.
/// Without the budget every connection buffered its frame at once (40 such
/// connections once took a server to 2.58 GB and left it holding 650 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_60_mib_frames_stay_within_the_frame_budget() {
    const CONNECTIONS: usize = 100;
    const FRAME: usize = 60 << 20;
    const BUDGET_MIB: u64 = 128;
    // To see this test fail, give the server a budget it never reaches.
    let flag = std::env::var("SPOOL_TEST_FRAME_MEMORY_MIB").unwrap_or(BUDGET_MIB.to_string());
    let server = SpoolServer::temporary_with(&["--frame-memory-mib", &flag]);
    still_serving(&server).await;
    let before = rss_mib(server.pid());
    let body: Arc<[u8]> = vec![0u8; FRAME].into();
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        streams.push(tokio_handshake(&server).await);
    }
    let done = Arc::new(AtomicBool::new(false));
    let peak = watch_rss(server.pid(), done.clone());
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for mut stream in streams {
        let body = body.clone();
        senders.spawn(async move {
            // An unknown kind: read whole, refused, the connection goes on.
            send_large_frame(&mut stream, 999, FRAME, &body)
                .await
                .unwrap();
            next_error(&mut stream).await
        });
    }
    while let Some(answer) = senders.join_next().await {
        assert_eq!(answer.unwrap(), Some(ErrorCode::UnknownRequest));
    }
    done.store(true, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let elapsed = started.elapsed();
    // Freed memory goes back to the system (the bodies are their own
    // allocations), though not always in the same instant.
    let mut after = rss_mib(server.pid());
    for _ in 0..50 {
        if after <= before + 32 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = rss_mib(server.pid());
    }
    eprintln!(
        "{CONNECTIONS} x {} MiB frames in {elapsed:?}: server RSS {before} MiB before, \
         peak {peak} MiB, {after} MiB after (budget {BUDGET_MIB} MiB)",
        FRAME >> 20
    );
    assert!(
        peak <= before + BUDGET_MIB + 48,
        "peak RSS {peak} MiB is past the {BUDGET_MIB} MiB budget (started at {before} MiB)"
    );
    assert!(
        after <= before + 32,
        "RSS stayed at {after} MiB after the frames (started at {before} MiB)"
    );
    still_serving(&server).await;
}

/// Senders that stall halfway through large frames hold the frame budget
/// only until the frame deadline: then they are closed with LimitReached,
/// and a produce that waited behind them goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_frame_is_cut_at_the_frame_deadline() {
    const FRAME: usize = 60 << 20;
    let server =
        SpoolServer::temporary_with(&["--frame-memory-mib", "100", "--frame-deadline-secs", "2"]);
    let client = server
        .client_with_topic("t", 1, TopicOptions::default())
        .await;
    let half: Arc<[u8]> = vec![0u8; FRAME / 2].into();
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let mut stream = tokio_handshake(&server).await;
        let half = half.clone();
        stalled.spawn(async move {
            // The second one's write waits for the server to read it.
            send_large_frame(&mut stream, kind::PRODUCE, FRAME, &half)
                .await
                .unwrap();
            next_error(&mut stream).await
        });
    }
    // One stalled frame holds 60 of the 100 MiB, the other waits for 60,
    // and this 8 MiB produce waits behind it (first come, first served).
    let waiting = Instant::now();
    while !server
        .http_get("/metrics")
        .contains("spool_frame_budget_waits_total 1")
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "no frame waits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut batch = BatchBuilder::new();
    batch.push(0, None, &vec![1u8; 8 << 20], &[]).unwrap();
    let batch = batch.finish().unwrap();
    let stored = tokio::time::timeout(Duration::from_secs(30), client.produce_batch("t", 0, batch))
        .await
        .expect("the produce waited past the stalled frames' deadline")
        .expect("produce");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the produce did not wait for the budget ({waited:?}): is it enforced?"
    );
    assert_eq!(stored, (0, 1));
    while let Some(answer) = stalled.join_next().await {
        assert_eq!(answer.unwrap(), Some(ErrorCode::LimitReached));
    }
    still_serving(&server).await;
}
