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
         status:\n  phase: {phase}\n  readOnly: {read_only}\n  capacity:\n    total: 10G\n    \
         free: 10G\n    used: \"0\"\n"
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
    // Refused as cStor's admission webhook refuses it: HTTP 400, reason BadRequest.
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["reason"], "BadRequest");
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
    assert_eq!(status, StatusCode::BAD_REQUEST);
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
    assert_eq!(status, StatusCode::BAD_REQUEST);

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

    // Without a version, a watch starts with every current object (as Kubernetes' does), then
    // delivers each change after it started.
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
    let lines = watch_lines(&mut response, 2).await;
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[1]["type"], "DELETED");
    assert_eq!(lines[1]["object"]["metadata"]["name"], "pvc-1");
}

#[tokio::test]
async fn a_watch_reads_past_other_objects_changes_without_waiting_for_another_write() {
    let server = server().await;
    let volume = server.create("cstorvolumes", VOLUME).await;
    let version = volume["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Many batches' worth of changes to other objects, then one to the volume, and no write
    // after it: a watch from before them all still sees the volume's change.
    for index in 0..250 {
        let name = format!("pool-{index}");
        server
            .create("cstorpoolinstances", &pool(&name, "cspc", "ONLINE", false))
            .await;
    }
    let (status, _) = server
        .send(
            reqwest::Method::DELETE,
            &format!("{NS}/cstorvolumes/pvc-1"),
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let url = format!(
        "{}{NS}/cstorvolumes?watch=true&resourceVersion={version}&timeoutSeconds=5",
        server.base
    );
    let mut response = server.client.get(url).send().await.unwrap();
    let lines = watch_lines(&mut response, 1).await;
    assert_eq!(
        lines.len(),
        1,
        "the watch ended without the volume's deletion"
    );
    assert_eq!(lines[0]["type"], "DELETED");

    // Asked for bookmarks, a watch with nothing to send ends with one saying how far it read,
    // so that the next starts there.
    let (_, list) = server
        .send(
            reqwest::Method::GET,
            &format!("{NS}/cstorpoolinstances"),
            "",
        )
        .await;
    let newest = list["metadata"]["resourceVersion"].as_str().unwrap();
    let url = format!(
        "{}{NS}/cstorvolumeconfigs?watch=true&resourceVersion={version}&timeoutSeconds=1&\
         allowWatchBookmarks=true",
        server.base
    );
    let mut response = server.client.get(url).send().await.unwrap();
    let lines = watch_lines(&mut response, 2).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "BOOKMARK");
    assert_eq!(lines[0]["object"]["kind"], "CStorVolumeConfig");
    assert_eq!(lines[0]["object"]["metadata"]["resourceVersion"], newest);
    // Without asking, none (kubectl's watches).
    let url = format!(
        "{}{NS}/cstorvolumeconfigs?watch=true&resourceVersion={version}&timeoutSeconds=1",
        server.base
    );
    let mut response = server.client.get(url).send().await.unwrap();
    assert!(watch_lines(&mut response, 1).await.is_empty());
}

/// The first `count` lines of a watch (each a JSON event); the watch's own timeout bounds it.
async fn watch_lines(response: &mut reqwest::Response, count: usize) -> Vec<Value> {
    let mut text = String::new();
    while text.lines().count() < count {
        match response.chunk().await.unwrap() {
            Some(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            None => break,
        }
    }
    text.lines()
        .take(count)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
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

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,\
                     application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

impl Server {
    async fn get_with(&self, path: &str, accept: &str) -> (StatusCode, String, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        (status, content_type, response.json().await.unwrap())
    }

    async fn patch_as(&self, path: &str, content_type: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .patch(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// The cells of a Table's rows.
fn cells(table: &Value) -> Vec<Value> {
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["cells"].clone())
        .collect()
}

#[tokio::test]
async fn kubectl_gets_server_side_tables_for_lists_objects_and_watches() {
    let server = volume_with_three_pools().await;
    let (status, content_type, table) = server
        .get_with(&format!("{NS}/cstorpoolinstances?limit=500"), TABLE)
        .await;
    assert_eq!(status, StatusCode::OK, "{table}");
    assert_eq!(content_type, "application/json;as=Table;v=v1;g=meta.k8s.io");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    assert!(table["metadata"]["resourceVersion"].is_string());
    let columns: Vec<(&str, u64)> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_u64().unwrap()))
        .collect();
    assert_eq!(columns[1], ("HostName", 0));
    assert_eq!(columns[5], ("Provisioned", 1), "wide only");
    assert_eq!(columns[8], ("ProvisionedReplicas", 1), "wide only");
    let rows = cells(&table);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0][0], "pool-a");
    assert_eq!(rows[0][1], "node-pool-a");
    assert_eq!(rows[0][2], "0", "nothing allocated");
    assert_eq!(rows[0][5], Value::Null, "no provisioned space reported yet");
    assert_eq!(rows[3][6], true, "pool-ro is read-only");
    assert_eq!(rows[0][10], "ONLINE");
    let object = &table["rows"][0]["object"];
    assert_eq!(object["kind"], "PartialObjectMetadata");
    assert_eq!(
        object["metadata"]["labels"]["openebs.io/cstor-pool-cluster"],
        "cspc-stripe-pool"
    );

    // A label selector and a field selector narrow the rows; one object is a Table of one row.
    let selected = format!("{NS}/cstorpoolinstances?labelSelector=no%3Dsuch");
    assert!(cells(&server.get_with(&selected, TABLE).await.2).is_empty());
    let named = format!("{NS}/cstorpoolinstances?fieldSelector=metadata.name%3Dpool-b");
    assert_eq!(
        cells(&server.get_with(&named, TABLE).await.2)[0][0],
        "pool-b"
    );
    let (_, _, one) = server
        .get_with(&format!("{NS}/cstorvolumeconfigs/pvc-1"), TABLE)
        .await;
    assert_eq!(cells(&one)[0][0], "pvc-1");
    assert_eq!(cells(&one)[0][2], "Bound");
    let full = format!("{NS}/cstorvolumeconfigs/pvc-1?includeObject=Object");
    let (_, _, full) = server.get_with(&full, TABLE).await;
    assert_eq!(full["rows"][0]["object"]["kind"], "CStorVolumeConfig");
    // Plain JSON when a Table is not asked for.
    let (_, _, plain) = server
        .get_with(
            &format!("{NS}/cstorvolumeconfigs/pvc-1"),
            "application/json",
        )
        .await;
    assert_eq!(plain["kind"], "CStorVolumeConfig");

    // A watch answers Tables of one row; the column definitions come with the first only.
    let version = table["metadata"]["resourceVersion"].as_str().unwrap();
    let url = format!(
        "{}{NS}/cstorpoolinstances?watch=true&resourceVersion={version}&timeoutSeconds=5",
        server.base
    );
    let mut response = server
        .client
        .get(url)
        .header("accept", TABLE)
        .send()
        .await
        .unwrap();
    for label in ["x", "y"] {
        let patch = json!({"metadata": {"labels": {label: "1"}}}).to_string();
        let (status, _) = server
            .patch_as(
                &format!("{NS}/cstorpoolinstances/pool-c"),
                "application/merge-patch+json",
                &patch,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let events = watch_lines(&mut response, 2).await;
    assert_eq!(events[0]["type"], "MODIFIED");
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert!(events[0]["object"]["columnDefinitions"].is_array());
    assert_eq!(cells(&events[0]["object"])[0][0], "pool-c");
    assert!(events[1]["object"].get("columnDefinitions").is_none());
    assert_eq!(
        events[1]["object"]["rows"][0]["object"]["metadata"]["labels"]["y"],
        "1"
    );
}

#[tokio::test]
async fn patches_by_content_type_and_strategic_merge_is_refused_as_for_custom_resources() {
    let server = volume_with_three_pools().await;
    let path = format!("{NS}/cstorvolumeconfigs/pvc-1");
    let add = r#"[{"op":"add","path":"/metadata/labels/team","value":"a"}]"#;
    let (status, patched) = server
        .patch_as(&path, "application/json-patch+json", add)
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["metadata"]["labels"]["team"], "a");
    let failing = r#"[{"op":"test","path":"/metadata/labels/team","value":"b"}]"#;
    let (status, _) = server
        .patch_as(&path, "application/json-patch+json", failing)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Admission runs on the patched object, whatever the patch format.
    let replace_pool =
        r#"[{"op":"replace","path":"/spec/policy/replicaPoolInfo/1/poolName","value":"pool-c"}]"#;
    let (status, refused) = server
        .patch_as(&path, "application/json-patch+json", replace_pool)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().starts_with(
            "admission webhook \"admission-webhook.cstor.openebs.io\" denied the request: "
        ),
        "{refused}"
    );

    for content_type in [
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ] {
        let (status, refused) = server.patch_as(&path, content_type, "{}").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert_eq!(refused["kind"], "Status");
        assert_eq!(refused["reason"], "UnsupportedMediaType");
        assert_eq!(
            refused["message"],
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json"
        );
    }

    // A merge patch naming a stale resource version is a conflict.
    let stale = json!({"metadata": {"resourceVersion": "1", "labels": {"team": "c"}}});
    let (status, _) = server
        .patch_as(&path, "application/merge-patch+json", &stale.to_string())
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn events_are_found_by_the_field_selectors_kubectl_describe_sends() {
    let server = volume_with_three_pools().await;
    let (_, cvc) = server
        .send(
            reqwest::Method::GET,
            &format!("{NS}/cstorvolumeconfigs/pvc-1"),
            "",
        )
        .await;
    let uid = cvc["metadata"]["uid"].as_str().unwrap().to_string();
    let event = |name: &str, about: &str, uid: &str, reason: &str| {
        format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\n  namespace: openebs\n\
             involvedObject:\n  apiVersion: cstor.openebs.io/v1\n  kind: CStorVolumeConfig\n  \
             name: {about}\n  namespace: openebs\n  uid: \"{uid}\"\nreason: {reason}\n\
             message: m\ntype: Normal\nsource:\n  component: c\ncount: 1\n"
        )
    };
    let events = "/api/v1/namespaces/openebs/events";
    for body in [
        event("pvc-1.a", "pvc-1", &uid, "Synced"),
        event("pvc-1.b", "pvc-1", "an-older-pvc-1", "Synced"),
        event("pvc-2.a", "pvc-2", "u-2", "ScalingVolumeReplicas"),
    ] {
        let (status, answer) = server.send(reqwest::Method::POST, events, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let selector = format!(
        "involvedObject.kind=CStorVolumeConfig,involvedObject.name=pvc-1,\
         involvedObject.namespace=openebs,involvedObject.uid={uid}"
    );
    let url = format!("{events}?fieldSelector={}&limit=500", urlencode(&selector));
    let (status, list) = server.send(reqwest::Method::GET, &url, "").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pvc-1.a"]);
    let by_reason = format!("{events}?fieldSelector=reason%3DScalingVolumeReplicas");
    let (_, list) = server.send(reqwest::Method::GET, &by_reason, "").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // One event by name.
    let (status, one) = server
        .send(reqwest::Method::GET, &format!("{events}/pvc-2.a"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["reason"], "ScalingVolumeReplicas");

    let unsupported = format!("{NS}/cstorvolumeconfigs?fieldSelector=status.phase%3DBound");
    let (status, refused) = server.send(reqwest::Method::GET, &unsupported, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused["message"],
        "field label not supported: status.phase"
    );
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn discovery_openapi_namespaces_and_unknown_paths_answer_as_kubectl_expects() {
    let server = server().await;
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                      application/json";
    let (status, content_type, groups) = server.get_with("/apis", aggregated).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(groups["items"][0]["metadata"]["name"], "cstor.openebs.io");
    let (_, content_type, legacy) = server.get_with("/apis", "application/json").await;
    assert_eq!(content_type, "application/json");
    assert_eq!(legacy["kind"], "APIGroupList");

    let (status, _, root) = server.get_with("/openapi/v3", "application/json").await;
    assert_eq!(status, StatusCode::OK);
    let url = root["paths"]["apis/cstor.openebs.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, spec) = server.get_with(&url, "application/json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.0.0");

    let (status, namespace) = server
        .send(reqwest::Method::GET, "/api/v1/namespaces/openebs", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(namespace["status"]["phase"], "Active");

    for path in [
        "/openapi/v2",
        "/no/such/path",
        "/api/v1/namespaces/Not_A_Name",
    ] {
        let (status, answer) = server.send(reqwest::Method::GET, path, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer["kind"], "Status", "{path}");
        assert_eq!(answer["reason"], "NotFound", "{path}");
    }
    let (status, answer) = server.send(reqwest::Method::DELETE, "/apis", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer["kind"], "Status");
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
    assert_eq!(status, StatusCode::BAD_REQUEST);

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
        (requests("patch", "cstorvolumeconfigs", 400), 1.0),
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
