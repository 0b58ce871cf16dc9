//! Giving devices back and node maintenance with the upstream components (built from source,
//! `support::k8s`): a pod the real scheduler placed holds the Quadro through nodeprep's device
//! plugin; its resource is renamed while the pod holds it (unhealthy under the new name until the
//! pod goes, then a new pod gets it); the node is cordoned and put under a NodeMaintenance (its CRD installed in the real
//! API server); the config stops selecting the Quadro while the pod holds it, so the device is
//! pending (an Event naming the pod, the metric, `nodeprep status`); the pod is deleted and the
//! whole IOMMU group goes back to its drivers at once; the node is uncordoned.
//!
//! The agent runs in this process (`support::inprocess`) so that its sysfs writes go to the
//! simulated kernel over the fixture host; everything else is the agent as it ships, with the
//! DaemonSet's RBAC (the agent's pod list and watch are authorized by the real API server).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::agent::replace_file;
use support::inprocess::InProcessAgent;
use support::k8s::{Cluster, NODE, Spec, device_pod};
use support::machines::intel::{GPU_B, GPU_B_AUDIO};
use support::tree::driver_of;

const RESOURCE: &str = "nvidia.com/quadro";
const RENAMED: &str = "nvidia.com/quadro_vm";
const WAIT: Duration = Duration::from_secs(60);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// nodeprep's Events on the Node, as `reason: message`.
fn node_events(c: &Cluster) -> Vec<String> {
    let out = c.kubectl_ok(&["get", "events", "-n", "default", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("events JSON");
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["involvedObject"]["kind"] == "Node" && e["source"]["component"] == "nodeprep")
        .map(|e| format!("{}: {}", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect()
}

fn event_with(c: &Cluster, reason: &str, needle: &str) -> Option<String> {
    node_events(c).into_iter().find(|e| e.starts_with(&format!("{reason}:")) && e.contains(needle))
}

fn metric(agent: &InProcessAgent, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(agent.listen).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
}

fn status(root: &Path) -> Value {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .args(["--host-root", &root.display().to_string(), "status", "-o", "json"])
        .output()
        .expect("run nodeprep status");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

/// The Node Maintenance Operator's CRD, as far as the API server needs it to store objects.
fn node_maintenance_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "nodemaintenances.nodemaintenance.medik8s.io"},
        "spec": {"group": "nodemaintenance.medik8s.io", "scope": "Cluster",
            "names": {"kind": "NodeMaintenance", "plural": "nodemaintenances", "singular": "nodemaintenance"},
            "versions": [{"name": "v1beta1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[test]
fn a_device_dropped_while_a_pod_holds_it_waits_for_the_drain_then_goes_back_at_once() {
    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    c.kubectl_ok(&["apply", "-k", &repo("daemonset").display().to_string()]);
    c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
    c.create(&node_maintenance_crd());
    c.wait_for("the NodeMaintenance CRD served", WAIT, |c| {
        c.kubectl(&["get", "nodemaintenances"]).status.success().then_some(())
    });
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let tree = support::intel_gpu_server();
    let root = tree.root().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.yaml");
    let selects = format!("devices:\n  - resourceName: {RESOURCE}\n    selectors: {{pciAddresses: [\"{GPU_B}\"]}}\n");
    std::fs::write(&config_path, &selects).expect("config");
    let agent = InProcessAgent::start(&root, &config_path, &kubeconfig, &c);

    c.wait_for("the Quadro allocatable", WAIT, |c| (c.node_quantity("allocatable", RESOURCE) == Some(1)).then_some(()));
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"));
    assert_eq!(driver_of(&root, GPU_B_AUDIO).as_deref(), Some("vfio-pci"));
    c.create(&device_pod(RESOURCE, "vm-gpu", None));
    c.wait_for("vm-gpu Running", WAIT, |c| {
        c.object("/api/v1/namespaces/default/pods/vm-gpu").filter(|p| p["status"]["phase"] == "Running").map(|_| ())
    });

    // The resource is renamed while the pod holds the device: offered under the new name, but
    // unhealthy (not allocatable) until the pod lets go; then allocatable, and a pod gets it.
    let renamed = selects.replace(RESOURCE, RENAMED);
    replace_file(&config_path, &renamed);
    let waiting = c.wait_for("DeviceRenamePending", WAIT, |c| event_with(c, "DeviceRenamePending", GPU_B));
    assert!(waiting.contains(&format!("allocated as {RESOURCE} to pod default/vm-gpu")), "{waiting}");
    c.wait_for("the new name counted, not allocatable", WAIT, |c| {
        (c.node_quantity("capacity", RENAMED) == Some(1) && c.node_quantity("allocatable", RENAMED) == Some(0))
            .then_some(())
    });
    assert_eq!(status(&root)["renames"][0]["to"], RENAMED);
    c.kubectl_ok(&["delete", "pod", "vm-gpu", "--wait=false"]);
    c.wait_for("the new name allocatable", WAIT, |c| {
        (c.node_quantity("allocatable", RENAMED) == Some(1)).then_some(())
    });
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"), "a rename never unbinds");
    c.wait_for("vm-gpu gone", WAIT, |c| c.object("/api/v1/namespaces/default/pods/vm-gpu").is_none().then_some(()));
    c.create(&device_pod(RENAMED, "vm-gpu", None));
    c.wait_for("vm-gpu Running as the new name", WAIT, |c| {
        c.object("/api/v1/namespaces/default/pods/vm-gpu").filter(|p| p["status"]["phase"] == "Running").map(|_| ())
    });

    // Maintenance: cordoned, then a NodeMaintenance. The agent says who still holds what.
    c.kubectl_ok(&["cordon", NODE]);
    let held = c.wait_for("MaintenanceDevicesHeld", WAIT, |c| event_with(c, "MaintenanceDevicesHeld", "vm-gpu"));
    assert!(held.contains("(cordoned)") && held.contains(GPU_B) && held.contains("pod default/vm-gpu"), "{held}");
    c.create(&json!({"apiVersion": "nodemaintenance.medik8s.io/v1beta1", "kind": "NodeMaintenance",
        "metadata": {"name": "nm-firmware"}, "spec": {"nodeName": NODE, "reason": "firmware"}}));
    c.wait_for("the NodeMaintenance in the report", WAIT, |_| {
        (status(&root)["maintenance"]["nodeMaintenance"] == "nm-firmware").then_some(())
    });
    assert_eq!(metric(&agent, "nodeprep_node_maintenance"), Some(1.0));

    // The config stops selecting the Quadro while the pod holds it: pending, said three ways.
    replace_file(&config_path, "devices: []\n");
    let pending = c.wait_for("DeviceReleasePending", WAIT, |c| event_with(c, "DeviceReleasePending", GPU_B));
    assert!(pending.contains("pod default/vm-gpu") && pending.contains("the config no longer selects it"), "{pending}");
    c.wait_for("the pending metric", WAIT, |_| {
        (metric(&agent, "nodeprep_devices_pending_release") == Some(2.0)).then_some(())
    });
    let report = status(&root);
    let pending_list: Vec<String> = report["pending"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["address"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pending_list, [GPU_B, GPU_B_AUDIO], "{report:#}");
    assert_eq!(report["pending"][0]["holder"]["name"], "default/vm-gpu", "{report:#}");
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"), "a held device stays");
    assert_eq!(driver_of(&root, GPU_B_AUDIO).as_deref(), Some("vfio-pci"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"), "still held after a while");

    // The drain: the pod goes, and the group goes back at once (not at the hourly resync).
    let deleted = Instant::now();
    c.kubectl_ok(&["delete", "pod", "vm-gpu", "--wait=false"]);
    c.wait_for("the Quadro back on nouveau", WAIT, |_| {
        (driver_of(&root, GPU_B).as_deref() == Some("nouveau")
            && driver_of(&root, GPU_B_AUDIO).as_deref() == Some("snd_hda_intel"))
        .then_some(())
    });
    let took = deleted.elapsed();
    println!("pod deleted -> whole group given back: {took:?}");
    assert!(took < Duration::from_secs(30), "given back on the pod's departure, not at a resync: {took:?}");
    let restored = c.wait_for("DeviceRestored", WAIT, |c| event_with(c, "DeviceRestored", GPU_B));
    assert!(restored.contains("given back to nouveau"), "{restored}");
    c.wait_for("the report without pending devices", WAIT, |_| {
        let r = status(&root);
        (r["pending"].as_array().is_some_and(Vec::is_empty) && r["devices"].as_array().is_some_and(Vec::is_empty))
            .then_some(())
    });
    assert_eq!(metric(&agent, "nodeprep_devices_pending_release"), Some(0.0));
    c.wait_for("MaintenanceDevicesFree", WAIT, |c| event_with(c, "MaintenanceDevicesFree", "nm-firmware"));

    // Out of maintenance.
    c.kubectl_ok(&["delete", "nodemaintenance", "nm-firmware"]);
    c.kubectl_ok(&["uncordon", NODE]);
    c.wait_for("out of maintenance", WAIT, |_| {
        let m = status(&root)["maintenance"].clone();
        (m["cordoned"] == false && m.get("nodeMaintenance").is_none()).then_some(())
    });
    assert_eq!(metric(&agent, "nodeprep_node_maintenance"), Some(0.0));

    // Selected again: bound again, although the kubelet's checkpoint still lists the deleted
    // pods (it tidies them only at its next allocation): the API server says they are gone.
    replace_file(&config_path, &selects);
    c.wait_for("the Quadro allocatable again", WAIT, |c| {
        (c.node_quantity("allocatable", RESOURCE) == Some(1)).then_some(())
    });
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"));
    assert!(agent.running());
}
