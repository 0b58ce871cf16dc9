//! Tests of the fixture builder itself (tests/support): the trees must look exactly like the
//! kernel's, down to symlink depths, and pciutils must be able to read them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::lspci::LspciDevice;
use support::*;

// ---- helpers ---------------------------------------------------------------------------------

fn read(h: &HostTree, rel: impl AsRef<Path>) -> String {
    let p = h.path(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn link(h: &HostTree, rel: impl AsRef<Path>) -> String {
    let p = h.path(rel);
    fs::read_link(&p).unwrap_or_else(|e| panic!("readlink {}: {e}", p.display())).to_string_lossy().into_owned()
}

fn canon(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn hex_attr(h: &HostTree, dev: &Path, attr: &str) -> u32 {
    let s = read(h, dev.join(attr));
    let t = s.strip_suffix('\n').unwrap_or_else(|| panic!("{attr} of {} lacks a trailing newline", dev.display()));
    let t = t.strip_prefix("0x").unwrap_or_else(|| panic!("{attr} {t:?} lacks 0x"));
    u32::from_str_radix(t, 16).unwrap_or_else(|e| panic!("{attr} {t:?}: {e}"))
}

/// Checks every structural invariant of the PCI part of a sane tree; returns the number of
/// functions.
fn check_pci_tree(h: &HostTree) -> usize {
    let root = canon(h.root());
    let bus_devices = h.path("sys/bus/pci/devices");
    let sys_devices = root.join("sys/devices");
    let addrs = names(&bus_devices);
    assert_eq!(addrs, h.pci_addrs().into_iter().collect::<BTreeSet<_>>());
    for addr in &addrs {
        let a = PciAddr::parse(addr).unwrap_or_else(|| panic!("bad entry {addr}"));
        // The bus link: exactly three levels up, then devices/pci<DDDD>:<BB>/.../<addr>.
        let text = link(h, format!("sys/bus/pci/devices/{addr}"));
        assert!(text.starts_with("../../../devices/pci"), "{addr}: {text}");
        assert!(text.ends_with(&format!("/{addr}")), "{addr}: {text}");
        let dir = canon(&bus_devices.join(addr));
        assert!(dir.starts_with(&sys_devices), "{addr} resolves outside sys/devices: {}", dir.display());
        assert_eq!(dir.strip_prefix(&root).expect("under root"), h.pci_dir(addr));
        assert!(dir.join("vendor").is_file(), "{addr}: no vendor");
        // Root bus directory: domain and bus of the top-most ancestor; every component between it
        // and the function is a PCI address (a bridge).
        let rel: Vec<String> = dir
            .strip_prefix(&sys_devices)
            .expect("under sys/devices")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let top = PciAddr::parse(&rel[1]).unwrap_or_else(|| panic!("{addr}: {} is not an address", rel[1]));
        assert_eq!(rel[0], top.root_bus_dir(), "{addr}");
        assert_eq!(top.domain, a.domain);
        for c in &rel[1..] {
            assert!(PciAddr::parse(c).is_some(), "{addr}: path component {c} is not an address");
        }
        let rel_dir = h.pci_dir(addr);
        // Attribute formats.
        let vendor = hex_attr(h, &rel_dir, "vendor");
        let device = hex_attr(h, &rel_dir, "device");
        let class = hex_attr(h, &rel_dir, "class");
        let rev = hex_attr(h, &rel_dir, "revision");
        for (attr, width) in [
            ("vendor", 6),
            ("device", 6),
            ("subsystem_vendor", 6),
            ("subsystem_device", 6),
            ("class", 8),
            ("revision", 4),
        ] {
            assert_eq!(read(h, rel_dir.join(attr)).len(), width + 1, "{addr} {attr}");
        }
        let numa = read(h, rel_dir.join("numa_node"));
        assert!(numa.trim_end().parse::<i32>().is_ok() && numa.ends_with('\n'), "{addr} numa {numa:?}");
        let ovr = read(h, rel_dir.join("driver_override"));
        assert!(ovr.ends_with('\n') && !ovr.trim().is_empty(), "{addr} driver_override {ovr:?}");
        assert!(read(h, rel_dir.join("modalias")).starts_with(&format!("pci:v{vendor:08X}d{device:08X}")));
        let res = read(h, rel_dir.join("resource"));
        assert!(res.lines().count() >= 13, "{addr} resource");
        assert!(
            res.lines()
                .all(|l| l.split(' ').count() == 3 && l.split(' ').all(|f| f.len() == 18 && f.starts_with("0x")))
        );
        // config: 256 bytes agreeing with the attributes; VFs read ffff:ffff.
        let cfg = fs::read(dir.join("config")).expect("config");
        assert_eq!(cfg.len(), 256, "{addr} config size");
        let is_vf = dir.join("physfn").exists();
        let (cv, cd) = (u16::from_le_bytes([cfg[0], cfg[1]]), u16::from_le_bytes([cfg[2], cfg[3]]));
        if is_vf {
            assert_eq!((cv, cd), (0xffff, 0xffff), "{addr}: VF config ids");
        } else {
            assert_eq!((u32::from(cv), u32::from(cd)), (vendor, device), "{addr}: config ids");
        }
        assert_eq!(u32::from(cfg[8]), rev);
        assert_eq!(u32::from_le_bytes([cfg[9], cfg[0xa], cfg[0xb], 0]), class);
        let bridge = class >> 8 == 0x0604;
        assert_eq!(cfg[0xe] & 0x7f, u8::from(bridge), "{addr} header type");
        if bridge {
            assert_eq!(cfg[0x18], a.bus, "{addr} primary bus");
        }
        if class >> 8 != 0x0300 {
            assert!(!dir.join("boot_vga").exists(), "{addr}: boot_vga on a non-VGA function");
        }
        // subsystem -> sys/bus/pci
        assert_eq!(canon(&dir.join("subsystem")), root.join("sys/bus/pci"), "{addr} subsystem");
        // driver <-> sys/bus/pci/drivers/<name>/<addr>
        if fs::symlink_metadata(dir.join("driver")).is_ok() {
            let d = canon(&dir.join("driver"));
            assert_eq!(d.parent(), Some(root.join("sys/bus/pci/drivers").as_path()), "{addr} driver");
            for f in ["bind", "unbind", "new_id"] {
                assert!(d.join(f).is_file(), "{addr}: driver lacks {f}");
            }
            assert_eq!(canon(&d.join(addr)), dir, "{addr}: driver back link");
            assert!(read(h, rel_dir.join("uevent")).starts_with("DRIVER="));
            assert_eq!(read(h, rel_dir.join("enable")), "1\n");
        }
        // iommu_group <-> sys/kernel/iommu_groups/<N>/devices/<addr>
        if fs::symlink_metadata(dir.join("iommu_group")).is_ok() {
            let g = canon(&dir.join("iommu_group"));
            assert_eq!(g.parent(), Some(root.join("sys/kernel/iommu_groups").as_path()), "{addr} group");
            assert_eq!(canon(&g.join("devices").join(addr)), dir, "{addr}: group back link");
            assert!(g.join("type").is_file());
        }
        // SR-IOV: physfn <-> virtfnN, beside each other.
        if is_vf {
            assert_eq!(link(h, rel_dir.join("physfn")).matches('/').count(), 1, "{addr}: physfn is ../<pf>");
            let pf = canon(&dir.join("physfn"));
            assert_eq!(pf.parent(), dir.parent(), "{addr}: VF not beside its PF");
            let back = names(&pf)
                .into_iter()
                .filter(|n| n.starts_with("virtfn"))
                .filter(|n| canon(&pf.join(n)) == dir)
                .count();
            assert_eq!(back, 1, "{addr}: PF has no virtfn link back");
            assert!(
                !dir.join("sriov_totalvfs").exists() && !dir.join("sriov_numvfs").exists(),
                "{addr}: sriov_* on a VF"
            );
        }
        if dir.join("sriov_totalvfs").exists() {
            let numvfs: usize = read(h, rel_dir.join("sriov_numvfs")).trim().parse().expect("numvfs");
            let total: usize = read(h, rel_dir.join("sriov_totalvfs")).trim().parse().expect("totalvfs");
            assert!(numvfs <= total);
            assert_eq!(read(h, rel_dir.join("sriov_drivers_autoprobe")), "1\n");
            for i in 0..numvfs {
                let vf = canon(&dir.join(format!("virtfn{i}")));
                assert_eq!(canon(&vf.join("physfn")), dir, "{addr} virtfn{i}");
                assert_eq!(link(h, rel_dir.join(format!("virtfn{i}"))).matches('/').count(), 1);
            }
            assert!(!dir.join(format!("virtfn{numvfs}")).exists());
        }
    }
    assert!(h.path("sys/bus/pci/drivers_probe").is_file());
    addrs.len()
}

/// Every `sys/class/{net,block,nvme,iommu}`, `sys/block` and `sys/dev/block` link resolves.
fn check_class_links(h: &HostTree) {
    for class in ["sys/class/net", "sys/class/block", "sys/class/nvme", "sys/class/iommu", "sys/block", "sys/dev/block"]
    {
        let dir = h.path(class);
        if !dir.exists() {
            continue;
        }
        for n in names(&dir) {
            let p = dir.join(&n);
            let t = canon(&p);
            assert!(t.starts_with(canon(&h.path("sys/devices"))), "{class}/{n} -> {}", t.display());
            if class != "sys/dev/block" {
                assert_eq!(t.file_name().and_then(|s| s.to_str()), Some(n.as_str()));
            }
        }
    }
}

// ---- relative() and addresses ----------------------------------------------------------------

#[test]
fn relative_matches_kernel_link_targets() {
    let r = |a: &str, b: &str| relative(Path::new(a), Path::new(b)).to_string_lossy().into_owned();
    assert_eq!(
        r("sys/bus/pci/devices", "sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0"),
        "../../../devices/pci0000:00/0000:00:1c.0/0000:3b:00.0"
    );
    assert_eq!(
        r("sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0", "sys/bus/pci/drivers/nvme"),
        "../../../../bus/pci/drivers/nvme"
    );
    assert_eq!(r("sys/devices/pci0000:00/0000:00:00.0", "sys/bus/pci/drivers/x"), "../../../bus/pci/drivers/x");
    assert_eq!(r("sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0", "sys/bus/pci"), "../../../../bus/pci");
    assert_eq!(
        r("sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0", "sys/kernel/iommu_groups/7"),
        "../../../../kernel/iommu_groups/7"
    );
    // Siblings (physfn / virtfnN).
    assert_eq!(
        r("sys/devices/pci0000:00/0000:00:03.0/0000:3b:00.2", "sys/devices/pci0000:00/0000:00:03.0/0000:3b:00.0"),
        "../0000:3b:00.0"
    );
    // A link to an ancestor names it from its parent, like the kernel (net/<if>/device).
    assert_eq!(
        r(
            "sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/net/eno1",
            "sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0"
        ),
        "../../../0000:02:00.0"
    );
    assert_eq!(r("a/b/nvme/nvme0/nvme0n1", "a/b/nvme/nvme0"), "../../nvme0");
    // A link to a child of its own directory.
    assert_eq!(r("a/b", "a/b/c"), "c");
    assert_eq!(r("sys/class/net", "sys/devices/virtual/net/lo"), "../../devices/virtual/net/lo");
    assert_eq!(r("sys/block", "sys/devices/virtual/block/dm-0"), "../devices/virtual/block/dm-0");
    assert_eq!(
        r(
            "sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1/nvme0n1p3/holders",
            "sys/devices/virtual/block/dm-0"
        ),
        "../../../../../../../../virtual/block/dm-0"
    );
    assert_eq!(
        r("sys/devices/virtual/block/dm-0/slaves", "sys/devices/pci0000:00/x/nvme0n1p3"),
        "../../../../pci0000:00/x/nvme0n1p3"
    );
    // Absolute paths work the same way; `.` components are ignored.
    assert_eq!(
        r("/h/sys/bus/pci/devices", "/h/sys/devices/pci0000:00/0000:00:00.0"),
        "../../../devices/pci0000:00/0000:00:00.0"
    );
    assert_eq!(r("./x/y", "x/z"), "../z");
}

#[test]
fn relative_links_resolve_on_disk() {
    let h = HostTree::new();
    let cases = [
        ("sys/bus/pci/devices", "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"),
        (
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/net/eth0",
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0",
        ),
        (
            "sys/devices/virtual/block/dm-0/slaves",
            "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p1",
        ),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        h.file(&format!("{to}/marker"), "x").file(&format!("{from}/.keep"), "");
        let rel = relative(Path::new(from), Path::new(to));
        h.symlink(&format!("{from}/l{i}"), &rel.to_string_lossy());
        assert_eq!(read(&h, format!("{from}/l{i}/marker")), "x", "{from} -> {}", rel.display());
    }
}

#[test]
fn pci_addresses_parse_like_the_kernel_spells_them() {
    let a = PciAddr::parse("0000:3b:00.1").expect("parse");
    assert_eq!((a.domain, a.bus, a.dev, a.func), (0, 0x3b, 0, 1));
    assert_eq!(a.rid(), 0x3b01);
    assert_eq!(a.root_bus_dir(), "pci0000:3b");
    let v = PciAddr::parse("10000:e1:00.0").expect("wide domain");
    assert_eq!(v.domain, 0x10000);
    assert_eq!(v.to_string(), "10000:e1:00.0");
    assert_eq!(v.root_bus_dir(), "pci10000:e1");
    for bad in ["0000:3b:20.0", "0000:3b:00.8", "3b:00.0", "0000:3b:0.0", "banana"] {
        assert_eq!(PciAddr::parse(bad), None, "{bad}");
    }
    assert_eq!(HostTree::vf_addr("0000:5e:00.0", 8, 1, 0), "0000:5e:01.0");
    assert_eq!(HostTree::vf_addr("0000:86:00.0", 2, 1, 3), "0000:86:00.5");
    assert_eq!(HostTree::vf_addr("0000:10:00.0", 8, 1, 250), "0000:11:00.2");
}

// ---- builder -------------------------------------------------------------------------------

#[test]
fn builder_writes_kernel_formats() {
    let h = HostTree::new();
    h.pci(&PciFn::new("0000:00:1c.0", 0x8086, 0xa190, 0x060400).driver("pcieport").group(3))
        .pci(
            &PciFn::new("0000:3b:00.0", 0x8086, 0x1572, 0x020000)
                .parent("0000:00:1c.0")
                .rev(2)
                .driver("i40e")
                .group(4)
                .numa(0)
                .totalvfs(8),
        )
        .pci(&PciFn::new("0000:3b:00.1", 0x8086, 0x1572, 0x020000).parent("0000:00:1c.0").rev(2).group(5))
        .pci(&PciFn::new("0000:00:02.0", 0x1234, 0x1111, 0x030000).boot_vga(true))
        .pci(&PciFn::new("0000:00:03.0", 0x10de, 0x1eb8, 0x030200).boot_vga(true))
        .vfs(
            "0000:3b:00.0",
            &[
                PciFn::new("0000:3b:02.0", 0x8086, 0x154c, 0x020000).driver("iavf"),
                PciFn::new("0000:3b:02.1", 0x8086, 0x154c, 0x020000),
            ],
        )
        .group_type(4, "identity");
    let d = "sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.0";
    assert_eq!(h.pci_dir("0000:3b:00.0"), PathBuf::from(d));
    assert_eq!(link(&h, "sys/bus/pci/devices/0000:3b:00.0"), format!("../../../{}", &d["sys/".len()..]));
    assert_eq!(read(&h, format!("{d}/vendor")), "0x8086\n");
    assert_eq!(read(&h, format!("{d}/device")), "0x1572\n");
    assert_eq!(read(&h, format!("{d}/subsystem_vendor")), "0x8086\n");
    assert_eq!(read(&h, format!("{d}/subsystem_device")), "0x0000\n");
    assert_eq!(read(&h, format!("{d}/class")), "0x020000\n");
    assert_eq!(read(&h, format!("{d}/revision")), "0x02\n");
    assert_eq!(read(&h, format!("{d}/numa_node")), "0\n");
    assert_eq!(read(&h, format!("{d}/driver_override")), "(null)\n");
    assert_eq!(read(&h, format!("{d}/irq")), "0\n");
    assert_eq!(read(&h, format!("{d}/local_cpulist")), "0-3\n");
    assert_eq!(read(&h, format!("{d}/sriov_totalvfs")), "8\n");
    assert_eq!(read(&h, format!("{d}/sriov_numvfs")), "2\n");
    assert_eq!(read(&h, format!("{d}/sriov_offset")), "16\n");
    assert_eq!(read(&h, format!("{d}/sriov_stride")), "1\n");
    assert_eq!(read(&h, format!("{d}/sriov_vf_device")), "154c\n");
    assert_eq!(read(&h, format!("{d}/modalias")), "pci:v00008086d00001572sv00008086sd00000000bc02sc00i00\n");
    assert_eq!(link(&h, format!("{d}/subsystem")), "../../../../bus/pci");
    assert_eq!(link(&h, format!("{d}/driver")), "../../../../bus/pci/drivers/i40e");
    assert_eq!(link(&h, "sys/bus/pci/drivers/i40e/0000:3b:00.0"), format!("../../../../{}", &d["sys/".len()..]));
    assert_eq!(link(&h, format!("{d}/iommu_group")), "../../../../kernel/iommu_groups/4");
    assert_eq!(
        link(&h, "sys/kernel/iommu_groups/4/devices/0000:3b:00.0"),
        format!("../../../../{}", &d["sys/".len()..])
    );
    assert_eq!(read(&h, "sys/kernel/iommu_groups/4/type"), "identity\n");
    assert_eq!(read(&h, "sys/kernel/iommu_groups/5/type"), "DMA\n");
    assert_eq!(link(&h, format!("{d}/virtfn0")), "../0000:3b:02.0");
    assert_eq!(link(&h, format!("{d}/virtfn1")), "../0000:3b:02.1");
    assert_eq!(link(&h, "sys/devices/pci0000:00/0000:00:1c.0/0000:3b:02.0/physfn"), "../0000:3b:00.0");
    assert_eq!(
        read(&h, "sys/devices/pci0000:00/0000:00:1c.0/0000:3b:02.0/numa_node"),
        "0\n",
        "VF inherits the PF's node"
    );
    assert!(!h.path("sys/devices/pci0000:00/0000:00:1c.0/0000:3b:02.0/sriov_numvfs").exists());
    assert_eq!(read(&h, "sys/devices/pci0000:00/0000:00:1c.0/0000:3b:00.1/enable"), "0\n");
    assert_eq!(read(&h, "sys/devices/pci0000:00/0000:00:02.0/boot_vga"), "1\n");
    assert!(!h.path("sys/devices/pci0000:00/0000:00:03.0/boot_vga").exists(), "3D controller has no boot_vga");
    assert!(h.path("sys/bus/pci/drivers/i40e/new_id").is_file());
    // Bridge: header type 1 and bus numbers cover the child (and the VFs' bus).
    let cfg = fs::read(h.path("sys/devices/pci0000:00/0000:00:1c.0/config")).expect("config");
    assert_eq!((cfg[0xe], cfg[0x18], cfg[0x19], cfg[0x1a]), (0x01, 0x00, 0x3b, 0x3b));
    // Multi-function bit on both physical functions of slot 3b:00.
    for f in ["0000:3b:00.0", "0000:3b:00.1"] {
        let cfg = fs::read(h.path(h.pci_dir(f)).join("config")).expect("config");
        assert_eq!(cfg[0xe], 0x80, "{f}");
        assert_eq!(&cfg[0x2c..0x30], &[0x86, 0x80, 0, 0]);
    }
    let vf_cfg = fs::read(h.path("sys/devices/pci0000:00/0000:00:1c.0/0000:3b:02.0/config")).expect("config");
    assert_eq!(&vf_cfg[0..4], &[0xff; 4]);
    assert_eq!(vf_cfg[0xe], 0, "VFs are not multi-function");
    check_pci_tree(&h);
}

#[test]
fn wide_domains_use_the_full_hex_domain() {
    let h = HostTree::new();
    h.pci(&PciFn::new("10000:e0:00.0", 0x8086, 0x2030, 0x060400).driver("pcieport"))
        .pci(&PciFn::new("10000:e1:00.0", 0x8086, 0x0a54, 0x010802).parent("10000:e0:00.0").driver("nvme"));
    assert_eq!(
        link(&h, "sys/bus/pci/devices/10000:e1:00.0"),
        "../../../devices/pci10000:e0/10000:e0:00.0/10000:e1:00.0"
    );
    check_pci_tree(&h);
}

#[test]
#[should_panic(expected = "must be added before")]
fn children_need_their_bridge_first() {
    let h = HostTree::new();
    h.pci(&PciFn::new("0000:3b:00.0", 0x8086, 0x1572, 0x020000).parent("0000:00:1c.0"));
}

// ---- machines --------------------------------------------------------------------------------

#[test]
fn sane_machines_links_resolve() {
    for (name, h, n) in [
        ("intel_gpu_server", intel_gpu_server(), 22),
        ("amd_iommu_off", amd_iommu_off(), 6),
        ("nested_vm", nested_vm(), 6),
        ("big_sriov(3, 5)", big_sriov(3, 5), 18),
    ] {
        assert_eq!(check_pci_tree(&h), n, "{name}");
        check_class_links(&h);
    }
}

#[test]
fn intel_gpu_server_contents() {
    use intel::*;
    let h = intel_gpu_server();
    // Exact link texts for a device two levels deep.
    assert_eq!(
        link(&h, format!("sys/bus/pci/devices/{GPU_A}")),
        "../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0"
    );
    assert_eq!(
        link(&h, "sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/driver"),
        "../../../../bus/pci/drivers/vfio-pci"
    );
    assert_eq!(read(&h, "sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/driver_override"), "vfio-pci\n");
    assert_eq!(
        link(&h, "sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/iommu_group"),
        "../../../../kernel/iommu_groups/6"
    );
    // Groups: GPU A alone, GPU B with its audio function, every root port alone.
    let group = |g: u32| names(&h.path(format!("sys/kernel/iommu_groups/{g}/devices")));
    assert_eq!(group(GPU_A_GROUP), BTreeSet::from([GPU_A.to_owned()]));
    assert_eq!(group(GPU_B_GROUP), BTreeSet::from([GPU_B.to_owned(), GPU_B_AUDIO.to_owned()]));
    for (g, rp) in [(1, RP_NIC), (3, RP_NVME), (5, RP_GPU_A), (7, RP_QAT), (13, RP_MLX), (19, RP_GPU_B)] {
        assert_eq!(group(g), BTreeSet::from([rp.to_owned()]), "group {g}");
    }
    assert_eq!(names(&h.path("sys/kernel/iommu_groups")).len(), 21);
    assert!(h.path("dev/vfio/6").is_file());
    assert_eq!(read(&h, format!("{}/boot_vga", h.pci_dir(GPU_B).display())), "0\n");
    // SR-IOV.
    let qat = h.pci_dir(QAT_PF);
    assert_eq!(read(&h, qat.join("sriov_totalvfs")), "16\n");
    assert_eq!(read(&h, qat.join("sriov_numvfs")), "4\n");
    assert_eq!(read(&h, qat.join("sriov_offset")), "8\n");
    let mlx = h.pci_dir(MLX_PF);
    assert_eq!(read(&h, mlx.join("sriov_numvfs")), "4\n");
    assert_eq!(read(&h, mlx.join("numa_node")), "1\n");
    assert_eq!(read(&h, mlx.join("local_cpulist")), "4-7\n");
    assert_eq!(link(&h, mlx.join("virtfn3")), "../0000:86:00.5");
    for vf in MLX_VFS {
        assert_eq!(read(&h, h.pci_dir(vf).join("vendor")), "0x15b3\n");
        assert_eq!(read(&h, h.pci_dir(vf).join("device")), "0x1018\n");
        assert_eq!(read(&h, h.pci_dir(vf).join("numa_node")), "1\n");
    }
    // Network.
    assert_eq!(link(&h, "sys/class/net/eno1"), "../../devices/pci0000:00/0000:00:1c.0/0000:02:00.0/net/eno1");
    assert_eq!(link(&h, "sys/class/net/eno1/device"), "../../../0000:02:00.0");
    assert_eq!(read(&h, "sys/class/net/eno1/operstate"), "up\n");
    assert_eq!(read(&h, "sys/class/net/eno1/type"), "1\n");
    assert_eq!(read(&h, "sys/class/net/ens1f0v1/operstate"), "down\n");
    assert_eq!(read(&h, "sys/class/net/lo/ifindex"), "1\n");
    let ifindexes: BTreeSet<String> =
        names(&h.path("sys/class/net")).iter().map(|n| read(&h, format!("sys/class/net/{n}/ifindex"))).collect();
    assert_eq!(ifindexes.len(), 7, "unique ifindexes");
    // NVMe, partitions, LVM.
    let nvme = "devices/pci0000:17/0000:17:00.0/0000:18:00.0/nvme/nvme0";
    assert_eq!(link(&h, "sys/class/nvme/nvme0"), format!("../../{nvme}"));
    assert_eq!(link(&h, "sys/class/block/nvme0n1"), format!("../../{nvme}/nvme0n1"));
    assert_eq!(link(&h, "sys/class/block/nvme0n1p3"), format!("../../{nvme}/nvme0n1/nvme0n1p3"));
    assert_eq!(link(&h, "sys/block/nvme0n1"), format!("../{nvme}/nvme0n1"));
    assert_eq!(link(&h, "sys/dev/block/259:3"), format!("../../{nvme}/nvme0n1/nvme0n1p3"));
    assert!(!h.path("sys/block/nvme0n1p1").exists(), "partitions are not in sys/block");
    assert_eq!(read(&h, "sys/class/block/nvme0n1/dev"), "259:0\n");
    assert_eq!(read(&h, "sys/class/block/nvme0n1p2/dev"), "259:2\n");
    assert_eq!(read(&h, "sys/class/block/nvme0n1p2/partition"), "2\n");
    assert_eq!(link(&h, "sys/class/block/nvme0n1/device"), "../../nvme0");
    assert!(h.path("sys/class/block/nvme0n1/holders").is_dir() && h.path("sys/class/block/nvme0n1/slaves").is_dir());
    assert!(h.path("sys/class/block/nvme0n1p1/holders").is_dir());
    assert_eq!(
        names(&h.path("sys/class/block/nvme0n1p3/holders")),
        BTreeSet::from(["dm-0".to_owned(), "dm-1".to_owned()])
    );
    assert_eq!(
        link(&h, format!("sys/{nvme}/nvme0n1/nvme0n1p3/holders/dm-0")),
        "../../../../../../../../virtual/block/dm-0"
    );
    assert_eq!(link(&h, "sys/class/block/dm-0"), "../../devices/virtual/block/dm-0");
    assert_eq!(
        link(&h, "sys/devices/virtual/block/dm-0/slaves/nvme0n1p3"),
        format!("../../../../{}/nvme0n1/nvme0n1p3", &nvme["devices/".len()..])
    );
    assert_eq!(read(&h, "sys/class/block/dm-0/dm/name"), "rhel-root\n");
    assert_eq!(read(&h, "sys/class/block/dm-0/dev"), "253:0\n");
    assert_eq!(canon(&h.path("sys/class/block/dm-0/slaves/nvme0n1p3")), canon(&h.path("sys/class/block/nvme0n1p3")));
    // Mount tables: mountinfo derived with the tree's major:minor numbers.
    let mi = read(&h, "proc/1/mountinfo");
    let lines: Vec<&str> = mi.lines().collect();
    assert_eq!(
        lines[0],
        "22 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/rhel-root rw,seclabel,attr2,inode64,logbufs=8,logbsize=32k,noquota"
    );
    assert!(lines.iter().any(|l| l.starts_with("28 22 259:2 / /boot rw,relatime ")), "{mi}");
    assert!(lines.iter().any(|l| l.starts_with("29 28 259:1 / /boot/efi rw,relatime ")), "{mi}");
    assert!(
        lines.iter().any(|l| l.contains(" 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:4 - proc proc rw")),
        "{mi}"
    );
    assert_eq!(read(&h, "proc/mounts").lines().count(), lines.len());
    assert!(
        read(&h, "proc/swaps").ends_with("/dev/dm-1                               partition\t4194300\t\t0\t\t-2\n")
    );
    // Routes: eno1 carries the default route.
    let route = read(&h, "proc/net/route");
    let rl: Vec<&str> = route.lines().collect();
    assert!(rl.iter().all(|l| l.len() == 127), "lines padded to 127");
    assert!(rl[0].starts_with("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"));
    assert_eq!(rl[1].trim_end(), "eno1\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0");
    assert_eq!(rl[2].trim_end(), "eno1\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0");
    // procfs and friends.
    let cpuinfo = read(&h, "proc/cpuinfo");
    assert!(cpuinfo.starts_with("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"));
    assert_eq!(cpuinfo.matches("processor\t: ").count(), 8);
    assert_eq!(cpuinfo.split("\n\n").filter(|b| !b.is_empty()).count(), 8);
    assert!(cpuinfo.contains("physical id\t: 1\n"));
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags\t\t: ")).expect("flags line");
    for f in ["vmx", "sse4_2", "pdpe1gb"] {
        assert!(flags.split(' ').any(|x| x == f), "{f}");
    }
    assert!(read(&h, "proc/cmdline").contains(" intel_iommu=on iommu=pt "));
    let modules = read(&h, "proc/modules");
    assert!(modules.contains("\nkvm_intel 397312 0 - Live 0x0000000000000000\n"), "{modules}");
    assert!(modules.contains("\nkvm 1142784 1 kvm_intel, Live 0x0000000000000000\n"), "{modules}");
    for m in ["kvm", "kvm_intel", "vfio", "vfio_pci", "vfio_iommu_type1"] {
        assert!(modules.lines().any(|l| l.split(' ').next() == Some(m)), "{m}");
        assert!(h.path(format!("sys/module/{m}")).is_dir(), "{m}");
    }
    assert_eq!(read(&h, "sys/module/kvm_intel/parameters/nested"), "Y\n");
    assert_eq!(link(&h, "sys/module/kvm/holders/kvm_intel"), "../../kvm_intel");
    assert_eq!(read(&h, "proc/sys/kernel/osrelease"), "5.14.0-427.el9.x86_64\n");
    assert!(
        read(&h, "lib/modules/5.14.0-427.el9.x86_64/modules.alias")
            .contains("alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n")
    );
    assert!(h.path("dev/kvm").is_file() && h.path("dev/vfio/vfio").is_file());
    assert_eq!(link(&h, "sys/class/iommu/dmar0"), "../../devices/virtual/iommu/dmar0");
    assert!(h.path("sys/class/iommu/dmar1/intel-iommu/cap").is_file());
    // Huge pages and NUMA.
    assert_eq!(read(&h, "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"), "2048\n");
    assert_eq!(read(&h, "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages"), "16\n");
    assert_eq!(read(&h, "sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages"), "8\n");
    assert_eq!(read(&h, "sys/devices/system/node/online"), "0-1\n");
    let meminfo = read(&h, "proc/meminfo");
    assert!(meminfo.starts_with("MemTotal:       394822320 kB\nMemFree:  "), "{meminfo}");
    assert!(meminfo.contains("\nHugePages_Total:    2048\nHugePages_Free:     2048\nHugePages_Rsvd:        0\n"));
    assert!(meminfo.contains("\nHugepagesize:       2048 kB\nHugetlb:        20971520 kB\n"));
    assert!(meminfo.lines().all(|l| l.split_once(':').is_some()));
}

#[test]
fn amd_iommu_off_contents() {
    use amd::*;
    let h = amd_iommu_off();
    assert!(!h.path("sys/kernel/iommu_groups").exists());
    assert!(!h.path("sys/class/iommu").exists());
    assert!(!h.path("dev/vfio").exists());
    assert!(h.path("dev/kvm").is_file());
    assert!(!read(&h, "proc/cmdline").contains("iommu"));
    let flags = read(&h, "proc/cpuinfo");
    assert!(flags.contains(" svm ") && flags.contains(" sse4_2 ") && !flags.contains(" vmx "));
    assert!(flags.contains("vendor_id\t: AuthenticAMD\n"));
    assert!(!read(&h, "proc/modules").contains("vfio"));
    assert_eq!(read(&h, "sys/module/kvm_amd/parameters/nested"), "1\n");
    for sz in ["2048", "1048576"] {
        assert_eq!(read(&h, format!("sys/kernel/mm/hugepages/hugepages-{sz}kB/nr_hugepages")), "0\n");
    }
    assert_eq!(
        link(&h, "sys/class/block/sda"),
        "../../devices/pci0000:00/0000:00:08.1/0000:02:00.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"
    );
    assert_eq!(link(&h, "sys/class/block/sda/device"), "../../../0:0:0:0");
    assert!(
        read(&h, "proc/1/mountinfo")
            .starts_with("22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro\n")
    );
    assert_eq!(read(&h, h.pci_dir(SATA).join("class")), "0x010601\n");
    assert!(read(&h, "proc/net/route").lines().nth(1).expect("route").starts_with("eno1\t00000000\t"));
    assert_eq!(read(&h, h.pci_dir(NIC0).join("numa_node")), "-1\n");
    // Two functions in slot 01:00 -> multi-function header.
    assert_eq!(fs::read(h.path(h.pci_dir(NIC0)).join("config")).expect("config")[0xe], 0x80);
}

#[test]
fn nested_vm_contents() {
    use vm::*;
    let h = nested_vm();
    let cpuinfo = read(&h, "proc/cpuinfo");
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).expect("flags");
    assert!(
        flags.contains(" hypervisor ")
            && flags.contains(" sse4_2 ")
            && !flags.contains(" vmx")
            && !flags.contains(" svm")
    );
    assert!(!h.path("dev/kvm").exists());
    assert!(!read(&h, "proc/modules").contains("kvm"));
    assert!(names(&h.path("sys/kernel/iommu_groups")).is_empty());
    assert!(names(&h.path("sys/class/iommu")).is_empty());
    assert_eq!(link(&h, "sys/class/net/ens3"), "../../devices/pci0000:00/0000:00:03.0/virtio0/net/ens3");
    assert_eq!(link(&h, "sys/class/block/vda"), "../../devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
    assert_eq!(link(&h, "sys/class/block/vda15"), "../../devices/pci0000:00/0000:00:04.0/virtio1/block/vda/vda15");
    assert_eq!(link(&h, "sys/bus/virtio/devices/virtio1"), "../../../devices/pci0000:00/0000:00:04.0/virtio1");
    assert_eq!(
        link(&h, "sys/devices/pci0000:00/0000:00:04.0/virtio1/driver"),
        "../../../../bus/virtio/drivers/virtio_blk"
    );
    assert_eq!(read(&h, h.pci_dir(VIRTIO_BLK).join("vendor")), "0x1af4\n");
    assert_eq!(read(&h, h.pci_dir(VGA).join("boot_vga")), "1\n");
    assert!(read(&h, "proc/1/mountinfo").starts_with("22 1 252:1 / / "));
    assert_eq!(read(&h, "proc/swaps"), "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
}

#[test]
fn sriov_4096_has_4096_functions() {
    let t = Instant::now();
    let h = sriov_4096();
    let built = t.elapsed();
    eprintln!("sriov_4096 built in {built:?} under {}", h.root().display());
    let entries = names(&h.path("sys/bus/pci/devices"));
    assert_eq!(entries.len(), 4096);
    assert_eq!(h.pci_addrs().len(), 4096);
    let pfs: Vec<String> = (0..64).map(big_sriov_pf).collect();
    let mut vf_count = 0;
    for (i, pf) in pfs.iter().enumerate() {
        let d = h.pci_dir(pf);
        assert_eq!(read(&h, d.join("sriov_numvfs")), "63\n");
        assert_eq!(read(&h, d.join("numa_node")), format!("{}\n", i % 2));
        assert_eq!(link(&h, d.join("virtfn0")), format!("../{}", HostTree::vf_addr(pf, 8, 1, 0)));
        vf_count += names(&h.path(&d)).iter().filter(|n| n.starts_with("virtfn")).count();
    }
    assert_eq!(vf_count, 64 * 63);
    // Spot-check links on a sample (resolving all 4096 is covered by big_sriov(3, 5) above).
    for a in entries.iter().step_by(97) {
        let dir = canon(&h.path(format!("sys/bus/pci/devices/{a}")));
        assert!(dir.join("vendor").is_file());
        assert!(canon(&dir.join("iommu_group")).join("devices").join(a).exists());
        assert!(canon(&dir.join("driver")).join(a).exists());
    }
    let groups = names(&h.path("sys/kernel/iommu_groups"));
    assert_eq!(groups.len(), 4096, "one group per function");
    assert_eq!(names(&h.path("sys/class/iommu")).len(), 4);
    assert!(built < Duration::from_secs(8), "building sriov_4096 took {built:?}");
}

#[test]
fn hostile_has_every_documented_breakage() {
    use hostile_addrs::*;
    let h = hostile();
    let root = h.root();
    let dev = |a: &str| root.join("sys/bus/pci/devices").join(a);
    // Every listed address is in sys/bus/pci/devices.
    let entries = names(&root.join("sys/bus/pci/devices"));
    for (a, what) in HOSTILE_BROKEN {
        assert!(entries.contains(*a), "{a} ({what}) missing");
    }
    assert!(entries.contains(NORMAL) && entries.contains(VMD_ROOT_PORT) && entries.contains(HOST_BRIDGE));
    assert_eq!(
        link(&h, format!("sys/bus/pci/devices/{NORMAL}")),
        "../../../devices/pci10000:e0/10000:e0:00.0/10000:e1:00.0"
    );
    assert_eq!(fs::read_to_string(dev(BANANA_VENDOR).join("vendor")).expect("vendor"), "banana\n");
    assert!(!dev(NO_CLASS).join("class").exists() && dev(NO_CLASS).join("vendor").exists());
    assert!(
        fs::symlink_metadata(dev(DANGLING_DRIVER).join("driver")).is_ok()
            && !dev(DANGLING_DRIVER).join("driver").exists()
    );
    assert_eq!(link(&h, h.pci_dir(DANGLING_DRIVER).join("driver")), "../../../bus/pci/drivers/ghost_driver");
    assert_eq!(fs::read_to_string(dev(GARBAGE_NUMA).join("numa_node")).expect("numa"), "garbage\n");
    assert!(
        fs::symlink_metadata(dev(DANGLING_GROUP).join("iommu_group")).is_ok()
            && !dev(DANGLING_GROUP).join("iommu_group").exists()
    );
    assert_eq!(fs::read_to_string(dev(NEGATIVE_NUMVFS).join("sriov_numvfs")).expect("numvfs"), "-3\n");
    assert!(!dev(NEGATIVE_NUMVFS).join("virtfn0").exists());
    assert_eq!(fs::read_to_string(dev(EMPTY_REVISION).join("revision")).expect("revision"), "");
    assert!(
        fs::symlink_metadata(dev(DANGLING_PHYSFN).join("physfn")).is_ok()
            && !dev(DANGLING_PHYSFN).join("physfn").exists()
    );
    assert!(fs::symlink_metadata(dev(DANGLING_BUS_LINK)).is_ok() && !dev(DANGLING_BUS_LINK).exists());
    // The sane ones stay sane.
    assert_eq!(fs::read_to_string(dev(NORMAL).join("vendor")).expect("vendor"), "0x8086\n");
    assert!(canon(&dev(NORMAL).join("driver")).ends_with("sys/bus/pci/drivers/nvme"));
    assert_eq!(
        read(&h, "proc/1/mountinfo").lines().next(),
        Some("22 1 259:1 / / rw,relatime shared:1 - xfs /dev/nvme0n1p1 rw")
    );
    // procfs garbage.
    let cpuinfo = read(&h, "proc/cpuinfo");
    assert!(cpuinfo.contains("processor\t: 1\n") && cpuinfo.contains("model name\t: "));
    assert!(!cpuinfo.contains("flags"));
    let modules = read(&h, "proc/modules");
    assert!(modules.lines().any(|l| l.split(' ').count() != 6), "a malformed modules line");
    let cmdline = fs::read(root.join("proc/cmdline")).expect("cmdline");
    assert!(String::from_utf8(cmdline).is_err(), "cmdline must not be UTF-8");
}

// ---- pciutils --------------------------------------------------------------------------------

const LSPCI: &str = "/usr/bin/lspci";

/// `lspci` from pciutils (installed by scripts/test.sh); waits a little in case another process
/// is still installing it. Its absence fails the test: a skipped check proves nothing.
fn require_lspci() {
    for _ in 0..30 {
        if Path::new(LSPCI).exists() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{LSPCI} not found: install pciutils");
}

fn run_lspci(h: &HostTree, extra: &[&str]) -> (String, String) {
    let out = Command::new(LSPCI)
        .args(["-D", "-n", "-k", "-A", "linux-sysfs", "-O"])
        .arg(format!("sysfs.path={}", h.path("sys/bus/pci").display()))
        .args(extra)
        .output()
        .expect("run lspci");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lspci failed: {:?}\n{stderr}", out.status);
    // libkmod complains when the build host has no /lib/modules/$(uname -r); anything else on
    // stderr (Cannot open / Cannot read / Unable to read ...) means a broken fixture.
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains("libkmod")).collect();
    assert!(errors.is_empty(), "lspci complained:\n{}", errors.join("\n"));
    (stdout, stderr)
}

fn parse_lspci(out: &str) -> BTreeMap<String, LspciDevice> {
    support::lspci::parse(out)
}

/// What lspci must print for every function, from the tree's own attribute files.
fn expected_lspci(h: &HostTree) -> BTreeMap<String, LspciDevice> {
    h.pci_addrs()
        .into_iter()
        .map(|a| {
            let d = h.pci_dir(&a);
            let attr = |n: &str| hex_attr(h, &d, n);
            let rev = attr("revision");
            let sv = attr("subsystem_vendor");
            let driver = fs::read_link(h.path(d.join("driver")))
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
            let dev = LspciDevice {
                vendor: format!("{:04x}", attr("vendor")),
                device: format!("{:04x}", attr("device")),
                class: format!("{:04x}", attr("class") >> 8),
                revision: (rev != 0).then(|| format!("{rev:02x}")),
                subsystem: (sv != 0 && sv != 0xffff).then(|| format!("{sv:04x}:{:04x}", attr("subsystem_device"))),
                driver,
            };
            (a, dev)
        })
        .collect()
}

#[test]
fn lspci_reads_intel_gpu_server() {
    require_lspci();
    let h = intel_gpu_server();
    let (out, _) = run_lspci(&h, &[]);
    let got = parse_lspci(&out);
    assert_eq!(got, expected_lspci(&h));
    // And against the documented fixture, independently of the tree's own files.
    let want = [
        ("0000:00:00.0", "0600", "8086:2020", None),
        ("0000:02:00.0", "0200", "8086:1572", Some("i40e")),
        ("0000:18:00.0", "0108", "144d:a808", Some("nvme")),
        ("0000:3b:00.0", "0302", "10de:1eb8", Some("vfio-pci")),
        ("0000:5e:00.0", "0b40", "8086:37c8", Some("c6xx")),
        ("0000:5e:01.3", "0b40", "8086:37c9", Some("c6xxvf")),
        ("0000:86:00.0", "0200", "15b3:1017", Some("mlx5_core")),
        ("0000:86:00.5", "0200", "15b3:1018", Some("mlx5_core")),
        ("0000:ae:00.0", "0604", "8086:2030", Some("pcieport")),
        ("0000:af:00.0", "0300", "10de:1e30", Some("nouveau")),
        ("0000:af:00.1", "0403", "10de:10f7", Some("snd_hda_intel")),
    ];
    for (a, class, ids, driver) in want {
        let d = got.get(a).unwrap_or_else(|| panic!("lspci did not list {a}"));
        assert_eq!(
            (d.class.as_str(), format!("{}:{}", d.vendor, d.device).as_str(), d.driver.as_deref()),
            (class, ids, driver),
            "{a}"
        );
    }
    assert!(
        out.contains(
            "0000:3b:00.0 0302: 10de:1eb8 (rev a1)\n\tSubsystem: 10de:12a2\n\tKernel driver in use: vfio-pci\n"
        ),
        "{out}"
    );
    // The verbose path reads numa_node, iommu_group and config space too.
    let (vvv, _) = run_lspci(&h, &["-vvv"]);
    assert!(vvv.contains("IOMMU group: 6\n"), "{vvv}");
    assert!(vvv.contains("NUMA node: 1\n"));
    assert!(vvv.contains("Bus: primary=ae, secondary=af, subordinate=af"), "{vvv}");
    // Tree view follows the bridges' bus numbers.
    let (tree, _) = run_lspci(&h, &["-t"]);
    assert!(tree.contains("[0000:ae]---00.0-[af]--+-00.0"), "{tree}");
}

#[test]
fn lspci_reads_the_other_sane_machines() {
    require_lspci();
    for h in [amd_iommu_off(), nested_vm(), big_sriov(3, 5)] {
        let (out, _) = run_lspci(&h, &[]);
        assert_eq!(parse_lspci(&out), expected_lspci(&h));
    }
}

#[test]
fn lspci_reads_sriov_4096() {
    require_lspci();
    let h = sriov_4096();
    let t = Instant::now();
    let (out, _) = run_lspci(&h, &[]);
    eprintln!("lspci over 4096 functions took {:?}", t.elapsed());
    let got = parse_lspci(&out);
    assert_eq!(got.len(), 4096);
    assert_eq!(got, expected_lspci(&h));
    let vf = &got[&HostTree::vf_addr(&big_sriov_pf(63), 8, 1, 61)];
    assert_eq!(
        (vf.class.as_str(), format!("{}:{}", vf.vendor, vf.device).as_str(), vf.driver.as_deref()),
        ("0200", "8086:1889", Some("vfio-pci"))
    );
    let pf = &got[&big_sriov_pf(0)];
    assert_eq!((format!("{}:{}", pf.vendor, pf.device).as_str(), pf.driver.as_deref()), ("8086:1592", Some("ice")));
    assert_eq!(got.values().filter(|d| d.driver.as_deref() == Some("iavf")).count(), 64 * 32);
}
