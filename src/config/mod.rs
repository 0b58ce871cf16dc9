//! The node config: which devices nodeprep takes, what it does with them, and under which
//! extended-resource name it advertises them. One YAML file (a ConfigMap in the cluster).
//!
//! ```yaml
//! # The HyperConverged form, copied as it is from spec.permittedHostDevices:
//! pciHostDevices:
//!   - pciDeviceSelector: "10DE:1EB8"
//!     resourceName: nvidia.com/TU104GL_Tesla_T4
//!     externalResourceProvider: true
//! # The richer selectors the SR-IOV device plugin taught users:
//! devices:
//!   - resourceName: intel.com/qat_vf      # optional: derived from pci.ids when absent
//!     bind: vfio-pci                      # or "none" to leave the driver alone
//!     selectors:
//!       vendors: ["8086"]
//!       devices: ["37c9"]
//!       pfNames: ["ens1f0#0-3"]
//! # Huge page pools nodeprep sets at run time (no reboot):
//! hugepages:
//!   - size: 2Mi                           # or 1Gi
//!     pages: 512                          # the pool's total
//!   - size: 1Gi
//!     pages: 4
//!     numaNode: 0                         # optional: this NUMA node's pool
//! # Labels nodeprep leaves to others:
//! nodeLabels:
//!   kata: false                           # feature.node.kubernetes.io/runtime.kata is NFD's
//! # Name devices to the runtime by CDI instead of DeviceSpecs (read at start):
//! cdi:
//!   kind: nodeprep.io/vfio                # <vendor>/<class> of the CDI names
//!   specDir: /var/run/cdi                 # optional: where the spec file goes
//! # Devices offered through Dynamic Resource Allocation instead of a device plugin:
//! dra:
//!   driverName: vfio.nodeprep.io          # optional (read at start)
//!   devices:
//!     - resourceName: nodeprep.io/edu     # optional: derived from pci.ids when absent
//!       atRest: host                      # host: own driver until a claim is prepared;
//!                                         # vfio: bound to vfio-pci at start
//!       selectors:
//!         vendors: ["1234"]
//! ```
//!
//! Loading validates everything and refuses the file as a whole, listing every problem.
//! [`Config::claims`] then resolves entries against a host's devices and refuses a device two
//! entries both claim.

pub mod selector;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::machineconfig::HugepageSize;
use crate::model::{PciAddress, PciDevice, PciInventory};
pub use selector::{OriginalDrivers, PfName, Selector};

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid YAML for nodeprep: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path} refused, nothing changed; fix these and try again:\n{}", list(.problems))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

fn list(problems: &[String]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// Every problem, one per line, for reports and Events.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// What to do with the selected devices' driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindPolicy {
    /// Bind to vfio-pci (the default): what VMs and DPDK need.
    VfioPci,
    /// Leave the current driver alone (advertise only).
    Leave,
}

/// Where an entry came from, for messages: `pciHostDevices[0]`, `devices[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName(pub String);

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One validated config entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: EntryName,
    pub selector: Selector,
    /// The extended-resource name; `None` means derive it per device from pci.ids.
    pub resource_name: Option<String>,
    pub bind: BindPolicy,
    /// KubeVirt's flag: an external device plugin (nodeprep) provides this resource.
    pub external_resource_provider: bool,
    /// Which kubelet front offers the devices.
    pub front: Front,
}

/// How an entry's devices reach pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Front {
    /// An extended resource of a device plugin (`devices`, `pciHostDevices`).
    #[default]
    DevicePlugin,
    /// A device of nodeprep's DRA driver (`dra.devices`).
    Dra(AtRest),
}

/// The driver a DRA device has while no claim holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtRest {
    /// Its own driver; bound to vfio-pci when a claim is prepared, given back on unprepare.
    #[default]
    Host,
    /// Bound to vfio-pci at start, as device-plugin devices are.
    Vfio,
}

impl fmt::Display for AtRest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AtRest::Host => "host",
            AtRest::Vfio => "vfio",
        })
    }
}

/// The `dra:` settings besides its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraSettings {
    /// The DRA driver name: a DNS subdomain (ResourceSlices' `spec.driver`, the DeviceClass's
    /// selector, the kubelet plugin's name).
    pub driver_name: String,
}

impl Default for DraSettings {
    fn default() -> Self {
        DraSettings { driver_name: crate::dra::DEFAULT_DRIVER.to_owned() }
    }
}

/// A counted resource: N identical units with no PCI device behind them, e.g. Kata peer pods'
/// `kata.peerpods.io/vm` or `devices.kubevirt.io/kvm` backed by `/dev/kvm`. Off unless
/// configured (KubeVirt's own handler advertises its resources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedResource {
    pub resource_name: String,
    pub count: u32,
    /// A device node each allocation gets (`/dev/kvm`), read-write.
    pub device_path: Option<String>,
}

/// The count a counted resource gets when the config names none: Kata peer pods' default
/// `PEERPODS_LIMIT_PER_NODE`.
pub const DEFAULT_COUNT: u32 = 10;

/// A huge page pool nodeprep sets at run time: the pool of `size` pages, the node's global one
/// or one NUMA node's, set to exactly `pages` (see [`crate::hugepages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugepageReservation {
    pub size: HugepageSize,
    /// The pool's total, not an increment; 0 empties it.
    pub pages: u64,
    /// `None`: the global pool (`sys/kernel/mm/hugepages`), spread over the nodes by the kernel;
    /// `Some(n)`: NUMA node n's pool (`sys/devices/system/node/node<n>/hugepages`).
    pub numa_node: Option<u32>,
}

impl fmt::Display for HugepageReservation {
    /// `512 x 2Mi` or `4 x 1Gi on NUMA node 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} x {}", self.pages, self.size)?;
        match self.numa_node {
            Some(n) => write!(f, " on NUMA node {n}"),
            None => Ok(()),
        }
    }
}

/// Which of the node labels nodeprep owns it actually sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLabelSettings {
    /// `feature.node.kubernetes.io/runtime.kata`; `false` leaves the key to Node Feature
    /// Discovery where NFD's own rule sets it. Default `true`.
    pub kata: bool,
}

impl Default for NodeLabelSettings {
    fn default() -> Self {
        NodeLabelSettings { kata: true }
    }
}

/// Where runtimes look for CDI specs generated at run time.
pub const DEFAULT_CDI_SPEC_DIR: &str = "/var/run/cdi";

/// The `cdi:` config: the kind nodeprep's devices are named under, and where the spec goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiSettings {
    /// `<vendor>/<class>`, e.g. `nodeprep.io/vfio`.
    pub kind: String,
    /// Absolute path on the host.
    pub spec_dir: String,
}

fn vendor_or_class_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// Pure: why `kind` is not a CDI kind (`<vendor>/<class>`), if it is not.
pub fn kind_problem(kind: &str) -> Option<String> {
    let Some((vendor, class)) = kind.split_once('/') else {
        return Some(format!("{kind:?} is not <vendor>/<class>, like nodeprep.io/vfio"));
    };
    for (what, s) in [("vendor", vendor), ("class", class)] {
        if !vendor_or_class_ok(s) {
            return Some(format!(
                "{kind:?}: {what} {s:?} must start with a letter, end with a letter or digit, and hold only letters, digits, '_', '-' and '.'"
            ));
        }
    }
    None
}

/// A validated config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub entries: Vec<Entry>,
    pub counted: Vec<CountedResource>,
    /// Huge page pools to set at run time, in file order.
    pub hugepages: Vec<HugepageReservation>,
    pub node_labels: NodeLabelSettings,
    /// CDI names for PCI devices ([`crate::deviceplugin::cdi`]); none: DeviceSpecs.
    pub cdi: Option<CdiSettings>,
    /// The DRA driver's settings (its devices are the entries with [`Front::Dra`]).
    pub dra: DraSettings,
    /// What happens to a device nodeprep bound once the config no longer wants it on vfio-pci.
    pub release: Release,
}

/// What happens to a device nodeprep bound to vfio-pci once the config stops selecting it (or
/// selects it for its host driver: `bind: none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Release {
    /// Given back to its original driver as soon as no pod or claim holds it.
    #[default]
    Auto,
    /// Left on vfio-pci until `nodeprep unbind` (nodeprep's behaviour before the key existed).
    Manual,
}

/// A device an entry takes, with the resource it will be advertised under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub address: PciAddress,
    pub entry: usize,
    pub resource_name: String,
}

// ---- the file format ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    pci_host_devices: Vec<RawHostDevice>,
    #[serde(default)]
    permitted_host_devices: Option<RawPermitted>,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    counted_resources: Vec<RawCounted>,
    #[serde(default)]
    hugepages: Vec<RawHugepages>,
    node_labels: Option<RawNodeLabels>,
    cdi: Option<RawCdi>,
    dra: Option<RawDra>,
    release: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDra {
    driver_name: Option<String>,
    #[serde(default)]
    devices: Vec<RawDraDevice>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDraDevice {
    resource_name: Option<String>,
    at_rest: Option<String>,
    selectors: Option<RawSelectors>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCdi {
    kind: Option<String>,
    spec_dir: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

/// Values are checked by hand (not typed) so that a bad one is listed with the other problems
/// instead of stopping the parse.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHugepages {
    size: Option<serde_yaml::Value>,
    pages: Option<serde_yaml::Value>,
    numa_node: Option<serde_yaml::Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNodeLabels {
    kata: Option<serde_yaml::Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCounted {
    resource_name: Option<String>,
    count: Option<u32>,
    device_path: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPermitted {
    #[serde(default)]
    pci_host_devices: Vec<RawHostDevice>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHostDevice {
    pci_device_selector: Option<String>,
    resource_name: Option<String>,
    #[serde(default)]
    external_resource_provider: bool,
    #[serde(default)]
    disabled: bool,
    bind: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDevice {
    resource_name: Option<String>,
    bind: Option<String>,
    #[serde(default)]
    external_resource_provider: bool,
    selectors: Option<RawSelectors>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSelectors {
    #[serde(default)]
    vendors: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    classes: Vec<String>,
    #[serde(default)]
    drivers: Vec<String>,
    #[serde(default)]
    pci_addresses: Vec<String>,
    #[serde(default)]
    pf_names: Vec<String>,
    #[serde(default)]
    numa_nodes: Vec<u32>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_yaml::Value>,
}

fn unknown_keys(at: &str, unknown: &BTreeMap<String, serde_yaml::Value>, known: &str, problems: &mut Vec<String>) {
    for k in unknown.keys() {
        problems.push(format!("{at}: unknown field {k:?} (known fields: {known})"));
    }
}

fn parse_bind(at: &str, bind: Option<&str>, problems: &mut Vec<String>) -> BindPolicy {
    match bind {
        None | Some("vfio-pci") => BindPolicy::VfioPci,
        Some("none") => BindPolicy::Leave,
        Some(other) => {
            problems.push(format!("{at}: bind: {other:?} is not \"vfio-pci\" or \"none\""));
            BindPolicy::VfioPci
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_text(path).map(|(c, _)| c)
    }

    /// [`load`](Self::load), also returning the text it parsed (what a watcher compares later
    /// reads with).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ParseError::Syntax(message) => ConfigError::Syntax { path: path.to_owned(), message },
            ParseError::Invalid(problems) => ConfigError::Invalid { path: path.to_owned(), problems },
        })?;
        Ok((config, text))
    }

    /// Parses and validates config text; every problem is listed.
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        // An empty file (or only comments) is a valid config that selects nothing.
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Config::default());
        }
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?;
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        unknown_keys(
            "config",
            &raw.unknown,
            "pciHostDevices, permittedHostDevices, devices, countedResources, hugepages, nodeLabels, cdi, dra, release",
            &mut problems,
        );
        let release = match raw.release.as_deref() {
            None | Some("auto") => Release::Auto,
            Some("manual") => Release::Manual,
            Some(other) => {
                problems.push(format!("release: {other:?} is not auto or manual"));
                Release::Auto
            }
        };

        let mut host_devices: Vec<(String, RawHostDevice)> =
            raw.pci_host_devices.into_iter().enumerate().map(|(i, d)| (format!("pciHostDevices[{i}]"), d)).collect();
        if let Some(p) = raw.permitted_host_devices {
            unknown_keys("permittedHostDevices", &p.unknown, "pciHostDevices", &mut problems);
            host_devices.extend(
                p.pci_host_devices
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (format!("permittedHostDevices.pciHostDevices[{i}]"), d)),
            );
        }
        for (at, d) in host_devices {
            unknown_keys(
                &at,
                &d.unknown,
                "pciDeviceSelector, resourceName, externalResourceProvider, disabled, bind",
                &mut problems,
            );
            if d.disabled {
                continue;
            }
            let bind = parse_bind(&at, d.bind.as_deref(), &mut problems);
            let mut selector = Selector::default();
            match d.pci_device_selector.as_deref().map(selector::parse_vendor_device) {
                Some(Ok((v, dev))) => {
                    selector.vendors.push(v);
                    selector.devices.push(dev);
                }
                Some(Err(e)) => problems.push(format!("{at}: pciDeviceSelector: {e}")),
                None => problems
                    .push(format!("{at}: pciDeviceSelector is required (\"VENDOR:DEVICE\", e.g. \"10DE:1EB8\")")),
            }
            let resource_name = match d.resource_name {
                Some(r) => {
                    if let Err(e) = validate_resource_name(&r) {
                        problems.push(format!("{at}: resourceName: {e}"));
                    }
                    Some(r)
                }
                None => {
                    problems.push(format!("{at}: resourceName is required in the HyperConverged form (it must match the HyperConverged CR byte for byte)"));
                    None
                }
            };
            entries.push(Entry {
                name: EntryName(at),
                selector,
                resource_name,
                bind,
                external_resource_provider: d.external_resource_provider,
                front: Front::DevicePlugin,
            });
        }

        for (i, d) in raw.devices.into_iter().enumerate() {
            let at = format!("devices[{i}]");
            unknown_keys(&at, &d.unknown, "resourceName, bind, externalResourceProvider, selectors", &mut problems);
            let bind = parse_bind(&at, d.bind.as_deref(), &mut problems);
            if let Some(r) = &d.resource_name {
                if let Err(e) = validate_resource_name(r) {
                    problems.push(format!("{at}: resourceName: {e}"));
                }
            }
            let selector = required_selectors(&at, d.selectors, &mut problems);
            entries.push(Entry {
                name: EntryName(at),
                selector,
                resource_name: d.resource_name,
                bind,
                external_resource_provider: d.external_resource_provider,
                front: Front::DevicePlugin,
            });
        }

        let mut counted: Vec<CountedResource> = Vec::new();
        for (i, c) in raw.counted_resources.into_iter().enumerate() {
            let at = format!("countedResources[{i}]");
            unknown_keys(&at, &c.unknown, "resourceName, count, devicePath", &mut problems);
            let Some(name) = c.resource_name else {
                problems.push(format!("{at}: resourceName is required (e.g. kata.peerpods.io/vm)"));
                continue;
            };
            if let Err(e) = validate_resource_name(&name) {
                problems.push(format!("{at}: resourceName: {e}"));
            }
            let count = c.count.unwrap_or(DEFAULT_COUNT);
            if !(1..=100_000).contains(&count) {
                problems.push(format!("{at}: count {count} must be between 1 and 100000"));
            }
            if let Some(p) = &c.device_path {
                if !p.starts_with("/dev/") || p.contains("..") {
                    problems.push(format!("{at}: devicePath {p:?} must be a device node under /dev, like /dev/kvm"));
                }
            }
            if counted.iter().any(|o| o.resource_name == name) {
                problems.push(format!("{at}: {name} is already a counted resource"));
            }
            if entries.iter().any(|e| e.resource_name.as_deref() == Some(name.as_str())) {
                problems
                    .push(format!("{at}: {name} is also the resourceName of a PCI entry; one resource, one source"));
            }
            counted.push(CountedResource { resource_name: name, count, device_path: c.device_path });
        }

        let dra = parse_dra(raw.dra, &mut entries, &mut problems);
        let hugepages = parse_hugepage_reservations(raw.hugepages, &mut problems);
        let node_labels = parse_node_labels(raw.node_labels, &mut problems);
        let cdi = raw.cdi.and_then(|c| parse_cdi(c, &mut problems));

        // The same explicit address in two entries is a conflict without looking at any host.
        let mut seen: BTreeMap<PciAddress, &EntryName> = BTreeMap::new();
        for e in &entries {
            for a in &e.selector.addresses {
                if let Some(first) = seen.insert(*a, &e.name) {
                    problems.push(format!("{a} is named by both {first} and {}", e.name));
                }
            }
        }
        // Identical selectors (checked once the entries themselves are valid, so a half-parsed
        // selector does not produce a second, confusing report).
        let valid_so_far = problems.is_empty();
        for (i, a) in entries.iter().enumerate().filter(|_| valid_so_far) {
            for b in &entries[i + 1..] {
                if a.selector == b.selector && !a.selector.is_empty() {
                    problems.push(format!(
                        "{} and {} have the same selector: both would claim the same devices",
                        a.name, b.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(Config { entries, counted, hugepages, node_labels, cdi, dra, release })
        } else {
            Err(ParseError::Invalid(problems))
        }
    }

    /// Pure: the devices each entry takes on this host, with their resource names. A device
    /// two entries both take is a problem: the whole config is refused.
    pub fn claims(&self, inv: &PciInventory) -> Result<Vec<Claim>, Vec<String>> {
        self.claims_with(inv, &OriginalDrivers::new())
    }

    /// Pure: [`Config::claims`], with the drivers devices had before nodeprep bound them (so
    /// a `drivers` selector keeps matching a device it moved to vfio-pci).
    pub fn claims_with(&self, inv: &PciInventory, original: &OriginalDrivers) -> Result<Vec<Claim>, Vec<String>> {
        let mut claims: Vec<Claim> = Vec::new();
        let mut problems = Vec::new();
        let mut owner: BTreeMap<PciAddress, usize> = BTreeMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            for d in inv.devices.iter().filter(|d| e.selector.matches_with(d, inv, original)) {
                if let Some(first) = owner.insert(d.address, i) {
                    let fronts = (self.entries[first].front, e.front);
                    let how = if matches!(
                        fronts,
                        (Front::Dra(_), Front::Dra(_)) | (Front::DevicePlugin, Front::DevicePlugin)
                    ) {
                        ""
                    } else {
                        " (a device is offered either by a device plugin or through DRA, not both)"
                    };
                    problems.push(format!(
                        "{} is claimed by both {} and {}{how}: narrow one of the selectors",
                        d.address, self.entries[first].name, e.name
                    ));
                    continue;
                }
                let resource_name = e.resource_name.clone().unwrap_or_else(|| derived_resource_name(d));
                claims.push(Claim { address: d.address, entry: i, resource_name });
            }
        }
        // An IOMMU group is handed out whole, so it is offered one way only: a group whose
        // functions are split between a device plugin and DRA (or DRA at rest on two drivers)
        // would be bound for one and given back by the other.
        let mut by_group: BTreeMap<u32, (Front, &Claim)> = BTreeMap::new();
        for c in &claims {
            let Some(g) = inv.device(&c.address).and_then(|d| d.iommu_group) else { continue };
            let front = self.entries[c.entry].front;
            match by_group.get(&g) {
                Some((f, first)) if *f != front => problems.push(format!(
                    "IOMMU group {g} holds {} of {} and {} of {}: a group goes to pods whole, so all of it must be offered one way (device plugin, or DRA with one atRest)",
                    first.address, self.entries[first.entry].name, c.address, self.entries[c.entry].name
                )),
                Some(_) => {}
                None => {
                    by_group.insert(g, (front, c));
                }
            }
        }
        if problems.is_empty() { Ok(claims) } else { Err(problems) }
    }
}

impl Config {
    /// How `claim`'s device reaches pods.
    pub fn front(&self, claim: &Claim) -> Front {
        self.entries.get(claim.entry).map(|e| e.front).unwrap_or_default()
    }

    /// Pure: whether `claim`'s device is bound to vfio-pci at start (device plugins' entries,
    /// and DRA entries with `atRest: vfio`); DRA devices at rest on their host driver are bound
    /// only when a claim is prepared.
    pub fn binds_at_start(&self, claim: &Claim) -> bool {
        !matches!(self.front(claim), Front::Dra(AtRest::Host))
    }
}

/// A config that could not be parsed, before a file path is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Syntax(String),
    Invalid(Vec<String>),
}

/// A YAML value as written, for messages (`-1`, `"lots"`, `[1, 2]`).
fn shown(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => format!("{s:?}"),
        other => serde_yaml::to_string(other).map_or_else(|_| format!("{other:?}"), |s| s.trim_end().to_owned()),
    }
}

/// A whole number `0..=max`, or the problem with it.
fn whole_number(v: &serde_yaml::Value, max: u64) -> Result<u64, String> {
    match v.as_u64() {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(format!("{n} is too large (at most {max})")),
        None => Err(format!("{} is not a whole number of 0 or more", shown(v))),
    }
}

/// `hugepages:`: each entry valid on its own, no (size, NUMA node) pool twice, and no size both
/// as the global pool and as a node's pool (the global count is the sum of the node pools: one
/// entry would undo the other).
fn parse_hugepage_reservations(raw: Vec<RawHugepages>, problems: &mut Vec<String>) -> Vec<HugepageReservation> {
    let mut out: Vec<(String, HugepageReservation)> = Vec::new();
    for (i, h) in raw.into_iter().enumerate() {
        let at = format!("hugepages[{i}]");
        unknown_keys(&at, &h.unknown, "size, pages, numaNode", problems);
        let size = match &h.size {
            Some(serde_yaml::Value::String(s)) => match s.parse::<HugepageSize>() {
                Ok(size) => Some(size),
                Err(_) => {
                    problems.push(format!("{at}: size {s:?} is not a huge page size: use 2Mi or 1Gi"));
                    None
                }
            },
            Some(other) => {
                problems.push(format!("{at}: size {} is not a huge page size: use 2Mi or 1Gi", shown(other)));
                None
            }
            None => {
                problems.push(format!("{at}: size is required (2Mi or 1Gi)"));
                None
            }
        };
        let pages = match &h.pages {
            Some(v) => whole_number(v, u64::from(u32::MAX))
                .map_err(|e| problems.push(format!("{at}: pages: {e} (the pool's total, e.g. 512)")))
                .ok(),
            None => {
                problems.push(format!("{at}: pages is required (the pool's total, e.g. 512; 0 empties the pool)"));
                None
            }
        };
        let numa_node = match &h.numa_node {
            None => Some(None),
            Some(v) => whole_number(v, 1023)
                .map(|n| Some(n as u32))
                .map_err(|e| problems.push(format!("{at}: numaNode: {e} (a NUMA node number, e.g. 0)")))
                .ok(),
        };
        let (Some(size), Some(pages), Some(numa_node)) = (size, pages, numa_node) else { continue };
        let r = HugepageReservation { size, pages, numa_node };
        let pool = |n: Option<u32>| match n {
            Some(n) => format!("the {size} pool of NUMA node {n}"),
            None => format!("the global {size} pool"),
        };
        if let Some((first, _)) = out.iter().find(|(_, o)| o.size == size && o.numa_node == numa_node) {
            problems.push(format!("{at}: {} is already set by {first}; give each pool once", pool(numa_node)));
        } else if let Some((first, o)) =
            out.iter().find(|(_, o)| o.size == size && o.numa_node.is_none() != numa_node.is_none())
        {
            problems.push(format!(
                "{at}: {} and {} ({first}) are ambiguous: the global pool is the sum of the node pools, so one                  would undo the other; give {size} either once for the whole node or per NUMA node",
                pool(numa_node),
                pool(o.numa_node)
            ));
        }
        out.push((at, r));
    }
    out.into_iter().map(|(_, r)| r).collect()
}

/// An entry's `selectors`, which must be there and select something in particular.
fn required_selectors(at: &str, raw: Option<RawSelectors>, problems: &mut Vec<String>) -> Selector {
    let before = problems.len();
    let selector = match raw {
        Some(s) => parse_selectors(at, s, problems),
        None => {
            problems.push(format!(
                "{at}: selectors is required (vendors, devices, classes, drivers, pciAddresses, pfNames, numaNodes)"
            ));
            Selector::default()
        }
    };
    // (An entry whose selectors were all invalid is already reported.)
    if selector.is_empty() && problems.len() == before {
        problems.push(format!("{at}: selectors select nothing in particular: name at least one of vendors, devices, classes, drivers, pciAddresses, pfNames"));
    }
    selector
}

/// Pure: why `name` is not a DRA driver name (a DNS subdomain of at most 63 characters, as
/// `spec.driver` requires), if it is not.
pub fn driver_name_problem(name: &str) -> Option<String> {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    if name.is_empty() || name.len() > 63 || !name.split('.').all(label_ok) {
        return Some(format!(
            "{name:?} is not a DNS subdomain of at most 63 characters (lower-case letters, digits, '-' and '.'), like vfio.nodeprep.io"
        ));
    }
    None
}

/// The `dra:` section: its settings, and its device entries appended to `entries`.
fn parse_dra(raw: Option<RawDra>, entries: &mut Vec<Entry>, problems: &mut Vec<String>) -> DraSettings {
    let mut settings = DraSettings::default();
    let Some(raw) = raw else { return settings };
    unknown_keys("dra", &raw.unknown, "driverName, devices", problems);
    if let Some(name) = raw.driver_name {
        match driver_name_problem(&name) {
            Some(p) => problems.push(format!("dra: driverName: {p}")),
            None => settings.driver_name = name,
        }
    }
    for (i, d) in raw.devices.into_iter().enumerate() {
        let at = format!("dra.devices[{i}]");
        unknown_keys(&at, &d.unknown, "resourceName, atRest, selectors", problems);
        if let Some(r) = &d.resource_name {
            if let Err(e) = validate_resource_name(r) {
                problems.push(format!("{at}: resourceName: {e}"));
            }
        }
        let at_rest = match d.at_rest.as_deref() {
            None | Some("host") => AtRest::Host,
            Some("vfio") => AtRest::Vfio,
            Some(other) => {
                problems.push(format!("{at}: atRest: {other:?} is not \"host\" or \"vfio\""));
                AtRest::Host
            }
        };
        let selector = required_selectors(&at, d.selectors, problems);
        entries.push(Entry {
            name: EntryName(at),
            selector,
            resource_name: d.resource_name,
            bind: BindPolicy::VfioPci,
            external_resource_provider: false,
            front: Front::Dra(at_rest),
        });
    }
    settings
}

fn parse_cdi(raw: RawCdi, problems: &mut Vec<String>) -> Option<CdiSettings> {
    unknown_keys("cdi", &raw.unknown, "kind, specDir", problems);
    let Some(kind) = raw.kind else {
        problems.push("cdi: kind is missing (the <vendor>/<class> of the CDI names, like nodeprep.io/vfio)".into());
        return None;
    };
    if let Some(p) = kind_problem(&kind) {
        problems.push(format!("cdi.kind: {p}"));
    }
    let spec_dir = raw.spec_dir.unwrap_or_else(|| DEFAULT_CDI_SPEC_DIR.to_owned());
    if !spec_dir.starts_with('/') || spec_dir.split('/').any(|c| c == "..") {
        problems.push(format!("cdi.specDir: {spec_dir:?} must be an absolute path without .., like /var/run/cdi"));
    }
    Some(CdiSettings { kind, spec_dir })
}

fn parse_node_labels(raw: Option<RawNodeLabels>, problems: &mut Vec<String>) -> NodeLabelSettings {
    let mut out = NodeLabelSettings::default();
    let Some(raw) = raw else { return out };
    unknown_keys("nodeLabels", &raw.unknown, "kata", problems);
    match &raw.kata {
        None => {}
        Some(serde_yaml::Value::Bool(b)) => out.kata = *b,
        Some(other) => problems.push(format!(
            "nodeLabels.kata: {} is not true or false (false leaves feature.node.kubernetes.io/runtime.kata to              Node Feature Discovery)",
            shown(other)
        )),
    }
    out
}

fn parse_selectors(at: &str, s: RawSelectors, problems: &mut Vec<String>) -> Selector {
    let at = format!("{at}.selectors");
    unknown_keys(&at, &s.unknown, "vendors, devices, classes, drivers, pciAddresses, pfNames, numaNodes", problems);
    let mut out = Selector { drivers: s.drivers, numa_nodes: s.numa_nodes, ..Default::default() };
    let mut each = |list: &[String], what: &str, f: &mut dyn FnMut(&str) -> Result<(), String>| {
        for v in list {
            if let Err(e) = f(v) {
                problems.push(format!("{at}.{what}: {e}"));
            }
        }
    };
    each(&s.vendors, "vendors", &mut |v| selector::parse_hex16(v).map(|x| out.vendors.push(x)));
    each(&s.devices, "devices", &mut |v| selector::parse_hex16(v).map(|x| out.devices.push(x)));
    each(&s.classes, "classes", &mut |v| selector::parse_class(v).map(|x| out.classes.push(x)));
    each(&s.pci_addresses, "pciAddresses", &mut |v| {
        v.parse::<PciAddress>().map(|a| out.addresses.push(a)).map_err(|e| e.to_string())
    });
    each(&s.pf_names, "pfNames", &mut |v| selector::parse_pf_name(v).map(|p| out.pf_names.push(p)));
    out
}

/// Checks an extended-resource name: `domain/name`, the domain a DNS subdomain outside
/// `kubernetes.io` (and `k8s.io`), the name a qualified name of at most 63 characters.
pub fn validate_resource_name(s: &str) -> Result<(), String> {
    let (domain, name) =
        s.split_once('/').ok_or_else(|| format!("{s:?} needs a domain prefix, like nvidia.com/TU104GL_TESLA_T4"))?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
        return Err(format!("{s:?}: {domain:?} is not a lower-case DNS domain like example.com"));
    }
    if ["kubernetes.io", "k8s.io"].iter().any(|k| domain == *k || domain.ends_with(&format!(".{k}"))) {
        return Err(format!("{s:?}: the {domain} domain is reserved for Kubernetes; use your own, like nodeprep.io"));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !edge_ok(name.chars().next())
        || !edge_ok(name.chars().last())
    {
        return Err(format!(
            "{s:?}: {name:?} must be 1-63 characters of [A-Za-z0-9-_.], starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// The domain a vendor's resources live under when a config entry names none.
pub fn vendor_domain(vendor_id: Option<u16>) -> &'static str {
    match vendor_id {
        Some(0x10de) => "nvidia.com",
        Some(0x8086) => "intel.com",
        Some(0x1002 | 0x1022) => "amd.com",
        Some(0x15b3) => "mellanox.com",
        Some(0x14e4) => "broadcom.com",
        _ => "devices.nodeprep.io",
    }
}

/// The resource name for a device whose entry names none, the way NVIDIA's KubeVirt GPU plugin
/// derives it: the pci.ids device name, upper-cased, `/`, `.` and white space to `_`,
/// anything outside `[A-Za-z0-9_.]` dropped, under the vendor's domain
/// (`nvidia.com/TU104GL_TESLA_T4`). Without a pci.ids name: `VVVV_DDDD` in hex.
pub fn derived_resource_name(d: &PciDevice) -> String {
    let suffix = d
        .device_name
        .as_deref()
        .map(crate::names::resource_suffix)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('_').chars().take(63).collect::<String>())
        .unwrap_or_else(|| format!("{:04X}_{:04X}", d.vendor_id.unwrap_or(0), d.device_id.unwrap_or(0)));
    format!("{}/{suffix}", vendor_domain(d.vendor_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
pciHostDevices:
  - pciDeviceSelector: "10DE:1EB8"
    resourceName: nvidia.com/TU104GL_Tesla_T4
    externalResourceProvider: true
devices:
  - resourceName: intel.com/qat_vf
    selectors:
      vendors: ["8086"]
      devices: ["37c9"]
  - bind: none
    selectors:
      pfNames: ["ens1f0#0-1"]
"#;

    #[test]
    fn parses_both_forms() {
        let c = Config::parse(GOOD).expect("valid");
        assert_eq!(c.entries.len(), 3);
        assert_eq!(c.entries[0].selector.vendors, vec![0x10de]);
        assert_eq!(c.entries[0].selector.devices, vec![0x1eb8]);
        assert!(c.entries[0].external_resource_provider);
        assert_eq!(c.entries[0].bind, BindPolicy::VfioPci);
        assert_eq!(c.entries[2].bind, BindPolicy::Leave);
        assert_eq!(c.entries[2].resource_name, None);
        assert_eq!(c.entries[1].name.to_string(), "devices[0]");
    }

    #[test]
    fn hyperconverged_spec_can_be_pasted_whole() {
        let text = "permittedHostDevices:\n  pciHostDevices:\n    - pciDeviceSelector: 10de:1db6\n      resourceName: nvidia.com/GV100GL_Tesla_V100\n    - pciDeviceSelector: 8086:6F54\n      resourceName: intel.com/qat\n      disabled: true\n";
        let c = Config::parse(text).expect("valid");
        assert_eq!(c.entries.len(), 1, "disabled entries are skipped");
        assert_eq!(c.entries[0].name.to_string(), "permittedHostDevices.pciHostDevices[0]");
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = r#"
pciHostDevice: []
pciHostDevices:
  - pciDeviceSelector: "10DE-1EB8"
    resourceName: TU104GL
  - pciDeviceSelector: "10DE:1EB8"
    resourceName: kubernetes.io/gpu
    bind: nouveau
devices:
  - selectors:
      vendor: ["8086"]
      pciAddresses: ["0000:3b:00.0", "0000:3b:00.9"]
      classes: ["030"]
      pfNames: ["ens1f0#5-2"]
  - selectors:
      pciAddresses: ["3b:00.0"]
"#;
        let Err(ParseError::Invalid(p)) = Config::parse(bad) else { panic!("must be refused") };
        let all = p.join("\n");
        for needle in [
            "unknown field \"pciHostDevice\"",
            "pciHostDevices[0]: pciDeviceSelector: \"10DE-1EB8\" is not VENDOR:DEVICE",
            "pciHostDevices[0]: resourceName: \"TU104GL\" needs a domain prefix",
            "pciHostDevices[1]: resourceName: \"kubernetes.io/gpu\": the kubernetes.io domain is reserved",
            "pciHostDevices[1]: bind: \"nouveau\"",
            "devices[0].selectors: unknown field \"vendor\"",
            "devices[0].selectors.pciAddresses: invalid PCI address \"0000:3b:00.9\"",
            "devices[0].selectors.classes: \"030\"",
            "devices[0].selectors.pfNames: \"ens1f0#5-2\"",
            "0000:3b:00.0 is named by both devices[0] and devices[1]",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(p.len(), 10, "{all}");
    }

    #[test]
    fn counted_resources() {
        let c = Config::parse(
            "countedResources:\n  - resourceName: kata.peerpods.io/vm\n  - resourceName: devices.kubevirt.io/kvm\n    count: 110\n    devicePath: /dev/kvm\n",
        )
        .expect("valid");
        assert_eq!(
            c.counted,
            vec![
                CountedResource { resource_name: "kata.peerpods.io/vm".into(), count: 10, device_path: None },
                CountedResource {
                    resource_name: "devices.kubevirt.io/kvm".into(),
                    count: 110,
                    device_path: Some("/dev/kvm".into())
                },
            ]
        );
        let bad = "pciHostDevices:\n  - pciDeviceSelector: 10de:1eb8\n    resourceName: nvidia.com/T4\ncountedResources:\n  - resourceName: kata.peerpods.io/vm\n    count: 0\n  - resourceName: kata.peerpods.io/vm\n    devicePath: kvm\n  - resourceName: nvidia.com/T4\n  - count: 3\n";
        let Err(ParseError::Invalid(p)) = Config::parse(bad) else { panic!("must be refused") };
        let all = p.join("\n");
        for needle in [
            "count 0 must be",
            "already a counted resource",
            "devicePath \"kvm\"",
            "also the resourceName of a PCI entry",
            "countedResources[3]: resourceName is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn hugepages_and_node_labels() {
        let c = Config::parse(
            "hugepages:\n  - size: 2Mi\n    pages: 512\n  - size: 1Gi\n    pages: 4\n    numaNode: 0\n  - size: 1G\n    pages: 0\n    numaNode: 1\nnodeLabels:\n  kata: false\n",
        )
        .expect("valid");
        assert_eq!(
            c.hugepages,
            vec![
                HugepageReservation { size: HugepageSize::TwoMi, pages: 512, numa_node: None },
                HugepageReservation { size: HugepageSize::OneGi, pages: 4, numa_node: Some(0) },
                HugepageReservation { size: HugepageSize::OneGi, pages: 0, numa_node: Some(1) },
            ]
        );
        assert_eq!(c.hugepages[1].to_string(), "4 x 1Gi on NUMA node 0");
        assert!(!c.node_labels.kata);
        assert!(c.entries.is_empty() && c.counted.is_empty());

        // Defaults: no pools, and nodeprep sets the Kata label.
        let empty = Config::parse("devices: []\n").expect("valid");
        assert_eq!(empty.hugepages, vec![]);
        assert!(empty.node_labels.kata, "kata defaults to true");
        assert!(Config::default().node_labels.kata, "Default for Config keeps kata on too");
        assert!(Config::parse("nodeLabels: {}\n").expect("valid").node_labels.kata);
        assert!(Config::parse("nodeLabels:\n  kata: true\n").expect("valid").node_labels.kata);
    }

    #[test]
    fn dra_entries_and_their_problems() {
        let c = Config::parse(
            "dra:\n  driverName: gpu.example.com\n  devices:\n    - atRest: vfio\n      selectors: {vendors: [\"10de\"]}\n    - selectors: {pciAddresses: [\"0000:af:00.0\"]}\n",
        )
        .expect("valid");
        assert_eq!(c.dra.driver_name, "gpu.example.com");
        assert_eq!(c.entries[0].front, Front::Dra(AtRest::Vfio));
        assert_eq!(c.entries[1].front, Front::Dra(AtRest::Host), "host is the default");
        assert_eq!(Config::default().dra.driver_name, "vfio.nodeprep.io");
        let Err(ParseError::Invalid(p)) =
            Config::parse("dra:\n  driverName: Not_A.Name\n  devices:\n    - atRest: maybe\n      color: red\n")
        else {
            panic!("refused")
        };
        assert!(p.iter().any(|x| x.contains("driverName") && x.contains("DNS subdomain")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("dra.devices[0]: atRest") && x.contains("\"maybe\"")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("unknown field \"color\"")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("dra.devices[0]: selectors is required")), "{p:?}");
        // The same address named by a device plugin entry and a DRA entry: refused without a host.
        let Err(ParseError::Invalid(p)) = Config::parse(
            "devices:\n  - selectors: {pciAddresses: [\"0000:af:00.0\"]}\ndra:\n  devices:\n    - selectors: {pciAddresses: [\"0000:af:00.0\"]}\n",
        ) else {
            panic!("refused")
        };
        assert!(p.iter().any(|x| x.contains("devices[0]") && x.contains("dra.devices[0]")), "{p:?}");
    }

    #[test]
    fn cdi_kind_and_spec_dir() {
        let c = Config::parse("cdi:\n  kind: nodeprep.io/vfio\n").expect("valid");
        assert_eq!(c.cdi, Some(CdiSettings { kind: "nodeprep.io/vfio".into(), spec_dir: "/var/run/cdi".into() }));
        let c = Config::parse("cdi:\n  kind: example.com/gpu\n  specDir: /etc/cdi\n").expect("valid");
        assert_eq!(c.cdi.map(|c| c.spec_dir), Some("/etc/cdi".into()));
        assert_eq!(Config::parse("devices: []\n").expect("valid").cdi, None, "off unless configured");

        let bad = "cdi:\n  kind: vfio\n  specDir: var/run/cdi\n  mode: cri\n";
        let Err(ParseError::Invalid(p)) = Config::parse(bad) else { panic!("must be refused") };
        assert_eq!(
            p,
            [
                "cdi: unknown field \"mode\" (known fields: kind, specDir)",
                "cdi.kind: \"vfio\" is not <vendor>/<class>, like nodeprep.io/vfio",
                "cdi.specDir: \"var/run/cdi\" must be an absolute path without .., like /var/run/cdi",
            ]
        );
        let Err(ParseError::Invalid(p)) = Config::parse("cdi: {}\n") else { panic!("must be refused") };
        assert_eq!(p, ["cdi: kind is missing (the <vendor>/<class> of the CDI names, like nodeprep.io/vfio)"]);
    }

    #[test]
    fn every_hugepage_problem_is_listed() {
        let bad = r#"
hugepages:
  - size: 4Mi
    pages: 8
  - size: 2Mi
    pages: -1
  - size: 2Mi
    pages: "lots"
  - size: 2Mi
    pages: 1.5
  - pages: 3
  - size: 1Gi
  - size: 2Mi
    pages: 16
  - size: 2Mi
    pages: 32
  - size: 2Mi
    pages: 8
    numaNode: 0
  - size: 1Gi
    pages: 2
    numaNode: 1
  - size: 1Gi
    pages: 2
    numaNode: 1
  - size: 1Gi
    pages: 4
  - size: 1Gi
    pages: 1
    numaNode: -2
    node: 1
  - size: 2
    pages: 1
nodeLabels:
  kata: "no"
  nfd: true
"#;
        let Err(ParseError::Invalid(p)) = Config::parse(bad) else { panic!("must be refused") };
        let all = p.join("\n");
        for needle in [
            "hugepages[0]: size \"4Mi\" is not a huge page size: use 2Mi or 1Gi",
            "hugepages[1]: pages: -1 is not a whole number of 0 or more",
            "hugepages[2]: pages: \"lots\" is not a whole number",
            "hugepages[3]: pages: 1.5 is not a whole number",
            "hugepages[4]: size is required",
            "hugepages[5]: pages is required",
            "hugepages[7]: the global 2Mi pool is already set by hugepages[6]",
            "hugepages[8]: the 2Mi pool of NUMA node 0 and the global 2Mi pool (hugepages[6]) are ambiguous",
            "hugepages[10]: the 1Gi pool of NUMA node 1 is already set by hugepages[9]",
            "hugepages[11]: the global 1Gi pool and the 1Gi pool of NUMA node 1 (hugepages[9]) are ambiguous",
            "hugepages[12]: numaNode: -2 is not a whole number",
            "hugepages[12]: unknown field \"node\" (known fields: size, pages, numaNode)",
            "hugepages[13]: size 2 is not a huge page size",
            "nodeLabels.kata: \"no\" is not true or false",
            "nodeLabels: unknown field \"nfd\" (known fields: kata)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(p.len(), 15, "{all}");
        let Err(ParseError::Invalid(p)) = Config::parse("hugepages:\n  - size: 2Mi\n    pages: 99999999999\n") else {
            panic!("must be refused")
        };
        assert!(p[0].contains("pages: 99999999999 is too large"), "{p:?}");
    }

    #[test]
    fn syntax_errors_and_empty_files() {
        assert!(matches!(Config::parse("devices: [\n"), Err(ParseError::Syntax(_))));
        assert!(matches!(Config::parse("devices: 3\n"), Err(ParseError::Syntax(_))));
        assert_eq!(Config::parse("# nothing yet\n"), Ok(Config::default()));
        assert_eq!(Config::parse(""), Ok(Config::default()));
    }

    #[test]
    fn resource_names() {
        for ok in ["nvidia.com/TU104GL_TESLA_T4", "intel.com/qat_vf", "devices.kubevirt.io/kvm", "a.b/c.d-e"] {
            assert_eq!(validate_resource_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "gpu",
            "nvidia/gpu",
            "NVIDIA.com/gpu",
            "kubernetes.io/gpu",
            "x.k8s.io/gpu",
            "nvidia.com/",
            "nvidia.com/_x",
            "nvidia.com/a b",
        ] {
            assert!(validate_resource_name(bad).is_err(), "{bad}");
        }
        let gpu = PciDevice {
            vendor_id: Some(0x10de),
            device_id: Some(0x1eb8),
            device_name: Some("TU104GL [Tesla T4]".into()),
            ..Default::default()
        };
        assert_eq!(derived_resource_name(&gpu), "nvidia.com/TU104GL_TESLA_T4");
        let unknown = PciDevice { vendor_id: Some(0x1234), device_id: Some(0x11e8), ..Default::default() };
        assert_eq!(derived_resource_name(&unknown), "devices.nodeprep.io/1234_11E8");
        assert_eq!(validate_resource_name(&derived_resource_name(&unknown)), Ok(()));
    }
}
