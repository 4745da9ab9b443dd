//! `/vms/{id}/graphicsconsoles`: a VM's VNC and SPICE consoles (oVirt's ids: the
//! protocol's name in hex), their tickets (`ticket`: a password valid for `expiry`
//! seconds, set on the running VM through VDSM's `VM.updateDevice`) and the
//! `remote_viewer_connection_file` that remote-viewer opens (console.vv).

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::json;

use super::handlers::{check_id, list, ok, ApiError, Out, Req};
use super::node::Node;
use super::render::href;
use crate::model::*;
use crate::state::Manager;

/// The longest a console ticket may be valid (oVirt's engine takes any; a week
/// bounds what a leaked ticket gives).
pub const MAX_TICKET_SECS: u64 = 7 * 86_400;
/// oVirt's default ticket validity.
pub const DEFAULT_TICKET_SECS: u64 = 120;

fn console_id(protocol: &str) -> String {
    protocol.bytes().map(|b| format!("{b:02x}")).collect()
}

fn protocol_of(id: &str) -> Option<&'static str> {
    ["vnc", "spice"].into_iter().find(|p| console_id(p) == id)
}

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let out = match s {
        ["vms", id, "graphicsconsoles"] if r.method == Method::GET => consoles(m, id, r),
        ["vms", id, "graphicsconsoles"] if r.method == Method::POST => add(m, id, r).await,
        ["vms", id, "graphicsconsoles", c] if r.method == Method::GET => {
            console(m, id, c, r).and_then(ok)
        }
        ["vms", id, "graphicsconsoles", c] if r.method == Method::DELETE => remove(m, id, c).await,
        ["vms", id, "graphicsconsoles", c, "ticket"] if r.method == Method::POST => {
            ticket(m, id, c, r).await
        }
        ["vms", id, "graphicsconsoles", c, "proxyticket"] if r.method == Method::POST => {
            proxy_ticket(m, id, c, r)
        }
        ["vms", id, "graphicsconsoles", c, "remoteviewerconnectionfile"]
            if r.method == Method::POST =>
        {
            connection_file(m, id, c, r).await
        }
        _ => return None,
    };
    Some(out)
}

fn vm_of(m: &Arc<Manager>, id: &str) -> Result<Vm, ApiError> {
    check_id(id)?;
    m.read()
        .vms
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))
}

/// One console; with `current` the running VM's address and ports.
fn render(v: &Vm, protocol: &str, current: bool) -> Node {
    let id = console_id(protocol);
    let mut n = Node::new("graphics_console")
        .attr(
            "href",
            format!("{}/graphicsconsoles/{id}", href("vms", &v.id)),
        )
        .attr("id", &id);
    if current && v.status != "down" {
        if let Some((_, port, tls, addr)) = v.guest.display.iter().find(|d| d.0 == protocol) {
            n.push(Node::leaf("address", addr));
            if *port > 0 {
                n.push(Node::leaf("port", *port));
            }
            if *tls > 0 {
                n.push(Node::leaf("tls_port", *tls));
            }
        }
    }
    n.push(Node::leaf("protocol", protocol));
    n.with(Node::reference("vm", &href("vms", &v.id), &v.id))
}

fn consoles(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    let v = vm_of(m, id)?;
    let cur = r.current()?;
    ok(list(
        "graphics_consoles",
        v.graphics.iter().map(|p| render(&v, p, cur)).collect(),
        None,
    ))
}

fn console(m: &Arc<Manager>, id: &str, c: &str, r: &Req) -> Result<Node, ApiError> {
    let v = vm_of(m, id)?;
    let p = protocol_of(c)
        .filter(|p| v.graphics.iter().any(|g| g == p))
        .ok_or_else(|| ApiError::not_found(format!("Graphics console {c} not found")))?;
    Ok(render(&v, p, r.current()?))
}

async fn add(m: &Arc<Manager>, id: &str, r: &Req) -> Out {
    let v = vm_of(m, id)?;
    let n = r.document("graphics_console", "GraphicsConsole", &["protocol"])?;
    let p = match n.text_of("protocol") {
        Some("vnc") => "vnc",
        Some("spice") => "spice",
        Some(x) => return Err(ApiError::bad(format!("protocol {x:?}: vnc or spice"))),
        None => {
            return Err(ApiError::bad(
                "Cannot add a graphics console: <protocol> is required.",
            ))
        }
    };
    if v.graphics.iter().any(|g| g == p) {
        return Err(ApiError::conflict(format!(
            "Cannot add a graphics console: VM {} has a {p} console already.",
            v.name
        )));
    }
    let v = m
        .update(id, |x: &mut Vm| {
            x.graphics.push(p.to_string());
            x.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))?;
    Ok((StatusCode::CREATED, render(&v, p, false)))
}

async fn remove(m: &Arc<Manager>, id: &str, c: &str) -> Out {
    let v = vm_of(m, id)?;
    let p = protocol_of(c)
        .filter(|p| v.graphics.iter().any(|g| g == p))
        .ok_or_else(|| ApiError::not_found(format!("Graphics console {c} not found")))?;
    m.update(id, |x: &mut Vm| x.graphics.retain(|g| g != p))
        .await?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

/// A random console password (oVirt's tickets are 12 characters; a VNC password has
/// at most 8): the fully random bytes of a v4 UUID (not its version and variant bytes
/// 6 and 8).
fn new_password(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    [0usize, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 13]
        .iter()
        .take(len)
        .map(|&i| CHARS[b[i] as usize % CHARS.len()] as char)
        .collect()
}

/// Sets a ticket on the running VM's console; (password, seconds).
async fn set_ticket(
    m: &Arc<Manager>,
    v: &Vm,
    protocol: &str,
    value: Option<String>,
    expiry: u64,
) -> Result<(String, u64), ApiError> {
    if !matches!(
        v.status.as_str(),
        "up" | "powering_up" | "paused" | "reboot_in_progress"
    ) {
        return Err(ApiError::conflict(format!(
            "Cannot set a console ticket: VM {} is {}, not running.",
            v.name, v.status
        )));
    }
    if !v.guest.display.iter().any(|d| d.0 == protocol) {
        return Err(ApiError::conflict(format!(
            "Cannot set a console ticket: VM {} runs without a {protocol} console (consoles added while it runs come with its next start).",
            v.name
        )));
    }
    if expiry == 0 || expiry > MAX_TICKET_SECS {
        return Err(ApiError::bad(format!(
            "ticket expiry must be 1..{MAX_TICKET_SECS} seconds"
        )));
    }
    let max = if protocol == "vnc" { 8 } else { 64 };
    let pw = match value {
        Some(p) => {
            if p.is_empty() || p.len() > max || !p.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::bad(format!(
                    "ticket value must be 1-{max} printable ASCII characters ({protocol})"
                )));
            }
            p
        }
        None => new_password(if protocol == "vnc" { 8 } else { 12 }),
    };
    let c = m
        .host_client(v.host.as_deref().unwrap_or(""))
        .await
        .ok_or_else(|| ApiError::conflict("the VM's host is not connected"))?;
    c.call_value(
        "VM.updateDevice",
        json!({"vmID": v.id, "params": {"deviceType": "graphics", "graphicsType": protocol,
               "password": pw, "ttl": expiry, "existingConnAction": "keep"}}),
    )
    .await
    .map_err(|e| ApiError::bad(format!("Cannot set the console ticket: {e}")))?;
    m.event(
        10103,
        "normal",
        format!(
            "User admin@internal got a {} console ticket for VM {}, valid for {expiry} s.",
            protocol.to_uppercase(),
            v.name
        ),
        v.host.as_deref(),
        Some(&v.id),
    )
    .await;
    Ok((pw, expiry))
}

fn ticket_request(r: &Req, action: &str) -> Result<(Option<String>, u64), ApiError> {
    let body = r.action_body("VmGraphicsConsoleService", action, &["ticket"])?;
    let t = body.get("ticket");
    let value = t.and_then(|t| t.text_of("value")).map(str::to_string);
    let expiry = match t.and_then(|t| t.text_of("expiry")) {
        None => DEFAULT_TICKET_SECS,
        Some(e) => e
            .parse()
            .map_err(|_| ApiError::bad(format!("ticket expiry {e:?}: seconds")))?,
    };
    Ok((value, expiry))
}

async fn ticket(m: &Arc<Manager>, id: &str, c: &str, r: &Req) -> Out {
    let v = vm_of(m, id)?;
    let p = protocol_of(c)
        .filter(|p| v.graphics.iter().any(|g| g == p))
        .ok_or_else(|| ApiError::not_found(format!("Graphics console {c} not found")))?;
    let (value, expiry) = ticket_request(r, "ticket")?;
    let (pw, secs) = set_ticket(m, &v, p, value, expiry).await?;
    ok(Node::new("action")
        .with(
            Node::new("ticket")
                .with(Node::leaf("expiry", secs))
                .with(Node::leaf("value", &pw)),
        )
        .with(Node::leaf("status", "complete")))
}

/// A one-time ticket for the Manager's VNC WebSocket proxy
/// (`/ovirt-engine/services/websocket-proxy/{value}`), as oVirt's for its
/// ovirt-websocket-proxy. VNC only: a browser has no SPICE client.
fn proxy_ticket(m: &Arc<Manager>, id: &str, c: &str, r: &Req) -> Out {
    let v = vm_of(m, id)?;
    let p = protocol_of(c)
        .filter(|p| v.graphics.iter().any(|g| g == p))
        .ok_or_else(|| ApiError::not_found(format!("Graphics console {c} not found")))?;
    let _ = r.action_body("VmGraphicsConsoleService", "proxy_ticket", &[])?;
    if p != "vnc" {
        return Err(ApiError::conflict(
            "Cannot give a proxy ticket: the WebSocket proxy serves VNC consoles only.",
        ));
    }
    let running = matches!(
        v.status.as_str(),
        "up" | "powering_up" | "paused" | "reboot_in_progress"
    );
    let shown = v
        .guest
        .display
        .iter()
        .find(|d| d.0 == p && d.1 > 0 && d.1 <= i64::from(u16::MAX));
    let (Some((_, port, _, addr)), true) = (shown, running) else {
        return Err(ApiError::conflict(format!(
            "Cannot give a proxy ticket: VM {} is not running with a VNC console.",
            v.name
        )));
    };
    let secs = crate::consoleproxy::PROXY_TICKET_SECS;
    let value = m.proxy_tickets.issue(
        crate::consoleproxy::ProxyTarget {
            vm: v.id.clone(),
            address: addr.clone(),
            port: u16::try_from(*port).unwrap_or(0),
        },
        secs,
    );
    ok(Node::new("action")
        .with(Node::new("proxy_ticket").with(Node::leaf("value", &value)))
        .with(Node::leaf("status", "complete")))
}

/// The console.vv remote-viewer opens: the address, port, a fresh ticket.
async fn connection_file(m: &Arc<Manager>, id: &str, c: &str, r: &Req) -> Out {
    let v = vm_of(m, id)?;
    let p = protocol_of(c)
        .filter(|p| v.graphics.iter().any(|g| g == p))
        .ok_or_else(|| ApiError::not_found(format!("Graphics console {c} not found")))?;
    let _ = r.action_body(
        "VmGraphicsConsoleService",
        "remote_viewer_connection_file",
        &[],
    )?;
    let (pw, secs) = set_ticket(m, &v, p, None, DEFAULT_TICKET_SECS).await?;
    let (_, port, tls, addr) = v
        .guest
        .display
        .iter()
        .find(|d| d.0 == p)
        .cloned()
        .unwrap_or_default();
    let mut vv = format!(
        "[virt-viewer]\ntype={p}\nhost={addr}\nport={port}\npassword={pw}\n# Password is valid for {secs} seconds.\ndelete-this-file=1\nfullscreen=0\ntitle={}:%d\ntoggle-fullscreen=shift+f11\nrelease-cursor=shift+f12\nsecure-attention=ctrl+alt+end\n",
        v.name.replace(['\n', '\r'], " ")
    );
    if p == "spice" && tls > 0 {
        vv.push_str(&format!("tls-port={tls}\n"));
    }
    ok(Node::new("action")
        .with(Node::leaf("remote_viewer_connection_file", &vv))
        .with(Node::leaf("status", "complete")))
}
