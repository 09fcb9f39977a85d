//! The handshake phase on the wire: the greeting, the client's flags, options and option
//! replies. The server's decoders (client flags, options) and encoders (greeting, replies) come
//! first, then the client's encoders (options) and decoders (greeting, option replies, the
//! `NBD_OPT_EXPORT_NAME` reply).

use bytes::{BufMut, BytesMut};

use super::constants::*;
use super::frame::{be_u16, be_u32, be_u64, need, DecodeError};

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
        OPT_STARTTLS if data.is_empty() => Ok(ClientOption::StartTls),
        OPT_STARTTLS => Err(invalid("NBD_OPT_STARTTLS takes no data")),
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

// ---- What the client decodes ----------------------------------------------------------------

/// The server greeting's handshake flags, or why it is not a fixed-newstyle greeting.
pub fn decode_greeting(buf: &[u8; GREETING_LEN]) -> Result<u16, DecodeError> {
    let magic = be_u64(buf, 0);
    if magic != NBDMAGIC {
        return Err(DecodeError::NotNbd(magic));
    }
    let second = be_u64(buf, 8);
    if second != IHAVEOPT {
        return Err(DecodeError::OldStyle(second));
    }
    let flags = be_u16(buf, 16);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(DecodeError::NotFixedNewstyle);
    }
    Ok(flags)
}

/// An option reply's header: which option it answers, its type, and how many bytes of data
/// follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

/// Decodes an option reply header, checking the magic and the client's length limit
/// ([`MAX_OPTION_REPLY`]).
pub fn decode_option_reply_header(
    buf: &[u8; OPTION_REPLY_HEADER_LEN],
) -> Result<OptionReplyHeader, DecodeError> {
    let magic = be_u64(buf, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(DecodeError::BadOptionReplyMagic(magic));
    }
    let header = OptionReplyHeader {
        option: be_u32(buf, 8),
        reply_type: be_u32(buf, 12),
        length: be_u32(buf, 16),
    };
    if header.length > MAX_OPTION_REPLY {
        return Err(DecodeError::OptionReplyTooLong(header.length));
    }
    Ok(header)
}

/// The block size constraints the server sent (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// The `NBD_REP_INFO` items the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoItem {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize(BlockSizes),
    /// Names, descriptions and anything newer.
    Other,
}

/// Decodes the data of an `NBD_REP_INFO` reply.
pub fn decode_info(data: &[u8]) -> Result<InfoItem, DecodeError> {
    if data.len() < 2 {
        return Err(DecodeError::InfoTooShort);
    }
    let info_type = be_u16(data, 0);
    let body = &data[2..];
    match info_type {
        INFO_EXPORT if body.len() == 10 => Ok(InfoItem::Export {
            size: be_u64(body, 0),
            flags: be_u16(body, 8),
        }),
        INFO_BLOCK_SIZE if body.len() == 12 => Ok(InfoItem::BlockSize(BlockSizes {
            minimum: be_u32(body, 0),
            preferred: be_u32(body, 4),
            maximum: be_u32(body, 8),
        })),
        INFO_EXPORT | INFO_BLOCK_SIZE => Err(DecodeError::InfoLength {
            info_type,
            length: data.len(),
        }),
        _ => Ok(InfoItem::Other),
    }
}

/// The reply to `NBD_OPT_EXPORT_NAME` (its length is 10, or 134 without `NO_ZEROES`): size
/// and transmission flags.
pub fn decode_export_name_reply(buf: &[u8]) -> Result<(u64, u16), DecodeError> {
    if buf.len() < 10 {
        return Err(DecodeError::ExportNameReplyTooShort(buf.len()));
    }
    Ok((be_u64(buf, 0), be_u16(buf, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(decode_option(OPT_STARTTLS, &[]), Ok(ClientOption::StartTls));
        assert!(bad(OPT_STARTTLS, &[1]));
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
    fn greeting_decodes_and_refuses() {
        let mut b = BytesMut::new();
        encode_greeting(&mut b);
        let greeting: [u8; GREETING_LEN] = b[..].try_into().unwrap();
        let flags = decode_greeting(&greeting).unwrap();
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);

        let mut old = greeting;
        old[8..16].copy_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        assert_eq!(
            decode_greeting(&old),
            Err(DecodeError::OldStyle(0x0000_4202_8186_1253))
        );
        assert!(decode_greeting(&old)
            .unwrap_err()
            .to_string()
            .contains("old-style"));
        let mut not_nbd = greeting;
        not_nbd[0] = b'X';
        assert!(decode_greeting(&not_nbd)
            .unwrap_err()
            .to_string()
            .contains("not an NBD"));
        let mut unfixed = greeting;
        unfixed[17] = 0;
        assert!(decode_greeting(&unfixed)
            .unwrap_err()
            .to_string()
            .contains("fixed newstyle"));
    }

    #[test]
    fn option_replies_decode() {
        let mut b = BytesMut::new();
        encode_rep_info(
            &mut b,
            OPT_GO,
            &Info::Export {
                size: 1 << 30,
                flags: 0x1ed,
            },
        );
        let header: [u8; OPTION_REPLY_HEADER_LEN] = b[..20].try_into().unwrap();
        assert_eq!(
            decode_option_reply_header(&header),
            Ok(OptionReplyHeader {
                option: OPT_GO,
                reply_type: REP_INFO,
                length: 12
            })
        );
        assert_eq!(
            decode_info(&b[20..]),
            Ok(InfoItem::Export {
                size: 1 << 30,
                flags: 0x1ed
            })
        );

        let mut b = BytesMut::new();
        encode_rep_info(
            &mut b,
            OPT_GO,
            &Info::BlockSize {
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
        encode_rep_info(&mut b, OPT_GO, &Info::Name("disk"));
        assert_eq!(decode_info(&b[20..]), Ok(InfoItem::Other));
        assert!(decode_info(&[0, 0, 1]).is_err());
        assert!(decode_info(&[0]).is_err());

        let mut b = BytesMut::new();
        encode_option_reply(&mut b, OPT_GO, REP_ERR_UNKNOWN, b"no");
        let mut header: [u8; OPTION_REPLY_HEADER_LEN] = b[..20].try_into().unwrap();
        assert_eq!(
            decode_option_reply_header(&header),
            Ok(OptionReplyHeader {
                option: OPT_GO,
                reply_type: REP_ERR_UNKNOWN,
                length: 2
            })
        );
        header[16..20].copy_from_slice(&(MAX_OPTION_REPLY + 1).to_be_bytes());
        assert!(decode_option_reply_header(&header).is_err());
        header[0] ^= 1;
        assert!(decode_option_reply_header(&header)
            .unwrap_err()
            .to_string()
            .contains("magic"));

        for no_zeroes in [true, false] {
            let mut b = BytesMut::new();
            encode_export_name_reply(&mut b, 4096, 3, no_zeroes);
            assert_eq!(decode_export_name_reply(&b), Ok((4096, 3)));
        }
        assert!(decode_export_name_reply(&[0; 9]).is_err());
    }
}
