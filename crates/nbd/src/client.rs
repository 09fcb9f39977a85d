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
//! Encoding reuses [`crate::proto`] (options, request headers); the few things only a client
//! decodes (the greeting, option replies, `NBD_REP_INFO`, simple reply headers, the
//! `EXPORT_NAME` reply) are pure functions here, tested against `proto`'s server-side encoders.
//!
//! There is no timeout per request: wrap a call in `tokio::time::timeout` to bound it. The
//! handshake is bounded by [`ClientOptions::handshake_timeout`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::proto::{self, ClientOption, InfoRequest, RequestHeader};

/// The NBD port when a URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// Requests handed to the writer task and not yet on the wire; a caller waits for room beyond
/// this (the socket's own buffers and the server's limits bound the rest).
const OUTGOING_QUEUE: usize = 64;

/// Buffer sizes of the socket's reader and writer.
const SOCKET_BUFFER: usize = 256 * 1024;

/// The longest option reply accepted during the handshake (a name, a description and a few
/// numbers are all this client asks for).
const MAX_OPTION_REPLY: u32 = 64 * 1024;

/// How long [`Client::disconnect`] waits for the server to finish and close.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

// ---- URIs -----------------------------------------------------------------------------------

/// A parsed `nbd://host[:port]/export` URI (the NBD URI specification's TCP form, no TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// The export name, percent-decoded; empty for the server's default export.
    pub export: String,
}

impl NbdUri {
    /// Parses `nbd://host[:port][/export]`. The export name may be percent-encoded; user
    /// information, queries, fragments and the other schemes (`nbds`, `nbd+unix`, ...) are
    /// refused with a message saying so.
    pub fn parse(uri: &str) -> Result<NbdUri, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| invalid("expected nbd://host[:port]/export"))?;
        if !scheme.eq_ignore_ascii_case("nbd") {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported (only nbd://, TCP without TLS)"
            )));
        }
        if rest.contains(['?', '#']) {
            return Err(invalid("queries and fragments are not supported"));
        }
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid("user information is not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address is missing its closing ']'"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("expected ':port' after the IPv6 address"))?,
                ),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid(&format!("port {port:?} is not a port number"))),
            },
        };
        let export = percent_decode(path).map_err(invalid)?;
        proto::decode_string(export.as_bytes())
            .map_err(|reason| invalid(&format!("export name: {reason}")))?;
        Ok(NbdUri {
            host: host.to_string(),
            port,
            export,
        })
    }

    /// `host:port`, with brackets around an IPv6 address, as `TcpStream::connect` takes it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NbdUri {
    type Err = ClientError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        NbdUri::parse(uri)
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nbd://{}/", self.address())?;
        for byte in self.export.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte) {
                write!(f, "{}", byte as char)?;
            } else {
                write!(f, "%{byte:02X}")?;
            }
        }
        Ok(())
    }
}

fn percent_decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a '%' in the export name is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the export name is not UTF-8")
}

// ---- Errors -------------------------------------------------------------------------------

/// One request, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read { offset: u64, length: u32 },
    Write { offset: u64, length: u32, fua: bool },
    Flush,
    Trim { offset: u64, length: u32 },
    Disconnect,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Read { offset, length } => write!(f, "read of {length} bytes at offset {offset}"),
            Op::Write {
                offset,
                length,
                fua,
            } => write!(
                f,
                "write of {length} bytes at offset {offset}{}",
                if fua { " (FUA)" } else { "" }
            ),
            Op::Flush => f.write_str("flush"),
            Op::Trim { offset, length } => write!(f, "trim of {length} bytes at offset {offset}"),
            Op::Disconnect => f.write_str("disconnect"),
        }
    }
}

/// The name of an NBD error value (`EIO`...), `None` for a value the protocol does not define.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        proto::EPERM => "EPERM",
        proto::EIO => "EIO",
        proto::ENOMEM => "ENOMEM",
        proto::EINVAL => "EINVAL",
        proto::ENOSPC => "ENOSPC",
        proto::EOVERFLOW => "EOVERFLOW",
        proto::ENOTSUP => "ENOTSUP",
        proto::ESHUTDOWN => "ESHUTDOWN",
        _ => return None,
    })
}

/// "EIO (5)", or "unknown error value 42".
fn describe_errno(errno: u32) -> String {
    match errno_name(errno) {
        Some(name) => format!("{name} ({errno})"),
        None => format!("unknown error value {errno}"),
    }
}

/// The name of an option reply error type (`NBD_REP_ERR_UNKNOWN`...).
fn rep_error_name(reply_type: u32) -> String {
    let name = match reply_type {
        proto::REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        proto::REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        proto::REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        proto::REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        proto::REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        proto::REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        proto::REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        proto::REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        proto::REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        other => return format!("option error {other:#x}"),
    };
    name.to_string()
}

/// Why a connection or a request failed; each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URI is not `nbd://host[:port]/export`.
    #[error("invalid NBD URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// The TCP connection could not be made.
    #[error("cannot connect to the NBD server at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    /// The server is not a fixed-newstyle NBD server, refused the export, broke the handshake
    /// protocol, or took too long.
    #[error("NBD handshake with {address} for export {export:?} failed: {reason}")]
    Handshake {
        address: String,
        export: String,
        reason: String,
    },
    /// The server answered a request with an error value.
    #[error("NBD {op} failed: the server answered {}", describe_errno(*.errno))]
    Server { op: Op, errno: u32 },
    /// The server sent something this client cannot follow; the connection is closed.
    #[error("NBD protocol error from {address}: {reason}")]
    Protocol { address: String, reason: String },
    /// The connection ended (or had ended) before the request was answered.
    #[error("NBD {op} failed: the connection to {address} is lost: {reason}")]
    Disconnected {
        op: Op,
        address: String,
        reason: String,
    },
    /// The request cannot be sent on this export (beyond its end, too long, not advertised).
    #[error("NBD {op} not sent: {reason}")]
    InvalidRequest { op: Op, reason: &'static str },
}

impl ClientError {
    /// The server's error value, for [`ClientError::Server`].
    pub fn errno(&self) -> Option<u32> {
        match self {
            ClientError::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the connection is unusable (lost, or closed after a protocol error): a new
    /// [`Client`] is needed to go on.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Disconnected { .. } | ClientError::Protocol { .. }
        )
    }
}

// ---- Pure decoders for what only a client reads ----------------------------------------------

/// The server greeting's handshake flags, or why it is not a fixed-newstyle greeting.
fn decode_greeting(buf: &[u8; proto::GREETING_LEN]) -> Result<u16, String> {
    let magic = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
    if magic != proto::NBDMAGIC {
        return Err(format!("not an NBD server (greeting magic {magic:#x})"));
    }
    let second = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    if second != proto::IHAVEOPT {
        return Err(format!(
            "the server speaks the old-style protocol (magic {second:#x}); only newstyle is \
             supported"
        ));
    }
    let flags = u16::from_be_bytes([buf[16], buf[17]]);
    if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err("the server does not speak fixed newstyle".to_string());
    }
    Ok(flags)
}

/// An option reply's header: (option, reply type, data length).
fn decode_option_reply_header(buf: &[u8; 20]) -> Result<(u32, u32, u32), String> {
    let magic = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
    if magic != proto::OPTION_REPLY_MAGIC {
        return Err(format!("bad option reply magic {magic:#x}"));
    }
    let option = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    let reply_type = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes"));
    let length = u32::from_be_bytes(buf[16..20].try_into().expect("4 bytes"));
    if length > MAX_OPTION_REPLY {
        return Err(format!(
            "option reply of {length} bytes exceeds {MAX_OPTION_REPLY}"
        ));
    }
    Ok((option, reply_type, length))
}

/// The block size constraints the server sent (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// The `NBD_REP_INFO` items this client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InfoItem {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize(BlockSizes),
    /// Names, descriptions and anything newer.
    Other,
}

fn decode_info(data: &[u8]) -> Result<InfoItem, String> {
    if data.len() < 2 {
        return Err("NBD_REP_INFO shorter than its type".to_string());
    }
    let info_type = u16::from_be_bytes([data[0], data[1]]);
    let body = &data[2..];
    let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    match info_type {
        proto::INFO_EXPORT if body.len() == 10 => Ok(InfoItem::Export {
            size: u64::from_be_bytes(body[0..8].try_into().expect("8 bytes")),
            flags: u16::from_be_bytes([body[8], body[9]]),
        }),
        proto::INFO_BLOCK_SIZE if body.len() == 12 => Ok(InfoItem::BlockSize(BlockSizes {
            minimum: u32_at(0),
            preferred: u32_at(4),
            maximum: u32_at(8),
        })),
        proto::INFO_EXPORT | proto::INFO_BLOCK_SIZE => Err(format!(
            "NBD_REP_INFO type {info_type} has {} bytes",
            data.len()
        )),
        _ => Ok(InfoItem::Other),
    }
}

/// The reply to `NBD_OPT_EXPORT_NAME` (its length is 10, or 134 without `NO_ZEROES`): size
/// and transmission flags.
fn decode_export_name_reply(buf: &[u8]) -> Result<(u64, u16), String> {
    if buf.len() < 10 {
        return Err(format!("export name reply of {} bytes", buf.len()));
    }
    Ok((
        u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes")),
        u16::from_be_bytes([buf[8], buf[9]]),
    ))
}

/// A simple reply header: (error value, cookie), or why it is not one.
fn decode_simple_reply(buf: &[u8; proto::SIMPLE_REPLY_LEN]) -> Result<(u32, u64), String> {
    let magic = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
    match magic {
        proto::SIMPLE_REPLY_MAGIC => Ok((
            u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")),
            u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes")),
        )),
        proto::STRUCTURED_REPLY_MAGIC => {
            Err("a structured reply chunk, but structured replies were not negotiated".into())
        }
        other => Err(format!("bad reply magic {other:#x}")),
    }
}

// ---- The client -----------------------------------------------------------------------------

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

/// What the handshake settled.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    size: u64,
    flags: u16,
    block_sizes: Option<BlockSizes>,
}

/// Why the connection is unusable.
#[derive(Debug, Clone)]
enum Fatal {
    Protocol(String),
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
                reason: reason.clone(),
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
        let handshake_error = |reason: String| ClientError::Handshake {
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
            let negotiated = handshake(&mut stream, &uri.export)
                .await
                .map_err(handshake_error)?;
            Ok::<_, ClientError>((stream, negotiated))
        };
        let (stream, negotiated) = tokio::time::timeout(options.handshake_timeout, attempt)
            .await
            .map_err(|_| {
                handshake_error(format!(
                    "no answer within {:?} (connection and handshake)",
                    options.handshake_timeout
                ))
            })??;

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

/// Greeting, flags, then `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` if the server does not know
/// `GO`). Errors are the reason, for [`ClientError::Handshake`].
async fn handshake(stream: &mut TcpStream, export: &str) -> Result<Negotiated, String> {
    let io = |what: &'static str| move |error: io::Error| format!("{what}: {error}");
    let mut greeting = [0u8; proto::GREETING_LEN];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(io("reading the greeting"))?;
    let server_flags = decode_greeting(&greeting)?;
    let no_zeroes = server_flags & proto::FLAG_NO_ZEROES != 0;
    let client_flags = proto::FLAG_C_FIXED_NEWSTYLE
        | if no_zeroes {
            proto::FLAG_C_NO_ZEROES
        } else {
            0
        };

    let mut out = BytesMut::new();
    out.put_u32(client_flags);
    ClientOption::Go(InfoRequest {
        name: export.to_string(),
        requests: vec![proto::INFO_BLOCK_SIZE],
    })
    .encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(io("sending NBD_OPT_GO"))?;

    let mut export_info = None;
    let mut block_sizes = None;
    loop {
        let mut header = [0u8; 20];
        stream
            .read_exact(&mut header)
            .await
            .map_err(io("reading the reply to NBD_OPT_GO"))?;
        let (option, reply_type, length) = decode_option_reply_header(&header)?;
        let mut data = vec![0u8; length as usize];
        stream
            .read_exact(&mut data)
            .await
            .map_err(io("reading the reply to NBD_OPT_GO"))?;
        if option != proto::OPT_GO {
            return Err(format!(
                "a reply to option {option} while waiting for NBD_OPT_GO"
            ));
        }
        match reply_type {
            proto::REP_INFO => match decode_info(&data)? {
                InfoItem::Export { size, flags } => export_info = Some((size, flags)),
                InfoItem::BlockSize(sizes) => block_sizes = Some(sizes),
                InfoItem::Other => {}
            },
            proto::REP_ACK => {
                let (size, flags) =
                    export_info.ok_or("the server accepted NBD_OPT_GO without NBD_INFO_EXPORT")?;
                return Ok(Negotiated {
                    size,
                    flags,
                    block_sizes,
                });
            }
            proto::REP_ERR_UNSUP => return export_name(stream, export, no_zeroes).await,
            error if error & proto::REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data);
                let what = if error == proto::REP_ERR_UNKNOWN {
                    format!("the server has no export named {export:?}")
                } else {
                    "the server refused the export".to_string()
                };
                return Err(format!(
                    "{what} ({}{}{message})",
                    rep_error_name(error),
                    if message.is_empty() { "" } else { ": " }
                ));
            }
            // Reply types this client does not know are skipped, as the spec allows.
            _ => {}
        }
    }
}

/// The old way in: `NBD_OPT_EXPORT_NAME`, answered with size and flags, or a closed connection
/// when there is no such export.
async fn export_name(
    stream: &mut TcpStream,
    export: &str,
    no_zeroes: bool,
) -> Result<Negotiated, String> {
    let mut out = BytesMut::new();
    ClientOption::ExportName(export.to_string()).encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| format!("sending NBD_OPT_EXPORT_NAME: {error}"))?;
    let mut reply = vec![0u8; if no_zeroes { 10 } else { 10 + 124 }];
    stream.read_exact(&mut reply).await.map_err(|error| {
        format!(
            "the server does not know NBD_OPT_GO and closed the connection after \
             NBD_OPT_EXPORT_NAME (is there an export named {export:?}?): {error}"
        )
    })?;
    let (size, flags) = decode_export_name_reply(&reply)?;
    Ok(Negotiated {
        size,
        flags,
        block_sizes: None,
    })
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
        let (errno, cookie) = match decode_simple_reply(&header) {
            Ok(decoded) => decoded,
            Err(reason) => break Fatal::Protocol(reason),
        };
        let Some(pending) = shared.lock().pending.remove(&cookie) else {
            break Fatal::Protocol(format!(
                "a reply for cookie {cookie}, which is not in flight"
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let uri = NbdUri::parse("nbd://127.0.0.1:10900/vol1").unwrap();
        assert_eq!(
            uri,
            NbdUri {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "vol1".into()
            }
        );
        assert_eq!(uri.address(), "127.0.0.1:10900");
        assert_eq!(uri.to_string(), "nbd://127.0.0.1:10900/vol1");

        let uri = NbdUri::parse("NBD://example.com").unwrap();
        assert_eq!((uri.port, uri.export.as_str()), (DEFAULT_PORT, ""));
        let uri = NbdUri::parse("nbd://[::1]:99/a%20b/c").unwrap();
        assert_eq!(uri.host, "::1");
        assert_eq!(uri.export, "a b/c");
        assert_eq!(uri.address(), "[::1]:99");
        assert_eq!(uri.to_string(), "nbd://[::1]:99/a%20b/c");
        assert_eq!("nbd://h:1/x".parse::<NbdUri>().unwrap().export, "x");

        for (bad, says) in [
            ("127.0.0.1:10809/x", "expected nbd://"),
            ("nbds://h/x", "scheme \"nbds\""),
            ("nbd+unix:///x?socket=/s", "scheme"),
            ("nbd://h/x?tls=on", "queries"),
            ("nbd://u@h/x", "user information"),
            ("nbd:///x", "host is missing"),
            ("nbd://h:0/x", "port \"0\""),
            ("nbd://h:99999/x", "port"),
            ("nbd://[::1/x", "closing ']'"),
            ("nbd://h/%zz", "two hex digits"),
            ("nbd://h/%ff", "not UTF-8"),
            ("nbd://h/a%00", "NUL"),
        ] {
            let error = NbdUri::parse(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn greeting_decodes_and_refuses() {
        let mut b = BytesMut::new();
        proto::encode_greeting(&mut b);
        let greeting: [u8; proto::GREETING_LEN] = b[..].try_into().unwrap();
        let flags = decode_greeting(&greeting).unwrap();
        assert_eq!(flags, proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES);

        let mut old = greeting;
        old[8..16].copy_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        assert!(decode_greeting(&old).unwrap_err().contains("old-style"));
        let mut not_nbd = greeting;
        not_nbd[0] = b'X';
        assert!(decode_greeting(&not_nbd)
            .unwrap_err()
            .contains("not an NBD"));
        let mut unfixed = greeting;
        unfixed[17] = 0;
        assert!(decode_greeting(&unfixed)
            .unwrap_err()
            .contains("fixed newstyle"));
    }

    #[test]
    fn option_replies_decode() {
        let mut b = BytesMut::new();
        proto::encode_rep_info(
            &mut b,
            proto::OPT_GO,
            &proto::Info::Export {
                size: 1 << 30,
                flags: 0x1ed,
            },
        );
        let header: [u8; 20] = b[..20].try_into().unwrap();
        assert_eq!(
            decode_option_reply_header(&header),
            Ok((proto::OPT_GO, proto::REP_INFO, 12))
        );
        assert_eq!(
            decode_info(&b[20..]),
            Ok(InfoItem::Export {
                size: 1 << 30,
                flags: 0x1ed
            })
        );

        let mut b = BytesMut::new();
        proto::encode_rep_info(
            &mut b,
            proto::OPT_GO,
            &proto::Info::BlockSize {
                min: 512,
                preferred: 4096,
                max: 1 << 25,
            },
        );
        assert_eq!(
            decode_info(&b[20..]),
            Ok(InfoItem::BlockSize(BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 1 << 25
            }))
        );
        let mut b = BytesMut::new();
        proto::encode_rep_info(&mut b, proto::OPT_GO, &proto::Info::Name("disk"));
        assert_eq!(decode_info(&b[20..]), Ok(InfoItem::Other));
        assert!(decode_info(&[0, 0, 1]).is_err());
        assert!(decode_info(&[0]).is_err());

        let mut b = BytesMut::new();
        proto::encode_option_reply(&mut b, proto::OPT_GO, proto::REP_ERR_UNKNOWN, b"no");
        let mut header: [u8; 20] = b[..20].try_into().unwrap();
        assert_eq!(
            decode_option_reply_header(&header),
            Ok((proto::OPT_GO, proto::REP_ERR_UNKNOWN, 2))
        );
        assert_eq!(
            rep_error_name(proto::REP_ERR_UNKNOWN),
            "NBD_REP_ERR_UNKNOWN"
        );
        header[16..20].copy_from_slice(&(MAX_OPTION_REPLY + 1).to_be_bytes());
        assert!(decode_option_reply_header(&header).is_err());
        header[0] ^= 1;
        assert!(decode_option_reply_header(&header)
            .unwrap_err()
            .contains("magic"));

        for no_zeroes in [true, false] {
            let mut b = BytesMut::new();
            proto::encode_export_name_reply(&mut b, 4096, 3, no_zeroes);
            assert_eq!(decode_export_name_reply(&b), Ok((4096, 3)));
        }
        assert!(decode_export_name_reply(&[0; 9]).is_err());
    }

    #[test]
    fn simple_replies_decode() {
        let mut b = BytesMut::new();
        proto::encode_simple_reply(&mut b, proto::EIO, 77);
        let header: [u8; proto::SIMPLE_REPLY_LEN] = b[..].try_into().unwrap();
        assert_eq!(decode_simple_reply(&header), Ok((proto::EIO, 77)));

        let mut b = BytesMut::new();
        proto::encode_none_chunk(&mut b, 77);
        let header: [u8; proto::SIMPLE_REPLY_LEN] = b[..16].try_into().unwrap();
        assert!(decode_simple_reply(&header)
            .unwrap_err()
            .contains("structured"));
        assert!(decode_simple_reply(&[0; 16]).unwrap_err().contains("magic"));
    }

    #[test]
    fn errors_name_what_failed() {
        let error = ClientError::Server {
            op: Op::Write {
                offset: 4096,
                length: 512,
                fua: true,
            },
            errno: proto::ENOSPC,
        };
        assert_eq!(
            error.to_string(),
            "NBD write of 512 bytes at offset 4096 (FUA) failed: the server answered ENOSPC (28)"
        );
        assert_eq!(error.errno(), Some(proto::ENOSPC));
        assert!(!error.is_connection_lost());
        let error = ClientError::Server {
            op: Op::Flush,
            errno: 99,
        };
        assert!(error.to_string().ends_with("unknown error value 99"));
        assert_eq!(errno_name(proto::EIO), Some("EIO"));
        assert_eq!(errno_name(99), None);
    }
}
