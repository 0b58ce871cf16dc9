//! The chaos soak's short version (issue 13): one round of each fault against the real cluster
//! and the agent as a process of its own over the simulated kernel: the agent SIGKILLed idle,
//! amid a bind, a restore and a DRA Prepare (and Unprepare); the kubelet and the API server
//! restarted; etcd stopped; a device unbound behind nodeprep's back; the config changed (the
//! device a pod holds dropped and added back, an invalid config refused). After each, every
//! invariant of `support::soak` must hold again within its bound. The 200-round version is
//! `cargo bench --bench soak`.

mod support;

use std::time::Duration;

use support::soak::{Kind, Plan, SoakOptions};

/// The entry point of the agent process the soak starts: this binary run with
/// `--exact soak_agent_process` and `support::soak::AGENT_ENV` set runs the agent here and exits.
/// In a plain test run it checks that settings the agent cannot use are refused with the reason,
/// before anything starts.
#[test]
fn soak_agent_process() {
    support::soak::agent_if_asked();
    let e = support::soak::run_agent(&serde_json::json!({"root": "/nonexistent", "listen": "not an address"}))
        .expect_err("an unusable listen address is refused");
    assert!(e.contains("address"), "{e}");
}

#[test]
fn a_short_chaos_soak_breaks_no_invariant() {
    let plan = vec![
        Kind::KillMidRestore,
        Kind::KillMidBind,
        Kind::UnbindBehind,
        Kind::KubeletRestart,
        Kind::KillIdle,
        Kind::ConfigChange,
        Kind::ApiServerRestart,
        Kind::EtcdStop,
        Kind::KillMidPrepare,
        Kind::UnbindBehind,
        Kind::ConfigChange,
        Kind::KillMidBind,
    ];
    let report = support::soak::run(SoakOptions {
        plan: SoakOptions::plan_from_env(Plan::Fixed(plan)),
        seed: SoakOptions::seed_from_env(),
        write_delay: Duration::from_millis(5),
        agent_args: ["soak_agent_process", "--exact", "--nocapture", "--test-threads=1"].map(String::from).to_vec(),
        verbose: true,
    });
    report.print();
    assert!(report.agent_exits.is_empty(), "the agent exited by itself: {:#?}", report.agent_exits);
    assert!(
        report.violations.is_empty(),
        "{} violations (seed {}): {:#?}",
        report.violations.len(),
        report.seed,
        report.violations
    );
    if std::env::var_os("NODEPREP_SOAK_PLAN").is_none() {
        assert!(report.kills_amid_writes >= 3, "too few SIGKILLs landed amid writes: {}", report.kills_amid_writes);
    }
}
