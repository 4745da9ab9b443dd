//! Storage parts of the API: storagedomains, datacenters/{id}/storagedomains, disks,
//! vms/{id}/diskattachments, vms/{id}/snapshots, templates, jobs/{id}/steps,
//! hosts/{id}/forceselectspm.

use std::sync::Arc;

use axum::http::{Method, StatusCode};

use super::handlers::{
    check_id, check_name, list, ok, parse_u64, ref_id, search_list, show, ApiError, Out, Req,
};
use super::node::Node;
use super::render;
use crate::domains::NewDomain;
use crate::images::{active_snapshot_id, NewDisk};
use crate::model::*;
use crate::state::Manager;

/// What the handlers act on, per document (see `validate`).
const SD_ADD: &[&str] = &[
    "name",
    "description",
    "type",
    "storage/type",
    "storage/address",
    "storage/path",
    "storage/vfs_type",
    "storage/mount_options",
    "storage_format",
    "host",
];
const SD_ATTACH: &[&str] = &["id", "name"];
const DISK_ADD: &[&str] = &[
    "name",
    "alias",
    "description",
    "provisioned_size",
    "format",
    "sparse",
    "storage_domains",
    "storage_domain",
    "content_type",
    "quota",
    "initial_size",
];
const ATTACHMENT_ADD: &[&str] = &["disk", "bootable", "interface", "active", "id"];
const SNAPSHOT_ADD: &[&str] = &["description", "persist_memorystate"];
/// A template is made from a VM (by id or name) as it is: its disks' formats stay.
const TEMPLATE_ADD: &[&str] = &[
    "name",
    "description",
    "vm/name",
    "vm/disk_attachments/disk/format",
    "vm/disk_attachments/disk/sparse",
    "version/base_template",
    "version/version_name",
];

/// Storage routes; None for paths that are not storage's.
pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    let del = r.method == Method::DELETE;
    let out = match s {
        ["storagedomains"] if get => storage_domains(m, r),
        ["storagedomains"] if post => add_storage_domain(m, r).await,
        ["storagedomains", id] if get => {
            let inv = m.read();
            show(&inv.storage_domains, id, "Storage domain", |sd| {
                render::storage_domain(sd, committed(&inv, &sd.id))
            })
        }
        ["storagedomains", id] if del => remove_storage_domain(m, id, r).await,
        ["storagedomains", id, "disks"] if get => check_id(id).and_then(|_| {
            let inv = m.read();
            ok(list(
                "disks",
                inv.disks
                    .values()
                    .filter(|d| d.storage_domain == *id && d.template.is_none())
                    .map(render::disk)
                    .collect(),
                r.max()?,
            ))
        }),
        // A disk through its storage domain: the same disk, found only in that domain.
        ["storagedomains", sd, "disks", id] if get || del => sd_disk(m, sd, id, get).await,
        ["storagedomains", id, "templates"] if get => {
            let inv = m.read();
            ok(list(
                "templates",
                inv.templates
                    .values()
                    .filter(|t| {
                        t.disks
                            .iter()
                            .any(|d| inv.disks.get(d).is_some_and(|d| d.storage_domain == *id))
                    })
                    .map(render::template)
                    .collect(),
                None,
            ))
        }
        ["datacenters", dc, "storagedomains"] if get => check_id(dc).map(|_| {
            let inv = m.read();
            (
                StatusCode::OK,
                list(
                    "storage_domains",
                    inv.storage_domains
                        .values()
                        .filter(|sd| sd.data_center.as_deref() == Some(*dc))
                        .map(|sd| render::attached_storage_domain(sd, dc, committed(&inv, &sd.id)))
                        .collect(),
                    None,
                ),
            )
        }),
        ["datacenters", dc, "storagedomains"] if post => attach(m, dc, r).await,
        ["datacenters", dc, "storagedomains", sd] if get => {
            let inv = m.read();
            match inv.storage_domains.get(*sd) {
                Some(x) if x.data_center.as_deref() == Some(*dc) => {
                    ok(render::attached_storage_domain(x, dc, committed(&inv, sd)))
                }
                _ => Err(ApiError::not_found(format!(
                    "Storage domain {sd} is not attached to data center {dc}"
                ))),
            }
        }
        ["datacenters", dc, "storagedomains", sd] if del => {
            match m.detach_storage_domain(dc, sd).await {
                Ok(()) => ok(Node::new("action").with(Node::leaf("status", "complete"))),
                Err(e) => Err(e.into()),
            }
        }
        ["datacenters", dc, "storagedomains", sd, action] if post => {
            sd_action(m, dc, sd, action, r).await
        }
        ["disks"] if get => {
            let inv = m.read();
            search_list(
                r,
                "disks",
                &["name", "alias", "id", "status", "storage", "vm_names"],
                inv.disks.values().filter(|d| d.template.is_none()),
                |d, f| match f {
                    "id" => vec![d.id.clone()],
                    "status" => vec![d.status.clone()],
                    "storage" => inv
                        .storage_domains
                        .get(&d.storage_domain)
                        .map(|s| vec![s.name.clone()])
                        .unwrap_or_default(),
                    "vm_names" => {
                        d.vm.as_ref()
                            .and_then(|v| inv.vms.get(v))
                            .map(|v| vec![v.name.clone()])
                            .unwrap_or_default()
                    }
                    _ => vec![d.name.clone()],
                },
                render::disk,
            )
        }
        ["disks"] if post => add_disk(m, r, None).await,
        ["disks", id] if get => show(&m.read().disks, id, "Disk", render::disk),
        ["disks", id] if del => match check_id(id) {
            Err(e) => Err(e),
            Ok(()) => match m.remove_disk(id).await {
                Ok(()) => ok(Node::new("action").with(Node::leaf("status", "complete"))),
                Err(e) => Err(e.into()),
            },
        },
        ["vms", vm, "diskattachments"] if get => {
            let inv = m.read();
            if !inv.vms.contains_key(*vm) {
                Err(ApiError::not_found(format!("VM {vm} not found")))
            } else {
                ok(list(
                    "disk_attachments",
                    inv.disks_of(vm)
                        .into_iter()
                        .map(|d| render::disk_attachment(d, "vms", vm))
                        .collect(),
                    None,
                ))
            }
        }
        ["vms", vm, "diskattachments"] if post => add_attachment(m, vm, r).await,
        ["vms", vm, "diskattachments", d] if get => {
            let inv = m.read();
            match inv.disks.get(*d) {
                Some(x) if x.vm.as_deref() == Some(*vm) => {
                    ok(render::disk_attachment(x, "vms", vm))
                }
                _ => Err(ApiError::not_found(format!(
                    "Disk attachment {d} not found"
                ))),
            }
        }
        ["vms", vm, "diskattachments", d] if r.method == Method::PUT => {
            update_attachment(m, vm, d, r).await
        }
        ["disks", id] if r.method == Method::PUT => update_disk(m, id, r).await,
        ["templates", id] if r.method == Method::PUT && *id != BLANK_TEMPLATE => {
            update_named::<Template>(m, id, r, "template", "Template").await
        }
        ["storagedomains", id] if r.method == Method::PUT => {
            update_named::<StorageDomain>(m, id, r, "storage_domain", "StorageDomain").await
        }
        ["vms", vm, "diskattachments", d] if del => {
            // API v4: the disk is only detached unless detach_only=false.
            let remove = r.query.get("detach_only").map(String::as_str) == Some("false");
            match m.detach_disk(vm, d, remove).await {
                Ok(()) => ok(Node::new("action").with(Node::leaf("status", "complete"))),
                Err(e) => Err(e.into()),
            }
        }
        ["vms", vm, "snapshots"] if get => {
            let inv = m.read();
            match inv.vms.get(*vm) {
                None => Err(ApiError::not_found(format!("VM {vm} not found"))),
                Some(v) => {
                    let mut items = vec![render::active_snapshot(v, &active_snapshot_id(vm))];
                    let mut snaps: Vec<&Snapshot> =
                        inv.snapshots.values().filter(|s| s.vm == *vm).collect();
                    snaps.sort_by_key(|s| s.date);
                    items.extend(snaps.into_iter().map(render::snapshot));
                    ok(list("snapshots", items, None))
                }
            }
        }
        ["vms", vm, "snapshots"] if post => add_snapshot(m, vm, r).await,
        ["vms", vm, "snapshots", sid] if get => {
            let inv = m.read();
            match (inv.vms.get(*vm), inv.snapshots.get(*sid)) {
                (Some(_), Some(x)) if x.vm == *vm => ok(render::snapshot(x)),
                (Some(v), _) if *sid == active_snapshot_id(vm) => {
                    ok(render::active_snapshot(v, sid))
                }
                _ => Err(ApiError::not_found(format!("Snapshot {sid} not found"))),
            }
        }
        ["vms", _, "snapshots", _] if del => Err(ApiError::conflict(
            "Cannot remove Snapshot: merging snapshots (live or cold) is not supported yet.",
        )),
        ["templates"] if get => templates(m, r),
        ["templates"] if post => add_template(m, r).await,
        ["templates", id] if get && *id != BLANK_TEMPLATE => {
            show(&m.read().templates, id, "Template", render::template)
        }
        ["templates", id] if del => match m.remove_template(id).await {
            Ok(()) => ok(Node::new("action").with(Node::leaf("status", "complete"))),
            Err(e) => Err(e.into()),
        },
        ["templates", id, "diskattachments"] if get => {
            let inv = m.read();
            // In the order of the VM's disks they were copied from.
            let order = inv
                .templates
                .get(*id)
                .map(|t| t.disks.as_slice())
                .unwrap_or(&[]);
            ok(list(
                "disk_attachments",
                order
                    .iter()
                    .filter_map(|d| inv.disks.get(d))
                    .filter(|d| d.template.as_deref() == Some(*id))
                    .map(|d| render::disk_attachment(d, "templates", id))
                    .collect(),
                None,
            ))
        }
        ["jobs", id, "steps"] if get => {
            let inv = m.read();
            match inv.jobs.get(*id) {
                None => Err(ApiError::not_found(format!("Job {id} not found"))),
                Some(j) => ok(list(
                    "steps",
                    j.steps.iter().map(|s| render::step(j, s)).collect(),
                    None,
                )),
            }
        }
        ["hosts", id, "forceselectspm"] if post => match m.force_select_spm(id).await {
            Ok(()) => ok(render::action_done(None)),
            Err(e) => Err(e.into()),
        },
        _ => return None,
    };
    Some(out)
}

/// Space promised to the disks on a domain (their provisioned sizes).
fn committed(inv: &Inventory, sd: &str) -> u64 {
    inv.disks
        .values()
        .filter(|d| d.storage_domain == sd)
        .map(|d| d.provisioned_size)
        .sum()
}

fn storage_domains(m: &Arc<Manager>, r: &Req) -> Out {
    let inv = m.read();
    search_list(
        r,
        "storage_domains",
        &["name", "id", "status", "datacenter", "type"],
        inv.storage_domains.values(),
        |s, f| match f {
            "name" => vec![s.name.clone()],
            "id" => vec![s.id.clone()],
            "status" => vec![s.status.clone()],
            "type" => vec!["data".into()],
            _ => s
                .data_center
                .as_ref()
                .and_then(|d| inv.data_centers.get(d))
                .map(|d| vec![d.name.clone()])
                .unwrap_or_default(),
        },
        |s| render::storage_domain(s, committed(&inv, &s.id)),
    )
}

async fn add_storage_domain(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.document("storage_domain", "StorageDomain", SD_ADD)?;
    if let Some(f) = n.text_of("storage_format").filter(|f| *f != "v5") {
        return Err(ApiError::bad(format!(
            "storage_format {f:?}: Halyard makes storage format v5 domains"
        )));
    }
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "storage domain")?;
    if let Some(t) = n.text_of("type") {
        if t != "data" {
            return Err(ApiError::bad(format!(
                "storage domain type {t:?}: only data domains are supported"
            )));
        }
    }
    let st = n
        .get("storage")
        .ok_or_else(|| ApiError::bad("Cannot add Storage Domain. <storage> is required."))?;
    let host = n
        .get("host")
        .and_then(|h| h.id().or_else(|| h.text_of("name")))
        .ok_or_else(|| ApiError::bad("Cannot add Storage Domain. <host> is required."))?
        .to_string();
    let sd = m
        .add_storage_domain(NewDomain {
            name,
            description: n.text_of("description").unwrap_or("").to_string(),
            storage_type: st.text_of("type").unwrap_or("").to_string(),
            address: st.text_of("address").unwrap_or("").to_string(),
            path: st.text_of("path").unwrap_or("").to_string(),
            vfs_type: st.text_of("vfs_type").unwrap_or("").to_string(),
            mount_options: st.text_of("mount_options").unwrap_or("").to_string(),
            host,
        })
        .await?;
    Ok((StatusCode::CREATED, render::storage_domain(&sd, 0)))
}

async fn remove_storage_domain(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let format = match r.query.get("format").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(x) => return Err(ApiError::bad(format!("format={x:?}: true or false"))),
    };
    let host = r.query.get("host").map(String::as_str);
    m.remove_storage_domain(id, host, format).await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

async fn attach(m: &Arc<Manager>, dc: &str, r: &Req) -> Out {
    check_id(dc)?;
    let n = r.document("storage_domain", "StorageDomain", SD_ATTACH)?;
    let sd = {
        let inv = m.read();
        ref_id(
            Some(&n),
            |x| {
                inv.storage_domains
                    .values()
                    .find(|s| s.name == x)
                    .map(|s| s.id.clone())
            },
            "storage domain",
        )?
        .unwrap_or_default()
    };
    check_id(&sd)?;
    let sd = m.attach_storage_domain(dc, &sd).await?;
    let c = committed(&m.read(), &sd.id);
    Ok((
        StatusCode::CREATED,
        render::attached_storage_domain(&sd, dc, c),
    ))
}

async fn sd_action(m: &Arc<Manager>, dc: &str, sd: &str, action: &str, r: &Req) -> Out {
    check_id(dc)?;
    check_id(sd)?;
    let _ = r.action_body("AttachedStorageDomainService", action, &["async"])?;
    match action {
        "activate" => m.activate_storage_domain(dc, sd).await?,
        "deactivate" => m.deactivate_storage_domain(dc, sd).await?,
        other => {
            return Err(ApiError::not_found(format!(
                "No action {other} on attached storage domains"
            )))
        }
    }
    ok(render::action_done(None))
}

/// A new disk from a `<disk>` document.
fn new_disk(m: &Arc<Manager>, d: &Node) -> Result<NewDisk, ApiError> {
    super::validate::check_document(d, "Disk", DISK_ADD)?;
    let name = d
        .text_of("name")
        .or_else(|| d.text_of("alias"))
        .unwrap_or("")
        .to_string();
    check_name(&name, "disk")?;
    let content_type = match d.text_of("content_type") {
        None | Some("data") => "data",
        Some("iso") => "iso",
        Some(ct) => {
            return Err(ApiError::bad(format!(
                "Cannot add Disk. content_type {ct:?}: Halyard makes data and iso disks"
            )))
        }
    };
    let size = parse_u64(d, "provisioned_size")?
        .ok_or_else(|| ApiError::bad("Cannot add Disk. <provisioned_size> is required."))?;
    // What a block volume is allocated with at first (oVirt); Halyard's domains are
    // file domains, whose sparse volumes grow as written: as in oVirt it only has to
    // make sense.
    if let Some(initial) = parse_u64(d, "initial_size")? {
        if initial > size.saturating_mul(2).saturating_add(64 << 20) {
            return Err(ApiError::bad(format!(
                "Cannot add Disk. initial_size {initial} is larger than a disk of {size} bytes can need."
            )));
        }
    }
    let sd_node = d
        .get("storage_domains")
        .and_then(|s| s.get("storage_domain"))
        .or_else(|| d.get("storage_domain"))
        .ok_or_else(|| ApiError::bad("Cannot add Disk. A storage domain is required."))?;
    let sd = {
        let inv = m.read();
        ref_id(
            Some(sd_node),
            |x| {
                inv.storage_domains
                    .values()
                    .find(|s| s.name == x)
                    .map(|s| s.id.clone())
            },
            "storage domain",
        )?
        .unwrap_or_default()
    };
    let format = d.text_of("format").unwrap_or("cow").to_string();
    if content_type == "iso" && format != "raw" {
        return Err(ApiError::bad(
            "Cannot add Disk. An ISO disk (content_type iso) must have format raw.",
        ));
    }
    let sparse = match d.text_of("sparse") {
        None => true,
        Some("true") => true,
        Some("false") => false,
        Some(x) => return Err(ApiError::bad(format!("sparse {x:?}: true or false"))),
    };
    let id = match d.id() {
        None => None,
        Some(id) => {
            let u = uuid::Uuid::parse_str(id)
                .map_err(|_| ApiError::bad(format!("Cannot add Disk. id {id:?} is not a UUID.")))?;
            if u.is_nil() {
                return Err(ApiError::bad(
                    "Cannot add Disk. The nil UUID is no disk id.",
                ));
            }
            Some(u.hyphenated().to_string())
        }
    };
    Ok(NewDisk {
        id,
        name,
        description: d.text_of("description").unwrap_or("").to_string(),
        provisioned_size: size,
        format,
        sparse,
        storage_domain: sd,
        content_type: content_type.into(),
    })
}

async fn add_disk(m: &Arc<Manager>, r: &Req, vm: Option<&str>) -> Out {
    let n = r.body_node("disk")?;
    let spec = new_disk(m, &n)?;
    let quota = match n.get("quota") {
        None => None,
        Some(q) => {
            let inv = m.read();
            let dc = inv
                .storage_domains
                .get(&spec.storage_domain)
                .and_then(|s| s.data_center.clone());
            Some(super::quotas::find(&inv, q, dc.as_deref())?)
        }
    };
    let attach = vm.map(|v| (v.to_string(), false, "virtio".to_string()));
    let mut d = m.add_disk(spec, attach).await?;
    if let Some(q) = quota {
        if let Some(x) = m
            .update(&d.id, |x: &mut Disk| {
                x.quota = Some(q.clone());
                x.clone()
            })
            .await?
        {
            d = x;
        }
        super::quotas::audit(m, &q).await;
    }
    Ok((StatusCode::CREATED, render::disk(&d)))
}

fn bool_of(n: &Node, k: &str) -> Result<Option<bool>, ApiError> {
    match n.text_of(k) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(x) => Err(ApiError::bad(format!("<{k}> {x:?}: true or false"))),
    }
}

async fn add_attachment(m: &Arc<Manager>, vm: &str, r: &Req) -> Out {
    check_id(vm)?;
    let n = r.body_node("disk_attachment")?;
    // The inline disk is checked as a disk below.
    let mut outer = n.clone();
    outer.children.retain(|c| c.name != "disk");
    super::validate::check_document(&outer, "DiskAttachment", ATTACHMENT_ADD)?;
    let active = bool_of(&n, "active")?.unwrap_or(true);
    if !m.read().vms.contains_key(vm) {
        return Err(ApiError::not_found(format!("VM {vm} not found")));
    }
    let bootable = bool_of(&n, "bootable")?.unwrap_or(false);
    let interface = n.text_of("interface").unwrap_or("virtio").to_string();
    if !matches!(
        interface.as_str(),
        "virtio" | "virtio_scsi" | "ide" | "sata"
    ) {
        return Err(ApiError::bad(format!("disk interface {interface:?}")));
    }
    let d = n
        .get("disk")
        .ok_or_else(|| ApiError::bad("Cannot add a disk attachment without <disk>."))?;
    let disk = match d.id() {
        Some(id) => {
            check_id(id)?;
            if !m.read().disks.contains_key(id) {
                return Err(ApiError::not_found(format!("Disk {id} not found")));
            }
            m.attach_disk(vm, id, bootable, &interface).await?
        }
        None => {
            let spec = new_disk(m, d)?;
            if m.read().vms.get(vm).is_some_and(|v| v.status != "down") {
                return Err(ApiError::conflict(
                    "Cannot add a disk to a running VM (hot plug is not supported yet).",
                ));
            }
            m.add_disk(spec, Some((vm.to_string(), bootable, interface)))
                .await?
        }
    };
    // Attached deactivated: the VM starts without it until it is activated.
    let disk = if active {
        disk
    } else {
        m.update(&disk.id, |x: &mut Disk| {
            x.inactive = true;
            x.clone()
        })
        .await?
        .unwrap_or(disk)
    };
    Ok((
        StatusCode::CREATED,
        render::disk_attachment(&disk, "vms", vm),
    ))
}

async fn add_snapshot(m: &Arc<Manager>, vm: &str, r: &Req) -> Out {
    check_id(vm)?;
    let n = r.document("snapshot", "Snapshot", SNAPSHOT_ADD)?;
    if bool_of(&n, "persist_memorystate")? == Some(true) {
        return Err(ApiError::bad(
            "Snapshots with memory state are not supported yet (persist_memorystate=false).",
        ));
    }
    let description = n.text_of("description").unwrap_or("").to_string();
    if description.chars().count() > 4000 || description.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "snapshot description: at most 4000 printable characters",
        ));
    }
    let s = m.create_snapshot(vm, &description).await?;
    Ok((StatusCode::CREATED, render::snapshot(&s)))
}

/// Templates, Blank first. Blank is in every data center (oVirt's special template), so
/// `name=Blank and datacenter=X` finds it for every X.
fn templates(m: &Arc<Manager>, r: &Req) -> Out {
    let q = r.search(&["name", "id", "cluster", "datacenter", "status"])?;
    let inv = m.read();
    struct Row {
        fields: [(&'static str, Vec<String>); 5],
        node: Node,
    }
    let dc_of = |cluster: &str| -> Vec<String> {
        inv.clusters
            .get(cluster)
            .and_then(|c| inv.data_centers.get(&c.data_center))
            .map(|d| vec![d.name.clone()])
            .unwrap_or_default()
    };
    let mut rows = vec![Row {
        fields: [
            ("name", vec!["Blank".into()]),
            ("id", vec![BLANK_TEMPLATE.into()]),
            ("status", vec!["ok".into()]),
            ("cluster", Vec::new()),
            (
                "datacenter",
                inv.data_centers.values().map(|d| d.name.clone()).collect(),
            ),
        ],
        node: render::blank_template(None),
    }];
    for t in inv.templates.values() {
        rows.push(Row {
            fields: [
                ("name", vec![t.name.clone()]),
                ("id", vec![t.id.clone()]),
                ("status", vec![t.status.clone()]),
                (
                    "cluster",
                    inv.clusters
                        .get(&t.cluster)
                        .map(|c| vec![c.name.clone()])
                        .unwrap_or_default(),
                ),
                ("datacenter", dc_of(&t.cluster)),
            ],
            node: render::template(t),
        });
    }
    let value = |row: &Row, f: &str| -> Vec<String> {
        row.fields
            .iter()
            .find(|(k, _)| *k == f)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let hits: Vec<Row> = rows
        .into_iter()
        .filter(|row| q.matches(|f| value(row, f)))
        .collect();
    let items = q
        .arrange(hits, value, r.max()?)
        .into_iter()
        .map(|row| row.node)
        .collect();
    ok(list("templates", items, None))
}

async fn add_template(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.body_node("template")?;
    super::validate::check_document(&n, "Template", TEMPLATE_ADD)?;
    let name = n.text_of("name").unwrap_or("").to_string();
    check_name(&name, "template")?;
    let vm = {
        let inv = m.read();
        ref_id(
            n.get("vm"),
            |x| inv.vm_by_name(x).map(|v| v.id.clone()),
            "vm",
        )?
        .ok_or_else(|| ApiError::bad("Cannot add Template. The source <vm> is required."))?
    };
    check_id(&vm)?;
    let formats = template_disk_formats(&n)?;
    let version = n.get("version");
    let base = match version.and_then(|v| v.get("base_template")) {
        None => None,
        Some(b) => {
            let inv = m.read();
            let id = ref_id(
                Some(b),
                |x| {
                    inv.templates
                        .values()
                        .find(|t| t.name == x && t.base_template.is_none())
                        .map(|t| t.id.clone())
                },
                "base_template",
            )?
            .unwrap_or_default();
            check_id(&id)?;
            Some(id)
        }
    };
    let vname = version
        .and_then(|v| v.text_of("version_name"))
        .unwrap_or("")
        .to_string();
    if vname.len() > 255 || vname.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "version_name: at most 255 printable characters",
        ));
    }
    if base.is_none() && version.is_some() {
        return Err(ApiError::bad(
            "Cannot add Template. A <version> names its <base_template>.",
        ));
    }
    let t = m
        .create_template(
            &name,
            n.text_of("description").unwrap_or(""),
            &vm,
            &formats,
            base.as_deref().map(|b| (b, vname.as_str())),
        )
        .await?;
    Ok((StatusCode::CREATED, render::template(&t)))
}

/// The formats asked for the template's copies of the VM's disks
/// (`<vm><disk_attachments><disk_attachment><disk id><format><sparse>`), by source
/// disk id. Copies are sparse: `sparse=false` is refused (Halyard's copy does not
/// preallocate).
fn template_disk_formats(n: &Node) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    let atts = n.get("vm").and_then(|v| v.get("disk_attachments"));
    for (id, d) in super::handlers::attached_disks(atts, "Template")? {
        if d.text_of("sparse") == Some("false") {
            return Err(ApiError::bad(
                "<vm/disk_attachments/disk/sparse>false: Halyard copies a template's disks sparse only (it does not preallocate); remove it or ask true",
            ));
        }
        match d.text_of("sparse") {
            None | Some("true") => {}
            Some(x) => {
                return Err(ApiError::bad(format!(
                    "disk sparse must be true or false, got {x:?}"
                )))
            }
        }
        if let Some(f) = d.text_of("format") {
            if !matches!(f, "raw" | "cow") {
                return Err(ApiError::bad(format!(
                    "disk format must be raw or cow, got {f:?}"
                )));
            }
            if out.insert(id.to_string(), f.to_string()).is_some() {
                return Err(ApiError::bad(format!(
                    "Cannot add Template. Disk {id} is named twice."
                )));
            }
        }
    }
    Ok(out)
}

/// What updating a disk acts on: its names, and a larger `provisioned_size` (extending
/// it).
const DISK_UPDATE: &[&str] = &["name", "alias", "description", "provisioned_size", "id"];
const ATTACHMENT_UPDATE: &[&str] = &[
    "active",
    "bootable",
    "interface",
    "disk/provisioned_size",
    "id",
];
const NAMED_UPDATE: &[&str] = &["name", "description", "id"];

/// A stored object with a name and a description.
trait Named: crate::state::Stored {
    fn names(&mut self) -> (&mut String, &mut String);
    fn render(&self, inv: &Inventory) -> Node;
}

impl Named for Template {
    fn names(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }
    fn render(&self, _: &Inventory) -> Node {
        render::template(self)
    }
}

impl Named for StorageDomain {
    fn names(&mut self) -> (&mut String, &mut String) {
        (&mut self.name, &mut self.description)
    }
    fn render(&self, inv: &Inventory) -> Node {
        let committed: u64 = inv
            .disks
            .values()
            .filter(|d| d.storage_domain == self.id)
            .map(|d| d.provisioned_size)
            .sum();
        render::storage_domain(self, committed)
    }
}

/// PUT of a template or a storage domain: its name (unique) and description.
async fn update_named<T: Named>(m: &Arc<Manager>, id: &str, r: &Req, root: &str, ty: &str) -> Out {
    check_id(id)?;
    let n = r.document(root, ty, NAMED_UPDATE)?;
    let name = n.text_of("name").map(str::to_string);
    if let Some(x) = &name {
        check_name(x, root)?;
        let clash = T::map(&m.read())
            .values()
            .any(|o| o.key() != id && o.clone().names().0 == x);
        if clash {
            return Err(ApiError::conflict(format!(
                "Cannot edit {ty}. The name {x:?} is already in use."
            )));
        }
    }
    let desc = n.text_of("description").map(str::to_string);
    let v = m
        .update(id, |o: &mut T| {
            let (nm, d) = o.names();
            if let Some(x) = &name {
                *nm = x.clone();
            }
            if let Some(x) = &desc {
                *d = x.clone();
            }
            o.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{ty} {id} not found")))?;
    ok(v.render(&m.read()))
}

async fn update_disk(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    check_id(id)?;
    let n = r.document("disk", "Disk", DISK_UPDATE)?;
    let name = n
        .text_of("name")
        .or_else(|| n.text_of("alias"))
        .map(str::to_string);
    if let Some(x) = &name {
        check_name(x, "disk")?;
    }
    let desc = n.text_of("description").map(str::to_string);
    if let Some(size) = parse_u64(&n, "provisioned_size")? {
        m.extend_disk(id, size).await?;
    }
    let d = m
        .update(id, |d: &mut Disk| {
            if let Some(x) = &name {
                d.name = x.clone();
            }
            if let Some(x) = &desc {
                d.description = x.clone();
            }
            d.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Disk {id} not found")))?;
    ok(render::disk(&d))
}

/// PUT of a VM's disk attachment: `bootable` and `interface`, while the VM is down.
async fn update_attachment(m: &Arc<Manager>, vm: &str, d: &str, r: &Req) -> Out {
    check_id(vm)?;
    check_id(d)?;
    let n = r.document("disk_attachment", "DiskAttachment", ATTACHMENT_UPDATE)?;
    let bootable = bool_of(&n, "bootable")?;
    let active = bool_of(&n, "active")?;
    let interface = n.text_of("interface").map(str::to_string);
    if let Some(i) = &interface {
        if !matches!(i.as_str(), "virtio" | "virtio_scsi" | "ide" | "sata") {
            return Err(ApiError::bad(format!("disk interface {i:?}")));
        }
    }
    {
        let inv = m.read();
        match inv.disks.get(d) {
            Some(x) if x.vm.as_deref() == Some(vm) => {}
            _ => {
                return Err(ApiError::not_found(format!(
                    "Disk attachment {d} not found"
                )))
            }
        }
        let down = inv.vms.get(vm).is_some_and(|v| v.status == "down");
        let changes = bootable.is_some_and(|b| Some(b) != inv.disks.get(d).map(|x| x.bootable))
            || active.is_some_and(|a| Some(!a) != inv.disks.get(d).map(|x| x.inactive))
            || interface
                .as_deref()
                .is_some_and(|i| Some(i) != inv.disks.get(d).map(|x| x.interface.as_str()));
        if changes && !down {
            return Err(ApiError::conflict(
                "Cannot edit the disk attachment while the VM runs (Halyard does not hot-change devices, nor hot-plug or hot-unplug disks, yet)",
            ));
        }
    }
    let size = match n.get("disk") {
        Some(x) => parse_u64(x, "provisioned_size")?,
        None => None,
    };
    if let Some(size) = size {
        m.extend_disk(d, size).await?;
    }
    let x = m
        .update(d, |x: &mut Disk| {
            if let Some(b) = bootable {
                x.bootable = b;
            }
            if let Some(i) = &interface {
                x.interface = i.clone();
            }
            if let Some(a) = active {
                x.inactive = !a;
            }
            x.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Disk {d} not found")))?;
    ok(render::disk_attachment(&x, "vms", vm))
}

/// A disk through its storage domain (`/storagedomains/{sd}/disks/{id}`): the same
/// disk, found only in that domain; GET shows it, DELETE removes it.
async fn sd_disk(m: &Arc<Manager>, sd: &str, id: &str, get: bool) -> Out {
    check_id(sd)?;
    check_id(id)?;
    let here = m
        .read()
        .disks
        .get(id)
        .is_some_and(|d| d.storage_domain == sd && d.template.is_none());
    if !here {
        return Err(ApiError::not_found(format!(
            "Disk {id} is not on storage domain {sd}"
        )));
    }
    if get {
        return show(&m.read().disks, id, "Disk", render::disk);
    }
    match m.remove_disk(id).await {
        Ok(()) => ok(Node::new("action").with(Node::leaf("status", "complete"))),
        Err(e) => Err(e.into()),
    }
}
