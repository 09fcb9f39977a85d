//! How a client reaches etcd: plain HTTP, or TLS with a client certificate ([`EtcdTls`]), as an
//! etcd started with `--client-cert-auth` requires; and the connection settings every client
//! here uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The credential for an etcd that serves TLS and requires client certificates: the CA that
/// signed the members' certificates, and the client's certificate and key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    ca: String,
    certificate: String,
    key: String,
}

/// A credential file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("read the etcd credential file {}: {source}", path.display())]
pub struct EtcdTlsError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl EtcdTls {
    /// From PEM text.
    pub fn new(ca: String, certificate: String, key: String) -> EtcdTls {
        EtcdTls {
            ca,
            certificate,
            key,
        }
    }

    /// Reads the three PEM files.
    pub fn load(ca: &Path, certificate: &Path, key: &Path) -> Result<EtcdTls, EtcdTlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| EtcdTlsError {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(EtcdTls::new(read(ca)?, read(certificate)?, read(key)?))
    }

    pub(crate) fn options(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.certificate, &self.key))
    }
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EtcdTls { .. }") // Never the key.
    }
}

/// The URL of the member at `endpoint` (`host:port`): `https://` under TLS, else `http://`.
pub fn url(endpoint: &str, tls: Option<&EtcdTls>) -> String {
    let scheme = if tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{endpoint}")
}

/// Calls bounded by `timeout`, connections by the shorter of it and 1 s, over `tls` if given.
pub(crate) fn connect_options(timeout: Duration, tls: Option<&EtcdTls>) -> ConnectOptions {
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout.min(Duration::from_secs(1)))
        .with_timeout(timeout)
        // A member cut off from its leader says so at once instead of serving or waiting.
        .with_require_leader(true)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    match tls {
        Some(tls) => options.with_tls(tls.options()),
        None => options,
    }
}
