//! The store's contract, one suite run against every backend (redb, and a real etcd when one is
//! installed): versions, conflicts, watch, expiry, concurrency, persistence across a restart;
//! and redb's kill -9 test.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};
use support::Backend;
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

/// Runs each contract test against every backend: `redb::NAME` and `etcd::NAME` (which passes
/// with a printed line when etcd is not installed).
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod redb {
            $(#[test]
            fn $test() {
                super::$test(&mut crate::support::RedbBackend::new());
            })*
        }
        mod etcd {
            $(#[test]
            fn $test() {
                if let Some(mut backend) = crate::support::EtcdBackend::start() {
                    super::$test(&mut backend);
                }
            })*
        }
    };
}

conformance!(
    writes_get_increasing_versions_stamped_into_metadata,
    a_stale_update_is_refused_and_changes_nothing,
    a_watch_sees_every_change_after_its_version,
    a_watch_from_before_the_kept_changes_is_told_to_list_again,
    everything_survives_a_restart,
    of_concurrent_updates_from_one_version_exactly_one_wins,
    a_watch_sees_concurrent_writers_changes_once_each_in_order,
);

fn names(stored: Vec<tandem_store::Versioned>) -> Vec<String> {
    stored.into_iter().map(|v| v.key.name).collect()
}

fn writes_get_increasing_versions_stamped_into_metadata(backend: &mut dyn Backend) {
    let store = backend.open();
    assert_eq!(store.current_version().unwrap(), 0, "an empty store");
    let first = store.create(&key("b"), cvc("b", 2)).unwrap();
    let second = store.create(&key("a"), cvc("a", 2)).unwrap();
    assert!(first.resource_version > 0);
    assert!(second.resource_version > first.resource_version);
    assert_eq!(
        first.object["metadata"]["resourceVersion"],
        first.resource_version.to_string()
    );
    assert_eq!(store.get(&key("b")).unwrap(), Some(first));
    assert_eq!(store.get(&key("zz")).unwrap(), None);
    assert_eq!(store.current_version().unwrap(), second.resource_version);
    assert_eq!(
        names(store.list("CStorVolumeConfig", Some("openebs")).unwrap()),
        ["a", "b"]
    );
    assert!(store
        .list("CStorVolumeConfig", Some("other"))
        .unwrap()
        .is_empty());
    assert!(store.list("CStorVolume", None).unwrap().is_empty());
    assert!(store.list("CStorVolumeConfi", None).unwrap().is_empty());

    // Across namespaces: ordered by namespace, then name; cluster-scoped objects have none.
    let pool = ObjectKey::new("CStorPoolCluster", "", "pool");
    let object = json!({"kind": "CStorPoolCluster", "metadata": {"name": "pool"}});
    store.create(&pool, object).unwrap();
    let elsewhere = ObjectKey::new("CStorVolumeConfig", "aaa", "z");
    store.create(&elsewhere, cvc("z", 1)).unwrap();
    let listed: Vec<ObjectKey> = store
        .list("CStorVolumeConfig", None)
        .unwrap()
        .into_iter()
        .map(|v| v.key)
        .collect();
    assert_eq!(listed, [elsewhere, key("a"), key("b")]);
    assert_eq!(store.list("CStorPoolCluster", None).unwrap()[0].key, pool);
    assert_eq!(
        store.list("CStorPoolCluster", Some("")).unwrap()[0].key,
        pool
    );
}

fn a_stale_update_is_refused_and_changes_nothing(backend: &mut dyn Backend) {
    let store = backend.open();
    let created = store.create(&key("a"), cvc("a", 2)).unwrap();
    let updated = store
        .update(&key("a"), created.resource_version, cvc("a", 3))
        .unwrap();
    assert!(updated.resource_version > created.resource_version);
    let error = store
        .update(&key("a"), created.resource_version, cvc("a", 4))
        .unwrap_err();
    match &error {
        StoreError::Conflict {
            expected, actual, ..
        } => assert_eq!(
            (*expected, *actual),
            (created.resource_version, updated.resource_version)
        ),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(
        error.to_string().contains("changed by someone else"),
        "{error}"
    );
    let stored = store.get(&key("a")).unwrap().unwrap();
    assert_eq!(stored.object["spec"]["provision"]["replicaCount"], 3);
    assert_eq!(store.current_version().unwrap(), updated.resource_version);

    assert!(matches!(
        store.create(&key("a"), cvc("a", 1)),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.update(&key("zz"), 1, cvc("zz", 1)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.update(&key("zz"), 0, cvc("zz", 1)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(&key("a"), Some(created.resource_version)),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.delete(&key("zz"), None),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create(&key("bad"), json!({"kind": "x"})),
        Err(StoreError::Invalid { .. })
    ));
    assert!(
        store.get(&key("zz")).unwrap().is_none(),
        "nothing was created"
    );
    assert_eq!(
        store.current_version().unwrap(),
        updated.resource_version,
        "refused writes change no version"
    );
    let deleted = store
        .delete(&key("a"), Some(updated.resource_version))
        .unwrap();
    assert!(deleted.resource_version > updated.resource_version);
    assert_eq!(deleted.object["spec"]["provision"]["replicaCount"], 3);
}

fn a_watch_sees_every_change_after_its_version(backend: &mut dyn Backend) {
    let store = backend.open();
    let created = store.create(&key("a"), cvc("a", 2)).unwrap();
    let updated = store
        .update(&key("a"), created.resource_version, cvc("a", 3))
        .unwrap();
    let deleted = store.delete(&key("a"), None).unwrap();
    let changes = store.changes_since(0, 100).unwrap();
    let kinds: Vec<(u64, ChangeKind)> = changes
        .iter()
        .map(|c| (c.object.resource_version, c.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (created.resource_version, ChangeKind::Added),
            (updated.resource_version, ChangeKind::Modified),
            (deleted.resource_version, ChangeKind::Deleted)
        ]
    );
    assert_eq!(changes[1].object, updated);
    assert_eq!(
        changes[2].object, deleted,
        "a deletion carries the last state"
    );
    assert_eq!(
        changes[2].object.object["metadata"]["resourceVersion"],
        deleted.resource_version.to_string()
    );
    assert_eq!(
        store.changes_since(updated.resource_version, 100).unwrap()[0].object,
        deleted
    );
    assert_eq!(store.changes_since(0, 2).unwrap().len(), 2, "limit");
    assert!(store
        .changes_since(deleted.resource_version, 100)
        .unwrap()
        .is_empty());
    assert!(store.changes_since(0, 0).unwrap().is_empty(), "limit 0");
    assert_eq!(store.get(&key("a")).unwrap(), None);
}

fn a_watch_from_before_the_kept_changes_is_told_to_list_again(backend: &mut dyn Backend) {
    let store = backend.open_keeping(3);
    let versions: Vec<u64> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|name| {
            store
                .create(&key(name), cvc(name, 1))
                .unwrap()
                .resource_version
        })
        .collect();
    backend.forget();
    let error = store.changes_since(versions[0], 100).unwrap_err();
    match &error {
        StoreError::Expired { requested, oldest } => {
            assert_eq!((*requested, *oldest), (versions[0], versions[2]))
        }
        other => panic!("expected Expired, got {other}"),
    }
    assert!(error.to_string().contains("list again"), "{error}");
    assert!(matches!(
        store.changes_since(0, 100),
        Err(StoreError::Expired { .. })
    ));
    let kept: Vec<u64> = store
        .changes_since(versions[1], 100)
        .unwrap()
        .into_iter()
        .map(|c| c.object.resource_version)
        .collect();
    assert_eq!(kept, versions[2..]);
    // Listing still sees everything, and a watch from the listed version works.
    assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 5);
    let now = store.current_version().unwrap();
    assert!(store.changes_since(now, 100).unwrap().is_empty());
    let next = store.create(&key("f"), cvc("f", 1)).unwrap();
    assert_eq!(store.changes_since(now, 100).unwrap()[0].object, next);
}

fn everything_survives_a_restart(backend: &mut dyn Backend) {
    let store = backend.open();
    store.create(&key("a"), cvc("a", 2)).unwrap();
    let b = store.create(&key("b"), cvc("b", 3)).unwrap();
    let store = backend.restart(store);
    assert_eq!(store.current_version().unwrap(), b.resource_version);
    assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 2);
    assert_eq!(store.get(&key("b")).unwrap(), Some(b.clone()));
    assert_eq!(store.changes_since(0, 100).unwrap().len(), 2);
    let c = store.create(&key("c"), cvc("c", 1)).unwrap();
    assert!(c.resource_version > b.resource_version);
}

fn of_concurrent_updates_from_one_version_exactly_one_wins(backend: &mut dyn Backend) {
    const WRITERS: usize = 6;
    let store = backend.open();
    let mut version = store
        .create(&key("a"), cvc("a", 1))
        .unwrap()
        .resource_version;
    for round in 0..5u64 {
        let start = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS as u64)
            .map(|writer| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    store.update(&key("a"), version, cvc("a", 10 * round + writer))
                })
            })
            .collect();
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for result in &results {
            match result {
                Ok(_) => {}
                Err(StoreError::Conflict {
                    expected, actual, ..
                }) => {
                    assert_eq!((*expected, *actual), (version, won[0].resource_version))
                }
                Err(other) => panic!("round {round}: {other}"),
            }
        }
        let stored = store.get(&key("a")).unwrap().unwrap();
        assert_eq!(
            &stored, won[0],
            "round {round}: the winner's write is stored"
        );
        version = stored.resource_version;
    }
}

fn a_watch_sees_concurrent_writers_changes_once_each_in_order(backend: &mut dyn Backend) {
    let store = backend.open();
    let before = store.current_version().unwrap();
    let writers: Vec<_> = ["x", "y"]
        .into_iter()
        .map(|writer| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut written = Vec::new();
                for index in 0..30u64 {
                    let name = format!("{writer}-{}", index % 5);
                    let result = match store.get(&key(&name)).unwrap() {
                        Some(_) if index % 7 == 6 => store.delete(&key(&name), None),
                        Some(found) => {
                            store.update(&key(&name), found.resource_version, cvc(&name, index))
                        }
                        None => store.create(&key(&name), cvc(&name, index)),
                    };
                    written.push(result.unwrap());
                }
                written
            })
        })
        .collect();
    let mut written: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    written.sort_by_key(|w| w.resource_version);

    // Read it back in small pages, as a watcher that falls behind would.
    let mut seen = Vec::new();
    let mut after = before;
    for _ in 0..written.len() {
        let page = store.changes_since(after, 7).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7);
        after = last.object.resource_version;
        seen.extend(page);
    }
    let seen_objects: Vec<_> = seen.iter().map(|c| c.object.clone()).collect();
    assert_eq!(seen_objects, written, "every write once, in version order");
    assert!(seen.iter().any(|c| c.kind == ChangeKind::Deleted));
    assert!(seen.iter().any(|c| c.kind == ChangeKind::Modified));
    assert!(store.changes_since(after, 7).unwrap().is_empty());
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
