//! Runs pciutils' `lspci` on a host tree and parses what it says, for cross-checks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What `lspci -D -n -k` says about one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LspciDevice {
    pub vendor: String,
    pub device: String,
    /// Base class and subclass, 4 hex digits (`0302`).
    pub class: String,
    pub revision: Option<String>,
    pub subsystem: Option<String>,
    pub driver: Option<String>,
}

/// The lspci command that reads the sysfs tree under `root` (`/` for the real machine).
pub fn command(root: &Path) -> Command {
    let mut c = Command::new("lspci");
    c.arg("-D").arg("-n").arg("-k").arg("-A").arg("linux-sysfs").arg("-O");
    c.arg(format!("sysfs.path={}", root.join("sys/bus/pci").display()));
    c
}

/// Runs lspci on the tree under `root` and parses its listing, keyed by address.
pub fn run(root: &Path) -> BTreeMap<String, LspciDevice> {
    try_run(root).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`run`], but lspci's failure (with its standard error) is returned, not a panic.
pub fn try_run(root: &Path) -> Result<BTreeMap<String, LspciDevice>, String> {
    let out = command(root).output().expect("lspci runs (pciutils is installed by .ci/run)");
    if !out.status.success() {
        return Err(format!("lspci failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `lspci -D -n -k`: `DDDD:BB:DD.F CCCC: VVVV:DDDD (rev RR)` lines, each followed by
/// tab-indented `Subsystem:` and `Kernel driver in use:` lines.
pub fn parse(text: &str) -> BTreeMap<String, LspciDevice> {
    let mut map = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('\t') {
            let Some(addr) = &current else { continue };
            let Some(d) = map.get_mut(addr) else { continue };
            let d: &mut LspciDevice = d;
            if let Some(s) = rest.strip_prefix("Subsystem: ") {
                d.subsystem = Some(s.trim().to_owned());
            } else if let Some(s) = rest.strip_prefix("Kernel driver in use: ") {
                d.driver = Some(s.trim().to_owned());
            }
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(addr), Some(class), Some(ids)) = (words.next(), words.next(), words.next()) else { continue };
        let (vendor, device) = ids.split_once(':').expect("vendor:device");
        let rest: Vec<&str> = words.collect();
        let revision = rest.windows(2).find(|w| w[0] == "(rev").map(|w| w[1].trim_end_matches(')').to_owned());
        map.insert(
            addr.to_owned(),
            LspciDevice {
                vendor: vendor.to_owned(),
                device: device.to_owned(),
                class: class.trim_end_matches(':').to_owned(),
                revision,
                ..Default::default()
            },
        );
        current = Some(addr.to_owned());
    }
    map
}
