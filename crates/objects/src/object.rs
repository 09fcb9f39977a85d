//! The object types (CStorPoolCluster, CStorPoolInstance, CStorVolumeConfig, CStorVolume,
//! CStorVolumeReplica: `apiVersion`, `kind`, `metadata`, `spec`, `status`) and [`Object`], any
//! one of them or an Event.
//!
//! `apiVersion` and `kind` are not stored: each type knows its own, writes them first, and
//! refuses a document that names another kind, so an object can never say it is something else.

use serde::de::{self, Deserialize, Deserializer, Error as _, IgnoredAny};
use serde::ser::{Serialize, Serializer};

use crate::event::Event;
use crate::kind::Kind;
use crate::meta::{ObjectMeta, LABEL_CSTOR_POOL_CLUSTER};
use crate::pool::{
    CStorPoolClusterSpec, CStorPoolClusterStatus, CStorPoolInstanceSpec, CStorPoolInstanceStatus,
};
use crate::volume::{
    CStorVolumeConfigSpec, CStorVolumeConfigStatus, CStorVolumeReplicaSpec,
    CStorVolumeReplicaStatus, CStorVolumeSpec, CStorVolumeStatus,
};

/// Refuses an `apiVersion` or `kind` that does not belong to `kind`. Absent fields are let
/// through: the parser reports them with their own messages, and a caller that deserializes a
/// type directly already says which kind it expects.
pub(crate) fn check_type_fields<E: de::Error>(
    kind: Kind,
    api_version: Option<&str>,
    kind_field: Option<&str>,
) -> Result<(), E> {
    if let Some(found) = kind_field {
        if found != kind.name() {
            return Err(E::custom(format!(
                "kind is {found:?}, expected {:?}",
                kind.name()
            )));
        }
    }
    if let Some(found) = api_version {
        if found != kind.api_version() {
            return Err(E::custom(format!(
                "{kind} has apiVersion {found:?}, expected {:?}",
                kind.api_version()
            )));
        }
    }
    Ok(())
}

/// Defines one cStor kind: the struct, its constructor, and its YAML/JSON form.
macro_rules! cstor_kind {
    ($(#[$attribute:meta])* $name:ident, $spec:ty, $status:ty) => {
        $(#[$attribute])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            pub metadata: ObjectMeta,
            pub spec: $spec,
            /// The default when the document has none.
            pub status: $status,
        }

        impl $name {
            pub const KIND: Kind = Kind::$name;

            /// A new object with an empty status.
            pub fn new(metadata: ObjectMeta, spec: $spec) -> Self {
                $name {
                    metadata,
                    spec,
                    status: <$status>::default(),
                }
            }

            pub fn name(&self) -> &str {
                &self.metadata.name
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Output<'a> {
                    api_version: &'static str,
                    kind: &'static str,
                    metadata: &'a ObjectMeta,
                    spec: &'a $spec,
                    #[serde(skip_serializing_if = "crate::meta::is_default_behind_reference")]
                    status: &'a $status,
                }
                Output {
                    api_version: Kind::$name.api_version(),
                    kind: Kind::$name.name(),
                    metadata: &self.metadata,
                    spec: &self.spec,
                    status: &self.status,
                }
                .serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "camelCase", deny_unknown_fields)]
                struct Input {
                    #[serde(default)]
                    api_version: Option<String>,
                    #[serde(default)]
                    kind: Option<String>,
                    #[serde(default)]
                    metadata: ObjectMeta,
                    #[serde(default)]
                    spec: $spec,
                    #[serde(default)]
                    status: $status,
                    // cStor's upgrade bookkeeping; accepted and dropped so cStor objects load.
                    #[serde(default)]
                    version_details: Option<IgnoredAny>,
                }
                let input = Input::deserialize(deserializer)?;
                check_type_fields::<D::Error>(
                    Kind::$name,
                    input.api_version.as_deref(),
                    input.kind.as_deref(),
                )?;
                let _dropped = input.version_details;
                Ok($name {
                    metadata: input.metadata,
                    spec: input.spec,
                    status: input.status,
                })
            }
        }
    };
}

cstor_kind!(
    /// A pool cluster: the pools wanted, one per node (`cspc`).
    CStorPoolCluster,
    CStorPoolClusterSpec,
    CStorPoolClusterStatus
);

cstor_kind!(
    /// One pool on one node (`cspi`), named `<cspc>-<4 random characters>`.
    CStorPoolInstance,
    CStorPoolInstanceSpec,
    CStorPoolInstanceStatus
);

cstor_kind!(
    /// A volume as asked for, and where its replicas should be (`cvc`). Named after the volume.
    CStorVolumeConfig,
    CStorVolumeConfigSpec,
    CStorVolumeConfigStatus
);

cstor_kind!(
    /// A volume's target and its trusted replicas (`cv`). Named after the volume.
    CStorVolume,
    CStorVolumeSpec,
    CStorVolumeStatus
);

cstor_kind!(
    /// One replica of a volume in one pool (`cvr`), named `<volume>-<pool>`.
    CStorVolumeReplica,
    CStorVolumeReplicaSpec,
    CStorVolumeReplicaStatus
);

impl CStorPoolInstance {
    /// The CStorPoolCluster this pool belongs to (its `openebs.io/cstor-pool-cluster` label).
    pub fn pool_cluster_name(&self) -> Option<&str> {
        self.metadata.label(LABEL_CSTOR_POOL_CLUSTER)
    }

    /// Whether its node is cordoned (`tandem node cordon`): no new replica goes here.
    pub fn cordoned(&self) -> bool {
        self.metadata
            .annotation(crate::ANNOTATION_CORDONED)
            .is_some()
    }
}

impl CStorVolumeConfig {
    /// The CStorPoolCluster the volume's replicas must be on (its `openebs.io/cstor-pool-cluster`
    /// label).
    pub fn pool_cluster_name(&self) -> Option<&str> {
        self.metadata.label(LABEL_CSTOR_POOL_CLUSTER)
    }

    /// Desired placement: `spec.policy.replicaPoolInfo[].poolName`, in order.
    pub fn desired_pool_names(&self) -> Vec<&str> {
        self.spec
            .policy
            .replica_pool_info
            .iter()
            .map(|info| info.pool_name.as_str())
            .collect()
    }

    /// Current placement: `status.poolInfo`.
    pub fn current_pool_names(&self) -> &[String] {
        &self.status.pool_info
    }

    /// cStor's definition: the desired and current pool counts differ.
    pub fn is_scaling_in_progress(&self) -> bool {
        self.spec.policy.replica_pool_info.len() != self.status.pool_info.len()
    }
}

impl CStorVolume {
    /// cStor's definition: the status still trusts more replicas than the spec, i.e. a replica
    /// is leaving and the target has not let go of it yet.
    pub fn is_scale_down_in_progress(&self) -> bool {
        self.status.replica_details.known_replicas.len()
            > self.spec.replica_details.known_replicas.len()
    }
}

/// Any object Tandem stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    CStorPoolCluster(CStorPoolCluster),
    CStorPoolInstance(CStorPoolInstance),
    CStorVolumeConfig(CStorVolumeConfig),
    CStorVolume(CStorVolume),
    CStorVolumeReplica(CStorVolumeReplica),
    Event(Event),
}

/// Asked for one kind of object, got another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a {expected}, but {name:?} is a {found}")]
pub struct WrongKindError {
    pub expected: Kind,
    pub found: Kind,
    pub name: String,
}

/// A type that is one kind of [`Object`]: read in place from an object of that kind.
pub trait OfKind: Into<Object> {
    /// The object as this type, if it is of this kind.
    fn of(object: &Object) -> Option<&Self>;
}

macro_rules! object_conversions {
    ($($name:ident),*) => {
        $(
            impl From<$name> for Object {
                fn from(object: $name) -> Self {
                    Object::$name(object)
                }
            }

            impl OfKind for $name {
                fn of(object: &Object) -> Option<&$name> {
                    match object {
                        Object::$name(inner) => Some(inner),
                        _ => None,
                    }
                }
            }

            impl TryFrom<Object> for $name {
                type Error = WrongKindError;

                fn try_from(object: Object) -> Result<Self, Self::Error> {
                    match object {
                        Object::$name(inner) => Ok(inner),
                        other => Err(WrongKindError {
                            expected: Kind::$name,
                            found: other.kind(),
                            name: other.name().to_string(),
                        }),
                    }
                }
            }
        )*
    };
}

object_conversions!(
    CStorPoolCluster,
    CStorPoolInstance,
    CStorVolumeConfig,
    CStorVolume,
    CStorVolumeReplica,
    Event
);

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::CStorPoolCluster(_) => Kind::CStorPoolCluster,
            Object::CStorPoolInstance(_) => Kind::CStorPoolInstance,
            Object::CStorVolumeConfig(_) => Kind::CStorVolumeConfig,
            Object::CStorVolume(_) => Kind::CStorVolume,
            Object::CStorVolumeReplica(_) => Kind::CStorVolumeReplica,
            Object::Event(_) => Kind::Event,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::CStorPoolCluster(object) => &object.metadata,
            Object::CStorPoolInstance(object) => &object.metadata,
            Object::CStorVolumeConfig(object) => &object.metadata,
            Object::CStorVolume(object) => &object.metadata,
            Object::CStorVolumeReplica(object) => &object.metadata,
            Object::Event(object) => &object.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::CStorPoolCluster(object) => &mut object.metadata,
            Object::CStorPoolInstance(object) => &mut object.metadata,
            Object::CStorVolumeConfig(object) => &mut object.metadata,
            Object::CStorVolume(object) => &mut object.metadata,
            Object::CStorVolumeReplica(object) => &mut object.metadata,
            Object::Event(object) => &mut object.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn namespace(&self) -> &str {
        &self.metadata().namespace
    }

    /// The object as one YAML document (no leading `---`).
    pub fn to_yaml(&self) -> String {
        crate::parse::to_yaml(self)
    }

    /// The object as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        crate::parse::to_json(self)
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Object::CStorPoolCluster(object) => object.serialize(serializer),
            Object::CStorPoolInstance(object) => object.serialize(serializer),
            Object::CStorVolumeConfig(object) => object.serialize(serializer),
            Object::CStorVolume(object) => object.serialize(serializer),
            Object::CStorVolumeReplica(object) => object.serialize(serializer),
            Object::Event(object) => object.serialize(serializer),
        }
    }
}

/// For stores and wire formats that hold objects Tandem wrote itself. It reads through an
/// in-memory tree, so errors carry no line numbers; user input goes through
/// [`crate::parse_yaml`] and [`crate::parse_json`], which do.
impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tree = serde_json::Value::deserialize(deserializer)?;
        let kind_field = tree
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| D::Error::custom("object has no `kind`"))?;
        let kind = Kind::from_kind_field(kind_field)
            .ok_or_else(|| D::Error::custom(format!("unknown kind {kind_field:?}")))?;
        let object = match kind {
            Kind::CStorPoolCluster => serde_json::from_value(tree).map(Object::CStorPoolCluster),
            Kind::CStorPoolInstance => serde_json::from_value(tree).map(Object::CStorPoolInstance),
            Kind::CStorVolumeConfig => serde_json::from_value(tree).map(Object::CStorVolumeConfig),
            Kind::CStorVolume => serde_json::from_value(tree).map(Object::CStorVolume),
            Kind::CStorVolumeReplica => {
                serde_json::from_value(tree).map(Object::CStorVolumeReplica)
            }
            Kind::Event => serde_json::from_value(tree).map(Object::Event),
        };
        object.map_err(D::Error::custom)
    }
}
