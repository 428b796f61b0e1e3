//! Mutual TLS between brokers. Every broker presents a certificate signed
//! by the cluster's CA and accepts only peers that do the same, on the peer
//! port (Raft, leases, forwarded commands) and, when the client port speaks
//! TLS, on the connections brokers make to each other's client port
//! (replication, forwarded group and queue requests).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::server::tls::ServerTls;

/// A broker's side of the cluster's mutual TLS.
#[derive(Clone)]
pub struct PeerTls {
    /// Accepts peers (their certificates must chain to the cluster CA).
    pub server: ServerTls,
    /// Dials peers, presenting this broker's certificate.
    pub client: spool_client::TlsOptions,
    /// Checks whether a certificate chain is a broker's (signed by the
    /// cluster CA), for connections on the client port.
    brokers: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads this broker's certificate chain `cert` and key `key` and the
    /// cluster CA `ca` (all PEM). Peers are dialled by IP address and their
    /// certificates must name it, unless `server_name` gives the DNS name
    /// every broker's certificate carries.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        server_name: Option<&str>,
    ) -> Result<PeerTls, String> {
        let server = ServerTls::load(cert, key, Some(ca), None)?;
        let client = spool_client::TlsOptions::with_client_cert(ca, cert, key)
            .map_err(|e| format!("peer TLS: {e}"))?;
        let client = match server_name {
            Some(name) => client.server_name(name),
            None => client,
        };
        let mut roots = RootCertStore::empty();
        for c in spool_client::tls::read_certs(ca).map_err(|e| e.to_string())? {
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let brokers = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("peer certificate verifier: {e}"))?;
        Ok(PeerTls {
            server,
            client,
            brokers,
        })
    }

    /// True if `chain` (end entity first) is signed by the cluster CA: the
    /// connection is another broker's.
    pub fn is_broker(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.brokers
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}
