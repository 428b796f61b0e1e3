//! Frames: the length-prefixed envelope of every request and response, and
//! the tokio-util codec that cuts a byte stream into them.
//!
//! ```text
//! 0   u32  frame_len        bytes after this field: 12 + body
//! 4   u16  magic            0x5053 (bytes "SP")
//! 6   u8   version          frame format version, 1
//! 7   u8   flags            bit 0: response, bit 1: error response
//! 8   u16  kind             request kind (a response repeats its request's)
//! 10  u16  reserved         0
//! 12  u32  correlation_id   chosen by the client, repeated in the response
//! 16  ...  body
//! ```
//!
//! The encoder copies the whole frame into the codec's buffer; the
//! connections of the server and the client write through
//! [`FrameWriter`](crate::FrameWriter) instead, which passes large parts to
//! the socket without copying them.
//!
//! The decoder checks `frame_len` against the configured maximum *before*
//! reserving any memory, so a header announcing 4 GiB costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes of the header after the length field.
pub const HEADER_LEN: usize = 12;
/// Magic number at the start of every frame header ("SP").
pub const MAGIC: u16 = 0x5053;
/// The frame format version this code speaks.
pub const FRAME_VERSION: u8 = 1;
/// Default limit on a frame's size (length field value).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024 + 4096;

/// Bytes in front of every body: the length field and the header.
pub const PREFIX_LEN: usize = 4 + HEADER_LEN;

/// Flag: this frame is a response.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Flag: this response is an error (body = code + message).
pub const FLAG_ERROR: u8 = 0x02;

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Request kind.
    pub kind: u16,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Matches a response to its request.
    pub correlation_id: u32,
    /// The kind-specific body.
    pub body: Bytes,
    /// More body, sent right after `body`, part after part: large payloads
    /// (a batch, fetched ranges of segments) that
    /// [`FrameWriter`](crate::FrameWriter) writes from their own buffers
    /// instead of copying them. On the wire body and tail are one body;
    /// decoded frames always have an empty tail.
    pub tail: Vec<Bytes>,
}

impl Frame {
    /// True for responses.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// True for error responses.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    /// Bytes of the tail's parts.
    pub fn tail_len(&self) -> usize {
        self.tail.iter().map(Bytes::len).sum()
    }

    /// The whole body as one buffer (`body` then `tail`; copies only when
    /// there is more than one non-empty part).
    pub fn full_body(&self) -> Bytes {
        let mut parts = std::iter::once(&self.body)
            .chain(&self.tail)
            .filter(|p| !p.is_empty());
        match (parts.next(), parts.next()) {
            (None, _) => Bytes::new(),
            (Some(only), None) => only.clone(),
            _ => {
                let mut all = BytesMut::with_capacity(self.body.len() + self.tail_len());
                all.extend_from_slice(&self.body);
                for part in &self.tail {
                    all.extend_from_slice(part);
                }
                all.freeze()
            }
        }
    }
}

/// Why a byte stream is not a sequence of frames. Any of these ends the
/// connection: after a bad header the stream cannot be resynchronised.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length field exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length field is smaller than the header.
    #[error("frame length {0} is shorter than the header")]
    TooShort(usize),
    /// Wrong magic: not a Spool peer, or out of sync.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// A frame format version this code does not know.
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    /// Socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame's length field and header, checked: what a reader needs to know
/// before it commits memory to the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// Bytes of body that follow the header.
    pub body_len: usize,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Request kind.
    pub kind: u16,
    /// Matches a response to its request.
    pub correlation_id: u32,
}

impl FrameHead {
    /// Checks the length field against `max_frame_bytes` and the header's
    /// magic and version.
    pub fn parse(
        prefix: &[u8; PREFIX_LEN],
        max_frame_bytes: usize,
    ) -> Result<FrameHead, FrameError> {
        let len = frame_len(prefix, max_frame_bytes)?;
        let magic = u16::from_le_bytes([prefix[4], prefix[5]]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if prefix[6] != FRAME_VERSION {
            return Err(FrameError::BadVersion(prefix[6]));
        }
        Ok(FrameHead {
            body_len: len - HEADER_LEN,
            flags: prefix[7],
            kind: u16::from_le_bytes([prefix[8], prefix[9]]),
            correlation_id: u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]),
        })
    }
}

/// The length field at the start of `src` (at least 4 bytes), checked
/// against the limit and the header's size.
fn frame_len(src: &[u8], max_frame_bytes: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    if len < HEADER_LEN {
        return Err(FrameError::TooShort(len));
    }
    Ok(len)
}

/// Cuts bytes into [`Frame`]s and back.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec { max_frame_bytes }
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = frame_len(src, self.max_frame_bytes)?;
        // Check the header as soon as it is here, not after the whole body:
        // garbage is refused before we wait for (or buffer) its "body".
        let Some(prefix) = src.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let head = FrameHead::parse(prefix, self.max_frame_bytes)?;
        if src.len() < 4 + len {
            // Reserve only up to what the (already bounded) frame needs.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let body = src.split_to(head.body_len);
        Ok(Some(Frame {
            kind: head.kind,
            flags: head.flags,
            correlation_id: head.correlation_id,
            body: body.freeze(),
            tail: Vec::new(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = HEADER_LEN + frame.body.len() + frame.tail_len();
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        dst.reserve(4 + len);
        put_header(dst, &frame, len);
        dst.put_slice(&frame.body);
        for part in &frame.tail {
            dst.put_slice(part);
        }
        Ok(())
    }
}

/// Writes the length field and header of `frame`, whose length field is
/// `len` (checked by the caller).
pub(crate) fn put_header(dst: &mut BytesMut, frame: &Frame, len: usize) {
    dst.put_u32_le(len as u32);
    dst.put_u16_le(MAGIC);
    dst.put_u8(FRAME_VERSION);
    dst.put_u8(frame.flags);
    dst.put_u16_le(frame.kind);
    dst.put_u16_le(0);
    dst.put_u32_le(frame.correlation_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let frames: Vec<Frame> = (0..5)
            .map(|i| Frame {
                kind: i,
                flags: (i % 2) as u8,
                correlation_id: 1000 + u32::from(i),
                body: Bytes::from(vec![i as u8; usize::from(i) * 7]),
                tail: Vec::new(),
            })
            .collect();
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f.clone(), &mut wire).unwrap();
        }
        // Feed the stream in every split position.
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x53, 0x50][..]);
        let before = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn bad_magic_is_refused_before_the_body_arrives() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"\x00\x10\x00\x00GET / HTTP/1.1"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::BadMagic(_))
        ));
    }
}
