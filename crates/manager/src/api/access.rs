//! Users, groups, roles, permits and permissions as oVirt's API has them: the objects
//! and the assignments are real and stored; who may do what is not enforced yet (only
//! users with SuperUser on the system log in: `crate::directory::may_log_in`).
//!
//! Users and groups are added from the Manager's directory (`crate::directory`): only
//! what exists there, once each.

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
pub const OBJECTS: &[&str] = &[
    "data_center",
    "cluster",
    "host",
    "storage_domain",
    "vm",
    "vm_pool",
    "template",
    "disk",
    "network",
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

/// The domain a document names (`<domain id>` after normalising), or the one of
/// `name@domain`.
fn domain_named<'a>(inv: &'a Inventory, doc: &'a Node, qualified: Option<&'a str>) -> &'a str {
    qualified
        .or_else(|| {
            doc.get("domain")
                .and_then(|d| d.attr_of("id"))
                .and_then(|id| inv.records.get(id))
                .and_then(|d| d.text("name"))
        })
        .unwrap_or(INTERNAL_DOMAIN)
}

/// A principal or group name of a document (`name` or `name@domain`, else the
/// document's `<domain>`): (name, profile, authorization domain).
fn directory_name(inv: &Inventory, doc: &Node, name: &str) -> (String, String, String) {
    let (n, qualified) = match name.rsplit_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    let profile = crate::directory::profile_of(domain_named(inv, doc, qualified)).to_string();
    let authz = crate::directory::authz(&profile);
    (n.to_string(), profile, authz)
}

/// The `<domain>` reference of a domain name.
fn domain_ref(inv: &Inventory, authz: &str) -> Node {
    let id = crate::directory::domain_id(authz);
    Node::new("domain")
        .attr("href", super::records::href_of(inv, "Domain", &id))
        .attr("id", &id)
}

/// A user is added from the directory (`halyard-manager directory user add`): it
/// must exist there, and is added once. The document gets what the directory says.
pub fn check_user(inv: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let name = doc
        .text_of("user_name")
        .or_else(|| doc.text_of("principal"))
        .unwrap_or("")
        .to_string();
    let (principal, profile, authz) = directory_name(inv, doc, &name);
    let (principal, profile) = (principal.as_str(), profile.as_str());
    let Some(entry) = inv.directory.user(principal, profile) else {
        return Err(ApiError::not_found(format!(
            "User \"{principal}@{authz}\" was not found in the directory (add it with `halyard-manager directory user add {principal}@{profile}`)"
        )));
    };
    let user_name = format!("{principal}@{authz}");
    if inv
        .records_of("User")
        .any(|r| r.text("user_name") == Some(user_name.as_str()))
    {
        return Err(ApiError::conflict(format!(
            "User {user_name:?} was already added"
        )));
    }
    let entry_id = if entry.id.is_empty() {
        ADMIN_USER_ID
    } else {
        entry.id.as_str()
    };
    doc.children.retain(|c| {
        !matches!(
            c.name.as_str(),
            "name" | "user_name" | "principal" | "namespace" | "domain" | "domain_entry_id"
        )
    });
    doc.push(Node::leaf("name", principal));
    doc.push(Node::leaf("user_name", &user_name));
    doc.push(Node::leaf("principal", principal));
    doc.push(Node::leaf("namespace", "*"));
    doc.push(domain_ref(inv, &authz));
    doc.push(Node::leaf("domain_entry_id", entry_id));
    Ok(())
}

pub fn user_in_use(_: &Inventory, r: &Record) -> Option<String> {
    (r.id == ADMIN_USER_ID).then(|| "it is the Manager's administrator".to_string())
}

/// A group is added from the directory (`halyard-manager directory group add`), once.
pub fn check_group(inv: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let name = doc.text_of("name").unwrap_or("").to_string();
    let (group, profile, authz) = directory_name(inv, doc, &name);
    let (group, profile) = (group.as_str(), profile.as_str());
    let Some(entry) = inv.directory.group(group, profile) else {
        return Err(ApiError::not_found(format!(
            "Group \"{group}@{authz}\" was not found in the directory (add it with `halyard-manager directory group add {group}@{profile}`)"
        )));
    };
    let dom_id = crate::directory::domain_id(&authz);
    if inv
        .records_of("Group")
        .any(|r| r.text("name") == Some(group) && r.link("domain") == Some(dom_id.as_str()))
    {
        return Err(ApiError::conflict(format!(
            "Group \"{group}@{authz}\" was already added"
        )));
    }
    let entry_id = entry.id.clone();
    doc.children.retain(|c| {
        !matches!(
            c.name.as_str(),
            "name" | "namespace" | "domain" | "domain_entry_id"
        )
    });
    doc.push(Node::leaf("name", group));
    doc.push(Node::leaf("namespace", "*"));
    doc.push(domain_ref(inv, &authz));
    doc.push(Node::leaf("domain_entry_id", &entry_id));
    Ok(())
}

/// Longest public key accepted (a 16384-bit RSA key is ~2.8 KiB in base64).
pub const MAX_SSH_KEY: usize = 8192;

/// The key types OpenSSH's authorized_keys accepts.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Whether `line` is one OpenSSH public key: `type base64 [comment]`, the base64 a
/// key blob that starts with the same type (what oVirt's `OpenSSHUtils` checks: one
/// line, a key that resolves).
pub fn ssh_key_valid(line: &str) -> bool {
    use base64::Engine;
    if line.len() > MAX_SSH_KEY || line.contains(['\n', '\r']) {
        return false;
    }
    let mut w = line.split_ascii_whitespace();
    let (Some(ty), Some(b64)) = (w.next(), w.next()) else {
        return false;
    };
    if !SSH_KEY_TYPES.contains(&ty) {
        return false;
    }
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    // The blob: a sequence of (u32 length, bytes) strings, the first the type, and at
    // least one more (the key material), each within the blob.
    let mut rest = blob.as_slice();
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let n = u32::from_be_bytes(*len) as usize;
        if n > tail.len() {
            return false;
        }
        parts.push(&tail[..n]);
        rest = &tail[n..];
    }
    parts.len() >= 2 && parts[0] == ty.as_bytes() && parts[1..].iter().all(|p| !p.is_empty())
}

/// A user's SSH public key: one valid OpenSSH key (oVirt's
/// ACTION_TYPE_FAILED_INVALID_PUBLIC_SSH_KEY otherwise).
pub fn check_ssh_key(_: &Inventory, doc: &mut Node, _: Option<&Record>) -> Result<(), ApiError> {
    let content = doc.text_of("content").unwrap_or("").trim().to_string();
    if !ssh_key_valid(&content) {
        return Err(ApiError::bad(
            "Cannot add the SSH public key: it is not a valid OpenSSH public key (one line: type, base64 key, comment).",
        ));
    }
    doc.children.retain(|c| c.name != "content");
    doc.push(Node::leaf("content", &content));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@example.com";

    #[test]
    fn openssh_keys_are_checked() {
        assert!(ssh_key_valid(ED25519));
        assert!(ssh_key_valid(
            ED25519.rsplit_once(' ').map(|x| x.0).unwrap_or("")
        ));
        for bad in [
            "ssh-rsa AAA...mu9 myuser@example.com",
            "",
            "ssh-ed25519",
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GK",
            &format!("{ED25519}\nssh-ed25519 x"),
        ] {
            assert!(!ssh_key_valid(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_text_is_a_verdict_not_a_panic(s in ".{0,300}", b in proptest::collection::vec(any::<u8>(), 0..200)) {
            use base64::Engine;
            let _ = ssh_key_valid(&s);
            let _ = ssh_key_valid(&format!("ssh-rsa {}", base64::engine::general_purpose::STANDARD.encode(&b)));
        }
    }
}
