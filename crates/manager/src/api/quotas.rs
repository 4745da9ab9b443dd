//! Quotas of a data center (audit mode: what the VMs and disks use is accounted and
//! shown against the limits; going over is an event, nothing is refused).

use super::handlers::ApiError;
use super::node::Node;
use crate::model::*;

fn pct(doc: &mut Node, k: &str, default: i64) -> Result<(), ApiError> {
    match doc.text_of(k).map(|v| v.parse::<i64>()) {
        None => doc.push(Node::leaf(k, default)),
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
