//! One reconcile pass: read this node's pools and their replicas from the control plane, make
//! the pool directory match, and report what is there. Every pass starts from what it lists and
//! what is on disk, so a pass may stop anywhere (a crash, a lost connection) and the next one
//! finishes the work. A failure on one object is logged (once per distinct error), recorded in
//! its status where cStor would, and the pass goes on with the others.

use crate::changes::Wakeups;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tandem_client::{Client, ClientError, Recorder};
use tandem_core::{Geometry, Incarnation, ReplicaId};
use tandem_dataplane::replica::ReplicaHost;
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstanceCapacity, CStorPoolInstancePhase, CStorPoolInstanceStatus,
    CStorVolume, CStorVolumeReplica, CStorVolumeReplicaCapacity, CStorVolumeReplicaPhase,
    CStorVolumeReplicaStatus, EventType, Kind, Object, ObjectMeta, ReplicaStatus,
    ANNOTATION_INCARNATION, FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CSTOR_POOL_INSTANCE_NAME,
    LABEL_HOSTNAME,
};

use crate::cstor::{self, creation_order, short_quantity};
use crate::pool::{self, Claim, PoolRecord, REPLICAS_DIR, RO_THRESHOLD_DEFAULT};
use crate::report::{backoff, ErrorLog};
use crate::storage::{self, NewReplica, DATA_FILE, META_FILE};
use crate::AgentConfig;

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

/// The longest wait between passes while the control plane cannot be reached.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Passes run back to back at most this many times after changes before the normal interval.
const IMMEDIATE_PASSES_MAX: u32 = 3;

/// Every CVR `status.message` the agent writes with phase Error starts with one of these, so it
/// can tell its own Error (which it clears once the cause is gone) from one set by the data path
/// (which it leaves alone).
const CREATE_FAILED: &str = "cannot create replica storage";
const STORAGE_FAILED: &str = "replica storage ";

fn is_agent_message(message: &str) -> bool {
    message.starts_with(CREATE_FAILED) || message.starts_with(STORAGE_FAILED)
}

/// A failed API request.
struct ApiError {
    message: String,
    conflict: bool,
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        ApiError {
            conflict: error.is_conflict(),
            message: error.to_string(),
        }
    }
}

/// What the agent needs from a replica's `meta`.
#[derive(Clone, Copy, Debug)]
struct MetaSummary {
    replica: ReplicaId,
    incarnation: Incarnation,
    geometry: Geometry,
}

/// What a replica's `meta` said when last read, and the file's length and mtime then (it is
/// read again only when they change).
struct CachedMeta {
    stamp: (u64, Option<SystemTime>),
    outcome: Result<MetaSummary, String>,
}

/// The agent's memory between passes: only what avoids repeating work or log lines; all state
/// that matters is in the control plane and on disk.
pub struct Agent {
    config: AgentConfig,
    client: Client,
    recorder: Recorder,
    errors: ErrorLog,
    /// (object uid, reason) -> the message last recorded, so an event is recorded once.
    events: HashMap<(String, &'static str), String>,
    orphans: BTreeSet<String>,
    duplicates: BTreeSet<String>,
    metas: HashMap<String, CachedMeta>,
    used: Option<u64>,
    measured_at: Option<Instant>,
    waiting_logged: bool,
    /// Serves the replicas' data to targets.
    host: Arc<ReplicaHost>,
    /// Volume name -> the replica the host serves from `replicas/<volume>`.
    hosted: HashMap<String, ReplicaId>,
}

/// The objects a pass saw, so the agent can forget the others.
#[derive(Default)]
struct Seen {
    uids: HashSet<String>,
    names: HashSet<String>,
}

impl Seen {
    fn add(&mut self, metadata: &ObjectMeta) {
        self.uids.insert(metadata.uid.clone());
        self.names.insert(metadata.name.clone());
    }
}

/// What a pass knows about the pool when it gets to the replicas.
struct PoolView {
    name: String,
    replicas_dir: PathBuf,
    read_only: bool,
    used_percent: u128,
    limit: u32,
    storage: BTreeSet<String>,
    /// Volume name -> the CVR that owns the volume's directory in this pool (the oldest).
    owners: HashMap<String, String>,
    /// What each volume's target reports about its replicas, by volume and replica id.
    reported: HashMap<(String, ReplicaId), ReplicaStatus>,
}

/// What the agent makes of one replica that is not being deleted.
enum ReplicaState {
    /// Its storage is there and sound (`created`: just now).
    Ready {
        capacity: Option<CStorVolumeReplicaCapacity>,
        created: bool,
    },
    /// Phase Error with this message.
    Failed(String),
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        client: Client,
        recorder: Recorder,
        host: Arc<ReplicaHost>,
        hosted: HashMap<String, ReplicaId>,
    ) -> Agent {
        Agent {
            config,
            client,
            recorder,
            errors: ErrorLog::default(),
            events: HashMap::new(),
            orphans: BTreeSet::new(),
            duplicates: BTreeSet::new(),
            metas: HashMap::new(),
            used: None,
            measured_at: None,
            waiting_logged: false,
            host,
            hosted,
        }
    }

    /// Runs passes forever: every `reconcile_interval`, right after a pass that changed
    /// something or when `wakeups` signals a change, and with a bounded backoff while the
    /// control plane cannot be reached.
    pub async fn run(&mut self, mut wakeups: Wakeups) {
        let mut failures: u32 = 0;
        let mut immediate: u32 = 0;
        loop {
            wakeups.seen();
            match self.pass().await {
                Ok(changed) => {
                    self.errors.ok("reconcile");
                    failures = 0;
                    if changed && immediate < IMMEDIATE_PASSES_MAX {
                        immediate += 1;
                        continue;
                    }
                }
                Err(error) => {
                    self.errors.failed("reconcile", &error);
                    failures = failures.saturating_add(1);
                }
            }
            immediate = 0;
            wakeups
                .wait(backoff(self.config.reconcile_interval, failures, RETRY_MAX))
                .await;
        }
    }

    /// One API request, bounded by the request timeout.
    async fn api<T>(
        &self,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError {
                message: format!(
                    "the control plane did not answer within {}",
                    humantime::format_duration(self.config.request_timeout)
                ),
                conflict: false,
            }),
        }
    }

    /// One pass. Ok(true) if it changed something on disk (the next pass follows at once);
    /// Err when it could not read what it needs (the pass is retried with backoff).
    async fn pass(&mut self) -> Result<bool, String> {
        let namespace = self.config.namespace.clone();
        let selector = format!("{LABEL_HOSTNAME}={}", self.config.node);
        let mut pools: Vec<CStorPoolInstance> = self
            .api(
                self.client
                    .list_typed(Kind::CStorPoolInstance, Some(&namespace), Some(&selector)),
            )
            .await
            .map_err(|error| {
                format!(
                    "cannot list the pools of node {}: {}",
                    self.config.node, error.message
                )
            })?;
        if pools.is_empty() {
            if !self.waiting_logged {
                tracing::info!(
                    node = %self.config.node,
                    namespace = %namespace,
                    "waiting for a CStorPoolInstance labelled {selector}"
                );
                self.waiting_logged = true;
            }
            return Ok(false);
        }
        self.waiting_logged = false;
        pools.sort_by_key(|pool| creation_order(&pool.metadata));
        let served = pools.remove(0);
        let mut seen = Seen::default();
        seen.add(&served.metadata);
        for duplicate in pools {
            seen.add(&duplicate.metadata);
            self.mark_duplicate(duplicate, &served).await;
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
        let read_only = pool::read_only(used, self.config.pool_size, limit);

        let cvr_selector = format!("{LABEL_CSTOR_POOL_INSTANCE_NAME}={}", served.name());
        let mut replicas: Vec<CStorVolumeReplica> = self
            .api(self.client.list_typed(
                Kind::CStorVolumeReplica,
                Some(&namespace),
                Some(&cvr_selector),
            ))
            .await
            .map_err(|error| {
                format!(
                    "cannot list the replicas of pool {}: {}",
                    served.name(),
                    error.message
                )
            })?;
        replicas.sort_by_key(|replica| creation_order(&replica.metadata));
        let storage = self.list_storage(&replicas_dir).await?;

        let mut owners: HashMap<String, String> = HashMap::new();
        for replica in &replicas {
            if let Ok(volume) = volume_of(replica) {
                owners
                    .entry(volume)
                    .or_insert_with(|| replica.name().to_string());
            }
        }
        // The targets' view of each replica (a failure here only delays the phases).
        let reported = match self
            .api(
                self.client
                    .list_typed::<CStorVolume>(Kind::CStorVolume, Some(&namespace), None),
            )
            .await
        {
            Ok(volumes) => volumes
                .into_iter()
                .flat_map(|volume| {
                    let name = volume.name().to_string();
                    volume
                        .status
                        .replica_statuses
                        .into_iter()
                        .filter_map(move |status| {
                            let id = ReplicaId(status.replica_id.parse().ok()?);
                            Some(((name.clone(), id), status))
                        })
                })
                .collect(),
            Err(error) => {
                self.errors.failed("volume statuses", &error.message);
                HashMap::new()
            }
        };
        let view = PoolView {
            name: served.name().to_string(),
            replicas_dir: replicas_dir.clone(),
            read_only,
            used_percent: pool::used_percent(used, self.config.pool_size),
            limit,
            reported,
            storage,
            owners,
        };
        let mut healthy: u32 = 0;
        for replica in replicas {
            seen.add(&replica.metadata);
            if replica.status.phase == CStorVolumeReplicaPhase::Healthy {
                healthy = healthy.saturating_add(1);
            }
            changed |= self.reconcile_replica(replica, &view).await;
        }

        let storage = if changed {
            self.measure_pool(true).await?;
            self.list_storage(&replicas_dir).await?
        } else {
            view.storage
        };
        self.note_orphans(&replicas_dir, &storage, &view.owners);
        let vanished: Vec<String> = self
            .hosted
            .keys()
            .filter(|volume| !storage.contains(*volume))
            .cloned()
            .collect();
        for volume in vanished {
            tracing::warn!(
                path = %replicas_dir.join(&volume).display(),
                "served replica storage disappeared; no longer serving it"
            );
            self.unhost(&volume).await;
        }
        self.metas.retain(|volume, _| storage.contains(volume));
        let used = self.used.unwrap_or(0);
        let status = CStorPoolInstanceStatus {
            phase: CStorPoolInstancePhase::Online,
            capacity: CStorPoolInstanceCapacity {
                used: short_quantity(used),
                free: short_quantity(self.config.pool_size.saturating_sub(used)),
                total: short_quantity(self.config.pool_size),
                zfs: served.status.capacity.zfs.clone(),
            },
            read_only: pool::read_only(used, self.config.pool_size, limit),
            provisioned_replicas: u32::try_from(storage.len()).unwrap_or(u32::MAX),
            healthy_replicas: healthy,
            conditions: served.status.conditions.clone(),
        };
        self.write_pool_status(served, status).await;
        self.forget_except(&seen);
        Ok(changed)
    }

    /// Drops the memory of objects that are gone.
    fn forget_except(&mut self, seen: &Seen) {
        self.events.retain(|(uid, _), _| seen.uids.contains(uid));
        self.errors.retain(|subject| {
            let mut words = subject.split(' ');
            match (words.next(), words.next()) {
                (Some("cvr" | "cspi"), Some(name)) => seen.names.contains(name),
                _ => true,
            }
        });
        self.duplicates.retain(|name| seen.names.contains(name));
    }

    /// Another CSPI names this node: it is not served, and says so (cStor's ErrorDuplicate).
    async fn mark_duplicate(
        &mut self,
        mut duplicate: CStorPoolInstance,
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
        let status = CStorPoolInstanceStatus {
            phase: CStorPoolInstancePhase::ErrorDuplicate,
            conditions: duplicate.status.conditions.clone(),
            ..CStorPoolInstanceStatus::default()
        };
        if duplicate.status == status {
            return;
        }
        let subject = format!("cspi {}", duplicate.name());
        duplicate.status = status;
        match self
            .api(
                self.client
                    .update_status(&Object::CStorPoolInstance(duplicate)),
            )
            .await
        {
            Ok(_) => self.errors.ok(&subject),
            Err(error) if error.conflict => {}
            Err(error) => {
                self.errors.failed(&subject, &error.message);
            }
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
        let outcome =
            blocking(move || pool::claim(&dir, &record).map_err(|error| error.to_string()))
                .await
                .and_then(|result| result);
        match outcome {
            Ok(claim) => {
                self.errors.ok("pool directory");
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
            Err(message) => {
                self.errors.failed("pool directory", &message);
                let status = CStorPoolInstanceStatus {
                    phase: CStorPoolInstancePhase::PoolCreationFailed,
                    conditions: served.status.conditions.clone(),
                    ..CStorPoolInstanceStatus::default()
                };
                let object = Object::CStorPoolInstance(served.clone());
                self.record_once(
                    &object,
                    EventType::Warning,
                    REASON_POOL_CREATION_FAILED,
                    &message,
                )
                .await;
                self.write_pool_status(served.clone(), status).await;
                None
            }
        }
    }

    async fn clean_transient(&mut self, replicas_dir: &Path) -> bool {
        let dir = replicas_dir.to_path_buf();
        match blocking(move || storage::clean_transient_dirs(&dir).map_err(|e| e.to_string()))
            .await
            .and_then(|result| result)
        {
            Ok(removed) => {
                self.errors.ok("clean up");
                for path in &removed {
                    tracing::info!(path = %path.display(), "removed what an interrupted operation left");
                }
                !removed.is_empty()
            }
            Err(error) => {
                self.errors.failed(
                    "clean up",
                    &format!("cannot clean up {}: {error}", replicas_dir.display()),
                );
                false
            }
        }
    }

    /// Re-measures the pool's used space when asked to or when the last measurement is older
    /// than the measure interval. A failed measurement keeps the last one; with none, the pass
    /// fails.
    async fn measure_pool(&mut self, now: bool) -> Result<(), String> {
        let due = now
            || self.used.is_none()
            || self
                .measured_at
                .is_none_or(|at| at.elapsed() >= self.config.measure_interval);
        if !due {
            return Ok(());
        }
        let dir = self.config.pool_dir.clone();
        match blocking(move || pool::measure(&dir).map_err(|e| e.to_string()))
            .await
            .and_then(|result| result)
        {
            Ok(used) => {
                self.errors.ok("measure pool");
                self.used = Some(used);
                // The pool's size is enforced here: past it, its replicas refuse writes (the
                // targets eject them and the volumes go on with the others) until space is freed.
                self.host.set_pool_full(used >= self.config.pool_size);
                self.measured_at = Some(Instant::now());
                Ok(())
            }
            Err(error) => {
                let message = format!(
                    "cannot measure the pool directory {}: {error}",
                    self.config.pool_dir.display()
                );
                self.errors.failed("measure pool", &message);
                match self.used {
                    Some(_) => Ok(()),
                    None => Err(message),
                }
            }
        }
    }

    async fn list_storage(&mut self, replicas_dir: &Path) -> Result<BTreeSet<String>, String> {
        let dir = replicas_dir.to_path_buf();
        blocking(move || storage::list_replicas(&dir).map_err(|e| e.to_string()))
            .await
            .and_then(|result| result)
            .map(|volumes| volumes.into_iter().collect())
            .map_err(|error| format!("cannot list {}: {error}", replicas_dir.display()))
    }

    /// Storage with no CVR is kept (the store may have been lost; removing it could lose the
    /// last copy of a volume), logged once, and counted as provisioned.
    fn note_orphans(
        &mut self,
        replicas_dir: &Path,
        storage: &BTreeSet<String>,
        owners: &HashMap<String, String>,
    ) {
        let orphans: BTreeSet<String> = storage
            .iter()
            .filter(|volume| !owners.contains_key(*volume))
            .cloned()
            .collect();
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
        let subject = format!("cspi {}", served.name());
        served.status = status;
        let read_only = served.status.read_only;
        let object = Object::CStorPoolInstance(served);
        match self.api(self.client.update_status(&object)).await {
            Ok(_) => self.errors.ok(&subject),
            Err(error) if error.conflict => return,
            Err(error) => {
                self.errors.failed(&subject, &error.message);
                return;
            }
        }
        if read_only != was_read_only {
            let (event_type, message) = if read_only {
                tracing::warn!(pool = object.name(), "the pool is read-only");
                (EventType::Warning, MESSAGE_READ_ONLY_SET)
            } else {
                tracing::info!(pool = object.name(), "the pool is no longer read-only");
                (EventType::Normal, MESSAGE_READ_ONLY_UNSET)
            };
            self.record(&object, event_type, REASON_READ_ONLY, message)
                .await;
        }
    }

    async fn record(
        &mut self,
        about: &Object,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> bool {
        let subject = format!(
            "{} {} event {reason}",
            about.kind().short_name(),
            about.name()
        );
        match self
            .api(self.recorder.record(about, event_type, reason, message))
            .await
        {
            Ok(()) => {
                self.errors.ok(&subject);
                true
            }
            Err(error) => {
                self.errors.failed(&subject, &error.message);
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

    /// Brings one replica's storage and status in line. Returns true if storage was created or
    /// removed.
    async fn reconcile_replica(&mut self, mut cvr: CStorVolumeReplica, view: &PoolView) -> bool {
        let subject = format!("cvr {}", cvr.name());
        if !cvr.metadata.deletion_timestamp.is_empty() {
            return self.delete_replica(cvr, view, &subject).await;
        }
        if cvr.spec.replica_id.trim().is_empty() {
            // As cStor's pool-manager: generate the id and write it to the CVR before any
            // storage carries it.
            let id = cstor::replica_id_to_assign(&cvr);
            cvr.spec.replica_id = id.0.to_string();
            match self
                .api(self.client.update(&Object::CStorVolumeReplica(cvr)))
                .await
            {
                Ok(object) => match CStorVolumeReplica::try_from(object) {
                    Ok(updated) => {
                        tracing::info!(
                            cvr = updated.name(),
                            replica_id = id.0,
                            "set the replica id"
                        );
                        cvr = updated;
                    }
                    Err(error) => {
                        self.errors.failed(&subject, &error.to_string());
                        return false;
                    }
                },
                Err(error) => {
                    if !error.conflict {
                        self.errors.failed(&subject, &error.message);
                    }
                    return false;
                }
            }
        }
        let state = self.ensure_storage(&cvr, view).await;
        let created = matches!(state, ReplicaState::Ready { created: true, .. });
        if matches!(state, ReplicaState::Ready { .. }) {
            match self.record_incarnation(cvr).await {
                Some(updated) => cvr = updated,
                None => return created,
            }
        }
        let reported = match (volume_of(&cvr), cstor::replica_id(&cvr)) {
            (Ok(volume), Ok(Some(id))) => view.reported.get(&(volume, id)),
            _ => None,
        };
        let status = desired_status(&cvr.status, &state, reported);
        if let ReplicaState::Failed(message) = &state {
            self.errors.failed(&subject, message);
        } else {
            self.errors.ok(&subject);
        }
        self.write_replica_status(cvr, status, &subject).await;
        created
    }

    /// Writes the incarnation of the replica's storage (cStor's zvol GUID) into its CVR, where
    /// the volume's target finds it. `None` if the CVR could not be updated (next pass).
    async fn record_incarnation(&mut self, cvr: CStorVolumeReplica) -> Option<CStorVolumeReplica> {
        let Ok(Some(id)) = cstor::replica_id(&cvr) else {
            return Some(cvr);
        };
        let Some(hosted) = self.host.status(id) else {
            return Some(cvr);
        };
        let incarnation = hosted.incarnation.0.to_string();
        if cvr.metadata.annotation(ANNOTATION_INCARNATION) == Some(incarnation.as_str()) {
            return Some(cvr);
        }
        let subject = format!("cvr {}", cvr.name());
        let mut updated = cvr;
        updated
            .metadata
            .annotations
            .insert(ANNOTATION_INCARNATION.to_string(), incarnation);
        match self
            .api(self.client.update(&Object::CStorVolumeReplica(updated)))
            .await
        {
            Ok(object) => CStorVolumeReplica::try_from(object).ok(),
            Err(error) => {
                if !error.conflict {
                    self.errors.failed(&subject, &error.message);
                }
                None
            }
        }
    }

    async fn ensure_storage(&mut self, cvr: &CStorVolumeReplica, view: &PoolView) -> ReplicaState {
        let volume = match volume_of(cvr) {
            Ok(volume) => volume,
            Err(message) => return ReplicaState::Failed(message),
        };
        if let Some(owner) = view
            .owners
            .get(&volume)
            .filter(|owner| *owner != cvr.name())
        {
            return ReplicaState::Failed(format!(
                "{CREATE_FAILED}: volume {volume} already has a replica in pool {}: \
                 CStorVolumeReplica {owner}",
                view.name
            ));
        }
        let id = match replica_id_of(cvr) {
            Ok(Some(id)) => id,
            // Only before the assignment reconcile_replica writes first is read back.
            Ok(None) => cstor::replica_id_to_assign(cvr),
            Err(message) => return ReplicaState::Failed(message),
        };
        let dir = view.replicas_dir.join(&volume);
        if view.storage.contains(&volume) {
            let failure = match self.read_meta(&volume, &dir).await {
                Err(message) => format!("{STORAGE_FAILED}is unusable: {message}"),
                Ok(meta) if meta.replica != id => format!(
                    "{STORAGE_FAILED}{} belongs to replica id {} (incarnation {}), not to this \
                     CVR's replica id {}; it is left untouched",
                    dir.display(),
                    meta.replica.0,
                    meta.incarnation.0,
                    id.0
                ),
                Ok(meta) => {
                    self.check_geometry(cvr, &dir, meta.geometry);
                    if let Err(message) = self.ensure_hosted(&volume, &dir).await {
                        return ReplicaState::Failed(message);
                    }
                    return ReplicaState::Ready {
                        capacity: self.measure_replica(cvr, &dir).await,
                        created: false,
                    };
                }
            };
            // Storage that is not sound (or not this replica's) is not served.
            self.unhost(&volume).await;
            return ReplicaState::Failed(failure);
        }
        if view.read_only {
            return ReplicaState::Failed(format!(
                "{CREATE_FAILED}: pool {} is read-only (used {}% >= roThresholdLimit {}%)",
                view.name, view.used_percent, view.limit
            ));
        }
        let capacity = cvr.spec.capacity.bytes();
        let geometry = match cstor::geometry(capacity, cvr.spec.block_size) {
            Ok(geometry) => geometry,
            Err(message) => return ReplicaState::Failed(format!("{CREATE_FAILED}: {message}")),
        };
        if geometry.size_bytes != capacity {
            // Like LVM rounding to extents; the target computes the same geometry.
            tracing::info!(
                cvr = cvr.name(),
                capacity,
                size = geometry.size_bytes,
                block_size = geometry.block_size,
                "the capacity is not a whole number of blocks; the volume is rounded up"
            );
        }
        // cStor's rule: created with the volume (phase "" or Init) it is a consistent copy of
        // an empty history (quorum on); any other phase means a scale-up or a recreation, and
        // it must be rebuilt before it counts (quorum off).
        let consistent = matches!(
            cvr.status.phase,
            CStorVolumeReplicaPhase::Empty | CStorVolumeReplicaPhase::Init
        );
        let new = NewReplica {
            volume: volume.clone(),
            replica: id,
            incarnation: Incarnation(rand::random()),
            geometry,
            consistent,
        };
        let replicas_dir = view.replicas_dir.clone();
        let incarnation = new.incarnation;
        let created = blocking(move || {
            storage::create_replica(&replicas_dir, &new).map_err(|e| e.to_string())
        })
        .await
        .and_then(|result| result);
        match created {
            Ok(path) => {
                tracing::info!(
                    cvr = cvr.name(),
                    path = %path.display(),
                    replica_id = id.0,
                    incarnation = incarnation.0,
                    size = geometry.size_bytes,
                    region_size = geometry.region_size,
                    consistent,
                    "created replica storage"
                );
                if let Err(message) = self.ensure_hosted(&volume, &dir).await {
                    return ReplicaState::Failed(message);
                }
                ReplicaState::Ready {
                    capacity: self.measure_replica(cvr, &dir).await,
                    created: true,
                }
            }
            Err(error) => {
                ReplicaState::Failed(format!("{CREATE_FAILED} {}: {error}", dir.display()))
            }
        }
    }

    /// Serves the replica in `dir` from the host unless it already is.
    async fn ensure_hosted(&mut self, volume: &str, dir: &Path) -> Result<(), String> {
        if self.hosted.contains_key(volume) {
            return Ok(());
        }
        match self.host.add_replica(dir).await {
            Ok(replica) => {
                self.hosted.insert(volume.to_string(), replica);
                Ok(())
            }
            Err(error) => Err(format!(
                "{STORAGE_FAILED}{} cannot be served: {error}",
                dir.display()
            )),
        }
    }

    /// Stops serving the replica in `replicas/<volume>` (if the host serves it), waiting until
    /// the host has let go of its files.
    async fn unhost(&mut self, volume: &str) {
        if let Some(replica) = self.hosted.remove(volume) {
            self.host.remove_replica(replica).await;
        }
    }

    /// Warns (once) when existing storage has another geometry than the CVR's spec gives: the
    /// target, which computes its geometry with the same [`storage::geometry_for`], would be
    /// refused by this replica.
    fn check_geometry(&mut self, cvr: &CStorVolumeReplica, dir: &Path, stored: Geometry) {
        let subject = format!("cvr {} geometry", cvr.name());
        match cstor::geometry_of(cvr) {
            Ok(expected) if expected == stored => self.errors.ok(&subject),
            Ok(expected) => {
                self.errors.failed(
                    &subject,
                    &format!(
                        "{} holds a volume of {} bytes in {}-byte blocks ({}-byte regions) but the \
                         CVR's spec gives {} bytes in {}-byte blocks ({}-byte regions); a target \
                         with the spec's geometry will be refused",
                        dir.display(),
                        stored.size_bytes,
                        stored.block_size,
                        stored.region_size,
                        expected.size_bytes,
                        expected.block_size,
                        expected.region_size
                    ),
                );
            }
            Err(error) => {
                self.errors.failed(&subject, &error.to_string());
            }
        }
    }

    /// What `dir/meta` says, read again only if the file changed.
    async fn read_meta(&mut self, volume: &str, dir: &Path) -> Result<MetaSummary, String> {
        let path = dir.join(META_FILE);
        let stamp = std::fs::metadata(&path)
            .map(|metadata| (metadata.len(), metadata.modified().ok()))
            .ok();
        if let (Some(stamp), Some(cached)) = (stamp, self.metas.get(volume)) {
            if cached.stamp == stamp {
                return cached.outcome.clone();
            }
        }
        let outcome = blocking(move || {
            storage::read_meta(&path)
                .map(|meta| MetaSummary {
                    replica: meta.superblock.replica,
                    incarnation: meta.superblock.incarnation,
                    geometry: meta.superblock.geometry,
                })
                .map_err(|error| error.to_string())
        })
        .await
        .and_then(|result| result);
        if let Some(stamp) = stamp {
            self.metas.insert(
                volume.to_string(),
                CachedMeta {
                    stamp,
                    outcome: outcome.clone(),
                },
            );
        }
        outcome
    }

    /// ALLOCATED (the replica directory) and USED (its data file), in cStor's short form.
    async fn measure_replica(
        &mut self,
        cvr: &CStorVolumeReplica,
        dir: &Path,
    ) -> Option<CStorVolumeReplicaCapacity> {
        let owned = dir.to_path_buf();
        let measured = blocking(move || {
            let total = storage::allocated_bytes(&owned)?;
            let used = storage::allocated_bytes(&owned.join(DATA_FILE))?;
            Ok::<_, std::io::Error>((total, used))
        })
        .await
        .and_then(|result| result.map_err(|error| error.to_string()));
        let subject = format!("cvr {} capacity", cvr.name());
        match measured {
            Ok((total, used)) => {
                self.errors.ok(&subject);
                Some(CStorVolumeReplicaCapacity {
                    total: short_quantity(total),
                    used: short_quantity(used),
                })
            }
            Err(error) => {
                self.errors.failed(&subject, &error);
                None
            }
        }
    }

    async fn write_replica_status(
        &mut self,
        mut cvr: CStorVolumeReplica,
        mut status: CStorVolumeReplicaStatus,
        subject: &str,
    ) {
        if status == cvr.status {
            return;
        }
        let now = now_rfc3339();
        if status.phase != cvr.status.phase {
            status.last_transition_time = now.clone();
            tracing::info!(cvr = cvr.name(), from = %cvr.status.phase, to = %status.phase, "phase");
        }
        status.last_update_time = now;
        cvr.status = status;
        match self
            .api(self.client.update_status(&Object::CStorVolumeReplica(cvr)))
            .await
        {
            Ok(_) => {}
            Err(error) if error.conflict => {}
            Err(error) => {
                self.errors
                    .failed(&format!("{subject} status"), &error.message);
            }
        }
    }

    /// A CVR being deleted: remove its storage, then its finalizer. Returns true if storage was
    /// removed.
    async fn delete_replica(
        &mut self,
        mut cvr: CStorVolumeReplica,
        view: &PoolView,
        subject: &str,
    ) -> bool {
        let mut removed = false;
        let volume = volume_of(&cvr).ok();
        let owned = volume.as_ref().filter(|volume| {
            view.storage.contains(*volume)
                && view.owners.get(*volume).map(String::as_str) == Some(cvr.name())
        });
        if let Some(volume) = owned {
            let dir = view.replicas_dir.join(volume);
            // A CVR with no replica id never had storage of its own: the id is written before
            // storage is created.
            let (belongs_elsewhere, no_id) =
                match (self.read_meta(volume, &dir).await, cstor::replica_id(&cvr)) {
                    (Ok(meta), Ok(Some(id))) => (meta.replica != id, false),
                    (Ok(_), Ok(None)) => (true, true),
                    _ => (false, false),
                };
            // Whatever the storage holds, it is no longer served for a deleted CVR; and the host
            // must let go of the files before they are removed.
            self.unhost(volume).await;
            if no_id {
                tracing::warn!(
                    cvr = cvr.name(),
                    path = %dir.display(),
                    "the CVR records no replica id, so the storage under this volume's name is not its own; keeping it"
                );
            } else if belongs_elsewhere {
                tracing::warn!(
                    cvr = cvr.name(),
                    path = %dir.display(),
                    "the storage under this volume's name belongs to another replica id; keeping it"
                );
            } else {
                let replicas_dir = view.replicas_dir.clone();
                let doomed = volume.clone();
                let outcome = blocking(move || {
                    storage::remove_replica(&replicas_dir, &doomed).map_err(|e| e.to_string())
                })
                .await
                .and_then(|result| result);
                if let Err(error) = outcome {
                    let message =
                        format!("cannot remove replica storage {}: {error}", dir.display());
                    self.errors.failed(subject, &message);
                    let object = Object::CStorVolumeReplica(cvr.clone());
                    self.record_once(
                        &object,
                        EventType::Warning,
                        REASON_DELETION_FAILED,
                        &message,
                    )
                    .await;
                    let mut status = cvr.status.clone();
                    status.phase = CStorVolumeReplicaPhase::DeletionFailed;
                    status.message = message;
                    self.write_replica_status(cvr, status, subject).await;
                    return false;
                }
                tracing::info!(cvr = cvr.name(), path = %dir.display(), "removed replica storage");
                self.metas.remove(volume);
                removed = true;
            }
        }
        if !cvr.metadata.finalizers.iter().any(|f| f == FINALIZER) {
            return removed;
        }
        cvr.metadata.finalizers.retain(|f| f != FINALIZER);
        let name = cvr.name().to_string();
        match self
            .api(self.client.update(&Object::CStorVolumeReplica(cvr)))
            .await
        {
            Ok(_) => {
                self.errors.ok(subject);
                tracing::info!(cvr = %name, "removed the finalizer");
            }
            Err(error) if error.conflict => {}
            Err(error) => {
                self.errors.failed(subject, &error.message);
            }
        }
        removed
    }
}

/// The status a replica should have given what the agent found and what the volume's target
/// reports. With storage in place, the phase is the target's view of the replica (Offline when
/// the target does not report it); an Error the agent set is cleared when its cause is gone.
fn desired_status(
    current: &CStorVolumeReplicaStatus,
    state: &ReplicaState,
    reported: Option<&ReplicaStatus>,
) -> CStorVolumeReplicaStatus {
    let mut status = current.clone();
    match state {
        ReplicaState::Ready { capacity, created } => {
            let ours = matches!(
                current.phase,
                CStorVolumeReplicaPhase::Empty
                    | CStorVolumeReplicaPhase::Init
                    | CStorVolumeReplicaPhase::Recreate
            ) || (current.phase == CStorVolumeReplicaPhase::Error
                && is_agent_message(&current.message));
            if *created || ours {
                status.phase = CStorVolumeReplicaPhase::Offline;
                status.message.clear();
            }
            if let Some(reported) = reported {
                if let Some(phase) = reported.phase {
                    status.phase = phase;
                    status.message.clear();
                }
                status.rebuild = reported.rebuild.clone();
                status.last_resync = reported.last_resync.clone();
            }
            if let Some(capacity) = capacity {
                status.capacity = capacity.clone();
            }
        }
        ReplicaState::Failed(message) => {
            status.phase = CStorVolumeReplicaPhase::Error;
            status.message = message.clone();
        }
    }
    status
}

/// The volume a CVR is a replica of (see [`cstor::volume_of`]), or why its storage cannot be
/// created.
fn volume_of(cvr: &CStorVolumeReplica) -> Result<String, String> {
    cstor::volume_of(cvr).map_err(|error| format!("{CREATE_FAILED}: {error}"))
}

/// The replica id a CVR records (see [`cstor::replica_id`]), or why its storage cannot be
/// created.
fn replica_id_of(cvr: &CStorVolumeReplica) -> Result<Option<ReplicaId>, String> {
    cstor::replica_id(cvr).map_err(|error| format!("{CREATE_FAILED}: {error}"))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs file-system work off the async threads (so a slow disk never stalls the API calls).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("file-system task failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_objects::{LABEL_CSTOR_VOLUME_NAME, LABEL_PERSISTENT_VOLUME};

    fn cvr(
        labels: &[(&str, &str)],
        replica_id: &str,
        phase: CStorVolumeReplicaPhase,
    ) -> CStorVolumeReplica {
        let mut metadata = ObjectMeta::named("pvc-1-cspc-a-abcd");
        metadata.uid = "uid-1".to_string();
        for (key, value) in labels {
            metadata.labels.insert(key.to_string(), value.to_string());
        }
        let mut cvr = CStorVolumeReplica::new(metadata, Default::default());
        cvr.spec.replica_id = replica_id.to_string();
        cvr.status.phase = phase;
        cvr
    }

    #[test]
    fn volume_names_come_from_labels_and_are_checked() {
        use CStorVolumeReplicaPhase::Empty;
        assert_eq!(
            volume_of(&cvr(&[(LABEL_PERSISTENT_VOLUME, "pvc-1")], "", Empty)),
            Ok("pvc-1".into())
        );
        assert_eq!(
            volume_of(&cvr(&[(LABEL_CSTOR_VOLUME_NAME, "pvc-2")], "", Empty)),
            Ok("pvc-2".into())
        );
        let missing = volume_of(&cvr(&[], "", Empty)).unwrap_err();
        assert!(missing.starts_with(CREATE_FAILED), "{missing}");
        for bad in ["../x", "..", ".", "a/b", "Pvc"] {
            let error = volume_of(&cvr(&[(LABEL_PERSISTENT_VOLUME, bad)], "", Empty)).unwrap_err();
            assert!(error.contains("is not valid"), "{bad}: {error}");
        }
    }

    #[test]
    fn replica_ids_parse_and_an_empty_one_is_none() {
        use CStorVolumeReplicaPhase::Empty;
        assert_eq!(
            replica_id_of(&cvr(&[], "12345", Empty)),
            Ok(Some(ReplicaId(12345)))
        );
        assert_eq!(replica_id_of(&cvr(&[], "", Empty)), Ok(None));
        let malformed = replica_id_of(&cvr(&[], "12a", Empty)).unwrap_err();
        assert!(malformed.starts_with(CREATE_FAILED), "{malformed}");
        assert!(malformed.contains("not a decimal number"));
    }

    #[test]
    fn only_the_agents_phases_change() {
        use CStorVolumeReplicaPhase::*;
        let ready = ReplicaState::Ready {
            capacity: None,
            created: false,
        };
        let created = ReplicaState::Ready {
            capacity: None,
            created: true,
        };
        let status = |phase, message: &str| CStorVolumeReplicaStatus {
            phase,
            message: message.to_string(),
            ..Default::default()
        };
        for phase in [Empty, Init, Recreate] {
            assert_eq!(
                desired_status(&status(phase, ""), &ready, None).phase,
                Offline
            );
        }
        for phase in [
            Healthy,
            Degraded,
            Rebuilding,
            NewReplicaDegraded,
            ReconstructingNewReplica,
            Offline,
        ] {
            assert_eq!(
                desired_status(&status(phase, ""), &ready, None).phase,
                phase
            );
            assert_eq!(
                desired_status(&status(phase, ""), &created, None).phase,
                Offline
            );
        }
        let ours = status(Error, "cannot create replica storage: pool p is read-only");
        assert_eq!(desired_status(&ours, &ready, None), status(Offline, ""));
        let theirs = status(Error, "zfs stats returned nothing");
        assert_eq!(desired_status(&theirs, &ready, None), theirs);
        let failed = desired_status(
            &status(Healthy, ""),
            &ReplicaState::Failed("replica storage x".into()),
            None,
        );
        assert_eq!(failed, status(Error, "replica storage x"));
        // The target's view wins once storage is ready.
        let reported = ReplicaStatus {
            phase: Some(ReconstructingNewReplica),
            rebuild: Some(tandem_objects::RebuildProgress {
                bytes_done: 1,
                bytes_total: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let followed = desired_status(&status(Offline, ""), &ready, Some(&reported));
        assert_eq!(followed.phase, ReconstructingNewReplica);
        assert_eq!(followed.rebuild, reported.rebuild);
    }
}
