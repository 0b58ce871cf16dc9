//! Allocate: what a container gets for the devices the kubelet gives it.
//!
//! Each device is read again from sysfs at Allocate time ([`read_vfio_device`], the only part
//! that does I/O): it must still be present, on vfio-pci, with every endpoint of its IOMMU group
//! on vfio-pci. The IOMMU group number is taken from the `iommu_group` link *now* and never
//! cached, because group numbers can change across reboots (SR-IOV device plugin #451). A device
//! that is no longer usable fails the whole RPC with `FAILED_PRECONDITION`, naming the device and
//! the reason, so the pod fails with a message a person can act on instead of a VM that cannot
//! open its device.
//!
//! What the container gets ([`container_response`], pure):
//! - DeviceSpecs, permissions `mrw`, container path = host path: `/dev/vfio/vfio`; per IOMMU
//!   group `/dev/vfio/<group>`, or `/dev/vfio/noiommu-<group>` for a no-IOMMU group (its
//!   `name` reads `vfio-noiommu`; the kernel then has no `/dev/vfio/<group>`); when the host has
//!   iommufd (`/dev/iommu`) and the device a VFIO character device (`<device>/vfio-dev/vfioN`,
//!   kernels with `CONFIG_VFIO_DEVICE_CDEV`), also `/dev/iommu` and `/dev/vfio/devices/vfioN`.
//!   Host paths are the paths the kubelet and the runtime see (`/dev/vfio/7`), never prefixed
//!   with the host root; their existence is checked under the host root.
//! - Environment: `PCI_RESOURCE_<NAME>` (KubeVirt's virt-launcher, [`kubevirt_env_name`]),
//!   `PCIDEVICE_<NAME>` and `PCIDEVICE_<NAME>_INFO` (the SR-IOV network device plugin's,
//!   [`sriov_env_name`]): the comma-joined addresses of this container's devices, and per address
//!   the JSON the SR-IOV plugin's `generic` and `vfio` info providers give:
//!   `{"<addr>":{"generic":{"deviceID":"<addr>"},"vfio":{"mount":"/dev/vfio/vfio","dev-mount":"/dev/vfio/<g>"}}}`.
//!
//! Counted resources (no PCI device behind them) get the configured device node, if any, with
//! permissions `rw` ([`counted_response`]).
//!
//! Allocates that arrive together share their reads ([`SharedReads`]): a read of a device is
//! reused only by requests that had arrived before the read started, so every answer still
//! reflects sysfs as it was after its request arrived, and a burst of Allocates for one device
//! costs one read instead of one per request.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tonic::Status;

use super::api::{AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse, DeviceSpec};
use super::cdi::{self, CdiSpec};
use super::devices::VFIO_PCI;
use crate::host::HostRoot;
use crate::host::kubelet::Allocation;
use crate::host::root::{link_name, list_dir, read_attr};
use crate::model::PciAddress;
use crate::model::pci::is_bridge_class;

/// The VFIO container node every vfio user opens.
pub const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
/// The iommufd node.
pub const IOMMUFD: &str = "/dev/iommu";
/// Cgroup device permissions for vfio nodes (KubeVirt's choice).
pub const VFIO_PERMISSIONS: &str = "mrw";
/// Cgroup device permissions for a counted resource's device node.
pub const COUNTED_PERMISSIONS: &str = "rw";

const DEVICES_DIR: &str = "sys/bus/pci/devices";
const GROUPS_DIR: &str = "sys/kernel/iommu_groups";

/// One device as Allocate found it just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioDevice {
    pub address: PciAddress,
    /// Its IOMMU group, read from the `iommu_group` link at Allocate time.
    pub group: u32,
    /// The group is a no-IOMMU group (`vfio-noiommu`).
    pub no_iommu: bool,
    /// Its VFIO character device (`vfio0`), when the kernel made one and `/dev/vfio/devices/`
    /// has it.
    pub cdev: Option<String>,
    /// The other endpoints of its IOMMU group (bridges aside): with any, the group must not go
    /// to two containers.
    pub peers: Vec<String>,
}

impl VfioDevice {
    /// The group's node as the kubelet sees it: `/dev/vfio/7` or `/dev/vfio/noiommu-7`.
    pub fn group_node(&self) -> String {
        if self.no_iommu { format!("/dev/vfio/noiommu-{}", self.group) } else { format!("/dev/vfio/{}", self.group) }
    }
}

/// What the host offers every device: read once per Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VfioHost {
    /// `/dev/vfio/vfio` exists.
    pub container: bool,
    /// `/dev/iommu` exists (iommufd).
    pub iommufd: bool,
}

/// Reads the host's vfio nodes under the host root.
pub fn read_vfio_host(root: &HostRoot) -> VfioHost {
    VfioHost { container: root.exists(VFIO_CONTAINER), iommufd: root.exists(IOMMUFD) }
}

/// Reads one device now and says whether a VM can use it: present, on vfio-pci, every endpoint of
/// its IOMMU group on vfio-pci, the group's node in `/dev/vfio`. The error says why not, in words.
pub fn read_vfio_device(root: &HostRoot, host: &VfioHost, address: PciAddress) -> Result<VfioDevice, String> {
    let dir = root.join(DEVICES_DIR).join(address.to_string());
    let driver = match link_name(&dir.join("driver")) {
        Ok(d) => Some(d),
        Err(e) if e.is_not_found() => {
            if !dir.exists() {
                return Err("the device is no longer present".into());
            }
            None
        }
        Err(e) => return Err(format!("cannot read its driver: {e}")),
    };
    match driver.as_deref() {
        Some(VFIO_PCI) => {}
        Some(other) => return Err(format!("it is bound to {other}, not vfio-pci")),
        None => return Err("it is bound to no driver, not vfio-pci".into()),
    }
    let group = match link_name(&dir.join("iommu_group")) {
        Ok(g) => g.parse::<u32>().map_err(|_| format!("its iommu_group link names {g:?}, not a group number"))?,
        Err(e) if e.is_not_found() => return Err("it has no IOMMU group (is the IOMMU on?)".into()),
        Err(e) => return Err(format!("cannot read its IOMMU group: {e}")),
    };
    let group_dir = format!("{GROUPS_DIR}/{group}");
    let members = root.list_dir(format!("{group_dir}/devices")).map_err(|e| format!("IOMMU group {group}: {e}"))?;
    let mut off = Vec::new();
    let mut peers = Vec::new();
    for m in members.iter().filter(|m| **m != address.to_string()) {
        let mdir = root.join(DEVICES_DIR).join(m);
        let class =
            read_attr(&mdir.join("class")).ok().and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok());
        if class.is_some_and(is_bridge_class) {
            continue;
        }
        peers.push(m.clone());
        match link_name(&mdir.join("driver")) {
            Ok(d) if d == VFIO_PCI => {}
            Ok(d) => off.push(format!("{m} ({d})")),
            Err(_) => off.push(format!("{m} (no driver)")),
        }
    }
    if !off.is_empty() {
        return Err(format!("IOMMU group {group} is not viable: {} not on vfio-pci", off.join(", ")));
    }
    let no_iommu =
        root.read_optional(format!("{group_dir}/name")).ok().flatten().is_some_and(|n| n.trim() == "vfio-noiommu");
    let mut dev = VfioDevice { address, group, no_iommu, cdev: None, peers };
    if !host.container {
        return Err(format!("{VFIO_CONTAINER} does not exist on the host (is the vfio module loaded?)"));
    }
    let node = dev.group_node();
    if !root.exists(&node) {
        return Err(format!("its IOMMU group's node {node} does not exist on the host"));
    }
    if host.iommufd {
        dev.cdev = list_dir(&dir.join("vfio-dev"))
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.starts_with("vfio") && root.exists(format!("dev/vfio/devices/{n}")));
    }
    Ok(dev)
}

/// One read and when it started.
#[derive(Debug, Clone)]
struct Read<T> {
    started: Instant,
    value: T,
}

impl<T: Clone> Read<T> {
    /// The value, if the read started no earlier than `arrived`.
    fn fresh_for(&self, arrived: Instant) -> Option<T> {
        (self.started >= arrived).then(|| self.value.clone())
    }
}

#[derive(Debug, Default)]
struct Reads {
    host: Option<Read<VfioHost>>,
    devices: HashMap<PciAddress, Read<Result<VfioDevice, String>>>,
}

/// Reads shared by the Allocates of one resource (single flight). A request that arrived at
/// `arrived` reuses a read only if that read started at or after `arrived`; otherwise it reads
/// again. The lock is held while reading, so concurrent requests wait for the read under way
/// instead of starting their own. Holds one entry per device ever allocated (the resource's
/// devices at most).
#[derive(Debug, Default)]
pub struct SharedReads {
    reads: Mutex<Reads>,
}

impl SharedReads {
    /// The host's vfio nodes, read after `arrived`.
    pub fn host(&self, root: &HostRoot, arrived: Instant) -> VfioHost {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = reads.host.as_ref().and_then(|r| r.fresh_for(arrived)) {
            return h;
        }
        let started = Instant::now();
        let value = read_vfio_host(root);
        reads.host = Some(Read { started, value });
        value
    }

    /// One device, read after `arrived` ([`read_vfio_device`]).
    pub fn device(
        &self,
        root: &HostRoot,
        host: &VfioHost,
        address: PciAddress,
        arrived: Instant,
    ) -> Result<VfioDevice, String> {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = reads.devices.get(&address).and_then(|r| r.fresh_for(arrived)) {
            return d;
        }
        let started = Instant::now();
        let value = read_vfio_device(root, host, address);
        reads.devices.insert(address, Read { started, value: value.clone() });
        value
    }
}

/// Pure: `PCI_RESOURCE_<NAME>`, the variable KubeVirt's virt-launcher reads: the resource name
/// upper-cased, `/` and `.` turned into `_`, `-` kept.
/// `nvidia.com/TU104GL_Tesla_T4` gives `PCI_RESOURCE_NVIDIA_COM_TU104GL_TESLA_T4`.
pub fn kubevirt_env_name(resource_name: &str) -> String {
    format!("PCI_RESOURCE_{}", resource_name.to_ascii_uppercase().replace(['/', '.'], "_"))
}

/// Pure: `PCIDEVICE_<NAME>`, the SR-IOV network device plugin's variable, named as
/// [`kubevirt_env_name`] is: upper-cased, `/` and `.` to `_`, `-` kept (the SR-IOV plugin,
/// KubeVirt's SR-IOV reader and OVN-Kubernetes all compute it so; `intel.com/qat-vf` gives
/// `PCIDEVICE_INTEL_COM_QAT-VF`). Its `_INFO` companion appends `_INFO`.
pub fn sriov_env_name(resource_name: &str) -> String {
    format!("PCIDEVICE_{}", resource_name.to_ascii_uppercase().replace(['/', '.'], "_"))
}

fn spec(path: &str, permissions: &str) -> DeviceSpec {
    DeviceSpec { container_path: path.to_owned(), host_path: path.to_owned(), permissions: permissions.to_owned() }
}

/// Pure: what one container gets for its vfio devices (see the module docs). Nodes shared by
/// several devices (one group) are listed once. With a CDI kind the devices are named by CDI
/// ([`super::cdi`]) instead of listed as DeviceSpecs, so the runtime creates each node once.
pub fn container_response(
    resource_name: &str,
    devices: &[VfioDevice],
    host: &VfioHost,
    cdi_kind: Option<&str>,
) -> ContainerAllocateResponse {
    let addresses: Vec<String> = devices.iter().map(|d| d.address.to_string()).collect();
    let joined = addresses.join(",");
    let info: BTreeMap<String, serde_json::Value> = devices
        .iter()
        .map(|d| {
            let a = d.address.to_string();
            let v = serde_json::json!({
                "generic": { "deviceID": a },
                "vfio": { "mount": VFIO_CONTAINER, "dev-mount": d.group_node() },
            });
            (a, v)
        })
        .collect();
    let sriov = sriov_env_name(resource_name);
    let mut envs = HashMap::new();
    envs.insert(kubevirt_env_name(resource_name), joined.clone());
    envs.insert(format!("{sriov}_INFO"), serde_json::Value::from(serde_json::Map::from_iter(info)).to_string());
    envs.insert(sriov, joined);
    match cdi_kind {
        Some(kind) => ContainerAllocateResponse {
            envs,
            cdi_devices: devices.iter().map(|d| CdiDevice { name: cdi::qualified_name(kind, d) }).collect(),
            ..Default::default()
        },
        None => ContainerAllocateResponse {
            envs,
            devices: device_paths(devices, host).iter().map(|p| spec(p, VFIO_PERMISSIONS)).collect(),
            ..Default::default()
        },
    }
}

/// Pure: the device's VFIO character device node (`/dev/vfio/devices/vfio0`), handed out only
/// when the host has iommufd.
pub fn cdev_node(device: &VfioDevice, host: &VfioHost) -> Option<String> {
    device.cdev.as_ref().filter(|_| host.iommufd).map(|c| format!("/dev/vfio/devices/{c}"))
}

/// Pure: the nodes a container opens for these devices, each once: the container, the groups'
/// nodes, then with iommufd `/dev/iommu` and the devices' character devices.
fn device_paths(devices: &[VfioDevice], host: &VfioHost) -> Vec<String> {
    let mut paths: Vec<String> = vec![VFIO_CONTAINER.to_owned()];
    paths.extend(devices.iter().map(VfioDevice::group_node));
    let cdevs: Vec<String> = devices.iter().filter_map(|d| cdev_node(d, host)).collect();
    if !cdevs.is_empty() {
        paths.push(IOMMUFD.to_owned());
        paths.extend(cdevs);
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    paths
}

/// Pure: what a container gets for devices of a counted resource: the device node, if any.
pub fn counted_response(device_path: Option<&str>) -> ContainerAllocateResponse {
    ContainerAllocateResponse {
        devices: device_path.map(|p| spec(p, COUNTED_PERMISSIONS)).into_iter().collect(),
        ..Default::default()
    }
}

/// Allocate for a PCI resource: every id must be one of `known` (the resource's devices now) and
/// usable when read again; otherwise `FAILED_PRECONDITION` naming the device and why. Every read
/// is made now.
pub fn allocate_pci(
    root: &HostRoot,
    resource_name: &str,
    known: impl Fn(&str) -> bool,
    req: &AllocateRequest,
    cdi: Option<&CdiSpec>,
) -> Result<AllocateResponse, Status> {
    let host = read_vfio_host(root);
    allocate_pci_with(resource_name, known, req, host, cdi, |a| read_vfio_device(root, &host, a))
}

/// Pure: why this request may not have its devices: one of them shares an IOMMU group with a
/// device the kubelet gave another container (a group can be opened by one VM only).
/// `groups` lists, per requested id, its group and the group's other endpoints. Ids of the same
/// request may share a group; an allocation that also holds a requested id is this container's
/// own (a re-Allocate) and is no conflict.
pub fn group_conflict(
    req: &AllocateRequest,
    groups: &[(String, u32, Vec<String>)],
    allocations: &[Allocation],
) -> Option<String> {
    let requested: Vec<&str> =
        req.container_requests.iter().flat_map(|c| c.devices_ids.iter()).map(String::as_str).collect();
    let is_requested = |id: &str| requested.iter().any(|r| r.eq_ignore_ascii_case(id));
    for (id, group, others) in groups {
        for m in others.iter().filter(|m| !is_requested(m)) {
            let Some(a) = allocations.iter().find(|a| a.holds(m)) else { continue };
            if a.device_ids.iter().any(|d| is_requested(d)) {
                continue;
            }
            return Some(format!(
                "{id} is in IOMMU group {group}, which pod {} (container {}) already holds through {m} ({}): a group goes to one container only",
                a.pod_uid, a.container_name, a.resource_name
            ));
        }
    }
    None
}

/// [`allocate_pci`] for a request that arrived at `arrived`, with reads shared with the requests
/// that arrived together ([`SharedReads`]). A device whose IOMMU group has other endpoints is
/// then refused (`FAILED_PRECONDITION`) when another container holds one of them
/// ([`group_conflict`], from the kubelet's checkpoint in `plugin_dir`). Devices alone in their
/// group (bridges aside) need no checkpoint read; a checkpoint that cannot be read refuses the
/// devices it would have to clear (fail closed).
#[allow(clippy::too_many_arguments)]
pub fn allocate_pci_shared(
    root: &HostRoot,
    reads: &SharedReads,
    arrived: Instant,
    resource_name: &str,
    known: impl Fn(&str) -> bool,
    req: &AllocateRequest,
    cdi: Option<&CdiSpec>,
    plugin_dir: &Path,
) -> Result<AllocateResponse, Status> {
    let host = reads.host(root, arrived);
    // The group's other endpoints come with each device's read.
    let mut groups: Vec<(String, u32, Vec<String>)> = Vec::new();
    let response = allocate_pci_with(resource_name, known, req, host, cdi, |a| {
        let read = reads.device(root, &host, a, arrived);
        if let Ok(d) = &read {
            if !d.peers.is_empty() {
                groups.push((a.to_string(), d.group, d.peers.clone()));
            }
        }
        read
    })?;
    if groups.is_empty() {
        return Ok(response);
    }
    let allocations = crate::host::kubelet::read_allocations(plugin_dir).map_err(|e| {
        Status::failed_precondition(format!(
            "cannot tell whether another container holds a device of the same IOMMU group: {e}"
        ))
    })?;
    match group_conflict(req, &groups, &allocations) {
        Some(why) => Err(Status::failed_precondition(why)),
        None => Ok(response),
    }
}

/// Allocate for a PCI resource, with `read` giving each device as it is now. With CDI, the spec
/// is brought up to date with what was read before the names are handed out.
fn allocate_pci_with(
    resource_name: &str,
    known: impl Fn(&str) -> bool,
    req: &AllocateRequest,
    host: VfioHost,
    cdi: Option<&CdiSpec>,
    mut read: impl FnMut(PciAddress) -> Result<VfioDevice, String>,
) -> Result<AllocateResponse, Status> {
    let mut out = AllocateResponse::default();
    for c in &req.container_requests {
        let mut devices = Vec::with_capacity(c.devices_ids.len());
        for id in &c.devices_ids {
            let refuse =
                |why: &str| Status::failed_precondition(format!("{resource_name}: cannot allocate device {id}: {why}"));
            if !known(id) {
                return Err(refuse("nodeprep does not offer it under this resource"));
            }
            let address: PciAddress = id.parse().map_err(|e| refuse(&format!("{e}")))?;
            devices.push(read(address).map_err(|why| refuse(&why))?);
        }
        if let Some(spec) = cdi {
            spec.ensure(&devices, &host)
                .map_err(|e| Status::internal(format!("{resource_name}: cannot allocate: {e}")))?;
        }
        out.container_responses.push(container_response(resource_name, &devices, &host, cdi.map(CdiSpec::kind)));
    }
    Ok(out)
}

/// Allocate for a counted resource: every id must be one of `known`, and the device node, when
/// there is one, must exist on the host.
pub fn allocate_counted(
    root: &HostRoot,
    resource_name: &str,
    device_path: Option<&str>,
    known: impl Fn(&str) -> bool,
    req: &AllocateRequest,
) -> Result<AllocateResponse, Status> {
    let mut out = AllocateResponse::default();
    for c in &req.container_requests {
        if let Some(id) = c.devices_ids.iter().find(|id| !known(id)) {
            return Err(Status::failed_precondition(format!(
                "{resource_name}: cannot allocate device {id}: nodeprep does not offer it under this resource"
            )));
        }
        if let Some(p) = device_path.filter(|p| !root.exists(p)) {
            return Err(Status::failed_precondition(format!(
                "{resource_name}: cannot allocate: {p} does not exist on the host"
            )));
        }
        out.container_responses.push(counted_response(device_path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(addr: &str, group: u32) -> VfioDevice {
        VfioDevice { address: addr.parse().expect("address"), group, no_iommu: false, cdev: None, peers: Vec::new() }
    }

    #[test]
    fn env_names_follow_kubevirt_and_sriov() {
        assert_eq!(kubevirt_env_name("nvidia.com/TU104GL_Tesla_T4"), "PCI_RESOURCE_NVIDIA_COM_TU104GL_TESLA_T4");
        assert_eq!(kubevirt_env_name("intel.com/qat-vf"), "PCI_RESOURCE_INTEL_COM_QAT-VF");
        assert_eq!(sriov_env_name("intel.com/qat-vf"), "PCIDEVICE_INTEL_COM_QAT-VF");
        assert_eq!(
            sriov_env_name("intel.com/qat-vf"),
            kubevirt_env_name("intel.com/qat-vf").replace("PCI_RESOURCE_", "PCIDEVICE_")
        );
        assert_eq!(sriov_env_name("example.co.uk/a.b"), "PCIDEVICE_EXAMPLE_CO_UK_A_B");
    }

    #[test]
    fn one_group_node_per_group_and_every_address_in_the_envs() {
        let host = VfioHost { container: true, iommufd: false };
        let r = container_response("x.io/gpu", &[dev("0000:af:00.0", 20), dev("0000:af:00.1", 20)], &host, None);
        let paths: Vec<&str> = r.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/20"]);
        assert!(r.devices.iter().all(|d| d.container_path == d.host_path && d.permissions == "mrw"));
        assert_eq!(r.envs["PCI_RESOURCE_X_IO_GPU"], "0000:af:00.0,0000:af:00.1");
        assert_eq!(r.envs["PCIDEVICE_X_IO_GPU"], "0000:af:00.0,0000:af:00.1");
        let info: serde_json::Value = serde_json::from_str(&r.envs["PCIDEVICE_X_IO_GPU_INFO"]).expect("json");
        assert_eq!(info["0000:af:00.1"]["vfio"]["dev-mount"], "/dev/vfio/20");
        assert_eq!(info["0000:af:00.1"]["generic"]["deviceID"], "0000:af:00.1");
        assert_eq!(r.envs.len(), 3);
    }

    #[test]
    fn noiommu_and_iommufd_nodes() {
        let mut d = dev("0000:3b:00.0", 6);
        d.no_iommu = true;
        assert_eq!(d.group_node(), "/dev/vfio/noiommu-6");
        d.no_iommu = false;
        d.cdev = Some("vfio3".into());
        let r = container_response("x.io/gpu", &[d.clone()], &VfioHost { container: true, iommufd: true }, None);
        let paths: Vec<&str> = r.devices.iter().map(|d| d.host_path.as_str()).collect();
        assert_eq!(paths, ["/dev/vfio/vfio", "/dev/vfio/6", "/dev/iommu", "/dev/vfio/devices/vfio3"]);
        // Without iommufd the cdev is not handed out.
        let r = container_response("x.io/gpu", &[d.clone()], &VfioHost { container: true, iommufd: false }, None);
        assert_eq!(r.devices.len(), 2);
        // With CDI: the same variables, the devices by CDI name and no DeviceSpec.
        let host = VfioHost { container: true, iommufd: true };
        let c = container_response("x.io/gpu", &[d.clone(), dev("0000:3b:00.1", 6)], &host, Some("nodeprep.io/vfio"));
        assert!(c.devices.is_empty());
        let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nodeprep.io/vfio=0000:3b:00.0", "nodeprep.io/vfio=0000:3b:00.1"]);
        let plain = container_response("x.io/gpu", &[d, dev("0000:3b:00.1", 6)], &host, None);
        assert_eq!(c.envs, plain.envs);
    }

    #[test]
    fn counted_resources_get_their_node_rw() {
        let r = counted_response(Some("/dev/kvm"));
        assert_eq!(r.devices, vec![spec("/dev/kvm", "rw")]);
        assert!(counted_response(None).devices.is_empty());
    }
}
