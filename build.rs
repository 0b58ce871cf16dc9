//! Compiles the kubelet's gRPC APIs nodeprep serves or calls into Rust with protox (a protobuf
//! compiler in Rust, so no `protoc` is needed) and tonic-prost-build, messages plus clients and
//! servers of every service:
//!
//! - `proto/deviceplugin/v1beta1/api.proto`: the device-plugin API (package `v1beta1`).
//! - `proto/dra/v1/api.proto`, `proto/dra/v1beta1/api.proto`: the DRA plugin API (packages
//!   `k8s.io.kubelet.pkg.apis.dra.v1` and `...v1beta1`).
//! - `proto/dra-health/v1/api.proto`: the DRA device-health API (package `v1`).
//! - `proto/pluginregistration/v1/api.proto`: the plugin watcher's registration API (package
//!   `pluginregistration`).
//!
//! The protos are vendored unmodified from `k8s.io/kubelet` (each says from which version).
//! protox has no `gogo.proto`: a future upstream version that imports it or sets `(gogoproto.*)`
//! options (Go code generation hints only, the wire format does not change) must have them
//! stripped when vendored. None of the current ones do.

const PROTOS: &[&str] = &[
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/dra/v1/api.proto",
    "proto/dra/v1beta1/api.proto",
    "proto/dra-health/v1/api.proto",
    "proto/pluginregistration/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
