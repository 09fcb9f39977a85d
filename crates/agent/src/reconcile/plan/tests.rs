//! Reconcile plans as data: what a pass observed -> the actions it plans. One row per case the
//! agent handles; `check` is the only way a test calls the planner.
#![allow(clippy::cloned_ref_to_slice_refs)] // rows build their objects inline

use std::path::PathBuf;

use tandem_objects::{ObjectMeta, RebuildProgress};

use super::*;
use crate::cstor::CstorError;
use crate::error::Refusal;
use crate::fixtures::{cvr, deleted, phase, with_incarnation};
use CStorVolumeReplicaPhase::*;

const GIB: u64 = 1 << 30;
/// The incarnation of existing storage (its `meta`), the one the host serves it with.
const STORED: Incarnation = Incarnation(99);
/// The incarnation storage created in the pass gets.
const NEW: Incarnation = Incarnation(7);

/// The pool `cspc-a` in `/pool`, with `replicas` listed (oldest first) and storage for the
/// volumes in `storage`.
fn pool_with(replicas: &[CStorVolumeReplica], storage: &[&str]) -> PoolView {
    PoolView {
        name: "cspc-a".to_string(),
        replicas_dir: PathBuf::from("/pool/replicas"),
        read_only: false,
        used_percent: 10,
        limit: 85,
        storage: storage.iter().map(ToString::to_string).collect(),
        owners: owners(replicas),
        reported: HashMap::new(),
    }
}

fn meta(replica: u64) -> Option<Result<MetaSummary, ReplicaError>> {
    Some(Ok(MetaSummary {
        replica: ReplicaId(replica),
        incarnation: STORED,
        geometry: cstor::geometry(GIB, None).unwrap(),
    }))
}

fn status(phase: CStorVolumeReplicaPhase, message: &str) -> CStorVolumeReplicaStatus {
    CStorVolumeReplicaStatus {
        phase,
        message: message.to_string(),
        ..Default::default()
    }
}

fn ready(phase: CStorVolumeReplicaPhase) -> Action {
    Action::SetStatus {
        status: status(phase, ""),
        problem: None,
    }
}

fn failed(problem: ReplicaError) -> Action {
    Action::SetStatus {
        status: status(Error, &problem.to_string()),
        problem: Some(problem),
    }
}

fn create(volume: &str, replica: ReplicaId, consistent: bool) -> Action {
    Action::CreateStorage {
        volume: volume.to_string(),
        storage: NewStorage {
            replica,
            incarnation: NEW,
            geometry: cstor::geometry(GIB, None).unwrap(),
            consistent,
            thick: false,
        },
    }
}

fn serve(volume: &str) -> Action {
    Action::Serve {
        volume: volume.to_string(),
    }
}

fn stop_serving(volume: &str) -> Action {
    Action::StopServing {
        volume: volume.to_string(),
    }
}

fn measure(volume: &str) -> Action {
    Action::MeasureCapacity {
        volume: volume.to_string(),
    }
}

fn remove(volume: &str) -> Action {
    Action::RemoveStorage {
        volume: volume.to_string(),
    }
}

fn keep(volume: &str) -> Action {
    Action::KeepStorage {
        volume: volume.to_string(),
    }
}

/// Plans for `cvr` (the pool's only CVR unless `pool` says otherwise) and compares. A `hosted`
/// replica is served with the incarnation [`STORED`].
fn check(
    cvr: &CStorVolumeReplica,
    pool: &PoolView,
    meta: Option<Result<MetaSummary, ReplicaError>>,
    hosted: bool,
    expected: Vec<Action>,
) {
    assert_eq!(plan_replica(&observed(cvr, meta, hosted), pool), expected);
}

fn observed(
    cvr: &CStorVolumeReplica,
    meta: Option<Result<MetaSummary, ReplicaError>>,
    hosted: bool,
) -> ReplicaObserved<'_> {
    ReplicaObserved {
        cvr,
        meta,
        hosted,
        served: hosted.then_some(STORED),
        new_incarnation: NEW,
    }
}

// Admission and placement: new storage.

#[test]
fn given_a_cvr_created_with_its_volume_when_the_pool_has_room_then_create_consistent_storage_and_serve_it(
) {
    let new = cvr("pvc-1", "cspc-a", "12345");
    let pool = pool_with(&[new.clone()], &[]);
    check(
        &new,
        &pool,
        None,
        false,
        vec![
            create("pvc-1", ReplicaId(12345), true),
            serve("pvc-1"),
            measure("pvc-1"),
            Action::RecordIncarnation(NEW),
            ready(Offline),
        ],
    );
    let init = phase(new, Init);
    check(
        &init,
        &pool,
        None,
        false,
        vec![
            create("pvc-1", ReplicaId(12345), true),
            serve("pvc-1"),
            measure("pvc-1"),
            Action::RecordIncarnation(NEW),
            ready(Offline),
        ],
    );
}

#[test]
fn given_a_scale_up_cvr_without_an_id_when_planning_then_assign_the_generated_id_and_create_storage_to_be_rebuilt(
) {
    let scale_up = phase(cvr("pvc-2", "cspc-a", ""), Recreate);
    let id = storage_id("uid-pvc-2-cspc-a");
    let pool = pool_with(&[scale_up.clone()], &[]);
    check(
        &scale_up,
        &pool,
        None,
        false,
        vec![
            Action::AssignReplicaId(id),
            create("pvc-2", id, false),
            serve("pvc-2"),
            measure("pvc-2"),
            Action::RecordIncarnation(NEW),
            ready(Offline),
        ],
    );
}

fn storage_id(uid: &str) -> ReplicaId {
    crate::storage::replica_id_from_uid(uid)
}

#[test]
fn given_new_storage_the_host_already_serves_when_planning_then_it_is_not_served_twice() {
    let new = cvr("pvc-1", "cspc-a", "1");
    let pool = pool_with(&[new.clone()], &[]);
    check(
        &new,
        &pool,
        None,
        true,
        vec![
            create("pvc-1", ReplicaId(1), true),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Offline),
        ],
    );
}

#[test]
fn given_a_read_only_pool_when_a_cvr_has_no_storage_then_refuse_it_with_phase_error() {
    let new = cvr("pvc-1", "cspc-a", "1");
    let mut pool = pool_with(&[new.clone()], &[]);
    pool.read_only = true;
    pool.used_percent = 90;
    let refusal = ReplicaError::from(Refusal::ReadOnly {
        pool: "cspc-a".into(),
        used_percent: 90,
        limit: 85,
    });
    assert_eq!(
        refusal.to_string(),
        "cannot create replica storage: pool cspc-a is read-only (used 90% >= roThresholdLimit 85%)"
    );
    check(&new, &pool, None, false, vec![failed(refusal)]);
}

#[test]
fn given_a_read_only_pool_when_a_cvr_has_sound_storage_then_it_is_still_served() {
    let existing = phase(cvr("pvc-1", "cspc-a", "1"), Healthy);
    let mut pool = pool_with(&[existing.clone()], &["pvc-1"]);
    pool.read_only = true;
    check(
        &existing,
        &pool,
        meta(1),
        true,
        vec![
            Action::NoteGeometry(None),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Healthy),
        ],
    );
}

#[test]
fn given_two_cvrs_for_one_volume_in_a_pool_when_planning_the_younger_then_refuse_it() {
    let older = cvr("pvc-1", "cspc-a", "1");
    let mut younger = cvr("pvc-1", "cspc-a", "2");
    younger.metadata.name = "pvc-1-cspc-a-again".into();
    let pool = pool_with(&[older, younger.clone()], &[]);
    check(
        &younger,
        &pool,
        None,
        false,
        vec![failed(ReplicaError::from(Refusal::VolumeTaken {
            volume: "pvc-1".into(),
            pool: "cspc-a".into(),
            owner: "pvc-1-cspc-a".into(),
        }))],
    );
}

#[test]
fn given_a_cvr_without_a_volume_label_when_planning_then_refuse_it_after_assigning_its_id() {
    let mut unlabelled = cvr("pvc-1", "cspc-a", "");
    unlabelled.metadata.labels.clear();
    let pool = pool_with(&[unlabelled.clone()], &[]);
    check(
        &unlabelled,
        &pool,
        None,
        false,
        vec![
            Action::AssignReplicaId(storage_id("uid-pvc-1-cspc-a")),
            failed(Refusal::Cstor(CstorError::NoVolumeLabel).into()),
        ],
    );
}

#[test]
fn given_a_malformed_replica_id_when_planning_then_refuse_it_and_assign_nothing() {
    let malformed = cvr("pvc-1", "cspc-a", "12a");
    let pool = pool_with(&[malformed.clone()], &[]);
    check(
        &malformed,
        &pool,
        None,
        false,
        vec![failed(
            Refusal::Cstor(CstorError::BadReplicaId("12a".into())).into(),
        )],
    );
}

#[test]
fn given_a_capacity_no_geometry_fits_when_planning_then_refuse_it() {
    let mut empty = cvr("pvc-1", "cspc-a", "1");
    empty.spec.capacity = tandem_objects::Quantity::from_bytes(0);
    let pool = pool_with(&[empty.clone()], &[]);
    let geometry = cstor::geometry(0, None).unwrap_err();
    check(
        &empty,
        &pool,
        None,
        false,
        vec![failed(Refusal::Cstor(geometry).into())],
    );
}

// Existing storage.

#[test]
fn given_sound_storage_the_host_serves_when_planning_then_measure_it_and_keep_the_targets_phase() {
    let existing = phase(cvr("pvc-1", "cspc-a", "1"), Healthy);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    check(
        &existing,
        &pool,
        meta(1),
        true,
        vec![
            Action::NoteGeometry(None),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Healthy),
        ],
    );
}

#[test]
fn given_sound_storage_after_a_restart_when_the_host_does_not_serve_it_then_serve_it() {
    let existing = phase(cvr("pvc-1", "cspc-a", "1"), Offline);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    check(
        &existing,
        &pool,
        meta(1),
        false,
        vec![
            Action::NoteGeometry(None),
            serve("pvc-1"),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Offline),
        ],
    );
}

#[test]
fn given_the_cvr_records_the_served_incarnation_when_planning_then_it_is_not_written_again() {
    let existing = with_incarnation(phase(cvr("pvc-1", "cspc-a", "1"), Offline), STORED.0);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let steps = vec![Action::NoteGeometry(None), measure("pvc-1"), ready(Offline)];
    check(&existing, &pool, meta(1), true, steps);
    // After a restart the storage is served again, with the incarnation its meta records.
    let steps = vec![
        Action::NoteGeometry(None),
        serve("pvc-1"),
        measure("pvc-1"),
        ready(Offline),
    ];
    check(&existing, &pool, meta(1), false, steps);
}

#[test]
fn given_the_cvr_records_another_incarnation_when_planning_then_the_served_one_is_written() {
    let stale = with_incarnation(phase(cvr("pvc-1", "cspc-a", "1"), Offline), 12);
    let pool = pool_with(&[stale.clone()], &["pvc-1"]);
    let steps = vec![
        Action::NoteGeometry(None),
        measure("pvc-1"),
        Action::RecordIncarnation(STORED),
        ready(Offline),
    ];
    check(&stale, &pool, meta(1), true, steps);
    // Storage created anew (its CVR recreated) gets a new incarnation, written once created.
    let recreated = with_incarnation(phase(cvr("pvc-1", "cspc-a", "1"), Recreate), 12);
    let pool = pool_with(&[recreated.clone()], &[]);
    let steps = vec![
        create("pvc-1", ReplicaId(1), false),
        serve("pvc-1"),
        measure("pvc-1"),
        Action::RecordIncarnation(NEW),
        ready(Offline),
    ];
    check(&recreated, &pool, None, false, steps);
}

#[test]
fn given_the_host_serves_no_replica_under_the_id_when_the_storage_is_not_served_anew_then_no_incarnation_is_written(
) {
    let existing = phase(cvr("pvc-1", "cspc-a", "1"), Offline);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let mut unserved = observed(&existing, meta(1), true);
    unserved.served = None;
    assert_eq!(
        plan_replica(&unserved, &pool),
        vec![Action::NoteGeometry(None), measure("pvc-1"), ready(Offline)]
    );
}

#[test]
fn given_corrupt_metadata_when_planning_then_stop_serving_it_and_report_the_error() {
    let existing = phase(cvr("pvc-1", "cspc-a", "7"), Offline);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let unreadable = "/pool/replicas/pvc-1/meta: checksum mismatch".to_string();
    check(
        &existing,
        &pool,
        Some(Err(ReplicaError::Unusable(unreadable.clone()))),
        true,
        vec![
            stop_serving("pvc-1"),
            failed(ReplicaError::Unusable(unreadable)),
        ],
    );
}

#[test]
fn given_storage_of_another_replica_id_when_planning_then_stop_serving_it_and_leave_it_untouched() {
    let existing = cvr("pvc-1", "cspc-a", "7");
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let problem = ReplicaError::AnotherReplica {
        dir: PathBuf::from("/pool/replicas/pvc-1"),
        stored: 8,
        incarnation: 99,
        wanted: 7,
    };
    assert!(problem.to_string().ends_with("it is left untouched"));
    check(
        &existing,
        &pool,
        meta(8),
        true,
        vec![stop_serving("pvc-1"), failed(problem)],
    );
}

#[test]
fn given_storage_of_another_geometry_when_planning_then_warn_and_serve_it_anyway() {
    let mut existing = phase(cvr("pvc-1", "cspc-a", "1"), Offline);
    existing.spec.capacity = tandem_objects::Quantity::from_bytes(2 * GIB);
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let actions = plan_replica(&observed(&existing, meta(1), true), &pool);
    let Some(Action::NoteGeometry(Some(warning))) = actions.first() else {
        panic!("{actions:?}");
    };
    assert!(warning.starts_with("/pool/replicas/pvc-1 holds a volume of 1073741824 bytes"));
    assert!(warning.ends_with("a target with the spec's geometry will be refused"));
    assert_eq!(
        actions[1..],
        [
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Offline)
        ]
    );
}

// Status.

#[test]
fn given_an_error_the_agent_set_when_its_cause_is_gone_then_clear_it() {
    let mut existing = cvr("pvc-1", "cspc-a", "1");
    existing.status = status(Error, "cannot create replica storage: pool p is read-only");
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let steps = vec![
        Action::NoteGeometry(None),
        measure("pvc-1"),
        Action::RecordIncarnation(STORED),
        ready(Offline),
    ];
    check(&existing, &pool, meta(1), true, steps);
}

#[test]
fn given_an_error_the_data_path_set_when_storage_is_sound_then_leave_it() {
    let mut existing = cvr("pvc-1", "cspc-a", "1");
    existing.status = status(Error, "zfs stats returned nothing");
    let pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let steps = vec![
        Action::NoteGeometry(None),
        measure("pvc-1"),
        Action::RecordIncarnation(STORED),
        Action::SetStatus {
            status: existing.status.clone(),
            problem: None,
        },
    ];
    check(&existing, &pool, meta(1), true, steps);
}

#[test]
fn given_the_target_reports_a_replica_when_planning_then_its_phase_and_progress_follow() {
    let existing = phase(cvr("pvc-1", "cspc-a", "1"), Offline);
    let mut pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let reported = ReplicaStatus {
        phase: Some(ReconstructingNewReplica),
        rebuild: Some(RebuildProgress {
            bytes_done: 1,
            bytes_total: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    pool.reported
        .insert(("pvc-1".into(), ReplicaId(1)), reported.clone());
    let mut expected = status(ReconstructingNewReplica, "");
    expected.rebuild = reported.rebuild.clone();
    check(
        &existing,
        &pool,
        meta(1),
        true,
        vec![
            Action::NoteGeometry(None),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            Action::SetStatus {
                status: expected,
                problem: None,
            },
        ],
    );
}

/// The target reports ids in their canonical decimal form; a CVR's id is matched as a number.
#[test]
fn given_an_id_written_with_a_leading_zero_when_the_target_reports_it_then_its_phase_follows() {
    let existing = phase(cvr("pvc-1", "cspc-a", "01"), Offline);
    let mut pool = pool_with(&[existing.clone()], &["pvc-1"]);
    let reported = ReplicaStatus {
        replica_id: "1".into(),
        phase: Some(Healthy),
        ..Default::default()
    };
    pool.reported
        .insert(("pvc-1".into(), ReplicaId(1)), reported);
    check(
        &existing,
        &pool,
        meta(1),
        true,
        vec![
            Action::NoteGeometry(None),
            measure("pvc-1"),
            Action::RecordIncarnation(STORED),
            ready(Healthy),
        ],
    );
}

#[test]
fn only_the_agents_phases_change() {
    for phase in [Empty, Init, Recreate] {
        assert_eq!(ready_status(&status(phase, ""), false, None).phase, Offline);
    }
    for phase in [
        Healthy,
        Degraded,
        Rebuilding,
        NewReplicaDegraded,
        ReconstructingNewReplica,
        Offline,
    ] {
        assert_eq!(ready_status(&status(phase, ""), false, None).phase, phase);
        assert_eq!(ready_status(&status(phase, ""), true, None).phase, Offline);
    }
    let ours = status(Error, "cannot create replica storage: pool p is read-only");
    assert_eq!(ready_status(&ours, false, None), status(Offline, ""));
    let theirs = status(Error, "zfs stats returned nothing");
    assert_eq!(ready_status(&theirs, false, None), theirs);
    let Action::SetStatus { status: failed, .. } =
        failed_status(&status(Healthy, ""), ReplicaError::Unusable("x".into()))
    else {
        panic!("a status");
    };
    assert_eq!(failed, status(Error, "replica storage is unusable: x"));
}

#[test]
fn given_storage_that_cannot_be_created_or_served_when_it_fails_then_the_status_says_so() {
    let dir = PathBuf::from("/pool/replicas/pvc-1");
    let create = ReplicaError::Create {
        dir: dir.clone(),
        message: "No space left on device".into(),
    };
    assert_eq!(
        failed_status(&status(Empty, ""), create.clone()),
        failed(create.clone())
    );
    assert_eq!(
        create.to_string(),
        "cannot create replica storage /pool/replicas/pvc-1: No space left on device"
    );
    let serve = ReplicaError::serve(&dir, "busy");
    assert_eq!(
        serve.to_string(),
        "replica storage /pool/replicas/pvc-1 cannot be served: busy"
    );
    let mut measured = status(Offline, "");
    let capacity = CStorVolumeReplicaCapacity {
        total: short_quantity(4096),
        used: short_quantity(0),
    };
    measured = with_capacity(measured, Some(capacity.clone()));
    assert_eq!(measured.capacity, capacity);
    assert_eq!(with_capacity(measured.clone(), None), measured);
}

// Garbage collection.

#[test]
fn given_a_cvr_marked_for_deletion_when_its_storage_exists_then_stop_serving_destroy_it_and_release_the_finalizer(
) {
    let doomed = deleted(cvr("pvc-1", "cspc-a", "1"));
    let pool = pool_with(&[doomed.clone()], &["pvc-1"]);
    check(
        &doomed,
        &pool,
        meta(1),
        true,
        vec![
            stop_serving("pvc-1"),
            remove("pvc-1"),
            Action::ReleaseFinalizer,
        ],
    );
}

#[test]
fn given_a_cvr_marked_for_deletion_when_its_metadata_is_unreadable_then_its_storage_is_still_removed(
) {
    let doomed = deleted(cvr("pvc-1", "cspc-a", "1"));
    let pool = pool_with(&[doomed.clone()], &["pvc-1"]);
    check(
        &doomed,
        &pool,
        Some(Err(ReplicaError::Unusable("checksum mismatch".into()))),
        false,
        vec![
            stop_serving("pvc-1"),
            remove("pvc-1"),
            Action::ReleaseFinalizer,
        ],
    );
}

#[test]
fn given_a_cvr_marked_for_deletion_when_it_has_no_storage_then_release_the_finalizer() {
    let doomed = deleted(cvr("pvc-1", "cspc-a", "1"));
    let pool = pool_with(&[doomed.clone()], &[]);
    check(&doomed, &pool, None, false, vec![Action::ReleaseFinalizer]);
    let mut released = doomed;
    released.metadata.finalizers.clear();
    check(&released, &pool, None, false, vec![]);
}

#[test]
fn given_a_cvr_marked_for_deletion_when_the_storage_carries_another_id_then_keep_it() {
    let doomed = deleted(cvr("pvc-1", "cspc-a", "1"));
    let pool = pool_with(&[doomed.clone()], &["pvc-1"]);
    check(
        &doomed,
        &pool,
        meta(2),
        true,
        vec![
            stop_serving("pvc-1"),
            keep("pvc-1"),
            Action::ReleaseFinalizer,
        ],
    );
}

/// A deleted CVR whose `spec.replicaid` is empty is compared with the id the agent gives it,
/// the hash of its uid: storage carrying that id is its own and is removed.
#[test]
fn given_a_cvr_marked_for_deletion_with_no_recorded_id_when_its_storage_carries_the_hash_of_its_uid_then_the_storage_is_removed_and_the_finalizer_released(
) {
    let doomed = deleted(cvr("pvc-1", "cspc-a", ""));
    let pool = pool_with(&[doomed.clone()], &["pvc-1"]);
    let hashed = storage_id("uid-pvc-1-cspc-a");
    assert_eq!(hashed, cstor::replica_id_to_assign(&doomed));
    check(
        &doomed,
        &pool,
        meta(hashed.0),
        true,
        vec![
            stop_serving("pvc-1"),
            remove("pvc-1"),
            Action::ReleaseFinalizer,
        ],
    );
}

#[test]
fn given_a_cvr_marked_for_deletion_with_no_recorded_id_when_its_storage_carries_another_id_then_it_is_kept(
) {
    let doomed = deleted(cvr("pvc-1", "cspc-a", ""));
    let pool = pool_with(&[doomed.clone()], &["pvc-1"]);
    let hashed = storage_id("uid-pvc-1-cspc-a");
    check(
        &doomed,
        &pool,
        meta(hashed.0.wrapping_add(1)),
        true,
        vec![
            stop_serving("pvc-1"),
            keep("pvc-1"),
            Action::ReleaseFinalizer,
        ],
    );
}

#[test]
fn given_a_younger_cvr_marked_for_deletion_when_another_owns_the_storage_then_leave_the_storage() {
    let older = cvr("pvc-1", "cspc-a", "1");
    let mut younger = deleted(cvr("pvc-1", "cspc-a", "2"));
    younger.metadata.name = "pvc-1-cspc-a-again".into();
    let pool = pool_with(&[older, younger.clone()], &["pvc-1"]);
    check(&younger, &pool, None, false, vec![Action::ReleaseFinalizer]);
}

#[test]
fn given_storage_without_a_cvr_when_a_pass_ends_then_it_is_an_orphan_kept_and_counted() {
    let live = cvr("pvc-1", "cspc-a", "1");
    let storage: BTreeSet<String> = ["pvc-1", "pvc-orphan"].map(String::from).into();
    let owners = owners(&[live]);
    assert_eq!(
        orphans(&storage, &owners),
        ["pvc-orphan".to_string()].into()
    );
    let hosted = ["pvc-1".to_string(), "pvc-gone".to_string()];
    assert_eq!(
        vanished(hosted.iter(), &storage),
        vec!["pvc-gone".to_string()]
    );
    let served = pool("cspc-a", "");
    let status = pool_status(&served, 1 << 20, 10 * GIB, 85, storage.len(), 3 * GIB, 1);
    assert_eq!(status.provisioned_replicas, 2);
    assert_eq!(
        status.capacity.provisioned.map(|bytes| bytes.to_string()),
        Some("3Gi".to_string())
    );
    assert_eq!(status.healthy_replicas, 1);
    assert_eq!(status.capacity.total.to_string(), "10700M");
    assert_eq!(status.phase, CStorPoolInstancePhase::Online);
    assert!(!status.read_only);
    assert!(pool_status(&served, 10 * GIB, 10 * GIB, 85, 0, 0, 0).read_only);
}

// The pool.

fn pool(name: &str, created: &str) -> CStorPoolInstance {
    let metadata = ObjectMeta {
        creation_timestamp: created.to_string(),
        ..ObjectMeta::named(name)
    };
    CStorPoolInstance::new(metadata, Default::default())
}

#[test]
fn given_no_pool_names_this_node_when_planning_then_wait() {
    assert_eq!(choose_pool(vec![]), None);
}

#[test]
fn given_two_pools_name_this_node_when_planning_then_serve_the_older_and_mark_the_other_duplicate()
{
    let older = pool("cspc-a-abcd", "2024-01-01T00:00:00Z");
    let younger = pool("cspc-b-wxyz", "2024-02-01T00:00:00Z");
    let choice = choose_pool(vec![younger.clone(), older.clone()]).unwrap();
    assert_eq!(choice.served, older);
    let duplicate = CStorPoolInstanceStatus {
        phase: CStorPoolInstancePhase::ErrorDuplicate,
        ..Default::default()
    };
    assert_eq!(
        choice.duplicates,
        vec![(younger.clone(), Some(duplicate.clone()))]
    );
    // Already marked: nothing to write.
    let mut marked = younger;
    marked.status = duplicate;
    let choice = choose_pool(vec![marked.clone(), older]).unwrap();
    assert_eq!(choice.duplicates, vec![(marked, None)]);
}

#[test]
fn given_a_directory_of_another_pool_when_claiming_then_the_pool_is_pool_creation_failed() {
    let served = pool("cspc-a-abcd", "");
    assert_eq!(
        claim_failed_status(&served).phase,
        CStorPoolInstancePhase::PoolCreationFailed
    );
}

#[test]
fn given_the_read_only_mode_changes_when_the_status_is_written_then_record_cstors_event() {
    assert_eq!(
        read_only_event(false, true),
        Some((EventType::Warning, MESSAGE_READ_ONLY_SET))
    );
    assert_eq!(
        read_only_event(true, false),
        Some((EventType::Normal, MESSAGE_READ_ONLY_UNSET))
    );
    assert_eq!(read_only_event(true, true), None);
    assert_eq!(read_only_event(false, false), None);
}
