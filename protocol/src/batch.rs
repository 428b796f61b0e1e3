//! The record batch: the one unit in which messages travel on the wire and
//! lie on disk.
//!
//! A producer builds a batch with [`BatchBuilder`]; the broker checks it once
//! with [`Batch::validate`], writes its assigned base offset into the first
//! eight bytes (which the CRC deliberately does not cover, so no re-hashing is
//! needed) and copies the bytes into a segment unchanged. A consumer receives
//! the same bytes and walks them with [`Batch::records`], which borrows keys
//! and values from the buffer instead of allocating per record.
//!
//! The byte layout is specified in `protocol/PROTOCOL.md`; change both
//! together.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::types::Offset;
use crate::varint::{get_varint, put_varint, varint_len, zigzag_decode, zigzag_encode};

/// Bytes of the header of a format-1 batch (no producer fields).
pub const HEADER_LEN_V1: usize = 40;
/// Bytes of the header of a format-2 batch: format 1's, then the producer
/// id and the batch's first sequence number.
pub const HEADER_LEN: usize = 52;
/// The batch format version this code writes. It reads 1 and 2.
pub const MAGIC: u8 = 2;
/// Format 1: written before producers were idempotent; still read.
pub const MAGIC_V1: u8 = 1;
/// The producer id of a batch from no idempotent producer.
pub const NO_PRODUCER: u64 = 0;
/// How many of an idempotent producer's latest batches to a partition the
/// broker remembers, and so how many it may have in flight there at once:
/// a retry of any of them is recognised.
pub const IDEMPOTENCE_WINDOW: usize = 32;
/// Attribute bit: the batch is fenced. Its first record carries the
/// [`FENCE_HEADER`] header, and the partition's leader refuses it if it has
/// accepted a higher fencing token for the same lock.
pub const ATTR_FENCED: u32 = 1;
/// The header, on a fenced batch's first record, that names the lock and
/// token: the token as 8 bytes little-endian, then the lock's name (UTF-8).
pub const FENCE_HEADER: &[u8] = b"spool.fence";
/// Longest lock name, in bytes.
pub const MAX_LOCK_NAME: usize = 255;
/// Upper bound on a batch's total length. A length field above this is
/// treated as corruption rather than trusted for an allocation or a scan.
pub const MAX_BATCH_LEN: usize = 64 * 1024 * 1024;

const OFFSET_POS: usize = 0;
const LEN_POS: usize = 8;
const CRC_POS: usize = 12;
/// The CRC covers everything from here to the end of the batch.
const CRC_START: usize = 16;
const MAGIC_POS: usize = 16;
const ATTRIBUTES_POS: usize = 17;
const COUNT_POS: usize = 20;
const FIRST_TS_POS: usize = 24;
const MAX_TS_POS: usize = 32;
const PRODUCER_POS: usize = 40;
const SEQUENCE_POS: usize = 48;

/// Why a byte string is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// Fewer bytes than the header, or than the header's length field says.
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the batch claims or needs.
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// The length field is below the header size or above [`MAX_BATCH_LEN`].
    #[error("batch length {0} out of range")]
    BadLength(u64),
    /// A format version this code does not know.
    #[error("unknown batch magic {0}")]
    BadMagic(u8),
    /// Attribute bits or reserved bytes set that this version does not define.
    #[error("reserved batch attributes set: {0:#x}")]
    BadAttributes(u32),
    /// A fenced batch whose first record lacks a well-formed fence header.
    #[error(
        "fenced batch without a valid {} header on its first record",
        String::from_utf8_lossy(FENCE_HEADER)
    )]
    BadFence,
    /// The stored CRC does not match the bytes.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes as they are.
        computed: u32,
    },
    /// A batch must hold at least one record.
    #[error("batch holds no records")]
    Empty,
    /// The records do not parse, or do not fill the batch exactly.
    #[error("malformed record {index}: {reason}")]
    Malformed {
        /// Index of the record within the batch.
        index: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The base offset plus the record count passes `u64::MAX`. The base
    /// offset lies outside the CRC, so only this check catches a corrupt one.
    #[error("batch base offset {0} leaves no room for its records")]
    OffsetOverflow(u64),
    /// A builder was asked to exceed [`MAX_BATCH_LEN`].
    #[error("batch would exceed {MAX_BATCH_LEN} bytes")]
    TooLarge,
}

/// The fixed header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (0 until the broker assigns it).
    pub base_offset: Offset,
    /// Total bytes of the batch, header included.
    pub batch_len: u32,
    /// CRC-32 (IEEE) of bytes `16..batch_len`.
    pub crc: u32,
    /// Number of records, at least 1.
    pub record_count: u32,
    /// Timestamp of the first record, milliseconds since the Unix epoch.
    pub first_timestamp_ms: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp_ms: i64,
    /// The idempotent producer that sent it ([`NO_PRODUCER`]: none, and
    /// always for format 1).
    pub producer_id: u64,
    /// Sequence number of its first record in that producer's stream to
    /// this partition (each record takes one).
    pub base_sequence: u32,
    /// Bytes of the header: where the records start.
    pub header_len: u32,
    /// The batch carries a fence ([`ATTR_FENCED`]).
    pub fenced: bool,
}

impl BatchHeader {
    /// Decodes and sanity-checks the header at the front of `buf`.
    ///
    /// Only the header has to be present: storage uses this to learn a
    /// batch's length while scanning before it trusts the rest.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN_V1 {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN_V1,
                available: buf.len(),
            });
        }
        let header_len = match buf[MAGIC_POS] {
            MAGIC => HEADER_LEN,
            MAGIC_V1 => HEADER_LEN_V1,
            other => return Err(BatchError::BadMagic(other)),
        };
        if buf.len() < header_len {
            return Err(BatchError::Truncated {
                needed: header_len,
                available: buf.len(),
            });
        }
        let batch_len = read_u32(buf, LEN_POS);
        if (batch_len as usize) <= header_len || batch_len as usize > MAX_BATCH_LEN {
            return Err(BatchError::BadLength(u64::from(batch_len)));
        }
        let (producer_id, base_sequence) = if header_len == HEADER_LEN {
            (read_u64(buf, PRODUCER_POS), read_u32(buf, SEQUENCE_POS))
        } else {
            (NO_PRODUCER, 0)
        };
        let attributes = read_u32(buf, MAGIC_POS) >> 8;
        let known = if header_len == HEADER_LEN {
            ATTR_FENCED
        } else {
            0
        };
        if attributes & !known != 0 {
            return Err(BatchError::BadAttributes(attributes));
        }
        let record_count = read_u32(buf, COUNT_POS);
        if record_count == 0 {
            return Err(BatchError::Empty);
        }
        let base_offset = read_u64(buf, OFFSET_POS);
        // `next_offset` must be representable: every offset computed from
        // this header (records, next batch) then is too.
        if base_offset.checked_add(u64::from(record_count)).is_none() {
            return Err(BatchError::OffsetOverflow(base_offset));
        }
        Ok(BatchHeader {
            base_offset: Offset(base_offset),
            batch_len,
            crc: read_u32(buf, CRC_POS),
            record_count,
            first_timestamp_ms: read_u64(buf, FIRST_TS_POS) as i64,
            max_timestamp_ms: read_u64(buf, MAX_TS_POS) as i64,
            producer_id,
            base_sequence,
            header_len: header_len as u32,
            fenced: attributes & ATTR_FENCED != 0,
        })
    }

    /// Sequence number of the batch's last record.
    pub fn last_sequence(&self) -> u32 {
        self.base_sequence
            .wrapping_add(self.record_count.wrapping_sub(1))
    }

    /// Offset one past the last record: where the next batch starts.
    pub fn next_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.record_count))
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(u64::from(self.record_count) - 1)
    }
}

/// Checks the CRC of the batch at the front of `buf`, whose header has
/// already been parsed. Cheaper than [`Batch::validate`]: storage uses it
/// on every read, where the record structure was checked when the batch was
/// appended.
pub fn verify_crc(buf: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let len = header.batch_len as usize;
    if buf.len() < len {
        return Err(BatchError::Truncated {
            needed: len,
            available: buf.len(),
        });
    }
    let computed = crc32fast::hash(&buf[CRC_START..len]);
    if computed != header.crc {
        return Err(BatchError::Crc {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Overwrites the base offset of the batch at the front of `buf`.
///
/// The CRC does not cover these bytes, so this is all the broker does to a
/// producer's batch before storing it.
pub fn set_base_offset(buf: &mut [u8], offset: Offset) {
    buf[OFFSET_POS..OFFSET_POS + 8].copy_from_slice(&offset.0.to_le_bytes());
}

/// A batch whose length, CRC and record structure have been checked.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Validates the batch at the front of `buf` completely: header, CRC,
    /// and that the records parse and fill the batch exactly. Bytes after the
    /// batch are ignored (use `batch_len` to find the next one).
    pub fn validate(buf: &'a [u8]) -> Result<Batch<'a>, BatchError> {
        let header = BatchHeader::parse(buf)?;
        verify_crc(buf, &header)?;
        let bytes = &buf[..header.batch_len as usize];
        check_records(bytes, &header)?;
        let batch = Batch { header, bytes };
        if header.fenced && batch.fence().is_none() {
            return Err(BatchError::BadFence);
        }
        Ok(batch)
    }

    /// The lock and fencing token a fenced batch was written under; `None`
    /// for a batch that is not fenced (or a stored one whose fence does not
    /// parse, which [`Batch::validate`] refuses).
    pub fn fence(&self) -> Option<Fence<'a>> {
        if !self.header.fenced {
            return None;
        }
        let value = self.records().next()?.header(FENCE_HEADER)?;
        let (token, name) = value.split_first_chunk::<8>()?;
        let lock = std::str::from_utf8(name).ok()?;
        if lock.is_empty() || lock.len() > MAX_LOCK_NAME {
            return None;
        }
        Some(Fence {
            lock,
            token: u64::from_le_bytes(*token),
        })
    }

    /// A batch read back from storage, which validated it completely when
    /// it was appended and has just checked its CRC: only the header is
    /// parsed, saving the record walk of [`Batch::validate`]. Iterating the
    /// records of a batch that is not valid after all stops early; it never
    /// panics.
    pub fn from_stored(buf: &'a [u8]) -> Result<Batch<'a>, BatchError> {
        let header = BatchHeader::parse(buf)?;
        let len = header.batch_len as usize;
        if buf.len() < len {
            return Err(BatchError::Truncated {
                needed: len,
                available: buf.len(),
            });
        }
        Ok(Batch {
            header,
            bytes: &buf[..len],
        })
    }

    /// A batch a broker sends from its storage, which validated it
    /// completely when it was appended: header and CRC are checked (damage
    /// on the way or on disk), the record walk of [`Batch::validate`] is
    /// saved. Iterating records that do not parse stops early; it never
    /// panics.
    pub fn from_broker(buf: &'a [u8]) -> Result<Batch<'a>, BatchError> {
        let batch = Batch::from_stored(buf)?;
        verify_crc(buf, &batch.header)?;
        Ok(batch)
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly `batch_len` long.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates the records without allocating.
    pub fn records(&self) -> Records<'a> {
        Records {
            rest: &self.bytes[self.header.header_len as usize..],
            base_offset: self.header.base_offset,
            first_timestamp_ms: self.header.first_timestamp_ms,
            index: 0,
            count: self.header.record_count,
        }
    }
}

/// What a fenced batch was written under: a lock and the fencing token of
/// its writer's grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence<'a> {
    /// The lock's name.
    pub lock: &'a str,
    /// The grant's fencing token.
    pub token: u64,
}

/// Iterates a buffer holding whole batches back to back, validating each.
///
/// Yields an error (and then stops) at the first batch that is not valid.
pub struct Batches<'a> {
    rest: &'a [u8],
    failed: bool,
    check: fn(&'a [u8]) -> Result<Batch<'a>, BatchError>,
}

impl<'a> Batches<'a> {
    /// Starts at the front of `buf`; each batch is checked completely
    /// ([`Batch::validate`]).
    pub fn new(buf: &'a [u8]) -> Batches<'a> {
        Batches {
            rest: buf,
            failed: false,
            check: Batch::validate,
        }
    }

    /// Starts at the front of `buf`, batches a broker read back from its
    /// own storage, which checked them: headers only
    /// ([`Batch::from_stored`]).
    pub fn stored(buf: &'a [u8]) -> Batches<'a> {
        Batches {
            rest: buf,
            failed: false,
            check: Batch::from_stored,
        }
    }

    /// Starts at the front of `buf`, batches a broker sent from its
    /// storage: each one's header and CRC are checked
    /// ([`Batch::from_broker`]).
    pub fn from_broker(buf: &'a [u8]) -> Batches<'a> {
        Batches {
            rest: buf,
            failed: false,
            check: Batch::from_broker,
        }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Batch<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match (self.check)(self.rest) {
            Ok(batch) => {
                self.rest = &self.rest[batch.bytes.len()..];
                Some(Ok(batch))
            }
            Err(err) => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if the producer gave one.
    pub key: Option<&'a [u8]>,
    /// The payload.
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u32,
}

/// A record's key, value and headers as slices of the buffer it was
/// parsed from: owned, and nothing copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordParts {
    /// The key, if the producer gave one.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// The headers, in order.
    pub headers: Vec<(Bytes, Bytes)>,
}

impl<'a> Record<'a> {
    /// Key, value and headers as slices of `buf`, which must be the buffer
    /// this record was parsed from (or hold the bytes it was parsed from).
    pub fn parts_in(&self, buf: &Bytes) -> RecordParts {
        RecordParts {
            key: self.key.map(|k| buf.slice_ref(k)),
            value: buf.slice_ref(self.value),
            headers: self
                .headers()
                .map(|(n, v)| (buf.slice_ref(n), buf.slice_ref(v)))
                .collect(),
        }
    }

    /// The record's headers, in the order the producer added them.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            rest: self.headers,
            remaining: self.header_count,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers().find(|(key, _)| *key == name).map(|(_, v)| v)
    }
}

/// Iterator over a record's `(name, value)` headers.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The batch was validated, so these cannot fail; stopping early
        // rather than panicking keeps this safe even if that ever changes.
        let (name, rest) = take_bytes(self.rest)?;
        let (value, rest) = take_bytes(rest)?;
        self.rest = rest;
        Some((name, value))
    }
}

/// Iterator over the records of a validated batch.
pub struct Records<'a> {
    rest: &'a [u8],
    base_offset: Offset,
    first_timestamp_ms: i64,
    index: u32,
    count: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.index >= self.count {
            return None;
        }
        let (record, rest) = parse_record(
            self.rest,
            self.index,
            self.first_timestamp_ms,
            self.base_offset,
        )
        .ok()?;
        self.rest = rest;
        self.index += 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Records<'_> {}

fn check_records(bytes: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let mut rest = &bytes[header.header_len as usize..];
    let mut max_ts = i64::MIN;
    for index in 0..header.record_count {
        let (record, after) = parse_record(rest, index, header.first_timestamp_ms, Offset(0))?;
        max_ts = max_ts.max(record.timestamp_ms);
        // Walk the headers once so that iterating them later cannot fail.
        let mut headers = record.headers;
        for _ in 0..record.header_count {
            let (_, r) = take_bytes(headers).ok_or(malformed(index, "header name"))?;
            let (_, r) = take_bytes(r).ok_or(malformed(index, "header value"))?;
            headers = r;
        }
        if !headers.is_empty() {
            return Err(malformed(index, "bytes after headers"));
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err(malformed(header.record_count, "bytes after last record"));
    }
    if max_ts != header.max_timestamp_ms {
        return Err(malformed(0, "max timestamp does not match records"));
    }
    Ok(())
}

fn malformed(index: u32, reason: &'static str) -> BatchError {
    BatchError::Malformed { index, reason }
}

/// Parses one record at the front of `buf`, returning it and what follows.
fn parse_record<'a>(
    buf: &'a [u8],
    index: u32,
    first_timestamp_ms: i64,
    base_offset: Offset,
) -> Result<(Record<'a>, &'a [u8]), BatchError> {
    let (len, n) = get_varint(buf).ok_or(malformed(index, "record length"))?;
    let body_end = n
        .checked_add(usize::try_from(len).map_err(|_| malformed(index, "record length"))?)
        .filter(|&end| end <= buf.len())
        .ok_or(malformed(index, "record length exceeds batch"))?;
    let body = &buf[n..body_end];

    let (offset_delta, n) = get_varint(body).ok_or(malformed(index, "offset delta"))?;
    if offset_delta != u64::from(index) {
        return Err(malformed(index, "offset delta out of sequence"));
    }
    let body = &body[n..];
    let (ts_delta, n) = get_varint(body).ok_or(malformed(index, "timestamp delta"))?;
    let timestamp_ms = first_timestamp_ms.wrapping_add(zigzag_decode(ts_delta));
    let body = &body[n..];

    let (key_len_plus_one, n) = get_varint(body).ok_or(malformed(index, "key length"))?;
    let body = &body[n..];
    let (key, body) = if key_len_plus_one == 0 {
        (None, body)
    } else {
        let key_len = usize::try_from(key_len_plus_one - 1)
            .ok()
            .filter(|&l| l <= body.len())
            .ok_or(malformed(index, "key exceeds record"))?;
        (Some(&body[..key_len]), &body[key_len..])
    };
    let (value, body) = take_bytes(body).ok_or(malformed(index, "value exceeds record"))?;
    let (header_count, n) = get_varint(body).ok_or(malformed(index, "header count"))?;
    let header_count = u32::try_from(header_count).map_err(|_| malformed(index, "header count"))?;
    let record = Record {
        offset: base_offset.plus(u64::from(index)),
        timestamp_ms,
        key,
        value,
        headers: &body[n..],
        header_count,
    };
    Ok((record, &buf[body_end..]))
}

/// Splits a varint-length-prefixed byte string off the front of `buf`.
#[inline]
fn take_bytes(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, n) = get_varint(buf)?;
    let len = usize::try_from(len).ok()?;
    let end = n.checked_add(len)?;
    if end > buf.len() {
        return None;
    }
    Some((&buf[n..end], &buf[end..]))
}

#[inline]
fn read_u32(buf: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[pos..pos + 4]);
    u32::from_le_bytes(b)
}

#[inline]
fn read_u64(buf: &[u8], pos: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[pos..pos + 8]);
    u64::from_le_bytes(b)
}

/// Builds a batch record by record into one contiguous buffer.
///
/// ```
/// use spool_protocol::batch::{Batch, BatchBuilder};
///
/// let mut builder = BatchBuilder::new();
/// builder.push(1_700_000_000_000, Some(b"user-7"), b"hello", &[(b"trace", b"abc")]).unwrap();
/// builder.push(1_700_000_000_005, None, b"world", &[]).unwrap();
/// let bytes = builder.finish().unwrap();
///
/// let batch = Batch::validate(&bytes).unwrap();
/// let values: Vec<&[u8]> = batch.records().map(|r| r.value).collect();
/// assert_eq!(values, [&b"hello"[..], &b"world"[..]]);
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    record_count: u32,
    first_timestamp_ms: i64,
    max_timestamp_ms: i64,
    /// The fence header's value, added to the first record.
    fence: Option<Vec<u8>>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> BatchBuilder {
        Self::with_capacity(HEADER_LEN + 256)
    }

    /// An empty builder whose buffer starts with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(bytes.max(HEADER_LEN));
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            buf,
            record_count: 0,
            first_timestamp_ms: 0,
            max_timestamp_ms: i64::MIN,
            fence: None,
        }
    }

    /// Makes the batch fenced by `lock` at `token` (see [`ATTR_FENCED`]).
    /// Must be called before the first record is pushed; fails on an empty
    /// or overlong lock name.
    pub fn fenced(mut self, lock: &str, token: u64) -> Result<BatchBuilder, BatchError> {
        if self.record_count > 0 || lock.is_empty() || lock.len() > MAX_LOCK_NAME {
            return Err(BatchError::BadFence);
        }
        let mut value = token.to_le_bytes().to_vec();
        value.extend_from_slice(lock.as_bytes());
        self.fence = Some(value);
        Ok(self)
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes the batch would take if finished now.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// True until the first record is pushed.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes one record would add to a batch whose first timestamp is
    /// `first_timestamp_ms`: lets a producer decide whether a record still
    /// fits before pushing it.
    pub fn encoded_record_len(
        timestamp_delta_ms: i64,
        index: u32,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> usize {
        let body = record_body_len(timestamp_delta_ms, index, key, value, headers);
        varint_len(body as u64) + body
    }

    /// Appends one record. Fails (and leaves the builder unchanged) if the
    /// batch would exceed [`MAX_BATCH_LEN`].
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), BatchError> {
        if self.record_count == 0 {
            if let Some(fence) = self.fence.clone() {
                let mut with_fence = headers.to_vec();
                with_fence.push((FENCE_HEADER, &fence));
                return self.push_record(timestamp_ms, key, value, &with_fence);
            }
        }
        self.push_record(timestamp_ms, key, value, headers)
    }

    fn push_record(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), BatchError> {
        if self.record_count == 0 {
            self.first_timestamp_ms = timestamp_ms;
        }
        let ts_delta = timestamp_ms.wrapping_sub(self.first_timestamp_ms);
        let body = record_body_len(ts_delta, self.record_count, key, value, headers);
        let total = varint_len(body as u64) + body;
        if self.buf.len() + total > MAX_BATCH_LEN || self.record_count == u32::MAX {
            return Err(BatchError::TooLarge);
        }
        let buf = &mut self.buf;
        buf.reserve(total);
        put_varint(buf, body as u64);
        put_varint(buf, u64::from(self.record_count));
        put_varint(buf, zigzag_encode(ts_delta));
        match key {
            None => put_varint(buf, 0),
            Some(key) => {
                put_varint(buf, key.len() as u64 + 1);
                buf.put_slice(key);
            }
        }
        put_varint(buf, value.len() as u64);
        buf.put_slice(value);
        put_varint(buf, headers.len() as u64);
        for (name, value) in headers {
            put_varint(buf, name.len() as u64);
            buf.put_slice(name);
            put_varint(buf, value.len() as u64);
            buf.put_slice(value);
        }
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        Ok(())
    }

    /// Writes the header and CRC and returns the finished batch, with base
    /// offset 0 (the broker assigns the real one), from no idempotent
    /// producer.
    pub fn finish(self) -> Result<Bytes, BatchError> {
        self.finish_from(NO_PRODUCER, 0)
    }

    /// Like [`BatchBuilder::finish`], for an idempotent producer: its id and
    /// the sequence number of this batch's first record.
    pub fn finish_from(self, producer_id: u64, base_sequence: u32) -> Result<Bytes, BatchError> {
        let mut buf = self.buf;
        if self.record_count == 0 {
            return Err(BatchError::Empty);
        }
        let len = buf.len() as u32;
        buf[LEN_POS..LEN_POS + 4].copy_from_slice(&len.to_le_bytes());
        buf[MAGIC_POS] = MAGIC;
        buf[ATTRIBUTES_POS] = 0;
        if self.fence.is_some() {
            buf[ATTRIBUTES_POS] = ATTR_FENCED as u8;
        }
        buf[COUNT_POS..COUNT_POS + 4].copy_from_slice(&self.record_count.to_le_bytes());
        buf[FIRST_TS_POS..FIRST_TS_POS + 8].copy_from_slice(&self.first_timestamp_ms.to_le_bytes());
        buf[MAX_TS_POS..MAX_TS_POS + 8].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        buf[PRODUCER_POS..PRODUCER_POS + 8].copy_from_slice(&producer_id.to_le_bytes());
        buf[SEQUENCE_POS..SEQUENCE_POS + 4].copy_from_slice(&base_sequence.to_le_bytes());
        let crc = crc32fast::hash(&buf[CRC_START..]);
        buf[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(buf.freeze())
    }
}

fn record_body_len(
    ts_delta: i64,
    index: u32,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(&[u8], &[u8])],
) -> usize {
    let key_len = key.map_or(1, |k| varint_len(k.len() as u64 + 1) + k.len());
    let headers_len: usize = headers
        .iter()
        .map(|(n, v)| varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len())
        .sum();
    varint_len(u64::from(index))
        + varint_len(zigzag_encode(ts_delta))
        + key_len
        + varint_len(value.len() as u64)
        + value.len()
        + varint_len(headers.len() as u64)
        + headers_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type OwnedRecord = (i64, Option<Vec<u8>>, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

    fn build(records: &[OwnedRecord]) -> Bytes {
        let mut builder = BatchBuilder::new();
        for (ts, key, value, headers) in records {
            let headers: Vec<(&[u8], &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .collect();
            builder.push(*ts, key.as_deref(), value, &headers).unwrap();
        }
        builder.finish().unwrap()
    }

    /// The base offset lies outside the CRC, so a corrupt or hostile one
    /// reaches the reader intact: it must be refused, not overflow later.
    #[test]
    fn a_base_offset_whose_records_overflow_is_refused() {
        let batch = build(&[
            (1, None, b"a".to_vec(), vec![]),
            (2, None, b"b".to_vec(), vec![]),
        ]);
        let mut bytes = batch.to_vec();
        for base in [u64::MAX, u64::MAX - 1] {
            set_base_offset(&mut bytes, Offset(base));
            assert_eq!(
                Batch::validate(&bytes).unwrap_err(),
                BatchError::OffsetOverflow(base)
            );
            assert_eq!(
                Batch::from_stored(&bytes).unwrap_err(),
                BatchError::OffsetOverflow(base)
            );
            assert!(Batches::new(&bytes).next().unwrap().is_err());
        }
        // The last offset that still fits is fine, and iterating it does not panic.
        set_base_offset(&mut bytes, Offset(u64::MAX - 2));
        let valid = Batch::validate(&bytes).unwrap();
        assert_eq!(valid.records().count(), 2);
        assert_eq!(valid.header().next_offset(), Offset(u64::MAX));
    }

    fn record_strategy() -> impl Strategy<Value = OwnedRecord> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..8),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ),
                0..3,
            ),
        )
    }

    proptest! {
        #[test]
        fn built_batches_round_trip(
            records in proptest::collection::vec(record_strategy(), 1..40),
            base in 0u64..u64::MAX / 2,
        ) {
            let mut bytes = build(&records).to_vec();
            set_base_offset(&mut bytes, Offset(base));
            let batch = Batch::validate(&bytes).unwrap();
            prop_assert_eq!(batch.header().record_count as usize, records.len());
            prop_assert_eq!(batch.header().base_offset, Offset(base));
            let decoded: Vec<_> = batch.records().collect();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (record, (ts, key, value, headers))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(record.offset, Offset(base + i as u64));
                prop_assert_eq!(record.timestamp_ms, *ts);
                prop_assert_eq!(record.key, key.as_deref());
                prop_assert_eq!(record.value, value.as_slice());
                let got: Vec<_> = record.headers().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
                prop_assert_eq!(&got, headers);
            }
        }

        #[test]
        fn any_single_byte_flip_is_detected(
            records in proptest::collection::vec(record_strategy(), 1..5),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = build(&records).to_vec();
            // The base offset is outside the CRC by design; everything else is covered.
            let pos = 8 + pos.index(bytes.len() - 8);
            bytes[pos] ^= flip;
            prop_assert!(Batch::validate(&bytes).is_err());
        }
    }

    #[test]
    fn truncated_batch_is_rejected_at_every_length() {
        let bytes = build(&[
            (5, None, b"abc".to_vec(), vec![]),
            (6, Some(b"k".to_vec()), b"d".to_vec(), vec![]),
        ]);
        for len in 0..bytes.len() {
            assert!(
                Batch::validate(&bytes[..len]).is_err(),
                "accepted prefix of {len} bytes"
            );
        }
        assert!(Batch::validate(&bytes).is_ok());
    }

    /// The example in PROTOCOL.md, byte for byte.
    #[test]
    fn matches_the_documented_example() {
        let mut b = BatchBuilder::new();
        b.push(1_700_000_000_000, Some(b"k"), b"hi", &[(b"h", b"v")])
            .unwrap();
        let mut bytes = b.finish_from(7, 3).unwrap().to_vec();
        set_base_offset(&mut bytes, Offset(5));
        let expected: Vec<u8> = [
            &[5, 0, 0, 0, 0, 0, 0, 0][..],
            &[0x41, 0, 0, 0],
            &[0x58, 0xdf, 0x92, 0xfd],
            &[2, 0, 0, 0],
            &[1, 0, 0, 0],
            &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0],
            &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0],
            &[7, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0],
            &[
                0x0c, 0x00, 0x00, 0x02, 0x6b, 0x02, 0x68, 0x69, 0x01, 0x01, 0x68, 0x01, 0x76,
            ],
        ]
        .concat();
        assert_eq!(
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            expected
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    /// A format-1 batch (written before producers were idempotent) still
    /// reads: the documented example of that version, byte for byte.
    #[test]
    fn format_one_batches_still_read() {
        let bytes: Vec<u8> = [
            &[5, 0, 0, 0, 0, 0, 0, 0][..],
            &[0x35, 0, 0, 0],
            &[0xda, 0x28, 0xb5, 0xad],
            &[1, 0, 0, 0],
            &[1, 0, 0, 0],
            &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0],
            &[0x00, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0, 0],
            &[
                0x0c, 0x00, 0x00, 0x02, 0x6b, 0x02, 0x68, 0x69, 0x01, 0x01, 0x68, 0x01, 0x76,
            ],
        ]
        .concat();
        let batch = Batch::validate(&bytes).expect("a valid format-1 batch");
        assert_eq!(batch.header().header_len as usize, HEADER_LEN_V1);
        assert_eq!(batch.header().producer_id, NO_PRODUCER);
        let record = batch.records().next().expect("one record");
        assert_eq!(record.offset, Offset(5));
        assert_eq!(record.value, b"hi");
    }

    #[test]
    fn empty_builder_does_not_finish() {
        assert_eq!(BatchBuilder::new().finish(), Err(BatchError::Empty));
    }

    #[test]
    fn batches_iterates_back_to_back_and_stops_at_garbage() {
        let a = build(&[(1, None, b"a".to_vec(), vec![])]);
        let b = build(&[(2, None, b"b".to_vec(), vec![])]);
        let mut buf = [a.as_ref(), b.as_ref(), &[0xde, 0xad][..]].concat();
        let results: Vec<_> = Batches::new(&buf).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_err());
        buf.truncate(a.len() + b.len());
        assert_eq!(Batches::new(&buf).filter(|r| r.is_ok()).count(), 2);
    }

    #[test]
    fn encoded_record_len_matches_push() {
        let mut builder = BatchBuilder::new();
        builder.push(100, None, b"first", &[]).unwrap();
        let before = builder.len_bytes();
        let predicted =
            BatchBuilder::encoded_record_len(-3, 1, Some(b"key"), b"value", &[(b"h", b"v")]);
        builder
            .push(97, Some(b"key"), b"value", &[(b"h", b"v")])
            .unwrap();
        assert_eq!(builder.len_bytes() - before, predicted);
    }
}
