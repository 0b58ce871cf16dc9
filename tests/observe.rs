//! The agent's HTTP port over a real TCP socket on 127.0.0.1: `/healthz`, `/readyz` and
//! `/metrics` (status, content type, body; the metrics text checked line by line against the
//! exposition format 0.0.4), 404 and 405, oversized and slow clients.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nodeprep::bind::DeviceOutcome;
use nodeprep::deviceplugin::PluginStatus;
use nodeprep::deviceplugin::devices::{PluginDevice, ResourceDevices};
use nodeprep::deviceplugin::monitor::MonitorStats;
use nodeprep::observe::{self, Observer, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Upper bound for anything that should take milliseconds.
const WAIT: Duration = Duration::from_secs(3);

/// A server on 127.0.0.1:0, stopped when dropped.
struct Server {
    addr: SocketAddr,
    observer: Observer,
    _stop: oneshot::Sender<()>,
}

async fn start(opts: ServeOptions) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let observer = Observer::new();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(observe::serve_with(listener, observer.clone(), opts, async {
        let _ = stopped.await;
    }));
    Server { addr, observer, _stop: stop }
}

#[derive(Debug)]
struct Answer {
    code: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers.get("content-type").map(String::as_str).unwrap_or("")
    }
}

/// Sends `request` as is and reads the answer to the end (the server closes).
async fn send(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("answer in time").expect("read");
    parse_answer(&raw)
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes()).await
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = std::str::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let code = status.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).unwrap_or_else(|| panic!("{status:?}"));
    let headers: BTreeMap<String, String> = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or_else(|| panic!("header {l:?}"));
            (k.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    assert_eq!(headers.get("connection").map(String::as_str), Some("close"));
    assert_eq!(headers.get("content-length").and_then(|l| l.parse().ok()), Some(body.len()), "{headers:?}");
    Answer { code: code.parse().unwrap(), headers, body: body.to_owned() }
}

/// One sample of the text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `{a="x",b="y"}` (the braces removed) into its labels; unescapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or_else(|| format!("no =\" in {rest:?}"))?;
        if !valid_label_name(name) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.is_empty() => rest,
            None => return Err(format!("expected , or }} at {rest:?}")),
        };
    }
    Ok(out)
}

/// Checks the text line by line: HELP and TYPE (once each, before the family's samples), valid
/// names, label syntax, numeric values, each family's samples together, no duplicate series.
/// Returns the samples and each family's type.
fn parse_metrics(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    if !text.ends_with('\n') {
        return Err("the text must end with a newline".into());
    }
    let mut helps = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (kw, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, arg) = rest.split_once(' ').ok_or_else(|| at("HELP/TYPE without text".into()))?;
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            if done.contains(name)
                || current.as_deref() == Some(name) && samples.iter().any(|s: &Sample| s.name == name)
            {
                return Err(at(format!("{kw} after samples of {name}")));
            }
            if current.as_deref() != Some(name) {
                if let Some(prev) = current.replace(name.to_owned()) {
                    done.insert(prev);
                }
            }
            match kw {
                "HELP" => {
                    if !helps.insert(name.to_owned()) {
                        return Err(at("second HELP".into()));
                    }
                    if arg.contains('\\') && arg.replace("\\\\", "").replace("\\n", "").contains('\\') {
                        return Err(at("bad escape in HELP".into()));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(at(format!("unknown type {arg:?}")));
                    }
                    if types.insert(name.to_owned(), arg.to_owned()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let (series_key, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let (name, labels) = match series_key.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').ok_or_else(|| at("labels not closed".into()))?;
                (n, parse_labels(l).map_err(at)?)
            }
            None => (series_key, BTreeMap::new()),
        };
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        if current.as_deref() != Some(name) || !types.contains_key(name) || !helps.contains(name) {
            return Err(at(format!("sample of {name} without its HELP and TYPE right before")));
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
        };
        if !series.insert(series_key.to_owned()) {
            return Err(at("series twice".into()));
        }
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    Ok((samples, types))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

fn plugin(name: &str, registered: bool) -> PluginStatus {
    PluginStatus { resource_name: name.into(), registered, serving: true, ..PluginStatus::default() }
}

fn device(address: &str, healthy: bool) -> PluginDevice {
    PluginDevice {
        id: address.into(),
        address: address.parse().unwrap(),
        healthy,
        problem: None,
        numa_node: None,
        iommu_group: None,
        physfn: None,
    }
}

fn outcome(outcome: &str) -> DeviceOutcome {
    DeviceOutcome {
        address: "0000:3b:00.0".parse().unwrap(),
        outcome: outcome.into(),
        detail: None,
        vfio_device: None,
        writes: 0,
    }
}

#[tokio::test]
async fn healthz_is_ok_while_the_loop_beats() {
    let opts = ServeOptions { max_heartbeat_age: Duration::from_millis(300), ..ServeOptions::default() };
    let s = start(opts).await;
    let a = get(s.addr, "/healthz").await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.content_type(), "text/plain; charset=utf-8");
    assert!(a.body.starts_with("ok: agent loop alive"), "{a:?}");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = get(s.addr, "/healthz").await;
    assert_eq!(a.code, 503, "{a:?}");
    assert!(a.body.contains("s ago"), "{a:?}");

    s.observer.heartbeat();
    assert_eq!(get(s.addr, "/healthz?verbose=1").await.code, 200);
}

#[tokio::test]
async fn readyz_flips_when_plugins_register() {
    let s = start(ServeOptions::default()).await;
    let a = get(s.addr, "/readyz").await;
    assert_eq!((a.code, a.body.as_str()), (503, "not ready: device plugins not started yet\n"));
    assert_eq!(a.content_type(), "text/plain; charset=utf-8");

    s.observer.set_plugins(vec![plugin("nvidia.com/T4", true), plugin("devices.kubevirt.io/kvm", false)]);
    let a = get(s.addr, "/readyz").await;
    assert_eq!(a.code, 503);
    assert!(a.body.contains("devices.kubevirt.io/kvm"), "{a:?}");
    assert!(!a.body.contains("nvidia.com/T4"), "{a:?}");

    s.observer.set_plugins(vec![plugin("nvidia.com/T4", true), plugin("devices.kubevirt.io/kvm", true)]);
    let a = get(s.addr, "/readyz").await;
    assert_eq!((a.code, a.body.as_str()), (200, "ready: 2 of 2 device plugins registered\n"));
}

#[tokio::test]
async fn metrics_parse_and_show_what_happened() {
    let s = start(ServeOptions::default()).await;
    let stats = Arc::new(MonitorStats::default());
    stats.uevents_seen.store(12, Ordering::Relaxed);
    stats.rescans.store(4, Ordering::Relaxed);
    stats.failed_scans.store(1, Ordering::Relaxed);
    stats.updates_sent.store(3, Ordering::Relaxed);
    stats.last_scan_micros.store(2_500, Ordering::Relaxed);
    s.observer.set_monitor(stats.clone());
    s.observer.set_plugins(vec![plugin("nvidia.com/T4", true), plugin("a.io/odd\"name\\x\ny", false)]);
    let mut devices = ResourceDevices::new();
    devices.insert(
        "nvidia.com/T4".into(),
        vec![device("0000:3b:00.0", true), device("0000:3c:00.0", true), device("0000:3d:00.0", false)],
    );
    devices.insert("a.io/odd\"name\\x\ny".into(), vec![device("0000:5e:00.0", false)]);
    s.observer.set_devices(&devices);
    s.observer.record_bind(&[outcome("bound"), outcome("bound"), outcome("refused"), outcome("rolled-back")]);
    s.observer.record_config_reload(true);
    s.observer.record_config_reload(false);

    let a = get(s.addr, "/metrics").await;
    assert_eq!(a.code, 200);
    assert_eq!(a.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    let (samples, types) = parse_metrics(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    assert!(samples.iter().all(|s| s.name.starts_with("nodeprep_")), "{samples:?}");
    for (name, kind) in [
        ("nodeprep_up", "gauge"),
        ("nodeprep_devices", "gauge"),
        ("nodeprep_binds_total", "counter"),
        ("nodeprep_uevents_total", "counter"),
        ("nodeprep_rescans_total", "counter"),
        ("nodeprep_scan_failures_total", "counter"),
        ("nodeprep_listandwatch_updates_total", "counter"),
        ("nodeprep_plugins_registered", "gauge"),
        ("nodeprep_config_reloads_total", "counter"),
        ("nodeprep_api_writes_total", "counter"),
        ("nodeprep_last_scan_duration_seconds", "gauge"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("nodeprep_up", &[]), Some(1.0));
    assert_eq!(v("nodeprep_devices", &[("resource", "nvidia.com/T4"), ("state", "healthy")]), Some(2.0));
    assert_eq!(v("nodeprep_devices", &[("resource", "nvidia.com/T4"), ("state", "unhealthy")]), Some(1.0));
    // The odd name went through escaping and back.
    assert_eq!(v("nodeprep_devices", &[("resource", "a.io/odd\"name\\x\ny"), ("state", "unhealthy")]), Some(1.0));
    assert_eq!(v("nodeprep_binds_total", &[("outcome", "bound")]), Some(2.0));
    assert_eq!(v("nodeprep_binds_total", &[("outcome", "refused")]), Some(1.0));
    assert_eq!(v("nodeprep_binds_total", &[("outcome", "failed")]), Some(1.0));
    assert_eq!(v("nodeprep_binds_total", &[("outcome", "restored")]), Some(0.0));
    assert_eq!(v("nodeprep_uevents_total", &[]), Some(12.0));
    assert_eq!(v("nodeprep_rescans_total", &[]), Some(4.0));
    assert_eq!(v("nodeprep_scan_failures_total", &[]), Some(1.0));
    assert_eq!(v("nodeprep_listandwatch_updates_total", &[]), Some(3.0));
    assert_eq!(v("nodeprep_plugins_registered", &[]), Some(1.0));
    assert_eq!(v("nodeprep_config_reloads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(v("nodeprep_config_reloads_total", &[("result", "refused")]), Some(1.0));
    assert_eq!(v("nodeprep_api_writes_total", &[]), Some(0.0));
    assert_eq!(v("nodeprep_last_scan_duration_seconds", &[]), Some(0.0025));

    // The monitor's counters are read live.
    stats.uevents_seen.fetch_add(1, Ordering::Relaxed);
    let (samples, _) = parse_metrics(&get(s.addr, "/metrics").await.body).expect("parses");
    assert_eq!(value(&samples, "nodeprep_uevents_total", &[]), Some(13.0));
}

#[test]
fn the_metrics_parser_refuses_what_it_should() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse_metrics(ok).is_ok());
    for (bad, why) in [
        ("a 1\n", "without its HELP and TYPE"),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"1} 2\n", "unterminated"),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 2\n", "bad escape"),
        ("# HELP a A.\n# TYPE a gauge\na{1x=\"1\"} 2\n", "bad label name"),
        ("# HELP a A.\n# TYPE a gauge\na{x=\"1\",x=\"2\"} 2\n", "label x twice"),
        ("# HELP a A.\n# TYPE a gauge\na one\n", "bad value"),
        ("# HELP a A.\n# TYPE a gauge\na 1\na 2\n", "series twice"),
        ("# HELP a A.\n# TYPE a gauge\na 1\n# TYPE a gauge\n", "TYPE after samples"),
        ("# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x=\"y\"} 1\n", "without its HELP"),
        ("# HELP a A.\n# TYPE a gauge\na 1", "newline"),
        ("# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n", "bad metric name"),
        ("# HELP a A.\n# TYPE a meter\na 1\n", "unknown type"),
    ] {
        match parse_metrics(bad) {
            Ok(_) => panic!("accepted {bad:?}"),
            Err(e) => assert!(e.contains(why), "{bad:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn other_paths_404_other_methods_405() {
    let s = start(ServeOptions::default()).await;
    for path in ["/", "/metrics/", "/healthzz", "/favicon.ico"] {
        let a = get(s.addr, path).await;
        assert_eq!(a.code, 404, "{path}: {a:?}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let a = send(s.addr, format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await;
        assert_eq!(a.code, 405, "{method}: {a:?}");
        assert_eq!(a.headers.get("allow").map(String::as_str), Some("GET"));
    }
    assert_eq!(send(s.addr, b"NONSENSE\r\n\r\n").await.code, 400);
}

#[tokio::test]
async fn an_oversized_request_is_refused() {
    let s = start(ServeOptions::default()).await;
    let mut req = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 5000));
    req.extend_from_slice(b"\r\n\r\n");
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    // The server answers after 4 KiB and closes; the rest of the write may then fail.
    let _ = c.write_all(&req).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut raw)).await.expect("answer in time");
    assert!(raw.starts_with(b"HTTP/1.1 431 "), "{:?}", String::from_utf8_lossy(&raw));
    // The server goes on serving.
    assert_eq!(get(s.addr, "/healthz").await.code, 200);
}

#[tokio::test]
async fn a_slow_client_does_not_block_others() {
    let opts = ServeOptions { timeout: Duration::from_millis(500), ..ServeOptions::default() };
    let s = start(opts).await;
    let started = Instant::now();
    // Sends nothing at all; another sends half a request line.
    let mut silent = TcpStream::connect(s.addr).await.expect("connect");
    let mut partial = TcpStream::connect(s.addr).await.expect("connect");
    partial.write_all(b"GET /hea").await.expect("write");

    let a = get(s.addr, "/healthz").await;
    assert_eq!(a.code, 200);
    assert!(started.elapsed() < Duration::from_millis(400), "the second client waited {:?}", started.elapsed());

    // Both slow ones are answered 408 and closed once the timeout passes.
    for c in [&mut silent, &mut partial] {
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut raw)).await.expect("closed in time").expect("read");
        assert_eq!(parse_answer(&raw).code, 408);
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_slow_client_does_not_block_others_with_the_default_timeout() {
    let s = start(ServeOptions::default()).await;
    let _silent = TcpStream::connect(s.addr).await.expect("connect");
    let started = Instant::now();
    assert_eq!(get(s.addr, "/metrics").await.code, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let s = start(ServeOptions { max_connections: 1, ..ServeOptions::default() }).await;
    let _silent = TcpStream::connect(s.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = TcpStream::connect(s.addr).await.expect("connect");
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, c.read_to_end(&mut raw)).await.expect("closed at once");
    assert!(read.is_err() || raw.is_empty(), "answered: {:?}", String::from_utf8_lossy(&raw));
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(observe::serve(listener, Observer::new(), async {
        let _ = stopped.await;
    }));
    let _silent = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(get(addr, "/healthz").await.code, 200);
    stop.send(()).expect("server running");
    tokio::time::timeout(WAIT, server).await.expect("stopped at once, open connections dropped").expect("no panic");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
