//! Pool controllers: a CStorPoolCluster's pools become CStorPoolInstances (one per node, named
//! `<cspc>-<4 random characters>` as cStor names them), a pool whose agent stopped reporting is
//! marked OFFLINE, and the CSPC's status counts its instances.

use rand::Rng;
use tandem_objects::{
    pool_node, CStorPoolCluster, CStorPoolClusterStatus, CStorPoolInstance, CStorPoolInstancePhase,
    CStorPoolInstanceSpec, EventType, Kind, Object, ObjectMeta, OwnerReference, PoolSpec,
    CSTOR_API_VERSION, DEFAULT_RO_THRESHOLD_PERCENT, LABEL_CAS_TYPE, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_HOSTNAME, LABEL_VERSION,
};

use crate::controllers::execute::{Action, Controller, Log};
use crate::controllers::observe::Observed;

/// The characters of Kubernetes' `rand.String`, which cStor uses for pool names: no vowels
/// (no words) and no look-alikes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn pool_instance_name(cluster: &str, random: &mut impl Rng) -> String {
    let suffix: String = (0..4)
        .map(|_| char::from(NAME_ALPHABET[random.gen_range(0..NAME_ALPHABET.len())]))
        .collect();
    format!("{cluster}-{suffix}")
}

fn cluster_pools<'a>(
    observed: &'a Observed,
    cluster: &'a CStorPoolCluster,
) -> impl Iterator<Item = &'a CStorPoolInstance> + 'a {
    observed.pools.iter().filter(move |pool| {
        pool.metadata.namespace == cluster.metadata.namespace
            && pool.pool_cluster_name() == Some(cluster.name())
    })
}

/// Creates the missing pools, deletes the removed ones (the API refused the edit if they held
/// replicas), and updates the counts.
pub(crate) fn plan_cluster(
    observed: &Observed,
    cluster: &CStorPoolCluster,
    random: &mut impl Rng,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let existing: Vec<&CStorPoolInstance> = cluster_pools(observed, cluster).collect();
    for spec in &cluster.spec.pools {
        let Some(node) = pool_node(&spec.node_selector) else {
            continue;
        };
        if !existing.iter().any(|pool| pool.spec.host_name == node) {
            let pool = new_pool_instance(cluster, spec, node, random);
            actions.push(Action::Log(Log::CreatingPool {
                pool: pool.name().to_string(),
                node: node.to_string(),
                cluster: cluster.name().to_string(),
            }));
            actions.push(Action::Create(Object::CStorPoolInstance(pool)));
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
            actions.push(Action::Log(Log::DeletingPool {
                pool: pool.name().to_string(),
            }));
            actions.push(Action::Delete {
                kind: Kind::CStorPoolInstance,
                namespace: pool.metadata.namespace.clone(),
                name: pool.name().to_string(),
            });
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
        actions.push(Action::UpdateStatus(Object::CStorPoolCluster(updated)));
    }
    actions
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn new_pool_instance(
    cluster: &CStorPoolCluster,
    spec: &PoolSpec,
    node: &str,
    random: &mut impl Rng,
) -> CStorPoolInstance {
    let mut pool_config = spec.pool_config.clone();
    pool_config
        .ro_threshold_limit
        .get_or_insert(DEFAULT_RO_THRESHOLD_PERCENT);
    let metadata = ObjectMeta {
        name: pool_instance_name(cluster.name(), random),
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
pub(crate) fn plan_liveness(observed: &Observed, pool: &CStorPoolInstance) -> Vec<Action> {
    if pool.status.phase == CStorPoolInstancePhase::Offline || !observed.past_agent_grace {
        return Vec::new();
    }
    let node = observed.node(&pool.spec.host_name);
    if node.is_some_and(|node| node.ready) {
        return Vec::new();
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
    let mut updated = pool.clone();
    updated.status.phase = CStorPoolInstancePhase::Offline;
    let updated = Object::CStorPoolInstance(updated);
    vec![
        Action::Log(Log::PoolOffline {
            message: message.clone(),
        }),
        Action::UpdateStatus(updated.clone()),
        Action::Record {
            by: Controller::Pools,
            about: updated,
            event_type: EventType::Warning,
            reason: "PoolOffline".to_string(),
            message,
            unless_newest_says_the_same: false,
        },
    ]
}

#[cfg(test)]
mod tests;
