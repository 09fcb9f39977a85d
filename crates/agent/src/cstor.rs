//! cStor objects in the core's terms: a CVR's volume, replica id, incarnation and node, a
//! volume's geometry, generation and target node, the membership a CV records, and the
//! membership change a CVC's pool list asks for. The pool reconciler and the targets read and
//! write the CVRs' labels, annotations and `spec.replicaid` and the CVs' annotations through
//! these functions only, so they cannot disagree about what an object means without it showing
//! here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use tandem_core::{Command, Generation, Geometry, Incarnation, Member, Membership, ReplicaId};
use tandem_dataplane::replica::storage;
use tandem_dataplane::target::TargetStatus;
use tandem_objects::{
    format_bytes_short, validate_object_name, CStorVolume, CStorVolumeConfig, CStorVolumeReplica,
    ObjectMeta, Quantity, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME, ANNOTATION_INCARNATION,
    ANNOTATION_TARGET_GENERATION, ANNOTATION_TARGET_NODE, LABEL_CSTOR_POOL_INSTANCE_NAME,
    LABEL_CSTOR_VOLUME_NAME, LABEL_PERSISTENT_VOLUME,
};

/// A cStor object that does not map to the core's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CstorError {
    #[error(
        "the CVR has neither a {LABEL_PERSISTENT_VOLUME} nor a {LABEL_CSTOR_VOLUME_NAME} label"
    )]
    NoVolumeLabel,
    /// The volume label is not an object name (the validation's text follows).
    #[error("the volume name {0}")]
    BadVolumeName(String),
    #[error("spec.replicaid {0:?} is not a decimal number")]
    BadReplicaId(String),
    #[error("CStorVolume {0} has a known replica that is not a number")]
    BadKnownReplica(String),
    /// No geometry fits the volume's capacity and block size (the geometry's own text).
    #[error(transparent)]
    Geometry(#[from] storage::GeometryError),
}

/// The volume a CVR is a replica of: its directory name in the pool. Checked as an object name,
/// so a label such as "../x" can never reach the file system.
pub fn volume_of(cvr: &CStorVolumeReplica) -> Result<String, CstorError> {
    let volume = [LABEL_PERSISTENT_VOLUME, LABEL_CSTOR_VOLUME_NAME]
        .iter()
        .find_map(|key| cvr.metadata.label(key).filter(|value| !value.is_empty()))
        .ok_or(CstorError::NoVolumeLabel)?;
    validate_object_name(volume).map_err(|error| CstorError::BadVolumeName(error.to_string()))?;
    Ok(volume.to_string())
}

/// The volume whose replicas a CVR is one of, as a target sees them: its persistent-volume
/// label. The control plane selects a volume's replicas by that label alone, and so does the
/// targets loop; the controller sets it (and the cStor volume-name label, to the same name) on
/// every CVR it creates. [`volume_of`], which places storage, also accepts the volume-name
/// label when the persistent-volume label is missing.
pub fn replica_volume(cvr: &CStorVolumeReplica) -> Option<&str> {
    cvr.metadata.label(LABEL_PERSISTENT_VOLUME)
}

/// The replica id a CVR records in `spec.replicaid` (a decimal u64); `None` while none is
/// assigned (the field is empty).
///
/// An empty field is not read as any id: the replica's agent assigns one
/// ([`replica_id_to_assign`]) and writes it to the CVR before any storage carries it, so a
/// target has no replica to talk to until then. (Deleting a CVR that records no id, the agent
/// compares its storage with [`replica_id_to_assign`].)
pub fn replica_id(cvr: &CStorVolumeReplica) -> Result<Option<ReplicaId>, CstorError> {
    let text = cvr.spec.replica_id.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .map(|id| Some(ReplicaId(id)))
        .map_err(|_| CstorError::BadReplicaId(text.to_string()))
}

/// Records `id` in the CVR's `spec.replicaid`.
pub fn set_replica_id(cvr: &mut CStorVolumeReplica, id: ReplicaId) {
    cvr.spec.replica_id = id.0.to_string();
}

/// The id the agent gives a CVR that has none (as cStor's pool-manager does): a stable hash of
/// its uid, so a pass interrupted before the CVR was updated picks the same one again.
pub fn replica_id_to_assign(cvr: &CStorVolumeReplica) -> ReplicaId {
    storage::replica_id_from_uid(&cvr.metadata.uid)
}

/// The incarnation of a replica's storage as its agent recorded it in the CVR (cStor's zvol
/// GUID); `None` until the storage exists.
pub fn incarnation_of(cvr: &CStorVolumeReplica) -> Option<Incarnation> {
    cvr.metadata
        .annotation(ANNOTATION_INCARNATION)
        .and_then(|value| value.parse().ok())
        .map(Incarnation)
}

/// Records the incarnation of the replica's storage in the CVR (where the target finds it).
pub fn set_incarnation(cvr: &mut CStorVolumeReplica, incarnation: Incarnation) {
    cvr.metadata.annotations.insert(
        ANNOTATION_INCARNATION.to_string(),
        incarnation.0.to_string(),
    );
}

/// The node a CVR's pool is on (whose agent serves its replica).
pub fn node_of(cvr: &CStorVolumeReplica) -> Option<&str> {
    cvr.metadata
        .annotation(ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME)
}

/// The CStorPoolInstance a CVR's storage is in.
pub fn pool_of(cvr: &CStorVolumeReplica) -> Option<&str> {
    cvr.metadata.label(LABEL_CSTOR_POOL_INSTANCE_NAME)
}

/// The geometry of a volume of `capacity` bytes: the same function for the agent creating a
/// replica and for the target serving the volume, or the replica would refuse the target.
pub fn geometry(capacity: u64, block_size: Option<u32>) -> Result<Geometry, CstorError> {
    Ok(storage::geometry_for(capacity, block_size)?)
}

/// The geometry a CVR's spec gives its volume.
pub fn geometry_of(cvr: &CStorVolumeReplica) -> Result<Geometry, CstorError> {
    geometry(cvr.spec.capacity.bytes(), cvr.spec.block_size)
}

/// The newest target generation a CV records (0: none yet).
pub fn generation_of(volume: &CStorVolume) -> u64 {
    volume
        .metadata
        .annotation(ANNOTATION_TARGET_GENERATION)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Records that the CV's newest target has `generation`.
pub fn set_generation(volume: &mut CStorVolume, generation: Generation) {
    volume.metadata.annotations.insert(
        ANNOTATION_TARGET_GENERATION.to_string(),
        generation.0.to_string(),
    );
}

/// The node a CV's target is to run on.
pub fn target_node_of(volume: &CStorVolume) -> Option<&str> {
    volume.metadata.annotation(ANNOTATION_TARGET_NODE)
}

/// The membership a CV records: every known replica, trusted, with its incarnation.
pub fn recorded_membership(volume: &CStorVolume) -> Result<Membership, CstorError> {
    let bad = || CstorError::BadKnownReplica(volume.metadata.name.clone());
    let mut members = Vec::new();
    for (id, incarnation) in &volume.spec.replica_details.known_replicas {
        members.push(Member {
            replica: ReplicaId(id.parse().map_err(|_| bad())?),
            incarnation: Some(Incarnation(incarnation.parse().map_err(|_| bad())?)),
            trusted: true,
        });
    }
    Ok(Membership { members })
}

/// What a CV records of a membership: replica id -> incarnation of every trusted member.
pub fn known_replicas(membership: &Membership) -> BTreeMap<String, String> {
    membership
        .members
        .iter()
        .filter(|member| member.trusted)
        .filter_map(|member| {
            let incarnation = member.incarnation?;
            Some((member.replica.0.to_string(), incarnation.0.to_string()))
        })
        .collect()
}

/// The next membership change the objects ask for, if any: first an addition (a scale-up's new
/// replica), then a removal (a scale-down's leaving replica).
pub fn membership_change(
    status: &TargetStatus,
    config: Option<&CStorVolumeConfig>,
    replicas: &[&CStorVolumeReplica],
) -> Option<Command> {
    let config = config?;
    let desired: BTreeSet<&str> = config.desired_pool_names().into_iter().collect();
    if desired.is_empty() {
        return None;
    }
    for cvr in replicas {
        let (Ok(Some(id)), Some(pool)) = (replica_id(cvr), pool_of(cvr)) else {
            continue;
        };
        let wanted = desired.contains(pool) && cvr.metadata.deletion_timestamp.is_empty();
        let member = status.membership.get(id).is_some();
        // A new replica has storage once its agent recorded the incarnation.
        if wanted && !member && cvr.metadata.annotation(ANNOTATION_INCARNATION).is_some() {
            return Some(Command::AddReplica(id));
        }
    }
    for member in &status.membership.members {
        let wanted = replica_of(replicas, member.replica)
            .and_then(|cvr| pool_of(cvr))
            .is_some_and(|pool| desired.contains(pool));
        if !wanted {
            return Some(Command::RemoveReplica(member.replica));
        }
    }
    None
}

/// The CVR whose replica id is `id`.
pub fn replica_of<'a>(
    replicas: &[&'a CStorVolumeReplica],
    id: ReplicaId,
) -> Option<&'a CStorVolumeReplica> {
    replicas
        .iter()
        .copied()
        .find(|cvr| replica_id(cvr) == Ok(Some(id)))
}

/// Oldest first (by creationTimestamp, then name); unreadable timestamps last.
pub fn creation_order(metadata: &ObjectMeta) -> (bool, Option<SystemTime>, String) {
    let created = humantime::parse_rfc3339_weak(&metadata.creation_timestamp).ok();
    (created.is_none(), created, metadata.name.clone())
}

/// A size as cStor reports it: three significant digits ("9.63G"), held as the quantity that
/// short form stands for, so it prints "9630M".
pub fn short_quantity(bytes: u64) -> Quantity {
    Quantity::parse(&format_bytes_short(bytes)).unwrap_or(Quantity::from_bytes(bytes))
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs)] // rows build their objects inline
mod tests {
    use super::*;
    use crate::error::{Refusal, ReplicaError};
    use crate::fixtures::{config, cvr, deleted, target, with_incarnation};
    use tandem_objects::CStorVolumeReplicaPhase;

    fn labelled(labels: &[(&str, &str)], replica_id: &str) -> CStorVolumeReplica {
        let mut metadata = ObjectMeta::named("pvc-1-cspc-a-abcd");
        metadata.uid = "uid-1".to_string();
        for (key, value) in labels {
            metadata.labels.insert(key.to_string(), value.to_string());
        }
        let mut cvr = CStorVolumeReplica::new(metadata, Default::default());
        cvr.spec.replica_id = replica_id.to_string();
        cvr.status.phase = CStorVolumeReplicaPhase::Empty;
        cvr
    }

    #[test]
    fn short_quantities_print_like_cstor() {
        assert_eq!(short_quantity(9_630_000_000).to_string(), "9630M");
        assert_eq!(short_quantity(9_634_567_890).to_string(), "9630M");
        assert_eq!(short_quantity(56_000).to_string(), "56k");
        assert_eq!(short_quantity(10_000_000_000).to_string(), "10G");
        assert_eq!(short_quantity(10 << 30).to_string(), "10700M");
        assert_eq!(short_quantity(4096).to_string(), "4100");
        assert_eq!(short_quantity(0).to_string(), "0");
        assert_eq!(short_quantity(u64::MAX).to_short_string(), "18.4E");
    }

    #[test]
    fn volume_names_come_from_labels_and_are_checked() {
        assert_eq!(
            volume_of(&labelled(&[(LABEL_PERSISTENT_VOLUME, "pvc-1")], "")),
            Ok("pvc-1".into())
        );
        assert_eq!(
            volume_of(&labelled(&[(LABEL_CSTOR_VOLUME_NAME, "pvc-2")], "")),
            Ok("pvc-2".into())
        );
        let missing = volume_of(&labelled(&[], "")).unwrap_err();
        // The text written into the CVR's status is the agent's own.
        let status = ReplicaError::from(Refusal::Cstor(missing)).to_string();
        assert!(
            status.starts_with("cannot create replica storage"),
            "{status}"
        );
        for bad in ["../x", "..", ".", "a/b", "Pvc"] {
            let error = volume_of(&labelled(&[(LABEL_PERSISTENT_VOLUME, bad)], "")).unwrap_err();
            assert!(error.to_string().contains("is not valid"), "{bad}: {error}");
        }
    }

    /// A target counts a CVR as its volume's by the persistent-volume label alone, as the
    /// control plane does; placing storage also accepts the cStor volume-name label.
    #[test]
    fn a_targets_replicas_are_the_cvrs_labelled_with_its_persistent_volume() {
        let both = labelled(
            &[
                (LABEL_PERSISTENT_VOLUME, "pvc-1"),
                (LABEL_CSTOR_VOLUME_NAME, "pvc-1"),
            ],
            "",
        );
        assert_eq!(replica_volume(&both), Some("pvc-1"));
        let only_cstor = labelled(&[(LABEL_CSTOR_VOLUME_NAME, "pvc-1")], "");
        assert_eq!(replica_volume(&only_cstor), None);
        assert_eq!(volume_of(&only_cstor), Ok("pvc-1".into()));
    }

    #[test]
    fn what_the_agent_writes_is_what_it_reads_back() {
        let mut cvr = labelled(&[], "");
        set_replica_id(&mut cvr, ReplicaId(42));
        assert_eq!(replica_id(&cvr), Ok(Some(ReplicaId(42))));
        set_incarnation(&mut cvr, Incarnation(7));
        assert_eq!(incarnation_of(&cvr), Some(Incarnation(7)));
        let mut volume = crate::fixtures::volume("pvc-1", "n1", 1, 2);
        assert_eq!(target_node_of(&volume), Some("n1"));
        set_generation(&mut volume, Generation(5));
        assert_eq!(generation_of(&volume), 5);
    }

    /// An empty `spec.replicaid` is no id at all (not the hash of the uid): the hash is the id
    /// the agent assigns, and the one a deleted CVR without an id is compared with.
    #[test]
    fn replica_ids_parse_and_an_empty_one_is_none_until_assigned() {
        assert_eq!(
            replica_id(&labelled(&[], "12345")),
            Ok(Some(ReplicaId(12345)))
        );
        assert_eq!(replica_id(&labelled(&[], " 7 ")), Ok(Some(ReplicaId(7))));
        assert_eq!(replica_id(&labelled(&[], "")), Ok(None));
        assert_eq!(replica_id(&labelled(&[], "  ")), Ok(None));
        assert_eq!(
            replica_id_to_assign(&labelled(&[], "")),
            storage::replica_id_from_uid("uid-1")
        );
        assert!(replica_id(&labelled(&[], "12a"))
            .unwrap_err()
            .to_string()
            .contains("not a decimal number"));
    }

    #[test]
    fn creation_order_is_oldest_then_name() {
        let meta = |name: &str, created: &str| ObjectMeta {
            creation_timestamp: created.to_string(),
            ..ObjectMeta::named(name)
        };
        let mut all = [
            meta("b", "2024-01-01T00:00:00Z"),
            meta("c", ""),
            meta("a", "2024-01-01T00:00:00Z"),
            meta("z", "2023-12-31T23:59:59Z"),
        ];
        all.sort_by_key(creation_order);
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["z", "a", "b", "c"]);
    }

    #[test]
    fn a_cv_records_its_membership_as_numbers() {
        let mut volume = crate::fixtures::volume("pvc-1", "n1", 1, 2);
        volume = crate::fixtures::known(volume, &[(1, 11), (2, 22)]);
        let membership = recorded_membership(&volume).unwrap();
        assert_eq!(membership.members.len(), 2);
        assert_eq!(
            known_replicas(&membership),
            volume.spec.replica_details.known_replicas
        );
        volume
            .spec
            .replica_details
            .known_replicas
            .insert("x".into(), "1".into());
        assert_eq!(
            recorded_membership(&volume).unwrap_err().to_string(),
            "CStorVolume pvc-1 has a known replica that is not a number"
        );
        assert_eq!(generation_of(&volume), 1);
        assert_eq!(generation_of(&crate::fixtures::volume("v", "n", 0, 1)), 0);
    }

    /// One row: the target's members `(id, trusted)`, the CVC's pools (`None`: no CVC), the
    /// CVRs; the command expected.
    fn check(
        members: &[(u64, bool)],
        pools: Option<&[&str]>,
        replicas: &[CStorVolumeReplica],
        expected: Option<Command>,
    ) {
        let config = pools.map(|pools| config("pvc-1", pools));
        let replicas: Vec<&CStorVolumeReplica> = replicas.iter().collect();
        let actual = membership_change(&target(members), config.as_ref(), &replicas);
        assert_eq!(actual, expected);
    }

    #[test]
    fn given_no_cvc_or_an_empty_pool_list_when_planning_then_membership_is_left_alone() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        check(&[(1, true)], None, &[a.clone()], None);
        check(&[(1, true)], Some(&[]), &[a], None);
    }

    #[test]
    fn given_a_new_pool_in_the_list_when_its_replica_has_storage_then_add_it() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        let b = with_incarnation(cvr("pvc-1", "b", "2"), 22);
        check(
            &[(1, true)],
            Some(&["a", "b"]),
            &[a, b],
            Some(Command::AddReplica(ReplicaId(2))),
        );
    }

    #[test]
    fn given_a_new_pool_in_the_list_when_its_replica_has_no_storage_yet_then_wait() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        // No incarnation recorded yet, or no replica id yet.
        check(
            &[(1, true)],
            Some(&["a", "b"]),
            &[a.clone(), cvr("pvc-1", "b", "2")],
            None,
        );
        let unassigned = with_incarnation(cvr("pvc-1", "b", ""), 22);
        check(&[(1, true)], Some(&["a", "b"]), &[a, unassigned], None);
    }

    #[test]
    fn given_a_new_replica_being_deleted_when_planning_then_it_is_not_added() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        let b = deleted(with_incarnation(cvr("pvc-1", "b", "2"), 22));
        check(&[(1, true)], Some(&["a", "b"]), &[a, b], None);
    }

    #[test]
    fn given_a_member_whose_pool_left_the_list_when_planning_then_remove_it() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        let b = with_incarnation(cvr("pvc-1", "b", "2"), 22);
        check(
            &[(1, true), (2, true)],
            Some(&["a"]),
            &[a, b],
            Some(Command::RemoveReplica(ReplicaId(2))),
        );
    }

    #[test]
    fn given_a_member_without_a_cvr_when_planning_then_remove_it() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        check(
            &[(1, true), (2, true)],
            Some(&["a", "b"]),
            &[a.clone()],
            Some(Command::RemoveReplica(ReplicaId(2))),
        );
        // A CVR whose id was erased is no longer the member's.
        let erased = with_incarnation(cvr("pvc-1", "b", ""), 22);
        check(
            &[(1, true), (2, true)],
            Some(&["a", "b"]),
            &[a, erased],
            Some(Command::RemoveReplica(ReplicaId(2))),
        );
    }

    #[test]
    fn given_an_addition_and_a_removal_when_planning_then_the_addition_comes_first() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        let b = with_incarnation(cvr("pvc-1", "b", "2"), 22);
        let c = with_incarnation(cvr("pvc-1", "c", "3"), 33);
        check(
            &[(1, true), (2, true)],
            Some(&["a", "c"]),
            &[a, b, c],
            Some(Command::AddReplica(ReplicaId(3))),
        );
    }

    #[test]
    fn given_members_matching_the_list_when_planning_then_nothing_changes() {
        let a = with_incarnation(cvr("pvc-1", "a", "1"), 11);
        let b = with_incarnation(cvr("pvc-1", "b", "2"), 22);
        check(&[(1, true), (2, false)], Some(&["a", "b"]), &[a, b], None);
    }
}
