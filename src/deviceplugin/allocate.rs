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

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tonic::Status;

use super::api::{AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse, DeviceSpec};
use super::cdi::{self, CdiSpec};
pub use crate::grant::{IOMMUFD, VFIO_CONTAINER, VfioDevice, VfioHost, cdev_node, kubevirt_env_name, sriov_env_name};
use crate::host::HostRoot;
use crate::host::kubelet::Allocation;
pub use crate::host::vfio::{read_vfio_device, read_vfio_host};
use crate::model::PciAddress;

/// Cgroup device permissions for vfio nodes (KubeVirt's choice).
pub const VFIO_PERMISSIONS: &str = "mrw";
/// Cgroup device permissions for a counted resource's device node.
pub const COUNTED_PERMISSIONS: &str = "rw";

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
    let envs: HashMap<String, String> = crate::grant::env(resource_name, devices).into_iter().collect();
    match cdi_kind {
        Some(kind) => ContainerAllocateResponse {
            envs,
            cdi_devices: devices.iter().map(|d| CdiDevice { name: cdi::qualified_name(kind, d) }).collect(),
            ..Default::default()
        },
        None => ContainerAllocateResponse {
            envs,
            devices: crate::grant::device_nodes(devices, host).iter().map(|p| spec(p, VFIO_PERMISSIONS)).collect(),
            ..Default::default()
        },
    }
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
