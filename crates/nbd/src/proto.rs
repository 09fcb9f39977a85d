//! The NBD wire protocol: constants, and pure encoders and decoders over byte slices.
//!
//! Nothing here does I/O, so every function can be unit tested and fuzzed. The layouts follow
//! the NetworkBlockDevice `doc/proto.md`; all integers are big-endian.
//!
//! ```text
//! server greeting   NBDMAGIC u64 | IHAVEOPT u64 | handshake flags u16
//! client flags      u32
//! option            IHAVEOPT u64 | option u32 | length u32 | data[length]
//! option reply      REPLY_MAGIC u64 | option u32 | reply type u32 | length u32 | data[length]
//! request (28 B)    REQUEST_MAGIC u32 | flags u16 | type u16 | handle u64 | offset u64 | length u32
//!                   (+ length bytes of data for NBD_CMD_WRITE)
//! simple reply      SIMPLE_REPLY_MAGIC u32 | error u32 | handle u64 (+ data for a good READ)
//! reply chunk       STRUCTURED_REPLY_MAGIC u32 | flags u16 | type u16 | handle u64 | length u32
//!                   | payload[length]
//! ```

use bytes::{BufMut, BytesMut};

use tandem_block::{ExportInfo, Extent, IoError};

// ---- Magic numbers ------------------------------------------------------------------------

/// `NBDMAGIC`, the first thing the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: sent by the server after `NBDMAGIC`, and by the client before every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ---- Handshake flags ----------------------------------------------------------------------

/// `NBD_FLAG_FIXED_NEWSTYLE` (server handshake flag).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// `NBD_FLAG_NO_ZEROES` (server handshake flag).
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// `NBD_FLAG_C_FIXED_NEWSTYLE` (client flag).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// `NBD_FLAG_C_NO_ZEROES` (client flag).
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---- Transmission flags -------------------------------------------------------------------

pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---- Options ------------------------------------------------------------------------------

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// ---- Option reply types -------------------------------------------------------------------

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// ---- NBD_REP_INFO types -------------------------------------------------------------------

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---- Commands and command flags -----------------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// ---- Structured replies -------------------------------------------------------------------

pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

// ---- Error values -------------------------------------------------------------------------

pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The protocol's error value for a device error.
pub fn error_value(error: IoError) -> u32 {
    match error {
        IoError::NotPermitted => EPERM,
        IoError::Io => EIO,
        IoError::NoMemory => ENOMEM,
        IoError::Invalid => EINVAL,
        IoError::NoSpace => ENOSPC,
        IoError::Overflow => EOVERFLOW,
        IoError::NotSupported => ENOTSUP,
        IoError::Shutdown => ESHUTDOWN,
    }
}

/// The device error for a protocol error value. Unknown values are `Invalid`, as the spec tells
/// clients to treat them.
pub fn io_error(value: u32) -> IoError {
    match value {
        EPERM => IoError::NotPermitted,
        EIO => IoError::Io,
        ENOMEM => IoError::NoMemory,
        ENOSPC => IoError::NoSpace,
        EOVERFLOW => IoError::Overflow,
        ENOTSUP => IoError::NotSupported,
        ESHUTDOWN => IoError::Shutdown,
        _ => IoError::Invalid,
    }
}

// ---- base:allocation ----------------------------------------------------------------------

pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
/// The only metadata context this server knows.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// The `base:allocation` status flags of a device's extent.
pub fn extent_status(extent: &Extent) -> u32 {
    let mut flags = 0;
    if extent.hole {
        flags |= STATE_HOLE;
    }
    if extent.zero {
        flags |= STATE_ZERO;
    }
    flags
}

// ---- Sizes and limits ---------------------------------------------------------------------

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// The longest string (export name, description, query, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// The longest option data the server accepts; longer options close the connection without
/// the data being read (legitimate options are a few strings of at most 4 KiB each).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The largest read or write payload (2^25 bytes), and so the largest advertised maximum block
/// size. A write announcing more is answered `EINVAL` and closes the connection, since its
/// payload cannot be skipped safely.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// The metadata context id this server gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The maximum block size the server advertises and enforces for a device: its `max_block`
/// capped at [`MAX_PAYLOAD`] and kept a multiple of `min_block`.
pub fn effective_max_block(info: &ExportInfo) -> u32 {
    let capped = info.max_block.min(MAX_PAYLOAD);
    capped - capped % info.min_block.max(1)
}

/// A frame that cannot be decoded at all: the connection cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed-size header needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The magic number is wrong: the stream is out of step or not NBD.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// The option's data is longer than [`MAX_OPTION_LEN`].
    #[error("option length {0} exceeds the limit")]
    OptionTooLong(u32),
    /// The client set flags it must not set.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
}

fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(DecodeError::Truncated {
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

// ---- Handshake ----------------------------------------------------------------------------

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, and the handshake flags (fixed newstyle,
/// no zeroes).
pub fn encode_greeting(buf: &mut BytesMut) {
    buf.put_u64(NBDMAGIC);
    buf.put_u64(IHAVEOPT);
    buf.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
}

/// The client flags the client sent after the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Decodes the client flags. Any flag other than the two the server advertised is refused (the
/// spec says the server MUST drop the connection).
pub fn decode_client_flags(buf: &[u8]) -> Result<ClientFlags, DecodeError> {
    need(buf, 4)?;
    let flags = be_u32(buf, 0);
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(DecodeError::BadClientFlags(flags));
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & FLAG_C_NO_ZEROES != 0,
    })
}

/// An option's header: which option, and how many bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

/// Decodes an option header, checking the magic and the length limit.
pub fn decode_option_header(buf: &[u8]) -> Result<OptionHeader, DecodeError> {
    need(buf, OPTION_HEADER_LEN)?;
    let magic = be_u64(buf, 0);
    if magic != IHAVEOPT {
        return Err(DecodeError::BadMagic(magic));
    }
    let header = OptionHeader {
        option: be_u32(buf, 8),
        length: be_u32(buf, 12),
    };
    if header.length > MAX_OPTION_LEN {
        return Err(DecodeError::OptionTooLong(header.length));
    }
    Ok(header)
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    /// The `NBD_INFO_*` items the client asked for, in its order.
    pub requests: Vec<u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// A decoded option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    /// An option this server does not implement (answered `NBD_REP_ERR_UNSUP`).
    Unknown(u32),
}

/// A known option whose data is malformed: answered `NBD_REP_ERR_INVALID` (except
/// `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error and closes the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid option {option}: {reason}")]
pub struct OptionError {
    pub option: u32,
    pub reason: &'static str,
}

/// Checks a protocol string: UTF-8, no NUL, at most [`MAX_STRING_LEN`] bytes.
pub fn decode_string(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > MAX_STRING_LEN {
        return Err("string longer than 4096 bytes");
    }
    if bytes.contains(&0) {
        return Err("string contains NUL");
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err("string is not UTF-8"),
    }
}

/// A cursor over option data that never reads past the end.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("option data ends inside a field");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        self.take(2).map(|b| be_u16(b, 0))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        self.take(4).map(|b| be_u32(b, 0))
    }

    /// A string prefixed by its 32-bit length.
    fn string32(&mut self) -> Result<String, &'static str> {
        let len = self.u32()? as usize;
        if len > MAX_STRING_LEN {
            return Err("string longer than 4096 bytes");
        }
        decode_string(self.take(len)?)
    }

    fn finish(&self) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the option's fields")
        }
    }
}

/// Decodes the data of option `option`. Unknown options decode to [`ClientOption::Unknown`]
/// whatever their data.
pub fn decode_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    let invalid = |reason| OptionError { option, reason };
    let mut c = Cursor { buf: data };
    match option {
        OPT_EXPORT_NAME => decode_string(data)
            .map(ClientOption::ExportName)
            .map_err(invalid),
        // The spec: a server SHOULD ignore data sent with NBD_OPT_ABORT.
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST if data.is_empty() => Ok(ClientOption::List),
        OPT_LIST => Err(invalid("NBD_OPT_LIST takes no data")),
        OPT_STARTTLS => Ok(ClientOption::StartTls),
        OPT_INFO | OPT_GO => {
            let req = decode_info_request(&mut c).map_err(invalid)?;
            Ok(if option == OPT_INFO {
                ClientOption::Info(req)
            } else {
                ClientOption::Go(req)
            })
        }
        OPT_STRUCTURED_REPLY if data.is_empty() => Ok(ClientOption::StructuredReply),
        OPT_STRUCTURED_REPLY => Err(invalid("NBD_OPT_STRUCTURED_REPLY takes no data")),
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let req = decode_meta_context_request(&mut c).map_err(invalid)?;
            Ok(if option == OPT_LIST_META_CONTEXT {
                ClientOption::ListMetaContext(req)
            } else {
                ClientOption::SetMetaContext(req)
            })
        }
        other => Ok(ClientOption::Unknown(other)),
    }
}

fn decode_info_request(c: &mut Cursor<'_>) -> Result<InfoRequest, &'static str> {
    let name = c.string32()?;
    let count = c.u16()?;
    // Each item is two bytes, so the data already bounds the allocation.
    if c.buf.len() != usize::from(count) * 2 {
        return Err("information request count does not match the option length");
    }
    let mut requests = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        requests.push(c.u16()?);
    }
    c.finish()?;
    Ok(InfoRequest { name, requests })
}

fn decode_meta_context_request(c: &mut Cursor<'_>) -> Result<MetaContextRequest, &'static str> {
    let export = c.string32()?;
    let count = c.u32()?;
    // Each query takes at least its 4-byte length: refuse counts the data cannot hold before
    // looping, and never pre-allocate from the count.
    if u64::from(count) * 4 > c.buf.len() as u64 {
        return Err("query count exceeds the option length");
    }
    let mut queries = Vec::new();
    for _ in 0..count {
        queries.push(c.string32()?);
    }
    c.finish()?;
    Ok(MetaContextRequest { export, queries })
}

fn put_string32(buf: &mut BytesMut, s: &str) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

impl ClientOption {
    /// The option number.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => OPT_EXPORT_NAME,
            ClientOption::Abort => OPT_ABORT,
            ClientOption::List => OPT_LIST,
            ClientOption::StartTls => OPT_STARTTLS,
            ClientOption::Info(_) => OPT_INFO,
            ClientOption::Go(_) => OPT_GO,
            ClientOption::StructuredReply => OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => OPT_SET_META_CONTEXT,
            ClientOption::Unknown(code) => *code,
        }
    }

    /// Encodes the option as a client sends it (header and data). For tests and fuzzing; an
    /// `Unknown` option is sent with no data.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut data = BytesMut::new();
        match self {
            ClientOption::ExportName(name) => data.put_slice(name.as_bytes()),
            ClientOption::Info(req) | ClientOption::Go(req) => {
                put_string32(&mut data, &req.name);
                data.put_u16(req.requests.len() as u16);
                for r in &req.requests {
                    data.put_u16(*r);
                }
            }
            ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                put_string32(&mut data, &req.export);
                data.put_u32(req.queries.len() as u32);
                for q in &req.queries {
                    put_string32(&mut data, q);
                }
            }
            ClientOption::Abort
            | ClientOption::List
            | ClientOption::StartTls
            | ClientOption::StructuredReply
            | ClientOption::Unknown(_) => {}
        }
        buf.put_u64(IHAVEOPT);
        buf.put_u32(self.code());
        buf.put_u32(data.len() as u32);
        buf.put_slice(&data);
    }
}

/// Appends an option reply.
pub fn encode_option_reply(buf: &mut BytesMut, option: u32, reply_type: u32, data: &[u8]) {
    buf.put_u64(OPTION_REPLY_MAGIC);
    buf.put_u32(option);
    buf.put_u32(reply_type);
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
}

/// Appends an `NBD_REP_SERVER` reply for `NBD_OPT_LIST`.
pub fn encode_rep_server(buf: &mut BytesMut, name: &str, description: &str) {
    let mut data = BytesMut::with_capacity(4 + name.len() + description.len());
    put_string32(&mut data, name);
    data.put_slice(description.as_bytes());
    encode_option_reply(buf, OPT_LIST, REP_SERVER, &data);
}

/// Appends an `NBD_REP_META_CONTEXT` reply.
pub fn encode_rep_meta_context(buf: &mut BytesMut, option: u32, id: u32, name: &str) {
    let mut data = BytesMut::with_capacity(4 + name.len());
    data.put_u32(id);
    data.put_slice(name.as_bytes());
    encode_option_reply(buf, option, REP_META_CONTEXT, &data);
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a str),
    Description(&'a str),
    BlockSize { min: u32, preferred: u32, max: u32 },
}

/// Appends an `NBD_REP_INFO` reply to `option` (`NBD_OPT_INFO` or `NBD_OPT_GO`).
pub fn encode_rep_info(buf: &mut BytesMut, option: u32, info: &Info<'_>) {
    let mut data = BytesMut::with_capacity(16);
    match info {
        Info::Export { size, flags } => {
            data.put_u16(INFO_EXPORT);
            data.put_u64(*size);
            data.put_u16(*flags);
        }
        Info::Name(name) => {
            data.put_u16(INFO_NAME);
            data.put_slice(name.as_bytes());
        }
        Info::Description(text) => {
            data.put_u16(INFO_DESCRIPTION);
            data.put_slice(text.as_bytes());
        }
        Info::BlockSize {
            min,
            preferred,
            max,
        } => {
            data.put_u16(INFO_BLOCK_SIZE);
            data.put_u32(*min);
            data.put_u32(*preferred);
            data.put_u32(*max);
        }
    }
    encode_option_reply(buf, option, REP_INFO, &data);
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(buf: &mut BytesMut, size: u64, flags: u16, no_zeroes: bool) {
    buf.put_u64(size);
    buf.put_u16(flags);
    if !no_zeroes {
        buf.put_bytes(0, 124);
    }
}

// ---- Transmission: requests -----------------------------------------------------------------

/// A request header, as sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Encodes the header as a client sends it.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(REQUEST_MAGIC);
        buf.put_u16(self.flags);
        buf.put_u16(self.kind);
        buf.put_u64(self.handle);
        buf.put_u64(self.offset);
        buf.put_u32(self.length);
    }

    /// How many payload bytes follow the header on the wire (only writes carry data), or an
    /// error if the payload is too large to be read (more than [`MAX_PAYLOAD`]).
    pub fn payload_len(&self) -> Result<u32, Rejection> {
        if self.kind != CMD_WRITE {
            Ok(0)
        } else if self.length > MAX_PAYLOAD {
            Err(Rejection::new(
                IoError::Invalid,
                "write payload larger than 32 MiB",
            ))
        } else {
            Ok(self.length)
        }
    }
}

/// Decodes a request header from the first [`REQUEST_HEADER_LEN`] bytes of `buf`.
pub fn decode_request_header(buf: &[u8]) -> Result<RequestHeader, DecodeError> {
    need(buf, REQUEST_HEADER_LEN)?;
    let magic = be_u32(buf, 0);
    if magic != REQUEST_MAGIC {
        return Err(DecodeError::BadMagic(u64::from(magic)));
    }
    Ok(RequestHeader {
        flags: be_u16(buf, 4),
        kind: be_u16(buf, 6),
        handle: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    })
}

/// What was negotiated for one connection's transmission phase, against which requests are
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransmissionParams {
    pub size: u64,
    pub read_only: bool,
    pub can_flush: bool,
    pub can_fua: bool,
    pub can_trim: bool,
    pub can_write_zeroes: bool,
    pub can_multi_conn: bool,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of `base:allocation` if it was selected for this export.
    pub meta_context: Option<u32>,
}

impl TransmissionParams {
    /// The transmission flags advertised for these parameters. Trim and write-zeroes are not
    /// advertised on a read-only export (they would fail with `EPERM`).
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = FLAG_HAS_FLAGS;
        if self.read_only {
            flags |= FLAG_READ_ONLY;
        }
        if self.can_flush {
            flags |= FLAG_SEND_FLUSH;
        }
        if self.can_fua {
            flags |= FLAG_SEND_FUA;
        }
        if self.can_trim && !self.read_only {
            flags |= FLAG_SEND_TRIM;
        }
        if self.can_write_zeroes && !self.read_only {
            flags |= FLAG_SEND_WRITE_ZEROES;
        }
        if self.structured {
            // Reads are always answered with at most one content chunk.
            flags |= FLAG_SEND_DF;
        }
        if self.can_multi_conn {
            flags |= FLAG_CAN_MULTI_CONN;
        }
        flags
    }
}

/// A checked request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Disconnect,
    Flush,
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        req_one: bool,
    },
}

/// Why a request is refused: the error value sent to the client, and a message for a structured
/// error chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {message}")]
pub struct Rejection {
    pub error: IoError,
    pub message: &'static str,
}

impl Rejection {
    pub fn new(error: IoError, message: &'static str) -> Self {
        Rejection { error, message }
    }
}

/// Checks a request against the negotiated parameters (see the spec's "Request types", "Block
/// size constraints" and "Error values").
pub fn validate_request(h: &RequestHeader, p: &TransmissionParams) -> Result<Command, Rejection> {
    let invalid = |m| Err(Rejection::new(IoError::Invalid, m));
    let allowed = match h.kind {
        CMD_READ => CMD_FLAG_FUA | if p.structured { CMD_FLAG_DF } else { 0 },
        CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        // Offset, length and flags of a disconnect are ignored.
        CMD_DISC => return Ok(Command::Disconnect),
        _ => return invalid("unknown command"),
    };
    if h.flags & !allowed != 0 {
        return invalid("command flag not valid for this command");
    }
    if h.flags & CMD_FLAG_FUA != 0 && !p.can_fua {
        return invalid("FUA was not negotiated");
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && p.read_only {
        return Err(Rejection::new(IoError::NotPermitted, "export is read-only"));
    }
    match h.kind {
        CMD_FLUSH if !p.can_flush => return invalid("flush is not supported"),
        CMD_TRIM if !p.can_trim => return invalid("trim is not supported"),
        CMD_WRITE_ZEROES if !p.can_write_zeroes => return invalid("write zeroes is not supported"),
        CMD_BLOCK_STATUS if p.meta_context.is_none() => {
            return invalid("no metadata context was negotiated");
        }
        CMD_FLUSH => {
            if h.offset != 0 || h.length != 0 {
                return invalid("flush offset and length must be zero");
            }
            return Ok(Command::Flush);
        }
        _ => {}
    }
    let beyond = h
        .offset
        .checked_add(u64::from(h.length))
        .is_none_or(|end| end > p.size);
    if beyond {
        return if matches!(h.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            Err(Rejection::new(
                IoError::NoSpace,
                "request extends beyond the end of the export",
            ))
        } else {
            invalid("request extends beyond the end of the export")
        };
    }
    let min = u64::from(p.min_block.max(1));
    if !h.offset.is_multiple_of(min) || !u64::from(h.length).is_multiple_of(min) {
        return invalid("request is not aligned to the minimum block size");
    }
    if matches!(h.kind, CMD_READ | CMD_WRITE | CMD_WRITE_ZEROES) && h.length > p.max_block {
        return invalid("request is longer than the maximum block size");
    }
    let (offset, length) = (h.offset, h.length);
    Ok(match h.kind {
        CMD_READ => Command::Read { offset, length },
        CMD_WRITE => Command::Write {
            offset,
            length,
            fua,
        },
        CMD_TRIM => Command::Trim {
            offset,
            length,
            fua,
        },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
        },
        CMD_BLOCK_STATUS => {
            if length == 0 {
                return invalid("block status length must not be zero");
            }
            Command::BlockStatus {
                offset,
                length,
                req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
            }
        }
        // Every other kind returned above.
        _ => return invalid("unknown command"),
    })
}

// ---- Transmission: replies ------------------------------------------------------------------

/// Appends a simple reply header (a good read's data follows it on the wire).
pub fn encode_simple_reply(buf: &mut BytesMut, error: u32, handle: u64) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(handle);
}

/// Appends a structured reply chunk header.
pub fn encode_chunk_header(buf: &mut BytesMut, flags: u16, kind: u16, handle: u64, length: u32) {
    buf.put_u32(STRUCTURED_REPLY_MAGIC);
    buf.put_u16(flags);
    buf.put_u16(kind);
    buf.put_u64(handle);
    buf.put_u32(length);
}

/// Appends an `NBD_REPLY_TYPE_NONE` chunk (always final).
pub fn encode_none_chunk(buf: &mut BytesMut, handle: u64) {
    encode_chunk_header(buf, REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0);
}

/// Appends the header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk; `data_len` bytes of
/// data (at least one) must follow.
pub fn encode_offset_data_header(
    buf: &mut BytesMut,
    flags: u16,
    handle: u64,
    offset: u64,
    data_len: u32,
) {
    assert!(
        data_len > 0 && data_len <= u32::MAX - 8,
        "offset data chunk of {data_len} bytes"
    );
    encode_chunk_header(buf, flags, REPLY_TYPE_OFFSET_DATA, handle, 8 + data_len);
    buf.put_u64(offset);
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `length` (nonzero) bytes at `offset` read as
/// zeroes.
pub fn encode_offset_hole(buf: &mut BytesMut, flags: u16, handle: u64, offset: u64, length: u32) {
    assert!(length > 0, "hole chunks must describe at least one byte");
    encode_chunk_header(buf, flags, REPLY_TYPE_OFFSET_HOLE, handle, 12);
    buf.put_u64(offset);
    buf.put_u32(length);
}

/// Appends an error chunk: `NBD_REPLY_TYPE_ERROR`, or `NBD_REPLY_TYPE_ERROR_OFFSET` when an
/// offset is given. The message is cut to [`MAX_STRING_LEN`] bytes at a character boundary.
pub fn encode_error_chunk(
    buf: &mut BytesMut,
    flags: u16,
    handle: u64,
    error: u32,
    message: &str,
    offset: Option<u64>,
) {
    assert!(error != 0, "error chunks carry a nonzero error");
    let mut end = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    let (kind, extra) = match offset {
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
        None => (REPLY_TYPE_ERROR, 0),
    };
    encode_chunk_header(buf, flags, kind, handle, (6 + message.len() + extra) as u32);
    buf.put_u32(error);
    buf.put_u16(message.len() as u16);
    buf.put_slice(message);
    if let Some(offset) = offset {
        buf.put_u64(offset);
    }
}

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk of `(length, status)` descriptors (at least
/// one).
pub fn encode_block_status(
    buf: &mut BytesMut,
    flags: u16,
    handle: u64,
    context: u32,
    descriptors: &[(u32, u32)],
) {
    assert!(
        !descriptors.is_empty(),
        "block status needs at least one descriptor"
    );
    let len = 4 + 8 * descriptors.len();
    encode_chunk_header(buf, flags, REPLY_TYPE_BLOCK_STATUS, handle, len as u32);
    buf.put_u32(context);
    for (length, status) in descriptors {
        buf.put_u32(*length);
        buf.put_u32(*status);
    }
}

/// Turns a device's extents into the descriptors of a block status reply for a request of
/// `length` bytes: zero-length extents are dropped, the total is cut to `length`, at most
/// `max_descriptors` are kept (one with `req_one`), and an empty list becomes one descriptor of
/// allocated data covering the request.
pub fn block_status_descriptors(
    extents: impl IntoIterator<Item = (u32, u32)>,
    length: u32,
    req_one: bool,
    max_descriptors: usize,
) -> Vec<(u32, u32)> {
    let limit = if req_one { 1 } else { max_descriptors.max(1) };
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut remaining = length;
    for (len, status) in extents {
        if remaining == 0 {
            break;
        }
        if len == 0 {
            continue;
        }
        let len = len.min(remaining);
        let full = out.len() == limit;
        match out.last_mut() {
            Some(last) if last.1 == status => last.0 += len,
            _ if full => break,
            _ => out.push((len, status)),
        }
        remaining -= len;
    }
    if out.is_empty() {
        out.push((length, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TransmissionParams {
        TransmissionParams {
            size: 1 << 20,
            read_only: false,
            can_flush: true,
            can_fua: true,
            can_trim: true,
            can_write_zeroes: true,
            can_multi_conn: true,
            min_block: 512,
            preferred_block: 4096,
            max_block: 64 * 1024,
            structured: true,
            meta_context: Some(BASE_ALLOCATION_ID),
        }
    }

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            handle: 0x1122_3344_5566_7788,
            offset,
            length,
        }
    }

    fn check(h: RequestHeader, p: &TransmissionParams) -> Result<Command, IoError> {
        validate_request(&h, p).map_err(|r| r.error)
    }

    #[test]
    fn error_values_round_trip() {
        for e in [
            IoError::NotPermitted,
            IoError::Io,
            IoError::NoMemory,
            IoError::Invalid,
            IoError::NoSpace,
            IoError::Overflow,
            IoError::NotSupported,
            IoError::Shutdown,
        ] {
            assert_eq!(io_error(error_value(e)), e);
        }
        assert_eq!(io_error(9999), IoError::Invalid);
        assert_eq!(error_value(IoError::NoSpace), 28);
        assert_eq!(error_value(IoError::Io), 5);
    }

    #[test]
    fn extent_status_flags() {
        assert_eq!(extent_status(&Extent::data(1)), 0);
        assert_eq!(extent_status(&Extent::hole(1)), 3);
        let zero = Extent {
            length: 1,
            hole: false,
            zero: true,
        };
        assert_eq!(extent_status(&zero), 2);
    }

    #[test]
    fn max_block_is_capped_at_the_largest_payload() {
        let mut info = ExportInfo::new(1 << 20);
        info.min_block = 512;
        info.max_block = 64 << 20;
        assert_eq!(info.validate(), Ok(()));
        assert_eq!(effective_max_block(&info), MAX_PAYLOAD);
        info.max_block = 1 << 20;
        assert_eq!(effective_max_block(&info), 1 << 20);
    }

    #[test]
    fn greeting_layout() {
        let mut b = BytesMut::new();
        encode_greeting(&mut b);
        assert_eq!(b.len(), GREETING_LEN);
        assert_eq!(&b[..8], b"NBDMAGIC");
        assert_eq!(&b[8..16], b"IHAVEOPT");
        assert_eq!(&b[16..], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 3]),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 0]),
            Ok(ClientFlags {
                fixed_newstyle: false,
                no_zeroes: false
            })
        );
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 4]),
            Err(DecodeError::BadClientFlags(4))
        );
        assert_eq!(
            decode_client_flags(&[0x80, 0, 0, 1]),
            Err(DecodeError::BadClientFlags(0x8000_0001))
        );
        assert!(matches!(
            decode_client_flags(&[0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn option_header() {
        let mut b = BytesMut::new();
        b.put_u64(IHAVEOPT);
        b.put_u32(OPT_GO);
        b.put_u32(10);
        assert_eq!(
            decode_option_header(&b),
            Ok(OptionHeader {
                option: OPT_GO,
                length: 10
            })
        );
        assert!(matches!(
            decode_option_header(&b[..15]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_option_header(&bad),
            Err(DecodeError::BadMagic(_))
        ));
        let mut big = BytesMut::new();
        big.put_u64(IHAVEOPT);
        big.put_u32(OPT_GO);
        big.put_u32(u32::MAX);
        assert_eq!(
            decode_option_header(&big),
            Err(DecodeError::OptionTooLong(u32::MAX))
        );
        let mut edge = BytesMut::new();
        edge.put_u64(IHAVEOPT);
        edge.put_u32(99);
        edge.put_u32(MAX_OPTION_LEN);
        assert!(decode_option_header(&edge).is_ok());
    }

    fn round_trip(opt: ClientOption) {
        let mut b = BytesMut::new();
        opt.encode(&mut b);
        let h = decode_option_header(&b).expect("header");
        assert_eq!(h.length as usize, b.len() - OPTION_HEADER_LEN);
        assert_eq!(decode_option(h.option, &b[OPTION_HEADER_LEN..]), Ok(opt));
    }

    #[test]
    fn every_option_round_trips() {
        round_trip(ClientOption::ExportName("disk".into()));
        round_trip(ClientOption::ExportName(String::new()));
        round_trip(ClientOption::Abort);
        round_trip(ClientOption::List);
        round_trip(ClientOption::StartTls);
        let info = InfoRequest {
            name: "vol-1".into(),
            requests: vec![INFO_NAME, INFO_BLOCK_SIZE],
        };
        round_trip(ClientOption::Info(info.clone()));
        round_trip(ClientOption::Go(info));
        round_trip(ClientOption::Go(InfoRequest {
            name: String::new(),
            requests: vec![],
        }));
        round_trip(ClientOption::StructuredReply);
        let meta = MetaContextRequest {
            export: "disk".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
        };
        round_trip(ClientOption::ListMetaContext(meta.clone()));
        round_trip(ClientOption::SetMetaContext(meta));
        round_trip(ClientOption::SetMetaContext(MetaContextRequest {
            export: "d".into(),
            queries: vec![],
        }));
        round_trip(ClientOption::Unknown(OPT_PEEK_EXPORT));
        round_trip(ClientOption::Unknown(0xdead_beef));
    }

    #[test]
    fn malformed_options_are_invalid() {
        let bad = |opt: u32, data: &[u8]| decode_option(opt, data).is_err();
        assert!(bad(OPT_LIST, &[0]));
        assert!(bad(OPT_STRUCTURED_REPLY, &[1, 2]));
        assert!(bad(OPT_EXPORT_NAME, &[0xff, 0xfe]), "not UTF-8");
        assert!(bad(OPT_EXPORT_NAME, b"a\0b"), "NUL");
        assert!(
            bad(OPT_EXPORT_NAME, &[b'a'; MAX_STRING_LEN + 1]),
            "too long"
        );
        // GO: name length beyond the data.
        assert!(bad(OPT_GO, &[0, 0, 0, 9, b'a', 0, 0]));
        // GO: missing the request count.
        assert!(bad(OPT_GO, &[0, 0, 0, 1, b'a']));
        // GO: count says 2 items, data holds 1.
        assert!(bad(OPT_GO, &[0, 0, 0, 1, b'a', 0, 2, 0, 1]));
        // GO: trailing byte.
        assert!(bad(OPT_GO, &[0, 0, 0, 1, b'a', 0, 0, 7]));
        // GO: huge name length.
        assert!(bad(OPT_INFO, &[0xff, 0xff, 0xff, 0xff, 0, 0]));
        // Meta context: absurd query count.
        assert!(bad(
            OPT_SET_META_CONTEXT,
            &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
        ));
        // Meta context: query runs past the end.
        assert!(bad(
            OPT_LIST_META_CONTEXT,
            &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, b'b']
        ));
        // Meta context: trailing data.
        assert!(bad(OPT_LIST_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0, 1]));
        assert!(bad(OPT_LIST_META_CONTEXT, &[]));
        // Abort ignores its data, unknown options are not parsed at all.
        assert_eq!(
            decode_option(OPT_ABORT, &[1, 2, 3]),
            Ok(ClientOption::Abort)
        );
        assert_eq!(decode_option(42, &[1, 2, 3]), Ok(ClientOption::Unknown(42)));
        assert_eq!(
            decode_option(OPT_STARTTLS, &[1]),
            Ok(ClientOption::StartTls)
        );
    }

    #[test]
    fn option_reply_layouts() {
        let mut b = BytesMut::new();
        encode_option_reply(&mut b, OPT_ABORT, REP_ACK, &[]);
        assert_eq!(b.len(), 20);
        assert_eq!(be_u64(&b, 0), OPTION_REPLY_MAGIC);
        assert_eq!(be_u32(&b, 8), OPT_ABORT);
        assert_eq!(be_u32(&b, 12), REP_ACK);
        assert_eq!(be_u32(&b, 16), 0);

        let mut b = BytesMut::new();
        encode_rep_server(&mut b, "disk", "a disk");
        assert_eq!(be_u32(&b, 12), REP_SERVER);
        assert_eq!(be_u32(&b, 16), 4 + 4 + 6);
        assert_eq!(be_u32(&b, 20), 4);
        assert_eq!(&b[24..28], b"disk");
        assert_eq!(&b[28..], b"a disk");

        let mut b = BytesMut::new();
        encode_rep_info(
            &mut b,
            OPT_GO,
            &Info::Export {
                size: 1 << 30,
                flags: 0x1ff,
            },
        );
        assert_eq!(be_u32(&b, 16), 12);
        assert_eq!(be_u16(&b, 20), INFO_EXPORT);
        assert_eq!(be_u64(&b, 22), 1 << 30);
        assert_eq!(be_u16(&b, 30), 0x1ff);

        let mut b = BytesMut::new();
        encode_rep_info(
            &mut b,
            OPT_INFO,
            &Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 1 << 25,
            },
        );
        assert_eq!(be_u32(&b, 16), 14);
        assert_eq!(be_u16(&b, 20), INFO_BLOCK_SIZE);
        assert_eq!(
            (be_u32(&b, 22), be_u32(&b, 26), be_u32(&b, 30)),
            (1, 4096, 1 << 25)
        );

        for (info, code) in [
            (Info::Name("n"), INFO_NAME),
            (Info::Description("d"), INFO_DESCRIPTION),
        ] {
            let mut b = BytesMut::new();
            encode_rep_info(&mut b, OPT_GO, &info);
            assert_eq!(be_u32(&b, 16), 3);
            assert_eq!(be_u16(&b, 20), code);
        }

        let mut b = BytesMut::new();
        encode_rep_meta_context(&mut b, OPT_SET_META_CONTEXT, 7, BASE_ALLOCATION);
        assert_eq!(be_u32(&b, 12), REP_META_CONTEXT);
        assert_eq!(be_u32(&b, 20), 7);
        assert_eq!(&b[24..], BASE_ALLOCATION.as_bytes());

        let mut b = BytesMut::new();
        encode_export_name_reply(&mut b, 5, 3, false);
        assert_eq!(b.len(), 8 + 2 + 124);
        let mut b = BytesMut::new();
        encode_export_name_reply(&mut b, 5, 3, true);
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn request_header_round_trip_and_malformed() {
        let h = req(CMD_WRITE, CMD_FLAG_FUA, 4096, 512);
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(b.len(), REQUEST_HEADER_LEN);
        assert_eq!(decode_request_header(&b), Ok(h));
        assert!(matches!(
            decode_request_header(&b[..27]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_request_header(&[]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = b.clone();
        bad[3] ^= 0xff;
        assert!(matches!(
            decode_request_header(&bad),
            Err(DecodeError::BadMagic(_))
        ));
        assert_eq!(h.payload_len(), Ok(512));
        assert_eq!(req(CMD_READ, 0, 0, u32::MAX).payload_len(), Ok(0));
        assert_eq!(
            req(CMD_WRITE, 0, 0, MAX_PAYLOAD).payload_len(),
            Ok(MAX_PAYLOAD)
        );
        assert!(req(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1).payload_len().is_err());
    }

    #[test]
    fn every_command_validates() {
        let p = params();
        assert_eq!(
            check(req(CMD_READ, 0, 512, 1024), &p),
            Ok(Command::Read {
                offset: 512,
                length: 1024
            })
        );
        assert_eq!(
            check(req(CMD_READ, CMD_FLAG_DF | CMD_FLAG_FUA, 0, 512), &p),
            Ok(Command::Read {
                offset: 0,
                length: 512
            })
        );
        assert_eq!(
            check(req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &p),
            Ok(Command::Write {
                offset: 0,
                length: 512,
                fua: true
            })
        );
        assert_eq!(
            check(req(CMD_DISC, 0xffff, 9, 9), &p),
            Ok(Command::Disconnect)
        );
        assert_eq!(check(req(CMD_FLUSH, 0, 0, 0), &p), Ok(Command::Flush));
        assert_eq!(
            check(req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &p),
            Ok(Command::Flush)
        );
        assert_eq!(
            check(req(CMD_TRIM, 0, 0, 1 << 20), &p),
            Ok(Command::Trim {
                offset: 0,
                length: 1 << 20,
                fua: false
            })
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 512, 512), &p),
            Ok(Command::WriteZeroes {
                offset: 512,
                length: 512,
                fua: false,
                no_hole: true
            })
        );
        assert_eq!(
            check(req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 20), &p),
            Ok(Command::BlockStatus {
                offset: 0,
                length: 1 << 20,
                req_one: true
            })
        );
        // Zero lengths are accepted (the spec leaves them unspecified, but not a disconnect),
        // except for block status, which must describe at least one byte.
        assert_eq!(
            check(req(CMD_READ, 0, 0, 0), &p),
            Ok(Command::Read {
                offset: 0,
                length: 0
            })
        );
        assert_eq!(
            check(req(CMD_WRITE, 0, 1 << 20, 0), &p),
            Ok(Command::Write {
                offset: 1 << 20,
                length: 0,
                fua: false
            })
        );
        assert_eq!(
            check(req(CMD_BLOCK_STATUS, 0, 0, 0), &p),
            Err(IoError::Invalid)
        );
    }

    #[test]
    fn requests_are_refused_like_the_spec_says() {
        let p = params();
        // Unknown commands (including CACHE, not advertised) and flags.
        assert_eq!(check(req(CMD_CACHE, 0, 0, 512), &p), Err(IoError::Invalid));
        assert_eq!(check(req(99, 0, 0, 512), &p), Err(IoError::Invalid));
        assert_eq!(
            check(req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE, CMD_FLAG_DF, 0, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_READ, 1 << 15, 0, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_TRIM, CMD_FLAG_REQ_ONE, 0, 512), &p),
            Err(IoError::Invalid)
        );
        // DF needs structured replies.
        let simple = TransmissionParams {
            structured: false,
            meta_context: None,
            ..p
        };
        assert_eq!(
            check(req(CMD_READ, CMD_FLAG_DF, 0, 512), &simple),
            Err(IoError::Invalid)
        );
        // Bounds: reads and trims EINVAL, writes ENOSPC; overflow of offset + length too.
        assert_eq!(
            check(req(CMD_READ, 0, (1 << 20) - 512, 1024), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_TRIM, 0, 1 << 20, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_BLOCK_STATUS, 0, 1 << 20, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE, 0, (1 << 20) - 512, 1024), &p),
            Err(IoError::NoSpace)
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, 0, 1 << 21, 512), &p),
            Err(IoError::NoSpace)
        );
        assert_eq!(
            check(req(CMD_READ, 0, u64::MAX - 100, 512), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE, 0, u64::MAX, 512), &p),
            Err(IoError::NoSpace)
        );
        // Alignment and maximum block size.
        assert_eq!(check(req(CMD_READ, 0, 1, 512), &p), Err(IoError::Invalid));
        assert_eq!(check(req(CMD_WRITE, 0, 0, 100), &p), Err(IoError::Invalid));
        assert_eq!(
            check(req(CMD_READ, 0, 0, 128 * 1024), &p),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, 0, 0, 128 * 1024), &p),
            Err(IoError::Invalid)
        );
        // Flush with nonzero fields.
        assert_eq!(check(req(CMD_FLUSH, 0, 512, 0), &p), Err(IoError::Invalid));
        assert_eq!(check(req(CMD_FLUSH, 0, 0, 512), &p), Err(IoError::Invalid));
        // Read-only export.
        let ro = TransmissionParams {
            read_only: true,
            ..p
        };
        assert_eq!(
            check(req(CMD_WRITE, 0, 0, 512), &ro),
            Err(IoError::NotPermitted)
        );
        assert_eq!(
            check(req(CMD_TRIM, 0, 0, 512), &ro),
            Err(IoError::NotPermitted)
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, 0, 0, 512), &ro),
            Err(IoError::NotPermitted)
        );
        assert!(check(req(CMD_READ, 0, 0, 512), &ro).is_ok());
        // Commands that were not advertised.
        let bare = TransmissionParams {
            can_flush: false,
            can_fua: false,
            can_trim: false,
            can_write_zeroes: false,
            meta_context: None,
            ..p
        };
        assert_eq!(check(req(CMD_FLUSH, 0, 0, 0), &bare), Err(IoError::Invalid));
        assert_eq!(
            check(req(CMD_TRIM, 0, 0, 512), &bare),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE_ZEROES, 0, 0, 512), &bare),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_BLOCK_STATUS, 0, 0, 512), &bare),
            Err(IoError::Invalid)
        );
        assert_eq!(
            check(req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &bare),
            Err(IoError::Invalid)
        );
    }

    #[test]
    fn transmission_flags() {
        let p = params();
        let f = p.transmission_flags();
        for bit in [
            FLAG_HAS_FLAGS,
            FLAG_SEND_FLUSH,
            FLAG_SEND_FUA,
            FLAG_SEND_TRIM,
            FLAG_SEND_WRITE_ZEROES,
            FLAG_SEND_DF,
            FLAG_CAN_MULTI_CONN,
        ] {
            assert_ne!(f & bit, 0, "bit {bit:#x}");
        }
        assert_eq!(
            f & (FLAG_READ_ONLY | FLAG_SEND_CACHE | FLAG_SEND_FAST_ZERO),
            0
        );
        let ro = TransmissionParams {
            read_only: true,
            structured: false,
            can_multi_conn: false,
            ..p
        };
        let f = ro.transmission_flags();
        assert_ne!(f & FLAG_READ_ONLY, 0);
        assert_eq!(
            f & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_DF),
            0
        );
        assert_eq!(f & FLAG_CAN_MULTI_CONN, 0);
    }

    #[test]
    fn reply_layouts() {
        let mut b = BytesMut::new();
        encode_simple_reply(&mut b, EIO, 9);
        assert_eq!(b.len(), SIMPLE_REPLY_LEN);
        assert_eq!(
            (be_u32(&b, 0), be_u32(&b, 4), be_u64(&b, 8)),
            (SIMPLE_REPLY_MAGIC, EIO, 9)
        );

        let mut b = BytesMut::new();
        encode_none_chunk(&mut b, 3);
        assert_eq!(b.len(), CHUNK_HEADER_LEN);
        assert_eq!(be_u32(&b, 0), STRUCTURED_REPLY_MAGIC);
        assert_eq!(
            (be_u16(&b, 4), be_u16(&b, 6)),
            (REPLY_FLAG_DONE, REPLY_TYPE_NONE)
        );
        assert_eq!((be_u64(&b, 8), be_u32(&b, 16)), (3, 0));

        let mut b = BytesMut::new();
        encode_offset_data_header(&mut b, REPLY_FLAG_DONE, 3, 4096, 512);
        assert_eq!(b.len(), CHUNK_HEADER_LEN + 8);
        assert_eq!(be_u16(&b, 6), REPLY_TYPE_OFFSET_DATA);
        assert_eq!(be_u32(&b, 16), 520);
        assert_eq!(be_u64(&b, 20), 4096);

        let mut b = BytesMut::new();
        encode_offset_hole(&mut b, 0, 3, 4096, 512);
        assert_eq!(be_u16(&b, 6), REPLY_TYPE_OFFSET_HOLE);
        assert_eq!(be_u32(&b, 16), 12);
        assert_eq!((be_u64(&b, 20), be_u32(&b, 28)), (4096, 512));

        let mut b = BytesMut::new();
        encode_error_chunk(&mut b, REPLY_FLAG_DONE, 3, EINVAL, "bad", None);
        assert_eq!(be_u16(&b, 6), REPLY_TYPE_ERROR);
        assert_eq!(be_u32(&b, 16), 9);
        assert_eq!((be_u32(&b, 20), be_u16(&b, 24)), (EINVAL, 3));
        assert_eq!(&b[26..], b"bad");

        let mut b = BytesMut::new();
        encode_error_chunk(&mut b, REPLY_FLAG_DONE, 3, EIO, "", Some(8192));
        assert_eq!(be_u16(&b, 6), REPLY_TYPE_ERROR_OFFSET);
        assert_eq!(be_u32(&b, 16), 14);
        assert_eq!(be_u64(&b, 26), 8192);

        let long = "é".repeat(3000);
        let mut b = BytesMut::new();
        encode_error_chunk(&mut b, REPLY_FLAG_DONE, 3, EIO, &long, None);
        let msg_len = usize::from(be_u16(&b, 24));
        assert!(msg_len <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(&b[26..26 + msg_len]).is_ok());
        assert_eq!(be_u32(&b, 16) as usize, 6 + msg_len);

        let mut b = BytesMut::new();
        encode_block_status(&mut b, REPLY_FLAG_DONE, 3, 1, &[(4096, 0), (8192, 3)]);
        assert_eq!(be_u16(&b, 6), REPLY_TYPE_BLOCK_STATUS);
        assert_eq!(be_u32(&b, 16), 4 + 16);
        assert_eq!(be_u32(&b, 20), 1);
        assert_eq!((be_u32(&b, 24), be_u32(&b, 28)), (4096, 0));
        assert_eq!((be_u32(&b, 32), be_u32(&b, 36)), (8192, 3));
    }

    #[test]
    fn block_status_descriptor_cleanup() {
        let d = |e: &[(u32, u32)], len, one, max| {
            block_status_descriptors(e.iter().copied(), len, one, max)
        };
        assert_eq!(d(&[], 100, false, 8), vec![(100, 0)]);
        assert_eq!(d(&[(0, 3)], 100, false, 8), vec![(100, 0)]);
        assert_eq!(
            d(&[(50, 0), (0, 3), (80, 3)], 100, false, 8),
            vec![(50, 0), (50, 3)]
        );
        assert_eq!(d(&[(50, 3), (50, 3)], 100, false, 8), vec![(100, 3)]);
        assert_eq!(d(&[(500, 3)], 100, true, 8), vec![(100, 3)]);
        assert_eq!(d(&[(10, 0), (10, 3)], 100, true, 8), vec![(10, 0)]);
        assert_eq!(
            d(&[(10, 0), (10, 3), (10, 0)], 100, false, 2),
            vec![(10, 0), (10, 3)]
        );
    }
}
