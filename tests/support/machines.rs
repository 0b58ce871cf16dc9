//! Named fixture machines built with [`HostTree`]. Each function returns a fresh tree.
//!
//! Address constants for each machine are exported so tests do not repeat literals.

use std::path::Path;

use super::tree::{HostTree, PciFn, relative};

// ---- shared text -----------------------------------------------------------------------------

const INTEL_XEON_FLAGS: &[&str] = &[
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "dts",
    "acpi",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "ss",
    "ht",
    "tm",
    "pbe",
    "syscall",
    "nx",
    "pdpe1gb",
    "rdtscp",
    "lm",
    "constant_tsc",
    "art",
    "arch_perfmon",
    "pebs",
    "bts",
    "rep_good",
    "nopl",
    "xtopology",
    "nonstop_tsc",
    "cpuid",
    "aperfmperf",
    "pni",
    "pclmulqdq",
    "dtes64",
    "monitor",
    "ds_cpl",
    "vmx",
    "smx",
    "est",
    "tm2",
    "ssse3",
    "sdbg",
    "fma",
    "cx16",
    "xtpr",
    "pdcm",
    "pcid",
    "dca",
    "sse4_1",
    "sse4_2",
    "x2apic",
    "movbe",
    "popcnt",
    "tsc_deadline_timer",
    "aes",
    "xsave",
    "avx",
    "f16c",
    "rdrand",
    "lahf_lm",
    "abm",
    "3dnowprefetch",
    "cpuid_fault",
    "epb",
    "cat_l3",
    "cdp_l3",
    "invpcid_single",
    "intel_ppin",
    "ssbd",
    "mba",
    "ibrs",
    "ibpb",
    "stibp",
    "ibrs_enhanced",
    "tpr_shadow",
    "vnmi",
    "flexpriority",
    "ept",
    "vpid",
    "ept_ad",
    "fsgsbase",
    "tsc_adjust",
    "bmi1",
    "avx2",
    "smep",
    "bmi2",
    "erms",
    "invpcid",
    "cqm",
    "mpx",
    "rdt_a",
    "avx512f",
    "avx512dq",
    "rdseed",
    "adx",
    "smap",
    "clflushopt",
    "clwb",
    "intel_pt",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "cqm_llc",
    "cqm_occup_llc",
    "cqm_mbm_total",
    "cqm_mbm_local",
    "dtherm",
    "ida",
    "arat",
    "pln",
    "pts",
    "pku",
    "ospke",
    "avx512_vnni",
    "md_clear",
    "flush_l1d",
    "arch_capabilities",
];

const AMD_EPYC_FLAGS: &[&str] = &[
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "ht",
    "syscall",
    "nx",
    "mmxext",
    "fxsr_opt",
    "pdpe1gb",
    "rdtscp",
    "lm",
    "constant_tsc",
    "rep_good",
    "nopl",
    "nonstop_tsc",
    "cpuid",
    "extd_apicid",
    "aperfmperf",
    "rapl",
    "pni",
    "pclmulqdq",
    "monitor",
    "ssse3",
    "fma",
    "cx16",
    "sse4_1",
    "sse4_2",
    "movbe",
    "popcnt",
    "aes",
    "xsave",
    "avx",
    "f16c",
    "rdrand",
    "lahf_lm",
    "cmp_legacy",
    "svm",
    "extapic",
    "cr8_legacy",
    "abm",
    "sse4a",
    "misalignsse",
    "3dnowprefetch",
    "osvw",
    "ibs",
    "skinit",
    "wdt",
    "tce",
    "topoext",
    "perfctr_core",
    "perfctr_nb",
    "bpext",
    "perfctr_llc",
    "mwaitx",
    "cpb",
    "cat_l3",
    "cdp_l3",
    "hw_pstate",
    "ssbd",
    "mba",
    "ibrs",
    "ibpb",
    "stibp",
    "vmmcall",
    "fsgsbase",
    "bmi1",
    "avx2",
    "smep",
    "bmi2",
    "cqm",
    "rdt_a",
    "rdseed",
    "adx",
    "smap",
    "clflushopt",
    "clwb",
    "sha_ni",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "cqm_llc",
    "cqm_occup_llc",
    "cqm_mbm_total",
    "cqm_mbm_local",
    "clzero",
    "irperf",
    "xsaveerptr",
    "rdpru",
    "wbnoinvd",
    "amd_ppin",
    "arat",
    "npt",
    "lbrv",
    "svm_lock",
    "nrip_save",
    "tsc_scale",
    "vmcb_clean",
    "flushbyasid",
    "decodeassists",
    "pausefilter",
    "pfthreshold",
    "avic",
    "v_vmsave_vmload",
    "vgif",
    "v_spec_ctrl",
    "umip",
    "rdpid",
    "overflow_recov",
    "succor",
    "smca",
    "sev",
    "sev_es",
];

/// A QEMU "Cascadelake-Server" guest without nested virtualization: `hypervisor`, no `vmx`.
const KVM_GUEST_FLAGS: &[&str] = &[
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "ss",
    "syscall",
    "nx",
    "pdpe1gb",
    "rdtscp",
    "lm",
    "constant_tsc",
    "arch_perfmon",
    "rep_good",
    "nopl",
    "xtopology",
    "cpuid",
    "tsc_known_freq",
    "pni",
    "pclmulqdq",
    "ssse3",
    "fma",
    "cx16",
    "pcid",
    "sse4_1",
    "sse4_2",
    "x2apic",
    "movbe",
    "popcnt",
    "tsc_deadline_timer",
    "aes",
    "xsave",
    "avx",
    "f16c",
    "rdrand",
    "hypervisor",
    "lahf_lm",
    "abm",
    "3dnowprefetch",
    "cpuid_fault",
    "invpcid_single",
    "ssbd",
    "ibrs",
    "ibpb",
    "stibp",
    "ibrs_enhanced",
    "fsgsbase",
    "tsc_adjust",
    "bmi1",
    "avx2",
    "smep",
    "bmi2",
    "erms",
    "invpcid",
    "mpx",
    "avx512f",
    "avx512dq",
    "rdseed",
    "adx",
    "smap",
    "clflushopt",
    "clwb",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "xsaveopt",
    "xsavec",
    "xgetbv1",
    "xsaves",
    "arat",
    "pku",
    "ospke",
    "avx512_vnni",
    "md_clear",
    "arch_capabilities",
];

const VFIO_ALIAS: &str = "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci\n";

/// `proc/swaps` line as `swap_show` pads it (file name to 40 columns).
fn swap_line(path: &str, kind: &str, size_kb: u64, prio: i32) -> String {
    let pad = if path.len() < 40 { 40 - path.len() } else { 1 };
    let kind = if kind == "file" { "file\t" } else { "partition" };
    let t = if size_kb < 10_000_000 { "\t" } else { "" };
    format!("{path}{:pad$}{kind}\t{size_kb}\t{t}0\t\t{prio}\n", "")
}

// ---- 1. intel_gpu_server ---------------------------------------------------------------------

/// Addresses on [`intel_gpu_server`].
pub mod intel {
    pub const HOST_BRIDGE: &str = "0000:00:00.0";
    pub const RP_NIC: &str = "0000:00:1c.0";
    pub const NIC: &str = "0000:02:00.0";
    pub const RP_NVME: &str = "0000:17:00.0";
    pub const NVME: &str = "0000:18:00.0";
    pub const RP_GPU_A: &str = "0000:3a:00.0";
    pub const GPU_A: &str = "0000:3b:00.0";
    pub const RP_QAT: &str = "0000:5d:00.0";
    pub const QAT_PF: &str = "0000:5e:00.0";
    pub const QAT_VFS: [&str; 4] = ["0000:5e:01.0", "0000:5e:01.1", "0000:5e:01.2", "0000:5e:01.3"];
    pub const RP_MLX: &str = "0000:85:00.0";
    pub const MLX_PF: &str = "0000:86:00.0";
    pub const MLX_VFS: [&str; 4] = ["0000:86:00.2", "0000:86:00.3", "0000:86:00.4", "0000:86:00.5"];
    pub const RP_GPU_B: &str = "0000:ae:00.0";
    pub const GPU_B: &str = "0000:af:00.0";
    pub const GPU_B_AUDIO: &str = "0000:af:00.1";
    /// IOMMU group of GPU A (alone, bound to vfio-pci).
    pub const GPU_A_GROUP: u32 = 6;
    /// IOMMU group shared by GPU B and its audio function.
    pub const GPU_B_GROUP: u32 = 20;
    pub const OSRELEASE: &str = "5.14.0-427.el9.x86_64";
}

/// A two-socket Intel Xeon (Cascade Lake) RHEL 9 host with the IOMMU on.
///
/// | group | address | ids | class | driver | notes |
/// |---|---|---|---|---|---|
/// | 0 | 0000:00:00.0 | 8086:2020 | 0600 | - | host bridge |
/// | 1 | 0000:00:1c.0 | 8086:a190 | 0604 | pcieport | root port |
/// | 2 | 0000:02:00.0 | 8086:1572 (8086:0001) | 0200 | i40e | X710, `eno1` up, **default route**, totalvfs 32, no VFs |
/// | 3 | 0000:17:00.0 | 8086:2030 | 0604 | pcieport | root port |
/// | 4 | 0000:18:00.0 | 144d:a808 (144d:a801) | 0108 | nvme | `nvme0n1`: p1 `/boot/efi`, p2 `/boot`, p3 -> dm-0 `rhel-root` `/` and dm-1 `rhel-swap` (swap) |
/// | 5 | 0000:3a:00.0 | 8086:2030 | 0604 | pcieport | root port |
/// | 6 | 0000:3b:00.0 | 10de:1eb8 (10de:12a2) | 0302 | vfio-pci | Tesla T4, driver_override vfio-pci, alone in group, `dev/vfio/6` |
/// | 7 | 0000:5d:00.0 | 8086:2030 | 0604 | pcieport | root port |
/// | 8 | 0000:5e:00.0 | 8086:37c8 | 0b40 | c6xx | QAT PF, totalvfs 16, 4 VFs (offset 8, stride 1) |
/// | 9-12 | 0000:5e:01.0-3 | 8086:37c9 | 0b40 | c6xxvf | QAT VFs |
/// | 13 | 0000:85:00.0 | 8086:2030 | 0604 | pcieport | root port, NUMA 1 |
/// | 14 | 0000:86:00.0 | 15b3:1017 (15b3:0007) | 0200 | mlx5_core | ConnectX-5 PF, `ens1f0` up, totalvfs 8, 4 VFs (offset 2) |
/// | 15-18 | 0000:86:00.2-5 | 15b3:1018 | 0200 | mlx5_core | VFs, `ens1f0v0` up, `ens1f0v1..3` down |
/// | 19 | 0000:ae:00.0 | 8086:2030 | 0604 | pcieport | root port, NUMA 1 |
/// | 20 | 0000:af:00.0 | 10de:1e30 (10de:12ba) | 0300 | nouveau | Quadro RTX 6000, boot_vga 0 |
/// | 20 | 0000:af:00.1 | 10de:10f7 (10de:12ba) | 0403 | snd_hda_intel | its HDMI audio, same group |
///
/// Plus: dmar0, dmar1; 8 CPUs on 2 sockets/NUMA nodes; kvm, kvm_intel (nested Y), vfio,
/// vfio_pci, vfio_pci_core, vfio_iommu_type1 and the drivers' modules; dev/kvm, dev/vfio/vfio;
/// 2048 x 2 MiB and 16 x 1 GiB huge pages split over the nodes.
pub fn intel_gpu_server() -> HostTree {
    use intel::*;
    let t = HostTree::new();
    t.numa_nodes(2)
        .cpuinfo_sockets(2, 8, "GenuineIntel", "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", INTEL_XEON_FLAGS)
        .cmdline(
            "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-5.14.0-427.el9.x86_64 root=/dev/mapper/rhel-root ro \
             crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root \
             rd.lvm.lv=rhel/swap intel_iommu=on iommu=pt default_hugepagesz=2M hugepagesz=1G hugepages=16 \
             hugepagesz=2M hugepages=2048",
        )
        .modules(&[
            "vfio_pci",
            "vfio_pci_core",
            "vfio_iommu_type1",
            "vfio",
            "qat_c62xvf",
            "qat_c62x",
            "intel_qat",
            "mlx5_core",
            "nouveau",
            "snd_hda_intel",
            "snd_hda_codec",
            "snd",
            "i40e",
            "nvme",
            "nvme_core",
            "kvm_intel",
            "kvm",
            "irqbypass",
        ])
        .osrelease(OSRELEASE)
        .modules_alias(
            OSRELEASE,
            &format!(
                "# Aliases extracted from modules themselves.\n\
                 alias pci:v00008086d00001572sv*sd*bc*sc*i* i40e\n\
                 alias pci:v000015B3d00001017sv*sd*bc*sc*i* mlx5_core\n\
                 alias pci:v000015B3d00001018sv*sd*bc*sc*i* mlx5_core\n\
                 alias pci:v0000144Dd0000A808sv*sd*bc*sc*i* nvme\n\
                 alias pci:v*d*sv*sd*bc01sc08i02* nvme\n\
                 alias pci:v00008086d000037C8sv*sd*bc*sc*i* qat_c62x\n\
                 alias pci:v00008086d000037C9sv*sd*bc*sc*i* qat_c62xvf\n\
                 {VFIO_ALIAS}"
            ),
        )
        .dev_kvm()
        .dev_vfio()
        .iommu_unit("dmar0")
        .iommu_unit("dmar1")
        .hugepages(2048, 2048, 2048, &[(0, 1024, 1024), (1, 1024, 1024)])
        .hugepages(1_048_576, 16, 16, &[(0, 8, 8), (1, 8, 8)])
        .meminfo(394_822_320, 2048);

    let root_port = |addr: &str, numa: i32, group: u32| {
        PciFn::new(addr, 0x8086, 0x2030, 0x060400).rev(0x04).driver("pcieport").numa(numa).group(group)
    };
    // Host bridge and the PCH root port with the X710.
    t.pci(&PciFn::new(HOST_BRIDGE, 0x8086, 0x2020, 0x060000).rev(0x04).numa(0).group(0))
        .pci(&PciFn::new(RP_NIC, 0x8086, 0xa190, 0x060400).rev(0xf9).driver("pcieport").numa(0).group(1))
        .pci(
            &PciFn::new(NIC, 0x8086, 0x1572, 0x020000)
                .parent(RP_NIC)
                .subsys(0x8086, 0x0001)
                .rev(0x01)
                .driver("i40e")
                .numa(0)
                .group(2)
                .totalvfs(32),
        )
        .net(NIC, "eno1", "up");
    // NVMe boot disk.
    t.pci(&root_port(RP_NVME, 0, 3))
        .pci(
            &PciFn::new(NVME, 0x144d, 0xa808, 0x010802)
                .parent(RP_NVME)
                .subsys(0x144d, 0xa801)
                .driver("nvme")
                .numa(0)
                .group(4),
        )
        .nvme(
            NVME,
            "nvme0",
            "nvme0n1",
            (259, 0),
            &[("nvme0n1p1", (259, 1)), ("nvme0n1p2", (259, 2)), ("nvme0n1p3", (259, 3))],
        )
        .dm("dm-0", "rhel-root", (253, 0), &["nvme0n1p3"])
        .dm("dm-1", "rhel-swap", (253, 1), &["nvme0n1p3"]);
    // GPU A: Tesla T4 on vfio-pci, alone in its group.
    t.pci(&root_port(RP_GPU_A, 0, 5))
        .pci(
            &PciFn::new(GPU_A, 0x10de, 0x1eb8, 0x030200)
                .parent(RP_GPU_A)
                .subsys(0x10de, 0x12a2)
                .rev(0xa1)
                .driver("vfio-pci")
                .driver_override("vfio-pci")
                .numa(0)
                .group(GPU_A_GROUP),
        )
        .dev_vfio_group(GPU_A_GROUP);
    // QAT PF + 4 VFs (VF offset 8, stride 1).
    t.pci(&root_port(RP_QAT, 0, 7)).pci(
        &PciFn::new(QAT_PF, 0x8086, 0x37c8, 0x0b4000)
            .parent(RP_QAT)
            .rev(0x04)
            .driver("c6xx")
            .numa(0)
            .group(8)
            .totalvfs(16),
    );
    let qat_vfs: Vec<PciFn> = QAT_VFS
        .iter()
        .enumerate()
        .map(|(i, a)| PciFn::new(a, 0x8086, 0x37c9, 0x0b4000).rev(0x04).driver("c6xxvf").group(9 + i as u32))
        .collect();
    t.vfs(QAT_PF, &qat_vfs);
    // ConnectX-5 PF + 4 VFs (offset 2, stride 1), NUMA 1.
    t.pci(&root_port(RP_MLX, 1, 13))
        .pci(
            &PciFn::new(MLX_PF, 0x15b3, 0x1017, 0x020000)
                .parent(RP_MLX)
                .subsys(0x15b3, 0x0007)
                .driver("mlx5_core")
                .numa(1)
                .group(14)
                .totalvfs(8),
        )
        .net(MLX_PF, "ens1f0", "up");
    let mlx_vfs: Vec<PciFn> = MLX_VFS
        .iter()
        .enumerate()
        .map(|(i, a)| {
            PciFn::new(a, 0x15b3, 0x1018, 0x020000).subsys(0x15b3, 0x0007).driver("mlx5_core").group(15 + i as u32)
        })
        .collect();
    t.vfs(MLX_PF, &mlx_vfs);
    for (i, a) in MLX_VFS.iter().enumerate() {
        t.net(a, &format!("ens1f0v{i}"), if i == 0 { "up" } else { "down" });
    }
    // GPU B: Quadro RTX 6000 + HDMI audio, one group, NUMA 1.
    t.pci(&root_port(RP_GPU_B, 1, 19))
        .pci(
            &PciFn::new(GPU_B, 0x10de, 0x1e30, 0x030000)
                .parent(RP_GPU_B)
                .subsys(0x10de, 0x12ba)
                .rev(0xa1)
                .driver("nouveau")
                .numa(1)
                .group(GPU_B_GROUP)
                .boot_vga(false),
        )
        .pci(
            &PciFn::new(GPU_B_AUDIO, 0x10de, 0x10f7, 0x040300)
                .parent(RP_GPU_B)
                .subsys(0x10de, 0x12ba)
                .rev(0xa1)
                .driver("snd_hda_intel")
                .numa(1)
                .group(GPU_B_GROUP),
        );

    t.mounts(
        "/dev/mapper/rhel-root / xfs rw,seclabel,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota 0 0\n\
         devtmpfs /dev devtmpfs rw,seclabel,nosuid,size=4096k,nr_inodes=49342089,mode=755,inode64 0 0\n\
         tmpfs /dev/shm tmpfs rw,seclabel,nosuid,nodev,inode64 0 0\n\
         proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
         sysfs /sys sysfs rw,seclabel,nosuid,nodev,noexec,relatime 0 0\n\
         tmpfs /run tmpfs rw,seclabel,nosuid,nodev,size=78964464k,nr_inodes=819200,mode=755,inode64 0 0\n\
         /dev/nvme0n1p2 /boot xfs rw,seclabel,relatime,attr2,inode64,logbufs=8,logbsize=32k,noquota 0 0\n\
         /dev/nvme0n1p1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=ascii,shortname=winnt,errors=remount-ro 0 0\n\
         hugetlbfs /dev/hugepages hugetlbfs rw,seclabel,relatime,pagesize=2M 0 0\n\
         hugetlbfs /dev/hugepages1G hugetlbfs rw,seclabel,relatime,pagesize=1024M 0 0\n",
    )
    .swaps(&swap_line("/dev/dm-1", "partition", 4_194_300, -2))
    .routes(&["eno1"]);
    t
}

// ---- 2. amd_iommu_off ------------------------------------------------------------------------

/// Addresses on [`amd_iommu_off`].
pub mod amd {
    pub const ROOT_COMPLEX: &str = "0000:00:00.0";
    pub const GPP_NIC: &str = "0000:00:01.1";
    pub const NIC0: &str = "0000:01:00.0";
    pub const NIC1: &str = "0000:01:00.1";
    pub const GPP_SATA: &str = "0000:00:08.1";
    pub const SATA: &str = "0000:02:00.0";
    pub const OSRELEASE: &str = "5.15.0-91-generic";
}

/// A single-socket AMD EPYC Ubuntu host with the IOMMU off (no units, no `iommu_groups` dir,
/// no `amd_iommu` on the command line).
///
/// | address | ids | class | driver | notes |
/// |---|---|---|---|---|
/// | 0000:00:00.0 | 1022:1480 | 0600 | - | root complex |
/// | 0000:00:01.1 | 1022:1483 | 0604 | pcieport | GPP bridge |
/// | 0000:01:00.0 | 14e4:165f (1028:08ff) | 0200 | tg3 | BCM5720 port 0, `eno1` up, **default route** |
/// | 0000:01:00.1 | 14e4:165f (1028:08ff) | 0200 | tg3 | port 1, `eno2` down |
/// | 0000:00:08.1 | 1022:1484 | 0604 | pcieport | internal GPP bridge |
/// | 0000:02:00.0 | 1022:7901 | 0106 | ahci | `sda` at ata1/host0/target0:0:0/0:0:0:0: sda1 `/boot/efi`, sda2 `/` |
///
/// NUMA node -1 everywhere; kvm + kvm_amd (nested 1), dev/kvm, no vfio modules, no dev/vfio;
/// 2 MiB and 1 GiB huge page pools exist with 0 pages; swap is a file (`/swap.img`).
pub fn amd_iommu_off() -> HostTree {
    use amd::*;
    let t = HostTree::new();
    t.numa_nodes(1)
        .cpuinfo(8, "AuthenticAMD", "AMD EPYC 7302P 16-Core Processor", AMD_EPYC_FLAGS)
        .cmdline("BOOT_IMAGE=/vmlinuz-5.15.0-91-generic root=UUID=8c1f0b53-6d7e-4a8e-9f0c-2b1d3e4f5a6b ro quiet splash")
        .modules(&["tg3", "ahci", "libahci", "kvm_amd", "ccp", "kvm", "irqbypass"])
        .osrelease(OSRELEASE)
        .modules_alias(
            OSRELEASE,
            &format!(
                "alias pci:v000014E4d0000165Fsv*sd*bc*sc*i* tg3\n\
                 alias pci:v*d*sv*sd*bc01sc06i01* ahci\n\
                 {VFIO_ALIAS}"
            ),
        )
        .dev_kvm()
        .hugepages(2048, 0, 0, &[(0, 0, 0)])
        .hugepages(1_048_576, 0, 0, &[(0, 0, 0)])
        .meminfo(131_612_060, 2048);
    t.pci(&PciFn::new(ROOT_COMPLEX, 0x1022, 0x1480, 0x060000).subsys(0x1022, 0x1480))
        .pci(&PciFn::new(GPP_NIC, 0x1022, 0x1483, 0x060400).driver("pcieport"))
        .pci(&PciFn::new(NIC0, 0x14e4, 0x165f, 0x020000).parent(GPP_NIC).subsys(0x1028, 0x08ff).driver("tg3"))
        .pci(&PciFn::new(NIC1, 0x14e4, 0x165f, 0x020000).parent(GPP_NIC).subsys(0x1028, 0x08ff).driver("tg3"))
        .net(NIC0, "eno1", "up")
        .net(NIC1, "eno2", "down")
        .pci(&PciFn::new(GPP_SATA, 0x1022, 0x1484, 0x060400).driver("pcieport"))
        .pci(&PciFn::new(SATA, 0x1022, 0x7901, 0x010601).parent(GPP_SATA).rev(0x51).driver("ahci"))
        .block_under(SATA, "ata1/host0/target0:0:0/0:0:0:0", "sda", (8, 0), &[("sda1", (8, 1)), ("sda2", (8, 2))]);
    t.mounts(
        "/dev/sda2 / ext4 rw,relatime,errors=remount-ro 0 0\n\
         udev /dev devtmpfs rw,nosuid,relatime,size=65779480k,nr_inodes=16444870,mode=755,inode64 0 0\n\
         proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
         sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n\
         tmpfs /run tmpfs rw,nosuid,nodev,noexec,relatime,size=13161208k,mode=755,inode64 0 0\n\
         /dev/sda1 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=iso8859-1,shortname=mixed,errors=remount-ro 0 0\n",
    )
    .swaps(&swap_line("/swap.img", "file", 8_388_604, -2))
    .routes(&["eno1"]);
    t
}

// ---- 3. nested_vm ----------------------------------------------------------------------------

/// Addresses on [`nested_vm`].
pub mod vm {
    pub const HOST_BRIDGE: &str = "0000:00:00.0";
    pub const ISA: &str = "0000:00:01.0";
    pub const IDE: &str = "0000:00:01.1";
    pub const VGA: &str = "0000:00:02.0";
    pub const VIRTIO_NET: &str = "0000:00:03.0";
    pub const VIRTIO_BLK: &str = "0000:00:04.0";
    pub const OSRELEASE: &str = "6.8.0-40-generic";
}

/// A KVM guest (QEMU i440FX) without nested virtualization: `hypervisor` but no `vmx`/`svm`, no
/// dev/kvm, no kvm modules, IOMMU off (empty `sys/kernel/iommu_groups` and `sys/class/iommu`, as
/// an IOMMU-capable kernel shows them with no IOMMU).
///
/// | address | ids | class | driver | notes |
/// |---|---|---|---|---|
/// | 0000:00:00.0 | 8086:1237 (1af4:1100) | 0600 | - | 440FX host bridge |
/// | 0000:00:01.0 | 8086:7000 (1af4:1100) | 0601 | - | PIIX3 ISA (multi-function) |
/// | 0000:00:01.1 | 8086:7010 (1af4:1100) | 0101 | ata_piix | PIIX3 IDE |
/// | 0000:00:02.0 | 1234:1111 (1af4:1100) | 0300 | bochs-drm | std VGA, boot_vga 1 |
/// | 0000:00:03.0 | 1af4:1000 (1af4:0001) | 0200 | virtio-pci | `virtio0` (virtio_net) -> `ens3` up, **default route** |
/// | 0000:00:04.0 | 1af4:1001 (1af4:0002) | 0100 | virtio-pci | `virtio1` (virtio_blk) -> `vda`: vda1 `/`, vda15 `/boot/efi` |
pub fn nested_vm() -> HostTree {
    use vm::*;
    let t = HostTree::new();
    t.numa_nodes(1)
        .cpuinfo(4, "GenuineIntel", "Intel Xeon Processor (Cascadelake)", KVM_GUEST_FLAGS)
        .cmdline("BOOT_IMAGE=/vmlinuz-6.8.0-40-generic root=/dev/vda1 ro console=tty1 console=ttyS0")
        .modules(&["virtio_net", "net_failover", "failover", "virtio_blk", "bochs"])
        .osrelease(OSRELEASE)
        .modules_alias(OSRELEASE, VFIO_ALIAS)
        .iommu_empty_dirs()
        .hugepages(2048, 0, 0, &[(0, 0, 0)])
        .meminfo(8_145_092, 2048);
    let qemu = |addr: &str, vendor: u16, device: u16, class: u32| {
        PciFn::new(addr, vendor, device, class).subsys(0x1af4, 0x1100)
    };
    t.pci(&qemu(HOST_BRIDGE, 0x8086, 0x1237, 0x060000).rev(0x02))
        .pci(&qemu(ISA, 0x8086, 0x7000, 0x060100))
        .pci(&qemu(IDE, 0x8086, 0x7010, 0x010180).driver("ata_piix"))
        .pci(&qemu(VGA, 0x1234, 0x1111, 0x030000).rev(0x02).driver("bochs-drm").boot_vga(true))
        .pci(&PciFn::new(VIRTIO_NET, 0x1af4, 0x1000, 0x020000).subsys(0x1af4, 0x0001).driver("virtio-pci"))
        .virtio(VIRTIO_NET, "virtio0", 1, "virtio_net")
        .net_under(VIRTIO_NET, "virtio0", "ens3", "up")
        .pci(&PciFn::new(VIRTIO_BLK, 0x1af4, 0x1001, 0x010000).subsys(0x1af4, 0x0002).driver("virtio-pci"))
        .virtio(VIRTIO_BLK, "virtio1", 2, "virtio_blk")
        .block_under(VIRTIO_BLK, "virtio1", "vda", (252, 0), &[("vda1", (252, 1)), ("vda15", (252, 15))]);
    t.mounts(
        "/dev/vda1 / ext4 rw,relatime,discard,errors=remount-ro 0 0\n\
         udev /dev devtmpfs rw,nosuid,relatime,size=4041488k,nr_inodes=1010372,mode=755,inode64 0 0\n\
         proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
         sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n\
         /dev/vda15 /boot/efi vfat rw,relatime,fmask=0077,dmask=0077,codepage=437,iocharset=iso8859-1,shortname=mixed,errors=remount-ro 0 0\n",
    )
    .swaps("")
    .routes(&["ens3"]);
    t
}

// ---- 4. big_sriov / sriov_4096 ---------------------------------------------------------------

/// PF `i` of [`big_sriov`]: domain `i / 16`, root bus `0x10 + 2 * (i % 16)`, device 0 function 0.
pub fn big_sriov_pf(i: usize) -> String {
    format!("{:04x}:{:02x}:00.0", i / 16, 0x10 + 2 * (i % 16))
}

/// VF offset and stride of [`big_sriov`]'s PFs (VF `j` is at routing ID `PF + 8 + j`).
pub const BIG_SRIOV_VF_OFFSET: u16 = 8;
pub const BIG_SRIOV_VF_STRIDE: u16 = 1;

/// `pfs` Intel E810 PFs (`8086:1592`, ice, class 0200), each directly on its own root bus (see
/// [`big_sriov_pf`], so `sys/bus/pci/devices` holds exactly the PFs and VFs), each with
/// `vfs_per_pf` VFs `8086:1889` at VF offset 8 / stride 1 (`0000:10:01.0`, `0000:10:01.1`, ...),
/// bound alternately to iavf (even VF index) and vfio-pci (odd, with driver_override and a
/// `dev/vfio/<group>` node). Every function has its own IOMMU group (PF `i` and its VFs take
/// consecutive numbers from 0), NUMA node alternates 0/1 per PF (VFs inherit), IOMMU on (one
/// dmar per domain).
pub fn big_sriov(pfs: usize, vfs_per_pf: usize) -> HostTree {
    let t = HostTree::new();
    let domains = pfs.div_ceil(16).max(1);
    t.numa_nodes(2)
        .cpuinfo_sockets(2, 8, "GenuineIntel", "Intel(R) Xeon(R) Gold 6338N CPU @ 2.20GHz", INTEL_XEON_FLAGS)
        .cmdline("BOOT_IMAGE=/vmlinuz-5.14.0-427.el9.x86_64 root=/dev/mapper/rhel-root ro intel_iommu=on iommu=pt")
        .modules(&[
            "vfio_pci",
            "vfio_pci_core",
            "vfio_iommu_type1",
            "vfio",
            "iavf",
            "ice",
            "kvm_intel",
            "kvm",
            "irqbypass",
        ])
        .osrelease(intel::OSRELEASE)
        .modules_alias(intel::OSRELEASE, VFIO_ALIAS)
        .dev_kvm()
        .dev_vfio();
    for d in 0..domains {
        t.iommu_unit(&format!("dmar{d}"));
    }
    let total = (vfs_per_pf as u32).max(128);
    let mut group = 0u32;
    let mut vfs = Vec::with_capacity(vfs_per_pf);
    for i in 0..pfs {
        let pf = big_sriov_pf(i);
        let numa = (i % 2) as i32;
        t.pci(
            &PciFn::new(&pf, 0x8086, 0x1592, 0x020000)
                .subsys(0x8086, 0x0002)
                .rev(0x02)
                .driver("ice")
                .numa(numa)
                .group(group)
                .totalvfs(total),
        );
        group += 1;
        vfs.clear();
        for j in 0..vfs_per_pf {
            let addr = HostTree::vf_addr(&pf, BIG_SRIOV_VF_OFFSET, BIG_SRIOV_VF_STRIDE, j as u16);
            let f = PciFn::new(&addr, 0x8086, 0x1889, 0x020000).subsys(0x8086, 0x0000).rev(0x02).group(group);
            let f = if j % 2 == 0 { f.driver("iavf") } else { f.driver("vfio-pci").driver_override("vfio-pci") };
            if j % 2 == 1 {
                t.dev_vfio_group(group);
            }
            vfs.push(f);
            group += 1;
        }
        t.vfs(&pf, &vfs);
    }
    t
}

/// 64 PFs x (1 + 63 VFs) = 4096 PCI functions.
pub fn sriov_4096() -> HostTree {
    big_sriov(64, 63)
}

// ---- 5. hostile ------------------------------------------------------------------------------

/// Addresses on [`hostile`].
pub mod hostile_addrs {
    pub const VMD_ROOT_PORT: &str = "10000:e0:00.0";
    /// The normal-looking device (NVMe behind a VMD-domain root port, holds `/`).
    pub const NORMAL: &str = "10000:e1:00.0";
    pub const HOST_BRIDGE: &str = "0000:00:00.0";
    pub const BANANA_VENDOR: &str = "0000:00:01.0";
    pub const NO_CLASS: &str = "0000:00:02.0";
    pub const DANGLING_DRIVER: &str = "0000:00:03.0";
    pub const GARBAGE_NUMA: &str = "0000:00:04.0";
    pub const DANGLING_GROUP: &str = "0000:00:05.0";
    pub const NEGATIVE_NUMVFS: &str = "0000:00:06.0";
    pub const EMPTY_REVISION: &str = "0000:00:07.0";
    pub const DANGLING_PHYSFN: &str = "0000:00:08.0";
    pub const DANGLING_BUS_LINK: &str = "0000:00:09.0";
}

/// Every broken PCI function on [`hostile`]: (address, what is broken).
pub const HOSTILE_BROKEN: &[(&str, &str)] = &[
    ("0000:00:01.0", "vendor file contains `banana`"),
    ("0000:00:02.0", "class file missing"),
    ("0000:00:03.0", "driver link dangles (sys/bus/pci/drivers/ghost_driver does not exist)"),
    ("0000:00:04.0", "numa_node contains `garbage`"),
    ("0000:00:05.0", "iommu_group link dangles (sys/kernel/iommu_groups/999 does not exist)"),
    ("0000:00:06.0", "sriov_numvfs is `-3` and virtfn0 points at a function that does not exist"),
    ("0000:00:07.0", "revision file is empty"),
    ("0000:00:08.0", "physfn link dangles (its PF 0000:00:1f.7 does not exist)"),
    ("0000:00:09.0", "sys/bus/pci/devices link dangles (device directory removed)"),
];

/// Garbage and broken things (see [`HOSTILE_BROKEN`]), next to sane ones:
///
/// - `10000:e0:00.0` root port (8086:2030, pcieport, group 1) on root bus `pci10000:e0`, and
///   behind it `10000:e1:00.0`, a normal-looking NVMe (8086:0a54, nvme, group 2) whose
///   `nvme0n1p1` (259:1) holds `/`;
/// - `0000:00:00.0` a normal host bridge (group 0);
/// - `0000:00:01.0`..`0000:00:09.0` one breakage each (groups 3.. where they have one);
/// - `proc/cpuinfo` is sane but has no `flags` line at all; `proc/modules` has malformed lines;
///   `proc/cmdline` has non-UTF-8 bytes (`\xff\xfe`); dmar0; no dev/kvm.
pub fn hostile() -> HostTree {
    use hostile_addrs::*;
    let t = HostTree::new();
    // Sane cpuinfo minus the flags (and vmx flags) lines.
    let scratch = HostTree::new();
    scratch.cpuinfo(2, "GenuineIntel", "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", &["fpu", "vmx", "sse4_2"]);
    let cpuinfo = std::fs::read_to_string(scratch.path("proc/cpuinfo")).expect("read scratch cpuinfo");
    let cpuinfo: String =
        cpuinfo.split_inclusive('\n').filter(|l| !l.starts_with("flags") && !l.starts_with("vmx flags")).collect();
    t.file("proc/cpuinfo", cpuinfo)
        .file(
            "proc/modules",
            "kvm_intel 397312 0 - Live 0x0000000000000000\n\
             this line is not a module\n\
             kvm 1142784 one kvm_intel, Live 0x0000000000000000\n\
             vfio\n\
             \n\
             vfio_pci 16384 0 - Live\n",
        )
        .file(
            "proc/cmdline",
            b"BOOT_IMAGE=/vmlinuz root=/dev/nvme0n1p1 ro intel_iommu=on quiet \xff\xfe splash\n".as_slice(),
        )
        .osrelease("5.14.0-427.el9.x86_64")
        .numa_nodes(1)
        .iommu_unit("dmar0");

    // Sane part: a VMD-style domain and a host bridge.
    t.pci(&PciFn::new(HOST_BRIDGE, 0x8086, 0x2020, 0x060000).numa(0).group(0))
        .pci(&PciFn::new(VMD_ROOT_PORT, 0x8086, 0x2030, 0x060400).driver("pcieport").numa(0).group(1))
        .pci(
            &PciFn::new(NORMAL, 0x8086, 0x0a54, 0x010802)
                .parent(VMD_ROOT_PORT)
                .subsys(0x8086, 0x4802)
                .driver("nvme")
                .numa(0)
                .group(2),
        )
        .nvme(NORMAL, "nvme0", "nvme0n1", (259, 0), &[("nvme0n1p1", (259, 1))]);

    let nic = |addr: &str, group: u32| {
        PciFn::new(addr, 0x8086, 0x1572, 0x020000).rev(0x02).driver("i40e").numa(0).group(group)
    };
    let dir_of = |addr: &str| t.pci_dir(addr);

    // 01.0: vendor is not a number.
    t.pci(&nic(BANANA_VENDOR, 3)).file(&format!("{}/vendor", dir_of(BANANA_VENDOR).display()), "banana\n");
    // 02.0: no class file.
    t.pci(&nic(NO_CLASS, 4)).remove(&format!("{}/class", dir_of(NO_CLASS).display()));
    // 03.0: driver link (correct depth) to a driver directory that does not exist.
    t.pci(&PciFn::new(DANGLING_DRIVER, 0x8086, 0x1572, 0x020000).numa(0).group(5));
    let d = dir_of(DANGLING_DRIVER);
    t.symlink(
        &format!("{}/driver", d.display()),
        &relative(&d, Path::new("sys/bus/pci/drivers/ghost_driver")).to_string_lossy(),
    );
    // 04.0: numa_node is garbage.
    t.pci(&nic(GARBAGE_NUMA, 6)).file(&format!("{}/numa_node", dir_of(GARBAGE_NUMA).display()), "garbage\n");
    // 05.0: iommu_group link to a group that does not exist.
    t.pci(&PciFn::new(DANGLING_GROUP, 0x8086, 0x1572, 0x020000).driver("i40e").numa(0));
    let d = dir_of(DANGLING_GROUP);
    t.symlink(
        &format!("{}/iommu_group", d.display()),
        &relative(&d, Path::new("sys/kernel/iommu_groups/999")).to_string_lossy(),
    );
    // 06.0: SR-IOV PF with sriov_numvfs -3 and a virtfn0 pointing nowhere.
    t.pci(&nic(NEGATIVE_NUMVFS, 7).totalvfs(8));
    let d = dir_of(NEGATIVE_NUMVFS);
    t.file(&format!("{}/sriov_numvfs", d.display()), "-3\n")
        .symlink(&format!("{}/virtfn0", d.display()), "../0000:00:06.1");
    // 07.0: empty revision file.
    t.pci(&nic(EMPTY_REVISION, 8)).file(&format!("{}/revision", dir_of(EMPTY_REVISION).display()), "");
    // 08.0: a VF (config reads ffff) whose PF does not exist.
    t.pci(&PciFn::new(DANGLING_PHYSFN, 0x8086, 0x154c, 0x020000).driver("iavf").numa(0).group(9));
    let d = dir_of(DANGLING_PHYSFN);
    let mut cfg = std::fs::read(t.path(d.join("config"))).expect("read config");
    cfg[0..4].copy_from_slice(&[0xff; 4]);
    t.file(&format!("{}/config", d.display()), cfg).symlink(&format!("{}/physfn", d.display()), "../0000:00:1f.7");
    // 09.0: listed in sys/bus/pci/devices but its directory is gone.
    t.symlink(
        &format!("sys/bus/pci/devices/{DANGLING_BUS_LINK}"),
        &format!("../../../devices/pci0000:00/{DANGLING_BUS_LINK}"),
    );

    t.mounts(
        "/dev/nvme0n1p1 / xfs rw,relatime 0 0\n\
         proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
         sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n",
    )
    .routes(&[]);
    t
}
