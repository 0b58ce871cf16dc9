//! Device-plugin latencies, measured by the kubelet stand-in (`tests/support/kubelet.rs`) over
//! real unix sockets, the stand-in on a thread and runtime of its own (the kubelet is another
//! process), nodeprep's manager on the main thread's current-thread runtime (as in the agent):
//!
//! 1. a health change sent on the watch channel (what the uevent/inotify monitor does) until the
//!    stand-in has the new ListAndWatch list;
//! 2. `kubelet.sock` recreated (kubelet restart: every socket deleted first) until each plugin
//!    registered again, and until its new stream delivered the list (goal < 1 s);
//! 3. Allocate latency with 100 requests in flight at once on the kubelet's one connection
//!    (goal p99 < 1 ms), and one at a time for comparison.
//!
//! `cargo bench --bench deviceplugin [-- health|restart|allocate]`; prints medians and p99.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nodeprep::config::Config;
use nodeprep::deviceplugin::allocate;
use nodeprep::deviceplugin::api::{AllocateRequest, ContainerAllocateRequest};
use nodeprep::deviceplugin::devices::{ResourceDevices, resource_devices};
use nodeprep::deviceplugin::{CountedResource, Manager, ManagerOptions, ResourceSpec};
use nodeprep::host::HostRoot;
use nodeprep::host::kubelet::PLUGIN_DIR;
use support::kubelet::Kubelet;
use support::{intel, intel_gpu_server};
use tokio::sync::watch;

const T4: &str = "nvidia.com/TU104GL_Tesla_T4";
const RTX: &str = "nvidia.com/TU102GL_Quadro_RTX_6000";
const KVM: &str = "devices.kubevirt.io/kvm";
const WAIT: Duration = Duration::from_secs(10);

const HEALTH_SAMPLES: usize = 2000;
const RESTART_SAMPLES: usize = 20;
const ALLOCATE_ROUNDS: usize = 30;
const CONCURRENT: usize = 100;

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let pick = |p: f64| v[((p / 100.0) * (v.len() - 1) as f64).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<58} n={:<5} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms",
        v.len(),
        ms(pick(50.0)),
        ms(pick(99.0)),
        ms(*v.last().expect("samples"))
    );
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |what: &str| only.is_empty() || only.iter().any(|o| o == what);
    let tree = intel_gpu_server();
    let dir = tree.path(PLUGIN_DIR);
    let inv = nodeprep::host::pci::discover(&HostRoot::new(tree.root())).expect("discover");
    let config = Config::parse(
        "pciHostDevices:\n  - pciDeviceSelector: \"10DE:1EB8\"\n    resourceName: nvidia.com/TU104GL_Tesla_T4\n  \
         - pciDeviceSelector: \"10DE:1E30\"\n    resourceName: nvidia.com/TU102GL_Quadro_RTX_6000\n",
    )
    .expect("config");
    let healthy: ResourceDevices = resource_devices(&inv, &config.claims(&inv).expect("claims"));
    let mut unhealthy = healthy.clone();
    unhealthy.get_mut(T4).expect("T4")[0].healthy = false;

    // The kubelet stand-in, on its own thread.
    let (ktx, krx) = std::sync::mpsc::channel();
    let kdir = dir.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            ktx.send(Kubelet::start(&kdir).await).expect("hand over");
            std::future::pending::<()>().await
        });
    });
    let kubelet = krx.recv().expect("kubelet started");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (tx, rx) = watch::channel(healthy.clone());
        let mut opts = ManagerOptions::new(HostRoot::new(tree.root()));
        opts.resources = vec![
            ResourceSpec::Pci(T4.into()),
            ResourceSpec::Pci(RTX.into()),
            ResourceSpec::Counted(CountedResource::kvm(110)),
        ];
        let manager = Manager::new(opts, rx).expect("resources").start().await.expect("start");
        for r in [T4, RTX, KVM] {
            kubelet.wait_for("initial list", WAIT, |rec| rec.lists(r).first().map(|_| ())).await;
        }

        // 1. Health change -> ListAndWatch update.
        if run("health") {
            let mut samples = Vec::with_capacity(HEALTH_SAMPLES);
            for i in 0..HEALTH_SAMPLES {
                let before = kubelet.with_record(|rec| rec.lists(T4).len());
                let next = if i % 2 == 0 { &unhealthy } else { &healthy };
                let t0 = Instant::now();
                tx.send(next.clone()).expect("send");
                let at = kubelet.wait_for("T4 update", WAIT, |rec| rec.lists(T4).get(before).map(|u| u.at)).await;
                samples.push(at.duration_since(t0));
            }
            summary("health change -> ListAndWatch update received", samples);
        }

        // 2. Kubelet restart -> re-registration.
        if run("restart") {
            let mut reg = Vec::new();
            let mut all_reg = Vec::new();
            let mut list = Vec::new();
            for _ in 0..RESTART_SAMPLES {
                let created = kubelet.restart().await;
                let generation = kubelet.generation();
                let mut last = Duration::ZERO;
                for r in [T4, RTX, KVM] {
                    let reg_at = kubelet
                        .wait_for("re-registration", WAIT, |rec| {
                            rec.registrations_of(r).into_iter().find(|x| x.generation == generation)
                        })
                        .await;
                    let list_at = kubelet
                        .wait_for("list on the new stream", WAIT, |rec| {
                            rec.lists(r).into_iter().find(|u| u.stream == reg_at.stream).map(|u| u.at)
                        })
                        .await;
                    let d = reg_at.at.duration_since(created);
                    last = last.max(d);
                    reg.push(d);
                    list.push(list_at.duration_since(created));
                }
                all_reg.push(last);
            }
            summary("kubelet.sock created -> a plugin registered again", reg);
            summary("kubelet.sock created -> all 3 plugins registered again", all_reg);
            summary("kubelet.sock created -> new stream's list received", list);
        }

        // 3. Allocate latency, from the stand-in's runtime.
        if run("allocate") {
            let k = kubelet.clone();
            let (concurrent, sequential) = kubelet
                .handle()
                .spawn(async move {
                    let client = k.client(T4).await;
                    let req = AllocateRequest {
                        container_requests: vec![ContainerAllocateRequest { devices_ids: vec![intel::GPU_A.into()] }],
                    };
                    let mut concurrent = Vec::with_capacity(ALLOCATE_ROUNDS * CONCURRENT);
                    for _ in 0..ALLOCATE_ROUNDS {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..CONCURRENT {
                            let mut c = client.clone();
                            let req = req.clone();
                            set.spawn(async move {
                                let t0 = Instant::now();
                                c.allocate(req).await.expect("allocate");
                                t0.elapsed()
                            });
                        }
                        while let Some(d) = set.join_next().await {
                            concurrent.push(d.expect("request task"));
                        }
                    }
                    let mut sequential = Vec::with_capacity(1000);
                    let mut c = client.clone();
                    for _ in 0..1000 {
                        let t0 = Instant::now();
                        c.allocate(req.clone()).await.expect("allocate");
                        sequential.push(t0.elapsed());
                    }
                    (concurrent, sequential)
                })
                .await
                .expect("allocate load");
            summary(&format!("Allocate, {CONCURRENT} in flight at once (per request)"), concurrent);
            summary("Allocate, one at a time", sequential);

            // The Allocate work itself (sysfs re-read + response), without gRPC.
            let root = HostRoot::new(tree.root());
            let req = AllocateRequest {
                container_requests: vec![ContainerAllocateRequest { devices_ids: vec![intel::GPU_A.into()] }],
            };
            let handler: Vec<Duration> = (0..10_000)
                .map(|_| {
                    let t0 = Instant::now();
                    allocate::allocate_pci(&root, T4, |id| id == intel::GPU_A, &req).expect("allocate");
                    t0.elapsed()
                })
                .collect();
            summary("Allocate handler alone (sysfs re-read + response, no gRPC)", handler);
        }

        manager.shutdown().await;
    });
}
