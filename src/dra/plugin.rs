//! The kubelet front of nodeprep's DRA driver: the plugin-registration socket and the DRA
//! plugin socket, their gRPC services, and nothing else (every decision is the [`Driver`]'s).
//!
//! How the kubelet (v1.37) finds and uses a DRA plugin:
//!
//! 1. Its plugin watcher watches `<root-dir>/plugins_registry` (inotify, plus a walk at start)
//!    and dials every socket that appears there, here `<driver>-reg.sock`; it calls
//!    `Registration.GetInfo` (1 s timeout) and gets `PluginInfo{type: "DRAPlugin", name: <driver>,
//!    endpoint: <root-dir>/plugins/<driver>/dra.sock, supported_versions}`.
//! 2. The DRA plugin manager picks the first of `supported_versions` it knows of `v1.DRAPlugin`
//!    and `v1beta1.DRAPlugin` (so the order matters: v1 first), and the health service only if
//!    the list names `v1.DRAResourceHealth`. It dials the endpoint (`unix:` target, `:authority`
//!    `localhost`) at once, so `dra.sock` must be serving before the registration socket
//!    exists; then it calls `Registration.NotifyRegistrationStatus` with whether it accepted.
//! 3. It calls `NodePrepareResources` / `NodeUnprepareResources` (45 s timeout each) with the
//!    claims of the pods it starts and stops, and keeps `DRAResourceHealth.NodeWatchResources`
//!    open (reopened every 5 s after it ends; given up if the answer is `Unimplemented`).
//! 4. When the registration socket goes away the plugin is deregistered; 30 s after the
//!    driver's last plugin went away, and once at every kubelet start, the kubelet deletes the
//!    node's ResourceSlices of the driver (all drivers at start), so they must be published
//!    again when the driver comes back.
//!
//! Two details of the kubelet that shape this module:
//!
//! - The plugin watcher dials the registration socket by its bare path, so grpc-go sends the
//!   percent-encoded path (`%2Fvar%2Flib%2Fkubelet%2F...`) as `:authority`, which the `h2` crate
//!   (under hyper) refuses as malformed with `RST_STREAM(PROTOCOL_ERROR)` before any handler
//!   runs. Both sockets therefore announce an HPACK dynamic table of size 0 and rewrite the
//!   `:authority` of every request to `localhost` on the way in (module `authority`). `dra.sock`
//!   would not need it (the DRA manager dials a `unix:` target, so grpc-go sends `localhost`),
//!   but it costs next to nothing and keeps clients that dial by bare path working.
//! - The kubelet stamps each device's health with the time it *received* it and reads it as
//!   `Unknown` once `health_check_timeout_seconds` (30 s when 0) passed without a new report,
//!   ignoring `last_updated_time`. So the health stream sends the full list at once, on every
//!   change, and again every [`PluginOptions::health_resend`], with a timeout of three such
//!   periods.
//!
//! The services run straight on hyper's HTTP/2 server, as the device plugins' do; `dra.sock`
//! carries three services (DRAPlugin v1 and v1beta1, DRAResourceHealth v1) behind tonic's
//! [`Routes`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use super::api::health::dra_resource_health_server::{DraResourceHealth, DraResourceHealthServer};
use super::api::health::{self, HealthStatus, NodeWatchResourcesRequest, NodeWatchResourcesResponse};
use super::api::registration::registration_server::{Registration, RegistrationServer};
use super::api::registration::{
    InfoRequest, PluginInfo, RegistrationStatus as ApiRegistrationStatus, RegistrationStatusResponse,
};
use super::api::{self, v1, v1beta1};
use super::{ClaimRef, DeviceHealth, Driver, Health, PrepareResults, PreparedDevice, UnprepareResults};

/// How often the health stream repeats the full list when nothing changed, by default.
pub const DEFAULT_HEALTH_RESEND: Duration = Duration::from_secs(20);
/// How long [`Plugin::shutdown`] waits for the kubelet's connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything that can go wrong starting and stopping the plugin.
#[derive(Debug, thiserror::Error)]
pub enum DraPluginError {
    #[error("DRA plugin: invalid driver name {0:?}: it must be a non-empty file name")]
    DriverName(String),
    #[error("DRA plugin {driver}: create directory {}: {source}", .path.display())]
    CreateDir {
        driver: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("DRA plugin {driver}: remove socket {}: {source}", .path.display())]
    RemoveSocket {
        driver: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("DRA plugin {driver}: listen on {}: {source}", .path.display())]
    Listen {
        driver: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the plugin's sockets go and what it tells the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOptions {
    /// The DRA driver's name (`vfio.nodeprep.io`): the `PluginInfo.name` and the socket names.
    pub driver_name: String,
    /// `<kubelet root>/plugins_registry` as this process sees it; `<driver>-reg.sock` goes there.
    pub registry_dir: PathBuf,
    /// `<kubelet root>/plugins/<driver>` as this process sees it; `dra.sock` goes there.
    pub plugin_dir: PathBuf,
    /// `dra.sock`'s absolute path as the kubelet sees it, sent as `PluginInfo.endpoint`; `None`:
    /// where this process creates it (right when the agent sees the host's root as `/`).
    pub endpoint_path: Option<PathBuf>,
    /// How often the health stream repeats the full list when nothing changed; the devices'
    /// `health_check_timeout_seconds` is three times this.
    pub health_resend: Duration,
}

impl PluginOptions {
    /// The sockets under `kubelet_root` (`/var/lib/kubelet`, or `/host/var/lib/kubelet` when the
    /// agent sees the host under a prefix: then set [`Self::endpoint_path`] too).
    pub fn new(driver_name: impl Into<String>, kubelet_root: &Path) -> PluginOptions {
        let driver_name = driver_name.into();
        PluginOptions {
            registry_dir: kubelet_root.join("plugins_registry"),
            plugin_dir: kubelet_root.join("plugins").join(&driver_name),
            driver_name,
            endpoint_path: None,
            health_resend: DEFAULT_HEALTH_RESEND,
        }
    }

    /// `<registry_dir>/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir.join(format!("{}{}", self.driver_name, api::REGISTRATION_SOCKET_SUFFIX))
    }

    /// `<plugin_dir>/dra.sock`.
    pub fn dra_socket(&self) -> PathBuf {
        self.plugin_dir.join(api::DRA_SOCKET)
    }

    /// `dra.sock` as the kubelet sees it.
    pub fn endpoint(&self) -> PathBuf {
        self.endpoint_path.clone().unwrap_or_else(|| self.dra_socket())
    }

    /// The `health_check_timeout_seconds` sent with every device: three resend periods, so one
    /// late report does not make the kubelet read the devices as `Unknown`.
    pub fn health_timeout_seconds(&self) -> i64 {
        let secs = self.health_resend.saturating_mul(3).as_secs_f64().ceil();
        // Saturating float-to-int conversion; at least 1 s, since 0 means "the default, 30 s".
        (secs as i64).max(1)
    }

    /// Pure: what `GetInfo` answers.
    pub fn plugin_info(&self) -> PluginInfo {
        PluginInfo {
            r#type: api::PLUGIN_TYPE.to_owned(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint().to_string_lossy().into_owned(),
            supported_versions: api::SUPPORTED_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// What the kubelet said in its last `NotifyRegistrationStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// The kubelet accepted the plugin (the last notification said so).
    pub registered: bool,
    /// The kubelet's reason when it refused.
    pub error: Option<String>,
    /// Notifications received so far (each kubelet start registers again).
    pub notifications: u64,
}

/// Pure: the kubelet's notification applied to the status.
fn apply_notification(status: &mut RegistrationStatus, note: &ApiRegistrationStatus) {
    status.registered = note.plugin_registered;
    status.error = (!note.error.is_empty()).then(|| note.error.clone());
    status.notifications += 1;
}

// ---------------------------------------------------------------------------------------------
// The services.

/// `pluginregistration.Registration` on the registration socket.
struct RegistrationService {
    info: PluginInfo,
    status: Arc<watch::Sender<RegistrationStatus>>,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(driver = %self.info.name, endpoint = %self.info.endpoint, "GetInfo from the kubelet");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<ApiRegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let note = request.into_inner();
        if note.plugin_registered {
            tracing::info!(driver = %self.info.name, endpoint = %self.info.endpoint, "the kubelet registered the DRA plugin");
        } else {
            tracing::warn!(driver = %self.info.name, error = %note.error, "the kubelet refused the DRA plugin");
        }
        self.status.send_modify(|s| apply_notification(s, &note));
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// `DRAPlugin` v1 and v1beta1 on `dra.sock`: both versions translate to the same driver calls.
#[derive(Clone)]
struct DraService {
    driver: Arc<dyn Driver>,
    name: Arc<str>,
}

/// Pure: the kubelet's claims as the driver takes them; a claim without a UID is refused, since
/// the answer is keyed by UID.
fn claim_refs<'a>(claims: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Result<Vec<ClaimRef>, Status> {
    claims
        .map(|(namespace, name, uid)| {
            if uid.is_empty() {
                return Err(Status::invalid_argument(format!("claim {namespace}/{name} has no UID")));
            }
            Ok(ClaimRef { namespace: namespace.to_owned(), name: name.to_owned(), uid: uid.to_owned() })
        })
        .collect()
}

/// Pure: the driver's results with an error for every claim it left out (the kubelet wants an
/// entry for each claim it sent).
fn complete<T>(
    claims: &[ClaimRef],
    mut results: BTreeMap<String, Result<T, String>>,
    driver: &str,
) -> BTreeMap<String, Result<T, String>> {
    for c in claims {
        results
            .entry(c.uid.clone())
            .or_insert_with(|| Err(format!("DRA driver {driver} returned no result for claim {c}")));
    }
    results
}

fn log_results<T>(what: &str, driver: &str, results: &BTreeMap<String, Result<T, String>>) {
    let failed: Vec<(&str, &str)> =
        results.iter().filter_map(|(uid, r)| r.as_ref().err().map(|e| (uid.as_str(), e.as_str()))).collect();
    if failed.is_empty() {
        tracing::info!(driver, claims = results.len(), "{what}");
    } else {
        tracing::warn!(driver, claims = results.len(), ?failed, "{what}: some claims failed");
    }
}

impl DraService {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let results = complete(&claims, self.driver.prepare(claims.clone()).await, &self.name);
        log_results("NodePrepareResources", &self.name, &results);
        results
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let results = complete(&claims, self.driver.unprepare(claims.clone()).await, &self.name);
        log_results("NodeUnprepareResources", &self.name, &results);
        results
    }
}

/// Pure: a prepared device as DRA v1 carries it.
pub fn v1_device(d: &PreparedDevice) -> v1::Device {
    v1::Device {
        request_names: d.requests.clone(),
        pool_name: d.pool.clone(),
        device_name: d.device.clone(),
        cdi_device_ids: d.cdi_ids.clone(),
        share_id: None,
    }
}

/// Pure: a prepared device as DRA v1beta1 carries it.
pub fn v1beta1_device(d: &PreparedDevice) -> v1beta1::Device {
    v1beta1::Device {
        request_names: d.requests.clone(),
        pool_name: d.pool.clone(),
        device_name: d.device.clone(),
        cdi_device_ids: d.cdi_ids.clone(),
    }
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let req = request.into_inner();
        let claims = claim_refs(req.claims.iter().map(|c| (&*c.namespace, &*c.name, &*c.uid)))?;
        let claims = self
            .prepare(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let answer = match r {
                    Ok(devices) => v1::NodePrepareResourceResponse {
                        devices: devices.iter().map(v1_device).collect(),
                        error: String::new(),
                    },
                    Err(error) => v1::NodePrepareResourceResponse { devices: Vec::new(), error },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let req = request.into_inner();
        let claims = claim_refs(req.claims.iter().map(|c| (&*c.namespace, &*c.name, &*c.uid)))?;
        let claims = self
            .unprepare(claims)
            .await
            .into_iter()
            .map(|(uid, r)| (uid, v1::NodeUnprepareResourceResponse { error: r.err().unwrap_or_default() }))
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let req = request.into_inner();
        let claims = claim_refs(req.claims.iter().map(|c| (&*c.namespace, &*c.name, &*c.uid)))?;
        let claims = self
            .prepare(claims)
            .await
            .into_iter()
            .map(|(uid, r)| {
                let answer = match r {
                    Ok(devices) => v1beta1::NodePrepareResourceResponse {
                        devices: devices.iter().map(v1beta1_device).collect(),
                        error: String::new(),
                    },
                    Err(error) => v1beta1::NodePrepareResourceResponse { devices: Vec::new(), error },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let req = request.into_inner();
        let claims = claim_refs(req.claims.iter().map(|c| (&*c.namespace, &*c.name, &*c.uid)))?;
        let claims = self
            .unprepare(claims)
            .await
            .into_iter()
            .map(|(uid, r)| (uid, v1beta1::NodeUnprepareResourceResponse { error: r.err().unwrap_or_default() }))
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse { claims }))
    }
}

/// Pure: the devices' health as the kubelet's stream carries it, stamped `now` (unix seconds).
pub fn health_response(devices: &[DeviceHealth], timeout_seconds: i64, now: i64) -> NodeWatchResourcesResponse {
    let devices = devices
        .iter()
        .map(|d| health::DeviceHealth {
            device: Some(health::DeviceIdentifier { pool_name: d.pool.clone(), device_name: d.device.clone() }),
            health: match d.health {
                Health::Healthy => HealthStatus::Healthy,
                Health::Unhealthy => HealthStatus::Unhealthy,
                Health::Unknown => HealthStatus::Unknown,
            } as i32,
            last_updated_time: now,
            health_check_timeout_seconds: timeout_seconds,
            message: d.message.clone(),
        })
        .collect();
    NodeWatchResourcesResponse { devices }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `DRAResourceHealth` v1 on `dra.sock`.
#[derive(Clone)]
struct HealthService {
    driver: Arc<dyn Driver>,
    name: Arc<str>,
    resend: Duration,
    timeout_seconds: i64,
    stop: watch::Receiver<bool>,
}

type HealthStream = ReceiverStream<Result<NodeWatchResourcesResponse, Status>>;

impl HealthService {
    /// Feeds one stream until the kubelet hangs up or the plugin stops: the full list at once,
    /// on every change, and every `resend` (see the module docs for why).
    async fn feed(self, tx: mpsc::Sender<Result<NodeWatchResourcesResponse, Status>>) {
        let name = &*self.name;
        let mut stop = self.stop.clone();
        let mut health = Some(self.driver.health());
        let mut last = health.as_mut().map(|h| h.borrow_and_update().clone()).unwrap_or_default();
        let send = |list: &[DeviceHealth]| tx.send(Ok(health_response(list, self.timeout_seconds, unix_now())));
        tracing::debug!(driver = name, devices = last.len(), "NodeWatchResources: initial list");
        if send(&last).await.is_err() {
            return;
        }
        let mut resend = tokio::time::interval_at(tokio::time::Instant::now() + self.resend, self.resend);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stopping(&mut stop) => break,
                () = tx.closed() => {
                    tracing::debug!(driver = name, "NodeWatchResources: the kubelet closed the stream");
                    break;
                }
                changed = async { health.as_mut().expect("enabled only with a receiver").changed().await },
                    if health.is_some() =>
                {
                    let Some(rx) = health.as_mut().filter(|_| changed.is_ok()) else {
                        // The driver dropped its sender: keep repeating the last list.
                        health = None;
                        continue;
                    };
                    last = rx.borrow_and_update().clone();
                    tracing::info!(
                        driver = name,
                        devices = last.len(),
                        unhealthy = last.iter().filter(|d| d.health != Health::Healthy).count(),
                        "NodeWatchResources: device health changed"
                    );
                    if send(&last).await.is_err() {
                        break;
                    }
                    resend.reset();
                }
                _ = resend.tick() => {
                    if send(&last).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream;

    async fn node_watch_resources(
        &self,
        _: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        tracing::info!(driver = &*self.name, "NodeWatchResources: the kubelet opened a stream");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().feed(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

// ---------------------------------------------------------------------------------------------
// Serving.

/// A running plugin: `dra.sock` and the registration socket, served until [`Plugin::shutdown`].
pub struct Plugin {
    driver_name: String,
    registration_socket: PathBuf,
    dra_socket: PathBuf,
    status: Arc<watch::Sender<RegistrationStatus>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("driver_name", &self.driver_name)
            .field("registration_socket", &self.registration_socket)
            .field("dra_socket", &self.dra_socket)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

fn create_dir(driver: &str, path: &Path) -> Result<(), DraPluginError> {
    std::fs::create_dir_all(path).map_err(|source| DraPluginError::CreateDir {
        driver: driver.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Removes a socket file; a missing one is fine.
fn remove_socket(driver: &str, path: &Path) -> Result<bool, DraPluginError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DraPluginError::RemoveSocket { driver: driver.to_owned(), path: path.to_owned(), source }),
    }
}

/// Removes a stale socket file and listens on a new one.
fn listen(driver: &str, path: &Path) -> Result<UnixListener, DraPluginError> {
    if remove_socket(driver, path)? {
        tracing::debug!(driver, socket = %path.display(), "removed stale socket");
    }
    UnixListener::bind(path).map_err(|source| DraPluginError::Listen {
        driver: driver.to_owned(),
        path: path.to_owned(),
        source,
    })
}

impl Plugin {
    /// Starts serving: `dra.sock` first, then the registration socket (the kubelet dials
    /// `dra.sock` as soon as it sees the registration socket). Stale socket files are replaced,
    /// missing directories created. Both sockets accept connections when this returns.
    pub async fn start(options: PluginOptions, driver: Arc<dyn Driver>) -> Result<Plugin, DraPluginError> {
        let name = options.driver_name.clone();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(DraPluginError::DriverName(name));
        }
        create_dir(&name, &options.plugin_dir)?;
        create_dir(&name, &options.registry_dir)?;
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(watch::channel(RegistrationStatus::default()).0);
        let dra_socket = options.dra_socket();
        let registration_socket = options.registration_socket();

        let dra_listener = listen(&name, &dra_socket)?;
        let dra = DraService { driver: driver.clone(), name: name.as_str().into() };
        let health = HealthService {
            driver,
            name: name.as_str().into(),
            resend: options.health_resend.max(Duration::from_millis(10)),
            timeout_seconds: options.health_timeout_seconds(),
            stop: stop_rx.clone(),
        };
        let routes = Routes::new(v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
            .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(dra))
            .add_service(DraResourceHealthServer::new(health))
            .prepare();
        let mut tasks = vec![tokio::spawn(accept_loop(dra_listener, routes, stop_rx.clone(), dra_socket.clone()))];
        tracing::info!(driver = %name, socket = %dra_socket.display(), "DRA plugin serving");

        let reg_listener = match listen(&name, &registration_socket) {
            Ok(l) => l,
            Err(e) => {
                let _ = stop.send(true);
                let _ = remove_socket(&name, &dra_socket);
                return Err(e);
            }
        };
        let info = options.plugin_info();
        let registration = RegistrationServer::new(RegistrationService { info: info.clone(), status: status.clone() });
        tasks.push(tokio::spawn(accept_loop(reg_listener, registration, stop_rx, registration_socket.clone())));
        tracing::info!(
            driver = %name,
            socket = %registration_socket.display(),
            endpoint = %info.endpoint,
            versions = ?info.supported_versions,
            "DRA plugin registration socket serving; waiting for the kubelet"
        );
        Ok(Plugin { driver_name: name, registration_socket, dra_socket, status, stop, tasks })
    }

    /// The kubelet accepted the plugin in its last notification.
    pub fn registered(&self) -> bool {
        self.status.borrow().registered
    }

    /// What the kubelet said last.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// Changes whenever the kubelet notifies the plugin.
    pub fn watch(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.subscribe()
    }

    /// The registration socket, as this process sees it.
    pub fn registration_socket(&self) -> &Path {
        &self.registration_socket
    }

    /// `dra.sock`, as this process sees it.
    pub fn dra_socket(&self) -> &Path {
        &self.dra_socket
    }

    /// Stops serving: removes the registration socket first (the kubelet deregisters the plugin
    /// and stops dialing it), ends the health streams, lets connections close (up to 5 s), then
    /// removes `dra.sock`. Both removals are tried; the first failure is returned.
    pub async fn shutdown(mut self) -> Result<(), DraPluginError> {
        let reg = remove_socket(&self.driver_name, &self.registration_socket);
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        for mut task in tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await.is_err() {
                tracing::warn!(driver = %self.driver_name, "DRA plugin server did not stop in time; aborting it");
                task.abort();
            }
        }
        let dra = remove_socket(&self.driver_name, &self.dra_socket);
        tracing::info!(driver = %self.driver_name, "DRA plugin stopped");
        reg.and(dra).map(|_| ())
    }
}

impl Drop for Plugin {
    /// Without [`Plugin::shutdown`], the servers still stop; the socket files stay (the next
    /// start replaces them).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves once the plugin stops (or its stop sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts connections until the plugin stops, then waits for them to close (each gets a
/// GOAWAY once its streams ended). Accept errors (out of file descriptors) are retried.
async fn accept_loop<S>(listener: UnixListener, service: S, mut stop: watch::Receiver<bool>, socket: PathBuf)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((io, _)) => {
                    connections.spawn(serve_connection(io, service.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %e, "DRA plugin: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one kubelet connection on hyper's HTTP/2 server, with the `:authority` fix
/// (module `authority`) and the HPACK dynamic table it relies on turned off.
async fn serve_connection<S>(io: UnixStream, service: S, mut stop: watch::Receiver<bool>)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let handler = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        tower::Service::call(&mut service.clone(), req)
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .header_table_size(0)
        .serve_connection(TokioIo::new(authority::LocalhostAuthority::new(io)), handler);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "DRA plugin connection ended with an error");
            }
        }
        () = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Rewrites the `:authority` of every request a client sends to `localhost`, in the HTTP/2
/// byte stream before `h2` parses it (see the module docs for why).
///
/// The server announces `SETTINGS_HEADER_TABLE_SIZE` 0, which grpc-go applies before its first
/// request (it waits for the server's SETTINGS before the connection is ready), so no header
/// block refers to an earlier one and each can be rewritten on its own: a literal `:authority`
/// field becomes `:authority: localhost` (as a literal of the same kind), everything else is
/// copied byte for byte. Only HEADERS and CONTINUATION frames are looked at; anything this does not
/// understand is passed through unchanged for `h2` to judge.
mod authority {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    const PREFACE_LEN: usize = 24;
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    /// The frame size every HTTP/2 peer accepts (the server announces no larger one).
    const MAX_FRAME: usize = 16_384;
    /// Header blocks larger than this are passed through as they are.
    const MAX_BLOCK: usize = 256 * 1024;
    /// `:authority: localhost`: literal without indexing, static name index 1, raw string.
    const LOCALHOST: &[u8] = b"\x01\x09localhost";
    /// The same, with incremental indexing: a client that indexed its `:authority` before it saw
    /// the size-0 setting (grpc-go never does) keeps its table's entry count in step with h2's.
    const LOCALHOST_INDEXED: &[u8] = b"\x41\x09localhost";

    /// A header block being collected (HEADERS, then CONTINUATIONs until END_HEADERS).
    struct Pending {
        stream_id: [u8; 4],
        end_stream: bool,
        priority: Option<[u8; 5]>,
        block: Vec<u8>,
        /// The frames as received, sent unchanged if the block cannot be rewritten.
        raw: Vec<u8>,
    }

    pub(super) struct LocalhostAuthority<T> {
        inner: T,
        /// Read from the client, not parsed yet.
        raw: Vec<u8>,
        /// Ready for the server, from `out_pos` on.
        out: Vec<u8>,
        out_pos: usize,
        preface_left: usize,
        /// Payload bytes of a frame that is passed through as it arrives.
        skip_left: usize,
        pending: Option<Pending>,
        /// Something was not understood: pass the rest of the connection through.
        passthrough: bool,
        eof: bool,
    }

    impl<T> LocalhostAuthority<T> {
        pub(super) fn new(inner: T) -> Self {
            LocalhostAuthority {
                inner,
                raw: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                preface_left: PREFACE_LEN,
                skip_left: 0,
                pending: None,
                passthrough: false,
                eof: false,
            }
        }

        fn give_up(&mut self) {
            self.passthrough = true;
            if let Some(p) = self.pending.take() {
                self.out.extend_from_slice(&p.raw);
            }
        }

        /// Moves what can be decided from `raw` to `out`.
        fn process(&mut self) {
            loop {
                if self.passthrough {
                    self.out.append(&mut self.raw);
                    return;
                }
                let through = if self.preface_left > 0 { &mut self.preface_left } else { &mut self.skip_left };
                if *through > 0 {
                    let n = (*through).min(self.raw.len());
                    *through -= n;
                    self.out.extend(self.raw.drain(..n));
                    if self.raw.is_empty() {
                        return;
                    }
                    continue;
                }
                if self.raw.len() < 9 {
                    return;
                }
                let len = usize::from(self.raw[0]) << 16 | usize::from(self.raw[1]) << 8 | usize::from(self.raw[2]);
                let kind = self.raw[3];
                if self.pending.is_some() && kind != CONTINUATION {
                    // A protocol error h2 reports; nothing to rewrite any more.
                    self.give_up();
                    continue;
                }
                if kind != HEADERS && kind != CONTINUATION {
                    self.out.extend(self.raw.drain(..9));
                    self.skip_left = len;
                    continue;
                }
                if len > MAX_BLOCK {
                    self.give_up();
                    continue;
                }
                if self.raw.len() < 9 + len {
                    return;
                }
                let frame: Vec<u8> = self.raw.drain(..9 + len).collect();
                self.header_frame(frame);
            }
        }

        fn header_frame(&mut self, frame: Vec<u8>) {
            let flags = frame[4];
            let mut stream_id = [0; 4];
            stream_id.copy_from_slice(&frame[5..9]);
            let mut pending = match self.pending.take() {
                Some(mut p) => {
                    let same = p.stream_id == stream_id;
                    p.block.extend_from_slice(&frame[9..]);
                    p.raw.extend_from_slice(&frame);
                    if !same || p.block.len() > MAX_BLOCK {
                        self.pending = Some(p);
                        self.give_up();
                        return;
                    }
                    p
                }
                None if frame[3] == CONTINUATION => {
                    // A CONTINUATION without a HEADERS: h2 reports it.
                    self.out.extend_from_slice(&frame);
                    self.give_up();
                    return;
                }
                None => {
                    let Some((priority, fragment)) = headers_fragment(flags, &frame[9..]) else {
                        self.out.extend_from_slice(&frame);
                        self.give_up();
                        return;
                    };
                    Pending {
                        stream_id,
                        end_stream: flags & END_STREAM != 0,
                        priority,
                        block: fragment.to_vec(),
                        raw: frame.clone(),
                    }
                }
            };
            if flags & END_HEADERS == 0 {
                self.pending = Some(pending);
                return;
            }
            match rewrite_block(&pending.block) {
                Some(block) => {
                    pending.block = block;
                    emit(&mut self.out, &pending);
                }
                None => self.out.append(&mut pending.raw),
            }
        }

        /// At the client's EOF: whatever is left goes through as it is.
        fn flush_all(&mut self) {
            self.give_up();
            self.out.append(&mut self.raw);
        }
    }

    /// Pure: a HEADERS payload's priority fields and header block fragment, without padding.
    fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
        let mut start = 0;
        let mut end = payload.len();
        if flags & PADDED != 0 {
            let pad = usize::from(*payload.first()?);
            start = 1;
            end = end.checked_sub(pad)?;
        }
        let priority = if flags & PRIORITY != 0 {
            let p: [u8; 5] = payload.get(start..start + 5)?.try_into().ok()?;
            start += 5;
            Some(p)
        } else {
            None
        };
        Some((priority, payload.get(start..end)?))
    }

    /// Writes a rewritten block as one HEADERS frame (END_HEADERS, no padding) and as many
    /// CONTINUATIONs as it needs.
    fn emit(out: &mut Vec<u8>, p: &Pending) {
        let prio_len = if p.priority.is_some() { 5 } else { 0 };
        let mut rest = &p.block[..];
        let mut first = true;
        loop {
            let room = if first { MAX_FRAME - prio_len } else { MAX_FRAME };
            let n = room.min(rest.len());
            let last = n == rest.len();
            let mut flags = if last { END_HEADERS } else { 0 };
            let mut len = n;
            if first {
                if p.end_stream {
                    flags |= END_STREAM;
                }
                if p.priority.is_some() {
                    flags |= PRIORITY;
                }
                len += prio_len;
            }
            // len <= MAX_FRAME fits 3 bytes.
            out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
            out.push(if first { HEADERS } else { CONTINUATION });
            out.push(flags);
            out.extend_from_slice(&p.stream_id);
            if let (true, Some(prio)) = (first, p.priority) {
                out.extend_from_slice(&prio);
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            first = false;
            if last {
                break;
            }
        }
    }

    /// Pure: an HPACK integer with an `n`-bit prefix at `pos`: its value and where it ends.
    fn hpack_int(buf: &[u8], pos: usize, n: u32) -> Option<(usize, usize)> {
        let max = (1usize << n) - 1;
        let mut value = usize::from(*buf.get(pos)?) & max;
        let mut pos = pos + 1;
        if value < max {
            return Some((value, pos));
        }
        let mut shift = 0;
        loop {
            let b = *buf.get(pos)?;
            pos += 1;
            value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
            if b & 0x80 == 0 {
                return Some((value, pos));
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
    }

    /// Pure: an HPACK string at `pos`: its bytes when not Huffman-coded, and where it ends.
    fn hpack_string(buf: &[u8], pos: usize) -> Option<(Option<&[u8]>, usize)> {
        let huffman = *buf.get(pos)? & 0x80 != 0;
        let (len, start) = hpack_int(buf, pos, 7)?;
        let end = start.checked_add(len)?;
        let bytes = buf.get(start..end)?;
        Some(((!huffman).then_some(bytes), end))
    }

    /// Pure: a header block (with no dynamic-table references) with every literal `:authority`
    /// replaced by `:authority: localhost`; `None` if it is not valid HPACK.
    pub(super) fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + LOCALHOST.len());
        let mut pos = 0;
        while pos < block.len() {
            let start = pos;
            let b = block[pos];
            if b & 0x80 != 0 {
                // Indexed field (static: `:authority` at 1 has an empty value; leave it).
                pos = hpack_int(block, pos, 7)?.1;
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                pos = hpack_int(block, pos, 5)?.1;
            } else {
                // Literal: with incremental indexing (01), without (0000), never indexed (0001).
                let indexing = b & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let (name_index, p) = hpack_int(block, pos, prefix)?;
                pos = p;
                let is_authority = if name_index == 0 {
                    let (name, p) = hpack_string(block, pos)?;
                    pos = p;
                    name == Some(b":authority".as_slice())
                } else {
                    name_index == 1
                };
                pos = hpack_string(block, pos)?.1;
                if is_authority {
                    out.extend_from_slice(if indexing { LOCALHOST_INDEXED } else { LOCALHOST });
                    continue;
                }
            }
            out.extend_from_slice(&block[start..pos]);
        }
        Some(out)
    }

    impl<T: AsyncRead + Unpin> AsyncRead for LocalhostAuthority<T> {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            loop {
                if this.out_pos < this.out.len() {
                    let n = buf.remaining().min(this.out.len() - this.out_pos);
                    buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                    this.out_pos += n;
                    if this.out_pos == this.out.len() {
                        this.out.clear();
                        this.out_pos = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                if this.eof {
                    return Poll::Ready(Ok(()));
                }
                if this.passthrough && this.raw.is_empty() {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                let mut chunk = [0u8; 8192];
                let mut read = ReadBuf::new(&mut chunk);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    this.eof = true;
                    this.flush_all();
                    continue;
                }
                this.raw.extend_from_slice(read.filled());
                this.process();
            }
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for LocalhostAuthority<T> {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn literal_authority_becomes_localhost_and_the_rest_is_kept() {
            // Size update 0; `:method: POST` (indexed 3); `:authority` literal without indexing,
            // name index 1, raw value "%2Fx"; `te: trailers` with a new raw name.
            let mut block = vec![0x20, 0x83, 0x01, 0x04];
            block.extend_from_slice(b"%2Fx");
            block.extend_from_slice(&[0x00, 0x02]);
            block.extend_from_slice(b"te");
            block.push(0x08);
            block.extend_from_slice(b"trailers");
            let out = rewrite_block(&block).expect("valid");
            let mut want = vec![0x20, 0x83];
            want.extend_from_slice(LOCALHOST);
            want.extend_from_slice(&block[8..]);
            assert_eq!(out, want);
        }

        #[test]
        fn huffman_and_new_name_authorities_are_replaced() {
            // With incremental indexing, Huffman value (bytes are not decoded).
            let block = [0x41, 0x83, 0xaa, 0xbb, 0xcc];
            assert_eq!(rewrite_block(&block).expect("valid"), LOCALHOST_INDEXED);
            // Never indexed, new raw name ":authority".
            let mut block = vec![0x10, 0x0a];
            block.extend_from_slice(b":authority");
            block.extend_from_slice(&[0x01, b'x']);
            assert_eq!(rewrite_block(&block).expect("valid"), LOCALHOST);
        }

        #[test]
        fn truncated_blocks_are_not_rewritten() {
            assert_eq!(rewrite_block(&[0x01, 0x05, b'a']), None);
            assert_eq!(rewrite_block(&[0xff]), None);
        }

        #[test]
        fn long_integers_decode() {
            // 1337 with a 5-bit prefix (RFC 7541 C.1.2).
            assert_eq!(hpack_int(&[0x1f, 0x9a, 0x0a], 0, 5), Some((1337, 3)));
            assert_eq!(hpack_int(&[0x0a], 0, 5), Some((10, 1)));
        }

        #[test]
        fn padded_priority_headers_lose_padding_keep_priority() {
            let payload = [2, 0, 0, 0, 3, 16, 0xaa, 0xbb, 0, 0];
            let (prio, frag) = headers_fragment(PADDED | PRIORITY, &payload).expect("valid");
            assert_eq!(prio, Some([0, 0, 0, 3, 16]));
            assert_eq!(frag, &[0xaa, 0xbb]);
            assert_eq!(headers_fragment(PADDED, &[9, 1]), None);
        }

        #[test]
        fn large_blocks_are_split_into_continuations() {
            let p = Pending {
                stream_id: [0, 0, 0, 1],
                end_stream: true,
                priority: None,
                block: vec![0x82; MAX_FRAME + 10],
                raw: Vec::new(),
            };
            let mut out = Vec::new();
            emit(&mut out, &p);
            assert_eq!(out.len(), 9 + MAX_FRAME + 9 + 10);
            assert_eq!(&out[..5], &[0x00, 0x40, 0x00, HEADERS, END_STREAM]);
            let second = &out[9 + MAX_FRAME..];
            assert_eq!(&second[..5], &[0, 0, 10, CONTINUATION, END_HEADERS]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PluginOptions {
        PluginOptions::new("vfio.nodeprep.io", Path::new("/host/var/lib/kubelet"))
    }

    #[test]
    fn sockets_and_endpoint() {
        let mut o = options();
        assert_eq!(
            o.registration_socket(),
            Path::new("/host/var/lib/kubelet/plugins_registry/vfio.nodeprep.io-reg.sock")
        );
        assert_eq!(o.dra_socket(), Path::new("/host/var/lib/kubelet/plugins/vfio.nodeprep.io/dra.sock"));
        assert_eq!(o.endpoint(), o.dra_socket());
        o.endpoint_path = Some("/var/lib/kubelet/plugins/vfio.nodeprep.io/dra.sock".into());
        let info = o.plugin_info();
        assert_eq!(info.endpoint, "/var/lib/kubelet/plugins/vfio.nodeprep.io/dra.sock");
        assert_eq!(info.r#type, "DRAPlugin");
        assert_eq!(info.supported_versions, ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1.DRAResourceHealth"]);
    }

    #[test]
    fn health_timeout_is_three_resends() {
        let mut o = options();
        assert_eq!(o.health_timeout_seconds(), 60);
        o.health_resend = Duration::from_millis(100);
        assert_eq!(o.health_timeout_seconds(), 1);
    }

    #[test]
    fn notifications_set_and_clear_the_error() {
        let mut s = RegistrationStatus::default();
        apply_notification(&mut s, &ApiRegistrationStatus { plugin_registered: false, error: "no".into() });
        assert_eq!(s, RegistrationStatus { registered: false, error: Some("no".into()), notifications: 1 });
        apply_notification(&mut s, &ApiRegistrationStatus { plugin_registered: true, error: String::new() });
        assert_eq!(s, RegistrationStatus { registered: true, error: None, notifications: 2 });
    }

    #[test]
    fn missing_results_become_errors() {
        let claims = vec![
            ClaimRef { namespace: "ns".into(), name: "a".into(), uid: "u1".into() },
            ClaimRef { namespace: "ns".into(), name: "b".into(), uid: "u2".into() },
        ];
        let got = complete(&claims, BTreeMap::from([("u1".to_owned(), Ok(()))]), "d");
        assert_eq!(got["u1"], Ok(()));
        assert!(got["u2"].as_ref().is_err_and(|e| e.contains("ns/b (u2)")), "{got:?}");
    }

    #[test]
    fn claims_without_uid_are_refused() {
        assert!(claim_refs([("ns", "a", "")].into_iter()).is_err());
        assert_eq!(
            claim_refs([("ns", "a", "u")].into_iter()).expect("valid"),
            [ClaimRef { namespace: "ns".into(), name: "a".into(), uid: "u".into() }]
        );
    }

    #[test]
    fn health_maps_every_state() {
        let d = |health| DeviceHealth { pool: "p".into(), device: "d".into(), health, message: "m".into() };
        let r = health_response(&[d(Health::Healthy), d(Health::Unhealthy), d(Health::Unknown)], 60, 42);
        let states: Vec<i32> = r.devices.iter().map(|d| d.health).collect();
        assert_eq!(
            states,
            [HealthStatus::Healthy as i32, HealthStatus::Unhealthy as i32, HealthStatus::Unknown as i32]
        );
        assert!(r.devices.iter().all(|d| d.last_updated_time == 42 && d.health_check_timeout_seconds == 60));
        assert_eq!(r.devices[0].device.as_ref().map(|i| (&*i.pool_name, &*i.device_name)), Some(("p", "d")));
    }
}
