//! The binding engine end to end: plans on fixture machines, the sysfs writes that carry them out
//! against a simulated kernel (`support::kernel_sim`), rollback, crash safety at every write, and
//! the `bind`/`unbind`/`config check` commands run as a real process.

mod support;

use support::cli::{nodeprep, stderr, stdout};

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nodeprep::bind::plan::{DevicePlan, RestoreAction, Role};
use nodeprep::bind::state::Record;
use nodeprep::bind::{self, Action, Applier, ApplyError, BindPlan, DeviceOutcome, RestorePlan, State};
use nodeprep::config::Config;
use nodeprep::host::{HostRoot, kubelet, pci};
use nodeprep::model::PciAddress;
use serde_json::Value;
use support::kernel_sim::{KernelSim, ModuleLoad};
use support::machines::{self, amd, intel};
use support::{HostTree, PciFn};

// ---- configs ---------------------------------------------------------------------------------

/// Everything test 1 selects on the intel machine: what can be bound and what must be refused.
const FULL: &str = r#"
pciHostDevices:
  - pciDeviceSelector: "10DE:1EB8"
    resourceName: nvidia.com/TU104GL_Tesla_T4
devices:
  - resourceName: nvidia.com/quadro_rtx_6000
    selectors: {vendors: ["10de"], devices: ["1e30"]}
  - resourceName: intel.com/qat_vf
    selectors: {vendors: ["8086"], devices: ["37c9"]}
  - resourceName: example.com/boot_nvme
    selectors: {pciAddresses: ["0000:18:00.0"]}
  - resourceName: intel.com/x710
    selectors: {pciAddresses: ["0000:02:00.0"]}
  - resourceName: intel.com/qat_pf
    selectors: {pciAddresses: ["0000:5e:00.0"]}
  - resourceName: mellanox.com/cx5_pf
    selectors: {pciAddresses: ["0000:86:00.0"]}
"#;

/// The Quadro (its audio function comes along as a companion).
const QUADRO: &str = r#"
devices:
  - resourceName: nvidia.com/quadro_rtx_6000
    selectors: {vendors: ["10de"], devices: ["1e30"]}
"#;

/// The Quadro group and two QAT VFs: 4 devices, 3 IOMMU groups.
const QUADRO_AND_QAT: &str = r#"
devices:
  - resourceName: nvidia.com/quadro_rtx_6000
    selectors: {vendors: ["10de"], devices: ["1e30"]}
  - resourceName: intel.com/qat_vf
    selectors: {pciAddresses: ["0000:5e:01.0", "0000:5e:01.1"]}
"#;

const QAT_VFS: &str = r#"
devices:
  - resourceName: intel.com/qat_vf
    selectors: {vendors: ["8086"], devices: ["37c9"]}
"#;

const POD: &str = "4f0c2a7e-9b1d-4c3e-8a55-0d6b2f1e7c90";

// ---- helpers ---------------------------------------------------------------------------------

fn addr(s: &str) -> PciAddress {
    s.parse().expect("fixture address")
}

fn host(t: &HostTree) -> HostRoot {
    HostRoot::new(t.root())
}

/// The plan the `bind` command would make: fresh discovery, the config's claims, the kubelet's
/// allocations, and whether vfio-pci is loaded.
fn plan(t: &HostTree, config: &str) -> BindPlan {
    let root = host(t);
    let inv = pci::discover(&root).expect("discover");
    let config = Config::parse(config).expect("valid config");
    let claims = config.claims(&inv).expect("no conflicting claims");
    let allocations = kubelet::read_allocations(&kubelet::plugin_dir(&root, None)).expect("checkpoint");
    let vfio_loaded = root.join("sys/bus/pci/drivers/vfio-pci").exists();
    bind::plan_bind(&inv, &config, &claims, &allocations, vfio_loaded)
}

fn unbind_plan(t: &HostTree, only: &[&str]) -> Vec<RestorePlan> {
    let root = host(t);
    let inv = pci::discover(&root).expect("discover");
    let state = State::load(&root).expect("state");
    let allocations = kubelet::read_allocations(&kubelet::plugin_dir(&root, None)).expect("checkpoint");
    let only: Vec<PciAddress> = only.iter().map(|a| addr(a)).collect();
    bind::plan_unbind(&inv, &state, &allocations, &only)
}

/// One `nodeprep bind` run through the library against the simulated kernel.
fn run_bind(t: &HostTree, sim: &mut KernelSim, config: &str) -> Result<Vec<DeviceOutcome>, ApplyError> {
    let plan = plan(t, config);
    let root = host(t);
    let mut state = State::lock(&root).expect("state");
    Applier::new(&root, sim).apply_bind(&plan, &mut state)
}

/// One `nodeprep unbind [only..]` run through the library against the simulated kernel.
fn run_unbind(t: &HostTree, sim: &mut KernelSim, only: &[&str]) -> Result<Vec<DeviceOutcome>, ApplyError> {
    let plan = unbind_plan(t, only);
    let root = host(t);
    let mut state = State::lock(&root).expect("state");
    Applier::new(&root, sim).apply_unbind(&plan, &mut state)
}

fn device<'a>(plan: &'a BindPlan, a: &str) -> &'a DevicePlan {
    plan.devices.iter().find(|d| d.address == addr(a)).unwrap_or_else(|| panic!("{a} not in the plan:\n{plan}"))
}

fn refusal<'a>(plan: &'a BindPlan, a: &str) -> &'a str {
    match &device(plan, a).action {
        Action::Refused { reason } => reason,
        other => panic!("{a} must be refused, plan says {other:?}:\n{plan}"),
    }
}

fn outcome<'a>(outcomes: &'a [DeviceOutcome], a: &str) -> &'a DeviceOutcome {
    outcomes.iter().find(|o| o.address == addr(a)).unwrap_or_else(|| panic!("no outcome for {a}: {outcomes:#?}"))
}

/// The driver behind a device's `driver` link; the link must resolve when present.
fn driver(t: &HostTree, a: &str) -> Option<String> {
    let link = t.path(format!("sys/bus/pci/devices/{a}/driver"));
    let target = fs::read_link(&link).ok()?;
    assert!(link.exists(), "{a}: driver link {} dangles", target.display());
    Some(target.file_name().and_then(|n| n.to_str()).expect("driver name").to_owned())
}

fn override_text(t: &HostTree, a: &str) -> String {
    fs::read_to_string(t.path(format!("sys/bus/pci/devices/{a}/driver_override")))
        .expect("driver_override")
        .trim_end()
        .to_owned()
}

fn state(t: &HostTree) -> State {
    State::load(&host(t)).expect("state file")
}

fn record(driver: Option<&str>, resource: Option<&str>) -> Record {
    Record {
        original_driver: driver.map(str::to_owned),
        original_override: None,
        resource_name: resource.map(str::to_owned),
    }
}

/// A kubelet device-manager checkpoint giving `ids` to one container of pod [`POD`].
fn checkpoint(t: &HostTree, resource: &str, ids: &[&str]) {
    checkpoint_in(&t.path("var/lib/kubelet/device-plugins"), resource, ids);
}

/// The same, in plugin directory `dir` (created).
fn checkpoint_in(dir: &Path, resource: &str, ids: &[&str]) {
    support::kubelet::write_checkpoint(dir, POD, resource, ids);
}

fn w(path: &str, value: &str) -> (PathBuf, String) {
    (PathBuf::from(path), value.to_owned())
}

fn override_path(a: &str) -> String {
    format!("sys/bus/pci/devices/{a}/driver_override")
}

/// Every file (contents), symlink (target) and directory under `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).expect("read dir").filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            let meta = fs::symlink_metadata(&p).expect("lstat");
            if meta.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).expect("readlink").display()));
            } else if meta.is_dir() {
                out.insert(rel, "<dir>".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, String::from_utf8_lossy(&fs::read(&p).expect("read")).into_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A config file outside the host tree (so tree snapshots see only what nodeprep does).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    fs::write(&path, text).expect("write config");
    (dir, path)
}

/// A small Intel host with the IOMMU on whose vfio-pci module is not loaded: a GPU and its
/// audio function share IOMMU group 2.
fn gpu_box() -> HostTree {
    let t = HostTree::new();
    t.iommu_unit("dmar0");
    t.pci(&PciFn::new("0000:00:00.0", 0x8086, 0x2020, 0x060000).group(0))
        .pci(&PciFn::new("0000:00:01.0", 0x8086, 0x2030, 0x060400).driver("pcieport").group(1))
        .pci(
            &PciFn::new(GPU, 0x10de, 0x1e30, 0x030000)
                .parent("0000:00:01.0")
                .driver("nouveau")
                .boot_vga(false)
                .group(2),
        )
        .pci(&PciFn::new(GPU_AUDIO, 0x10de, 0x10f7, 0x040300).parent("0000:00:01.0").driver("snd_hda_intel").group(2));
    t.mounts("proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n").routes(&[]);
    t
}
const GPU: &str = "0000:01:00.0";
const GPU_AUDIO: &str = "0000:01:00.1";

// ---- 0. the simulated kernel itself ------------------------------------------------------------

#[test]
fn kernel_sim_answers_like_sysfs() {
    use nodeprep::bind::Kernel;
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    let p = |rel: &str| t.path(rel);
    let errno = |r: std::io::Result<()>| r.expect_err("must fail").raw_os_error();
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);

    // Unbinding from a driver the device is not on: ENODEV; a file sysfs does not have: NotFound.
    assert_eq!(errno(sim.write(&p("sys/bus/pci/drivers/snd_hda_intel/unbind"), gpu)), Some(19));
    let missing = sim.write(&p("sys/bus/pci/drivers/ghost/unbind"), gpu).expect_err("no such driver");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"));

    // Override, unbind, probe: the override wins; clearing it and probing again finds nouveau.
    sim.write(&p(&override_path(gpu)), "vfio-pci").expect("override");
    assert_eq!(override_text(&t, gpu), "vfio-pci");
    sim.write(&p("sys/bus/pci/drivers/nouveau/unbind"), gpu).expect("unbind");
    assert_eq!(driver(&t, gpu), None);
    assert!(!p(&format!("sys/bus/pci/drivers/nouveau/{gpu}")).exists(), "back link removed");
    sim.write(&p("sys/bus/pci/drivers_probe"), gpu).expect("probe");
    assert_eq!(driver(&t, gpu).as_deref(), Some("vfio-pci"));
    assert!(p("dev/vfio/20").exists());
    sim.write(&p("sys/bus/pci/drivers_probe"), gpu).expect("probe of a bound device: nothing happens");
    assert_eq!(driver(&t, gpu).as_deref(), Some("vfio-pci"));
    // Binding directly a device that has a driver: EBUSY.
    assert_eq!(errno(sim.write(&p("sys/bus/pci/drivers/vfio-pci/bind"), gpu)), Some(16));

    // The group node stays while any member is on vfio-pci.
    sim.write(&p(&override_path(audio)), "vfio-pci\n").expect("override with a newline");
    assert_eq!(override_text(&t, audio), "vfio-pci");
    sim.write(&p("sys/bus/pci/drivers/snd_hda_intel/unbind"), audio).expect("unbind");
    sim.write(&p("sys/bus/pci/drivers/vfio-pci/bind"), audio).expect("bind directly");
    sim.write(&p("sys/bus/pci/drivers/vfio-pci/unbind"), gpu).expect("unbind");
    assert!(p("dev/vfio/20").exists(), "the audio function still holds the group");
    sim.write(&p("sys/bus/pci/drivers/vfio-pci/unbind"), audio).expect("unbind");
    assert!(!p("dev/vfio/20").exists());

    // A lone newline clears the override; the probe then finds the native driver.
    sim.write(&p(&override_path(gpu)), "\n").expect("clear");
    assert_eq!(override_text(&t, gpu), "(null)");
    sim.write(&p("sys/bus/pci/drivers_probe"), gpu).expect("probe");
    assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"));
    let inv = pci::discover(&host(&t)).expect("discover");
    let d = inv.device(&addr(gpu)).expect("gpu");
    assert_eq!((d.driver.as_deref(), d.driver_override.as_deref()), (Some("nouveau"), None));
    assert!(d.warnings.is_empty(), "the sim keeps the tree well-formed: {:?}", d.warnings);

    // vfio-pci's probe fails without an IOMMU group, or when told to: the device stays driverless.
    sim.fail_probe_for(intel::QAT_VFS[0]);
    sim.write(&p(&override_path(intel::QAT_VFS[0])), "vfio-pci").expect("override");
    sim.write(&p("sys/bus/pci/drivers/c6xxvf/unbind"), intel::QAT_VFS[0]).expect("unbind");
    sim.write(&p("sys/bus/pci/drivers_probe"), intel::QAT_VFS[0]).expect("the write succeeds");
    assert_eq!(driver(&t, intel::QAT_VFS[0]), None);
    let amd_tree = machines::amd_iommu_off();
    let mut amd_sim = KernelSim::new(&amd_tree);
    amd_sim.load_module("vfio-pci").expect("load");
    assert!(amd_tree.path("sys/bus/pci/drivers/vfio-pci/bind").exists() && amd_tree.path("dev/vfio/vfio").exists());
    let ap = |rel: &str| amd_tree.path(rel);
    amd_sim.write(&ap(&override_path(amd::NIC1)), "vfio-pci").expect("override");
    amd_sim.write(&ap("sys/bus/pci/drivers/tg3/unbind"), amd::NIC1).expect("unbind");
    amd_sim.write(&ap("sys/bus/pci/drivers_probe"), amd::NIC1).expect("probe");
    assert_eq!(driver(&amd_tree, amd::NIC1), None, "no IOMMU group: vfio-pci's probe fails");

    // Killed: nothing more reaches the kernel, and the log shows only what did.
    let logged = sim.log.len();
    sim.fail_after(sim.log.len() - 3);
    assert!(sim.write(&p(&override_path(gpu)), "vfio-pci").is_err());
    assert_eq!(sim.log.len(), logged);
    assert_eq!(override_text(&t, gpu), "(null)");
    assert_eq!(sim.writes_to("driver_override"), 4);
}

// ---- 1. plans on the intel machine -----------------------------------------------------------

#[test]
fn plan_binds_whole_groups_and_refuses_what_the_host_uses() {
    let t = machines::intel_gpu_server();
    let p = plan(&t, FULL);
    let selected = |entry: &str, resource: &str| Role::Selected { resource_name: resource.into(), entry: entry.into() };

    let t4 = device(&p, intel::GPU_A);
    assert_eq!(t4.action, Action::AlreadyBound);
    assert_eq!(t4.role, selected("pciHostDevices[0]", "nvidia.com/TU104GL_Tesla_T4"));
    assert_eq!(t4.iommu_group, Some(intel::GPU_A_GROUP));

    let quadro = device(&p, intel::GPU_B);
    assert_eq!(quadro.action, Action::Bind { from: Some("nouveau".into()) });
    assert_eq!(quadro.role, selected("devices[0]", "nvidia.com/quadro_rtx_6000"));
    let audio = device(&p, intel::GPU_B_AUDIO);
    assert_eq!(audio.action, Action::Bind { from: Some("snd_hda_intel".into()) });
    assert_eq!(audio.role, Role::Companion, "the audio function is not selected: it comes with its group");
    assert_eq!(audio.iommu_group, Some(intel::GPU_B_GROUP));

    for vf in intel::QAT_VFS {
        let d = device(&p, vf);
        assert_eq!(d.action, Action::Bind { from: Some("c6xxvf".into()) }, "{vf}");
        assert_eq!(d.role, selected("devices[1]", "intel.com/qat_vf"));
    }

    let nvme = refusal(&p, intel::NVME);
    assert!(nvme.contains("the host uses it"), "{nvme}");
    assert!(nvme.contains("dm-0 holds mounted /") && nvme.contains("/boot/efi"), "{nvme}");
    assert!(nvme.contains("swap"), "the NVMe also backs swap (dm-1): {nvme}");
    let nic = refusal(&p, intel::NIC);
    assert!(nic.contains("eno1 carries the default route"), "{nic}");
    let qat_pf = refusal(&p, intel::QAT_PF);
    assert!(qat_pf.contains("SR-IOV PF"), "{qat_pf}");
    for vf in intel::QAT_VFS {
        assert!(qat_pf.contains(&format!("{vf} (c6xxvf)")), "{qat_pf}");
    }
    let mlx = refusal(&p, intel::MLX_PF);
    assert!(mlx.contains("SR-IOV PF whose VFs are in use"), "{mlx}");
    assert!(mlx.contains("0000:86:00.2 (mlx5_core)") && mlx.contains("0000:86:00.5 (mlx5_core)"), "{mlx}");

    // Nothing else: no bridge, no unselected device, and only the groups that need writes.
    let mut listed: Vec<String> = p.devices.iter().map(|d| d.address.to_string()).collect();
    listed.sort();
    let mut expected = vec![intel::GPU_A, intel::GPU_B, intel::GPU_B_AUDIO, intel::NVME, intel::NIC, intel::QAT_PF];
    expected.push(intel::MLX_PF);
    expected.extend(intel::QAT_VFS);
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(p.refused().count(), 4);
    assert_eq!(p.writes_needed(), 6);
    assert_eq!(p.groups_to_bind().keys().copied().collect::<Vec<u32>>(), vec![9, 10, 11, 12, intel::GPU_B_GROUP]);
    assert!(!p.load_vfio, "vfio-pci is loaded on this machine");

    let text = p.to_string();
    for line in [
        "keep    0000:3b:00.0 already on vfio-pci, IOMMU group 6, for nvidia.com/TU104GL_Tesla_T4 (pciHostDevices[0])",
        "bind    0000:af:00.0 nouveau -> vfio-pci, IOMMU group 20, for nvidia.com/quadro_rtx_6000 (devices[0])",
        "bind    0000:af:00.1 snd_hda_intel -> vfio-pci, IOMMU group 20, for companion: shares the group",
        "refuse  0000:02:00.0 for intel.com/x710 (devices[3]): the host uses it: eno1 carries the default route; \
         eno1 has address 192.168.1.0/24",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
    }
}

#[test]
fn qat_pf_with_idle_vfs_is_refused_because_its_vfs_are_enabled() {
    let t = machines::intel_gpu_server();
    // Take the VFs off their driver, as an admin preparing them would.
    let mut sim = KernelSim::new(&t);
    for vf in intel::QAT_VFS {
        nodeprep::bind::Kernel::write(&mut sim, &t.path("sys/bus/pci/drivers/c6xxvf/unbind"), vf).expect("unbind");
        assert_eq!(driver(&t, vf), None);
    }
    let p =
        plan(&t, "devices:\n  - resourceName: intel.com/qat_pf\n    selectors: {pciAddresses: [\"0000:5e:00.0\"]}\n");
    let why = refusal(&p, intel::QAT_PF);
    assert!(why.contains("SR-IOV PF with 4 VFs enabled"), "{why}");
    assert!(why.contains("set sriov_numvfs to 0 first"), "{why}");
    assert_eq!(p.writes_needed(), 0);
}

#[test]
fn bind_dry_run_through_the_binary_shows_the_plan_and_writes_nothing() {
    let t = machines::intel_gpu_server();
    let (_d, cfg) = config_file(FULL);
    let before = snapshot(t.root());
    let out = nodeprep(t.root(), &["bind", "--config", cfg.to_str().expect("utf-8"), "--dry-run", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "refusals make exit status 1: {}", stderr(&out));
    assert_eq!(snapshot(t.root()), before, "a dry run changes nothing");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["loadVfio"], false);
    let devices = v["devices"].as_array().expect("devices");
    let by = |a: &str| devices.iter().find(|d| d["address"] == a).unwrap_or_else(|| panic!("{a} in {v}"));
    assert_eq!(by(intel::GPU_A)["action"], "alreadyBound");
    assert_eq!(by(intel::GPU_B)["action"], "bind");
    assert_eq!(by(intel::GPU_B)["from"], "nouveau");
    assert_eq!(by(intel::GPU_B)["role"]["selected"]["entry"], "devices[0]", "{}", by(intel::GPU_B));
    assert_eq!(by(intel::GPU_B_AUDIO)["role"], "companion");
    assert_eq!(by(intel::NVME)["action"], "refused");
    assert!(by(intel::NVME)["reason"].as_str().expect("reason").contains("mounted /"));
    assert_eq!(devices.len(), 11);

    let text = nodeprep(t.root(), &["bind", "--config", cfg.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(text.status.code(), Some(1));
    assert!(
        stdout(&text).contains(
            "refuse  0000:86:00.0 for mellanox.com/cx5_pf (devices[5]): it is an SR-IOV PF whose VFs are in use"
        ),
        "{}",
        stdout(&text)
    );

    // A config with no refusal: exit 0.
    let (_d2, ok) = config_file(QUADRO);
    let out = nodeprep(t.root(), &["bind", "--config", ok.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(snapshot(t.root()), before);
}

/// `bind --dry-run -o json` spells every key in camelCase (`loadVfio`, `iommuGroup`), the
/// fields inside `role.selected` included.
#[test]
fn plan_json_keys_are_camel_case_inside_role_too() {
    let t = machines::intel_gpu_server();
    let v = serde_json::to_value(plan(&t, QUADRO)).expect("json");
    let role = &v["devices"][0]["role"]["selected"];
    assert_eq!(role["resourceName"], "nvidia.com/quadro_rtx_6000", "{role}");
}

// ---- 2. devices the kubelet allocated ----------------------------------------------------------

#[test]
fn device_a_pod_holds_is_refused_with_the_pod_named() {
    let t = machines::intel_gpu_server();
    checkpoint(&t, "intel.com/qat_vf", &[intel::QAT_VFS[1]]);
    let p = plan(&t, QAT_VFS);
    let why = refusal(&p, intel::QAT_VFS[1]);
    assert!(why.contains(&format!("pod {POD}")), "{why}");
    assert!(why.contains("container compute") && why.contains("intel.com/qat_vf"), "{why}");
    for vf in [intel::QAT_VFS[0], intel::QAT_VFS[2], intel::QAT_VFS[3]] {
        assert!(matches!(device(&p, vf).action, Action::Bind { .. }), "{vf}: each VF has its own group");
    }

    let (_d, cfg) = config_file(QAT_VFS);
    let out = nodeprep(t.root(), &["bind", "--config", cfg.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!(
            "refuse  0000:5e:01.1 for intel.com/qat_vf (devices[0]): the kubelet allocated it to pod {POD}"
        )),
        "{}",
        stdout(&out)
    );
}

#[test]
fn device_a_pod_holds_on_vfio_pci_is_already_bound_not_refused() {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QAT_VFS).expect("bind");
    assert_eq!(driver(&t, intel::QAT_VFS[1]).as_deref(), Some("vfio-pci"));
    // Now a VM pod gets the VF.
    checkpoint(&t, "intel.com/qat_vf", &[intel::QAT_VFS[1]]);
    let p = plan(&t, QAT_VFS);
    assert_eq!(device(&p, intel::QAT_VFS[1]).action, Action::AlreadyBound);
    assert_eq!(p.refused().count(), 0);
    let mut again = sim.restarted();
    let outcomes = run_bind(&t, &mut again, QAT_VFS).expect("bind again");
    assert!(again.log.is_empty(), "no write to a device a pod holds: {:?}", again.log);
    assert_eq!(outcome(&outcomes, intel::QAT_VFS[1]).outcome, "already-bound");
    assert_eq!(outcome(&outcomes, intel::QAT_VFS[1]).vfio_device.as_deref(), Some("/dev/vfio/10"));
}

// ---- 3. companions in use ----------------------------------------------------------------------

#[test]
fn group_whose_companion_a_pod_holds_is_refused_naming_the_companion() {
    let t = machines::intel_gpu_server();
    checkpoint(&t, "example.com/hdmi_audio", &[intel::GPU_B_AUDIO]);
    let p = plan(&t, QUADRO);
    let why = refusal(&p, intel::GPU_B);
    assert!(why.starts_with("0000:af:00.1 in IOMMU group 20: the kubelet allocated it to pod"), "{why}");
    assert!(why.contains(POD), "{why}");
    assert_eq!(p.devices.len(), 1, "a refused group brings no companion along: {p}");
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(outcome(&outcomes, intel::GPU_B).outcome, "refused");
    assert!(sim.log.is_empty());
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"));
}

#[test]
fn group_whose_companion_carries_the_default_route_is_refused_naming_it() {
    let t = HostTree::new();
    t.iommu_unit("dmar0");
    t.pci(&PciFn::new("0000:00:01.0", 0x8086, 0x2030, 0x060400).driver("pcieport").group(1))
        .pci(&PciFn::new("0000:01:00.0", 0x8086, 0x0b2b, 0x120000).parent("0000:00:01.0").driver("idxd").group(5))
        .pci(&PciFn::new("0000:01:00.1", 0x8086, 0x1572, 0x020000).parent("0000:00:01.0").driver("i40e").group(5))
        .net("0000:01:00.1", "eth0", "up")
        .routes(&["eth0"]);
    let p = plan(&t, "devices:\n  - resourceName: intel.com/dsa\n    selectors: {devices: [\"0b2b\"]}\n");
    let why = refusal(&p, "0000:01:00.0");
    assert!(
        why.starts_with("0000:01:00.1 in IOMMU group 5: the host uses it: eth0 carries the default route"),
        "{why}"
    );
}

#[test]
fn group_whose_companion_an_entry_leaves_alone_is_refused_naming_it() {
    let t = machines::intel_gpu_server();
    let p = plan(
        &t,
        "devices:\n  - resourceName: nvidia.com/quadro\n    selectors: {pciAddresses: [\"0000:af:00.0\"]}\n  \
         - resourceName: nvidia.com/hdmi\n    bind: none\n    selectors: {pciAddresses: [\"0000:af:00.1\"]}\n",
    );
    let why = refusal(&p, intel::GPU_B);
    assert_eq!(why, "0000:af:00.1 shares IOMMU group 20 and its config entry says bind: none");
    assert_eq!(device(&p, intel::GPU_B_AUDIO).action, Action::Leave);
}

// ---- 4. no IOMMU -----------------------------------------------------------------------------

const AMD_ALL: &str = r#"
devices:
  - resourceName: broadcom.com/bcm5720
    selectors: {vendors: ["14e4"]}
  - resourceName: amd.com/sata
    selectors: {pciAddresses: ["0000:02:00.0"]}
"#;

#[test]
fn without_an_iommu_everything_is_refused_and_nothing_written() {
    let t = machines::amd_iommu_off();
    let p = plan(&t, AMD_ALL);
    assert_eq!(p.devices.len(), 3);
    for a in [amd::NIC0, amd::NIC1, amd::SATA] {
        let why = refusal(&p, a);
        assert!(why.contains("no IOMMU group") && why.contains("IOMMU is off"), "{a}: {why}");
        assert_eq!(device(&p, a).iommu_group, None);
    }
    assert!(!p.load_vfio, "nothing to bind, so no module to load");

    let before = snapshot(t.root());
    let (_d, cfg) = config_file(AMD_ALL);
    let out = nodeprep(t.root(), &["bind", "--config", cfg.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().filter(|l| l.starts_with("refuse  ") && l.contains("no IOMMU group")).count(),
        3,
        "{}",
        stdout(&out)
    );
    assert_eq!(snapshot(t.root()), before);

    // Applying it for real writes nothing either: no sysfs write, no module, no state file.
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, AMD_ALL).expect("bind");
    assert!(outcomes.iter().all(|o| o.outcome == "refused" && o.writes == 0), "{outcomes:#?}");
    assert!(sim.log.is_empty() && sim.modules.is_empty());
    assert_eq!(snapshot(t.root()), before, "not even var/lib/nodeprep");
}

#[test]
fn a_selected_pci_bridge_is_refused_and_stays_on_pcieport() {
    // The root port above the GPU (class 0604), selected with the GPU behind it.
    const BRIDGE: &str = r#"
devices:
  - resourceName: example.com/root_port
    selectors: {pciAddresses: ["0000:00:01.0"]}
"#;
    let t = gpu_box();
    let p = plan(&t, BRIDGE);
    let why = refusal(&p, "0000:00:01.0");
    assert!(why.contains("it is a PCI bridge") && why.contains("unbinding pcieport"), "{why}");
    assert!(!p.load_vfio && p.writes_needed() == 0, "{p}");

    let before = snapshot(t.root());
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, BRIDGE).expect("bind");
    assert_eq!(outcome(&outcomes, "0000:00:01.0").outcome, "refused", "{outcomes:#?}");
    assert!(sim.log.is_empty(), "no sysfs write: {:?}", sim.log);
    assert_eq!(driver(&t, "0000:00:01.0").as_deref(), Some("pcieport"));
    assert_eq!(driver(&t, GPU).as_deref(), Some("nouveau"));
    assert_eq!(snapshot(t.root()), before);
}

// ---- 5. apply, idempotence, unbind ---------------------------------------------------------------

#[test]
fn apply_binds_the_quadro_group_in_three_writes_each_and_unbind_restores_it() {
    let t = machines::intel_gpu_server();
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(
        sim.log,
        vec![
            w(&override_path(gpu), "vfio-pci"),
            w("sys/bus/pci/drivers/nouveau/unbind", gpu),
            w("sys/bus/pci/drivers_probe", gpu),
            w(&override_path(audio), "vfio-pci"),
            w("sys/bus/pci/drivers/snd_hda_intel/unbind", audio),
            w("sys/bus/pci/drivers_probe", audio),
        ]
    );
    for a in [gpu, audio] {
        let o = outcome(&outcomes, a);
        assert_eq!((o.outcome.as_str(), o.writes), ("bound", 3), "{o:?}");
        assert_eq!(o.vfio_device.as_deref(), Some("/dev/vfio/20"));
        assert_eq!(driver(&t, a).as_deref(), Some("vfio-pci"));
        assert_eq!(override_text(&t, a), "vfio-pci");
        assert!(t.path(format!("sys/bus/pci/drivers/vfio-pci/{a}")).exists(), "back link");
    }
    assert!(t.path("dev/vfio/20").exists());
    assert!(!t.path("sys/bus/pci/drivers/nouveau").join(gpu).exists());
    let s = state(&t);
    assert_eq!(s.devices.len(), 2);
    assert_eq!(s.devices[&addr(gpu)], record(Some("nouveau"), Some("nvidia.com/quadro_rtx_6000")));
    assert_eq!(s.devices[&addr(audio)], record(Some("snd_hda_intel"), None));
    // Discovery agrees.
    let inv = pci::discover(&host(&t)).expect("discover");
    assert_eq!(inv.device(&addr(gpu)).and_then(|d| d.driver.as_deref()), Some("vfio-pci"));

    // Again, with a fresh plan: nothing to do.
    let p = plan(&t, QUADRO);
    assert_eq!(p.writes_needed(), 0);
    let mut again = sim.restarted();
    let outcomes = run_bind(&t, &mut again, QUADRO).expect("bind again");
    assert!(again.log.is_empty(), "idempotent: {:?}", again.log);
    assert!(outcomes.iter().all(|o| o.outcome == "already-bound" && o.writes == 0), "{outcomes:#?}");
    assert_eq!(state(&t), s, "the record is unchanged");

    // Unbind gives both back.
    let plan_u = unbind_plan(&t, &[]);
    assert_eq!(plan_u.len(), 2);
    assert_eq!(plan_u[0].action, RestoreAction::Restore { to: Some("nouveau".into()) });
    let mut un = sim.restarted();
    let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
    assert_eq!(
        un.log,
        vec![
            w(&override_path(gpu), "\n"),
            w("sys/bus/pci/drivers/vfio-pci/unbind", gpu),
            w("sys/bus/pci/drivers_probe", gpu),
            w(&override_path(audio), "\n"),
            w("sys/bus/pci/drivers/vfio-pci/unbind", audio),
            w("sys/bus/pci/drivers_probe", audio),
        ]
    );
    assert_eq!(outcome(&outcomes, gpu).detail.as_deref(), Some("nouveau"));
    assert!(outcomes.iter().all(|o| o.outcome == "restored" && o.writes == 3), "{outcomes:#?}");
    assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"));
    assert_eq!(driver(&t, audio).as_deref(), Some("snd_hda_intel"));
    assert_eq!(override_text(&t, gpu), "(null)");
    assert_eq!(override_text(&t, audio), "(null)");
    assert!(!t.path("dev/vfio/20").exists(), "the group node goes with the last vfio-pci device");
    assert!(t.path("dev/vfio/6").exists(), "the T4's group is untouched");
    assert!(t.path(bind::state::STATE_FILE).exists());
    assert!(state(&t).devices.is_empty());
    // A second unbind has nothing to do.
    let mut none = sim.restarted();
    assert!(run_unbind(&t, &mut none, &[]).expect("unbind again").is_empty());
    assert!(none.log.is_empty());
}

/// A device whose `driver_override` an admin had set gets it back on unbind: the state file
/// records it for that purpose (`Record::original_override`).
#[test]
fn unbind_restores_an_original_driver_override() {
    let t = machines::intel_gpu_server();
    let audio = intel::GPU_B_AUDIO;
    t.file(&format!("{}/driver_override", t.pci_dir(audio).display()), "snd_hda_intel\n");
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(state(&t).devices[&addr(audio)].original_override.as_deref(), Some("snd_hda_intel"));
    let mut un = sim.restarted();
    run_unbind(&t, &mut un, &[]).expect("unbind");
    assert_eq!(driver(&t, audio).as_deref(), Some("snd_hda_intel"));
    assert_eq!(override_text(&t, audio), "snd_hda_intel", "writes: {:?}", un.log);
}

#[test]
fn unbind_binds_the_original_driver_directly_when_vfio_pci_ids_claims_the_device() {
    // `options vfio-pci ids=10de:10f7`: drivers_probe gives the audio function to vfio-pci.
    let t = machines::intel_gpu_server();
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO).expect("bind");
    let mut un = sim.restarted();
    un.vfio_pci_ids(&["10de:10f7"]);
    let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
    assert_eq!(outcome(&outcomes, audio).outcome, "restored", "{outcomes:#?}");
    assert_eq!(driver(&t, audio).as_deref(), Some("snd_hda_intel"));
    assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"));
    let audio_writes = un.writes_for(audio);
    assert!(
        audio_writes.iter().any(|(p, v)| p.ends_with("drivers/snd_hda_intel/bind") && v == audio),
        "{audio_writes:?}"
    );
    assert_eq!(un.writes_to("drivers/vfio-pci/unbind"), 3, "GPU once, audio twice: {:?}", un.log);
    assert!(!t.path("dev/vfio/20").exists());
    assert!(state(&t).devices.is_empty());
}

#[test]
fn unbind_of_chosen_addresses_leaves_the_others_bound() {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");
    let mut un = sim.restarted();
    let outcomes = run_unbind(&t, &mut un, &[intel::QAT_VFS[0]]).expect("unbind");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(driver(&t, intel::QAT_VFS[0]).as_deref(), Some("c6xxvf"));
    assert_eq!(driver(&t, intel::QAT_VFS[1]).as_deref(), Some("vfio-pci"));
    assert_eq!(un.log.len(), 3);
    let s = state(&t);
    assert!(!s.devices.contains_key(&addr(intel::QAT_VFS[0])));
    assert_eq!(s.devices.len(), 3);
}

// ---- 6. loading vfio-pci ---------------------------------------------------------------------------

#[test]
fn vfio_pci_is_loaded_before_the_first_write() {
    let t = gpu_box();
    let p = plan(&t, QUADRO);
    assert!(p.load_vfio, "{p}");
    assert!(p.to_string().starts_with("load the vfio-pci module\n"), "{p}");
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(
        sim.modules,
        vec![
            ModuleLoad { name: "vfio-pci".into(), writes_before: 0 },
            ModuleLoad { name: "vfio_iommu_type1".into(), writes_before: 0 }
        ]
    );
    assert_eq!(sim.log.len(), 6);
    assert!(outcomes.iter().all(|o| o.outcome == "bound" && o.writes == 3), "{outcomes:#?}");
    assert_eq!(driver(&t, GPU).as_deref(), Some("vfio-pci"));
    assert!(t.path("dev/vfio/vfio").exists() && t.path("dev/vfio/2").exists());
    // Loaded now: a new plan does not ask again.
    assert!(!plan(&t, QUADRO).load_vfio);
}

#[test]
fn module_load_failure_fails_every_device_and_writes_nothing() {
    let t = gpu_box();
    let message = "modprobe: FATAL: Module vfio-pci not found in directory /lib/modules/6.1.0-18-amd64";
    let mut sim = KernelSim::new(&t);
    sim.fail_modules(message);
    let before = snapshot(t.root());
    let outcomes = run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        assert_eq!(o.outcome, "failed", "{o:?}");
        let detail = o.detail.as_deref().unwrap_or_default();
        assert!(detail.contains("load module vfio-pci") && detail.contains(message), "{detail}");
        assert!(o.is_failure());
    }
    assert!(sim.log.is_empty(), "{:?}", sim.log);
    assert_eq!(sim.modules.len(), 1, "nothing more is tried after vfio-pci fails");
    assert_eq!(snapshot(t.root()), before, "no write, no state file");
}

// ---- 7. rollback ---------------------------------------------------------------------------------

#[test]
fn a_group_that_fails_half_way_is_rolled_back() {
    let t = machines::intel_gpu_server();
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let mut sim = KernelSim::new(&t);
    sim.fail_probe_for(audio);
    let outcomes = run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");

    let g = outcome(&outcomes, gpu);
    assert_eq!(g.outcome, "rolled-back");
    let detail = g.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("rolled back with its IOMMU group 20") && detail.contains("0000:af:00.1 failed"),
        "{detail}"
    );
    let a = outcome(&outcomes, audio);
    assert_eq!(a.outcome, "failed");
    assert!(a.detail.as_deref().unwrap_or_default().contains("vfio-pci did not take it (driver now: none)"), "{a:?}");
    // 3 to bind + 3 to restore; 3 to try + 2 to restore (it had no driver left to unbind).
    assert_eq!((g.writes, a.writes), (6, 5));
    assert_eq!(sim.writes_for(gpu).len(), 6);
    assert_eq!(sim.writes_for(audio).len(), 5);

    assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"));
    assert_eq!(driver(&t, audio).as_deref(), Some("snd_hda_intel"));
    assert_eq!((override_text(&t, gpu), override_text(&t, audio)), ("(null)".into(), "(null)".into()));
    assert!(!t.path("dev/vfio/20").exists());
    let s = state(&t);
    assert!(!s.devices.contains_key(&addr(gpu)) && !s.devices.contains_key(&addr(audio)), "{s:?}");

    // Other groups are not affected.
    for vf in &intel::QAT_VFS[..2] {
        assert_eq!(outcome(&outcomes, vf).outcome, "bound");
        assert_eq!(driver(&t, vf).as_deref(), Some("vfio-pci"));
        assert!(s.devices.contains_key(&addr(vf)));
    }

    // Once the kernel takes the audio function, a rerun binds the group.
    let mut fixed = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut fixed, QUADRO_AND_QAT).expect("bind");
    assert_eq!(outcome(&outcomes, gpu).outcome, "bound");
    assert_eq!(outcome(&outcomes, audio).outcome, "bound");
    assert_eq!(fixed.log.len(), 6);
}

// ---- 8. crash safety ----------------------------------------------------------------------------

/// The devices [`QUADRO_AND_QAT`] moves, with their original drivers.
fn quadro_and_qat_originals() -> [(&'static str, &'static str); 4] {
    [
        (intel::GPU_B, "nouveau"),
        (intel::GPU_B_AUDIO, "snd_hda_intel"),
        (intel::QAT_VFS[0], "c6xxvf"),
        (intel::QAT_VFS[1], "c6xxvf"),
    ]
}

fn assert_all_on_vfio(t: &HostTree, when: &str) {
    for (a, original) in quadro_and_qat_originals() {
        assert_eq!(driver(t, a).as_deref(), Some("vfio-pci"), "{when}: {a}");
        let rec = state(t).devices.get(&addr(a)).cloned();
        assert_eq!(
            rec.as_ref().and_then(|r| r.original_driver.as_deref()),
            Some(original),
            "{when}: {a} must be recorded with its original driver: {rec:?}"
        );
    }
    assert!(t.path("dev/vfio/20").exists(), "{when}");
}

fn assert_all_original(t: &HostTree, when: &str) {
    for (a, original) in quadro_and_qat_originals() {
        assert_eq!(driver(t, a).as_deref(), Some(original), "{when}: {a}");
        assert_eq!(override_text(t, a), "(null)", "{when}: {a}");
    }
    assert!(state(t).devices.is_empty(), "{when}: {:?}", state(t));
    assert!(!t.path("dev/vfio/20").exists(), "{when}");
    assert!(t.path("dev/vfio/6").exists(), "{when}: the T4 is never touched");
}

/// Writes a full bind of [`QUADRO_AND_QAT`] makes.
fn full_bind_writes() -> usize {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    let outcomes = run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");
    assert!(outcomes.iter().all(|o| o.outcome == "bound" && o.writes == 3), "{outcomes:#?}");
    assert_all_on_vfio(&t, "full run");
    sim.log.len()
}

#[test]
fn crash_at_every_write_of_bind_then_rerun_converges() {
    let total = full_bind_writes();
    assert_eq!(total, 12, "3 writes for each of 4 devices");
    for n in 0..=total {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        sim.fail_after(n);
        let first = run_bind(&t, &mut sim, QUADRO_AND_QAT);
        let when = format!("killed after {n} writes");
        if n < total {
            let failed = first.as_ref().map(|o| o.iter().any(DeviceOutcome::is_failure)).unwrap_or(true);
            assert!(failed, "{when}: the first run must report a failure: {first:?}");
        }
        // The state was written before the first write: a device not (or no longer) as it was
        // is recorded with its original driver. (One the failed run left, or put back, as it
        // was may have lost its record: its rollback succeeded.)
        for (a, original) in quadro_and_qat_originals() {
            let rec = state(&t).devices.get(&addr(a)).cloned();
            let untouched = driver(&t, a).as_deref() == Some(original) && override_text(&t, a) == "(null)";
            if !untouched || rec.is_some() {
                assert_eq!(rec.and_then(|r| r.original_driver), Some(original.to_owned()), "{when}: {a}");
            }
        }

        let mut rerun = sim.restarted();
        let outcomes = run_bind(&t, &mut rerun, QUADRO_AND_QAT).expect("rerun");
        assert!(!outcomes.iter().any(DeviceOutcome::is_failure), "{when}: {outcomes:#?}");
        assert_all_on_vfio(&t, &when);
        assert_eq!(rerun.log.len(), total - n, "{when}: the rerun makes only the writes still missing");

        let mut un = sim.restarted();
        let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
        assert!(outcomes.iter().all(|o| o.outcome == "restored"), "{when}: {outcomes:#?}");
        assert_all_original(&t, &when);
    }
}

#[test]
fn crash_at_every_write_of_bind_then_unbind_restores_everything() {
    let total = full_bind_writes();
    for n in 0..=total {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        sim.fail_after(n);
        let _ = run_bind(&t, &mut sim, QUADRO_AND_QAT);
        let when = format!("bind killed after {n} writes, then unbind");
        let mut un = sim.restarted();
        let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
        assert!(!outcomes.iter().any(DeviceOutcome::is_failure), "{when}: {outcomes:#?}");
        assert_all_original(&t, &when);
    }
}

#[test]
fn crash_at_every_write_of_unbind_then_rerun_converges() {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");
    let mut un = sim.restarted();
    run_unbind(&t, &mut un, &[]).expect("unbind");
    let total = un.log.len();
    assert_eq!(total, 12, "3 writes for each of 4 devices");
    for n in 0..=total {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");
        let when = format!("unbind killed after {n} writes");
        let mut crashing = sim.restarted();
        crashing.fail_after(n);
        let _ = run_unbind(&t, &mut crashing, &[]);
        for (a, original) in quadro_and_qat_originals() {
            // Until a device is restored, its record is kept.
            if driver(&t, a).as_deref() != Some(original) {
                assert!(state(&t).devices.contains_key(&addr(a)), "{when}: {a} lost its record");
            }
        }
        let mut rerun = sim.restarted();
        let outcomes = run_unbind(&t, &mut rerun, &[]).expect("rerun");
        assert!(!outcomes.iter().any(DeviceOutcome::is_failure), "{when}: {outcomes:#?}");
        assert_all_original(&t, &when);
        assert_eq!(rerun.log.len(), total - n, "{when}: the rerun makes only the writes still missing");
    }
}

#[test]
fn crash_during_rollback_then_rerun_leaves_the_group_on_its_host_drivers() {
    // Bind of the Quadro group with vfio-pci refusing the audio function: 3 + 3 writes, then
    // the rollback: 3 for the GPU and 2 for the audio function.
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let total = {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        sim.fail_probe_for(audio);
        run_bind(&t, &mut sim, QUADRO).expect("bind");
        sim.log.len()
    };
    assert_eq!(total, 11);
    // A kill after 3 to 7 writes leaves the GPU on vfio-pci; the rerun must roll it back too
    // (see `rollback_after_a_crash_includes_members_bound_by_the_crashed_run`).
    for n in 0..=total {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        sim.fail_probe_for(audio).fail_after(n);
        let _ = run_bind(&t, &mut sim, QUADRO);
        let when = format!("killed after {n} writes");
        let mut rerun = sim.restarted();
        let outcomes = run_bind(&t, &mut rerun, QUADRO).expect("rerun");
        assert_eq!(outcome(&outcomes, audio).outcome, "failed", "{when}");
        assert_eq!(outcome(&outcomes, gpu).outcome, "rolled-back", "{when}");
        assert_eq!(driver(&t, gpu).as_deref(), Some("nouveau"), "{when}");
        assert_eq!(driver(&t, audio).as_deref(), Some("snd_hda_intel"), "{when}");
        assert_eq!((override_text(&t, gpu), override_text(&t, audio)), ("(null)".into(), "(null)".into()), "{when}");
        assert!(state(&t).devices.is_empty(), "{when}: {:?}", state(&t));
        assert!(!t.path("dev/vfio/20").exists(), "{when}");
    }
}

/// A run killed after the GPU of a group was bound, rerun on a kernel whose vfio-pci refuses the
/// group's other function, must still roll back the whole group: the first run moved the GPU
/// (it is in the state file), so the rerun's rollback must give it back too.
#[test]
fn rollback_after_a_crash_includes_members_bound_by_the_crashed_run() {
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    // Killed after 3 to 5 writes: the GPU is bound, the audio function is being moved; after 6
    // or 7, the rollback of the GPU had begun (its override may be cleared).
    for n in 3..=7 {
        let t = machines::intel_gpu_server();
        let mut sim = KernelSim::new(&t);
        sim.fail_probe_for(audio).fail_after(n);
        let _ = run_bind(&t, &mut sim, QUADRO);
        assert_eq!(driver(&t, gpu).as_deref(), Some("vfio-pci"), "killed after {n}: the GPU was bound");
        assert!(state(&t).devices.contains_key(&addr(gpu)), "killed after {n}: nodeprep moved it and knows");
        let mut rerun = sim.restarted();
        let outcomes = run_bind(&t, &mut rerun, QUADRO).expect("rerun");
        assert_eq!(outcome(&outcomes, audio).outcome, "failed");
        assert_eq!(
            driver(&t, gpu).as_deref(),
            Some("nouveau"),
            "killed after {n}: the GPU is left on vfio-pci in a group that cannot be used \
             (rerun outcome for it: {:?})",
            outcome(&outcomes, gpu)
        );
        assert!(!t.path("dev/vfio/20").exists());
    }
}

// ---- 9. unbind of a device a pod holds --------------------------------------------------------------

#[test]
fn unbind_refuses_a_device_a_pod_holds() {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO_AND_QAT).expect("bind");
    checkpoint(&t, "intel.com/qat_vf", &[intel::QAT_VFS[0]]);

    let p = unbind_plan(&t, &[]);
    let held = p.iter().find(|r| r.address == addr(intel::QAT_VFS[0])).expect("recorded");
    match &held.action {
        RestoreAction::Refused { reason } => {
            assert!(reason.contains(&format!("pod {POD}")) && reason.contains("intel.com/qat_vf"), "{reason}")
        }
        other => panic!("must be refused: {other:?}"),
    }
    assert_eq!(p.iter().filter(|r| matches!(r.action, RestoreAction::Restore { .. })).count(), 3);

    let before = snapshot(t.root());
    let out = nodeprep(t.root(), &["unbind", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "a refusal makes a dry run exit 1, like bind: {}", stderr(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with(intel::QAT_VFS[0])).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("\"refused\"") && line.contains(POD), "{line}");
    assert!(text.contains("0000:af:00.0 {\"action\":\"restore\",\"to\":\"nouveau\"}"), "{text}");
    let json = nodeprep(t.root(), &["unbind", "--dry-run", "-o", "json", intel::QAT_VFS[0]]);
    let v: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["action"], "refused");
    assert_eq!(snapshot(t.root()), before, "dry runs change nothing");

    // Applied: the held VF stays, the rest are restored.
    let mut un = sim.restarted();
    let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
    assert_eq!(outcome(&outcomes, intel::QAT_VFS[0]).outcome, "refused");
    assert_eq!(driver(&t, intel::QAT_VFS[0]).as_deref(), Some("vfio-pci"));
    assert!(un.writes_for(intel::QAT_VFS[0]).is_empty());
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"));
    assert_eq!(state(&t).devices.keys().copied().collect::<Vec<_>>(), vec![addr(intel::QAT_VFS[0])]);

    // An address nodeprep did not bind is an error, nothing changed.
    let out = nodeprep(t.root(), &["unbind", "--dry-run", intel::NIC]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("0000:02:00.0 was not bound by nodeprep"), "{}", stderr(&out));
}

#[test]
fn unbind_refuses_the_audio_function_of_a_gpu_a_pod_holds_naming_the_pod() {
    let t = machines::intel_gpu_server();
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let mut sim = KernelSim::new(&t);
    run_bind(&t, &mut sim, QUADRO).expect("bind");
    assert_eq!(driver(&t, audio).as_deref(), Some("vfio-pci"));
    checkpoint(&t, "nvidia.com/quadro_rtx_6000", &[gpu]);

    let p = unbind_plan(&t, &[audio]);
    assert_eq!(p.len(), 1);
    match &p[0].action {
        RestoreAction::Refused { reason } => assert!(
            reason.contains(&format!("{gpu} in IOMMU group 20 is allocated to pod {POD}"))
                && reason.contains("restoring a member of a group in use crashes hosts before Linux 5.19"),
            "{reason}"
        ),
        other => panic!("the audio function must be refused: {other:?}"),
    }

    let mut un = sim.restarted();
    let outcomes = run_unbind(&t, &mut un, &[]).expect("unbind");
    assert_eq!(outcome(&outcomes, gpu).outcome, "refused");
    assert_eq!(outcome(&outcomes, audio).outcome, "refused");
    assert!(un.log.is_empty(), "no write to a group in use: {:?}", un.log);
    assert_eq!(driver(&t, audio).as_deref(), Some("vfio-pci"));
    assert_eq!(state(&t).devices.len(), 2, "both still recorded");
}

#[test]
fn a_failed_bind_in_a_group_a_pod_holds_is_not_rolled_back() {
    // A run killed after binding the GPU; the pod then gets the GPU; the rerun fails on the
    // audio function. Rolling back would hand a member of a group in use to a host driver.
    let (gpu, audio) = (intel::GPU_B, intel::GPU_B_AUDIO);
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    sim.fail_probe_for(audio).fail_after(3);
    let _ = run_bind(&t, &mut sim, QUADRO);
    assert_eq!(driver(&t, gpu).as_deref(), Some("vfio-pci"));
    checkpoint(&t, "nvidia.com/quadro_rtx_6000", &[gpu]);

    let mut rerun = sim.restarted();
    let outcomes = run_bind(&t, &mut rerun, QUADRO).expect("rerun");
    let a = outcome(&outcomes, audio);
    assert_eq!(a.outcome, "failed");
    let detail = a.detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("not rolled back")
            && detail.contains(&format!("{gpu} in IOMMU group 20 is allocated to pod {POD}"))
            && detail.contains("Linux 5.19"),
        "{detail}"
    );
    assert!(rerun.writes_for(gpu).is_empty(), "{:?}", rerun.log);
    assert_eq!(driver(&t, gpu).as_deref(), Some("vfio-pci"), "the pod's GPU stays");
    assert_ne!(driver(&t, audio).as_deref(), Some("snd_hda_intel"), "not handed to a host driver");
    assert!(state(&t).devices.contains_key(&addr(audio)), "still recorded for a later unbind");
}

#[test]
fn the_checkpoint_is_read_from_the_plugin_dir_in_use() {
    let t = machines::intel_gpu_server();
    let root = host(&t);
    let config = Config::parse(QAT_VFS).expect("valid");
    let held = intel::QAT_VFS[0];

    // The host's /var/lib/kubelet is a link to a data disk (absolute: valid only inside the
    // root); the default plugin directory is found through it.
    let _ = fs::remove_dir_all(t.path("var/lib/kubelet"));
    fs::create_dir_all(t.path("var/lib")).expect("mkdir");
    std::os::unix::fs::symlink("/data/kubelet", t.path("var/lib/kubelet")).expect("symlink");
    checkpoint_in(&t.path("data/kubelet/device-plugins"), "intel.com/qat_vf", &[held]);
    let p = bind::plan_for(&root, &config, &kubelet::plugin_dir(&root, None)).expect("plan");
    assert!(refusal(&p, held).contains(&format!("pod {POD}")), "{p}");

    // --plugin-dir: the checkpoint there counts, not the default's.
    let other = tempfile::tempdir().expect("tempdir");
    let (_d, cfg) = config_file(QAT_VFS);
    let cfg = cfg.to_str().expect("utf-8");
    let dir = other.path().to_str().expect("utf-8");
    let out = nodeprep(t.root(), &["bind", "--config", cfg, "--dry-run", "--plugin-dir", dir]);
    assert!(!stdout(&out).contains(POD), "no checkpoint in {dir} yet: {}", stdout(&out));
    checkpoint_in(other.path(), "intel.com/qat_vf", &[intel::QAT_VFS[1]]);
    let out = nodeprep(t.root(), &["bind", "--config", cfg, "--dry-run", "--plugin-dir", dir]);
    let text = stdout(&out);
    let line = text.lines().find(|l| l.contains(intel::QAT_VFS[1])).unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("refuse") && line.contains(POD), "{text}");
    assert!(text.lines().any(|l| l.starts_with("bind") && l.contains(held)), "{text}");

    // Unreadable: fail closed, naming the file; nothing planned, nothing changed.
    fs::write(other.path().join(kubelet::CHECKPOINT), "{garbage").expect("write");
    let before = snapshot(t.root());
    for args in [vec!["bind", "--config", cfg, "--plugin-dir", dir], vec!["unbind", "--dry-run", "--plugin-dir", dir]] {
        let out = nodeprep(t.root(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{dir}/kubelet_internal_checkpoint")) && err.contains("nothing changed"),
            "{err}"
        );
    }
    assert_eq!(snapshot(t.root()), before);
}

// ---- 10. config check ----------------------------------------------------------------------------

#[test]
fn config_check_lists_what_each_entry_selects() {
    let t = machines::intel_gpu_server();
    let (_d, cfg) = config_file(FULL);
    let out = nodeprep(t.root(), &["config", "check", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{}: valid, 7 entries\n", cfg.display())), "{text}");
    for line in [
        "  pciHostDevices[0]: 0000:3b:00.0 as nvidia.com/TU104GL_Tesla_T4",
        "  devices[0]: 0000:af:00.0 as nvidia.com/quadro_rtx_6000",
        "  devices[1]: 0000:5e:01.0 as intel.com/qat_vf, 0000:5e:01.1 as intel.com/qat_vf, 0000:5e:01.2 as intel.com/qat_vf, 0000:5e:01.3 as intel.com/qat_vf",
        "  devices[2]: 0000:18:00.0 as example.com/boot_nvme",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }

    // An entry that selects nothing here says so; a derived resource name comes from pci.ids.
    let (_d2, cfg) =
        config_file("devices:\n  - selectors: {vendors: [\"1af4\"]}\n  - selectors: {devices: [\"1e30\"]}\n");
    let out = nodeprep(t.root(), &["config", "check", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("  devices[0]: selects nothing on this host"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("  devices[1]: 0000:af:00.0 as nvidia.com/TU102GL_QUADRO_RTX_6000_8000"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn config_check_lists_every_problem_of_an_invalid_config() {
    let t = machines::intel_gpu_server();
    let (_d, cfg) = config_file(
        "pciHostDevices:\n  - pciDeviceSelector: \"10DE\"\n    resourceName: t4\ndevices:\n  - bind: maybe\n    \
         selectors: {vendor: [\"8086\"]}\n  - resourceName: kubernetes.io/qat\n    selectors: {classes: [\"0b4\"]}\n",
    );
    let out = nodeprep(t.root(), &["config", "check", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        "refused, nothing changed",
        "pciHostDevices[0]: pciDeviceSelector: \"10DE\" is not VENDOR:DEVICE",
        "pciHostDevices[0]: resourceName: \"t4\" needs a domain prefix",
        "devices[0]: bind: \"maybe\" is not \"vfio-pci\" or \"none\"",
        "devices[0].selectors: unknown field \"vendor\"",
        "devices[1]: resourceName: \"kubernetes.io/qat\": the kubernetes.io domain is reserved",
        "devices[1].selectors.classes: \"0b4\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // An entry whose selectors were all invalid is reported for those, not again as "selects
    // nothing".
    assert!(!err.contains("select nothing in particular"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("  - ")).count(), 6, "{err}");
    assert!(stdout(&out).is_empty());

    // An unreadable file is status 2.
    let out = nodeprep(t.root(), &["config", "check", "/nonexistent/nodeprep.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn two_entries_claiming_one_device_on_the_host_are_refused_naming_both() {
    let t = machines::intel_gpu_server();
    let text = "devices:\n  - resourceName: intel.com/qat_vf\n    selectors: {devices: [\"37c9\"]}\n  \
                - resourceName: intel.com/qat_one\n    selectors: {pciAddresses: [\"0000:5e:01.2\"]}\n";
    assert!(Config::parse(text).is_ok(), "valid on its own: the conflict exists only on a host");
    let (_d, cfg) = config_file(text);
    let out = nodeprep(t.root(), &["config", "check", cfg.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("0000:5e:01.2 is claimed by both devices[0] and devices[1]"), "{err}");

    // bind refuses it before touching anything.
    let before = snapshot(t.root());
    let out = nodeprep(t.root(), &["bind", "--config", cfg.to_str().expect("utf-8"), "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("claimed by both devices[0] and devices[1]"), "{}", stderr(&out));
    assert_eq!(snapshot(t.root()), before);
}

/// A `drivers` selector names the driver devices have before nodeprep binds them; once bound,
/// they must keep matching (by the driver recorded in the state file), or they would stop being
/// advertised and the next plan would drop them.
#[test]
fn a_drivers_selector_keeps_matching_devices_nodeprep_bound() {
    const BY_DRIVER: &str = "devices:\n  - resourceName: intel.com/qat_vf\n    selectors: {drivers: [\"c6xxvf\"]}\n";
    let t = machines::intel_gpu_server();
    let root = host(&t);
    let mut sim = KernelSim::new(&t);
    let config = Config::parse(BY_DRIVER).expect("valid");
    let plugins = kubelet::plugin_dir(&root, None);
    let (_, outcomes) = bind::bind_per_config(&root, &config, &plugins, &mut sim).expect("bind");
    assert_eq!(outcomes.iter().filter(|o| o.outcome == "bound").count(), 4, "{outcomes:?}");
    for vf in intel::QAT_VFS {
        assert_eq!(driver(&t, vf).as_deref(), Some("vfio-pci"));
    }

    // The next plan still selects all four, now with nothing to do.
    let again = bind::plan_for(&root, &config, &plugins).expect("plan");
    let kept: Vec<String> =
        again.devices.iter().filter(|d| d.action == Action::AlreadyBound).map(|d| d.address.to_string()).collect();
    assert_eq!(kept, intel::QAT_VFS.to_vec(), "{again}");

    // And the device plugins still advertise them, healthy.
    let inv = pci::discover(&root).expect("discover");
    let original = State::load(&root).expect("state").original_drivers();
    let devices = nodeprep::deviceplugin::monitor::devices_for(&inv, &config, &original).expect("claims");
    let qat = &devices["intel.com/qat_vf"];
    assert_eq!(qat.len(), 4);
    assert!(qat.iter().all(|d| d.healthy), "{qat:?}");
    // Without the records the selector would match nothing: the reason for them.
    assert!(
        nodeprep::deviceplugin::monitor::devices_for(&inv, &config, &Default::default()).expect("claims").is_empty()
    );
}
