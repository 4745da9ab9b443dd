//! A VM's virtual NUMA nodes (`vms/{id}/numanodes`, oVirt's VmNumaNodesService): index,
//! memory and vCPUs, checked as oVirt's NumaValidator does, written into the domain
//! as `<cpu><numa><cell>` at the next start. Pinning to host NUMA nodes and tune
//! modes are refused (this machine and the scheduler know one host node only).

use std::sync::Arc;

use axum::http::StatusCode;

use super::handlers::{check_id, ok, ApiError, Out, Req};
use super::node::Node;
use super::render::{href, sub};
use crate::model::{Vm, VmNumaNode};
use crate::state::Manager;

/// What an added or updated node may carry.
const NODE_ACTS: &[&str] = &["name", "index", "memory", "cpu/cores"];

/// At most this many nodes per VM (oVirt's own bound is the vCPU count; this holds
/// documents small whatever a client sends).
pub const MAX_NODES: usize = 128;

pub fn node(vm: &str, n: &VmNumaNode) -> Node {
    let hr = sub(&sub(&href("vms", vm), "numanodes"), &n.id);
    let mut cores = Node::new("cores");
    for c in &n.cpus {
        cores.push(Node::new("core").with(Node::leaf("index", *c)));
    }
    Node::new("vm_numa_node")
        .attr("href", &hr)
        .attr("id", &n.id)
        .opt("name", (!n.name.is_empty()).then_some(n.name.as_str()))
        .with(Node::leaf("index", n.index))
        .with(Node::leaf("memory", n.memory))
        .with(Node::new("cpu").with(cores))
        .with(Node::reference("vm", &href("vms", vm), vm))
}

fn parse(doc: &Node, id: String, default_index: u32) -> Result<VmNumaNode, ApiError> {
    let int = |k: &str| -> Result<Option<u64>, ApiError> {
        doc.text_of(k)
            .map(|t| {
                t.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad(format!("NUMA node {k}: {t:?} is not a number")))
            })
            .transpose()
    };
    let index = match int("index")? {
        Some(i) => u32::try_from(i).map_err(|_| ApiError::bad("NUMA node index too large"))?,
        None => default_index,
    };
    let memory = int("memory")?.ok_or_else(|| ApiError::bad("a NUMA node needs <memory> (MiB)"))?;
    if memory == 0 {
        return Err(ApiError::bad("a NUMA node needs more than 0 MiB of memory"));
    }
    let mut cpus = Vec::new();
    if let Some(cores) = doc.get("cpu").and_then(|c| c.get("cores")) {
        for c in cores.all("core") {
            let t = c.text_of("index").unwrap_or("");
            let i: u32 = t.trim().parse().map_err(|_| {
                ApiError::bad(format!("NUMA node core index {t:?} is not a number"))
            })?;
            cpus.push(i);
        }
    }
    let name = doc.text_of("name").unwrap_or("").to_string();
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "NUMA node name: at most 255 printable characters",
        ));
    }
    Ok(VmNumaNode {
        id,
        name,
        index,
        memory,
        cpus,
    })
}

fn vm_of(m: &Manager, id: &str) -> Result<Vm, ApiError> {
    check_id(id)?;
    m.read()
        .vms
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))
}

fn must_be_down(v: &Vm, what: &str) -> Result<(), ApiError> {
    if v.status != "down" {
        return Err(ApiError::conflict(format!(
            "Cannot {what} VM NUMA node. The VM must be down (it is {}).",
            v.status
        )));
    }
    Ok(())
}

/// Stores `nodes` as the VM's after checking them (under the write lock).
async fn store(m: &Manager, v: &Vm, nodes: Vec<VmNumaNode>, what: &str) -> Result<(), ApiError> {
    crate::vms::numa_check(v, &nodes)
        .map_err(|e| ApiError::conflict(format!("Cannot {what} VM NUMA node: {e}.")))?;
    m.update(&v.id, |x: &mut Vm| x.numa_nodes = nodes)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(())
}

pub fn list(m: &Arc<Manager>, vm: &str) -> Out {
    let v = vm_of(m, vm)?;
    let mut n = Node::new("vm_numa_nodes");
    let mut nodes = v.numa_nodes.clone();
    nodes.sort_by_key(|x| x.index);
    for x in &nodes {
        n.push(node(vm, x));
    }
    ok(n)
}

pub fn get(m: &Arc<Manager>, vm: &str, id: &str) -> Out {
    let v = vm_of(m, vm)?;
    v.numa_nodes
        .iter()
        .find(|x| x.id == id)
        .map(|x| ok(node(vm, x)))
        .unwrap_or_else(|| Err(ApiError::not_found(format!("NUMA node {id} not found"))))
}

pub async fn add(m: &Arc<Manager>, vm: &str, r: &Req) -> Out {
    let doc = r.document("vm_numa_node", "VirtualNumaNode", NODE_ACTS)?;
    let _g = m.write_lock.lock().await;
    let v = vm_of(m, vm)?;
    must_be_down(&v, "add")?;
    if v.numa_nodes.len() >= MAX_NODES {
        return Err(ApiError::conflict(format!(
            "Cannot add VM NUMA node: a VM has at most {MAX_NODES}."
        )));
    }
    let new = parse(
        &doc,
        uuid::Uuid::new_v4().to_string(),
        v.numa_nodes.len() as u32,
    )?;
    let mut nodes = v.numa_nodes.clone();
    nodes.push(new.clone());
    store(m, &v, nodes, "add").await?;
    Ok((StatusCode::CREATED, node(vm, &new)))
}

pub async fn update(m: &Arc<Manager>, vm: &str, id: &str, r: &Req) -> Out {
    let doc = r.document("vm_numa_node", "VirtualNumaNode", NODE_ACTS)?;
    let _g = m.write_lock.lock().await;
    let v = vm_of(m, vm)?;
    must_be_down(&v, "update")?;
    let old = v
        .numa_nodes
        .iter()
        .find(|x| x.id == id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("NUMA node {id} not found")))?;
    let mut new = old.clone();
    if !doc.children.is_empty() {
        let mut merged = node(vm, &old);
        for c in &doc.children {
            merged.children.retain(|x| x.name != c.name);
            merged.push(c.clone());
        }
        new = parse(&merged, old.id.clone(), old.index)?;
    }
    let nodes: Vec<VmNumaNode> = v
        .numa_nodes
        .iter()
        .map(|x| if x.id == id { new.clone() } else { x.clone() })
        .collect();
    store(m, &v, nodes, "update").await?;
    ok(node(vm, &new))
}

/// oVirt removes NUMA nodes from the last index down (the rest stay continuous).
pub async fn remove(m: &Arc<Manager>, vm: &str, id: &str) -> Out {
    let _g = m.write_lock.lock().await;
    let v = vm_of(m, vm)?;
    must_be_down(&v, "remove")?;
    let n = v
        .numa_nodes
        .iter()
        .find(|x| x.id == id)
        .ok_or_else(|| ApiError::not_found(format!("NUMA node {id} not found")))?;
    let last = v.numa_nodes.iter().map(|x| x.index).max().unwrap_or(0);
    if n.index != last {
        return Err(ApiError::conflict(format!(
            "Cannot remove VM NUMA node: only the node with the highest index ({last}) can be removed, not {}.",
            n.index
        )));
    }
    // Fewer nodes from the top down stay valid: no check that could keep one.
    let nodes: Vec<VmNumaNode> = v
        .numa_nodes
        .iter()
        .filter(|x| x.id != id)
        .cloned()
        .collect();
    m.update(&v.id, |x: &mut Vm| x.numa_nodes = nodes)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}
