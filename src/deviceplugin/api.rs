//! The kubelet device-plugin API v1beta1, generated at build time from
//! `proto/deviceplugin/v1beta1/api.proto` (see `build.rs`): messages, the `Registration` service
//! (served by the kubelet) and the `DevicePlugin` service (served by each plugin), each with a
//! client and a server.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

tonic::include_proto!("v1beta1");

/// The API version plugins register with.
pub const VERSION: &str = "v1beta1";
/// `Device.health` of a usable device.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of an unusable one.
pub const UNHEALTHY: &str = "Unhealthy";
/// The kubelet's registration socket, in the plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
