//! What a plan asks for, and the executor that does it through the API client: the actions in
//! order, stopping at the first that fails (the next pass plans again from what is stored).
//! Every write names the resource version its object was read at, so a write that raced with
//! someone else's fails with a conflict.

use tandem_client::{ClientError, ErrorKind};
use tandem_objects::{Event, EventType, Kind, Object};

use crate::controllers::Context;

/// Why a plan's actions stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecuteError {
    /// The API client failed (the server refused, or did not answer).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The store could not be read.
    #[error("{0}")]
    Store(String),
    /// The plan asked for something the executor cannot do: a bug in a plan, reported like any
    /// other failure rather than ending the controllers.
    #[error("a plan bug: {0}")]
    Plan(String),
}

impl ExecuteError {
    /// Whether a writer raced with this pass: the next pass starts over, nothing to report.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecuteError::Client(error) if error.kind() == ErrorKind::Conflict)
    }
}

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
        /// Read the object's events first, and record nothing if the newest already has this
        /// reason and message (a pass runs every second; the event should say "x2" when
        /// something new happened, not count the passes). A failed read fails the plan here,
        /// like any failed action; the plans put such a warning last.
        unless_newest_says_the_same: bool,
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
    TargetFailover {
        volume: String,
        from: String,
        to: String,
        generation: String,
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
            Log::TargetFailover {
                volume,
                from,
                to,
                generation,
            } => {
                tracing::warn!(
                    volume = volume.as_str(),
                    from = from.as_str(),
                    to = to.as_str(),
                    generation = generation.as_str(),
                    "target node not reporting: failing the target over"
                );
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
pub(crate) async fn execute(context: &Context, actions: Vec<Action>) -> Result<(), ExecuteError> {
    let client = &context.client;
    let mut written: Option<Object> = None;
    for action in actions {
        match action {
            Action::Log(log) => log.write(),
            Action::Create(object) => written = Some(client.create(&object).await?),
            Action::Update { mut object, at } => {
                if at == Version::OfPreviousWrite {
                    object.metadata_mut().resource_version =
                        version_of_previous_write(written.as_ref(), &object)?;
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
                unless_newest_says_the_same,
            } => {
                if unless_newest_says_the_same {
                    let events = client.events_about(&about).await?;
                    if newest_says(&events, &reason, &message) {
                        continue;
                    }
                }
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

/// The resource version the previous action's write answered with, which must have been a
/// write of the same object.
fn version_of_previous_write(
    previous: Option<&Object>,
    object: &Object,
) -> Result<String, ExecuteError> {
    let name = |object: &Object| {
        format!(
            "{} {}/{}",
            object.kind().name(),
            object.namespace(),
            object.name()
        )
    };
    match previous {
        None => Err(ExecuteError::Plan(format!(
            "an update of {} names the version of a previous write, but nothing was written \
             before it",
            name(object)
        ))),
        Some(previous)
            if (previous.kind(), previous.namespace(), previous.name())
                != (object.kind(), object.namespace(), object.name()) =>
        {
            Err(ExecuteError::Plan(format!(
                "an update of {} names the version of a previous write, but the previous write \
                 was of {}",
                name(object),
                name(previous)
            )))
        }
        Some(previous) => Ok(previous.metadata().resource_version.clone()),
    }
}

/// Whether the newest of `events` (oldest first, as `Client::events_about` answers) has this
/// reason and message.
fn newest_says(events: &[Event], reason: &str, message: &str) -> bool {
    events
        .last()
        .is_some_and(|event| event.reason == reason && event.message == message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fixtures::event;

    fn cvc(name: &str, resource_version: &str) -> Object {
        let mut config = tandem_objects::CStorVolumeConfig::default();
        config.metadata.namespace = "openebs".to_string();
        config.metadata.name = name.to_string();
        config.metadata.resource_version = resource_version.to_string();
        Object::CStorVolumeConfig(config)
    }

    #[test]
    fn given_a_write_of_the_same_object_when_its_version_is_named_then_it_is_the_one_written() {
        let version = version_of_previous_write(Some(&cvc("pvc-1", "8")), &cvc("pvc-1", "7"));
        assert_eq!(version.unwrap(), "8");
    }

    #[test]
    fn given_no_previous_write_or_another_object_when_its_version_is_named_then_a_plan_error() {
        let nothing = version_of_previous_write(None, &cvc("pvc-1", "7")).unwrap_err();
        assert_eq!(
            nothing.to_string(),
            "a plan bug: an update of CStorVolumeConfig openebs/pvc-1 names the version of a \
             previous write, but nothing was written before it"
        );
        let other = version_of_previous_write(Some(&cvc("pvc-2", "8")), &cvc("pvc-1", "7"));
        assert_eq!(
            other.unwrap_err().to_string(),
            "a plan bug: an update of CStorVolumeConfig openebs/pvc-1 names the version of a \
             previous write, but the previous write was of CStorVolumeConfig openebs/pvc-2"
        );
        assert!(!nothing.is_conflict());
    }

    const SAID: &str = "not enough pools are available";

    #[test]
    fn given_the_same_warning_is_the_newest_event_when_recorded_again_then_it_is_skipped() {
        let events = [
            event("pvc-1", "Provisioning", "older", "2026-12-02T10:58:00Z"),
            event("pvc-1", "Provisioning", SAID, "2026-12-02T10:59:00Z"),
        ];
        assert!(newest_says(&events, "Provisioning", SAID));
    }

    #[test]
    fn given_the_same_warning_followed_by_another_event_when_recorded_then_it_is_recorded_again() {
        let events = [
            event("pvc-1", "Provisioning", SAID, "2026-12-02T10:58:00Z"),
            event("pvc-1", "Other", "something else", "2026-12-02T10:59:00Z"),
        ];
        assert!(!newest_says(&events, "Provisioning", SAID));
    }

    #[test]
    fn given_the_newest_differs_in_reason_or_message_or_no_event_when_recorded_then_it_is_recorded()
    {
        let newest = [event("pvc-1", "Provisioning", SAID, "2026-12-02T10:59:00Z")];
        assert!(!newest_says(&newest, "Migration", SAID));
        assert!(!newest_says(&newest, "Provisioning", "something else"));
        assert!(!newest_says(&[], "Provisioning", SAID));
    }
}
