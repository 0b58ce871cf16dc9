//! Kernel uevent datagrams (`NETLINK_KOBJECT_UEVENT`, group 1): `host::uevent::parse_uevent`
//! and the rescan filter `is_relevant`. Input: one datagram, as `recvfrom` returns it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::host::uevent::{is_relevant, parse_uevent};

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = parse_uevent(data) {
        // What parse_uevent promises of a well-formed event.
        assert!(!ev.action.is_empty());
        assert!(ev.devpath.starts_with('/'));
        assert_eq!(ev.var("SUBSYSTEM"), Some(ev.subsystem.as_str()));
        let _ = is_relevant(&ev);
    }
});
