//! A simulated kernel: implements `nodeprep::bind::Kernel` over a [`HostTree`](super::HostTree)
//! by changing the tree the way Linux changes sysfs, so nodeprep's own reads (the `driver` link,
//! `driver_override`, `dev/vfio/<group>`) see the effect of its writes.
//!
//! What it models (`drivers/base/bus.c`, `drivers/base/dd.c`, `drivers/pci/pci-sysfs.c`,
//! `drivers/vfio/pci/vfio_pci.c`):
//! - `sys/bus/pci/devices/<a>/driver_override`: stores the value; an empty value (a lone
//!   newline) clears it, and the file then reads `(null)`;
//! - `sys/bus/pci/drivers/<drv>/unbind`: releases the device when `drv` is its driver (the
//!   `driver` link and the driver directory's back link go), else `ENODEV`;
//! - `sys/bus/pci/drivers_probe`: a device without a driver is offered to its override (when
//!   set), else to vfio-pci when its id is in vfio-pci's id table
//!   ([`KernelSim::vfio_pci_ids`], as `options vfio-pci ids=10de:10f7` makes it), else to its
//!   *native* driver (the one it had when the simulator was created); vfio-pci's
//!   probe fails on a device without an IOMMU group (the kernel's `-EINVAL`), which leaves it
//!   driverless and the write itself succeeds, as `really_probe` ignores probe errors;
//! - `sys/bus/pci/drivers/<drv>/bind`: binds a driverless device directly (`EBUSY` when it has
//!   a driver, `ENODEV` when its override names another driver);
//! - binding to vfio-pci creates `dev/vfio/<group>`; it goes when the group's last device
//!   leaves vfio-pci;
//! - `load_module("vfio-pci")` creates vfio-pci's driver directory and `dev/vfio/vfio`;
//! - a write to a file that does not exist fails with `NotFound`, like sysfs.
//!
//! Across processes: [`KernelSim::persisted`] keeps the native drivers in a file of the tree, and
//! [`KernelSim::settle`] finishes a simulated write its process was killed in the middle of.
//!
//! Fault injection: [`KernelSim::fail_after`] (the process is killed after n successful writes:
//! every later write fails), [`KernelSim::fail_probe_for`] (vfio-pci refuses one device) and
//! [`KernelSim::fail_modules`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nodeprep::bind::Kernel;

use super::tree::{HostTree, relative};

const DEVICES: &str = "sys/bus/pci/devices";
const DRIVERS: &str = "sys/bus/pci/drivers";
const VFIO_PCI: &str = "vfio-pci";
/// Where [`KernelSim::persisted`] keeps the native drivers, relative to the root (`<address>
/// <driver or ->` per line; nothing nodeprep reads).
pub const NATIVE_FILE: &str = "kernel-sim-native";

const ENODEV: i32 = 19;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;
/// What a write made after the simulated kill returns (the process is gone; any error will do).
const EINTR: i32 = 4;

/// One module load, and how many writes the log held when it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLoad {
    pub name: String,
    pub writes_before: usize,
}

/// The simulated kernel over one fixture tree.
pub struct KernelSim {
    root: PathBuf,
    /// Each device's native driver: the one a probe without an override finds.
    native: BTreeMap<String, Option<String>>,
    fail_after: Option<usize>,
    succeeded: usize,
    refuse_probe: BTreeSet<String>,
    /// `vendor:device` ids (lower-case hex) vfio-pci claims on a probe without override.
    vfio_ids: BTreeSet<String>,
    module_failure: Option<String>,
    /// Every write the kernel received, in order: (path relative to the root, value). Writes
    /// refused by [`fail_after`](Self::fail_after) never reach the kernel and are not logged;
    /// writes the kernel answered with an error (ENODEV, ...) are.
    pub log: Vec<(PathBuf, String)>,
    /// Every module load asked for, in order.
    pub modules: Vec<ModuleLoad>,
}

fn errno(n: i32) -> io::Error {
    io::Error::from_raw_os_error(n)
}

impl KernelSim {
    /// A simulated kernel over `tree`; every device's current driver is its native driver.
    pub fn new(tree: &HostTree) -> KernelSim {
        KernelSim::at(tree.root())
    }

    /// The same, over a root directory laid out like a [`HostTree`].
    pub fn at(root: &Path) -> KernelSim {
        let mut sim = KernelSim::at_without_natives(root);
        let names: Vec<String> = fs::read_dir(root.join(DEVICES))
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        for a in names {
            let drv = sim.driver_of(&a);
            sim.native.insert(a, drv);
        }
        sim
    }

    /// A simulated kernel over `root` whose native drivers outlive the processes using it: the
    /// first call records every device's current driver in [`NATIVE_FILE`] under the root;
    /// later calls (another process, after the first was killed half-way through a bind) read
    /// them from there instead of taking a half-bound device's driver (none, or vfio-pci) for
    /// its native one. A device the file does not list gets its current driver. Also
    /// [`settle`](Self::settle)s the tree first, as the kernel finishes every write it accepted.
    pub fn persisted(root: &Path) -> KernelSim {
        KernelSim::settle(root);
        let mut sim = KernelSim::at(root);
        let file = root.join(NATIVE_FILE);
        match fs::read_to_string(&file) {
            Ok(text) => {
                for line in text.lines() {
                    if let Some((addr, drv)) = line.split_once(' ') {
                        let drv = (drv != "-").then(|| drv.to_owned());
                        sim.native.insert(addr.to_owned(), drv);
                    }
                }
            }
            Err(_) => {
                let text: String =
                    sim.native.iter().map(|(a, d)| format!("{a} {}\n", d.as_deref().unwrap_or("-"))).collect();
                let tmp = file.with_extension("tmp");
                fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &file)).expect("record the native drivers");
            }
        }
        sim
    }

    /// Completes what a writer killed in the middle of one simulated write left half done, as
    /// the real kernel finishes a sysfs write whatever happens to the process that made it
    /// (the simulator's change is several file operations; a SIGKILL can fall between them):
    /// every `driver` link gets its driver directory's back link, stale back links go, and
    /// `dev/vfio/<group>` exists exactly for the groups with a member on vfio-pci.
    pub fn settle(root: &Path) {
        let sim = KernelSim::at_without_natives(root);
        let names: Vec<String> = fs::read_dir(root.join(DEVICES))
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let mut vfio_groups = BTreeSet::new();
        for a in &names {
            let Some(drv) = sim.driver_of(a) else { continue };
            let back = root.join(DRIVERS).join(&drv).join(a);
            if fs::symlink_metadata(&back).is_err() {
                if let Some(dir) = sim.dev_dir(a) {
                    let ddir = Path::new(DRIVERS).join(&drv);
                    let _ = std::os::unix::fs::symlink(relative(&ddir, &dir), &back);
                }
            }
            if drv == VFIO_PCI {
                if let Some(g) = sim.group_of(a) {
                    vfio_groups.insert(g);
                }
            }
        }
        for d in fs::read_dir(root.join(DRIVERS)).into_iter().flatten().filter_map(|e| e.ok()) {
            let drv = d.file_name().to_string_lossy().into_owned();
            for e in fs::read_dir(d.path()).into_iter().flatten().filter_map(|e| e.ok()) {
                let a = e.file_name().to_string_lossy().into_owned();
                let is_link = e.file_type().is_ok_and(|t| t.is_symlink());
                if is_link && names.contains(&a) && sim.driver_of(&a).as_deref() != Some(drv.as_str()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let vfio = root.join("dev/vfio");
        for g in &vfio_groups {
            let node = vfio.join(g.to_string());
            if !node.exists() {
                let _ = fs::write(node, "");
            }
        }
        for e in fs::read_dir(&vfio).into_iter().flatten().filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_ok_and(|g| !vfio_groups.contains(&g)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn at_without_natives(root: &Path) -> KernelSim {
        KernelSim {
            root: root.to_path_buf(),
            native: BTreeMap::new(),
            fail_after: None,
            succeeded: 0,
            refuse_probe: BTreeSet::new(),
            vfio_ids: BTreeSet::new(),
            module_failure: None,
            log: Vec::new(),
            modules: Vec::new(),
        }
    }

    /// The same kernel after the process using it was restarted: native drivers and
    /// [`fail_probe_for`](Self::fail_probe_for) are kept (they are the kernel's), the log, the
    /// write count and [`fail_after`](Self::fail_after) start afresh.
    pub fn restarted(&self) -> KernelSim {
        KernelSim {
            root: self.root.clone(),
            native: self.native.clone(),
            fail_after: None,
            succeeded: 0,
            refuse_probe: self.refuse_probe.clone(),
            vfio_ids: self.vfio_ids.clone(),
            module_failure: self.module_failure.clone(),
            log: Vec::new(),
            modules: Vec::new(),
        }
    }

    /// After `n` successful writes every further write fails (the process was killed).
    pub fn fail_after(&mut self, n: usize) -> &mut Self {
        self.fail_after = Some(n);
        self
    }

    /// vfio-pci's probe fails for this device: it stays without a driver.
    pub fn fail_probe_for(&mut self, addr: &str) -> &mut Self {
        self.refuse_probe.insert(addr.to_owned());
        self
    }

    /// vfio-pci's id table holds these `vendor:device` ids (`options vfio-pci ids=...`): a
    /// probe of a driverless device without override gives it to vfio-pci, not its native
    /// driver. Kept by [`restarted`](Self::restarted) (it is the kernel's configuration).
    pub fn vfio_pci_ids(&mut self, ids: &[&str]) -> &mut Self {
        self.vfio_ids.extend(ids.iter().map(|i| i.to_ascii_lowercase()));
        self
    }

    /// Every module load fails with this message.
    pub fn fail_modules(&mut self, message: &str) -> &mut Self {
        self.module_failure = Some(message.to_owned());
        self
    }

    /// Sets a device's native driver (the one a probe without override binds it to).
    pub fn set_native(&mut self, addr: &str, driver: Option<&str>) -> &mut Self {
        self.native.insert(addr.to_owned(), driver.map(str::to_owned));
        self
    }

    /// The native driver the simulator will give `addr`.
    pub fn native(&self, addr: &str) -> Option<&str> {
        self.native.get(addr).and_then(|d| d.as_deref())
    }

    /// Writes the kernel received to paths ending in `suffix` (`driver_override`, `unbind`).
    pub fn writes_to(&self, suffix: &str) -> usize {
        self.log.iter().filter(|(p, _)| p.ends_with(suffix)).count()
    }

    /// Writes the kernel received that concern device `addr`: to its own attributes, or with
    /// the address as the value (unbind, bind, drivers_probe).
    pub fn writes_for(&self, addr: &str) -> Vec<(PathBuf, String)> {
        let own = Path::new(DEVICES).join(addr);
        self.log.iter().filter(|(p, v)| p.starts_with(&own) || v.trim() == addr).cloned().collect()
    }

    // ---- reading the tree ----------------------------------------------------------------------

    /// The device directory relative to the root (`sys/devices/pci0000:ae/0000:ae:00.0/...`).
    fn dev_dir(&self, addr: &str) -> Option<PathBuf> {
        let abs = fs::canonicalize(self.root.join(DEVICES).join(addr)).ok()?;
        let root = fs::canonicalize(&self.root).ok()?;
        abs.strip_prefix(&root).ok().map(Path::to_path_buf)
    }

    /// The driver bound to `addr` (the name behind its `driver` link).
    pub fn driver_of(&self, addr: &str) -> Option<String> {
        let link = self.root.join(DEVICES).join(addr).join("driver");
        fs::read_link(link).ok()?.file_name()?.to_str().map(str::to_owned)
    }

    /// `driver_override` of `addr`, `None` when it reads `(null)`.
    pub fn override_of(&self, addr: &str) -> Option<String> {
        let s = fs::read_to_string(self.root.join(DEVICES).join(addr).join("driver_override")).ok()?;
        let s = s.trim_end();
        (!s.is_empty() && s != "(null)").then(|| s.to_owned())
    }

    fn group_of(&self, addr: &str) -> Option<u32> {
        let link = self.root.join(DEVICES).join(addr).join("iommu_group");
        if !link.exists() {
            return None;
        }
        fs::read_link(link).ok()?.file_name()?.to_str()?.parse().ok()
    }

    /// `vendor:device` of `addr` as lower-case hex (`10de:10f7`), from its sysfs attributes.
    fn id_of(&self, addr: &str) -> Option<String> {
        let dir = self.root.join(DEVICES).join(addr);
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok().map(|v| v.trim().trim_start_matches("0x").to_owned());
        Some(format!("{}:{}", read("vendor")?, read("device")?).to_ascii_lowercase())
    }

    fn driver_exists(&self, drv: &str) -> bool {
        self.root.join(DRIVERS).join(drv).is_dir()
    }

    // ---- changing the tree ---------------------------------------------------------------------

    fn attach(&self, addr: &str, drv: &str) -> io::Result<()> {
        let dir = self.dev_dir(addr).ok_or_else(|| errno(ENODEV))?;
        let ddir = Path::new(DRIVERS).join(drv);
        std::os::unix::fs::symlink(relative(&dir, &ddir), self.root.join(&dir).join("driver"))?;
        std::os::unix::fs::symlink(relative(&ddir, &dir), self.root.join(&ddir).join(addr))?;
        if drv == VFIO_PCI {
            if let Some(g) = self.group_of(addr) {
                fs::create_dir_all(self.root.join("dev/vfio"))?;
                fs::write(self.root.join(format!("dev/vfio/{g}")), "")?;
            }
        }
        Ok(())
    }

    fn detach(&self, addr: &str, drv: &str) -> io::Result<()> {
        let dir = self.dev_dir(addr).ok_or_else(|| errno(ENODEV))?;
        fs::remove_file(self.root.join(&dir).join("driver"))?;
        fs::remove_file(self.root.join(DRIVERS).join(drv).join(addr))?;
        if drv == VFIO_PCI {
            if let Some(g) = self.group_of(addr) {
                let members = fs::read_dir(self.root.join(format!("sys/kernel/iommu_groups/{g}/devices")))?;
                let still = members
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .any(|m| self.driver_of(&m).as_deref() == Some(VFIO_PCI));
                let node = self.root.join(format!("dev/vfio/{g}"));
                if !still && node.exists() {
                    fs::remove_file(node)?;
                }
            }
        }
        Ok(())
    }

    /// Can `drv`'s probe take `addr`? vfio-pci needs an IOMMU group (and may be told to refuse).
    fn probe_ok(&self, addr: &str, drv: &str) -> bool {
        if !self.driver_exists(drv) {
            return false;
        }
        if drv == VFIO_PCI {
            return self.group_of(addr).is_some() && !self.refuse_probe.contains(addr);
        }
        true
    }

    fn known_device(&self, addr: &str) -> io::Result<()> {
        if self.root.join(DEVICES).join(addr).is_dir() { Ok(()) } else { Err(errno(ENODEV)) }
    }

    /// `drivers_probe`: offer a driverless device to its override, or else its native driver.
    fn probe(&self, addr: &str) -> io::Result<()> {
        self.known_device(addr)?;
        if self.driver_of(addr).is_some() {
            return Ok(());
        }
        let vfio_claims =
            self.driver_exists(VFIO_PCI) && self.id_of(addr).is_some_and(|id| self.vfio_ids.contains(&id));
        let candidate = match self.override_of(addr) {
            Some(o) => Some(o),
            None if vfio_claims => Some(VFIO_PCI.to_owned()),
            None => self.native.get(addr).cloned().flatten(),
        };
        match candidate {
            Some(drv) if self.probe_ok(addr, &drv) => self.attach(addr, &drv),
            // A failed probe leaves the device driverless; the write itself succeeds.
            _ => Ok(()),
        }
    }

    fn bind(&self, drv: &str, addr: &str) -> io::Result<()> {
        self.known_device(addr)?;
        if self.driver_of(addr).is_some() {
            return Err(errno(EBUSY));
        }
        if self.override_of(addr).is_some_and(|o| o != drv) {
            return Err(errno(ENODEV));
        }
        if !self.probe_ok(addr, drv) {
            return Err(errno(EINVAL));
        }
        self.attach(addr, drv)
    }

    fn unbind(&self, drv: &str, addr: &str) -> io::Result<()> {
        self.known_device(addr)?;
        if self.driver_of(addr).as_deref() != Some(drv) {
            return Err(errno(ENODEV));
        }
        self.detach(addr, drv)
    }

    fn apply(&self, rel: &Path, value: &str) -> io::Result<()> {
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        let arg = value.trim_end_matches('\n');
        match parts.as_slice() {
            ["sys", "bus", "pci", "devices", addr, "driver_override"] => {
                let text = if arg.is_empty() { "(null)\n".to_owned() } else { format!("{arg}\n") };
                fs::write(self.root.join(DEVICES).join(addr).join("driver_override"), text)
            }
            ["sys", "bus", "pci", "drivers_probe"] => self.probe(arg),
            ["sys", "bus", "pci", "drivers", drv, "unbind"] => self.unbind(drv, arg),
            ["sys", "bus", "pci", "drivers", drv, "bind"] => self.bind(drv, arg),
            // Any other attribute keeps what was written.
            _ => fs::write(self.root.join(rel), value),
        }
    }
}

impl Kernel for KernelSim {
    fn write(&mut self, path: &Path, value: &str) -> io::Result<()> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| io::Error::new(io::ErrorKind::PermissionDenied, "outside the simulated host root"))?
            .to_path_buf();
        if self.fail_after.is_some_and(|n| self.succeeded >= n) {
            return Err(errno(EINTR));
        }
        // sysfs attributes are never created by a write.
        if !path.exists() {
            self.log.push((rel, value.to_owned()));
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let result = self.apply(&rel, value);
        self.log.push((rel, value.to_owned()));
        if result.is_ok() {
            self.succeeded += 1;
        }
        result
    }

    fn load_module(&mut self, name: &str) -> Result<(), String> {
        self.modules.push(ModuleLoad { name: name.to_owned(), writes_before: self.log.len() });
        if let Some(m) = &self.module_failure {
            return Err(m.clone());
        }
        match name {
            "vfio-pci" | "vfio_pci" => {
                let d = self.root.join(DRIVERS).join(VFIO_PCI);
                let make = || -> io::Result<()> {
                    fs::create_dir_all(&d)?;
                    for f in ["bind", "unbind", "new_id", "remove_id", "uevent"] {
                        fs::write(d.join(f), "")?;
                    }
                    fs::create_dir_all(self.root.join("dev/vfio"))?;
                    fs::write(self.root.join("dev/vfio/vfio"), "")
                };
                make().map_err(|e| format!("simulated modprobe {name}: {e}"))
            }
            "vfio_iommu_type1" | "vfio-iommu-type1" | "vfio" => Ok(()),
            other => Err(format!("modprobe: FATAL: Module {other} not found in directory /lib/modules/simulated")),
        }
    }
}
