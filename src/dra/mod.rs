//! nodeprep as a Dynamic Resource Allocation driver (`resource.k8s.io/v1`, the kubelet's DRA
//! plugin API v1 and v1beta1): PCI devices offered in ResourceSlices, bound to vfio-pci when a
//! claim is prepared, and given back when it is unprepared.
//!
//! - [`devices`]: pure: the devices the config offers, one per IOMMU group, with their
//!   attributes and health.
//! - [`api`]: the kubelet's DRA, DRA-health and plugin-registration messages and services,
//!   generated from the vendored upstream protos.
//! - [`prepare`]: NodePrepareResources and NodeUnprepareResources on the host: the whole group
//!   bound with the bind plan's refusals, the CDI spec, the KEP-5304 device metadata, the
//!   checkpoint; and the reconciliation at start.
//! - [`checkpoint`]: the prepared claims, under the host root, so Unprepare works after an agent
//!   restart and after the claim is gone.
//! - [`plugin`]: the kubelet front: registration on `plugins_registry/<driver>-reg.sock`, the
//!   `DRAPlugin` and `DRAResourceHealth` services on `plugins/<driver>/dra.sock`.
//! - [`driver`]: the agent's [`Driver`]: claims read from the API server, then [`prepare`].
//!
//! The ResourceSlices themselves are published by [`crate::cluster::slices`].

pub mod api;
pub mod checkpoint;
pub mod devices;
pub mod driver;
pub mod plugin;
pub mod prepare;

use std::collections::BTreeMap;

/// The driver name when the config names none.
pub const DEFAULT_DRIVER: &str = "vfio.nodeprep.io";

/// A claim as the kubelet names it in NodePrepareResources and NodeUnprepareResources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// One device prepared for a claim, as the kubelet wants it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// The claim's requests this device satisfies.
    pub requests: Vec<String>,
    pub pool: String,
    pub device: String,
    /// Fully qualified CDI device ids the runtime injects (`vfio.nodeprep.io/vfio=...`).
    pub cdi_ids: Vec<String>,
}

/// A device's health as the kubelet's DRA health stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

/// One device's health, for `DRAResourceHealth.NodeWatchResources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealth {
    pub pool: String,
    pub device: String,
    pub health: Health,
    /// Why, when not healthy.
    pub message: String,
}

/// Per claim UID: the prepared devices, or the reason it was refused (sent to the kubelet as
/// the response's `error`, so the pod shows it).
pub type PrepareResults = BTreeMap<String, Result<Vec<PreparedDevice>, String>>;
/// Per claim UID: `Ok` or the reason Unprepare failed.
pub type UnprepareResults = BTreeMap<String, Result<(), String>>;

/// What the kubelet front ([`plugin`]) asks of the driver. The front only translates gRPC.
#[tonic::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Prepares every claim; idempotent (the kubelet repeats it after it restarts).
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults;
    /// Unprepares every claim; a claim nodeprep never prepared is `Ok`.
    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults;
    /// The devices' health now; the receiver changes whenever one changes.
    fn health(&self) -> tokio::sync::watch::Receiver<Vec<DeviceHealth>>;
}
