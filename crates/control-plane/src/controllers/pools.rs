//! Pool controllers: a CStorPoolCluster's pools become CStorPoolInstances (one per node, named
//! `<cspc>-<4 random characters>` as cStor names them), a pool whose agent stopped reporting is
//! marked OFFLINE, and the CSPC's status counts its instances.

use rand::Rng;
use tandem_client::ClientError;
use tandem_objects::{
    pool_node, CStorPoolCluster, CStorPoolClusterStatus, CStorPoolInstance, CStorPoolInstancePhase,
    CStorPoolInstanceSpec, EventType, Kind, Object, ObjectMeta, OwnerReference, PoolSpec,
    CSTOR_API_VERSION, DEFAULT_RO_THRESHOLD_PERCENT, LABEL_CAS_TYPE, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_HOSTNAME, LABEL_VERSION,
};

use super::{Context, Snapshot};

/// The characters of Kubernetes' `rand.String`, which cStor uses for pool names: no vowels
/// (no words) and no look-alikes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn pool_instance_name(cluster: &str) -> String {
    let mut random = rand::thread_rng();
    let suffix: String = (0..4)
        .map(|_| char::from(NAME_ALPHABET[random.gen_range(0..NAME_ALPHABET.len())]))
        .collect();
    format!("{cluster}-{suffix}")
}

fn cluster_pools<'a>(
    snapshot: &'a Snapshot,
    cluster: &'a CStorPoolCluster,
) -> impl Iterator<Item = &'a CStorPoolInstance> + 'a {
    snapshot.pools.iter().filter(move |pool| {
        pool.metadata.namespace == cluster.metadata.namespace
            && pool.pool_cluster_name() == Some(cluster.name())
    })
}

/// Creates the missing pools, deletes the removed ones (the API refused the edit if they held
/// replicas), and updates the counts.
pub(crate) async fn reconcile_cluster(
    context: &Context,
    snapshot: &Snapshot,
    cluster: &CStorPoolCluster,
) -> Result<(), ClientError> {
    let existing: Vec<&CStorPoolInstance> = cluster_pools(snapshot, cluster).collect();
    for spec in &cluster.spec.pools {
        let Some(node) = pool_node(&spec.node_selector) else {
            continue;
        };
        if !existing.iter().any(|pool| pool.spec.host_name == node) {
            let pool = new_pool_instance(cluster, spec, node);
            tracing::info!(
                pool = pool.name(),
                node,
                cluster = cluster.name(),
                "creating pool"
            );
            context
                .client
                .create(&Object::CStorPoolInstance(pool))
                .await?;
        }
    }
    let wanted: Vec<&str> = cluster
        .spec
        .pools
        .iter()
        .filter_map(|spec| pool_node(&spec.node_selector))
        .collect();
    for pool in &existing {
        if !wanted.contains(&pool.spec.host_name.as_str())
            && pool.metadata.deletion_timestamp.is_empty()
        {
            tracing::info!(pool = pool.name(), "deleting pool removed from its cluster");
            context
                .client
                .delete(
                    Kind::CStorPoolInstance,
                    &pool.metadata.namespace,
                    pool.name(),
                )
                .await?;
        }
    }
    let status = CStorPoolClusterStatus {
        provisioned_instances: count(existing.len()),
        desired_instances: count(cluster.spec.pools.len()),
        healthy_instances: count(
            existing
                .iter()
                .filter(|pool| pool.status.phase == CStorPoolInstancePhase::Online)
                .count(),
        ),
        conditions: cluster.status.conditions.clone(),
    };
    if status != cluster.status {
        let mut updated = cluster.clone();
        updated.status = status;
        context
            .client
            .update_status(&Object::CStorPoolCluster(updated))
            .await?;
    }
    Ok(())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn new_pool_instance(cluster: &CStorPoolCluster, spec: &PoolSpec, node: &str) -> CStorPoolInstance {
    let mut pool_config = spec.pool_config.clone();
    pool_config
        .ro_threshold_limit
        .get_or_insert(DEFAULT_RO_THRESHOLD_PERCENT);
    let metadata = ObjectMeta {
        name: pool_instance_name(cluster.name()),
        namespace: cluster.metadata.namespace.clone(),
        labels: [
            (LABEL_HOSTNAME, node),
            (LABEL_CSTOR_POOL_CLUSTER, cluster.name()),
            (LABEL_VERSION, env!("CARGO_PKG_VERSION")),
            (LABEL_CAS_TYPE, "cstor"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect(),
        owner_references: vec![OwnerReference {
            api_version: CSTOR_API_VERSION.to_string(),
            kind: Kind::CStorPoolCluster.name().to_string(),
            name: cluster.name().to_string(),
            uid: cluster.metadata.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }],
        ..ObjectMeta::default()
    };
    CStorPoolInstance::new(
        metadata,
        CStorPoolInstanceSpec {
            host_name: node.to_string(),
            node_selector: spec.node_selector.clone(),
            pool_config,
            data_raid_groups: spec.data_raid_groups.clone(),
            write_cache_raid_groups: spec.write_cache_raid_groups.clone(),
        },
    )
}

/// A pool whose agent has not reported within the agent timeout is OFFLINE (its agent turns it
/// ONLINE again when it comes back). Right after a control-plane start every agent gets one
/// timeout to report first.
pub(crate) async fn reconcile_liveness(
    context: &Context,
    pool: &CStorPoolInstance,
) -> Result<(), ClientError> {
    if pool.status.phase == CStorPoolInstancePhase::Offline || !context.api.past_agent_grace() {
        return Ok(());
    }
    let nodes = context.api.node_statuses();
    let node = nodes.iter().find(|node| node.node == pool.spec.host_name);
    if node.is_some_and(|node| node.ready) {
        return Ok(());
    }
    let silence = match node {
        Some(node) => format!("has not reported for {}s", node.last_seen_ms / 1000),
        None => "has not reported since the control plane started".to_string(),
    };
    let message = format!(
        "pool {} is OFFLINE: the agent on node {} {silence}",
        pool.name(),
        pool.spec.host_name
    );
    tracing::warn!("{message}");
    let mut updated = pool.clone();
    updated.status.phase = CStorPoolInstancePhase::Offline;
    let updated = Object::CStorPoolInstance(updated);
    context.client.update_status(&updated).await?;
    context
        .pool_events
        .record(&updated, EventType::Warning, "PoolOffline", &message)
        .await
}
