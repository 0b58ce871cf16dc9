//! NodePrepareResources and NodeUnprepareResources on the host, and the reconciliation at start.
//!
//! Prepare, for one claim's allocation results for this driver:
//! 1. an already prepared claim whose devices are still usable is answered from the checkpoint
//!    (the kubelet repeats Prepare after it restarts);
//! 2. each allocated device must be one this node offers now ([`super::devices`]) and held by no
//!    other prepared claim;
//! 3. its whole IOMMU group is bound to vfio-pci through the bind plan
//!    ([`crate::bind::plan_claims`]), with every refusal the config's bind has: a device the host
//!    uses (a mounted disk, an interface with an address), one a pod holds through a device
//!    plugin, a bridge, the boot VGA device. A refusal is the claim's error, word for word;
//! 4. the devices are read again as a VM will open them, and handed out through
//!    [`crate::grant`], the same core the device plugins' Allocate uses: a CDI spec per claim
//!    (`<cdiDir>/<driver>-claim-<uid>.json`, kind `<driver>/pci`, one CDI device per DRA device
//!    with `/dev/vfio/vfio`, `/dev/vfio/<group>` or the iommufd nodes, and the `PCI_RESOURCE_*`
//!    / `PCIDEVICE_*` variables);
//! 5. the KEP-5304 device metadata is written in the format of upstream's
//!    `k8s.io/dynamic-resource-allocation/kubeletplugin` helper: a JSON stream (the
//!    `metadata.resource.k8s.io` `DeviceMetadata` object in v1beta1, then v1alpha1) in
//!    `<pluginDataDir>/dra-device-metadata/<ns>_<claim>/<request>/metadata.json`, bind-mounted by
//!    a CDI device (`<driver>/metadata=<uid>_<request>`) at
//!    `/var/run/kubernetes.io/dra-device-attributes/{resourceclaims/<claim>|resourceclaimtemplates/<podClaim>}/<request>/<driver>-metadata.json`,
//!    where KubeVirt 1.8+ reads `resource.kubernetes.io/pciBusID`;
//! 6. the claim is checkpointed ([`super::checkpoint`]).
//!
//! Unprepare gives `atRest: host` devices back the drivers their functions had (the bind
//! records), removes the claim's files and its record; a claim never prepared is `Ok`.
//!
//! Everything runs under the bind state's lock, so a Prepare, an Unprepare, the config's bind
//! and `nodeprep bind`/`unbind` never interleave their writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::checkpoint::{Checkpoint, ClaimRecord, DeviceRecord, boot_id};
use super::devices::{AttrValue, Context, DraDevice, dra_devices};
use super::{ClaimRef, PreparedDevice};
use crate::bind::{Applier, Kernel, State, plan::Action, plan_claims, plan_unbind};
use crate::config::{AtRest, BindPolicy, Claim, Config, Entry, EntryName, Front, Selector};
use crate::grant::{self, VfioDevice};
use crate::host::{self, HostRoot};
use crate::model::{PciAddress, PciInventory};

/// The annotation naming a template claim's pod-local name.
pub const POD_CLAIM_NAME: &str = "resource.kubernetes.io/pod-claim-name";
/// Inside the container.
pub const METADATA_CONTAINER_DIR: &str = "/var/run/kubernetes.io/dra-device-attributes";
/// The metadata API versions written, newest first.
pub const METADATA_VERSIONS: [&str; 2] = ["metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1"];

/// Where Prepare writes, as the host sees it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub driver: String,
    /// The pool: the node's name.
    pub node: String,
    /// The CDI spec directory (`/var/run/cdi`).
    pub cdi_dir: String,
    /// The plugin's data directory (`/var/lib/kubelet/plugins/<driver>`): the metadata files.
    pub data_dir: String,
    /// The kubelet's device-plugin directory: its checkpoint says which devices pods hold
    /// through device plugins.
    pub device_plugin_dir: PathBuf,
}

/// One allocated device of a claim, for this driver (`status.allocation.devices.results[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationResult {
    pub request: String,
    pub pool: String,
    pub device: String,
}

/// A claim as Prepare needs it, read from the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAllocation {
    pub claim: ClaimRef,
    pub pod_claim_name: Option<String>,
    /// This driver's results only.
    pub results: Vec<AllocationResult>,
}

/// Pure: this driver's results from a ResourceClaim object (JSON), with the claim's identity.
/// The error says what is missing.
pub fn claim_allocation(claim: &Value, driver: &str) -> Result<ClaimAllocation, String> {
    let meta = &claim["metadata"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let claim_ref = ClaimRef {
        namespace: text(&meta["namespace"]).unwrap_or_default(),
        name: text(&meta["name"]).ok_or("the ResourceClaim has no metadata.name")?,
        uid: text(&meta["uid"]).ok_or("the ResourceClaim has no metadata.uid")?,
    };
    // They name files and directories: nothing but what the API server itself allows.
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !s.starts_with('.')
    };
    for (what, v) in [("namespace", &claim_ref.namespace), ("name", &claim_ref.name), ("uid", &claim_ref.uid)] {
        if !safe(v) {
            return Err(format!("the ResourceClaim's {what} {v:?} is not a DNS name or UID"));
        }
    }
    let results = claim["status"]["allocation"]["devices"]["results"].as_array().ok_or_else(|| {
        format!("ResourceClaim {} is not allocated (no status.allocation.devices.results)", claim_ref)
    })?;
    let mut out = Vec::new();
    for r in results.iter().filter(|r| r["driver"].as_str() == Some(driver)) {
        match (text(&r["request"]), text(&r["pool"]), text(&r["device"])) {
            (Some(request), Some(pool), Some(device)) if request.split('/').all(safe) => {
                out.push(AllocationResult { request, pool, device })
            }
            (Some(request), Some(_), Some(_)) => {
                return Err(format!("ResourceClaim {claim_ref}: request name {request:?} is not a DNS label"));
            }
            _ => return Err(format!("ResourceClaim {claim_ref}: a result for {driver} lacks request, pool or device")),
        }
    }
    // A template claim's name in the pod: a directory of the container's metadata path.
    let pod_claim_name = text(&meta["annotations"][POD_CLAIM_NAME]);
    if let Some(p) = pod_claim_name.as_deref().filter(|p| !p.is_empty() && !safe(p)) {
        return Err(format!("ResourceClaim {claim_ref}: its {POD_CLAIM_NAME} annotation {p:?} is not a DNS label"));
    }
    Ok(ClaimAllocation { claim: claim_ref, pod_claim_name, results: out })
}

/// Pure: a request name without its subrequest (`gpu/high-memory` → `gpu`), as the metadata
/// path uses it.
pub fn base_request(r: &str) -> &str {
    r.split('/').next().unwrap_or(r)
}

/// The CDI kind of the device edits.
pub fn cdi_kind(driver: &str) -> String {
    format!("{driver}/pci")
}

/// Pure: a CDI device name for a claim's device: `<uid>-<device>`.
pub fn cdi_device_name(uid: &str, device: &str) -> String {
    format!("{uid}-{device}")
}

fn claim_spec_path(s: &Settings, uid: &str) -> String {
    format!("{}/{}-claim-{uid}.json", s.cdi_dir.trim_end_matches('/'), s.driver.replace('.', "-"))
}

fn metadata_spec_path(s: &Settings, uid: &str, request: &str) -> String {
    format!("{}/{}_metadata_{uid}_{request}.json", s.cdi_dir.trim_end_matches('/'), s.driver)
}

fn metadata_claim_dir(s: &Settings, c: &ClaimRef) -> String {
    format!("{}/dra-device-metadata/{}_{}", s.data_dir.trim_end_matches('/'), c.namespace, c.name)
}

/// Pure: where the container sees a request's metadata file.
pub fn metadata_container_path(driver: &str, claim: &ClaimRef, pod_claim_name: Option<&str>, request: &str) -> String {
    match pod_claim_name.filter(|n| !n.is_empty()) {
        Some(p) => format!("{METADATA_CONTAINER_DIR}/resourceclaimtemplates/{p}/{request}/{driver}-metadata.json"),
        None => format!("{METADATA_CONTAINER_DIR}/resourceclaims/{}/{request}/{driver}-metadata.json", claim.name),
    }
}

fn attribute_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Int(i) => json!({ "int": i }),
        AttrValue::Bool(b) => json!({ "bool": b }),
        AttrValue::String(s) => json!({ "string": s }),
        AttrValue::Version(s) => json!({ "version": s }),
    }
}

/// Pure: the metadata file's contents for one request: the `DeviceMetadata` object once per
/// version, newest first, one JSON document per line.
pub fn metadata_stream(driver: &str, alloc: &ClaimAllocation, request: &str, devices: &[(&str, &DraDevice)]) -> String {
    let devs: Vec<Value> = devices
        .iter()
        .map(|(pool, d)| {
            let attrs: serde_json::Map<String, Value> =
                d.attributes.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect();
            json!({ "driver": driver, "pool": pool, "name": d.name, "attributes": attrs })
        })
        .collect();
    let mut out = String::new();
    for version in METADATA_VERSIONS {
        let mut obj = json!({
            "kind": "DeviceMetadata",
            "apiVersion": version,
            "metadata": {
                "name": alloc.claim.name, "namespace": alloc.claim.namespace,
                "uid": alloc.claim.uid, "generation": 1,
            },
            "requests": [{ "name": request, "devices": devs }],
        });
        if let Some(p) = &alloc.pod_claim_name {
            obj["podClaimName"] = json!(p);
        }
        out.push_str(&obj.to_string());
        out.push('\n');
    }
    out
}

fn write_file(root: &HostRoot, host_path: &str, text: &str) -> Result<(), String> {
    let path = root.resolve(host_path);
    crate::host::root::write_atomic(&path, text.as_bytes()).map_err(|(op, e)| format!("{op} {}: {e}", path.display()))
}

fn remove_path(root: &HostRoot, host_path: &str) -> Result<(), String> {
    let path = root.resolve(host_path);
    let r = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", path.display())),
        _ => Ok(()),
    }
}

/// The DRA devices offered now, with the inventory they were computed from.
fn offered(
    root: &HostRoot,
    config: &Config,
    state: &State,
    prepared: &BTreeSet<PciAddress>,
) -> Result<(PciInventory, Vec<DraDevice>), String> {
    let inv = host::pci::discover(root).map_err(|e| format!("cannot discover PCI devices: {e}"))?;
    let original = state.original_drivers();
    let claims = config
        .claims_with(&inv, &original)
        .map_err(|p| format!("the config is refused on this host: {}", p.join("; ")))?;
    let roots = read_pcie_roots(root, config, &claims);
    let cx = Context { original: Some(&original), pcie_roots: Some(&roots), prepared: Some(prepared) };
    let devices = dra_devices(&inv, config, &claims, &cx);
    Ok((inv, devices))
}

/// Reads the PCIe root of each function DRA offers from its `sys/bus/pci/devices` link (the edge
/// of [`super::devices::pcie_root_of`]); only those, so a rescan of a big host reads a few links.
pub fn read_pcie_roots(root: &HostRoot, config: &Config, claims: &[Claim]) -> BTreeMap<PciAddress, String> {
    claims
        .iter()
        .filter(|c| matches!(config.front(c), Front::Dra(_)))
        .filter_map(|c| {
            let link = std::fs::read_link(root.join(format!("sys/bus/pci/devices/{}", c.address))).ok()?;
            Some((c.address, super::devices::pcie_root_of(&link.to_string_lossy())?))
        })
        .collect()
}

fn prepared_functions(cp: &Checkpoint) -> BTreeSet<PciAddress> {
    cp.claims.values().flat_map(|c| c.devices.iter().flat_map(|d| d.functions.iter().copied())).collect()
}

/// Reads every function of a prepared device as a VM will open it; the error names the first
/// that is not usable.
fn read_functions(root: &HostRoot, functions: &[PciAddress]) -> Result<(grant::VfioHost, Vec<VfioDevice>), String> {
    let host = host::vfio::read_vfio_host(root);
    let devs = functions
        .iter()
        .map(|a| host::vfio::read_vfio_device(root, &host, *a).map_err(|e| format!("{a}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((host, devs))
}

/// Prepares one claim (see the module docs). The error is what the pod shows.
pub fn prepare<K: Kernel>(
    root: &HostRoot,
    s: &Settings,
    config: &Config,
    alloc: &ClaimAllocation,
    kernel: &mut K,
) -> Result<Vec<PreparedDevice>, String> {
    let uid = alloc.claim.uid.as_str();
    let mut state = State::lock(root).map_err(|e| e.to_string())?;
    let mut cp = Checkpoint::load(root).map_err(|e| e.to_string())?;
    if let Some(rec) = cp.claims.get(uid) {
        let usable = rec.devices.iter().all(|d| read_functions(root, &d.functions).is_ok());
        if usable && rec.files.iter().all(|f| root.resolve(f).exists()) {
            return Ok(rec.devices.iter().map(|d| d.prepared.clone()).collect());
        }
        tracing::warn!(claim = %alloc.claim, "prepared claim no longer usable; preparing it again");
    }
    if alloc.results.is_empty() {
        return Err(format!("claim {} has no device allocated for driver {}", alloc.claim, s.driver));
    }
    // Other claims' functions: this claim's own may need binding again.
    let held: BTreeSet<PciAddress> = cp
        .claims
        .iter()
        .filter(|(u, _)| u.as_str() != uid)
        .flat_map(|(_, c)| c.devices.iter().flat_map(|d| d.functions.iter().copied()))
        .collect();
    let (mut inv, offered) = offered(root, config, &state, &held)?;
    let by_name = super::devices::by_name(&offered);

    // The devices, each once, with the requests it serves.
    let mut wanted: BTreeMap<&str, (&DraDevice, Vec<String>)> = BTreeMap::new();
    for r in &alloc.results {
        if r.pool != s.node {
            return Err(format!("device {} is in pool {}, not this node's pool {}", r.device, r.pool, s.node));
        }
        let Some(d) = by_name.get(r.device.as_str()) else {
            return Err(format!(
                "device {} is not offered by {} on node {} (the config no longer selects it, or it is gone)",
                r.device, s.driver, s.node
            ));
        };
        wanted.entry(d.name.as_str()).or_insert((d, Vec::new())).1.push(r.request.clone());
    }
    for (d, _) in wanted.values() {
        for f in &d.functions {
            if let Some(other) = cp.holder(f, uid) {
                return Err(format!("device {} ({f}) is held by claim {}", d.name, other.claim));
            }
        }
        if !d.healthy {
            return Err(format!("device {} cannot be used: {}", d.name, d.problem.as_deref().unwrap_or("unhealthy")));
        }
    }

    // The bind plan, as for the config's own entries: one entry per device, its primary
    // selected, its group's other endpoints companions.
    let entries: Vec<Entry> = wanted
        .values()
        .map(|(d, _)| Entry {
            name: EntryName(format!("claim {}", alloc.claim)),
            selector: Selector::default(),
            resource_name: Some(d.resource_name.clone()),
            bind: BindPolicy::VfioPci,
            external_resource_provider: false,
            front: Front::Dra(d.at_rest),
        })
        .collect();
    let claims: Vec<Claim> = wanted
        .values()
        .enumerate()
        .map(|(i, (d, _))| Claim { address: d.primary, entry: i, resource_name: d.resource_name.clone() })
        .collect();
    let plan_config = Config { entries, ..Config::default() };
    let allocations = host::kubelet::read_allocations(&s.device_plugin_dir)
        .map_err(|e| format!("cannot tell which devices pods hold through device plugins: {e}"))?;
    let plan = plan_claims(root, &mut inv, &plan_config, &claims, &allocations);
    if let Some(r) = plan.refused().next() {
        let reason = match &r.action {
            Action::Refused { reason } => reason.as_str(),
            _ => "refused",
        };
        let name = wanted.values().find(|(d, _)| d.functions.contains(&r.address)).map(|(d, _)| d.name.as_str());
        return Err(format!("nodeprep refuses to bind device {} ({}): {reason}", name.unwrap_or("?"), r.address));
    }
    let outcomes = Applier::new(root, kernel).apply_bind(&plan, &mut state).map_err(|e| e.to_string())?;
    if let Some(o) = outcomes.iter().find(|o| o.is_failure()) {
        return Err(format!("binding {} to vfio-pci failed: {}", o.address, o.detail.as_deref().unwrap_or(&o.outcome)));
    }

    // Hand out, through the one allocation core.
    let kind = cdi_kind(&s.driver);
    let mut read: BTreeMap<&str, (grant::VfioHost, Vec<VfioDevice>)> = BTreeMap::new();
    for (name, (d, _)) in &wanted {
        read.insert(name, read_functions(root, &d.functions)?);
    }
    let mut by_resource: BTreeMap<&str, Vec<VfioDevice>> = BTreeMap::new();
    for (name, (d, _)) in &wanted {
        if let Some((_, devs)) = read.get(name) {
            by_resource.entry(d.resource_name.as_str()).or_default().extend(devs.iter().cloned());
        }
    }
    let mut cdi_devices = Vec::new();
    for (name, (d, _)) in &wanted {
        let Some((host, devs)) = read.get(name) else { continue };
        let env = grant::env(&d.resource_name, by_resource.get(d.resource_name.as_str()).map_or(&[][..], |v| v));
        let edits = grant::cdi_edits(&grant::device_nodes(devs, host), &env);
        cdi_devices.push(json!({ "name": cdi_device_name(uid, name), "containerEdits": edits }));
    }
    let spec = json!({ "cdiVersion": grant::CDI_VERSION, "kind": kind, "devices": cdi_devices });
    let mut files = vec![claim_spec_path(s, uid)];
    write_file(root, &files[0], &spec.to_string())?;

    // KEP-5304 metadata, per request.
    let mut requests: BTreeMap<String, Vec<(&str, &DraDevice)>> = BTreeMap::new();
    for (d, reqs) in wanted.values() {
        for r in reqs {
            requests.entry(base_request(r).to_owned()).or_default().push((s.node.as_str(), d));
        }
    }
    files.push(metadata_claim_dir(s, &alloc.claim));
    let mut metadata_ids: BTreeMap<String, String> = BTreeMap::new();
    for (req, devs) in &requests {
        let file = format!("{}/{req}/metadata.json", metadata_claim_dir(s, &alloc.claim));
        write_file(root, &file, &metadata_stream(&s.driver, alloc, req, devs))?;
        let dev_name = format!("{uid}_{req}");
        let mount = grant::Mount {
            host_path: file.clone(),
            container_path: metadata_container_path(&s.driver, &alloc.claim, alloc.pod_claim_name.as_deref(), req),
            options: vec!["ro".into(), "bind".into()],
        };
        let edits = grant::ContainerEdits { mounts: vec![mount], ..Default::default() };
        let spec = json!({
            "cdiVersion": grant::CDI_VERSION,
            "kind": format!("{}/metadata", s.driver),
            "devices": [{ "name": dev_name, "containerEdits": edits }],
        });
        let path = metadata_spec_path(s, uid, req);
        write_file(root, &path, &spec.to_string())?;
        files.push(path);
        metadata_ids.insert(req.clone(), format!("{}/metadata={dev_name}", s.driver));
    }

    let mut records = Vec::new();
    for (name, (d, reqs)) in &wanted {
        let mut cdi_ids = vec![format!("{kind}={}", cdi_device_name(uid, name))];
        let mut metas: Vec<&String> = reqs.iter().filter_map(|r| metadata_ids.get(base_request(r))).collect();
        metas.dedup();
        cdi_ids.extend(metas.into_iter().cloned());
        let original_drivers = d
            .functions
            .iter()
            .map(|f| {
                let was = state.devices.get(f).map(|r| r.original_driver.clone());
                (*f, was.unwrap_or_else(|| inv.device(f).and_then(|x| x.driver.clone())))
            })
            .collect();
        records.push(DeviceRecord {
            prepared: PreparedDevice {
                requests: reqs.clone(),
                pool: s.node.clone(),
                device: (*name).to_owned(),
                cdi_ids,
            },
            functions: d.functions.clone(),
            at_rest: d.at_rest,
            original_drivers,
        });
    }
    let prepared = records.iter().map(|r| r.prepared.clone()).collect();
    cp.claims.insert(
        uid.to_owned(),
        ClaimRecord {
            claim: alloc.claim.clone(),
            pod_claim_name: alloc.pod_claim_name.clone(),
            boot_id: boot_id(root),
            devices: records,
            files,
        },
    );
    cp.save(root).map_err(|e| e.to_string())?;
    Ok(prepared)
}

/// Gives the `atRest: host` functions of `rec` back their drivers, through the bind records.
fn restore<K: Kernel>(
    root: &HostRoot,
    s: &Settings,
    state: &mut crate::bind::StateGuard,
    functions: &[PciAddress],
    kernel: &mut K,
) -> Result<(), String> {
    if functions.is_empty() {
        return Ok(());
    }
    let inv = host::pci::discover(root).map_err(|e| format!("cannot discover PCI devices: {e}"))?;
    let allocations = host::kubelet::read_allocations(&s.device_plugin_dir)
        .map_err(|e| format!("cannot tell which devices pods hold through device plugins: {e}"))?;
    let plan = plan_unbind(&inv, state, &allocations, functions);
    let outcomes = Applier::new(root, kernel).apply_unbind(&plan, state).map_err(|e| e.to_string())?;
    match outcomes.iter().find(|o| matches!(o.outcome.as_str(), "failed" | "refused")) {
        Some(o) => Err(format!("{} not given back: {}", o.address, o.detail.as_deref().unwrap_or(&o.outcome))),
        None => Ok(()),
    }
}

/// Unprepares one claim by UID. A claim nodeprep never prepared (or already unprepared) is `Ok`.
pub fn unprepare<K: Kernel>(root: &HostRoot, s: &Settings, uid: &str, kernel: &mut K) -> Result<(), String> {
    let mut state = State::lock(root).map_err(|e| e.to_string())?;
    let mut cp = Checkpoint::load(root).map_err(|e| e.to_string())?;
    let Some(rec) = cp.claims.get(uid).cloned() else { return Ok(()) };
    let functions: Vec<PciAddress> = rec
        .devices
        .iter()
        .filter(|d| d.at_rest == AtRest::Host)
        .flat_map(|d| d.functions.iter().copied())
        .filter(|f| cp.holder(f, uid).is_none())
        .collect();
    restore(root, s, &mut state, &functions, kernel)?;
    for f in &rec.files {
        remove_path(root, f)?;
    }
    cp.claims.remove(uid);
    cp.save(root).map_err(|e| e.to_string())
}

/// What [`reconcile`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Claims from an earlier boot, forgotten.
    pub stale_claims: Vec<ClaimRef>,
    /// Functions on vfio-pci that no prepared claim explained, given back.
    pub restored: Vec<PciAddress>,
}

/// At start: forgets claims prepared in an earlier boot, and gives back every `atRest: host`
/// function nodeprep bound that no prepared claim explains (a Prepare cut short by a crash).
/// Claims of this boot are left alone: a running pod may hold them.
pub fn reconcile<K: Kernel>(
    root: &HostRoot,
    s: &Settings,
    config: &Config,
    kernel: &mut K,
) -> Result<Reconciled, String> {
    let mut state = State::lock(root).map_err(|e| e.to_string())?;
    let mut cp = Checkpoint::load(root).map_err(|e| e.to_string())?;
    let mut out = Reconciled::default();
    let boot = boot_id(root);
    if !boot.is_empty() {
        let stale: Vec<String> = cp.claims.iter().filter(|(_, c)| c.boot_id != boot).map(|(u, _)| u.clone()).collect();
        for uid in stale {
            if let Some(rec) = cp.claims.remove(&uid) {
                for f in &rec.files {
                    remove_path(root, f)?;
                }
                out.stale_claims.push(rec.claim);
            }
        }
    }
    let held = prepared_functions(&cp);
    let (_, offered) = offered(root, config, &state, &held)?;
    let stray: Vec<PciAddress> = offered
        .iter()
        .filter(|d| d.at_rest == AtRest::Host)
        .flat_map(|d| d.functions.iter().copied())
        .filter(|f| !held.contains(f) && state.devices.contains_key(f))
        .collect();
    restore(root, s, &mut state, &stray, kernel)?;
    out.restored = stray;
    if !out.stale_claims.is_empty() {
        cp.save(root).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// [`Settings`] from the driver name, the node (pool), the CDI directory, the plugin's data
/// directory (host paths) and the kubelet's device-plugin directory (under the host root).
pub fn settings_for(driver: &str, node: &str, cdi_dir: &str, data_dir: &str, device_plugin_dir: &Path) -> Settings {
    Settings {
        driver: driver.to_owned(),
        node: node.to_owned(),
        cdi_dir: cdi_dir.to_owned(),
        data_dir: data_dir.to_owned(),
        device_plugin_dir: device_plugin_dir.to_owned(),
    }
}

/// Reads the host and the checkpoint: the devices offered now, for `nodeprep dra devices` and
/// the agent (unhealthy ones included, with their problem).
pub fn offered_now(root: &HostRoot, config: &Config) -> Result<Vec<DraDevice>, String> {
    let state = State::load(root).map_err(|e| e.to_string())?;
    let cp = Checkpoint::load(root).map_err(|e| e.to_string())?;
    offered(root, config, &state, &prepared_functions(&cp)).map(|(_, d)| d)
}

/// Pure: one device as `nodeprep dra devices` shows it.
pub fn device_json(pool: &str, d: &DraDevice) -> Value {
    let attrs: serde_json::Map<String, Value> =
        d.attributes.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect();
    json!({
        "pool": pool, "name": d.name, "primary": d.primary.to_string(),
        "functions": d.functions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "iommuGroup": d.iommu_group, "atRest": d.at_rest, "resourceName": d.resource_name,
        "healthy": d.healthy, "problem": d.problem, "attributes": attrs,
    })
}

/// [`offered_now`] as `nodeprep dra devices` prints it.
pub fn offered_report(root: &HostRoot, config: &Config, pool: &str) -> Result<Vec<Value>, String> {
    Ok(offered_now(root, config)?.iter().map(|d| device_json(pool, d)).collect())
}

/// The devices offered on `inv` (the agent's latest inventory), with nodeprep's records read
/// now: what the slices and the health stream show.
pub fn offered_in(root: &HostRoot, inv: &PciInventory, config: &Config) -> Result<Vec<DraDevice>, String> {
    let state = State::load(root).map_err(|e| e.to_string())?;
    let cp = Checkpoint::load(root).map_err(|e| e.to_string())?;
    let original = state.original_drivers();
    let claims = config
        .claims_with(inv, &original)
        .map_err(|p| format!("the config is refused on this host: {}", p.join("; ")))?;
    let roots = read_pcie_roots(root, config, &claims);
    let prepared = prepared_functions(&cp);
    let cx = Context { original: Some(&original), pcie_roots: Some(&roots), prepared: Some(&prepared) };
    Ok(dra_devices(inv, config, &claims, &cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(uid: &str, request: &str) -> Value {
        json!({"metadata": {"name": "gpu", "namespace": "vms", "uid": uid},
            "status": {"allocation": {"devices": {"results": [
                {"driver": "vfio.nodeprep.io", "pool": "n1", "device": "pci-0000-af-00-0", "request": request},
                {"driver": "other.example.com", "pool": "n1", "device": "x", "request": "nic"}]}}}})
    }

    #[test]
    fn names_that_become_paths_are_checked() {
        let ok = claim_allocation(&claim("0b1c-22", "vm"), "vfio.nodeprep.io").expect("valid claim");
        assert_eq!(ok.results.len(), 1, "only this driver's results");
        assert_eq!(claim_allocation(&claim("0b1c-22", "vm/big"), "vfio.nodeprep.io").map(|a| a.results.len()), Ok(1));
        let bad = claim_allocation(&claim("../../etc", "vm"), "vfio.nodeprep.io").expect_err("refused");
        assert!(bad.contains("uid"), "{bad}");
        let bad = claim_allocation(&claim("0b1c-22", "../x"), "vfio.nodeprep.io").expect_err("refused");
        assert!(bad.contains("request name"), "{bad}");
        assert_eq!(base_request("vm/big"), "vm");
    }

    /// Found by the `dra_claim` fuzz target: the pod's claim name (an annotation) was taken as
    /// it came, and it names a directory of the metadata file's path in the container.
    #[test]
    fn the_pod_claim_name_is_checked_too() {
        let with = |name: &str| {
            let mut c = claim("0b1c-22", "vm");
            c["metadata"]["annotations"] = json!({ POD_CLAIM_NAME: name });
            claim_allocation(&c, "vfio.nodeprep.io")
        };
        assert_eq!(with("gpu").expect("a DNS label").pod_claim_name.as_deref(), Some("gpu"));
        for bad in ["/pu", "../../etc", "a/b", ".hidden", "gpu claim"] {
            let e = with(bad).expect_err(bad);
            assert!(e.contains(POD_CLAIM_NAME) && e.contains("not a DNS label"), "{e}");
        }
    }

    #[test]
    fn metadata_is_a_stream_newest_version_first() {
        let alloc = claim_allocation(&claim("u1", "vm"), "vfio.nodeprep.io").expect("valid claim");
        let text = metadata_stream("vfio.nodeprep.io", &alloc, "vm", &[]);
        let versions: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object a line")["apiVersion"].to_string())
            .collect();
        assert_eq!(versions, ["\"metadata.resource.k8s.io/v1beta1\"", "\"metadata.resource.k8s.io/v1alpha1\""]);
        assert_eq!(
            metadata_container_path("d.io", &alloc.claim, Some("gpu-claim"), "vm"),
            "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpu-claim/vm/d.io-metadata.json"
        );
    }
}
