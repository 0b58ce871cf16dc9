//! The kubelet's DRA plugin API (v1 and v1beta1), its DRA device-health API (v1) and the plugin
//! watcher's registration API, generated at build time from the protos vendored under `proto/`
//! (see `build.rs`): messages, and a client and a server of every service. nodeprep serves all
//! of them; the clients are for tests and probes acting as the kubelet.
//!
//! The constants are the strings the kubelet (v1.37) matches: the plugin type in
//! `PluginInfo.type`, and the gRPC services, `<proto package's last element>.<service>`, listed in
//! `PluginInfo.supported_versions`. The kubelet picks the first DRA service of that list it
//! knows, and uses the health service only when the list names it.

/// `k8s.io.kubelet.pkg.apis.dra.v1`: `DRAPlugin` (NodePrepareResources, NodeUnprepareResources).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// `k8s.io.kubelet.pkg.apis.dra.v1beta1`: the same service, without `Device.share_id`; what
/// kubelets of Kubernetes 1.32 and 1.33 call.
pub mod v1beta1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

/// Package `v1` of `k8s.io/kubelet/pkg/apis/dra-health/v1`: `DRAResourceHealth`
/// (NodeWatchResources).
pub mod health {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    tonic::include_proto!("v1");
}

/// Package `pluginregistration` of `k8s.io/kubelet/pkg/apis/pluginregistration/v1`:
/// `Registration` (GetInfo, NotifyRegistrationStatus), served by every plugin on its socket in
/// the kubelet's `plugins_registry` directory.
pub mod registration {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    tonic::include_proto!("pluginregistration");
}

/// `PluginInfo.type` of a DRA plugin (upstream `pluginregistration.DRAPlugin`).
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The v1 `DRAPlugin` service (upstream `drapbv1.DRAPluginService`).
pub const DRA_V1: &str = "v1.DRAPlugin";
/// The v1beta1 `DRAPlugin` service (upstream `drapbv1beta1.DRAPluginService`).
pub const DRA_V1BETA1: &str = "v1beta1.DRAPlugin";
/// The v1 `DRAResourceHealth` service (upstream `drahealthv1.DRAResourceHealthService`).
pub const HEALTH_V1: &str = "v1.DRAResourceHealth";
/// `PluginInfo.supported_versions`: most recent first, because the kubelet takes the first DRA
/// service it knows in this order; the health service is optional and offered only if named.
pub const SUPPORTED_VERSIONS: [&str; 3] = [DRA_V1, DRA_V1BETA1, HEALTH_V1];
/// The DRA plugin's socket, in `<kubelet root>/plugins/<driver>/`.
pub const DRA_SOCKET: &str = "dra.sock";
/// The registration socket's name suffix, in `<kubelet root>/plugins_registry/`.
pub const REGISTRATION_SOCKET_SUFFIX: &str = "-reg.sock";
