//! What a plan asks for, and the executor that does it through the API client: the actions in
//! order, stopping at the first that fails (the next pass plans again from what is stored).
//! Every write names the resource version its object was read at, so a write that raced with
//! someone else's fails with a conflict.

use tandem_client::ClientError;
use tandem_objects::{EventType, Kind, Object};

use crate::controllers::Context;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// A line in the controllers' log, written when the actions before it succeeded.
    Log(Log),
    Create(Object),
    /// Replaces spec and metadata (the status stays as stored).
    Update {
        object: Object,
        at: Version,
    },
    /// Replaces the status (spec and metadata stay as stored), at the version it was read at.
    UpdateStatus(Object),
    /// Deletes an object, or marks it for deletion while finalizers hold it.
    Delete {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// Records an event about an object (a repeat bumps the count of the same event).
    Record {
        by: Controller,
        about: Object,
        event_type: EventType,
        reason: String,
        message: String,
    },
}

/// Which resource version a write names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// The one the object carries: the version it was read at.
    Read,
    /// The one the previous action, a write of the same object, answered with.
    OfPreviousWrite,
}

/// Which controller records an event (its FROM column: `POOL_CONTROLLER`, `VOLUME_CONTROLLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Pools,
    Volumes,
}

/// The controllers' log lines, one per kind of write they announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Log {
    CreatingPool {
        pool: String,
        node: String,
        cluster: String,
    },
    DeletingPool {
        pool: String,
    },
    PoolOffline {
        message: String,
    },
    TargetUnreachable {
        volume: String,
        node: String,
    },
    TargetPlaced {
        volume: String,
        node: String,
        address: String,
    },
    CreatingReplica {
        replica: String,
        pool: String,
    },
    CreatingReplicaForScaleUp {
        replica: String,
    },
    DeletingReplicaForScaleDown {
        replica: String,
    },
    DeletingReplicaOfDeletedVolume {
        replica: String,
    },
    DeletingVolumeWithoutConfig {
        volume: String,
    },
}

impl Log {
    fn write(&self) {
        match self {
            Log::CreatingPool {
                pool,
                node,
                cluster,
            } => {
                let node = node.as_str();
                tracing::info!(
                    pool = pool.as_str(),
                    node,
                    cluster = cluster.as_str(),
                    "creating pool"
                );
            }
            Log::DeletingPool { pool } => {
                tracing::info!(
                    pool = pool.as_str(),
                    "deleting pool removed from its cluster"
                );
            }
            Log::PoolOffline { message } => tracing::warn!("{message}"),
            Log::TargetUnreachable { volume, node } => {
                let node = node.as_str();
                tracing::warn!(
                    volume = volume.as_str(),
                    node,
                    "target unreachable: volume Offline"
                );
            }
            Log::TargetPlaced {
                volume,
                node,
                address,
            } => {
                tracing::info!(volume = volume.as_str(), node = %node, address = %address, "target placed");
            }
            Log::CreatingReplica { replica, pool } => {
                tracing::info!(
                    replica = replica.as_str(),
                    pool = pool.as_str(),
                    "creating replica"
                );
            }
            Log::CreatingReplicaForScaleUp { replica } => {
                tracing::info!(replica = replica.as_str(), "creating replica for scale-up");
            }
            Log::DeletingReplicaForScaleDown { replica } => {
                tracing::info!(
                    replica = replica.as_str(),
                    "deleting replica for scale-down"
                );
            }
            Log::DeletingReplicaOfDeletedVolume { replica } => {
                tracing::info!(
                    replica = replica.as_str(),
                    "deleting replica of a deleted volume"
                );
            }
            Log::DeletingVolumeWithoutConfig { volume } => {
                tracing::info!(
                    volume = volume.as_str(),
                    "deleting volume whose config was deleted"
                );
            }
        }
    }
}

/// Does `actions` in order; the first failure ends it.
pub(crate) async fn execute(context: &Context, actions: Vec<Action>) -> Result<(), ClientError> {
    let client = &context.client;
    let mut written: Option<Object> = None;
    for action in actions {
        match action {
            Action::Log(log) => log.write(),
            Action::Create(object) => written = Some(client.create(&object).await?),
            Action::Update { mut object, at } => {
                if at == Version::OfPreviousWrite {
                    let previous = written
                        .as_ref()
                        .expect("a plan writes an object before it writes it again");
                    assert_eq!(
                        (previous.kind(), previous.namespace(), previous.name()),
                        (object.kind(), object.namespace(), object.name()),
                        "a plan names the version of a previous write of the same object"
                    );
                    object.metadata_mut().resource_version =
                        previous.metadata().resource_version.clone();
                }
                written = Some(client.update(&object).await?);
            }
            Action::UpdateStatus(object) => written = Some(client.update_status(&object).await?),
            Action::Delete {
                kind,
                namespace,
                name,
            } => written = Some(client.delete(kind, &namespace, &name).await?),
            Action::Record {
                by,
                about,
                event_type,
                reason,
                message,
            } => {
                let recorder = match by {
                    Controller::Pools => &context.pool_events,
                    Controller::Volumes => &context.volume_events,
                };
                recorder
                    .record(&about, event_type, &reason, &message)
                    .await?;
            }
        }
    }
    Ok(())
}
