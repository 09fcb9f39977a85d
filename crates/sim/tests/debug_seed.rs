//! Temporary: prints one seed's target events.
#[test]
fn dump() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let config = tandem_sim::swarm_config(seed);
    println!("{config:?}");
    let mut sim = tandem_sim::Sim::new(config);
    sim.faults_on = true;
    sim.workload_on = true;
    sim.run_ticks(tandem_sim::swarm::FAULT_TICKS);
    tandem_sim::swarm::finish(&mut sim);
    for (tick, generation, event) in &sim.target_events {
        println!("{tick} g{} {event:?}", generation.0);
    }
    for (command, result) in &sim.command_results {
        println!("command {command:?} {result:?}");
    }
    println!("{:?}", sim.faults);
}
#[test]
fn dump_replicas() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let stop: u64 = std::env::var("STOP").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let config = tandem_sim::swarm_config(seed);
    let mut sim = tandem_sim::Sim::new(config);
    sim.faults_on = true;
    sim.workload_on = true;
    for _ in 0..stop {
        sim.step();
        if sim.now_tick > stop - 3 { println!("{} TARGETS {}", sim.now_tick, sim.describe_targets()); }
        if sim.now_tick % 10 == 0 || sim.now_tick > stop - 30 {
            for r in 1..=4 {
                if let Some(replica) = sim.replica(tandem_core::ReplicaId(r)) {
                    println!("{} {}", sim.now_tick, replica.describe());
                }
            }
        }
    }
}
#[test]
fn dump_writes() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let ids: Vec<u64> = std::env::var("IDS").unwrap_or_default().split(',').filter_map(|s| s.parse().ok()).collect();
    let mut sim = tandem_sim::Sim::new(tandem_sim::swarm_config(seed));
    sim.faults_on = true;
    sim.workload_on = true;
    sim.run_ticks(tandem_sim::swarm::FAULT_TICKS);
    tandem_sim::swarm::finish(&mut sim);
    for v in &sim.violations { println!("VIOLATION {v}"); }
    for id in ids {
        println!("write {id}: {:?}", sim.history.writes.get(&id));
    }
}
