//! The node labels nodeprep owns, as a pure function of what the host checks found. Each label
//! is present with the value `"true"` when its fact holds and absent otherwise, so applying the
//! set with server-side apply (field manager `nodeprep`) removes exactly the labels nodeprep set
//! earlier and no longer wants, and never touches anyone else's.
//!
//! `katacontainers.io/kata-runtime` belongs to kata-deploy and is never written.

use std::collections::BTreeMap;

use crate::eligibility::EligibilityReport;
use crate::model::system::SystemFacts;

/// The OpenShift sandboxed containers operator selects on this (`checkNodeEligibility: true`).
pub const KATA: &str = "feature.node.kubernetes.io/runtime.kata";
pub const KVM: &str = "nodeprep.io/kvm";
pub const IOMMU: &str = "nodeprep.io/iommu";
/// IOMMU on and vfio usable.
pub const PASSTHROUGH: &str = "nodeprep.io/passthrough";
pub const HUGEPAGES_2MI: &str = "nodeprep.io/hugepages-2Mi";
pub const HUGEPAGES_1GI: &str = "nodeprep.io/hugepages-1Gi";
/// Devices bound and plugins registered.
pub const READY: &str = "nodeprep.io/ready";

/// Every label key nodeprep may write.
pub const OWNED: [&str; 7] = [KATA, KVM, IOMMU, PASSTHROUGH, HUGEPAGES_2MI, HUGEPAGES_1GI, READY];

/// What the labels are computed from.
#[derive(Debug, Clone, Copy)]
pub struct LabelInputs<'a> {
    pub report: &'a EligibilityReport,
    pub facts: &'a SystemFacts,
    /// Devices bound and every plugin registered.
    pub ready: bool,
    /// Off where Node Feature Discovery owns the Kata key.
    pub manage_kata: bool,
}

/// Pure: the labels nodeprep wants on its node.
pub fn desired(inputs: LabelInputs<'_>) -> BTreeMap<String, String> {
    let reserved = |kb: u64| inputs.facts.hugepages.sizes.iter().any(|s| s.size_kb == kb && s.total.unwrap_or(0) > 0);
    let holds = [
        (KATA, inputs.manage_kata && inputs.report.kata.eligible),
        (KVM, inputs.report.virtualization.eligible),
        (IOMMU, inputs.report.iommu.eligible),
        (PASSTHROUGH, inputs.report.passthrough.eligible),
        (HUGEPAGES_2MI, reserved(2048)),
        (HUGEPAGES_1GI, reserved(1_048_576)),
        (READY, inputs.ready),
    ];
    holds.into_iter().filter(|(_, h)| *h).map(|(k, _)| (k.to_owned(), "true".to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eligibility::Verdict;
    use crate::model::system::HugepageSize;

    fn report(kata: bool, kvm: bool, iommu: bool, passthrough: bool) -> EligibilityReport {
        let v = |eligible| Verdict { eligible, ..Default::default() };
        EligibilityReport {
            kata: v(kata),
            virtualization: v(kvm),
            iommu: v(iommu),
            passthrough: v(passthrough),
            ..Default::default()
        }
    }

    fn facts(pages: &[(u64, u64)]) -> SystemFacts {
        let mut f = SystemFacts::default();
        f.hugepages.sizes = pages
            .iter()
            .map(|(kb, total)| HugepageSize { size_kb: *kb, total: Some(*total), free: Some(*total), nodes: vec![] })
            .collect();
        f
    }

    #[test]
    fn each_label_follows_its_fact() {
        let r = report(true, true, true, false);
        let f = facts(&[(2048, 1024), (1_048_576, 0)]);
        let got = desired(LabelInputs { report: &r, facts: &f, ready: false, manage_kata: true });
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(keys, vec![KATA, HUGEPAGES_2MI, IOMMU, KVM]);
        assert!(got.values().all(|v| v == "true"));
        let all = desired(LabelInputs {
            report: &report(true, true, true, true),
            facts: &facts(&[(2048, 1), (1_048_576, 2)]),
            ready: true,
            manage_kata: true,
        });
        assert_eq!(all.len(), OWNED.len());
        assert!(OWNED.iter().all(|k| all.contains_key(*k)));
    }

    #[test]
    fn kata_key_left_to_nfd_when_configured() {
        let r = report(true, true, false, false);
        let got = desired(LabelInputs { report: &r, facts: &facts(&[]), ready: false, manage_kata: false });
        assert!(!got.contains_key(KATA));
        assert!(got.contains_key(KVM));
    }

    #[test]
    fn unreadable_page_counts_do_not_label() {
        let mut f = facts(&[]);
        f.hugepages.sizes.push(HugepageSize { size_kb: 2048, total: None, free: None, nodes: vec![] });
        let got = desired(LabelInputs {
            report: &report(false, false, false, false),
            facts: &f,
            ready: false,
            manage_kata: true,
        });
        assert!(got.is_empty());
    }
}
