//! The device-plugin manager: one plugin per extended resource, each serving its own socket in
//! the kubelet's plugin directory and kept registered through kubelet restarts.
//!
//! **Socket names.** A resource's socket is `<plugin dir>/<resource name with every '/' replaced
//! by '-'>.sock` ([`socket_name`]): `nvidia.com/TU104GL_TESLA_T4` is served on
//! `nvidia.com-TU104GL_TESLA_T4.sock`. Two resources whose names map to the same file are refused.
//!
//! **Resources.** PCI resources publish their entry of the [`ResourceDevices`] the event sources
//! send on a `watch` channel; every resource named in [`ManagerOptions::resources`] is served even
//! while it has no device, and a resource that first appears in the channel gets its plugin then.
//! Counted resources ([`CountedResource`]) advertise N identical devices, optionally backed by one
//! device node (`devices.kubevirt.io/kvm` on `/dev/kvm`), or none (`kata.peerpods.io/vm`, limit 10
//! by default like the peer-pods `PEERPODS_LIMIT_PER_NODE`).
//!
//! **Lifecycle of a plugin.** Remove a stale socket, bind (the socket accepts from then on),
//! serve, then `Register` with `kubelet.sock` (the kubelet dials back during Register). On start
//! the kubelet deletes every socket in the directory and recreates `kubelet.sock`; the manager
//! watches the directory with inotify (`IN_CREATE`/`IN_DELETE`): when `kubelet.sock` is created it
//! registers every plugin again, when a plugin's own socket is deleted it restarts that plugin's
//! server on a fresh socket and registers again. A slow existence check (every
//! [`DEFAULT_CHECK_INTERVAL`]) of the sockets, the servers and the registrations is the
//! backstop for anything inotify misses. When `kubelet.sock` does not exist yet (no kubelet),
//! plugins serve and wait for it.
//!
//! **Shutdown** ([`ManagerHandle::shutdown`], wired to SIGTERM): every open `ListAndWatch` stream
//! gets an empty device list (the kubelet then stops handing the devices out at once instead of
//! after its grace period), then the servers stop and the sockets are removed.
//!
//! Kubelets older than Kubernetes 1.26 dial plugins with the socket path as `:authority`, which
//! tonic's HTTP/2 refuses: 1.26 is the oldest supported kubelet.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::inotify::AddWatchFlags;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::api::KUBELET_SOCKET;
use super::cdi::CdiSpec;
use super::devices::ResourceDevices;
use super::registration;
use super::server::{self, DevicePluginError, DeviceSource, PluginStatus, RunningServer, SharedStatus, lock};
use crate::host::HostRoot;
use crate::host::inotify::{ChangeKind, DirChange, DirWatcher, InotifyError};

/// How often the backstop checks sockets, servers and registrations.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long one registration may take (the kubelet's own dial-back timeout is 10 s).
pub const DEFAULT_REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping server may take to close its connections before it is aborted.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);
/// Kata peer pods' resource.
pub const PEER_PODS_RESOURCE: &str = "kata.peerpods.io/vm";
/// Kata peer pods' default limit per node (`PEERPODS_LIMIT_PER_NODE`).
pub const PEER_PODS_DEFAULT_LIMIT: u32 = crate::config::DEFAULT_COUNT;
/// KubeVirt's KVM resource.
pub const KVM_RESOURCE: &str = "devices.kubevirt.io/kvm";
/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// A resource with no PCI device behind it: `count` identical devices, each giving the container
/// `device_path` (a host path as the kubelet sees it, `/dev/kvm`), when set. The config's type.
pub use crate::config::CountedResource;

impl CountedResource {
    /// Kata peer pods' `kata.peerpods.io/vm`: `limit` devices, no device node.
    pub fn peer_pods(limit: u32) -> Self {
        CountedResource { resource_name: PEER_PODS_RESOURCE.to_owned(), count: limit, device_path: None }
    }

    /// `devices.kubevirt.io/kvm` on `/dev/kvm`.
    pub fn kvm(count: u32) -> Self {
        CountedResource { resource_name: KVM_RESOURCE.to_owned(), count, device_path: Some(KVM_DEVICE.to_owned()) }
    }

    /// Pure: the device ids: the name after the domain, a dash, 0..count
    /// (`kata.peerpods.io/vm` gives `vm-0` .. `vm-9`).
    pub fn device_ids(&self) -> Vec<String> {
        let suffix = self.resource_name.rsplit('/').next().unwrap_or(&self.resource_name);
        (0..self.count).map(|i| format!("{suffix}-{i}")).collect()
    }
}

/// One resource the manager serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSpec {
    /// PCI devices, from the watch channel's entry of this name.
    Pci(String),
    Counted(CountedResource),
}

impl ResourceSpec {
    pub fn resource_name(&self) -> &str {
        match self {
            ResourceSpec::Pci(n) => n,
            ResourceSpec::Counted(c) => &c.resource_name,
        }
    }
}

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// The host root: sysfs and `/dev` are read under it at Allocate time.
    pub root: HostRoot,
    /// The kubelet's plugin directory (absolute): by default
    /// [`PLUGIN_DIR`](crate::host::kubelet::PLUGIN_DIR) under the host root, symlinks resolved
    /// inside it ([`plugin_dir`](crate::host::kubelet::plugin_dir)).
    pub plugin_dir: PathBuf,
    /// Resources served from the start. PCI resources that appear in the channel later are
    /// served then too.
    pub resources: Vec<ResourceSpec>,
    /// The backstop's interval.
    pub check_interval: Duration,
    pub register_timeout: Duration,
    pub stop_grace: Duration,
    /// The CDI spec PCI devices are named in ([`super::cdi`]); none: DeviceSpecs.
    pub cdi: Option<Arc<CdiSpec>>,
}

impl ManagerOptions {
    /// Defaults: the plugin directory under `root`, no resource named, 5 s backstop.
    pub fn new(root: HostRoot) -> Self {
        ManagerOptions {
            plugin_dir: crate::host::kubelet::plugin_dir(&root, None),
            root,
            resources: Vec::new(),
            check_interval: DEFAULT_CHECK_INTERVAL,
            register_timeout: DEFAULT_REGISTER_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            cdi: None,
        }
    }
}

/// Pure: a resource's socket file name: every `/` replaced by `-`, then `.sock`.
pub fn socket_name(resource_name: &str) -> String {
    format!("{}.sock", resource_name.replace('/', "-"))
}

/// Pure: why a resource cannot get a plugin among `taken` socket names, if it cannot.
fn refuse_resource(name: &str, taken: &BTreeMap<String, String>) -> Option<String> {
    if let Err(e) = crate::config::validate_resource_name(name) {
        return Some(e);
    }
    let sock = socket_name(name);
    if sock == KUBELET_SOCKET {
        return Some(format!("{name:?} would be served on the kubelet's own socket"));
    }
    taken.get(&sock).map(|other| format!("{name:?} and {other:?} would both be served on {sock}"))
}

/// The device-plugin manager, before it starts.
#[derive(Debug)]
pub struct Manager {
    opts: ManagerOptions,
    devices: watch::Receiver<ResourceDevices>,
}

impl Manager {
    /// Checks the resources (valid names, distinct sockets); nothing is touched yet.
    pub fn new(opts: ManagerOptions, devices: watch::Receiver<ResourceDevices>) -> Result<Manager, DevicePluginError> {
        let mut taken = BTreeMap::new();
        let mut problems = Vec::new();
        for r in &opts.resources {
            let name = r.resource_name();
            match refuse_resource(name, &taken) {
                Some(p) if taken.values().any(|t| t == name) => {
                    problems.push(format!("{name:?} is listed twice ({p})"))
                }
                Some(p) => problems.push(p),
                None => {
                    taken.insert(socket_name(name), name.to_owned());
                }
            }
        }
        if problems.is_empty() {
            Ok(Manager { opts, devices })
        } else {
            Err(DevicePluginError::Resources(problems.join("; ")))
        }
    }

    /// Creates the plugin directory if needed, starts watching it, starts every plugin's server
    /// and has each register (now when `kubelet.sock` exists, else when it appears). Fails when
    /// a socket cannot be bound or the directory cannot be watched; registration problems are
    /// retried, not returned.
    pub async fn start(self) -> Result<ManagerHandle, DevicePluginError> {
        let Manager { opts, mut devices } = self;
        let dir = opts.plugin_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| DevicePluginError::PluginDir { path: dir.clone(), source })?;
        let watcher = DirWatcher::with_mask(&dir, plugin_dir_mask())
            .map_err(|InotifyError::Io { source, .. }| DevicePluginError::Watch { path: dir.clone(), source })?;

        let mut specs = opts.resources.clone();
        let initial: Vec<String> = devices.borrow_and_update().keys().cloned().collect();
        let mut state = State {
            opts,
            plugins: BTreeMap::new(),
            statuses: Arc::default(),
            changed: Arc::default(),
            refused: Default::default(),
        };
        let mut taken: BTreeMap<String, String> =
            specs.iter().map(|s| (socket_name(s.resource_name()), s.resource_name().to_owned())).collect();
        for name in initial {
            if specs.iter().any(|s| s.resource_name() == name) {
                continue;
            }
            match refuse_resource(&name, &taken) {
                Some(p) => {
                    tracing::warn!(resource = %name, problem = %p, "not serving a device plugin for this resource")
                }
                None => {
                    taken.insert(socket_name(&name), name.clone());
                    specs.push(ResourceSpec::Pci(name));
                }
            }
        }
        for spec in specs {
            if let Err(e) = state.add_plugin(spec, &devices) {
                state.shutdown().await;
                return Err(e);
            }
        }
        let (statuses, changed) = (state.statuses.clone(), state.changed.clone());
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let task = tokio::spawn(state.run(watcher, devices, cmd_rx));
        Ok(ManagerHandle { cmd: cmd_tx, task, statuses, changed, plugin_dir: dir })
    }

    /// Starts, runs until `shutdown` completes (wire SIGTERM to it), then shuts down.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DevicePluginError> {
        let handle = self.start().await?;
        shutdown.await;
        handle.shutdown().await;
        Ok(())
    }
}

/// A running manager.
#[derive(Debug)]
pub struct ManagerHandle {
    cmd: mpsc::Sender<ManagerCmd>,
    task: JoinHandle<()>,
    statuses: Arc<Mutex<BTreeMap<String, SharedStatus>>>,
    changed: Arc<Notify>,
    plugin_dir: PathBuf,
}

impl ManagerHandle {
    /// Every plugin's status, by resource name.
    pub fn status(&self) -> Vec<PluginStatus> {
        let map = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|s| lock(s).clone()).collect()
    }

    /// Resolves when some plugin's registration changed since the last call (or the start):
    /// the agent's cue to look at [`status`](Self::status) again. One waiter.
    pub async fn registration_changed(&self) {
        self.changed.notified().await
    }

    /// One plugin's status.
    pub fn plugin_status(&self, resource_name: &str) -> Option<PluginStatus> {
        let map = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        map.get(resource_name).map(|s| lock(s).clone())
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// Sends an empty list on every open `ListAndWatch` stream, stops the servers and removes
    /// the sockets; returns when all of that is done.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(ManagerCmd::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

#[derive(Debug)]
enum ManagerCmd {
    Shutdown(oneshot::Sender<()>),
}

/// What a plugin's task is told to do.
#[derive(Debug)]
enum Cmd {
    /// Register (the kubelet started, or the plugin just started).
    Register,
    /// Its socket was deleted, or the backstop's turn: make sure it serves and is registered.
    Check,
    /// Stop for good; `None` when the manager went away without asking.
    Shutdown(Option<oneshot::Sender<()>>),
}

struct PluginHandle {
    tx: mpsc::Sender<Cmd>,
    task: JoinHandle<()>,
    endpoint: String,
}

struct State {
    opts: ManagerOptions,
    plugins: BTreeMap<String, PluginHandle>,
    statuses: Arc<Mutex<BTreeMap<String, SharedStatus>>>,
    /// Told when a plugin's registration changes.
    changed: Arc<Notify>,
    /// Resources from the channel that cannot get a plugin (already logged).
    refused: std::collections::BTreeSet<String>,
}

impl State {
    /// Starts one plugin's server and its task, which registers first thing.
    fn add_plugin(
        &mut self,
        spec: ResourceSpec,
        devices: &watch::Receiver<ResourceDevices>,
    ) -> Result<(), DevicePluginError> {
        let name = spec.resource_name().to_owned();
        let endpoint = socket_name(&name);
        let socket = self.opts.plugin_dir.join(&endpoint);
        let status: SharedStatus = Arc::new(Mutex::new(PluginStatus {
            resource_name: name.clone(),
            socket: socket.clone(),
            ..Default::default()
        }));
        let source = match spec {
            ResourceSpec::Pci(_) => DeviceSource::Pci(devices.clone(), self.opts.cdi.clone()),
            ResourceSpec::Counted(c) => DeviceSource::Counted(c),
        };
        let server = server::serve(&socket, &name, &self.opts.root, source.clone(), &status)?;
        let plugin = Plugin {
            resource: name.clone(),
            endpoint: endpoint.clone(),
            socket,
            kubelet_socket: self.opts.plugin_dir.join(KUBELET_SOCKET),
            root: self.opts.root.clone(),
            source,
            status: status.clone(),
            server: Some(server),
            register_timeout: self.opts.register_timeout,
            stop_grace: self.opts.stop_grace,
            changed: self.changed.clone(),
            registered_with: None,
        };
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.try_send(Cmd::Register);
        let task = tokio::spawn(plugin.run(rx));
        self.statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), status);
        self.plugins.insert(name, PluginHandle { tx, task, endpoint });
        Ok(())
    }

    fn tell_all(&self, make: impl Fn() -> Cmd) {
        for p in self.plugins.values() {
            tell(&p.tx, make());
        }
    }

    async fn run(
        mut self,
        mut watcher: DirWatcher,
        mut devices: watch::Receiver<ResourceDevices>,
        mut cmd: mpsc::Receiver<ManagerCmd>,
    ) {
        let mut watching_dir = true;
        let mut watching_devices = true;
        let mut backstop = tokio::time::interval(self.opts.check_interval);
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backstop.tick().await;
        loop {
            tokio::select! {
                c = cmd.recv() => {
                    let reply = c.map(|ManagerCmd::Shutdown(tx)| tx);
                    self.shutdown().await;
                    if let Some(tx) = reply {
                        let _ = tx.send(());
                    }
                    return;
                }
                change = watcher.next_change(), if watching_dir => match change {
                    Ok(change) => self.on_dir_change(&change),
                    Err(e) => {
                        tracing::warn!(error = %e, "inotify on the plugin directory failed; relying on the periodic check");
                        watching_dir = false;
                    }
                },
                _ = backstop.tick() => self.tell_all(|| Cmd::Check),
                changed = devices.changed(), if watching_devices => {
                    if changed.is_err() {
                        watching_devices = false;
                        continue;
                    }
                    let names: Vec<String> = devices.borrow_and_update().keys().cloned().collect();
                    self.add_new_resources(names, &devices);
                }
            }
        }
    }

    fn on_dir_change(&self, change: &DirChange) {
        let name = change.name.as_deref();
        match change.kind {
            ChangeKind::Created | ChangeKind::MovedIn if name == Some(KUBELET_SOCKET) => {
                tracing::info!("kubelet.sock created: the kubelet (re)started; registering every plugin again");
                self.tell_all(|| Cmd::Register);
            }
            ChangeKind::Deleted | ChangeKind::MovedOut => {
                if let Some(p) = self.plugins.values().find(|p| Some(p.endpoint.as_str()) == name) {
                    tracing::debug!(socket = %p.endpoint, "plugin socket deleted");
                    tell(&p.tx, Cmd::Check);
                }
            }
            ChangeKind::Overflow => self.tell_all(|| Cmd::Check),
            ChangeKind::Created | ChangeKind::MovedIn | ChangeKind::Written | ChangeKind::DirGone => {}
        }
    }

    /// Starts plugins for PCI resources that just appeared in the channel.
    fn add_new_resources(&mut self, names: Vec<String>, devices: &watch::Receiver<ResourceDevices>) {
        for name in names {
            if self.plugins.contains_key(&name) || self.refused.contains(&name) {
                continue;
            }
            let taken: BTreeMap<String, String> =
                self.plugins.iter().map(|(n, p)| (p.endpoint.clone(), n.clone())).collect();
            if let Some(p) = refuse_resource(&name, &taken) {
                tracing::warn!(resource = %name, problem = %p, "not serving a device plugin for this resource");
                self.refused.insert(name);
                continue;
            }
            tracing::info!(resource = %name, "new resource: starting its device plugin");
            if let Err(e) = self.add_plugin(ResourceSpec::Pci(name.clone()), devices) {
                tracing::error!(resource = %name, error = %e, "cannot start device plugin");
            }
        }
    }

    /// Shuts every plugin down, all at once, and waits for them.
    async fn shutdown(&mut self) {
        let mut waits = Vec::new();
        for (name, p) in std::mem::take(&mut self.plugins) {
            let (tx, rx) = oneshot::channel();
            if p.tx.send(Cmd::Shutdown(Some(tx))).await.is_ok() {
                waits.push((name, rx, p.task));
            }
        }
        for (name, rx, task) in waits {
            let _ = rx.await;
            let _ = task.await;
            tracing::info!(resource = %name, "device plugin stopped");
        }
    }
}

/// The plugin directory's watch: entries created, deleted and renamed in or out. Not
/// `IN_CLOSE_WRITE` (sockets are never written as files) nor the directory's own deletion (the
/// kubelet empties the directory, it never removes it; the backstop covers the rest).
fn plugin_dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_MOVED_FROM
}

/// Queues a command for a plugin without blocking the manager; a full queue (a plugin busy
/// registering) gets it from a task of its own.
fn tell(tx: &mpsc::Sender<Cmd>, c: Cmd) {
    if let Err(mpsc::error::TrySendError::Full(c)) = tx.try_send(c) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(c).await;
        });
    }
}

/// How one registration attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Registered, or failed for a reason retrying soon will not fix.
    Done,
    /// The kubelet's socket did not accept the connection.
    NotAccepting,
}

/// One plugin: its server, kept serving and registered.
struct Plugin {
    resource: String,
    endpoint: String,
    socket: PathBuf,
    kubelet_socket: PathBuf,
    root: HostRoot,
    source: DeviceSource,
    status: SharedStatus,
    server: Option<RunningServer>,
    register_timeout: Duration,
    stop_grace: Duration,
    /// Told when `registered` changes.
    changed: Arc<Notify>,
    /// The `kubelet.sock` the last successful registration went to ([`socket_identity`]).
    registered_with: Option<SocketIdentity>,
}

/// Which `kubelet.sock` this is: a kubelet that starts creates a new one, so a different
/// identity is a different kubelet process.
type SocketIdentity = (u64, u64, i64, i64);

fn socket_identity(p: &Path) -> Option<SocketIdentity> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

impl Plugin {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut pending: Vec<Cmd> = Vec::new();
        loop {
            if pending.is_empty() {
                pending.push(rx.recv().await.unwrap_or(Cmd::Shutdown(None)));
            }
            while let Ok(c) = rx.try_recv() {
                pending.push(c);
            }
            let mut register = false;
            for c in std::mem::take(&mut pending) {
                match c {
                    Cmd::Shutdown(reply) => {
                        self.shutdown().await;
                        if let Some(tx) = reply {
                            let _ = tx.send(());
                        }
                        return;
                    }
                    Cmd::Register => register = true,
                    Cmd::Check => {}
                }
            }
            let restarted = self.ensure_serving().await;
            let registered = lock(&self.status).registered;
            // Register once per kubelet: a second `Register` on the same socket while the first
            // connection lives is refused ("device plugin already connected"), and the
            // kubelet (1.37) then forgets its own client for that socket, so every later
            // registration on it is refused too. A kubelet that restarts deletes our socket
            // (`restarted`) and creates a new kubelet.sock.
            let new_kubelet = register && socket_identity(&self.kubelet_socket) != self.registered_with;
            if !(new_kubelet || restarted || !registered) || self.server.is_none() {
                continue;
            }
            if !self.kubelet_socket.exists() {
                tracing::debug!(resource = %self.resource, "no kubelet.sock yet; registering when it appears");
                continue;
            }
            self.register(&mut rx, &mut pending).await;
        }
    }

    /// Restarts the server when its socket is gone or it died; true when it did.
    ///
    /// The old server is stopped (its streams ended, its connections closed) *before* the new
    /// one registers: when a kubelet's `ListAndWatch` stream ends, the kubelet disconnects
    /// whichever client is registered for the resource at that moment (`runClient` in the
    /// kubelet's device-plugin server), so an old stream ending after the new registration
    /// would tear the new one down. After a kubelet restart the old connections are dead already
    /// and this is immediate.
    async fn ensure_serving(&mut self) -> bool {
        let alive = self.server.as_ref().is_some_and(|s| !s.is_finished());
        if alive && is_socket(&self.socket) {
            return false;
        }
        let why = if alive { "its socket is gone (the kubelet restarted?)" } else { "its server is not running" };
        tracing::info!(resource = %self.resource, socket = %self.socket.display(), why, "restarting device plugin server");
        {
            let mut s = lock(&self.status);
            s.registered = false;
            s.serving = false;
        }
        self.registered_with = None;
        self.changed.notify_one();
        if let Some(old) = self.server.take() {
            old.stop(false, self.stop_grace).await;
        }
        match server::serve(&self.socket, &self.resource, &self.root, self.source.clone(), &self.status) {
            Ok(s) => {
                self.server = Some(s);
                true
            }
            Err(e) => {
                tracing::error!(resource = %self.resource, error = %e, "cannot restart device plugin server; retrying later");
                lock(&self.status).last_error = Some(e.to_string());
                false
            }
        }
    }

    /// Registers, retrying shortly (50, 150, 450 ms) while the kubelet's socket exists but does
    /// not accept connections (a dead kubelet's, or a new one between bind and listen). Commands
    /// arriving meanwhile are queued in `pending`; a shutdown ends the attempt at once (it must
    /// not wait for a kubelet that does not answer), and a `Register` (a new `kubelet.sock`) ends
    /// a backoff wait so the caller registers again right away.
    async fn register(&mut self, rx: &mut mpsc::Receiver<Cmd>, pending: &mut Vec<Cmd>) {
        let urgent = |pending: &[Cmd]| pending.iter().any(|c| !matches!(c, Cmd::Check));
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=4 {
            let (socket, resource, endpoint) =
                (self.kubelet_socket.clone(), self.resource.clone(), self.endpoint.clone());
            let once = registration::register(&socket, &resource, &endpoint, self.register_timeout);
            tokio::pin!(once);
            let outcome = loop {
                tokio::select! {
                    o = &mut once => break Some(self.registered(o, attempt == 4)),
                    c = rx.recv() => {
                        let stop = !matches!(c, Some(Cmd::Register | Cmd::Check));
                        pending.push(c.unwrap_or(Cmd::Shutdown(None)));
                        if stop {
                            break None;
                        }
                    }
                }
            };
            if outcome != Some(Attempt::NotAccepting) || urgent(pending) {
                return;
            }
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    c = rx.recv() => {
                        pending.push(c.unwrap_or(Cmd::Shutdown(None)));
                        if urgent(pending) {
                            return;
                        }
                    }
                }
            }
            delay *= 3;
        }
    }

    /// One registration's outcome, into the status.
    fn registered(&mut self, result: Result<(), DevicePluginError>, last_try: bool) -> Attempt {
        let mut s = lock(&self.status);
        match result {
            Ok(()) => {
                s.registered = true;
                s.registrations += 1;
                s.last_error = None;
                self.registered_with = socket_identity(&self.kubelet_socket);
                self.changed.notify_one();
                tracing::info!(resource = %self.resource, endpoint = %self.endpoint, "registered with the kubelet");
                Attempt::Done
            }
            // The kubelet has this socket connected and streaming already (a registration it
            // answered after we gave up waiting, or a race with its restart): that is registered.
            Err(DevicePluginError::Register { status, .. })
                if status.message().contains("already connected") && s.open_streams > 0 =>
            {
                s.registered = true;
                s.last_error = None;
                self.registered_with = socket_identity(&self.kubelet_socket);
                self.changed.notify_one();
                tracing::info!(resource = %self.resource, "the kubelet has this plugin connected already");
                Attempt::Done
            }
            Err(e @ DevicePluginError::Connect { .. }) if !last_try => {
                tracing::debug!(resource = %self.resource, error = %e, "the kubelet does not accept yet");
                Attempt::NotAccepting
            }
            Err(e) => {
                tracing::warn!(resource = %self.resource, error = %e, "registration failed; retrying when the kubelet restarts or at the next check");
                s.registered = false;
                s.last_error = Some(e.to_string());
                self.changed.notify_one();
                Attempt::Done
            }
        }
    }

    async fn shutdown(&mut self) {
        self.registered_with = None;
        if let Some(s) = self.server.take() {
            s.stop(true, self.stop_grace).await;
        }
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove plugin socket"),
        }
        let mut s = lock(&self.status);
        s.serving = false;
        s.registered = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_replace_slashes() {
        assert_eq!(socket_name("nvidia.com/TU104GL_TESLA_T4"), "nvidia.com-TU104GL_TESLA_T4.sock");
        assert_eq!(socket_name("devices.kubevirt.io/kvm"), "devices.kubevirt.io-kvm.sock");
    }

    #[test]
    fn counted_ids() {
        assert_eq!(CountedResource::peer_pods(3).device_ids(), ["vm-0", "vm-1", "vm-2"]);
        assert_eq!(CountedResource::kvm(1).device_ids(), ["kvm-0"]);
    }

    #[test]
    fn refuses_bad_names_and_socket_collisions() {
        let (_tx, rx) = watch::channel(ResourceDevices::new());
        let mut opts = ManagerOptions::new(HostRoot::new("/nonexistent"));
        opts.resources = vec![
            ResourceSpec::Pci("a.io-b/c".into()),
            ResourceSpec::Pci("a.io/b-c".into()),
            ResourceSpec::Pci("nodomain".into()),
            ResourceSpec::Counted(CountedResource::peer_pods(10)),
            ResourceSpec::Counted(CountedResource::peer_pods(5)),
        ];
        let e = Manager::new(opts, rx).expect_err("refused").to_string();
        assert!(e.contains("\"a.io/b-c\" and \"a.io-b/c\" would both be served on a.io-b-c.sock"), "{e}");
        assert!(e.contains("nodomain"), "{e}");
        assert!(e.contains("\"kata.peerpods.io/vm\" is listed twice"), "{e}");
    }
}
