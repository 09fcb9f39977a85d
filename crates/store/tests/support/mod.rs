//! What the store's tests share: real etcd members on loopback (killed on drop), and the
//! `Backend` trait through which one conformance suite runs against redb and against etcd.
#![allow(dead_code)] // each test binary uses a part

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_store::{EtcdOptions, EtcdStore, RedbStore, Store};

/// The etcd binary, or None (and a printed line saying the test is skipped) when none is
/// installed. `TANDEM_ETCD` names another one.
pub fn etcd_binary() -> Option<PathBuf> {
    let named = std::env::var_os("TANDEM_ETCD").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|path| path.is_file())
        })
    });
    if found.is_none() {
        println!(
            "skipped: etcd is not installed (apt-get install etcd-server, or set TANDEM_ETCD)"
        );
    }
    found
}

/// A loopback port nobody listens on now (etcd binds it a moment later; a clash makes the start
/// fail and retry).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("find a free loopback port")
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of real processes on loopback, with its data in a temporary directory.
pub struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

/// How long a cluster may take to start (etcd's first election is about a second).
const START_PATIENCE: Duration = Duration::from_secs(30);

impl Etcd {
    /// Starts `size` members and waits until each serves linearizable reads; None if etcd is
    /// not installed.
    pub fn start(size: usize) -> Option<Etcd> {
        let binary = etcd_binary()?;
        let mut last = String::new();
        for _ in 0..3 {
            let mut etcd = Etcd {
                binary: binary.clone(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                members: (0..size)
                    .map(|index| Member {
                        name: format!("m{index}"),
                        client_port: free_port(),
                        peer_port: free_port(),
                        child: None,
                    })
                    .collect(),
            };
            for index in 0..size {
                etcd.spawn(index);
            }
            match etcd.wait_ready((0..size).collect()) {
                Ok(()) => return Some(etcd),
                Err(error) => last = error,
            }
        }
        panic!("etcd did not start (three tries): {last}");
    }

    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.members[index].client_port)
    }

    /// Kills a member with SIGKILL and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data and ports, without waiting for it.
    pub fn restart(&mut self, index: usize) {
        assert!(self.members[index].child.is_none(), "member {index} runs");
        self.spawn(index);
    }

    /// Starts the killed member again and waits until it serves reads with a quorum.
    pub fn restart_and_wait(&mut self, index: usize) {
        self.restart(index);
        self.wait_ready(vec![index])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn spawn(&mut self, index: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let member = &self.members[index];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("open the etcd log");
        let child = Command::new(&self.binary)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", "tandem-test"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[index].child = Some(child);
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[index].name))
    }

    /// Waits until each of `members` answers a linearizable read (so it has a leader).
    fn wait_ready(&mut self, members: Vec<usize>) -> Result<(), String> {
        let deadline = Instant::now() + START_PATIENCE;
        for index in members {
            let options = EtcdOptions::new(vec![self.endpoint(index)], "/ready")
                .with_timeout(Duration::from_secs(1));
            let store = EtcdStore::connect(options).map_err(|e| e.to_string())?;
            loop {
                if let Some(child) = self.members[index].child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.members[index].child = None;
                        return Err(format!(
                            "etcd member {index} exited ({status}): {}",
                            tail(&self.log_path(index))
                        ));
                    }
                }
                match store.current_version() {
                    Ok(_) => break,
                    Err(error) if Instant::now() > deadline => {
                        return Err(format!(
                            "etcd member {index} not ready within {START_PATIENCE:?}: {error}; \
                             its log ends: {}",
                            tail(&self.log_path(index))
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// A store on this cluster under `prefix`.
    pub fn store(&self, prefix: &str, timeout: Duration) -> EtcdStore {
        EtcdStore::open(EtcdOptions::new(self.endpoints(), prefix).with_timeout(timeout))
            .expect("open the etcd store")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

/// The last lines of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// A store implementation under test, as the conformance suite drives it.
pub trait Backend {
    /// A new, empty store.
    fn open(&mut self) -> Arc<dyn Store>;
    /// A new, empty store that keeps only the newest `kept` changes for watchers once told to
    /// `forget` (redb keeps that many as it writes; etcd's watch cache keeps that many, and etcd
    /// compacts its history when told).
    fn open_keeping(&mut self, kept: u64) -> Arc<dyn Store>;
    /// Drops the changes older than the newest `kept` ones.
    fn forget(&mut self);
    /// Stops everything holding the store (the last handle is `store`) with SIGKILL where it is
    /// a process, starts it again on the same data and opens the store again.
    fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store>;
}

pub struct RedbBackend {
    dir: tempfile::TempDir,
    kept: Option<u64>,
}

impl RedbBackend {
    pub fn new() -> RedbBackend {
        RedbBackend {
            dir: tempfile::tempdir().expect("a temporary directory"),
            kept: None,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store.redb")
    }

    fn reopen(&self) -> Arc<dyn Store> {
        Arc::new(
            match self.kept {
                Some(kept) => RedbStore::open_keeping(&self.path(), kept),
                None => RedbStore::open(&self.path()),
            }
            .expect("open the redb store"),
        )
    }
}

impl Backend for RedbBackend {
    fn open(&mut self) -> Arc<dyn Store> {
        self.reopen()
    }

    fn open_keeping(&mut self, kept: u64) -> Arc<dyn Store> {
        self.kept = Some(kept);
        self.reopen()
    }

    fn forget(&mut self) {}

    fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        assert_eq!(Arc::strong_count(&store), 1, "the test holds other handles");
        drop(store);
        self.reopen()
    }
}

/// A one-member etcd of its own (so compaction and restarts touch no other test).
pub struct EtcdBackend {
    etcd: Etcd,
    kept: Option<u64>,
}

const PREFIX: &str = "/conformance";

impl EtcdBackend {
    /// None (with a printed line) when etcd is not installed.
    pub fn start() -> Option<EtcdBackend> {
        Some(EtcdBackend {
            etcd: Etcd::start(1)?,
            kept: None,
        })
    }

    /// A store keeping (in its watch cache) the changes the test asked for.
    fn store(&self) -> EtcdStore {
        let mut options = EtcdOptions::new(self.etcd.endpoints(), PREFIX);
        if let Some(kept) = self.kept {
            options = options.with_changes_kept(kept as usize);
        }
        EtcdStore::open(options).expect("open the etcd store")
    }
}

impl Backend for EtcdBackend {
    fn open(&mut self) -> Arc<dyn Store> {
        Arc::new(self.store())
    }

    fn open_keeping(&mut self, kept: u64) -> Arc<dyn Store> {
        self.kept = Some(kept);
        Arc::new(self.store())
    }

    fn forget(&mut self) {
        let kept = self.kept.expect("opened with open_keeping");
        let store = self.store();
        let current = store.current_version().expect("read the current version");
        store
            .compact(current.saturating_sub(kept))
            .expect("compact etcd");
    }

    fn restart(&mut self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        assert_eq!(Arc::strong_count(&store), 1, "the test holds other handles");
        drop(store);
        self.etcd.kill(0);
        self.etcd.restart_and_wait(0);
        Arc::new(self.store())
    }
}
