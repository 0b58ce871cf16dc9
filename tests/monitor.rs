//! The device monitor on fixture hosts: events are injected through `Monitor::run_with` (any
//! stream of events; the netlink socket is only the production stream), the fixture tree is
//! changed the way the kernel changes sysfs, and the watch channel must follow: once per change,
//! never for nothing, never emptied by a failed scan. The production stream (`HostEvents`) is
//! checked against this machine's real kernel and a real inotify watch.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeprep::config::Config;
use nodeprep::deviceplugin::devices::ResourceDevices;
use nodeprep::deviceplugin::monitor::{Event, HostEvents, Monitor, MonitorOptions, MonitorStats, StatsSnapshot};
use nodeprep::host::HostRoot;
use nodeprep::host::inotify::ChangeKind;
use nodeprep::host::uevent::Uevent;
use support::machines::{self, intel};
use support::{HostTree, relative};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

const T4: &str = "nvidia.com/TU104GL_Tesla_T4";
const RTX: &str = "nvidia.com/TU102GL_Quadro_RTX_6000";

const CONFIG: &str = r#"
pciHostDevices:
  - pciDeviceSelector: "10DE:1EB8"
    resourceName: nvidia.com/TU104GL_Tesla_T4
  - pciDeviceSelector: "10DE:1E30"
    resourceName: nvidia.com/TU102GL_Quadro_RTX_6000
"#;

/// No periodic rescan unless a test asks for one: every rescan is then an event's.
fn quiet() -> MonitorOptions {
    MonitorOptions { rescan_interval: None, ..MonitorOptions::default() }
}

/// A monitor running on a spawned task, fed through a channel.
struct Running {
    events: Option<mpsc::UnboundedSender<Event>>,
    devices: watch::Receiver<ResourceDevices>,
    config: watch::Sender<Arc<Config>>,
    stats: Arc<MonitorStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(tree: &HostTree, config: &str, opts: MonitorOptions) -> Running {
        let config = Arc::new(Config::parse(config).expect("valid config"));
        let (config_tx, config_rx) = watch::channel(config);
        let (monitor, devices) = Monitor::new(HostRoot::new(tree.root()), config_rx, opts);
        let stats = monitor.stats();
        let (events, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            monitor
                .run_with(UnboundedReceiverStream::new(rx), async move {
                    let _ = stopped.await;
                })
                .await
                .expect("monitor runs");
        });
        Running { events: Some(events), devices, config: config_tx, stats, stop: Some(stop), task }
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Waits until the monitor has finished its start-up rescan, and marks the current value
    /// seen.
    async fn settled(&mut self) {
        self.wait_for(|s| s.rescans >= 2, "the start-up rescan").await;
        self.devices.borrow_and_update();
    }

    async fn wait_for(&self, f: impl Fn(&StatsSnapshot) -> bool, what: &str) -> StatsSnapshot {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let s = self.stats();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}: {s:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn send(&self, ev: Event) {
        self.events.as_ref().expect("events open").send(ev).expect("monitor is running");
    }

    /// The next published value, within a second.
    async fn next_devices(&mut self) -> ResourceDevices {
        tokio::time::timeout(Duration::from_secs(1), self.devices.changed())
            .await
            .expect("an update within 1 s")
            .expect("monitor alive");
        self.devices.borrow_and_update().clone()
    }

    /// Asserts nothing is published for a while.
    async fn assert_quiet(&mut self, why: &str) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!self.devices.has_changed().expect("monitor alive"), "{why}: an update was sent");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(2), self.task).await.expect("stops").expect("no panic");
    }
}

fn pci_event(action: &str, tree: &HostTree, addr: &str, driver: Option<&str>) -> Event {
    let devpath = format!("/{}", tree.pci_dir(addr).strip_prefix("sys").expect("under sys").display());
    let mut vars = std::collections::BTreeMap::new();
    vars.insert("ACTION".to_owned(), action.to_owned());
    vars.insert("DEVPATH".to_owned(), devpath.clone());
    vars.insert("SUBSYSTEM".to_owned(), "pci".to_owned());
    vars.insert("PCI_SLOT_NAME".to_owned(), addr.to_owned());
    if let Some(d) = driver {
        vars.insert("DRIVER".to_owned(), d.to_owned());
    }
    Event::Uevent(Uevent {
        action: action.into(),
        devpath,
        subsystem: "pci".into(),
        driver: driver.map(str::to_owned),
        pci_slot_name: Some(addr.into()),
        seqnum: None,
        vars,
    })
}

fn other_event() -> Event {
    Event::Uevent(Uevent {
        action: "change".into(),
        devpath: "/devices/virtual/mem/null".into(),
        subsystem: "mem".into(),
        ..Default::default()
    })
}

/// Points a device's `driver` link at another driver, as a bind does.
fn set_driver(tree: &HostTree, addr: &str, driver: &str) {
    let dir = tree.pci_dir(addr);
    let target = relative(&dir, std::path::Path::new(&format!("sys/bus/pci/drivers/{driver}")));
    tree.symlink(&format!("{}/driver", dir.display()), &target.display().to_string());
}

fn health(d: &ResourceDevices, resource: &str, addr: &str) -> Option<bool> {
    d.get(resource)?.iter().find(|x| x.id == addr).map(|x| x.healthy)
}

#[tokio::test]
async fn starts_with_the_real_devices() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    {
        let d = m.devices.borrow();
        assert_eq!(health(&d, T4, intel::GPU_A), Some(true), "{d:?}");
        assert_eq!(health(&d, RTX, intel::GPU_B), Some(false), "on nouveau: {d:?}");
    }
    assert!(!m.devices.has_changed().expect("alive"), "the first value is not an update");
    m.settled().await;
    // The start-up rescan found what new() found: nothing sent.
    assert_eq!(m.stats().updates_sent, 0);
    m.stop().await;
}

#[tokio::test]
async fn an_unbound_device_turns_unhealthy() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;

    tree.remove(&format!("sys/bus/pci/devices/{}/driver", intel::GPU_A));
    let sent = Instant::now();
    m.send(pci_event("unbind", &tree, intel::GPU_A, None));
    let d = m.next_devices().await;
    let took = sent.elapsed();
    assert_eq!(health(&d, T4, intel::GPU_A), Some(false), "{d:?}");
    let dev = &d[T4][0];
    assert_eq!(dev.problem.as_deref(), Some("on no driver instead of vfio-pci"));
    assert!(took < Duration::from_millis(50), "unbind event to update took {took:?}");
    eprintln!("injected unbind event -> watch update: {took:?}");
    let s = m.stats();
    assert_eq!((s.rescans, s.updates_sent, s.uevents_seen), (3, 1, 1), "{s:?}");
    m.stop().await;
}

#[tokio::test]
async fn a_removed_device_is_gone() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;

    tree.remove(&format!("sys/bus/pci/devices/{}", intel::GPU_A));
    m.send(pci_event("remove", &tree, intel::GPU_A, None));
    let d = m.next_devices().await;
    assert_eq!(health(&d, T4, intel::GPU_A), None, "{d:?}");
    assert!(!d.contains_key(T4), "its only device gone, the resource has none: {d:?}");
    assert_eq!(health(&d, RTX, intel::GPU_B), Some(false), "the rest stays");
    m.stop().await;
}

#[tokio::test]
async fn irrelevant_events_and_no_ops_send_nothing() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;
    let before = m.stats();

    // Not PCI, not vfio: not even a rescan.
    m.send(other_event());
    m.assert_quiet("an irrelevant uevent").await;
    let s = m.stats();
    assert_eq!(s.rescans, before.rescans, "{s:?}");
    assert_eq!(s.uevents_seen, before.uevents_seen + 1);

    // A /dev/vfio node written to (a VM opened its group): no rescan either.
    m.send(Event::DevVfio(nodeprep::host::inotify::DirChange {
        kind: ChangeKind::Written,
        name: Some("6".into()),
        is_dir: false,
    }));
    // Relevant, but nothing changed: a rescan, no update.
    m.send(pci_event("change", &tree, intel::NIC, Some("i40e")));
    m.assert_quiet("a change event that changed nothing").await;
    let s = m.stats();
    assert_eq!(s.rescans, before.rescans + 1, "{s:?}");
    assert_eq!(s.updates_sent, 0);
    m.stop().await;
}

/// A bind of a GPU and its audio function to vfio-pci, as the kernel reports it: five uevents
/// in a row. They coalesce into one rescan and one update.
#[tokio::test]
async fn a_burst_of_five_events_is_one_rescan() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;
    let before = m.stats();

    for a in [intel::GPU_B, intel::GPU_B_AUDIO] {
        set_driver(&tree, a, "vfio-pci");
    }
    tree.dev_vfio_group(intel::GPU_B_GROUP);
    m.send(pci_event("unbind", &tree, intel::GPU_B, None));
    m.send(pci_event("unbind", &tree, intel::GPU_B_AUDIO, None));
    m.send(pci_event("bind", &tree, intel::GPU_B, Some("vfio-pci")));
    m.send(pci_event("bind", &tree, intel::GPU_B_AUDIO, Some("vfio-pci")));
    m.send(Event::DevVfio(nodeprep::host::inotify::DirChange {
        kind: ChangeKind::Created,
        name: Some(intel::GPU_B_GROUP.to_string()),
        is_dir: false,
    }));
    let d = m.next_devices().await;
    assert_eq!(health(&d, RTX, intel::GPU_B), Some(true), "{d:?}");
    m.assert_quiet("after the burst").await;
    let s = m.stats();
    assert_eq!(s.rescans, before.rescans + 1, "five events, one rescan: {s:?}");
    assert_eq!(s.triggers, before.triggers + 5);
    assert_eq!(s.updates_sent, 1);
    m.stop().await;
}

/// Events spread over less than the debounce window still make one rescan; the first is not
/// held longer than the window.
#[tokio::test]
async fn events_inside_the_window_coalesce() {
    let tree = machines::intel_gpu_server();
    let window = Duration::from_millis(40);
    let mut m = Running::start(&tree, CONFIG, MonitorOptions { debounce: window, ..quiet() });
    m.settled().await;
    let before = m.stats();

    tree.remove(&format!("sys/bus/pci/devices/{}/driver", intel::GPU_A));
    let first = Instant::now();
    for _ in 0..5 {
        m.send(pci_event("unbind", &tree, intel::GPU_A, None));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let d = m.next_devices().await;
    let took = first.elapsed();
    assert_eq!(health(&d, T4, intel::GPU_A), Some(false));
    assert!(took >= window, "the rescan waited for the window: {took:?}");
    assert!(took < window + Duration::from_millis(60), "the first event was not held past the window: {took:?}");
    m.assert_quiet("after the window").await;
    assert_eq!(m.stats().rescans, before.rescans + 1);
    m.stop().await;
}

/// Later events never extend the window: events 15 ms apart for 60 ms, with a 30 ms window,
/// make at least two rescans (a debounce that restarted on every event would make one).
#[tokio::test]
async fn a_steady_trickle_is_not_held_back() {
    let tree = machines::intel_gpu_server();
    let window = Duration::from_millis(30);
    let mut m = Running::start(&tree, CONFIG, MonitorOptions { debounce: window, ..quiet() });
    m.settled().await;
    let before = m.stats();
    for _ in 0..5 {
        m.send(pci_event("change", &tree, intel::NIC, Some("i40e")));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    m.assert_quiet("nothing changed").await;
    let s = m.stats();
    assert!(s.rescans >= before.rescans + 2, "{s:?}");
    m.stop().await;
}

#[tokio::test]
async fn a_failed_scan_keeps_the_last_good_devices() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;
    let good = m.devices.borrow().clone();

    // The host root turns unreadable: discovery fails.
    let devices = tree.path("sys/bus/pci/devices");
    let aside = tree.path("sys/bus/pci/devices.aside");
    std::fs::rename(&devices, &aside).expect("move aside");
    m.send(Event::Resync("test".into()));
    m.assert_quiet("a failed scan").await;
    let s = m.stats();
    assert_eq!((s.failed_scans, s.resyncs), (1, 1), "{s:?}");
    assert_eq!(*m.devices.borrow(), good);

    // Back, and changed meanwhile: the next scan publishes the change.
    std::fs::rename(&aside, &devices).expect("move back");
    tree.remove(&format!("sys/bus/pci/devices/{}/driver", intel::GPU_A));
    m.send(pci_event("unbind", &tree, intel::GPU_A, None));
    let d = m.next_devices().await;
    assert_eq!(health(&d, T4, intel::GPU_A), Some(false));
    m.stop().await;
}

#[tokio::test]
async fn a_new_config_is_applied_and_a_conflicting_one_is_refused() {
    let tree = machines::intel_gpu_server();
    let mut m = Running::start(&tree, CONFIG, quiet());
    m.settled().await;

    let only_t4 =
        "pciHostDevices:\n  - pciDeviceSelector: \"10DE:1EB8\"\n    resourceName: nvidia.com/TU104GL_Tesla_T4\n";
    m.config.send(Arc::new(Config::parse(only_t4).expect("valid"))).expect("monitor alive");
    let d = m.next_devices().await;
    assert_eq!(d.keys().collect::<Vec<_>>(), vec![T4]);

    // Two entries claiming the T4 (vendor 10de and an explicit address): refused at claim
    // time, the devices stay as they were.
    let conflict = format!(
        "devices:\n  - resourceName: example.com/a\n    selectors:\n      vendors: [\"10de\"]\n  - resourceName: example.com/b\n    selectors:\n      pciAddresses: [\"{}\"]\n",
        intel::GPU_A
    );
    m.config.send(Arc::new(Config::parse(&conflict).expect("valid"))).expect("monitor alive");
    m.assert_quiet("a conflicting config").await;
    assert_eq!(m.stats().claim_conflicts, 1);
    assert_eq!(m.devices.borrow().keys().collect::<Vec<_>>(), vec![T4]);
    m.stop().await;
}

#[tokio::test]
async fn the_periodic_rescan_catches_what_no_event_reported() {
    let tree = machines::intel_gpu_server();
    let opts = MonitorOptions {
        rescan_interval: Some(Duration::from_millis(30)),
        jitter: Duration::from_millis(10),
        ..MonitorOptions::default()
    };
    let mut m = Running::start(&tree, CONFIG, opts);
    m.settled().await;
    tree.remove(&format!("sys/bus/pci/devices/{}/driver", intel::GPU_A));
    let d = m.next_devices().await;
    assert_eq!(health(&d, T4, intel::GPU_A), Some(false));
    m.wait_for(|s| s.rescans >= 6, "more periodic rescans").await;
    assert_eq!(m.stats().updates_sent, 1);
    m.stop().await;
}

#[tokio::test]
async fn the_event_stream_ending_leaves_the_periodic_rescan() {
    let tree = machines::intel_gpu_server();
    let opts = MonitorOptions { rescan_interval: Some(Duration::from_millis(20)), ..MonitorOptions::default() };
    let mut m = Running::start(&tree, CONFIG, opts);
    m.settled().await;
    m.events = None;
    let before = m.stats().rescans;
    m.wait_for(|s| s.rescans >= before + 3, "periodic rescans after the stream ended").await;
    m.stop().await;
}

/// The production stream on this machine: the real kernel's uevent socket and a real inotify
/// watch on the fixture's `dev/vfio`.
#[tokio::test]
async fn host_events_come_from_the_kernel_and_dev_vfio() {
    let tree = HostTree::new();
    tree.dev_vfio();
    let mut events = HostEvents::open(&HostRoot::new(tree.root()), Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("open the host event sources: {e}"));
    assert!(events.watching_vfio());

    tree.dev_vfio_group(42);
    // Other uevents of the machine may interleave: look for ours.
    let mut seen = Vec::new();
    loop {
        let ev = next_event(&mut events).await;
        if let Event::DevVfio(c) = &ev {
            assert_eq!((c.kind, c.name.as_deref()), (ChangeKind::Created, Some("42")));
            break;
        }
        seen.push(ev);
    }

    std::fs::write("/sys/devices/virtual/mem/null/uevent", "change").expect("trigger a uevent");
    loop {
        match next_event(&mut events).await {
            Event::Uevent(u) if u.devpath == "/devices/virtual/mem/null" => {
                assert_eq!(u.action, "change");
                break;
            }
            other => seen.push(other),
        }
    }
    eprintln!("other events seen meanwhile: {seen:?}");
}

async fn next_event(events: &mut HostEvents) -> Event {
    tokio::time::timeout(Duration::from_secs(1), events.next()).await.expect("an event within 1 s").expect("open")
}

/// `/dev/vfio` missing at start (vfio not loaded) is not an error; the watch is made once a
/// uevent names a vfio node.
#[tokio::test]
async fn host_events_without_dev_vfio() {
    let tree = HostTree::new();
    let events = HostEvents::open(&HostRoot::new(tree.root()), Duration::from_secs(1)).expect("open");
    assert!(!events.watching_vfio());
}

/// `Monitor::run` on a fixture root: the real uevent socket opens and the loop stops on
/// shutdown.
#[tokio::test]
async fn run_opens_the_host_sources_and_stops_on_shutdown() {
    let tree = machines::intel_gpu_server();
    let (_tx, rx) = watch::channel(Arc::new(Config::parse(CONFIG).expect("valid")));
    let (monitor, mut devices) = Monitor::new(HostRoot::new(tree.root()), rx, quiet());
    let stats = monitor.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(monitor.run(async move {
        let _ = stopped.await;
    }));
    // A /dev/vfio change through inotify reaches the monitor.
    let until = Instant::now() + Duration::from_secs(2);
    while stats.snapshot().rescans < 2 {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    devices.borrow_and_update();
    tree.remove(&format!("sys/bus/pci/devices/{}/driver", intel::GPU_A));
    tree.remove("dev/vfio/6");
    tokio::time::timeout(Duration::from_secs(1), devices.changed()).await.expect("update").expect("alive");
    assert_eq!(health(&devices.borrow(), T4, intel::GPU_A), Some(false));
    let _ = stop.send(());
    let res = tokio::time::timeout(Duration::from_secs(2), task).await.expect("stops").expect("no panic");
    res.expect("run ends cleanly");
}
