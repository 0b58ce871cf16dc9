//! The agent under interleaved load, pinned to one CPU (`taskset`), where a lock held across an
//! await, or a blocking call on its one-thread runtime, turns into a hang: config swaps (the way
//! a ConfigMap volume swaps `..data`, now and then to an invalid config), real kernel uevent
//! bursts (`change` written to this machine's PCI devices' `uevent` files), `/dev/vfio` churn in
//! the fixture, kubelet restarts and Allocates, for a fixed time (`NODEPREP_STRESS_SECS`, 20 s by
//! default). After every step `/healthz` must answer 200 within 5 s, every Allocate must be
//! answered within 5 s, and at the end SIGTERM must end the agent with status 0 within 5 s (a
//! hang never ends; the 2 s promise is tested on the real kernel, `tests/vm.rs`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nodeprep::deviceplugin::api::device_plugin_client::DevicePluginClient;
use nodeprep::deviceplugin::api::{AllocateRequest, ContainerAllocateRequest};
use nodeprep::deviceplugin::socket_name;
use nodeprep::host::kubelet::PLUGIN_DIR;
use support::agent::{Agent, AgentSpec, spawn_kubelet};
use support::intel_gpu_server;
use support::kubelet::dial;

const T4: &str = "nvidia.com/TU104GL_Tesla_T4";
const T4_ADDR: &str = "0000:3b:00.0";
const CONFIG_A: &str = "pciHostDevices:\n  - pciDeviceSelector: \"10DE:1EB8\"\n    resourceName: nvidia.com/TU104GL_Tesla_T4\n    bind: none\n";
const CONFIG_B: &str = "pciHostDevices:\n  - pciDeviceSelector: \"10DE:1EB8\"\n    resourceName: nvidia.com/TU104GL_Tesla_T4\n    bind: none\ndevices:\n  - resourceName: intel.com/qat_vf\n    bind: none\n    selectors: {vendors: [\"8086\"], devices: [\"37c9\"]}\n";
/// How long SIGTERM may take here. The 2 s promise is held on the real kernel (`tests/vm.rs`);
/// on a CI machine busy with other tests, this bound only has to tell a hang from a slow stop.
const STOP_WITHIN_SECS: u64 = 5;
const CONFIG_BAD: &str = "devices:\n  - resourceName: kubernetes.io/nope\n";

/// A small deterministic generator (the seed is printed, so a failing run can be repeated).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A ConfigMap-style volume: `..<version>/config.yaml`, `..data -> ..<version>`,
/// `config.yaml -> ..data/config.yaml`; [`ConfigVolume::swap`] does what the kubelet's atomic
/// writer does (a new version directory, a new link renamed over `..data`).
struct ConfigVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigVolume {
    fn new(dir: &Path, text: &str) -> ConfigVolume {
        let mut v = ConfigVolume { dir: dir.to_owned(), version: 0 };
        v.swap(text);
        std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).expect("config link");
        v
    }

    fn swap(&mut self, text: &str) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        std::fs::create_dir_all(self.dir.join(&name)).expect("version dir");
        std::fs::write(self.dir.join(&name).join("config.yaml"), text).expect("config");
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
    }

    fn path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }
}

/// This machine's PCI devices' `uevent` files: writing `change` makes the kernel send a uevent.
fn pci_uevent_files() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/sys/bus/pci/devices")
        .expect("this machine's /sys/bus/pci/devices")
        .filter_map(|e| e.ok().map(|e| e.path().join("uevent")))
        .collect();
    out.sort();
    out.truncate(16);
    out
}

#[test]
fn agent_pinned_to_one_cpu_survives_interleaved_swaps_uevents_restarts_and_allocates() {
    let secs: u64 = std::env::var("NODEPREP_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    eprintln!("stress: {secs} s, seed {seed}");
    let mut rng = Lcg(seed);

    let tree = intel_gpu_server();
    let kubelet = spawn_kubelet(tree.path(PLUGIN_DIR));
    let dir = tempfile::tempdir().expect("tempdir");
    let volume_dir = dir.path().join("config");
    std::fs::create_dir_all(&volume_dir).expect("config dir");
    let mut volume = ConfigVolume::new(&volume_dir, CONFIG_A);
    let config = volume.path();
    let mut agent = Agent::start(AgentSpec {
        host_root: tree.root(),
        config: &config,
        plugin_dir: kubelet.dir(),
        kubeconfig: None,
        node_name: "worker-0",
        log: dir.path().join("agent.log"),
        extra: &["--resync", "1"],
    });
    let pid = agent.child.id().to_string();
    let pinned = Command::new("taskset").args(["-a", "-p", "-c", "0", &pid]).output().expect("run taskset");
    assert!(pinned.status.success(), "taskset -a -p -c 0 {pid}: {}", String::from_utf8_lossy(&pinned.stderr));
    assert!(agent.wait_ready(Duration::from_secs(20)), "the agent became ready: {}", agent.logs());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let uevents = pci_uevent_files();
    assert!(!uevents.is_empty(), "this machine has PCI devices to send uevents for");
    let healthy = |agent: &Agent, after: &str| {
        let answer = agent.get("/healthz");
        assert!(
            answer.as_ref().is_some_and(|(c, _)| *c == 200),
            "/healthz after {after}: {answer:?} (seed {seed})\n{}",
            agent.logs()
        );
    };

    let mut counts = [0u32; 5];
    let mut allocated = 0u32;
    let start = Instant::now();
    let deadline = Duration::from_secs(secs);
    while start.elapsed() < deadline {
        let step = rng.next(5) as usize;
        counts[step] += 1;
        let what = match step {
            0 => {
                let text = match rng.next(5) {
                    0 => CONFIG_BAD,
                    1 | 2 => CONFIG_B,
                    _ => CONFIG_A,
                };
                volume.swap(text);
                "a config swap"
            }
            1 => {
                for f in uevents.iter().take(1 + rng.next(uevents.len() as u64) as usize) {
                    std::fs::write(f, "change").unwrap_or_else(|e| panic!("write change to {}: {e}", f.display()));
                }
                "a uevent burst"
            }
            2 => {
                let node = tree.path(format!("dev/vfio/{}", 90 + rng.next(4)));
                if node.exists() {
                    std::fs::remove_file(&node).expect("remove vfio node");
                } else {
                    std::fs::write(&node, "").expect("create vfio node");
                }
                "/dev/vfio churn"
            }
            3 => {
                rt.block_on(kubelet.restart());
                "a kubelet restart"
            }
            _ => {
                let socket = kubelet.dir().join(socket_name(T4));
                let answered = rt.block_on(async {
                    // After a kubelet restart the plugin serves again on a new socket: give it
                    // the time the agent needs (milliseconds; 5 s at most).
                    let waited = Instant::now();
                    let channel = loop {
                        match dial(&socket).await {
                            Ok(c) => break c,
                            Err(e) if waited.elapsed() > Duration::from_secs(5) => {
                                panic!("no plugin socket to dial 5 s after {}: {e} (seed {seed})", socket.display())
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    };
                    let mut client = DevicePluginClient::new(channel);
                    let req = AllocateRequest {
                        container_requests: vec![ContainerAllocateRequest { devices_ids: vec![T4_ADDR.to_owned()] }],
                    };
                    tokio::time::timeout(Duration::from_secs(5), client.allocate(req)).await
                });
                match answered {
                    Ok(Ok(_)) => allocated += 1,
                    // A refusal is an answer (the plugin may be between a restart and its list).
                    Ok(Err(_)) => {}
                    Err(_) => panic!("Allocate unanswered after 5 s (seed {seed})\n{}", agent.logs()),
                }
                "an Allocate"
            }
        };
        healthy(&agent, what);
        std::thread::sleep(Duration::from_millis(rng.next(30)));
    }
    eprintln!(
        "stress: {} config swaps, {} uevent bursts, {} /dev/vfio changes, {} kubelet restarts, {} Allocates ({allocated} granted) in {:.1} s",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        start.elapsed().as_secs_f64()
    );
    assert!(allocated > 0, "some Allocate was granted: the T4 is on vfio-pci (seed {seed})\n{}", agent.logs());
    assert!(counts.iter().all(|c| *c > 0), "every kind of step ran: {counts:?}");

    // This test's own client connections go with their runtime: a connection left open would
    // hold the agent's graceful stop for its whole grace period.
    drop(rt);
    let stopping = Instant::now();
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    let exited = loop {
        if let Ok(Some(st)) = agent.child.try_wait() {
            break Some(st.code());
        }
        if stopping.elapsed() > Duration::from_secs(STOP_WITHIN_SECS) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        exited,
        Some(Some(0)),
        "SIGTERM ends the agent with 0 within {STOP_WITHIN_SECS} s (seed {seed})\n{}",
        agent.logs()
    );
}
