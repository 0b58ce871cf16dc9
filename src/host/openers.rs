//! Bind-time probes of who holds a device open: an exclusive open of each disk and partition
//! (EBUSY means something holds it: ZFS, a raw Ceph OSD, a holder nodeprep cannot name), and
//! the host's `proc/<pid>/fd` links to the device's character nodes (DRM, accel, InfiniBand
//! verbs, UIO, NVIDIA's `/dev/nvidia<minor>`).
//!
//! Both are run only for the devices a bind plan would write to ([`probe`], called from bind
//! planning), never on a discovery scan: an exclusive open is briefly intrusive, and walking
//! every process's file descriptors costs a syscall per descriptor. Results land in the model
//! (`BlockDevice::busy`, `PciDevice::held_open`, `use_unknown`); the plan stays pure.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::libc;

use super::root::HostRoot;
use crate::model::{OpenNode, PciAddress, PciDevice, PciInventory};

/// The NVIDIA proprietary driver's character major (`NV_MAJOR_DEVICE_NUMBER`).
const NVIDIA_MAJOR: u32 = 195;

/// A character device node of a PCI function: its devtmpfs path and major:minor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharNode {
    pub path: String,
    pub majmin: (u32, u32),
}

/// The kernel's `major:minor` split of a `dev_t` (glibc's `gnu_dev_major`/`gnu_dev_minor`).
fn split_dev(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    (major as u32, minor as u32)
}

fn parse_majmin(s: &str) -> Option<(u32, u32)> {
    s.trim().split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
}

/// Fills in, for the devices at `candidates`, what holds their disks and character nodes open.
pub fn probe(root: &HostRoot, inv: &mut PciInventory, candidates: &[PciAddress]) {
    let mut nodes: Vec<(usize, Vec<CharNode>)> = Vec::new();
    for a in candidates {
        let Ok(i) = inv.devices.binary_search_by(|d| d.address.cmp(a)) else { continue };
        probe_busy(root, &mut inv.devices[i]);
        let (found, unknown) = char_nodes(root, &inv.devices[i].address);
        inv.devices[i].use_unknown.extend(unknown);
        if !found.is_empty() {
            nodes.push((i, found));
        }
    }
    if nodes.is_empty() {
        return;
    }
    match open_files(root) {
        Ok((fds, unknown)) => {
            for (i, dev_nodes) in nodes {
                let d = &mut inv.devices[i];
                for n in &dev_nodes {
                    for f in fds.iter().filter(|f| f.matches(n)) {
                        let o = OpenNode { node: n.path.clone(), pid: f.pid, comm: f.comm.clone() };
                        if !d.held_open.contains(&o) {
                            d.held_open.push(o);
                        }
                    }
                }
                let names: Vec<&str> = dev_nodes.iter().map(|n| n.path.as_str()).collect();
                d.use_unknown.extend(
                    unknown
                        .iter()
                        .map(|u| format!("cannot tell whether a process holds {} open: {u}", names.join(", "))),
                );
            }
        }
        Err(e) => {
            for (i, dev_nodes) in nodes {
                let names: Vec<&str> = dev_nodes.iter().map(|n| n.path.as_str()).collect();
                inv.devices[i]
                    .use_unknown
                    .push(format!("cannot tell whether a process holds {} open: {e}", names.join(", ")));
            }
        }
    }
}

/// Tries an exclusive open of each disk and partition of `d`: EBUSY marks it busy; a node
/// that is missing, is not that block device, or cannot be opened makes it unknown.
pub fn probe_busy(root: &HostRoot, d: &mut PciDevice) {
    let mut unknown = Vec::new();
    for b in &mut d.block {
        let names: Vec<String> = std::iter::once(b.name.clone()).chain(b.partitions.iter().cloned()).collect();
        for name in names {
            match exclusive_open(root, &name) {
                Ok(()) => {}
                Err(Probe::Busy) => b.busy.push(name),
                Err(Probe::Unknown(why)) => {
                    unknown.push(format!("cannot tell whether anything holds {name} open: {why}"))
                }
            }
        }
    }
    d.use_unknown.extend(unknown);
}

enum Probe {
    Busy,
    Unknown(String),
}

/// `open(dev/<name>, O_RDONLY|O_EXCL|O_CLOEXEC|O_NONBLOCK)` after checking that the node is
/// the block device sysfs names (`sys/class/block/<name>/dev`). Read-only, so closing it sends
/// no change uevent.
fn exclusive_open(root: &HostRoot, name: &str) -> Result<(), Probe> {
    let rel = format!("dev/{name}");
    let not_node = || Probe::Unknown(format!("{rel} under the host root is not its block device node"));
    let want = root
        .read_attr(format!("sys/class/block/{name}/dev"))
        .map_err(|e| Probe::Unknown(e.to_string()))
        .and_then(|s| {
            parse_majmin(&s)
                .ok_or_else(|| Probe::Unknown(format!("sys/class/block/{name}/dev: {s:?} is not major:minor")))
        })?;
    let path = root.join(&rel);
    let is_it = |m: &fs::Metadata| m.file_type().is_block_device() && split_dev(m.rdev()) == want;
    match fs::symlink_metadata(&path) {
        Ok(m) if is_it(&m) => {}
        _ => return Err(not_node()),
    }
    let file: File = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(Probe::Busy),
        Err(e) => return Err(Probe::Unknown(format!("exclusive open of {rel}: {e}"))),
    };
    // The node could have been swapped between the check and the open.
    match file.metadata() {
        Ok(m) if is_it(&m) => Ok(()),
        _ => Err(not_node()),
    }
}

/// The character nodes of the function at `addr`: `drm/card*`, `drm/renderD*`, `accel/accel*`,
/// `infiniband_verbs/uverbs*` and `uio/uio*` under its sysfs directory, and `/dev/nvidia<minor>`
/// from `proc/driver/nvidia/gpus/<addr>/information`. Second: what could not be read.
pub fn char_nodes(root: &HostRoot, addr: &PciAddress) -> (Vec<CharNode>, Vec<String>) {
    const CLASSES: [(&str, &str, &str); 5] = [
        ("drm", "card", "/dev/dri/"),
        ("drm", "renderD", "/dev/dri/"),
        ("accel", "accel", "/dev/accel/"),
        ("infiniband_verbs", "uverbs", "/dev/infiniband/"),
        ("uio", "uio", "/dev/"),
    ];
    let base = format!("sys/bus/pci/devices/{addr}");
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (class, prefix, devdir) in CLASSES {
        let names = match root.list_dir(format!("{base}/{class}")) {
            Ok(n) => n,
            Err(e) => {
                unknown.push(format!("cannot list its {class} nodes: {e}"));
                continue;
            }
        };
        for name in names.into_iter().filter(|n| n.strip_prefix(prefix).is_some_and(|r| r.parse::<u32>().is_ok())) {
            match root.read_attr(format!("{base}/{class}/{name}/dev")).map(|s| parse_majmin(&s)) {
                Ok(Some(majmin)) => out.push(CharNode { path: format!("{devdir}{name}"), majmin }),
                Ok(None) => unknown.push(format!("{base}/{class}/{name}/dev is not major:minor")),
                Err(e) => unknown.push(format!("cannot read the node number of {name}: {e}")),
            }
        }
    }
    match root.read_optional(format!("proc/driver/nvidia/gpus/{addr}/information")) {
        Ok(Some(text)) => {
            let minor =
                text.lines().find_map(|l| l.strip_prefix("Device Minor:")).and_then(|m| m.trim().parse::<u32>().ok());
            match minor {
                Some(m) => out.push(CharNode { path: format!("/dev/nvidia{m}"), majmin: (NVIDIA_MAJOR, m) }),
                None => {
                    unknown.push(format!("proc/driver/nvidia/gpus/{addr}/information has no \"Device Minor:\" line"))
                }
            }
        }
        Ok(None) => {}
        Err(e) => unknown.push(format!("cannot read its NVIDIA device minor: {e}")),
    }
    (out, unknown)
}

/// One open file descriptor of a host process that names a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFd {
    pub pid: u32,
    pub comm: String,
    /// `readlink` of the fd link.
    pub link: String,
    /// major:minor when stat through the link gives a character device.
    pub chr: Option<(u32, u32)>,
}

impl OpenFd {
    /// Pure: the fd is that node: by rdev when stat gave a character device, else by path.
    pub fn matches(&self, n: &CharNode) -> bool {
        match self.chr {
            Some(mm) => mm == n.majmin,
            None => self.link == n.path,
        }
    }
}

/// Every host process's file descriptors that name a path (`proc/<pid>/fd/*`), read once.
/// Processes and descriptors that vanish while being read are skipped; anything else that
/// cannot be read is returned as "cannot tell" reasons.
pub fn open_files(root: &HostRoot) -> Result<(Vec<OpenFd>, Vec<String>), String> {
    let proc_dir = root.join("proc");
    let pids: Vec<u32> = fs::read_dir(&proc_dir)
        .map_err(|e| format!("read directory {}: {e}", proc_dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for pid in pids {
        let fd_dir = proc_dir.join(pid.to_string()).join("fd");
        let entries = match fs::read_dir(&fd_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                unknown.push(format!("read directory {}: {e}", fd_dir.display()));
                continue;
            }
        };
        let mut comm: Option<String> = None;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    unknown.push(format!("read directory {}: {e}", fd_dir.display()));
                    break;
                }
            };
            let link = entry.path();
            let target = match fs::read_link(&link) {
                Ok(t) => t.to_string_lossy().into_owned(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unknown.push(format!("readlink {}: {e}", link.display()));
                    continue;
                }
            };
            // Sockets, pipes and anon inodes (`socket:[123]`) are never device nodes.
            if !target.starts_with('/') {
                continue;
            }
            let chr = fs::metadata(&link).ok().filter(|m| m.file_type().is_char_device()).map(|m| split_dev(m.rdev()));
            let comm = comm.get_or_insert_with(|| read_comm(&proc_dir, pid)).clone();
            out.push(OpenFd { pid, comm, link: target, chr });
        }
    }
    Ok((out, unknown))
}

fn read_comm(proc_dir: &Path, pid: u32) -> String {
    fs::read_to_string(proc_dir.join(pid.to_string()).join("comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_splits_like_glibc() {
        assert_eq!(split_dev((226 << 8) | 128), (226, 128));
        // 259:1048577 needs the high minor bits (makedev puts them at bit 20 and up).
        assert_eq!(split_dev(nix::sys::stat::makedev(259, 1_048_577)), (259, 1_048_577));
        assert_eq!(split_dev(nix::sys::stat::makedev(4095, 7)), (4095, 7));
    }

    #[test]
    fn an_fd_matches_by_rdev_when_stat_gave_a_char_device_else_by_path() {
        let card0 = CharNode { path: "/dev/dri/card0".into(), majmin: (226, 0) };
        let fd = |link: &str, chr| OpenFd { pid: 7, comm: "Xorg".into(), link: link.into(), chr };
        assert!(fd("/dev/dri/card0", None).matches(&card0));
        assert!(!fd("/dev/dri/card1", None).matches(&card0));
        // In another mount namespace the path may differ; the rdev decides.
        assert!(fd("/run/container/dev/card", Some((226, 0))).matches(&card0));
        assert!(!fd("/dev/dri/card0", Some((226, 1))).matches(&card0));
    }
}
