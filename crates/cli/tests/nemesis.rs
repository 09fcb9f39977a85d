//! The nemesis: on a cluster of network namespaces, a verifying application (`tandem workload`,
//! the demo's: known content, FUA writes, flushes, read-back checks, reconnecting through every
//! node's endpoint) runs while faults picked at random from a seed hit real processes: kill -9
//! of an agent, SIGSTOP and SIGCONT, a node's link down and up, a one-way drop (nft inside a
//! namespace), random packet loss on a node's link (nft `numgen random`) and a slow, congested
//! link (a tbf qdisc: there is no netem here for a fixed delay), a kill -9 and restart of the
//! control plane, and a replica migration. One fault at
//! a time, each healed before the next, the volume Healthy in between: a volume of three
//! replicas survives any one. It prints what it injected, the failovers and the longest I/O
//! pause, and fails on any lost or wrong block.
//!
//! Bounded: `TANDEM_NEMESIS_FAULTS` faults (6 by default, for CI), each held 1-4 s;
//! `TANDEM_NEMESIS_SEED` replays a run (the seed is printed).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const VOLUME: &str = "vol-n";
const NODES: usize = 4;
/// How long the volume may take to be Healthy again after a fault is healed.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillAgent,
    PauseAgent,
    CutLink,
    DropOneWay,
    LoseTraffic,
    SlowLink,
    RestartControlPlane,
    Migrate,
}

const FAULTS: [Fault; 8] = [
    Fault::KillAgent,
    Fault::PauseAgent,
    Fault::CutLink,
    Fault::DropOneWay,
    Fault::LoseTraffic,
    Fault::SlowLink,
    Fault::RestartControlPlane,
    Fault::Migrate,
];

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// Runs `check` until it is true (bounded), naming what it waited for.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + HEAL_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Moves the volume's replica on `from` to `to` with cStor's two edits: add the new pool, wait
/// until its replica is Healthy, remove the old one (tried again while an earlier change is
/// still finishing), wait until it is gone.
fn migrate(cluster: &Cluster, from: &str, to: &str) {
    let mut pools: Vec<String> = cluster
        .replica_nodes(VOLUME)
        .iter()
        .map(|node| cluster.pool_on(node))
        .collect();
    let (old, new) = (cluster.pool_on(from), cluster.pool_on(to));
    pools.push(new.clone());
    let refs: Vec<&str> = pools.iter().map(String::as_str).collect();
    let added = cluster.patch_pools(VOLUME, &refs);
    assert!(added.status.success(), "{added:?}");
    let replica = format!("{VOLUME}-{new}");
    wait_until(&format!("{replica} to be Healthy"), || {
        let output = cluster.run(&["get", "cvr", &replica, "-n", "openebs", "-o", "json"]);
        let cvr: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        cvr["status"]["phase"] == "Healthy"
    });
    pools.retain(|pool| *pool != old);
    let refs: Vec<&str> = pools.iter().map(String::as_str).collect();
    wait_until("the removal to be accepted", || {
        cluster.patch_pools(VOLUME, &refs).status.success()
    });
    let gone = format!("{VOLUME}-{old}");
    wait_until(&format!("{gone} to be gone"), || {
        let output = cluster.run(&["get", "cvr", "-n", "openebs"]);
        !String::from_utf8_lossy(&output.stdout).contains(&gone)
    });
}

/// Waits until the volume is Healthy and every pool ONLINE again: the next fault hits a whole
/// cluster (a migration needs its new pool ONLINE).
fn wait_healthy(cluster: &Cluster, after: &str) {
    let deadline = Instant::now() + HEAL_TIMEOUT;
    loop {
        let output = cluster.run(&["get", "cv", VOLUME, "-n", "openebs", "-o", "json"]);
        let cv: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let output = cluster.run(&["get", "cspi", "-n", "openebs", "-o", "json"]);
        let pools: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let pools = items(&pools);
        let online =
            pools.len() == NODES && pools.iter().all(|pool| pool["status"]["phase"] == "ONLINE");
        if cv["status"]["phase"] == "Healthy" && online {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the volume was not Healthy with every pool ONLINE {HEAL_TIMEOUT:?} after {after}: \
             {}",
            cv["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn nemesis_on_real_processes_loses_no_acknowledged_write() {
    let Some(cluster) = Cluster::up_netns(NODES, "2G") else {
        return;
    };
    let seed = env_number("TANDEM_NEMESIS_SEED").unwrap_or_else(rand::random);
    let faults = env_number("TANDEM_NEMESIS_FAULTS").unwrap_or(6);
    eprintln!("nemesis seed {seed} ({faults} faults; TANDEM_NEMESIS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    cluster.ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        "64Mi",
        "--replicas",
        "3",
    ]);
    wait_healthy(&cluster, "creation");
    let nodes: Vec<String> = (1..=NODES).map(|n| format!("node{n}")).collect();
    let uris: Vec<String> = nodes
        .iter()
        .map(|node| {
            cluster
                .ok(&["volume", "uri", VOLUME, "-n", "openebs", "--node", node])
                .trim()
                .to_string()
        })
        .collect();
    let application = Application::start(&cluster, &uris);

    let mut injected = Vec::new();
    let mut failovers = 0;
    for _ in 0..faults {
        let target = cluster.target_node(VOLUME);
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        // Half the faults hit the node running the target: those make failovers.
        let node = if rng.gen_bool(0.5) {
            target.clone()
        } else {
            nodes[rng.gen_range(0..nodes.len())].clone()
        };
        let hold = Duration::from_millis(rng.gen_range(1_000..4_000));
        let started = Instant::now();
        let what = match fault {
            Fault::KillAgent => {
                cluster.kill_9(&format!("nodes/{node}/agent.pid"));
                std::thread::sleep(hold);
                cluster.ok(&["up", "--nodes", &NODES.to_string()]);
                format!("kill -9 of {node}'s agent, back after {hold:?}")
            }
            Fault::PauseAgent => {
                let pid = cluster.pid(&format!("nodes/{node}/agent.pid"));
                signal("STOP", &pid);
                std::thread::sleep(hold);
                signal("CONT", &pid);
                format!("SIGSTOP of {node}'s agent for {hold:?}")
            }
            Fault::CutLink => {
                cluster.cut_link(&node);
                std::thread::sleep(hold);
                cluster.heal_link(&node);
                format!("{node}'s link down for {hold:?}")
            }
            Fault::DropOneWay => {
                let others: Vec<&String> = nodes.iter().filter(|n| **n != node).collect();
                let from = others[rng.gen_range(0..others.len())].clone();
                cluster.drop_from(&node, &from);
                std::thread::sleep(hold);
                cluster.heal_drops(&node);
                format!("{node} dropping everything from {from} for {hold:?}")
            }
            Fault::LoseTraffic => {
                let percent = rng.gen_range(5..40);
                cluster.lose_packets(&node, percent);
                std::thread::sleep(hold);
                cluster.heal_drops(&node);
                format!("{node} losing {percent}% of what it receives for {hold:?}")
            }
            Fault::SlowLink => {
                let mbit = rng.gen_range(5..100);
                cluster.slow_link(&node, mbit);
                std::thread::sleep(hold);
                cluster.heal_slow_link(&node);
                format!("{node}'s link slowed to {mbit} Mbit/s for {hold:?}")
            }
            Fault::RestartControlPlane => {
                cluster.kill_9("control-plane/control-plane.pid");
                std::thread::sleep(hold);
                cluster.ok(&["up", "--nodes", &NODES.to_string()]);
                format!("kill -9 of the control plane, back after {hold:?}")
            }
            Fault::Migrate => {
                let from = cluster.replica_nodes(VOLUME)[rng.gen_range(0..3)].clone();
                let to = free_node(&cluster, VOLUME);
                migrate(&cluster, &from, &to);
                format!("migration of the replica on {from} to {to}")
            }
        };
        wait_healthy(&cluster, &what);
        let moved = cluster.target_node(VOLUME) != target;
        failovers += usize::from(moved);
        let line = format!(
            "{what}; Healthy again after {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if moved {
                format!(" (target moved from {target})")
            } else {
                String::new()
            }
        );
        eprintln!("nemesis: {line}");
        injected.push(line);
    }

    let summary = application.finish();
    eprintln!(
        "nemesis seed {seed}: {} faults, {failovers} failovers; the application: {} writes, {} flushes, {} I/O errors, {} reconnections, longest pause without a successful I/O {} ms",
        injected.len(),
        summary["writes"],
        summary["flushes"],
        summary["ioErrors"],
        summary["reconnects"],
        summary["longestPauseMs"]
    );
    let clean = summary["wrongWhileRunning"] == 0
        && summary["blocksWrong"] == 0
        && summary["blocksUnreadable"] == 0;
    if !clean {
        for node in &nodes {
            eprintln!(
                "--- {node}'s agent log, the end:\n{}",
                cluster.agent_log_tail(node)
            );
        }
    }
    assert_eq!(summary["wrongWhileRunning"], 0, "{summary:#}");
    assert_eq!(summary["blocksWrong"], 0, "{summary:#}");
    assert_eq!(summary["blocksUnreadable"], 0, "{summary:#}");
    assert_eq!(summary["blocksGood"], 256, "{summary:#}");
    assert!(summary["writes"].as_u64().unwrap_or(0) > 0, "{summary:#}");
}
