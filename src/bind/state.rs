//! The record of what nodeprep changed: for every device it moved to vfio-pci, the driver and
//! `driver_override` it had before. Kept at `var/lib/nodeprep/bindings.json` under the host
//! root and written atomically (temporary file, fsync, rename, fsync of the directory) *before*
//! any device is touched, so after a crash at any point the next run knows what to restore.
//!
//! The first record of a device wins: a device found half-bound after a crash (no driver, or
//! already on vfio-pci) keeps the original driver recorded before the crash.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::HostRoot;
use crate::model::PciAddress;

/// Where the record lives, relative to the host root.
pub const STATE_FILE: &str = "var/lib/nodeprep/bindings.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a nodeprep state file ({problem}); move it aside to start afresh (devices it recorded will not be restored)"
    )]
    Corrupt { path: PathBuf, problem: String },
}

/// What a device had before nodeprep bound it to vfio-pci.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The driver to give back on unbind (`None`: it had none).
    pub original_driver: Option<String>,
    /// The `driver_override` it had (normally none).
    pub original_override: Option<String>,
    /// The resource it was bound for, or `None` for a companion bound with its IOMMU group.
    pub resource_name: Option<String>,
}

/// All records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub devices: BTreeMap<PciAddress, Record>,
}

impl State {
    pub fn path(root: &HostRoot) -> PathBuf {
        root.join(STATE_FILE)
    }

    /// Reads the state; an absent file is an empty state.
    pub fn load(root: &HostRoot) -> Result<State, StateError> {
        let path = State::path(root);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State { version: 1, ..Default::default() });
            }
            Err(source) => return Err(StateError::Io { op: "read", path, source }),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt { path, problem: e.to_string() })
    }

    /// Writes the state atomically: a reader (or the next run after a crash) sees either the old
    /// file or the new one, never a torn one.
    pub fn save(&self, root: &HostRoot) -> Result<(), StateError> {
        let path = State::path(root);
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io { op, path: p, source }
        };
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let tmp = dir.join(".bindings.json.tmp");
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Corrupt { path: path.clone(), problem: e.to_string() })?;
        {
            let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&body).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        if let Ok(d) = fs::File::open(&dir) {
            // Persist the rename itself; a failure here only weakens durability, not atomicity.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The driver each recorded device had before nodeprep bound it.
    pub fn original_drivers(&self) -> crate::config::OriginalDrivers {
        self.devices.iter().map(|(a, r)| (*a, r.original_driver.clone())).collect()
    }

    /// Records a device unless it is already recorded (the first record wins).
    pub fn record(&mut self, address: PciAddress, record: Record) -> bool {
        if self.devices.contains_key(&address) {
            return false;
        }
        self.devices.insert(address, record);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_first_record_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        let mut s = State::load(&root).expect("absent is empty");
        assert!(s.devices.is_empty());
        let a: PciAddress = "0000:3b:00.0".parse().expect("addr");
        let first = Record {
            original_driver: Some("nouveau".into()),
            original_override: None,
            resource_name: Some("nvidia.com/T4".into()),
        };
        assert!(s.record(a, first.clone()));
        assert!(!s.record(a, Record { original_driver: None, original_override: None, resource_name: None }));
        s.save(&root).expect("save");
        let back = State::load(&root).expect("load");
        assert_eq!(back.devices.get(&a), Some(&first));
        assert!(!dir.path().join("var/lib/nodeprep/.bindings.json.tmp").exists(), "temporary file renamed away");
    }

    #[test]
    fn corrupt_state_is_an_error_saying_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        fs::create_dir_all(dir.path().join("var/lib/nodeprep")).expect("mkdir");
        fs::write(dir.path().join(STATE_FILE), "{half").expect("write");
        let e = State::load(&root).expect_err("corrupt");
        assert!(e.to_string().contains("bindings.json") && e.to_string().contains("move it aside"), "{e}");
    }
}
