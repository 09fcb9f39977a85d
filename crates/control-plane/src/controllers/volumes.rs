//! The volume controller: a new CStorVolumeConfig is provisioned like cStor does it (a
//! CStorVolume, then one CStorVolumeReplica per pool, never two on one node, skipping pools that
//! are not ONLINE or are read-only), and an edit of `spec.policy.replicaPoolInfo` scales the
//! replicas up or down. Unlike cStor, "successfully scaled" is said only once every new replica
//! is Healthy; until then the CVC carries a `ScalingVolumeReplicas` condition, which also holds
//! off the next change (see `tandem_objects::validate_cvc_update`).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use tandem_client::ClientError;
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstancePhase, CStorVolume, CStorVolumeConfig,
    CStorVolumeConfigPhase, CStorVolumePhase, CStorVolumeReplica, CStorVolumeReplicaPhase,
    CStorVolumeReplicaSpec, CStorVolumeSpec, Condition, EventType, Kind, Object, ObjectMeta,
    ObjectReference, OwnerReference, ReplicaPoolInfo, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    ANNOTATION_TARGET_NODE, CONDITION_SCALING_VOLUME_REPLICAS, CSTOR_API_VERSION,
    FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_CSTOR_POOL_INSTANCE_UID,
    LABEL_CSTOR_VOLUME_NAME, LABEL_PERSISTENT_VOLUME, LABEL_VERSION,
};

use super::{now_rfc3339, Context, Snapshot};

const REASON_SCALING: &str = "ScalingVolumeReplicas";

/// The replicas of one volume, by pool name.
fn replicas_of<'a>(
    snapshot: &'a Snapshot,
    config: &CStorVolumeConfig,
) -> BTreeMap<&'a str, &'a CStorVolumeReplica> {
    snapshot
        .replicas
        .iter()
        .filter(|replica| {
            replica.metadata.namespace == config.metadata.namespace
                && replica.metadata.label(LABEL_PERSISTENT_VOLUME) == Some(config.name())
        })
        .filter_map(|replica| {
            replica
                .metadata
                .label(LABEL_CSTOR_POOL_INSTANCE_NAME)
                .map(|pool| (pool, replica))
        })
        .collect()
}

fn volume_of<'a>(snapshot: &'a Snapshot, config: &CStorVolumeConfig) -> Option<&'a CStorVolume> {
    snapshot.volumes.iter().find(|volume| {
        volume.metadata.namespace == config.metadata.namespace && volume.name() == config.name()
    })
}

pub(crate) async fn reconcile_config(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
) -> Result<(), ClientError> {
    if !config.metadata.deletion_timestamp.is_empty() {
        return Ok(());
    }
    match config.status.phase {
        CStorVolumeConfigPhase::Pending => provision(context, snapshot, config).await,
        CStorVolumeConfigPhase::Bound => {
            if let Some(volume) = volume_of(snapshot, config) {
                place_target(context, snapshot, config, volume).await?;
            }
            scale(context, snapshot, config).await
        }
        CStorVolumeConfigPhase::Failed => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Target placement

/// A volume whose target's node stopped reporting is Offline as far as anyone can tell; its
/// agent (or a restarted one) reports the real state again when it is back.
async fn mark_target_unreachable(
    context: &Context,
    volume: &CStorVolume,
    node: &str,
) -> Result<(), ClientError> {
    let message = format!("the agent hosting the target (node {node}) is not reporting");
    if volume.status.phase == CStorVolumePhase::Offline && volume.status.message == message {
        return Ok(());
    }
    tracing::warn!(
        volume = volume.name(),
        node,
        "target unreachable: volume Offline"
    );
    let mut offline = volume.clone();
    offline.status.phase = CStorVolumePhase::Offline;
    offline.status.message = message;
    offline.status.last_transition_time = super::now_rfc3339();
    context
        .client
        .update_status(&Object::CStorVolume(offline))
        .await
        .map(drop)
}

/// Puts the volume's target on a node (the node of its first replica whose agent is up, as a
/// target next to one copy saves a network hop) and records where clients reach it: the node's
/// NBD address in `spec.targetIP` / `spec.targetPort`. A placed target stays where it is: when
/// its agent restarts, clients reconnect to the same address.
async fn place_target(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> Result<(), ClientError> {
    let nodes = context.api.node_statuses();
    let reachable = |node: &str| {
        nodes
            .iter()
            .find(|status| status.node == node && status.ready && !status.nbd_address.is_empty())
    };
    let placed = volume.metadata.annotation(ANNOTATION_TARGET_NODE);
    let node = match placed {
        Some(node) => nodes.iter().find(|status| status.node == node),
        None => config
            .current_pool_names()
            .iter()
            .filter_map(|pool| snapshot.pool(&config.metadata.namespace, pool))
            .find_map(|pool| reachable(&pool.spec.host_name)),
    };
    let Some(node) = node else {
        return Ok(()); // No agent has reported an NBD address yet.
    };
    if placed.is_some() && !node.ready && context.api.past_agent_grace() {
        // The target's agent is silent: whatever its last status said is stale.
        return mark_target_unreachable(context, volume, &node.node).await;
    }
    let Some((ip, port)) = node.nbd_address.rsplit_once(':') else {
        return Ok(());
    };
    let mut placed_volume = volume.clone();
    placed_volume
        .metadata
        .annotations
        .insert(ANNOTATION_TARGET_NODE.to_string(), node.node.clone());
    placed_volume.spec.target_ip = ip.to_string();
    placed_volume.spec.target_port = port.to_string();
    placed_volume.spec.target_portal = node.nbd_address.clone();
    if placed_volume == *volume {
        return Ok(());
    }
    tracing::info!(volume = volume.name(), node = %node.node, address = %node.nbd_address, "target placed");
    context
        .client
        .update(&Object::CStorVolume(placed_volume))
        .await
        .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Provisioning

async fn provision(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
) -> Result<(), ClientError> {
    let Some(cluster) = config.pool_cluster_name() else {
        return Ok(()); // The API refuses such a CVC; nothing to place it with.
    };
    let replica_count = config.spec.provision.replica_count as usize;
    let volume = match volume_of(snapshot, config) {
        Some(volume) => volume.clone(),
        None => {
            let created = context
                .client
                .create(&Object::CStorVolume(new_volume(config)))
                .await?;
            CStorVolume::try_from(created).map_err(|error| protocol(context, error))?
        }
    };
    let existing = replicas_of(snapshot, config);
    let pending = replica_count.saturating_sub(existing.len());
    if pending > 0 {
        let used_nodes: Vec<&str> = existing
            .keys()
            .filter_map(|pool| snapshot.pool(&config.metadata.namespace, pool))
            .map(|pool| pool.spec.host_name.as_str())
            .collect();
        let mut candidates: Vec<&CStorPoolInstance> = snapshot
            .pools
            .iter()
            .filter(|pool| {
                pool.metadata.namespace == config.metadata.namespace
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
        if candidates.len() < pending {
            let mut message = format!(
                "not enough pools are available of provided CSPC: {cluster:?}, usable pool count: \
                 {} pending replica count: {pending}",
                candidates.len()
            );
            if !skipped.is_empty() {
                message.push_str(&format!(" (skipped: {})", skipped.join(", ")));
            }
            return warn_once(context, config, "Provisioning", &message).await;
        }
        // cStor shuffles; spreading by how many replicas a pool holds keeps pools even.
        candidates.shuffle(&mut rand::thread_rng());
        candidates.sort_by_key(|pool| pool.status.provisioned_replicas);
        for pool in candidates.into_iter().take(pending) {
            let replica = new_replica(config, &volume, pool, CStorVolumeReplicaPhase::Empty);
            tracing::info!(
                replica = replica.name(),
                pool = pool.name(),
                "creating replica"
            );
            context
                .client
                .create(&Object::CStorVolumeReplica(replica))
                .await?;
        }
        return Ok(()); // The next pass sees the replicas and binds.
    }
    let pools: Vec<String> = existing.keys().map(|pool| pool.to_string()).collect();
    let mut bound = config.clone();
    bound.status.phase = CStorVolumeConfigPhase::Bound;
    bound.status.capacity = Some(config.spec.capacity.clone());
    bound.status.pool_info = pools;
    let bound = context
        .client
        .update_status(&Object::CStorVolumeConfig(bound))
        .await?;
    let bound = CStorVolumeConfig::try_from(bound).map_err(|error| protocol(context, error))?;
    let bound = record_placement(context, &bound, &volume).await?;
    context
        .volume_events
        .record(
            &Object::CStorVolumeConfig(bound),
            EventType::Normal,
            "Synced",
            "cstorvolumeconfig created successfully",
        )
        .await
}

/// cStor's `addReplicaPoolInfo`: the pools actually used go into the spec too, so the user
/// edits the real placement. Also links the CVC to its CV.
async fn record_placement(
    context: &Context,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> Result<CStorVolumeConfig, ClientError> {
    let mut placed = config.clone();
    placed.spec.policy.replica_pool_info = config
        .status
        .pool_info
        .iter()
        .map(ReplicaPoolInfo::new)
        .collect();
    placed.spec.cstor_volume_ref = Some(ObjectReference {
        api_version: CSTOR_API_VERSION.to_string(),
        kind: Kind::CStorVolume.name().to_string(),
        namespace: volume.metadata.namespace.clone(),
        name: volume.name().to_string(),
        uid: volume.metadata.uid.clone(),
        resource_version: String::new(),
    });
    if placed == *config {
        return Ok(placed);
    }
    let updated = context
        .client
        .update(&Object::CStorVolumeConfig(placed))
        .await?;
    CStorVolumeConfig::try_from(updated).map_err(|error| protocol(context, error))
}

/// Why provisioning or a scale-up must not use this pool, if it must not.
fn unusable_reason(pool: &CStorPoolInstance) -> Option<String> {
    if pool.status.read_only {
        return Some("is read-only".to_string());
    }
    match pool.status.phase {
        CStorPoolInstancePhase::Online => None,
        CStorPoolInstancePhase::Empty => Some("has not come ONLINE yet".to_string()),
        phase => Some(format!("is {phase}")),
    }
}

fn new_volume(config: &CStorVolumeConfig) -> CStorVolume {
    let replicas = config.spec.provision.replica_count;
    let mut volume = CStorVolume::new(
        ObjectMeta {
            name: config.name().to_string(),
            namespace: config.metadata.namespace.clone(),
            labels: labels(&[
                (LABEL_PERSISTENT_VOLUME, config.name()),
                (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
            ]),
            owner_references: vec![owner(
                Kind::CStorVolumeConfig,
                config.name(),
                &config.metadata.uid,
            )],
            ..ObjectMeta::default()
        },
        CStorVolumeSpec {
            capacity: config.spec.capacity.storage,
            replication_factor: replicas,
            consistency_factor: replicas / 2 + 1,
            desired_replication_factor: replicas,
            ..CStorVolumeSpec::default()
        },
    );
    volume.status.capacity = config.spec.capacity.storage;
    volume
}

/// A replica of `config`'s volume on `pool`, named `<volume>-<pool>` as in cStor.
fn new_replica(
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    pool: &CStorPoolInstance,
    phase: CStorVolumeReplicaPhase,
) -> CStorVolumeReplica {
    let name = format!("{}-{}", config.name(), pool.name());
    let mut metadata = ObjectMeta {
        name: name.clone(),
        namespace: config.metadata.namespace.clone(),
        labels: labels(&[
            (LABEL_CSTOR_POOL_INSTANCE_NAME, pool.name()),
            (LABEL_CSTOR_POOL_INSTANCE_UID, &pool.metadata.uid),
            (LABEL_CSTOR_VOLUME_NAME, config.name()),
            (LABEL_PERSISTENT_VOLUME, config.name()),
            (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
        ]),
        finalizers: vec![FINALIZER_CSTOR_VOLUME_REPLICA.to_string()],
        owner_references: vec![owner(
            Kind::CStorVolume,
            volume.name(),
            &volume.metadata.uid,
        )],
        ..ObjectMeta::default()
    };
    metadata.annotations.insert(
        ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME.to_string(),
        pool.spec.host_name.clone(),
    );
    let mut replica = CStorVolumeReplica::new(
        metadata,
        CStorVolumeReplicaSpec {
            capacity: config.spec.capacity.storage,
            replica_id: replica_id(&name),
            zvol_workers: config.spec.policy.replica.zvol_workers.clone(),
            compression: config.spec.policy.replica.compression.clone(),
            block_size: config.spec.policy.provision.block_size,
            ..CStorVolumeReplicaSpec::default()
        },
    );
    replica.status.phase = phase;
    replica
}

/// cStor's replica id: xxhash64 of the JSON string of `<volume>-<pool>`, in decimal.
fn replica_id(replica_name: &str) -> String {
    let json = serde_json::Value::String(replica_name.to_string()).to_string();
    xxhash_rust::xxh64::xxh64(json.as_bytes(), 0).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn owner(kind: Kind, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: CSTOR_API_VERSION.to_string(),
        kind: kind.name().to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn protocol(context: &Context, error: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol {
        server: context.client.server().to_string(),
        detail: error.to_string(),
    }
}

/// Records a Warning unless the CVC's newest event already says it (a pass runs every second;
/// the event should say "x2" when something new happened, not count the passes).
async fn warn_once(
    context: &Context,
    config: &CStorVolumeConfig,
    reason: &str,
    message: &str,
) -> Result<(), ClientError> {
    let object = Object::CStorVolumeConfig(config.clone());
    let events = context.client.events_about(&object).await?;
    if events
        .last()
        .is_some_and(|event| event.reason == reason && event.message == message)
    {
        return Ok(());
    }
    context
        .volume_events
        .record(&object, EventType::Warning, reason, message)
        .await
}

// ---------------------------------------------------------------------------------------------
// Scaling

async fn scale(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
) -> Result<(), ClientError> {
    let Some(volume) = volume_of(snapshot, config) else {
        return Ok(());
    };
    let desired = config.desired_pool_names();
    let current: Vec<&str> = config
        .current_pool_names()
        .iter()
        .map(String::as_str)
        .collect();
    if desired.is_empty() && !current.is_empty() {
        // Bound, but the placement never reached the spec (a restart between the two writes).
        record_placement(context, config, volume).await?;
        return Ok(());
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
        (true, true) => finish_scale(context, snapshot, config).await,
        (false, true) => scale_up(context, snapshot, config, volume, &added).await,
        (true, false) => scale_down(context, snapshot, config, volume, removed[0]).await,
        (false, false) => {
            warn_once(
                context,
                config,
                "Migration",
                "Migration of volume replicas is not yet supported",
            )
            .await
        }
    }
}

async fn scale_up(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    added: &[&str],
) -> Result<(), ClientError> {
    let namespace = &config.metadata.namespace;
    let wanted = u32::try_from(config.desired_pool_names().len()).unwrap_or(u32::MAX);
    if volume.spec.desired_replication_factor < wanted {
        let mut raised = volume.clone();
        raised.spec.desired_replication_factor = wanted;
        context.client.update(&Object::CStorVolume(raised)).await?;
    }
    let existing = replicas_of(snapshot, config);
    for pool_name in added {
        if existing.contains_key(pool_name) {
            continue;
        }
        let Some(pool) = snapshot.pool(namespace, pool_name) else {
            let message =
                format!("failed to get cstorpoolinstance {pool_name} error: it does not exist");
            return warn_once(context, config, REASON_SCALING, &message).await;
        };
        let replica = new_replica(config, volume, pool, CStorVolumeReplicaPhase::Recreate);
        tracing::info!(replica = replica.name(), "creating replica for scale-up");
        context
            .client
            .create(&Object::CStorVolumeReplica(replica))
            .await?;
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
    set_scaling_condition(&mut scaled, "ScalingUp", &message);
    let scaled = context
        .client
        .update_status(&Object::CStorVolumeConfig(scaled))
        .await?;
    context
        .volume_events
        .record(&scaled, EventType::Normal, REASON_SCALING, &message)
        .await
}

/// cStor's scale-down, first half: the CV's desired replication factor drops, and the target
/// lets go of the replica (it drains what it owes the others first). Second half, once the
/// target's status no longer knows it: the replica object is deleted (its agent destroys the
/// data) and the CVC's status follows the spec.
async fn scale_down(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    removed_pool: &str,
) -> Result<(), ClientError> {
    let desired = u32::try_from(config.desired_pool_names().len()).unwrap_or(u32::MAX);
    let from = config.current_pool_names().len();
    let replica = replicas_of(snapshot, config).get(removed_pool).copied();
    let replica_id = replica.map(|replica| replica.spec.replica_id.clone());
    if volume.spec.desired_replication_factor > desired {
        let mut lowered = volume.clone();
        lowered.spec.desired_replication_factor = desired;
        context.client.update(&Object::CStorVolume(lowered)).await?;
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
            set_scaling_condition(&mut marked, "ScalingDown", &message);
            context
                .client
                .update_status(&Object::CStorVolumeConfig(marked))
                .await?;
        }
        return warn_once(context, config, REASON_SCALING, &message).await;
    }
    if let Some(replica) = replica {
        if replica.metadata.deletion_timestamp.is_empty() {
            tracing::info!(replica = replica.name(), "deleting replica for scale-down");
            context
                .client
                .delete(
                    Kind::CStorVolumeReplica,
                    &replica.metadata.namespace,
                    replica.name(),
                )
                .await?;
        }
    }
    let mut scaled = config.clone();
    scaled.status.pool_info = config
        .desired_pool_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    scaled
        .status
        .conditions
        .retain(|condition| condition.condition_type != CONDITION_SCALING_VOLUME_REPLICAS);
    let scaled = context
        .client
        .update_status(&Object::CStorVolumeConfig(scaled))
        .await?;
    context
        .volume_events
        .record(
            &scaled,
            EventType::Normal,
            REASON_SCALING,
            &format!("successfully scaled volume replicas to {desired}"),
        )
        .await
}

/// Spec and status agree: a scale-up is finished once every replica is Healthy.
async fn finish_scale(
    context: &Context,
    snapshot: &Snapshot,
    config: &CStorVolumeConfig,
) -> Result<(), ClientError> {
    if !has_scaling_condition(config) {
        return Ok(());
    }
    let replicas = replicas_of(snapshot, config);
    let all_healthy = config.current_pool_names().iter().all(|pool| {
        replicas
            .get(pool.as_str())
            .is_some_and(|replica| replica.status.phase == CStorVolumeReplicaPhase::Healthy)
    });
    if !all_healthy {
        return Ok(());
    }
    let mut done = config.clone();
    done.status
        .conditions
        .retain(|condition| condition.condition_type != CONDITION_SCALING_VOLUME_REPLICAS);
    let done = context
        .client
        .update_status(&Object::CStorVolumeConfig(done))
        .await?;
    let count = config.current_pool_names().len();
    context
        .volume_events
        .record(
            &done,
            EventType::Normal,
            REASON_SCALING,
            &format!("successfully scaled volume replicas to {count}"),
        )
        .await
}

fn has_scaling_condition(config: &CStorVolumeConfig) -> bool {
    config
        .status
        .conditions
        .iter()
        .any(|condition| condition.condition_type == CONDITION_SCALING_VOLUME_REPLICAS)
}

fn set_scaling_condition(config: &mut CStorVolumeConfig, reason: &str, message: &str) {
    let now = now_rfc3339();
    config
        .status
        .conditions
        .retain(|condition| condition.condition_type != CONDITION_SCALING_VOLUME_REPLICAS);
    config.status.conditions.push(Condition {
        condition_type: CONDITION_SCALING_VOLUME_REPLICAS.to_string(),
        status: "True".to_string(),
        last_transition_time: now.clone(),
        last_update_time: now,
        reason: reason.to_string(),
        message: message.to_string(),
        ..Condition::default()
    });
}

// ---------------------------------------------------------------------------------------------
// Deletion

/// A volume whose CVC is gone goes too: its replicas first (their agents destroy the data and
/// release them), then the CV.
pub(crate) async fn collect_orphans(
    context: &Context,
    snapshot: &Snapshot,
) -> Result<(), ClientError> {
    for volume in &snapshot.volumes {
        let has_config = snapshot.configs.iter().any(|config| {
            config.metadata.namespace == volume.metadata.namespace && config.name() == volume.name()
        });
        if has_config {
            continue;
        }
        let namespace = &volume.metadata.namespace;
        let replicas: Vec<&CStorVolumeReplica> = snapshot
            .replicas
            .iter()
            .filter(|replica| {
                replica.metadata.namespace == *namespace
                    && replica.metadata.label(LABEL_PERSISTENT_VOLUME) == Some(volume.name())
            })
            .collect();
        for replica in &replicas {
            if replica.metadata.deletion_timestamp.is_empty() {
                tracing::info!(
                    replica = replica.name(),
                    "deleting replica of a deleted volume"
                );
                context
                    .client
                    .delete(Kind::CStorVolumeReplica, namespace, replica.name())
                    .await?;
            }
        }
        if replicas.is_empty() {
            tracing::info!(
                volume = volume.name(),
                "deleting volume whose config was deleted"
            );
            context
                .client
                .delete(Kind::CStorVolume, namespace, volume.name())
                .await?;
        }
    }
    Ok(())
}
