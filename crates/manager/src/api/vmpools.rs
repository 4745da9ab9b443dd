//! VM pools: a number of VMs made from the pool's template in its cluster.

use std::sync::Arc;

use super::handlers::ApiError;
use super::node::Node;
use crate::model::*;
use crate::state::Manager;

/// The most VMs one pool holds.
pub const MAX_POOL_SIZE: i64 = 1000;

pub fn check(inv: &Inventory, doc: &mut Node, old: Option<&Record>) -> Result<(), ApiError> {
    let size = match doc.text_of("size").map(str::parse::<i64>) {
        None => 1,
        Some(Ok(v)) if (0..=MAX_POOL_SIZE).contains(&v) => v,
        Some(_) => {
            return Err(ApiError::bad(format!(
                "<size> is from 0 to {MAX_POOL_SIZE}"
            )))
        }
    };
    if let Some(old) = old {
        let have = vms_of(inv, &old.id).count() as i64;
        if size < have {
            return Err(ApiError::conflict(format!(
                "Cannot edit VM-Pool: it has {have} VMs; remove VMs from the pool to make it smaller"
            )));
        }
    }
    doc.children.retain(|c| c.name != "size");
    doc.push(Node::leaf("size", size));
    let prestarted = match doc.text_of("prestarted_vms").map(str::parse::<i64>) {
        None => old
            .and_then(|o| o.text("prestarted_vms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        Some(Ok(v)) if (0..=size).contains(&v) => v,
        Some(_) => {
            return Err(ApiError::bad(
                "Cannot add VM-Pool: <prestarted_vms> is from 0 to the pool's size",
            ))
        }
    };
    doc.children.retain(|c| c.name != "prestarted_vms");
    doc.push(Node::leaf("prestarted_vms", prestarted));
    if doc.get("max_user_vms").is_none() {
        doc.push(Node::leaf("max_user_vms", 1));
    }
    if doc.get("type").is_none() {
        doc.push(Node::leaf("type", "automatic"));
    }
    let template = doc
        .get("template")
        .and_then(|t| t.attr_of("id"))
        .unwrap_or("");
    if template != BLANK_TEMPLATE && !inv.templates.contains_key(template) {
        return Err(ApiError::not_found(format!(
            "Template {template} not found"
        )));
    }
    Ok(())
}

/// The VMs of a pool.
pub fn vms_of<'a>(inv: &'a Inventory, pool: &'a str) -> impl Iterator<Item = &'a Vm> + 'a {
    inv.vms
        .values()
        .filter(move |v| v.pool.as_deref() == Some(pool))
}

/// Makes the pool's VMs up to its size (`<pool name>-N`, oVirt's naming), from its
/// template in its cluster. A size smaller than the VMs it has is refused by `check`.
pub async fn fill(m: &Arc<Manager>, pool: &Record) -> Result<(), ApiError> {
    let size: usize = pool.text("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut n = 1usize;
    loop {
        let (have, taken) = {
            let inv = m.read();
            let name = format!("{}-{n}", pool.name());
            (
                vms_of(&inv, &pool.id).count(),
                inv.vm_by_name(&name).is_some(),
            )
        };
        if have >= size {
            return Ok(());
        }
        if !taken {
            let doc = Node::new("vm")
                .with(Node::leaf("name", format!("{}-{n}", pool.name())))
                .with(Node::new("cluster").attr("id", pool.link("cluster").unwrap_or("")))
                .with(Node::new("template").attr("id", pool.link("template").unwrap_or("")));
            super::handlers::new_vm(m, &doc, Some(&pool.id), false).await?;
        }
        n += 1;
    }
}

/// Starts down VMs of the pool until `prestarted_vms` of them run (oVirt's pool
/// monitor: prestarted VMs wait for users to take them). A start that fails is an
/// event; the next pass tries again.
pub async fn prestart(m: &Arc<Manager>, pool: &Record) {
    let want: usize = pool
        .text("prestarted_vms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    loop {
        let (running, next) = {
            let inv = m.read();
            let running = vms_of(&inv, &pool.id)
                .filter(|v| v.status != "down")
                .count();
            // A VM whose disks are still being made waits for the next pass (as in
            // oVirt, a new pool's VMs start at the pool monitor's next run).
            let next = vms_of(&inv, &pool.id)
                .find(|v| {
                    v.status == "down" && inv.disks_of(&v.id).iter().all(|d| d.status == "ok")
                })
                .map(|v| (v.id.clone(), v.name.clone()));
            (running, next)
        };
        let Some((id, name)) = next.filter(|_| running < want) else {
            return;
        };
        if let Err(e) = m.vm_start(&id).await {
            m.event(
                119,
                "error",
                format!(
                    "Failed to prestart VM {name} of VM pool {}: {e}",
                    pool.name()
                ),
                None,
                Some(&id),
            )
            .await;
            return;
        }
    }
}

/// The VM pool monitor: every `vm_pool_check_secs`, each pool's prestarted VMs are
/// started again where fewer run (one was taken, stopped, or its host failed).
pub async fn monitor(m: Arc<Manager>) {
    let every = std::time::Duration::from_secs(m.cfg.monitoring.vm_pool_check_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pools: Vec<Record> = m.read().records_of("VmPool").cloned().collect();
        for p in pools {
            prestart(&m, &p).await;
        }
    }
}

/// Removes a pool's VMs (all down, see [`running`]).
pub async fn empty(m: &Arc<Manager>, pool: &str) -> Result<(), ApiError> {
    let ids: Vec<String> = vms_of(&m.read(), pool).map(|v| v.id.clone()).collect();
    for id in ids {
        super::handlers::delete_vm(m, &id, false).await?;
    }
    Ok(())
}

/// A pool cannot be removed while one of its VMs runs.
pub fn running(inv: &Inventory, r: &Record) -> Option<String> {
    vms_of(inv, &r.id)
        .find(|v| v.status != "down")
        .map(|v| format!("its VM {} is {}", v.name, v.status))
}

/// `allocatevm`: starts a down VM of the pool for the caller.
pub async fn allocate(m: &Arc<Manager>, pool: &str) -> Result<String, ApiError> {
    let vm = {
        let inv = m.read();
        if inv.record("VmPool", pool).is_none() {
            return Err(ApiError::not_found(format!("VM pool {pool} not found")));
        }
        let found = vms_of(&inv, pool)
            .find(|v| v.status == "down")
            .map(|v| v.id.clone());
        found
    };
    let vm = vm.ok_or_else(|| {
        ApiError::conflict(
            "Cannot allocate and run VM from VM-Pool. There are no available VMs in the VM-Pool.",
        )
    })?;
    m.vm_start(&vm).await?;
    Ok(vm)
}
