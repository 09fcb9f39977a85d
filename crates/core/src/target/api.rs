//! The target's interface: client requests and replies, operator commands, inputs, outputs,
//! events, statuses and tunables.

use bytes::Bytes;

use crate::membership::{Membership, MembershipError};
use crate::message::{Envelope, Refusal};
use crate::types::{Extent, IoFailure, ReplicaId, Seq, SessionId, Stamp};
use crate::Bugs;

/// Identifies a client request (an NBD handle, say) so its reply can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRequestId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Read {
        offset: u64,
        len: u64,
    },
    /// With `fua`, the reply waits until the write is durable on CF replicas.
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    /// Which parts of the range hold data (NBD block status). Served like a read, by one
    /// Healthy replica, after every write acknowledged before it.
    Allocation {
        offset: u64,
        len: u64,
    },
    /// Zeroes the range (TRIM and WRITE_ZEROES).
    Trim {
        offset: u64,
        len: u64,
    },
    Flush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub id: ClientRequestId,
    pub op: ClientOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReplyBody {
    Read(Bytes),
    /// The range's allocation: consecutive extents covering exactly the range asked for. A hole
    /// reads as zeroes; allocated data may hold anything, zeroes included.
    Allocation(Vec<Extent>),
    /// A write, trim or flush is done; `stamp` is its place in the volume's history.
    Done {
        stamp: Stamp,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("request outside the volume or not aligned to its block size")]
    OutOfRange,
    #[error("this target was replaced by a newer one; reconnect")]
    Fenced,
    #[error("no answer within the client timeout: the volume has too few healthy replicas")]
    TimedOut,
    /// Every Healthy replica refused the write for lack of space in its pool: it changed
    /// nothing (ENOSPC). Reads, and writes once space is freed, go on.
    #[error("no space left: every healthy replica's pool is full")]
    NoSpace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub id: ClientRequestId,
    pub result: Result<ClientReplyBody, ClientError>,
}

/// An operator's request to change the volume's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    AddReplica(ReplicaId),
    RemoveReplica(ReplicaId),
}

#[derive(Clone, Debug)]
pub enum TargetInput {
    Message {
        from: ReplicaId,
        envelope: Envelope,
    },
    Client(ClientRequest),
    Command(Command),
    /// The answer to [`TargetOutput::PersistMembership`]: `Err` if a newer target took over.
    MembershipPersisted(Result<(), Fenced>),
    /// Time passes: one tick. Timeouts and the resync throttle count ticks.
    Tick,
    /// The connection carrying `session` to `replica` ended (closed or reset, as when its
    /// process died): the replica is ejected at once instead of after `replica_timeout_ticks`.
    SessionLost {
        replica: ReplicaId,
        session: SessionId,
    },
}

/// The control plane refused a write from this target because a newer generation exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetOutput {
    Send {
        to: ReplicaId,
        envelope: Envelope,
    },
    Reply(ClientReply),
    /// Persist this membership (generation-fenced) and answer with
    /// [`TargetInput::MembershipPersisted`]. At most one is outstanding.
    PersistMembership(Membership),
    CommandDone {
        command: Command,
        result: Result<(), MembershipError>,
    },
    Event(TargetEvent),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetEvent {
    VolumeStatus(VolumeStatus),
    ReplicaMode {
        replica: ReplicaId,
        mode: ReplicaMode,
    },
    /// A replica was ejected (it stopped answering, fell too far behind, or failed I/O).
    Ejected {
        replica: ReplicaId,
        reason: EjectReason,
    },
    ResyncFinished {
        replica: ReplicaId,
        source: ReplicaId,
        full: bool,
        regions: u64,
        bytes: u64,
    },
    ReplicaPromoted {
        replica: ReplicaId,
    },
    ReplicaRemoved {
        replica: ReplicaId,
    },
    /// Every Healthy replica refused write (or trim) `seq` for lack of space: it was voided and
    /// its client told ENOSPC.
    WriteVoided {
        seq: Seq,
    },
    /// A newer target has taken over; this one stops serving.
    Fenced,
    /// Recovery finished: `source` holds the volume's history up to `stamp`.
    RecoveredFrom {
        source: ReplicaId,
        stamp: Stamp,
    },
    /// Recovery found no replica known to hold the newest acknowledged write. Writes after
    /// `recovered` survive only where the source's cache kept them: they were never flushed, and
    /// every replica holding them lost power or its storage.
    RecoveredBehind {
        newest_acknowledged: Stamp,
        recovered: Stamp,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    Timeout,
    Backlog,
    IoFailure(IoFailure),
    SessionBroken,
    Refused(Refusal),
    /// It applied a write every Healthy replica refused for lack of space (which was voided),
    /// and is not being copied to in a way that overwrites it: it must be resynced.
    HoldsVoidedWrite,
}

/// The volume's status, as cStor's CStorVolume phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeStatus {
    /// The target is recovering and serves no I/O yet.
    Init,
    /// Every trusted replica is Healthy.
    Healthy,
    /// I/O is served (at least CF Healthy) but not every trusted replica is Healthy.
    Degraded,
    /// Fewer than CF replicas are Healthy: I/O waits.
    Offline,
}

/// A replica's mode, named as cStor's CVR phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaMode {
    Offline,
    /// Connected, trusted, waiting for its resync.
    Degraded,
    /// Connected, new (not trusted), waiting for its rebuild.
    NewReplicaDegraded,
    /// Trusted and catching up (incremental resync).
    Rebuilding,
    /// New and being rebuilt (full copy); counts for nothing yet.
    ReconstructingNewReplica,
    Healthy,
    /// It refused the target (wrong identity or geometry).
    Error,
}

/// Tunables. Units are in the names.
#[derive(Clone, Copy, Debug)]
pub struct TargetOptions {
    /// A replica whose oldest unanswered request is this old is ejected.
    pub replica_timeout_ticks: u64,
    /// A replica with more unanswered requests than this is ejected (too far behind).
    pub replica_inflight_max: usize,
    /// Backpressure: while a replica that receives live writes has this many requests
    /// unanswered, new writes, trims and flushes wait. A replica that keeps up, only slower
    /// than the others (a slower disk, or a rebuild sharing its bandwidth), then paces the
    /// volume instead of falling ever further behind until it is ejected and resynced over and
    /// over. One that stops answering is still ejected after `replica_timeout_ticks`. Must be
    /// below `replica_inflight_max`.
    pub replica_congestion_ops: usize,
    pub handshake_timeout_ticks: u64,
    pub reconnect_interval_ticks: u64,
    /// A connected replica that has sent nothing for this long while nothing is awaited from
    /// it is probed (a ping), so a replica whose session silently broke, or that accepted a
    /// newer target, times out and is reconnected even on an idle volume. Under I/O every
    /// answer counts as a sign of life and no probe is sent. A dead peer process is noticed at
    /// once (its connection closes); this is for lost hosts and links, which the dataplane also
    /// watches with TCP keepalive.
    pub probe_interval_ticks: u64,
    /// Resync bandwidth cap; 0 means uncapped.
    pub resync_bytes_per_tick: u64,
    /// The resync's cap while clients are doing I/O (a request arrived within the last
    /// `CLIENT_ACTIVITY_TICKS`): the copy yields the rest of the replicas' time to the
    /// application, and runs at `resync_bytes_per_tick` again once the volume is idle (DRBD's
    /// c-min-rate). 0: no separate cap.
    pub resync_bytes_per_tick_under_load: u64,
    pub resync_segments_inflight_max: usize,
    /// A client request not answered in this time fails with `ClientError::TimedOut` (its
    /// outcome is then unknown, as with any failed write). No client ever hangs.
    pub client_timeout_ticks: u64,
    /// The read lease: a target serves a read only while CF member replicas have answered a
    /// request it sent within this many ticks. A replica that accepted a newer target answers
    /// this one no more, so an old target that is cut off or was paused stops reading its own,
    /// possibly stale, copy within this time (it renews the lease with pings when it can).
    pub read_lease_ticks: u64,
    /// A target that takes over (a generation after the first) waits this long after CF
    /// replicas accepted it before it serves anything, so any read lease of an older target
    /// has run out first. Must exceed `read_lease_ticks` (by a margin for tick granularity
    /// and clock rate).
    pub takeover_wait_ticks: u64,
    /// Once a write was voided because the Healthy replicas' pools are full, later writes fail
    /// with ENOSPC at once, without reaching any replica, except one every this many ticks,
    /// which is sent to see whether space came back (its success ends the refusals). A
    /// replica with room, being rebuilt or Healthy beside full ones, then applies a voided
    /// write (and is copied to again, or resynced) only once per interval, not per write.
    pub no_space_probe_ticks: u64,
    pub bugs: Bugs,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            replica_timeout_ticks: 100,
            replica_inflight_max: 1024,
            replica_congestion_ops: 256,
            handshake_timeout_ticks: 50,
            reconnect_interval_ticks: 20,
            // With 10 ms ticks: an idle volume's replicas are pinged every 30 s (the kernel's
            // TCP keepalive watches the links meanwhile), so a thousand idle volumes cost
            // tens of pings a second, not thousands.
            probe_interval_ticks: 3_000,
            resync_bytes_per_tick: 0,
            // With 10 ms ticks: 50 MiB/s under load, uncapped when idle.
            resync_bytes_per_tick_under_load: 512 << 10,
            resync_segments_inflight_max: 4,
            client_timeout_ticks: 3_000,
            // With 10 ms ticks: a 1 s read lease, and a new target waits 1.2 s.
            read_lease_ticks: 100,
            takeover_wait_ticks: 120,
            // With 10 ms ticks: space freed is noticed within a second.
            no_space_probe_ticks: 100,
            bugs: Bugs::none(),
        }
    }
}

/// A replica ejected again and again before it is Healthy waits at most this many reconnect
/// intervals before the next attempt.
pub const RECONNECT_BACKOFF_MAX: u64 = 32;

/// A volume whose clients sent a request within this many ticks is under load (see
/// [`TargetOptions::resync_bytes_per_tick_under_load`]).
pub const CLIENT_ACTIVITY_TICKS: u64 = 10;

/// One connected replica's I/O as the target sees it (cStor's per-replica volume status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaIo {
    /// The newest flush the replica made durable in this session (at first, the checkpoint it
    /// reported when it connected): cStor's `checkpointedIOSeq`.
    pub checkpointed: Seq,
    /// Client reads sent to it and not yet answered.
    pub inflight_reads: usize,
    /// Writes and trims sent to it and not yet answered.
    pub inflight_writes: usize,
    /// Flushes sent to it and not yet answered.
    pub inflight_syncs: usize,
    /// Ticks since its session started.
    pub connected_ticks: u64,
}

/// Progress of the resync in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    pub replica: ReplicaId,
    pub source: ReplicaId,
    pub full: bool,
    pub bytes_done: u64,
    pub bytes_total: u64,
}
