//! Pure: the devices nodeprep offers through DRA on this host, one per IOMMU group.
//!
//! A VM can use a PCI function only when every endpoint of its IOMMU group is on vfio-pci, so
//! the group is the unit DRA hands out: a GPU and its audio function are one device, named after
//! the function the config selected (the *primary*), and preparing it binds them all. Each
//! device carries the attributes a DeviceClass or a claim selects on with CEL:
//! - the standard ones (`k8s.io/dynamic-resource-allocation/deviceattribute`):
//!   `resource.kubernetes.io/pciBusID`, `resource.kubernetes.io/pcieRoot`, and
//!   `resource.kubernetes.io/numaNode` (left out when the kernel says -1);
//! - in the driver's own domain (unqualified names): `vendorID`, `deviceID`,
//!   `subsystemVendorID`, `subsystemDeviceID`, `class` (hex, lower case, as sysfs writes them),
//!   `vendorName`, `deviceName` (pci.ids, at most 64 characters as the API allows),
//!   `iommuGroup`, `iommuGroupSize` (endpoints), `primaryFunction`, `sriov` (`pf`, `vf` or
//!   `none`) and `physfn` for a VF, `atRest` (`host` or `vfio`), `hostDriver` (the driver it
//!   goes back to), and `resourceName` (the config's).
//!
//! A device that cannot be used now (gone, without an IOMMU group, a bridge, or, when it should
//! be on vfio-pci, a group that is not viable) is marked unhealthy with the reason: it is left
//! out of the ResourceSlices and reported unhealthy to the kubelet. A device the host uses is
//! still offered: whether the host uses it changes without any event (a mount), so Prepare
//! decides, and refuses it with the reason the pod then shows.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{AtRest, Claim, Config, Front, OriginalDrivers};
use crate::model::pci::VFIO_PCI;
use crate::model::{PciAddress, PciDevice, PciInventory};

/// The standard attribute names.
pub const PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";
pub const PCIE_ROOT: &str = "resource.kubernetes.io/pcieRoot";
pub const NUMA_NODE: &str = "resource.kubernetes.io/numaNode";
/// The longest string attribute value the API accepts.
pub const MAX_STRING_ATTRIBUTE: usize = 64;

/// A ResourceSlice device attribute's value (`resource.k8s.io/v1` `DeviceAttribute`: exactly one
/// of `int`, `bool`, `string`, `version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AttrValue {
    Int(i64),
    Bool(bool),
    String(String),
    Version(String),
}

/// One device offered through DRA: a whole IOMMU group, named after its primary function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraDevice {
    /// DNS-label-safe, from the primary function's address: `pci-0000-3b-00-0`.
    pub name: String,
    /// The function the config selected (the lowest address when it selected several).
    pub primary: PciAddress,
    /// Every endpoint of its IOMMU group (bridges aside), primary first.
    pub functions: Vec<PciAddress>,
    pub iommu_group: Option<u32>,
    pub at_rest: AtRest,
    /// The config's resource name.
    pub resource_name: String,
    /// Usable now: present, with an IOMMU group, and (when on vfio-pci at rest or prepared) a
    /// viable group. An unhealthy device is left out of the slices.
    pub healthy: bool,
    /// Why not, when not healthy.
    pub problem: Option<String>,
    /// Qualified name (`resource.kubernetes.io/pciBusID`) or a name in the driver's domain
    /// (`vendorID`) → value.
    pub attributes: BTreeMap<String, AttrValue>,
}

/// Pure: the device name for a primary function: `0000:3b:00.0` → `pci-0000-3b-00-0`.
pub fn device_name(a: &PciAddress) -> String {
    format!("pci-{:04x}-{:02x}-{:02x}-{:x}", a.domain, a.bus, a.device, a.function)
}

/// Pure: the PCIe root (`pci0000:3a`) from the target of a function's
/// `sys/bus/pci/devices/<address>` link (`../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0`).
pub fn pcie_root_of(link_target: &str) -> Option<String> {
    link_target.split('/').find(|c| c.starts_with("pci") && c.len() > 3).map(str::to_owned)
}

fn truncated(s: &str) -> String {
    let mut end = s.len().min(MAX_STRING_ATTRIBUTE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What the offered devices are computed from, besides the inventory and the config.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// The drivers devices had before nodeprep bound them (its bind records).
    pub original: Option<&'a OriginalDrivers>,
    /// Each function's PCIe root, read at the edge ([`pcie_root_of`]).
    pub pcie_roots: Option<&'a BTreeMap<PciAddress, String>>,
    /// Functions a prepared claim holds now (they must stay on vfio-pci).
    pub prepared: Option<&'a BTreeSet<PciAddress>>,
}

/// Pure: the devices DRA offers: the config's DRA claims (from [`Config::claims_with`] on the
/// same inventory), grouped by IOMMU group, in name order.
pub fn dra_devices(inv: &PciInventory, config: &Config, claims: &[Claim], cx: &Context<'_>) -> Vec<DraDevice> {
    // Per group (or per function without one), the selected functions, lowest first.
    let mut units: BTreeMap<(Option<u32>, Option<PciAddress>), Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        let Front::Dra(_) = config.front(c) else { continue };
        let group = inv.device(&c.address).and_then(|d| d.iommu_group);
        let key = match group {
            Some(g) => (Some(g), None),
            None => (None, Some(c.address)),
        };
        units.entry(key).or_default().push(c);
    }
    let mut out: Vec<DraDevice> = units
        .into_iter()
        .filter_map(|((group, _), mut selected)| {
            selected.sort_by_key(|c| c.address);
            let first = *selected.first()?;
            Some(device(inv, config, first, group, cx))
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn device(inv: &PciInventory, config: &Config, claim: &Claim, group: Option<u32>, cx: &Context<'_>) -> DraDevice {
    let primary = claim.address;
    let at_rest = match config.front(claim) {
        Front::Dra(a) => a,
        Front::DevicePlugin => AtRest::Host,
    };
    let d = inv.device(&primary);
    let mut functions = vec![primary];
    if let Some(g) = group.and_then(|g| inv.group(g)) {
        functions.extend(g.endpoints.iter().filter(|a| **a != primary).copied());
    }
    let (healthy, problem) = health(inv, d, group, &functions, at_rest, cx);
    let mut attributes = BTreeMap::new();
    if let Some(d) = d {
        attributes = attributes_of(d, &functions, at_rest, &claim.resource_name, cx);
    }
    DraDevice {
        name: device_name(&primary),
        primary,
        functions,
        iommu_group: group,
        at_rest,
        resource_name: claim.resource_name.clone(),
        healthy,
        problem,
        attributes,
    }
}

fn health(
    inv: &PciInventory,
    d: Option<&PciDevice>,
    group: Option<u32>,
    functions: &[PciAddress],
    at_rest: AtRest,
    cx: &Context<'_>,
) -> (bool, Option<String>) {
    let Some(d) = d else { return (false, Some("the device is no longer present".into())) };
    if d.is_bridge() {
        return (false, Some("it is a PCI bridge, which is never passed through".into()));
    }
    let Some(g) = group else {
        return (false, Some("it has no IOMMU group: the IOMMU is off (nodeprep check says how to turn it on)".into()));
    };
    let prepared = cx.prepared.is_some_and(|p| functions.iter().any(|f| p.contains(f)));
    if at_rest == AtRest::Vfio || prepared {
        let off: Vec<String> = functions
            .iter()
            .filter_map(|a| inv.device(a))
            .filter(|m| m.driver.as_deref() != Some(VFIO_PCI))
            .map(|m| format!("{} ({})", m.address, m.driver.as_deref().unwrap_or("no driver")))
            .collect();
        if !off.is_empty() {
            return (false, Some(format!("IOMMU group {g} is not viable: {} not on vfio-pci", off.join(", "))));
        }
    }
    (true, None)
}

fn hex4(v: Option<u16>) -> Option<AttrValue> {
    v.map(|v| AttrValue::String(format!("{v:04x}")))
}

fn attributes_of(
    d: &PciDevice,
    functions: &[PciAddress],
    at_rest: AtRest,
    resource_name: &str,
    cx: &Context<'_>,
) -> BTreeMap<String, AttrValue> {
    let mut a: BTreeMap<String, AttrValue> = BTreeMap::new();
    let mut put = |k: &str, v: Option<AttrValue>| {
        if let Some(v) = v {
            a.insert(k.to_owned(), v);
        }
    };
    let s = |v: &str| Some(AttrValue::String(truncated(v)));
    put(PCI_BUS_ID, s(&d.address.to_string()));
    put(PCIE_ROOT, cx.pcie_roots.and_then(|r| r.get(&d.address)).and_then(|r| s(r)));
    put(NUMA_NODE, d.numa_node.map(|n| AttrValue::Int(i64::from(n))));
    put("vendorID", hex4(d.vendor_id));
    put("deviceID", hex4(d.device_id));
    put("subsystemVendorID", hex4(d.subsystem_vendor_id));
    put("subsystemDeviceID", hex4(d.subsystem_device_id));
    put("class", d.class_id.map(|c| AttrValue::String(format!("{c:06x}"))));
    put("vendorName", d.vendor_name.as_deref().and_then(s));
    put("deviceName", d.device_name.as_deref().and_then(s));
    put("iommuGroup", d.iommu_group.map(|g| AttrValue::Int(i64::from(g))));
    put("iommuGroupSize", Some(AttrValue::Int(functions.len() as i64)));
    put("primaryFunction", s(&d.address.to_string()));
    let sriov = if d.is_vf() {
        "vf"
    } else if d.sriov_total_vfs.is_some_and(|n| n > 0) {
        "pf"
    } else {
        "none"
    };
    put("sriov", s(sriov));
    put("physfn", d.physfn.map(|p| AttrValue::String(p.to_string())));
    put("atRest", s(&at_rest.to_string()));
    put("hostDriver", host_driver(d, cx).as_deref().and_then(s));
    put("resourceName", s(resource_name));
    a
}

/// The driver the device goes back to: the one it had before nodeprep bound it, or the one it
/// has now when that is not vfio-pci.
fn host_driver(d: &PciDevice, cx: &Context<'_>) -> Option<String> {
    match cx.original.and_then(|o| o.get(&d.address)) {
        Some(recorded) => recorded.clone(),
        None => d.driver.clone().filter(|x| x != VFIO_PCI),
    }
}

/// Pure: the functions a DRA device stands for, by device name (what Prepare binds).
pub fn by_name(devices: &[DraDevice]) -> BTreeMap<&str, &DraDevice> {
    devices.iter().map(|d| (d.name.as_str(), d)).collect()
}
