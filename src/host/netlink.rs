//! The kernel's routing tables, addresses and link kinds, read over rtnetlink (`NETLINK_ROUTE`)
//! for one network namespace: `RTM_GETLINK`, `RTM_GETADDR` and `RTM_GETROUTE` dumps with family
//! `AF_UNSPEC`, which return IPv4 and IPv6 and every routing table (`proc/net/route` shows only
//! the main one).
//!
//! A minimal parser of our own over nix sockets (no new dependency): the messages are fixed
//! kernel ABI (`linux/rtnetlink.h`, `linux/if_addr.h`, `linux/if_link.h`). The parsers are pure
//! and total: malformed input is an error, never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};

/// What went wrong reading the kernel's network tables.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: Errno,
    },
    #[error("{op} network namespace {path}: {source}")]
    Namespace {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {request} dump: the kernel answered error {errno}")]
    Kernel { request: &'static str, errno: Errno },
    #[error("netlink {request} dump: {problem}")]
    Malformed { request: &'static str, problem: String },
    #[error("netlink dump thread: {0}")]
    Thread(String),
}

/// One route as the kernel dumps it, its output interfaces resolved by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRoute {
    pub family: u8,
    /// `None` for a default route (destination length 0).
    pub destination: Option<(IpAddr, u8)>,
    pub table: u32,
    pub protocol: u8,
    pub route_type: u8,
    /// Output interfaces (`RTA_OIF`, or each next hop of `RTA_MULTIPATH`).
    pub oifs: Vec<u32>,
    /// The route names a nexthop object (`RTA_NH_ID`).
    pub nexthop_id: bool,
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAddress {
    pub index: u32,
    pub address: IpAddr,
    pub prefix: u8,
    pub scope: u8,
}

/// One interface: its index, name and `IFLA_INFO_KIND` (`bond`, `bridge`, `openvswitch`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLink {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
}

/// The three dumps of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    pub links: Vec<RawLink>,
    pub addresses: Vec<RawAddress>,
    pub routes: Vec<RawRoute>,
}

impl Dump {
    pub fn names(&self) -> HashMap<u32, &str> {
        self.links.iter().map(|l| (l.index, l.name.as_str())).collect()
    }
}

pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;
pub const RTN_UNICAST: u8 = 1;
pub const RTPROT_KERNEL: u8 = 2;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Dumps links, addresses and routes of the namespace `netns` names (a `proc/<pid>/ns/net` or
/// `/run/netns/<name>` file), or of this process's own namespace when `None`. Another namespace
/// is entered by a short-lived thread (`setns(CLONE_NEWNET)` affects only the calling thread).
pub fn dump(netns: Option<&Path>) -> Result<Dump, NetlinkError> {
    let Some(path) = netns else { return dump_here() };
    let file = std::fs::File::open(path).map_err(|e| NetlinkError::Namespace {
        op: "open",
        path: path.to_owned(),
        source: e,
    })?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("nodeprep-netns".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetlinkError::Namespace {
                op: "enter",
                path,
                source: e.into(),
            })?;
            dump_here()
        })
        .map_err(|e| NetlinkError::Thread(e.to_string()))?
        .join()
        .map_err(|_| NetlinkError::Thread("panicked".into()))?
}

fn dump_here() -> Result<Dump, NetlinkError> {
    let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
        .map_err(|e| NetlinkError::Socket { op: "socket", source: e })?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| NetlinkError::Socket { op: "bind", source: e })?;
    let mut out = Dump::default();
    for (seq, (request, body)) in
        [(RTM_GETLINK, vec![0u8; 16]), (RTM_GETADDR, vec![0u8; 8]), (RTM_GETROUTE, vec![0u8; 12])]
            .into_iter()
            .enumerate()
    {
        let name = request_name(request);
        // A dump the kernel marks interrupted (the tables changed under it) is retried.
        let mut tries = 0;
        let messages = loop {
            let (messages, interrupted) = dump_one(&fd, request, &body, seq as u32 + 1)?;
            tries += 1;
            if !interrupted {
                break messages;
            }
            if tries == 3 {
                return Err(NetlinkError::Malformed { request: name, problem: "interrupted 3 times".into() });
            }
        };
        for (ty, payload) in messages {
            match ty {
                RTM_NEWLINK => out.links.push(parse_link(&payload)?),
                RTM_NEWADDR => out.addresses.extend(parse_address(&payload)?),
                RTM_NEWROUTE => out.routes.extend(parse_route(&payload)?),
                _ => {}
            }
        }
    }
    Ok(out)
}

fn request_name(request: u16) -> &'static str {
    match request {
        RTM_GETLINK => "RTM_GETLINK",
        RTM_GETADDR => "RTM_GETADDR",
        _ => "RTM_GETROUTE",
    }
}

type Messages = Vec<(u16, Vec<u8>)>;

/// Sends one dump request and collects its messages (type, payload) up to `NLMSG_DONE`.
fn dump_one(fd: &OwnedFd, request: u16, body: &[u8], seq: u32) -> Result<(Messages, bool), NetlinkError> {
    let name = request_name(request);
    let mut req = Vec::with_capacity(NLMSG_HDR + body.len());
    req.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
    req.extend_from_slice(&request.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(body);
    socket::send(fd.as_raw_fd(), &req, MsgFlags::empty())
        .map_err(|e| NetlinkError::Socket { op: "send", source: e })?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut interrupted = false;
    loop {
        let n = match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(NetlinkError::Socket { op: "recv", source: e }),
        };
        if n == 0 {
            return Err(NetlinkError::Malformed { request: name, problem: "the socket closed mid-dump".into() });
        }
        for m in split_messages(&buf[..n]).map_err(|problem| NetlinkError::Malformed { request: name, problem })? {
            if m.seq != seq {
                continue;
            }
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match m.ty {
                NLMSG_DONE => return Ok((out, interrupted)),
                NLMSG_ERROR => {
                    let code = m.payload.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-1);
                    if code != 0 {
                        return Err(NetlinkError::Kernel { request: name, errno: Errno::from_raw(-code) });
                    }
                }
                ty => out.push((ty, m.payload.to_vec())),
            }
        }
    }
}

struct Message<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Pure: the netlink messages in one datagram.
fn split_messages(mut b: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDR || len > b.len() {
            return Err(format!("message length {len} out of bounds ({} bytes left)", b.len()));
        }
        out.push(Message {
            ty: u16_at(b, 4).unwrap_or(0),
            flags: u16_at(b, 6).unwrap_or(0),
            seq: u32_at(b, 8).unwrap_or(0),
            payload: &b[NLMSG_HDR..len],
        });
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Pure: the route attributes (`struct rtattr`: length, type, value) of a buffer.
fn attributes(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16_at(b, 0).unwrap_or(0) as usize;
        if len < 4 || len > b.len() {
            return Err(format!("attribute length {len} out of bounds ({} bytes left)", b.len()));
        }
        // Nested attributes carry NLA_F_NESTED (and NLA_F_NET_BYTEORDER) in the top bits.
        out.push((u16_at(b, 2).unwrap_or(0) & 0x3fff, &b[4..len]));
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(b).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        AF_INET6 => <[u8; 16]>::try_from(b).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn malformed(request: &'static str) -> impl Fn(String) -> NetlinkError {
    move |problem| NetlinkError::Malformed { request, problem }
}

/// Pure: one `RTM_NEWLINK` payload (`struct ifinfomsg`, 16 bytes, then attributes).
pub fn parse_link(p: &[u8]) -> Result<RawLink, NetlinkError> {
    let bad = malformed("RTM_GETLINK");
    let index = u32_at(p, 4).ok_or_else(|| bad("short ifinfomsg".into()))?;
    let mut link = RawLink { index, name: String::new(), kind: None };
    for (ty, v) in attributes(p.get(16..).unwrap_or(&[])).map_err(&bad)? {
        match ty {
            3 => link.name = c_string(v),
            18 => {
                for (ty, v) in attributes(v).map_err(&bad)? {
                    if ty == 1 {
                        link.kind = Some(c_string(v));
                    }
                }
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return Err(bad(format!("interface {index} has no IFLA_IFNAME")));
    }
    Ok(link)
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Pure: one `RTM_NEWADDR` payload (`struct ifaddrmsg`, 8 bytes, then attributes). `None` for
/// families other than IPv4 and IPv6.
pub fn parse_address(p: &[u8]) -> Result<Option<RawAddress>, NetlinkError> {
    let bad = malformed("RTM_GETADDR");
    if p.len() < 8 {
        return Err(bad("short ifaddrmsg".into()));
    }
    let (family, prefix, scope) = (p[0], p[1], p[3]);
    let index = u32_at(p, 4).unwrap_or(0);
    let mut local = None;
    let mut address = None;
    for (ty, v) in attributes(&p[8..]).map_err(&bad)? {
        match ty {
            1 => address = ip(family, v),
            2 => local = ip(family, v),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS the peer.
    Ok(local.or(address).map(|address| RawAddress { index, address, prefix, scope }))
}

/// Pure: one `RTM_NEWROUTE` payload (`struct rtmsg`, 12 bytes, then attributes). `None` for
/// families other than IPv4 and IPv6 (an `AF_UNSPEC` dump also returns multicast and MPLS
/// routes).
pub fn parse_route(p: &[u8]) -> Result<Option<RawRoute>, NetlinkError> {
    let bad = malformed("RTM_GETROUTE");
    if p.len() < 12 {
        return Err(bad("short rtmsg".into()));
    }
    let (family, dst_len) = (p[0], p[1]);
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let mut r = RawRoute {
        family,
        destination: None,
        table: u32::from(p[4]),
        protocol: p[5],
        route_type: p[7],
        oifs: Vec::new(),
        nexthop_id: false,
    };
    let mut dst = None;
    for (ty, v) in attributes(&p[12..]).map_err(&bad)? {
        match ty {
            1 => dst = ip(family, v),
            4 => r.oifs.extend(u32_at(v, 0)),
            15 => r.table = u32_at(v, 0).ok_or_else(|| bad("short RTA_TABLE".into()))?,
            // RTA_MULTIPATH: struct rtnexthop { u16 len; u8 flags; u8 hops; i32 ifindex } each.
            9 => {
                let mut nh = v;
                while nh.len() >= 8 {
                    let len = u16_at(nh, 0).unwrap_or(0) as usize;
                    if len < 8 || len > nh.len() {
                        return Err(bad(format!("next hop length {len} out of bounds")));
                    }
                    r.oifs.extend(u32_at(nh, 4).filter(|i| *i != 0));
                    nh = nh.get(align4(len)..).unwrap_or(&[]);
                }
            }
            30 => r.nexthop_id = true,
            _ => {}
        }
    }
    if dst_len > 0 {
        let dst = dst.ok_or_else(|| bad(format!("a /{dst_len} route without RTA_DST")))?;
        r.destination = Some((dst, dst_len));
    }
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(v);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn route_with_table_attribute_and_multipath() {
        // AF_INET, /16, table byte 252 (RT_TABLE_COMPAT), proto boot, unicast.
        let mut p = vec![AF_INET, 16, 0, 0, 252, 3, 0, RTN_UNICAST, 0, 0, 0, 0];
        p.extend(attr(15, &100u32.to_ne_bytes()));
        p.extend(attr(1, &[10, 1, 0, 0]));
        let mut nh = Vec::new();
        for ifindex in [3i32, 4] {
            nh.extend_from_slice(&8u16.to_ne_bytes());
            nh.extend_from_slice(&[0, 0]);
            nh.extend_from_slice(&ifindex.to_ne_bytes());
        }
        p.extend(attr(9, &nh));
        let r = parse_route(&p).expect("route").expect("an IPv4 route");
        assert_eq!(r.table, 100);
        assert_eq!(r.destination, Some(("10.1.0.0".parse().expect("ip"), 16)));
        assert_eq!(r.oifs, vec![3, 4]);
        assert_eq!(r.protocol, 3);
    }

    #[test]
    fn default_route_and_garbage() {
        let mut p = vec![AF_INET6, 0, 0, 0, 254, 9, 0, RTN_UNICAST, 0, 0, 0, 0];
        p.extend(attr(4, &7u32.to_ne_bytes()));
        let r = parse_route(&p).expect("route").expect("an IPv6 route");
        assert_eq!((r.destination, r.table, r.oifs), (None, RT_TABLE_MAIN, vec![7]));
        assert!(parse_route(&p[..5]).is_err(), "short rtmsg");
        let mut bad = p.clone();
        bad.extend_from_slice(&[200, 0, 1, 0]);
        assert!(parse_route(&bad).is_err(), "an attribute longer than the message");
        let mut no_dst = vec![AF_INET, 24, 0, 0, 254, 3, 0, RTN_UNICAST, 0, 0, 0, 0];
        no_dst.extend(attr(4, &7u32.to_ne_bytes()));
        assert!(parse_route(&no_dst).is_err());
        // MPLS (AF_MPLS 28): a label, not an address; not a failure.
        let mut mpls = vec![28, 20, 0, 0, 254, 3, 0, RTN_UNICAST, 0, 0, 0, 0];
        mpls.extend(attr(1, &[0, 1, 0x41, 0]));
        assert_eq!(parse_route(&mpls).expect("parse"), None);
    }

    #[test]
    fn link_name_and_kind() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&5u32.to_ne_bytes());
        p.extend(attr(3, b"br-ex\0"));
        let info = attr(1, b"openvswitch\0");
        p.extend(attr(18 | 0x8000, &info));
        let l = parse_link(&p).expect("link");
        assert_eq!((l.index, l.name.as_str(), l.kind.as_deref()), (5, "br-ex", Some("openvswitch")));
        assert!(parse_link(&p[..16]).is_err(), "no name");
    }

    #[test]
    fn address_prefers_local() {
        let mut p = vec![AF_INET, 24, 0, 0];
        p.extend_from_slice(&2u32.to_ne_bytes());
        p.extend(attr(1, &[10, 0, 0, 2]));
        p.extend(attr(2, &[10, 0, 0, 1]));
        let a = parse_address(&p).expect("parse").expect("address");
        assert_eq!((a.index, a.address.to_string(), a.prefix), (2, "10.0.0.1".to_owned(), 24));
    }

    #[test]
    fn messages_split_and_bounds() {
        let mut d = Vec::new();
        for ty in [RTM_NEWROUTE, NLMSG_DONE] {
            d.extend_from_slice(&20u32.to_ne_bytes());
            d.extend_from_slice(&ty.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&9u32.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&[1, 2, 3, 4]);
        }
        let m = split_messages(&d).expect("split");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].ty, m[0].seq, m[0].payload), (RTM_NEWROUTE, 9, &[1u8, 2, 3, 4][..]));
        d[0] = 200;
        assert!(split_messages(&d).is_err());
    }

    /// The in-process dump works unprivileged and always has the loopback interface.
    #[test]
    fn own_namespace_dump_has_lo() {
        let d = dump(None).expect("dump");
        assert!(d.links.iter().any(|l| l.name == "lo"), "{d:?}");
    }
}
