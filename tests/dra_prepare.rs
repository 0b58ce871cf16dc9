//! nodeprep's DRA driver on the host: the devices it offers (`offered_now`), Prepare and
//! Unprepare of ResourceClaims through the simulated kernel (`support::kernel_sim`), the CDI
//! specs, the KEP-5304 device metadata and the checkpoint they leave under the host root, the
//! refusals, `atRest: vfio` at start, and the reconciliation after a crash or a reboot.
//!
//! Fixture: [`machines::intel_gpu_server`]: GPU B (Quadro RTX 6000 `0000:af:00.0`, nouveau) and
//! its HDMI audio function (`0000:af:00.1`, snd_hda_intel) share IOMMU group 20; the boot NVMe
//! `0000:18:00.0` holds `/boot`, `/boot/efi`, the root LV and swap; the QAT VFs are each alone
//! in a group (9..12) on c6xxvf; vfio-pci is loaded and `dev/vfio/vfio` exists.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nodeprep::bind::{self, Kernel, State};
use nodeprep::config::Config;
use nodeprep::dra::checkpoint::{BOOT_ID, CHECKPOINT_FILE, Checkpoint};
use nodeprep::dra::devices::{AttrValue, DraDevice, PCI_BUS_ID, PCIE_ROOT};
use nodeprep::dra::prepare::{self, ClaimAllocation, Settings, claim_allocation, offered_now, settings_for};
use nodeprep::dra::{ClaimRef, PreparedDevice};
use nodeprep::host::{HostRoot, kubelet, pci};
use nodeprep::model::PciAddress;
use serde_json::{Value, json};
use support::HostTree;
use support::kernel_sim::KernelSim;
use support::machines::{self, intel};

// ---- fixture and settings ------------------------------------------------------------------

const NODE: &str = "node-a";
const DRIVER: &str = "vfio.nodeprep.io";
const CDI_DIR: &str = "/var/run/cdi";
const DATA_DIR: &str = "/var/lib/kubelet/plugins/vfio.nodeprep.io";
const NS: &str = "vms";
const UID_A: &str = "0b8f6c1e-3d2a-4f5b-9c7e-1a2b3c4d5e6f";
const UID_B: &str = "7e6d5c4b-3a29-4187-a6b5-c4d3e2f1a0b9";
/// The device name of GPU B's group.
const GPU_DEV: &str = "pci-0000-af-00-0";
/// The boot NVMe's device name.
const NVME_DEV: &str = "pci-0000-18-00-0";
/// The first QAT VF's device name.
const QAT_DEV: &str = "pci-0000-5e-01-0";

/// GPU B offered through DRA, on its host driver until a claim is prepared.
const GPU_HOST: &str = r#"
dra:
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
"#;

/// GPU B at rest on its host driver, and the boot NVMe (which the host uses).
const GPU_AND_BOOT_DISK: &str = r#"
dra:
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
    - resourceName: example.com/nvme
      atRest: host
      selectors: {pciAddresses: ["0000:18:00.0"]}
"#;

/// GPU B at rest on its host driver, the first QAT VF at rest on vfio-pci.
const GPU_HOST_QAT_VFIO: &str = r#"
dra:
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
    - resourceName: intel.com/qat_vf
      atRest: vfio
      selectors: {pciAddresses: ["0000:5e:01.0"]}
"#;

/// GPU B and the first QAT VF, both at rest on their host drivers.
const GPU_AND_QAT_HOST: &str = r#"
dra:
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
    - resourceName: intel.com/qat_vf
      atRest: host
      selectors: {pciAddresses: ["0000:5e:01.0"]}
"#;

fn addr(s: &str) -> PciAddress {
    s.parse().expect("fixture address")
}

fn config(text: &str) -> Config {
    Config::parse(text).expect("valid config")
}

fn root_of(t: &HostTree) -> HostRoot {
    HostRoot::new(t.root())
}

fn settings(root: &HostRoot) -> Settings {
    settings_for(DRIVER, NODE, CDI_DIR, DATA_DIR, &kubelet::plugin_dir(root, None))
}

/// A ResourceClaim as the API server returns it, allocated `device` in `pool` for request `vm`
/// (plus a result of another driver, which Prepare must ignore).
fn claim_json(name: &str, uid: &str, pool: &str, device: &str, pod_claim_name: Option<&str>) -> Value {
    let mut c = json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": { "name": name, "namespace": NS, "uid": uid },
        "spec": { "devices": { "requests": [{ "name": "vm", "exactly": { "deviceClassName": DRIVER } }] } },
        "status": { "allocation": { "devices": { "results": [
            { "request": "vm", "driver": DRIVER, "pool": pool, "device": device },
            { "request": "nic", "driver": "gpu.example.com", "pool": pool, "device": "gpu-0" },
        ] } } },
    });
    if let Some(p) = pod_claim_name {
        c["metadata"]["annotations"] = json!({ prepare::POD_CLAIM_NAME: p });
    }
    c
}

fn alloc(name: &str, uid: &str, device: &str) -> ClaimAllocation {
    claim_allocation(&claim_json(name, uid, NODE, device, None), DRIVER).expect("claim allocation")
}

fn offered<'a>(devices: &'a [DraDevice], name: &str) -> &'a DraDevice {
    devices
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} not offered: {:?}", devices.iter().map(|d| &d.name).collect::<Vec<_>>()))
}

fn string_attr(d: &DraDevice, key: &str) -> String {
    match d.attributes.get(key) {
        Some(AttrValue::String(s)) => s.clone(),
        other => panic!("{}: attribute {key} is {other:?}, not a string: {:?}", d.name, d.attributes),
    }
}

/// A host path as Prepare writes it: under the root, symlinks taken as the host takes them.
fn host_file(root: &HostRoot, host_path: &str) -> PathBuf {
    root.resolve(host_path)
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()))
}

fn claim_spec(uid: &str) -> String {
    format!("{CDI_DIR}/vfio-nodeprep-io-claim-{uid}.json")
}

fn metadata_spec(uid: &str, request: &str) -> String {
    format!("{CDI_DIR}/{DRIVER}_metadata_{uid}_{request}.json")
}

fn metadata_dir(claim: &str) -> String {
    format!("{DATA_DIR}/dra-device-metadata/{NS}_{claim}")
}

fn metadata_file(claim: &str, request: &str) -> String {
    format!("{}/{request}/metadata.json", metadata_dir(claim))
}

/// Every file name under the CDI directory (none when it does not exist).
fn cdi_files(root: &HostRoot) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(host_file(root, CDI_DIR))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn set_boot_id(t: &HostTree, id: &str) {
    t.file(BOOT_ID, format!("{id}\n"));
}

/// The state of both GPU B functions: what the simulated kernel says they are bound to.
fn gpu_drivers(sim: &KernelSim) -> (Option<String>, Option<String>) {
    (sim.driver_of(intel::GPU_B), sim.driver_of(intel::GPU_B_AUDIO))
}

fn on_vfio() -> (Option<String>, Option<String>) {
    (Some("vfio-pci".into()), Some("vfio-pci".into()))
}

fn on_host() -> (Option<String>, Option<String>) {
    (Some("nouveau".into()), Some("snd_hda_intel".into()))
}

/// GPU B prepared for claim `vm-a` (UID_A) on a fresh host; returns the tree, the kernel and
/// what Prepare returned.
fn prepared_gpu(config_text: &str) -> (HostTree, KernelSim, Vec<PreparedDevice>) {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    let got = prepare::prepare(&root, &settings(&root), &config(config_text), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("GPU B is prepared");
    (t, sim, got)
}

// ---- 1. offer and prepare an atRest: host device -------------------------------------------------

#[test]
fn host_device_is_offered_as_its_whole_iommu_group() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let devices = offered_now(&root, &config(GPU_HOST)).expect("offered");
    assert_eq!(devices.len(), 1, "one device per IOMMU group: {devices:#?}");
    let d = offered(&devices, GPU_DEV);
    assert_eq!(d.primary, addr(intel::GPU_B));
    assert_eq!(d.functions, vec![addr(intel::GPU_B), addr(intel::GPU_B_AUDIO)], "primary first, then the audio");
    assert_eq!(d.iommu_group, Some(intel::GPU_B_GROUP));
    assert!(d.healthy, "on its host driver at rest is healthy: {:?}", d.problem);
    assert_eq!(string_attr(d, PCI_BUS_ID), intel::GPU_B);
    assert_eq!(string_attr(d, PCIE_ROOT), "pci0000:ae");
    assert_eq!(d.attributes.get("iommuGroupSize"), Some(&AttrValue::Int(2)));
    assert_eq!(d.attributes.get("iommuGroup"), Some(&AttrValue::Int(i64::from(intel::GPU_B_GROUP))));
    assert_eq!(string_attr(d, "atRest"), "host");
    assert_eq!(string_attr(d, "hostDriver"), "nouveau");
    assert_eq!(string_attr(d, "resourceName"), "nvidia.com/quadro_rtx_6000");
    assert_eq!(string_attr(d, "vendorID"), "10de");
    assert_eq!(string_attr(d, "deviceID"), "1e30");
}

#[test]
fn claim_allocation_keeps_this_drivers_results_and_the_claims_identity() {
    let a = claim_allocation(&claim_json("vm-a", UID_A, NODE, GPU_DEV, Some("gpu")), DRIVER).expect("allocation");
    assert_eq!(a.claim, ClaimRef { namespace: NS.into(), name: "vm-a".into(), uid: UID_A.into() });
    assert_eq!(a.pod_claim_name.as_deref(), Some("gpu"));
    assert_eq!(a.results.len(), 1, "the other driver's result is not ours: {:?}", a.results);
    assert_eq!((a.results[0].request.as_str(), a.results[0].pool.as_str()), ("vm", NODE));
    assert_eq!(a.results[0].device, GPU_DEV);
    let mut unallocated = claim_json("vm-a", UID_A, NODE, GPU_DEV, None);
    unallocated["status"] = json!({});
    let e = claim_allocation(&unallocated, DRIVER).expect_err("not allocated");
    assert!(e.contains("not allocated") && e.contains("vm-a"), "{e}");
}

#[test]
fn prepare_binds_the_whole_group_and_writes_cdi_metadata_and_checkpoint() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    assert_eq!(gpu_drivers(&sim), on_host(), "fixture: GPU B on its host drivers");
    let got = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("GPU B is prepared");

    // Both functions on vfio-pci, through the simulated kernel.
    assert_eq!(gpu_drivers(&sim), on_vfio(), "writes: {:#?}", sim.log);
    assert!(t.path(format!("dev/vfio/{}", intel::GPU_B_GROUP)).exists(), "the group's node appeared");

    // What the kubelet gets back.
    let pci_id = format!("{DRIVER}/pci={UID_A}-{GPU_DEV}");
    let meta_id = format!("{DRIVER}/metadata={UID_A}_vm");
    assert_eq!(
        got,
        vec![PreparedDevice {
            requests: vec!["vm".into()],
            pool: NODE.into(),
            device: GPU_DEV.into(),
            cdi_ids: vec![pci_id.clone(), meta_id.clone()],
        }]
    );

    // The claim's CDI spec.
    let spec = read_json(&host_file(&root, &claim_spec(UID_A)));
    assert_eq!(spec["kind"], format!("{DRIVER}/pci"), "{spec:#}");
    let devs = spec["devices"].as_array().expect("devices");
    assert_eq!(devs.len(), 1, "{spec:#}");
    assert_eq!(devs[0]["name"], format!("{UID_A}-{GPU_DEV}"));
    let edits = &devs[0]["containerEdits"];
    let nodes: Vec<&str> =
        edits["deviceNodes"].as_array().expect("deviceNodes").iter().filter_map(|n| n["path"].as_str()).collect();
    assert_eq!(nodes, vec!["/dev/vfio/vfio".to_owned(), format!("/dev/vfio/{}", intel::GPU_B_GROUP)], "{spec:#}");
    let env: Vec<&str> = edits["env"].as_array().expect("env").iter().filter_map(Value::as_str).collect();
    let want_env = format!("PCI_RESOURCE_NVIDIA_COM_QUADRO_RTX_6000={},{}", intel::GPU_B, intel::GPU_B_AUDIO);
    assert!(env.contains(&want_env.as_str()), "missing {want_env} in {env:?}");
    assert!(env.iter().any(|e| e.starts_with("PCIDEVICE_NVIDIA_COM_QUADRO_RTX_6000_INFO=")), "{env:?}");

    // The KEP-5304 metadata: a two-document JSON stream, v1beta1 first.
    let path = host_file(&root, &metadata_file("vm-a", "vm"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(docs.len(), 2, "{text}");
    assert_eq!(docs[0]["apiVersion"], "metadata.resource.k8s.io/v1beta1");
    assert_eq!(docs[1]["apiVersion"], "metadata.resource.k8s.io/v1alpha1");
    for doc in &docs {
        assert_eq!(doc["kind"], "DeviceMetadata");
        assert_eq!(doc["metadata"]["name"], "vm-a");
        assert_eq!(doc["metadata"]["namespace"], NS);
        assert_eq!(doc["metadata"]["uid"], UID_A);
        assert!(doc.get("podClaimName").is_none(), "not from a template: {doc}");
        let req = &doc["requests"][0];
        assert_eq!(req["name"], "vm");
        let dev = &req["devices"][0];
        assert_eq!((&dev["driver"], &dev["pool"], &dev["name"]), (&json!(DRIVER), &json!(NODE), &json!(GPU_DEV)));
        assert_eq!(dev["attributes"][PCI_BUS_ID], json!({ "string": intel::GPU_B }), "{doc:#}");
        assert_eq!(dev["attributes"]["iommuGroupSize"], json!({ "int": 2 }), "{doc:#}");
    }

    // The metadata's CDI spec bind-mounts it where KubeVirt reads it.
    let mspec = read_json(&host_file(&root, &metadata_spec(UID_A, "vm")));
    assert_eq!(mspec["kind"], format!("{DRIVER}/metadata"));
    assert_eq!(mspec["devices"][0]["name"], format!("{UID_A}_vm"));
    let mount = &mspec["devices"][0]["containerEdits"]["mounts"][0];
    assert_eq!(mount["hostPath"], metadata_file("vm-a", "vm"));
    assert_eq!(
        mount["containerPath"],
        format!("/var/run/kubernetes.io/dra-device-attributes/resourceclaims/vm-a/vm/{DRIVER}-metadata.json")
    );
    assert_eq!(mount["options"], json!(["ro", "bind"]));

    // The checkpoint, at its place, with the drivers to give back.
    let raw = read_json(&t.path(CHECKPOINT_FILE));
    assert!(raw["claims"][UID_A].is_object(), "{raw:#}");
    let cp = Checkpoint::load(&root).expect("checkpoint");
    let rec = &cp.claims[UID_A];
    assert_eq!(rec.claim, ClaimRef { namespace: NS.into(), name: "vm-a".into(), uid: UID_A.into() });
    assert_eq!(rec.devices.len(), 1);
    let d = &rec.devices[0];
    assert_eq!(d.prepared, got[0]);
    assert_eq!(d.functions, vec![addr(intel::GPU_B), addr(intel::GPU_B_AUDIO)]);
    let want: BTreeMap<PciAddress, Option<String>> = [
        (addr(intel::GPU_B), Some("nouveau".to_owned())),
        (addr(intel::GPU_B_AUDIO), Some("snd_hda_intel".to_owned())),
    ]
    .into();
    assert_eq!(d.original_drivers, want);
    for f in [claim_spec(UID_A), metadata_spec(UID_A, "vm"), metadata_dir("vm-a")] {
        assert!(rec.files.contains(&f), "{f} not recorded in {:?}", rec.files);
    }

    // Still offered while prepared: healthy on vfio-pci, its host driver still nouveau.
    let devices = offered_now(&root, &config(GPU_HOST)).expect("offered");
    let d = offered(&devices, GPU_DEV);
    assert!(d.healthy, "{:?}", d.problem);
    assert_eq!(string_attr(d, "hostDriver"), "nouveau");
}

#[test]
fn template_claim_metadata_is_mounted_under_the_pods_claim_name() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    let a = claim_allocation(&claim_json("virt-launcher-x-gpu-7f2k9", UID_A, NODE, GPU_DEV, Some("gpu")), DRIVER)
        .expect("allocation");
    prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &a, &mut sim).expect("prepared");
    let mspec = read_json(&host_file(&root, &metadata_spec(UID_A, "vm")));
    assert_eq!(
        mspec["devices"][0]["containerEdits"]["mounts"][0]["containerPath"],
        format!("/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpu/vm/{DRIVER}-metadata.json")
    );
    let text =
        fs::read_to_string(host_file(&root, &metadata_file("virt-launcher-x-gpu-7f2k9", "vm"))).expect("metadata");
    for line in text.lines() {
        let doc: Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(doc["podClaimName"], "gpu", "{doc:#}");
    }
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert_eq!(cp.claims[UID_A].pod_claim_name.as_deref(), Some("gpu"));
}

// ---- 2. idempotent ----------------------------------------------------------------------------

#[test]
fn preparing_the_same_claim_again_writes_nothing_and_answers_the_same() {
    let (t, mut sim, first) = prepared_gpu(GPU_HOST);
    let root = root_of(&t);
    let writes = sim.log.len();
    assert!(writes > 0, "the first Prepare wrote to sysfs");
    let spec_before = fs::read(host_file(&root, &claim_spec(UID_A))).expect("spec");
    let again = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("prepared again");
    assert_eq!(again, first);
    assert_eq!(sim.log.len(), writes, "no sysfs write: {:#?}", &sim.log[writes..]);
    assert_eq!(fs::read(host_file(&root, &claim_spec(UID_A))).expect("spec"), spec_before);

    // After an agent restart too (a fresh kernel handle, nothing in memory).
    let mut fresh = sim.restarted();
    let again =
        prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut fresh)
            .expect("prepared again after a restart");
    assert_eq!(again, first);
    assert!(fresh.log.is_empty(), "{:#?}", fresh.log);
}

/// A prepared claim whose group was partly given back to a host driver behind nodeprep's back is
/// "no longer usable": Prepare must prepare it again (module docs, step 1).
///
/// BUG (src/dra/prepare.rs, `prepare`, `let held = prepared_functions(&cp);`): `held` includes
/// the functions of the very claim being re-prepared, so `offered()` computes the device as
/// "prepared", requires it to be on vfio-pci, marks it unhealthy ("IOMMU group 20 is not
/// viable: 0000:af:00.1 (snd_hda_intel) not on vfio-pci") and Prepare refuses the claim instead
/// of binding it again. Fix: leave the claim's own functions out of `held`:
/// `cp.claims.iter().filter(|(u, _)| u.as_str() != uid).flat_map(|(_, c)| ...)`.
#[test]
fn a_prepared_claim_no_longer_usable_is_prepared_again() {
    let (t, mut sim, first) = prepared_gpu(GPU_HOST);
    let root = root_of(&t);
    // Someone gives the audio function back to its driver.
    let dev = t.path(format!("sys/bus/pci/devices/{}", intel::GPU_B_AUDIO));
    sim.write(&dev.join("driver_override"), "\n").expect("clear override");
    sim.write(&t.path("sys/bus/pci/drivers/vfio-pci/unbind"), intel::GPU_B_AUDIO).expect("unbind");
    sim.write(&t.path("sys/bus/pci/drivers_probe"), intel::GPU_B_AUDIO).expect("probe");
    assert_eq!(sim.driver_of(intel::GPU_B_AUDIO).as_deref(), Some("snd_hda_intel"));

    let again = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("a claim no longer usable is prepared again");
    assert_eq!(again, first);
    assert_eq!(gpu_drivers(&sim), on_vfio());
    // And the drivers to give back are still the host's, not vfio-pci.
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert_eq!(
        cp.claims[UID_A].devices[0].original_drivers.get(&addr(intel::GPU_B_AUDIO)),
        Some(&Some("snd_hda_intel".to_owned()))
    );
}

// ---- 3. one claim per device ----------------------------------------------------------------------

#[test]
fn another_claim_for_a_held_device_is_refused_naming_the_holder() {
    let (t, mut sim, _) = prepared_gpu(GPU_HOST);
    let root = root_of(&t);
    let writes = sim.log.len();
    let e = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-b", UID_B, GPU_DEV), &mut sim)
        .expect_err("the device is held by vm-a");
    assert!(e.contains(GPU_DEV), "{e}");
    assert!(e.contains(&format!("held by claim {NS}/vm-a ({UID_A})")), "{e}");
    assert_eq!(sim.log.len(), writes, "no write");
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert!(!cp.claims.contains_key(UID_B), "the refused claim is not recorded");
    assert!(!host_file(&root, &claim_spec(UID_B)).exists());
    assert_eq!(gpu_drivers(&sim), on_vfio(), "vm-a keeps its device");
}

// ---- 4. unprepare ---------------------------------------------------------------------------------

#[test]
fn unprepare_gives_the_group_back_and_removes_every_file_and_record() {
    let (t, mut sim, _) = prepared_gpu(GPU_HOST);
    let root = root_of(&t);
    let s = settings(&root);
    prepare::unprepare(&root, &s, UID_A, &mut sim).expect("unprepared");
    assert_eq!(gpu_drivers(&sim), on_host(), "writes: {:#?}", sim.log);
    assert_eq!(sim.override_of(intel::GPU_B), None, "driver_override cleared");
    assert_eq!(sim.override_of(intel::GPU_B_AUDIO), None, "driver_override cleared");
    assert!(!t.path(format!("dev/vfio/{}", intel::GPU_B_GROUP)).exists(), "the group's node went");
    assert!(!host_file(&root, &claim_spec(UID_A)).exists(), "CDI spec removed");
    assert!(!host_file(&root, &metadata_spec(UID_A, "vm")).exists(), "metadata CDI spec removed");
    assert!(!host_file(&root, &metadata_dir("vm-a")).exists(), "metadata directory removed");
    assert_eq!(cdi_files(&root), Vec::<String>::new(), "nothing left in the CDI directory");
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert!(cp.claims.is_empty(), "{cp:#?}");
    let state = State::load(&root).expect("bind state");
    assert!(
        !state.devices.contains_key(&addr(intel::GPU_B)) && !state.devices.contains_key(&addr(intel::GPU_B_AUDIO)),
        "bind records dropped: {state:#?}"
    );

    // Again, and a claim never prepared: Ok, and no write.
    let writes = sim.log.len();
    prepare::unprepare(&root, &s, UID_A, &mut sim).expect("a second Unprepare is Ok");
    prepare::unprepare(&root, &s, "00000000-0000-0000-0000-000000000000", &mut sim).expect("unknown UID is Ok");
    assert_eq!(sim.log.len(), writes, "{:#?}", &sim.log[writes..]);
    assert_eq!(gpu_drivers(&sim), on_host());

    // The device is offered and can be prepared for another claim now.
    let devices = offered_now(&root, &config(GPU_HOST)).expect("offered");
    assert!(offered(&devices, GPU_DEV).healthy);
    prepare::prepare(&root, &s, &config(GPU_HOST), &alloc("vm-b", UID_B, GPU_DEV), &mut sim).expect("vm-b");
    assert_eq!(gpu_drivers(&sim), on_vfio());
}

// ---- 5. after an agent restart ---------------------------------------------------------------------

#[test]
fn unprepare_after_an_agent_restart_uses_only_what_is_on_disk() {
    let t = machines::intel_gpu_server();
    {
        let root = root_of(&t);
        let mut sim = KernelSim::new(&t);
        prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
            .expect("prepared");
        // The agent goes away: its kernel handle, settings, config and root with it.
    }
    // A new agent: a kernel opened on the host as it is now (GPU B on vfio-pci), told what the
    // host drivers are (the kernel's own knowledge, not nodeprep's).
    let mut sim = KernelSim::at(t.root());
    assert_eq!(gpu_drivers(&sim), on_vfio());
    sim.set_native(intel::GPU_B, Some("nouveau")).set_native(intel::GPU_B_AUDIO, Some("snd_hda_intel"));
    let root = HostRoot::new(t.root());
    prepare::unprepare(&root, &settings(&root), UID_A, &mut sim).expect("unprepared after restart");
    assert_eq!(gpu_drivers(&sim), on_host(), "writes: {:#?}", sim.log);
    assert!(Checkpoint::load(&root).expect("checkpoint").claims.is_empty());
    assert_eq!(cdi_files(&root), Vec::<String>::new());
}

#[test]
fn unprepare_after_a_restart_with_the_kernels_native_drivers_unknown() {
    // The restarted kernel does not know the native drivers (KernelSim::at on a host where
    // GPU B is on vfio-pci): nodeprep must still give back the recorded drivers by binding
    // them directly.
    let (t, _, _) = prepared_gpu(GPU_HOST);
    let mut sim = KernelSim::at(t.root());
    let root = root_of(&t);
    prepare::unprepare(&root, &settings(&root), UID_A, &mut sim).expect("unprepared");
    assert_eq!(gpu_drivers(&sim), on_host(), "writes: {:#?}", sim.log);
}

// ---- 6. refusals ---------------------------------------------------------------------------------

#[test]
fn a_disk_the_host_uses_is_offered_but_its_claim_is_refused_with_the_reason() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let c = config(GPU_AND_BOOT_DISK);
    let devices = offered_now(&root, &c).expect("offered");
    assert!(offered(&devices, NVME_DEV).healthy, "whether the host uses it is decided at Prepare");
    let mut sim = KernelSim::new(&t);
    let e = prepare::prepare(&root, &settings(&root), &c, &alloc("vm-a", UID_A, NVME_DEV), &mut sim)
        .expect_err("the host uses the boot disk");
    assert!(e.contains("the host uses it"), "{e}");
    assert!(e.contains("/boot"), "names the mount point: {e}");
    assert!(e.contains(NVME_DEV) && e.contains(intel::NVME), "{e}");
    assert!(sim.log.is_empty(), "nothing written: {:#?}", sim.log);
    assert_eq!(sim.driver_of(intel::NVME).as_deref(), Some("nvme"));
    assert!(!t.path(CHECKPOINT_FILE).exists(), "no checkpoint");
    assert_eq!(cdi_files(&root), Vec::<String>::new(), "no CDI spec");
    assert!(!host_file(&root, &metadata_dir("vm-a")).exists(), "no metadata");
    assert!(State::load(&root).expect("state").devices.is_empty(), "no bind record");
}

#[test]
fn a_device_not_offered_is_refused_naming_it() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    // GPU A (0000:3b:00.0) exists but the config does not offer it.
    let e = prepare::prepare(
        &root,
        &settings(&root),
        &config(GPU_HOST),
        &alloc("vm-a", UID_A, "pci-0000-3b-00-0"),
        &mut sim,
    )
    .expect_err("not offered");
    assert!(e.contains("pci-0000-3b-00-0") && e.contains("not offered"), "{e}");
    let e = prepare::prepare(
        &root,
        &settings(&root),
        &config(GPU_HOST),
        &alloc("vm-a", UID_A, "pci-0000-ff-1f-7"),
        &mut sim,
    )
    .expect_err("no such device");
    assert!(e.contains("pci-0000-ff-1f-7"), "{e}");
    assert!(sim.log.is_empty(), "{:#?}", sim.log);
    assert!(!t.path(CHECKPOINT_FILE).exists());
}

#[test]
fn a_device_of_another_pool_is_refused() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    let a = claim_allocation(&claim_json("vm-a", UID_A, "node-b", GPU_DEV, None), DRIVER).expect("allocation");
    let e = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &a, &mut sim).expect_err("another node's");
    assert!(e.contains("node-b") && e.contains(NODE) && e.contains("pool"), "{e}");
    assert!(sim.log.is_empty(), "{:#?}", sim.log);
    assert_eq!(gpu_drivers(&sim), on_host());
    assert!(!t.path(CHECKPOINT_FILE).exists());
}

// ---- 7. atRest: vfio is bound at start, atRest: host is not -------------------------------------

#[test]
fn bind_per_config_binds_at_rest_vfio_devices_only() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let c = config(GPU_HOST_QAT_VFIO);
    let mut sim = KernelSim::new(&t);
    let qat = intel::QAT_VFS[0];
    assert_eq!(sim.driver_of(qat).as_deref(), Some("c6xxvf"));
    let (plan, outcomes) =
        bind::bind_per_config(&root, &c, &kubelet::plugin_dir(&root, None), &mut sim).expect("bind per config");
    assert_eq!(sim.driver_of(qat).as_deref(), Some("vfio-pci"), "atRest: vfio bound at start: {outcomes:#?}");
    assert_eq!(gpu_drivers(&sim), on_host(), "atRest: host left alone:\n{plan}");
    assert!(
        plan.devices.iter().all(|d| d.address != addr(intel::GPU_B) && d.address != addr(intel::GPU_B_AUDIO)),
        "GPU B is not in the start plan:\n{plan}"
    );
    assert!(sim.writes_for(intel::GPU_B).is_empty() && sim.writes_for(intel::GPU_B_AUDIO).is_empty());

    // Both are offered: the VF at rest on vfio-pci (its host driver still known), GPU B on its own.
    let devices = offered_now(&root, &c).expect("offered");
    let q = offered(&devices, QAT_DEV);
    assert!(q.healthy, "{:?}", q.problem);
    assert_eq!(string_attr(q, "atRest"), "vfio");
    assert_eq!(string_attr(q, "hostDriver"), "c6xxvf");
    assert_eq!(string_attr(offered(&devices, GPU_DEV), "atRest"), "host");

    // Preparing the VF writes nothing; unpreparing it leaves it on vfio-pci.
    let writes = sim.log.len();
    let got = prepare::prepare(&root, &settings(&root), &c, &alloc("vm-q", UID_B, QAT_DEV), &mut sim).expect("VF");
    assert_eq!(got[0].cdi_ids[0], format!("{DRIVER}/pci={UID_B}-{QAT_DEV}"));
    assert_eq!(sim.log.len(), writes, "already on vfio-pci: {:#?}", &sim.log[writes..]);
    prepare::unprepare(&root, &settings(&root), UID_B, &mut sim).expect("unprepare VF");
    assert_eq!(sim.driver_of(qat).as_deref(), Some("vfio-pci"), "atRest: vfio stays on vfio-pci");
    assert_eq!(sim.log.len(), writes, "{:#?}", &sim.log[writes..]);
}

// ---- 8. one front per device ---------------------------------------------------------------------

#[test]
fn a_device_selected_by_a_device_plugin_entry_and_a_dra_entry_is_refused() {
    let t = machines::intel_gpu_server();
    let inv = pci::discover(&root_of(&t)).expect("discover");
    let c = config(
        r#"
devices:
  - resourceName: nvidia.com/quadro_rtx_6000
    selectors: {vendors: ["10de"], devices: ["1e30"]}
dra:
  devices:
    - resourceName: nvidia.com/quadro
      selectors: {pciAddresses: ["0000:af:00.0"]}
"#,
    );
    let problems = c.claims(&inv).expect_err("one device, two fronts");
    let all = problems.join("\n");
    assert!(all.contains(intel::GPU_B), "{all}");
    assert!(all.contains("devices[0]") && all.contains("dra.devices[0]"), "names both entries: {all}");
    assert!(all.contains("DRA"), "says why: {all}");
    // And the DRA driver offers nothing while the config is refused on this host.
    let e = offered_now(&root_of(&t), &c).expect_err("config refused");
    assert!(e.contains("dra.devices[0]"), "{e}");
}

// ---- 9. reconcile -----------------------------------------------------------------------------------

#[test]
fn reconcile_gives_back_a_group_bound_by_a_prepare_cut_short() {
    let (t, sim, _) = prepared_gpu(GPU_HOST);
    let root = root_of(&t);
    // The crash came between the bind and the checkpoint: the claim is not recorded.
    let path = t.path(CHECKPOINT_FILE);
    let mut raw = read_json(&path);
    raw["claims"].as_object_mut().expect("claims").remove(UID_A).expect("the claim was recorded");
    fs::write(&path, serde_json::to_vec_pretty(&raw).expect("json")).expect("rewrite checkpoint");
    assert_eq!(gpu_drivers(&sim), on_vfio());

    let mut sim = sim.restarted();
    let r = prepare::reconcile(&root, &settings(&root), &config(GPU_HOST), &mut sim).expect("reconcile");
    assert_eq!(r.restored, vec![addr(intel::GPU_B), addr(intel::GPU_B_AUDIO)], "{r:?}");
    assert!(r.stale_claims.is_empty(), "{r:?}");
    assert_eq!(gpu_drivers(&sim), on_host(), "writes: {:#?}", sim.log);
    let state = State::load(&root).expect("state");
    assert!(!state.devices.contains_key(&addr(intel::GPU_B)), "{state:#?}");

    // Nothing left to do the second time.
    let writes = sim.log.len();
    let r = prepare::reconcile(&root, &settings(&root), &config(GPU_HOST), &mut sim).expect("reconcile again");
    assert!(r.restored.is_empty() && r.stale_claims.is_empty(), "{r:?}");
    assert_eq!(sim.log.len(), writes);
}

#[test]
fn reconcile_keeps_the_claims_of_this_boot() {
    let t = machines::intel_gpu_server();
    set_boot_id(&t, "5a3b8f0e-1111-4c1d-9a2b-000000000001");
    let root = root_of(&t);
    let mut sim = KernelSim::new(&t);
    let got = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("prepared");
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert_eq!(cp.claims[UID_A].boot_id, "5a3b8f0e-1111-4c1d-9a2b-000000000001");

    let mut sim = sim.restarted();
    let r = prepare::reconcile(&root, &settings(&root), &config(GPU_HOST), &mut sim).expect("reconcile");
    assert!(r.stale_claims.is_empty() && r.restored.is_empty(), "{r:?}");
    assert!(sim.log.is_empty(), "{:#?}", sim.log);
    assert_eq!(gpu_drivers(&sim), on_vfio(), "a running pod may hold it");
    assert_eq!(Checkpoint::load(&root).expect("checkpoint"), cp);
    assert!(host_file(&root, &claim_spec(UID_A)).exists());
    assert!(host_file(&root, &metadata_file("vm-a", "vm")).exists());
    // And Prepare still answers from the checkpoint.
    let again = prepare::prepare(&root, &settings(&root), &config(GPU_HOST), &alloc("vm-a", UID_A, GPU_DEV), &mut sim)
        .expect("prepared");
    assert_eq!(again, got);
    assert!(sim.log.is_empty());
}

#[test]
fn reconcile_forgets_the_claims_of_an_earlier_boot_and_keeps_this_boots() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let c = config(GPU_AND_QAT_HOST);
    let mut sim = KernelSim::new(&t);
    let qat = intel::QAT_VFS[0];
    set_boot_id(&t, "boot-1");
    prepare::prepare(&root, &settings(&root), &c, &alloc("vm-a", UID_A, GPU_DEV), &mut sim).expect("vm-a in boot 1");
    set_boot_id(&t, "boot-2");
    prepare::prepare(&root, &settings(&root), &c, &alloc("vm-b", UID_B, QAT_DEV), &mut sim).expect("vm-b in boot 2");
    assert_eq!(sim.driver_of(qat).as_deref(), Some("vfio-pci"));
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert_eq!((cp.claims[UID_A].boot_id.as_str(), cp.claims[UID_B].boot_id.as_str()), ("boot-1", "boot-2"));

    let mut sim = sim.restarted();
    let r = prepare::reconcile(&root, &settings(&root), &c, &mut sim).expect("reconcile");
    assert_eq!(r.stale_claims, vec![ClaimRef { namespace: NS.into(), name: "vm-a".into(), uid: UID_A.into() }]);
    let cp = Checkpoint::load(&root).expect("checkpoint");
    assert!(!cp.claims.contains_key(UID_A), "boot 1's claim forgotten");
    assert!(cp.claims.contains_key(UID_B), "boot 2's claim kept");
    for f in [claim_spec(UID_A), metadata_spec(UID_A, "vm"), metadata_dir("vm-a")] {
        assert!(!host_file(&root, &f).exists(), "{f} removed");
    }
    for f in [claim_spec(UID_B), metadata_spec(UID_B, "vm"), metadata_file("vm-b", "vm")] {
        assert!(host_file(&root, &f).exists(), "{f} kept");
    }
    // The forgotten claim's group is no longer held: back on its host drivers (after a real
    // reboot it already is); this boot's claim keeps its VF on vfio-pci.
    assert_eq!(gpu_drivers(&sim), on_host(), "writes: {:#?}", sim.log);
    assert_eq!(sim.driver_of(qat).as_deref(), Some("vfio-pci"));
    assert!(sim.writes_for(qat).is_empty(), "{:#?}", sim.writes_for(qat));
    // Unpreparing the kept claim still works.
    prepare::unprepare(&root, &settings(&root), UID_B, &mut sim).expect("unprepare vm-b");
    assert_eq!(sim.driver_of(qat).as_deref(), Some("c6xxvf"));
    assert_eq!(cdi_files(&root), Vec::<String>::new());
}

/// An IOMMU group split between the fronts: a device-plugin entry selects GPU B's audio
/// function, a DRA `atRest: host` entry the GPU itself. The config's bind binds the whole group
/// for the device plugin (the GPU as a companion); reconcile must not undo that.
///
/// A group split between a device-plugin entry and a DRA entry would be bound for the one and
/// given back by the other (reconcile, Unprepare): the config is refused on such a host, so
/// neither the bind nor the reconciliation touches the group.
#[test]
fn a_group_split_between_a_device_plugin_and_dra_is_refused_and_left_alone() {
    let t = machines::intel_gpu_server();
    let root = root_of(&t);
    let c = config(
        r#"
devices:
  - resourceName: nvidia.com/quadro_audio
    selectors: {vendors: ["10de"], devices: ["10f7"]}
dra:
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
"#,
    );
    let problems = c.claims(&nodeprep::host::pci::discover(&root).expect("discover")).expect_err("split group refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("IOMMU group 20") && p.contains("devices[0]") && p.contains("dra.devices[0]")),
        "{problems:?}"
    );
    let mut sim = KernelSim::new(&t);
    assert!(
        bind::bind_per_config(&root, &c, &kubelet::plugin_dir(&root, None), &mut sim).is_err(),
        "the bind refuses the config"
    );
    assert!(prepare::reconcile(&root, &settings(&root), &c, &mut sim).is_err(), "so does the reconciliation");
    assert_eq!(sim.log.len(), 0, "nothing written: {:#?}", sim.log);
}
