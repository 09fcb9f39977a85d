//! Tandem's API client: typed cStor objects over the control plane's HTTP API, used by the CLI,
//! the node agents and the controllers alike (the controllers are API clients too, so every
//! write passes the same validation and admission rules whoever makes it).

mod events;
mod informer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_objects::{Event, Kind, Object};

pub use events::Recorder;
pub use informer::{Informer, Snapshot};

/// Why a request failed. Callers branch on [`ClientError::kind`] (or its shorthands
/// [`ClientError::is_not_found`] and [`ClientError::is_conflict`]); the message is fit to show
/// a user as it is.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the server's address.
    #[error("cannot reach the Tandem control plane at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    /// The server answered with an error (a Kubernetes `Status`).
    #[error("{message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// The server answered something this client cannot read.
    #[error("unexpected answer from {server}: {detail}")]
    Protocol { server: String, detail: String },
}

/// What a caller may do about a [`ClientError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing answered: try again later.
    Unreachable,
    /// The object does not exist.
    NotFound,
    /// A stale resource version (someone else wrote first), or a create of an existing name:
    /// read again and start over.
    Conflict,
    /// The server refused the request for another reason (invalid, expired, internal).
    Refused,
    /// The server answered something this client cannot read.
    Protocol,
}

impl ClientError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Unreachable { .. } => ErrorKind::Unreachable,
            ClientError::Api { code: 404, .. } => ErrorKind::NotFound,
            ClientError::Api { code: 409, .. } => ErrorKind::Conflict,
            ClientError::Api { .. } => ErrorKind::Refused,
            ClientError::Protocol { .. } => ErrorKind::Protocol,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// A stale resource version (someone else wrote first), or a create of an existing name.
    pub fn is_conflict(&self) -> bool {
        self.kind() == ErrorKind::Conflict
    }
}

/// A list and the store version it was read at (to start a watch from).
#[derive(Debug, Clone)]
pub struct ObjectList {
    pub items: Vec<Object>,
    pub resource_version: u64,
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Added(Object),
    Modified(Object),
    Deleted(Object),
}

impl WatchEvent {
    pub fn object(&self) -> &Object {
        match self {
            WatchEvent::Added(object)
            | WatchEvent::Modified(object)
            | WatchEvent::Deleted(object) => object,
        }
    }
}

/// What a node agent tells the control plane every few seconds; the control plane keeps the
/// newest one per node in memory and marks a pool OFFLINE when its agent stops reporting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeHeartbeat {
    pub node: String,
    /// Where the agent serves replicas (the data path), if it does yet.
    #[serde(default)]
    pub address: String,
    /// Where the agent serves NBD to applications: every volume, its own targets' directly and
    /// the others' forwarded to their target's node.
    #[serde(default)]
    pub nbd_address: String,
    /// Where the agent serves its own targets alone, to other nodes' forwarders (empty from an
    /// agent that predates forwarding).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_address: String,
    /// Where the agent serves its Prometheus metrics (`http(s)://ADDRESS/metrics`; empty from
    /// an agent that predates them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    /// Whether its NBD endpoints require TLS (`nbds://`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nbd_tls: bool,
    /// Whether it serves its metrics over HTTPS, to clients with a certificate of the cluster's
    /// CA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_tls: bool,
}

/// A node as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub nbd_address: String,
    /// Where the node serves its own targets to other nodes' forwarders (empty if unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_address: String,
    /// Where the node's agent serves its metrics (empty if unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
    /// Whether its NBD endpoints require TLS (`nbds://`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nbd_tls: bool,
    /// Whether its metrics are served over HTTPS (`https://METRICS_ADDRESS/metrics`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics_tls: bool,
    /// Milliseconds since the agent last reported.
    pub last_seen_ms: u64,
    /// Whether it reported within the control plane's agent timeout.
    pub ready: bool,
}

/// One control-plane address and the HTTP client that reaches it.
#[derive(Clone)]
struct Endpoint {
    /// The address as given: `http://HOST:PORT` or `unix:PATH`.
    server: String,
    /// What request URLs start with: the server itself over TCP, a placeholder host over a
    /// Unix socket (the socket decides where the request goes).
    base: String,
    http: reqwest::Client,
}

/// How a client proves itself to control planes served over TLS (`https://` addresses): it
/// trusts only the cluster's CA and shows a certificate of it.
#[derive(Clone)]
pub struct Credentials {
    config: tandem_pki::rustls::ClientConfig,
    identity: tandem_pki::Identity,
}

impl Credentials {
    /// `ca`: the cluster CA's certificate (PEM); `credential`: this client's certificate and key.
    pub fn new(
        ca: &str,
        credential: &tandem_pki::Credential,
    ) -> Result<Credentials, tandem_pki::PkiError> {
        Ok(Credentials {
            config: tandem_pki::client_config(ca, Some(credential))?,
            identity: credential.identity()?,
        })
    }

    /// [`Credentials::new`] from files: the CA's certificate, this client's certificate and key.
    pub fn load(
        ca: &std::path::Path,
        certificate: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Credentials, tandem_pki::PkiError> {
        let ca_pem = std::fs::read_to_string(ca).map_err(|source| tandem_pki::PkiError::File {
            path: ca.to_path_buf(),
            source,
        })?;
        Credentials::new(&ca_pem, &tandem_pki::Credential::load(certificate, key)?)
    }

    /// Who the certificate says this client is.
    pub fn identity(&self) -> &tandem_pki::Identity {
        &self.identity
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.identity)
    }
}

impl Endpoint {
    fn new(server: &str, credentials: Option<&Credentials>) -> Result<Endpoint, ClientError> {
        let server = server.trim().trim_end_matches('/').to_string();
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        let (base, builder) = if let Some(path) = server.strip_prefix(UNIX_SCHEME) {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(ClientError::Protocol {
                    server,
                    detail: "a Unix socket address is unix:/absolute/path".to_string(),
                });
            }
            let socket = std::path::PathBuf::from(path);
            ("http://localhost".to_string(), builder.unix_socket(socket))
        } else if server.starts_with("http://") {
            (server.clone(), builder)
        } else if server.starts_with("https://") {
            let Some(credentials) = credentials else {
                return Err(ClientError::Protocol {
                    server,
                    detail: "a control plane served over TLS needs the cluster's CA and a \
                             certificate of it to be reached (--ca, --certificate and --key)"
                        .to_string(),
                });
            };
            (
                server.clone(),
                builder.use_preconfigured_tls(credentials.config.clone()),
            )
        } else {
            return Err(ClientError::Protocol {
                server,
                detail: "the server address must start with http://, https:// or unix:".to_string(),
            });
        };
        let http = builder.build().map_err(|error| ClientError::Protocol {
            server: server.clone(),
            detail: format!("cannot build an HTTP client: {error}"),
        })?;
        Ok(Endpoint { server, base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A client of one Tandem cluster's control planes. Given several addresses it sends each
/// request to the one that answered last and moves on to the next when that one cannot be
/// reached, does not start answering within [`ANSWER_PATIENCE`], or answers 503 (it lost its
/// store); every control plane serves the whole API.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<[Endpoint]>,
    /// The index of the endpoint that answered last.
    current: Arc<AtomicUsize>,
    /// The leader term every request carries ([`TERM_HEADER`]), for the controllers' writes.
    term: Option<i64>,
}

/// The header that carries the controllers' leader term: a control plane on etcd makes each
/// write with it conditional on that term still leading, so a deposed leader writes nothing.
pub const TERM_HEADER: &str = "x-tandem-leader-term";

/// With several control planes, how long one may take to start answering a request before the
/// request goes to the next (a paused or wedged process accepts connections but never answers).
/// Longer than the store's own deadline, so a control plane that lost its store says so first.
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(10);

/// The scheme of a control plane reached over a Unix socket: `unix:/path/to/control-plane.sock`.
pub const UNIX_SCHEME: &str = "unix:";

impl Client {
    /// A client of the control plane at `server`: `http://127.0.0.1:7070` over TCP, or
    /// `unix:/path/to/control-plane.sock` over a Unix socket (a control plane in another
    /// network namespace is reached that way from this one). Several control planes of one
    /// cluster are given separated by commas: `http://10.0.0.1:7070,http://10.0.0.2:7070`.
    pub fn new(server: &str) -> Result<Client, ClientError> {
        Client::with_credentials(server, None)
    }

    /// [`Client::new`], showing `credentials` to control planes served over TLS (`https://`).
    pub fn with_credentials(
        server: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Client, ClientError> {
        let endpoints = server
            .split(',')
            .filter(|address| !address.trim().is_empty())
            .map(|address| Endpoint::new(address, credentials))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::Protocol {
                server: server.to_string(),
                detail: "no control-plane address given".to_string(),
            });
        }
        Ok(Client {
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            term: None,
        })
    }

    /// This client, every request of which carries the leader `term` (see [`TERM_HEADER`]).
    pub fn in_term(&self, term: i64) -> Client {
        Client {
            term: Some(term),
            ..self.clone()
        }
    }

    /// The address of the control plane that answered last (the first given, before any
    /// request).
    pub fn server(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()].server
    }

    /// A client of each control plane given, on its own (node agents report to every one, so
    /// whichever leads knows every node).
    pub fn each(&self) -> Vec<Client> {
        self.endpoints
            .iter()
            .map(|endpoint| Client {
                endpoints: Arc::new([endpoint.clone()]),
                current: Arc::new(AtomicUsize::new(0)),
                term: self.term,
            })
            .collect()
    }

    /// Every address given, in order, separated by commas.
    pub fn servers(&self) -> String {
        let servers: Vec<&str> = self.endpoints.iter().map(|e| e.server.as_str()).collect();
        servers.join(",")
    }

    fn collection_path(kind: Kind, namespace: Option<&str>) -> String {
        let group = match kind {
            Kind::Event => "api/v1".to_string(),
            _ => "apis/cstor.openebs.io/v1".to_string(),
        };
        match namespace {
            Some(namespace) => format!("/{group}/namespaces/{namespace}/{}", kind.plural()),
            None => format!("/{group}/{}", kind.plural()),
        }
    }

    fn object_path(kind: Kind, namespace: &str, name: &str) -> String {
        format!("{}/{name}", Client::collection_path(kind, Some(namespace)))
    }

    /// Sends the request `build` makes for an endpoint, starting with the one that answered
    /// last. A request that could not be delivered (no connection) or that a control plane
    /// refused as unavailable (503) goes to the next; each endpoint is tried once.
    async fn send(
        &self,
        build: impl Fn(&Endpoint) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, &Endpoint), ClientError> {
        let first = self.current.load(Ordering::Relaxed);
        let several = self.endpoints.len() > 1;
        let mut failures = Vec::new();
        let mut last_refusal = None;
        for attempt in 0..self.endpoints.len() {
            let index = (first + attempt) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let mut request = build(endpoint);
            if let Some(term) = self.term {
                request = request.header(TERM_HEADER, term);
            }
            let sent = if several {
                tokio::time::timeout(ANSWER_PATIENCE, request.send()).await
            } else {
                Ok(request.send().await)
            };
            let response = match sent {
                Ok(Ok(response)) => response,
                Ok(Err(error)) if error.is_connect() && several => {
                    failures.push(format!("{}: {}", endpoint.server, cause(&error)));
                    continue;
                }
                Ok(Err(error)) => return Err(unreachable_at(&endpoint.server, &error)),
                Err(_) => {
                    failures.push(format!(
                        "{}: no answer within {ANSWER_PATIENCE:?}",
                        endpoint.server
                    ));
                    continue;
                }
            };
            let status = response.status();
            if status.is_success() {
                self.current.store(index, Ordering::Relaxed);
                return Ok((response, endpoint));
            }
            let error = api_error(response).await;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && several {
                failures.push(format!("{}: {error}", endpoint.server));
                last_refusal = Some(error);
                continue;
            }
            self.current.store(index, Ordering::Relaxed);
            return Err(error);
        }
        match last_refusal {
            // Some control plane answered, none could serve: say so in the servers' words.
            Some(ClientError::Api { code, reason, .. }) => Err(ClientError::Api {
                code,
                reason,
                message: format!("no control plane can serve: {}", failures.join("; ")),
            }),
            _ => Err(ClientError::Unreachable {
                server: self.servers(),
                detail: failures.join("; "),
            }),
        }
    }

    /// Sends a request and reads the JSON answer.
    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        build: impl Fn(&Endpoint) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let (response, endpoint) = self.send(build).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|error| unreachable_at(&endpoint.server, &error))?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol {
            server: endpoint.server.clone(),
            detail: error.to_string(),
        })
    }

    /// Every object of `kind` in `namespace` (all namespaces if `None`) whose labels match
    /// `selector` (`key=value[,key=value]`).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<ObjectList, ClientError> {
        let path = Client::collection_path(kind, namespace);
        #[derive(Deserialize)]
        struct ListMetadata {
            #[serde(rename = "resourceVersion")]
            resource_version: String,
        }
        #[derive(Deserialize)]
        struct List {
            metadata: ListMetadata,
            items: Vec<Object>,
        }
        let list: List = self
            .json(|e| {
                let request = e.http.get(e.url(&path));
                match selector {
                    Some(selector) => request.query(&[("labelSelector", selector)]),
                    None => request,
                }
            })
            .await?;
        Ok(ObjectList {
            items: list.items,
            resource_version: list.metadata.resource_version.parse().unwrap_or(0),
        })
    }

    /// The objects of one type, e.g. `client.list_typed::<CStorPoolInstance>(...)`.
    pub async fn list_typed<T: TryFrom<Object>>(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        let list = self.list(kind, namespace, selector).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|object| T::try_from(object).ok())
            .collect())
    }

    pub async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        let path = Client::object_path(kind, namespace, name);
        self.json(|e| e.http.get(e.url(&path))).await
    }

    /// [`Client::get`], `None` when there is no such object.
    pub async fn find(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Object>, ClientError> {
        match self.get(kind, namespace, name).await {
            Ok(object) => Ok(Some(object)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn create(&self, object: &Object) -> Result<Object, ClientError> {
        let path = Client::collection_path(object.kind(), Some(object.namespace()));
        let body = object.to_json();
        self.json(|e| e.http.post(e.url(&path)).body(body.clone()))
            .await
    }

    /// Replaces the spec and metadata of `object`, which must carry the resource version it
    /// was read at (a stale one is a conflict). The status is not changed.
    pub async fn update(&self, object: &Object) -> Result<Object, ClientError> {
        let path = Client::object_path(object.kind(), object.namespace(), object.name());
        let body = object.to_json();
        self.json(|e| e.http.put(e.url(&path)).body(body.clone()))
            .await
    }

    /// Replaces the status of `object` (the controllers' and agents' write), under the same
    /// resource-version rule as [`Client::update`]. Spec and metadata are not changed.
    pub async fn update_status(&self, object: &Object) -> Result<Object, ClientError> {
        let path = Client::object_path(object.kind(), object.namespace(), object.name());
        let (path, body) = (format!("{path}/status"), object.to_json());
        self.json(|e| e.http.put(e.url(&path)).body(body.clone()))
            .await
    }

    /// A JSON merge patch (RFC 7396) of spec and metadata.
    pub async fn patch(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Object, ClientError> {
        let path = Client::object_path(kind, namespace, name);
        let body = patch.to_string();
        self.json(|e| {
            e.http
                .patch(e.url(&path))
                .header("content-type", "application/merge-patch+json")
                .body(body.clone())
        })
        .await
    }

    /// Deletes an object. One with finalizers is only marked (`deletionTimestamp`) and goes
    /// once its owners have removed them; the answer is the object as it then is.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Object, ClientError> {
        let path = Client::object_path(kind, namespace, name);
        self.json(|e| e.http.delete(e.url(&path))).await
    }

    /// Changes to objects of `kind` after `resource_version`, for at most `timeout`. The
    /// server's bookmarks are asked for: [`Watch::version`] then says where the next watch
    /// starts.
    pub async fn watch(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
        resource_version: u64,
        timeout: Duration,
    ) -> Result<Watch, ClientError> {
        let mut query = vec![
            ("watch", "true".to_string()),
            ("resourceVersion", resource_version.to_string()),
            ("timeoutSeconds", timeout.as_secs().max(1).to_string()),
            ("allowWatchBookmarks", "true".to_string()),
        ];
        if let Some(selector) = selector {
            query.push(("labelSelector", selector.to_string()));
        }
        let path = Client::collection_path(kind, namespace);
        let (response, endpoint) = self
            .send(|e| e.http.get(e.url(&path)).query(&query))
            .await?;
        Ok(Watch {
            server: endpoint.server.clone(),
            response,
            buffer: Vec::new(),
            version: resource_version,
        })
    }

    /// The events about one object, oldest first.
    pub async fn events_about(&self, object: &Object) -> Result<Vec<Event>, ClientError> {
        let mut events: Vec<Event> = self
            .list_typed(Kind::Event, Some(object.namespace()), None)
            .await?;
        events.retain(|event| {
            event.involved_object.kind == object.kind().name()
                && event.involved_object.name == object.name()
        });
        events.sort_by(|a, b| a.last_timestamp.cmp(&b.last_timestamp));
        Ok(events)
    }

    /// A node agent's periodic report.
    pub async fn heartbeat(&self, heartbeat: &NodeHeartbeat) -> Result<(), ClientError> {
        let path = format!("/tandem/v1/nodes/{}", heartbeat.node);
        self.send(|e| e.http.put(e.url(&path)).json(heartbeat))
            .await
            .map(drop)
    }

    /// Every node that has reported since the control plane started.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        self.json(|e| e.http.get(e.url("/tandem/v1/nodes"))).await
    }
}

/// An open watch: call [`Watch::next`] until it returns `None` (the server's timeout).
pub struct Watch {
    /// The control plane the watch is open on.
    server: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// The newest version the server has said everything up to was sent (an event's, or a
    /// bookmark's).
    version: u64,
}

impl Watch {
    /// The next change; `None` when the server ended the watch. Bookmarks are not changes:
    /// they only move [`Watch::version`].
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (version, event) = self.parse(&line)?;
                if let Some(version) = version {
                    self.version = self.version.max(version);
                }
                match event {
                    Some(event) => return Ok(Some(event)),
                    None => continue,
                }
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(error) => return Err(unreachable_at(&self.server, &error)),
            }
        }
    }

    /// Where a watch after this one starts: every change up to it has been seen.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A line's resource version and its change (`None`: a bookmark).
    fn parse(&self, line: &[u8]) -> Result<(Option<u64>, Option<WatchEvent>), ClientError> {
        #[derive(Deserialize)]
        struct Line {
            #[serde(rename = "type")]
            change: String,
            object: Value,
        }
        let protocol = |detail: String| ClientError::Protocol {
            server: self.server.clone(),
            detail,
        };
        let line: Line = serde_json::from_slice(line)
            .map_err(|error| protocol(format!("watch line: {error}")))?;
        if line.change == "ERROR" {
            return Err(ClientError::Api {
                code: 410,
                reason: "Expired".to_string(),
                message: line.object["message"]
                    .as_str()
                    .unwrap_or("watch failed")
                    .to_string(),
            });
        }
        let version = line.object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|version| version.parse().ok());
        if line.change == "BOOKMARK" {
            return Ok((version, None));
        }
        let object: Object = serde_json::from_value(line.object)
            .map_err(|error| protocol(format!("watched object: {error}")))?;
        let event = match line.change.as_str() {
            "ADDED" => WatchEvent::Added(object),
            "MODIFIED" => WatchEvent::Modified(object),
            "DELETED" => WatchEvent::Deleted(object),
            other => return Err(protocol(format!("unknown watch event type {other:?}"))),
        };
        Ok((version, Some(event)))
    }
}

/// The innermost cause of a transport error: reqwest's own text ("error sending request for
/// url ...") buries it.
fn cause(error: &reqwest::Error) -> String {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    detail
}

fn unreachable_at(server: &str, error: &reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        server: server.to_string(),
        detail: cause(error),
    }
}

/// A refusal, from the Kubernetes `Status` the server answered with.
async fn api_error(response: reqwest::Response) -> ClientError {
    let code = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_string();
    let message = match text("message") {
        message if message.is_empty() => format!("the server answered HTTP {code}"),
        message => message,
    };
    ClientError::Api {
        code,
        reason: text("reason"),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn addresses_are_http_urls_or_absolute_unix_socket_paths() {
        for good in [
            "http://127.0.0.1:7070",
            "unix:/run/cp.sock",
            "unix:///run/cp.sock",
        ] {
            assert!(Client::new(good).is_ok(), "{good}");
        }
        for (bad, expected) in [
            (
                "127.0.0.1:7070",
                "must start with http://, https:// or unix:",
            ),
            ("unix:cp.sock", "unix:/absolute/path"),
            // TLS needs the cluster's CA and a credential (tests/tls.rs in the control plane).
            ("https://cp.example:7070/", "the cluster's CA"),
        ] {
            let error = Client::new(bad).err().expect(bad).to_string();
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    /// A request over a Unix socket reaches the server listening on it, and a socket nobody
    /// listens on is "unreachable", naming the address.
    #[tokio::test]
    async fn a_unix_socket_carries_the_requests() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("cp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader
                .read_line(&mut request_line)
                .expect("the request line");
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).expect("a header");
                if header == "\r\n" || header.is_empty() {
                    break;
                }
            }
            let body = r#"[{"node":"node1","lastSeenMs":5,"ready":true}]"#;
            write!(
                &stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("answer");
            request_line
        });
        let client = Client::new(&format!("unix:{}", socket.display())).expect("a client");
        let nodes = client.nodes().await.expect("an answer over the socket");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].node, "node1");
        let request_line = server.join().expect("the server");
        assert!(
            request_line.starts_with("GET /tandem/v1/nodes HTTP/1.1"),
            "{request_line}"
        );

        std::fs::remove_file(&socket).expect("remove the socket");
        let error = client.nodes().await.expect_err("nobody listens");
        assert_eq!(error.kind(), ErrorKind::Unreachable);
        assert!(error.to_string().contains("unix:"), "{error}");
    }

    #[test]
    fn heartbeats_without_a_target_address_still_read_and_new_ones_carry_it() {
        let old: NodeHeartbeat = serde_json::from_str(
            r#"{"node":"n1","address":"10.0.0.1:7000","nbdAddress":"10.0.0.1:10809"}"#,
        )
        .expect("an old heartbeat");
        assert_eq!(old.target_address, "");
        assert_eq!(old.metrics_address, "");
        assert_eq!(
            serde_json::to_value(&old).expect("serialize"),
            serde_json::json!({"node":"n1","address":"10.0.0.1:7000","nbdAddress":"10.0.0.1:10809"})
        );
        let new = NodeHeartbeat {
            target_address: "10.0.0.1:41000".into(),
            metrics_address: "10.0.0.1:9580".into(),
            ..old
        };
        let json = serde_json::to_value(&new).expect("serialize");
        assert_eq!(json["targetAddress"], "10.0.0.1:41000");
        assert_eq!(json["metricsAddress"], "10.0.0.1:9580");
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "node": "n1", "nbdAddress": "10.0.0.1:10809", "lastSeenMs": 5, "ready": true,
            "targetAddress": "10.0.0.1:41000"
        }))
        .expect("a node status");
        assert_eq!(status.target_address, "10.0.0.1:41000");
    }

    /// Answers one HTTP request on `listener` with `status` and `body`; returns its request line.
    fn answer_once(
        listener: std::net::TcpListener,
        status: &'static str,
        body: &'static str,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader
                .read_line(&mut request_line)
                .expect("the request line");
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).expect("a header");
                if header == "\r\n" || header.is_empty() {
                    break;
                }
            }
            write!(
                &stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("answer");
            request_line
        })
    }

    /// A port nothing listens on (bound, then closed).
    fn closed_port() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        format!("http://{address}")
    }

    /// Of several control planes, one that is gone and one that lost its store (503) are
    /// passed over; the one that serves answers, and later requests start with it.
    #[tokio::test]
    async fn several_addresses_pass_over_the_gone_and_the_unavailable() {
        let unavailable = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let serving = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addresses = [
            closed_port(),
            format!("http://{}", unavailable.local_addr().expect("address")),
            format!("http://{}", serving.local_addr().expect("address")),
        ];
        let refused = answer_once(
            unavailable,
            "503 Service Unavailable",
            r#"{"kind":"Status","code":503,"reason":"ServiceUnavailable","message":"store: etcd has no quorum"}"#,
        );
        let served = answer_once(
            serving,
            "200 OK",
            r#"[{"node":"n1","lastSeenMs":5,"ready":true}]"#,
        );
        let client = Client::new(&addresses.join(",")).expect("a client");
        assert_eq!(client.server(), addresses[0]);
        let nodes = client.nodes().await.expect("the third answers");
        assert_eq!(nodes[0].node, "n1");
        assert_eq!(
            client.server(),
            addresses[2],
            "later requests start with it"
        );
        assert!(refused
            .join()
            .expect("refused")
            .starts_with("GET /tandem/v1/nodes"));
        assert!(served
            .join()
            .expect("served")
            .starts_with("GET /tandem/v1/nodes"));

        // Now none serves: the error names every address and why.
        let error = client.nodes().await.expect_err("nobody listens any more");
        assert_eq!(error.kind(), ErrorKind::Unreachable);
        for address in &addresses {
            assert!(error.to_string().contains(address.as_str()), "{error}");
        }
    }

    #[test]
    fn an_empty_address_list_is_refused() {
        let error = Client::new(" , ").err().expect("no address").to_string();
        assert!(error.contains("no control-plane address given"), "{error}");
    }

    /// A control plane that accepts connections but never answers (paused) is passed over
    /// after [`ANSWER_PATIENCE`].
    #[tokio::test]
    async fn a_silent_control_plane_is_passed_over() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let serving = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addresses = [
            format!("http://{}", silent.local_addr().expect("address")),
            format!("http://{}", serving.local_addr().expect("address")),
        ];
        let served = answer_once(serving, "200 OK", r#"[]"#);
        let client = Client::new(&addresses.join(",")).expect("a client");
        let started = std::time::Instant::now();
        let nodes = client.nodes().await.expect("the second answers");
        assert!(nodes.is_empty());
        assert!(started.elapsed() >= ANSWER_PATIENCE);
        assert_eq!(client.server(), addresses[1]);
        served.join().expect("served");
        drop(silent);
    }
}
