//! nodeprep on a real kernel: Debian's 6.1 kernel in QEMU with an emulated Intel IOMMU, e1000e,
//! edu and NVMe (one with SR-IOV, one holding a mounted file system). See `tests/realkernel` for
//! the harness; `scripts/vm-kernel.sh` fetches the kernel (the first run installs QEMU with
//! apt-get and downloads the kernel package: run as root, or install those beforehand).
//!
//! These tests fail, never skip, when the VM cannot be built or booted.

mod realkernel;

use std::collections::{BTreeMap, BTreeSet};

use realkernel::{
    BIND_CONFIG, DISK, DISK_MOUNT, DISK_SERIAL, E1000E, E1000E_ID, EDU, EDU_ID, Machine, NVME_ID, NVME_PF, NVME_VF0,
    SRIOV_SERIAL, Vm, VmOutput,
};
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

// ---- binding on a real kernel ------------------------------------------------------------------

/// Enables the SR-IOV NVMe's VFs without letting the nvme driver take them.
const ENABLE_VFS: &str = r#"
pf=$(pci_by_serial nodeprep-sriov)
section pf echo "$pf"
section disk pci_by_serial nodeprep-disk
echo 0 > /sys/bus/pci/devices/$pf/sriov_drivers_autoprobe
echo 2 > /sys/bus/pci/devices/$pf/sriov_numvfs
CFG=/etc/nodeprep/config.yaml
"#;

fn drivers(out: &VmOutput, section: &str) -> BTreeMap<String, Option<String>> {
    kernel_pci(out, section).into_iter().map(|(a, k)| (a, k.driver)).collect()
}

fn outcomes(out: &VmOutput, section: &str) -> BTreeMap<String, Value> {
    let v = out.json(section);
    v["outcomes"]
        .as_array()
        .unwrap_or_else(|| panic!("{section}: no outcomes in {v}"))
        .iter()
        .map(|o| (o["address"].as_str().unwrap_or_default().to_owned(), o.clone()))
        .collect()
}

fn assert_bound(d: &BTreeMap<String, Option<String>>, when: &str) {
    for a in [E1000E, EDU, NVME_VF0] {
        assert_eq!(d.get(a).cloned().flatten().as_deref(), Some("vfio-pci"), "{when}: {a} on vfio-pci");
    }
    assert_eq!(d.get(DISK).cloned().flatten().as_deref(), Some("nvme"), "{when}: the mounted disk keeps nvme");
}

fn assert_restored(d: &BTreeMap<String, Option<String>>, when: &str) {
    assert_eq!(d.get(E1000E).cloned().flatten().as_deref(), Some("e1000e"), "{when}: e1000e back");
    assert_eq!(d.get(EDU).cloned().flatten(), None, "{when}: edu had no driver");
    assert_eq!(d.get(NVME_VF0).cloned().flatten(), None, "{when}: the VF had no driver (autoprobe off)");
    assert_eq!(d.get(DISK).cloned().flatten().as_deref(), Some("nvme"), "{when}");
}

#[test]
fn bind_and_unbind_on_a_real_kernel() {
    let script = format!(
        r#"{KERNEL_VIEW}{ENABLE_VFS}
kernel_view -before
section plan nodeprep bind --config $CFG --dry-run -o json
section bind nodeprep bind --config $CFG -o json
kernel_view -bound
section vfio ls /dev/vfio
section state cat /var/lib/nodeprep/bindings.json
section rebind nodeprep bind --config $CFG -o json
section unbind nodeprep unbind -o json
kernel_view -restored
section state-after cat /var/lib/nodeprep/bindings.json
"#
    );
    let out = Vm::new(Machine::Iommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    assert_eq!(out.section("pf").trim(), NVME_PF);
    assert_eq!(out.section("disk").trim(), DISK);
    let groups = kernel_groups(&out, "kernel-groups-before");
    let before = drivers(&out, "kernel-pci-before");
    assert_eq!(before.get(E1000E).cloned().flatten().as_deref(), Some("e1000e"));
    assert_eq!(before.get(NVME_VF0).cloned().flatten(), None);

    // The plan: three devices to bind, the mounted disk refused with the mount named.
    let plan = out.json("plan");
    assert_eq!(plan["loadVfio"], true, "vfio-pci is not loaded before the first bind: {plan}");
    let refused =
        plan["devices"].as_array().expect("devices").iter().find(|d| d["address"] == DISK).expect("disk in plan");
    assert_eq!(refused["action"], "refused");
    assert!(refused["reason"].as_str().unwrap_or_default().contains(DISK_MOUNT), "{refused}");

    // Bound: drivers, /dev/vfio/<group> per device (groups read from the kernel), writes.
    assert_eq!(out.status("bind"), 1, "exit 1: one device was refused");
    let bound = outcomes(&out, "bind");
    assert_bound(&drivers(&out, "kernel-pci-bound"), "after bind");
    let vfio: BTreeSet<&str> = out.section("vfio").split_whitespace().collect();
    for (a, writes) in [(E1000E, 3), (EDU, 2), (NVME_VF0, 2)] {
        let o = &bound[a];
        assert_eq!(o["outcome"], "bound", "{o}");
        let group = groups[a];
        assert_eq!(o["vfioDevice"], format!("/dev/vfio/{group}"), "{o}");
        assert!(vfio.contains(group.to_string().as_str()), "/dev/vfio/{group} exists: {vfio:?}");
        assert_eq!(o["writes"], writes, "{a}: override, unbind (when it has a driver), probe");
    }
    assert_eq!(bound[DISK]["outcome"], "refused");
    let state: Value = serde_json::from_str(out.section("state")).expect("state file is JSON");
    assert_eq!(state["devices"][E1000E]["originalDriver"], "e1000e");
    assert_eq!(state["devices"][EDU]["originalDriver"], Value::Null);

    // Idempotent: nothing to write the second time.
    let again = outcomes(&out, "rebind");
    assert_eq!(out.json("rebind")["writes"], 0);
    for a in [E1000E, EDU, NVME_VF0] {
        assert_eq!(again[a]["outcome"], "already-bound");
    }

    // Reversible.
    assert_eq!(out.status("unbind"), 0, "{:?}", out.try_section("unbind.stderr"));
    assert_restored(&drivers(&out, "kernel-pci-restored"), "after unbind");
    let state: Value = serde_json::from_str(out.section("state-after")).expect("state file is JSON");
    assert_eq!(state["devices"], serde_json::json!({}), "records dropped once restored");
}

#[test]
fn killed_mid_bind_converges_on_a_real_kernel() {
    // A full bind is 7 writes (3 + 2 + 2). Abort after each of them, rerun, restore.
    let mut script = format!("{KERNEL_VIEW}{ENABLE_VFS}\n");
    for n in 1..=7 {
        script.push_str(&format!(
            "section crash-{n} env NODEPREP_FAILPOINT_KILL_AFTER_WRITES={n} nodeprep bind --config $CFG\n\
             section crashed-{n} kernel_pci\n\
             section rerun-{n} nodeprep bind --config $CFG -o json\n\
             section rerun-pci-{n} kernel_pci\n\
             section restore-{n} nodeprep unbind -o json\n\
             section restored-{n} kernel_pci\n"
        ));
    }
    // And a real SIGKILL while it runs.
    script.push_str(
        "nodeprep bind --config $CFG >/dev/null 2>&1 & p=$!; usleep 20000; kill -9 $p; wait $p\n\
         section killed kernel_pci\n\
         section rerun-killed nodeprep bind --config $CFG -o json\n\
         section rerun-killed-pci kernel_pci\n",
    );
    let out = Vm::new(Machine::Iommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    assert_eq!(out.section("pf").trim(), NVME_PF);
    let mut mid_way = 0;
    for n in 1..=7 {
        let when = format!("killed after write {n}");
        assert_ne!(out.status(&format!("crash-{n}")), 0, "{when}: the failpoint aborts the process");
        let crashed = drivers(&out, &format!("crashed-{n}"));
        if [E1000E, EDU, NVME_VF0].iter().any(|a| crashed.get(*a).cloned().flatten().as_deref() != Some("vfio-pci")) {
            mid_way += 1;
        }
        assert_eq!(out.status(&format!("rerun-{n}")), 1, "{when}: rerun exits 1 only for the refused disk");
        assert_bound(&drivers(&out, &format!("rerun-pci-{n}")), &format!("{when}, rerun"));
        assert_eq!(
            out.status(&format!("restore-{n}")),
            0,
            "{when}: {:?}",
            out.try_section(&format!("restore-{n}.stderr"))
        );
        assert_restored(&drivers(&out, &format!("restored-{n}")), &format!("{when}, restored"));
    }
    assert_eq!(mid_way, 6, "kills after writes 1-6 leave the bind unfinished; after 7 all are bound");
    assert_bound(&drivers(&out, "rerun-killed-pci"), "SIGKILL then rerun");
}

#[test]
fn bind_without_an_iommu_refuses_cleanly() {
    let script = format!(
        "{KERNEL_VIEW}\nkernel_view -before\n\
         section bind nodeprep bind --config /etc/nodeprep/config.yaml -o json\n\
         kernel_view -after\n\
         section state ls /var/lib/nodeprep\n"
    );
    let out = Vm::new(Machine::NoIommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    assert_eq!(out.status("bind"), 1);
    let o = outcomes(&out, "bind");
    for a in [E1000E, EDU] {
        assert_eq!(o[a]["outcome"], "refused", "{a}: {}", o[a]);
        assert!(o[a]["detail"].as_str().unwrap_or_default().contains("no IOMMU group"), "{}", o[a]);
    }
    assert_eq!(out.json("bind")["writes"], 0);
    assert_eq!(drivers(&out, "kernel-pci-before"), drivers(&out, "kernel-pci-after"), "nothing changed");
    assert_ne!(out.status("state"), 0, "no state file was written");
}

// ---- device plugins on a real kernel -----------------------------------------------------------

#[test]
fn plugins_advertise_allocate_and_notice_an_unbind_on_a_real_kernel() {
    let dir = "/var/lib/kubelet/device-plugins";
    let sock = format!("{dir}/nodeprep.io-edu.sock");
    let script = format!(
        r#"{KERNEL_VIEW}{ENABLE_VFS}
nodeprep --log-level info run --config $CFG > /tmp/run.log 2>&1 &
RUN=$!
i=0; while [ ! -S {sock} ] && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
kernel_view -serving
section probe nodeprep plugins probe --allocate {EDU} {sock}
section probe-disk nodeprep plugins probe {dir}/nodeprep.io-nvme_disk.sock
nodeprep --log-level info plugins probe --updates 2 --timeout 60 {sock} > /tmp/watch.json 2>/tmp/watch.err &
W=$!
i=0; while ! grep -q "ListAndWatch message received" /tmp/watch.err && [ $i -lt 600 ]; do usleep 50000; i=$((i+1)); done
echo {EDU} > /sys/bus/pci/drivers/vfio-pci/unbind
wait $W
section watch cat /tmp/watch.json
section allocate-after nodeprep plugins probe --allocate {EDU} {sock}
kill -TERM $RUN; wait $RUN
section run-exit echo $?
section sockets-after ls {dir}
section runlog cat /tmp/run.log
cp $CFG /tmp/cdi.yaml
printf 'cdi:\n  kind: nodeprep.io/vfio\n' >> /tmp/cdi.yaml
nodeprep --log-level info run --config /tmp/cdi.yaml > /tmp/run-cdi.log 2>&1 &
RUN=$!
i=0; while [ ! -S {sock} ] && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
kernel_view -cdi
section probe-cdi nodeprep plugins probe --allocate {EDU} {sock}
section cdi-spec cat /var/run/cdi/nodeprep.io-vfio.json
kill -TERM $RUN; wait $RUN
section runlog-cdi cat /tmp/run-cdi.log
"#
    );
    let out = Vm::new(Machine::Iommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    let groups = kernel_groups(&out, "kernel-groups-serving");
    assert_bound(&drivers(&out, "kernel-pci-serving"), "nodeprep run binds per config");

    // Advertised and allocated.
    assert_eq!(out.status("probe"), 0, "{:?} {:?}", out.try_section("probe.stderr"), out.try_section("runlog"));
    let probe = out.json("probe");
    assert_eq!(
        probe["lists"][0]["devices"],
        serde_json::json!([{"id": EDU, "health": "Healthy", "numaNodes": []}]),
        "{probe}"
    );
    let alloc = &probe["allocation"];
    let group = groups[EDU];
    assert_eq!(
        alloc["devices"],
        serde_json::json!(["/dev/vfio/vfio /dev/vfio/vfio mrw", format!("/dev/vfio/{group} /dev/vfio/{group} mrw")]),
        "{alloc}"
    );
    assert_eq!(alloc["envs"]["PCI_RESOURCE_NODEPREP_IO_EDU"], EDU, "{alloc}");
    assert_eq!(alloc["envs"]["PCIDEVICE_NODEPREP_IO_EDU"], EDU, "{alloc}");
    // The refused disk is advertised, unhealthy: it is not on vfio-pci.
    let disk = out.json("probe-disk");
    assert_eq!(disk["lists"][0]["devices"][0]["health"], "Unhealthy", "{disk}");

    // Unbound behind nodeprep's back: the stream says Unhealthy, and Allocate refuses.
    let watch = out.json("watch");
    let lists = watch["lists"].as_array().expect("lists");
    assert_eq!(lists.len(), 2, "a second ListAndWatch message arrived: {watch}");
    assert_eq!(lists[1]["devices"][0]["health"], "Unhealthy", "{watch}");
    assert_eq!(out.status("allocate-after"), 1);
    let err = out.json("allocate-after")["allocateError"].as_str().unwrap_or_default().to_owned();
    assert!(err.contains(EDU) && err.contains("vfio-pci"), "{err}");

    // SIGTERM: clean exit, sockets removed.
    assert_eq!(out.section("run-exit").trim(), "0", "{}", out.section("runlog"));
    assert!(!out.section("sockets-after").contains(".sock"), "sockets removed: {}", out.section("sockets-after"));

    // Again with CDI configured: the device (bound again) is named by CDI, and the spec file
    // holds its real group's node.
    let groups = kernel_groups(&out, "kernel-groups-cdi");
    assert_eq!(
        out.status("probe-cdi"),
        0,
        "{:?} {:?}",
        out.try_section("probe-cdi.stderr"),
        out.try_section("runlog-cdi")
    );
    let alloc = &out.json("probe-cdi")["allocation"];
    assert_eq!(alloc["cdiDevices"], serde_json::json!([format!("nodeprep.io/vfio={EDU}")]), "{alloc}");
    assert_eq!(alloc["devices"], serde_json::json!([]), "{alloc}");
    assert_eq!(alloc["envs"]["PCI_RESOURCE_NODEPREP_IO_EDU"], EDU, "{alloc}");
    let spec = out.json("cdi-spec");
    assert_eq!(spec["kind"], "nodeprep.io/vfio", "{spec}");
    assert_eq!(spec["containerEdits"]["deviceNodes"][0]["path"], "/dev/vfio/vfio", "{spec}");
    assert_eq!(spec["devices"][0]["name"], EDU, "{spec}");
    let node = format!("/dev/vfio/{}", groups[EDU]);
    assert_eq!(spec["devices"][0]["containerEdits"]["deviceNodes"][0]["path"], node.as_str(), "{spec}");
}

#[test]
fn bind_through_a_host_root_like_the_daemonset() {
    // The DaemonSet sees the host's / at /host: reads, writes and modprobe (chrooted) go there.
    let script = format!(
        r#"{KERNEL_VIEW}{ENABLE_VFS}
mkdir -p /host
mount -o rbind / /host
section mounted ls /host/sys/bus/pci/devices
section bind nodeprep --host-root /host bind --config $CFG -o json
section modules cut -d' ' -f1 /proc/modules
kernel_view -bound
section state cat /host/var/lib/nodeprep/bindings.json
section unbind nodeprep --host-root /host unbind -o json
kernel_view -restored
"#
    );
    let out = Vm::new(Machine::Iommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    assert!(out.section("mounted").contains(EDU), "the host's sysfs is visible under /host");
    assert_eq!(out.status("bind"), 1, "exit 1 only for the refused disk: {:?}", out.try_section("bind.stderr"));
    let modules: BTreeSet<&str> = out.section("modules").lines().collect();
    assert!(modules.contains("vfio_pci") && modules.contains("vfio_iommu_type1"), "loaded through chroot: {modules:?}");
    let bound = outcomes(&out, "bind");
    for a in [E1000E, EDU, NVME_VF0] {
        assert_eq!(bound[a]["outcome"], "bound", "{}", bound[a]);
    }
    assert_bound(&drivers(&out, "kernel-pci-bound"), "bound through /host");
    let state: Value = serde_json::from_str(out.section("state")).expect("state file under the host root");
    assert_eq!(state["devices"][E1000E]["originalDriver"], "e1000e");
    assert_eq!(out.status("unbind"), 0, "{:?}", out.try_section("unbind.stderr"));
    assert_restored(&drivers(&out, "kernel-pci-restored"), "restored through /host");
}

// ---- huge pages on a real kernel ---------------------------------------------------------------

/// The guest's 2Mi pools and `/proc/meminfo`'s view, as `KEY=VALUE` lines: `nr`, `node0`,
/// `HugePages_Total`, `Hugepagesize`.
const HUGEPAGE_VIEW: &str = r#"
HP=/sys/kernel/mm/hugepages/hugepages-2048kB
pool_view() {
  echo "nr=$(cat $HP/nr_hugepages)"
  echo "node0=$(cat /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages)"
  grep -E '^(HugePages_Total|Hugepagesize):' /proc/meminfo | tr -d ' ' | sed 's/:/=/'
}
"#;

/// 16 pages: far less than the guest's 512 MiB. 4096 pages: 8 GiB, far more.
const HUGEPAGES_16: &str = "hugepages:\n  - size: 2Mi\n    pages: 16\n";
const HUGEPAGES_TOO_MANY: &str = "hugepages:\n  - size: 2Mi\n    pages: 4096\n";
const HUGEPAGES_NONE: &str = "hugepages:\n  - size: 2Mi\n    pages: 0\n";
/// One 1 GiB page: it cannot fit in the guest's 512 MiB at all.
const HUGEPAGES_1GI: &str = "hugepages:\n  - size: 1Gi\n    pages: 1\n";
/// Node 0's pool, and a node the single-node guest does not have.
const HUGEPAGES_PER_NODE: &str =
    "hugepages:\n  - size: 2Mi\n    pages: 8\n    numaNode: 0\n  - size: 2Mi\n    pages: 8\n    numaNode: 1\n";

fn count_of(out: &VmOutput, section: &str, key: &str) -> u64 {
    let v = out.value(section, key);
    v.parse().unwrap_or_else(|e| panic!("{section}: {key}={v:?} is not a count: {e}"))
}

#[test]
fn hugepages_reserved_and_short_on_a_real_kernel() {
    let script = format!(
        r#"{HUGEPAGE_VIEW}
section nodes ls /sys/devices/system/node
section before pool_view
section reserve nodeprep hugepages --config /etc/nodeprep/hp16.yaml -o json
section after-reserve pool_view
section again nodeprep hugepages --config /etc/nodeprep/hp16.yaml -o json
section too-many nodeprep hugepages --config /etc/nodeprep/hp-too-many.yaml -o json
section after-too-many pool_view
section release nodeprep hugepages --config /etc/nodeprep/hp0.yaml -o json
section after-release pool_view
section per-node nodeprep hugepages --config /etc/nodeprep/hp-node.yaml -o json
section after-per-node pool_view
section text nodeprep hugepages --config /etc/nodeprep/hp-node.yaml
section one-gi nodeprep hugepages --config /etc/nodeprep/hp-1gi.yaml -o json
section after-one-gi cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
"#
    );
    let out = Vm::new(Machine::Iommu)
        .file("/etc/nodeprep/hp16.yaml", HUGEPAGES_16)
        .file("/etc/nodeprep/hp-too-many.yaml", HUGEPAGES_TOO_MANY)
        .file("/etc/nodeprep/hp0.yaml", HUGEPAGES_NONE)
        .file("/etc/nodeprep/hp-node.yaml", HUGEPAGES_PER_NODE)
        .file("/etc/nodeprep/hp-1gi.yaml", HUGEPAGES_1GI)
        .run(&script);
    let first = |section: &str| {
        assert!(out.try_section(section).is_some(), "no section {section}");
        out.json(section)["outcomes"][0].clone()
    };
    assert_eq!(out.value("before", "Hugepagesize"), "2048kB", "2 MiB is the default size");
    assert_eq!(count_of(&out, "before", "nr"), 0, "the guest boots without huge pages");

    // 16 pages: the kernel's count, node 0's and /proc/meminfo agree with what nodeprep reports.
    assert_eq!(out.status("reserve"), 0, "{:?}", out.try_section("reserve.stderr"));
    let o = first("reserve");
    assert_eq!(o["outcome"], "reserved", "{o}");
    assert_eq!(
        (o["before"].as_u64(), o["granted"].as_u64(), o["writes"].as_u64()),
        (Some(0), Some(16), Some(1)),
        "{o}"
    );
    assert_eq!(count_of(&out, "after-reserve", "nr"), 16);
    assert_eq!(count_of(&out, "after-reserve", "HugePages_Total"), 16);
    assert_eq!(count_of(&out, "after-reserve", "node0"), 16, "one NUMA node holds them all");

    // Again: nothing to write.
    assert_eq!(out.status("again"), 0);
    let o = first("again");
    assert_eq!((o["outcome"].as_str(), o["writes"].as_u64()), (Some("unchanged"), Some(0)), "{o}");
    assert_eq!(out.json("again")["writes"], 0);

    // Far more than the guest's memory: the kernel grants what it can, and nodeprep reports
    // exactly that, as short, with the boot-time hint; exit 1.
    assert_eq!(out.status("too-many"), 1, "{:?}", out.try_section("too-many.stderr"));
    let o = first("too-many");
    assert_eq!(o["outcome"], "short", "{o}");
    let granted = o["granted"].as_u64().unwrap_or_else(|| panic!("no granted count: {o}"));
    assert_eq!(granted, count_of(&out, "after-too-many", "nr"), "granted is what the kernel reports");
    assert_eq!(granted, count_of(&out, "after-too-many", "HugePages_Total"), "and what /proc/meminfo reports");
    assert!((16..256).contains(&granted), "some pages, fewer than 512 MiB holds: {granted}");
    let detail = o["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("granted {granted} of 4096 2Mi pages"))
            && detail.contains("nodeprep machineconfig --hugepages 2Mi:4096"),
        "{detail}"
    );
    eprintln!("huge pages on a real kernel: 16 of 16 reserved; {granted} of 4096 granted in a 512 MiB guest");

    // Back to 0: a pool shrinks to exactly its count.
    assert_eq!(out.status("release"), 0, "{:?}", out.try_section("release.stderr"));
    let o = first("release");
    assert_eq!(
        (o["outcome"].as_str(), o["before"].as_u64(), o["granted"].as_u64()),
        (Some("reserved"), Some(granted), Some(0))
    );
    assert_eq!(count_of(&out, "after-release", "HugePages_Total"), 0);

    // Per NUMA node: node 0's pool is set (the global count follows), node 1 does not exist.
    let nodes: Vec<&str> = out.section("nodes").split_whitespace().filter(|n| n.starts_with("node")).collect();
    assert_eq!(nodes, ["node0"], "a single-node guest");
    assert_eq!(out.status("per-node"), 1, "node 1 is refused: {:?}", out.try_section("per-node.stderr"));
    let per_node = out.json("per-node");
    let (n0, n1) = (&per_node["outcomes"][0], &per_node["outcomes"][1]);
    assert_eq!(
        (n0["outcome"].as_str(), n0["numaNode"].as_u64(), n0["granted"].as_u64()),
        (Some("reserved"), Some(0), Some(8)),
        "{n0}"
    );
    assert_eq!((n1["outcome"].as_str(), n1["writes"].as_u64()), (Some("refused"), Some(0)), "{n1}");
    assert!(n1["detail"].as_str().unwrap_or_default().contains("NUMA node 1 has no 2Mi pool"), "{n1}");
    assert_eq!(count_of(&out, "after-per-node", "node0"), 8);
    assert_eq!(count_of(&out, "after-per-node", "nr"), 8);
    assert_eq!(count_of(&out, "after-per-node", "HugePages_Total"), 8);
    let text = out.section("text");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["unchanged", "2Mi", "node0", "8", "8", "8"]),
        "{text}"
    );

    // 1Gi pages at run time: the kernel offers the size (-cpu max has pdpe1gb) but cannot find
    // a free, aligned GiB in a 512 MiB guest: short, 0 granted, and the kernel agrees.
    assert_eq!(out.status("one-gi"), 1, "{:?}", out.try_section("one-gi.stderr"));
    let o = first("one-gi");
    assert_eq!(
        (o["outcome"].as_str(), o["sizeKb"].as_u64(), o["granted"].as_u64()),
        (Some("short"), Some(1_048_576), Some(0)),
        "{o}"
    );
    assert_eq!(out.section("after-one-gi").trim(), "0");
    assert!(o["detail"].as_str().unwrap_or_default().contains("granted 0 of 1 1Gi pages"), "{o}");
}

// ---- liveness: the agent after a config swap ---------------------------------------------------

/// The config swap that deadlocked the agent on one vCPU (4 runs in 5 before the fix): a
/// ConfigMap-style directory (`..v1/`, `..data -> ..v1`, `config.yaml -> ..data/config.yaml`)
/// selecting e1000e and edu; once both are on vfio-pci, `..data` swapped to a version that
/// selects only edu. Then an Allocate, `/healthz`, and SIGTERM, which must end the agent with
/// status 0 within 2 s. Twenty rounds in one boot, the devices given back between rounds.
#[test]
fn config_swap_then_allocate_healthz_and_sigterm_twenty_times_on_one_cpu() {
    const ROUNDS: u32 = 20;
    let dir = "/tmp/dp";
    let sock = format!("{dir}/nodeprep.io-edu.sock");
    let (e_vendor, e_device) = E1000E_ID;
    let (x_vendor, x_device) = EDU_ID;
    let script = format!(
        r#"
ip link set lo up
mkdir -p /etc/np/..v1 /etc/np/..v2 {dir}
cat > /etc/np/..v1/config.yaml <<EOC
devices:
  - resourceName: nodeprep.io/e1000e
    selectors: {{vendors: ["{e_vendor}"], devices: ["{e_device}"]}}
  - resourceName: nodeprep.io/edu
    selectors: {{vendors: ["{x_vendor}"], devices: ["{x_device}"]}}
EOC
cat > /etc/np/..v2/config.yaml <<EOC
devices:
  - resourceName: nodeprep.io/edu
    selectors: {{vendors: ["{x_vendor}"], devices: ["{x_device}"]}}
EOC
ln -s ..data/config.yaml /etc/np/config.yaml
drv() {{ [ -e /sys/bus/pci/devices/$1/driver ] && basename "$(readlink /sys/bus/pci/devices/$1/driver)"; }}
rounds() {{
  r=1
  while [ $r -le {ROUNDS} ]; do
    ln -sfn ..v1 /etc/np/..data
    nodeprep --log-level info run --no-kube --config /etc/np/config.yaml --plugin-dir {dir} --listen 127.0.0.1:9437 > /tmp/run-$r.log 2>&1 &
    RUN=$!
    i=0
    while [ $i -lt 400 ]; do
      [ -S {sock} ] && [ "$(drv {E1000E})" = vfio-pci ] && [ "$(drv {EDU})" = vfio-pci ] && break
      usleep 50000; i=$((i+1))
    done
    bound="$(drv {E1000E}),$(drv {EDU})"
    ln -sfn ..v2 /etc/np/..data
    i=0
    while ! grep -q "config reloaded" /tmp/run-$r.log && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
    reloaded=no
    grep -q "config reloaded" /tmp/run-$r.log && reloaded=yes
    # The monitor's rescan after the reload (the moment of the old deadlock) has come and gone.
    i=0
    while ! grep -q "devices changed" /tmp/run-$r.log && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
    timeout 10 nodeprep plugins probe --allocate {EDU} {sock} > /tmp/alloc-$r.json 2>&1
    alloc=$?
    health=$(timeout 5 wget -q -O - http://127.0.0.1:9437/healthz 2>/dev/null | head -c 2)
    kill -TERM $RUN
    i=0
    while kill -0 $RUN 2>/dev/null && [ $i -lt 40 ]; do usleep 50000; i=$((i+1)); done
    if kill -0 $RUN 2>/dev/null; then
      exit_status=hung
      echo "--- round $r: still running 2 s after SIGTERM; its threads:"
      for t in /proc/$RUN/task/*; do echo "${{t##*/}} $(cat $t/wchan) $(cat $t/stat | cut -d' ' -f3)"; done
      tail -20 /tmp/run-$r.log
      kill -KILL $RUN
      wait $RUN
    else
      wait $RUN
      exit_status=$?
    fi
    echo "round=$r bound=$bound reloaded=$reloaded alloc=$alloc health=$health exit=$exit_status"
    nodeprep unbind > /tmp/unbind-$r.log 2>&1 || cat /tmp/unbind-$r.log
    r=$((r+1))
  done
}}
section rounds rounds
section last-run cat /tmp/run-{ROUNDS}.log
"#,
        E1000E = E1000E,
        EDU = EDU,
    );
    let out = Vm::new(Machine::Iommu).timeout(std::time::Duration::from_secs(600)).run(&script);
    let rounds: Vec<&str> = out.section("rounds").lines().filter(|l| l.starts_with("round=")).collect();
    assert_eq!(rounds.len(), ROUNDS as usize, "every round ran:\n{}", out.section("rounds"));
    for line in &rounds {
        assert!(
            line.ends_with("bound=vfio-pci,vfio-pci reloaded=yes alloc=0 health=ok exit=0"),
            "each round: both bound, the swap seen (it comes as soon as the socket is up, before the agent is fully started), then an Allocate answered, /healthz ok, and exit 0 within 2 s of SIGTERM; got {line}\n{}",
            out.section("rounds")
        );
    }
}

// ---- what the host uses, on a real kernel ------------------------------------------------------

/// e1000e as a port of a Linux bridge that carries an address: refused, naming the bridge. Once
/// the bridge is deleted the same config binds it.
#[test]
fn a_nic_in_a_bridge_with_an_address_is_refused_and_binds_once_the_bridge_is_gone() {
    let (vendor, device) = E1000E_ID;
    let script = format!(
        r#"{KERNEL_VIEW}
cat > /tmp/nic.yaml <<EOC
devices:
  - resourceName: nodeprep.io/nic
    selectors: {{vendors: ["{vendor}"], devices: ["{device}"]}}
EOC
E=$(ls /sys/bus/pci/devices/{E1000E}/net)
modprobe bridge
brctl addbr br0
brctl addif br0 $E
ip link set $E up
ip link set br0 up
ip addr add 192.0.2.10/24 dev br0
section iface echo $E
section master readlink /sys/class/net/$E/master
section plan-bridged nodeprep bind --config /tmp/nic.yaml --dry-run -o json
ip link set br0 down
brctl delif br0 $E
brctl delbr br0
section bind-unbridged nodeprep bind --config /tmp/nic.yaml -o json
kernel_view -after
"#
    );
    let out = Vm::new(Machine::Iommu).run(&script);
    assert!(out.section("master").trim().ends_with("/br0"), "{} is a port of br0", out.section("iface"));
    let plan = out.json("plan-bridged");
    let nic = plan["devices"].as_array().expect("devices").iter().find(|d| d["address"] == E1000E).expect("nic");
    assert_eq!(nic["action"], "refused", "{plan}");
    let reason = nic["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("br0") && reason.contains(out.section("iface").trim()),
        "the reason names the bridge: {reason}"
    );
    assert_eq!(out.status("bind-unbridged"), 0, "{:?}", out.try_section("bind-unbridged.stderr"));
    assert_eq!(outcomes(&out, "bind-unbridged")[E1000E]["outcome"], "bound");
    assert_eq!(drivers(&out, "kernel-pci-after")[E1000E].as_deref(), Some("vfio-pci"));
}

/// The NVMe disk held by an exclusive opener the host's mount table cannot show: its file system
/// mounted in a private mount namespace (as a container's would be). The bind-time exclusive open
/// fails with EBUSY, so the controller is refused; once the holder is gone it would bind.
#[test]
fn an_nvme_disk_held_by_an_exclusive_opener_is_refused() {
    let script = format!(
        r#"
cat > /tmp/disk.yaml <<EOC
devices:
  - resourceName: nodeprep.io/disk
    selectors: {{pciAddresses: ["{DISK}"]}}
EOC
umount {DISK_MOUNT}
P=$(for b in /sys/class/block/*; do case "$(readlink -f $b)" in */{DISK}/*) [ -f $b/partition ] && echo ${{b##*/}};; esac; done | head -1)
mkdir -p /mnt/private
unshare -m sh -c "mount -t ext2 /dev/$P /mnt/private && touch /tmp/held && exec sleep 600" &
H=$!
i=0; while [ ! -e /tmp/held ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
section held echo $P
section host-mounts cat /proc/1/mountinfo
section plan-held nodeprep bind --config /tmp/disk.yaml --dry-run -o json
kill $H; wait $H
# The private namespace goes with its last process; its mount releases the disk shortly after.
usleep 500000
section plan-free nodeprep bind --config /tmp/disk.yaml --dry-run -o json
"#
    );
    let out = Vm::new(Machine::Iommu).run(&script);
    let part = out.section("held").trim().to_owned();
    assert!(!part.is_empty(), "found the disk's partition");
    assert!(
        !out.section("host-mounts").contains("/mnt/private"),
        "the host's mount table does not show the private mount"
    );
    let plan = out.json("plan-held");
    let disk = plan["devices"].as_array().expect("devices").iter().find(|d| d["address"] == DISK).expect("disk");
    assert_eq!(disk["action"], "refused", "{plan}");
    let reason = disk["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&part) && reason.contains("exclusive"), "the reason names the held partition: {reason}");
    let free = out.json("plan-free");
    let disk = free["devices"].as_array().expect("devices").iter().find(|d| d["address"] == DISK).expect("disk");
    assert_eq!(disk["action"], "bind", "nothing holds it any more: {free}");
}

// ---- DRA on a real kernel ----------------------------------------------------------------------

const DRA_DRIVER: &str = "vfio.nodeprep.io";
const DRA_NODE: &str = "node-a";
const DRA_NS: &str = "vms";
/// The device names of edu, e1000e and the mounted disk (`pci-<domain>-<bus>-<dev>-<fn>`).
const DRA_EDU: &str = "pci-0000-02-00-0";
const DRA_E1000E: &str = "pci-0000-01-00-0";
const DRA_DISK: &str = "pci-0000-04-00-0";
const DRA_UID_A: &str = "5f0c9a3e-2b1d-4c6e-8a7f-0123456789ab";
const DRA_UID_DISK: &str = "9d8c7b6a-5e4f-4a3b-9c2d-ba9876543210";

/// edu and e1000e by id (the NIC has no address in the guest: the host does not use it, as for
/// [`BIND_CONFIG`]), and the NVMe controller whose disk is mounted, by address: all offered
/// through DRA, at rest on their host drivers.
const DRA_CONFIG: &str = r#"
dra:
  devices:
    - resourceName: nodeprep.io/edu
      atRest: host
      selectors: {vendors: ["1234"], devices: ["11e8"]}
    - resourceName: nodeprep.io/e1000e
      atRest: host
      selectors: {vendors: ["8086"], devices: ["10d3"]}
    - resourceName: nodeprep.io/nvme_disk
      atRest: host
      selectors: {pciAddresses: ["0000:04:00.0"]}
"#;

/// A ResourceClaim as `kubectl get resourceclaim -o json` prints it, allocated `(request,
/// device)` pairs in this node's pool (plus a result of another driver, which is not ours).
fn dra_claim(name: &str, uid: &str, results: &[(&str, &str)]) -> String {
    let mut r: Vec<Value> = results
        .iter()
        .map(|(req, dev)| serde_json::json!({"request": req, "driver": DRA_DRIVER, "pool": DRA_NODE, "device": dev}))
        .collect();
    r.push(serde_json::json!({"request": "other", "driver": "gpu.example.com", "pool": DRA_NODE, "device": "gpu-0"}));
    serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": DRA_NS, "uid": uid},
        "status": {"allocation": {"devices": {"results": r}}},
    })
    .to_string()
}

/// `ls -i` lines (`INODE PATH`) by path: a file written again (temporary file, rename) gets a
/// new inode.
fn inodes(out: &VmOutput, section: &str) -> BTreeMap<String, String> {
    out.section(section)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next_back()?.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// The CDI device node paths of a CDI spec's device.
fn cdi_nodes(spec: &Value, name: &str) -> Vec<String> {
    let dev = spec["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no CDI device {name} in {spec:#}"));
    dev["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no deviceNodes for {name}: {spec:#}"))
        .iter()
        .map(|n| n["path"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The metadata file: one JSON document per line, v1beta1 then v1alpha1.
fn metadata_docs(out: &VmOutput, section: &str) -> Vec<Value> {
    assert_eq!(out.status(section), 0, "{section}: {:?}", out.try_section(&format!("{section}.stderr")));
    out.section(section)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{section}: line {l:?} is not JSON: {e}")))
        .collect()
}

#[test]
fn dra_prepare_binds_on_claim_refuses_the_mounted_disk_and_unprepare_gives_back_on_a_real_kernel() {
    let script = format!(
        r#"{KERNEL_VIEW}
CFG=/etc/nodeprep/dra.yaml
D="--config $CFG --node-name {DRA_NODE}"
CDI=/var/run/cdi/vfio-nodeprep-io-claim-{DRA_UID_A}.json
META=/var/lib/kubelet/plugins/{DRA_DRIVER}/dra-device-metadata/{DRA_NS}_vm-a
CP=/var/lib/nodeprep/dra-claims.json
links() {{
  for a in {EDU} {E1000E}; do echo "$a $(basename "$(readlink /sys/bus/pci/devices/$a/iommu_group)")"; done
}}
kernel_view -before
section links links
section devices nodeprep dra devices $D
section prepare nodeprep dra prepare $D --claim /etc/nodeprep/claim-a.json
kernel_view -prepared
section vfio ls /dev/vfio
section cdi cat $CDI
section meta-vm cat $META/vm/metadata.json
section meta-nic cat $META/nic/metadata.json
section checkpoint cat $CP
section inodes ls -i $CDI $CP $META/vm/metadata.json $META/nic/metadata.json
section devices-prepared nodeprep dra devices $D
section prepare-again nodeprep dra prepare $D --claim /etc/nodeprep/claim-a.json
kernel_view -again
section cdi-again cat $CDI
section checkpoint-again cat $CP
section inodes-again ls -i $CDI $CP $META/vm/metadata.json $META/nic/metadata.json
section prepare-disk nodeprep dra prepare $D --claim /etc/nodeprep/claim-disk.json
kernel_view -disk
section cdi-disk ls -A /var/run/cdi
section checkpoint-disk cat $CP
section unprepare nodeprep dra unprepare $D --uid {DRA_UID_A}
kernel_view -unprepared
section cdi-after ls -A /var/run/cdi
section meta-after ls -A /var/lib/kubelet/plugins/{DRA_DRIVER}/dra-device-metadata
section checkpoint-after cat $CP
section unprepare-again nodeprep dra unprepare $D --uid {DRA_UID_A}
"#
    );
    let out = Vm::new(Machine::Iommu)
        .file("/etc/nodeprep/dra.yaml", DRA_CONFIG)
        .file("/etc/nodeprep/claim-a.json", dra_claim("vm-a", DRA_UID_A, &[("vm", DRA_EDU), ("nic", DRA_E1000E)]))
        .file("/etc/nodeprep/claim-disk.json", dra_claim("vm-disk", DRA_UID_DISK, &[("vm", DRA_DISK)]))
        .run(&script);
    assert_eq!(out.setup("disk_pci"), DISK, "the mounted disk is where the harness says");

    // Before any claim: edu and e1000e on their own drivers, as sysfs says.
    let before = drivers(&out, "kernel-pci-before");
    assert_eq!(before.get(E1000E).cloned().flatten().as_deref(), Some("e1000e"), "before: {before:?}");
    let edu_driver = before.get(EDU).cloned().unwrap_or_else(|| panic!("no edu in sysfs: {before:?}"));
    assert_ne!(edu_driver.as_deref(), Some("vfio-pci"), "before: edu not on vfio-pci");
    assert_eq!(before.get(DISK).cloned().flatten().as_deref(), Some("nvme"));
    let groups: BTreeMap<String, String> = out
        .section("links")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, g)| (a.to_owned(), g.to_owned())))
        .collect();
    let kgroups = kernel_groups(&out, "kernel-groups-before");
    for a in [EDU, E1000E] {
        assert_eq!(groups.get(a).map(String::as_str), kgroups.get(a).map(ToString::to_string).as_deref(), "{a} group");
    }

    // `nodeprep dra devices`: the three, by name, with their bus id, at rest on the host, healthy.
    assert_eq!(out.status("devices"), 0, "{:?}", out.try_section("devices.stderr"));
    let devices = out.json("devices");
    let list = devices.as_array().unwrap_or_else(|| panic!("not an array: {devices}"));
    let names: Vec<&str> = list.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, [DRA_E1000E, DRA_EDU, DRA_DISK], "{devices:#}");
    for (name, addr, host_driver) in
        [(DRA_E1000E, E1000E, Some("e1000e")), (DRA_EDU, EDU, edu_driver.as_deref()), (DRA_DISK, DISK, Some("nvme"))]
    {
        let d = list.iter().find(|d| d["name"] == name).expect("listed");
        assert_eq!(d["pool"], DRA_NODE, "{d:#}");
        assert_eq!(d["primary"], addr, "{d:#}");
        assert_eq!(d["functions"], serde_json::json!([addr]), "alone in its group: {d:#}");
        assert_eq!(d["atRest"], "host", "{d:#}");
        assert_eq!(d["healthy"], true, "{d:#}");
        assert_eq!(d["attributes"]["resource.kubernetes.io/pciBusID"], serde_json::json!({"string": addr}), "{d:#}");
        assert_eq!(d["attributes"]["atRest"], serde_json::json!({"string": "host"}), "{d:#}");
        assert_eq!(d["attributes"]["hostDriver"]["string"].as_str(), host_driver, "{d:#}");
        if name != DRA_DISK {
            let g: u64 = groups[addr].parse().expect("group number");
            assert_eq!(d["iommuGroup"], g, "{d:#}");
        }
    }

    // Prepared: both on vfio-pci, the group nodes exist, the CDI spec names them.
    assert_eq!(out.status("prepare"), 0, "{:?}", out.try_section("prepare.stderr"));
    let prepared = out.json("prepare");
    let after = drivers(&out, "kernel-pci-prepared");
    for a in [EDU, E1000E] {
        assert_eq!(after.get(a).cloned().flatten().as_deref(), Some("vfio-pci"), "after prepare: {a}: {after:?}");
    }
    assert_eq!(after.get(DISK).cloned().flatten().as_deref(), Some("nvme"), "the disk was not claimed");
    let vfio: BTreeSet<&str> = out.section("vfio").split_whitespace().collect();
    assert!(vfio.contains("vfio"), "/dev/vfio/vfio: {vfio:?}");
    for a in [EDU, E1000E] {
        assert!(vfio.contains(groups[a].as_str()), "/dev/vfio/{} for {a}: {vfio:?}", groups[a]);
    }
    let got = prepared.as_array().unwrap_or_else(|| panic!("prepare printed no array: {prepared}"));
    assert_eq!(got.len(), 2, "{prepared:#}");
    for (name, request) in [(DRA_EDU, "vm"), (DRA_E1000E, "nic")] {
        let d = got.iter().find(|d| d["device"] == name).unwrap_or_else(|| panic!("{name} not prepared: {prepared:#}"));
        assert_eq!(d["pool"], DRA_NODE, "{d}");
        assert_eq!(d["requests"], serde_json::json!([request]), "{d}");
        assert_eq!(
            d["cdiIds"],
            serde_json::json!([
                format!("{DRA_DRIVER}/pci={DRA_UID_A}-{name}"),
                format!("{DRA_DRIVER}/metadata={DRA_UID_A}_{request}")
            ]),
            "{d}"
        );
    }
    assert_eq!(out.status("cdi"), 0, "the claim's CDI spec exists: {:?}", out.try_section("cdi.stderr"));
    let spec = out.json("cdi");
    assert_eq!(spec["kind"], format!("{DRA_DRIVER}/pci"), "{spec:#}");
    for (name, addr) in [(DRA_EDU, EDU), (DRA_E1000E, E1000E)] {
        assert_eq!(
            cdi_nodes(&spec, &format!("{DRA_UID_A}-{name}")),
            ["/dev/vfio/vfio".to_owned(), format!("/dev/vfio/{}", groups[addr])],
            "{spec:#}"
        );
    }
    let env = spec.to_string();
    assert!(env.contains(&format!("PCI_RESOURCE_NODEPREP_IO_EDU={EDU}")), "{spec:#}");
    assert!(env.contains(&format!("PCI_RESOURCE_NODEPREP_IO_E1000E={E1000E}")), "{spec:#}");

    // The KEP-5304 metadata, per request, with the PCI bus id KubeVirt reads.
    for (section, name, addr) in [("meta-vm", DRA_EDU, EDU), ("meta-nic", DRA_E1000E, E1000E)] {
        let docs = metadata_docs(&out, section);
        assert_eq!(docs.len(), 2, "{section}: {docs:#?}");
        assert_eq!(docs[0]["apiVersion"], "metadata.resource.k8s.io/v1beta1");
        for doc in &docs {
            assert_eq!(doc["metadata"]["uid"], DRA_UID_A, "{doc:#}");
            let dev = &doc["requests"][0]["devices"][0];
            assert_eq!(dev["name"], name, "{section}: {doc:#}");
            assert_eq!(dev["attributes"]["resource.kubernetes.io/pciBusID"], serde_json::json!({"string": addr}));
        }
    }

    // The checkpoint: the claim, its functions, the drivers to give back.
    let cp: Value = serde_json::from_str(out.section("checkpoint")).expect("the checkpoint is JSON");
    let rec = &cp["claims"][DRA_UID_A];
    assert_eq!(rec["claim"]["name"], "vm-a", "{cp:#}");
    assert_eq!(rec["claim"]["namespace"], DRA_NS, "{cp:#}");
    let recs = rec["devices"].as_array().unwrap_or_else(|| panic!("no devices in {cp:#}"));
    let by_device = |name: &str| recs.iter().find(|d| d["device"] == name).unwrap_or_else(|| panic!("{name}: {cp:#}"));
    assert_eq!(by_device(DRA_E1000E)["originalDrivers"][E1000E], "e1000e", "{cp:#}");
    assert_eq!(
        by_device(DRA_EDU)["originalDrivers"][EDU].as_str(),
        edu_driver.as_deref(),
        "edu's driver before: {cp:#}"
    );

    // While prepared, both are still offered, healthy (on vfio-pci), their host driver kept.
    assert_eq!(out.status("devices-prepared"), 0, "{:?}", out.try_section("devices-prepared.stderr"));
    let now = out.json("devices-prepared");
    let e = now.as_array().and_then(|l| l.iter().find(|d| d["name"] == DRA_E1000E)).expect("e1000e offered");
    assert_eq!(e["healthy"], true, "{e:#}");
    assert_eq!(e["attributes"]["hostDriver"], serde_json::json!({"string": "e1000e"}), "{e:#}");

    // Again: the same answer, nothing rewritten, nothing rebound.
    assert_eq!(out.status("prepare-again"), 0, "{:?}", out.try_section("prepare-again.stderr"));
    assert_eq!(out.json("prepare-again"), prepared, "the same devices and CDI ids");
    assert_eq!(drivers(&out, "kernel-pci-again"), after, "no driver changed");
    assert_eq!(out.section("cdi-again"), out.section("cdi"));
    assert_eq!(out.section("checkpoint-again"), out.section("checkpoint"));
    let (i1, i2) = (inodes(&out, "inodes"), inodes(&out, "inodes-again"));
    assert_eq!(i1.len(), 4, "{i1:?}");
    assert_eq!(i1, i2, "no file written again (a rewrite is a rename: a new inode)");

    // The mounted disk: refused with the reason, nothing written, still on nvme (its exit
    // status, 1, is checked last).
    assert_ne!(out.status("prepare-disk"), 0, "refused: {:?}", out.try_section("prepare-disk"));
    let err = out.section("prepare-disk.stderr");
    assert!(err.contains(&format!("claim {DRA_NS}/vm-disk ({DRA_UID_DISK}) refused")), "{err}");
    assert!(err.contains("the host uses it"), "{err}");
    assert!(err.contains(DISK_MOUNT), "names the mount: {err}");
    assert!(err.contains(DRA_DISK) && err.contains(DISK), "names the device: {err}");
    let d = drivers(&out, "kernel-pci-disk");
    assert_eq!(d.get(DISK).cloned().flatten().as_deref(), Some("nvme"), "the disk stays on nvme");
    assert_eq!(d, after, "a refused claim changes no driver");
    assert!(!out.section("cdi-disk").contains(DRA_UID_DISK), "no CDI spec: {}", out.section("cdi-disk"));
    assert_eq!(out.section("checkpoint-disk"), out.section("checkpoint"), "no record of the refused claim");

    // Unprepared: the drivers they had, the files and the record gone.
    assert_eq!(out.status("unprepare"), 0, "{:?}", out.try_section("unprepare.stderr"));
    let restored = drivers(&out, "kernel-pci-unprepared");
    assert_eq!(restored.get(E1000E).cloned().flatten().as_deref(), Some("e1000e"), "e1000e back: {restored:?}");
    assert_eq!(restored.get(EDU).cloned().flatten(), edu_driver, "edu back to what it had: {restored:?}");
    assert_eq!(restored, before, "every function as before the claim");
    let cdi_left = out.section("cdi-after");
    assert!(!cdi_left.contains(DRA_UID_A), "the claim's CDI specs are removed: {cdi_left}");
    assert!(!out.section("meta-after").contains("vm-a"), "metadata removed: {}", out.section("meta-after"));
    let cp: Value = serde_json::from_str(out.section("checkpoint-after")).expect("the checkpoint is JSON");
    assert!(cp["claims"].get(DRA_UID_A).is_none(), "the record is gone: {cp:#}");
    assert_eq!(
        out.status("unprepare-again"),
        0,
        "an unknown claim is Ok: {:?}",
        out.try_section("unprepare-again.stderr")
    );

    // A refused claim exits 3, as `nodeprep dra prepare --help` says ("a refusal exits 3 with the
    // reason"), apart from 1 (bind: a device refused) and 2 (usage, unreadable host).
    assert_eq!(
        out.status("prepare-disk"),
        1,
        "a refused claim exits 1, as a refused bind does: {}",
        out.section("prepare-disk.stderr")
    );
}

/// e1000e and edu for device plugins, both bound at rest.
const RELEASE_BOTH: &str = r#"
devices:
  - resourceName: nodeprep.io/e1000e
    selectors: {vendors: ["8086"], devices: ["10d3"]}
  - resourceName: nodeprep.io/edu
    selectors: {vendors: ["1234"], devices: ["11e8"]}
"#;

/// e1000e no longer selected; edu at rest on its host driver (it has none in the guest).
const RELEASE_EDU_AT_REST_HOST: &str = r#"
devices:
  - resourceName: nodeprep.io/edu
    bind: none
    selectors: {vendors: ["1234"], devices: ["11e8"]}
"#;

const RELEASE_POD: &str = "0c0ffee0-1111-4222-8333-944445555666";

#[test]
fn an_at_rest_change_for_a_device_a_pod_holds_waits_for_the_pod_then_goes_through_on_a_real_kernel() {
    let dir = "/var/lib/kubelet/device-plugins";
    let checkpoint = |pods: &str| {
        format!(
            r#"{{"Data":{{"PodDeviceEntries":[{pods}],"RegisteredDevices":{{"nodeprep.io/edu":["{EDU}"]}}}},"Checksum":1}}"#
        )
    };
    let held = checkpoint(&format!(
        r#"{{"PodUID":"{RELEASE_POD}","ContainerName":"compute","ResourceName":"nodeprep.io/edu","DeviceIDs":{{"-1":["{EDU}"]}},"AllocResp":"CgA="}}"#
    ));
    let free = checkpoint("");
    let script = format!(
        r#"{KERNEL_VIEW}
CFG=/etc/nodeprep/config.yaml
mkdir -p {dir}
nodeprep --log-level info run --no-kube --resync 3600 --config $CFG > /tmp/run.log 2>&1 &
RUN=$!
i=0; while [ ! -S {dir}/nodeprep.io-edu.sock ] && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
kernel_view -bound
# A pod holds edu (the kubelet's checkpoint, written as the kubelet does: a new file renamed in).
printf '%s' '{held}' > {dir}/.ckpt && mv {dir}/.ckpt {dir}/kubelet_internal_checkpoint
# The admin changes the config: e1000e no longer selected, edu at rest on its host driver.
cp /etc/nodeprep-next/edu-host.yaml $CFG.new && mv $CFG.new $CFG
i=0; while ! grep -q pending-release /var/lib/nodeprep/status.json 2>/dev/null && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
i=0; while [ "$(basename "$(readlink /sys/bus/pci/devices/{E1000E}/driver)")" != e1000e ] && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
usleep 500000
kernel_view -pending
section status-pending nodeprep status -o json
section status-text nodeprep status
# The pod is gone: the kubelet's next checkpoint no longer lists it.
T0=$(cut -d' ' -f1 /proc/uptime)
printf '%s' '{free}' > {dir}/.ckpt && mv {dir}/.ckpt {dir}/kubelet_internal_checkpoint
i=0; while [ -e /sys/bus/pci/devices/{EDU}/driver ] && [ $i -lt 400 ]; do usleep 20000; i=$((i+1)); done
T1=$(cut -d' ' -f1 /proc/uptime)
section took echo $T0 $T1
kernel_view -released
section status-after nodeprep status -o json
section state-after cat /var/lib/nodeprep/bindings.json
kill -TERM $RUN; wait $RUN
section runlog cat /tmp/run.log
"#
    );
    let out = Vm::new(Machine::Iommu)
        .file("/etc/nodeprep/config.yaml", RELEASE_BOTH)
        .file("/etc/nodeprep-next/edu-host.yaml", RELEASE_EDU_AT_REST_HOST)
        .run(&script);
    let log = || out.try_section("runlog").unwrap_or_default().to_owned();
    let bound = drivers(&out, "kernel-pci-bound");
    assert_eq!(bound[EDU].as_deref(), Some("vfio-pci"), "{}", log());
    assert_eq!(bound[E1000E].as_deref(), Some("vfio-pci"), "{}", log());

    // Pending: edu stays on vfio-pci while the pod holds it; e1000e, held by nobody, went back.
    let pending = drivers(&out, "kernel-pci-pending");
    assert_eq!(pending[EDU].as_deref(), Some("vfio-pci"), "a held device stays: {}", log());
    assert_eq!(pending[E1000E].as_deref(), Some("e1000e"), "given back at once: {}", log());
    let status = out.json("status-pending");
    let waiting = status["pending"].as_array().expect("pending");
    assert_eq!(waiting.len(), 1, "{status:#}");
    assert_eq!(waiting[0]["address"], EDU, "{status:#}");
    assert_eq!(waiting[0]["why"], "its config entry says bind: none", "{status:#}");
    assert_eq!(waiting[0]["holder"]["uid"], RELEASE_POD, "{status:#}");
    let text = out.section("status-text");
    assert!(text.contains(&format!("{EDU} its config entry says bind: none: held by pod {RELEASE_POD}")), "{text}");

    // The pod goes: edu is given back (to no driver: it had none) within moments.
    let released = drivers(&out, "kernel-pci-released");
    assert_eq!(released[EDU], None, "edu back to no driver: {}", log());
    assert_eq!(released[E1000E].as_deref(), Some("e1000e"));
    let took: Vec<f64> = out.section("took").split_whitespace().filter_map(|t| t.parse().ok()).collect();
    let secs = took[1] - took[0];
    println!("checkpoint without the pod -> edu given back: {:.2} s (TCG guest)", secs);
    assert!(secs < 5.0, "given back on the checkpoint's change, not at the hourly resync: {secs} s");
    let after = out.json("status-after");
    assert_eq!(after["pending"], serde_json::json!([]), "{after:#}");
    let state: Value = serde_json::from_str(out.section("state-after")).expect("bindings.json");
    assert_eq!(state["devices"], serde_json::json!({}), "no record left: {state}");
    assert!(log().contains("released"), "{}", log());
}
