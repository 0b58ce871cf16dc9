//! `nodeprep run` end to end, as the DaemonSet runs it: the real binary on a fixture host, a
//! kubelet stand-in in its plugin directory and an API-server stand-in behind `KUBECONFIG`.
//! Labels applied once and only once, readiness, config hot reload (good: labels and huge pages
//! follow, with Events; bad: refused with an Event, the last good config kept), and the same
//! loop without a cluster.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use nodeprep::host::kubelet::PLUGIN_DIR;
use support::agent::{Agent, AgentSpec, expected_labels, replace_file, spawn_kubelet};
use support::apiserver::ApiServer;
use support::intel_gpu_server;
use support::kubelet::Kubelet;

const NODE: &str = "worker-0";
const WAIT: Duration = Duration::from_secs(10);
const CONFIG: &str = "pciHostDevices:\n  - pciDeviceSelector: \"10DE:1EB8\"\n    resourceName: nvidia.com/TU104GL_Tesla_T4\n    bind: none\n";

fn nodeprep_labels(api: &ApiServer) -> BTreeMap<String, String> {
    let owned = api.applied_by("nodeprep");
    api.labels().into_iter().filter(|(k, _)| owned.contains(k)).collect()
}

#[test]
fn the_agent_labels_its_node_once_reloads_its_config_and_posts_events() {
    let tree = intel_gpu_server();
    let kubelet = spawn_kubelet(tree.path(PLUGIN_DIR));
    let api = ApiServer::start(NODE, &[("kubernetes.io/hostname", NODE)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let mut agent = Agent::start(AgentSpec {
        host_root: tree.root(),
        config: &config,
        plugin_dir: kubelet.dir(),
        kubeconfig: Some(&kubeconfig),
        node_name: NODE,
        log: dir.path().join("agent.log"),
        extra: &[],
    });

    // Ready means plugins registered and labels applied.
    assert!(agent.wait_ready(WAIT), "never ready: {:?}\n{}", agent.get("/readyz"), agent.logs());
    let want = expected_labels(tree.root(), true, true);
    assert!(want.contains_key(nodeprep::labels::READY) && want.contains_key(nodeprep::labels::KATA), "{want:?}");
    let carries = |s: &support::apiserver::State| want.iter().all(|(k, v)| s.node.labels.get(k) == Some(v));
    assert!(api.wait_until(WAIT, carries), "{:?}\n{}", api.labels(), agent.logs());
    assert_eq!(nodeprep_labels(&api), want, "{}", agent.logs());
    let (_, body) = agent.get("/readyz").expect("readyz");
    assert!(body.contains("node labels applied"), "{body}");
    assert_eq!(api.labels().get("kubernetes.io/hostname").map(String::as_str), Some(NODE), "others' labels kept");

    // Start-up wrote the labels at most twice (all facts, then `ready` once the plugins
    // registered) and nothing else; then it is quiet.
    std::thread::sleep(Duration::from_millis(1500));
    let writes = api.writes();
    assert!(!writes.is_empty() && writes.len() <= 2, "{writes:#?}");
    assert!(
        writes
            .iter()
            .all(|w| w.method == "PATCH" && w.query.get("fieldManager").map(String::as_str) == Some("nodeprep"))
    );
    let metrics = agent.get("/metrics").expect("metrics").1;
    assert!(metrics.contains(&format!("nodeprep_api_writes_total {}", writes.len())), "{metrics}");
    assert!(metrics.contains("nodeprep_labels_applied 1"), "{metrics}");

    // Good reload: the Kata key left to NFD, and 2Mi pages reserved at run time.
    let reload = format!("{CONFIG}nodeLabels:\n  kata: false\nhugepages:\n  - size: 2Mi\n    pages: 64\n");
    replace_file(&config, &reload);
    assert!(
        api.wait_until(WAIT, |s| !s.node.labels.contains_key(nodeprep::labels::KATA)
            && s.node.labels.contains_key(nodeprep::labels::HUGEPAGES_2MI)),
        "labels after reload: {:?}\n{}",
        api.labels(),
        agent.logs()
    );
    let pool =
        std::fs::read_to_string(tree.path("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")).expect("pool");
    assert_eq!(pool.trim(), "64");
    assert!(
        api.wait_until(WAIT, |s| s.events.iter().any(|e| e["reason"] == "HugepagesReserved")),
        "{:?}",
        api.events()
    );
    assert_eq!(nodeprep_labels(&api), expected_labels(tree.root(), true, false));

    // Bad reload: refused with a Warning Event; the labels and the pool stay.
    let writes_before = api.writes().iter().filter(|w| w.method == "PATCH").count();
    replace_file(&config, "hugepages:\n  - size: 3Mi\n    pages: 1\n");
    assert!(
        api.wait_until(WAIT, |s| s.events.iter().any(|e| e["reason"] == "ConfigRefused")),
        "events: {:?}\n{}",
        api.events(),
        agent.logs()
    );
    std::thread::sleep(Duration::from_millis(300));
    let refused = api.events().into_iter().find(|e| e["reason"] == "ConfigRefused").expect("event");
    assert_eq!(refused["type"], "Warning");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("3Mi")), "{refused}");
    assert_eq!(api.writes().iter().filter(|w| w.method == "PATCH").count(), writes_before);
    assert_eq!(nodeprep_labels(&api), expected_labels(tree.root(), true, false));

    // A refused config is reported once, not again for every unrelated change in its directory.
    std::fs::write(dir.path().join("unrelated"), "x").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(api.events().iter().filter(|e| e["reason"] == "ConfigRefused").count(), 1);
    assert_eq!(agent.logs().matches("new config refused").count(), 1, "{}", agent.logs());

    // Someone removes a label: it is back within milliseconds.
    api.label_as("kubectl-label", nodeprep::labels::IOMMU, None);
    assert!(
        api.wait_until(WAIT, |s| s.node.labels.contains_key(nodeprep::labels::IOMMU)),
        "{:#?}\n{}",
        api.requests().iter().map(|r| format!("{} {} {:?}", r.method, r.path, r.query)).collect::<Vec<_>>(),
        agent.logs()
    );

    // Stopped: the devices are withdrawn, so `ready` goes; the facts about the host stay.
    let before_stop = nodeprep_labels(&api);
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
    let mut after = before_stop.clone();
    after.remove(nodeprep::labels::READY);
    assert!(before_stop.contains_key(nodeprep::labels::READY));
    assert_eq!(nodeprep_labels(&api), after);
}

/// `nodeprep run` without a cluster on the Intel fixture, with a kubelet stand-in; the
/// returned values must live as long as the agent.
fn start_without_cluster(extra: &'static [&'static str]) -> (support::HostTree, Kubelet, tempfile::TempDir, Agent) {
    let tree = intel_gpu_server();
    let kubelet = spawn_kubelet(tree.path(PLUGIN_DIR));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).expect("config");
    let agent = Agent::start(AgentSpec {
        host_root: tree.root(),
        config: &config,
        plugin_dir: kubelet.dir(),
        kubeconfig: None,
        node_name: NODE,
        log: dir.path().join("agent.log"),
        extra,
    });
    (tree, kubelet, dir, agent)
}

#[test]
fn without_a_cluster_the_same_loop_logs_the_labels() {
    let api = ApiServer::start(NODE, &[]);
    let (tree, _kubelet, dir, mut agent) = start_without_cluster(&[]);
    assert!(agent.wait_ready(WAIT), "{:?}\n{}", agent.get("/readyz"), agent.logs());
    let logs = agent.logs();
    let want = expected_labels(tree.root(), true, true);
    let shown: Vec<String> = want.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert!(
        api.wait_until(Duration::from_secs(3), |_| {
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default().contains(&shown.join(","))
        }),
        "{logs}"
    );
    assert!(logs.contains("not applied: no Kubernetes API connection"), "{logs}");
    let (_, body) = agent.get("/readyz").expect("readyz");
    assert!(!body.contains("labels"), "no labels to wait for: {body}");
    assert!(api.requests().is_empty());
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (_tree, _kubelet, _dir, mut agent) = start_without_cluster(&["--log-format", "json"]);
    assert!(agent.wait_ready(WAIT), "{}", agent.logs());
    assert_eq!(agent.terminate(), Some(0));
    let logs = agent.logs();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{l}");
    }
    assert!(logs.contains("\"message\":\"device plugins serving\""), "{logs}");
}

#[test]
fn a_huge_resync_interval_does_not_panic() {
    // u64::MAX seconds: `Instant + interval` would overflow; the timers saturate instead.
    let (_tree, _kubelet, _dir, mut agent) = start_without_cluster(&["--resync", "18446744073709551615"]);
    assert!(agent.wait_ready(WAIT), "{:?}\n{}", agent.get("/readyz"), agent.logs());
    let (code, _) = agent.get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{}", agent.logs());
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
    assert!(!agent.logs().contains("panicked"), "{}", agent.logs());
}
