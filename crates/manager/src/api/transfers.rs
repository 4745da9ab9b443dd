//! `/imagetransfers`: uploads and downloads of disks (see [`crate::transfers`]).

use std::sync::Arc;

use hyper::{Method, StatusCode};

use super::handlers::{check_fields, check_id, list, ok, show, ApiError, Out, Req};
use super::render;
use crate::state::Manager;
use crate::transfers::NewTransfer;

/// What POST /imagetransfers acts on. `image` is the disk's id in older clients;
/// `snapshot` and `backup` (disk snapshots, incremental backup) are the snapshots
/// issue's and are refused.
const TRANSFER_ADD: &[&str] = &[
    "disk",
    "image",
    "direction",
    "format",
    "host",
    "inactivity_timeout",
    "timeout_policy",
    "shallow",
];

const ACTIONS: &[&str] = &["cancel", "finalize", "pause", "resume", "extend"];

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let get = r.method == Method::GET;
    let post = r.method == Method::POST;
    let out = match s {
        ["imagetransfers"] if get => {
            let inv = m.read();
            let items = inv
                .image_transfers
                .values()
                .map(|t| render::image_transfer(t, leaf_of(&inv, &t.disk)))
                .collect();
            match r.max() {
                Ok(max) => ok(list("image_transfers", items, max)),
                Err(e) => Err(e),
            }
        }
        ["imagetransfers"] if post => add(m, r).await,
        ["imagetransfers", id] if get => {
            let inv = m.read();
            show(&inv.image_transfers, id, "Image transfer", |t| {
                render::image_transfer(t, leaf_of(&inv, &t.disk))
            })
        }
        ["imagetransfers", id, action] if post && ACTIONS.contains(action) => {
            action_of(m, id, action, r).await
        }
        _ => return None,
    };
    Some(out)
}

fn leaf_of<'a>(inv: &'a crate::model::Inventory, disk: &str) -> Option<&'a str> {
    inv.disks.get(disk).map(|d| d.leaf())
}

async fn add(m: &Arc<Manager>, r: &Req) -> Out {
    let n = r.body_node("image_transfer")?;
    super::validate::check_document(&n, "ImageTransfer", TRANSFER_ADD)?;
    for refused in ["snapshot", "backup"] {
        if n.get(refused).is_some() {
            return Err(ApiError::bad(format!(
                "Image transfers of a {refused} are not supported yet (disk snapshots and backups are a later Halyard issue); transfer the disk"
            )));
        }
    }
    let disk = n
        .get("disk")
        .or_else(|| n.get("image"))
        .and_then(|d| d.attr_of("id").or_else(|| d.text_of("id")))
        .ok_or_else(|| ApiError::bad("Cannot add Image Transfer. <disk id=...> is required."))?
        .to_string();
    check_id(&disk)?;
    let host = match n.get("host") {
        None => None,
        Some(h) => {
            check_fields(h, &["id", "name"])?;
            Some(
                h.attr_of("id")
                    .or_else(|| h.text_of("id"))
                    .or_else(|| h.text_of("name"))
                    .ok_or_else(|| ApiError::bad("<host> needs an id or a name"))?
                    .to_string(),
            )
        }
    };
    let inactivity_timeout = match n.text_of("inactivity_timeout") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad(format!("inactivity_timeout {v:?}: a number of seconds"))
        })?),
    };
    let shallow = match n.text_of("shallow") {
        None | Some("false") => false,
        Some("true") => true,
        Some(x) => return Err(ApiError::bad(format!("shallow {x:?}: true or false"))),
    };
    let t = m
        .add_transfer(NewTransfer {
            disk,
            direction: n.text_of("direction").unwrap_or("upload").to_string(),
            format: n.text_of("format").map(str::to_string),
            host,
            inactivity_timeout,
            timeout_policy: n.text_of("timeout_policy").unwrap_or("legacy").to_string(),
            shallow,
            proxy_host: r.host_header.clone().unwrap_or_else(|| "localhost".into()),
        })
        .await?;
    let inv = m.read();
    Ok((
        StatusCode::CREATED,
        render::image_transfer(&t, leaf_of(&inv, &t.disk)),
    ))
}

async fn action_of(m: &Arc<Manager>, id: &str, action: &str, r: &Req) -> Out {
    check_id(id)?;
    let _ = r.action_body("ImageTransferService", action, &[])?;
    m.transfer_action(id, action).await?;
    ok(render::action_done(None))
}
