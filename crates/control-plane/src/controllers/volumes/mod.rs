//! The volume controller: a new CStorVolumeConfig is provisioned like cStor does it (a
//! CStorVolume, then one CStorVolumeReplica per pool, never two on one node, skipping pools that
//! are not ONLINE or are read-only), and an edit of `spec.policy.replicaPoolInfo` scales the
//! replicas up or down. Unlike cStor, "successfully scaled" is said only once every new replica
//! is Healthy; until then the CVC carries a `ScalingVolumeReplicas` condition, which also holds
//! off the next change (see `tandem_objects::validate_cvc_update`).
//!
//! Each part is a plan from the observed objects to actions: `provision`, `target` (where the
//! volume's target runs), `scale`, and `orphans` (what is left of a deleted volume).

mod objects;
mod orphans;
mod provision;
mod scale;
mod target;

use rand::Rng;
use tandem_objects::{CStorVolume, CStorVolumeConfig, CStorVolumeConfigPhase, EventType, Object};

use crate::controllers::execute::{Action, Controller};
use crate::controllers::observe::Observed;

pub(crate) use objects::new_volume;
pub(crate) use orphans::plan_orphans;
pub(crate) use provision::plan_provision;

/// What to do for one CVC in this pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    Act(Vec<Action>),
    /// Create the volume first, then do what [`plan_provision`] plans with it: the replicas
    /// name their volume's uid, which the server gives it.
    CreateVolume(Box<CStorVolume>),
}

pub(crate) fn plan_config(
    observed: &Observed,
    config: &CStorVolumeConfig,
    random: &mut impl Rng,
) -> Step {
    if !config.metadata.deletion_timestamp.is_empty() {
        return Step::Act(Vec::new());
    }
    match config.status.phase {
        CStorVolumeConfigPhase::Pending => {
            if config.pool_cluster_name().is_none() {
                return Step::Act(Vec::new()); // The API refuses such a CVC; nothing to place it with.
            }
            match observed.volume_of(config) {
                Some(volume) => Step::Act(plan_provision(observed, config, volume, random)),
                None => Step::CreateVolume(Box::new(new_volume(config))),
            }
        }
        CStorVolumeConfigPhase::Bound => {
            let mut actions = Vec::new();
            if let Some(volume) = observed.volume_of(config) {
                actions.extend(target::plan_target(observed, config, volume));
            }
            // As before the reshape: if both write the CV, scale's write (at the read version)
            // conflicts and waits a pass; a follow-up may name `Version::OfPreviousWrite`.
            actions.extend(scale::plan_scale(observed, config));
            Step::Act(actions)
        }
        CStorVolumeConfigPhase::Failed => Step::Act(Vec::new()),
    }
}

/// A Warning, to be recorded unless the CVC's newest event already says it (a pass runs every
/// second; the event should say "x2" when something new happened, not count the passes). The
/// executor reads the CVC's events just before, as the recorder's caller always did: the pass
/// does not read every event.
fn warn_once(config: &CStorVolumeConfig, reason: &str, message: &str) -> Action {
    Action::Record {
        by: Controller::Volumes,
        about: Object::CStorVolumeConfig(config.clone()),
        event_type: EventType::Warning,
        reason: reason.to_string(),
        message: message.to_string(),
        unless_newest_says_the_same: true,
    }
}

/// An event from the volume controller about a CVC.
fn record(
    config: &CStorVolumeConfig,
    event_type: EventType,
    reason: &str,
    message: &str,
) -> Action {
    Action::Record {
        by: Controller::Volumes,
        about: Object::CStorVolumeConfig(config.clone()),
        event_type,
        reason: reason.to_string(),
        message: message.to_string(),
        unless_newest_says_the_same: false,
    }
}

#[cfg(test)]
mod tests;
