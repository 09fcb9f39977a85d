//! The transmission phase on the wire: request headers (the client encodes, the server decodes
//! and validates against what was negotiated), then replies (the server encodes simple replies
//! and structured reply chunks, the client decodes simple reply headers).

use bytes::{BufMut, BytesMut};
use tandem_block::IoError;

use super::constants::*;
use super::frame::{be_u16, be_u32, be_u64, need, DecodeError};

// ---- Requests ----------------------------------------------------------------------------------

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
    // The maximum bounds what crosses the wire: a read's or a write's data. WRITE_ZEROES, TRIM
    // and BLOCK_STATUS carry none and may cover any part of the export, as nbdkit and qemu-nbd
    // serve them (libnbd's nbd_zero, which nbdfuse's fallocate uses, does not split them).
    if matches!(h.kind, CMD_READ | CMD_WRITE) && h.length > p.max_block {
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

// ---- Replies ------------------------------------------------------------------

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

/// A simple reply header, as the client decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// Zero for success, else an error value.
    pub error: u32,
    pub handle: u64,
}

/// Decodes a simple reply header, or says why it is not one (a structured reply chunk is
/// refused: this client never negotiates them).
pub fn decode_simple_reply(buf: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, DecodeError> {
    match be_u32(buf, 0) {
        SIMPLE_REPLY_MAGIC => Ok(SimpleReply {
            error: be_u32(buf, 4),
            handle: be_u64(buf, 8),
        }),
        STRUCTURED_REPLY_MAGIC => Err(DecodeError::UnexpectedStructuredReply),
        other => Err(DecodeError::BadReplyMagic(other)),
    }
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
        assert!(
            check(req(CMD_WRITE_ZEROES, 0, 0, 128 * 1024), &p).is_ok(),
            "zeroes carry no data: any length within the export"
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
    #[test]
    fn simple_replies_decode() {
        let mut b = BytesMut::new();
        encode_simple_reply(&mut b, EIO, 77);
        let header: [u8; SIMPLE_REPLY_LEN] = b[..].try_into().unwrap();
        assert_eq!(
            decode_simple_reply(&header),
            Ok(SimpleReply {
                error: EIO,
                handle: 77
            })
        );

        let mut b = BytesMut::new();
        encode_none_chunk(&mut b, 77);
        let header: [u8; SIMPLE_REPLY_LEN] = b[..16].try_into().unwrap();
        assert!(decode_simple_reply(&header)
            .unwrap_err()
            .to_string()
            .contains("structured"));
        assert!(decode_simple_reply(&[0; 16])
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }
}
