//! A small async NBD client: connects to `nbd://host:port/name`, negotiates the export with
//! `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` only when the server does not know
//! `GO`), and sends reads, writes (optionally FUA), flushes and trims with simple replies.
//!
//! Requests are pipelined: every call gets its own cookie (the protocol's "handle") and may be
//! in flight together with others, from several tasks at once (`&self` methods; share the
//! client in an `Arc`). A writer task puts whole requests on the wire in the order they were
//! submitted, so a caller that gives up on a request (a timeout dropping its future) never
//! leaves half a request on the socket; a reader task matches each reply to its request by
//! cookie. A reply for an unknown cookie, a structured reply chunk (never negotiated) or a bad
//! magic ends the connection: every request in flight then fails, and so does every later one.
//!
//! Every byte is encoded and decoded by [`crate::proto`], where the client's decoders (the
//! greeting, option replies, `NBD_REP_INFO`, simple reply headers, the `EXPORT_NAME` reply) sit
//! beside the server's encoders they are tested against. Here: `uri` ([`NbdUri`]), `error`
//! ([`ClientError`] and its reasons), `handshake` (the negotiation, on the connected socket),
//! and this module, the [`Client`] with its writer and reader tasks.
//!
//! There is no timeout per request: wrap a call in `tokio::time::timeout` to bound it. The
//! handshake is bounded by [`ClientOptions::handshake_timeout`].
mod error;
mod handshake;
mod uri;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::error::{ClientError, HandshakeError, Op, ProtocolError};
use self::handshake::Negotiated;
pub use self::uri::{NbdUri, DEFAULT_PORT};
pub use crate::proto::BlockSizes;
use crate::proto::{self, RequestHeader};

/// Requests handed to the writer task and not yet on the wire; a caller waits for room beyond
/// this (the socket's own buffers and the server's limits bound the rest).
const OUTGOING_QUEUE: usize = 64;

/// Buffer sizes of the socket's reader and writer.
const SOCKET_BUFFER: usize = 256 * 1024;

/// How long [`Client::disconnect`] waits for the server to finish and close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Client`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// The TCP connection and the whole handshake must finish within this.
    pub handshake_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the connection is unusable.
#[derive(Debug, Clone)]
enum Fatal {
    Protocol(ProtocolError),
    Lost(String),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Bytes, ClientError>>,
}

struct State {
    pending: HashMap<u64, Pending>,
    next_cookie: u64,
    fatal: Option<Fatal>,
    /// `disconnect` sent `NBD_CMD_DISC`: the server closing is expected.
    disconnecting: bool,
}

struct Shared {
    address: String,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, op: Op, fatal: &Fatal) -> ClientError {
        match fatal {
            Fatal::Protocol(reason) => ClientError::Protocol {
                address: self.address.clone(),
                reason: *reason,
            },
            Fatal::Lost(reason) => ClientError::Disconnected {
                op,
                address: self.address.clone(),
                reason: reason.clone(),
            },
        }
    }

    /// Marks the connection unusable (the first reason wins) and fails every request in
    /// flight.
    fn fail_all(&self, fatal: Fatal) {
        let (pending, fatal) = {
            let mut state = self.lock();
            let fatal = state.fatal.get_or_insert(fatal).clone();
            (std::mem::take(&mut state.pending), fatal)
        };
        for (_, pending) in pending {
            let _ = pending.reply.send(Err(self.error(pending.op, &fatal)));
        }
    }
}

/// Removes a request's entry if its caller gives up before the request was queued (once
/// queued, the reply removes it).
struct Registration<'a> {
    shared: &'a Shared,
    cookie: u64,
    queued: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.shared.lock().pending.remove(&self.cookie);
        }
    }
}

/// A connection to one NBD export. See the module documentation.
pub struct Client {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Bytes>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    uri: NbdUri,
    negotiated: Negotiated,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("uri", &self.uri.to_string())
            .field("size", &self.negotiated.size)
            .field("flags", &format_args!("{:#x}", self.negotiated.flags))
            .finish()
    }
}

impl Client {
    /// Connects to `uri` (`nbd://host[:port]/export`) with the default options.
    pub async fn connect(uri: &str) -> Result<Client, ClientError> {
        Client::connect_with(uri, &ClientOptions::default()).await
    }

    /// Connects to `uri`: TCP, then the fixed-newstyle handshake, within
    /// `options.handshake_timeout`.
    pub async fn connect_with(uri: &str, options: &ClientOptions) -> Result<Client, ClientError> {
        let uri = NbdUri::parse(uri)?;
        let address = uri.address();
        let handshake_error = |reason: HandshakeError| ClientError::Handshake {
            address: address.clone(),
            export: uri.export.clone(),
            reason,
        };
        let attempt = async {
            let stream =
                TcpStream::connect(&address)
                    .await
                    .map_err(|source| ClientError::Connect {
                        address: address.clone(),
                        source,
                    })?;
            let _ = stream.set_nodelay(true);
            let mut stream = stream;
            let negotiated = handshake::run(&mut stream, &uri.export)
                .await
                .map_err(handshake_error)?;
            Ok::<_, ClientError>((stream, negotiated))
        };
        let (stream, negotiated) = tokio::time::timeout(options.handshake_timeout, attempt)
            .await
            .map_err(|_| handshake_error(HandshakeError::TimedOut(options.handshake_timeout)))??;

        let shared = Arc::new(Shared {
            address: address.clone(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_cookie: 1,
                fatal: None,
                disconnecting: false,
            }),
        });
        let (read_half, write_half) = stream.into_split();
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let reader = tokio::spawn(read_replies(Arc::clone(&shared), read_half));
        let writer = tokio::spawn(write_requests(Arc::clone(&shared), write_half, queue));
        Ok(Client {
            shared,
            outgoing,
            reader: Some(reader),
            writer: Some(writer),
            uri,
            negotiated,
        })
    }

    /// The URI this client connected to.
    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.negotiated.size
    }

    /// The transmission flags the server sent (`proto::FLAG_*`).
    pub fn flags(&self) -> u16 {
        self.negotiated.flags
    }

    /// The server's block size constraints, if it sent them.
    pub fn block_sizes(&self) -> Option<BlockSizes> {
        self.negotiated.block_sizes
    }

    fn has_flag(&self, flag: u16) -> bool {
        self.negotiated.flags & flag != 0
    }

    pub fn is_read_only(&self) -> bool {
        self.has_flag(proto::FLAG_READ_ONLY)
    }

    pub fn can_flush(&self) -> bool {
        self.has_flag(proto::FLAG_SEND_FLUSH)
    }

    pub fn can_fua(&self) -> bool {
        self.has_flag(proto::FLAG_SEND_FUA)
    }

    pub fn can_trim(&self) -> bool {
        self.has_flag(proto::FLAG_SEND_TRIM)
    }

    pub fn can_multi_conn(&self) -> bool {
        self.has_flag(proto::FLAG_CAN_MULTI_CONN)
    }

    /// The largest read or write this client sends.
    fn max_payload(&self) -> u32 {
        self.negotiated
            .block_sizes
            .map_or(proto::MAX_PAYLOAD, |sizes| sizes.maximum)
            .min(proto::MAX_PAYLOAD)
    }

    fn check_range(&self, op: Op, offset: u64, length: u32) -> Result<(), ClientError> {
        match offset.checked_add(u64::from(length)) {
            Some(end) if end <= self.negotiated.size => Ok(()),
            _ => Err(ClientError::InvalidRequest {
                op,
                reason: "the range goes beyond the end of the export",
            }),
        }
    }

    /// Reads `length` bytes at `offset`.
    pub async fn read(&self, offset: u64, length: u32) -> Result<Bytes, ClientError> {
        let op = Op::Read { offset, length };
        self.check_range(op, offset, length)?;
        if length > self.max_payload() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "longer than the export's maximum block size",
            });
        }
        self.submit(op, proto::CMD_READ, 0, offset, length, &[])
            .await
    }

    /// Writes `data` at `offset`; with `fua`, the server answers once the data is persistent.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let op = Op::Write {
            offset,
            length,
            fua,
        };
        self.check_range(op, offset, length)?;
        if self.is_read_only() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "the export is read-only",
            });
        }
        if length > self.max_payload() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "longer than the export's maximum block size",
            });
        }
        if fua && !self.can_fua() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "the server does not support FUA",
            });
        }
        let flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        self.submit(op, proto::CMD_WRITE, flags, offset, length, data)
            .await
            .map(drop)
    }

    /// Asks the server to persist every write it has answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        if !self.can_flush() {
            return Err(ClientError::InvalidRequest {
                op: Op::Flush,
                reason: "the server does not support flush",
            });
        }
        self.submit(Op::Flush, proto::CMD_FLUSH, 0, 0, 0, &[])
            .await
            .map(drop)
    }

    /// Tells the server `length` bytes at `offset` are no longer needed (a hint: they may or may
    /// not read back as zeroes).
    pub async fn trim(&self, offset: u64, length: u32) -> Result<(), ClientError> {
        let op = Op::Trim { offset, length };
        self.check_range(op, offset, length)?;
        if !self.can_trim() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "the server does not support trim",
            });
        }
        self.submit(op, proto::CMD_TRIM, 0, offset, length, &[])
            .await
            .map(drop)
    }

    /// Sends `NBD_CMD_DISC` after every request already sent and waits (up to 30 s) for the
    /// server to answer those and close the connection. Fails if the connection was already
    /// lost.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        let already = {
            let mut state = self.shared.lock();
            state.disconnecting = true;
            state.fatal.clone()
        };
        if let Some(fatal) = already {
            return Err(self.shared.error(Op::Disconnect, &fatal));
        }
        let mut frame = BytesMut::with_capacity(proto::REQUEST_HEADER_LEN);
        RequestHeader {
            flags: 0,
            kind: proto::CMD_DISC,
            handle: 0,
            offset: 0,
            length: 0,
        }
        .encode(&mut frame);
        let sent = self.outgoing.send(frame.freeze()).await;
        // Closing the queue lets the writer flush and shut its half down.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.outgoing, closed));
        let writer = self.writer.take();
        let reader = self.reader.take();
        let finished = async {
            if let Some(writer) = writer {
                let _ = writer.await;
            }
            if let Some(reader) = reader {
                let _ = reader.await;
            }
        };
        let timed_out = tokio::time::timeout(DISCONNECT_TIMEOUT, finished)
            .await
            .is_err();
        let fatal = self.shared.lock().fatal.clone();
        match (sent, fatal) {
            (Err(_), Some(fatal)) => Err(self.shared.error(Op::Disconnect, &fatal)),
            (Err(_), None) => Err(self.shared.error(
                Op::Disconnect,
                &Fatal::Lost("the connection's writer stopped".to_string()),
            )),
            (Ok(()), Some(Fatal::Protocol(reason))) => Err(ClientError::Protocol {
                address: self.shared.address.clone(),
                reason,
            }),
            (Ok(()), _) if timed_out => Err(self.shared.error(
                Op::Disconnect,
                &Fatal::Lost(format!(
                    "the server did not close the connection within {DISCONNECT_TIMEOUT:?}"
                )),
            )),
            (Ok(()), _) => Ok(()),
        }
    }

    async fn submit(
        &self,
        op: Op,
        kind: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<Bytes, ClientError> {
        let (reply, answer) = oneshot::channel();
        let cookie = {
            let mut state = self.shared.lock();
            if let Some(fatal) = &state.fatal {
                return Err(self.shared.error(op, fatal));
            }
            if state.disconnecting {
                return Err(self
                    .shared
                    .error(op, &Fatal::Lost("the client is disconnecting".to_string())));
            }
            let cookie = state.next_cookie;
            state.next_cookie += 1;
            state.pending.insert(cookie, Pending { op, reply });
            cookie
        };
        let mut registration = Registration {
            shared: &self.shared,
            cookie,
            queued: false,
        };
        let mut frame = BytesMut::with_capacity(proto::REQUEST_HEADER_LEN + payload.len());
        RequestHeader {
            flags,
            kind,
            handle: cookie,
            offset,
            length,
        }
        .encode(&mut frame);
        frame.put_slice(payload);
        if self.outgoing.send(frame.freeze()).await.is_err() {
            let fatal = self
                .shared
                .lock()
                .fatal
                .clone()
                .unwrap_or_else(|| Fatal::Lost("the connection's writer stopped".to_string()));
            return Err(self.shared.error(op, &fatal));
        }
        registration.queued = true;
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(self.shared.error(
                op,
                &Fatal::Lost("the connection's reader stopped".to_string()),
            )),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The writer ends by itself once the queue closes (with the client); the reader would
        // wait for the server to close, so it is stopped here.
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// The writer task: puts queued requests on the wire in order, flushing whenever the queue is
/// empty; when the queue closes, shuts its half of the connection down.
async fn write_requests(
    shared: Arc<Shared>,
    write_half: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Bytes>,
) {
    let mut socket = BufWriter::with_capacity(SOCKET_BUFFER, write_half);
    while let Some(first) = queue.recv().await {
        let mut result = socket.write_all(&first).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(next) => result = socket.write_all(&next).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = socket.flush().await;
        }
        if let Err(error) = result {
            shared.fail_all(Fatal::Lost(format!("sending a request failed: {error}")));
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// The reader task: matches each reply to its request by cookie until the connection ends.
async fn read_replies(shared: Arc<Shared>, read_half: OwnedReadHalf) {
    let mut socket = BufReader::with_capacity(SOCKET_BUFFER, read_half);
    let fatal = loop {
        let mut header = [0u8; proto::SIMPLE_REPLY_LEN];
        if let Err(error) = socket.read_exact(&mut header).await {
            let state = shared.lock();
            let reason = if error.kind() == io::ErrorKind::UnexpectedEof {
                if state.disconnecting && state.pending.is_empty() {
                    return;
                }
                "the server closed the connection".to_string()
            } else {
                format!("reading a reply failed: {error}")
            };
            break Fatal::Lost(reason);
        }
        let (errno, cookie) = match proto::decode_simple_reply(&header) {
            Ok(reply) => (reply.error, reply.handle),
            Err(error) => break Fatal::Protocol(error.into()),
        };
        let Some(pending) = shared.lock().pending.remove(&cookie) else {
            break Fatal::Protocol(ProtocolError::UnknownCookie(cookie));
        };
        let result = match (errno, pending.op) {
            (0, Op::Read { length, .. }) => {
                let mut data = BytesMut::zeroed(length as usize);
                if let Err(error) = socket.read_exact(&mut data).await {
                    let fatal =
                        Fatal::Lost(format!("reading {length} bytes of data failed: {error}"));
                    let _ = pending.reply.send(Err(shared.error(pending.op, &fatal)));
                    break fatal;
                }
                Ok(data.freeze())
            }
            (0, _) => Ok(Bytes::new()),
            (errno, op) => Err(ClientError::Server { op, errno }),
        };
        // The caller may have given up (a timeout); the reply is then dropped.
        let _ = pending.reply.send(result);
    };
    shared.fail_all(fatal);
}
