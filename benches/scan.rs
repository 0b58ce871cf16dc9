//! Discovery benchmark: the 4,096-function SR-IOV tree (64 PFs x 63 VFs) scanned by nodeprep
//! and, in the same run and on the same tree, by pciutils' `lspci -D -n -k`.
//!
//! Prints medians (and p90) for: the library's `discover` (names and host usage included), the
//! `nodeprep scan -o json` process end to end, and the `lspci` process; then the ratio
//! lspci / nodeprep. Runs are interleaved so both tools see the same cache state.
//! `cargo bench --bench scan` (optionally `-- ROUNDS`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeprep::host::{HostRoot, pci};

fn time<F: FnMut()>(mut f: F) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let p90 = v[(v.len() * 9 / 10).min(v.len() - 1)];
    (median, p90)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run_quiet(mut c: Command) {
    let status = c.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("command runs");
    assert!(status.success(), "{c:?} failed");
}

fn nodeprep_scan(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nodeprep"));
    c.arg("--host-root").arg(root).args(["scan", "-o", "json"]);
    c
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(21);
    let built = Instant::now();
    let tree = support::machines::sriov_4096();
    let build_time = built.elapsed();
    let root = tree.root();
    let host = HostRoot::new(root);
    let inv = pci::discover(&host).expect("discover");
    assert_eq!(inv.devices.len(), 4096, "the fixture has 4,096 functions");
    let have_lspci = Command::new("lspci").arg("--version").output().is_ok_and(|o| o.status.success());

    // Warm up every path once (page cache, dentries, the binary itself).
    let _ = pci::discover(&host);
    run_quiet(nodeprep_scan(root));
    if have_lspci {
        run_quiet(support::lspci::command(root));
    }

    let (mut lib, mut proc_, mut lspci) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        lib.push(time(|| {
            let inv = pci::discover(&host).expect("discover");
            assert_eq!(inv.devices.len(), 4096);
        }));
        proc_.push(time(|| run_quiet(nodeprep_scan(root))));
        if have_lspci {
            lspci.push(time(|| run_quiet(support::lspci::command(root))));
        }
    }
    let (lib_m, lib_p) = stats(lib);
    let (proc_m, proc_p) = stats(proc_);
    println!(
        "scan benchmark: 4,096 PCI functions (64 PFs x 63 VFs), {rounds} rounds, tree built in {:.0} ms",
        ms(build_time)
    );
    println!("  nodeprep discover (library, names + usage)  median {:7.2} ms  p90 {:7.2} ms", ms(lib_m), ms(lib_p));
    println!("  nodeprep scan -o json (whole process)       median {:7.2} ms  p90 {:7.2} ms", ms(proc_m), ms(proc_p));
    if have_lspci {
        let (ls_m, ls_p) = stats(lspci);
        println!("  lspci -D -n -k (whole process)              median {:7.2} ms  p90 {:7.2} ms", ms(ls_m), ms(ls_p));
        println!(
            "  ratio lspci / nodeprep: {:.2}x for the process, {:.2}x for the library (goal: >= 1.00)",
            ms(ls_m) / ms(proc_m),
            ms(ls_m) / ms(lib_m)
        );
    } else {
        println!("  lspci not installed: no baseline (install pciutils)");
    }
}
