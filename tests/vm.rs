//! nodeprep on a real kernel: Debian's 6.1 kernel in QEMU with an emulated Intel IOMMU, e1000e,
//! edu and NVMe (one with SR-IOV, one holding a mounted file system). See `tests/realkernel` for
//! the harness; `scripts/vm-kernel.sh` fetches the kernel (the first run installs QEMU with
//! apt-get and downloads the kernel package: run as root, or install those beforehand).
//!
//! These tests fail, never skip, when the VM cannot be built or booted.

mod realkernel;

use std::collections::{BTreeMap, BTreeSet};

use realkernel::{DISK_MOUNT, DISK_SERIAL, E1000E_ID, EDU_ID, Machine, NVME_ID, SRIOV_SERIAL, Vm, VmOutput};
use serde_json::Value;

/// Prints, as sections, what the kernel says about every PCI function: `kernel-pci` (one
/// `ADDRESS VENDOR DEVICE CLASS DRIVER` line each) and `kernel-groups` (`GROUP ADDRESS`).
const KERNEL_VIEW: &str = r#"
kernel_pci() {
  for d in /sys/bus/pci/devices/*; do
    drv=-
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    echo "${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class") $drv"
  done
}
kernel_view() {
  section "kernel-pci$1" kernel_pci
  section "kernel-groups$1" iommu_groups
}
"#;

/// One PCI function as the kernel's sysfs shows it.
#[derive(Debug)]
struct KernelFn {
    vendor: String,
    device: String,
    class: String,
    driver: Option<String>,
}

fn kernel_pci(out: &VmOutput, section: &str) -> BTreeMap<String, KernelFn> {
    let strip = |s: &str| s.trim_start_matches("0x").to_owned();
    out.section(section)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "bad line {l:?} in section {section}");
            let driver = (f[4] != "-").then(|| f[4].to_owned());
            (f[0].to_owned(), KernelFn { vendor: strip(f[1]), device: strip(f[2]), class: strip(f[3]), driver })
        })
        .collect()
}

fn kernel_groups(out: &VmOutput, section: &str) -> BTreeMap<String, u64> {
    out.section(section)
        .lines()
        .map(|l| {
            let (g, a) = l.split_once(' ').unwrap_or_else(|| panic!("bad line {l:?} in section {section}"));
            (a.to_owned(), g.parse().unwrap_or_else(|e| panic!("bad group in {l:?}: {e}")))
        })
        .collect()
}

/// `nodeprep scan -o json` from a section, by address.
fn scan(out: &VmOutput, section: &str) -> BTreeMap<String, Value> {
    assert_eq!(out.status(section), 0, "nodeprep scan failed: {:?}", out.try_section(&format!("{section}.stderr")));
    let json = out.json(section);
    let list = json.as_array().unwrap_or_else(|| panic!("section {section} is not a JSON array: {json}"));
    list.iter()
        .map(|d| (d["address"].as_str().unwrap_or_else(|| panic!("device without address: {d}")).to_owned(), d.clone()))
        .collect()
}

/// nodeprep and the kernel list the same functions with the same ids, class, driver and group.
fn assert_matches_kernel(out: &VmOutput, scan: &BTreeMap<String, Value>, pci: &str, groups: &str) {
    let kernel = kernel_pci(out, pci);
    let kgroups = kernel_groups(out, groups);
    let ours: BTreeSet<&String> = scan.keys().collect();
    let theirs: BTreeSet<&String> = kernel.keys().collect();
    assert_eq!(ours, theirs, "nodeprep lists the PCI functions sysfs lists");
    for (addr, k) in &kernel {
        let d = &scan[addr];
        assert_eq!(d["vendorId"], k.vendor.as_str(), "{addr} vendor: {d}");
        assert_eq!(d["deviceId"], k.device.as_str(), "{addr} device: {d}");
        assert_eq!(d["classId"], k.class.as_str(), "{addr} class: {d}");
        assert_eq!(d["driver"].as_str(), k.driver.as_deref(), "{addr} driver: {d}");
        assert_eq!(d["iommuGroup"].as_u64(), kgroups.get(addr).copied(), "{addr} IOMMU group: {d}");
        assert_eq!(d["warnings"], Value::Array(Vec::new()), "{addr} has warnings: {d}");
    }
}

fn with_id<'a>(scan: &'a BTreeMap<String, Value>, (vendor, device): (&str, &str)) -> Vec<&'a Value> {
    scan.values().filter(|d| d["vendorId"] == vendor && d["deviceId"] == device).collect()
}

#[test]
fn iommu_groups_match_the_kernel() {
    let script = format!(
        r#"{KERNEL_VIEW}
kernel_view ""
section scan nodeprep scan -o json
section pf pci_by_serial {SRIOV_SERIAL}
pf=$(pci_by_serial {SRIOV_SERIAL})
echo 0 > /sys/bus/pci/devices/$pf/sriov_drivers_autoprobe
section enable-vfs sh -c "echo 2 > /sys/bus/pci/devices/$pf/sriov_numvfs"
kernel_view "-vfs"
section scan-vfs nodeprep scan -o json
"#
    );
    let out = Vm::new(Machine::Iommu).run(&script);

    // Before the VFs: every function as the kernel has it.
    let before = scan(&out, "scan");
    assert_matches_kernel(&out, &before, "kernel-pci", "kernel-groups");
    let groups = kernel_groups(&out, "kernel-groups");
    assert!(!groups.is_empty(), "the kernel made IOMMU groups");
    let lpc: BTreeSet<u64> = groups.iter().filter(|(a, _)| a.starts_with("0000:00:1f.")).map(|(_, g)| *g).collect();
    assert_eq!(lpc.len(), 1, "the ICH9 functions share one group: {groups:?}");

    let nics = with_id(&before, E1000E_ID);
    assert_eq!(nics.len(), 1, "one e1000e");
    let nic = nics[0];
    assert_eq!(nic["driver"], "e1000e");
    assert!(nic["net"].as_array().is_some_and(|n| n.iter().any(|i| i["name"] == "eth0")), "eth0 on the e1000e: {nic}");
    let edu = with_id(&before, EDU_ID);
    assert_eq!(edu.len(), 1, "one edu");
    assert_eq!(edu[0]["driver"], Value::Null, "edu has no driver");
    assert!(edu[0]["iommuGroup"].is_u64());

    let pf_addr = out.section("pf").trim().to_owned();
    let pf = &before[&pf_addr];
    assert_eq!((pf["vendorId"].as_str(), pf["deviceId"].as_str()), (Some(NVME_ID.0), Some(NVME_ID.1)));
    assert_eq!(pf["driver"], "nvme");
    assert_eq!(pf["sriovTotalVfs"], 2);
    assert_eq!(pf["sriovNumVfs"], 0);

    // The disk behind the other NVMe controller holds the mounted file system.
    let disk_pci = out.setup("disk_pci");
    let (disk, partition) = (out.setup("disk"), out.setup("partition"));
    assert_ne!(disk_pci, pf_addr);
    let ctrl = &before[disk_pci];
    assert_eq!(ctrl["driver"], "nvme");
    let block = ctrl["block"].as_array().unwrap_or_else(|| panic!("no block array on {disk_pci}: {ctrl}"));
    let b = block
        .iter()
        .find(|b| b["name"] == disk)
        .unwrap_or_else(|| panic!("{disk} not on {disk_pci} ({DISK_SERIAL}): {ctrl}"));
    assert_eq!(b["partitions"], serde_json::json!([partition]));
    let mounts = b["mounts"].as_array().expect("mounts array");
    assert!(
        mounts.iter().any(|m| m["device"] == partition && m["mountPoint"] == DISK_MOUNT && m["fsType"] == "ext2"),
        "{partition} mounted at {DISK_MOUNT} on {disk_pci}: {b}"
    );
    for (addr, d) in &before {
        if addr != disk_pci {
            assert!(d["block"].as_array().is_none_or(Vec::is_empty), "only {disk_pci} has disks: {d}");
        }
    }

    // After the VFs: two more functions, each in its own group, pointing at the PF.
    assert_eq!(out.status("enable-vfs"), 0, "enabling VFs: {:?}", out.try_section("enable-vfs.stderr"));
    let after = scan(&out, "scan-vfs");
    assert_matches_kernel(&out, &after, "kernel-pci-vfs", "kernel-groups-vfs");
    let vfs: Vec<&Value> = after.values().filter(|d| d["physfn"] == pf_addr.as_str()).collect();
    assert_eq!(vfs.len(), 2, "two VFs of {pf_addr}");
    let pf = &after[&pf_addr];
    assert_eq!(pf["sriovNumVfs"], 2);
    let vf_addrs: Vec<&str> = vfs.iter().map(|v| v["address"].as_str().expect("address")).collect();
    assert_eq!(pf["vfs"], serde_json::json!(vf_addrs), "the PF lists its VFs in order");
    let mut seen_groups = BTreeSet::from([pf["iommuGroup"].as_u64().expect("PF group")]);
    for (i, vf) in vfs.iter().enumerate() {
        assert_eq!(vf["vfIndex"], i, "{vf}");
        assert_eq!(vf["driver"], Value::Null, "autoprobe off: VFs stay unbound: {vf}");
        let g = vf["iommuGroup"].as_u64().unwrap_or_else(|| panic!("VF without group: {vf}"));
        assert!(seen_groups.insert(g), "VF {} has its own group: {vf}", vf["address"]);
    }
    let before_addrs: BTreeSet<&String> = before.keys().collect();
    let after_addrs: BTreeSet<&String> = after.keys().filter(|a| !vf_addrs.contains(&a.as_str())).collect();
    assert_eq!(before_addrs, after_addrs, "the VFs are the only new functions");
}

#[test]
fn check_on_a_real_kernel() {
    let script = r#"
section groups iommu_groups
section check nodeprep check -o json
section require-passthrough nodeprep check --require passthrough
section require-kvm nodeprep check --require kvm
"#;

    {
        let out = Vm::new(Machine::Iommu).run(script);
        assert_eq!(out.status("check"), 0, "{:?}", out.try_section("check.stderr"));
        let report = out.json("check");
        let iommu = &report["iommu"];
        assert_eq!(iommu["eligible"], true, "{iommu}");
        let facts = iommu["facts"].to_string();
        assert!(facts.contains("dmar0"), "the IOMMU unit is named: {facts}");
        assert!(facts.contains("intel_iommu=on iommu=pt"), "the kernel arguments are shown: {facts}");
        let groups = out.section("groups");
        let kernel_groups: BTreeSet<&str> = groups.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let total = report["iommuGroups"]["total"].as_u64().expect("iommuGroups.total");
        assert_eq!(total, kernel_groups.len() as u64, "every group holds PCI functions here: {groups}");
        assert!(total > 0);
        assert!(report["iommuGroups"]["shared"].as_u64() >= Some(1), "the ICH9 group is shared: {report}");
        assert_eq!(report["vfio"]["eligible"], true, "vfio-pci is loadable from lib/modules: {}", report["vfio"]);
        assert!(report["vfio"]["facts"].to_string().contains("vfio-pci not loaded, loadable"), "{}", report["vfio"]);
        assert_eq!(report["passthrough"]["eligible"], true, "{}", report["passthrough"]);
        assert_eq!(out.status("require-passthrough"), 0, "{:?}", out.try_section("require-passthrough.stderr"));
        assert_eq!(report["virtualization"]["eligible"], false, "no /dev/kvm in the guest");
        assert_eq!(out.status("require-kvm"), 1);
    }

    {
        let out = Vm::new(Machine::NoIommu).run(script);
        assert_eq!(out.section("groups"), "", "no IOMMU, no groups");
        assert_eq!(out.status("check"), 0, "{:?}", out.try_section("check.stderr"));
        let report = out.json("check");
        assert_eq!(report["iommu"]["eligible"], false, "{}", report["iommu"]);
        assert!(report["iommu"]["problems"].as_array().is_some_and(|p| !p.is_empty()), "{}", report["iommu"]);
        assert_eq!(report["iommuGroups"]["total"], 0);
        assert_eq!(report["passthrough"]["eligible"], false);
        assert_eq!(out.status("require-passthrough"), 1, "check --require passthrough fails without an IOMMU");
        let stderr = out.section("require-passthrough.stderr");
        assert!(stderr.contains("not fit for: passthrough"), "{stderr}");
    }
}
