//! Carrying out bind and unbind plans: the only code that writes to sysfs.
//!
//! Binding a function is three writes, the minimum the kernel allows without `new_id` (which
//! binds every device with that id and fails with "file exists" when repeated):
//! 1. `vfio-pci` to `sys/bus/pci/devices/<addr>/driver_override`;
//! 2. the address to `sys/bus/pci/drivers/<current driver>/unbind` (when it has one);
//! 3. the address to `sys/bus/pci/drivers_probe`;
//!
//! then the `driver` link and `/dev/vfio/<group>` are checked. Restoring clears the override
//! (a newline), unbinds from vfio-pci and probes again; when the probe hands the device to
//! vfio-pci again (`options vfio-pci ids=...`) or to no driver, it is written to the original
//! driver's `bind`. Each write that already holds (override
//! already set, already unbound) is skipped, which is what makes a rerun after a crash converge.
//! A group that fails half-way is rolled back: no device is left without the driver it should
//! have.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::plan::{Action, BindPlan, RestoreAction, RestorePlan, VFIO_PCI};
use super::state::{Record, StateError, StateGuard};
use crate::host::HostRoot;
use crate::host::root::{link_name, read_attr};
use crate::model::PciAddress;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("write {value:?} to {path}: {errno}")]
    Write { path: PathBuf, value: String, errno: String },
    #[error("{address}: {problem}")]
    Verify { address: PciAddress, problem: String },
    #[error("load module {module}: {problem}")]
    Module { module: String, problem: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The kernel as the engine changes it: attribute writes and module loading.
pub trait Kernel {
    /// Writes `value` to an existing sysfs attribute (no create, no truncate).
    fn write(&mut self, path: &Path, value: &str) -> std::io::Result<()>;
    /// Loads a kernel module (and its dependencies).
    fn load_module(&mut self, name: &str) -> Result<(), String>;
}

impl<K: Kernel + ?Sized> Kernel for Box<K> {
    fn write(&mut self, path: &Path, value: &str) -> std::io::Result<()> {
        (**self).write(path, value)
    }
    fn load_module(&mut self, name: &str) -> Result<(), String> {
        (**self).load_module(name)
    }
}

/// Makes the kernel the agent writes to: [`HostKernel`] in production; a test gives a recording
/// or simulated twin (youki's way of testing what touches the kernel), so the whole agent runs
/// over a fixture host in-process.
#[derive(Clone)]
pub struct KernelFactory(std::sync::Arc<MakeKernel>);

type MakeKernel = dyn Fn(&HostRoot) -> Box<dyn Kernel + Send> + Send + Sync;

impl KernelFactory {
    pub fn new(f: impl Fn(&HostRoot) -> Box<dyn Kernel + Send> + Send + Sync + 'static) -> Self {
        KernelFactory(std::sync::Arc::new(f))
    }

    /// A kernel for one bind, Prepare or Unprepare.
    pub fn make(&self, root: &HostRoot) -> Box<dyn Kernel + Send> {
        (self.0)(root)
    }
}

impl std::fmt::Debug for KernelFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelFactory")
    }
}

/// The production factory: the real kernel under the host root.
pub fn host_kernels() -> KernelFactory {
    KernelFactory::new(|root: &HostRoot| Box::new(HostKernel::new(root)))
}

/// Failpoint for crash tests on a real kernel: with `NODEPREP_FAILPOINT_KILL_AFTER_WRITES=N`
/// the process aborts (no cleanup, as under SIGKILL) right after its Nth sysfs write.
pub const KILL_AFTER_WRITES_ENV: &str = "NODEPREP_FAILPOINT_KILL_AFTER_WRITES";

/// The real kernel under a host root.
pub struct HostKernel {
    root: HostRoot,
    writes: usize,
    kill_after: Option<usize>,
}

impl HostKernel {
    pub fn new(root: &HostRoot) -> Self {
        let kill_after = std::env::var(KILL_AFTER_WRITES_ENV).ok().and_then(|v| v.parse().ok());
        HostKernel { root: root.clone(), writes: 0, kill_after }
    }
}

impl Kernel for HostKernel {
    fn write(&mut self, path: &Path, value: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        // sysfs takes one write call per value.
        let res = f.write_all(value.as_bytes());
        self.writes += 1;
        if self.kill_after == Some(self.writes) {
            eprintln!("nodeprep: failpoint {KILL_AFTER_WRITES_ENV}={} reached, aborting", self.writes);
            std::process::abort();
        }
        res
    }

    /// `modprobe NAME`, inside the host's root when that is not `/` (the child `chroot(2)`s
    /// before it execs), so the host's own modprobe, modules and configuration are used and the
    /// image needs no tools of its own.
    fn load_module(&mut self, name: &str) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("modprobe");
        cmd.arg(name).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if self.root.path() != Path::new("/") {
            let root = self.root.path().to_owned();
            // SAFETY: runs in the forked child before exec; it only makes the chroot and chdir
            // system calls (nix keeps short paths on the stack).
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::chroot(&root)?;
                    nix::unistd::chdir("/")?;
                    Ok(())
                });
            }
        }
        let out =
            cmd.output().map_err(|e| format!("cannot run modprobe inside {}: {e}", self.root.path().display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("modprobe {name} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

/// The outcome for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOutcome {
    pub address: PciAddress,
    /// `bound`, `already-bound`, `left`, `refused`, `failed`, `rolled-back`, `restored`,
    /// `forgotten`, `gone`.
    pub outcome: String,
    /// The reason or error, when there is one.
    pub detail: Option<String>,
    /// `/dev/vfio/<group>` for bound devices.
    pub vfio_device: Option<String>,
    /// sysfs writes made for this device.
    pub writes: usize,
}

impl DeviceOutcome {
    fn new(address: PciAddress, outcome: &str, detail: Option<String>) -> Self {
        DeviceOutcome { address, outcome: outcome.into(), detail, vfio_device: None, writes: 0 }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "rolled-back" | "refused")
    }
}

/// How long the kernel gets to create `/dev/vfio/<group>` or a driver directory.
const SETTLE: Duration = Duration::from_secs(5);

fn wait_for(path: &Path) -> bool {
    let start = Instant::now();
    loop {
        if path.exists() {
            return true;
        }
        if start.elapsed() > SETTLE {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Applies plans through a [`Kernel`], counting writes.
pub struct Applier<'a, K: Kernel> {
    root: &'a HostRoot,
    kernel: &'a mut K,
}

impl<'a, K: Kernel> Applier<'a, K> {
    pub fn new(root: &'a HostRoot, kernel: &'a mut K) -> Self {
        Applier { root, kernel }
    }

    fn dev(&self, a: PciAddress) -> PathBuf {
        self.root.join(format!("sys/bus/pci/devices/{a}"))
    }

    fn write(&mut self, path: PathBuf, value: &str, writes: &mut usize) -> Result<(), ApplyError> {
        *writes += 1;
        let shown = value.trim_end();
        match self.kernel.write(&path, value) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), value = shown, "sysfs write");
                Ok(())
            }
            Err(e) => {
                let errno = match e.raw_os_error() {
                    Some(n) => nix::errno::Errno::from_raw(n).to_string(),
                    None => e.to_string(),
                };
                Err(ApplyError::Write { path, value: shown.to_owned(), errno })
            }
        }
    }

    /// The current driver (name behind the `driver` link), if any.
    fn driver(&self, a: PciAddress) -> Option<String> {
        let link = self.dev(a).join("driver");
        if link.exists() { link_name(&link).ok() } else { None }
    }

    fn override_of(&self, a: PciAddress) -> Option<String> {
        read_attr(&self.dev(a).join("driver_override")).ok().filter(|s| !s.is_empty() && s != "(null)")
    }

    /// vfio-pci's driver directory exists, loading the module when it does not.
    pub fn ensure_vfio(&mut self) -> Result<(), ApplyError> {
        let drv = self.root.join(crate::model::pci::VFIO_PCI_DRIVER_DIR);
        if drv.exists() {
            return Ok(());
        }
        for m in ["vfio-pci", "vfio_iommu_type1"] {
            tracing::info!(module = m, "loading kernel module");
            self.kernel.load_module(m).map_err(|problem| ApplyError::Module { module: m.into(), problem })?;
        }
        if wait_for(&drv) {
            Ok(())
        } else {
            Err(ApplyError::Module {
                module: "vfio-pci".into(),
                problem: format!("loaded, but {} did not appear", drv.display()),
            })
        }
    }

    /// Moves one device to vfio-pci, skipping writes that already hold.
    pub fn bind_one(&mut self, a: PciAddress, writes: &mut usize) -> Result<(), ApplyError> {
        let dev = self.dev(a);
        if self.override_of(a).as_deref() != Some(VFIO_PCI) {
            self.write(dev.join("driver_override"), VFIO_PCI, writes)?;
        }
        match self.driver(a) {
            Some(d) if d == VFIO_PCI => return Ok(()),
            Some(d) => {
                let unbind = self.root.join(format!("sys/bus/pci/drivers/{d}/unbind"));
                self.write(unbind, &a.to_string(), writes)?;
            }
            None => {}
        }
        self.write(self.root.join("sys/bus/pci/drivers_probe"), &a.to_string(), writes)?;
        match self.driver(a) {
            Some(d) if d == VFIO_PCI => Ok(()),
            found => Err(ApplyError::Verify {
                address: a,
                problem: format!(
                    "vfio-pci did not take it (driver now: {}); the kernel log says why (with the IOMMU off the probe fails with EINVAL)",
                    found.as_deref().unwrap_or("none")
                ),
            }),
        }
    }

    /// Gives a device back its original driver: puts back its original `driver_override`
    /// (normally none: a newline clears it), unbinds from vfio-pci and probes again, then checks
    /// the result.
    pub fn restore_one(
        &mut self,
        a: PciAddress,
        to: Option<&str>,
        original_override: Option<&str>,
        writes: &mut usize,
    ) -> Result<(), ApplyError> {
        let dev = self.dev(a);
        if self.override_of(a).as_deref() != original_override {
            self.write(dev.join("driver_override"), original_override.unwrap_or("\n"), writes)?;
        }
        if self.driver(a).as_deref() == Some(VFIO_PCI) {
            self.write(self.root.join("sys/bus/pci/drivers/vfio-pci/unbind"), &a.to_string(), writes)?;
        }
        if self.driver(a).is_none() && to.is_some() {
            self.write(self.root.join("sys/bus/pci/drivers_probe"), &a.to_string(), writes)?;
        }
        let now = self.driver(a);
        if now.as_deref() == to {
            return Ok(());
        }
        // vfio-pci took it again (its id table has the device: `options vfio-pci ids=...`):
        // release it once more and ask the original driver directly.
        if let (Some(VFIO_PCI), Some(want)) = (now.as_deref(), to) {
            if want != VFIO_PCI {
                self.write(self.root.join("sys/bus/pci/drivers/vfio-pci/unbind"), &a.to_string(), writes)?;
            }
        }
        let now = self.driver(a);
        // The probe found another driver first or none: ask the original one directly.
        if let (None, Some(want)) = (&now, to) {
            let bind = self.root.join(format!("sys/bus/pci/drivers/{want}/bind"));
            if bind.exists() {
                self.write(bind, &a.to_string(), writes)?;
                if self.driver(a).as_deref() == Some(want) {
                    return Ok(());
                }
            }
        }
        Err(ApplyError::Verify {
            address: a,
            problem: format!(
                "expected driver {} after restoring, found {}",
                to.unwrap_or("none"),
                self.driver(a).as_deref().unwrap_or("none")
            ),
        })
    }

    fn vfio_node(&self, group: u32) -> Option<String> {
        for name in [group.to_string(), format!("noiommu-{group}")] {
            let p = self.root.join(format!("dev/vfio/{name}"));
            if p.exists() {
                return Some(format!("/dev/vfio/{name}"));
            }
        }
        None
    }

    fn wait_vfio_node(&self, group: u32) -> Option<String> {
        let start = Instant::now();
        loop {
            if let Some(n) = self.vfio_node(group) {
                return Some(n);
            }
            if start.elapsed() > SETTLE {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Carries out a bind plan. Records every device in the state file before the first write;
    /// binds group by group, rolling a group back when one of its devices fails.
    pub fn apply_bind(&mut self, plan: &BindPlan, state: &mut StateGuard) -> Result<Vec<DeviceOutcome>, ApplyError> {
        let mut out: Vec<DeviceOutcome> = Vec::new();
        for d in &plan.devices {
            match &d.action {
                Action::AlreadyBound => {
                    let mut o = DeviceOutcome::new(d.address, "already-bound", None);
                    o.vfio_device = d.iommu_group.and_then(|g| self.vfio_node(g));
                    out.push(o);
                }
                Action::Leave => out.push(DeviceOutcome::new(d.address, "left", None)),
                Action::Refused { reason } => {
                    tracing::warn!(device = %d.address, reason = %reason, "bind refused");
                    out.push(DeviceOutcome::new(d.address, "refused", Some(reason.clone())));
                }
                Action::Bind { .. } => {}
            }
        }
        let groups = plan.groups_to_bind();
        if groups.is_empty() {
            return Ok(out);
        }
        if plan.load_vfio {
            if let Err(e) = self.ensure_vfio() {
                for d in groups.values().flatten() {
                    out.push(DeviceOutcome::new(d.address, "failed", Some(e.to_string())));
                }
                return Ok(out);
            }
        }
        // Record before touching anything; the first record of a device wins.
        let mut changed = false;
        for d in groups.values().flatten() {
            if let Action::Bind { from } = &d.action {
                let resource_name = match &d.role {
                    super::plan::Role::Selected { resource_name, .. } => Some(resource_name.clone()),
                    super::plan::Role::Companion => None,
                };
                let original_override = self.override_of(d.address).filter(|o| o != VFIO_PCI);
                changed |=
                    state.record(d.address, Record { original_driver: from.clone(), original_override, resource_name });
            }
        }
        if changed {
            state.save()?;
        }

        for (g, members) in groups {
            let mut done: Vec<(PciAddress, usize)> = Vec::new();
            let mut failure: Option<(PciAddress, String, usize)> = None;
            for d in &members {
                let mut writes = 0;
                let started = Instant::now();
                match self.bind_one(d.address, &mut writes) {
                    Ok(()) => {
                        tracing::info!(device = %d.address, group = g, writes, elapsed_ms = started.elapsed().as_millis() as u64, "bound to vfio-pci");
                        done.push((d.address, writes));
                    }
                    Err(e) => {
                        tracing::error!(device = %d.address, group = g, error = %e, "bind failed");
                        failure = Some((d.address, e.to_string(), writes));
                        break;
                    }
                }
            }
            if let (Some((failed, why, writes)), Some(in_use)) = (&failure, plan.groups_in_use.get(&g)) {
                // A pod holds a member: giving any member back to a host driver now could crash
                // the host, so the group stays as it is (recorded; `nodeprep unbind` later).
                tracing::error!(device = %failed, group = g, reason = %in_use, "bind failed; not rolled back");
                let mut o = DeviceOutcome::new(*failed, "failed", Some(format!("{why}; not rolled back: {in_use}")));
                o.writes = *writes;
                out.push(o);
                for (a, w) in &done {
                    let mut o = DeviceOutcome::new(
                        *a,
                        "failed",
                        Some(format!("bound, but {failed} in its IOMMU group {g} failed; not rolled back: {in_use}")),
                    );
                    o.writes = *w;
                    out.push(o);
                }
                continue;
            }
            if let Some((failed, why, writes)) = failure {
                // Roll the whole group back: a half-bound group is of no use and may have taken
                // a driver from the host. That includes members an earlier, interrupted run moved
                // (the plan calls them already bound; the state file says they were ours).
                let earlier: Vec<(PciAddress, usize)> = plan
                    .devices
                    .iter()
                    .filter(|d| d.iommu_group == Some(g) && d.action == Action::AlreadyBound)
                    .filter(|d| state.devices.contains_key(&d.address))
                    .map(|d| (d.address, 0))
                    .collect();
                out.retain(|o| !earlier.iter().any(|(a, _)| *a == o.address));
                let mut rolled = Vec::new();
                for (a, w) in earlier.into_iter().chain(done.iter().copied()).chain(std::iter::once((failed, writes))) {
                    let mut w = w;
                    let rec = state.devices.get(&a).cloned();
                    let to = rec.as_ref().and_then(|r| r.original_driver.clone());
                    let ovr = rec.as_ref().and_then(|r| r.original_override.clone());
                    let res = self.restore_one(a, to.as_deref(), ovr.as_deref(), &mut w);
                    let detail = match res {
                        Ok(()) => {
                            state.devices.remove(&a);
                            if a == failed {
                                why.clone()
                            } else {
                                format!("rolled back with its IOMMU group {g}: {failed} failed: {why}")
                            }
                        }
                        Err(e) => format!("{why}; rolling back also failed: {e}"),
                    };
                    let outcome = if a == failed { "failed" } else { "rolled-back" };
                    let mut o = DeviceOutcome::new(a, outcome, Some(detail));
                    o.writes = w;
                    rolled.push(o);
                }
                state.save()?;
                out.extend(rolled);
                continue;
            }
            let node = self.wait_vfio_node(g);
            for (a, w) in done {
                let mut o = DeviceOutcome::new(a, "bound", None);
                o.writes = w;
                if node.is_none() {
                    o.outcome = "failed".into();
                    o.detail = Some(format!("bound to vfio-pci, but /dev/vfio/{g} did not appear"));
                }
                o.vfio_device = node.clone();
                out.push(o);
            }
        }
        out.sort_by_key(|o| o.address);
        Ok(out)
    }

    /// Carries out an unbind plan, forgetting each restored device's record.
    pub fn apply_unbind(
        &mut self,
        plan: &[RestorePlan],
        state: &mut StateGuard,
    ) -> Result<Vec<DeviceOutcome>, ApplyError> {
        let mut out = Vec::new();
        for p in plan {
            let a = p.address;
            let mut writes = 0;
            let o = match &p.action {
                RestoreAction::Refused { reason } => DeviceOutcome::new(a, "refused", Some(reason.clone())),
                RestoreAction::Gone => {
                    state.devices.remove(&a);
                    DeviceOutcome::new(a, "gone", Some("no longer present; record dropped".into()))
                }
                RestoreAction::Forget { driver } => {
                    if self.override_of(a).as_deref() == Some(VFIO_PCI) {
                        self.write(self.dev(a).join("driver_override"), "\n", &mut writes)?;
                    }
                    state.devices.remove(&a);
                    DeviceOutcome::new(
                        a,
                        "forgotten",
                        Some(format!("already on {}", driver.as_deref().unwrap_or("no driver"))),
                    )
                }
                RestoreAction::Restore { to } => match self.restore_one(
                    a,
                    to.as_deref(),
                    state.devices.get(&a).and_then(|r| r.original_override.clone()).as_deref(),
                    &mut writes,
                ) {
                    Ok(()) => {
                        tracing::info!(device = %a, driver = to.as_deref().unwrap_or("none"), writes, "restored");
                        state.devices.remove(&a);
                        DeviceOutcome::new(a, "restored", to.clone())
                    }
                    Err(e) => {
                        tracing::error!(device = %a, error = %e, "restore failed");
                        DeviceOutcome::new(a, "failed", Some(e.to_string()))
                    }
                },
            };
            out.push(DeviceOutcome { writes, ..o });
            state.save()?;
        }
        Ok(out)
    }
}
