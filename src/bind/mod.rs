//! Binding devices to vfio-pci at run time, safely and reversibly.
//!
//! - [`plan`]: pure decisions: which devices to bind (whole IOMMU groups), which to refuse and
//!   why, which to restore;
//! - [`apply`]: the sysfs writes that carry a plan out, with verification and rollback;
//! - [`state`]: the atomic record of original drivers that makes it reversible and crash-safe.

pub mod apply;
pub mod plan;
pub mod state;

pub use apply::{Applier, ApplyError, DeviceOutcome, HostKernel, Kernel};
pub use plan::{Action, BindPlan, RestorePlan, plan_bind, plan_unbind};
pub use state::State;
