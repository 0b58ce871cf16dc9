//! nodeprep's DRA driver against the upstream components (API server and kubelet built from
//! source, `tests/support/k8s.rs`): the agent runs in this process (`tests/support/inprocess.rs`)
//! as the `nodeprep` ServiceAccount with a node-bound token, under `daemonset/`'s RBAC and
//! admission policy, over a fixture host (`intel_gpu_server`) with a DRA config offering the
//! Quadro (`0000:af:00.0`, with its audio function) and the NVMe disk.
//!
//! Prints:
//! 1. **uevent → ResourceSlice**, over `NODEPREP_DRA_ROUNDS` rounds (30 by default): each round
//!    the Quadro's primary function disappears from the fixture (its sysfs directory and its
//!    `sys/bus/pci/devices` link), or comes back, then one real kernel uevent is sent (`change`
//!    written to this machine's first PCI device's `uevent` file: the agent hears it on its
//!    netlink socket and rescans the fixture) at t0; measured until a watch on ResourceSlices
//!    (the admin's, in this process) sees the slice with the new device list. p50/p99 of the
//!    whole, and of its legs from the agent's log (captured in this process, each line stamped
//!    as written): t0 → the monitor heard the uevent, t0 → the agent's apply was answered, and
//!    the API server's own time in those applies (its audit log's timestamps). Also
//!    the agent's API requests and writes per round, rounds and failures (no slice change within
//!    10 s: the round is retried with another uevent; one that never converges panics).
//! 2. **API traffic**, from the API server's audit log (the agent's user,
//!    `system:serviceaccount:nodeprep:nodeprep`): at start until the first publish (+5 s);
//!    idle over `NODEPREP_DRA_IDLE_SECS` (300 by default) with nothing changing, watch (re)opens
//!    apart (goal: 0 writes); around a kubelet restart (SIGKILL, start: the kubelet deletes every
//!    slice of its node when it starts, the agent applies them again), with the time from the
//!    kubelet's start to the wipe and from the wipe to the slices being back.
//!
//! Anything that never converges panics with the agent's log; the cluster's logs are then kept.
//! `NODEPREP_DRA_LOG=<file>` writes the agent's log there (each line with its time since the
//! agent's start, and the rounds' marks).
//!
//! `cargo bench --bench dra`.

#[path = "dra_prepare.rs"]
mod prepare;
#[path = "../tests/realkernel/mod.rs"]
mod realkernel;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams};
use support::inprocess::InProcessAgent;
use support::k8s::{Audited, Cluster, NODE, Spec};
use support::machines::intel::{GPU_B, NVME};
use tokio_stream::StreamExt;

const DRIVER: &str = "vfio.nodeprep.io";
const SA_USER: &str = "system:serviceaccount:nodeprep:nodeprep";
/// How long anything may take to converge before the benchmark fails.
const WAIT: Duration = Duration::from_secs(60);
/// A round whose slice has not changed by then counts as failed (and is retried).
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after a change, so the next measurement starts from rest.
const SETTLE: Duration = Duration::from_secs(5);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn config() -> String {
    format!(
        "dra:\n  devices:\n    - resourceName: nvidia.com/quadro\n      selectors: {{pciAddresses: [\"{GPU_B}\"]}}\n    - resourceName: nodeprep.io/nvme\n      selectors: {{pciAddresses: [\"{NVME}\"]}}\n"
    )
}

// ---- the agent's log, captured in this process ------------------------------------------------

/// Every line the process logs (the in-process agent's, the only tracing user here), each with
/// the instant it was written.
#[derive(Clone, Default)]
struct AgentLog(Arc<Mutex<Vec<(Instant, String)>>>);

/// One event's line: `tracing_subscriber::fmt` formats an event, then writes it whole.
struct LogLine {
    log: AgentLog,
    at: Instant,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf).trim_end().to_owned();
        self.log.0.lock().expect("log").push((self.at, text));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AgentLog {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine { log: self.clone(), at: Instant::now(), buf: Vec::new() }
    }
}

impl AgentLog {
    /// Captures this process's tracing: nodeprep at debug (the monitor's "host change"), the
    /// rest (kube, hyper, tonic) at info.
    fn install() -> AgentLog {
        use tracing_subscriber::prelude::*;
        let log = AgentLog::default();
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("nodeprep", tracing::Level::DEBUG)
            .with_default(tracing::Level::INFO);
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(log.clone()))
            .with(targets)
            .init();
        log
    }

    /// When the first line at or after `after` containing `needle` was written.
    fn first_after(&self, after: Instant, needle: &str) -> Option<Instant> {
        self.0.lock().expect("log").iter().find(|(at, l)| *at >= after && l.contains(needle)).map(|(at, _)| *at)
    }

    /// [`first_after`](Self::first_after), waiting up to `timeout` for the line (the watch may
    /// see a write before the agent has read the answer to it).
    fn wait_first_after(&self, after: Instant, needle: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.first_after(after, needle) {
                return Some(at);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn count_after(&self, after: Instant, needle: &str) -> usize {
        self.0.lock().expect("log").iter().filter(|(at, l)| *at >= after && l.contains(needle)).count()
    }

    /// The last `n` lines.
    fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().expect("log");
        lines[lines.len().saturating_sub(n)..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Writes every line, each after the milliseconds since `origin` it was written at.
    fn write_to(&self, path: &Path, origin: Instant) {
        let text: String = self
            .0
            .lock()
            .expect("log")
            .iter()
            .map(|(at, l)| format!("+{:.3} ms {l}\n", at.checked_duration_since(origin).map_or(-1.0, ms)))
            .collect();
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Panics with `what` and the agent's log.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n---- the agent's log (last 150 lines) ----\n{}", self.tail(150))
    }
}

// ---- the admin's watch on ResourceSlices -------------------------------------------------------

/// The driver's slices as the watch showed them after one event.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    /// The event was a deletion.
    deleted: bool,
    /// The devices of every slice, by name.
    devices: BTreeSet<String>,
    slices: usize,
    /// The highest `spec.pool.generation`.
    generation: i64,
}

/// A watch on the driver's ResourceSlices, on a thread and runtime of its own (not the
/// agent's), recording every event with the instant it arrived.
#[derive(Clone, Default)]
struct SliceWatch {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lists and watches that failed (each followed by a fresh list).
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

type Slices = BTreeMap<String, (Vec<String>, i64)>;

fn slice_entry(obj: &DynamicObject) -> Option<(String, (Vec<String>, i64))> {
    let name = obj.metadata.name.clone()?;
    let spec = obj.data.get("spec")?;
    let devices = spec["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect();
    Some((name, (devices, spec["pool"]["generation"].as_i64().unwrap_or(0))))
}

impl SliceWatch {
    fn start(kubeconfig: PathBuf) -> SliceWatch {
        let w = SliceWatch::default();
        let runner = w.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(runner.run(kubeconfig));
        });
        w
    }

    fn record(&self, slices: &Slices, deleted: bool) {
        let seen = Seen {
            at: Instant::now(),
            deleted,
            devices: slices.values().flat_map(|(d, _)| d.iter().cloned()).collect(),
            slices: slices.len(),
            generation: slices.values().map(|(_, g)| *g).max().unwrap_or(0),
        };
        self.seen.lock().expect("seen").push(seen);
    }

    async fn run(self, kubeconfig: PathBuf) {
        let client = nodeprep::cluster::connect(&nodeprep::cluster::Source::Kubeconfig(kubeconfig))
            .await
            .expect("the admin's client");
        let api: Api<DynamicObject> = Api::all_with(client, &nodeprep::cluster::slices::resource_slice_api());
        let fields = format!("spec.driver={DRIVER}");
        let pause = || tokio::time::sleep(Duration::from_millis(100));
        'list: while !self.stop.load(Ordering::Relaxed) {
            let list = match api.list(&ListParams::default().fields(&fields)).await {
                Ok(l) => l,
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    pause().await;
                    continue;
                }
            };
            let mut slices: Slices = list.items.iter().filter_map(slice_entry).collect();
            self.record(&slices, false);
            let mut rv = list.metadata.resource_version.unwrap_or_default();
            while !self.stop.load(Ordering::Relaxed) {
                let wp = WatchParams::default().fields(&fields).timeout(290);
                let mut events = match api.watch(&wp, &rv).await {
                    Ok(s) => Box::pin(s),
                    Err(_) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                        pause().await;
                        continue 'list;
                    }
                };
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                            rv = o.metadata.resource_version.clone().unwrap_or(rv);
                            if let Some((name, entry)) = slice_entry(&o) {
                                slices.insert(name, entry);
                            }
                            self.record(&slices, false);
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            rv = o.metadata.resource_version.clone().unwrap_or(rv);
                            if let Some(name) = &o.metadata.name {
                                slices.remove(name);
                            }
                            self.record(&slices, true);
                        }
                        Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                        Ok(WatchEvent::Error(_)) | Err(_) => {
                            self.errors.fetch_add(1, Ordering::Relaxed);
                            pause().await;
                            continue 'list;
                        }
                    }
                }
            }
        }
    }

    /// The first state seen at or after `after` for which `want` holds, waiting up to `timeout`.
    fn wait(&self, after: Instant, timeout: Duration, want: impl Fn(&Seen) -> bool) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.seen.lock().expect("seen").iter().find(|s| s.at >= after && want(s)) {
                return Some(s.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn last(&self) -> Option<Seen> {
        self.seen.lock().expect("seen").last().cloned()
    }
}

// ---- the agent's counters and the audit log ----------------------------------------------------

/// The agent's unlabelled `/metrics` samples.
fn metrics(listen: SocketAddr) -> BTreeMap<String, f64> {
    let mut text = String::new();
    let answered = TcpStream::connect_timeout(&listen, Duration::from_secs(1)).and_then(|mut s| {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        s.read_to_string(&mut text)
    });
    answered.unwrap_or_else(|e| panic!("the agent's /metrics on {listen}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// (requests, writes) the agent says it sent, from `/metrics`.
fn api_stats(listen: SocketAddr) -> (u64, u64) {
    let m = metrics(listen);
    let get = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no {k} in the agent's /metrics: {m:?}")) as u64;
    (get("nodeprep_api_requests_total"), get("nodeprep_api_writes_total"))
}

/// The agent's requests in an audit window.
struct Traffic {
    /// Everything but watches.
    requests: usize,
    /// Watches opened (or renewed).
    watches: usize,
    writes: usize,
    /// Writes by `verb resource`.
    writes_by: BTreeMap<String, usize>,
}

impl Traffic {
    fn of(audit: &[Audited]) -> Traffic {
        let mine: Vec<&Audited> = audit.iter().filter(|a| a.user == SA_USER).collect();
        let mut writes_by = BTreeMap::new();
        for a in mine.iter().filter(|a| a.is_write()) {
            *writes_by.entry(format!("{} {}", a.verb, a.resource)).or_insert(0) += 1;
        }
        Traffic {
            requests: mine.iter().filter(|a| a.verb != "watch").count(),
            watches: mine.iter().filter(|a| a.verb == "watch").count(),
            writes: mine.iter().filter(|a| a.is_write()).count(),
            writes_by,
        }
    }

    fn writes_detail(&self) -> String {
        if self.writes_by.is_empty() {
            return "none".into();
        }
        self.writes_by.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
    }
}

/// Seconds since the epoch of an audit timestamp (`2025-11-30T15:09:12.123456Z`, UTC).
fn audit_time(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let mut t = time.split(':');
    let (h, min, sec) =
        (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + sec)
}

fn epoch_secs(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// How long the API server took over each of the agent's ResourceSlice writes received between
/// `from` and `to` (its audit log: `stageTimestamp` of `ResponseComplete` minus
/// `requestReceivedTimestamp`, microseconds).
fn server_write_times(c: &Cluster, from: std::time::SystemTime, to: std::time::SystemTime) -> Vec<Duration> {
    let text = std::fs::read_to_string(c.dir.path().join("audit.log")).unwrap_or_default();
    let (from, to) = (epoch_secs(from), epoch_secs(to));
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["user"]["username"] == SA_USER
                && e["objectRef"]["resource"] == "resourceslices"
                && matches!(e["verb"].as_str(), Some("patch" | "create" | "update" | "delete"))
        })
        .filter_map(|e| {
            let received = audit_time(e["requestReceivedTimestamp"].as_str()?)?;
            let done = audit_time(e["stageTimestamp"].as_str()?)?;
            (received >= from && received <= to).then(|| Duration::from_secs_f64((done - received).max(0.0)))
        })
        .collect()
}

// ---- the fixture change -------------------------------------------------------------------------

/// A PCI function taken out of the fixture and put back as a hot-unplug and replug would: its
/// sysfs directory (moved aside, so it comes back as it was) and its `sys/bus/pci/devices` link.
struct Unplug {
    dir: PathBuf,
    aside: PathBuf,
    link: PathBuf,
    target: PathBuf,
}

impl Unplug {
    fn new(tree: &support::HostTree, addr: &str) -> Unplug {
        let link = tree.path(format!("sys/bus/pci/devices/{addr}"));
        let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
        Unplug { dir: tree.path(tree.pci_dir(addr)), aside: tree.path(format!("unplugged-{addr}")), link, target }
    }

    fn remove(&self) {
        std::fs::rename(&self.dir, &self.aside).expect("move the device's directory aside");
        std::fs::remove_file(&self.link).expect("remove its bus link");
    }

    fn restore(&self) {
        std::fs::rename(&self.aside, &self.dir).expect("put the device's directory back");
        std::os::unix::fs::symlink(&self.target, &self.link).expect("its bus link");
    }
}

/// This machine's first PCI device's `uevent` file: writing `change` makes the kernel multicast
/// a PCI `change` uevent, which the agent's monitor takes as a reason to rescan.
fn uevent_file() -> PathBuf {
    let mut devices: Vec<PathBuf> = std::fs::read_dir("/sys/bus/pci/devices")
        .expect("this machine's /sys/bus/pci/devices")
        .filter_map(|e| e.ok().map(|e| e.path().join("uevent")))
        .collect();
    devices.sort();
    devices.into_iter().next().expect("this machine has a PCI device to send uevents for")
}

fn send_uevent(file: &Path) {
    std::fs::write(file, "change").unwrap_or_else(|e| panic!("write change to {}: {e}", file.display()));
}

// ---- figures -------------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "p50 x ms, p99 y ms (n)" of `samples`.
fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    let mut v = samples.to_vec();
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn main() {
    // Prepare's latency first (fixture and VM), then the real cluster.
    prepare::run();
    let rounds = env("NODEPREP_DRA_ROUNDS", 30) as usize;
    let idle = Duration::from_secs(env("NODEPREP_DRA_IDLE_SECS", 300));
    assert!(rounds > 0, "NODEPREP_DRA_ROUNDS must be at least 1");
    let log = AgentLog::install();
    let uevent = uevent_file();

    let mut c = Cluster::start(Spec { kubelet: true, controllers: false });
    c.kubectl_ok(&["apply", "-k", &Path::new(env!("CARGO_MANIFEST_DIR")).join("daemonset").display().to_string()]);
    // The DaemonSet would run a second agent in the fake runtime: this process is the agent.
    c.kubectl_ok(&["-n", "nodeprep", "delete", "daemonset", "nodeprep"]);
    let kubeconfig = c.pod_bound_kubeconfig("nodeprep", "nodeprep", NODE);
    let tree = support::intel_gpu_server();
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config_path = config_dir.path().join("config.yaml");
    std::fs::write(&config_path, config()).expect("config");
    let gpu = nodeprep::dra::devices::device_name(&GPU_B.parse().expect("address"));
    let nvme = nodeprep::dra::devices::device_name(&NVME.parse().expect("address"));
    let all: BTreeSet<String> = [gpu.clone(), nvme.clone()].into();
    let without_gpu: BTreeSet<String> = [nvme.clone()].into();
    let watching = Instant::now();
    let watch = SliceWatch::start(c.admin_kubeconfig());
    watch.wait(watching, WAIT, |_| true).unwrap_or_else(|| {
        panic!("the admin's watch never listed ResourceSlices ({} errors)", watch.errors.load(Ordering::Relaxed))
    });

    // Start: the first publication.
    let audit_start = c.audit().len();
    let started = Instant::now();
    let agent = InProcessAgent::start(tree.root(), &config_path, &kubeconfig, &c);
    let first = watch
        .wait(started, WAIT, |s| s.devices == all && s.slices == 1)
        .unwrap_or_else(|| log.fail(&format!("the first ResourceSlice never appeared: {:?}", watch.last())));
    std::thread::sleep(SETTLE);
    let audit = c.audit();
    let start_traffic = Traffic::of(&audit[audit_start..]);

    // 1. uevent -> slice.
    let unplug = Unplug::new(&tree, GPU_B);
    let (mut e2e, mut heard, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    let mut failures = 0;
    let audit_rounds = c.audit().len();
    let rounds_from = std::time::SystemTime::now();
    let (requests0, writes0) = api_stats(agent.listen);
    let errors0 = watch.errors.load(Ordering::Relaxed);
    for round in 0..rounds {
        let unplugging = round % 2 == 0;
        if unplugging {
            unplug.remove();
        } else {
            unplug.restore();
        }
        let want = if unplugging { &without_gpu } else { &all };
        let matches = |s: &Seen| &s.devices == want && s.slices == 1;
        let t0 = Instant::now();
        send_uevent(&uevent);
        tracing::info!(target: "dra_bench", round, unplugging, "uevent sent");
        match watch.wait(t0, ROUND_TIMEOUT, matches) {
            Some(s) => {
                e2e.push(s.at - t0);
                // Legs from the agent's log; only when they fall inside the round.
                if let Some(h) = log.first_after(t0, "host change").filter(|h| *h <= s.at) {
                    heard.push(h - t0);
                }
                if let Some(p) = log.wait_first_after(t0, "resource slices published", Duration::from_secs(2)) {
                    answered.push(p - t0);
                }
            }
            None => {
                failures += 1;
                eprintln!("round {round}: no slice change {ROUND_TIMEOUT:?} after the uevent; another uevent");
                let t1 = Instant::now();
                send_uevent(&uevent);
                if watch.wait(t1, WAIT, matches).is_none() {
                    log.fail(&format!(
                        "round {round}: the slice never showed {want:?} (last seen: {:?})",
                        watch.last()
                    ));
                }
            }
        }
        // Let trailing events (the agent's own watch echo) pass before the next round.
        std::thread::sleep(Duration::from_millis(300));
    }
    if rounds % 2 == 1 {
        // An odd number of rounds ends with the GPU unplugged: back, for what follows.
        unplug.restore();
        let t0 = Instant::now();
        send_uevent(&uevent);
        watch
            .wait(t0, WAIT, |s| s.devices == all && s.slices == 1)
            .unwrap_or_else(|| log.fail("the GPU never came back"));
    }
    let rounds_to = std::time::SystemTime::now();
    std::thread::sleep(SETTLE);
    let (requests1, writes1) = api_stats(agent.listen);
    let server = server_write_times(&c, rounds_from, rounds_to);
    let audit = c.audit();
    let rounds_traffic = Traffic::of(&audit[audit_rounds..]);
    let watch_errors = watch.errors.load(Ordering::Relaxed) - errors0;
    assert!(e2e.len() > rounds / 2, "fewer than half the rounds measured: {} of {rounds}", e2e.len());

    // 2. Idle: nothing changes.
    let audit_idle = c.audit().len();
    let (idle_requests0, idle_writes0) = api_stats(agent.listen);
    let generation_before_idle = watch.last().map(|s| s.generation);
    std::thread::sleep(idle);
    let (idle_requests1, idle_writes1) = api_stats(agent.listen);
    let audit = c.audit();
    let idle_traffic = Traffic::of(&audit[audit_idle..]);
    let generation_after_idle = watch.last().map(|s| s.generation);
    if !agent.running() {
        log.fail("the agent stopped while idle");
    }

    // 3. A kubelet restart: it deletes the node's slices when it starts; the agent puts them back.
    let audit_restart = c.audit().len();
    c.kill_kubelet();
    let kubelet_started = c.start_kubelet();
    let wiped = watch.wait(kubelet_started, WAIT, |s| s.deleted);
    let back = wiped.as_ref().map(|w| {
        watch
            .wait(w.at, WAIT, |s| s.devices == all && s.slices == 1)
            .unwrap_or_else(|| log.fail("the slices never came back after the kubelet's wipe"))
    });
    c.wait_node_ready();
    std::thread::sleep(SETTLE);
    let audit = c.audit();
    let restart_traffic = Traffic::of(&audit[audit_restart..]);
    let republished = log.count_after(kubelet_started, "resource slices published");

    // Figures.
    println!("nodeprep DRA driver, upstream API server and kubelet, agent in-process over intel_gpu_server");
    println!(
        "start: first ResourceSlice {:.0} ms after the agent started; agent {} requests + {} watches, {} writes ({})",
        ms(first.at - started),
        start_traffic.requests,
        start_traffic.watches,
        start_traffic.writes,
        start_traffic.writes_detail()
    );
    println!(
        "1. uevent -> ResourceSlice changed in the API server (the admin's watch), GPU unplugged / replugged alternately:"
    );
    println!("   rounds {rounds}, failures {failures}, admin watch errors {watch_errors}");
    println!("   uevent -> slice seen by a watch:           {}", summary(&e2e));
    println!("   of which uevent -> agent heard it:         {}", summary(&heard));
    println!("   of which uevent -> agent's apply answered: {}", summary(&answered));
    println!("   the API server's time in those applies:    {} (its audit log)", summary(&server));
    println!(
        "   agent API per round (its counters): {:.2} requests, {:.2} writes; audit over the rounds: {} requests + {} watches, {} writes ({})",
        (requests1 - requests0) as f64 / rounds as f64,
        (writes1 - writes0) as f64 / rounds as f64,
        rounds_traffic.requests,
        rounds_traffic.watches,
        rounds_traffic.writes,
        rounds_traffic.writes_detail()
    );
    println!(
        "2. idle {} s: agent {} requests (watch renewals apart), {} watch (re)opens, {} writes ({}) (goal 0); its counters: {} requests, {} writes; pool generation {:?} -> {:?}",
        idle.as_secs(),
        idle_traffic.requests,
        idle_traffic.watches,
        idle_traffic.writes,
        idle_traffic.writes_detail(),
        idle_requests1 - idle_requests0,
        idle_writes1 - idle_writes0,
        generation_before_idle,
        generation_after_idle
    );
    match (&wiped, &back) {
        (Some(w), Some(b)) => println!(
            "3. kubelet restart: wipe seen {:.0} ms after the kubelet started; slices back {:.1} ms after the wipe ({:.0} ms after the start); agent {} requests + {} watches, {} writes ({}), {} publications",
            ms(w.at - kubelet_started),
            ms(b.at - w.at),
            ms(b.at - kubelet_started),
            restart_traffic.requests,
            restart_traffic.watches,
            restart_traffic.writes,
            restart_traffic.writes_detail(),
            republished
        ),
        _ => println!(
            "3. kubelet restart: the kubelet deleted no slice within {WAIT:?} of its start; agent {} requests + {} watches, {} writes ({})",
            restart_traffic.requests,
            restart_traffic.watches,
            restart_traffic.writes,
            restart_traffic.writes_detail()
        ),
    }
    let refused: Vec<String> = audit[audit_start..]
        .iter()
        .filter(|a| a.user == SA_USER && a.code >= 400)
        .map(|a| format!("{} {} -> {}", a.verb, a.uri, a.code))
        .collect();
    println!("agent requests answered with an error: {} {refused:?}", refused.len());

    if let Ok(path) = std::env::var("NODEPREP_DRA_LOG") {
        log.write_to(Path::new(&path), started);
        println!("the agent's log: {path}");
    }
    watch.stop.store(true, Ordering::Relaxed);
    if failures > 0 || !agent.running() {
        log.fail(&format!("{failures} of {rounds} rounds failed; agent running: {}", agent.running()));
    }
    drop(agent);
}
