//! Huge page pools set at run time, from the config's `hugepages:` section, without a reboot.
//!
//! This module owns the writes to the kernel's pool counts: `nr_hugepages` of a size's global
//! pool (`sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages`) or of one NUMA node's pool
//! (`sys/devices/system/node/node<N>/hugepages/hugepages-<kB>kB/nr_hugepages`), and the report
//! of what the kernel actually granted. What must be reserved at boot (1 GiB pages on a node
//! whose memory is already fragmented) is `nodeprep machineconfig --hugepages`'s job.
//!
//! - [`plan`] is pure: per reservation, the file, the current and the requested count, and
//!   whether to write. A pool already at its count gets no write; a size the kernel does not
//!   offer, or a NUMA node without that pool, is refused with the reason and never written.
//! - [`reserve`] reads the pools, writes each count that differs, reads it back and reports a
//!   [`HugepageOutcome`] per reservation, in config order.
//!
//! Decisions:
//! - A reservation sets the pool to **exactly** `pages`: the count is the pool's total, not an
//!   increment, so a smaller count shrinks the pool and `0` empties it. The kernel frees only free
//!   pages; pages in use stay (as surplus pages, freed when released) and the outcome reports the
//!   count the kernel left.
//! - Shrinking writes go first, so the memory they free can serve the pools that grow.
//! - The kernel grants what it can: writing N allocates pages until one allocation fails, and the
//!   write still succeeds. The count is read back, and a pool that is not at its count is
//!   `short`, with how many of how many; what was granted is kept (not rolled back), since a
//!   partial pool is still usable and the next run tries again.
//! - One pool's problem (unreadable count, failed write) is that pool's outcome; the others are
//!   still reserved.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::HugepageReservation;
use crate::host::{HostError, HostRoot};
use crate::machineconfig::HugepageSize;
use crate::model::system::HugepageFacts;

/// Where the kernel lists its huge page sizes and their global pools.
pub const GLOBAL_DIR: &str = "sys/kernel/mm/hugepages";
/// Where the NUMA nodes (and their per-node pools) are.
pub const NODE_DIR: &str = "sys/devices/system/node";

/// What went wrong with one pool's file (or with listing the sizes), with the path and the
/// operation.
#[derive(Debug, thiserror::Error)]
pub enum HugepageError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read {path}: expected a count of pages, found {found:?}")]
    Invalid { path: PathBuf, found: String },
    #[error("write \"{value}\" to {path}: {errno}")]
    Write { path: PathBuf, value: u64, errno: String },
    /// `sys/kernel/mm/hugepages` exists but cannot be listed: nothing was changed.
    #[error("cannot list the huge page sizes, nothing changed: {0}")]
    Sizes(#[source] HostError),
}

/// The count file of a pool, relative to the host root.
pub fn pool_path(size_kb: u64, numa_node: Option<u32>) -> String {
    match numa_node {
        None => format!("{GLOBAL_DIR}/hugepages-{size_kb}kB/nr_hugepages"),
        Some(n) => format!("{NODE_DIR}/node{n}/hugepages/hugepages-{size_kb}kB/nr_hugepages"),
    }
}

/// `2Mi`, `1Gi`, or `<N>kB` for a size nodeprep has no name for.
pub fn size_name(size_kb: u64) -> String {
    [HugepageSize::TwoMi, HugepageSize::OneGi]
        .into_iter()
        .find(|s| s.size_kb() == size_kb)
        .map_or_else(|| format!("{size_kb}kB"), |s| s.as_str().to_owned())
}

/// What to do with one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Write the requested count: the pool grows (the kernel allocates pages).
    Grow,
    /// Write the requested count: the pool shrinks (the kernel frees free pages).
    Shrink,
    /// Already at the requested count: no write.
    Unchanged,
    /// The current count could not be read (missing or garbage file): not written.
    Unreadable,
    /// Not possible on this host: not written.
    Refused { reason: String },
}

/// One reservation against the host's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChange {
    pub size: HugepageSize,
    pub numa_node: Option<u32>,
    /// The pool's `nr_hugepages`, relative to the host root.
    pub path: String,
    /// The pool's count now; `None` when the pool does not exist or its count is unreadable.
    pub current: Option<u64>,
    pub requested: u64,
    pub action: PoolAction,
}

fn action_for(current: Option<u64>, requested: u64) -> PoolAction {
    match current {
        None => PoolAction::Unreadable,
        Some(c) => written(c, requested),
    }
}

fn written(current: u64, requested: u64) -> PoolAction {
    match current.cmp(&requested) {
        std::cmp::Ordering::Equal => PoolAction::Unchanged,
        std::cmp::Ordering::Less => PoolAction::Grow,
        std::cmp::Ordering::Greater => PoolAction::Shrink,
    }
}

/// Pure: what [`reserve`] would do with each reservation on a host with these pools, in
/// reservation order.
pub fn plan(reservations: &[HugepageReservation], facts: &HugepageFacts) -> Vec<PoolChange> {
    reservations
        .iter()
        .map(|r| {
            let size_kb = r.size.size_kb();
            let path = pool_path(size_kb, r.numa_node);
            let dir = path.trim_end_matches("/nr_hugepages");
            let (current, action) = match (facts.size(size_kb), r.numa_node) {
                (None, _) => {
                    let offered: Vec<String> = facts.sizes.iter().map(|s| size_name(s.size_kb)).collect();
                    let offered = if offered.is_empty() {
                        "it offers none (no hugetlbfs in this kernel?)".to_owned()
                    } else {
                        format!("it offers {}", offered.join(", "))
                    };
                    let why = match r.size {
                        HugepageSize::OneGi => "; 1Gi pages need a CPU with pdpe1gb",
                        HugepageSize::TwoMi => "",
                    };
                    let reason = format!(
                        "the kernel does not offer {} pages: no {GLOBAL_DIR}/hugepages-{size_kb}kB ({offered}){why}",
                        r.size
                    );
                    (None, PoolAction::Refused { reason })
                }
                (Some(s), None) => (s.total, action_for(s.total, r.pages)),
                (Some(s), Some(n)) => match s.nodes.iter().find(|p| p.node == n) {
                    Some(p) => (p.total, action_for(p.total, r.pages)),
                    None => {
                        let nodes: Vec<String> = s.nodes.iter().map(|p| p.node.to_string()).collect();
                        let have = if nodes.is_empty() {
                            "this host shows no per-node pools".to_owned()
                        } else {
                            format!("the NUMA nodes with one: {}", nodes.join(", "))
                        };
                        let reason = format!(
                            "NUMA node {n} has no {} pool: no {dir} (the node does not exist or has no memory; {have})",
                            r.size
                        );
                        (None, PoolAction::Refused { reason })
                    }
                },
            };
            PoolChange { size: r.size, numa_node: r.numa_node, path, current, requested: r.pages, action }
        })
        .collect()
}

/// How one pool came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolOutcome {
    /// Written, and the kernel reports exactly the requested count.
    Reserved,
    /// Already at the requested count: nothing written.
    Unchanged,
    /// Written, but the pool is not at the requested count: the kernel could not allocate
    /// that many (too little free contiguous memory), or, when shrinking, kept pages in use.
    Short,
    /// Not possible on this host (size not offered, no such NUMA node): nothing written.
    Refused,
    /// The count could not be read, written or read back.
    Failed,
}

impl PoolOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolOutcome::Reserved => "reserved",
            PoolOutcome::Unchanged => "unchanged",
            PoolOutcome::Short => "short",
            PoolOutcome::Refused => "refused",
            PoolOutcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for PoolOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageOutcome {
    pub size_kb: u64,
    /// `None` for the global pool.
    pub numa_node: Option<u32>,
    /// The pool's `nr_hugepages`, relative to the host root.
    pub path: String,
    pub requested: u64,
    /// The count before; `None` when there is no such pool or it could not be read.
    pub before: Option<u64>,
    /// The count the kernel reports after the write (or now, when unchanged); `None` when
    /// nothing could be read.
    pub granted: Option<u64>,
    /// Writes to the pool's file (0 or 1).
    pub writes: usize,
    pub outcome: PoolOutcome,
    /// Why, when refused, short or failed.
    pub detail: Option<String>,
}

impl HugepageOutcome {
    /// Short, refused or failed: the pool is not as the config asks.
    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, PoolOutcome::Short | PoolOutcome::Refused | PoolOutcome::Failed)
    }

    /// `2Mi` or `1Gi`.
    pub fn size(&self) -> String {
        size_name(self.size_kb)
    }

    /// `global` or `node0`.
    pub fn pool(&self) -> String {
        self.numa_node.map_or_else(|| "global".to_owned(), |n| format!("node{n}"))
    }
}

/// Sets the pools the reservations name on the host, reads each back and reports what the
/// kernel granted, in reservation order. No reservation, no read. Fails (having changed nothing)
/// only when `sys/kernel/mm/hugepages` exists but cannot be listed; every other problem is the
/// outcome of the pool it concerns.
pub fn reserve(root: &HostRoot, reservations: &[HugepageReservation]) -> Result<Vec<HugepageOutcome>, HugepageError> {
    reserve_with(root, reservations, &mut write_count)
}

/// [`reserve`] with the writes to the pools' files made by `write(path, value)`: tests stand in
/// for the kernel with it (a kernel that grants fewer pages than asked).
pub fn reserve_with(
    root: &HostRoot,
    reservations: &[HugepageReservation],
    write: &mut dyn FnMut(&Path, &str) -> io::Result<()>,
) -> Result<Vec<HugepageOutcome>, HugepageError> {
    if reservations.is_empty() {
        return Ok(Vec::new());
    }
    root.list_dir(GLOBAL_DIR).map_err(HugepageError::Sizes)?;
    let (facts, warnings) = crate::host::system::read_hugepage_pools(root);
    for w in &warnings {
        tracing::debug!(warning = %w, "reading huge page pools");
    }
    let changes = plan(reservations, &facts);
    // Shrinking first: the memory it frees can go to the pools that grow.
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by_key(|&i| match changes[i].action {
        PoolAction::Shrink => 0,
        _ => 1,
    });
    let mut outcomes: Vec<Option<HugepageOutcome>> = vec![None; changes.len()];
    for i in order {
        let o = apply(root, &changes[i], write);
        let (size, pool) = (o.size(), o.pool());
        match o.outcome {
            PoolOutcome::Reserved => {
                tracing::info!(size, pool, before = ?o.before, granted = ?o.granted, "huge pages reserved")
            }
            PoolOutcome::Unchanged => tracing::debug!(size, pool, count = o.requested, "huge page pool unchanged"),
            _ => {
                let detail = o.detail.as_deref().unwrap_or("");
                tracing::warn!(size, pool, outcome = %o.outcome, detail, "huge page pool not as configured");
            }
        }
        outcomes[i] = Some(o);
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// One pool: write when needed, read back, judge.
fn apply(root: &HostRoot, c: &PoolChange, write: &mut dyn FnMut(&Path, &str) -> io::Result<()>) -> HugepageOutcome {
    let mut o = HugepageOutcome {
        size_kb: c.size.size_kb(),
        numa_node: c.numa_node,
        path: c.path.clone(),
        requested: c.requested,
        before: c.current,
        granted: None,
        writes: 0,
        outcome: PoolOutcome::Failed,
        detail: None,
    };
    match &c.action {
        // Read again for the error itself (the snapshot only kept a warning); a count that reads
        // now (the file changed meanwhile) is used.
        PoolAction::Unreadable => match read_count(root, &c.path) {
            Ok(n) => {
                let now = PoolChange { current: Some(n), action: written(n, c.requested), ..c.clone() };
                return apply(root, &now, write);
            }
            Err(e) => o.detail = Some(format!("{e}; not written")),
        },
        PoolAction::Refused { reason } => {
            o.outcome = PoolOutcome::Refused;
            o.detail = Some(reason.clone());
        }
        PoolAction::Unchanged => {
            o.outcome = PoolOutcome::Unchanged;
            o.granted = o.before;
        }
        PoolAction::Grow | PoolAction::Shrink => {
            let path = root.join(&c.path);
            o.writes = 1;
            if let Err(e) = write(&path, &format!("{}\n", c.requested)) {
                let errno = match e.raw_os_error() {
                    Some(n) => nix::errno::Errno::from_raw(n).to_string(),
                    None => e.to_string(),
                };
                o.detail = Some(HugepageError::Write { path, value: c.requested, errno }.to_string());
                return o;
            }
            match read_count(root, &c.path) {
                Err(e) => o.detail = Some(format!("wrote {}, then {e}", c.requested)),
                Ok(granted) => {
                    o.granted = Some(granted);
                    o.outcome = if granted == c.requested { PoolOutcome::Reserved } else { PoolOutcome::Short };
                    o.detail = short_detail(c, granted);
                }
            }
        }
    }
    o
}

/// Why a pool is short, and what to do about it; `None` when it is not.
fn short_detail(c: &PoolChange, granted: u64) -> Option<String> {
    let on = c.numa_node.map(|n| format!(" on NUMA node {n}")).unwrap_or_default();
    let (size, requested) = (c.size, c.requested);
    if granted < requested {
        let kept = if granted > 0 { format!("; the {granted} stay reserved") } else { String::new() };
        Some(format!(
            "the kernel granted {granted} of {requested} {size} pages{on}: not enough free contiguous memory \
             (too little, fragmented or in use){kept}. Reserve them at boot instead: \
             `nodeprep machineconfig --hugepages {size}:{requested}` renders the kernel arguments"
        ))
    } else if granted > requested {
        Some(format!(
            "the kernel kept {granted} {size} pages{on} where {requested} were asked: pages in use are freed \
             only when released (they are surplus pages until then)"
        ))
    } else {
        None
    }
}

/// A pool's count, as the kernel prints it (`512\n`).
fn read_count(root: &HostRoot, rel: &str) -> Result<u64, HugepageError> {
    let path = root.join(rel);
    let text = fs::read_to_string(&path).map_err(|source| HugepageError::Read { path: path.clone(), source })?;
    let value = text.trim();
    value.parse().map_err(|_| HugepageError::Invalid { path, found: value.chars().take(80).collect() })
}

/// Writes a count the way `echo N > nr_hugepages` does: one write call to an existing file
/// (never created; `O_TRUNC` is what the shell passes, sysfs ignores it and a plain file in a
/// fixture needs it).
fn write_count(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())
}
