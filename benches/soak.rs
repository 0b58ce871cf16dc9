//! The chaos soak (issue 13): `NODEPREP_SOAK_ROUNDS` rounds (200 by default) of faults drawn at
//! random against the real cluster (etcd, kube-apiserver, the kubelet with upstream's fake CRI,
//! scheduler, controller manager; `tests/support/k8s.rs`) and the agent as a process of its own
//! over the simulated kernel on a fixture host (`tests/support/soak.rs` has the faults and the
//! invariants). Prints the rounds run, the faults injected by kind, the violations (0 is the
//! goal) and the time from the end of a fault to every invariant holding again (p50/p99).
//! A run is reproduced with `NODEPREP_SOAK_SEED` (printed); `NODEPREP_SOAK_WRITE_DELAY_MS`
//! (default 5) is how long one simulated sysfs write takes.
//!
//! `cargo bench --bench soak`. The short version is the test `tests/real_soak.rs`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::soak::{Plan, SoakOptions};

fn main() {
    // The re-executed agent process the soak SIGKILLs.
    support::soak::agent_if_asked();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let rounds = env("NODEPREP_SOAK_ROUNDS", 200) as usize;
    let report = support::soak::run(SoakOptions {
        plan: SoakOptions::plan_from_env(Plan::Random(rounds)),
        seed: SoakOptions::seed_from_env(),
        write_delay: Duration::from_millis(env("NODEPREP_SOAK_WRITE_DELAY_MS", 5)),
        agent_args: Vec::new(),
        verbose: std::env::var_os("NODEPREP_SOAK_VERBOSE").is_some(),
    });
    report.print();
    if !report.violations.is_empty() || !report.agent_exits.is_empty() {
        std::process::exit(1);
    }
}
