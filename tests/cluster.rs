//! The agent's cluster side against an API-server stand-in over real TCP, for what the real API
//! server (`tests/real_apiserver.rs`) cannot be made to do on demand or cannot show: faults
//! (409, 500, an API server down or not answering, each retried with backoff until the labels
//! converge) and every request exactly as it arrived on the wire (method, path, `fieldManager`,
//! no `force`, content type, body), with a few labeler decisions (a changed and an emptied
//! intent, a partial scan removing nothing, labels not applied before they are known, bind
//! outcomes as Events). What the real server proves (another manager's value left alone and
//! taken back, a removed label put back, nothing sent when nothing changed) is tested there
//! only.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeprep::bind::DeviceOutcome;
use nodeprep::cluster::events::Recorder;
use nodeprep::cluster::labels::Desired;
use nodeprep::cluster::node::{self, LabelStatus, LabelerOptions};
use nodeprep::cluster::{self as cluster, ApiStats, Source};
use serde_json::json;
use support::apiserver::{ApiServer, Fault, Request};
use tokio::sync::watch;

const NODE: &str = "worker-0";
/// Upper bound for anything that should take milliseconds.
const WAIT: Duration = Duration::from_secs(5);
const KVM: &str = "nodeprep.io/kvm";
const IOMMU: &str = "nodeprep.io/iommu";
const READY: &str = "nodeprep.io/ready";

fn labels(keys: &[&str]) -> BTreeMap<String, String> {
    keys.iter().map(|k| ((*k).to_owned(), "true".to_owned())).collect()
}

fn desired(keys: &[&str]) -> Option<Desired> {
    Some(Desired { labels: labels(keys), complete: true })
}

/// A labeler running against the stand-in, on a thread and runtime of its own (so the test can
/// block and poll the stand-in); stopped when dropped.
struct Running {
    tx: watch::Sender<Option<Desired>>,
    status: watch::Receiver<LabelStatus>,
    stats: Arc<ApiStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fast_options() -> LabelerOptions {
    let mut o = LabelerOptions::new(NODE);
    o.request_timeout = Duration::from_millis(300);
    o.backoff_initial = Duration::from_millis(50);
    o.backoff_max = Duration::from_millis(400);
    o
}

fn start(api: &ApiServer, first: Option<Desired>, opts: LabelerOptions) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let (tx, rx) = watch::channel(first);
    let (status_tx, status) = watch::channel(LabelStatus::default());
    let stats = Arc::new(ApiStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let s = stats.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let client = cluster::connect(&Source::Kubeconfig(kubeconfig)).await.expect("client from kubeconfig");
            drop(dir);
            node::run(client, opts, s, rx, status_tx, async {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    Running { tx, status, stats, stop: Some(stop_tx), thread: Some(thread) }
}

fn patches(api: &ApiServer) -> Vec<Request> {
    api.requests().into_iter().filter(|r| r.method == "PATCH").collect()
}

fn converged(api: &ApiServer, want: &[&str]) -> bool {
    let want = labels(want);
    api.wait_until(WAIT, |s| {
        want.iter().all(|(k, v)| s.node.labels.get(k) == Some(v)) && {
            let mine: Vec<&String> = s
                .node
                .owners
                .iter()
                .filter(|(_, o)| o.iter().any(|(m, op)| m == "nodeprep" && op == "Apply"))
                .map(|(k, _)| k)
                .collect();
            mine.len() == want.len() && mine.iter().all(|k| want.contains_key(*k))
        }
    })
}

/// Waits until the labeler says the labels are applied.
fn wait_applied(run: &Running) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if run.status.borrow().applied {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Waits long enough for a wrongly sent request to show.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn labels_are_applied_with_server_side_apply_exactly_as_on_the_wire() {
    let api = ApiServer::start(NODE, &[("kubernetes.io/hostname", NODE)]);
    let _run = start(&api, desired(&[KVM, IOMMU]), fast_options());
    assert!(converged(&api, &[KVM, IOMMU]), "labels: {:?}", api.labels());

    let reqs = api.requests();
    let get = &reqs[0];
    assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", "/api/v1/nodes/worker-0"));
    let p = patches(&api);
    assert_eq!(p.len(), 1, "{p:#?}");
    let p = &p[0];
    assert_eq!(p.path, "/api/v1/nodes/worker-0");
    assert_eq!(p.query.get("fieldManager").map(String::as_str), Some("nodeprep"));
    assert_eq!(p.query.get("force"), None, "never force: labels owned by others are theirs");
    assert_eq!(p.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(
        p.json(),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-0", "labels": {KVM: "true", IOMMU: "true"}}})
    );
    // The kubelet's label is untouched.
    assert_eq!(api.labels().get("kubernetes.io/hostname").map(String::as_str), Some(NODE));
    // The Node is watched by name, never listed.
    assert!(api.wait_until(WAIT, |s| s.requests.iter().any(|r| r.query.get("watch").is_some_and(|w| w == "true"))));
    for r in api.requests().iter().filter(|r| r.path == "/api/v1/nodes") {
        assert_eq!(r.query.get("fieldSelector").map(String::as_str), Some("metadata.name=worker-0"), "{r:?}");
        assert_eq!(r.query.get("watch").map(String::as_str), Some("true"), "a list of nodes: {r:?}");
    }
}

#[test]
fn changed_labels_are_reapplied_and_released_ones_removed() {
    let api = ApiServer::start(NODE, &[("kubernetes.io/hostname", NODE)]);
    let run = start(&api, desired(&[KVM, IOMMU]), fast_options());
    assert!(converged(&api, &[KVM, IOMMU]));
    run.tx.send_replace(desired(&[KVM, READY]));
    assert!(converged(&api, &[KVM, READY]), "labels: {:?}", api.labels());
    assert!(!api.labels().contains_key(IOMMU), "a label nodeprep no longer wants is removed");
    let p = patches(&api);
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].json()["metadata"]["labels"], json!({KVM: "true", READY: "true"}));
    // Everything released: an empty intent, the node keeps only others' labels.
    run.tx.send_replace(desired(&[]));
    assert!(converged(&api, &[]));
    assert_eq!(api.labels().keys().collect::<Vec<_>>(), vec!["kubernetes.io/hostname"]);
    assert_eq!(patches(&api)[2].json()["metadata"]["labels"], json!({}));
}

#[test]
fn a_partial_scan_removes_nothing() {
    let api = ApiServer::start(NODE, &[]);
    let run = start(&api, desired(&[KVM, IOMMU]), fast_options());
    assert!(converged(&api, &[KVM, IOMMU]));
    run.tx.send_replace(Some(Desired { labels: labels(&[KVM]), complete: false }));
    settle();
    assert_eq!(patches(&api).len(), 1);
    assert!(converged(&api, &[KVM, IOMMU]));
    // A partial scan may still add.
    run.tx.send_replace(Some(Desired { labels: labels(&[READY]), complete: false }));
    assert!(converged(&api, &[KVM, IOMMU, READY]));
}

/// The gaps between consecutive requests matching `pred`.
fn gaps(reqs: &[Request], pred: impl Fn(&Request) -> bool) -> Vec<Duration> {
    let at: Vec<Instant> = reqs.iter().filter(|r| pred(r)).map(|r| r.at).collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn server_errors_are_retried_with_backoff_until_the_labels_converge() {
    let api = ApiServer::start(NODE, &[]);
    for _ in 0..3 {
        api.fail_next("PATCH", "/api/v1/nodes/", Fault::Status(500));
    }
    let run = start(&api, desired(&[KVM]), fast_options());
    assert!(converged(&api, &[KVM]), "labels: {:?}", api.labels());
    assert_eq!(api.faults_pending(), 0);
    let p = patches(&api);
    assert_eq!(p.len(), 4, "3 failures then success");
    let g = gaps(&p, |_| true);
    // 50 ms, 100 ms, 200 ms (±20 %): each wait longer than the one before.
    assert!(g[0] >= Duration::from_millis(40), "{g:?}");
    assert!(g[1] > g[0] && g[2] > g[1], "backoff grows: {g:?}");
    assert!(run.stats.failures() >= 3);
    assert!(wait_applied(&run));
    assert_eq!(run.status.borrow().last_error, None);
}

#[test]
fn an_api_server_that_is_down_at_start_is_waited_for() {
    let api = ApiServer::start(NODE, &[]);
    for _ in 0..4 {
        api.fail_next("GET", "/api/v1/nodes/worker-0", Fault::Status(503));
    }
    let run = start(&api, desired(&[KVM]), fast_options());
    assert!(api.wait_until(WAIT, |s| s.requests.len() >= 2));
    assert!(!run.status.borrow().applied);
    assert!(converged(&api, &[KVM]));
    let gets = api.requests().into_iter().filter(|r| r.path == "/api/v1/nodes/worker-0" && r.method == "GET").count();
    assert_eq!(gets, 5);
}

#[test]
fn a_conflict_is_retried_after_reading_the_node_again() {
    let api = ApiServer::start(NODE, &[]);
    api.fail_next("PATCH", "/api/v1/nodes/", Fault::Status(409));
    let _run = start(&api, desired(&[KVM]), fast_options());
    assert!(converged(&api, &[KVM]));
    let seq: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| !r.query.contains_key("watch"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        seq[..4],
        [
            "GET /api/v1/nodes/worker-0",
            "PATCH /api/v1/nodes/worker-0",
            "GET /api/v1/nodes/worker-0",
            "PATCH /api/v1/nodes/worker-0"
        ],
        "{seq:#?}"
    );
}

#[test]
fn an_api_server_that_does_not_answer_times_out_and_is_retried() {
    let api = ApiServer::start(NODE, &[]);
    api.fail_next("PATCH", "/api/v1/nodes/", Fault::Hang);
    let run = start(&api, desired(&[KVM]), fast_options());
    assert!(converged(&api, &[KVM]));
    let p = patches(&api);
    assert_eq!(p.len(), 2);
    // The deadline is 300 ms, then a backoff of about 50 ms.
    let gap = p[1].at - p[0].at;
    assert!(gap >= Duration::from_millis(300) && gap < Duration::from_secs(2), "{gap:?}");
    assert!(run.stats.failures() >= 1);
}

#[test]
fn a_failed_rewatch_does_not_make_the_labels_unapplied() {
    let api = ApiServer::start(NODE, &[]);
    let mut opts = fast_options();
    opts.watch_timeout_secs = 1;
    let run = start(&api, desired(&[KVM]), opts);
    assert!(converged(&api, &[KVM]));
    assert!(wait_applied(&run));
    // The API server ends the watch after 1 s; the next watch is refused once.
    api.fail_next("GET", "/api/v1/nodes", Fault::Status(500));
    let watches = |s: &support::apiserver::State| s.requests.iter().filter(|r| r.query.contains_key("watch")).count();
    assert!(api.wait_until(Duration::from_secs(5), |s| watches(s) >= 3), "watch renewed after the refusal");
    assert!(run.status.borrow().applied, "the Node still carries the labels: {:?}", run.status.borrow());
    assert_eq!(patches(&api).len(), 1, "no write for a renewed watch");
}

#[test]
fn labels_wait_until_they_are_known() {
    let api = ApiServer::start(NODE, &[]);
    let run = start(&api, None, fast_options());
    assert!(api.wait_until(WAIT, |s| !s.requests.is_empty()));
    settle();
    assert!(api.writes().is_empty(), "nothing applied before the host was looked at");
    run.tx.send_replace(desired(&[KVM]));
    assert!(converged(&api, &[KVM]));
}

fn outcome(addr: &str, outcome: &str, detail: Option<&str>) -> DeviceOutcome {
    DeviceOutcome {
        address: addr.parse().expect("address"),
        outcome: outcome.into(),
        detail: detail.map(str::to_owned),
        vfio_device: (outcome == "bound").then(|| "/dev/vfio/7".to_owned()),
        writes: 3,
    }
}

#[test]
fn bind_outcomes_become_events_on_the_node() {
    let api = ApiServer::start(NODE, &[]);
    api.fail_next("POST", "/api/v1/namespaces/default/events", Fault::Status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stats = Arc::new(ApiStats::default());
    rt.block_on(async {
        let client = cluster::connect(&Source::Kubeconfig(kubeconfig)).await.expect("client");
        let rec = Recorder::spawn(client, NODE.into(), stats.clone(), Duration::from_millis(500));
        let outcomes = [
            outcome("0000:01:00.0", "bound", None),
            outcome("0000:02:00.0", "refused", Some("0000:02:00.0 is mounted at /")),
            outcome("0000:03:00.0", "already-bound", None),
        ];
        rec.record_outcomes(&outcomes);
        // The same outcomes again (a config reload that changed nothing): no new Events.
        rec.record_outcomes(&outcomes);
        let deadline = Instant::now() + WAIT;
        while api.events().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let posts: Vec<Request> = api.requests().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 3, "one 500 retried, then one per outcome that changed something: {posts:#?}");
    for p in &posts {
        assert_eq!(p.path, "/api/v1/namespaces/default/events");
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
    }
    let ev = api.events();
    assert_eq!(ev.len(), 2);
    let bound = &ev[0];
    assert_eq!(bound["reason"], "DeviceBound");
    assert_eq!(bound["type"], "Normal");
    assert_eq!(bound["message"], "0000:01:00.0 bound to vfio-pci (/dev/vfio/7)");
    assert_eq!(bound["involvedObject"], json!({"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}));
    assert_eq!(bound["source"]["component"], "nodeprep");
    let refused = &ev[1];
    assert_eq!((refused["reason"].as_str(), refused["type"].as_str()), (Some("BindRefused"), Some("Warning")));
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("mounted at /")), "{refused}");
    assert_eq!(stats.writes(), 3);
}
