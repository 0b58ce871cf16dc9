//! What the host uses through each PCI function: [`super::net`] finds its network interfaces,
//! [`super::block`] its disks and what is mounted, swapped or stacked on them.
//!
//! Interfaces and disks are found from `sys/class/net` and `sys/class/block`: each entry links
//! into `sys/devices/...`, and the last PCI address on that path is the function it sits behind.
//! This covers NVMe (`.../nvme/nvme0/nvme0n1`), SATA/SAS (`.../ata1/host0/.../block/sda`),
//! virtio (`.../virtio1/block/vda`) and USB alike.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path};

use super::root::{HostError, HostRoot};
use crate::model::{PciAddress, PciInventory};

/// A `sys/class/{net,block}` entry and the PCI function it sits behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassEntry {
    pub name: String,
    /// The link target, relative to `sys/class/<class>`.
    pub target: String,
    pub pci: Option<PciAddress>,
}

/// Pure: the last PCI address among a sysfs path's components.
pub fn pci_ancestor(path: &Path) -> Option<PciAddress> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .filter(|s| s.len() >= 12 && s.as_bytes().get(s.len() - 2) == Some(&b'.'))
        .filter_map(|s| s.parse::<PciAddress>().ok())
        .next_back()
}

/// `sys/class/<class>` with each entry's link target and PCI function. An entry whose link
/// cannot be read fails the whole table: its device could be anyone's.
pub(super) fn class_entries(root: &HostRoot, class: &str) -> Result<Vec<ClassEntry>, HostError> {
    let dir = root.join(format!("sys/class/{class}"));
    let mut out = Vec::new();
    for name in super::root::list_dir(&dir)? {
        let link = dir.join(&name);
        let t = fs::read_link(&link).map_err(|e| HostError::io("readlink", &link, e))?;
        out.push(ClassEntry { pci: pci_ancestor(&t), name, target: t.to_string_lossy().into_owned() });
    }
    Ok(out)
}

/// Reads the host's network interfaces, disks, mount tables and routes, and records on each
/// device what the host uses through it. Unreadable tables become inventory warnings.
pub fn attach(root: &HostRoot, inv: &mut PciInventory) {
    let mut warnings = Vec::new();
    let by_addr: HashMap<PciAddress, usize> = inv.devices.iter().enumerate().map(|(i, d)| (d.address, i)).collect();
    super::net::attach(root, inv, &by_addr, &mut warnings);
    super::block::attach(root, inv, &by_addr, &mut warnings);
    inv.warnings.extend(warnings);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ancestor_is_the_last_pci_component() {
        let t = Path::new("../../devices/pci0000:00/0000:00:1c.0/0000:3b:00.0/nvme/nvme0/nvme0n1");
        assert_eq!(pci_ancestor(t).map(|a| a.to_string()).as_deref(), Some("0000:3b:00.0"));
        assert_eq!(pci_ancestor(Path::new("../../devices/virtual/net/lo")), None);
        let v = Path::new("../../devices/pci10000:e0/10000:e0:01.0/10000:e1:00.0/virtio1/block/vda");
        assert_eq!(pci_ancestor(v).map(|a| a.to_string()).as_deref(), Some("10000:e1:00.0"));
    }
}
