//! The `nodeprep` command line: formats, exit statuses and help, run as a real process.

mod support;

use support::cli::{nodeprep, stderr, stdout};

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::machines;

const DEVICE_KEYS: &[&str] = &[
    "address",
    "vendorId",
    "deviceId",
    "subsystemVendorId",
    "subsystemDeviceId",
    "classId",
    "vendorName",
    "deviceName",
    "driver",
    "iommuGroup",
    "numaNode",
    "physfn",
    "sriovTotalVfs",
    "sriovNumVfs",
    "warnings",
];

#[test]
fn scan_json_and_yaml_carry_the_same_devices() {
    let t = machines::intel_gpu_server();
    let json = nodeprep(t.root(), &["scan", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let json: Value = serde_json::from_slice(&json.stdout).expect("json");
    let list = json.as_array().expect("array of devices");
    assert_eq!(list.len(), 22);
    for d in list {
        for k in DEVICE_KEYS {
            assert!(d.get(k).is_some(), "{k} missing from {d}");
        }
    }
    let gpu = list.iter().find(|d| d["address"] == "0000:3b:00.0").expect("gpu");
    assert_eq!(gpu["vendorId"], "10de");
    assert_eq!(gpu["deviceId"], "1eb8");
    assert_eq!(gpu["classId"], "030200");
    assert_eq!(gpu["deviceName"], "TU104GL [Tesla T4]");
    assert_eq!(gpu["iommuGroup"], 6);
    let vf = list.iter().find(|d| d["address"] == "0000:5e:01.2").expect("qat vf");
    assert_eq!(vf["physfn"], "0000:5e:00.0");
    assert_eq!(vf["vfIndex"], 2);

    let yaml = nodeprep(t.root(), &["scan", "-o", "yaml"]);
    assert!(yaml.status.success());
    let yaml: Value = serde_yaml::from_slice(&yaml.stdout).expect("yaml");
    assert_eq!(yaml, json, "yaml and json carry the same data");
}

#[test]
fn scan_text_groups_by_iommu_group() {
    let t = machines::intel_gpu_server();
    let o = nodeprep(t.root(), &["scan"]);
    assert!(o.status.success());
    let text = stdout(&o);
    let group = text.find("IOMMU group 20 (DMA, shared by 2 endpoint functions)").expect("shared group header");
    let gpu = text.find("0000:af:00.0 VGA compatible controller [0300]: NVIDIA Corporation").expect("gpu line");
    let audio = text.find("0000:af:00.1 Audio device [0403]: NVIDIA Corporation").expect("audio line");
    assert!(group < gpu && gpu < audio, "members listed under their group");
    assert!(text.contains("IOMMU group 6 (DMA, isolated)"));
    assert!(text.contains("Network: eno1 up, default route"));
    assert!(text.contains("SR-IOV VF 3 of PF 0000:5e:00.0"));
    assert!(text.contains("22 PCI functions, 21 IOMMU groups (1 shared)"), "{text}");
}

#[test]
fn check_exit_status_follows_requirements() {
    let intel = machines::intel_gpu_server();
    let o = nodeprep(intel.root(), &["check", "--require", "kata,passthrough,hugepages"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Kata            yes"));

    let vm = machines::nested_vm();
    let o = nodeprep(vm.root(), &["check", "--require", "kata"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not fit for: kata"), "{}", stderr(&o));
    // Nothing required: the report alone, success.
    assert_eq!(nodeprep(vm.root(), &["check"]).status.code(), Some(0));

    let amd = machines::amd_iommu_off();
    let o = nodeprep(amd.root(), &["check", "--require", "kata,passthrough"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("passthrough") && !stderr(&o).contains("kata"), "{}", stderr(&o));
}

#[test]
fn check_json_has_every_verdict() {
    let t = machines::intel_gpu_server();
    let o = nodeprep(t.root(), &["check", "-o", "json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    for k in ["iommu", "virtualization", "vfio", "hugepages", "kata", "passthrough"] {
        assert!(v[k]["eligible"].is_boolean(), "{k}: {v}");
    }
    assert_eq!(v["kata"]["eligible"], true);
    assert_eq!(v["passthrough"]["eligible"], true);
    assert_eq!(v["iommuGroups"]["shared"], 1);
}

#[test]
fn usage_and_host_errors_exit_2() {
    let t = machines::intel_gpu_server();
    let o = nodeprep(t.root(), &["check", "--require", "gpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("valid requirements are"), "{}", stderr(&o));

    let o = nodeprep(Path::new("/nonexistent/host"), &["scan"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/host/sys/bus/pci/devices"), "{}", stderr(&o));
    let o = nodeprep(Path::new("/nonexistent/host"), &["check"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_command_has_help_with_an_example() {
    for args in [&["--help"][..], &["scan", "--help"], &["check", "--help"], &["hugepages", "--help"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_nodeprep")).args(args).output().expect("run");
        assert!(o.status.success());
        let text = stdout(&o);
        assert!(text.contains("Examples:") && text.contains("nodeprep "), "{args:?}: {text}");
    }
}

#[test]
fn real_machine_scan_and_check_succeed() {
    let scan = nodeprep(Path::new("/"), &["scan"]);
    assert!(scan.status.success(), "{}", stderr(&scan));
    assert!(stdout(&scan).contains("PCI functions"));
    let check = nodeprep(Path::new("/"), &["check", "-o", "json"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let v: Value = serde_json::from_slice(&check.stdout).expect("json");
    assert!(v["kata"]["eligible"].is_boolean());
}
