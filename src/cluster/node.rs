//! Keeps the agent's own Node labelled: reads it once by name, then watches it (a watch on
//! `/api/v1/nodes` with `fieldSelector=metadata.name=<node>`: never a list of all nodes), and
//! server-side applies the labels (field manager `nodeprep`, `application/apply-patch+yaml`)
//! only when [`labels::plan`] says the Node does not already carry them.
//!
//! Reacts to the desired labels changing and to the Node changing (someone removed a label:
//! it is put back). A failed request (an error status, a 409, no answer within the deadline) is
//! retried with capped exponential backoff; after a 409 the Node is read again first, since the
//! view it was planned from was stale. Idle, it sends nothing: the watch is one open request,
//! renewed when the API server ends it (every few minutes).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, WatchEvent, WatchParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

use super::labels::{self, Desired, FIELD_MANAGER, LabelPlan, NodeView};
use super::{ApiStats, Backoff, ClusterError, call};

/// How the labeler talks to the API server.
#[derive(Debug, Clone)]
pub struct LabelerOptions {
    pub node_name: String,
    /// The deadline of each GET and PATCH.
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Asked of the API server for each watch; it ends the watch after about this long.
    pub watch_timeout_secs: u32,
}

impl LabelerOptions {
    pub fn new(node_name: impl Into<String>) -> Self {
        LabelerOptions {
            node_name: node_name.into(),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
        }
    }
}

/// What `/readyz` and the logs know about the labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelStatus {
    /// The Node carries the desired labels (as of the last look).
    pub applied: bool,
    /// The labels last applied or found in place.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
    /// The Node is cordoned (`spec.unschedulable`), as last seen; `None` before the first look.
    pub unschedulable: Option<bool>,
}

type NodeEvents = Pin<Box<dyn Stream<Item = Result<WatchEvent<Node>, kube::Error>> + Send>>;

/// The labeler's state between events.
struct Labeler {
    api: Api<Node>,
    opts: LabelerOptions,
    stats: Arc<ApiStats>,
    status: watch::Sender<LabelStatus>,
    node: Option<NodeView>,
    backoff: Backoff,
}

impl Labeler {
    fn path(&self) -> String {
        format!("/api/v1/nodes/{}", self.opts.node_name)
    }

    /// Keeps what the API server just said about the Node, and passes its cordon on.
    fn saw(&mut self, view: NodeView) {
        let cordoned = Some(view.unschedulable);
        self.status.send_if_modified(|s| {
            s.unschedulable != cordoned && {
                s.unschedulable = cordoned;
                true
            }
        });
        self.node = Some(view);
    }

    fn fail(&mut self, e: &ClusterError) -> Instant {
        self.status.send_modify(|s| {
            s.applied = false;
            s.last_error = Some(e.to_string());
        });
        self.backoff.retry_at("node labels", e)
    }

    /// A failed or refused watch: logged, retried after a backoff. The labels' status is left
    /// as it is: the Node still carries what it carried.
    fn retry_watch(&mut self, e: &ClusterError) -> Instant {
        self.backoff.retry_at("watching the own Node", e)
    }

    /// One look: read the Node if needed, plan, and apply if the plan says so.
    async fn reconcile(&mut self, desired: Option<&Desired>) -> Result<(), ClusterError> {
        if self.node.is_none() {
            let (api, name) = (self.api.clone(), self.opts.node_name.clone());
            let node =
                call(
                    &self.stats,
                    "GET",
                    self.path(),
                    self.opts.request_timeout,
                    false,
                    async move { api.get(&name).await },
                )
                .await?;
            self.saw(NodeView::from_node(&node));
        }
        let (Some(desired), Some(node)) = (desired, self.node.as_ref()) else {
            return Ok(());
        };
        let want = match labels::plan(desired, node) {
            LabelPlan::UpToDate => {
                self.status.send_modify(|s| {
                    s.applied = true;
                    s.labels = desired.labels.clone();
                    s.last_error = None;
                });
                return Ok(());
            }
            LabelPlan::Apply(want) => want,
        };
        let yielded = labels::yielded(desired, node);
        if !yielded.is_empty() {
            tracing::warn!(keys = %yielded.join(","), "labels set to another value by someone else are left to them");
        }
        let body = labels::apply_body(&self.opts.node_name, &want);
        let (api, name) = (self.api.clone(), self.opts.node_name.clone());
        let params = PatchParams::apply(FIELD_MANAGER);
        let result =
            call(&self.stats, "PATCH (server-side apply)", self.path(), self.opts.request_timeout, true, async move {
                api.patch(&name, &params, &Patch::Apply(&body)).await
            })
            .await;
        match result {
            Ok(node) => {
                let shown: Vec<String> = want.iter().map(|(k, v)| format!("{k}={v}")).collect();
                tracing::info!(node = %self.opts.node_name, labels = %shown.join(","), "node labels applied");
                self.saw(NodeView::from_node(&node));
                self.status.send_modify(|s| {
                    s.applied = true;
                    s.labels = want;
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) => {
                if e.status() == Some(409) {
                    // Planned from a stale view: read the Node again before the retry.
                    self.node = None;
                }
                Err(e)
            }
        }
    }

    async fn open_watch(&self) -> Result<NodeEvents, ClusterError> {
        let rv = self.node.as_ref().and_then(|n| n.resource_version.clone()).unwrap_or_else(|| "0".into());
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={}", self.opts.node_name))
            .timeout(self.opts.watch_timeout_secs);
        let api = self.api.clone();
        let stream = call(&self.stats, "WATCH", "/api/v1/nodes".into(), self.opts.request_timeout, false, async move {
            api.watch(&wp, &rv).await
        })
        .await?;
        Ok(Box::pin(stream))
    }
}

/// Keeps the Node's labels at the latest `desired` (`None`: not known yet, send nothing) until
/// `stop` resolves. Publishes what it knows on `status`.
pub async fn run(
    client: kube::Client,
    opts: LabelerOptions,
    stats: Arc<ApiStats>,
    mut desired: watch::Receiver<Option<Desired>>,
    status: watch::Sender<LabelStatus>,
    stop: impl std::future::Future<Output = ()>,
) {
    let backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut l = Labeler { api: Api::all(client), opts, stats, status, node: None, backoff };
    let mut events: Option<NodeEvents> = None;
    let mut watch_started = Instant::now();
    // When to reconcile next: now at start, then after changes, or after a backoff.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut watch_due: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        if due.is_some_and(|t| t <= Instant::now()) {
            due = None;
            let d = desired.borrow_and_update().clone();
            match l.reconcile(d.as_ref()).await {
                Ok(()) => l.backoff.reset(),
                Err(e) => due = Some(l.fail(&e)),
            }
        }
        if events.is_none() && l.node.is_some() && watch_due.is_none_or(|t| t <= Instant::now()) {
            watch_due = None;
            match l.open_watch().await {
                Ok(s) => {
                    events = Some(s);
                    watch_started = Instant::now();
                    // Look again (no request when nothing changed): the status may be stale.
                    due.get_or_insert_with(Instant::now);
                }
                Err(e) => watch_due = Some(l.retry_watch(&e)),
            }
        }
        let next_wake = [due, watch_due].into_iter().flatten().min();
        tokio::select! {
            () = &mut stop => return,
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                // Not applied until the Node is seen carrying the new set.
                let differs = desired.borrow().as_ref().map(|d| &d.labels) != Some(&l.status.borrow().labels);
                if differs {
                    l.status.send_if_modified(|s| std::mem::replace(&mut s.applied, false));
                }
                // During a backoff the retry already pending will carry the new set.
                if due.is_none() {
                    due = Some(Instant::now());
                }
            }
            ev = async { match events.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match ev {
                    Some(Ok(WatchEvent::Added(n) | WatchEvent::Modified(n))) => {
                        let view = NodeView::from_node(&n);
                        // The answer to an apply can overtake the watch event of the one
                        // before it: an older view must not replace a newer one.
                        if !labels::is_older(&view, l.node.as_ref()) {
                            l.saw(view);
                            due.get_or_insert_with(Instant::now);
                        }
                    }
                    Some(Ok(WatchEvent::Deleted(_))) => {
                        tracing::warn!(node = %l.opts.node_name, "own Node deleted; waiting for it to come back");
                        l.node = None;
                        events = None;
                        due = Some(l.fail(&ClusterError::Request {
                            operation: "WATCH",
                            path: l.path(),
                            status: Some(404),
                            message: "the Node was deleted".into(),
                        }));
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => {
                        if let Some(n) = l.node.as_mut() {
                            n.resource_version = Some(b.metadata.resource_version);
                        }
                    }
                    Some(Ok(WatchEvent::Error(s))) => {
                        // 410 Gone: the resource version is too old; read the Node afresh.
                        tracing::debug!(code = s.code, message = %s.message, "node watch ended by the API server");
                        l.node = None;
                        events = None;
                        due.get_or_insert_with(Instant::now);
                    }
                    Some(Err(e)) => {
                        events = None;
                        watch_due = Some(l.retry_watch(&ClusterError::Request {
                            operation: "WATCH",
                            path: "/api/v1/nodes".into(),
                            status: None,
                            message: e.to_string(),
                        }));
                    }
                    None => {
                        // The API server ended the watch (its timeout); renew it. A watch that
                        // ends at once is backed off, so a misbehaving server is not hammered.
                        events = None;
                        if watch_started.elapsed() < Duration::from_secs(1) {
                            watch_due = Some(Instant::now() + l.backoff.next_delay());
                        }
                    }
                }
            }
            () = async { match next_wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}
