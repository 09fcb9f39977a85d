//! Property tests for the wire codec: random messages round trip, and no input makes decoding panic.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use tandem_core::{
    Envelope, Extent, Generation, Geometry, HelloAck, Incarnation, IoFailure, Message, Refusal,
    RegionSet, ReplicaId, RequestId, Seq, SessionId, Stamp,
};
use tandem_wire::{decode, decode_frame, encode, HEADER_LEN};

// ---- strategies ----

fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..200).prop_map(Bytes::from)
}

fn seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq)
}

fn request() -> impl Strategy<Value = RequestId> {
    any::<u64>().prop_map(RequestId)
}

fn stamp() -> impl Strategy<Value = Stamp> {
    (any::<u64>(), any::<u64>()).prop_map(|(g, s)| Stamp::new(Generation(g), Seq(s)))
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(size_bytes, block_size, region_size)| {
        Geometry {
            size_bytes,
            block_size,
            region_size,
        }
    })
}

fn failure() -> impl Strategy<Value = IoFailure> {
    prop_oneof![
        Just(IoFailure::NoSpace),
        Just(IoFailure::Device),
        Just(IoFailure::OutOfRange),
    ]
}

fn unit_result() -> impl Strategy<Value = Result<(), IoFailure>> {
    prop_oneof![Just(Ok(())), failure().prop_map(Err)]
}

fn bytes_result() -> impl Strategy<Value = Result<Bytes, IoFailure>> {
    prop_oneof![data().prop_map(Ok), failure().prop_map(Err)]
}

fn extents_result() -> impl Strategy<Value = Result<Vec<Extent>, IoFailure>> {
    let extent =
        (any::<u64>(), any::<bool>()).prop_map(|(len, allocated)| Extent { len, allocated });
    prop_oneof![vec(extent, 0..40).prop_map(Ok), failure().prop_map(Err)]
}

/// A region set of 0..300 regions (so 0, 1 and several words, full and partial) with random bits.
fn region_set() -> impl Strategy<Value = RegionSet> {
    (0u32..300).prop_flat_map(|count| {
        vec(any::<u64>(), (count as usize).div_ceil(64)).prop_map(move |mut words| {
            let tail = count % 64;
            if let (Some(last), true) = (words.last_mut(), tail != 0) {
                *last &= (1u64 << tail) - 1;
            }
            RegionSet::from_words(count, words).expect("masked words fit the count")
        })
    })
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        any::<u64>().prop_map(|g| Refusal::Fenced {
            generation_seen: Generation(g)
        }),
        any::<u64>().prop_map(|r| Refusal::WrongReplica {
            replica: ReplicaId(r)
        }),
        Just(Refusal::GeometryMismatch),
    ]
}

fn target_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), geometry()).prop_map(|(g, r, geometry)| Message::Hello {
            generation: Generation(g),
            replica: ReplicaId(r),
            geometry,
        }),
        (seq(), any::<u64>(), data(), seq()).prop_map(|(seq, offset, data, committed)| {
            Message::Write {
                seq,
                offset,
                data,
                committed,
            }
        }),
        (seq(), any::<u64>(), any::<u64>(), seq()).prop_map(|(seq, offset, len, committed)| {
            Message::Trim {
                seq,
                offset,
                len,
                committed,
            }
        }),
        (seq(), seq()).prop_map(|(seq, committed)| Message::Flush { seq, committed }),
        (request(), any::<u64>(), any::<u64>()).prop_map(|(request, offset, len)| {
            Message::Read {
                request,
                offset,
                len,
            }
        }),
        (request(), any::<u64>(), any::<u64>()).prop_map(|(request, offset, len)| {
            Message::QueryAllocation {
                request,
                offset,
                len,
            }
        }),
        (request(), seq()).prop_map(|(request, since)| Message::RegionsSince { request, since }),
        (stamp(), proptest::option::of(stamp())).prop_map(|(sync_stamp, live_after)| {
            Message::StartResync {
                sync_stamp,
                live_after,
            }
        }),
        (request(), any::<u64>(), any::<u64>()).prop_map(|(request, offset, len)| {
            Message::ReadSegment {
                request,
                offset,
                len,
            }
        }),
        (request(), any::<u64>(), data(), seq()).prop_map(|(request, offset, data, region_seq)| {
            Message::WriteSegment {
                request,
                offset,
                data,
                region_seq,
            }
        }),
        stamp().prop_map(|stamp| Message::FinishResync { stamp }),
        any::<u64>().prop_map(|r| Message::Ping {
            request: RequestId(r)
        }),
    ]
}

fn hello_ack() -> impl Strategy<Value = HelloAck> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        stamp(),
        any::<bool>(),
        stamp(),
        seq(),
        region_set(),
    )
        .prop_map(
            |(
                replica,
                incarnation,
                consistent,
                stamp,
                stamp_exact,
                sync_stamp,
                checkpoint,
                dirty,
            )| HelloAck {
                replica: ReplicaId(replica),
                incarnation: Incarnation(incarnation),
                consistent,
                stamp,
                stamp_exact,
                sync_stamp,
                checkpoint,
                dirty,
            },
        )
}

fn replica_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello_ack().prop_map(Message::HelloAck),
        refusal().prop_map(Message::Refused),
        (seq(), unit_result()).prop_map(|(seq, result)| Message::WriteDone { seq, result }),
        (seq(), unit_result()).prop_map(|(seq, result)| Message::FlushDone { seq, result }),
        (request(), bytes_result())
            .prop_map(|(request, result)| Message::ReadDone { request, result }),
        (request(), extents_result())
            .prop_map(|(request, result)| Message::Allocation { request, result }),
        (request(), region_set())
            .prop_map(|(request, regions)| Message::Regions { request, regions }),
        Just(Message::ResyncStarted),
        (request(), bytes_result())
            .prop_map(|(request, result)| Message::SegmentData { request, result }),
        (request(), unit_result())
            .prop_map(|(request, result)| Message::SegmentWritten { request, result }),
        unit_result().prop_map(|result| Message::ResyncFinished { result }),
        any::<u64>().prop_map(|r| Message::Pong {
            request: RequestId(r)
        }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![target_message(), replica_message()],
    )
        .prop_map(|(session, number, message)| Envelope {
            session: SessionId(session),
            number,
            message,
        })
}

/// Kind tags the decoder knows, plus a few it does not.
fn kind_tag() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0x01u8..=0x0c, 4 => 0x41u8..=0x4c, 1 => any::<u8>()]
}

/// Decodes everything in `buf` until it runs dry or fails; returns how many frames decoded.
fn drain(buf: &mut BytesMut) -> usize {
    let mut frames = 0;
    while let Ok(Some(_)) = decode(buf) {
        frames += 1;
    }
    frames
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_envelopes_round_trip(envelope in envelope(), prefix in vec(any::<u8>(), 0..4)) {
        let mut buf = BytesMut::new();
        encode(&envelope, &mut buf);
        let frame_len = buf.len();

        let (from_slice, used) = decode_frame(&buf).expect("valid frame");
        prop_assert_eq!(&from_slice, &envelope);
        prop_assert_eq!(used, frame_len);

        // The frame followed by the start of another: exactly the frame is consumed.
        buf.extend_from_slice(&prefix);
        prop_assert_eq!(decode(&mut buf), Ok(Some(envelope)));
        prop_assert_eq!(&buf[..], &prefix[..]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
        let _ = decode_frame(&bytes);
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_magic_never_panic(
        header in vec(any::<u8>(), 4..8),
        rest in vec(any::<u8>(), 0..4096),
    ) {
        let mut bytes = BytesMut::from(&b"TNDM\x01"[..]);
        bytes.extend_from_slice(&header[..4]);
        bytes[6] = 0;
        bytes[7] = 0;
        bytes.extend_from_slice(&rest);
        let _ = decode_frame(&bytes);
        drain(&mut bytes);
    }

    /// Random payloads in a well-formed, correctly checksummed frame reach the payload parser.
    #[test]
    fn arbitrary_payloads_with_a_valid_checksum_never_panic(
        tag in kind_tag(),
        payload in vec(any::<u8>(), 0..2048),
    ) {
        let mut buf = BytesMut::new();
        buf.put_slice(b"TNDM");
        buf.put_u8(1);
        buf.put_u8(tag);
        buf.put_u16_le(0);
        buf.put_u32_le(payload.len() as u32);
        buf.put_u64_le(1);
        buf.put_u64_le(1);
        buf.put_slice(&payload);
        let crc = crc32c::crc32c(&buf);
        buf.put_u32_le(crc);

        let from_slice = decode_frame(&buf);
        let from_stream = decode(&mut buf);
        // Both entry points agree, and whatever decodes re-encodes to the very same frame.
        match (from_slice, from_stream) {
            (Ok((envelope, _)), Ok(Some(again))) => {
                prop_assert_eq!(&envelope, &again);
                let mut reencoded = BytesMut::new();
                encode(&envelope, &mut reencoded);
                prop_assert_eq!(&reencoded[HEADER_LEN..reencoded.len() - 4], &payload[..]);
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "decode_frame gave {:?}, decode gave {:?}", a, b),
        }
    }

    #[test]
    fn a_flipped_byte_never_panics_and_is_detected(
        envelope in envelope(),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut buf = BytesMut::new();
        encode(&envelope, &mut buf);
        let index = index.index(buf.len());
        buf[index] ^= flip;
        let _ = decode_frame(&buf);
        // CRC-32C catches every error burst of up to 32 bits, so a single changed byte always
        // fails the check, unless it changed the length field and the checksum is read from a
        // different place (a 2^-32 chance of passing), or the frame now waits for more bytes.
        let result = decode(&mut buf);
        prop_assert!(!matches!(result, Ok(Some(_))), "flip went unnoticed: {:?}", result);
    }
}
