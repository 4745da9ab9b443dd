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
use halyard_common::limits::RateLimit;
use halyard_common::net::HandshakeGate;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::handlers::{self, format_of, ApiError, Req};
use crate::state::{Login, Manager};

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

/// The connection's peer, put into every request by [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

fn peer_of(req: &Request<Body>) -> std::net::IpAddr {
    req.extensions()
        .get::<Peer>()
        .map(|p| halyard_common::net::canonical(p.0.ip()))
        .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
}

async fn read_body(m: &Manager, body: Body) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt;
    let limit = m.cfg.max_body_bytes;
    // Past the limit the rest is read and dropped (up to 16 times the limit), so that
    // the client, still sending, gets the 413 instead of a reset connection.
    let drain = limit.saturating_mul(16);
    let idle = Duration::from_secs(m.cfg.limits.idle_timeout_secs);
    let mut body = body;
    let mut out = Vec::new();
    let mut seen = 0usize;
    loop {
        // A client that stops sending in the middle of a body is not waited for.
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "Operation Failed",
                    format!("no part of the request body came for {} s", idle.as_secs()),
                ))
            }
        };
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
    let peer = peer_of(&req);
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
    let label = crate::state::user_label(&user);
    match m.login(&user, &pass, peer).await {
        Login::Throttled(wait) => {
            static THROTTLED: RateLimit = RateLimit::new(5, Duration::from_secs(10));
            if let Some(suppressed) = THROTTLED.admit() {
                warn!(user = %label, %peer, suppressed, "login refused: too many failures");
            }
            let secs = wait.as_secs().max(1);
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                [("content-type", "application/json")],
                json!({"error_code": "access_denied", "error": format!("Too many failed logins for this user or from this address; retry in {secs} s.")}).to_string(),
            )
                .into_response();
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            r
        }
        Login::Ok { token: t, ttl } => {
            info!(user = %label, "login");
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
        Login::NotPermitted => {
            static REFUSED: RateLimit = RateLimit::new(10, Duration::from_secs(10));
            if let Some(suppressed) = REFUSED.admit() {
                warn!(user = %label, %peer, suppressed, "login refused: no SuperUser role on the system");
                m.event(
                    1004,
                    "warning",
                    format!("User {label} failed to log in from {peer}: the user has no SuperUser role on the system, and Halyard does not enforce finer permissions yet."),
                    None,
                    None,
                )
                .await;
            }
            bad(format!(
                "Cannot log in user '{label}': only users with the SuperUser role on the system may log in (Halyard does not enforce finer permissions yet)."
            ))
        }
        Login::Denied => {
            static FAILED: RateLimit = RateLimit::new(10, Duration::from_secs(10));
            if let Some(suppressed) = FAILED.admit() {
                warn!(user = %label, %peer, suppressed, "login failed");
                m.event(
                    1004,
                    "warning",
                    format!("User {label} failed to log in from {peer}: invalid credentials."),
                    None,
                    None,
                )
                .await;
            }
            bad(format!(
                "Cannot authenticate user '{label}': The username or password is incorrect."
            ))
        }
    }
}

/// Revokes the token however it is sent: `token` in the query (the SDK's way) or in a
/// form body, or as the request's Bearer token.
async fn logout(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let mut tokens: Vec<String> = Vec::new();
    if let Some(t) = form_decode(req.uri().query().unwrap_or("")).remove("token") {
        tokens.push(t);
    }
    if let Some(t) = bearer(req.headers()) {
        tokens.push(t.to_string());
    }
    if let Ok(body) = read_body(&m, req.into_body()).await {
        if let Some(t) = form_decode(&String::from_utf8_lossy(&body)).remove("token") {
            tokens.push(t);
        }
    }
    for t in &tokens {
        m.logout(t.trim());
    }
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

/// The host of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_of(h: &str) -> String {
    let h = h.trim();
    if let Some(rest) = h.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((a, _)) => format!("[{a}]"),
            None => h.to_string(),
        };
    }
    match h.rsplit_once(':') {
        Some((a, p)) if p.bytes().all(|b| b.is_ascii_digit()) => a.to_string(),
        _ => h.to_string(),
    }
}

pub(crate) fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

async fn pki_resource(State(m): State<Arc<Manager>>, uri: Uri) -> Response {
    let q = form_decode(uri.query().unwrap_or(""));
    match q.get("resource").map(String::as_str) {
        Some("ca-certificate") => (
            StatusCode::OK,
            [("content-type", "application/x-x509-ca-cert")],
            m.pki.ca.cert_pem().to_string(),
        )
            .into_response(),
        Some("engine-certificate") => match std::fs::read_to_string(m.pki.dir.join("engine.pem")) {
            Ok(pem) => (
                StatusCode::OK,
                [("content-type", "application/x-x509-ca-cert")],
                pem,
            )
                .into_response(),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "text/plain")],
                "the engine certificate cannot be read",
            )
                .into_response(),
        },
        _ => (
            StatusCode::NOT_FOUND,
            [("content-type", "text/plain")],
            "unknown resource",
        )
            .into_response(),
    }
}

async fn register(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let peer = peer_of(&req);
    let q = form_decode(req.uri().query().unwrap_or(""));
    let join = req
        .headers()
        .get(crate::register::JOIN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    let body = match read_body(&m, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return (e.status, e.detail).into_response(),
    };
    crate::register::handle(&m, peer, &q, join.as_deref(), &body).await
}

async fn api(State(m): State<Arc<Manager>>, req: Request<Body>) -> Response {
    let f = format_of(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = form_decode(req.uri().query().unwrap_or(""));
    let headers: HeaderMap = req.headers().clone();
    // Authentication: a Bearer token (the SDK's way).
    let user = bearer(&headers).and_then(|t| m.check_token(t));
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
            all_content_header: headers
                .get("all-content")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase()),
            host_header: headers
                .get(hyper::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(host_of),
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
        .route(
            "/ovirt-engine/services/sso-logout",
            get(logout).post(logout),
        )
        .route("/ovirt-engine/services/pki-resource", get(pki_resource))
        .route(
            "/ovirt-engine/services/host-register",
            get(register).post(register),
        )
        .route(
            "/ovirt-engine/services/console/serial/{vm}",
            get(crate::consoleproxy::serial),
        )
        .route(
            "/ovirt-engine/services/websocket-proxy/{ticket}",
            get(crate::consoleproxy::vnc),
        )
        .route("/ovirt-engine/api", any(api))
        .route("/ovirt-engine/api/", any(api))
        .route("/ovirt-engine/api/{*rest}", any(api))
        .fallback(not_found)
        .with_state(m)
}

/// Serves HTTPS until the process ends. Connections in their TLS handshake pass a
/// [`HandshakeGate`] (bounded apart from established ones); established connections
/// are capped; a request's headers must come within `header_read_timeout_secs` of the
/// connection being ready for it (which also ends idle keep-alive connections), its
/// body without a pause of `idle_timeout_secs`.
pub async fn serve(m: Arc<Manager>) -> anyhow::Result<()> {
    let tls = m.engine_tls()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    let ip: std::net::IpAddr = m.cfg.address.trim_matches(['[', ']']).parse()?;
    let listener = tokio::net::TcpListener::bind((ip, m.cfg.port)).await?;
    let bound = listener.local_addr()?;
    halyard_common::fsutil::write_atomic(
        &m.cfg.data_dir.join("listen.addr"),
        bound.to_string().as_bytes(),
        0o600,
    )?;
    info!(%bound, "Manager API listening");
    if m.cfg.imageio.enabled {
        let l = tokio::net::TcpListener::bind((ip, m.cfg.imageio.port)).await?;
        let b = l.local_addr()?;
        halyard_common::fsutil::write_atomic(
            &m.cfg.data_dir.join("imageio.addr"),
            b.to_string().as_bytes(),
            0o600,
        )?;
        info!(bound = %b, "image transfer proxy listening");
        let proxy_tls = tls.clone();
        tokio::spawn(m.imageio.clone().serve(l, move || proxy_tls.clone()));
    }
    let app = router(m.clone());
    let limits = m.cfg.limits.clone();
    let gate = HandshakeGate::new(limits.max_handshakes, limits.max_handshakes_per_source);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    static ACCEPT: RateLimit = RateLimit::new(5, Duration::from_secs(10));
    static REFUSED: RateLimit = RateLimit::new(5, Duration::from_secs(10));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(suppressed) = ACCEPT.admit() {
                    warn!(error = %e, suppressed, "accept");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let (mut ticket, evicted) = gate.enter(peer.ip());
        if evicted {
            if let Some(suppressed) = REFUSED.admit() {
                warn!(%peer, suppressed, "too many connections in their TLS handshake; the oldest was closed");
            }
        }
        let connections = connections.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let handshake = Duration::from_secs(limits.handshake_timeout_secs);
            let accepted = tokio::select! {
                r = tokio::time::timeout(handshake, acceptor.accept(tcp)) => r,
                _ = &mut ticket.evicted => return,
            };
            drop(ticket);
            let tls = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let Ok(_permit) = connections.try_acquire_owned() else {
                if let Some(suppressed) = REFUSED.admit() {
                    warn!(%peer, suppressed, "too many connections; refusing");
                }
                return;
            };
            let svc = tower::ServiceBuilder::new()
                .map_request(move |mut r: Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(Peer(peer));
                    r
                })
                .service(app);
            let svc = TowerToHyperService::new(svc);
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
            let r = b
                .http1_only()
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
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
