//! The agent's side of giving devices back and of node maintenance: one round of
//! [`crate::bind::release`] (with the API server asked, between two looks at the kubelet's
//! checkpoint, which of its pods are gone), its Events and metric, the report `nodeprep status`
//! reads ([`crate::status`]), and what the agent says when its node goes into maintenance.
//!
//! A round runs at start, on every config change and resync, and, while a device is pending or
//! the node is in maintenance, whenever a pod of the node is deleted or finishes or a DRA claim
//! is unprepared: a drained node gets its devices back at once, not at the next resync.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::bind::{self, ReleaseAction, Released};
use crate::cluster::ApiStats;
use crate::cluster::events::{NodeEvent, Recorder};
use crate::config::Config;
use crate::host::HostRoot;
use crate::model::{Holder, PciAddress, PodView};
use crate::observe::Observer;
use crate::status::{Maintenance, Refusal, StatusReport};

/// How the agent asks the API server about its node's pods.
#[derive(Clone)]
pub struct PodLister {
    pub client: kube::Client,
    pub node: String,
    pub stats: Arc<ApiStats>,
    pub timeout: Duration,
}

/// What the rounds share: the host, the kernel, and what is reported.
#[derive(Clone)]
pub struct GiveBack {
    pub root: HostRoot,
    /// The kubelet's device-plugin directory (its checkpoint).
    pub plugin_dir: PathBuf,
    pub kernel: bind::KernelFactory,
    pub pods: Option<PodLister>,
    pub observer: Observer,
    pub events: Recorder,
    pub node: Option<String>,
    /// The device monitor, told which pods are gone (a renamed device they held is offered
    /// under its new name then); set once the monitor runs.
    pub monitor: Option<crate::deviceplugin::monitor::RescanHandle>,
    /// The monitor's latest inventory, for the report (no discovery of its own); set once the
    /// monitor runs.
    pub inventory: Option<tokio::sync::watch::Receiver<Option<Arc<crate::model::PciInventory>>>>,
}

/// What the agent remembers between rounds for the report.
#[derive(Debug, Default)]
pub struct Memory {
    pub refusals: Vec<Refusal>,
    pub maintenance: Maintenance,
    /// Devices pending after the last round.
    pub pending: usize,
    /// The pods named in the last round (for the report's holders).
    pub names: PodView,
    /// The last report written, without its time stamp.
    written: Option<StatusReport>,
}

impl Memory {
    /// Takes the refusals of the latest bind (address, reason), newest last: a refusal that
    /// stands keeps the time it was first made; one the bind no longer makes goes.
    pub fn refused(&mut self, refusals: &[(PciAddress, String)]) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut kept: Vec<Refusal> = Vec::new();
        for (address, reason) in refusals {
            let at = self
                .refusals
                .iter()
                .find(|r| r.address == *address && r.reason == *reason)
                .map_or_else(|| now.clone(), |r| r.at.clone());
            kept.push(Refusal { address: *address, reason: reason.clone(), at });
        }
        kept.sort_by(|a, b| a.at.cmp(&b.at));
        let excess = kept.len().saturating_sub(crate::status::REFUSALS_KEPT);
        kept.drain(..excess);
        self.refusals = kept;
    }
}

/// The DRA claims nodeprep prepared, as holders of their functions.
pub fn dra_holders(root: &HostRoot) -> Result<Vec<(PciAddress, Holder)>, String> {
    let cp = crate::dra::checkpoint::Checkpoint::load(root).map_err(|e| e.to_string())?;
    Ok(cp
        .claims
        .iter()
        .flat_map(|(uid, c)| {
            let holder = Holder::Claim { uid: uid.clone(), name: format!("{}/{}", c.claim.namespace, c.claim.name) };
            c.devices.iter().flat_map(|d| d.functions.clone()).map(move |f| (f, holder.clone()))
        })
        .collect())
}

impl GiveBack {
    fn round_blocking(&self, config: Arc<Config>, view: PodView) -> impl FnOnce() -> Option<Released> + Send + 'static {
        let (root, dir, kernel) = (self.root.clone(), self.plugin_dir.clone(), self.kernel.clone());
        move || {
            let claims = || dra_holders(&root);
            match bind::release_per_config(&root, &config, &dir, &view, claims, &mut kernel.make(&root)) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "giving devices back failed; they stay as they are");
                    None
                }
            }
        }
    }

    /// One round: give back what the config no longer wants and nothing holds; report the rest.
    pub async fn round(&self, config: Arc<Config>, memory: &mut Memory) -> Option<Released> {
        let first = tokio::task::spawn_blocking(self.round_blocking(config.clone(), PodView::default()))
            .await
            .ok()
            .flatten()?;
        let waiting = first.pending_pods();
        let mut released = first;
        if let (Some(p), false) = (&self.pods, waiting.is_empty()) {
            // Listed after the checkpoint was read: a pod missing now is gone.
            match crate::cluster::pods::list(&p.client, &p.node, &p.stats, p.timeout).await {
                Ok(listed) => {
                    let view = crate::cluster::pods::view(&waiting, listed);
                    if let Some(m) = &self.monitor {
                        m.pods_gone(&view.gone);
                    }
                    memory.names = view.clone();
                    if let Some(again) =
                        tokio::task::spawn_blocking(self.round_blocking(config, view)).await.ok().flatten()
                    {
                        // The first round's restores happened; keep both rounds' outcomes.
                        let mut outcomes = released.outcomes;
                        outcomes.extend(again.outcomes);
                        released = Released { plan: again.plan, outcomes, renames: again.renames };
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the node's pods: devices their pods held stay pending")
                }
            }
        }
        self.observer.record_bind(&released.outcomes);
        self.events.record_release(&released);
        for p in &released.plan {
            let outcome = released.outcomes.iter().find(|o| o.address == p.address);
            match (&p.action, outcome) {
                (ReleaseAction::Pending { .. } | ReleaseAction::Manual, _) => tracing::info!(plan = %p, "release"),
                (_, Some(o)) if o.outcome == "failed" => {
                    tracing::warn!(plan = %p, error = o.detail.as_deref().unwrap_or(""), "release failed")
                }
                _ => tracing::info!(plan = %p, "released"),
            }
        }
        for r in &released.renames {
            tracing::info!(device = %r.address, from = %r.from, to = %r.to, holder = %r.holder, "rename pending");
        }
        memory.pending = released.plan.iter().filter(|p| matches!(p.action, ReleaseAction::Pending { .. })).count()
            + released.renames.len();
        self.observer.set_pending_release(memory.pending);
        Some(released)
    }

    /// The pods of the kubelet's checkpoint the API server no longer has (read in that order),
    /// so that a bind does not refuse a device a gone pod still holds on paper. Empty without
    /// a cluster, or when either cannot be read (then every allocation counts).
    pub async fn gone_pods(&self) -> BTreeSet<String> {
        let Some(p) = &self.pods else { return BTreeSet::new() };
        let dir = self.plugin_dir.clone();
        let uids: BTreeSet<String> =
            match tokio::task::spawn_blocking(move || crate::host::kubelet::read_allocations(&dir)).await {
                Ok(Ok(a)) => a.into_iter().map(|a| a.pod_uid).collect(),
                _ => return BTreeSet::new(),
            };
        if uids.is_empty() {
            return uids;
        }
        match crate::cluster::pods::list(&p.client, &p.node, &p.stats, p.timeout).await {
            Ok(listed) => crate::cluster::pods::view(&uids, listed).gone,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the node's pods: every allocation in the kubelet's checkpoint counts");
                BTreeSet::new()
            }
        }
    }

    /// Writes the report for `nodeprep status` when its content changed; says in an Event which
    /// devices are still held while the node is in maintenance.
    pub async fn report(&self, config: Arc<Config>, memory: &mut Memory) {
        if let (Some(p), true) = (&self.pods, memory.maintenance.active()) {
            // In maintenance the admin wants the holders by name: the checkpoint's pods, then
            // the list (in that order, so a pod missing from the list is gone).
            let dir = self.plugin_dir.clone();
            let uids = tokio::task::spawn_blocking(move || crate::host::kubelet::read_allocations(&dir))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|a| a.into_iter().map(|a| a.pod_uid).collect::<BTreeSet<String>>());
            if let Some(uids) = uids {
                match crate::cluster::pods::list(&p.client, &p.node, &p.stats, p.timeout).await {
                    Ok(listed) => memory.names = crate::cluster::pods::view(&uids, listed),
                    Err(e) => tracing::warn!(error = %e, "cannot list the node's pods to name the holders"),
                }
            }
        }
        let (root, dir, view) = (self.root.clone(), self.plugin_dir.clone(), memory.names.clone());
        let (refusals, maintenance) = (memory.refusals.clone(), memory.maintenance.clone());
        // Cloned out in a statement of its own: no channel lock across the await below.
        let inv: Option<Arc<crate::model::PciInventory>> = self.inventory.as_ref().and_then(|i| i.borrow().clone());
        let built = tokio::task::spawn_blocking(move || {
            let holders = dra_holders(&root).unwrap_or_default();
            crate::status::gather(&root, inv, &config, &dir, &view, holders)
                .map(|g| StatusReport::build(&config, &g, refusals, maintenance))
        })
        .await;
        let mut report = match built {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return tracing::warn!(error = %e, "status report not written"),
            Err(e) => return tracing::warn!(error = %e, "status report not written"),
        };
        report.node = self.node.clone();
        self.maintenance_event(&report);
        if memory.written.as_ref() == Some(&report) {
            return;
        }
        memory.written = Some(report.clone());
        report.written = Some(k8s_openapi::jiff::Timestamp::now().to_string());
        let root = self.root.clone();
        match tokio::task::spawn_blocking(move || report.save(&root)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "status report not written"),
            Err(e) => tracing::warn!(error = %e, "status report not written"),
        }
    }

    fn maintenance_event(&self, report: &StatusReport) {
        let m = &report.maintenance;
        if !m.active() {
            self.events.forget("maintenance");
            return;
        }
        let what = match (&m.node_maintenance, m.cordoned) {
            (Some(nm), Some(true)) => format!("cordoned, NodeMaintenance {nm}"),
            (Some(nm), _) => format!("NodeMaintenance {nm}"),
            (None, _) => "cordoned".to_owned(),
        };
        let held = crate::status::held_lines(report);
        let ev = if held.is_empty() {
            NodeEvent::normal(
                "MaintenanceDevicesFree",
                format!(
                    "node in maintenance ({what}): no device nodeprep manages is held; {} pending",
                    report.pending.len()
                ),
            )
        } else {
            NodeEvent::warning(
                "MaintenanceDevicesHeld",
                format!("node in maintenance ({what}): {} device(s) still held: {}", held.len(), held.join("; ")),
            )
        };
        self.events.record("maintenance", ev);
    }
}

/// Pokes `changed` whenever the kubelet rewrites its device-manager checkpoint in `dir` (it
/// does on every allocation, dropping gone pods' devices then): the holders may have changed.
/// Works without a cluster too. Runs until the task is dropped.
pub async fn watch_checkpoint(dir: PathBuf, changed: Arc<tokio::sync::Notify>) {
    use crate::host::inotify::{ChangeKind, DirWatcher};
    loop {
        let mut w = match DirWatcher::new(&dir) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "the kubelet's checkpoint directory is not watched yet");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        loop {
            match w.next_change().await {
                Ok(c) if c.name.as_deref() == Some(crate::host::kubelet::CHECKPOINT) => changed.notify_one(),
                Ok(c) if matches!(c.kind, ChangeKind::Overflow) => changed.notify_one(),
                Ok(c) if matches!(c.kind, ChangeKind::DirGone) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        changed.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One round and the report after it: what every trigger runs.
pub async fn settle(give: &GiveBack, config: Arc<Config>, memory: &mut Memory, release: bool) {
    if release {
        give.round(config.clone(), memory).await;
    }
    give.report(config, memory).await;
}
