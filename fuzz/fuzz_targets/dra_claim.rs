//! A ResourceClaim as the API server returns it (JSON): `dra::prepare::claim_allocation`, which
//! takes the claim's identity and this driver's allocation results out of its status. Its
//! strings name files and directories (CDI specs, metadata paths), so what it accepts must be
//! what the API server allows in names. Input: one ResourceClaim object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeprep::dra::DEFAULT_DRIVER;
use nodeprep::dra::prepare::{base_request, claim_allocation};

/// A DNS subdomain or UID: what may name a file or directory.
fn safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !s.starts_with('.')
}

fuzz_target!(|data: &[u8]| {
    let Ok(claim) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(alloc) = claim_allocation(&claim, DEFAULT_DRIVER) else { return };
    assert!(safe(&alloc.claim.namespace) && safe(&alloc.claim.name) && safe(&alloc.claim.uid));
    // The pod's name for a template claim is a directory of the container's metadata path.
    if let Some(p) = &alloc.pod_claim_name {
        assert!(p.is_empty() || safe(p), "pod claim name {p:?} accepted");
    }
    for r in &alloc.results {
        assert!(safe(base_request(&r.request)), "request {:?} accepted", r.request);
    }
});
