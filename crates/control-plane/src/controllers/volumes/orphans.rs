//! Garbage collection: a volume whose CVC is gone goes too, its replicas first (their agents
//! destroy the data and release them), then the CV.

use tandem_objects::{CStorVolumeReplica, Kind};

use crate::controllers::execute::{Action, Log};
use crate::controllers::observe::Observed;

pub(crate) fn plan_orphans(observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    for volume in &observed.volumes {
        let namespace = &volume.metadata.namespace;
        if observed.has_config(namespace, volume.name()) {
            continue;
        }
        let replicas: Vec<&CStorVolumeReplica> = observed.replicas_named(namespace, volume.name());
        for replica in &replicas {
            if replica.metadata.deletion_timestamp.is_empty() {
                actions.push(Action::Log(Log::DeletingReplicaOfDeletedVolume {
                    replica: replica.name().to_string(),
                }));
                actions.push(Action::Delete {
                    kind: Kind::CStorVolumeReplica,
                    namespace: namespace.clone(),
                    name: replica.name().to_string(),
                });
            }
        }
        if replicas.is_empty() {
            actions.push(Action::Log(Log::DeletingVolumeWithoutConfig {
                volume: volume.name().to_string(),
            }));
            actions.push(Action::Delete {
                kind: Kind::CStorVolume,
                namespace: namespace.clone(),
                name: volume.name().to_string(),
            });
        }
    }
    actions
}
