//! PCI discovery: every function under `sys/bus/pci/devices`, read into [`PciInventory`].
//!
//! Reading is split in two. [`read_device`] touches sysfs for one function and returns what the
//! files said, unparsed links included ([`RawDevice`]). [`assemble`] is pure: it ties VFs to
//! their PFs, checks every link against the rest of the tree, builds the IOMMU groups and fills
//! in the pci.ids names. A missing or garbage file becomes a warning on that device and leaves
//! the field empty; it never stops the scan.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::root::{HostError, HostRoot};
use super::usage;
use crate::model::{IommuGroup, PciAddress, PciDevice, PciInventory};
use crate::names;

/// Where the kernel lists every PCI function.
pub const DEVICES_DIR: &str = "sys/bus/pci/devices";
/// Where the kernel lists IOMMU groups.
pub const GROUPS_DIR: &str = "sys/kernel/iommu_groups";

/// One function as read from sysfs, links not yet checked against the rest of the tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawDevice {
    pub device: PciDevice,
    /// Target names of the `iommu_group` link (the group number as text).
    pub group_link: Option<String>,
    /// Target name of the `physfn` link.
    pub physfn_link: Option<String>,
    /// `virtfnN` links: (N, target name).
    pub virtfn_links: Vec<(u32, String)>,
}

/// What the kernel says about one IOMMU group, read from `sys/kernel/iommu_groups/N`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawGroup {
    pub number: u32,
    pub group_type: Option<String>,
    pub no_iommu: bool,
}

/// Discovers every PCI function under the host root, with IOMMU groups, names and host usage.
///
/// Fails only when `sys/bus/pci/devices` itself cannot be read: then the host root is wrong.
pub fn discover(root: &HostRoot) -> Result<PciInventory, HostError> {
    let devices_dir = root.join(DEVICES_DIR);
    let entries = fs::read_dir(&devices_dir).map_err(|e| HostError::io("read directory", &devices_dir, e))?;
    let mut warnings = Vec::new();
    let mut addresses = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io("read directory", &devices_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match name.parse::<PciAddress>() {
            Ok(a) => addresses.push(a),
            Err(e) => warnings.push(format!("{}: skipped entry: {e}", devices_dir.display())),
        }
    }
    addresses.sort();

    let raw = read_devices(&devices_dir, &addresses);
    let (groups, group_warnings) = read_groups(root);
    warnings.extend(group_warnings);
    let mut inventory = assemble(raw, groups);
    inventory.warnings.splice(0..0, warnings);
    usage::attach(root, &mut inventory);
    Ok(inventory)
}

/// Reads every device, spread over the machine's cores (sysfs reads are syscall-bound).
fn read_devices(devices_dir: &Path, addresses: &[PciAddress]) -> Vec<RawDevice> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads <= 1 || addresses.len() < 64 {
        return addresses.iter().map(|a| read_device(&devices_dir.join(a.to_string()), *a)).collect();
    }
    let chunk = addresses.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = addresses
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter().map(|a| read_device(&devices_dir.join(a.to_string()), *a)).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(addresses.len());
        for (h, part) in handles.into_iter().zip(addresses.chunks(chunk)) {
            match h.join() {
                Ok(v) => all.extend(v),
                // A panic in a reader thread is a bug; keep the scan going with empty records.
                Err(_) => all.extend(part.iter().map(|a| RawDevice {
                    device: PciDevice {
                        address: *a,
                        warnings: vec!["internal error while reading this device".into()],
                        ..Default::default()
                    },
                    ..Default::default()
                })),
            }
        }
        all
    })
}

/// Reads one function's directory.
pub fn read_device(dir: &Path, address: PciAddress) -> RawDevice {
    let mut raw = RawDevice::default();
    raw.device.address = address;
    let mut r = match DeviceReader::open(dir) {
        Ok(r) => r,
        Err(e) => {
            raw.device.warnings.push(e.to_string());
            return raw;
        }
    };
    let d = &mut raw.device;

    // One directory read tells which optional files exist, so absent ones cost no failed opens.
    let listing = match r.list() {
        Ok(l) => l,
        Err(e) => {
            d.warnings.push(e.to_string());
            return raw;
        }
    };
    let has = |name: &str| listing.contains(name);

    d.vendor_id = r.hex("vendor", 0xffff).map(|v| v as u16);
    d.device_id = r.hex("device", 0xffff).map(|v| v as u16);
    d.subsystem_vendor_id =
        if has("subsystem_vendor") { r.hex("subsystem_vendor", 0xffff).map(|v| v as u16) } else { None };
    d.subsystem_device_id =
        if has("subsystem_device") { r.hex("subsystem_device", 0xffff).map(|v| v as u16) } else { None };
    d.class_id = r.hex("class", 0xff_ffff);
    d.revision = if has("revision") { r.hex("revision", 0xff).map(|v| v as u8) } else { None };
    if has("driver") {
        d.driver = r.link_name("driver", true);
    }
    if has("driver_override") {
        d.driver_override = r.text("driver_override").and_then(parse_driver_override);
    }
    if has("numa_node") {
        d.numa_node = r.numa("numa_node");
    }
    if has("iommu_group") {
        raw.group_link = r.link_name("iommu_group", false);
    }
    if has("sriov_totalvfs") {
        d.sriov_total_vfs = r.decimal("sriov_totalvfs");
        d.sriov_num_vfs = r.decimal("sriov_numvfs");
    }
    if has("physfn") {
        raw.physfn_link = r.link_name("physfn", false);
    }
    if has("boot_vga") {
        d.boot_vga = r.decimal("boot_vga") == Some(1);
    }
    for name in &listing {
        if let Some(n) = name.strip_prefix("virtfn") {
            match n.parse::<u32>() {
                Ok(n) => {
                    if let Some(t) = r.link_name(name, false) {
                        raw.virtfn_links.push((n, t));
                    }
                }
                Err(_) => r.warnings.push(format!("{}: unexpected entry {name:?}", dir.display())),
            }
        }
    }
    raw.virtfn_links.sort();
    d.warnings.append(&mut r.warnings);
    raw
}

/// Pure: an attribute file's bytes as text, trailing white space removed (sysfs ends values
/// with a newline).
pub fn attr_text(bytes: Vec<u8>) -> Result<String, String> {
    let mut s = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    s.truncate(s.trim_end().len());
    Ok(s)
}

/// Pure: a `0x`-prefixed hex attribute (`vendor`, `device`, `class`, `revision`, ...) no larger
/// than `max`.
pub fn parse_hex_attr(s: &str, max: u32) -> Result<u32, String> {
    s.strip_prefix("0x")
        .filter(|h| !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .filter(|v| *v <= max)
        .ok_or_else(|| format!("{s:?} is not a hex value like 0x{max:x}"))
}

/// Pure: a decimal attribute (`sriov_totalvfs`, `sriov_numvfs`, `boot_vga`).
pub fn parse_decimal_attr(s: &str) -> Result<u32, String> {
    Some(s)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| format!("{s:?} is not a non-negative number"))
}

/// Pure: `numa_node`: `Ok(None)` for -1 (no affinity).
pub fn parse_numa_node(s: &str) -> Result<Option<u32>, String> {
    match s.parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) => u32::try_from(n).map(Some).map_err(|_| format!("{s:?} is not a NUMA node (-1 or a node number)")),
        Err(_) => Err(format!("{s:?} is not a NUMA node (-1 or a node number)")),
    }
}

/// Pure: `driver_override` as read: `None` when empty or `(null)` (none set).
pub fn parse_driver_override(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty() && s != "(null)")
}

/// Reads files of one device directory through one directory descriptor (`openat`,
/// `readlinkat`), so the long sysfs path is resolved once per device, and each attribute is one
/// `read`: sysfs hands an attribute over whole. Every failure becomes a warning.
struct DeviceReader<'a> {
    dir: &'a Path,
    fd: OwnedFd,
    warnings: Vec<String>,
}

impl<'a> DeviceReader<'a> {
    fn open(dir: &'a Path) -> Result<Self, HostError> {
        let fd = nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| HostError::io("open directory", dir, e.into()))?;
        Ok(DeviceReader { dir, fd, warnings: Vec::new() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn warn(&mut self, name: &str, problem: String) {
        let path = self.path(name).display().to_string();
        self.warnings.push(format!("{path}: {problem}"));
    }

    fn list(&mut self) -> Result<HashSet<String>, HostError> {
        let rd = fs::read_dir(self.dir).map_err(|e| HostError::io("read directory", self.dir, e))?;
        let mut names = HashSet::with_capacity(48);
        for e in rd {
            let e = e.map_err(|e| HostError::io("read directory", self.dir, e))?;
            names.insert(e.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// A small attribute file, trailing white space removed.
    fn text(&mut self, name: &str) -> Option<String> {
        match read_small(&self.fd, name) {
            Ok(bytes) => match attr_text(bytes) {
                Ok(s) => Some(s),
                Err(problem) => {
                    self.warn(name, problem);
                    None
                }
            },
            Err(e) => {
                self.warnings.push(HostError::io("read", self.path(name), e.into()).to_string());
                None
            }
        }
    }

    /// A `0x`-prefixed hex attribute (`vendor`, `class`, ...) no larger than `max`.
    fn hex(&mut self, name: &str, max: u32) -> Option<u32> {
        let s = self.text(name)?;
        self.parsed(name, parse_hex_attr(&s, max))
    }

    fn decimal(&mut self, name: &str) -> Option<u32> {
        let s = self.text(name)?;
        self.parsed(name, parse_decimal_attr(&s))
    }

    /// `numa_node`: -1 means no affinity.
    fn numa(&mut self, name: &str) -> Option<u32> {
        let s = self.text(name)?;
        self.parsed(name, parse_numa_node(&s)).flatten()
    }

    /// The value, or `None` with the problem as a warning on the file.
    fn parsed<T>(&mut self, name: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|problem| self.warn(name, problem)).ok()
    }

    /// The last component of a link's target. With `must_resolve`, a dangling link is a warning
    /// and yields `None` (the `driver` link: its target directory is the driver).
    fn link_name(&mut self, name: &str, must_resolve: bool) -> Option<String> {
        let target = match nix::fcntl::readlinkat(&self.fd, name) {
            Ok(t) => PathBuf::from(t),
            Err(e) => {
                self.warnings.push(HostError::io("readlink", self.path(name), e.into()).to_string());
                return None;
            }
        };
        if must_resolve && nix::sys::stat::fstatat(&self.fd, name, AtFlags::empty()).is_err() {
            self.warn(name, format!("dangling link to {}", target.display()));
            return None;
        }
        match target.file_name().and_then(|n| n.to_str()) {
            Some(n) => Some(n.to_owned()),
            None => {
                self.warn(name, format!("link target {} has no name", target.display()));
                None
            }
        }
    }
}

/// Reads a small file relative to a directory descriptor: one `read` when the content fits in
/// the buffer (a short read of a regular file or a sysfs attribute is the whole file).
fn read_small(dir: &OwnedFd, name: &str) -> nix::Result<Vec<u8>> {
    let fd = nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    loop {
        let n = nix::unistd::read(&fd, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// Reads `sys/kernel/iommu_groups`: each group's number, `type` and whether it is a no-IOMMU
/// group. Returns the groups and warnings; an absent directory means the IOMMU is off.
pub fn read_groups(root: &HostRoot) -> (Vec<RawGroup>, Vec<String>) {
    let dir = root.join(GROUPS_DIR);
    let mut warnings = Vec::new();
    let names = match super::root::list_dir(&dir) {
        Ok(n) => n,
        Err(e) => return (Vec::new(), vec![e.to_string()]),
    };
    let mut groups = Vec::with_capacity(names.len());
    let mut path = dir.clone();
    for name in names {
        let Ok(number) = name.parse::<u32>() else {
            warnings.push(format!("{}: unexpected entry {name:?}", dir.display()));
            continue;
        };
        path.push(&name);
        path.push("type");
        let group_type = match super::root::read_attr(&path) {
            Ok(t) => Some(t),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        };
        path.set_file_name("name");
        let no_iommu = matches!(super::root::read_attr(&path), Ok(n) if n == "vfio-noiommu");
        path.pop();
        path.pop();
        groups.push(RawGroup { number, group_type, no_iommu });
    }
    groups.sort_by_key(|g| g.number);
    (groups, warnings)
}

/// Pure: ties raw devices together into the inventory.
///
/// - `iommu_group` links must name a group the kernel lists; members are gathered per group.
/// - `physfn` must name a device in the tree, and that PF's `virtfnN` gives the VF its index.
/// - `virtfnN` links on a PF must name devices in the tree.
/// - Names come from the embedded pci.ids database.
pub fn assemble(raw: Vec<RawDevice>, groups: Vec<RawGroup>) -> PciInventory {
    let known: HashSet<PciAddress> = raw.iter().map(|r| r.device.address).collect();
    let listed: HashMap<u32, &RawGroup> = groups.iter().map(|g| (g.number, g)).collect();

    // VF index as the PF sees it: vf address -> (pf, N).
    let mut vf_of: HashMap<PciAddress, (PciAddress, u32)> = HashMap::new();
    let mut devices: Vec<PciDevice> = Vec::with_capacity(raw.len());
    let mut physfn_links: Vec<Option<String>> = Vec::with_capacity(raw.len());
    for r in raw {
        let mut d = r.device;
        for (n, target) in &r.virtfn_links {
            match target.parse::<PciAddress>() {
                Ok(vf) if known.contains(&vf) => {
                    d.vfs.push(vf);
                    vf_of.insert(vf, (d.address, *n));
                }
                Ok(vf) => d.warnings.push(format!("virtfn{n} points to {vf}, which is not a PCI device on this host")),
                Err(e) => d.warnings.push(format!("virtfn{n}: {e}")),
            }
        }
        if let Some(g) = &r.group_link {
            match g.parse::<u32>() {
                Ok(n) if listed.contains_key(&n) => d.iommu_group = Some(n),
                Ok(n) => d.warnings.push(format!("iommu_group points to group {n}, which {GROUPS_DIR} does not list")),
                Err(_) => d.warnings.push(format!("iommu_group points to {g:?}, which is not a group number")),
            }
        }
        names::fill(&mut d);
        physfn_links.push(r.physfn_link);
        devices.push(d);
    }
    for (d, link) in devices.iter_mut().zip(physfn_links) {
        let Some(link) = link else { continue };
        match link.parse::<PciAddress>() {
            Ok(pf) if known.contains(&pf) => {
                d.physfn = Some(pf);
                match vf_of.get(&d.address) {
                    Some((p, n)) if *p == pf => d.vf_index = Some(*n),
                    _ => d.warnings.push(format!("physfn is {pf}, but {pf} has no virtfn link to this device")),
                }
            }
            Ok(pf) => d.warnings.push(format!("physfn points to {pf}, which is not a PCI device on this host")),
            Err(e) => d.warnings.push(format!("physfn: {e}")),
        }
    }
    devices.sort_by_key(|d| d.address);
    let groups = build_groups(&devices, &groups);
    PciInventory { devices, groups, warnings: Vec::new() }
}

/// Pure: the IOMMU groups with their members, from the devices' group numbers.
pub fn build_groups(devices: &[PciDevice], groups: &[RawGroup]) -> Vec<IommuGroup> {
    let mut by_number: BTreeMap<u32, IommuGroup> = groups
        .iter()
        .map(|g| {
            let group = IommuGroup {
                number: g.number,
                group_type: g.group_type.clone(),
                no_iommu: g.no_iommu,
                ..Default::default()
            };
            (g.number, group)
        })
        .collect();
    for d in devices {
        let Some(n) = d.iommu_group else { continue };
        if let Some(g) = by_number.get_mut(&n) {
            g.devices.push(d.address);
            if !d.is_bridge() {
                g.endpoints.push(d.address);
            }
        }
    }
    by_number.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_hex_attr("0x10de", 0xffff), Ok(0x10de));
        assert_eq!(parse_hex_attr("0x030200", 0xff_ffff), Ok(0x030200));
        assert!(parse_hex_attr("0x10000", 0xffff).is_err());
        assert!(parse_hex_attr("10de", 0xffff).is_err());
        assert!(parse_hex_attr("0x", 0xffff).is_err());
        assert_eq!(parse_decimal_attr("64"), Ok(64));
        assert_eq!(parse_numa_node("-1"), Ok(None));
        assert_eq!(parse_numa_node("1"), Ok(Some(1)));
        assert!(parse_numa_node("-2").is_err());
        assert!(parse_numa_node("4294967296").is_err());
        assert_eq!(parse_driver_override("(null)".into()), None);
        assert_eq!(parse_driver_override("vfio-pci".into()), Some("vfio-pci".into()));
        assert_eq!(attr_text(b"0x8086\n".to_vec()), Ok("0x8086".into()));
        assert!(attr_text(vec![0xff, b'\n']).is_err());
    }

    /// Found writing the `sysfs` fuzz target (whose check now guards it): `u32::from_str_radix`
    /// and `str::parse` take a leading `+`, so `0x+10de` was vendor 10de and `+8` was 8 VFs; the
    /// kernel never prints a sign.
    #[test]
    fn a_sign_is_not_part_of_an_attribute_value() {
        assert!(parse_hex_attr("0x+10de", 0xffff).is_err());
        assert!(parse_hex_attr("0x-1", 0xffff).is_err());
        assert!(parse_decimal_attr("+8").is_err());
        assert!(parse_decimal_attr("").is_err());
    }
}
