//! HTTPS for the API and the agents' metrics: a listener that completes each handshake off its accept loop, bounded in
//! time and in number (in all, and per peer address), so a slow or silent peer holds nothing but
//! its own small task and cannot take every handshake slot; the connections one address holds
//! open are bounded too. Every connection it hands on carries what the client's certificate says
//! about who is calling.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tandem_pki::peers::{PeerCounts, PeerSlot};
use tandem_pki::rustls::ServerConfig;
use tandem_pki::{identity_of, Identity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long handshakes may take and how many may be in progress at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: Duration,
    /// Connections beyond this many unfinished handshakes are closed at once.
    pub handshakes_max: usize,
    /// ... and beyond this many unfinished handshakes from one address.
    pub handshakes_per_peer: usize,
    /// Connections from an address that already holds this many open are closed at once.
    pub connections_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            handshakes_max: 256,
            handshakes_per_peer: 32,
            connections_per_peer: 256,
        }
    }
}

/// A connection whose TLS handshake is complete; holds its peer's connection slot while open.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    _slot: PeerSlot,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: SocketAddr,
    /// What the client's certificate, verified against the cluster's CA, names; `None` for a
    /// client that showed none.
    pub identity: Option<Identity>,
}

/// Hands `axum::serve` connections whose TLS handshake is complete.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(Connection, Peer)>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config` (from [`tandem_pki::server_config`]); must be
    /// called inside a Tokio runtime, which runs the handshakes.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        limits: Limits,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (handed, accepted) = mpsc::channel(64);
        tokio::spawn(accept(listener, TlsAcceptor::from(config), limits, handed));
        Ok(TlsListener { local, accepted })
    }
}

/// Accepts connections and runs each handshake in its own task, until the listener is dropped.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    handed: mpsc::Sender<(Connection, Peer)>,
) {
    let handshakes = Arc::new(Semaphore::new(limits.handshakes_max));
    let (peer_handshakes, peer_connections) = (PeerCounts::new(), PeerCounts::new());
    loop {
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = handed.closed() => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(
                %address,
                limit = limits.handshakes_max,
                "too many TLS handshakes in progress: connection closed"
            );
            continue;
        };
        let Some(handshaking) = peer_handshakes.take(address.ip(), limits.handshakes_per_peer)
        else {
            tracing::warn!(
                %address,
                limit = limits.handshakes_per_peer,
                "too many TLS handshakes in progress from this address: connection closed"
            );
            continue;
        };
        let Some(slot) = peer_connections.take(address.ip(), limits.connections_per_peer) else {
            tracing::warn!(
                %address,
                limit = limits.connections_per_peer,
                "too many connections from this address: connection closed"
            );
            continue;
        };
        let (acceptor, handed) = (acceptor.clone(), handed.clone());
        tokio::spawn(async move {
            let _permits = (permit, handshaking);
            if let Some((stream, peer)) = handshake(&acceptor, stream, address, limits).await {
                let connection = Connection {
                    stream,
                    _slot: slot,
                };
                let _ = handed.send((connection, peer)).await;
            }
        });
    }
}

/// One client's handshake, within the time limit; the connection and who it is, or `None`
/// (dropped: the client failed, was too slow, or showed a certificate naming no identity).
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    address: SocketAddr,
    limits: Limits,
) -> Option<(TlsStream<TcpStream>, Peer)> {
    let accepted = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        // Anyone can connect and fail: not worth more than debug.
        Ok(Err(error)) => {
            tracing::debug!(%address, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%address, "TLS handshake not finished in time");
            return None;
        }
    };
    let identity = match stream.get_ref().1.peer_certificates() {
        Some([first, ..]) => match identity_of(first) {
            Ok(identity) => Some(identity),
            Err(error) => {
                tracing::warn!(
                    %address,
                    %error,
                    "a certificate of the cluster's CA names no identity: connection closed"
                );
                return None;
            }
        },
        _ => None,
    };
    Some((stream, Peer { address, identity }))
}

impl Listener for TlsListener {
    type Io = Connection;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (its task panicked): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            address: self.local,
            identity: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// Serves `router` over TLS on `listener` until `shutdown`: the one way the API is served over
/// TLS, so that every request carries its caller's [`Peer`] (the authentication layer treats a
/// request without one as having come over a listener without TLS).
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: Limits,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, config, limits)?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
