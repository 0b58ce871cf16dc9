//! Publishes nodeprep's DRA devices as `resource.k8s.io/v1` ResourceSlices, the objects the
//! scheduler allocates claims from. Owns every ResourceSlice of nodeprep's driver on this node
//! (`spec.nodeName=<node>`, `spec.driver=<driver>`): what they say, and that they exist.
//!
//! How DRA wants devices published:
//! - A **pool** is one driver's devices on one node; nodeprep names it after the node. It may
//!   span several slices: at most [`MAX_DEVICES_PER_SLICE`] (128) devices fit in one, so 129
//!   devices make two. Every slice of the pool repeats `spec.pool{name, generation,
//!   resourceSliceCount}`.
//! - The **generation** orders versions of the pool. The scheduler uses only the slices of the
//!   highest generation it sees, and only once it sees `resourceSliceCount` of them; so a pool
//!   being rewritten slice by slice is skipped until it is complete, never mixed from old and new
//!   slices. nodeprep raises the generation (the highest existing one + 1) whenever anything in
//!   the pool changes, and keeps it when nothing did: a restart with the same devices writes
//!   nothing. (Upstream's `k8s.io/dynamic-resource-allocation/resourceslice` controller keeps
//!   the generation when a single slice changes; nodeprep always bumps, the simpler rule, and
//!   a node almost always has one slice anyway.)
//! - An **empty pool** is one slice with no devices, as upstream's controller does: "empty pool"
//!   (the driver runs and has nothing to offer) differs from "no pool" (the driver is not
//!   there), and the API requires `resourceSliceCount` ≥ 1.
//! - Slices are owned by the Node (an ownerReference, controller), so deleting the Node deletes
//!   them, and carry `app.kubernetes.io/managed-by: nodeprep`. Names are deterministic,
//!   `<node>-<driver with '.'→'-'>-<index>`, so a restart finds and reuses its own slices.
//!
//! Why a watch and not a write at start only: the kubelet deletes every ResourceSlice of its
//! node when it starts (no driver has registered yet) and those of a driver 30 s after the
//! driver's plugin stops being reachable. nodeprep keeps a watch on its slices and re-applies
//! them within milliseconds of such a wipe. (So the agent should pass devices only while its
//! DRA plugin serves the kubelet, or it would put back what the kubelet just withdrew.)
//!
//! The pure part ([`slice_objects`], [`content_matches`], [`plan`]) decides what to send; [`run`]
//! sends it: server-side apply (field manager `nodeprep`, forced: nodeprep owns these objects
//! outright), deletes of surplus slices, nothing at all when the slices already say what is
//! wanted. Every request is counted in [`ApiStats`]; failures are retried with backoff. On
//! shutdown nothing is deleted: an agent restart must not withdraw the devices (the kubelet
//! withdraws them if the plugin stays away); [`remove_all`] is for uninstalling.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams,
};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

use super::labels::FIELD_MANAGER;
use super::{ApiStats, Backoff, ClusterError, call};
use crate::dra::devices::{AttrValue, DraDevice};

/// The API's limit on devices in one ResourceSlice (`ResourceSliceMaxDevices`).
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// The label every slice carries, with the value [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "nodeprep";
/// The longest object name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;
/// The collection's path, for logs and errors.
const PATH: &str = "/apis/resource.k8s.io/v1/resourceslices";
/// How long to wait after a watch event before reconciling: the kubelet deletes a node's slices
/// one after the other, and one apply after the last deletion beats one after each.
const SETTLE: Duration = Duration::from_millis(10);

/// `resource.k8s.io/v1` `ResourceSlice` for kube's dynamic API (the k8s-openapi feature this
/// crate builds with predates resource.k8s.io/v1).
pub fn resource_slice_api() -> ApiResource {
    ApiResource {
        group: "resource.k8s.io".into(),
        version: "v1".into(),
        api_version: "resource.k8s.io/v1".into(),
        kind: "ResourceSlice".into(),
        plural: "resourceslices".into(),
    }
}

/// The field selector naming exactly this node's slices of this driver (the same selector the
/// kubelet wipes them with).
pub fn field_selector(driver: &str, node: &str) -> String {
    format!("spec.nodeName={node},spec.driver={driver}")
}

/// Pure: the name of slice `index` of the pool: `<node>-<driver with '.'→'-'>-<index>`, a valid
/// DNS subdomain of at most 253 characters. When node and driver are too long together, the
/// front is cut and a hash of the whole is added, so names stay distinct and stable.
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let clean = |s: &str, dot: char| -> String {
        s.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c == '.' {
                    dot
                } else if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let base = format!("{}-{}", clean(node, '.'), clean(driver, '-'));
    let suffix = format!("-{index}");
    if base.len() + suffix.len() <= MAX_NAME {
        return format!("{base}{suffix}");
    }
    let hash = format!("-{:08x}", fnv1a(base.as_bytes()) as u32);
    let keep = MAX_NAME - suffix.len() - hash.len();
    // Each DNS label must end with a letter or digit; the cut may leave '-' or '.'.
    let front = base[..keep].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{front}{hash}{suffix}")
}

/// FNV-1a, 64 bits: stable across Rust releases (std's hashers promise no such thing).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A device attribute as the API spells it: exactly one of `int`, `bool`, `string`, `version`.
fn attribute_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Int(i) => json!({ "int": i }),
        AttrValue::Bool(b) => json!({ "bool": b }),
        AttrValue::String(s) => json!({ "string": s }),
        AttrValue::Version(s) => json!({ "version": s }),
    }
}

fn device_json(d: &DraDevice) -> Value {
    let attributes: Map<String, Value> = d.attributes.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect();
    json!({ "name": d.name, "attributes": attributes })
}

/// Pure: the pool's ResourceSlices: the healthy devices, sorted by name (duplicates dropped: the
/// API would refuse the slice), in chunks of [`MAX_DEVICES_PER_SLICE`]; one empty slice when no
/// device is healthy. Each is the full server-side apply body.
pub fn slice_objects(driver: &str, node: &str, node_uid: &str, generation: i64, devices: &[DraDevice]) -> Vec<Value> {
    let mut healthy: Vec<&DraDevice> = devices.iter().filter(|d| d.healthy).collect();
    healthy.sort_by(|a, b| a.name.cmp(&b.name));
    healthy.dedup_by(|a, b| a.name == b.name);
    let mut chunks: Vec<&[&DraDevice]> = healthy.chunks(MAX_DEVICES_PER_SLICE).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let count = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let devices: Vec<Value> = chunk.iter().map(|d| device_json(d)).collect();
            json!({
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {
                    "name": slice_name(node, driver, i),
                    "labels": { MANAGED_BY_LABEL: MANAGED_BY },
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": node,
                        "uid": node_uid,
                        "controller": true,
                    }],
                },
                "spec": {
                    "driver": driver,
                    "nodeName": node,
                    "pool": { "name": node, "generation": generation, "resourceSliceCount": count },
                    "devices": devices,
                },
            })
        })
        .collect()
}

/// An owner reference, as far as nodeprep compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerView {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: bool,
}

/// What the API server showed of one of the node's slices.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingSlice {
    pub name: String,
    pub resource_version: Option<String>,
    /// `spec.pool.generation` (0 when missing).
    pub generation: i64,
    pub spec: Value,
    pub labels: BTreeMap<String, String>,
    pub owners: Vec<OwnerView>,
}

impl ExistingSlice {
    /// Reads the parts nodeprep compares; `None` for an object without a name.
    pub fn from_object(obj: &DynamicObject) -> Option<ExistingSlice> {
        let meta = &obj.metadata;
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        let generation = spec.pointer("/pool/generation").and_then(Value::as_i64).unwrap_or(0);
        let owners = meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| OwnerView {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
                controller: o.controller == Some(true),
            })
            .collect();
        Some(ExistingSlice {
            name,
            resource_version: meta.resource_version.clone(),
            generation,
            spec,
            labels: meta.labels.clone().unwrap_or_default(),
            owners,
        })
    }
}

/// Drops nulls and empty lists and maps, recursively: the API server leaves out empty fields
/// (`devices: []`, `attributes: {}`) that nodeprep sends.
fn pruned(v: &Value) -> Value {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match v {
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), pruned(v))).filter(|(_, v)| !empty(v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(pruned).collect()),
        other => other.clone(),
    }
}

/// Pure: whether `existing` already says what `desired` (one of [`slice_objects`]) says: the
/// same spec (generation included), nodeprep's label and its owner reference. Labels and owner
/// references others added do not count (nodeprep's apply would leave them, so demanding their
/// absence would apply forever); resourceVersion, managedFields and the like are not compared.
pub fn content_matches(existing: &ExistingSlice, desired: &Value) -> bool {
    if pruned(&existing.spec) != pruned(&desired["spec"]) {
        return false;
    }
    let labels_match = desired["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| existing.labels.get(k).map(String::as_str) == v.as_str());
    let owners_match = desired["metadata"]["ownerReferences"].as_array().into_iter().flatten().all(|want| {
        existing.owners.iter().any(|o| {
            Some(o.api_version.as_str()) == want["apiVersion"].as_str()
                && Some(o.kind.as_str()) == want["kind"].as_str()
                && Some(o.name.as_str()) == want["name"].as_str()
                && Some(o.uid.as_str()) == want["uid"].as_str()
                && o.controller == want["controller"].as_bool().unwrap_or(false)
        })
    });
    labels_match && owners_match
}

/// What to send to make the node's slices say what is desired.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicePlan {
    /// The pool's generation after the plan is carried out.
    pub generation: i64,
    /// Server-side apply bodies, in index order.
    pub apply: Vec<Value>,
    /// Names of slices to delete: no longer part of the pool.
    pub delete: Vec<String>,
}

impl SlicePlan {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// Pure: what to write so the node's slices of `driver` publish `devices`. When every existing
/// slice already matches the pool at the highest existing generation (and there are no others),
/// nothing; otherwise the whole pool at that generation + 1, and the slices outside it deleted.
pub fn plan(driver: &str, node: &str, node_uid: &str, devices: &[DraDevice], existing: &[ExistingSlice]) -> SlicePlan {
    let current = existing.iter().map(|s| s.generation).max().unwrap_or(0);
    let at_current = slice_objects(driver, node, node_uid, current, devices);
    let desired_names: BTreeSet<&str> =
        at_current.iter().filter_map(|s| s.pointer("/metadata/name")?.as_str()).collect();
    let existing_names: BTreeSet<&str> = existing.iter().map(|s| s.name.as_str()).collect();
    let up_to_date = desired_names == existing_names
        && at_current.iter().all(|want| {
            let name = want.pointer("/metadata/name").and_then(Value::as_str);
            existing.iter().any(|e| Some(e.name.as_str()) == name && content_matches(e, want))
        });
    if up_to_date {
        return SlicePlan { generation: current, apply: Vec::new(), delete: Vec::new() };
    }
    let generation = current.saturating_add(1);
    let apply = slice_objects(driver, node, node_uid, generation, devices);
    let delete = existing_names.difference(&desired_names).map(|n| (*n).to_owned()).collect();
    SlicePlan { generation, apply, delete }
}

/// Pure: whether resource version `rv` is older than `than`. Resource versions are opaque to
/// clients, but the API server's are etcd revisions: compared only when both are integers.
fn is_older(rv: Option<&str>, than: Option<&str>) -> bool {
    match (rv.and_then(|r| r.parse::<u64>().ok()), than.and_then(|r| r.parse::<u64>().ok())) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// How the publisher talks to the API server.
#[derive(Debug, Clone)]
pub struct SliceOptions {
    /// The DRA driver name (`vfio.nodeprep.io`).
    pub driver: String,
    pub node_name: String,
    /// The deadline of each request (the start of a watch included).
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Asked of the API server for each watch; it ends the watch after about this long.
    pub watch_timeout_secs: u32,
}

impl SliceOptions {
    pub fn new(driver: impl Into<String>, node_name: impl Into<String>) -> Self {
        SliceOptions {
            driver: driver.into(),
            node_name: node_name.into(),
            request_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            watch_timeout_secs: 290,
        }
    }
}

/// What the agent can show about the published slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceStatus {
    /// The slices say what was last asked (as of the last look).
    pub published: bool,
    /// The pool's generation.
    pub generation: i64,
    /// How many slices the pool has.
    pub slices: usize,
    /// How many devices they offer (the healthy ones).
    pub devices: usize,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
}

type SliceEvents = Pin<Box<dyn Stream<Item = Result<WatchEvent<DynamicObject>, kube::Error>> + Send>>;

/// The publisher's state between events.
struct Publisher {
    api: Api<DynamicObject>,
    nodes: Api<Node>,
    opts: SliceOptions,
    stats: Arc<ApiStats>,
    status: watch::Sender<SliceStatus>,
    /// The Node's uid, for the owner reference. Read once; again after a slice was deleted (the
    /// garbage collector deletes them when the Node is deleted, and a Node re-created under
    /// the same name has a new uid).
    node_uid: Option<String>,
    /// The node's slices as last seen (list, watch, answers to writes); `None`: list again.
    view: Option<BTreeMap<String, ExistingSlice>>,
    /// Where the watch resumes: the list's resource version, then each event's.
    resume_rv: Option<String>,
    events: Option<SliceEvents>,
    backoff: Backoff,
}

impl Publisher {
    fn fail(&mut self, e: &ClusterError) -> Instant {
        self.status.send_modify(|s| {
            s.published = false;
            s.last_error = Some(e.to_string());
        });
        self.backoff.retry_at("resource slices", e)
    }

    /// A failed watch: logged, retried after a backoff. The slices' status stays as it is.
    fn retry_watch(&mut self, e: &ClusterError) -> Instant {
        self.backoff.retry_at("watching the node's resource slices", e)
    }

    /// Lists the node's slices afresh; the watch restarts from the list.
    async fn list(&mut self) -> Result<(), ClusterError> {
        let lp = ListParams::default().fields(&field_selector(&self.opts.driver, &self.opts.node_name));
        let api = self.api.clone();
        let list =
            call(
                &self.stats,
                "LIST",
                PATH.into(),
                self.opts.request_timeout,
                false,
                async move { api.list(&lp).await },
            )
            .await?;
        let view = list.items.iter().filter_map(ExistingSlice::from_object).map(|s| (s.name.clone(), s)).collect();
        self.view = Some(view);
        self.resume_rv = list.metadata.resource_version;
        self.events = None;
        Ok(())
    }

    async fn node_uid(&mut self) -> Result<String, ClusterError> {
        if let Some(uid) = &self.node_uid {
            return Ok(uid.clone());
        }
        let path = format!("/api/v1/nodes/{}", self.opts.node_name);
        let (nodes, name) = (self.nodes.clone(), self.opts.node_name.clone());
        let node =
            call(
                &self.stats,
                "GET",
                path.clone(),
                self.opts.request_timeout,
                false,
                async move { nodes.get(&name).await },
            )
            .await?;
        let uid = node.metadata.uid.filter(|u| !u.is_empty()).ok_or(ClusterError::Request {
            operation: "GET",
            path,
            status: None,
            message: "the Node has no uid".into(),
        })?;
        self.node_uid = Some(uid.clone());
        Ok(uid)
    }

    /// One look: list if needed, plan, and write what the plan says.
    async fn reconcile(&mut self, devices: Option<&[DraDevice]>) -> Result<(), ClusterError> {
        if self.view.is_none() {
            self.list().await?;
        }
        // Not known yet: the slices stay as they are.
        let Some(devices) = devices else {
            return Ok(());
        };
        let uid = self.node_uid().await?;
        let existing: Vec<ExistingSlice> = self.view.iter().flat_map(|v| v.values().cloned()).collect();
        let (driver, node) = (self.opts.driver.clone(), self.opts.node_name.clone());
        let plan = plan(&driver, &node, &uid, devices, &existing);
        let offered = devices.iter().filter(|d| d.healthy).count();
        let done = |s: &mut SliceStatus| {
            s.published = true;
            s.generation = plan.generation;
            s.slices = if plan.is_empty() { existing.len() } else { plan.apply.len() };
            s.devices = offered;
            s.last_error = None;
        };
        if plan.is_empty() {
            self.status.send_if_modified(|s| {
                let before = s.clone();
                done(s);
                *s != before
            });
            return Ok(());
        }
        // Deletes first, as upstream does: devices no longer there are withdrawn even when the
        // new slices turn out to be refused.
        for name in &plan.delete {
            self.delete(name).await?;
        }
        for body in &plan.apply {
            self.apply(body).await?;
        }
        tracing::info!(
            node = %node,
            driver = %driver,
            generation = plan.generation,
            slices = plan.apply.len(),
            deleted = plan.delete.len(),
            devices = offered,
            "resource slices published"
        );
        self.status.send_modify(done);
        Ok(())
    }

    async fn delete(&mut self, name: &str) -> Result<(), ClusterError> {
        let (api, n) = (self.api.clone(), name.to_owned());
        let path = format!("{PATH}/{name}");
        match call(&self.stats, "DELETE", path, self.opts.request_timeout, true, async move {
            api.delete(&n, &DeleteParams::default()).await
        })
        .await
        {
            Ok(_) => {}
            // Already gone: what was wanted.
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(self.stale_on_conflict(e)),
        }
        if let Some(v) = self.view.as_mut() {
            v.remove(name);
        }
        Ok(())
    }

    async fn apply(&mut self, body: &Value) -> Result<(), ClusterError> {
        let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let (api, n, body) = (self.api.clone(), name.clone(), body.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let path = format!("{PATH}/{name}");
        let result =
            call(&self.stats, "PATCH (server-side apply)", path, self.opts.request_timeout, true, async move {
                api.patch(&n, &params, &Patch::Apply(&body)).await
            })
            .await;
        match result {
            Ok(obj) => {
                self.observe(&obj);
                Ok(())
            }
            Err(e) => Err(self.stale_on_conflict(e)),
        }
    }

    /// After a 409 the view the plan came from was stale: list again before the retry.
    fn stale_on_conflict(&mut self, e: ClusterError) -> ClusterError {
        if e.status() == Some(409) {
            self.view = None;
        }
        e
    }

    /// Takes in a slice as the server showed it, unless the view already holds a newer one (the
    /// answer to a write can overtake the watch event of the write before it).
    fn observe(&mut self, obj: &DynamicObject) {
        let (Some(view), Some(slice)) = (self.view.as_mut(), ExistingSlice::from_object(obj)) else {
            return;
        };
        let current = view.get(&slice.name).and_then(|s| s.resource_version.as_deref());
        if !is_older(slice.resource_version.as_deref(), current) {
            view.insert(slice.name.clone(), slice);
        }
    }

    /// A slice deleted by someone (the kubelet's wipe, the garbage collector) or by nodeprep.
    fn forget(&mut self, obj: &DynamicObject) {
        self.node_uid = None;
        let (Some(view), Some(name)) = (self.view.as_mut(), obj.metadata.name.as_deref()) else {
            return;
        };
        // A deletion older than what the view holds is of an earlier object of that name.
        let current = view.get(name).and_then(|s| s.resource_version.as_deref());
        if !is_older(obj.metadata.resource_version.as_deref(), current) {
            view.remove(name);
        }
    }

    async fn open_watch(&mut self) -> Result<(), ClusterError> {
        let rv = self.resume_rv.clone().unwrap_or_else(|| "0".into());
        let wp = WatchParams::default()
            .fields(&field_selector(&self.opts.driver, &self.opts.node_name))
            .timeout(self.opts.watch_timeout_secs);
        let api = self.api.clone();
        let stream = call(&self.stats, "WATCH", PATH.into(), self.opts.request_timeout, false, async move {
            api.watch(&wp, &rv).await
        })
        .await?;
        self.events = Some(Box::pin(stream));
        Ok(())
    }
}

/// Keeps this node's ResourceSlices of `opts.driver` publishing the latest `devices` (`None`: not
/// known yet, nothing is written) until `shutdown` resolves. Publishes what it knows on `status`.
pub async fn run(
    client: kube::Client,
    opts: SliceOptions,
    stats: Arc<ApiStats>,
    mut devices: watch::Receiver<Option<Vec<DraDevice>>>,
    status: watch::Sender<SliceStatus>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut p = Publisher {
        api: Api::all_with(client.clone(), &resource_slice_api()),
        nodes: Api::all(client),
        opts,
        stats,
        status,
        node_uid: None,
        view: None,
        resume_rv: None,
        events: None,
        backoff,
    };
    let mut watch_started = Instant::now();
    // When to reconcile next: now at start, then after changes, or after a backoff.
    let mut due: Option<Instant> = Some(Instant::now());
    let mut watch_due: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if due.is_some_and(|t| t <= Instant::now()) {
            due = None;
            let d = devices.borrow_and_update().clone();
            match p.reconcile(d.as_deref()).await {
                Ok(()) => p.backoff.reset(),
                Err(e) => due = Some(p.fail(&e)),
            }
        }
        if p.events.is_none() && p.view.is_some() && watch_due.is_none_or(|t| t <= Instant::now()) {
            watch_due = None;
            match p.open_watch().await {
                Ok(()) => watch_started = Instant::now(),
                Err(e) => {
                    // The resume point may be the problem (too old): list afresh first.
                    p.view = None;
                    due = Some(p.retry_watch(&e));
                }
            }
        }
        let next_wake = [due, watch_due].into_iter().flatten().min();
        tokio::select! {
            () = &mut shutdown => return,
            changed = devices.changed() => {
                if changed.is_err() {
                    return;
                }
                // During a backoff the retry already pending will carry the new devices.
                due.get_or_insert_with(Instant::now);
            }
            ev = async { match p.events.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match ev {
                    Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                        p.resume_rv = obj.metadata.resource_version.clone().or(p.resume_rv.take());
                        p.observe(&obj);
                        due.get_or_insert_with(|| Instant::now() + SETTLE);
                    }
                    Some(Ok(WatchEvent::Deleted(obj))) => {
                        p.resume_rv = obj.metadata.resource_version.clone().or(p.resume_rv.take());
                        tracing::debug!(slice = obj.metadata.name.as_deref().unwrap_or("?"), "resource slice deleted");
                        p.forget(&obj);
                        due.get_or_insert_with(|| Instant::now() + SETTLE);
                    }
                    Some(Ok(WatchEvent::Bookmark(b))) => p.resume_rv = Some(b.metadata.resource_version),
                    Some(Ok(WatchEvent::Error(s))) => {
                        // 410 Gone: the resume point is too old. Either way, list afresh.
                        tracing::debug!(code = s.code, message = %s.message, "resource slice watch ended by the API server");
                        p.view = None;
                        p.events = None;
                        if s.code == 410 {
                            due.get_or_insert_with(Instant::now);
                        } else {
                            due = Some(p.retry_watch(&ClusterError::Request {
                                operation: "WATCH",
                                path: PATH.into(),
                                status: Some(s.code),
                                message: s.message.clone(),
                            }));
                        }
                    }
                    Some(Err(e)) => {
                        p.view = None;
                        p.events = None;
                        due = Some(p.retry_watch(&ClusterError::Request {
                            operation: "WATCH",
                            path: PATH.into(),
                            status: None,
                            message: e.to_string(),
                        }));
                    }
                    None => {
                        // The API server ended the watch (its timeout): resume where it ended. A
                        // watch that ends at once is backed off, so a misbehaving server is not
                        // hammered.
                        p.events = None;
                        if watch_started.elapsed() < Duration::from_secs(1) {
                            watch_due = Some(Instant::now() + p.backoff.next_delay());
                        }
                    }
                }
            }
            () = async { match next_wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

/// Deletes every ResourceSlice of `driver` on `node` (for `nodeprep dra uninstall`): lists them
/// by field selector and deletes each (a slice already gone counts as deleted). Returns how many
/// it deleted. One list and one delete per slice, so RBAC needs no `deletecollection`.
pub async fn remove_all(client: kube::Client, driver: &str, node: &str) -> Result<usize, ClusterError> {
    let stats = ApiStats::default();
    let timeout = Duration::from_secs(10);
    let api: Api<DynamicObject> = Api::all_with(client, &resource_slice_api());
    let lp = ListParams::default().fields(&field_selector(driver, node));
    let lister = api.clone();
    let list = call(&stats, "LIST", PATH.into(), timeout, false, async move { lister.list(&lp).await }).await?;
    let mut deleted = 0;
    for name in list.items.iter().filter_map(|o| o.metadata.name.clone()) {
        let (api, n) = (api.clone(), name.clone());
        match call(&stats, "DELETE", format!("{PATH}/{name}"), timeout, true, async move {
            api.delete(&n, &DeleteParams::default()).await
        })
        .await
        {
            Ok(_) => deleted += 1,
            Err(e) if e.status() == Some(404) => deleted += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRIVER: &str = "vfio.nodeprep.io";
    const NODE: &str = "worker-0";
    const UID: &str = "5f1c-node-uid";

    fn device(i: usize) -> DraDevice {
        let primary: crate::model::PciAddress =
            format!("0000:{:02x}:{:02x}.0", i / 32, i % 32).parse().expect("address");
        DraDevice {
            name: format!("pci-0000-{:02x}-{:02x}-0", i / 32, i % 32),
            primary,
            functions: vec![primary],
            iommu_group: Some(i as u32),
            at_rest: crate::config::AtRest::default(),
            resource_name: "nodeprep.io/vfio".into(),
            healthy: true,
            problem: None,
            attributes: BTreeMap::from([
                ("resource.kubernetes.io/pciBusID".to_owned(), AttrValue::String(primary.to_string())),
                ("iommuGroup".to_owned(), AttrValue::Int(i as i64)),
            ]),
        }
    }

    fn devices(n: usize) -> Vec<DraDevice> {
        // Reversed, so sorting is what puts them in order.
        (0..n).rev().map(device).collect()
    }

    fn names(slices: &[Value]) -> Vec<String> {
        slices.iter().map(|s| s["metadata"]["name"].as_str().expect("name").to_owned()).collect()
    }

    fn device_counts(slices: &[Value]) -> Vec<usize> {
        slices.iter().map(|s| s["spec"]["devices"].as_array().expect("devices").len()).collect()
    }

    /// A slice as the API server would return it: its body plus what the server adds, minus
    /// the empty fields it leaves out.
    fn as_stored(body: &Value, rv: u64) -> ExistingSlice {
        let mut v = pruned(body);
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        v["metadata"]["uid"] = json!(format!("slice-uid-{rv}"));
        v["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        v["metadata"]["managedFields"] = json!([{"manager": "nodeprep", "operation": "Apply", "apiVersion": "resource.k8s.io/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
        let obj: DynamicObject = serde_json::from_value(v).expect("a DynamicObject");
        ExistingSlice::from_object(&obj).expect("named")
    }

    fn stored(bodies: &[Value]) -> Vec<ExistingSlice> {
        bodies.iter().enumerate().map(|(i, b)| as_stored(b, 100 + i as u64)).collect()
    }

    #[test]
    fn devices_are_cut_into_slices_of_at_most_128() {
        for (n, counts) in [(1, vec![1]), (128, vec![128]), (129, vec![128, 1]), (257, vec![128, 128, 1])] {
            let slices = slice_objects(DRIVER, NODE, UID, 3, &devices(n));
            assert_eq!(device_counts(&slices), counts, "{n} devices");
            for s in &slices {
                assert_eq!(
                    s["spec"]["pool"],
                    json!({"name": NODE, "generation": 3, "resourceSliceCount": counts.len()})
                );
            }
            let expected: Vec<String> = (0..counts.len()).map(|i| format!("worker-0-vfio-nodeprep-io-{i}")).collect();
            assert_eq!(names(&slices), expected, "{n} devices");
        }
        // Sorted by name across the slices: slice 0 holds the first 128 names.
        let slices = slice_objects(DRIVER, NODE, UID, 1, &devices(129));
        let all: Vec<&str> = slices
            .iter()
            .flat_map(|s| s["spec"]["devices"].as_array().into_iter().flatten())
            .filter_map(|d| d["name"].as_str())
            .collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 129);
    }

    #[test]
    fn a_slice_is_a_resource_slice_of_the_node_owned_by_it() {
        let slices = slice_objects(DRIVER, NODE, UID, 1, &devices(1));
        let s = &slices[0];
        assert_eq!(s["apiVersion"], "resource.k8s.io/v1");
        assert_eq!(s["kind"], "ResourceSlice");
        assert_eq!(s["spec"]["driver"], DRIVER);
        assert_eq!(s["spec"]["nodeName"], NODE);
        assert_eq!(s["metadata"]["labels"], json!({"app.kubernetes.io/managed-by": "nodeprep"}));
        assert_eq!(
            s["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": UID, "controller": true}])
        );
    }

    #[test]
    fn no_healthy_device_is_an_empty_pool_of_one_slice() {
        for input in [vec![], vec![DraDevice { healthy: false, problem: Some("no IOMMU group".into()), ..device(0) }]] {
            let slices = slice_objects(DRIVER, NODE, UID, 1, &input);
            assert_eq!(slices.len(), 1);
            assert_eq!(slices[0]["spec"]["devices"], json!([]));
            assert_eq!(slices[0]["spec"]["pool"]["resourceSliceCount"], 1);
        }
    }

    #[test]
    fn unhealthy_devices_are_left_out() {
        let mut input = devices(3);
        input[1].healthy = false;
        let gone = input[1].name.clone();
        let slices = slice_objects(DRIVER, NODE, UID, 1, &input);
        let listed: Vec<&str> = slices[0]["spec"]["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .filter_map(|d| d["name"].as_str())
            .collect();
        assert_eq!(listed.len(), 2);
        assert!(!listed.contains(&gone.as_str()));
    }

    #[test]
    fn attributes_have_the_apis_shape() {
        let mut d = device(5);
        d.attributes = BTreeMap::from([
            ("resource.kubernetes.io/pciBusID".to_owned(), AttrValue::String("0000:00:05.0".into())),
            ("numaNode".to_owned(), AttrValue::Int(1)),
            ("sriov".to_owned(), AttrValue::Bool(false)),
            ("driverVersion".to_owned(), AttrValue::Version("1.2.3".into())),
        ]);
        let slices = slice_objects(DRIVER, NODE, UID, 1, &[d]);
        assert_eq!(
            slices[0]["spec"]["devices"],
            json!([{"name": "pci-0000-00-05-0", "attributes": {
                "driverVersion": {"version": "1.2.3"},
                "numaNode": {"int": 1},
                "resource.kubernetes.io/pciBusID": {"string": "0000:00:05.0"},
                "sriov": {"bool": false},
            }}])
        );
    }

    #[test]
    fn names_stay_valid_dns_subdomains_and_distinct() {
        let valid = |n: &str| {
            n.len() <= 253
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && label.as_bytes()[0].is_ascii_alphanumeric()
                        && label.as_bytes()[label.len() - 1].is_ascii_alphanumeric()
                })
        };
        assert_eq!(slice_name("node-1.example.com", DRIVER, 0), "node-1.example.com-vfio-nodeprep-io-0");
        let long_a = format!("{}.{}a", "n".repeat(62), "x".repeat(180));
        let long_b = format!("{}.{}b", "n".repeat(62), "x".repeat(180));
        for node in [long_a.as_str(), long_b.as_str()] {
            for i in [0, 7, 12] {
                let n = slice_name(node, DRIVER, i);
                assert!(valid(&n), "{n} ({} chars)", n.len());
                assert!(n.ends_with(&format!("-{i}")), "{n}");
                assert_eq!(n, slice_name(node, DRIVER, i), "deterministic");
            }
        }
        assert_ne!(slice_name(&long_a, DRIVER, 0), slice_name(&long_b, DRIVER, 0));
        // A cut that lands on a '.' or '-' is trimmed back to a letter or digit.
        let dotted = format!("{}.{}", "a".repeat(230), "b".repeat(40));
        assert!(valid(&slice_name(&dotted, DRIVER, 1)), "{}", slice_name(&dotted, DRIVER, 1));
    }

    #[test]
    fn a_first_publication_starts_at_generation_one() {
        let p = plan(DRIVER, NODE, UID, &devices(2), &[]);
        assert_eq!(p.generation, 1);
        assert_eq!(p.apply, slice_objects(DRIVER, NODE, UID, 1, &devices(2)));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn nothing_is_written_when_the_slices_already_say_it() {
        for n in [0, 3, 129] {
            let existing = stored(&slice_objects(DRIVER, NODE, UID, 7, &devices(n)));
            let p = plan(DRIVER, NODE, UID, &devices(n), &existing);
            assert!(p.is_empty(), "{n} devices: {p:?}");
            assert_eq!(p.generation, 7, "kept");
        }
        // Labels someone else added are theirs: no apply to "remove" them.
        let mut existing = stored(&slice_objects(DRIVER, NODE, UID, 7, &devices(1)));
        existing[0].labels.insert("team".into(), "a".into());
        assert!(plan(DRIVER, NODE, UID, &devices(1), &existing).is_empty());
        // Unhealthy devices are not part of the content.
        let mut with_sick = devices(1);
        with_sick.push(DraDevice { healthy: false, ..device(9) });
        assert!(plan(DRIVER, NODE, UID, &with_sick, &existing).is_empty());
    }

    #[test]
    fn any_change_bumps_the_generation_and_rewrites_the_pool() {
        let existing = stored(&slice_objects(DRIVER, NODE, UID, 4, &devices(129)));
        // A device's attribute changed.
        let mut changed = devices(129);
        changed[0].attributes.insert("numaNode".into(), AttrValue::Int(1));
        let p = plan(DRIVER, NODE, UID, &changed, &existing);
        assert_eq!(p.generation, 5);
        assert_eq!(p.apply, slice_objects(DRIVER, NODE, UID, 5, &changed));
        assert!(p.delete.is_empty());
        // A device turned unhealthy.
        let mut sick = devices(129);
        sick[3].healthy = false;
        assert_eq!(plan(DRIVER, NODE, UID, &sick, &existing).generation, 5);
        // The owner changed (the Node was re-created): same devices, new uid.
        let p = plan(DRIVER, NODE, "new-uid", &devices(129), &existing);
        assert_eq!((p.generation, p.apply.len()), (5, 2));
        // nodeprep's label was removed.
        let mut unlabelled = existing.clone();
        unlabelled[1].labels.clear();
        assert_eq!(plan(DRIVER, NODE, UID, &devices(129), &unlabelled).generation, 5);
    }

    #[test]
    fn a_wiped_or_partly_wiped_pool_is_published_again() {
        let all = stored(&slice_objects(DRIVER, NODE, UID, 4, &devices(200)));
        // The kubelet deleted one of the two slices: the whole pool again, one generation up.
        let p = plan(DRIVER, NODE, UID, &devices(200), &all[1..]);
        assert_eq!((p.generation, p.apply.len(), p.delete.len()), (5, 2, 0));
        // All gone: as the first time.
        assert_eq!(plan(DRIVER, NODE, UID, &devices(200), &[]).generation, 1);
    }

    #[test]
    fn the_generation_is_one_above_the_highest_existing() {
        let mut existing = stored(&slice_objects(DRIVER, NODE, UID, 4, &devices(200)));
        existing[1] = as_stored(&slice_objects(DRIVER, NODE, UID, 9, &devices(200))[1], 300);
        let p = plan(DRIVER, NODE, UID, &devices(200), &existing);
        assert_eq!(p.generation, 10);
        assert_eq!(p.apply.len(), 2);
    }

    #[test]
    fn surplus_slices_are_deleted() {
        let mut existing = stored(&slice_objects(DRIVER, NODE, UID, 2, &devices(300)));
        // One of ours under another name (an older naming, or a copy made by hand).
        existing.push(as_stored(&json!({"metadata": {"name": "stray"}, "spec": {"pool": {"generation": 1}}}), 400));
        let p = plan(DRIVER, NODE, UID, &devices(100), &existing);
        assert_eq!(p.generation, 3);
        assert_eq!(names(&p.apply), ["worker-0-vfio-nodeprep-io-0"]);
        assert_eq!(p.apply[0]["spec"]["pool"]["resourceSliceCount"], 1);
        assert_eq!(p.delete, ["stray", "worker-0-vfio-nodeprep-io-1", "worker-0-vfio-nodeprep-io-2"]);
        // An extra slice alone is enough to rewrite: the pool's count would be wrong with it.
        let mut extra = stored(&slice_objects(DRIVER, NODE, UID, 2, &devices(5)));
        extra.push(as_stored(&json!({"metadata": {"name": "stray"}, "spec": {}}), 500));
        let p = plan(DRIVER, NODE, UID, &devices(5), &extra);
        assert_eq!((p.generation, p.delete.clone()), (3, vec!["stray".to_owned()]));
    }

    #[test]
    fn content_is_compared_on_spec_label_and_owner_only() {
        let want = &slice_objects(DRIVER, NODE, UID, 1, &devices(2))[0];
        let have = as_stored(want, 42);
        assert!(content_matches(&have, want));
        let mut other_owner = have.clone();
        other_owner.owners[0].controller = false;
        assert!(!content_matches(&other_owner, want));
        let mut other_spec = have.clone();
        other_spec.spec["devices"][0]["attributes"]["extra"] = json!({"int": 1});
        assert!(!content_matches(&other_spec, want), "an attribute nodeprep no longer sends is a difference");
    }

    #[test]
    fn older_resource_versions_are_recognised_only_when_numeric() {
        assert!(is_older(Some("41"), Some("42")));
        assert!(!is_older(Some("42"), Some("42")));
        assert!(!is_older(Some("x"), Some("42")));
        assert!(!is_older(Some("41"), None));
    }
}
