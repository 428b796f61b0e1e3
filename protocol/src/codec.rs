//! The primitives every request and response body is built from, and the
//! [`Wire`] trait that each body type implements.
//!
//! Primitives are little-endian; `string` is a `u16` length and UTF-8
//! bytes, `bytes` a `u32` length and raw bytes, `option<T>` a `u8` (0 or 1)
//! followed by `T` when 1, `list<T>` a `u32` count and that many `T`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

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

/// A value with a wire encoding: a whole request or response body, or an
/// element of one. Implemented only in this crate (the reader's methods are
/// private), so every encoding lives beside the specification's types.
pub trait Wire: Sized {
    /// The fewest bytes one value takes: bounds the pre-allocation for a
    /// count read off the wire, so a lying count cannot reserve gigabytes.
    const MIN_LEN: usize;

    /// Appends the encoding, except the [`Wire::tail`].
    fn put(&self, b: &mut BytesMut);

    /// Reads one value.
    fn get(r: &mut Reader) -> Result<Self, DecodeError>;

    /// Bytes sent after what [`Wire::put`] writes, from their own buffer and
    /// not copied: the batch of a produce, the batches of a fetch (usually a
    /// slice of a segment's map). The length prefix is `put`'s job.
    fn tail(&self) -> Vec<Bytes> {
        Vec::new()
    }

    /// Decodes a whole body: the value and nothing after it.
    fn decode(body: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader(body);
        let value = Self::get(&mut r)?;
        r.finish()?;
        Ok(value)
    }
}

/// An empty body (the reply to create topic, delete topic, leave group,
/// commit offset and reset group).
impl Wire for () {
    const MIN_LEN: usize = 0;

    fn put(&self, _: &mut BytesMut) {}

    fn get(_: &mut Reader) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// A (partition, offset) pair: the items of ack, nack and touch.
impl Wire for (u32, u64) {
    const MIN_LEN: usize = 12;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.0);
        b.put_u64_le(self.1);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok((r.u32("partition")?, r.u64("offset")?))
    }
}

/// A partition and its committed offset, if any.
impl Wire for (u32, Option<u64>) {
    const MIN_LEN: usize = 5;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(self.0);
        put_option_u64(b, self.1);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok((r.u32("partition")?, r.option_u64("committed")?))
    }
}

/// A header: name and value.
impl Wire for (Bytes, Bytes) {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        put_bytes(b, &self.0);
        put_bytes(b, &self.1);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok((r.bytes("header name")?, r.bytes("header value")?))
    }
}

/// A partition number.
impl Wire for u32 {
    const MIN_LEN: usize = 4;

    fn put(&self, b: &mut BytesMut) {
        b.put_u32_le(*self);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u32("partition")
    }
}

/// An offset (a settled one in an ack state) or a session id (a lock's
/// waiters).
impl Wire for u64 {
    const MIN_LEN: usize = 8;

    fn put(&self, b: &mut BytesMut) {
        b.put_u64_le(*self);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u64("u64 item")
    }
}

/// A name (a user in a list of users).
impl Wire for String {
    const MIN_LEN: usize = 2;

    fn put(&self, b: &mut BytesMut) {
        put_string(b, self);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        r.string("name")
    }
}

pub(crate) fn put_string(b: &mut BytesMut, s: &str) {
    // Names and messages longer than a u16 are cut at a char boundary,
    // never sent with a wrong length.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_u16_le(end as u16);
    b.put_slice(&s.as_bytes()[..end]);
}

pub(crate) fn put_bytes(b: &mut BytesMut, bytes: &[u8]) {
    b.put_u32_le(bytes.len() as u32);
    b.put_slice(bytes);
}

pub(crate) fn put_option_u64(b: &mut BytesMut, v: Option<u64>) {
    put_option(b, v.as_ref(), |b, v| b.put_u64_le(*v));
}

pub(crate) fn put_option<T>(b: &mut BytesMut, v: Option<&T>, put: impl FnOnce(&mut BytesMut, &T)) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            put(b, v);
        }
    }
}

pub(crate) fn put_list<T: Wire>(b: &mut BytesMut, items: &[T]) {
    b.put_u32_le(items.len() as u32);
    for item in items {
        item.put(b);
    }
}

/// Bounds-checked reads from a body.
pub struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated(field))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.0.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.0.get_u16_le())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.0.get_u32_le())
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.0.get_u64_le())
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(8, field)?;
        Ok(self.0.get_i64_le())
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::BadUtf8(field))
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.need(len, field)?;
        Ok(self.0.split_to(len))
    }

    /// The next `len` bytes as they are (a length read earlier).
    pub(crate) fn raw(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, field)?;
        Ok(self.0.split_to(len))
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.0.remaining()
    }

    /// An `option<T>`, the `T` read by `get`.
    pub(crate) fn option<T>(
        &mut self,
        field: &'static str,
        get: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(get(self)?)),
            _ => Err(DecodeError::BadValue(field)),
        }
    }

    pub(crate) fn option_u64(&mut self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        self.option(field, |r| r.u64(field))
    }

    /// A `list<T>`.
    pub(crate) fn list<T: Wire>(&mut self, field: &'static str) -> Result<Vec<T>, DecodeError> {
        let n = self.u32(field)? as usize;
        let mut items = Vec::with_capacity(n.min(self.0.len() / T::MIN_LEN.max(1)));
        for _ in 0..n {
            items.push(T::get(self)?);
        }
        Ok(items)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
