//! Plain data about the host: what the edges read and the pure decisions consume.
//! No I/O happens in this module.

pub mod address;
pub mod hold;
pub mod pci;
pub mod system;

pub use address::{AddressError, PciAddress};
pub use hold::{Holder, PodView};
pub use pci::{
    BlockDevice, BlockHolder, BtrfsMember, IommuGroup, Mount, NetAbove, NetInterface, NetMaster, OpenNode, PciDevice,
    PciInventory,
};
