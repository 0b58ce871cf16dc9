//! nodeprep's DRA driver with the upstream components (built from source, `support::k8s`): its
//! ResourceSlices and DeviceClass in the real API server, a pod's ResourceClaimTemplate
//! allocated by the real scheduler and prepared through the real kubelet's DRA manager, the CDI
//! ids the runtime (upstream's CRI fake) was handed, the whole IOMMU group bound and given back
//! on the simulated kernel, a claim for a device the host uses refused with the reason, and a
//! kubelet restart with a prepared claim changing nothing.
//!
//! The agent runs in this process (`support::inprocess`: `nodeprep::agent::run` on a thread) so
//! that its sysfs writes go to the simulated kernel (`support::kernel_sim`) over the fixture host
//! instead of being plain file writes; everything else is the agent as it ships.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::inprocess::InProcessAgent;
use support::k8s::{Cluster, NODE, Spec};
use support::machines::intel::{GPU_B, GPU_B_AUDIO, NVME};
use support::tree::driver_of;

const DRIVER: &str = "vfio.nodeprep.io";
const WAIT: Duration = Duration::from_secs(60);
/// The agent's identity (the DaemonSet's ServiceAccount).
const AGENT_USER: &str = "system:serviceaccount:nodeprep:nodeprep";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn config() -> String {
    format!(
        "dra:\n  devices:\n    - resourceName: nvidia.com/quadro\n      selectors: {{pciAddresses: [\"{GPU_B}\"]}}\n    - resourceName: nodeprep.io/nvme\n      selectors: {{pciAddresses: [\"{NVME}\"]}}\n"
    )
}

/// One real PCI `change` uevent from this machine's first PCI device: the agent's monitor hears
/// it on the kernel's netlink socket and rescans (the fixture host itself sends none).
fn send_uevent() {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/sys/bus/pci/devices")
        .expect("this machine's /sys/bus/pci/devices")
        .filter_map(|e| e.ok().map(|e| e.path().join("uevent")))
        .collect();
    files.sort();
    let file = files.first().expect("this machine has a PCI device");
    std::fs::write(file, "change").unwrap_or_else(|e| panic!("write change to {}: {e}", file.display()));
}

fn slices(c: &Cluster) -> Vec<Value> {
    let out = c.kubectl_ok(&["get", "resourceslices", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("resourceslices JSON");
    v["items"].as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["spec"]["driver"] == DRIVER).collect()
}

fn slice_devices(c: &Cluster) -> Vec<Value> {
    slices(c).iter().flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default()).collect()
}

fn template(name: &str, resource: &str) -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
    "metadata": {"name": name, "namespace": "default"},
    "spec": {"spec": {"devices": {"requests": [{"name": "vm", "exactly": {
        "deviceClassName": DRIVER,
        "selectors": [{"cel": {"expression": format!("device.attributes[\"{DRIVER}\"].resourceName == \"{resource}\"")}}]
    }}]}}}})
}

fn claim_pod(name: &str, template: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "dev", "resourceClaimTemplateName": template}],
            "containers": [{"name": "compute", "image": "example.invalid/virt-launcher:1",
                "resources": {"claims": [{"name": "dev"}]}}]}})
}

fn phase(c: &Cluster, pod: &str) -> Option<String> {
    c.object(&format!("/api/v1/namespaces/default/pods/{pod}"))
        .and_then(|p| p["status"]["phase"].as_str().map(str::to_owned))
}

fn pod_events(c: &Cluster, pod: &str) -> Vec<String> {
    let out = c.kubectl_ok(&["get", "events", "-n", "default", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("events JSON");
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| format!("{}: {}", e["reason"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn a_claim_is_allocated_prepared_bound_and_given_back_through_the_real_kubelet() {
    let mut c = Cluster::start(Spec { kubelet: true, controllers: true });
    c.kubectl_ok(&["apply", "-k", &repo("daemonset").display().to_string()]);
    // The DaemonSet itself would run a second agent in the fake runtime: this test is the agent.
    c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let tree = support::intel_gpu_server();
    let root = tree.root().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config()).expect("config");
    let agent = InProcessAgent::start(&root, &config_path, &kubeconfig, &c);

    // The real API server holds the pool: the GPU with its audio function as one device, and
    // the NVMe disk; both with the standard attributes.
    let gpu = nodeprep::dra::devices::device_name(&GPU_B.parse().expect("address"));
    let nvme = nodeprep::dra::devices::device_name(&NVME.parse().expect("address"));
    let devices = c.wait_for("the ResourceSlice", WAIT, |c| {
        let d = slice_devices(c);
        (d.len() == 2).then_some(d)
    });
    let by_name = |n: &str| devices.iter().find(|d| d["name"] == n).cloned().expect("device in slice");
    let g = by_name(&gpu);
    assert_eq!(g["attributes"]["resource.kubernetes.io/pciBusID"]["string"], GPU_B, "{g}");
    assert_eq!(g["attributes"]["iommuGroupSize"]["int"], 2, "{g}");
    assert_eq!(g["attributes"]["hostDriver"]["string"], "nouveau", "{g}");
    assert_eq!(by_name(&nvme)["attributes"]["resourceName"]["string"], "nodeprep.io/nvme");
    let s = &slices(&c)[0];
    assert_eq!(s["spec"]["nodeName"], NODE);
    assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Node", "{s}");
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("nouveau"), "at rest on its own driver");

    // The disk is hot-unplugged, then comes back; each time one real kernel uevent (for a device
    // of this machine: the agent rescans on any PCI uevent) and the slice follows.
    let generation = |c: &Cluster| slices(c).first().map(|s| s["spec"]["pool"]["generation"].clone());
    let before = generation(&c);
    let dev_dir = tree.path(tree.pci_dir(NVME));
    let aside = root.join("unplugged-nvme");
    let link = root.join(format!("sys/bus/pci/devices/{NVME}"));
    let link_target = std::fs::read_link(&link).expect("the disk's bus link");
    std::fs::rename(&dev_dir, &aside).expect("unplug the disk");
    std::fs::remove_file(&link).expect("remove its bus link");
    send_uevent();
    c.wait_for("the slice without the disk", WAIT, |c| {
        let d = slice_devices(c);
        (d.len() == 1 && d[0]["name"] == gpu.as_str()).then_some(())
    });
    assert_ne!(generation(&c), before, "a changed pool has a new generation");
    std::fs::rename(&aside, &dev_dir).expect("plug the disk back");
    std::os::unix::fs::symlink(&link_target, &link).expect("its bus link");
    send_uevent();
    c.wait_for("the disk back in the slice", WAIT, |c| (slice_devices(c).len() == 2).then_some(()));

    // A pod with a claim template: allocated by the scheduler, prepared by the kubelet through
    // nodeprep, started with the CDI ids.
    c.create(&json!({"apiVersion": "v1", "kind": "List", "items": [template("gpu", "nvidia.com/quadro"), claim_pod("vm-gpu", "gpu")]}));
    c.wait_for("vm-gpu Running", WAIT, |c| (phase(c, "vm-gpu").as_deref() == Some("Running")).then_some(()));
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"));
    assert_eq!(driver_of(&root, GPU_B_AUDIO).as_deref(), Some("vfio-pci"), "the whole group is bound");
    let created = c.created_containers();
    let record = created
        .iter()
        .map(Value::to_string)
        .find(|t| t.contains(&format!("{DRIVER}/pci=")))
        .unwrap_or_else(|| panic!("no CreateContainer with nodeprep's CDI ids: {created:?}"));
    assert!(record.contains(&gpu), "{record}");
    assert!(record.contains(&format!("{DRIVER}/metadata=")), "{record}");

    // A claim for the disk the host boots from: refused, with the reason on the pod.
    c.create(&json!({"apiVersion": "v1", "kind": "List", "items": [template("disk", "nodeprep.io/nvme"), claim_pod("vm-disk", "disk")]}));
    let why = c.wait_for("vm-disk refused", WAIT, |c| {
        pod_events(c, "vm-disk").into_iter().find(|e| e.contains("the host uses it"))
    });
    assert!(why.contains(NVME), "{why}");
    assert_eq!(driver_of(&root, NVME).as_deref(), Some("nvme"));
    assert_ne!(phase(&c, "vm-disk").as_deref(), Some("Running"));

    // The kubelet restarts with a prepared claim: nothing changes; the slices it wipes at
    // start come back.
    c.kill_kubelet();
    c.start_kubelet();
    c.wait_node_ready();
    c.wait_for("the slices again", WAIT, |c| (slice_devices(c).len() == 2).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(phase(&c, "vm-gpu").as_deref(), Some("Running"));
    assert_eq!(driver_of(&root, GPU_B).as_deref(), Some("vfio-pci"));

    // The pod goes: the claim is unprepared, the functions go back to their drivers.
    c.kubectl_ok(&["delete", "pod", "vm-gpu", "--wait=false"]);
    c.wait_for("the GPU back on nouveau", WAIT, |_| {
        (driver_of(&root, GPU_B).as_deref() == Some("nouveau")
            && driver_of(&root, GPU_B_AUDIO).as_deref() == Some("snd_hda_intel"))
        .then_some(())
    });

    // An ordinary restart is not an uninstall: the slices outlive the agent, and the agent that
    // comes back writes none (they already say what it would).
    c.kubectl_ok(&["delete", "pod", "vm-disk", "--wait=false"]);
    let versions = |c: &Cluster| -> Vec<String> {
        slices(c).iter().map(|s| format!("{}@{}", s["metadata"]["name"], s["metadata"]["resourceVersion"])).collect()
    };
    let before = versions(&c);
    drop(agent);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(versions(&c), before, "the slices stay while the agent restarts");
    let seen = c.audit().len();
    let agent = InProcessAgent::start(&root, &config_path, &kubeconfig, &c);
    let registration = c.kubelet_root.join(format!("plugins_registry/{DRIVER}-reg.sock"));
    c.wait_for("the plugin socket again", WAIT, |_| registration.exists().then_some(()));
    std::thread::sleep(Duration::from_secs(5));
    let since = c.audit().split_off(seen);
    assert!(
        since.iter().any(|a| a.user == AGENT_USER && a.resource == "resourceslices" && a.verb == "watch"),
        "the restarted agent watches its slices again: {since:?}"
    );
    let slice_writes: Vec<String> = since
        .iter()
        .filter(|a| a.user == AGENT_USER && a.resource == "resourceslices" && a.is_write())
        .map(|a| format!("{} {}", a.verb, a.uri))
        .collect();
    assert!(slice_writes.is_empty(), "a restarted agent rewrote its slices: {slice_writes:?}");
    assert_eq!(versions(&c), before);

    // Uninstall: the agent goes for good; 30 s after its socket went, the kubelet removes the
    // node's slices of the driver (its own cleanup of a driver that does not come back).
    drop(agent);
    let gone = std::time::Instant::now();
    c.wait_for("the kubelet to remove the slices", Duration::from_secs(90), |c| slices(c).is_empty().then_some(()));
    assert!(
        gone.elapsed() >= Duration::from_secs(20),
        "removed after {:?}: not the kubelet's grace period",
        gone.elapsed()
    );
}
