//! Reading objects: list, get and watch, filtered by label and field selectors, answered as
//! JSON or, when the client asks for one (kubectl's `get`), as a server-side `Table`.
//!
//! A watch (`?watch=true`) streams one JSON line per change after `resourceVersion`; without
//! a version (or with "0") it first sends every current object as ADDED, as Kubernetes does.
//! Asked for Tables, each event's object is a Table of one row, with the column definitions
//! in the first event only. A client that allows bookmarks (`allowWatchBookmarks=true`, as
//! client-go's reflector does) gets a BOOKMARK with the version the watch has read up to when
//! the watch ends, so its next watch starts there rather than re-reading every change of
//! other objects since its last event.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tandem_objects::{validate_namespace, Kind, Object};
use tandem_store::{ChangeKind, StoreError, Versioned};

use crate::api::{key, kind_of, typed, Api};
use crate::error::{store_error, ApiError, ErrorKind};
use crate::selector::{FieldSelector, LabelSelector};
use crate::table::{negotiate, table, IncludeObject, TableRequest};

/// How long a watch stays open at most, unless the client asks for less.
const WATCH_SECONDS_MAX: u64 = 300;

/// How many changes a watch reads from the store at a time.
const WATCH_BATCH: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadQuery {
    #[serde(default)]
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    include_object: Option<String>,
    allow_watch_bookmarks: Option<String>,
}

impl ReadQuery {
    fn watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true" | "1"))
    }

    fn bookmarks(&self) -> bool {
        matches!(self.allow_watch_bookmarks.as_deref(), Some("true" | "1"))
    }

    /// The version to watch from; `None` for "now, starting with every current object".
    fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref().unwrap_or_default() {
            "" | "0" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion \"{text}\""))),
        }
    }
}

/// What a list or watch selects, and how it answers.
#[derive(Clone)]
struct Selection {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: Option<TableRequest>,
}

impl Selection {
    fn new(
        kind: Kind,
        namespace: Option<String>,
        query: &ReadQuery,
        headers: &HeaderMap,
    ) -> Result<Selection, ApiError> {
        let bad = |error: crate::selector::SelectorError| ApiError::bad_request(error.to_string());
        let labels = LabelSelector::parse(query.label_selector.as_deref().unwrap_or_default())
            .map_err(bad)?;
        let fields =
            FieldSelector::parse(kind, query.field_selector.as_deref().unwrap_or_default())
                .map_err(bad)?;
        Ok(Selection {
            kind,
            namespace,
            labels,
            fields,
            table: table_request(query, headers)?,
        })
    }

    fn wants(&self, stored: &Versioned) -> bool {
        stored.key.kind == self.kind.name()
            && self
                .namespace
                .as_ref()
                .is_none_or(|namespace| *namespace == stored.key.namespace)
            && self.labels.matches(&stored.object)
            && self.fields.matches(&stored.object)
    }

    /// The matching objects as they are now, and the store version they were read at.
    fn current(&self, api: &Api) -> Result<(Vec<Versioned>, u64), ApiError> {
        let error = |e| store_error(self.kind, e);
        let version = api.store.current_version().map_err(error)?;
        let items = api
            .store
            .list(self.kind.name(), self.namespace.as_deref())
            .map_err(error)?
            .into_iter()
            .filter(|stored| self.wants(stored))
            .collect();
        Ok((items, version))
    }
}

fn table_request(query: &ReadQuery, headers: &HeaderMap) -> Result<Option<TableRequest>, ApiError> {
    let Some(version) = negotiate(headers) else {
        return Ok(None);
    };
    Ok(Some(TableRequest {
        version,
        include: IncludeObject::parse(query.include_object.as_deref())?,
    }))
}

/// `objects` as a Table answer of `request`.
fn table_response(
    request: TableRequest,
    kind: Kind,
    objects: &[Value],
    resource_version: &str,
) -> Result<Response, ApiError> {
    let typed_objects = objects
        .iter()
        .map(|stored| Ok((typed(kind, stored)?, stored.clone())))
        .collect::<Result<Vec<(Object, Value)>, ApiError>>()?;
    let body = table(
        request,
        kind,
        &typed_objects,
        resource_version,
        true,
        SystemTime::now(),
    );
    Ok(([(CONTENT_TYPE, request.version.content_type())], Json(body)).into_response())
}

pub(crate) async fn list_all(
    State(api): State<Arc<Api>>,
    Path(resource): Path<String>,
    Query(query): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_in(api, resource, None, query, headers)
}

pub(crate) async fn list(
    State(api): State<Arc<Api>>,
    Path((namespace, resource)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list_in(api, resource, Some(namespace), query, headers)
}

fn list_in(
    api: Arc<Api>,
    resource: String,
    namespace: Option<String>,
    query: ReadQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&resource)?;
    let selection = Selection::new(kind, namespace, &query, &headers)?;
    if query.watch() {
        return watch(api, selection, &query);
    }
    let (items, version) = selection.current(&api)?;
    let items: Vec<Value> = items.into_iter().map(|stored| stored.object).collect();
    if let Some(request) = selection.table {
        return table_response(request, kind, &items, &version.to_string());
    }
    Ok(Json(json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": { "resourceVersion": version.to_string() },
        "items": items,
    }))
    .into_response())
}

pub(crate) async fn get_one(
    State(api): State<Arc<Api>>,
    Path((namespace, resource, name)): Path<(String, String, String)>,
    Query(query): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&resource)?;
    let key = key(kind, &namespace, &name);
    let stored = api
        .store
        .get(&key)
        .map_err(|e| store_error(kind, e))?
        .ok_or_else(|| store_error(kind, StoreError::NotFound(key)))?;
    match table_request(&query, &headers)? {
        Some(request) => {
            let version = stored.resource_version.to_string();
            table_response(request, kind, &[stored.object], &version)
        }
        None => Ok(Json(stored.object).into_response()),
    }
}

/// `GET /api/v1/namespaces/{name}`: Tandem keeps no Namespace objects (an object may be
/// created in any namespace), so every well-formed name is an Active namespace. kubectl reads
/// it after a NotFound, to tell a missing object from a missing namespace.
pub(crate) async fn get_namespace(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    validate_namespace(&name).map_err(|_| {
        ApiError::new(
            ErrorKind::NotFound,
            format!("namespaces \"{name}\" not found"),
        )
    })?;
    Ok(Json(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })))
}

/// One watch event's line.
fn event_line(selection: &Selection, change: &str, object: &Value, first: bool) -> String {
    let object = match selection.table {
        None => object.clone(),
        Some(request) => match typed(selection.kind, object) {
            Ok(typed_object) => {
                let version = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let rows = [(typed_object, object.clone())];
                let now = SystemTime::now();
                table(request, selection.kind, &rows, &version, first, now)
            }
            Err(error) => return error_line(&error),
        },
    };
    format!("{}\n", json!({"type": change, "object": object}))
}

/// A BOOKMARK: every change up to `version` has been sent, as Kubernetes says it (an object of
/// the watched kind with only its resource version).
fn bookmark_line(kind: Kind, version: u64) -> String {
    let object = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.name(),
        "metadata": {"resourceVersion": version.to_string()},
    });
    format!("{}\n", json!({"type": "BOOKMARK", "object": object}))
}

fn error_line(error: &ApiError) -> String {
    format!(
        "{}\n",
        json!({"type": "ERROR", "object": error.status_document()})
    )
}

/// The state of one watch between two reads of the store.
struct Watching {
    after: u64,
    /// Whether the column definitions were sent (Tables only).
    columns_sent: bool,
}

/// Streams one JSON line per change after the query's `resourceVersion` until the timeout.
fn watch(api: Arc<Api>, selection: Selection, query: &ReadQuery) -> Result<Response, ApiError> {
    let kind = selection.kind;
    let mut initial = String::new();
    let mut columns_sent = false;
    let start = match query.resource_version()? {
        Some(version) => version,
        None => {
            let (items, version) = selection.current(&api)?;
            for stored in items {
                initial.push_str(&event_line(
                    &selection,
                    "ADDED",
                    &stored.object,
                    !columns_sent,
                ));
                columns_sent = true;
            }
            version
        }
    };
    let seconds = query
        .timeout_seconds
        .unwrap_or(WATCH_SECONDS_MAX)
        .min(WATCH_SECONDS_MAX);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    // Tables have no bookmark form; kubectl does not ask for them.
    let bookmarks = query.bookmarks() && selection.table.is_none();
    let state = Watching {
        after: start,
        columns_sent,
    };
    let changes = futures::stream::unfold(Some(state), move |state| {
        let (api, selection) = (api.clone(), selection.clone());
        async move {
            let mut state = state?;
            loop {
                // Ask to be woken before reading, so a write in between is not missed.
                let written = api.written.notified();
                let changes = match api.store.changes_since(state.after, WATCH_BATCH) {
                    Ok(changes) => changes,
                    Err(error) => {
                        let line = error_line(&store_error(kind, error));
                        return Some((Ok::<_, std::io::Error>(line), None));
                    }
                };
                // A full batch may have more behind it, already written: read on at once
                // rather than wait for the next write (a watch whose objects had not changed
                // in the last batch's worth of writes stood still until the store wrote again).
                let more = changes.len() >= WATCH_BATCH;
                if let Some(last) = changes.last() {
                    state.after = last.object.resource_version;
                }
                let mut text = String::new();
                for change in changes
                    .iter()
                    .filter(|change| selection.wants(&change.object))
                {
                    let word = match change.kind {
                        ChangeKind::Added => "ADDED",
                        ChangeKind::Modified => "MODIFIED",
                        ChangeKind::Deleted => "DELETED",
                    };
                    let first = !state.columns_sent;
                    text.push_str(&event_line(&selection, word, &change.object.object, first));
                    state.columns_sent = true;
                }
                if !text.is_empty() {
                    return Some((Ok(text), Some(state)));
                }
                if more && tokio::time::Instant::now() < deadline {
                    tokio::task::yield_now().await;
                    continue;
                }
                if tokio::time::timeout_at(deadline, written).await.is_err() {
                    return bookmarks.then(|| (Ok(bookmark_line(kind, state.after)), None));
                }
            }
        }
    });
    let initial = futures::stream::iter((!initial.is_empty()).then_some(Ok(initial)));
    Ok(Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from_stream(initial.chain(changes).boxed()))
        .expect("a valid response"))
}
