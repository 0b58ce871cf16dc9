//! Giving devices back (`nodeprep::bind::release`) on a fixture host through the simulated
//! kernel: a device the config stops selecting goes back to its original driver with its whole
//! IOMMU group; one a pod or DRA claim holds is pending until the holder is gone; `bind: none`
//! and DRA `atRest: host` give back too; `release: manual` keeps today's behaviour; a restore
//! killed at any write converges on the next round. Then `nodeprep status` over the same host.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use nodeprep::bind::{self, ReleaseAction, Released, State};
use nodeprep::config::Config;
use nodeprep::host::HostRoot;
use nodeprep::model::{Holder, PciAddress, PodView};
use serde_json::Value;
use support::HostTree;
use support::cli::{nodeprep, stderr, stdout};
use support::kernel_sim::KernelSim;
use support::machines::{self, intel};

/// The Quadro, for a device plugin; its HDMI audio function is bound with it.
const QUADRO: &str = r#"
devices:
  - resourceName: nvidia.com/quadro_rtx_6000
    selectors: {vendors: ["10de"], devices: ["1e30"]}
"#;

/// Nothing selected.
const NOTHING: &str = "devices: []\n";

const POD: &str = "4f0c2a7e-9b1d-4c3e-8a55-0d6b2f1e7c90";

fn config(text: &str) -> Config {
    Config::parse(text).expect("valid config")
}

fn plugins(t: &HostTree) -> PathBuf {
    t.path("var/lib/kubelet/device-plugins")
}

fn driver(t: &HostTree, a: &str) -> Option<String> {
    let target = fs::read_link(t.path(format!("sys/bus/pci/devices/{a}/driver"))).ok()?;
    target.file_name().and_then(|n| n.to_str()).map(str::to_owned)
}

fn recorded(t: &HostTree) -> BTreeSet<String> {
    State::load(&HostRoot::new(t.root())).expect("state").devices.keys().map(ToString::to_string).collect()
}

/// A kubelet checkpoint giving `ids` to container `compute` of pod [`POD`].
fn checkpoint(dir: &Path, resource: &str, ids: &[&str]) {
    support::kubelet::write_checkpoint(dir, POD, resource, ids);
}

/// The Quadro bound per config, through the simulator.
fn quadro_bound() -> (HostTree, KernelSim) {
    let t = machines::intel_gpu_server();
    let mut sim = KernelSim::new(&t);
    let root = HostRoot::new(t.root());
    let (_, outcomes) = bind::bind_per_config(&root, &config(QUADRO), &plugins(&t), &mut sim).expect("bind");
    assert!(outcomes.iter().filter(|o| o.outcome == "bound").count() == 2, "{outcomes:#?}");
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("vfio-pci"));
    assert_eq!(driver(&t, intel::GPU_B_AUDIO).as_deref(), Some("vfio-pci"));
    (t, sim)
}

fn release(
    t: &HostTree,
    sim: &mut KernelSim,
    config_text: &str,
    pods: &PodView,
    claims: Vec<(PciAddress, Holder)>,
) -> Released {
    let root = HostRoot::new(t.root());
    bind::release_per_config(&root, &config(config_text), &plugins(t), pods, || Ok(claims), sim).expect("release")
}

fn actions(r: &Released) -> BTreeMap<String, ReleaseAction> {
    r.plan.iter().map(|p| (p.address.to_string(), p.action.clone())).collect()
}

#[test]
fn a_device_the_config_drops_goes_back_with_its_whole_group_and_a_second_round_writes_nothing() {
    let (t, sim) = quadro_bound();
    let mut round = sim.restarted();
    let r = release(&t, &mut round, NOTHING, &PodView::default(), Vec::new());
    let outcomes: BTreeMap<String, (String, Option<String>)> =
        r.outcomes.iter().map(|o| (o.address.to_string(), (o.outcome.clone(), o.detail.clone()))).collect();
    assert_eq!(outcomes[intel::GPU_B], ("restored".to_owned(), Some("nouveau".to_owned())), "{r:#?}");
    assert_eq!(outcomes[intel::GPU_B_AUDIO], ("restored".to_owned(), Some("snd_hda_intel".to_owned())));
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"));
    assert_eq!(driver(&t, intel::GPU_B_AUDIO).as_deref(), Some("snd_hda_intel"));
    assert!(recorded(&t).is_empty(), "records dropped once given back");
    let why: Vec<&str> = r.plan.iter().map(|p| p.why.as_str()).collect();
    assert_eq!(why, ["the config no longer selects it", "the config no longer selects its IOMMU group"]);

    let mut again = sim.restarted();
    let r = release(&t, &mut again, NOTHING, &PodView::default(), Vec::new());
    assert!(r.plan.is_empty() && r.outcomes.is_empty(), "{r:#?}");
    assert!(again.log.is_empty(), "no write: {:?}", again.log);
}

#[test]
fn a_device_a_pod_holds_is_pending_with_its_group_until_the_pod_is_gone() {
    let (t, sim) = quadro_bound();
    // The pod holds the GPU only; its audio function waits with it (same IOMMU group).
    checkpoint(&plugins(&t), "nvidia.com/quadro_rtx_6000", &[intel::GPU_B]);
    let mut round = sim.restarted();
    let r = release(&t, &mut round, NOTHING, &PodView::default(), Vec::new());
    let a = actions(&r);
    for dev in [intel::GPU_B, intel::GPU_B_AUDIO] {
        match &a[dev] {
            ReleaseAction::Pending { holder: Holder::Pod { uid, container, resource, .. } } => {
                assert_eq!((uid.as_str(), container.as_str()), (POD, "compute"));
                assert_eq!(resource, "nvidia.com/quadro_rtx_6000");
            }
            other => panic!("{dev} must be pending, is {other:?}"),
        }
    }
    assert!(round.log.is_empty(), "nothing written while held: {:?}", round.log);
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("vfio-pci"));
    assert_eq!(r.pending_pods(), BTreeSet::from([POD.to_owned()]));

    // The API server lists the node's pods after the checkpoint was read; the pod is not there.
    let gone = PodView { names: BTreeMap::new(), gone: BTreeSet::from([POD.to_owned()]) };
    let mut round = sim.restarted();
    let r = release(&t, &mut round, NOTHING, &gone, Vec::new());
    assert!(r.outcomes.iter().all(|o| o.outcome == "restored") && r.outcomes.len() == 2, "{r:#?}");
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"));
    assert_eq!(driver(&t, intel::GPU_B_AUDIO).as_deref(), Some("snd_hda_intel"));
}

#[test]
fn bind_none_gives_back_release_manual_keeps_and_a_dra_claim_holds() {
    let (t, sim) = quadro_bound();
    // release: manual: nothing moves, the plan says why.
    let manual = format!("release: manual\n{NOTHING}");
    let mut round = sim.restarted();
    let r = release(&t, &mut round, &manual, &PodView::default(), Vec::new());
    assert!(r.plan.iter().all(|p| p.action == ReleaseAction::Manual) && r.plan.len() == 2, "{r:#?}");
    assert!(round.log.is_empty());
    // A DRA claim prepared on the audio function holds the whole group.
    let claim = Holder::Claim { uid: "c-1".into(), name: "vms/gpu".into() };
    let addr: PciAddress = intel::GPU_B_AUDIO.parse().expect("address");
    let mut round = sim.restarted();
    let r = release(&t, &mut round, NOTHING, &PodView::default(), vec![(addr, claim.clone())]);
    assert!(r.plan.iter().all(|p| p.action == ReleaseAction::Pending { holder: claim.clone() }), "{r:#?}");
    assert!(r.plan[0].to_string().contains("held by ResourceClaim vms/gpu (uid c-1)"), "{}", r.plan[0]);
    // The same entry now says bind: none: given back, and said why.
    let leave = QUADRO.replace("selectors:", "bind: none\n    selectors:");
    let mut round = sim.restarted();
    let r = release(&t, &mut round, &leave, &PodView::default(), Vec::new());
    assert_eq!(r.plan[0].why, "its config entry says bind: none");
    assert_eq!(r.outcomes.len(), 2, "{r:#?}");
    assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"));
}

#[test]
fn a_restore_killed_at_any_write_converges_on_the_next_round() {
    let (_, sim) = quadro_bound();
    let total = {
        let (t, sim) = quadro_bound();
        let mut round = sim.restarted();
        release(&t, &mut round, NOTHING, &PodView::default(), Vec::new());
        round.log.len()
    };
    assert!(total >= 4, "a restore writes override, unbind and probe: {total}");
    drop(sim);
    for n in 0..total {
        let (t, sim) = quadro_bound();
        let mut crashing = sim.restarted();
        crashing.fail_after(n);
        let root = HostRoot::new(t.root());
        // The round may fail or report a failed device: either way, nothing is lost.
        let _ = bind::release_per_config(
            &root,
            &config(NOTHING),
            &plugins(&t),
            &PodView::default(),
            || Ok(Vec::new()),
            &mut crashing,
        );
        let mut next = sim.restarted();
        let r = release(&t, &mut next, NOTHING, &PodView::default(), Vec::new());
        let when = format!("killed after {n} of {total} writes");
        assert!(r.outcomes.iter().all(|o| o.outcome != "failed"), "{when}: {r:#?}");
        assert_eq!(driver(&t, intel::GPU_B).as_deref(), Some("nouveau"), "{when}");
        assert_eq!(driver(&t, intel::GPU_B_AUDIO).as_deref(), Some("snd_hda_intel"), "{when}");
        assert!(recorded(&t).is_empty(), "{when}");
    }
}

#[test]
fn status_shows_drivers_holders_and_what_waits() {
    let (t, _sim) = quadro_bound();
    checkpoint(&plugins(&t), "nvidia.com/quadro_rtx_6000", &[intel::GPU_B]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (selects, drops) = (dir.path().join("quadro.yaml"), dir.path().join("nothing.yaml"));
    fs::write(&selects, QUADRO).expect("config");
    fs::write(&drops, NOTHING).expect("config");

    let o = nodeprep(t.root(), &["status", "--config", selects.to_str().expect("utf-8"), "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).expect("json");
    let dev = |a: &str| v["devices"].as_array().and_then(|d| d.iter().find(|d| d["address"] == a)).cloned();
    let gpu = dev(intel::GPU_B).expect("the GPU is listed");
    assert_eq!((gpu["driver"].as_str(), gpu["atRest"].as_str()), (Some("vfio-pci"), Some("vfio-pci")));
    assert_eq!(gpu["serves"], "nvidia.com/quadro_rtx_6000");
    assert_eq!((gpu["heldBy"]["kind"].as_str(), gpu["heldBy"]["uid"].as_str()), (Some("pod"), Some(POD)));
    assert_eq!(gpu["state"], "held");
    let audio = dev(intel::GPU_B_AUDIO).expect("the audio function is listed");
    assert_eq!(audio["state"], "ready");
    assert_eq!(audio["serves"], format!("with {} (IOMMU group)", intel::GPU_B));

    // The config drops the Quadro: pending, and at rest back on its own drivers.
    let o = nodeprep(t.root(), &["status", "--config", drops.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("pending (given back once free):"), "{text}");
    assert!(text.contains(&format!("{} the config no longer selects it: held by pod {POD}", intel::GPU_B)), "{text}");
    let row = text.lines().find(|l| l.starts_with(intel::GPU_B_AUDIO)).expect("audio row");
    assert!(row.contains("vfio-pci") && row.contains("snd_hda_intel") && row.ends_with("pending-release"), "{row}");

    // Without the agent's report and without --config: exit 2, saying what to do.
    let o = nodeprep(t.root(), &["status"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("no agent report") && stderr(&o).contains("--config"), "{}", stderr(&o));
}

#[tokio::test]
async fn a_device_renamed_while_a_pod_holds_it_is_offered_unhealthy_under_the_new_name_until_the_pod_is_gone() {
    use nodeprep::deviceplugin::monitor::{Event, Monitor, MonitorOptions};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    let (t, sim) = quadro_bound();
    checkpoint(&plugins(&t), "nvidia.com/quadro_rtx_6000", &[intel::GPU_B]);
    let renamed = QUADRO.replace("nvidia.com/quadro_rtx_6000", "nvidia.com/quadro_vm");
    let (_config_tx, config_rx) = tokio::sync::watch::channel(std::sync::Arc::new(config(&renamed)));
    let opts = MonitorOptions { rescan_interval: None, ..MonitorOptions::default() };
    let (monitor, mut devices) = Monitor::new(HostRoot::new(t.root()), config_rx, opts);
    let handle = monitor.rescan_handle();
    let first = devices.borrow_and_update().clone();
    let gpu = &first["nvidia.com/quadro_vm"][0];
    assert!(!gpu.healthy, "withheld from the new name while held as the old one: {first:?}");
    let problem = gpu.problem.clone().unwrap_or_default();
    assert!(problem.contains(&format!("allocated as nvidia.com/quadro_rtx_6000 to pod {POD}")), "{problem}");
    assert!(problem.ends_with("offered as nvidia.com/quadro_vm once free"), "{problem}");

    // The same in the release round, for its Event and `nodeprep status`.
    let mut round = sim.restarted();
    let r = release(&t, &mut round, &renamed, &PodView::default(), Vec::new());
    assert_eq!(r.renames.len(), 1, "{r:#?}");
    assert_eq!(r.pending_pods(), BTreeSet::from([POD.to_owned()]));
    assert!(r.outcomes.is_empty() && round.log.is_empty(), "a rename writes nothing to sysfs");

    // The API server says the pod is gone: the device is offered healthy under its new name.
    let (events, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let task = tokio::spawn(monitor.run_with(UnboundedReceiverStream::new(rx), std::future::pending::<()>()));
    handle.pods_gone(&BTreeSet::from([POD.to_owned()]));
    tokio::time::timeout(std::time::Duration::from_secs(10), devices.changed())
        .await
        .expect("a new device list")
        .expect("monitor alive");
    let now = devices.borrow().clone();
    assert!(now["nvidia.com/quadro_vm"][0].healthy, "{now:?}");
    drop(events);
    task.abort();
}
