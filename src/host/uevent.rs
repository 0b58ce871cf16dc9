//! Kernel uevents, read straight from a `NETLINK_KOBJECT_UEVENT` socket: no udev, no libudev.
//!
//! The kernel multicasts every uevent to group 1 of that netlink family as one datagram:
//! `ACTION@DEVPATH\0KEY=VALUE\0KEY=VALUE\0...` (`lib/kobject_uevent.c`). udevd re-broadcasts
//! its own, processed copies to group 2 in a binary format that starts with `libudev`; nodeprep
//! listens to group 1 only and ignores those if they ever arrive.
//!
//! - [`parse_uevent`] is pure and total: any byte string gives `Some(Uevent)` or `None`.
//! - [`is_relevant`] is the filter: what makes nodeprep rescan.
//! - [`UeventSocket`] is the socket on the tokio reactor. When the kernel could not queue
//!   uevents because the receive buffer was full, the next read fails with `ENOBUFS`: the socket
//!   then reports [`Received::Overflow`] and the caller must rescan, because it missed events.
//!
//! Since Linux 4.18 the kernel sends uevents to every network namespace owned by the initial
//! user namespace, so an ordinary pod receives them too. (The DaemonSet still runs with
//! `hostNetwork: true`, for the default-route and address checks that read `proc/net`.)

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The kernel's multicast group for uevents (udevd's processed events are group 2).
pub const KERNEL_GROUP: u32 = 1;
/// The receive buffer nodeprep asks for (udevd asks for 128 MiB; a node agent that only
/// needs to notice that something happened can make do with less, and overflow is handled).
pub const DEFAULT_RCVBUF: usize = 8 * 1024 * 1024;
/// One datagram is at most the kernel's 2 KiB environment plus the `ACTION@DEVPATH` header.
const DATAGRAM_MAX: usize = 16 * 1024;

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `move`, `online`, `offline`, `bind`, `unbind`.
    pub action: String,
    /// The sysfs path below `/sys`, like `/devices/pci0000:00/0000:00:02.0/0000:02:00.0`.
    pub devpath: String,
    /// `SUBSYSTEM` (`pci`, `vfio`, ...).
    pub subsystem: String,
    /// `DRIVER`, when the kernel sent it (PCI `bind`, and `add`/`change` of a bound device).
    pub driver: Option<String>,
    /// `PCI_SLOT_NAME`: the PCI address, for `SUBSYSTEM=pci`.
    pub pci_slot_name: Option<String>,
    /// `SEQNUM`: the kernel's uevent sequence number.
    pub seqnum: Option<u64>,
    /// Every `KEY=VALUE` pair, the ones above included.
    pub vars: BTreeMap<String, String>,
}

impl Uevent {
    /// The value of one variable.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// What the uevent socket went wrong doing, with the operation.
#[derive(Debug, thiserror::Error)]
pub enum UeventError {
    #[error("uevent socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl UeventError {
    fn new(op: &'static str, e: impl Into<io::Error>) -> Self {
        UeventError::Socket { op, source: e.into() }
    }
}

/// Pure: parses one datagram in the kernel's format. `None` for libudev messages and for
/// anything that is not a well-formed kernel uevent.
///
/// Well-formed: a header `ACTION@DEVPATH` with a lower-case action and a devpath starting with
/// `/`, then `KEY=VALUE` entries separated by NULs with a `SUBSYSTEM` among them; `ACTION` and
/// `DEVPATH` entries, when present, must agree with the header. Entries without `=` or with an
/// odd key are skipped, values that are not UTF-8 are taken lossily: a kernel event is never
/// dropped for one strange variable.
pub fn parse_uevent(buf: &[u8]) -> Option<Uevent> {
    if buf.starts_with(b"libudev") {
        return None;
    }
    let mut parts = buf.split(|b| *b == 0);
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    if action.is_empty() || action.len() > 32 || !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return None;
    }
    if !devpath.starts_with('/') || devpath.bytes().any(|b| b.is_ascii_control()) {
        return None;
    }
    let mut vars = BTreeMap::new();
    for entry in parts {
        if entry.is_empty() {
            continue;
        }
        let Some(eq) = entry.iter().position(|b| *b == b'=') else { continue };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        if key.is_empty() || !key.iter().all(|b| b.is_ascii_graphic()) {
            continue;
        }
        let key = String::from_utf8_lossy(key).into_owned();
        let value = String::from_utf8_lossy(value).into_owned();
        vars.insert(key, value);
    }
    if vars.get("ACTION").is_some_and(|a| a != action) || vars.get("DEVPATH").is_some_and(|d| d != devpath) {
        return None;
    }
    let subsystem = vars.get("SUBSYSTEM")?.clone();
    Some(Uevent {
        action: action.to_owned(),
        devpath: devpath.to_owned(),
        subsystem,
        driver: vars.get("DRIVER").cloned(),
        pci_slot_name: vars.get("PCI_SLOT_NAME").cloned(),
        seqnum: vars.get("SEQNUM").and_then(|s| s.parse().ok()),
        vars,
    })
}

/// Pure: does this uevent change what nodeprep advertises?
///
/// - `SUBSYSTEM=pci` with `add`, `remove`, `bind`, `unbind` or `change`: a function appeared,
///   went, changed driver or changed state;
/// - `SUBSYSTEM=vfio` (the `/dev/vfio/<group>` nodes) and `vfio-dev` (the iommufd
///   `/dev/vfio/devices/vfioN` nodes), any action.
pub fn is_relevant(ev: &Uevent) -> bool {
    match ev.subsystem.as_str() {
        "pci" => matches!(ev.action.as_str(), "add" | "remove" | "bind" | "unbind" | "change"),
        "vfio" | "vfio-dev" => true,
        _ => false,
    }
}

/// One thing read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Uevent(Uevent),
    /// The kernel dropped uevents (`ENOBUFS`): what nodeprep knows may be stale, rescan.
    Overflow,
}

/// A `NETLINK_KOBJECT_UEVENT` socket bound to the kernel's group, on the tokio reactor.
#[derive(Debug)]
pub struct UeventSocket {
    fd: AsyncFd<OwnedFd>,
    buf: Box<[u8]>,
    rcvbuf: usize,
    skipped: u64,
}

impl UeventSocket {
    /// Opens the socket with [`DEFAULT_RCVBUF`]. Must be called inside a tokio runtime.
    pub fn open() -> Result<UeventSocket, UeventError> {
        UeventSocket::open_with(DEFAULT_RCVBUF)
    }

    /// Opens the socket asking for a receive buffer of `rcvbuf` bytes: `SO_RCVBUFFORCE` when
    /// the process may (`CAP_NET_ADMIN`), else `SO_RCVBUF` (capped by `net.core.rmem_max`).
    pub fn open_with(rcvbuf: usize) -> Result<UeventSocket, UeventError> {
        let fd = nix::sys::socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(|e| UeventError::new("socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)", e))?;
        if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &rcvbuf).map_err(|e| UeventError::new("setsockopt(SO_RCVBUF)", e))?;
        }
        // The kernel reports twice what it grants (bookkeeping overhead included).
        let granted = nix::sys::socket::getsockopt(&fd, sockopt::RcvBuf).unwrap_or(0);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))
            .map_err(|e| UeventError::new("bind(netlink group 1)", e))?;
        // SAFETY: `fd` is an open socket that the `AsyncFd` owns (an `OwnedFd`): it stays open
        // and the same until the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| UeventError::new("register with the tokio reactor", e.into_parts().1))?;
        Ok(UeventSocket { fd, buf: vec![0u8; DATAGRAM_MAX].into_boxed_slice(), rcvbuf: granted, skipped: 0 })
    }

    /// The receive buffer the kernel granted, as `SO_RCVBUF` reads it.
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    /// Datagrams skipped so far: not from the kernel, libudev's, or not a well-formed uevent.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Reads one datagram without waiting: `Ok(None)` when none is queued.
    pub fn try_recv(&mut self) -> Result<Option<Received>, UeventError> {
        recv_one(self.fd.get_ref(), &mut self.buf, &mut self.skipped)
    }

    /// Polls for the next uevent (or overflow).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Received, UeventError>> {
        loop {
            let mut guard =
                ready!(self.fd.poll_read_ready(cx)).map_err(|e| UeventError::new("wait for readiness", e))?;
            match recv_one(guard.get_inner(), &mut self.buf, &mut self.skipped) {
                Ok(Some(r)) => return Poll::Ready(Ok(r)),
                Ok(None) => guard.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Waits for the next uevent (or overflow).
    pub async fn recv(&mut self) -> Result<Received, UeventError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// Reads datagrams until one is a kernel uevent, the queue is empty (`Ok(None)`) or the kernel
/// reports an overflow. Datagrams not from the kernel (port id 0) or not parsing are counted
/// in `skipped`.
fn recv_one(fd: &OwnedFd, buf: &mut [u8], skipped: &mut u64) -> Result<Option<Received>, UeventError> {
    loop {
        match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), buf) {
            Ok((n, from)) => {
                let from_kernel = from.is_some_and(|a| a.pid() == 0);
                match parse_uevent(&buf[..n.min(buf.len())]).filter(|_| from_kernel) {
                    Some(ev) => return Ok(Some(Received::Uevent(ev))),
                    None => *skipped += 1,
                }
            }
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR) => {}
            Err(Errno::ENOBUFS) => return Ok(Some(Received::Overflow)),
            Err(e) => return Err(UeventError::new("recvfrom", e)),
        }
    }
}

/// The socket as an endless stream of uevents and overflows.
impl tokio_stream::Stream for UeventSocket {
    type Item = Result<Received, UeventError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn datagram(parts: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p.as_bytes());
            v.push(0);
        }
        v
    }

    const BIND: &[&str] = &[
        "bind@/devices/pci0000:00/0000:00:02.0/0000:02:00.0",
        "ACTION=bind",
        "DEVPATH=/devices/pci0000:00/0000:00:02.0/0000:02:00.0",
        "SUBSYSTEM=pci",
        "DRIVER=vfio-pci",
        "PCI_CLASS=FF0000",
        "PCI_ID=1234:11E8",
        "PCI_SUBSYS_ID=1AF4:1100",
        "PCI_SLOT_NAME=0000:02:00.0",
        "MODALIAS=pci:v00001234d000011E8sv00001AF4sd00001100bcFFsc00i00",
        "SEQNUM=2345",
    ];

    #[test]
    fn parses_a_pci_bind() {
        let ev = parse_uevent(&datagram(BIND)).expect("a kernel uevent");
        assert_eq!(ev.action, "bind");
        assert_eq!(ev.devpath, "/devices/pci0000:00/0000:00:02.0/0000:02:00.0");
        assert_eq!(ev.subsystem, "pci");
        assert_eq!(ev.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(ev.pci_slot_name.as_deref(), Some("0000:02:00.0"));
        assert_eq!(ev.seqnum, Some(2345));
        assert_eq!(ev.var("PCI_ID"), Some("1234:11E8"));
        assert_eq!(ev.var("MODALIAS"), Some("pci:v00001234d000011E8sv00001AF4sd00001100bcFFsc00i00"));
        assert_eq!(ev.vars.len(), 10);
        assert!(is_relevant(&ev));
    }

    #[test]
    fn parses_unbind_remove_and_vfio_nodes() {
        // An unbind has no DRIVER; the trailing NUL is optional.
        let mut unbind = datagram(&[
            "unbind@/devices/pci0000:00/0000:00:02.0/0000:02:00.0",
            "ACTION=unbind",
            "DEVPATH=/devices/pci0000:00/0000:00:02.0/0000:02:00.0",
            "SUBSYSTEM=pci",
            "PCI_SLOT_NAME=0000:02:00.0",
            "SEQNUM=2346",
        ]);
        unbind.pop();
        let ev = parse_uevent(&unbind).expect("unbind");
        assert_eq!((ev.action.as_str(), ev.driver.as_deref(), ev.seqnum), ("unbind", None, Some(2346)));
        assert!(is_relevant(&ev));

        // The /dev/vfio/<group> node of a group going away.
        let vfio = datagram(&[
            "remove@/devices/virtual/vfio/12",
            "ACTION=remove",
            "DEVPATH=/devices/virtual/vfio/12",
            "SUBSYSTEM=vfio",
            "MAJOR=246",
            "MINOR=0",
            "DEVNAME=vfio/12",
            "SEQNUM=2400",
        ]);
        let ev = parse_uevent(&vfio).expect("vfio");
        assert_eq!(ev.subsystem, "vfio");
        assert_eq!(ev.var("DEVNAME"), Some("vfio/12"));
        assert!(is_relevant(&ev));
    }

    #[test]
    fn filter_keeps_only_pci_and_vfio() {
        let mk = |action: &str, subsystem: &str| Uevent {
            action: action.into(),
            devpath: "/devices/x".into(),
            subsystem: subsystem.into(),
            ..Default::default()
        };
        for (a, s, want) in [
            ("add", "pci", true),
            ("remove", "pci", true),
            ("bind", "pci", true),
            ("unbind", "pci", true),
            ("change", "pci", true),
            ("move", "pci", false),
            ("online", "pci", false),
            ("add", "vfio", true),
            ("remove", "vfio", true),
            ("add", "vfio-dev", true),
            ("change", "mem", false),
            ("add", "net", false),
            ("bind", "usb", false),
            ("add", "module", false),
        ] {
            assert_eq!(is_relevant(&mk(a, s)), want, "{a} {s}");
        }
    }

    #[test]
    fn libudev_messages_and_garbage_are_ignored() {
        // udevd's monitor format: "libudev\0", a magic number, offsets, then properties.
        let mut libudev = b"libudev\0\xfe\xed\xca\xfe\x28\x00\x00\x00".to_vec();
        libudev.extend(datagram(&["ACTION=add", "DEVPATH=/devices/x", "SUBSYSTEM=pci"]));
        assert_eq!(parse_uevent(&libudev), None);
        for bad in [
            &b""[..],
            b"\0",
            b"add",
            b"add@",
            b"@/devices/x\0SUBSYSTEM=pci\0",
            b"add@devices/x\0SUBSYSTEM=pci\0",
            b"ADD@/devices/x\0SUBSYSTEM=pci\0",
            b"add@/devices/x\0ACTION=add\0",                   // no SUBSYSTEM
            b"add@/devices/x\0ACTION=remove\0SUBSYSTEM=pci\0", // header and ACTION disagree
            b"add@/devices/x\0DEVPATH=/devices/y\0SUBSYSTEM=pci\0",
            b"add@/dev\x01ices\0SUBSYSTEM=pci\0",
            b"\xff\xfe@/x\0SUBSYSTEM=pci\0",
        ] {
            assert_eq!(parse_uevent(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Strange entries are skipped, the event is kept.
        let odd = b"change@/devices/x\0noequals\0=v\0SUBSYSTEM=pci\0\0\0X=\xff\0SEQNUM=nan\0";
        let ev = parse_uevent(odd).expect("kept");
        assert_eq!(ev.var("X"), Some("\u{fffd}"));
        assert_eq!(ev.seqnum, None);
        assert_eq!(ev.vars.len(), 3);
    }

    /// xorshift64*: deterministic pseudo-random bytes without a crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"add@/=\0SUBSYSTEM=pciACTION=DEVPATH=libudev\xff\x01 ";
        let good = datagram(BIND);
        for i in 0..20_000 {
            let len = (rng.next() % 300) as usize;
            let buf: Vec<u8> = match i % 3 {
                // Uniform bytes.
                0 => (0..len).map(|_| rng.next() as u8).collect(),
                // Bytes that look like uevents.
                1 => (0..len).map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize]).collect(),
                // A real uevent, mutated and truncated.
                _ => {
                    let mut b = good.clone();
                    for _ in 0..(rng.next() % 4) {
                        let at = (rng.next() % b.len() as u64) as usize;
                        b[at] = rng.next() as u8;
                    }
                    b.truncate((rng.next() % (b.len() as u64 + 1)) as usize);
                    b
                }
            };
            if let Some(ev) = parse_uevent(&buf) {
                assert!(ev.devpath.starts_with('/') && !ev.action.is_empty(), "{buf:?}");
            }
        }
    }

    /// On this machine's real kernel: open the socket, make the kernel emit a synthetic
    /// `change` uevent for /dev/null by writing to its `uevent` file, and receive it.
    #[tokio::test]
    async fn real_kernel_delivers_a_synthetic_change() {
        let mut sock = UeventSocket::open().unwrap_or_else(|e| panic!("open the uevent socket: {e}"));
        assert!(sock.rcvbuf() > 0);
        let uevent_file = "/sys/devices/virtual/mem/null/uevent";
        let mut latencies = Vec::new();
        for round in 0..5 {
            let written = Instant::now();
            std::fs::write(uevent_file, "change").unwrap_or_else(|e| panic!("write change to {uevent_file}: {e}"));
            let got = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match sock.recv().await.expect("receive") {
                        Received::Uevent(ev) if ev.devpath == "/devices/virtual/mem/null" => return ev,
                        _ => {} // another device's event, or an overflow: keep waiting
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("round {round}: no uevent for /dev/null within 1 s of the write"));
            latencies.push(written.elapsed());
            assert_eq!(got.action, "change");
            assert_eq!(got.subsystem, "mem");
            assert_eq!(got.var("DEVNAME"), Some("null"));
            assert!(got.seqnum.is_some(), "{got:?}");
            assert!(!is_relevant(&got));
        }
        eprintln!("uevent write-to-receipt latencies: {latencies:?} (rcvbuf {})", sock.rcvbuf());
    }
}
