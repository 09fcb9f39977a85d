//! The per-replica half of the executor: observes one CVR (its `meta`, whether the host serves
//! it), plans its actions with [`super::plan::plan_replica`] and carries them out against the
//! pool directory, the replica host and the API.

use std::path::Path;

use tandem_core::Incarnation;
use tandem_objects::{
    CStorVolumeReplica, CStorVolumeReplicaCapacity, CStorVolumeReplicaStatus, EventType, Kind,
    Object, WrongKindError,
};

use super::plan::{self, Action, MetaSummary, PoolView, ReplicaObserved};
use super::{blocking, now_rfc3339, Agent, CachedMeta, Outcome, FINALIZER, REASON_DELETION_FAILED};
use crate::cstor::{self, short_quantity};
use crate::error::{Aspect, Error, ReplicaError, Subject};
use crate::storage::{self, NewReplica, DATA_FILE, META_FILE};

impl Agent {
    /// Brings one replica's storage and status in line: observes it, plans, and carries the
    /// plan out.
    pub(super) async fn reconcile_replica(
        &mut self,
        cvr: CStorVolumeReplica,
        view: &PoolView,
    ) -> Outcome {
        let meta = match view.owned_storage(&cvr) {
            Some(volume) => Some(
                self.read_meta(&volume, &view.replicas_dir.join(&volume))
                    .await,
            ),
            None => None,
        };
        let hosted = cstor::volume_of(&cvr).is_ok_and(|volume| self.hosted.contains_key(&volume));
        let served = match cstor::replica_id(&cvr) {
            Ok(Some(id)) => Some(id),
            Ok(None) => Some(cstor::replica_id_to_assign(&cvr)),
            Err(_) => None,
        }
        .filter(|_| hosted)
        .and_then(|id| self.host.incarnation(id));
        let actions = plan::plan_replica(
            &ReplicaObserved {
                cvr: &cvr,
                meta,
                hosted,
                served,
                new_incarnation: Incarnation(rand::random()),
            },
            view,
        );
        self.execute(cvr, actions, view).await
    }

    /// Carries out one replica's actions in order, until one fails.
    async fn execute(
        &mut self,
        mut cvr: CStorVolumeReplica,
        actions: Vec<Action>,
        view: &PoolView,
    ) -> Outcome {
        let subject = Subject::cvr(cvr.name());
        let mut changed = false;
        // Only looked: measured, compared, found as it should be.
        let mut quiet = true;
        let mut capacity: Option<CStorVolumeReplicaCapacity> = None;
        for action in actions {
            quiet &= matches!(
                action,
                Action::NoteGeometry(_) | Action::MeasureCapacity { .. } | Action::SetStatus { .. }
            );
            match action {
                Action::AssignReplicaId(id) => {
                    cstor::set_replica_id(&mut cvr, id);
                    match self.update_replica(cvr, &subject).await {
                        Some(Ok(updated)) => {
                            tracing::info!(
                                cvr = updated.name(),
                                replica_id = id.0,
                                "set the replica id"
                            );
                            cvr = updated;
                        }
                        Some(Err(error)) => {
                            self.errors.failed(&subject, error);
                            return Outcome::acted(changed);
                        }
                        None => return Outcome::acted(changed),
                    }
                }
                Action::NoteGeometry(mismatch) => {
                    let subject = subject.with(Aspect::Geometry);
                    match mismatch {
                        None => self.errors.ok(&subject),
                        Some(message) => {
                            self.errors.failed(&subject, &message);
                            quiet = false;
                        }
                    }
                }
                Action::CreateStorage { volume, storage } => {
                    match self.create_storage(&cvr, &volume, storage, view).await {
                        Ok(()) => changed = true,
                        Err(problem) => {
                            self.failed(cvr, problem, &subject).await;
                            return Outcome::acted(changed);
                        }
                    }
                }
                Action::Serve { volume } => {
                    if let Err(problem) = self.ensure_hosted(&volume, &view.replicas_dir).await {
                        self.failed(cvr, problem, &subject).await;
                        return Outcome::acted(changed);
                    }
                }
                Action::StopServing { volume } => self.unhost(&volume).await,
                Action::MeasureCapacity { volume } => {
                    capacity = self
                        .measure_replica(&cvr, &view.replicas_dir.join(volume))
                        .await;
                }
                Action::RecordIncarnation(incarnation) => {
                    cstor::set_incarnation(&mut cvr, incarnation);
                    match self.update_replica(cvr, &subject).await {
                        Some(Ok(updated)) => cvr = updated,
                        Some(Err(_)) | None => return Outcome::acted(changed),
                    }
                }
                Action::SetStatus { status, problem } => {
                    quiet &= problem.is_none();
                    let wrote = (self.set_status(cvr, status, problem, capacity, &subject)).await;
                    return Outcome {
                        storage_changed: changed,
                        quiet: quiet && !wrote,
                    };
                }
                Action::RemoveStorage { volume } => {
                    let dir = view.replicas_dir.join(&volume);
                    let replicas_dir = view.replicas_dir.clone();
                    let doomed = volume.clone();
                    let outcome = blocking(move || {
                        storage::remove_replica(&replicas_dir, &doomed)
                            .map_err(|error| error.to_string())
                    })
                    .await
                    .map_err(|error| error.to_string())
                    .and_then(|result| result);
                    if let Err(message) = outcome {
                        self.deletion_failed(cvr, Error::RemoveStorage { dir, message }, &subject)
                            .await;
                        return Outcome::acted(changed);
                    }
                    tracing::info!(cvr = cvr.name(), path = %dir.display(), "removed replica storage");
                    self.metas.remove(&volume);
                    self.capacities.remove(&view.replicas_dir.join(&volume));
                    changed = true;
                }
                Action::KeepStorage { volume } => {
                    let path = view.replicas_dir.join(&volume);
                    tracing::warn!(
                        cvr = cvr.name(),
                        path = %path.display(),
                        "the storage under this volume's name belongs to another replica id; keeping it"
                    );
                }
                Action::ReleaseFinalizer => {
                    cvr.metadata.finalizers.retain(|f| f != FINALIZER);
                    let name = cvr.name().to_string();
                    if self.update_replica(cvr, &subject).await.is_some() {
                        self.errors.ok(&subject);
                        tracing::info!(cvr = %name, "removed the finalizer");
                    }
                    return Outcome::acted(changed);
                }
            }
        }
        Outcome {
            storage_changed: changed,
            quiet,
        }
    }

    /// Writes a CVR's spec and metadata and takes the server's answer: `None` if the update
    /// failed (reported unless it was a conflict; the next pass tries again), else the answer
    /// as a CVR (an error only if the server answered with another kind; each caller decides
    /// whether to report it).
    async fn update_replica(
        &mut self,
        cvr: CStorVolumeReplica,
        subject: &Subject,
    ) -> Option<Result<CStorVolumeReplica, WrongKindError>> {
        match self
            .api(self.client.update(&Object::CStorVolumeReplica(cvr)))
            .await
        {
            Ok(object) => Some(CStorVolumeReplica::try_from(object)),
            Err(error) => {
                self.update_failed(subject, &error);
                None
            }
        }
    }

    async fn create_storage(
        &mut self,
        cvr: &CStorVolumeReplica,
        volume: &str,
        planned: plan::NewStorage,
        view: &PoolView,
    ) -> Result<(), ReplicaError> {
        let capacity = cvr.spec.capacity.bytes();
        let geometry = planned.geometry;
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
        let new = NewReplica {
            volume: volume.to_string(),
            replica: planned.replica,
            incarnation: planned.incarnation,
            geometry,
            consistent: planned.consistent,
            thick: planned.thick,
        };
        let replicas_dir = view.replicas_dir.clone();
        let incarnation = new.incarnation;
        let created = blocking(move || {
            storage::create_replica(&replicas_dir, &new).map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| error.to_string())
        .and_then(|result| result);
        let dir = view.replicas_dir.join(volume);
        match created {
            Ok(path) => {
                tracing::info!(
                    cvr = cvr.name(),
                    path = %path.display(),
                    replica_id = planned.replica.0,
                    incarnation = incarnation.0,
                    size = geometry.size_bytes,
                    region_size = geometry.region_size,
                    consistent = planned.consistent,
                    "created replica storage"
                );
                Ok(())
            }
            Err(message) => Err(ReplicaError::Create { dir, message }),
        }
    }

    /// Serves the replica in `replicas_dir/<volume>` from the host unless it already is.
    async fn ensure_hosted(
        &mut self,
        volume: &str,
        replicas_dir: &Path,
    ) -> Result<(), ReplicaError> {
        if self.hosted.contains_key(volume) {
            return Ok(());
        }
        let dir = replicas_dir.join(volume);
        match self.host.add_replica(&dir).await {
            Ok(replica) => {
                self.hosted.insert(volume.to_string(), replica);
                Ok(())
            }
            Err(error) => Err(ReplicaError::serve(&dir, error)),
        }
    }

    /// Stops serving the replica in `replicas/<volume>` (if the host serves it), waiting until
    /// the host has let go of its files.
    pub(super) async fn unhost(&mut self, volume: &str) {
        if let Some(replica) = self.hosted.remove(volume) {
            self.host.remove_replica(replica).await;
        }
    }

    /// What `dir/meta` says, read again only if the file changed.
    async fn read_meta(&mut self, volume: &str, dir: &Path) -> Result<MetaSummary, ReplicaError> {
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
        .map_err(|error| error.to_string())
        .and_then(|result| result)
        .map_err(ReplicaError::Unusable);
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
        // Measured again only once the files changed: a pass over a thousand idle replicas
        // would otherwise walk them all every time.
        let stamp = [DATA_FILE, META_FILE].map(|file| {
            std::fs::metadata(dir.join(file))
                .ok()
                .map(|metadata| (metadata.len(), metadata.modified().ok()))
        });
        if let Some(cached) = self.capacities.get(dir) {
            if cached.0 == stamp {
                return Some(cached.1.clone());
            }
        }
        let owned = dir.to_path_buf();
        let measured = blocking(move || {
            let total = storage::allocated_bytes(&owned)?;
            let used = storage::allocated_bytes(&owned.join(DATA_FILE))?;
            Ok::<_, std::io::Error>((total, used))
        })
        .await
        .and_then(|result| result.map_err(|error| Error::MeasureReplica(error.to_string())));
        let subject = Subject::object(Kind::CStorVolumeReplica, cvr.name(), Aspect::Capacity);
        match measured {
            Ok((total, used)) => {
                self.errors.ok(&subject);
                let capacity = CStorVolumeReplicaCapacity {
                    total: short_quantity(total),
                    used: short_quantity(used),
                };
                self.capacities
                    .insert(dir.to_path_buf(), (stamp, capacity.clone()));
                Some(capacity)
            }
            Err(error) => {
                self.errors.failed(&subject, &error);
                None
            }
        }
    }

    /// A step failed: the status says so, as [`plan::failed_status`] plans it.
    async fn failed(&mut self, cvr: CStorVolumeReplica, problem: ReplicaError, subject: &Subject) {
        let status = plan::error_status(&cvr.status, &problem);
        self.set_status(cvr, status, Some(problem), None, subject)
            .await;
    }

    /// Carries out a [`Action::SetStatus`]: logs its problem (or the recovery), and writes the
    /// status with the measured capacity unless the CVR has it.
    async fn set_status(
        &mut self,
        cvr: CStorVolumeReplica,
        status: CStorVolumeReplicaStatus,
        problem: Option<ReplicaError>,
        capacity: Option<CStorVolumeReplicaCapacity>,
        subject: &Subject,
    ) -> bool {
        match &problem {
            Some(problem) => {
                self.errors.failed(subject, problem);
            }
            None => self.errors.ok(subject),
        }
        let status = plan::with_capacity(status, capacity);
        self.write_replica_status(cvr, status, subject).await
    }

    /// Writes the status unless the CVR has it already; true if it tried.
    async fn write_replica_status(
        &mut self,
        mut cvr: CStorVolumeReplica,
        mut status: CStorVolumeReplicaStatus,
        subject: &Subject,
    ) -> bool {
        if status == cvr.status {
            return false;
        }
        let now = now_rfc3339();
        if status.phase != cvr.status.phase {
            status.last_transition_time = now.clone();
            tracing::info!(cvr = cvr.name(), from = %cvr.status.phase, to = %status.phase, "phase");
        }
        status.last_update_time = now;
        cvr.status = status;
        if let Err(error) = self
            .api(self.client.update_status(&Object::CStorVolumeReplica(cvr)))
            .await
        {
            self.update_failed(&subject.with(Aspect::Status), &error);
        }
        true
    }

    /// The storage of a deleted CVR could not be removed: cStor's DeletionFailed, with an event.
    async fn deletion_failed(&mut self, cvr: CStorVolumeReplica, error: Error, subject: &Subject) {
        let message = error.to_string();
        self.errors.failed(subject, &error);
        let object = Object::CStorVolumeReplica(cvr.clone());
        self.record_once(
            &object,
            EventType::Warning,
            REASON_DELETION_FAILED,
            &message,
        )
        .await;
        let status = plan::deletion_failed_status(&cvr.status, message);
        self.write_replica_status(cvr, status, subject).await;
    }
}
