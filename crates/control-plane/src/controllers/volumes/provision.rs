//! Provisioning a Pending CVC whose volume exists: one replica per usable pool of its cluster
//! (never two on one node, the spec's pools only if it names any), all or none; once every
//! replica exists the CVC is Bound and its placement goes into its spec.

use rand::seq::SliceRandom;
use rand::Rng;
use tandem_objects::capacity::{room_for, Provisioning, REASON_INSUFFICIENT_CAPACITY};
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstancePhase, CStorVolume, CStorVolumeConfig,
    CStorVolumeConfigPhase, CStorVolumeReplicaPhase, EventType, Object,
};

use crate::controllers::execute::{Action, Log, Version};
use crate::controllers::observe::Observed;
use crate::controllers::volumes::objects::{new_replica, with_placement};
use crate::controllers::volumes::{record, warn_once};

/// The replicas still missing, or, with none missing, the binding. `random` breaks ties
/// between equally loaded pools.
pub(crate) fn plan_provision(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    random: &mut impl Rng,
) -> Vec<Action> {
    let Some(cluster) = config.pool_cluster_name() else {
        return Vec::new(); // The API refuses such a CVC; nothing to place it with.
    };
    let namespace = &config.metadata.namespace;
    let replica_count = config.spec.provision.replica_count as usize;
    let existing = observed.replicas_of(config);
    let pending = replica_count.saturating_sub(existing.len());
    if pending == 0 {
        let pools = existing.keys().map(|pool| pool.to_string()).collect();
        return bind(config, volume, pools);
    }
    let used_nodes: Vec<&str> = existing
        .keys()
        .filter_map(|pool| observed.pool(namespace, pool))
        .map(|pool| pool.spec.host_name.as_str())
        .collect();
    let mut candidates: Vec<&CStorPoolInstance> = observed
        .pools
        .iter()
        .filter(|pool| {
            pool.metadata.namespace == *namespace
                && pool.pool_cluster_name() == Some(cluster)
                && !existing.contains_key(pool.name())
                && !used_nodes.contains(&pool.spec.host_name.as_str())
        })
        .collect();
    let named = config.desired_pool_names();
    if !named.is_empty() {
        candidates.retain(|pool| named.contains(&pool.name()));
    }
    let mut skipped = Vec::new();
    candidates.retain(|pool| match unusable_reason(pool) {
        Some(reason) => {
            skipped.push(format!("{} {reason}", pool.name()));
            false
        }
        None => true,
    });
    let usable_but_for_room = candidates.len();
    let size = config.spec.capacity.storage.bytes();
    let provisioning = Provisioning::of(&config.metadata.annotations).unwrap_or_default();
    let policy = observed.capacity_policy(namespace, cluster);
    candidates.retain(|pool| {
        let space = observed.pool_space(pool);
        match room_for(pool.name(), space, size, provisioning, &policy) {
            Ok(()) => true,
            Err(no_room) => {
                skipped.push(no_room.to_string());
                false
            }
        }
    });
    if candidates.len() < pending {
        let mut message = format!(
            "not enough pools are available of provided CSPC: {cluster:?}, usable pool count: \
             {} pending replica count: {pending}",
            candidates.len()
        );
        if !skipped.is_empty() {
            message.push_str(&format!(" (skipped: {})", skipped.join("; ")));
        }
        // Only room is missing: say so apart, so waiting for the pools is not mistaken for it.
        let reason = if usable_but_for_room >= pending {
            REASON_INSUFFICIENT_CAPACITY
        } else {
            "Provisioning"
        };
        return vec![warn_once(config, reason, &message)];
    }
    // cStor shuffles; spreading by how many replicas a pool holds keeps pools even.
    candidates.shuffle(random);
    candidates.sort_by_key(|pool| pool.status.provisioned_replicas);
    let mut actions = Vec::new();
    for pool in candidates.into_iter().take(pending) {
        observed.note_placed(pool, size);
        let replica = new_replica(config, volume, pool, CStorVolumeReplicaPhase::Empty);
        actions.push(Action::Log(Log::CreatingReplica {
            replica: replica.name().to_string(),
            pool: pool.name().to_string(),
        }));
        actions.push(Action::Create(Object::CStorVolumeReplica(replica)));
    }
    actions // The next pass sees the replicas and binds.
}

/// Every replica exists: the CVC is Bound to the pools that hold them, and the placement goes
/// into its spec (written over the version the status write answers with).
fn bind(config: &CStorVolumeConfig, volume: &CStorVolume, pools: Vec<String>) -> Vec<Action> {
    let mut bound = config.clone();
    bound.status.phase = CStorVolumeConfigPhase::Bound;
    bound.status.capacity = Some(config.spec.capacity.clone());
    bound.status.pool_info = pools;
    let placed = with_placement(&bound, volume);
    let mut actions = vec![Action::UpdateStatus(Object::CStorVolumeConfig(
        bound.clone(),
    ))];
    if placed != bound {
        actions.push(Action::Update {
            object: Object::CStorVolumeConfig(placed.clone()),
            at: Version::OfPreviousWrite,
        });
    }
    actions.push(record(
        &placed,
        EventType::Normal,
        "Synced",
        "cstorvolumeconfig created successfully",
    ));
    actions
}

/// Why provisioning or a scale-up must not use this pool, if it must not.
fn unusable_reason(pool: &CStorPoolInstance) -> Option<String> {
    if pool.cordoned() {
        return Some(format!("is on cordoned node {}", pool.spec.host_name));
    }
    if pool.status.read_only {
        return Some("is read-only".to_string());
    }
    match pool.status.phase {
        CStorPoolInstancePhase::Online => None,
        CStorPoolInstancePhase::Empty => Some("has not come ONLINE yet".to_string()),
        phase => Some(format!("is {phase}")),
    }
}
