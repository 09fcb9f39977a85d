//! Tandem's object model: cStor's kinds (CSPC, CSPI, CVC, CV, CVR) and Events with cStor's field
//! names, their YAML and JSON forms, sizes as cStor writes them, and the admission rules for an
//! edit of a CStorVolumeConfig.
//!
//! Code map:
//!
//! * `meta` — metadata, conditions, references, label keys, name rules.
//! * `kind` — [`Kind`] and every CLI spelling of it.
//! * `quantity` — [`Quantity`]: "5Gi", "10G", "9630M" to bytes and back (exact and short forms).
//! * `pool` — CSPC and CSPI spec and status types.
//! * `volume` — CVC, CV and CVR spec and status types, with their phases.
//! * `event` — [`Event`].
//! * `object` — the object types themselves and [`Object`], any of them.
//! * `parse` — YAML (one document or a `---` stream) and JSON in, with located errors; YAML and
//!   JSON out.
//! * `print` — what `get` shows of each kind: columns (with the `-o wide` ones), typed cells and
//!   kubectl's ages, shared by the CLI's tables and the control plane's server-side `Table`.
//! * `validation` — [`validate_cspc`] (cStor's CSPC webhook) and [`validate_new_cvc`].
//! * `admission` — [`validate_cvc_update`]: cStor's webhook rules, then Tandem's guards.
//!
//! Invariants: no I/O, no clock (timestamps are strings the caller sets), no randomness. An
//! object never carries an `apiVersion` or `kind` other than its type's.
//!
//! Input is strict: an unknown field is an error naming the field, its path and its line, so a
//! typo such as `replicaPoolinfo` cannot be silently ignored while the user believes the volume
//! was scaled. The only keys accepted and dropped are bookkeeping that cStor and Kubernetes print
//! (`versionDetails`, `metadata.generation`, `metadata.managedFields`, `metadata.selfLink`,
//! `metadata.generateName`, and the newer core Event fields), so a cStor object can be applied
//! as printed. cStor's pod-scheduling fields (resources, tolerations, affinity, ...) mean nothing
//! without Kubernetes and are refused.
//!
//! YAML library: `yaml_serde`, the YAML organization's maintained fork of the archived
//! `serde_yaml`: the same API and output, regular releases, and a maintained libyaml port
//! underneath. `serde_yaml_ng` and `serde_norway` both build too and behave the same on our
//! inputs, but have had no release since 2024 (`serde_yaml_ng` still sits on the archived
//! `unsafe-libyaml`). All three share one quirk handled in `parse`: the document iterator
//! repeats a syntax error forever, so reading stops at the first error.

mod admission;
pub mod capacity;
mod event;
mod kind;
mod meta;
mod object;
mod parse;
mod pool;
pub mod print;
mod quantity;
mod rebuild;
mod validation;
mod volume;

pub use admission::{
    validate_cvc_update, AdmissionError, AdmissionRule, PoolLookup, PoolSnapshot,
    CONDITION_SCALING_VOLUME_REPLICAS,
};
pub use event::{Event, EventSource, EventType};
pub use kind::{Kind, UnknownKindError};
pub use meta::{
    validate_namespace, validate_object_name, AnnotationError, Condition, NameError, ObjectMeta,
    ObjectReference, OwnerReference, ANNOTATION_CORDONED, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    ANNOTATION_ENDPOINT_NODE, ANNOTATION_INCARNATION, ANNOTATION_MIGRATE_FROM,
    ANNOTATION_TARGET_GENERATION, ANNOTATION_TARGET_NODE, CORE_API_VERSION, CSTOR_API_VERSION,
    DEFAULT_NAMESPACE, FINALIZER_CSTOR_VOLUME_REPLICA, LABEL_CAS_TYPE, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_CSTOR_POOL_INSTANCE_UID, LABEL_CSTOR_VOLUME_NAME,
    LABEL_HOSTNAME, LABEL_PERSISTENT_VOLUME, LABEL_POD_DISRUPTION_BUDGET, LABEL_VERSION,
};
pub use object::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica,
    Object, OfKind, WrongKindError,
};
pub use parse::{
    parse_json, parse_yaml, parse_yaml_stream, to_json, to_yaml, to_yaml_stream, Location,
    ParseError, ParseErrorReason,
};
pub use pool::{
    BlockDevice, CStorPoolClusterSpec, CStorPoolClusterStatus, CStorPoolInstanceCapacity,
    CStorPoolInstancePhase, CStorPoolInstanceSpec, CStorPoolInstanceStatus, PoolConfig, PoolSpec,
    RaidGroup, ZfsCapacity,
};
pub use quantity::{
    format_bytes_binary, format_bytes_short, Quantity, QuantityError, QuantityFamily,
};
pub use rebuild::{
    PaceError, RebuildPace, ANNOTATION_REBUILD_RATE, ANNOTATION_REBUILD_RATE_UNDER_LOAD,
    ANNOTATION_REBUILD_SEGMENTS, REBUILD_SEGMENTS_MAX,
};
pub use validation::{
    pool_node, validate_cspc, validate_new_cvc, ValidationError, DEFAULT_RO_THRESHOLD_PERCENT,
    REPLICAS_MAX,
};
pub use volume::{
    CStorVolumeConfigPhase, CStorVolumeConfigSpec, CStorVolumeConfigStatus, CStorVolumePhase,
    CStorVolumePolicySpec, CStorVolumeReplicaCapacity, CStorVolumeReplicaPhase,
    CStorVolumeReplicaSpec, CStorVolumeReplicaStatus, CStorVolumeSpec, CStorVolumeStatus,
    PolicyProvision, RebuildProgress, ReplicaDetails, ReplicaMode, ReplicaPolicy, ReplicaPoolInfo,
    ReplicaStatus, ResyncRecord, SnapshotInfo, StorageCapacity, TargetPolicy, VolumeProvision,
};
