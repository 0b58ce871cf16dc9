//! JSON files nodeprep reads back from disk: the kubelet's device-manager checkpoint
//! (`host::kubelet::parse_checkpoint`), the CDI spec it wrote (`deviceplugin::cdi::parse_spec`),
//! the bind state (`bind::State`, `var/lib/nodeprep/bindings.json`) and the DRA checkpoint
//! (`dra::checkpoint::Checkpoint::parse`). Input: one file's contents; every parser reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::bind::State;
use nodeprep::deviceplugin::cdi::parse_spec;
use nodeprep::dra::checkpoint::Checkpoint;
use nodeprep::host::kubelet::parse_checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(allocations) = parse_checkpoint(text) {
            for a in &allocations {
                let _ = a.holds("0000:3b:00.0");
            }
        }
        // `State::load` is `serde_json::from_str` of the file's text.
        if let Ok(state) = serde_json::from_str::<State>(text) {
            let _ = state.original_drivers();
        }
    }
    if let Ok(spec) = parse_spec(data) {
        // Written back as read.
        let again = serde_json::to_vec(&spec).expect("a spec serializes");
        assert_eq!(parse_spec(&again).ok(), Some(spec));
    }
    if let Ok(cp) = Checkpoint::parse(data) {
        let again = serde_json::to_vec(&cp).expect("a checkpoint serializes");
        assert_eq!(Checkpoint::parse(&again).ok(), Some(cp.clone()));
        if let Ok(a) = "0000:3b:00.0".parse() {
            let _ = cp.holder(&a, "");
        }
    }
});
