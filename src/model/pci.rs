//! What discovery knows about the PCI functions of a node: plain data, no I/O.

use serde::{Deserialize, Serialize};

use super::address::PciAddress;

/// The driver VMs and DPDK need devices on.
pub const VFIO_PCI: &str = "vfio-pci";

/// The sysfs directory that exists once the vfio-pci driver is loaded (under the host root).
pub const VFIO_PCI_DRIVER_DIR: &str = "sys/bus/pci/drivers/vfio-pci";

/// PCI class code of a PCI-to-PCI bridge (base class 06, subclass 04): bridges may share an
/// IOMMU group with endpoints without making the group unusable for passthrough.
pub fn is_bridge_class(class_id: u32) -> bool {
    matches!(class_id >> 8, 0x0604 | 0x0609)
}

/// One PCI function as sysfs describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PciDevice {
    pub address: PciAddress,
    /// `None` when the `vendor` file is missing or garbage (see `warnings`).
    #[serde(with = "opt_hex4")]
    pub vendor_id: Option<u16>,
    #[serde(with = "opt_hex4")]
    pub device_id: Option<u16>,
    #[serde(with = "opt_hex4")]
    pub subsystem_vendor_id: Option<u16>,
    #[serde(with = "opt_hex4")]
    pub subsystem_device_id: Option<u16>,
    /// 24-bit class code: base class, subclass, programming interface (`030200`).
    #[serde(with = "opt_hex6")]
    pub class_id: Option<u32>,
    pub revision: Option<u8>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub subsystem_name: Option<String>,
    pub class_name: Option<String>,
    /// The bound driver (the name behind the `driver` link).
    pub driver: Option<String>,
    /// `driver_override`, when set.
    pub driver_override: Option<String>,
    pub iommu_group: Option<u32>,
    /// NUMA node; `None` when the kernel says -1 (no affinity).
    pub numa_node: Option<u32>,
    /// On a VF: its PF.
    pub physfn: Option<PciAddress>,
    /// On a VF: its index N (the PF's `virtfnN`).
    pub vf_index: Option<u32>,
    /// On a PF: `sriov_totalvfs`.
    pub sriov_total_vfs: Option<u32>,
    /// On a PF: `sriov_numvfs`.
    pub sriov_num_vfs: Option<u32>,
    /// On a PF: its VFs, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfs: Vec<PciAddress>,
    /// The firmware's boot display device.
    pub boot_vga: bool,
    /// Network interfaces the host has through this function.
    #[serde(default)]
    pub net: Vec<NetInterface>,
    /// Block devices the host has through this function.
    #[serde(default)]
    pub block: Vec<BlockDevice>,
    /// Why nodeprep cannot tell whether the host uses this function (a table that decides it
    /// could not be read, an interface it cannot see): such a function is never bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub use_unknown: Vec<String>,
    /// Processes holding one of its character device nodes open (`/dev/dri/card0`, ...). Filled
    /// only at bind time, for the devices a plan would write to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_open: Vec<OpenNode>,
    /// Files that were missing or garbage for this device; the matching fields are `None`.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl PciDevice {
    pub fn is_bridge(&self) -> bool {
        self.class_id.is_some_and(is_bridge_class)
    }

    pub fn is_vf(&self) -> bool {
        self.physfn.is_some()
    }

    /// What the host uses through this function, in words; empty when nothing.
    pub fn host_uses(&self) -> Vec<String> {
        let mut uses = Vec::new();
        for n in &self.net {
            if let Some(m) = &n.master {
                uses.push(format!("{} is {}", n.name, m.describe()));
            }
            if !n.uppers.is_empty() {
                uses.push(format!("{} has upper device {}", n.name, n.uppers.join(", ")));
            }
            carries(&mut uses, &n.name, n.default_route, &n.addresses, &n.routes);
            for a in &n.above {
                carries(&mut uses, &format!("{} above {}", a.name, a.below), a.default_route, &a.addresses, &a.routes);
            }
        }
        for b in &self.block {
            for m in &b.mounts {
                uses.push(format!("{} holds mounted {}", m.device, m.mount_point));
            }
            for s in &b.swaps {
                uses.push(format!("{s} is in use as swap"));
            }
            for h in &b.holders {
                uses.push(format!("{} is held by {} ({})", h.device, h.holder, h.kind));
            }
            for m in &b.btrfs {
                uses.push(format!(
                    "{} belongs to btrfs {} ({} devices: {})",
                    m.device,
                    m.label.as_deref().map_or_else(|| m.fsid.clone(), |l| format!("{:?} {}", l, m.fsid)),
                    m.members.len(),
                    m.members.join(", ")
                ));
            }
            for name in &b.busy {
                uses.push(format!("{name} is held open exclusively (an O_EXCL open fails with EBUSY)"));
            }
        }
        for o in &self.held_open {
            uses.push(format!("process {} ({}) holds {} open", o.pid, o.comm, o.node));
        }
        if self.boot_vga {
            uses.push("boot VGA device".to_owned());
        }
        uses
    }
}

/// What an interface (or one stacked above it) carries, in words.
fn carries(uses: &mut Vec<String>, who: &str, default_route: bool, addresses: &[String], routes: &[String]) {
    if default_route {
        uses.push(format!("{who} carries the default route"));
    }
    if !addresses.is_empty() {
        uses.push(format!("{who} has address {}", addresses.join(", ")));
    }
    if !routes.is_empty() {
        uses.push(format!("{who} has route {}", routes.join(", ")));
    }
}

/// A network interface behind a PCI function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetInterface {
    pub name: String,
    /// `operstate` (`up`, `down`, ...), when readable.
    pub operstate: Option<String>,
    /// The interface carries an IPv4 or IPv6 default route in the main table.
    pub default_route: bool,
    /// Its addresses: IPv4 networks it is connected to (from the routing table) and global
    /// IPv6 addresses. Link-local addresses do not count.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Other routes through it, in any table (`10.1.0.0/16 table 100`, `default table 100`);
    /// routes the kernel adds for its addresses are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The bond, bridge, team or OVS datapath it is enslaved to (`master` link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<NetMaster>,
    /// Its upper devices other than the master (`upper_*` links: VLANs, macvlans).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uppers: Vec<String>,
    /// Every interface stacked above it, followed transitively through master and upper links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub above: Vec<NetAbove>,
}

/// The master an interface is enslaved to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetMaster {
    pub name: String,
    /// The kernel's link kind when nodeprep can tell: `bond`, `bridge`, `team`, `openvswitch`.
    pub kind: Option<String>,
}

impl NetMaster {
    /// "a port of OVS (ovs-system)", "a slave of bond bond0", ...
    pub fn describe(&self) -> String {
        let m = &self.name;
        match self.kind.as_deref() {
            Some("openvswitch") => format!("a port of OVS ({m})"),
            Some("bond") => format!("a slave of bond {m}"),
            Some("bridge") => format!("a port of bridge {m}"),
            Some("team") => format!("a port of team {m}"),
            Some(k) => format!("enslaved to {k} {m}"),
            None => format!("enslaved to master {m}"),
        }
    }
}

/// An interface stacked above a PCI function's interface, and what it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetAbove {
    pub name: String,
    /// The interface directly below it on the way up.
    pub below: String,
    pub default_route: bool,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A whole-disk block device behind a PCI function, with what the host mounts from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDevice {
    pub name: String,
    /// Partitions of the disk.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Mounted file systems on the disk, its partitions, or devices stacked on them (dm, md).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Swap areas on the disk or its partitions.
    #[serde(default)]
    pub swaps: Vec<String>,
    /// Devices stacked directly on the disk or its partitions (LVM, dm-crypt, md), mounted or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<BlockHolder>,
    /// Memberships of the disk or its partitions in a btrfs the kernel has open
    /// (`sys/fs/btrfs/<fsid>/devices/<name>`), however that btrfs is mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub btrfs: Vec<BtrfsMember>,
    /// For an NVMe native-multipath head (`nvme1n1` under `nvme-subsys1`): the subsystem. The
    /// head's disk is listed on every PCI function with a controller in that subsystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvme_subsystem: Option<String>,
    /// The disk or partitions an exclusive open found busy (EBUSY). Filled only at bind time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<String>,
}

/// A block device stacked on a disk or partition (a `holders/` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockHolder {
    /// The disk or partition held (`nvme1n1`, `sda2`).
    pub device: String,
    /// The holder's kernel name (`dm-3`, `md0`).
    pub holder: String,
    /// What the holder is, in words: `LVM volume vg0-osd0`, `dm-crypt volume luks-1`, `md raid1 array`.
    pub kind: String,
}

/// A disk or partition that is a device of a btrfs file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BtrfsMember {
    /// The member (`nvme2n1`).
    pub device: String,
    pub fsid: String,
    pub label: Option<String>,
    /// Every device of that btrfs, sorted.
    pub members: Vec<String>,
}

/// A process holding a device's character node open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenNode {
    /// The node as devtmpfs names it (`/dev/dri/card0`).
    pub node: String,
    pub pid: u32,
    pub comm: String,
}

/// One mounted file system backed by a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// The block device that is mounted (`nvme0n1p2`, `dm-0`).
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
}

/// An IOMMU group and its members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IommuGroup {
    pub number: u32,
    /// The group's `type` (`DMA`, `DMA-FQ`, `identity`, ...), when the kernel has the file.
    #[serde(rename = "type")]
    pub group_type: Option<String>,
    /// Every PCI function in the group.
    pub devices: Vec<PciAddress>,
    /// The functions that are not bridges: all must be on vfio-pci for a VM to use the group.
    pub endpoints: Vec<PciAddress>,
    /// `name` reads `vfio-noiommu` for a no-IOMMU group.
    pub no_iommu: bool,
}

impl IommuGroup {
    /// Only one endpoint function, bridges aside.
    pub fn is_isolated(&self) -> bool {
        self.endpoints.len() <= 1
    }
}

/// Every PCI function of the node and its IOMMU groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PciInventory {
    /// Sorted by address.
    pub devices: Vec<PciDevice>,
    /// Sorted by number.
    pub groups: Vec<IommuGroup>,
    /// Problems not tied to one device (an unreadable mount table, ...).
    pub warnings: Vec<String>,
}

impl PciInventory {
    pub fn device(&self, address: &PciAddress) -> Option<&PciDevice> {
        self.devices.binary_search_by(|d| d.address.cmp(address)).ok().map(|i| &self.devices[i])
    }

    pub fn group(&self, number: u32) -> Option<&IommuGroup> {
        self.groups.binary_search_by(|g| g.number.cmp(&number)).ok().map(|i| &self.groups[i])
    }
}

macro_rules! opt_hex_serde {
    ($name:ident, $ty:ty, $width:literal) => {
        mod $name {
            use serde::{Deserialize, Deserializer, Serializer};
            pub fn serialize<S: Serializer>(v: &Option<$ty>, s: S) -> Result<S::Ok, S::Error> {
                match v {
                    Some(v) => s.collect_str(&format_args!("{:0w$x}", v, w = $width)),
                    None => s.serialize_none(),
                }
            }
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
                let s = Option::<String>::deserialize(d)?;
                s.map(|s| <$ty>::from_str_radix(s.trim_start_matches("0x"), 16).map_err(serde::de::Error::custom))
                    .transpose()
            }
        }
    };
}
opt_hex_serde!(opt_hex4, u16, 4);
opt_hex_serde!(opt_hex6, u32, 6);
