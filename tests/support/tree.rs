//! A builder for fake host trees laid out like the Linux kernel's: real directories, attribute
//! files in the kernel's exact text formats, and *relative* symlinks of the same depth the kernel
//! creates, under a temporary root that stands in for `/` (`sys/...`, `proc/...`, `dev/...`,
//! `lib/modules/...`).
//!
//! Every symlink the builder makes goes through [`relative`], which reproduces the kernel's own
//! link-target computation (`sysfs_get_target_path`), so depths are never hand-counted.
//!
//! Known differences from a real host, all forced by running unprivileged in a temp dir:
//! `dev/kvm`, `dev/vfio/*` are plain empty files (not character devices), sysfs attributes are
//! ordinary files (writable, no `-EINVAL` on read), and `config` is 256 bytes long.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::os::unix::fs::symlink as os_symlink;
use std::path::{Component, Path, PathBuf};

/// The relative path a symlink placed in directory `from_dir` needs to reach `to`, computed the
/// way the kernel does for sysfs links (`fs/sysfs/symlink.c`, `sysfs_get_target_path`): climb
/// from `from_dir` to the nearest common ancestor of `from_dir` and `to`'s *parent*, then descend.
/// The kernel always names the target's last component, so a link to an ancestor of the link's own
/// directory comes out as `../../../0000:3b:00.0` rather than `../..`.
///
/// Both paths must be of the same kind (both relative to the tree root, or both absolute) and
/// lexically normal (no `..`).
/// The driver `addr` is bound to under `root`, as its `driver` link names it.
pub fn driver_of(root: &Path, addr: &str) -> Option<String> {
    std::fs::read_link(root.join(format!("sys/bus/pci/devices/{addr}/driver")))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

pub fn relative(from_dir: &Path, to: &Path) -> PathBuf {
    fn parts(p: &Path) -> Vec<Component<'_>> {
        let v: Vec<Component<'_>> = p.components().filter(|c| !matches!(c, Component::CurDir)).collect();
        assert!(
            !v.iter().any(|c| matches!(c, Component::ParentDir)),
            "relative(): {} must not contain `..`",
            p.display()
        );
        v
    }
    assert_eq!(
        from_dir.is_absolute(),
        to.is_absolute(),
        "relative(): {} and {} must both be absolute or both relative",
        from_dir.display(),
        to.display()
    );
    let from = parts(from_dir);
    let to = parts(to);
    let mut common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    // The common ancestor must be an ancestor of the target's parent (kernel behaviour).
    common = common.min(to.len().saturating_sub(1));
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A PCI address `DDDD:BB:DD.F` (the domain may be wider than 4 hex digits, as with VMD's
/// `10000:e1:00.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl PciAddr {
    /// Parses the kernel's spelling; `None` unless device ≤ 1f and function ≤ 7.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (rest, func) = s.rsplit_once('.')?;
        let mut it = rest.rsplitn(3, ':');
        let dev = it.next()?;
        let bus = it.next()?;
        let domain = it.next()?;
        if dev.len() != 2 || bus.len() != 2 || domain.len() < 4 || func.len() != 1 {
            return None;
        }
        let a = PciAddr {
            domain: u32::from_str_radix(domain, 16).ok()?,
            bus: u8::from_str_radix(bus, 16).ok()?,
            dev: u8::from_str_radix(dev, 16).ok()?,
            func: u8::from_str_radix(func, 16).ok()?,
        };
        (a.dev <= 0x1f && a.func <= 7).then_some(a)
    }

    /// The 16-bit routing ID (bus << 8 | dev << 3 | func).
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.dev) << 3) | u16::from(self.func)
    }

    pub fn from_rid(domain: u32, rid: u16) -> PciAddr {
        PciAddr { domain, bus: (rid >> 8) as u8, dev: ((rid >> 3) & 0x1f) as u8, func: (rid & 7) as u8 }
    }

    /// The root-bus directory under `sys/devices` for a device on this address's bus when that
    /// bus is a root bus: `pci0000:00`, `pci10000:e0`.
    pub fn root_bus_dir(&self) -> String {
        format!("pci{:04x}:{:02x}", self.domain, self.bus)
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.dev, self.func)
    }
}

/// One PCI function to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFn {
    pub addr: String,
    /// Upstream bridge address; `None` puts the function on a root bus (`sys/devices/pciDDDD:BB/`).
    pub parent: Option<String>,
    pub vendor: u16,
    pub device: u16,
    pub subsys_vendor: u16,
    pub subsys_device: u16,
    /// 24-bit class code (base class, subclass, prog-if), e.g. `0x020000`.
    pub class: u32,
    pub revision: u8,
    pub driver: Option<String>,
    pub driver_override: Option<String>,
    pub numa_node: i32,
    pub iommu_group: Option<u32>,
    pub sriov_totalvfs: Option<u32>,
    pub boot_vga: Option<bool>,
}

impl PciFn {
    /// Defaults: subsystem `vendor:0000`, revision 0, NUMA node -1, on a root bus, no driver, no
    /// override, no IOMMU group, not SR-IOV capable, no `boot_vga`.
    pub fn new(addr: &str, vendor: u16, device: u16, class: u32) -> PciFn {
        PciFn {
            addr: addr.to_owned(),
            parent: None,
            vendor,
            device,
            subsys_vendor: vendor,
            subsys_device: 0,
            class,
            revision: 0,
            driver: None,
            driver_override: None,
            numa_node: -1,
            iommu_group: None,
            sriov_totalvfs: None,
            boot_vga: None,
        }
    }
    pub fn parent(mut self, bridge: &str) -> Self {
        self.parent = Some(bridge.to_owned());
        self
    }
    pub fn subsys(mut self, vendor: u16, device: u16) -> Self {
        self.subsys_vendor = vendor;
        self.subsys_device = device;
        self
    }
    pub fn rev(mut self, r: u8) -> Self {
        self.revision = r;
        self
    }
    pub fn driver(mut self, name: &str) -> Self {
        self.driver = Some(name.to_owned());
        self
    }
    pub fn driver_override(mut self, name: &str) -> Self {
        self.driver_override = Some(name.to_owned());
        self
    }
    pub fn group(mut self, g: u32) -> Self {
        self.iommu_group = Some(g);
        self
    }
    pub fn numa(mut self, n: i32) -> Self {
        self.numa_node = n;
        self
    }
    pub fn totalvfs(mut self, n: u32) -> Self {
        self.sriov_totalvfs = Some(n);
        self
    }
    pub fn boot_vga(mut self, b: bool) -> Self {
        self.boot_vga = Some(b);
        self
    }
    /// Same function at a different address (handy for generating VFs).
    pub fn at(mut self, addr: &str) -> Self {
        self.addr = addr.to_owned();
        self
    }
    fn is_bridge(&self) -> bool {
        (self.class >> 8) & 0xffff == 0x0604
    }
}

struct Dev {
    /// Device directory, relative to the root.
    dir: PathBuf,
    addr: PciAddr,
    parent: Option<String>,
    vf: bool,
    totalvfs: Option<u32>,
    numvfs: u32,
    numa: i32,
    config: Vec<u8>,
}

struct Block {
    dir: PathBuf,
    majmin: (u32, u32),
}

#[derive(Default)]
struct State {
    devs: HashMap<String, Dev>,
    /// Directories (relative) known to exist.
    dirs: HashSet<PathBuf>,
    drivers: HashSet<String>,
    groups: HashSet<u32>,
    typed_groups: HashSet<u32>,
    /// Non-VF functions per (domain, bus, device) slot, for the multi-function header bit.
    slots: HashMap<(u32, u8, u8), Vec<String>>,
    blocks: HashMap<String, Block>,
    /// dm name (`rhel-root`) -> kernel name (`dm-0`).
    dm_names: HashMap<String, String>,
    next_ifindex: u32,
    /// size kB -> (total, free), for meminfo.
    hugepages: HashMap<u64, (u64, u64)>,
}

/// The root of a fake host, deleted on drop.
pub struct HostTree {
    dir: tempfile::TempDir,
    st: RefCell<State>,
}

impl Default for HostTree {
    fn default() -> Self {
        HostTree::new()
    }
}

const SYS_DEVICES: &str = "sys/devices";
const BUS_DEVICES: &str = "sys/bus/pci/devices";
const BUS_DRIVERS: &str = "sys/bus/pci/drivers";
const GROUPS: &str = "sys/kernel/iommu_groups";

/// Creates `link` -> `target`, replacing an existing file or link.
fn make_symlink(target: &Path, link: &Path) {
    match os_symlink(target, link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(link).unwrap_or_else(|e| panic!("replace {}: {e}", link.display()));
            os_symlink(target, link)
                .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
        }
        Err(e) => panic!("symlink {} -> {}: {e}", link.display(), target.display()),
    }
}

/// Where trees go: `$NODEPREP_FIXTURE_TMPDIR` if set; else `/dev/shm` when it is a tmpfs big
/// enough (a 4096-function tree takes ~300 MB of tmpfs; disk-backed temp dirs can be 50x slower
/// for this many small files); else the system temp dir.
fn fixture_base() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("NODEPREP_FIXTURE_TMPDIR") {
        return Some(PathBuf::from(d));
    }
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let line =
        mounts.lines().find(|l| l.split(' ').nth(1) == Some("/dev/shm") && l.split(' ').nth(2) == Some("tmpfs"))?;
    let opts = line.split(' ').nth(3)?;
    let size_kb = opts.split(',').find_map(|o| o.strip_prefix("size=")).map(|s| {
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 = num.parse().unwrap_or(0);
        match unit {
            "k" => n,
            "m" => n * 1024,
            "g" => n * 1024 * 1024,
            _ => n / 1024,
        }
    });
    // No size= means the default, half of RAM.
    (size_kb.is_none_or(|kb| kb >= 4 * 1024 * 1024)).then(|| PathBuf::from("/dev/shm"))
}

fn majmin_str(mm: (u32, u32)) -> String {
    format!("{}:{}\n", mm.0, mm.1)
}

/// Trailing decimal digits of a partition name (`nvme0n1p3` -> 3, `sda2` -> 2).
fn partition_number(name: &str) -> u32 {
    let digits: String = name.chars().rev().take_while(char::is_ascii_digit).collect();
    digits.chars().rev().collect::<String>().parse().unwrap_or(1)
}

/// The kernel's cpulist for node `n` in fixtures: 4 CPUs per node; node -1 means "all", shown
/// as node 0's.
fn node_cpus(numa: i32) -> (String, String) {
    let n = numa.clamp(0, 31) as u32;
    let first = n * 4;
    let mask: u128 = 0xf << first;
    let mut groups: Vec<String> = Vec::new();
    let mut m = mask;
    loop {
        groups.push(format!("{:08x}", (m & 0xffff_ffff) as u32));
        m >>= 32;
        if m == 0 {
            break;
        }
    }
    groups.reverse();
    (format!("{}-{}\n", first, first + 3), format!("{}\n", groups.join(",")))
}

impl HostTree {
    pub fn new() -> HostTree {
        let mut b = tempfile::Builder::new();
        b.prefix("nodeprep-host-");
        let dir = match fixture_base() {
            Some(base) => b.tempdir_in(&base).or_else(|_| b.tempdir()),
            None => b.tempdir(),
        }
        .expect("create temp dir for HostTree");
        HostTree { dir, st: RefCell::new(State { next_ifindex: 1, ..State::default() }) }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Absolute path of a tree-relative path.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root().join(rel)
    }

    /// The directory of a PCI function added with [`pci`](Self::pci) or [`vfs`](Self::vfs),
    /// relative to the root (`sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0`).
    pub fn pci_dir(&self, addr: &str) -> PathBuf {
        self.dev_dir(addr)
    }

    /// Addresses of every PCI function added so far (sorted).
    pub fn pci_addrs(&self) -> Vec<String> {
        let st = self.st.borrow();
        let mut v: Vec<(PciAddr, String)> = st.devs.iter().map(|(k, d)| (d.addr, k.clone())).collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    // ---- low-level -------------------------------------------------------------------------

    fn mkdir(&self, rel: &Path) {
        let mut st = self.st.borrow_mut();
        if st.dirs.contains(rel) {
            return;
        }
        fs::create_dir_all(self.root().join(rel)).unwrap_or_else(|e| panic!("mkdir {}: {e}", rel.display()));
        let mut p = Some(rel);
        while let Some(d) = p {
            if d.as_os_str().is_empty() || !st.dirs.insert(d.to_path_buf()) {
                break;
            }
            p = d.parent();
        }
    }

    /// Writes a file whose parent directory is known to exist.
    fn put(&self, rel: &Path, contents: impl AsRef<[u8]>) {
        fs::write(self.root().join(rel), contents).unwrap_or_else(|e| panic!("write {}: {e}", rel.display()));
    }

    /// Symlink `link` (tree-relative) pointing at tree-relative `target`, relative like the kernel.
    fn link_to(&self, link: &Path, target: &Path) {
        let dir = link.parent().expect("link has a parent directory");
        self.mkdir(dir);
        let rel = relative(dir, target);
        make_symlink(&rel, &self.root().join(link));
    }

    fn dev_dir(&self, addr: &str) -> PathBuf {
        let st = self.st.borrow();
        st.devs
            .get(addr)
            .map(|d| d.dir.clone())
            .unwrap_or_else(|| panic!("PCI function {addr} must be added with pci() first"))
    }

    /// Writes any file (creating parents).
    pub fn file(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let rel = Path::new(rel.trim_start_matches('/'));
        if let Some(p) = rel.parent() {
            self.mkdir(p);
        }
        self.put(rel, contents);
        self
    }

    /// Creates a symlink (possibly dangling) with `target` written verbatim, replacing what was
    /// at `rel_link`.
    pub fn symlink(&self, rel_link: &str, target: &str) -> &Self {
        let rel = Path::new(rel_link.trim_start_matches('/'));
        if let Some(p) = rel.parent() {
            self.mkdir(p);
        }
        make_symlink(Path::new(target), &self.root().join(rel));
        self
    }

    /// Removes a file or symlink (to break a tree on purpose).
    pub fn remove(&self, rel: &str) -> &Self {
        let abs = self.root().join(rel.trim_start_matches('/'));
        fs::remove_file(&abs).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
        self
    }

    // ---- PCI -------------------------------------------------------------------------------

    /// Adds one PCI function: its directory under `sys/devices/pci<DDDD>:<BB>/<bridges>/`, its
    /// attributes and `config`, the `sys/bus/pci/devices` link, and its driver and IOMMU group
    /// links. Parents must be added before children.
    pub fn pci(&self, f: &PciFn) -> &Self {
        self.add_fn(f, None);
        self
    }

    fn add_fn(&self, f: &PciFn, pf: Option<&str>) -> PathBuf {
        let addr = PciAddr::parse(&f.addr).unwrap_or_else(|| panic!("invalid PCI address {:?}", f.addr));
        let name = addr.to_string();
        assert_eq!(name, f.addr, "write PCI addresses in the kernel's lower-case spelling");
        let vf = pf.is_some();
        let (parent_dir, parent, numa) = {
            let st = self.st.borrow();
            assert!(!st.devs.contains_key(&name), "PCI function {name} added twice");
            match pf {
                Some(pf) => {
                    let p = st.devs.get(pf).unwrap_or_else(|| panic!("PF {pf} must be added before its VFs"));
                    let numa = if f.numa_node == -1 { p.numa } else { f.numa_node };
                    (p.dir.parent().expect("PF has a parent dir").to_path_buf(), p.parent.clone(), numa)
                }
                None => match &f.parent {
                    Some(b) => {
                        let p = st.devs.get(b).unwrap_or_else(|| panic!("bridge {b} must be added before {name}"));
                        (p.dir.clone(), Some(b.clone()), f.numa_node)
                    }
                    None => (Path::new(SYS_DEVICES).join(addr.root_bus_dir()), None, f.numa_node),
                },
            }
        };
        let dir = parent_dir.join(&name);
        self.mkdir(&dir);

        let class = f.class & 0xff_ffff;
        let bridge = f.is_bridge();
        let w = |attr: &str, contents: &dyn AsRef<[u8]>| self.put(&dir.join(attr), contents);
        w("vendor", &format!("0x{:04x}\n", f.vendor));
        w("device", &format!("0x{:04x}\n", f.device));
        w("subsystem_vendor", &format!("0x{:04x}\n", f.subsys_vendor));
        w("subsystem_device", &format!("0x{:04x}\n", f.subsys_device));
        w("class", &format!("0x{class:06x}\n"));
        w("revision", &format!("0x{:02x}\n", f.revision));
        w("numa_node", &format!("{numa}\n"));
        w("driver_override", &format!("{}\n", f.driver_override.as_deref().unwrap_or("(null)")));
        w("enable", &if f.driver.is_some() { "1\n" } else { "0\n" });
        w("irq", &"0\n");
        let (cpulist, cpumask) = node_cpus(numa);
        w("local_cpulist", &cpulist);
        w("local_cpus", &cpumask);
        let modalias = format!(
            "pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}",
            f.vendor,
            f.device,
            f.subsys_vendor,
            f.subsys_device,
            class >> 16,
            (class >> 8) & 0xff,
            class & 0xff
        );
        w("modalias", &format!("{modalias}\n"));
        let mut uevent = String::new();
        if let Some(d) = &f.driver {
            uevent.push_str(&format!("DRIVER={d}\n"));
        }
        uevent.push_str(&format!(
            "PCI_CLASS={class:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={name}\nMODALIAS={modalias}\n",
            f.vendor, f.device, f.subsys_vendor, f.subsys_device
        ));
        w("uevent", &uevent);
        // 13 lines (6 BARs, ROM, 6 IOV BARs) for endpoints, 17 (plus 4 windows) for bridges.
        let lines = if bridge { 17 } else { 13 };
        w("resource", &"0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(lines));
        if class >> 8 == 0x0300 {
            if let Some(b) = f.boot_vga {
                w("boot_vga", &if b { "1\n" } else { "0\n" });
            }
        }
        if !vf {
            if let Some(total) = f.sriov_totalvfs {
                w("sriov_totalvfs", &format!("{total}\n"));
                w("sriov_numvfs", &"0\n");
                w("sriov_drivers_autoprobe", &"1\n");
                w("sriov_offset", &"1\n");
                w("sriov_stride", &"1\n");
                w("sriov_vf_device", &format!("{:x}\n", f.device));
            }
        }

        // Configuration space (256 bytes, little-endian).
        let mut cfg = vec![0u8; 256];
        let (v, d) = if vf { (0xffff, 0xffff) } else { (f.vendor, f.device) };
        cfg[0..2].copy_from_slice(&v.to_le_bytes());
        cfg[2..4].copy_from_slice(&d.to_le_bytes());
        if f.driver.is_some() {
            cfg[4] = 0x06; // command: memory space + bus master
        }
        cfg[8] = f.revision;
        cfg[9] = class as u8;
        cfg[0xa] = (class >> 8) as u8;
        cfg[0xb] = (class >> 16) as u8;
        if bridge {
            cfg[0xe] = 0x01;
            cfg[0x18] = addr.bus; // primary bus; secondary/subordinate filled in as children appear
        } else {
            cfg[0x2c..0x2e].copy_from_slice(&f.subsys_vendor.to_le_bytes());
            cfg[0x2e..0x30].copy_from_slice(&f.subsys_device.to_le_bytes());
        }
        self.put(&dir.join("config"), &cfg);

        // Links.
        self.link_to(&dir.join("subsystem"), Path::new("sys/bus/pci"));
        self.link_to(&Path::new(BUS_DEVICES).join(&name), &dir);
        if let Some(drv) = &f.driver {
            self.ensure_driver(drv);
            let ddir = Path::new(BUS_DRIVERS).join(drv);
            self.link_to(&dir.join("driver"), &ddir);
            self.link_to(&ddir.join(&name), &dir);
        }
        if let Some(g) = f.iommu_group {
            let gdir = self.ensure_group(g);
            self.link_to(&dir.join("iommu_group"), &gdir);
            self.link_to(&gdir.join("devices").join(&name), &dir);
        }

        {
            let mut st = self.st.borrow_mut();
            st.devs.insert(
                name.clone(),
                Dev {
                    dir: dir.clone(),
                    addr,
                    parent: parent.clone(),
                    vf,
                    totalvfs: if vf { None } else { f.sriov_totalvfs },
                    numvfs: 0,
                    numa,
                    config: cfg,
                },
            );
        }
        self.update_bridges(parent.as_deref(), addr.bus);
        if !vf {
            self.update_multifunction(&name, addr);
        }
        dir
    }

    /// Bridges upstream of a new function: secondary bus (immediate parent) and subordinate bus
    /// (every ancestor) must cover the function's bus.
    fn update_bridges(&self, parent: Option<&str>, bus: u8) {
        let mut cur = parent.map(str::to_owned);
        let mut immediate = true;
        while let Some(p) = cur {
            let rewrite = {
                let mut st = self.st.borrow_mut();
                let d = st.devs.get_mut(&p).expect("parent bridge recorded");
                let mut changed = false;
                if immediate && d.config[0x19] == 0 {
                    d.config[0x19] = bus;
                    changed = true;
                }
                if d.config[0x1a] < bus {
                    d.config[0x1a] = bus;
                    changed = true;
                }
                let next = d.parent.clone();
                (changed.then(|| (d.dir.join("config"), d.config.clone())), next)
            };
            if let Some((path, cfg)) = rewrite.0 {
                self.put(&path, &cfg);
            }
            cur = rewrite.1;
            immediate = false;
        }
    }

    /// Sets the multi-function bit (0x80 in the header type) when a slot holds several
    /// (physical) functions.
    fn update_multifunction(&self, name: &str, addr: PciAddr) {
        let members = {
            let mut st = self.st.borrow_mut();
            let v = st.slots.entry((addr.domain, addr.bus, addr.dev)).or_default();
            v.push(name.to_owned());
            if v.len() < 2 {
                return;
            }
            v.clone()
        };
        for m in members {
            let rewrite = {
                let mut st = self.st.borrow_mut();
                let d = st.devs.get_mut(&m).expect("slot member recorded");
                (d.config[0xe] & 0x80 == 0).then(|| {
                    d.config[0xe] |= 0x80;
                    (d.dir.join("config"), d.config.clone())
                })
            };
            if let Some((path, cfg)) = rewrite {
                self.put(&path, &cfg);
            }
        }
    }

    fn ensure_driver(&self, drv: &str) {
        if self.st.borrow().drivers.contains(drv) {
            return;
        }
        if self.st.borrow().drivers.is_empty() {
            self.mkdir(Path::new("sys/bus/pci"));
            self.put(Path::new("sys/bus/pci/drivers_probe"), "");
            self.put(Path::new("sys/bus/pci/drivers_autoprobe"), "1\n");
            self.put(Path::new("sys/bus/pci/rescan"), "");
        }
        let ddir = Path::new(BUS_DRIVERS).join(drv);
        self.mkdir(&ddir);
        for f in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
            self.put(&ddir.join(f), "");
        }
        self.st.borrow_mut().drivers.insert(drv.to_owned());
    }

    fn ensure_group(&self, g: u32) -> PathBuf {
        let gdir = Path::new(GROUPS).join(g.to_string());
        if self.st.borrow().groups.contains(&g) {
            return gdir;
        }
        self.mkdir(&gdir.join("devices"));
        if !self.st.borrow().typed_groups.contains(&g) {
            self.put(&gdir.join("type"), "DMA\n");
        }
        self.put(&gdir.join("reserved_regions"), "0x00000000fee00000 0x00000000feefffff msi\n");
        self.st.borrow_mut().groups.insert(g);
        gdir
    }

    /// Sets an IOMMU group's `type` (`DMA`, `DMA-FQ`, `identity`, `blocked`), before or after its
    /// devices are added.
    pub fn group_type(&self, group: u32, ty: &str) -> &Self {
        let gdir = Path::new(GROUPS).join(group.to_string());
        self.mkdir(&gdir.join("devices"));
        self.put(&gdir.join("type"), format!("{ty}\n"));
        self.st.borrow_mut().typed_groups.insert(group);
        self
    }

    /// Adds `vfs` as virtual functions of `pf` (which must have `.totalvfs(..)`): each VF's
    /// directory sits beside the PF's (its `parent` field is ignored), VFs get `physfn`, the PF
    /// `virtfn<i>` (numbered on from earlier calls), and the PF's `sriov_numvfs`, `sriov_offset`,
    /// `sriov_stride` and `sriov_vf_device` are updated. A VF whose NUMA node is -1 inherits the
    /// PF's. VF `config` reads vendor/device `ffff`, as on real hardware.
    pub fn vfs(&self, pf: &str, vfs: &[PciFn]) -> &Self {
        let (pf_dir, pf_addr, start, total) = {
            let st = self.st.borrow();
            let p = st.devs.get(pf).unwrap_or_else(|| panic!("PF {pf} must be added before its VFs"));
            assert!(!p.vf, "{pf} is a VF, not a PF");
            let total = p.totalvfs.unwrap_or_else(|| panic!("PF {pf} needs .totalvfs(n) to have VFs"));
            (p.dir.clone(), p.addr, p.numvfs, total)
        };
        let numvfs = start + vfs.len() as u32;
        assert!(numvfs <= total, "{pf}: {numvfs} VFs exceed sriov_totalvfs {total}");
        let mut rids = Vec::with_capacity(vfs.len());
        for (i, v) in vfs.iter().enumerate() {
            let vdir = self.add_fn(v, Some(pf));
            self.link_to(&vdir.join("physfn"), &pf_dir);
            self.link_to(&pf_dir.join(format!("virtfn{}", start as usize + i)), &vdir);
            rids.push(PciAddr::parse(&v.addr).expect("VF address was validated").rid());
        }
        self.st.borrow_mut().devs.get_mut(pf).expect("PF recorded").numvfs = numvfs;
        self.put(&pf_dir.join("sriov_numvfs"), format!("{numvfs}\n"));
        if start == 0 && !vfs.is_empty() {
            let offset = rids[0].wrapping_sub(pf_addr.rid());
            self.put(&pf_dir.join("sriov_offset"), format!("{offset}\n"));
            if rids.len() > 1 {
                self.put(&pf_dir.join("sriov_stride"), format!("{}\n", rids[1].wrapping_sub(rids[0])));
            }
            self.put(&pf_dir.join("sriov_vf_device"), format!("{:x}\n", vfs[0].device));
        }
        self
    }

    /// VF address `i` (0-based) of `pf` for a given VF offset and stride, as the routing-ID
    /// arithmetic of the SR-IOV capability places it (may land on a following bus).
    pub fn vf_addr(pf: &str, offset: u16, stride: u16, i: u16) -> String {
        let a = PciAddr::parse(pf).unwrap_or_else(|| panic!("invalid PF address {pf}"));
        PciAddr::from_rid(a.domain, a.rid() + offset + stride * i).to_string()
    }

    // ---- network ---------------------------------------------------------------------------

    /// A network interface at `.../<pci>/net/<ifname>/` with `sys/class/net/<ifname>` linking to
    /// it. The first interface also creates `lo` (ifindex 1) under `sys/devices/virtual/net`.
    pub fn net(&self, pci: &str, ifname: &str, operstate: &str) -> &Self {
        let dir = self.dev_dir(pci);
        self.net_at(&dir, ifname, operstate)
    }

    /// A network interface below a PCI function's sub-path, e.g. virtio-net's
    /// `.../0000:00:03.0/virtio0/net/eth0` (`subpath` = `virtio0`).
    pub fn net_under(&self, pci: &str, subpath: &str, ifname: &str, operstate: &str) -> &Self {
        let dir = self.dev_dir(pci).join(subpath);
        self.net_at(&dir, ifname, operstate)
    }

    fn net_at(&self, parent: &Path, ifname: &str, operstate: &str) -> &Self {
        if self.st.borrow().next_ifindex == 1 {
            self.st.borrow_mut().next_ifindex = 2;
            let lo = Path::new("sys/devices/virtual/net/lo");
            self.mkdir(lo);
            self.put(&lo.join("ifindex"), "1\n");
            self.put(&lo.join("operstate"), "unknown\n");
            self.put(&lo.join("address"), "00:00:00:00:00:00\n");
            self.put(&lo.join("type"), "772\n");
            self.put(&lo.join("mtu"), "65536\n");
            self.put(&lo.join("flags"), "0x9\n");
            self.link_to(Path::new("sys/class/net/lo"), lo);
            self.link_to(&lo.join("subsystem"), Path::new("sys/class/net"));
        }
        let ifindex = {
            let mut st = self.st.borrow_mut();
            let i = st.next_ifindex;
            st.next_ifindex += 1;
            i
        };
        let dir = parent.join("net").join(ifname);
        self.mkdir(&dir);
        let up = operstate == "up";
        self.put(&dir.join("operstate"), format!("{operstate}\n"));
        self.put(
            &dir.join("address"),
            format!("52:54:00:{:02x}:{:02x}:{:02x}\n", ifindex >> 16 & 0xff, ifindex >> 8 & 0xff, ifindex & 0xff),
        );
        self.put(&dir.join("ifindex"), format!("{ifindex}\n"));
        self.put(&dir.join("type"), "1\n");
        self.put(&dir.join("mtu"), "1500\n");
        self.put(&dir.join("addr_len"), "6\n");
        self.put(&dir.join("flags"), if up { "0x1003\n" } else { "0x1002\n" });
        if up {
            self.put(&dir.join("carrier"), "1\n");
        }
        self.link_to(&dir.join("device"), parent);
        self.link_to(&dir.join("subsystem"), Path::new("sys/class/net"));
        self.link_to(&Path::new("sys/class/net").join(ifname), &dir);
        self
    }

    /// A virtual network interface (`sys/devices/virtual/net/<name>`, as a bond, bridge, VLAN,
    /// OVS datapath `ovs-system` or OVS internal port `br-ex` is) linked from `sys/class/net`.
    pub fn net_virtual(&self, name: &str, operstate: &str) -> &Self {
        self.net_at(Path::new("sys/devices/virtual"), name, operstate);
        self.remove(&format!("sys/devices/virtual/net/{name}/device"))
    }

    /// A bonding master: a virtual interface with the `bonding/` attribute group
    /// (`drivers/net/bonding/bond_sysfs.c`).
    pub fn net_bond(&self, name: &str, mode: &str) -> &Self {
        self.net_virtual(name, "up");
        let num = match mode {
            "balance-rr" => 0,
            "active-backup" => 1,
            "802.3ad" => 4,
            _ => 1,
        };
        let dir = format!("sys/devices/virtual/net/{name}/bonding");
        self.file(&format!("{dir}/mode"), format!("{mode} {num}\n"));
        self.file(&format!("{dir}/slaves"), "\n");
        self.file(&format!("{dir}/miimon"), "100\n")
    }

    /// A Linux bridge: a virtual interface with `bridge/` and `brif/`
    /// (`net/bridge/br_sysfs_br.c`, `br_sysfs_if.c`).
    pub fn net_bridge(&self, name: &str) -> &Self {
        self.net_virtual(name, "up");
        let dir = format!("sys/devices/virtual/net/{name}");
        self.file(&format!("{dir}/bridge/stp_state"), "0\n");
        self.file(&format!("{dir}/bridge/forward_delay"), "1500\n");
        self.mkdir(&Path::new(&dir).join("brif"));
        self
    }

    /// The directory of interface `name`, tree-relative, through its `sys/class/net` link.
    fn net_dir(&self, name: &str) -> PathBuf {
        let link = Path::new("sys/class/net").join(name);
        let target = fs::read_link(self.root().join(&link)).unwrap_or_else(|e| panic!("interface {name}: {e}"));
        let mut out = PathBuf::from("sys/class/net");
        for c in target.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other.as_os_str()),
            }
        }
        out
    }

    /// Enslaves `port` to `master` as `netdev_master_upper_dev_link` does: `<port>/master` and
    /// `<port>/upper_<master>` link to the master, `<master>/lower_<port>` back; a bridge port
    /// also gets `brport/` and the bridge `brif/<port> -> <port>/brport`, a bond slave
    /// `bonding_slave/` and a line in `bonding/slaves`.
    pub fn net_master(&self, port: &str, master: &str) -> &Self {
        let p = self.net_dir(port);
        let m = self.net_dir(master);
        self.link_to(&p.join("master"), &m);
        self.net_upper(port, master);
        if self.root().join(&m).join("bridge").is_dir() {
            self.put_dir_file(&p.join("brport"), "state", "3\n");
            self.link_to(&m.join("brif").join(port), &p.join("brport"));
        }
        if self.root().join(&m).join("bonding").is_dir() {
            self.put_dir_file(&p.join("bonding_slave"), "state", "active\n");
            let slaves = m.join("bonding/slaves");
            let old = fs::read_to_string(self.root().join(&slaves)).unwrap_or_default();
            let mut names: Vec<&str> = old.split_whitespace().collect();
            names.push(port);
            self.put(&slaves, format!("{}\n", names.join(" ")));
        }
        self
    }

    /// `upper` stacked on `lower` (a VLAN, macvlan, or a master): `<lower>/upper_<upper>` and
    /// `<upper>/lower_<lower>` (`__netdev_adjacent_dev_insert`).
    pub fn net_upper(&self, lower: &str, upper: &str) -> &Self {
        let l = self.net_dir(lower);
        let u = self.net_dir(upper);
        self.link_to(&l.join(format!("upper_{upper}")), &u);
        self.link_to(&u.join(format!("lower_{lower}")), &l);
        self
    }

    fn put_dir_file(&self, dir: &Path, name: &str, contents: &str) {
        self.mkdir(dir);
        self.put(&dir.join(name), contents);
    }

    /// `proc/net/if_inet6` as `if6_seq_show` prints it (`%pi6 %02x %02x %02x %02x %8s`): one
    /// global-scope, permanent address per `(interface, address, prefix)`.
    pub fn if_inet6(&self, addresses: &[(&str, &str, u8)]) -> &Self {
        let mut text = String::new();
        for (ifname, addr, prefix) in addresses {
            let ip: std::net::Ipv6Addr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
            let ifindex: u32 = fs::read_to_string(self.root().join(self.net_dir(ifname)).join("ifindex"))
                .expect("ifindex")
                .trim()
                .parse()
                .expect("ifindex number");
            text.push_str(&format!("{:032x} {ifindex:02x} {prefix:02x} 00 80 {ifname:>8}\n", u128::from(ip)));
        }
        self.file("proc/net/if_inet6", text)
    }

    // ---- block -----------------------------------------------------------------------------

    /// An NVMe controller `.../<pci>/nvme/<ctrl>/` (`sys/class/nvme/<ctrl>`) with namespace
    /// `<ctrl>/<ns>/` and partitions `<ns>/<ns>pN/`, each in `sys/class/block`, `sys/dev/block`,
    /// and the namespace in `sys/block`.
    pub fn nvme(
        &self,
        pci: &str,
        ctrl: &str,
        ns: &str,
        majmin: (u32, u32),
        partitions: &[(&str, (u32, u32))],
    ) -> &Self {
        let cdir = self.nvme_ctrl(pci, ctrl);
        self.disk_at(&cdir, &cdir, ns, majmin, partitions, false);
        self
    }

    /// The controller directory `.../<pci>/nvme/<ctrl>/` and `sys/class/nvme/<ctrl>` (once).
    fn nvme_ctrl(&self, pci: &str, ctrl: &str) -> PathBuf {
        let ddir = self.dev_dir(pci);
        let cdir = ddir.join("nvme").join(ctrl);
        if self.st.borrow().dirs.contains(&cdir) {
            return cdir;
        }
        self.mkdir(&cdir);
        let cnum = partition_number(ctrl);
        self.put(&cdir.join("address"), format!("{pci}\n"));
        self.put(&cdir.join("transport"), "pcie\n");
        self.put(&cdir.join("state"), "live\n");
        self.put(&cdir.join("model"), "FIXTURE NVME SSD 960GB                  \n");
        self.put(&cdir.join("serial"), format!("S4FIXTURE{cnum:06}      \n"));
        self.put(&cdir.join("firmware_rev"), "EDA7602Q\n");
        self.put(&cdir.join("dev"), format!("240:{cnum}\n"));
        self.link_to(&cdir.join("device"), &ddir);
        self.link_to(&cdir.join("subsystem"), Path::new("sys/class/nvme"));
        self.link_to(&Path::new("sys/class/nvme").join(ctrl), &cdir);
        cdir
    }

    /// NVMe native multipath (`drivers/nvme/host/multipath.c`, `core.c`): subsystem
    /// `nvme-subsys<subsys>` at `sys/devices/virtual/nvme-subsystem/nvme-subsys<subsys>/` (class
    /// link `sys/class/nvme-subsystem/...`) with a link `nvmeK` to each controller; the head disk
    /// `nvme<subsys>n<nsid>` (and its partitions) in the subsystem directory; and under each
    /// controller `(pci, "nvmeK")` the hidden per-path disk `nvme<subsys>cKn<nsid>` (`hidden` 1,
    /// no partitions; major:minor 259:(200 + K*8 + nsid)).
    pub fn nvme_multipath(
        &self,
        subsys: u32,
        nsid: u32,
        majmin: (u32, u32),
        partitions: &[(&str, (u32, u32))],
        paths: &[(&str, &str)],
    ) -> &Self {
        let sname = format!("nvme-subsys{subsys}");
        let sdir = Path::new("sys/devices/virtual/nvme-subsystem").join(&sname);
        self.mkdir(&sdir);
        let nqn = format!("nqn.2014.08.org.nvmexpress:144d144dS4FIXTURE{subsys:06}");
        self.put(&sdir.join("subsysnqn"), format!("{nqn}\n"));
        self.put(&sdir.join("model"), "FIXTURE NVME DUAL PORT 3.84TB           \n");
        self.put(&sdir.join("iopolicy"), "numa\n");
        self.put(&sdir.join("subsystype"), "nvm\n");
        self.link_to(&sdir.join("subsystem"), Path::new("sys/class/nvme-subsystem"));
        self.link_to(&Path::new("sys/class/nvme-subsystem").join(&sname), &sdir);
        for (pci, ctrl) in paths {
            let cdir = self.nvme_ctrl(pci, ctrl);
            self.put(&cdir.join("subsysnqn"), format!("{nqn}\n"));
            self.link_to(&sdir.join(ctrl), &cdir);
            let k = partition_number(ctrl);
            let path_disk = format!("nvme{subsys}c{k}n{nsid}");
            self.disk_at(&cdir, &cdir, &path_disk, (259, 200 + k * 8 + nsid), &[], false);
            self.put(&cdir.join(&path_disk).join("hidden"), "1\n");
        }
        self.disk_at(&sdir, &sdir, &format!("nvme{subsys}n{nsid}"), majmin, partitions, false);
        self
    }

    /// A SCSI/SATA/virtio disk at `.../<pci>/<subpath>/block/<disk>/`, e.g. subpath
    /// `ata1/host0/target0:0:0/0:0:0:0` for AHCI or `virtio1` for virtio-blk.
    pub fn block_under(
        &self,
        pci: &str,
        subpath: &str,
        disk: &str,
        majmin: (u32, u32),
        partitions: &[(&str, (u32, u32))],
    ) -> &Self {
        let parent = self.dev_dir(pci).join(subpath);
        self.mkdir(&parent);
        let rotational = disk.starts_with("sd");
        self.disk_at(&parent.join("block"), &parent, disk, majmin, partitions, rotational);
        self
    }

    fn disk_at(
        &self,
        dir_parent: &Path,
        device: &Path,
        disk: &str,
        majmin: (u32, u32),
        parts: &[(&str, (u32, u32))],
        rotational: bool,
    ) {
        const DISK_SECTORS: u64 = 1_875_385_008; // 960 GB
        let dir = dir_parent.join(disk);
        self.mkdir(&dir.join("holders"));
        self.mkdir(&dir.join("slaves"));
        self.mkdir(&dir.join("queue"));
        self.put(&dir.join("dev"), majmin_str(majmin));
        self.put(&dir.join("size"), format!("{DISK_SECTORS}\n"));
        self.put(&dir.join("ro"), "0\n");
        self.put(&dir.join("removable"), "0\n");
        self.put(&dir.join("hidden"), "0\n");
        self.put(&dir.join("range"), "0\n");
        self.put(
            &dir.join("uevent"),
            format!("MAJOR={}\nMINOR={}\nDEVNAME={disk}\nDEVTYPE=disk\n", majmin.0, majmin.1),
        );
        self.put(&dir.join("queue/rotational"), if rotational { "1\n" } else { "0\n" });
        self.put(&dir.join("queue/logical_block_size"), "512\n");
        self.link_to(&dir.join("device"), device);
        self.link_to(&dir.join("subsystem"), Path::new("sys/class/block"));
        self.register_block(disk, &dir, majmin, true);
        let mut start: u64 = 2048;
        for (i, (pname, pmm)) in parts.iter().enumerate() {
            let size: u64 = if i + 1 == parts.len() { DISK_SECTORS - start - 2048 } else { 2_097_152 };
            let pdir = dir.join(pname);
            // Partitions have `holders/` but no `slaves/` (block/partitions/core.c).
            self.mkdir(&pdir.join("holders"));
            self.put(&pdir.join("dev"), majmin_str(*pmm));
            self.put(&pdir.join("partition"), format!("{}\n", partition_number(pname)));
            self.put(&pdir.join("start"), format!("{start}\n"));
            self.put(&pdir.join("size"), format!("{size}\n"));
            self.put(&pdir.join("ro"), "0\n");
            self.put(
                &pdir.join("uevent"),
                format!(
                    "MAJOR={}\nMINOR={}\nDEVNAME={pname}\nDEVTYPE=partition\nPARTN={}\n",
                    pmm.0,
                    pmm.1,
                    partition_number(pname)
                ),
            );
            self.link_to(&pdir.join("subsystem"), Path::new("sys/class/block"));
            self.register_block(pname, &pdir, *pmm, false);
            start += size;
        }
    }

    fn register_block(&self, name: &str, dir: &Path, majmin: (u32, u32), whole_disk: bool) {
        self.link_to(&Path::new("sys/class/block").join(name), dir);
        self.link_to(&Path::new("sys/dev/block").join(format!("{}:{}", majmin.0, majmin.1)), dir);
        if whole_disk {
            self.link_to(&Path::new("sys/block").join(name), dir);
        }
        self.st.borrow_mut().blocks.insert(name.to_owned(), Block { dir: dir.to_path_buf(), majmin });
    }

    /// A device-mapper device `sys/devices/virtual/block/<name>/` with `dm/name` and an LVM
    /// `dm/uuid`, stacked on the given block devices (already added): `slaves/<part>` links
    /// there, and each slave gets `holders/<name>` back.
    pub fn dm(&self, name: &str, dm_name: &str, majmin: (u32, u32), slaves: &[&str]) -> &Self {
        // LVM's uuid: "LVM-" + the VG uuid and the LV uuid, 32 characters each, no dashes.
        let id: String = dm_name.bytes().map(|b| format!("{b:02x}")).collect();
        let uuid = format!("LVM-{:0<32}{:0>32}", "Fx7vG0", &id[..id.len().min(32)]);
        self.dm_with_uuid(name, dm_name, &uuid, majmin, slaves)
    }

    /// [`dm`](Self::dm) with a given `dm/uuid` (`CRYPT-LUKS2-<uuid>-<name>` for dm-crypt,
    /// `mpath-<wwid>` for dm-multipath).
    pub fn dm_with_uuid(&self, name: &str, dm_name: &str, uuid: &str, majmin: (u32, u32), slaves: &[&str]) -> &Self {
        let dir = self.virtual_block(name, majmin, slaves);
        self.mkdir(&dir.join("dm"));
        self.put(&dir.join("dm/name"), format!("{dm_name}\n"));
        self.put(&dir.join("dm/uuid"), format!("{uuid}\n"));
        self.put(&dir.join("dm/suspended"), "0\n");
        self.st.borrow_mut().dm_names.insert(dm_name.to_owned(), name.to_owned());
        self
    }

    /// An md array `sys/devices/virtual/block/<name>/` (`md/level`, `md/raid_disks`,
    /// `md/array_state`, and `md/dev-<member>/block` links), stacked on `members` like
    /// [`dm`](Self::dm).
    pub fn md(&self, name: &str, level: &str, majmin: (u32, u32), members: &[&str]) -> &Self {
        let dir = self.virtual_block(name, majmin, members);
        self.mkdir(&dir.join("md"));
        self.put(&dir.join("md/level"), format!("{level}\n"));
        self.put(&dir.join("md/raid_disks"), format!("{}\n", members.len()));
        self.put(&dir.join("md/array_state"), "clean\n");
        self.put(&dir.join("md/metadata_version"), "1.2\n");
        for m in members {
            let mdir = self.block_dir(m);
            self.link_to(&dir.join(format!("md/dev-{m}/block")), &mdir);
        }
        self
    }

    fn block_dir(&self, name: &str) -> PathBuf {
        let st = self.st.borrow();
        st.blocks.get(name).map(|b| b.dir.clone()).unwrap_or_else(|| panic!("block device {name} must exist first"))
    }

    /// A stacked block device under `sys/devices/virtual/block/<name>/` with `slaves/` and the
    /// slaves' `holders/` links.
    fn virtual_block(&self, name: &str, majmin: (u32, u32), slaves: &[&str]) -> PathBuf {
        let dir = Path::new("sys/devices/virtual/block").join(name);
        self.mkdir(&dir.join("holders"));
        self.mkdir(&dir.join("slaves"));
        self.mkdir(&dir.join("queue"));
        self.put(&dir.join("dev"), majmin_str(majmin));
        self.put(&dir.join("size"), "104857600\n");
        self.put(&dir.join("ro"), "0\n");
        self.put(&dir.join("removable"), "0\n");
        self.put(&dir.join("hidden"), "0\n");
        self.put(
            &dir.join("uevent"),
            format!("MAJOR={}\nMINOR={}\nDEVNAME={name}\nDEVTYPE=disk\n", majmin.0, majmin.1),
        );
        self.put(&dir.join("queue/rotational"), "0\n");
        self.link_to(&dir.join("subsystem"), Path::new("sys/class/block"));
        for s in slaves {
            let sdir = self.block_dir(s);
            self.link_to(&dir.join("slaves").join(s), &sdir);
            self.link_to(&sdir.join("holders").join(name), &dir);
        }
        self.register_block(name, &dir, majmin, true);
        dir
    }

    /// A btrfs the kernel has open (mounted): `sys/fs/btrfs/<fsid>/` with `label` and
    /// `devices/<member>` linking to each member's block device directory (`fs/btrfs/sysfs.c`,
    /// `btrfs_sysfs_add_device`), and `sys/fs/btrfs/features/`.
    pub fn btrfs(&self, fsid: &str, label: &str, members: &[&str]) -> &Self {
        let dir = Path::new("sys/fs/btrfs").join(fsid);
        self.mkdir(&dir.join("devices"));
        self.mkdir(Path::new("sys/fs/btrfs/features"));
        self.put(&dir.join("label"), format!("{label}\n"));
        self.put(&dir.join("metadata_uuid"), format!("{fsid}\n"));
        self.put(&dir.join("nodesize"), "16384\n");
        self.put(&dir.join("sectorsize"), "4096\n");
        for m in members {
            let mdir = self.block_dir(m);
            self.link_to(&dir.join("devices").join(m), &mdir);
        }
        self
    }

    /// `dev/<name>` as a real block device node with `majmin` (mknod: needs root).
    pub fn block_node(&self, name: &str, majmin: (u32, u32)) -> &Self {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        self.mkdir(Path::new("dev"));
        let path = self.root().join("dev").join(name);
        let dev = makedev(u64::from(majmin.0), u64::from(majmin.1));
        mknod(&path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), dev)
            .unwrap_or_else(|e| panic!("mknod {} (the test must run as root): {e}", path.display()));
        self
    }

    // ---- character devices and processes ---------------------------------------------------

    /// A DRM minor `.../<pci>/drm/<name>/` (`card0`: major 226, minor N; `renderD128`: minor 128+N)
    /// with `dev`, `uevent`, `device` and `subsystem` links, and `sys/class/drm/<name>`.
    pub fn drm(&self, pci: &str, name: &str, majmin: (u32, u32)) -> &Self {
        let ddir = self.dev_dir(pci);
        let dir = ddir.join("drm").join(name);
        self.mkdir(&dir);
        self.put(&dir.join("dev"), majmin_str(majmin));
        self.put(
            &dir.join("uevent"),
            format!("MAJOR={}\nMINOR={}\nDEVNAME=dri/{name}\nDEVTYPE=drm_minor\n", majmin.0, majmin.1),
        );
        self.link_to(&dir.join("device"), &ddir);
        self.link_to(&dir.join("subsystem"), Path::new("sys/class/drm"));
        self.link_to(&Path::new("sys/class/drm").join(name), &dir);
        self
    }

    /// A host process `proc/<pid>/` with `comm` and `fd/0..2` -> `/dev/null`, then `fd/3...` ->
    /// each of `files` (absolute paths, as the kernel's fd links read).
    pub fn process(&self, pid: u32, comm: &str, files: &[&str]) -> &Self {
        let dir = PathBuf::from(format!("proc/{pid}"));
        self.mkdir(&dir.join("fd"));
        self.put(&dir.join("comm"), format!("{comm}\n"));
        for (fd, target) in ["/dev/null", "/dev/null", "/dev/null"].iter().chain(files).enumerate() {
            make_symlink(Path::new(target), &self.root().join(&dir).join("fd").join(fd.to_string()));
        }
        self
    }

    // ---- IOMMU -----------------------------------------------------------------------------

    /// An IOMMU unit: `sys/devices/virtual/iommu/<name>/` (Intel `dmarN` with `intel-iommu/`,
    /// AMD `ivhdN` with `amd-iommu/`) and `sys/class/iommu/<name>` linking to it.
    pub fn iommu_unit(&self, name: &str) -> &Self {
        let dir = Path::new("sys/devices/virtual/iommu").join(name);
        self.mkdir(&dir.join("devices"));
        if name.starts_with("ivhd") {
            self.mkdir(&dir.join("amd-iommu"));
            self.put(&dir.join("amd-iommu/cap"), "0x00203040\n");
            self.put(&dir.join("amd-iommu/features"), "0x58f77ef22294a5a\n");
        } else {
            self.mkdir(&dir.join("intel-iommu"));
            self.put(&dir.join("intel-iommu/version"), "1:0\n");
            self.put(&dir.join("intel-iommu/cap"), "8d2078c106f0466\n");
            self.put(&dir.join("intel-iommu/ecap"), "f020df\n");
            self.put(&dir.join("intel-iommu/address"), "c5ffc000\n");
        }
        self.link_to(&dir.join("subsystem"), Path::new("sys/class/iommu"));
        self.link_to(&Path::new("sys/class/iommu").join(name), &dir);
        self
    }

    /// Empty `sys/kernel/iommu_groups/` and `sys/class/iommu/`, as a kernel built with IOMMU
    /// support shows them when no IOMMU is enabled.
    pub fn iommu_empty_dirs(&self) -> &Self {
        self.mkdir(Path::new(GROUPS));
        self.mkdir(Path::new("sys/class/iommu"));
        self
    }

    // ---- procfs ----------------------------------------------------------------------------

    /// `proc/cpuinfo` for one socket; see [`cpuinfo_sockets`](Self::cpuinfo_sockets).
    pub fn cpuinfo(&self, cpus: usize, vendor: &str, model_name: &str, flags: &[&str]) -> &Self {
        self.cpuinfo_sockets(1, cpus, vendor, model_name, flags)
    }

    /// `proc/cpuinfo` exactly as x86 `show_cpuinfo` prints it, CPUs split evenly over sockets
    /// (two threads per core when `ht` is among the flags). Family/model/stepping are plausible
    /// values for the vendor (`AuthenticAMD`: EPYC Rome, anything else: Cascade Lake).
    pub fn cpuinfo_sockets(
        &self,
        sockets: usize,
        cpus: usize,
        vendor: &str,
        model_name: &str,
        flags: &[&str],
    ) -> &Self {
        let amd = vendor == "AuthenticAMD";
        let sockets = sockets.max(1);
        let per_socket = (cpus / sockets).max(1);
        let threads = if flags.contains(&"ht") { 2 } else { 1 };
        let cores = (per_socket / threads).max(1);
        let (family, model, stepping, microcode, mhz, cache, level, bogo, phys, tlb, pm, bugs) = if amd {
            (
                23,
                49,
                0,
                "0x830107a",
                "3000.000",
                512,
                16,
                "5988.90",
                43,
                Some(3072),
                " ts ttp tm hwpstate cpb eff_freq_ro [13] [14]",
                "sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass retbleed smt_rsb srso",
            )
        } else {
            (
                6,
                85,
                7,
                "0x5003604",
                "2500.000",
                28160,
                22,
                "5000.00",
                46,
                None,
                "",
                "spectre_v1 spectre_v2 spec_store_bypass swapgs taa itlb_multihit mmio_stale_data retbleed eibrs_pbrsb gds bhi",
            )
        };
        let mut s = String::new();
        for cpu in 0..cpus {
            let socket = (cpu / per_socket).min(sockets - 1);
            let core = (cpu % per_socket) % cores;
            s.push_str(&format!(
                "processor\t: {cpu}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {model_name}\n"
            ));
            s.push_str(&format!(
                "stepping\t: {stepping}\nmicrocode\t: {microcode}\ncpu MHz\t\t: {mhz}\ncache size\t: {cache} KB\n"
            ));
            s.push_str(&format!(
                "physical id\t: {socket}\nsiblings\t: {per_socket}\ncore id\t\t: {core}\ncpu cores\t: {cores}\napicid\t\t: {cpu}\ninitial apicid\t: {cpu}\n"
            ));
            s.push_str(&format!("fpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: {level}\nwp\t\t: yes\n"));
            s.push_str("flags\t\t:");
            for f in flags {
                s.push(' ');
                s.push_str(f);
            }
            if flags.contains(&"vmx") {
                s.push_str("\nvmx flags\t: vnmi preemption_timer posted_intr invvpid ept_x_only ept_ad ept_1gb flexpriority apicv tsc_offset vtpr mtf vapic ept vpid unrestricted_guest vapic_reg vid ple shadow_vmcs pml ept_mode_based_exec tsc_scaling");
            }
            s.push_str(&format!("\nbugs\t\t: {bugs}\nbogomips\t: {bogo}\n"));
            if let Some(t) = tlb {
                s.push_str(&format!("TLB size\t: {t} 4K pages\n"));
            }
            s.push_str(&format!(
                "clflush size\t: 64\ncache_alignment\t: 64\naddress sizes\t: {phys} bits physical, 48 bits virtual\npower management:{pm}\n\n"
            ));
        }
        self.file("proc/cpuinfo", s)
    }

    /// `proc/cmdline` (a trailing newline is added).
    pub fn cmdline(&self, s: &str) -> &Self {
        self.file("proc/cmdline", format!("{s}\n"))
    }

    /// `proc/modules` in the kernel's format plus `sys/module/<name>/` (`initstate`, `refcnt`,
    /// `holders/`, and a few real parameters: `kvm_intel`/`kvm_amd` `nested`, ...). Well-known
    /// dependencies among the listed modules show up in the used-by column and `holders/`.
    /// Replaces an earlier `proc/modules`.
    pub fn modules(&self, names: &[&str]) -> &Self {
        const DEPS: &[(&str, &[&str])] = &[
            ("kvm_intel", &["kvm"]),
            ("kvm_amd", &["kvm", "ccp"]),
            ("kvm", &["irqbypass"]),
            ("vfio_pci", &["vfio_pci_core", "vfio"]),
            ("vfio_pci_core", &["vfio", "irqbypass"]),
            ("vfio_iommu_type1", &["vfio"]),
            ("nvme", &["nvme_core"]),
            ("ahci", &["libahci"]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("qat_c62x", &["intel_qat"]),
            ("qat_c62xvf", &["intel_qat"]),
            ("snd_hda_intel", &["snd_hda_codec", "snd"]),
        ];
        fn size(name: &str) -> u64 {
            match name {
                "kvm" => 1_142_784,
                "kvm_intel" => 397_312,
                "kvm_amd" => 172_032,
                "irqbypass" => 16_384,
                "vfio" => 45_056,
                "vfio_pci" => 16_384,
                "vfio_pci_core" => 94_208,
                "vfio_iommu_type1" => 45_056,
                "nvme" => 57_344,
                "nvme_core" => 204_800,
                "i40e" => 569_344,
                "ice" => 1_101_824,
                "iavf" => 225_280,
                "mlx5_core" => 2_211_840,
                "nouveau" => 2_899_968,
                "tg3" => 225_280,
                "ahci" => 49_152,
                "libahci" => 53_248,
                _ => 32_768 + (name.len() as u64 % 7) * 4096,
            }
        }
        let mut text = String::new();
        for &m in names {
            let users: Vec<&str> =
                names.iter().copied().filter(|u| DEPS.iter().any(|(n, d)| n == u && d.contains(&m))).collect();
            let used_by =
                if users.is_empty() { "-".to_owned() } else { users.iter().map(|u| format!("{u},")).collect() };
            text.push_str(&format!("{m} {} {} {used_by} Live 0x0000000000000000\n", size(m), users.len()));
            let dir = PathBuf::from("sys/module").join(m);
            self.mkdir(&dir.join("holders"));
            self.put(&dir.join("initstate"), "live\n");
            self.put(&dir.join("refcnt"), format!("{}\n", users.len()));
            for u in &users {
                self.link_to(&dir.join("holders").join(u), &PathBuf::from("sys/module").join(u));
            }
            let params: &[(&str, &str)] = match m {
                "kvm_intel" => &[("nested", "Y\n"), ("ept", "Y\n"), ("enable_apicv", "Y\n")],
                // kvm_amd's `nested` is an int parameter: the kernel shows 1, not Y.
                "kvm_amd" => &[("nested", "1\n"), ("npt", "1\n"), ("avic", "0\n")],
                "vfio" => &[("enable_unsafe_noiommu_mode", "N\n")],
                "vfio_iommu_type1" => &[("allow_unsafe_interrupts", "N\n"), ("dma_entry_limit", "65535\n")],
                "vfio_pci" => &[("ids", "\n"), ("disable_vga", "N\n")],
                _ => &[],
            };
            if !params.is_empty() {
                self.mkdir(&dir.join("parameters"));
                for (p, v) in params {
                    self.put(&dir.join("parameters").join(p), v);
                }
            }
        }
        self.file("proc/modules", text)
    }

    /// `proc/sys/kernel/osrelease` (newline added).
    pub fn osrelease(&self, s: &str) -> &Self {
        self.file("proc/sys/kernel/osrelease", format!("{s}\n"))
    }

    /// `lib/modules/<release>/modules.alias`, verbatim.
    pub fn modules_alias(&self, release: &str, lines: &str) -> &Self {
        self.file(&format!("lib/modules/{release}/modules.alias"), lines)
    }

    /// `proc/mounts` verbatim, and a matching `proc/1/mountinfo`: mount ids from 22, parent ids
    /// by longest mount-point prefix, `major:minor` of `/dev/<name>` and `/dev/mapper/<dm name>`
    /// sources from the block devices already in the tree, `0:N` (N from 21) otherwise, VFS
    /// options (`rw`, `nosuid`, `relatime`, ...) before the separator and the rest after it.
    pub fn mounts(&self, lines: &str) -> &Self {
        const VFS_OPTS: &[&str] = &["nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "strictatime"];
        self.file("proc/mounts", lines);
        let mut info = String::new();
        let mut seen: Vec<(String, u32)> = Vec::new();
        let mut next_anon = 21;
        for (i, line) in lines.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (src, target, fstype, opts) = (
                f[0],
                f.get(1).copied().unwrap_or("/"),
                f.get(2).copied().unwrap_or("none"),
                f.get(3).copied().unwrap_or("rw"),
            );
            let id = 22 + i as u32;
            let mm = self.source_majmin(src).unwrap_or_else(|| {
                next_anon += 1;
                (0, next_anon - 1)
            });
            let parent = seen
                .iter()
                .filter(|(m, _)| {
                    target != m.as_str()
                        && (m == "/" || target.strip_prefix(m.as_str()).is_some_and(|r| r.starts_with('/')))
                })
                .max_by_key(|(m, _)| m.len())
                .map(|(_, id)| *id)
                .unwrap_or(1);
            let mut rwro = "rw";
            let mut mnt = Vec::new();
            let mut sup = Vec::new();
            for o in opts.split(',') {
                if o == "rw" || o == "ro" {
                    rwro = o;
                } else if VFS_OPTS.contains(&o) {
                    mnt.push(o);
                } else {
                    sup.push(o);
                }
            }
            let mnt_opts = std::iter::once(rwro).chain(mnt).collect::<Vec<_>>().join(",");
            let sup_opts = std::iter::once(rwro).chain(sup).collect::<Vec<_>>().join(",");
            info.push_str(&format!(
                "{id} {parent} {}:{} / {target} {mnt_opts} shared:{} - {fstype} {src} {sup_opts}\n",
                mm.0,
                mm.1,
                i + 1
            ));
            seen.push((target.to_owned(), id));
        }
        self.mountinfo(&info)
    }

    fn source_majmin(&self, src: &str) -> Option<(u32, u32)> {
        let name = src.strip_prefix("/dev/")?;
        let st = self.st.borrow();
        let name = match name.strip_prefix("mapper/") {
            Some(dm) => st.dm_names.get(dm)?.clone(),
            None => name.to_owned(),
        };
        if let Some(b) = st.blocks.get(&name) {
            return Some(b.majmin);
        }
        let dev = fs::read_to_string(self.root().join("sys/class/block").join(&name).join("dev")).ok()?;
        let (a, b) = dev.trim().split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// `proc/1/mountinfo` only, verbatim.
    pub fn mountinfo(&self, lines: &str) -> &Self {
        self.file("proc/1/mountinfo", lines)
    }

    /// `proc/swaps`: the kernel's header line followed by `lines` (verbatim; a header already in
    /// `lines` is not repeated).
    pub fn swaps(&self, lines: &str) -> &Self {
        if lines.starts_with("Filename") {
            self.file("proc/swaps", lines)
        } else {
            self.file("proc/swaps", format!("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n{lines}"))
        }
    }

    /// `proc/net/route` as `fib_route_seq_show` prints it (each line padded to 127 columns):
    /// for interface `i`, a default route via 192.168.(i+1).1 (metric 100+i), then the
    /// 192.168.(i+1).0/24 link routes.
    pub fn routes(&self, ipv4_default_ifaces: &[&str]) -> &Self {
        fn pad(s: String) -> String {
            format!("{s:<127}\n")
        }
        let mut text =
            pad("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT".to_owned());
        for (i, ifc) in ipv4_default_ifaces.iter().enumerate() {
            let i = i as u32;
            // Addresses print as the in-memory (network order) u32 read little-endian.
            let gw = u32::from_le_bytes([192, 168, (i + 1) as u8, 1]);
            text.push_str(&pad(format!(
                "{ifc}\t{:08X}\t{gw:08X}\t{:04X}\t{}\t{}\t{}\t{:08X}\t{}\t{}\t{}",
                0,
                0x0003,
                0,
                0,
                100 + i,
                0,
                0,
                0,
                0
            )));
        }
        for (i, ifc) in ipv4_default_ifaces.iter().enumerate() {
            let i = i as u32;
            let net = u32::from_le_bytes([192, 168, (i + 1) as u8, 0]);
            let mask = u32::from_le_bytes([255, 255, 255, 0]);
            text.push_str(&pad(format!(
                "{ifc}\t{net:08X}\t{:08X}\t{:04X}\t{}\t{}\t{}\t{mask:08X}\t{}\t{}\t{}",
                0,
                0x0001,
                0,
                0,
                100 + i,
                0,
                0,
                0
            )));
        }
        self.file("proc/net/route", text)
    }

    /// `dev/kvm` as a plain empty file (an unprivileged builder cannot `mknod`; it is not a
    /// character device).
    pub fn dev_kvm(&self) -> &Self {
        self.file("dev/kvm", "")
    }

    /// `dev/vfio/vfio` as a plain empty file (not a character device).
    pub fn dev_vfio(&self) -> &Self {
        self.file("dev/vfio/vfio", "")
    }

    /// `dev/vfio/<group>` as a plain empty file: the node the kernel creates when a group's
    /// devices are bound to vfio-pci.
    pub fn dev_vfio_group(&self, group: u32) -> &Self {
        self.file(&format!("dev/vfio/{group}"), "")
    }

    /// Huge pages of one size: the global pool under `sys/kernel/mm/hugepages/hugepages-<size>kB`
    /// and per node `(node, total, free)` under `sys/devices/system/node/node<N>/hugepages/`.
    pub fn hugepages(&self, size_kb: u64, total: u64, free: u64, per_node: &[(u32, u64, u64)]) -> &Self {
        let g = PathBuf::from(format!("sys/kernel/mm/hugepages/hugepages-{size_kb}kB"));
        self.mkdir(&g);
        for (f, v) in [
            ("nr_hugepages", total),
            ("nr_hugepages_mempolicy", total),
            ("free_hugepages", free),
            ("resv_hugepages", 0),
            ("surplus_hugepages", 0),
            ("nr_overcommit_hugepages", 0),
        ] {
            self.put(&g.join(f), format!("{v}\n"));
        }
        for (node, t, fr) in per_node {
            let d = PathBuf::from(format!("sys/devices/system/node/node{node}/hugepages/hugepages-{size_kb}kB"));
            self.mkdir(&d);
            self.put(&d.join("nr_hugepages"), format!("{t}\n"));
            self.put(&d.join("free_hugepages"), format!("{fr}\n"));
            self.put(&d.join("surplus_hugepages"), "0\n");
        }
        self.st.borrow_mut().hugepages.insert(size_kb, (total, free));
        self
    }

    /// NUMA nodes `sys/devices/system/node/node0..n-1/` and `online`/`possible`/`has_memory`/
    /// `has_cpu` = `0-(n-1)` (`0` for one node).
    pub fn numa_nodes(&self, n: u32) -> &Self {
        let base = Path::new("sys/devices/system/node");
        for i in 0..n {
            let d = base.join(format!("node{i}"));
            self.mkdir(&d);
            let (cpulist, _) = node_cpus(i as i32);
            self.put(&d.join("cpulist"), cpulist);
        }
        self.mkdir(base);
        let range = if n <= 1 { "0\n".to_owned() } else { format!("0-{}\n", n - 1) };
        for f in ["online", "possible", "has_memory", "has_normal_memory", "has_cpu"] {
            self.put(&base.join(f), &range);
        }
        self
    }

    /// `proc/meminfo` as `meminfo_proc_show` prints it; `HugePages_*` come from an earlier
    /// [`hugepages`](Self::hugepages) call for `hugepagesize_kb`, `Hugetlb` sums all sizes.
    pub fn meminfo(&self, total_kb: u64, hugepagesize_kb: u64) -> &Self {
        let (hp_total, hp_free, hugetlb) = {
            let st = self.st.borrow();
            let (t, f) = st.hugepages.get(&hugepagesize_kb).copied().unwrap_or((0, 0));
            (t, f, st.hugepages.iter().map(|(sz, (t, _))| sz * t).sum::<u64>())
        };
        let avail_base = total_kb.saturating_sub(hugetlb);
        let free = avail_base / 2;
        let kb: Vec<(&str, u64)> = vec![
            ("MemTotal:       ", total_kb),
            ("MemFree:        ", free),
            ("MemAvailable:   ", avail_base * 7 / 10),
            ("Buffers:        ", 4_300),
            ("Cached:         ", avail_base / 5),
            ("SwapCached:     ", 0),
            ("Active:         ", avail_base / 10),
            ("Inactive:       ", avail_base / 8),
            ("Active(anon):   ", avail_base / 40),
            ("Inactive(anon): ", avail_base / 30),
            ("Active(file):   ", avail_base / 13),
            ("Inactive(file): ", avail_base / 11),
            ("Unevictable:    ", 0),
            ("Mlocked:        ", 0),
            ("SwapTotal:      ", 0),
            ("SwapFree:       ", 0),
            ("Dirty:          ", 120),
            ("Writeback:      ", 0),
            ("AnonPages:      ", avail_base / 20),
            ("Mapped:         ", avail_base / 60),
            ("Shmem:          ", 23_112),
            ("KReclaimable:   ", 512_004),
            ("Slab:           ", 1_024_360),
            ("SReclaimable:   ", 512_004),
            ("SUnreclaim:     ", 512_356),
            ("KernelStack:    ", 30_240),
            ("PageTables:     ", 40_964),
            ("NFS_Unstable:   ", 0),
            ("Bounce:         ", 0),
            ("WritebackTmp:   ", 0),
            ("CommitLimit:    ", avail_base / 2),
            ("Committed_AS:   ", avail_base / 25),
            ("VmallocTotal:   ", 34_359_738_367),
            ("VmallocUsed:    ", 210_880),
            ("VmallocChunk:   ", 0),
            ("Percpu:         ", 98_304),
            ("HardwareCorrupted: ", 0),
            ("AnonHugePages:  ", 1_234_944),
            ("ShmemHugePages: ", 0),
            ("ShmemPmdMapped: ", 0),
            ("FileHugePages:  ", 0),
            ("FilePmdMapped:  ", 0),
        ];
        let mut s = String::new();
        for (label, v) in kb {
            s.push_str(&format!("{label}{v:8} kB\n"));
        }
        s.push_str(&format!("HugePages_Total:   {hp_total:5}\nHugePages_Free:    {hp_free:5}\nHugePages_Rsvd:    {:5}\nHugePages_Surp:    {:5}\n", 0, 0));
        s.push_str(&format!("Hugepagesize:   {hugepagesize_kb:8} kB\n"));
        s.push_str(&format!("Hugetlb:        {hugetlb:8} kB\n"));
        s.push_str(&format!("DirectMap4k:    {:8} kB\n", 1_047_348));
        s.push_str(&format!("DirectMap2M:    {:8} kB\n", 31_168_512));
        s.push_str(&format!("DirectMap1G:    {:8} kB\n", total_kb.saturating_sub(32_215_860)));
        self.file("proc/meminfo", s)
    }

    // ---- virtio ----------------------------------------------------------------------------

    /// A virtio device `.../<pci>/<name>/` (`virtio0`) on the virtio bus, bound to `driver`:
    /// `sys/bus/virtio/devices/<name>` and `sys/bus/virtio/drivers/<driver>/<name>` links.
    pub fn virtio(&self, pci: &str, name: &str, virtio_device_id: u16, driver: &str) -> &Self {
        let dir = self.dev_dir(pci).join(name);
        self.mkdir(&dir);
        self.put(&dir.join("vendor"), "0x1af4\n");
        self.put(&dir.join("device"), format!("0x{virtio_device_id:04x}\n"));
        self.put(&dir.join("status"), "0x0000000f\n");
        self.put(&dir.join("modalias"), format!("virtio:d{virtio_device_id:08X}v00001AF4\n"));
        let ddir = Path::new("sys/bus/virtio/drivers").join(driver);
        self.mkdir(&ddir);
        self.link_to(&dir.join("driver"), &ddir);
        self.link_to(&ddir.join(name), &dir);
        self.link_to(&dir.join("subsystem"), Path::new("sys/bus/virtio"));
        self.link_to(&Path::new("sys/bus/virtio/devices").join(name), &dir);
        self
    }
}
