//! Leader election against a real etcd: one leader at a time; a resigning leader hands over at
//! once; a crashed one only after its lease, and never before its own clock says it stopped; a
//! deposed leader's fenced writes are refused.

#![cfg(feature = "etcd")]

use std::time::Duration;

use serde_json::json;
use tandem_store::election::{self, ControlPlane, ElectionConfig, Leadership, Term};
use tandem_store::{ObjectKey, Store, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

mod support;
use support::Etcd;

/// A one-member etcd, or `None` (the support module says why) when etcd is not installed.
fn etcd() -> Option<Etcd> {
    Etcd::start(1)
}

fn urls(etcd: &Etcd) -> Vec<String> {
    etcd.endpoints()
        .iter()
        .map(|e| format!("http://{e}"))
        .collect()
}

const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &Etcd, prefix: &str, port: u16) -> ElectionConfig {
    ElectionConfig {
        endpoints: urls(etcd),
        tls: None,
        prefix: prefix.to_string(),
        me: ControlPlane {
            address: format!("http://127.0.0.1:{port}"),
            pid: std::process::id(),
        },
        ttl: TTL,
    }
}

/// A running election and what it publishes.
struct Candidate {
    leadership: watch::Receiver<Leadership>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(config: ElectionConfig) -> Candidate {
    let (sender, leadership) = watch::channel(Leadership::Following);
    let task = tokio::spawn(election::run(config, sender));
    Candidate { leadership, task }
}

/// Waits (bounded) until one of `candidates` leads; returns its index and term.
async fn a_leader(candidates: &[&Candidate], within: Duration) -> (usize, Term) {
    let deadline = Instant::now() + within;
    loop {
        let leading: Vec<(usize, Term)> = candidates
            .iter()
            .enumerate()
            .filter_map(|(index, c)| c.leadership.borrow().current().map(|term| (index, term)))
            .collect();
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        if let Some(&one) = leading.first() {
            return one;
        }
        assert!(Instant::now() < deadline, "nobody leads after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_and_a_resigning_leader_hands_over_at_once() {
    let Some(etcd) = etcd() else {
        return;
    };
    let first = candidate(config(&etcd, "/t1", 1));
    let second = candidate(config(&etcd, "/t1", 2));
    let (index, term) = a_leader(&[&first, &second], Duration::from_secs(10)).await;
    let (planes, leader) = election::control_planes(&urls(&etcd), None, "/t1", TTL)
        .await
        .expect("the registrations");
    assert_eq!(planes.len(), 2, "{planes:?}");
    assert_eq!(
        leader.as_deref(),
        Some(format!("http://127.0.0.1:{}", index + 1).as_str())
    );

    // The leader stops (its receiver goes): it gives its lease back, the other leads well
    // before the lease would have run out.
    let (leaving, staying) = if index == 0 {
        (first, second)
    } else {
        (second, first)
    };
    drop(leaving.leadership);
    tokio::time::timeout(Duration::from_secs(5), leaving.task)
        .await
        .expect("the election ends when nobody listens")
        .expect("no panic");
    let resigned = Instant::now();
    let (_, next) = a_leader(&[&staying], Duration::from_secs(10)).await;
    assert!(next.0 > term.0, "terms grow: {term:?} then {next:?}");
    assert!(
        resigned.elapsed() < TTL,
        "handed over in {:?}, not after the lease",
        resigned.elapsed()
    );
    let (planes, _) = election::control_planes(&urls(&etcd), None, "/t1", TTL)
        .await
        .expect("the registrations");
    assert_eq!(planes.len(), 1, "the resigned one is gone: {planes:?}");
}

/// A leader that dies without a word (its task aborted: no renewals, no revoke) is replaced only
/// after its lease, and the new term starts after the old leader's own clock said it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_its_lease_never_before_it_stopped() {
    let Some(etcd) = etcd() else {
        return;
    };
    let first = candidate(config(&etcd, "/t2", 1));
    let (_, term) = a_leader(&[&first], Duration::from_secs(10)).await;
    let second = candidate(config(&etcd, "/t2", 2));
    // A while with both running: the first keeps leading across renewals.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(first.leadership.borrow().current(), Some(term));
    assert_eq!(second.leadership.borrow().current(), None);

    let Candidate { leadership, task } = first;
    task.abort();
    let _ = task.await;
    let crashed = Instant::now();
    let Leadership::Leading { until, .. } = *leadership.borrow() else {
        panic!("the first led until it crashed");
    };
    let (_, next) = a_leader(&[&second], Duration::from_secs(10)).await;
    let took_over = Instant::now();
    assert!(next.0 > term.0);
    assert!(
        took_over >= until,
        "the new leader started {:?} before the old one's lease ended by its own clock",
        until - took_over
    );
    println!("handover after a crash: {:?}", took_over - crashed);
    assert!(took_over - crashed <= TTL * 3, "{:?}", took_over - crashed);
}

/// etcd gone: the leader steps down by its own clock within the lease, without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_reach_etcd_steps_down_within_its_lease() {
    let Some(etcd) = etcd() else {
        return;
    };
    let leader = candidate(config(&etcd, "/t3", 1));
    a_leader(&[&leader], Duration::from_secs(10)).await;
    drop(etcd);
    let killed = Instant::now();
    let deadline = killed + TTL + Duration::from_secs(1);
    while leader.leadership.borrow().current().is_some() {
        assert!(Instant::now() < deadline, "still leading without etcd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        killed.elapsed() <= TTL,
        "stepped down after {:?}",
        killed.elapsed()
    );
}

/// Writes made in a term hold while it leads; once another leads they are refused as fenced,
/// and a fenced write's other refusals (a stale version, a missing object) read as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_fenced_writes_are_refused() {
    let Some(etcd) = etcd() else {
        return;
    };
    let store = {
        let etcd_store = etcd.store("/t4", Duration::from_secs(2));
        std::sync::Arc::new(etcd_store)
    };
    let first = candidate(config(&etcd, "/t4", 1));
    let (_, term) = a_leader(&[&first], Duration::from_secs(10)).await;
    let key = ObjectKey::new("CStorVolumeConfig", "openebs", "pvc-f");
    let object = |n: u64| json!({"metadata": {"name": "pvc-f", "namespace": "openebs"}, "n": n});
    let writer = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let fenced = writer.fenced(term.0).expect("etcd fences");
        let created = fenced.create(&key, object(1))?;
        let stale = fenced.update(&key, created.resource_version + 1000, object(2));
        let missing = fenced.delete(
            &ObjectKey::new("CStorVolumeConfig", "openebs", "none"),
            None,
        );
        Ok::<_, StoreError>((created, stale, missing))
    })
    .await
    .expect("no panic")
    .expect("the leader writes");
    let (created, stale, missing) = written;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    // Another leads: the first term's writes are refused, and nothing is written.
    drop(first.leadership);
    let _ = first.task.await;
    let second = candidate(config(&etcd, "/t4", 2));
    let (_, next) = a_leader(&[&second], Duration::from_secs(10)).await;
    assert_ne!(next, term);
    let writer = store.clone();
    let key = ObjectKey::new("CStorVolumeConfig", "openebs", "pvc-f");
    let version = created.resource_version;
    let (refused, stored) = tokio::task::spawn_blocking(move || {
        let refused = writer
            .fenced(term.0)
            .expect("etcd fences")
            .update(&key, version, object(3));
        (refused, writer.get(&key))
    })
    .await
    .expect("no panic");
    assert!(
        matches!(refused, Err(StoreError::Fenced { term: t }) if t == term.0),
        "{refused:?}"
    );
    let stored = stored.expect("a read").expect("the object");
    assert_eq!(stored.object["n"], 1, "the deposed leader wrote nothing");
}
