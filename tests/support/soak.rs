//! The chaos soak (issue 13): the agent as a process of its own over the simulated kernel
//! (`super::kernel_sim`) on a fixture host, against the real cluster (`super::k8s`: etcd,
//! kube-apiserver, kubelet with the fake CRI, scheduler, controller manager), and rounds of
//! faults: the agent SIGKILLed (idle, between the sysfs writes of a bind, of a restore, of a DRA
//! Prepare or Unprepare), the kubelet restarted, the API server restarted, etcd stopped for a
//! few seconds, a device unbound behind nodeprep's back, the config changed (now and then to an
//! invalid one first). After every round the invariants are polled until they all hold
//! (the convergence time) or [`CONVERGE_BOUND`] passes (a violation per invariant that still
//! fails):
//!
//! - `selected`: every device the config selects for a device plugin is on vfio-pci (its whole
//!   IOMMU group, `/dev/vfio/<group>` there) and the kubelet counts it healthy, or the agent's
//!   report (`var/lib/nodeprep/status.json`) names it refused with a reason, or the soak
//!   unbound it behind nodeprep's back since the agent last bound (then the kubelet must count
//!   it unhealthy);
//! - `record`: no device is on vfio-pci without a record in `var/lib/nodeprep/bindings.json`
//!   (the T4 the fixture has on vfio-pci from the start is the admin's, not nodeprep's);
//! - `labels`: the Node carries the labels nodeprep put there when the soak started;
//! - `capacity`: the Node's capacity of every resource is the number of selected devices, its
//!   allocatable the number of usable ones, and the kubelet's checkpoint lists exactly those as
//!   healthy;
//! - `held`: a device a pod holds (a device-plugin pod's VF, a prepared claim's GPU and its
//!   audio function) stays on vfio-pci, checked every 10 ms all along (also while its device is
//!   dropped from the config: it must stay until the pod goes);
//! - `dra`: the DRA GPU is in the ResourceSlice, on vfio-pci with records while its claim is
//!   prepared, on its own drivers without records otherwise;
//! - `giveback`: every other device is on its native driver without a record: a device the
//!   config dropped went back. A violation when [`GIVEBACK_IS_INVARIANT`] (give-back has
//!   landed), else only counted; `NODEPREP_SOAK_GIVEBACK=count` counts it only.
//!
//! The agent process is this very binary, re-executed with [`AGENT_ENV`] set: the bench's
//! `main` and a test of the test binary call [`agent_if_asked`] first. Its kernel writes each
//! sysfs write to a journal and waits [`SoakOptions::write_delay`] before making it (a probe
//! takes that long on real hardware), so the soak can SIGKILL it after the k-th write of an
//! operation; the simulator's native drivers live in a file of the tree
//! ([`KernelSim::persisted`]) and the parent [`KernelSim::settle`]s the tree after each kill (the
//! kernel finishes a write it accepted). Each driver change the simulator makes also sends one
//! real PCI uevent (as the driver core does for every bind and unbind), so the agent learns of
//! it as on a real host (`NODEPREP_SOAK_UEVENTS=0` turns that off).
//!
//! The soak runs in a mount namespace of its own with a private `/var/lib/kubelet`
//! ([`private_device_plugin_dir`]): another real-cluster test starting a kubelet on the same
//! machine would otherwise take its device plugins over (and hand it its checkpoint).
//!
//! Knobs: `NODEPREP_SOAK_SEED` (replays a run's choices), `NODEPREP_SOAK_PLAN` (kind names,
//! comma-separated, e.g. `kill-mid-prepare,etcd-stop`), `NODEPREP_SOAK_AGENT_LOG=debug`,
//! `NODEPREP_SOAK_KEEP=1` (keep the agent log and the kernel journal of a passing run too),
//! `NODEPREP_SOAK_GIVEBACK=count|violation`, `NODEPREP_SOAK_UEVENTS=0`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nodeprep::bind::{Kernel, KernelFactory};
use nodeprep::host::HostRoot;
use serde_json::{Value, json};

use super::k8s::{Cluster, DEVICE_PLUGIN_DIR, NODE, Spec, container_env, device_pod};
use super::kernel_sim::KernelSim;
use super::machines::intel::{GPU_A, GPU_B, GPU_B_AUDIO, MLX_VFS, NVME, QAT_VFS};
use super::tree::driver_of;

/// Set (to the agent's settings, JSON) in the environment of the re-executed agent process.
pub const AGENT_ENV: &str = "NODEPREP_SOAK_AGENT";
/// The pseudo-invariant of a kubelet checkpoint file that lags the kubelet's live state.
const KUBELET_CHECKPOINT: &str = "kubelet-checkpoint";
/// How long the invariants may take to hold again after a fault.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(60);
/// Give-back (a device the config stops selecting goes back to its own driver once nothing
/// holds it) has landed: a device left behind is a violation, not only a counted figure.
pub const GIVEBACK_IS_INVARIANT: bool = true;

const QAT: &str = "intel.com/qat_vf";
const MLX: &str = "mellanox.com/cx5_vf";
const DISK: &str = "nodeprep.io/nvme";
const QUADRO: &str = "nvidia.com/quadro";
const DRA_DRIVER: &str = "vfio.nodeprep.io";
const VFIO: &str = "vfio-pci";
const WAIT: Duration = Duration::from_secs(90);
/// The kubelet's device-manager checkpoint, in [`DEVICE_PLUGIN_DIR`].
const CHECKPOINT: &str = "/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint";

// ---- the agent process ---------------------------------------------------------------------

/// In the re-executed agent process ([`AGENT_ENV`] set): runs the agent until SIGTERM (or the
/// SIGKILL the soak sends) and exits. Elsewhere: returns at once.
pub fn agent_if_asked() {
    let Ok(spec) = std::env::var(AGENT_ENV) else { return };
    let spec: Value = serde_json::from_str(&spec).expect("the soak agent's settings");
    let code = match run_agent(&spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("soak agent: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The simulated kernel, journaled and slowed down: `<ms> begin|end <path> <value>` per write.
/// A driver change also sends a real kernel uevent, as the kernel's driver core does for every
/// bind and unbind (`KOBJ_BIND`/`KOBJ_UNBIND`): see [`real_uevent`].
struct Journaled {
    sim: KernelSim,
    delay: Duration,
    journal: PathBuf,
    uevents: bool,
}

/// One real PCI `change` uevent, from this machine's first PCI device (as `tests/real_dra.rs`
/// sends one): the agent's monitor hears it on the kernel's netlink socket and rescans. The
/// simulator changes files, which send none; without it the agent would learn of a bind only
/// from `/dev/vfio` (which changes once per IOMMU group, not per function).
fn real_uevent() {
    static FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let mut files: Vec<PathBuf> = std::fs::read_dir("/sys/bus/pci/devices")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("uevent")))
            .collect();
        files.sort();
        files.into_iter().next()
    });
    if let Some(f) = file {
        let _ = std::fs::write(f, "change");
    }
}

fn note(journal: &Path, what: &str, path: &Path, value: &str) {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let line = format!("{ms} {what} {} {}\n", path.display(), value.trim());
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(journal) {
        let _ = f.write_all(line.as_bytes());
    }
}

impl Kernel for Journaled {
    fn write(&mut self, path: &Path, value: &str) -> std::io::Result<()> {
        note(&self.journal, "begin", path, value);
        std::thread::sleep(self.delay);
        let r = self.sim.write(path, value);
        note(&self.journal, "end", path, value);
        let moves = ["bind", "unbind", "drivers_probe"].iter().any(|f| path.file_name().is_some_and(|n| n == *f));
        if r.is_ok() && moves && self.uevents {
            real_uevent();
        }
        r
    }

    fn load_module(&mut self, name: &str) -> Result<(), String> {
        self.sim.load_module(name)
    }
}

/// Runs the agent the soak's settings describe; settings it cannot use are refused, nothing started.
pub fn run_agent(spec: &Value) -> Result<(), String> {
    let path = |k: &str| PathBuf::from(spec[k].as_str().unwrap_or_default());
    let (root, config, kubeconfig, journal) = (path("root"), path("config"), path("kubeconfig"), path("journal"));
    let (plugin_dir, kubelet_dir) = (path("pluginDir"), path("kubeletDir"));
    let listen: std::net::SocketAddr =
        spec["listen"].as_str().unwrap_or_default().parse().map_err(|e| format!("{e}"))?;
    let delay = Duration::from_millis(spec["writeDelayMs"].as_u64().unwrap_or(0));
    let level = match spec["logLevel"].as_str() {
        Some("debug") => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_ansi(false).init();
    let uevents = spec["uevents"].as_bool().unwrap_or(true);
    let base = KernelSim::persisted(&root);
    let kernel = KernelFactory::new(move |_root: &HostRoot| {
        Box::new(Journaled { sim: base.restarted(), delay, journal: journal.clone(), uevents })
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let paths = super::inprocess::AgentPaths { root, config, kubeconfig, plugin_dir, kubelet_dir };
    rt.block_on(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
        // The production rescan: what converges must do so on events, not this safety net.
        super::inprocess::run_agent(paths, listen, Duration::from_secs(300), kernel, async move {
            term.recv().await;
        })
        .await
    })
}

// ---- the plan --------------------------------------------------------------------------------

/// One kind of round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL at a random moment, nothing in particular going on.
    KillIdle,
    /// A config change that binds a device, and SIGKILL after one of its sysfs writes.
    KillMidBind,
    /// A config change that gives a device back, and SIGKILL after one of its sysfs writes.
    KillMidRestore,
    /// A pod with a DRA claim, SIGKILL amid the Prepare's writes; the pod deleted, often
    /// SIGKILL amid the Unprepare's.
    KillMidPrepare,
    KubeletRestart,
    ApiServerRestart,
    EtcdStop,
    /// `vfio-pci/unbind` of a bound device no pod holds, not by nodeprep.
    UnbindBehind,
    /// A random change of the selection, now and then an invalid config first.
    ConfigChange,
}

impl Kind {
    /// A kind by its name in `NODEPREP_SOAK_PLAN` (`kill-idle`, `kill-mid-bind`, ...).
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillIdle => "kill-idle",
            Kind::KillMidBind => "kill-mid-bind",
            Kind::KillMidRestore => "kill-mid-restore",
            Kind::KillMidPrepare => "kill-mid-prepare",
            Kind::KubeletRestart => "kubelet-restart",
            Kind::ApiServerRestart => "apiserver-restart",
            Kind::EtcdStop => "etcd-stop",
            Kind::UnbindBehind => "unbind-behind",
            Kind::ConfigChange => "config-change",
        }
    }

    pub const ALL: [Kind; 9] = [
        Kind::KillIdle,
        Kind::KillMidBind,
        Kind::KillMidRestore,
        Kind::KillMidPrepare,
        Kind::KubeletRestart,
        Kind::ApiServerRestart,
        Kind::EtcdStop,
        Kind::UnbindBehind,
        Kind::ConfigChange,
    ];

    fn weight(self) -> u64 {
        match self {
            Kind::KillIdle | Kind::KillMidBind | Kind::KillMidRestore | Kind::UnbindBehind | Kind::ConfigChange => 2,
            _ => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::KillIdle => "agent SIGKILL, idle",
            Kind::KillMidBind => "agent SIGKILL amid a bind",
            Kind::KillMidRestore => "agent SIGKILL amid a restore",
            Kind::KillMidPrepare => "agent SIGKILL amid a DRA Prepare/Unprepare",
            Kind::KubeletRestart => "kubelet restart (SIGKILL)",
            Kind::ApiServerRestart => "API server restart",
            Kind::EtcdStop => "etcd stopped 2-6 s",
            Kind::UnbindBehind => "device unbound behind nodeprep's back",
            Kind::ConfigChange => "config change",
        }
    }
}

/// Which rounds run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// This many rounds, each of a kind drawn at random (weighted).
    Random(usize),
    /// These rounds, in this order.
    Fixed(Vec<Kind>),
}

pub struct SoakOptions {
    pub plan: Plan,
    pub seed: u64,
    /// How long each simulated sysfs write takes.
    pub write_delay: Duration,
    /// Arguments that make this binary run [`agent_if_asked`] (a test binary's filter for the
    /// test that calls it; none for a bench's `main`).
    pub agent_args: Vec<String>,
    /// Print a line per round.
    pub verbose: bool,
}

impl SoakOptions {
    /// `NODEPREP_SOAK_PLAN` (kind names, comma-separated) when set, else `default`.
    pub fn plan_from_env(default: Plan) -> Plan {
        if let Some(n) = std::env::var("NODEPREP_SOAK_ROUNDS").ok().and_then(|n| n.parse().ok()) {
            return Plan::Random(n);
        }
        match std::env::var("NODEPREP_SOAK_PLAN") {
            Ok(p) if !p.trim().is_empty() => Plan::Fixed(
                p.split(',')
                    .map(|n| Kind::named(n.trim()).unwrap_or_else(|| panic!("no soak round kind {n:?}")))
                    .collect(),
            ),
            _ => default,
        }
    }

    /// The seed from `NODEPREP_SOAK_SEED`, else from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("NODEPREP_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
        })
    }
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1) ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize].clone())
    }
}

// ---- the config ------------------------------------------------------------------------------

/// What the config selects: a subset of the QAT VFs (never empty), the ConnectX VF0 (its
/// interface is up: refused) with or without VF1, the boot disk (refused), and the GPU with its
/// audio function through DRA (`atRest: host`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    qat: BTreeSet<&'static str>,
    mlx1: bool,
}

impl Selection {
    fn full() -> Selection {
        Selection { qat: QAT_VFS.iter().copied().collect(), mlx1: true }
    }

    fn text(&self) -> String {
        let list = |a: &[&str]| a.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let qat: Vec<&str> = self.qat.iter().copied().collect();
        let mut mlx = vec![MLX_VFS[0]];
        if self.mlx1 {
            mlx.push(MLX_VFS[1]);
        }
        format!(
            "devices:\n  - resourceName: {QAT}\n    selectors: {{pciAddresses: [{}]}}\n  - resourceName: {MLX}\n    selectors: {{pciAddresses: [{}]}}\n  - resourceName: {DISK}\n    selectors: {{pciAddresses: [\"{NVME}\"]}}\ndra:\n  devices:\n    - resourceName: {QUADRO}\n      atRest: host\n      selectors: {{pciAddresses: [\"{GPU_B}\"]}}\n",
            list(&qat),
            list(&mlx)
        )
    }

    /// Resource -> the devices selected for it (device plugins only).
    fn resources(&self) -> BTreeMap<&'static str, BTreeSet<&'static str>> {
        let mut m = BTreeMap::new();
        m.insert(QAT, self.qat.clone());
        let mut mlx: BTreeSet<&str> = [MLX_VFS[0]].into();
        if self.mlx1 {
            mlx.insert(MLX_VFS[1]);
        }
        m.insert(MLX, mlx);
        m.insert(DISK, [NVME].into());
        m
    }

    fn selected(&self) -> BTreeSet<&'static str> {
        self.resources().into_values().flatten().collect()
    }

    /// Devices that can be added (not selected now).
    fn addable(&self) -> Vec<&'static str> {
        let mut v: Vec<&str> = QAT_VFS.iter().copied().filter(|a| !self.qat.contains(a)).collect();
        if !self.mlx1 {
            v.push(MLX_VFS[1]);
        }
        v
    }

    /// Devices that can be dropped (the QAT entry keeps one).
    fn droppable(&self) -> Vec<&'static str> {
        let mut v: Vec<&str> = if self.qat.len() > 1 { self.qat.iter().copied().collect() } else { Vec::new() };
        if self.mlx1 {
            v.push(MLX_VFS[1]);
        }
        v
    }

    fn toggle(&mut self, a: &'static str) {
        if a == MLX_VFS[1] {
            self.mlx1 = !self.mlx1;
        } else if !self.qat.remove(a) {
            self.qat.insert(a);
        }
    }
}

const INVALID_CONFIG: &str =
    "devices:\n  - resourceName: intel.com/qat_vf\n    bind: sideways\n    selectors: {vendors: [\"8086\"]}\n";

// ---- what the soak reports -------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub rounds: usize,
    /// Faults injected, by kind label.
    pub faults: BTreeMap<&'static str, usize>,
    /// SIGKILLs that landed between two sysfs writes of one operation (or in one).
    pub kills_amid_writes: usize,
    pub kills: usize,
    /// Invalid configs written (and refused by the agent, the last good one kept).
    pub invalid_configs: usize,
    /// Every violation, `round N (kind): invariant: what`.
    pub violations: Vec<String>,
    pub by_invariant: BTreeMap<&'static str, usize>,
    /// Rounds after which a device the config dropped was not back on its driver in time.
    pub giveback_misses: usize,
    /// Time from the end of a fault to every invariant holding, by round kind.
    pub convergence: Vec<(Kind, Duration)>,
    /// The agent process exited by itself (not killed by the soak).
    pub agent_exits: Vec<String>,
    /// Rounds after which the kubelet and the agent were restarted because of a violation.
    pub resets: usize,
    /// The kubelet's checkpoint file listed other healthy devices than its live state (the
    /// Node's capacity and allocatable, which were right): the kubelet's own write race.
    pub kubelet_checkpoint_lags: Vec<String>,
    pub wall: Duration,
    pub setup: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

impl Report {
    pub fn print(&self) {
        let mut all: Vec<Duration> = self.convergence.iter().map(|(_, d)| *d).collect();
        all.sort();
        println!(
            "chaos soak: {} rounds, seed {} (NODEPREP_SOAK_SEED), wall time {:.0} s (+{:.0} s setup)",
            self.rounds,
            self.seed,
            self.wall.as_secs_f64(),
            self.setup.as_secs_f64()
        );
        println!("faults injected: {}", self.faults.values().sum::<usize>());
        for (k, n) in &self.faults {
            println!("  {k:<44} {n:>4}");
        }
        println!(
            "  agent SIGKILLs {} in all, {} of them amid an operation's sysfs writes; {} invalid configs (refused, last good kept)",
            self.kills, self.kills_amid_writes, self.invalid_configs
        );
        println!(
            "violations: {} (after each violating round the kubelet and the agent are restarted: {} resets)",
            self.violations.len(),
            self.resets
        );
        for (inv, n) in &self.by_invariant {
            println!("  {inv:<12} {n}");
        }
        for v in self.violations.iter().take(40) {
            println!("  - {v}");
        }
        println!(
            "the kubelet's checkpoint file behind its live state (Node capacity right; kubelet's write race, not counted): {}",
            self.kubelet_checkpoint_lags.len()
        );
        for l in &self.kubelet_checkpoint_lags {
            println!("  - {l}");
        }
        println!(
            "give-back misses (a dropped device not back on its driver within {} s): {} ({})",
            CONVERGE_BOUND.as_secs(),
            self.giveback_misses,
            if giveback_strict() { "counted as violations" } else { "counted only" }
        );
        if !self.agent_exits.is_empty() {
            println!("agent exits not caused by the soak: {}", self.agent_exits.len());
            for e in &self.agent_exits {
                println!("  - {e}");
            }
        }
        println!(
            "convergence after a fault: {} samples, p50 {:.2} s, p99 {:.2} s, max {:.2} s (bound {} s)",
            all.len(),
            percentile(&all, 0.5).as_secs_f64(),
            percentile(&all, 0.99).as_secs_f64(),
            all.last().copied().unwrap_or_default().as_secs_f64(),
            CONVERGE_BOUND.as_secs()
        );
        for k in Kind::ALL {
            let mut d: Vec<Duration> = self.convergence.iter().filter(|(kk, _)| *kk == k).map(|(_, d)| *d).collect();
            if d.is_empty() {
                continue;
            }
            d.sort();
            println!(
                "  {:<44} n={:<3} p50 {:>5.2} s  p99 {:>5.2} s",
                k.label(),
                d.len(),
                percentile(&d, 0.5).as_secs_f64(),
                percentile(&d, 0.99).as_secs_f64()
            );
        }
    }
}

fn giveback_strict() -> bool {
    match std::env::var("NODEPREP_SOAK_GIVEBACK").as_deref() {
        Ok("count") => false,
        Ok("violation") => true,
        _ => GIVEBACK_IS_INVARIANT,
    }
}

// ---- the soak --------------------------------------------------------------------------------

/// A device a pod holds, watched all along by the sampler.
type Held = Arc<Mutex<BTreeMap<String, String>>>;

struct Soak {
    c: Cluster,
    _tree: super::tree::HostTree,
    root: PathBuf,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    kubeconfig: PathBuf,
    journal: PathBuf,
    opts_args: Vec<String>,
    write_delay: Duration,
    agent: Option<Child>,
    rng: Rng,
    /// The config in force (the last valid one written).
    sel: Selection,
    /// Every device's driver when the soak began.
    native: BTreeMap<String, Option<String>>,
    /// Devices the soak unbound behind nodeprep's back since the agent last bound.
    taken: BTreeSet<String>,
    held: Held,
    held_violations: Arc<Mutex<Vec<String>>>,
    round: Arc<AtomicUsize>,
    /// The kubelet's device-plugin directory is this soak's own ([`private_device_plugin_dir`]).
    isolated: bool,
    /// When the agent or the kubelet last started.
    plugins_since: std::time::SystemTime,
    /// A DRA claim's pod is running: the GPU is prepared.
    dra_prepared: bool,
    dra_pods: usize,
    labels: BTreeMap<String, String>,
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    report: Report,
    verbose: bool,
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_group(root: &Path, addr: &str) -> Option<u32> {
    std::fs::read_link(root.join(format!("sys/bus/pci/devices/{addr}/iommu_group")))
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
}

fn devices_of(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("sys/bus/pci/devices"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn nodeprep_labels(node: &Value) -> BTreeMap<String, String> {
    node["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("nodeprep.io/") || *k == "feature.node.kubernetes.io/runtime.kata")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dra_template() -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
    "metadata": {"name": "gpu", "namespace": "default"},
    "spec": {"spec": {"devices": {"requests": [{"name": "vm", "exactly": {
        "deviceClassName": DRA_DRIVER,
        "selectors": [{"cel": {"expression": format!("device.attributes[\"{DRA_DRIVER}\"].resourceName == \"{QUADRO}\"")}}]
    }}]}}}})
}

fn claim_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "dev", "resourceClaimTemplateName": "gpu"}],
            "containers": [{"name": "compute", "image": "example.invalid/virt-launcher:1",
                "resources": {"claims": [{"name": "dev"}]}}]}})
}

/// Gives this thread, and every process it starts from now on (the cluster, the agent), a mount
/// namespace of its own with a fresh tmpfs on `/var/lib/kubelet`. The kubelet serves device
/// plugins at the fixed `/var/lib/kubelet/device-plugins` whatever its root dir, and wipes it
/// when it starts: a real-cluster test of another checkout (or another session in this one)
/// starting its kubelet during the soak would take the soak's plugins over and bring its
/// checkpoint (its pods' devices). The tmpfs goes on the parent, not on the device-plugin
/// directory itself: `Cluster::start` removes that directory, and unlinking a directory
/// detaches the mounts other namespaces have on it. False when the kernel refuses (no
/// `CAP_SYS_ADMIN`): the soak then checks for other kubelets instead.
fn private_device_plugin_dir() -> bool {
    use nix::libc;
    let _ = std::fs::create_dir_all(DEVICE_PLUGIN_DIR);
    // SAFETY: plain syscalls on valid NUL-terminated strings. unshare(CLONE_NEWNS) affects this
    // thread only (it gets its own copy of the mount table), and the mounts it makes are private:
    // nothing propagates back to the host.
    let mounted = unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        let none = std::ptr::null();
        if libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return false;
        }
        libc::mount(c"tmpfs".as_ptr(), c"/var/lib/kubelet".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) == 0
    };
    mounted && std::fs::create_dir_all(DEVICE_PLUGIN_DIR).is_ok()
}

/// One check's failures: (invariant, what).
type Problems = Vec<(&'static str, String)>;

impl Soak {
    fn start(opts: &SoakOptions) -> Soak {
        let isolated = private_device_plugin_dir();
        if !isolated {
            eprintln!(
                "soak: no private {DEVICE_PLUGIN_DIR} (unshare or mount refused): another real-cluster test's kubelet would spoil the run"
            );
        }
        let c = Cluster::start(Spec { kubelet: true, controllers: true });
        // The RBAC, the DeviceClass; the DaemonSet itself would run a second agent in the fake
        // runtime: the soak runs the agent.
        c.kubectl_ok(&["apply", "-k", &repo("daemonset").display().to_string()]);
        c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
        let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
        let tree = super::intel_gpu_server();
        let root = tree.root().to_owned();
        // The native drivers, in a file of the tree, before anything moves.
        let _ = KernelSim::persisted(&root);
        let native = devices_of(&root).into_iter().map(|a| (a.clone(), driver_of(&root, &a))).collect();
        let dir = tempfile::Builder::new().prefix("soak-").tempdir_in("/tmp").expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let admin = nodeprep::cluster::Source::Kubeconfig(c.admin_kubeconfig());
        let client = rt.block_on(nodeprep::cluster::connect(&admin)).expect("connect as the admin");
        Soak {
            config_path: dir.path().join("config/config.yaml"),
            journal: dir.path().join("kernel-journal.log"),
            kubeconfig,
            c,
            _tree: tree,
            root,
            dir,
            opts_args: opts.agent_args.clone(),
            write_delay: opts.write_delay,
            agent: None,
            rng: Rng::new(opts.seed),
            sel: Selection::full(),
            native,
            taken: BTreeSet::new(),
            held: Arc::new(Mutex::new(BTreeMap::new())),
            held_violations: Arc::new(Mutex::new(Vec::new())),
            round: Arc::new(AtomicUsize::new(0)),
            plugins_since: std::time::SystemTime::now(),
            isolated,
            dra_prepared: false,
            dra_pods: 0,
            labels: BTreeMap::new(),
            rt,
            client,
            report: Report { seed: opts.seed, ..Report::default() },
            verbose: opts.verbose,
        }
    }

    fn log(&self, what: &str) {
        if self.verbose {
            eprintln!("soak round {}: {what}", self.round.load(Ordering::Relaxed));
        }
    }

    fn fault(&mut self, kind: Kind) {
        *self.report.faults.entry(kind.label()).or_default() += 1;
    }

    // ---- the agent -------------------------------------------------------------------------

    fn spawn_agent(&mut self) {
        let spec = json!({
            "root": self.root, "config": self.config_path, "kubeconfig": self.kubeconfig,
            "journal": self.journal, "pluginDir": self.c.plugin_dir(), "kubeletDir": self.c.kubelet_root,
            "listen": super::agent::free_port().to_string(),
            "writeDelayMs": self.write_delay.as_millis() as u64,
            "logLevel": std::env::var("NODEPREP_SOAK_AGENT_LOG").unwrap_or_default(),
            // NODEPREP_SOAK_UEVENTS=0: no uevent for the simulator's binds (the agent then
            // learns of them from /dev/vfio alone).
            "uevents": std::env::var("NODEPREP_SOAK_UEVENTS").map_or(true, |v| v != "0"),
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut cmd = Command::new(std::env::current_exe().expect("this binary"));
        cmd.args(&self.opts_args)
            .env(AGENT_ENV, spec.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // SAFETY: only the async-signal-safe prctl between fork and exec: the agent dies with
        // the soak, whatever kills it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.plugins_since = std::time::SystemTime::now();
        self.agent = Some(cmd.spawn().expect("start the agent process"));
        // Whatever it finds unbound, it binds again at start.
        self.taken.clear();
    }

    /// SIGKILL, then the kernel finishes the write it was in.
    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        KernelSim::settle(&self.root);
        self.report.kills += 1;
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// An agent that exited on its own is a finding: recorded, and started again.
    fn agent_alive_or_restart(&mut self) {
        let exited = self.agent.as_mut().and_then(|a| a.try_wait().ok().flatten());
        if let Some(status) = exited {
            let msg = format!(
                "round {}: the agent exited by itself ({status}):\n{}",
                self.round.load(Ordering::Relaxed),
                tail(&self.agent_log(), 15)
            );
            eprintln!("{msg}");
            self.report.agent_exits.push(msg);
            self.agent = None;
            self.spawn_agent();
        }
    }

    /// Where the journal ends now (the agent only appends).
    fn journal_begins(&self) -> u64 {
        std::fs::metadata(&self.journal).map(|m| m.len()).unwrap_or(0)
    }

    /// The sysfs writes the agent began since the journal was `offset` long.
    fn begins_since(&self, offset: u64) -> usize {
        use std::io::{Read, Seek};
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.journal) {
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                let _ = f.read_to_string(&mut text);
            }
        }
        text.lines().filter(|l| l.contains(" begin ")).count()
    }

    /// Waits until the agent has begun `k` sysfs writes since the journal was `before` long
    /// (or `timeout`), then SIGKILLs it. Whether it landed amid the operation's writes.
    fn kill_after_writes(&mut self, before: u64, k: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        let amid = loop {
            if self.begins_since(before) >= k {
                break true;
            }
            if start.elapsed() > timeout {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        self.kill_agent();
        if amid {
            self.report.kills_amid_writes += 1;
        }
        self.log(&format!("SIGKILL after write {k} of the operation (amid: {amid})"));
        amid
    }

    fn down_then_up(&mut self) {
        let down = self.rng.ms(0, 1000);
        std::thread::sleep(down);
        self.spawn_agent();
    }

    // ---- the config ------------------------------------------------------------------------

    fn write_config_text(&self, text: &str) {
        let dir = self.config_path.parent().expect("config dir");
        std::fs::create_dir_all(dir).expect("config dir");
        let tmp = dir.join(".config.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("swap config");
    }

    fn write_config(&mut self, sel: Selection) {
        self.sel = sel;
        self.write_config_text(&self.sel.text());
        // A new valid config binds what it selects again.
        self.taken.clear();
    }

    // ---- the cluster -----------------------------------------------------------------------

    fn get(&self, path: &str) -> Result<Value, String> {
        let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
        let client = self.client.clone();
        self.rt.block_on(async move {
            match tokio::time::timeout(Duration::from_secs(3), client.request::<Value>(req)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer in 3 s".to_owned()),
            }
        })
    }

    fn pod_phase(&self, name: &str) -> Option<String> {
        self.get(&format!("/api/v1/namespaces/default/pods/{name}"))
            .ok()
            .and_then(|p| p["status"]["phase"].as_str().map(str::to_owned))
    }

    fn pod_gone(&self, name: &str) -> bool {
        matches!(self.get(&format!("/api/v1/namespaces/default/pods/{name}")), Err(e) if e.contains("NotFound") || e.contains("not found"))
    }

    fn wait(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Soak) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("soak: timed out after {timeout:?} waiting for {what}");
        false
    }

    // ---- the invariants --------------------------------------------------------------------

    fn check(&self) -> Problems {
        let mut p: Problems = Vec::new();
        let root = &self.root;
        let all = devices_of(root);
        let drivers: BTreeMap<String, Option<String>> = all.iter().map(|a| (a.clone(), driver_of(root, a))).collect();
        let driver = |a: &str| drivers.get(a).cloned().flatten();
        let group_of: BTreeMap<String, Option<u32>> = all.iter().map(|a| (a.clone(), read_group(root, a))).collect();
        let usable = |a: &str| {
            let Some(g) = group_of.get(a).copied().flatten() else { return false };
            driver(a).as_deref() == Some(VFIO)
                && group_of.iter().filter(|(_, gg)| **gg == Some(g)).all(|(m, _)| driver(m).as_deref() == Some(VFIO))
                && root.join(format!("dev/vfio/{g}")).exists()
        };
        let records: BTreeSet<String> = std::fs::read_to_string(root.join("var/lib/nodeprep/bindings.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["devices"].as_object().map(|m| m.keys().cloned().collect()))
            .unwrap_or_default();
        let refused: BTreeMap<String, String> = std::fs::read_to_string(root.join("var/lib/nodeprep/status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["refusals"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let reason = r["reason"].as_str().unwrap_or_default();
                (!reason.is_empty()).then(|| (r["address"].as_str().unwrap_or_default().to_owned(), reason.to_owned()))
            })
            .collect();
        let registered: BTreeMap<String, BTreeSet<String>> = std::fs::read_to_string(CHECKPOINT)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["Data"]["RegisteredDevices"].as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(r, ids)| {
                let ids = ids.as_array().into_iter().flatten().filter_map(|i| i.as_str().map(str::to_owned)).collect();
                (r, ids)
            })
            .collect();
        let node = self.get(&format!("/api/v1/nodes/{NODE}"));
        let held = self.held.lock().expect("held").clone();
        // The kubelet writes its checkpoint on every ListAndWatch update: one older than the
        // last agent or kubelet start means no plugin has registered with this pair yet, and
        // what the checkpoint and the Node say is the previous one's.
        let written = std::fs::metadata(CHECKPOINT).and_then(|m| m.modified()).ok();
        if written.is_none_or(|w| w < self.plugins_since) {
            p.push((
                "capacity",
                "the kubelet has had no ListAndWatch update since the agent or the kubelet started".to_owned(),
            ));
        }

        // selected + capacity
        let resources = self.sel.resources();
        for (res, devs) in &resources {
            let reg = registered.get(*res).cloned().unwrap_or_default();
            let mut healthy = BTreeSet::new();
            for d in devs {
                let d = d.to_string();
                if self.taken.contains(&d) {
                    if reg.contains(&d) {
                        p.push((
                            "selected",
                            format!("{d} was unbound behind nodeprep's back, the kubelet still counts it healthy"),
                        ));
                    }
                } else if usable(&d) {
                    healthy.insert(d.clone());
                } else if !refused.contains_key(&d) {
                    p.push((
                        "selected",
                        format!(
                            "{d} ({res}) is on {}, not usable, and not refused with a reason",
                            driver(&d).unwrap_or("no driver".into())
                        ),
                    ));
                }
            }
            let node_right = node.as_ref().is_ok_and(|n| {
                let q = |f: &str| n["status"][f][*res].as_str().and_then(|q| q.parse::<usize>().ok());
                q("capacity") == Some(devs.len()) && q("allocatable") == Some(healthy.len())
            });
            if reg != healthy {
                // With the Node right, the kubelet's live view is right and only its file lags:
                // kubelet 1.37 snapshots every resource's healthy set under its lock and writes the
                // file after unlocking (`writeCheckpoint` in devicemanager/manager.go), so two
                // resources' updates at once can leave the older snapshot on disk until the next
                // update. Counted apart (`KUBELET_CHECKPOINT`), not as nodeprep's violation.
                let inv = if node_right { KUBELET_CHECKPOINT } else { "capacity" };
                p.push((inv, format!("{res}: the kubelet's checkpoint has {reg:?} healthy, usable are {healthy:?}")));
            }
            match &node {
                Ok(n) => {
                    let q = |f: &str| n["status"][f][*res].as_str().and_then(|q| q.parse::<usize>().ok());
                    let (cap, alloc) = (q("capacity"), q("allocatable"));
                    if cap != Some(devs.len()) || alloc != Some(healthy.len()) {
                        p.push((
                            "capacity",
                            format!(
                                "{res}: Node capacity/allocatable {cap:?}/{alloc:?}, want {}/{}",
                                devs.len(),
                                healthy.len()
                            ),
                        ));
                    }
                }
                Err(e) => p.push(("capacity", format!("cannot read the Node: {e}"))),
            }
        }

        // record
        for (a, drv) in &drivers {
            let native_vfio = self.native.get(a).cloned().flatten().as_deref() == Some(VFIO);
            if drv.as_deref() == Some(VFIO) && !native_vfio && !records.contains(a) {
                p.push(("record", format!("{a} is on vfio-pci without a record")));
            }
        }

        // labels
        if let Ok(n) = &node {
            let now = nodeprep_labels(n);
            if now != self.labels {
                p.push(("labels", format!("the Node has {now:?}, want {:?}", self.labels)));
            }
        }

        // held (the sampler watches all along; here once more)
        for (a, holder) in &held {
            if driver(a).as_deref() != Some(VFIO) {
                p.push(("held", format!("{a}, held by {holder}, is on {:?}", driver(a))));
            }
        }

        // dra
        let dra_fns = [GPU_B, GPU_B_AUDIO];
        for f in dra_fns {
            let (want, recorded) =
                if self.dra_prepared { (Some(VFIO.to_owned()), true) } else { (self.native[f].clone(), false) };
            if driver(f) != want {
                p.push((
                    "dra",
                    format!("{f} is on {:?}, want {want:?} (claim prepared: {})", driver(f), self.dra_prepared),
                ));
            }
            if records.contains(f) != recorded {
                p.push(("dra", format!("{f}: record {}, want {recorded}", records.contains(f))));
            }
        }
        let gpu = nodeprep::dra::devices::device_name(&GPU_B.parse().expect("address"));
        match self.get("/apis/resource.k8s.io/v1/resourceslices") {
            Ok(v) => {
                let listed =
                    v["items"].as_array().into_iter().flatten().filter(|s| s["spec"]["driver"] == DRA_DRIVER).any(
                        |s| s["spec"]["devices"].as_array().into_iter().flatten().any(|d| d["name"] == gpu.as_str()),
                    );
                if !listed {
                    p.push(("dra", format!("{gpu} is not in a ResourceSlice")));
                }
            }
            Err(e) => p.push(("dra", format!("cannot list ResourceSlices: {e}"))),
        }

        // giveback: what nodeprep should not hold any more is back on its own driver
        let selected = self.sel.selected();
        for (a, drv) in &drivers {
            let native = self.native.get(a).cloned().flatten();
            if native.as_deref() == Some(VFIO) || a == GPU_A {
                continue;
            }
            if selected.contains(a.as_str()) || held.contains_key(a) || dra_fns.contains(&a.as_str()) {
                continue;
            }
            if *drv != native || records.contains(a) {
                p.push((
                    "giveback",
                    format!(
                        "{a} is on {drv:?} with record {}, want {native:?} without (nothing selects or holds it)",
                        records.contains(a)
                    ),
                ));
            }
        }
        p
    }

    /// Panics when another cluster's kubelet runs on this machine: the kubelet's device-plugin
    /// directory is the fixed `/var/lib/kubelet/device-plugins`, and a second kubelet (another
    /// real-cluster test) wipes it, takes `kubelet.sock` and brings its own checkpoint: every
    /// figure after that would be about the two clusters fighting, not about nodeprep.
    fn no_foreign_kubelet(&self) {
        if self.isolated {
            return;
        }
        let mine = format!("--root-dir={}", self.c.kubelet_root.display());
        for e in std::fs::read_dir("/proc").into_iter().flatten().filter_map(|e| e.ok()) {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let kubelet =
                args.get(1).is_some_and(|a| a == "kubelet") && args.iter().any(|a| a.starts_with("--root-dir="));
            if kubelet && !args.contains(&mine) {
                panic!(
                    "another cluster's kubelet runs on this machine (pid {}): it shares /var/lib/kubelet/device-plugins with the soak's; run real-cluster tests one at a time",
                    e.file_name().to_string_lossy()
                );
            }
        }
    }

    /// Polls the invariants until they hold or [`CONVERGE_BOUND`] passes; records the time or
    /// the violations.
    fn converge(&mut self, kind: Kind) {
        self.no_foreign_kubelet();
        let start = Instant::now();
        let mut last;
        loop {
            self.agent_alive_or_restart();
            last = self.check();
            if last.is_empty() {
                let t = start.elapsed();
                self.report.convergence.push((kind, t));
                self.log(&format!("converged in {:.2} s", t.as_secs_f64()));
                return;
            }
            if start.elapsed() > CONVERGE_BOUND {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let round = self.round.load(Ordering::Relaxed);
        let mut seen = BTreeSet::new();
        let mut giveback_missed = false;
        for (inv, what) in last {
            if inv == KUBELET_CHECKPOINT {
                eprintln!(
                    "soak round {round} ({}): the kubelet's checkpoint file lags its live state: {what}",
                    kind.label()
                );
                self.report.kubelet_checkpoint_lags.push(format!("round {round} ({}): {what}", kind.label()));
                continue;
            }
            if inv == "giveback" {
                giveback_missed = true;
                if !giveback_strict() {
                    eprintln!("soak round {round} ({}): giveback (counted): {what}", kind.label());
                    continue;
                }
            }
            if seen.insert(inv) {
                *self.report.by_invariant.entry(inv).or_default() += 1;
            }
            let v = format!("round {round} ({}): {inv}: {what}", kind.label());
            eprintln!("soak VIOLATION {v}");
            self.report.violations.push(v);
        }
        if giveback_missed {
            self.report.giveback_misses += 1;
        }
        eprintln!("agent log:\n{}", tail(&self.agent_log(), 30));
        // One finding is enough: the kubelet and the agent start afresh, so the next rounds
        // measure their own faults, not this one's aftermath.
        self.report.resets += 1;
        self.kill_agent();
        self.report.kills -= 1;
        self.c.kill_kubelet();
        self.plugins_since = std::time::SystemTime::now();
        self.c.start_kubelet();
        self.spawn_agent();
        let start = Instant::now();
        while start.elapsed() < CONVERGE_BOUND && !self.check().is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // ---- the rounds ------------------------------------------------------------------------

    fn setup(&mut self) {
        self.write_config(Selection::full());
        self.c.create(&dra_template());
        self.spawn_agent();
        // The reference labels: what the agent puts on the Node once it is ready.
        let ok = self.wait("the Node labelled ready", WAIT, |s| {
            s.get(&format!("/api/v1/nodes/{NODE}"))
                .is_ok_and(|n| nodeprep_labels(&n).get("nodeprep.io/ready").is_some_and(|v| v == "true"))
        });
        assert!(ok, "the agent never labelled the Node ready:\n{}", tail(&self.agent_log(), 40));
        self.labels = nodeprep_labels(&self.get(&format!("/api/v1/nodes/{NODE}")).expect("the Node"));
        // A pod holding a QAT VF for the whole soak.
        self.c.create(&device_pod(QAT, "vm-qat", None));
        let ok = self.wait("vm-qat Running", WAIT, |s| s.pod_phase("vm-qat").as_deref() == Some("Running"));
        assert!(ok, "vm-qat never ran:\n{}", tail(&self.agent_log(), 40));
        let created = self.c.created_containers();
        let held = created
            .iter()
            .find(|r| r["sandboxConfig"]["metadata"]["name"] == "vm-qat")
            .and_then(|r| container_env(r, "PCIDEVICE_INTEL_COM_QAT_VF"))
            .unwrap_or_else(|| panic!("no CreateContainer for vm-qat with its VF: {created:?}"));
        self.log(&format!("vm-qat holds {held}"));
        self.held.lock().expect("held").insert(held, "pod vm-qat".to_owned());
        let start = Instant::now();
        loop {
            let p = self.check();
            if p.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "the invariants do not hold at the start: {p:#?}\n{}",
                tail(&self.agent_log(), 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Watches the held devices' drivers every 10 ms until `stop`.
    fn sampler(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let (held, out, round, root) =
            (self.held.clone(), self.held_violations.clone(), self.round.clone(), self.root.clone());
        std::thread::spawn(move || {
            let mut reported = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let now = held.lock().expect("held").clone();
                for (a, holder) in now {
                    let drv = driver_of(&root, &a);
                    if drv.as_deref() != Some(VFIO) && reported.insert((a.clone(), round.load(Ordering::Relaxed))) {
                        out.lock().expect("held violations").push(format!(
                            "round {}: {a}, held by {holder}, seen on {drv:?}",
                            round.load(Ordering::Relaxed)
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    /// Once the API is back: one of nodeprep's labels removed by hand, which the agent's Node
    /// watch (renewed after the outage) must see and put back.
    fn label_taken_away(&mut self) {
        let keys: Vec<String> = self.labels.keys().filter(|k| *k != "nodeprep.io/ready").cloned().collect();
        if let Some(k) = self.rng.pick(&keys) {
            self.log(&format!("label {k} removed by hand"));
            // The API server may still be settling (etcd just back): a few tries.
            for _ in 0..20 {
                if self.c.kubectl(&["label", "node", NODE, &format!("{k}-")]).status.success() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// A config change of its own: `a` selected or dropped, then the invariants awaited.
    fn toggle_and_converge(&mut self, a: &'static str) {
        self.fault(Kind::ConfigChange);
        let mut s = self.sel.clone();
        s.toggle(a);
        self.write_config(s);
        self.converge(Kind::ConfigChange);
    }

    /// `a` selected or dropped, and the agent SIGKILLed after the 1st to 3rd sysfs write of the
    /// bind or restore that follows; then it is started again.
    fn toggle_with_kill(&mut self, a: &'static str) {
        let mut s = self.sel.clone();
        s.toggle(a);
        let (before, k) = (self.journal_begins(), 1 + self.rng.below(3) as usize);
        self.write_config(s);
        self.kill_after_writes(before, k, Duration::from_secs(5));
        self.down_then_up();
    }

    fn round_of(&mut self, kind: Kind) {
        self.fault(kind);
        match kind {
            Kind::KillIdle => {
                std::thread::sleep(self.rng.ms(0, 2000));
                self.kill_agent();
                self.down_then_up();
            }
            Kind::KillMidBind => {
                let add = self.sel.addable();
                if add.is_empty() {
                    // Nothing to bind: drop one first (a config change of its own).
                    let drop = self.rng.pick(&self.sel.droppable()).expect("something to drop");
                    self.toggle_and_converge(drop);
                }
                let a = self.rng.pick(&self.sel.addable()).expect("something to add");
                self.log(&format!("adding {a}, SIGKILL amid its bind"));
                self.toggle_with_kill(a);
            }
            Kind::KillMidRestore => {
                let unheld: Vec<&'static str> = {
                    let held = self.held.lock().expect("held");
                    self.sel
                        .droppable()
                        .into_iter()
                        .filter(|a| !held.contains_key(*a) && !self.taken.contains(*a))
                        .collect()
                };
                let unheld = if unheld.is_empty() {
                    // Nothing to restore: add one first (a config change of its own).
                    let add = self.rng.pick(&self.sel.addable()).expect("something to add");
                    self.toggle_and_converge(add);
                    vec![add]
                } else {
                    unheld
                };
                let a = self.rng.pick(&unheld).expect("something to drop");
                self.log(&format!("dropping {a}, SIGKILL amid its restore"));
                self.toggle_with_kill(a);
            }
            Kind::KillMidPrepare => {
                self.dra_pods += 1;
                let pod = format!("vm-gpu-{}", self.dra_pods);
                let (before, k) = (self.journal_begins(), 1 + self.rng.below(6) as usize);
                self.c.create(&claim_pod(&pod));
                self.log(&format!("{pod} created, SIGKILL after write {k} of its Prepare"));
                self.kill_after_writes(before, k, Duration::from_secs(20));
                self.down_then_up();
                let running =
                    self.wait(&format!("{pod} Running"), WAIT, |s| s.pod_phase(&pod).as_deref() == Some("Running"));
                if running {
                    self.dra_prepared = true;
                    let mut held = self.held.lock().expect("held");
                    for f in [GPU_B, GPU_B_AUDIO] {
                        held.insert(f.to_owned(), format!("the claim of {pod}"));
                    }
                } else {
                    let v = format!(
                        "round {} ({}): dra: {pod} never ran after the agent was killed amid its Prepare",
                        self.round.load(Ordering::Relaxed),
                        kind.label()
                    );
                    eprintln!("soak VIOLATION {v}\n{}", tail(&self.agent_log(), 30));
                    *self.report.by_invariant.entry("dra").or_default() += 1;
                    self.report.violations.push(v);
                }
                self.converge(kind);
                // The pod goes; half the time the agent is killed amid the Unprepare.
                {
                    let mut held = self.held.lock().expect("held");
                    held.remove(GPU_B);
                    held.remove(GPU_B_AUDIO);
                }
                let (before, k) = (self.journal_begins(), 1 + self.rng.below(6) as usize);
                self.c.kubectl_ok(&["delete", "pod", &pod, "--wait=false"]);
                if self.rng.chance(2) {
                    self.fault(kind);
                    self.log(&format!("{pod} deleted, SIGKILL after write {k} of its Unprepare"));
                    self.kill_after_writes(before, k, Duration::from_secs(20));
                    self.down_then_up();
                }
                self.wait(&format!("{pod} gone"), WAIT, |s| s.pod_gone(&pod));
                self.dra_prepared = false;
            }
            Kind::KubeletRestart => {
                self.c.kill_kubelet();
                std::thread::sleep(self.rng.ms(0, 1000));
                self.plugins_since = std::time::SystemTime::now();
                self.c.start_kubelet();
            }
            Kind::ApiServerRestart => {
                self.c.stop_apiserver();
                std::thread::sleep(self.rng.ms(0, 2000));
                self.c.start_apiserver();
                self.label_taken_away();
            }
            Kind::EtcdStop => {
                self.c.stop_etcd();
                std::thread::sleep(self.rng.ms(2000, 6000));
                self.c.start_etcd();
                self.label_taken_away();
            }
            Kind::UnbindBehind => {
                let candidates: Vec<String> = {
                    let held = self.held.lock().expect("held");
                    self.sel
                        .selected()
                        .into_iter()
                        .filter(|a| !held.contains_key(*a) && driver_of(&self.root, a).as_deref() == Some(VFIO))
                        .map(str::to_owned)
                        .collect()
                };
                if let Some(a) = self.rng.pick(&candidates) {
                    self.log(&format!("{a} unbound from vfio-pci behind nodeprep's back"));
                    // Not `persisted`: that settles the tree, and nothing here was killed.
                    let mut k = KernelSim::at(&self.root);
                    let unbind = self.root.join("sys/bus/pci/drivers/vfio-pci/unbind");
                    k.write(&unbind, &a).expect("unbind behind nodeprep's back");
                    self.taken.insert(a);
                }
            }
            Kind::ConfigChange => {
                if self.rng.chance(4) {
                    self.report.invalid_configs += 1;
                    self.log("an invalid config");
                    self.write_config_text(INVALID_CONFIG);
                    std::thread::sleep(Duration::from_millis(1500));
                    // Refused; the last good config keeps running.
                    self.converge(kind);
                }
                let mut s = self.sel.clone();
                let choices: Vec<&'static str> = self.sel.addable().into_iter().chain(self.sel.droppable()).collect();
                let a = self.rng.pick(&choices).expect("a device to toggle");
                s.toggle(a);
                self.log(&format!("config change: toggling {a}"));
                self.write_config(s);
            }
        }
        self.converge(kind);
    }

    fn run(mut self, plan: Plan) -> Report {
        let setup = Instant::now();
        self.setup();
        self.report.setup = setup.elapsed();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = self.sampler(stop.clone());
        let start = Instant::now();
        let kinds: Vec<Kind> = match plan {
            Plan::Fixed(k) => k,
            Plan::Random(n) => {
                let total: u64 = Kind::ALL.iter().map(|k| k.weight()).sum();
                (0..n)
                    .map(|_| {
                        let mut x = self.rng.below(total);
                        *Kind::ALL
                            .iter()
                            .find(|k| {
                                if x < k.weight() {
                                    true
                                } else {
                                    x -= k.weight();
                                    false
                                }
                            })
                            .expect("a kind")
                    })
                    .collect()
            }
        };
        for (i, kind) in kinds.iter().enumerate() {
            self.round.store(i + 1, Ordering::Relaxed);
            let t = Instant::now();
            self.round_of(*kind);
            self.report.rounds += 1;
            if self.verbose {
                eprintln!(
                    "soak round {} of {}: {} done in {:.1} s",
                    i + 1,
                    kinds.len(),
                    kind.label(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        for v in self.held_violations.lock().expect("held violations").iter() {
            *self.report.by_invariant.entry("held").or_default() += 1;
            self.report.violations.push(format!("held: {v}"));
        }
        self.report.wall = start.elapsed();
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if !self.report.violations.is_empty() || std::env::var_os("NODEPREP_SOAK_KEEP").is_some() {
            // Keep the evidence.
            for name in ["kubelet", "kube-apiserver", "etcd", "kube-scheduler", "kube-controller-manager", "fake-cri"] {
                let _ = std::fs::write(self.dir.path().join(format!("{name}.log")), self.c.log(name));
            }
            let keep =
                self.dir.path().with_extension(if self.report.violations.is_empty() { "kept" } else { "failed" });
            let _ = std::fs::remove_dir_all(&keep);
            let _ = std::fs::rename(self.dir.path(), &keep);
            eprintln!("soak: agent log and kernel journal kept in {}", keep.display());
        }
        std::mem::take(&mut self.report)
    }
}

/// Runs the soak: the cluster, the fixture host, the agent, the rounds; returns what it saw.
pub fn run(opts: SoakOptions) -> Report {
    let plan = opts.plan.clone();
    Soak::start(&opts).run(plan)
}
