//! What the targets loop does, decided from what it observed: which targets to start, keep or
//! stop; what a new target starts from; which addresses and membership change a running one
//! gets; and which status writes publish it. Pure: the executor in `targets/mod.rs` reads the
//! objects and the targets' status, calls these, and carries the result out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::OnceLock;

use tandem_client::Snapshot;
use tandem_core::{
    Command, Generation, Geometry, Incarnation, Member, Membership, ReplicaId, ReplicaIo,
    ReplicaMode, VolumeStatus,
};
use tandem_dataplane::target::{self, ReplicaEndpoint, ResyncAttempt, ResyncOutcome, TargetStatus};
use tandem_objects::{
    CStorPoolCluster, CStorVolume, CStorVolumeConfig, CStorVolumePhase, CStorVolumeReplica,
    CStorVolumeReplicaPhase, CStorVolumeReplicaStatus, CStorVolumeStatus, PaceError, RebuildPace,
    RebuildProgress, ReplicaStatus, ResyncRecord, ANNOTATION_ENDPOINT_NODE,
    LABEL_CSTOR_POOL_CLUSTER,
};

use crate::cstor::{self, generation_of, known_replicas, replica_id, replica_of};
use crate::endpoint::Routes;
use crate::error::Error;

/// What a pass reads once.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub clusters: Snapshot<CStorPoolCluster>,
    pub volumes: Snapshot<CStorVolume>,
    pub configs: Snapshot<CStorVolumeConfig>,
    pub replicas: Snapshot<CStorVolumeReplica>,
    /// Node name -> where its replica host listens.
    pub addresses: BTreeMap<String, SocketAddr>,
    /// Node name -> where it serves its own targets to other nodes' forwarders.
    pub target_addresses: BTreeMap<String, SocketAddr>,
    /// The replicas by volume and the configs by name, built on first use (a view is filled
    /// before it is asked): a pass looks up every volume hosted here, and a scan per volume
    /// cost a thousand volumes a million label comparisons.
    pub index: OnceLock<Index>,
}

/// Positions in a [`View`]'s lists.
#[derive(Debug, Clone, Default)]
pub struct Index {
    replicas: BTreeMap<String, Vec<usize>>,
    configs: BTreeMap<String, usize>,
    volumes: BTreeMap<String, usize>,
}

/// The nodes' addresses as last reported. A control plane knows them from heartbeats, kept in
/// memory: right after it restarts (or another takes over) it lists only the nodes heard from
/// since. Forgetting a node then would close every forwarded export to it and cut its
/// replicas' endpoints, so the last known addresses stay until the node reports new ones.
#[derive(Debug, Default)]
pub struct KnownAddresses {
    addresses: BTreeMap<String, SocketAddr>,
    target_addresses: BTreeMap<String, SocketAddr>,
}

impl KnownAddresses {
    /// Whether `addresses` and `target_addresses` name an address not known yet (a new node,
    /// or one whose agent now listens elsewhere).
    pub fn learns_from(
        &self,
        addresses: &BTreeMap<String, SocketAddr>,
        target_addresses: &BTreeMap<String, SocketAddr>,
    ) -> bool {
        let news = |known: &BTreeMap<String, SocketAddr>, seen: &BTreeMap<String, SocketAddr>| {
            (seen.iter()).any(|(node, address)| known.get(node) != Some(address))
        };
        news(&self.addresses, addresses) || news(&self.target_addresses, target_addresses)
    }

    /// Learns the addresses `view` lists and gives it every address known.
    pub fn fill(&mut self, view: &mut View) {
        for (known, seen) in [
            (&mut self.addresses, &mut view.addresses),
            (&mut self.target_addresses, &mut view.target_addresses),
        ] {
            known.extend(std::mem::take(seen));
            seen.clone_from(known);
        }
    }
}

impl View {
    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index = Index::default();
            for (position, cvr) in self.replicas.iter().enumerate() {
                if let Some(volume) = cstor::replica_volume(cvr) {
                    index
                        .replicas
                        .entry(volume.to_string())
                        .or_default()
                        .push(position);
                }
            }
            for (position, config) in self.configs.iter().enumerate() {
                index.configs.insert(config.name().to_string(), position);
            }
            for (position, volume) in self.volumes.iter().enumerate() {
                index.volumes.insert(volume.name().to_string(), position);
            }
            index
        })
    }

    pub fn replicas_of(&self, volume: &str) -> Vec<&CStorVolumeReplica> {
        self.index()
            .replicas
            .get(volume)
            .map(|positions| {
                (positions.iter())
                    .filter_map(|&at| self.replicas.get(at))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn config(&self, volume: &str) -> Option<&CStorVolumeConfig> {
        self.configs.get(*self.index().configs.get(volume)?)
    }

    pub fn volume(&self, name: &str) -> Option<&CStorVolume> {
        self.volumes.get(*self.index().volumes.get(name)?)
    }

    /// How fast `volume`'s rebuilds copy: its config's pace annotations over its pool
    /// cluster's (admission refuses bad values; one that got in anyway counts as unset, said
    /// in `Err`).
    pub fn pace(&self, volume: &str) -> Result<RebuildPace, (RebuildPace, PaceError)> {
        let empty = BTreeMap::new();
        let config = self.config(volume);
        let cluster = config
            .and_then(|config| config.metadata.label(LABEL_CSTOR_POOL_CLUSTER))
            .and_then(|name| self.clusters.iter().find(|cluster| cluster.name() == name));
        RebuildPace::of(
            cluster.map_or(&empty, |cluster| &cluster.metadata.annotations),
            config.map_or(&empty, |config| &config.metadata.annotations),
        )
        .map_err(|error| (RebuildPace::default(), error))
    }

    /// Where the replica with id `id` is served and by which node (whose certificate its host
    /// must show), if its CVR and its node's address are known.
    pub fn endpoint_of_replica(
        &self,
        replicas: &[&CStorVolumeReplica],
        id: ReplicaId,
    ) -> Option<ReplicaEndpoint> {
        let cvr = replica_of(replicas, id)?;
        let node = cstor::node_of(cvr)?;
        let address = self.addresses.get(node)?;
        Some(ReplicaEndpoint::new(*address, node))
    }
}

/// What to do with one volume's target this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The volume moved or is gone: stop this node's target.
    Stop(String),
    /// A newer target took the volume over (this agent restarted its own, or another node took
    /// over): this one is fenced anyway; stop it, and start over next pass.
    Fenced(String),
    Start(String),
    /// Keep it running: addresses, membership change, status.
    Keep(String),
}

/// The steps of one pass, given the volumes and the generation of every target running here.
pub fn plan_targets<'a>(
    node: &str,
    running: &BTreeMap<String, Generation>,
    volumes: impl IntoIterator<Item = &'a CStorVolume>,
) -> Vec<Step> {
    let mine: Vec<&CStorVolume> = volumes
        .into_iter()
        .filter(|volume| cstor::target_node_of(volume) == Some(node))
        .collect();
    let names: BTreeSet<&str> = mine.iter().map(|volume| volume.name()).collect();
    let mut steps: Vec<Step> = running
        .keys()
        .filter(|volume| !names.contains(volume.as_str()))
        .map(|volume| Step::Stop(volume.clone()))
        .collect();
    for volume in mine {
        let name = volume.name().to_string();
        steps.push(match running.get(&name) {
            Some(generation) if generation_of(volume) > generation.0 => Step::Fenced(name),
            Some(_) => Step::Keep(name),
            None => Step::Start(name),
        });
    }
    steps
}

/// Where this node's endpoint forwards each volume whose target runs on another node: that
/// node's own-targets address. A volume whose target node is unknown, or has not reported
/// such an address (an older agent), is not served here until it does.
pub fn plan_routes<'a>(
    node: &str,
    volumes: impl IntoIterator<Item = &'a CStorVolume>,
    target_addresses: &BTreeMap<String, SocketAddr>,
) -> Routes {
    volumes
        .into_iter()
        .filter_map(|volume| {
            let target = cstor::target_node_of(volume)?;
            if target == node {
                return None;
            }
            let address = target_addresses.get(target)?;
            Some((volume.name().to_string(), *address))
        })
        .collect()
}

/// How a new target starts: the CV updated to take the next generation (and, for a new volume,
/// to record its first membership), and the target's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    pub updated: CStorVolume,
    pub generation: Generation,
    pub geometry: Geometry,
    pub membership: Membership,
    pub endpoints: BTreeMap<ReplicaId, ReplicaEndpoint>,
}

pub fn plan_start(volume: &CStorVolume, view: &View) -> Result<StartPlan, Error> {
    let name = volume.name();
    let replicas = view.replicas_of(name);
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
    cstor::set_generation(&mut updated, generation);
    // The first target's node is the volume's default endpoint for good (recorded once).
    if let Some(node) = cstor::target_node_of(volume) {
        let annotations = &mut updated.metadata.annotations;
        if !annotations.contains_key(ANNOTATION_ENDPOINT_NODE) {
            annotations.insert(ANNOTATION_ENDPOINT_NODE.to_string(), node.to_string());
        }
    }
    updated.spec.replication_factor = membership.replication_factor() as u32;
    updated.spec.consistency_factor = membership.consistency_factor() as u32;
    let endpoints = membership
        .members
        .iter()
        .filter_map(|member| {
            let endpoint = view.endpoint_of_replica(&replicas, member.replica)?;
            Some((member.replica, endpoint))
        })
        .collect();
    Ok(StartPlan {
        updated,
        generation,
        geometry,
        membership,
        endpoints,
    })
}

/// The replicas a new volume was created with, with their incarnations, once all have storage.
fn initial_members(
    volume: &CStorVolume,
    replicas: &[&CStorVolumeReplica],
) -> Result<Vec<(ReplicaId, Incarnation)>, Error> {
    let wanted = volume.spec.desired_replication_factor as usize;
    let mut members: Vec<(ReplicaId, Incarnation)> = replicas
        .iter()
        .filter_map(|cvr| Some((replica_id(cvr).ok()??, cstor::incarnation_of(cvr)?)))
        .collect();
    if members.len() < wanted || wanted == 0 {
        return Err(Error::WaitingForStorage {
            ready: members.len(),
            wanted,
        });
    }
    members.truncate(wanted);
    Ok(members)
}

/// What a running target is given this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepPlan {
    /// Every member's endpoint (`None`: unknown, the target stops dialling it).
    pub endpoints: Vec<(ReplicaId, Option<ReplicaEndpoint>)>,
    /// The membership change to send, with the new replica's endpoint for an addition.
    pub command: Option<(Command, Option<ReplicaEndpoint>)>,
}

/// `command_in_flight`: the target is still carrying out the last change (one at a time).
pub fn plan_keep(
    status: &TargetStatus,
    volume: &str,
    view: &View,
    command_in_flight: bool,
) -> KeepPlan {
    let replicas = view.replicas_of(volume);
    let endpoints = status
        .membership
        .members
        .iter()
        .map(|member| {
            let endpoint = view.endpoint_of_replica(&replicas, member.replica);
            (member.replica, endpoint)
        })
        .collect();
    let command = if command_in_flight {
        None
    } else {
        cstor::membership_change(status, view.config(volume), &replicas).map(|command| {
            let endpoint = match command {
                Command::AddReplica(replica) => view.endpoint_of_replica(&replicas, replica),
                _ => None,
            };
            (command, endpoint)
        })
    };
    KeepPlan { endpoints, command }
}

/// How many rebuilds and resyncs a CStorVolume's status keeps.
pub const VOLUME_HISTORY: usize = 8;
/// How many of its own a CStorVolumeReplica's status keeps.
pub const REPLICA_HISTORY: usize = 5;

/// `kept` (what the object's status holds: it outlives targets) with the target's `attempts`
/// added or updated, oldest first, the newest `limit`. `with_replica`: each record names the
/// replica copied to (a volume's history).
fn merged_history<'a>(
    kept: &[ResyncRecord],
    attempts: impl Iterator<Item = &'a ResyncAttempt>,
    limit: usize,
    with_replica: bool,
) -> Vec<ResyncRecord> {
    let key = |record: &ResyncRecord| {
        (
            record.started.clone(),
            record.replica.clone(),
            record.source.clone(),
        )
    };
    let mut records: BTreeMap<(String, String, String), ResyncRecord> = kept
        .iter()
        .map(|record| (key(record), record.clone()))
        .collect();
    for attempt in attempts {
        let (outcome, reason) = match &attempt.outcome {
            ResyncOutcome::Completed => ("Completed", String::new()),
            ResyncOutcome::Abandoned(reason) => ("Abandoned", reason.clone()),
        };
        let record = ResyncRecord {
            replica: if with_replica {
                attempt.replica.0.to_string()
            } else {
                String::new()
            },
            source: attempt.source.0.to_string(),
            full: attempt.full,
            bytes: attempt.bytes,
            started: humantime::format_rfc3339_millis(attempt.started).to_string(),
            ended: humantime::format_rfc3339_millis(attempt.ended).to_string(),
            outcome: outcome.to_string(),
            reason,
        };
        records.insert(key(&record), record);
    }
    let skip = records.len().saturating_sub(limit);
    records.into_values().skip(skip).collect()
}

/// What the executor measured of a running target, beyond its status.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub io: BTreeMap<ReplicaId, ReplicaIo>,
    /// Bytes per second of the running resync.
    pub resync_rate: u64,
    /// Rebuild progress alone may be written (its interval passed).
    pub progress_due: bool,
    /// I/O counters alone may be written (their interval passed).
    pub counters_due: bool,
    /// The time to stamp writes with (RFC 3339).
    pub now: String,
}

/// The writes that publish a target's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Publish {
    /// CVRs whose status follows the target's view of their replica.
    pub replicas: Vec<CStorVolumeReplica>,
    /// The CV with its new status, if it must be written.
    pub volume: Option<CStorVolume>,
}

/// The CV's status from the target's, and each replica's phase into its CVR, where they
/// changed. The replicas' agents copy the same into the CVRs too; this keeps a CVR true while
/// its own agent is down (it shows Offline, not its last phase).
pub fn plan_publish(
    volume: &CStorVolume,
    replicas: &[&CStorVolumeReplica],
    status: &TargetStatus,
    measured: &Measured,
) -> Publish {
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
        .map(|member| {
            replica_status(
                member,
                status,
                measured.resync_rate,
                measured.io.get(&member.replica),
            )
        })
        .collect();
    updated.status.replica_details.known_replicas = known_replicas(&status.membership);
    updated.status.resync_history = merged_history(
        &volume.status.resync_history,
        status.resync_history.iter(),
        VOLUME_HISTORY,
        true,
    );
    updated.status.capacity = volume.spec.capacity;
    updated.status.message = if status.fenced {
        "a newer target took over".to_string()
    } else {
        String::new()
    };
    let mut publish = Publish::default();
    for (member, reported) in status
        .membership
        .members
        .iter()
        .zip(&updated.status.replica_statuses)
    {
        let Some(cvr) = replica_of(replicas, member.replica) else {
            continue;
        };
        let mut replica = cvr.clone();
        if let Some(phase) = reported.phase {
            replica.status.phase = phase;
        }
        replica.status.rebuild = reported.rebuild.clone();
        replica.status.last_resync = reported.last_resync.clone();
        replica.status.resync_history = merged_history(
            &cvr.status.resync_history,
            status
                .resync_history
                .iter()
                .filter(|attempt| attempt.replica == member.replica),
            REPLICA_HISTORY,
            false,
        );
        let progress_only = replica.status.rebuild != cvr.status.rebuild
            && CStorVolumeReplicaStatus {
                rebuild: cvr.status.rebuild.clone(),
                ..replica.status.clone()
            } == cvr.status;
        if progress_only && !measured.progress_due {
            continue;
        }
        if replica.status != cvr.status {
            replica.status.last_update_time = measured.now.clone();
            if replica.status.phase != cvr.status.phase {
                replica.status.last_transition_time = measured.now.clone();
            }
            publish.replicas.push(replica);
        }
    }
    // Rebuild progress and I/O counters change all the time: alone, they are written at most
    // every progress and counters interval. Up time alone is never written (it grows every
    // second of every volume: a thousand idle volumes would keep the API busy); it is brought
    // up to date with any other write.
    let without = |status: &CStorVolumeStatus, counters: bool, progress: bool| {
        let mut status = status.clone();
        for replica in &mut status.replica_statuses {
            replica.up_time = 0;
            if counters {
                replica.checkpointed_io_seq.clear();
                replica.inflight_read.clear();
                replica.inflight_write.clear();
                replica.inflight_sync.clear();
            }
            if progress {
                replica.rebuild = None;
            }
        }
        status
    };
    let differs = |counters: bool, progress: bool| {
        without(&updated.status, counters, progress) != without(&volume.status, counters, progress)
    };
    let changed = differs(true, true);
    let progressed = differs(true, false);
    let counted = differs(false, false);
    if changed || (progressed && measured.progress_due) || (counted && measured.counters_due) {
        updated.status.last_update_time = measured.now.clone();
        if updated.status.phase != volume.status.phase {
            updated.status.last_transition_time = measured.now.clone();
        }
        publish.volume = Some(updated);
    }
    publish
}

/// A member's part of the CV's status.
pub fn replica_status(
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
        .resync_history
        .iter()
        .rev()
        .find(|resync| resync.replica == member.replica && resync.completed())
        .map(|resync| ResyncRecord {
            source: resync.source.0.to_string(),
            full: resync.full,
            bytes: resync.bytes,
            ..ResyncRecord::default()
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

#[cfg(test)]
mod tests;
