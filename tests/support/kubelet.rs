//! A kubelet stand-in for device-plugin tests and benchmarks, over real unix sockets.
//!
//! It does what the kubelet's device manager does, in the same order:
//! - serves `Registration` on `<dir>/kubelet.sock`;
//! - on `Register`: checks version `v1beta1`, that the endpoint is a bare file name of a socket in
//!   the directory and that the resource name has a domain; dials the plugin's socket with
//!   `:authority` `localhost` (as kubelets do since 1.26, 10 s timeout), calls
//!   `GetDevicePluginOptions` before answering, then opens `ListAndWatch` and records every list
//!   with the time it arrived;
//! - when a stream ends, disconnects whichever client is registered for its resource at that
//!   moment, as the kubelet's `runClient` does ([`Record::disconnects`]);
//! - [`Kubelet::restart`]: dies (its server and streams go away), deletes every file in the
//!   directory but the checkpoint, and recreates `kubelet.sock`.
//!
//! It records the `:authority` of every `Register` request a plugin sends it (a tower layer reads
//! the request URI before tonic drops it).
//!
//! Everything it spawns runs on the runtime it was started on, so a benchmark can run it on a
//! thread of its own, the way a real kubelet is a process of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use nodeprep::deviceplugin::api::device_plugin_client::DevicePluginClient;
use nodeprep::deviceplugin::api::registration_server::{Registration, RegistrationServer};
use nodeprep::deviceplugin::api::{Device, DevicePluginOptions, Empty, RegisterRequest};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// The kubelet's registration socket.
pub const KUBELET_SOCK: &str = "kubelet.sock";
/// The kubelet's checkpoint, which survives its restarts.
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";

/// Writes a device-manager checkpoint in `dir` (created), in the kubelet's layout, giving `ids`
/// of `resource` to container `compute` of pod `pod`.
pub fn write_checkpoint(dir: &Path, pod: &str, resource: &str, ids: &[&str]) {
    let ids: Vec<String> = ids.iter().map(|i| format!("{i:?}")).collect();
    std::fs::create_dir_all(dir).expect("plugin dir");
    std::fs::write(
        dir.join(CHECKPOINT),
        format!(
            r#"{{"Data":{{"PodDeviceEntries":[{{"PodUID":"{pod}","ContainerName":"compute","ResourceName":"{resource}","DeviceIDs":{{"0":[{}]}},"AllocResp":"CgA="}}],"RegisteredDevices":{{"{resource}":[{}]}}}},"Checksum":2412157329}}"#,
            ids.join(","),
            ids.join(",")
        ),
    )
    .expect("write checkpoint");
}

/// One `Register` the stand-in accepted.
#[derive(Debug, Clone)]
pub struct Registered {
    pub at: Instant,
    /// Which incarnation of the kubelet took it: 0, then +1 per restart.
    pub generation: u64,
    pub request: RegisterRequest,
    /// The `:authority` the plugin sent.
    pub authority: Option<String>,
    /// What the plugin answered to `GetDevicePluginOptions` during the registration.
    pub options: DevicePluginOptions,
    /// The `ListAndWatch` stream opened for it.
    pub stream: u64,
}

/// One list received on a `ListAndWatch` stream.
#[derive(Debug, Clone)]
pub struct ListUpdate {
    pub at: Instant,
    pub resource: String,
    /// The stream it came on (a new stream per registration).
    pub stream: u64,
    pub devices: Vec<Device>,
}

/// A `ListAndWatch` stream that ended: cleanly (`Ok`) or with a status.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub at: Instant,
    pub resource: String,
    pub stream: u64,
    pub result: Result<(), String>,
}

/// Everything the stand-in saw.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub registrations: Vec<Registered>,
    /// `Register` requests it refused, with why.
    pub refused: Vec<String>,
    pub updates: Vec<ListUpdate>,
    pub ends: Vec<StreamEnd>,
    /// When each incarnation's `kubelet.sock` was created.
    pub sock_created: Vec<Instant>,
    /// Clients disconnected because *some* stream of their resource ended: (resource, the
    /// disconnected client's stream). The kubelet does this (`runClient`): when a stream ends it
    /// disconnects whichever client is registered for the resource at that moment, which is the
    /// new one if a plugin re-registered before its old stream ended.
    pub disconnects: Vec<(String, u64)>,
}

impl Record {
    /// The lists received for one resource, in order.
    pub fn lists(&self, resource: &str) -> Vec<&ListUpdate> {
        self.updates.iter().filter(|u| u.resource == resource).collect()
    }

    /// The registrations of one resource, in order.
    pub fn registrations_of(&self, resource: &str) -> Vec<Registered> {
        self.registrations.iter().filter(|r| r.request.resource_name == resource).cloned().collect()
    }
}

struct RunningServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

struct Inner {
    dir: PathBuf,
    rt: Handle,
    record: Mutex<Record>,
    changed: Notify,
    generation: AtomicU64,
    next_stream: AtomicU64,
    /// How many more `Register` requests to refuse (as a kubelet that is not ready yet).
    refuse: AtomicU64,
    /// The refusal's status instead of `UNAVAILABLE` "not ready".
    refuse_as: Mutex<Option<Status>>,
    server: Mutex<Option<RunningServer>>,
    /// The registered client of each resource: its stream and the task reading it.
    clients: Mutex<std::collections::HashMap<String, (u64, JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stand-in. Cheap to clone; every clone is the same kubelet.
#[derive(Clone)]
pub struct Kubelet {
    inner: Arc<Inner>,
}

/// The `:authority` of a request, carried from the tower layer to the handler.
#[derive(Clone)]
struct SeenAuthority(String);

/// Dials a unix socket the way the kubelet does since 1.26: `:authority` `localhost`.
pub async fn dial(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

impl Kubelet {
    /// Starts serving `Registration` on `<dir>/kubelet.sock`, on the current runtime.
    pub async fn start(dir: &Path) -> Kubelet {
        std::fs::create_dir_all(dir).expect("create plugin dir");
        let k = Kubelet {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                rt: Handle::current(),
                record: Mutex::default(),
                changed: Notify::new(),
                generation: AtomicU64::new(0),
                next_stream: AtomicU64::new(0),
                refuse: AtomicU64::new(0),
                refuse_as: Mutex::new(None),
                server: Mutex::new(None),
                clients: Mutex::default(),
            }),
        };
        k.serve();
        k
    }

    /// The plugin directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The runtime the stand-in runs on (to spawn load next to it in benchmarks).
    pub fn handle(&self) -> &Handle {
        &self.inner.rt
    }

    /// Which incarnation is running: 0, then +1 per restart.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// A copy of everything recorded so far.
    pub fn record(&self) -> Record {
        lock(&self.inner.record).clone()
    }

    /// Looks at the record without copying it (keep `f` short: the stand-in waits meanwhile).
    pub fn with_record<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&lock(&self.inner.record))
    }

    fn note(&self, f: impl FnOnce(&mut Record)) {
        f(&mut lock(&self.inner.record));
        self.inner.changed.notify_waiters();
    }

    /// Waits until `f` finds what it looks for in the record; panics after `timeout` with `what`
    /// and the record.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Record) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(&lock(&self.inner.record)) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out after {timeout:?} waiting for {what}; recorded: {:#?}", self.record());
            }
        }
    }

    /// Binds `kubelet.sock` and serves `Registration` (on the stand-in's runtime).
    fn serve(&self) {
        let _rt = self.inner.rt.enter();
        let sock = self.inner.dir.join(KUBELET_SOCK);
        let listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("bind {}: {e}", sock.display()));
        let created = Instant::now();
        self.note(|r| r.sock_created.push(created));
        let layer = tower::util::MapRequestLayer::new(|mut req: http::Request<tonic::body::Body>| {
            if let Some(a) = req.uri().authority().map(|a| a.as_str().to_owned()) {
                req.extensions_mut().insert(SeenAuthority(a));
            }
            req
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(RegistrationServer::new(self.clone()))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        *lock(&self.inner.server) = Some(RunningServer { stop, task });
    }

    /// Dies like a kubelet: the registration server and every stream go away at once.
    fn die(&self) {
        if let Some(s) = lock(&self.inner.server).take() {
            let _ = s.stop.send(());
            s.task.abort();
        }
        for (_, (_, t)) in lock(&self.inner.clients).drain() {
            t.abort();
        }
    }

    /// Restarts like a kubelet: dies, deletes every file in the directory but the checkpoint
    /// (plugin sockets included), recreates `kubelet.sock`. Returns when it was created.
    pub async fn restart(&self) -> Instant {
        let k = self.clone();
        self.inner
            .rt
            .spawn(async move {
                k.die();
                for entry in std::fs::read_dir(&k.inner.dir).expect("read plugin dir") {
                    let entry = entry.expect("dir entry");
                    if entry.file_name() == CHECKPOINT || entry.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    std::fs::remove_file(entry.path()).expect("remove socket");
                }
                k.inner.generation.fetch_add(1, Ordering::SeqCst);
                k.serve();
                *lock(&k.inner.record).sock_created.last().expect("created")
            })
            .await
            .expect("restart task")
    }

    /// Refuses the next `n` registrations with `UNAVAILABLE` (recorded in [`Record::refused`]).
    pub fn refuse_next(&self, n: u64) {
        *lock(&self.inner.refuse_as) = None;
        self.inner.refuse.store(n, Ordering::SeqCst);
    }

    /// Refuses the next `n` registrations with `status` (e.g. what kubelet 1.37 answers a second
    /// `Register` on a socket it has connected: `device plugin already connected: <path>`).
    pub fn refuse_next_as(&self, n: u64, status: Status) {
        *lock(&self.inner.refuse_as) = Some(status);
        self.inner.refuse.store(n, Ordering::SeqCst);
    }

    /// Stops for good (sockets stay, like a crashed kubelet's).
    pub fn stop(&self) {
        self.die();
    }

    /// A client to a registered plugin's socket, dialed like the kubelet dials it.
    pub async fn client(&self, resource: &str) -> DevicePluginClient<Channel> {
        let endpoint = {
            let r = lock(&self.inner.record);
            r.registrations_of(resource)
                .last()
                .unwrap_or_else(|| panic!("{resource} never registered"))
                .request
                .endpoint
                .clone()
        };
        let channel = dial(&self.inner.dir.join(endpoint)).await.expect("dial plugin");
        DevicePluginClient::new(channel)
    }

    fn check(&self, r: &RegisterRequest) -> Result<(), String> {
        if r.version != "v1beta1" {
            return Err(format!("version {:?} is not v1beta1", r.version));
        }
        if r.endpoint.is_empty() || r.endpoint.contains('/') {
            return Err(format!("endpoint {:?} is not a file name", r.endpoint));
        }
        let path = self.inner.dir.join(&r.endpoint);
        use std::os::unix::fs::FileTypeExt;
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            return Err(format!("endpoint {} is not a socket", path.display()));
        }
        match r.resource_name.split_once('/') {
            Some((domain, name)) if domain.contains('.') && !name.is_empty() && !domain.ends_with("kubernetes.io") => {
                Ok(())
            }
            _ => Err(format!("resource name {:?} is not an extended resource name", r.resource_name)),
        }
    }

    /// Reads one plugin's `ListAndWatch` stream until it ends.
    async fn consume(self, mut client: DevicePluginClient<Channel>, resource: String, stream: u64) {
        let result = async {
            let mut s = client.list_and_watch(Empty {}).await?.into_inner();
            while let Some(m) = s.message().await? {
                let at = Instant::now();
                let resource = resource.clone();
                self.note(|r| r.updates.push(ListUpdate { at, resource, stream, devices: m.devices }));
            }
            Ok::<(), Status>(())
        }
        .await;
        let at = Instant::now();
        let result = result.map_err(|s| format!("{:?}: {}", s.code(), s.message()));
        // Like the kubelet's runClient: disconnect whichever client the resource has now.
        let current = lock(&self.inner.clients).remove(&resource);
        let disconnected = current.map(|(s, task)| {
            if s != stream {
                task.abort();
            }
            s
        });
        self.note(|r| {
            r.ends.push(StreamEnd { at, resource: resource.clone(), stream, result });
            if let Some(s) = disconnected {
                r.disconnects.push((resource, s));
            }
        });
    }
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let at = Instant::now();
        let generation = self.generation();
        let authority = request.extensions().get::<SeenAuthority>().map(|a| a.0.clone());
        let req = request.into_inner();
        if self.inner.refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            if let Some(st) = lock(&self.inner.refuse_as).clone() {
                self.note(|r| r.refused.push(st.message().to_owned()));
                return Err(st);
            }
            let why = format!("{}: not ready (refused on purpose)", req.resource_name);
            self.note(|r| r.refused.push(why.clone()));
            return Err(Status::unavailable(why));
        }
        if let Err(why) = self.check(&req) {
            self.note(|r| r.refused.push(why.clone()));
            return Err(Status::invalid_argument(why));
        }
        // Dial back and ask for the options before answering, like the kubelet.
        let socket = self.inner.dir.join(&req.endpoint);
        let mut client = match tokio::time::timeout(Duration::from_secs(10), dial(&socket)).await {
            Ok(Ok(c)) => DevicePluginClient::new(c),
            Ok(Err(e)) => return Err(Status::unavailable(format!("dial {}: {e}", socket.display()))),
            Err(_) => return Err(Status::unavailable(format!("dial {}: timed out", socket.display()))),
        };
        let options = client.get_device_plugin_options(Empty {}).await?.into_inner();
        let stream = self.inner.next_stream.fetch_add(1, Ordering::SeqCst);
        let resource = req.resource_name.clone();
        self.note(|r| r.registrations.push(Registered { at, generation, request: req, authority, options, stream }));
        // The new client replaces the old one without stopping it (the kubelet's registerClient).
        let mut clients = lock(&self.inner.clients);
        let task = tokio::spawn(self.clone().consume(client, resource.clone(), stream));
        clients.insert(resource, (stream, task));
        Ok(Response::new(Empty {}))
    }
}
