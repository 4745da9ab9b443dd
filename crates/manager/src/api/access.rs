//! Users, groups, roles, permits and permissions as oVirt's API has them: the objects
//! and the assignments are real and stored; who may do what is not enforced yet (every
//! caller is admin@internal, the only user the Manager authenticates).
//!
//! The directory behind the `internal-authz` domain is the Manager's own user store:
//! a user can be added to the API only if it exists there; groups do not exist there.

use super::handlers::ApiError;
use super::kinds::Entry;
use super::node::Node;
use crate::model::*;

/// The internal authorization domain (oVirt's `internal-authz`).
pub const INTERNAL_DOMAIN: &str = "internal-authz";
/// Its id, as oVirt's API shows it (the domain name's hex).
pub const INTERNAL_DOMAIN_ID: &str = "696E7465726E616C2D617574687A";
/// admin@internal, as oVirt's API shows it.
pub const ADMIN_USER_ID: &str = "fdfc627c-d875-11e0-90f0-83df133b58cc";
pub const SUPER_USER_ROLE: &str = "00000000-0000-0000-0000-000000000001";

/// oVirt's permits and predefined roles, as facts (see the file's header).
const FACTS: &str = include_str!("model/access.txt");

/// A predefined role.
#[derive(Debug, Clone)]
pub struct PredefinedRole {
    pub id: String,
    pub name: String,
    pub administrative: bool,
    pub description: String,
    pub permits: Vec<String>,
}

struct Facts {
    permits: Vec<Entry>,
    roles: Vec<PredefinedRole>,
}

fn facts() -> &'static Facts {
    static F: std::sync::OnceLock<Facts> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let mut f = Facts {
            permits: Vec::new(),
            roles: Vec::new(),
        };
        for line in FACTS.lines().filter(|l| !l.starts_with('#')) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["permit", id, name, kind] => f.permits.push(Entry {
                    id: id.to_string(),
                    name: name.to_string(),
                    administrative: *kind == "admin",
                }),
                ["role", id, name, kind, _mutable, desc @ ..] => f.roles.push(PredefinedRole {
                    id: id.to_string(),
                    name: name.to_string(),
                    administrative: *kind == "admin",
                    description: desc.join(" "),
                    permits: Vec::new(),
                }),
                ["role_permits", name, ids @ ..] => {
                    if let Some(r) = f.roles.iter_mut().find(|r| r.name == *name) {
                        r.permits = ids.iter().map(|s| s.to_string()).collect();
                    }
                }
                _ => {}
            }
        }
        f
    })
}

/// oVirt's action groups, as the API's permits.
pub fn permits() -> &'static [Entry] {
    &facts().permits
}

/// oVirt's predefined roles.
pub fn roles() -> &'static [PredefinedRole] {
    &facts().roles
}

/// A permit shown (under a role, or in a cluster level).
pub fn permit(e: &Entry, href: &str) -> Node {
    let n = Node::new("permit");
    let n = if href.is_empty() {
        n
    } else {
        n.attr("href", href)
    };
    n.attr("id", &e.id)
        .with(Node::leaf("name", &e.name))
        .with(Node::leaf("administrative", e.administrative))
}

/// The predefined records: the internal domain, admin@internal, the roles, and
/// admin@internal's SuperUser permission on the system.
pub fn builtins() -> Vec<(&'static str, String, String)> {
    let mut out = vec![
        (
            "Domain",
            INTERNAL_DOMAIN_ID.to_string(),
            format!("<domain><name>{INTERNAL_DOMAIN}</name></domain>"),
        ),
        (
            "User",
            ADMIN_USER_ID.to_string(),
            format!(
                "<user><name>admin</name><user_name>admin@internal-authz</user_name><principal>admin</principal><namespace>*</namespace><domain id=\"{INTERNAL_DOMAIN_ID}\"/><domain_entry_id>{ADMIN_USER_ID}</domain_entry_id></user>"
            ),
        ),
    ];
    for r in roles() {
        let list: String = r
            .permits
            .iter()
            .map(|p| format!("<permit id=\"{p}\"/>"))
            .collect();
        let desc = r
            .description
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        out.push((
            "Role",
            r.id.clone(),
            format!(
                "<role><name>{}</name><description>{desc}</description><administrative>{}</administrative><mutable>false</mutable><permits>{list}</permits></role>",
                r.name, r.administrative
            ),
        ));
    }
    out.push((
        "Permission",
        "00000000-0000-0000-0000-000000000099".to_string(),
        format!(
            "<permission><role id=\"{SUPER_USER_ROLE}\"/><user id=\"{ADMIN_USER_ID}\"/></permission>"
        ),
    ));
    out
}

pub fn check_role(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let admin = doc.text_of("administrative") == Some("true");
    if !admin {
        // A user role holds user permits only (as oVirt's roles do).
        for p in doc
            .get("permits")
            .map(|l| l.children.as_slice())
            .unwrap_or(&[])
        {
            let id = p.attr_of("id").unwrap_or("");
            if let Some(e) = permits().iter().find(|e| e.id == id && e.administrative) {
                return Err(ApiError::bad(format!(
                    "Cannot add a user role with the administrative permit {:?}: set <administrative>true</administrative>",
                    e.name
                )));
            }
        }
    }
    doc.children
        .retain(|c| c.name != "mutable" && c.name != "administrative");
    doc.push(Node::leaf("administrative", admin));
    doc.push(Node::leaf("mutable", true));
    Ok(())
}

pub fn role_in_use(inv: &Inventory, r: &Record) -> Option<String> {
    inv.records_of("Permission")
        .find(|p| p.link("role") == Some(r.id.as_str()))
        .map(|_| "a permission gives it".to_string())
}

/// The object kinds a permission can be on (its members).
const OBJECTS: &[&str] = &[
    "data_center",
    "cluster",
    "host",
    "storage_domain",
    "vm",
    "vm_pool",
    "template",
    "disk",
];

pub fn check_permission(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let whom = ["user", "group"]
        .iter()
        .filter(|w| doc.get(w).is_some())
        .count();
    if whom != 1 {
        return Err(ApiError::bad(
            "a permission is given to exactly one <user> or <group>",
        ));
    }
    let on = OBJECTS.iter().filter(|o| doc.get(o).is_some()).count();
    if on > 1 {
        return Err(ApiError::bad("a permission is on one object"));
    }
    Ok(())
}

/// A user is added from the directory: it must exist there (the Manager's user
/// store for `internal-authz`).
pub fn check_user(inv: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let name = doc.text_of("user_name").unwrap_or("").to_string();
    let (user, domain) = match name.rsplit_once('@') {
        Some((u, d)) => (u.to_string(), d.to_string()),
        None => (name.clone(), String::new()),
    };
    let in_domain = doc
        .get("domain")
        .and_then(|d| d.attr_of("id"))
        .map(|d| d == INTERNAL_DOMAIN_ID)
        .unwrap_or(true);
    let known = in_domain
        && matches!(domain.as_str(), "" | "internal" | INTERNAL_DOMAIN)
        && user == "admin";
    if !known {
        return Err(ApiError::not_found(format!(
            "User {name:?} was not found in the directory ({INTERNAL_DOMAIN} holds admin only)"
        )));
    }
    if inv.records.contains_key(ADMIN_USER_ID) {
        return Err(ApiError::conflict(format!(
            "User {name:?} was already added"
        )));
    }
    Ok(())
}

pub fn user_in_use(_: &Inventory, r: &Record) -> Option<String> {
    (r.id == ADMIN_USER_ID).then(|| "it is the Manager's administrator".to_string())
}

/// The directory has no groups.
pub fn check_group(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    Err(ApiError::not_found(format!(
        "Group {:?} was not found in the directory ({INTERNAL_DOMAIN} has no groups)",
        doc.text_of("name").unwrap_or("")
    )))
}
