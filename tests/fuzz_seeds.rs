//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`) from the fixture machines of
//! `tests/support` and from the formats' own writers, so the seeds are the files and messages
//! nodeprep reads in the tests. The corpus is checked in; rerun this after a fixture or a format
//! changes (see docs/fuzzing.md):
//!
//! ```text
//! NODEPREP_FUZZ_SEEDS_WRITE=1 cargo test --test fuzz_seeds
//! ```
//!
//! Without it the test checks the checked-in corpus is up to date. Every seed is checked with the
//! parser its target feeds it to, so a seed that no longer parses fails here, not silently in the
//! fuzzer.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

#[allow(dead_code)]
mod support {
    #[path = "../support/machines.rs"]
    pub mod machines;
    #[path = "../support/tree.rs"]
    pub mod tree;
}

use support::machines;
use support::tree::HostTree;

struct Corpus {
    dir: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.dir.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        let bytes = bytes.as_ref();
        assert!(bytes.len() <= 8192, "{target}/{name}: seeds stay small ({} bytes)", bytes.len());
        fs::write(dir.join(name), bytes).expect("write seed");
    }
}

fn read(t: &HostTree, rel: &str) -> Option<Vec<u8>> {
    fs::read(t.path(rel)).ok()
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p).ok()?.file_name()?.to_str().map(str::to_owned)
}

/// One machine's PCI functions in the sysfs target's format (see fuzz/fuzz_targets/sysfs.rs).
fn sysfs_seed(t: &HostTree, max_devices: usize) -> String {
    let dir = t.path("sys/bus/pci/devices");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("devices dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    let mut groups: Vec<String> = fs::read_dir(t.path("sys/kernel/iommu_groups"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    groups.sort();
    let mut blocks = vec![format!("groups={}", groups.join(" "))];
    for name in names.iter().take(max_devices) {
        let d = dir.join(name);
        let mut lines = vec![format!("address={name}")];
        for attr in [
            "vendor",
            "device",
            "subsystem_vendor",
            "subsystem_device",
            "class",
            "revision",
            "numa_node",
            "sriov_totalvfs",
            "sriov_numvfs",
            "boot_vga",
            "driver_override",
        ] {
            if let Ok(v) = fs::read(d.join(attr)) {
                lines.push(format!("{attr}={}", String::from_utf8_lossy(&v).trim_end()));
            }
        }
        for link in ["driver", "iommu_group", "physfn"] {
            if let Some(n) = link_name(&d.join(link)) {
                lines.push(format!("{link}={n}"));
            }
        }
        let mut virtfns: Vec<String> = fs::read_dir(&d)
            .map(|r| {
                r.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with("virtfn")).collect()
            })
            .unwrap_or_default();
        virtfns.sort();
        for v in virtfns {
            if let Some(n) = link_name(&d.join(&v)) {
                lines.push(format!("{v}={n}"));
            }
        }
        blocks.push(lines.join("\n"));
    }
    blocks.join("\n\n") + "\n"
}

/// A kernel uevent datagram for a PCI function of the tree: `ACTION@DEVPATH`, then the kernel's
/// variables and the device's own `uevent` file.
fn pci_uevent(t: &HostTree, addr: &str, action: &str, driver: Option<&str>, seqnum: u64) -> Vec<u8> {
    let devpath = format!("/{}", t.pci_dir(addr).strip_prefix("sys").expect("under sys").display());
    let mut out = format!("{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM=pci\0").into_bytes();
    let own = String::from_utf8(read(t, &format!("{}/uevent", t.pci_dir(addr).display())).expect("uevent file"))
        .expect("utf8");
    for line in own.lines().filter(|l| !l.starts_with("DRIVER=")) {
        out.extend_from_slice(line.as_bytes());
        out.push(0);
    }
    if let Some(d) = driver {
        out.extend_from_slice(format!("DRIVER={d}\0").as_bytes());
    }
    out.extend_from_slice(format!("SEQNUM={seqnum}\0").as_bytes());
    out
}

/// A netlink attribute: length, type, value, padded to 4 bytes.
fn rta(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
fn rtmsg(family: u8, dst_len: u8, table: u8, protocol: u8, scope: u8) -> Vec<u8> {
    let mut out = vec![family, dst_len, 0, 0, table, protocol, scope, 1];
    out.extend_from_slice(&0u32.to_ne_bytes());
    out
}

fn netlink_seeds(c: &Corpus) {
    use nodeprep::host::netlink::{parse_address, parse_link, parse_route};
    // RTM_NEWLINK: struct ifinfomsg (family, pad, type, index, flags, change), IFLA_IFNAME and
    // IFLA_LINKINFO { IFLA_INFO_KIND } (nested).
    let link = |index: u32, name: &str, kind: Option<&str>| {
        let mut p = vec![0u8, 0];
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&0x1043u32.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend(rta(3, format!("{name}\0").as_bytes()));
        p.extend(rta(4, &1500u32.to_ne_bytes()));
        if let Some(k) = kind {
            p.extend(rta(18 | 0x8000, &rta(1, format!("{k}\0").as_bytes())));
        }
        p
    };
    let l = link(2, "eno1", None);
    assert!(parse_link(&l).is_ok());
    c.put("routes", "netlink-link-eno1", &l);
    let l = link(7, "bond0", Some("bond"));
    assert_eq!(parse_link(&l).expect("link").kind.as_deref(), Some("bond"));
    c.put("routes", "netlink-link-bond", &l);

    // RTM_NEWADDR: struct ifaddrmsg (family, prefixlen, flags, scope, index), IFA_ADDRESS,
    // IFA_LOCAL.
    let mut a = vec![2u8, 24, 0x80, 0];
    a.extend_from_slice(&2u32.to_ne_bytes());
    a.extend(rta(1, &[192, 168, 1, 10]));
    a.extend(rta(2, &[192, 168, 1, 10]));
    assert!(parse_address(&a).expect("address").is_some());
    c.put("routes", "netlink-addr-v4", &a);
    let mut a = vec![10u8, 64, 0x80, 0];
    a.extend_from_slice(&2u32.to_ne_bytes());
    a.extend(rta(1, &"2001:db8::10".parse::<std::net::Ipv6Addr>().expect("v6").octets()));
    assert!(parse_address(&a).expect("address").is_some());
    c.put("routes", "netlink-addr-v6", &a);

    // RTM_NEWROUTE: a default route (main table, RTA_TABLE, RTA_GATEWAY, RTA_OIF); a connected
    // /24 (RTA_DST); an IPv6 default over two next hops (RTA_MULTIPATH); one through a nexthop
    // object (RTA_NH_ID) in table 100.
    let mut r = rtmsg(2, 0, 254, 3, 0);
    r.extend(rta(15, &254u32.to_ne_bytes()));
    r.extend(rta(5, &[192, 168, 1, 1]));
    r.extend(rta(4, &2u32.to_ne_bytes()));
    assert!(parse_route(&r).expect("route").is_some());
    c.put("routes", "netlink-route-v4-default", &r);
    let mut r = rtmsg(2, 24, 254, 2, 253);
    r.extend(rta(15, &254u32.to_ne_bytes()));
    r.extend(rta(1, &[192, 168, 1, 0]));
    r.extend(rta(7, &[192, 168, 1, 10]));
    r.extend(rta(4, &2u32.to_ne_bytes()));
    assert!(parse_route(&r).expect("route").is_some());
    c.put("routes", "netlink-route-v4-connected", &r);
    let mut r = rtmsg(10, 0, 254, 9, 0);
    r.extend(rta(15, &254u32.to_ne_bytes()));
    let mut hops = Vec::new();
    for ifindex in [2u32, 3] {
        let gw = rta(5, &"fe80::1".parse::<std::net::Ipv6Addr>().expect("v6").octets());
        hops.extend_from_slice(&((8 + gw.len()) as u16).to_ne_bytes());
        hops.extend_from_slice(&[0, 0]);
        hops.extend_from_slice(&ifindex.to_ne_bytes());
        hops.extend(gw);
    }
    r.extend(rta(9, &hops));
    assert_eq!(parse_route(&r).expect("route").expect("v6").oifs, vec![2, 3]);
    c.put("routes", "netlink-route-v6-multipath", &r);
    let mut r = rtmsg(2, 16, 252, 4, 0);
    r.extend(rta(15, &100u32.to_ne_bytes()));
    r.extend(rta(1, &[10, 1, 0, 0]));
    r.extend(rta(30, &5u32.to_ne_bytes()));
    assert!(parse_route(&r).expect("route").expect("v4").nexthop_id);
    c.put("routes", "netlink-route-nhid-table100", &r);
}

fn config_seeds(c: &Corpus) {
    let configs: [(&str, &str); 6] = [
        (
            "hyperconverged",
            r#"pciHostDevices:
  - pciDeviceSelector: "10DE:1EB8"
    resourceName: nvidia.com/TU104GL_Tesla_T4
    externalResourceProvider: true
permittedHostDevices:
  pciHostDevices:
    - pciDeviceSelector: "144d:a808"
      resourceName: samsung.com/nvme
      bind: none
"#,
        ),
        (
            "selectors",
            r#"devices:
  - resourceName: intel.com/ice_vf
    bind: vfio-pci
    selectors:
      vendors: ["8086"]
      devices: ["1889"]
      classes: ["02", "0200", "020000"]
      drivers: [iavf, vfio-pci]
      pfNames: ["ens1f0#0-1", "ens1f1#3", ens2f0]
      numaNodes: [0]
  - selectors:
      pciAddresses: ["0000:5e:00.0", "3b:00.0"]
"#,
        ),
        (
            "counted-hugepages-labels",
            r#"countedResources:
  - resourceName: kata.peerpods.io/vm
    count: 10
  - resourceName: devices.kubevirt.io/kvm
    count: 110
    devicePath: /dev/kvm
hugepages:
  - size: 2Mi
    pages: 1024
  - size: 1Gi
    pages: 4
    numaNode: 1
nodeLabels:
  kata: true
"#,
        ),
        (
            "cdi-dra",
            r#"cdi:
  kind: nodeprep.io/vfio
  specDir: /var/run/cdi
dra:
  driverName: vfio.nodeprep.io
  devices:
    - resourceName: nvidia.com/quadro_rtx_6000
      atRest: host
      selectors: {vendors: ["10de"], devices: ["1e30"]}
    - resourceName: example.com/nvme
      atRest: vfio
      selectors: {pciAddresses: ["0000:5e:00.0"]}
"#,
        ),
        (
            "invalid",
            r#"# every problem is listed
pciHostDevices:
  - pciDeviceSelector: "10DE"
    bind: maybe
devices:
  - selectors: {vendors: ["zz"], classes: ["0"], pfNames: ["eth0#5-2"], pciAddresses: ["0000:3b:00.9"]}
countedResources:
  - resourceName: x
    count: 0
    devicePath: /etc/../dev/kvm
hugepages:
  - size: 3Mi
    pages: -1
unknownKey: 1
"#,
        ),
        ("empty", "# nothing selected\n"),
    ];
    for (name, text) in configs {
        let _ = nodeprep::config::Config::parse(text);
        c.put("config", name, text);
    }
}

fn json_file_seeds(c: &Corpus) {
    use nodeprep::deviceplugin::cdi;
    use nodeprep::dra::checkpoint::Checkpoint;
    use nodeprep::host::kubelet::parse_checkpoint;

    // The kubelet's checkpoint: DeviceIDs by NUMA node (1.20+), a plain list (older), none.
    let by_numa = json!({
        "Data": {
            "PodDeviceEntries": [
                {"PodUID": "6d3c6f2e-4b0b-4f53-9d3f-0c9e8b1a2f10", "ContainerName": "compute",
                 "ResourceName": "nvidia.com/TU104GL_Tesla_T4", "DeviceIDs": {"0": ["0000:3b:00.0"], "1": null},
                 "AllocResp": "CiIKHFBDSURFVklDRV9OVklESUFfQ09NX1RVMTA0R0xfVA=="},
                {"PodUID": "a1b2c3d4-0000-4000-8000-000000000001", "ContainerName": "qat",
                 "ResourceName": "intel.com/qat_vf", "DeviceIDs": {"0": ["0000:5e:01.0", "0000:5e:01.1"]},
                 "AllocResp": ""}
            ],
            "RegisteredDevices": {"nvidia.com/TU104GL_Tesla_T4": ["0000:3b:00.0", "0000:af:00.0"]}
        },
        "Checksum": 1234567890u64
    });
    let list = json!({
        "Data": {
            "PodDeviceEntries": [
                {"PodUID": "p1", "ContainerName": "c", "ResourceName": "intel.com/sriov", "DeviceIDs": ["0000:86:00.2"], "AllocResp": ""}
            ],
            "RegisteredDevices": {}
        },
        "Checksum": 42
    });
    let none = json!({"Data": {"PodDeviceEntries": null, "RegisteredDevices": null}, "Checksum": 0});
    for (name, v) in
        [("kubelet-checkpoint-by-numa", by_numa), ("kubelet-checkpoint-list", list), ("kubelet-checkpoint-empty", none)]
    {
        let text = serde_json::to_string_pretty(&v).expect("json");
        parse_checkpoint(&text).expect("seed parses");
        c.put("files", name, text);
    }

    // nodeprep's CDI spec, as it writes it.
    let vfio = |group: &str| nodeprep::grant::cdi_edits(&[format!("/dev/vfio/{group}")], &BTreeMap::new());
    let devices: BTreeMap<String, _> =
        [("0000:3b:00.0".to_owned(), vfio("7")), ("0000:af:00.0".to_owned(), vfio("noiommu-12"))].into_iter().collect();
    let spec = serde_json::to_vec_pretty(&cdi::spec("nodeprep.io/vfio", &devices)).expect("spec");
    cdi::parse_spec(&spec).expect("seed parses");
    c.put("files", "cdi-spec", spec);

    // The bind state.
    let state = json!({
        "version": 1,
        "devices": {
            "0000:3b:00.0": {"originalDriver": "nvidia", "originalOverride": null, "resourceName": "nvidia.com/TU104GL_Tesla_T4"},
            "0000:3b:00.1": {"originalDriver": "snd_hda_intel", "originalOverride": null, "resourceName": null},
            "0000:5e:01.0": {"originalDriver": null, "originalOverride": "c6xxvf", "resourceName": "intel.com/qat_vf"}
        }
    });
    let text = serde_json::to_string_pretty(&state).expect("json");
    serde_json::from_str::<nodeprep::bind::State>(&text).expect("seed parses");
    c.put("files", "bind-state", text);

    // The DRA checkpoint.
    let cp = json!({
        "version": 1,
        "claims": {
            "4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01": {
                "claim": {"namespace": "vms", "name": "gpu-claim", "uid": "4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01"},
                "podClaimName": "gpu",
                "bootId": "0f6bd3a6-4c2c-4dcb-a3ab-6a5f1a7c9b0e",
                "devices": [{
                    "requests": ["gpu"], "pool": "worker-0", "device": "pci-0000-3b-00-0",
                    "cdiIds": ["vfio.nodeprep.io/pci=4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01-pci-0000-3b-00-0",
                               "vfio.nodeprep.io/metadata=4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01_gpu"],
                    "functions": ["0000:3b:00.0", "0000:3b:00.1"],
                    "atRest": "host",
                    "originalDrivers": {"0000:3b:00.0": "nvidia", "0000:3b:00.1": null}
                }],
                "files": ["/var/run/cdi/vfio-nodeprep-io-claim-4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01.json"]
            }
        }
    });
    let bytes = serde_json::to_vec_pretty(&cp).expect("json");
    Checkpoint::parse(&bytes).expect("seed parses");
    c.put("files", "dra-checkpoint", bytes);
}

fn dra_claim_seeds(c: &Corpus) {
    use nodeprep::dra::prepare::claim_allocation;
    let driver = nodeprep::dra::DEFAULT_DRIVER;
    let claim = |name: &str, annotations: serde_json::Value, results: serde_json::Value| {
        json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {
                "name": name, "namespace": "vms", "uid": "4c1b1f3e-1f2a-4a3e-9a43-bb2b1ccf6d01",
                "resourceVersion": "4711", "annotations": annotations
            },
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vfio.nodeprep.io"}}]}},
            "status": {"allocation": {"devices": {"results": results}}}
        })
    };
    let seeds = [
        (
            "one-gpu",
            claim(
                "gpu-claim",
                json!({}),
                json!([{"request": "gpu", "driver": driver, "pool": "worker-0", "device": "pci-0000-3b-00-0"}]),
            ),
        ),
        (
            "template-subrequest",
            claim(
                "vm-gpu-x7k2p",
                json!({"resource.kubernetes.io/pod-claim-name": "gpu"}),
                json!([
                    {"request": "gpu/high-memory", "driver": driver, "pool": "worker-0", "device": "pci-0000-af-00-0"},
                    {"request": "nic", "driver": "sriovnetwork.k8snetworkplumbingwg.io", "pool": "worker-0", "device": "vf-3"}
                ]),
            ),
        ),
        ("not-allocated", json!({"metadata": {"name": "c", "namespace": "vms", "uid": "u-1"}, "status": {}})),
    ];
    for (name, v) in seeds {
        let _ = claim_allocation(&v, driver);
        c.put("dra_claim", name, serde_json::to_vec_pretty(&v).expect("json"));
    }
}

/// The checked-in corpus is what the fixtures and the formats' writers give today: a fixture or a
/// format that changed without its seeds being rewritten fails here, naming the seeds.
/// `NODEPREP_FUZZ_SEEDS_WRITE=1` rewrites them instead.
#[test]
fn the_fuzz_seed_corpus_is_what_the_fixtures_give() {
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    if std::env::var_os("NODEPREP_FUZZ_SEEDS_WRITE").is_some() {
        write_seeds(&checked_in);
        return;
    }
    let fresh = tempfile::tempdir().expect("tempdir");
    write_seeds(fresh.path());
    let mut stale = Vec::new();
    let mut count = 0;
    for target in fs::read_dir(fresh.path()).expect("fresh corpus") {
        let target = target.expect("entry").path();
        for seed in fs::read_dir(&target).expect("target dir") {
            let seed = seed.expect("entry").path();
            let rel = seed.strip_prefix(fresh.path()).expect("under the corpus").to_owned();
            count += 1;
            if fs::read(checked_in.join(&rel)).ok() != fs::read(&seed).ok() {
                stale.push(rel.display().to_string());
            }
        }
    }
    assert!(count >= 50, "only {count} seeds written");
    assert!(
        stale.is_empty(),
        "seeds missing or different in fuzz/corpus (rewrite with NODEPREP_FUZZ_SEEDS_WRITE=1 cargo test --test fuzz_seeds): {stale:?}"
    );
}

fn write_seeds(dir: &Path) {
    let c = Corpus { dir: dir.to_owned() };

    let intel = machines::intel_gpu_server();
    let amd = machines::amd_iommu_off();
    let nested = machines::nested_vm();
    let hostile = machines::hostile();
    let sriov = machines::big_sriov(1, 4);

    // sysfs: each machine's functions, as the reader sees their files and links.
    for (name, t, max) in [
        ("intel-gpu-server", &intel, 16),
        ("amd-iommu-off", &amd, 16),
        ("nested-vm", &nested, 16),
        ("hostile", &hostile, 16),
        ("sriov-pf-4vfs", &sriov, 8),
    ] {
        c.put("sysfs", name, sysfs_seed(t, max));
    }

    // uevent: the kernel's datagrams for the fixture's functions, a vfio group node, a udevd
    // message (ignored).
    use machines::intel::{GPU_A, NIC, QAT_VFS};
    c.put("uevent", "pci-add", pci_uevent(&intel, NIC, "add", Some("i40e"), 2101));
    c.put("uevent", "pci-unbind", pci_uevent(&intel, GPU_A, "unbind", None, 2102));
    c.put("uevent", "pci-bind-vfio", pci_uevent(&intel, GPU_A, "bind", Some("vfio-pci"), 2103));
    c.put("uevent", "pci-remove-vf", pci_uevent(&intel, QAT_VFS[3], "remove", None, 2104));
    c.put(
        "uevent",
        "vfio-group-add",
        b"add@/devices/virtual/vfio/7\0ACTION=add\0DEVPATH=/devices/virtual/vfio/7\0SUBSYSTEM=vfio\0MAJOR=511\0MINOR=0\0DEVNAME=vfio/7\0SEQNUM=2105\0",
    );
    c.put(
        "uevent",
        "vfio-dev-add",
        b"add@/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/vfio-dev/vfio0\0ACTION=add\0DEVPATH=/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/vfio-dev/vfio0\0SUBSYSTEM=vfio-dev\0MAJOR=238\0MINOR=0\0DEVNAME=vfio/devices/vfio0\0SEQNUM=2106\0",
    );
    c.put("uevent", "libudev", b"libudev\0\xfe\xed\xca\xfe\x28\0\0\0\x28\0\0\0\x00\0\0\0ACTION=add\0SUBSYSTEM=pci\0");

    // procfs: each file as the fixtures write it (the hostile machine's broken ones included).
    for (machine, t) in [("intel", &intel), ("amd", &amd), ("hostile", &hostile)] {
        for rel in ["proc/1/mountinfo", "proc/mounts", "proc/swaps", "proc/meminfo", "proc/cmdline", "proc/modules"] {
            if let Some(bytes) = read(t, rel) {
                let name = format!("{machine}-{}", rel.trim_start_matches("proc/").replace('/', "-"));
                c.put("procfs", &name, bytes);
            }
        }
    }
    // cpuinfo is long (one block per CPU): the hostile machine's two CPUs.
    c.put("procfs", "hostile-cpuinfo", read(&hostile, "proc/cpuinfo").expect("cpuinfo"));

    // routes: the fixture's proc/net files, an ipv6_route as `ipv6_route_native_seq_show`
    // prints it, and rtnetlink payloads.
    c.put("routes", "intel-route", read(&intel, "proc/net/route").expect("route"));
    if let Some(b) = read(&intel, "proc/net/if_inet6") {
        c.put("routes", "intel-if_inet6", b);
    }
    c.put(
        "routes",
        "ipv6_route",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eno1\n\
         20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eno1\n\
         00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n",
    );
    netlink_seeds(&c);

    config_seeds(&c);
    json_file_seeds(&c);
    dra_claim_seeds(&c);
}
