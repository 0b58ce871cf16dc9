//! nodeprep prepares Kubernetes and OpenShift worker nodes for virtual machines and sandboxed
//! containers.
//!
//! The crate is laid out as the data flows:
//! - [`host`] reads the kernel (sysfs, procfs, /dev) under one configurable root: the edge;
//! - [`model`] is the plain data it produces (the host snapshot);
//! - [`eligibility`] decides, as pure functions over that data, what the node is fit for;
//! - [`names`] gives PCI ids their pci.ids names;
//! - [`render`] turns the data into the text people read;
//! - [`hugepages`] sets huge page pools at run time, per config, and reports what the kernel
//!   granted;
//! - [`machineconfig`] renders OpenShift MachineConfigs for boot-time settings (IOMMU, vfio-pci
//!   ids, huge pages);
//! - [`observe`] is what the agent shows operators: `/healthz`, `/readyz` and Prometheus
//!   `/metrics` on a small HTTP port;
//! - [`giveback`] is the agent's side of giving devices back and of node maintenance;
//! - [`status`] is `nodeprep status`: the managed devices, who holds them, what waits;
//! - [`checkup`] is `nodeprep checkup`, the OpenShift Virtualization checkup Job: its input and
//!   result live in a ConfigMap.

pub mod agent;
pub mod alloc;
pub mod bind;
pub mod checkup;
pub mod cluster;
pub mod config;
pub mod deviceplugin;
pub mod dra;
pub mod eligibility;
pub mod giveback;
pub mod grant;
pub mod host;
pub mod hugepages;
pub mod labels;
pub mod machineconfig;
pub mod model;
pub mod names;
pub mod observe;
pub mod render;
pub mod status;
