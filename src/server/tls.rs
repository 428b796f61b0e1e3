//! TLS on the client port (rustls, no OpenSSL): the broker's certificate
//! and key, and optionally a CA whose certificates clients must present
//! (mutual TLS). A client certificate names its principal (the subject's
//! common name), so a client with one needs no password.

use std::path::Path;
use std::sync::Arc;

use spool_client::tls::{read_certs, read_key};
use tokio_rustls::rustls::pki_types::CertificateDer;
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
    /// Certificates signed by `peer_ca` (the cluster's brokers) are
    /// accepted too, and asked for even when clients need none.
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        peer_ca: Option<&Path>,
    ) -> Result<ServerTls, String> {
        let chain = read_certs(cert).map_err(|e| e.to_string())?;
        let key = read_key(key).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let cas: Vec<&Path> = client_ca.into_iter().chain(peer_ca).collect();
        let builder = if cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                for c in read_certs(ca).map_err(|e| e.to_string())? {
                    roots
                        .add(c)
                        .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if client_ca.is_some() {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client certificate verifier: {e}"))?,
            )
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

/// Who a verified client certificate chain (end entity first) says the
/// connection is: a broker of this cluster (signed by the cluster CA,
/// principal `broker:<its common name>`), or the user its common name
/// names.
pub fn certified_principal(
    chain: &[CertificateDer<'_>],
    peer_tls: Option<&crate::cluster::peer_tls::PeerTls>,
) -> Option<String> {
    let leaf = chain.first()?;
    if peer_tls.is_some_and(|p| p.is_broker(chain)) {
        let name = x509_parser::parse_x509_certificate(leaf)
            .ok()
            .and_then(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok().map(str::to_string))
            })
            .unwrap_or_default();
        return Some(crate::auth::broker_principal(&name));
    }
    certificate_principal(leaf)
}

/// The principal a client certificate names: its subject's common name,
/// if that is a valid user name (`None` otherwise: the client must then
/// authenticate with a password).
pub fn certificate_principal(leaf: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    crate::auth::users::check_name(cn).ok()?;
    Some(cn.to_string())
}

#[cfg(test)]
mod tests {
    use super::certificate_principal;

    fn cert_named(cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_principal_is_the_common_name_when_it_is_a_valid_user_name() {
        assert_eq!(
            certificate_principal(&cert_named("alice")),
            Some("alice".into())
        );
        assert_eq!(certificate_principal(&cert_named("broker:1")), None);
        assert_eq!(certificate_principal(&cert_named("")), None);
        assert_eq!(certificate_principal(b"not a certificate"), None);
    }
}
