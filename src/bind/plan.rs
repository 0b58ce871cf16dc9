//! The bind and unbind plans: pure functions of the host snapshot, the config, the kubelet's
//! allocations and nodeprep's own records. Nothing here touches the host.
//!
//! Rules (a cluster admin's expectations, and what hurt users of other tools):
//! - The unit is the IOMMU group: a VM can use a device only when every endpoint function of
//!   its group is on vfio-pci (bridges aside). Other endpoints in the group (a GPU's audio
//!   function) are bound with it as *companions*, or the whole group is refused with a reason.
//! - Never touch what the host or a pod uses: a disk holding a mounted file system or swap, an
//!   interface with the default route or an address, the boot VGA device, a device the kubelet
//!   allocated to a pod, a PF with VFs enabled, or a device with no IOMMU group.
//! - Never a PCI bridge (class 0604/0609): its driver (pcieport) serves everything behind it.
//! - Idempotent: a device already on vfio-pci needs no write.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::state::State;
use crate::config::{BindPolicy, Claim, Config};
use crate::host::kubelet::Allocation;
use crate::model::{PciAddress, PciDevice, PciInventory};

/// The driver nodeprep binds to.
pub use crate::model::pci::VFIO_PCI;

/// What happens to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "action")]
pub enum Action {
    /// Already on vfio-pci: no write.
    AlreadyBound,
    /// Move it from its driver (or none) to vfio-pci.
    Bind { from: Option<String> },
    /// The entry says `bind: none`: advertise, leave the driver.
    Leave,
    /// Not touched, and why.
    Refused { reason: String },
}

/// Why a device is selected in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Role {
    /// A config entry selected it, for this resource.
    Selected { resource_name: String, entry: String },
    /// It shares an IOMMU group with a selected device.
    Companion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePlan {
    pub address: PciAddress,
    pub iommu_group: Option<u32>,
    pub role: Role,
    #[serde(flatten)]
    pub action: Action,
}

/// The bind plan: per device, in address order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindPlan {
    /// vfio-pci must be loaded first.
    pub load_vfio: bool,
    pub devices: Vec<DevicePlan>,
    /// Groups being bound that have a member a pod holds, with the reason: a failed bind there
    /// is not rolled back (see [`group_in_use`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups_in_use: BTreeMap<u32, String>,
}

impl BindPlan {
    /// The devices that will be written to, grouped by IOMMU group (the unit of rollback).
    pub fn groups_to_bind(&self) -> BTreeMap<u32, Vec<&DevicePlan>> {
        let mut out: BTreeMap<u32, Vec<&DevicePlan>> = BTreeMap::new();
        for d in &self.devices {
            if let (Action::Bind { .. }, Some(g)) = (&d.action, d.iommu_group) {
                out.entry(g).or_default().push(d);
            }
        }
        out
    }

    pub fn refused(&self) -> impl Iterator<Item = &DevicePlan> {
        self.devices.iter().filter(|d| matches!(d.action, Action::Refused { .. }))
    }

    /// Number of devices that need writes.
    pub fn writes_needed(&self) -> usize {
        self.devices.iter().filter(|d| matches!(d.action, Action::Bind { .. })).count()
    }
}

/// Pure: why the host (or a pod) uses this device, if it does. (Devices already on vfio-pci
/// are never asked: nodeprep does not write to them.)
pub fn in_use_reason(d: &PciDevice, inv: &PciInventory, allocations: &[Allocation]) -> Option<String> {
    let uses = d.host_uses();
    if !uses.is_empty() {
        return Some(format!("the host uses it: {}", uses.join("; ")));
    }
    if !d.use_unknown.is_empty() {
        return Some(format!("nodeprep cannot tell whether the host uses it: {}", d.use_unknown.join("; ")));
    }
    if let Some(a) = allocations.iter().find(|a| a.holds(&d.address.to_string())) {
        return Some(format!(
            "the kubelet allocated it to pod {} (container {}) as {}",
            a.pod_uid, a.container_name, a.resource_name
        ));
    }
    if d.sriov_num_vfs.is_some_and(|n| n > 0) {
        let in_use: Vec<String> = d
            .vfs
            .iter()
            .filter_map(|vf| inv.device(vf))
            .filter(|vf| vf.driver.is_some() || allocations.iter().any(|a| a.holds(&vf.address.to_string())))
            .map(|vf| format!("{} ({})", vf.address, vf.driver.as_deref().unwrap_or("allocated")))
            .collect();
        let n = d.sriov_num_vfs.unwrap_or(0);
        return Some(if in_use.is_empty() {
            format!(
                "it is an SR-IOV PF with {n} VFs enabled: unbinding its driver would remove them (set sriov_numvfs to 0 first)"
            )
        } else {
            format!("it is an SR-IOV PF whose VFs are in use: {}", in_use.join(", "))
        });
    }
    None
}

/// Pure: why no member of IOMMU group `group` may be given back to a host driver: another
/// member (not `except`) is allocated to a pod. While a VM holds the group, a host driver
/// probing one of its devices trips a BUG_ON in vfio before Linux 5.19.
pub fn group_in_use(
    inv: &PciInventory,
    group: u32,
    except: Option<&PciAddress>,
    allocations: &[Allocation],
) -> Option<String> {
    let members = inv.group(group).map(|g| g.devices.as_slice()).unwrap_or_default();
    members.iter().filter(|m| Some(*m) != except).find_map(|m| {
        let a = allocations.iter().find(|a| a.holds(&m.to_string()))?;
        Some(format!(
            "{m} in IOMMU group {group} is allocated to pod {} (container {}) as {}; restoring a member of a group in use crashes hosts before Linux 5.19",
            a.pod_uid, a.container_name, a.resource_name
        ))
    })
}

/// Pure: the bind plan. `claims` come from [`Config::claims`] on the same inventory.
pub fn plan_bind(
    inv: &PciInventory,
    config: &Config,
    claims: &[Claim],
    allocations: &[Allocation],
    vfio_loaded: bool,
) -> BindPlan {
    let mut devices: BTreeMap<PciAddress, DevicePlan> = BTreeMap::new();
    let mut groups_in_use = BTreeMap::new();
    // Devices whose entry says bind: none, and companions already decided by group.
    let leave: BTreeSet<PciAddress> = claims
        .iter()
        .filter(|c| config.entries.get(c.entry).is_some_and(|e| e.bind == BindPolicy::Leave))
        .map(|c| c.address)
        .collect();

    let mut by_group: BTreeMap<Option<u32>, Vec<&Claim>> = BTreeMap::new();
    for c in claims {
        let group = inv.device(&c.address).and_then(|d| d.iommu_group);
        by_group.entry(group).or_default().push(c);
    }

    for (group, group_claims) in by_group {
        let role_of = |c: &Claim| Role::Selected {
            resource_name: c.resource_name.clone(),
            entry: config.entries.get(c.entry).map(|e| e.name.to_string()).unwrap_or_default(),
        };
        // Leave-entries never write: they are advertised as they are.
        let (to_leave, to_bind): (Vec<&Claim>, Vec<&Claim>) =
            group_claims.into_iter().partition(|c| leave.contains(&c.address));
        // A selected bridge is never moved off its driver (pcieport): everything behind it
        // would lose its link, interrupts and error reporting.
        let (bridges, to_bind): (Vec<&Claim>, Vec<&Claim>) =
            to_bind.into_iter().partition(|c| inv.device(&c.address).is_some_and(PciDevice::is_bridge));
        for c in bridges {
            let reason = format!(
                "it is a PCI bridge: unbinding {} would cut off everything behind it",
                inv.device(&c.address).and_then(|d| d.driver.as_deref()).unwrap_or("pcieport")
            );
            devices.insert(
                c.address,
                DevicePlan {
                    address: c.address,
                    iommu_group: group,
                    role: role_of(c),
                    action: Action::Refused { reason },
                },
            );
        }
        for c in to_leave {
            devices.insert(
                c.address,
                DevicePlan { address: c.address, iommu_group: group, role: role_of(c), action: Action::Leave },
            );
        }
        if to_bind.is_empty() {
            continue;
        }
        let Some(g) = group else {
            for c in to_bind {
                let reason =
                    "it has no IOMMU group: the IOMMU is off (nodeprep check says how to turn it on)".to_owned();
                devices.insert(
                    c.address,
                    DevicePlan {
                        address: c.address,
                        iommu_group: None,
                        role: role_of(c),
                        action: Action::Refused { reason },
                    },
                );
            }
            continue;
        };
        let selected: BTreeSet<PciAddress> = to_bind.iter().map(|c| c.address).collect();
        let endpoints: Vec<&PciDevice> =
            inv.group(g).map(|grp| grp.endpoints.iter().filter_map(|a| inv.device(a)).collect()).unwrap_or_default();

        // The group is refused as a whole when any endpoint that needs writing is in use, or
        // when a companion is one a config entry wants left on its driver.
        let mut blocker: Option<String> = None;
        for d in &endpoints {
            if d.driver.as_deref() == Some(VFIO_PCI) {
                continue;
            }
            if leave.contains(&d.address) {
                blocker = Some(format!("{} shares IOMMU group {g} and its config entry says bind: none", d.address));
                break;
            }
            if d.boot_vga {
                blocker = Some(format!("{} in IOMMU group {g} is the boot VGA device (the host console)", d.address));
                break;
            }
            if let Some(why) = in_use_reason(d, inv, allocations) {
                let who = if selected.contains(&d.address) {
                    String::new()
                } else {
                    format!("{} in IOMMU group {g}: ", d.address)
                };
                blocker = Some(format!("{who}{why}"));
                break;
            }
        }
        for c in &to_bind {
            let d = inv.device(&c.address);
            let action = match (&blocker, d) {
                (Some(reason), _) => Action::Refused { reason: reason.clone() },
                (None, Some(d)) if d.driver.as_deref() == Some(VFIO_PCI) => Action::AlreadyBound,
                (None, Some(d)) => Action::Bind { from: d.driver.clone() },
                (None, None) => Action::Refused { reason: "it is no longer present".into() },
            };
            devices
                .insert(c.address, DevicePlan { address: c.address, iommu_group: Some(g), role: role_of(c), action });
        }
        if blocker.is_none() {
            if let Some(why) = group_in_use(inv, g, None, allocations) {
                groups_in_use.insert(g, why);
            }
            for d in endpoints.iter().filter(|d| !selected.contains(&d.address)) {
                let action = if d.driver.as_deref() == Some(VFIO_PCI) {
                    Action::AlreadyBound
                } else {
                    Action::Bind { from: d.driver.clone() }
                };
                devices.entry(d.address).or_insert(DevicePlan {
                    address: d.address,
                    iommu_group: Some(g),
                    role: Role::Companion,
                    action,
                });
            }
        }
    }
    let devices: Vec<DevicePlan> = devices.into_values().collect();
    let load_vfio = !vfio_loaded && devices.iter().any(|d| matches!(d.action, Action::Bind { .. }));
    BindPlan { load_vfio, devices, groups_in_use }
}

/// What happens to one recorded device on unbind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "action")]
pub enum RestoreAction {
    /// Give it back its original driver (or none).
    Restore { to: Option<String> },
    /// Someone already moved it off vfio-pci: only forget the record (and clear our override).
    Forget { driver: Option<String> },
    /// The device is gone: forget the record.
    Gone,
    /// Not touched, and why.
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePlan {
    pub address: PciAddress,
    #[serde(flatten)]
    pub action: RestoreAction,
}

/// Pure: the unbind plan for the recorded devices (all of them, or only `only`). A device a
/// pod holds is refused: taking it away would break a running VM; so is one whose IOMMU group
/// has a member a pod holds (see [`group_in_use`]).
pub fn plan_unbind(
    inv: &PciInventory,
    state: &State,
    allocations: &[Allocation],
    only: &[PciAddress],
) -> Vec<RestorePlan> {
    state
        .devices
        .iter()
        .filter(|(a, _)| only.is_empty() || only.contains(a))
        .map(|(a, rec)| {
            let action = match inv.device(a) {
                None => RestoreAction::Gone,
                Some(d) => {
                    if let Some(al) = allocations.iter().find(|al| al.holds(&a.to_string())) {
                        RestoreAction::Refused {
                            reason: format!(
                                "the kubelet allocated it to pod {} (container {}) as {}",
                                al.pod_uid, al.container_name, al.resource_name
                            ),
                        }
                    } else if let Some(reason) = d.iommu_group.and_then(|g| group_in_use(inv, g, Some(a), allocations))
                    {
                        RestoreAction::Refused { reason }
                    } else {
                        match d.driver.as_deref() {
                            Some(VFIO_PCI) | None => RestoreAction::Restore { to: rec.original_driver.clone() },
                            Some(other) => RestoreAction::Forget { driver: Some(other.to_owned()) },
                        }
                    }
                }
            };
            RestorePlan { address: *a, action }
        })
        .collect()
}

impl fmt::Display for BindPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.load_vfio {
            writeln!(f, "load the vfio-pci module")?;
        }
        for d in &self.devices {
            let group = d.iommu_group.map_or_else(|| "no IOMMU group".to_owned(), |g| format!("IOMMU group {g}"));
            let why = match &d.role {
                Role::Selected { resource_name, entry } => format!("{resource_name} ({entry})"),
                Role::Companion => "companion: shares the group".to_owned(),
            };
            match &d.action {
                Action::AlreadyBound => writeln!(f, "keep    {} already on vfio-pci, {group}, for {why}", d.address)?,
                Action::Bind { from } => writeln!(
                    f,
                    "bind    {} {} -> vfio-pci, {group}, for {why}",
                    d.address,
                    from.as_deref().unwrap_or("(no driver)")
                )?,
                Action::Leave => writeln!(f, "leave   {} on its driver, for {why}", d.address)?,
                Action::Refused { reason } => writeln!(f, "refuse  {} for {why}: {reason}", d.address)?,
            }
        }
        if self.devices.is_empty() {
            writeln!(f, "nothing selected: the config selects no device on this host")?;
        }
        Ok(())
    }
}
