//! The kubelet device-plugin API (v1beta1): one gRPC server per extended resource on a unix
//! socket in the kubelet's plugin directory, registered with `kubelet.sock`.
//!
//! - [`devices`]: pure: which devices each resource offers, and their health.

pub mod devices;
