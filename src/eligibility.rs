//! What the node is fit for: pure functions from the host facts ([`SystemFacts`]) and the PCI
//! inventory ([`PciInventory`]) to an [`EligibilityReport`] — IOMMU, virtualization (KVM), vfio,
//! huge pages, Kata and PCI passthrough — each verdict with the facts behind it and, when the
//! node is not fit, what is wrong and what to do.
//!
//! No I/O happens here; [`crate::host`] reads the facts and [`crate::render::check`] prints the
//! report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::PciAddress;
use crate::model::pci::PciInventory;
use crate::model::system::{KvmDevice, ONE_GIB_KB, SystemFacts};

/// One answer: is the node fit for this, and why (not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub eligible: bool,
    /// The facts behind the answer, in words.
    pub facts: Vec<String>,
    /// Why the node is not fit, each with what to do. Empty when eligible.
    pub problems: Vec<String>,
}

/// One IOMMU group as the report shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupReport {
    pub number: u32,
    /// `DMA`, `DMA-FQ`, `identity`, ...; `None` when the kernel has no `type` file.
    #[serde(rename = "type")]
    pub group_type: Option<String>,
    /// At most one endpoint function (bridges aside): the group can go to one VM alone.
    pub isolated: bool,
    /// A `vfio-noiommu` group: no DMA isolation at all.
    pub no_iommu: bool,
    /// The functions that must all be on vfio-pci for a VM to use the group.
    pub endpoints: Vec<PciAddress>,
    /// PCI bridges in the group (they may stay on their driver).
    pub bridges: Vec<PciAddress>,
}

/// The IOMMU groups of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IommuGroups {
    /// Groups in `sys/kernel/iommu_groups` (some may hold no PCI function).
    pub total: usize,
    /// Groups with PCI functions that are isolated.
    pub isolated: usize,
    /// Groups with PCI functions that are shared by several endpoints.
    pub shared: usize,
    /// Every group with PCI functions, by number.
    pub groups: Vec<GroupReport>,
}

/// What the node is fit for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EligibilityReport {
    /// IOMMU units exist and the kernel made IOMMU groups.
    pub iommu: Verdict,
    /// KVM works: vmx or svm, `/dev/kvm` answering API 12, kvm and its vendor module present.
    pub virtualization: Verdict,
    /// vfio-pci is loaded or can be loaded.
    pub vfio: Verdict,
    /// Huge pages are reserved in at least one size.
    pub hugepages: Verdict,
    /// The OpenShift sandboxed containers operator's `runtime.kata` rule holds.
    pub kata: Verdict,
    /// PCI devices can be passed to VMs: IOMMU and vfio.
    pub passthrough: Verdict,
    /// Details of the IOMMU groups behind the `iommu` verdict.
    pub iommu_groups: IommuGroups,
    /// What could not be read from the host (from the facts), each with its path.
    pub warnings: Vec<String>,
}

impl EligibilityReport {
    /// The verdict that decides a requirement (`Kvm` is the `virtualization` verdict).
    pub fn verdict(&self, req: Requirement) -> &Verdict {
        match req {
            Requirement::Kata => &self.kata,
            Requirement::Passthrough => &self.passthrough,
            Requirement::Hugepages => &self.hugepages,
            Requirement::Iommu => &self.iommu,
            Requirement::Kvm => &self.virtualization,
            Requirement::Vfio => &self.vfio,
        }
    }

    /// The requirements the node does not meet, in the order asked, each once.
    pub fn unmet(&self, req: &[Requirement]) -> Vec<Requirement> {
        let mut out: Vec<Requirement> = Vec::new();
        for &r in req {
            if !self.verdict(r).eligible && !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

/// Something a node can be required to be fit for (`nodeprep check --require kata,hugepages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Requirement {
    Kata,
    Passthrough,
    Hugepages,
    Iommu,
    Kvm,
    Vfio,
}

impl Requirement {
    pub const ALL: [Requirement; 6] = [
        Requirement::Kata,
        Requirement::Passthrough,
        Requirement::Hugepages,
        Requirement::Iommu,
        Requirement::Kvm,
        Requirement::Vfio,
    ];

    /// The lower-case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Kata => "kata",
            Requirement::Passthrough => "passthrough",
            Requirement::Hugepages => "hugepages",
            Requirement::Iommu => "iommu",
            Requirement::Kvm => "kvm",
            Requirement::Vfio => "vfio",
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A requirement name that is not one of [`Requirement::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown requirement {input:?}: valid requirements are kata, passthrough, hugepages, iommu, kvm, vfio")]
pub struct RequirementError {
    pub input: String,
}

impl FromStr for Requirement {
    type Err = RequirementError;

    /// The lower-case names; upper case and surrounding white space are tolerated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Requirement::ALL
            .into_iter()
            .find(|r| r.name() == wanted)
            .ok_or_else(|| RequirementError { input: s.to_owned() })
    }
}

/// Judges the node.
pub fn evaluate(facts: &SystemFacts, pci: &PciInventory) -> EligibilityReport {
    let iommu_groups = summarize_groups(facts, pci);
    let iommu = iommu_verdict(facts, &iommu_groups);
    let vfio = vfio_verdict(facts);
    let passthrough = passthrough_verdict(&iommu, &vfio, &iommu_groups);
    EligibilityReport {
        virtualization: virtualization_verdict(facts),
        hugepages: hugepage_verdict(facts),
        kata: kata_verdict(facts),
        iommu,
        vfio,
        passthrough,
        iommu_groups,
        warnings: facts.warnings.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The CPU maker, from the flags first (they are what KVM uses), then from `vendor_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Unknown,
}

impl Vendor {
    fn of(facts: &SystemFacts) -> Vendor {
        match (facts.cpu.flags, facts.cpu.vendor_id.as_deref()) {
            (Some(f), _) if f.vmx => Vendor::Intel,
            (Some(f), _) if f.svm => Vendor::Amd,
            (_, Some("GenuineIntel")) => Vendor::Intel,
            (_, Some("AuthenticAMD" | "HygonGenuine")) => Vendor::Amd,
            _ => Vendor::Unknown,
        }
    }

    /// The KVM module for this vendor.
    fn kvm_module(self) -> Option<&'static str> {
        match self {
            Vendor::Intel => Some("kvm_intel"),
            Vendor::Amd => Some("kvm_amd"),
            Vendor::Unknown => None,
        }
    }

    /// The CPU flag KVM needs and what the firmware calls it.
    fn virt_flag(self) -> (&'static str, &'static str) {
        match self {
            Vendor::Amd => ("svm", "AMD-V/SVM"),
            _ => ("vmx", "Intel VT-x"),
        }
    }
}

/// A comma list, shortened after `max` items.
fn list(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!("{}, ... ({} more)", items[..max].join(", "), items.len() - max)
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A huge page size for people: `2 MiB`, `1 GiB`, `64 KiB`.
pub fn human_size_kb(kb: u64) -> String {
    if kb >= ONE_GIB_KB && kb % ONE_GIB_KB == 0 {
        format!("{} GiB", kb / ONE_GIB_KB)
    } else if kb >= 1024 && kb % 1024 == 0 {
        format!("{} MiB", kb / 1024)
    } else {
        format!("{kb} KiB")
    }
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// `kvm, kvm_intel loaded` (with built-in ones marked) for the present modules of `names`.
fn modules_fact(facts: &SystemFacts, names: &[&str]) -> Option<String> {
    let present: Vec<String> = names
        .iter()
        .filter_map(|&n| facts.modules.get(n).filter(|m| m.present()))
        .map(|m| if m.builtin_only() { format!("{} (built in)", m.name) } else { m.name.clone() })
        .collect();
    (!present.is_empty()).then(|| format!("{} loaded", present.join(", ")))
}

fn module_problem(module: &str) -> String {
    let firmware = match module {
        "kvm_intel" => " (it refuses to load when VT-x is disabled in the firmware)",
        "kvm_amd" => " (it refuses to load when SVM is disabled in the firmware)",
        _ => "",
    };
    format!("{module} is not loaded: modprobe {module}{firmware}")
}

// ---------------------------------------------------------------------------------------------
// IOMMU

fn summarize_groups(facts: &SystemFacts, pci: &PciInventory) -> IommuGroups {
    let groups: Vec<GroupReport> = pci
        .groups
        .iter()
        .map(|g| GroupReport {
            number: g.number,
            group_type: g.group_type.clone(),
            isolated: g.is_isolated(),
            no_iommu: g.no_iommu,
            endpoints: g.endpoints.clone(),
            bridges: g.devices.iter().filter(|d| !g.endpoints.contains(d)).copied().collect(),
        })
        .collect();
    let isolated = groups.iter().filter(|g| g.isolated).count();
    IommuGroups { total: facts.iommu.group_count, isolated, shared: groups.len() - isolated, groups }
}

fn iommu_verdict(facts: &SystemFacts, groups: &IommuGroups) -> Verdict {
    let mut v = Verdict::default();
    let units = &facts.iommu.units;
    if !units.is_empty() {
        v.facts.push(format!("{} ({})", plural(units.len(), "IOMMU unit", "IOMMU units"), list(units, 8)));
    } else {
        v.facts.push("no IOMMU units in sys/class/iommu".to_owned());
    }
    let with_pci = groups.groups.len();
    if groups.total == 0 {
        v.facts.push("no IOMMU groups".to_owned());
    } else if with_pci == 0 {
        v.facts.push(format!("{} (no PCI function in any)", plural(groups.total, "IOMMU group", "IOMMU groups")));
    } else if with_pci == groups.total {
        v.facts.push(format!(
            "{}: {} isolated, {} shared",
            plural(groups.total, "IOMMU group", "IOMMU groups"),
            groups.isolated,
            groups.shared
        ));
    } else {
        v.facts.push(format!(
            "{}; of the {with_pci} with PCI functions {} isolated, {} shared",
            plural(groups.total, "IOMMU group", "IOMMU groups"),
            groups.isolated,
            groups.shared
        ));
    }
    let mut types: Vec<(String, usize)> = Vec::new();
    for g in &groups.groups {
        let t = g.group_type.clone().unwrap_or_else(|| "unknown type".to_owned());
        match types.iter_mut().find(|(name, _)| *name == t) {
            Some((_, n)) => *n += 1,
            None => types.push((t, 1)),
        }
    }
    if !types.is_empty() {
        let types: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        v.facts.push(format!("group types: {}", types.join(", ")));
    }
    let no_iommu = groups.groups.iter().filter(|g| g.no_iommu).count();
    if no_iommu > 0 {
        v.facts.push(format!(
            "{} (vfio-noiommu: no DMA isolation)",
            plural(no_iommu, "no-IOMMU group", "no-IOMMU groups")
        ));
    }
    let args = facts.kernel.args.iommu_args();
    if !args.is_empty() {
        v.facts.push(format!("kernel command line: {}", args.join(" ")));
    } else if facts.kernel.cmdline.is_some() {
        v.facts.push("no IOMMU arguments on the kernel command line".to_owned());
    }

    v.eligible = !units.is_empty() && groups.total > 0;
    if v.eligible {
        return v;
    }
    let a = &facts.kernel.args;
    let vendor = Vendor::of(facts);
    if a.intel_iommu.iter().any(|x| x.split(',').any(|o| o == "off")) {
        v.problems.push(
            "intel_iommu=off is on the kernel command line: replace it with intel_iommu=on \
             (nodeprep machineconfig)"
                .to_owned(),
        );
    }
    if a.amd_iommu.iter().any(|x| x.split(',').any(|o| o == "off")) {
        v.problems.push("amd_iommu=off is on the kernel command line: remove it (nodeprep machineconfig)".to_owned());
    }
    if a.iommu.iter().any(|x| x == "off") {
        v.problems.push("iommu=off is on the kernel command line: remove it (nodeprep machineconfig)".to_owned());
    }
    if units.is_empty() {
        v.problems.push(match vendor {
            Vendor::Intel if !a.intel_iommu.iter().any(|x| x.split(',').any(|o| o == "on")) => {
                "no IOMMU units: add intel_iommu=on to the kernel command line (nodeprep machineconfig) \
                 and enable VT-d in the firmware"
                    .to_owned()
            }
            Vendor::Intel => "no IOMMU units although intel_iommu=on is set: enable VT-d in the firmware".to_owned(),
            Vendor::Amd => "no IOMMU units: enable the IOMMU (AMD-Vi) in the firmware; the kernel turns \
                            the AMD IOMMU on by itself"
                .to_owned(),
            Vendor::Unknown => {
                "no IOMMU units: enable the IOMMU in the firmware and on the kernel command line".to_owned()
            }
        });
        if facts.cpu.flags.is_some_and(|f| f.hypervisor) {
            v.problems.push(
                "this node is a virtual machine: its hypervisor must give it a virtual IOMMU \
                 (for example QEMU's intel-iommu device) before devices can be passed through"
                    .to_owned(),
            );
        }
    } else {
        v.problems.push(
            "IOMMU units exist but the kernel made no IOMMU groups: the IOMMU is not translating \
             DMA; check the kernel log for DMAR or AMD-Vi errors and the IOMMU arguments of the \
             kernel command line"
                .to_owned(),
        );
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Virtualization

/// Eligible when the CPU has vmx or svm, `/dev/kvm` is a character device answering
/// `KVM_GET_API_VERSION` with 12, and kvm plus the matching vendor module (kvm_intel for vmx,
/// kvm_amd for svm) are loaded or built in. A `/dev/kvm` that exists but is not a character
/// device (a plain file in a fixture, a broken /dev) is not a KVM: not eligible, with the reason.
fn virtualization_verdict(facts: &SystemFacts) -> Verdict {
    let mut v = Verdict::default();
    let flags = facts.cpu.flags;
    let vendor = Vendor::of(facts);
    let (vmx, svm) = flags.map_or((false, false), |f| (f.vmx, f.svm));
    let hypervisor = flags.is_some_and(|f| f.hypervisor);
    match flags {
        None => v.problems.push(
            "CPU flags unknown (no flags line in proc/cpuinfo): cannot tell whether the CPU has vmx or svm".to_owned(),
        ),
        Some(_) if vmx || svm => {
            v.facts.push(if vmx { "vmx".to_owned() } else { "svm".to_owned() });
            if hypervisor {
                v.facts.push("running under a hypervisor (nested virtualization)".to_owned());
            }
        }
        Some(_) => {
            let (flag, name) = vendor.virt_flag();
            v.facts.push(format!("no vmx or svm{}", if hypervisor { "; running under a hypervisor" } else { "" }));
            v.problems.push(if hypervisor {
                format!(
                    "this node is a virtual machine whose CPU shows no {flag}: enable nested virtualization \
                     on its hypervisor (or use Kata peer pods)"
                )
            } else {
                format!("the CPU shows no {flag}: enable {name} in the firmware")
            });
        }
    }

    match &facts.kvm {
        KvmDevice::CharDevice { api_version: Some(KvmDevice::STABLE_API_VERSION), .. } => {
            v.facts.push(format!("/dev/kvm answers API {}", KvmDevice::STABLE_API_VERSION));
        }
        KvmDevice::CharDevice { api_version: Some(n), .. } => {
            v.facts.push(format!("/dev/kvm answers API {n}"));
            v.problems.push(format!(
                "/dev/kvm answers API version {n}, not {}: it is not a working KVM",
                KvmDevice::STABLE_API_VERSION
            ));
        }
        KvmDevice::CharDevice { api_version: None, error } => {
            v.facts.push("/dev/kvm is a character device".to_owned());
            v.problems.push(format!(
                "/dev/kvm did not answer KVM_GET_API_VERSION ({}): nodeprep needs read-write access \
                 to it (run it privileged)",
                error.as_deref().unwrap_or("no answer")
            ));
        }
        KvmDevice::NotCharDevice => v.problems.push(
            "/dev/kvm exists but is not a character device (a test fixture or a broken /dev): no VM can use it"
                .to_owned(),
        ),
        KvmDevice::Missing => v.problems.push(match vendor.kvm_module() {
            Some(m) => format!("/dev/kvm is missing: load kvm and {m} (modprobe {m})"),
            None => "/dev/kvm is missing: load kvm and the CPU's KVM module".to_owned(),
        }),
        KvmDevice::Unknown { error } => v.problems.push(format!("/dev/kvm could not be examined: {error}")),
    }

    let vendor_module = match (vmx, svm) {
        (true, true) if facts.modules.present("kvm_amd") => Some("kvm_amd"),
        (true, _) => Some("kvm_intel"),
        (_, true) => Some("kvm_amd"),
        _ => vendor.kvm_module(),
    };
    let mut needed = vec!["kvm"];
    needed.extend(vendor_module);
    if let Some(fact) = modules_fact(facts, &needed) {
        v.facts.push(fact);
    }
    for m in &needed {
        if !facts.modules.present(m) {
            v.problems.push(module_problem(m));
        }
    }
    if let Some(n) = &facts.modules.nested {
        v.facts.push(format!("nested {} ({})", if n.enabled { "on" } else { "off" }, n.module));
    }

    v.eligible =
        (vmx || svm) && facts.kvm.is_usable() && needed.len() == 2 && needed.iter().all(|m| facts.modules.present(m));
    v
}

// ---------------------------------------------------------------------------------------------
// Kata

/// The OpenShift sandboxed containers operator's `runtime.kata` rule: (SSE4.2 and VMX and kvm
/// and kvm_intel loaded) or (SSE4.2 and SVM and kvm and kvm_amd loaded) — and, added by
/// nodeprep, `/dev/kvm` exists.
///
/// `/dev/kvm` counts when it exists as any kind of file: a fixture's plain file satisfies this
/// rule even though the `virtualization` verdict refuses it (that one checks the device answers).
///
/// Deviation from the operator, stated in the report when it matters: a module counts when it
/// is in `proc/modules` *or* built in (`sys/module/<name>`). The operator's rule reads NFD's
/// `kernel.loadedmodule`, which lists `proc/modules` only, so a built-in kvm works for Kata but
/// does not get the operator's label.
fn kata_verdict(facts: &SystemFacts) -> Verdict {
    let mut v = Verdict::default();
    let Some(flags) = facts.cpu.flags else {
        v.problems
            .push("CPU flags unknown (no flags line in proc/cpuinfo): cannot check sse4_2 and vmx/svm".to_owned());
        return v;
    };
    let intel = flags.vmx && facts.modules.present("kvm_intel");
    let amd = flags.svm && facts.modules.present("kvm_amd");
    // The pairing to explain: the one that holds, else the one the CPU points to.
    let module = if intel {
        "kvm_intel"
    } else if amd || (flags.svm && !flags.vmx) || (!flags.vmx && Vendor::of(facts) == Vendor::Amd) {
        "kvm_amd"
    } else {
        "kvm_intel"
    };
    let flag = if module == "kvm_amd" { "svm" } else { "vmx" };
    let has_flag = if module == "kvm_amd" { flags.svm } else { flags.vmx };

    if flags.sse4_2 {
        v.facts.push("sse4_2".to_owned());
    } else {
        v.problems.push("the CPU has no sse4_2 (Kata's guest kernels need SSE4.2)".to_owned());
    }
    if has_flag {
        v.facts.push(flag.to_owned());
    } else if flags.hypervisor {
        v.problems.push(format!(
            "this node is a virtual machine whose CPU shows no {flag}: enable nested virtualization on its \
             hypervisor, or run Kata as peer pods"
        ));
    } else {
        v.problems.push(format!("the CPU shows no {flag}: enable {} in the firmware", Vendor::of(facts).virt_flag().1));
    }
    if let Some(fact) = modules_fact(facts, &["kvm", module]) {
        v.facts.push(fact);
    }
    for m in ["kvm", module] {
        if !facts.modules.present(m) {
            v.problems.push(module_problem(m));
        }
    }
    let builtin: Vec<&str> =
        ["kvm", module].into_iter().filter(|m| facts.modules.get(m).is_some_and(|s| s.builtin_only())).collect();
    if !builtin.is_empty() {
        v.facts.push(format!(
            "{} built into the kernel: the sandboxed containers operator's own rule (NFD \
             kernel.loadedmodule) does not see built-in modules and will not label this node",
            builtin.join(" and ")
        ));
    }
    match &facts.kvm {
        KvmDevice::NotCharDevice => v.facts.push(
            "/dev/kvm exists but is not a character device (counted as present by this rule; no VM could start)"
                .to_owned(),
        ),
        k if k.exists() => v.facts.push("/dev/kvm exists".to_owned()),
        _ => v.problems.push(format!("/dev/kvm does not exist: modprobe kvm {module}")),
    }

    v.eligible = flags.sse4_2 && (intel || amd) && facts.modules.present("kvm") && facts.kvm.exists();
    v
}

// ---------------------------------------------------------------------------------------------
// vfio

fn vfio_verdict(facts: &SystemFacts) -> Verdict {
    let mut v = Verdict::default();
    let vf = &facts.vfio;
    if vf.pci_loaded {
        v.facts.push("vfio-pci loaded".to_owned());
    } else if vf.pci_loadable == Some(true) {
        v.facts.push("vfio-pci not loaded, loadable".to_owned());
    }
    if let Some(fact) = modules_fact(facts, &["vfio", "vfio_iommu_type1", "vfio_pci_core"]) {
        v.facts.push(fact);
    }
    v.facts.push(if vf.container_device {
        "/dev/vfio/vfio present".to_owned()
    } else {
        "/dev/vfio/vfio absent".to_owned()
    });
    if vf.iommufd_device {
        v.facts.push("/dev/iommu present (iommufd)".to_owned());
    }
    let ids = &facts.kernel.args.vfio_pci_ids;
    if !ids.is_empty() {
        v.facts.push(format!("kernel command line: vfio-pci.ids={}", ids.join(" vfio-pci.ids=")));
    }

    v.eligible = vf.pci_loaded || vf.pci_loadable == Some(true);
    if !v.eligible {
        let release = facts.kernel.release.as_deref().unwrap_or("<release>");
        v.problems.push(match vf.pci_loadable {
            Some(_) => format!(
                "vfio-pci is neither loaded nor loadable: kernel {release} has no vfio-pci module; install \
                 the kernel's extra modules package (kernel-modules / linux-modules-extra)"
            ),
            None => format!(
                "vfio-pci is not loaded and nodeprep could not read lib/modules/{release} to tell whether it \
                 can be loaded: mount the host's /lib/modules into nodeprep, or modprobe vfio-pci"
            ),
        });
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Huge pages

fn hugepage_verdict(facts: &SystemFacts) -> Verdict {
    let mut v = Verdict::default();
    let hp = &facts.hugepages;
    for s in &hp.sizes {
        let mut fact = format!("{} pages: {} total, {} free", human_size_kb(s.size_kb), count(s.total), count(s.free));
        // Per node only when there are several: with one node it repeats the totals.
        if s.nodes.len() > 1 {
            let nodes: Vec<String> =
                s.nodes.iter().map(|n| format!("node{} {}/{}", n.node, count(n.total), count(n.free))).collect();
            fact.push_str(&format!(" (total/free per node: {})", nodes.join(", ")));
        }
        v.facts.push(fact);
    }
    if let Some(d) = hp.default_size_kb {
        v.facts.push(format!("default size {}", human_size_kb(d)));
    }
    let one_gib = facts.one_gib_hugepages_supported();
    v.facts.push(if one_gib { "1 GiB pages supported" } else { "1 GiB pages not supported" }.to_owned());
    let args = facts.kernel.args.hugepage_args();
    if !args.is_empty() {
        v.facts.push(format!("kernel command line: {}", args.join(" ")));
    }
    if let Some(total) = facts.memory.total_kb {
        let nodes = facts.memory.numa_nodes.len();
        v.facts.push(format!(
            "memory {:.1} GiB{}",
            total as f64 / ONE_GIB_KB as f64,
            if nodes > 0 { format!(" on {}", plural(nodes, "NUMA node", "NUMA nodes")) } else { String::new() }
        ));
    }

    v.eligible = hp.sizes.iter().any(|s| s.total.is_some_and(|t| t > 0));
    if !v.eligible {
        let (size, arg) = if one_gib { ("1048576", "1G") } else { ("2048", "2M") };
        if hp.sizes.is_empty() {
            v.problems.push(
                "the kernel has no huge page pools (sys/kernel/mm/hugepages is missing or empty): it needs \
                 hugetlbfs support"
                    .to_owned(),
            );
        } else if hp.sizes.iter().all(|s| s.total.is_none()) {
            v.problems.push("the huge page counts could not be read (see the warnings)".to_owned());
        } else {
            v.problems.push(format!(
                "no huge pages are reserved: add default_hugepagesz={arg} hugepagesz={arg} hugepages=<count> to \
                 the kernel command line (nodeprep machineconfig), or write a count to \
                 sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages"
            ));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Passthrough

fn passthrough_verdict(iommu: &Verdict, vfio: &Verdict, groups: &IommuGroups) -> Verdict {
    let mut v = Verdict { eligible: iommu.eligible && vfio.eligible, ..Default::default() };
    if iommu.eligible {
        v.facts.push("IOMMU on".to_owned());
    }
    if vfio.eligible {
        v.facts.push("vfio-pci available".to_owned());
    }
    if iommu.eligible && groups.shared > 0 {
        v.facts.push(format!(
            "{}: every endpoint in such a group must go to vfio-pci, and to the same VM, together",
            plural(groups.shared, "shared IOMMU group", "shared IOMMU groups")
        ));
    }
    v.problems.extend(iommu.problems.iter().cloned());
    v.problems.extend(vfio.problems.iter().cloned());
    v
}

/// Report inputs for this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::model::PciAddress;
    use crate::model::pci::{IommuGroup, PciInventory};

    pub fn addr(s: &str) -> PciAddress {
        s.parse().expect("address")
    }

    /// Two groups: 26 isolated (one endpoint behind a bridge), 27 shared by two functions.
    pub fn inventory() -> PciInventory {
        PciInventory {
            groups: vec![
                IommuGroup {
                    number: 26,
                    group_type: Some("DMA-FQ".into()),
                    devices: vec![addr("0000:00:1c.0"), addr("0000:3b:00.0")],
                    endpoints: vec![addr("0000:3b:00.0")],
                    no_iommu: false,
                },
                IommuGroup {
                    number: 27,
                    group_type: Some("DMA".into()),
                    devices: vec![addr("0000:af:00.0"), addr("0000:af:00.1")],
                    endpoints: vec![addr("0000:af:00.0"), addr("0000:af:00.1")],
                    no_iommu: false,
                },
            ],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{addr, inventory};
    use super::*;
    use crate::host::system::read_system;
    use crate::host::system::testing::{INTEL_FLAGS, KVM_VM_FLAGS, Tree, cpuinfo, host};
    use crate::model::system::{CpuFlags, HugepageSize, ModuleState};

    fn judge(t: &Tree) -> EligibilityReport {
        evaluate(&read_system(&t.root()).expect("read"), &inventory())
    }

    #[test]
    fn intel_host_is_kata_eligible_but_not_a_kvm_with_a_fixture_dev_kvm() {
        let r = judge(&host("intel"));
        assert!(r.kata.eligible, "{:?}", r.kata);
        assert!(r.kata.problems.is_empty());
        assert!(r.kata.facts.iter().any(|f| f.contains("kvm, kvm_intel loaded")), "{:?}", r.kata.facts);
        assert!(r.kata.facts.iter().any(|f| f.contains("not a character device")), "{:?}", r.kata.facts);
        assert!(!r.virtualization.eligible, "a plain file is not a KVM");
        assert!(r.virtualization.problems.iter().any(|p| p.contains("not a character device")));
        assert!(r.iommu.eligible && r.vfio.eligible && r.passthrough.eligible && r.hugepages.eligible);
        assert!(r.iommu.facts.iter().any(|f| f == "kernel command line: intel_iommu=on iommu=pt"), "{:?}", r.iommu);
        assert!(r.iommu.facts.iter().any(|f| f == "1 IOMMU unit (dmar0)"), "{:?}", r.iommu);
        assert_eq!((r.iommu_groups.total, r.iommu_groups.isolated, r.iommu_groups.shared), (2, 1, 1));
        assert_eq!(r.iommu_groups.groups[0].bridges, [addr("0000:00:1c.0")]);
        assert!(r.hugepages.facts.iter().any(|f| f.starts_with("2 MiB pages: 512 total, 500 free")));
        assert!(r.hugepages.facts.iter().any(|f| f == "1 GiB pages supported"));
    }

    #[test]
    fn a_real_kvm_makes_virtualization_eligible() {
        let mut f = read_system(&host("intel").root()).expect("read");
        f.kvm = KvmDevice::CharDevice { api_version: Some(12), error: None };
        let r = evaluate(&f, &inventory());
        assert!(r.virtualization.eligible, "{:?}", r.virtualization);
        assert_eq!(
            r.virtualization.facts,
            ["vmx", "/dev/kvm answers API 12", "kvm, kvm_intel loaded", "nested on (kvm_intel)"]
        );
        f.kvm = KvmDevice::CharDevice { api_version: Some(11), error: None };
        assert!(!evaluate(&f, &inventory()).virtualization.eligible);
        f.kvm = KvmDevice::CharDevice { api_version: None, error: Some("open read-write /dev/kvm: EACCES".into()) };
        let r = evaluate(&f, &inventory());
        assert!(!r.virtualization.eligible);
        assert!(r.virtualization.problems[0].contains("EACCES"), "{:?}", r.virtualization.problems);
    }

    #[test]
    fn amd_host_is_kata_eligible() {
        let mut f = read_system(&host("amd").root()).expect("read");
        let r = evaluate(&f, &inventory());
        assert!(r.kata.eligible, "{:?}", r.kata);
        assert!(r.kata.facts.iter().any(|x| x == "svm"), "{:?}", r.kata.facts);
        assert!(r.kata.facts.iter().any(|x| x.contains("kvm, kvm_amd loaded")));
        f.kvm = KvmDevice::CharDevice { api_version: Some(12), error: None };
        assert!(evaluate(&f, &inventory()).virtualization.eligible);
    }

    #[test]
    fn missing_kvm_intel_is_not_kata_eligible() {
        let t = host("intel");
        t.file("proc/modules", "kvm 1409024 0 - Live 0xffffffffc0a00000\n");
        t.remove("sys/module/kvm_intel");
        let r = judge(&t);
        assert!(!r.kata.eligible);
        assert!(
            r.kata.problems.iter().any(|p| p.starts_with("kvm_intel is not loaded: modprobe kvm_intel")),
            "{:?}",
            r.kata
        );
        assert!(!r.virtualization.eligible);
        // A kvm_amd module does not stand in for kvm_intel on a vmx CPU.
        let mut f = read_system(&t.root()).expect("read");
        f.modules.modules.push(ModuleState { name: "kvm_amd".into(), loaded: true, in_sysfs: true });
        assert!(!evaluate(&f, &inventory()).kata.eligible);
    }

    #[test]
    fn no_sse4_2_is_not_kata_eligible() {
        let t = host("intel");
        t.file("proc/cpuinfo", cpuinfo("GenuineIntel", "Old Xeon", &INTEL_FLAGS.replace(" sse4_2", ""), 2));
        let r = judge(&t);
        assert!(!r.kata.eligible);
        assert!(r.kata.problems.iter().any(|p| p.contains("no sse4_2")), "{:?}", r.kata);
    }

    #[test]
    fn missing_dev_kvm_is_not_kata_eligible() {
        let t = host("intel");
        t.remove("dev/kvm");
        let r = judge(&t);
        assert!(!r.kata.eligible);
        assert!(r.kata.problems.iter().any(|p| p.starts_with("/dev/kvm does not exist")), "{:?}", r.kata);
    }

    #[test]
    fn nested_vm_without_vmx_or_kvm() {
        let t = host("intel");
        t.file("proc/cpuinfo", cpuinfo("GenuineIntel", "Intel Xeon Processor (Icelake)", KVM_VM_FLAGS, 2));
        t.remove("dev/kvm").remove("sys/class/iommu/dmar0");
        t.file("proc/modules", "xfs 2322432 1 - Live 0xffffffffc0800000\n");
        t.remove("sys/module/kvm").remove("sys/module/kvm_intel");
        let r = judge(&t);
        assert!(!r.virtualization.eligible && !r.kata.eligible && !r.iommu.eligible && !r.passthrough.eligible);
        assert!(
            r.virtualization
                .problems
                .iter()
                .any(|p| p.contains("virtual machine") && p.contains("nested virtualization")),
            "{:?}",
            r.virtualization
        );
        assert!(r.virtualization.problems.iter().any(|p| p.starts_with("/dev/kvm is missing")));
        assert!(r.kata.problems.iter().any(|p| p.contains("peer pods")), "{:?}", r.kata);
        assert!(r.iommu.problems.iter().any(|p| p.contains("virtual IOMMU")), "{:?}", r.iommu);
    }

    #[test]
    fn iommu_off() {
        let t = host("intel");
        t.remove("sys/class/iommu/dmar0").remove("sys/kernel/iommu_groups/0").remove("sys/kernel/iommu_groups/1");
        t.file("proc/cmdline", "BOOT_IMAGE=/vmlinuz ro quiet\n");
        let r = evaluate(&read_system(&t.root()).expect("read"), &PciInventory::default());
        assert!(!r.iommu.eligible && !r.passthrough.eligible);
        assert!(r.vfio.eligible, "vfio does not need the IOMMU to be loadable");
        assert!(r.iommu.facts.iter().any(|f| f == "no IOMMU arguments on the kernel command line"));
        assert!(
            r.iommu
                .problems
                .iter()
                .any(|p| p.contains("add intel_iommu=on to the kernel command line (nodeprep machineconfig)")),
            "{:?}",
            r.iommu
        );
        assert_eq!(r.passthrough.problems, r.iommu.problems, "passthrough explains itself with the IOMMU's problems");

        t.file("proc/cmdline", "ro intel_iommu=off\n");
        let r = judge(&t);
        assert!(r.iommu.problems.iter().any(|p| p.starts_with("intel_iommu=off is on the kernel command line")));

        t.dir("sys/class/iommu/dmar0");
        let r = judge(&t);
        assert!(!r.iommu.eligible, "units without groups are not enough");
        assert!(r.iommu.problems.iter().any(|p| p.contains("no IOMMU groups")), "{:?}", r.iommu);
    }

    #[test]
    fn vfio_neither_loaded_nor_loadable() {
        let t = host("intel");
        t.file("lib/modules/5.14.0-427.el9.x86_64/modules.dep", "kernel/fs/xfs/xfs.ko.xz:\n");
        let r = judge(&t);
        assert!(!r.vfio.eligible && !r.passthrough.eligible && r.iommu.eligible);
        assert!(
            r.passthrough.problems[0].starts_with("vfio-pci is neither loaded nor loadable"),
            "{:?}",
            r.passthrough
        );
        t.remove("lib/modules");
        let r = judge(&t);
        assert!(r.vfio.problems[0].contains("could not read lib/modules/5.14.0-427.el9.x86_64"), "{:?}", r.vfio);
    }

    #[test]
    fn hugepages_need_a_reserved_pool() {
        let mut f = read_system(&host("intel").root()).expect("read");
        for s in &mut f.hugepages.sizes {
            s.total = Some(0);
        }
        let r = evaluate(&f, &inventory());
        assert!(!r.hugepages.eligible);
        assert!(r.hugepages.problems[0].contains("hugepagesz=1G"), "{:?}", r.hugepages);
        f.hugepages.sizes = vec![HugepageSize { size_kb: 2048, total: None, free: None, nodes: vec![] }];
        f.cpu.flags = Some(CpuFlags { pdpe1gb: false, ..f.cpu.flags.expect("flags") });
        let r = evaluate(&f, &inventory());
        assert!(!r.hugepages.eligible);
        assert!(r.hugepages.facts.iter().any(|x| x == "2 MiB pages: ? total, ? free"), "{:?}", r.hugepages);
        assert!(r.hugepages.facts.iter().any(|x| x == "1 GiB pages not supported"));
        f.hugepages.sizes[0].total = Some(1);
        assert!(evaluate(&f, &inventory()).hugepages.eligible);
    }

    #[test]
    fn garbage_hugepage_counts_reach_the_report_as_warnings() {
        let t = host("intel");
        t.file("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "\u{1}garbage");
        let r = judge(&t);
        assert!(r.hugepages.eligible, "the 1 GiB pool still counts");
        assert!(r.warnings.iter().any(|w| w.contains("nr_hugepages: expected a count")), "{:?}", r.warnings);
    }

    #[test]
    fn builtin_kvm_is_counted_and_the_operator_difference_noted() {
        let t = host("intel");
        t.file("proc/modules", "kvm_intel 1409024 0 - Live 0xffffffffc0a00000\n");
        let r = judge(&t);
        assert!(r.kata.eligible, "{:?}", r.kata);
        assert!(r.kata.facts.iter().any(|f| f.starts_with("kvm built into the kernel")), "{:?}", r.kata.facts);
        assert!(r.kata.facts.iter().any(|f| f.contains("kvm (built in), kvm_intel loaded")), "{:?}", r.kata.facts);
    }

    #[test]
    fn requirements_parse_print_and_reject() {
        for r in Requirement::ALL {
            assert_eq!(r.to_string().parse::<Requirement>(), Ok(r));
        }
        assert_eq!("KVM".parse::<Requirement>(), Ok(Requirement::Kvm));
        assert_eq!(Requirement::Hugepages.to_string(), "hugepages");
        let e = "gpu".parse::<Requirement>().expect_err("gpu is not a requirement");
        let msg = e.to_string();
        assert!(msg.contains("\"gpu\"") && msg.contains("kata, passthrough, hugepages, iommu, kvm, vfio"), "{msg}");
        assert_eq!(serde_json::to_string(&Requirement::Passthrough).expect("json"), "\"passthrough\"");
    }

    #[test]
    fn unmet_lists_failed_requirements_once_in_order() {
        let t = host("intel");
        t.file("lib/modules/5.14.0-427.el9.x86_64/modules.dep", "");
        let r = judge(&t);
        use Requirement::*;
        assert_eq!(r.unmet(&[Kata, Hugepages, Iommu]), Vec::<Requirement>::new());
        assert_eq!(r.unmet(&[Vfio, Kata, Kvm, Passthrough, Vfio]), [Vfio, Kvm, Passthrough]);
        assert!(std::ptr::eq(r.verdict(Kvm), &r.virtualization));
    }

    #[test]
    fn report_serializes_in_camel_case() {
        let r = judge(&host("intel"));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["iommuGroups"]["shared"], 1);
        assert_eq!(json["iommuGroups"]["groups"][1]["type"], "DMA");
        assert_eq!(json["iommuGroups"]["groups"][1]["endpoints"][1], "0000:af:00.1");
        assert_eq!(json["kata"]["eligible"], true);
        assert!(json["warnings"].is_array());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size_kb(2048), "2 MiB");
        assert_eq!(human_size_kb(ONE_GIB_KB), "1 GiB");
        assert_eq!(human_size_kb(16 * ONE_GIB_KB), "16 GiB");
        assert_eq!(human_size_kb(64), "64 KiB");
        assert_eq!(human_size_kb(1536), "1536 KiB");
    }
}
