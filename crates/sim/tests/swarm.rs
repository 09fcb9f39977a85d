//! The swarm in CI: 1000 seeds (two halves, one per core), every guarantee checked, every fault
//! kind injected somewhere. `TANDEM_SWARM_SEEDS` runs more; `tandem sim replay SEED` replays one.

use tandem_core::Bugs;
use tandem_sim::{run_seed, SwarmSummary};

fn seeds_per_half() -> u64 {
    std::env::var("TANDEM_SWARM_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse::<u64>().ok())
        .unwrap_or(1000)
        .div_ceil(2)
}

fn run_half(first: u64) -> SwarmSummary {
    let mut summary = SwarmSummary::default();
    for seed in first..first + seeds_per_half() {
        summary.add(&run_seed(seed, Bugs::none()));
    }
    println!("seeds {first}..{}: {summary:#?}", first + seeds_per_half());
    summary
}

fn assert_clean_and_faulty(summary: &SwarmSummary) {
    let violations: Vec<String> = summary
        .violations
        .iter()
        .map(|(seed, violation)| {
            format!("seed {seed}: {violation} (replay: tandem sim replay {seed})")
        })
        .collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let never: Vec<&str> = summary
        .faults
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(name, _)| *name)
        .collect();
    assert!(never.is_empty(), "fault kinds never injected: {never:?}");
    assert!(
        summary.checked_reads > 1_000 && summary.resyncs > 100,
        "{summary:?}"
    );
    let no_space = tandem_core::ClientError::NoSpace.to_string();
    assert!(
        summary.client_errors.get(&no_space).is_some_and(|n| *n > 0),
        "no write was ever voided for lack of space: {:?}",
        summary.client_errors
    );
}

#[test]
fn swarm_first_half() {
    assert_clean_and_faulty(&run_half(0));
}

#[test]
fn swarm_second_half() {
    assert_clean_and_faulty(&run_half(seeds_per_half()));
}
