//! Fault injection: crashes, power loss, partitions, disk trouble, wiped storage, membership churn.

use rand::seq::IteratorRandom;
use rand::Rng;
use tandem_core::{Command, DiskOp, Replica, ReplicaId, ReplicaMode, VolumeStatus};

use crate::network::{chance, NetworkFaults, Node};
use crate::world::{Event, Sim};

impl Sim {
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
            let read_only = matches!(op, DiskOp::Read { .. } | DiskOp::Allocation { .. });
            if self.rng.gen_bool(0.5) && !read_only {
                let _completed_before_the_crash = self.perform_disk_op(replica, op);
            }
        }
        let node = self.nodes.get_mut(&replica).expect("node exists");
        let Some(process) = node.process.take() else {
            return;
        };
        node.epoch += 1;
        // A killed process's kernel resets its connections: the target may hear of it at once
        // (half the time here, so the timeouts stay exercised). A machine losing power, or one
        // cut off, resets nothing.
        if let Some(session) = process.session() {
            let target = Node::Target(session.generation());
            if !power_loss
                && !self.network.is_cut(Node::Replica(replica), target)
                && self.rng.gen_bool(0.5)
            {
                let at = self.now_tick + self.rng.gen_range(1..=4);
                self.schedule(at, Event::SessionLost { replica, session });
                self.faults.connection_resets += 1;
            }
        }
        let node = self.nodes.get_mut(&replica).expect("node exists");
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

    pub(super) fn restart_due(&mut self) {
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
                    disk.full = false;
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
    /// Makes a replica's disk fail each operation with probability `permille` / 1000 until
    /// everything is healed (0: repaired).
    pub fn fail_disk(&mut self, replica: ReplicaId, permille: u32) {
        if let Some(disk) = self.nodes.get_mut(&replica).and_then(|n| n.disk.as_mut()) {
            disk.failure_permille = permille;
        }
    }

    /// Makes a replica's pool full (its data writes are refused for lack of space, changing
    /// nothing) or frees it again.
    pub fn fill_pool(&mut self, replica: ReplicaId, full: bool) {
        if let Some(disk) = self.nodes.get_mut(&replica).and_then(|n| n.disk.as_mut()) {
            disk.full = full;
        }
    }

    /// Makes a replica's disk `slowness` times slower until everything is healed.
    pub fn slow_disk(&mut self, replica: ReplicaId, slowness: u64) {
        if let Some(disk) = self.nodes.get_mut(&replica).and_then(|n| n.disk.as_mut()) {
            disk.slowness = slowness;
        }
    }

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
                disk.full = false;
            }
            self.restart_replica(replica);
        }
        if self.current.is_none() {
            self.start_target();
        }
    }

    pub(super) fn inject_faults(&mut self) {
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
            // Half the time the old target's node is cut off with its own replica, which the new
            // target cannot reach either: the old one must stop reading that copy.
            let split = if self.rng.gen_bool(0.5) {
                with_storage.iter().choose(&mut self.rng).copied()
            } else {
                None
            };
            if let Some(keep) = split {
                self.isolate_target_with(keep);
            }
            self.takeover_target();
            if let Some(keep) = split {
                self.cut_target_from(keep);
            }
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
        if chance(&mut self.rng, rates.pool_full_ppm) && !with_storage.is_empty() {
            // Half the time every replica's pool fills (writes then fail with ENOSPC), else one.
            let until = now + self.rng.gen_range(20..300);
            let every = self.rng.gen_bool(0.5);
            let one = with_storage.iter().choose(&mut self.rng).copied();
            for replica in &with_storage {
                if every || Some(*replica) == one {
                    let node = self.nodes.get_mut(replica).expect("exists");
                    if let Some(disk) = node.disk.as_mut() {
                        disk.full = true;
                        node.trouble_until_tick = node.trouble_until_tick.max(until);
                    }
                }
            }
            self.faults.pools_full += 1;
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
}
