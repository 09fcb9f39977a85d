//! Scaling a Bound volume to the pools its CVC's spec names: a scale-up creates the new
//! replicas for reconstruction and finishes once every replica is Healthy; a scale-down waits
//! for the target to let go of the replica before deleting it. Replacing pools in one edit is
//! refused with a warning; `tandem volume migrate` adds the new pool and names the old one in
//! `tandem.io/migrate-from`, which leaves the spec once the scale-up has finished.

use tandem_objects::{
    CStorVolume, CStorVolumeConfig, CStorVolumeReplica, CStorVolumeReplicaPhase, EventType, Kind,
    Object, ANNOTATION_MIGRATE_FROM,
};

use crate::controllers::execute::{Action, Log, Version};
use crate::controllers::observe::Observed;
use crate::controllers::volumes::objects::{
    clear_scaling_condition, has_scaling_condition, new_replica, set_scaling_condition,
    with_placement,
};
use crate::controllers::volumes::{record, warn_once};

const REASON_SCALING: &str = "ScalingVolumeReplicas";
const REASON_MIGRATING: &str = "MigratingVolumeReplicas";
/// The event of a scale-down that removed a replica which was not Healthy: the second half of
/// replacing a dead node (a pool added on a live node, then the dead one's removed).
pub(crate) const REASON_REPLICA_REPLACED: &str = "ReplicaReplaced";

pub(super) fn plan_scale(observed: &Observed, config: &CStorVolumeConfig) -> Vec<Action> {
    let Some(volume) = observed.volume_of(config) else {
        return Vec::new();
    };
    let desired = config.desired_pool_names();
    let current: Vec<&str> = config
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    if desired.is_empty() && !current.is_empty() {
        // Bound, but the placement never reached the spec (a restart between the two writes).
        let placed = with_placement(config, volume);
        if placed == *config {
            return Vec::new();
        }
        return vec![Action::Update {
            object: Object::CStorVolumeConfig(placed),
            at: Version::Read,
        }];
    }
    let added: Vec<&str> = desired
        .iter()
        .copied()
        .filter(|p| !current.contains(p))
        .collect();
    let removed: Vec<&str> = current
        .iter()
        .copied()
        .filter(|p| !desired.contains(p))
        .collect();
    match (added.is_empty(), removed.is_empty()) {
        (true, true) if has_scaling_condition(config) => finish_scale(observed, config, volume),
        (true, true) => finish_migration(config),
        (false, true) => scale_up(observed, config, volume, &added),
        (true, false) => scale_down(observed, config, volume, removed[0]),
        (false, false) => vec![warn_once(
            config,
            "Migration",
            "Migration of volume replicas is not yet supported",
        )],
    }
}

fn scale_up(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    added: &[&str],
) -> Vec<Action> {
    let mut actions = Vec::new();
    let wanted = u32::try_from(config.desired_pool_names().len()).unwrap_or(u32::MAX);
    if volume.spec.desired_replication_factor < wanted {
        let mut raised = volume.clone();
        raised.spec.desired_replication_factor = wanted;
        actions.push(Action::Update {
            object: Object::CStorVolume(raised),
            at: Version::Read,
        });
    }
    let existing = observed.replicas_of(config);
    let mut missing = Vec::new();
    for &pool_name in added {
        let Some(replica) = existing.get(pool_name) else {
            missing.push(pool_name);
            continue;
        };
        if !replica.metadata.deletion_timestamp.is_empty() {
            // The pool left the volume a moment ago and its replica is still being destroyed:
            // the new one is made once it is gone (it has the same name).
            let message = format!(
                "waiting for the replica removed from pool {pool_name} to be destroyed before \
                 creating a new one there"
            );
            actions.push(warn_once(config, REASON_SCALING, &message));
            return actions;
        }
    }
    match create_replicas(observed, config, volume, &missing) {
        Ok(created) => actions.extend(created),
        Err(missing) => {
            actions.push(warn_once(config, REASON_SCALING, &missing.to_string()));
            return actions;
        }
    }
    let from = config.current_pool_names().len();
    let mut scaled = config.clone();
    scaled
        .status
        .pool_info
        .extend(added.iter().map(|pool| pool.to_string()));
    let message = format!(
        "Scaling up volume replicas from {from} to {wanted}: waiting for the new replica on \
         {} to become Healthy",
        added.join(", ")
    );
    set_scaling_condition(&mut scaled, &observed.now, "ScalingUp", &message);
    actions.push(Action::UpdateStatus(Object::CStorVolumeConfig(
        scaled.clone(),
    )));
    actions.push(record(&scaled, EventType::Normal, REASON_SCALING, &message));
    actions
}

/// A pool the volume's spec names that does not exist (cStor's words).
#[derive(Debug, thiserror::Error)]
#[error("failed to get cstorpoolinstance {0} error: it does not exist")]
struct NoSuchPool(String);

/// New replicas (for reconstruction) on `pools`.
fn create_replicas(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    pools: &[&str],
) -> Result<Vec<Action>, NoSuchPool> {
    let mut actions = Vec::new();
    for pool_name in pools {
        let Some(pool) = observed.pool(&config.metadata.namespace, pool_name) else {
            return Err(NoSuchPool(pool_name.to_string()));
        };
        let replica = new_replica(config, volume, pool, CStorVolumeReplicaPhase::Recreate);
        actions.push(Action::Log(Log::CreatingReplicaForScaleUp {
            replica: replica.name().to_string(),
        }));
        actions.push(Action::Create(Object::CStorVolumeReplica(replica)));
    }
    Ok(actions)
}

/// cStor's scale-down, first half: the CV's desired replication factor drops, and the target
/// lets go of the replica (it drains what it owes the others first). Second half, once the
/// target's status no longer knows it: the replica object is deleted (its agent destroys the
/// data) and the CVC's status follows the spec.
fn scale_down(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    removed_pool: &str,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let desired = u32::try_from(config.desired_pool_names().len()).unwrap_or(u32::MAX);
    let from = config.current_pool_names().len();
    let replica = observed.replicas_of(config).get(removed_pool).copied();
    let replica_id = replica.map(|replica| replica.spec.replica_id.clone());
    if volume.spec.desired_replication_factor > desired {
        let mut lowered = volume.clone();
        lowered.spec.desired_replication_factor = desired;
        actions.push(Action::Update {
            object: Object::CStorVolume(lowered),
            at: Version::Read,
        });
    }
    // The target owns the known replicas (it writes its persisted membership into the CV); it
    // sees the removed pool gone from the CVC's spec, drains the replica and lets go of it.
    // Until its status no longer trusts the replica, the replica's data must stay.
    let message = format!("Scaling down volume replicas from {from} to {desired} is in progress");
    let still_known = replica_id.as_ref().is_some_and(|id| {
        volume
            .status
            .replica_details
            .known_replicas
            .contains_key(id)
    });
    if still_known {
        if !has_scaling_condition(config) {
            let mut marked = config.clone();
            set_scaling_condition(&mut marked, &observed.now, "ScalingDown", &message);
            actions.push(Action::UpdateStatus(Object::CStorVolumeConfig(marked)));
        }
        actions.push(warn_once(config, REASON_SCALING, &message));
        return actions;
    }
    let mut replaced = None;
    if let Some(replica) = replica {
        if replica.status.phase != CStorVolumeReplicaPhase::Healthy
            && replica.metadata.deletion_timestamp.is_empty()
        {
            replaced = Some(replacement_message(
                observed,
                config,
                removed_pool,
                replica.status.phase,
            ));
        }
        if replica.metadata.deletion_timestamp.is_empty() {
            actions.push(Action::Log(Log::DeletingReplicaForScaleDown {
                replica: replica.name().to_string(),
            }));
            actions.push(Action::Delete {
                kind: Kind::CStorVolumeReplica,
                namespace: replica.metadata.namespace.clone(),
                name: replica.name().to_string(),
            });
        }
    }
    let mut scaled = config.clone();
    scaled.status.pool_info = config
        .desired_pool_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    clear_scaling_condition(&mut scaled);
    actions.push(Action::UpdateStatus(Object::CStorVolumeConfig(
        scaled.clone(),
    )));
    actions.push(record(
        &scaled,
        EventType::Normal,
        REASON_SCALING,
        &format!("successfully scaled volume replicas to {desired}"),
    ));
    if let Some(message) = replaced {
        actions.push(record(
            &scaled,
            EventType::Warning,
            REASON_REPLICA_REPLACED,
            &message,
        ));
    }
    actions
}

/// What a replacement did: the replica that left (its pool, node and phase), and where the
/// volume's replicas are now.
fn replacement_message(
    observed: &Observed,
    config: &CStorVolumeConfig,
    removed_pool: &str,
    phase: CStorVolumeReplicaPhase,
) -> String {
    let namespace = &config.metadata.namespace;
    let on = |pool: &str| {
        observed.pool(namespace, pool).map_or_else(
            || pool.to_string(),
            |found| format!("{pool} (node {})", found.spec.host_name),
        )
    };
    let kept: Vec<String> = config.desired_pool_names().into_iter().map(on).collect();
    format!(
        "removed the replica on pool {}, which was {phase}; the volume's replicas are now on \
         pools {}",
        on(removed_pool),
        kept.join(", ")
    )
}

/// The second half of a migration, once its scale-up has finished: the pool the annotation
/// names leaves the spec in the same write that removes the annotation (the scale-down then
/// runs as after an edit). The last pool never leaves; a pool no longer in the spec just
/// clears the annotation.
fn finish_migration(config: &CStorVolumeConfig) -> Vec<Action> {
    let Some(from) = config.metadata.annotations.get(ANNOTATION_MIGRATE_FROM) else {
        return Vec::new();
    };
    let mut moved = config.clone();
    moved.metadata.annotations.remove(ANNOTATION_MIGRATE_FROM);
    let pools = &mut moved.spec.policy.replica_pool_info;
    let mut actions = Vec::new();
    if pools.len() > 1 && pools.iter().any(|pool| pool.pool_name == *from) {
        pools.retain(|pool| pool.pool_name != *from);
        let message = format!(
            "Migrating volume replicas: every replica is Healthy, removing the one on pool {from}"
        );
        actions.push(record(
            config,
            EventType::Normal,
            REASON_MIGRATING,
            &message,
        ));
    }
    actions.insert(
        0,
        Action::Update {
            object: Object::CStorVolumeConfig(moved),
            at: Version::Read,
        },
    );
    actions
}

/// Spec and status agree: a scale-up is finished once every replica is Healthy, or once every
/// replica is a trusted member of the volume (in the target's `knownReplicas`): a new replica is
/// trusted only after it was rebuilt and its promotion persisted, so then every new replica was
/// Healthy, and what is not Healthy is an old member, such as one on a dead node that the
/// scale-up is replacing (its removal is the next change, which must not wait for it).
fn finish_scale(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> Vec<Action> {
    let replicas = observed.replicas_of(config);
    // A pool of the volume without a replica (one deleted by hand, or a scale-up that counted
    // one being destroyed): it gets a new one, rebuilt like any other.
    let missing: Vec<&str> = (config.current_pool_names().iter())
        .map(String::as_str)
        .filter(|pool| !replicas.contains_key(pool))
        .collect();
    if !missing.is_empty() {
        return create_replicas(observed, config, volume, &missing).unwrap_or_else(|missing| {
            vec![warn_once(config, REASON_SCALING, &missing.to_string())]
        });
    }
    let every = |done: &dyn Fn(&CStorVolumeReplica) -> bool| {
        config.current_pool_names().iter().all(|pool| {
            // A replica being destroyed is not the pool's replica any more.
            replicas.get(pool.as_str()).is_some_and(|replica| {
                replica.metadata.deletion_timestamp.is_empty() && done(replica)
            })
        })
    };
    let known = &volume.status.replica_details.known_replicas;
    let all_healthy = every(&|replica| replica.status.phase == CStorVolumeReplicaPhase::Healthy);
    let all_trusted = every(&|replica| known.contains_key(&replica.spec.replica_id));
    if !all_healthy && !all_trusted {
        return Vec::new();
    }
    let mut done = config.clone();
    clear_scaling_condition(&mut done);
    let count = config.current_pool_names().len();
    vec![
        Action::UpdateStatus(Object::CStorVolumeConfig(done.clone())),
        record(
            &done,
            EventType::Normal,
            REASON_SCALING,
            &format!("successfully scaled volume replicas to {count}"),
        ),
    ]
}
