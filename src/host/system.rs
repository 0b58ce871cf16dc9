//! Reads the host facts that are not about PCI functions — CPU, kernel command line, IOMMU units
//! and groups, `/dev/kvm`, kernel modules, vfio, huge pages, memory — into
//! [`crate::model::system::SystemFacts`].
//!
//! Only an unreadable `proc/cpuinfo` is an error (it means the host root is wrong). Any other
//! missing or garbage file becomes a warning naming the path and what was wrong, and the fact it
//! would have given stays `None`/absent. Nothing here panics on host data.
//!
//! The parsers are small and written here rather than taken from procfs-core, on purpose: its
//! `KernelModules` refuses the whole file for one bad line, `Meminfo` needs some twenty fields a
//! fixture (or an unusual kernel) may not have, `KernelCmdline` keeps the trailing newline in the
//! last argument and ignores quotes, and `CpuInfo` counts a CPU even when there is no
//! `processor` line and silently drops lines that are not UTF-8.

use std::collections::HashSet;
use std::fmt::Display;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::host::root::{HostError, HostRoot};
use crate::model::system::{
    CpuFacts, CpuFlags, HugepageFacts, HugepageSize, IommuFacts, KernelArgs, KernelFacts, KvmDevice, MemoryFacts,
    ModuleFacts, ModuleState, NestedVirt, NodeHugepages, SystemFacts, VfioFacts, WATCHED_MODULES, kernel_param_name,
};

nix::ioctl_none!(
    /// `KVM_GET_API_VERSION` (`_IO(KVMIO, 0x00)`, KVMIO = 0xAE): returns the API version, 12.
    kvm_get_api_version,
    0xAE,
    0x00
);

/// Reads every non-PCI fact from the host root.
///
/// Fails only when `proc/cpuinfo` cannot be read at all: then the root is not a host's.
pub fn read_system(root: &HostRoot) -> Result<SystemFacts, HostError> {
    let mut w = Warnings::default();
    let cpu = read_cpu(root, &mut w)?;
    let kernel = read_kernel(root, &mut w);
    let iommu = read_iommu(root, &mut w);
    let kvm = read_kvm(root);
    if let KvmDevice::Unknown { error } = &kvm {
        w.0.push(error.clone());
    }
    let modules = read_modules(root, &mut w);
    let vfio = read_vfio(root, kernel.release.as_deref(), &modules, &mut w);
    let numa_nodes = read_numa_nodes(root, &mut w);
    let mut hugepages = read_hugepages(root, &numa_nodes, &mut w);
    let meminfo = read_meminfo(root, !hugepages.sizes.is_empty(), &mut w);
    hugepages.default_size_kb = meminfo.hugepagesize_kb;
    Ok(SystemFacts {
        cpu,
        kernel,
        iommu,
        kvm,
        modules,
        vfio,
        hugepages,
        memory: MemoryFacts { total_kb: meminfo.mem_total_kb, numa_nodes },
        warnings: w.0,
    })
}

/// Problems found while reading, each `<path>: <what was wrong>`.
#[derive(Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn add(&mut self, path: &Path, problem: impl Display) {
        self.0.push(format!("{}: {problem}", path.display()));
    }

    fn error(&mut self, e: &HostError) {
        self.0.push(e.to_string());
    }
}

/// A file's bytes; `Ok(None)` when it does not exist.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, HostError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io("read", path, e)),
    }
}

/// Bytes as text; bytes that are not UTF-8 become U+FFFD and a warning.
fn decode(path: &Path, bytes: Vec<u8>, w: &mut Warnings) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            w.add(path, "not UTF-8 text; read with the invalid bytes replaced");
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    }
}

/// A text file. `None` when it is missing (with a warning when `warn_if_missing`) or unreadable
/// (always with a warning).
fn read_text(root: &HostRoot, rel: &str, warn_if_missing: bool, w: &mut Warnings) -> Option<String> {
    let path = root.join(rel);
    match read_bytes(&path) {
        Ok(Some(bytes)) => Some(decode(&path, bytes, w)),
        Ok(None) => {
            if warn_if_missing {
                w.add(&path, "not found");
            }
            None
        }
        Err(e) => {
            w.error(&e);
            None
        }
    }
}

/// A directory's names; empty (with a warning) when it cannot be read, empty when missing.
fn list_dir(root: &HostRoot, rel: &str, w: &mut Warnings) -> Vec<String> {
    root.list_dir(rel).unwrap_or_else(|e| {
        w.error(&e);
        Vec::new()
    })
}

/// A sysfs count (`nr_hugepages`): `None` with a warning when missing or not a number.
fn read_count(root: &HostRoot, rel: &str, w: &mut Warnings) -> Option<u64> {
    let text = read_text(root, rel, true, w)?;
    let value = text.trim();
    match value.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            w.add(&root.join(rel), format_args!("expected a count, found {:?}", shorten(value)));
            None
        }
    }
}

/// At most 80 characters of host text, for messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// CPU

fn read_cpu(root: &HostRoot, w: &mut Warnings) -> Result<CpuFacts, HostError> {
    let path = root.join("proc/cpuinfo");
    let bytes = fs::read(&path).map_err(|e| HostError::io("read", &path, e))?;
    let text = decode(&path, bytes, w);
    let cpu = parse_cpuinfo(&text);
    if cpu.processors == 0 {
        w.add(&path, "no `processor` entries");
    }
    if cpu.flags.is_none() {
        w.add(&path, "no `flags` line for CPU 0: CPU features (vmx, svm, sse4_2, ...) are unknown");
    }
    Ok(cpu)
}

/// CPU 0's vendor, model and flags, and the number of `processor` entries. Lines before the
/// first `processor` line (a header some architectures print) count as CPU 0's.
pub fn parse_cpuinfo(text: &str) -> CpuFacts {
    let mut cpu = CpuFacts::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        if key == "processor" {
            cpu.processors += 1;
            continue;
        }
        if cpu.processors > 1 {
            continue;
        }
        match key {
            "vendor_id" if cpu.vendor_id.is_none() => cpu.vendor_id = Some(value.to_owned()),
            "model name" if cpu.model_name.is_none() => cpu.model_name = Some(value.to_owned()),
            "flags" if cpu.flags.is_none() => cpu.flags = Some(parse_flags(value)),
            _ => {}
        }
    }
    cpu
}

fn parse_flags(flags: &str) -> CpuFlags {
    let mut f = CpuFlags::default();
    for flag in flags.split_whitespace() {
        match flag {
            "vmx" => f.vmx = true,
            "svm" => f.svm = true,
            "hypervisor" => f.hypervisor = true,
            "sse4_2" => f.sse4_2 = true,
            "pdpe1gb" => f.pdpe1gb = true,
            _ => {}
        }
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Kernel

fn read_kernel(root: &HostRoot, w: &mut Warnings) -> KernelFacts {
    let release = read_text(root, "proc/sys/kernel/osrelease", true, w).and_then(|s| {
        let s = s.trim();
        if s.is_empty() {
            w.add(&root.join("proc/sys/kernel/osrelease"), "empty");
            None
        } else {
            Some(s.to_owned())
        }
    });
    let cmdline = read_text(root, "proc/cmdline", true, w).map(|s| s.trim_end().to_owned());
    let args = cmdline.as_deref().map(parse_cmdline).unwrap_or_default();
    KernelFacts { release, cmdline, args }
}

/// The arguments nodeprep cares about. Splits like the kernel: white space outside double
/// quotes separates arguments, quotes are dropped, a bare `--` ends the kernel's part.
pub fn parse_cmdline(cmdline: &str) -> KernelArgs {
    let mut args = KernelArgs::default();
    for token in split_cmdline(cmdline) {
        if token == "--" {
            break;
        }
        let Some((name, value)) = token.split_once('=') else { continue };
        let list = match kernel_param_name(name).as_str() {
            "intel_iommu" => &mut args.intel_iommu,
            "amd_iommu" => &mut args.amd_iommu,
            "iommu" => &mut args.iommu,
            "iommu.passthrough" => &mut args.iommu_passthrough,
            "vfio_pci.ids" => &mut args.vfio_pci_ids,
            "hugepagesz" => &mut args.hugepagesz,
            "hugepages" => &mut args.hugepages,
            "default_hugepagesz" => &mut args.default_hugepagesz,
            _ => continue,
        };
        list.push(value.to_owned());
        args.in_order.push(token.clone());
    }
    args
}

fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    tokens.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        tokens.push(current);
    }
    tokens
}

// ---------------------------------------------------------------------------------------------
// IOMMU

fn read_iommu(root: &HostRoot, w: &mut Warnings) -> IommuFacts {
    let units = list_dir(root, "sys/class/iommu", w);
    let groups = list_dir(root, "sys/kernel/iommu_groups", w);
    let group_count = groups.iter().filter(|g| g.parse::<u32>().is_ok()).count();
    if group_count != groups.len() {
        w.add(&root.join("sys/kernel/iommu_groups"), "entries that are not group numbers were ignored");
    }
    IommuFacts { units, group_count }
}

// ---------------------------------------------------------------------------------------------
// KVM

/// What `dev/kvm` is. A character device is opened read-write (`O_RDWR | O_CLOEXEC`, plus
/// `O_NONBLOCK` so that some other character device put there cannot hang the open) and asked
/// for its API version.
fn read_kvm(root: &HostRoot) -> KvmDevice {
    let path = root.join("dev/kvm");
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return KvmDevice::Missing,
        Err(e) => return KvmDevice::Unknown { error: HostError::io("stat", &path, e).to_string() },
    };
    if !meta.file_type().is_char_device() {
        return KvmDevice::NotCharDevice;
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            let error = HostError::io("open read-write", &path, e).to_string();
            return KvmDevice::CharDevice { api_version: None, error: Some(error) };
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; `file` keeps the
    // descriptor open for the duration of the call.
    match unsafe { kvm_get_api_version(file.as_raw_fd()) } {
        Ok(v) => KvmDevice::CharDevice { api_version: Some(v), error: None },
        Err(errno) => KvmDevice::CharDevice {
            api_version: None,
            error: Some(format!("ioctl KVM_GET_API_VERSION {}: {errno}", path.display())),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Modules

fn read_modules(root: &HostRoot, w: &mut Warnings) -> ModuleFacts {
    let path = root.join("proc/modules");
    let text = match read_bytes(&path) {
        Ok(Some(bytes)) => Some(decode(&path, bytes, w)),
        Ok(None) => {
            w.add(&path, "not found (a kernel without loadable modules?); only sys/module consulted");
            None
        }
        Err(e) => {
            w.error(&e);
            None
        }
    };
    let loaded = match &text {
        Some(text) => {
            let (names, bad) = parse_proc_modules(text);
            for (line_no, line) in bad {
                w.add(
                    &path,
                    format_args!(
                        "line {line_no}: expected 6 fields (name size refcount users state address), \
                         skipped: {:?}",
                        shorten(line)
                    ),
                );
            }
            names
        }
        None => HashSet::new(),
    };
    let modules = WATCHED_MODULES
        .iter()
        .map(|&name| ModuleState {
            name: name.to_owned(),
            loaded: loaded.contains(name),
            in_sysfs: root.join(format!("sys/module/{name}")).is_dir(),
        })
        .collect();
    ModuleFacts { proc_modules_read: text.is_some(), modules, nested: read_nested(root, w) }
}

/// Module names of `proc/modules`, and the lines (1-based number, text) that were not a module
/// line. Empty lines are ignored.
pub fn parse_proc_modules(text: &str) -> (HashSet<String>, Vec<(usize, &str)>) {
    let mut names = HashSet::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 {
            bad.push((i + 1, line));
            continue;
        }
        names.insert(fields[0].to_owned());
    }
    (names, bad)
}

fn read_nested(root: &HostRoot, w: &mut Warnings) -> Option<NestedVirt> {
    for module in ["kvm_intel", "kvm_amd"] {
        let rel = format!("sys/module/{module}/parameters/nested");
        let Some(text) = read_text(root, &rel, false, w) else { continue };
        let value = text.trim();
        let enabled = match value {
            "Y" | "y" | "1" => true,
            "N" | "n" | "0" => false,
            _ => {
                w.add(&root.join(&rel), format_args!("expected Y, N, 1 or 0, found {:?}", shorten(value)));
                return None;
            }
        };
        return Some(NestedVirt { module: module.to_owned(), value: value.to_owned(), enabled });
    }
    None
}

// ---------------------------------------------------------------------------------------------
// vfio

fn read_vfio(root: &HostRoot, release: Option<&str>, modules: &ModuleFacts, w: &mut Warnings) -> VfioFacts {
    VfioFacts {
        pci_loaded: modules.present("vfio_pci") || root.join(crate::model::pci::VFIO_PCI_DRIVER_DIR).is_dir(),
        pci_loadable: vfio_pci_loadable(root, release, w),
        container_device: root.exists("dev/vfio/vfio"),
        iommufd_device: root.exists("dev/iommu"),
    }
}

/// Whether `lib/modules/<release>` (or `usr/lib/modules/<release>`) has vfio-pci, as a module
/// (`modules.dep`, `modules.alias`) or built in (`modules.builtin`). `None` when none of those
/// files could be read.
fn vfio_pci_loadable(root: &HostRoot, release: Option<&str>, w: &mut Warnings) -> Option<bool> {
    let release = release?;
    let Some(dir) = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| format!("{base}/{release}"))
        .find(|dir| root.join(dir).is_dir())
    else {
        w.add(
            &root.join(format!("lib/modules/{release}")),
            "not found (nor under usr/lib/modules): cannot tell whether vfio-pci can be loaded",
        );
        return None;
    };
    let mut read_any = false;
    for (file, has) in [
        ("modules.dep", dep_has_vfio_pci as fn(&str) -> bool),
        ("modules.builtin", builtin_has_vfio_pci),
        ("modules.alias", alias_has_vfio_pci),
    ] {
        let Some(text) = read_text(root, &format!("{dir}/{file}"), false, w) else { continue };
        read_any = true;
        if has(&text) {
            return Some(true);
        }
    }
    if !read_any {
        w.add(
            &root.join(&dir),
            "no modules.dep, modules.builtin or modules.alias: cannot tell whether vfio-pci can be loaded",
        );
        return None;
    }
    Some(false)
}

/// `kernel/drivers/vfio/pci/vfio-pci.ko.xz` and the like (any compression, `-` or `_`).
fn is_vfio_pci_ko(path: &str) -> bool {
    let base = kernel_param_name(path.trim().rsplit('/').next().unwrap_or_default());
    base == "vfio_pci.ko" || base.starts_with("vfio_pci.ko.")
}

fn dep_has_vfio_pci(text: &str) -> bool {
    text.lines().any(|l| l.split_once(':').is_some_and(|(module, _)| is_vfio_pci_ko(module)))
}

fn builtin_has_vfio_pci(text: &str) -> bool {
    text.lines().any(is_vfio_pci_ko)
}

/// `alias <pattern> vfio_pci` lines.
fn alias_has_vfio_pci(text: &str) -> bool {
    text.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("alias") && f.nth(1).is_some_and(|m| kernel_param_name(m) == "vfio_pci")
    })
}

// ---------------------------------------------------------------------------------------------
// Memory and huge pages

#[derive(Default)]
struct Meminfo {
    mem_total_kb: Option<u64>,
    hugepagesize_kb: Option<u64>,
}

fn read_meminfo(root: &HostRoot, expect_hugepagesize: bool, w: &mut Warnings) -> Meminfo {
    let path = root.join("proc/meminfo");
    let Some(text) = read_text(root, "proc/meminfo", true, w) else { return Meminfo::default() };
    let mut m = Meminfo::default();
    for (key, slot, expected) in
        [("MemTotal", &mut m.mem_total_kb, true), ("Hugepagesize", &mut m.hugepagesize_kb, expect_hugepagesize)]
    {
        match meminfo_value(&text, key) {
            Some(Ok(v)) => *slot = Some(v),
            Some(Err(raw)) => w.add(&path, format_args!("{key}: expected a number of kB, found {:?}", shorten(&raw))),
            None if expected => w.add(&path, format_args!("no {key} line")),
            None => {}
        }
    }
    m
}

/// The value of `Key:   1234 kB`, in kB; `Err(raw value)` when it is not a number.
pub fn meminfo_value(text: &str, key: &str) -> Option<Result<u64, String>> {
    let line = text.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key))?;
    let raw = line.1.trim();
    let mut parts = raw.split_whitespace();
    let number = parts.next().and_then(|n| n.parse::<u64>().ok());
    let unit = parts.next();
    match (number, unit, parts.next()) {
        (Some(n), None | Some("kB"), None) => Some(Ok(n)),
        _ => Some(Err(raw.to_owned())),
    }
}

fn read_numa_nodes(root: &HostRoot, w: &mut Warnings) -> Vec<u32> {
    let mut nodes: Vec<u32> = list_dir(root, "sys/devices/system/node", w)
        .iter()
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    nodes
}

/// The huge page pools alone (global and per NUMA node), read as [`read_system`] reads them, for
/// code that changes them ([`crate::hugepages`]). `default_size_kb` is left `None` (it comes from
/// `proc/meminfo`). Missing or garbage count files are `None`, each with a warning in the list.
pub fn read_hugepage_pools(root: &HostRoot) -> (HugepageFacts, Vec<String>) {
    let mut w = Warnings::default();
    let numa_nodes = read_numa_nodes(root, &mut w);
    let pools = read_hugepages(root, &numa_nodes, &mut w);
    (pools, w.0)
}

/// `hugepages-2048kB` → 2048.
fn hugepage_dir_size(name: &str) -> Option<u64> {
    name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()
}

fn read_hugepages(root: &HostRoot, numa_nodes: &[u32], w: &mut Warnings) -> HugepageFacts {
    const DIR: &str = "sys/kernel/mm/hugepages";
    let mut sizes = Vec::new();
    for name in list_dir(root, DIR, w) {
        let Some(size_kb) = hugepage_dir_size(&name) else {
            w.add(&root.join(format!("{DIR}/{name}")), "not a hugepages-<size>kB directory; ignored");
            continue;
        };
        let total = read_count(root, &format!("{DIR}/{name}/nr_hugepages"), w);
        let free = read_count(root, &format!("{DIR}/{name}/free_hugepages"), w);
        let mut nodes = Vec::new();
        for &node in numa_nodes {
            let dir = format!("sys/devices/system/node/node{node}/hugepages/{name}");
            if !root.join(&dir).is_dir() {
                continue;
            }
            nodes.push(NodeHugepages {
                node,
                total: read_count(root, &format!("{dir}/nr_hugepages"), w),
                free: read_count(root, &format!("{dir}/free_hugepages"), w),
            });
        }
        sizes.push(HugepageSize { size_kb, total, free, nodes });
    }
    sizes.sort_by_key(|s| s.size_kb);
    HugepageFacts { default_size_kb: None, sizes }
}

// ---------------------------------------------------------------------------------------------

/// Fixture trees laid out like a host, for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use crate::host::root::HostRoot;

    /// A host root in a temporary directory.
    pub struct Tree {
        pub dir: tempfile::TempDir,
    }

    impl Tree {
        pub fn empty() -> Tree {
            Tree { dir: tempfile::tempdir().expect("tempdir") }
        }

        pub fn root(&self) -> HostRoot {
            HostRoot::new(self.dir.path())
        }

        pub fn path(&self, rel: &str) -> std::path::PathBuf {
            self.dir.path().join(rel)
        }

        /// Writes a file, creating its parents.
        pub fn file(&self, rel: &str, content: impl AsRef<[u8]>) -> &Tree {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).expect("mkdir");
            std::fs::write(&path, content).expect("write");
            self
        }

        pub fn dir(&self, rel: &str) -> &Tree {
            std::fs::create_dir_all(self.path(rel)).expect("mkdir");
            self
        }

        pub fn remove(&self, rel: &str) -> &Tree {
            let path = self.path(rel);
            if path.is_dir() {
                std::fs::remove_dir_all(path).expect("rmdir");
            } else {
                std::fs::remove_file(path).expect("rm");
            }
            self
        }
    }

    /// `/proc/cpuinfo` in the kernel's format: `n` processors with the same vendor, model and
    /// flags.
    pub fn cpuinfo(vendor: &str, model: &str, flags: &str, n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: 6\nmodel\t\t: 106\n\
                 model name\t: {model}\nstepping\t: 6\ncpu MHz\t\t: 2600.000\n\
                 fpu\t\t: yes\nflags\t\t: {flags}\nbugs\t\t: spectre_v1 spectre_v2\n\
                 bogomips\t: 5200.00\naddress sizes\t: 46 bits physical, 57 bits virtual\n\
                 power management:\n\n"
            ));
        }
        s
    }

    pub const INTEL_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov \
        pat pse36 clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm \
        constant_tsc pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr \
        pdcm pcid dca sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm";
    pub const AMD_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov \
        pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm \
        constant_tsc rep_good nopl pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt \
        aes xsave avx f16c rdrand lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a";
    pub const KVM_VM_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov \
        pat pse36 clflush mmx fxsr sse sse2 ss syscall nx pdpe1gb rdtscp lm constant_tsc rep_good \
        nopl xtopology cpuid pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt \
        aes xsave avx f16c rdrand hypervisor lahf_lm abm";

    fn module_line(name: &str) -> String {
        format!("{name} 1409024 1 - Live 0xffffffffc0a00000\n")
    }

    /// A bare-metal two-socket host. `vendor` is `intel` or `amd`. It has IOMMU units and two
    /// groups, kvm and the vendor module loaded with nested on, vfio-pci loadable (not loaded),
    /// 2 MiB and 1 GiB pools, and `dev/kvm` as a plain file (fixtures cannot make character
    /// devices without privileges).
    pub fn host(vendor: &str) -> Tree {
        let t = Tree::empty();
        let (vendor_id, model, flags, kvm_mod, unit, iommu_arg) = match vendor {
            "amd" => ("AuthenticAMD", "AMD EPYC 7763 64-Core Processor", AMD_FLAGS, "kvm_amd", "ivhd0", ""),
            _ => (
                "GenuineIntel",
                "Intel(R) Xeon(R) Gold 6348 CPU @ 2.60GHz",
                INTEL_FLAGS,
                "kvm_intel",
                "dmar0",
                " intel_iommu=on iommu=pt",
            ),
        };
        t.file("proc/cpuinfo", cpuinfo(vendor_id, model, flags, 4));
        t.file("proc/sys/kernel/osrelease", "5.14.0-427.el9.x86_64\n");
        t.file(
            "proc/cmdline",
            format!(
                "BOOT_IMAGE=(hd0,gpt3)/vmlinuz root=UUID=1234 ro{iommu_arg} \
                 default_hugepagesz=1G hugepagesz=1G hugepages=4 hugepagesz=2M hugepages=512\n"
            ),
        );
        t.dir(&format!("sys/class/iommu/{unit}"));
        t.dir("sys/kernel/iommu_groups/0/devices").dir("sys/kernel/iommu_groups/1/devices");
        t.file("dev/kvm", "");
        let mut modules = String::new();
        for m in ["kvm", kvm_mod, "irqbypass", "xfs"] {
            modules.push_str(&module_line(m));
        }
        t.file("proc/modules", modules);
        t.dir("sys/module/kvm").dir(&format!("sys/module/{kvm_mod}"));
        t.file(&format!("sys/module/{kvm_mod}/parameters/nested"), "Y\n");
        t.file(
            "lib/modules/5.14.0-427.el9.x86_64/modules.dep",
            "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz \
             kernel/drivers/vfio/vfio.ko.xz\nkernel/fs/xfs/xfs.ko.xz:\n",
        );
        t.file(
            "proc/meminfo",
            "MemTotal:       263855180 kB\nMemFree:        200000000 kB\nHugePages_Total:     512\n\
             Hugepagesize:       2048 kB\n",
        );
        for node in [0, 1] {
            t.dir(&format!("sys/devices/system/node/node{node}"));
        }
        t.file("sys/devices/system/node/online", "0-1\n");
        for (size, total, free) in [("2048", "512", "500"), ("1048576", "4", "4")] {
            let dir = format!("sys/kernel/mm/hugepages/hugepages-{size}kB");
            t.file(&format!("{dir}/nr_hugepages"), format!("{total}\n"));
            t.file(&format!("{dir}/free_hugepages"), format!("{free}\n"));
            for node in [0, 1] {
                let half = |s: &str| (s.parse::<u64>().expect("count") / 2).to_string();
                let nd = format!("sys/devices/system/node/node{node}/hugepages/hugepages-{size}kB");
                t.file(&format!("{nd}/nr_hugepages"), half(total));
                t.file(&format!("{nd}/free_hugepages"), half(free));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{KVM_VM_FLAGS, Tree, cpuinfo, host};
    use super::*;

    fn read(t: &Tree) -> SystemFacts {
        read_system(&t.root()).expect("read_system")
    }

    fn has_warning(f: &SystemFacts, needle: &str) -> bool {
        f.warnings.iter().any(|w| w.contains(needle))
    }

    #[test]
    fn intel_host_reads_every_fact() {
        let t = host("intel");
        let f = read(&t);
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        assert_eq!(f.cpu.vendor_id.as_deref(), Some("GenuineIntel"));
        assert_eq!(f.cpu.model_name.as_deref(), Some("Intel(R) Xeon(R) Gold 6348 CPU @ 2.60GHz"));
        assert_eq!(f.cpu.processors, 4);
        let flags = f.cpu.flags.expect("flags");
        assert!(flags.vmx && flags.sse4_2 && flags.pdpe1gb && !flags.svm && !flags.hypervisor);
        assert_eq!(f.kernel.release.as_deref(), Some("5.14.0-427.el9.x86_64"));
        assert_eq!(f.kernel.args.intel_iommu, ["on"]);
        assert_eq!(f.kernel.args.iommu, ["pt"]);
        assert_eq!(f.kernel.args.hugepagesz, ["1G", "2M"]);
        assert_eq!(f.kernel.args.hugepages, ["4", "512"]);
        assert_eq!(f.kernel.args.default_hugepagesz, ["1G"]);
        assert_eq!(f.iommu.units, ["dmar0"]);
        assert_eq!(f.iommu.group_count, 2);
        assert_eq!(f.kvm, KvmDevice::NotCharDevice);
        assert!(f.modules.proc_modules_read);
        assert!(f.modules.present("kvm") && f.modules.present("kvm_intel") && !f.modules.present("kvm_amd"));
        assert!(!f.modules.present("vfio_pci"));
        let nested = f.modules.nested.as_ref().expect("nested");
        assert!(nested.enabled && nested.module == "kvm_intel");
        assert!(!f.vfio.pci_loaded);
        assert_eq!(f.vfio.pci_loadable, Some(true));
        assert!(!f.vfio.container_device && !f.vfio.iommufd_device);
        assert_eq!(f.memory.total_kb, Some(263_855_180));
        assert_eq!(f.memory.numa_nodes, [0, 1]);
        assert_eq!(f.hugepages.default_size_kb, Some(2048));
        let sizes: Vec<u64> = f.hugepages.sizes.iter().map(|s| s.size_kb).collect();
        assert_eq!(sizes, [2048, 1_048_576]);
        let two_m = &f.hugepages.sizes[0];
        assert_eq!((two_m.total, two_m.free), (Some(512), Some(500)));
        assert_eq!(
            two_m.nodes,
            [
                NodeHugepages { node: 0, total: Some(256), free: Some(250) },
                NodeHugepages { node: 1, total: Some(256), free: Some(250) }
            ]
        );
        assert!(f.one_gib_hugepages_supported());
    }

    #[test]
    fn amd_host_reads_svm_and_kvm_amd() {
        let f = read(&host("amd"));
        let flags = f.cpu.flags.expect("flags");
        assert!(flags.svm && !flags.vmx && flags.sse4_2);
        assert_eq!(f.cpu.vendor_id.as_deref(), Some("AuthenticAMD"));
        assert!(f.modules.present("kvm_amd") && !f.modules.present("kvm_intel"));
        assert_eq!(f.modules.nested.as_ref().map(|n| n.module.as_str()), Some("kvm_amd"));
        assert_eq!(f.iommu.units, ["ivhd0"]);
        assert!(f.kernel.args.intel_iommu.is_empty());
    }

    #[test]
    fn missing_cpuinfo_is_an_error_naming_the_path() {
        let t = Tree::empty();
        let err = read_system(&t.root()).expect_err("no cpuinfo must fail");
        let msg = err.to_string();
        assert!(msg.contains("proc/cpuinfo") && msg.starts_with("read "), "{msg}");
        assert!(err.is_not_found());
    }

    #[test]
    fn an_almost_empty_root_gives_warnings_not_errors() {
        let t = Tree::empty();
        t.file("proc/cpuinfo", "processor\t: 0\nvendor_id\t: GenuineIntel\n\n");
        let f = read(&t);
        assert_eq!(f.cpu.processors, 1);
        assert_eq!(f.cpu.flags, None);
        assert!(has_warning(&f, "no `flags` line"), "{:?}", f.warnings);
        for missing in ["proc/cmdline", "proc/sys/kernel/osrelease", "proc/modules", "proc/meminfo"] {
            assert!(has_warning(&f, &format!("{missing}: not found")), "{missing}: {:?}", f.warnings);
        }
        assert_eq!(f.kvm, KvmDevice::Missing);
        assert_eq!(f.kernel.release, None);
        assert_eq!(f.vfio.pci_loadable, None);
        assert_eq!(f.memory.total_kb, None);
        assert!(!f.modules.proc_modules_read);
        assert!(f.modules.modules.iter().all(|m| !m.present()));
    }

    #[test]
    fn nested_vm_without_vmx_or_kvm() {
        let t = host("intel");
        t.file("proc/cpuinfo", cpuinfo("GenuineIntel", "Intel Xeon Processor (Icelake)", KVM_VM_FLAGS, 2));
        t.remove("dev/kvm");
        let f = read(&t);
        let flags = f.cpu.flags.expect("flags");
        assert!(flags.hypervisor && !flags.vmx && !flags.svm);
        assert_eq!(f.kvm, KvmDevice::Missing);
    }

    #[test]
    fn garbage_hugepage_counts_are_warnings_and_none() {
        let t = host("intel");
        t.file("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "lots\n");
        t.file("sys/devices/system/node/node1/hugepages/hugepages-2048kB/free_hugepages", "-3");
        t.remove("sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages");
        t.dir("sys/kernel/mm/hugepages/hugepages-bogus");
        t.file("proc/meminfo", "MemTotal: many kB\nHugepagesize: 2048 kB\n");
        let f = read(&t);
        let two_m = f.hugepages.size(2048).expect("2M");
        assert_eq!(two_m.total, None);
        assert_eq!(two_m.free, Some(500));
        assert_eq!(two_m.nodes[1].free, None);
        assert_eq!(f.hugepages.size(1_048_576).expect("1G").free, None);
        assert_eq!(f.memory.total_kb, None);
        assert!(has_warning(&f, "hugepages-2048kB/nr_hugepages: expected a count, found \"lots\""), "{:?}", f.warnings);
        assert!(has_warning(&f, "node1/hugepages/hugepages-2048kB/free_hugepages: expected a count"));
        assert!(has_warning(&f, "hugepages-1048576kB/free_hugepages: not found"));
        assert!(has_warning(&f, "hugepages-bogus: not a hugepages-<size>kB directory"));
        assert!(has_warning(&f, "MemTotal: expected a number of kB, found \"many kB\""));
    }

    #[test]
    fn a_malformed_proc_modules_line_does_not_hide_the_others() {
        let t = host("intel");
        t.file(
            "proc/modules",
            "xfs 2322432 1 - Live 0xffffffffc0800000\nkvm_intel 1409\n\nkvm 1409024 1 kvm_intel, Live 0x0\n\
             vfio_pci 16384 0 - Live 0x0000000000000000\n",
        );
        t.remove("sys/module/kvm_intel");
        let f = read(&t);
        assert!(f.modules.get("kvm").expect("kvm").loaded);
        assert!(f.modules.get("vfio_pci").expect("vfio_pci").loaded);
        assert!(!f.modules.present("kvm_intel"), "the malformed kvm_intel line must not count");
        assert!(f.vfio.pci_loaded);
        assert!(has_warning(&f, "proc/modules: line 2: expected 6 fields"), "{:?}", f.warnings);
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        // The nested parameter is gone with sys/module/kvm_intel.
        assert_eq!(f.modules.nested, None);
    }

    #[test]
    fn builtin_modules_count_as_present_but_not_loaded() {
        let t = host("intel");
        t.file("proc/modules", "xfs 2322432 1 - Live 0xffffffffc0800000\n");
        t.dir("sys/module/vfio_pci/parameters");
        let f = read(&t);
        let kvm = f.modules.get("kvm").expect("kvm");
        assert!(kvm.present() && kvm.builtin_only());
        assert!(f.vfio.pci_loaded, "built-in vfio_pci is loaded");
    }

    #[test]
    fn cmdline_with_non_utf8_bytes_is_read_lossily() {
        let t = host("intel");
        let mut bytes = b"BOOT_IMAGE=/vmlinuz label=\xff\xfe intel_iommu=on vfio-pci.ids=10de:1eb8,10de:10f8 ".to_vec();
        bytes.extend_from_slice(b"iommu.passthrough=1 amd_iommu=off \"quoted=a b\" -- iommu=off\n");
        t.file("proc/cmdline", bytes);
        let f = read(&t);
        assert!(has_warning(&f, "proc/cmdline: not UTF-8"), "{:?}", f.warnings);
        let a = &f.kernel.args;
        assert_eq!(a.intel_iommu, ["on"]);
        assert_eq!(a.vfio_pci_ids, ["10de:1eb8,10de:10f8"]);
        assert_eq!(a.iommu_passthrough, ["1"]);
        assert_eq!(a.amd_iommu, ["off"]);
        assert!(a.iommu.is_empty(), "arguments after -- belong to init: {:?}", a.iommu);
        assert_eq!(a.iommu_args(), ["intel_iommu=on", "iommu.passthrough=1", "amd_iommu=off"]);
        let cmdline = f.kernel.cmdline.as_deref().expect("cmdline");
        assert!(cmdline.contains("label=\u{fffd}\u{fffd}") && !cmdline.ends_with('\n'), "{cmdline:?}");
    }

    #[test]
    fn cmdline_splitting_follows_the_kernel() {
        assert_eq!(split_cmdline(" a=\"x y\"  b\tc\n"), ["a=x y", "b", "c"]);
        assert_eq!(split_cmdline("\"\" z"), ["", "z"]);
        let a = parse_cmdline("vfio_pci.ids=8086:1572 default-hugepagesz=2M");
        assert_eq!(a.vfio_pci_ids, ["8086:1572"]);
        assert_eq!(a.default_hugepagesz, ["2M"]);
    }

    #[test]
    fn vfio_pci_loadability_from_each_modules_file() {
        assert!(dep_has_vfio_pci("kernel/drivers/vfio/pci/vfio-pci.ko.zst: kernel/x.ko\n"));
        assert!(!dep_has_vfio_pci("kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: x\n"));
        assert!(builtin_has_vfio_pci("kernel/drivers/vfio/pci/vfio_pci.ko\n"));
        assert!(!builtin_has_vfio_pci("kernel/drivers/vfio/vfio.ko\n"));
        assert!(alias_has_vfio_pci("alias pci:v*d*sv*sd*bc*sc*i* foo\nalias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n"));
        assert!(!alias_has_vfio_pci("alias pci:v000010DEd* nouveau\n"));

        let t = host("intel");
        t.remove("lib/modules/5.14.0-427.el9.x86_64/modules.dep");
        t.file("usr/lib/modules/5.14.0-427.el9.x86_64/modules.alias", "alias x nouveau\n");
        t.dir("lib/modules/5.14.0-427.el9.x86_64");
        let f = read(&t);
        assert_eq!(f.vfio.pci_loadable, None, "lib/modules/<release> has no modules files");
        assert!(has_warning(&f, "no modules.dep, modules.builtin or modules.alias"), "{:?}", f.warnings);

        t.remove("lib/modules");
        let f = read(&t);
        assert_eq!(f.vfio.pci_loadable, Some(false), "usr/lib/modules is read when lib/modules is not there");

        t.file("usr/lib/modules/5.14.0-427.el9.x86_64/modules.builtin", "kernel/drivers/vfio/pci/vfio-pci.ko\n");
        assert_eq!(read(&t).vfio.pci_loadable, Some(true));
    }

    #[test]
    fn vfio_device_nodes_and_driver_directory() {
        let t = host("intel");
        t.file("dev/vfio/vfio", "").file("dev/iommu", "").dir("sys/bus/pci/drivers/vfio-pci");
        let f = read(&t);
        assert!(f.vfio.container_device && f.vfio.iommufd_device && f.vfio.pci_loaded);
    }

    #[test]
    fn nested_parameter_values() {
        let t = host("intel");
        t.file("sys/module/kvm_intel/parameters/nested", "N\n");
        assert_eq!(read(&t).modules.nested.map(|n| n.enabled), Some(false));
        t.file("sys/module/kvm_intel/parameters/nested", "maybe\n");
        let f = read(&t);
        assert_eq!(f.modules.nested, None);
        assert!(has_warning(&f, "parameters/nested: expected Y, N, 1 or 0, found \"maybe\""), "{:?}", f.warnings);
    }

    #[test]
    fn cpuinfo_without_processor_lines_is_a_warning() {
        let t = Tree::empty();
        t.file("proc/cpuinfo", b"\xff garbage\n");
        let f = read(&t);
        assert_eq!(f.cpu.processors, 0);
        assert!(has_warning(&f, "no `processor` entries"));
        assert!(has_warning(&f, "proc/cpuinfo: not UTF-8"));
    }

    #[test]
    fn dev_kvm_that_is_a_character_device_but_not_kvm() {
        // A /dev/null-like character device (1:3) at dev/kvm needs CAP_MKNOD; without it the
        // test puts a directory there instead.
        let t = host("intel");
        t.remove("dev/kvm");
        let path = t.path("dev/kvm");
        let made = nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        );
        match made {
            Ok(()) => match read(&t).kvm {
                KvmDevice::CharDevice { api_version: None, error: Some(e) } => {
                    assert!(e.contains("KVM_GET_API_VERSION") && e.contains("dev/kvm"), "{e}")
                }
                other => panic!("/dev/null as dev/kvm must fail the ioctl: {other:?}"),
            },
            Err(_) => {
                t.dir("dev/kvm");
                assert_eq!(read(&t).kvm, KvmDevice::NotCharDevice);
            }
        }
    }

    /// The real host: reading it must succeed and the CPU flags must match what /proc/cpuinfo
    /// says, checked with grep rather than this module's parser.
    #[test]
    fn reads_the_real_host() {
        let f = read_system(&HostRoot::new("/")).expect("reading / must succeed");
        let grep = |args: &[&str]| {
            let out = std::process::Command::new("grep").args(args).output().expect("run grep");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let processors: usize = grep(&["-c", "^processor", "/proc/cpuinfo"]).parse().expect("count");
        assert_eq!(f.cpu.processors, processors);
        let flags_line = grep(&["-m1", "^flags", "/proc/cpuinfo"]);
        match flags_line.split_once(':') {
            None => assert_eq!(f.cpu.flags, None, "no flags line in /proc/cpuinfo"),
            Some((_, list)) => {
                let has = |flag: &str| list.split_whitespace().any(|x| x == flag);
                let flags = f.cpu.flags.expect("flags");
                assert_eq!(flags.vmx, has("vmx"), "vmx");
                assert_eq!(flags.svm, has("svm"), "svm");
                assert_eq!(flags.hypervisor, has("hypervisor"), "hypervisor");
                assert_eq!(flags.sse4_2, has("sse4_2"), "sse4_2");
                assert_eq!(flags.pdpe1gb, has("pdpe1gb"), "pdpe1gb");
            }
        }
        let is_char = fs::metadata("/dev/kvm").map(|m| m.file_type().is_char_device());
        match (&f.kvm, is_char) {
            (KvmDevice::CharDevice { api_version, .. }, Ok(true)) => {
                if let Some(v) = api_version {
                    assert_eq!(*v, KvmDevice::STABLE_API_VERSION, "a real /dev/kvm answers 12");
                }
            }
            (KvmDevice::Missing, Err(_)) | (KvmDevice::NotCharDevice, Ok(false)) => {}
            (kvm, is_char) => panic!("dev/kvm read as {kvm:?}, metadata says {is_char:?}"),
        }
    }
}
