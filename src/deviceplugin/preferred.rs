//! GetPreferredAllocation, pure: which `allocation_size` devices to suggest to the kubelet out of
//! the ones it says are available.
//!
//! The order of preference:
//! 1. every must-include device (the kubelet reuses devices of init containers), in its order;
//! 2. devices on one NUMA node: the node most must-include devices are on, or, without any, the
//!    node with the most available devices (ties: the node the kubelet lists first);
//! 3. within a node, VFs under one PF: first the PFs of must-include devices, then the PF with the
//!    most available VFs (ties: the PF the kubelet lists first); devices that are no VF form one
//!    group of their own;
//! 4. then the kubelet's order.
//!
//! Devices with no known NUMA node come after every device with one. The answer has exactly
//! `allocation_size` ids whenever that many are available (must-include ones counted); fewer only
//! when fewer are available.

use std::collections::{HashMap, HashSet};

use crate::model::PciAddress;

/// Where a device sits, as far as preference cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub numa_node: Option<u32>,
    /// The PF of a VF; `None` for a device that is no VF.
    pub pf: Option<PciAddress>,
}

/// Pure: the preferred allocation of `size` devices. `placement` tells where a device id sits;
/// ids it knows nothing about get [`Placement::default`].
pub fn preferred_allocation(
    available: &[String],
    must_include: &[String],
    size: usize,
    placement: impl Fn(&str) -> Placement,
) -> Vec<String> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut chosen: Vec<&str> = Vec::with_capacity(size);
    for id in must_include {
        if seen.insert(id) {
            chosen.push(id);
        }
    }
    if chosen.len() >= size {
        chosen.truncate(size);
        return chosen.into_iter().map(str::to_owned).collect();
    }
    // The candidates: available devices not already chosen, once each, in the kubelet's order.
    let candidates: Vec<(usize, &str, Placement)> = available
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .enumerate()
        .map(|(i, id)| (i, id.as_str(), placement(id)))
        .collect();
    let must: Vec<Placement> = chosen.iter().map(|id| placement(id)).collect();

    // NUMA nodes: how many candidates each has, and where the kubelet first lists one.
    let mut node_count: HashMap<u32, (usize, usize)> = HashMap::new();
    for (i, _, p) in &candidates {
        if let Some(n) = p.numa_node {
            let e = node_count.entry(n).or_insert((0, *i));
            e.0 += 1;
        }
    }
    let mut must_nodes: HashMap<u32, usize> = HashMap::new();
    for p in &must {
        if let Some(n) = p.numa_node {
            *must_nodes.entry(n).or_default() += 1;
        }
    }
    // Nodes ranked: most must-include devices, then most candidates, then the kubelet's order.
    let mut nodes: Vec<u32> = node_count.keys().chain(must_nodes.keys()).copied().collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.sort_by_key(|n| {
        let (count, first) = node_count.get(n).copied().unwrap_or((0, usize::MAX));
        (std::cmp::Reverse(must_nodes.get(n).copied().unwrap_or(0)), std::cmp::Reverse(count), first)
    });
    let node_rank = |n: Option<u32>| n.and_then(|n| nodes.iter().position(|x| *x == n)).unwrap_or(usize::MAX);

    // PF groups per node: how many candidates each has, and where the kubelet first lists one.
    let mut pf_count: HashMap<(Option<u32>, Option<PciAddress>), (usize, usize)> = HashMap::new();
    for (i, _, p) in &candidates {
        let e = pf_count.entry((p.numa_node, p.pf)).or_insert((0, *i));
        e.0 += 1;
    }
    let must_pfs: HashSet<PciAddress> = must.iter().filter_map(|p| p.pf).collect();

    let mut ordered = candidates;
    ordered.sort_by_key(|(i, _, p)| {
        let (count, first) = pf_count[&(p.numa_node, p.pf)];
        let pf_of_must = p.pf.is_some_and(|pf| must_pfs.contains(&pf));
        (node_rank(p.numa_node), !pf_of_must, std::cmp::Reverse(count), first, *i)
    });
    chosen.extend(ordered.iter().take(size - chosen.len()).map(|(_, id, _)| *id));
    chosen.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Placement from a table: id -> (numa, pf).
    fn table(rows: &[(&str, Option<u32>, Option<&str>)]) -> impl Fn(&str) -> Placement + use<> {
        let m: HashMap<String, Placement> = rows
            .iter()
            .map(|(id, n, pf)| {
                (id.to_string(), Placement { numa_node: *n, pf: pf.map(|p| p.parse().expect("pf address")) })
            })
            .collect();
        move |id| m.get(id).copied().unwrap_or_default()
    }

    #[test]
    fn no_placement_keeps_the_kubelets_order_and_exact_size() {
        let avail = ids(&["c", "a", "b", "d"]);
        let none = |_: &str| Placement::default();
        assert_eq!(preferred_allocation(&avail, &[], 2, none), ids(&["c", "a"]));
        assert_eq!(preferred_allocation(&avail, &[], 4, none), ids(&["c", "a", "b", "d"]));
        assert_eq!(preferred_allocation(&avail, &[], 0, none), Vec::<String>::new());
        // Fewer available than asked: all of them, nothing invented.
        assert_eq!(preferred_allocation(&avail, &[], 9, none), ids(&["c", "a", "b", "d"]));
    }

    #[test]
    fn must_include_devices_come_first_and_are_not_repeated() {
        let avail = ids(&["a", "b", "c", "d"]);
        let none = |_: &str| Placement::default();
        assert_eq!(preferred_allocation(&avail, &ids(&["c"]), 2, none), ids(&["c", "a"]));
        assert_eq!(preferred_allocation(&avail, &ids(&["d", "b", "d"]), 3, none), ids(&["d", "b", "a"]));
        // Must-include ids the available list does not repeat are still kept.
        assert_eq!(preferred_allocation(&ids(&["a"]), &ids(&["z"]), 2, none), ids(&["z", "a"]));
        // More must-include devices than the size: the first `size` of them.
        assert_eq!(preferred_allocation(&avail, &ids(&["b", "c", "d"]), 2, none), ids(&["b", "c"]));
    }

    #[test]
    fn prefers_the_numa_node_with_the_most_available_devices() {
        let p = table(&[
            ("0000:3b:00.0", Some(0), None),
            ("0000:5e:00.0", Some(0), None),
            ("0000:86:00.0", Some(1), None),
            ("0000:af:00.0", Some(1), None),
            ("0000:d8:00.0", Some(1), None),
        ]);
        let avail = ids(&["0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0", "0000:af:00.0", "0000:d8:00.0"]);
        assert_eq!(preferred_allocation(&avail, &[], 2, &p), ids(&["0000:86:00.0", "0000:af:00.0"]));
        // More than one node holds: the biggest node first, then the next one.
        assert_eq!(
            preferred_allocation(&avail, &[], 4, &p),
            ids(&["0000:86:00.0", "0000:af:00.0", "0000:d8:00.0", "0000:3b:00.0"])
        );
        // A tie goes to the node the kubelet lists first.
        let avail = ids(&["0000:86:00.0", "0000:3b:00.0", "0000:af:00.0", "0000:5e:00.0"]);
        assert_eq!(preferred_allocation(&avail, &[], 2, &p), ids(&["0000:86:00.0", "0000:af:00.0"]));
    }

    #[test]
    fn must_include_devices_choose_the_numa_node() {
        let p = table(&[("a", Some(0), None), ("b", Some(1), None), ("c", Some(1), None), ("d", Some(0), None)]);
        let avail = ids(&["a", "b", "c", "d"]);
        // Node 1 has more available, but the must-include device is on node 0.
        assert_eq!(preferred_allocation(&avail, &ids(&["a"]), 2, &p), ids(&["a", "d"]));
        // Devices without a known node come last.
        let p = table(&[("x", None, None), ("y", Some(1), None)]);
        assert_eq!(preferred_allocation(&ids(&["x", "y"]), &[], 1, &p), ids(&["y"]));
    }

    #[test]
    fn prefers_vfs_under_one_pf_within_the_node() {
        let pf_a = "0000:86:00.0";
        let pf_b = "0000:86:00.1";
        let p = table(&[
            ("0000:86:00.2", Some(1), Some(pf_a)),
            ("0000:86:08.2", Some(1), Some(pf_b)),
            ("0000:86:08.3", Some(1), Some(pf_b)),
            ("0000:86:08.4", Some(1), Some(pf_b)),
            ("0000:86:00.3", Some(1), Some(pf_a)),
            ("0000:5e:01.0", Some(0), Some("0000:5e:00.0")),
        ]);
        let avail =
            ids(&["0000:5e:01.0", "0000:86:00.2", "0000:86:08.2", "0000:86:00.3", "0000:86:08.3", "0000:86:08.4"]);
        // Node 1 (5 VFs) beats node 0; within it PF b (3 VFs) beats PF a (2).
        assert_eq!(preferred_allocation(&avail, &[], 3, &p), ids(&["0000:86:08.2", "0000:86:08.3", "0000:86:08.4"]));
        assert_eq!(
            preferred_allocation(&avail, &[], 4, &p),
            ids(&["0000:86:08.2", "0000:86:08.3", "0000:86:08.4", "0000:86:00.2"])
        );
        // A must-include VF pulls its PF's siblings ahead of the bigger PF.
        assert_eq!(
            preferred_allocation(&avail, &ids(&["0000:86:00.3"]), 2, &p),
            ids(&["0000:86:00.3", "0000:86:00.2"])
        );
    }

    #[test]
    fn duplicates_in_the_available_list_are_offered_once() {
        let none = |_: &str| Placement::default();
        assert_eq!(preferred_allocation(&ids(&["a", "a", "b"]), &[], 2, none), ids(&["a", "b"]));
        assert_eq!(preferred_allocation(&ids(&["a", "a"]), &ids(&["a"]), 2, none), ids(&["a"]));
    }
}
