//! The targets this node hosts: for every CStorVolume whose `tandem.io/target-node` names this
//! node, a [`tandem_dataplane::target`] task serving the volume as an NBD export, kept in line
//! with the objects:
//!
//! * **Start.** A target takes the volume's next generation with a resource-version-checked
//!   update of the CV (two agents can never both win one), and starts from the membership the CV
//!   records (`spec.replicaDetails.knownReplicas`: replica id -> incarnation). A new volume has
//!   none yet: its first target records the replicas created with it, once every one of them
//!   has storage (their CVRs carry `tandem.io/incarnation`).
//! * **Membership.** A CVR whose pool is in the CVC's `spec.policy.replicaPoolInfo` but is not a
//!   member is added (it is rebuilt and promoted by the core); a member whose pool left that list
//!   is removed (after the others drained it). One change at a time.
//! * **Persistence.** The core's membership goes into the CV, refused once a newer generation
//!   exists (fencing); the CV's status then says what the live target trusts, which is what the
//!   control plane waits for before it deletes a removed replica.
//! * **Status.** The CV's phase and per-replica status (mode, CVR-style phase, rebuild progress,
//!   last resync) follow the target; the replicas' agents copy each replica's part into its CVR.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_client::{Client, ClientError};
use tandem_core::{
    Command, Fenced, Generation, Incarnation, Member, Membership, ReplicaId, ReplicaIo,
    ReplicaMode, TargetOptions, VolumeStatus,
};
use tandem_dataplane::target::{self, MembershipStore, TargetConfig, TargetHandle, TargetStatus};
use tandem_nbd::Server;
use tandem_objects::{
    CStorVolume, CStorVolumeConfig, CStorVolumePhase, CStorVolumeReplica, CStorVolumeReplicaPhase,
    CStorVolumeReplicaStatus, CStorVolumeStatus, Kind, Object, RebuildProgress, ReplicaStatus,
    ResyncRecord, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME, ANNOTATION_TARGET_GENERATION,
    ANNOTATION_TARGET_NODE, LABEL_PERSISTENT_VOLUME,
};

use crate::changes::Changes;
use crate::cstor::{self, generation_of, known_replicas, membership_change, replica_of};
use crate::error::{Error, Subject};
use crate::report::ErrorLog;

/// How often the targets are brought in line and their status published.
const PASS_INTERVAL: Duration = Duration::from_millis(500);

/// Rebuild progress alone is written at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Changes of the per-replica I/O counters alone (in-flight requests, checkpointed sequence,
/// up time) are written at most this often.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(10);

/// The NBD server every target of this node is an export of.
pub type NbdServer = Server<TargetHandle>;

struct Running {
    handle: TargetHandle,
    generation: Generation,
    /// The membership command in flight, if any (one at a time).
    command: Option<tokio::task::JoinHandle<()>>,
    /// When the running resync was first seen, and its bytes then (for the rate).
    resync_seen: Option<(ReplicaId, Instant, u64)>,
    /// When rebuild progress was last written (or could have been).
    progress_written: Option<Instant>,
    /// When the CV's status, with its I/O counters, was last written.
    counters_written: Option<Instant>,
}

pub struct Targets {
    client: Client,
    namespace: String,
    node: String,
    nbd: Arc<NbdServer>,
    running: BTreeMap<String, Running>,
    errors: ErrorLog,
    /// Signalled when a target started here changes state (set by [`Targets::run`]).
    changes: Option<Changes>,
}

/// What a pass reads once.
struct View {
    volumes: Vec<CStorVolume>,
    configs: Vec<CStorVolumeConfig>,
    replicas: Vec<CStorVolumeReplica>,
    /// Node name -> where its replica host listens.
    addresses: BTreeMap<String, SocketAddr>,
}

impl View {
    fn replicas_of<'a>(&'a self, volume: &'a str) -> impl Iterator<Item = &'a CStorVolumeReplica> {
        self.replicas
            .iter()
            .filter(move |cvr| cvr.metadata.label(LABEL_PERSISTENT_VOLUME) == Some(volume))
    }

    fn config(&self, volume: &str) -> Option<&CStorVolumeConfig> {
        self.configs.iter().find(|config| config.name() == volume)
    }

    fn address_of(&self, cvr: &CStorVolumeReplica) -> Option<SocketAddr> {
        let node = cvr
            .metadata
            .annotation(ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME)?;
        self.addresses.get(node).copied()
    }
}

/// The replica id a CVR records; `None` while it has none (or one that is not a number).
fn replica_id(cvr: &CStorVolumeReplica) -> Option<ReplicaId> {
    cstor::replica_id(cvr).ok().flatten()
}

impl Targets {
    pub fn new(client: Client, namespace: String, node: String, nbd: Arc<NbdServer>) -> Targets {
        Targets {
            client,
            namespace,
            node,
            nbd,
            running: BTreeMap::new(),
            errors: ErrorLog::default(),
            changes: None,
        }
    }

    /// Runs passes until the task is dropped; stops every target when it is. A pass runs every
    /// `PASS_INTERVAL`, and at once when `changes` signals (an object changed, or one of this
    /// node's targets changed state: every target started here signals it).
    pub async fn run(mut self, changes: Changes) {
        let mut wakeups = changes.subscribe();
        self.changes = Some(changes);
        loop {
            wakeups.seen();
            if let Err(error) = self.pass().await {
                self.errors.failed(&Subject::Targets, &error);
            } else {
                self.errors.ok(&Subject::Targets);
            }
            wakeups.wait(PASS_INTERVAL).await;
        }
    }

    async fn read(&self) -> Result<View, ClientError> {
        let namespace = Some(self.namespace.as_str());
        let addresses = self
            .client
            .nodes()
            .await?
            .into_iter()
            .filter_map(|node| Some((node.node, node.address.parse().ok()?)))
            .collect();
        Ok(View {
            volumes: self
                .client
                .list_typed(Kind::CStorVolume, namespace, None)
                .await?,
            configs: self
                .client
                .list_typed(Kind::CStorVolumeConfig, namespace, None)
                .await?,
            replicas: self
                .client
                .list_typed(Kind::CStorVolumeReplica, namespace, None)
                .await?,
            addresses,
        })
    }

    async fn pass(&mut self) -> Result<(), Error> {
        let view = self.read().await?;
        let mine: BTreeSet<String> = view
            .volumes
            .iter()
            .filter(|volume| {
                volume.metadata.annotation(ANNOTATION_TARGET_NODE) == Some(self.node.as_str())
            })
            .map(|volume| volume.name().to_string())
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|volume| !mine.contains(*volume))
            .cloned()
            .collect();
        for volume in gone {
            self.stop(&volume).await;
        }
        for volume in view
            .volumes
            .iter()
            .filter(|volume| mine.contains(volume.name()))
        {
            let subject = Subject::Target(volume.name().to_string());
            let result = if self.running.contains_key(volume.name()) {
                self.keep(volume, &view).await
            } else {
                self.start(volume, &view).await
            };
            match result {
                Ok(()) => self.errors.ok(&subject),
                Err(error) => {
                    self.errors.failed(&subject, &error);
                }
            }
        }
        Ok(())
    }

    async fn stop(&mut self, volume: &str) {
        if let Some(running) = self.running.remove(volume) {
            tracing::info!(volume, "stopping target: the volume moved or is gone");
            self.nbd.remove_export(volume);
            if let Some(command) = running.command {
                command.abort();
            }
            running.handle.stop().await;
        }
    }

    async fn start(&mut self, volume: &CStorVolume, view: &View) -> Result<(), Error> {
        let name = volume.name().to_string();
        let replicas: Vec<&CStorVolumeReplica> = view.replicas_of(&name).collect();
        let block_size = replicas.iter().find_map(|cvr| cvr.spec.block_size);
        let geometry = cstor::geometry(volume.spec.capacity.bytes(), block_size)?;
        let mut updated = volume.clone();
        let membership = if volume.spec.replica_details.known_replicas.is_empty() {
            // A new volume: its first target records the replicas it was created with.
            let initial = initial_members(volume, &replicas)?;
            let membership = Membership::initial(&initial);
            updated.spec.replica_details.known_replicas = known_replicas(&membership);
            membership
        } else {
            cstor::recorded_membership(volume)?
        };
        let generation = Generation(generation_of(volume) + 1);
        updated.metadata.annotations.insert(
            ANNOTATION_TARGET_GENERATION.to_string(),
            generation.0.to_string(),
        );
        updated.spec.replication_factor = membership.replication_factor() as u32;
        updated.spec.consistency_factor = membership.consistency_factor() as u32;
        // Taking the generation: a stale read loses with a conflict and the next pass retries.
        self.client
            .update(&Object::CStorVolume(updated))
            .await
            .map_err(|error| Error::TakeGeneration {
                generation: generation.0,
                source: Box::new(error.into()),
            })?;
        let addresses = membership
            .members
            .iter()
            .filter_map(|member| {
                let cvr = replicas
                    .iter()
                    .find(|cvr| replica_id(cvr) == Some(member.replica))?;
                Some((member.replica, view.address_of(cvr)?))
            })
            .collect();
        let store = Arc::new(CvMembership {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            volume: name.clone(),
        });
        let handle = target::start(
            TargetConfig {
                volume: name.clone(),
                generation,
                geometry,
                membership,
                addresses,
                options: TargetOptions::default(),
            },
            store,
        );
        if let Some(changes) = &self.changes {
            tokio::spawn(signal_state_changes(handle.watch_status(), changes.clone()));
        }
        self.nbd.remove_export(&name);
        self.nbd
            .add_export(name.clone(), Arc::new(handle.clone()))
            .map_err(|error| Error::Export {
                volume: name.clone(),
                message: error.to_string(),
            })?;
        tracing::info!(volume = %name, generation = generation.0, "target started");
        self.running.insert(
            name,
            Running {
                handle,
                generation,
                command: None,
                resync_seen: None,
                progress_written: None,
                counters_written: None,
            },
        );
        Ok(())
    }

    async fn keep(&mut self, volume: &CStorVolume, view: &View) -> Result<(), Error> {
        let name = volume.name().to_string();
        if generation_of(volume) > self.running[&name].generation.0 {
            // Someone started a newer target (this agent restarted its own, or another node
            // took over): this one is fenced anyway; stop it and start over next pass.
            self.stop(&name).await;
            return Ok(());
        }
        let replicas: Vec<&CStorVolumeReplica> = view.replicas_of(&name).collect();
        let running = self.running.get_mut(&name).expect("checked above");
        let status = running.handle.status();
        for member in &status.membership.members {
            let cvr = replicas
                .iter()
                .find(|cvr| replica_id(cvr) == Some(member.replica));
            let address = cvr.and_then(|cvr| view.address_of(cvr));
            running.handle.set_address(member.replica, address).await;
        }
        if running
            .command
            .as_ref()
            .is_none_or(|command| command.is_finished())
        {
            running.command = None;
            if let Some(command) = membership_change(&status, view.config(&name), &replicas) {
                if let Command::AddReplica(replica) = command {
                    let cvr = replicas.iter().find(|cvr| replica_id(cvr) == Some(replica));
                    let address = cvr.and_then(|cvr| view.address_of(cvr));
                    running.handle.set_address(replica, address).await;
                }
                let (handle, volume_name) = (running.handle.clone(), name.clone());
                running.command = Some(tokio::spawn(async move {
                    match handle.command(command).await {
                        Ok(()) => {
                            tracing::info!(volume = %volume_name, ?command, "membership change done")
                        }
                        Err(error) => {
                            tracing::warn!(volume = %volume_name, ?command, %error, "membership change refused")
                        }
                    }
                }));
            }
        }
        self.publish(volume, &name, &replicas).await
    }

    /// Writes the CV's status from the target's, and each replica's phase into its CVR, where
    /// they changed. The replicas' agents copy the same into the CVRs too; this keeps a CVR true
    /// while its own agent is down (it shows Offline, not its last phase).
    async fn publish(
        &mut self,
        volume: &CStorVolume,
        name: &str,
        replicas: &[&CStorVolumeReplica],
    ) -> Result<(), Error> {
        let running = self.running.get_mut(name).expect("a running target");
        let status = running.handle.status();
        let io = running.handle.replica_io().await;
        let rate = resync_rate(&mut running.resync_seen, &status);
        // A change of phase or mode is written at once; rebuild progress alone at most every
        // PROGRESS_INTERVAL (each write wakes every agent's loops).
        let progress_due = running
            .progress_written
            .is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
        if progress_due {
            running.progress_written = Some(Instant::now());
        }
        let counters_due = running
            .counters_written
            .is_none_or(|at| at.elapsed() >= COUNTERS_INTERVAL);
        let mut updated = volume.clone();
        updated.status.phase = if status.fenced {
            CStorVolumePhase::Offline
        } else {
            match status.status {
                VolumeStatus::Init => CStorVolumePhase::Init,
                VolumeStatus::Healthy => CStorVolumePhase::Healthy,
                VolumeStatus::Degraded => CStorVolumePhase::Degraded,
                VolumeStatus::Offline => CStorVolumePhase::Offline,
            }
        };
        updated.status.replica_statuses = status
            .membership
            .members
            .iter()
            .map(|member| replica_status(member, &status, rate, io.get(&member.replica)))
            .collect();
        updated.status.replica_details.known_replicas = known_replicas(&status.membership);
        updated.status.capacity = volume.spec.capacity;
        updated.status.message = if status.fenced {
            "a newer target took over".to_string()
        } else {
            String::new()
        };
        for reported in &updated.status.replica_statuses {
            let Some(cvr) = reported
                .replica_id
                .parse()
                .ok()
                .and_then(|id| replica_of(replicas, ReplicaId(id)))
            else {
                continue;
            };
            let mut replica = (*cvr).clone();
            if let Some(phase) = reported.phase {
                replica.status.phase = phase;
            }
            replica.status.rebuild = reported.rebuild.clone();
            replica.status.last_resync = reported.last_resync.clone();
            let progress_only = replica.status.rebuild != cvr.status.rebuild
                && CStorVolumeReplicaStatus {
                    rebuild: cvr.status.rebuild.clone(),
                    ..replica.status.clone()
                } == cvr.status;
            if progress_only && !progress_due {
                continue;
            }
            if replica.status != cvr.status {
                replica.status.last_update_time =
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                if replica.status.phase != cvr.status.phase {
                    replica.status.last_transition_time = replica.status.last_update_time.clone();
                }
                // A conflict means the replica's agent wrote meanwhile; the next pass retries.
                let _ = self
                    .client
                    .update_status(&Object::CStorVolumeReplica(replica))
                    .await;
            }
        }
        // Rebuild progress and I/O counters change all the time: alone, they are written at
        // most every PROGRESS_INTERVAL and COUNTERS_INTERVAL.
        let without = |status: &CStorVolumeStatus, progress: bool| {
            let mut status = status.clone();
            for replica in &mut status.replica_statuses {
                replica.checkpointed_io_seq.clear();
                replica.inflight_read.clear();
                replica.inflight_write.clear();
                replica.inflight_sync.clear();
                replica.up_time = 0;
                if progress {
                    replica.rebuild = None;
                }
            }
            status
        };
        let changed = without(&updated.status, true) != without(&volume.status, true);
        let progressed = without(&updated.status, false) != without(&volume.status, false);
        let counted = updated.status != volume.status;
        if !(changed || (progressed && progress_due) || (counted && counters_due)) {
            return Ok(());
        }
        self.running
            .get_mut(name)
            .expect("a running target")
            .counters_written = Some(Instant::now());
        updated.status.last_update_time =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        if updated.status.phase != volume.status.phase {
            updated.status.last_transition_time = updated.status.last_update_time.clone();
        }
        match self
            .client
            .update_status(&Object::CStorVolume(updated))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.is_conflict() => Ok(()),
            Err(error) => Err(Error::WriteVolumeStatus {
                volume: name.to_string(),
                source: Box::new(error.into()),
            }),
        }
    }
}

/// The replicas a new volume was created with, with their incarnations, once all have storage.
fn initial_members(
    volume: &CStorVolume,
    replicas: &[&CStorVolumeReplica],
) -> Result<Vec<(ReplicaId, Incarnation)>, Error> {
    let wanted = volume.spec.desired_replication_factor as usize;
    let mut members = Vec::new();
    for cvr in replicas {
        let (Some(id), Some(incarnation)) = (replica_id(cvr), cstor::incarnation_of(cvr)) else {
            continue;
        };
        members.push((id, incarnation));
    }
    if members.len() < wanted || wanted == 0 {
        return Err(Error::WaitingForStorage {
            ready: members.len(),
            wanted,
        });
    }
    members.truncate(wanted);
    Ok(members)
}

/// Signals `changes` whenever a target's state changes (the volume's phase, a replica's mode,
/// the membership, a resync finishing), not on mere rebuild progress. Ends with the target.
async fn signal_state_changes(
    mut status: tokio::sync::watch::Receiver<TargetStatus>,
    changes: Changes,
) {
    let state = |status: &TargetStatus| {
        (
            status.status,
            status.modes.clone(),
            status.membership.clone(),
            status.fenced,
            status.resyncs_finished.last().cloned(),
        )
    };
    let mut last = state(&status.borrow_and_update());
    while status.changed().await.is_ok() {
        let now = state(&status.borrow_and_update());
        if now != last {
            last = now;
            changes.signal();
        }
    }
}

/// Bytes per second of the running resync, measured since it was first seen.
fn resync_rate(seen: &mut Option<(ReplicaId, Instant, u64)>, status: &TargetStatus) -> u64 {
    let Some(progress) = status.resync else {
        *seen = None;
        return 0;
    };
    match seen {
        Some((replica, since, start)) if *replica == progress.replica => {
            let seconds = since.elapsed().as_secs_f64();
            if seconds < 0.5 {
                0
            } else {
                (progress.bytes_done.saturating_sub(*start) as f64 / seconds) as u64
            }
        }
        _ => {
            *seen = Some((progress.replica, Instant::now(), progress.bytes_done));
            0
        }
    }
}

fn replica_status(
    member: &Member,
    status: &TargetStatus,
    rate: u64,
    io: Option<&ReplicaIo>,
) -> ReplicaStatus {
    let mode = status
        .modes
        .get(&member.replica)
        .copied()
        .unwrap_or(ReplicaMode::Offline);
    let phase = match mode {
        ReplicaMode::Offline => CStorVolumeReplicaPhase::Offline,
        ReplicaMode::Degraded => CStorVolumeReplicaPhase::Degraded,
        ReplicaMode::NewReplicaDegraded => CStorVolumeReplicaPhase::NewReplicaDegraded,
        ReplicaMode::Rebuilding => CStorVolumeReplicaPhase::Rebuilding,
        ReplicaMode::ReconstructingNewReplica => CStorVolumeReplicaPhase::ReconstructingNewReplica,
        ReplicaMode::Healthy => CStorVolumeReplicaPhase::Healthy,
        ReplicaMode::Error => CStorVolumeReplicaPhase::Error,
    };
    let rebuild = status
        .resync
        .filter(|progress| progress.replica == member.replica)
        .map(|progress| {
            let left = progress.bytes_total.saturating_sub(progress.bytes_done);
            RebuildProgress {
                bytes_done: progress.bytes_done,
                bytes_total: progress.bytes_total,
                bytes_per_second: rate,
                eta_seconds: (rate > 0).then(|| left.div_ceil(rate)),
            }
        });
    let last_resync = status
        .resyncs_finished
        .iter()
        .rev()
        .find(|resync| resync.replica == member.replica)
        .map(|resync| ResyncRecord {
            source: resync.source.0.to_string(),
            full: resync.full,
            bytes: resync.bytes,
        });
    ReplicaStatus {
        replica_id: member.replica.0.to_string(),
        mode: if mode == ReplicaMode::Healthy {
            tandem_objects::ReplicaMode::Healthy
        } else {
            tandem_objects::ReplicaMode::Degraded
        },
        quorum: if member.trusted { "1" } else { "0" }.to_string(),
        checkpointed_io_seq: io.map_or(String::new(), |io| io.checkpointed.0.to_string()),
        inflight_read: io.map_or(String::new(), |io| io.inflight_reads.to_string()),
        inflight_write: io.map_or(String::new(), |io| io.inflight_writes.to_string()),
        inflight_sync: io.map_or(String::new(), |io| io.inflight_syncs.to_string()),
        up_time: io.map_or(0, |io| {
            (u128::from(io.connected_ticks) * target::TICK.as_millis() / 1000) as u64
        }),
        phase: Some(phase),
        rebuild,
        last_resync,
    }
}

/// The target's membership store: the CV, fenced by the generation annotation.
struct CvMembership {
    client: Client,
    namespace: String,
    volume: String,
}

/// How long a membership write keeps retrying while the control plane cannot be reached; the
/// target keeps serving I/O meanwhile, only membership changes wait.
const PERSIST_RETRY: Duration = Duration::from_millis(500);

impl MembershipStore for CvMembership {
    fn persist(
        &self,
        generation: Generation,
        membership: Membership,
    ) -> Pin<Box<dyn Future<Output = Result<(), Fenced>> + Send + '_>> {
        Box::pin(async move {
            loop {
                match self.try_persist(generation, &membership).await {
                    Ok(Some(result)) => return result,
                    // Someone wrote in between: read again (and see whether we were fenced).
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(volume = %self.volume, %error, "cannot persist the membership yet; retrying");
                        tokio::time::sleep(PERSIST_RETRY).await;
                    }
                }
            }
        })
    }
}

impl CvMembership {
    async fn try_persist(
        &self,
        generation: Generation,
        membership: &Membership,
    ) -> Result<Option<Result<(), Fenced>>, ClientError> {
        let object = self
            .client
            .get(Kind::CStorVolume, &self.namespace, &self.volume)
            .await?;
        let Ok(mut volume) = CStorVolume::try_from(object) else {
            return Ok(Some(Err(Fenced)));
        };
        if generation_of(&volume) != generation.0 {
            return Ok(Some(Err(Fenced)));
        }
        volume.spec.replica_details.known_replicas = known_replicas(membership);
        volume.spec.replication_factor = membership.replication_factor() as u32;
        volume.spec.consistency_factor = membership.consistency_factor() as u32;
        match self.client.update(&Object::CStorVolume(volume)).await {
            Ok(_) => {
                tracing::info!(volume = %self.volume, generation = generation.0, "membership persisted");
                Ok(Some(Ok(())))
            }
            Err(error) if error.is_conflict() => Ok(None),
            Err(error) => Err(error),
        }
    }
}
