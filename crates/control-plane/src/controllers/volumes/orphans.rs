//! Garbage collection: a volume whose CVC is gone goes too, its replicas first (their agents
//! destroy the data and release them), then the CV.

use tandem_objects::{CStorVolumeReplica, Kind, LABEL_PERSISTENT_VOLUME};

use crate::controllers::execute::{Action, Log};
use crate::controllers::observe::Observed;

pub(crate) fn plan_orphans(observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    for volume in &observed.volumes {
        let has_config = observed.configs.iter().any(|config| {
            config.metadata.namespace == volume.metadata.namespace && config.name() == volume.name()
        });
        if has_config {
            continue;
        }
        let namespace = &volume.metadata.namespace;
        let replicas: Vec<&CStorVolumeReplica> = observed
            .replicas
            .iter()
            .filter(|replica| {
                replica.metadata.namespace == *namespace
                    && replica.metadata.label(LABEL_PERSISTENT_VOLUME) == Some(volume.name())
            })
            .collect();
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
