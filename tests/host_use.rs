//! What the host uses that discovery alone cannot see: storage stacked on a disk whether or not
//! it is mounted (LVM, md, btrfs members, NVMe multipath heads), tables that cannot be read
//! (fail closed), and the bind-time probes: an exclusive open of each disk (on a real loop
//! device) and the processes holding a device's character nodes open.

mod support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::process::Command;

use nodeprep::bind::{self, Action, BindPlan};
use nodeprep::config::Config;
use nodeprep::host::{HostRoot, pci};
use nodeprep::model::PciAddress;
use support::{HostTree, PciFn};

fn addr(s: &str) -> PciAddress {
    s.parse().expect("fixture address")
}

/// The plan `nodeprep bind` makes, bind-time probes included.
fn plan(t: &HostTree, config: &str) -> BindPlan {
    let config = Config::parse(config).expect("valid config");
    let root = HostRoot::new(t.root());
    let plugin_dir = nodeprep::host::kubelet::plugin_dir(&root, None);
    bind::plan_for(&root, &config, &plugin_dir).expect("plan")
}

fn select(a: &str) -> String {
    format!("devices:\n  - resourceName: example.com/dev\n    selectors: {{pciAddresses: [\"{a}\"]}}\n")
}

fn action(p: &BindPlan, a: &str) -> Action {
    p.devices
        .iter()
        .find(|d| d.address == addr(a))
        .unwrap_or_else(|| panic!("{a} not in the plan:\n{p}"))
        .action
        .clone()
}

fn refusal(p: &BindPlan, a: &str) -> String {
    match action(p, a) {
        Action::Refused { reason } => reason,
        other => panic!("{a} must be refused, plan says {other:?}:\n{p}"),
    }
}

/// An Intel host with the IOMMU on: root port 00:1c.0, and one isolated group per function.
fn host() -> HostTree {
    let t = HostTree::new();
    t.iommu_unit("dmar0");
    t.pci(&PciFn::new("0000:00:00.0", 0x8086, 0x2020, 0x060000).group(0))
        .pci(&PciFn::new("0000:00:1c.0", 0x8086, 0xa190, 0x060400).driver("pcieport").group(1));
    t
}

fn nvme_fn(t: &HostTree, a: &str, group: u32) {
    t.pci(&PciFn::new(a, 0x144d, 0xa808, 0x010802).parent("0000:00:1c.0").driver("nvme").group(group));
}

const ROOT_MOUNTS: &str = "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n";

#[test]
fn lvm_pv_whose_volumes_are_not_mounted_is_refused_naming_the_volume() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    t.nvme("0000:3b:00.0", "nvme1", "nvme1n1", (259, 0), &[]);
    // A Rook/ODF OSD: an LV on the whole disk, used raw by Ceph, mounted nowhere.
    t.dm("dm-3", "ceph--4b1e--vg-osd--block--9f2c", (253, 3), &["nvme1n1"]);
    t.mounts(ROOT_MOUNTS);
    let inv = pci::discover(&HostRoot::new(t.root())).expect("discover");
    let d = inv.device(&addr("0000:3b:00.0")).expect("nvme");
    assert!(d.block[0].mounts.is_empty(), "nothing is mounted: {:?}", d.block[0]);
    let why = refusal(&plan(&t, &select("0000:3b:00.0")), "0000:3b:00.0");
    assert!(why.contains("nvme1n1 is held by dm-3 (LVM volume ceph--4b1e--vg-osd--block--9f2c)"), "{why}");
}

#[test]
fn dm_crypt_on_a_partition_is_named_as_such() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    t.nvme("0000:3b:00.0", "nvme1", "nvme1n1", (259, 0), &[("nvme1n1p1", (259, 1))]);
    t.dm_with_uuid(
        "dm-4",
        "luks-0d1c",
        "CRYPT-LUKS2-0d1c6a7e5f2b4c3d9e8f7a6b5c4d3e2f-luks-0d1c",
        (253, 4),
        &["nvme1n1p1"],
    );
    t.mounts(ROOT_MOUNTS);
    let why = refusal(&plan(&t, &select("0000:3b:00.0")), "0000:3b:00.0");
    assert!(why.contains("nvme1n1p1 is held by dm-4 (dm-crypt volume luks-0d1c)"), "{why}");
}

#[test]
fn md_raid1_member_is_refused_naming_the_array() {
    let t = host();
    let ahci = "0000:00:17.0";
    t.pci(&PciFn::new(ahci, 0x8086, 0xa352, 0x010601).driver("ahci").group(3));
    t.block_under(ahci, "ata1/host0/target0:0:0/0:0:0:0", "sda", (8, 0), &[("sda1", (8, 1))]);
    t.block_under(ahci, "ata2/host1/target1:0:0/1:0:0:0", "sdb", (8, 16), &[("sdb1", (8, 17))]);
    t.md("md127", "raid1", (9, 127), &["sda1", "sdb1"]);
    t.mounts(ROOT_MOUNTS);
    let why = refusal(&plan(&t, &select(ahci)), ahci);
    assert!(why.contains("sda1 is held by md127 (md raid1 array)"), "{why}");
    assert!(why.contains("sdb1 is held by md127 (md raid1 array)"), "{why}");
}

#[test]
fn second_member_of_a_btrfs_raid1_mounted_through_the_first_is_refused() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    nvme_fn(&t, "0000:3c:00.0", 3);
    t.nvme("0000:3b:00.0", "nvme0", "nvme0n1", (259, 0), &[]);
    t.nvme("0000:3c:00.0", "nvme1", "nvme1n1", (259, 1), &[]);
    let fsid = "5d0a7b3c-1e2f-4a5b-8c9d-0e1f2a3b4c5d";
    t.btrfs(fsid, "data", &["nvme0n1", "nvme1n1"]);
    // btrfs shows an anonymous device number and the device it was mounted by.
    t.file("proc/mounts", "proc /proc proc rw 0 0\n/dev/nvme0n1 /data btrfs rw,relatime,ssd,space_cache=v2 0 0\n");
    t.mountinfo(
        "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:1 - proc proc rw\n\
         23 1 0:35 / /data rw,relatime shared:2 - btrfs /dev/nvme0n1 rw,ssd,space_cache=v2,subvolid=5,subvol=/\n",
    );
    let p = plan(&t, &select("0000:3c:00.0"));
    let why = refusal(&p, "0000:3c:00.0");
    assert!(why.contains(&format!("nvme1n1 belongs to btrfs \"data\" {fsid}")), "{why}");
    assert!(why.contains("nvme0n1, nvme1n1"), "names the other member: {why}");
    let first = refusal(&plan(&t, &select("0000:3b:00.0")), "0000:3b:00.0");
    assert!(first.contains("nvme0n1 holds mounted /data"), "{first}");
}

#[test]
fn nvme_multipath_head_mounted_is_attributed_to_every_controllers_function() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    nvme_fn(&t, "0000:3c:00.0", 3);
    t.nvme_multipath(
        1,
        1,
        (259, 0),
        &[("nvme1n1p1", (259, 1))],
        &[("0000:3b:00.0", "nvme1"), ("0000:3c:00.0", "nvme2")],
    );
    t.mounts(&format!("{ROOT_MOUNTS}/dev/nvme1n1p1 /var/lib/data xfs rw,relatime 0 0\n"));
    let root = HostRoot::new(t.root());
    let inv = pci::discover(&root).expect("discover");
    for a in ["0000:3b:00.0", "0000:3c:00.0"] {
        let d = inv.device(&addr(a)).expect("function");
        let names: Vec<&str> = d.block.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["nvme1n1"], "{a}: the head, not the hidden path disks");
        assert_eq!(d.block[0].nvme_subsystem.as_deref(), Some("nvme-subsys1"));
        assert_eq!(d.block[0].partitions, vec!["nvme1n1p1"]);
    }
    let text = nodeprep::render::scan::render(&inv);
    assert!(text.contains("Block: nvme1n1 (nvme1n1p1); multipath head of nvme-subsys1"), "{text}");
    let why = refusal(&plan(&t, &select("0000:3c:00.0")), "0000:3c:00.0");
    assert!(why.contains("nvme1n1p1 holds mounted /var/lib/data"), "{why}");
}

#[test]
fn unreadable_mountinfo_refuses_disks_and_storage_controllers_naming_the_table() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    t.nvme("0000:3b:00.0", "nvme1", "nvme1n1", (259, 0), &[]);
    // A SATA controller with no disk visible: it could still hold the host's storage.
    t.pci(&PciFn::new("0000:00:17.0", 0x8086, 0xa352, 0x010601).driver("ahci").group(3));
    t.pci(&PciFn::new("0000:00:1f.3", 0x8086, 0xa348, 0x040300).driver("snd_hda_intel").group(4));
    t.file("proc/mounts", ROOT_MOUNTS);
    // An I/O error (EISDIR) on the table, as opposed to an absent one.
    fs::create_dir_all(t.path("proc/1/mountinfo")).expect("mkdir");
    let cfg = "devices:\n  - resourceName: example.com/dev\n    selectors: {pciAddresses: [\"0000:3b:00.0\", \"0000:00:17.0\", \"0000:00:1f.3\"]}\n";
    let p = plan(&t, cfg);
    for a in ["0000:3b:00.0", "0000:00:17.0"] {
        let why = refusal(&p, a);
        assert!(why.contains("nodeprep cannot tell whether the host uses it"), "{a}: {why}");
        assert!(why.contains("proc/1/mountinfo"), "{a}: names the table: {why}");
    }
    assert_eq!(
        action(&p, "0000:00:1f.3"),
        Action::Bind { from: Some("snd_hda_intel".into()) },
        "an audio function has no storage"
    );
    let inv = pci::discover(&HostRoot::new(t.root())).expect("discover");
    let text = nodeprep::render::scan::render(&inv);
    assert!(text.contains("Cannot tell whether the host uses it: a storage table cannot be read"), "{text}");
}

#[test]
fn disks_with_no_mount_table_at_all_are_refused() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    t.nvme("0000:3b:00.0", "nvme1", "nvme1n1", (259, 0), &[]);
    let why = refusal(&plan(&t, &select("0000:3b:00.0")), "0000:3b:00.0");
    assert!(why.contains("nodeprep cannot tell whether the host uses it"), "{why}");
    assert!(why.contains("neither it nor proc/mounts exists"), "{why}");
}

// ---- character devices held open ---------------------------------------------------------

const GPU: &str = "0000:01:00.0";

fn gpu_host() -> HostTree {
    let t = host();
    t.pci(&PciFn::new(GPU, 0x10de, 0x1e30, 0x030000).parent("0000:00:1c.0").driver("nouveau").boot_vga(false).group(2));
    t.drm(GPU, "card0", (226, 0)).drm(GPU, "renderD128", (226, 128));
    t.mounts(ROOT_MOUNTS);
    t.process(1, "systemd", &["/proc/1/mountinfo"]);
    t
}

#[test]
fn gpu_whose_card0_a_process_holds_open_is_refused_naming_the_process() {
    let t = gpu_host();
    t.process(4242, "Xorg", &["/dev/tty7", "/dev/dri/card0"]);
    let why = refusal(&plan(&t, &select(GPU)), GPU);
    assert!(why.contains("process 4242 (Xorg) holds /dev/dri/card0 open"), "{why}");
    assert!(!why.contains("systemd"), "{why}");
}

#[test]
fn gpu_nobody_holds_open_binds() {
    let t = gpu_host();
    t.process(4243, "bash", &["/dev/pts/0"]);
    assert_eq!(action(&plan(&t, &select(GPU)), GPU), Action::Bind { from: Some("nouveau".into()) });
}

#[test]
fn nvidia_proprietary_node_is_found_by_its_minor() {
    let t = host();
    t.pci(&PciFn::new(GPU, 0x10de, 0x1eb8, 0x030200).parent("0000:00:1c.0").driver("nvidia").group(2));
    t.file(
        &format!("proc/driver/nvidia/gpus/{GPU}/information"),
        "Model: \t\t Tesla T4\nIRQ:   \t\t 142\nGPU UUID: \t GPU-5a7b0c1d-2e3f-4a5b-8c9d-0e1f2a3b4c5d\nVideo BIOS: \t 90.04.38.00.03\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t 0000:01:00.0\nDevice Minor: \t 2\nGPU Excluded:\t No\n",
    );
    t.mounts(ROOT_MOUNTS);
    t.process(977, "nvidia-persiste", &["/dev/nvidiactl", "/dev/nvidia2"]);
    let why = refusal(&plan(&t, &select(GPU)), GPU);
    assert!(why.contains("process 977 (nvidia-persiste) holds /dev/nvidia2 open"), "{why}");
}

#[test]
fn unreadable_proc_refuses_a_device_with_character_nodes() {
    let t = host();
    t.pci(&PciFn::new(GPU, 0x10de, 0x1e30, 0x030000).parent("0000:00:1c.0").driver("nouveau").group(2));
    t.drm(GPU, "card0", (226, 0));
    // `proc` that is not a directory: the process table cannot be listed.
    t.file("proc", "");
    let why = refusal(&plan(&t, &select(GPU)), GPU);
    assert!(why.contains("cannot tell whether a process holds /dev/dri/card0 open"), "{why}");
    assert!(why.contains("/proc"), "names the table: {why}");
}

// ---- the exclusive open, on a real block device ---------------------------------------------

/// A loop device over a temporary file, detached on drop.
struct Loop {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new() -> Loop {
        let file = tempfile::NamedTempFile::new().expect("backing file");
        file.as_file().set_len(8 << 20).expect("size backing file");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup must be installed (util-linux): this test needs a real block device");
        assert!(out.status.success(), "losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
        Loop { dev, _file: file }
    }

    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }

    fn majmin(&self) -> (u32, u32) {
        let rdev = fs::metadata(&self.dev).expect("stat loop").rdev();
        (nix::sys::stat::major(rdev) as u32, nix::sys::stat::minor(rdev) as u32)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn disk_held_by_an_exclusive_opener_is_refused_and_binds_once_released() {
    let lo = Loop::new();
    let (name, majmin) = (lo.name().to_owned(), lo.majmin());
    let virtio = "0000:00:05.0";
    let t = host();
    t.pci(&PciFn::new(virtio, 0x1af4, 0x1042, 0x010000).driver("virtio-pci").group(2));
    t.block_under(virtio, "virtio1", &name, majmin, &[]);
    t.block_node(&name, majmin);
    t.mounts(ROOT_MOUNTS);

    let holder = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&lo.dev)
        .expect("exclusive open of the loop device");
    let why = refusal(&plan(&t, &select(virtio)), virtio);
    assert!(why.contains(&format!("{name} is held open exclusively")), "{why}");
    drop(holder);
    assert_eq!(action(&plan(&t, &select(virtio)), virtio), Action::Bind { from: Some("virtio-pci".into()) });

    // A node that is not that block device: nodeprep cannot check, and says so.
    fs::remove_file(t.path(format!("dev/{name}"))).expect("rm node");
    fs::write(t.path(format!("dev/{name}")), "").expect("plain file");
    let why = refusal(&plan(&t, &select(virtio)), virtio);
    assert!(
        why.contains(&format!(
            "cannot tell whether anything holds {name} open: dev/{name} under the host root is not its block device node"
        )),
        "{why}"
    );
}

#[test]
fn new_fixture_links_are_kernel_accurate() {
    let t = host();
    nvme_fn(&t, "0000:3b:00.0", 2);
    nvme_fn(&t, "0000:3c:00.0", 3);
    t.nvme("0000:3b:00.0", "nvme0", "nvme0n1", (259, 0), &[("nvme0n1p2", (259, 1))]);
    t.nvme_multipath(1, 1, (259, 5), &[], &[("0000:3c:00.0", "nvme1")]);
    t.btrfs("5d0a7b3c-1e2f-4a5b-8c9d-0e1f2a3b4c5d", "", &["nvme0n1p2"]);
    let link = |p: &str| fs::read_link(t.path(p)).expect("link").display().to_string();
    // As on a real host: `ls -l /sys/class/nvme-subsystem/nvme-subsys1/`, `/sys/fs/btrfs/*/devices/`.
    assert_eq!(link("sys/class/nvme-subsystem/nvme-subsys1"), "../../devices/virtual/nvme-subsystem/nvme-subsys1");
    assert_eq!(
        link("sys/devices/virtual/nvme-subsystem/nvme-subsys1/nvme1"),
        "../../../pci0000:00/0000:00:1c.0/0000:3c:00.0/nvme/nvme1"
    );
    assert_eq!(link("sys/class/block/nvme1n1"), "../../devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1");
    assert_eq!(
        link("sys/class/block/nvme1c1n1"),
        "../../devices/pci0000:00/0000:00:1c.0/0000:3c:00.0/nvme/nvme1/nvme1c1n1"
    );
    assert_eq!(
        link("sys/fs/btrfs/5d0a7b3c-1e2f-4a5b-8c9d-0e1f2a3b4c5d/devices/nvme0n1p2"),
        "../../../../devices/pci0000:00/0000:00:1c.0/0000:3b:00.0/nvme/nvme0/nvme0n1/nvme0n1p2"
    );
    for p in [
        "sys/class/nvme-subsystem/nvme-subsys1/nvme1",
        "sys/fs/btrfs/5d0a7b3c-1e2f-4a5b-8c9d-0e1f2a3b4c5d/devices/nvme0n1p2/dev",
    ] {
        assert!(t.path(p).exists(), "{p} resolves");
    }
    assert_eq!(fs::read_to_string(t.path("sys/class/block/nvme1c1n1/hidden")).expect("hidden"), "1\n");
}
