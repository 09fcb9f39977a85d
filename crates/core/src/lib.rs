//! Tandem's replication core: the target and replica state machines, with no I/O, clock or randomness.
//!
//! Both machines are driven the same way: the caller feeds an input (a message, a client request,
//! a disk completion, a tick) and collects the outputs (messages to send, disk operations, client
//! replies, events). Production wraps them in tokio tasks that do real I/O; the simulator wraps
//! them in a seeded, fault-injecting world. Assertions that guard data safety are `assert!`, not
//! `debug_assert!`: they stay on in release builds.

pub mod message;
pub mod types;

pub use message::{Envelope, HelloAck, Message, Refusal, RequestId};
pub use types::{
    Extent, Generation, Geometry, Incarnation, IoFailure, RegionSet, ReplicaId, Seq, SessionId,
    Stamp,
};

pub mod membership;
pub mod meta;
pub mod replica;
mod session;
pub mod target;

pub use membership::{consistency_factor, Member, Membership, MembershipError, REPLICAS_MAX};
pub use target::{
    ClientError, ClientOp, ClientReply, ClientReplyBody, ClientRequest, ClientRequestId, Command,
    EjectReason, Fenced, ReplicaIo, ReplicaMode, ResyncProgress, Target, TargetEvent, TargetInput,
    TargetOptions, TargetOutput, VolumeStatus, CLIENT_ACTIVITY_TICKS,
};

pub use meta::{MetaUpdate, ReplicaMeta, Superblock};
pub use replica::{
    Completion, DiskOp, DiskOpId, Replica, ReplicaInput, ReplicaOptions, ReplicaOutput, WriteOrigin,
};

/// Known bugs that tests can plant (with the `planted-bugs` feature) to show that the simulator's
/// checkers catch them. Without the feature no bug can be planted and every check is `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// G1: acknowledge writes and flushes after one healthy replica instead of CF.
    AckBeforeConsistencyFactor,
    /// G3: copy resync segments without the range lock, so older data lands over newer writes.
    CopyWithoutRangeLock,
    /// G5: replicas accept targets of older generations.
    SkipGenerationCheck,
    /// G3: resync only the regions the source changed, not those the returning replica changed.
    ResyncOnlySourceSide,
    /// G4: serve reads from replicas that are still being resynced.
    ReadFromUnhealthyReplica,
    /// G6: allow removing a replica while the others are not all Healthy.
    RemoveWhileDegraded,
    /// G2: a restarted target recovers from the least advanced replica.
    RecoverFromLeastAdvanced,
    /// Liveness: an ejected replica is never reconnected.
    NeverReconnect,
    /// G7: a resync segment's range lock is released only when the whole resync ends, not once
    /// the segment's data has arrived from the source.
    HoldRangeLockForWholeResync,
    /// G8: the replica persists its activity log again for every write (that finds no metadata
    /// write in flight), even when the write's regions are already in it.
    PersistMetadataOnEveryWrite,
    /// G5: a target serves reads without a current read lease (without having heard from CF
    /// replicas lately), so an old target cut off from the others reads its own stale copy.
    ReadWithoutLease,
    /// G5: a target that takes over serves at once, before the old target's read lease ran out.
    ServeBeforeOldLeaseEnds,
    /// G3: a write voided for lack of space stays on the replicas that applied it: they are
    /// neither copied to again nor ejected.
    KeepVoidedWrites,
    /// G3: a replica that returns after a write was voided is sent what it missed instead of
    /// being resynced, though it may have applied the voided write.
    ReplayPastVoidedWrite,
}

/// The planted bug, if any. A zero-sized `false` in builds without the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    #[cfg(feature = "planted-bugs")]
    planted: Option<PlantedBug>,
}

impl Bugs {
    pub const fn none() -> Bugs {
        Bugs {
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    #[cfg(feature = "planted-bugs")]
    pub const fn plant(bug: PlantedBug) -> Bugs {
        Bugs { planted: Some(bug) }
    }

    #[inline]
    pub fn has(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }
}
