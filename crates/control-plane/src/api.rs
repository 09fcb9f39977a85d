//! The object API: cStor objects under Kubernetes-style paths, validated and stored.
//!
//! `/apis/cstor.openebs.io/v1/namespaces/{namespace}/{plural}[/{name}]` (and
//! `/api/v1/namespaces/{namespace}/events[/{name}]` for Events) with list, get and watch (in
//! `read`, as JSON or server-side Tables), create (POST), update (PUT, naming the resource
//! version it read), patch (PATCH, in `patch`: merge or JSON patch) and delete. Every write is
//! parsed into the typed object first, so nothing malformed is ever stored; an update of a
//! CStorVolumeConfig also passes cStor's admission rules and Tandem's guards. Errors (`error`)
//! are Kubernetes `Status` documents whose message names what was wrong, unknown paths
//! included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde_json::Value;
use tandem_client::{NodeHeartbeat, NodeStatus};
use tandem_objects::{
    capacity::{provisioned_by_pool, CapacityPolicy, Provisioning, ANNOTATION_PROVISIONING},
    parse_json, parse_yaml, pool_node, validate_cspc, validate_cvc_update, validate_new_cvc,
    CStorPoolInstance, CStorVolume, CStorVolumePhase, CStorVolumeReplica, CStorVolumeReplicaPhase,
    Kind, Object, PoolLookup, RebuildPace, ANNOTATION_TARGET_NODE, LABEL_CSTOR_POOL_CLUSTER,
    LABEL_CSTOR_POOL_INSTANCE_NAME, LABEL_HOSTNAME, LABEL_PERSISTENT_VOLUME,
};
use tandem_pki::Identity;
use tandem_store::{ObjectKey, Store, StoreError};
use tokio::sync::Notify;

use crate::auth::{Caller, Write};
use crate::fence::FencedStore;

use crate::error::{resource_name, store_error, ApiError, ErrorKind};
use crate::patch::patch;
use crate::read::{get_namespace, get_one, list, list_all};

/// The API's state: the store, a signal woken on every write (this process's, and other
/// processes' to a shared store) so watches need not poll, and the newest heartbeat of every
/// node agent (kept in memory only: after a restart the agents are given one timeout to report
/// again before their pools are declared OFFLINE).
pub struct Api {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) written: Notify,
    nodes: Mutex<BTreeMap<String, (NodeHeartbeat, Instant)>>,
    started: Instant,
    agent_timeout: Duration,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Api {
    /// `agent_timeout`: how long an agent may stay silent before its node is not ready.
    pub fn new(store: Arc<dyn Store>, agent_timeout: Duration) -> Arc<Api> {
        Arc::new_cyclic(|api| Api {
            store: Arc::new(FencedStore(store)),
            written: Notify::new(),
            nodes: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            agent_timeout,
            metrics: crate::metrics::Metrics::new(api.clone()),
        })
    }

    /// Wakes watches and the controllers on writes other processes make to a store they share
    /// (other control planes on one etcd), as this process's own writes do; for the life of the
    /// API. Returns at once for a store only this process writes.
    pub async fn follow_store(self: Arc<Api>) {
        let Some(mut versions) = self.store.versions() else {
            return;
        };
        let api = Arc::downgrade(&self);
        drop(self);
        while versions.changed().await.is_ok() {
            let Some(api) = api.upgrade() else {
                return;
            };
            api.written.notify_waiters();
        }
    }
}

pub fn router(api: Arc<Api>) -> Router {
    let cstor = "/apis/cstor.openebs.io/v1";
    let object = || get(get_one).put(update).patch(patch).delete(delete);
    Router::new()
        .route(&format!("{cstor}/{{resource}}"), get(list_all))
        .route(
            &format!("{cstor}/namespaces/{{namespace}}/{{resource}}"),
            get(list).post(create),
        )
        .route(
            &format!("{cstor}/namespaces/{{namespace}}/{{resource}}/{{name}}"),
            object(),
        )
        .route(
            &format!("{cstor}/namespaces/{{namespace}}/{{resource}}/{{name}}/status"),
            put(update_status),
        )
        .route(
            "/api/v1/namespaces/{namespace}/{resource}",
            get(list).post(create),
        )
        .route("/api/v1/namespaces/{namespace}/{resource}/{name}", object())
        .route("/api/v1/namespaces/{namespace}", get(get_namespace))
        .route("/api/v1/{resource}", get(list_all))
        .route("/tandem/v1/nodes", get(list_nodes))
        .route("/tandem/v1/nodes/{node}", put(heartbeat))
        .route("/metrics", get(crate::metrics::serve))
        .merge(crate::discovery::routes())
        .merge(crate::openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::fence::layer))
        .layer(axum::middleware::from_fn(crate::auth::layer))
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            crate::metrics::track,
        ))
        .with_state(api)
}

/// Any other path, as kube-apiserver answers an unknown one (`/openapi/v2` too: kubectl reads
/// it only when `/openapi/v3` is missing).
async fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "the server could not find the requested resource",
    )
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("the server does not allow this method on the requested resource ({uri})"),
    )
}

/// A pool cannot go (from its cluster's spec, or with its cluster): a volume replica still
/// lives on it, and its data would be lost with the pool.
#[derive(Debug, thiserror::Error)]
#[error("volume still exists on pool {pool}")]
pub(crate) struct PoolHoldsReplicas {
    pool: String,
}

pub(crate) fn kind_of(resource: &str) -> Result<Kind, ApiError> {
    Kind::ALL
        .iter()
        .copied()
        .find(|kind| kind.plural() == resource)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("the server doesn't have a resource type \"{resource}\""),
            )
        })
}

pub(crate) fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind.name(), namespace, name)
}

fn to_value(object: &Object) -> Value {
    serde_json::from_str(&object.to_json()).expect("an object serializes to JSON")
}

/// Reads a stored object back into its type (it was validated when written).
pub(crate) fn typed(kind: Kind, value: &Value) -> Result<Object, ApiError> {
    parse_json(&value.to_string()).map_err(|error| {
        ApiError::internal(format!(
            "a stored {} no longer parses: {error}",
            kind.name()
        ))
    })
}

/// Parses a request body (YAML or JSON) into an object of the kind the path names.
fn parse_body(kind: Kind, namespace: &str, body: &str) -> Result<Object, ApiError> {
    let object = parse_yaml(body).map_err(|error| ApiError::bad_request(error.to_string()))?;
    if object.kind() != kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {} but the path is for {}",
            object.kind().name(),
            resource_name(kind)
        )));
    }
    if object.namespace() != namespace {
        return Err(ApiError::bad_request(format!(
            "the body's namespace \"{}\" does not match the path's \"{namespace}\"",
            object.namespace()
        )));
    }
    Ok(object)
}

async fn create(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, resource)): Path<(String, String)>,
    body: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = kind_of(&resource)?;
    let mut object = parse_body(kind, &namespace, &body)?;
    caller.may(Write::Create {
        kind,
        new: &to_value(&object),
    })?;
    admit(&api, &namespace, None, &object)?;
    let metadata = object.metadata_mut();
    metadata.uid = uuid::Uuid::new_v4().to_string();
    metadata.creation_timestamp = now_rfc3339();
    metadata.deletion_timestamp.clear();
    metadata.resource_version.clear();
    let key = key(kind, &namespace, object.name());
    let stored = api
        .store
        .create(&key, to_value(&object))
        .map_err(|e| store_error(kind, e))?;
    api.written.notify_waiters();
    Ok((StatusCode::CREATED, Json(stored.object)))
}

async fn update(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&resource)?;
    let object = parse_body(kind, &namespace, &body)?;
    let expected = required_version(&object)?;
    replace(
        &api,
        &caller,
        kind,
        &namespace,
        &name,
        object,
        expected,
        Part::Spec,
    )
}

/// `PUT .../{name}/status`: the controllers' and agents' write; only the status changes.
async fn update_status(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&resource)?;
    let object = parse_body(kind, &namespace, &body)?;
    let expected = required_version(&object)?;
    replace(
        &api,
        &caller,
        kind,
        &namespace,
        &name,
        object,
        expected,
        Part::Status,
    )
}

fn required_version(object: &Object) -> Result<u64, ApiError> {
    object
        .metadata()
        .resource_version
        .parse::<u64>()
        .map_err(|_| {
            ApiError::bad_request(
                "metadata.resourceVersion is required for an update: read the object, change it, \
             send it back",
            )
        })
}

/// Which part of an object a write may change, as with Kubernetes' status subresource: users
/// change metadata and spec, the controllers and agents that own an object change its status,
/// and neither can undo the other's work by writing back a stale copy of the other part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Spec,
    Status,
}

/// Stores `object` over the current version `expected`, keeping what the writer may not change
/// (identity, creation and deletion times, the other part), if `caller` may make that change,
/// running the admission rules for volume configs, and removing an object being deleted once
/// its last finalizer is gone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replace(
    api: &Api,
    caller: &Caller,
    kind: Kind,
    namespace: &str,
    name: &str,
    object: Object,
    expected: u64,
    part: Part,
) -> Result<Json<Value>, ApiError> {
    if object.name() != name {
        return Err(ApiError::bad_request(format!(
            "the body names \"{}\" but the path names \"{name}\"",
            object.name()
        )));
    }
    let key = key(kind, namespace, name);
    let current = api
        .store
        .get(&key)
        .map_err(|e| store_error(kind, e))?
        .ok_or_else(|| store_error(kind, StoreError::NotFound(key.clone())))?;
    let current_object = typed(kind, &current.object)?;
    let written = to_value(&object);
    let mut merged = match part {
        Part::Spec => {
            let mut merged = written;
            copy_field(&mut merged, &current.object, "status");
            merged
        }
        Part::Status => {
            let mut merged = current.object.clone();
            copy_field(&mut merged, &written, "status");
            merged["metadata"]["resourceVersion"] = written["metadata"]["resourceVersion"].clone();
            merged
        }
    };
    for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
        copy_field(&mut merged["metadata"], &current.object["metadata"], field);
    }
    let object = typed(kind, &merged)?;
    let volume_target = match (kind, caller) {
        (Kind::CStorVolumeReplica, Caller::Identified(Identity::Node(_))) => {
            volume_target(api, namespace, &current.object)?
        }
        _ => None,
    };
    caller.may(Write::Replace {
        kind,
        part,
        current: &current.object,
        new: &to_value(&object),
        volume_target: volume_target.as_deref(),
    })?;
    if part == Part::Spec {
        admit(api, namespace, Some(&current_object), &object)?;
    }
    let metadata = object.metadata();
    let stored = if !metadata.deletion_timestamp.is_empty() && metadata.finalizers.is_empty() {
        api.store
            .delete(&key, Some(expected))
            .map_err(|e| store_error(kind, e))?
    } else {
        api.store
            .update(&key, expected, to_value(&object))
            .map_err(|e| store_error(kind, e))?
    };
    api.written.notify_waiters();
    Ok(Json(stored.object))
}

/// The node the target of a replica's volume is to run on, if the volume names one.
fn volume_target(api: &Api, namespace: &str, replica: &Value) -> Result<Option<String>, ApiError> {
    let Some(volume) = replica["metadata"]["labels"][LABEL_PERSISTENT_VOLUME].as_str() else {
        return Ok(None);
    };
    let volume = api
        .store
        .get(&key(Kind::CStorVolume, namespace, volume))
        .map_err(|e| store_error(Kind::CStorVolume, e))?;
    Ok(volume.and_then(|volume| {
        volume.object["metadata"]["annotations"][ANNOTATION_TARGET_NODE]
            .as_str()
            .map(str::to_string)
    }))
}

/// Sets `target[field]` to `source[field]`, or removes it when `source` has none.
fn copy_field(target: &mut Value, source: &Value, field: &str) {
    let Some(target) = target.as_object_mut() else {
        return;
    };
    match source.get(field) {
        Some(value) => {
            target.insert(field.to_string(), value.clone());
        }
        None => {
            target.remove(field);
        }
    }
}

/// Deletes an object, or, while finalizers hold it, marks it with a deletion time so its owner
/// can clean up (a replica's agent destroys its data first) and remove the finalizer.
async fn delete(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = kind_of(&resource)?;
    let key = key(kind, &namespace, &name);
    let current = api
        .store
        .get(&key)
        .map_err(|e| store_error(kind, e))?
        .ok_or_else(|| store_error(kind, StoreError::NotFound(key.clone())))?;
    caller.may(Write::Delete {
        kind,
        current: &current.object,
    })?;
    if kind == Kind::CStorPoolCluster {
        let lookup = StoreLookup {
            store: api.store.as_ref(),
            namespace: &namespace,
        };
        let nodes: Vec<String> = current.object["spec"]["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pool| pool["nodeSelector"][LABEL_HOSTNAME].as_str())
            .map(str::to_string)
            .collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        lookup
            .refuse_pools_with_replicas(&name, &nodes)
            .map_err(|refusal| {
                api.metrics.admission_refused(kind);
                ApiError::denied(format!(
                    "cannot delete cspc {name}: {refusal}; move or delete its volumes first"
                ))
            })?;
    }
    let held = current.object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|finalizers| !finalizers.is_empty());
    let stored = if held {
        if current.object["metadata"]["deletionTimestamp"].is_string() {
            return Ok(Json(current.object));
        }
        let mut marked = current.object.clone();
        marked["metadata"]["deletionTimestamp"] = Value::String(now_rfc3339());
        api.store
            .update(&key, current.resource_version, marked)
            .map_err(|e| store_error(kind, e))?
    } else {
        api.store
            .delete(&key, Some(current.resource_version))
            .map_err(|e| store_error(kind, e))?
    };
    api.written.notify_waiters();
    Ok(Json(stored.object))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

async fn heartbeat(
    State(api): State<Arc<Api>>,
    Extension(caller): Extension<Caller>,
    Path(node): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    caller.may(Write::Heartbeat { node: &node })?;
    let heartbeat: NodeHeartbeat = serde_json::from_str(&body)
        .map_err(|error| ApiError::bad_request(format!("the heartbeat is not valid: {error}")))?;
    if heartbeat.node != node {
        return Err(ApiError::bad_request(format!(
            "the heartbeat is from node \"{}\" but the path names \"{node}\"",
            heartbeat.node
        )));
    }
    let mut nodes = api.nodes.lock().expect("the node table is never poisoned");
    // A node that was not ready, or reports new addresses, changes what the controllers see.
    let news = nodes
        .get(&node)
        .is_none_or(|(last, seen)| *last != heartbeat || seen.elapsed() > api.agent_timeout);
    nodes.insert(node, (heartbeat, Instant::now()));
    drop(nodes);
    if news {
        api.written.notify_waiters();
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn list_nodes(State(api): State<Arc<Api>>) -> Json<Vec<NodeStatus>> {
    Json(api.node_statuses())
}

impl Api {
    /// Every node that reported since this control plane started, and whether it is ready.
    pub fn node_statuses(&self) -> Vec<NodeStatus> {
        let nodes = self.nodes.lock().expect("the node table is never poisoned");
        nodes
            .values()
            .map(|(heartbeat, seen)| {
                let silent = seen.elapsed();
                NodeStatus {
                    node: heartbeat.node.clone(),
                    address: heartbeat.address.clone(),
                    nbd_address: heartbeat.nbd_address.clone(),
                    target_address: heartbeat.target_address.clone(),
                    metrics_address: heartbeat.metrics_address.clone(),
                    nbd_tls: heartbeat.nbd_tls,
                    metrics_tls: heartbeat.metrics_tls,
                    last_seen_ms: u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                    ready: silent <= self.agent_timeout,
                }
            })
            .collect()
    }

    /// Whether the start-up grace is over, and which nodes are ready: what the controllers'
    /// view of liveness depends on besides the stored objects.
    pub fn readiness(&self) -> (bool, Vec<String>) {
        let ready = self
            .node_statuses()
            .into_iter()
            .filter(|node| node.ready)
            .map(|node| node.node)
            .collect();
        (self.past_agent_grace(), ready)
    }

    /// Whether the control plane has run long enough to call a silent agent gone.
    pub fn past_agent_grace(&self) -> bool {
        self.started.elapsed() > self.agent_timeout
    }

    /// How long until the next node that is ready now stops being ready if it stays silent
    /// (its lease runs out), or the start-up grace ends: the controllers look again then, so a
    /// failover starts as soon as a lease expires, not at the next periodic pass.
    pub fn next_lease_expiry(&self) -> Option<Duration> {
        let nodes = self.nodes.lock().expect("the node table is never poisoned");
        let leases = nodes
            .values()
            .filter_map(|(_, seen)| self.agent_timeout.checked_sub(seen.elapsed()));
        let grace = self.agent_timeout.checked_sub(self.started.elapsed());
        leases.chain(grace).min()
    }
}

/// The checks a user's write passes before it is stored: new objects must be complete
/// (`validate_cspc`, `validate_new_cvc`), a CVC edit passes cStor's admission rules and
/// Tandem's guards, and a CSPC edit may not drop a pool that still holds replicas. What cStor
/// checks in its admission webhook (pool clusters, volume config edits) is refused as the
/// webhook refuses it ([`ApiError::denied`]: HTTP 400, reason BadRequest); an incomplete new
/// volume config is invalid (422).
fn admit(
    api: &Api,
    namespace: &str,
    current: Option<&Object>,
    new: &Object,
) -> Result<(), ApiError> {
    let admitted = admit_checks(api, namespace, current, new);
    if admitted.is_err() {
        api.metrics.admission_refused(new.kind());
    }
    admitted
}

fn admit_checks(
    api: &Api,
    namespace: &str,
    current: Option<&Object>,
    new: &Object,
) -> Result<(), ApiError> {
    let (invalid, denied) = (ApiError::invalid, ApiError::denied);
    let lookup = StoreLookup {
        store: api.store.as_ref(),
        namespace,
    };
    if matches!(
        new,
        Object::CStorPoolCluster(_) | Object::CStorVolumeConfig(_)
    ) {
        RebuildPace::validate(&new.metadata().annotations)
            .map_err(|error| invalid(error.to_string()))?;
    }
    match new {
        Object::CStorPoolCluster(cspc) => CapacityPolicy::validate(&cspc.metadata.annotations)
            .map_err(|error| invalid(error.to_string()))?,
        Object::CStorVolumeConfig(cvc) => {
            let provisioning = Provisioning::of(&cvc.metadata.annotations)
                .map_err(|error| invalid(error.to_string()))?;
            if let Some(Object::CStorVolumeConfig(old)) = current {
                let was = Provisioning::of(&old.metadata.annotations).unwrap_or_default();
                if was != provisioning {
                    return Err(invalid(format!(
                        "annotation {ANNOTATION_PROVISIONING}: volume {} is {was}, and a \
                         volume's provisioning cannot change after it is created",
                        cvc.name()
                    )));
                }
            }
        }
        _ => {}
    }
    match (current, new) {
        (None, Object::CStorPoolCluster(cspc)) => {
            validate_cspc(cspc).map_err(|error| denied(error.to_string()))
        }
        (None, Object::CStorVolumeConfig(cvc)) => {
            validate_new_cvc(cvc).map_err(|error| invalid(error.to_string()))
        }
        (Some(Object::CStorPoolCluster(old)), Object::CStorPoolCluster(new)) => {
            validate_cspc(new).map_err(|error| denied(error.to_string()))?;
            let kept: Vec<&str> = new
                .spec
                .pools
                .iter()
                .filter_map(|pool| pool_node(&pool.node_selector))
                .collect();
            let removed: Vec<&str> = old
                .spec
                .pools
                .iter()
                .filter_map(|pool| pool_node(&pool.node_selector))
                .filter(|node| !kept.contains(node))
                .collect();
            lookup
                .refuse_pools_with_replicas(old.name(), &removed)
                .map_err(|refusal| denied(format!("invalid cspc specification: {refusal}")))
        }
        (Some(Object::CStorVolumeConfig(old)), Object::CStorVolumeConfig(new)) => {
            validate_cvc_update(old, new, &lookup).map_err(|error| {
                denied(format!(
                    "admission webhook \"admission-webhook.cstor.openebs.io\" denied the request: {error}"
                ))
            })
        }
        _ => Ok(()),
    }
}

/// What the admission rules need, read from the store.
struct StoreLookup<'a> {
    store: &'a dyn Store,
    namespace: &'a str,
}

impl StoreLookup<'_> {
    /// Refuses when a pool of `cluster` on one of `nodes` still holds a volume replica: its
    /// data would be lost with the pool.
    fn refuse_pools_with_replicas(
        &self,
        cluster: &str,
        nodes: &[&str],
    ) -> Result<(), PoolHoldsReplicas> {
        let listed = |kind: Kind| -> Vec<Value> {
            self.store
                .list(kind.name(), Some(self.namespace))
                .map(|items| items.into_iter().map(|stored| stored.object).collect())
                .unwrap_or_default()
        };
        let replicas = listed(Kind::CStorVolumeReplica);
        for pool in listed(Kind::CStorPoolInstance) {
            let labels = &pool["metadata"]["labels"];
            let node = labels[LABEL_HOSTNAME].as_str().unwrap_or_default();
            if labels[LABEL_CSTOR_POOL_CLUSTER].as_str() != Some(cluster) || !nodes.contains(&node)
            {
                continue;
            }
            let pool_name = pool["metadata"]["name"].as_str().unwrap_or_default();
            let holds_replica = replicas.iter().any(|replica| {
                replica["metadata"]["labels"][LABEL_CSTOR_POOL_INSTANCE_NAME].as_str()
                    == Some(pool_name)
            });
            if holds_replica {
                return Err(PoolHoldsReplicas {
                    pool: pool_name.to_string(),
                });
            }
        }
        Ok(())
    }

    fn object(&self, kind: Kind, name: &str) -> Option<Object> {
        let stored = self.store.get(&key(kind, self.namespace, name)).ok()??;
        parse_json(&stored.object.to_string()).ok()
    }
}

impl PoolLookup for StoreLookup<'_> {
    fn pool_instance(&self, pool_name: &str) -> Option<CStorPoolInstance> {
        CStorPoolInstance::try_from(self.object(Kind::CStorPoolInstance, pool_name)?).ok()
    }

    fn volume_phase(&self, volume_name: &str) -> Option<CStorVolumePhase> {
        let volume = CStorVolume::try_from(self.object(Kind::CStorVolume, volume_name)?).ok()?;
        Some(volume.status.phase)
    }

    fn provisioned_bytes(&self, pool_name: &str) -> u64 {
        let stored = (self.store)
            .list(Kind::CStorVolumeReplica.name(), Some(self.namespace))
            .unwrap_or_default();
        let replicas: Vec<CStorVolumeReplica> = (stored.into_iter())
            .filter_map(|stored| serde_json::from_value::<Object>(stored.object).ok())
            .filter_map(|object| CStorVolumeReplica::try_from(object).ok())
            .collect();
        (provisioned_by_pool(&replicas).get(pool_name)).map_or(0, |bytes| *bytes)
    }

    fn capacity_policy(&self, cluster: &str) -> CapacityPolicy {
        (self.object(Kind::CStorPoolCluster, cluster))
            .map(|cspc| CapacityPolicy::lenient(&cspc.metadata().annotations))
            .unwrap_or_default()
    }

    fn replica_phase(&self, volume_name: &str, pool_name: &str) -> Option<CStorVolumeReplicaPhase> {
        // A replica is named "<volume>-<pool>"; the labels say which it is.
        let replica = CStorVolumeReplica::try_from(self.object(
            Kind::CStorVolumeReplica,
            &format!("{volume_name}-{pool_name}"),
        )?)
        .ok()?;
        let labels = &replica.metadata;
        let ours = labels.label(LABEL_PERSISTENT_VOLUME) == Some(volume_name)
            && labels.label(LABEL_CSTOR_POOL_INSTANCE_NAME) == Some(pool_name);
        ours.then_some(replica.status.phase)
    }
}
