//! [`ServerConfig`]: the limits and timeouts of a [`super::Server`] and its connections.

use std::sync::Arc;
use std::time::Duration;

use tandem_pki::rustls;
use tandem_pki::Identity;

/// TLS as the NBD protocol defines it, in its "TLS required" form: a client must upgrade the
/// connection with `NBD_OPT_STARTTLS` before any other option (`NBD_REP_ERR_TLS_REQD`
/// otherwise; `NBD_OPT_EXPORT_NAME` closes the connection), and show a client certificate of
/// the CA `config` trusts; whom the certificate names must be allowed by `allow`, or opening an
/// export is refused (`NBD_REP_ERR_POLICY`).
#[derive(Clone)]
pub struct TlsRequired {
    /// From [`tandem_pki::server_config`] with client certificates required.
    pub config: Arc<rustls::ServerConfig>,
    /// Who may open exports.
    pub allow: fn(&Identity) -> bool,
}

impl std::fmt::Debug for TlsRequired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRequired").finish_non_exhaustive()
    }
}

/// Limits and timeouts of a [`super::Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The whole handshake (greeting to transmission phase) must finish within this.
    pub handshake_timeout: Duration,
    /// Once a write's header has arrived, its payload must arrive within this.
    pub payload_timeout: Duration,
    /// A batch of replies must be accepted by the client's socket within this (a client that
    /// stops reading its replies is disconnected).
    pub reply_timeout: Duration,
    /// When a connection ends, its in-flight requests get this long to finish before they are
    /// abandoned.
    pub drain_timeout: Duration,
    /// Requests of one connection being processed at once; the server stops reading requests
    /// from the connection while this many are in flight.
    pub max_in_flight_requests: usize,
    /// Write payloads and read replies of one connection held in memory at once (at least one
    /// maximum payload, 32 MiB, is always allowed).
    pub max_in_flight_bytes: usize,
    /// `None`: plain NBD (for loopback-only endpoints); else TLS is required.
    pub tls: Option<TlsRequired>,
    /// Connections open at once (handshake or transmission); one more is closed at once.
    pub connections_max: usize,
    /// ... and from one peer address, so that one address cannot take them all.
    pub connections_per_peer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            handshake_timeout: Duration::from_secs(30),
            payload_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_in_flight_requests: 128,
            max_in_flight_bytes: 64 << 20,
            tls: None,
            connections_max: 1024,
            connections_per_peer: 256,
        }
    }
}
