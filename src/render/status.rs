//! `nodeprep status` as text: the node's line, the device table, what waits, the refusals.

use std::fmt::Write;

use crate::bind::ReleaseAction;
use crate::status::StatusReport;

/// Pure: the report as an admin reads it.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let node = r.node.as_deref().unwrap_or("this node");
    let source = match &r.written {
        Some(at) => format!("the agent's report of {at}, drivers and holders read now"),
        None => "built now from the config given".to_owned(),
    };
    let release = match r.release {
        crate::config::Release::Auto => "auto",
        crate::config::Release::Manual => "manual",
    };
    let _ = writeln!(out, "{node}: {source}; release: {release}");
    let m = &r.maintenance;
    let maint = match (m.cordoned, &m.node_maintenance) {
        (_, Some(nm)) => format!("in maintenance (NodeMaintenance {nm})"),
        (Some(true), None) => "in maintenance (cordoned)".to_owned(),
        (Some(false), None) => "schedulable".to_owned(),
        (None, None) => "not known (no cluster)".to_owned(),
    };
    let _ = writeln!(out, "maintenance: {maint}\n");
    let dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
    let rows: Vec<[String; 6]> = r
        .devices
        .iter()
        .map(|d| {
            [
                d.address.to_string(),
                dash(d.driver.as_deref()),
                dash(d.at_rest.as_deref()),
                d.serves.clone(),
                d.held_by.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
                d.state.clone(),
            ]
        })
        .collect();
    let header = ["DEVICE", "DRIVER", "AT REST", "SERVES", "HELD BY", "STATE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = if i + 1 == cells.len() { 0 } else { widths[i] + 2 };
            let _ = write!(l, "{c:<w$}");
        }
        l.trim_end().to_owned()
    };
    if rows.is_empty() {
        out.push_str("no device is managed: the config selects none on this host and nothing is recorded\n");
    } else {
        let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
        for row in &rows {
            let _ = writeln!(out, "{}", line(row));
        }
    }
    if !r.pending.is_empty() {
        let _ = writeln!(out, "\npending (given back once free):");
        for p in &r.pending {
            if let ReleaseAction::Pending { holder } = &p.action {
                let _ = writeln!(out, "  {} {}: held by {holder}", p.address, p.why);
            }
        }
    }
    if !r.renames.is_empty() {
        let _ = writeln!(out, "\nwaiting for a new resource name:");
        for n in &r.renames {
            let _ = writeln!(out, "  {} {}", n.address, n.problem());
        }
    }
    if !r.refusals.is_empty() {
        let _ = writeln!(out, "\nrefused (last bind):");
        for f in &r.refusals {
            let _ = writeln!(out, "  {} {} since {}", f.address, f.reason, f.at);
        }
    }
    out
}
