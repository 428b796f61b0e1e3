//! TLS on the client port (rustls, no OpenSSL): the broker's certificate
//! and key, and optionally a CA whose certificates clients must present
//! (mutual TLS).

use std::path::Path;
use std::sync::Arc;

use spool_client::tls::{read_certs, read_key};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// How long a connection may take over its TLS handshake.
pub const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The server side of TLS, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    /// Clients must present a certificate signed by the configured CA.
    pub client_auth: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate chain in `cert` and its key in `key` (PEM);
    /// with `client_ca`, clients must present a certificate it signed.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, String> {
        let chain = read_certs(cert).map_err(|e| e.to_string())?;
        let key = read_key(key).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca).map_err(|e| e.to_string())? {
                    roots
                        .add(c)
                        .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("client certificate verifier: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("TLS certificate {}: {e}", cert.display()))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            client_auth: client_ca.is_some(),
        })
    }
}
