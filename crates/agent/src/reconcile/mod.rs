//! One reconcile pass: read this node's pools and their replicas from the control plane, make
//! the pool directory match, and report what is there. Every pass starts from what it lists and
//! what is on disk, so a pass may stop anywhere (a crash, a lost connection) and the next one
//! finishes the work. A failure on one object is logged (once per distinct error), recorded in
//! its status where cStor would, and the pass goes on with the others.
//!
//! What to do is decided in [`plan`] from what was observed; this file observes the pool (lists,
//! measures) and carries the pool's actions out, `replica.rs` does the same for each CVR.

mod plan;
mod replica;

use crate::changes::{Cache, Wakeups, FIRST_LIST_PATIENCE};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tandem_client::{Client, ClientError, Recorder};
use tandem_core::ReplicaId;
use tandem_dataplane::replica::ReplicaHost;
use tandem_objects::capacity::{CapacityPolicy, ANNOTATION_USAGE_WARNINGS};
use tandem_objects::{
    format_bytes_binary, CStorPoolCluster, CStorPoolInstance, CStorPoolInstanceStatus, CStorVolume,
    CStorVolumeReplica, CStorVolumeReplicaCapacity, CStorVolumeReplicaPhase, EventType, Kind,
    Object, ObjectMeta, FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CSTOR_POOL_INSTANCE_NAME,
    LABEL_CSTOR_VOLUME_NAME, LABEL_HOSTNAME,
};

use crate::cstor::{self, creation_order};
use crate::error::{Aspect, Error, ReplicaError, Subject};
use crate::metrics::{AgentMetrics, PoolSample};
use crate::pool::{self, Claim, PoolRecord, REPLICAS_DIR, RO_THRESHOLD_DEFAULT};
use crate::report::{backoff, ErrorLog};
use crate::storage;
use crate::AgentConfig;
use plan::{MetaSummary, PoolView};

/// The FROM of the agent's events.
pub const EVENT_COMPONENT: &str = "cstor-pool-manager";
/// The finalizer that holds a CVR until its storage is removed.
pub const FINALIZER: &str = FINALIZER_CSTOR_VOLUME_REPLICA;
pub const REASON_READ_ONLY: &str = "PoolReadOnlyThreshold";
pub const MESSAGE_READ_ONLY_SET: &str = "Pool storage limit reached to read only threshold limit. \
                                          Pool expansion is required to make its volume replicas RW";
pub const MESSAGE_READ_ONLY_UNSET: &str =
    "Pool roThresholdLimit or pool got expanded due to that pool readOnly mode is unset";
pub const REASON_POOL_CREATION_FAILED: &str = "PoolCreationFailed";
pub const REASON_DELETION_FAILED: &str = "DeletionFailed";
/// The event of a pool whose use passes a usage warning (Warning), or falls back (Normal).
pub const REASON_USAGE_HIGH: &str = "PoolUsageHigh";

/// The longest wait between passes while the control plane cannot be reached.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Without a write from its replicas, the pool is measured again this often anyway.
const MEASURE_REGARDLESS: Duration = Duration::from_secs(10);
/// Passes run back to back at most this many times after changes before the normal interval.
const IMMEDIATE_PASSES_MAX: u32 = 3;

/// What a replica's `meta` said when last read, and the file's length and mtime then (it is
/// read again only when they change).
/// The length and modification time of a replica's data and meta files.
type CapacityStamp = [Option<(u64, Option<SystemTime>)>; 2];

struct CachedMeta {
    stamp: (u64, Option<SystemTime>),
    outcome: Result<MetaSummary, ReplicaError>,
}

/// The agent's memory between passes: only what avoids repeating work or log lines; all state
/// that matters is in the control plane and on disk.
pub struct Agent {
    config: AgentConfig,
    client: Client,
    /// The pools, volumes and replicas, kept by watches.
    cache: Cache,
    recorder: Recorder,
    errors: ErrorLog,
    /// (object uid, reason) -> the message last recorded, so an event is recorded once.
    events: HashMap<(String, &'static str), String>,
    orphans: BTreeSet<String>,
    duplicates: BTreeSet<String>,
    metas: HashMap<String, CachedMeta>,
    /// By CVR name: the last look that found nothing to do.
    looked: HashMap<String, Looked>,
    /// The highest usage warning the pool's use had reached at the last pass.
    usage_warned: Option<u32>,
    /// Each replica directory's capacity as last measured, with the sizes and times of its
    /// files then.
    capacities: HashMap<PathBuf, (CapacityStamp, CStorVolumeReplicaCapacity)>,
    used: Option<u64>,
    /// When the pool was last measured, and the replica host's change count then.
    measured_at: Option<Instant>,
    changes_measured: u64,
    waiting_logged: bool,
    /// Serves the replicas' data to targets.
    host: Arc<ReplicaHost>,
    /// Volume name -> the replica the host serves from `replicas/<volume>`.
    hosted: HashMap<String, ReplicaId>,
    /// Where each pass's pool measurement is published for scrapes.
    metrics: Arc<AgentMetrics>,
}

/// A replica whose inputs have not changed since a look that found it as it should be is
/// looked at again only after this long (its files' sizes may have grown meanwhile): a pass
/// among a thousand replicas looks only at those a change concerns.
const LOOK_AGAIN: Duration = MEASURE_REGARDLESS;

/// Everything a look at one replica decides from, besides its files (see
/// [`Agent::inputs`]).
#[derive(Debug, Clone, PartialEq)]
struct ReplicaInputs {
    resource_version: String,
    /// Its target's view of it.
    reported: Option<tandem_objects::ReplicaStatus>,
    /// Whether its volume's storage is in the pool, which CVR owns it, and the pool's state.
    stored: bool,
    owner: Option<String>,
    read_only: bool,
    limit: u32,
    hosted: bool,
    served: Option<tandem_core::Incarnation>,
}

/// The last look at a replica that only looked (wrote nothing, found no problem).
struct Looked {
    inputs: ReplicaInputs,
    at: Instant,
}

/// What a look at one replica did.
pub(super) struct Outcome {
    /// Storage was created or removed.
    pub storage_changed: bool,
    /// It only looked: measured, compared, and found the replica as it should be.
    pub quiet: bool,
}

impl Outcome {
    /// It did something (or failed).
    pub fn acted(storage_changed: bool) -> Outcome {
        Outcome {
            storage_changed,
            quiet: false,
        }
    }
}

/// The objects a pass saw, so the agent can forget the others.
#[derive(Default)]
struct Seen {
    uids: HashSet<String>,
    names: HashSet<(Kind, String)>,
}

impl Seen {
    fn add(&mut self, kind: Kind, metadata: &ObjectMeta) {
        self.uids.insert(metadata.uid.clone());
        self.names.insert((kind, metadata.name.clone()));
    }
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        client: Client,
        cache: Cache,
        recorder: Recorder,
        host: Arc<ReplicaHost>,
        hosted: HashMap<String, ReplicaId>,
        metrics: Arc<AgentMetrics>,
    ) -> Agent {
        Agent {
            config,
            client,
            cache,
            recorder,
            errors: ErrorLog::default(),
            events: HashMap::new(),
            orphans: BTreeSet::new(),
            duplicates: BTreeSet::new(),
            metas: HashMap::new(),
            looked: HashMap::new(),
            usage_warned: None,
            capacities: HashMap::new(),
            used: None,
            measured_at: None,
            changes_measured: 0,
            waiting_logged: false,
            host,
            hosted,
            metrics,
        }
    }

    /// Runs passes forever: right after a pass that changed something, when `wakeups` signals
    /// a change, when the pool's used space changed (measured every `measure_interval`
    /// between passes), and otherwise every `reconcile_interval`; with a bounded backoff
    /// while the control plane cannot be reached.
    pub async fn run(&mut self, mut wakeups: Wakeups) {
        self.cache.synced_within(FIRST_LIST_PATIENCE).await;
        let mut failures: u32 = 0;
        let mut immediate: u32 = 0;
        loop {
            wakeups.seen();
            match self.pass(&wakeups).await {
                Ok(changed) => {
                    self.errors.ok(&Subject::Reconcile);
                    failures = 0;
                    if changed && immediate < IMMEDIATE_PASSES_MAX {
                        immediate += 1;
                        continue;
                    }
                }
                Err(error) => {
                    self.errors.failed(&Subject::Reconcile, &error);
                    failures = failures.saturating_add(1);
                }
            }
            immediate = 0;
            if failures > 0 {
                wakeups
                    .wait(backoff(self.config.reconcile_interval, failures, RETRY_MAX))
                    .await;
            } else {
                self.until_next_pass(&mut wakeups).await;
            }
        }
    }

    /// Waits until something calls for a pass: a change of the objects, a change of the pool's
    /// used space (measured every `measure_interval` meanwhile, which is all an idle node does
    /// between passes), or the end of `reconcile_interval`.
    async fn until_next_pass(&mut self, wakeups: &mut Wakeups) {
        let resync_at = Instant::now() + self.config.reconcile_interval;
        loop {
            let left = resync_at.saturating_duration_since(Instant::now());
            if left.is_zero() || wakeups.wait(left.min(self.config.measure_interval)).await {
                return;
            }
            let used = self.used;
            if self.measure_pool(false).await.is_err() || self.used != used {
                return;
            }
        }
    }

    /// One API request, bounded by the request timeout.
    async fn api<T>(
        &self,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Timeout(self.config.request_timeout)),
        }
    }

    /// Notes a failed update of an object: a conflict is not logged (the next pass reads the
    /// object again).
    fn update_failed(&mut self, subject: &Subject, error: &Error) {
        if !error.is_conflict() {
            self.errors.failed(subject, error);
        }
    }

    /// One pass. Ok(true) if it changed something on disk (the next pass follows at once);
    /// Err when it could not read what it needs (the pass is retried with backoff).
    async fn pass(&mut self, wakeups: &Wakeups) -> Result<bool, Error> {
        let namespace = self.config.namespace.clone();
        let selector = format!("{LABEL_HOSTNAME}={}", self.config.node);
        let pools: Vec<CStorPoolInstance> =
            Cache::read_labelled(&self.cache.pools, LABEL_HOSTNAME, &self.config.node).map_err(
                |error| Error::ListPools {
                    node: self.config.node.clone(),
                    source: Box::new(error.into()),
                },
            )?;
        let Some(choice) = plan::choose_pool(pools) else {
            if !self.waiting_logged {
                tracing::info!(
                    node = %self.config.node,
                    namespace = %namespace,
                    "waiting for a CStorPoolInstance labelled {selector}"
                );
                self.waiting_logged = true;
            }
            return Ok(false);
        };
        self.waiting_logged = false;
        let served = choice.served;
        let mut seen = Seen::default();
        seen.add(Kind::CStorPoolInstance, &served.metadata);
        for (duplicate, status) in choice.duplicates {
            seen.add(Kind::CStorPoolInstance, &duplicate.metadata);
            self.mark_duplicate(duplicate, status, &served).await;
        }

        let mut changed = false;
        let Some(pool_changed) = self.claim_pool(&served).await else {
            self.forget_except(&seen);
            return Ok(false);
        };
        changed |= pool_changed;

        let replicas_dir = self.config.pool_dir.join(REPLICAS_DIR);
        changed |= self.clean_transient(&replicas_dir).await;

        self.measure_pool(changed).await?;
        let used = self.used.unwrap_or(0);
        let limit = served
            .spec
            .pool_config
            .ro_threshold_limit
            .unwrap_or(RO_THRESHOLD_DEFAULT);

        let mut replicas: Vec<CStorVolumeReplica> = Cache::read_labelled(
            &self.cache.replicas,
            LABEL_CSTOR_POOL_INSTANCE_NAME,
            served.name(),
        )
        .map_err(|error| Error::ListReplicas {
            pool: served.name().to_string(),
            source: Box::new(error.into()),
        })?;
        replicas.sort_by_key(|replica| creation_order(&replica.metadata));
        let storage = self.list_storage(&replicas_dir).await?;
        let reported = self.reported(&replicas);
        let provisioned: u64 = (replicas.iter())
            .map(|replica| replica.spec.capacity.bytes())
            .sum();
        let view = PoolView {
            name: served.name().to_string(),
            replicas_dir: replicas_dir.clone(),
            read_only: pool::read_only(used, self.config.pool_size, limit),
            used_percent: pool::used_percent(used, self.config.pool_size),
            limit,
            owners: plan::owners(&replicas),
            reported,
            storage,
        };
        // The most recently written first: a new or changed replica is what a pass is usually
        // for, and among a thousand it would otherwise wait for all the others.
        replicas.sort_by_key(|replica| {
            std::cmp::Reverse(
                replica
                    .metadata
                    .resource_version
                    .parse::<u64>()
                    .unwrap_or(0),
            )
        });
        let mut healthy: u32 = 0;
        for replica in replicas {
            seen.add(Kind::CStorVolumeReplica, &replica.metadata);
            if replica.status.phase == CStorVolumeReplicaPhase::Healthy {
                healthy = healthy.saturating_add(1);
            }
            let name = replica.name().to_string();
            let inputs = self.inputs(&replica, &view);
            if let Some(looked) = self.looked.get(&name) {
                // Unchanged: looked at again only when the last look is old, and then only
                // while no change waits (a new replica would wait behind a thousand re-looks;
                // the next pass follows at once and does them).
                if inputs.as_ref() == Some(&looked.inputs)
                    && (looked.at.elapsed() < LOOK_AGAIN || wakeups.pending())
                {
                    continue;
                }
            }
            self.looked.remove(&name);
            let outcome = self.reconcile_replica(replica, &view).await;
            changed |= outcome.storage_changed;
            if let (true, Some(inputs)) = (outcome.quiet, inputs) {
                let at = Instant::now();
                self.looked.insert(name, Looked { inputs, at });
            }
        }

        let storage = if changed {
            self.measure_pool(true).await?;
            self.list_storage(&replicas_dir).await?
        } else {
            view.storage
        };
        self.note_orphans(&replicas_dir, plan::orphans(&storage, &view.owners));
        for volume in plan::vanished(self.hosted.keys(), &storage) {
            tracing::warn!(
                path = %replicas_dir.join(&volume).display(),
                "served replica storage disappeared; no longer serving it"
            );
            self.unhost(&volume).await;
        }
        self.metas.retain(|volume, _| storage.contains(volume));
        self.capacities.retain(|dir, _| {
            dir.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| storage.contains(name))
        });
        let used = self.used.unwrap_or(0);
        let status = plan::pool_status(
            &served,
            used,
            self.config.pool_size,
            limit,
            storage.len(),
            provisioned,
            healthy,
        );
        let warning = self.usage_warning(&served, used, limit).await;
        self.metrics.pool_measured(PoolSample {
            pool: served.name().to_string(),
            node: self.config.node.clone(),
            capacity_bytes: self.config.pool_size,
            used_bytes: used,
            read_only: status.read_only,
            replicas: storage.len() as u64,
            healthy_replicas: u64::from(healthy),
            provisioned_bytes: provisioned,
            usage_warning_percent: warning.map_or(0, u64::from),
        });
        self.write_pool_status(served, status).await;
        self.forget_except(&seen);
        Ok(changed)
    }

    /// The highest usage warning of the pool cluster that the pool's use has reached; an event
    /// (and a log line) when it rises to a new one, and when it falls back under them all.
    async fn usage_warning(
        &mut self,
        served: &CStorPoolInstance,
        used: u64,
        read_only_limit: u32,
    ) -> Option<u32> {
        let clusters = Cache::snapshot::<CStorPoolCluster>(&self.cache.clusters).ok();
        let policy = served
            .pool_cluster_name()
            .and_then(|name| {
                (clusters.iter().flat_map(|clusters| clusters.iter()))
                    .find(|cluster| cluster.name() == name)
            })
            .map(|cluster| CapacityPolicy::lenient(&cluster.metadata.annotations))
            .unwrap_or_default();
        let percent = pool::used_percent(used, self.config.pool_size);
        let reached = policy.warning_reached(percent);
        let before = std::mem::replace(&mut self.usage_warned, reached);
        if reached == before {
            return reached;
        }
        let size = self.config.pool_size;
        let amounts = format!(
            "{} of {}",
            format_bytes_binary(used),
            format_bytes_binary(size)
        );
        let object = Object::CStorPoolInstance(served.clone());
        match reached {
            Some(threshold) if before.is_none_or(|before| threshold > before) => {
                let message = format!(
                    "Pool storage use reached {percent}% ({amounts}), past its usage warning at \
                     {threshold}% ({ANNOTATION_USAGE_WARNINGS}); it turns read-only at \
                     {read_only_limit}%: expand the pool, move replicas off it (tandem volume \
                     migrate) or free space"
                );
                tracing::warn!(pool = served.name(), "{message}");
                self.record(&object, EventType::Warning, REASON_USAGE_HIGH, &message)
                    .await;
            }
            Some(_) => {}
            None => {
                let message = format!(
                    "Pool storage use is back under its usage warnings: {percent}% ({amounts})"
                );
                tracing::info!(pool = served.name(), "{message}");
                self.record(&object, EventType::Normal, REASON_USAGE_HIGH, &message)
                    .await;
            }
        }
        reached
    }

    /// The targets' view of each replica, by volume and replica id (a failure here only delays
    /// the phases).
    fn reported(
        &mut self,
        replicas: &[CStorVolumeReplica],
    ) -> HashMap<(String, ReplicaId), tandem_objects::ReplicaStatus> {
        let volumes: HashSet<&str> = replicas
            .iter()
            .filter_map(|replica| replica.metadata.labels.get(LABEL_CSTOR_VOLUME_NAME))
            .map(String::as_str)
            .collect();
        match Cache::snapshot::<CStorVolume>(&self.cache.volumes) {
            Ok(listed) => (listed.iter())
                .filter(|volume| volumes.contains(volume.name()))
                .flat_map(|volume| {
                    let name = volume.name();
                    (volume.status.replica_statuses.iter()).filter_map(move |status| {
                        let id = ReplicaId(status.replica_id.parse().ok()?);
                        Some(((name.to_string(), id), status.clone()))
                    })
                })
                .collect(),
            Err(error) => {
                self.errors.failed(&Subject::VolumeStatuses, &error);
                HashMap::new()
            }
        }
    }

    /// What a look at `cvr` decides from; `None` if it cannot be told (the look then always
    /// happens, and reports why).
    fn inputs(&self, cvr: &CStorVolumeReplica, view: &PoolView) -> Option<ReplicaInputs> {
        let volume = cstor::volume_of(cvr).ok()?;
        let id = cstor::replica_id(cvr).ok()??;
        let hosted = self.hosted.contains_key(&volume);
        Some(ReplicaInputs {
            resource_version: cvr.metadata.resource_version.clone(),
            reported: view.reported.get(&(volume.clone(), id)).cloned(),
            stored: view.storage.contains(&volume),
            owner: view.owners.get(&volume).cloned(),
            read_only: view.read_only,
            limit: view.limit,
            served: hosted.then(|| self.host.incarnation(id)).flatten(),
            hosted,
        })
    }

    /// Drops the memory of objects that are gone.
    fn forget_except(&mut self, seen: &Seen) {
        self.looked.retain(|name, _| {
            seen.names
                .contains(&(Kind::CStorVolumeReplica, name.clone()))
        });
        self.events.retain(|(uid, _), _| seen.uids.contains(uid));
        self.errors.retain(|subject| match subject {
            Subject::Object { kind, name, .. } => seen.names.contains(&(*kind, name.clone())),
            _ => true,
        });
        self.duplicates.retain(|name| {
            seen.names
                .contains(&(Kind::CStorPoolInstance, name.clone()))
        });
    }

    /// Another CSPI names this node: it is not served, and says so (cStor's ErrorDuplicate).
    async fn mark_duplicate(
        &mut self,
        mut duplicate: CStorPoolInstance,
        status: Option<CStorPoolInstanceStatus>,
        served: &CStorPoolInstance,
    ) {
        if self.duplicates.insert(duplicate.name().to_string()) {
            tracing::warn!(
                pool = duplicate.name(),
                served = served.name(),
                node = %self.config.node,
                "two pools name this node; serving the older one"
            );
        }
        let Some(status) = status else {
            return;
        };
        let subject = Subject::cspi(duplicate.name());
        duplicate.status = status;
        let object = Object::CStorPoolInstance(duplicate);
        match self.api(self.client.update_status(&object)).await {
            Ok(_) => self.errors.ok(&subject),
            Err(error) => self.update_failed(&subject, &error),
        }
    }

    /// Makes the pool directory this CSPI's. Some(true) if it was created just now; None if the
    /// directory cannot be this pool's (the CSPI is then PoolCreationFailed).
    async fn claim_pool(&mut self, served: &CStorPoolInstance) -> Option<bool> {
        let record = PoolRecord {
            cspi: served.name().to_string(),
            uid: served.metadata.uid.clone(),
            cspc: served.pool_cluster_name().unwrap_or_default().to_string(),
            capacity: self.config.pool_size,
        };
        let dir = self.config.pool_dir.clone();
        let outcome = blocking(move || pool::claim(&dir, &record).map_err(Error::Claim))
            .await
            .and_then(|result| result);
        match outcome {
            Ok(claim) => {
                self.errors.ok(&Subject::PoolDirectory);
                match claim {
                    Claim::Created => tracing::info!(
                        pool = served.name(),
                        dir = %self.config.pool_dir.display(),
                        "created the pool"
                    ),
                    Claim::Updated => tracing::info!(
                        pool = served.name(),
                        dir = %self.config.pool_dir.display(),
                        "updated the pool record"
                    ),
                    Claim::Unchanged => {}
                }
                Some(claim == Claim::Created)
            }
            Err(error) => {
                self.errors.failed(&Subject::PoolDirectory, &error);
                let object = Object::CStorPoolInstance(served.clone());
                self.record_once(
                    &object,
                    EventType::Warning,
                    REASON_POOL_CREATION_FAILED,
                    &error.to_string(),
                )
                .await;
                self.write_pool_status(served.clone(), plan::claim_failed_status(served))
                    .await;
                None
            }
        }
    }

    async fn clean_transient(&mut self, replicas_dir: &Path) -> bool {
        let dir = replicas_dir.to_path_buf();
        let outcome =
            blocking(move || storage::clean_transient_dirs(&dir).map_err(|e| e.to_string()))
                .await
                .map_err(|error| error.to_string())
                .and_then(|result| result);
        match outcome {
            Ok(removed) => {
                self.errors.ok(&Subject::CleanUp);
                for path in &removed {
                    tracing::info!(path = %path.display(), "removed what an interrupted operation left");
                }
                !removed.is_empty()
            }
            Err(message) => {
                let error = Error::CleanUp {
                    dir: replicas_dir.to_path_buf(),
                    message,
                };
                self.errors.failed(&Subject::CleanUp, &error);
                false
            }
        }
    }

    /// Re-measures the pool's used space when asked to, or when the last measurement is older
    /// than the measure interval and the hosted replicas wrote since, or older than
    /// `MEASURE_REGARDLESS` (something else may fill the pool's directory): a walk of a
    /// thousand replicas' files is most of what an idle node does. A failed measurement keeps
    /// the last one; with none, the pass fails.
    async fn measure_pool(&mut self, now: bool) -> Result<(), Error> {
        let changes = self.host.pool_changes();
        let regardless = MEASURE_REGARDLESS.max(self.config.measure_interval);
        let due = now
            || self.used.is_none()
            || self.measured_at.is_none_or(|at| {
                let age = at.elapsed();
                age >= regardless
                    || (age >= self.config.measure_interval && changes != self.changes_measured)
            });
        if !due {
            return Ok(());
        }
        let dir = self.config.pool_dir.clone();
        let outcome = blocking(move || pool::measure(&dir).map_err(|error| error.to_string()))
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result);
        match outcome {
            Ok(used) => {
                self.errors.ok(&Subject::MeasurePool);
                self.used = Some(used);
                // The pool's size is enforced here: past it, its replicas refuse writes (the
                // targets eject them and the volumes go on with the others) until space is freed.
                self.host.set_pool_full(used >= self.config.pool_size);
                self.measured_at = Some(Instant::now());
                self.changes_measured = changes;
                Ok(())
            }
            Err(message) => {
                let error = Error::MeasurePool {
                    dir: self.config.pool_dir.clone(),
                    message,
                };
                self.errors.failed(&Subject::MeasurePool, &error);
                match self.used {
                    Some(_) => Ok(()),
                    None => Err(error),
                }
            }
        }
    }

    async fn list_storage(&mut self, replicas_dir: &Path) -> Result<BTreeSet<String>, Error> {
        let dir = replicas_dir.to_path_buf();
        blocking(move || storage::list_replicas(&dir).map_err(|error| error.to_string()))
            .await
            .map_err(|error| error.to_string())
            .and_then(|result| result)
            .map(|volumes| volumes.into_iter().collect())
            .map_err(|message| Error::ListStorage {
                dir: replicas_dir.to_path_buf(),
                message,
            })
    }

    /// Storage with no CVR is kept (the store may have been lost; removing it could lose the
    /// last copy of a volume), logged once, and counted as provisioned.
    fn note_orphans(&mut self, replicas_dir: &Path, orphans: BTreeSet<String>) {
        for volume in orphans.difference(&self.orphans) {
            tracing::warn!(
                path = %replicas_dir.join(volume).display(),
                "replica storage without a CStorVolumeReplica; keeping it (remove it by hand if it is not needed)"
            );
        }
        self.orphans = orphans;
    }

    /// Writes the CSPI's status if it differs, and records the read-only transitions.
    async fn write_pool_status(
        &mut self,
        mut served: CStorPoolInstance,
        status: CStorPoolInstanceStatus,
    ) {
        if served.status == status {
            return;
        }
        let was_read_only = served.status.read_only;
        let subject = Subject::cspi(served.name());
        served.status = status;
        let read_only = served.status.read_only;
        let object = Object::CStorPoolInstance(served);
        match self.api(self.client.update_status(&object)).await {
            Ok(_) => self.errors.ok(&subject),
            Err(error) => {
                self.update_failed(&subject, &error);
                return;
            }
        }
        if let Some((event_type, message)) = plan::read_only_event(was_read_only, read_only) {
            if read_only {
                tracing::warn!(pool = object.name(), "the pool is read-only");
            } else {
                tracing::info!(pool = object.name(), "the pool is no longer read-only");
            }
            self.record(&object, event_type, REASON_READ_ONLY, message)
                .await;
        }
    }

    async fn record(
        &mut self,
        about: &Object,
        event_type: EventType,
        reason: &'static str,
        message: &str,
    ) -> bool {
        let subject = Subject::object(about.kind(), about.name(), Aspect::Event(reason));
        match self
            .api(self.recorder.record(about, event_type, reason, message))
            .await
        {
            Ok(()) => {
                self.errors.ok(&subject);
                true
            }
            Err(error) => {
                self.errors.failed(&subject, &error);
                false
            }
        }
    }

    /// Records an event unless the same one was already recorded about this object.
    async fn record_once(
        &mut self,
        about: &Object,
        event_type: EventType,
        reason: &'static str,
        message: &str,
    ) {
        let key = (about.metadata().uid.clone(), reason);
        if self.events.get(&key).map(String::as_str) == Some(message) {
            return;
        }
        if self.record(about, event_type, reason, message).await {
            self.events.insert(key, message.to_string());
        }
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs file-system work off the async threads (so a slow disk never stalls the API calls).
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::Task(error.to_string()))
}
