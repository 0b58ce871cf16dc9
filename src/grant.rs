//! Pure: what a container gets for the vfio devices it is given — the one allocation core under
//! both kubelet fronts. The device plugins' Allocate ([`crate::deviceplugin::allocate`]) and
//! DRA's Prepare ([`crate::dra::prepare`]) both hand out exactly this:
//! - device nodes: `/dev/vfio/vfio` (the VFIO container every vfio user opens), each IOMMU
//!   group's node (`/dev/vfio/7`, or `/dev/vfio/noiommu-7` for a no-IOMMU group), and with
//!   iommufd `/dev/iommu` and each device's VFIO character device (`/dev/vfio/devices/vfio0`);
//! - the same as CDI container edits ([`cdi_edits`]);
//! - variables: `PCI_RESOURCE_<NAME>` (KubeVirt's virt-launcher), `PCIDEVICE_<NAME>` and
//!   `PCIDEVICE_<NAME>_INFO` (the SR-IOV network device plugin's, which DPDK apps read).
//!
//! The facts come from [`VfioDevice`], read from sysfs at the moment of handing out (group
//! numbers can change across reboots, so they are never cached).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::PciAddress;

/// The VFIO container node every vfio user opens.
pub const VFIO_CONTAINER: &str = "/dev/vfio/vfio";
/// The iommufd node.
pub const IOMMUFD: &str = "/dev/iommu";
/// `hostPath` in device nodes needs CDI 0.5.0.
pub const CDI_VERSION: &str = "0.5.0";
/// Cgroup permissions in CDI's spelling.
pub const CDI_PERMISSIONS: &str = "rwm";

/// One device as it was read just now.
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

/// What the host offers every device: read once per Allocate or Prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VfioHost {
    /// `/dev/vfio/vfio` exists.
    pub container: bool,
    /// `/dev/iommu` exists (iommufd).
    pub iommufd: bool,
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

/// Pure: the device's VFIO character device node (`/dev/vfio/devices/vfio0`), handed out only
/// when the host has iommufd.
pub fn cdev_node(device: &VfioDevice, host: &VfioHost) -> Option<String> {
    device.cdev.as_ref().filter(|_| host.iommufd).map(|c| format!("/dev/vfio/devices/{c}"))
}

/// Pure: the nodes a container opens for these devices, each once: the container, the groups'
/// nodes, then with iommufd `/dev/iommu` and the devices' character devices.
pub fn device_nodes(devices: &[VfioDevice], host: &VfioHost) -> Vec<String> {
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

/// Pure: the variables for `resource_name`'s devices in one container: the comma-joined
/// addresses, and per address the JSON the SR-IOV plugin's `generic` and `vfio` info providers
/// give: `{"<addr>":{"generic":{"deviceID":"<addr>"},"vfio":{"mount":"/dev/vfio/vfio","dev-mount":"/dev/vfio/<g>"}}}`.
pub fn env(resource_name: &str, devices: &[VfioDevice]) -> BTreeMap<String, String> {
    let joined = devices.iter().map(|d| d.address.to_string()).collect::<Vec<_>>().join(",");
    let info: serde_json::Map<String, serde_json::Value> = devices
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
    let mut envs = BTreeMap::new();
    envs.insert(kubevirt_env_name(resource_name), joined.clone());
    envs.insert(format!("{sriov}_INFO"), serde_json::Value::Object(info).to_string());
    envs.insert(sriov, joined);
    envs
}

/// One device node in a CDI spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// A bind mount in a CDI spec (DRA's device metadata file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// Edits a CDI device or spec makes to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    /// `NAME=value`, CDI's spelling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// A CDI device node whose container path is its host path.
pub fn cdi_node(path: &str) -> DeviceNode {
    DeviceNode { path: path.to_owned(), host_path: Some(path.to_owned()), permissions: Some(CDI_PERMISSIONS.into()) }
}

/// Pure: the CDI edits for `nodes` and `env` (sorted by name).
pub fn cdi_edits(nodes: &[String], env: &BTreeMap<String, String>) -> ContainerEdits {
    ContainerEdits {
        env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        device_nodes: nodes.iter().map(|n| cdi_node(n)).collect(),
        mounts: Vec::new(),
    }
}

/// Pure: what one device adds to a container beyond `/dev/vfio/vfio`: its group's node, and
/// with iommufd `/dev/iommu` and its VFIO character device.
pub fn own_nodes(device: &VfioDevice, host: &VfioHost) -> Vec<String> {
    let mut nodes = vec![device.group_node()];
    if let Some(c) = cdev_node(device, host) {
        nodes.push(IOMMUFD.to_owned());
        nodes.push(c);
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(a: &str, group: u32, cdev: Option<&str>) -> VfioDevice {
        VfioDevice {
            address: a.parse().expect("address"),
            group,
            no_iommu: false,
            cdev: cdev.map(str::to_owned),
            peers: Vec::new(),
        }
    }

    #[test]
    fn nodes_are_listed_once_container_first() {
        let host = VfioHost { container: true, iommufd: true };
        let devs = [dev("0000:3b:00.0", 7, Some("vfio0")), dev("0000:3b:00.1", 7, Some("vfio1"))];
        assert_eq!(
            device_nodes(&devs, &host),
            ["/dev/vfio/vfio", "/dev/vfio/7", "/dev/iommu", "/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1"]
        );
        let no_fd = VfioHost { container: true, iommufd: false };
        assert_eq!(device_nodes(&devs, &no_fd), ["/dev/vfio/vfio", "/dev/vfio/7"]);
        assert_eq!(own_nodes(&devs[0], &host), ["/dev/vfio/7", "/dev/iommu", "/dev/vfio/devices/vfio0"]);
    }

    #[test]
    fn variables_name_every_address() {
        let devs = [dev("0000:3b:00.0", 7, None), dev("0000:5e:00.0", 9, None)];
        let env = env("intel.com/qat-vf", &devs);
        assert_eq!(env["PCI_RESOURCE_INTEL_COM_QAT-VF"], "0000:3b:00.0,0000:5e:00.0");
        assert_eq!(env["PCIDEVICE_INTEL_COM_QAT-VF"], "0000:3b:00.0,0000:5e:00.0");
        let info: serde_json::Value =
            serde_json::from_str(&env["PCIDEVICE_INTEL_COM_QAT-VF_INFO"]).expect("info is JSON");
        assert_eq!(info["0000:5e:00.0"]["vfio"]["dev-mount"], "/dev/vfio/9");
        let edits = cdi_edits(&["/dev/vfio/9".into()], &env);
        assert!(edits.env.contains(&"PCI_RESOURCE_INTEL_COM_QAT-VF=0000:3b:00.0,0000:5e:00.0".to_owned()));
        assert_eq!(edits.device_nodes[0].permissions.as_deref(), Some("rwm"));
    }
}
