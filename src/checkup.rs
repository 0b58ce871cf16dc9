//! `nodeprep checkup`: a Job in the OpenShift Virtualization checkup framework that says whether
//! one node is fit for VMs, with the facts behind each verdict.
//!
//! The framework's contract: a checkup is a Job given the namespace and name of a ConfigMap
//! (`CONFIGMAP_NAMESPACE`, `CONFIGMAP_NAME`); it reads its input from the ConfigMap's `spec.*`
//! keys and writes its result into the same ConfigMap as `status.*` keys, which is where the
//! admin (or a tool) reads it: `oc get configmap <name> -o yaml`.
//!
//! # Input (`data` of the ConfigMap)
//!
//! | key | meaning |
//! |---|---|
//! | `spec.timeout` | required by the framework: a Go duration (`30s`, `5m`, `1h30m`), the bound of the whole checkup |
//! | `spec.param.nodeName` | optional: the node the checkup must run on; compared with `NODE_NAME` (the downward API's `spec.nodeName`), a mismatch is a failure |
//! | `spec.param.requirements` | optional comma list of `kata`, `passthrough`, `hugepages`, `iommu`, `kvm`, `vfio`; default `kvm,iommu,passthrough` |
//! | `spec.param.resources` | optional comma list of extended resource names that must show in the Node's `status.allocatable` with a count of at least 1; the checkup waits (polling the Node every second) for them until the timeout |
//!
//! Any other `spec.param.*` key is an error, so a typo is never silently ignored; keys outside
//! `spec.*` are left alone.
//!
//! # Output (`status.*` keys, written with JSON merge patches on `data`)
//!
//! First, at once: `status.startTimestamp` (and every `status.*` key a previous run left is
//! removed in the same patch, so a reader never mixes two runs). Then, in one patch:
//!
//! | key | value |
//! |---|---|
//! | `status.completionTimestamp` | RFC 3339, UTC, seconds (`2026-11-22T10:00:07Z`), like the start |
//! | `status.succeeded` | `"true"` or `"false"` |
//! | `status.failureReason` | `""` on success; else every reason, joined by `"; "`: `invalid spec: ...`, the wrong node, an unreadable host, `timed out after <timeout> waiting for <what>`, each problem of each unmet requirement as `<requirement>: <problem>`, each missing resource |
//! | `status.result.nodeName` | the node the checkup ran on (`NODE_NAME`) |
//! | `status.result.kernel` | the kernel release |
//! | `status.result.iommuGroups` | the number of IOMMU groups |
//! | `status.result.vfioPciDevices` | the number of PCI functions bound to vfio-pci |
//! | `status.result.hugepagePools` | reserved huge pages per size, `2Mi:2048,1Gi:16` (`?` when unreadable) |
//! | `status.result.<requirement>` | per requirement asked: `"true"` or `"false"` |
//! | `status.result.<requirement>Facts` | the facts behind that verdict, joined by `"; "` |
//! | `status.result.allocatable.<resource>` | per resource asked, with `/` as `_` (ConfigMap keys allow only `[-._a-zA-Z0-9]`): the quantity in the Node's `status.allocatable`, `"0"` when it is not listed; absent when the Node could not be read |
//!
//! The huge page pools are `hugepagePools`, not `hugepages`: `status.result.hugepages` is the
//! verdict of the `hugepages` requirement.
//!
//! The host keys and the verdicts are written only when the host was evaluated (not for an
//! invalid spec, the wrong node or an unreadable host).
//!
//! # Behaviour
//!
//! - The ConfigMap is read, `status.startTimestamp` written, the spec parsed; an invalid spec is
//!   written back as a failure at once.
//! - The host is read through the host root ([`read_system`], [`discover`]) and judged
//!   ([`evaluate`]). When resources are asked and every requirement is met, the Node is read
//!   every second until each resource is allocatable or the timeout passes. When a requirement
//!   is already unmet there is nothing to wait for: the Node is read once, for the record.
//! - The whole checkup is bounded by `spec.timeout`, from the start timestamp: at the deadline the
//!   result is still written, with `status.succeeded: "false"` and a failure reason saying what
//!   it was waiting for.
//! - Every request has a deadline ([`crate::cluster`]'s `call`); reads and writes are retried a
//!   few times with backoff on errors that may pass (no answer, 429, 5xx), never on a 403 or 404.
//! - The process's exit status says whether the result was written, not what it says: the
//!   framework reads the verdict from the ConfigMap, and `oc wait job --for=condition=complete`
//!   must work for a node that is not fit too. See [`CheckupError`] for when it is non-zero.
//!
//! Pure parts ([`parse_spec`], [`parse_go_duration`], [`result_data`], [`failure_reasons`]) are
//! separate from the edge ([`run_checkup`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::cluster::{ApiStats, Backoff, ClusterError, call};
use crate::eligibility::{EligibilityReport, Requirement, evaluate};
use crate::host::HostRoot;
use crate::host::pci::discover;
use crate::host::system::read_system;
use crate::model::pci::PciInventory;
use crate::model::system::{ONE_GIB_KB, SystemFacts};

/// `spec.timeout`: the framework's bound of the whole checkup (a Go duration).
pub const SPEC_TIMEOUT: &str = "spec.timeout";
/// Prefix of the checkup's own parameters.
pub const PARAM_PREFIX: &str = "spec.param.";
pub const PARAM_NODE_NAME: &str = "spec.param.nodeName";
pub const PARAM_REQUIREMENTS: &str = "spec.param.requirements";
pub const PARAM_RESOURCES: &str = "spec.param.resources";
/// Every parameter this checkup reads.
pub const PARAMS: [&str; 3] = [PARAM_NODE_NAME, PARAM_REQUIREMENTS, PARAM_RESOURCES];

/// Prefix of everything the checkup writes.
pub const STATUS_PREFIX: &str = "status.";
pub const STATUS_START: &str = "status.startTimestamp";
pub const STATUS_COMPLETION: &str = "status.completionTimestamp";
pub const STATUS_SUCCEEDED: &str = "status.succeeded";
pub const STATUS_FAILURE_REASON: &str = "status.failureReason";
/// Prefix of the result keys.
pub const RESULT_PREFIX: &str = "status.result.";
/// Prefix of the result keys of the resources asked (`status.result.allocatable.<resource>`).
pub const ALLOCATABLE_PREFIX: &str = "status.result.allocatable.";

/// The requirements when `spec.param.requirements` is not given.
pub const DEFAULT_REQUIREMENTS: [Requirement; 3] = [Requirement::Kvm, Requirement::Iommu, Requirement::Passthrough];

/// The longest ConfigMap key the API server accepts.
pub const MAX_KEY_LEN: usize = 253;

/// How often the Node is read while waiting for resources.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The deadline of each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per read or write of the ConfigMap.
const ATTEMPTS: u32 = 5;

// ---------------------------------------------------------------------------------------------
// The spec (pure)

/// The checkup's input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckupSpec {
    pub timeout: Duration,
    /// `spec.timeout` as written (trimmed), for messages: `timed out after 5m`.
    pub timeout_text: String,
    /// `spec.param.nodeName`; `None` when absent or empty.
    pub node_name: Option<String>,
    /// In the order given, each once.
    pub requirements: Vec<Requirement>,
    /// Extended resource names, in the order given, each once.
    pub resources: Vec<String>,
}

/// Pure: the spec from the ConfigMap's data, or every problem with it (each naming its key).
pub fn parse_spec(data: &BTreeMap<String, String>) -> Result<CheckupSpec, Vec<String>> {
    let mut problems = Vec::new();
    let get = |k: &str| data.get(k).map(|v| v.trim());

    let (timeout, timeout_text) = match get(SPEC_TIMEOUT) {
        None => {
            problems
                .push(format!("{SPEC_TIMEOUT} is missing: the checkup framework requires it (a Go duration like 5m)"));
            (Duration::ZERO, String::new())
        }
        Some(text) => match parse_go_duration(text) {
            Ok(d) if d.is_zero() => {
                problems.push(format!("{SPEC_TIMEOUT}: {text:?} is zero: give the checkup time, like 5m"));
                (d, text.to_owned())
            }
            Ok(d) => (d, text.to_owned()),
            Err(e) => {
                problems.push(format!("{SPEC_TIMEOUT}: {e}"));
                (Duration::ZERO, text.to_owned())
            }
        },
    };

    for key in data.keys().filter(|k| k.starts_with(PARAM_PREFIX) && !PARAMS.contains(&k.as_str())) {
        problems.push(format!("unknown parameter {key} (known: {})", PARAMS.join(", ")));
    }

    let node_name = get(PARAM_NODE_NAME).filter(|n| !n.is_empty()).map(str::to_owned);

    let mut requirements = Vec::new();
    match get(PARAM_REQUIREMENTS) {
        None => requirements.extend(DEFAULT_REQUIREMENTS),
        Some(list) => {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.parse::<Requirement>() {
                    Ok(r) if !requirements.contains(&r) => requirements.push(r),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{PARAM_REQUIREMENTS}: {e}")),
                }
            }
            if requirements.is_empty() && !list.split(',').any(|s| !s.trim().is_empty()) {
                problems.push(format!(
                    "{PARAM_REQUIREMENTS} is empty: name at least one requirement, or leave the key out for \
                     the default {}",
                    names(&DEFAULT_REQUIREMENTS)
                ));
            }
        }
    }

    let mut resources: Vec<String> = Vec::new();
    for item in get(PARAM_RESOURCES).unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Err(e) = check_resource_name(item) {
            problems.push(format!("{PARAM_RESOURCES}: {e}"));
            continue;
        }
        let key = resource_key(item);
        if key.len() > MAX_KEY_LEN {
            problems.push(format!(
                "{PARAM_RESOURCES}: {item:?} is too long for its result key {key} (at most {MAX_KEY_LEN} characters)"
            ));
            continue;
        }
        if let Some(other) = resources.iter().find(|r| resource_key(r) == key) {
            if other != item {
                problems.push(format!("{PARAM_RESOURCES}: {item:?} and {other:?} would share the result key {key}"));
            }
            continue;
        }
        resources.push(item.to_owned());
    }

    if problems.is_empty() {
        Ok(CheckupSpec { timeout, timeout_text, node_name, requirements, resources })
    } else {
        Err(problems)
    }
}

/// `kvm,iommu,passthrough`.
fn names(reqs: &[Requirement]) -> String {
    reqs.iter().map(|r| r.name()).collect::<Vec<_>>().join(",")
}

/// Pure: a Go duration (`time.ParseDuration`): an optional sign, then one or more decimal
/// numbers, each with a unit: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; `300ms`, `1.5h`,
/// `1h30m`. `0` alone is zero. Negative durations are refused (no `Duration` holds them).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000), // U+00B5 micro sign
        ("μs", 1_000), // U+03BC Greek mu
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let hint = "a Go duration like 30s, 5m or 1h30m";
    let mut s = text;
    let negative = if let Some(rest) = s.strip_prefix('-') {
        s = rest;
        true
    } else {
        s = s.strip_prefix('+').unwrap_or(s);
        false
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(format!("{text:?} is not {hint}"));
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!("{text:?} is not {hint}"));
        }
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("{text:?}: missing unit after {}{}; {hint}", int_part, dot(frac_part)));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!("{text:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h); {hint}"));
        };
        let too_long = || format!("{text:?} is too long a duration");
        let whole: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| too_long())? };
        let mut value = whole.checked_mul(scale).ok_or_else(too_long)?;
        // Fractions finer than a nanosecond are dropped, as Go does.
        let mut place = scale;
        for d in frac_part.bytes() {
            place /= 10;
            if place == 0 {
                break;
            }
            value += u128::from(d - b'0') * place;
        }
        total = total.checked_add(value).ok_or_else(too_long)?;
        s = rest;
    }
    if negative && total > 0 {
        return Err(format!("{text:?} is negative"));
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| format!("{text:?} is too long a duration"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

fn dot(frac: &str) -> String {
    if frac.is_empty() { String::new() } else { format!(".{frac}") }
}

/// Pure: a resource name as Kubernetes accepts it in `status.allocatable` (a qualified name:
/// an optional DNS subdomain prefix and `/`, then 1-63 characters of `[A-Za-z0-9_.-]` starting
/// and ending with a letter or digit).
pub fn check_resource_name(name: &str) -> Result<(), String> {
    let (prefix, local) = match name.split_once('/') {
        Some((p, l)) => (Some(p), l),
        None => (None, name),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let local_ok = !local.is_empty()
        && local.len() <= 63
        && local.starts_with(alnum)
        && local.ends_with(alnum)
        && local.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if !local_ok {
        return Err(format!(
            "{name:?} is not a resource name: the part after the domain must be 1-63 letters, digits, '-', '_' \
             or '.', starting and ending with a letter or digit (like nvidia.com/TU104GL_Tesla_T4)"
        ));
    }
    if let Some(p) = prefix {
        let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let prefix_ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty() && l.starts_with(lower) && l.ends_with(lower) && l.chars().all(|c| lower(c) || c == '-')
            });
        if !prefix_ok {
            return Err(format!("{name:?} is not a resource name: {p:?} is not a lower-case DNS domain"));
        }
    }
    Ok(())
}

/// Pure: the result key of a resource: `status.result.allocatable.` and the name with `/` as `_`.
pub fn resource_key(resource: &str) -> String {
    format!("{ALLOCATABLE_PREFIX}{}", resource.replace('/', "_"))
}

/// Pure: a key the API server accepts in a ConfigMap's `data`: 1-253 characters of
/// `[-._a-zA-Z0-9]`, and not `.` or `..`.
pub fn is_configmap_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key != "."
        && key != ".."
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// Pure: whether a Kubernetes quantity (`1`, `4`, `110`, `2k`, `16Gi`, `500m`, `1e3`) is at least
/// 1. Anything unparsable is not.
pub fn quantity_at_least_one(q: &str) -> bool {
    let q = q.trim();
    let num_len = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_len);
    let Ok(n) = num.parse::<f64>() else { return false };
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s => match s.strip_prefix(['e', 'E']).and_then(|e| e.parse::<i32>().ok()) {
            Some(exp) => 10f64.powi(exp),
            None => return false,
        },
    };
    n * scale >= 1.0
}

/// Pure: RFC 3339 in UTC at second precision (`2026-11-22T10:00:07Z`), as the framework writes.
pub fn timestamp(t: Timestamp) -> String {
    format!("{t:.0}")
}

/// Pure: a huge page size as Kubernetes names it (`2Mi`, `1Gi`, `64Ki`).
pub fn hugepage_size_name(kb: u64) -> String {
    if kb >= ONE_GIB_KB && kb % ONE_GIB_KB == 0 {
        format!("{}Gi", kb / ONE_GIB_KB)
    } else if kb >= 1024 && kb % 1024 == 0 {
        format!("{}Mi", kb / 1024)
    } else {
        format!("{kb}Ki")
    }
}

// ---------------------------------------------------------------------------------------------
// The result (pure)

/// What the host showed: the verdicts and the few facts the result names on their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFindings {
    /// `proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// Groups in `sys/kernel/iommu_groups`.
    pub iommu_groups: usize,
    /// PCI functions whose driver is vfio-pci.
    pub vfio_pci_devices: usize,
    /// (page size in kB, reserved pages; `None` when unreadable), by size.
    pub hugepages: Vec<(u64, Option<u64>)>,
    pub report: EligibilityReport,
}

impl HostFindings {
    /// Pure: judges the host.
    pub fn new(facts: &SystemFacts, inv: &PciInventory) -> HostFindings {
        let mut hugepages: Vec<(u64, Option<u64>)> =
            facts.hugepages.sizes.iter().map(|s| (s.size_kb, s.total)).collect();
        hugepages.sort_by_key(|(kb, _)| *kb);
        HostFindings {
            kernel: facts.kernel.release.clone(),
            iommu_groups: facts.iommu.group_count,
            vfio_pci_devices: inv.devices.iter().filter(|d| d.driver.as_deref() == Some("vfio-pci")).count(),
            hugepages,
            report: evaluate(facts, inv),
        }
    }

    /// `2Mi:2048,1Gi:16`.
    pub fn hugepage_pools(&self) -> String {
        self.hugepages
            .iter()
            .map(|(kb, n)| {
                format!("{}:{}", hugepage_size_name(*kb), n.map_or_else(|| "?".to_owned(), |n| n.to_string()))
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Everything the checkup found, whatever happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// The node it ran on (`NODE_NAME`), when known.
    pub node_name: Option<String>,
    /// The requirements asked (empty for an invalid spec).
    pub requirements: Vec<Requirement>,
    /// The resources asked.
    pub resources: Vec<String>,
    /// `None` when the host was not evaluated.
    pub host: Option<HostFindings>,
    /// The Node's `status.allocatable` as last read; `None` when it was not read.
    pub allocatable: Option<BTreeMap<String, String>>,
    /// Reasons found by the edge, in order: invalid spec, wrong node, unreadable host or Node,
    /// the timeout.
    pub failures: Vec<String>,
    /// The timeout passed; its reason (in `failures`) names what was missing.
    pub timed_out: bool,
}

impl Findings {
    /// The requirements the host does not meet (none when it was not evaluated).
    pub fn unmet(&self) -> Vec<Requirement> {
        self.host.as_ref().map(|h| h.report.unmet(&self.requirements)).unwrap_or_default()
    }

    /// The resources asked that the Node does not offer (count below 1), with the quantity it
    /// shows (`None`: not listed). Empty when the Node was not read.
    pub fn missing_resources(&self) -> Vec<(String, Option<String>)> {
        let Some(alloc) = &self.allocatable else { return Vec::new() };
        self.resources
            .iter()
            .filter_map(|r| match alloc.get(r) {
                Some(q) if quantity_at_least_one(q) => None,
                q => Some((r.clone(), q.cloned())),
            })
            .collect()
    }

    fn node(&self) -> &str {
        self.node_name.as_deref().unwrap_or("?")
    }
}

/// Pure: `nvidia.com/T4 (not listed), intel.com/qat (0) in the status.allocatable of Node worker-0`.
pub fn missing_text(node: &str, missing: &[(String, Option<String>)]) -> String {
    let items: Vec<String> = missing
        .iter()
        .map(|(r, q)| match q {
            None => format!("{r} (not listed)"),
            Some(q) => format!("{r} ({q})"),
        })
        .collect();
    format!("{} in the status.allocatable of Node {node}", items.join(", "))
}

/// Pure: `timed out after 5m waiting for <what>`.
pub fn timeout_reason(timeout_text: &str, waiting_for: &str) -> String {
    format!("timed out after {timeout_text} waiting for {waiting_for}")
}

/// Pure: why the checkup failed, each reason once, in order: the edge's failures, each problem
/// of each unmet requirement (`iommu: no IOMMU units: ...`), each missing resource (unless the
/// timeout reason already names them). Empty: it succeeded.
pub fn failure_reasons(f: &Findings) -> Vec<String> {
    let mut out = f.failures.clone();
    if let Some(host) = &f.host {
        for r in f.unmet() {
            let problems = &host.report.verdict(r).problems;
            if problems.is_empty() {
                out.push(format!("{r}: not met"));
            }
            out.extend(problems.iter().map(|p| format!("{r}: {p}")));
        }
    }
    if !f.timed_out {
        for (r, q) in f.missing_resources() {
            let node = f.node();
            out.push(match q {
                None => format!("{r}: not in the status.allocatable of Node {node}"),
                Some(q) => format!("{r}: {q} in the status.allocatable of Node {node}, at least 1 needed"),
            });
        }
    }
    out
}

/// Pure: the `status.*` keys of the result (everything but `status.startTimestamp`).
pub fn result_data(f: &Findings, completed: Timestamp) -> BTreeMap<String, String> {
    let reasons = failure_reasons(f);
    let mut d = BTreeMap::new();
    let mut put = |k: String, v: String| {
        d.insert(k, v);
    };
    put(STATUS_SUCCEEDED.into(), reasons.is_empty().to_string());
    put(STATUS_FAILURE_REASON.into(), reasons.join("; "));
    put(STATUS_COMPLETION.into(), timestamp(completed));
    put(format!("{RESULT_PREFIX}nodeName"), f.node_name.clone().unwrap_or_default());
    if let Some(h) = &f.host {
        put(format!("{RESULT_PREFIX}kernel"), h.kernel.clone().unwrap_or_default());
        put(format!("{RESULT_PREFIX}iommuGroups"), h.iommu_groups.to_string());
        put(format!("{RESULT_PREFIX}vfioPciDevices"), h.vfio_pci_devices.to_string());
        put(format!("{RESULT_PREFIX}hugepagePools"), h.hugepage_pools());
        for &r in &f.requirements {
            let v = h.report.verdict(r);
            put(format!("{RESULT_PREFIX}{r}"), v.eligible.to_string());
            put(format!("{RESULT_PREFIX}{r}Facts"), v.facts.join("; "));
        }
    }
    if let Some(alloc) = &f.allocatable {
        for r in &f.resources {
            put(resource_key(r), alloc.get(r).cloned().unwrap_or_else(|| "0".to_owned()));
        }
    }
    d
}

/// Pure: the first patch: `status.startTimestamp`, and `null` (removal) for every other
/// `status.*` key a previous run left in `existing`.
pub fn start_patch(existing: &BTreeMap<String, String>, started: Timestamp) -> Value {
    let mut data = Map::new();
    for k in existing.keys().filter(|k| k.starts_with(STATUS_PREFIX)) {
        data.insert(k.clone(), Value::Null);
    }
    data.insert(STATUS_START.into(), Value::String(timestamp(started)));
    serde_json::json!({ "data": data })
}

// ---------------------------------------------------------------------------------------------
// The edge

/// What the checkup concluded (it is also in the ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckupOutcome {
    pub succeeded: bool,
    pub failure_reason: String,
    /// Every key of the result patch.
    pub data: BTreeMap<String, String>,
}

/// Why the checkup could not report: its ConfigMap could not be read or written. Everything
/// else (an invalid spec, an unfit node, the timeout) is a result, written into the ConfigMap.
#[derive(Debug, thiserror::Error)]
pub enum CheckupError {
    #[error("cannot read the checkup's ConfigMap (after {}): {source}", tries(*attempts))]
    Read {
        attempts: u32,
        #[source]
        source: ClusterError,
    },
    #[error("cannot write {what} into the checkup's ConfigMap (after {}): {source}", tries(*attempts))]
    Write {
        what: &'static str,
        attempts: u32,
        #[source]
        source: ClusterError,
    },
}

/// `1 attempt`, `5 attempts`.
fn tries(n: u32) -> String {
    if n == 1 { "1 attempt".to_owned() } else { format!("{n} attempts") }
}

/// An error that may pass: no answer, too many requests, or a server error.
fn retryable(e: &ClusterError) -> bool {
    match e.status() {
        None => true,
        Some(code) => code == 429 || code >= 500,
    }
}

/// Runs `op` up to [`ATTEMPTS`] times while it fails with a retryable error; the error is
/// returned with the number of attempts made.
async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, (ClusterError, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "checkup: retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err((e, attempt)),
        }
    }
}

/// The checkup's ConfigMap.
struct Target {
    api: Api<ConfigMap>,
    name: String,
    path: String,
    stats: ApiStats,
}

impl Target {
    /// One JSON merge patch of `data`, retried.
    async fn patch(&self, what: &'static str, body: &Value) -> Result<(), CheckupError> {
        with_retries(|| {
            let (api, name, body) = (self.api.clone(), self.name.clone(), body.clone());
            call(&self.stats, "PATCH", self.path.clone(), REQUEST_TIMEOUT, true, async move {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&body)).await
            })
        })
        .await
        .map(|_| ())
        .map_err(|(source, attempts)| CheckupError::Write { what, attempts, source })
    }
}

/// Runs the checkup whose ConfigMap is `namespace`/`name` on the node `node_name` (from
/// `NODE_NAME`), reading the host under `root`. `Ok` once the result is in the ConfigMap,
/// whatever it says.
pub async fn run_checkup(
    client: kube::Client,
    namespace: &str,
    name: &str,
    root: &HostRoot,
    node_name: Option<&str>,
) -> Result<CheckupOutcome, CheckupError> {
    let target = Target {
        api: Api::namespaced(client.clone(), namespace),
        name: name.to_owned(),
        path: format!("/api/v1/namespaces/{namespace}/configmaps/{name}"),
        stats: ApiStats::default(),
    };
    let cm = with_retries(|| {
        let (api, name) = (target.api.clone(), target.name.clone());
        call(&target.stats, "GET", target.path.clone(), REQUEST_TIMEOUT, false, async move { api.get(&name).await })
    })
    .await
    .map_err(|(source, attempts)| CheckupError::Read { attempts, source })?;
    let data = cm.data.unwrap_or_default();

    let started = Timestamp::now();
    let start = Instant::now();
    target.patch("status.startTimestamp", &start_patch(&data, started)).await?;
    tracing::info!(configmap = %target.path, "checkup started");

    let node_name = node_name.filter(|n| !n.is_empty());
    let mut findings = Findings { node_name: node_name.map(str::to_owned), ..Findings::default() };
    match parse_spec(&data) {
        Err(problems) => findings.failures.push(format!("invalid spec: {}", problems.join("; "))),
        Ok(spec) => {
            findings.requirements = spec.requirements.clone();
            findings.resources = spec.resources.clone();
            // A timeout beyond any real run (Go allows 290 years) must not overflow the clock.
            let deadline = start + spec.timeout.min(Duration::from_secs(10 * 365 * 24 * 3600));
            let mut waiting_for = String::new();
            let checked = tokio::time::timeout_at(
                deadline,
                check(&client, &spec, root, node_name, &target.stats, &mut findings, &mut waiting_for),
            )
            .await;
            if checked.is_err() {
                findings.timed_out = true;
                findings.failures.push(timeout_reason(&spec.timeout_text, &waiting_for));
            }
        }
    }

    let result = result_data(&findings, Timestamp::now());
    let body = serde_json::json!({ "data": result });
    target.patch("the result", &body).await?;
    let succeeded = result.get(STATUS_SUCCEEDED).is_some_and(|v| v == "true");
    let failure_reason = result.get(STATUS_FAILURE_REASON).cloned().unwrap_or_default();
    tracing::info!(
        configmap = %target.path,
        succeeded,
        requests = target.stats.requests(),
        failures = target.stats.failures(),
        "checkup result written"
    );
    Ok(CheckupOutcome { succeeded, failure_reason, data: result })
}

/// The checks, under the deadline: the node, the host, then the resources. Everything found is
/// recorded in `findings` as it comes, so a timeout loses nothing; `waiting_for` says what is
/// awaited at each moment.
async fn check(
    client: &kube::Client,
    spec: &CheckupSpec,
    root: &HostRoot,
    node_name: Option<&str>,
    stats: &ApiStats,
    findings: &mut Findings,
    waiting_for: &mut String,
) {
    if let Some(want) = &spec.node_name {
        match node_name {
            None => {
                findings.failures.push(format!(
                    "{PARAM_NODE_NAME} is {want} but this checkup cannot tell which node it runs on: NODE_NAME \
                     is not set (the Job sets it from spec.nodeName)"
                ));
                return;
            }
            Some(n) if n != want => {
                findings.failures.push(format!(
                    "wrong node: {PARAM_NODE_NAME} is {want} but this checkup ran on {n}: the Job's nodeSelector \
                     (kubernetes.io/hostname) must select {want}"
                ));
                return;
            }
            Some(_) => {}
        }
    }

    *waiting_for = format!("the host facts under {}", root.path().display());
    let r = root.clone();
    match tokio::task::spawn_blocking(move || read_host(&r)).await {
        Ok(Ok(host)) => findings.host = Some(host),
        Ok(Err(e)) => {
            findings.failures.push(e);
            return;
        }
        Err(e) => {
            findings.failures.push(format!("reading the host under {} failed: {e}", root.path().display()));
            return;
        }
    }

    if spec.resources.is_empty() {
        return;
    }
    let Some(node) = node_name else {
        findings.failures.push(format!(
            "{PARAM_RESOURCES} asks for resources but this checkup cannot tell which Node to read: NODE_NAME is \
             not set (the Job sets it from spec.nodeName)"
        ));
        return;
    };
    // With a requirement already unmet the checkup has failed: read the Node once, for the
    // record, and do not wait.
    let wait = findings.unmet().is_empty();
    let api: Api<Node> = Api::all(client.clone());
    let path = format!("/api/v1/nodes/{node}");
    *waiting_for = format!("Node {node} to be read");
    loop {
        let (a, n) = (api.clone(), node.to_owned());
        match call(stats, "GET", path.clone(), REQUEST_TIMEOUT, false, async move { a.get(&n).await }).await {
            Ok(n) => {
                let alloc: BTreeMap<String, String> = n
                    .status
                    .and_then(|s| s.allocatable)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, q)| (k, q.0))
                    .collect();
                findings.allocatable = Some(alloc);
                let missing = findings.missing_resources();
                if missing.is_empty() || !wait {
                    return;
                }
                *waiting_for = missing_text(node, &missing);
                tracing::info!(waiting_for = %waiting_for, "checkup: waiting");
            }
            Err(e) if !retryable(&e) || !wait => {
                findings.failures.push(format!("cannot read the allocatable resources of Node {node}: {e}"));
                return;
            }
            Err(e) => {
                let missing = findings.missing_resources();
                *waiting_for = if missing.is_empty() {
                    format!("Node {node} to be read (last error: {e})")
                } else {
                    format!("{} (last error: {e})", missing_text(node, &missing))
                };
                tracing::warn!(error = %e, "checkup: reading the Node");
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads and judges the host; the error is the failure reason.
fn read_host(root: &HostRoot) -> Result<HostFindings, String> {
    let hint = |what: &str, e: &dyn std::fmt::Display| {
        format!("cannot read {what} under host root {} (is --host-root the host's /?): {e}", root.path().display())
    };
    let inv = discover(root).map_err(|e| hint("the PCI devices", &e))?;
    let facts = read_system(root).map_err(|e| hint("the host facts", &e))?;
    Ok(HostFindings::new(&facts, &inv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eligibility::Verdict;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn go_durations_parse_like_go() {
        let ok = |s: &str| parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("30s"), secs(30.0));
        assert_eq!(ok("5m"), secs(300.0));
        assert_eq!(ok("1h30m"), secs(5400.0));
        assert_eq!(ok("1h30m15s"), secs(5415.0));
        assert_eq!(ok("1.5h"), secs(5400.0));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2.s"), secs(2.0));
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("10μs"), Duration::from_micros(10));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("1.0000000005s"), secs(1.0), "finer than a nanosecond is dropped");
        assert_eq!(ok("+2m"), secs(120.0));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("2562047h"), secs(2562047.0 * 3600.0), "Go's largest whole number of hours");
    }

    #[test]
    fn go_duration_errors_say_what_is_wrong() {
        let err = |s: &str| parse_go_duration(s).expect_err(s);
        assert!(err("").contains("is not a Go duration"), "{}", err(""));
        assert!(err("5").contains("missing unit after 5"), "{}", err("5"));
        assert!(err("1h30").contains("missing unit after 30"), "{}", err("1h30"));
        assert!(err("1.5").contains("missing unit after 1.5"), "{}", err("1.5"));
        assert!(err("5x").contains("unknown unit \"x\""), "{}", err("5x"));
        assert!(err("5 m").contains("unknown unit \" m\""), "{}", err("5 m"));
        assert!(err("5M").contains("unknown unit \"M\""), "Go units are lower case: {}", err("5M"));
        assert!(err("m").contains("is not a Go duration"), "{}", err("m"));
        assert!(err(".s").contains("is not a Go duration"), "{}", err(".s"));
        assert!(err("-").contains("is not a Go duration"), "{}", err("-"));
        assert!(err("-5m").contains("negative"), "{}", err("-5m"));
        assert!(err("99999999999999999999999999999999999999999h").contains("too long"));
        assert!(err("5m!").contains("unknown unit \"m!\""), "{}", err("5m!"));
    }

    #[test]
    fn the_spec_defaults_and_parses() {
        let s = parse_spec(&data(&[("spec.timeout", "5m")])).expect("spec");
        assert_eq!(s.timeout, secs(300.0));
        assert_eq!(s.timeout_text, "5m");
        assert_eq!(s.requirements, DEFAULT_REQUIREMENTS);
        assert_eq!((s.node_name, s.resources), (None, Vec::<String>::new()));

        let s = parse_spec(&data(&[
            ("spec.timeout", " 1h30m "),
            ("spec.param.nodeName", "worker-0"),
            ("spec.param.requirements", "Kata, hugepages,,kata,vfio,"),
            (
                "spec.param.resources",
                "nvidia.com/TU104GL_Tesla_T4, devices.kubevirt.io/kvm ,nvidia.com/TU104GL_Tesla_T4",
            ),
            // The framework's and other keys are not the checkup's business.
            ("status.succeeded", "true"),
            ("spec.image", "whatever"),
        ]))
        .expect("spec");
        assert_eq!(s.timeout_text, "1h30m");
        assert_eq!(s.node_name.as_deref(), Some("worker-0"));
        assert_eq!(s.requirements, [Requirement::Kata, Requirement::Hugepages, Requirement::Vfio]);
        assert_eq!(s.resources, ["nvidia.com/TU104GL_Tesla_T4", "devices.kubevirt.io/kvm"]);

        let s = parse_spec(&data(&[("spec.timeout", "30s"), ("spec.param.nodeName", " ")])).expect("spec");
        assert_eq!(s.node_name, None, "an empty nodeName is no nodeName");
    }

    #[test]
    fn every_spec_problem_is_listed() {
        let problems = parse_spec(&data(&[
            ("spec.param.requirements", "kvm,gpu"),
            ("spec.param.nodename", "worker-0"),
            ("spec.param.extra", "x"),
            ("spec.param.resources", "nvidia.com/ok,Bad_Domain.com/x,-bad"),
        ]))
        .expect_err("invalid");
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(problems[0].starts_with("spec.timeout is missing"), "{problems:#?}");
        assert_eq!(
            problems[1],
            "unknown parameter spec.param.extra (known: spec.param.nodeName, spec.param.requirements, spec.param.resources)"
        );
        assert!(problems[2].starts_with("unknown parameter spec.param.nodename"), "{problems:#?}");
        assert!(
            problems[3].starts_with("spec.param.requirements: unknown requirement \"gpu\": valid requirements are"),
            "{problems:#?}"
        );
        assert!(problems[4].contains("\"Bad_Domain.com\" is not a lower-case DNS domain"), "{problems:#?}");
        assert!(problems[5].contains("\"-bad\" is not a resource name"), "{problems:#?}");

        let e = parse_spec(&data(&[("spec.timeout", "5")])).expect_err("no unit");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("spec.timeout: \"5\": missing unit"), "{e:?}");
        let e = parse_spec(&data(&[("spec.timeout", "0s")])).expect_err("zero");
        assert!(e[0].contains("is zero"), "{e:?}");
        let e = parse_spec(&data(&[("spec.timeout", "5m"), ("spec.param.requirements", " , ")])).expect_err("empty");
        assert!(
            e[0].starts_with("spec.param.requirements is empty") && e[0].contains("kvm,iommu,passthrough"),
            "{e:?}"
        );
    }

    #[test]
    fn resource_names_and_their_keys() {
        for ok in ["nvidia.com/TU104GL_Tesla_T4", "devices.kubevirt.io/kvm", "cpu", "hugepages-1Gi", "a.b-c.io/x.y-z"] {
            assert_eq!(check_resource_name(ok), Ok(()), "{ok}");
            assert!(is_configmap_key(&resource_key(ok)), "{ok}");
        }
        for bad in ["", "/x", "x/", "a/b/c", "Nvidia.com/x", "nvidia..com/x", "-a.com/x", "x/_y", "x/y z", "x/é"] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
        assert!(check_resource_name(&format!("x.io/{}", "a".repeat(64))).is_err());
        assert_eq!(
            resource_key("nvidia.com/TU104GL_Tesla_T4"),
            "status.result.allocatable.nvidia.com_TU104GL_Tesla_T4"
        );

        // A name whose key would be too long for a ConfigMap is refused in the spec.
        let long =
            format!("{}.io/x", "a".repeat(62) + "." + &"b".repeat(62) + "." + &"c".repeat(62) + "." + &"d".repeat(40));
        assert_eq!(check_resource_name(&long), Ok(()));
        let e = parse_spec(&data(&[("spec.timeout", "5m"), ("spec.param.resources", &long)])).expect_err("long");
        assert!(e[0].contains("too long for its result key"), "{e:?}");
    }

    #[test]
    fn configmap_keys() {
        for ok in ["status.result.kvm", "a", "-_.", "status.result.allocatable.nvidia.com_T4"] {
            assert!(is_configmap_key(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "ä", &"a".repeat(254)] {
            assert!(!is_configmap_key(bad), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        for yes in ["1", "4", "110", "1k", "2Gi", "1.5", "1e3", "1000m", " 2 "] {
            assert!(quantity_at_least_one(yes), "{yes}");
        }
        for no in ["0", "500m", "0.5", "", "x", "1x", "-1", "0Gi", "1e-3"] {
            assert!(!quantity_at_least_one(no), "{no}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_seconds() {
        let t: Timestamp = "2026-11-22T10:00:07.123456789Z".parse().expect("time");
        assert_eq!(timestamp(t), "2026-11-22T10:00:07Z");
        let t: Timestamp = "2026-11-22T11:00:00+01:00".parse().expect("time");
        assert_eq!(timestamp(t), "2026-11-22T10:00:00Z");
        assert_eq!(hugepage_size_name(2048), "2Mi");
        assert_eq!(hugepage_size_name(ONE_GIB_KB), "1Gi");
        assert_eq!(hugepage_size_name(16 * ONE_GIB_KB), "16Gi");
        assert_eq!(hugepage_size_name(64), "64Ki");
    }

    fn verdict(eligible: bool, facts: &[&str], problems: &[&str]) -> Verdict {
        Verdict {
            eligible,
            facts: facts.iter().map(|s| (*s).to_owned()).collect(),
            problems: problems.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Every requirement asked, kvm and iommu unmet, two resources on a Node that offers one.
    fn findings() -> Findings {
        let mut report = EligibilityReport {
            iommu: verdict(
                false,
                &["no IOMMU units in sys/class/iommu", "no IOMMU groups"],
                &["no IOMMU units: fix it"],
            ),
            virtualization: verdict(false, &["svm"], &["/dev/kvm is missing", "kvm_amd is not loaded"]),
            ..EligibilityReport::default()
        };
        for v in [&mut report.vfio, &mut report.hugepages, &mut report.kata, &mut report.passthrough] {
            *v = verdict(true, &["fine"], &[]);
        }
        Findings {
            node_name: Some("worker-0".into()),
            requirements: Requirement::ALL.to_vec(),
            resources: vec!["nvidia.com/TU104GL_Tesla_T4".into(), "intel.com/qat_vf".into()],
            host: Some(HostFindings {
                kernel: Some("5.14.0-427.el9.x86_64".into()),
                iommu_groups: 0,
                vfio_pci_devices: 2,
                hugepages: vec![(2048, Some(512)), (ONE_GIB_KB, None)],
                report,
            }),
            allocatable: Some(BTreeMap::from([
                ("nvidia.com/TU104GL_Tesla_T4".to_owned(), "2".to_owned()),
                ("cpu".to_owned(), "8".to_owned()),
            ])),
            failures: vec![],
            timed_out: false,
        }
    }

    #[test]
    fn the_result_names_every_verdict_fact_and_resource_in_valid_keys() {
        let t: Timestamp = "2026-11-22T10:00:07Z".parse().expect("time");
        let d = result_data(&findings(), t);
        for k in d.keys() {
            assert!(is_configmap_key(k), "{k} is not a valid ConfigMap key");
            assert!(k.starts_with("status."), "{k}");
        }
        // 4 fixed + nodeName + 4 host keys + 6 requirements x 2 + 2 resources: no key collides.
        assert_eq!(d.len(), 3 + 1 + 4 + 12 + 2, "{d:#?}");
        let get = |k: &str| d.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in {d:#?}"));
        assert_eq!(get("status.succeeded"), "false");
        assert_eq!(get("status.completionTimestamp"), "2026-11-22T10:00:07Z");
        assert_eq!(get("status.result.nodeName"), "worker-0");
        assert_eq!(get("status.result.kernel"), "5.14.0-427.el9.x86_64");
        assert_eq!(get("status.result.iommuGroups"), "0");
        assert_eq!(get("status.result.vfioPciDevices"), "2");
        assert_eq!(get("status.result.hugepagePools"), "2Mi:512,1Gi:?");
        assert_eq!(get("status.result.iommu"), "false");
        assert_eq!(get("status.result.iommuFacts"), "no IOMMU units in sys/class/iommu; no IOMMU groups");
        assert_eq!(get("status.result.kvm"), "false");
        assert_eq!(get("status.result.kvmFacts"), "svm");
        assert_eq!(get("status.result.hugepages"), "true");
        assert_eq!(get("status.result.hugepagesFacts"), "fine");
        assert_eq!(get("status.result.allocatable.nvidia.com_TU104GL_Tesla_T4"), "2");
        assert_eq!(get("status.result.allocatable.intel.com_qat_vf"), "0");
        // Unmet requirements in the order asked, each problem named by its requirement; then the
        // missing resource.
        assert_eq!(
            get("status.failureReason"),
            "iommu: no IOMMU units: fix it; kvm: /dev/kvm is missing; kvm: kvm_amd is not loaded; \
             intel.com/qat_vf: not in the status.allocatable of Node worker-0"
        );
    }

    #[test]
    fn success_has_an_empty_failure_reason() {
        let mut f = findings();
        f.requirements = vec![Requirement::Kata, Requirement::Passthrough];
        f.resources.truncate(1);
        let d = result_data(&f, Timestamp::UNIX_EPOCH);
        assert_eq!(d["status.succeeded"], "true");
        assert_eq!(d["status.failureReason"], "");
        assert!(!d.contains_key("status.result.kvm"), "only the requirements asked are reported");
        assert_eq!(d["status.completionTimestamp"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn failures_from_the_edge_come_first_and_a_timeout_is_not_repeated() {
        let mut f = findings();
        f.requirements = vec![Requirement::Kata];
        f.timed_out = true;
        f.failures.push(timeout_reason(
            "2s",
            &missing_text("worker-0", &[("intel.com/qat_vf".into(), None), ("x.io/y".into(), Some("0".into()))]),
        ));
        let d = result_data(&f, Timestamp::UNIX_EPOCH);
        assert_eq!(
            d["status.failureReason"],
            "timed out after 2s waiting for intel.com/qat_vf (not listed), x.io/y (0) in the status.allocatable \
             of Node worker-0"
        );
        assert_eq!(d["status.succeeded"], "false");

        // An invalid spec: no host, no verdicts, no resources.
        let f = Findings {
            node_name: None,
            failures: vec!["invalid spec: spec.timeout is missing".into()],
            ..Findings::default()
        };
        let d = result_data(&f, Timestamp::UNIX_EPOCH);
        assert_eq!(d["status.failureReason"], "invalid spec: spec.timeout is missing");
        assert_eq!(d["status.result.nodeName"], "");
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn the_start_patch_clears_a_previous_run() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().expect("time");
        let old = data(&[
            ("spec.timeout", "5m"),
            ("status.succeeded", "true"),
            ("status.result.kvm", "true"),
            ("status.startTimestamp", "2026-11-21T10:00:00Z"),
        ]);
        assert_eq!(
            start_patch(&old, t),
            serde_json::json!({"data": {
                "status.startTimestamp": "2026-11-22T10:00:00Z",
                "status.succeeded": null,
                "status.result.kvm": null,
            }})
        );
    }

    #[test]
    fn host_findings_count_groups_vfio_devices_and_pools() {
        use crate::host::system::testing::host;
        let t = host("intel");
        let facts = read_system(&t.root()).expect("read");
        let mut inv = crate::eligibility::testing::inventory();
        inv.devices = vec![crate::model::pci::PciDevice {
            address: crate::eligibility::testing::addr("0000:3b:00.0"),
            driver: Some("vfio-pci".into()),
            ..Default::default()
        }];
        let h = HostFindings::new(&facts, &inv);
        assert_eq!(h.vfio_pci_devices, 1);
        assert_eq!(h.iommu_groups, facts.iommu.group_count);
        assert!(h.hugepage_pools().starts_with("2Mi:512"), "{}", h.hugepage_pools());
        assert_eq!(h.kernel, facts.kernel.release);
    }
}
