//! The long-running node agent (`nodeprep run`): discover the host, bind what the config
//! selects, serve the device plugins, and keep all of it right by reacting to events: kernel
//! uevents and `/dev/vfio` changes (through the device monitor), config changes (a ConfigMap
//! volume swaps its `..data` symlink: the config's directory is watched), kubelet restarts
//! (through the plugin manager), with a slow periodic rescan as the safety net.
//!
//! A config that fails validation is logged and the last good one keeps running.
//!
//! With a cluster, the node labels are kept on the Node by [`crate::cluster::node`] and every
//! bind outcome is posted as an Event; without one, the same loop logs the labels it would
//! apply. Labels are recomputed when their inputs change: the device monitor's inventory (no scan
//! of their own), the config, the plugins' registration, the bind result, and the periodic
//! resync (the host facts read again: huge pages, modules, /dev/kvm). A host that cannot be read leaves
//! them as they are; a partial read may add labels but never removes one.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bind;
use crate::cluster::ApiStats;
use crate::cluster::events::{NodeEvent, Recorder};
use crate::cluster::labels::Desired;
use crate::cluster::node::{self, LabelStatus, LabelerOptions};
use crate::config::Config;
use crate::deviceplugin::cdi::CdiSpec;
use crate::deviceplugin::manager::{Manager, ManagerOptions, ResourceSpec};
use crate::deviceplugin::monitor::deadline_after;
use crate::deviceplugin::monitor::{Monitor, MonitorOptions};
use crate::eligibility::EligibilityReport;
use crate::giveback;
use crate::host::{HostRoot, inotify::DirWatcher};
use crate::model::PciInventory;
use crate::model::system::SystemFacts;
use crate::observe::{self, Observer};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("start the device plugins: {0}")]
    Plugins(#[from] crate::deviceplugin::DevicePluginError),
    #[error("watch the config directory {path}: {message}")]
    ConfigWatch { path: PathBuf, message: String },
    #[error("device monitor: {0}")]
    Monitor(String),
    #[error("start the DRA driver: {0}")]
    Dra(#[from] crate::dra::plugin::DraPluginError),
    #[error("listen on {addr} for /healthz, /readyz and /metrics: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub root: HostRoot,
    pub config_path: PathBuf,
    /// The kubelet's plugin directory; default under the host root.
    pub plugin_dir: Option<PathBuf>,
    /// Bind devices to vfio-pci per config (on by default; off: advertise only).
    pub bind: bool,
    /// The periodic rescan (safety net).
    pub rescan_interval: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: std::net::SocketAddr,
    /// The Kubernetes API; `None`: no cluster, labels are only logged.
    pub cluster: Option<ClusterOptions>,
    /// The kubelet's root directory, where the DRA plugin's sockets go, when it is not the host
    /// root's `var/lib/kubelet` (then the path is the same for the agent and the kubelet).
    pub kubelet_dir: Option<PathBuf>,
    /// The kernel the agent writes to ([`crate::bind::host_kernels`] in production).
    pub kernel: crate::bind::KernelFactory,
}

/// The agent's connection to the Kubernetes API.
#[derive(Clone)]
pub struct ClusterOptions {
    pub client: kube::Client,
    /// The node name, deadlines and backoff.
    pub labeler: LabelerOptions,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions").field("labeler", &self.labeler).finish_non_exhaustive()
    }
}

/// What one bind per config came to: whether it went through without a failed device
/// (refusals are policy, not failures), and the refusals with their reasons.
type BindResult = (bool, Vec<(crate::model::PciAddress, String)>);

/// Binds what the config selects; logs every outcome and posts it as an Event. Errors are
/// logged, never fatal: the plugins then report the affected devices unhealthy.
fn bind_per_config(
    root: &HostRoot,
    config: &Config,
    plugin_dir: &Path,
    kernel: &crate::bind::KernelFactory,
    observer: &Observer,
    events: &Recorder,
    gone: &std::collections::BTreeSet<String>,
) -> BindResult {
    match bind::bind_per_config_except(root, config, plugin_dir, gone, &mut kernel.make(root)) {
        Ok((_, outcomes)) => {
            let refused: Vec<(crate::model::PciAddress, String)> = outcomes
                .iter()
                .filter(|o| o.outcome == "refused")
                .map(|o| (o.address, o.detail.clone().unwrap_or_default()))
                .collect();
            observer.record_bind(&outcomes);
            events.record_outcomes(&outcomes);
            events.forget("bind");
            let failed = outcomes.iter().any(|o| matches!(o.outcome.as_str(), "failed" | "rolled-back"));
            for o in outcomes {
                match o.detail {
                    Some(d) => tracing::warn!(device = %o.address, outcome = %o.outcome, detail = %d, "bind"),
                    None => tracing::info!(device = %o.address, outcome = %o.outcome, "bind"),
                }
            }
            (!failed, refused)
        }
        Err(e) => {
            tracing::error!(error = %e, "binding per config failed; devices stay as they are");
            events.record("bind", NodeEvent::warning("BindFailed", format!("binding per config failed: {e}")));
            (false, Vec::new())
        }
    }
}

/// Sets the huge page pools the config asks for; logs and posts every change.
fn reserve_hugepages(root: &HostRoot, config: &Config, events: &Recorder) {
    match crate::hugepages::reserve(root, &config.hugepages) {
        Ok(outcomes) => {
            events.record_hugepages(&outcomes);
            for o in &outcomes {
                let (size, granted) = (o.size(), o.granted.unwrap_or(0));
                match (&o.detail, o.is_failure()) {
                    (Some(d), true) => {
                        tracing::warn!(%size, node = ?o.numa_node, requested = o.requested, granted, detail = %d, outcome = ?o.outcome, "hugepages")
                    }
                    _ => {
                        tracing::info!(%size, node = ?o.numa_node, requested = o.requested, granted, outcome = ?o.outcome, "hugepages")
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "huge pages not reserved"),
    }
}

/// The host changes the config asks for: huge pages, then vfio-pci binding (see
/// [`bind_per_config`]).
async fn prepare_host(
    opts: &AgentOptions,
    config: Arc<Config>,
    observer: &Observer,
    events: &Recorder,
    gone: std::collections::BTreeSet<String>,
) -> BindResult {
    let (r, o, e, bind, k) = (opts.root.clone(), observer.clone(), events.clone(), opts.bind, opts.kernel.clone());
    // The checkpoint of the kubelet the plugins register with, not always the default's.
    let plugin_dir = crate::host::kubelet::plugin_dir(&opts.root, opts.plugin_dir.as_deref());
    tokio::task::spawn_blocking(move || {
        reserve_hugepages(&r, &config, &e);
        if bind { bind_per_config(&r, &config, &plugin_dir, &k, &o, &e, &gone) } else { (true, Vec::new()) }
    })
    .await
    .unwrap_or((false, Vec::new()))
}

/// What the labels are computed from: one look at the host.
#[derive(Debug, Clone)]
struct Assessment {
    facts: SystemFacts,
    report: EligibilityReport,
    /// Something could not be read: labels may be added, none removed.
    partial: bool,
}

/// Reads the host facts and evaluates them against `inv`, the device monitor's latest
/// inventory. `None` when the host facts cannot be read: the labels are then left as they are.
fn assess(root: &HostRoot, inv: &PciInventory) -> Option<Assessment> {
    let facts = match crate::host::system::read_system(root) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "host check failed; node labels left as they are");
            return None;
        }
    };
    let partial =
        !facts.warnings.is_empty() || !inv.warnings.is_empty() || inv.devices.iter().any(|d| !d.warnings.is_empty());
    let mut report = crate::eligibility::evaluate(&facts, inv);
    // Labels need the verdicts only; the per-group details are thousands of entries on big hosts.
    report.iommu_groups.groups = Vec::new();
    Some(Assessment { facts, report, partial })
}

/// [`assess`] on a blocking thread. No inventory (every scan so far failed): `None`.
async fn assess_blocking(root: &HostRoot, inv: Option<Arc<PciInventory>>) -> Option<Assessment> {
    let Some(inv) = inv else {
        tracing::warn!("no PCI inventory yet; node labels left as they are");
        return None;
    };
    let root = root.clone();
    tokio::task::spawn_blocking(move || assess(&root, &inv)).await.ok().flatten()
}

/// Pure: the labels nodeprep wants from an assessment.
fn desired_labels(a: &Assessment, ready: bool, manage_kata: bool) -> Desired {
    let labels =
        crate::labels::desired(crate::labels::LabelInputs { report: &a.report, facts: &a.facts, ready, manage_kata });
    Desired { labels, complete: !a.partial }
}

/// Publishes the labels to the labeler (or, without a cluster, logs them) when they changed.
fn publish_labels(tx: &watch::Sender<Option<Desired>>, desired: Desired, cluster: bool) {
    let changed = tx.send_if_modified(|cur| {
        if cur.as_ref() == Some(&desired) {
            false
        } else {
            *cur = Some(desired.clone());
            true
        }
    });
    if changed && !cluster {
        let shown: Vec<String> = desired.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tracing::info!(labels = %shown.join(","), complete = desired.complete,
            "node labels nodeprep wants (not applied: no Kubernetes API connection)");
    }
}

/// Pure: the config keys read only at start whose value a reload changed (they take effect when
/// the agent restarts).
fn read_at_start_changed(started: &Config, now: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if started.counted != now.counted {
        out.push("countedResources");
    }
    if started.cdi != now.cdi {
        out.push("cdi");
    }
    if started.dra != now.dra || has_dra(started) != has_dra(now) {
        out.push("dra");
    }
    out
}

/// The running DRA driver: its kubelet plugin, the devices it offers (the slices publisher and
/// the health stream follow them) and the poke its Prepares and Unprepares give.
struct DraRuntime {
    plugin: crate::dra::plugin::Plugin,
    node: String,
    devices: watch::Sender<Option<Vec<crate::dra::devices::DraDevice>>>,
    health: watch::Sender<Vec<crate::dra::DeviceHealth>>,
    changed: Arc<tokio::sync::Notify>,
}

/// Starts the DRA driver when the config offers devices through DRA and there is a cluster:
/// reconciles leftover bindings, starts publishing ResourceSlices, then serves the kubelet.
async fn start_dra(
    opts: &AgentOptions,
    config: &watch::Receiver<Arc<Config>>,
    api_stats: &Arc<ApiStats>,
    stop: watch::Receiver<bool>,
) -> Result<Option<DraRuntime>, AgentError> {
    use crate::dra::{driver::AgentDriver, plugin, prepare};
    let started = config.borrow().clone();
    if !has_dra(&started) {
        return Ok(None);
    }
    let Some(cluster) = &opts.cluster else {
        tracing::warn!("the config offers devices through DRA, but there is no API server: the DRA driver is off");
        return Ok(None);
    };
    let driver = started.dra.driver_name.clone();
    let node = cluster.labeler.node_name.clone();
    // Where the kubelet's directory is, for the agent and as the kubelet names it.
    let (kubelet_seen, kubelet_host) = match &opts.kubelet_dir {
        Some(d) => (d.clone(), d.clone()),
        None => (opts.root.join("var/lib/kubelet"), PathBuf::from("/var/lib/kubelet")),
    };
    let cdi_dir = started.cdi.as_ref().map_or(crate::config::DEFAULT_CDI_SPEC_DIR.to_owned(), |c| c.spec_dir.clone());
    let data_dir = kubelet_host.join("plugins").join(&driver).to_string_lossy().into_owned();
    let dp_dir = crate::host::kubelet::plugin_dir(&opts.root, opts.plugin_dir.as_deref());
    let settings = prepare::settings_for(&driver, &node, &cdi_dir, &data_dir, &dp_dir);

    let (root, s, c, k) = (opts.root.clone(), settings.clone(), started.clone(), opts.kernel.clone());
    let reconciled = tokio::task::spawn_blocking(move || prepare::reconcile(&root, &s, &c, &mut k.make(&root)))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match reconciled {
        Ok(r) => {
            tracing::info!(stale_claims = r.stale_claims.len(), restored = r.restored.len(), "DRA bindings reconciled")
        }
        Err(e) => tracing::error!(error = %e, "DRA bindings not reconciled"),
    }

    let (devices, devices_rx) = watch::channel(None);
    let (health, health_rx) = watch::channel(Vec::new());
    let (slice_status, _) = watch::channel(crate::cluster::slices::SliceStatus::default());
    tokio::spawn(crate::cluster::slices::run(
        cluster.client.clone(),
        crate::cluster::slices::SliceOptions::new(&driver, &node),
        api_stats.clone(),
        devices_rx,
        slice_status,
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    let changed = Arc::new(tokio::sync::Notify::new());
    let agent_driver = AgentDriver {
        root: opts.root.clone(),
        settings,
        config: config.clone(),
        client: Some(cluster.client.clone()),
        stats: api_stats.clone(),
        request_timeout: cluster.labeler.request_timeout,
        health: health_rx,
        changed: changed.clone(),
        kernel: opts.kernel.clone(),
    };
    let mut popts = plugin::PluginOptions::new(&driver, &kubelet_seen);
    if opts.kubelet_dir.is_none() {
        popts.endpoint_path = Some(kubelet_host.join("plugins").join(&driver).join(crate::dra::api::DRA_SOCKET));
    }
    let plugin = plugin::Plugin::start(popts, Arc::new(agent_driver)).await?;
    tracing::info!(driver = %driver, registration = %plugin.registration_socket().display(), "DRA driver serving");
    Ok(Some(DraRuntime { plugin, node, devices, health, changed }))
}

/// Recomputes the DRA devices from the latest inventory and publishes them when they changed.
async fn refresh_dra(dra: &DraRuntime, root: &HostRoot, inv: Option<Arc<PciInventory>>, config: Arc<Config>) {
    let Some(inv) = inv else { return };
    let root = root.clone();
    let found = tokio::task::spawn_blocking(move || crate::dra::prepare::offered_in(&root, &inv, &config))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let devices = match found {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "DRA devices not recomputed; the slices stay as they are");
            return;
        }
    };
    let health: Vec<crate::dra::DeviceHealth> = devices
        .iter()
        .map(|d| crate::dra::DeviceHealth {
            pool: dra.node.clone(),
            device: d.name.clone(),
            health: if d.healthy { crate::dra::Health::Healthy } else { crate::dra::Health::Unhealthy },
            message: d.problem.clone().unwrap_or_default(),
        })
        .collect();
    dra.health.send_if_modified(|cur| {
        let changed = *cur != health;
        if changed {
            *cur = health;
        }
        changed
    });
    dra.devices.send_if_modified(|cur| {
        let changed = cur.as_ref() != Some(&devices);
        if changed {
            *cur = Some(devices);
        }
        changed
    });
}

/// The config offers devices through DRA (the DRA driver starts only then).
fn has_dra(config: &Config) -> bool {
    config.entries.iter().any(|e| matches!(e.front, crate::config::Front::Dra(_)))
}

fn counted_specs(config: &Config) -> Vec<ResourceSpec> {
    config.counted.iter().map(|c| ResourceSpec::Counted(c.clone())).collect()
}

/// The directory holding the config file (a ConfigMap volume swaps its `..data` link there).
fn config_dir(path: &Path) -> PathBuf {
    path.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Watches the config's directory and publishes every new valid config; an invalid one is
/// logged and ignored (the last good one keeps running). `watcher` was set up before the
/// running config was read, from `started_text`: a change in between is not lost.
async fn watch_config(
    path: PathBuf,
    mut watcher: DirWatcher,
    started_text: String,
    tx: watch::Sender<Arc<Config>>,
    observer: Observer,
    events: Recorder,
) -> Result<(), AgentError> {
    let dir = config_dir(&path);
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    // The text last acted on: a rewrite with the same bytes (or a refused text seen again)
    // changes nothing and is not logged again.
    let mut last_text = Some(started_text);
    loop {
        match watcher.next_change().await {
            Err(e) => return Err(AgentError::ConfigWatch { path: dir, message: e.to_string() }),
            Ok(change) if !concerns_config(change.name.as_deref(), file_name.as_deref()) => continue,
            Ok(_) => {}
        }
        // Let a burst of changes (the ..data swap is several renames) settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = std::fs::read_to_string(&path).ok();
        if text.is_some() && text == last_text {
            continue;
        }
        last_text = text;
        match Config::load(&path) {
            Ok(c) if **tx.borrow() == c => {}
            Ok(c) => {
                tracing::info!(config = %path.display(), entries = c.entries.len(), "config reloaded");
                observer.record_config_reload(true);
                events.forget("config");
                tx.send_replace(Arc::new(c));
            }
            Err(e) => {
                observer.record_config_reload(false);
                tracing::error!(error = %e, "new config refused; the last good config keeps running");
                events.record(
                    "config",
                    NodeEvent::warning("ConfigRefused", format!("{e}; the last good config keeps running")),
                );
            }
        }
    }
}

/// Pure: whether a change in the config's directory can change the config: the file itself, a
/// ConfigMap volume's `..data` swap (`..data`, `..data_tmp`, `..<timestamp>`), or an event
/// without a name (the queue overflowed). Other files in the directory are ignored.
fn concerns_config(changed: Option<&str>, config_file: Option<&str>) -> bool {
    match changed {
        None => true,
        Some(name) => name.starts_with("..") || Some(name) == config_file,
    }
}

/// Runs the agent until `shutdown` resolves: then device-plugin streams get an empty list and
/// the sockets are removed.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    crate::alloc::limit_arenas();
    // Bind the port first: a port already taken fails the start, not a probe later.
    let observer = Observer::new();
    let listener =
        TcpListener::bind(opts.listen).await.map_err(|source| AgentError::Listen { addr: opts.listen, source })?;
    // The config's directory is watched before the config is read: a change in between is seen.
    let config_dir = config_dir(&opts.config_path);
    let config_watcher = DirWatcher::new(&config_dir)
        .map_err(|e| AgentError::ConfigWatch { path: config_dir.clone(), message: e.to_string() })?;
    let (config, config_text) = Config::load_with_text(&opts.config_path)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The cluster side starts first, so the first bind's Events are posted.
    let api_stats = Arc::new(ApiStats::default());
    observer.set_api(api_stats.clone());
    let (desired_tx, desired_rx) = watch::channel::<Option<Desired>>(None);
    let (events, mut label_status) = match &opts.cluster {
        Some(c) => {
            let recorder = Recorder::spawn(
                c.client.clone(),
                c.labeler.node_name.clone(),
                api_stats.clone(),
                c.labeler.request_timeout,
            );
            let (status_tx, status_rx) = watch::channel(LabelStatus::default());
            tokio::spawn(node::run(
                c.client.clone(),
                c.labeler.clone(),
                api_stats.clone(),
                desired_rx,
                status_tx,
                stopped(stop_rx.clone()),
            ));
            (recorder, Some(status_rx))
        }
        None => (Recorder::disabled(), None),
    };
    let cluster = label_status.is_some();
    observer.set_labels_required(cluster);

    // Giving devices back: the node's pods and its NodeMaintenance, watched when there is a cluster.
    let pods = opts.cluster.as_ref().map(|c| giveback::PodLister {
        client: c.client.clone(),
        node: c.labeler.node_name.clone(),
        stats: api_stats.clone(),
        timeout: c.labeler.request_timeout,
    });
    let departed = Arc::new(tokio::sync::Notify::new());
    let (maintenance_tx, mut maintenance_rx) = watch::channel::<Option<String>>(None);
    let dp_dir = crate::host::kubelet::plugin_dir(&opts.root, opts.plugin_dir.as_deref());
    let mut watchers = vec![tokio::spawn(giveback::watch_checkpoint(dp_dir.clone(), departed.clone()))];
    if let Some(p) = &pods {
        use crate::cluster::pods;
        let (c, n, st, t) = (p.client.clone(), p.node.clone(), p.stats.clone(), p.timeout);
        watchers.push(tokio::spawn(pods::watch_departures(c.clone(), n.clone(), st.clone(), t, departed.clone())));
        // The NodeMaintenances are looked at only while the labeler sees the node cordoned.
        let (cordon_tx, cordon_rx) = watch::channel(false);
        if let Some(mut status) = label_status.clone() {
            watchers.push(tokio::spawn(async move {
                loop {
                    let now = status.borrow_and_update().unschedulable == Some(true);
                    cordon_tx.send_if_modified(|was| std::mem::replace(was, now) != now);
                    if status.changed().await.is_err() {
                        return;
                    }
                }
            }));
        }
        watchers.push(tokio::spawn(pods::watch_maintenance(c, n, st, t, cordon_rx, maintenance_tx)));
    }
    let mut give = giveback::GiveBack {
        root: opts.root.clone(),
        plugin_dir: dp_dir,
        kernel: opts.kernel.clone(),
        node: pods.as_ref().map(|p| p.node.clone()),
        pods,
        observer: observer.clone(),
        events: events.clone(),
        monitor: None,
        inventory: None,
    };
    let mut memory = giveback::Memory::default();

    let config = Arc::new(config);
    let gone = give.gone_pods().await;
    let (mut bind_ok, refused) = prepare_host(&opts, config.clone(), &observer, &events, gone).await;
    memory.refused(&refused);
    let counted = counted_specs(&config);
    let cdi = config.cdi.as_ref().map(|c| Arc::new(CdiSpec::open(&opts.root, c)));
    let started_with = config.clone();
    let (config_tx, config_rx) = watch::channel(config);
    let mut config_view = config_rx.clone();
    let monitor_opts = MonitorOptions {
        rescan_interval: Some(opts.rescan_interval),
        plugin_dir: opts.plugin_dir.clone(),
        ..MonitorOptions::default()
    };
    let (monitor, devices) = Monitor::new(opts.root.clone(), config_rx, monitor_opts);
    let rescan = monitor.rescan_handle();
    give.monitor = Some(rescan.clone());
    give.inventory = Some(monitor.inventory_updates());
    observer.set_monitor(monitor.stats());
    observer.set_devices(&devices.borrow());
    let mut devices_view = monitor.subscribe();
    let mut inventory = monitor.inventory_updates();

    let mut mopts = ManagerOptions::new(opts.root.clone());
    if let Some(dir) = &opts.plugin_dir {
        mopts.plugin_dir = dir.clone();
    }
    mopts.resources =
        devices.borrow().keys().map(|name| ResourceSpec::Pci(name.clone())).chain(counted).collect::<Vec<_>>();
    if let Some(spec) = &cdi {
        tracing::info!(kind = spec.kind(), spec = %spec.path().display(), "devices are named to the runtime by CDI");
    }
    mopts.cdi = cdi;
    let handle = Manager::new(mopts, devices)?.start().await?;
    let dra = start_dra(&opts, &config_view, &api_stats, stop_rx.clone()).await?;
    if let Some(d) = &dra {
        // Cloned out in statements of their own: a `Ref` alive across the await deadlocks.
        let (inv, cfg) = (inventory.borrow().clone(), config_view.borrow().clone());
        refresh_dra(d, &opts.root, inv, cfg).await;
    }
    tracing::info!(plugins = handle.status().len(), dir = %handle.plugin_dir().display(), "device plugins serving");
    // Give back what an earlier config left bound, once the plugins serve (not before: a big
    // host's start stays quick).
    let cfg = config_view.borrow().clone();
    giveback::settle(&give, cfg, &mut memory, opts.bind).await;
    observer.set_plugins(handle.status());

    // Labels: from the monitor's first scan, then on every change of their inputs.
    let plugins_registered = |h: &crate::deviceplugin::manager::ManagerHandle| h.status().iter().all(|s| s.registered);
    let mut ready = bind_ok && plugins_registered(&handle);
    let first = inventory.borrow_and_update().clone();
    let mut assessment = assess_blocking(&opts.root, first).await;
    let manage_kata = |c: &Config| c.node_labels.kata;
    if let Some(a) = &assessment {
        publish_labels(&desired_tx, desired_labels(a, ready, manage_kata(&config_view.borrow())), cluster);
    }

    crate::alloc::release_freed();
    let monitor_task = tokio::spawn(monitor.run(stopped(stop_rx.clone())));
    let config_task = tokio::spawn({
        let watch = watch_config(
            opts.config_path.clone(),
            config_watcher,
            config_text,
            config_tx,
            observer.clone(),
            events.clone(),
        );
        async move {
            if let Err(e) = watch.await {
                tracing::error!(error = %e, "config changes are no longer seen; restart the agent to pick them up");
            }
        }
    });
    let http_task = tokio::spawn(observe::serve(listener, observer.clone(), stopped(stop_rx.clone())));

    // The loop's heartbeat (for /healthz) and the views /readyz and /metrics read.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut resync = Box::pin(tokio::time::sleep(next_resync(opts.rescan_interval)));
    tokio::pin!(shutdown);
    loop {
        let mut reassess = false;
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                observer.heartbeat();
                observer.set_plugins(handle.status());
            }
            () = handle.registration_changed() => observer.set_plugins(handle.status()),
            Ok(()) = devices_view.changed() => observer.set_devices(&devices_view.borrow_and_update()),
            // The monitor found a different inventory (a device added, removed or rebound).
            Ok(()) = inventory.changed() => reassess = true,
            Ok(()) = config_view.changed() => {
                let config = config_view.borrow_and_update().clone();
                let keys = read_at_start_changed(&started_with, &config);
                if !keys.is_empty() {
                    tracing::warn!(
                        keys = keys.join(", "),
                        "these config keys changed; they take effect when the agent restarts (delete its pod)"
                    );
                }
                let refused;
                (bind_ok, refused) = prepare_host(&opts, config.clone(), &observer, &events, give.gone_pods().await).await;
                memory.refused(&refused);
                giveback::settle(&give, config, &mut memory, opts.bind).await;
                rescan.rescan();
                reassess = true;
            }
            Some((applied, cordoned)) = async {
                match label_status.as_mut() {
                    Some(rx) => rx.changed().await.ok().map(|()| {
                        let s = rx.borrow_and_update();
                        (s.applied, s.unschedulable)
                    }),
                    None => std::future::pending().await,
                }
            } => {
                observer.set_labels_applied(applied);
                if cordoned != memory.maintenance.cordoned {
                    memory.maintenance.cordoned = cordoned;
                    let cfg = config_view.borrow().clone();
                    maintenance_changed(&give, &observer, cfg, &mut memory, opts.bind).await;
                }
            }
            Ok(()) = maintenance_rx.changed() => {
                memory.maintenance.node_maintenance = maintenance_rx.borrow_and_update().clone();
                let cfg = config_view.borrow().clone();
                maintenance_changed(&give, &observer, cfg, &mut memory, opts.bind).await;
            }
            // A pod of this node went, or the kubelet's checkpoint changed: a device waiting for
            // its holder may go back now.
            () = departed.notified() => {
                let release = opts.bind && (memory.pending > 0 || memory.maintenance.active());
                let cfg = config_view.borrow().clone();
                giveback::settle(&give, cfg, &mut memory, release).await;
            }
            () = &mut resync => {
                resync.as_mut().reset(deadline_after(tokio::time::Instant::now(), next_resync(opts.rescan_interval)));
                let cfg = config_view.borrow().clone();
                giveback::settle(&give, cfg, &mut memory, opts.bind).await;
                reassess = true;
            }
            // A claim was prepared or unprepared: the devices' health follows.
            () = async {
                match &dra {
                    Some(d) => d.changed.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                // The claim moved devices between drivers: the monitor's inventory is stale
                // until it rescans, and the devices' health is refreshed from the new one (the
                // `inventory.changed()` arm), not from the stale one (a prepared GPU would show
                // unhealthy until the next uevent).
                rescan.rescan();
                // An unprepared claim may free a device waiting to go back.
                let cfg = config_view.borrow().clone();
                giveback::settle(&give, cfg, &mut memory, opts.bind).await;
            }
        }
        // `ready` follows the plugins' registrations and the last bind at once.
        let now_ready = bind_ok && plugins_registered(&handle);
        if now_ready != ready {
            ready = now_ready;
            if let (Some(a), false) = (&assessment, reassess) {
                publish_labels(&desired_tx, desired_labels(a, ready, manage_kata(&config_view.borrow())), cluster);
            }
        }
        if reassess {
            // Clone out of the channel in a statement of its own: a `Ref` kept alive across the
            // `.await` (as an `if let` scrutinee's temporary would be) holds the channel's read
            // lock while the monitor, on this same thread, waits for its write lock: a deadlock.
            let latest = inventory.borrow_and_update().clone();
            if let Some(d) = &dra {
                let cfg = config_view.borrow().clone();
                refresh_dra(d, &opts.root, latest.clone(), cfg).await;
            }
            if let Some(a) = assess_blocking(&opts.root, latest).await {
                publish_labels(&desired_tx, desired_labels(&a, ready, manage_kata(&config_view.borrow())), cluster);
                assessment = Some(a);
            }
        }
    }
    tracing::info!("shutting down: withdrawing devices and removing plugin sockets");
    if let (Some(status), Some(a)) = (&label_status, &assessment) {
        // The devices go with the agent: the node is no longer ready. The other labels stay
        // (facts about the host). Best effort, 2 s at most: a pod being stopped has little time.
        publish_labels(&desired_tx, desired_labels(a, false, manage_kata(&config_view.borrow())), true);
        let mut status = status.clone();
        let unready = status.wait_for(|s| s.applied && !s.labels.contains_key(crate::labels::READY));
        if tokio::time::timeout(Duration::from_secs(2), unready).await.is_err() {
            tracing::warn!("could not remove {} from the Node in time", crate::labels::READY);
        }
    }
    let _ = stop_tx.send(true);
    handle.shutdown().await;
    // The DRA sockets go; the ResourceSlices stay (a restart is not an uninstall: the kubelet
    // removes them itself 30 s after the driver's socket disappears for good).
    if let Some(d) = dra {
        if let Err(e) = d.plugin.shutdown().await {
            tracing::warn!(error = %e, "DRA plugin sockets not removed");
        }
    }
    config_task.abort();
    for w in watchers {
        w.abort();
    }
    let _ = http_task.await;
    match monitor_task.await {
        Ok(Err(e)) => Err(AgentError::Monitor(e.to_string())),
        _ => Ok(()),
    }
}

/// The node went into maintenance or came out of it: metric, report, Event, and a round (the
/// holders may be gone already).
async fn maintenance_changed(
    give: &giveback::GiveBack,
    observer: &Observer,
    config: Arc<Config>,
    memory: &mut giveback::Memory,
    release: bool,
) {
    let m = &memory.maintenance;
    observer.set_maintenance(m.active());
    tracing::info!(cordoned = ?m.cordoned, node_maintenance = ?m.node_maintenance, "node maintenance");
    giveback::settle(give, config, memory, release).await;
}

/// Compile-time proof that the loop holds no lock across an `.await`: a `std::sync` guard or a
/// `watch::Ref` alive at an await point makes the future `!Send`, and this would not compile.
/// (On the agent's one-thread runtime such a guard deadlocks the process: the task that needs
/// the lock runs on the very thread that waits for it.)
#[allow(dead_code)]
fn run_holds_no_lock_across_await(opts: AgentOptions) -> impl Future<Output = Result<(), AgentError>> + Send {
    run(opts, std::future::pending::<()>())
}

/// The delay before the next label resync: the interval ± 10 %.
fn next_resync(interval: Duration) -> Duration {
    use crate::deviceplugin::monitor::{random, rescan_delay};
    rescan_delay(interval, interval / 5, random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_can_touch_the_config_count() {
        let f = Some("config.yaml");
        assert!(concerns_config(Some("config.yaml"), f));
        assert!(concerns_config(Some("..data"), f));
        assert!(concerns_config(Some("..2026_11_22_10_00_00.123"), f));
        assert!(concerns_config(None, f));
        assert!(!concerns_config(Some("agent.log"), f));
        assert!(!concerns_config(Some("config.yaml.swp"), f));
    }

    #[test]
    fn keys_read_at_start_are_named_when_a_reload_changes_them() {
        let parse = |t: &str| Config::parse(t).expect("valid");
        let start = parse("cdi:\n  kind: nodeprep.io/vfio\n");
        assert!(read_at_start_changed(&start, &parse("cdi:\n  kind: nodeprep.io/vfio\nhugepages: []\n")).is_empty());
        assert_eq!(read_at_start_changed(&start, &parse("devices: []\n")), ["cdi"]);
        let counted = parse("countedResources:\n  - resourceName: kata.peerpods.io/vm\n");
        assert_eq!(read_at_start_changed(&start, &counted), ["countedResources", "cdi"]);
    }
}
