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
//! * **Exports.** A running target is an export of two NBD servers: the node's own-targets
//!   server (`--target-address`, which other nodes' forwarders reach) and the node's endpoint
//!   (`--nbd-address`, for applications). Every pass also tells the forwarder
//!   ([`crate::endpoint::forward`]) where every other volume's target is now.
//!
//! What to do is decided in [`plan`] from what a pass observed; this file reads the objects and
//! the targets' status and carries the plan out.

mod plan;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_client::{Client, ClientError, Recorder};
use tandem_core::{Fenced, Generation, Membership, ReplicaId, TargetOptions};
use tandem_dataplane::replica::LocalHost;
use tandem_dataplane::security::LinkSecurity;
use tandem_dataplane::target::{
    self, MembershipStore, ResyncPace, TargetConfig, TargetHandle, TargetStatus,
};
use tandem_nbd::{Server, ServerError};
use tandem_objects::{CStorVolume, EventType, Kind, Object};
use tokio::sync::watch;

use crate::changes::{Cache, Changes, FIRST_LIST_PATIENCE};
use crate::cstor::{generation_of, known_replicas};
use crate::endpoint::{replace_export, Endpoint, EndpointServer, Routes};
use crate::error::{Aspect, Error, Subject};
use crate::metrics::metered::{Metered, VolumeIo};
use crate::metrics::AgentMetrics;
use crate::report::ErrorLog;
use plan::{KeepPlan, Measured, Step, View};

/// How often the targets are brought in line and their status published when nothing wakes
/// the loop (a change of the objects, a target's change of state, rebuild progress) and no
/// client I/O came: a slow resync. Idle, a pass over a thousand targets is all the loop costs.
const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
/// After a pass in which some step failed, the next comes this soon.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A pass that takes longer than this is reported (it holds up every target's membership
/// changes and status).
const SLOW_PASS: Duration = Duration::from_secs(5);

/// Rebuild progress alone is written at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Changes of the per-replica I/O counters alone (in-flight requests, checkpointed sequence,
/// up time) are written at most this often; while some target has client I/O, passes come
/// this often.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(10);

/// The NBD server of this node's own targets, and nothing else: what other nodes forward to.
/// Each target's client I/O is counted (the same counters as its export on the endpoint).
pub type OwnTargetsServer = Server<Metered<TargetHandle>>;

/// The reason of the CV's events when its writes start failing for lack of space (Warning)
/// and when they succeed again (Normal).
pub const REASON_OUT_OF_SPACE: &str = "VolumeOutOfSpace";

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
    /// How fast its resyncs copy (from the volume's and its pool cluster's annotations).
    pace: ResyncPace,
    /// Its client I/O, and the requests answered as of the last pass.
    io: Arc<VolumeIo>,
    operations_seen: u64,
    /// What its last complete keep step saw: the same again, and no resync due, leaves it be.
    kept: Option<KeepInputs>,
    /// Whether the CV was last told (an event) that writes fail for lack of space.
    no_space_said: bool,
}

/// What a target's keep step depends on: its objects' versions, its state, its client I/O. A
/// pass woken by one volume's change looks at that volume's target, not at a thousand others.
#[derive(PartialEq)]
struct KeepInputs {
    volume: String,
    config: Option<String>,
    replicas: Vec<String>,
    clusters: Vec<String>,
    status: TargetStatus,
    command_in_flight: bool,
    operations: u64,
}

/// Where the loop is now (when the pass and the step began, and the step), so that a pass
/// that does not end can say what it waits for.
#[derive(Clone, Default)]
struct Doing(Arc<std::sync::Mutex<Option<(Instant, Instant, String)>>>);

impl Doing {
    fn step(&self, what: impl Into<String>) {
        let mut doing = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pass = doing
            .as_ref()
            .map_or_else(Instant::now, |(pass, _, _)| *pass);
        *doing = Some((pass, Instant::now(), what.into()));
    }

    fn done(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Warns every `SLOW_PASS` while a pass has been running for longer than that.
    async fn watch(self) {
        loop {
            tokio::time::sleep(SLOW_PASS).await;
            let doing = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some((pass, step, what)) = doing {
                if pass.elapsed() > SLOW_PASS {
                    tracing::warn!(pass = ?pass.elapsed(), step = ?step.elapsed(), what, "a targets pass has not ended");
                }
            }
        }
    }
}

pub struct Targets {
    doing: Doing,
    client: Client,
    /// The volumes, configs and replicas, kept by watches.
    cache: Cache,
    namespace: String,
    node: String,
    own: Arc<OwnTargetsServer>,
    endpoint: Arc<EndpointServer>,
    /// Where the forwarder sends the volumes whose target is elsewhere.
    routes: watch::Sender<Routes>,
    /// The nodes' addresses as last reported (see [`plan::KnownAddresses`]).
    known: plan::KnownAddresses,
    running: BTreeMap<String, Running>,
    errors: ErrorLog,
    /// Signalled when a target started here changes state (set by [`Targets::run`]).
    changes: Option<Changes>,
    /// Where the running targets are reported for scrapes.
    metrics: Arc<AgentMetrics>,
    /// How targets reach replica hosts (mutual TLS with the node's credential, or plain).
    security: LinkSecurity,
    /// This node's replica host: targets reach its replicas in memory.
    local: Option<LocalHost>,
    /// Records events about the volumes (writes failing for lack of space, and again not).
    recorder: Recorder,
}

impl Targets {
    /// Targets reach replica hosts with `security` (plain by default).
    pub fn with_security(mut self, security: LinkSecurity) -> Targets {
        self.security = security;
        self
    }

    /// Targets reach the replicas of this node's host, `local`, in memory (no socket, no TLS).
    pub fn with_local_host(mut self, local: LocalHost) -> Targets {
        self.local = Some(local);
        self
    }

    pub fn new(
        client: Client,
        cache: Cache,
        node: String,
        own: Arc<OwnTargetsServer>,
        endpoint: Arc<EndpointServer>,
        routes: watch::Sender<Routes>,
        metrics: Arc<AgentMetrics>,
    ) -> Targets {
        Targets {
            recorder: Recorder::new(client.clone(), crate::EVENT_COMPONENT, &node),
            doing: Doing::default(),
            client,
            namespace: cache.namespace.clone(),
            cache,
            node,
            own,
            endpoint,
            routes,
            known: plan::KnownAddresses::default(),
            running: BTreeMap::new(),
            errors: ErrorLog::default(),
            changes: None,
            metrics,
            security: LinkSecurity::Plain,
            local: None,
        }
    }

    /// Runs passes until the task is dropped; stops every target when it is. A pass runs at
    /// once when `changes` signals (an object changed, or one of this node's targets changed
    /// state: every target started here signals it), every `COUNTERS_INTERVAL` while targets
    /// have client I/O, and otherwise every `RESYNC_INTERVAL`.
    pub async fn run(mut self, changes: Changes) {
        let watchdog = self.doing.clone().watch();
        tokio::select! {
            () = watchdog => {}
            () = self.passes(changes) => {}
        }
    }

    async fn passes(&mut self, changes: Changes) {
        self.cache.synced_within(FIRST_LIST_PATIENCE).await;
        let mut wakeups = changes.subscribe();
        self.changes = Some(changes);
        // The first pass, a resync and a pass after a failure or a node's new address look at
        // every target; the others only at those whose inputs changed.
        let mut full = true;
        loop {
            wakeups.seen();
            let started = Instant::now();
            let passed = self.pass(full).await;
            self.doing.done();
            let took = started.elapsed();
            if took > SLOW_PASS {
                tracing::warn!(
                    ?took,
                    targets = self.running.len(),
                    "a targets pass was slow"
                );
            }
            let retry = match passed {
                Err(error) => {
                    self.errors.failed(&Subject::Targets, &error);
                    true
                }
                Ok(failed) => {
                    self.errors.ok(&Subject::Targets);
                    failed
                }
            };
            // A failed step (a conflict on a stale object, a control plane not answering) is
            // tried again soon, not at the next resync.
            if retry {
                wakeups.wait(RETRY_INTERVAL).await;
                full = true;
                continue;
            }
            // Every COUNTERS_INTERVAL a look that costs one request: a pass follows if some
            // target had client I/O or a node's addresses changed (a new node, an agent
            // listening elsewhere), else at the resync.
            let resync_at = Instant::now() + RESYNC_INTERVAL;
            full = loop {
                if wakeups.wait(COUNTERS_INTERVAL).await || self.had_io() {
                    break false;
                }
                if Instant::now() >= resync_at || self.addresses_changed().await {
                    break true;
                }
            };
        }
    }

    /// Whether some target answered client requests since the last call.
    fn had_io(&mut self) -> bool {
        let mut had = false;
        for running in self.running.values_mut() {
            let operations = running.io.operations();
            had |= operations != running.operations_seen;
            running.operations_seen = operations;
        }
        had
    }

    /// Whether the nodes list an address this loop does not know (false if it cannot be read:
    /// the resync reports that).
    async fn addresses_changed(&self) -> bool {
        match self.client.nodes().await {
            Ok(nodes) => {
                let (addresses, target_addresses) = addresses_of(nodes);
                self.known.learns_from(&addresses, &target_addresses)
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read the nodes' addresses");
                false
            }
        }
    }

    async fn read(&self) -> Result<View, ClientError> {
        self.doing.step("reading the nodes");
        let (addresses, target_addresses) = addresses_of(self.client.nodes().await?);
        Ok(View {
            clusters: Cache::snapshot(&self.cache.clusters)?,
            volumes: Cache::snapshot(&self.cache.volumes)?,
            configs: Cache::snapshot(&self.cache.configs)?,
            replicas: Cache::snapshot(&self.cache.replicas)?,
            addresses,
            target_addresses,
            index: Default::default(),
        })
    }

    /// One pass (`full`: every target's keep step, else only those whose inputs changed); true
    /// if a step of it failed.
    async fn pass(&mut self, full: bool) -> Result<bool, Error> {
        let mut view = self.read().await?;
        self.known.fill(&mut view);
        let routes = plan::plan_routes(&self.node, view.volumes.iter(), &view.target_addresses);
        self.routes.send_if_modified(|current| {
            let changed = *current != routes;
            *current = routes;
            changed
        });
        let running: BTreeMap<String, Generation> = self
            .running
            .iter()
            .map(|(volume, running)| (volume.clone(), running.generation))
            .collect();
        let mut failed = false;
        for step in plan::plan_targets(&self.node, &running, view.volumes.iter()) {
            let (volume, result) = match step {
                Step::Stop(volume) => {
                    self.doing.step(format!("stopping {volume}"));
                    self.stop(&volume).await;
                    continue;
                }
                Step::Fenced(volume) => {
                    self.doing.step(format!("stopping fenced {volume}"));
                    self.stop(&volume).await;
                    (volume, Ok(()))
                }
                Step::Start(volume) => {
                    self.doing.step(format!("starting {volume}"));
                    let result = self.start(&volume, &view).await;
                    (volume, result)
                }
                Step::Keep(volume) => {
                    self.doing.step(format!("keeping {volume}"));
                    let result = self.keep(&volume, &view, full).await;
                    (volume, result)
                }
            };
            let subject = Subject::Target(volume);
            match result {
                Ok(()) => self.errors.ok(&subject),
                Err(error) => {
                    failed = true;
                    self.errors.failed(&subject, &error);
                }
            }
        }
        Ok(failed)
    }

    async fn stop(&mut self, volume: &str) {
        if let Some(running) = self.running.remove(volume) {
            tracing::info!(volume, "stopping target: the volume moved or is gone");
            self.metrics.target_stopped(volume);
            self.own.remove_export(volume);
            self.endpoint
                .remove_export_if(volume, |endpoint| matches!(**endpoint, Endpoint::Local(_)));
            if let Some(command) = running.command {
                command.abort();
            }
            running.handle.stop().await;
        }
    }

    async fn start(&mut self, name: &str, view: &View) -> Result<(), Error> {
        let Some(volume) = view.volume(name) else {
            return Ok(());
        };
        let plan = plan::plan_start(volume, view)?;
        let pace = self.pace(name, view);
        let generation = plan.generation;
        // Taking the generation: a stale read loses with a conflict and the next pass retries.
        self.client
            .update(&Object::CStorVolume(plan.updated))
            .await
            .map_err(|error| Error::TakeGeneration {
                generation: generation.0,
                source: Box::new(error.into()),
            })?;
        let store = Arc::new(CvMembership {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            volume: name.to_string(),
        });
        let handle = target::start(
            TargetConfig {
                volume: name.to_string(),
                generation,
                geometry: plan.geometry,
                membership: plan.membership,
                endpoints: plan.endpoints,
                security: self.security.clone(),
                local: self.local.clone(),
                options: pace.applied_to(TargetOptions::default()),
            },
            store,
        );
        if let Some(changes) = &self.changes {
            tokio::spawn(signal_state_changes(handle.watch_status(), changes.clone()));
        }
        let export_error = |error: ServerError| Error::Export {
            volume: name.to_string(),
            message: error.to_string(),
        };
        // Both exports count into the same counters: a client reaches the target through one.
        let io = Arc::new(VolumeIo::default());
        let metered = Metered::new(handle.clone(), Arc::clone(&io));
        self.own.remove_export(name);
        self.own
            .add_export(name.to_string(), Arc::new(metered.clone()))
            .map_err(export_error)?;
        // Replaces the forwarder's export, if it had one: this node serves the volume directly.
        replace_export(&self.endpoint, name, Endpoint::Local(metered)).map_err(export_error)?;
        self.metrics.target_started(name, &handle, Arc::clone(&io));
        tracing::info!(volume = %name, generation = generation.0, "target started");
        self.running.insert(
            name.to_string(),
            Running {
                handle,
                generation,
                command: None,
                resync_seen: None,
                progress_written: None,
                counters_written: None,
                pace,
                operations_seen: io.operations(),
                io,
                kept: None,
                no_space_said: false,
            },
        );
        Ok(())
    }

    async fn keep(&mut self, name: &str, view: &View, full: bool) -> Result<(), Error> {
        let (Some(volume), Some(running)) = (view.volume(name), self.running.get_mut(name)) else {
            return Ok(());
        };
        let status = running.handle.status();
        let in_flight = running
            .command
            .as_ref()
            .is_some_and(|command| !command.is_finished());
        if !in_flight {
            running.command = None;
        }
        let version = |meta: &tandem_objects::ObjectMeta| meta.resource_version.clone();
        let inputs = KeepInputs {
            volume: version(&volume.metadata),
            config: view.config(name).map(|config| version(&config.metadata)),
            replicas: (view.replicas_of(name).iter())
                .map(|cvr| version(&cvr.metadata))
                .collect(),
            clusters: (view.clusters.iter())
                .map(|cluster| version(&cluster.metadata))
                .collect(),
            status: status.clone(),
            command_in_flight: in_flight,
            operations: running.io.operations(),
        };
        if !full && running.kept.as_ref() == Some(&inputs) {
            return Ok(());
        }
        running.kept = None;
        let pace = self.pace(name, view);
        let running = self.running.get_mut(name).expect("running");
        self.doing.step(format!("keeping {name}: pace, endpoints"));
        if running.pace != pace {
            tracing::info!(volume = name, ?pace, "rebuild pace changed");
            running.handle.set_resync_pace(pace).await;
            running.pace = pace;
        }
        let KeepPlan { endpoints, command } = plan::plan_keep(&status, name, view, in_flight);
        for (replica, endpoint) in endpoints {
            running.handle.set_endpoint(replica, endpoint).await;
        }
        if let Some((command, endpoint)) = command {
            if let tandem_core::Command::AddReplica(replica) = command {
                running.handle.set_endpoint(replica, endpoint).await;
            }
            tracing::info!(volume = name, ?command, "membership change asked");
            let (handle, volume_name) = (running.handle.clone(), name.to_string());
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
        if self.publish(volume, view).await? {
            if let Some(running) = self.running.get_mut(name) {
                running.kept = Some(inputs);
            }
        }
        Ok(())
    }

    /// How fast `volume`'s resyncs copy, as its annotations say.
    fn pace(&mut self, volume: &str, view: &View) -> ResyncPace {
        let subject = Subject::object(Kind::CStorVolumeConfig, volume, Aspect::Whole);
        let pace = match view.pace(volume) {
            Ok(pace) => {
                self.errors.ok(&subject);
                pace
            }
            Err((pace, error)) => {
                self.errors.failed(&subject, Error::Pace(error));
                pace
            }
        };
        ResyncPace::from_rates(pace.idle, pace.under_load, pace.segments)
    }

    /// Measures the target, plans its status writes and makes them; false if one of them did
    /// not happen (a conflict: the next pass that looks publishes again).
    async fn publish(&mut self, volume: &CStorVolume, view: &View) -> Result<bool, Error> {
        let name = volume.name();
        let running = self.running.get_mut(name).expect("a running target");
        let status = running.handle.status();
        self.doing.step(format!("publishing {name}: replica io"));
        let io = running.handle.replica_io().await;
        let resync_rate = resync_rate(&mut running.resync_seen, &status);
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
        let measured = Measured {
            io,
            resync_rate,
            progress_due,
            counters_due,
            now: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        let replicas = view.replicas_of(name);
        let pools = replicas
            .iter()
            .filter_map(|cvr| {
                let id = crate::cstor::replica_id(cvr).ok()??;
                Some((id, crate::cstor::pool_of(cvr)?.to_string()))
            })
            .collect();
        self.metrics
            .target_measured(name, measured.resync_rate, pools);
        let publish = plan::plan_publish(volume, &replicas, &status, &measured);
        // The CV first, then the CVRs: the pool's reconcile pass lists its CVRs and then the CVs
        // and makes each CVR's phase follow its CV's, so a CVR must never say more than its CV
        // already does, or that pass writes the older phase back over it.
        self.doing.step(format!("publishing {name}: status writes"));
        if let Some(updated) = publish.volume {
            running.counters_written = Some(Instant::now());
            match self
                .client
                .update_status(&Object::CStorVolume(updated))
                .await
            {
                Ok(_) => {}
                // Someone wrote the CV meanwhile; the next pass publishes again.
                Err(error) if error.is_conflict() => return Ok(false),
                Err(error) => {
                    return Err(Error::WriteVolumeStatus {
                        volume: name.to_string(),
                        source: Box::new(error.into()),
                    })
                }
            }
        }
        let mut complete = self.say_no_space(volume, &status).await;
        for replica in publish.replicas {
            // A conflict means the replica's agent wrote meanwhile; the next pass retries.
            complete &= self
                .client
                .update_status(&Object::CStorVolumeReplica(replica))
                .await
                .is_ok();
        }
        Ok(complete)
    }

    /// Records on the CV when its writes start failing with ENOSPC (every Healthy replica's
    /// pool is full) and when they succeed again; false if that could not be recorded (the
    /// next pass that looks tries again).
    async fn say_no_space(&mut self, volume: &CStorVolume, status: &TargetStatus) -> bool {
        let name = volume.name();
        let Some(running) = self.running.get(name) else {
            return true;
        };
        if running.no_space_said == status.no_space {
            return true;
        }
        let (event_type, message) = if status.no_space {
            (
                EventType::Warning,
                "writes fail with ENOSPC: every healthy replica's pool is full; free space in \
                 the pools or move the volume (reads go on, nothing written is lost)",
            )
        } else {
            (
                EventType::Normal,
                "writes succeed again: the replicas' pools have room",
            )
        };
        let about = Object::CStorVolume(volume.clone());
        let subject = Subject::object(Kind::CStorVolume, name, Aspect::Event(REASON_OUT_OF_SPACE));
        match (self.recorder)
            .record(&about, event_type, REASON_OUT_OF_SPACE, message)
            .await
        {
            Ok(()) => {
                self.errors.ok(&subject);
                if let Some(running) = self.running.get_mut(name) {
                    running.no_space_said = status.no_space;
                }
                true
            }
            Err(error) => {
                self.errors.failed(&subject, Error::from(error));
                false
            }
        }
    }
}

/// Each node's replica address and own-targets address, where readable.
type Addresses = BTreeMap<String, std::net::SocketAddr>;
fn addresses_of(nodes: Vec<tandem_client::NodeStatus>) -> (Addresses, Addresses) {
    let addresses = (nodes.iter())
        .filter_map(|node| Some((node.node.clone(), node.address.parse().ok()?)))
        .collect();
    let target_addresses = (nodes.into_iter())
        .filter_map(|node| Some((node.node, node.target_address.parse().ok()?)))
        .collect();
    (addresses, target_addresses)
}

/// Signals `changes` whenever a target's state changes (the volume's phase, a replica's mode,
/// the membership, a resync ending), and on rebuild progress at most every
/// `PROGRESS_INTERVAL` (the pass that follows writes it). Ends with the target.
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
            status.resync_history.last().cloned(),
            status.no_space,
        )
    };
    let mut last = state(&status.borrow_and_update());
    let mut progress_signalled = Instant::now();
    while status.changed().await.is_ok() {
        let (now, progressing) = {
            let status = status.borrow_and_update();
            (state(&status), status.resync.is_some())
        };
        let progress_due = progressing && progress_signalled.elapsed() >= PROGRESS_INTERVAL;
        if now != last || progress_due {
            last = now;
            progress_signalled = Instant::now();
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
