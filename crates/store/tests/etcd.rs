//! The etcd store where redb has no counterpart: a 3-member cluster losing one member and then
//! its quorum and coming back, an unreachable cluster, calls from inside async runtimes, and two
//! stores sharing one cluster under different prefixes. Each test that runs etcd passes with a
//! printed line when etcd is not installed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Etcd;
use tandem_store::{ChangeKind, EtcdOptions, EtcdStore, ObjectKey, Store, StoreError, Versioned};

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

/// Creates an object, retrying for at most `patience` while the store is Unavailable. A write
/// whose answer was lost may have happened, so AlreadyExists after such a failure is success.
fn create_once_available(store: &dyn Store, name: &str, patience: Duration) -> Versioned {
    let deadline = Instant::now() + patience;
    let mut failed = false;
    loop {
        match store.create(&key(name), cvc(name, 1)) {
            Ok(created) => return created,
            Err(StoreError::AlreadyExists(_)) if failed => {
                return store.get(&key(name)).unwrap().expect("it exists")
            }
            Err(StoreError::Unavailable(reason)) if Instant::now() < deadline => {
                println!("create {name}: still unavailable: {reason}");
                failed = true;
            }
            Err(error) => panic!("create {name}: {error}"),
        }
    }
}

/// A call made without a quorum fails as Unavailable, naming the endpoints, within the timeout.
fn assert_unavailable_in_time<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    endpoints: &[String],
    call: impl FnOnce() -> Result<T, StoreError>,
) {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    match result {
        Err(StoreError::Unavailable(reason)) => {
            println!("{what} after {took:?}: {reason}");
            assert!(
                endpoints.iter().all(|e| reason.contains(e.as_str())),
                "{what}: the message names every endpoint: {reason}"
            );
            assert!(
                reason.contains(what),
                "{what}: the message says what failed: {reason}"
            );
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    assert!(
        took <= timeout + Duration::from_millis(1500),
        "{what} took {took:?} with a timeout of {timeout:?}"
    );
}

#[test]
fn a_three_member_cluster_survives_one_loss_refuses_without_quorum_and_continues_after() {
    let Some(mut etcd) = Etcd::start(3) else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let endpoints = etcd.endpoints();
    let store = etcd.store("/cluster", timeout);
    let mut written: Vec<Versioned> = Vec::new();
    for index in 0..10 {
        let name = format!("before-{index}");
        written.push(store.create(&key(&name), cvc(&name, 1)).unwrap());
    }
    let start = store.current_version().unwrap();

    // Lose the member the store talks to first (perhaps the leader): after at most an
    // election, every call works again.
    etcd.kill(0);
    written.push(create_once_available(
        &store,
        "after-loss",
        Duration::from_secs(15),
    ));
    for index in 0..10u64 {
        let name = format!("before-{index}");
        let found = store.get(&key(&name)).unwrap().unwrap();
        written.push(
            store
                .update(&key(&name), found.resource_version, cvc(&name, index + 2))
                .unwrap(),
        );
    }
    written.push(store.delete(&key("before-0"), None).unwrap());
    assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 10);
    assert_eq!(
        store.current_version().unwrap(),
        written.last().unwrap().resource_version
    );

    // Lose the quorum: every call fails as Unavailable within the timeout, never hangs. (A
    // write whose answer is lost may still happen once the quorum is back, so each write here
    // would be refused then: a create of an existing name, a stale update and delete.)
    etcd.kill(1);
    let found = written[1].clone();
    assert_unavailable_in_time("get", timeout, &endpoints, || store.get(&found.key));
    assert_unavailable_in_time("list", timeout, &endpoints, || {
        store.list("CStorVolumeConfig", None)
    });
    assert_unavailable_in_time("create", timeout, &endpoints, || {
        store.create(&found.key, cvc("x", 1))
    });
    assert_unavailable_in_time("update", timeout, &endpoints, || {
        store.update(&found.key, found.resource_version, cvc("x", 9))
    });
    assert_unavailable_in_time("delete", timeout, &endpoints, || {
        store.delete(&found.key, Some(found.resource_version))
    });
    assert_unavailable_in_time("changes since", timeout, &endpoints, || {
        store.changes_since(start, 100)
    });
    assert_unavailable_in_time("current version", timeout, &endpoints, || {
        store.current_version()
    });

    // Bring both back: the same store continues, nothing was lost, and a watcher from before
    // the outage sees every change since, in order.
    etcd.restart(0);
    etcd.restart(1);
    written.push(create_once_available(
        &store,
        "after-restart",
        Duration::from_secs(30),
    ));
    let seen: Vec<(ChangeKind, Versioned)> = store
        .changes_since(start, 1000)
        .unwrap()
        .into_iter()
        .map(|change| (change.kind, change.object))
        .collect();
    let expected: Vec<Versioned> = written[10..].to_vec();
    assert_eq!(
        seen.iter()
            .map(|(_, object)| object.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(seen[11].0, ChangeKind::Deleted);
    assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 11);
}

#[test]
fn an_unreachable_cluster_is_reported_within_the_timeout() {
    let nobody = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let error = EtcdStore::open(EtcdOptions::new(vec![nobody.clone()], "/x").with_timeout(timeout))
        .err()
        .expect("nothing listens there");
    assert!(started.elapsed() <= timeout + Duration::from_millis(1500));
    match error {
        StoreError::Unavailable(reason) => {
            assert!(reason.contains(&nobody), "{reason}");
            assert!(reason.contains("read the current version"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    // The same from inside an async runtime, and a bad endpoint there: errors, no panic.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = EtcdOptions::new(vec![nobody.clone()], "/x").with_timeout(timeout);
        assert!(matches!(
            EtcdStore::open(options),
            Err(StoreError::Unavailable(_))
        ));
        let options = EtcdOptions::new(vec!["bad host:1".into()], "/x");
        let error = EtcdStore::connect(options).err().expect("a bad endpoint");
        assert!(error.to_string().contains("bad host:1"), "{error}");
    });
}

#[test]
fn calls_from_inside_async_runtimes_work_and_the_store_can_be_dropped_there() {
    let Some(etcd) = Etcd::start(1) else {
        return;
    };
    let endpoints = etcd.endpoints();
    let multi = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = multi.block_on(async {
        let options = EtcdOptions::new(endpoints.clone(), "/async");
        Arc::new(EtcdStore::open(options).unwrap())
    });
    // Many handlers at once, each calling the synchronous store on a runtime thread.
    let handlers: Vec<_> = (0..8)
        .map(|index| {
            let store = store.clone();
            multi.spawn(async move {
                let name = format!("handler-{index}");
                store.create(&key(&name), cvc(&name, 1)).unwrap();
                store.get(&key(&name)).unwrap().unwrap()
            })
        })
        .collect();
    multi.block_on(async {
        for handler in handlers {
            handler.await.unwrap();
        }
    });
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    single.block_on(async {
        assert_eq!(store.list("CStorVolumeConfig", None).unwrap().len(), 8);
        let version = store.current_version().unwrap();
        assert!(store.changes_since(version, 10).unwrap().is_empty());
        // The last handle goes away on an async thread.
        drop(store);
    });
}

#[test]
fn two_stores_under_different_prefixes_see_only_their_own_objects_and_versions() {
    let Some(etcd) = Etcd::start(1) else {
        return;
    };
    let timeout = Duration::from_secs(5);
    let (one, two) = (etcd.store("/one", timeout), etcd.store("/two", timeout));
    let first = one.create(&key("a"), cvc("a", 1)).unwrap();
    let other = two.create(&key("a"), cvc("a", 7)).unwrap();
    two.create(&key("b"), cvc("b", 7)).unwrap();
    // The other store's writes move etcd's revision, not this store's version, and a watch
    // from this store's version returns at once with nothing.
    assert_eq!(one.current_version().unwrap(), first.resource_version);
    let started = Instant::now();
    assert!(one
        .changes_since(first.resource_version, 10)
        .unwrap()
        .is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(one.changes_since(0, 10).unwrap().len(), 1);
    assert_eq!(two.changes_since(0, 10).unwrap().len(), 2);
    assert_eq!(one.list("CStorVolumeConfig", None).unwrap(), [first]);
    assert_eq!(two.get(&key("a")).unwrap(), Some(other));
    // A store opened by its location string is the same store.
    let location = format!("etcd://{}/one", etcd.endpoints().join(","));
    let reopened = tandem_store::open(&location).unwrap();
    assert_eq!(reopened.list("CStorVolumeConfig", None).unwrap().len(), 1);
    // Its watch cache starts now, so older changes come from etcd's history, the same.
    assert_eq!(
        reopened.changes_since(0, 10).unwrap(),
        one.changes_since(0, 10).unwrap()
    );
}
