//! The spec and status of the volume kinds: CStorVolumeConfig (the volume as asked for, and where
//! its replicas should be), CStorVolume (the volume's target and its trusted replicas) and
//! CStorVolumeReplica (one replica in one pool).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{is_default, Condition, ObjectReference};
use crate::quantity::Quantity;

/// A `{storage: <size>}` map, as cStor's `capacity` fields hold (a Kubernetes ResourceList with
/// only the storage key).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageCapacity {
    #[serde(default)]
    pub storage: Quantity,
}

impl StorageCapacity {
    pub fn new(storage: Quantity) -> Self {
        StorageCapacity { storage }
    }
}

// ---------------------------------------------------------------------------------------------
// CStorVolumeConfig

/// CStorVolumeConfig `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeConfigSpec {
    /// The volume's size now (grows on resize).
    #[serde(default, skip_serializing_if = "is_default")]
    pub capacity: StorageCapacity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cstor_volume_ref: Option<ObjectReference>,
    /// "srcVolume@snapshot" for a clone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cstor_volume_source: String,
    /// What the volume was first made with; immutable (the admission rules refuse changes).
    #[serde(default, skip_serializing_if = "is_default")]
    pub provision: VolumeProvision,
    #[serde(default, skip_serializing_if = "is_default")]
    pub policy: CStorVolumePolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeProvision {
    #[serde(default, skip_serializing_if = "is_default")]
    pub capacity: StorageCapacity,
    #[serde(default)]
    pub replica_count: u32,
}

/// The volume policy, copied into the CVC at provisioning.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumePolicySpec {
    #[serde(default, skip_serializing_if = "is_default")]
    pub provision: PolicyProvision,
    #[serde(default, skip_serializing_if = "is_default")]
    pub target: TargetPolicy,
    #[serde(default, skip_serializing_if = "is_default")]
    pub replica: ReplicaPolicy,
    /// The DESIRED replica placement, one pool (CSPI) name per replica: edit this to scale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_pool_info: Vec<ReplicaPoolInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyProvision {
    /// Put a replica on the node the volume is published on, when there is a pool there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica_affinity: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// Target settings. cStor's pod-scheduling fields (resources, tolerations, affinity, ...) have no
/// meaning without Kubernetes and are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue_depth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lu_workers: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaPolicy {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zvol_workers: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compression: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaPoolInfo {
    pub pool_name: String,
}

impl ReplicaPoolInfo {
    pub fn new(pool_name: impl Into<String>) -> Self {
        ReplicaPoolInfo {
            pool_name: pool_name.into(),
        }
    }
}

/// CStorVolumeConfig `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeConfigStatus {
    #[serde(default)]
    pub phase: CStorVolumeConfigPhase,
    /// The CURRENT replica placement: pools that hold a replica of the volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pool_info: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<StorageCapacity>,
    /// cStor's JSON key is "condition", singular.
    #[serde(default, rename = "condition", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A CVC's phase. A new CVC is Pending until its volume and replicas exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CStorVolumeConfigPhase {
    #[default]
    Pending,
    Bound,
    Failed,
}

impl CStorVolumeConfigPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            CStorVolumeConfigPhase::Pending => "Pending",
            CStorVolumeConfigPhase::Bound => "Bound",
            CStorVolumeConfigPhase::Failed => "Failed",
        }
    }
}

impl fmt::Display for CStorVolumeConfigPhase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// CStorVolume

/// CStorVolume `spec`: the target and its replication numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeSpec {
    #[serde(default)]
    pub capacity: Quantity,
    #[serde(rename = "targetIP", default, skip_serializing_if = "String::is_empty")]
    pub target_ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_port: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iqn: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_portal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_base: String,
    /// RF: replicas the target currently trusts.
    #[serde(default)]
    pub replication_factor: u32,
    /// CF = RF/2 + 1: acknowledgements a write needs.
    #[serde(default)]
    pub consistency_factor: u32,
    /// DRF: how many replicas may connect; raised to scale up, lowered to scale down.
    #[serde(default)]
    pub desired_replication_factor: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub replica_details: ReplicaDetails,
}

/// The trusted replicas: replica id (a CVR's `spec.replicaid`) to the replica's data identity
/// (zvol GUID in cStor, as a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaDetails {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub known_replicas: BTreeMap<String, String>,
}

/// CStorVolume `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeStatus {
    #[serde(default)]
    pub phase: CStorVolumePhase,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_statuses: Vec<ReplicaStatus>,
    #[serde(default, skip_serializing_if = "Quantity::is_zero")]
    pub capacity: Quantity,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_update_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Equals the spec's except during a scale-down, when it still lists the leaving replica.
    #[serde(default, skip_serializing_if = "is_default")]
    pub replica_details: ReplicaDetails,
    /// Tandem: the volume's last rebuilds and resyncs, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resync_history: Vec<ResyncRecord>,
}

/// A volume's phase, as the target reports it. Healthy means at least CF healthy replicas, not
/// all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CStorVolumePhase {
    /// No replica yet (also the phase before the target first reports).
    #[default]
    Init,
    Healthy,
    Degraded,
    Offline,
    Error,
    Invalid,
}

impl CStorVolumePhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            CStorVolumePhase::Init => "Init",
            CStorVolumePhase::Healthy => "Healthy",
            CStorVolumePhase::Degraded => "Degraded",
            CStorVolumePhase::Offline => "Offline",
            CStorVolumePhase::Error => "Error",
            CStorVolumePhase::Invalid => "Invalid",
        }
    }
}

impl fmt::Display for CStorVolumePhase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One replica as the target sees it. Counters are decimal strings, as istgt reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaStatus {
    /// The replica's data identity (zvol GUID in cStor).
    #[serde(default)]
    pub replica_id: String,
    #[serde(default)]
    pub mode: ReplicaMode,
    #[serde(rename = "checkpointedIOSeq", default)]
    pub checkpointed_io_seq: String,
    #[serde(default)]
    pub inflight_read: String,
    #[serde(default)]
    pub inflight_write: String,
    #[serde(default)]
    pub inflight_sync: String,
    /// Seconds since the replica connected.
    #[serde(default)]
    pub up_time: u64,
    /// "1" when the replica's writes count toward quorum, "0" while it is being reconstructed.
    #[serde(default)]
    pub quorum: String,
    /// Tandem: the replica's full mode, named as the CVR phases (cStor's `mode` has only
    /// Healthy and Degraded); the replica's agent copies it into its CVR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorVolumeReplicaPhase>,
    /// Tandem: progress of the rebuild or resync of this replica, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildProgress>,
    /// Tandem: the last finished rebuild or resync of this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<ResyncRecord>,
}

/// A rebuild (full copy) or resync (only the regions that changed): as `lastResync`, one that
/// completed; in a `resyncHistory`, one that completed or was abandoned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResyncRecord {
    /// The replica copied to (in a CStorVolume's history; a replica's are its own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
    /// The replica the data came from.
    #[serde(default)]
    pub source: String,
    /// A full rebuild rather than an incremental resync.
    #[serde(default)]
    pub full: bool,
    /// Bytes copied.
    #[serde(default)]
    pub bytes: u64,
    /// When it started and ended (RFC 3339, milliseconds).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ended: String,
    /// `Completed`, or `Abandoned` (then `reason` says why; the next resync starts over).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ReplicaMode {
    #[default]
    Degraded,
    Healthy,
}

// ---------------------------------------------------------------------------------------------
// CStorVolumeReplica

/// CStorVolumeReplica `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeReplicaSpec {
    /// Where the replica finds its volume's target.
    #[serde(rename = "targetIP", default, skip_serializing_if = "String::is_empty")]
    pub target_ip: String,
    #[serde(default)]
    pub capacity: Quantity,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zvol_workers: String,
    /// The replica's identity in the volume (cStor's JSON key is all lower case).
    #[serde(
        rename = "replicaid",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub replica_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// CStorVolumeReplica `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeReplicaStatus {
    #[serde(default)]
    pub phase: CStorVolumeReplicaPhase,
    #[serde(default, skip_serializing_if = "is_default")]
    pub capacity: CStorVolumeReplicaCapacity,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_update_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Snapshot name to its size; kept so cStor objects load unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, SnapshotInfo>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending_snapshots: BTreeMap<String, SnapshotInfo>,
    /// Tandem's addition: progress of the running rebuild or resync, from the data path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildProgress>,
    /// Tandem's addition: the last finished rebuild or resync, from the data path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<ResyncRecord>,
    /// Tandem's addition: this replica's last rebuilds and resyncs, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resync_history: Vec<ResyncRecord>,
}

/// A replica's space: `total` is the ALLOCATED column (space taken in the pool), `used` the USED
/// column (data the volume holds, as the application sees it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorVolumeReplicaCapacity {
    #[serde(default)]
    pub total: Quantity,
    #[serde(default)]
    pub used: Quantity,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotInfo {
    #[serde(default)]
    pub logical_referenced: u64,
}

/// How far a replica's rebuild has got. `eta_seconds` is absent until a rate is known.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebuildProgress {
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_per_second: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// A replica's phase (the STATUS column of `get cvr`); see cstor-behaviour.md 1.6 for who sets
/// each and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CStorVolumeReplicaPhase {
    /// Just created for initial provisioning; no one has looked at it yet.
    #[default]
    #[serde(rename = "")]
    Empty,
    /// Its data is not created yet (created trusted, quorum on).
    Init,
    /// Made for a scale-up or met again after a restart; if its data is missing it is created
    /// untrusted (quorum off).
    Recreate,
    /// Not connected to the target.
    Offline,
    /// Connected, missing data, rebuild not started; its writes count toward quorum.
    Degraded,
    /// Connected, rebuild not started, and its writes do not count toward quorum (new replica).
    NewReplicaDegraded,
    /// Catching up from its checkpoint.
    Rebuilding,
    /// Being filled from scratch from its peers.
    ReconstructingNewReplica,
    Healthy,
    Error,
    DeletionFailed,
    Invalid,
}

impl CStorVolumeReplicaPhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            CStorVolumeReplicaPhase::Empty => "",
            CStorVolumeReplicaPhase::Init => "Init",
            CStorVolumeReplicaPhase::Recreate => "Recreate",
            CStorVolumeReplicaPhase::Offline => "Offline",
            CStorVolumeReplicaPhase::Degraded => "Degraded",
            CStorVolumeReplicaPhase::NewReplicaDegraded => "NewReplicaDegraded",
            CStorVolumeReplicaPhase::Rebuilding => "Rebuilding",
            CStorVolumeReplicaPhase::ReconstructingNewReplica => "ReconstructingNewReplica",
            CStorVolumeReplicaPhase::Healthy => "Healthy",
            CStorVolumeReplicaPhase::Error => "Error",
            CStorVolumeReplicaPhase::DeletionFailed => "DeletionFailed",
            CStorVolumeReplicaPhase::Invalid => "Invalid",
        }
    }
}

impl fmt::Display for CStorVolumeReplicaPhase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}
