//! The `nodeprep scan` listing: like `lspci -nnk`, but grouped by IOMMU group, because a group
//! is the unit passthrough works with.

use std::fmt::Write;

use crate::model::{PciDevice, PciInventory};

/// Renders the inventory grouped by IOMMU group, devices without a group last.
pub fn render(inv: &PciInventory) -> String {
    let mut out = String::with_capacity(inv.devices.len() * 200 + 256);
    for g in &inv.groups {
        if g.devices.is_empty() {
            continue;
        }
        let kind = g.group_type.as_deref().unwrap_or("type unknown");
        let sharing = if g.is_isolated() {
            "isolated".to_owned()
        } else {
            format!("shared by {} endpoint functions", g.endpoints.len())
        };
        let noiommu = if g.no_iommu { ", no-IOMMU" } else { "" };
        let _ = writeln!(out, "IOMMU group {} ({kind}{noiommu}, {sharing})", g.number);
        for a in &g.devices {
            if let Some(d) = inv.device(a) {
                device(&mut out, d);
            }
        }
    }
    let ungrouped: Vec<&PciDevice> = inv.devices.iter().filter(|d| d.iommu_group.is_none()).collect();
    if !ungrouped.is_empty() {
        let _ = writeln!(out, "No IOMMU group ({} functions)", ungrouped.len());
        for d in ungrouped {
            device(&mut out, d);
        }
    }
    let groups = inv.groups.iter().filter(|g| !g.devices.is_empty()).count();
    let shared = inv.groups.iter().filter(|g| !g.is_isolated()).count();
    let _ = writeln!(out, "{} PCI functions, {groups} IOMMU groups ({shared} shared)", inv.devices.len());
    for w in &inv.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn hex4(v: Option<u16>) -> String {
    v.map_or_else(|| "????".to_owned(), |v| format!("{v:04x}"))
}

fn device(out: &mut String, d: &PciDevice) {
    let class = match (d.class_name.as_deref(), d.class_id) {
        (Some(n), Some(c)) => format!("{n} [{:04x}]", c >> 8),
        (None, Some(c)) => format!("Class [{:04x}]", c >> 8),
        (_, None) => "Class [????]".to_owned(),
    };
    let vendor = d.vendor_name.as_deref().unwrap_or("Unknown vendor");
    let name = d.device_name.as_deref().unwrap_or("Device");
    let rev = d.revision.filter(|r| *r != 0).map(|r| format!(" (rev {r:02x})")).unwrap_or_default();
    let _ =
        writeln!(out, "  {} {class}: {vendor} {name} [{}:{}]{rev}", d.address, hex4(d.vendor_id), hex4(d.device_id));
    // Like lspci, an absent (0000 or ffff) subsystem vendor is not shown.
    if let Some(sv) = d.subsystem_vendor_id.filter(|v| *v != 0 && *v != 0xffff) {
        let vendor = crate::names::vendor_name(sv).unwrap_or("Unknown vendor");
        let sub = d.subsystem_name.as_deref().unwrap_or("Device");
        let _ = writeln!(out, "\tSubsystem: {vendor} {sub} [{sv:04x}:{}]", hex4(d.subsystem_device_id));
    }
    if let Some(drv) = &d.driver {
        let _ = writeln!(out, "\tKernel driver in use: {drv}");
    }
    if let Some(o) = &d.driver_override {
        let _ = writeln!(out, "\tDriver override: {o}");
    }
    if let Some(n) = d.numa_node {
        let _ = writeln!(out, "\tNUMA node: {n}");
    }
    if let Some(total) = d.sriov_total_vfs {
        let num = d.sriov_num_vfs.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let _ = writeln!(out, "\tSR-IOV PF: {num} of {total} VFs enabled");
    }
    if let Some(pf) = &d.physfn {
        let idx = d.vf_index.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let _ = writeln!(out, "\tSR-IOV VF {idx} of PF {pf}");
    }
    let nets: Vec<String> = d
        .net
        .iter()
        .map(|n| {
            let state = n.operstate.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            let route = if n.default_route { ", default route" } else { "" };
            let master = n
                .master
                .as_ref()
                .map(|m| match &m.kind {
                    Some(k) => format!(", master {} ({k})", m.name),
                    None => format!(", master {}", m.name),
                })
                .unwrap_or_default();
            let uppers = if n.uppers.is_empty() { String::new() } else { format!(", uppers {}", n.uppers.join(" ")) };
            format!("{}{state}{route}{master}{uppers}", n.name)
        })
        .collect();
    if !nets.is_empty() {
        let _ = writeln!(out, "\tNetwork: {}", nets.join("; "));
    }
    for b in &d.block {
        let mut line = format!("\tBlock: {}", b.name);
        if !b.partitions.is_empty() {
            let _ = write!(line, " ({})", b.partitions.join(", "));
        }
        if let Some(subsys) = &b.nvme_subsystem {
            let _ = write!(line, "; multipath head of {subsys}");
        }
        for h in &b.holders {
            let _ = write!(line, "; {} held by {} ({})", h.device, h.holder, h.kind);
        }
        for m in &b.btrfs {
            let _ = write!(line, "; {} in btrfs {} with {}", m.device, m.fsid, m.members.join(", "));
        }
        for m in &b.mounts {
            let _ = write!(line, "; {} mounted on {} ({})", m.device, m.mount_point, m.fs_type);
        }
        for s in &b.swaps {
            let _ = write!(line, "; {s} is swap");
        }
        let _ = writeln!(out, "{line}");
    }
    if d.boot_vga {
        let _ = writeln!(out, "\tBoot VGA device");
    }
    let uses = d.host_uses();
    if !uses.is_empty() {
        let _ = writeln!(out, "\tHost uses it: {}", uses.join("; "));
    }
    if !d.use_unknown.is_empty() {
        let _ = writeln!(out, "\tCannot tell whether the host uses it: {}", d.use_unknown.join("; "));
    }
    for w in &d.warnings {
        let _ = writeln!(out, "\tWarning: {w}");
    }
}
