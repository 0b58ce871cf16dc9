//! The config file (YAML): `Config::parse` with every section, the selectors' ids, classes,
//! addresses and `pfNames` VF ranges, then what a parsed config does with a host: the devices
//! each entry takes (`Config::claims`) and the DRA devices it offers. Input: a config file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::config::Config;
use nodeprep::config::selector::{parse_class, parse_hex16, parse_pf_name, parse_vendor_device};
use nodeprep::dra::devices::{Context, dra_devices};
use nodeprep::model::{IommuGroup, NetInterface, PciAddress, PciDevice, PciInventory};

fn addr(s: &str) -> PciAddress {
    s.parse().expect("a fixed address")
}

/// A small host: a GPU with its audio function, an SR-IOV NIC PF with two VFs (interface
/// `ens1f0`), an NVMe drive and a bridge.
fn host() -> PciInventory {
    let dev = |a: &str, v: u16, d: u16, class: u32, driver: &str, group: u32, numa: u32| PciDevice {
        address: addr(a),
        vendor_id: Some(v),
        device_id: Some(d),
        class_id: Some(class),
        driver: Some(driver.into()),
        iommu_group: Some(group),
        numa_node: Some(numa),
        ..Default::default()
    };
    let mut pf = dev("0000:3b:00.0", 0x8086, 0x159b, 0x020000, "ice", 30, 0);
    pf.sriov_total_vfs = Some(8);
    pf.sriov_num_vfs = Some(2);
    pf.vfs = vec![addr("0000:3b:01.0"), addr("0000:3b:01.1")];
    pf.net = vec![NetInterface { name: "ens1f0".into(), ..Default::default() }];
    let vf = |a: &str, i: u32, g: u32| PciDevice {
        physfn: Some(addr("0000:3b:00.0")),
        vf_index: Some(i),
        ..dev(a, 0x8086, 0x1889, 0x020000, "iavf", g, 0)
    };
    let devices = vec![
        dev("0000:00:01.0", 0x8086, 0x1901, 0x060400, "pcieport", 1, 0),
        dev("0000:01:00.0", 0x10de, 0x1eb8, 0x030200, "nvidia", 2, 0),
        dev("0000:01:00.1", 0x10de, 0x10f8, 0x040300, "snd_hda_intel", 2, 0),
        pf,
        vf("0000:3b:01.0", 0, 31),
        vf("0000:3b:01.1", 1, 32),
        dev("0000:5e:00.0", 0x144d, 0xa808, 0x010802, "vfio-pci", 40, 1),
    ];
    let mut groups: Vec<IommuGroup> = Vec::new();
    for d in &devices {
        let n = d.iommu_group.unwrap_or_default();
        match groups.iter_mut().find(|g| g.number == n) {
            Some(g) => g.devices.push(d.address),
            None => groups.push(IommuGroup { number: n, devices: vec![d.address], ..Default::default() }),
        }
    }
    for g in &mut groups {
        g.endpoints = g.devices.iter().copied().filter(|a| *a != addr("0000:00:01.0")).collect();
    }
    PciInventory { devices, groups, warnings: Vec::new() }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The selector parsers alone, on each line (a list item as the YAML parser hands it over).
    for line in text.lines().take(16) {
        let v = line.trim().trim_start_matches("- ").trim_matches('"');
        let _ = parse_hex16(v);
        let _ = parse_vendor_device(v);
        if let Ok((_, digits)) = parse_class(v) {
            assert!(matches!(digits, 2 | 4 | 6));
        }
        if let Ok(p) = parse_pf_name(v) {
            assert!(p.vfs.is_none_or(|(a, b)| a <= b));
        }
    }
    let Ok(config) = Config::parse(text) else { return };
    let inv = host();
    if let Ok(claims) = config.claims(&inv) {
        for c in &claims {
            let _ = config.front(c);
            let _ = config.binds_at_start(c);
        }
        let _ = dra_devices(&inv, &config, &claims, &Context::default());
    }
});
