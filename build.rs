//! Compiles the kubelet device-plugin API (`proto/deviceplugin/v1beta1/api.proto`) into Rust with
//! protox (a protobuf compiler in Rust, so no `protoc` is needed) and tonic-prost-build.

const PROTO: &str = "proto/deviceplugin/v1beta1/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
