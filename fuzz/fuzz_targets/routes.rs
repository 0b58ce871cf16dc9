//! Routes and addresses: `proc/net/route`, `proc/net/ipv6_route`, `proc/net/if_inet6`
//! (host::net, the fixture trees' source) and the rtnetlink payloads of `RTM_NEWLINK`,
//! `RTM_NEWADDR` and `RTM_NEWROUTE` (host::netlink, a real host's source: IPv4 and IPv6, every
//! table). Input: a file's contents or one message payload; every parser reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::host::net::{parse_addresses, parse_default_routes};
use nodeprep::host::netlink::{parse_address, parse_link, parse_route};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = parse_route(data) {
        // A destination only with a prefix length: /0 is the default route, `None`.
        assert!(r.destination.is_none_or(|(_, len)| len > 0));
    }
    let _ = parse_address(data);
    if let Ok(link) = parse_link(data) {
        assert!(!link.name.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The two route files are read together; a seed is either (or both, split at a NUL).
        let (v4, v6) = text.split_once('\0').unwrap_or((text, text));
        let _ = parse_default_routes(v4, v6);
        let _ = parse_addresses(v4, v6);
    }
});
