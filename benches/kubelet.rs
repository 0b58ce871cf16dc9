//! The Allocate latency the real kubelet sees: the upstream kubelet (built from source,
//! `tests/support/k8s.rs`) admits pods that each ask for one device nodeprep advertises, and
//! times its own Allocate call to nodeprep's plugin in the histogram
//! `kubelet_device_plugin_alloc_duration_seconds`. The histogram's buckets are too coarse for
//! percentiles (5 ms first), but its `_sum` is exact: one pod admitted at a time, each one's
//! Allocate is the `_sum`'s increase. Read through the API server's node proxy.
//!
//! Prints p50, p99 and max over `NODEPREP_ALLOC_SAMPLES` pods (100 by default). Then giving
//! devices back ([`giveback`]): a release round, and a drain with the real kubelet.
//!
//! `cargo bench --bench kubelet`.

#[path = "../tests/support/mod.rs"]
mod support;

mod giveback;

use std::time::{Duration, Instant};

use nodeprep::host::HostRoot;
use support::agent::{Agent, AgentSpec};
use support::k8s::{Cluster, NODE, Spec, device_pod};

const RESOURCE: &str = "intel.com/e810_vf";
const METRIC: &str = "kubelet_device_plugin_alloc_duration_seconds";
const WAIT: Duration = Duration::from_secs(60);

/// (`_sum`, `_count`) of the kubelet's Allocate histogram for `RESOURCE`.
fn allocate_histogram(c: &Cluster) -> (f64, u64) {
    let text = c.kubectl_ok(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/metrics")]);
    let value = |suffix: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{METRIC}{suffix}{{")) && l.contains(&format!("resource_name=\"{RESOURCE}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    (value("_sum").unwrap_or(0.0), value("_count").unwrap_or(0.0) as u64)
}

fn main() {
    allocate_latency();
    giveback::run();
}

fn allocate_latency() {
    let samples: usize = std::env::var("NODEPREP_ALLOC_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    let tree = support::big_sriov(1, 8);
    let inv = nodeprep::host::pci::discover(&HostRoot::new(tree.root())).expect("discover");
    let addrs: Vec<String> = inv
        .devices
        .iter()
        .filter(|d| d.driver.as_deref() == Some("vfio-pci"))
        .map(|d| format!("\"{}\"", d.address))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "devices:\n  - resourceName: {RESOURCE}\n    bind: none\n    selectors: {{pciAddresses: [{}]}}\n",
            addrs.join(", ")
        ),
    )
    .expect("config");
    // `cargo bench` builds the binary with the bench profile (optimised, no LTO).
    let agent = Agent::start(AgentSpec {
        host_root: tree.root(),
        config: &config,
        plugin_dir: &c.plugin_dir(),
        kubeconfig: None,
        node_name: NODE,
        log: dir.path().join("agent.log"),
        extra: &[],
    });
    assert!(agent.wait_ready(WAIT), "{}", agent.logs());
    c.wait_for("4 devices allocatable", WAIT, |c| (c.node_quantity("allocatable", RESOURCE) == Some(4)).then_some(()));

    // At most three pods alive, so a device is always free even before the kubelet has seen the
    // last deletion; one pod admitted at a time, so each Allocate is measured alone.
    let mut latencies = Vec::with_capacity(samples);
    let mut alive: std::collections::VecDeque<String> = Default::default();
    let (mut sum, mut count) = allocate_histogram(&c);
    let started = Instant::now();
    for i in 0..samples {
        if alive.len() == 3 {
            let old = alive.pop_front().expect("a pod");
            c.kubectl_ok(&["delete", "pod", &old, "--grace-period=0", "--force", "--wait=false"]);
        }
        let name = format!("alloc-{i}");
        c.create(&device_pod(RESOURCE, &name, Some(NODE)));
        let (s, n) = c.wait_for(&format!("the kubelet's Allocate for {name}"), WAIT, |c| {
            let (s, n) = allocate_histogram(c);
            (n > count).then_some((s, n))
        });
        assert_eq!(n, count + 1, "one Allocate per pod");
        latencies.push(Duration::from_secs_f64(s - sum));
        (sum, count) = (s, n);
        alive.push_back(name);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1];
    println!(
        "Allocate as the real kubelet times it ({samples} pods, one at a time, {:.0} s): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        started.elapsed().as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
}
