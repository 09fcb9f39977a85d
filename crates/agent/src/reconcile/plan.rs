//! What a reconcile pass does, decided from what it observed: which pool to serve, what to do
//! with each replica (create, serve, measure, remove its storage; write its id, incarnation,
//! status; release its finalizer) and the pool's status. Pure: no API, no disk, no clock; the
//! executor in `reconcile/mod.rs` (per replica, `reconcile/replica.rs`) observes, calls these,
//! and carries the actions out.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use tandem_core::{Geometry, Incarnation, ReplicaId};
use tandem_objects::capacity::Provisioning;
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstanceCapacity, CStorPoolInstancePhase, CStorPoolInstanceStatus,
    CStorVolumeReplica, CStorVolumeReplicaCapacity, CStorVolumeReplicaPhase,
    CStorVolumeReplicaStatus, EventType, Quantity, ReplicaStatus,
};

use crate::cstor::{self, creation_order, short_quantity};
use crate::error::{is_agent_message, Refusal, ReplicaError};
use crate::pool;

use super::{FINALIZER, MESSAGE_READ_ONLY_SET, MESSAGE_READ_ONLY_UNSET};

/// Which of the pools naming this node is served (the oldest), and the status each of the
/// others must be given (cStor's ErrorDuplicate; `None` when it already has it).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolChoice {
    pub served: CStorPoolInstance,
    pub duplicates: Vec<(CStorPoolInstance, Option<CStorPoolInstanceStatus>)>,
}

/// `None` while no pool names this node.
pub fn choose_pool(mut pools: Vec<CStorPoolInstance>) -> Option<PoolChoice> {
    if pools.is_empty() {
        return None;
    }
    pools.sort_by_key(|pool| creation_order(&pool.metadata));
    let served = pools.remove(0);
    let duplicates = pools
        .into_iter()
        .map(|duplicate| {
            let status = CStorPoolInstanceStatus {
                phase: CStorPoolInstancePhase::ErrorDuplicate,
                conditions: duplicate.status.conditions.clone(),
                ..CStorPoolInstanceStatus::default()
            };
            let write = (duplicate.status != status).then_some(status);
            (duplicate, write)
        })
        .collect();
    Some(PoolChoice { served, duplicates })
}

/// The status of a pool whose directory cannot be claimed.
pub fn claim_failed_status(served: &CStorPoolInstance) -> CStorPoolInstanceStatus {
    CStorPoolInstanceStatus {
        phase: CStorPoolInstancePhase::PoolCreationFailed,
        conditions: served.status.conditions.clone(),
        ..CStorPoolInstanceStatus::default()
    }
}

/// Volume name -> the CVR that owns the volume's directory in this pool: the oldest CVR naming
/// it (`replicas` are oldest first).
pub fn owners(replicas: &[CStorVolumeReplica]) -> HashMap<String, String> {
    let mut owners: HashMap<String, String> = HashMap::new();
    for replica in replicas {
        if let Ok(volume) = cstor::volume_of(replica) {
            owners
                .entry(volume)
                .or_insert_with(|| replica.name().to_string());
        }
    }
    owners
}

/// Storage with no CVR (kept, never removed: the store may have been lost).
pub fn orphans(storage: &BTreeSet<String>, owners: &HashMap<String, String>) -> BTreeSet<String> {
    storage
        .iter()
        .filter(|volume| !owners.contains_key(*volume))
        .cloned()
        .collect()
}

/// The served volumes whose storage is no longer there (no longer served).
pub fn vanished<'a>(
    hosted: impl Iterator<Item = &'a String>,
    storage: &BTreeSet<String>,
) -> Vec<String> {
    hosted
        .filter(|volume| !storage.contains(*volume))
        .cloned()
        .collect()
}

/// The served pool's status after a pass.
pub fn pool_status(
    served: &CStorPoolInstance,
    used: u64,
    pool_size: u64,
    limit: u32,
    provisioned: usize,
    provisioned_bytes: u64,
    healthy: u32,
) -> CStorPoolInstanceStatus {
    CStorPoolInstanceStatus {
        phase: CStorPoolInstancePhase::Online,
        capacity: CStorPoolInstanceCapacity {
            used: short_quantity(used),
            free: short_quantity(pool_size.saturating_sub(used)),
            total: short_quantity(pool_size),
            provisioned: Some(Quantity::from_bytes_binary(provisioned_bytes)),
            zfs: served.status.capacity.zfs.clone(),
        },
        read_only: pool::read_only(used, pool_size, limit),
        provisioned_replicas: u32::try_from(provisioned).unwrap_or(u32::MAX),
        healthy_replicas: healthy,
        conditions: served.status.conditions.clone(),
    }
}

/// The event cStor records when a pool's read-only mode changes.
pub fn read_only_event(was: bool, now: bool) -> Option<(EventType, &'static str)> {
    match (was, now) {
        (false, true) => Some((EventType::Warning, MESSAGE_READ_ONLY_SET)),
        (true, false) => Some((EventType::Normal, MESSAGE_READ_ONLY_UNSET)),
        _ => None,
    }
}

/// What a pass knows about the served pool when it gets to the replicas.
#[derive(Debug, Clone, Default)]
pub struct PoolView {
    pub name: String,
    pub replicas_dir: PathBuf,
    pub read_only: bool,
    pub used_percent: u128,
    pub limit: u32,
    /// The volumes with a directory under `replicas/`.
    pub storage: BTreeSet<String>,
    /// See [`owners`].
    pub owners: HashMap<String, String>,
    /// What each volume's target reports about its replicas, by volume and replica id.
    pub reported: HashMap<(String, ReplicaId), ReplicaStatus>,
}

impl PoolView {
    /// The volume whose storage in this pool is `cvr`'s to manage: its volume, if it has
    /// storage here and `cvr` owns it.
    pub fn owned_storage(&self, cvr: &CStorVolumeReplica) -> Option<String> {
        let volume = cstor::volume_of(cvr).ok()?;
        (self.storage.contains(&volume)
            && self.owners.get(&volume).map(String::as_str) == Some(cvr.name()))
        .then_some(volume)
    }
}

/// What the agent needs from a replica's `meta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaSummary {
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    pub geometry: Geometry,
}

/// What a pass observed about one CVR beyond the pool.
#[derive(Debug, Clone)]
pub struct ReplicaObserved<'a> {
    pub cvr: &'a CStorVolumeReplica,
    /// What the `meta` of its storage says, read if it owns storage here
    /// ([`PoolView::owned_storage`]).
    pub meta: Option<Result<MetaSummary, ReplicaError>>,
    /// Whether the replica host serves `replicas/<volume>`.
    pub hosted: bool,
    /// The incarnation the replica host serves under the CVR's replica id (the one it records,
    /// or the one it is to be given), if it serves that id; read only when `hosted`.
    pub served: Option<Incarnation>,
    /// The incarnation storage created for it in this pass gets (drawn at random by the
    /// executor, as cStor's zvol GUID).
    pub new_incarnation: Incarnation,
}

/// New storage for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewStorage {
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    pub geometry: Geometry,
    /// Created with its volume: a consistent copy of an empty history (quorum on).
    pub consistent: bool,
    /// Its volume is thick: the space is reserved now.
    pub thick: bool,
}

/// One step of bringing a replica in line, carried out in order; a step that fails ends the
/// replica's steps for this pass (a failed [`Action::CreateStorage`] or [`Action::Serve`] is
/// then written into its status, see [`failed_status`]).
// A handful of actions per replica per pass: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the generated id into the CVR's spec, before any storage carries it.
    AssignReplicaId(ReplicaId),
    /// Existing storage against the spec's geometry: `Some` warns that a target with the
    /// spec's geometry would be refused; `None` says they agree.
    NoteGeometry(Option<String>),
    CreateStorage {
        volume: String,
        storage: NewStorage,
    },
    /// Serve `replicas/<volume>` from the replica host.
    Serve {
        volume: String,
    },
    /// Stop serving `replicas/<volume>` (the host lets go of its files).
    StopServing {
        volume: String,
    },
    /// Measure the storage's allocation into the status written next.
    MeasureCapacity {
        volume: String,
    },
    /// Write the incarnation the host serves into the CVR (where the target finds it); planned
    /// only when the CVR records another one (or none).
    RecordIncarnation(Incarnation),
    /// Write this status (with the measured capacity, if any) unless the CVR has it; `problem`
    /// is logged (or, when `None`, the CVR's earlier failure is noted as recovered).
    SetStatus {
        status: CStorVolumeReplicaStatus,
        problem: Option<ReplicaError>,
    },
    RemoveStorage {
        volume: String,
    },
    /// The storage under a deleted CVR's volume name carries another replica id than the
    /// CVR's (or, when the CVR records none, than the id the agent gives it): kept.
    KeepStorage {
        volume: String,
    },
    ReleaseFinalizer,
}

/// The steps that bring one CVR's storage and status in line.
pub fn plan_replica(observed: &ReplicaObserved<'_>, pool: &PoolView) -> Vec<Action> {
    if observed.cvr.metadata.deletion_timestamp.is_empty() {
        plan_live(observed, pool)
    } else {
        plan_deleted(observed, pool)
    }
}

fn plan_deleted(observed: &ReplicaObserved<'_>, pool: &PoolView) -> Vec<Action> {
    let cvr = observed.cvr;
    let mut actions = Vec::new();
    if let Some(volume) = pool.owned_storage(cvr) {
        // A CVR that records no id is compared with the id the agent gives it (the hash of its
        // uid): storage carrying that id was created for it; storage carrying another is not its
        // own. Unreadable metadata or a malformed id does not keep storage.
        let id = cstor::replica_id(cvr)
            .map(|recorded| recorded.unwrap_or_else(|| cstor::replica_id_to_assign(cvr)));
        let another =
            matches!((&observed.meta, id), (Some(Ok(meta)), Ok(id)) if meta.replica != id);
        // Whatever the storage holds, it is no longer served for a deleted CVR; and the host
        // must let go of the files before they are removed.
        actions.push(Action::StopServing {
            volume: volume.clone(),
        });
        actions.push(if another {
            Action::KeepStorage { volume }
        } else {
            Action::RemoveStorage { volume }
        });
    }
    if cvr.metadata.finalizers.iter().any(|f| f == FINALIZER) {
        actions.push(Action::ReleaseFinalizer);
    }
    actions
}

fn plan_live(observed: &ReplicaObserved<'_>, pool: &PoolView) -> Vec<Action> {
    let cvr = observed.cvr;
    let mut actions = Vec::new();
    // As cStor's pool-manager: an id is generated and written to the CVR before any storage
    // carries it.
    let id = match cstor::replica_id(cvr) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => {
            let id = cstor::replica_id_to_assign(cvr);
            actions.push(Action::AssignReplicaId(id));
            Ok(id)
        }
        Err(error) => Err(error),
    };
    let fail = |mut actions: Vec<Action>, problem: ReplicaError| {
        actions.push(failed_status(&cvr.status, problem));
        actions
    };
    let volume = match cstor::volume_of(cvr) {
        Ok(volume) => volume,
        Err(error) => return fail(actions, Refusal::Cstor(error).into()),
    };
    if let Some(owner) = pool
        .owners
        .get(&volume)
        .filter(|owner| *owner != cvr.name())
    {
        let refusal = Refusal::VolumeTaken {
            volume,
            pool: pool.name.clone(),
            owner: owner.clone(),
        };
        return fail(actions, refusal.into());
    }
    let id = match id {
        Ok(id) => id,
        Err(error) => return fail(actions, Refusal::Cstor(error).into()),
    };
    let reported = pool.reported.get(&(volume.clone(), id));
    // The incarnation the host serves once the steps before are done: the one it serves now,
    // or that of the storage the steps serve (`stored`).
    let ready = |mut actions: Vec<Action>, created: bool, stored: Incarnation| {
        actions.push(Action::MeasureCapacity {
            volume: volume.clone(),
        });
        let served = if observed.hosted {
            observed.served
        } else {
            Some(stored)
        };
        if let Some(served) = served.filter(|served| cstor::incarnation_of(cvr) != Some(*served)) {
            actions.push(Action::RecordIncarnation(served));
        }
        actions.push(Action::SetStatus {
            status: ready_status(&cvr.status, created, reported),
            problem: None,
        });
        actions
    };
    if pool.storage.contains(&volume) {
        let dir = pool.replicas_dir.join(&volume);
        let problem = match &observed.meta {
            Some(Ok(meta)) if meta.replica == id => {
                actions.push(Action::NoteGeometry(geometry_mismatch(cvr, &dir, meta)));
                if !observed.hosted {
                    actions.push(Action::Serve {
                        volume: volume.clone(),
                    });
                }
                return ready(actions, false, meta.incarnation);
            }
            Some(Ok(meta)) => ReplicaError::AnotherReplica {
                dir,
                stored: meta.replica.0,
                incarnation: meta.incarnation.0,
                wanted: id.0,
            },
            Some(Err(unreadable)) => unreadable.clone(),
            // Owned storage always has its meta read.
            None => ReplicaError::Unusable("its metadata was not read".to_string()),
        };
        // Storage that is not sound (or not this replica's) is not served.
        actions.push(Action::StopServing { volume });
        return fail(actions, problem);
    }
    if pool.read_only {
        let refusal = Refusal::ReadOnly {
            pool: pool.name.clone(),
            used_percent: pool.used_percent,
            limit: pool.limit,
        };
        return fail(actions, refusal.into());
    }
    let geometry = match cstor::geometry_of(cvr) {
        Ok(geometry) => geometry,
        Err(error) => return fail(actions, Refusal::Cstor(error).into()),
    };
    // cStor's rule: created with the volume (phase "" or Init) it is a consistent copy of an
    // empty history (quorum on); any other phase means a scale-up or a recreation, and it must
    // be rebuilt before it counts (quorum off).
    let consistent = matches!(
        cvr.status.phase,
        CStorVolumeReplicaPhase::Empty | CStorVolumeReplicaPhase::Init
    );
    actions.push(Action::CreateStorage {
        volume: volume.clone(),
        storage: NewStorage {
            replica: id,
            incarnation: observed.new_incarnation,
            geometry,
            consistent,
            thick: Provisioning::of(&cvr.metadata.annotations) == Ok(Provisioning::Thick),
        },
    });
    if !observed.hosted {
        actions.push(Action::Serve {
            volume: volume.clone(),
        });
    }
    ready(actions, true, observed.new_incarnation)
}

/// Existing storage with another geometry than the CVR's spec gives: the target, which
/// computes its geometry with the same [`cstor::geometry`], would be refused by this replica.
fn geometry_mismatch(
    cvr: &CStorVolumeReplica,
    dir: &std::path::Path,
    meta: &MetaSummary,
) -> Option<String> {
    let stored = meta.geometry;
    match cstor::geometry_of(cvr) {
        Ok(expected) if expected == stored => None,
        Ok(expected) => Some(format!(
            "{} holds a volume of {} bytes in {}-byte blocks ({}-byte regions) but the CVR's \
             spec gives {} bytes in {}-byte blocks ({}-byte regions); a target with the spec's \
             geometry will be refused",
            dir.display(),
            stored.size_bytes,
            stored.block_size,
            stored.region_size,
            expected.size_bytes,
            expected.block_size,
            expected.region_size
        )),
        Err(error) => Some(error.to_string()),
    }
}

/// The step that records a failure: phase Error with the failure's text ([`error_status`]).
pub fn failed_status(current: &CStorVolumeReplicaStatus, problem: ReplicaError) -> Action {
    Action::SetStatus {
        status: error_status(current, &problem),
        problem: Some(problem),
    }
}

/// The status of a replica that failed: phase Error with the failure's text.
pub fn error_status(
    current: &CStorVolumeReplicaStatus,
    problem: &ReplicaError,
) -> CStorVolumeReplicaStatus {
    let mut status = current.clone();
    status.phase = CStorVolumeReplicaPhase::Error;
    status.message = problem.to_string();
    status
}

/// The status of a replica whose storage is in place (`created`: just now). Its phase is the
/// target's view of it (Offline when the target does not report it); an Error the agent set is
/// cleared when its cause is gone, one set by the data path is left alone.
pub fn ready_status(
    current: &CStorVolumeReplicaStatus,
    created: bool,
    reported: Option<&ReplicaStatus>,
) -> CStorVolumeReplicaStatus {
    let mut status = current.clone();
    let ours = matches!(
        current.phase,
        CStorVolumeReplicaPhase::Empty
            | CStorVolumeReplicaPhase::Init
            | CStorVolumeReplicaPhase::Recreate
    ) || (current.phase == CStorVolumeReplicaPhase::Error
        && is_agent_message(&current.message));
    if created || ours {
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
    status
}

/// The status a measured capacity gives (a failed measurement keeps the last one).
pub fn with_capacity(
    mut status: CStorVolumeReplicaStatus,
    capacity: Option<CStorVolumeReplicaCapacity>,
) -> CStorVolumeReplicaStatus {
    if let Some(capacity) = capacity {
        status.capacity = capacity;
    }
    status
}

/// The status of a CVR whose storage could not be removed.
pub fn deletion_failed_status(
    current: &CStorVolumeReplicaStatus,
    message: String,
) -> CStorVolumeReplicaStatus {
    let mut status = current.clone();
    status.phase = CStorVolumeReplicaPhase::DeletionFailed;
    status.message = message;
    status
}

#[cfg(test)]
mod tests;
