//! What every object carries besides its spec and status: metadata (name, namespace, uid,
//! resourceVersion, labels, ...), conditions and object references, the label keys cStor uses,
//! and the rules for object names.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The API group/version of every cStor kind.
pub const CSTOR_API_VERSION: &str = "cstor.openebs.io/v1";

/// The API version of Event, Kubernetes' core group (cStor records its events as core Events).
pub const CORE_API_VERSION: &str = "v1";

/// cStor keeps every object in the `openebs` namespace; an object that names none lands there.
pub const DEFAULT_NAMESPACE: &str = "openebs";

/// On a CSPI and a CVC: the CStorPoolCluster the pool belongs to / the volume's replicas must use.
pub const LABEL_CSTOR_POOL_CLUSTER: &str = "openebs.io/cstor-pool-cluster";
/// On a CVR: the volume (PV) it is a replica of.
pub const LABEL_PERSISTENT_VOLUME: &str = "openebs.io/persistent-volume";
/// On a CVR: the CStorVolume it is a replica of (same as the PV name).
pub const LABEL_CSTOR_VOLUME_NAME: &str = "cstorvolume.openebs.io/name";
/// On a CVR: the CSPI (pool) that holds it.
pub const LABEL_CSTOR_POOL_INSTANCE_NAME: &str = "cstorpoolinstance.openebs.io/name";
/// On a CVR: the uid of the CSPI that holds it.
pub const LABEL_CSTOR_POOL_INSTANCE_UID: &str = "cstorpoolinstance.openebs.io/uid";
/// On a CSPI: the node it is on.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// On a CSPI: always "cstor".
pub const LABEL_CAS_TYPE: &str = "openebs.io/cas-type";
/// On most objects: the version of the software that made them.
pub const LABEL_VERSION: &str = "openebs.io/version";
/// On a CVC (HA volumes only): the pod disruption budget covering its pools.
pub const LABEL_POD_DISRUPTION_BUDGET: &str = "openebs.io/pod-disruption-budget";
/// On a CVR: the node of the pool that holds it.
pub const ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME: &str = "cstorpoolinstance.openebs.io/hostname";
/// Tandem: the node whose agent hosts a volume's target (on the CStorVolume).
pub const ANNOTATION_TARGET_NODE: &str = "tandem.io/target-node";
/// Tandem: the node whose NBD endpoint `tandem volume uri` names by default (on the
/// CStorVolume): the node of the volume's first target, recorded once, so the default address
/// stays the same for the life of the volume (every node serves every volume).
pub const ANNOTATION_ENDPOINT_NODE: &str = "tandem.io/endpoint-node";
/// Tandem: the newest target generation started for a volume (on the CStorVolume). A target
/// takes the next number with a resource-version-checked update, so two never share one, and
/// its membership writes are refused once a newer one exists (fencing).
pub const ANNOTATION_TARGET_GENERATION: &str = "tandem.io/target-generation";
/// Tandem: on a CSPI, set by `tandem node cordon`: the pool's node takes no new replica and no
/// new target, and the targets it hosts move to other nodes.
pub const ANNOTATION_CORDONED: &str = "tandem.io/cordoned";
/// Tandem: on a CVC, the pool whose replica leaves once the volume has finished scaling up
/// (`tandem volume migrate` adds the new pool and this in one write; the volume controller then
/// removes the pool and the annotation in one write).
pub const ANNOTATION_MIGRATE_FROM: &str = "tandem.io/migrate-from";
/// Tandem: the incarnation of a replica's storage (cStor's zvol GUID), set by its agent when it
/// creates the storage (on the CStorVolumeReplica).
pub const ANNOTATION_INCARNATION: &str = "tandem.io/incarnation";
/// On a CVR: removed only once the replica's data is destroyed in its pool.
pub const FINALIZER_CSTOR_VOLUME_REPLICA: &str = "cstorvolumereplica.openebs.io/finalizer";

/// An object's metadata. Timestamps are RFC 3339 strings set by whoever writes the object (this
/// crate has no clock); empty strings and empty maps are left out of YAML and JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "ObjectMetaInput")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Opaque to clients; the store bumps it on every write, for optimistic concurrency.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    /// Set when a delete was asked for but finalizers still hold the object.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deletion_timestamp: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta {
            name: String::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            uid: String::new(),
            resource_version: String::new(),
            creation_timestamp: String::new(),
            deletion_timestamp: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            finalizers: Vec::new(),
            owner_references: Vec::new(),
        }
    }
}

impl ObjectMeta {
    /// Metadata with just a name, in the default namespace.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        }
    }

    /// Adds a label, builder style.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// What YAML and JSON may hold under `metadata`. Unknown keys are refused (a typo such as
/// `lables` must not vanish silently), except the bookkeeping fields Kubernetes prints in
/// `-o yaml` output, which are accepted and dropped so a cStor object can be applied as printed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectMetaInput {
    #[serde(default)]
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    resource_version: String,
    #[serde(default)]
    creation_timestamp: String,
    #[serde(default)]
    deletion_timestamp: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    finalizers: Vec<String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
    // Kubernetes bookkeeping, accepted and dropped (never read, on purpose).
    #[serde(default)]
    #[allow(dead_code)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    self_link: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generate_name: Option<IgnoredAny>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

impl From<ObjectMetaInput> for ObjectMeta {
    fn from(input: ObjectMetaInput) -> Self {
        ObjectMeta {
            name: input.name,
            namespace: input.namespace,
            uid: input.uid,
            resource_version: input.resource_version,
            creation_timestamp: input.creation_timestamp,
            deletion_timestamp: input.deletion_timestamp,
            labels: input.labels,
            annotations: input.annotations,
            finalizers: input.finalizers,
            owner_references: input.owner_references,
        }
    }
}

/// Points at the object that owns this one (a CVR's owner is its CStorVolume).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// Points at another object: an Event's `involvedObject`, a CVC's `cstorVolumeRef`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
}

/// A condition in a status (`PoolManagerAvailable` on a CSPC, `PoolExpansion` on a CSPI,
/// `Resizing` on a CV or CVC). cStor's condition types differ a little per kind; one shape with
/// every optional field covers them all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub condition_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_probe_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_update_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// For `skip_serializing_if`: leave a field out when it holds its default value.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// [`is_default`] for fields that hold a reference (the borrowed output structs).
pub(crate) fn is_default_behind_reference<T: Default + PartialEq>(value: &&T) -> bool {
    is_default(*value)
}

/// Why an object name or namespace was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{name:?} is {length} characters long; the limit is {limit}")]
    TooLong {
        name: String,
        length: usize,
        limit: usize,
    },
    #[error(
        "{name:?} is not valid: use lower-case letters, digits, '-'{dots}, starting and \
         ending with a letter or digit",
        dots = if *allows_dots { " and '.'" } else { "" }
    )]
    InvalidCharacters { name: String, allows_dots: bool },
}

/// Checks an object name the way Kubernetes does (an RFC 1123 subdomain: lower-case letters,
/// digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters).
/// Names end up in file paths on the nodes (a replica lives under its name in a pool), so
/// nothing like "../x" may get through.
pub fn validate_object_name(name: &str) -> Result<(), NameError> {
    validate_rfc1123(name, 253, true)
}

/// Checks a namespace (an RFC 1123 label: like a name, without dots, at most 63 characters).
pub fn validate_namespace(namespace: &str) -> Result<(), NameError> {
    validate_rfc1123(namespace, 63, false)
}

fn validate_rfc1123(name: &str, limit: usize, allows_dots: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > limit {
        return Err(NameError::TooLong {
            name: name.to_string(),
            length: name.len(),
            limit,
        });
    }
    let is_alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    let bytes = name.as_bytes();
    let ends_ok = is_alphanumeric(bytes[0]) && is_alphanumeric(bytes[bytes.len() - 1]);
    let middle_ok = bytes
        .iter()
        .all(|&byte| is_alphanumeric(byte) || byte == b'-' || (allows_dots && byte == b'.'));
    if ends_ok && middle_ok {
        Ok(())
    } else {
        Err(NameError::InvalidCharacters {
            name: name.to_string(),
            allows_dots,
        })
    }
}

/// An annotation whose value cannot be read (what admission refuses), naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is not {expected}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Annotations from `(key, value)` pairs, for the tests of what reads them.
#[cfg(test)]
pub(crate) fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(name: &str, expected: Result<(), &str>) {
        let actual = validate_object_name(name).map_err(|error| error.to_string());
        assert_eq!(actual, expected.map_err(str::to_string), "name {name:?}");
    }

    #[test]
    fn object_names() {
        let too_long = "a".repeat(254);
        let too_long_message = format!("{too_long:?} is 254 characters long; the limit is 253");
        let table: &[(&str, Result<(), &str>)] = &[
            ("pvc-d1b26676-5035-4e5b-b564-68869b023306", Ok(())),
            ("pvc-d1b26676-5035-4e5b-b564-68869b023306-cspc-stripe-pool-6qkw", Ok(())),
            ("pvc-1.17a3f0c2d4", Ok(())),
            ("a", Ok(())),
            ("", Err("must not be empty")),
            ("Pool-A", Err("\"Pool-A\" is not valid: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")),
            ("../etc", Err("\"../etc\" is not valid: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")),
            ("pool/a", Err("\"pool/a\" is not valid: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")),
            ("-pool", Err("\"-pool\" is not valid: use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit")),
            (&too_long, Err(&too_long_message)),
        ];
        for (name, expected) in table {
            check_name(name, *expected);
        }
        assert_eq!(
            validate_namespace("open.ebs").map_err(|error| error.to_string()),
            Err("\"open.ebs\" is not valid: use lower-case letters, digits, '-', starting and ending with a letter or digit".to_string())
        );
        assert_eq!(validate_namespace("openebs"), Ok(()));
    }
}
