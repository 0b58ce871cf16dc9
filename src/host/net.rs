//! The host's network interfaces behind each PCI function: which interfaces it has, their
//! state, what they are enslaved to or stack below (bonds, bridges, OVS, VLANs), and the
//! addresses and routes on them and on everything above them.
//!
//! Routes and addresses come from the kernel over rtnetlink ([`super::netlink`], every table)
//! for the network namespace `<root>/proc/1/ns/net` names. A root without that file is a fixture
//! tree (a real procfs always has it): there they come from `proc/net/route`,
//! `proc/net/ipv6_route` and `proc/net/if_inet6`. The link graph comes from `sys/class/net`
//! (`master`, `upper_*` links). Turning these into what each interface carries is pure
//! ([`describe`]); a table that cannot be read makes every NIC "use unknown" (fail closed).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::netlink::{self, Dump};
use super::root::{HostError, HostRoot};
use super::usage::pci_ancestor;
use crate::model::{NetAbove, NetInterface, NetMaster, PciAddress, PciInventory};
/// Pure: interfaces with an IPv4 default route (`proc/net/route`: destination and mask 0) or an
/// IPv6 one (`proc/net/ipv6_route`: destination ::/0).
pub fn parse_default_routes(route: &str, ipv6_route: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            out.insert(f[0].to_owned());
        }
    }
    for line in ipv6_route.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
            out.insert(f[9].to_owned());
        }
    }
    out
}

/// Pure: each interface's addresses: the IPv4 networks of its connected routes
/// (`proc/net/route`: up, no gateway, not the default route) and its global IPv6 addresses
/// (`proc/net/if_inet6`, scope 00).
pub fn parse_addresses(route: &str, if_inet6: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in route.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Ok(dest), Ok(flags), Ok(mask)) =
            (u32::from_str_radix(f[1], 16), u16::from_str_radix(f[3], 16), u32::from_str_radix(f[7], 16))
        else {
            continue;
        };
        const RTF_UP: u16 = 1;
        const RTF_GATEWAY: u16 = 2;
        if flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 || mask == 0 {
            continue;
        }
        // The kernel prints the addresses in host (little-endian) byte order.
        let ip = std::net::Ipv4Addr::from(dest.to_le_bytes());
        let prefix = mask.count_ones();
        out.entry(f[0].to_owned()).or_default().push(format!("{ip}/{prefix}"));
    }
    for line in if_inet6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[3] != "00" || f[0].len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(f[0], 16) else { continue };
        let Ok(prefix) = u8::from_str_radix(f[2], 16) else { continue };
        out.entry(f[5].to_owned()).or_default().push(format!("{}/{prefix}", std::net::Ipv6Addr::from(bits)));
    }
    out
}

/// One route through an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub ifname: String,
    /// `default` or a network (`10.1.0.0/16`).
    pub destination: String,
    pub table: u32,
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifname: String,
    pub address: String,
}

/// The routes and addresses of the host's namespace that count as use, and the link kinds when
/// the kernel told them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTables {
    pub routes: Vec<Route>,
    pub addresses: Vec<Address>,
    /// Interface name to `IFLA_INFO_KIND` (`bond`, `openvswitch`, ...); empty on fixture trees.
    pub kinds: HashMap<String, String>,
    /// Routes nodeprep cannot attribute to an interface (a nexthop object, an unknown index):
    /// any of them might leave through any NIC.
    pub unattributed: Vec<String>,
}

/// One interface in the link graph of `sys/class/net`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkNode {
    /// The name behind its `master` link.
    pub master: Option<String>,
    /// The names behind its `upper_*` links (the master among them).
    pub uppers: Vec<String>,
    /// Its kind as sysfs shows it: `bond` (`bonding/`), `bridge` (`bridge/`), `openvswitch`
    /// (the datapath `ovs-system`).
    pub kind: Option<String>,
}

pub type LinkGraph = BTreeMap<String, LinkNode>;

/// Pure: the routes and addresses of a netlink dump that show the host uses an interface.
/// Left out: the local table and non-unicast routes (broadcast, local, multicast), routes the
/// kernel adds for an address (protocol `kernel`, covered by the address), link-local and
/// host-scope addresses.
pub fn tables_from_dump(d: &Dump) -> NetTables {
    let names = d.names();
    let mut t = NetTables {
        kinds: d.links.iter().filter_map(|l| Some((l.name.clone(), l.kind.clone()?))).collect(),
        ..NetTables::default()
    };
    for r in &d.routes {
        if r.table == netlink::RT_TABLE_LOCAL
            || r.route_type != netlink::RTN_UNICAST
            || r.protocol == netlink::RTPROT_KERNEL
        {
            continue;
        }
        let destination = match r.destination {
            None => "default".to_owned(),
            Some((IpAddr::V6(a), _)) if a.is_unicast_link_local() || a.is_multicast() => continue,
            Some((a, len)) => format!("{a}/{len}"),
        };
        let table = if r.table == netlink::RT_TABLE_MAIN { String::new() } else { format!(" table {}", r.table) };
        if r.oifs.is_empty() && r.nexthop_id {
            t.unattributed.push(format!("the route {destination}{table} uses a nexthop object"));
        }
        for i in &r.oifs {
            match names.get(i) {
                Some(n) => {
                    t.routes.push(Route { ifname: (*n).to_owned(), destination: destination.clone(), table: r.table })
                }
                None => {
                    t.unattributed.push(format!("the route {destination}{table} leaves through unknown interface {i}"))
                }
            }
        }
    }
    for a in &d.addresses {
        if a.scope == netlink::RT_SCOPE_LINK || a.scope == netlink::RT_SCOPE_HOST {
            continue;
        }
        if let Some(n) = names.get(&a.index) {
            t.addresses.push(Address { ifname: (*n).to_owned(), address: format!("{}/{}", a.address, a.prefix) });
        }
    }
    t
}

/// Pure: the tables of a fixture tree's `proc/net/route`, `proc/net/ipv6_route` and
/// `proc/net/if_inet6` (main table only: that is all procfs shows).
pub fn tables_from_proc(route: &str, ipv6_route: &str, if_inet6: &str) -> NetTables {
    let routes = parse_default_routes(route, ipv6_route)
        .into_iter()
        .map(|ifname| Route { ifname, destination: "default".into(), table: netlink::RT_TABLE_MAIN })
        .collect();
    let mut addresses: Vec<Address> = parse_addresses(route, if_inet6)
        .into_iter()
        .flat_map(|(ifname, list)| list.into_iter().map(move |address| Address { ifname: ifname.clone(), address }))
        .collect();
    addresses.sort_by(|a, b| (&a.ifname, &a.address).cmp(&(&b.ifname, &b.address)));
    NetTables { routes, addresses, ..NetTables::default() }
}

/// What one interface carries: (main-table default route, addresses, other routes).
fn carried(name: &str, t: &NetTables) -> (bool, Vec<String>, Vec<String>) {
    let mut default_route = false;
    let mut routes = Vec::new();
    for r in t.routes.iter().filter(|r| r.ifname == name) {
        if r.destination == "default" && r.table == netlink::RT_TABLE_MAIN {
            default_route = true;
        } else if r.table == netlink::RT_TABLE_MAIN {
            routes.push(r.destination.clone());
        } else {
            routes.push(format!("{} table {}", r.destination, r.table));
        }
    }
    routes.dedup();
    let addresses = t.addresses.iter().filter(|a| a.ifname == name).map(|a| a.address.clone()).collect();
    (default_route, addresses, routes)
}

fn kind_of(name: &str, graph: &LinkGraph, t: &NetTables) -> Option<String> {
    graph.get(name).and_then(|n| n.kind.clone()).or_else(|| t.kinds.get(name).cloned())
}

/// Pure: interface `name` with its master, uppers, and everything stacked above it (followed
/// transitively through master and upper links) with what each carries. An OVS datapath's
/// ports are not linked to its internal ports (`br-ex`) in sysfs; when the kernel told the link
/// kinds, every OVS internal port that is no one's port counts as above the datapath.
pub fn describe(name: &str, operstate: Option<String>, graph: &LinkGraph, t: &NetTables) -> NetInterface {
    let node = graph.get(name).cloned().unwrap_or_default();
    let (default_route, addresses, routes) = carried(name, t);
    let master = node.master.as_ref().map(|m| NetMaster { name: m.clone(), kind: kind_of(m, graph, t) });
    let uppers = node.uppers.iter().filter(|u| node.master.as_ref() != Some(*u)).cloned().collect();
    let datapaths: BTreeSet<&str> = graph.values().filter_map(|n| n.master.as_deref()).collect();
    let mut above = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::from([name]);
    let mut todo: VecDeque<&str> = VecDeque::from([name]);
    while let Some(at) = todo.pop_front() {
        let Some(n) = graph.get(at) else { continue };
        let mut next: Vec<&str> = n.master.iter().chain(&n.uppers).map(String::as_str).collect();
        if datapaths.contains(at) && kind_of(at, graph, t).as_deref() == Some("openvswitch") {
            next.extend(
                graph
                    .iter()
                    .filter(|(other, o)| {
                        o.master.is_none() && t.kinds.get(*other).map(String::as_str) == Some("openvswitch")
                    })
                    .map(|(other, _)| other.as_str()),
            );
        }
        for up in next {
            if seen.insert(up) {
                let (default_route, addresses, routes) = carried(up, t);
                above.push(NetAbove { name: up.to_owned(), below: at.to_owned(), default_route, addresses, routes });
                todo.push_back(up);
            }
        }
    }
    NetInterface { name: name.to_owned(), operstate, default_route, addresses, routes, master, uppers, above }
}

/// The reason a NIC with a bound driver and no visible interface is not bound.
pub fn no_interface_reason(driver: &str) -> String {
    format!(
        "its driver {driver} is bound but no network interface of it is visible in the host's network namespace: \
         it may have been moved into a pod or another namespace"
    )
}

/// Records on each device its network interfaces, their links, addresses and routes. A table
/// that cannot be read makes every network device (and every device with an interface) "use
/// unknown", naming the table.
pub(super) fn attach(
    root: &HostRoot,
    inv: &mut PciInventory,
    by_addr: &HashMap<PciAddress, usize>,
    warnings: &mut Vec<String>,
) {
    let mut failures = Vec::new();
    let (names, class_net_read) = match super::root::list_dir(&root.join("sys/class/net")) {
        Ok(n) => (n, true),
        Err(e) => {
            failures.push(format!("the interface list sys/class/net cannot be read: {e}"));
            (Vec::new(), false)
        }
    };
    let mut pci_of: Vec<(String, PciAddress)> = Vec::new();
    for name in &names {
        let link = root.join(format!("sys/class/net/{name}"));
        match fs::read_link(&link) {
            Ok(t) => pci_of.extend(pci_ancestor(&t).map(|a| (name.clone(), a))),
            Err(e) => failures.push(format!("sys/class/net cannot be read: {}", HostError::io("readlink", &link, e))),
        }
    }
    if !pci_of.is_empty() {
        let graph = read_graph(root, &names, &mut failures);
        let tables = read_tables(root, &mut failures);
        failures.extend(tables.unattributed.iter().map(|u| format!("{u}: it may leave through any interface")));
        for (name, a) in pci_of {
            let Some(i) = by_addr.get(&a) else { continue };
            let operstate = root.read_attr(format!("sys/class/net/{name}/operstate")).ok();
            inv.devices[*i].net.push(describe(&name, operstate, &graph, &tables));
        }
    }
    for d in &mut inv.devices {
        let network = d.class_id.is_some_and(|c| c >> 16 == 0x02);
        if network || !d.net.is_empty() {
            d.use_unknown.extend(failures.iter().cloned());
        }
        let driver = d.driver.as_deref().filter(|d| !matches!(*d, crate::model::pci::VFIO_PCI | "pci-stub"));
        if let (true, true, true, Some(drv)) = (network, class_net_read, d.net.is_empty(), driver) {
            d.use_unknown.push(no_interface_reason(drv));
        }
    }
    warnings.extend(failures);
}

/// The `master` and `upper_*` links of every interface.
fn read_graph(root: &HostRoot, names: &[String], failures: &mut Vec<String>) -> LinkGraph {
    let mut graph = LinkGraph::new();
    for name in names {
        let dir = format!("sys/class/net/{name}");
        let mut node = LinkNode::default();
        let master = root.join(format!("{dir}/master"));
        match fs::read_link(&master) {
            Ok(t) => node.master = t.file_name().and_then(|n| n.to_str()).map(str::to_owned),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures
                .push(format!("the master link of {name} cannot be read: {}", HostError::io("readlink", &master, e))),
        }
        match root.list_dir(&dir) {
            Ok(entries) => {
                node.uppers = entries.iter().filter_map(|e| e.strip_prefix("upper_")).map(str::to_owned).collect();
            }
            Err(e) => failures.push(format!("the links of {name} cannot be read: {e}")),
        }
        node.kind = if root.exists(format!("{dir}/bonding")) {
            Some("bond".into())
        } else if root.exists(format!("{dir}/bridge")) {
            Some("bridge".into())
        } else if name == "ovs-system" {
            Some("openvswitch".into())
        } else {
            None
        };
        graph.insert(name.clone(), node);
    }
    graph
}

/// The routes and addresses of the host's network namespace: over rtnetlink on a real host,
/// from procfs files on a fixture tree.
fn read_tables(root: &HostRoot, failures: &mut Vec<String>) -> NetTables {
    let ns = root.join("proc/1/ns/net");
    match fs::metadata(&ns) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut table = |rel: &str| match root.read_optional(rel) {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => {
                    failures.push(format!("the routing table {rel} cannot be read: {e}"));
                    String::new()
                }
            };
            let (route, route6, inet6) =
                (table("proc/net/route"), table("proc/net/ipv6_route"), table("proc/net/if_inet6"));
            tables_from_proc(&route, &route6, &inet6)
        }
        Err(e) => {
            failures
                .push(format!("the host's network namespace cannot be identified: {}", HostError::io("stat", &ns, e)));
            NetTables::default()
        }
        Ok(host) => {
            let own = fs::metadata("/proc/self/ns/net").ok();
            let same = own.is_some_and(|o| o.dev() == host.dev() && o.ino() == host.ino());
            match netlink::dump(if same { None } else { Some(Path::new(&ns)) }) {
                Ok(d) => tables_from_dump(&d),
                Err(e) => {
                    failures.push(format!("the routing tables and addresses cannot be read over rtnetlink: {e}"));
                    NetTables::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_v4_and_v6() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eno1\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eno1\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                  ens2\t0003A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens3\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        let d = parse_default_routes(v4, v6);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec!["eno1".to_owned(), "ens3".to_owned()]);
    }

    #[test]
    fn addresses_from_connected_routes_and_global_ipv6() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eno1\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eno1\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                  ens2\t0000000A\t0102A8C0\t0003\t0\t0\t100\t000000FF\t0\t0\t0\n";
        let v6 = "fe800000000000000000000000000001 02 40 20 80 ens3\n\
                  20010db8000000000000000000000001 02 40 00 80 ens3\n\
                  00000000000000000000000000000001 01 80 10 80 lo\n";
        let a = parse_addresses(v4, v6);
        assert_eq!(a.get("eno1"), Some(&vec!["192.168.2.0/24".to_owned()]));
        assert_eq!(a.get("ens2"), None, "a gateway route is not an address");
        assert_eq!(a.get("ens3"), Some(&vec!["2001:db8::1/64".to_owned()]), "link-local ignored");
        assert_eq!(a.get("lo"), None);
    }

    fn node(master: Option<&str>, uppers: &[&str], kind: Option<&str>) -> LinkNode {
        LinkNode {
            master: master.map(str::to_owned),
            uppers: uppers.iter().map(|u| (*u).to_owned()).collect(),
            kind: kind.map(str::to_owned),
        }
    }

    fn route(ifname: &str, destination: &str, table: u32) -> Route {
        Route { ifname: ifname.into(), destination: destination.into(), table }
    }

    /// A route only in table 100, on a VLAN above the NIC: found, and named with its table.
    #[test]
    fn a_route_in_a_non_main_table_above_the_nic_counts() {
        let graph = LinkGraph::from([
            ("eno1".to_owned(), node(None, &["eno1.100"], None)),
            ("eno1.100".to_owned(), node(None, &[], None)),
        ]);
        let t = NetTables { routes: vec![route("eno1.100", "10.1.0.0/16", 100)], ..NetTables::default() };
        let n = describe("eno1", None, &graph, &t);
        assert_eq!(n.uppers, vec!["eno1.100".to_owned()]);
        assert_eq!(n.above.len(), 1);
        assert_eq!(n.above[0].routes, vec!["10.1.0.0/16 table 100".to_owned()]);
        let d = crate::model::PciDevice { net: vec![n], ..Default::default() };
        let uses = d.host_uses().join("; ");
        assert!(uses.contains("eno1.100 above eno1 has route 10.1.0.0/16 table 100"), "{uses}");
    }

    /// A bond of a bridge, followed transitively; the master is not repeated among the uppers.
    #[test]
    fn stacks_are_followed_transitively() {
        let graph = LinkGraph::from([
            ("eno1".to_owned(), node(Some("bond0"), &["bond0"], None)),
            ("bond0".to_owned(), node(Some("br0"), &["br0"], Some("bond"))),
            ("br0".to_owned(), node(None, &[], Some("bridge"))),
        ]);
        let t = NetTables { routes: vec![route("br0", "default", 254)], ..NetTables::default() };
        let n = describe("eno1", None, &graph, &t);
        assert_eq!(n.master, Some(NetMaster { name: "bond0".into(), kind: Some("bond".into()) }));
        assert!(n.uppers.is_empty());
        let names: Vec<(&str, &str, bool)> =
            n.above.iter().map(|a| (a.name.as_str(), a.below.as_str(), a.default_route)).collect();
        assert_eq!(names, vec![("bond0", "eno1", false), ("br0", "bond0", true)]);
    }

    /// OVS: the port's master is the datapath; its internal ports (kind from netlink) are above.
    #[test]
    fn ovs_internal_ports_count_above_the_datapath_when_kinds_are_known() {
        let graph = LinkGraph::from([
            ("eno1".to_owned(), node(Some("ovs-system"), &["ovs-system"], None)),
            ("ovs-system".to_owned(), node(None, &[], Some("openvswitch"))),
            ("br-ex".to_owned(), node(None, &[], None)),
            ("eno2".to_owned(), node(None, &[], None)),
        ]);
        let mut t = NetTables { routes: vec![route("br-ex", "default", 254)], ..NetTables::default() };
        let n = describe("eno1", None, &graph, &t);
        assert_eq!(n.master.as_ref().map(NetMaster::describe).as_deref(), Some("a port of OVS (ovs-system)"));
        assert_eq!(n.above.len(), 1, "without kinds only the datapath: {:?}", n.above);
        t.kinds = HashMap::from([
            ("br-ex".to_owned(), "openvswitch".to_owned()),
            ("ovs-system".to_owned(), "openvswitch".to_owned()),
        ]);
        let n = describe("eno1", None, &graph, &t);
        let br = n.above.iter().find(|a| a.name == "br-ex").expect("br-ex above");
        assert!(br.default_route && br.below == "ovs-system", "{br:?}");
        assert!(describe("eno2", None, &graph, &t).above.is_empty());
    }

    #[test]
    fn dump_filters_kernel_local_and_link_local_entries() {
        use netlink::{RawAddress, RawLink, RawRoute};
        let link = |index, name: &str| RawLink { index, name: name.into(), kind: None };
        let r = |dst: Option<(&str, u8)>, table, protocol, route_type, oifs: Vec<u32>| RawRoute {
            family: 2,
            destination: dst.map(|(a, l)| (a.parse().expect("ip"), l)),
            table,
            protocol,
            route_type,
            oifs,
            nexthop_id: false,
        };
        let d = Dump {
            links: vec![link(1, "lo"), link(2, "eno1")],
            addresses: vec![
                RawAddress { index: 2, address: "fe80::1".parse().expect("ip"), prefix: 64, scope: 253 },
                RawAddress { index: 1, address: "127.0.0.1".parse().expect("ip"), prefix: 8, scope: 254 },
                RawAddress { index: 2, address: "10.0.0.5".parse().expect("ip"), prefix: 24, scope: 0 },
            ],
            routes: vec![
                r(Some(("10.0.0.0", 24)), 254, 2, 1, vec![2]),
                r(Some(("10.0.0.5", 32)), 255, 2, 2, vec![2]),
                r(Some(("fe80::", 64)), 254, 3, 1, vec![2]),
                r(None, 100, 3, 1, vec![2]),
                r(None, 254, 4, 1, vec![9]),
            ],
        };
        let t = tables_from_dump(&d);
        assert_eq!(t.routes, vec![route("eno1", "default", 100)]);
        assert_eq!(t.addresses, vec![Address { ifname: "eno1".into(), address: "10.0.0.5/24".into() }]);
        assert_eq!(t.unattributed, vec!["the route default leaves through unknown interface 9".to_owned()]);
    }
}
