//! What a connection's phases share: the [`Session`] the handshake hands to the transmission
//! phase, why a connection ends badly ([`ConnError`]), and waiting for a stop signal.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

use crate::proto::TransmissionParams;

/// A connection that reached the transmission phase.
pub(super) struct Session<D> {
    pub name: String,
    pub device: Arc<D>,
    pub params: TransmissionParams,
    /// Set when the export is removed.
    pub closed: watch::Receiver<bool>,
}

/// Waits until `rx` holds `true`, or its sender is gone (which also means stop).
pub(super) async fn wait_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("a request task panicked")]
    TaskPanicked,
}
