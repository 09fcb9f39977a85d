//! Where a Bound volume's target runs: on the node of its first replica whose agent is up (a
//! target next to one copy saves a network hop), recorded in the CV with the node's NBD address,
//! and the volume Offline while that node's agent is silent.

use tandem_objects::{
    CStorVolume, CStorVolumeConfig, CStorVolumePhase, Object, ANNOTATION_TARGET_NODE,
};

use crate::controllers::execute::{Action, Log, Version};
use crate::controllers::observe::Observed;

/// Puts the volume's target on a node and records where clients reach it: the node's NBD
/// address in `spec.targetIP` / `spec.targetPort`. A placed target stays where it is: when its
/// agent restarts, clients reconnect to the same address.
pub(super) fn plan_target(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> Vec<Action> {
    let reachable = |node: &str| {
        observed
            .nodes
            .iter()
            .find(|status| status.node == node && status.ready && !status.nbd_address.is_empty())
    };
    let placed = volume.metadata.annotation(ANNOTATION_TARGET_NODE);
    let node = match placed {
        Some(node) => observed.node(node),
        None => config
            .current_pool_names()
            .iter()
            .filter_map(|pool| observed.pool(&config.metadata.namespace, pool))
            .find_map(|pool| reachable(&pool.spec.host_name)),
    };
    let Some(node) = node else {
        return Vec::new(); // No agent has reported an NBD address yet.
    };
    if placed.is_some() && !node.ready && observed.past_agent_grace {
        // The target's agent is silent: whatever its last status said is stale.
        return mark_unreachable(observed, volume, &node.node);
    }
    let Some((ip, port)) = node.nbd_address.rsplit_once(':') else {
        return Vec::new();
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
        return Vec::new();
    }
    vec![
        Action::Log(Log::TargetPlaced {
            volume: volume.name().to_string(),
            node: node.node.clone(),
            address: node.nbd_address.clone(),
        }),
        Action::Update {
            object: Object::CStorVolume(placed_volume),
            at: Version::Read,
        },
    ]
}

/// A volume whose target's node stopped reporting is Offline as far as anyone can tell; its
/// agent (or a restarted one) reports the real state again when it is back.
fn mark_unreachable(observed: &Observed, volume: &CStorVolume, node: &str) -> Vec<Action> {
    let message = format!("the agent hosting the target (node {node}) is not reporting");
    if volume.status.phase == CStorVolumePhase::Offline && volume.status.message == message {
        return Vec::new();
    }
    let mut offline = volume.clone();
    offline.status.phase = CStorVolumePhase::Offline;
    offline.status.message = message;
    offline.status.last_transition_time = observed.now.clone();
    vec![
        Action::Log(Log::TargetUnreachable {
            volume: volume.name().to_string(),
            node: node.to_string(),
        }),
        Action::UpdateStatus(Object::CStorVolume(offline)),
    ]
}
