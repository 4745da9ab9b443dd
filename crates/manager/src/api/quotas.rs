//! Quotas of a data center (audit mode: what the VMs and disks use is accounted and
//! shown against the limits; going over is an event, nothing is refused).

use std::sync::Arc;

use super::handlers::ApiError;
use super::node::Node;
use crate::model::*;
use crate::state::Manager;

/// Halyard's event code for a quota gone over its soft limit (audit mode).
pub const EVENT_QUOTA_EXCEEDED: i64 = 10600;

/// The quota a reference names, in data center `dc` (when known).
pub fn find(inv: &Inventory, q: &Node, dc: Option<&str>) -> Result<String, ApiError> {
    let id = super::records::find_ref(inv, "Quota", q)?;
    let qdc = inv.record("Quota", &id).and_then(|r| r.link("data_center"));
    if dc.is_some() && qdc != dc {
        return Err(ApiError::bad(format!(
            "quota {id} is not a quota of the object's data center"
        )));
    }
    Ok(id)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What the VMs consuming `quota` use in a cluster (all of the quota's clusters when
/// `cluster` is none): (vCPUs, memory GiB) of the running ones, as oVirt counts.
pub fn cluster_usage(inv: &Inventory, quota: &str, cluster: Option<&str>) -> (u64, f64) {
    let mut cpus = 0u64;
    let mut mem = 0u64;
    for v in inv.vms.values().filter(|v| {
        v.quota.as_deref() == Some(quota)
            && v.status != "down"
            && cluster.is_none_or(|c| v.cluster == c)
    }) {
        cpus += u64::from(v.sockets * v.cores * v.threads);
        mem += v.memory;
    }
    (cpus, gib(mem))
}

/// The GiB of the disks consuming `quota` on a domain (every domain when none).
pub fn storage_usage(inv: &Inventory, quota: &str, sd: Option<&str>) -> f64 {
    gib(inv
        .disks
        .values()
        .filter(|d| d.quota.as_deref() == Some(quota) && sd.is_none_or(|s| d.storage_domain == s))
        .map(|d| d.provisioned_size)
        .sum())
}

/// Adds the usage to a limit as it is shown.
pub fn show_cluster_limit(inv: &Inventory, r: &Record, n: &mut Node) {
    let Some(q) = r.link("quota") else { return };
    let (cpus, mem) = cluster_usage(inv, q, r.link("cluster"));
    n.children
        .retain(|c| c.name != "vcpu_usage" && c.name != "memory_usage");
    n.push(Node::leaf("vcpu_usage", cpus));
    n.push(Node::leaf("memory_usage", format!("{mem:.2}")));
}

pub fn show_storage_limit(inv: &Inventory, r: &Record, n: &mut Node) {
    let Some(q) = r.link("quota") else { return };
    let used = storage_usage(inv, q, r.link("storage_domain"));
    n.children.retain(|c| c.name != "usage");
    n.push(Node::leaf("usage", format!("{used:.2}")));
}

/// The limits of `quota` its consumers are over (beyond the soft percentage).
pub fn exceeded(inv: &Inventory, quota: &str) -> Vec<String> {
    let Some(q) = inv.record("Quota", quota) else {
        return Vec::new();
    };
    let pct = |k: &str| {
        q.text(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(80.0)
            / 100.0
    };
    let mut out = Vec::new();
    for l in inv
        .records_of("QuotaClusterLimit")
        .filter(|l| l.link("quota") == Some(quota))
    {
        let (cpus, mem) = cluster_usage(inv, quota, l.link("cluster"));
        let lim = |k: &str| {
            l.text(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let soft = pct("cluster_soft_limit_pct");
        if lim("vcpu_limit") >= 0.0 && cpus as f64 > lim("vcpu_limit") * soft {
            out.push(format!("{cpus} vCPUs of {} allowed", lim("vcpu_limit")));
        }
        if lim("memory_limit") >= 0.0 && mem > lim("memory_limit") * soft {
            out.push(format!(
                "{mem:.2} GiB of memory of {} allowed",
                lim("memory_limit")
            ));
        }
    }
    for l in inv
        .records_of("QuotaStorageLimit")
        .filter(|l| l.link("quota") == Some(quota))
    {
        let used = storage_usage(inv, quota, l.link("storage_domain"));
        let lim = l
            .text("limit")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0);
        if lim >= 0.0 && used > lim * pct("storage_soft_limit_pct") {
            out.push(format!("{used:.2} GiB of storage of {lim} allowed"));
        }
    }
    out
}

/// Audit mode: an event for each limit a consumer of `quota` went over; nothing is
/// refused.
pub async fn audit(m: &Arc<Manager>, quota: &str) {
    let (name, over) = {
        let inv = m.read();
        let name = inv
            .record("Quota", quota)
            .map(|q| q.name().to_string())
            .unwrap_or_default();
        (name, exceeded(&inv, quota))
    };
    for what in over {
        m.event(
            EVENT_QUOTA_EXCEEDED,
            "warning",
            format!("Quota {name} is over its soft limit: {what} (audit mode: not enforced)."),
            None,
            None,
        )
        .await;
    }
}

fn pct(doc: &mut Node, k: &str, default: i64) -> Result<(), ApiError> {
    match doc.text_of(k).map(|v| v.parse::<i64>()) {
        None => doc.push(Node::leaf(k.to_string(), default)),
        Some(Ok(v)) if (0..=100).contains(&v) => {}
        Some(_) => {
            return Err(ApiError::bad(format!(
                "<{k}> is a percentage from 0 to 100"
            )))
        }
    }
    Ok(())
}

pub fn check_quota(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    // oVirt's defaults: soft limits at 80% (an event), grace up to 120%.
    pct(doc, "cluster_soft_limit_pct", 80)?;
    pct(doc, "cluster_hard_limit_pct", 20)?;
    pct(doc, "storage_soft_limit_pct", 80)?;
    pct(doc, "storage_hard_limit_pct", 20)?;
    Ok(())
}

/// `-1` is unlimited; otherwise a non-negative amount.
fn limit(doc: &Node, k: &str) -> Result<(), ApiError> {
    match doc.text_of(k).map(|v| v.parse::<f64>()) {
        None => Ok(()),
        Some(Ok(v)) if v == -1.0 || v >= 0.0 => Ok(()),
        Some(_) => Err(ApiError::bad(format!(
            "<{k}> is -1 (unlimited) or an amount of at least 0"
        ))),
    }
}

fn quota_dc<'a>(inv: &'a Inventory, doc: &Node) -> Option<&'a str> {
    let q = doc.get("quota")?.attr_of("id")?;
    inv.record("Quota", q)?.link("data_center")
}

pub fn check_cluster_limit(
    inv: &Inventory,
    doc: &mut Node,
    _: Option<&Record>,
) -> Result<(), ApiError> {
    limit(doc, "vcpu_limit")?;
    limit(doc, "memory_limit")?;
    if let Some(c) = doc.get("cluster").and_then(|c| c.attr_of("id")) {
        if inv.dc_of_cluster(c) != quota_dc(inv, doc) {
            return Err(ApiError::bad(
                "the cluster of a quota limit belongs to the quota's data center",
            ));
        }
    }
    Ok(())
}

pub fn check_storage_limit(
    inv: &Inventory,
    doc: &mut Node,
    _: Option<&Record>,
) -> Result<(), ApiError> {
    limit(doc, "limit")?;
    if let Some(s) = doc.get("storage_domain").and_then(|c| c.attr_of("id")) {
        let sd_dc = inv
            .storage_domains
            .get(s)
            .and_then(|x| x.data_center.as_deref());
        if sd_dc != quota_dc(inv, doc) {
            return Err(ApiError::bad(
                "the storage domain of a quota limit is attached to the quota's data center",
            ));
        }
    }
    Ok(())
}

/// A quota VMs or disks consume cannot be removed.
pub fn in_use(inv: &Inventory, r: &Record) -> Option<String> {
    if let Some(v) = inv
        .vms
        .values()
        .find(|v| v.quota.as_deref() == Some(r.id.as_str()))
    {
        return Some(format!("VM {} consumes it", v.name));
    }
    inv.disks
        .values()
        .find(|d| d.quota.as_deref() == Some(r.id.as_str()))
        .map(|d| format!("disk {} consumes it", d.name))
}
