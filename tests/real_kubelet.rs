//! nodeprep's device plugins with the upstream kubelet (built from source, `support::k8s`), its
//! Node in the real API server, the real scheduler and controller manager, and upstream's CRI
//! fake as the runtime: registration, Capacity/Allocatable as `kubectl` shows them, devices
//! unbound behind nodeprep's back, twenty kubelet crashes in a row, SIGTERM, and pods that ask
//! for devices (admitted, the runtime handed the device nodes and variables; rejected when none
//! is left).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nodeprep::host::HostRoot;
use serde_json::Value;
use support::agent::{Agent, AgentSpec};
use support::k8s::{Cluster, NODE, Spec, container_env, device_pod};
use support::{HostTree, big_sriov};

const RESOURCE: &str = "intel.com/e810_vf";
const WAIT: Duration = Duration::from_secs(60);

/// The E810 VFs the fixture has on vfio-pci: (address, IOMMU group).
fn vfio_vfs(tree: &HostTree) -> Vec<(String, String)> {
    let inv = nodeprep::host::pci::discover(&HostRoot::new(tree.root())).expect("discover");
    inv.devices
        .iter()
        .filter(|d| d.driver.as_deref() == Some("vfio-pci"))
        .map(|d| (d.address.to_string(), d.iommu_group.map(|g| g.to_string()).unwrap_or_default()))
        .collect()
}

/// One E810 PF with eight VFs, four of them on vfio-pci, offered as `RESOURCE`.
fn host() -> (HostTree, Vec<(String, String)>, String) {
    let tree = big_sriov(1, 8);
    let vfs = vfio_vfs(&tree);
    assert_eq!(vfs.len(), 4, "{vfs:?}");
    let addrs: Vec<String> = vfs.iter().map(|(a, _)| format!("\"{a}\"")).collect();
    let config = format!(
        "devices:\n  - resourceName: {RESOURCE}\n    bind: none\n    selectors: {{pciAddresses: [{}]}}\n",
        addrs.join(", ")
    );
    (tree, vfs, config)
}

fn start_agent(c: &Cluster, tree: &HostTree, dir: &Path, config_text: &str, log: &str) -> Agent {
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_text).expect("config");
    Agent::start(AgentSpec {
        host_root: tree.root(),
        config: &config,
        plugin_dir: &c.plugin_dir(),
        kubeconfig: None,
        node_name: NODE,
        log: dir.join(log),
        extra: &["--resync", "3600"],
    })
}

fn quantities(c: &Cluster) -> (Option<i64>, Option<i64>) {
    (c.node_quantity("capacity", RESOURCE), c.node_quantity("allocatable", RESOURCE))
}

fn wait_allocatable(c: &Cluster, capacity: i64, allocatable: i64, agent: &Agent) {
    let start = Instant::now();
    loop {
        let q = quantities(c);
        if q == (Some(capacity), Some(allocatable)) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "capacity/allocatable of {RESOURCE} stayed {q:?}, want ({capacity}, {allocatable})\nagent:\n{}\nkubelet:\n{}",
            agent.logs(),
            tail(&c.log("kubelet"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `kubectl describe node`'s `Capacity:` or `Allocatable:` block.
fn describe_block(text: &str, heading: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `kubectl describe` block's value for `resource` (`  intel.com/e810_vf:  4`).
fn described(block: &str, resource: &str) -> Option<String> {
    block.lines().find_map(|l| l.trim().strip_prefix(&format!("{resource}:")).map(|v| v.trim().to_owned()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn the_real_kubelet_registers_the_plugin_counts_devices_and_survives_twenty_crashes() {
    let mut c = Cluster::start(Spec { kubelet: true, controllers: false });
    let (tree, vfs, config) = host();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = start_agent(&c, &tree, dir.path(), &config, "agent.log");
    assert!(agent.wait_ready(WAIT), "never ready: {:?}\n{}", agent.get("/readyz"), agent.logs());

    // Registered with the real kubelet: Capacity and Allocatable, in JSON and as describe shows.
    wait_allocatable(&c, 4, 4, &agent);
    let describe = c.kubectl_ok(&["describe", "node", NODE]);
    for heading in ["Capacity:", "Allocatable:"] {
        let block = describe_block(&describe, heading);
        assert_eq!(described(&block, RESOURCE).as_deref(), Some("4"), "{heading}\n{block}");
    }

    // One device unbound behind nodeprep's back (its driver link and vfio node gone): the
    // kubelet hears it is unhealthy and Allocatable drops; Capacity keeps counting it.
    let (addr, group) = vfs[0].clone();
    let vfio_node = tree.path(format!("dev/vfio/{group}"));
    let driver_link = tree.path(tree.pci_dir(&addr)).join("driver");
    let link_target = std::fs::read_link(&driver_link).expect("driver link");
    std::fs::remove_file(&driver_link).expect("unbind");
    std::fs::remove_file(&vfio_node).expect("remove vfio node");
    wait_allocatable(&c, 4, 3, &agent);
    // Bound again: back to 4 (the kernel would send a uevent; a real one is not sent for a
    // fixture, so the vfio node's reappearance is what the agent sees).
    std::os::unix::fs::symlink(&link_target, &driver_link).expect("rebind");
    std::fs::write(&vfio_node, "").expect("vfio node");
    wait_allocatable(&c, 4, 4, &agent);
    // Another device removed outright (hot-unplugged): gone from Capacity as well.
    let (gone, gone_group) = vfs[3].clone();
    let gone_dir = tree.path(tree.pci_dir(&gone));
    std::fs::remove_dir_all(&gone_dir).expect("remove the device");
    std::fs::remove_file(tree.path(format!("sys/bus/pci/devices/{gone}"))).expect("remove its bus link");
    std::fs::remove_file(tree.path(format!("dev/vfio/{gone_group}"))).expect("remove its vfio node");
    wait_allocatable(&c, 3, 3, &agent);

    // Twenty kubelet crashes (SIGKILL) and restarts: the kubelet wipes its plugin directory
    // when it starts, so the agent must see the new kubelet.sock and register again. Measured
    // from the new kubelet's start to the Node showing all four devices allocatable again.
    // While the kubelet is down, the Node's Allocatable is zeroed by hand, so only the new
    // kubelet, once the agent has registered with it, can put the three devices back.
    let registrations = |agent: &Agent| agent.logs().matches("registered with the kubelet").count();
    let mut times = Vec::new();
    for round in 0..20 {
        let before = registrations(&agent);
        c.kill_kubelet();
        c.kubectl_ok(&[
            "patch",
            "node",
            NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{{"allocatable":{{"{RESOURCE}":"0"}}}}}}"#),
        ]);
        assert_eq!(c.node_quantity("allocatable", RESOURCE), Some(0));
        let started = c.start_kubelet();
        let back = loop {
            if quantities(&c) == (Some(3), Some(3)) {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < WAIT,
                "round {round}: capacity not back: {:?}, registrations {} -> {}\nagent:\n{}\nkubelet:\n{}",
                quantities(&c),
                before,
                registrations(&agent),
                tail(&agent.logs()),
                tail(&c.log("kubelet"))
            );
            assert!(c.kubelet_alive(), "round {round}: the kubelet exited:\n{}", tail(&c.log("kubelet")));
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(registrations(&agent) > before, "round {round}: the agent did not register again");
        times.push(back);
    }
    times.sort();
    eprintln!(
        "kubelet restarts: 20 of 20 brought {RESOURCE} back; kubelet start to Allocatable 3: median {:.2} s, p99 {:.2} s, max {:.2} s",
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.99).as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );

    // SIGTERM: the agent withdraws its devices and the kubelet's Allocatable falls to 0.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.logs());
    c.wait_for("Allocatable 0 after SIGTERM", WAIT, |c| {
        (c.node_quantity("allocatable", RESOURCE) == Some(0)).then_some(())
    });
}

fn pod_status(c: &Cluster, name: &str) -> Value {
    c.object(&format!("/api/v1/namespaces/default/pods/{name}")).map(|p| p["status"].clone()).unwrap_or_default()
}

#[test]
fn pods_get_devices_through_the_real_scheduler_and_kubelet_until_none_is_left() {
    let c = Cluster::start(Spec { kubelet: true, controllers: true });
    let (tree, vfs, config) = host();
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start_agent(&c, &tree, dir.path(), &config, "agent.log");
    assert!(agent.wait_ready(WAIT), "never ready: {:?}\n{}", agent.get("/readyz"), agent.logs());
    wait_allocatable(&c, 4, 4, &agent);

    // Four pods, placed by the real scheduler, each admitted by the kubelet with one device.
    for i in 0..4 {
        c.create(&device_pod(RESOURCE, &format!("vm-{i}"), None));
    }
    for i in 0..4 {
        let name = format!("vm-{i}");
        c.wait_for(&format!("{name} Running"), WAIT, |c| (pod_status(c, &name)["phase"] == "Running").then_some(()));
    }
    let created = c.created_containers();
    let mut handed: Vec<String> = Vec::new();
    for i in 0..4 {
        let name = format!("vm-{i}");
        let container = created
            .iter()
            .find(|r| r["sandboxConfig"]["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no CreateContainer for {name}: {created:#?}"));
        let addr =
            container_env(container, "PCI_RESOURCE_INTEL_COM_E810_VF").unwrap_or_else(|| panic!("{container:#}"));
        let (_, group) = vfs.iter().find(|(a, _)| *a == addr).unwrap_or_else(|| panic!("{addr} is not one of {vfs:?}"));
        let devices: Vec<(String, String)> = container["config"]["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    d["containerPath"].as_str().unwrap_or_default().to_owned(),
                    d["hostPath"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let group_node = format!("/dev/vfio/{group}");
        assert!(devices.contains(&("/dev/vfio/vfio".to_owned(), "/dev/vfio/vfio".to_owned())), "{name}: {devices:?}");
        assert!(devices.contains(&(group_node.clone(), group_node)), "{name}: {devices:?}");
        assert_eq!(
            container_env(container, "PCIDEVICE_INTEL_COM_E810_VF").as_deref(),
            Some(addr.as_str()),
            "{container:#}"
        );
        assert!(
            container_env(container, "PCIDEVICE_INTEL_COM_E810_VF_INFO").is_some_and(|v| v.contains(&addr)),
            "{container:#}"
        );
        handed.push(addr);
    }
    handed.sort();
    handed.dedup();
    assert_eq!(handed.len(), 4, "four pods, four different devices: {handed:?}");
    assert_eq!(c.node_quantity("allocatable", RESOURCE), Some(4), "Allocatable counts devices, not free ones");

    // None left. The scheduler keeps a fifth pod Pending, saying why.
    c.create(&device_pod(RESOURCE, "vm-4", None));
    let reason = c.wait_for("vm-4 unschedulable", WAIT, |c| {
        let s = pod_status(c, "vm-4");
        let cond = s["conditions"].as_array()?.iter().find(|c| c["type"] == "PodScheduled")?.clone();
        (cond["status"] == "False").then(|| cond["message"].as_str().unwrap_or_default().to_owned())
    });
    assert!(reason.contains(&format!("Insufficient {RESOURCE}")), "{reason}");
    // Sent straight to the node (nodeName set, as a DaemonSet or an admin may): the kubelet
    // rejects it at admission.
    c.create(&device_pod(RESOURCE, "vm-5", Some(NODE)));
    let status = c.wait_for("vm-5 rejected", WAIT, |c| {
        let s = pod_status(c, "vm-5");
        (s["phase"] == "Failed").then_some(s)
    });
    let message = status["message"].as_str().unwrap_or_default();
    eprintln!("the scheduler: {reason}\nthe kubelet: {}: {message}", status["reason"]);
    assert!(message.contains(RESOURCE), "{status:#}");
    assert!(
        status["reason"] == "UnexpectedAdmissionError" || status["reason"] == format!("OutOf{RESOURCE}").as_str(),
        "{status:#}"
    );
    assert!(
        !c.created_containers().iter().any(|r| r["sandboxConfig"]["metadata"]["name"] == "vm-5"),
        "a rejected pod got a container"
    );

    // A pod goes: its device is free again and the Pending pod gets it.
    c.kubectl_ok(&["delete", "pod", "vm-0", "--grace-period=0", "--force", "--wait=true"]);
    c.wait_for("vm-4 Running", WAIT, |c| (pod_status(c, "vm-4")["phase"] == "Running").then_some(()));
    drop(agent);
}
