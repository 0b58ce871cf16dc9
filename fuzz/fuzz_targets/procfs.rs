//! procfs text files: `proc/<pid>/mountinfo`, `proc/mounts`, `proc/swaps` (host::block),
//! `proc/meminfo`, `proc/cpuinfo`, `proc/cmdline` and `proc/modules` (host::system). Input: the
//! contents of one such file; every parser reads it (each must take any text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::host::block::{parse_mountinfo, parse_mounts, parse_swaps};
use nodeprep::host::system::{meminfo_value, parse_cmdline, parse_cpuinfo, parse_proc_modules};
use nodeprep::model::PciInventory;
use nodeprep::model::system::SystemFacts;

fuzz_target!(|data: &[u8]| {
    // The readers decode these files lossily or refuse non-UTF-8; both reach the parsers as str.
    let text = String::from_utf8_lossy(data);
    let (mounts, bad) = parse_mountinfo(&text);
    assert!(mounts.len() + bad.len() <= text.lines().count());
    let _ = parse_mounts(&text);
    let _ = parse_swaps(&text);
    let mut facts = SystemFacts::default();
    facts.memory.total_kb = meminfo_value(&text, "MemTotal").and_then(Result::ok);
    if let Some(Ok(kb)) = meminfo_value(&text, "Hugepagesize") {
        let _ = nodeprep::hugepages::size_name(kb);
        facts.hugepages.default_size_kb = Some(kb);
    }
    facts.cpu = parse_cpuinfo(&text);
    facts.kernel.cmdline = Some(text.trim_end().to_owned());
    facts.kernel.args = parse_cmdline(&text);
    let _ = parse_proc_modules(&text);
    // What the node is fit for, from what was read: the verdicts quote these values.
    let _ = nodeprep::eligibility::evaluate(&facts, &PciInventory::default());
});
