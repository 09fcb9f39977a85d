//! Who is calling: a request that came over TLS ([`tandem_https::TlsListener`]) must carry a client
//! certificate of the cluster's CA, else it is answered 401 before any handler sees it; one that
//! came over a listener without TLS (plain HTTP on loopback, a Unix socket) is trusted, as
//! whoever can reach those is the cluster's own user. Handlers find the [`Caller`] in the
//! request's extensions, and ask [`Caller::may`] before they write: an administrator or a
//! control plane may write anything; a node's agent only what its node owns (403 otherwise,
//! naming who was refused what).

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tandem_objects::{
    Kind, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME, ANNOTATION_ENDPOINT_NODE,
    ANNOTATION_TARGET_GENERATION, ANNOTATION_TARGET_NODE, LABEL_HOSTNAME,
};
use tandem_pki::Identity;

use crate::api::Part;
use crate::error::{resource_name, ApiError, ErrorKind};
use tandem_https::Peer;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Came over a listener without TLS, which only the cluster's own user reaches.
    Trusted,
    /// Named by a client certificate of the cluster's CA.
    Identified(Identity),
}

/// Puts the [`Caller`] in the request's extensions, or answers 401.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let caller = match request.extensions().get::<ConnectInfo<Peer>>() {
        None => Caller::Trusted,
        Some(ConnectInfo(Peer {
            identity: Some(identity),
            ..
        })) => Caller::Identified(identity.clone()),
        Some(ConnectInfo(Peer { address, .. })) => {
            return ApiError::new(
                ErrorKind::Unauthorized,
                format!(
                    "Unauthorized: {address} showed no client certificate; this API takes \
                     requests only from holders of a certificate of the cluster's CA (for \
                     kubectl: tandem kubeconfig)"
                ),
            )
            .into_response();
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A write a request is about to make, with the objects it concerns as stored (normalised
/// JSON).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Write<'a> {
    Create {
        kind: Kind,
        new: &'a Value,
    },
    /// An update of `part` (a patch is an update of the spec). For a replica, `volume_target`
    /// is the node its volume's target is to run on (which publishes every replica's status).
    Replace {
        kind: Kind,
        part: Part,
        current: &'a Value,
        new: &'a Value,
        volume_target: Option<&'a str>,
    },
    Delete {
        kind: Kind,
        current: &'a Value,
    },
    /// A node agent's heartbeat for `node`.
    Heartbeat {
        node: &'a str,
    },
}

impl Caller {
    /// Whether this caller may make `write`; 403 naming who was refused what if not.
    pub(crate) fn may(&self, write: Write<'_>) -> Result<(), ApiError> {
        let node = match self {
            Caller::Trusted
            | Caller::Identified(Identity::Admin(_) | Identity::ControlPlane(_)) => return Ok(()),
            Caller::Identified(Identity::Node(node)) => node.as_str(),
        };
        match node_may(node, write) {
            Ok(()) => Ok(()),
            Err(reason) => {
                let message = format!("{}: {reason}", refused(node, write));
                tracing::warn!(%message, "request forbidden");
                Err(ApiError::new(ErrorKind::Forbidden, message))
            }
        }
    }
}

/// `cstorvolumereplicas "pvc-1-..." is forbidden: node node2 may not update it`, as
/// Kubernetes words a refusal.
fn refused(node: &str, write: Write<'_>) -> String {
    let (kind, object, verb) = match write {
        Write::Create { kind, new } => (kind, new, "create"),
        Write::Replace {
            kind,
            part: Part::Spec,
            current,
            ..
        } => (kind, current, "update"),
        Write::Replace {
            kind,
            part: Part::Status,
            current,
            ..
        } => (kind, current, "update the status of"),
        Write::Delete { kind, current } => (kind, current, "delete"),
        Write::Heartbeat { node: other } => {
            return format!("node {node} may not heartbeat for node {other}");
        }
    };
    format!(
        "{} \"{}\" is forbidden: node {node} may not {verb} it",
        resource_name(kind),
        text(&object["metadata"]["name"])
    )
}

/// What a node's agent may write: its heartbeat; events it reports; the status of its pools and
/// of the replicas on them; a replica's id, annotations and finalizers (not its spec otherwise);
/// and, for volumes whose target it hosts, the volume's and its replicas' status and the
/// membership and generation the target records.
/// Never a spec of its own choosing, never another node's objects, never a create or delete of
/// anything but events.
fn node_may(node: &str, write: Write<'_>) -> Result<(), Refusal> {
    match write {
        Write::Heartbeat { node: other } if other == node => Ok(()),
        Write::Heartbeat { .. } => Err("an agent heartbeats only for its own node".into()),
        Write::Create {
            kind: Kind::Event,
            new,
        } => reported_by(node, new),
        Write::Replace {
            kind: Kind::Event,
            current,
            new,
            ..
        } => reported_by(node, current).and_then(|()| reported_by(node, new)),
        Write::Replace {
            kind: Kind::CStorPoolInstance,
            part: Part::Status,
            current,
            ..
        } => owned(node, current, "it is on", |metadata| {
            &metadata["labels"][LABEL_HOSTNAME]
        }),
        Write::Replace {
            kind: Kind::CStorVolumeReplica,
            part: Part::Status,
            volume_target: Some(target),
            ..
        } if target == node => Ok(()),
        Write::Replace {
            kind: Kind::CStorVolumeReplica,
            part,
            current,
            new,
            ..
        } => {
            owned(node, current, "its pool is on", |metadata| {
                &metadata["annotations"][ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME]
            })?;
            match part {
                Part::Status => Ok(()),
                Part::Spec => only_changes(
                    current,
                    new,
                    "a replica's spec.replicaid, annotations and finalizers",
                    |object| {
                        forget(object, &["metadata", "finalizers"]);
                        // Every annotation but the one that says whose the replica is.
                        let annotations = object["metadata"]["annotations"]
                            .as_object()
                            .map(|annotations| annotations.keys().cloned().collect::<Vec<_>>())
                            .unwrap_or_default();
                        for annotation in annotations {
                            if annotation != ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME {
                                forget(object, &["metadata", "annotations", &annotation]);
                            }
                        }
                        forget(object, &["spec", "replicaid"]);
                    },
                ),
            }
        }
        Write::Replace {
            kind: Kind::CStorVolume,
            part,
            current,
            new,
            ..
        } => {
            owned(node, current, "its target is to run on", |metadata| {
                &metadata["annotations"][ANNOTATION_TARGET_NODE]
            })?;
            if part == Part::Status {
                return Ok(());
            }
            only_changes(
                current,
                new,
                "the membership and target generation a volume's target records \
                 (spec.replicaDetails.knownReplicas, spec.replicationFactor, \
                 spec.consistencyFactor, the target-generation and endpoint-node annotations)",
                |object| {
                    for annotation in [ANNOTATION_TARGET_GENERATION, ANNOTATION_ENDPOINT_NODE] {
                        forget(object, &["metadata", "annotations", annotation]);
                    }
                    forget(object, &["spec", "replicaDetails", "knownReplicas"]);
                    forget(object, &["spec", "replicationFactor"]);
                    forget(object, &["spec", "consistencyFactor"]);
                },
            )
        }
        Write::Create { .. } | Write::Delete { .. } => {
            Err("an agent creates and deletes nothing but its events".into())
        }
        Write::Replace { .. } => Err("an agent writes only what its node owns, never this".into()),
    }
}

/// Why a node may not make a write (the end of the 403's message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

impl From<&str> for Refusal {
    fn from(reason: &str) -> Refusal {
        Refusal(reason.to_string())
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// The event was reported from `node` (its `source.host`).
fn reported_by(node: &str, event: &Value) -> Result<(), Refusal> {
    match text(&event["source"]["host"]) {
        host if host == node => Ok(()),
        "" => Err("an agent's events name its node as source.host".into()),
        host => Err(Refusal(format!("the event is reported from node {host}"))),
    }
}

/// The object belongs to `node` by the metadata field `field` picks.
fn owned(
    node: &str,
    object: &Value,
    what: &str,
    field: impl Fn(&Value) -> &Value,
) -> Result<(), Refusal> {
    match text(field(&object["metadata"])) {
        owner if owner == node => Ok(()),
        "" => Err(Refusal(format!("{what} no node"))),
        owner => Err(Refusal(format!("{what} node {owner}"))),
    }
}

/// `current` and `new` differ only in what `strip` removes (and the resource version).
fn only_changes(
    current: &Value,
    new: &Value,
    allowed: &str,
    strip: impl Fn(&mut Value),
) -> Result<(), Refusal> {
    let normal = |object: &Value| {
        let mut object = object.clone();
        forget(&mut object, &["metadata", "resourceVersion"]);
        strip(&mut object);
        object
    };
    if normal(current) == normal(new) {
        Ok(())
    } else {
        Err(Refusal(format!("an agent may change only {allowed}")))
    }
}

/// Removes the field at `path`, and the objects on the way that it leaves empty, so that an
/// absent field and an emptied one compare equal.
fn forget(object: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        fields.remove(*first);
        return;
    }
    if let Some(inner) = fields.get_mut(*first) {
        forget(inner, rest);
        if inner.as_object().is_some_and(serde_json::Map::is_empty) {
            fields.remove(*first);
        }
    }
}
