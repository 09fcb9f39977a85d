//! One connection from a target to the replica host, plain TCP or mutual TLS (the handshake and
//! the peer's identity are checked here, in the connection's own task), or in memory from a
//! target in the same process ([`LocalHost`]). A reader task decodes
//! frames: the first must be a `Hello` naming a replica the host serves, and from then on every
//! frame goes to that replica's task. A writer task, started once the connection is bound to a replica,
//! encodes what the replica sends back, in order, batching what is queued into one write.
//!
//! Either side may end the connection: the reader on end of stream, an I/O error or a
//! malformed frame (it then tells the replica task, which drops its handle); the replica task
//! when the connection is superseded, refused, too slow or the replica stops (it drops the
//! handle, wakes the reader, and for a slow connection aborts the writer instead of letting it
//! drain).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tandem_core::{Envelope, Message};
use tandem_pki::peers::PeerSlot;
use tandem_wire::DecodeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use super::host::{Input, Shared};
use crate::security;

/// Identifies one accepted connection within a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnId(pub u64);

/// Who is on the other end of a connection (for the logs).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    Remote(SocketAddr),
    /// A target in this process, connected through [`LocalHost`].
    Local,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Remote(address) => address.fmt(f),
            Peer::Local => f.write_str("a target in this process"),
        }
    }
}

/// What an in-memory connection buffers in each direction (a write batch and more).
const LOCAL_BUFFER: usize = 2 << 20;

/// The way in to a replica host for the targets of the same process (see
/// [`ReplicaHost::local`](super::ReplicaHost::local)): a connection in memory, served like any
/// other (`Hello` first, the same bounds) but with neither a socket nor TLS, which would only
/// cost CPU here: nothing outside the process can reach it. It does not keep the host alive.
#[derive(Clone, Debug)]
pub struct LocalHost {
    node: String,
    shared: Weak<Shared>,
}

impl LocalHost {
    pub(crate) fn new(node: String, shared: Weak<Shared>) -> LocalHost {
        LocalHost { node, shared }
    }

    /// The node whose replicas the host serves: a target reaches them through [`Self::connect`].
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Opens a connection to the host (waiting, like the listener, while `connections_max` are
    /// open); `None` once the host has stopped.
    pub async fn connect(&self) -> Option<DuplexStream> {
        let shared = self.shared.upgrade()?;
        if *shared.shutdown.borrow() {
            return None;
        }
        let permit = Arc::clone(&shared.connections).acquire_owned().await.ok()?;
        let id = shared.next_conn_id();
        tracing::debug!(
            conn = id.0,
            "accepted a connection from a target in this process"
        );
        let (target_end, host_end) = tokio::io::duplex(LOCAL_BUFFER);
        let (reader, writer) = tokio::io::split(host_end);
        tokio::spawn(serve(shared, reader, writer, Peer::Local, id, permit));
        Some(target_end)
    }
}

/// Bytes read from the socket at a time (the buffer grows to hold one whole frame at most:
/// frames are decoded as soon as they are complete, and their headers are checked first).
const READ_CHUNK: usize = 64 * 1024;
/// The writer batches queued frames into one write up to about this many bytes.
const WRITE_BATCH: usize = 1 << 20;

/// Why sending on a connection failed: it has to be closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("the connection is {frames} frames / {bytes} bytes behind (limits {frames_max} / {bytes_max})")]
    TooSlow {
        frames: usize,
        bytes: usize,
        frames_max: usize,
        bytes_max: usize,
    },
    #[error("the connection's writer has stopped")]
    Gone,
}

/// The replica task's handle on a connection bound to it.
pub(crate) struct ConnHandle {
    pub id: ConnId,
    pub peer: Peer,
    frames: mpsc::Sender<(Envelope, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    bytes_max: usize,
    frames_max: usize,
    /// Wakes the reader so it stops reading (a permit is stored if it is not waiting yet).
    close: Arc<Notify>,
    writer: AbortHandle,
}

impl ConnHandle {
    /// Queues a frame without waiting: a connection that cannot keep up is closed rather than
    /// let the host's memory grow.
    pub fn send(&self, envelope: Envelope) -> Result<(), SendError> {
        let size = frame_size_estimate(&envelope.message);
        let queued = self.queued_bytes.load(Ordering::Acquire);
        // One frame of any size may always be queued on an idle connection.
        if queued > 0 && queued + size > self.bytes_max {
            return Err(self.too_slow(queued));
        }
        match self.frames.try_send((envelope, size)) {
            Ok(()) => {
                self.queued_bytes.fetch_add(size, Ordering::AcqRel);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.too_slow(queued)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Gone),
        }
    }

    fn too_slow(&self, bytes: usize) -> SendError {
        SendError::TooSlow {
            frames: self.frames.max_capacity() - self.frames.capacity(),
            bytes,
            frames_max: self.frames_max,
            bytes_max: self.bytes_max,
        }
    }

    /// Closes the connection: the reader stops; the writer sends what is queued (`drain`) or
    /// stops at once.
    pub fn close(self, drain: bool) {
        self.close.notify_one();
        if !drain {
            self.writer.abort();
        }
        // Dropping `frames` lets a draining writer finish.
    }
}

/// A rough upper bound of a frame's encoded size, for the per-connection byte budget.
pub(crate) fn frame_size_estimate(message: &Message) -> usize {
    let payload = match message {
        Message::ReadDone {
            result: Ok(data), ..
        }
        | Message::SegmentData {
            result: Ok(data), ..
        }
        | Message::Write { data, .. }
        | Message::WriteSegment { data, .. } => data.len(),
        Message::HelloAck(ack) => ack.dirty.words().len() * 8,
        Message::Regions { regions, .. } => regions.words().len() * 8,
        _ => 0,
    };
    tandem_wire::HEADER_LEN + tandem_wire::TRAILER_LEN + 128 + payload
}

/// Serves one accepted plain TCP connection until it ends.
pub(crate) async fn serve_plain(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    permit: OwnedSemaphorePermit,
) {
    if let Err(error) = crate::tune_link_socket(&stream) {
        tracing::warn!(%peer, %error, "cannot set TCP_NODELAY and keepalive; closing the connection");
        return;
    }
    let (reader, writer) = stream.into_split();
    serve(shared, reader, writer, Peer::Remote(peer), id, permit).await;
}

/// Completes the TLS handshake of an accepted connection (within the host's handshake timeout,
/// holding `permits.1` meanwhile), lets in only a node of the cluster, then serves it until it
/// ends.
pub(crate) async fn serve_tls(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    permits: (OwnedSemaphorePermit, (OwnedSemaphorePermit, PeerSlot)),
) {
    let (permit, handshake) = permits;
    if let Err(error) = crate::tune_link_socket(&stream) {
        tracing::warn!(%peer, %error, "cannot set TCP_NODELAY and keepalive; closing the connection");
        return;
    }
    let timeout = shared.options.handshake_timeout;
    let mut shutdown = shared.shutdown.clone();
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(timeout, acceptor.accept(tandem_pki::buffered(stream))) => accepted,
        _ = shutdown.wait_for(|stopped| *stopped) => return,
    };
    drop(handshake);
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        // Anyone may connect and fail: a foreign or expired certificate, or no TLS at all.
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed; closing the connection");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, ?timeout, "TLS handshake not finished in time; closing the connection");
            return;
        }
    };
    match security::accept_node(stream.get_ref().1.peer_certificates()) {
        Ok(identity) => tracing::debug!(%peer, conn = id.0, %identity, "TLS peer accepted"),
        Err(error) => {
            tracing::warn!(%peer, %error, "refused a replica connection");
            return;
        }
    }
    let (reader, writer) = tokio::io::split(stream);
    serve(shared, reader, writer, Peer::Remote(peer), id, permit).await;
}

/// Serves one connection (its two halves) until it ends.
async fn serve<R, W>(
    shared: Arc<Shared>,
    mut reader: R,
    writer: W,
    peer: Peer,
    id: ConnId,
    _permit: OwnedSemaphorePermit,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut shutdown = shared.shutdown.clone();
    let hello_timeout = shared.options.hello_timeout;

    let first = tokio::select! {
        first = tokio::time::timeout(hello_timeout, read_frame(&mut reader, &mut buffer)) => first,
        _ = shutdown.wait_for(|stopped| *stopped) => return,
    };
    let hello = match first {
        Ok(Ok(Some(envelope))) => envelope,
        Ok(Ok(None)) => {
            tracing::debug!(%peer, "connection closed before its Hello");
            return;
        }
        Ok(Err(ReadError::Decode(error))) => {
            tracing::warn!(%peer, %error, "malformed frame before a Hello; closing the connection");
            return;
        }
        Ok(Err(ReadError::Io(error))) => {
            tracing::debug!(%peer, %error, "connection failed before its Hello");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?hello_timeout, "no Hello in time; closing the connection");
            return;
        }
    };
    let Message::Hello { replica, .. } = hello.message else {
        tracing::warn!(
            %peer,
            kind = hello.message.kind(),
            "the first frame is not a Hello; closing the connection"
        );
        return;
    };
    let Some(input) = shared.replica_input(replica) else {
        tracing::warn!(
            %peer,
            replica = replica.0,
            "Hello for a replica this host does not serve; closing the connection"
        );
        return;
    };

    let options = &shared.options;
    let (frames, frames_rx) = mpsc::channel(options.outgoing_frames_max);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_frames(
        writer,
        frames_rx,
        Arc::clone(&queued_bytes),
        options.write_timeout,
        peer,
        replica.0,
    ));
    let close = Arc::new(Notify::new());
    let handle = ConnHandle {
        id,
        peer,
        frames,
        queued_bytes,
        bytes_max: options.outgoing_bytes_max,
        frames_max: options.outgoing_frames_max,
        close: Arc::clone(&close),
        writer: writer.abort_handle(),
    };
    if input
        .sender
        .send(Input::Attach {
            conn: handle,
            hello,
        })
        .await
        .is_err()
    {
        tracing::warn!(
            %peer,
            replica = replica.0,
            "the replica's task is not running; closing the connection"
        );
        return;
    }

    // Every frame goes to the replica until either side ends the connection.
    let ended = loop {
        let next = async {
            match read_frame(&mut reader, &mut buffer).await {
                Ok(Some(envelope)) => match input.send_frame(id, envelope).await {
                    Ok(()) => Step::Forwarded,
                    Err(()) => Step::ReplicaGone,
                },
                Ok(None) => Step::Ended(None),
                Err(error) => Step::Ended(Some(error)),
            }
        };
        tokio::select! {
            _ = close.notified() => return, // The replica closed it and knows.
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            step = next => match step {
                Step::Forwarded => continue,
                Step::ReplicaGone => return,
                Step::Ended(error) => break error,
            },
        }
    };
    match ended {
        None if buffer.is_empty() => {
            tracing::debug!(%peer, replica = replica.0, "the target closed the connection")
        }
        None => tracing::debug!(
            %peer,
            replica = replica.0,
            partial = buffer.len(),
            "the connection ended inside a frame"
        ),
        Some(ReadError::Decode(error)) => tracing::warn!(
            %peer,
            replica = replica.0,
            %error,
            "malformed frame; closing the connection"
        ),
        Some(ReadError::Io(error)) => {
            tracing::debug!(%peer, replica = replica.0, %error, "connection failed")
        }
    }
    // The replica task drops its handle, so the writer finishes and the socket closes.
    let _ = input.sender.send(Input::Closed { conn: id }).await;
}

enum Step {
    Forwarded,
    /// The replica's task has stopped (it was removed): its handle on this connection is gone.
    ReplicaGone,
    /// The stream ended, failed, or carried a malformed frame.
    Ended(Option<ReadError>),
}

enum ReadError {
    Io(std::io::Error),
    Decode(DecodeError),
}

/// Reads until one whole frame is decoded; `None` at the end of the stream.
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
) -> Result<Option<Envelope>, ReadError> {
    loop {
        if let Some(envelope) = tandem_wire::decode(buffer).map_err(ReadError::Decode)? {
            return Ok(Some(envelope));
        }
        buffer.reserve(READ_CHUNK);
        if reader.read_buf(buffer).await.map_err(ReadError::Io)? == 0 {
            return Ok(None);
        }
    }
}

/// Writes queued frames in order until the handle is dropped (then what is queued is still
/// written) or a write fails or takes longer than `timeout`.
async fn write_frames(
    mut writer: impl AsyncWrite + Unpin,
    mut frames: mpsc::Receiver<(Envelope, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    timeout: Duration,
    peer: Peer,
    replica: u64,
) {
    let mut buffer = BytesMut::new();
    while let Some((envelope, size)) = frames.recv().await {
        let mut sizes = size;
        let mut next = Some(envelope);
        while let Some(envelope) = next.take() {
            if let Err(error) = tandem_wire::try_encode(&envelope, &mut buffer) {
                // The core never sends more than a frame holds (reads are bounded by the disk).
                tracing::error!(%peer, replica, %error, "cannot encode a frame; closing the connection");
                return;
            }
            if buffer.len() < WRITE_BATCH {
                if let Ok((envelope, size)) = frames.try_recv() {
                    sizes += size;
                    next = Some(envelope);
                }
            }
        }
        // TLS keeps what the socket did not take yet: flushed, the batch is on its way.
        let written = async {
            writer.write_all(&buffer).await?;
            writer.flush().await
        };
        match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%peer, replica, %error, "write failed; closing the connection");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, replica, ?timeout, "the target stopped reading; closing the connection");
                return;
            }
        }
        buffer.clear();
        queued_bytes.fetch_sub(sizes, Ordering::AcqRel);
    }
    let _ = writer.shutdown().await;
}
