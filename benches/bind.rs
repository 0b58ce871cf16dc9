//! Bind benchmark on a real kernel: in the QEMU guest (Debian's 6.1 kernel, emulated Intel
//! IOMMU, TCG), time from `nodeprep bind` start to all selected devices on vfio-pci (e1000e,
//! edu, an NVMe VF; the mounted NVMe disk is refused), and sysfs writes per device. Each round
//! binds and then unbinds again; the first round also loads vfio-pci and is reported apart.
//! `cargo bench --bench bind` (optionally `-- ROUNDS`).
//!
//! Under TCG every instruction is emulated, so absolute times are several times what the same
//! kernel takes on hardware; the writes per device do not depend on it.

#[path = "../tests/realkernel/mod.rs"]
mod realkernel;

use realkernel::{BIND_CONFIG, Machine, Vm};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(11);
    let mut script = String::from(
        "pf=$(pci_by_serial nodeprep-sriov)\n\
         echo 0 > /sys/bus/pci/devices/$pf/sriov_drivers_autoprobe\n\
         echo 2 > /sys/bus/pci/devices/$pf/sriov_numvfs\n",
    );
    for i in 0..rounds {
        script.push_str(&format!(
            "section bind-{i} nodeprep bind --config /etc/nodeprep/config.yaml -o json\n\
             section unbind-{i} nodeprep unbind -o json\n"
        ));
    }
    let out = Vm::new(Machine::Iommu).file("/etc/nodeprep/config.yaml", BIND_CONFIG).run(&script);
    let mut times = Vec::new();
    let mut first = 0.0;
    let mut writes: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for i in 0..rounds {
        let b = out.json(&format!("bind-{i}"));
        let ms = b["elapsedMs"].as_f64().expect("elapsedMs");
        for o in b["outcomes"].as_array().expect("outcomes") {
            if o["outcome"] == "bound" {
                let addr = o["address"].as_str().unwrap_or_default().to_owned();
                writes.entry(addr).or_default().push(o["writes"].as_u64().unwrap_or(0));
            }
        }
        let bound = b["outcomes"].as_array().map_or(0, |v| v.iter().filter(|o| o["outcome"] == "bound").count());
        assert_eq!(bound, 3, "round {i}: three devices bound: {b}");
        if i == 0 {
            first = ms;
        } else {
            times.push(ms);
        }
        let u = out.json(&format!("unbind-{i}"));
        let restored = u["outcomes"].as_array().map_or(0, |v| v.iter().filter(|o| o["outcome"] == "restored").count());
        assert_eq!(restored, 3, "round {i}: three devices restored: {u}");
    }
    println!("bind benchmark: real kernel in QEMU/TCG, 3 devices (e1000e, edu, NVMe VF) + 1 refused, {rounds} rounds");
    println!("  first bind (loads vfio-pci, vfio_iommu_type1)       {first:8.1} ms");
    if !times.is_empty() {
        println!("  bind start -> all on vfio-pci, median of {:2}       {:8.1} ms", times.len(), median(times));
    }
    for (addr, w) in &writes {
        let min = w.iter().min().copied().unwrap_or(0);
        let max = w.iter().max().copied().unwrap_or(0);
        println!("  sysfs writes for {addr}: {min}..{max} per bind");
    }
    let total: u64 = writes.values().filter_map(|w| w.first()).sum();
    println!(
        "  sysfs writes per device: {:.2} on average (3 with a driver to unbind, 2 without)",
        total as f64 / writes.len().max(1) as f64
    );
    println!("  (the 10-60 minute reboot a MachineConfig needs is the baseline)");
}
