//! One connection from a target to a replica host, carrying one session: plain TCP, mutual
//! TLS verifying that the host is the node the replica is expected on, or in memory to the
//! host of the same process (the replica's node is this one). A writer task
//! encodes the target's messages in order, a reader task decodes the replica's and hands them
//! to the target tagged with the session. Any error ends the connection, and the target hears
//! that it did (the replica is ejected at once, not after a timeout) and starts a new session.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tandem_core::{Envelope, ReplicaId, SessionId};
use tandem_pki::rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::{Inbound, ReplicaEndpoint};
use crate::replica::LocalHost;
use crate::security::{self, LinkSecurity};

/// Frames waiting to be written on one connection. The core bounds what it sends a replica
/// (`replica_inflight_max`), so this only smooths bursts; when it is full the connection is
/// too slow and is dropped (the core ejects the replica).
const OUTBOUND_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the TLS handshake may take once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer batches queued frames into one write up to about this many bytes.
const WRITE_BATCH: usize = 1 << 20;

/// Why a connection to a replica host ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("the connection timed out")]
    ConnectTimeout,
    /// The node name is not a valid DNS name, the handshake failed (the host's certificate does
    /// not name the node, or is not the cluster CA's), or the host is not a node.
    #[error("refused the replica host: {0}")]
    Refused(String),
    #[error("the TLS handshake did not finish in time")]
    HandshakeTimeout,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("cannot encode a frame: {0}")]
    Encode(#[from] tandem_wire::EncodeError),
    #[error("malformed frame from the replica host: {0}")]
    Decode(#[from] tandem_wire::DecodeError),
    #[error("the replica host closed the connection")]
    Closed,
    #[error("the replica host of this process has stopped")]
    LocalHostStopped,
}

pub(crate) struct Connection {
    outbound: mpsc::Sender<Envelope>,
}

impl Connection {
    pub fn open(
        endpoint: ReplicaEndpoint,
        security: LinkSecurity,
        local: Option<LocalHost>,
        replica: ReplicaId,
        session: SessionId,
        inbound: mpsc::Sender<Inbound>,
    ) -> Connection {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(async move {
            let ran = match local {
                Some(local) => run_local(&local, replica, session, outbound_rx, &inbound).await,
                None => run(&endpoint, security, replica, session, outbound_rx, &inbound).await,
            };
            let address = endpoint.address;
            match ran {
                Ok(()) => {}
                Err(error @ LinkError::Refused(_)) => tracing::warn!(
                    replica = replica.0, %address, node = %endpoint.node, %error,
                    "replica connection refused"
                ),
                Err(error) => {
                    tracing::debug!(replica = replica.0, %address, %error, "replica connection ended")
                }
            }
            let ended = Inbound {
                replica,
                session,
                envelope: None,
            };
            let _ = inbound.send(ended).await; // The target may have stopped.
        });
        Connection { outbound }
    }

    /// Queues a message; if the connection is gone or hopelessly behind it is dropped, and the
    /// target's timeouts take over.
    pub fn send(&self, envelope: Envelope) {
        let _ = self.outbound.try_send(envelope);
    }
}

/// The connection in memory to the host of this process.
async fn run_local(
    local: &LocalHost,
    replica: ReplicaId,
    session: SessionId,
    outbound: mpsc::Receiver<Envelope>,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), LinkError> {
    let stream = local.connect().await.ok_or(LinkError::LocalHostStopped)?;
    let (reader, writer) = tokio::io::split(stream);
    exchange(reader, writer, replica, session, outbound, inbound).await
}

async fn run(
    endpoint: &ReplicaEndpoint,
    security: LinkSecurity,
    replica: ReplicaId,
    session: SessionId,
    outbound: mpsc::Receiver<Envelope>,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), LinkError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.address))
        .await
        .map_err(|_| LinkError::ConnectTimeout)?
        .map_err(LinkError::Connect)?;
    crate::tune_link_socket(&stream)?;
    let client = match security {
        LinkSecurity::Plain => {
            let (reader, writer) = stream.into_split();
            return exchange(reader, writer, replica, session, outbound, inbound).await;
        }
        LinkSecurity::Tls { client, .. } => client,
    };
    // The host's certificate must name the node the replica is expected on.
    let name = ServerName::try_from(endpoint.node.clone()).map_err(|error| {
        LinkError::Refused(format!("{:?} is not a node name: {error}", endpoint.node))
    })?;
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(client).connect(name, tandem_pki::buffered(stream)),
    )
    .await
    .map_err(|_| LinkError::HandshakeTimeout)?
    .map_err(|error| LinkError::Refused(error.to_string()))?;
    security::accept_node(stream.get_ref().1.peer_certificates())
        .map_err(|error| LinkError::Refused(error.to_string()))?;
    let (reader, writer) = tokio::io::split(stream);
    exchange(reader, writer, replica, session, outbound, inbound).await
}

/// Writes the target's frames and reads the replica's until either side ends.
async fn exchange(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    replica: ReplicaId,
    session: SessionId,
    mut outbound: mpsc::Receiver<Envelope>,
    inbound: &mpsc::Sender<Inbound>,
) -> Result<(), LinkError> {
    let writing = async move {
        let mut buffer = BytesMut::new();
        while let Some(envelope) = outbound.recv().await {
            tandem_wire::try_encode(&envelope, &mut buffer)?;
            // Batch what is already queued into one write.
            while let Ok(envelope) = outbound.try_recv() {
                tandem_wire::try_encode(&envelope, &mut buffer)?;
                if buffer.len() > WRITE_BATCH {
                    break;
                }
            }
            writer.write_all(&buffer).await?;
            // TLS keeps what the socket did not take yet: flushed, the batch is on its way.
            writer.flush().await?;
            buffer.clear();
        }
        Ok(())
    };
    let reading = async move {
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(envelope) = tandem_wire::decode(&mut buffer)? {
                let frame = Inbound {
                    replica,
                    session,
                    envelope: Some(envelope),
                };
                if inbound.send(frame).await.is_err() {
                    return Ok(()); // The target stopped.
                }
            }
            if reader.read_buf(&mut buffer).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    };
    // Whichever side ends first ends the connection (the other half is dropped with it).
    tokio::select! {
        result = writing => result,
        result = reading => result,
    }
}
