//! Giving devices back: a device nodeprep bound to vfio-pci that the config no longer wants
//! there (no entry selects it, or its entry now says `bind: none`) returns to the driver it had
//! before ([`super::state`] recorded it), as soon as nothing holds it.
//!
//! - Held means: the kubelet allocated it, or another function of its IOMMU group, to a pod that
//!   still exists (a device-plugin allocation), or a DRA claim nodeprep prepared holds it. Such
//!   a device is *pending*: it stays on vfio-pci (taking it from a running VM breaks the VM;
//!   giving back one function of a group a VM holds crashes hosts before Linux 5.19) and is
//!   given back once its holder is gone, for example after the node is drained.
//! - Whether a pod still exists is the API server's to say ([`PodView`]). Without its answer
//!   every allocation in the checkpoint counts (the kubelet leaves a gone pod's devices there
//!   until its next allocation): a device then stays pending longer, never goes back too early.
//! - A DRA device `atRest: host` a claim holds is in use as designed (its Unprepare gives it
//!   back); one no claim holds goes back here too (its `atRest` was `vfio` when it was bound).
//! - `release: manual` keeps every device where it is, as nodeprep did before.
//!
//! [`plan_release`] is pure; [`release_per_config`] reads the host and carries the plan out
//! through the same restore as `nodeprep unbind`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::plan::{RestoreAction, RestorePlan, VFIO_PCI};
use super::state::State;
use crate::config::{AtRest, BindPolicy, Config, Front, Release};
use crate::host::kubelet::Allocation;
use crate::model::{Holder, PciAddress, PciInventory, PodView};

/// What happens to one recorded device the config no longer wants on vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "action")]
pub enum ReleaseAction {
    /// Give it back its original driver (or none).
    Restore { to: Option<String> },
    /// Someone already moved it off vfio-pci: forget the record.
    Forget { driver: Option<String> },
    /// The device is gone: forget the record.
    Gone,
    /// Held: it stays on vfio-pci until `holder` lets it go.
    Pending { holder: Holder },
    /// `release: manual`: it stays until `nodeprep unbind`.
    Manual,
}

/// One recorded device to give back, why, and what happens now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasePlan {
    pub address: PciAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// Why the config no longer wants it on vfio-pci.
    pub why: String,
    #[serde(flatten)]
    pub action: ReleaseAction,
}

/// What the config wants of the devices, as [`plan_release`] needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Selected for vfio-pci at rest: a device-plugin entry, or a DRA entry `atRest: vfio`.
    pub vfio: BTreeSet<PciAddress>,
    /// Selected by a device-plugin entry that says `bind: none`.
    pub host: BTreeSet<PciAddress>,
    /// Selected by a DRA entry `atRest: host`: on vfio-pci only while a claim holds it.
    pub dra_host: BTreeSet<PciAddress>,
}

/// Pure: what the config wants of the devices its entries select on `inv` (`claims` from
/// [`Config::claims_with`]).
pub fn wanted(config: &Config, claims: &[crate::config::Claim]) -> Wanted {
    let mut w = Wanted::default();
    for c in claims {
        let Some(e) = config.entries.get(c.entry) else { continue };
        match (e.front, e.bind) {
            (Front::Dra(AtRest::Vfio), _) | (Front::DevicePlugin, BindPolicy::VfioPci) => w.vfio.insert(c.address),
            (Front::Dra(AtRest::Host), _) => w.dra_host.insert(c.address),
            (Front::DevicePlugin, BindPolicy::Leave) => w.host.insert(c.address),
        };
    }
    w
}

/// Pure: the holders of devices, by PCI address: the kubelet's allocations except those of
/// pods known to be gone, then the DRA claims.
pub fn holders(
    allocations: &[Allocation],
    pods: &PodView,
    claims: impl IntoIterator<Item = (PciAddress, Holder)>,
) -> BTreeMap<PciAddress, Holder> {
    let mut out = BTreeMap::new();
    for a in allocations {
        // Gone: the kubelet just has not tidied its checkpoint yet.
        if pods.gone.contains(&a.pod_uid) {
            continue;
        }
        let name = pods.names.get(&a.pod_uid).cloned();
        for id in &a.device_ids {
            let Ok(address) = id.parse::<PciAddress>() else { continue };
            out.entry(address).or_insert_with(|| Holder::Pod {
                uid: a.pod_uid.clone(),
                name: name.clone(),
                container: a.container_name.clone(),
                resource: a.resource_name.clone(),
            });
        }
    }
    for (address, holder) in claims {
        out.entry(address).or_insert(holder);
    }
    out
}

/// Pure: the release plan, for every recorded device the config no longer wants on vfio-pci.
/// A device whose IOMMU group still has a wanted member stays (it is that member's companion).
/// A device is pending when it, or any function of its group, is held.
pub fn plan_release(
    inv: &PciInventory,
    state: &State,
    wanted: &Wanted,
    holders: &BTreeMap<PciAddress, Holder>,
    release: Release,
) -> Vec<ReleasePlan> {
    let group_of = |a: &PciAddress| inv.device(a).and_then(|d| d.iommu_group);
    let wanted_groups: BTreeSet<u32> = wanted.vfio.iter().filter_map(group_of).collect();
    let dra_groups: BTreeSet<u32> = wanted.dra_host.iter().filter_map(group_of).collect();
    let mut out = Vec::new();
    for (a, rec) in &state.devices {
        let group = group_of(a);
        if wanted.vfio.contains(a) || group.is_some_and(|g| wanted_groups.contains(&g)) {
            continue;
        }
        let dra_host = wanted.dra_host.contains(a) || group.is_some_and(|g| dra_groups.contains(&g));
        let members = group.and_then(|g| inv.group(g)).map(|g| g.devices.as_slice()).unwrap_or_default();
        let held = holders.get(a).or_else(|| members.iter().find_map(|m| holders.get(m)));
        if dra_host && held.is_some() {
            // A prepared claim: its Unprepare gives it back.
            continue;
        }
        let why = if dra_host {
            "its DRA entry says atRest: host and no claim holds it".to_owned()
        } else if wanted.host.contains(a) {
            "its config entry says bind: none".to_owned()
        } else if rec.resource_name.is_none() {
            "the config no longer selects its IOMMU group".to_owned()
        } else {
            "the config no longer selects it".to_owned()
        };
        let action = match inv.device(a) {
            None => ReleaseAction::Gone,
            Some(_) if release == Release::Manual => ReleaseAction::Manual,
            Some(d) => match (held, d.driver.as_deref()) {
                (Some(h), _) => ReleaseAction::Pending { holder: h.clone() },
                (None, Some(VFIO_PCI) | None) => ReleaseAction::Restore { to: rec.original_driver.clone() },
                (None, Some(other)) => ReleaseAction::Forget { driver: Some(other.to_owned()) },
            },
        };
        out.push(ReleasePlan { address: *a, iommu_group: group, why, action });
    }
    out
}

/// A device whose resource name the config changed while a pod holds it under the old name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rename {
    pub address: PciAddress,
    pub from: String,
    pub to: String,
    pub holder: Holder,
}

impl Rename {
    /// Why the device is unhealthy under its new name until the holder lets it go.
    pub fn problem(&self) -> String {
        format!("allocated as {} to {}: offered as {} once free", self.from, self.holder, self.to)
    }
}

/// Pure: the devices the config now advertises under another resource name than the one a
/// pod holds them as. Until the pod lets go they are offered unhealthy under the new name, or
/// the kubelet, which counts each resource on its own, would give the device to a second pod.
pub fn renames(claims: &[(PciAddress, String)], holders: &BTreeMap<PciAddress, Holder>) -> Vec<Rename> {
    claims
        .iter()
        .filter_map(|(a, to)| match holders.get(a)? {
            h @ Holder::Pod { resource, .. } if resource != to => {
                Some(Rename { address: *a, from: resource.clone(), to: to.clone(), holder: h.clone() })
            }
            _ => None,
        })
        .collect()
}

/// The restores of a release plan, as [`super::Applier::apply_unbind`] takes them.
pub fn restores(plan: &[ReleasePlan]) -> Vec<RestorePlan> {
    plan.iter()
        .filter_map(|p| {
            let action = match &p.action {
                ReleaseAction::Restore { to } => RestoreAction::Restore { to: to.clone() },
                ReleaseAction::Forget { driver } => RestoreAction::Forget { driver: driver.clone() },
                ReleaseAction::Gone => RestoreAction::Gone,
                ReleaseAction::Pending { .. } | ReleaseAction::Manual => return None,
            };
            Some(RestorePlan { address: p.address, action })
        })
        .collect()
}

impl fmt::Display for ReleasePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, why) = (self.address, &self.why);
        match &self.action {
            ReleaseAction::Restore { to } => {
                write!(f, "restore {a} vfio-pci -> {} ({why})", to.as_deref().unwrap_or("(no driver)"))
            }
            ReleaseAction::Forget { driver } => {
                write!(f, "forget  {a}: already on {} ({why})", driver.as_deref().unwrap_or("no driver"))
            }
            ReleaseAction::Gone => write!(f, "forget  {a}: no longer present"),
            ReleaseAction::Pending { holder } => write!(f, "pending {a} ({why}): held by {holder}"),
            ReleaseAction::Manual => write!(f, "keep    {a} on vfio-pci ({why}; release: manual)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bind::state::Record;
    use crate::model::{IommuGroup, PciDevice};

    fn addr(s: &str) -> PciAddress {
        s.parse().expect("address")
    }

    fn dev(a: &str, group: u32, driver: Option<&str>) -> PciDevice {
        PciDevice {
            address: addr(a),
            iommu_group: Some(group),
            driver: driver.map(str::to_owned),
            ..PciDevice::default()
        }
    }

    /// A GPU (01:00.0) with its audio function (01:00.1) in group 12, a NIC (02:00.0) in 13.
    fn host(drivers: [Option<&str>; 3]) -> PciInventory {
        let devices = vec![
            dev("0000:01:00.0", 12, drivers[0]),
            dev("0000:01:00.1", 12, drivers[1]),
            dev("0000:02:00.0", 13, drivers[2]),
        ];
        let g = |n: u32, m: &[&str]| IommuGroup {
            number: n,
            group_type: None,
            no_iommu: false,
            devices: m.iter().map(|a| addr(a)).collect(),
            endpoints: m.iter().map(|a| addr(a)).collect(),
        };
        PciInventory {
            devices,
            groups: vec![g(12, &["0000:01:00.0", "0000:01:00.1"]), g(13, &["0000:02:00.0"])],
            ..PciInventory::default()
        }
    }

    fn recorded(entries: &[(&str, Option<&str>, Option<&str>)]) -> State {
        let devices = entries
            .iter()
            .map(|(a, orig, res)| {
                let rec = Record {
                    original_driver: orig.map(str::to_owned),
                    original_override: None,
                    resource_name: res.map(str::to_owned),
                };
                (addr(a), rec)
            })
            .collect();
        State { version: 1, devices }
    }

    fn gpu_and_nic_bound() -> (PciInventory, State) {
        let inv = host([Some("vfio-pci"), Some("vfio-pci"), Some("vfio-pci")]);
        let state = recorded(&[
            ("0000:01:00.0", Some("nouveau"), Some("nvidia.com/gpu")),
            ("0000:01:00.1", Some("snd_hda_intel"), None),
            ("0000:02:00.0", Some("e1000e"), Some("intel.com/nic")),
        ]);
        (inv, state)
    }

    fn pod_holding(a: &str) -> BTreeMap<PciAddress, Holder> {
        let h = Holder::Pod {
            uid: "u1".into(),
            name: Some("default/vm".into()),
            container: "compute".into(),
            resource: "nvidia.com/gpu".into(),
        };
        BTreeMap::from([(addr(a), h)])
    }

    #[test]
    fn a_device_no_longer_selected_goes_back_with_its_whole_group() {
        let (inv, state) = gpu_and_nic_bound();
        let wanted = Wanted { vfio: BTreeSet::from([addr("0000:02:00.0")]), ..Wanted::default() };
        let plan = plan_release(&inv, &state, &wanted, &BTreeMap::new(), Release::Auto);
        let got: Vec<(String, ReleaseAction)> =
            plan.iter().map(|p| (p.address.to_string(), p.action.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("0000:01:00.0".into(), ReleaseAction::Restore { to: Some("nouveau".into()) }),
                ("0000:01:00.1".into(), ReleaseAction::Restore { to: Some("snd_hda_intel".into()) }),
            ]
        );
        assert_eq!(plan[1].why, "the config no longer selects its IOMMU group");
        assert_eq!(restores(&plan).len(), 2);
    }

    #[test]
    fn a_held_group_is_pending_as_a_whole_and_names_its_holder() {
        let (inv, state) = gpu_and_nic_bound();
        // The pod holds the GPU only; its audio function must wait with it.
        let plan = plan_release(&inv, &state, &Wanted::default(), &pod_holding("0000:01:00.0"), Release::Auto);
        let pending: Vec<String> =
            plan.iter().filter(|p| matches!(p.action, ReleaseAction::Pending { .. })).map(|p| p.to_string()).collect();
        assert_eq!(pending.len(), 2, "{plan:?}");
        assert!(pending[1].contains("held by pod default/vm (uid u1, container compute"), "{}", pending[1]);
        // The NIC, held by nobody, goes back.
        assert_eq!(
            restores(&plan),
            vec![RestorePlan {
                address: addr("0000:02:00.0"),
                action: RestoreAction::Restore { to: Some("e1000e".into()) }
            }]
        );
    }

    #[test]
    fn wanted_devices_their_companions_and_manual_release_stay() {
        let (inv, state) = gpu_and_nic_bound();
        let all = Wanted { vfio: BTreeSet::from([addr("0000:01:00.0"), addr("0000:02:00.0")]), ..Wanted::default() };
        assert!(plan_release(&inv, &state, &all, &BTreeMap::new(), Release::Auto).is_empty());
        let plan = plan_release(&inv, &state, &Wanted::default(), &BTreeMap::new(), Release::Manual);
        assert!(plan.iter().all(|p| p.action == ReleaseAction::Manual), "{plan:?}");
        assert!(restores(&plan).is_empty());
    }

    #[test]
    fn bind_none_moved_off_gone_and_never_bound_devices() {
        let inv = host([Some("vfio-pci"), Some("snd_hda_intel"), None]);
        let mut state = recorded(&[
            ("0000:01:00.0", Some("nouveau"), Some("nvidia.com/gpu")),
            ("0000:01:00.1", Some("snd_hda_intel"), None),
            ("0000:02:00.0", None, Some("intel.com/nic")),
        ]);
        state.devices.insert(
            addr("0000:09:00.0"),
            Record { original_driver: None, original_override: None, resource_name: Some("x/y".into()) },
        );
        let wanted = Wanted { host: BTreeSet::from([addr("0000:01:00.0")]), ..Wanted::default() };
        let plan = plan_release(&inv, &state, &wanted, &BTreeMap::new(), Release::Auto);
        let by: BTreeMap<String, &ReleasePlan> = plan.iter().map(|p| (p.address.to_string(), p)).collect();
        assert_eq!(by["0000:01:00.0"].why, "its config entry says bind: none");
        assert_eq!(by["0000:01:00.1"].action, ReleaseAction::Forget { driver: Some("snd_hda_intel".into()) });
        // Driverless (a crash between unbind and probe): restored to what it had, none.
        assert_eq!(by["0000:02:00.0"].action, ReleaseAction::Restore { to: None });
        assert_eq!(by["0000:09:00.0"].action, ReleaseAction::Gone);
    }

    #[test]
    fn a_device_renamed_while_a_pod_holds_it_under_the_old_name_waits() {
        let holders = pod_holding("0000:01:00.0");
        let claims = [
            (addr("0000:01:00.0"), "nvidia.com/quadro".to_owned()),
            (addr("0000:02:00.0"), "intel.com/nic".to_owned()),
        ];
        let r = renames(&claims, &holders);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].from.as_str(), r[0].to.as_str()), ("nvidia.com/gpu", "nvidia.com/quadro"));
        assert!(r[0].problem().starts_with("allocated as nvidia.com/gpu to pod default/vm"), "{}", r[0].problem());
        // Held under the name it has: nothing to wait for.
        let same = [(addr("0000:01:00.0"), "nvidia.com/gpu".to_owned())];
        assert!(renames(&same, &holders).is_empty());
    }

    #[test]
    fn pods_known_gone_do_not_hold_pods_not_known_either_way_do() {
        let allocation = |pod: &str, id: &str| Allocation {
            pod_uid: pod.into(),
            container_name: "c".into(),
            resource_name: "r/x".into(),
            device_ids: vec![id.into(), "GPU-not-a-pci-address".into()],
        };
        let allocs = [allocation("live", "0000:01:00.0"), allocation("gone", "0000:02:00.0")];
        let view = PodView {
            names: BTreeMap::from([("live".to_owned(), "ns/vm".to_owned())]),
            gone: BTreeSet::from(["gone".to_owned()]),
        };
        let known = holders(&allocs, &view, []);
        assert_eq!(known.keys().map(ToString::to_string).collect::<Vec<_>>(), ["0000:01:00.0"]);
        assert!(matches!(&known[&addr("0000:01:00.0")], Holder::Pod { name: Some(n), .. } if n == "ns/vm"));
        let claim = Holder::Claim { uid: "c1".into(), name: "ns/gpu".into() };
        let unknown = holders(&allocs, &PodView::default(), [(addr("0000:03:00.0"), claim)]);
        assert_eq!(unknown.len(), 3, "{unknown:?}");
    }
}
