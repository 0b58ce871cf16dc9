//! DRA claim Prepare latency, the first part of `cargo bench --bench dra` (optionally `-- ROUNDS`,
//! the VM rounds, default 11). One benchmark binary with the cluster part (`dra.rs`): each bench
//! binary is a whole fat-LTO link, the longest step of a cold CI run.
//!
//! 1. **Without the bind, on a fixture host, in-process**: `nodeprep::dra::prepare::prepare` over
//!    the `intel_gpu_server` fixture (`tests/support`) for GPU A (`0000:3b:00.0`, `atRest: vfio`,
//!    already on vfio-pci, alone in IOMMU group 6), through the simulated kernel: Prepare makes
//!    no sysfs write (asserted), so this is the cost of reading the host, planning, writing the
//!    CDI spec, the device metadata and the checkpoint. 200 rounds, each a fresh claim UID:
//!    Prepare, the same Prepare again (answered from the checkpoint), Unprepare.
//! 2. **With the bind, on the real kernel**: in the QEMU guest (Debian's 6.1 kernel, emulated
//!    Intel IOMMU), ROUNDS rounds of `nodeprep dra prepare`, the same prepare again and
//!    `nodeprep dra unprepare` of a claim for edu (no driver at rest), then of a claim for edu and
//!    the e1000e NIC (unbound from e1000e on Prepare, probed by e1000e again on Unprepare), each
//!    round with fresh claim UIDs. Each process is timed in the guest from kernel log marks
//!    (`/dev/kmsg`, microseconds; busybox `date` has no `%N`), so QEMU's boot is not counted. The
//!    first Prepare also loads vfio-pci and is reported apart. `nodeprep --version` is timed the
//!    same way: the floor every process pays (exec and page-in of the binary under TCG).
//!
//! Under TCG every instruction is emulated: the VM times are several times what the same kernel
//! and binary take on hardware. They compare runs on one machine, not absolute goals.
//!
//! Prints, per series, the number of rounds, the median and the p99 (nearest rank: with fewer
//! than 100 rounds it is the slowest round).

use crate::{realkernel, support};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nodeprep::config::Config;
use nodeprep::dra::prepare::{self, claim_allocation, settings_for};
use nodeprep::host::{HostRoot, kubelet};
use realkernel::{E1000E, EDU, Machine, Vm};
use serde_json::{Value, json};
use support::kernel_sim::KernelSim;

const DRIVER: &str = "vfio.nodeprep.io";
const NODE: &str = "node-a";
const FIXTURE_ROUNDS: usize = 200;

/// GPU A of `intel_gpu_server`, at rest on vfio-pci.
const FIXTURE_CONFIG: &str = r#"
dra:
  devices:
    - resourceName: nvidia.com/tesla_t4
      atRest: vfio
      selectors: {pciAddresses: ["0000:3b:00.0"]}
"#;
const GPU_A_DEV: &str = "pci-0000-3b-00-0";

/// edu and e1000e, at rest on their host drivers.
const VM_CONFIG: &str = r#"
dra:
  devices:
    - resourceName: nodeprep.io/edu
      atRest: host
      selectors: {vendors: ["1234"], devices: ["11e8"]}
    - resourceName: nodeprep.io/e1000e
      atRest: host
      selectors: {vendors: ["8086"], devices: ["10d3"]}
"#;
const EDU_DEV: &str = "pci-0000-02-00-0";
const E1000E_DEV: &str = "pci-0000-01-00-0";

fn claim(name: &str, uid: &str, results: &[(&str, &str)]) -> Value {
    let r: Vec<Value> = results
        .iter()
        .map(|(req, dev)| json!({"request": req, "driver": DRIVER, "pool": NODE, "device": dev}))
        .collect();
    json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "vms", "uid": uid},
        "status": {"allocation": {"devices": {"results": r}}},
    })
}

fn uid(series: u32, round: usize) -> String {
    format!("00000000-0000-4000-8000-{series:04x}{round:08x}")
}

/// (rounds, median, p99) in milliseconds; p99 by nearest rank.
fn stats(mut v: Vec<f64>) -> (usize, f64, f64) {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let p99 = v[(n * 99).div_ceil(100).clamp(1, n) - 1];
    (n, v[n / 2], p99)
}

fn line(what: &str, v: Vec<f64>) {
    let (n, median, p99) = stats(v);
    println!("  {what:<50} n={n:<4} median {median:9.3} ms   p99 {p99:9.3} ms");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fixture() {
    let t = support::intel_gpu_server();
    let root = HostRoot::new(t.root());
    let config = Config::parse(FIXTURE_CONFIG).expect("valid config");
    let s = settings_for(
        DRIVER,
        NODE,
        "/var/run/cdi",
        "/var/lib/kubelet/plugins/vfio.nodeprep.io",
        &kubelet::plugin_dir(&root, None),
    );
    let mut sim = KernelSim::new(&t);
    assert_eq!(sim.driver_of(support::intel::GPU_A).as_deref(), Some("vfio-pci"), "fixture: GPU A on vfio-pci");
    let (mut first, mut again, mut unprep) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..FIXTURE_ROUNDS {
        let u = uid(1, i);
        let alloc = claim_allocation(&claim(&format!("vm-{i}"), &u, &[("vm", GPU_A_DEV)]), DRIVER).expect("claim");
        let t0 = Instant::now();
        let got = prepare::prepare(&root, &s, &config, &alloc, &mut sim).expect("GPU A prepared");
        let t1 = Instant::now();
        let repeat = prepare::prepare(&root, &s, &config, &alloc, &mut sim).expect("GPU A prepared again");
        let t2 = Instant::now();
        prepare::unprepare(&root, &s, &u, &mut sim).expect("GPU A unprepared");
        let t3 = Instant::now();
        assert_eq!(got, repeat, "round {i}: the repeat answers the same");
        assert_eq!(got[0].cdi_ids[0], format!("{DRIVER}/pci={u}-{GPU_A_DEV}"));
        first.push(ms(t1 - t0));
        again.push(ms(t2 - t1));
        unprep.push(ms(t3 - t2));
    }
    assert!(sim.log.is_empty(), "atRest: vfio, already on vfio-pci: no sysfs write: {:#?}", sim.log);
    assert_eq!(sim.driver_of(support::intel::GPU_A).as_deref(), Some("vfio-pci"));
    println!(
        "DRA Prepare without the bind: fixture host (intel_gpu_server), in-process, GPU A atRest: vfio, \
         0 sysfs writes"
    );
    line("Prepare (fresh claim)", first);
    line("Prepare again (from the checkpoint)", again);
    line("Unprepare", unprep);
}

/// One series in the guest: the claim files and the script lines.
struct Series {
    key: &'static str,
    what: &'static str,
    results: &'static [(&'static str, &'static str)],
    /// Functions and the driver each must have after Prepare and after Unprepare.
    expect: &'static [(&'static str, &'static str, &'static str)],
}

const SERIES: [Series; 2] = [
    Series {
        key: "edu",
        what: "edu (no driver at rest)",
        results: &[("vm", EDU_DEV)],
        expect: &[(EDU, "vfio-pci", "-")],
    },
    Series {
        key: "both",
        what: "edu + e1000e (unbound from e1000e)",
        results: &[("vm", EDU_DEV), ("nic", E1000E_DEV)],
        expect: &[(EDU, "vfio-pci", "-"), (E1000E, "vfio-pci", "e1000e")],
    },
];

fn vm(rounds: usize) {
    let mut vm = Vm::new(Machine::Iommu)
        .kernel_arg("printk.devkmsg=on")
        .timeout(Duration::from_secs(120 + 60 * rounds as u64))
        .file("/etc/nodeprep/dra.yaml", VM_CONFIG);
    let mut script = String::from(
        r#"D="--config /etc/nodeprep/dra.yaml --node-name node-a"
mark() { echo "nodeprep-bench $1" > /dev/kmsg; }
drv() { if [ -e /sys/bus/pci/devices/$1/driver ]; then basename "$(readlink /sys/bus/pci/devices/$1/driver)"; else echo -; fi; }
rounds() {
"#,
    );
    for i in 0..rounds {
        // The floor: a nodeprep process that does nothing.
        script.push_str(&format!("mark start-{i}-a\nnodeprep --version >/dev/null\nmark start-{i}-b\n"));
        for (n, s) in SERIES.iter().enumerate() {
            let u = uid(n as u32 + 2, i);
            let file = format!("/etc/nodeprep/claim-{}-{i}.json", s.key);
            vm = vm.file(&file, claim(&format!("{}-{i}", s.key), &u, s.results).to_string());
            let k = format!("{}-{i}", s.key);
            let devs: Vec<&str> = s.expect.iter().map(|(a, _, _)| *a).collect();
            let drvs = devs.iter().map(|a| format!("$(drv {a})")).collect::<Vec<_>>().join(",");
            script.push_str(&format!(
                "mark {k}-a\n\
                 nodeprep dra prepare $D --claim {file} >/tmp/p 2>&1; p=$?\n\
                 mark {k}-b\n\
                 nodeprep dra prepare $D --claim {file} >/tmp/p2 2>&1; p2=$?\n\
                 mark {k}-c\n\
                 bound={drvs}\n\
                 cmp -s /tmp/p /tmp/p2; same=$?\n\
                 mark {k}-d\n\
                 nodeprep dra unprepare $D --uid {u} >/tmp/u 2>&1; u=$?\n\
                 mark {k}-e\n\
                 echo \"round {k} prepare=$p again=$p2 same=$same unprepare=$u bound=$bound restored={drvs}\"\n\
                 [ $p = 0 ] || cat /tmp/p\n\
                 [ $u = 0 ] || cat /tmp/u\n"
            ));
        }
    }
    script.push_str("}\nsection rounds rounds\nsection marks dmesg\n");
    let out = vm.run(&script);

    // The kernel log's marks: `[   12.345678] nodeprep-bench edu-0-a`.
    let marks: BTreeMap<String, f64> = out
        .section("marks")
        .lines()
        .filter_map(|l| {
            let (stamp, rest) = l.split_once(']')?;
            let name = rest.trim().strip_prefix("nodeprep-bench ")?;
            let secs: f64 = stamp.trim_start_matches(|c| c != '[').trim_start_matches('[').trim().parse().ok()?;
            Some((name.to_owned(), secs * 1e3))
        })
        .collect();
    let span = |k: &str, from: char, to: char| -> f64 {
        let get = |c: char| {
            let name = format!("{k}-{c}");
            *marks.get(&name).unwrap_or_else(|| panic!("no mark {name} in the kernel log:\n{}", out.section("marks")))
        };
        get(to) - get(from)
    };
    let lines: Vec<&str> = out.section("rounds").lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(lines.len(), rounds * SERIES.len(), "every round ran:\n{}", out.section("rounds"));
    println!(
        "DRA Prepare with the bind: real kernel in QEMU/TCG (times several times hardware's), \
         nodeprep dra prepare/unprepare processes, {rounds} rounds"
    );
    line(
        "nodeprep --version (process start, the floor)",
        (0..rounds).map(|i| span(&format!("start-{i}"), 'a', 'b')).collect(),
    );
    let mut first_load = None;
    for s in &SERIES {
        let (mut p, mut again, mut unprep) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let k = format!("{}-{i}", s.key);
            let l = lines
                .iter()
                .find(|l| l.starts_with(&format!("round {k} ")))
                .unwrap_or_else(|| panic!("no round {k}:\n{}", out.section("rounds")));
            let bound: Vec<&str> = s.expect.iter().map(|(_, b, _)| *b).collect();
            let restored: Vec<&str> = s.expect.iter().map(|(_, _, r)| *r).collect();
            let want = format!(
                "round {k} prepare=0 again=0 same=0 unprepare=0 bound={} restored={}",
                bound.join(","),
                restored.join(",")
            );
            assert_eq!(*l, want, "round {k}:\n{}", out.section("rounds"));
            let t = span(&k, 'a', 'b');
            if i == 0 && first_load.is_none() {
                first_load = Some(t);
            } else {
                p.push(t);
            }
            again.push(span(&k, 'b', 'c'));
            unprep.push(span(&k, 'd', 'e'));
        }
        println!(" claim for {}:", s.what);
        if !p.is_empty() {
            line("Prepare (binds, writes CDI/metadata/checkpoint)", p);
        }
        line("Prepare again (from the checkpoint)", again);
        line("Unprepare (gives back, removes files)", unprep);
    }
    if let Some(t) = first_load {
        println!("  first Prepare of the boot (also loads vfio-pci): {t:.1} ms");
    }
}

pub fn run() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(11);
    fixture();
    vm(rounds.max(1));
}
