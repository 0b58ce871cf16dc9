//! The kubelet device-plugin API (v1beta1): one gRPC server per extended resource on a unix
//! socket in the kubelet's plugin directory, registered with `kubelet.sock`.
//!
//! - [`devices`]: pure: which devices each resource offers, and their health.
//! - [`api`]: the API's messages, clients and servers, generated from the vendored upstream
//!   `api.proto`.
//! - [`preferred`]: pure: GetPreferredAllocation (must-include, one NUMA node, one PF).
//! - [`allocate`]: Allocate: re-reads each device from sysfs (the edge), then builds DeviceSpecs
//!   or CDI names, and environment (pure).
//! - [`cdi`]: the CDI spec file for nodeprep's devices, when the config names a CDI kind.
//! - [`server`]: one resource's `DevicePlugin` service on its socket; the module's error type.
//! - [`registration`]: registering with the kubelet; gRPC over unix sockets.
//! - [`monitor`]: keeps the devices right: rescans on uevents, `/dev/vfio` changes and a timer.
//! - [`probe`]: a kubelet-like client for `nodeprep plugins probe`.
//! - [`manager`]: every plugin's lifecycle: sockets, registration, kubelet restarts, shutdown.

pub mod allocate;
pub mod api;
pub mod cdi;
pub mod devices;
pub mod manager;
pub mod monitor;
pub mod preferred;
pub mod probe;
pub mod registration;
pub mod server;

pub use manager::{CountedResource, Manager, ManagerHandle, ManagerOptions, ResourceSpec, socket_name};
pub use server::{DevicePluginError, PluginStatus};
