//! Tandem's replica wire format: turns an [`Envelope`] into a checksummed frame and back.
//!
//! # Frame layout
//!
//! All integers are little-endian.
//!
//! ```text
//! offset  size  field
//! 0       4     magic          b"TNDM"
//! 4       1     version        1 (see VERSION)
//! 5       1     kind           message kind tag (see codec.rs; 0 is never valid)
//! 6       2     flags          0 (no flags are defined; nonzero is rejected)
//! 8       4     payload_len    payload length in bytes, at most MAX_PAYLOAD_LEN
//! 12      8     session        Envelope::session
//! 20      8     number         Envelope::number
//! 28      n     payload        the message's fields (see codec.rs)
//! 28+n    4     crc32c         CRC-32C (Castagnoli) of bytes [0, 28+n): header and payload
//! ```
//!
//! The header is [`HEADER_LEN`] bytes, the trailer [`TRAILER_LEN`]. A frame's payload holds
//! exactly the message's fields: a frame whose payload has bytes left over after the last field is
//! rejected, as is one that ends inside a field.
//!
//! # Decoding
//!
//! [`decode`] works on a stream buffer in the mini-redis style: it returns `Ok(None)` until the
//! buffer holds a whole frame, then removes that frame from the buffer and returns its envelope.
//! The header is checked (magic, version, flags, kind, length limit) as soon as its
//! [`HEADER_LEN`] bytes have arrived, so garbage and oversized frames are rejected before any of
//! their payload is buffered. Byte strings in the decoded message (`Write::data`, read results,
//! ...) share the frame's memory rather than being copied.
//!
//! Decoding never panics, never allocates more than the bytes it has been given justify, and
//! always makes progress. Any error means the peer is broken or the stream is corrupt; the caller
//! should drop the connection. On a header or checksum error the buffer is left untouched; a frame
//! whose checksum is good but whose payload is malformed has been consumed.

mod codec;

use bytes::{BufMut, Bytes, BytesMut};
use tandem_core::{Envelope, SessionId};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"TNDM";

/// The wire format version this build writes and the only one it reads.
pub const VERSION: u8 = 1;

/// Bytes before the payload: magic, version, kind, flags, payload length, session, number.
pub const HEADER_LEN: usize = 28;

/// Bytes after the payload: the CRC-32C.
pub const TRAILER_LEN: usize = 4;

/// The largest payload a frame may carry (64 MiB). Larger lengths are rejected from the header
/// alone, before anything else is buffered.
pub const MAX_PAYLOAD_LEN: u32 = 64 * 1024 * 1024;

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("bad magic {}: expected \"TNDM\"", show_bytes(.found))]
    BadMagic { found: [u8; 4] },

    #[error("unsupported wire version {found}: this build supports version {supported} only")]
    UnsupportedVersion { found: u8, supported: u8 },

    #[error("unknown message kind tag {tag:#04x}")]
    UnknownKind { tag: u8 },

    #[error("nonzero frame flags {flags:#06x}: version 1 defines no flags")]
    NonzeroFlags { flags: u16 },

    #[error("frame payload of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { len: u32, limit: u32 },

    #[error("checksum mismatch: frame carries CRC-32C {expected:#010x}, contents hash to {actual:#010x}")]
    ChecksumMismatch { expected: u32, actual: u32 },

    #[error(
        "{kind} payload truncated in field `{field}`: needed {needed} more bytes, {available} left"
    )]
    Truncated {
        kind: &'static str,
        field: &'static str,
        needed: usize,
        available: usize,
    },

    #[error("{kind} payload has {count} trailing bytes after its last field")]
    TrailingBytes { kind: &'static str, count: usize },

    #[error("{kind} field `{field}`: invalid boolean byte {value} (expected 0 or 1)")]
    InvalidBool {
        kind: &'static str,
        field: &'static str,
        value: u8,
    },

    #[error("{kind} field `{field}`: invalid result tag {value} (expected 0 = ok or 1 = err)")]
    InvalidResultTag {
        kind: &'static str,
        field: &'static str,
        value: u8,
    },

    #[error("{kind} field `{field}`: unknown I/O failure code {value} (expected 1, 2 or 3)")]
    InvalidIoFailure {
        kind: &'static str,
        field: &'static str,
        value: u8,
    },

    #[error("refused: unknown refusal reason tag {value} (expected 1, 2 or 3)")]
    InvalidRefusal { value: u8 },

    #[error("{kind} field `{field}`: region set of {region_count} regions has bits set past its last region")]
    InvalidRegionSet {
        kind: &'static str,
        field: &'static str,
        region_count: u32,
    },

    /// Only from [`decode_frame`], which is given a complete slice rather than a stream buffer.
    #[error("incomplete frame: {needed} bytes needed, {available} given")]
    Incomplete { needed: usize, available: usize },
}

/// Why an envelope could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("{kind} payload of {len} bytes exceeds the frame limit of {limit} bytes")]
    PayloadTooLarge {
        kind: &'static str,
        len: usize,
        limit: u32,
    },
}

fn show_bytes(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Appends the frame for `envelope` to `out`.
///
/// # Panics
///
/// If the payload would exceed [`MAX_PAYLOAD_LEN`] (a write or read of more than 64 MiB): that
/// is a caller bug, as no Tandem request is that large. Use [`try_encode`] to get an error
/// instead.
pub fn encode(envelope: &Envelope, out: &mut BytesMut) {
    if let Err(error) = try_encode(envelope, out) {
        panic!("cannot encode envelope: {error}");
    }
}

/// Appends the frame for `envelope` to `out`, or leaves `out` unchanged and fails if the
/// payload would exceed [`MAX_PAYLOAD_LEN`].
pub fn try_encode(envelope: &Envelope, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(HEADER_LEN + TRAILER_LEN);
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(codec::kind_tag(&envelope.message));
    out.put_u16_le(0); // flags
    out.put_u32_le(0); // payload length, filled in below
    out.put_u64_le(envelope.session.0);
    out.put_u64_le(envelope.number);
    codec::encode_payload(&envelope.message, out);

    let payload_len = out.len() - start - HEADER_LEN;
    let len = match u32::try_from(payload_len) {
        Ok(len) if len <= MAX_PAYLOAD_LEN => len,
        _ => {
            out.truncate(start);
            return Err(EncodeError::PayloadTooLarge {
                kind: envelope.message.kind(),
                len: payload_len,
                limit: MAX_PAYLOAD_LEN,
            });
        }
    };
    out[start + 8..start + 12].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.put_u32_le(crc);
    Ok(())
}

/// Decodes one frame from the front of a stream buffer.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame (read more and call again), or
/// `Ok(Some(envelope))` after removing the frame's bytes from `buf`. See the crate docs for what
/// an error leaves in `buf`.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Envelope>, DecodeError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len {
        return Ok(None);
    }
    check_crc(&buf[..header.frame_len])?;
    let frame = buf.split_to(header.frame_len).freeze();
    let payload = frame.slice(HEADER_LEN..header.frame_len - TRAILER_LEN);
    header.finish(payload).map(Some)
}

/// Decodes the frame at the front of `bytes`, returning its envelope and the number of bytes it
/// took. Unlike [`decode`], a frame cut short is an error ([`DecodeError::Incomplete`]). Byte
/// strings in the message are copied out of `bytes` (once, as one allocation for the payload).
pub fn decode_frame(bytes: &[u8]) -> Result<(Envelope, usize), DecodeError> {
    let Some(header) = parse_header(bytes)? else {
        return Err(DecodeError::Incomplete {
            needed: HEADER_LEN,
            available: bytes.len(),
        });
    };
    let Some(frame) = bytes.get(..header.frame_len) else {
        return Err(DecodeError::Incomplete {
            needed: header.frame_len,
            available: bytes.len(),
        });
    };
    check_crc(frame)?;
    let payload = Bytes::copy_from_slice(&frame[HEADER_LEN..header.frame_len - TRAILER_LEN]);
    Ok((header.finish(payload)?, header.frame_len))
}

/// A checked frame header.
struct Header {
    kind: u8,
    session: SessionId,
    number: u64,
    /// Header, payload and trailer.
    frame_len: usize,
}

impl Header {
    fn finish(&self, payload: Bytes) -> Result<Envelope, DecodeError> {
        Ok(Envelope {
            session: self.session,
            number: self.number,
            message: codec::decode_payload(self.kind, payload)?,
        })
    }
}

/// Checks the header at the front of `bytes`, or returns `None` if it has not all arrived.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, DecodeError> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let [m0, m1, m2, m3, version, kind, f0, f1, l0, l1, l2, l3, rest @ ..] = *header;
    let magic = [m0, m1, m2, m3];
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let flags = u16::from_le_bytes([f0, f1]);
    if flags != 0 {
        return Err(DecodeError::NonzeroFlags { flags });
    }
    if codec::kind_name(kind).is_none() {
        return Err(DecodeError::UnknownKind { tag: kind });
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::FrameTooLarge {
            len,
            limit: MAX_PAYLOAD_LEN,
        });
    }
    let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, n4, n5, n6, n7] = rest;
    // len <= 64 MiB, so this cannot overflow even a 32-bit usize.
    let frame_len = HEADER_LEN + len as usize + TRAILER_LEN;
    Ok(Some(Header {
        kind,
        session: SessionId(u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7])),
        number: u64::from_le_bytes([n0, n1, n2, n3, n4, n5, n6, n7]),
        frame_len,
    }))
}

/// Checks the CRC-32C at the end of a whole frame (at least `HEADER_LEN + TRAILER_LEN` bytes).
fn check_crc(frame: &[u8]) -> Result<(), DecodeError> {
    let (contents, trailer) = frame.split_at(frame.len() - TRAILER_LEN);
    let mut expected = [0; TRAILER_LEN];
    expected.copy_from_slice(trailer);
    let expected = u32::from_le_bytes(expected);
    let actual = crc32c::crc32c(contents);
    if expected != actual {
        return Err(DecodeError::ChecksumMismatch { expected, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
