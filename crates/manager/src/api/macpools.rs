//! MAC pools: the ranges a cluster's VM NICs take their addresses from (oVirt's
//! `macpools`; a cluster points to one, the Default pool when it names none).
//! Addresses are unique across the pool unless the pool allows duplicates.

use super::handlers::ApiError;
use super::node::Node;
use crate::model::*;

/// oVirt's Default MAC pool (predefined, not removable).
pub const DEFAULT_POOL: &str = "58ca604b-017d-0374-0220-00000000014e";

/// The Default pool's range: oVirt's 56:6f:.. prefix.
const DEFAULT_RANGE: (&str, &str) = ("56:6f:00:00:00:00", "56:6f:ff:ff:ff:ff");

pub fn builtins() -> Vec<(&'static str, String, String)> {
    vec![(
        "MacPool",
        DEFAULT_POOL.to_string(),
        format!(
            "<mac_pool><name>Default</name><description>Default MAC pool</description><allow_duplicates>false</allow_duplicates><default_pool>true</default_pool><ranges><range><from>{}</from><to>{}</to></range></ranges></mac_pool>",
            DEFAULT_RANGE.0, DEFAULT_RANGE.1
        ),
    )]
}

/// `aa:bb:cc:dd:ee:ff` as a number.
pub fn parse_mac(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut v = 0u64;
    for p in parts {
        if p.len() != 2 {
            return None;
        }
        v = (v << 8) | u64::from(u8::from_str_radix(p, 16).ok()?);
    }
    Some(v)
}

pub fn format_mac(v: u64) -> String {
    let b = v.to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

/// The ranges of a pool document, checked.
fn ranges_of(doc: &Node) -> Result<Vec<(u64, u64)>, ApiError> {
    let mut out = Vec::new();
    for r in doc
        .get("ranges")
        .map(|l| l.children.as_slice())
        .unwrap_or(&[])
    {
        let from = r.text_of("from").and_then(parse_mac);
        let to = r.text_of("to").and_then(parse_mac);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(ApiError::bad(
                "a MAC pool range needs <from> and <to> MAC addresses (aa:bb:cc:dd:ee:ff)",
            ));
        };
        if from > to {
            return Err(ApiError::bad(format!(
                "MAC pool range {} - {}: the start is after the end",
                format_mac(from),
                format_mac(to)
            )));
        }
        if from >> 40 & 1 == 1 {
            return Err(ApiError::bad(format!(
                "MAC pool range {}: multicast addresses cannot be given to NICs",
                format_mac(from)
            )));
        }
        out.push((from, to));
    }
    Ok(out)
}

pub fn check(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let ranges = ranges_of(doc)?;
    if ranges.is_empty() {
        return Err(ApiError::bad("a MAC pool needs at least one range"));
    }
    // Addresses are written in lower case, as the NICs show them.
    if let Some(l) = doc.children.iter_mut().find(|c| c.name == "ranges") {
        for r in &mut l.children {
            for c in &mut r.children {
                if let Some(t) = &mut c.text {
                    *t = t.to_ascii_lowercase();
                }
            }
        }
    }
    if doc.get("allow_duplicates").is_none() {
        doc.push(Node::leaf("allow_duplicates", false));
    }
    doc.children.retain(|c| c.name != "default_pool");
    doc.push(Node::leaf("default_pool", false));
    Ok(())
}

pub fn in_use(inv: &Inventory, r: &Record) -> Option<String> {
    inv.clusters
        .values()
        .find(|c| pool_id(c) == r.id)
        .map(|c| format!("cluster {} uses it", c.name))
}

/// The pool a cluster's NICs take addresses from.
pub fn pool_id(c: &Cluster) -> &str {
    if c.mac_pool.is_empty() {
        DEFAULT_POOL
    } else {
        &c.mac_pool
    }
}

/// A MAC for a new NIC of a VM in `cluster`: `asked` if given (it must be free
/// unless the pool allows duplicates), else a free address of the pool's ranges
/// (starting from one derived from the NIC id, so addresses spread).
pub fn allocate(
    inv: &Inventory,
    cluster: &str,
    asked: Option<&str>,
    nic_id: &str,
) -> Result<String, ApiError> {
    let c = inv
        .clusters
        .get(cluster)
        .ok_or_else(|| ApiError::not_found(format!("Cluster {cluster} not found")))?;
    let pool_id = pool_id(c);
    let pool = inv.record("MacPool", pool_id).ok_or_else(|| {
        ApiError::conflict(format!(
            "MAC pool {pool_id} of cluster {} not found",
            c.name
        ))
    })?;
    let dup_ok = pool.flag("allow_duplicates");
    // Every NIC's address counts (an index kept as NICs change): an address is never
    // given twice, whichever pool it came from.
    let used = |v: u64| inv.macs.contains_key(&v);
    if let Some(a) = asked {
        let v = parse_mac(a).ok_or_else(|| ApiError::bad(format!("invalid MAC address {a:?}")))?;
        if used(v) && !dup_ok {
            return Err(ApiError::conflict(format!(
                "Cannot add Interface. MAC Address {} is already in use (MAC pool {:?} does not allow duplicates).",
                format_mac(v),
                pool.name()
            )));
        }
        return Ok(format_mac(v));
    }
    let ranges = ranges_of(&pool.doc)?;
    let seed = parse_mac(&crate::vms::mac_for(nic_id)).unwrap_or(0);
    for (from, to) in &ranges {
        let size = to - from + 1;
        let start = from + seed % size;
        // From the derived address to the end of the range, then from its start.
        let mut v = start;
        for _ in 0..size.min(1 << 20) {
            if !used(v) {
                return Ok(format_mac(v));
            }
            v = if v == *to { *from } else { v + 1 };
        }
    }
    Err(ApiError::conflict(format!(
        "Cannot add Interface. Not enough MAC addresses left in MAC pool {:?}.",
        pool.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let v = parse_mac("56:6f:0a:0B:0c:ff").expect("mac");
        assert_eq!(format_mac(v), "56:6f:0a:0b:0c:ff");
        assert!(parse_mac("56:6f:0a:0b:0c").is_none());
        assert!(parse_mac("56:6f:0a:0b:0c:zz").is_none());
        assert!(parse_mac("56:6f:0a:0b:0c:0:1").is_none());
    }
}
