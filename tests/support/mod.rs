//! Test support: fake host trees laid out exactly like the Linux kernel's sysfs/procfs/dev.
//!
//! Included from integration tests with `mod support;` and from benchmarks with
//! `#[path = "../tests/support/mod.rs"] mod support;`. Each user needs only part of it.
#![allow(dead_code)]

pub mod agent;
pub mod apiserver;
pub mod cli;
pub mod h2grpc;
pub mod inprocess;
pub mod k8s;
pub mod kernel_sim;
pub mod kubelet;
pub mod lspci;
pub mod machines;
pub mod soak;
pub mod tree;

#[allow(unused_imports)]
pub use machines::*;
#[allow(unused_imports)]
pub use tree::{HostTree, PciAddr, PciFn, relative};
