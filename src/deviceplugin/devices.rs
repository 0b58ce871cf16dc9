//! What each extended resource offers: its devices, their health and NUMA node. A pure function
//! of the host snapshot and the config's claims; the device-plugin servers publish it, and
//! recompute it whenever the host changes.

use std::collections::BTreeMap;

use crate::config::Claim;
use crate::model::{PciAddress, PciInventory};

/// The driver a device must be on to be usable.
pub use crate::model::pci::VFIO_PCI;

/// One device of a resource, as the kubelet will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDevice {
    /// The device ID the kubelet uses: the PCI address.
    pub id: String,
    pub address: PciAddress,
    /// Present, on vfio-pci, and every endpoint of its IOMMU group on vfio-pci.
    pub healthy: bool,
    /// Why it is unhealthy, for logs and Events.
    pub problem: Option<String>,
    pub numa_node: Option<u32>,
    pub iommu_group: Option<u32>,
    /// Its PF, for VFs (GetPreferredAllocation keeps VFs of one PF together).
    pub physfn: Option<PciAddress>,
}

/// Every resource nodeprep advertises and its devices, sorted by id.
pub type ResourceDevices = BTreeMap<String, Vec<PluginDevice>>;

/// Pure: health of one claimed device in the current inventory. A device that is gone is
/// reported unhealthy (the kubelet then stops giving it to new pods); it disappears from the
/// list once the config no longer claims it.
pub fn device_health(inv: &PciInventory, address: PciAddress) -> (bool, Option<String>) {
    let Some(d) = inv.device(&address) else {
        return (false, Some("the device is no longer present".into()));
    };
    if d.driver.as_deref() != Some(VFIO_PCI) {
        return (false, Some(format!("on {} instead of vfio-pci", d.driver.as_deref().unwrap_or("no driver"))));
    }
    let Some(g) = d.iommu_group.and_then(|g| inv.group(g)) else {
        return (false, Some("no IOMMU group".into()));
    };
    let off: Vec<String> = g
        .endpoints
        .iter()
        .filter_map(|a| inv.device(a))
        .filter(|m| m.driver.as_deref() != Some(VFIO_PCI))
        .map(|m| format!("{} ({})", m.address, m.driver.as_deref().unwrap_or("no driver")))
        .collect();
    if off.is_empty() {
        (true, None)
    } else {
        (false, Some(format!("IOMMU group {} is not viable: {} not on vfio-pci", g.number, off.join(", "))))
    }
}

/// Pure: the devices of every resource the claims name. Claims are made on the current
/// inventory, so a removed device is simply gone from its resource's list (the kubelet drops it
/// from Capacity); one that is present but unusable is listed unhealthy (it stays in Capacity,
/// leaves Allocatable).
pub fn resource_devices(inv: &PciInventory, claims: &[Claim]) -> ResourceDevices {
    let mut out: ResourceDevices = BTreeMap::new();
    for c in claims {
        let (healthy, problem) = device_health(inv, c.address);
        let d = inv.device(&c.address);
        out.entry(c.resource_name.clone()).or_default().push(PluginDevice {
            id: c.address.to_string(),
            address: c.address,
            healthy,
            problem,
            numa_node: d.and_then(|d| d.numa_node),
            iommu_group: d.and_then(|d| d.iommu_group),
            physfn: d.and_then(|d| d.physfn),
        });
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}
