//! Payload encoding and decoding: one message kind tag and one field layout per `Message` variant.
//!
//! Every field is written explicitly, little-endian, in declaration order:
//!
//! | Type                   | Encoding                                                          |
//! |------------------------|-------------------------------------------------------------------|
//! | `u64` newtypes         | u64                                                               |
//! | `bool`                 | u8, 0 = false, 1 = true (anything else is rejected)               |
//! | `Stamp`                | generation u64, seq u64                                           |
//! | `Geometry`             | size_bytes u64, block_size u32, region_size u32                   |
//! | `Bytes`                | length u32, then that many bytes                                  |
//! | `RegionSet`            | region_count u32, then `div_ceil(region_count, 64)` words, u64 each |
//! | `IoFailure`            | u8: 1 = NoSpace, 2 = Device, 3 = OutOfRange                       |
//! | `Result<(), IoFailure>`| u8 tag 0 = Ok, or tag 1 = Err followed by the failure code        |
//! | `Result<Bytes, IoFailure>` | u8 tag 0 = Ok followed by the bytes, or tag 1 = Err and the failure code |
//! | `Vec<Extent>`          | count u32, then per extent: len u64, allocated `bool`             |
//! | `Result<Vec<Extent>, IoFailure>` | u8 tag 0 = Ok followed by the extents, or tag 1 = Err and the failure code |
//! | `Refusal`              | u8: 1 = Fenced + generation u64, 2 = WrongReplica + replica u64, 3 = GeometryMismatch |
//!
//! Kind tags: target -> replica messages use `0x01..=0x0d`, replica -> target messages use
//! `0x41..=0x4c`. Tag 0 is never valid.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tandem_core::{
    Extent, Generation, Geometry, HelloAck, Incarnation, IoFailure, Message, Refusal, RegionSet,
    ReplicaId, RequestId, Seq, Stamp,
};

use crate::DecodeError;

// ---- message kind tags ----
// target -> replica
const HELLO: u8 = 0x01;
const WRITE: u8 = 0x02;
const TRIM: u8 = 0x03;
const FLUSH: u8 = 0x04;
const READ: u8 = 0x05;
const REGIONS_SINCE: u8 = 0x06;
const START_RESYNC: u8 = 0x07;
const READ_SEGMENT: u8 = 0x08;
const WRITE_SEGMENT: u8 = 0x09;
const FINISH_RESYNC: u8 = 0x0a;
const PING: u8 = 0x0b;
const QUERY_ALLOCATION: u8 = 0x0c;
const VOIDED: u8 = 0x0d;
// replica -> target
const HELLO_ACK: u8 = 0x41;
const REFUSED: u8 = 0x42;
const WRITE_DONE: u8 = 0x43;
const FLUSH_DONE: u8 = 0x44;
const READ_DONE: u8 = 0x45;
const REGIONS: u8 = 0x46;
const RESYNC_STARTED: u8 = 0x47;
const SEGMENT_DATA: u8 = 0x48;
const SEGMENT_WRITTEN: u8 = 0x49;
const RESYNC_FINISHED: u8 = 0x4a;
const PONG: u8 = 0x4b;
const ALLOCATION: u8 = 0x4c;

// ---- small enumerations ----
const RESULT_OK: u8 = 0;
const RESULT_ERR: u8 = 1;

const FAILURE_NO_SPACE: u8 = 1;
const FAILURE_DEVICE: u8 = 2;
const FAILURE_OUT_OF_RANGE: u8 = 3;

const REFUSAL_FENCED: u8 = 1;
const REFUSAL_WRONG_REPLICA: u8 = 2;
const REFUSAL_GEOMETRY_MISMATCH: u8 = 3;

/// The kind tag a message is sent under.
pub(crate) fn kind_tag(message: &Message) -> u8 {
    match message {
        Message::Hello { .. } => HELLO,
        Message::Write { .. } => WRITE,
        Message::Trim { .. } => TRIM,
        Message::Flush { .. } => FLUSH,
        Message::Read { .. } => READ,
        Message::QueryAllocation { .. } => QUERY_ALLOCATION,
        Message::RegionsSince { .. } => REGIONS_SINCE,
        Message::StartResync { .. } => START_RESYNC,
        Message::ReadSegment { .. } => READ_SEGMENT,
        Message::WriteSegment { .. } => WRITE_SEGMENT,
        Message::FinishResync { .. } => FINISH_RESYNC,
        Message::Ping { .. } => PING,
        Message::Voided { .. } => VOIDED,
        Message::HelloAck(_) => HELLO_ACK,
        Message::Refused(_) => REFUSED,
        Message::WriteDone { .. } => WRITE_DONE,
        Message::FlushDone { .. } => FLUSH_DONE,
        Message::ReadDone { .. } => READ_DONE,
        Message::Allocation { .. } => ALLOCATION,
        Message::Regions { .. } => REGIONS,
        Message::ResyncStarted => RESYNC_STARTED,
        Message::SegmentData { .. } => SEGMENT_DATA,
        Message::SegmentWritten { .. } => SEGMENT_WRITTEN,
        Message::ResyncFinished { .. } => RESYNC_FINISHED,
        Message::Pong { .. } => PONG,
    }
}

/// The name of a kind tag (as `Message::kind` spells it), or `None` if no message uses the tag.
pub(crate) fn kind_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        HELLO => "hello",
        WRITE => "write",
        TRIM => "trim",
        FLUSH => "flush",
        READ => "read",
        QUERY_ALLOCATION => "query-allocation",
        REGIONS_SINCE => "regions-since",
        START_RESYNC => "start-resync",
        READ_SEGMENT => "read-segment",
        WRITE_SEGMENT => "write-segment",
        FINISH_RESYNC => "finish-resync",
        PING => "ping",
        VOIDED => "voided",
        HELLO_ACK => "hello-ack",
        REFUSED => "refused",
        WRITE_DONE => "write-done",
        FLUSH_DONE => "flush-done",
        READ_DONE => "read-done",
        ALLOCATION => "allocation",
        REGIONS => "regions",
        RESYNC_STARTED => "resync-started",
        SEGMENT_DATA => "segment-data",
        SEGMENT_WRITTEN => "segment-written",
        RESYNC_FINISHED => "resync-finished",
        PONG => "pong",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Appends the payload of `message` (not its tag) to `out`.
pub(crate) fn encode_payload(message: &Message, out: &mut BytesMut) {
    match message {
        Message::Hello {
            generation,
            replica,
            geometry,
        } => {
            out.put_u64_le(generation.0);
            out.put_u64_le(replica.0);
            put_geometry(out, geometry);
        }
        Message::Write {
            seq,
            offset,
            data,
            committed,
        } => {
            out.put_u64_le(seq.0);
            out.put_u64_le(*offset);
            put_bytes(out, data);
            out.put_u64_le(committed.0);
        }
        Message::Trim {
            seq,
            offset,
            len,
            committed,
        } => {
            out.put_u64_le(seq.0);
            out.put_u64_le(*offset);
            out.put_u64_le(*len);
            out.put_u64_le(committed.0);
        }
        Message::Flush { seq, committed } => {
            out.put_u64_le(seq.0);
            out.put_u64_le(committed.0);
        }
        Message::Read {
            request,
            offset,
            len,
        }
        | Message::QueryAllocation {
            request,
            offset,
            len,
        } => {
            out.put_u64_le(request.0);
            out.put_u64_le(*offset);
            out.put_u64_le(*len);
        }
        Message::RegionsSince { request, since } => {
            out.put_u64_le(request.0);
            out.put_u64_le(since.0);
        }
        Message::StartResync {
            sync_stamp,
            live_after,
        } => {
            put_stamp(out, sync_stamp);
            match live_after {
                None => out.put_u8(0),
                Some(stamp) => {
                    out.put_u8(1);
                    put_stamp(out, stamp);
                }
            }
        }
        Message::ReadSegment {
            request,
            offset,
            len,
        } => {
            out.put_u64_le(request.0);
            out.put_u64_le(*offset);
            out.put_u64_le(*len);
        }
        Message::WriteSegment {
            request,
            offset,
            data,
            region_seq,
        } => {
            out.put_u64_le(request.0);
            out.put_u64_le(*offset);
            put_bytes(out, data);
            out.put_u64_le(region_seq.0);
        }
        Message::FinishResync { stamp } => put_stamp(out, stamp),
        Message::Ping { request } | Message::Pong { request } => out.put_u64_le(request.0),
        Message::Voided { seq } => out.put_u64_le(seq.0),
        Message::HelloAck(ack) => {
            out.put_u64_le(ack.replica.0);
            out.put_u64_le(ack.incarnation.0);
            out.put_u8(u8::from(ack.consistent));
            put_stamp(out, &ack.stamp);
            out.put_u8(u8::from(ack.stamp_exact));
            put_stamp(out, &ack.sync_stamp);
            out.put_u64_le(ack.checkpoint.0);
            put_region_set(out, &ack.dirty);
        }
        Message::Refused(refusal) => match refusal {
            Refusal::Fenced { generation_seen } => {
                out.put_u8(REFUSAL_FENCED);
                out.put_u64_le(generation_seen.0);
            }
            Refusal::WrongReplica { replica } => {
                out.put_u8(REFUSAL_WRONG_REPLICA);
                out.put_u64_le(replica.0);
            }
            Refusal::GeometryMismatch => out.put_u8(REFUSAL_GEOMETRY_MISMATCH),
        },
        Message::WriteDone { seq, result } | Message::FlushDone { seq, result } => {
            out.put_u64_le(seq.0);
            put_unit_result(out, result);
        }
        Message::ReadDone { request, result } | Message::SegmentData { request, result } => {
            out.put_u64_le(request.0);
            match result {
                Ok(data) => {
                    out.put_u8(RESULT_OK);
                    put_bytes(out, data);
                }
                Err(failure) => {
                    out.put_u8(RESULT_ERR);
                    out.put_u8(failure_code(*failure));
                }
            }
        }
        Message::Allocation { request, result } => {
            out.put_u64_le(request.0);
            match result {
                Ok(extents) => {
                    out.put_u8(RESULT_OK);
                    // More extents than fit a u32 are more than fit a frame: rejected by the
                    // caller, as for `put_bytes`.
                    out.put_u32_le(u32::try_from(extents.len()).unwrap_or(u32::MAX));
                    for extent in extents {
                        out.put_u64_le(extent.len);
                        out.put_u8(u8::from(extent.allocated));
                    }
                }
                Err(failure) => {
                    out.put_u8(RESULT_ERR);
                    out.put_u8(failure_code(*failure));
                }
            }
        }
        Message::Regions { request, regions } => {
            out.put_u64_le(request.0);
            put_region_set(out, regions);
        }
        Message::ResyncStarted => {}
        Message::SegmentWritten { request, result } => {
            out.put_u64_le(request.0);
            put_unit_result(out, result);
        }
        Message::ResyncFinished { result } => put_unit_result(out, result),
    }
}

fn put_stamp(out: &mut BytesMut, stamp: &Stamp) {
    out.put_u64_le(stamp.generation.0);
    out.put_u64_le(stamp.seq.0);
}

fn put_geometry(out: &mut BytesMut, geometry: &Geometry) {
    out.put_u64_le(geometry.size_bytes);
    out.put_u32_le(geometry.block_size);
    out.put_u32_le(geometry.region_size);
}

fn put_bytes(out: &mut BytesMut, data: &Bytes) {
    // Data longer than u32::MAX is longer than MAX_PAYLOAD_LEN too, so the frame is rejected
    // (and this partial encoding discarded) by the caller before anything is sent.
    out.put_u32_le(u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.put_slice(data);
}

fn put_region_set(out: &mut BytesMut, regions: &RegionSet) {
    out.put_u32_le(regions.region_count());
    for word in regions.words() {
        out.put_u64_le(*word);
    }
}

fn put_unit_result(out: &mut BytesMut, result: &Result<(), IoFailure>) {
    match result {
        Ok(()) => out.put_u8(RESULT_OK),
        Err(failure) => {
            out.put_u8(RESULT_ERR);
            out.put_u8(failure_code(*failure));
        }
    }
}

fn failure_code(failure: IoFailure) -> u8 {
    match failure {
        IoFailure::NoSpace => FAILURE_NO_SPACE,
        IoFailure::Device => FAILURE_DEVICE,
        IoFailure::OutOfRange => FAILURE_OUT_OF_RANGE,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes the payload of a message of kind `tag`. `payload` is exactly the frame's payload (its
/// checksum already verified); byte fields are sliced from it without copying.
pub(crate) fn decode_payload(tag: u8, payload: Bytes) -> Result<Message, DecodeError> {
    let kind = kind_name(tag).ok_or(DecodeError::UnknownKind { tag })?;
    let mut r = Reader { kind, payload };
    let message = match tag {
        HELLO => Message::Hello {
            generation: Generation(r.u64("generation")?),
            replica: ReplicaId(r.u64("replica")?),
            geometry: r.geometry("geometry")?,
        },
        WRITE => Message::Write {
            seq: Seq(r.u64("seq")?),
            offset: r.u64("offset")?,
            data: r.bytes("data")?,
            committed: Seq(r.u64("committed")?),
        },
        TRIM => Message::Trim {
            seq: Seq(r.u64("seq")?),
            offset: r.u64("offset")?,
            len: r.u64("len")?,
            committed: Seq(r.u64("committed")?),
        },
        FLUSH => Message::Flush {
            seq: Seq(r.u64("seq")?),
            committed: Seq(r.u64("committed")?),
        },
        READ => Message::Read {
            request: RequestId(r.u64("request")?),
            offset: r.u64("offset")?,
            len: r.u64("len")?,
        },
        QUERY_ALLOCATION => Message::QueryAllocation {
            request: RequestId(r.u64("request")?),
            offset: r.u64("offset")?,
            len: r.u64("len")?,
        },
        REGIONS_SINCE => Message::RegionsSince {
            request: RequestId(r.u64("request")?),
            since: Seq(r.u64("since")?),
        },
        START_RESYNC => Message::StartResync {
            sync_stamp: r.stamp("sync_stamp")?,
            live_after: if r.bool("live_after")? {
                Some(r.stamp("live_after")?)
            } else {
                None
            },
        },
        READ_SEGMENT => Message::ReadSegment {
            request: RequestId(r.u64("request")?),
            offset: r.u64("offset")?,
            len: r.u64("len")?,
        },
        WRITE_SEGMENT => Message::WriteSegment {
            request: RequestId(r.u64("request")?),
            offset: r.u64("offset")?,
            data: r.bytes("data")?,
            region_seq: Seq(r.u64("region_seq")?),
        },
        FINISH_RESYNC => Message::FinishResync {
            stamp: r.stamp("stamp")?,
        },
        HELLO_ACK => Message::HelloAck(HelloAck {
            replica: ReplicaId(r.u64("replica")?),
            incarnation: Incarnation(r.u64("incarnation")?),
            consistent: r.bool("consistent")?,
            stamp: r.stamp("stamp")?,
            stamp_exact: r.bool("stamp_exact")?,
            sync_stamp: r.stamp("sync_stamp")?,
            checkpoint: Seq(r.u64("checkpoint")?),
            dirty: r.region_set("dirty")?,
        }),
        REFUSED => Message::Refused(match r.u8("reason")? {
            REFUSAL_FENCED => Refusal::Fenced {
                generation_seen: Generation(r.u64("generation_seen")?),
            },
            REFUSAL_WRONG_REPLICA => Refusal::WrongReplica {
                replica: ReplicaId(r.u64("replica")?),
            },
            REFUSAL_GEOMETRY_MISMATCH => Refusal::GeometryMismatch,
            value => return Err(DecodeError::InvalidRefusal { value }),
        }),
        WRITE_DONE => Message::WriteDone {
            seq: Seq(r.u64("seq")?),
            result: r.unit_result("result")?,
        },
        FLUSH_DONE => Message::FlushDone {
            seq: Seq(r.u64("seq")?),
            result: r.unit_result("result")?,
        },
        READ_DONE => Message::ReadDone {
            request: RequestId(r.u64("request")?),
            result: r.bytes_result("result")?,
        },
        ALLOCATION => Message::Allocation {
            request: RequestId(r.u64("request")?),
            result: r.extents_result("result")?,
        },
        REGIONS => Message::Regions {
            request: RequestId(r.u64("request")?),
            regions: r.region_set("regions")?,
        },
        RESYNC_STARTED => Message::ResyncStarted,
        SEGMENT_DATA => Message::SegmentData {
            request: RequestId(r.u64("request")?),
            result: r.bytes_result("result")?,
        },
        SEGMENT_WRITTEN => Message::SegmentWritten {
            request: RequestId(r.u64("request")?),
            result: r.unit_result("result")?,
        },
        RESYNC_FINISHED => Message::ResyncFinished {
            result: r.unit_result("result")?,
        },
        PING => Message::Ping {
            request: RequestId(r.u64("request")?),
        },
        PONG => Message::Pong {
            request: RequestId(r.u64("request")?),
        },
        VOIDED => Message::Voided {
            seq: Seq(r.u64("seq")?),
        },
        // kind_name accepted the tag, so it is one of the above.
        _ => return Err(DecodeError::UnknownKind { tag }),
    };
    r.finish()?;
    Ok(message)
}

/// Reads fields from a payload, checking each length against what is left before taking it.
struct Reader {
    kind: &'static str,
    payload: Bytes,
}

impl Reader {
    /// Fails unless at least `needed` bytes remain for `field`.
    fn need(&self, field: &'static str, needed: usize) -> Result<(), DecodeError> {
        let available = self.payload.remaining();
        if available < needed {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                field,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(field, 1)?;
        Ok(self.payload.get_u8())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(field, 4)?;
        Ok(self.payload.get_u32_le())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(field, 8)?;
        Ok(self.payload.get_u64_le())
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::InvalidBool {
                kind: self.kind,
                field,
                value,
            }),
        }
    }

    fn stamp(&mut self, field: &'static str) -> Result<Stamp, DecodeError> {
        self.need(field, 16)?;
        Ok(Stamp {
            generation: Generation(self.payload.get_u64_le()),
            seq: Seq(self.payload.get_u64_le()),
        })
    }

    fn geometry(&mut self, field: &'static str) -> Result<Geometry, DecodeError> {
        self.need(field, 16)?;
        Ok(Geometry {
            size_bytes: self.payload.get_u64_le(),
            block_size: self.payload.get_u32_le(),
            region_size: self.payload.get_u32_le(),
        })
    }

    /// A length-prefixed byte string, sliced from the payload without copying.
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)?;
        // A u32 always fits in usize on the 32- and 64-bit targets Tandem runs on; saturating keeps
        // a hypothetical 16-bit target correct (the `need` check then fails).
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.need(field, len)?;
        Ok(self.payload.split_to(len))
    }

    fn region_set(&mut self, field: &'static str) -> Result<RegionSet, DecodeError> {
        let region_count = self.u32(field)?;
        let word_count = usize::try_from(region_count.div_ceil(64)).unwrap_or(usize::MAX);
        // Check the words are all there before allocating room for them.
        self.need(field, word_count.saturating_mul(8))?;
        let mut words = Vec::with_capacity(word_count);
        for _ in 0..word_count {
            words.push(self.payload.get_u64_le());
        }
        RegionSet::from_words(region_count, words).ok_or(DecodeError::InvalidRegionSet {
            kind: self.kind,
            field,
            region_count,
        })
    }

    fn failure(&mut self, field: &'static str) -> Result<IoFailure, DecodeError> {
        match self.u8(field)? {
            FAILURE_NO_SPACE => Ok(IoFailure::NoSpace),
            FAILURE_DEVICE => Ok(IoFailure::Device),
            FAILURE_OUT_OF_RANGE => Ok(IoFailure::OutOfRange),
            value => Err(DecodeError::InvalidIoFailure {
                kind: self.kind,
                field,
                value,
            }),
        }
    }

    /// Reads a result tag; `Ok(true)` means "ok", `Ok(false)` means "err".
    fn result_tag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            RESULT_OK => Ok(true),
            RESULT_ERR => Ok(false),
            value => Err(DecodeError::InvalidResultTag {
                kind: self.kind,
                field,
                value,
            }),
        }
    }

    fn unit_result(&mut self, field: &'static str) -> Result<Result<(), IoFailure>, DecodeError> {
        if self.result_tag(field)? {
            Ok(Ok(()))
        } else {
            Ok(Err(self.failure(field)?))
        }
    }

    fn extents_result(
        &mut self,
        field: &'static str,
    ) -> Result<Result<Vec<Extent>, IoFailure>, DecodeError> {
        if !self.result_tag(field)? {
            return Ok(Err(self.failure(field)?));
        }
        let count = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        // Check the extents are all there before allocating room for them.
        self.need(field, count.saturating_mul(9))?;
        let mut extents = Vec::with_capacity(count);
        for _ in 0..count {
            let len = self.payload.get_u64_le();
            let allocated = self.bool(field)?;
            extents.push(Extent { len, allocated });
        }
        Ok(Ok(extents))
    }

    fn bytes_result(
        &mut self,
        field: &'static str,
    ) -> Result<Result<Bytes, IoFailure>, DecodeError> {
        if self.result_tag(field)? {
            Ok(Ok(self.bytes(field)?))
        } else {
            Ok(Err(self.failure(field)?))
        }
    }

    /// Fails if any bytes are left after the last field.
    fn finish(self) -> Result<(), DecodeError> {
        let count = self.payload.remaining();
        if count != 0 {
            return Err(DecodeError::TrailingBytes {
                kind: self.kind,
                count,
            });
        }
        Ok(())
    }
}
