//! The scheduler's affinity units, by oVirt's names: the `Label` filter (a VM with
//! affinity labels runs only on hosts that carry them all), `VmAffinityGroups` and
//! `VmToHostsAffinityGroups` — filters for enforcing groups, weights for the others
//! (a soft rule broken counts against a host; the hosts breaking fewest come first).
//!
//! The groups and labels are records of the API (`api::kinds`): an affinity group's
//! VMs are the ones it names and the ones carrying one of its VM labels, its hosts
//! likewise.

use std::collections::{HashMap, HashSet};

use crate::model::*;

/// A rule of an affinity group, as the VM sees it.
struct Rule<'a> {
    group: &'a str,
    positive: bool,
    enforcing: bool,
}

fn rule<'a>(g: &'a Record, name: &str) -> Option<Rule<'a>> {
    let r = g.doc.get(name)?;
    if r.text_of("enabled") != Some("true") {
        return None;
    }
    Some(Rule {
        group: g.name(),
        positive: r.text_of("positive") == Some("true"),
        enforcing: r.text_of("enforcing") == Some("true"),
    })
}

/// The ids in a record's list member, plus the members of the labels in another
/// (`vm_labels` -> the labels' `vms`).
fn members<'a>(
    inv: &'a Inventory,
    g: &'a Record,
    list: &str,
    labels: &str,
    of: &str,
) -> HashSet<&'a str> {
    let mut out: HashSet<&str> = g.list(list).into_iter().collect();
    for l in g.list(labels) {
        if let Some(label) = inv.record("AffinityLabel", l) {
            out.extend(label.list(of));
        }
    }
    out
}

/// Why no host is left, when none is.
pub type Refusal = String;

/// Applies the affinity filters to `candidates` (host ids) for `vm`; returns the
/// number of soft rules each remaining host breaks (its weight: fewer is better).
pub fn affinity(
    inv: &Inventory,
    vm: &Vm,
    candidates: &mut Vec<String>,
) -> Result<HashMap<String, u32>, Refusal> {
    let mut penalty: HashMap<String, u32> = HashMap::new();
    // Label: every label of the VM must be on the host.
    let labels: Vec<&Record> = inv
        .records_of("AffinityLabel")
        .filter(|l| l.list("vms").contains(&vm.id.as_str()))
        .collect();
    if !labels.is_empty() {
        candidates.retain(|h| labels.iter().all(|l| l.list("hosts").contains(&h.as_str())));
        if candidates.is_empty() {
            return Err(format!(
                "filter Label: no host carries every affinity label of the VM ({})",
                labels
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let where_runs = |id: &str| -> Option<&str> {
        inv.vms
            .get(id)
            .filter(|v| v.status != "down" && v.id != vm.id)
            .and_then(|v| v.host.as_deref())
    };
    for g in inv
        .records_of("AffinityGroup")
        .filter(|g| g.link("cluster") == Some(vm.cluster.as_str()))
    {
        let vms = members(inv, g, "vms", "vm_labels", "vms");
        if !vms.contains(vm.id.as_str()) {
            continue;
        }
        if let Some(r) = rule(g, "vms_rule") {
            let peers: HashSet<&str> = vms.iter().filter_map(|v| where_runs(v)).collect();
            if !peers.is_empty() {
                let breaks = |h: &str| peers.contains(h) != r.positive;
                if r.enforcing {
                    candidates.retain(|h| !breaks(h));
                    if candidates.is_empty() {
                        return Err(format!(
                            "filter VmAffinityGroups: affinity group {} ({}) leaves no host",
                            r.group,
                            if r.positive { "together" } else { "apart" }
                        ));
                    }
                } else {
                    for h in candidates.iter().filter(|h| breaks(h)) {
                        *penalty.entry(h.clone()).or_default() += 1;
                    }
                }
            }
        }
        if let Some(r) = rule(g, "hosts_rule") {
            let hosts = members(inv, g, "hosts", "host_labels", "hosts");
            let breaks = |h: &str| hosts.contains(h) != r.positive;
            if r.enforcing {
                candidates.retain(|h| !breaks(h));
                if candidates.is_empty() {
                    return Err(format!(
                        "filter VmToHostsAffinityGroups: affinity group {} leaves no host",
                        r.group
                    ));
                }
            } else {
                for h in candidates.iter().filter(|h| breaks(h)) {
                    *penalty.entry(h.clone()).or_default() += 1;
                }
            }
        }
    }
    Ok(penalty)
}
