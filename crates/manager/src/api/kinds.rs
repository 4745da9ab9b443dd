//! The declared collections (see `records`): one [`Kind`] each — where it lives, what
//! it is listed under, what an add and an update act on, what it must have — and the
//! rules that check a document before it is kept. oVirt's predefined objects (roles,
//! the default MAC pool, the internal domain and its admin user) and its catalogues
//! (permits) are here too.

use super::handlers::ApiError;
use super::node::Node;
use super::records::{self, Effects, Home, Kind, Rules, PLAIN};
use crate::model::*;
use crate::state::Manager;

macro_rules! acts {
    ($($x:literal),* $(,)?) => { &["name", "description", "comment", "id", $($x),*] };
}

/// Every declared collection.
pub static KINDS: &[Kind] = &[
    Kind {
        ty: "Bookmark",
        home: Home::Top("bookmarks"),
        under: &[],
        add: acts!["value"],
        update: acts!["value"],
        required: &["name", "value"],
        unique_in: "",
        search: &[],
        rules: PLAIN,
        effects: Effects::None,
    },
    Kind {
        ty: "MacPool",
        home: Home::Top("macpools"),
        under: &[],
        add: acts!["allow_duplicates", "ranges"],
        update: acts!["allow_duplicates", "ranges"],
        required: &["name", "ranges"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::macpools::check,
            in_use: crate::api::macpools::in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "VnicProfile",
        home: Home::Top("vnicprofiles"),
        under: &[("networks", "network")],
        add: acts!["network", "port_mirroring", "migratable", "pass_through"],
        update: acts!["port_mirroring", "migratable", "pass_through"],
        required: &["name", "network"],
        unique_in: "network",
        search: &[],
        rules: Rules {
            check: no_check,
            in_use: vnic_profile_in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "AffinityLabel",
        home: Home::Top("affinitylabels"),
        under: &[("vms", "vms"), ("hosts", "hosts")],
        add: acts!["vms", "hosts"],
        update: acts!["vms", "hosts"],
        required: &["name"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::affinity::check_label,
            in_use: never,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "AffinityGroup",
        home: Home::Under("cluster", "affinitygroups"),
        under: &[("clusters", "cluster")],
        add: acts![
            "cluster",
            "positive",
            "enforcing",
            "vms_rule",
            "hosts_rule",
            "priority",
            "vms",
            "hosts",
            "vm_labels",
            "host_labels",
        ],
        update: acts![
            "positive",
            "enforcing",
            "vms_rule",
            "hosts_rule",
            "priority",
            "vms",
            "hosts",
            "vm_labels",
            "host_labels",
        ],
        required: &["name", "cluster"],
        unique_in: "cluster",
        search: &[],
        rules: Rules {
            check: crate::api::affinity::check_group,
            in_use: never,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "Role",
        home: Home::Top("roles"),
        under: &[],
        add: acts!["administrative", "permits", "mutable"],
        update: acts!["administrative", "permits"],
        required: &["name", "permits"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::access::check_role,
            in_use: crate::api::access::role_in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "Permission",
        home: Home::Top("permissions"),
        under: &[
            ("vms", "vm"),
            ("hosts", "host"),
            ("clusters", "cluster"),
            ("datacenters", "data_center"),
            ("storagedomains", "storage_domain"),
            ("templates", "template"),
            ("disks", "disk"),
            ("vmpools", "vm_pool"),
            ("networks", "network"),
            ("users", "user"),
            ("groups", "group"),
        ],
        add: &[
            "id",
            "role",
            "user",
            "group",
            "data_center",
            "cluster",
            "host",
            "storage_domain",
            "vm",
            "vm_pool",
            "template",
            "disk",
            "network",
        ],
        update: &[],
        required: &["role"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::access::check_permission,
            in_use: never,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "User",
        home: Home::Top("users"),
        under: &[("domains", "domain")],
        add: &[
            "user_name",
            "principal",
            "domain",
            "namespace",
            "domain_entry_id",
            "id",
        ],
        update: &[],
        required: &["user_name"],
        unique_in: "",
        search: &[("usrname", "user_name")],
        rules: Rules {
            check: crate::api::access::check_user,
            in_use: crate::api::access::user_in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "Group",
        home: Home::Top("groups"),
        under: &[("domains", "domain")],
        add: &["name", "domain", "namespace", "domain_entry_id", "id"],
        update: &[],
        required: &["name"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::access::check_group,
            in_use: never,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "SshPublicKey",
        home: Home::Under("user", "sshpublickeys"),
        under: &[("users", "user")],
        add: &["content", "user"],
        update: &["content"],
        required: &["content", "user"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::access::check_ssh_key,
            in_use: never,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "Domain",
        home: Home::Top("domains"),
        under: &[],
        add: &[],
        update: &[],
        required: &[],
        unique_in: "",
        search: &[],
        rules: PLAIN,
        effects: Effects::None,
    },
    Kind {
        ty: "Quota",
        home: Home::Under("data_center", "quotas"),
        under: &[("datacenters", "data_center")],
        add: acts![
            "data_center",
            "cluster_soft_limit_pct",
            "cluster_hard_limit_pct",
            "storage_soft_limit_pct",
            "storage_hard_limit_pct",
        ],
        update: acts![
            "cluster_soft_limit_pct",
            "cluster_hard_limit_pct",
            "storage_soft_limit_pct",
            "storage_hard_limit_pct",
        ],
        required: &["name", "data_center"],
        unique_in: "data_center",
        search: &[],
        rules: Rules {
            check: crate::api::quotas::check_quota,
            in_use: crate::api::quotas::in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "QuotaClusterLimit",
        home: Home::Under("quota", "quotaclusterlimits"),
        under: &[("quotas", "quota")],
        add: &[
            "id",
            "name",
            "description",
            "quota",
            "cluster",
            "vcpu_limit",
            "memory_limit",
        ],
        update: &["vcpu_limit", "memory_limit"],
        required: &["quota"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::quotas::check_cluster_limit,
            in_use: never,
            show: Some(crate::api::quotas::show_cluster_limit),
        },
        effects: Effects::None,
    },
    Kind {
        ty: "QuotaStorageLimit",
        home: Home::Under("quota", "quotastoragelimits"),
        under: &[("quotas", "quota")],
        add: &[
            "id",
            "name",
            "description",
            "quota",
            "storage_domain",
            "limit",
        ],
        update: &["limit"],
        required: &["quota"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::quotas::check_storage_limit,
            in_use: never,
            show: Some(crate::api::quotas::show_storage_limit),
        },
        effects: Effects::None,
    },
    Kind {
        ty: "InstanceType",
        home: Home::Top("instancetypes"),
        under: &[],
        add: acts![
            "memory",
            "cpu/topology",
            "high_availability/enabled",
            "high_availability/priority"
        ],
        update: acts![
            "memory",
            "cpu/topology",
            "high_availability/enabled",
            "high_availability/priority"
        ],
        required: &["name"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: instance_type,
            in_use: instance_type_in_use,
            show: None,
        },
        effects: Effects::None,
    },
    Kind {
        ty: "Qos",
        home: Home::Under("data_center", "qoss"),
        under: &[("datacenters", "data_center")],
        add: acts![
            "data_center",
            "type",
            "max_throughput",
            "max_read_throughput",
            "max_write_throughput",
            "max_iops",
            "max_read_iops",
            "max_write_iops",
            "cpu_limit",
            "inbound_average",
            "inbound_peak",
            "inbound_burst",
            "outbound_average",
            "outbound_peak",
            "outbound_burst",
            "outbound_average_linkshare",
            "outbound_average_upperlimit",
            "outbound_average_realtime",
        ],
        update: acts![
            "max_throughput",
            "max_read_throughput",
            "max_write_throughput",
            "max_iops",
            "max_read_iops",
            "max_write_iops",
            "cpu_limit",
            "inbound_average",
            "inbound_peak",
            "inbound_burst",
            "outbound_average",
            "outbound_peak",
            "outbound_burst",
            "outbound_average_linkshare",
            "outbound_average_upperlimit",
            "outbound_average_realtime",
        ],
        required: &["name", "type", "data_center"],
        unique_in: "data_center",
        search: &[],
        rules: PLAIN,
        effects: Effects::None,
    },
    Kind {
        ty: "CpuProfile",
        home: Home::Top("cpuprofiles"),
        under: &[("clusters", "cluster")],
        add: acts!["cluster", "qos"],
        update: acts!["qos"],
        required: &["name", "cluster"],
        unique_in: "cluster",
        search: &[],
        rules: PLAIN,
        effects: Effects::None,
    },
    Kind {
        ty: "DiskProfile",
        home: Home::Top("diskprofiles"),
        under: &[("storagedomains", "storage_domain")],
        add: acts!["storage_domain", "qos"],
        update: acts!["qos"],
        required: &["name", "storage_domain"],
        unique_in: "storage_domain",
        search: &[],
        rules: PLAIN,
        effects: Effects::None,
    },
    Kind {
        ty: "VmPool",
        home: Home::Top("vmpools"),
        under: &[],
        add: acts![
            "cluster",
            "template",
            "size",
            "max_user_vms",
            "type",
            "stateful",
            "prestarted_vms"
        ],
        update: acts!["size", "max_user_vms", "prestarted_vms"],
        required: &["name", "cluster", "template"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: crate::api::vmpools::check,
            in_use: crate::api::vmpools::running,
            show: None,
        },
        effects: Effects::VmPool,
    },
    Kind {
        ty: "SchedulingPolicy",
        home: Home::Top("schedulingpolicies"),
        under: &[],
        add: acts!["filters", "weight", "balances"],
        update: acts!["filters", "weight", "balances"],
        required: &["name"],
        unique_in: "",
        search: &[],
        rules: Rules {
            check: scheduling_policy,
            in_use: scheduling_policy_in_use,
            show: None,
        },
        effects: Effects::None,
    },
];

/// A policy of one's own is never locked nor the default.
fn scheduling_policy(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    doc.children
        .retain(|c| c.name != "locked" && c.name != "default_policy");
    doc.push(Node::leaf("locked", false));
    doc.push(Node::leaf("default_policy", false));
    if doc.get("balances").is_some_and(|b| b.children.len() > 1) {
        return Err(ApiError::bad(
            "a scheduling policy has at most one balance unit",
        ));
    }
    Ok(())
}

fn scheduling_policy_in_use(inv: &Inventory, r: &Record) -> Option<String> {
    inv.clusters
        .values()
        .find(|c| c.scheduling_policy == r.id)
        .map(|c| format!("cluster {} uses it", c.name))
}

fn no_check(_: &Inventory, _: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    Ok(())
}
fn never(_: &Inventory, _: &Record) -> Option<String> {
    None
}

/// An instance type's sizes are ones a VM can have.
fn instance_type(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let num = |path: &[&str]| -> Option<i64> {
        let mut n = &*doc;
        for p in path {
            n = n.get(p)?;
        }
        n.text.as_deref()?.parse().ok()
    };
    if let Some(m) = num(&["memory"]) {
        if !(1 << 20..=4 << 40).contains(&m) {
            return Err(ApiError::bad("<memory>: from 1 MiB to 4 TiB, in bytes"));
        }
    }
    if let Some(p) = num(&["high_availability", "priority"]) {
        if !(0..=100).contains(&p) {
            return Err(ApiError::bad(
                "<high_availability><priority>: from 0 to 100",
            ));
        }
    }
    for k in ["sockets", "cores", "threads"] {
        if let Some(v) = num(&["cpu", "topology", k]) {
            if !(1..=256).contains(&v) {
                return Err(ApiError::bad(format!(
                    "<cpu><topology><{k}>: from 1 to 256"
                )));
            }
        }
    }
    Ok(())
}

fn instance_type_in_use(inv: &Inventory, r: &Record) -> Option<String> {
    inv.vms
        .values()
        .find(|v| v.instance_type.as_deref() == Some(r.id.as_str()))
        .map(|v| format!("VM {} was made with it", v.name))
}

fn vnic_profile_in_use(inv: &Inventory, r: &Record) -> Option<String> {
    inv.nics
        .values()
        .find(|n| n.vnic_profile.as_deref() == Some(r.id.as_str()))
        .map(|n| format!("VM NIC {} uses it", n.name))
}

/// An entry of a fixed catalogue (permits).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub administrative: bool,
}

/// The catalogue of a model type whose objects are fixed, if it has one: permits,
/// and the scheduling policy units (all, or those a policy may use as its filters,
/// weights or balances).
pub fn catalogue(ty: &str) -> Option<&'static [Entry]> {
    static UNITS: std::sync::OnceLock<[Vec<Entry>; 4]> = std::sync::OnceLock::new();
    let units = UNITS.get_or_init(|| {
        let of = |kind: Option<&str>| -> Vec<Entry> {
            crate::scheduling::units()
                .iter()
                .filter(|u| kind.is_none_or(|k| u.kind == k))
                .map(|u| Entry {
                    id: u.id.clone(),
                    name: u.name.clone(),
                    administrative: false,
                })
                .collect()
        };
        [
            of(None),
            of(Some("filter")),
            of(Some("weight")),
            of(Some("load_balancing")),
        ]
    });
    match ty {
        "Permit" => Some(crate::api::access::permits()),
        "SchedulingPolicyUnit" => Some(&units[0]),
        "Filter" => Some(&units[1]),
        "Weight" => Some(&units[2]),
        "Balance" => Some(&units[3]),
        _ => None,
    }
}

/// oVirt's built-in scheduling policies (locked).
pub fn policy_builtins() -> Vec<(&'static str, String, String)> {
    crate::scheduling::policies()
        .iter()
        .map(|p| {
            let list = |tag: &str, ids: &mut dyn Iterator<Item = &String>| -> String {
                ids.map(|u| format!("<{tag} id=\"{u}\"/>")).collect()
            };
            let filters = list("filter", &mut p.filters.iter());
            let weights = list("weight", &mut p.weights.iter().map(|(u, _)| u));
            let balances = list("balance", &mut p.balances.iter());
            (
                "SchedulingPolicy",
                p.id.clone(),
                format!(
                    "<scheduling_policy><name>{}</name><locked>true</locked><default_policy>{}</default_policy><filters>{filters}</filters><weight>{weights}</weight><balances>{balances}</balances></scheduling_policy>",
                    p.name, p.default
                ),
            )
        })
        .collect()
}

/// Seeds oVirt's predefined objects that are missing (they cannot be removed, so
/// a missing one was never made).
pub async fn seed(m: &Manager) -> anyhow::Result<()> {
    for (ty, id, doc) in crate::api::access::builtins()
        .into_iter()
        .chain(crate::api::macpools::builtins())
        .chain(policy_builtins())
    {
        // One at a time: a later one may point to an earlier one.
        let rec = {
            let inv = m.read();
            if inv.records.contains_key(&id) {
                continue;
            }
            records::builtin(&inv, ty, &id, &doc)
        };
        match rec {
            Some(r) => m.insert(&r).await?,
            None => anyhow::bail!("the predefined {ty} {id} does not fit the model"),
        }
    }
    Ok(())
}

/// A new object's companions, as oVirt makes them: a network's vNIC profile of the
/// same name, a cluster's CPU profile, a storage domain's disk profile.
pub async fn companions(m: &Manager, ty: &str, id: &str) -> anyhow::Result<()> {
    let (kind, member, name) = {
        let inv = m.read();
        match ty {
            "Network" => (
                "VnicProfile",
                "network",
                inv.networks.get(id).map(|x| x.name.clone()),
            ),
            "Cluster" => (
                "CpuProfile",
                "cluster",
                inv.clusters.get(id).map(|x| x.name.clone()),
            ),
            "StorageDomain" => (
                "DiskProfile",
                "storage_domain",
                inv.storage_domains.get(id).map(|x| x.name.clone()),
            ),
            _ => return Ok(()),
        }
    };
    let Some(name) = name else { return Ok(()) };
    let rec = {
        let inv = m.read();
        let doc = Node::new("x")
            .with(Node::leaf("name", &name))
            .with(Node::new(member).attr("id", id));
        let doc = records::normalise(&inv, kind, &doc).map_err(|e| anyhow::anyhow!(e.detail))?;
        Record {
            id: uuid::Uuid::new_v4().to_string(),
            ty: kind.into(),
            doc,
            builtin: false,
        }
    };
    m.insert(&rec).await
}

/// After object `id` is gone: removes the records that cannot live without it (those
/// pointing to it by a required or a parent member: its profiles, its permissions, its
/// quotas' limits) and takes it out of the lists of the others (label and group
/// members, role permits).
pub async fn orphans(m: &Manager, id: &str) -> anyhow::Result<()> {
    let mut work = vec![id.to_string()];
    while let Some(id) = work.pop() {
        let (gone, changed) = dependants(&m.read(), &id);
        for r in gone {
            if m.remove_only::<Record>(&r).await?.is_some() {
                work.push(r);
            }
        }
        for (r, doc) in changed {
            m.update(&r, |x: &mut Record| x.doc = doc).await?;
        }
    }
    Ok(())
}

/// The records that go with `id`, and the new documents of those that only lose a
/// reference to it.
fn dependants(inv: &Inventory, id: &str) -> (Vec<String>, Vec<(String, Node)>) {
    let mut gone = Vec::new();
    let mut changed = Vec::new();
    for r in inv.records.values() {
        let Some(k) = records::kind(&r.ty) else {
            continue;
        };
        let needs = k
            .required
            .iter()
            .chain(k.under.iter().map(|(_, mm)| mm))
            .any(|mm| r.link(mm) == Some(id));
        if needs {
            gone.push(r.id.clone());
            continue;
        }
        let mut doc = r.doc.clone();
        let before = doc.children.len();
        doc.children.retain(|c| c.attr_of("id") != Some(id));
        let mut touched = before != doc.children.len();
        for c in &mut doc.children {
            let before = c.children.len();
            c.children.retain(|i| i.attr_of("id") != Some(id));
            touched |= before != c.children.len();
        }
        if touched {
            changed.push((r.id.clone(), doc));
        }
    }
    (gone, changed)
}
