//! A Kubernetes API-server stand-in for the agent's cluster side, over real TCP on 127.0.0.1
//! and plain HTTP/1.1 (what kube's client speaks to an `http://` server).
//!
//! It records every request exactly as it arrived on the wire (method, path, query, content
//! type, body) and answers like the API server for what nodeprep uses:
//! - `GET /api/v1/nodes/<name>` (with the `status.allocatable` a test sets, [`ApiServer::set_allocatable`]); a watch on `/api/v1/nodes?watch=true&fieldSelector=...`
//!   (chunked, one JSON event per line, resuming from `resourceVersion`); a request for the node
//!   collection without `fieldSelector=metadata.name=<name>` is answered 403, as RBAC scoped to
//!   one node would;
//! - `PATCH` with `application/apply-patch+yaml`: server-side apply of `metadata.labels` with
//!   field ownership per manager, as the real one does for a map of scalars: keys a manager no
//!   longer applies are released (and removed when nobody else owns them), a key another manager
//!   holds with a different value is a 409 with `FieldManagerConflict` causes unless `force`,
//!   `fieldManager` is required, and a no-op apply changes nothing (no new resourceVersion);
//! - `POST /api/v1/namespaces/<ns>/events`;
//! - ConfigMaps: `GET`, `PATCH` (`application/merge-patch+json`) and `PUT` (409 on a stale
//!   `resourceVersion`).
//!
//! Faults are queued per method and path prefix: an error status, or no answer at all
//! ([`Fault::Hang`]), for the next matching request or one after a few ([`ApiServer::fail_after`]). Other managers' edits (`kubectl label`) are [`ApiServer::label_as`].
//! It runs on a thread of its own, so tests drive it from any runtime or from a child process.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Request {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What to do with the next matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and a Status body.
    Status(u16),
    /// Never answer (the client's deadline must fire).
    Hang,
}

/// The node and who owns its labels.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub uid: String,
    pub exists: bool,
    pub labels: BTreeMap<String, String>,
    /// label key -> (manager, operation) owners.
    pub owners: BTreeMap<String, BTreeSet<(String, String)>>,
    /// `status.allocatable` (resource -> quantity); `status` is `{}` while empty.
    pub allocatable: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct State {
    pub requests: Vec<Request>,
    pub node: NodeState,
    pub rv: u64,
    /// (resourceVersion, type, object) of every change, for watches.
    pub history: Vec<(u64, &'static str, Value)>,
    pub events: Vec<Value>,
    /// (namespace, name) -> (resourceVersion, data)
    pub configmaps: BTreeMap<(String, String), (u64, BTreeMap<String, String>)>,
    /// (method, path prefix, matching requests to let through first, fault).
    faults: VecDeque<(String, String, usize, Fault)>,
    /// Seconds an unanswered (hung) request is held.
    pub watch_cap: Duration,
}

impl State {
    fn node_json(&self) -> Value {
        let mut managers: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (key, owners) in &self.node.owners {
            for o in owners {
                managers.entry(o.clone()).or_default().push(key.clone());
            }
        }
        let managed: Vec<Value> = managers
            .iter()
            .map(|((m, op), keys)| {
                let labels: serde_json::Map<String, Value> =
                    keys.iter().map(|k| (format!("f:{k}"), json!({}))).collect();
                json!({"manager": m, "operation": op, "apiVersion": "v1", "time": "2026-11-22T10:00:00Z",
                       "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": labels}}})
            })
            .collect();
        let status = if self.node.allocatable.is_empty() {
            json!({})
        } else {
            json!({"allocatable": self.node.allocatable, "capacity": self.node.allocatable})
        };
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node.name, "uid": self.node.uid, "resourceVersion": self.rv.to_string(),
                         "labels": self.node.labels, "managedFields": managed},
            "spec": {}, "status": status
        })
    }

    fn changed(&mut self, kind: &'static str) {
        self.rv += 1;
        let obj = self.node_json();
        self.history.push((self.rv, kind, obj));
    }

    /// Server-side apply of `labels` by `manager`; `Err` is the 409 body.
    fn apply(&mut self, manager: &str, labels: BTreeMap<String, String>, force: bool) -> Result<(), Value> {
        let me = (manager.to_owned(), "Apply".to_owned());
        let conflicts: Vec<(String, String)> = labels
            .iter()
            .filter(|(k, v)| self.node.labels.get(*k).is_some_and(|cur| cur != *v))
            .flat_map(|(k, _)| {
                self.node.owners.get(k).into_iter().flatten().filter(|o| **o != me).map(|o| (k.clone(), o.0.clone()))
            })
            .collect();
        if !conflicts.is_empty() && !force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(k, m)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": format!(".metadata.labels.{k}")}))
                .collect();
            let msg = format!("Apply failed with {} conflict(s)", conflicts.len());
            return Err(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": msg, "reason": "Conflict", "details": {"causes": causes}, "code": 409}));
        }
        let before = (self.node.labels.clone(), self.node.owners.clone());
        for (k, v) in &labels {
            let owners = self.node.owners.entry(k.clone()).or_default();
            if self.node.labels.get(k) != Some(v) {
                owners.clear();
            }
            owners.insert(me.clone());
            self.node.labels.insert(k.clone(), v.clone());
        }
        let released: Vec<String> = self
            .node
            .owners
            .iter()
            .filter(|(k, o)| o.contains(&me) && !labels.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in released {
            let now_empty = self.node.owners.get_mut(&k).is_some_and(|o| {
                o.remove(&me);
                o.is_empty()
            });
            if now_empty {
                self.node.owners.remove(&k);
                self.node.labels.remove(&k);
            }
        }
        if (self.node.labels.clone(), self.node.owners.clone()) != before {
            self.changed("MODIFIED");
        }
        Ok(())
    }
}

/// The stand-in; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    bump: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_for(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn respond(stream: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason_for(code),
        text.len()
    );
    // One write, on a TCP_NODELAY socket: a head and body in two segments meet the client's
    // delayed ACK and arrive 40 ms apart.
    stream.write_all((head + &text).as_bytes()).await
}

impl ApiServer {
    /// Serves a node called `node` carrying `labels` (owned by `kubelet`, like the well-known
    /// labels the kubelet sets).
    pub fn start(node: &str, labels: &[(&str, &str)]) -> ApiServer {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let owners =
            labels.keys().map(|k| (k.clone(), BTreeSet::from([("kubelet".to_owned(), "Update".to_owned())]))).collect();
        let mut state = State {
            requests: vec![],
            node: NodeState {
                name: node.into(),
                uid: format!("uid-{node}"),
                exists: true,
                labels,
                owners,
                allocatable: BTreeMap::new(),
            },
            rv: 100,
            history: vec![],
            events: vec![],
            configmaps: BTreeMap::new(),
            faults: VecDeque::new(),
            watch_cap: Duration::from_secs(3600),
        };
        let first = state.node_json();
        state.history.push((100, "ADDED", first));
        let state = Arc::new(Mutex::new(state));
        let (bump, _) = watch::channel(0u64);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (st, bp) = (state.clone(), bump.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        Ok((conn, _)) = listener.accept() => {
                            let _ = conn.set_nodelay(true);
                            tokio::spawn(serve_conn(conn, st.clone(), bp.clone()));
                        }
                    }
                }
            });
        });
        ApiServer { addr, state, bump, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at the stand-in, written into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\nusers:\n- name: nodeprep\n  user:\n    token: test-token\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: nodeprep\ncurrent-context: standin\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    pub fn writes(&self) -> Vec<Request> {
        self.requests().into_iter().filter(Request::is_write).collect()
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.state().node.labels.clone()
    }

    /// Label keys `manager` owns through `Apply`.
    pub fn applied_by(&self, manager: &str) -> BTreeSet<String> {
        let me = (manager.to_owned(), "Apply".to_owned());
        self.state().node.owners.iter().filter(|(_, o)| o.contains(&me)).map(|(k, _)| k.clone()).collect()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// Another client's update (`kubectl label node <n> key=value --overwrite`, or `key-` for
    /// `None`): it takes ownership of the key (removal leaves nobody owning it).
    pub fn label_as(&self, manager: &str, key: &str, value: Option<&str>) {
        let mut s = self.state();
        match value {
            Some(v) => {
                if s.node.labels.get(key).map(String::as_str) != Some(v) {
                    s.node.owners.remove(key);
                }
                s.node.owners.entry(key.into()).or_default().insert((manager.into(), "Update".into()));
                s.node.labels.insert(key.into(), v.into());
            }
            None => {
                s.node.owners.remove(key);
                s.node.labels.remove(key);
            }
        }
        s.changed("MODIFIED");
        let rv = s.rv;
        drop(s);
        self.bump.send_replace(rv);
    }

    /// The next request with this method whose path starts with `path_prefix` gets `fault`.
    pub fn fail_next(&self, method: &str, path_prefix: &str, fault: Fault) {
        self.fail_after(method, path_prefix, 0, fault);
    }

    /// Like [`ApiServer::fail_next`], after `skip` matching requests are answered normally (the
    /// second PATCH of a ConfigMap, not the first).
    pub fn fail_after(&self, method: &str, path_prefix: &str, skip: usize, fault: Fault) {
        self.state().faults.push_back((method.into(), path_prefix.into(), skip, fault));
    }

    /// Sets (`Some`) or removes (`None`) one resource in the Node's `status.allocatable` (and
    /// `capacity`), as the kubelet does when a device plugin advertises it.
    pub fn set_allocatable(&self, resource: &str, quantity: Option<&str>) {
        let mut s = self.state();
        match quantity {
            Some(q) => s.node.allocatable.insert(resource.into(), q.into()),
            None => s.node.allocatable.remove(resource),
        };
        s.changed("MODIFIED");
        let rv = s.rv;
        drop(s);
        self.bump.send_replace(rv);
    }

    pub fn faults_pending(&self) -> usize {
        self.state().faults.len()
    }

    pub fn set_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data = data.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let mut s = self.state();
        s.rv += 1;
        let rv = s.rv;
        s.configmaps.insert((namespace.into(), name.into()), (rv, data));
    }

    pub fn configmap(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.state().configmaps.get(&(namespace.to_owned(), name.to_owned())).map(|(_, d)| d.clone())
    }

    /// Polls until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&State) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if pred(&self.state()) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request: (method, target, headers, body); `None` at end of stream.
async fn read_request(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(String, String, BTreeMap<String, String>, String)>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some((method, target, headers, String::from_utf8_lossy(&body).into_owned())))
}

async fn serve_conn(conn: TcpStream, state: Arc<Mutex<State>>, bump: watch::Sender<u64>) {
    let mut reader = BufReader::new(conn);
    while let Ok(Some((method, target, headers, body))) = read_request(&mut reader).await {
        let (path, query_text) = target.split_once('?').unwrap_or((&target, ""));
        let query: BTreeMap<String, String> = query_text
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect();
        let req = Request {
            at: Instant::now(),
            method: method.clone(),
            path: path.to_owned(),
            query: query.clone(),
            content_type: headers.get("content-type").cloned(),
            body,
        };
        let (fault, is_watch) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.requests.push(req.clone());
            let i = s.faults.iter().position(|(m, p, _, _)| *m == req.method && req.path.starts_with(p.as_str()));
            let fault = match i {
                Some(i) if s.faults[i].2 > 0 => {
                    s.faults[i].2 -= 1;
                    None
                }
                Some(i) => s.faults.remove(i).map(|f| f.3),
                None => None,
            };
            (fault, query.get("watch").is_some_and(|w| w == "true" || w == "1"))
        };
        let stream = reader.get_mut();
        match fault {
            Some(Fault::Hang) => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Some(Fault::Status(code)) => {
                let body = status_body(code, reason_for(code), &format!("injected {code}"));
                if respond(stream, code, &body).await.is_err() {
                    return;
                }
                continue;
            }
            None => {}
        }
        if is_watch {
            let _ = serve_watch(stream, &req, &state, bump.subscribe()).await;
            return;
        }
        let (code, body) = route(&req, &state, &bump);
        if respond(stream, code, &body).await.is_err() {
            return;
        }
    }
}

fn node_selector_ok(req: &Request, node: &str) -> bool {
    req.query.get("fieldSelector").is_some_and(|f| *f == format!("metadata.name={node}"))
}

async fn serve_watch(
    stream: &mut TcpStream,
    req: &Request,
    state: &Arc<Mutex<State>>,
    mut bump: watch::Receiver<u64>,
) -> std::io::Result<()> {
    let (node, cap) = {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        (s.node.name.clone(), s.watch_cap)
    };
    if req.path != "/api/v1/nodes" || !node_selector_ok(req, &node) {
        let body = status_body(403, "Forbidden", "watch only your own node (fieldSelector=metadata.name=<node>)");
        return respond(stream, 403, &body).await;
    }
    let mut sent: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let from_scratch = sent == 0;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let timeout = req.query.get("timeoutSeconds").and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(cap);
    let deadline = tokio::time::Instant::now() + timeout.min(cap);
    let mut first = true;
    loop {
        let lines: Vec<String> = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            if first && from_scratch {
                sent = s.rv;
                vec![json!({"type": "ADDED", "object": s.node_json()}).to_string()]
            } else {
                let out = s
                    .history
                    .iter()
                    .filter(|(rv, _, _)| *rv > sent)
                    .map(|(_, t, o)| json!({"type": t, "object": o}).to_string())
                    .collect();
                sent = s.rv;
                out
            }
        };
        first = false;
        for l in lines {
            let chunk = format!("{:x}\r\n{l}\n\r\n", l.len() + 1);
            stream.write_all(chunk.as_bytes()).await?;
        }
        tokio::select! {
            r = bump.changed() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    stream.write_all(b"0\r\n\r\n").await
}

fn route(req: &Request, state: &Arc<Mutex<State>>, bump: &watch::Sender<u64>) -> (u16, Value) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let node_path = format!("/api/v1/nodes/{}", s.node.name);
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) => {
            if node_selector_ok(req, &s.node.name) {
                (
                    200,
                    json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": [s.node_json()]}),
                )
            } else {
                (403, status_body(403, "Forbidden", "listing all nodes is not allowed"))
            }
        }
        ("GET", ["api", "v1", "nodes", _]) if req.path == node_path && s.node.exists => (200, s.node_json()),
        ("PATCH", ["api", "v1", "nodes", _]) if req.path == node_path => {
            if req.content_type.as_deref() != Some("application/apply-patch+yaml") {
                return (415, status_body(415, "UnsupportedMediaType", "only apply patches are served here"));
            }
            let Some(manager) = req.query.get("fieldManager").filter(|m| !m.is_empty()).cloned() else {
                return (
                    400,
                    status_body(
                        400,
                        "BadRequest",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ),
                );
            };
            let body = req.json();
            if body["apiVersion"] != "v1" || body["kind"] != "Node" || body["metadata"]["name"] != s.node.name.as_str()
            {
                return (400, status_body(400, "BadRequest", "apply body must name this Node with apiVersion v1"));
            }
            let labels: BTreeMap<String, String> = match serde_json::from_value(body["metadata"]["labels"].clone()) {
                Ok(l) => l,
                Err(e) => return (422, status_body(422, "Invalid", &format!("metadata.labels: {e}"))),
            };
            let force = req.query.get("force").is_some_and(|f| f == "true");
            match s.apply(&manager, labels, force) {
                Ok(()) => {
                    let rv = s.rv;
                    let node = s.node_json();
                    drop(s);
                    bump.send_replace(rv);
                    (200, node)
                }
                Err(conflict) => (409, conflict),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
            let ev = req.json();
            if ev["metadata"]["namespace"].as_str().is_some_and(|n| n != *ns) {
                return (400, status_body(400, "BadRequest", "namespace in body does not match the path"));
            }
            s.events.push(ev.clone());
            (201, ev)
        }
        (m, ["api", "v1", "namespaces", ns, "configmaps", name]) => {
            let key = ((*ns).to_owned(), (*name).to_owned());
            let Some((rv, data)) = s.configmaps.get(&key).cloned() else {
                return (404, status_body(404, "NotFound", &format!("configmaps \"{name}\" not found")));
            };
            let obj = |rv: u64, data: &BTreeMap<String, String>| {
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string()}, "data": data})
            };
            match m {
                "GET" => (200, obj(rv, &data)),
                "PATCH" if req.content_type.as_deref() == Some("application/merge-patch+json") => {
                    let mut data = data;
                    if let Some(patch) = req.json()["data"].as_object() {
                        for (k, v) in patch {
                            match v.as_str() {
                                Some(v) => {
                                    data.insert(k.clone(), v.to_owned());
                                }
                                None => {
                                    data.remove(k);
                                }
                            }
                        }
                    }
                    s.rv += 1;
                    let rv = s.rv;
                    s.configmaps.insert(key, (rv, data.clone()));
                    (200, obj(rv, &data))
                }
                "PUT" => {
                    let body = req.json();
                    let sent_rv = body["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok());
                    if sent_rv != Some(rv) {
                        return (
                            409,
                            status_body(
                                409,
                                "Conflict",
                                "the object has been modified; please apply your changes to the latest version and try again",
                            ),
                        );
                    }
                    let data: BTreeMap<String, String> =
                        serde_json::from_value(body["data"].clone()).unwrap_or_default();
                    s.rv += 1;
                    let rv = s.rv;
                    s.configmaps.insert(key, (rv, data.clone()));
                    (200, obj(rv, &data))
                }
                _ => (405, status_body(405, "MethodNotAllowed", "method not allowed")),
            }
        }
        _ => (404, status_body(404, "NotFound", &format!("{} {} not served", req.method, req.path))),
    }
}
