//! Affinity labels and affinity groups as documents (their effect is the scheduler's:
//! `crate::scheduling`).

use super::handlers::ApiError;
use super::node::Node;
use crate::model::*;

pub fn check_label(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    if doc.get("read_only").is_none() {
        doc.push(Node::leaf("read_only", false));
    }
    Ok(())
}

fn rule(doc: &Node, name: &str, enabled: bool, positive: bool, enforcing: bool) -> Node {
    let given = doc.get(name);
    let flag = |k: &str, d: bool| {
        given
            .and_then(|g| g.text_of(k))
            .map(|v| v == "true")
            .unwrap_or(d)
    };
    Node::new(name.to_string())
        .with(Node::leaf("enabled", flag("enabled", enabled)))
        .with(Node::leaf("enforcing", flag("enforcing", enforcing)))
        .with(Node::leaf("positive", flag("positive", positive)))
}

/// An affinity group: its VMs and hosts belong to its cluster; the rules are complete
/// (oVirt's defaults: the VM rule from the group's `positive`/`enforcing`, the host
/// rule off).
pub fn check_group(inv: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let cluster = doc
        .get("cluster")
        .and_then(|c| c.attr_of("id"))
        .unwrap_or("")
        .to_string();
    for v in doc.get("vms").map(|l| l.children.as_slice()).unwrap_or(&[]) {
        let id = v.attr_of("id").unwrap_or("");
        if inv.vms.get(id).is_some_and(|x| x.cluster != cluster) {
            return Err(ApiError::bad(format!(
                "Cannot add Affinity Group: VM {id} is not in the group's cluster"
            )));
        }
    }
    for h in doc
        .get("hosts")
        .map(|l| l.children.as_slice())
        .unwrap_or(&[])
    {
        let id = h.attr_of("id").unwrap_or("");
        if inv.hosts.get(id).is_some_and(|x| x.cluster != cluster) {
            return Err(ApiError::bad(format!(
                "Cannot add Affinity Group: host {id} is not in the group's cluster"
            )));
        }
    }
    let flag = |k: &str, d: bool| doc.text_of(k).map(|v| v == "true").unwrap_or(d);
    let positive = flag("positive", true);
    let enforcing = flag("enforcing", false);
    let vms_rule = rule(doc, "vms_rule", true, positive, enforcing);
    let hosts_rule = rule(doc, "hosts_rule", false, true, false);
    let p = vms_rule.text_of("positive") == Some("true");
    let e = vms_rule.text_of("enforcing") == Some("true");
    doc.children.retain(|c| {
        !matches!(
            c.name.as_str(),
            "vms_rule" | "hosts_rule" | "positive" | "enforcing"
        )
    });
    doc.push(Node::leaf("positive", p));
    doc.push(Node::leaf("enforcing", e));
    doc.push(vms_rule);
    doc.push(hosts_rule);
    if doc.get("priority").is_none() {
        doc.push(Node::leaf("priority", 1));
    }
    Ok(())
}
