//! Human names for PCI ids from the pci.ids database embedded at build time (the `pci-ids`
//! crate), so no file is needed on the node.

use pci_ids::{Device, FromId, Subclass, Vendor};

use crate::model::PciDevice;

/// Fills the vendor, device, subsystem and class names of a device from its ids.
pub fn fill(d: &mut PciDevice) {
    if let Some(v) = d.vendor_id {
        d.vendor_name = Vendor::from_id(v).map(|v| v.name().to_owned());
        if let Some(id) = d.device_id {
            if let Some(dev) = Device::from_vid_pid(v, id) {
                d.device_name = Some(dev.name().to_owned());
                if let (Some(sv), Some(sd)) = (d.subsystem_vendor_id, d.subsystem_device_id) {
                    // Like lspci: a subsystem equal to the device itself takes the device's name.
                    d.subsystem_name = dev
                        .subsystems()
                        .find(|s| s.subvendor() == sv && s.subdevice() == sd)
                        .map(|s| s.name().to_owned())
                        .or_else(|| ((sv, sd) == (v, id)).then(|| dev.name().to_owned()));
                }
            }
        }
    }
    d.class_name = d.class_id.and_then(class_name).map(str::to_owned);
}

/// The vendor name for an id, when pci.ids has it.
pub fn vendor_name(id: u16) -> Option<&'static str> {
    Vendor::from_id(id).map(|v| v.name())
}

/// The name of a 24-bit class code: the subclass name where pci.ids has one ("VGA compatible
/// controller"), else the base class name.
pub fn class_name(class_id: u32) -> Option<&'static str> {
    let base = (class_id >> 16) as u8;
    let sub = (class_id >> 8) as u8;
    Subclass::from_cid_sid(base, sub).map(|s| s.name()).or_else(|| pci_ids::Class::from_id(base).map(|c| c.name()))
}

/// The device name the way NVIDIA's KubeVirt GPU device plugin turns it into a resource name:
/// trimmed, upper-cased, `/`, `.` and white space to `_`, everything outside `[A-Za-z0-9_.]`
/// dropped. `TU104GL [Tesla T4]` gives `TU104GL_TESLA_T4`.
pub fn resource_suffix(device_name: &str) -> String {
    let mut out = String::with_capacity(device_name.len());
    for c in device_name.trim().chars() {
        match c {
            '/' | '.' => out.push('_'),
            c if c.is_whitespace() => out.push('_'),
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c.to_ascii_uppercase()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PciAddress;

    #[test]
    fn names_come_from_pci_ids() {
        let mut d = PciDevice {
            address: PciAddress { domain: 0, bus: 0x3b, device: 0, function: 0 },
            vendor_id: Some(0x10de),
            device_id: Some(0x1eb8),
            class_id: Some(0x030200),
            ..Default::default()
        };
        fill(&mut d);
        assert_eq!(d.vendor_name.as_deref(), Some("NVIDIA Corporation"));
        assert_eq!(d.device_name.as_deref(), Some("TU104GL [Tesla T4]"));
        assert_eq!(d.class_name.as_deref(), Some("3D controller"));
        assert_eq!(class_name(0x020000), Some("Ethernet controller"));
        assert_eq!(class_name(0x0b4000), Some("Co-processor"));
    }

    #[test]
    fn unknown_ids_have_no_names() {
        let mut d =
            PciDevice { vendor_id: Some(0x0bad), device_id: Some(0x1234), class_id: None, ..Default::default() };
        fill(&mut d);
        assert_eq!((d.vendor_name, d.device_name, d.class_name), (None, None, None));
    }

    #[test]
    fn resource_suffix_follows_nvidia_plugin() {
        assert_eq!(resource_suffix("TU104GL [Tesla T4]"), "TU104GL_TESLA_T4");
        assert_eq!(resource_suffix("GV100GL [Tesla V100 PCIe 16GB]"), "GV100GL_TESLA_V100_PCIE_16GB");
        assert_eq!(resource_suffix(" GA100 [A100 SXM4 40GB] "), "GA100_A100_SXM4_40GB");
        assert_eq!(resource_suffix("MT28800 Family [ConnectX-5 Ex]"), "MT28800_FAMILY_CONNECTX5_EX");
    }
}
