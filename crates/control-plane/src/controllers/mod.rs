//! The controllers: level-triggered loops that make the stored objects true. Each pass brings
//! its view of everything up to date (`Observed`: the store's changes since the last pass), then, for each pool cluster, pool and volume config, plans
//! what to do from that alone (`pools::plan_*`, `volumes::plan_*`: pure functions, tested as
//! tables) and executes the plan through the API client (`execute`). A pass runs after every
//! write to the store (any process's), when a node's readiness changes (a lease ran out, a
//! node reported again) and otherwise every thirty seconds (a slow resync). Every pass is
//! idempotent, and every write names the resource version it read, so a pass that raced with a
//! user's edit loses with a conflict and the next pass starts over from what is stored.
//!
//! The controllers are API clients like the CLI and the agents: their writes pass the same
//! validation and admission rules, and nothing about them depends on the store's kind.

mod execute;
mod observe;
mod pools;
mod volumes;

#[cfg(test)]
mod fixtures;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tandem_client::{Client, ClientError, Recorder};
use tandem_objects::{CStorVolume, CStorVolumeConfig, Object};
use tokio::time::Instant;

use crate::controllers::execute::{execute, ExecuteError};
use crate::controllers::observe::Observed;
use crate::controllers::volumes::Step;
use crate::leader::Leader;
use crate::Api;

/// The event source of the volume controller, as cStor names it.
pub const VOLUME_CONTROLLER: &str = "cstorvolumeclaim-controller";
/// The event source of the pool cluster controller.
pub const POOL_CONTROLLER: &str = "cspc-controller";

/// What the controllers share: the API client, the event recorders, and the API's view of
/// the node agents.
pub(crate) struct Context {
    pub client: Client,
    pub api: Arc<Api>,
    pub volume_events: Recorder,
    pub pool_events: Recorder,
}

/// Runs the controllers through `client` (of this process's own API) while this control plane
/// leads, until `shutdown`. A pass under way when the leadership is lost is dropped at
/// its next await; its writes carry the term, so one already sent is refused by the store.
pub async fn run(
    api: Arc<Api>,
    client: Client,
    mut leader: Leader,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let mandate = tokio::select! {
            _ = &mut shutdown => return,
            mandate = leader.until_leading() => mandate,
        };
        let client = match mandate {
            Some(term) => {
                tracing::info!(term = term.0, "this control plane leads: controllers start");
                client.in_term(term.0)
            }
            None => client.clone(),
        };
        let context = Context {
            volume_events: Recorder::new(client.clone(), VOLUME_CONTROLLER, ""),
            pool_events: Recorder::new(client.clone(), POOL_CONTROLLER, ""),
            client,
            api: api.clone(),
        };
        let mut errors = ErrorLog::default();
        // The objects, kept from pass to pass (each reads only the changes since).
        let mut observed = Observed::default();
        let mut lost = std::pin::pin!(leader.clone().lost(mandate));
        loop {
            let mut written = std::pin::pin!(context.api.written.notified());
            let failed = tokio::select! {
                _ = &mut shutdown => return,
                _ = &mut lost => break,
                failed = pass(&context, &mut observed, &mut errors) => failed,
            };
            // Until something is written, a node's readiness changes, or the resync is due.
            let resync_at = Instant::now()
                + if failed {
                    RETRY_INTERVAL
                } else {
                    RESYNC_INTERVAL
                };
            let readiness = context.api.readiness();
            loop {
                let wake = next_look_at(resync_at, context.api.next_lease_expiry());
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = &mut lost => break,
                    _ = &mut written => break,
                    _ = tokio::time::sleep_until(wake) => {
                        if Instant::now() >= resync_at || context.api.readiness() != readiness {
                            break;
                        }
                    }
                }
            }
        }
        tracing::warn!("this control plane no longer leads: controllers stop");
    }
}

/// With nothing written and no node's readiness changing, the controllers look again after
/// this long anyway (a slow resync, as Kubernetes' informers have): every change they answer
/// comes as a write or a lease's end, so this only bounds the cost of a missed wake-up.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// After a pass that failed somewhere (not a conflict: that is a write, which wakes them), the
/// controllers look again this soon.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a lease's end the controllers look: the API calls a node ready up to and
/// including its timeout.
const PAST_LEASE_END: Duration = Duration::from_millis(5);

/// When to look at the nodes' readiness again: just after the next lease's end (a target fails
/// over as soon as its node's lease runs out; a lease renewed meanwhile changes nothing and the
/// wait goes on), or at the resync, whichever comes first.
fn next_look_at(resync_at: Instant, lease_expiry: Option<Duration>) -> Instant {
    lease_expiry.map_or(resync_at, |expiry| {
        (Instant::now() + expiry + PAST_LEASE_END).min(resync_at)
    })
}

/// One pass over everything; true if some part of it failed (a conflict is no failure).
async fn pass(context: &Context, observed: &mut Observed, errors: &mut ErrorLog) -> bool {
    context.api.metrics.controller_pass();
    let mut errors = Counted {
        log: errors,
        context,
        failed: false,
    };
    if let Err(error) = observed.refresh(&context.api) {
        errors.report(Subject::Snapshot, Err(error));
        return true;
    }
    let observed = &*observed;
    for cluster in &observed.pool_clusters {
        let actions = pools::plan_cluster(observed, cluster, &mut rand::thread_rng());
        let result = execute(context, actions).await;
        errors.report(Subject::PoolCluster(cluster.name().to_string()), result);
    }
    for pool in &observed.pools {
        let result = execute(context, pools::plan_liveness(observed, pool)).await;
        errors.report(Subject::Pool(pool.name().to_string()), result);
    }
    // The most recently written first: a new or edited volume is what a pass is usually for,
    // and among a thousand it would otherwise wait for the others' plans and writes.
    let mut configs: Vec<&CStorVolumeConfig> = observed.configs.iter().collect();
    configs.sort_by_key(|config| {
        std::cmp::Reverse(config.metadata.resource_version.parse::<u64>().unwrap_or(0))
    });
    for config in configs {
        let step = volumes::plan_config(observed, config, &mut rand::thread_rng());
        let result = match step {
            Step::Act(actions) => execute(context, actions).await,
            Step::CreateVolume(volume) => {
                create_volume_then_provision(context, observed, config, volume).await
            }
        };
        errors.report(Subject::VolumeConfig(config.name().to_string()), result);
    }
    let result = execute(context, volumes::plan_orphans(observed)).await;
    errors.report(Subject::GarbageCollection, result);
    errors.failed
}

/// The first step of provisioning: the volume, whose uid (the server's) its replicas name.
async fn create_volume_then_provision(
    context: &Context,
    observed: &Observed,
    config: &CStorVolumeConfig,
    volume: Box<CStorVolume>,
) -> Result<(), ExecuteError> {
    let created = context.client.create(&Object::CStorVolume(*volume)).await?;
    let volume = CStorVolume::try_from(created).map_err(|error| ClientError::Protocol {
        server: context.client.server().to_string(),
        detail: error.to_string(),
    })?;
    let actions = volumes::plan_provision(observed, config, &volume, &mut rand::thread_rng());
    execute(context, actions).await
}

/// The error log of a pass, counting each failure (a conflict is not one) in the metrics.
struct Counted<'a> {
    log: &'a mut ErrorLog,
    context: &'a Context,
    /// Something failed that was not a conflict.
    failed: bool,
}

impl Counted<'_> {
    fn report(&mut self, subject: Subject, result: Result<(), ExecuteError>) {
        if result.as_ref().is_err_and(|error| !error.is_conflict()) {
            self.failed = true;
            self.context
                .api
                .metrics
                .reconcile_error(subject.metric_label());
        }
        self.log.report(subject, result);
    }
}

/// What an error is about: the key of the error log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    /// Reading what the pass looks at.
    Snapshot,
    PoolCluster(String),
    Pool(String),
    VolumeConfig(String),
    GarbageCollection,
}

impl Subject {
    /// The subject's label in `tandem_controller_reconcile_errors_total`.
    fn metric_label(&self) -> &'static str {
        match self {
            Subject::Snapshot => "snapshot",
            Subject::PoolCluster(_) => "cspc",
            Subject::Pool(_) => "cspi",
            Subject::VolumeConfig(_) => "cvc",
            Subject::GarbageCollection => "gc",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Snapshot => formatter.write_str("snapshot"),
            Subject::PoolCluster(name) => write!(formatter, "cspc/{name}"),
            Subject::Pool(name) => write!(formatter, "cspi/{name}"),
            Subject::VolumeConfig(name) => write!(formatter, "cvc/{name}"),
            Subject::GarbageCollection => formatter.write_str("volume garbage collection"),
        }
    }
}

/// Logs each object's errors once per distinct message (a pass runs every second), and a
/// conflict, which only means a writer raced with this pass, not at all.
#[derive(Default)]
struct ErrorLog {
    last: BTreeMap<Subject, String>,
}

impl ErrorLog {
    fn report(&mut self, subject: Subject, result: Result<(), ExecuteError>) {
        match result {
            Ok(()) => {
                self.last.remove(&subject);
            }
            Err(error) if error.is_conflict() => {}
            Err(error) => {
                let message = error.to_string();
                if self.last.get(&subject) != Some(&message) {
                    let object = subject.to_string();
                    tracing::warn!(
                        object = object.as_str(),
                        error = %message,
                        "reconcile failed; retrying"
                    );
                    self.last.insert(subject, message);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(message: &str) -> Result<(), ExecuteError> {
        Err(ExecuteError::Client(ClientError::Api {
            code: 422,
            reason: "Invalid".to_string(),
            message: message.to_string(),
        }))
    }

    fn conflict() -> Result<(), ExecuteError> {
        Err(ExecuteError::Client(ClientError::Api {
            code: 409,
            reason: "Conflict".to_string(),
            message: "stale".to_string(),
        }))
    }

    #[test]
    fn given_a_lease_ending_before_the_resync_when_waiting_then_look_just_after_it() {
        let now = Instant::now();
        let resync_at = now + RESYNC_INTERVAL;
        let table = [
            (None, RESYNC_INTERVAL),
            (Some(Duration::ZERO), PAST_LEASE_END),
            (Some(Duration::from_millis(300)), Duration::from_millis(305)),
            (Some(RESYNC_INTERVAL * 2), RESYNC_INTERVAL),
        ];
        for (expiry, wait) in table {
            let at = next_look_at(resync_at, expiry);
            // `next_look_at` reads the clock after `now`: allow what passed in between.
            let waited = at.saturating_duration_since(now);
            assert!(
                waited >= wait && waited <= wait + Duration::from_millis(50),
                "{expiry:?}: {waited:?}"
            );
        }
    }

    #[test]
    fn given_each_subject_when_logged_then_it_reads_as_it_always_did() {
        let table = [
            (Subject::Snapshot, "snapshot"),
            (Subject::PoolCluster("c".to_string()), "cspc/c"),
            (Subject::Pool("p".to_string()), "cspi/p"),
            (Subject::VolumeConfig("v".to_string()), "cvc/v"),
            (Subject::GarbageCollection, "volume garbage collection"),
        ];
        for (subject, text) in table {
            assert_eq!(subject.to_string(), text);
        }
    }

    #[test]
    fn given_errors_when_reported_then_each_subject_keeps_its_last_until_it_succeeds() {
        let mut errors = ErrorLog::default();
        let pool = || Subject::Pool("p".to_string());
        let config = || Subject::VolumeConfig("v".to_string());
        errors.report(pool(), refused("first"));
        errors.report(pool(), refused("first"));
        errors.report(config(), conflict());
        assert_eq!(
            errors.last,
            BTreeMap::from([(pool(), "first".to_string())]),
            "a conflict is not an error worth a line"
        );
        errors.report(pool(), refused("second"));
        errors.report(config(), refused("third"));
        assert_eq!(
            errors.last,
            BTreeMap::from([
                (pool(), "second".to_string()),
                (config(), "third".to_string())
            ])
        );
        errors.report(pool(), Ok(()));
        assert_eq!(
            errors.last,
            BTreeMap::from([(config(), "third".to_string())])
        );
    }
}
