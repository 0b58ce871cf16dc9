//! Cross-check against pciutils: on every fixture tree and on the real machine running the
//! tests, `lspci -D -n -k` and `nodeprep scan -o json` must agree on every address, id, class,
//! revision, subsystem and driver.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::lspci::{self, LspciDevice};
use support::machines;

/// `nodeprep scan -o json` on a host root, keyed by address.
fn nodeprep_scan(root: &Path) -> BTreeMap<String, Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeprep"))
        .arg("--host-root")
        .arg(root)
        .args(["scan", "-o", "json"])
        .output()
        .expect("run nodeprep");
    assert!(out.status.success(), "nodeprep scan failed: {}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).expect("scan -o json is a JSON array");
    list.into_iter().map(|d| (d["address"].as_str().expect("address").to_owned(), d)).collect()
}

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Compares one device; returns the disagreements.
fn compare(addr: &str, l: &LspciDevice, n: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |what: &str, lspci: Option<String>, ours: Option<String>| {
        if lspci != ours {
            diffs.push(format!("{addr} {what}: lspci {lspci:?}, nodeprep {ours:?}"));
        }
    };
    check("vendor", Some(l.vendor.clone()), s(&n["vendorId"]));
    check("device", Some(l.device.clone()), s(&n["deviceId"]));
    check("class", Some(l.class.clone()), s(&n["classId"]).map(|c| c[..4].to_owned()));
    check("driver", l.driver.clone(), s(&n["driver"]));
    // lspci omits revision 00 and absent subsystems: compare what it shows.
    let rev = n["revision"].as_u64().filter(|r| *r != 0).map(|r| format!("{r:02x}"));
    check("revision", l.revision.clone(), rev);
    if let Some(sub) = &l.subsystem {
        let ours = s(&n["subsystemVendorId"]).zip(s(&n["subsystemDeviceId"])).map(|(v, d)| format!("{v}:{d}"));
        check("subsystem", Some(sub.clone()), ours);
    }
    diffs
}

fn assert_agree(root: &Path, skip: &[&str]) -> usize {
    let l = lspci::run(root);
    let n = nodeprep_scan(root);
    let keys = |m: Vec<&String>| m.into_iter().filter(|a| !skip.contains(&a.as_str())).cloned().collect::<Vec<_>>();
    assert_eq!(keys(l.keys().collect()), keys(n.keys().collect()), "both list the same addresses");
    let mut diffs = Vec::new();
    for (addr, ld) in &l {
        if skip.contains(&addr.as_str()) {
            continue;
        }
        diffs.extend(compare(addr, ld, &n[addr]));
    }
    assert!(diffs.is_empty(), "lspci and nodeprep disagree:\n{}", diffs.join("\n"));
    l.len()
}

#[test]
fn intel_gpu_server_agrees_with_lspci() {
    let t = machines::intel_gpu_server();
    assert_eq!(assert_agree(t.root(), &[]), 22);
}

#[test]
fn amd_host_agrees_with_lspci() {
    let t = machines::amd_iommu_off();
    assert!(assert_agree(t.root(), &[]) >= 5);
}

#[test]
fn nested_vm_agrees_with_lspci() {
    let t = machines::nested_vm();
    assert!(assert_agree(t.root(), &[]) >= 5);
}

#[test]
fn four_thousand_functions_agree_with_lspci() {
    let t = machines::sriov_4096();
    assert_eq!(assert_agree(t.root(), &[]), 4096);
}

#[test]
fn hostile_tree_stops_lspci_but_not_nodeprep() {
    let t = machines::hostile();
    // lspci gives up on the whole tree when one function lacks its class file...
    let err = lspci::try_run(t.root()).expect_err("lspci cannot read the hostile tree");
    assert!(err.contains("Cannot open"), "{err}");
    // ...nodeprep lists every function it can reach, with warnings on the broken ones.
    let scan = nodeprep_scan(t.root());
    for (a, _) in machines::HOSTILE_BROKEN {
        assert!(scan.contains_key(*a), "{a} listed");
    }
    // Without the two functions lspci cannot survive, both agree on everything not broken.
    t.remove(&format!("sys/bus/pci/devices/{}", machines::hostile_addrs::NO_CLASS));
    t.remove(&format!("sys/bus/pci/devices/{}", machines::hostile_addrs::DANGLING_BUS_LINK));
    let broken: Vec<&str> = machines::HOSTILE_BROKEN.iter().map(|(a, _)| *a).collect();
    assert!(assert_agree(t.root(), &broken) >= 3);
}

#[test]
fn real_machine_agrees_with_lspci() {
    assert!(assert_agree(Path::new("/"), &[]) >= 1);
}
