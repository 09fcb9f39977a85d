//! The volume target: a [`tandem_core::Target`] in one tokio task, connected to its replicas
//! over TCP or mutual TLS ([`TargetConfig::security`]), or in memory to the replica host of its
//! own process ([`TargetConfig::local`]), serving client requests (the NBD frontend calls
//! [`TargetHandle`]) and publishing its status.
//!
//! The task owns the state machine and is the only one to touch it. Everything else talks to it
//! through bounded channels: replica connections deliver frames, clients send requests with a
//! reply slot, the membership store answers persistence requests, and a ticker turns wall time
//! into the core's ticks. The task turns every output into I/O: a `Hello` opens a fresh
//! connection to the replica (the core starts a new session for every attempt), other messages
//! go on the connection of their session, replies go to the waiting client, and a membership to
//! persist goes to the [`MembershipStore`] (fenced by generation in the control plane).

mod clock;
mod connection;
mod counters;
mod export;
mod history;
mod range_lock;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_core::{
    ClientError, ClientOp, ClientReplyBody, ClientRequest, ClientRequestId, Command, Envelope,
    Fenced, Generation, Geometry, Membership, MembershipError, Message, ReplicaId, ReplicaIo,
    ReplicaMode, ResyncProgress, SessionId, Target, TargetEvent, TargetInput, TargetOptions,
    TargetOutput, VolumeStatus,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::replica::LocalHost;
use crate::security::LinkSecurity;

use clock::TickClock;
use connection::Connection;
use counters::CopiedTracker;
pub use counters::{ReplicaCounters, TargetCounters};
use history::ResyncHistory;
pub use history::{eject_reason, ResyncAttempt, ResyncOutcome, RESYNC_HISTORY};
use range_lock::RangeLocks;

/// How long one core tick is. The core's timeouts are in ticks (see [`TargetOptions`]): with
/// 10 ms ticks a replica that does not answer for 1 s is ejected and a client waits at most 30 s.
pub const TICK: Duration = Duration::from_millis(10);

/// How many client requests may wait for the target task at once (beyond them, clients wait
/// to send: backpressure, not memory).
const CLIENT_QUEUE: usize = 1024;
/// How many frames from replicas may wait for the target task.
const INBOUND_QUEUE: usize = 4096;

/// Where the target persists its membership; the control plane's CStorVolume in production.
pub trait MembershipStore: Send + Sync + 'static {
    /// Persists `membership` unless a target newer than `generation` exists (then `Err(Fenced)`).
    /// Transient failures are retried inside; the target waits for the answer.
    fn persist(
        &self,
        generation: Generation,
        membership: Membership,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Fenced>> + Send + '_>>;
}

/// How fast a target's resyncs copy: [`TargetOptions`]' pace fields, which may change while it
/// runs ([`TargetHandle::set_resync_pace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncPace {
    /// Bytes per tick while idle; 0: no cap.
    pub bytes_per_tick: u64,
    /// Bytes per tick under client load; 0: no separate cap.
    pub bytes_per_tick_under_load: u64,
    pub segments_inflight_max: usize,
}

impl ResyncPace {
    /// In bytes per second (`None`: no cap) for idle and under load, and segments.
    pub fn from_rates(idle: Option<u64>, under_load: Option<u64>, segments: usize) -> ResyncPace {
        let ticks_per_second = (1000 / TICK.as_millis()) as u64;
        let per_tick = |rate: Option<u64>| rate.map_or(0, |rate| (rate / ticks_per_second).max(1));
        ResyncPace {
            bytes_per_tick: per_tick(idle),
            bytes_per_tick_under_load: per_tick(under_load),
            segments_inflight_max: segments.max(1),
        }
    }

    /// `options` with this pace.
    pub fn applied_to(self, options: TargetOptions) -> TargetOptions {
        TargetOptions {
            resync_bytes_per_tick: self.bytes_per_tick,
            resync_bytes_per_tick_under_load: self.bytes_per_tick_under_load,
            resync_segments_inflight_max: self.segments_inflight_max,
            ..options
        }
    }
}

/// What the target is, for the agent to report (cStor's CStorVolume status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetStatus {
    pub generation: Generation,
    pub status: VolumeStatus,
    pub membership: Membership,
    pub modes: BTreeMap<ReplicaId, ReplicaMode>,
    pub resync: Option<ResyncProgress>,
    /// The last rebuilds and resyncs, completed or abandoned, oldest first (a bounded
    /// history: [`RESYNC_HISTORY`]).
    pub resync_history: Vec<ResyncAttempt>,
    pub fenced: bool,
    /// Every Healthy replica's pool is full: client writes fail with ENOSPC until one
    /// succeeds (see [`tandem_core::Target::refusing_for_space`]).
    pub no_space: bool,
}

/// Why a client request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Target(#[from] ClientError),
    #[error("the volume's target has stopped")]
    Stopped,
}

/// Why a membership command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Refused(#[from] MembershipError),
    #[error("the volume's target has stopped")]
    Stopped,
}

/// Where a replica is served: its host's address, and the node expected to host it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEndpoint {
    pub address: SocketAddr,
    /// The name of the node whose replica host serves the replica (its pool's node). Under
    /// TLS the host's certificate must name it (as a DNS subject-alt-name): a host presenting
    /// another node's certificate is refused. Plain links ignore it.
    pub node: String,
}

impl ReplicaEndpoint {
    pub fn new(address: SocketAddr, node: impl Into<String>) -> ReplicaEndpoint {
        ReplicaEndpoint {
            address,
            node: node.into(),
        }
    }
}

/// How to start a target.
pub struct TargetConfig {
    pub volume: String,
    pub generation: Generation,
    pub geometry: Geometry,
    pub membership: Membership,
    /// Where each replica is served; updated later with [`TargetHandle::set_endpoint`].
    pub endpoints: BTreeMap<ReplicaId, ReplicaEndpoint>,
    /// How the links to the replica hosts are protected: the node's mutual TLS credentials
    /// ([`LinkSecurity::mutual_tls`]), or plain TCP.
    pub security: LinkSecurity,
    /// The replica host of this process, if there is one: the replicas of its node are reached
    /// in memory (no socket, no TLS) rather than at their endpoint's address.
    pub local: Option<LocalHost>,
    pub options: TargetOptions,
}

enum Request {
    Client(
        ClientOp,
        oneshot::Sender<Result<ClientReplyBody, ClientError>>,
    ),
    Command(Command, oneshot::Sender<Result<(), MembershipError>>),
    Endpoint(ReplicaId, Option<ReplicaEndpoint>),
    Pace(ResyncPace),
    ReplicaIo(oneshot::Sender<BTreeMap<ReplicaId, ReplicaIo>>),
    Stop,
}

/// A replica's frame, tagged with the session of the connection it came on.
pub(crate) struct Inbound {
    pub replica: ReplicaId,
    pub session: SessionId,
    /// A frame from the replica, or `None`: the connection ended.
    pub envelope: Option<Envelope>,
}

/// The way in to a running target. Cheap to clone; every NBD connection holds one.
#[derive(Clone)]
pub struct TargetHandle {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<TargetStatus>,
    geometry: Geometry,
    /// The block ranges client writes hold (see [`range_lock`]), shared by every handle.
    locks: Arc<RangeLocks>,
    counters: Arc<TargetCounters>,
}

impl TargetHandle {
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    async fn client(&self, op: ClientOp) -> Result<ClientReplyBody, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Client(op, reply))
            .await
            .map_err(|_| RequestError::Stopped)?;
        Ok(answer.await.map_err(|_| RequestError::Stopped)??)
    }

    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, RequestError> {
        match self.client(ClientOp::Read { offset, len }).await? {
            ClientReplyBody::Read(data) => Ok(data),
            _ => Err(RequestError::Stopped),
        }
    }

    /// Which parts of `[offset, offset + len)` hold data (as one Healthy replica stores them,
    /// after every write acknowledged before this call): extents covering the range exactly.
    pub async fn allocation(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Vec<tandem_core::Extent>, RequestError> {
        match self.client(ClientOp::Allocation { offset, len }).await? {
            ClientReplyBody::Allocation(extents) => Ok(extents),
            _ => Err(RequestError::Stopped),
        }
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), RequestError> {
        self.client(ClientOp::Write { offset, data, fua })
            .await
            .map(drop)
    }

    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), RequestError> {
        self.client(ClientOp::Trim { offset, len }).await.map(drop)
    }

    pub async fn flush(&self) -> Result<(), RequestError> {
        self.client(ClientOp::Flush).await.map(drop)
    }

    /// Adds or removes a replica (cStor's DRF change); answers when the core has decided.
    pub async fn command(&self, command: Command) -> Result<(), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Command(command, reply))
            .await
            .map_err(|_| CommandError::Stopped)?;
        Ok(answer.await.map_err(|_| CommandError::Stopped)??)
    }

    /// Where a replica is served now (`None`: unknown, do not connect). A change takes effect
    /// with the replica's next session.
    pub async fn set_endpoint(&self, replica: ReplicaId, endpoint: Option<ReplicaEndpoint>) {
        // A stopped target needs no endpoints.
        let _ = self
            .requests
            .send(Request::Endpoint(replica, endpoint))
            .await;
    }

    /// How fast resyncs copy from now on.
    pub async fn set_resync_pace(&self, pace: ResyncPace) {
        let _ = self.requests.send(Request::Pace(pace)).await;
    }

    pub fn status(&self) -> TargetStatus {
        self.status.borrow().clone()
    }

    /// What the target counts for metrics (backpressure waits, ejections, bytes resynced).
    pub fn counters(&self) -> &Arc<TargetCounters> {
        &self.counters
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<TargetStatus> {
        self.status.clone()
    }

    /// The I/O of each connected replica (in-flight requests, checkpoint, connected time in
    /// ticks of [`TICK`]); empty once the target has stopped.
    pub async fn replica_io(&self) -> BTreeMap<ReplicaId, ReplicaIo> {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::ReplicaIo(reply)).await.is_err() {
            return BTreeMap::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Stops the target: clients waiting get an error, connections close.
    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Stop).await;
    }
}

/// Starts a target task; it runs until [`TargetHandle::stop`] or until every handle is dropped.
pub fn start(config: TargetConfig, store: Arc<dyn MembershipStore>) -> TargetHandle {
    let (requests, requests_rx) = mpsc::channel(CLIENT_QUEUE);
    let target = Target::new(
        config.generation,
        config.geometry,
        config.membership.clone(),
        config.options,
    );
    let initial = TargetStatus {
        generation: config.generation,
        status: VolumeStatus::Init,
        membership: config.membership,
        modes: BTreeMap::new(),
        resync: None,
        resync_history: Vec::new(),
        fenced: false,
        no_space: false,
    };
    let (status_tx, status) = watch::channel(initial);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (persisted_tx, persisted_rx) = mpsc::channel(4);
    let counters = Arc::new(TargetCounters::default());
    let task = TargetTask {
        volume: config.volume,
        target,
        endpoints: config.endpoints,
        security: config.security,
        local: config.local,
        connections: BTreeMap::new(),
        clients: BTreeMap::new(),
        next_client: 0,
        commands: BTreeMap::new(),
        inbound_tx,
        persisted_tx,
        store,
        status: status_tx,
        history: ResyncHistory::default(),
        out: Vec::new(),
        clock: TickClock::start(TICK),
        counters: Arc::clone(&counters),
        copied: CopiedTracker::default(),
        no_space_logged: None,
    };
    tokio::spawn(task.run(requests_rx, inbound_rx, persisted_rx));
    TargetHandle {
        requests,
        status,
        geometry: config.geometry,
        locks: Arc::default(),
        counters,
    }
}

struct TargetTask {
    volume: String,
    target: Target,
    endpoints: BTreeMap<ReplicaId, ReplicaEndpoint>,
    security: LinkSecurity,
    local: Option<LocalHost>,
    /// The open connection of each replica, with the session it carries.
    connections: BTreeMap<ReplicaId, (SessionId, Connection)>,
    clients: BTreeMap<ClientRequestId, oneshot::Sender<Result<ClientReplyBody, ClientError>>>,
    next_client: u64,
    commands: BTreeMap<(u8, u64), Vec<CommandWaiter>>,
    inbound_tx: mpsc::Sender<Inbound>,
    persisted_tx: mpsc::Sender<Result<(), Fenced>>,
    store: Arc<dyn MembershipStore>,
    status: watch::Sender<TargetStatus>,
    history: ResyncHistory,
    out: Vec<TargetOutput>,
    clock: TickClock,
    counters: Arc<TargetCounters>,
    copied: CopiedTracker,
    /// When writes were last logged as failing for lack of space (once a minute at most).
    no_space_logged: Option<std::time::Instant>,
}

/// Who waits for a membership command's outcome.
type CommandWaiter = oneshot::Sender<Result<(), MembershipError>>;

fn command_key(command: Command) -> (u8, u64) {
    match command {
        Command::AddReplica(replica) => (0, replica.0),
        Command::RemoveReplica(replica) => (1, replica.0),
    }
}

impl TargetTask {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut persisted: mpsc::Receiver<Result<(), Fenced>>,
    ) {
        // Nothing ticks while nothing is due: the task sleeps until the core's next due tick
        // (a timeout, a probe, a retry; every tick while a resync runs) and wakes for any input
        // before it. Every input first makes up the ticks that passed (`handle`).
        let wakeup = tokio::time::sleep(TICK);
        tokio::pin!(wakeup);
        let mut armed = None;
        tracing::info!(volume = %self.volume, generation = self.target.generation().0, "target started");
        loop {
            let due = self.target.next_tick_due();
            if due != armed {
                if let Some(tick) = due {
                    wakeup.as_mut().reset(self.clock.instant_of(tick).into());
                }
                armed = due;
            }
            tokio::select! {
                () = &mut wakeup, if armed.is_some() => {
                    armed = None;
                    self.catch_up();
                }
                request = requests.recv() => match request {
                    Some(Request::Client(op, reply)) => {
                        let held = !matches!(op, ClientOp::Read { .. } | ClientOp::Allocation { .. });
                        if held && self.target.is_congested() {
                            self.counters.note_backpressure_wait();
                        }
                        let id = ClientRequestId(self.next_client);
                        self.next_client += 1;
                        self.clients.insert(id, reply);
                        self.handle(TargetInput::Client(ClientRequest { id, op }));
                    }
                    Some(Request::Command(command, reply)) => {
                        self.commands.entry(command_key(command)).or_default().push(reply);
                        self.handle(TargetInput::Command(command));
                    }
                    Some(Request::Endpoint(replica, endpoint)) => self.set_endpoint(replica, endpoint),
                    Some(Request::Pace(pace)) => self.target.set_resync_pace(
                        pace.bytes_per_tick,
                        pace.bytes_per_tick_under_load,
                        pace.segments_inflight_max,
                    ),
                    Some(Request::ReplicaIo(reply)) => {
                        let io = self
                            .target
                            .membership()
                            .members
                            .iter()
                            .filter_map(|m| Some((m.replica, self.target.replica_io(m.replica)?)))
                            .collect();
                        let _ = reply.send(io);
                    }
                    Some(Request::Stop) | None => break,
                },
                Some(frame) = inbound.recv() => self.on_inbound(frame),
                Some(result) = persisted.recv() => self.handle(TargetInput::MembershipPersisted(result)),
            }
        }
        tracing::info!(volume = %self.volume, generation = self.target.generation().0, "target stopped");
        // Dropping the reply slots tells every waiting client the target stopped.
    }

    fn set_endpoint(&mut self, replica: ReplicaId, endpoint: Option<ReplicaEndpoint>) {
        let changed = match endpoint {
            Some(endpoint) => self.endpoints.insert(replica, endpoint.clone()) != Some(endpoint),
            None => self.endpoints.remove(&replica).is_some(),
        };
        if changed {
            // The next Hello connects to the new endpoint; the old connection is stale.
            self.connections.remove(&replica);
        }
    }

    fn on_inbound(&mut self, frame: Inbound) {
        let current = self
            .connections
            .get(&frame.replica)
            .is_some_and(|(session, _)| *session == frame.session);
        if !current {
            return;
        }
        match frame.envelope {
            Some(envelope) => self.handle(TargetInput::Message {
                from: frame.replica,
                envelope,
            }),
            None => {
                self.connections.remove(&frame.replica);
                self.handle(TargetInput::SessionLost {
                    replica: frame.replica,
                    session: frame.session,
                });
            }
        }
    }

    /// Feeds the core every tick due by the clock (many after a sleep or a pause), publishing
    /// once.
    fn catch_up(&mut self) {
        if self.feed_ticks() {
            self.publish_status();
        }
    }

    /// Feeds the core every tick due by the clock; true if the status should be published.
    fn feed_ticks(&mut self) -> bool {
        let mut due = self.clock.due();
        let mut publish = false;
        while due > 0 {
            // Ticks at which nothing is due are only counted.
            due -= self.target.pass_idle_ticks(due);
            if due > 0 {
                publish |= self.apply(TargetInput::Tick);
                due -= 1;
            }
        }
        publish
    }

    /// Gives the core `input` on the time it is now, not the time the target last woke up: the
    /// ticks that passed come first (a read lease may have run out meanwhile, or a replica's
    /// answer be late).
    fn handle(&mut self, input: TargetInput) {
        let mut publish = self.feed_ticks();
        publish |= self.apply(input);
        if publish {
            self.publish_status();
        }
    }

    /// Gives the core one input and carries out what it asks; true if the status should be
    /// published.
    fn apply(&mut self, input: TargetInput) -> bool {
        // Status changes come with events or membership work; the rest (rebuild progress) is
        // published on the next tick. Building the status for every I/O would cost more than
        // the I/O.
        let mut publish = matches!(
            input,
            TargetInput::Tick | TargetInput::Command(_) | TargetInput::MembershipPersisted(_)
        );
        let mut out = std::mem::take(&mut self.out);
        self.target.handle(input, &mut out);
        for output in out.drain(..) {
            publish |= matches!(
                output,
                TargetOutput::Event(_)
                    | TargetOutput::PersistMembership(_)
                    | TargetOutput::CommandDone { .. }
            );
            self.on_output(output);
        }
        self.out = out;
        publish
    }

    fn on_output(&mut self, output: TargetOutput) {
        match output {
            TargetOutput::Send { to, envelope } => self.send(to, envelope),
            TargetOutput::Reply(reply) => {
                if matches!(reply.result, Err(ClientError::NoSpace)) {
                    self.counters.note_no_space_reply();
                }
                if let Some(client) = self.clients.remove(&reply.id) {
                    // The client may have given up (its connection closed); nothing to do.
                    let _ = client.send(reply.result);
                }
            }
            TargetOutput::PersistMembership(membership) => {
                let (store, answer) = (self.store.clone(), self.persisted_tx.clone());
                let generation = self.target.generation();
                tokio::spawn(async move {
                    let result = store.persist(generation, membership).await;
                    let _ = answer.send(result).await;
                });
            }
            TargetOutput::CommandDone { command, result } => {
                if let Some(waiters) = self.commands.remove(&command_key(command)) {
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            }
            TargetOutput::Event(event) => self.on_event(event),
        }
    }

    fn send(&mut self, to: ReplicaId, envelope: Envelope) {
        if matches!(envelope.message, Message::Hello { .. }) {
            // Every Hello starts a new session on a new connection; the old one is done.
            self.connections.remove(&to);
            let Some(endpoint) = self.endpoints.get(&to) else {
                tracing::debug!(volume = %self.volume, replica = to.0, "no endpoint for replica yet");
                return;
            };
            let session = envelope.session;
            let local = (self.local.as_ref()).filter(|local| local.node() == endpoint.node);
            let connection = Connection::open(
                endpoint.clone(),
                self.security.clone(),
                local.cloned(),
                to,
                session,
                self.inbound_tx.clone(),
            );
            connection.send(envelope);
            self.connections.insert(to, (session, connection));
            return;
        }
        match self.connections.get(&to) {
            Some((session, connection)) if *session == envelope.session => {
                connection.send(envelope)
            }
            // A message for a session that is gone: the core's timeouts notice and start over.
            _ => {}
        }
    }

    fn on_event(&mut self, event: TargetEvent) {
        match &event {
            TargetEvent::ResyncFinished {
                replica,
                source,
                full,
                bytes,
                regions,
            } => {
                tracing::info!(
                    volume = %self.volume, replica = replica.0, source = source.0, full, bytes, regions,
                    "resync finished"
                );
                self.copied.finished(*replica, *bytes, &self.counters);
                self.history.finished(*replica, *source, *full, *bytes);
            }
            TargetEvent::Ejected { replica, reason } => {
                self.counters.note_ejection(*replica);
                self.copied.ejected(*replica);
                self.history.ejected(*replica, reason);
                tracing::warn!(volume = %self.volume, replica = replica.0, ?reason, "replica ejected");
            }
            TargetEvent::WriteVoided { seq } => {
                // Writes fail with ENOSPC from here on (one probe a second) until one succeeds.
                let quiet = Duration::from_secs(60);
                if self.no_space_logged.is_none_or(|at| at.elapsed() >= quiet) {
                    self.no_space_logged = Some(std::time::Instant::now());
                    tracing::warn!(
                        volume = %self.volume, seq = seq.0,
                        "every healthy replica's pool is full: writes fail with ENOSPC until space is freed or the volume moves"
                    );
                }
            }
            TargetEvent::Fenced => {
                self.history.fenced();
                tracing::warn!(volume = %self.volume, "a newer target took over; this one stops serving");
            }
            TargetEvent::RecoveredBehind {
                newest_acknowledged,
                recovered,
            } => {
                tracing::error!(
                    volume = %self.volume, ?newest_acknowledged, ?recovered,
                    "recovered from a replica behind the newest acknowledged write"
                );
            }
            other => tracing::debug!(volume = %self.volume, event = ?other, "target event"),
        }
    }

    fn publish_status(&mut self) {
        self.copied
            .observe(self.target.resync_progress(), &self.counters);
        self.history.observe(self.target.resync_progress());
        let target = &self.target;
        let modes: BTreeMap<ReplicaId, ReplicaMode> = target
            .membership()
            .members
            .iter()
            .filter_map(|member| {
                target
                    .replica_mode(member.replica)
                    .map(|mode| (member.replica, mode))
            })
            .collect();
        let status = TargetStatus {
            generation: target.generation(),
            status: target.status(),
            membership: target.membership().clone(),
            modes,
            resync: target.resync_progress(),
            resync_history: self.history.attempts(),
            fenced: target.is_fenced(),
            no_space: target.refusing_for_space(),
        };
        self.status.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}
