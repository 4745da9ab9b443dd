//! HTTPS: SSO token and logout, the PKI resource, host registration, and the API.
//! Every answer under `/ovirt-engine` is XML or JSON, never HTML; request bodies are
//! read up to `max_body_bytes` and refused past it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::handlers::{self, format_of, ApiError, Req};
use crate::state::Manager;

/// Percent-decoding of `application/x-www-form-urlencoded` and query strings.
pub fn form_decode(s: &str) -> HashMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match h {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), String::new()),
        })
        .collect()
}

async fn read_body(m: &Manager, body: Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let limit = m.cfg.max_body_bytes;
    // Past the limit the rest is read and dropped (up to 16 times the limit), so that
    // the client, still sending, gets the 413 instead of a reset connection.
    let drain = limit.saturating_mul(16);
    let mut body = body;
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > limit {
                out = Vec::new();
                if seen > drain {
                    break;
                }
                continue;
            }
            out.extend_from_slice(&data);
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Operation Failed",
            format!("the request body exceeds {limit} bytes"),
        ));
    }
    Ok(out)
}

async fn token(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let body = match read_body(&m, req.into_body()).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                [("content-type", "application/json")],
                "{}",
            )
                .into_response()
        }
    };
    let f = form_decode(&String::from_utf8_lossy(&body));
    let bad = |msg: String| {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            json!({"error_code": "access_denied", "error": msg}).to_string(),
        )
            .into_response()
    };
    if f.get("grant_type").map(String::as_str) != Some("password") {
        return bad("Unsupported grant_type; use password".into());
    }
    let user = f.get("username").cloned().unwrap_or_default();
    let pass = f.get("password").cloned().unwrap_or_default();
    match m.login(&user, &pass).await {
        Some((t, ttl)) => {
            info!(user = %user, "login");
            let exp = crate::model::now_ms() + ttl.as_millis() as i64;
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                json!({"access_token": t, "scope": f.get("scope").cloned().unwrap_or_else(|| "ovirt-app-api".into()),
                       "exp": exp.to_string(), "token_type": "bearer"})
                .to_string(),
            )
                .into_response()
        }
        None => {
            warn!(user = %user, "login failed");
            m.event(
                1004,
                "warning",
                format!(
                    "User {} failed to log in: invalid credentials.",
                    user.chars().take(64).collect::<String>()
                ),
                None,
                None,
            )
            .await;
            bad(format!(
                "Cannot authenticate user '{}': The username or password is incorrect.",
                user.chars().take(64).collect::<String>()
            ))
        }
    }
}

async fn logout(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    if let Ok(body) = read_body(&m, req.into_body()).await {
        let f = form_decode(&String::from_utf8_lossy(&body));
        if let Some(t) = f.get("token") {
            m.logout(t);
        }
    }
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

async fn pki_resource(State(m): State<Arc<Manager>>, uri: Uri) -> Response {
    let q = form_decode(uri.query().unwrap_or(""));
    match q.get("resource").map(String::as_str) {
        Some("ca-certificate") | Some("engine-certificate") => (
            StatusCode::OK,
            [("content-type", "application/x-x509-ca-cert")],
            m.pki.ca.cert_pem().to_string(),
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain")],
            "unknown resource",
        )
            .into_response(),
    }
}

async fn register(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let q = form_decode(req.uri().query().unwrap_or(""));
    let body = match read_body(&m, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return (e.status, e.detail).into_response(),
    };
    crate::register::handle(&m, &q, &body).await
}

async fn api(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let f = format_of(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = form_decode(req.uri().query().unwrap_or(""));
    let headers: HeaderMap = req.headers().clone();
    // Authentication: a Bearer token (the SDK's way).
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .and_then(|t| m.check_token(t.trim()));
    if user.is_none() {
        let e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid access token is required (POST /ovirt-engine/sso/oauth/token)",
        );
        let mut r = handlers::fault(&e, f);
        r.headers_mut().insert(
            "www-authenticate",
            "Bearer realm=\"ovirt\"".parse().expect("static header"),
        );
        return r;
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    let body = match read_body(&m, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return handlers::fault(&e, f),
    };
    let rest = path
        .trim_start_matches("/ovirt-engine/api")
        .trim_matches('/')
        .to_string();
    let segments: Vec<String> = if rest.is_empty() {
        vec![]
    } else {
        rest.split('/')
            .map(|s| form_decode(s).into_keys().next().unwrap_or_default())
            .collect()
    };
    debug!(%method, %path, "api");
    handlers::dispatch(
        &m,
        Req {
            method,
            segments,
            query,
            body,
            json_body,
            format: f,
        },
        f,
    )
    .await
}

async fn not_found(headers: HeaderMap, method: Method, uri: Uri) -> Response {
    let e = ApiError::not_found(format!("No resource for {method} {}", uri.path()));
    handlers::fault(&e, format_of(&headers))
}

pub fn router(m: Arc<Manager>) -> Router {
    Router::new()
        .route("/ovirt-engine/sso/oauth/token", post(token))
        .route("/ovirt-engine/services/sso-logout", post(logout))
        .route("/ovirt-engine/services/pki-resource", get(pki_resource))
        .route(
            "/ovirt-engine/services/host-register",
            get(register).post(register),
        )
        .route("/ovirt-engine/api", any(api))
        .route("/ovirt-engine/api/", any(api))
        .route("/ovirt-engine/api/{*rest}", any(api))
        .fallback(not_found)
        .with_state(m)
}

/// Serves HTTPS until the process ends.
pub async fn serve(m: Arc<Manager>) -> anyhow::Result<()> {
    let tls = m.engine_tls()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let ip: std::net::IpAddr = m.cfg.address.trim_matches(['[', ']']).parse()?;
    let listener = tokio::net::TcpListener::bind((ip, m.cfg.port)).await?;
    let bound = listener.local_addr()?;
    halyard_common::fsutil::write_atomic(
        &m.cfg.data_dir.join("listen.addr"),
        bound.to_string().as_bytes(),
        0o644,
    )?;
    info!(%bound, "Manager API listening");
    let app = router(m.clone());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let svc = TowerToHyperService::new(app);
            let r = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let f = form_decode("grant_type=password&username=admin%40internal&password=a+b%26c&x");
        assert_eq!(f["username"], "admin@internal");
        assert_eq!(f["password"], "a b&c");
        assert_eq!(f["x"], "");
        let f = form_decode("search=name%3D%22a+b%22&bad=%zz%");
        assert_eq!(f["search"], "name=\"a b\"");
        assert_eq!(f["bad"], "%zz%");
    }
}
