//! Device selectors: which PCI functions a config entry takes.
//!
//! Two forms are accepted. The HyperConverged `pciDeviceSelector: "10DE:1EB8"` (vendor:device,
//! hex, case-insensitive), copied as it is from `spec.permittedHostDevices.pciHostDevices`, and
//! the SR-IOV device plugin's richer `selectors` (`vendors`, `devices`, `classes`, `drivers`,
//! `pciAddresses`, `pfNames` with VF ranges like `ens1f0#0-7`, `numaNodes`). Within one selector
//! every given list must match (AND); within a list any value may match (OR).

use std::collections::BTreeMap;

use crate::model::{PciAddress, PciDevice, PciInventory};

/// The drivers devices had before nodeprep moved them to vfio-pci (from its state file). A
/// `drivers` selector matches a device's current driver or this one, so a device does not stop
/// matching its entry once nodeprep has bound it.
pub type OriginalDrivers = BTreeMap<PciAddress, Option<String>>;

/// A parsed, validated selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub vendors: Vec<u16>,
    pub devices: Vec<u16>,
    /// Class prefixes: (value, number of hex digits given: 2, 4 or 6).
    pub classes: Vec<(u32, u8)>,
    pub drivers: Vec<String>,
    pub addresses: Vec<PciAddress>,
    pub pf_names: Vec<PfName>,
    pub numa_nodes: Vec<u32>,
}

/// `ens1f0` (every VF of that PF) or `ens1f0#2-5` (VF indexes 2 to 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfName {
    pub name: String,
    pub vfs: Option<(u32, u32)>,
}

/// Parses 4 hex digits (`10de`, `10DE`, `0x10de`).
pub fn parse_hex16(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let h = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    if h.len() != 4 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a 4-digit hex id like 10de"));
    }
    u16::from_str_radix(h, 16).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `VVVV:DDDD` (the HyperConverged `pciDeviceSelector`).
pub fn parse_vendor_device(s: &str) -> Result<(u16, u16), String> {
    let (v, d) = s.split_once(':').ok_or_else(|| format!("{s:?} is not VENDOR:DEVICE like \"10DE:1EB8\""))?;
    Ok((parse_hex16(v)?, parse_hex16(d)?))
}

/// Parses a class prefix: 2 (base class), 4 (plus subclass) or 6 (plus prog-if) hex digits.
pub fn parse_class(s: &str) -> Result<(u32, u8), String> {
    let t = s.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    if !matches!(h.len(), 2 | 4 | 6) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a class of 2, 4 or 6 hex digits like 03, 0302 or 030200"));
    }
    let v = u32::from_str_radix(h, 16).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((v, h.len() as u8))
}

/// Parses `name` or `name#first-last` (or `name#n`).
pub fn parse_pf_name(s: &str) -> Result<PfName, String> {
    let (name, range) = match s.split_once('#') {
        Some((n, r)) => (n, Some(r)),
        None => (s, None),
    };
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        return Err(format!("{s:?}: {name:?} is not a network interface name"));
    }
    let vfs = match range {
        None => None,
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let a: u32 = a.parse().map_err(|_| format!("{s:?}: VF range {r:?} is not N or N-M"))?;
            let b: u32 = b.parse().map_err(|_| format!("{s:?}: VF range {r:?} is not N or N-M"))?;
            if a > b {
                return Err(format!("{s:?}: VF range {r:?} runs backwards"));
            }
            Some((a, b))
        }
    };
    Ok(PfName { name: name.to_owned(), vfs })
}

impl Selector {
    /// True when the selector names nothing at all (it would take every device).
    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty()
            && self.devices.is_empty()
            && self.classes.is_empty()
            && self.drivers.is_empty()
            && self.addresses.is_empty()
            && self.pf_names.is_empty()
            && self.numa_nodes.is_empty()
    }

    /// Pure: does the device match? `inv` resolves `pfNames` (a VF's PF and its interfaces).
    pub fn matches(&self, d: &PciDevice, inv: &PciInventory) -> bool {
        self.matches_with(d, inv, &OriginalDrivers::new())
    }

    /// Pure: [`Selector::matches`], with the drivers devices had before nodeprep bound them.
    pub fn matches_with(&self, d: &PciDevice, inv: &PciInventory, original: &OriginalDrivers) -> bool {
        if !self.vendors.is_empty() && !d.vendor_id.is_some_and(|v| self.vendors.contains(&v)) {
            return false;
        }
        if !self.devices.is_empty() && !d.device_id.is_some_and(|v| self.devices.contains(&v)) {
            return false;
        }
        if !self.classes.is_empty() {
            let Some(class) = d.class_id else { return false };
            if !self.classes.iter().any(|(v, digits)| class >> (4 * (6 - *digits as u32)) == *v) {
                return false;
            }
        }
        if !self.drivers.is_empty() {
            let before = original.get(&d.address).and_then(|o| o.as_ref());
            if !d.driver.iter().chain(before).any(|drv| self.drivers.contains(drv)) {
                return false;
            }
        }
        if !self.addresses.is_empty() && !self.addresses.contains(&d.address) {
            return false;
        }
        if !self.numa_nodes.is_empty() && !d.numa_node.is_some_and(|n| self.numa_nodes.contains(&n)) {
            return false;
        }
        if !self.pf_names.is_empty() {
            let (Some(pf), Some(index)) = (d.physfn, d.vf_index) else { return false };
            let Some(pf) = inv.device(&pf) else { return false };
            let hit = self.pf_names.iter().any(|p| {
                pf.net.iter().any(|n| n.name == p.name) && p.vfs.is_none_or(|(a, b)| (a..=b).contains(&index))
            });
            if !hit {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_classes_and_pf_names() {
        assert_eq!(parse_vendor_device("10DE:1EB8"), Ok((0x10de, 0x1eb8)));
        assert_eq!(parse_vendor_device("10de:1eb8"), Ok((0x10de, 0x1eb8)));
        assert!(parse_vendor_device("10de-1eb8").is_err());
        assert!(parse_vendor_device("10de:1eb").is_err());
        assert!(parse_vendor_device("10dg:1eb8").is_err());
        assert_eq!(parse_class("0302"), Ok((0x0302, 4)));
        assert_eq!(parse_class("03"), Ok((0x03, 2)));
        assert!(parse_class("030").is_err());
        assert_eq!(parse_pf_name("ens1f0#0-7"), Ok(PfName { name: "ens1f0".into(), vfs: Some((0, 7)) }));
        assert_eq!(parse_pf_name("ens1f0#3"), Ok(PfName { name: "ens1f0".into(), vfs: Some((3, 3)) }));
        assert_eq!(parse_pf_name("ens1f0"), Ok(PfName { name: "ens1f0".into(), vfs: None }));
        assert!(parse_pf_name("ens1f0#7-0").is_err());
        assert!(parse_pf_name("ens1f0#a-b").is_err());
        assert!(parse_pf_name("#1").is_err());
    }

    #[test]
    fn drivers_match_the_original_driver_of_a_device_nodeprep_bound() {
        let a: PciAddress = "0000:5e:01.0".parse().expect("addr");
        let d = PciDevice { address: a, driver: Some("vfio-pci".into()), ..Default::default() };
        let inv = PciInventory::default();
        let s = Selector { drivers: vec!["c6xxvf".into()], ..Default::default() };
        assert!(!s.matches(&d, &inv), "on vfio-pci, not c6xxvf");
        let original: OriginalDrivers = [(a, Some("c6xxvf".to_owned()))].into_iter().collect();
        assert!(s.matches_with(&d, &inv, &original), "nodeprep moved it from c6xxvf");
        let vfio = Selector { drivers: vec!["vfio-pci".into()], ..Default::default() };
        assert!(vfio.matches_with(&d, &inv, &original), "the current driver still matches");
    }

    #[test]
    fn class_prefixes_match_by_digits() {
        let d = PciDevice { class_id: Some(0x030200), ..Default::default() };
        let inv = PciInventory::default();
        for (class, hit) in [((0x03, 2), true), ((0x0302, 4), true), ((0x030200, 6), true), ((0x0300, 4), false)] {
            let s = Selector { classes: vec![class], ..Default::default() };
            assert_eq!(s.matches(&d, &inv), hit, "{class:?}");
        }
    }
}
