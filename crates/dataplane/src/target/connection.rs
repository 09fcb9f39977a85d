//! One TCP connection from a target to a replica host, carrying one session: a writer task
//! encodes the target's messages in order, a reader task decodes the replica's and hands them
//! to the target tagged with the session. Any error ends the connection, and the target hears
//! that it did (the replica is ejected at once, not after a timeout) and starts a new session.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tandem_core::{Envelope, ReplicaId, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Inbound;

/// Frames waiting to be written on one connection. The core bounds what it sends a replica
/// (`replica_inflight_max`), so this only smooths bursts; when it is full the connection is
/// too slow and is dropped (the core ejects the replica).
const OUTBOUND_QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Connection {
    outbound: mpsc::Sender<Envelope>,
}

impl Connection {
    pub fn open(
        address: SocketAddr,
        replica: ReplicaId,
        session: SessionId,
        inbound: mpsc::Sender<Inbound>,
    ) -> Connection {
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(async move {
            if let Err(error) = run(address, replica, session, outbound_rx, inbound.clone()).await {
                tracing::debug!(replica = replica.0, %address, %error, "replica connection ended");
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

async fn run(
    address: SocketAddr,
    replica: ReplicaId,
    session: SessionId,
    mut outbound: mpsc::Receiver<Envelope>,
    inbound: mpsc::Sender<Inbound>,
) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await??;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let writing = async move {
        let mut buffer = BytesMut::new();
        while let Some(envelope) = outbound.recv().await {
            tandem_wire::try_encode(&envelope, &mut buffer)?;
            // Batch what is already queued into one write.
            while let Ok(envelope) = outbound.try_recv() {
                tandem_wire::try_encode(&envelope, &mut buffer)?;
                if buffer.len() > 1 << 20 {
                    break;
                }
            }
            writer.write_all(&buffer).await?;
            buffer.clear();
        }
        anyhow::Ok(())
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
                    return anyhow::Ok(()); // The target stopped.
                }
            }
            if reader.read_buf(&mut buffer).await? == 0 {
                anyhow::bail!("the replica host closed the connection");
            }
        }
    };
    // Whichever side ends first ends the connection (the other half is dropped with it).
    tokio::select! {
        result = writing => result,
        result = reading => result,
    }
}
