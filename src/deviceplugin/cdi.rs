//! CDI (Container Device Interface) for the vfio devices nodeprep hands out, when the config
//! names a CDI kind (`cdi: {kind: nodeprep.io/vfio}`).
//!
//! nodeprep owns one CDI spec file, `<specDir>/<vendor>-<class>.json` (default spec dir
//! `/var/run/cdi`, one of the two directories containerd and CRI-O read; found under the host
//! root the way the host resolves it, `/var/run` being a symlink to `/run`), with one CDI device
//! per PCI address (`nodeprep.io/vfio=0000:3b:00.0`):
//! - the spec's own edits: `/dev/vfio/vfio`, which every vfio user opens;
//! - each device's edits: its IOMMU group's node (`/dev/vfio/7` or `/dev/vfio/noiommu-7`), and
//!   with iommufd `/dev/iommu` and its `/dev/vfio/devices/vfioN`.
//!
//! Allocate reads the devices again ([`super::allocate`]), then makes sure the spec says exactly
//! that for them ([`CdiSpec::ensure`], which writes only when something differs, atomically by
//! rename) before it answers with their CDI names instead of DeviceSpecs, so the runtime creates
//! each node once. Entries stay in the file after the pod ends: the kubelet keeps Allocate
//! answers in its checkpoint and reuses them when a container restarts, so a name it was given
//! must keep resolving. An existing spec of the same kind is loaded at start for the same
//! reason; `/var/run` is emptied on reboot, when group numbers may change.
//!
//! Names follow the CDI parser: the kind is `<vendor>/<class>`, both starting with a letter and
//! made of letters, digits, `_`, `-`, `.`; device names (PCI addresses) may hold `:` too.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::grant::{VFIO_CONTAINER, VfioDevice, VfioHost};
use crate::host::HostRoot;

pub use crate::config::DEFAULT_CDI_SPEC_DIR as DEFAULT_SPEC_DIR;
pub use crate::grant::CDI_PERMISSIONS;
pub use crate::grant::CDI_VERSION;

/// Writing the spec file.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error(
        "CDI spec {}: {op}: {source} (the agent must be able to write the host's CDI spec directory; without `cdi:` in the config it hands out device nodes instead)",
        .path.display()
    )]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

pub use crate::config::{CdiSettings, kind_problem};

/// Pure: a device's fully qualified CDI name: `nodeprep.io/vfio=0000:3b:00.0`.
pub fn qualified_name(kind: &str, device: &VfioDevice) -> String {
    format!("{kind}={}", device.address)
}

/// Pure: the spec's file name: `nodeprep.io-vfio.json`.
pub fn spec_file_name(kind: &str) -> String {
    format!("{}.json", kind.replace('/', "-"))
}

pub use crate::grant::{ContainerEdits, DeviceNode};

/// One device of a spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    pub name: String,
    pub container_edits: ContainerEdits,
}

/// A CDI spec file, as nodeprep writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<CdiDevice>,
    pub container_edits: ContainerEdits,
}

/// Pure: what one device adds to a container: its group's node, and with iommufd `/dev/iommu`
/// and its VFIO character device.
pub fn device_edits(device: &VfioDevice, host: &VfioHost) -> ContainerEdits {
    crate::grant::cdi_edits(&crate::grant::own_nodes(device, host), &BTreeMap::new())
}

/// Pure: the spec for `kind` with these devices' edits (by device name), sorted by name.
pub fn spec(kind: &str, devices: &BTreeMap<String, ContainerEdits>) -> Spec {
    Spec {
        cdi_version: CDI_VERSION.into(),
        kind: kind.to_owned(),
        devices: devices
            .iter()
            .map(|(name, edits)| CdiDevice { name: name.clone(), container_edits: edits.clone() })
            .collect(),
        container_edits: crate::grant::cdi_edits(&[VFIO_CONTAINER.to_owned()], &BTreeMap::new()),
    }
}

/// Pure: a spec file read back (what [`CdiSpec::open`] loads).
pub fn parse_spec(bytes: &[u8]) -> Result<Spec, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// nodeprep's spec file and what it holds now.
#[derive(Debug)]
pub struct CdiSpec {
    kind: String,
    /// The file, under the host root.
    path: PathBuf,
    devices: Mutex<BTreeMap<String, ContainerEdits>>,
}

impl CdiSpec {
    /// The spec for `settings` under `root`, with the devices of an existing spec file of the
    /// same kind (the kubelet may still hand out their names). A file that cannot be read as
    /// such a spec is replaced at the first write.
    pub fn open(root: &HostRoot, settings: &CdiSettings) -> CdiSpec {
        let path = root.resolve(Path::new(&settings.spec_dir).join(spec_file_name(&settings.kind)));
        let devices = match std::fs::read(&path) {
            Ok(bytes) => match parse_spec(&bytes) {
                Ok(s) if s.kind == settings.kind => {
                    s.devices.into_iter().map(|d| (d.name, d.container_edits)).collect::<BTreeMap<_, _>>()
                }
                Ok(s) => {
                    tracing::warn!(path = %path.display(), kind = s.kind, "CDI spec of another kind; replacing it");
                    BTreeMap::new()
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "CDI spec unreadable; replacing it");
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "CDI spec cannot be read; replacing it");
                BTreeMap::new()
            }
        };
        CdiSpec { kind: settings.kind.clone(), path, devices: Mutex::new(devices) }
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The spec file (under the host root).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the spec say what these devices, as just read, need; writes the file only when
    /// that changes it. On error the file and the held state are left as they were.
    pub fn ensure(&self, devices: &[VfioDevice], host: &VfioHost) -> Result<(), CdiError> {
        let mut held = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted: Vec<(String, ContainerEdits)> =
            devices.iter().map(|d| (d.address.to_string(), device_edits(d, host))).collect();
        if wanted.iter().all(|(n, e)| held.get(n) == Some(e)) && self.path.is_file() {
            return Ok(());
        }
        let mut next = held.clone();
        next.extend(wanted);
        self.write(&spec(&self.kind, &next))?;
        *held = next;
        Ok(())
    }

    fn write(&self, spec: &Spec) -> Result<(), CdiError> {
        let err = |op, source| CdiError::Io { path: self.path.clone(), op, source };
        let text = serde_json::to_vec_pretty(spec).map_err(|e| err("serialize", io::Error::other(e)))?;
        crate::host::root::write_atomic(&self.path, &text).map_err(|(op, source)| err(op, source))?;
        tracing::info!(path = %self.path.display(), "CDI spec written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_cdi_parser() {
        assert_eq!(kind_problem("nodeprep.io/vfio"), None);
        assert_eq!(kind_problem("vendor.com/foo-bar123.B_az"), None);
        assert!(kind_problem("vfio").is_some_and(|p| p.contains("<vendor>/<class>")));
        assert!(kind_problem("nodeprep.io/").is_some_and(|p| p.contains("class \"\"")));
        assert!(kind_problem("1vendor.com/x").is_some_and(|p| p.contains("vendor")));
        assert!(kind_problem("vendor.com/a/b").is_some_and(|p| p.contains("class \"a/b\"")));
        assert!(kind_problem("vendor.com/x-").is_some());
    }

    #[test]
    fn a_spec_that_is_not_ours_or_not_json_is_replaced_and_ours_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        let settings = CdiSettings { kind: "nodeprep.io/vfio".into(), spec_dir: "/etc/cdi".into() };
        let file = dir.path().join("etc/cdi/nodeprep.io-vfio.json");
        let host = VfioHost { container: true, iommufd: false };
        let dev = |a: &str, group| VfioDevice {
            address: a.parse().expect("address"),
            group,
            no_iommu: false,
            cdev: None,
            peers: Vec::new(),
        };
        let names = || -> Vec<String> {
            let s: Spec = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("a spec");
            s.devices.into_iter().map(|d| d.name).collect()
        };
        std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
        for not_ours in [
            "{ not json",
            r#"{"cdiVersion":"0.5.0","kind":"other.io/x","devices":[{"name":"a","containerEdits":{}}],"containerEdits":{}}"#,
        ] {
            std::fs::write(&file, not_ours).expect("write");
            let spec = CdiSpec::open(&root, &settings);
            assert_eq!(spec.path(), file);
            spec.ensure(&[dev("0000:3b:00.0", 6)], &host).expect("ensure");
            assert_eq!(names(), ["0000:3b:00.0"]);
        }
        // Ours: kept, and added to.
        let spec = CdiSpec::open(&root, &settings);
        spec.ensure(&[dev("0000:af:00.0", 20)], &host).expect("ensure");
        assert_eq!(names(), ["0000:3b:00.0", "0000:af:00.0"]);
    }

    #[test]
    fn device_edits_and_names() {
        let mut d = VfioDevice {
            address: "0000:3b:00.0".parse().expect("address"),
            group: 6,
            no_iommu: false,
            cdev: None,
            peers: Vec::new(),
        };
        let host = VfioHost { container: true, iommufd: true };
        assert_eq!(qualified_name("nodeprep.io/vfio", &d), "nodeprep.io/vfio=0000:3b:00.0");
        assert_eq!(spec_file_name("nodeprep.io/vfio"), "nodeprep.io-vfio.json");
        let paths = |e: ContainerEdits| e.device_nodes.into_iter().map(|n| n.path).collect::<Vec<_>>();
        assert_eq!(paths(device_edits(&d, &host)), ["/dev/vfio/6"]);
        d.cdev = Some("vfio2".into());
        assert_eq!(paths(device_edits(&d, &host)), ["/dev/vfio/6", "/dev/iommu", "/dev/vfio/devices/vfio2"]);
        assert_eq!(paths(device_edits(&d, &VfioHost { container: true, iommufd: false })), ["/dev/vfio/6"]);
        d.no_iommu = true;
        d.cdev = None;
        assert_eq!(paths(device_edits(&d, &host)), ["/dev/vfio/noiommu-6"]);
    }
}
