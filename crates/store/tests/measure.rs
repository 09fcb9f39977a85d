//! Measures the store backends side by side (not a test: it asserts nothing about speed and is
//! ignored unless asked for): `cargo test -p tandem-store --test measure -- --ignored --nocapture`.
//! Prints per-call times for create, get, a list of 2000 objects and 1000 changes since a
//! version, on redb and on a one-member etcd on loopback (both syncing every write to disk).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::Backend;
use tandem_store::{ObjectKey, Store};

const OBJECTS: usize = 2000;
const CHANGES: usize = 1000;
const REPEATS: u32 = 10;

fn key(index: usize) -> ObjectKey {
    ObjectKey::new(
        "CStorVolumeReplica",
        "openebs",
        &format!("replica-{index:05}"),
    )
}

/// A CVR-sized object (about 600 bytes of JSON).
fn object(index: usize) -> serde_json::Value {
    json!({
        "apiVersion": "cstor.openebs.io/v1",
        "kind": "CStorVolumeReplica",
        "metadata": {
            "name": format!("replica-{index:05}"),
            "namespace": "openebs",
            "labels": {
                "cstorpoolinstance.openebs.io/name": "pool-a-xyz1",
                "cstorvolume.openebs.io/name": format!("pvc-{index:05}"),
            },
            "finalizers": ["cstorvolumereplica.openebs.io/finalizer"],
        },
        "spec": { "capacity": "10Gi", "targetIP": "10.0.0.1", "replicaid": format!("{index:032x}") },
        "status": { "phase": "Healthy", "capacity": { "total": "10Gi", "used": "1Mi" } },
    })
}

fn per_call(total: Duration, calls: usize) -> String {
    format!("{:>9.1} µs", total.as_secs_f64() * 1e6 / calls as f64)
}

fn measure(name: &str, store: Arc<dyn Store>) {
    let started = Instant::now();
    for index in 0..OBJECTS {
        store.create(&key(index), object(index)).unwrap();
    }
    let create = started.elapsed();

    let started = Instant::now();
    for index in 0..OBJECTS {
        assert!(store.get(&key(index)).unwrap().is_some());
    }
    let get = started.elapsed();

    let started = Instant::now();
    for _ in 0..REPEATS {
        assert_eq!(
            store.list("CStorVolumeReplica", None).unwrap().len(),
            OBJECTS
        );
    }
    let list = started.elapsed();

    let from = store.current_version().unwrap() - CHANGES as u64;
    let started = Instant::now();
    for _ in 0..REPEATS {
        assert_eq!(store.changes_since(from, CHANGES).unwrap().len(), CHANGES);
    }
    let changes = started.elapsed();

    // A watcher one write behind, as the control plane's watch is after each write.
    let started = Instant::now();
    for index in 0..REPEATS as usize {
        let written = store
            .update(
                &key(index),
                store.get(&key(index)).unwrap().unwrap().resource_version,
                object(index),
            )
            .unwrap();
        let seen = store
            .changes_since(written.resource_version - 1, CHANGES)
            .unwrap();
        assert_eq!(seen.len(), 1);
    }
    let behind_one = started.elapsed();

    println!(
        "{name:<5} create {}  get {}  list of {OBJECTS} {}  {CHANGES} changes since {}  get+update+1 change since {}",
        per_call(create, OBJECTS),
        per_call(get, OBJECTS),
        per_call(list, REPEATS as usize),
        per_call(changes, REPEATS as usize),
        per_call(behind_one, REPEATS as usize),
    );
}

#[test]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
fn measure_redb_and_etcd() {
    measure("redb", support::RedbBackend::new().open());
    if let Some(mut etcd) = support::EtcdBackend::start() {
        measure("etcd", etcd.open());
        // A store opened after the writes has none of them in its watch cache: it replays
        // etcd's history.
        let store = etcd.open();
        let from = store.current_version().unwrap() - CHANGES as u64;
        let started = Instant::now();
        for _ in 0..REPEATS {
            assert_eq!(store.changes_since(from, CHANGES).unwrap().len(), CHANGES);
        }
        println!(
            "etcd  {CHANGES} changes since, replayed from etcd's history {}",
            per_call(started.elapsed(), REPEATS as usize)
        );
    }
}
