//! `nodeprep status`: what nodeprep manages on this node, in one report an admin reads on the
//! node or through `oc debug node`: every managed device with its driver now and at rest, the
//! resource or DRA pool it serves and who holds it, the changes waiting for a holder, the last
//! refusals, and whether the node is in maintenance.
//!
//! The agent keeps the report at `var/lib/nodeprep/status.json` under the host root (written
//! atomically when its content changes): it knows the config, the refusals and the cluster's
//! view. `nodeprep status` reads it and refreshes what can change behind the agent's back (each
//! device's driver, its holders); with `--config` it builds the device table itself, for a node
//! without an agent.
//!
//! [`devices`] is pure; [`gather`] reads the host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bind::plan::VFIO_PCI;
use crate::bind::release::{self, ReleaseAction, ReleasePlan};
use crate::bind::state::State;
use crate::config::{BindPolicy, Claim, Config, Front, Release};
use crate::host::HostRoot;
use crate::model::{Holder, PciAddress, PciInventory, PodView};

/// Where the agent keeps its report, relative to the host root.
pub const REPORT_FILE: &str = "var/lib/nodeprep/status.json";

/// How many refusals the report keeps (the newest).
pub const REFUSALS_KEPT: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{op} {path}: {message}")]
    Io { op: &'static str, path: PathBuf, message: String },
    #[error("cannot discover PCI devices under {root}: {message}")]
    Discover { root: PathBuf, message: String },
}

/// One managed device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    pub address: PciAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    /// Its driver now (`None`: none, or the device is gone).
    pub driver: Option<String>,
    /// The driver it has when nothing holds it, per the config.
    pub at_rest: Option<String>,
    /// The extended resource, `dra:<driver>` for a DRA device, or the device whose IOMMU group
    /// it shares.
    pub serves: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Holder>,
    /// `ready`, `held`, `pending-release`, `rename-pending` (held under its old resource name),
    /// `kept` (release: manual), `refused`, `gone`, `not-bound` (on its host driver, bound when
    /// a claim is prepared or by the next bind).
    pub state: String,
}

/// One bind or Prepare that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub address: PciAddress,
    pub reason: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The node's maintenance, as the agent last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// `spec.unschedulable`; `None`: not known (no cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordoned: Option<bool>,
    /// The `NodeMaintenance` for this node, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_maintenance: Option<String>,
}

impl Maintenance {
    pub fn active(&self) -> bool {
        self.cordoned == Some(true) || self.node_maintenance.is_some()
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the agent wrote it (RFC 3339, UTC); `None` for a report `nodeprep status` built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<String>,
    pub release: Release,
    #[serde(default)]
    pub maintenance: Maintenance,
    pub devices: Vec<DeviceStatus>,
    /// Devices the config no longer wants on vfio-pci that a holder keeps there.
    #[serde(default)]
    pub pending: Vec<ReleasePlan>,
    /// Devices a pod holds under a resource name the config no longer gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<release::Rename>,
    /// The last refusals, newest last.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
}

/// Pure: the managed devices: every device the config selects (with its IOMMU group's other
/// endpoints when it is bound) and every device nodeprep's records hold, in address order.
/// `refused` names the devices the last bind refused; `release` is [`release::plan_release`]'s.
pub fn devices(
    inv: &PciInventory,
    config: &Config,
    claims: &[Claim],
    state: &State,
    holders: &BTreeMap<PciAddress, Holder>,
    refused: &BTreeSet<PciAddress>,
    released: &[ReleasePlan],
) -> Vec<DeviceStatus> {
    // address → (serves, at rest wanted on vfio-pci?)
    let mut managed: BTreeMap<PciAddress, (String, Option<bool>)> = BTreeMap::new();
    for c in claims {
        let Some(e) = config.entries.get(c.entry) else { continue };
        let (serves, vfio) = match (e.front, e.bind) {
            (Front::Dra(at_rest), _) => (
                format!("dra:{} ({})", config.dra.driver_name, c.resource_name),
                Some(at_rest == crate::config::AtRest::Vfio),
            ),
            (Front::DevicePlugin, BindPolicy::VfioPci) => (c.resource_name.clone(), Some(true)),
            (Front::DevicePlugin, BindPolicy::Leave) => (c.resource_name.clone(), Some(false)),
        };
        let bound_with_group = vfio == Some(true) || matches!(e.front, Front::Dra(_));
        managed.insert(c.address, (serves, vfio));
        let group = inv.device(&c.address).and_then(|d| d.iommu_group).and_then(|g| inv.group(g));
        for m in group.map(|g| g.endpoints.as_slice()).unwrap_or_default() {
            if bound_with_group && *m != c.address {
                managed.entry(*m).or_insert((format!("with {} (IOMMU group)", c.address), vfio));
            }
        }
    }
    for (a, rec) in &state.devices {
        managed.entry(*a).or_insert_with(|| (rec.resource_name.clone().unwrap_or_else(|| "-".into()), Some(false)));
    }
    let release_of: BTreeMap<PciAddress, &ReleasePlan> = released.iter().map(|p| (p.address, p)).collect();
    managed
        .into_iter()
        .map(|(a, (serves, vfio))| {
            let d = inv.device(&a);
            let driver = d.and_then(|d| d.driver.clone());
            let recorded = state.devices.get(&a).map(|r| r.original_driver.clone());
            let host_driver = recorded.clone().unwrap_or_else(|| driver.clone().filter(|d| d != VFIO_PCI));
            let at_rest = match (release_of.get(&a), vfio) {
                (Some(p), _) if p.action == ReleaseAction::Manual => Some(VFIO_PCI.to_owned()),
                (Some(_), _) | (None, Some(false) | None) => host_driver,
                (None, Some(true)) => Some(VFIO_PCI.to_owned()),
            };
            let held_by = holders.get(&a).cloned();
            let state = match (d, release_of.get(&a).map(|p| &p.action)) {
                (None, _) => "gone",
                (_, Some(ReleaseAction::Pending { .. })) => "pending-release",
                (_, Some(ReleaseAction::Manual)) => "kept",
                _ if refused.contains(&a) => "refused",
                _ if held_by.is_some() => "held",
                _ if driver == at_rest => "ready",
                _ => "not-bound",
            };
            DeviceStatus {
                address: a,
                name: d.and_then(|d| match (&d.vendor_name, &d.device_name) {
                    (Some(v), Some(n)) => Some(format!("{v} {n}")),
                    (None, Some(n)) => Some(n.clone()),
                    _ => None,
                }),
                iommu_group: d.and_then(|d| d.iommu_group),
                driver,
                at_rest,
                serves,
                held_by,
                state: state.to_owned(),
            }
        })
        .collect()
}

/// What [`gather`] reads besides the config: nodeprep's records and both checkpoints.
pub struct Gathered {
    pub inv: std::sync::Arc<PciInventory>,
    pub state: State,
    pub holders: BTreeMap<PciAddress, Holder>,
    pub claims: Vec<Claim>,
    pub release: Vec<ReleasePlan>,
    pub renames: Vec<release::Rename>,
}

/// Reads the host for a report: the inventory (`inv`, or discovered now), nodeprep's bind
/// records, the kubelet's checkpoint in `plugin_dir` (every allocation counts: `pods` says
/// which pods are gone) and the DRA claims `dra_holders` lists.
pub fn gather(
    root: &HostRoot,
    inv: Option<std::sync::Arc<PciInventory>>,
    config: &Config,
    plugin_dir: &std::path::Path,
    pods: &PodView,
    dra_holders: Vec<(PciAddress, Holder)>,
) -> Result<Gathered, StatusError> {
    let inv = match inv {
        Some(inv) => inv,
        None => std::sync::Arc::new(
            crate::host::pci::discover(root)
                .map_err(|e| StatusError::Discover { root: root.path().to_owned(), message: e.to_string() })?,
        ),
    };
    let state = State::load(root).map_err(|e| StatusError::Io {
        op: "read",
        path: State::path(root),
        message: e.to_string(),
    })?;
    let allocations = crate::host::kubelet::read_allocations(plugin_dir).map_err(|e| StatusError::Io {
        op: "read the kubelet's checkpoint in",
        path: plugin_dir.to_owned(),
        message: e.to_string(),
    })?;
    // A config that no longer fits the host selects nothing here; `nodeprep config check` says why.
    let claims = config.claims_with(&inv, &state.original_drivers()).unwrap_or_default();
    let holders = release::holders(&allocations, pods, dra_holders);
    let wanted = release::wanted(config, &claims);
    let release = release::plan_release(&inv, &state, &wanted, &holders, config.release);
    let plugin_claims: Vec<(PciAddress, String)> = claims
        .iter()
        .filter(|c| config.front(c) == Front::DevicePlugin)
        .map(|c| (c.address, c.resource_name.clone()))
        .collect();
    let renames = release::renames(&plugin_claims, &holders);
    Ok(Gathered { inv, state, holders, claims, release, renames })
}

impl StatusReport {
    /// Pure: the report from what [`gather`] read, the refusals and the maintenance.
    pub fn build(config: &Config, g: &Gathered, refusals: Vec<Refusal>, maintenance: Maintenance) -> StatusReport {
        let refused: BTreeSet<PciAddress> = refusals.iter().map(|r| r.address).collect();
        let mut devices = devices(&g.inv, config, &g.claims, &g.state, &g.holders, &refused, &g.release);
        for d in &mut devices {
            if g.renames.iter().any(|r| r.address == d.address) {
                d.state = "rename-pending".into();
            }
        }
        let pending = g.release.iter().filter(|p| matches!(p.action, ReleaseAction::Pending { .. })).cloned().collect();
        StatusReport {
            node: None,
            written: None,
            release: config.release,
            maintenance,
            devices,
            pending,
            renames: g.renames.clone(),
            refusals,
        }
    }

    /// Refreshes what changes behind the agent's back: each device's driver and holder.
    pub fn refresh(&mut self, inv: &PciInventory, holders: &BTreeMap<PciAddress, Holder>) {
        for d in &mut self.devices {
            let now = inv.device(&d.address);
            d.driver = now.and_then(|n| n.driver.clone());
            d.held_by = holders.get(&d.address).cloned();
            if now.is_none() {
                d.state = "gone".into();
            }
        }
    }

    /// The report the agent left, if any.
    pub fn load(root: &HostRoot) -> Result<Option<StatusReport>, StatusError> {
        let path = root.join(REPORT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StatusError::Io {
                op: "parse",
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StatusError::Io { op: "read", path, message: e.to_string() }),
        }
    }

    /// Writes it atomically for `nodeprep status`.
    pub fn save(&self, root: &HostRoot) -> Result<(), StatusError> {
        let path = root.join(REPORT_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StatusError::Io {
            op: "serialize",
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::host::root::write_atomic(&path, &bytes).map_err(|(op, e)| StatusError::Io {
            op,
            path,
            message: e.to_string(),
        })
    }
}

/// Pure: the devices a pod or claim holds, one line each, for the maintenance Event.
pub fn held_lines(report: &StatusReport) -> Vec<String> {
    report
        .devices
        .iter()
        .filter_map(|d| d.held_by.as_ref().map(|h| format!("{} ({}) by {h}", d.address, d.serves)))
        .collect()
}
