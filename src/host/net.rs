//! The host's network interfaces behind each PCI function: which interfaces it has, their
//! state, addresses and routes.

use std::collections::{BTreeSet, HashMap};

use super::root::HostRoot;
use super::usage::{class_entries, optional_table};
use crate::model::{NetInterface, PciAddress, PciInventory};

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

/// Records on each device its network interfaces, addresses and default routes.
pub(super) fn attach(
    root: &HostRoot,
    inv: &mut PciInventory,
    by_addr: &HashMap<PciAddress, usize>,
    warnings: &mut Vec<String>,
) {
    let nets = class_entries(root, "net", warnings);
    if nets.iter().any(|n| n.pci.is_some()) {
        let route = optional_table(root, "proc/net/route", warnings);
        let route6 = optional_table(root, "proc/net/ipv6_route", warnings);
        let inet6 = optional_table(root, "proc/net/if_inet6", warnings);
        let defaults = parse_default_routes(&route, &route6);
        let mut addresses = parse_addresses(&route, &inet6);
        for n in nets {
            let Some(i) = n.pci.and_then(|a| by_addr.get(&a)) else { continue };
            let operstate = root.read_attr(format!("sys/class/net/{}/operstate", n.name)).ok();
            let default_route = defaults.contains(&n.name);
            let addresses = addresses.remove(&n.name).unwrap_or_default();
            inv.devices[*i].net.push(NetInterface { name: n.name, operstate, default_route, addresses });
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
}
