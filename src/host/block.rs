//! The host's disks behind each PCI function: partitions, devices stacked on them, and what is
//! mounted or swapped on any of them. Mounts are matched by major:minor from
//! `proc/1/mountinfo` (which also resolves `/dev/root`) and by device name from `proc/mounts`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::root::{HostError, HostRoot};
use super::usage::{ClassEntry, class_entries, optional_table};
use crate::model::{BlockDevice, Mount, PciAddress, PciInventory};

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

/// Mount tables escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Facts about one block device needed to match it against the mount tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockNode {
    pub name: String,
    pub majmin: Option<(u32, u32)>,
    /// `dm/name` for device-mapper devices (`rhel-root`, mounted as `/dev/mapper/rhel-root`).
    pub dm_name: Option<String>,
    /// Devices stacked on this one (`holders/`).
    pub holders: Vec<String>,
}

/// Pure: the mounts and swaps a disk, its partitions, or anything stacked on them backs.
pub fn disk_usage(
    disk: &str,
    partitions: &[String],
    nodes: &HashMap<String, BlockNode>,
    mounts: &[MountRecord],
    swaps: &[String],
) -> (Vec<Mount>, Vec<String>) {
    // Walk the disk, its partitions and their holders (transitively, dm on md on partition...).
    let mut todo: Vec<String> = std::iter::once(disk.to_owned()).chain(partitions.iter().cloned()).collect();
    let mut seen = BTreeSet::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(node) = nodes.get(&n) {
            todo.extend(node.holders.iter().cloned());
        }
    }
    let mut found = Vec::new();
    let mut swap_found = Vec::new();
    for name in &seen {
        let node = nodes.get(name);
        let aliases: Vec<String> = std::iter::once(name.clone())
            .chain(node.and_then(|n| n.dm_name.as_ref()).map(|d| format!("mapper/{d}")))
            .collect();
        for m in mounts {
            let by_majmin = matches!((m.majmin, node.and_then(|n| n.majmin)), (Some(a), Some(b)) if a == b);
            let by_name = m.source.as_ref().is_some_and(|s| aliases.contains(s));
            if by_majmin || by_name {
                let mount =
                    Mount { device: name.clone(), mount_point: m.mount_point.clone(), fs_type: m.fs_type.clone() };
                if !found.contains(&mount) {
                    found.push(mount);
                }
            }
        }
        if swaps.iter().any(|s| aliases.contains(s)) {
            swap_found.push(name.clone());
        }
    }
    found.sort_by(|a, b| (&a.mount_point, &a.device).cmp(&(&b.mount_point, &b.device)));
    (found, swap_found)
}

/// Reads `sys/class/block/<name>`: `dev`, `dm/name` and `holders/`.
fn read_block_node(root: &HostRoot, name: &str) -> Result<BlockNode, HostError> {
    let base = format!("sys/class/block/{name}");
    let majmin = match root.read_attr(format!("{base}/dev")) {
        Ok(s) => {
            let parsed = s.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            match parsed {
                Some(mm) => Some(mm),
                None => {
                    return Err(HostError::invalid(
                        root.join(format!("{base}/dev")),
                        format!("{s:?} is not major:minor"),
                    ));
                }
            }
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let dm_name = root.read_optional(format!("{base}/dm/name"))?.map(|s| s.trim().to_owned());
    let holders = root.list_dir(format!("{base}/holders"))?;
    Ok(BlockNode { name: name.to_owned(), majmin, dm_name, holders })
}

/// Records on each device its disks, their partitions, and what the host mounts or swaps on them.
pub(super) fn attach(
    root: &HostRoot,
    inv: &mut PciInventory,
    by_addr: &HashMap<PciAddress, usize>,
    warnings: &mut Vec<String>,
) {
    // Block devices: whole disks are entries whose parent directory is not itself a block entry.
    let blocks = class_entries(root, "block", warnings);
    let names: BTreeSet<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    let parent_of = |b: &ClassEntry| -> Option<String> {
        Path::new(&b.target)
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| names.contains(n))
            .map(str::to_owned)
    };
    let mut disks: Vec<(usize, String, Vec<String>)> = Vec::new();
    for b in blocks.iter().filter(|b| parent_of(b).is_none()) {
        if let Some(i) = b.pci.and_then(|a| by_addr.get(&a)) {
            disks.push((*i, b.name.clone(), Vec::new()));
        }
    }
    for b in &blocks {
        if let Some(parent) = parent_of(b) {
            if let Some(d) = disks.iter_mut().find(|d| d.1 == parent) {
                d.2.push(b.name.clone());
            }
        }
    }
    if !disks.is_empty() {
        let mut nodes = HashMap::new();
        for b in &blocks {
            match read_block_node(root, &b.name) {
                Ok(n) => {
                    nodes.insert(b.name.clone(), n);
                }
                Err(e) => warnings.push(e.to_string()),
            }
        }
        let mut mounts = Vec::new();
        let mountinfo = optional_table(root, "proc/1/mountinfo", warnings);
        let (parsed, bad) = parse_mountinfo(&mountinfo);
        mounts.extend(parsed);
        warnings.extend(bad.into_iter().map(|b| format!("{}: {b}", root.join("proc/1/mountinfo").display())));
        mounts.extend(parse_mounts(&optional_table(root, "proc/mounts", warnings)));
        let swaps = parse_swaps(&optional_table(root, "proc/swaps", warnings));
        for (i, name, mut partitions) in disks {
            partitions.sort();
            let (m, s) = disk_usage(&name, &partitions, &nodes, &mounts, &swaps);
            inv.devices[i].block.push(BlockDevice { name, partitions, mounts: m, swaps: s });
        }
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
    fn usage_follows_partitions_and_holders() {
        let node = |name: &str, mm, dm: Option<&str>, holders: &[&str]| {
            (
                name.to_owned(),
                BlockNode {
                    name: name.to_owned(),
                    majmin: Some(mm),
                    dm_name: dm.map(str::to_owned),
                    holders: holders.iter().map(|s| s.to_string()).collect(),
                },
            )
        };
        let nodes: HashMap<_, _> = [
            node("nvme0n1", (259, 0), None, &[]),
            node("nvme0n1p1", (259, 1), None, &[]),
            node("nvme0n1p2", (259, 2), None, &["dm-0"]),
            node("dm-0", (253, 0), Some("rhel-root"), &[]),
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
        let parts = vec!["nvme0n1p1".to_owned(), "nvme0n1p2".to_owned()];
        let (m, s) = disk_usage("nvme0n1", &parts, &nodes, &mounts, &["nvme0n1p2".to_owned()]);
        assert_eq!(
            m.iter().map(|m| (m.device.as_str(), m.mount_point.as_str())).collect::<Vec<_>>(),
            vec![("dm-0", "/"), ("nvme0n1p1", "/boot/efi")]
        );
        assert_eq!(s, vec!["nvme0n1p2".to_owned()]);
        let (m, s) = disk_usage("sdb", &[], &nodes, &mounts, &[]);
        assert!(m.is_empty() && s.is_empty());
    }
}
