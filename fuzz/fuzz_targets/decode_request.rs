//! Fuzz target: the NBD server's decoders (`tandem_nbd::proto`) never panic on any bytes, and
//! what they accept is what the protocol allows.
//!
//! The first input byte picks the negotiated parameters (structured replies, read-only, block
//! sizes, export size, which commands were advertised). The rest is decoded three ways:
//!
//! - as handshake input: client flags, an option header, and option data for an option code
//!   (a known one most of the time); a decoded option must re-encode to an option that decodes
//!   to the same value;
//! - as a stream of transmission requests (header, plus payload for writes), each checked with
//!   `validate_request`: an accepted request must be in bounds, aligned, within the maximum
//!   block size and allowed by the negotiation, and every header must re-encode to its bytes;
//! - as a device's extents for a block status reply, which must come out non-empty, nonzero,
//!   and no longer than the request.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tandem_nbd::proto::{self, ClientOption, Command, DecodeError, TransmissionParams};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    check_handshake(selector, rest);
    check_requests(&params(selector, rest), rest);
    check_block_status(selector, rest);
});

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    let n = b.len().min(4);
    a[..n].copy_from_slice(&b[..n]);
    u32::from_be_bytes(a)
}

fn check_handshake(selector: u8, rest: &[u8]) {
    let _ = proto::decode_client_flags(rest);
    if let Ok(header) = proto::decode_option_header(rest) {
        assert!(header.length <= proto::MAX_OPTION_LEN);
    }
    // Mostly known options (0..=12), sometimes any code from the data.
    let (code, body) = if selector & 0x80 == 0 {
        (u32::from(selector % 13), rest)
    } else {
        (be_u32(rest), rest.get(4..).unwrap_or(&[]))
    };
    let Ok(option) = proto::decode_option(code, body) else {
        return;
    };
    assert_eq!(option.code(), code);
    if let ClientOption::Unknown(_) = option {
        return;
    }
    let mut encoded = BytesMut::new();
    option.encode(&mut encoded);
    let header = proto::decode_option_header(&encoded).expect("re-encoded header decodes");
    assert_eq!(
        header.length as usize,
        encoded.len() - proto::OPTION_HEADER_LEN
    );
    let again = proto::decode_option(header.option, &encoded[proto::OPTION_HEADER_LEN..]);
    assert_eq!(again.as_ref(), Ok(&option), "option re-encodes to itself");
}

fn params(selector: u8, rest: &[u8]) -> TransmissionParams {
    let bit = |n: u8| selector & (1 << n) != 0;
    let min_block = [1u32, 512, 4096, 65536][usize::from(selector >> 2 & 3)];
    let size = match selector >> 4 & 3 {
        0 => 0,
        1 => 1 << 20,
        2 => u64::from(be_u32(rest)) * u64::from(min_block),
        _ => (u64::MAX / u64::from(min_block)) * u64::from(min_block),
    };
    let max_block = if bit(6) {
        proto::MAX_PAYLOAD
    } else {
        64 * 1024
    };
    TransmissionParams {
        size,
        read_only: bit(1),
        can_flush: bit(6),
        can_fua: bit(7),
        can_trim: !bit(6),
        can_write_zeroes: bit(7),
        can_multi_conn: bit(0),
        min_block,
        preferred_block: min_block.max(4096),
        max_block,
        structured: bit(0),
        meta_context: bit(0).then_some(proto::BASE_ALLOCATION_ID),
    }
}

fn check_requests(p: &TransmissionParams, mut rest: &[u8]) {
    while rest.len() >= proto::REQUEST_HEADER_LEN {
        let header = match proto::decode_request_header(rest) {
            Ok(header) => header,
            // The server closes the connection here: nothing after a bad magic is read.
            Err(DecodeError::BadMagic(_)) => return,
            Err(other) => panic!("a full header cannot be truncated: {other}"),
        };
        let mut encoded = BytesMut::new();
        header.encode(&mut encoded);
        assert_eq!(&encoded[..], &rest[..proto::REQUEST_HEADER_LEN]);
        rest = &rest[proto::REQUEST_HEADER_LEN..];

        let payload = match header.payload_len() {
            Ok(n) => n as usize,
            // Answered EINVAL, then the connection closes.
            Err(_) => {
                assert!(header.kind == proto::CMD_WRITE && header.length > proto::MAX_PAYLOAD);
                return;
            }
        };
        if payload > rest.len() {
            return; // the server would wait for the rest of the payload
        }
        rest = &rest[payload..];

        let Ok(command) = proto::validate_request(&header, p) else {
            continue;
        };
        let min = u64::from(p.min_block);
        let in_bounds = |offset: u64, length: u32| {
            let end = offset.checked_add(u64::from(length)).expect("no overflow");
            assert!(end <= p.size, "{command:?} beyond {}", p.size);
            assert_eq!(offset % min, 0, "{command:?} unaligned");
            assert_eq!(u64::from(length) % min, 0, "{command:?} unaligned");
        };
        match command {
            Command::Read { offset, length } => {
                in_bounds(offset, length);
                assert!(length <= p.max_block);
            }
            Command::Write {
                offset,
                length,
                fua,
            } => {
                in_bounds(offset, length);
                assert!(length <= p.max_block && !p.read_only && (!fua || p.can_fua));
                assert_eq!(length as usize, payload);
            }
            Command::Trim { offset, length, .. } => {
                in_bounds(offset, length);
                assert!(p.can_trim && !p.read_only);
            }
            Command::WriteZeroes { offset, length, .. } => {
                in_bounds(offset, length);
                assert!(p.can_write_zeroes && !p.read_only && length <= p.max_block);
            }
            Command::BlockStatus { offset, length, .. } => {
                in_bounds(offset, length);
                assert!(p.meta_context.is_some() && length > 0);
            }
            Command::Flush => {
                assert!(p.can_flush && header.offset == 0 && header.length == 0);
            }
            Command::Disconnect => return,
        }
    }
}

fn check_block_status(selector: u8, rest: &[u8]) {
    let length = be_u32(rest).max(1);
    let extents = rest
        .get(4..)
        .unwrap_or(&[])
        .chunks_exact(5)
        .map(|c| (be_u32(c), u32::from(c[4] & 3)));
    let req_one = selector & 1 != 0;
    let max = usize::from(selector >> 1) + 1;
    let descriptors = proto::block_status_descriptors(extents, length, req_one, max);
    assert!(!descriptors.is_empty());
    assert!(descriptors.len() <= if req_one { 1 } else { max });
    assert!(descriptors.iter().all(|d| d.0 > 0));
    let total: u64 = descriptors.iter().map(|d| u64::from(d.0)).sum();
    assert!(total <= u64::from(length));
    let mut encoded = BytesMut::new();
    proto::encode_block_status(&mut encoded, 1, 7, 1, &descriptors);
    assert_eq!(
        encoded.len(),
        proto::CHUNK_HEADER_LEN + 4 + 8 * descriptors.len()
    );

    let message = String::from_utf8_lossy(rest);
    let mut chunk = BytesMut::new();
    proto::encode_error_chunk(&mut chunk, 1, 7, proto::EIO, &message, None);
    let declared = u32::from_be_bytes([chunk[16], chunk[17], chunk[18], chunk[19]]) as usize;
    assert_eq!(declared, chunk.len() - proto::CHUNK_HEADER_LEN);
    let message_len = usize::from(u16::from_be_bytes([chunk[24], chunk[25]]));
    assert!(message_len <= proto::MAX_STRING_LEN && 6 + message_len == declared);
}
