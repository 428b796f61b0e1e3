//! Reads request frames off a connection, each body into memory taken from
//! one server-wide budget.
//!
//! A connection's own bounds (bytes and requests in flight, see
//! [`ConnectionLimits`](super::ConnectionLimits)) stop one client from
//! holding much; they do not stop many clients together. Forty connections
//! each sending most of a legal 64 MiB frame once held 2.6 GB. So a reader
//! learns a frame's length from its header, then waits for that many bytes
//! of the [`FrameBudget`] before it reads the body: while the budget is
//! spent, connections stop reading and TCP pushes back on their senders.
//! Each body gets its own allocation of exactly its size, freed as soon as
//! the request no longer needs it, so a burst of large frames leaves no
//! grown buffer behind; a large body is its own anonymous memory map, which
//! goes back to the system the moment it is dropped (an allocator may keep
//! freed memory for a while: mimalloc held 130 MiB after a burst of 60 MiB
//! frames until the next allocation came along).
//!
//! A frame must also arrive in time once it has started (the frame
//! deadline), or a sender that stalls halfway would keep its share of the
//! budget for as long as it likes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_protocol::frame::PREFIX_LEN;
use spool_protocol::{Frame, FrameError, FrameHead};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The read half of a connection: plain TCP or TLS.
pub type ReadHalf = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

/// Read buffer for small frames; larger bodies are read straight into
/// their own allocation.
const READ_BUFFER: usize = 64 * 1024;

/// Bodies this large are read into a memory map of their own. Producers'
/// batches (256 KiB by default) stay on the heap, where reuse is cheaper
/// than fresh pages.
const MAPPED_BODY: usize = 1024 * 1024;

/// Memory for frame bodies, shared by every connection of a server.
#[derive(Debug)]
pub struct FrameBudget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl FrameBudget {
    /// A budget of `bytes`. It must hold the largest frame, or that frame
    /// could never be read: the caller checks.
    pub fn new(bytes: usize) -> FrameBudget {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        FrameBudget {
            permits: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// Waits until `bytes` of the budget are free and takes them; they
    /// return when the permit is dropped.
    async fn take(&self, bytes: usize) -> Option<FrameMemory> {
        let bytes = bytes.clamp(1, self.bytes);
        let amount = u32::try_from(bytes).ok()?;
        let permit = match self.permits.clone().try_acquire_many_owned(amount) {
            Ok(permit) => permit,
            Err(_) => {
                metrics::FRAME_BUDGET_WAITS.inc();
                self.permits.clone().acquire_many_owned(amount).await.ok()?
            }
        };
        metrics::FRAME_MEMORY.add(bytes as i64);
        Some(FrameMemory {
            _permit: permit,
            bytes,
        })
    }
}

/// A frame body's share of the [`FrameBudget`], given back on drop.
#[derive(Debug)]
pub struct FrameMemory {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        metrics::FRAME_MEMORY.sub(self.bytes as i64);
    }
}

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a frame, or the socket failed.
    Frame(FrameError),
    /// The frame started but did not finish within the frame deadline.
    Deadline(Duration),
}

impl From<std::io::Error> for ReadError {
    fn from(err: std::io::Error) -> Self {
        ReadError::Frame(FrameError::Io(err))
    }
}

/// The read half of a connection.
pub struct FrameReader {
    rd: BufReader<ReadHalf>,
}

impl FrameReader {
    /// Reads from `rd`.
    pub fn new(rd: ReadHalf) -> FrameReader {
        FrameReader {
            rd: BufReader::with_capacity(READ_BUFFER, rd),
        }
    }

    /// Waits until the next frame starts to arrive. False: the peer closed
    /// the connection between frames.
    pub async fn ready(&mut self) -> std::io::Result<bool> {
        Ok(!self.rd.fill_buf().await?.is_empty())
    }

    /// Reads one whole frame, its body in memory taken from `budget`
    /// (waiting for it), within `deadline` for each of the header and the
    /// body (the wait for budget is the server's, not the sender's, so it
    /// does not count). Frames longer than `max_frame_bytes` are refused
    /// from their header, before any memory is taken.
    pub async fn read(
        &mut self,
        max_frame_bytes: usize,
        budget: &FrameBudget,
        deadline: Duration,
    ) -> Result<(Frame, FrameMemory), ReadError> {
        let mut prefix = [0u8; PREFIX_LEN];
        within(deadline, self.rd.read_exact(&mut prefix)).await??;
        let head = FrameHead::parse(&prefix, max_frame_bytes).map_err(ReadError::Frame)?;
        let memory =
            budget
                .take(head.body_len)
                .await
                .ok_or(ReadError::Frame(FrameError::TooLarge {
                    len: head.body_len,
                    max: max_frame_bytes,
                }))?;
        let body = within(deadline, read_body(&mut self.rd, head.body_len)).await??;
        let frame = Frame {
            kind: head.kind,
            flags: head.flags,
            correlation_id: head.correlation_id,
            body,
            tail: Vec::new(),
        };
        Ok((frame, memory))
    }
}

async fn within<T>(
    deadline: Duration,
    read: impl std::future::Future<Output = T>,
) -> Result<T, ReadError> {
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_elapsed| ReadError::Deadline(deadline))
}

/// Exactly `len` bytes, in an allocation of exactly that size.
async fn read_body(rd: &mut BufReader<ReadHalf>, len: usize) -> std::io::Result<Bytes> {
    if len >= MAPPED_BODY {
        let mut body = memmap2::MmapMut::map_anon(len)?;
        rd.read_exact(&mut body[..]).await?;
        return Ok(Bytes::from_owner(body));
    }
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        let want = (len - body.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body.freeze())
}
