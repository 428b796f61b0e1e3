//! Handshake: version negotiation, the first request on every connection.

use spool_protocol::requests::{
    HandshakeRequest, HandshakeResponse, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
use spool_protocol::{ErrorCode, ErrorResponse};

use crate::server::errors::error;

/// Feature bits this server supports (none are defined yet).
pub const SERVER_FEATURES: u64 = 0;

/// Picks the highest protocol version both sides speak, or explains why
/// there is none.
pub fn handle(
    request: &HandshakeRequest,
    max_frame_bytes: usize,
) -> Result<HandshakeResponse, ErrorResponse> {
    let (min_version, max_version) = (request.min_version, request.max_version);
    let version = max_version.min(PROTOCOL_VERSION_MAX);
    if version < min_version.max(PROTOCOL_VERSION_MIN) {
        return Err(error(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol versions {min_version}..={max_version}, this server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}"
            ),
        ));
    }
    Ok(HandshakeResponse {
        version,
        features: request.features & SERVER_FEATURES,
        max_frame_bytes: u32::try_from(max_frame_bytes).unwrap_or(u32::MAX),
        server_id: format!("spool {}", env!("CARGO_PKG_VERSION")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min_version: u16, max_version: u16) -> HandshakeRequest {
        HandshakeRequest {
            min_version,
            max_version,
            features: 0,
            client_id: "test".into(),
        }
    }

    #[test]
    fn negotiates_or_refuses() {
        // Version 3 (deliveries as stored batches) is the only one.
        assert!(matches!(
            handle(&hello(1, 5), 1024),
            Ok(HandshakeResponse { version: 3, .. })
        ));
        let err = handle(&hello(4, 5), 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion as u16);
        let err = handle(&hello(1, 2), 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion as u16);
    }
}
