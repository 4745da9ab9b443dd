//! Answers checked against oVirt's API model: every element of a document is a member
//! of the model type its service answers with (shared by the tests that read answers).

use halyard_manager::api::model::model;
use halyard_manager::api::node::Node;

/// What a document of model type `ty` has that its type does not: elements that are
/// no member of it (at any depth; `<link>` and `<actions>` are the API's own).
fn unknown_elements(n: &Node, ty: &str, at: &str, out: &mut Vec<String>) {
    let Some(members) = model().members(ty) else {
        return;
    };
    for c in &n.children {
        let name = c.name.as_str();
        if name == "link" || name == "actions" {
            continue;
        }
        let here = format!("{at}/{name}");
        match members.iter().find(|m| m.name == name) {
            None => out.push(format!("{here}: not a member of {ty}")),
            Some(m) if m.list => {
                for item in c.children.iter().filter(|i| i.name != "link") {
                    unknown_elements(item, &m.ty, &format!("{here}/{}", item.name), out);
                }
            }
            Some(m) => unknown_elements(c, &m.ty, &here, out),
        }
    }
}

/// A GET answer checked against the model type its service answers with (an item's
/// type, or a collection's items).
pub fn conforms(path: &str, doc: &Node) -> Vec<String> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = Vec::new();
    let Some(r) = model().resolve(&segs) else {
        return out;
    };
    let at = format!("GET {path} <{}>", doc.name);
    match (&r.service.list, &r.service.get) {
        (Some((tag, item)), _) if doc.name == tag.as_str() => {
            for c in &doc.children {
                unknown_elements(c, item, &at, &mut out);
            }
        }
        (_, Some(ty)) => unknown_elements(doc, ty, &at, &mut out),
        _ => {}
    }
    out
}
