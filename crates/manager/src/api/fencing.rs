//! `/hosts/{id}/fenceagents` (oVirt's `Agent`: type, address, port, username,
//! password, options, order, encrypt_options) and the hosts' `fence` action
//! (`fence_type` status, start, stop, restart, manual); see `crate::fencing`. An
//! agent's password is never shown.

use std::sync::Arc;

use hyper::{Method, StatusCode};

use super::handlers::{check_id, list, ok, ApiError, Out, Req};
use super::node::Node;
use super::render::href;
use crate::model::*;
use crate::state::Manager;

const AGENT_FIELDS: &[&str] = &[
    "type",
    "address",
    "port",
    "username",
    "password",
    "options",
    "order",
    "encrypt_options",
    "id",
];

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    let out = match s {
        ["hosts", h, "fenceagents"] if r.method == Method::GET => agents(m, h),
        ["hosts", h, "fenceagents"] if r.method == Method::POST => add(m, h, r).await,
        ["hosts", h, "fenceagents", a] if r.method == Method::GET => {
            agent_of(m, h, a).map(|a| render(&a)).and_then(ok)
        }
        ["hosts", h, "fenceagents", a] if r.method == Method::PUT => update(m, h, a, r).await,
        ["hosts", h, "fenceagents", a] if r.method == Method::DELETE => remove(m, h, a).await,
        ["hosts", h, "fence"] if r.method == Method::POST => fence(m, h, r).await,
        _ => return None,
    };
    Some(out)
}

fn host_of(m: &Arc<Manager>, id: &str) -> Result<Host, ApiError> {
    check_id(id)?;
    m.read()
        .hosts
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))
}

fn agent_of(m: &Arc<Manager>, h: &str, a: &str) -> Result<FenceAgent, ApiError> {
    host_of(m, h)?;
    check_id(a)?;
    m.read()
        .fence_agents
        .get(a)
        .filter(|x| x.host == h)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Fence agent {a} not found")))
}

fn render(a: &FenceAgent) -> Node {
    let hr = format!("{}/fenceagents/{}", href("hosts", &a.host), a.id);
    let mut n = Node::new("agent")
        .attr("href", &hr)
        .attr("id", &a.id)
        .with(Node::leaf("address", &a.address))
        .with(Node::leaf("encrypt_options", a.encrypt_options))
        .with(Node::leaf("order", a.order));
    if let Some(p) = a.port {
        n.push(Node::leaf("port", p));
    }
    n.push(Node::leaf("type", &a.agent_type));
    n.push(Node::leaf("username", &a.username));
    if !a.options.is_empty() {
        n.push(a.options.iter().fold(Node::new("options"), |o, (k, v)| {
            o.with(
                Node::new("option")
                    .with(Node::leaf("name", k))
                    .with(Node::leaf("value", v)),
            )
        }));
    }
    n.with(Node::reference("host", &href("hosts", &a.host), &a.host))
}

fn agents(m: &Arc<Manager>, h: &str) -> Out {
    host_of(m, h)?;
    ok(list(
        "agents",
        m.fence_agents_of(h).iter().map(render).collect(),
        None,
    ))
}

/// A plain value: bounded, no control characters (it reaches a fence agent's input).
fn plain(what: &str, v: &str, max: usize) -> Result<String, ApiError> {
    if v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "{what}: at most {max} bytes without control characters"
        )));
    }
    Ok(v.to_string())
}

/// Applies the fields the document gives to `a`.
fn apply(n: &Node, a: &mut FenceAgent) -> Result<(), ApiError> {
    if let Some(t) = n.text_of("type") {
        if t.is_empty()
            || t.len() > 32
            || !t
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(ApiError::bad(format!(
                "type {t:?}: a fence agent's name (ipmilan, ilo4, drac5, apc, ...)"
            )));
        }
        a.agent_type = t.to_string();
    }
    if let Some(x) = n.text_of("address") {
        a.address = plain("address", x, 255)?;
    }
    if let Some(x) = n.text_of("username") {
        a.username = plain("username", x, 255)?;
    }
    if let Some(x) = n.text_of("password") {
        a.password = plain("password", x, 1024)?;
    }
    if let Some(x) = n.text_of("port") {
        a.port = Some(
            x.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ApiError::bad(format!("port {x:?}: 1 to 65535")))?,
        );
    }
    if let Some(x) = n.text_of("order") {
        a.order = x
            .parse::<u32>()
            .ok()
            .filter(|o| (1..=1000).contains(o))
            .ok_or_else(|| ApiError::bad(format!("order {x:?}: 1 to 1000")))?;
    }
    if let Some(e) = super::handlers::bool_at(Some(n), &["encrypt_options"])? {
        a.encrypt_options = e;
    }
    if let Some(o) = n.get("options") {
        let mut opts = Vec::new();
        for x in o.all("option") {
            let name = x.text_of("name").unwrap_or("");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::bad(format!(
                    "option name {name:?}: letters, digits, '_' or '-'"
                )));
            }
            let value = plain(
                &format!("option {name}"),
                x.text_of("value").unwrap_or(""),
                255,
            )?;
            if value.contains([' ', ',', '=']) {
                return Err(ApiError::bad(format!(
                    "option {name}: a value without spaces, commas or '='"
                )));
            }
            opts.push((name.to_string(), value));
        }
        if opts.len() > 32 {
            return Err(ApiError::bad("at most 32 options"));
        }
        a.options = opts;
    }
    Ok(())
}

async fn add(m: &Arc<Manager>, h: &str, r: &Req) -> Out {
    host_of(m, h)?;
    let n = r.document("agent", "Agent", AGENT_FIELDS)?;
    let mut a = FenceAgent {
        id: uuid::Uuid::new_v4().to_string(),
        host: h.to_string(),
        order: 0,
        agent_type: String::new(),
        address: String::new(),
        port: None,
        username: String::new(),
        password: String::new(),
        options: Vec::new(),
        encrypt_options: false,
    };
    apply(&n, &mut a)?;
    for (what, empty) in [
        ("type", a.agent_type.is_empty()),
        ("address", a.address.is_empty()),
    ] {
        if empty {
            return Err(ApiError::bad(format!(
                "Cannot add a fence agent: <{what}> is required."
            )));
        }
    }
    let _g = m.write_lock.lock().await;
    if a.order == 0 {
        a.order = m
            .fence_agents_of(h)
            .iter()
            .map(|x| x.order)
            .max()
            .unwrap_or(0)
            + 1;
    }
    m.insert(&a)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((StatusCode::CREATED, render(&a)))
}

async fn update(m: &Arc<Manager>, h: &str, id: &str, r: &Req) -> Out {
    let mut a = agent_of(m, h, id)?;
    let n = r.document("agent", "Agent", AGENT_FIELDS)?;
    apply(&n, &mut a)?;
    let _g = m.write_lock.lock().await;
    let a = m
        .update(id, |x: &mut FenceAgent| {
            *x = a.clone();
            x.clone()
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Fence agent {id} not found")))?;
    ok(render(&a))
}

async fn remove(m: &Arc<Manager>, h: &str, id: &str) -> Out {
    agent_of(m, h, id)?;
    let _g = m.write_lock.lock().await;
    m.remove::<FenceAgent>(id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}

async fn fence(m: &Arc<Manager>, h: &str, r: &Req) -> Out {
    let host = host_of(m, h)?;
    let body = r.action_body("HostService", "fence", &["fence_type", "async"])?;
    let t = body.text_of("fence_type").unwrap_or("");
    let by = "admin@internal";
    let job = m.start_job(format!("Fence host {}: {t}", host.name)).await;
    let result = match t {
        "status" => m.power_status(h).await.map(Some),
        "stop" => m.fence_stop(h, by, false).await.map(|_| None),
        "start" => m.fence_start(h, by).await.map(|_| None),
        "restart" => m.fence_restart(h, by, false).await.map(|_| None),
        "manual" => m.fence_manual(h).await.map(|_| None),
        other => {
            m.finish_job(&job, false).await;
            return Err(ApiError::bad(format!(
                "fence_type {other:?}: status, start, stop, restart or manual"
            )));
        }
    };
    m.finish_job(&job, result.is_ok()).await;
    let power = result?;
    let mut n = Node::new("action");
    if let Some(p) = power {
        n.push(Node::new("power_management").with(Node::leaf("status", p)));
    }
    ok(n.with(Node::leaf("status", "complete")))
}
