//! Messages between a volume's target and its replicas, as the core sees them (no encoding here).
//!
//! Every message travels inside an [`Envelope`] that names its session and its number within the
//! session. A receiver processes a session's messages strictly in order: a duplicate is ignored,
//! a gap breaks the session. Over TCP this never fires; over a lossy network it turns loss,
//! reordering and duplication into a clean session break followed by a resync.

use bytes::Bytes;

use crate::types::{
    Extent, Generation, Geometry, Incarnation, IoFailure, RegionSet, ReplicaId, Seq, SessionId,
    Stamp,
};

/// A message with its place in a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub session: SessionId,
    /// 1 for the first message each side sends in a session, then 2, 3, ...
    pub number: u64,
    pub message: Message,
}

/// Identifies a request the target made, so the reply can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // ---- target -> replica ----
    /// Opens a session. The replica refuses it if `generation` is lower than the highest it has
    /// seen, or if it is not `replica` or has another geometry.
    Hello {
        generation: Generation,
        replica: ReplicaId,
        geometry: Geometry,
    },
    /// A client write, in sequence order. `committed` is the target's durable watermark: every
    /// operation at or below it is durable on a consistency-factor of replicas.
    Write {
        seq: Seq,
        offset: u64,
        data: Bytes,
        committed: Seq,
    },
    /// Zeroes a range (TRIM and WRITE_ZEROES): replicas punch holes.
    Trim {
        seq: Seq,
        offset: u64,
        len: u64,
        committed: Seq,
    },
    /// Makes everything before it durable and takes a checkpoint.
    Flush {
        seq: Seq,
        committed: Seq,
    },
    Read {
        request: RequestId,
        offset: u64,
        len: u64,
    },
    /// Asks which parts of a range hold data (block status); answered after every earlier
    /// write to the range, like a read.
    QueryAllocation {
        request: RequestId,
        offset: u64,
        len: u64,
    },
    /// Asks which regions changed after `since` (the resync source's half of the dirty set).
    RegionsSince {
        request: RequestId,
        since: Seq,
    },
    /// Tells a replica it is being resynced. Live operations follow right after the operation
    /// stamped `live_after` (`None`: after none it could hold). If its history ends exactly there
    /// it stays a consistent copy until the first resync segment; otherwise it stops being one at
    /// once, until [`Message::FinishResync`]. `sync_stamp` is the newest acknowledged write it
    /// will hold once done.
    StartResync {
        sync_stamp: Stamp,
        live_after: Option<Stamp>,
    },
    /// Reads one segment from the resync source.
    ReadSegment {
        request: RequestId,
        offset: u64,
        len: u64,
    },
    /// Writes one segment of resync data to the replica being resynced. `region_seq` bounds
    /// the newest write the data contains.
    WriteSegment {
        request: RequestId,
        offset: u64,
        data: Bytes,
        region_seq: Seq,
    },
    /// All segments were sent; the replica makes them durable and is consistent again, holding
    /// the volume's history up to `stamp`.
    FinishResync {
        stamp: Stamp,
    },
    /// A heartbeat: an idle session is probed so a dead one (or a newer target) is noticed.
    Ping {
        request: RequestId,
    },
    /// Write (or trim) `seq`, which this replica refused for lack of space, was refused by
    /// every Healthy replica: it changed nothing anywhere, its client is told so (ENOSPC), and
    /// the volume's history goes on as if it had been applied as nothing. The replica, which
    /// held back the write's range and every barrier since the refusal, goes on.
    Voided {
        seq: Seq,
    },

    // ---- replica -> target ----
    /// Accepts a session and reports what the replica holds.
    HelloAck(HelloAck),
    Refused(Refusal),
    WriteDone {
        seq: Seq,
        result: Result<(), IoFailure>,
    },
    FlushDone {
        seq: Seq,
        result: Result<(), IoFailure>,
    },
    ReadDone {
        request: RequestId,
        result: Result<Bytes, IoFailure>,
    },
    /// The range's allocation, as consecutive extents covering exactly the range asked for.
    Allocation {
        request: RequestId,
        result: Result<Vec<Extent>, IoFailure>,
    },
    Regions {
        request: RequestId,
        regions: RegionSet,
    },
    ResyncStarted,
    SegmentData {
        request: RequestId,
        result: Result<Bytes, IoFailure>,
    },
    SegmentWritten {
        request: RequestId,
        result: Result<(), IoFailure>,
    },
    ResyncFinished {
        result: Result<(), IoFailure>,
    },
    Pong {
        request: RequestId,
    },
}

/// What a replica tells a target when it accepts a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    /// True if the replica's data is exactly the volume's history up to `stamp` (possibly with
    /// later unacknowledged writes in its dirty regions). False while a resync is unfinished.
    pub consistent: bool,
    /// The newest operation applied, if consistent.
    pub stamp: Stamp,
    /// False after an unclean restart: the replica then knows only the stamp of its last
    /// checkpoint, while its cache may hold later writes (in its activity-log regions).
    pub stamp_exact: bool,
    /// If not consistent: the newest acknowledged write the unfinished resync was bringing in.
    pub sync_stamp: Stamp,
    /// Every operation at or below this is durable here and part of every future history.
    pub checkpoint: Seq,
    /// Regions this replica changed after `checkpoint` (or may have: activity log after an
    /// unclean stop).
    pub dirty: RegionSet,
}

/// Why a replica refused a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The replica has already accepted a target of a later generation (G5).
    Fenced { generation_seen: Generation },
    /// The target asked for another replica.
    WrongReplica { replica: ReplicaId },
    /// The target's geometry does not match the replica's storage.
    GeometryMismatch,
}

impl Message {
    /// Short name for logs and fault statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Write { .. } => "write",
            Message::Trim { .. } => "trim",
            Message::Flush { .. } => "flush",
            Message::Read { .. } => "read",
            Message::QueryAllocation { .. } => "query-allocation",
            Message::RegionsSince { .. } => "regions-since",
            Message::StartResync { .. } => "start-resync",
            Message::ReadSegment { .. } => "read-segment",
            Message::WriteSegment { .. } => "write-segment",
            Message::FinishResync { .. } => "finish-resync",
            Message::Ping { .. } => "ping",
            Message::Voided { .. } => "voided",
            Message::HelloAck(_) => "hello-ack",
            Message::Refused(_) => "refused",
            Message::WriteDone { .. } => "write-done",
            Message::FlushDone { .. } => "flush-done",
            Message::ReadDone { .. } => "read-done",
            Message::Allocation { .. } => "allocation",
            Message::Regions { .. } => "regions",
            Message::ResyncStarted => "resync-started",
            Message::SegmentData { .. } => "segment-data",
            Message::SegmentWritten { .. } => "segment-written",
            Message::ResyncFinished { .. } => "resync-finished",
            Message::Pong { .. } => "pong",
        }
    }
}
