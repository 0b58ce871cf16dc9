//! The node agent end to end, as the DaemonSet runs it: the optimised `nodeprep run` binary
//! (bench profile: no LTO, so more resident memory than the release build) on the
//! 4,096-function SR-IOV fixture (`sriov_4096`), with a kubelet stand-in in its plugin directory
//! and an API-server stand-in behind `KUBECONFIG` (both in this process, on threads of their
//! own, the way the kubelet and the API server are other processes).
//!
//! Prints, per run and as medians:
//! 1. process start until every plugin is registered with the kubelet stand-in, and until the
//!    Node carries the complete label set (`nodeprep.io/ready` included) (goal: under 1 s);
//! 2. resident memory at steady state, 2 s after ready (goal: under 20 MiB);
//! 3. over 60 idle seconds (`NODEPREP_IDLE_SECS` to change it): CPU time used (goal: under
//!    0.05 s), API requests and API writes sent (goal: no writes).
//!
//! `cargo bench --bench agent`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nodeprep::host::HostRoot;
use nodeprep::host::kubelet::PLUGIN_DIR;
use support::agent::{Agent, AgentSpec, spawn_kubelet};
use support::apiserver::ApiServer;

const NODE: &str = "worker-0";
const RUNS: usize = 5;

const RESOURCE: &str = "intel.com/e810_vf";
const CONFIG: &str = "devices:\n  - resourceName: intel.com/e810_vf\n    bind: none\n    selectors:\n      vendors: [\"8086\"]\n      devices: [\"1889\"]\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let tree = support::sriov_4096();
    let root = HostRoot::new(tree.root());
    let facts = nodeprep::host::system::read_system(&root).expect("facts");
    let inv = nodeprep::host::pci::discover(&root).expect("inventory");
    let report = nodeprep::eligibility::evaluate(&facts, &inv);
    let want = nodeprep::labels::desired(nodeprep::labels::LabelInputs {
        report: &report,
        facts: &facts,
        ready: true,
        manage_kata: true,
    });
    println!("fixture: {} PCI functions; labels wanted: {}", inv.devices.len(), want.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let kubelet = spawn_kubelet(tree.path(PLUGIN_DIR));
    let ticks_per_s = 100.0; // USER_HZ on Linux

    let (mut to_registered, mut to_labels, mut rss) = (vec![], vec![], vec![]);
    let mut last: Option<(Agent, ApiServer)> = None;
    for run in 0..RUNS {
        // A fresh API server each run: the Node starts without nodeprep's labels.
        let api = ApiServer::start(NODE, &[("kubernetes.io/hostname", NODE)]);
        let kubeconfig = api.write_kubeconfig(dir.path());
        // One agent at a time: the previous one goes before the next starts.
        if let Some((mut a, _)) = last.take() {
            assert_eq!(a.terminate(), Some(0), "{}", a.logs());
        }
        let regs_before = kubelet.with_record(|r| r.registrations_of(RESOURCE).len());
        let agent = Agent::start(AgentSpec {
            host_root: tree.root(),
            config: &config,
            plugin_dir: kubelet.dir(),
            kubeconfig: Some(&kubeconfig),
            node_name: NODE,
            log: dir.path().join(format!("agent-{run}.log")),
            extra: &[],
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let registered = loop {
            if let Some(at) = kubelet.with_record(|r| r.registrations_of(RESOURCE).get(regs_before).map(|g| g.at)) {
                break at;
            }
            assert!(Instant::now() < deadline, "never registered:\n{}", agent.logs());
            std::thread::sleep(Duration::from_millis(1));
        };
        let labelled =
            api.wait_until(Duration::from_secs(30), |s| want.iter().all(|(k, v)| s.node.labels.get(k) == Some(v)));
        assert!(labelled, "labels never applied: {:?}\n{}", api.labels(), agent.logs());
        let applied_at = api.requests().iter().rev().find(|r| r.method == "PATCH").map(|r| r.at).expect("a PATCH");
        let (reg, lab) = (registered.duration_since(agent.started), applied_at.duration_since(agent.started));
        std::thread::sleep(Duration::from_secs(2));
        let (_, rss_kib) = agent.cpu_ticks_and_rss_kib();
        println!(
            "run {run}: start -> plugin registered {:>7.1} ms, -> labels applied {:>7.1} ms, RSS {:.1} MiB",
            ms(reg),
            ms(lab),
            rss_kib as f64 / 1024.0
        );
        to_registered.push(ms(reg));
        to_labels.push(ms(lab));
        rss.push(rss_kib as f64 / 1024.0);
        last = Some((agent, api));
    }
    println!(
        "median of {RUNS}: start -> plugins registered {:.1} ms, -> plugins registered and labels applied {:.1} ms (goal < 1000 ms)",
        median(to_registered),
        median(to_labels)
    );
    println!("median resident memory at steady state: {:.1} MiB (goal < 20 MiB)", median(rss));
    if let Some((a, _)) = &last {
        let (anon, file) = a.rss_breakdown_kib();
        println!(
            "  of which anonymous (heap, stacks) {:.1} MiB, file-backed (the binary's pages) {:.1} MiB",
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        );
    }

    // The same agent on a small host (intel_gpu_server, a few dozen functions): what the
    // process costs before any inventory.
    {
        let small = support::intel_gpu_server();
        let kubelet = spawn_kubelet(small.path(PLUGIN_DIR));
        let api = ApiServer::start(NODE, &[]);
        let kubeconfig = api.write_kubeconfig(dir.path());
        let small_config = dir.path().join("small.yaml");
        std::fs::write(&small_config, "").expect("config");
        let mut agent = Agent::start(AgentSpec {
            host_root: small.root(),
            config: &small_config,
            plugin_dir: kubelet.dir(),
            kubeconfig: Some(&kubeconfig),
            node_name: NODE,
            log: dir.path().join("agent-small.log"),
            extra: &[],
        });
        assert!(agent.wait_ready(Duration::from_secs(30)), "{}", agent.logs());
        std::thread::sleep(Duration::from_secs(2));
        let (anon, file) = agent.rss_breakdown_kib();
        println!(
            "for comparison, on a {}-function host: RSS {:.1} MiB ({:.1} anonymous, {:.1} file-backed)",
            nodeprep::host::pci::discover(&HostRoot::new(small.root())).map(|i| i.devices.len()).unwrap_or(0),
            (anon + file) as f64 / 1024.0,
            anon as f64 / 1024.0,
            file as f64 / 1024.0
        );
        let _ = agent.terminate();
    }

    let idle: u64 = std::env::var("NODEPREP_IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let (mut agent, api) = last.expect("a run");
    let (ticks0, _) = agent.cpu_ticks_and_rss_kib();
    let (reqs0, writes0) = (api.requests().len(), api.writes().len());
    std::thread::sleep(Duration::from_secs(idle));
    let (ticks1, rss_kib) = agent.cpu_ticks_and_rss_kib();
    let (reqs1, writes1) = (api.requests().len(), api.writes().len());
    println!(
        "idle {idle} s: CPU {:.2} s (goal < 0.05 s), API requests {}, API writes {} (goal 0), RSS after {:.1} MiB",
        (ticks1 - ticks0) as f64 / ticks_per_s,
        reqs1 - reqs0,
        writes1 - writes0,
        rss_kib as f64 / 1024.0
    );
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
}
