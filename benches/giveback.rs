//! Giving devices back, measured (a module of the `kubelet` bench: one binary, one link).
//!
//! - **A release round on a fixture host** (the intel GPU server, simulated kernel): the
//!   round the agent runs on every config change, resync and pod departure, with nothing to
//!   give back, and with the Quadro and its audio function to give back (discovery, plan,
//!   the restore's sysfs writes). `NODEPREP_RELEASE_ROUNDS` rounds (200).
//! - **A drain on the real cluster**: a pod holds the Quadro, the config drops it (pending),
//!   the pod is deleted; the time from the delete to both functions back on their drivers, as
//!   the agent hears the pod's departure from the API server. `NODEPREP_DRAIN_ROUNDS` (20).

use std::path::Path;
use std::time::{Duration, Instant};

use nodeprep::config::Config;
use nodeprep::host::HostRoot;
use nodeprep::model::PodView;

use super::support;
use support::agent::replace_file;
use support::inprocess::InProcessAgent;
use support::k8s::{Cluster, NODE, Spec, device_pod};
use support::kernel_sim::KernelSim;
use support::machines::intel::{GPU_B, GPU_B_AUDIO};
use support::tree::driver_of;

const QUADRO: &str = "nvidia.com/quadro";
const WAIT: Duration = Duration::from_secs(60);

fn selects() -> String {
    format!("devices:\n  - resourceName: {QUADRO}\n    selectors: {{pciAddresses: [\"{GPU_B}\"]}}\n")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn rounds_on_a_fixture(rounds: usize) {
    let tree = support::intel_gpu_server();
    let root = HostRoot::new(tree.root());
    let plugins = tree.path("var/lib/kubelet/device-plugins");
    let (bind_all, nothing) =
        (Config::parse(&selects()).expect("config"), Config::parse("devices: []").expect("config"));
    let sim = KernelSim::new(&tree);
    let (mut idle, mut giving) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        nodeprep::bind::bind_per_config(&root, &bind_all, &plugins, &mut sim.restarted()).expect("bind");
        let t = Instant::now();
        let r = nodeprep::bind::release_per_config(
            &root,
            &bind_all,
            &plugins,
            &PodView::default(),
            || Ok(Vec::new()),
            &mut sim.restarted(),
        )
        .expect("idle round");
        idle.push(t.elapsed());
        assert!(r.plan.is_empty());
        let t = Instant::now();
        let r = nodeprep::bind::release_per_config(
            &root,
            &nothing,
            &plugins,
            &PodView::default(),
            || Ok(Vec::new()),
            &mut sim.restarted(),
        )
        .expect("release round");
        giving.push(t.elapsed());
        assert_eq!(r.outcomes.iter().filter(|o| o.outcome == "restored").count(), 2, "{r:?}");
    }
    idle.sort();
    giving.sort();
    println!(
        "release round, fixture host ({rounds} rounds): nothing to give back p50 {:.2} ms p99 {:.2} ms; \
         the Quadro and its audio function given back p50 {:.2} ms p99 {:.2} ms",
        pct(&idle, 0.5),
        pct(&idle, 0.99),
        pct(&giving, 0.5),
        pct(&giving, 0.99)
    );
}

fn drains_on_the_real_cluster(rounds: usize) {
    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset");
    c.kubectl_ok(&["apply", "-k", &repo.display().to_string()]);
    c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let tree = support::intel_gpu_server();
    let root = tree.root().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, selects()).expect("config");
    let agent = InProcessAgent::start(&root, &config, &kubeconfig, &c);
    let report = root.join(nodeprep::status::REPORT_FILE);
    let mut took = Vec::with_capacity(rounds);
    let mut pending_after = Vec::with_capacity(rounds);
    for i in 0..rounds {
        c.wait_for("the Quadro allocatable", WAIT, |c| {
            (c.node_quantity("allocatable", QUADRO) == Some(1)).then_some(())
        });
        let pod = format!("vm-{i}");
        c.create(&device_pod(QUADRO, &pod, None));
        let path = format!("/api/v1/namespaces/default/pods/{pod}");
        c.wait_for("the pod Running", WAIT, |c| {
            c.object(&path).filter(|p| p["status"]["phase"] == "Running").map(|_| ())
        });
        let dropped = Instant::now();
        replace_file(&config, "devices: []\n");
        c.wait_for("pending in the report", WAIT, |_| {
            let text = std::fs::read_to_string(&report).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v["pending"].as_array()?.iter().any(|p| p["address"] == GPU_B).then_some(())
        });
        pending_after.push(dropped.elapsed());
        let deleted = Instant::now();
        c.kubectl_ok(&["delete", "pod", &pod, "--wait=false"]);
        loop {
            if driver_of(&root, GPU_B).as_deref() == Some("nouveau")
                && driver_of(&root, GPU_B_AUDIO).as_deref() == Some("snd_hda_intel")
            {
                break;
            }
            assert!(deleted.elapsed() < WAIT, "round {i}: never given back");
            std::thread::sleep(Duration::from_millis(2));
        }
        took.push(deleted.elapsed());
        c.wait_for("the pod gone", WAIT, |c| c.object(&path).is_none().then_some(()));
        replace_file(&config, &selects());
    }
    assert!(agent.running());
    took.sort();
    pending_after.sort();
    println!(
        "drain on the real cluster ({rounds} rounds): config dropped -> pending reported p50 {:.0} ms p99 {:.0} ms; \
         pod deleted -> whole IOMMU group back on its drivers p50 {:.0} ms p99 {:.0} ms",
        pct(&pending_after, 0.5),
        pct(&pending_after, 0.99),
        pct(&took, 0.5),
        pct(&took, 0.99)
    );
}

/// Both measurements.
pub fn run() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    rounds_on_a_fixture(env("NODEPREP_RELEASE_ROUNDS", 200));
    drains_on_the_real_cluster(env("NODEPREP_DRAIN_ROUNDS", 20));
}
