//! Real-kernel test harness: boots Debian's kernel in QEMU (TCG) with an emulated Intel IOMMU and
//! real PCI devices, runs a busybox shell script that calls the `nodeprep` under test, and hands
//! the serial console back to the test.
//!
//! Included from `tests/vm.rs` with `mod realkernel;`.
//!
//! The kernel (an ELF `vmlinux`, booted through PVH) and a base initramfs (busybox, the kernel
//! modules) come from `scripts/vm-kernel.sh`, which this harness runs once per test process: the
//! first run installs QEMU and friends with apt-get and downloads the kernel package, later runs
//! find everything in the cache (`$NODEPREP_VM_CACHE`, default `~/.cache/nodeprep-vm`) and take
//! milliseconds. Each boot appends a second cpio archive to the initramfs (the kernel unpacks
//! concatenated archives): `/init`, the scenario script, the `nodeprep` binary with the shared
//! libraries `ldd` names, and any file the test adds with [`Vm::file`].
//!
//! What the guest does before the scenario (the common setup in `/init`): mounts proc, sysfs,
//! devtmpfs and tmpfs on /tmp and /run, loads e1000e, nvme and ext4 (not vfio-pci: that is
//! nodeprep's job), puts an ext2 file system (busybox `mke2fs`) on the first partition of the
//! disk of the NVMe controller with serial [`DISK_SERIAL`] and mounts it at [`DISK_MOUNT`]
//! (section `setup`: `disk_pci`, `disk`, `partition`, `mount`, `kernel`), then lowers the console
//! log level so kernel messages do not land in the middle of the scenario's output. After the
//! scenario it prints the kernel log (section `dmesg`) and powers off. The guest's `PATH` has
//! /usr/local/{sbin,bin} first; a file added with [`Vm::executable`] there can be called by name.
//!
//! A failed assertion while a [`VmOutput`] is alive prints its console; every boot's console is
//! also saved as `target/tmp/nodeprep-vm/<test>-<machine>.log`.
//!
//! The scenario is a busybox `sh` script, sourced in a subshell, with these helpers:
//! - `section NAME COMMAND [ARG...]`: runs the command, prints its standard output between
//!   `==BEGIN NAME==` and `==END NAME==` ([`VmOutput::section`]), its exit status as
//!   `==STATUS NAME N==` ([`VmOutput::status`]) and its standard error, when there is any, as
//!   section `NAME.stderr`. Returns 0 whatever the command returned.
//! - `iommu_groups`: one `GROUP ADDRESS` line per PCI function in `/sys/kernel/iommu_groups`.
//! - `pci_by_serial SERIAL`: the PCI address of the NVMe controller with that serial.
//!
//! A scenario fails the test only through what the test then asserts; a guest that does not come
//! up, a failed common setup, or a boot that exceeds the timeout panics here, with the serial log.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The serial number of the NVMe controller that has SR-IOV (2 VFs).
pub const SRIOV_SERIAL: &str = "nodeprep-sriov";
/// The serial number of the NVMe controller whose disk holds the mounted file system.
pub const DISK_SERIAL: &str = "nodeprep-disk";
/// Where the common setup mounts the disk's first partition.
pub const DISK_MOUNT: &str = "/mnt/root";
/// How long one boot may take, setup, scenario and power-off included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// PCI ids of the emulated devices.
pub const E1000E_ID: (&str, &str) = ("8086", "10d3");
pub const EDU_ID: (&str, &str) = ("1234", "11e8");
pub const NVME_ID: (&str, &str) = ("1b36", "0010");

/// The addresses the Iommu machine gives its devices (asserted by the tests, so a change in the
/// harness shows up as a clear failure rather than a config that selects nothing).
pub const E1000E: &str = "0000:01:00.0";
pub const EDU: &str = "0000:02:00.0";
pub const NVME_PF: &str = "0000:03:00.0";
pub const NVME_VF0: &str = "0000:03:00.1";
pub const DISK: &str = "0000:04:00.0";

/// e1000e and edu by id, the first NVMe VF by address, and the NVMe controller whose disk is
/// mounted (which must be refused).
pub const BIND_CONFIG: &str = r#"
devices:
  - resourceName: nodeprep.io/e1000e
    selectors: {vendors: ["8086"], devices: ["10d3"]}
  - resourceName: nodeprep.io/edu
    selectors: {vendors: ["1234"], devices: ["11e8"]}
  - resourceName: nodeprep.io/nvme_vf
    selectors: {pciAddresses: ["0000:03:00.1"]}
  - resourceName: nodeprep.io/nvme_disk
    selectors: {pciAddresses: ["0000:04:00.0"]}
"#;

/// The kernel command line every boot gets (before [`Vm::kernel_arg`]s).
pub const KERNEL_ARGS: &str = "console=ttyS0 panic=-1 intel_iommu=on iommu=pt quiet";

/// The emulated machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// q35 with an Intel IOMMU (`intel-iommu,intremap=on`, `kernel-irqchip=split`): every device
    /// sits behind its own PCIe root port, so each gets its own IOMMU group; the ICH9 functions
    /// at 00:1f.* share one. Devices: e1000e, edu, an NVMe controller with SR-IOV (2 VFs, in an
    /// `nvme-subsys`) and an NVMe controller with a 16 MiB disk.
    Iommu,
    /// The same q35 machine and devices without an IOMMU: no groups. The kernel still gets
    /// `intel_iommu=on` (as a node whose firmware has VT-d off would).
    NoIommu,
}

/// Files the harness found or built once per test process.
#[derive(Debug, Clone)]
struct Kernel {
    version: String,
    vmlinux: PathBuf,
    base_cpio: PathBuf,
}

/// One boot: a machine, extra files for the guest, extra kernel arguments.
#[derive(Debug, Clone)]
pub struct Vm {
    machine: Machine,
    files: Vec<(String, Vec<u8>, u32)>,
    kernel_args: Vec<String>,
    timeout: Duration,
}

/// What a boot printed on its serial console.
/// When a test panics while holding one (a failed assertion), its serial console is printed to
/// standard error: a passing test's log stays short.
#[derive(Debug)]
pub struct VmOutput {
    /// The whole console, carriage returns removed.
    pub serial: String,
    /// QEMU's standard error (warnings).
    pub qemu_stderr: String,
    pub machine: Machine,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
    /// The exit status of the scenario script.
    pub script_status: i32,
}

/// Boots `machine`, runs `script` after the common setup, returns the console.
pub fn run(machine: Machine, script: &str) -> VmOutput {
    Vm::new(machine).run(script)
}

impl Vm {
    pub fn new(machine: Machine) -> Vm {
        Vm { machine, files: Vec::new(), kernel_args: Vec::new(), timeout: DEFAULT_TIMEOUT }
    }

    /// Puts a file (mode 0644) at `guest_path` (absolute) in the guest; parent directories are
    /// created. A file the harness itself provides (`/init`, `/bin/nodeprep`) cannot be replaced.
    pub fn file(self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Vm {
        self.file_with_mode(guest_path, contents, 0o644)
    }

    /// Puts an executable file (mode 0755) at `guest_path` in the guest.
    pub fn executable(self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Vm {
        self.file_with_mode(guest_path, contents, 0o755)
    }

    pub fn file_with_mode(mut self, guest_path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Vm {
        assert!(guest_path.starts_with('/'), "guest path {guest_path:?} must be absolute");
        self.files.push((guest_path.to_owned(), contents.into(), mode & 0o7777));
        self
    }

    /// Appends an argument to the kernel command line ([`KERNEL_ARGS`]).
    pub fn kernel_arg(mut self, arg: &str) -> Vm {
        self.kernel_args.push(arg.to_owned());
        self
    }

    /// Replaces [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Vm {
        self.timeout = timeout;
        self
    }

    /// Boots, runs `script` (busybox sh) after the common setup, powers off. Panics, with the
    /// serial log, when the guest cannot be prepared or booted, the common setup fails, or the
    /// boot does not finish within the timeout.
    pub fn run(self, script: &str) -> VmOutput {
        let kernel = match kernel() {
            Ok(k) => k,
            Err(e) => panic!("real-kernel VM: cannot prepare the kernel and base initramfs:\n{e}"),
        };
        // One VM at a time in this process: two TCG guests on a small machine only slow each
        // other down (nextest runs them one at a time anyway, see .config/nextest.toml).
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

        let dir = tempfile::Builder::new().prefix("nodeprep-vm-").tempdir().expect("create a temp dir for the VM");
        let initrd = dir.path().join("initrd.cpio");
        if let Err(e) = self.write_initrd(kernel, script, &initrd) {
            panic!("real-kernel VM: cannot build the initramfs {}: {e}", initrd.display());
        }
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, disk_image()).unwrap_or_else(|e| panic!("cannot write {}: {e}", disk.display()));

        let args = self.qemu_args(kernel, &initrd, &disk);
        eprintln!("real-kernel VM: qemu-system-x86_64 {}", args.join(" "));
        let out = boot(self.machine, &args, self.timeout);
        let log = save_log(&out);
        eprintln!(
            "real-kernel VM: {:?} boot took {:.1} s (kernel {}, scenario exit status {}, console log {})",
            self.machine,
            out.elapsed.as_secs_f64(),
            kernel.version,
            out.script_status,
            log
        );
        out
    }

    fn qemu_args(&self, kernel: &Kernel, initrd: &Path, disk: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.extend(s.split(' ').map(str::to_owned));
        push("-accel tcg");
        match self.machine {
            Machine::Iommu => push("-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on"),
            Machine::NoIommu => push("-machine q35"),
        }
        push("-m 512M -smp 1 -cpu max -nodefaults -display none -serial stdio -no-reboot");
        // Each device behind its own root port: its own IOMMU group.
        push("-netdev user,id=net0,restrict=on");
        push("-device pcie-root-port,id=rp1,chassis=1,slot=1 -device e1000e,bus=rp1,netdev=net0");
        push("-device pcie-root-port,id=rp2,chassis=2,slot=2 -device edu,bus=rp2");
        push("-device pcie-root-port,id=rp3,chassis=3,slot=3 -device nvme-subsys,id=subsys0,nqn=nodeprep-sriov");
        a.push("-device".to_owned());
        a.push(format!(
            "nvme,serial={SRIOV_SERIAL},subsys=subsys0,bus=rp3,sriov_max_vfs=2,sriov_vq_flexible=4,\
             sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=3"
        ));
        a.push("-drive".to_owned());
        a.push(format!("file={},if=none,id=disk0,format=raw", disk.display()));
        a.push("-device".to_owned());
        a.push("pcie-root-port,id=rp4,chassis=4,slot=4".to_owned());
        a.push("-device".to_owned());
        a.push(format!("nvme,serial={DISK_SERIAL},drive=disk0,bus=rp4"));
        a.push("-kernel".to_owned());
        a.push(kernel.vmlinux.display().to_string());
        a.push("-initrd".to_owned());
        a.push(initrd.display().to_string());
        a.push("-append".to_owned());
        let mut cmdline = KERNEL_ARGS.to_owned();
        for arg in &self.kernel_args {
            cmdline.push(' ');
            cmdline.push_str(arg);
        }
        a.push(cmdline);
        a
    }

    /// The base initramfs followed by this boot's overlay archive.
    fn write_initrd(&self, kernel: &Kernel, script: &str, path: &Path) -> Result<(), String> {
        let mut data = std::fs::read(&kernel.base_cpio)
            .map_err(|e| format!("cannot read the base initramfs {}: {e}", kernel.base_cpio.display()))?;
        let mut cpio = Cpio::default();
        cpio.char_device("/dev/console", 0o600, 5, 1);
        let init = INIT.replace("DISK_SERIAL", DISK_SERIAL).replace("DISK_MOUNT", DISK_MOUNT);
        cpio.file("/init", init.as_bytes(), 0o755);
        cpio.file("/scenario.sh", script.as_bytes(), 0o644);
        let bin = Path::new(env!("CARGO_BIN_EXE_nodeprep"));
        // Without its debug info a test build is a quarter of the size, and the guest unpacks
        // the initramfs a few seconds faster under TCG. Symbols stay (backtraces keep names).
        let stripped = path.with_file_name("nodeprep");
        let strip_ok = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(bin)
            .output()
            .is_ok_and(|o| o.status.success());
        let source = if strip_ok { stripped.as_path() } else { bin };
        let contents = std::fs::read(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        cpio.file("/bin/nodeprep", &contents, 0o755);
        for lib in shared_libraries(bin)? {
            let contents = std::fs::read(&lib).map_err(|e| format!("cannot read {}: {e}", lib.display()))?;
            cpio.file(&lib.display().to_string(), &contents, 0o755);
        }
        for (guest_path, contents, mode) in &self.files {
            if ["/init", "/scenario.sh", "/bin/nodeprep"].contains(&guest_path.as_str()) {
                return Err(format!("{guest_path} is provided by the harness"));
            }
            cpio.file(guest_path, contents, *mode);
        }
        data.extend_from_slice(&cpio.finish());
        std::fs::write(path, data).map_err(|e| format!("cannot write: {e}"))
    }
}

impl Drop for VmOutput {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- serial console of the {:?} guest -----\n{}----- end of serial console -----",
                self.machine, self.serial
            );
        }
    }
}

/// Writes the console to `<target>/tmp/nodeprep-vm/<test>-<machine>.log` (the last boot of each);
/// returns where, or why not.
fn save_log(out: &VmOutput) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nodeprep-vm");
    let test = std::thread::current().name().unwrap_or("main").replace("::", "-");
    let path = dir.join(format!("{test}-{:?}.log", out.machine));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &out.serial)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("not saved: {}: {e}", path.display()),
    }
}

impl VmOutput {
    /// The text between `==BEGIN name==` and `==END name==` (lines, each ending in a newline).
    /// Panics when there is no such section (the console is printed as the panic unwinds).
    pub fn section(&self, name: &str) -> &str {
        match self.try_section(name) {
            Some(s) => s,
            None => panic!(
                "no section {name:?} on the {:?} guest's console (scenario exit status {}; console below)",
                self.machine, self.script_status
            ),
        }
    }

    /// The section, if the guest printed it (the first one of that name).
    pub fn try_section(&self, name: &str) -> Option<&str> {
        let begin = format!("==BEGIN {name}==\n");
        let end = format!("==END {name}==\n");
        let start = if self.serial.starts_with(&begin) {
            begin.len()
        } else {
            self.serial.find(&format!("\n{begin}"))? + 1 + begin.len()
        };
        let rest = &self.serial[start..];
        let stop = if rest.starts_with(&end) { 0 } else { rest.find(&format!("\n{end}"))? + 1 };
        Some(&rest[..stop])
    }

    /// The section parsed as JSON; panics with the section and the serial log when it is not.
    pub fn json(&self, name: &str) -> serde_json::Value {
        let text = self.section(name);
        serde_json::from_str(text).unwrap_or_else(|e| panic!("section {name:?} is not JSON ({e}):\n{text}"))
    }

    /// The exit status of the command a `section NAME ...` call ran.
    pub fn status(&self, name: &str) -> i32 {
        let prefix = format!("==STATUS {name} ");
        self.serial
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|r| r.strip_suffix("==")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exit status for section {name:?} on the console (console below)"))
    }

    /// A `KEY=VALUE` line of a section.
    pub fn value(&self, section: &str, key: &str) -> &str {
        let text = self.section(section);
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {key}= in section {section:?}:\n{text}"))
    }

    /// What the common setup found: `disk_pci`, `disk`, `partition`, `mount`.
    pub fn setup(&self, key: &str) -> &str {
        self.value("setup", key)
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel, once per process.

fn kernel() -> Result<&'static Kernel, String> {
    static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();
    KERNEL.get_or_init(prepare_kernel).as_ref().map_err(Clone::clone)
}

fn prepare_kernel() -> Result<Kernel, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vm-kernel.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "`bash {}` failed ({}):\n--- stderr ---\n{stderr}--- stdout ---\n{stdout}",
            script.display(),
            out.status
        ));
    }
    let get = |key: &str| {
        stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::to_owned)
            .ok_or_else(|| format!("`bash {}` printed no {key}=:\n{stdout}{stderr}", script.display()))
    };
    let kernel = Kernel {
        version: get("NODEPREP_VM_KERNEL_VERSION")?,
        vmlinux: get("NODEPREP_VM_VMLINUX")?.into(),
        base_cpio: get("NODEPREP_VM_BASE_CPIO")?.into(),
    };
    eprintln!(
        "real-kernel VM: {} ready in {:.1} s (vmlinux {}, base initramfs {})",
        script.display(),
        started.elapsed().as_secs_f64(),
        kernel.vmlinux.display(),
        kernel.base_cpio.display()
    );
    Ok(kernel)
}

/// The shared libraries and the ELF interpreter `ldd` names for a binary; none for a static one.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd").arg(bin).output().map_err(|e| format!("cannot run ldd {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static build needs nothing else.
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(format!("ldd {} failed ({}): {all}", bin.display(), out.status));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
        // "linux-vdso.so.1 (0x...)" (in the kernel, no file).
        let path = match line.split_once(" => ") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => return Err(format!("ldd {}: {line}", bin.display())),
            _ => {}
        }
    }
    Ok(libs)
}

// ---------------------------------------------------------------------------------------------
// Booting.

fn boot(machine: Machine, args: &[String], timeout: Duration) -> VmOutput {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("real-kernel VM: cannot start qemu-system-x86_64 {}: {e}", args.join(" ")));
    let serial = Arc::new(Mutex::new(Vec::<u8>::new()));
    let stderr = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers = [
        spawn_reader(child.stdout.take().expect("qemu stdout is piped"), Arc::clone(&serial)),
        spawn_reader(child.stderr.take().expect("qemu stderr is piped"), Arc::clone(&stderr)),
    ];
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).replace('\r', "")
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "real-kernel VM ({machine:?}) did not power off within {} s\n--- qemu-system-x86_64 {}\n\
                     --- qemu stderr ---\n{}\n--- serial console ---\n{}",
                    timeout.as_secs(),
                    args.join(" "),
                    text(&stderr),
                    text(&serial)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("real-kernel VM: waiting for qemu failed: {e}"),
        }
    };
    let elapsed = started.elapsed();
    for r in readers {
        let _ = r.join();
    }
    let serial = text(&serial);
    let qemu_stderr = text(&stderr);
    let fail = |what: &str| -> ! {
        panic!(
            "real-kernel VM ({machine:?}): {what} (qemu {status}, after {:.1} s)\n--- qemu-system-x86_64 {}\n\
             --- qemu stderr ---\n{qemu_stderr}\n--- serial console ---\n{serial}",
            elapsed.as_secs_f64(),
            args.join(" ")
        )
    };
    if !status.success() {
        fail("qemu failed");
    }
    if let Some(line) = serial.lines().find(|l| l.starts_with("==SETUP-FAILED")) {
        fail(&format!("the common setup in /init failed: {line}"));
    }
    if !serial.lines().any(|l| l == "==SETUP-DONE==") {
        fail("the guest never finished the common setup (no ==SETUP-DONE== line)");
    }
    let Some(script_status) = serial
        .lines()
        .find_map(|l| l.strip_prefix("==SCENARIO-EXIT ").and_then(|r| r.strip_suffix("==")))
        .and_then(|n| n.parse().ok())
    else {
        fail("the scenario did not finish (no ==SCENARIO-EXIT N== line)");
    };
    VmOutput { serial, qemu_stderr, machine, elapsed, script_status }
}

fn spawn_reader(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A 16 MiB disk with an MBR and one Linux partition from 1 MiB to the end; the guest formats it.
fn disk_image() -> Vec<u8> {
    const SECTORS: u32 = 32 * 1024;
    const START: u32 = 2048;
    let mut img = vec![0u8; SECTORS as usize * 512];
    let entry = &mut img[446..462];
    entry[0] = 0x00; // not bootable
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: use LBA
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&START.to_le_bytes());
    entry[12..16].copy_from_slice(&(SECTORS - START).to_le_bytes());
    img[440..444].copy_from_slice(&0x6e6f_6465_u32.to_le_bytes()); // disk signature
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}

// ---------------------------------------------------------------------------------------------
// cpio (newc) writer for the per-boot overlay archive.

#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        let size = u32::try_from(size).expect("initramfs member under 4 GiB");
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        for v in [self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0] {
            write!(h, "{v:08x}").expect("write to a String");
        }
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let name = prefix.clone();
                self.header(&name, 0o040_755, 0, (0, 0));
            }
        }
    }

    fn file(&mut self, path: &str, contents: &[u8], mode: u32) {
        self.parents(path);
        self.header(path.trim_start_matches('/'), 0o100_000 | mode, contents.len(), (0, 0));
        self.out.extend_from_slice(contents);
        self.pad();
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.header(path.trim_start_matches('/'), 0o020_000 | mode, 0, (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        // The kernel wants archives padded to 512 bytes when another one follows.
        while self.out.len() % 512 != 0 {
            self.out.push(0);
        }
        self.out
    }
}

// ---------------------------------------------------------------------------------------------
// The guest's /init (DISK_SERIAL and DISK_MOUNT are replaced by the constants).

const INIT: &str = r#"#!/bin/sh
# nodeprep real-kernel test guest: common setup, the scenario, power-off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /var/lib /etc DISK_MOUNT
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

section() {
  _name=$1
  shift
  "$@" >/tmp/.section.out 2>/tmp/.section.err
  _rc=$?
  echo "==BEGIN $_name=="
  cat /tmp/.section.out
  [ -s /tmp/.section.out ] && [ -n "$(tail -c 1 /tmp/.section.out)" ] && echo
  echo "==END $_name=="
  echo "==STATUS $_name $_rc=="
  if [ -s /tmp/.section.err ]; then
    echo "==BEGIN $_name.stderr=="
    cat /tmp/.section.err
    [ -n "$(tail -c 1 /tmp/.section.err)" ] && echo
    echo "==END $_name.stderr=="
  fi
  rm -f /tmp/.section.out /tmp/.section.err
  return 0
}

iommu_groups() {
  for _d in /sys/kernel/iommu_groups/*/devices/*; do
    [ -e "$_d" ] || continue
    _g=${_d%/devices/*}
    echo "${_g##*/} ${_d##*/}"
  done
}

pci_by_serial() {
  for _c in /sys/class/nvme/*; do
    [ -r "$_c/serial" ] || continue
    read -r _s <"$_c/serial"
    if [ "$_s" = "$1" ]; then
      _p=$(readlink -f "$_c/device")
      echo "${_p##*/}"
      return 0
    fi
  done
  return 1
}

setup_failed() {
  echo "==SETUP-FAILED $*=="
  section dmesg dmesg
  poweroff -f
  sleep 60
}

for m in e1000e nvme ext4; do
  modprobe "$m" || setup_failed "modprobe $m"
done

# The disk: the first partition of the namespace of the controller with serial DISK_SERIAL.
disk_pci= disk= part=
i=0
while :; do
  disk_pci=$(pci_by_serial DISK_SERIAL)
  if [ -n "$disk_pci" ]; then
    for b in /sys/class/block/*; do
      case "$(readlink -f "$b")" in */"$disk_pci"/*) ;; *) continue ;; esac
      if [ -f "$b/partition" ]; then part=${b##*/}; else disk=${b##*/}; fi
    done
  fi
  [ -n "$part" ] && [ -b "/dev/$part" ] && break
  i=$((i + 1))
  [ "$i" -lt 300 ] || setup_failed "no partition on the disk of NVMe controller DISK_SERIAL after 30 s (pci '$disk_pci', disk '$disk')"
  sleep 0.1
done
mke2fs "/dev/$part" >/tmp/mkfs.log 2>&1 || setup_failed "mke2fs /dev/$part: $(cat /tmp/mkfs.log)"
mount -t ext2 "/dev/$part" DISK_MOUNT || setup_failed "mount /dev/$part DISK_MOUNT"
echo "==BEGIN setup=="
echo "disk_pci=$disk_pci"
echo "disk=$disk"
echo "partition=$part"
echo "mount=DISK_MOUNT"
echo "kernel=$(uname -r)"
echo "==END setup=="
echo "==SETUP-DONE=="

# Only emergencies on the console from here: the scenario's output stays parseable. The whole
# kernel log is printed at the end.
dmesg -n 1
( . /scenario.sh )
echo "==SCENARIO-EXIT $?=="
section dmesg dmesg
poweroff -f
sleep 60
"#;
