//! The simulated world: one volume's target(s) and replica nodes, a network, disks, a control
//! plane and clients, all driven by one seeded random generator in virtual time.
//!
//! Everything non-deterministic in production (the network, disks, the clock, crashes) is a
//! choice made here from the seed, so one seed replays one run exactly. The checkers look from
//! outside: at client replies, at what crosses the network, and at the replicas' disks.

use std::collections::{BTreeMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{
    ClientRequestId, Command, Completion, DiskOp, EjectReason, Envelope, Generation, Geometry,
    Incarnation, Membership, MembershipError, Message, Replica, ReplicaId, ReplicaInput,
    ReplicaMeta, ReplicaMode, ReplicaOptions, ReplicaOutput, Stamp, Target, TargetEvent,
    TargetInput, TargetOptions, TargetOutput, VolumeStatus, WriteOrigin,
};

use crate::disk::SimDisk;
use crate::history::{block_value, Guarantee, History, Violation, BLOCK_SIZE};
use crate::network::{Network, NetworkFaults, Node};

mod checks;
mod clients;
mod faults;

pub use clients::ClientWaits;
use clients::Pending;

/// How often each fault happens while faults are on, per tick, in parts per million.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRates {
    pub network: NetworkFaults,
    pub partition_ppm: u32,
    pub partition_one_way_ppm: u32,
    pub replica_crash_ppm: u32,
    pub power_loss_ppm: u32,
    pub target_crash_ppm: u32,
    /// A new target takes over while the old one is still running (a zombie).
    pub target_takeover_ppm: u32,
    pub disk_errors_ppm: u32,
    /// Pools fill up for a while: every replica's, or one's.
    pub pool_full_ppm: u32,
    pub slow_disk_ppm: u32,
    /// A replica's storage is destroyed and created again (a replaced disk).
    pub wipe_ppm: u32,
    pub add_replica_ppm: u32,
    pub remove_replica_ppm: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    pub inflight_max: usize,
    /// Chance per tick of issuing a request when below the limit.
    pub issue_ppm: u32,
    pub write_weight: u32,
    pub read_weight: u32,
    pub flush_weight: u32,
    pub trim_weight: u32,
    /// Block status (allocation) queries.
    pub allocation_weight: u32,
    pub fua_ppm: u32,
    pub blocks_max: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            inflight_max: 8,
            issue_ppm: 500_000,
            write_weight: 55,
            read_weight: 30,
            flush_weight: 10,
            trim_weight: 5,
            allocation_weight: 5,
            fua_ppm: 50_000,
            blocks_max: 6,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Replicas the volume is created with.
    pub replicas: usize,
    /// Replica nodes in all (the rest are spares for scale-up).
    pub nodes: usize,
    pub blocks: u64,
    pub region_blocks: u64,
    pub target: TargetOptions,
    pub replica: ReplicaOptions,
    pub faults: FaultRates,
    pub workload: WorkloadConfig,
    pub network_delay_ticks: (u64, u64),
    pub disk_latency_ticks: (u64, u64),
}

impl SimConfig {
    /// A quiet world for scripted scenarios: no random faults.
    pub fn quiet(seed: u64, replicas: usize, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            nodes,
            blocks: 64,
            region_blocks: 4,
            target: TargetOptions {
                replica_timeout_ticks: 60,
                handshake_timeout_ticks: 30,
                reconnect_interval_ticks: 10,
                probe_interval_ticks: 30,
                replica_inflight_max: 512,
                replica_congestion_ops: 256,
                resync_bytes_per_tick: 0,
                resync_bytes_per_tick_under_load: 0,
                resync_segments_inflight_max: 4,
                client_timeout_ticks: 1_500,
                read_lease_ticks: 40,
                takeover_wait_ticks: 50,
                no_space_probe_ticks: 50,
                bugs: tandem_core::Bugs::none(),
            },
            replica: ReplicaOptions {
                activity_log_extend_regions: 1,
                bugs: tandem_core::Bugs::none(),
            },
            faults: FaultRates::default(),
            workload: WorkloadConfig::default(),
            network_delay_ticks: (1, 4),
            disk_latency_ticks: (1, 3),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct FaultCounters {
    pub partitions: u64,
    pub one_way_partitions: u64,
    pub replica_crashes: u64,
    /// Crashes whose connection reset reached the target (it ejects at once).
    pub connection_resets: u64,
    pub power_losses: u64,
    pub target_crashes: u64,
    pub target_takeovers: u64,
    pub disk_error_windows: u64,
    pub disk_errors: u64,
    /// Windows in which pools were full (every replica's or one's).
    pub pools_full: u64,
    pub slow_disks: u64,
    pub wipes: u64,
    pub replicas_added: u64,
    pub replicas_removed: u64,
    pub membership_refused: u64,
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: Node,
        to: Node,
        envelope: Envelope,
    },
    DiskDone {
        replica: ReplicaId,
        epoch: u64,
        op: DiskOp,
    },
    /// A target learns that its connection to a replica ended (the replica's process died and
    /// its kernel reset the connection).
    SessionLost {
        replica: ReplicaId,
        session: tandem_core::SessionId,
    },
    /// A read-only operation that looked at the disk when it was issued (a real disk may serve
    /// a read at any moment before it completes), completing later.
    DiskAnswered {
        replica: ReplicaId,
        epoch: u64,
        id: tandem_core::DiskOpId,
        result: Result<Completion, tandem_core::IoFailure>,
    },
}

struct NodeState {
    disk: Option<SimDisk>,
    /// When (history time) this node's storage was last wiped: it may have held anything
    /// written before, which the durability checks must allow for.
    wiped_at: Option<u64>,
    process: Option<Replica>,
    /// Bumped on every crash, so completions from before it are dropped.
    epoch: u64,
    restart_at_tick: Option<u64>,
    trouble_until_tick: u64,
    /// Barrier messages (Hello, Flush, StartResync, FinishResync) delivered to its process: each
    /// may cost one metadata write (G8).
    barriers_asked: u64,
    /// Metadata writes its storage performed that neither extended the persisted activity log
    /// nor marked the replica inconsistent: barriers' (G8).
    barrier_meta_writes: u64,
}

/// A control plane: the persisted membership and the generation counter, fenced by generation.
struct ControlPlane {
    generation: Generation,
    membership: Membership,
}

pub struct Sim {
    pub config: SimConfig,
    rng: ChaCha8Rng,
    pub now_tick: u64,
    geometry: Geometry,
    pub network: Network,
    events: BTreeMap<(u64, u64), Event>,
    event_serial: u64,
    targets: BTreeMap<Generation, Target>,
    current: Option<Generation>,
    target_restart_at_tick: Option<u64>,
    control_plane: ControlPlane,
    nodes: BTreeMap<ReplicaId, NodeState>,
    pub history: History,
    /// Client requests waiting for a reply: the target they went to, what they were, when.
    clients: BTreeMap<ClientRequestId, (Generation, Pending, u64)>,
    next_client: u64,
    next_write: u64,
    pub violations: Vec<Violation>,
    pub faults: FaultCounters,
    pub faults_on: bool,
    pub workload_on: bool,
    /// Events every target reported, with the tick.
    pub target_events: Vec<(u64, Generation, TargetEvent)>,
    pub command_results: Vec<(Command, Result<(), MembershipError>)>,
    pub acked_ops: u64,
    /// Client requests answered with an error (fenced, timed out), by message.
    pub client_errors: BTreeMap<String, u64>,
    pub checked_reads: u64,
    /// How long client requests waited for their replies, apart for those a rebuild overlapped.
    pub client_waits: ClientWaits,
    /// Which guarantee a bad read breaks: G4 during the run, G2 for the final read-back.
    pub read_guarantee: Guarantee,
}

enum Work {
    Target(Generation, TargetInput),
    Replica(ReplicaId, ReplicaInput),
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let geometry = Geometry {
            size_bytes: config.blocks * BLOCK_SIZE,
            block_size: BLOCK_SIZE as u32,
            region_size: (config.region_blocks * BLOCK_SIZE) as u32,
        };
        geometry.validate().expect("simulated geometry is valid");
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = BTreeMap::new();
        let mut initial = Vec::new();
        for index in 1..=config.nodes as u64 {
            let replica = ReplicaId(index);
            let mut node = NodeState {
                disk: None,
                wiped_at: None,
                process: None,
                epoch: 0,
                restart_at_tick: None,
                trouble_until_tick: 0,
                barriers_asked: 0,
                barrier_meta_writes: 0,
            };
            if initial.len() < config.replicas {
                let incarnation = Incarnation(rng.gen());
                let meta = ReplicaMeta::new(replica, incarnation, geometry, true);
                node.process = Some(Replica::open(meta.clone(), config.replica));
                node.disk = Some(SimDisk::new(meta));
                initial.push((replica, incarnation));
            }
            nodes.insert(replica, node);
        }
        let mut network = Network::new(config.network_delay_ticks.0, config.network_delay_ticks.1);
        network.faults = config.faults.network;
        let mut sim = Sim {
            rng,
            now_tick: 0,
            geometry,
            network,
            events: BTreeMap::new(),
            event_serial: 0,
            targets: BTreeMap::new(),
            current: None,
            target_restart_at_tick: None,
            control_plane: ControlPlane {
                generation: Generation(0),
                membership: Membership::initial(&initial),
            },
            nodes,
            history: History::default(),
            clients: BTreeMap::new(),
            next_client: 0,
            next_write: 0,
            violations: Vec::new(),
            faults: FaultCounters::default(),
            faults_on: false,
            workload_on: false,
            target_events: Vec::new(),
            command_results: Vec::new(),
            acked_ops: 0,
            client_errors: BTreeMap::new(),
            checked_reads: 0,
            client_waits: ClientWaits::default(),
            read_guarantee: Guarantee::G4ReadYourWrites,
            config,
        };
        sim.start_target();
        sim
    }

    // ------------------------------------------------------------------ observation

    pub fn target(&self) -> Option<&Target> {
        self.current
            .and_then(|generation| self.targets.get(&generation))
    }

    /// Every live target's state, zombies included.
    pub fn describe_targets(&self) -> String {
        let clients: BTreeMap<u64, usize> =
            self.clients
                .values()
                .fold(BTreeMap::new(), |mut counts, (g, _, _)| {
                    *counts.entry(g.0).or_default() += 1;
                    counts
                });
        let targets: Vec<String> = self.targets.values().map(|t| t.describe()).collect();
        format!(
            "clients waiting per generation {clients:?}; {}",
            targets.join(" | ")
        )
    }

    pub fn membership(&self) -> &Membership {
        &self.control_plane.membership
    }

    pub fn replica_mode(&self, replica: ReplicaId) -> Option<ReplicaMode> {
        self.target()?.replica_mode(replica)
    }

    pub fn volume_status(&self) -> Option<VolumeStatus> {
        self.target().map(|t| t.status())
    }

    pub fn replica(&self, replica: ReplicaId) -> Option<&Replica> {
        self.nodes.get(&replica)?.process.as_ref()
    }

    /// Every mode each replica was seen in, in order, from the target events.
    pub fn modes_seen(&self, replica: ReplicaId) -> Vec<ReplicaMode> {
        let mut modes: Vec<ReplicaMode> = Vec::new();
        for (_, _, event) in &self.target_events {
            if let TargetEvent::ReplicaMode { replica: r, mode } = event {
                if *r == replica && !modes.contains(mode) {
                    modes.push(*mode);
                }
            }
        }
        modes
    }

    /// The resyncs that finished: (replica, full, regions, bytes).
    pub fn resyncs_finished(&self) -> Vec<(ReplicaId, bool, u64, u64)> {
        self.target_events
            .iter()
            .filter_map(|(_, _, event)| match event {
                TargetEvent::ResyncFinished {
                    replica,
                    full,
                    regions,
                    bytes,
                    ..
                } => Some((*replica, *full, *regions, *bytes)),
                _ => None,
            })
            .collect()
    }

    /// How many times a replica was ejected for `reason`, by any target.
    pub fn ejections(&self, reason: EjectReason) -> usize {
        self.target_events
            .iter()
            .filter(|(_, _, event)| {
                matches!(event, TargetEvent::Ejected { reason: r, .. } if *r == reason)
            })
            .count()
    }

    /// True when nothing is in flight anywhere: no message on the wire, no disk operation, no
    /// request a replica has not answered.
    pub fn quiescent(&self) -> bool {
        self.events.is_empty() && self.target().is_some_and(|t| t.outstanding_requests() == 0)
    }

    /// True if the node still has replica storage (not removed by a scale-down).
    pub fn has_storage(&self, replica: ReplicaId) -> bool {
        self.nodes.get(&replica).is_some_and(|n| n.disk.is_some())
    }

    /// Events of generation `generation`'s target.
    pub fn events_of(&self, generation: Generation) -> impl Iterator<Item = &TargetEvent> {
        self.target_events
            .iter()
            .filter(move |(_, g, _)| *g == generation)
            .map(|(_, _, event)| event)
    }

    /// Replaces a replica's storage with fresh, empty storage (a new disk): same identity, new
    /// incarnation.
    pub fn wipe_replica(&mut self, replica: ReplicaId) {
        self.crash_replica(replica, false);
        self.create_storage(replica, false);
        let now = self.history.now();
        self.nodes.get_mut(&replica).expect("exists").wiped_at = Some(now);
    }

    pub fn pending_client_ops(&self) -> usize {
        self.clients.len()
    }

    /// True once the volume is Healthy with every member trusted and Healthy.
    pub fn converged(&self) -> bool {
        let Some(target) = self.target() else {
            return false;
        };
        target.status() == VolumeStatus::Healthy
            && self
                .control_plane
                .membership
                .members
                .iter()
                .all(|m| m.trusted && target.replica_mode(m.replica) == Some(ReplicaMode::Healthy))
    }

    fn violate(&mut self, guarantee: Guarantee, detail: String) {
        self.violations.push(Violation {
            guarantee,
            tick: self.now_tick,
            detail,
        });
    }

    // ------------------------------------------------------------------ running

    pub fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Runs until `done` holds or `ticks_max` pass; returns whether it held.
    pub fn run_until(&mut self, ticks_max: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..ticks_max {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn step(&mut self) {
        self.now_tick += 1;
        if !self.converged() {
            self.client_waits.rebuild_seen_tick = Some(self.now_tick);
        }
        if self.faults_on {
            self.inject_faults();
        }
        self.restart_due();
        if self.workload_on {
            self.issue_client_request();
        }
        let generations: Vec<Generation> = self.targets.keys().copied().collect();
        for generation in generations {
            // Odd seeds let targets count idle ticks without handling them, as the dataplane
            // does after sleeping until the next due tick.
            let counted = self.config.seed % 2 == 1
                && self
                    .targets
                    .get_mut(&generation)
                    .is_some_and(|target| target.pass_idle_ticks(1) == 1);
            if !counted {
                self.process(Work::Target(generation, TargetInput::Tick));
            }
        }
        while let Some((&(tick, serial), _)) = self.events.first_key_value() {
            if tick > self.now_tick {
                break;
            }
            let event = self.events.remove(&(tick, serial)).expect("first exists");
            self.deliver(event);
        }
    }

    fn schedule(&mut self, tick: u64, event: Event) {
        self.event_serial += 1;
        self.events.insert((tick, self.event_serial), event);
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, envelope } => match to {
                Node::Target(generation) => {
                    let Node::Replica(from) = from else {
                        return;
                    };
                    if self.targets.contains_key(&generation) {
                        self.process(Work::Target(
                            generation,
                            TargetInput::Message { from, envelope },
                        ));
                    }
                }
                Node::Replica(replica) => {
                    if self.replica(replica).is_some() {
                        if matches!(
                            envelope.message,
                            Message::Hello { .. }
                                | Message::Flush { .. }
                                | Message::StartResync { .. }
                                | Message::FinishResync { .. }
                        ) {
                            self.nodes
                                .get_mut(&replica)
                                .expect("running")
                                .barriers_asked += 1;
                        }
                        self.process(Work::Replica(replica, ReplicaInput::Message(envelope)));
                    }
                }
            },
            Event::DiskDone { replica, epoch, op } => {
                let node = self.nodes.get(&replica).expect("node exists");
                if node.epoch != epoch || node.process.is_none() {
                    return;
                }
                let (id, result) = self.perform_disk_op(replica, op);
                self.process(Work::Replica(
                    replica,
                    ReplicaInput::DiskDone { id, result },
                ));
            }
            Event::SessionLost { replica, session } => {
                let generation = session.generation();
                if self.targets.contains_key(&generation) {
                    self.process(Work::Target(
                        generation,
                        TargetInput::SessionLost { replica, session },
                    ));
                }
            }
            Event::DiskAnswered {
                replica,
                epoch,
                id,
                result,
            } => {
                let node = self.nodes.get(&replica).expect("node exists");
                if node.epoch != epoch || node.process.is_none() {
                    return;
                }
                self.process(Work::Replica(
                    replica,
                    ReplicaInput::DiskDone { id, result },
                ));
            }
        }
    }

    fn perform_disk_op(
        &mut self,
        replica: ReplicaId,
        op: DiskOp,
    ) -> (
        tandem_core::DiskOpId,
        Result<Completion, tandem_core::IoFailure>,
    ) {
        let rng = &mut self.rng;
        let disk = self
            .nodes
            .get_mut(&replica)
            .and_then(|n| n.disk.as_mut())
            .expect("a running replica has a disk");
        let failure = disk.should_fail(rng);
        if failure.is_some() {
            self.faults.disk_errors += 1;
        }
        match op {
            DiskOp::Write {
                id, offset, data, ..
            } => match failure.or(disk.full.then_some(tandem_core::IoFailure::NoSpace)) {
                Some(failure) => (id, Err(failure)),
                None => {
                    disk.write(offset, data);
                    (id, Ok(Completion::Done))
                }
            },
            DiskOp::Trim { id, offset, len } => match failure {
                Some(failure) => (id, Err(failure)),
                None => {
                    disk.trim(offset, len);
                    (id, Ok(Completion::Done))
                }
            },
            DiskOp::Read { id, offset, len } => match failure {
                Some(failure) => (id, Err(failure)),
                None => (id, Ok(Completion::Data(disk.read(offset, len)))),
            },
            DiskOp::Allocation { id, offset, len } => match failure {
                Some(failure) => (id, Err(failure)),
                None => (id, Ok(Completion::Extents(disk.allocation(offset, len)))),
            },
            // A failed fsync may have dropped acknowledged data (fsyncgate): a replica cannot
            // recover from that on its own, so the simulator does not inject it.
            DiskOp::Sync { id } => {
                disk.sync();
                (id, Ok(Completion::Done))
            }
            DiskOp::PersistMeta { id, update } => {
                // A write's first touch of a region outside the activity log extends it; a
                // consistent replica persisting that it no longer is starts a resync. Any other
                // metadata write is a barrier's.
                let extends_log = extends(&disk.meta.activity_log, &update.activity_log);
                let marks_inconsistent =
                    disk.meta.superblock.consistent && !update.superblock.consistent;
                disk.persist_meta(&update);
                if !extends_log && !marks_inconsistent {
                    self.check_metadata_write(replica);
                }
                (id, Ok(Completion::Done))
            }
        }
    }

    /// Feeds an input and everything it causes, breadth first.
    fn process(&mut self, first: Work) {
        let mut queue = VecDeque::from([first]);
        let mut target_out = Vec::new();
        let mut replica_out = Vec::new();
        while let Some(work) = queue.pop_front() {
            match work {
                Work::Target(generation, input) => {
                    let Some(target) = self.targets.get_mut(&generation) else {
                        continue;
                    };
                    // A real target sleeps until its next due tick (`next_tick_due`) and
                    // makes up the ticks in between at once: a tick before it must change
                    // nothing, or that target would act late.
                    let quiet = matches!(input, TargetInput::Tick)
                        && target
                            .next_tick_due()
                            .is_none_or(|due| target.now_tick() + 1 < due);
                    target.handle(input, &mut target_out);
                    assert!(
                        !quiet || target_out.is_empty(),
                        "generation {generation:?} acted on a tick before its next due tick: \
                         {target_out:?}"
                    );
                    for output in target_out.drain(..) {
                        self.on_target_output(generation, output, &mut queue);
                    }
                }
                Work::Replica(replica, input) => {
                    let Some(process) = self
                        .nodes
                        .get_mut(&replica)
                        .and_then(|n| n.process.as_mut())
                    else {
                        continue;
                    };
                    process.handle(input, &mut replica_out);
                    for output in replica_out.drain(..) {
                        self.on_replica_output(replica, output);
                    }
                }
            }
        }
    }

    fn on_target_output(
        &mut self,
        generation: Generation,
        output: TargetOutput,
        queue: &mut VecDeque<Work>,
    ) {
        match output {
            TargetOutput::Send { to, envelope } => {
                // Learn each write's place in history from the wire: its data names it.
                match &envelope.message {
                    Message::Write { seq, data, .. } => {
                        if let Some(Some(id)) = data.get(..BLOCK_SIZE as usize).map(block_value) {
                            self.history.learn_stamp(id, Stamp::new(generation, *seq));
                        }
                    }
                    Message::Trim {
                        seq, offset, len, ..
                    } => self.history.learn_trim_stamp(
                        offset / BLOCK_SIZE,
                        len / BLOCK_SIZE,
                        Stamp::new(generation, *seq),
                    ),
                    _ => {}
                }
                self.send(Node::Target(generation), Node::Replica(to), envelope);
            }
            TargetOutput::Reply(reply) => self.on_client_reply(generation, reply),
            TargetOutput::PersistMembership(membership) => {
                let result = self.persist_membership(generation, membership);
                queue.push_back(Work::Target(
                    generation,
                    TargetInput::MembershipPersisted(result),
                ));
            }
            TargetOutput::CommandDone { command, result } => {
                self.on_command_done(command, &result);
                self.command_results.push((command, result));
            }
            TargetOutput::Event(event) => {
                if let TargetEvent::Fenced = event {
                    if self.current == Some(generation) {
                        self.current = None;
                    }
                }
                if let TargetEvent::RecoveredFrom { source, .. } = event {
                    self.check_recovery_source(generation, source);
                }
                self.target_events.push((self.now_tick, generation, event));
            }
        }
    }

    fn on_replica_output(&mut self, replica: ReplicaId, output: ReplicaOutput) {
        match output {
            ReplicaOutput::Send(envelope) => {
                let to = Node::Target(envelope.session.generation());
                self.send(Node::Replica(replica), to, envelope);
            }
            ReplicaOutput::Disk(op) => {
                if let DiskOp::Write {
                    data,
                    origin: WriteOrigin::Client,
                    ..
                } = &op
                {
                    self.check_fencing(replica, data);
                }
                let node = &self.nodes[&replica];
                let slowness = node.disk.as_ref().map_or(1, |d| d.slowness);
                let (low, high) = self.config.disk_latency_ticks;
                let latency = self.rng.gen_range(low..=high) * slowness;
                let epoch = node.epoch;
                let read_only = matches!(op, DiskOp::Read { .. } | DiskOp::Allocation { .. });
                let event = if read_only && self.rng.gen_bool(0.5) {
                    let (id, result) = self.perform_disk_op(replica, op);
                    Event::DiskAnswered {
                        replica,
                        epoch,
                        id,
                        result,
                    }
                } else {
                    Event::DiskDone { replica, epoch, op }
                };
                self.schedule(self.now_tick + latency, event);
            }
        }
    }

    fn send(&mut self, from: Node, to: Node, envelope: Envelope) {
        for tick in self.network.route(from, to, self.now_tick, &mut self.rng) {
            self.schedule(
                tick,
                Event::Deliver {
                    from,
                    to,
                    envelope: envelope.clone(),
                },
            );
        }
    }

    // ------------------------------------------------------------------ control plane

    fn persist_membership(
        &mut self,
        generation: Generation,
        membership: Membership,
    ) -> Result<(), tandem_core::Fenced> {
        if generation != self.control_plane.generation {
            return Err(tandem_core::Fenced);
        }
        self.check_membership_change(generation, &membership);
        self.control_plane.membership = membership;
        Ok(())
    }

    /// G6: a membership never loses its last trusted replica, never exceeds the maximum, and a
    /// trusted replica is removed only while every remaining trusted replica is Healthy.
    fn check_membership_change(&mut self, generation: Generation, new: &Membership) {
        let old = self.control_plane.membership.clone();
        if new.replication_factor() == 0 {
            self.violate(
                Guarantee::G6Membership,
                "membership lost its last trusted replica".into(),
            );
        }
        if new.members.len() > tandem_core::REPLICAS_MAX {
            self.violate(
                Guarantee::G6Membership,
                format!("{} members", new.members.len()),
            );
        }
        let removed_trusted = old
            .members
            .iter()
            .any(|m| m.trusted && new.get(m.replica).is_none());
        if removed_trusted {
            let target = &self.targets[&generation];
            let unhealthy: Vec<ReplicaId> = new
                .members
                .iter()
                .filter(|m| {
                    m.trusted && target.replica_mode(m.replica) != Some(ReplicaMode::Healthy)
                })
                .map(|m| m.replica)
                .collect();
            if !unhealthy.is_empty() {
                self.violate(
                    Guarantee::G6Membership,
                    format!("a trusted replica was removed while {unhealthy:?} were not Healthy"),
                );
            }
        }
    }

    /// Starts a target with the next generation (a restart or a takeover).
    pub fn start_target(&mut self) {
        self.control_plane.generation = Generation(self.control_plane.generation.0 + 1);
        let generation = self.control_plane.generation;
        let target = Target::new(
            generation,
            self.geometry,
            self.control_plane.membership.clone(),
            self.config.target,
        );
        self.targets.insert(generation, target);
        self.current = Some(generation);
        self.target_restart_at_tick = None;
    }

    /// Kills the current target (kill -9): its unanswered client requests have unknown outcomes.
    pub fn crash_target(&mut self) {
        self.note_target_restart();
        if let Some(generation) = self.current.take() {
            self.targets.remove(&generation);
            self.clients.retain(|_, (g, _, _)| *g != generation);
        }
    }

    /// A new target takes over while the old one keeps running. Clients that have not noticed
    /// keep reading through the old one (see `issue_client_request`), which must not serve them
    /// anything stale (G5).
    pub fn takeover_target(&mut self) {
        self.note_target_restart();
        self.start_target();
    }

    /// Cuts the current target off from every replica but `keep`, both ways: its node lost the
    /// network but kept its own replica.
    pub fn isolate_target_with(&mut self, keep: ReplicaId) {
        for replica in self.nodes.keys().copied().collect::<Vec<_>>() {
            if replica != keep {
                self.cut_target_from(replica);
            }
        }
    }

    /// Cuts the current target off from `replica`, both ways.
    pub fn cut_target_from(&mut self, replica: ReplicaId) {
        if let Some(generation) = self.current {
            self.network
                .cut(Node::Target(generation), Node::Replica(replica));
            self.network
                .cut(Node::Replica(replica), Node::Target(generation));
        }
    }

    /// A killed replica knows only its checkpoint's stamp until it is resynced; a new target then
    /// cannot tell how far its cache got. Writes not yet flushed are then at risk, as with a power
    /// loss (a documented limit: it takes a replica crash and a target restart together).
    fn note_target_restart(&mut self) {
        let inexact = self
            .nodes
            .values()
            .any(|node| node.process.as_ref().is_some_and(|p| !p.stamp_exact()));
        if inexact {
            self.history.power_lost();
        }
    }

    pub fn command(&mut self, command: Command) {
        if let Command::AddReplica(replica) = command {
            // The agent creates storage for a new member, never over an existing one.
            let node_free = self.nodes.get(&replica).is_some_and(|n| n.disk.is_none());
            if node_free && self.control_plane.membership.get(replica).is_none() {
                self.create_storage(replica, false);
            }
        }
        if let Some(generation) = self.current {
            self.process(Work::Target(generation, TargetInput::Command(command)));
        }
    }

    fn on_command_done(&mut self, command: Command, result: &Result<(), MembershipError>) {
        match (command, result) {
            (Command::RemoveReplica(replica), Ok(())) => {
                // The agent deletes the replica's storage once the volume let it go.
                if let Some(node) = self.nodes.get_mut(&replica) {
                    node.process = None;
                    node.disk = None;
                    node.epoch += 1;
                    node.restart_at_tick = None;
                }
                self.faults.replicas_removed += 1;
            }
            (Command::AddReplica(_), Ok(())) => self.faults.replicas_added += 1,
            (Command::AddReplica(replica), Err(_)) => {
                if self.control_plane.membership.get(replica).is_none() {
                    if let Some(node) = self.nodes.get_mut(&replica) {
                        node.process = None;
                        node.disk = None;
                        node.epoch += 1;
                    }
                }
                self.faults.membership_refused += 1;
            }
            (Command::RemoveReplica(_), Err(_)) => self.faults.membership_refused += 1,
        }
    }

    /// Creates fresh storage on a node (a new incarnation) and starts its replica process.
    fn create_storage(&mut self, replica: ReplicaId, consistent: bool) {
        let incarnation = Incarnation(self.rng.gen());
        let meta = ReplicaMeta::new(replica, incarnation, self.geometry, consistent);
        let options = self.config.replica;
        let node = self.nodes.get_mut(&replica).expect("node exists");
        node.epoch += 1;
        node.process = Some(Replica::open(meta.clone(), options));
        node.disk = Some(SimDisk::new(meta));
        node.restart_at_tick = None;
    }
}

/// True if activity log `new` holds every region of `old` and at least one more.
fn extends(old: &tandem_core::RegionSet, new: &tandem_core::RegionSet) -> bool {
    old.iter().all(|region| new.contains(region)) && new.len() > old.len()
}
