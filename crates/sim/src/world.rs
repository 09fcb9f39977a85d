//! The simulated world: one volume's target(s) and replica nodes, a network, disks, a control
//! plane and clients, all driven by one seeded random generator in virtual time.
//!
//! Everything non-deterministic in production (the network, disks, the clock, crashes) is a
//! choice made here from the seed, so one seed replays one run exactly. The checkers look from
//! outside: at client replies, at what crosses the network, and at the replicas' disks.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tandem_core::{
    ClientOp, ClientReplyBody, ClientRequest, ClientRequestId, Command, DiskOp, Envelope,
    Generation, Geometry, Incarnation, Membership, Message, Replica, ReplicaId, ReplicaInput,
    ReplicaMeta, ReplicaMode, ReplicaOptions, ReplicaOutput, Stamp, Target, TargetEvent,
    TargetInput, TargetOptions, TargetOutput, VolumeStatus, WriteOrigin,
};

use crate::disk::SimDisk;
use crate::history::{block_data, block_value, Guarantee, History, Violation, BLOCK_SIZE};
use crate::network::{chance, Network, NetworkFaults, Node};

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
                replica_inflight_max: 512,
                resync_bytes_per_tick: 0,
                resync_segments_inflight_max: 4,
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
    pub power_losses: u64,
    pub target_crashes: u64,
    pub target_takeovers: u64,
    pub disk_error_windows: u64,
    pub disk_errors: u64,
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
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Read {
        first_block: u64,
        blocks: u64,
        issued_at: u64,
    },
    Write {
        id: u64,
        fua: bool,
    },
    Flush {
        issued_at: u64,
    },
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
    clients: BTreeMap<ClientRequestId, (Generation, Pending)>,
    next_client: u64,
    next_write: u64,
    pub violations: Vec<Violation>,
    pub faults: FaultCounters,
    pub faults_on: bool,
    pub workload_on: bool,
    /// Events every target reported, with the tick.
    pub target_events: Vec<(u64, Generation, TargetEvent)>,
    pub command_results: Vec<(Command, Result<(), String>)>,
    pub acked_ops: u64,
    pub checked_reads: u64,
    /// The longest a client request waited for its reply, in ticks.
    pub client_wait_ticks_max: u64,
    issued_tick: BTreeMap<ClientRequestId, u64>,
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
            checked_reads: 0,
            client_wait_ticks_max: 0,
            issued_tick: BTreeMap::new(),
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
                .fold(BTreeMap::new(), |mut counts, (g, _)| {
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

    /// True when nothing is in flight anywhere: no message on the wire, no disk operation, no
    /// request a replica has not answered.
    pub fn quiescent(&self) -> bool {
        self.events.is_empty() && self.target().is_some_and(|t| t.outstanding_requests() == 0)
    }

    /// True if the node still has replica storage (not removed by a scale-down).
    pub fn has_storage(&self, replica: ReplicaId) -> bool {
        self.nodes.get(&replica).is_some_and(|n| n.disk.is_some())
    }

    /// The latest result of `command`, if the target answered it.
    pub fn command_result(&self, command: Command) -> Option<Result<(), String>> {
        self.command_results
            .iter()
            .rev()
            .find(|(c, _)| *c == command)
            .map(|(_, result)| result.clone())
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
        if self.faults_on {
            self.inject_faults();
        }
        self.restart_due();
        if self.workload_on {
            self.issue_client_request();
        }
        let generations: Vec<Generation> = self.targets.keys().copied().collect();
        for generation in generations {
            self.process(Work::Target(generation, TargetInput::Tick));
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
        }
    }

    fn perform_disk_op(
        &mut self,
        replica: ReplicaId,
        op: DiskOp,
    ) -> (
        tandem_core::DiskOpId,
        Result<Option<Bytes>, tandem_core::IoFailure>,
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
            } => match failure {
                Some(failure) => (id, Err(failure)),
                None => {
                    disk.write(offset, data);
                    (id, Ok(None))
                }
            },
            DiskOp::Trim { id, offset, len } => match failure {
                Some(failure) => (id, Err(failure)),
                None => {
                    disk.trim(offset, len);
                    (id, Ok(None))
                }
            },
            DiskOp::Read { id, offset, len } => match failure {
                Some(failure) => (id, Err(failure)),
                None => (id, Ok(Some(disk.read(offset, len)))),
            },
            // A failed fsync may have dropped acknowledged data (fsyncgate): a replica cannot
            // recover from that on its own, so the simulator does not inject it.
            DiskOp::Sync { id } => {
                disk.sync();
                (id, Ok(None))
            }
            DiskOp::PersistMeta { id, update } => {
                disk.persist_meta(&update);
                (id, Ok(None))
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
                    target.handle(input, &mut target_out);
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
                self.on_command_done(command, result.clone().map_err(|e| e.to_string()));
                self.command_results
                    .push((command, result.map_err(|e| e.to_string())));
            }
            TargetOutput::Event(event) => {
                if let TargetEvent::Fenced = event {
                    if self.current == Some(generation) {
                        self.current = None;
                    }
                }
                if let TargetEvent::RecoveredFrom { source, .. } = event {
                    self.check_recovery_source(source);
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
                self.schedule(
                    self.now_tick + latency,
                    Event::DiskDone { replica, epoch, op },
                );
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
            self.clients.retain(|_, (g, _)| *g != generation);
        }
    }

    /// A new target takes over while the old one keeps running, cut off from clients.
    pub fn takeover_target(&mut self) {
        self.note_target_restart();
        self.start_target();
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
            self.create_storage(replica, false);
        }
        if let Some(generation) = self.current {
            self.process(Work::Target(generation, TargetInput::Command(command)));
        }
    }

    fn on_command_done(&mut self, command: Command, result: Result<(), String>) {
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

    // ------------------------------------------------------------------ replica faults

    /// Kills a replica's process; with `power_loss`, unsynced writes may be lost too. In-flight
    /// storage operations either happened or did not.
    pub fn crash_replica(&mut self, replica: ReplicaId, power_loss: bool) {
        let pending: Vec<(u64, u64)> = self
            .events
            .iter()
            .filter(
                |(_, event)| matches!(event, Event::DiskDone { replica: r, .. } if *r == replica),
            )
            .map(|(key, _)| *key)
            .collect();
        for key in pending {
            let Some(Event::DiskDone { op, .. }) = self.events.remove(&key) else {
                unreachable!()
            };
            if self.rng.gen_bool(0.5) && !matches!(op, DiskOp::Read { .. }) {
                let _completed_before_the_crash = self.perform_disk_op(replica, op);
            }
        }
        let node = self.nodes.get_mut(&replica).expect("node exists");
        if node.process.take().is_none() {
            return;
        }
        node.epoch += 1;
        if power_loss {
            if let Some(disk) = node.disk.as_mut() {
                disk.lose_power(&mut self.rng);
            }
            self.history.power_lost();
        }
    }

    /// Starts a crashed replica's process again from what its disk holds.
    pub fn restart_replica(&mut self, replica: ReplicaId) {
        let options = self.config.replica;
        let node = self.nodes.get_mut(&replica).expect("node exists");
        node.restart_at_tick = None;
        if node.process.is_some() {
            return;
        }
        if let Some(disk) = node.disk.as_ref() {
            node.process = Some(Replica::open(disk.meta.clone(), options));
        }
    }

    /// Cuts a replica off from every target, both ways.
    pub fn partition_replica(&mut self, replica: ReplicaId) {
        for generation in self.targets.keys().copied().collect::<Vec<_>>() {
            self.network
                .cut(Node::Target(generation), Node::Replica(replica));
            self.network
                .cut(Node::Replica(replica), Node::Target(generation));
        }
    }

    pub fn heal_network(&mut self) {
        self.network.heal();
    }

    fn restart_due(&mut self) {
        let due: Vec<ReplicaId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.restart_at_tick.is_some_and(|at| at <= self.now_tick))
            .map(|(r, _)| *r)
            .collect();
        for replica in due {
            self.restart_replica(replica);
        }
        for node in self.nodes.values_mut() {
            if node.trouble_until_tick != 0 && node.trouble_until_tick <= self.now_tick {
                node.trouble_until_tick = 0;
                if let Some(disk) = node.disk.as_mut() {
                    disk.failure_permille = 0;
                    disk.slowness = 1;
                }
            }
        }
        if self
            .target_restart_at_tick
            .is_some_and(|at| at <= self.now_tick)
        {
            self.start_target();
        }
    }

    /// Stops injecting faults and repairs everything: the network, crashed processes, troubled
    /// disks, a missing target. What follows must converge (liveness).
    pub fn heal_everything(&mut self) {
        self.faults_on = false;
        self.network.faults = NetworkFaults::default();
        self.network.heal();
        let replicas: Vec<ReplicaId> = self.nodes.keys().copied().collect();
        for replica in replicas {
            let node = self.nodes.get_mut(&replica).expect("exists");
            node.trouble_until_tick = 0;
            if let Some(disk) = node.disk.as_mut() {
                disk.failure_permille = 0;
                disk.slowness = 1;
            }
            self.restart_replica(replica);
        }
        if self.current.is_none() {
            self.start_target();
        }
    }

    fn inject_faults(&mut self) {
        let rates = self.config.faults;
        let now = self.now_tick;
        let members: Vec<ReplicaId> = self
            .control_plane
            .membership
            .members
            .iter()
            .map(|m| m.replica)
            .collect();
        let with_storage: Vec<ReplicaId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.disk.is_some())
            .map(|(r, _)| *r)
            .collect();
        if chance(&mut self.rng, rates.partition_ppm) {
            if let Some(&replica) = with_storage.iter().choose(&mut self.rng) {
                self.partition_replica(replica);
                self.faults.partitions += 1;
            }
        }
        if chance(&mut self.rng, rates.partition_one_way_ppm) {
            if let (Some(&replica), Some(generation)) =
                (with_storage.iter().choose(&mut self.rng), self.current)
            {
                let (a, b) = (Node::Target(generation), Node::Replica(replica));
                if self.rng.gen_bool(0.5) {
                    self.network.cut(a, b);
                } else {
                    self.network.cut(b, a);
                }
                self.faults.one_way_partitions += 1;
            }
        }
        // Partitions heal after a while.
        if self.rng.gen_range(0..1000) < 5 {
            self.network.heal();
        }
        let power_loss = chance(&mut self.rng, rates.power_loss_ppm);
        if power_loss || chance(&mut self.rng, rates.replica_crash_ppm) {
            if let Some(&replica) = with_storage.iter().choose(&mut self.rng) {
                if self.nodes[&replica].process.is_some() {
                    self.crash_replica(replica, power_loss);
                    if power_loss {
                        self.faults.power_losses += 1;
                    } else {
                        self.faults.replica_crashes += 1;
                    }
                    let delay = self.rng.gen_range(20..300);
                    self.nodes
                        .get_mut(&replica)
                        .expect("exists")
                        .restart_at_tick = Some(now + delay);
                }
            }
        }
        if chance(&mut self.rng, rates.target_crash_ppm) && self.current.is_some() {
            self.crash_target();
            self.faults.target_crashes += 1;
            self.target_restart_at_tick = Some(now + self.rng.gen_range(5..100));
        }
        if chance(&mut self.rng, rates.target_takeover_ppm) && self.current.is_some() {
            self.takeover_target();
            self.faults.target_takeovers += 1;
        }
        if chance(&mut self.rng, rates.disk_errors_ppm) {
            if let Some(&replica) = with_storage.iter().choose(&mut self.rng) {
                let until = now + self.rng.gen_range(10..100);
                let node = self.nodes.get_mut(&replica).expect("exists");
                if let Some(disk) = node.disk.as_mut() {
                    disk.failure_permille = 200;
                    disk.failure = if self.rng.gen_bool(0.5) {
                        tandem_core::IoFailure::Device
                    } else {
                        tandem_core::IoFailure::NoSpace
                    };
                    node.trouble_until_tick = until;
                    self.faults.disk_error_windows += 1;
                }
            }
        }
        if chance(&mut self.rng, rates.slow_disk_ppm) {
            if let Some(&replica) = with_storage.iter().choose(&mut self.rng) {
                let until = now + self.rng.gen_range(50..400);
                let node = self.nodes.get_mut(&replica).expect("exists");
                if let Some(disk) = node.disk.as_mut() {
                    disk.slowness = 20;
                    node.trouble_until_tick = until;
                    self.faults.slow_disks += 1;
                }
            }
        }
        // A replaced disk loses a replica's data. By design a volume survives that when every
        // other trusted replica is Healthy (they all hold every acknowledged write); once per run.
        if chance(&mut self.rng, rates.wipe_ppm)
            && self.faults.wipes == 0
            && self.control_plane.membership.replication_factor() >= 3
        {
            if let Some(&replica) = members.iter().choose(&mut self.rng) {
                let others_healthy = self.target().is_some_and(|target| {
                    target.status() == VolumeStatus::Healthy
                        && members.iter().all(|r| {
                            *r == replica || target.replica_mode(*r) == Some(ReplicaMode::Healthy)
                        })
                });
                if self.nodes[&replica].disk.is_some() && others_healthy {
                    self.wipe_replica(replica);
                    self.faults.wipes += 1;
                }
            }
        }
        if chance(&mut self.rng, rates.add_replica_ppm) {
            let spare = self
                .nodes
                .iter()
                .filter(|(r, n)| n.disk.is_none() && !members.contains(r))
                .map(|(r, _)| *r)
                .choose(&mut self.rng);
            if let Some(spare) = spare {
                self.command(Command::AddReplica(spare));
            }
        }
        if chance(&mut self.rng, rates.remove_replica_ppm) {
            if let Some(&replica) = members.iter().choose(&mut self.rng) {
                self.command(Command::RemoveReplica(replica));
            }
        }
    }

    // ------------------------------------------------------------------ clients

    fn issue_client_request(&mut self) {
        let workload = self.config.workload;
        if self.clients.len() >= workload.inflight_max || !chance(&mut self.rng, workload.issue_ppm)
        {
            return;
        }
        let Some(generation) = self.current else {
            return;
        };
        let total = workload.write_weight
            + workload.read_weight
            + workload.flush_weight
            + workload.trim_weight;
        let pick = self.rng.gen_range(0..total);
        let blocks = self
            .rng
            .gen_range(1..=workload.blocks_max.min(self.config.blocks));
        let first_block = self.rng.gen_range(0..=self.config.blocks - blocks);
        let offset = first_block * BLOCK_SIZE;
        let len = blocks * BLOCK_SIZE;
        let (op, pending) = if pick < workload.write_weight {
            let id = self.new_write_id();
            let fua = chance(&mut self.rng, workload.fua_ppm);
            self.history.issue_write(id, first_block, blocks, false);
            (
                ClientOp::Write {
                    offset,
                    data: block_data(id, blocks),
                    fua,
                },
                Pending::Write { id, fua },
            )
        } else if pick < workload.write_weight + workload.read_weight {
            let issued_at = self.history.now();
            (
                ClientOp::Read { offset, len },
                Pending::Read {
                    first_block,
                    blocks,
                    issued_at,
                },
            )
        } else if pick < workload.write_weight + workload.read_weight + workload.flush_weight {
            let issued_at = self.history.now();
            (ClientOp::Flush, Pending::Flush { issued_at })
        } else {
            let id = self.new_write_id();
            self.history.issue_write(id, first_block, blocks, true);
            (
                ClientOp::Trim { offset, len },
                Pending::Write { id, fua: false },
            )
        };
        self.submit(generation, op, pending);
    }

    fn new_write_id(&mut self) -> u64 {
        self.next_write += 1;
        self.next_write
    }

    fn submit(
        &mut self,
        generation: Generation,
        op: ClientOp,
        pending: Pending,
    ) -> ClientRequestId {
        self.next_client += 1;
        let id = ClientRequestId(self.next_client);
        self.clients.insert(id, (generation, pending));
        self.issued_tick.insert(id, self.now_tick);
        self.process(Work::Target(
            generation,
            TargetInput::Client(ClientRequest { id, op }),
        ));
        id
    }

    /// Writes `blocks` blocks at `first_block` through the current target; returns the write id.
    pub fn client_write(&mut self, first_block: u64, blocks: u64) -> Option<u64> {
        let generation = self.current?;
        let id = self.new_write_id();
        self.history.issue_write(id, first_block, blocks, false);
        let op = ClientOp::Write {
            offset: first_block * BLOCK_SIZE,
            data: block_data(id, blocks),
            fua: false,
        };
        self.submit(generation, op, Pending::Write { id, fua: false });
        Some(id)
    }

    pub fn client_flush(&mut self) {
        if let Some(generation) = self.current {
            let issued_at = self.history.now();
            self.submit(generation, ClientOp::Flush, Pending::Flush { issued_at });
        }
    }

    /// Reads the whole volume through the current target; each block is checked on arrival.
    pub fn client_read_all(&mut self) {
        if let Some(generation) = self.current {
            let issued_at = self.history.now();
            let blocks = self.config.blocks;
            let op = ClientOp::Read {
                offset: 0,
                len: blocks * BLOCK_SIZE,
            };
            self.submit(
                generation,
                op,
                Pending::Read {
                    first_block: 0,
                    blocks,
                    issued_at,
                },
            );
        }
    }

    fn on_client_reply(&mut self, generation: Generation, reply: tandem_core::ClientReply) {
        let Some((_, pending)) = self.clients.remove(&reply.id) else {
            return;
        };
        if let Some(issued) = self.issued_tick.remove(&reply.id) {
            self.client_wait_ticks_max = self.client_wait_ticks_max.max(self.now_tick - issued);
        }
        let Ok(body) = reply.result else {
            return; // Fenced or refused: the outcome is unknown, which the history allows.
        };
        self.acked_ops += 1;
        match (pending, body) {
            (
                Pending::Read {
                    first_block,
                    blocks,
                    issued_at,
                },
                ClientReplyBody::Read(data),
            ) => {
                self.checked_reads += 1;
                for index in 0..blocks {
                    let start = (index * BLOCK_SIZE) as usize;
                    let value = block_value(&data[start..start + BLOCK_SIZE as usize]);
                    let block = first_block + index;
                    if let Err(problem) = self.history.check_block(block, value, issued_at) {
                        let guarantee = self.read_guarantee;
                        self.violate(
                            guarantee,
                            format!("read from generation {}: {problem}", generation.0),
                        );
                    }
                }
            }
            (Pending::Write { id, fua }, ClientReplyBody::Done { stamp }) => {
                self.history.ack_write(id, stamp);
                if fua {
                    let now = self.history.now();
                    self.history.flush_acked(now);
                }
                self.check_write_durability(generation, id, stamp);
            }
            (Pending::Flush { issued_at }, ClientReplyBody::Done { .. }) => {
                self.check_flush_durability(generation, issued_at);
                self.history.flush_acked(issued_at);
            }
            (pending, body) => self.violate(
                Guarantee::G4ReadYourWrites,
                format!("reply {body:?} does not match request {pending:?}"),
            ),
        }
    }

    // ------------------------------------------------------------------ checkers on disks

    /// True if a block value on a disk is at least as new as the write stamped `needed`.
    fn value_at_least(
        &self,
        block: u64,
        value: Option<u64>,
        needed_id: u64,
        needed: Stamp,
    ) -> bool {
        match value {
            Some(0) => self.history.zeroed_since(block, needed),
            Some(value) => {
                value == needed_id || self.history.stamp_of(value).is_some_and(|s| s >= needed)
            }
            None => false,
        }
    }

    /// G1 (and G6) at the moment a write is acknowledged: CF replicas hold it in their caches,
    /// and CF of those are trusted members.
    fn check_write_durability(&mut self, generation: Generation, id: u64, stamp: Stamp) {
        let record = self.history.writes[&id].clone();
        if record.lossy {
            return;
        }
        let Some(target) = self.targets.get(&generation) else {
            return;
        };
        let needed = target.consistency_factor();
        let (mut holders, mut trusted_holders) = (0, 0);
        for (replica, node) in &self.nodes {
            let Some(disk) = node.disk.as_ref() else {
                continue;
            };
            if node.wiped_at.is_some_and(|at| at > record.issued_at) {
                holders += 1;
                trusted_holders += 1;
                continue;
            }
            let holds = (record.first_block..record.first_block + record.blocks).all(|block| {
                let start = (block * BLOCK_SIZE) as usize;
                let value = block_value(&disk.cache()[start..start + BLOCK_SIZE as usize]);
                self.value_at_least(block, value, id, stamp)
            });
            if holds {
                holders += 1;
                if self
                    .control_plane
                    .membership
                    .trusts(*replica, disk.incarnation)
                {
                    trusted_holders += 1;
                }
            }
        }
        if holders < needed {
            let seen: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(replica, node)| {
                    let disk = node.disk.as_ref()?;
                    let values: Vec<Option<u64>> = (record.first_block
                        ..record.first_block + record.blocks)
                        .map(|block| {
                            let start = (block * BLOCK_SIZE) as usize;
                            block_value(&disk.cache()[start..start + BLOCK_SIZE as usize])
                        })
                        .collect();
                    Some(format!("replica {} holds {values:?}", replica.0))
                })
                .collect();
            self.violate(
                Guarantee::G1Durability,
                format!(
                    "write {id} (stamp {stamp}, blocks {}..{}) acknowledged but held by {holders} replicas, CF is {needed}: {}",
                    record.first_block,
                    record.first_block + record.blocks,
                    seen.join("; ")
                ),
            );
        } else if trusted_holders < needed {
            self.violate(
                Guarantee::G6Membership,
                format!(
                    "write {id} (stamp {stamp}) acknowledged with {trusted_holders} trusted holders, CF is {needed}"
                ),
            );
        }
    }

    /// G1 at the moment a flush is acknowledged: every write acknowledged before it is durable
    /// on CF replicas.
    fn check_flush_durability(&mut self, generation: Generation, issued_at: u64) {
        let Some(target) = self.targets.get(&generation) else {
            return;
        };
        let needed = target.consistency_factor();
        for block in 0..self.config.blocks {
            let Some((id, stamp)) = self.history.required(block, issued_at) else {
                continue;
            };
            let start = (block * BLOCK_SIZE) as usize;
            let issued_at = self.history.writes[&id].issued_at;
            let holders = self
                .nodes
                .values()
                .filter(|node| {
                    let wiped_since = node.wiped_at.is_some_and(|at| at > issued_at);
                    wiped_since
                        || node.disk.as_ref().is_some_and(|disk| {
                            let value =
                                block_value(&disk.durable()[start..start + BLOCK_SIZE as usize]);
                            self.value_at_least(block, value, id, stamp)
                        })
                })
                .count();
            if holders < needed {
                self.violate(
                    Guarantee::G1Durability,
                    format!(
                        "flush acknowledged but block {block} (write {id}, stamp {stamp}) is durable on {holders} replicas, CF is {needed}"
                    ),
                );
                return;
            }
        }
    }

    /// G2 when a target finishes recovering: the replica it chose as the volume's history holds
    /// every write that must survive.
    fn check_recovery_source(&mut self, source: ReplicaId) {
        let Some(disk) = self.nodes.get(&source).and_then(|n| n.disk.as_ref()) else {
            return;
        };
        let now = self.history.now();
        let mut problem = None;
        for block in 0..self.config.blocks {
            let Some((id, stamp)) = self.history.required(block, now) else {
                continue;
            };
            let start = (block * BLOCK_SIZE) as usize;
            let value = block_value(&disk.cache()[start..start + BLOCK_SIZE as usize]);
            if !self.value_at_least(block, value, id, stamp) {
                problem = Some(format!(
                    "recovered from replica {} whose block {block} holds {value:?}, but write {id} (stamp {stamp}) was acknowledged",
                    source.0
                ));
                break;
            }
        }
        if let Some(problem) = problem {
            self.violate(Guarantee::G2NoLostWrite, problem);
        }
    }

    /// G5: a replica never applies client data from a generation older than one it accepted.
    fn check_fencing(&mut self, replica: ReplicaId, data: &Bytes) {
        let Some(process) = self.replica(replica) else {
            return;
        };
        let seen = process.superblock().generation_seen;
        for block in data.chunks_exact(BLOCK_SIZE as usize) {
            let Some(value) = block_value(block) else {
                continue;
            };
            if let Some(stamp) = self.history.stamp_of(value) {
                if stamp.generation < seen {
                    self.violate(
                        Guarantee::G5Fencing,
                        format!(
                            "replica {} applied write {value} of generation {} after accepting generation {}",
                            replica.0, stamp.generation.0, seen.0
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// G3: every Healthy trusted replica holds the same bytes, in cache and (after a flush) on
    /// durable media.
    pub fn check_convergence(&mut self) {
        let Some(target) = self.target() else {
            return;
        };
        let healthy: Vec<ReplicaId> = self
            .control_plane
            .membership
            .members
            .iter()
            .filter(|m| target.replica_mode(m.replica) == Some(ReplicaMode::Healthy))
            .map(|m| m.replica)
            .collect();
        let Some((&first, rest)) = healthy.split_first() else {
            return;
        };
        let reference = self.nodes[&first].disk.as_ref().expect("healthy has disk");
        let mut problems = Vec::new();
        for other in rest {
            let disk = self.nodes[other].disk.as_ref().expect("healthy has disk");
            for (image, name) in [
                (reference.cache(), "cache"),
                (reference.durable(), "durable"),
            ] {
                let theirs = if name == "cache" {
                    disk.cache()
                } else {
                    disk.durable()
                };
                if let Some(block) = (0..self.config.blocks).find(|b| {
                    let start = (b * BLOCK_SIZE) as usize;
                    let end = start + BLOCK_SIZE as usize;
                    image[start..end] != theirs[start..end]
                }) {
                    let start = (block * BLOCK_SIZE) as usize;
                    let end = start + BLOCK_SIZE as usize;
                    problems.push(format!(
                        "replicas {} and {} differ ({name}) at block {block}: {:?} vs {:?}",
                        first.0,
                        other.0,
                        block_value(&image[start..end]),
                        block_value(&theirs[start..end])
                    ));
                }
            }
        }
        for problem in problems {
            self.violate(Guarantee::G3Convergence, problem);
        }
    }
}
