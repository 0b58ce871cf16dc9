//! sysfs attribute values and links of PCI functions, as `host::pci::read_device` reads them,
//! then tied together by `host::pci::assemble` (VFs to PFs, IOMMU groups, names).
//!
//! Input: one or more device blocks separated by a blank line; each line `name=value`, as the
//! files of one `sys/bus/pci/devices/<addr>/` directory would hold them: `address` (the
//! directory's name), `vendor`, `device`, `subsystem_vendor`, `subsystem_device`, `class`,
//! `revision`, `numa_node`, `sriov_totalvfs`, `sriov_numvfs`, `boot_vga`, `driver_override`, and
//! the link targets `iommu_group`, `physfn`, `virtfnN`; a line `groups=1 2 3` lists
//! `sys/kernel/iommu_groups`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::host::pci::{
    RawDevice, RawGroup, assemble, attr_text, parse_decimal_attr, parse_driver_override, parse_hex_attr,
    parse_numa_node,
};
use nodeprep::model::PciAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // A file that is not UTF-8 is a warning, never a panic.
        let _ = attr_text(data.to_vec());
        return;
    };
    let mut raw = Vec::new();
    let mut groups = Vec::new();
    for block in text.split("\n\n").take(64) {
        let mut r = RawDevice::default();
        let d = &mut r.device;
        for line in block.lines() {
            let Some((name, value)) = line.split_once('=') else { continue };
            // What `read_device` does with a file's bytes before parsing them.
            let Ok(value) = attr_text(value.as_bytes().to_vec()) else { continue };
            // Only what the kernel prints is a value: `0x` and hex digits, decimal digits.
            if let Ok(v) = parse_hex_attr(&value, u32::MAX) {
                assert!(value.len() > 2 && value[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{value:?} read as {v}");
            }
            if let Ok(v) = parse_decimal_attr(&value) {
                assert!(value.bytes().all(|b| b.is_ascii_digit()), "{value:?} read as {v}");
            }
            let hex16 = |max| parse_hex_attr(&value, max).ok().map(|v| v as u16);
            match name {
                "address" => {
                    if let Ok(a) = value.parse::<PciAddress>() {
                        // The printed form parses back to the same address.
                        assert_eq!(a.to_string().parse::<PciAddress>(), Ok(a));
                        d.address = a;
                    }
                }
                "vendor" => d.vendor_id = hex16(0xffff),
                "device" => d.device_id = hex16(0xffff),
                "subsystem_vendor" => d.subsystem_vendor_id = hex16(0xffff),
                "subsystem_device" => d.subsystem_device_id = hex16(0xffff),
                "class" => d.class_id = parse_hex_attr(&value, 0xff_ffff).ok(),
                "revision" => d.revision = parse_hex_attr(&value, 0xff).ok().map(|v| v as u8),
                "numa_node" => d.numa_node = parse_numa_node(&value).ok().flatten(),
                "sriov_totalvfs" => d.sriov_total_vfs = parse_decimal_attr(&value).ok(),
                "sriov_numvfs" => d.sriov_num_vfs = parse_decimal_attr(&value).ok(),
                "boot_vga" => d.boot_vga = parse_decimal_attr(&value) == Ok(1),
                "driver_override" => d.driver_override = parse_driver_override(value),
                "driver" => d.driver = Some(value),
                "iommu_group" => r.group_link = Some(value),
                "physfn" => r.physfn_link = Some(value),
                "groups" => groups.extend(
                    value.split_whitespace().filter_map(|g| g.parse::<u32>().ok()).map(|number| RawGroup {
                        number,
                        group_type: Some("DMA".into()),
                        no_iommu: false,
                    }),
                ),
                n => {
                    if let Some(Ok(i)) = n.strip_prefix("virtfn").map(str::parse::<u32>) {
                        r.virtfn_links.push((i, value));
                    }
                }
            }
        }
        raw.push(r);
    }
    groups.sort_by_key(|g| g.number);
    groups.dedup_by_key(|g| g.number);
    let known: Vec<PciAddress> = raw.iter().map(|r| r.device.address).collect();
    let inv = assemble(raw, groups);
    for d in &inv.devices {
        // What assemble promises: links resolved only to devices and groups that exist, and a VF
        // index only with its PF.
        if let Some(pf) = d.physfn {
            assert!(known.contains(&pf));
        }
        assert!(d.vf_index.is_none() || d.physfn.is_some());
        assert!(d.vfs.iter().all(|v| known.contains(v)));
        if let Some(g) = d.iommu_group {
            assert!(inv.groups.iter().any(|x| x.number == g));
        }
    }
});
