//! A real Kubernetes cluster for end-to-end tests: the upstream etcd, kube-apiserver, kubelet,
//! kube-scheduler, kube-controller-manager and kubectl, built from source at the release
//! `tests/k8s/go.mod` pins (`tests/k8s/build.sh`, cached outside the checkout), started as child
//! processes on loopback with a fresh PKI, and stopped when the [`Cluster`] is dropped.
//!
//! The kubelet is the real binary, registered as a Node, with upstream's CRI fake (`k8s fake-cri`)
//! as its runtime; the fake appends every `CreateContainer` request it receives to a log
//! ([`Cluster::created_containers`]). The API server logs every request to an audit log
//! ([`Cluster::audit`]), which is how tests count what an agent sends.
//!
//! Anything that cannot be built or started panics: a test that needs the cluster fails without
//! it, it never skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The node the kubelet registers.
pub const NODE: &str = "worker-0";
/// See [`Cluster::plugin_dir`].
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// How long a component may take to come up on a busy 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The `k8s` multi-call binary, built once per test process (the build itself is shared across
/// processes through its cache and lock).
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed: the Kubernetes components could not be built", script.display());
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "{} printed {}, which is not a file", script.display(), path.display());
        path
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

/// Which components to run besides etcd and the API server.
#[derive(Clone, Copy)]
pub struct Spec {
    pub kubelet: bool,
    /// kube-scheduler and kube-controller-manager (pods, service accounts, namespaces' cleanup).
    pub controllers: bool,
}

/// One child process with its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log");
        let mut cmd = Command::new(binary());
        cmd.arg(name).args(args).stdout(file).stderr(err);
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is a
        // plain syscall. The component dies with the thread that started it, so a test or
        // benchmark killed outright (a timeout, SIGKILL) leaves no API server or kubelet behind.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child, log }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log, for a failure message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// A running cluster; every process is killed when it is dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: String,
    pub kubelet_root: PathBuf,
    kubelet_port: u16,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    others: Vec<Proc>,
    kubelet: Option<Proc>,
    cri: Option<Proc>,
    etcd_args: Vec<String>,
    apiserver_args: Vec<String>,
}

/// Every request, as the audit log records it (a `Metadata`-level event at `ResponseComplete`).
#[derive(Debug, Clone)]
pub struct Audited {
    pub user: String,
    pub verb: String,
    pub uri: String,
    pub resource: String,
    pub code: i64,
    pub user_agent: String,
}

impl Audited {
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

const AUDIT_POLICY: &str =
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n";

impl Cluster {
    pub fn start(spec: Spec) -> Cluster {
        let started = Instant::now();
        let bin = binary();
        let dir = tempfile::Builder::new().prefix("k8s-").tempdir_in("/tmp").expect("tempdir");
        let d = dir.path();
        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let pki = d.join("pki");
        let out = Command::new(bin)
            .args(["certs", "--dir"])
            .arg(&pki)
            .args(["--server", &server, "--nodes", NODE])
            .output()
            .expect("run k8s certs");
        assert!(out.status.success(), "k8s certs: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(d.join("audit-policy.yaml"), AUDIT_POLICY).expect("audit policy");

        let (client, peer) = (free_port(), free_port());
        let etcd_args: Vec<String> = [
            "--name=test".to_owned(),
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ]
        .into();
        let p = |f: &str| pki.join(f).display().to_string();
        let apiserver_args: Vec<String> = [
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            // The endpoint reconciler refuses a loopback address; one API server needs none.
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--enable-admission-plugins=NodeRestriction".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // The node's hostname (worker-0) resolves nowhere; its InternalIP is this machine's.
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
            format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            format!("--audit-policy-file={}", d.join("audit-policy.yaml").display()),
            format!("--audit-log-path={}", d.join("audit.log").display()),
            "--audit-log-format=json".to_owned(),
            "--audit-log-maxsize=0".to_owned(),
            "--profiling=false".to_owned(),
        ]
        .into();
        let mut c = Cluster {
            server,
            kubelet_root: d.join("kubelet"),
            kubelet_port: free_port(),
            etcd: None,
            apiserver: None,
            others: Vec::new(),
            kubelet: None,
            cri: None,
            etcd_args,
            apiserver_args,
            dir,
        };
        c.start_etcd();
        c.start_apiserver();
        let api_up = started.elapsed();
        if spec.controllers {
            c.start_controllers();
        }
        if spec.kubelet {
            // A fresh node: no checkpoint or socket left by another test's kubelet.
            let _ = std::fs::remove_dir_all(DEVICE_PLUGIN_DIR);
            c.start_cri();
            c.start_kubelet();
            c.wait_node_ready();
        }
        eprintln!(
            "k8s cluster up in {:.1} s (API server ready after {:.1} s) in {}",
            started.elapsed().as_secs_f64(),
            api_up.as_secs_f64(),
            c.dir.path().display()
        );
        c
    }

    fn pki(&self, f: &str) -> PathBuf {
        self.dir.path().join("pki").join(f)
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.pki("admin.kubeconfig")
    }

    pub fn ca(&self) -> PathBuf {
        self.pki("ca.crt")
    }

    pub fn start_etcd(&mut self) {
        let mut etcd = Proc::spawn("etcd", self.dir.path(), &self.etcd_args);
        let port = self.etcd_args[2].rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("etcd port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait(&mut etcd, "etcd accepts connections", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        self.etcd = Some(etcd);
    }

    pub fn stop_etcd(&mut self) {
        if let Some(mut p) = self.etcd.take() {
            p.kill();
        }
    }

    pub fn start_apiserver(&mut self) {
        let mut api = Proc::spawn("kube-apiserver", self.dir.path(), &self.apiserver_args);
        let kubeconfig = self.admin_kubeconfig();
        wait(&mut api, "the API server's /readyz", || {
            kubectl_at(&kubeconfig, &["get", "--raw", "/readyz"]).status.success()
        });
        self.apiserver = Some(api);
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(|p| p.child.id())
    }

    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.terminate();
        }
    }

    fn start_controllers(&mut self) {
        let d = self.dir.path().to_owned();
        let scheduler = Proc::spawn(
            "kube-scheduler",
            &d,
            &[
                format!("--kubeconfig={}", self.pki("kube-scheduler.kubeconfig").display()),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
            ],
        );
        let mut cm = Proc::spawn(
            "kube-controller-manager",
            &d,
            &[
                format!("--kubeconfig={}", self.pki("kube-controller-manager.kubeconfig").display()),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
                format!("--service-account-private-key-file={}", self.pki("sa.key").display()),
                format!("--root-ca-file={}", self.pki("ca.crt").display()),
                "--use-service-account-credentials=true".to_owned(),
            ],
        );
        self.others.push(scheduler);
        // Pods need the namespace's default ServiceAccount, which the controller manager makes.
        wait(&mut cm, "the default ServiceAccount in default", || {
            self.kubectl(&["get", "serviceaccount", "default", "-n", "default"]).status.success()
        });
        self.others.push(cm);
    }

    fn start_cri(&mut self) {
        let d = self.dir.path();
        let sock = d.join("cri.sock");
        let mut cri = Proc::spawn(
            "fake-cri",
            d,
            &[
                format!("--endpoint=unix://{}", sock.display()),
                format!("--record={}", d.join("create-container.jsonl").display()),
            ],
        );
        wait(&mut cri, "the fake CRI's socket", || sock.exists());
        self.cri = Some(cri);
    }

    fn kubelet_config(&self) -> PathBuf {
        let d = self.dir.path();
        let path = d.join("kubelet-config.yaml");
        let text = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The node's address is this machine's (the kubelet refuses a loopback node IP), so the
# API server's node proxy reaches it there.
address: 0.0.0.0
port: {port}
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
# Status every second, so capacity changes reach the Node without the default 10 s wait.
nodeStatusUpdateFrequency: 1s
syncFrequency: 5s
# This machine's disk and memory are not what is tested: no evictions.
evictionHard: {{memory.available: \"1Ki\", nodefs.available: \"0%\", imagefs.available: \"0%\"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {logs}
resolvConf: \"\"
registerNode: true
",
            port = self.kubelet_port,
            ca = self.ca().display(),
            sock = d.join("cri.sock").display(),
            logs = d.join("pod-logs").display(),
        );
        std::fs::write(&path, text).expect("kubelet config");
        path
    }

    /// Starts the kubelet (again, after [`Cluster::kill_kubelet`]); returns when its process is
    /// running, not when it has registered (see [`Cluster::wait_node_ready`]).
    pub fn start_kubelet(&mut self) -> Instant {
        let config = self.kubelet_config();
        std::fs::create_dir_all(&self.kubelet_root).expect("kubelet root");
        let at = Instant::now();
        let kubelet = Proc::spawn(
            "kubelet",
            self.dir.path(),
            &[
                format!("--config={}", config.display()),
                format!("--kubeconfig={}", self.pki(&format!("kubelet-{NODE}.kubeconfig")).display()),
                format!("--root-dir={}", self.kubelet_root.display()),
                format!("--cert-dir={}", self.dir.path().join("kubelet-pki").display()),
                format!("--hostname-override={NODE}"),
                "--v=1".to_owned(),
            ],
        );
        self.kubelet = Some(kubelet);
        at
    }

    /// SIGKILL, as a crashed or OOM-killed kubelet goes.
    pub fn kill_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.kill();
        }
    }

    pub fn kubelet_alive(&mut self) -> bool {
        self.kubelet.as_mut().is_some_and(Proc::alive)
    }

    pub fn wait_node_ready(&mut self) {
        let mut kubelet = self.kubelet.take().expect("kubelet started");
        wait(&mut kubelet, "the Node to be Ready", || {
            self.node().is_some_and(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            })
        });
        self.kubelet = Some(kubelet);
    }

    /// The kubelet's device-plugin directory. Not under `--root-dir`: the kubelet's device
    /// manager listens on the fixed `pluginapi.KubeletSocket`
    /// (`/var/lib/kubelet/device-plugins/kubelet.sock`) whatever its root dir, so one kubelet
    /// at a time can run on a machine (the tests run one cluster at a time).
    pub fn plugin_dir(&self) -> PathBuf {
        PathBuf::from(DEVICE_PLUGIN_DIR)
    }

    /// `kubectl` as the cluster admin (system:masters).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_at(&self.admin_kubeconfig(), args)
    }

    /// `kubectl` as the admin; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Node object as JSON, `None` while it does not exist.
    pub fn node(&self) -> Option<Value> {
        self.object(&format!("/api/v1/nodes/{NODE}"))
    }

    /// `GET path` as the admin, `None` when it fails (404, API server down).
    pub fn object(&self, path: &str) -> Option<Value> {
        let out = self.kubectl(&["get", "--raw", path]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `.status.allocatable[resource]` (or capacity) of the Node, as a number.
    pub fn node_quantity(&self, field: &str, resource: &str) -> Option<i64> {
        let n = self.node()?;
        n["status"][field][resource].as_str().and_then(|q| q.parse().ok())
    }

    /// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Cluster) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates `objects` (a JSON object, or a `v1` List of them) as the admin.
    pub fn create(&self, objects: &Value) {
        let path = self.dir.path().join(format!("create-{}.json", unique()));
        std::fs::write(&path, objects.to_string()).expect("write the objects");
        self.kubectl_ok(&["create", "-f", &path.display().to_string()]);
    }

    /// A kubeconfig for `namespace/sa` with a token from the TokenRequest API bound to a pod
    /// of that ServiceAccount on `node`, as the kubelet gets one for a pod: the token carries
    /// the node's name (`authentication.kubernetes.io/node-name`). The pod is created here
    /// (with `nodeName` set; nothing runs it); [`Cluster::holder_kubeconfig`] when the pod
    /// already exists (made in bulk with [`token_holder`]).
    pub fn pod_bound_kubeconfig(&self, namespace: &str, sa: &str, node: &str) -> PathBuf {
        self.create(&token_holder(namespace, sa, node));
        self.holder_kubeconfig(namespace, sa, node)
    }

    /// [`Cluster::pod_bound_kubeconfig`] for a holder pod that exists.
    pub fn holder_kubeconfig(&self, namespace: &str, sa: &str, node: &str) -> PathBuf {
        let holder = format!("{sa}-on-{node}");
        let token = self.kubectl_ok(&[
            "create",
            "token",
            sa,
            "-n",
            namespace,
            "--bound-object-kind=Pod",
            &format!("--bound-object-name={holder}"),
            "--duration=6h",
        ]);
        self.token_kubeconfig(&holder, token.trim())
    }

    /// A kubeconfig that presents `token` to this cluster.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {name}}}\ncurrent-context: test\n",
            self.server,
            self.ca().display(),
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Every request the API server has answered so far, oldest first, once each: a watch
    /// from when its response started (it completes only when it ends), anything else when
    /// complete.
    pub fn audit(&self) -> Vec<Audited> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["stage"] == "ResponseComplete" || e["stage"] == "ResponseStarted")
            .filter(|e| seen.insert(e["auditID"].as_str().unwrap_or_default().to_owned()))
            .map(|e| Audited {
                user: e["user"]["username"].as_str().unwrap_or_default().to_owned(),
                verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
                resource: e["objectRef"]["resource"].as_str().unwrap_or_default().to_owned(),
                code: e["responseStatus"]["code"].as_i64().unwrap_or_default(),
                user_agent: e["userAgent"].as_str().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// Every `CreateContainer` request the kubelet sent the runtime, oldest first.
    pub fn created_containers(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("create-container.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// A component's log, for failure messages.
    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{component}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let procs = self.kubelet.iter_mut().chain(self.cri.iter_mut()).chain(self.others.iter_mut());
        for p in procs {
            p.kill();
        }
        for p in self.apiserver.iter_mut().chain(self.etcd.iter_mut()) {
            p.kill();
        }
        // The kubelet bind-mounts its root dir onto itself (and volumes under it); a killed
        // kubelet leaves them mounted, and the directory could not be removed.
        unmount_under(self.dir.path());
        if std::thread::panicking() {
            // Keep the logs of a failed run where the message says.
            let keep = self.dir.path().with_extension("failed");
            let _ = std::fs::rename(self.dir.path(), &keep);
            eprintln!("cluster logs kept in {}", keep.display());
        }
    }
}

/// A variable of a recorded `CreateContainer` request. CRI v1 carries values as bytes, which
/// the record (protobuf JSON) holds in base64.
pub fn container_env(request: &Value, key: &str) -> Option<String> {
    let encoded = request["config"]["envs"].as_array()?.iter().find(|e| e["key"] == key)?["value"].as_str()?;
    String::from_utf8(base64_decode(encoded)?).ok()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | u32::from(value(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> =
        table.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| Path::new(p).starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

/// A pod of `sa` on `node` that no kubelet runs: what a node-bound token is bound to.
pub fn token_holder(namespace: &str, sa: &str, node: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{sa}-on-{node}"), "namespace": namespace},
        "spec": {"nodeName": node, "serviceAccountName": sa, "automountServiceAccountToken": false,
                 "containers": [{"name": "token-holder", "image": "example.invalid/none"}]}})
}

/// A pod in `default` whose one container asks for one `resource`, placed by the scheduler, or
/// sent straight to `node`.
pub fn device_pod(resource: &str, name: &str, node: Option<&str>) -> Value {
    let mut spec = serde_json::json!({
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "compute", "image": "example.invalid/virt-launcher:1",
                        "resources": {"limits": {resource: "1"}}}]
    });
    if let Some(n) = node {
        spec["nodeName"] = Value::from(n);
    }
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// A Node object as an admin creates one (no kubelet behind it).
pub fn node_object(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
}

/// `items` as one `v1` List, for one `kubectl create`.
pub fn list(items: Vec<Value>) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn kubectl_at(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl")
}

/// Polls `ready` every 100 ms while `proc` runs; panics with its log when it exits or
/// [`START_TIMEOUT`] passes.
fn wait(proc: &mut Proc, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if ready() {
            return;
        }
        assert!(proc.alive(), "{} exited while waiting for {what}:\n{}", proc.name, proc.tail());
        assert!(
            start.elapsed() < START_TIMEOUT,
            "{} not up after {START_TIMEOUT:?} ({what}):\n{}",
            proc.name,
            proc.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
