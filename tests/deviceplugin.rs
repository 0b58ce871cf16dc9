//! The device-plugin servers against a kubelet stand-in (`support::kubelet`), over real unix
//! sockets in a fixture host tree: registration, ListAndWatch, changes pushed through the watch
//! channel, Allocate (every DeviceSpec and variable), GetPreferredAllocation, kubelet restarts,
//! shutdown, counted resources.

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeprep::config::Config;
use nodeprep::deviceplugin::allocate::SharedReads;
use nodeprep::deviceplugin::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Device, DevicePluginOptions,
    DeviceSpec, NumaNode, PreStartContainerRequest, PreferredAllocationRequest, TopologyInfo,
};
use nodeprep::deviceplugin::cdi::{CdiSettings, CdiSpec};
use nodeprep::deviceplugin::devices::{PluginDevice, ResourceDevices, resource_devices};
use nodeprep::deviceplugin::{CountedResource, Manager, ManagerHandle, ManagerOptions, PluginStatus, ResourceSpec};
use nodeprep::host::HostRoot;
use nodeprep::host::kubelet::PLUGIN_DIR;
use nodeprep::model::PciAddress;
use support::kubelet::Kubelet;
use support::{HostTree, intel, intel_gpu_server};
use tokio::sync::watch;
use tonic::Code;

const T4: &str = "nvidia.com/TU104GL_Tesla_T4";
const T4_SOCK: &str = "nvidia.com-TU104GL_Tesla_T4.sock";
const RTX: &str = "nvidia.com/TU102GL_Quadro_RTX_6000";
const KVM: &str = "devices.kubevirt.io/kvm";
const VM: &str = "kata.peerpods.io/vm";
/// Upper bound for anything that should take milliseconds.
const WAIT: Duration = Duration::from_secs(5);

const CONFIG: &str = "pciHostDevices:
  - pciDeviceSelector: \"10DE:1EB8\"
    resourceName: nvidia.com/TU104GL_Tesla_T4
    externalResourceProvider: true
  - pciDeviceSelector: \"10DE:1E30\"
    resourceName: nvidia.com/TU102GL_Quadro_RTX_6000
";

/// What the event sources compute: discovery, the config's claims, health.
fn scan(tree: &HostTree) -> ResourceDevices {
    let inv = nodeprep::host::pci::discover(&HostRoot::new(tree.root())).expect("discover");
    let config = Config::parse(CONFIG).expect("config");
    resource_devices(&inv, &config.claims(&inv).expect("claims"))
}

struct Setup {
    tree: HostTree,
    kubelet: Kubelet,
    devices: watch::Sender<ResourceDevices>,
    manager: ManagerHandle,
}

impl Setup {
    fn plugin_dir(&self) -> PathBuf {
        self.tree.path(PLUGIN_DIR)
    }
}

async fn start_manager(
    tree: &HostTree,
    resources: Vec<ResourceSpec>,
) -> (watch::Sender<ResourceDevices>, ManagerHandle) {
    let (tx, rx) = watch::channel(scan(tree));
    let mut opts = ManagerOptions::new(HostRoot::new(tree.root()));
    opts.resources = resources;
    let manager = Manager::new(opts, rx).expect("resources accepted").start().await.expect("manager starts");
    (tx, manager)
}

/// The intel GPU server, a kubelet, and a manager serving the config's PCI resources plus
/// `extra`.
async fn setup(extra: Vec<ResourceSpec>) -> Setup {
    let tree = intel_gpu_server();
    let kubelet = Kubelet::start(&tree.path(PLUGIN_DIR)).await;
    let mut resources = vec![ResourceSpec::Pci(T4.into()), ResourceSpec::Pci(RTX.into())];
    resources.extend(extra);
    let (devices, manager) = start_manager(&tree, resources).await;
    Setup { tree, kubelet, devices, manager }
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

fn healthy(id: &str, numa: i64) -> Device {
    Device {
        id: id.into(),
        health: "Healthy".into(),
        topology: Some(TopologyInfo { nodes: vec![NumaNode { id: numa }] }),
    }
}

fn spec(path: &str, permissions: &str) -> DeviceSpec {
    DeviceSpec { container_path: path.into(), host_path: path.into(), permissions: permissions.into() }
}

fn allocate_request(ids: &[&[&str]]) -> AllocateRequest {
    AllocateRequest {
        container_requests: ids
            .iter()
            .map(|c| ContainerAllocateRequest { devices_ids: c.iter().map(|s| s.to_string()).collect() })
            .collect(),
    }
}

/// Polls a plugin's status until `f` holds (the status has no change notification).
async fn wait_status(m: &ManagerHandle, resource: &str, f: impl Fn(&PluginStatus) -> bool) -> PluginStatus {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = m.plugin_status(resource).expect("plugin");
        if f(&st) {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting on the status of {resource}: {st:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The first list received for `resource`.
async fn first_list(k: &Kubelet, resource: &str) -> Vec<Device> {
    k.wait_for(&format!("the first list of {resource}"), WAIT, |r| r.lists(resource).first().map(|u| u.devices.clone()))
        .await
}

#[tokio::test]
async fn registers_then_streams_the_initial_list() {
    let s = setup(vec![]).await;
    let reg = s.kubelet.wait_for("T4 registration", WAIT, |r| r.registrations_of(T4).first().cloned()).await;
    assert_eq!(reg.request.version, "v1beta1");
    assert_eq!(reg.request.endpoint, T4_SOCK, "endpoint is the socket's file name, '/' turned into '-'");
    assert_eq!(reg.request.resource_name, T4);
    assert_eq!(
        reg.request.options,
        Some(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true })
    );
    assert_eq!(reg.authority.as_deref(), Some("localhost"), "Register must be sent with :authority localhost");
    assert_eq!(
        reg.options,
        DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }
    );
    assert!(is_socket(&s.plugin_dir().join(T4_SOCK)));

    assert_eq!(first_list(&s.kubelet, T4).await, vec![healthy(intel::GPU_A, 0)]);
    // GPU B is on nouveau: listed, unhealthy, on NUMA node 1.
    let rtx = first_list(&s.kubelet, RTX).await;
    assert_eq!(rtx.len(), 1);
    assert_eq!((rtx[0].id.as_str(), rtx[0].health.as_str()), (intel::GPU_B, "Unhealthy"));
    assert_eq!(rtx[0].topology, Some(TopologyInfo { nodes: vec![NumaNode { id: 1 }] }));

    // The plugin saw the kubelet's :authority.
    let st = wait_status(&s.manager, T4, |st| st.registered).await;
    assert_eq!(st.last_authority.as_deref(), Some("localhost"));
    assert!(st.serving, "{st:?}");
    assert_eq!(st.registrations, 1);
    assert_eq!(st.open_streams, 1);
    assert!(s.kubelet.record().refused.is_empty());
    s.manager.shutdown().await;
}

#[tokio::test]
async fn unbound_then_removed_device_reaches_the_stream_and_unrelated_changes_do_not() {
    let s = setup(vec![]).await;
    assert_eq!(first_list(&s.kubelet, T4).await, vec![healthy(intel::GPU_A, 0)]);
    first_list(&s.kubelet, RTX).await;

    // An unrelated change (GPU B's health) reaches the RTX stream only.
    let mut m = scan(&s.tree);
    m.get_mut(RTX).expect("RTX")[0].healthy = true;
    s.devices.send(m).expect("send");
    let rtx = s.kubelet.wait_for("RTX update", WAIT, |r| r.lists(RTX).get(1).map(|u| u.devices.clone())).await;
    assert_eq!(rtx[0].health, "Healthy");

    // GPU A is unbound from vfio-pci: the next scan reports it unhealthy.
    let gpu_a = s.tree.pci_dir(intel::GPU_A);
    s.tree.remove(&format!("{}/driver", gpu_a.display()));
    s.devices.send(scan(&s.tree)).expect("send");
    let update = s.kubelet.wait_for("T4 unhealthy", WAIT, |r| r.lists(T4).get(1).map(|u| u.devices.clone())).await;
    assert_eq!(update, vec![Device { health: "Unhealthy".into(), ..healthy(intel::GPU_A, 0) }]);
    assert_eq!(s.kubelet.record().lists(T4).len(), 2, "the RTX-only change must not resend the T4 list");

    // Sending the same state again changes nothing for anyone.
    s.devices.send(scan(&s.tree)).expect("send");
    // GPU A is removed: its resource has no device left.
    s.tree.remove(&format!("sys/bus/pci/devices/{}", intel::GPU_A));
    s.devices.send(scan(&s.tree)).expect("send");
    let gone = s.kubelet.wait_for("T4 empty", WAIT, |r| r.lists(T4).get(2).map(|u| u.devices.clone())).await;
    assert!(gone.is_empty(), "{gone:?}");
    let rec = s.kubelet.record();
    assert_eq!(rec.lists(T4).len(), 3);
    assert_eq!(rec.lists(RTX).len(), 3, "RTX: initial, healthy, then unhealthy again from the real scan");
    s.manager.shutdown().await;
}

#[tokio::test]
async fn allocate_gives_every_device_node_and_variable() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    let mut c = s.kubelet.client(T4).await;
    let resp = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("allocate").into_inner();
    assert_eq!(resp.container_responses.len(), 1);
    let r = &resp.container_responses[0];
    assert_eq!(r.devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/6", "mrw")]);
    let mut envs: Vec<(&str, &str)> = r.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    envs.sort();
    assert_eq!(
        envs[..2],
        [
            ("PCIDEVICE_NVIDIA_COM_TU104GL_TESLA_T4", intel::GPU_A),
            (
                "PCIDEVICE_NVIDIA_COM_TU104GL_TESLA_T4_INFO",
                r.envs["PCIDEVICE_NVIDIA_COM_TU104GL_TESLA_T4_INFO"].as_str()
            ),
        ]
    );
    assert_eq!(envs[2], ("PCI_RESOURCE_NVIDIA_COM_TU104GL_TESLA_T4", intel::GPU_A));
    assert_eq!(envs.len(), 3);
    let info: serde_json::Value =
        serde_json::from_str(&r.envs["PCIDEVICE_NVIDIA_COM_TU104GL_TESLA_T4_INFO"]).expect("_INFO is JSON");
    assert_eq!(
        info,
        serde_json::json!({ intel::GPU_A: {
            "generic": { "deviceID": intel::GPU_A },
            "vfio": { "mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/6" },
        }})
    );
    assert!(r.mounts.is_empty() && r.annotations.is_empty() && r.cdi_devices.is_empty());

    // The group number is read at Allocate time, never cached: renumber group 6 -> 42 (as a
    // reboot may).
    let gpu_a = s.tree.pci_dir(intel::GPU_A).display().to_string();
    s.tree.symlink(
        &format!("sys/kernel/iommu_groups/42/devices/{}", intel::GPU_A),
        &s.tree.path(&gpu_a).display().to_string(),
    );
    s.tree.symlink(&format!("{gpu_a}/iommu_group"), &s.tree.path("sys/kernel/iommu_groups/42").display().to_string());
    s.tree.file("dev/vfio/42", "");
    let resp = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("allocate").into_inner();
    assert_eq!(resp.container_responses[0].devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/42", "mrw")]);

    // A bridge in the group (PCIe-to-PCI bridges share groups with what is behind them) does not
    // make it unusable, whatever its driver.
    s.tree.symlink(
        &format!("sys/kernel/iommu_groups/42/devices/{}", intel::RP_GPU_A),
        &s.tree.path(s.tree.pci_dir(intel::RP_GPU_A)).display().to_string(),
    );
    let resp = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("bridge in group").into_inner();
    assert_eq!(resp.container_responses[0].devices[1], spec("/dev/vfio/42", "mrw"));

    let pre = c.pre_start_container(PreStartContainerRequest { devices_ids: vec![intel::GPU_A.into()] }).await;
    assert_eq!(pre.expect("PreStartContainer").into_inner(), Default::default());
    s.manager.shutdown().await;
}

/// A read is shared only with requests that arrived before it started: a request that arrives
/// later reads sysfs again.
#[test]
fn allocate_reads_are_shared_only_with_requests_that_arrived_before_them() {
    let tree = intel_gpu_server();
    let root = HostRoot::new(tree.root());
    let reads = SharedReads::default();
    let gpu: PciAddress = intel::GPU_A.parse().expect("address");
    let arrived = Instant::now();
    let host = reads.host(&root, arrived);
    let first = reads.device(&root, &host, gpu, arrived).expect("usable");
    assert_eq!(first.group, 6);

    tree.remove(&format!("{}/driver", tree.pci_dir(intel::GPU_A).display()));
    // Arrived before the first read started: that read is after its arrival, so it is shared.
    assert_eq!(reads.device(&root, &host, gpu, arrived), Ok(first.clone()));
    // Arrives now: reads again and sees the unbind; so does anyone who arrived before that read.
    let later = Instant::now();
    let why = reads.device(&root, &host, gpu, later).expect_err("unbound");
    assert_eq!(why, "it is bound to no driver, not vfio-pci");
    assert_eq!(reads.device(&root, &host, gpu, later), Err(why));

    let vfio = tree.path("sys/bus/pci/drivers/vfio-pci").display().to_string();
    tree.symlink(&format!("{}/driver", tree.pci_dir(intel::GPU_A).display()), &vfio);
    assert_eq!(reads.device(&root, &host, gpu, Instant::now()), Ok(first));

    // The host's nodes likewise: /dev/vfio/vfio removed is seen by a request that arrives after.
    tree.remove("dev/vfio/vfio");
    assert!(reads.host(&root, arrived).container);
    assert!(!reads.host(&root, Instant::now()).container);
}

/// A burst of Allocates on the kubelet's one connection: every answer complete and the same, and
/// a burst after the device is unbound refused in full.
#[tokio::test]
async fn concurrent_allocates_share_reads_and_still_see_changes() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    let c = s.kubelet.client(T4).await;
    let burst = |c: &nodeprep::deviceplugin::api::device_plugin_client::DevicePluginClient<_>| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let mut c = c.clone();
            set.spawn(async move { c.allocate(allocate_request(&[&[intel::GPU_A]])).await.map(|r| r.into_inner()) });
        }
        set.join_all()
    };
    let answers = burst(&c).await;
    assert_eq!(answers.len(), 50);
    let first = answers[0].as_ref().expect("allocate").clone();
    assert_eq!(first.container_responses[0].devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/6", "mrw")]);
    assert!(answers.iter().all(|a| a.as_ref().ok() == Some(&first)));

    s.tree.remove(&format!("{}/driver", s.tree.pci_dir(intel::GPU_A).display()));
    let answers = burst(&c).await;
    for a in answers {
        let e = a.expect_err("unbound");
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().ends_with("it is bound to no driver, not vfio-pci"), "{}", e.message());
    }
    s.manager.shutdown().await;
}

/// With a CDI kind configured: Allocate names the devices by CDI (no DeviceSpecs), keeps the
/// variables, and the spec file on the host says exactly what was read, rewritten only when that
/// changes.
#[tokio::test]
async fn allocate_with_cdi_names_devices_and_keeps_the_spec_right() {
    let tree = intel_gpu_server();
    let kubelet = Kubelet::start(&tree.path(PLUGIN_DIR)).await;
    let root = HostRoot::new(tree.root());
    let settings = CdiSettings { kind: "nodeprep.io/vfio".into(), spec_dir: "/var/run/cdi".into() };
    let (_tx, rx) = watch::channel(scan(&tree));
    let mut opts = ManagerOptions::new(root.clone());
    opts.resources = vec![ResourceSpec::Pci(T4.into()), ResourceSpec::Pci(RTX.into())];
    opts.cdi = Some(Arc::new(CdiSpec::open(&root, &settings)));
    let manager = Manager::new(opts, rx).expect("resources").start().await.expect("start");
    first_list(&kubelet, T4).await;
    let mut c = kubelet.client(T4).await;
    let spec_path = tree.path("var/run/cdi/nodeprep.io-vfio.json");
    assert!(!spec_path.exists(), "nothing is written before an Allocate");

    let r = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("allocate").into_inner();
    let r = &r.container_responses[0];
    assert!(r.devices.is_empty(), "the runtime gets the nodes from the CDI spec, once");
    let names: Vec<&str> = r.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, [format!("nodeprep.io/vfio={}", intel::GPU_A)]);
    assert_eq!(r.envs["PCI_RESOURCE_NVIDIA_COM_TU104GL_TESLA_T4"], intel::GPU_A);
    assert_eq!(r.envs.len(), 3);

    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&spec_path).expect("spec written")).expect("spec is JSON")
    };
    let node = |p: &str| serde_json::json!({ "path": p, "hostPath": p, "permissions": "rwm" });
    assert_eq!(
        read(),
        serde_json::json!({
            "cdiVersion": "0.5.0",
            "kind": "nodeprep.io/vfio",
            "devices": [{ "name": intel::GPU_A, "containerEdits": { "deviceNodes": [node("/dev/vfio/6")] } }],
            "containerEdits": { "deviceNodes": [node("/dev/vfio/vfio")] },
        })
    );
    // Nothing changed: nothing written (a write replaces the file, so its inode would change).
    let inode = || std::fs::metadata(&spec_path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).expect("stat");
    let before = inode();
    c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("allocate again");
    assert_eq!(inode(), before);

    // The group renumbered (as after a reboot): the spec follows what Allocate read.
    let gpu_a = s_path(&tree, intel::GPU_A);
    tree.symlink(&format!("sys/kernel/iommu_groups/42/devices/{}", intel::GPU_A), &gpu_a);
    tree.symlink(
        &format!("{}/iommu_group", tree.pci_dir(intel::GPU_A).display()),
        &tree.path("sys/kernel/iommu_groups/42").display().to_string(),
    );
    tree.file("dev/vfio/42", "");
    c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("allocate renumbered");
    assert_ne!(inode(), before);
    assert_eq!(read()["devices"][0]["containerEdits"]["deviceNodes"][0]["path"], "/dev/vfio/42");
    manager.shutdown().await;

    // A new agent keeps the names the kubelet may still hand out (its checkpoint), and adds more.
    let spec = CdiSpec::open(&root, &settings);
    let (_tx, rx) = watch::channel(scan(&tree));
    let mut opts = ManagerOptions::new(root.clone());
    opts.resources = vec![ResourceSpec::Pci(T4.into()), ResourceSpec::Pci(RTX.into())];
    opts.cdi = Some(Arc::new(spec));
    let manager = Manager::new(opts, rx).expect("resources").start().await.expect("start");
    let vfio = tree.path("sys/bus/pci/drivers/vfio-pci").display().to_string();
    for f in [intel::GPU_B, intel::GPU_B_AUDIO] {
        tree.symlink(&format!("{}/driver", tree.pci_dir(f).display()), &vfio);
    }
    tree.file("dev/vfio/20", "");
    let mut rtx = kubelet.client(RTX).await;
    rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect("allocate RTX");
    let names: Vec<String> = read()["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, [intel::GPU_A, intel::GPU_B]);

    // A spec that cannot be written fails the Allocate, saying where and why.
    std::fs::remove_file(&spec_path).expect("remove spec");
    std::fs::create_dir(&spec_path).expect("a directory where the file goes");
    let e = rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect_err("unwritable");
    assert_eq!(e.code(), Code::Internal);
    assert!(
        e.message()
            .starts_with(&format!("{RTX}: cannot allocate: CDI spec {}: rename into place:", spec_path.display())),
        "{}",
        e.message()
    );
    manager.shutdown().await;
}

fn s_path(tree: &HostTree, addr: &str) -> String {
    tree.path(tree.pci_dir(addr)).display().to_string()
}

#[tokio::test]
async fn allocate_refuses_devices_that_are_not_usable_with_the_reason() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    first_list(&s.kubelet, RTX).await;
    let mut t4 = s.kubelet.client(T4).await;
    let mut rtx = s.kubelet.client(RTX).await;

    // Not one of this resource's devices.
    let e = t4.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect_err("foreign device");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(&format!("{T4}: cannot allocate device {}", intel::GPU_B)), "{}", e.message());

    // GPU B is on nouveau.
    let e = rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect_err("nouveau");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!("{RTX}: cannot allocate device {}: it is bound to nouveau, not vfio-pci", intel::GPU_B)
    );

    // GPU B on vfio-pci, its audio function still on snd_hda_intel: the group is not viable.
    let vfio = s.tree.path("sys/bus/pci/drivers/vfio-pci").display().to_string();
    let gpu_b = s.tree.pci_dir(intel::GPU_B).display().to_string();
    s.tree.symlink(&format!("{gpu_b}/driver"), &vfio);
    let e = rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect_err("group not viable");
    assert!(
        e.message().ends_with(&format!(
            "IOMMU group 20 is not viable: {} (snd_hda_intel) not on vfio-pci",
            intel::GPU_B_AUDIO
        )),
        "{}",
        e.message()
    );
    // The audio function joins it: the group is usable once its node exists.
    let audio = s.tree.pci_dir(intel::GPU_B_AUDIO).display().to_string();
    s.tree.symlink(&format!("{audio}/driver"), &vfio);
    let e = rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect_err("no /dev/vfio/20");
    assert!(e.message().ends_with("its IOMMU group's node /dev/vfio/20 does not exist on the host"), "{}", e.message());
    s.tree.file("dev/vfio/20", "");
    let ok = rtx.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect("usable now").into_inner();
    assert_eq!(ok.container_responses[0].devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/20", "mrw")]);

    // GPU A unbound after the kubelet saw it healthy: refused, even though the list said healthy.
    s.tree.remove(&format!("{}/driver", s.tree.pci_dir(intel::GPU_A).display()));
    let e = t4.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect_err("unbound");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!("{T4}: cannot allocate device {}: it is bound to no driver, not vfio-pci", intel::GPU_A)
    );
    // Gone altogether.
    s.tree.remove(&format!("sys/bus/pci/devices/{}", intel::GPU_A));
    let e = t4.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect_err("gone");
    assert!(e.message().ends_with("the device is no longer present"), "{}", e.message());
    s.manager.shutdown().await;
}

#[tokio::test]
async fn allocate_noiommu_and_iommufd_nodes() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    let mut c = s.kubelet.client(T4).await;
    let dev_mount = |r: &nodeprep::deviceplugin::api::ContainerAllocateResponse| {
        let info: serde_json::Value =
            serde_json::from_str(&r.envs["PCIDEVICE_NVIDIA_COM_TU104GL_TESLA_T4_INFO"]).expect("json");
        info[intel::GPU_A]["vfio"]["dev-mount"].as_str().expect("dev-mount").to_owned()
    };

    // No-IOMMU group: the kernel names the group vfio-noiommu and its node noiommu-6.
    s.tree.file("sys/kernel/iommu_groups/6/name", "vfio-noiommu\n");
    s.tree.remove("dev/vfio/6");
    let e = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect_err("no node yet");
    assert!(e.message().ends_with("node /dev/vfio/noiommu-6 does not exist on the host"), "{}", e.message());
    s.tree.file("dev/vfio/noiommu-6", "");
    let r = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("noiommu").into_inner();
    let r = &r.container_responses[0];
    assert_eq!(r.devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/noiommu-6", "mrw")]);
    assert_eq!(dev_mount(r), "/dev/vfio/noiommu-6");

    // Back to an IOMMU group, on a host with iommufd and the device's VFIO cdev.
    s.tree.remove("sys/kernel/iommu_groups/6/name").remove("dev/vfio/noiommu-6").file("dev/vfio/6", "");
    s.tree.file("dev/iommu", "");
    s.tree.file(&format!("{}/vfio-dev/vfio0/dev", s.tree.pci_dir(intel::GPU_A).display()), "511:0\n");
    // Without its /dev node the cdev is not handed out.
    let r = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("iommufd, no cdev node").into_inner();
    assert_eq!(r.container_responses[0].devices, vec![spec("/dev/vfio/vfio", "mrw"), spec("/dev/vfio/6", "mrw")]);
    s.tree.file("dev/vfio/devices/vfio0", "");
    let r = c.allocate(allocate_request(&[&[intel::GPU_A]])).await.expect("iommufd").into_inner();
    let r = &r.container_responses[0];
    assert_eq!(
        r.devices,
        vec![
            spec("/dev/vfio/vfio", "mrw"),
            spec("/dev/vfio/6", "mrw"),
            spec("/dev/iommu", "mrw"),
            spec("/dev/vfio/devices/vfio0", "mrw"),
        ]
    );
    assert_eq!(dev_mount(r), "/dev/vfio/6");
    s.manager.shutdown().await;
}

fn vf(addr: &str, numa: u32, pf: &str) -> PluginDevice {
    PluginDevice {
        id: addr.into(),
        address: addr.parse().expect("address"),
        healthy: true,
        problem: None,
        numa_node: Some(numa),
        iommu_group: None,
        physfn: Some(pf.parse().expect("pf")),
    }
}

#[tokio::test]
async fn preferred_allocation_and_resources_that_appear_later() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    // A resource that was not configured at start appears in the channel: it gets a plugin.
    const VF: &str = "example.com/vf";
    let qat = |i: usize| intel::QAT_VFS[i];
    let mlx = |i: usize| intel::MLX_VFS[i];
    s.devices.send_modify(|m| {
        m.insert(
            VF.into(),
            vec![
                vf(qat(0), 0, intel::QAT_PF),
                vf(qat(1), 0, intel::QAT_PF),
                vf(mlx(0), 1, intel::MLX_PF),
                vf(mlx(1), 1, intel::MLX_PF),
                vf(mlx(2), 1, intel::MLX_PF),
            ],
        );
    });
    let reg = s.kubelet.wait_for("VF registration", WAIT, |r| r.registrations_of(VF).first().cloned()).await;
    assert_eq!(reg.request.endpoint, "example.com-vf.sock");
    assert_eq!(first_list(&s.kubelet, VF).await.len(), 5);

    let mut c = s.kubelet.client(VF).await;
    let ask = |avail: &[&str], must: &[&str], size: i32| PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: avail.iter().map(|s| s.to_string()).collect(),
            must_include_device_i_ds: must.iter().map(|s| s.to_string()).collect(),
            allocation_size: size,
        }],
    };
    let all = [qat(0), mlx(0), mlx(1), qat(1), mlx(2)];
    let got =
        |r: nodeprep::deviceplugin::api::PreferredAllocationResponse| r.container_responses[0].device_i_ds.clone();
    // NUMA node 1 has the most devices.
    let r = c.get_preferred_allocation(ask(&all, &[], 2)).await.expect("preferred").into_inner();
    assert_eq!(got(r), [mlx(0), mlx(1)]);
    // A must-include device on node 0 pulls the rest there.
    let r = c.get_preferred_allocation(ask(&all, &[qat(1)], 2)).await.expect("preferred").into_inner();
    assert_eq!(got(r), [qat(1), qat(0)]);
    // Exactly the size asked, spilling to the other node when one is not enough.
    let r = c.get_preferred_allocation(ask(&all, &[], 4)).await.expect("preferred").into_inner();
    assert_eq!(got(r), [mlx(0), mlx(1), mlx(2), qat(0)]);
    s.manager.shutdown().await;
}

#[tokio::test]
async fn kubelet_restart_reregisters_within_a_second() {
    let s = setup(vec![ResourceSpec::Counted(CountedResource::kvm(10))]).await;
    for r in [T4, RTX, KVM] {
        first_list(&s.kubelet, r).await;
    }
    let created = s.kubelet.restart().await;
    for r in [T4, RTX, KVM] {
        let reg = s
            .kubelet
            .wait_for(&format!("{r} registered with the new kubelet"), WAIT, |rec| {
                rec.registrations_of(r).into_iter().find(|x| x.generation == 1)
            })
            .await;
        let took = reg.at.duration_since(created);
        assert!(took < Duration::from_secs(1), "{r} re-registered {took:?} after kubelet.sock was created");
        // The new kubelet gets the full list on its new stream.
        let list = s
            .kubelet
            .wait_for(&format!("{r} list on the new stream"), WAIT, |rec| {
                rec.lists(r).into_iter().find(|u| u.stream == reg.stream).map(|u| u.devices.clone())
            })
            .await;
        assert!(!list.is_empty());
        assert!(is_socket(&s.plugin_dir().join(nodeprep::deviceplugin::socket_name(r))), "{r} socket recreated");
    }
    assert_eq!(s.kubelet.record().registrations_of(T4).iter().filter(|x| x.generation == 0).count(), 1);
    let st = wait_status(&s.manager, T4, |st| st.registered).await;
    assert_eq!(st.server_starts, 2, "{st:?}");
    // Once per kubelet: the restart both deletes the plugin's socket and creates kubelet.sock,
    // and a second `Register` to the same kubelet is refused by 1.37 for good ("device plugin
    // already connected").
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in [T4, RTX, KVM] {
        let n = s.kubelet.record().registrations_of(r).iter().filter(|x| x.generation == 1).count();
        assert_eq!(n, 1, "{r} registered {n} times with the new kubelet");
    }
    s.manager.shutdown().await;
}

#[tokio::test]
async fn already_connected_counts_as_registered_while_the_kubelet_streams() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    // kubelet.sock moved out and back (a new ctime: to the plugin, perhaps a new kubelet), and the
    // kubelet answers the `Register` that follows as 1.37 does for a socket it has connected.
    let sock = s.plugin_dir().join("kubelet.sock");
    let aside = s.plugin_dir().join("kubelet.sock.aside");
    s.kubelet.refuse_next_as(
        3,
        tonic::Status::unknown(format!("device plugin already connected: {}", s.plugin_dir().join(T4_SOCK).display())),
    );
    std::fs::rename(&sock, &aside).expect("move kubelet.sock");
    std::fs::rename(&aside, &sock).expect("move kubelet.sock back");
    s.kubelet
        .wait_for("the refusal", WAIT, |r| r.refused.iter().find(|w| w.contains("already connected")).cloned())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = s.manager.plugin_status(T4).expect("plugin");
    assert!(st.registered && st.last_error.is_none() && st.open_streams == 1, "{st:?}");
    assert_eq!(st.registrations, 1, "{st:?}");
    s.manager.shutdown().await;
}

#[tokio::test]
async fn a_deleted_plugin_socket_is_recreated_and_registered_again() {
    let s = setup(vec![]).await;
    first_list(&s.kubelet, T4).await;
    let old = s.kubelet.wait_for("T4 registration", WAIT, |r| r.registrations_of(T4).first().cloned()).await;
    std::fs::remove_file(s.plugin_dir().join(T4_SOCK)).expect("delete socket");
    let reg = s.kubelet.wait_for("T4 registered again", WAIT, |r| r.registrations_of(T4).get(1).cloned()).await;
    assert_eq!(reg.generation, 0, "the same kubelet");
    assert!(is_socket(&s.plugin_dir().join(T4_SOCK)));
    // The old stream ended before the new registration, so the kubelet's clean-up of the old
    // client (it disconnects whichever client the resource has when a stream ends) hit the old
    // client, not the new one.
    let end =
        s.kubelet.wait_for("old stream end", WAIT, |r| r.ends.iter().find(|e| e.stream == old.stream).cloned()).await;
    assert!(end.at <= reg.at, "the old stream must end before the plugin registers again");
    assert_eq!(s.kubelet.record().disconnects, vec![(T4.to_string(), old.stream)]);
    let list = s
        .kubelet
        .wait_for("list on the new stream", WAIT, |r| {
            r.lists(T4).into_iter().find(|u| u.stream == reg.stream).map(|u| u.devices.clone())
        })
        .await;
    assert_eq!(list, vec![healthy(intel::GPU_A, 0)]);
    // The kubelet talks to the new server.
    let mut c = s.kubelet.client(T4).await;
    assert!(c.allocate(allocate_request(&[&[intel::GPU_A]])).await.is_ok());
    // RTX was left alone.
    assert_eq!(s.kubelet.record().registrations_of(RTX).len(), 1);
    s.manager.shutdown().await;
}

#[tokio::test]
async fn serves_before_the_kubelet_exists_replacing_a_stale_socket_then_registers_when_it_appears() {
    let tree = intel_gpu_server();
    let dir = tree.path(PLUGIN_DIR);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join(T4_SOCK), "stale").expect("stale file");
    let (_tx, manager) = start_manager(&tree, vec![ResourceSpec::Pci(T4.into())]).await;
    assert!(is_socket(&dir.join(T4_SOCK)), "the stale file was replaced by a listening socket");
    let st = manager.plugin_status(T4).expect("T4");
    assert!(st.serving && !st.registered, "{st:?}");

    let kubelet = Kubelet::start(&dir).await;
    let created = kubelet.record().sock_created[0];
    let reg = kubelet.wait_for("registration", WAIT, |r| r.registrations_of(T4).first().cloned()).await;
    assert!(reg.at.duration_since(created) < Duration::from_secs(1));
    assert_eq!(first_list(&kubelet, T4).await, vec![healthy(intel::GPU_A, 0)]);
    manager.shutdown().await;
}

#[tokio::test]
async fn a_refused_registration_is_retried_by_the_periodic_check() {
    let tree = intel_gpu_server();
    let kubelet = Kubelet::start(&tree.path(PLUGIN_DIR)).await;
    kubelet.refuse_next(1);
    let (_tx, rx) = watch::channel(scan(&tree));
    let mut opts = ManagerOptions::new(HostRoot::new(tree.root()));
    opts.resources = vec![ResourceSpec::Pci(T4.into())];
    opts.check_interval = Duration::from_millis(200);
    let manager = Manager::new(opts, rx).expect("resources").start().await.expect("start");
    kubelet.wait_for("the refusal", WAIT, |r| r.refused.first().cloned()).await;
    let refused_at = std::time::Instant::now();
    // The plugin reports why, with the kubelet's socket and the gRPC status.
    let err = wait_status(&manager, T4, |s| s.last_error.is_some()).await.last_error.expect("error");
    let kubelet_sock = tree.path(PLUGIN_DIR).join("kubelet.sock");
    assert_eq!(
        err,
        format!(
            "register {T4} with the kubelet at {}: refused: Unavailable: {T4}: not ready (refused on purpose)",
            kubelet_sock.display()
        )
    );
    // Nothing happens in the directory: the periodic check registers again.
    let reg = kubelet.wait_for("registration", WAIT, |r| r.registrations_of(T4).first().cloned()).await;
    let took = reg.at.duration_since(refused_at);
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(1), "{took:?}");
    // (The stand-in records a registration before it answers.)
    let st = wait_status(&manager, T4, |s| s.registered).await;
    assert!(st.last_error.is_none() && st.registrations == 1, "{st:?}");
    manager.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_an_empty_list_and_removes_the_sockets() {
    let s = setup(vec![ResourceSpec::Counted(CountedResource::peer_pods(10))]).await;
    for r in [T4, RTX, VM] {
        first_list(&s.kubelet, r).await;
    }
    let dir = s.plugin_dir();
    s.manager.shutdown().await;
    for r in [T4, RTX, VM] {
        let end = s
            .kubelet
            .wait_for(&format!("{r} stream end"), WAIT, |rec| rec.ends.iter().find(|e| e.resource == r).cloned())
            .await;
        assert_eq!(end.result, Ok(()), "{r}: the stream ends cleanly");
        let rec = s.kubelet.record();
        let lists = rec.lists(r);
        assert!(lists.len() >= 2 && !lists[0].devices.is_empty(), "{r}: {lists:?}");
        assert!(lists.last().expect("last").devices.is_empty(), "{r}: the last list is empty");
        assert!(lists.last().expect("last").at <= end.at);
        assert!(!dir.join(nodeprep::deviceplugin::socket_name(r)).exists(), "{r}: socket removed");
    }
    assert!(is_socket(&dir.join("kubelet.sock")), "the kubelet's socket is not ours to remove");
}

#[tokio::test]
async fn counted_resources_advertise_n_devices_and_hand_out_their_node() {
    let s = setup(vec![
        ResourceSpec::Counted(CountedResource::kvm(10)),
        ResourceSpec::Counted(CountedResource::peer_pods(10)),
    ])
    .await;
    let kvm = first_list(&s.kubelet, KVM).await;
    let ids: Vec<&str> = kvm.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, (0..10).map(|i| format!("kvm-{i}")).collect::<Vec<_>>());
    assert!(kvm.iter().all(|d| d.health == "Healthy" && d.topology.is_none()));
    let vm = first_list(&s.kubelet, VM).await;
    assert_eq!(
        vm.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        (0..10).map(|i| format!("vm-{i}")).collect::<Vec<_>>()
    );
    let reg = s.kubelet.wait_for("kvm registration", WAIT, |r| r.registrations_of(KVM).first().cloned()).await;
    assert_eq!(reg.request.endpoint, "devices.kubevirt.io-kvm.sock");

    let mut c = s.kubelet.client(KVM).await;
    let r = c.allocate(allocate_request(&[&["kvm-3", "kvm-4"], &["kvm-9"]])).await.expect("kvm").into_inner();
    assert_eq!(r.container_responses.len(), 2);
    for cr in &r.container_responses {
        assert_eq!(cr.devices, vec![spec("/dev/kvm", "rw")]);
        assert!(cr.envs.is_empty());
    }
    let e = c.allocate(allocate_request(&[&["kvm-10"]])).await.expect_err("unknown id");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("kvm-10"), "{}", e.message());
    let r = c.get_preferred_allocation(PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: vec!["kvm-7".into(), "kvm-2".into(), "kvm-5".into()],
            must_include_device_i_ds: vec!["kvm-5".into()],
            allocation_size: 2,
        }],
    });
    assert_eq!(r.await.expect("preferred").into_inner().container_responses[0].device_i_ds, ["kvm-5", "kvm-7"]);
    s.tree.remove("dev/kvm");
    let e = c.allocate(allocate_request(&[&["kvm-1"]])).await.expect_err("no /dev/kvm");
    assert_eq!(e.message(), format!("{KVM}: cannot allocate: /dev/kvm does not exist on the host"));

    let mut c = s.kubelet.client(VM).await;
    let r = c.allocate(allocate_request(&[&["vm-0", "vm-1"]])).await.expect("vm").into_inner();
    assert_eq!(r.container_responses.len(), 1);
    assert!(r.container_responses[0].devices.is_empty() && r.container_responses[0].envs.is_empty());
    s.manager.shutdown().await;
}

/// Two endpoints of one IOMMU group (the Quadro and its audio function, both on vfio-pci) in one
/// resource: the kubelet may offer them to two containers, but a group opens in one VM only.
#[tokio::test]
async fn allocate_refuses_a_device_whose_group_another_container_holds() {
    const FUNCS: &str = "example.com/gpu_fn";
    const POD: &str = "4f0c2a7e-9b1d-4c3e-8a55-0d6b2f1e7c90";
    let tree = intel_gpu_server();
    let root = HostRoot::new(tree.root());
    let config = Config::parse(&format!(
        "devices:\n  - resourceName: {FUNCS}\n    selectors: {{pciAddresses: [\"{}\", \"{}\"]}}\n",
        intel::GPU_B,
        intel::GPU_B_AUDIO
    ))
    .expect("config");
    let plugins = tree.path(PLUGIN_DIR);
    let mut sim = support::kernel_sim::KernelSim::new(&tree);
    nodeprep::bind::bind_per_config(&root, &config, &plugins, &mut sim).expect("bind the group");
    let kubelet = Kubelet::start(&plugins).await;
    let inv = nodeprep::host::pci::discover(&root).expect("discover");
    let (_tx, rx) = watch::channel(resource_devices(&inv, &config.claims(&inv).expect("claims")));
    let mut opts = ManagerOptions::new(root.clone());
    opts.resources = vec![ResourceSpec::Pci(FUNCS.into())];
    let manager = Manager::new(opts, rx).expect("resources").start().await.expect("starts");
    let list = first_list(&kubelet, FUNCS).await;
    assert!(list.iter().all(|d| d.health == "Healthy") && list.len() == 2, "{list:?}");
    let mut c = kubelet.client(FUNCS).await;

    // The kubelet gave the GPU to a container of another pod.
    let checkpoint = |ids: &str| {
        tree.file(
            &format!("{PLUGIN_DIR}/kubelet_internal_checkpoint"),
            format!(
                r#"{{"Data":{{"PodDeviceEntries":[{{"PodUID":"{POD}","ContainerName":"compute","ResourceName":"{FUNCS}","DeviceIDs":{{"1":[{ids}]}},"AllocResp":"CgA="}}]}},"Checksum":1}}"#
            ),
        )
    };
    checkpoint(&format!("{:?}", intel::GPU_B));
    let e = c.allocate(allocate_request(&[&[intel::GPU_B_AUDIO]])).await.expect_err("group held by another pod");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("IOMMU group 20")
            && e.message().contains(&format!("pod {POD} (container compute)"))
            && e.message().contains(intel::GPU_B),
        "{}",
        e.message()
    );

    // The same container asking again (a re-Allocate), or both functions in one request: fine.
    c.allocate(allocate_request(&[&[intel::GPU_B]])).await.expect("re-Allocate of the holder");
    c.allocate(allocate_request(&[&[intel::GPU_B, intel::GPU_B_AUDIO]])).await.expect("the whole group at once");
    c.allocate(allocate_request(&[&[intel::GPU_B], &[intel::GPU_B_AUDIO]])).await.expect("one request, one pod");

    // Nobody holds the group: fine. An unreadable checkpoint: refused, naming the file.
    checkpoint("");
    c.allocate(allocate_request(&[&[intel::GPU_B_AUDIO]])).await.expect("group free");
    tree.file(&format!("{PLUGIN_DIR}/kubelet_internal_checkpoint"), "{garbage");
    let e = c.allocate(allocate_request(&[&[intel::GPU_B_AUDIO]])).await.expect_err("cannot tell");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("kubelet_internal_checkpoint"), "{}", e.message());
    manager.shutdown().await;
}
