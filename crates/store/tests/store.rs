//! The store's contract: versions, conflicts, watch, persistence across a restart and kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tandem_store::{ChangeKind, ObjectKey, RedbStore, Store, StoreError};

fn cvc(name: &str, replicas: u64) -> Value {
    json!({
        "apiVersion": "cstor.openebs.io/v1",
        "kind": "CStorVolumeConfig",
        "metadata": { "name": name, "namespace": "openebs" },
        "spec": { "provision": { "replicaCount": replicas } }
    })
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("CStorVolumeConfig", "openebs", name)
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).expect("open store")
}

#[test]
fn writes_get_increasing_versions_stamped_into_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let first = store.create(&key("a"), cvc("a", 2)).unwrap();
    let second = store.create(&key("b"), cvc("b", 2)).unwrap();
    assert_eq!((first.resource_version, second.resource_version), (1, 2));
    assert_eq!(first.object["metadata"]["resourceVersion"], "1");
    assert_eq!(store.get(&key("a")).unwrap(), Some(first));
    assert_eq!(store.current_version().unwrap(), 2);
    let names: Vec<String> = store
        .list("CStorVolumeConfig", Some("openebs"))
        .unwrap()
        .into_iter()
        .map(|v| v.key.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store
        .list("CStorVolumeConfig", Some("other"))
        .unwrap()
        .is_empty());
    assert!(store.list("CStorVolume", None).unwrap().is_empty());
}

#[test]
fn a_stale_update_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let created = store.create(&key("a"), cvc("a", 2)).unwrap();
    store
        .update(&key("a"), created.resource_version, cvc("a", 3))
        .unwrap();
    let error = store
        .update(&key("a"), created.resource_version, cvc("a", 4))
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::Conflict {
            expected: 1,
            actual: 2,
            ..
        }
    ));
    assert!(
        error.to_string().contains("changed by someone else"),
        "{error}"
    );
    let stored = store.get(&key("a")).unwrap().unwrap();
    assert_eq!(stored.object["spec"]["provision"]["replicaCount"], 3);

    assert!(matches!(
        store.create(&key("a"), cvc("a", 1)),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.update(&key("zz"), 1, cvc("zz", 1)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(&key("a"), Some(1)),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create(&key("bad"), json!({"kind": "x"})),
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn a_watch_sees_every_change_after_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let created = store.create(&key("a"), cvc("a", 2)).unwrap();
    store
        .update(&key("a"), created.resource_version, cvc("a", 3))
        .unwrap();
    store.delete(&key("a"), None).unwrap();
    let kinds: Vec<(u64, ChangeKind)> = store
        .changes_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|c| (c.object.resource_version, c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, ChangeKind::Added),
            (2, ChangeKind::Modified),
            (3, ChangeKind::Deleted)
        ]
    );
    assert_eq!(store.changes_since(2, 100).unwrap().len(), 1);
    assert_eq!(store.changes_since(0, 2).unwrap().len(), 2, "limit");
    assert!(store.changes_since(3, 100).unwrap().is_empty());
    assert_eq!(store.get(&key("a")).unwrap(), None);
}

#[test]
fn a_watch_from_before_the_kept_changes_is_told_to_list_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_keeping(&dir.path().join("store.redb"), 3).unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        store.create(&key(name), cvc(name, 1)).unwrap();
    }
    let error = store.changes_since(0, 100).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Expired {
                requested: 0,
                oldest: 3
            }
        ),
        "{error}"
    );
    assert_eq!(store.changes_since(2, 100).unwrap().len(), 3);
}

#[test]
fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.create(&key("a"), cvc("a", 2)).unwrap();
        store.create(&key("b"), cvc("b", 3)).unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.current_version().unwrap(), 2);
    assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 2);
    assert_eq!(
        store
            .create(&key("c"), cvc("c", 1))
            .unwrap()
            .resource_version,
        3
    );
}

const CHILD: &str = "TANDEM_STORE_KILL_CHILD";

/// The child half of the kill test: commit objects one by one, saying so after each.
fn commit_until_killed(path: &str) {
    let store = RedbStore::open(std::path::Path::new(path)).expect("open store");
    for index in 0..1_000_000u64 {
        let name = format!("volume-{index}");
        store.create(&key(&name), cvc(&name, 2)).expect("create");
        println!("committed {name}");
    }
}

#[test]
fn nothing_committed_is_lost_when_the_process_is_killed() {
    if let Ok(path) = std::env::var(CHILD) {
        commit_until_killed(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nothing_committed_is_lost_when_the_process_is_killed",
            "--nocapture",
        ])
        .env(CHILD, &path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut committed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(name) = line.unwrap().strip_prefix("committed ") {
            committed.push(name.to_string());
            if committed.len() == 50 {
                break;
            }
        }
    }
    child.kill().expect("kill -9 the child");
    child.wait().unwrap();
    assert_eq!(committed.len(), 50, "the child stopped early");

    let store = RedbStore::open(&path).expect("reopen after kill -9");
    for name in &committed {
        assert!(store.get(&key(name)).unwrap().is_some(), "{name} was lost");
    }
}
