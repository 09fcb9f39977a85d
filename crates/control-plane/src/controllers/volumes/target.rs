//! Where a Bound volume's target runs: on a node holding one of its replicas whose agent is up
//! (a target next to one copy saves a network hop), the one running the fewest targets (ties
//! spread by the volume's name: a burst of new volumes is planned on one snapshot), recorded in
//! the CV with the node's NBD address.
//! When that node's agent stops reporting (its lease, the control plane's agent timeout, ran
//! out), the target fails over to another ready node holding a trusted replica; the agent there
//! starts it with the next generation, so the replicas refuse the old one. With no such node the
//! volume is Offline, and says why. A target on a cordoned node (`tandem node cordon|drain`)
//! moves the same way to an uncordoned one while its node still reports (a planned move), and
//! stays where it is if there is none; a new target goes to a cordoned node only when every
//! replica's node is.

use tandem_client::NodeStatus;
use tandem_objects::{
    CStorVolume, CStorVolumeConfig, CStorVolumePhase, CStorVolumeReplicaPhase, EventType, Object,
    ANNOTATION_TARGET_GENERATION, ANNOTATION_TARGET_NODE,
};

use crate::controllers::execute::{Action, Controller, Log, Version};
use crate::controllers::observe::Observed;

/// The reason of the event recorded for every failover.
pub(crate) const REASON_TARGET_FAILOVER: &str = "TargetFailover";
/// The reason of the event recorded for a planned move off a cordoned node.
pub(crate) const REASON_TARGET_MOVED: &str = "TargetMoved";
/// The reason of the event recorded when the new target of a failover serves.
pub(crate) const REASON_TARGET_FAILOVER_DONE: &str = "TargetFailoverDone";
/// A failover under way, on the CV until its new target serves: `from=NODE,to=NODE,
/// generation=N,started=MS,lastHeartbeat=MS` (times in milliseconds since the Unix epoch; the
/// old node's last heartbeat 0 when this control plane never heard it).
pub(crate) const ANNOTATION_FAILOVER: &str = "tandem.io/failover";

/// Puts the volume's target on a node and records where clients reach it: the node's NBD
/// address in `spec.targetIP` / `spec.targetPort`. A placed target stays where it is while its
/// node's agent reports (when the agent restarts within its lease, clients reconnect to the
/// same address); once its lease ran out, the target fails over.
pub(super) fn plan_target(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
) -> Vec<Action> {
    let namespace = &config.metadata.namespace;
    let Some(placed) = volume.metadata.annotation(ANNOTATION_TARGET_NODE) else {
        let nodes: Vec<(&NodeStatus, bool)> = (config.current_pool_names().iter())
            .filter_map(|pool| observed.pool(namespace, pool))
            .filter_map(|pool| {
                let node = ready_with_nbd(observed, &pool.spec.host_name)?;
                Some((node, cordoned(observed, namespace, &node.node)))
            })
            .collect();
        // Uncordoned first (a cordoned node only when every replica's node is), then the
        // fewest targets.
        let chosen = nodes.into_iter().min_by_key(|(node, cordoned)| {
            let spread = spread(volume.name(), &node.node);
            (*cordoned, observed.targets_on(&node.node), spread)
        });
        return chosen.map_or_else(Vec::new, |(node, _)| place_on(volume, node));
    };
    match observed.node(placed) {
        Some(node) if node.ready => {
            if cordoned(observed, namespace, placed) && !has_failover(volume) {
                let moved = fail_over(observed, config, volume, placed, Why::Cordoned);
                if !moved.is_empty() {
                    return moved;
                }
            }
            let placed = place_on(volume, node);
            if placed.is_empty() {
                finish_failover(observed, volume)
            } else {
                placed
            }
        }
        // Right after a start the control plane has heard from nobody yet: wait one lease.
        _ if !observed.past_agent_grace => Vec::new(),
        silent => fail_over(observed, config, volume, placed, Why::Silent(silent)),
    }
}

/// A number that orders the nodes differently for different volumes, the same every time
/// (FNV-1a of the volume's and the node's names).
fn spread(volume: &str, node: &str) -> u64 {
    (volume.bytes().chain([0]).chain(node.bytes())).fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether a pool of `node` in `namespace` is cordoned.
fn cordoned(observed: &Observed, namespace: &str, node: &str) -> bool {
    (observed.pools.iter()).any(|pool| {
        pool.metadata.namespace == namespace && pool.spec.host_name == node && pool.cordoned()
    })
}

/// A move of the target is under way (its new target has not served yet).
fn has_failover(volume: &CStorVolume) -> bool {
    volume.metadata.annotation(ANNOTATION_FAILOVER).is_some()
}

/// Why the target moves.
#[derive(Clone, Copy)]
enum Why<'a> {
    /// Its node's agent stopped reporting (its last status, if this control plane heard it).
    Silent(Option<&'a NodeStatus>),
    /// Its node is cordoned: a planned move.
    Cordoned,
}

/// A node whose agent reports and serves NBD.
fn ready_with_nbd<'a>(observed: &'a Observed, node: &str) -> Option<&'a NodeStatus> {
    observed
        .node(node)
        .filter(|status| status.ready && !status.nbd_address.is_empty())
}

/// The CV with its target on `node` (annotation and NBD address); nothing if that is so already
/// or the node has no usable NBD address yet.
fn placed_on(volume: &CStorVolume, node: &NodeStatus) -> Option<CStorVolume> {
    let (ip, port) = node.nbd_address.rsplit_once(':')?;
    let mut placed = volume.clone();
    placed
        .metadata
        .annotations
        .insert(ANNOTATION_TARGET_NODE.to_string(), node.node.clone());
    placed.spec.target_ip = ip.to_string();
    placed.spec.target_port = port.to_string();
    placed.spec.target_portal = node.nbd_address.clone();
    (placed != *volume).then_some(placed)
}

fn place_on(volume: &CStorVolume, node: &NodeStatus) -> Vec<Action> {
    let Some(placed) = placed_on(volume, node) else {
        return Vec::new();
    };
    vec![
        Action::Log(Log::TargetPlaced {
            volume: volume.name().to_string(),
            node: node.node.clone(),
            address: node.nbd_address.clone(),
        }),
        Action::Update {
            object: Object::CStorVolume(placed),
            at: Version::Read,
        },
    ]
}

/// A node that could take the target over: it holds a trusted replica of the volume.
struct Candidate<'a> {
    node: &'a str,
    replica_id: &'a str,
    /// The CV's status last showed this replica Healthy (it needs no resync to serve reads).
    healthy: bool,
    /// Why it cannot take the target, if it cannot.
    unusable: Option<&'static str>,
    status: Option<&'a NodeStatus>,
}

/// The nodes other than `placed` holding a trusted replica of the volume (a member of the CV's
/// recorded membership, `spec.replicaDetails.knownReplicas`; before a first target recorded
/// one, any replica: nothing was written yet), in the CVC's pool order.
fn candidates<'a>(
    observed: &'a Observed,
    config: &'a CStorVolumeConfig,
    volume: &'a CStorVolume,
    placed: &str,
) -> Vec<Candidate<'a>> {
    let known = &volume.spec.replica_details.known_replicas;
    let replicas = observed.replicas_of(config);
    config
        .current_pool_names()
        .iter()
        .filter_map(|pool| {
            let replica = replicas.get(pool.as_str())?;
            let replica_id = replica.spec.replica_id.as_str();
            let trusted = if known.is_empty() {
                !replica_id.is_empty()
            } else {
                known.contains_key(replica_id)
            };
            if !trusted || !replica.metadata.deletion_timestamp.is_empty() {
                return None;
            }
            let node = observed
                .pool(&config.metadata.namespace, pool)?
                .spec
                .host_name
                .as_str();
            if node == placed {
                return None;
            }
            let healthy = volume.status.replica_statuses.iter().any(|status| {
                status.replica_id == replica_id
                    && match status.phase {
                        Some(phase) => phase == CStorVolumeReplicaPhase::Healthy,
                        None => status.mode == tandem_objects::ReplicaMode::Healthy,
                    }
            });
            let status = observed.node(node);
            let unusable = match status {
                _ if cordoned(observed, &config.metadata.namespace, node) => Some("cordoned"),
                None => Some("not reporting"),
                Some(status) if !status.ready => Some("not reporting"),
                Some(status) if status.nbd_address.is_empty() => Some("no NBD address yet"),
                Some(_) => None,
            };
            Some(Candidate {
                node,
                replica_id,
                healthy,
                unusable,
                status,
            })
        })
        .collect()
}

/// The target's node stopped reporting, or is cordoned: move the target to the best other
/// ready, uncordoned node with a trusted replica (one last seen Healthy first), marking the
/// volume Offline until the new target reports, and record the move; with no such node, a
/// silent node's volume is Offline and a cordoned node's target stays.
fn fail_over(
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: &CStorVolume,
    placed: &str,
    why: Why<'_>,
) -> Vec<Action> {
    let candidates = candidates(observed, config, volume, placed);
    let chosen = candidates
        .iter()
        .filter(|candidate| candidate.unusable.is_none())
        .min_by_key(|candidate| !candidate.healthy);
    let Some((chosen, Some(status))) = chosen.map(|candidate| (candidate, candidate.status)) else {
        if let Why::Cordoned = why {
            return Vec::new();
        }
        let why = if candidates.is_empty() {
            "no other node holds a trusted replica of the volume".to_string()
        } else {
            let nodes: Vec<String> = candidates
                .iter()
                .map(|candidate| {
                    format!(
                        "{}: {}",
                        candidate.node,
                        candidate.unusable.unwrap_or("no NBD address yet")
                    )
                })
                .collect();
            format!(
                "no other node with a trusted replica can take it over ({})",
                nodes.join("; ")
            )
        };
        return mark_unreachable(observed, volume, placed, &why);
    };
    let Some(mut moved) = placed_on(volume, status) else {
        return Vec::new();
    };
    let generation = volume
        .metadata
        .annotation(ANNOTATION_TARGET_GENERATION)
        .unwrap_or("none (it never started)");
    let (silent, reason, event_type) = match why {
        Why::Silent(silent) => (silent, REASON_TARGET_FAILOVER, EventType::Warning),
        Why::Cordoned => (None, REASON_TARGET_MOVED, EventType::Normal),
    };
    let cause = match why {
        Why::Silent(Some(node)) => format!(
            "the agent on {placed} has not reported for {:.1}s",
            node.last_seen_ms as f64 / 1000.0
        ),
        Why::Silent(None) => {
            format!("the agent on {placed} has not reported since the control plane started")
        }
        Why::Cordoned => format!("node {placed} is cordoned (a planned move)"),
    };
    let verb = match why {
        Why::Silent(_) => "failed over",
        Why::Cordoned => "moved",
    };
    let replica_state = if chosen.healthy {
        "Healthy"
    } else {
        "not last seen Healthy"
    };
    let message = format!(
        "target {verb} from node {placed} to node {} (replica {}, {replica_state}): {cause}; \
         the old target had generation {generation}, the new one starts with the next",
        chosen.node, chosen.replica_id
    );
    let mut offline = volume.clone();
    offline.status.phase = CStorVolumePhase::Offline;
    offline.status.message = format!(
        "the target is failing over from node {placed} to node {}",
        chosen.node
    );
    offline.status.last_transition_time = observed.now.clone();
    moved.status = offline.status.clone();
    let last_heartbeat_ms =
        silent.map_or(0, |node| observed.now_ms.saturating_sub(node.last_seen_ms));
    moved.metadata.annotations.insert(
        ANNOTATION_FAILOVER.to_string(),
        format!(
            "from={placed},to={},generation={},started={},lastHeartbeat={last_heartbeat_ms}",
            chosen.node,
            generation_number(volume),
            observed.now_ms
        ),
    );
    vec![
        Action::Log(Log::TargetFailover {
            volume: volume.name().to_string(),
            from: placed.to_string(),
            to: chosen.node.to_string(),
            generation: generation.to_string(),
        }),
        // The stale status first (so nobody reads the dead target's "Healthy" with the new
        // address), then the move, at the version that write answered.
        Action::UpdateStatus(Object::CStorVolume(offline)),
        Action::Update {
            object: Object::CStorVolume(moved.clone()),
            at: Version::OfPreviousWrite,
        },
        Action::Record {
            by: Controller::Volumes,
            about: Object::CStorVolume(moved),
            event_type,
            reason: reason.to_string(),
            message,
            unless_newest_says_the_same: false,
        },
    ]
}

/// A volume whose target's node stopped reporting, with nowhere to fail over to, is Offline as
/// far as anyone can tell; its agent (or a restarted one) reports the real state again when it
/// is back.
fn mark_unreachable(
    observed: &Observed,
    volume: &CStorVolume,
    node: &str,
    why: &str,
) -> Vec<Action> {
    let message = format!("the agent hosting the target (node {node}) is not reporting, and {why}");
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

/// The generation of the volume's newest target (0 before the first).
fn generation_number(volume: &CStorVolume) -> u64 {
    volume
        .metadata
        .annotation(ANNOTATION_TARGET_GENERATION)
        .and_then(|generation| generation.parse().ok())
        .unwrap_or(0)
}

/// A failover under way, as [`ANNOTATION_FAILOVER`] records it.
#[derive(Debug, PartialEq, Eq)]
struct FailoverUnderWay<'a> {
    from: &'a str,
    to: &'a str,
    generation: u64,
    started_ms: u64,
    last_heartbeat_ms: u64,
}

fn parse_failover(text: &str) -> Option<FailoverUnderWay<'_>> {
    let mut fields = text.split(',').map(|field| field.split_once('='));
    let mut next = |key: &str| match fields.next() {
        Some(Some((name, value))) if name == key => Some(value),
        _ => None,
    };
    Some(FailoverUnderWay {
        from: next("from")?,
        to: next("to")?,
        generation: next("generation")?.parse().ok()?,
        started_ms: next("started")?.parse().ok()?,
        last_heartbeat_ms: next("lastHeartbeat")?.parse().ok()?,
    })
}

/// Once the target a failover started serves (a newer generation than the old target's, the
/// volume Healthy or Degraded), the failover is over: the annotation goes, and an event says how
/// long it took. An unreadable annotation is dropped without an event.
fn finish_failover(observed: &Observed, volume: &CStorVolume) -> Vec<Action> {
    let Some(text) = volume.metadata.annotation(ANNOTATION_FAILOVER) else {
        return Vec::new();
    };
    let mut finished = volume.clone();
    finished.metadata.annotations.remove(ANNOTATION_FAILOVER);
    let update = Action::Update {
        object: Object::CStorVolume(finished.clone()),
        at: Version::Read,
    };
    let Some(failover) = parse_failover(text) else {
        return vec![update];
    };
    let serving = matches!(
        volume.status.phase,
        CStorVolumePhase::Healthy | CStorVolumePhase::Degraded
    );
    let generation = generation_number(volume);
    if !serving || generation <= failover.generation {
        return Vec::new();
    }
    let seconds = |since_ms: u64| observed.now_ms.saturating_sub(since_ms) as f64 / 1000.0;
    let since_heartbeat = if failover.last_heartbeat_ms == 0 {
        String::new()
    } else {
        format!(
            ", {:.1}s after node {}'s last heartbeat",
            seconds(failover.last_heartbeat_ms),
            failover.from
        )
    };
    let message = format!(
        "node {} serves the volume with generation {generation} ({}): {:.1}s after the failover \
         from node {} began{since_heartbeat}",
        failover.to,
        volume.status.phase,
        seconds(failover.started_ms),
        failover.from
    );
    vec![
        update,
        Action::Record {
            by: Controller::Volumes,
            about: Object::CStorVolume(finished),
            event_type: EventType::Normal,
            reason: REASON_TARGET_FAILOVER_DONE.to_string(),
            message,
            unless_newest_says_the_same: false,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_failover_annotation_when_parsed_then_its_fields_or_nothing_if_malformed() {
        assert_eq!(
            parse_failover("from=n1,to=n2,generation=3,started=5000,lastHeartbeat=3000"),
            Some(FailoverUnderWay {
                from: "n1",
                to: "n2",
                generation: 3,
                started_ms: 5000,
                last_heartbeat_ms: 3000,
            })
        );
        for malformed in [
            "",
            "from=n1,to=n2,generation=x,started=5000,lastHeartbeat=3000",
            "to=n2,from=n1,generation=3,started=5000,lastHeartbeat=3000",
            "from=n1,to=n2,generation=3,started=5000",
        ] {
            assert_eq!(parse_failover(malformed), None, "{malformed:?}");
        }
    }
}
