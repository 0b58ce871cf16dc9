//! Binding devices to vfio-pci at run time, safely and reversibly.
//!
//! - [`plan`]: pure decisions: which devices to bind (whole IOMMU groups), which to refuse and
//!   why, which to restore;
//! - [`apply`]: the sysfs writes that carry a plan out, with verification and rollback;
//! - [`release`]: giving back what the config no longer wants on vfio-pci, once nothing holds it;
//! - [`state`]: the atomic record of original drivers that makes it reversible and crash-safe.

pub mod apply;
pub mod plan;
pub mod release;
pub mod state;

pub use apply::{Applier, ApplyError, DeviceOutcome, HostKernel, Kernel, KernelFactory, host_kernels};
pub use plan::{Action, BindPlan, RestorePlan, plan_bind, plan_unbind};
pub use release::{ReleaseAction, ReleasePlan, plan_release};
pub use state::{State, StateGuard};

use std::path::Path;

use crate::config::Config;
use crate::host::{self, HostError, HostRoot};

/// Why binding per config could not start (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot discover PCI devices under host root {root} (is --host-root the host's /?): {source}")]
    Discover {
        root: std::path::PathBuf,
        #[source]
        source: HostError,
    },
    #[error("the config is refused on this host, nothing changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Claims(Vec<String>),
    #[error("cannot tell which devices pods hold, nothing changed: {0}")]
    Allocations(#[source] HostError),
    #[error("cannot tell which devices DRA claims hold, nothing changed: {0}")]
    Holders(String),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Reads the host and plans binding per config: discovery, the config's claims, the kubelet's
/// allocations (the checkpoint in `plugin_dir`, see [`host::kubelet::plugin_dir`]), whether
/// vfio-pci is loaded.
pub fn plan_for(root: &HostRoot, config: &Config, plugin_dir: &Path) -> Result<BindPlan, BindError> {
    plan_with(root, config, plugin_dir, &State::load(root)?, &std::collections::BTreeSet::new())
}

/// [`plan_for`] with nodeprep's records already read: a `drivers` selector matches what a
/// device had before nodeprep bound it.
/// Allocations of pods in `gone` (known to the API server no longer to exist) do not count.
fn plan_with(
    root: &HostRoot,
    config: &Config,
    plugin_dir: &Path,
    state: &State,
    gone: &std::collections::BTreeSet<String>,
) -> Result<BindPlan, BindError> {
    let mut inv =
        host::pci::discover(root).map_err(|source| BindError::Discover { root: root.path().to_owned(), source })?;
    let mut claims = config.claims_with(&inv, &state.original_drivers()).map_err(BindError::Claims)?;
    // DRA devices at rest on their host driver are bound when a claim is prepared, not here.
    claims.retain(|c| config.binds_at_start(c));
    // Fail closed: a checkpoint that cannot be read protects nothing, so nothing is planned.
    let mut allocations = host::kubelet::read_allocations(plugin_dir).map_err(BindError::Allocations)?;
    // The kubelet keeps a gone pod's devices in its checkpoint until its next allocation: such
    // a device, given back once its pod went, can be bound again.
    allocations.retain(|a| !gone.contains(&a.pod_uid));
    Ok(plan_claims(root, &mut inv, config, &claims, &allocations))
}

/// Plans binding `claims` (made from `config`'s entries on `inv`) in two passes: the first says
/// which IOMMU groups would be written to; only their endpoints get the bind-time probes (an
/// exclusive open of each disk, the processes holding a character node open), whose findings
/// the second, final plan weighs. Used by the config's bind and by DRA's Prepare.
pub fn plan_claims(
    root: &HostRoot,
    inv: &mut crate::model::PciInventory,
    config: &Config,
    claims: &[crate::config::Claim],
    allocations: &[host::kubelet::Allocation],
) -> BindPlan {
    let vfio_loaded = root.join(crate::model::pci::VFIO_PCI_DRIVER_DIR).exists();
    let first = plan_bind(inv, config, claims, allocations, vfio_loaded);
    let candidates: Vec<crate::model::PciAddress> =
        first.groups_to_bind().values().flatten().map(|d| d.address).collect();
    if candidates.is_empty() {
        return first;
    }
    host::openers::probe(root, inv, &candidates);
    plan_bind(inv, config, claims, allocations, vfio_loaded)
}

/// Plans and applies binding per config through `kernel`, with nodeprep's state file.
pub fn bind_per_config<K: Kernel>(
    root: &HostRoot,
    config: &Config,
    plugin_dir: &Path,
    kernel: &mut K,
) -> Result<(BindPlan, Vec<DeviceOutcome>), BindError> {
    bind_per_config_except(root, config, plugin_dir, &std::collections::BTreeSet::new(), kernel)
}

/// [`bind_per_config`], with the kubelet's allocations to pods in `gone` not counted (pods the
/// API server no longer has, listed after the checkpoint was read: [`crate::model::PodView`]).
pub fn bind_per_config_except<K: Kernel>(
    root: &HostRoot,
    config: &Config,
    plugin_dir: &Path,
    gone: &std::collections::BTreeSet<String>,
    kernel: &mut K,
) -> Result<(BindPlan, Vec<DeviceOutcome>), BindError> {
    // Locked from load to the last save: a concurrent `nodeprep bind` waits for us.
    let mut state = State::lock(root)?;
    let plan = plan_with(root, config, plugin_dir, &state, gone)?;
    let outcomes = Applier::new(root, kernel).apply_bind(&plan, &mut state)?;
    Ok((plan, outcomes))
}

/// What giving devices back did: the plan, and the outcome of each restore it made.
#[derive(Debug, Clone, Default)]
pub struct Released {
    pub plan: Vec<ReleasePlan>,
    pub outcomes: Vec<DeviceOutcome>,
    /// Devices a pod holds under a resource name the config no longer gives them.
    pub renames: Vec<release::Rename>,
}

impl Released {
    /// The pods (UIDs) that hold a pending device or a device waiting for its new name.
    pub fn pending_pods(&self) -> std::collections::BTreeSet<String> {
        let renamed = self.renames.iter().map(|r| &r.holder);
        let pending = self.plan.iter().filter_map(|p| match &p.action {
            ReleaseAction::Pending { holder } => Some(holder),
            _ => None,
        });
        pending
            .chain(renamed)
            .filter_map(|h| match h {
                crate::model::Holder::Pod { uid, .. } => Some(uid.clone()),
                crate::model::Holder::Claim { .. } => None,
            })
            .collect()
    }
}

/// Gives back, through `kernel`, every recorded device the config no longer wants on vfio-pci
/// and nothing holds ([`release`]). `pods` says which pods of the kubelet's checkpoint are
/// gone; `claims` lists the DRA claims' devices, read under the bind records' lock (a Prepare
/// takes the same lock). Also says which devices wait for a new resource name ([`release::renames`]).
pub fn release_per_config<K: Kernel>(
    root: &HostRoot,
    config: &Config,
    plugin_dir: &Path,
    pods: &crate::model::PodView,
    claims: impl FnOnce() -> Result<Vec<(crate::model::PciAddress, crate::model::Holder)>, String>,
    kernel: &mut K,
) -> Result<Released, BindError> {
    let mut state = State::lock(root)?;
    // Fail closed, as the bind does: unknown holders protect nothing.
    let allocations = host::kubelet::read_allocations(plugin_dir).map_err(BindError::Allocations)?;
    if state.devices.is_empty() && allocations.is_empty() {
        // Nothing to give back and nothing held under an old name: no discovery.
        return Ok(Released::default());
    }
    let inv =
        host::pci::discover(root).map_err(|source| BindError::Discover { root: root.path().to_owned(), source })?;
    let claimed = config.claims_with(&inv, &state.original_drivers()).map_err(BindError::Claims)?;
    let wanted = release::wanted(config, &claimed);
    let dra = claims().map_err(BindError::Holders)?;
    let holders = release::holders(&allocations, pods, dra);
    let plan = plan_release(&inv, &state, &wanted, &holders, config.release);
    let plugin_claims: Vec<(crate::model::PciAddress, String)> = claimed
        .iter()
        .filter(|c| config.front(c) == crate::config::Front::DevicePlugin)
        .map(|c| (c.address, c.resource_name.clone()))
        .collect();
    let renames = release::renames(&plugin_claims, &holders);
    let restores = release::restores(&plan);
    let outcomes = if restores.is_empty() {
        Vec::new()
    } else {
        Applier::new(root, kernel).apply_unbind(&restores, &mut state)?
    };
    Ok(Released { plan, outcomes, renames })
}
