//! Fuzz target: decodes arbitrary bytes as a frame stream and checks every decoded envelope
//! re-encodes to a frame that decodes to the same envelope.
//!
//! Random mutations almost never leave a frame's CRC-32C intact, so each input is decoded twice:
//! as given (exercising the header and checksum checks), and with the checksum of every complete
//! frame repaired (so mutated payloads reach the payload parser).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tandem_core::Envelope;
use tandem_wire::{decode, decode_frame, encode, HEADER_LEN, MAX_PAYLOAD_LEN, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&repair_checksums(data));
});

/// Decodes `data` until the decoder wants more bytes or fails, checking every envelope it yields.
fn check(data: &[u8]) {
    // The slice entry point must agree with the stream one on the first frame.
    let first = decode_frame(data);

    let mut buf = BytesMut::from(data);
    let mut decoded: Vec<Envelope> = Vec::new();
    // Each successful decode consumes at least a header and a trailer, so this terminates.
    while let Ok(Some(envelope)) = decode(&mut buf) {
        let mut reencoded = BytesMut::new();
        encode(&envelope, &mut reencoded);
        let again = decode(&mut reencoded).expect("re-encoded frame decodes");
        assert_eq!(again.as_ref(), Some(&envelope), "re-encoding round trips");
        assert!(reencoded.is_empty(), "re-encoded frame is consumed exactly");
        decoded.push(envelope);
    }

    match (&first, decoded.first()) {
        (Ok((from_slice, _)), Some(from_stream)) => assert_eq!(from_slice, from_stream),
        (Ok(_), None) => panic!("decode_frame succeeded where decode did not"),
        (Err(error), Some(_)) => panic!("decode_frame failed ({error}) where decode succeeded"),
        (Err(_), None) => {}
    }
}

/// A copy of `data` in which every complete frame (as its length fields delimit them) carries
/// the right checksum.
fn repair_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut start = 0;
    while out.len() - start >= HEADER_LEN {
        let len_field = [
            out[start + 8],
            out[start + 9],
            out[start + 10],
            out[start + 11],
        ];
        let len = u32::from_le_bytes(len_field);
        if len > MAX_PAYLOAD_LEN {
            break;
        }
        let end = start + HEADER_LEN + len as usize + TRAILER_LEN;
        if end > out.len() {
            break;
        }
        let crc = crc32c::crc32c(&out[start..end - TRAILER_LEN]);
        out[end - TRAILER_LEN..end].copy_from_slice(&crc.to_le_bytes());
        start = end;
    }
    out
}
