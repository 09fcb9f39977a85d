//! The spec and status of the pool kinds: CStorPoolCluster (one pool per node, as desired) and
//! CStorPoolInstance (one pool on one node, as it is).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{is_default, Condition};
use crate::quantity::Quantity;

/// CStorPoolCluster `spec`: the pools wanted, one per node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorPoolClusterSpec {
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
}

/// One pool of a CSPC: where it goes and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// Must select exactly one node (cStor's webhook refuses two pools on one node).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub data_raid_groups: Vec<RaidGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_cache_raid_groups: Vec<RaidGroup>,
    #[serde(default)]
    pub pool_config: PoolConfig,
}

/// A group of devices with one RAID layout.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RaidGroup {
    #[serde(default)]
    pub block_devices: Vec<BlockDevice>,
}

/// One device (for Tandem: a directory or a device path) in a raid group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockDevice {
    pub block_device_name: String,
    /// Bytes; filled in by the system, not by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dev_link: String,
}

/// How a pool is laid out and run. Strings where cStor has strings, so a CSPC validator can give
/// cStor's own messages ("missing dataRaidGroupType", "unsupported compression '%s' specified").
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    /// stripe, mirror, raidz or raidz2.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_raid_group_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub write_cache_group_type: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thick_provision: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compression: String,
    /// Percent of the pool used at which it turns read-only; cStor's operator sets 85 when
    /// absent, and 100 means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ro_threshold_limit: Option<u32>,
}

/// CStorPoolCluster `status`, the numbers `get cspc` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorPoolClusterStatus {
    /// How many CSPIs exist.
    #[serde(default)]
    pub provisioned_instances: u32,
    /// `len(spec.pools)`.
    #[serde(default)]
    pub desired_instances: u32,
    /// CSPIs that are ONLINE with their pool manager running.
    #[serde(default)]
    pub healthy_instances: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// CStorPoolInstance `spec`: one pool on one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorPoolInstanceSpec {
    #[serde(default)]
    pub host_name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub pool_config: PoolConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_raid_groups: Vec<RaidGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_cache_raid_groups: Vec<RaidGroup>,
}

/// A pool's phase. The upper-case ones are zpool health states; the others are cStor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum CStorPoolInstancePhase {
    /// Not reported yet.
    #[default]
    #[serde(rename = "")]
    Empty,
    #[serde(rename = "ONLINE")]
    Online,
    #[serde(rename = "OFFLINE")]
    Offline,
    #[serde(rename = "DEGRADED")]
    Degraded,
    #[serde(rename = "FAULTED")]
    Faulted,
    #[serde(rename = "REMOVED")]
    Removed,
    #[serde(rename = "UNAVAIL")]
    Unavail,
    Error,
    DeletionFailed,
    Invalid,
    ErrorDuplicate,
    Pending,
    Init,
    PoolCreationFailed,
}

impl CStorPoolInstancePhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            CStorPoolInstancePhase::Empty => "",
            CStorPoolInstancePhase::Online => "ONLINE",
            CStorPoolInstancePhase::Offline => "OFFLINE",
            CStorPoolInstancePhase::Degraded => "DEGRADED",
            CStorPoolInstancePhase::Faulted => "FAULTED",
            CStorPoolInstancePhase::Removed => "REMOVED",
            CStorPoolInstancePhase::Unavail => "UNAVAIL",
            CStorPoolInstancePhase::Error => "Error",
            CStorPoolInstancePhase::DeletionFailed => "DeletionFailed",
            CStorPoolInstancePhase::Invalid => "Invalid",
            CStorPoolInstancePhase::ErrorDuplicate => "ErrorDuplicate",
            CStorPoolInstancePhase::Pending => "Pending",
            CStorPoolInstancePhase::Init => "Init",
            CStorPoolInstancePhase::PoolCreationFailed => "PoolCreationFailed",
        }
    }
}

impl fmt::Display for CStorPoolInstancePhase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// CStorPoolInstance `status`, what `get cspi` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorPoolInstanceStatus {
    #[serde(default)]
    pub phase: CStorPoolInstancePhase,
    #[serde(default, skip_serializing_if = "is_default")]
    pub capacity: CStorPoolInstanceCapacity,
    /// Set once used space reaches `poolConfig.roThresholdLimit`; no new replica may go here.
    #[serde(default)]
    pub read_only: bool,
    /// Replicas (CVRs) held by the pool.
    #[serde(default)]
    pub provisioned_replicas: u32,
    /// Of those, the Healthy ones.
    #[serde(default)]
    pub healthy_replicas: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A pool's space. `total = used + free`, as cStor computes it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CStorPoolInstanceCapacity {
    /// The ALLOCATED column.
    #[serde(default)]
    pub used: Quantity,
    #[serde(default)]
    pub free: Quantity,
    #[serde(default)]
    pub total: Quantity,
    /// Tandem: the sizes of the volume replicas on the pool, added up (what it has promised;
    /// thin replicas take less until written). Absent from cStor's objects and older agents'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned: Option<Quantity>,
    /// cStor's zfs-specific numbers; kept so cStor objects load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs: Option<ZfsCapacity>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZfsCapacity {
    #[serde(default)]
    pub logical_used: Quantity,
}
