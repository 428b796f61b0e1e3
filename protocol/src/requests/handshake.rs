//! Handshake: the first request on every connection.

use bytes::{BufMut, BytesMut};

use crate::codec::{put_string, DecodeError, Reader, Wire};

/// Client's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Feature bits the client would like (none defined yet).
    pub features: u64,
    /// Free-form client name, for logs.
    pub client_id: String,
}

/// Handshake accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The protocol version chosen.
    pub version: u16,
    /// Features both sides support.
    pub features: u64,
    /// Largest frame the server accepts.
    pub max_frame_bytes: u32,
    /// Server name and version.
    pub server_id: String,
}

impl Wire for HandshakeRequest {
    const MIN_LEN: usize = 14;

    fn put(&self, b: &mut BytesMut) {
        b.put_u16_le(self.min_version);
        b.put_u16_le(self.max_version);
        b.put_u64_le(self.features);
        put_string(b, &self.client_id);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(HandshakeRequest {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            features: r.u64("features")?,
            client_id: r.string("client_id")?,
        })
    }
}

impl Wire for HandshakeResponse {
    const MIN_LEN: usize = 16;

    fn put(&self, b: &mut BytesMut) {
        b.put_u16_le(self.version);
        b.put_u64_le(self.features);
        b.put_u32_le(self.max_frame_bytes);
        put_string(b, &self.server_id);
    }

    fn get(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(HandshakeResponse {
            version: r.u16("version")?,
            features: r.u64("features")?,
            max_frame_bytes: r.u32("max_frame_bytes")?,
            server_id: r.string("server_id")?,
        })
    }
}
