//! Typed request and response bodies, and their byte encoding.
//!
//! Primitives are little-endian; `string` is a `u16` length and UTF-8
//! bytes, `bytes` a `u32` length and raw bytes, `option<T>` a `u8` (0 or 1)
//! followed by `T` when 1. The body of each kind is specified in
//! `PROTOCOL.md`; this file is its implementation.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::error_code::ErrorCode;
use crate::frame::{Frame, FLAG_ERROR, FLAG_RESPONSE};

/// Protocol versions this code speaks (the request set, negotiated by the
/// handshake; distinct from the frame format version).
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// See [`PROTOCOL_VERSION_MIN`].
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Request kinds.
pub mod kind {
    /// Handshake: must be the first request on a connection.
    pub const HANDSHAKE: u16 = 1;
    /// Append one batch to a partition.
    pub const PRODUCE: u16 = 2;
    /// Read batches from a partition, optionally waiting for data.
    pub const FETCH: u16 = 3;
    /// Create a topic.
    pub const CREATE_TOPIC: u16 = 4;
    /// Delete a topic.
    pub const DELETE_TOPIC: u16 = 5;
    /// List all topics.
    pub const LIST_TOPICS: u16 = 6;
    /// Describe one topic.
    pub const DESCRIBE_TOPIC: u16 = 7;
}

/// A body that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body ends before a field does.
    #[error("body truncated while reading {0}")]
    Truncated(&'static str),
    /// A string is not UTF-8.
    #[error("field {0} is not UTF-8")]
    BadUtf8(&'static str),
    /// A field holds a value outside its range.
    #[error("field {0} is out of range")]
    BadValue(&'static str),
    /// Bytes are left after the last field.
    #[error("{0} bytes after the end of the body")]
    TrailingBytes(usize),
    /// A request kind this code does not know.
    #[error("unknown request kind {0}")]
    UnknownKind(u16),
}

/// Sync policy as carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSync {
    /// Flush before acknowledging.
    Always,
    /// Flush every `ms` milliseconds.
    Interval(u64),
    /// Leave it to the OS.
    Never,
}

/// Optional topic settings; `None` means "the server's default".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Sync policy.
    pub sync: Option<WireSync>,
    /// Segment size.
    pub segment_size_bytes: Option<u64>,
    /// Retention by age; `Some(0)` keeps forever.
    pub retention_ms: Option<u64>,
    /// Retention by size; `Some(0)` means no limit.
    pub retention_bytes: Option<u64>,
}

/// Offsets of one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WirePartition {
    /// Partition number.
    pub partition: u32,
    /// First offset stored.
    pub start: u64,
    /// Next offset to be written.
    pub end: u64,
}

/// A topic's configuration and offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireTopic {
    /// Name.
    pub name: String,
    /// Sync policy.
    pub sync: WireSync,
    /// Segment size.
    pub segment_size_bytes: u64,
    /// Retention by age (0: forever).
    pub retention_ms: u64,
    /// Retention by size (0: no limit).
    pub retention_bytes: u64,
    /// One entry per partition.
    pub partitions: Vec<WirePartition>,
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// First request on every connection.
    Handshake {
        /// Lowest protocol version the client speaks.
        min_version: u16,
        /// Highest protocol version the client speaks.
        max_version: u16,
        /// Feature bits the client would like (none defined yet).
        features: u64,
        /// Free-form client name, for logs.
        client_id: String,
    },
    /// Append a batch.
    Produce {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// One record batch in the storage format.
        batch: Bytes,
    },
    /// Read batches.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// First offset wanted.
        offset: u64,
        /// Byte budget (at least one batch is returned).
        max_bytes: u32,
        /// How long to wait for data at the end of the log.
        max_wait_ms: u32,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partition count; 0 takes the server's default.
        partitions: u32,
        /// Settings; unset ones take the server's defaults.
        settings: TopicSettings,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// List topics.
    ListTopics,
    /// Describe a topic.
    DescribeTopic {
        /// Name.
        name: String,
    },
}

/// A successful response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Handshake accepted.
    Handshake {
        /// The protocol version chosen.
        version: u16,
        /// Features both sides support.
        features: u64,
        /// Largest frame the server accepts.
        max_frame_bytes: u32,
        /// Server name and version.
        server_id: String,
    },
    /// Batch stored.
    Produce {
        /// Offset of its first record.
        base_offset: u64,
        /// Offset after its last record.
        next_offset: u64,
    },
    /// Batches read.
    Fetch {
        /// First offset in the log.
        log_start: u64,
        /// Offset after the last visible record.
        log_end: u64,
        /// Where the next fetch should start.
        next_offset: u64,
        /// Whole batches as stored (may be empty).
        batches: Bytes,
    },
    /// Topic created.
    CreateTopic,
    /// Topic deleted.
    DeleteTopic,
    /// All topics.
    ListTopics(Vec<WireTopic>),
    /// One topic.
    DescribeTopic(WireTopic),
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The code (a raw number if this code base does not know it).
    pub code: u16,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorResponse {
    /// The known code, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

impl Request {
    /// The request's kind number.
    pub fn kind(&self) -> u16 {
        match self {
            Request::Handshake { .. } => kind::HANDSHAKE,
            Request::Produce { .. } => kind::PRODUCE,
            Request::Fetch { .. } => kind::FETCH,
            Request::CreateTopic { .. } => kind::CREATE_TOPIC,
            Request::DeleteTopic { .. } => kind::DELETE_TOPIC,
            Request::ListTopics => kind::LIST_TOPICS,
            Request::DescribeTopic { .. } => kind::DESCRIBE_TOPIC,
        }
    }

    /// Encodes the request as a frame.
    pub fn to_frame(&self, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        match self {
            Request::Handshake {
                min_version,
                max_version,
                features,
                client_id,
            } => {
                b.put_u16_le(*min_version);
                b.put_u16_le(*max_version);
                b.put_u64_le(*features);
                put_string(&mut b, client_id);
            }
            Request::Produce {
                topic,
                partition,
                batch,
            } => {
                put_string(&mut b, topic);
                b.put_u32_le(*partition);
                put_bytes(&mut b, batch);
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                put_string(&mut b, topic);
                b.put_u32_le(*partition);
                b.put_u64_le(*offset);
                b.put_u32_le(*max_bytes);
                b.put_u32_le(*max_wait_ms);
            }
            Request::CreateTopic {
                name,
                partitions,
                settings,
            } => {
                put_string(&mut b, name);
                b.put_u32_le(*partitions);
                match settings.sync {
                    None => b.put_u8(0),
                    Some(sync) => {
                        b.put_u8(1);
                        put_sync(&mut b, sync);
                    }
                }
                put_option(&mut b, settings.segment_size_bytes);
                put_option(&mut b, settings.retention_ms);
                put_option(&mut b, settings.retention_bytes);
            }
            Request::DeleteTopic { name } | Request::DescribeTopic { name } => {
                put_string(&mut b, name)
            }
            Request::ListTopics => {}
        }
        Frame {
            kind: self.kind(),
            flags: 0,
            correlation_id,
            body: b.freeze(),
        }
    }

    /// Decodes a request body of the given kind.
    pub fn decode(kind_: u16, body: Bytes) -> Result<Request, DecodeError> {
        let mut r = Reader(body);
        let request = match kind_ {
            kind::HANDSHAKE => Request::Handshake {
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
                features: r.u64("features")?,
                client_id: r.string("client_id")?,
            },
            kind::PRODUCE => Request::Produce {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                batch: r.bytes("batch")?,
            },
            kind::FETCH => Request::Fetch {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                offset: r.u64("offset")?,
                max_bytes: r.u32("max_bytes")?,
                max_wait_ms: r.u32("max_wait_ms")?,
            },
            kind::CREATE_TOPIC => {
                let name = r.string("name")?;
                let partitions = r.u32("partitions")?;
                let sync = match r.u8("sync present")? {
                    0 => None,
                    1 => Some(r.sync()?),
                    _ => return Err(DecodeError::BadValue("sync present")),
                };
                Request::CreateTopic {
                    name,
                    partitions,
                    settings: TopicSettings {
                        sync,
                        segment_size_bytes: r.option("segment_size_bytes")?,
                        retention_ms: r.option("retention_ms")?,
                        retention_bytes: r.option("retention_bytes")?,
                    },
                }
            }
            kind::DELETE_TOPIC => Request::DeleteTopic {
                name: r.string("name")?,
            },
            kind::LIST_TOPICS => Request::ListTopics,
            kind::DESCRIBE_TOPIC => Request::DescribeTopic {
                name: r.string("name")?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(request)
    }
}

impl Response {
    /// Encodes the response to the request `kind` as a frame.
    pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        match self {
            Response::Handshake {
                version,
                features,
                max_frame_bytes,
                server_id,
            } => {
                b.put_u16_le(*version);
                b.put_u64_le(*features);
                b.put_u32_le(*max_frame_bytes);
                put_string(&mut b, server_id);
            }
            Response::Produce {
                base_offset,
                next_offset,
            } => {
                b.put_u64_le(*base_offset);
                b.put_u64_le(*next_offset);
            }
            Response::Fetch {
                log_start,
                log_end,
                next_offset,
                batches,
            } => {
                b.reserve(28 + batches.len());
                b.put_u64_le(*log_start);
                b.put_u64_le(*log_end);
                b.put_u64_le(*next_offset);
                put_bytes(&mut b, batches);
            }
            Response::CreateTopic | Response::DeleteTopic => {}
            Response::ListTopics(topics) => {
                b.put_u32_le(topics.len() as u32);
                for t in topics {
                    put_topic(&mut b, t);
                }
            }
            Response::DescribeTopic(topic) => put_topic(&mut b, topic),
        }
        Frame {
            kind: kind_,
            flags: FLAG_RESPONSE,
            correlation_id,
            body: b.freeze(),
        }
    }

    /// Decodes a (non-error) response body to a request of kind `kind_`.
    pub fn decode(kind_: u16, body: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader(body);
        let response = match kind_ {
            kind::HANDSHAKE => Response::Handshake {
                version: r.u16("version")?,
                features: r.u64("features")?,
                max_frame_bytes: r.u32("max_frame_bytes")?,
                server_id: r.string("server_id")?,
            },
            kind::PRODUCE => Response::Produce {
                base_offset: r.u64("base_offset")?,
                next_offset: r.u64("next_offset")?,
            },
            kind::FETCH => Response::Fetch {
                log_start: r.u64("log_start")?,
                log_end: r.u64("log_end")?,
                next_offset: r.u64("next_offset")?,
                batches: r.bytes("batches")?,
            },
            kind::CREATE_TOPIC => Response::CreateTopic,
            kind::DELETE_TOPIC => Response::DeleteTopic,
            kind::LIST_TOPICS => {
                let n = r.u32("topic count")?;
                // Each topic takes well over 16 bytes: bound the
                // pre-allocation by what the body can hold.
                let mut topics = Vec::with_capacity((n as usize).min(r.0.len() / 16));
                for _ in 0..n {
                    topics.push(r.topic()?);
                }
                Response::ListTopics(topics)
            }
            kind::DESCRIBE_TOPIC => Response::DescribeTopic(r.topic()?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(response)
    }
}

impl ErrorResponse {
    /// Encodes as an error frame answering a request of kind `kind_`.
    pub fn to_frame(&self, kind_: u16, correlation_id: u32) -> Frame {
        let mut b = BytesMut::new();
        b.put_u16_le(self.code);
        put_string(&mut b, &self.message);
        Frame {
            kind: kind_,
            flags: FLAG_RESPONSE | FLAG_ERROR,
            correlation_id,
            body: b.freeze(),
        }
    }

    /// Decodes an error body.
    pub fn decode(body: Bytes) -> Result<ErrorResponse, DecodeError> {
        let mut r = Reader(body);
        let e = ErrorResponse {
            code: r.u16("code")?,
            message: r.string("message")?,
        };
        r.finish()?;
        Ok(e)
    }
}

fn put_string(b: &mut BytesMut, s: &str) {
    // Names and messages longer than a u16 are cut at a char boundary,
    // never sent with a wrong length.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_u16_le(end as u16);
    b.put_slice(&s.as_bytes()[..end]);
}

fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32_le(bytes.len() as u32);
    b.put_slice(bytes);
}

fn put_option(b: &mut BytesMut, v: Option<u64>) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            b.put_u64_le(v);
        }
    }
}

fn put_sync(b: &mut BytesMut, sync: WireSync) {
    let (tag, ms) = match sync {
        WireSync::Always => (1, 0),
        WireSync::Interval(ms) => (2, ms),
        WireSync::Never => (3, 0),
    };
    b.put_u8(tag);
    b.put_u64_le(ms);
}

fn put_topic(b: &mut BytesMut, t: &WireTopic) {
    put_string(b, &t.name);
    put_sync(b, t.sync);
    b.put_u64_le(t.segment_size_bytes);
    b.put_u64_le(t.retention_ms);
    b.put_u64_le(t.retention_bytes);
    b.put_u32_le(t.partitions.len() as u32);
    for p in &t.partitions {
        b.put_u32_le(p.partition);
        b.put_u64_le(p.start);
        b.put_u64_le(p.end);
    }
}

/// Bounds-checked reads from a body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated(field))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.0.get_u16_le())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_u32_le())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.0.get_u64_le())
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8(field))
    }

    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.need(len, field)?;
        Ok(self.0.split_to(len))
    }

    fn option(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.u64(field)?)),
            _ => Err(DecodeError::BadValue(field)),
        }
    }

    fn sync(&mut self) -> Result<WireSync, DecodeError> {
        let tag = self.u8("sync")?;
        let ms = self.u64("sync interval")?;
        match tag {
            1 => Ok(WireSync::Always),
            2 if ms > 0 => Ok(WireSync::Interval(ms)),
            3 => Ok(WireSync::Never),
            _ => Err(DecodeError::BadValue("sync")),
        }
    }

    fn topic(&mut self) -> Result<WireTopic, DecodeError> {
        let name = self.string("name")?;
        let sync = self.sync()?;
        let segment_size_bytes = self.u64("segment_size_bytes")?;
        let retention_ms = self.u64("retention_ms")?;
        let retention_bytes = self.u64("retention_bytes")?;
        let n = self.u32("partition count")?;
        let mut partitions = Vec::with_capacity((n as usize).min(self.0.len() / 20));
        for _ in 0..n {
            partitions.push(WirePartition {
                partition: self.u32("partition")?,
                start: self.u64("start")?,
                end: self.u64("end")?,
            });
        }
        Ok(WireTopic {
            name,
            sync,
            segment_size_bytes,
            retention_ms,
            retention_bytes,
            partitions,
        })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> WireTopic {
        WireTopic {
            name: "orders".into(),
            sync: WireSync::Interval(50),
            segment_size_bytes: 1 << 20,
            retention_ms: 0,
            retention_bytes: 99,
            partitions: vec![WirePartition {
                partition: 0,
                start: 3,
                end: 9,
            }],
        }
    }

    #[test]
    fn requests_round_trip_and_reject_every_truncation() {
        let requests = vec![
            Request::Handshake {
                min_version: 1,
                max_version: 1,
                features: 0,
                client_id: "test".into(),
            },
            Request::Produce {
                topic: "t".into(),
                partition: 3,
                batch: Bytes::from_static(b"batch bytes"),
            },
            Request::Fetch {
                topic: "t".into(),
                partition: 1,
                offset: 77,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
            },
            Request::CreateTopic {
                name: "n".into(),
                partitions: 4,
                settings: TopicSettings {
                    sync: Some(WireSync::Always),
                    segment_size_bytes: None,
                    retention_ms: Some(0),
                    retention_bytes: Some(5),
                },
            },
            Request::DeleteTopic { name: "n".into() },
            Request::ListTopics,
            Request::DescribeTopic { name: "n".into() },
        ];
        for req in requests {
            let frame = req.to_frame(7);
            assert_eq!(
                Request::decode(frame.kind, frame.body.clone()),
                Ok(req.clone())
            );
            for cut in 0..frame.body.len() {
                assert!(
                    Request::decode(frame.kind, frame.body.slice(..cut)).is_err(),
                    "{req:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn responses_round_trip() {
        let responses = vec![
            (
                kind::PRODUCE,
                Response::Produce {
                    base_offset: 1,
                    next_offset: 9,
                },
            ),
            (
                kind::FETCH,
                Response::Fetch {
                    log_start: 0,
                    log_end: 10,
                    next_offset: 5,
                    batches: Bytes::from_static(b"xyz"),
                },
            ),
            (
                kind::LIST_TOPICS,
                Response::ListTopics(vec![topic(), topic()]),
            ),
            (kind::DESCRIBE_TOPIC, Response::DescribeTopic(topic())),
            (kind::CREATE_TOPIC, Response::CreateTopic),
        ];
        for (k, resp) in responses {
            let frame = resp.to_frame(k, 1);
            assert!(frame.is_response() && !frame.is_error());
            assert_eq!(Response::decode(k, frame.body), Ok(resp));
        }
        let err = ErrorResponse {
            code: ErrorCode::TopicNotFound as u16,
            message: "no topic x".into(),
        };
        let frame = err.to_frame(kind::FETCH, 2);
        assert!(frame.is_error());
        assert_eq!(ErrorResponse::decode(frame.body), Ok(err));
    }

    /// The hex dump in PROTOCOL.md, byte for byte.
    #[test]
    fn handshake_matches_the_documented_example() {
        use tokio_util::codec::Encoder;
        let request = Request::Handshake {
            min_version: 1,
            max_version: 1,
            features: 0,
            client_id: "cli".into(),
        };
        let mut wire = BytesMut::new();
        crate::FrameCodec::default()
            .encode(request.to_frame(1), &mut wire)
            .unwrap();
        let expected = "1d 00 00 00 53 50 01 00 01 00 00 00 01 00 00 00 \
                        01 00 01 00 00 00 00 00 00 00 00 00 03 00 63 6c 69";
        let hex: Vec<String> = wire.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        assert_eq!(
            Request::decode(999, Bytes::new()),
            Err(DecodeError::UnknownKind(999))
        );
    }
}
