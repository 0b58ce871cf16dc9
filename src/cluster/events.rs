//! Kubernetes Events on the agent's Node: every bind, refusal (with its reason), restore and
//! failure, huge page reservations, and refused configs show in `oc describe node` / `kubectl describe node` and `oc get events`.
//!
//! Events are core/v1 Events in the `default` namespace whose `involvedObject` is the Node with
//! `uid` set to the node's name, exactly as the kubelet posts its own node events (kubectl's
//! node describer searches for both). Which outcome makes which Event is the pure
//! [`for_outcome`]; the [`Recorder`] posts them from a queue in the background (a slow API server
//! never holds up binding), retries a few times with backoff, and does not repeat an Event for a
//! device whose outcome has not changed (a config reload that changes nothing says nothing).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

use super::{ApiStats, Backoff, call};
use crate::bind::DeviceOutcome;
use crate::hugepages::{HugepageOutcome, PoolOutcome};

/// The namespace node Events go to (the kubelet's choice for cluster-scoped objects).
pub const NAMESPACE: &str = "default";
/// `source.component` and `reportingComponent`.
pub const COMPONENT: &str = "nodeprep";

/// One Event to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    pub warning: bool,
    /// CamelCase, as Kubernetes reasons are: `DeviceBound`, `BindRefused`, ...
    pub reason: &'static str,
    pub message: String,
}

impl NodeEvent {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        NodeEvent { warning: false, reason, message: message.into() }
    }
    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        NodeEvent { warning: true, reason, message: message.into() }
    }
}

/// Pure: the Event a bind or unbind outcome makes, if any. Devices left as they were
/// (`already-bound`, `left`) make none.
pub fn for_outcome(o: &DeviceOutcome) -> Option<NodeEvent> {
    let a = &o.address;
    let detail = o.detail.as_deref().unwrap_or("no reason given");
    Some(match o.outcome.as_str() {
        "bound" => NodeEvent::normal(
            "DeviceBound",
            match &o.vfio_device {
                Some(dev) => format!("{a} bound to vfio-pci ({dev})"),
                None => format!("{a} bound to vfio-pci"),
            },
        ),
        "refused" => NodeEvent::warning("BindRefused", format!("{a} not bound to vfio-pci: {detail}")),
        "failed" => NodeEvent::warning("BindFailed", format!("{a}: binding to vfio-pci failed: {detail}")),
        "rolled-back" => {
            NodeEvent::warning("BindFailed", format!("{a}: binding failed and was rolled back to its driver: {detail}"))
        }
        "restored" => NodeEvent::normal(
            "DeviceRestored",
            match &o.detail {
                Some(d) => format!("{a} given back to the host: {d}"),
                None => format!("{a} given back to the host"),
            },
        ),
        _ => return None,
    })
}

/// Pure: the Event for one device the config no longer wants on vfio-pci, given what was done
/// (`outcome`, the restore's, when there was one). Subject: `release-<address>`.
pub fn for_release(p: &crate::bind::ReleasePlan, outcome: Option<&DeviceOutcome>) -> Option<NodeEvent> {
    use crate::bind::ReleaseAction;
    let (a, why) = (&p.address, &p.why);
    Some(match (&p.action, outcome.map(|o| o.outcome.as_str())) {
        (ReleaseAction::Pending { holder }, _) => NodeEvent::warning(
            "DeviceReleasePending",
            format!("{a} stays on vfio-pci until {holder} lets it go, then goes back to the host ({why})"),
        ),
        (ReleaseAction::Restore { to }, Some("restored")) => NodeEvent::normal(
            "DeviceRestored",
            format!("{a} given back to {} ({why})", to.as_deref().unwrap_or("no driver")),
        ),
        (ReleaseAction::Restore { .. }, Some("failed" | "refused")) => NodeEvent::warning(
            "RestoreFailed",
            format!(
                "{a} could not be given back ({why}): {}",
                outcome.and_then(|o| o.detail.as_deref()).unwrap_or("no reason given")
            ),
        ),
        _ => return None,
    })
}

/// Pure: the Event a huge page reservation makes, if any (none when the pool was already as
/// asked).
pub fn for_hugepages(o: &HugepageOutcome) -> Option<NodeEvent> {
    let pool = match o.numa_node {
        Some(n) => format!("{} pages on NUMA node {n}", o.size()),
        None => format!("{} pages", o.size()),
    };
    let granted = o.granted.map_or_else(|| "unknown".to_owned(), |g| g.to_string());
    let detail = o.detail.as_deref().unwrap_or("no reason given");
    Some(match o.outcome {
        PoolOutcome::Unchanged => return None,
        PoolOutcome::Reserved => NodeEvent::normal("HugepagesReserved", format!("{pool}: {granted} reserved")),
        PoolOutcome::Short => NodeEvent::warning(
            "HugepagesShort",
            format!("{pool}: the kernel granted {granted} of {}: {detail}", o.requested),
        ),
        PoolOutcome::Refused | PoolOutcome::Failed => {
            NodeEvent::warning("HugepagesFailed", format!("{pool}: {detail}"))
        }
    })
}

/// Pure: the core/v1 Event object for `ev` on node `node` at `now`; `seq` keeps names unique
/// within one nanosecond.
pub fn event_object(node: &str, ev: &NodeEvent, now: Timestamp, seq: u32) -> Event {
    let nanos = now.as_nanosecond().unsigned_abs() + u128::from(seq);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{node}.{nanos:x}")),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: Some(node.into()),
            ..ObjectReference::default()
        },
        reason: Some(ev.reason.into()),
        message: Some(ev.message.clone()),
        type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(node.into()) }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.into()),
        ..Event::default()
    }
}

/// Posts Events in the background. Cheap to clone. Without a cluster it only drops them (the
/// agent logs every outcome anyway).
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<NodeEvent>>,
    last: Arc<Mutex<HashMap<String, NodeEvent>>>,
}

/// How many Events may wait; more are dropped with a log line.
const QUEUE: usize = 256;
/// Tries per Event.
const ATTEMPTS: u32 = 5;

impl Recorder {
    /// A recorder that posts nothing.
    pub fn disabled() -> Recorder {
        Recorder { tx: None, last: Arc::default() }
    }

    /// Starts the posting task for `node`.
    pub fn spawn(client: kube::Client, node: String, stats: Arc<ApiStats>, request_timeout: Duration) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<NodeEvent>(QUEUE);
        let api: Api<Event> = Api::namespaced(client, NAMESPACE);
        tokio::spawn(async move {
            let mut seq = 0u32;
            while let Some(ev) = rx.recv().await {
                let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                for attempt in 1..=ATTEMPTS {
                    seq = seq.wrapping_add(1);
                    let obj = event_object(&node, &ev, Timestamp::now(), seq);
                    let api = api.clone();
                    let path = format!("/api/v1/namespaces/{NAMESPACE}/events");
                    let r = call(&stats, "POST", path, request_timeout, true, async move {
                        api.create(&PostParams::default(), &obj).await
                    })
                    .await;
                    match r {
                        Ok(_) => break,
                        Err(e) if attempt == ATTEMPTS => {
                            tracing::warn!(error = %e, reason = ev.reason, "event not posted; giving up")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, reason = ev.reason, "event not posted; retrying");
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                    }
                }
            }
        });
        Recorder { tx: Some(tx), last: Arc::default() }
    }

    /// Queues `ev` about `subject` (a device address, `hugepages-2Mi`, ...) unless the last
    /// Event about it said the same.
    pub fn record(&self, subject: &str, ev: NodeEvent) {
        let Some(tx) = &self.tx else { return };
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(subject) == Some(&ev) {
                return;
            }
            last.insert(subject.to_owned(), ev.clone());
        }
        if tx.try_send(ev).is_err() {
            tracing::warn!(subject, "event queue full; event dropped");
            // Not sent: the same news later is still news.
            self.forget(subject);
        }
    }

    /// The subject is back in its wanted state: its next Event is posted even if it repeats
    /// an earlier one (bad config, good config, the same bad config again: two Events).
    pub fn forget(&self, subject: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(subject);
    }

    /// Queues the Events for huge page reservations.
    pub fn record_hugepages(&self, outcomes: &[HugepageOutcome]) {
        for o in outcomes {
            let subject = format!("hugepages-{}-{}", o.size(), o.pool());
            match for_hugepages(o) {
                Some(ev) => self.record(&subject, ev),
                None => self.forget(&subject),
            }
        }
    }

    /// Queues the Events for giving devices back: a pending device once (until it changes), every
    /// restore and every failed one.
    pub fn record_release(&self, released: &crate::bind::Released) {
        for p in &released.plan {
            let subject = format!("release-{}", p.address);
            let outcome = released.outcomes.iter().find(|o| o.address == p.address);
            match for_release(p, outcome) {
                Some(ev) => {
                    let done = ev.reason == "DeviceRestored";
                    self.record(&subject, ev);
                    // Given back: the device is out of nodeprep's hands; a later round is news.
                    if done {
                        self.forget(&subject);
                    }
                }
                None => self.forget(&subject),
            }
        }
        let renamed: std::collections::BTreeSet<String> =
            released.renames.iter().map(|r| format!("rename-{}", r.address)).collect();
        for r in &released.renames {
            let ev = NodeEvent::warning(
                "DeviceRenamePending",
                format!("{} is {}; it stays unhealthy as {} until then", r.address, r.problem(), r.to),
            );
            self.record(&format!("rename-{}", r.address), ev);
        }
        // A rename that went through: its next wait is news again.
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with("rename-") || renamed.contains(k));
    }

    /// Queues the Events for bind or unbind outcomes.
    pub fn record_outcomes(&self, outcomes: &[DeviceOutcome]) {
        for o in outcomes {
            match for_outcome(o) {
                Some(ev) => self.record(&o.address.to_string(), ev),
                // Back in its wanted state: a later refusal is news again.
                None => self.forget(&o.address.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PciAddress;

    fn outcome(outcome: &str, detail: Option<&str>) -> DeviceOutcome {
        DeviceOutcome {
            address: "0000:01:00.0".parse::<PciAddress>().expect("address"),
            outcome: outcome.into(),
            detail: detail.map(str::to_owned),
            vfio_device: (outcome == "bound").then(|| "/dev/vfio/12".to_owned()),
            writes: 3,
        }
    }

    #[tokio::test]
    async fn repeats_are_dropped_until_the_subject_is_forgotten() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let rec = Recorder { tx: Some(tx), last: Arc::default() };
        let bad = NodeEvent::warning("ConfigRefused", "bad");
        rec.record("config", bad.clone());
        rec.record("config", bad.clone());
        assert_eq!(rx.try_recv().ok(), Some(bad.clone()));
        assert!(rx.try_recv().is_err(), "the repeat is dropped");
        // A good config in between: the same bad config again is news.
        rec.forget("config");
        rec.record("config", bad.clone());
        assert_eq!(rx.try_recv().ok(), Some(bad));
        // Outcomes back in their wanted state forget their device.
        rec.record_outcomes(&[outcome("refused", Some("x"))]);
        rec.record_outcomes(&[outcome("already-bound", None)]);
        rec.record_outcomes(&[outcome("refused", Some("x"))]);
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
    }

    #[test]
    fn each_outcome_makes_its_event() {
        let e = for_outcome(&outcome("bound", None)).expect("event");
        assert_eq!((e.warning, e.reason), (false, "DeviceBound"));
        assert_eq!(e.message, "0000:01:00.0 bound to vfio-pci (/dev/vfio/12)");
        let e = for_outcome(&outcome("refused", Some("mounted at / (nvme0n1p2)"))).expect("event");
        assert_eq!((e.warning, e.reason), (true, "BindRefused"));
        assert!(e.message.ends_with("mounted at / (nvme0n1p2)"), "{}", e.message);
        assert_eq!(for_outcome(&outcome("failed", Some("x"))).map(|e| e.reason), Some("BindFailed"));
        assert_eq!(for_outcome(&outcome("rolled-back", Some("x"))).map(|e| e.reason), Some("BindFailed"));
        assert_eq!(for_outcome(&outcome("restored", None)).map(|e| e.reason), Some("DeviceRestored"));
        assert_eq!(for_outcome(&outcome("already-bound", None)), None);
        assert_eq!(for_outcome(&outcome("left", None)), None);
    }

    #[test]
    fn hugepage_outcomes_make_their_events() {
        let o = |outcome, granted, node| HugepageOutcome {
            size_kb: 2048,
            numa_node: node,
            path: "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages".into(),
            requested: 4096,
            before: Some(0),
            granted: Some(granted),
            writes: 1,
            outcome,
            detail: Some("granted 189 of 4096".into()),
        };
        assert_eq!(for_hugepages(&o(PoolOutcome::Unchanged, 4096, None)), None);
        let e = for_hugepages(&o(PoolOutcome::Reserved, 4096, Some(1))).expect("event");
        assert_eq!(
            (e.warning, e.reason, e.message.as_str()),
            (false, "HugepagesReserved", "2Mi pages on NUMA node 1: 4096 reserved")
        );
        let e = for_hugepages(&o(PoolOutcome::Short, 189, None)).expect("event");
        assert_eq!((e.warning, e.reason), (true, "HugepagesShort"));
        assert!(e.message.starts_with("2Mi pages: the kernel granted 189 of 4096"), "{}", e.message);
        assert_eq!(for_hugepages(&o(PoolOutcome::Refused, 0, Some(3))).map(|e| e.reason), Some("HugepagesFailed"));
    }

    #[test]
    fn the_event_object_points_at_the_node_like_the_kubelets_do() {
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().expect("time");
        let ev = event_object("worker-0", &NodeEvent::warning("BindRefused", "no"), now, 1);
        let v = serde_json::to_value(&ev).expect("json");
        assert_eq!(v["metadata"]["namespace"], "default");
        assert!(v["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("worker-0.")));
        assert_eq!(
            v["involvedObject"],
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": "worker-0", "uid": "worker-0"})
        );
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["reason"], "BindRefused");
        assert_eq!(v["source"], serde_json::json!({"component": "nodeprep", "host": "worker-0"}));
        assert_eq!(v["firstTimestamp"], "2026-11-22T10:00:00Z");
        assert_eq!(v["count"], 1);
        let other = event_object("worker-0", &NodeEvent::normal("DeviceBound", "x"), now, 2);
        assert_ne!(ev.metadata.name, other.metadata.name);
    }
}
