//! What the kubelet has handed out: the device manager's checkpoint
//! (`kubelet_internal_checkpoint` in the plugin directory nodeprep serves its sockets in,
//! `var/lib/kubelet/device-plugins` under the host root by default; see [`plugin_dir`]), so
//! nodeprep never takes a device a pod was given.
//!
//! The checkpoint is JSON: `Data.PodDeviceEntries[]` with `PodUID`, `ContainerName`,
//! `ResourceName` and `DeviceIDs`, a map from NUMA node to device ids since Kubernetes 1.20 (a
//! plain list before). Device plugins that use PCI addresses as device ids (KubeVirt, SR-IOV,
//! nodeprep) can be matched to devices; ids of other forms (GPU UUIDs) cannot.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::root::{HostError, HostRoot};

/// The kubelet's device-plugin directory, relative to the host root.
pub const PLUGIN_DIR: &str = "var/lib/kubelet/device-plugins";
/// The checkpoint file's name in that directory.
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";

/// Devices the kubelet gave one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub pod_uid: String,
    pub container_name: String,
    pub resource_name: String,
    pub device_ids: Vec<String>,
}

impl Allocation {
    /// Does this allocation hold the device with this id (PCI address)?
    pub fn holds(&self, id: &str) -> bool {
        self.device_ids.iter().any(|d| d.eq_ignore_ascii_case(id))
    }
}

#[derive(Deserialize)]
struct Checkpoint {
    #[serde(rename = "Data")]
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "PodDeviceEntries", default)]
    entries: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "PodUID", default)]
    pod_uid: String,
    #[serde(rename = "ContainerName", default)]
    container_name: String,
    #[serde(rename = "ResourceName", default)]
    resource_name: String,
    #[serde(rename = "DeviceIDs", default)]
    device_ids: DeviceIds,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum DeviceIds {
    ByNuma(std::collections::BTreeMap<String, Option<Vec<String>>>),
    List(Vec<String>),
    #[default]
    None,
}

/// Pure: parses the checkpoint's JSON.
pub fn parse_checkpoint(text: &str) -> Result<Vec<Allocation>, String> {
    let c: Checkpoint = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(c.data
        .entries
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let device_ids = match e.device_ids {
                DeviceIds::ByNuma(m) => m.into_values().flatten().flatten().collect(),
                DeviceIds::List(l) => l,
                DeviceIds::None => Vec::new(),
            };
            Allocation {
                pod_uid: e.pod_uid,
                container_name: e.container_name,
                resource_name: e.resource_name,
                device_ids,
            }
        })
        .collect())
}

/// The checkpoint's path under a plugin directory.
pub fn checkpoint_path(plugin_dir: &Path) -> PathBuf {
    plugin_dir.join(CHECKPOINT)
}

/// The kubelet's plugin directory as nodeprep uses it: `explicit` (`--plugin-dir`) as given,
/// the very path the device plugins serve their sockets in; by default [`PLUGIN_DIR`] under the
/// host root, with symlinks resolved inside the root (`/var/lib/kubelet` is often a link to a
/// data disk, absolute or relative).
pub fn plugin_dir(root: &HostRoot, explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(dir) => dir.to_path_buf(),
        None => root.resolve(PLUGIN_DIR),
    }
}

/// Reads the allocations from the checkpoint in `plugin_dir` (see [`plugin_dir`]); none when
/// the kubelet has never written one (no kubelet, or no device plugin ever registered). An
/// unreadable or garbage checkpoint is an error naming the file: callers refuse what it
/// protects.
pub fn read_allocations(plugin_dir: &Path) -> Result<Vec<Allocation>, HostError> {
    let path = checkpoint_path(plugin_dir);
    match super::root::read_string(&path) {
        Ok(text) => {
            parse_checkpoint(&text).map_err(|e| HostError::invalid(&path, format!("not a kubelet checkpoint: {e}")))
        }
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numa_map_and_legacy_list() {
        let text = r#"{"Data":{"PodDeviceEntries":[
            {"PodUID":"u1","ContainerName":"compute","ResourceName":"nvidia.com/TU104GL_TESLA_T4","DeviceIDs":{"0":["0000:3b:00.0"],"1":["0000:af:00.0"]},"AllocResp":"..."},
            {"PodUID":"u2","ContainerName":"c","ResourceName":"intel.com/qat","DeviceIDs":["0000:5e:01.0"]},
            {"PodUID":"u3","ContainerName":"c","ResourceName":"x.io/y","DeviceIDs":{"-1":null}}
        ],"RegisteredDevices":{"nvidia.com/TU104GL_TESLA_T4":["0000:3b:00.0"]}},"Checksum":12345}"#;
        let a = parse_checkpoint(text).expect("parse");
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].device_ids, vec!["0000:3b:00.0", "0000:af:00.0"]);
        assert!(a[0].holds("0000:AF:00.0"));
        assert_eq!(a[1].device_ids, vec!["0000:5e:01.0"]);
        assert!(a[2].device_ids.is_empty());
        assert_eq!(parse_checkpoint(r#"{"Data":{"PodDeviceEntries":null},"Checksum":1}"#), Ok(vec![]));
        assert!(parse_checkpoint("{garbage").is_err());
    }

    #[test]
    fn missing_checkpoint_means_no_allocations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        assert_eq!(read_allocations(&plugin_dir(&root, None)).expect("read"), vec![]);
        let p = dir.path().join(PLUGIN_DIR);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join(CHECKPOINT), "nope").expect("write");
        let e = read_allocations(&plugin_dir(&root, None)).expect_err("garbage");
        assert!(e.to_string().contains("kubelet_internal_checkpoint"), "{e}");
    }

    #[test]
    fn the_default_plugin_dir_follows_symlinks_inside_the_host_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = HostRoot::new(dir.path());
        std::fs::create_dir_all(dir.path().join("var/lib")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("data/kubelet/device-plugins")).expect("mkdir");
        // The host's /var/lib/kubelet -> /data/kubelet: absolute, so only valid inside the root.
        std::os::unix::fs::symlink("/data/kubelet", dir.path().join("var/lib/kubelet")).expect("symlink");
        assert_eq!(plugin_dir(&root, None), dir.path().join("data/kubelet/device-plugins"));
        let explicit = Path::new("/var/lib/k0s/kubelet/device-plugins");
        assert_eq!(plugin_dir(&root, Some(explicit)), explicit);
    }
}
