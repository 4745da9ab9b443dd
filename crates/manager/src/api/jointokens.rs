//! `jointokens`: one-time tokens an admin makes for hosts to join (a Halyard
//! collection; oVirt has none). `POST` answers the secret once; the Manager keeps only
//! its hash. A host presents it at registration (`halyard-hostd --join-token`) and is
//! approved at once, in the token's cluster.

use std::sync::Arc;

use axum::http::{Method, StatusCode};

use super::handlers::{
    check_fields, check_id, check_name, list, ok, parse_u64, ref_id, ApiError, Out, Req,
};
use super::node::Node;
use super::render::href;
use crate::model::*;
use crate::state::Manager;

const FIELDS: &[&str] = &["host_name", "cluster", "expires_in", "comment"];

/// Default and longest lifetimes of a token, in seconds.
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;
pub const MAX_LIFETIME_SECS: u64 = 7 * 86_400;

fn render(t: &JoinToken) -> Node {
    Node::new("join_token")
        .attr("href", href("jointokens", &t.id))
        .attr("id", &t.id)
        .opt(
            "host_name",
            (!t.host_name.is_empty()).then_some(&t.host_name),
        )
        .with(Node::reference(
            "cluster",
            &href("clusters", &t.cluster),
            &t.cluster,
        ))
        .with(Node::leaf("creation_time", iso8601(t.creation_time)))
        .with(Node::leaf("expiration_time", iso8601(t.expiration_time)))
}

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    Some(match (s, &r.method) {
        (["jointokens"], &Method::GET) => {
            let now = now_ms();
            let inv = m.read();
            ok(list(
                "join_tokens",
                inv.join_tokens
                    .values()
                    .filter(|t| t.expiration_time > now)
                    .map(render)
                    .collect(),
                None,
            ))
        }
        (["jointokens"], &Method::POST) => create(m, r).await,
        (["jointokens", id], &Method::GET) => match check_id(id) {
            Err(e) => Err(e),
            Ok(()) => m
                .read()
                .join_tokens
                .get(*id)
                .map(|t| ok(render(t)))
                .unwrap_or_else(|| Err(ApiError::not_found(format!("Join token {id} not found")))),
        },
        (["jointokens", id], &Method::DELETE) => remove(m, id).await,
        _ => return None,
    })
}

async fn create(m: &Arc<Manager>, r: &Req) -> Out {
    let n = if r.body.is_empty() {
        Node::new("join_token")
    } else {
        r.body_node("join_token")?
    };
    check_fields(&n, FIELDS)?;
    let host_name = n.text_of("host_name").unwrap_or("").trim().to_string();
    if !host_name.is_empty() {
        check_name(&host_name, "host_name")?;
    }
    let cluster = {
        let inv = m.read();
        ref_id(
            n.get("cluster"),
            |x| inv.cluster_by_name(x).map(|c| c.id.clone()),
            "cluster",
        )?
    };
    if let Some(c) = &cluster {
        if !m.read().clusters.contains_key(c) {
            return Err(ApiError::not_found(format!("Cluster {c} not found")));
        }
    }
    let life = parse_u64(&n, "expires_in")?.unwrap_or(DEFAULT_LIFETIME_SECS);
    if life == 0 || life > MAX_LIFETIME_SECS {
        return Err(ApiError::bad(format!(
            "expires_in must be between 1 and {MAX_LIFETIME_SECS} seconds"
        )));
    }
    let (secret, t) = crate::register::create_join_token(m, &host_name, cluster, life)
        .await
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        render(&t).with(Node::leaf("token", secret)),
    ))
}

async fn remove(m: &Arc<Manager>, id: &str) -> Out {
    check_id(id)?;
    let gone = m
        .remove::<JoinToken>(id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if gone.is_none() {
        return Err(ApiError::not_found(format!("Join token {id} not found")));
    }
    ok(Node::new("action").with(Node::leaf("status", "complete")))
}
