//! One device plugin's gRPC server: the `DevicePlugin` service of one extended resource, served on
//! its unix socket in the kubelet's plugin directory.
//!
//! - `GetDevicePluginOptions`: `{pre_start_required: false, get_preferred_allocation_available:
//!   true}`.
//! - `ListAndWatch`: the full device list at once, then a new full list whenever *this*
//!   resource's list changes (changes of other resources are compared away). A counted
//!   resource's list is fixed; its devices are healthy when its device node (if any) exists on
//!   the host when the stream opens. When the plugin
//!   stops for good (SIGTERM) every open stream gets an empty list, then ends; when it restarts
//!   (the kubelet restarted) streams just end.
//! - `GetPreferredAllocation`: [`super::preferred`].
//! - `Allocate`: [`super::allocate`], reading the devices again from sysfs after the request
//!   arrived ([`Arrived`], stamped as the connection accepts the stream); requests that arrive
//!   together share those reads. A device whose IOMMU group another container holds (the
//!   kubelet's checkpoint in the socket's directory) is refused with `FAILED_PRECONDITION`.
//! - `PreStartContainer`: an empty answer (not required).
//!
//! The generated service runs straight on hyper's HTTP/2 server, one connection task per
//! kubelet connection: it is the only service on its socket, so tonic's router and server layers
//! would only add work to every Allocate. Stopping sends each connection a GOAWAY once its
//! streams have ended.
//!
//! The server records the `:authority` its clients send ([`PluginStatus::last_authority`]):
//! kubelets since Kubernetes 1.26 send `localhost`, older ones sent the socket path, which h2
//! (the HTTP/2 under hyper) refuses with `RST_STREAM(PROTOCOL_ERROR)` before any handler runs.
//! Kubernetes 1.26 is therefore the oldest kubelet nodeprep's plugins work with.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::allocate;
use super::api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use super::api::{
    self, AllocateRequest, AllocateResponse, ContainerPreferredAllocationResponse, DevicePluginOptions, Empty,
    ListAndWatchResponse, NumaNode, PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, TopologyInfo,
};
use super::cdi::CdiSpec;
use super::devices::{PluginDevice, ResourceDevices};
use super::manager::CountedResource;
use super::preferred::{Placement, preferred_allocation};
use crate::host::HostRoot;

/// Everything that can go wrong serving and registering device plugins.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    #[error("device plugin {resource}: remove stale socket {}: {source}", .path.display())]
    RemoveSocket {
        resource: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device plugin {resource}: listen on {}: {source}", .path.display())]
    Listen {
        resource: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("register {resource} with the kubelet at {}: cannot connect: {source}", .kubelet_socket.display())]
    Connect {
        resource: String,
        kubelet_socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("register {resource} with the kubelet at {}: refused: {}", .kubelet_socket.display(), status_text(.status))]
    Register { resource: String, kubelet_socket: PathBuf, status: Box<Status> },
    #[error("register {resource} with the kubelet at {}: no answer within {timeout:?}", .kubelet_socket.display())]
    RegisterTimeout { resource: String, kubelet_socket: PathBuf, timeout: Duration },
    #[error("device plugin directory {}: {source}", .path.display())]
    PluginDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watch device plugin directory {} with inotify: {source}", .path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device plugin resources refused: {0}")]
    Resources(String),
}

/// A gRPC status in one line: `Unavailable: connection refused`.
pub fn status_text(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// What one plugin is doing, for logs, health reports and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginStatus {
    pub resource_name: String,
    /// Its socket (absolute path).
    pub socket: PathBuf,
    /// Its server is running.
    pub serving: bool,
    /// The last `Register` with the kubelet succeeded (and no restart happened since).
    pub registered: bool,
    /// Successful registrations so far.
    pub registrations: u64,
    /// Times the server was started (1 + restarts).
    pub server_starts: u64,
    /// The last registration or serving problem.
    pub last_error: Option<String>,
    /// The `:authority` of the last request a client (the kubelet) sent this plugin.
    pub last_authority: Option<String>,
    /// `ListAndWatch` streams open now.
    pub open_streams: usize,
}

/// A plugin's status, shared by its server, its streams and the manager.
pub(crate) type SharedStatus = Arc<Mutex<PluginStatus>>;

pub(crate) fn lock(s: &SharedStatus) -> MutexGuard<'_, PluginStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a plugin's devices come from.
#[derive(Debug, Clone)]
pub enum DeviceSource {
    /// PCI devices: this resource's entry of the shared [`ResourceDevices`], recomputed by the
    /// event sources whenever the host changes; and the CDI spec its devices are named in, when
    /// CDI is configured.
    Pci(watch::Receiver<ResourceDevices>, Option<Arc<CdiSpec>>),
    /// N identical devices, optionally backed by one device node.
    Counted(CountedResource),
}

/// Whether the server is serving or stopping, watched by every `ListAndWatch` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Stopping; `send_empty`: tell the kubelet no device is left first (shutdown).
    Stopping {
        send_empty: bool,
    },
}

/// Pure: a device as the kubelet sees it.
pub fn api_device(d: &PluginDevice) -> api::Device {
    api::Device {
        id: d.id.clone(),
        health: if d.healthy { api::HEALTHY } else { api::UNHEALTHY }.to_owned(),
        topology: d.numa_node.map(|n| TopologyInfo { nodes: vec![NumaNode { id: i64::from(n) }] }),
    }
}

/// Pure: one resource's devices as the kubelet sees them; none when the resource has no entry.
pub fn api_devices(all: &ResourceDevices, resource_name: &str) -> Vec<api::Device> {
    all.get(resource_name).map(|v| v.iter().map(api_device).collect()).unwrap_or_default()
}

/// When a request reached the server: stamped by the server's first layer, as the connection
/// task accepts the stream, before the request waits for its turn to run.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

impl Arrived {
    /// The request's stamp; now, for a request that has none (called without the server).
    pub fn of<T>(req: &Request<T>) -> Instant {
        req.extensions().get::<Arrived>().map_or_else(Instant::now, |a| a.0)
    }
}

/// The `DevicePlugin` service of one resource.
#[derive(Debug, Clone)]
pub struct DevicePluginService {
    resource_name: Arc<str>,
    root: HostRoot,
    source: DeviceSource,
    phase: watch::Receiver<Phase>,
    status: SharedStatus,
    /// Allocate's sysfs reads, shared by requests that arrive together.
    reads: Arc<allocate::SharedReads>,
    /// The kubelet's plugin directory (the socket's): its checkpoint says who holds what.
    plugin_dir: PathBuf,
}

type ListStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

impl DevicePluginService {
    /// The devices as they are now.
    fn devices_now(&self) -> Vec<api::Device> {
        match &self.source {
            DeviceSource::Pci(rx, _) => api_devices(&rx.borrow(), &self.resource_name),
            DeviceSource::Counted(c) => self.counted_devices(c),
        }
    }

    fn counted_devices(&self, c: &CountedResource) -> Vec<api::Device> {
        let healthy = c.device_path.as_deref().is_none_or(|p| self.root.exists(p));
        let health = if healthy { api::HEALTHY } else { api::UNHEALTHY };
        c.device_ids().into_iter().map(|id| api::Device { id, health: health.to_owned(), topology: None }).collect()
    }

    /// Feeds one `ListAndWatch` stream until the kubelet hangs up or the server stops.
    async fn feed(self, tx: mpsc::Sender<Result<ListAndWatchResponse, Status>>) {
        let _open = OpenStream::new(&self.status);
        let name = &*self.resource_name;
        let mut phase = self.phase.clone();
        let mut devices = match &self.source {
            DeviceSource::Pci(rx, _) => Some(rx.clone()),
            DeviceSource::Counted(_) => None,
        };
        let mut last = match devices.as_mut() {
            Some(rx) => api_devices(&rx.borrow_and_update(), name),
            None => self.devices_now(),
        };
        tracing::debug!(resource = name, devices = last.len(), "ListAndWatch: initial list");
        if tx.send(Ok(ListAndWatchResponse { devices: last.clone() })).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                biased;
                stop = async { phase.wait_for(|p| *p != Phase::Serving).await.map(|p| *p) } => {
                    let send_empty = matches!(stop, Ok(Phase::Stopping { send_empty: true }));
                    if send_empty {
                        tracing::info!(resource = name, "ListAndWatch: shutting down, sending an empty list");
                        let _ = tx.send(Ok(ListAndWatchResponse { devices: Vec::new() })).await;
                    }
                    break;
                }
                _ = tx.closed() => {
                    tracing::debug!(resource = name, "ListAndWatch: the kubelet closed the stream");
                    break;
                }
                changed = async { devices.as_mut().expect("enabled only with a receiver").changed().await },
                    if devices.is_some() =>
                {
                    let Some(rx) = devices.as_mut().filter(|_| changed.is_ok()) else {
                        // The event sources are gone: keep the last list until the server stops.
                        devices = None;
                        continue;
                    };
                    let now = api_devices(&rx.borrow_and_update(), name);
                    if now != last {
                        tracing::info!(
                            resource = name,
                            devices = now.len(),
                            healthy = now.iter().filter(|d| d.health == api::HEALTHY).count(),
                            "ListAndWatch: devices changed, sending the new list"
                        );
                        if tx.send(Ok(ListAndWatchResponse { devices: now.clone() })).await.is_err() {
                            break;
                        }
                        last = now;
                    }
                }
            }
        }
    }

    fn placement(&self) -> impl Fn(&str) -> Placement + '_ {
        let current: Vec<PluginDevice> = match &self.source {
            DeviceSource::Pci(rx, _) => rx.borrow().get(&*self.resource_name).cloned().unwrap_or_default(),
            DeviceSource::Counted(_) => Vec::new(),
        };
        move |id| {
            current
                .iter()
                .find(|d| d.id == id)
                .map(|d| Placement { numa_node: d.numa_node, pf: d.physfn })
                .unwrap_or_default()
        }
    }
}

/// Counts an open stream for as long as it lives.
struct OpenStream(SharedStatus);

impl OpenStream {
    fn new(s: &SharedStatus) -> Self {
        lock(s).open_streams += 1;
        OpenStream(s.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.open_streams = s.open_streams.saturating_sub(1);
    }
}

#[tonic::async_trait]
impl DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(&self, _: Request<Empty>) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        tracing::info!(resource = &*self.resource_name, "ListAndWatch: the kubelet opened a stream");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().feed(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let placement = self.placement();
        let container_responses = request
            .get_ref()
            .container_requests
            .iter()
            .map(|c| {
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                let ids = preferred_allocation(&c.available_device_i_ds, &c.must_include_device_i_ds, size, &placement);
                ContainerPreferredAllocationResponse { device_i_ds: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, request: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        let arrived = Arrived::of(&request);
        let req = request.get_ref();
        let name = &*self.resource_name;
        let result = match &self.source {
            DeviceSource::Pci(rx, cdi) => {
                // The requested ids this plugin does not advertise: the request names a few ids,
                // the resource may have thousands, none of which is copied.
                let unknown: Vec<&str> = {
                    let devices = rx.borrow();
                    let list = devices.get(name).map(Vec::as_slice).unwrap_or_default();
                    req.container_requests
                        .iter()
                        .flat_map(|c| c.devices_ids.iter().map(String::as_str))
                        .filter(|id| !list.iter().any(|d| d.id == *id))
                        .collect()
                };
                let known = |id: &str| !unknown.contains(&id);
                // Group holders are checked once the ids are known to be this plugin's devices.
                allocate::allocate_pci_shared(
                    &self.root,
                    &self.reads,
                    arrived,
                    name,
                    known,
                    req,
                    cdi.as_deref(),
                    &self.plugin_dir,
                )
            }
            DeviceSource::Counted(c) => {
                let ids = c.device_ids();
                allocate::allocate_counted(
                    &self.root,
                    name,
                    c.device_path.as_deref(),
                    |id| ids.iter().any(|k| k == id),
                    req,
                )
            }
        };
        let ids: Vec<&str> =
            req.container_requests.iter().flat_map(|c| c.devices_ids.iter().map(String::as_str)).collect();
        match &result {
            Ok(_) => tracing::info!(resource = name, devices = ?ids, "Allocate"),
            Err(s) => tracing::warn!(resource = name, devices = ?ids, error = s.message(), "Allocate refused"),
        }
        result.map(Response::new)
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// A plugin's server while it runs.
pub(crate) struct RunningServer {
    phase: watch::Sender<Phase>,
    task: JoinHandle<io::Result<()>>,
}

type Service = DevicePluginServer<DevicePluginService>;

/// Accepts the kubelet's connections until the server stops, then waits for them to close (each
/// gets a GOAWAY once its streams ended). An accept error ends the server (the manager restarts
/// it).
async fn accept_loop(
    listener: UnixListener,
    service: Service,
    status: SharedStatus,
    mut phase: watch::Receiver<Phase>,
) -> io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            _ = stopping(&mut phase) => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((io, _)) => {
                    connections.spawn(serve_connection(io, service.clone(), status.clone(), phase.clone()));
                }
                Err(e) => break Err(e),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    while connections.join_next().await.is_some() {}
    result
}

/// Serves one connection: the `DevicePlugin` service straight on hyper's HTTP/2 server (the
/// only service on this socket: no router, no layers), each request stamped with when it
/// arrived ([`Arrived`]) and its `:authority` recorded.
async fn serve_connection(io: UnixStream, service: Service, status: SharedStatus, mut phase: watch::Receiver<Phase>) {
    let handler = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Arrived(Instant::now()));
        record_authority(&status, req.uri().authority());
        tower::Service::call(&mut service.clone(), req)
    });
    let conn =
        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "device plugin connection ended with an error");
            }
        }
        _ = stopping(&mut phase) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once the server is stopping (or its phase sender is gone).
async fn stopping(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Serving).await;
}

fn record_authority(status: &SharedStatus, authority: Option<&http::uri::Authority>) {
    let Some(a) = authority else { return };
    let mut s = lock(status);
    if s.last_authority.as_deref() != Some(a.as_str()) {
        tracing::debug!(resource = %s.resource_name, authority = a.as_str(), "kubelet request authority");
        s.last_authority = Some(a.as_str().to_owned());
    }
}

/// Starts serving one resource on `socket`: removes a stale socket file, binds (from then on the
/// socket accepts connections, before this returns), and serves on a spawned task.
pub(crate) fn serve(
    socket: &Path,
    resource_name: &str,
    root: &HostRoot,
    source: DeviceSource,
    status: &SharedStatus,
) -> Result<RunningServer, DevicePluginError> {
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::debug!(resource = resource_name, socket = %socket.display(), "removed stale socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DevicePluginError::RemoveSocket {
                resource: resource_name.to_owned(),
                path: socket.to_owned(),
                source,
            });
        }
    }
    let listener = UnixListener::bind(socket).map_err(|source| DevicePluginError::Listen {
        resource: resource_name.to_owned(),
        path: socket.to_owned(),
        source,
    })?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let service = DevicePluginService {
        resource_name: resource_name.into(),
        root: root.clone(),
        source,
        phase: phase_rx.clone(),
        status: status.clone(),
        reads: Arc::default(),
        plugin_dir: socket.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let task = tokio::spawn(accept_loop(listener, DevicePluginServer::new(service), status.clone(), phase_rx));
    {
        let mut s = lock(status);
        s.serving = true;
        s.server_starts += 1;
    }
    tracing::info!(resource = resource_name, socket = %socket.display(), "device plugin serving");
    Ok(RunningServer { phase: phase_tx, task })
}

impl RunningServer {
    /// The server task ended on its own (an error): it needs a restart.
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the server: open streams get an empty list first when `send_empty`, then end; the
    /// server waits up to `grace` for connections to close, then is aborted.
    pub(crate) async fn stop(mut self, send_empty: bool, grace: Duration) {
        let _ = self.phase.send(Phase::Stopping { send_empty });
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "device plugin server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "device plugin server task failed"),
            Err(_) => {
                tracing::warn!(?grace, "device plugin server did not stop in time; aborting it");
                self.task.abort();
            }
        }
    }
}
