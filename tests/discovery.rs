//! Discovery on fixture trees laid out like the kernel's: every fact the scan reports, checked
//! against what each fixture machine was built with.

mod support;

use nodeprep::host::{HostRoot, pci};
use nodeprep::model::{PciAddress, PciDevice, PciInventory};
use support::machines::{self, hostile_addrs as h, intel};

fn addr(s: &str) -> PciAddress {
    s.parse().expect("fixture address")
}

fn discover(t: &support::HostTree) -> PciInventory {
    pci::discover(&HostRoot::new(t.root())).expect("discover")
}

fn dev<'a>(inv: &'a PciInventory, a: &str) -> &'a PciDevice {
    inv.device(&addr(a)).unwrap_or_else(|| panic!("{a} not discovered"))
}

#[test]
fn intel_gpu_server_ids_names_drivers() {
    let inv = discover(&machines::intel_gpu_server());
    let gpu = dev(&inv, intel::GPU_A);
    assert_eq!((gpu.vendor_id, gpu.device_id), (Some(0x10de), Some(0x1eb8)));
    assert_eq!((gpu.subsystem_vendor_id, gpu.subsystem_device_id), (Some(0x10de), Some(0x12a2)));
    assert_eq!(gpu.class_id, Some(0x030200));
    assert_eq!(gpu.vendor_name.as_deref(), Some("NVIDIA Corporation"));
    assert_eq!(gpu.device_name.as_deref(), Some("TU104GL [Tesla T4]"));
    assert_eq!(gpu.class_name.as_deref(), Some("3D controller"));
    assert_eq!(gpu.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(gpu.driver_override.as_deref(), Some("vfio-pci"));
    assert_eq!(gpu.iommu_group, Some(intel::GPU_A_GROUP));
    let audio = dev(&inv, intel::GPU_B_AUDIO);
    assert_eq!(audio.driver.as_deref(), Some("snd_hda_intel"));
    assert_eq!(audio.class_name.as_deref(), Some("Audio device"));
    assert_eq!(audio.driver_override, None, "(null) means no override");
    assert_eq!(dev(&inv, intel::MLX_PF).numa_node, Some(1));
    assert_eq!(dev(&inv, intel::HOST_BRIDGE).driver, None);
    for d in &inv.devices {
        assert!(d.warnings.is_empty(), "{}: unexpected warnings {:?}", d.address, d.warnings);
    }
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
}

#[test]
fn intel_gpu_server_iommu_groups() {
    let inv = discover(&machines::intel_gpu_server());
    let shared = inv.group(intel::GPU_B_GROUP).expect("GPU B group");
    assert_eq!(shared.devices, vec![addr(intel::GPU_B), addr(intel::GPU_B_AUDIO)]);
    assert_eq!(shared.endpoints.len(), 2);
    assert!(!shared.is_isolated(), "GPU + audio function share a group");
    assert_eq!(shared.group_type.as_deref(), Some("DMA"));
    let alone = inv.group(intel::GPU_A_GROUP).expect("GPU A group");
    assert!(alone.is_isolated());
    assert_eq!(alone.devices, vec![addr(intel::GPU_A)]);
    // The groups partition the devices: every device is in exactly the group it names.
    let members: usize = inv.groups.iter().map(|g| g.devices.len()).sum();
    assert_eq!(members, inv.devices.len());
    for g in &inv.groups {
        for a in &g.devices {
            assert_eq!(inv.device(a).and_then(|d| d.iommu_group), Some(g.number));
        }
    }
    // Root ports are bridges, not endpoints.
    let rp = inv.group(dev(&inv, intel::RP_GPU_A).iommu_group.expect("rp group")).expect("group");
    assert!(rp.endpoints.is_empty() && rp.devices.len() == 1);
}

#[test]
fn intel_gpu_server_sriov() {
    let inv = discover(&machines::intel_gpu_server());
    let qat = dev(&inv, intel::QAT_PF);
    assert_eq!((qat.sriov_total_vfs, qat.sriov_num_vfs), (Some(16), Some(4)));
    assert_eq!(qat.vfs, intel::QAT_VFS.iter().map(|a| addr(a)).collect::<Vec<_>>());
    for (i, vf) in intel::QAT_VFS.iter().enumerate() {
        let vf = dev(&inv, vf);
        assert_eq!(vf.physfn, Some(addr(intel::QAT_PF)));
        assert_eq!(vf.vf_index, Some(i as u32));
        assert_eq!(vf.device_id, Some(0x37c9));
        assert_eq!(vf.sriov_total_vfs, None);
    }
    let mlx = dev(&inv, intel::MLX_PF);
    assert_eq!((mlx.sriov_total_vfs, mlx.sriov_num_vfs, mlx.vfs.len()), (Some(8), Some(4), 4));
    let vf2 = dev(&inv, intel::MLX_VFS[2]);
    assert_eq!((vf2.physfn, vf2.vf_index), (Some(addr(intel::MLX_PF)), Some(2)));
    assert_eq!(dev(&inv, intel::NIC).vfs, vec![], "X710 has SR-IOV but no VFs enabled");
    assert_eq!(dev(&inv, intel::NIC).sriov_num_vfs, Some(0));
}

#[test]
fn intel_gpu_server_host_usage() {
    let inv = discover(&machines::intel_gpu_server());
    let nic = dev(&inv, intel::NIC);
    assert_eq!(nic.net.len(), 1);
    assert_eq!(nic.net[0].name, "eno1");
    assert!(nic.net[0].default_route);
    assert_eq!(nic.net[0].operstate.as_deref(), Some("up"));
    assert!(nic.host_uses().iter().any(|u| u.contains("default route")));

    let nvme = dev(&inv, intel::NVME);
    assert_eq!(nvme.block.len(), 1);
    let disk = &nvme.block[0];
    assert_eq!(disk.name, "nvme0n1");
    assert_eq!(disk.partitions, vec!["nvme0n1p1", "nvme0n1p2", "nvme0n1p3"]);
    let mounts: Vec<(&str, &str)> = disk.mounts.iter().map(|m| (m.device.as_str(), m.mount_point.as_str())).collect();
    assert!(mounts.contains(&("dm-0", "/")), "root on LVM over nvme0n1p3: {mounts:?}");
    assert!(mounts.contains(&("nvme0n1p1", "/boot/efi")), "{mounts:?}");
    assert!(mounts.contains(&("nvme0n1p2", "/boot")), "{mounts:?}");
    assert_eq!(disk.swaps, vec!["dm-1"]);
    assert!(nvme.host_uses().iter().any(|u| u.contains("mounted /")));

    // The MLX PF has an interface but no default route; the GPU has nothing.
    let mlx = dev(&inv, intel::MLX_PF);
    assert_eq!(mlx.net.iter().map(|n| (n.name.as_str(), n.default_route)).collect::<Vec<_>>(), vec![("ens1f0", false)]);
    assert!(dev(&inv, intel::GPU_A).host_uses().is_empty());
}

#[test]
fn amd_host_without_iommu_has_no_groups() {
    let t = machines::amd_iommu_off();
    let inv = discover(&t);
    assert!(inv.groups.is_empty());
    assert!(inv.devices.iter().all(|d| d.iommu_group.is_none()));
    let sata = dev(&inv, machines::amd::SATA);
    assert_eq!(sata.block.len(), 1, "sda behind ata1/host0/...: {:?}", sata.block);
    assert_eq!(sata.block[0].name, "sda");
    assert!(sata.block[0].mounts.iter().any(|m| m.mount_point == "/"), "{:?}", sata.block[0]);
    assert!(dev(&inv, machines::amd::NIC0).net.iter().any(|n| n.default_route));
}

#[test]
fn nested_vm_virtio_devices() {
    let inv = discover(&machines::nested_vm());
    let blk = dev(&inv, machines::vm::VIRTIO_BLK);
    assert_eq!(blk.driver.as_deref(), Some("virtio-pci"));
    assert_eq!(blk.block.first().map(|b| b.name.as_str()), Some("vda"));
    assert!(blk.block[0].mounts.iter().any(|m| m.mount_point == "/"));
    assert!(dev(&inv, machines::vm::VIRTIO_NET).net.iter().any(|n| n.default_route));
}

#[test]
fn four_thousand_functions() {
    let inv = discover(&machines::sriov_4096());
    assert_eq!(inv.devices.len(), 4096);
    let pfs: Vec<&PciDevice> = inv.devices.iter().filter(|d| d.sriov_total_vfs.is_some()).collect();
    assert_eq!(pfs.len(), 64);
    for pf in pfs {
        assert_eq!(pf.vfs.len(), 63, "{}", pf.address);
        for (i, vf) in pf.vfs.iter().enumerate() {
            let vf = inv.device(vf).expect("vf");
            assert_eq!((vf.physfn, vf.vf_index), (Some(pf.address), Some(i as u32)));
        }
    }
    assert_eq!(inv.groups.len(), 4096);
    assert!(inv.groups.iter().all(|g| g.is_isolated() && g.devices.len() == 1));
    assert!(inv.devices.iter().all(|d| d.warnings.is_empty()));
}

#[test]
fn hostile_tree_gives_warnings_not_panics() {
    let t = machines::hostile();
    let inv = discover(&t);
    for (a, what) in machines::HOSTILE_BROKEN {
        let d = dev(&inv, a);
        assert!(!d.warnings.is_empty(), "{a} ({what}) must carry a warning");
    }
    // Each broken value is absent, never silently wrong.
    assert_eq!(dev(&inv, h::BANANA_VENDOR).vendor_id, None);
    assert!(dev(&inv, h::BANANA_VENDOR).warnings.iter().any(|w| w.contains("banana") && w.contains("/vendor")));
    assert_eq!(dev(&inv, h::NO_CLASS).class_id, None);
    assert_eq!(dev(&inv, h::DANGLING_DRIVER).driver, None);
    assert!(dev(&inv, h::DANGLING_DRIVER).warnings.iter().any(|w| w.contains("dangling")));
    assert_eq!(dev(&inv, h::GARBAGE_NUMA).numa_node, None);
    assert_eq!(dev(&inv, h::DANGLING_GROUP).iommu_group, None);
    assert_eq!(dev(&inv, h::NEGATIVE_NUMVFS).sriov_num_vfs, None);
    assert!(dev(&inv, h::NEGATIVE_NUMVFS).vfs.is_empty());
    assert_eq!(dev(&inv, h::EMPTY_REVISION).revision, None);
    assert_eq!(dev(&inv, h::DANGLING_PHYSFN).physfn, None);
    // The sane devices, including the one in domain 10000, are read in full.
    for a in [h::NORMAL, h::VMD_ROOT_PORT, h::HOST_BRIDGE] {
        let d = dev(&inv, a);
        assert!(d.warnings.is_empty(), "{a}: {:?}", d.warnings);
        assert!(d.vendor_id.is_some() && d.class_id.is_some());
    }
    let normal = dev(&inv, h::NORMAL);
    assert_eq!(normal.address.domain, 0x10000);
    assert_eq!(normal.address.to_string(), "10000:e1:00.0");
    assert!(normal.iommu_group.is_some());
    assert!(normal.block.iter().flat_map(|b| &b.mounts).any(|m| m.mount_point == "/"));
}

#[test]
fn missing_sysfs_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = pci::discover(&HostRoot::new(dir.path())).expect_err("no sysfs");
    let msg = err.to_string();
    assert!(msg.contains("sys/bus/pci/devices") && msg.contains("read directory"), "{msg}");
}

#[test]
fn real_host_scan_succeeds() {
    let inv = pci::discover(&HostRoot::new("/")).expect("discover the machine running the tests");
    let listed = std::fs::read_dir("/sys/bus/pci/devices").map(|d| d.count()).unwrap_or(0);
    assert_eq!(inv.devices.len(), listed);
    for d in &inv.devices {
        assert!(d.vendor_id.is_some() && d.class_id.is_some(), "{}: {:?}", d.address, d.warnings);
    }
}
