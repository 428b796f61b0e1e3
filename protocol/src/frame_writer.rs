//! Writes frames to a socket without copying large payloads.
//!
//! [`FrameCodec`](crate::FrameCodec)'s encoder copies every body into one
//! buffer. For a produced batch or a fetched range of a segment that is a
//! copy of every message byte on each side of the connection, for nothing:
//! the bytes already sit in a `Bytes` (a client's batch, or a slice of the
//! broker's memory map). [`FrameWriter`] copies only headers and small
//! parts into its buffer and hands large parts to the socket as they are,
//! in one vectored write with whatever else is queued.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frame::{put_header, Frame, FrameError, HEADER_LEN};

/// Parts at least this large are written from their own buffer instead of
/// being copied; below it a copy is cheaper than an extra I/O vector.
pub const ZERO_COPY_MIN_BYTES: usize = 4096;
/// [`FrameWriter::feed`] writes out once this much is queued.
pub const FEED_HIGH_WATER_BYTES: usize = 256 * 1024;
/// I/O vectors handed to one `writev` (Linux allows 1024).
const MAX_IO_VECTORS: usize = 64;

/// A frame sink over any `AsyncWrite` (a socket half, usually).
pub struct FrameWriter<W> {
    io: W,
    max_frame_bytes: usize,
    /// Headers and small parts of frames not yet handed to `chunks`.
    buf: BytesMut,
    /// Parts ready to write, in wire order.
    chunks: VecDeque<Bytes>,
    queued_bytes: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer refusing frames longer than `max_frame_bytes`.
    pub fn new(io: W, max_frame_bytes: usize) -> FrameWriter<W> {
        FrameWriter {
            io,
            max_frame_bytes,
            buf: BytesMut::with_capacity(8 * 1024),
            chunks: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues `frame` without writing anything.
    pub fn queue(&mut self, frame: Frame) -> Result<(), FrameError> {
        let len = HEADER_LEN + frame.body.len() + frame.tail_len();
        if len > self.max_frame_bytes || len > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        self.buf.reserve(4 + HEADER_LEN);
        put_header(&mut self.buf, &frame, len);
        self.queued_bytes += 4 + HEADER_LEN;
        self.put_part(frame.body);
        for part in frame.tail {
            self.put_part(part);
        }
        Ok(())
    }

    fn put_part(&mut self, part: Bytes) {
        self.queued_bytes += part.len();
        if part.len() < ZERO_COPY_MIN_BYTES {
            self.buf.extend_from_slice(&part);
        } else {
            if !self.buf.is_empty() {
                self.chunks.push_back(self.buf.split().freeze());
            }
            self.chunks.push_back(part);
        }
    }

    /// Queues `frame`, and writes everything queued once that passes
    /// [`FEED_HIGH_WATER_BYTES`].
    pub async fn feed(&mut self, frame: Frame) -> Result<(), FrameError> {
        self.queue(frame)?;
        if self.queued_bytes >= FEED_HIGH_WATER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything queued and flushes the underlying writer.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.buf.is_empty() {
            self.chunks.push_back(self.buf.split().freeze());
        }
        while !self.chunks.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IO_VECTORS];
                let mut n = 0;
                for chunk in self.chunks.iter().take(MAX_IO_VECTORS) {
                    slices[n] = IoSlice::new(chunk);
                    n += 1;
                }
                self.io.write_vectored(&slices[..n]).await?
            };
            if written == 0 {
                return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.queued_bytes -= written;
            let mut left = written;
            while left > 0 {
                let Some(front) = self.chunks.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.chunks.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        self.io.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameCodec;
    use tokio_util::codec::Decoder;

    /// A writer that takes at most `step` bytes per call, so partial
    /// vectored writes are exercised.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Frame> {
        // Small and large bodies and tails of one and two parts, so parts
        // are both copied and passed through, in every combination.
        let sizes = [
            0usize,
            5,
            ZERO_COPY_MIN_BYTES - 1,
            ZERO_COPY_MIN_BYTES,
            70_000,
        ];
        let mut frames = Vec::new();
        let mut id = 1;
        for &b in &sizes {
            for &t in &sizes {
                frames.push(Frame {
                    kind: (id % 7) as u16,
                    flags: (id % 2) as u8,
                    correlation_id: id,
                    body: Bytes::from(vec![(id % 251) as u8; b]),
                    tail: std::iter::once(t)
                        .chain((id % 2 == 0).then_some(sizes[id as usize % sizes.len()]))
                        .map(|len| {
                            Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>())
                        })
                        .collect(),
                });
                id += 1;
            }
        }
        frames
    }

    #[tokio::test]
    async fn written_bytes_decode_to_the_same_frames_under_partial_writes() {
        for step in [1usize, 7, 4099, 1 << 20] {
            let mut writer = FrameWriter::new(
                Trickle {
                    out: Vec::new(),
                    step,
                },
                usize::MAX,
            );
            let frames = frames();
            for f in &frames {
                writer.feed(f.clone()).await.unwrap();
            }
            writer.flush().await.unwrap();
            assert_eq!(writer.queued_bytes(), 0);
            let mut wire = BytesMut::from(&writer.io.out[..]);
            let mut codec = FrameCodec::new(usize::MAX);
            for f in &frames {
                let got = codec.decode(&mut wire).unwrap().unwrap();
                assert_eq!(
                    got.body,
                    f.full_body(),
                    "step {step} frame {}",
                    f.correlation_id
                );
                assert_eq!(
                    (got.kind, got.flags, got.correlation_id),
                    (f.kind, f.flags, f.correlation_id)
                );
            }
            assert!(wire.is_empty());
        }
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_anything_is_queued() {
        let mut writer = FrameWriter::new(
            Trickle {
                out: Vec::new(),
                step: 100,
            },
            100,
        );
        let frame = Frame {
            kind: 1,
            flags: 0,
            correlation_id: 1,
            body: Bytes::from(vec![0; 50]),
            tail: vec![Bytes::from(vec![0; 20]), Bytes::from(vec![0; 30])],
        };
        assert!(matches!(
            writer.queue(frame),
            Err(FrameError::TooLarge { len: 112, .. })
        ));
        assert_eq!(writer.queued_bytes(), 0);
    }
}
