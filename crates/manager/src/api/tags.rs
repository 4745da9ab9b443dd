//! Tags: `tags` (a tree under oVirt's root tag), and their assignment to VMs and hosts
//! (`vms/{id}/tags`, `hosts/{id}/tags`). VMs and hosts are searched by them (`tag=x`).

use std::sync::Arc;

use axum::http::{Method, StatusCode};

use super::handlers::{check_id, check_name, ok, search_list, ApiError, Out, Req};
use super::node::Node;
use super::render::href;
use crate::model::*;
use crate::state::Manager;

const TAG_ADD: &[&str] = &["name", "description", "parent"];
const TAG_UPDATE: &[&str] = &["name", "description", "parent", "id"];
const TAG_ASSIGN: &[&str] = &["id", "name"];

pub fn render(t: &Tag) -> Node {
    let parent = t.parent.as_deref().unwrap_or(ROOT_TAG);
    Node::new("tag")
        .attr("href", href("tags", &t.id))
        .attr("id", &t.id)
        .with(Node::leaf("name", &t.name))
        .with(Node::leaf("description", &t.description))
        .with(Node::reference("parent", &href("tags", parent), parent))
}

fn render_root() -> Node {
    Node::new("tag")
        .attr("href", href("tags", ROOT_TAG))
        .attr("id", ROOT_TAG)
        .with(Node::leaf("name", "root"))
        .with(Node::leaf("description", "root"))
}

/// A tag an assignment or a parent names, by id or name.
fn find(inv: &Inventory, n: &Node) -> Result<String, ApiError> {
    if let Some(id) = n.id() {
        if id == ROOT_TAG || inv.tags.contains_key(id) {
            return Ok(id.to_string());
        }
        return Err(ApiError::not_found(format!("Tag {id} not found")));
    }
    let name = n
        .text_of("name")
        .ok_or_else(|| ApiError::bad("a tag is named by id or <name>"))?;
    if name == "root" {
        return Ok(ROOT_TAG.into());
    }
    inv.tags
        .values()
        .find(|t| t.name == name)
        .map(|t| t.id.clone())
        .ok_or_else(|| ApiError::not_found(format!("Tag {name:?} not found")))
}

/// The names of tags (VM and host search field `tag`).
pub fn names(inv: &Inventory, ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter_map(|i| inv.tags.get(i).map(|t| t.name.clone()))
        .collect()
}

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let (get, post, put, del) = (
        r.method == Method::GET,
        r.method == Method::POST,
        r.method == Method::PUT,
        r.method == Method::DELETE,
    );
    Some(match s {
        ["tags"] if get => {
            let inv = m.read();
            let mut items = vec![render_root()];
            items.extend(inv.tags.values().map(render));
            search_list(
                r,
                "tags",
                &["name", "id"],
                items.iter(),
                |n, f| match f {
                    "id" => n.id().map(|x| vec![x.to_string()]).unwrap_or_default(),
                    _ => n
                        .text_of("name")
                        .map(|x| vec![x.to_string()])
                        .unwrap_or_default(),
                },
                Node::clone,
            )
        }
        ["tags"] if post => add(m, r).await,
        ["tags", id] if get => {
            if *id == ROOT_TAG {
                ok(render_root())
            } else {
                super::handlers::show(&m.read().tags, id, "Tag", render)
            }
        }
        ["tags", id] if put => update(m, id, r).await,
        ["tags", id] if del => remove(m, id).await,
        [kind @ ("vms" | "hosts"), id, "tags"] if get => assigned(m, kind, id),
        [kind @ ("vms" | "hosts"), id, "tags"] if post => assign(m, kind, id, r).await,
        [kind @ ("vms" | "hosts"), id, "tags", tag] if get => {
            let tags = match owner_tags(m, kind, id) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            match tags.iter().find(|t| t.as_str() == *tag) {
                None => Err(ApiError::not_found(format!("Tag {tag} is not assigned"))),
                Some(t) => ok(assigned_node(&m.read(), kind, id, t)),
            }
        }
        [kind @ ("vms" | "hosts"), id, "tags", tag] if del => unassign(m, kind, id, tag).await,
        _ => return None,
    })
}

async fn add(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.document("tag", "Tag", TAG_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "tag")?;
    let _g = m.write_lock.lock().await;
    let parent = {
        let inv = m.read();
        if name == "root" || inv.tags.values().any(|t| t.name == name) {
            return Err(ApiError::conflict(format!(
                "Cannot add Tag. The name {name:?} is already in use."
            )));
        }
        match n.get("parent") {
            Some(p) => Some(find(&inv, p)?).filter(|p| p != ROOT_TAG),
            None => None,
        }
    };
    let t = Tag {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description: n.text_of("description").unwrap_or("").to_string(),
        parent,
    };
    m.insert(&t).await?;
    Ok((StatusCode::CREATED, render(&t)))
}

async fn update(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("tag", "Tag", TAG_UPDATE)?;
    let _g = m.write_lock.lock().await;
    let (name, parent) = {
        let inv = m.read();
        if !inv.tags.contains_key(id) {
            return Err(ApiError::not_found(format!("Tag {id} not found")));
        }
        let name = n.text_of("name").map(str::to_string);
        if let Some(x) = &name {
            check_name(x, "tag")?;
            if x == "root" || inv.tags.values().any(|t| t.name == *x && t.id != id) {
                return Err(ApiError::conflict(format!(
                    "Cannot edit Tag. The name {x:?} is already in use."
                )));
            }
        }
        let parent = match n.get("parent") {
            Some(p) => {
                let p = find(&inv, p)?;
                // Not under itself.
                let mut at = Some(p.clone());
                while let Some(a) = at {
                    if a == id {
                        return Err(ApiError::conflict("A tag cannot be its own ancestor."));
                    }
                    at = inv.tags.get(&a).and_then(|t| t.parent.clone());
                }
                Some(Some(p).filter(|p| p != ROOT_TAG))
            }
            None => None,
        };
        (name, parent)
    };
    let t = m
        .update(id, |t: &mut Tag| {
            if let Some(x) = name {
                t.name = x;
            }
            if let Some(d) = n.text_of("description") {
                t.description = d.to_string();
            }
            if let Some(p) = parent {
                t.parent = p;
            }
            t.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Tag {id} not found")))?;
    ok(render(&t))
}

/// Removes a tag with the tags under it, and their assignments.
async fn remove(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    if id == ROOT_TAG {
        return Err(ApiError::conflict("The root tag cannot be removed."));
    }
    let _g = m.write_lock.lock().await;
    let gone: Vec<String> = {
        let inv = m.read();
        if !inv.tags.contains_key(id) {
            return Err(ApiError::not_found(format!("Tag {id} not found")));
        }
        let mut gone = vec![id.to_string()];
        let mut i = 0;
        while i < gone.len() {
            let under: Vec<String> = inv
                .tags
                .values()
                .filter(|t| t.parent.as_deref() == Some(gone[i].as_str()))
                .map(|t| t.id.clone())
                .collect();
            gone.extend(under);
            i += 1;
        }
        gone
    };
    let (vms, hosts): (Vec<String>, Vec<String>) = {
        let inv = m.read();
        (
            inv.vms
                .values()
                .filter(|v| v.tags.iter().any(|t| gone.contains(t)))
                .map(|v| v.id.clone())
                .collect(),
            inv.hosts
                .values()
                .filter(|h| h.tags.iter().any(|t| gone.contains(t)))
                .map(|h| h.id.clone())
                .collect(),
        )
    };
    for v in vms {
        m.update(&v, |v: &mut Vm| v.tags.retain(|t| !gone.contains(t)))
            .await?;
    }
    for h in hosts {
        m.update(&h, |h: &mut Host| h.tags.retain(|t| !gone.contains(t)))
            .await?;
    }
    for t in gone.iter().rev() {
        m.remove::<Tag>(t).await?;
    }
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

fn owner_tags(m: &Arc<Manager>, kind: &str, id: &str) -> Result<Vec<String>, ApiError> {
    check_id(id)?;
    let inv = m.read();
    let tags = if kind == "vms" {
        inv.vms.get(id).map(|v| v.tags.clone())
    } else {
        inv.hosts.get(id).map(|h| h.tags.clone())
    };
    tags.ok_or_else(|| {
        ApiError::not_found(format!(
            "{} {id} not found",
            if kind == "vms" { "VM" } else { "Host" }
        ))
    })
}

fn assigned_node(inv: &Inventory, kind: &str, owner: &str, tag: &str) -> Node {
    let mut n = match inv.tags.get(tag) {
        Some(t) => render(t),
        None => render_root(),
    };
    n.set_attr("href", format!("{}/tags/{tag}", href(kind, owner)));
    let (el, coll) = if kind == "vms" {
        ("vm", "vms")
    } else {
        ("host", "hosts")
    };
    n.with(Node::reference(el, &href(coll, owner), owner))
}

fn assigned(m: &Arc<Manager>, kind: &str, id: &str) -> Out {
    let tags = owner_tags(m, kind, id)?;
    let inv = m.read();
    let mut n = Node::new("tags");
    for t in &tags {
        n.push(assigned_node(&inv, kind, id, t));
    }
    ok(n)
}

async fn assign(m: &Arc<Manager>, kind: &str, id: &str, r: &Req) -> Out {
    let n = r.document("tag", "Tag", TAG_ASSIGN)?;
    owner_tags(m, kind, id)?;
    let tag = find(&m.read(), &n)?;
    if tag == ROOT_TAG {
        return Err(ApiError::bad("The root tag cannot be assigned."));
    }
    let add = |tags: &mut Vec<String>| {
        if !tags.contains(&tag) {
            tags.push(tag.clone());
        }
    };
    if kind == "vms" {
        m.update(id, |v: &mut Vm| add(&mut v.tags)).await?;
    } else {
        m.update(id, |h: &mut Host| add(&mut h.tags)).await?;
    }
    Ok((
        StatusCode::CREATED,
        assigned_node(&m.read(), kind, id, &tag),
    ))
}

async fn unassign(m: &Arc<Manager>, kind: &str, id: &str, tag: &str) -> Out {
    let tags = owner_tags(m, kind, id)?;
    if !tags.iter().any(|t| t == tag) {
        return Err(ApiError::not_found(format!("Tag {tag} is not assigned")));
    }
    if kind == "vms" {
        m.update(id, |v: &mut Vm| v.tags.retain(|t| t != tag))
            .await?;
    } else {
        m.update(id, |h: &mut Host| h.tags.retain(|t| t != tag))
            .await?;
    }
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}
