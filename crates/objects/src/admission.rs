//! The admission rules for an update of a CStorVolumeConfig: cStor's webhook rules in cStor's
//! order with cStor's exact messages, then the guards Tandem adds (pool must exist, be in the
//! volume's pool cluster, be ONLINE and writable; never remove the last replica; one change in
//! flight; scale down only while the volume is Healthy, except that a replica which is not
//! Healthy, such as one on a dead node, may be removed when every other replica is Healthy and
//! at least the consistency factor of them remain).
//!
//! Like cStor's webhook, the rules judge every update, the controllers' as well as the users'.
//! Tandem's guards are written so the controllers' own updates pass them: they only look at
//! what an update changes in `spec.policy.replicaPoolInfo`, and the controllers change only
//! `status.poolInfo` while scaling.
//!
//! The rules are pure: everything they need besides the two objects comes through
//! [`PoolLookup`].

use std::collections::{BTreeMap, BTreeSet};

use crate::capacity::{room_for, CapacityPolicy, PoolSpace, Provisioning};
use crate::meta::LABEL_CSTOR_POOL_CLUSTER;
use crate::object::{CStorPoolInstance, CStorVolumeConfig};
use crate::pool::CStorPoolInstancePhase;
use crate::volume::{CStorVolumeConfigPhase, CStorVolumePhase, CStorVolumeReplicaPhase};

/// What the rules need to know about the rest of the cluster.
pub trait PoolLookup {
    /// The CStorPoolInstance named `pool_name`, if there is one.
    fn pool_instance(&self, pool_name: &str) -> Option<CStorPoolInstance>;

    /// The phase of the CStorVolume named `volume_name` (a volume's CV, CVC and PV share its
    /// name), if there is one.
    fn volume_phase(&self, volume_name: &str) -> Option<CStorVolumePhase>;

    /// The phase of the volume's replica in pool `pool_name` (its CStorVolumeReplica's), if
    /// there is one.
    fn replica_phase(&self, volume_name: &str, pool_name: &str) -> Option<CStorVolumeReplicaPhase>;

    /// The sizes of the replicas on pool `pool_name`, added up.
    fn provisioned_bytes(&self, pool_name: &str) -> u64;

    /// The capacity policy of the CStorPoolCluster named `cluster` (the defaults if it has
    /// none, or says nothing).
    fn capacity_policy(&self, cluster: &str) -> CapacityPolicy;
}

/// The condition a CVC carries from a scale's start until it is finished (for a scale-up: until
/// every new replica is Healthy). No other change of the pools is accepted meanwhile.
pub const CONDITION_SCALING_VOLUME_REPLICAS: &str = "ScalingVolumeReplicas";

/// A [`PoolLookup`] over objects already in memory: for tests, and for callers that load what
/// the rules need before running them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub pools: BTreeMap<String, CStorPoolInstance>,
    pub volume_phases: BTreeMap<String, CStorVolumePhase>,
    /// (volume, pool) -> the phase of the volume's replica in that pool.
    pub replica_phases: BTreeMap<(String, String), CStorVolumeReplicaPhase>,
    /// Pool -> the sizes of its replicas, added up.
    pub provisioned: BTreeMap<String, u64>,
    /// Pool cluster -> its capacity policy.
    pub policies: BTreeMap<String, CapacityPolicy>,
}

impl PoolSnapshot {
    pub fn new() -> Self {
        PoolSnapshot::default()
    }

    pub fn with_pool(mut self, pool: CStorPoolInstance) -> Self {
        self.pools.insert(pool.metadata.name.clone(), pool);
        self
    }

    pub fn with_volume_phase(mut self, volume_name: &str, phase: CStorVolumePhase) -> Self {
        self.volume_phases.insert(volume_name.to_string(), phase);
        self
    }

    pub fn with_replica_phase(
        mut self,
        volume_name: &str,
        pool_name: &str,
        phase: CStorVolumeReplicaPhase,
    ) -> Self {
        self.replica_phases
            .insert((volume_name.to_string(), pool_name.to_string()), phase);
        self
    }
}

impl PoolLookup for PoolSnapshot {
    fn pool_instance(&self, pool_name: &str) -> Option<CStorPoolInstance> {
        self.pools.get(pool_name).cloned()
    }

    fn volume_phase(&self, volume_name: &str) -> Option<CStorVolumePhase> {
        self.volume_phases.get(volume_name).copied()
    }

    fn replica_phase(&self, volume_name: &str, pool_name: &str) -> Option<CStorVolumeReplicaPhase> {
        self.replica_phases
            .get(&(volume_name.to_string(), pool_name.to_string()))
            .copied()
    }

    fn provisioned_bytes(&self, pool_name: &str) -> u64 {
        self.provisioned.get(pool_name).copied().unwrap_or(0)
    }

    fn capacity_policy(&self, cluster: &str) -> CapacityPolicy {
        self.policies.get(cluster).cloned().unwrap_or_default()
    }
}

/// Which rule refused an update. The first eight are cStor's, the rest Tandem's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionRule {
    /// cStor: `spec.provision.replicaCount` changed.
    ReplicaCountModified,
    /// cStor: `spec.provision.capacity` changed.
    ProvisionedCapacityModified,
    /// cStor: the pool count changed while the CVC is not Bound.
    ScalingWhileNotBound,
    /// cStor: a current pool was dropped without lowering the count (a replacement in one edit).
    PoolReplacement,
    /// cStor: more than one pool removed in one edit.
    MoreThanOneScaleDown,
    /// cStor: the pool count changed while an earlier scale is still going.
    ScalingAlreadyInProgress,
    /// cStor: a pool named twice in `spec.policy.replicaPoolInfo`.
    DuplicatePoolNamesInSpec,
    /// cStor: a pool named twice in `status.poolInfo`.
    DuplicatePoolNamesInStatus,
    /// Tandem: the update would leave no replica at all.
    LastReplicaRemoval,
    /// Tandem: the pools changed while an earlier change is still going (same count, other
    /// names, which cStor's count-based rule misses).
    ChangeWhileScaling,
    /// Tandem: a pool removed while the volume is not Healthy.
    ScaleDownWhileNotHealthy,
    /// Tandem: a pool whose replica is not Healthy removed while another replica is not Healthy
    /// either, or with fewer than the consistency factor of replicas left.
    UnhealthyReplicaRemoval,
    /// Tandem: the CVC does not say which pool cluster its replicas belong to.
    VolumeClusterUnknown,
    /// Tandem: an added pool does not exist.
    PoolNotFound,
    /// Tandem: an added pool belongs to another pool cluster.
    PoolInOtherCluster,
    /// Tandem: an added pool is not ONLINE.
    PoolNotOnline,
    /// Tandem: an added pool is read-only.
    PoolReadOnly,
    /// Tandem: an added pool's node is cordoned.
    PoolCordoned,
    /// Tandem: an added pool would pass its pool cluster's over-provisioning limit, or keep
    /// less than its minimum free space.
    PoolHasNoRoom,
}

impl AdmissionRule {
    /// True for the rules cStor's own webhook has.
    pub fn is_cstor_rule(self) -> bool {
        matches!(
            self,
            AdmissionRule::ReplicaCountModified
                | AdmissionRule::ProvisionedCapacityModified
                | AdmissionRule::ScalingWhileNotBound
                | AdmissionRule::PoolReplacement
                | AdmissionRule::MoreThanOneScaleDown
                | AdmissionRule::ScalingAlreadyInProgress
                | AdmissionRule::DuplicatePoolNamesInSpec
                | AdmissionRule::DuplicatePoolNamesInStatus
        )
    }
}

/// A refused update: the rule, and the message for the user (cStor's own for cStor's rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdmissionError {
    pub rule: AdmissionRule,
    pub message: String,
}

fn refuse(rule: AdmissionRule, message: String) -> Result<(), AdmissionError> {
    Err(AdmissionError { rule, message })
}

/// Judges an update of a CStorVolumeConfig from `old` to `new`. cStor's rules run first, in
/// cStor's order, then Tandem's; the first refusal wins.
pub fn validate_cvc_update(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
    pools: &dyn PoolLookup,
) -> Result<(), AdmissionError> {
    // cStor's webhook (pkg/webhook/cvc.go: validateCVCSpecChanges).
    validate_replica_count(old, new)?;
    validate_provisioned_capacity(old, new)?;
    if records_placement(old, new) {
        return validate_pool_names(new);
    }
    validate_pool_list_changes(old, new)?;
    validate_replica_scaling(old, new)?;
    validate_pool_names(new)?;
    // Tandem's guards.
    refuse_removing_the_last_replica(old, new)?;
    refuse_changes_while_scaling(old, new)?;
    refuse_scale_down_unless_healthy(old, new, pools)?;
    check_added_pools(old, new, pools)?;
    Ok(())
}

/// The provisioner binds a new volume in two writes (the status subresource, then the spec),
/// where cStor writes both at once: the second fills the empty `spec.policy.replicaPoolInfo`
/// with exactly the pools in `status.poolInfo`. That states the placement, it does not change
/// it, so the scaling rules (which would see a count change mid-scale) do not apply.
fn records_placement(old: &CStorVolumeConfig, new: &CStorVolumeConfig) -> bool {
    let mut current: Vec<&str> = old
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    let mut recorded = new.desired_pool_names();
    current.sort_unstable();
    recorded.sort_unstable();
    old.desired_pool_names().is_empty() && !current.is_empty() && recorded == current
}

// ---------------------------------------------------------------------------------------------
// cStor's rules

fn validate_replica_count(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    let old_count = old.spec.provision.replica_count;
    let new_count = new.spec.provision.replica_count;
    if old_count != new_count {
        return refuse(
            AdmissionRule::ReplicaCountModified,
            format!(
                "cvc {} replicaCount got modified from {old_count} to {new_count}",
                old.name()
            ),
        );
    }
    Ok(())
}

fn validate_provisioned_capacity(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    // Compares sizes, not spellings: "5Gi" to "5120Mi" is no change (cStor uses Quantity.Cmp).
    if old.spec.provision.capacity.storage != new.spec.provision.capacity.storage {
        return refuse(
            AdmissionRule::ProvisionedCapacityModified,
            // cStor's message ends with a space; kept so scripts matching it keep working.
            "cvc initial provisioned capacity `Spec.Provision.Capacity` is immutable, can't be modified "
                .to_string(),
        );
    }
    Ok(())
}

/// Compares the new desired pools with the old CURRENT pools (`status.poolInfo`), as cStor does.
fn validate_pool_list_changes(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    let old_current = old.current_pool_names();
    let new_desired = new.desired_pool_names();
    let dropped_pools = list_difference(old_current, &new_desired);

    // A controller's update that binds the CVC writes the pools and the Bound phase together,
    // so only refuse when neither side is Bound.
    if old.status.phase != CStorVolumeConfigPhase::Bound
        && new.status.phase != CStorVolumeConfigPhase::Bound
        && old_current.len() != new_desired.len()
    {
        return refuse(
            AdmissionRule::ScalingWhileNotBound,
            format!(
                "Can't perform scaling of volume replicas when CVC is not in {} state",
                CStorVolumeConfigPhase::Bound
            ),
        );
    }

    if new_desired.len() >= old_current.len() {
        // Scale up (or no change): every current pool must still be wanted.
        if !dropped_pools.is_empty() {
            return refuse(
                AdmissionRule::PoolReplacement,
                format!(
                    "volume replica migration directly by modifying pool names {} is not yet supported",
                    go_list(&dropped_pools)
                ),
            );
        }
    } else if dropped_pools.len() > 1 {
        return refuse(
            AdmissionRule::MoreThanOneScaleDown,
            format!(
                "Can't perform more than one replica scale down requested scale down count {}",
                dropped_pools.len()
            ),
        );
    }
    Ok(())
}

fn validate_replica_scaling(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    // Several pools may be added in one edit, but not in several edits while one is going.
    if old.is_scaling_in_progress()
        && old.spec.policy.replica_pool_info.len() != new.spec.policy.replica_pool_info.len()
    {
        return refuse(
            AdmissionRule::ScalingAlreadyInProgress,
            format!("scaling of CVC {} is already in progress", old.name()),
        );
    }
    Ok(())
}

fn validate_pool_names(new: &CStorVolumeConfig) -> Result<(), AdmissionError> {
    let desired = new.desired_pool_names();
    if !is_unique(&desired) {
        return refuse(
            AdmissionRule::DuplicatePoolNamesInSpec,
            format!(
                "duplicate pool names {} found under spec of cvc {}",
                go_list(&desired),
                new.name()
            ),
        );
    }
    let current: Vec<&str> = new
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    if !is_unique(&current) {
        return refuse(
            AdmissionRule::DuplicatePoolNamesInStatus,
            format!(
                "duplicate pool names {} found under status of cvc {}",
                go_list(&current),
                new.name()
            ),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tandem's guards

/// cStor lets a 1-replica volume scale down to 0 (openebs#2981 lost data that way).
fn refuse_removing_the_last_replica(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    let old_desired = old.desired_pool_names();
    let old_current: Vec<&str> = old
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    let had_replicas = !old_desired.is_empty() || !old_current.is_empty();
    if had_replicas && new.spec.policy.replica_pool_info.is_empty() {
        let pools = if old_current.is_empty() {
            old_desired
        } else {
            old_current
        };
        return refuse(
            AdmissionRule::LastReplicaRemoval,
            format!(
                "cvc {}: refusing to remove the last replica (pools {}): \
                 spec.policy.replicaPoolInfo must keep at least one pool",
                new.name(),
                go_list(&pools)
            ),
        );
    }
    Ok(())
}

/// One change in flight per volume. cStor's "already in progress" rule only compares counts, so
/// swapping the pool of a pending scale-up for another slips through it; this closes that gap.
/// Only for a Bound CVC: before that, the provisioner owns the pool list.
fn refuse_changes_while_scaling(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
) -> Result<(), AdmissionError> {
    if old.status.phase != CStorVolumeConfigPhase::Bound {
        return Ok(());
    }
    let old_desired: BTreeSet<&str> = old.desired_pool_names().into_iter().collect();
    let old_current: BTreeSet<&str> = old
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    let new_desired: BTreeSet<&str> = new.desired_pool_names().into_iter().collect();
    if new_desired == old_desired {
        return Ok(());
    }
    if old_desired != old_current {
        return refuse(
            AdmissionRule::ChangeWhileScaling,
            format!(
                "cvc {}: a replica change is already in flight (spec.policy.replicaPoolInfo {}, \
                 status.poolInfo {}); wait until status.poolInfo matches the spec before \
                 changing the pools again",
                new.name(),
                go_list(&old.desired_pool_names()),
                go_list(old.current_pool_names())
            ),
        );
    }
    if let Some(scaling) = old
        .status
        .conditions
        .iter()
        .find(|condition| condition.condition_type == CONDITION_SCALING_VOLUME_REPLICAS)
    {
        return refuse(
            AdmissionRule::ChangeWhileScaling,
            format!(
                "cvc {}: the last replica change is not finished ({}); wait until the \
                 {CONDITION_SCALING_VOLUME_REPLICAS} condition is gone from its status",
                new.name(),
                scaling.message
            ),
        );
    }
    Ok(())
}

/// cStor enforces this late, in the target's sidecar, after the CVC edit was accepted; Tandem
/// refuses the edit itself so the user hears it at once.
///
/// A replica known not to be Healthy (its node died, say) is the exception, or a dead node could
/// never be replaced: the volume stays Degraded while it is a member. Removing it is allowed
/// exactly when every other replica is Healthy and at least the consistency factor (of the
/// volume as it is) of them remain, which is what the target needs to drop a member without
/// losing an acknowledged write (the others hold everything; it drains them first).
fn refuse_scale_down_unless_healthy(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
    pools: &dyn PoolLookup,
) -> Result<(), AdmissionError> {
    let old_desired = old.desired_pool_names();
    let removed_pools = list_difference(&old_desired, &new.desired_pool_names());
    if removed_pools.is_empty() {
        return Ok(());
    }
    let volume_name = new.name();
    if let [removed] = removed_pools.as_slice() {
        match pools.replica_phase(volume_name, removed) {
            Some(CStorVolumeReplicaPhase::Healthy) | None => {}
            Some(phase) => {
                return refuse_unless_others_healthy(
                    volume_name,
                    &old_desired,
                    removed,
                    phase,
                    pools,
                )
            }
        }
    }
    let state = match pools.volume_phase(volume_name) {
        Some(CStorVolumePhase::Healthy) => return Ok(()),
        Some(phase) => format!("it is {phase}"),
        None => format!("there is no CStorVolume {volume_name}"),
    };
    refuse(
        AdmissionRule::ScaleDownWhileNotHealthy,
        format!(
            "cvc {volume_name}: scale down (removing pool {}) is allowed only while CStorVolume \
             {volume_name} is Healthy; {state}",
            removed_pools.join(", ")
        ),
    )
}

/// Removing `removed`, whose replica is in `phase` (not Healthy), from the volume on
/// `old_desired`: every other replica must be Healthy, and at least the consistency factor of
/// them must remain.
fn refuse_unless_others_healthy(
    volume_name: &str,
    old_desired: &[&str],
    removed: &str,
    phase: CStorVolumeReplicaPhase,
    pools: &dyn PoolLookup,
) -> Result<(), AdmissionError> {
    let others: Vec<&str> = old_desired
        .iter()
        .copied()
        .filter(|pool| *pool != removed)
        .collect();
    let consistency_factor = old_desired.len() / 2 + 1;
    let removing = format!(
        "cvc {volume_name}: removing pool {removed}, whose replica is {phase} (not Healthy), is \
         allowed only when every other replica is Healthy and at least {consistency_factor} \
         (the volume's consistency factor) of them remain"
    );
    let unhealthy: Vec<String> = others
        .iter()
        .filter_map(|pool| match pools.replica_phase(volume_name, pool) {
            Some(CStorVolumeReplicaPhase::Healthy) => None,
            Some(phase) => Some(format!("the replica on pool {pool} is {phase}")),
            None => Some(format!("pool {pool} has no replica")),
        })
        .collect();
    if !unhealthy.is_empty() {
        return refuse(
            AdmissionRule::UnhealthyReplicaRemoval,
            format!("{removing}; {}", unhealthy.join(", ")),
        );
    }
    if others.len() < consistency_factor {
        return refuse(
            AdmissionRule::UnhealthyReplicaRemoval,
            format!(
                "{removing}; only {} would remain: add a pool on a live node to \
                 spec.policy.replicaPoolInfo first, and remove {removed} once its replica is \
                 Healthy",
                others.len()
            ),
        );
    }
    Ok(())
}

/// Pools added by this update (named now, not named before, holding no replica yet) must exist
/// and belong to the volume's pool cluster (cStor checks neither: openebs#2982, a typo that
/// leaves the scale-up hanging). On a scaling edit they must also be ONLINE and writable. The
/// update that binds a new CVC records the provisioner's own placement, which already skipped
/// offline and read-only pools when it chose them; a pool that changed state since must not
/// wedge the volume in Pending, so that update is not held to the pool's state.
fn check_added_pools(
    old: &CStorVolumeConfig,
    new: &CStorVolumeConfig,
    pools: &dyn PoolLookup,
) -> Result<(), AdmissionError> {
    let old_desired = old.desired_pool_names();
    let old_current: Vec<&str> = old
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    let added_pools: Vec<&str> = new
        .desired_pool_names()
        .into_iter()
        .filter(|pool| !old_desired.contains(pool) && !old_current.contains(pool))
        .collect();
    if added_pools.is_empty() {
        return Ok(());
    }
    let volume_name = new.name();
    // The cluster the volume already has; an edit cannot move it by changing the label.
    let Some(volume_cluster) = old.pool_cluster_name().or(new.pool_cluster_name()) else {
        return refuse(
            AdmissionRule::VolumeClusterUnknown,
            format!(
                "cvc {volume_name} has no {LABEL_CSTOR_POOL_CLUSTER} label, so the pools in \
                 spec.policy.replicaPoolInfo cannot be checked against the volume's \
                 CStorPoolCluster"
            ),
        );
    };
    let is_scaling_edit = old.status.phase == CStorVolumeConfigPhase::Bound;
    for pool_name in added_pools {
        let Some(pool) = pools.pool_instance(pool_name) else {
            return refuse(
                AdmissionRule::PoolNotFound,
                format!(
                    "cvc {volume_name}: pool {pool_name} named in spec.policy.replicaPoolInfo \
                     does not exist (there is no CStorPoolInstance {pool_name})"
                ),
            );
        };
        if pool.pool_cluster_name() != Some(volume_cluster) {
            let membership = match pool.pool_cluster_name() {
                Some(other_cluster) => format!("belongs to CStorPoolCluster {other_cluster}"),
                None => format!(
                    "belongs to no CStorPoolCluster (it has no {LABEL_CSTOR_POOL_CLUSTER} label)"
                ),
            };
            return refuse(
                AdmissionRule::PoolInOtherCluster,
                format!(
                    "cvc {volume_name}: pool {pool_name} {membership}, but the volume's replicas \
                     must be on pools of CStorPoolCluster {volume_cluster}"
                ),
            );
        }
        if !is_scaling_edit {
            continue;
        }
        if pool.status.phase != CStorPoolInstancePhase::Online {
            let state = match pool.status.phase {
                CStorPoolInstancePhase::Empty => "has not reported a phase yet".to_string(),
                phase => format!("is {phase}"),
            };
            return refuse(
                AdmissionRule::PoolNotOnline,
                format!(
                    "cvc {volume_name}: pool {pool_name} {state}, not ONLINE, so it cannot take \
                     a new replica"
                ),
            );
        }
        if pool.cordoned() {
            return refuse(
                AdmissionRule::PoolCordoned,
                format!(
                    "cvc {volume_name}: pool {pool_name} is on node {}, which is cordoned (tandem \
                     node uncordon {}), so it cannot take a new replica",
                    pool.spec.host_name, pool.spec.host_name
                ),
            );
        }
        if pool.status.read_only {
            return refuse(
                AdmissionRule::PoolReadOnly,
                format!(
                    "cvc {volume_name}: pool {pool_name} is read-only (its used space reached \
                     its read-only threshold), so it cannot take a new replica; expand the pool \
                     or choose another"
                ),
            );
        }
        let space = PoolSpace {
            capacity: pool.status.capacity.total.bytes(),
            used: pool.status.capacity.used.bytes(),
            provisioned: pools.provisioned_bytes(pool_name),
        };
        let provisioning = Provisioning::of(&new.metadata.annotations).unwrap_or_default();
        let policy = pools.capacity_policy(volume_cluster);
        let size = new.spec.capacity.storage.bytes();
        if let Err(no_room) = room_for(pool_name, space, size, provisioning, &policy) {
            return refuse(
                AdmissionRule::PoolHasNoRoom,
                format!("cvc {volume_name}: {no_room}; choose another pool, or free or add space"),
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// cStor's `util.ListDiff(a, b)`: the items of `a` not in `b`, in `a`'s order (repeats kept).
fn list_difference<'a, A: AsRef<str>, B: AsRef<str>>(a: &'a [A], b: &[B]) -> Vec<&'a str> {
    a.iter()
        .map(AsRef::as_ref)
        .filter(|item| !b.iter().any(|other| other.as_ref() == *item))
        .collect()
}

fn is_unique(items: &[&str]) -> bool {
    let mut seen = BTreeSet::new();
    items.iter().all(|item| seen.insert(*item))
}

/// A list as Go's `%v` prints a `[]string`, which cStor's messages use: "[a b c]".
fn go_list<T: AsRef<str>>(items: &[T]) -> String {
    let joined: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", joined.join(" "))
}
