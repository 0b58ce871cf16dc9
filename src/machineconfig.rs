//! OpenShift MachineConfigs for boot-time node settings (`nodeprep machineconfig`).
//!
//! This module owns the translation of a [`MachineConfigRequest`] (pool role, IOMMU vendor,
//! vfio-pci ids, huge page pools) into `machineconfiguration.openshift.io/v1` MachineConfig
//! objects, one per concern, and their rendering as one multi-document YAML stream. It does no
//! I/O: the CLI prints the text, admins apply it with `oc apply -f`.
//!
//! The objects follow Red Hat's OpenShift Virtualization documentation (`100-worker-iommu`,
//! `100-worker-vfiopci`), written directly as MachineConfigs instead of Butane:
//! - `100-<role>-iommu`: `spec.kernelArguments` `intel_iommu=on` or `amd_iommu=on`, then
//!   `iommu=pt`. Linux enables the AMD IOMMU by itself and logs `AMD-Vi: Unknown option - 'on'`
//!   for `amd_iommu=on`; the argument is kept because the documentation and existing clusters use
//!   it, and it is harmless.
//! - `100-<role>-vfiopci`: Ignition 3.2.0 storage files `/etc/modprobe.d/vfio.conf`
//!   (`options vfio-pci ids=...`, lower-case hex, sorted, deduplicated) and
//!   `/etc/modules-load.d/vfio-pci.conf` (`vfio-pci`), mode 0644, as base64 `data:` URLs.
//!   `ids=` binds every function with those ids on the node at boot, unlike `nodeprep bind`,
//!   which binds chosen addresses at run time without a reboot.
//! - `100-<role>-hugepages`: `default_hugepagesz=<first size>` then `hugepagesz=<size>
//!   hugepages=<count>` per requested size, in request order.
//!
//! The output is a pure function of the request: the same request gives the same bytes.
//! Applying any of these objects makes the Machine Config Operator drain and reboot every node of
//! the pool; the header comment of [`render`] says so.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `apiVersion` of every object rendered here.
pub const API_VERSION: &str = "machineconfiguration.openshift.io/v1";
/// `kind` of every object rendered here.
pub const KIND: &str = "MachineConfig";
/// The label that ties a MachineConfig to the MachineConfigPool of a role.
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";
/// `spec.config.ignition.version` of every object rendered here.
pub const IGNITION_VERSION: &str = "3.2.0";
/// The file that gives vfio-pci its ids at module load.
pub const VFIO_MODPROBE_PATH: &str = "/etc/modprobe.d/vfio.conf";
/// The file that makes systemd load vfio-pci at boot.
pub const VFIO_MODULES_LOAD_PATH: &str = "/etc/modules-load.d/vfio-pci.conf";
/// `mode` of the files written (0644 in octal).
pub const FILE_MODE: u32 = 0o644;
/// The prefix of every `contents.source` written here, followed by the base64 text.
pub const DATA_URL_PREFIX: &str = "data:text/plain;charset=utf-8;base64,";
/// The role used when none is given.
pub const DEFAULT_ROLE: &str = "worker";

/// Everything that can go wrong building or parsing a request; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineConfigError {
    #[error(
        "nothing to render: ask for at least one of --iommu intel|amd, --vfio-ids VVVV:DDDD[,...] \
         or --hugepages SIZE:COUNT"
    )]
    Empty,
    #[error(
        "invalid role {role:?}: {problem}; the role names a MachineConfigPool (worker, master or a \
         custom pool) and must be a DNS-1123 label: 1 to 63 lower-case letters, digits or '-', \
         starting and ending with a letter or digit"
    )]
    InvalidRole { role: String, problem: String },
    #[error("huge pages {size}: the count is 0; ask for at least one page of that size or leave the size out")]
    ZeroHugepages { size: HugepageSize },
    #[error(
        "huge page size {size} is given more than once; give each size once with its total count \
         (e.g. --hugepages 1Gi:16,2Mi:1024)"
    )]
    DuplicateHugepageSize { size: HugepageSize },
    #[error("invalid huge page request {input:?}: {problem} (expected SIZE:COUNT with SIZE 2Mi or 1Gi, e.g. 1Gi:16)")]
    InvalidHugepages { input: String, problem: String },
    #[error("invalid IOMMU vendor {input:?}: expected intel or amd (the CPU vendor of the pool's nodes)")]
    InvalidIommuVendor { input: String },
    #[error("invalid PCI id {input:?}: {problem} (expected VVVV:DDDD in hex as lspci -nn shows it, e.g. 10de:1eb8)")]
    InvalidPciId { input: String, problem: String },
    #[error("internal error: could not write {name} as YAML: {message}; please report this as a nodeprep bug")]
    Yaml { name: String, message: String },
}

// ---------------------------------------------------------------------------------------------
// Request

/// Which IOMMU kernel argument to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IommuVendor {
    Intel,
    Amd,
}

impl IommuVendor {
    /// `intel` or `amd`, as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            IommuVendor::Intel => "intel",
            IommuVendor::Amd => "amd",
        }
    }

    /// The kernel arguments, in order: the vendor switch, then `iommu=pt`.
    pub fn kernel_arguments(self) -> [&'static str; 2] {
        match self {
            IommuVendor::Intel => ["intel_iommu=on", "iommu=pt"],
            IommuVendor::Amd => ["amd_iommu=on", "iommu=pt"],
        }
    }
}

impl fmt::Display for IommuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IommuVendor {
    type Err = MachineConfigError;

    /// `intel` or `amd`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "intel" => Ok(IommuVendor::Intel),
            "amd" => Ok(IommuVendor::Amd),
            _ => Err(MachineConfigError::InvalidIommuVendor { input: s.to_owned() }),
        }
    }
}

/// A huge page size x86-64 supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HugepageSize {
    /// 2 MiB pages.
    TwoMi,
    /// 1 GiB pages (the CPU needs the `pdpe1gb` flag).
    OneGi,
}

impl HugepageSize {
    /// `2Mi` or `1Gi`, as Kubernetes resource names spell it (`hugepages-1Gi`).
    pub fn as_str(self) -> &'static str {
        match self {
            HugepageSize::TwoMi => "2Mi",
            HugepageSize::OneGi => "1Gi",
        }
    }

    /// `2M` or `1G`, as the kernel command line spells it.
    pub fn kernel_value(self) -> &'static str {
        match self {
            HugepageSize::TwoMi => "2M",
            HugepageSize::OneGi => "1G",
        }
    }

    /// The size in kB, as in `sys/kernel/mm/hugepages/hugepages-<N>kB`.
    pub fn size_kb(self) -> u64 {
        match self {
            HugepageSize::TwoMi => 2048,
            HugepageSize::OneGi => 1_048_576,
        }
    }
}

impl fmt::Display for HugepageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HugepageSize {
    type Err = MachineConfigError;

    /// `2Mi`, `2M`, `1Gi` or `1G`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "2mi" | "2m" => Ok(HugepageSize::TwoMi),
            "1gi" | "1g" => Ok(HugepageSize::OneGi),
            _ => Err(MachineConfigError::InvalidHugepages {
                input: s.to_owned(),
                problem: "unsupported size: the sizes are 2Mi (or 2M) and 1Gi (or 1G)".to_owned(),
            }),
        }
    }
}

/// A number of huge pages of one size to reserve at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HugepageRequest {
    pub size: HugepageSize,
    pub count: u32,
}

impl fmt::Display for HugepageRequest {
    /// `1Gi:16`: what [`FromStr`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.size, self.count)
    }
}

impl FromStr for HugepageRequest {
    type Err = MachineConfigError;

    /// `SIZE:COUNT`: `1Gi:16`, `2Mi:1024`, `1G:16`, `2M:1024`. A count of 0 is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid =
            |problem: &str| MachineConfigError::InvalidHugepages { input: s.to_owned(), problem: problem.to_owned() };
        let (size, count) = s.trim().split_once(':').ok_or_else(|| invalid("no ':' between size and count"))?;
        let size: HugepageSize = size
            .parse()
            .map_err(|_| invalid(&format!("unsupported size {size:?}: the sizes are 2Mi (or 2M) and 1Gi (or 1G)")))?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(&format!("the count {count:?} is not a whole number")));
        }
        let count: u32 = count.parse().map_err(|_| invalid(&format!("the count {count} is too large")))?;
        if count == 0 {
            return Err(MachineConfigError::ZeroHugepages { size });
        }
        Ok(HugepageRequest { size, count })
    }
}

/// Parses a comma-separated list of huge page requests (`1Gi:16,2Mi:1024`), keeping the order.
pub fn parse_hugepages(list: &str) -> Result<Vec<HugepageRequest>, MachineConfigError> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(str::parse).collect()
}

/// Parses one `VVVV:DDDD` PCI vendor:device id (hex, any case, 1 to 4 digits each).
pub fn parse_pci_id(s: &str) -> Result<(u16, u16), MachineConfigError> {
    let invalid = |problem: &str| MachineConfigError::InvalidPciId { input: s.to_owned(), problem: problem.to_owned() };
    let (vendor, device) = s.trim().split_once(':').ok_or_else(|| invalid("no ':' between vendor and device"))?;
    let hex = |part: &str, what: &str| -> Result<u16, MachineConfigError> {
        if part.is_empty() || part.len() > 4 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(&format!("the {what} id {part:?} is not 1 to 4 hex digits")));
        }
        u16::from_str_radix(part, 16).map_err(|_| invalid(&format!("the {what} id {part:?} is not hex")))
    };
    Ok((hex(vendor, "vendor")?, hex(device, "device")?))
}

/// Parses a comma-separated list of PCI ids (`10de:2230,10de:1aef`), keeping the order.
pub fn parse_pci_ids(list: &str) -> Result<Vec<(u16, u16)>, MachineConfigError> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(parse_pci_id).collect()
}

/// What to render. `Default` is the `worker` role with nothing asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfigRequest {
    /// The MachineConfigPool role: `worker`, `master` or a custom pool name (a DNS-1123 label).
    pub role: String,
    /// Adds `intel_iommu=on` or `amd_iommu=on`, and `iommu=pt`.
    pub iommu: Option<IommuVendor>,
    /// vendor:device ids for vfio-pci to claim at boot; empty = no vfio MachineConfig.
    pub vfio_ids: Vec<(u16, u16)>,
    /// Huge page pools; the first size becomes `default_hugepagesz`.
    pub hugepages: Vec<HugepageRequest>,
}

impl Default for MachineConfigRequest {
    fn default() -> Self {
        MachineConfigRequest { role: DEFAULT_ROLE.to_owned(), iommu: None, vfio_ids: Vec::new(), hugepages: Vec::new() }
    }
}

impl MachineConfigRequest {
    /// Checks the request; [`render`] and [`render_objects`] call it first.
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        validate_role(&self.role)?;
        if self.iommu.is_none() && self.vfio_ids.is_empty() && self.hugepages.is_empty() {
            return Err(MachineConfigError::Empty);
        }
        let mut seen = Vec::with_capacity(self.hugepages.len());
        for h in &self.hugepages {
            if h.count == 0 {
                return Err(MachineConfigError::ZeroHugepages { size: h.size });
            }
            if seen.contains(&h.size) {
                return Err(MachineConfigError::DuplicateHugepageSize { size: h.size });
            }
            seen.push(h.size);
        }
        Ok(())
    }

    /// The vfio ids as the kernel reads them: `vvvv:dddd`, lower-case, sorted, deduplicated.
    pub fn normalized_vfio_ids(&self) -> Vec<String> {
        let mut ids = self.vfio_ids.clone();
        ids.sort_unstable();
        ids.dedup();
        ids.iter().map(|(v, d)| format!("{v:04x}:{d:04x}")).collect()
    }
}

/// Checks that `role` is a DNS-1123 label (what a MachineConfigPool role label value must be).
pub fn validate_role(role: &str) -> Result<(), MachineConfigError> {
    let invalid =
        |problem: &str| MachineConfigError::InvalidRole { role: role.to_owned(), problem: problem.to_owned() };
    if role.is_empty() {
        return Err(invalid("it is empty"));
    }
    if role.len() > 63 {
        return Err(invalid(&format!("it is {} characters long", role.len())));
    }
    if let Some(c) = role.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(invalid(&format!("it contains {c:?}")));
    }
    if role.starts_with('-') || role.ends_with('-') {
        return Err(invalid("it starts or ends with '-'"));
    }
    Ok(())
}

/// The `nodeprep machineconfig` command line that renders `req`, in canonical form: the role,
/// then `--iommu`, `--vfio-ids` (normalized) and `--hugepages` (request order) when given.
pub fn command_line(req: &MachineConfigRequest) -> String {
    let mut line = format!("nodeprep machineconfig --role {}", req.role);
    if let Some(v) = req.iommu {
        line.push_str(&format!(" --iommu {v}"));
    }
    if !req.vfio_ids.is_empty() {
        line.push_str(&format!(" --vfio-ids {}", req.normalized_vfio_ids().join(",")));
    }
    if !req.hugepages.is_empty() {
        let pages: Vec<String> = req.hugepages.iter().map(ToString::to_string).collect();
        line.push_str(&format!(" --hugepages {}", pages.join(",")));
    }
    line
}

// ---------------------------------------------------------------------------------------------
// Objects

/// A `machineconfiguration.openshift.io/v1` MachineConfig, with only the fields written here.
/// Fields serialize in the order declared, so the YAML is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MachineConfigSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineConfigSpec {
    pub config: IgnitionConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_arguments: Vec<String>,
}

/// The Ignition config carried in `spec.config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnitionConfig {
    pub ignition: Ignition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ignition {
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub files: Vec<IgnitionFile>,
}

/// An Ignition `storage.files[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IgnitionFile {
    pub path: String,
    /// Decimal in YAML (420 = 0644).
    pub mode: u32,
    pub overwrite: bool,
    pub contents: FileContents,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContents {
    /// `data:text/plain;charset=utf-8;base64,<base64>`.
    pub source: String,
}

impl MachineConfig {
    fn new(role: &str, concern: &str, config: IgnitionConfig, kernel_arguments: Vec<String>) -> Self {
        MachineConfig {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: format!("100-{role}-{concern}"),
                labels: BTreeMap::from([(ROLE_LABEL.to_owned(), role.to_owned())]),
            },
            spec: MachineConfigSpec { config, kernel_arguments },
        }
    }
}

impl IgnitionFile {
    /// A mode 0644 file that replaces whatever is at `path`.
    fn text(path: &str, text: &str) -> Self {
        IgnitionFile {
            path: path.to_owned(),
            mode: FILE_MODE,
            overwrite: true,
            contents: FileContents { source: format!("{DATA_URL_PREFIX}{}", base64_encode(text.as_bytes())) },
        }
    }
}

fn ignition(storage: Option<Storage>) -> IgnitionConfig {
    IgnitionConfig { ignition: Ignition { version: IGNITION_VERSION.to_owned() }, storage }
}

/// The text of `/etc/modprobe.d/vfio.conf` for these ids (already normalized), newline-terminated.
pub fn vfio_modprobe_text(ids: &[String]) -> String {
    format!("options vfio-pci ids={}\n", ids.join(","))
}

/// The text of `/etc/modules-load.d/vfio-pci.conf`, newline-terminated.
pub const VFIO_MODULES_LOAD_TEXT: &str = "vfio-pci\n";

/// The kernel arguments of the huge page MachineConfig, in order.
pub fn hugepage_kernel_arguments(pages: &[HugepageRequest]) -> Vec<String> {
    let Some(first) = pages.first() else {
        return Vec::new();
    };
    let mut args = vec![format!("default_hugepagesz={}", first.size.kernel_value())];
    for p in pages {
        args.push(format!("hugepagesz={}", p.size.kernel_value()));
        args.push(format!("hugepages={}", p.count));
    }
    args
}

/// The MachineConfigs for `req`, in a fixed order: iommu, vfiopci, hugepages (each only when
/// asked for).
pub fn render_objects(req: &MachineConfigRequest) -> Result<Vec<MachineConfig>, MachineConfigError> {
    req.validate()?;
    let role = req.role.as_str();
    let mut out = Vec::with_capacity(3);
    if let Some(vendor) = req.iommu {
        let args = vendor.kernel_arguments().iter().map(|a| (*a).to_owned()).collect();
        out.push(MachineConfig::new(role, "iommu", ignition(None), args));
    }
    if !req.vfio_ids.is_empty() {
        let files = vec![
            IgnitionFile::text(VFIO_MODPROBE_PATH, &vfio_modprobe_text(&req.normalized_vfio_ids())),
            IgnitionFile::text(VFIO_MODULES_LOAD_PATH, VFIO_MODULES_LOAD_TEXT),
        ];
        out.push(MachineConfig::new(role, "vfiopci", ignition(Some(Storage { files })), Vec::new()));
    }
    if !req.hugepages.is_empty() {
        out.push(MachineConfig::new(role, "hugepages", ignition(None), hugepage_kernel_arguments(&req.hugepages)));
    }
    Ok(out)
}

/// The header comment of [`render`]: how the text was made and what applying it costs.
pub fn header(req: &MachineConfigRequest) -> String {
    format!(
        "# Generated by `{}`.\n\
         # Applying these MachineConfigs makes the Machine Config Operator drain and reboot every node\n\
         # in the \"{}\" MachineConfigPool (as many at a time as the pool's maxUnavailable allows).\n\
         # To bind devices to vfio-pci without a reboot, use `nodeprep bind` at run time instead;\n\
         # IOMMU and boot-time huge page kernel arguments need the reboot.\n",
        command_line(req),
        req.role
    )
}

/// The MachineConfigs for `req` as one YAML stream: the [`header`] comment, then each object
/// after a `---` line. The same request always gives the same bytes.
pub fn render(req: &MachineConfigRequest) -> Result<String, MachineConfigError> {
    let objects = render_objects(req)?;
    let mut out = header(req);
    for o in &objects {
        out.push_str("---\n");
        out.push_str(&to_yaml(o)?);
    }
    Ok(out)
}

/// One object as YAML. serde_yaml has no reason to fail on these types (string keys, strings,
/// integers, booleans); if it ever does, the error is returned rather than half a document.
fn to_yaml(o: &MachineConfig) -> Result<String, MachineConfigError> {
    serde_yaml::to_string(o)
        .map_err(|e| MachineConfigError::Yaml { name: o.metadata.name.clone(), message: e.to_string() })
}

// ---------------------------------------------------------------------------------------------
// Base64

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 section 4) with `=` padding, no line breaks.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
        for (i, s) in sextets.iter().enumerate() {
            // A chunk of k bytes yields k + 1 significant characters.
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[*s as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> MachineConfigRequest {
        MachineConfigRequest {
            role: "worker".into(),
            iommu: Some(IommuVendor::Intel),
            vfio_ids: vec![(0x10de, 0x2230), (0x10de, 0x1aef), (0x10de, 0x2230)],
            hugepages: vec![
                HugepageRequest { size: HugepageSize::OneGi, count: 16 },
                HugepageRequest { size: HugepageSize::TwoMi, count: 512 },
            ],
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn base64_uses_the_whole_alphabet_and_binary_bytes() {
        // 0xfb 0xff 0xbf encodes to "+/+/": the two characters past 'z' and '9'.
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64_encode(&[0, 0, 0]), "AAAA");
        assert_eq!(base64_encode(&[0xff]), "/w==");
        // Same as `printf 'vfio-pci\n' | base64`.
        assert_eq!(base64_encode(b"vfio-pci\n"), "dmZpby1wY2kK");
    }

    #[test]
    fn vendor_and_sizes_parse_in_every_accepted_spelling() {
        assert_eq!("intel".parse::<IommuVendor>(), Ok(IommuVendor::Intel));
        assert_eq!("AMD".parse::<IommuVendor>(), Ok(IommuVendor::Amd));
        assert!(matches!("arm".parse::<IommuVendor>(), Err(MachineConfigError::InvalidIommuVendor { .. })));
        for (s, size, count) in [
            ("1Gi:16", HugepageSize::OneGi, 16),
            ("1G:4", HugepageSize::OneGi, 4),
            ("2Mi:1024", HugepageSize::TwoMi, 1024),
            ("2M:8", HugepageSize::TwoMi, 8),
        ] {
            assert_eq!(s.parse::<HugepageRequest>(), Ok(HugepageRequest { size, count }), "{s}");
        }
        assert_eq!("1Gi:16".parse::<HugepageRequest>().map(|h| h.to_string()), Ok("1Gi:16".to_owned()));
    }

    #[test]
    fn bad_hugepage_requests_say_what_is_wrong() {
        let err = |s: &str| s.parse::<HugepageRequest>().unwrap_err().to_string();
        assert!(err("4Mi:2").contains("the sizes are 2Mi (or 2M) and 1Gi (or 1G)"), "{}", err("4Mi:2"));
        assert!(err("1Gi").contains("no ':'"));
        assert!(err("1Gi:-1").contains("not a whole number"));
        assert!(err("1Gi:99999999999").contains("too large"));
        assert_eq!(
            "1Gi:0".parse::<HugepageRequest>(),
            Err(MachineConfigError::ZeroHugepages { size: HugepageSize::OneGi })
        );
        assert_eq!(parse_hugepages("1Gi:16,2Mi:1024").map(|v| v.len()), Ok(2));
    }

    #[test]
    fn pci_ids_parse_case_insensitively_and_reject_junk() {
        assert_eq!(parse_pci_id("10DE:1EB8"), Ok((0x10de, 0x1eb8)));
        assert_eq!(parse_pci_ids("10de:2230, 10de:1aef"), Ok(vec![(0x10de, 0x2230), (0x10de, 0x1aef)]));
        assert!(matches!(parse_pci_id("10de"), Err(MachineConfigError::InvalidPciId { .. })));
        assert!(matches!(parse_pci_id("10de:1eb8a"), Err(MachineConfigError::InvalidPciId { .. })));
        assert!(matches!(parse_pci_id("10de:+1eb"), Err(MachineConfigError::InvalidPciId { .. })));
        assert!(matches!(parse_pci_id("zz:1eb8"), Err(MachineConfigError::InvalidPciId { .. })));
    }

    #[test]
    fn roles_are_dns1123_labels() {
        for ok in ["worker", "master", "gpu-worker", "w1", &"a".repeat(63)] {
            assert_eq!(validate_role(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Worker", "gpu_worker", "-worker", "worker-", "gpu.worker", &"a".repeat(64)] {
            assert!(matches!(validate_role(bad), Err(MachineConfigError::InvalidRole { .. })), "{bad:?}");
        }
    }

    #[test]
    fn objects_come_one_per_concern_in_fixed_order() {
        let objs = render_objects(&full()).unwrap();
        let names: Vec<&str> = objs.iter().map(|o| o.metadata.name.as_str()).collect();
        assert_eq!(names, ["100-worker-iommu", "100-worker-vfiopci", "100-worker-hugepages"]);
        assert_eq!(objs[0].spec.kernel_arguments, ["intel_iommu=on", "iommu=pt"]);
        assert_eq!(
            objs[2].spec.kernel_arguments,
            ["default_hugepagesz=1G", "hugepagesz=1G", "hugepages=16", "hugepagesz=2M", "hugepages=512"]
        );
        let files = &objs[1].spec.config.storage.as_ref().unwrap().files;
        assert_eq!(
            files[0].contents.source,
            format!("{DATA_URL_PREFIX}{}", base64_encode(b"options vfio-pci ids=10de:1aef,10de:2230\n"))
        );
        assert_eq!(files[1].contents.source, "data:text/plain;charset=utf-8;base64,dmZpby1wY2kK");
        assert!(objs[1].spec.kernel_arguments.is_empty());
    }

    #[test]
    fn amd_uses_amd_iommu_and_custom_roles_name_everything() {
        let req = MachineConfigRequest { role: "gpu".into(), iommu: Some(IommuVendor::Amd), ..Default::default() };
        let objs = render_objects(&req).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].metadata.name, "100-gpu-iommu");
        assert_eq!(objs[0].metadata.labels.get(ROLE_LABEL).map(String::as_str), Some("gpu"));
        assert_eq!(objs[0].spec.kernel_arguments, ["amd_iommu=on", "iommu=pt"]);
    }

    #[test]
    fn yaml_is_stable_and_starts_with_the_header() {
        let a = render(&full()).unwrap();
        assert_eq!(a, render(&full()).unwrap());
        assert!(a.starts_with(
            "# Generated by `nodeprep machineconfig --role worker --iommu intel --vfio-ids 10de:1aef,10de:2230 \
             --hugepages 1Gi:16,2Mi:512`.\n"
        ));
        assert!(a.contains("reboot every node\n# in the \"worker\" MachineConfigPool"));
        assert!(a.contains("`nodeprep bind`"));
        assert_eq!(a.matches("\n---\n").count(), 3);
    }

    #[test]
    fn invalid_requests_are_refused() {
        assert_eq!(render(&MachineConfigRequest::default()), Err(MachineConfigError::Empty));
        let bad_role = MachineConfigRequest { role: "GPU".into(), ..full() };
        assert!(matches!(render(&bad_role), Err(MachineConfigError::InvalidRole { .. })));
        let zero =
            MachineConfigRequest { hugepages: vec![HugepageRequest { size: HugepageSize::TwoMi, count: 0 }], ..full() };
        assert_eq!(render_objects(&zero), Err(MachineConfigError::ZeroHugepages { size: HugepageSize::TwoMi }));
        let dup = MachineConfigRequest {
            hugepages: vec![
                HugepageRequest { size: HugepageSize::OneGi, count: 1 },
                HugepageRequest { size: HugepageSize::OneGi, count: 2 },
            ],
            ..full()
        };
        assert_eq!(render(&dup), Err(MachineConfigError::DuplicateHugepageSize { size: HugepageSize::OneGi }));
        assert!(MachineConfigError::Empty.to_string().contains("--iommu intel|amd"));
    }
}
