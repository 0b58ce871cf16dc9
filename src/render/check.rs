//! The human-readable eligibility report (`nodeprep check`): one line per verdict with its facts,
//! the shared IOMMU groups one per line (isolated ones only counted, so thousands of groups stay
//! readable), each problem on its own line under its verdict, then the warnings.

use crate::eligibility::{EligibilityReport, GroupReport, Verdict};

/// Width of the name column.
const NAME: usize = 16;
/// Width of the yes/no column.
const ANSWER: usize = 6;

/// The report as text, ending with a newline.
pub fn render(report: &EligibilityReport) -> String {
    let mut out = String::new();
    verdict(&mut out, "IOMMU", &report.iommu);
    for g in report.iommu_groups.groups.iter().filter(|g| !g.isolated) {
        out.push_str(&shared_group(g));
        out.push('\n');
    }
    verdict(&mut out, "Virtualization", &report.virtualization);
    verdict(&mut out, "VFIO", &report.vfio);
    verdict(&mut out, "Hugepages", &report.hugepages);
    verdict(&mut out, "Kata", &report.kata);
    verdict(&mut out, "Passthrough", &report.passthrough);
    if !report.warnings.is_empty() {
        out.push_str("\nWarnings:\n");
        for w in &report.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}

/// `Name  yes   fact; fact` then `- problem` lines aligned under the facts. Without facts the
/// first problem takes the facts' place.
fn verdict(out: &mut String, name: &str, v: &Verdict) {
    let answer = if v.eligible { "yes" } else { "no" };
    let mut head = format!("{name:<NAME$}{answer:<ANSWER$}");
    let mut problems = v.problems.iter();
    if !v.facts.is_empty() {
        head.push_str(&v.facts.join("; "));
    } else if let Some(p) = problems.next() {
        head.push_str(&format!("- {p}"));
    }
    out.push_str(head.trim_end());
    out.push('\n');
    for p in problems {
        out.push_str(&format!("{:width$}- {p}\n", "", width = NAME + ANSWER));
    }
}

/// `  group 27 (DMA): shared: 0000:af:00.0, 0000:af:00.1`, bridges and no-IOMMU noted.
fn shared_group(g: &GroupReport) -> String {
    let endpoints: Vec<String> = g.endpoints.iter().map(ToString::to_string).collect();
    let mut line = format!(
        "  group {} ({}): shared: {}",
        g.number,
        g.group_type.as_deref().unwrap_or("type unknown"),
        endpoints.join(", ")
    );
    if !g.bridges.is_empty() {
        let bridges: Vec<String> = g.bridges.iter().map(ToString::to_string).collect();
        line.push_str(&format!("; bridges: {}", bridges.join(", ")));
    }
    if g.no_iommu {
        line.push_str("; no-IOMMU (vfio-noiommu)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eligibility::evaluate;
    use crate::eligibility::testing::inventory;
    use crate::host::system::read_system;
    use crate::host::system::testing::host;

    #[test]
    fn shows_shared_groups_problems_and_warnings() {
        let t = host("intel");
        t.file("lib/modules/5.14.0-427.el9.x86_64/modules.dep", "kernel/fs/xfs/xfs.ko.xz:\n");
        t.file("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "n/a");
        let report = evaluate(&read_system(&t.root()).expect("read"), &inventory());
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();

        assert!(
            lines[0].starts_with("IOMMU           yes   1 IOMMU unit (dmar0); 2 IOMMU groups: 1 isolated, 1 shared; "),
            "{text}"
        );
        assert!(lines[0].ends_with("kernel command line: intel_iommu=on iommu=pt"), "{text}");
        assert_eq!(lines[1], "  group 27 (DMA): shared: 0000:af:00.0, 0000:af:00.1", "{text}");
        assert!(!text.contains("group 26"), "isolated groups are only counted:\n{text}");
        assert!(lines[2].starts_with("Virtualization  no    vmx; kvm, kvm_intel loaded"), "{text}");
        assert!(
            lines[3].starts_with("                      - /dev/kvm exists but is not a character device"),
            "{text}"
        );
        assert!(text.contains("\nKata            yes   sse4_2; vmx; kvm, kvm_intel loaded"), "{text}");
        assert!(text.contains("\nVFIO            no    /dev/vfio/vfio absent\n"), "{text}");
        assert!(text.contains("\nPassthrough     no    IOMMU on; 1 shared IOMMU group: every endpoint"), "{text}");
        assert!(text.contains("\n                      - vfio-pci is neither loaded nor loadable: "), "{text}");
        assert!(text.contains("Hugepages       yes   2 MiB pages: 512 total, ? free"), "{text}");
        let warnings = text.split_once("\nWarnings:\n").expect("warnings section").1;
        assert!(warnings.starts_with("  - ") && warnings.contains("free_hugepages: expected a count"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_verdict_without_facts_puts_its_first_problem_on_the_line() {
        let mut out = String::new();
        let v = Verdict { eligible: false, facts: vec![], problems: vec!["a: do x".into(), "b: do y".into()] };
        verdict(&mut out, "Passthrough", &v);
        assert_eq!(out, "Passthrough     no    - a: do x\n                      - b: do y\n");
        let report = EligibilityReport::default();
        assert!(!render(&report).contains("Warnings"), "no warnings, no section");
    }

    #[test]
    fn many_isolated_groups_stay_one_line() {
        let mut report = EligibilityReport::default();
        report.iommu_groups.groups = (0..4096)
            .map(|n| GroupReport { number: n, isolated: n != 27, no_iommu: n == 27, ..Default::default() })
            .collect();
        let text = render(&report);
        assert_eq!(text.lines().filter(|l| l.starts_with("  group ")).count(), 1, "{text}");
        assert!(text.contains("  group 27 (type unknown): shared: ; no-IOMMU (vfio-noiommu)"), "{text}");
    }
}
