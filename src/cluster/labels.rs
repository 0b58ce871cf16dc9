//! Pure: which labels to server-side apply to the node, and whether to send anything at all.
//!
//! The input is the Node as the API server last showed it ([`NodeView`]: its labels and the
//! label keys nodeprep's `Apply` entry in `managedFields` owns) and the labels nodeprep wants
//! ([`Desired`]). The output is the full set to apply, or nothing when the Node already carries
//! exactly that: no request when nothing changed.
//!
//! Server-side apply semantics this relies on: the applied set is the whole of what nodeprep
//! owns, so a key left out is released (and removed, unless another manager co-owns it); a key
//! someone else set to another value is theirs (applying it without `force` would be a 409), so
//! nodeprep yields it rather than fight; a key someone removed is no longer owned by anyone and
//! is applied again.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

/// The field manager nodeprep applies as.
pub const FIELD_MANAGER: &str = "nodeprep";

/// What the API server showed of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Label keys in nodeprep's `Apply` managed-fields entry.
    pub owned: BTreeSet<String>,
    /// Cordoned (`spec.unschedulable`): the start of node maintenance.
    pub unschedulable: bool,
}

impl NodeView {
    /// Reads the parts of a Node nodeprep looks at. Managed fields it cannot parse count as
    /// not owned (the next apply then re-asserts them, which is harmless).
    pub fn from_node(node: &Node) -> NodeView {
        let meta = &node.metadata;
        let owned = meta
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply"))
            .filter_map(|m| m.fields_v1.as_ref())
            .flat_map(|f| owned_label_keys(&f.0))
            .collect();
        NodeView {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            owned,
            unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        }
    }
}

/// Label keys in a `fieldsV1` tree: `{"f:metadata":{"f:labels":{"f:<key>":{}}}}`.
pub fn owned_label_keys(fields: &Value) -> Vec<String> {
    fields
        .get("f:metadata")
        .and_then(|m| m.get("f:labels"))
        .and_then(Value::as_object)
        .map(|labels| labels.keys().filter_map(|k| k.strip_prefix("f:")).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Pure: whether `view` is older than `current`. Resource versions are opaque to clients, but
/// the API server's are etcd revisions: compared only when both are integers, else not older.
pub fn is_older(view: &NodeView, current: Option<&NodeView>) -> bool {
    let rv = |v: &NodeView| v.resource_version.as_deref().and_then(|r| r.parse::<u64>().ok());
    match (rv(view), current.and_then(rv)) {
        (Some(new), Some(cur)) => new < cur,
        _ => false,
    }
}

/// The labels nodeprep wants, and whether they come from a complete look at the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub labels: BTreeMap<String, String>,
    /// False after a failed or partial scan: then labels may be added but none is removed.
    pub complete: bool,
}

/// What to do about the node's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelPlan {
    /// The node carries the desired labels and nodeprep owns exactly those: send nothing.
    UpToDate,
    /// Apply this whole set (server-side apply).
    Apply(BTreeMap<String, String>),
}

/// A key someone else holds with a value other than the one nodeprep wants.
fn held_by_others(node: &NodeView, key: &str, value: &str) -> bool {
    !node.owned.contains(key) && node.labels.get(key).is_some_and(|v| v != value)
}

/// Pure: what to apply so the node carries `desired`; keys held by others are yielded (see the
/// module docs); a partial scan keeps every key nodeprep owns.
pub fn plan(desired: &Desired, node: &NodeView) -> LabelPlan {
    let mut want: BTreeMap<String, String> = desired
        .labels
        .iter()
        .filter(|(k, v)| !held_by_others(node, k, v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !desired.complete {
        for key in &node.owned {
            if let Some(v) = node.labels.get(key) {
                want.entry(key.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    let owned_match = want.keys().eq(node.owned.iter());
    let values_match = want.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    if owned_match && values_match { LabelPlan::UpToDate } else { LabelPlan::Apply(want) }
}

/// Keys held by others that nodeprep yields, for the log.
pub fn yielded(desired: &Desired, node: &NodeView) -> Vec<String> {
    desired.labels.iter().filter(|(k, v)| held_by_others(node, k, v)).map(|(k, _)| k.clone()).collect()
}

/// The server-side apply body: the fully specified intent for the labels nodeprep owns.
pub fn apply_body(node_name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node_name, "labels": labels },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn view(labels: &[(&str, &str)], owned: &[&str]) -> NodeView {
        NodeView {
            name: "worker-0".into(),
            labels: map(labels),
            owned: owned.iter().map(|s| (*s).to_owned()).collect(),
            ..NodeView::default()
        }
    }

    fn desired(pairs: &[(&str, &str)], complete: bool) -> Desired {
        Desired { labels: map(pairs), complete }
    }

    #[test]
    fn nothing_to_send_when_the_node_already_carries_the_set() {
        let node = view(&[("nodeprep.io/kvm", "true"), ("kubernetes.io/os", "linux")], &["nodeprep.io/kvm"]);
        assert_eq!(plan(&desired(&[("nodeprep.io/kvm", "true")], true), &node), LabelPlan::UpToDate);
    }

    #[test]
    fn a_new_label_is_applied_with_the_ones_already_owned() {
        let node = view(&[("nodeprep.io/kvm", "true")], &["nodeprep.io/kvm"]);
        let d = desired(&[("nodeprep.io/kvm", "true"), ("nodeprep.io/iommu", "true")], true);
        assert_eq!(plan(&d, &node), LabelPlan::Apply(d.labels.clone()));
    }

    #[test]
    fn a_label_no_longer_wanted_is_released_by_leaving_it_out() {
        let node = view(
            &[("nodeprep.io/kvm", "true"), ("nodeprep.io/ready", "true")],
            &["nodeprep.io/kvm", "nodeprep.io/ready"],
        );
        let d = desired(&[("nodeprep.io/kvm", "true")], true);
        assert_eq!(plan(&d, &node), LabelPlan::Apply(map(&[("nodeprep.io/kvm", "true")])));
    }

    #[test]
    fn a_label_removed_by_someone_else_is_put_back() {
        // `kubectl label node worker-0 nodeprep.io/kvm-` also drops nodeprep's ownership.
        let node = view(&[], &[]);
        let d = desired(&[("nodeprep.io/kvm", "true")], true);
        assert_eq!(plan(&d, &node), LabelPlan::Apply(d.labels.clone()));
    }

    #[test]
    fn a_key_someone_else_set_to_another_value_is_theirs() {
        let node = view(&[(crate::labels::KATA, "false")], &[]);
        let d = desired(&[(crate::labels::KATA, "true"), ("nodeprep.io/kvm", "true")], true);
        assert_eq!(plan(&d, &node), LabelPlan::Apply(map(&[("nodeprep.io/kvm", "true")])));
        assert_eq!(yielded(&d, &node), vec![crate::labels::KATA.to_owned()]);
        // Once applied, the state is stable: no request loop against the other owner.
        let after = view(&[(crate::labels::KATA, "false"), ("nodeprep.io/kvm", "true")], &["nodeprep.io/kvm"]);
        assert_eq!(plan(&d, &after), LabelPlan::UpToDate);
    }

    #[test]
    fn a_key_someone_else_set_to_the_same_value_is_co_owned() {
        let node = view(&[(crate::labels::KATA, "true")], &[]);
        let d = desired(&[(crate::labels::KATA, "true")], true);
        assert_eq!(plan(&d, &node), LabelPlan::Apply(d.labels.clone()));
    }

    #[test]
    fn a_partial_scan_never_removes_a_label() {
        let node = view(
            &[("nodeprep.io/kvm", "true"), ("nodeprep.io/iommu", "true")],
            &["nodeprep.io/kvm", "nodeprep.io/iommu"],
        );
        assert_eq!(plan(&desired(&[], false), &node), LabelPlan::UpToDate);
        let more = desired(&[("nodeprep.io/ready", "true")], false);
        assert_eq!(
            plan(&more, &node),
            LabelPlan::Apply(map(&[
                ("nodeprep.io/iommu", "true"),
                ("nodeprep.io/kvm", "true"),
                ("nodeprep.io/ready", "true")
            ]))
        );
    }

    #[test]
    fn owned_keys_come_from_nodepreps_apply_entry_only() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "worker-0",
                "uid": "5f1c",
                "resourceVersion": "42",
                "labels": {"nodeprep.io/kvm": "true", "team": "a"},
                "managedFields": [
                    {"manager": "nodeprep", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:nodeprep.io/kvm": {}}}}},
                    {"manager": "kubectl-label", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
                    {"manager": "nodeprep", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:stray": {}}}}}
                ]
            }
        }))
        .expect("node json");
        let v = NodeView::from_node(&node);
        assert_eq!(v.owned.iter().collect::<Vec<_>>(), vec!["nodeprep.io/kvm"]);
        assert_eq!(v.resource_version.as_deref(), Some("42"));
        assert_eq!(v.uid.as_deref(), Some("5f1c"));
        assert_eq!(v.labels.len(), 2);
    }

    #[test]
    fn an_older_view_is_recognised_only_by_numeric_versions() {
        let at = |rv: &str| NodeView { resource_version: Some(rv.into()), ..NodeView::default() };
        assert!(is_older(&at("41"), Some(&at("42"))));
        assert!(!is_older(&at("42"), Some(&at("42"))));
        assert!(!is_older(&at("43"), Some(&at("42"))));
        assert!(!is_older(&at("abc"), Some(&at("42"))));
        assert!(!is_older(&at("41"), None));
    }

    #[test]
    fn the_apply_body_names_the_node_and_only_nodepreps_labels() {
        let body = apply_body("worker-0", &map(&[("nodeprep.io/kvm", "true")]));
        assert_eq!(
            body,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-0", "labels": {"nodeprep.io/kvm": "true"}}})
        );
        // An empty set is still a full intent: it releases everything nodeprep owned.
        assert_eq!(apply_body("w", &BTreeMap::new())["metadata"]["labels"], json!({}));
    }
}
