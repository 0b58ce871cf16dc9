//! The DRA plugin's kubelet front (`nodeprep::dra::plugin`) with a scripted driver, over real unix
//! sockets in a temporary kubelet root, the test acting as the kubelet with the generated
//! clients: GetInfo, NotifyRegistrationStatus, NodePrepareResources and NodeUnprepareResources
//! over DRA v1 and v1beta1, the health stream, shutdown, stale sockets, and a GetInfo sent with
//! the percent-encoded socket path as `:authority`, as the kubelet's plugin watcher sends it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodeprep::deviceplugin::registration::connect_unix;
use nodeprep::dra::api::health::dra_resource_health_client::DraResourceHealthClient;
use nodeprep::dra::api::health::{HealthStatus, NodeWatchResourcesRequest, NodeWatchResourcesResponse};
use nodeprep::dra::api::registration::registration_client::RegistrationClient;
use nodeprep::dra::api::registration::{InfoRequest, PluginInfo, RegistrationStatus as ApiStatus};
use nodeprep::dra::api::{v1, v1beta1};
use nodeprep::dra::plugin::{DraPluginError, Plugin, PluginOptions, RegistrationStatus};
use nodeprep::dra::{ClaimRef, DeviceHealth, Driver, Health, PrepareResults, PreparedDevice, UnprepareResults};
use prost::Message;
use tokio::sync::watch;
use tonic::transport::Channel;

const DRIVER: &str = "vfio.nodeprep.io";
/// Upper bound for anything that should take milliseconds.
const WAIT: Duration = Duration::from_secs(5);

/// A driver with canned answers that records what it was asked.
struct TestDriver {
    calls: Mutex<Vec<(&'static str, Vec<ClaimRef>)>>,
    prepare: PrepareResults,
    unprepare: UnprepareResults,
    health: watch::Sender<Vec<DeviceHealth>>,
}

#[tonic::async_trait]
impl Driver for TestDriver {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        self.calls.lock().expect("calls").push(("prepare", claims));
        self.prepare.clone()
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        self.calls.lock().expect("calls").push(("unprepare", claims));
        self.unprepare.clone()
    }

    fn health(&self) -> watch::Receiver<Vec<DeviceHealth>> {
        self.health.subscribe()
    }
}

fn device(name: &str) -> PreparedDevice {
    PreparedDevice {
        requests: vec!["gpu".into()],
        pool: "node-a".into(),
        device: name.into(),
        cdi_ids: vec![format!("vfio.nodeprep.io/vfio={name}")],
    }
}

fn health(device: &str, health: Health, message: &str) -> DeviceHealth {
    DeviceHealth { pool: "node-a".into(), device: device.into(), health, message: message.into() }
}

/// u1 prepares to one device, u2 fails; the driver says nothing about u3.
fn driver() -> Arc<TestDriver> {
    Arc::new(TestDriver {
        calls: Mutex::default(),
        prepare: BTreeMap::from([
            ("u1".to_owned(), Ok(vec![device("group-12")])),
            ("u2".to_owned(), Err("group 13 is busy".to_owned())),
        ]),
        unprepare: BTreeMap::from([("u1".to_owned(), Ok(())), ("u2".to_owned(), Err("unbind failed".to_owned()))]),
        health: watch::channel(vec![health("group-12", Health::Healthy, "")]).0,
    })
}

fn claims() -> Vec<ClaimRef> {
    ["u1", "u2", "u3"]
        .iter()
        .enumerate()
        .map(|(i, uid)| ClaimRef { namespace: "vms".into(), name: format!("claim-{i}"), uid: (*uid).into() })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    driver: Arc<TestDriver>,
    plugin: Plugin,
}

fn options(root: &Path) -> PluginOptions {
    let mut o = PluginOptions::new(DRIVER, root);
    o.health_resend = Duration::from_millis(300);
    o
}

async fn start_with(o: impl FnOnce(&mut PluginOptions)) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("kubelet");
    let driver = driver();
    let mut opts = options(&root);
    o(&mut opts);
    let plugin = Plugin::start(opts, driver.clone()).await.expect("start the plugin");
    Setup { _dir: dir, root, driver, plugin }
}

async fn start() -> Setup {
    start_with(|_| {}).await
}

impl Setup {
    fn reg_socket(&self) -> PathBuf {
        self.root.join("plugins_registry").join(format!("{DRIVER}-reg.sock"))
    }

    fn dra_socket(&self) -> PathBuf {
        self.root.join("plugins").join(DRIVER).join("dra.sock")
    }

    async fn channel(socket: &Path) -> Channel {
        connect_unix(socket).await.expect("dial")
    }

    async fn registration(&self) -> RegistrationClient<Channel> {
        RegistrationClient::new(Self::channel(&self.reg_socket()).await)
    }

    async fn get_info(&self) -> PluginInfo {
        self.registration().await.get_info(InfoRequest {}).await.expect("GetInfo").into_inner()
    }

    fn calls(&self) -> Vec<(&'static str, Vec<ClaimRef>)> {
        self.driver.calls.lock().expect("calls").clone()
    }
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[tokio::test]
async fn get_info_names_the_plugin_its_endpoint_and_versions() {
    let s = start().await;
    assert_eq!(s.plugin.registration_socket(), s.reg_socket());
    assert_eq!(s.plugin.dra_socket(), s.dra_socket());
    assert!(is_socket(&s.reg_socket()) && is_socket(&s.dra_socket()));
    let info = s.get_info().await;
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(Path::new(&info.endpoint), s.dra_socket(), "endpoint defaults to the socket");
    // v1 first: the kubelet takes the first it knows; the health service only when listed.
    assert_eq!(info.supported_versions, ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1.DRAResourceHealth"]);
    s.plugin.shutdown().await.expect("shutdown");

    // The agent sees the host under a prefix; the kubelet must get the host's path.
    let s = start_with(|o| o.endpoint_path = Some("/var/lib/kubelet/plugins/vfio.nodeprep.io/dra.sock".into())).await;
    assert_eq!(s.get_info().await.endpoint, "/var/lib/kubelet/plugins/vfio.nodeprep.io/dra.sock");
    assert!(is_socket(&s.dra_socket()), "the socket stays where this process sees it");
    s.plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn registration_status_follows_the_kubelets_notifications() {
    let s = start().await;
    let mut watch = s.plugin.watch();
    assert_eq!(s.plugin.status(), RegistrationStatus::default());
    assert!(!s.plugin.registered());
    let mut client = s.registration().await;

    client
        .notify_registration_status(ApiStatus { plugin_registered: false, error: "version mismatch".into() })
        .await
        .expect("notify");
    tokio::time::timeout(WAIT, watch.changed()).await.expect("status changes").expect("sender alive");
    assert!(!s.plugin.registered());
    assert_eq!(
        s.plugin.status(),
        RegistrationStatus { registered: false, error: Some("version mismatch".into()), notifications: 1 }
    );

    client
        .notify_registration_status(ApiStatus { plugin_registered: true, error: String::new() })
        .await
        .expect("notify");
    tokio::time::timeout(WAIT, watch.changed()).await.expect("status changes").expect("sender alive");
    assert!(s.plugin.registered());
    assert_eq!(s.plugin.status(), RegistrationStatus { registered: true, error: None, notifications: 2 });
    s.plugin.shutdown().await.expect("shutdown");
}

fn v1_claims() -> Vec<v1::Claim> {
    claims().into_iter().map(|c| v1::Claim { namespace: c.namespace, uid: c.uid, name: c.name }).collect()
}

fn v1beta1_claims() -> Vec<v1beta1::Claim> {
    claims().into_iter().map(|c| v1beta1::Claim { namespace: c.namespace, uid: c.uid, name: c.name }).collect()
}

#[tokio::test]
async fn prepare_and_unprepare_over_v1() {
    let s = start().await;
    let mut client = v1::dra_plugin_client::DraPluginClient::new(Setup::channel(&s.dra_socket()).await);

    let resp = client
        .node_prepare_resources(v1::NodePrepareResourcesRequest { claims: v1_claims() })
        .await
        .expect("NodePrepareResources")
        .into_inner();
    assert_eq!(s.calls(), [("prepare", claims())]);
    let mut uids: Vec<&String> = resp.claims.keys().collect();
    uids.sort();
    assert_eq!(uids, ["u1", "u2", "u3"]);
    assert_eq!(
        resp.claims["u1"],
        v1::NodePrepareResourceResponse {
            devices: vec![v1::Device {
                request_names: vec!["gpu".into()],
                pool_name: "node-a".into(),
                device_name: "group-12".into(),
                cdi_device_ids: vec!["vfio.nodeprep.io/vfio=group-12".into()],
                share_id: None,
            }],
            error: String::new(),
        }
    );
    assert_eq!(
        resp.claims["u2"],
        v1::NodePrepareResourceResponse { devices: vec![], error: "group 13 is busy".into() }
    );
    assert!(resp.claims["u3"].devices.is_empty());
    assert!(resp.claims["u3"].error.contains("no result for claim vms/claim-2 (u3)"), "{:?}", resp.claims["u3"]);

    let resp = client
        .node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims: v1_claims() })
        .await
        .expect("NodeUnprepareResources")
        .into_inner();
    assert_eq!(s.calls()[1], ("unprepare", claims()));
    assert_eq!(resp.claims["u1"].error, "");
    assert_eq!(resp.claims["u2"].error, "unbind failed");
    assert!(resp.claims["u3"].error.contains("no result"), "{:?}", resp.claims["u3"]);
    assert_eq!(resp.claims.len(), 3);

    // A claim without a UID cannot be answered (the answer is keyed by UID).
    let err = client
        .node_prepare_resources(v1::NodePrepareResourcesRequest {
            claims: vec![v1::Claim { namespace: "vms".into(), uid: String::new(), name: "x".into() }],
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(s.calls().len(), 2, "the driver is not asked");
    s.plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn prepare_and_unprepare_over_v1beta1() {
    let s = start().await;
    let mut client = v1beta1::dra_plugin_client::DraPluginClient::new(Setup::channel(&s.dra_socket()).await);

    let resp = client
        .node_prepare_resources(v1beta1::NodePrepareResourcesRequest { claims: v1beta1_claims() })
        .await
        .expect("NodePrepareResources")
        .into_inner();
    assert_eq!(s.calls(), [("prepare", claims())]);
    assert_eq!(
        resp.claims["u1"].devices,
        [v1beta1::Device {
            request_names: vec!["gpu".into()],
            pool_name: "node-a".into(),
            device_name: "group-12".into(),
            cdi_device_ids: vec!["vfio.nodeprep.io/vfio=group-12".into()],
        }]
    );
    assert_eq!(resp.claims["u1"].error, "");
    assert_eq!(resp.claims["u2"].error, "group 13 is busy");
    assert!(resp.claims["u2"].devices.is_empty());
    assert!(resp.claims["u3"].error.contains("no result"), "{:?}", resp.claims["u3"]);

    let resp = client
        .node_unprepare_resources(v1beta1::NodeUnprepareResourcesRequest { claims: v1beta1_claims() })
        .await
        .expect("NodeUnprepareResources")
        .into_inner();
    assert_eq!(s.calls()[1], ("unprepare", claims()));
    assert_eq!(resp.claims["u1"].error, "");
    assert_eq!(resp.claims["u2"].error, "unbind failed");
    assert_eq!(resp.claims.len(), 3);
    s.plugin.shutdown().await.expect("shutdown");
}

async fn next(stream: &mut tonic::Streaming<NodeWatchResourcesResponse>) -> Option<NodeWatchResourcesResponse> {
    tokio::time::timeout(WAIT, stream.message()).await.expect("a message in time").expect("stream ok")
}

/// (pool, device, health, message) of a health message.
fn summary(r: &NodeWatchResourcesResponse) -> Vec<(String, String, i32, String)> {
    r.devices
        .iter()
        .map(|d| {
            let id = d.device.clone().unwrap_or_default();
            (id.pool_name, id.device_name, d.health, d.message.clone())
        })
        .collect()
}

#[tokio::test]
async fn health_stream_sends_the_list_each_change_and_periodically() {
    let s = start().await;
    let mut client = DraResourceHealthClient::new(Setup::channel(&s.dra_socket()).await);
    let mut stream = client.node_watch_resources(NodeWatchResourcesRequest {}).await.expect("watch").into_inner();
    let first = next(&mut stream).await.expect("initial list");
    assert_eq!(summary(&first), [("node-a".into(), "group-12".into(), HealthStatus::Healthy as i32, String::new())]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let stamp = u64::try_from(first.devices[0].last_updated_time).expect("positive");
    assert!(now.abs_diff(stamp) <= 2, "last_updated_time {stamp} is now ({now})");
    // Three resend periods (3 x 300 ms), rounded up to whole seconds.
    assert_eq!(first.devices[0].health_check_timeout_seconds, 1);

    s.driver.health.send_replace(vec![
        health("group-12", Health::Unhealthy, "device gone from vfio-pci"),
        health("group-13", Health::Unknown, ""),
    ]);
    let changed = next(&mut stream).await.expect("update");
    assert_eq!(
        summary(&changed),
        [
            ("node-a".into(), "group-12".into(), HealthStatus::Unhealthy as i32, "device gone from vfio-pci".into()),
            ("node-a".into(), "group-13".into(), HealthStatus::Unknown as i32, String::new()),
        ]
    );

    // Nothing changes: the list comes again before the kubelet's timeout would make it Unknown.
    let started = Instant::now();
    let again = next(&mut stream).await.expect("repeat");
    assert_eq!(summary(&again), summary(&changed));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "repeated after {waited:?}");

    // Shutdown ends the stream.
    s.plugin.shutdown().await.expect("shutdown");
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

#[tokio::test]
async fn shutdown_removes_both_sockets() {
    let s = start().await;
    let (reg, dra) = (s.reg_socket(), s.dra_socket());
    assert!(is_socket(&reg) && is_socket(&dra));
    // A connection the kubelet keeps open does not hold the shutdown up.
    let _open = s.registration().await;
    tokio::time::timeout(WAIT, s.plugin.shutdown()).await.expect("in time").expect("shutdown");
    assert!(!reg.exists(), "registration socket removed");
    assert!(!dra.exists(), "dra.sock removed");
    assert!(connect_unix(&dra).await.is_err(), "nothing serves any more");
}

#[tokio::test]
async fn stale_socket_files_are_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("kubelet");
    let o = options(&root);
    // What a crashed agent leaves: socket files nobody listens on.
    std::fs::create_dir_all(&o.plugin_dir).expect("mkdir");
    std::fs::create_dir_all(&o.registry_dir).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(o.dra_socket()).expect("bind stale"));
    drop(std::os::unix::net::UnixListener::bind(o.registration_socket()).expect("bind stale"));
    assert!(is_socket(&o.dra_socket()) && connect_unix(&o.dra_socket()).await.is_err(), "stale");

    let plugin = Plugin::start(o.clone(), driver()).await.expect("start over stale sockets");
    let info = RegistrationClient::new(connect_unix(&o.registration_socket()).await.expect("dial"))
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.name, DRIVER);
    let mut dra = v1::dra_plugin_client::DraPluginClient::new(connect_unix(&o.dra_socket()).await.expect("dial"));
    dra.node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims: vec![] }).await.expect("served");
    plugin.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failed_start_leaves_no_socket_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(&dir.path().join("kubelet"));
    // Something that is not a socket and cannot be removed as one sits where the registration
    // socket goes.
    std::fs::create_dir_all(o.registration_socket().join("x")).expect("mkdir");
    let err = Plugin::start(o.clone(), driver()).await.expect_err("cannot create the registration socket");
    assert!(matches!(err, DraPluginError::RemoveSocket { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("remove socket") && msg.contains(&*o.registration_socket().to_string_lossy()), "{msg}");
    assert!(!o.dra_socket().exists(), "dra.sock is removed again");

    let err = Plugin::start(PluginOptions::new("a/b", dir.path()), driver()).await.expect_err("bad name");
    assert!(matches!(err, DraPluginError::DriverName(_)), "{err:?}");
}

// -------------------------------------------------------------------------------------------
// The plugin watcher's `:authority`.

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal without indexing with a static name index under 15 and a raw value.
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut v = vec![name_index, u8::try_from(value.len()).expect("under 127")];
    v.extend_from_slice(value.as_bytes());
    v
}

/// Sends GetInfo the way grpc-go does when dialed by a bare socket path, with a dynamic table
/// size of 0 (what the plugin announces): `:authority` is the percent-encoded path. Returns the
/// PluginInfo, or what went wrong (h2 refuses such an authority with RST_STREAM).
fn get_info_with_path_authority(socket: &Path) -> Result<PluginInfo, String> {
    let mut io = std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("dial: {e}"))?;
    io.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let authority = socket.to_string_lossy().replace('/', "%2F");
    let mut block = vec![0x20, 0x83, 0x86]; // size update 0, :method POST, :scheme http
    block.extend(literal(4, "/pluginregistration.Registration/GetInfo")); // :path
    block.extend(literal(1, &authority)); // :authority
    block.extend(vec![0x0f, 0x10, 16]); // content-type (31): application/grpc
    block.extend_from_slice(b"application/grpc");
    block.extend(vec![0x00, 2, b't', b'e', 8]);
    block.extend_from_slice(b"trailers");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[])); // SETTINGS
    out.extend(frame(1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA: an empty InfoRequest, END_STREAM
    io.write_all(&out).map_err(|e| format!("write: {e}"))?;

    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).map_err(|e| format!("read: {e}"))?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match (head[3], stream) {
            (4, 0) if head[4] & 1 == 0 => io.write_all(&frame(4, 1, 0, &[])).map_err(|e| e.to_string())?,
            (3, 1) => return Err(format!("RST_STREAM {payload:?}")),
            (7, _) => return Err(format!("GOAWAY {payload:?}")),
            (0, 1) => data.extend_from_slice(&payload),
            (1, 1) if head[4] & 1 != 0 => break, // trailers
            _ => {}
        }
    }
    let message = data.get(5..).ok_or_else(|| format!("no message in {data:?}"))?;
    PluginInfo::decode(message).map_err(|e| format!("decode: {e}"))
}

#[tokio::test]
async fn get_info_works_with_the_plugin_watchers_path_authority() {
    let s = start().await;
    let socket = s.reg_socket();
    let info = tokio::task::spawn_blocking(move || get_info_with_path_authority(&socket)).await.expect("join");
    let info = info.expect("GetInfo with the socket path as :authority");
    assert_eq!(info.name, DRIVER);
    assert_eq!(Path::new(&info.endpoint), s.dra_socket());
    s.plugin.shutdown().await.expect("shutdown");
}
