//! Fuzz target: the NBD client's decoders (`tandem_nbd::proto`, the server's answers as a client
//! reads them) never panic on any bytes, and what the server's encoders write decodes back to
//! what was encoded.
//!
//! The input is decoded as a greeting, an option reply header, the data of an `NBD_REP_INFO`
//! reply, an `NBD_OPT_EXPORT_NAME` reply, a simple reply, and (structured replies) a reply
//! header, a chunk length and a chunk payload of every type. Then the values read from the same
//! bytes are encoded by the server's encoders and must decode to themselves.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tandem_nbd::proto::{self, Info, InfoItem};

fuzz_target!(|data: &[u8]| {
    decode_everything(data);
    check_round_trips(data);
});

/// The first `N` bytes of `data`, zero-padded.
fn prefix<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = data.len().min(N);
    out[..n].copy_from_slice(&data[..n]);
    out
}

fn decode_everything(data: &[u8]) {
    let _ = proto::decode_greeting(&prefix::<{ proto::GREETING_LEN }>(data));
    if let Ok(header) =
        proto::decode_option_reply_header(&prefix::<{ proto::OPTION_REPLY_HEADER_LEN }>(data))
    {
        assert!(header.length <= proto::MAX_OPTION_REPLY);
    }
    match proto::decode_info(data) {
        Ok(InfoItem::Export { .. }) => assert_eq!(data.len(), 12),
        Ok(InfoItem::BlockSize(_)) => assert_eq!(data.len(), 14),
        Ok(InfoItem::Other) | Err(_) => {}
    }
    if let Ok((_, _)) = proto::decode_export_name_reply(data) {
        assert!(data.len() >= 10);
    }
    let _ = proto::decode_simple_reply(&prefix::<{ proto::SIMPLE_REPLY_LEN }>(data));
    for structured in [false, true] {
        let _ =
            proto::decode_reply_header(&prefix::<{ proto::SIMPLE_REPLY_LEN }>(data), structured);
    }
    if let Ok(length) = proto::decode_chunk_length(&prefix::<4>(data)) {
        assert!(length <= proto::MAX_CHUNK_PAYLOAD);
    }
    let kind = u16::from_be_bytes(prefix::<2>(data));
    let payload = data.get(2..).unwrap_or(&[]);
    for kind in [
        kind,
        proto::REPLY_TYPE_NONE,
        proto::REPLY_TYPE_OFFSET_DATA,
        proto::REPLY_TYPE_OFFSET_HOLE,
        proto::REPLY_TYPE_BLOCK_STATUS,
        proto::REPLY_TYPE_ERROR,
        proto::REPLY_TYPE_ERROR_OFFSET,
    ] {
        match proto::decode_chunk(kind, payload) {
            Ok(proto::Chunk::Data { data, .. }) => assert!(!data.is_empty()),
            Ok(proto::Chunk::Error { error, .. }) => assert_ne!(error, 0),
            Ok(proto::Chunk::BlockStatus { descriptors, .. }) => assert!(!descriptors.is_empty()),
            Ok(_) | Err(_) => {}
        }
    }
}

fn be_u64(data: &[u8]) -> u64 {
    u64::from_be_bytes(prefix::<8>(data))
}

fn check_round_trips(data: &[u8]) {
    let size = be_u64(data);
    let flags = u16::from_be_bytes(prefix::<2>(data.get(8..).unwrap_or(&[])));
    let handle = be_u64(data.get(10..).unwrap_or(&[]));
    let error = u32::from_be_bytes(prefix::<4>(data.get(18..).unwrap_or(&[])));

    let mut greeting = BytesMut::new();
    proto::encode_greeting(&mut greeting);
    let greeting: [u8; proto::GREETING_LEN] = greeting[..].try_into().expect("greeting length");
    assert!(proto::decode_greeting(&greeting).is_ok());

    for info in [
        Info::Export { size, flags },
        Info::BlockSize {
            min: error,
            preferred: error.rotate_left(8),
            max: error.rotate_left(16),
        },
    ] {
        let mut reply = BytesMut::new();
        proto::encode_rep_info(&mut reply, proto::OPT_GO, &info);
        let header: [u8; proto::OPTION_REPLY_HEADER_LEN] = reply[..proto::OPTION_REPLY_HEADER_LEN]
            .try_into()
            .expect("header length");
        let header = proto::decode_option_reply_header(&header).expect("our header decodes");
        assert_eq!(header.option, proto::OPT_GO);
        assert_eq!(header.reply_type, proto::REP_INFO);
        let body = &reply[proto::OPTION_REPLY_HEADER_LEN..];
        assert_eq!(header.length as usize, body.len());
        let decoded = proto::decode_info(body).expect("our info decodes");
        match (info, decoded) {
            (Info::Export { size: s, flags: f }, InfoItem::Export { size, flags }) => {
                assert_eq!((s, f), (size, flags));
            }
            (
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                },
                InfoItem::BlockSize(sizes),
            ) => {
                assert_eq!(
                    (min, preferred, max),
                    (sizes.minimum, sizes.preferred, sizes.maximum)
                );
            }
            (info, decoded) => panic!("{info:?} decoded as {decoded:?}"),
        }
    }

    for no_zeroes in [false, true] {
        let mut reply = BytesMut::new();
        proto::encode_export_name_reply(&mut reply, size, flags, no_zeroes);
        assert_eq!(
            proto::decode_export_name_reply(&reply),
            Ok((size, flags)),
            "export name reply, no_zeroes {no_zeroes}"
        );
    }

    let mut reply = BytesMut::new();
    proto::encode_simple_reply(&mut reply, error, handle);
    let reply: [u8; proto::SIMPLE_REPLY_LEN] = reply[..].try_into().expect("reply length");
    let decoded = proto::decode_simple_reply(&reply).expect("our simple reply decodes");
    assert_eq!((decoded.error, decoded.handle), (error, handle));
}
