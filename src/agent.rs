//! The long-running node agent (`nodeprep run`): discover the host, bind what the config
//! selects, serve the device plugins, and keep all of it right by reacting to events: kernel
//! uevents and `/dev/vfio` changes (through the device monitor), config changes (a ConfigMap
//! volume swaps its `..data` symlink: the config's directory is watched), kubelet restarts
//! (through the plugin manager), with a slow periodic rescan as the safety net.
//!
//! A config that fails validation is logged and the last good one keeps running. Node labels
//! and the Kubernetes API come with the agent's cluster side.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bind::{self, HostKernel};
use crate::config::Config;
use crate::deviceplugin::manager::{Manager, ManagerOptions, ResourceSpec};
use crate::deviceplugin::monitor::{Monitor, MonitorOptions, RescanHandle};
use crate::host::{HostRoot, inotify::DirWatcher};
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
}

/// Binds what the config selects; logs every outcome. Errors are logged, never fatal: the
/// plugins then report the affected devices unhealthy.
fn bind_per_config(root: &HostRoot, config: &Config, observer: &Observer) {
    match bind::bind_per_config(root, config, &mut HostKernel::new(root)) {
        Ok((_, outcomes)) => {
            observer.record_bind(&outcomes);
            for o in outcomes {
                match o.detail {
                    Some(d) => tracing::warn!(device = %o.address, outcome = %o.outcome, detail = %d, "bind"),
                    None => tracing::info!(device = %o.address, outcome = %o.outcome, "bind"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "binding per config failed; devices stay as they are"),
    }
}

/// Computes the node labels from the host facts and the monitor's inventory, and logs them.
/// Applying them to the Node object (server-side apply) is the agent's cluster side; without it
/// they are only logged. A failed check logs nothing new: a partial scan must never drop labels.
fn log_labels(root: &HostRoot, inv: Option<&crate::model::PciInventory>, ready: bool) {
    let Some(inv) = inv else {
        tracing::warn!("no PCI inventory yet; node labels left as they are");
        return;
    };
    let facts = match crate::host::system::read_system(root) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "host check failed; node labels left as they are");
            return;
        }
    };
    let report = crate::eligibility::evaluate(&facts, inv);
    let labels =
        crate::labels::desired(crate::labels::LabelInputs { report: &report, facts: &facts, ready, manage_kata: true });
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(labels = %shown.join(","), "node labels nodeprep wants (not applied: no Kubernetes API connection)");
}

fn counted_specs(config: &Config) -> Vec<ResourceSpec> {
    config.counted.iter().map(|c| ResourceSpec::Counted(c.clone())).collect()
}

/// Watches the config's directory and publishes every new valid config; an invalid one is
/// logged and ignored (the last good one keeps running).
async fn watch_config(
    root: HostRoot,
    path: PathBuf,
    bind: bool,
    tx: watch::Sender<Arc<Config>>,
    rescan: RescanHandle,
    observer: Observer,
) -> Result<(), AgentError> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut watcher =
        DirWatcher::new(&dir).map_err(|e| AgentError::ConfigWatch { path: dir.clone(), message: e.to_string() })?;
    loop {
        if let Err(e) = watcher.next_change().await {
            return Err(AgentError::ConfigWatch { path: dir, message: e.to_string() });
        }
        // Let a burst of changes (the ..data swap is several renames) settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
        match Config::load(&path) {
            Ok(c) if **tx.borrow() == c => {}
            Ok(c) => {
                tracing::info!(config = %path.display(), entries = c.entries.len(), "config reloaded");
                observer.record_config_reload(true);
                if bind {
                    let (r, c2, o) = (root.clone(), c.clone(), observer.clone());
                    let _ = tokio::task::spawn_blocking(move || bind_per_config(&r, &c2, &o)).await;
                }
                tx.send_replace(Arc::new(c));
                rescan.rescan();
            }
            Err(e) => {
                observer.record_config_reload(false);
                tracing::error!(error = %e, "new config refused; the last good config keeps running");
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves: then device-plugin streams get an empty list and
/// the sockets are removed.
pub async fn run(opts: AgentOptions, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    // Bind the port first: a port already taken fails the start, not a probe later.
    let observer = Observer::new();
    let listener =
        TcpListener::bind(opts.listen).await.map_err(|source| AgentError::Listen { addr: opts.listen, source })?;
    let config = Config::load(&opts.config_path)?;
    if opts.bind {
        let (r, c, o) = (opts.root.clone(), config.clone(), observer.clone());
        let _ = tokio::task::spawn_blocking(move || bind_per_config(&r, &c, &o)).await;
    }
    let counted = counted_specs(&config);
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let monitor_opts = MonitorOptions { rescan_interval: Some(opts.rescan_interval), ..MonitorOptions::default() };
    let (monitor, devices) = Monitor::new(opts.root.clone(), config_rx, monitor_opts);
    let rescan = monitor.rescan_handle();
    observer.set_monitor(monitor.stats());
    observer.set_devices(&devices.borrow());
    let mut devices_view = monitor.subscribe();

    let mut mopts = ManagerOptions::new(opts.root.clone());
    if let Some(dir) = &opts.plugin_dir {
        mopts.plugin_dir = dir.clone();
    }
    mopts.resources =
        devices.borrow().keys().map(|name| ResourceSpec::Pci(name.clone())).chain(counted).collect::<Vec<_>>();
    let handle = Manager::new(mopts, devices)?.start().await?;
    tracing::info!(plugins = handle.status().len(), dir = %handle.plugin_dir().display(), "device plugins serving");
    observer.set_plugins(handle.status());
    {
        let (root, ready, inv) = (opts.root.clone(), handle.status().iter().all(|s| s.registered), monitor.inventory());
        let _ = tokio::task::spawn_blocking(move || log_labels(&root, inv.as_deref(), ready)).await;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let monitor_task = tokio::spawn(monitor.run(stopped(stop_rx.clone())));
    let config_task = tokio::spawn(watch_config(
        opts.root.clone(),
        opts.config_path.clone(),
        opts.bind,
        config_tx,
        rescan,
        observer.clone(),
    ));
    let http_task = tokio::spawn(observe::serve(listener, observer.clone(), stopped(stop_rx.clone())));

    // The loop's heartbeat (for /healthz) and the views /readyz and /metrics read.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                observer.heartbeat();
                observer.set_plugins(handle.status());
            }
            Ok(()) = devices_view.changed() => observer.set_devices(&devices_view.borrow_and_update()),
        }
    }
    tracing::info!("shutting down: withdrawing devices and removing plugin sockets");
    let _ = stop_tx.send(true);
    handle.shutdown().await;
    config_task.abort();
    let _ = http_task.await;
    match monitor_task.await {
        Ok(Err(e)) => Err(AgentError::Monitor(e.to_string())),
        _ => Ok(()),
    }
}
