//! The replica host: one per agent (pool), listening on one TCP address and serving every
//! replica in the pool.
//!
//! Each hosted replica is a task that owns its [`Replica`] state machine and its
//! [`ReplicaDisk`]: it feeds the state machine the frames of its connections and the
//! completions of its disk operations, sends its messages back on the connection that carries
//! their session, and runs its disk operations on the blocking pool (several at once, as the
//! core pipelines them). Nothing else touches the state machine.
//!
//! Connections: a target's first frame must be a `Hello` naming a hosted replica (otherwise the
//! connection is closed with a warning); every later frame of that connection goes to that
//! replica. When the replica accepts a new session, every other connection to it is closed
//! (the older target's session is over). A `Hello` the replica refuses (an older generation,
//! another replica, another geometry) or ignores (a stale session) is answered as the core
//! decides and its connection is then closed. A malformed frame closes its connection only.
//!
//! Security ([`HostOptions::security`]): under mutual TLS every connection's handshake runs in
//! its own task, within `handshake_timeout`, at most `handshakes_max` at once (and
//! `handshakes_per_peer` from one address); only a peer whose
//! certificate (of the cluster CA) names a node is let in, and then speaks frames as above.
//! Plain TCP lets in anyone who reaches the port.
//!
//! Bounds: each replica's input is bounded in frames and bytes (a connection's reader waits,
//! so TCP pushes back on the target); each connection's outgoing queue is bounded in frames and
//! bytes and a connection that falls behind is closed (the target's timeouts then eject and
//! resync the replica); a replica stops taking input while `disk_inflight_max` disk operations
//! or `read_bytes_max` bytes of reads are in flight; at most `connections_max` connections; a
//! connection must say Hello within `hello_timeout` and each write must finish within
//! `write_timeout`. (Work the core has received but not started is bounded by the target's
//! `replica_inflight_max`.)

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tandem_core::{
    DiskOp, DiskOpId, Envelope, Generation, Incarnation, Message, Replica, ReplicaId, ReplicaInput,
    ReplicaOptions, ReplicaOutput, Seq, SessionId, Stamp,
};
use tandem_pki::peers::PeerCounts;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::connection::{self, ConnHandle, ConnId, LocalHost};
use super::disk::{Allocation, DiskCompletion, DiskOpenError, PoolShared, ReplicaDisk};
use crate::security::LinkSecurity;

/// How a host runs. [`HostOptions::default`] is what the agent uses.
/// Reads and writes up to this long are done on the replica's own task rather than the
/// blocking pool.
const INLINE_MAX: u64 = 64 << 10;

fn inline(op: &DiskOp) -> bool {
    match op {
        DiskOp::Write { data, .. } => data.len() as u64 <= INLINE_MAX,
        DiskOp::Read { len, .. } => *len <= INLINE_MAX,
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Plain TCP (the default: anyone reaching the port may open sessions) or mutual TLS with
    /// the cluster CA, letting in only node identities.
    pub security: LinkSecurity,
    pub replica: ReplicaOptions,
    /// Frames, and bytes of frames, waiting for one replica's task (beyond them, its
    /// connections stop reading). A frame larger than the byte limit waits for an empty queue.
    pub replica_queue: usize,
    pub replica_queue_bytes: usize,
    /// Disk operations, and bytes of reads, one replica may have in flight before it stops
    /// taking input.
    pub disk_inflight_max: usize,
    pub read_bytes_max: u64,
    /// Frames and bytes waiting to be written on one connection before it is closed as too
    /// slow. One frame is always accepted on an idle connection, whatever its size.
    pub outgoing_frames_max: usize,
    pub outgoing_bytes_max: usize,
    /// Connections open at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// How long a TLS handshake may take, and how many may be unfinished at once (a connection
    /// beyond them is closed at once). Handshakes run off the accept loop.
    pub handshake_timeout: Duration,
    pub handshakes_max: usize,
    /// ... and from one peer address (so that one address cannot take them all).
    pub handshakes_per_peer: usize,
    /// How long a new connection may take (after its TLS handshake) to send its Hello.
    pub hello_timeout: Duration,
    /// How long one write to a target may take.
    pub write_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            security: LinkSecurity::Plain,
            replica: ReplicaOptions::default(),
            replica_queue: 1024,
            replica_queue_bytes: 256 << 20,
            disk_inflight_max: 256,
            read_bytes_max: 256 << 20,
            outgoing_frames_max: 4096,
            outgoing_bytes_max: 256 << 20,
            connections_max: 1024,
            handshake_timeout: Duration::from_secs(10),
            handshakes_max: 256,
            handshakes_per_peer: 32,
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the host could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("cannot read the address the replica host listens on: {0}")]
    LocalAddress(io::Error),
    #[error(transparent)]
    Open(#[from] DiskOpenError),
    #[error("replica {} is already served by this host from {}", replica.0, dir.display())]
    AlreadyHosted { replica: ReplicaId, dir: PathBuf },
    #[error("{} is already served by this host", dir.display())]
    DirectoryHosted { dir: PathBuf },
    #[error("opening {} failed: {reason}", dir.display())]
    Task { dir: PathBuf, reason: String },
}

/// What the host says about one replica, for the agent to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    pub dir: PathBuf,
    /// The replica's data is a consistent copy of the volume's history up to `stamp`.
    pub consistent: bool,
    /// The end of the history it holds.
    pub stamp: Stamp,
    /// False after an unclean stop until it is resynced or serves as a source.
    pub stamp_exact: bool,
    pub checkpoint: Seq,
    pub generation_seen: Generation,
    /// The generation of the target whose session it serves, while that target is connected.
    pub target: Option<Generation>,
    /// False if the replica's task has ended on its own (a bug: it is logged).
    pub running: bool,
    /// The space it takes on disk (`None` if it could not be measured).
    pub allocation: Option<Allocation>,
}

/// What the replica's task publishes after each step.
#[derive(Clone, Copy, Debug)]
struct Published {
    consistent: bool,
    stamp: Stamp,
    stamp_exact: bool,
    checkpoint: Seq,
    generation_seen: Generation,
    target: Option<Generation>,
}

/// What a replica's task receives from its connections.
pub(crate) enum Input {
    /// A connection bound to this replica by its first frame, `hello`.
    Attach { conn: ConnHandle, hello: Envelope },
    Frame {
        conn: ConnId,
        envelope: Envelope,
        /// The frame's share of the replica's input byte budget, returned once it is handled.
        _budget: OwnedSemaphorePermit,
    },
    /// The connection ended on the target's side (or carried garbage).
    Closed { conn: ConnId },
}

struct ReplicaEntry {
    dir: PathBuf,
    incarnation: Incarnation,
    input: ReplicaInbox,
    /// Dropping it stops the task.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    disk: ReplicaDisk,
    published: Arc<Mutex<Published>>,
}

/// The way in to a replica's task: a bounded channel, and a byte budget for what is in it.
#[derive(Clone)]
pub(crate) struct ReplicaInbox {
    pub sender: mpsc::Sender<Input>,
    pub budget: Arc<Semaphore>,
    pub budget_max: usize,
}

impl ReplicaInbox {
    /// Sends a frame once the budget has room for it; Err if the replica's task has stopped.
    pub async fn send_frame(&self, conn: ConnId, envelope: Envelope) -> Result<(), ()> {
        let size = connection::frame_size_estimate(&envelope.message).min(self.budget_max);
        let permits = u32::try_from(size).unwrap_or(u32::MAX);
        let budget = Arc::clone(&self.budget)
            .acquire_many_owned(permits)
            .await
            .map_err(drop)?;
        self.sender
            .send(Input::Frame {
                conn,
                envelope,
                _budget: budget,
            })
            .await
            .map_err(drop)
    }
}

/// What the host's tasks share.
pub(crate) struct Shared {
    pub options: HostOptions,
    pub shutdown: watch::Receiver<bool>,
    replicas: Mutex<HashMap<ReplicaId, ReplicaEntry>>,
    /// Shared with every hosted replica's disk: the pool's full mark and change count.
    pool: Arc<PoolShared>,
    /// A permit per open connection, from the listener or [`LocalHost`] (`connections_max`).
    pub connections: Arc<Semaphore>,
    next_conn: AtomicU64,
}

impl Shared {
    fn replicas(&self) -> MutexGuard<'_, HashMap<ReplicaId, ReplicaEntry>> {
        // Nothing panics while holding the lock; a poisoned map is still a consistent map.
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Where frames for `replica` go, if it is hosted.
    pub fn replica_input(&self, replica: ReplicaId) -> Option<ReplicaInbox> {
        self.replicas()
            .get(&replica)
            .map(|entry| entry.input.clone())
    }
}

/// The replica host. Dropping it stops accepting, stops every replica (without waiting for
/// their disk operations: use [`ReplicaHost::shutdown`] to wait) and closes every connection.
pub struct ReplicaHost {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl ReplicaHost {
    /// Marks the pool full (its size reached: every hosted replica then refuses writes as "no
    /// space", changing nothing; a target voids a write every Healthy replica refused, and
    /// ejects a replica that refused one the others hold) or no longer full.
    pub fn set_pool_full(&self, full: bool) {
        if self.shared.pool.set_full(full) != full {
            if full {
                tracing::warn!("the pool is full: its replicas refuse writes until space is freed");
            } else {
                tracing::info!("the pool has space again: its replicas accept writes");
            }
        }
    }

    /// How many writes, trims and metadata writes the hosted replicas have made: while it
    /// stands still, the pool's used space has not changed through them.
    pub fn pool_changes(&self) -> u64 {
        self.shared.pool.changes()
    }

    /// Listens on `address` (port 0: any free port; see [`ReplicaHost::local_addr`]).
    pub async fn bind(address: SocketAddr, options: HostOptions) -> Result<ReplicaHost, HostError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| HostError::Bind { address, source })?;
        ReplicaHost::serve(listener, options)
    }

    /// Serves on a listener the caller has bound (for callers that choose how to bind).
    pub fn serve(listener: TcpListener, options: HostOptions) -> Result<ReplicaHost, HostError> {
        let local_addr = listener.local_addr().map_err(HostError::LocalAddress)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(options.connections_max)),
            options,
            shutdown: shutdown_rx,
            replicas: Mutex::new(HashMap::new()),
            pool: Arc::default(),
            next_conn: AtomicU64::new(1),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(address = %local_addr, "replica host listening");
        Ok(ReplicaHost {
            shared,
            local_addr,
            shutdown,
            accept,
        })
    }

    /// The address the host listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The way in for targets in this process to the replicas of `node` (the node this host
    /// serves): in memory, without a socket or TLS.
    pub fn local(&self, node: impl Into<String>) -> LocalHost {
        LocalHost::new(node.into(), Arc::downgrade(&self.shared))
    }

    /// Opens the replica storage in `dir` and starts serving it. Refused if the storage cannot
    /// be opened, or if this host already serves the directory or the replica id.
    pub async fn add_replica(&self, dir: &Path) -> Result<ReplicaId, HostError> {
        if self
            .shared
            .replicas()
            .values()
            .any(|entry| entry.dir == dir)
        {
            return Err(HostError::DirectoryHosted {
                dir: dir.to_path_buf(),
            });
        }
        let owned = dir.to_path_buf();
        let pool = Arc::clone(&self.shared.pool);
        let disk = tokio::task::spawn_blocking(move || ReplicaDisk::open_in_pool(&owned, pool))
            .await
            .map_err(|error| HostError::Task {
                dir: dir.to_path_buf(),
                reason: error.to_string(),
            })??;
        let meta = disk.meta();
        let replica_id = meta.superblock.replica;
        let incarnation = meta.superblock.incarnation;
        let mut replicas = self.shared.replicas();
        if let Some(existing) = replicas.get(&replica_id) {
            return Err(HostError::AlreadyHosted {
                replica: replica_id,
                dir: existing.dir.clone(),
            });
        }
        if replicas.values().any(|entry| entry.dir == dir) {
            return Err(HostError::DirectoryHosted {
                dir: dir.to_path_buf(),
            });
        }
        let replica = Replica::open(meta, self.shared.options.replica);
        let published = Arc::new(Mutex::new(publish(&replica, None)));
        let (sender, input_rx) = mpsc::channel(self.shared.options.replica_queue);
        let budget_max = self
            .shared
            .options
            .replica_queue_bytes
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let input = ReplicaInbox {
            sender,
            budget: Arc::new(Semaphore::new(budget_max)),
            budget_max,
        };
        let (stop, stop_rx) = oneshot::channel();
        let runner = Runner {
            replica,
            disk: disk.clone(),
            options: self.shared.options.clone(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            disk_ops: JoinSet::new(),
            reads: HashMap::new(),
            read_bytes: 0,
            out: Vec::new(),
            inputs: VecDeque::new(),
            published: Arc::clone(&published),
        };
        let task = tokio::spawn(runner.run(input_rx, stop_rx));
        tracing::info!(
            replica = replica_id.0,
            incarnation = incarnation.0,
            dir = %dir.display(),
            "serving replica"
        );
        replicas.insert(
            replica_id,
            ReplicaEntry {
                dir: dir.to_path_buf(),
                incarnation,
                input,
                stop,
                task,
                disk,
                published,
            },
        );
        Ok(replica_id)
    }

    /// Stops serving `replica`: closes its connections and waits for its disk operations to
    /// finish, so its storage may be removed afterwards. False if it was not hosted.
    pub async fn remove_replica(&self, replica: ReplicaId) -> bool {
        let entry = self.shared.replicas().remove(&replica);
        let Some(entry) = entry else {
            return false;
        };
        stop_entry(replica, entry).await;
        tracing::info!(replica = replica.0, "stopped serving replica");
        true
    }

    /// The replicas served, in id order.
    pub fn replicas(&self) -> Vec<ReplicaId> {
        let mut ids: Vec<ReplicaId> = self.shared.replicas().keys().copied().collect();
        ids.sort();
        ids
    }

    /// The incarnation of the replica served with id `replica`, if it is served (nothing
    /// measured).
    pub fn incarnation(&self, replica: ReplicaId) -> Option<Incarnation> {
        self.shared
            .replicas()
            .get(&replica)
            .map(|entry| entry.incarnation)
    }

    /// One replica's status (measuring its allocation takes a few `stat` calls).
    pub fn status(&self, replica: ReplicaId) -> Option<ReplicaStatus> {
        let found = self
            .shared
            .replicas()
            .get(&replica)
            .map(|entry| status_without_allocation(replica, entry));
        found.map(with_allocation)
    }

    /// Every replica's status, in id order.
    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        let mut found: Vec<(ReplicaStatus, ReplicaDisk)> = self
            .shared
            .replicas()
            .iter()
            .map(|(replica, entry)| status_without_allocation(*replica, entry))
            .collect();
        found.sort_by_key(|(status, _)| status.replica);
        // Measured without holding the host's lock.
        found.into_iter().map(with_allocation).collect()
    }

    /// Stops accepting, stops every replica and waits for their disk operations.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        let entries: Vec<(ReplicaId, ReplicaEntry)> = self.shared.replicas().drain().collect();
        for (replica, entry) in entries {
            stop_entry(replica, entry).await;
        }
        tracing::info!(address = %self.local_addr, "replica host stopped");
    }
}

impl Drop for ReplicaHost {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        // Dropping the entries drops their stop senders: each task stops on its own.
        self.shared.replicas().clear();
    }
}

async fn stop_entry(replica: ReplicaId, entry: ReplicaEntry) {
    let ReplicaEntry { stop, task, .. } = entry;
    let _ = stop.send(());
    if let Err(error) = task.await {
        tracing::error!(replica = replica.0, %error, "replica task failed");
    }
}

fn status_without_allocation(
    replica: ReplicaId,
    entry: &ReplicaEntry,
) -> (ReplicaStatus, ReplicaDisk) {
    let published = *entry
        .published
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let status = ReplicaStatus {
        replica,
        incarnation: entry.incarnation,
        dir: entry.dir.clone(),
        consistent: published.consistent,
        stamp: published.stamp,
        stamp_exact: published.stamp_exact,
        checkpoint: published.checkpoint,
        generation_seen: published.generation_seen,
        target: published.target,
        running: !entry.task.is_finished(),
        allocation: None,
    };
    (status, entry.disk.clone())
}

fn with_allocation((mut status, disk): (ReplicaStatus, ReplicaDisk)) -> ReplicaStatus {
    match disk.allocation() {
        Ok(allocation) => status.allocation = Some(allocation),
        Err(error) => tracing::warn!(
            replica = status.replica.0,
            dir = %status.dir.display(),
            %error,
            "cannot measure replica storage"
        ),
    }
    status
}

fn publish(replica: &Replica, target: Option<Generation>) -> Published {
    let superblock = replica.superblock();
    Published {
        consistent: superblock.consistent,
        stamp: replica.history_stamp(),
        stamp_exact: replica.stamp_exact(),
        checkpoint: superblock.checkpoint,
        generation_seen: superblock.generation_seen,
        target,
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let handshakes = Arc::new(Semaphore::new(shared.options.handshakes_max));
    let peer_handshakes = PeerCounts::new();
    let acceptor = match &shared.options.security {
        LinkSecurity::Plain => None,
        LinkSecurity::Tls { server, .. } => Some(TlsAcceptor::from(Arc::clone(server))),
    };
    loop {
        let Ok(permit) = Arc::clone(&shared.connections).acquire_owned().await else {
            return; // Never closed.
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let id = shared.next_conn_id();
                tracing::debug!(%peer, conn = id.0, "accepted a connection");
                let shared = Arc::clone(&shared);
                let Some(acceptor) = &acceptor else {
                    tokio::spawn(connection::serve_plain(shared, stream, peer, id, permit));
                    continue;
                };
                // A silent peer holds only its own task, and only so many of those at once.
                let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                    tracing::warn!(
                        %peer,
                        limit = shared.options.handshakes_max,
                        "too many TLS handshakes in progress; closing the connection"
                    );
                    continue;
                };
                let Some(peer_handshake) =
                    peer_handshakes.take(peer.ip(), shared.options.handshakes_per_peer)
                else {
                    tracing::warn!(
                        %peer,
                        limit = shared.options.handshakes_per_peer,
                        "too many TLS handshakes in progress from this address; closing the connection"
                    );
                    continue;
                };
                tokio::spawn(connection::serve_tls(
                    shared,
                    acceptor.clone(),
                    stream,
                    peer,
                    id,
                    (permit, (handshake, peer_handshake)),
                ));
            }
            Err(error) => {
                // Out of descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A hosted replica's task.
struct Runner {
    replica: Replica,
    disk: ReplicaDisk,
    options: HostOptions,
    conns: HashMap<ConnId, ConnHandle>,
    /// Which connection carries each session that said Hello on it.
    sessions: HashMap<SessionId, ConnId>,
    disk_ops: JoinSet<DiskCompletion>,
    /// Reads in flight and their lengths (their buffers are the host's memory).
    reads: HashMap<DiskOpId, u64>,
    read_bytes: u64,
    out: Vec<ReplicaOutput>,
    /// Inputs waiting within one step: the input, then completions of operations done inline.
    inputs: VecDeque<ReplicaInput>,
    published: Arc<Mutex<Published>>,
}

impl Runner {
    async fn run(mut self, mut input: mpsc::Receiver<Input>, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(done) = self.disk_ops.join_next(), if !self.disk_ops.is_empty() => {
                    match done {
                        Ok(done) => {
                            if let Some(len) = self.reads.remove(&done.id) {
                                self.read_bytes -= len;
                            }
                            self.handle(ReplicaInput::from(done));
                        }
                        // Never aborted, and the operation itself catches panics: unreachable
                        // short of a tokio bug; the operation's id is lost, so its session
                        // will stall and the target will eject the replica.
                        Err(error) => tracing::error!(
                            replica = self.disk.replica().0,
                            %error,
                            "disk operation task failed"
                        ),
                    }
                }
                received = input.recv(), if self.may_take_input() => {
                    match received {
                        Some(received) => self.on_input(received),
                        None => break,
                    }
                }
            }
            self.publish();
        }
        for (_, conn) in self.conns.drain() {
            conn.close(true);
        }
        self.sessions.clear();
        // Storage may be removed once this returns: let what was started finish first.
        while self.disk_ops.join_next().await.is_some() {}
        self.publish();
    }

    fn may_take_input(&self) -> bool {
        self.disk_ops.len() < self.options.disk_inflight_max
            && self.read_bytes < self.options.read_bytes_max
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Attach { conn, hello } => {
                tracing::debug!(
                    replica = self.disk.replica().0,
                    conn = conn.id.0,
                    peer = %conn.peer,
                    session = hello.session.0,
                    "target connected"
                );
                let id = conn.id;
                self.conns.insert(id, conn);
                self.on_frame(id, hello);
            }
            Input::Frame { conn, envelope, .. } => self.on_frame(conn, envelope),
            Input::Closed { conn } => self.forget(conn),
        }
    }

    fn on_frame(&mut self, conn: ConnId, envelope: Envelope) {
        if !self.conns.contains_key(&conn) {
            return; // Closed by this task; the reader had not stopped yet.
        }
        let Message::Hello { .. } = envelope.message else {
            self.handle(ReplicaInput::Message(envelope));
            return;
        };
        let session = envelope.session;
        self.sessions.entry(session).or_insert(conn);
        let before = self.replica.session();
        self.handle(ReplicaInput::Message(envelope));
        let after = self.replica.session();
        // The answer, if any, is queued: only the current session is mapped from now on (the
        // core never sends on another).
        self.sessions.retain(|mapped, _| Some(*mapped) == after);
        if after == Some(session) && before != Some(session) {
            // A new session: every other connection belongs to an older one.
            let older: Vec<ConnId> = self
                .conns
                .keys()
                .copied()
                .filter(|other| *other != conn)
                .collect();
            for other in older {
                tracing::info!(
                    replica = self.disk.replica().0,
                    conn = other.0,
                    session = session.0,
                    generation = session.generation().0,
                    "a newer session took over; closing the older connection"
                );
                self.close(other, true);
            }
        } else if after.and_then(|current| self.sessions.get(&current)) != Some(&conn) {
            // Refused (the refusal is queued and is written first) or stale: this connection
            // carries no session.
            tracing::debug!(
                replica = self.disk.replica().0,
                conn = conn.0,
                session = session.0,
                "Hello not accepted; closing the connection"
            );
            self.close(conn, true);
        }
    }

    fn handle(&mut self, input: ReplicaInput) {
        // Both buffers keep their allocations from step to step.
        let mut inputs = std::mem::take(&mut self.inputs);
        inputs.push_back(input);
        while let Some(input) = inputs.pop_front() {
            let mut outputs = std::mem::take(&mut self.out);
            self.replica.handle(input, &mut outputs);
            for output in outputs.drain(..) {
                match output {
                    ReplicaOutput::Send(envelope) => self.send(envelope),
                    // A small read or write is a page-cache copy of microseconds: done here, it
                    // saves two thread hand-offs (to the blocking pool and back).
                    ReplicaOutput::Disk(op) if inline(&op) => {
                        inputs.push_back(self.disk.execute_blocking(op).into());
                    }
                    ReplicaOutput::Disk(op) => {
                        if let DiskOp::Read { id, len, .. } = op {
                            self.reads.insert(id, len);
                            self.read_bytes += len;
                        }
                        let disk = self.disk.clone();
                        self.disk_ops.spawn(async move { disk.execute(op).await });
                    }
                }
            }
            self.out = outputs;
        }
        self.inputs = inputs;
    }

    fn send(&mut self, envelope: Envelope) {
        let session = envelope.session;
        let Some(conn) = self.sessions.get(&session).copied() else {
            tracing::debug!(
                replica = self.disk.replica().0,
                session = session.0,
                kind = envelope.message.kind(),
                "no connection for the session; message dropped"
            );
            return;
        };
        let Some(handle) = self.conns.get(&conn) else {
            return;
        };
        if let Err(error) = handle.send(envelope) {
            tracing::warn!(
                replica = self.disk.replica().0,
                conn = conn.0,
                peer = %handle.peer,
                %error,
                "closing the connection"
            );
            self.close(conn, false);
        }
    }

    fn close(&mut self, conn: ConnId, drain: bool) {
        if let Some(handle) = self.conns.remove(&conn) {
            handle.close(drain);
        }
        self.sessions.retain(|_, carrier| *carrier != conn);
    }

    fn forget(&mut self, conn: ConnId) {
        if let Some(handle) = self.conns.remove(&conn) {
            tracing::debug!(
                replica = self.disk.replica().0,
                conn = conn.0,
                peer = %handle.peer,
                "target disconnected"
            );
        }
        self.sessions.retain(|_, carrier| *carrier != conn);
    }

    fn publish(&self) {
        let target = self
            .replica
            .session()
            .filter(|session| {
                self.sessions
                    .get(session)
                    .is_some_and(|conn| self.conns.contains_key(conn))
            })
            .map(SessionId::generation);
        let published = publish(&self.replica, target);
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = published;
    }
}
