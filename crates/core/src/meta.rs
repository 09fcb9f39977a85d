//! What a replica keeps on disk besides its data: the superblock and the resync bookkeeping.
//!
//! The bookkeeping is a region map (for each region, the newest sequence that wrote it) and an
//! activity log (regions that may have been written since the map was last persisted). Both are
//! persisted only at checkpoints and when a write first touches a region outside the activity log,
//! never once per write (G8).

use crate::types::{Generation, Geometry, Incarnation, RegionSet, ReplicaId, Seq, Stamp};

/// A region-map entry meaning "changed at some unknown point": set for activity-log regions after
/// an unclean stop, so every resync treats them as changed.
pub const SEQ_UNKNOWN: Seq = Seq(u64::MAX);

/// The fixed-size part of a replica's metadata, written atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    pub geometry: Geometry,
    /// The highest target generation this replica has accepted; it refuses lower ones (G5).
    pub generation_seen: Generation,
    /// True if the data is a consistent copy of the volume's history up to `stamp`.
    pub consistent: bool,
    pub stamp: Stamp,
    /// While not consistent: the newest acknowledged write the unfinished resync brings in.
    pub sync_stamp: Stamp,
    /// Every operation at or below this is durable here and part of every future history.
    pub checkpoint: Seq,
}

/// Everything a replica persists besides data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMeta {
    pub superblock: Superblock,
    pub region_seqs: Vec<Seq>,
    pub activity_log: RegionSet,
}

/// One atomic metadata write: a new superblock, changed region-map entries, the activity log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaUpdate {
    pub superblock: Superblock,
    pub region_changes: Vec<(u32, Seq)>,
    pub activity_log: RegionSet,
}

impl ReplicaMeta {
    /// Metadata for freshly created replica storage. The replicas a volume is created with are
    /// consistent (an empty volume has an empty history); a replica added later is not, and must
    /// be rebuilt before it holds anything.
    pub fn new(
        replica: ReplicaId,
        incarnation: Incarnation,
        geometry: Geometry,
        consistent: bool,
    ) -> ReplicaMeta {
        let regions = geometry.region_count() as u32;
        ReplicaMeta {
            superblock: Superblock {
                replica,
                incarnation,
                geometry,
                generation_seen: Generation(0),
                consistent,
                stamp: Stamp::ZERO,
                sync_stamp: Stamp::ZERO,
                checkpoint: Seq::ZERO,
            },
            region_seqs: vec![Seq::ZERO; regions as usize],
            activity_log: RegionSet::new(regions),
        }
    }

    /// Applies an update as storage does once it is durable.
    pub fn apply(&mut self, update: &MetaUpdate) {
        self.superblock = update.superblock.clone();
        for &(region, seq) in &update.region_changes {
            self.region_seqs[region as usize] = seq;
        }
        self.activity_log = update.activity_log.clone();
    }
}
