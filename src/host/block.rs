//! The host's disks behind each PCI function: partitions, devices stacked on them, and what is
//! mounted or swapped on any of them. Mounts are matched by major:minor from
//! `proc/1/mountinfo` (which also resolves `/dev/root`) and by device name from `proc/mounts`.
//! Holders (LVM, dm-crypt, md) count mounted or not; so does membership in a btrfs the kernel
//! has open (`sys/fs/btrfs/<fsid>/devices`), whichever member it is mounted through. An NVMe
//! native-multipath head (`devices/virtual/nvme-subsystem/nvme-subsysN/nvmeNnM`) has no PCI
//! ancestor: it is attributed to every function with a controller in its subsystem, and its
//! hidden per-path disks (`nvmeNcKnM` under each controller) are left out.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use super::root::{HostError, HostRoot};
use super::usage::{ClassEntry, class_entries, pci_ancestor};
use crate::model::{BlockDevice, BlockHolder, BtrfsMember, Mount, PciAddress, PciInventory};

/// One mounted file system: its source device and major:minor as the mount tables give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRecord {
    pub majmin: Option<(u32, u32)>,
    /// The device name the source names (`nvme0n1p2` for `/dev/nvme0n1p2`, the dm name for
    /// `/dev/mapper/x`), when it names one.
    pub source: Option<String>,
    pub mount_point: String,
    pub fs_type: String,
}

/// Pure: parses `proc/<pid>/mountinfo`. Lines that do not parse are skipped and reported.
pub fn parse_mountinfo(text: &str) -> (Vec<MountRecord>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = (|| {
            let (left, right) = line.split_once(" - ")?;
            let mut l = left.split(' ');
            let _id = l.next()?;
            let _parent = l.next()?;
            let (maj, min) = l.next()?.split_once(':')?;
            let _root = l.next()?;
            let mount_point = unescape(l.next()?);
            let mut r = right.split(' ');
            let fs_type = r.next()?.to_owned();
            let source = r.next().map(unescape);
            Some(MountRecord {
                majmin: Some((maj.parse().ok()?, min.parse().ok()?)),
                source: source.as_deref().and_then(dev_name),
                mount_point,
                fs_type,
            })
        })();
        match parsed {
            Some(m) => out.push(m),
            None => bad.push(format!("unparsable mountinfo line {line:?}")),
        }
    }
    (out, bad)
}

/// Pure: parses `proc/mounts` (`source mountpoint fstype options 0 0`).
pub fn parse_mounts(text: &str) -> Vec<MountRecord> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let source = unescape(f.next()?);
            let mount_point = unescape(f.next()?);
            let fs_type = f.next()?.to_owned();
            Some(MountRecord { majmin: None, source: dev_name(&source), mount_point, fs_type })
        })
        .collect()
}

/// Pure: the swap devices named in `proc/swaps`.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).filter_map(dev_name).collect()
}

/// `/dev/nvme0n1p2` -> `nvme0n1p2`; `/dev/mapper/rhel-root` -> `mapper/rhel-root`.
fn dev_name(source: &str) -> Option<String> {
    source.strip_prefix("/dev/").filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Mount tables escape space, tab, newline and backslash as three octal digits of one byte;
/// anything larger than `\377` is not such an escape and is kept as it is.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Facts about one block device needed to match it against the mount tables and name its holders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockNode {
    pub name: String,
    pub majmin: Option<(u32, u32)>,
    /// `dm/name` for device-mapper devices (`rhel-root`, mounted as `/dev/mapper/rhel-root`).
    pub dm_name: Option<String>,
    /// `dm/uuid`: `LVM-...` for LVM, `CRYPT-...` for dm-crypt.
    pub dm_uuid: Option<String>,
    /// `md/level` for md arrays (`raid1`).
    pub md_level: Option<String>,
    /// Devices stacked on this one (`holders/`).
    pub holders: Vec<String>,
}

/// Pure: what a holder is, in words (`LVM volume vg0-osd0`, `dm-crypt volume luks-1`, ...).
pub fn holder_kind(name: &str, node: Option<&BlockNode>) -> String {
    let dm_name = node.and_then(|n| n.dm_name.as_deref()).unwrap_or(name);
    match node.and_then(|n| n.dm_uuid.as_deref()) {
        Some(u) if u.starts_with("LVM-") => return format!("LVM volume {dm_name}"),
        Some(u) if u.starts_with("CRYPT-") => return format!("dm-crypt volume {dm_name}"),
        Some(u) if u.starts_with("mpath-") => return format!("dm-multipath device {dm_name}"),
        _ => {}
    }
    if node.is_some_and(|n| n.dm_name.is_some()) {
        return format!("device-mapper device {dm_name}");
    }
    if name.starts_with("md") {
        return match node.and_then(|n| n.md_level.as_deref()) {
            Some(level) => format!("md {level} array"),
            None => "md array".to_owned(),
        };
    }
    if name.starts_with("bcache") {
        return "bcache device".to_owned();
    }
    "stacked block device".to_owned()
}

/// What the host does with one disk: the pure result of [`disk_usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub mounts: Vec<Mount>,
    pub swaps: Vec<String>,
    pub holders: Vec<BlockHolder>,
    pub btrfs: Vec<BtrfsMember>,
    /// Block devices on the way whose sysfs entry could not be read, with the error.
    pub unknown: Vec<String>,
}

/// The block devices of the host and the tables that say what uses them.
#[derive(Debug, Clone, Default)]
pub struct BlockTables {
    pub nodes: HashMap<String, BlockNode>,
    /// Block devices whose `sys/class/block/<name>` could not be read, with the error.
    pub node_errors: HashMap<String, String>,
    pub mounts: Vec<MountRecord>,
    pub swaps: Vec<String>,
    /// btrfs memberships by block device name.
    pub btrfs: HashMap<String, BtrfsMember>,
}

/// Pure: the mounts, swaps, holders and btrfs memberships a disk, its partitions, or anything
/// stacked on them has.
pub fn disk_usage(disk: &str, partitions: &[String], t: &BlockTables) -> DiskUsage {
    let own: Vec<&str> = std::iter::once(disk).chain(partitions.iter().map(String::as_str)).collect();
    let mut usage = DiskUsage::default();
    for d in &own {
        for h in t.nodes.get(*d).map(|n| n.holders.as_slice()).unwrap_or_default() {
            let kind = holder_kind(h, t.nodes.get(h));
            usage.holders.push(BlockHolder { device: (*d).to_owned(), holder: h.clone(), kind });
        }
        if let Some(m) = t.btrfs.get(*d) {
            usage.btrfs.push(m.clone());
        }
    }
    // Walk the disk, its partitions and their holders (transitively, dm on md on partition...).
    let mut todo: Vec<String> = own.iter().map(|s| (*s).to_owned()).collect();
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(node) = t.nodes.get(&n) {
            todo.extend(node.holders.iter().cloned());
        }
        if let Some(e) = t.node_errors.get(&n) {
            usage.unknown.push(e.clone());
        }
    }
    for name in &seen {
        let node = t.nodes.get(name);
        let aliases: Vec<String> = std::iter::once(name.clone())
            .chain(node.and_then(|n| n.dm_name.as_ref()).map(|d| format!("mapper/{d}")))
            .collect();
        for m in &t.mounts {
            let by_majmin = matches!((m.majmin, node.and_then(|n| n.majmin)), (Some(a), Some(b)) if a == b);
            let by_name = m.source.as_ref().is_some_and(|s| aliases.contains(s));
            if by_majmin || by_name {
                let mount =
                    Mount { device: name.clone(), mount_point: m.mount_point.clone(), fs_type: m.fs_type.clone() };
                if !usage.mounts.contains(&mount) {
                    usage.mounts.push(mount);
                }
            }
        }
        if t.swaps.iter().any(|s| aliases.contains(s)) {
            usage.swaps.push(name.clone());
        }
    }
    usage.mounts.sort_by(|a, b| (&a.mount_point, &a.device).cmp(&(&b.mount_point, &b.device)));
    usage
}

/// Pure: `nvme1c2n1` (the hidden per-path disk of a native-multipath namespace, named
/// `nvme<subsys>c<ctrl>n<nsid>` by `nvme_set_disk_name`).
pub fn is_nvme_path_disk(name: &str) -> bool {
    let digits = |s: &str| -> Option<usize> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then_some(n)
    };
    (|| {
        let r = name.strip_prefix("nvme")?;
        let r = r[digits(r)?..].strip_prefix('c')?;
        let r = r[digits(r)?..].strip_prefix('n')?;
        (digits(r)? == r.len()).then_some(())
    })()
    .is_some()
}

/// Pure: `nvme-subsys1` when a block device's sysfs path sits under a native-multipath
/// subsystem (`../../devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1`).
pub fn nvme_subsystem_of(target: &str) -> Option<String> {
    let mut parts = target.split('/');
    parts.by_ref().find(|p| *p == "nvme-subsystem")?;
    parts.next().filter(|s| s.starts_with("nvme-subsys")).map(str::to_owned)
}

/// Pure: a controller entry of `sys/class/nvme-subsystem/<subsys>/` (`nvme3`, not `nvme1n1`).
fn is_nvme_controller(name: &str) -> bool {
    name.strip_prefix("nvme").is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

fn parse_majmin(s: &str) -> Option<(u32, u32)> {
    s.trim().split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
}

/// Reads `sys/class/block/<name>`: `dev`, `dm/name`, `dm/uuid`, `md/level` and `holders/`.
fn read_block_node(root: &HostRoot, name: &str) -> Result<BlockNode, HostError> {
    let base = format!("sys/class/block/{name}");
    let majmin = match root.read_attr(format!("{base}/dev")) {
        Ok(s) => match parse_majmin(&s) {
            Some(mm) => Some(mm),
            None => {
                return Err(HostError::invalid(root.join(format!("{base}/dev")), format!("{s:?} is not major:minor")));
            }
        },
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let trimmed = |rel: &str| -> Result<Option<String>, HostError> {
        Ok(root.read_optional(format!("{base}/{rel}"))?.map(|s| s.trim().to_owned()))
    };
    let dm_name = trimmed("dm/name")?;
    let dm_uuid = trimmed("dm/uuid")?;
    let md_level = if name.starts_with("md") { trimmed("md/level")? } else { None };
    let holders = root.list_dir(format!("{base}/holders"))?;
    Ok(BlockNode { name: name.to_owned(), majmin, dm_name, dm_uuid, md_level, holders })
}

/// The PCI functions whose NVMe controllers belong to `subsys` (`sys/class/nvme-subsystem/
/// <subsys>/nvmeK` links to `<pci>/nvme/nvmeK`).
fn subsystem_functions(root: &HostRoot, subsys: &str) -> Result<Vec<PciAddress>, HostError> {
    let dir = root.join(format!("sys/class/nvme-subsystem/{subsys}"));
    let mut out = Vec::new();
    for name in super::root::list_dir(&dir)?.into_iter().filter(|n| is_nvme_controller(n)) {
        let link = dir.join(&name);
        let t = fs::read_link(&link).map_err(|e| HostError::io("readlink", &link, e))?;
        if let Some(a) = pci_ancestor(&t) {
            out.push(a);
        }
    }
    // NVMe over fabrics controllers (`devices/virtual/nvme-fabrics/ctl/nvmeK`) have no PCI
    // function to protect.
    out.sort();
    out.dedup();
    Ok(out)
}

/// `sys/fs/btrfs/<fsid>/devices/<name>` for every btrfs the kernel has open, by member name.
fn btrfs_members(root: &HostRoot) -> Result<HashMap<String, BtrfsMember>, HostError> {
    let mut out = HashMap::new();
    for fsid in root.list_dir("sys/fs/btrfs")?.into_iter().filter(|f| f.len() == 36) {
        let mut members = root.list_dir(format!("sys/fs/btrfs/{fsid}/devices"))?;
        members.sort();
        let label = root.read_optional(format!("sys/fs/btrfs/{fsid}/label"))?.map(|l| l.trim().to_owned());
        let label = label.filter(|l| !l.is_empty());
        for m in &members {
            let entry =
                BtrfsMember { device: m.clone(), fsid: fsid.clone(), label: label.clone(), members: members.clone() };
            out.insert(m.clone(), entry);
        }
    }
    Ok(out)
}

/// Reads a mount or swap table; `None` when it is absent.
fn table(root: &HostRoot, rel: &str, failures: &mut Vec<String>) -> Option<String> {
    match root.read_optional(rel) {
        Ok(s) => s,
        Err(e) => {
            failures.push(e.to_string());
            None
        }
    }
}

/// Records on each device its disks, their partitions, and what the host mounts, swaps or
/// stacks on them. A table that cannot be read makes every device with disks, and every storage
/// controller on a host driver, "cannot tell" (`use_unknown`), naming the table.
pub(super) fn attach(
    root: &HostRoot,
    inv: &mut PciInventory,
    by_addr: &HashMap<PciAddress, usize>,
    warnings: &mut Vec<String>,
) {
    let mut failures: Vec<String> = Vec::new();
    let blocks = class_entries(root, "block").unwrap_or_else(|e| {
        failures.push(e.to_string());
        Vec::new()
    });
    // Whole disks are entries whose parent directory is not itself a block entry.
    let names: BTreeSet<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    let parent_of = |b: &ClassEntry| -> Option<String> {
        Path::new(&b.target)
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| names.contains(n))
            .map(str::to_owned)
    };
    // (device index, disk, partitions, NVMe subsystem of a multipath head)
    let mut disks: Vec<(usize, String, Vec<String>, Option<String>)> = Vec::new();
    for b in blocks.iter().filter(|b| parent_of(b).is_none()) {
        if b.pci.is_some() && is_nvme_path_disk(&b.name) {
            // A path of a multipath namespace: the head disk stands for it.
            continue;
        }
        if let Some(i) = b.pci.and_then(|a| by_addr.get(&a)) {
            disks.push((*i, b.name.clone(), Vec::new(), None));
        } else if let Some(subsys) = nvme_subsystem_of(&b.target) {
            match subsystem_functions(root, &subsys) {
                Ok(fns) => {
                    for i in fns.iter().filter_map(|a| by_addr.get(a)) {
                        disks.push((*i, b.name.clone(), Vec::new(), Some(subsys.clone())));
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    for b in &blocks {
        if let Some(parent) = parent_of(b) {
            for d in disks.iter_mut().filter(|d| d.1 == parent) {
                d.2.push(b.name.clone());
            }
        }
    }
    if !disks.is_empty() {
        let mut t = BlockTables::default();
        for b in &blocks {
            match read_block_node(root, &b.name) {
                Ok(n) => {
                    t.nodes.insert(b.name.clone(), n);
                }
                Err(e) => {
                    t.node_errors.insert(b.name.clone(), e.to_string());
                }
            }
        }
        let mountinfo = table(root, "proc/1/mountinfo", &mut failures);
        let mounts = table(root, "proc/mounts", &mut failures);
        if let Some(text) = &mountinfo {
            let (parsed, bad) = parse_mountinfo(text);
            t.mounts.extend(parsed);
            warnings.extend(bad.into_iter().map(|b| format!("{}: {b}", root.join("proc/1/mountinfo").display())));
        }
        if let Some(text) = &mounts {
            t.mounts.extend(parse_mounts(text));
        }
        if mountinfo.is_none() && mounts.is_none() && !failures.iter().any(|f| f.contains("mount")) {
            failures.push(format!(
                "{}: neither it nor proc/mounts exists, so nothing says what is mounted",
                root.join("proc/1/mountinfo").display()
            ));
        }
        // Absent proc/swaps means no swap support: nothing is swapped on.
        if let Some(text) = table(root, "proc/swaps", &mut failures) {
            t.swaps = parse_swaps(&text);
        }
        match btrfs_members(root) {
            Ok(m) => t.btrfs = m,
            Err(e) => failures.push(e.to_string()),
        }
        for (i, name, mut partitions, nvme_subsystem) in disks {
            partitions.sort();
            let u = disk_usage(&name, &partitions, &t);
            let dev = &mut inv.devices[i];
            dev.use_unknown.extend(u.unknown.into_iter().map(|e| format!("cannot read what {name} backs: {e}")));
            dev.block.push(BlockDevice {
                name,
                partitions,
                mounts: u.mounts,
                swaps: u.swaps,
                holders: u.holders,
                btrfs: u.btrfs,
                nvme_subsystem,
                busy: Vec::new(),
            });
        }
    }
    if !failures.is_empty() {
        for d in &mut inv.devices {
            let storage = d.class_id.is_some_and(|c| c >> 16 == 0x01)
                && d.driver.as_deref().is_some_and(|drv| drv != crate::model::pci::VFIO_PCI);
            if storage || !d.block.is_empty() {
                d.use_unknown.extend(failures.iter().map(|f| format!("a storage table cannot be read: {f}")));
            }
        }
        warnings.extend(failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_tables_parse() {
        let (m, bad) = parse_mountinfo(
            "22 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/rhel-root rw\n\
             23 22 259:1 / /boot/efi rw - vfat /dev/nvme0n1p1 rw\n\
             24 22 0:5 / /my\\040dir rw - tmpfs tmpfs rw\nbroken line\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].majmin, Some((253, 0)));
        assert_eq!(m[0].source.as_deref(), Some("mapper/rhel-root"));
        assert_eq!(m[2].mount_point, "/my dir");
        assert_eq!(bad.len(), 1);
        let m = parse_mounts("/dev/root / ext4 rw 0 0\nproc /proc proc rw 0 0\n");
        assert_eq!(m[0].source.as_deref(), Some("root"));
        assert_eq!(m[1].source, None);
        assert_eq!(parse_swaps("Filename Type Size Used Priority\n/dev/sda2 partition 100 0 -2\n"), vec!["sda2"]);
    }

    #[test]
    fn octal_escapes_above_one_byte_are_kept_verbatim() {
        assert_eq!(unescape("/a\\777b"), "/a\\777b");
        assert_eq!(unescape("/a\\377"), String::from_utf8_lossy(b"/a\xff"));
        assert_eq!(unescape("\\134x\\011"), "\\x\t");
        assert_eq!(unescape("end\\04"), "end\\04");
        let (m, bad) = parse_mountinfo("30 1 8:1 / /mnt/\\777 rw - ext4 /dev/sda1\\777 rw\n");
        assert!(bad.is_empty());
        assert_eq!(m[0].mount_point, "/mnt/\\777");
    }

    fn node(name: &str, mm: (u32, u32), dm: Option<(&str, &str)>, holders: &[&str]) -> (String, BlockNode) {
        (
            name.to_owned(),
            BlockNode {
                name: name.to_owned(),
                majmin: Some(mm),
                dm_name: dm.map(|d| d.0.to_owned()),
                dm_uuid: dm.map(|d| d.1.to_owned()),
                md_level: name.starts_with("md").then(|| "raid1".to_owned()),
                holders: holders.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    #[test]
    fn usage_follows_partitions_and_holders() {
        let nodes: HashMap<_, _> = [
            node("nvme0n1", (259, 0), None, &[]),
            node("nvme0n1p1", (259, 1), None, &[]),
            node("nvme0n1p2", (259, 2), None, &["dm-0"]),
            node("dm-0", (253, 0), Some(("rhel-root", "LVM-abc")), &[]),
            node("sdb", (8, 16), None, &[]),
        ]
        .into_iter()
        .collect();
        // Root is seen only as /dev/root in proc/mounts but by major:minor in mountinfo.
        let mounts = vec![
            MountRecord {
                majmin: Some((253, 0)),
                source: Some("root".into()),
                mount_point: "/".into(),
                fs_type: "xfs".into(),
            },
            MountRecord {
                majmin: None,
                source: Some("nvme0n1p1".into()),
                mount_point: "/boot/efi".into(),
                fs_type: "vfat".into(),
            },
        ];
        let t = BlockTables { nodes, mounts, swaps: vec!["nvme0n1p2".to_owned()], ..BlockTables::default() };
        let parts = vec!["nvme0n1p1".to_owned(), "nvme0n1p2".to_owned()];
        let u = disk_usage("nvme0n1", &parts, &t);
        assert_eq!(
            u.mounts.iter().map(|m| (m.device.as_str(), m.mount_point.as_str())).collect::<Vec<_>>(),
            vec![("dm-0", "/"), ("nvme0n1p1", "/boot/efi")]
        );
        assert_eq!(u.swaps, vec!["nvme0n1p2".to_owned()]);
        assert_eq!(
            u.holders,
            vec![BlockHolder {
                device: "nvme0n1p2".into(),
                holder: "dm-0".into(),
                kind: "LVM volume rhel-root".into()
            }]
        );
        let u = disk_usage("sdb", &[], &t);
        assert_eq!(u, DiskUsage::default());
    }

    #[test]
    fn unreadable_nodes_on_the_way_are_unknown() {
        let nodes: HashMap<_, _> = [node("sdc", (8, 32), None, &["md0"])].into_iter().collect();
        let node_errors = [("md0".to_owned(), "read sys/class/block/md0/holders: Permission denied".to_owned())];
        let t = BlockTables { nodes, node_errors: node_errors.into_iter().collect(), ..BlockTables::default() };
        let u = disk_usage("sdc", &[], &t);
        assert_eq!(u.holders[0].kind, "md array", "md0 itself could not be read");
        assert_eq!(u.unknown, vec!["read sys/class/block/md0/holders: Permission denied".to_owned()]);
    }

    #[test]
    fn holders_are_named_by_kind() {
        let n = |dm: Option<(&str, &str)>, name: &str| node(name, (253, 3), dm, &[]).1;
        assert_eq!(holder_kind("dm-3", Some(&n(Some(("vg0-osd0", "LVM-x")), "dm-3"))), "LVM volume vg0-osd0");
        assert_eq!(holder_kind("dm-4", Some(&n(Some(("luks-1", "CRYPT-LUKS2-x")), "dm-4"))), "dm-crypt volume luks-1");
        assert_eq!(holder_kind("dm-5", Some(&n(Some(("thin", "")), "dm-5"))), "device-mapper device thin");
        assert_eq!(holder_kind("md127", Some(&n(None, "md127"))), "md raid1 array");
        assert_eq!(holder_kind("md127", None), "md array");
    }

    #[test]
    fn nvme_multipath_names() {
        assert!(is_nvme_path_disk("nvme1c2n1"));
        assert!(!is_nvme_path_disk("nvme1n1") && !is_nvme_path_disk("nvme1c2n1p1") && !is_nvme_path_disk("nvmecn"));
        assert_eq!(
            nvme_subsystem_of("../../devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1").as_deref(),
            Some("nvme-subsys1")
        );
        assert_eq!(nvme_subsystem_of("../../devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1"), None);
        assert!(is_nvme_controller("nvme12") && !is_nvme_controller("nvme1n1") && !is_nvme_controller("nvme"));
    }
}
