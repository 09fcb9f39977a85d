//! [`ServerConfig`]: the limits and timeouts of a [`super::Server`] and its connections.

use std::time::Duration;

/// Limits and timeouts of a [`super::Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}
