//! The edge where nodeprep reads the host: sysfs, procfs and /dev under one [`HostRoot`].
//!
//! Everything here turns kernel files into the plain data in [`crate::model`]; no decisions are
//! made here.

pub mod block;
pub mod inotify;
pub mod kubelet;
pub mod net;
pub mod netlink;
pub mod openers;
pub mod pci;
pub mod root;
pub mod system;
pub mod uevent;
pub mod usage;
pub mod vfio;

pub use root::{HostError, HostRoot};
