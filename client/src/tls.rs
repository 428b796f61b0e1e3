//! TLS for connections to brokers: rustls (no OpenSSL), trusting a CA file
//! or the system's roots, optionally with a client certificate (mutual
//! TLS). Plain TCP stays the default.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::ClientError;

/// How a client speaks TLS to brokers.
#[derive(Clone)]
pub struct TlsOptions {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn invalid(what: String) -> ClientError {
    ClientError::Invalid(what)
}

/// The certificates in PEM file `path`.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(invalid(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// The private key in PEM file `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsOptions {
    /// Trusts the certificate authorities in PEM file `ca`.
    pub fn with_ca_file(ca: &Path) -> Result<TlsOptions, ClientError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| invalid(format!("bad CA certificate in {}: {e}", ca.display())))?;
        }
        TlsOptions::with_roots(roots, None)
    }

    /// Trusts the operating system's certificate authorities.
    pub fn with_system_roots() -> Result<TlsOptions, ClientError> {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(invalid(format!(
                "no system CA certificates found ({:?})",
                found.errors
            )));
        }
        TlsOptions::with_roots(roots, None)
    }

    /// Trusts the CAs in `ca` and presents the certificate chain in
    /// `cert` with its key `key` (mutual TLS).
    pub fn with_client_cert(ca: &Path, cert: &Path, key: &Path) -> Result<TlsOptions, ClientError> {
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| invalid(format!("bad CA certificate in {}: {e}", ca.display())))?;
        }
        TlsOptions::with_roots(roots, Some((read_certs(cert)?, read_key(key)?)))
    }

    fn with_roots(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<TlsOptions, ClientError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("TLS client certificate: {e}")))?,
        };
        Ok(TlsOptions {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: None,
        })
    }

    /// The name the brokers' certificates are checked against (default:
    /// the address dialled, an IP address).
    pub fn server_name(mut self, name: &str) -> TlsOptions {
        self.server_name = Some(name.to_string());
        self
    }

    /// The TLS handshake over `stream`, to the broker at `addr`.
    pub async fn connect<S>(&self, addr: SocketAddr, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("server name {name:?}: {e}"),
                )
            })?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        self.connector.connect(name, stream).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e}"))
        })
    }
}
