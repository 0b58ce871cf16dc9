//! Huge page pools set at run time (`nodeprep::hugepages`) on fixture trees laid out like the
//! kernel's: the plan for global and per-node pools, no write when nothing changes, refusals,
//! one bad pool not stopping the others, a kernel stand-in that grants fewer pages than asked,
//! and `nodeprep hugepages` run as a real process. The real kernel's answers are in `tests/vm.rs`.

mod support;

use std::cell::RefCell;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nodeprep::config::{Config, HugepageReservation};
use nodeprep::host::HostRoot;
use nodeprep::host::system::read_hugepage_pools;
use nodeprep::hugepages::{self, HugepageError, PoolAction, PoolOutcome};
use nodeprep::machineconfig::HugepageSize::{OneGi, TwoMi};
use serde_json::Value;
use support::HostTree;
use support::cli::{nodeprep, stderr, stdout};

const TWO_MI: u64 = 2048;
const ONE_GI: u64 = 1_048_576;
const GLOBAL_2M: &str = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const GLOBAL_1G: &str = "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";

/// Two NUMA nodes; 2Mi: 512 (256 + 256), 1Gi: 4 (2 + 2).
fn two_nodes() -> HostTree {
    let t = HostTree::new();
    t.numa_nodes(2).hugepages(TWO_MI, 512, 500, &[(0, 256, 250), (1, 256, 250)]).hugepages(
        ONE_GI,
        4,
        4,
        &[(0, 2, 2), (1, 2, 2)],
    );
    t
}

fn r(size: nodeprep::machineconfig::HugepageSize, pages: u64, numa_node: Option<u32>) -> HugepageReservation {
    HugepageReservation { size, pages, numa_node }
}

fn count(t: &HostTree, rel: &str) -> String {
    fs::read_to_string(t.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}")).trim().to_owned()
}

/// A kernel stand-in: records each write and stores `grant(requested)` in the file, the way the
/// kernel leaves the count it could reach.
struct StandIn {
    writes: RefCell<Vec<(PathBuf, String)>>,
}

impl StandIn {
    fn new() -> StandIn {
        StandIn { writes: RefCell::new(Vec::new()) }
    }

    fn writer<'a>(
        &'a self,
        grant: impl Fn(&Path, u64) -> io::Result<u64> + 'a,
    ) -> impl FnMut(&Path, &str) -> io::Result<()> + 'a {
        move |path: &Path, value: &str| {
            self.writes.borrow_mut().push((path.to_owned(), value.to_owned()));
            let requested: u64 = value.trim().parse().map_err(|_| io::Error::from_raw_os_error(22))?;
            if !path.exists() {
                return Err(io::Error::from_raw_os_error(2));
            }
            fs::write(path, format!("{}\n", grant(path, requested)?))
        }
    }

    fn count(&self) -> usize {
        self.writes.borrow().len()
    }
}

#[test]
fn plan_for_global_and_per_node_pools() {
    let t = two_nodes();
    let (facts, warnings) = read_hugepage_pools(&HostRoot::new(t.root()));
    assert_eq!(warnings, Vec::<String>::new());
    let plan = hugepages::plan(
        &[r(TwoMi, 1024, None), r(OneGi, 0, Some(1)), r(OneGi, 2, Some(0)), r(TwoMi, 8, Some(0))],
        &facts,
    );
    let got: Vec<(&str, Option<u64>, u64, &PoolAction)> =
        plan.iter().map(|c| (c.path.as_str(), c.current, c.requested, &c.action)).collect();
    assert_eq!(
        got,
        vec![
            (GLOBAL_2M, Some(512), 1024, &PoolAction::Grow),
            (
                "sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages",
                Some(2),
                0,
                &PoolAction::Shrink
            ),
            (
                "sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages",
                Some(2),
                2,
                &PoolAction::Unchanged
            ),
            (
                "sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages",
                Some(256),
                8,
                &PoolAction::Shrink
            ),
        ]
    );
    assert_eq!(plan[0].size, TwoMi);
    assert_eq!(plan[1].numa_node, Some(1));
    // Every path is a file the tree really has: the plan names the kernel's own files.
    for c in &plan {
        assert!(t.path(&c.path).is_file(), "{}", c.path);
    }
}

#[test]
fn global_and_per_node_pools_are_written_and_read_back() {
    let t = two_nodes();
    let root = HostRoot::new(t.root());
    let out = hugepages::reserve(&root, &[r(TwoMi, 1024, None), r(OneGi, 3, Some(1))]).expect("reserve");
    assert_eq!(count(&t, GLOBAL_2M), "1024");
    assert_eq!(count(&t, "sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages"), "3");
    assert_eq!(count(&t, "sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages"), "2");
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].size_kb, out[0].numa_node, out[0].before, out[0].granted, out[0].writes, out[0].outcome),
        (TWO_MI, None, Some(512), Some(1024), 1, PoolOutcome::Reserved)
    );
    assert_eq!(
        (out[1].size_kb, out[1].numa_node, out[1].before, out[1].granted, out[1].writes, out[1].outcome),
        (ONE_GI, Some(1), Some(2), Some(3), 1, PoolOutcome::Reserved)
    );
    assert_eq!(out[0].detail, None);
    assert!(!out.iter().any(|o| o.is_failure()));

    // Outcomes serialize camelCase, like bind's.
    let json = serde_json::to_value(&out[1]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "sizeKb": ONE_GI, "numaNode": 1,
            "path": "sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages",
            "requested": 3, "before": 2, "granted": 3, "writes": 1, "outcome": "reserved", "detail": null
        })
    );
}

#[test]
fn pools_already_at_their_count_get_no_write() {
    let t = two_nodes();
    let root = HostRoot::new(t.root());
    let kernel = StandIn::new();
    let mut write = kernel.writer(|_, n| Ok(n));
    let out =
        hugepages::reserve_with(&root, &[r(TwoMi, 512, None), r(OneGi, 2, Some(0)), r(OneGi, 2, Some(1))], &mut write)
            .expect("reserve");
    assert_eq!(kernel.count(), 0, "zero writes when nothing changes");
    for o in &out {
        assert_eq!(
            (o.outcome, o.writes, o.granted, o.before),
            (PoolOutcome::Unchanged, 0, o.before, Some(o.requested))
        );
        assert!(!o.is_failure());
    }
    // No reservation at all: nothing is even read (an empty root is fine).
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(hugepages::reserve(&HostRoot::new(empty.path()), &[]).expect("nothing to do"), vec![]);
}

#[test]
fn a_size_or_node_the_kernel_does_not_have_is_refused_unwritten() {
    let t = HostTree::new();
    t.numa_nodes(1).hugepages(TWO_MI, 0, 0, &[(0, 0, 0)]);
    let root = HostRoot::new(t.root());
    let kernel = StandIn::new();
    let mut write = kernel.writer(|_, n| Ok(n));
    let out =
        hugepages::reserve_with(&root, &[r(OneGi, 4, None), r(TwoMi, 8, Some(3)), r(TwoMi, 16, None)], &mut write)
            .expect("reserve");
    assert_eq!(kernel.count(), 1, "only the pool that exists is written");
    assert_eq!((out[0].outcome, out[0].writes, out[0].before, out[0].granted), (PoolOutcome::Refused, 0, None, None));
    let d0 = out[0].detail.as_deref().unwrap_or_default();
    assert!(
        d0.contains("does not offer 1Gi pages")
            && d0.contains("sys/kernel/mm/hugepages/hugepages-1048576kB")
            && d0.contains("it offers 2Mi")
            && d0.contains("pdpe1gb"),
        "{d0}"
    );
    assert!(!t.path("sys/kernel/mm/hugepages/hugepages-1048576kB").exists(), "nothing created");
    assert_eq!(out[1].outcome, PoolOutcome::Refused);
    let d1 = out[1].detail.as_deref().unwrap_or_default();
    assert!(d1.contains("NUMA node 3 has no 2Mi pool") && d1.contains("NUMA nodes with one: 0"), "{d1}");
    assert!(!t.path("sys/devices/system/node/node3").exists(), "nothing created");
    assert_eq!(out[2].outcome, PoolOutcome::Reserved);
    assert!(out[0].is_failure() && out[1].is_failure());

    // A kernel without hugetlbfs at all.
    let bare = HostTree::new();
    bare.numa_nodes(1);
    let out = hugepages::reserve(&HostRoot::new(bare.root()), &[r(TwoMi, 8, None)]).expect("reserve");
    assert_eq!(out[0].outcome, PoolOutcome::Refused);
    assert!(out[0].detail.as_deref().unwrap_or_default().contains("it offers none"), "{:?}", out[0].detail);
}

#[test]
fn a_garbage_count_fails_that_pool_only() {
    let t = two_nodes();
    t.file(GLOBAL_2M, "lots\n");
    t.file("sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages", "");
    let root = HostRoot::new(t.root());
    let out = hugepages::reserve(&root, &[r(TwoMi, 64, None), r(OneGi, 1, Some(0)), r(OneGi, 1, Some(1))])
        .expect("one bad pool is not an error for the call");
    assert_eq!((out[0].outcome, out[0].writes, out[0].before, out[0].granted), (PoolOutcome::Failed, 0, None, None));
    let d = out[0].detail.as_deref().unwrap_or_default();
    assert!(
        d.contains(&format!("read {}", t.path(GLOBAL_2M).display()))
            && d.contains("\"lots\"")
            && d.contains("not written"),
        "{d}"
    );
    assert_eq!(count(&t, GLOBAL_2M), "lots", "not written");
    assert_eq!(out[1].outcome, PoolOutcome::Reserved, "{:?}", out[1]);
    assert_eq!(count(&t, "sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages"), "1");
    assert_eq!(out[2].outcome, PoolOutcome::Failed);
    assert!(out[2].detail.as_deref().unwrap_or_default().contains("found \"\""), "{:?}", out[2].detail);
}

#[test]
fn a_kernel_that_grants_fewer_pages_makes_the_pool_short() {
    let t = two_nodes();
    let root = HostRoot::new(t.root());
    let kernel = StandIn::new();
    // Fragmented memory: at most 600 2Mi pages; 1Gi pages in use on node 0 (1 of them).
    let mut write =
        kernel.writer(|p, n| Ok(if p.to_string_lossy().contains("2048kB") { n.min(600) } else { n.max(1) }));
    let out =
        hugepages::reserve_with(&root, &[r(TwoMi, 4096, None), r(OneGi, 0, Some(0))], &mut write).expect("reserve");
    assert_eq!((out[0].outcome, out[0].granted, out[0].writes), (PoolOutcome::Short, Some(600), 1));
    let d = out[0].detail.as_deref().unwrap_or_default();
    assert!(
        d.contains("granted 600 of 4096 2Mi pages") && d.contains("nodeprep machineconfig --hugepages 2Mi:4096"),
        "{d}"
    );
    assert_eq!(count(&t, GLOBAL_2M), "600", "what was granted is kept");
    assert_eq!((out[1].outcome, out[1].granted), (PoolOutcome::Short, Some(1)));
    let d = out[1].detail.as_deref().unwrap_or_default();
    assert!(d.contains("kept 1 1Gi pages on NUMA node 0 where 0 were asked") && d.contains("in use"), "{d}");
    assert!(out.iter().all(|o| o.is_failure()));

    // The shrinking pool was written first (its memory can serve the growing one); the outcomes
    // stay in config order.
    let order: Vec<String> = kernel.writes.borrow().iter().map(|(p, v)| format!("{} {v}", p.display())).collect();
    assert_eq!(
        order,
        vec![
            format!(
                "{} 0\n",
                t.path("sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages").display()
            ),
            format!("{} 4096\n", t.path(GLOBAL_2M).display()),
        ]
    );
}

#[test]
fn a_failed_write_names_the_file_and_errno_and_the_others_proceed() {
    let t = two_nodes();
    let root = HostRoot::new(t.root());
    let kernel = StandIn::new();
    let mut write = kernel.writer(|p, n| {
        if p.to_string_lossy().contains("1048576kB") { Err(io::Error::from_raw_os_error(22)) } else { Ok(n) }
    });
    let out = hugepages::reserve_with(&root, &[r(OneGi, 8, None), r(TwoMi, 16, None)], &mut write).expect("reserve");
    assert_eq!((out[0].outcome, out[0].writes, out[0].granted), (PoolOutcome::Failed, 1, None));
    let d = out[0].detail.as_deref().unwrap_or_default();
    assert_eq!(d, format!("write \"8\" to {}: EINVAL: Invalid argument", t.path(GLOBAL_1G).display()));
    assert_eq!(out[1].outcome, PoolOutcome::Reserved);
    assert_eq!(count(&t, GLOBAL_2M), "16");
}

#[test]
fn an_unlistable_sizes_directory_changes_nothing() {
    let t = HostTree::new();
    t.file("sys/kernel/mm/hugepages", "not a directory");
    let err = hugepages::reserve(&HostRoot::new(t.root()), &[r(TwoMi, 8, None)]).expect_err("must fail");
    assert!(matches!(err, HugepageError::Sizes(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("nothing changed") && text.contains(&t.path("sys/kernel/mm/hugepages").display().to_string()),
        "{text}"
    );
}

// ---- the command -------------------------------------------------------------------------------

fn config_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write config");
    p
}

#[test]
fn the_hugepages_command_reports_and_sets_its_exit_status() {
    let t = two_nodes();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config_file(
        dir.path(),
        "good.yaml",
        "hugepages:\n  - size: 2Mi\n    pages: 640\n  - size: 1Gi\n    pages: 2\n    numaNode: 1\n",
    );
    let path = good.to_string_lossy().into_owned();

    let o = nodeprep(t.root(), &["hugepages", "--config", &path, "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["writes"], 1);
    assert_eq!(v["outcomes"][0]["outcome"], "reserved");
    assert_eq!(v["outcomes"][0]["granted"], 640);
    assert_eq!(v["outcomes"][1]["outcome"], "unchanged");
    assert_eq!(count(&t, GLOBAL_2M), "640");

    let o = nodeprep(t.root(), &["hugepages", "--config", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("OUTCOME"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["unchanged", "2Mi", "global", "640", "640", "640"]),
        "{text}"
    );
    assert!(text.contains("0 sysfs writes"), "{text}");

    // A refused pool: exit 1, the reason printed under its line.
    let bad = config_file(dir.path(), "bad.yaml", "hugepages:\n  - size: 2Mi\n    pages: 8\n    numaNode: 7\n");
    let o = nodeprep(t.root(), &["hugepages", "--config", &bad.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("NUMA node 7 has no 2Mi pool"), "{}", stdout(&o));

    // An invalid config: exit 2, nothing changed.
    let invalid = config_file(dir.path(), "invalid.yaml", "hugepages:\n  - size: 3Mi\n    pages: 8\n");
    let o = nodeprep(t.root(), &["hugepages", "--config", &invalid.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("hugepages[0]: size \"3Mi\""), "{}", stderr(&o));

    // No hugepages section: nothing to do.
    let none = config_file(dir.path(), "none.yaml", "devices: []\n");
    let o = nodeprep(t.root(), &["hugepages", "--config", &none.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("reserves no huge pages"), "{}", stdout(&o));
    assert_eq!(Config::load(&none).expect("valid").hugepages, vec![]);
}
