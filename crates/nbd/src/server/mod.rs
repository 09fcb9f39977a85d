//! The server: its exports, the accept loop, and one task per connection, which runs the
//! handshake and then the transmission phase.
//!
//! The modules below are used in this order, each only by those after it: `config`
//! ([`ServerConfig`]), `conn` (what the phases share: the session, the connection's error),
//! `exports` (the registry of exports, [`ServerError`]), `handshake`, `transmission`, and this
//! module, the [`Server`].

mod config;
mod conn;
mod exports;
mod handshake;
mod transmission;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem_block::BlockDevice;
use tandem_pki::peers::PeerCounts;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use self::config::{ServerConfig, TlsRequired};
use self::conn::{wait_set, ConnError, Stream};
use self::exports::Exports;
pub use self::exports::ServerError;
use self::handshake::{Outcome, Tls};

/// An NBD server hosting any number of exports of one device type. Exports can be added and
/// removed while it serves.
pub struct Server<D> {
    config: ServerConfig,
    exports: Exports<D>,
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
            exports: Exports::new(),
            open: AtomicUsize::new(0),
        }
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves `device` as export `name`. New connections can use it at once.
    pub fn add_export(&self, name: impl Into<String>, device: Arc<D>) -> Result<(), ServerError> {
        self.exports.add(name.into(), device)
    }

    /// Stops serving export `name`: new connections no longer find it, and its open
    /// connections stop reading requests, finish those in flight, and close. Returns the device.
    pub fn remove_export(&self, name: &str) -> Option<Arc<D>> {
        self.exports.remove(name)
    }

    /// Removes export `name` only if `remove` says so of its device (its connections close as
    /// with [`Server::remove_export`]): lets two owners share a server without removing each
    /// other's exports.
    pub fn remove_export_if(
        &self,
        name: &str,
        remove: impl FnOnce(&Arc<D>) -> bool,
    ) -> Option<Arc<D>> {
        self.exports.remove_if(name, remove, false)
    }

    /// Like [`Server::remove_export_if`], but the export's connections close at once, leaving
    /// the requests in flight unanswered: for a device that can no longer answer them (a
    /// forwarded export whose upstream is gone). A client that reconnects (qemu's NBD driver
    /// with `reconnect-delay`) sends them again, instead of passing an error to its
    /// application.
    pub fn abort_export_if(
        &self,
        name: &str,
        remove: impl FnOnce(&Arc<D>) -> bool,
    ) -> Option<Arc<D>> {
        self.exports.remove_if(name, remove, true)
    }

    /// Connections currently open (in the handshake or the transmission phase).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The device served as `name`.
    pub fn export(&self, name: &str) -> Option<Arc<D>> {
        self.exports.device(name)
    }

    /// The names of the exports, sorted.
    pub fn export_names(&self) -> Vec<String> {
        self.exports.names()
    }

    /// Accepts connections on `listener` until `shutdown` completes, then stops accepting, lets
    /// every connection finish its in-flight requests (up to the drain timeout) and returns once
    /// all connections are closed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        let peers = PeerCounts::new();
        let local = listener.local_addr().ok();
        tracing::info!(addr = ?local, "NBD server listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= self.config.connections_max {
                            tracing::warn!(
                                %peer,
                                limit = self.config.connections_max,
                                "too many connections open: connection closed"
                            );
                            continue;
                        }
                        let Some(slot) = peers.take(peer.ip(), self.config.connections_per_peer)
                        else {
                            tracing::warn!(
                                %peer,
                                limit = self.config.connections_per_peer,
                                "too many connections from this address: connection closed"
                            );
                            continue;
                        };
                        let server = Arc::clone(&self);
                        let stop = stop_rx.clone();
                        let span = tracing::info_span!("nbd", %peer);
                        connections.spawn(
                            async move {
                                server.connection(stream, stop).await;
                                drop(slot);
                            }
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

    /// The whole handshake: greeting, options, and with TLS required the upgrade and the
    /// options again inside it; the outcome and the socket the transmission phase then uses.
    async fn handshake(&self, mut stream: TcpStream) -> Result<(Outcome<D>, Stream), ConnError> {
        let Some(flags) = handshake::greet(&mut stream).await? else {
            let closed = Outcome::Closed("client left before sending its flags");
            return Ok((closed, Stream::Plain(stream)));
        };
        let Some(tls) = &self.config.tls else {
            let outcome = handshake::haggle(&mut stream, &self.exports, flags, Tls::Plain).await?;
            return Ok((outcome, Stream::Plain(stream)));
        };
        match handshake::haggle(&mut stream, &self.exports, flags, Tls::Required).await? {
            Outcome::StartTls => {}
            outcome => return Ok((outcome, Stream::Plain(stream))),
        }
        let mut stream = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config))
            .accept(tandem_pki::buffered(stream))
            .await
            .map_err(ConnError::Tls)?;
        let identity = match stream.get_ref().1.peer_certificates() {
            Some([first, ..]) => tandem_pki::identity_of(first).map_err(|error| error.to_string()),
            _ => Err("no client certificate".to_string()),
        };
        let refused = match identity {
            Ok(identity) if (tls.allow)(&identity) => {
                tracing::debug!(%identity, "TLS established");
                None
            }
            Ok(identity) => Some(format!("{identity} may not open exports on this server")),
            Err(error) => Some(format!("the client certificate names no identity: {error}")),
        };
        let outcome = handshake::haggle(
            &mut stream,
            &self.exports,
            flags,
            Tls::Established { refused },
        )
        .await?;
        Ok((outcome, Stream::Tls(Box::new(stream))))
    }

    async fn connection(&self, stream: TcpStream, stop: watch::Receiver<bool>) {
        self.open.fetch_add(1, Ordering::SeqCst);
        let _open = OpenGuard(&self.open);
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        tracing::debug!("connection opened");
        let mut server_stop = stop.clone();
        let handshake = tokio::time::timeout(self.config.handshake_timeout, self.handshake(stream));
        let outcome = tokio::select! {
            outcome = handshake => outcome,
            _ = wait_set(&mut server_stop) => {
                tracing::debug!("connection closed during handshake: server shutting down");
                return;
            }
        };
        let (session, stream) = match outcome {
            Err(_) => {
                tracing::warn!(timeout = ?self.config.handshake_timeout, "handshake timed out, closing");
                return;
            }
            Ok(Err(err)) => {
                tracing::warn!(%err, "handshake failed, closing");
                return;
            }
            Ok(Ok((Outcome::Closed(reason), _))) => {
                tracing::debug!(reason, "connection closed during handshake");
                return;
            }
            Ok(Ok((Outcome::StartTls, _))) => {
                tracing::warn!("a second NBD_OPT_STARTTLS was acknowledged, closing");
                return;
            }
            Ok(Ok((Outcome::Transmission(session), stream))) => (session, stream),
        };
        let export = session.name.clone();
        tracing::info!(
            %export,
            structured = session.params.structured,
            block_status = session.params.meta_context.is_some(),
            "export opened"
        );
        match transmission::run(stream.split(), session, stop, &self.config).await {
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
