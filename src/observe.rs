//! What the agent shows operators on a small HTTP port: `/healthz` (the agent loop is alive),
//! `/readyz` (every device plugin is registered and, with a cluster, the node labels applied) and `/metrics` (Prometheus text format 0.0.4).
//!
//! Three layers, as elsewhere in the crate:
//! - [`Observer`]: a shared handle the agent updates as things happen (binds, config reloads,
//!   plugin and device changes, its loop's heartbeat) and the server reads; [`Observer::snapshot`]
//!   copies it into an [`AgentStatus`], plain data;
//! - pure renderers over that data: [`render_metrics`], [`healthz`], [`readyz`];
//! - [`serve`]: a minimal HTTP/1.1 responder on a [`TcpListener`]. GET only, one request per
//!   connection (`Connection: close`), the request head at most 4 KiB and received within 5 s
//!   (a client that sends nothing, or too slowly, holds one connection task until then and never
//!   blocks another client), at most 64 connections at once (more are closed at once, so a flood
//!   cannot take the file descriptors the device-plugin sockets need). Other paths get 404, other
//!   methods on the three paths 405.
//!
//! With a cluster, `/readyz` also requires the node labels to be applied, and the API traffic
//! (requests, writes, failures) is counted.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::bind::DeviceOutcome;
use crate::cluster::ApiStats;
use crate::deviceplugin::PluginStatus;
use crate::deviceplugin::devices::ResourceDevices;
use crate::deviceplugin::monitor::{MonitorStats, StatsSnapshot};

/// The port the agent listens on by default (`--listen 0.0.0.0:9437`).
pub const DEFAULT_PORT: u16 = 9437;
/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of every other answer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// One device plugin, as `/readyz` and `/metrics` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginState {
    pub resource_name: String,
    pub registered: bool,
    pub serving: bool,
    pub open_streams: usize,
    /// The last registration or serving problem, shown by `/readyz`.
    pub last_error: Option<String>,
}

impl From<&PluginStatus> for PluginState {
    fn from(s: &PluginStatus) -> Self {
        PluginState {
            resource_name: s.resource_name.clone(),
            registered: s.registered,
            serving: s.serving,
            open_streams: s.open_streams,
            last_error: s.last_error.clone(),
        }
    }
}

/// Devices of one resource by health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub healthy: u64,
    pub unhealthy: u64,
}

/// Bind outcomes since the agent started. `rolled-back` counts as failed; `left`, `forgotten`
/// and `gone` (nothing done) are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindCounts {
    pub bound: u64,
    pub already_bound: u64,
    pub refused: u64,
    pub failed: u64,
    pub restored: u64,
}

/// Config reloads since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// A new valid config was taken.
    pub ok: u64,
    /// A new config failed validation; the last good one kept running.
    pub refused: u64,
}

/// Everything the endpoints show, copied at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// The agent loop's last heartbeat.
    pub loop_alive_at: Instant,
    /// The device plugins; `None` until the agent has started them.
    pub plugins: Option<Vec<PluginState>>,
    /// Devices of each PCI resource by health.
    pub devices: BTreeMap<String, DeviceCounts>,
    pub binds: BindCounts,
    /// The device monitor's counters (zero until the monitor is set).
    pub monitor: StatsSnapshot,
    /// New device lists published to the plugins; each goes out on every open `ListAndWatch`
    /// stream whose resource changed.
    pub listandwatch_updates: u64,
    pub config_reloads: ReloadCounts,
    /// Kubernetes API requests, writes among them, and failed ones.
    pub api_requests: u64,
    pub api_writes: u64,
    pub api_failures: u64,
    /// The node labels: `None` without a cluster (nothing to apply), else whether the Node
    /// carries them.
    pub labels_applied: Option<bool>,
    /// Devices the config no longer wants on vfio-pci that a pod or claim still holds.
    pub pending_release: u64,
    /// The node is cordoned or under a NodeMaintenance.
    pub maintenance: bool,
}

impl AgentStatus {
    /// Nothing happened yet; the loop was alive at `loop_alive_at`.
    pub fn new(loop_alive_at: Instant) -> Self {
        AgentStatus {
            loop_alive_at,
            plugins: None,
            devices: BTreeMap::new(),
            binds: BindCounts::default(),
            monitor: StatsSnapshot::default(),
            listandwatch_updates: 0,
            config_reloads: ReloadCounts::default(),
            api_requests: 0,
            api_writes: 0,
            api_failures: 0,
            labels_applied: None,
            pending_release: 0,
            maintenance: false,
        }
    }
}

#[derive(Debug)]
struct Inner {
    heartbeat: Instant,
    plugins: Option<Vec<PluginState>>,
    devices: BTreeMap<String, DeviceCounts>,
    binds: BindCounts,
    reloads: ReloadCounts,
    monitor: Option<Arc<MonitorStats>>,
    api: Option<Arc<ApiStats>>,
    labels_applied: Option<bool>,
    pending_release: u64,
    maintenance: bool,
}

/// The shared handle: the agent updates it, the HTTP server reads it. Cheap to clone; every
/// update holds its lock for a few field writes.
#[derive(Debug, Clone)]
pub struct Observer(Arc<Mutex<Inner>>);

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    /// Nothing recorded yet; the heartbeat is now.
    pub fn new() -> Self {
        Observer(Arc::new(Mutex::new(Inner {
            heartbeat: Instant::now(),
            plugins: None,
            devices: BTreeMap::new(),
            binds: BindCounts::default(),
            reloads: ReloadCounts::default(),
            monitor: None,
            api: None,
            labels_applied: None,
            pending_release: 0,
            maintenance: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent loop is alive now.
    pub fn heartbeat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// Counts the outcomes of one bind (or unbind) run.
    pub fn record_bind(&self, outcomes: &[DeviceOutcome]) {
        let mut s = self.lock();
        for o in outcomes {
            match o.outcome.as_str() {
                "bound" => s.binds.bound += 1,
                "already-bound" => s.binds.already_bound += 1,
                "refused" => s.binds.refused += 1,
                "failed" | "rolled-back" => s.binds.failed += 1,
                "restored" => s.binds.restored += 1,
                _ => {}
            }
        }
    }

    /// Counts a config reload: `ok` when the new config was taken, false when it was refused.
    pub fn record_config_reload(&self, ok: bool) {
        let mut s = self.lock();
        if ok {
            s.reloads.ok += 1;
        } else {
            s.reloads.refused += 1;
        }
    }

    /// The plugins as they are now (`ManagerHandle::status()`); from the first call on, `/readyz`
    /// waits for every one of them to be registered.
    pub fn set_plugins(&self, plugins: Vec<PluginStatus>) {
        self.lock().plugins = Some(plugins.iter().map(PluginState::from).collect());
    }

    /// The devices as they are now; replaces what was set before.
    pub fn set_devices(&self, devices: &ResourceDevices) {
        let counts = devices
            .iter()
            .map(|(name, list)| {
                let healthy = list.iter().filter(|d| d.healthy).count() as u64;
                (name.clone(), DeviceCounts { healthy, unhealthy: list.len() as u64 - healthy })
            })
            .collect();
        self.lock().devices = counts;
    }

    /// The device monitor's counters (`Monitor::stats()`); read live at every snapshot.
    pub fn set_monitor(&self, stats: Arc<MonitorStats>) {
        self.lock().monitor = Some(stats);
    }

    /// The Kubernetes API counters; read live at every snapshot.
    pub fn set_api(&self, stats: Arc<ApiStats>) {
        self.lock().api = Some(stats);
    }

    /// Whether there are labels to apply (a cluster); from then on `/readyz` waits for them.
    pub fn set_labels_required(&self, required: bool) {
        let mut s = self.lock();
        s.labels_applied = if required { Some(s.labels_applied.unwrap_or(false)) } else { None };
    }

    /// How many devices wait for their holder before they are given back.
    pub fn set_pending_release(&self, n: usize) {
        self.lock().pending_release = n as u64;
    }

    /// Whether the node is in maintenance (cordoned, or a NodeMaintenance for it).
    pub fn set_maintenance(&self, on: bool) {
        self.lock().maintenance = on;
    }

    /// Whether the Node carries the labels now (ignored when no labels are required).
    pub fn set_labels_applied(&self, applied: bool) {
        let mut s = self.lock();
        if s.labels_applied.is_some() {
            s.labels_applied = Some(applied);
        }
    }

    /// Everything, copied now.
    pub fn snapshot(&self) -> AgentStatus {
        let s = self.lock();
        let monitor = s.monitor.as_ref().map(|m| m.snapshot()).unwrap_or_default();
        AgentStatus {
            loop_alive_at: s.heartbeat,
            plugins: s.plugins.clone(),
            devices: s.devices.clone(),
            binds: s.binds,
            monitor,
            listandwatch_updates: monitor.updates_sent,
            config_reloads: s.reloads,
            api_requests: s.api.as_ref().map_or(0, |a| a.requests()),
            api_writes: s.api.as_ref().map_or(0, |a| a.writes()),
            api_failures: s.api.as_ref().map_or(0, |a| a.failures()),
            labels_applied: s.labels_applied,
            pending_release: s.pending_release,
            maintenance: s.maintenance,
        }
    }
}

/// Pure: `/healthz`: 200 when the loop's heartbeat is at most `max_age` old at `now`, else 503
/// saying how long ago it was.
pub fn healthz(status: &AgentStatus, now: Instant, max_age: Duration) -> (u16, String) {
    let age = now.saturating_duration_since(status.loop_alive_at);
    if age <= max_age {
        (200, format!("ok: agent loop alive {:.1}s ago\n", age.as_secs_f64()))
    } else {
        (
            503,
            format!(
                "agent loop stuck: last heartbeat {:.1}s ago (allowed {:.1}s)\n",
                age.as_secs_f64(),
                max_age.as_secs_f64()
            ),
        )
    }
}

/// Pure: `/readyz`: 200 when the plugins have started and every one is registered with the
/// kubelet and, with a cluster, the node labels are applied; else 503 saying what is missing
/// (the plugins not registered, with their last error).
pub fn readyz(status: &AgentStatus) -> (u16, String) {
    let Some(plugins) = &status.plugins else {
        return (503, "not ready: device plugins not started yet\n".to_owned());
    };
    let waiting: Vec<String> = plugins
        .iter()
        .filter(|p| !p.registered)
        .map(|p| match &p.last_error {
            Some(e) => format!("{} ({e})", p.resource_name),
            None => p.resource_name.clone(),
        })
        .collect();
    if !waiting.is_empty() {
        return (503, format!("not ready: device plugins not registered: {}\n", waiting.join(", ")));
    }
    match status.labels_applied {
        Some(false) => (503, "not ready: node labels not applied yet\n".to_owned()),
        Some(true) => (
            200,
            format!("ready: {} of {} device plugins registered, node labels applied\n", plugins.len(), plugins.len()),
        ),
        None => (200, format!("ready: {} of {} device plugins registered\n", plugins.len(), plugins.len())),
    }
}

/// Pure: a label value as the text format wants it: `\`, `"` and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Metric families in the text format: HELP and TYPE, then the family's samples.
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) -> &mut Self {
        self.0.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v))).collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }
}

/// Pure: `/metrics` in the Prometheus text exposition format 0.0.4.
pub fn render_metrics(status: &AgentStatus) -> String {
    let mut m = Metrics(String::new());
    m.family("nodeprep_up", "gauge", "1 while the nodeprep agent serves metrics.").sample("nodeprep_up", &[], 1);

    m.family("nodeprep_devices", "gauge", "Devices advertised per extended resource, by health.");
    for (resource, c) in &status.devices {
        m.sample("nodeprep_devices", &[("resource", resource), ("state", "healthy")], c.healthy);
        m.sample("nodeprep_devices", &[("resource", resource), ("state", "unhealthy")], c.unhealthy);
    }

    let b = &status.binds;
    m.family("nodeprep_binds_total", "counter", "Devices handled by vfio-pci binding, by outcome.");
    for (outcome, n) in [
        ("bound", b.bound),
        ("already_bound", b.already_bound),
        ("refused", b.refused),
        ("failed", b.failed),
        ("restored", b.restored),
    ] {
        m.sample("nodeprep_binds_total", &[("outcome", outcome)], n);
    }

    m.family(
        "nodeprep_devices_pending_release",
        "gauge",
        "Devices the config no longer wants on vfio-pci, kept there while a pod or claim holds them.",
    )
    .sample("nodeprep_devices_pending_release", &[], status.pending_release);
    m.family("nodeprep_node_maintenance", "gauge", "1 while the node is cordoned or under a NodeMaintenance.").sample(
        "nodeprep_node_maintenance",
        &[],
        u64::from(status.maintenance),
    );

    let mon = &status.monitor;
    for (name, help, value) in [
        ("nodeprep_uevents_total", "Kernel uevents received.", mon.uevents_seen),
        ("nodeprep_rescans_total", "Rescans of the PCI inventory.", mon.rescans),
        ("nodeprep_scan_failures_total", "Rescans that failed (the last good inventory was kept).", mon.failed_scans),
        (
            "nodeprep_listandwatch_updates_total",
            "New device lists sent to the device plugins' ListAndWatch streams.",
            status.listandwatch_updates,
        ),
    ] {
        m.family(name, "counter", help).sample(name, &[], value);
    }

    let plugins = status.plugins.as_deref().unwrap_or_default();
    m.family("nodeprep_plugins", "gauge", "Device plugins served.").sample("nodeprep_plugins", &[], plugins.len());
    m.family("nodeprep_plugins_registered", "gauge", "Device plugins registered with the kubelet.").sample(
        "nodeprep_plugins_registered",
        &[],
        plugins.iter().filter(|p| p.registered).count(),
    );
    m.family("nodeprep_listandwatch_streams", "gauge", "ListAndWatch streams open now.").sample(
        "nodeprep_listandwatch_streams",
        &[],
        plugins.iter().map(|p| p.open_streams).sum::<usize>(),
    );

    let r = &status.config_reloads;
    m.family(
        "nodeprep_config_reloads_total",
        "counter",
        "Config reloads, by result (refused: the config was invalid).",
    )
    .sample("nodeprep_config_reloads_total", &[("result", "ok")], r.ok)
    .sample("nodeprep_config_reloads_total", &[("result", "refused")], r.refused);

    for (name, help, value) in [
        (
            "nodeprep_api_requests_total",
            "Requests to the Kubernetes API (reads, watches and writes).",
            status.api_requests,
        ),
        ("nodeprep_api_writes_total", "Writes to the Kubernetes API (label applies, Events).", status.api_writes),
        ("nodeprep_api_failures_total", "Kubernetes API requests that failed or got no answer.", status.api_failures),
    ] {
        m.family(name, "counter", help).sample(name, &[], value);
    }
    if let Some(applied) = status.labels_applied {
        m.family("nodeprep_labels_applied", "gauge", "1 when the Node carries the labels nodeprep wants.").sample(
            "nodeprep_labels_applied",
            &[],
            u8::from(applied),
        );
    }
    m.family("nodeprep_last_scan_duration_seconds", "gauge", "How long the last rescan took.").sample(
        "nodeprep_last_scan_duration_seconds",
        &[],
        mon.last_scan_micros as f64 / 1e6,
    );
    m.0
}

/// How the HTTP server behaves; [`Default`] is what [`serve`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// `/healthz` fails when the agent loop's heartbeat is older.
    pub max_heartbeat_age: Duration,
    /// The request head must arrive within it, and the answer be taken within it.
    pub timeout: Duration,
    /// The longest request head accepted (431 beyond).
    pub max_request_bytes: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_heartbeat_age: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_request_bytes: 4096,
            max_connections: 64,
        }
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` with the default options until
/// `shutdown` completes; connections still open then are dropped.
pub async fn serve(listener: TcpListener, observer: Observer, shutdown: impl Future<Output = ()>) {
    serve_with(listener, observer, ServeOptions::default(), shutdown).await
}

/// [`serve`] with chosen options.
pub async fn serve_with(
    listener: TcpListener,
    observer: Observer,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let opts = Arc::new(opts);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if conns.len() >= opts.max_connections => {
                    tracing::warn!(%peer, limit = opts.max_connections, "too many HTTP connections; closing this one");
                    drop(stream);
                }
                Ok((stream, _)) => {
                    conns.spawn(connection(stream, observer.clone(), opts.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

/// An answer: status code, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(code: u16, body: impl Into<String>) -> Self {
        Reply { code, content_type: TEXT_CONTENT_TYPE, body: body.into() }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.code {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Unknown",
        };
        let allow = if self.code == 405 { "Allow: GET\r\n" } else { "" };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.code,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// How reading a request head ended.
enum Head {
    /// Everything up to and including the blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed before a whole head arrived.
    Closed,
}

/// Pure: where the head ends (after its blank line), if it does in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    crlf.into_iter().chain(lf).min()
}

async fn read_head(stream: &mut TcpStream, limit: usize) -> std::io::Result<Head> {
    let mut buf = vec![0u8; limit];
    let mut n = 0;
    loop {
        if n == limit {
            return Ok(Head::TooLarge);
        }
        let got = stream.read(&mut buf[n..]).await?;
        if got == 0 {
            return Ok(Head::Closed);
        }
        n += got;
        if let Some(end) = head_end(&buf[..n]) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
    }
}

/// Pure: the answer to one request head, reading the status only for the three known paths.
fn route(head: &[u8], status: impl FnOnce() -> AgentStatus, opts: &ServeOptions) -> Reply {
    let line = std::str::from_utf8(head).ok().and_then(|h| h.lines().next()).unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::text(400, "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Reply::text(400, "bad request line\n");
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Reply::text(404, "not found: try /healthz, /readyz or /metrics\n");
    }
    if method != "GET" {
        return Reply::text(405, "only GET\n");
    }
    let status = status();
    let (code, body) = match path {
        "/healthz" => healthz(&status, Instant::now(), opts.max_heartbeat_age),
        "/readyz" => readyz(&status),
        _ => return Reply { code: 200, content_type: METRICS_CONTENT_TYPE, body: render_metrics(&status) },
    };
    Reply::text(code, body)
}

/// One connection: one request, one answer, then close.
async fn connection(mut stream: TcpStream, observer: Observer, opts: Arc<ServeOptions>) {
    let reply = match tokio::time::timeout(opts.timeout, read_head(&mut stream, opts.max_request_bytes)).await {
        Err(_) => Reply::text(408, "request not received in time\n"),
        Ok(Ok(Head::Complete(head))) => route(&head, || observer.snapshot(), &opts),
        Ok(Ok(Head::TooLarge)) => Reply::text(431, "request head too large\n"),
        Ok(Ok(Head::Closed)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP connection failed");
            return;
        }
    };
    let write = async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(opts.timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP answer not delivered"),
        Err(_) => tracing::debug!("HTTP answer not taken in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus::new(Instant::now())
    }

    fn plugin(name: &str, registered: bool) -> PluginState {
        PluginState { resource_name: name.into(), registered, serving: true, open_streams: 0, last_error: None }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        let mut s = status();
        s.devices.insert("vendor.io/\"odd\"\\name\n".into(), DeviceCounts { healthy: 2, unhealthy: 1 });
        let text = render_metrics(&s);
        assert!(
            text.contains("nodeprep_devices{resource=\"vendor.io/\\\"odd\\\"\\\\name\\n\",state=\"healthy\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(",state=\"unhealthy\"} 1\n"), "{text}");
    }

    #[test]
    fn every_family_has_help_and_type_and_values() {
        let mut s = status();
        s.binds = BindCounts { bound: 3, already_bound: 1, refused: 2, failed: 0, restored: 4 };
        s.monitor.last_scan_micros = 1_500;
        s.monitor.uevents_seen = 7;
        s.listandwatch_updates = 5;
        s.config_reloads = ReloadCounts { ok: 1, refused: 2 };
        s.plugins = Some(vec![plugin("a.io/x", true), plugin("a.io/y", false)]);
        let text = render_metrics(&s);
        for line in [
            "nodeprep_up 1",
            "nodeprep_binds_total{outcome=\"bound\"} 3",
            "nodeprep_binds_total{outcome=\"already_bound\"} 1",
            "nodeprep_binds_total{outcome=\"restored\"} 4",
            "nodeprep_uevents_total 7",
            "nodeprep_listandwatch_updates_total 5",
            "nodeprep_plugins 2",
            "nodeprep_plugins_registered 1",
            "nodeprep_config_reloads_total{result=\"refused\"} 2",
            "nodeprep_api_writes_total 0",
            "nodeprep_last_scan_duration_seconds 0.0015",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(families.len(), text.lines().filter(|l| l.starts_with("# HELP ")).count());
        assert!(families.contains(&"nodeprep_binds_total counter"), "{families:?}");
        assert!(families.contains(&"nodeprep_devices gauge"), "{families:?}");
    }

    #[test]
    fn healthz_follows_the_heartbeat() {
        let s = status();
        let max = Duration::from_secs(30);
        assert_eq!(healthz(&s, s.loop_alive_at + Duration::from_secs(3), max).0, 200);
        let (code, body) = healthz(&s, s.loop_alive_at + Duration::from_secs(42), max);
        assert_eq!(code, 503);
        assert!(body.contains("42.0s ago"), "{body}");
        // A `now` before the heartbeat (clock read earlier) is no age at all.
        assert_eq!(healthz(&s, s.loop_alive_at - Duration::from_secs(1), max).0, 200);
    }

    #[test]
    fn readyz_waits_for_every_plugin() {
        let mut s = status();
        assert_eq!(readyz(&s), (503, "not ready: device plugins not started yet\n".into()));
        s.plugins = Some(vec![plugin("a.io/x", true), plugin("a.io/y", false), plugin("a.io/z", false)]);
        s.plugins.as_mut().unwrap()[2].last_error = Some("kubelet said no".into());
        let (code, body) = readyz(&s);
        assert_eq!(code, 503);
        assert_eq!(body, "not ready: device plugins not registered: a.io/y, a.io/z (kubelet said no)\n");
        s.plugins = Some(vec![plugin("a.io/x", true)]);
        assert_eq!(readyz(&s), (200, "ready: 1 of 1 device plugins registered\n".into()));
        s.plugins = Some(Vec::new());
        assert_eq!(readyz(&s).0, 200);
    }

    #[test]
    fn bind_outcomes_are_counted() {
        let o = |outcome: &str| DeviceOutcome {
            address: "0000:3b:00.0".parse().unwrap(),
            outcome: outcome.into(),
            detail: None,
            vfio_device: None,
            writes: 0,
        };
        let obs = Observer::new();
        obs.record_bind(&["bound", "bound", "already-bound", "refused", "failed", "rolled-back", "left"].map(o));
        obs.record_bind(&[o("restored"), o("gone")]);
        obs.record_config_reload(true);
        obs.record_config_reload(false);
        obs.record_config_reload(false);
        let s = obs.snapshot();
        assert_eq!(s.binds, BindCounts { bound: 2, already_bound: 1, refused: 1, failed: 2, restored: 1 });
        assert_eq!(s.config_reloads, ReloadCounts { ok: 1, refused: 2 });
    }

    #[test]
    fn routes() {
        let opts = ServeOptions::default();
        let r = |head: &str| route(head.as_bytes(), status, &opts);
        assert_eq!(r("GET /healthz HTTP/1.1\r\n\r\n").code, 200);
        assert_eq!(r("GET /metrics?x=1 HTTP/1.0\r\n\r\n").content_type, METRICS_CONTENT_TYPE);
        assert_eq!(r("GET /readyz HTTP/1.1\r\n\r\n").code, 503);
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n").code, 404);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n").code, 405);
        assert_eq!(r("HEAD /healthz HTTP/1.1\r\n\r\n").code, 405);
        assert_eq!(r("GET /healthz\r\n\r\n").code, 400);
        assert_eq!(r("GET /healthz SPDY/3\r\n\r\n").code, 400);
        assert_eq!(r("\u{fffd}\r\n\r\n").code, 400);
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
