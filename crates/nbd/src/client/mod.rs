//! A small async NBD client: connects to `nbd://host:port/name`, negotiates the export with
//! `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` only when the server does not know
//! `GO`), and sends reads, writes (optionally FUA), flushes, trims and write-zeroes; with
//! [`ClientOptions::structured_replies`] it also negotiates structured replies and the
//! `base:allocation` context, follows reply chunks (data, holes, errors) and sends block status
//! requests.
//!
//! Requests are pipelined: every call gets its own cookie (the protocol's "handle") and may be
//! in flight together with others, from several tasks at once (`&self` methods; share the
//! client in an `Arc`). A writer task puts whole requests on the wire in the order they were
//! submitted, so a caller that gives up on a request (a timeout dropping its future) never
//! leaves half a request on the socket; a reader task matches each reply to its request by
//! cookie. A reply for an unknown cookie, a structured reply chunk (never negotiated) or a bad
//! magic ends the connection: every request in flight then fails, and so does every later one.
//! With structured replies, a request's chunks are gathered until the one flagged `DONE`; a
//! chunk outside its request or of a type that does not fit it ends the connection too.
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
use tandem_pki::rustls;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use self::error::{ClientError, HandshakeError, Op, ProtocolError};
use self::handshake::Negotiated;
pub use self::uri::{NbdUri, DEFAULT_PORT};
pub use crate::proto::BlockSizes;
use crate::proto::{self, Chunk, ReplyHeader, RequestHeader};

/// Requests handed to the writer task and not yet on the wire; a caller waits for room beyond
/// this (the socket's own buffers and the server's limits bound the rest).
const OUTGOING_QUEUE: usize = 64;

/// Buffer sizes of the socket's reader and writer.
const SOCKET_BUFFER: usize = 256 * 1024;

/// How long [`Client::disconnect`] waits for the server to finish and close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket's reading half (plain TCP or inside TLS).
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The socket's writing half.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// How a [`Client`] connects.
#[derive(Clone)]
pub struct ClientOptions {
    /// The TCP connection and the whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Negotiate structured replies and `base:allocation` (needed for
    /// [`Client::block_status`]; a server without them is used without).
    pub structured_replies: bool,
    /// The TLS set-up for `nbds://` URIs (from [`tandem_pki::client_config`]); without it, an
    /// `nbds://` URI must name its credentials with `?tls-certificates=DIR`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("structured_replies", &self.structured_replies)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            handshake_timeout: Duration::from_secs(30),
            structured_replies: false,
            tls: None,
        }
    }
}

/// The TLS set-up in a directory laid out as GnuTLS clients (libnbd, qemu) expect it:
/// `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.
pub fn tls_from_directory(
    dir: &std::path::Path,
) -> Result<rustls::ClientConfig, tandem_pki::PkiError> {
    let path = dir.join("ca-cert.pem");
    let ca = std::fs::read_to_string(&path)
        .map_err(|source| tandem_pki::PkiError::File { path, source })?;
    let credential =
        tandem_pki::Credential::load(&dir.join("client-cert.pem"), &dir.join("client-key.pem"))?;
    tandem_pki::client_config(&ca, Some(&credential))
}

/// Why the connection is unusable.
#[derive(Debug, Clone)]
enum Fatal {
    Protocol(ProtocolError),
    Lost(String),
}

/// What a request's reply carries on success.
enum Answer {
    Done,
    Data(Bytes),
    /// `(length, flags)` descriptors of `base:allocation`.
    Extents(Vec<(u32, u32)>),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Answer, ClientError>>,
    /// The chunks received so far of a structured reply.
    gathered: Gathered,
}

/// The chunks of a structured reply received before its last.
#[derive(Default)]
struct Gathered {
    /// A read's data: one chunk covering the whole request, as received.
    whole: Option<Bytes>,
    /// A read's data pieced together from several chunks (zeroes where holes were).
    pieces: Option<BytesMut>,
    extents: Vec<(u32, u32)>,
    /// The first error chunk's value.
    error: Option<u32>,
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
    /// Set once the connection is unusable.
    lost: watch::Sender<bool>,
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
        self.lost.send_replace(true);
        for (_, pending) in pending {
            let _ = pending.reply.send(Err(self.error(pending.op, &fatal)));
        }
    }

    /// Fails one request taken out of the table (the reader holds it while reading its chunk).
    fn fail_one(&self, pending: Pending, fatal: &Fatal) {
        let _ = pending.reply.send(Err(self.error(pending.op, fatal)));
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
        let tls = match (&options.tls, uri.tls, &uri.tls_certificates) {
            (_, false, _) => None,
            (Some(config), true, _) => Some(Arc::clone(config)),
            (None, true, Some(dir)) => Some(Arc::new(
                tls_from_directory(std::path::Path::new(dir)).map_err(|error| {
                    handshake_error(HandshakeError::Credentials(error.to_string()))
                })?,
            )),
            (None, true, None) => {
                return Err(handshake_error(HandshakeError::Credentials(
                    "an nbds:// URI needs credentials: ?tls-certificates=DIR".to_string(),
                )))
            }
        };
        let structured = options.structured_replies;
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
            let no_zeroes = handshake::greet(&mut stream)
                .await
                .map_err(handshake_error)?;
            let Some(config) = tls else {
                let negotiated =
                    handshake::negotiate(&mut stream, &uri.export, structured, no_zeroes)
                        .await
                        .map_err(handshake_error)?;
                let (read, write) = stream.into_split();
                let halves: (ReadHalf, WriteHalf) = (Box::new(read), Box::new(write));
                return Ok::<_, ClientError>((halves, negotiated));
            };
            handshake::start_tls(&mut stream)
                .await
                .map_err(handshake_error)?;
            let name = rustls_pki_types::ServerName::try_from(uri.host.clone()).map_err(|_| {
                handshake_error(HandshakeError::Credentials(format!(
                    "{} is not a host name or address TLS can check",
                    uri.host
                )))
            })?;
            let mut stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tandem_pki::buffered(stream))
                .await
                .map_err(|error| handshake_error(HandshakeError::Tls(error)))?;
            let negotiated = handshake::negotiate(&mut stream, &uri.export, structured, no_zeroes)
                .await
                .map_err(handshake_error)?;
            let (read, write) = tokio::io::split(stream);
            let halves: (ReadHalf, WriteHalf) = (Box::new(read), Box::new(write));
            Ok((halves, negotiated))
        };
        let ((read_half, write_half), negotiated) =
            tokio::time::timeout(options.handshake_timeout, attempt)
                .await
                .map_err(|_| {
                    handshake_error(HandshakeError::TimedOut(options.handshake_timeout))
                })??;

        let shared = Arc::new(Shared {
            address: address.clone(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_cookie: 1,
                fatal: None,
                disconnecting: false,
            }),
            lost: watch::channel(false).0,
        });
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let reader = tokio::spawn(read_replies(
            Arc::clone(&shared),
            read_half,
            negotiated.structured,
        ));
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

    pub fn can_write_zeroes(&self) -> bool {
        self.has_flag(proto::FLAG_SEND_WRITE_ZEROES)
    }

    /// Structured replies were negotiated.
    pub fn structured_replies(&self) -> bool {
        self.negotiated.structured
    }

    /// The connection is unusable (lost, or closed after a protocol error): every request fails.
    pub fn is_lost(&self) -> bool {
        *self.shared.lost.borrow()
    }

    /// Completes once the connection is unusable, also with no request in flight (the server
    /// closed it, or the client broke off after a protocol error).
    pub async fn lost(&self) {
        let mut lost = self.shared.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Why the connection is unusable, if it is.
    pub fn lost_reason(&self) -> Option<String> {
        let fatal = self.shared.lock().fatal.clone()?;
        Some(match fatal {
            Fatal::Protocol(reason) => reason.to_string(),
            Fatal::Lost(reason) => reason,
        })
    }

    /// `base:allocation` was negotiated: [`Client::block_status`] can be used.
    pub fn can_block_status(&self) -> bool {
        self.negotiated.base_allocation.is_some()
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
        match self
            .submit(op, proto::CMD_READ, 0, offset, length, &[])
            .await?
        {
            Answer::Data(data) => Ok(data),
            Answer::Done | Answer::Extents(_) => Ok(Bytes::from(vec![0; length as usize])),
        }
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

    /// Makes `length` bytes at `offset` read as zeroes; with `no_hole` they stay allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), ClientError> {
        let op = Op::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        };
        self.check_range(op, offset, length)?;
        if !self.can_write_zeroes() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "the server does not support write zeroes",
            });
        }
        if fua && !self.can_fua() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "the server does not support FUA",
            });
        }
        let mut flags = if fua { proto::CMD_FLAG_FUA } else { 0 };
        if no_hole {
            flags |= proto::CMD_FLAG_NO_HOLE;
        }
        self.submit(op, proto::CMD_WRITE_ZEROES, flags, offset, length, &[])
            .await
            .map(drop)
    }

    /// The `base:allocation` status of `length` bytes at `offset`: `(length, flags)`
    /// descriptors (`proto::STATE_HOLE`, `proto::STATE_ZERO`) from `offset` on, which may
    /// describe fewer bytes than asked, or more.
    pub async fn block_status(
        &self,
        offset: u64,
        length: u32,
    ) -> Result<Vec<(u32, u32)>, ClientError> {
        let op = Op::BlockStatus { offset, length };
        self.check_range(op, offset, length)?;
        if !self.can_block_status() {
            return Err(ClientError::InvalidRequest {
                op,
                reason: "base:allocation was not negotiated",
            });
        }
        match self
            .submit(op, proto::CMD_BLOCK_STATUS, 0, offset, length, &[])
            .await?
        {
            Answer::Extents(extents) => Ok(extents),
            Answer::Done | Answer::Data(_) => Ok(Vec::new()),
        }
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
    ) -> Result<Answer, ClientError> {
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
            state.pending.insert(
                cookie,
                Pending {
                    op,
                    reply,
                    gathered: Gathered::default(),
                },
            );
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
    write_half: WriteHalf,
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
async fn read_replies(shared: Arc<Shared>, read_half: ReadHalf, structured: bool) {
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
        let outcome = match proto::decode_reply_header(&header, structured) {
            Ok(ReplyHeader::Simple { error, handle }) => {
                simple_reply(&shared, &mut socket, error, handle).await
            }
            Ok(ReplyHeader::Chunk {
                flags,
                kind,
                handle,
            }) => chunk(&shared, &mut socket, flags, kind, handle).await,
            Err(error) => Err(Fatal::Protocol(error.into())),
        };
        if let Err(fatal) = outcome {
            break fatal;
        }
    };
    shared.fail_all(fatal);
}

/// Takes request `cookie` out of the table, or says the reply is for no request.
fn take_pending(shared: &Shared, cookie: u64) -> Result<Pending, Fatal> {
    shared
        .lock()
        .pending
        .remove(&cookie)
        .ok_or(Fatal::Protocol(ProtocolError::UnknownCookie(cookie)))
}

/// A simple reply (and a good read's data), answered at once.
async fn simple_reply(
    shared: &Shared,
    socket: &mut BufReader<ReadHalf>,
    errno: u32,
    cookie: u64,
) -> Result<(), Fatal> {
    let pending = take_pending(shared, cookie)?;
    let result = match (errno, pending.op) {
        (0, Op::Read { length, .. }) => {
            let mut data = BytesMut::zeroed(length as usize);
            if let Err(error) = socket.read_exact(&mut data).await {
                let fatal = Fatal::Lost(format!("reading {length} bytes of data failed: {error}"));
                shared.fail_one(pending, &fatal);
                return Err(fatal);
            }
            Ok(Answer::Data(data.freeze()))
        }
        (0, _) => Ok(Answer::Done),
        (errno, op) => Err(ClientError::Server { op, errno }),
    };
    // The caller may have given up (a timeout); the reply is then dropped.
    let _ = pending.reply.send(result);
    Ok(())
}

/// One chunk of a structured reply: gathered into its request, which is answered with the chunk
/// flagged `DONE`.
async fn chunk(
    shared: &Shared,
    socket: &mut BufReader<ReadHalf>,
    flags: u16,
    kind: u16,
    cookie: u64,
) -> Result<(), Fatal> {
    let mut length = [0u8; 4];
    socket
        .read_exact(&mut length)
        .await
        .map_err(|error| Fatal::Lost(format!("reading a reply chunk failed: {error}")))?;
    let length = proto::decode_chunk_length(&length).map_err(|e| Fatal::Protocol(e.into()))?;
    let mut pending = take_pending(shared, cookie)?;
    let mut payload = BytesMut::zeroed(length as usize);
    if let Err(error) = socket.read_exact(&mut payload).await {
        let fatal = Fatal::Lost(format!(
            "reading a reply chunk of {length} bytes failed: {error}"
        ));
        shared.fail_one(pending, &fatal);
        return Err(fatal);
    }
    let payload = payload.freeze();
    let gathered = proto::decode_chunk(kind, &payload)
        .map_err(ProtocolError::from)
        .and_then(|decoded| gather(&mut pending, decoded, cookie, &payload));
    if let Err(reason) = gathered {
        let fatal = Fatal::Protocol(reason);
        shared.fail_one(pending, &fatal);
        return Err(fatal);
    }
    if flags & proto::REPLY_FLAG_DONE == 0 {
        shared.lock().pending.insert(cookie, pending);
        return Ok(());
    }
    let Pending {
        op,
        reply,
        gathered,
    } = pending;
    let result = match (gathered.error, op) {
        (Some(errno), op) => Err(ClientError::Server { op, errno }),
        (None, Op::Read { length, .. }) => Ok(Answer::Data(match gathered {
            Gathered {
                whole: Some(data), ..
            } => data,
            Gathered {
                pieces: Some(data), ..
            } => data.freeze(),
            _ => Bytes::from(vec![0; length as usize]),
        })),
        (None, Op::BlockStatus { .. }) => Ok(Answer::Extents(gathered.extents)),
        (None, _) => Ok(Answer::Done),
    };
    let _ = reply.send(result);
    Ok(())
}

/// Adds one decoded chunk to its request. `raw` is the chunk's payload (a read's data is taken
/// from it without a copy when one chunk covers the whole request).
fn gather(
    pending: &mut Pending,
    chunk: Chunk<'_>,
    cookie: u64,
    raw: &Bytes,
) -> Result<(), ProtocolError> {
    let unexpected = Err(ProtocolError::UnexpectedChunk {
        cookie,
        op: pending.op,
    });
    let gathered = &mut pending.gathered;
    match (chunk, pending.op) {
        (Chunk::None | Chunk::Unknown(_), _) => Ok(()),
        (Chunk::Error { error, .. }, _) => {
            gathered.error.get_or_insert(error);
            Ok(())
        }
        (
            Chunk::Data { offset, data },
            Op::Read {
                offset: start,
                length,
            },
        ) => {
            let at = within(start, length, offset, data.len(), cookie)?;
            if at == 0 && data.len() == length as usize && gathered.pieces.is_none() {
                gathered.whole = Some(raw.slice(8..));
                return Ok(());
            }
            let pieces = pieces(gathered, length);
            pieces[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        (
            Chunk::Hole {
                offset,
                length: hole,
            },
            Op::Read {
                offset: start,
                length,
            },
        ) => {
            let at = within(start, length, offset, hole as usize, cookie)?;
            let pieces = pieces(gathered, length);
            pieces[at..at + hole as usize].fill(0);
            Ok(())
        }
        (Chunk::BlockStatus { descriptors, .. }, Op::BlockStatus { .. }) => {
            gathered.extents.extend(descriptors);
            Ok(())
        }
        _ => unexpected,
    }
}

/// Where a chunk of `len` bytes at `offset` starts in the request's data, if it lies inside.
fn within(
    start: u64,
    length: u32,
    offset: u64,
    len: usize,
    cookie: u64,
) -> Result<usize, ProtocolError> {
    let end = offset.checked_add(len as u64);
    match (offset.checked_sub(start), end) {
        (Some(at), Some(end)) if end <= start + u64::from(length) => Ok(at as usize),
        _ => Err(ProtocolError::ChunkOutOfRange { cookie, offset }),
    }
}

/// The read's data pieced together so far (zeroes until chunks arrive).
fn pieces(gathered: &mut Gathered, length: u32) -> &mut BytesMut {
    gathered.pieces.get_or_insert_with(|| {
        let mut pieces = BytesMut::zeroed(length as usize);
        if let Some(whole) = gathered.whole.take() {
            pieces.copy_from_slice(&whole);
        }
        pieces
    })
}
