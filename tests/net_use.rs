//! Network use on fixture trees laid out like the kernel's: a NIC is not bound while it is a
//! port of OVS, a bond or a bridge, has upper devices, or anything above it carries an address
//! or a route (in any routing table); nor when its driver is bound and no interface of it is
//! visible, nor when the tables that decide this cannot be read. Plus the rtnetlink reader in a
//! real network namespace.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use nodeprep::bind::{self, Action, BindPlan};
use nodeprep::config::Config;
use nodeprep::host::{HostRoot, kubelet, netlink, pci};
use nodeprep::model::{PciAddress, PciInventory};
use serde_json::Value;
use support::cli::{nodeprep, stderr, stdout};
use support::{HostTree, PciFn};

/// Port 0 and port 1 of an Intel I350 (igb), each in its own IOMMU group.
const UPLINK: &str = "0000:04:00.0";
const SPARE: &str = "0000:04:00.1";

/// Both ports of the I350 by vendor:device, as a new user would write it.
const NIC_CONFIG: &str = r#"
pciHostDevices:
  - pciDeviceSelector: "8086:1521"
    resourceName: example.com/nic
"#;

fn addr(s: &str) -> PciAddress {
    s.parse().expect("fixture address")
}

fn discover(t: &HostTree) -> PciInventory {
    pci::discover(&HostRoot::new(t.root())).expect("discover")
}

fn plan(t: &HostTree, config: &str) -> BindPlan {
    let root = HostRoot::new(t.root());
    let inv = pci::discover(&root).expect("discover");
    let config = Config::parse(config).expect("valid config");
    let claims = config.claims(&inv).expect("no conflicting claims");
    let allocations = kubelet::read_allocations(&kubelet::plugin_dir(&root, None)).expect("checkpoint");
    bind::plan_bind(&inv, &config, &claims, &allocations, false)
}

fn action<'a>(p: &'a BindPlan, a: &str) -> &'a Action {
    &p.devices.iter().find(|d| d.address == addr(a)).unwrap_or_else(|| panic!("{a} not in the plan:\n{p}")).action
}

fn refusal<'a>(p: &'a BindPlan, a: &str) -> &'a str {
    match action(p, a) {
        Action::Refused { reason } => reason,
        other => panic!("{a} must be refused, the plan says {other:?}:\n{p}"),
    }
}

/// A worker with a dual-port I350 behind root port 00:1c.0: `eno1` on port 0, `eno2` (down, no
/// address) on port 1.
fn dual_port_worker() -> HostTree {
    let t = HostTree::new();
    t.iommu_unit("dmar0");
    t.pci(&PciFn::new("0000:00:00.0", 0x8086, 0x3e30, 0x060000).group(0))
        .pci(&PciFn::new("0000:00:1c.0", 0x8086, 0xa338, 0x060400).driver("pcieport").group(12))
        .pci(
            &PciFn::new(UPLINK, 0x8086, 0x1521, 0x020000)
                .parent("0000:00:1c.0")
                .subsys(0x8086, 0x0001)
                .driver("igb")
                .group(13),
        )
        .pci(
            &PciFn::new(SPARE, 0x8086, 0x1521, 0x020000)
                .parent("0000:00:1c.0")
                .subsys(0x8086, 0x0001)
                .driver("igb")
                .group(14),
        );
    t.net(UPLINK, "eno1", "up").net(SPARE, "eno2", "down");
    t.mounts("proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n");
    t
}

/// OVN-Kubernetes: `eno1` is a port of the OVS datapath `ovs-system`; the address and the
/// default route sit on the OVS internal port `br-ex`, not on the NIC.
fn ovn_worker() -> HostTree {
    let t = dual_port_worker();
    t.net_virtual("ovs-system", "down").net_virtual("br-ex", "unknown").net_virtual("br-int", "down");
    t.net_master("eno1", "ovs-system");
    t.routes(&["br-ex"]);
    t
}

#[test]
fn ovn_br_ex_uplink_is_refused_and_the_spare_port_binds() {
    let t = ovn_worker();
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, UPLINK);
    assert!(why.contains("eno1 is a port of OVS (ovs-system)"), "{why}");
    assert_eq!(action(&p, SPARE), &Action::Bind { from: Some("igb".into()) }, "\n{p}");
    let inv = discover(&t);
    let eno1 = &inv.device(&addr(UPLINK)).expect("uplink").net[0];
    assert_eq!(eno1.master.as_ref().and_then(|m| m.kind.as_deref()), Some("openvswitch"));
}

#[test]
fn ovn_br_ex_bind_dry_run_through_the_binary_refuses_the_uplink() {
    let t = ovn_worker();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.yaml");
    fs::write(&cfg, NIC_CONFIG).expect("write config");
    let cfg = cfg.to_str().expect("utf-8");
    let out = nodeprep(t.root(), &["bind", "--config", cfg, "--dry-run", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "a refusal makes exit status 1: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let devices = v["devices"].as_array().expect("devices");
    let by = |a: &str| devices.iter().find(|d| d["address"] == a).unwrap_or_else(|| panic!("{a} in {v}"));
    assert_eq!(by(UPLINK)["action"], "refused");
    assert!(by(UPLINK)["reason"].as_str().expect("reason").contains("ovs-system"), "{v}");
    assert_eq!(by(SPARE)["action"], "bind");
    let text = nodeprep(t.root(), &["bind", "--config", cfg, "--dry-run"]);
    assert!(
        stdout(&text).contains("refuse  0000:04:00.0 for example.com/nic (pciHostDevices[0]): the host uses it: eno1 is a port of OVS (ovs-system)"),
        "{}",
        stdout(&text)
    );
    assert!(stdout(&text).contains("bind    0000:04:00.1 igb -> vfio-pci, IOMMU group 14"), "{}", stdout(&text));
}

#[test]
fn active_backup_bond_carrying_the_default_route_is_refused() {
    let t = dual_port_worker();
    t.net_bond("bond0", "active-backup").net_master("eno1", "bond0").routes(&["bond0"]);
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, UPLINK);
    assert!(why.contains("eno1 is a slave of bond bond0"), "{why}");
    assert!(why.contains("bond0 above eno1 carries the default route"), "{why}");
    assert!(matches!(action(&p, SPARE), Action::Bind { .. }), "\n{p}");
}

#[test]
fn linux_bridge_port_is_refused_naming_the_bridge_and_its_address() {
    let t = dual_port_worker();
    t.net_bridge("br0").net_master("eno1", "br0").if_inet6(&[("br0", "2001:db8:10::5", 64)]);
    assert!(t.path("sys/class/net/eno1/brport").is_dir(), "a bridge port has brport/");
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, UPLINK);
    assert!(why.contains("eno1 is a port of bridge br0"), "{why}");
    assert!(why.contains("br0 above eno1 has address 2001:db8:10::5/64"), "{why}");
}

#[test]
fn vlan_on_a_nic_with_an_address_on_the_vlan_is_refused() {
    let t = dual_port_worker();
    t.net_virtual("eno1.100", "up").net_upper("eno1", "eno1.100").if_inet6(&[("eno1.100", "2001:db8:100::7", 64)]);
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, UPLINK);
    assert!(why.contains("eno1 has upper device eno1.100"), "{why}");
    assert!(why.contains("eno1.100 above eno1 has address 2001:db8:100::7/64"), "{why}");
    assert!(matches!(action(&p, SPARE), Action::Bind { .. }), "\n{p}");
}

#[test]
fn nic_driver_bound_without_a_visible_interface_is_refused() {
    let t = dual_port_worker();
    // eno2 was moved into a pod's namespace: its sysfs entries leave the host's view.
    let dir = t.path("sys/class/net/eno2");
    let target = fs::read_link(&dir).expect("eno2 link");
    fs::remove_dir_all(t.path("sys/class/net").join(&target)).expect("remove eno2 dir");
    fs::remove_file(&dir).expect("remove eno2 link");
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, SPARE);
    assert!(
        why.contains(
            "its driver igb is bound but no network interface of it is visible in the host's network namespace: \
             it may have been moved into a pod or another namespace"
        ),
        "{why}"
    );
}

#[test]
fn unreadable_routes_refuse_nics_naming_the_table() {
    let t = dual_port_worker();
    // A directory where the file should be: reading fails even as root.
    fs::create_dir_all(t.path("proc/net/route")).expect("mkdir");
    let p = plan(&t, NIC_CONFIG);
    for a in [UPLINK, SPARE] {
        let why = refusal(&p, a);
        assert!(why.starts_with("nodeprep cannot tell whether the host uses it"), "{why}");
        assert!(why.contains("proc/net/route"), "{why}");
    }
}

#[test]
fn unreadable_sys_class_net_refuses_nics_naming_it() {
    let t = dual_port_worker();
    fs::remove_dir_all(t.path("sys/class/net")).expect("rm");
    fs::write(t.path("sys/class/net"), "").expect("a file where the directory should be");
    let p = plan(&t, NIC_CONFIG);
    for a in [UPLINK, SPARE] {
        let why = refusal(&p, a);
        assert!(why.contains("sys/class/net"), "{why}");
    }
}

#[test]
fn unreadable_master_link_refuses_nics_naming_it() {
    let t = dual_port_worker();
    // A regular file where the link should be: readlink fails with EINVAL.
    t.file("sys/class/net/eno2/master", "");
    let p = plan(&t, NIC_CONFIG);
    for a in [UPLINK, SPARE] {
        let why = refusal(&p, a);
        assert!(why.contains("the master link of eno2 cannot be read"), "{why}");
    }
}

/// A `proc/1/ns/net` that names no network namespace: the rtnetlink dump cannot enter it, and
/// every NIC is refused naming the routing tables.
#[test]
fn a_namespace_that_cannot_be_entered_refuses_nics_naming_the_routing_tables() {
    let t = dual_port_worker();
    t.file("proc/1/ns/net", "not a namespace");
    let p = plan(&t, NIC_CONFIG);
    for a in [UPLINK, SPARE] {
        let why = refusal(&p, a);
        assert!(why.contains("the routing tables and addresses cannot be read over rtnetlink"), "{why}");
        assert!(why.contains("proc/1/ns/net"), "{why}");
    }
}

#[test]
fn scan_shows_the_master_uppers_and_unknown_use() {
    let t = ovn_worker();
    t.net_virtual("eno2.7", "up").net_upper("eno2", "eno2.7");
    let out = nodeprep(t.root(), &["scan"]);
    let text = stdout(&out);
    assert!(text.contains("eno1 up, master ovs-system (openvswitch)"), "{text}");
    assert!(text.contains("eno2 down, uppers eno2.7"), "{text}");
    fs::create_dir_all(t.path("proc/net/ipv6_route")).expect("mkdir");
    let text = stdout(&nodeprep(t.root(), &["scan"]));
    assert!(
        text.contains("\tCannot tell whether the host uses it: the routing table proc/net/ipv6_route cannot be read"),
        "{text}"
    );
}

/// A network namespace made for one test, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("nodeprep-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Runs `ip ARGS`; a missing `ip` or a failure fails the test (it never skips).
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2 must be installed)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rtnetlink reader in a real namespace: a route only in table 100 is returned with its
/// table, and a fixture host whose `proc/1/ns/net` names that namespace gets it attributed to
/// the interface.
#[test]
fn netlink_reader_finds_a_route_only_in_table_100_in_the_hosts_namespace() {
    let ns = Netns::new("route");
    let n = ns.name.as_str();
    // A dummy link where the kernel has the module, else a veth pair (same for the reader).
    let dummy = Command::new("ip").args(["-n", n, "link", "add", "d0", "type", "dummy"]).output().expect("run ip");
    if !dummy.status.success() {
        ip(&["-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d0peer"]);
        ip(&["-n", n, "link", "set", "d0peer", "up"]);
    }
    ip(&["-n", n, "link", "set", "d0", "up"]);
    ip(&["-n", n, "route", "add", "10.1.0.0/16", "dev", "d0", "table", "100"]);

    let d = netlink::dump(Some(&ns.path())).expect("dump the namespace");
    let d0 = d.links.iter().find(|l| l.name == "d0").unwrap_or_else(|| panic!("d0 in {:?}", d.links));
    let route = d
        .routes
        .iter()
        .find(|r| r.destination.map(|(a, l)| (a.to_string(), l)) == Some(("10.1.0.0".into(), 16)))
        .unwrap_or_else(|| panic!("10.1.0.0/16 in {:?}", d.routes));
    assert_eq!((route.table, route.oifs.as_slice()), (100, &[d0.index][..]));
    assert!(!ip(&["-n", n, "route", "show", "table", "main"]).contains("10.1.0.0"), "only in table 100");

    // A fixture host whose init process lives in that namespace, with a NIC named d0.
    let t = dual_port_worker();
    fs::remove_file(t.path("sys/class/net/eno1")).expect("rm eno1 link");
    t.net(UPLINK, "d0", "up");
    t.symlink("proc/1/ns/net", ns.path().to_str().expect("utf-8"));
    let inv = discover(&t);
    let nic = inv.device(&addr(UPLINK)).expect("uplink");
    let d0 = nic.net.iter().find(|i| i.name == "d0").expect("d0 attached");
    assert_eq!(d0.routes, vec!["10.1.0.0/16 table 100".to_owned()]);
    let p = plan(&t, NIC_CONFIG);
    let why = refusal(&p, UPLINK);
    assert!(why.contains("d0 has route 10.1.0.0/16 table 100"), "{why}");
}
