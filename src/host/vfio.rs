//! Reads, at the moment of handing a device out, whether a VM can use it: present, on vfio-pci,
//! every endpoint of its IOMMU group on vfio-pci, the group's node in `/dev/vfio`, and its VFIO
//! character device when the host has iommufd. Used by the device plugins' Allocate and DRA's
//! Prepare; the group number is read from the `iommu_group` link each time, never cached.

use crate::grant::{IOMMUFD, VFIO_CONTAINER, VfioDevice, VfioHost};
use crate::host::HostRoot;
use crate::host::root::{link_name, list_dir, read_attr};
use crate::model::PciAddress;
use crate::model::pci::{VFIO_PCI, is_bridge_class};

const DEVICES_DIR: &str = "sys/bus/pci/devices";
const GROUPS_DIR: &str = "sys/kernel/iommu_groups";

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
