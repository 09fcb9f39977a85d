//! Unit tests for the frame codec: round trips, hand-crafted bad frames, and partial buffers.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use tandem_core::{
    Envelope, Extent, Generation, Geometry, HelloAck, Incarnation, IoFailure, Message, Refusal,
    RegionSet, ReplicaId, RequestId, Seq, SessionId, Stamp,
};

use crate::{
    decode, decode_frame, encode, try_encode, DecodeError, EncodeError, HEADER_LEN,
    MAX_PAYLOAD_LEN, TRAILER_LEN,
};

fn stamp(generation: u64, seq: u64) -> Stamp {
    Stamp::new(Generation(generation), Seq(seq))
}

fn regions() -> RegionSet {
    let mut set = RegionSet::new(130);
    for region in [0, 63, 64, 129] {
        set.insert(region);
    }
    set
}

/// One example of every message variant (and both sides of every result).
fn examples() -> Vec<Message> {
    vec![
        Message::Hello {
            generation: Generation(7),
            replica: ReplicaId(3),
            geometry: Geometry {
                size_bytes: 1 << 30,
                block_size: 4096,
                region_size: 1 << 20,
            },
        },
        Message::Write {
            seq: Seq(10),
            offset: 8192,
            data: Bytes::from_static(b"hello, replica"),
            committed: Seq(9),
        },
        Message::Trim {
            seq: Seq(11),
            offset: 0,
            len: 1 << 20,
            committed: Seq(10),
        },
        Message::Flush {
            seq: Seq(12),
            committed: Seq(11),
        },
        Message::Read {
            request: RequestId(1),
            offset: 4096,
            len: 4096,
        },
        Message::QueryAllocation {
            request: RequestId(4),
            offset: 1 << 20,
            len: 8 << 20,
        },
        Message::RegionsSince {
            request: RequestId(2),
            since: Seq(5),
        },
        Message::StartResync {
            sync_stamp: stamp(7, 12),
            live_after: Some(stamp(7, 30)),
        },
        Message::StartResync {
            sync_stamp: Stamp::ZERO,
            live_after: None,
        },
        Message::ReadSegment {
            request: RequestId(3),
            offset: 1 << 20,
            len: 1 << 20,
        },
        Message::WriteSegment {
            request: RequestId(4),
            offset: 1 << 20,
            data: Bytes::from(vec![0xab; 1000]),
            region_seq: Seq(12),
        },
        Message::FinishResync {
            stamp: stamp(7, 12),
        },
        Message::HelloAck(HelloAck {
            replica: ReplicaId(3),
            incarnation: Incarnation(0xdead_beef),
            consistent: true,
            stamp: stamp(6, 100),
            stamp_exact: true,
            sync_stamp: stamp(0, 0),
            checkpoint: Seq(90),
            dirty: regions(),
        }),
        Message::HelloAck(HelloAck {
            replica: ReplicaId(4),
            incarnation: Incarnation(1),
            consistent: false,
            stamp: Stamp::ZERO,
            stamp_exact: false,
            sync_stamp: stamp(6, 80),
            checkpoint: Seq(0),
            dirty: RegionSet::new(0),
        }),
        Message::Refused(Refusal::Fenced {
            generation_seen: Generation(9),
        }),
        Message::Refused(Refusal::WrongReplica {
            replica: ReplicaId(5),
        }),
        Message::Refused(Refusal::GeometryMismatch),
        Message::WriteDone {
            seq: Seq(10),
            result: Ok(()),
        },
        Message::WriteDone {
            seq: Seq(10),
            result: Err(IoFailure::NoSpace),
        },
        Message::FlushDone {
            seq: Seq(12),
            result: Err(IoFailure::Device),
        },
        Message::ReadDone {
            request: RequestId(1),
            result: Ok(Bytes::from(vec![7; 4096])),
        },
        Message::ReadDone {
            request: RequestId(1),
            result: Err(IoFailure::OutOfRange),
        },
        Message::Allocation {
            request: RequestId(4),
            result: Ok(vec![
                Extent {
                    len: 4096,
                    allocated: true,
                },
                Extent {
                    len: 1 << 20,
                    allocated: false,
                },
            ]),
        },
        Message::Allocation {
            request: RequestId(4),
            result: Ok(Vec::new()),
        },
        Message::Allocation {
            request: RequestId(4),
            result: Err(IoFailure::Device),
        },
        Message::Regions {
            request: RequestId(2),
            regions: regions(),
        },
        Message::ResyncStarted,
        Message::SegmentData {
            request: RequestId(3),
            result: Ok(Bytes::new()),
        },
        Message::SegmentData {
            request: RequestId(3),
            result: Err(IoFailure::Device),
        },
        Message::SegmentWritten {
            request: RequestId(4),
            result: Ok(()),
        },
        Message::ResyncFinished {
            result: Err(IoFailure::NoSpace),
        },
        Message::Ping {
            request: RequestId(11),
        },
        Message::Pong {
            request: RequestId(11),
        },
        Message::Voided { seq: Seq(12) },
    ]
}

fn envelopes() -> Vec<Envelope> {
    examples()
        .into_iter()
        .enumerate()
        .map(|(index, message)| Envelope {
            session: SessionId::new(Generation(7), 2),
            number: index as u64 + 1,
            message,
        })
        .collect()
}

fn encoded(envelope: &Envelope) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(envelope, &mut buf);
    buf
}

/// Builds a frame by hand with a correct length and checksum around any payload.
fn raw_frame(kind: u8, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_slice(b"TNDM");
    buf.put_u8(1);
    buf.put_u8(kind);
    buf.put_u16_le(0);
    buf.put_u32_le(payload.len() as u32);
    buf.put_u64_le(42);
    buf.put_u64_le(1);
    buf.put_slice(payload);
    let crc = crc32c::crc32c(&buf);
    buf.put_u32_le(crc);
    buf
}

/// Rewrites a frame's checksum after the test has tampered with its contents.
fn fix_crc(frame: &mut BytesMut) {
    let end = frame.len() - TRAILER_LEN;
    let crc = crc32c::crc32c(&frame[..end]);
    frame[end..].copy_from_slice(&crc.to_le_bytes());
}

fn decode_err(mut buf: BytesMut) -> DecodeError {
    match decode(&mut buf) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn examples_cover_every_variant() {
    let kinds: BTreeSet<&str> = examples().iter().map(Message::kind).collect();
    assert_eq!(
        kinds.len(),
        25,
        "one example per Message variant: {kinds:?}"
    );
}

#[test]
fn every_variant_round_trips() {
    for envelope in envelopes() {
        let mut buf = encoded(&envelope);
        let frame_len = buf.len();
        let (from_slice, used) = decode_frame(&buf).unwrap();
        assert_eq!(from_slice, envelope);
        assert_eq!(used, frame_len);
        assert_eq!(decode(&mut buf).unwrap(), Some(envelope));
        assert!(buf.is_empty(), "decode consumes exactly the frame");
    }
}

#[test]
fn layout_is_pinned() {
    let envelope = Envelope {
        session: SessionId(0x0102_0304_0506_0708),
        number: 9,
        message: Message::Flush {
            seq: Seq(0x11),
            committed: Seq(0x10),
        },
    };
    let buf = encoded(&envelope);
    let mut expected = vec![];
    expected.extend_from_slice(b"TNDM");
    expected.extend_from_slice(&[1, 0x04, 0, 0]); // version, kind = flush, flags
    expected.extend_from_slice(&16u32.to_le_bytes());
    expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    expected.extend_from_slice(&9u64.to_le_bytes());
    expected.extend_from_slice(&0x11u64.to_le_bytes());
    expected.extend_from_slice(&0x10u64.to_le_bytes());
    let crc = crc32c::crc32c(&expected);
    expected.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(&buf[..], &expected[..]);
    assert_eq!(buf.len(), HEADER_LEN + 16 + TRAILER_LEN);
}

#[test]
fn empty_payload_frame_is_header_and_trailer() {
    let envelope = Envelope {
        session: SessionId(1),
        number: 1,
        message: Message::ResyncStarted,
    };
    assert_eq!(encoded(&envelope).len(), HEADER_LEN + TRAILER_LEN);
}

#[test]
fn data_is_sliced_from_the_frame_without_copying() {
    let envelope = Envelope {
        session: SessionId(1),
        number: 1,
        message: Message::Write {
            seq: Seq(1),
            offset: 0,
            data: Bytes::from(vec![5; 4096]),
            committed: Seq(0),
        },
    };
    let mut buf = encoded(&envelope);
    let range = buf.as_ptr_range();
    let Some(Envelope {
        message: Message::Write { data, .. },
        ..
    }) = decode(&mut buf).unwrap()
    else {
        panic!("expected a write");
    };
    assert!(range.contains(&data.as_ptr()), "data points into the frame");
}

#[test]
fn frame_split_at_every_byte_is_incomplete_until_whole() {
    for envelope in envelopes() {
        let frame = encoded(&envelope);
        for split in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..split]);
            assert_eq!(decode(&mut buf), Ok(None), "split at {split}");
            assert_eq!(buf.len(), split, "incomplete decode consumes nothing");
            buf.extend_from_slice(&frame[split..]);
            assert_eq!(decode(&mut buf), Ok(Some(envelope.clone())));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn stream_fed_one_byte_at_a_time_decodes_every_frame() {
    let sent = envelopes();
    let mut stream = BytesMut::new();
    for envelope in &sent {
        encode(envelope, &mut stream);
    }
    let mut buf = BytesMut::new();
    let mut received = vec![];
    for byte in stream {
        buf.put_u8(byte);
        while let Some(envelope) = decode(&mut buf).unwrap() {
            received.push(envelope);
        }
    }
    assert_eq!(received, sent);
    assert!(buf.is_empty());
}

#[test]
fn two_frames_back_to_back_both_decode() {
    let all = envelopes();
    let (first, second) = (&all[1], &all[10]);
    let mut buf = BytesMut::new();
    encode(first, &mut buf);
    let first_len = buf.len();
    encode(second, &mut buf);
    let (decoded, used) = decode_frame(&buf).unwrap();
    assert_eq!((&decoded, used), (first, first_len));
    assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(first));
    assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(second));
    assert_eq!(decode(&mut buf), Ok(None));
}

#[test]
fn every_single_byte_corruption_is_detected() {
    for envelope in envelopes() {
        let frame = encoded(&envelope);
        for index in 0..frame.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut buf = frame.clone();
                buf[index] ^= flip;
                // Either an error, or (the length field grew) waiting for bytes that never come.
                let result = decode(&mut buf);
                assert!(
                    !matches!(result, Ok(Some(_))),
                    "flip {flip:#x} at {index} of {envelope:?} went unnoticed"
                );
            }
        }
    }
}

// ---- one hand-crafted bad frame per error ----

#[test]
fn bad_magic() {
    let mut frame = encoded(&envelopes()[0]);
    frame[..4].copy_from_slice(b"HTTP");
    let error = decode_err(frame);
    assert_eq!(error, DecodeError::BadMagic { found: *b"HTTP" });
    assert_eq!(error.to_string(), "bad magic \"HTTP\": expected \"TNDM\"");
}

#[test]
fn unsupported_version() {
    let mut frame = encoded(&envelopes()[0]);
    frame[4] = 2;
    let error = decode_err(frame);
    assert_eq!(
        error,
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    assert!(error.to_string().contains("version 2"));
    assert!(error.to_string().contains("supports version 1"));
}

#[test]
fn unknown_kind_is_rejected_from_the_header() {
    for tag in [0x00, 0x0e, 0x40, 0x4d, 0xff] {
        // Only the header: the tag is rejected before the payload arrives.
        let frame = raw_frame(tag, &[0; 8]);
        let error = decode_err(BytesMut::from(&frame[..HEADER_LEN]));
        assert_eq!(error, DecodeError::UnknownKind { tag });
        assert!(error.to_string().contains(&format!("{tag:#04x}")));
    }
}

#[test]
fn nonzero_flags() {
    let mut frame = encoded(&envelopes()[0]);
    frame[6] = 1;
    fix_crc(&mut frame);
    assert_eq!(decode_err(frame), DecodeError::NonzeroFlags { flags: 1 });
}

#[test]
fn oversize_length_is_rejected_before_buffering() {
    let mut header = raw_frame(0x02, &[]);
    header.truncate(HEADER_LEN);
    header[8..12].copy_from_slice(&(MAX_PAYLOAD_LEN + 1).to_le_bytes());
    let error = decode_err(header.clone());
    assert_eq!(
        error,
        DecodeError::FrameTooLarge {
            len: MAX_PAYLOAD_LEN + 1,
            limit: MAX_PAYLOAD_LEN
        }
    );
    assert!(error.to_string().contains(&MAX_PAYLOAD_LEN.to_string()));
    header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_err(header),
        DecodeError::FrameTooLarge { len: u32::MAX, .. }
    ));
}

#[test]
fn maximum_length_is_accepted_and_waits_for_the_payload() {
    let mut header = raw_frame(0x02, &[]);
    header.truncate(HEADER_LEN);
    header[8..12].copy_from_slice(&MAX_PAYLOAD_LEN.to_le_bytes());
    assert_eq!(decode(&mut header), Ok(None));
}

#[test]
fn checksum_mismatch() {
    let mut frame = encoded(&envelopes()[1]);
    let original = frame.clone();
    frame[HEADER_LEN] ^= 0x01;
    let mut buf = frame.clone();
    let error = decode(&mut buf).unwrap_err();
    let DecodeError::ChecksumMismatch { expected, actual } = error else {
        panic!("expected a checksum mismatch, got {error:?}");
    };
    let end = original.len() - TRAILER_LEN;
    assert_eq!(
        expected,
        u32::from_le_bytes(original[end..].try_into().unwrap())
    );
    assert_eq!(actual, crc32c::crc32c(&frame[..end]));
    assert_eq!(buf, frame, "a bad frame is left in the buffer");
}

#[test]
fn truncated_payload() {
    // A flush needs 16 bytes; give it 12.
    let error = decode_err(raw_frame(0x04, &[0; 12]));
    assert_eq!(
        error,
        DecodeError::Truncated {
            kind: "flush",
            field: "committed",
            needed: 8,
            available: 4
        }
    );
    assert!(error.to_string().contains("flush"));

    // A write whose data length runs past the end of the payload.
    let mut payload = vec![];
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&0u64.to_le_bytes());
    payload.extend_from_slice(&1000u32.to_le_bytes());
    payload.extend_from_slice(&[0; 10]);
    assert_eq!(
        decode_err(raw_frame(0x02, &payload)),
        DecodeError::Truncated {
            kind: "write",
            field: "data",
            needed: 1000,
            available: 10
        }
    );

    // A region set claiming u32::MAX regions: rejected without allocating 512 MiB of words.
    let mut payload = vec![];
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_err(raw_frame(0x46, &payload)),
        DecodeError::Truncated {
            kind: "regions",
            field: "regions",
            needed: (u32::MAX as usize).div_ceil(64) * 8,
            available: 0
        }
    );
}

#[test]
fn trailing_bytes() {
    let mut payload = vec![0; 16];
    payload.push(0);
    let error = decode_err(raw_frame(0x04, &payload));
    assert_eq!(
        error,
        DecodeError::TrailingBytes {
            kind: "flush",
            count: 1
        }
    );
    assert_eq!(
        decode_err(raw_frame(0x47, &[1, 2, 3])),
        DecodeError::TrailingBytes {
            kind: "resync-started",
            count: 3
        }
    );
}

#[test]
fn invalid_fields() {
    // HelloAck with consistent = 2.
    let mut payload = vec![0; 16];
    payload.push(2);
    payload.extend_from_slice(&[0; 40]);
    payload.extend_from_slice(&0u32.to_le_bytes());
    let error = decode_err(raw_frame(0x41, &payload));
    assert_eq!(
        error,
        DecodeError::InvalidBool {
            kind: "hello-ack",
            field: "consistent",
            value: 2
        }
    );
    assert!(error.to_string().contains("consistent"));

    // WriteDone with result tag 2.
    let mut payload = vec![0; 8];
    payload.push(2);
    assert_eq!(
        decode_err(raw_frame(0x43, &payload)),
        DecodeError::InvalidResultTag {
            kind: "write-done",
            field: "result",
            value: 2
        }
    );

    // ResyncFinished with Err(code 0) and Err(code 4).
    for value in [0, 4] {
        assert_eq!(
            decode_err(raw_frame(0x4a, &[1, value])),
            DecodeError::InvalidIoFailure {
                kind: "resync-finished",
                field: "result",
                value
            }
        );
    }

    // Refused with reason 0.
    assert_eq!(
        decode_err(raw_frame(0x42, &[0])),
        DecodeError::InvalidRefusal { value: 0 }
    );

    // Allocation: one extent whose `allocated` byte is 2; then a count of extents the payload
    // does not hold (refused before allocating room for them).
    let mut payload = vec![0; 8];
    payload.push(0);
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.extend_from_slice(&4096u64.to_le_bytes());
    payload.push(2);
    assert_eq!(
        decode_err(raw_frame(0x4c, &payload)),
        DecodeError::InvalidBool {
            kind: "allocation",
            field: "result",
            value: 2
        }
    );
    let mut payload = vec![0; 8];
    payload.push(0);
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_err(raw_frame(0x4c, &payload)),
        DecodeError::Truncated {
            kind: "allocation",
            ..
        }
    ));

    // Regions: 3 regions but bit 3 set.
    let mut payload = vec![0; 8];
    payload.extend_from_slice(&3u32.to_le_bytes());
    payload.extend_from_slice(&0b1000u64.to_le_bytes());
    assert_eq!(
        decode_err(raw_frame(0x46, &payload)),
        DecodeError::InvalidRegionSet {
            kind: "regions",
            field: "regions",
            region_count: 3
        }
    );
}

#[test]
fn decode_frame_reports_incomplete_input() {
    let frame = encoded(&envelopes()[1]);
    assert_eq!(
        decode_frame(&frame[..10]).unwrap_err(),
        DecodeError::Incomplete {
            needed: HEADER_LEN,
            available: 10
        }
    );
    assert_eq!(
        decode_frame(&frame[..frame.len() - 1]).unwrap_err(),
        DecodeError::Incomplete {
            needed: frame.len(),
            available: frame.len() - 1
        }
    );
}

fn oversized_write() -> Envelope {
    Envelope {
        session: SessionId(1),
        number: 1,
        message: Message::Write {
            seq: Seq(1),
            offset: 0,
            data: Bytes::from(vec![0; MAX_PAYLOAD_LEN as usize]),
            committed: Seq(0),
        },
    }
}

#[test]
fn oversized_payload_is_not_encoded() {
    let mut out = BytesMut::from(&b"earlier frames"[..]);
    let error = try_encode(&oversized_write(), &mut out).unwrap_err();
    assert!(matches!(
        error,
        EncodeError::PayloadTooLarge {
            kind: "write",
            limit: MAX_PAYLOAD_LEN,
            ..
        }
    ));
    assert_eq!(&out[..], b"earlier frames", "out is left as it was");
}

#[test]
#[should_panic(expected = "exceeds the frame limit")]
fn encode_panics_on_oversized_payload() {
    encode(&oversized_write(), &mut BytesMut::new());
}
