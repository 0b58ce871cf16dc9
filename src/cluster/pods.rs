//! The pods of this node and its maintenance, as far as giving devices back needs them.
//!
//! - [`list`]: the pods the API server has on this node (one LIST with `spec.nodeName`), to tell
//!   which pods of the kubelet's checkpoint are gone ([`crate::model::PodView`]) and to name them.
//! - [`watch_departures`]: one watch on the same pods; every pod that is deleted or finishes
//!   pokes `departed`, so a device waiting for it is given back at once, not at the next resync.
//! - [`watch_maintenance`]: OpenShift's `NodeMaintenance` (`nodemaintenance.medik8s.io/v1beta1`,
//!   cluster-scoped, `spec.nodeName`): the name of the one for this node, if any. It looks only
//!   while the node is cordoned: the Node Maintenance Operator cordons a node first thing, so an
//!   uncordoned node has no maintenance to find and costs the API server nothing (on plain
//!   Kubernetes the resource does not exist, and 5,000 idle agents asking for it would be
//!   5,000 needless 404s every few minutes).
//!
//! Reads only: the agent never writes pods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams};
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;

use super::{ApiStats, Backoff, ClusterError, call};

/// The annotation a static pod's mirror carries: the UID the kubelet knows the pod by.
const MIRROR_HASH: &str = "kubernetes.io/config.hash";

/// `NodeMaintenance`, from the Node Maintenance Operator OpenShift Virtualization uses.
pub fn node_maintenance_api() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nodemaintenance.medik8s.io", "v1beta1", "NodeMaintenance"),
        "nodemaintenances",
    )
}

fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// Pure: `uid → namespace/name` of `pods`, with a static pod also under its mirror hash.
pub fn names(pods: &[Pod]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in pods {
        let m = &p.metadata;
        let name = format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or("?"));
        if let Some(hash) = m.annotations.as_ref().and_then(|a| a.get(MIRROR_HASH)) {
            out.insert(hash.clone(), name.clone());
        }
        if let Some(uid) = &m.uid {
            out.insert(uid.clone(), name);
        }
    }
    out
}

/// Pure: has this pod finished for good (its containers will not run again)?
pub fn finished(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
}

/// The pods of `node` the API server has, by UID (finished pods left out: they hold nothing).
pub async fn list(
    client: &kube::Client,
    node: &str,
    stats: &ApiStats,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, ClusterError> {
    let api: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&node_selector(node));
    let list = call(stats, "LIST", "/api/v1/pods".into(), timeout, false, async move { api.list(&lp).await }).await?;
    let running: Vec<Pod> = list.items.into_iter().filter(|p| !finished(p)).collect();
    Ok(names(&running))
}

/// Pure: the view of the checkpoint's pods once `listed` was read after the checkpoint: a pod
/// of `checkpoint_pods` missing from `listed` is gone.
pub fn view(checkpoint_pods: &BTreeSet<String>, listed: BTreeMap<String, String>) -> crate::model::PodView {
    let gone = checkpoint_pods.iter().filter(|u| !listed.contains_key(*u)).cloned().collect();
    crate::model::PodView { names: listed, gone }
}

/// Pokes `departed` whenever a pod of `node` is deleted or finishes, until the task is dropped.
pub async fn watch_departures(
    client: kube::Client,
    node: String,
    stats: Arc<ApiStats>,
    timeout: Duration,
    departed: Arc<Notify>,
) {
    let api: Api<Pod> = Api::all(client);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut rv: Option<String> = None;
    loop {
        if rv.is_none() {
            let (api, lp) = (api.clone(), ListParams::default().fields(&node_selector(&node)).limit(1));
            match call(&stats, "LIST", "/api/v1/pods".into(), timeout, false, async move { api.list(&lp).await }).await
            {
                Ok(l) => rv = l.metadata.resource_version,
                Err(e) => {
                    tokio::time::sleep_until(backoff.retry_at("listing the node's pods", &e)).await;
                    continue;
                }
            }
        }
        let from = rv.clone().unwrap_or_else(|| "0".into());
        let wp = WatchParams::default().fields(&node_selector(&node)).timeout(290);
        let a = api.clone();
        let stream = match call(&stats, "WATCH", "/api/v1/pods".into(), timeout, false, async move {
            a.watch(&wp, &from).await
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                rv = None;
                tokio::time::sleep_until(backoff.retry_at("watching the node's pods", &e)).await;
                continue;
            }
        };
        backoff.reset();
        let started = tokio::time::Instant::now();
        tokio::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(WatchEvent::Deleted(p)) => {
                    rv = p.metadata.resource_version.clone();
                    departed.notify_one();
                }
                Ok(WatchEvent::Modified(p) | WatchEvent::Added(p)) => {
                    rv = p.metadata.resource_version.clone();
                    if finished(&p) {
                        departed.notify_one();
                    }
                }
                Ok(WatchEvent::Bookmark(b)) => rv = Some(b.metadata.resource_version),
                Ok(WatchEvent::Error(_)) | Err(_) => {
                    // Too old a resource version (410) or a broken stream: list afresh. A
                    // departure in between is caught by the agent's resync.
                    rv = None;
                    departed.notify_one();
                    break;
                }
            }
        }
        if started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Pure: the name of the `NodeMaintenance` among `objects` that is for `node`.
pub fn maintenance_for(objects: &[DynamicObject], node: &str) -> Option<String> {
    objects
        .iter()
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .find(|o| o.data.get("spec").and_then(|s| s.get("nodeName")).and_then(|n| n.as_str()) == Some(node))
        .and_then(|o| o.metadata.name.clone())
}

/// Keeps `out` on the name of the `NodeMaintenance` for `node` (`None`: none, not cordoned, or
/// the resource does not exist), watching them while `cordoned` says so; until the task is
/// dropped.
pub async fn watch_maintenance(
    client: kube::Client,
    node: String,
    stats: Arc<ApiStats>,
    timeout: Duration,
    mut cordoned: watch::Receiver<bool>,
    out: watch::Sender<Option<String>>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &node_maintenance_api());
    loop {
        // Nothing to look for until the node is cordoned; on uncordon, forget what was seen.
        out.send_if_modified(|m| m.take().is_some());
        if cordoned.wait_for(|c| *c).await.is_err() {
            return;
        }
        tokio::select! {
            () = follow_maintenance(&api, &node, &stats, timeout, &out) => {}
            r = cordoned.wait_for(|c| !*c) => if r.is_err() { return },
        }
    }
}

/// Lists and watches NodeMaintenances, publishing the one for `node`, until dropped.
async fn follow_maintenance(
    api: &Api<DynamicObject>,
    node: &str,
    stats: &ApiStats,
    timeout: Duration,
    out: &watch::Sender<Option<String>>,
) {
    let path = "/apis/nodemaintenance.medik8s.io/v1beta1/nodemaintenances";
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let a = api.clone();
        let list =
            match call(stats, "LIST", path.into(), timeout, false, async move { a.list(&ListParams::default()).await })
                .await
            {
                Ok(l) => l,
                Err(e) if e.status() == Some(404) => {
                    // No Node Maintenance Operator here; it may be installed while the node is
                    // cordoned, so look again now and then.
                    out.send_if_modified(|m| m.take().is_some());
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    continue;
                }
                Err(e) => {
                    tokio::time::sleep_until(backoff.retry_at("listing NodeMaintenances", &e)).await;
                    continue;
                }
            };
        let mut objects: BTreeMap<String, DynamicObject> =
            list.items.into_iter().filter_map(|o| Some((o.metadata.name.clone()?, o))).collect();
        let publish = |objects: &BTreeMap<String, DynamicObject>| {
            let now = maintenance_for(&objects.values().cloned().collect::<Vec<_>>(), node);
            out.send_if_modified(|m| {
                *m != now && {
                    *m = now.clone();
                    true
                }
            });
        };
        publish(&objects);
        let from = list.metadata.resource_version.unwrap_or_else(|| "0".into());
        let a = api.clone();
        let wp = WatchParams::default().timeout(290);
        let stream =
            match call(stats, "WATCH", path.into(), timeout, false, async move { a.watch(&wp, &from).await }).await {
                Ok(s) => s,
                Err(e) => {
                    tokio::time::sleep_until(backoff.retry_at("watching NodeMaintenances", &e)).await;
                    continue;
                }
            };
        backoff.reset();
        let started = tokio::time::Instant::now();
        tokio::pin!(stream);
        while let Some(Ok(ev)) = stream.next().await {
            match ev {
                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                    if let Some(n) = o.metadata.name.clone() {
                        objects.insert(n, o);
                    }
                }
                WatchEvent::Deleted(o) => {
                    if let Some(n) = &o.metadata.name {
                        objects.remove(n);
                    }
                }
                WatchEvent::Bookmark(_) => continue,
                WatchEvent::Error(_) => break,
            }
            publish(&objects);
        }
        if started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, phase: &str, hash: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("vms".into());
        p.metadata.annotations = hash.map(|h| BTreeMap::from([(MIRROR_HASH.to_owned(), h.to_owned())]));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some(phase.into()), ..Default::default() });
        p
    }

    #[test]
    fn checkpoint_pods_missing_from_the_later_list_are_gone_static_pods_by_their_hash() {
        let pods = [pod("u1", "vm-a", "Running", None), pod("mirror", "etcd-n1", "Running", Some("h1"))];
        assert!(!finished(&pods[0]));
        assert!(finished(&pod("u9", "done", "Succeeded", None)));
        let listed = names(&pods);
        assert_eq!(listed.get("h1").map(String::as_str), Some("vms/etcd-n1"));
        let cp: BTreeSet<String> = ["u1", "h1", "u2"].iter().map(|s| s.to_string()).collect();
        let v = view(&cp, listed);
        assert_eq!(v.gone.into_iter().collect::<Vec<_>>(), ["u2"]);
        assert_eq!(v.names.get("u1").map(String::as_str), Some("vms/vm-a"));
    }

    #[test]
    fn the_maintenance_for_this_node_is_found_and_one_being_deleted_is_not() {
        let nm = |name: &str, node: &str, deleting: bool| {
            let mut o = DynamicObject::new(name, &node_maintenance_api());
            o.data = serde_json::json!({"spec": {"nodeName": node, "reason": "firmware"}});
            if deleting {
                o.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()));
            }
            o
        };
        assert_eq!(maintenance_for(&[nm("a", "n2", false), nm("b", "n1", false)], "n1").as_deref(), Some("b"));
        assert_eq!(maintenance_for(&[nm("b", "n1", true)], "n1"), None);
    }
}
