//! Documents clients send, checked against oVirt's model: an element the model does not
//! have in that type is refused as unknown; an element the model has but the handler
//! does not act on yet is refused as not supported, naming it — never accepted and
//! ignored. Each handler declares what it acts on, as paths below the document
//! (`name`, `cpu/topology`, `os/kernel`); a path accepts everything below it.

use super::handlers::ApiError;
use super::model::{model, Member};
use super::node::Node;

/// Checks `n` (a document of model type `ty`) against what the handler acts on.
pub fn check_document(n: &Node, ty: &str, acts_on: &[&str]) -> Result<(), ApiError> {
    walk(n, ty, "", acts_on)
}

/// Checks an `<action>` of `action` (its parameters from the model) against what the
/// handler acts on.
pub fn check_action(
    n: &Node,
    service: &str,
    action: &str,
    acts_on: &[&str],
) -> Result<(), ApiError> {
    let m = model();
    let params: Vec<&str> = m
        .service(service)
        .and_then(|s| {
            s.actions
                .iter()
                .find(|a| a.path == action || a.name == action)
        })
        .map(|a| a.params.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for c in &n.children {
        if ignorable(&c.name) {
            continue;
        }
        if !params.contains(&c.name.as_str()) {
            return Err(ApiError::bad(format!(
                "Request syntactically incorrect: <{}> is not a parameter of the {action} action of {service} in oVirt's model (it has: {})",
                c.name,
                params.join(", ")
            )));
        }
        if !acts_on.contains(&c.name.as_str()) {
            return Err(not_supported(&format!("action {action}: {}", c.name)));
        }
    }
    Ok(())
}

/// Elements that describe the object itself rather than ask for anything (its own
/// address, its links, as clients echo documents they read).
fn ignorable(name: &str) -> bool {
    matches!(name, "href" | "link" | "actions")
}

fn not_supported(path: &str) -> ApiError {
    ApiError::bad(format!(
        "<{path}> is in oVirt's model, but Halyard does not act on it yet; remove it from the request"
    ))
}

fn walk(n: &Node, ty: &str, prefix: &str, acts_on: &[&str]) -> Result<(), ApiError> {
    let Some(members) = model().members(ty) else {
        // An enum or a primitive: a value, nothing below.
        return match n.children.first() {
            Some(c) => Err(ApiError::bad(format!(
                "Request syntactically incorrect: <{}> inside <{}>, a value of type {ty}",
                c.name, n.name
            ))),
            None => Ok(()),
        };
    };
    for c in &n.children {
        if ignorable(&c.name) {
            continue;
        }
        let Some(mem) = members.iter().find(|m| m.name == c.name) else {
            return Err(ApiError::bad(format!(
                "Request syntactically incorrect: unknown element <{}> in <{}> (oVirt's {ty} has no such member)",
                c.name, n.name
            )));
        };
        let path = if prefix.is_empty() {
            c.name.to_string()
        } else {
            format!("{prefix}/{}", c.name)
        };
        if mem.halyard {
            return Err(ApiError::bad(format!(
                "Request syntactically incorrect: <{path}> is shown by Halyard (not in oVirt's model) and cannot be set; remove it from the request"
            )));
        }
        if acts_on.contains(&path.as_str()) {
            continue;
        }
        let deeper = format!("{path}/");
        if !acts_on.iter().any(|a| a.starts_with(&deeper)) {
            return Err(not_supported(&path));
        }
        descend(c, mem, &path, acts_on)?;
    }
    Ok(())
}

fn descend(c: &Node, mem: &Member, path: &str, acts_on: &[&str]) -> Result<(), ApiError> {
    if !mem.list {
        return walk(c, &mem.ty, path, acts_on);
    }
    // `<nics><nic>..</nic></nics>`: the items carry the type's tag.
    for item in &c.children {
        if ignorable(&item.name) {
            continue;
        }
        walk(item, &mem.ty, path, acts_on)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(x: &str) -> Node {
        Node::parse_xml(x.as_bytes()).expect("xml")
    }

    #[test]
    fn unknown_refused_known_unsupported_refused_supported_accepted() {
        let acts = &["name", "memory", "cpu/topology", "os/kernel", "cluster"];
        let ok = doc("<vm><name>a</name><memory>1</memory><cpu><topology><cores>2</cores></topology></cpu><os><kernel>/k</kernel></os><cluster><name>Default</name></cluster></vm>");
        check_document(&ok, "Vm", acts).expect("what Halyard does");
        let e = check_document(&doc("<vm><bogus/></vm>"), "Vm", acts).expect_err("unknown");
        assert!(e.detail.contains("unknown element <bogus>"), "{}", e.detail);
        let e = check_document(
            &doc("<vm><serial_number><policy>custom</policy></serial_number></vm>"),
            "Vm",
            acts,
        )
        .expect_err("not acted on");
        assert!(e.detail.contains("<serial_number>"), "{}", e.detail);
        let e = check_document(
            &doc("<vm><cpu><cpu_tune><vcpu_pins/></cpu_tune></cpu></vm>"),
            "Vm",
            acts,
        )
        .expect_err("pinning");
        assert!(e.detail.contains("<cpu/cpu_tune>"), "{}", e.detail);
        let e = check_document(&doc("<vm><os><boot/></os></vm>"), "Vm", acts).expect_err("boot");
        assert!(e.detail.contains("<os/boot>"), "{}", e.detail);
        // Lists: items under the list element.
        let acts = &["storage_domains/name", "name"];
        check_document(&doc("<disk><name>d</name><storage_domains><storage_domain><name>s</name></storage_domain></storage_domains></disk>"), "Disk", acts)
            .expect("list items");
        assert!(check_document(&doc("<disk><storage_domains><storage_domain><type>data</type></storage_domain></storage_domains></disk>"), "Disk", acts).is_err());
        // A value type has nothing below it.
        assert!(check_document(&doc("<vm><name><x/></name></vm>"), "Vm", &["name/x"]).is_err());
    }

    /// Halyard's own members (`x` in types.txt) are shown, never taken as input.
    #[test]
    fn halyards_own_members_cannot_be_set() {
        let e = check_document(
            &doc("<host><key_fingerprint>SHA256:x</key_fingerprint></host>"),
            "Host",
            &["name", "key_fingerprint"],
        )
        .expect_err("read-only");
        assert!(
            e.detail.contains("<key_fingerprint> is shown by Halyard"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn action_parameters() {
        let n = doc("<action><async>true</async></action>");
        check_action(&n, "VmService", "start", &["async"]).expect("ok");
        let e = check_action(
            &doc("<action><bogus/></action>"),
            "VmService",
            "start",
            &["async"],
        )
        .expect_err("unknown");
        assert!(e.detail.contains("not a parameter"), "{}", e.detail);
        let e = check_action(
            &doc("<action><pause>true</pause></action>"),
            "VmService",
            "start",
            &["async"],
        )
        .expect_err("unsupported");
        assert!(e.detail.contains("pause"), "{}", e.detail);
    }
}
