//! The loop that keeps [`ResourceDevices`] right while the host changes.
//!
//! What makes it look again:
//! - a relevant kernel uevent ([`uevent::is_relevant`]: PCI add/remove/bind/unbind/change,
//!   vfio group nodes), read from the netlink socket;
//! - an entry of `/dev/vfio` created, deleted or renamed (inotify);
//! - lost events (the uevent socket overflowed, a source failed): a resync;
//! - a new config on the config channel, or a [`RescanHandle::rescan`] call;
//! - the periodic rescan, the safety net (default every 60 s, ±3 s of jitter).
//!
//! Looking again means: rediscover the PCI inventory ([`host::pci::discover`], on a blocking
//! thread so the gRPC servers sharing the current-thread runtime keep answering), resolve the
//! config's claims, compute [`resource_devices`], and publish it on the watch channel only when
//! it differs from what was published ([`watch::Sender::send_if_modified`]).
//!
//! Debounce: a bind or unbind makes several uevents in a row (the PCI `unbind`, the vfio node's
//! `remove`, the new driver's `bind`, ...). The first trigger opens a window of
//! [`MonitorOptions::debounce`] (3 ms by default); everything arriving inside it joins the same
//! rescan, which starts when the window closes. Later events do not extend the window, so no
//! change waits more than `debounce` before its rescan starts. An event arriving while a scan
//! runs opens a new window: that scan may have read sysfs before the change.
//!
//! A failed scan (the host root unreadable) keeps the last good inventory and publishes
//! nothing; a config whose entries claim one device twice keeps the last published devices.
//! Nothing here ever empties the list because a read failed.
//!
//! The config comes on a `watch::Receiver<Arc<Config>>`: the caller owns the sender and
//! hot-reloads by sending a new `Arc<Config>`; the monitor rescans on every change.

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt};

use super::devices::{ResourceDevices, resource_devices};
use crate::config::Config;
use crate::host::HostRoot;
use crate::host::inotify::{ChangeKind, DirChange, DirWatcher, dir_mask};
use crate::host::uevent::{self, Received, Uevent, UeventError, UeventSocket};
use crate::model::PciInventory;

/// Where the vfio group nodes live, relative to the host root.
pub const DEV_VFIO: &str = "dev/vfio";

/// How the monitor paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorOptions {
    /// The safety-net rescan period; `None` turns it off.
    pub rescan_interval: Option<Duration>,
    /// The periodic rescan happens within `interval ± jitter / 2` (jitter at most the interval).
    pub jitter: Duration,
    /// The coalescing window opened by the first trigger.
    pub debounce: Duration,
    /// How long the uevent source rests after a read error other than overflow.
    pub error_backoff: Duration,
    /// The kubelet's device-plugin directory (its checkpoint); default under the host root.
    pub plugin_dir: Option<PathBuf>,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            rescan_interval: Some(Duration::from_secs(60)),
            jitter: Duration::from_secs(6),
            debounce: Duration::from_millis(3),
            error_backoff: Duration::from_secs(1),
            plugin_dir: None,
        }
    }
}

/// Something that happened on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A kernel uevent (any: [`wants_rescan`] decides).
    Uevent(Uevent),
    /// An entry of `/dev/vfio` changed.
    DevVfio(DirChange),
    /// Events may have been lost (uevent socket overflow, a source failed): look again.
    Resync(String),
}

/// Pure: does this event make the monitor rescan?
pub fn wants_rescan(ev: &Event) -> bool {
    match ev {
        Event::Uevent(u) => uevent::is_relevant(u),
        // A write to a group node is a VM using it, not a change of what exists.
        Event::DevVfio(c) => c.kind != ChangeKind::Written,
        Event::Resync(_) => true,
    }
}

/// Pure: the delay before the next periodic rescan: `interval ± jitter / 2`, spread by
/// `random`. A jitter larger than the interval counts as the interval.
pub fn rescan_delay(interval: Duration, jitter: Duration, random: u64) -> Duration {
    let jitter = jitter.min(interval);
    let jitter_ns = jitter.as_nanos().min(u64::MAX as u128) as u64;
    if jitter_ns == 0 {
        return interval;
    }
    let offset = Duration::from_nanos(random % jitter_ns);
    // Saturating: the interval comes from options (`--resync`) and may be near Duration::MAX.
    interval.saturating_add(offset).saturating_sub(jitter / 2)
}

/// About 30 years: "never" for a timer, and far from the end of `Instant`'s range.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Pure: `now + delay`, or about 30 years from `now` when that overflows (`Instant + Duration`
/// panics on overflow, and delays come from options and config).
pub fn deadline_after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now)
}

/// Pure: the devices the config gives each device-plugin resource on this inventory (DRA's
/// devices aside); the problems when the config's entries claim a device twice.
pub fn devices_for(
    inv: &PciInventory,
    config: &Config,
    original: &crate::config::OriginalDrivers,
) -> Result<ResourceDevices, Vec<String>> {
    let claims = config.claims_with(inv, original)?;
    let plugin_claims: Vec<_> =
        claims.into_iter().filter(|c| config.front(c) == crate::config::Front::DevicePlugin).collect();
    Ok(resource_devices(inv, &plugin_claims))
}

/// Counters for `/metrics`. Every field only grows, except `last_scan_micros`.
#[derive(Debug, Default)]
pub struct MonitorStats {
    /// Every uevent the monitor received, relevant or not.
    pub uevents_seen: AtomicU64,
    /// Events that asked for a rescan (relevant uevents, /dev/vfio changes, resyncs, config
    /// changes, explicit requests).
    pub triggers: AtomicU64,
    /// Resyncs: uevent overflows and failed sources.
    pub resyncs: AtomicU64,
    /// Rescans started (each one a discovery of the whole inventory).
    pub rescans: AtomicU64,
    /// Rescans whose discovery failed (the last good inventory was kept).
    pub failed_scans: AtomicU64,
    /// Rescans whose config claimed a device twice (nothing was published).
    pub claim_conflicts: AtomicU64,
    /// New values published on the watch channel.
    pub updates_sent: AtomicU64,
    /// How long the last rescan took, discovery and computation, in microseconds.
    pub last_scan_micros: AtomicU64,
}

/// A copy of [`MonitorStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub uevents_seen: u64,
    pub triggers: u64,
    pub resyncs: u64,
    pub rescans: u64,
    pub failed_scans: u64,
    pub claim_conflicts: u64,
    pub updates_sent: u64,
    pub last_scan_micros: u64,
}

impl MonitorStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            uevents_seen: g(&self.uevents_seen),
            triggers: g(&self.triggers),
            resyncs: g(&self.resyncs),
            rescans: g(&self.rescans),
            failed_scans: g(&self.failed_scans),
            claim_conflicts: g(&self.claim_conflicts),
            updates_sent: g(&self.updates_sent),
            last_scan_micros: g(&self.last_scan_micros),
        }
    }

    fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the monitor could not run.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("watch the host for device changes: {0}")]
    Uevents(#[from] UeventError),
}

/// Asks a running monitor for a rescan (after nodeprep itself bound devices, say). Requests
/// made while one is pending coalesce.
#[derive(Debug, Clone)]
pub struct RescanHandle {
    notify: Arc<Notify>,
    gone: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

impl RescanHandle {
    pub fn rescan(&self) {
        self.notify.notify_one();
    }

    /// The pods of the kubelet's checkpoint the API server says are gone: a device they hold
    /// under an old resource name is no longer withheld from its new one. Rescans on a change.
    pub fn pods_gone(&self, gone: &BTreeSet<String>) {
        let mut g = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        if *g != *gone {
            g.clone_from(gone);
            self.notify.notify_one();
        }
    }
}

/// Keeps a `watch` channel of [`ResourceDevices`] right.
#[derive(Debug)]
pub struct Monitor {
    root: HostRoot,
    config: watch::Receiver<Arc<Config>>,
    opts: MonitorOptions,
    tx: watch::Sender<ResourceDevices>,
    stats: Arc<MonitorStats>,
    /// The inventory of the last good scan, published when it changes.
    inventory: watch::Sender<Option<Arc<PciInventory>>>,
    notify: Arc<Notify>,
    /// Pods of the kubelet's checkpoint known to be gone ([`RescanHandle::pods_gone`]).
    gone: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

impl Monitor {
    /// Scans the host once, synchronously, so the receiver starts with the real devices (an
    /// empty map when that first scan fails; [`run`](Self::run) keeps trying).
    pub fn new(
        root: HostRoot,
        config: watch::Receiver<Arc<Config>>,
        opts: MonitorOptions,
    ) -> (Monitor, watch::Receiver<ResourceDevices>) {
        let (tx, _) = watch::channel(ResourceDevices::new());
        let mut m = Monitor {
            root,
            config,
            opts,
            tx,
            stats: Arc::new(MonitorStats::default()),
            inventory: watch::Sender::new(None),
            notify: Arc::new(Notify::new()),
            gone: Arc::default(),
        };
        let cfg = m.config.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let outcome = scan(&m.root, &cfg, None, &m.opts.plugin_dir, &BTreeSet::new());
        // The first value is not an update: receivers subscribe after it, and start with it.
        m.apply(outcome, started.elapsed());
        let rx = m.tx.subscribe();
        (m, rx)
    }

    /// The inventory of the last good scan (none when every scan so far failed), as it changes: a new value after each scan that found something different
    /// (the agent's labels follow it without a scan of their own).
    pub fn inventory_updates(&self) -> watch::Receiver<Option<Arc<PciInventory>>> {
        self.inventory.subscribe()
    }

    /// The counters; shared, they stay live while the monitor runs.
    pub fn stats(&self) -> Arc<MonitorStats> {
        self.stats.clone()
    }

    /// Another receiver of the devices.
    pub fn subscribe(&self) -> watch::Receiver<ResourceDevices> {
        self.tx.subscribe()
    }

    /// A handle to ask for a rescan.
    pub fn rescan_handle(&self) -> RescanHandle {
        RescanHandle { notify: self.notify.clone(), gone: self.gone.clone() }
    }

    /// Runs on the host's own events: the kernel's uevent socket and inotify on `/dev/vfio`
    /// under the host root, until `shutdown` completes. Fails only when the uevent socket
    /// cannot be opened (nodeprep then lacks `hostNetwork` or the kernel lacks netlink).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), MonitorError> {
        let events = HostEvents::open(&self.root, self.opts.error_backoff)?;
        self.run_with(events, shutdown).await
    }

    /// Runs on any stream of events (the test seam; [`HostEvents`] in production) until
    /// `shutdown` completes. When the stream ends, the periodic rescan goes on alone. Starts
    /// with a rescan: something may have changed between [`new`](Self::new) and now.
    pub async fn run_with<S>(mut self, mut events: S, shutdown: impl Future<Output = ()>) -> Result<(), MonitorError>
    where
        S: Stream<Item = Event> + Unpin,
    {
        tokio::pin!(shutdown);
        let mut events_open = true;
        let mut config_open = true;
        let mut pending: Option<Instant> = Some(Instant::now());
        let mut next_periodic = self.next_periodic();
        let notify = self.notify.clone();
        loop {
            // A pending window closes first; it replaces the periodic deadline, which the
            // rescan then resets.
            let deadline = pending.or(next_periodic);
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = timer => {
                    pending = None;
                    self.rescan().await;
                    next_periodic = self.next_periodic();
                }
                ev = events.next(), if events_open => match ev {
                    None => {
                        tracing::warn!("host event source ended; only the periodic rescan remains");
                        events_open = false;
                    }
                    Some(ev) => {
                        if matches!(ev, Event::Uevent(_)) {
                            MonitorStats::bump(&self.stats.uevents_seen);
                        }
                        if let Event::Resync(why) = &ev {
                            tracing::info!("resync: {why}");
                            MonitorStats::bump(&self.stats.resyncs);
                        }
                        if wants_rescan(&ev) {
                            tracing::debug!(?ev, "host change");
                            self.trigger(&mut pending);
                        }
                    }
                },
                changed = self.config.changed(), if config_open => match changed {
                    Ok(()) => self.trigger(&mut pending),
                    Err(_) => config_open = false,
                },
                () = notify.notified() => self.trigger(&mut pending),
            }
        }
    }

    fn trigger(&self, pending: &mut Option<Instant>) {
        MonitorStats::bump(&self.stats.triggers);
        pending.get_or_insert_with(|| deadline_after(Instant::now(), self.opts.debounce));
    }

    fn next_periodic(&self) -> Option<Instant> {
        let interval = self.opts.rescan_interval?;
        Some(deadline_after(Instant::now(), rescan_delay(interval, self.opts.jitter, random())))
    }

    async fn rescan(&mut self) {
        let root = self.root.clone();
        let config = self.config.borrow_and_update().clone();
        let last = self.inventory.borrow().clone();
        let started = std::time::Instant::now();
        let (dir, gone) = (self.opts.plugin_dir.clone(), self.gone.lock().unwrap_or_else(|p| p.into_inner()).clone());
        match tokio::task::spawn_blocking(move || scan(&root, &config, last, &dir, &gone)).await {
            Ok(outcome) => {
                let took = started.elapsed();
                if self.apply(outcome, took) {
                    MonitorStats::bump(&self.stats.updates_sent);
                    tracing::info!(took_us = took.as_micros() as u64, "devices changed");
                }
                // The scan's temporaries (and the previous inventory) are freed now.
                crate::alloc::release_freed();
            }
            Err(e) => {
                MonitorStats::bump(&self.stats.rescans);
                MonitorStats::bump(&self.stats.failed_scans);
                tracing::error!("device rescan did not finish: {e}");
            }
        }
    }

    /// Records a scan's outcome and publishes the devices when they changed; true when it did.
    fn apply(&mut self, outcome: ScanOutcome, took: Duration) -> bool {
        let s = &self.stats;
        MonitorStats::bump(&s.rescans);
        s.last_scan_micros.store(took.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        if let Some(e) = &outcome.error {
            MonitorStats::bump(&s.failed_scans);
            tracing::warn!("device rescan failed, keeping the last good inventory: {e}");
        }
        self.inventory.send_if_modified(|cur| {
            let changed = cur.as_deref() != outcome.inventory.as_deref();
            if changed {
                *cur = outcome.inventory.clone();
            }
            changed
        });
        match outcome.devices {
            None => false,
            Some(Err(problems)) => {
                MonitorStats::bump(&s.claim_conflicts);
                tracing::warn!("config claims devices twice, devices not updated: {}", problems.join("; "));
                false
            }
            Some(Ok(new)) => self.tx.send_if_modified(|cur| {
                if *cur == new {
                    false
                } else {
                    *cur = new;
                    true
                }
            }),
        }
    }
}

/// What one scan found.
struct ScanOutcome {
    /// The new inventory, or the last good one when discovery failed.
    inventory: Option<Arc<PciInventory>>,
    error: Option<String>,
    devices: Option<Result<ResourceDevices, Vec<String>>>,
}

/// Discovers the inventory and computes the devices (blocking: sysfs reads). A device a pod
/// holds under another resource name (the kubelet's checkpoint in `plugin_dir`, pods in `gone`
/// aside) is offered unhealthy under its new one ([`crate::bind::release::renames`]).
fn scan(
    root: &HostRoot,
    config: &Config,
    last: Option<Arc<PciInventory>>,
    plugin_dir: &Option<PathBuf>,
    gone: &BTreeSet<String>,
) -> ScanOutcome {
    let (inventory, error) = match crate::host::pci::discover(root) {
        Ok(inv) => (Some(Arc::new(inv)), None),
        Err(e) => (last, Some(e.to_string())),
    };
    // What nodeprep bound keeps matching `drivers` selectors by the driver it had before.
    let original = match crate::bind::State::load(root) {
        Ok(s) => s.original_drivers(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read nodeprep's binding records; drivers selectors see current drivers only");
            Default::default()
        }
    };
    let mut devices = inventory.as_deref().map(|inv| devices_for(inv, config, &original));
    if let Some(Ok(d)) = devices.as_mut() {
        withhold_renamed(root, plugin_dir.as_deref(), gone, d);
    }
    ScanOutcome { inventory, error, devices }
}

/// Marks unhealthy every device a pod holds under another resource name than the one it is
/// offered as now. Only read when the devices could be such (nodeprep's own plugins).
fn withhold_renamed(
    root: &HostRoot,
    plugin_dir: Option<&std::path::Path>,
    gone: &BTreeSet<String>,
    d: &mut ResourceDevices,
) {
    let dir = crate::host::kubelet::plugin_dir(root, plugin_dir);
    let allocations = match crate::host::kubelet::read_allocations(&dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kubelet's checkpoint: renamed devices are not checked for holders");
            return;
        }
    };
    if allocations.is_empty() {
        return;
    }
    let view = crate::model::PodView { names: Default::default(), gone: gone.clone() };
    let holders = crate::bind::release::holders(&allocations, &view, []);
    let claims: Vec<(crate::model::PciAddress, String)> =
        d.iter().flat_map(|(r, devs)| devs.iter().map(move |x| (x.address, r.clone()))).collect();
    for rename in crate::bind::release::renames(&claims, &holders) {
        if let Some(x) = d.get_mut(&rename.to).and_then(|v| v.iter_mut().find(|x| x.address == rename.address)) {
            x.healthy = false;
            x.problem = Some(rename.problem());
        }
    }
}

pub(crate) fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// The production event stream: the kernel's uevents and `/dev/vfio` changes under the host
/// root. `/dev/vfio` may be missing (vfio not loaded) or vanish (devtmpfs removes the empty
/// directory); the watch is (re)made when a uevent names a `vfio/` device node.
#[derive(Debug)]
pub struct HostEvents {
    uevents: UeventSocket,
    backoff: Option<Pin<Box<Sleep>>>,
    error_backoff: Duration,
    vfio_dir: PathBuf,
    vfio: Option<DirWatcher>,
    /// Alternates which source is polled first, so neither starves the other.
    turn: bool,
}

impl HostEvents {
    /// Opens the uevent socket and watches `/dev/vfio` when it exists. Inside a tokio runtime.
    pub fn open(root: &HostRoot, error_backoff: Duration) -> Result<HostEvents, UeventError> {
        let uevents = UeventSocket::open()?;
        let vfio_dir = root.join(DEV_VFIO);
        let mut h = HostEvents { uevents, backoff: None, error_backoff, vfio_dir, vfio: None, turn: false };
        h.watch_vfio();
        Ok(h)
    }

    /// True while `/dev/vfio` is watched.
    pub fn watching_vfio(&self) -> bool {
        self.vfio.is_some()
    }

    fn watch_vfio(&mut self) {
        if self.vfio.is_some() {
            return;
        }
        let mask = dir_mask() - nix::sys::inotify::AddWatchFlags::IN_CLOSE_WRITE;
        match DirWatcher::with_mask(&self.vfio_dir, mask) {
            Ok(w) => self.vfio = Some(w),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }

    fn poll_uevents(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(b) = &mut self.backoff {
            if b.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.backoff = None;
        }
        match self.uevents.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Received::Uevent(u))) => {
                if self.vfio.is_none() && u.var("DEVNAME").is_some_and(|d| d.starts_with("vfio/")) {
                    self.watch_vfio();
                }
                Poll::Ready(Event::Uevent(u))
            }
            Poll::Ready(Ok(Received::Overflow)) => Poll::Ready(Event::Resync("the kernel dropped uevents".into())),
            Poll::Ready(Err(e)) => {
                self.backoff = Some(Box::pin(tokio::time::sleep(self.error_backoff)));
                Poll::Ready(Event::Resync(e.to_string()))
            }
        }
    }

    fn poll_vfio(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let Some(w) = &mut self.vfio else { return Poll::Pending };
        match w.poll_change(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(c)) => {
                if c.kind == ChangeKind::DirGone {
                    self.vfio = None;
                }
                Poll::Ready(Event::DevVfio(c))
            }
            Poll::Ready(Err(e)) => {
                self.vfio = None;
                Poll::Ready(Event::Resync(e.to_string()))
            }
        }
    }
}

impl Stream for HostEvents {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        this.turn = !this.turn;
        let first = if this.turn { this.poll_uevents(cx) } else { this.poll_vfio(cx) };
        if let Poll::Ready(ev) = first {
            return Poll::Ready(Some(ev));
        }
        let second = if this.turn { this.poll_vfio(cx) } else { this.poll_uevents(cx) };
        second.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, subsystem: &str) -> Event {
        Event::Uevent(Uevent {
            action: action.into(),
            devpath: "/devices/x".into(),
            subsystem: subsystem.into(),
            ..Default::default()
        })
    }

    #[test]
    fn what_triggers_a_rescan() {
        assert!(wants_rescan(&ev("unbind", "pci")));
        assert!(wants_rescan(&ev("remove", "pci")));
        assert!(wants_rescan(&ev("add", "vfio")));
        assert!(!wants_rescan(&ev("change", "mem")));
        assert!(!wants_rescan(&ev("move", "pci")));
        assert!(wants_rescan(&Event::Resync("overflow".into())));
        let change = |kind| Event::DevVfio(DirChange { kind, name: Some("12".into()), is_dir: false });
        assert!(wants_rescan(&change(ChangeKind::Created)));
        assert!(wants_rescan(&change(ChangeKind::Deleted)));
        assert!(wants_rescan(&change(ChangeKind::DirGone)));
        assert!(wants_rescan(&change(ChangeKind::Overflow)));
        assert!(!wants_rescan(&change(ChangeKind::Written)));
    }

    #[test]
    fn periodic_delay_stays_within_the_jitter() {
        let i = Duration::from_secs(60);
        let j = Duration::from_secs(6);
        assert_eq!(rescan_delay(i, Duration::ZERO, 12345), i);
        assert_eq!(rescan_delay(i, j, 0), Duration::from_secs(57));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = rescan_delay(i, j, random());
            assert!(d >= Duration::from_secs(57) && d < Duration::from_secs(63), "{d:?}");
            seen.insert(d.as_secs());
        }
        assert!(seen.len() >= 5, "jitter spreads: {seen:?}");
        // A jitter larger than the interval is the interval: never less than half of it.
        let short = Duration::from_millis(20);
        assert_eq!(rescan_delay(short, Duration::from_secs(6), 0), Duration::from_millis(10));
        for _ in 0..100 {
            let d = rescan_delay(short, Duration::from_secs(6), random());
            assert!(d >= Duration::from_millis(10) && d < Duration::from_millis(30), "{d:?}");
        }
    }

    #[test]
    fn a_huge_interval_saturates_instead_of_panicking() {
        let huge = Duration::from_secs(u64::MAX);
        for r in [0, 1, u64::MAX, random()] {
            let d = rescan_delay(huge, huge / 5, r);
            assert!(d >= huge / 2, "{d:?}");
            assert!(rescan_delay(Duration::MAX, Duration::MAX, r) >= Duration::MAX / 2);
        }
        let now = Instant::now();
        let far = deadline_after(now, huge);
        assert!(far >= now + Duration::from_secs(86_400 * 365), "about 30 years, not now: {far:?} vs {now:?}");
        assert_eq!(deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
    }

    #[test]
    fn defaults() {
        let o = MonitorOptions::default();
        assert_eq!(o.rescan_interval, Some(Duration::from_secs(60)));
        assert!(o.debounce >= Duration::from_millis(2) && o.debounce <= Duration::from_millis(5));
    }
}
