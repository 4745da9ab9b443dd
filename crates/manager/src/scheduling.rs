//! Scheduling policies and their units, by oVirt's names (facts of the engine in
//! `api/model/scheduling.txt`: 39 units, 5 built-in policies). A cluster's policy
//! decides which filters run and how hosts are weighed: `Memory` (free scheduling
//! memory), `VmAffinityGroups` and `VmToHostsAffinityGroups` (filters for enforcing
//! groups, weights for the others), the mandatory `Label` filter (a VM with affinity
//! labels runs only on hosts that carry them all); weights
//! `OptimalForMemoryEvenDistribution`, `OptimalForMemoryPowerSaving`,
//! `OptimalForEvenGuestDistribution`, `OptimalForCpuEvenDistribution`,
//! `OptimalForCpuPowerSaving`, ranked and multiplied by their factors; the host with
//! the lowest sum wins (oVirt's BasicWeighting). Units Halyard has no input for (NUMA,
//! huge pages, hosted engine, ...) pass every host.
//!
//! The groups and labels are records of the API (`api::kinds`): an affinity group's
//! VMs are the ones it names and the ones carrying one of its VM labels, its hosts
//! likewise.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::model::*;

const FACTS: &str = include_str!("api/model/scheduling.txt");

/// A policy unit.
#[derive(Debug, Clone)]
pub struct Unit {
    pub id: String,
    pub name: String,
    /// `filter`, `weight`, `load_balancing` or `selector`.
    pub kind: String,
    pub description: String,
}

/// A built-in policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub default: bool,
    pub filters: Vec<String>,
    /// (unit id, factor)
    pub weights: Vec<(String, i64)>,
    pub balances: Vec<String>,
}

struct Facts {
    units: Vec<Unit>,
    policies: Vec<Policy>,
}

fn facts() -> &'static Facts {
    static F: OnceLock<Facts> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = Facts {
            units: Vec::new(),
            policies: Vec::new(),
        };
        for line in FACTS.lines().filter(|l| !l.starts_with('#')) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let policy =
                |f: &mut Facts, name: &str| f.policies.iter_mut().position(|p| p.name == name);
            match w.as_slice() {
                ["unit", id, rest @ ..] => {
                    // The name may have spaces: the kind is the first word that is one.
                    let k = rest
                        .iter()
                        .position(|x| {
                            ["filter", "weight", "load_balancing", "selector"].contains(x)
                        })
                        .unwrap_or(0);
                    f.units.push(Unit {
                        id: id.to_string(),
                        name: rest[..k].join(" "),
                        kind: rest.get(k).unwrap_or(&"filter").to_string(),
                        description: rest.get(k + 1..).map(|d| d.join(" ")).unwrap_or_default(),
                    });
                }
                ["policy", id, name] => f.policies.push(Policy {
                    id: id.to_string(),
                    name: name.to_string(),
                    ..Policy::default()
                }),
                ["policy_default", name, "true"] => {
                    if let Some(i) = policy(&mut f, name) {
                        f.policies[i].default = true;
                    }
                }
                ["policy_filter_uuid", name, unit] => {
                    if let Some(i) = policy(&mut f, name) {
                        f.policies[i].filters.push(unit.to_string());
                    }
                }
                ["policy_weight_uuid", name, unit, factor] => {
                    if let Some(i) = policy(&mut f, name) {
                        f.policies[i]
                            .weights
                            .push((unit.to_string(), factor.parse().unwrap_or(1)));
                    }
                }
                ["policy_balance_uuid", name, unit] => {
                    if let Some(i) = policy(&mut f, name) {
                        f.policies[i].balances.push(unit.to_string());
                    }
                }
                _ => {}
            }
        }
        f
    })
}

pub fn units() -> &'static [Unit] {
    &facts().units
}

pub fn policies() -> &'static [Policy] {
    &facts().policies
}

/// The policy a cluster without one uses (oVirt's `none`).
pub fn default_policy() -> &'static str {
    policies()
        .iter()
        .find(|p| p.default)
        .map(|p| p.id.as_str())
        .unwrap_or("b4ed2332-a7ac-4d5f-9596-99a439cb2812")
}

/// What a cluster's policy turns on: filter and weight unit names, with factors.
pub struct Active {
    pub filters: HashSet<String>,
    pub weights: Vec<(String, i64)>,
}

fn unit_name(id: &str) -> Option<&'static str> {
    units().iter().find(|u| u.id == id).map(|u| u.name.as_str())
}

/// The active units of a cluster's policy (a stored policy record; the built-in
/// factors of its weights, 1 for others).
pub fn active(inv: &Inventory, cluster: &str) -> Active {
    let pid = inv
        .clusters
        .get(cluster)
        .map(|c| c.scheduling_policy.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(default_policy());
    let builtin = policies().iter().find(|p| p.id == pid);
    let rec = inv.record("SchedulingPolicy", pid);
    let filters: HashSet<String> = match rec {
        Some(r) => r
            .list("filters")
            .into_iter()
            .filter_map(unit_name)
            .map(str::to_string)
            .collect(),
        None => builtin
            .map(|b| {
                b.filters
                    .iter()
                    .filter_map(|u| unit_name(u))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let factor = |u: &str| {
        builtin
            .and_then(|b| b.weights.iter().find(|(x, _)| x == u).map(|(_, f)| *f))
            .unwrap_or(1)
    };
    let weights: Vec<(String, i64)> = match rec {
        Some(r) => r
            .list("weight")
            .into_iter()
            .filter_map(|u| unit_name(u).map(|n| (n.to_string(), factor(u))))
            .collect(),
        None => builtin
            .map(|b| {
                b.weights
                    .iter()
                    .filter_map(|(u, f)| unit_name(u).map(|n| (n.to_string(), *f)))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Active { filters, weights }
}

/// A weight's view of a host (lower is better).
type Key<'a> = Box<dyn Fn(&Host, u64) -> i64 + 'a>;

/// Orders the candidates (host, scheduling memory) by the policy's weights and the
/// affinity penalties: each weight ranks the hosts (0 = best) times its factor; a
/// broken soft affinity rule counts the affinity weight's factor times the number of
/// hosts (it outweighs the others, as oVirt's large affinity factors do).
pub fn weigh(
    inv: &Inventory,
    a: &Active,
    candidates: &mut Vec<(&Host, u64)>,
    penalty: &HashMap<String, u32>,
) {
    let n = candidates.len() as i64;
    // Scores by position in `candidates` (no map lookups in the sorts: a start at
    // 1,000 hosts weighs every one of them).
    let mut score: Vec<i64> = vec![0; candidates.len()];
    let guests = |h: &Host| inv.vms_on(&h.id).filter(|v| v.status != "down").count() as i64;
    for (unit, factor) in &a.weights {
        let key: Option<Key> = match unit.as_str() {
            "OptimalForMemoryEvenDistribution" => Some(Box::new(|_, free| -(free as i64 >> 20))),
            "OptimalForMemoryPowerSaving" => Some(Box::new(|_, free| free as i64 >> 20)),
            "OptimalForEvenGuestDistribution" => Some(Box::new(|h, _| guests(h))),
            "OptimalForCpuEvenDistribution" => Some(Box::new(|h, _| -(h.cpu_idle * 100.0) as i64)),
            "OptimalForCpuPowerSaving" => Some(Box::new(|h, _| (h.cpu_idle * 100.0) as i64)),
            _ => None,
        };
        let Some(key) = key else { continue };
        let mut order: Vec<(i64, usize)> = candidates
            .iter()
            .enumerate()
            .map(|(i, (h, f))| (key(h, *f), i))
            .collect();
        order.sort_unstable();
        let mut rank = 0i64;
        for (i, (k, at)) in order.iter().enumerate() {
            if i > 0 && order[i - 1].0 != *k {
                rank = i as i64;
            }
            score[*at] += rank * factor;
        }
    }
    let affinity_factor = a
        .weights
        .iter()
        .filter(|(u, _)| u == "VmAffinityGroups" || u == "VmToHostsAffinityGroups")
        .map(|(_, f)| *f)
        .max()
        .unwrap_or(0);
    if !penalty.is_empty() {
        for (i, (h, _)) in candidates.iter().enumerate() {
            if let Some(p) = penalty.get(&h.id) {
                score[i] += i64::from(*p) * affinity_factor.max(1) * n.max(1) * 100;
            }
        }
    }
    let mut ranked: Vec<(i64, (&Host, u64))> =
        score.into_iter().zip(candidates.drain(..)).collect();
    ranked.sort_by(|(sx, x), (sy, y)| sx.cmp(sy).then(y.1.cmp(&x.1)).then(x.0.name.cmp(&y.0.name)));
    candidates.extend(ranked.into_iter().map(|(_, c)| c));
}

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
    a: &Active,
    candidates: &mut Vec<String>,
) -> Result<HashMap<String, u32>, Refusal> {
    let hard_vms = a.filters.contains("VmAffinityGroups");
    let soft_vms = a.weights.iter().any(|(u, _)| u == "VmAffinityGroups");
    let hard_hosts = a.filters.contains("VmToHostsAffinityGroups");
    let soft_hosts = a
        .weights
        .iter()
        .any(|(u, _)| u == "VmToHostsAffinityGroups");
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
                if (r.enforcing && !hard_vms) || (!r.enforcing && !soft_vms) {
                    // The cluster's policy does not run this unit.
                } else if r.enforcing {
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
            if (r.enforcing && !hard_hosts) || (!r.enforcing && !soft_hosts) {
                // The cluster's policy does not run this unit.
            } else if r.enforcing {
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
