//! Tandem's API client: typed cStor objects over the control plane's HTTP API, used by the CLI,
//! the node agents and the controllers alike (the controllers are API clients too, so every
//! write passes the same validation and admission rules whoever makes it).

mod events;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_objects::{Event, Kind, Object};

pub use events::Recorder;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Where the agent serves its Prometheus metrics (`http://ADDRESS/metrics`; empty from an
    /// agent that predates them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_address: String,
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
    /// Milliseconds since the agent last reported.
    pub last_seen_ms: u64,
    /// Whether it reported within the control plane's agent timeout.
    pub ready: bool,
}

#[derive(Clone)]
pub struct Client {
    /// The address as given: `http://HOST:PORT` or `unix:PATH`.
    server: String,
    /// What request URLs start with: the server itself over TCP, a placeholder host over a
    /// Unix socket (the socket decides where the request goes).
    base: String,
    http: reqwest::Client,
}

/// The scheme of a control plane reached over a Unix socket: `unix:/path/to/control-plane.sock`.
pub const UNIX_SCHEME: &str = "unix:";

impl Client {
    /// A client of the control plane at `server`: `http://127.0.0.1:7070` over TCP, or
    /// `unix:/path/to/control-plane.sock` over a Unix socket (a control plane in another
    /// network namespace is reached that way from this one).
    pub fn new(server: &str) -> Result<Client, ClientError> {
        let server = server.trim_end_matches('/').to_string();
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
        } else if server.starts_with("http://") || server.starts_with("https://") {
            (server.clone(), builder)
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
        Ok(Client { server, base, http })
    }

    pub fn server(&self) -> &str {
        &self.server
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

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let text = |field: &str| body[field].as_str().unwrap_or_default().to_string();
        let message = match text("message") {
            message if message.is_empty() => format!("the server answered HTTP {code}"),
            message => message,
        };
        Err(ClientError::Api {
            code,
            reason: text("reason"),
            message,
        })
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        // reqwest's own text ("error sending request for url ...") buries the cause.
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            detail = cause.to_string();
            source = cause.source();
        }
        ClientError::Unreachable {
            server: self.server.clone(),
            detail,
        }
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.unreachable(&error))?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol {
            server: self.server.clone(),
            detail: error.to_string(),
        })
    }

    async fn object(&self, request: reqwest::RequestBuilder) -> Result<Object, ClientError> {
        let response = self.send(request).await?;
        self.json(response).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every object of `kind` in `namespace` (all namespaces if `None`) whose labels match
    /// `selector` (`key=value[,key=value]`).
    pub async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: Option<&str>,
    ) -> Result<ObjectList, ClientError> {
        let mut request = self
            .http
            .get(self.url(&Client::collection_path(kind, namespace)));
        if let Some(selector) = selector {
            request = request.query(&[("labelSelector", selector)]);
        }
        let response = self.send(request).await?;
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
        let list: List = self.json(response).await?;
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
        self.object(
            self.http
                .get(self.url(&Client::object_path(kind, namespace, name))),
        )
        .await
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
        self.object(self.http.post(self.url(&path)).body(object.to_json()))
            .await
    }

    /// Replaces the spec and metadata of `object`, which must carry the resource version it
    /// was read at (a stale one is a conflict). The status is not changed.
    pub async fn update(&self, object: &Object) -> Result<Object, ClientError> {
        let path = Client::object_path(object.kind(), object.namespace(), object.name());
        self.object(self.http.put(self.url(&path)).body(object.to_json()))
            .await
    }

    /// Replaces the status of `object` (the controllers' and agents' write), under the same
    /// resource-version rule as [`Client::update`]. Spec and metadata are not changed.
    pub async fn update_status(&self, object: &Object) -> Result<Object, ClientError> {
        let path = Client::object_path(object.kind(), object.namespace(), object.name());
        self.object(
            self.http
                .put(self.url(&format!("{path}/status")))
                .body(object.to_json()),
        )
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
        self.object(self.http.patch(self.url(&path)).body(patch.to_string()))
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
        self.object(
            self.http
                .delete(self.url(&Client::object_path(kind, namespace, name))),
        )
        .await
    }

    /// Changes to objects of `kind` after `resource_version`, for at most `timeout`.
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
        ];
        if let Some(selector) = selector {
            query.push(("labelSelector", selector.to_string()));
        }
        let request = self
            .http
            .get(self.url(&Client::collection_path(kind, namespace)))
            .query(&query);
        let response = self.send(request).await?;
        Ok(Watch {
            client: self.clone(),
            response,
            buffer: Vec::new(),
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
        self.send(self.http.put(self.url(&path)).json(heartbeat))
            .await
            .map(drop)
    }

    /// Every node that has reported since the control plane started.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        let response = self
            .send(self.http.get(self.url("/tandem/v1/nodes")))
            .await?;
        self.json(response).await
    }
}

/// An open watch: call [`Watch::next`] until it returns `None` (the server's timeout).
pub struct Watch {
    client: Client,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Watch {
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return self.parse(&line).map(Some);
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(error) => return Err(self.client.unreachable(&error)),
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<WatchEvent, ClientError> {
        #[derive(Deserialize)]
        struct Line {
            #[serde(rename = "type")]
            change: String,
            object: Value,
        }
        let protocol = |detail: String| ClientError::Protocol {
            server: self.client.server.clone(),
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
        let object: Object = serde_json::from_value(line.object)
            .map_err(|error| protocol(format!("watched object: {error}")))?;
        match line.change.as_str() {
            "ADDED" => Ok(WatchEvent::Added(object)),
            "MODIFIED" => Ok(WatchEvent::Modified(object)),
            "DELETED" => Ok(WatchEvent::Deleted(object)),
            other => Err(protocol(format!("unknown watch event type {other:?}"))),
        }
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
            "https://cp.example:7070/",
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
}
