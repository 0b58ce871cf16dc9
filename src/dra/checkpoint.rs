//! The DRA driver's record of prepared claims, `var/lib/nodeprep/dra-claims.json` under the host
//! root: per claim UID, the claim, the boot it was prepared in, and per device its functions,
//! its driver at rest, the drivers its functions had, and the CDI ids handed out.
//!
//! The kubelet sends NodeUnprepareResources after the pod is gone, often after the
//! ResourceClaim is deleted too, and after agent or kubelet restarts: the driver must know on its
//! own what it prepared. The boot id says whether the bindings still exist: after a reboot every
//! device is back on its host driver and `/var/run/cdi` is empty, so older records are dropped.
//! Written atomically (a temporary file renamed into place), under the bind state's lock.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ClaimRef, PreparedDevice};
use crate::config::AtRest;
use crate::host::HostRoot;
use crate::model::PciAddress;

/// The file, relative to the host root.
pub const CHECKPOINT_FILE: &str = "var/lib/nodeprep/dra-claims.json";
/// The kernel's id of this boot.
pub const BOOT_ID: &str = "proc/sys/kernel/random/boot_id";

/// Reading or writing the checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("DRA checkpoint {}: {op}: {source}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("DRA checkpoint {} is corrupt ({problem}); nothing is unprepared or reconciled until it is fixed or removed", .path.display())]
    Corrupt { path: PathBuf, problem: String },
}

/// One prepared device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    #[serde(flatten)]
    pub prepared: PreparedDevice,
    /// Every function bound for it (its IOMMU group's endpoints), primary first.
    pub functions: Vec<PciAddress>,
    pub at_rest: AtRest,
    /// The driver each function had before Prepare (`None`: none).
    pub original_drivers: BTreeMap<PciAddress, Option<String>>,
}

/// One prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    pub claim: ClaimRef,
    /// The pod's name for a claim made from a template (its metadata path uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_claim_name: Option<String>,
    pub boot_id: String,
    pub devices: Vec<DeviceRecord>,
    /// Files written for it (CDI specs, metadata directories), host paths under the root.
    #[serde(default)]
    pub files: Vec<String>,
}

impl ClaimRecord {
    pub fn holds(&self, a: &PciAddress) -> bool {
        self.devices.iter().any(|d| d.functions.contains(a))
    }
}

/// Every prepared claim, by UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub claims: BTreeMap<String, ClaimRecord>,
}

impl Checkpoint {
    pub fn path(root: &HostRoot) -> PathBuf {
        root.join(CHECKPOINT_FILE)
    }

    /// Pure: the checkpoint file's contents; the error says what is wrong with them.
    pub fn parse(bytes: &[u8]) -> Result<Checkpoint, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Reads the checkpoint; an absent file is an empty one.
    pub fn load(root: &HostRoot) -> Result<Checkpoint, CheckpointError> {
        let path = Checkpoint::path(root);
        match std::fs::read(&path) {
            Ok(bytes) => Checkpoint::parse(&bytes).map_err(|problem| CheckpointError::Corrupt { path, problem }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint { version: 1, claims: BTreeMap::new() }),
            Err(source) => Err(CheckpointError::Io { path, op: "read", source }),
        }
    }

    /// Writes it atomically ([`crate::host::root::write_atomic`]).
    pub fn save(&self, root: &HostRoot) -> Result<(), CheckpointError> {
        let path = Checkpoint::path(root);
        let text = serde_json::to_vec_pretty(self).map_err(|e| CheckpointError::Io {
            path: path.clone(),
            op: "serialize",
            source: io::Error::other(e),
        })?;
        crate::host::root::write_atomic(&path, &text).map_err(|(op, source)| CheckpointError::Io { path, op, source })
    }

    /// The claim (other than `except`) holding function `a`, if one does.
    pub fn holder(&self, a: &PciAddress, except: &str) -> Option<&ClaimRecord> {
        self.claims.iter().filter(|(uid, _)| uid.as_str() != except).map(|(_, c)| c).find(|c| c.holds(a))
    }
}

/// This boot's id, or an empty string when the kernel does not say (then every record counts
/// as this boot's: nothing is dropped on a guess).
pub fn boot_id(root: &HostRoot) -> String {
    root.read_optional(BOOT_ID).ok().flatten().map(|s| s.trim().to_owned()).unwrap_or_default()
}
