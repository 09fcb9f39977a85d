//! Validation of new objects and of pool-cluster edits: cStor's CSPC webhook rules with cStor's
//! messages (one pool per node, a known raid type, a known compression), the limits Tandem's
//! pools have (directories, so stripe only), and what a new volume config must say.

use std::collections::BTreeSet;

use crate::meta::{LABEL_CSTOR_POOL_CLUSTER, LABEL_HOSTNAME};
use crate::object::{CStorPoolCluster, CStorVolumeConfig};

/// The most replicas a volume can have (cStor's MAXREPLICA).
pub const REPLICAS_MAX: u32 = 5;

/// The read-only threshold a pool gets when its CSPC does not say (cStor's default).
pub const DEFAULT_RO_THRESHOLD_PERCENT: u32 = 85;

/// A refused object; the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn refuse<T>(message: String) -> Result<T, ValidationError> {
    Err(ValidationError(message))
}

/// The node a CSPC pool entry selects (`nodeSelector: {kubernetes.io/hostname: NODE}`).
pub fn pool_node(node_selector: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    node_selector.get(LABEL_HOSTNAME).map(String::as_str)
}

/// cStor's `cspcValidation`, for a create or an update of a CStorPoolCluster.
pub fn validate_cspc(cspc: &CStorPoolCluster) -> Result<(), ValidationError> {
    let name = cspc.name();
    if cspc.spec.pools.is_empty() {
        return refuse("pools in cspc should have at least one item".to_string());
    }
    let mut nodes = BTreeSet::new();
    let mut devices = BTreeSet::new();
    for (index, pool) in cspc.spec.pools.iter().enumerate() {
        let Some(node) = pool_node(&pool.node_selector) else {
            return refuse(format!(
                "invalid cspc {name}: spec.pools[{index}].nodeSelector must name its node with \
                 {LABEL_HOSTNAME}"
            ));
        };
        if pool.node_selector.len() != 1 {
            return refuse(format!(
                "invalid cspc {name}: spec.pools[{index}].nodeSelector must hold only \
                 {LABEL_HOSTNAME}, so it selects exactly one node"
            ));
        }
        if !nodes.insert(node) {
            return refuse(format!("invalid cspc: duplicate node {node} entry"));
        }
        let config = &pool.pool_config;
        match config.data_raid_group_type.as_str() {
            "" => return refuse("missing dataRaidGroupType".to_string()),
            "stripe" => {}
            "mirror" | "raidz" | "raidz2" => {
                return refuse(format!(
                    "unsupported dataRaidGroupType '{}' specified: a Tandem pool is one directory \
                     on its node, so only stripe is supported (redundancy comes from volume \
                     replicas on other nodes)",
                    config.data_raid_group_type
                ))
            }
            other => return refuse(format!("unsupported dataRaidGroupType '{other}' specified")),
        }
        if !matches!(
            config.compression.as_str(),
            "" | "on" | "off" | "lzjb" | "gzip" | "zle" | "lz4"
        ) {
            return refuse(format!(
                "unsupported compression '{}' specified",
                config.compression
            ));
        }
        if let Some(limit) = config.ro_threshold_limit {
            if limit == 0 || limit > 100 {
                return refuse(format!(
                    "invalid cspc {name}: spec.pools[{index}].poolConfig.roThresholdLimit is \
                     {limit}; it is a percentage from 1 to 100 (100: never read-only)"
                ));
            }
        }
        if pool.data_raid_groups.is_empty() {
            return refuse(
                "at least one raid group should be present on dataRaidGroups".to_string(),
            );
        }
        if pool.data_raid_groups.len() != 1 {
            return refuse("stripe dataRaidGroups should have exactly one raidGroup".to_string());
        }
        for group in &pool.data_raid_groups {
            if group.block_devices.is_empty() {
                return refuse("stripe raid group should have atleast one disk".to_string());
            }
            for device in &group.block_devices {
                if !devices.insert(device.block_device_name.as_str()) {
                    return refuse(format!(
                        "invalid cspc: cspc {{{name}}} has duplicate blockdevices entries [{}]",
                        device.block_device_name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What a new CStorVolumeConfig must say before the provisioner can place it.
pub fn validate_new_cvc(cvc: &CStorVolumeConfig) -> Result<(), ValidationError> {
    let name = cvc.name();
    if cvc.pool_cluster_name().is_none_or(str::is_empty) {
        return refuse(format!(
            "cvc {name}: missing label {LABEL_CSTOR_POOL_CLUSTER}: it names the \
             CStorPoolCluster whose pools hold the replicas"
        ));
    }
    let count = cvc.spec.provision.replica_count;
    if count == 0 || count > REPLICAS_MAX {
        return refuse(format!(
            "cvc {name}: spec.provision.replicaCount is {count}; a volume has 1 to \
             {REPLICAS_MAX} replicas"
        ));
    }
    if cvc.spec.capacity.storage.is_zero() {
        return refuse(format!(
            "cvc {name}: spec.capacity.storage must be larger than 0"
        ));
    }
    let provisioned = cvc.spec.provision.capacity.storage;
    if !provisioned.is_zero() && provisioned != cvc.spec.capacity.storage {
        return refuse(format!(
            "cvc {name}: spec.provision.capacity.storage ({provisioned}) differs from \
             spec.capacity.storage ({}); resizing is not supported",
            cvc.spec.capacity.storage
        ));
    }
    let pools = cvc.desired_pool_names();
    if !pools.is_empty() && pools.len() != count as usize {
        return refuse(format!(
            "failed to distribute cvrs: incorrect number of pool names in cvc policy: expected \
             {count} got {}",
            pools.len()
        ));
    }
    Ok(())
}
