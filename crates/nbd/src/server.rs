//! The server: a registry of exports, the accept loop, and one task per connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::handshake::{self, Outcome};
use crate::{proto, transmission};
use tandem_block::{BlockDevice, InvalidExportInfo};

/// Limits and timeouts of a [`Server`].
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

/// Why an export could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// An export of that name is already served.
    #[error("export {0:?} already exists")]
    ExportExists(String),
    /// The name is not a valid NBD string (at most 4096 bytes of UTF-8 without NUL).
    #[error("invalid export name: {0}")]
    InvalidName(&'static str),
    /// The device's [`tandem_block::ExportInfo`] breaks the protocol's block size rules.
    #[error(transparent)]
    InvalidExport(#[from] InvalidExportInfo),
}

struct Export<D> {
    device: Arc<D>,
    /// Set (then dropped) when the export is removed: its connections finish their in-flight
    /// requests and close.
    closed: watch::Sender<bool>,
}

/// An NBD server hosting any number of exports of one device type. Exports can be added and
/// removed while it serves.
pub struct Server<D> {
    config: ServerConfig,
    exports: RwLock<BTreeMap<String, Export<D>>>,
    /// Connections accepted and not yet closed (handshake or transmission).
    open: AtomicUsize,
}

/// Counts a connection as open until dropped (also when its task is aborted).
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<D: BlockDevice> Server<D> {
    /// A server with no exports.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            exports: RwLock::new(BTreeMap::new()),
            open: AtomicUsize::new(0),
        }
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves `device` as export `name`. New connections can use it at once.
    pub fn add_export(&self, name: impl Into<String>, device: Arc<D>) -> Result<(), ServerError> {
        let name = name.into();
        proto::decode_string(name.as_bytes()).map_err(ServerError::InvalidName)?;
        device.info().validate()?;
        let mut exports = self.exports.write().unwrap_or_else(PoisonError::into_inner);
        if exports.contains_key(&name) {
            return Err(ServerError::ExportExists(name));
        }
        let (closed, _) = watch::channel(false);
        tracing::info!(export = %name, "export added");
        exports.insert(name, Export { device, closed });
        Ok(())
    }

    /// Stops serving export `name`: new connections no longer find it, and its open
    /// connections stop reading requests, finish those in flight, and close. Returns the device.
    pub fn remove_export(&self, name: &str) -> Option<Arc<D>> {
        let removed = self
            .exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        removed.map(|export| {
            tracing::info!(export = %name, "export removed");
            export.closed.send_replace(true);
            export.device
        })
    }

    /// Connections currently open (in the handshake or the transmission phase).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The device served as `name`.
    pub fn export(&self, name: &str) -> Option<Arc<D>> {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        exports.get(name).map(|e| Arc::clone(&e.device))
    }

    /// The names of the exports, sorted.
    pub fn export_names(&self) -> Vec<String> {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        exports.keys().cloned().collect()
    }

    /// The device and close signal of export `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<(Arc<D>, watch::Receiver<bool>)> {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        exports
            .get(name)
            .map(|e| (Arc::clone(&e.device), e.closed.subscribe()))
    }

    /// Every export, sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, Arc<D>)> {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        exports
            .iter()
            .map(|(n, e)| (n.clone(), Arc::clone(&e.device)))
            .collect()
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting, lets
    /// every connection finish its in-flight requests (up to the drain timeout) and returns once
    /// all connections are closed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, "NBD server listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let server = Arc::clone(&self);
                        let stop = stop_rx.clone();
                        let span = tracing::info_span!("nbd", %peer);
                        connections.spawn(
                            async move { server.connection(stream, stop).await }
                                .instrument(span),
                        );
                    }
                    Err(err) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        tracing::info!(connections = connections.len(), "NBD server shutting down");
        stop_tx.send_replace(true);
        drop(listener);
        while connections.join_next().await.is_some() {}
        tracing::info!("NBD server stopped");
    }

    async fn connection(&self, stream: TcpStream, stop: watch::Receiver<bool>) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let _open = OpenGuard(&self.open);
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        tracing::debug!("connection opened");
        let mut stream = stream;
        let mut server_stop = stop.clone();
        let handshake = tokio::time::timeout(
            self.config.handshake_timeout,
            handshake::run(&mut stream, self),
        );
        let outcome = tokio::select! {
            outcome = handshake => outcome,
            _ = wait_set(&mut server_stop) => {
                tracing::debug!("connection closed during handshake: server shutting down");
                return;
            }
        };
        let session = match outcome {
            Err(_) => {
                tracing::warn!(timeout = ?self.config.handshake_timeout, "handshake timed out, closing");
                return;
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "handshake failed, closing");
                return;
            }
            Ok(Ok(Outcome::Closed(reason))) => {
                tracing::debug!(reason, "connection closed during handshake");
                return;
            }
            Ok(Ok(Outcome::Transmission(session))) => session,
        };
        let export = session.name.clone();
        tracing::info!(
            %export,
            structured = session.params.structured,
            block_status = session.params.meta_context.is_some(),
            "export opened"
        );
        match transmission::run(stream, session, stop, &self.config).await {
            Ok(summary) => tracing::info!(
                %export,
                reason = summary.reason,
                requests = summary.requests,
                "connection closed"
            ),
            Err(err) => tracing::warn!(%export, %err, "connection closed on error"),
        }
    }
}

/// Waits until `rx` holds `true`, or its sender is gone (which also means stop).
pub(crate) async fn wait_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("a request task panicked")]
    TaskPanicked,
}
