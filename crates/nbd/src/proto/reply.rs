//! What a client decodes of the server's replies once structured replies were negotiated: the
//! header of either reply kind ([`decode_reply_header`]) and the payloads of the chunks this
//! crate's client follows (offset data, offset hole, block status, errors).

use super::constants::*;
use super::frame::{be_u16, be_u32, be_u64, DecodeError};

/// The largest chunk payload a client accepts: a full read of [`MAX_PAYLOAD`] with its offset,
/// and room for an error message or a long block status list.
pub const MAX_CHUNK_PAYLOAD: u32 = MAX_PAYLOAD + 8;

/// The first 16 bytes of a reply: a simple reply, or the start of a chunk header (whose last
/// 4 bytes, the payload length, follow; see [`decode_chunk_length`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple { error: u32, handle: u64 },
    Chunk { flags: u16, kind: u16, handle: u64 },
}

/// Decodes the first [`SIMPLE_REPLY_LEN`] bytes of a reply; `structured` says whether chunks
/// were negotiated (a chunk where they were not is an error).
pub fn decode_reply_header(
    buf: &[u8; SIMPLE_REPLY_LEN],
    structured: bool,
) -> Result<ReplyHeader, DecodeError> {
    match be_u32(buf, 0) {
        SIMPLE_REPLY_MAGIC => Ok(ReplyHeader::Simple {
            error: be_u32(buf, 4),
            handle: be_u64(buf, 8),
        }),
        STRUCTURED_REPLY_MAGIC if structured => Ok(ReplyHeader::Chunk {
            flags: be_u16(buf, 4),
            kind: be_u16(buf, 6),
            handle: be_u64(buf, 8),
        }),
        STRUCTURED_REPLY_MAGIC => Err(DecodeError::UnexpectedStructuredReply),
        other => Err(DecodeError::BadReplyMagic(other)),
    }
}

/// The payload length that ends a chunk header, checked against [`MAX_CHUNK_PAYLOAD`].
pub fn decode_chunk_length(buf: &[u8; 4]) -> Result<u32, DecodeError> {
    let length = be_u32(buf, 0);
    if length > MAX_CHUNK_PAYLOAD {
        return Err(DecodeError::ChunkTooLong(length));
    }
    Ok(length)
}

/// One chunk's payload, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: data read at `offset`.
    Data { offset: u64, data: &'a [u8] },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` bytes at `offset` read as zeroes.
    Hole { offset: u64, length: u32 },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`: `(length, flags)` descriptors of context `context`.
    BlockStatus {
        context: u32,
        descriptors: Vec<(u32, u32)>,
    },
    /// `NBD_REPLY_TYPE_ERROR` or `NBD_REPLY_TYPE_ERROR_OFFSET`.
    Error {
        error: u32,
        message: String,
        offset: Option<u64>,
    },
    /// A type this client does not know; the spec lets a client skip non-error types.
    Unknown(u16),
}

/// Decodes the payload of a chunk of type `kind`. Never panics; a malformed payload is an
/// error (the connection cannot be trusted after it).
pub fn decode_chunk(kind: u16, payload: &[u8]) -> Result<Chunk<'_>, DecodeError> {
    let malformed = |what| Err(DecodeError::MalformedChunk { kind, what });
    match kind {
        REPLY_TYPE_NONE if payload.is_empty() => Ok(Chunk::None),
        REPLY_TYPE_NONE => malformed("a NONE chunk with a payload"),
        REPLY_TYPE_OFFSET_DATA if payload.len() > 8 => Ok(Chunk::Data {
            offset: be_u64(payload, 0),
            data: &payload[8..],
        }),
        REPLY_TYPE_OFFSET_DATA => malformed("an OFFSET_DATA chunk without data"),
        REPLY_TYPE_OFFSET_HOLE if payload.len() == 12 => Ok(Chunk::Hole {
            offset: be_u64(payload, 0),
            length: be_u32(payload, 8),
        }),
        REPLY_TYPE_OFFSET_HOLE => malformed("an OFFSET_HOLE chunk that is not 12 bytes"),
        REPLY_TYPE_BLOCK_STATUS if payload.len() >= 12 && (payload.len() - 4).is_multiple_of(8) => {
            let descriptors = payload[4..]
                .chunks_exact(8)
                .map(|pair| (be_u32(pair, 0), be_u32(pair, 4)))
                .collect();
            Ok(Chunk::BlockStatus {
                context: be_u32(payload, 0),
                descriptors,
            })
        }
        REPLY_TYPE_BLOCK_STATUS => malformed("a BLOCK_STATUS chunk without whole descriptors"),
        REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
            if payload.len() < 6 {
                return malformed("an error chunk shorter than its value and message length");
            }
            let error = be_u32(payload, 0);
            let message_len = usize::from(be_u16(payload, 4));
            let extra = if kind == REPLY_TYPE_ERROR_OFFSET {
                8
            } else {
                0
            };
            if payload.len() != 6 + message_len + extra {
                return malformed("an error chunk whose length does not match its message");
            }
            let message = String::from_utf8_lossy(&payload[6..6 + message_len]).into_owned();
            let offset = (extra == 8).then(|| be_u64(payload, 6 + message_len));
            if error == 0 {
                return malformed("an error chunk with error value 0");
            }
            Ok(Chunk::Error {
                error,
                message,
                offset,
            })
        }
        // Unknown error types must still fail the request (the high bit marks errors).
        kind if kind & (1 << 15) != 0 => {
            if payload.len() < 4 {
                return malformed("an error chunk shorter than its value");
            }
            Ok(Chunk::Error {
                error: match be_u32(payload, 0) {
                    0 => EIO,
                    error => error,
                },
                message: String::new(),
                offset: None,
            })
        }
        kind => Ok(Chunk::Unknown(kind)),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::proto::{
        encode_block_status, encode_error_chunk, encode_none_chunk, encode_offset_data_header,
        encode_offset_hole, encode_simple_reply,
    };

    /// Splits an encoded chunk into its header and payload, as the client reads them.
    fn split(encoded: &[u8]) -> (ReplyHeader, u32, &[u8]) {
        let head: [u8; 16] = encoded[..16].try_into().unwrap();
        let header = decode_reply_header(&head, true).unwrap();
        let length = decode_chunk_length(encoded[16..20].try_into().unwrap()).unwrap();
        (header, length, &encoded[20..])
    }

    #[test]
    fn every_chunk_the_server_sends_decodes_back() {
        let mut buf = BytesMut::new();
        encode_offset_data_header(&mut buf, REPLY_FLAG_DONE, 7, 4096, 3);
        buf.extend_from_slice(b"abc");
        let (header, length, payload) = split(&buf);
        assert_eq!(
            header,
            ReplyHeader::Chunk {
                flags: REPLY_FLAG_DONE,
                kind: REPLY_TYPE_OFFSET_DATA,
                handle: 7
            }
        );
        assert_eq!(length, 11);
        assert_eq!(
            decode_chunk(REPLY_TYPE_OFFSET_DATA, payload),
            Ok(Chunk::Data {
                offset: 4096,
                data: b"abc"
            })
        );

        let mut buf = BytesMut::new();
        encode_offset_hole(&mut buf, 0, 8, 512, 1024);
        let (_, _, payload) = split(&buf);
        assert_eq!(
            decode_chunk(REPLY_TYPE_OFFSET_HOLE, payload),
            Ok(Chunk::Hole {
                offset: 512,
                length: 1024
            })
        );

        let mut buf = BytesMut::new();
        encode_block_status(&mut buf, REPLY_FLAG_DONE, 9, 1, &[(4096, 3), (512, 0)]);
        let (_, _, payload) = split(&buf);
        assert_eq!(
            decode_chunk(REPLY_TYPE_BLOCK_STATUS, payload),
            Ok(Chunk::BlockStatus {
                context: 1,
                descriptors: vec![(4096, 3), (512, 0)]
            })
        );

        for offset in [None, Some(77)] {
            let mut buf = BytesMut::new();
            encode_error_chunk(&mut buf, REPLY_FLAG_DONE, 10, EIO, "short read", offset);
            let (header, _, payload) = split(&buf);
            let ReplyHeader::Chunk { kind, .. } = header else {
                panic!("{header:?}")
            };
            assert_eq!(
                decode_chunk(kind, payload),
                Ok(Chunk::Error {
                    error: EIO,
                    message: "short read".into(),
                    offset
                })
            );
        }

        let mut buf = BytesMut::new();
        encode_none_chunk(&mut buf, 11);
        let (_, length, payload) = split(&buf);
        assert_eq!(length, 0);
        assert_eq!(decode_chunk(REPLY_TYPE_NONE, payload), Ok(Chunk::None));

        let mut buf = BytesMut::new();
        encode_simple_reply(&mut buf, EPERM, 12);
        let head: [u8; 16] = buf[..16].try_into().unwrap();
        assert_eq!(
            decode_reply_header(&head, false),
            Ok(ReplyHeader::Simple {
                error: EPERM,
                handle: 12
            })
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut buf = BytesMut::new();
        encode_none_chunk(&mut buf, 1);
        let head: [u8; 16] = buf[..16].try_into().unwrap();
        assert_eq!(
            decode_reply_header(&head, false),
            Err(DecodeError::UnexpectedStructuredReply)
        );
        assert_eq!(
            decode_reply_header(&[0; 16], true),
            Err(DecodeError::BadReplyMagic(0))
        );
        assert_eq!(
            decode_chunk_length(&(MAX_CHUNK_PAYLOAD + 1).to_be_bytes()),
            Err(DecodeError::ChunkTooLong(MAX_CHUNK_PAYLOAD + 1))
        );
        for (kind, payload) in [
            (REPLY_TYPE_NONE, &[1u8][..]),
            (REPLY_TYPE_OFFSET_DATA, &[0; 8][..]),
            (REPLY_TYPE_OFFSET_HOLE, &[0; 11][..]),
            (REPLY_TYPE_BLOCK_STATUS, &[0; 4][..]),
            (REPLY_TYPE_BLOCK_STATUS, &[0; 13][..]),
            (REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0][..]),
            (REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x'][..]),
            (REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0][..]),
            (REPLY_TYPE_ERROR_OFFSET, &[0, 0, 0, 5, 0, 0, 1][..]),
            ((1 << 15) | 9, &[0, 0][..]),
        ] {
            assert!(
                matches!(
                    decode_chunk(kind, payload),
                    Err(DecodeError::MalformedChunk { .. })
                ),
                "{kind} {payload:?}"
            );
        }
        assert_eq!(decode_chunk(42, b"whatever"), Ok(Chunk::Unknown(42)));
        assert!(matches!(
            decode_chunk((1 << 15) | 9, &[0, 0, 0, 0]),
            Ok(Chunk::Error { error, .. }) if error != 0
        ));
    }
}
