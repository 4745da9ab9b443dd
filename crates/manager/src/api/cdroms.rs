//! `/vms/{id}/cdroms`: a VM's one CD-ROM (oVirt's semantics). Its media is an ISO disk
//! (`content_type=iso`) of the VM's data center, or none. `PUT ...?current=true`
//! changes the running VM's media now (VDSM's `VM.changeCD` on its host) and not the
//! next run's; without it, the change is for the next run.

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::handlers::{check_id, list, ok, ApiError, Out, Req};
use super::node::Node;
use super::render::href;
use crate::images::{cdrom_id, cdrom_target, iso_disk, plugged_disks};
use crate::model::*;
use crate::state::Manager;

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let out = match s {
        ["vms", id, "cdroms"] if r.method == Method::GET => {
            one(m, id, r).map(|n| (StatusCode::OK, list("cdroms", vec![n], None)))
        }
        ["vms", id, "cdroms"] if r.method == Method::POST => Err(ApiError::conflict(
            "Cannot add a CD-ROM: a VM has exactly one (oVirt's rule); change its media with PUT",
        )),
        ["vms", id, "cdroms", cd] if r.method == Method::GET => check_id(cd)
            .and_then(|_| mine(id, cd))
            .and_then(|_| one(m, id, r).and_then(ok)),
        ["vms", id, "cdroms", cd] if r.method == Method::PUT => {
            match check_id(cd).and_then(|_| mine(id, cd)) {
                Ok(()) => change(m, id, r).await,
                Err(e) => Err(e),
            }
        }
        _ => return None,
    };
    Some(out)
}

fn mine(vm: &str, cd: &str) -> Result<(), ApiError> {
    if cdrom_id(vm) == *cd {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("CD-ROM {cd} not found")))
    }
}

fn render(v: &Vm, iso: &str) -> Node {
    let id = cdrom_id(&v.id);
    let mut n = Node::new("cdrom")
        .attr("href", format!("{}/cdroms/{id}", href("vms", &v.id)))
        .attr("id", &id);
    if !iso.is_empty() {
        n.push(Node::new("file").attr("id", iso));
    }
    n.with(Node::reference("vm", &href("vms", &v.id), &v.id))
}

fn one(m: &Arc<Manager>, id: &str, r: &Req) -> Result<Node, ApiError> {
    check_id(id)?;
    let cur = r.current()?;
    let inv = m.read();
    let v = inv
        .vms
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    let running = v.status != "down";
    Ok(render(
        v,
        if cur && running {
            &v.cdrom_current
        } else {
            &v.cdrom
        },
    ))
}

async fn change(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let cur = r.current()?;
    let n = r.document("cdrom", "Cdrom", &["file", "id"])?;
    let iso = n
        .get("file")
        .and_then(|f| f.attr_of("id").or_else(|| f.text_of("id")))
        .unwrap_or("")
        .to_string();
    let (v, path, target) = {
        let inv = m.read();
        let v = inv
            .vms
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
        let path = if iso.is_empty() {
            json!("")
        } else {
            let d = iso_disk(&inv, &iso, &v.cluster).map_err(|e| {
                ApiError::bad(format!("Cannot change the CD-ROM of VM {}: {e}.", v.name))
            })?;
            let dc = inv
                .storage_domains
                .get(&d.storage_domain)
                .and_then(|s| s.data_center.clone())
                .unwrap_or_default();
            json!({"poolID": dc, "domainID": d.storage_domain, "imageID": d.id, "volumeID": d.leaf()})
        };
        let disks = plugged_disks(&inv, id);
        let target = cdrom_target(&v, &disks).map_err(ApiError::conflict)?;
        (v, path, target)
    };
    if cur {
        if !matches!(
            v.status.as_str(),
            "up" | "powering_up" | "paused" | "reboot_in_progress"
        ) {
            return Err(ApiError::conflict(format!(
                "Cannot change the CD-ROM of VM {} now (current=true): the VM is {}; without current=true the change is for its next run.",
                v.name, v.status
            )));
        }
        let host = v.host.clone().unwrap_or_default();
        let c = m
            .host_client(&host)
            .await
            .ok_or_else(|| ApiError::conflict("the VM's host is not connected"))?;
        c.call_value(
            "VM.changeCD",
            json!({"vmID": v.id, "cdromspec": {"path": path, "iface": target.1, "name": target.0}}),
        )
        .await
        .map_err(|e| ApiError::bad(format!("Cannot change the CD-ROM of VM {}: {e}", v.name)))?;
        let iso2 = iso.clone();
        m.update(id, |x: &mut Vm| x.cdrom_current = iso2).await?;
    } else {
        let iso2 = iso.clone();
        m.update(id, |x: &mut Vm| x.cdrom = iso2).await?;
    }
    let v = m
        .read()
        .vms
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    ok(render(&v, if cur { &v.cdrom_current } else { &v.cdrom }))
}
