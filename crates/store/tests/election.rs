//! Leader election against a real etcd: one leader at a time; a resigning leader hands over at
//! once; a crashed one only after its lease, and never before its own clock says it stopped.

#![cfg(feature = "etcd")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_store::election::{self, ControlPlane, ElectionConfig, Leadership, Term};
use tokio::sync::watch;
use tokio::time::Instant;

/// One etcd member on free loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl Etcd {
    /// Starts etcd, or `None` (saying so) when it is not installed.
    async fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            println!("SKIPPED: etcd is not installed (Debian: etcd-server)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "e1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy =
                election::members(std::slice::from_ref(&etcd.url), Duration::from_millis(500))
                    .await;
            if healthy.is_ok_and(|members| members.iter().all(|m| m.healthy)) {
                return Some(etcd);
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &Etcd, prefix: &str, port: u16) -> ElectionConfig {
    ElectionConfig {
        endpoints: vec![etcd.url.clone()],
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
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let first = candidate(config(&etcd, "/t1", 1));
    let second = candidate(config(&etcd, "/t1", 2));
    let (index, term) = a_leader(&[&first, &second], Duration::from_secs(10)).await;
    let (planes, leader) = election::control_planes(std::slice::from_ref(&etcd.url), "/t1", TTL)
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
    let (planes, _) = election::control_planes(std::slice::from_ref(&etcd.url), "/t1", TTL)
        .await
        .expect("the registrations");
    assert_eq!(planes.len(), 1, "the resigned one is gone: {planes:?}");
}

/// A leader that dies without a word (its task aborted: no renewals, no revoke) is replaced only
/// after its lease, and the new term starts after the old leader's own clock said it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_its_lease_never_before_it_stopped() {
    let Some(etcd) = Etcd::start().await else {
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
    let Some(etcd) = Etcd::start().await else {
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
