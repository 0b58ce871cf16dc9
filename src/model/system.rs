//! What nodeprep knows about the node besides its PCI functions: CPU, kernel, IOMMU, KVM,
//! modules, vfio, huge pages and memory. Plain data, no I/O: [`crate::host::system`] fills it,
//! [`crate::eligibility`] judges it.
//!
//! A fact the host did not give (a missing or garbage file) is `None` (or `false` where the kernel
//! itself uses absence to mean "no", like a missing `/dev/vfio/vfio`), and the reason is in
//! [`SystemFacts::warnings`]: nothing here is a guess.

use serde::{Deserialize, Serialize};

/// The kernel modules nodeprep reports on, with the names `/proc/modules` uses.
pub const WATCHED_MODULES: [&str; 7] =
    ["kvm", "kvm_intel", "kvm_amd", "vfio", "vfio_pci", "vfio_iommu_type1", "vfio_pci_core"];

/// The size of a 1 GiB huge page in kB, as in `hugepages-1048576kB`.
pub const ONE_GIB_KB: u64 = 1_048_576;

/// Everything read from the host except its PCI functions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemFacts {
    pub cpu: CpuFacts,
    pub kernel: KernelFacts,
    pub iommu: IommuFacts,
    pub kvm: KvmDevice,
    pub modules: ModuleFacts,
    pub vfio: VfioFacts,
    pub hugepages: HugepageFacts,
    pub memory: MemoryFacts,
    /// Files that were missing or garbage, each with its path and what was wrong.
    pub warnings: Vec<String>,
}

impl SystemFacts {
    /// 1 GiB huge pages can be used: the CPU has `pdpe1gb` or the kernel has a 1 GiB pool.
    pub fn one_gib_hugepages_supported(&self) -> bool {
        self.cpu.flags.is_some_and(|f| f.pdpe1gb) || self.hugepages.size(ONE_GIB_KB).is_some()
    }
}

/// From `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuFacts {
    /// `vendor_id` of CPU 0 (`GenuineIntel`, `AuthenticAMD`).
    pub vendor_id: Option<String>,
    /// `model name` of CPU 0, as the kernel wrote it.
    pub model_name: Option<String>,
    /// The number of `processor` entries.
    pub processors: usize,
    /// The flags of CPU 0 that matter; `None` when cpuinfo has no `flags` line.
    pub flags: Option<CpuFlags>,
}

/// The CPU 0 flags nodeprep's decisions use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuFlags {
    /// Intel VT-x.
    pub vmx: bool,
    /// AMD-V.
    pub svm: bool,
    /// The node is itself a virtual machine.
    pub hypervisor: bool,
    /// SSE4.2 (the sandboxed containers operator's `SSE42`). Named as the kernel's flag in JSON.
    #[serde(rename = "sse4_2")]
    pub sse4_2: bool,
    /// 1 GiB pages.
    pub pdpe1gb: bool,
}

/// The running kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelFacts {
    /// `proc/sys/kernel/osrelease`.
    pub release: Option<String>,
    /// `proc/cmdline`, decoded lossily, trailing white space removed.
    pub cmdline: Option<String>,
    /// The arguments of the command line nodeprep cares about.
    pub args: KernelArgs,
}

/// Values of the kernel arguments nodeprep cares about, every occurrence in command-line order
/// (the kernel reads some of them more than once: `hugepagesz=1G hugepages=4 hugepagesz=2M
/// hugepages=512`). Names match the way the kernel matches them: `-` and `_` are the same.
/// Arguments after a bare `--` belong to init and are not read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelArgs {
    pub intel_iommu: Vec<String>,
    pub amd_iommu: Vec<String>,
    pub iommu: Vec<String>,
    pub iommu_passthrough: Vec<String>,
    pub vfio_pci_ids: Vec<String>,
    pub hugepagesz: Vec<String>,
    pub hugepages: Vec<String>,
    pub default_hugepagesz: Vec<String>,
    /// Every argument above as written (`name=value`), in command-line order.
    pub in_order: Vec<String>,
}

impl KernelArgs {
    /// The kernel's names of the IOMMU arguments (after [`kernel_param_name`]).
    pub const IOMMU_NAMES: [&str; 4] = ["intel_iommu", "amd_iommu", "iommu", "iommu.passthrough"];
    /// The kernel's names of the huge page arguments (after [`kernel_param_name`]).
    pub const HUGEPAGE_NAMES: [&str; 3] = ["hugepagesz", "hugepages", "default_hugepagesz"];

    /// The IOMMU arguments as written, in command-line order (`intel_iommu=on iommu=pt`).
    pub fn iommu_args(&self) -> Vec<String> {
        self.written(&Self::IOMMU_NAMES)
    }

    /// The huge page arguments as written, in command-line order (the order pairs each
    /// `hugepages=` with the `hugepagesz=` before it).
    pub fn hugepage_args(&self) -> Vec<String> {
        self.written(&Self::HUGEPAGE_NAMES)
    }

    fn written(&self, names: &[&str]) -> Vec<String> {
        self.in_order
            .iter()
            .filter(|arg| {
                let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
                names.contains(&kernel_param_name(name).as_str())
            })
            .cloned()
            .collect()
    }
}

/// A kernel parameter name the way the kernel compares them: `-` and `_` are the same
/// (`vfio-pci.ids` is `vfio_pci.ids`).
pub fn kernel_param_name(name: &str) -> String {
    name.replace('-', "_")
}

/// IOMMU hardware and groups as the kernel exposes them. Group details (type, members) are in
/// the PCI inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IommuFacts {
    /// Names in `sys/class/iommu` (`dmar0`, `ivhd0`, ...), sorted.
    pub units: Vec<String>,
    /// Number of groups in `sys/kernel/iommu_groups`.
    pub group_count: usize,
}

/// What `/dev/kvm` is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum KvmDevice {
    /// No `dev/kvm`.
    #[default]
    Missing,
    /// `dev/kvm` exists but is not a character device (a plain file in a fixture, a broken /dev).
    NotCharDevice,
    /// `dev/kvm` could not even be examined (stat failed for a reason other than absence).
    Unknown { error: String },
    /// A character device. `api_version` is its answer to `KVM_GET_API_VERSION` (a real KVM
    /// answers 12); `error` says why there is no answer (open or ioctl failure).
    CharDevice { api_version: Option<i32>, error: Option<String> },
}

impl KvmDevice {
    /// The stable KVM API version every KVM since Linux 2.6.22 reports.
    pub const STABLE_API_VERSION: i32 = 12;

    /// Something is at `dev/kvm`, whatever its type.
    pub fn exists(&self) -> bool {
        matches!(self, KvmDevice::NotCharDevice | KvmDevice::CharDevice { .. })
    }

    /// A character device answering the stable KVM API version.
    pub fn is_usable(&self) -> bool {
        matches!(self, KvmDevice::CharDevice { api_version: Some(Self::STABLE_API_VERSION), .. })
    }
}

/// The state of one kernel module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleState {
    pub name: String,
    /// Listed in `proc/modules` (loaded as a module).
    pub loaded: bool,
    /// `sys/module/<name>` exists: loaded, or built into the kernel.
    pub in_sysfs: bool,
}

impl ModuleState {
    /// Loaded or built in.
    pub fn present(&self) -> bool {
        self.loaded || self.in_sysfs
    }

    /// Present, but only as built into the kernel (not in `proc/modules`).
    pub fn builtin_only(&self) -> bool {
        self.in_sysfs && !self.loaded
    }
}

/// Kernel modules and the KVM `nested` parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleFacts {
    /// `proc/modules` was read (without it `loaded` is false for all).
    pub proc_modules_read: bool,
    /// One entry per [`WATCHED_MODULES`] name, in that order.
    pub modules: Vec<ModuleState>,
    /// `nested` of kvm_intel or kvm_amd; `None` when neither has the parameter or its value
    /// was not understood.
    pub nested: Option<NestedVirt>,
}

impl ModuleFacts {
    pub fn get(&self, name: &str) -> Option<&ModuleState> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// Loaded or built in.
    pub fn present(&self, name: &str) -> bool {
        self.get(name).is_some_and(ModuleState::present)
    }
}

/// The `nested` parameter of the KVM vendor module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NestedVirt {
    /// `kvm_intel` or `kvm_amd`.
    pub module: String,
    /// The parameter as read (`Y`, `N`, `1`, `0`).
    pub value: String,
    pub enabled: bool,
}

/// vfio as a driver and as device nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VfioFacts {
    /// vfio-pci is loaded: `vfio_pci` in `proc/modules`, `sys/module/vfio_pci`, or the driver
    /// `sys/bus/pci/drivers/vfio-pci` is registered.
    pub pci_loaded: bool,
    /// vfio-pci can be loaded from `lib/modules/<release>` (`modules.dep`, `modules.alias` or
    /// `modules.builtin`); `None` when those files could not be read.
    pub pci_loadable: Option<bool>,
    /// `dev/vfio/vfio` (the legacy container device) exists.
    pub container_device: bool,
    /// `dev/iommu` (iommufd) exists.
    pub iommufd_device: bool,
}

/// Huge page pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageFacts {
    /// `Hugepagesize` of `proc/meminfo`, in kB.
    pub default_size_kb: Option<u64>,
    /// One entry per `sys/kernel/mm/hugepages/hugepages-<N>kB`, by size.
    pub sizes: Vec<HugepageSize>,
}

impl HugepageFacts {
    pub fn size(&self, size_kb: u64) -> Option<&HugepageSize> {
        self.sizes.iter().find(|s| s.size_kb == size_kb)
    }
}

/// One huge page size and its pools.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageSize {
    pub size_kb: u64,
    /// `nr_hugepages`; `None` when unreadable.
    pub total: Option<u64>,
    /// `free_hugepages`; `None` when unreadable.
    pub free: Option<u64>,
    /// Per NUMA node, by node number.
    pub nodes: Vec<NodeHugepages>,
}

/// The pool of one huge page size on one NUMA node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHugepages {
    pub node: u32,
    pub total: Option<u64>,
    pub free: Option<u64>,
}

/// Memory and NUMA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFacts {
    /// `MemTotal` of `proc/meminfo`, in kB.
    pub total_kb: Option<u64>,
    /// Numbers of `sys/devices/system/node/node<M>`, sorted.
    pub numa_nodes: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_device_serializes_with_a_state_tag_and_knows_usability() {
        let dev = KvmDevice::CharDevice { api_version: Some(12), error: None };
        let json = serde_json::to_string(&dev).expect("serialize");
        assert_eq!(json, r#"{"state":"charDevice","apiVersion":12,"error":null}"#);
        assert!(dev.is_usable() && dev.exists());
        assert!(!KvmDevice::CharDevice { api_version: Some(11), error: None }.is_usable());
        assert!(KvmDevice::NotCharDevice.exists() && !KvmDevice::NotCharDevice.is_usable());
        assert!(!KvmDevice::Missing.exists());
        let back: KvmDevice = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, dev);
    }

    #[test]
    fn one_gib_support_comes_from_the_flag_or_a_pool() {
        let mut f = SystemFacts::default();
        assert!(!f.one_gib_hugepages_supported());
        f.hugepages.sizes.push(HugepageSize { size_kb: ONE_GIB_KB, ..Default::default() });
        assert!(f.one_gib_hugepages_supported());
        f.hugepages.sizes.clear();
        f.cpu.flags = Some(CpuFlags { pdpe1gb: true, ..Default::default() });
        assert!(f.one_gib_hugepages_supported());
    }

    #[test]
    fn kernel_args_print_as_written() {
        let args = KernelArgs {
            intel_iommu: vec!["on".into()],
            iommu: vec!["pt".into()],
            hugepagesz: vec!["1G".into(), "2M".into()],
            hugepages: vec!["4".into(), "512".into()],
            in_order: ["hugepagesz=1G", "hugepages=4", "intel-iommu=on", "hugepagesz=2M", "hugepages=512", "iommu=pt"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        assert_eq!(args.iommu_args(), ["intel-iommu=on", "iommu=pt"]);
        assert_eq!(args.hugepage_args(), ["hugepagesz=1G", "hugepages=4", "hugepagesz=2M", "hugepages=512"]);
        let json = serde_json::to_value(&args).expect("json");
        assert!(json.get("intelIommu").is_some() && json.get("vfioPciIds").is_some(), "{json}");
        let flags = serde_json::to_value(CpuFlags { sse4_2: true, ..Default::default() }).expect("json");
        assert_eq!(flags["sse4_2"], true, "{flags}");
    }
}
