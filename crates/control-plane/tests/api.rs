//! The object API against a real listener on 127.0.0.1 and a real store file.

use std::sync::Arc;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tandem_control_plane::{router, Api};
use tandem_store::RedbStore;

const NS: &str = "/apis/cstor.openebs.io/v1/namespaces/openebs";

struct Server {
    base: String,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("store.redb")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router(Api::new(store, std::time::Duration::from_secs(10))),
        )
        .await
        .unwrap();
    });
    Server {
        base,
        client: Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, resource: &str, body: &str) -> Value {
        let (status, object) = self
            .send(reqwest::Method::POST, &format!("{NS}/{resource}"), body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{object}");
        object
    }
}

fn pool(name: &str, cluster: &str, phase: &str, read_only: bool) -> String {
    format!(
        "apiVersion: cstor.openebs.io/v1\nkind: CStorPoolInstance\nmetadata:\n  name: {name}\n  \
         labels:\n    openebs.io/cstor-pool-cluster: {cluster}\nspec:\n  hostName: node-{name}\n\
         status:\n  phase: {phase}\n  readOnly: {read_only}\n"
    )
}

const VOLUME: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorVolume
metadata:
  name: pvc-1
status:
  phase: Healthy
";

const CVC: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: pvc-1
  labels:
    openebs.io/cstor-pool-cluster: cspc-stripe-pool
spec:
  capacity:
    storage: 5Gi
  provision:
    capacity:
      storage: 5Gi
    replicaCount: 2
  policy:
    replicaPoolInfo:
    - poolName: pool-a
    - poolName: pool-b
status:
  phase: Bound
  poolInfo:
  - pool-a
  - pool-b
";

async fn volume_with_three_pools() -> Server {
    let server = server().await;
    for name in ["pool-a", "pool-b", "pool-c"] {
        server
            .create(
                "cstorpoolinstances",
                &pool(name, "cspc-stripe-pool", "ONLINE", false),
            )
            .await;
    }
    server
        .create(
            "cstorpoolinstances",
            &pool("pool-ro", "cspc-stripe-pool", "ONLINE", true),
        )
        .await;
    server.create("cstorvolumes", VOLUME).await;
    server.create("cstorvolumeconfigs", CVC).await;
    server
}

#[tokio::test]
async fn created_objects_get_identity_and_versions_and_can_be_listed() {
    let server = volume_with_three_pools().await;
    let (status, cvc) = server
        .send(
            reqwest::Method::GET,
            &format!("{NS}/cstorvolumeconfigs/pvc-1"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!cvc["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(cvc["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(cvc["metadata"]["resourceVersion"], "6");

    let (_, list) = server
        .send(
            reqwest::Method::GET,
            "/apis/cstor.openebs.io/v1/cstorpoolinstances?labelSelector=openebs.io/cstor-pool-cluster=cspc-stripe-pool",
            "",
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 4);

    let (status, error) = server
        .send(
            reqwest::Method::GET,
            &format!("{NS}/cstorvolumeconfigs/nope"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error["message"],
        "cstorvolumeconfigs.cstor.openebs.io \"nope\" not found"
    );
    let (status, _) = server
        .send(reqwest::Method::POST, &format!("{NS}/cstorvolumes"), VOLUME)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "already exists");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_message_naming_it() {
    let server = server().await;
    let (status, error) = server
        .send(
            reqwest::Method::POST,
            &format!("{NS}/cstorvolumes"),
            "kind: CStorVolume\nmetadata: [",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"].as_str().unwrap().contains("line"),
        "{error}"
    );
    let (status, error) = server
        .send(
            reqwest::Method::POST,
            &format!("{NS}/cstorvolumeconfigs"),
            VOLUME,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("the path is for"),
        "{error}"
    );
    let (status, _) = server
        .send(reqwest::Method::GET, &format!("{NS}/widgets"), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stale_update_is_refused_as_a_conflict() {
    let server = volume_with_three_pools().await;
    let path = format!("{NS}/cstorvolumes/pvc-1");
    let (_, mut volume) = server.send(reqwest::Method::GET, &path, "").await;
    let stale = volume.clone();
    volume["spec"]["targetPort"] = json!("3260");
    let (status, _) = server
        .send(reqwest::Method::PUT, &path, &volume.to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = server
        .send(reqwest::Method::PUT, &path, &stale.to_string())
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("changed by someone else"),
        "{error}"
    );
}

#[tokio::test]
async fn volume_config_edits_pass_the_admission_rules() {
    let server = volume_with_three_pools().await;
    let path = format!("{NS}/cstorvolumeconfigs/pvc-1");
    let patch = |pools: &[&str]| {
        let pools: Vec<Value> = pools.iter().map(|p| json!({ "poolName": p })).collect();
        json!({ "spec": { "policy": { "replicaPoolInfo": pools } } }).to_string()
    };

    // cStor's rule: no replacing a pool in one edit.
    let (status, error) = server
        .send(reqwest::Method::PATCH, &path, &patch(&["pool-a", "pool-c"]))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not yet supported"),
        "{error}"
    );
    // Tandem's guards: the pool must exist and be writable.
    let (status, error) = server
        .send(
            reqwest::Method::PATCH,
            &path,
            &patch(&["pool-a", "pool-b", "pool-typo"]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error["message"].as_str().unwrap().contains("pool-typo"),
        "{error}"
    );
    let (status, _) = server
        .send(
            reqwest::Method::PATCH,
            &path,
            &patch(&["pool-a", "pool-b", "pool-ro"]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A valid scale-up is accepted.
    let (status, cvc) = server
        .send(
            reqwest::Method::PATCH,
            &path,
            &patch(&["pool-a", "pool-b", "pool-c"]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cvc}");
    assert_eq!(
        cvc["spec"]["policy"]["replicaPoolInfo"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_watch_streams_every_change_after_its_version() {
    let server = volume_with_three_pools().await;
    let url = format!(
        "{}{NS}/cstorvolumes?watch=true&resourceVersion=0&timeoutSeconds=5",
        server.base
    );
    let mut response = server.client.get(url).send().await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if text.contains("\"ADDED\"") {
            break;
        }
    }
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["type"], "ADDED");
    assert_eq!(line["object"]["metadata"]["name"], "pvc-1");

    // A change after the watch started is delivered too.
    let url = format!(
        "{}{NS}/cstorvolumes?watch=true&timeoutSeconds=5",
        server.base
    );
    let mut response = server.client.get(url).send().await.unwrap();
    let (status, _) = server
        .send(
            reqwest::Method::DELETE,
            &format!("{NS}/cstorvolumes/pvc-1"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let chunk = response.chunk().await.unwrap().expect("a change");
    let line: Value = serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["type"], "DELETED");
}

#[tokio::test]
async fn spec_and_status_are_written_apart() {
    let server = volume_with_three_pools().await;
    let path = format!("{NS}/cstorvolumes/pvc-1");
    let (_, mut volume) = server.send(reqwest::Method::GET, &path, "").await;
    // A user's update cannot change the status...
    volume["spec"]["targetPort"] = json!("3260");
    volume["status"]["phase"] = json!("Offline");
    let (status, updated) = server
        .send(reqwest::Method::PUT, &path, &volume.to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["targetPort"], "3260");
    assert_eq!(updated["status"]["phase"], "Healthy");
    // ...and the status writer cannot change the spec.
    let mut reported = updated.clone();
    reported["spec"]["targetPort"] = json!("9999");
    reported["status"]["phase"] = json!("Degraded");
    let (status, updated) = server
        .send(
            reqwest::Method::PUT,
            &format!("{path}/status"),
            &reported.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["targetPort"], "3260");
    assert_eq!(updated["status"]["phase"], "Degraded");
    // A stale status write is a conflict like any other.
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            &format!("{path}/status"),
            &reported.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn finalizers_hold_a_delete_until_their_owner_releases_them() {
    let server = server().await;
    let replica = "apiVersion: cstor.openebs.io/v1
kind: CStorVolumeReplica
metadata:
  name: pvc-1-pool-a
  finalizers: [cstorvolumereplica.openebs.io/finalizer]
spec:
  capacity: 5Gi
";
    server.create("cstorvolumereplicas", replica).await;
    let path = format!("{NS}/cstorvolumereplicas/pvc-1-pool-a");
    let (status, marked) = server.send(reqwest::Method::DELETE, &path, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    let (status, still) = server.send(reqwest::Method::GET, &path, "").await;
    assert_eq!(status, StatusCode::OK, "held by its finalizer");
    let mut released = still.clone();
    released["metadata"]["finalizers"] = json!([]);
    let (status, _) = server
        .send(reqwest::Method::PUT, &path, &released.to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.send(reqwest::Method::GET, &path, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn node_heartbeats_are_listed_with_their_readiness() {
    let server = server().await;
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/tandem/v1/nodes/node1",
            r#"{"node":"node1","address":"127.0.0.1:9000"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, error) = server
        .send(
            reqwest::Method::PUT,
            "/tandem/v1/nodes/node2",
            r#"{"node":"node1"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error["message"].as_str().unwrap().contains("node1"),
        "{error}"
    );
    let (_, nodes) = server
        .send(reqwest::Method::GET, "/tandem/v1/nodes", "")
        .await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["node"], "node1");
    assert_eq!(nodes[0]["ready"], true);
}

/// Merge patches that name no resource version apply to whatever is current: several at once on
/// one object all succeed (one that lost the race to another writer is tried again), and every
/// change lands. Four writers per round: a patch can lose at most three times, within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_merge_patches_without_a_version_all_apply() {
    let server = Arc::new(server().await);
    server
        .create(
            "cstorpoolinstances",
            &pool("pool-a", "cspc", "ONLINE", false),
        )
        .await;
    let path = format!("{NS}/cstorpoolinstances/pool-a");
    for round in 0..5 {
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let server = Arc::clone(&server);
                let path = path.clone();
                tokio::spawn(async move {
                    let patch = json!({
                        "metadata": { "labels": { format!("writer-{writer}"): format!("round-{round}") } }
                    });
                    server
                        .send(reqwest::Method::PATCH, &path, &patch.to_string())
                        .await
                })
            })
            .collect();
        for writer in writers {
            let (status, answer) = writer.await.unwrap();
            assert_eq!(status, StatusCode::OK, "round {round}: {answer}");
        }
        let (_, object) = server.send(reqwest::Method::GET, &path, "").await;
        for writer in 0..4 {
            assert_eq!(
                object["metadata"]["labels"][format!("writer-{writer}")],
                format!("round-{round}"),
                "{object}"
            );
        }
    }
}

/// `GET /metrics` answers Prometheus' text format: every request counted by verb, resource and
/// code, a refused edit counted as an admission refusal, the stored objects by kind and the
/// nodes' readiness; `promtool check metrics` accepts it (when installed).
#[tokio::test]
async fn metrics_count_requests_refusals_objects_and_nodes() {
    let server = volume_with_three_pools().await;
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/tandem/v1/nodes/node1",
            r#"{"node":"node1","address":"127.0.0.1:9000"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let refused = json!({"spec": {"policy": {"replicaPoolInfo": [
        {"poolName": "pool-a"}, {"poolName": "pool-b"}, {"poolName": "pool-typo"}
    ]}}});
    let (status, _) = server
        .send(
            reqwest::Method::PATCH,
            &format!("{NS}/cstorvolumeconfigs/pvc-1"),
            &refused.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let requests = |verb: &str, resource: &str, code: u16| {
        format!(
            "tandem_api_requests_total{{verb=\"{verb}\",resource=\"{resource}\",subresource=\"\",\
             code=\"{code}\"}}"
        )
    };
    for (series, value) in [
        (requests("create", "cstorpoolinstances", 201), 4.0),
        (requests("create", "cstorvolumeconfigs", 201), 1.0),
        (requests("patch", "cstorvolumeconfigs", 422), 1.0),
        (requests("update", "nodes", 204), 1.0),
        (
            "tandem_admission_refusals_total{kind=\"CStorVolumeConfig\"}".to_string(),
            1.0,
        ),
        (
            "tandem_objects{kind=\"CStorPoolInstance\"}".to_string(),
            4.0,
        ),
        (
            "tandem_objects{kind=\"CStorVolumeConfig\"}".to_string(),
            1.0,
        ),
        ("tandem_objects{kind=\"CStorVolume\"}".to_string(), 1.0),
        ("tandem_node_ready{node=\"node1\"}".to_string(), 1.0),
    ] {
        let found = text
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{series} ")))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert_eq!(found.parse::<f64>().unwrap(), value, "{series}");
    }
    let age = text
        .lines()
        .find_map(|line| line.strip_prefix("tandem_node_heartbeat_age_seconds{node=\"node1\"} "))
        .unwrap_or_else(|| panic!("no heartbeat age in:\n{text}"));
    assert!((0.0..10.0).contains(&age.parse::<f64>().unwrap()), "{age}");
    promtool_accepts(&text);
}

/// `promtool check metrics` (Debian's `prometheus` package; .ci/run installs it) accepts `text`;
/// without promtool the check is skipped, saying so.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: promtool is not installed (.ci/run installs the prometheus package)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
