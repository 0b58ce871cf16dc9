//! Who holds a device: a pod the kubelet gave it to through a device plugin, or a DRA claim
//! nodeprep prepared for a pod. Plain data: the edges read the kubelet's checkpoint, nodeprep's
//! DRA checkpoint and the API server's pod list; the decisions weigh them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// One holder of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "kind")]
pub enum Holder {
    /// A container the kubelet allocated the device to (its device-manager checkpoint).
    Pod {
        uid: String,
        /// `namespace/name`, when the API server told us.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        container: String,
        resource: String,
    },
    /// A ResourceClaim nodeprep's DRA driver prepared.
    Claim { uid: String, name: String },
}

impl Holder {
    /// The pod's or claim's UID.
    pub fn uid(&self) -> &str {
        match self {
            Holder::Pod { uid, .. } | Holder::Claim { uid, .. } => uid,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Pod { uid, name: Some(name), container, resource } => {
                write!(f, "pod {name} (uid {uid}, container {container}, as {resource})")
            }
            Holder::Pod { uid, name: None, container, resource } => {
                write!(f, "pod {uid} (container {container}, as {resource})")
            }
            Holder::Claim { uid, name } => write!(f, "ResourceClaim {name} (uid {uid})"),
        }
    }
}

/// What the API server said about the pods of this node's kubelet checkpoint.
///
/// `gone` holds only UIDs read from the checkpoint *before* a pod list that no longer had them:
/// the kubelet allocates only to pods the API server already has, so such a pod is gone (the
/// kubelet leaves its devices in the checkpoint until its next allocation). A pod not known
/// either way still holds its devices. `names` gives `namespace/name` for the pods listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub names: BTreeMap<String, String>,
    pub gone: BTreeSet<String>,
}
