//! Consoles through the Manager, over WebSocket on the API's port.
//!
//! - **Serial console**: `GET /ovirt-engine/services/console/serial/{vm id}` with the
//!   API's Bearer token (the role of oVirt's ovirt-vmconsole proxy). The Manager opens
//!   the VM's serial port on its host (the agent's `HALYARD-CONSOLE` channel on its
//!   VDSM port, which only the Manager's certificate may open) and relays its bytes
//!   as binary WebSocket messages both ways. One session per VM (the agent's rule).
//!   `halyard vms console NAME` is its client.
//! - **VNC over WebSocket** (oVirt's ovirt-websocket-proxy, for noVNC): the
//!   `proxyticket` action of a VM's VNC console gives a one-time ticket, valid
//!   [`PROXY_TICKET_SECS`]; `GET /ovirt-engine/services/websocket-proxy/{ticket}`
//!   then relays the console's RFB stream (the VNC password, from the `ticket`
//!   action, still guards the console itself). The ticket is the capability: used
//!   once, bound to one VM's console, expiring, never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::state::Manager;

/// How long a proxy ticket may wait for its connection (oVirt's default ticket life).
pub const PROXY_TICKET_SECS: u64 = 120;
/// Proxy tickets given and not yet used (older ones are dropped first).
pub const MAX_PROXY_TICKETS: usize = 4096;
/// The largest WebSocket message a client may send.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Where a proxy ticket leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    pub vm: String,
    pub address: String,
    pub port: u16,
}

/// One-time tickets of the VNC WebSocket proxy.
#[derive(Default)]
pub struct ProxyTickets {
    t: Mutex<HashMap<String, (ProxyTarget, Instant)>>,
}

impl ProxyTickets {
    /// A new ticket for `target`, valid `secs`.
    pub fn issue(&self, target: ProxyTarget, secs: u64) -> String {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, (_, until)| *until > now);
        while t.len() >= MAX_PROXY_TICKETS {
            let oldest = t
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => t.remove(&k),
                None => break,
            };
        }
        t.insert(ticket.clone(), (target, now + Duration::from_secs(secs)));
        ticket
    }

    /// Takes a ticket: its target once, while valid.
    pub fn take(&self, ticket: &str) -> Option<ProxyTarget> {
        let mut t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        let (target, until) = t.remove(ticket)?;
        (until > Instant::now()).then_some(target)
    }
}

fn fault(status: StatusCode, detail: impl Into<String>) -> Response {
    let detail = detail.into();
    (
        status,
        [("content-type", "text/plain; charset=utf-8")],
        format!("{detail}\n"),
    )
        .into_response()
}

/// `GET /ovirt-engine/services/console/serial/{vm}`.
pub async fn serial(
    State(m): State<Arc<Manager>>,
    Path(vm): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(user) = crate::server::bearer(&headers).and_then(|t| m.check_token(t)) else {
        return fault(
            StatusCode::UNAUTHORIZED,
            "a valid access token is required (POST /ovirt-engine/sso/oauth/token)",
        );
    };
    if uuid::Uuid::parse_str(&vm).is_err() {
        return fault(StatusCode::NOT_FOUND, "no such VM");
    }
    let (name, host) = {
        let inv = m.read();
        let Some(v) = inv.vms.get(&vm) else {
            return fault(StatusCode::NOT_FOUND, format!("VM {vm} not found"));
        };
        let host = v
            .host
            .as_deref()
            .filter(|_| v.status != "down")
            .and_then(|h| inv.hosts.get(h))
            .map(|h| (h.address.clone(), h.port));
        (v.name.clone(), host)
    };
    let Some((address, port)) = host else {
        return fault(
            StatusCode::CONFLICT,
            format!("VM {name} is not running: it has no serial console now"),
        );
    };
    let agent = match open_serial(&m, &address, port, &vm).await {
        Ok(s) => s,
        Err((status, e)) => return fault(status, e),
    };
    info!(vm = %vm, %user, "serial console opened");
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let r = relay(socket, agent).await;
            info!(vm = %vm, result = ?r, "serial console closed");
        })
}

async fn open_serial(
    m: &Arc<Manager>,
    address: &str,
    port: u16,
    vm: &str,
) -> Result<
    tokio::io::BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    (StatusCode, String),
> {
    let unavailable = |e: String| (StatusCode::BAD_GATEWAY, e);
    let mut s = halyard_client::connect_tls(address, port, m.pki.host_client.clone())
        .await
        .map_err(|e| unavailable(format!("the VM's host cannot be reached: {e}")))?;
    s.write_all(format!("HALYARD-CONSOLE {vm}\n").as_bytes())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut s = tokio::io::BufReader::new(s);
    let mut line = Vec::new();
    let mut limited = (&mut s).take(512);
    let read = limited.read_until(b'\n', &mut line);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(_)) => {}
        _ => return Err(unavailable("the host did not answer".into())),
    }
    let line = String::from_utf8_lossy(&line);
    let line = line.trim_end();
    if line == "OK" {
        return Ok(s);
    }
    // "ERR <code> <message>" from the agent (halyard_hostd::console).
    let mut parts = line.splitn(3, ' ');
    let (tag, code, msg) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let status = match (tag, code) {
        (Some("ERR"), Some("1")) | (Some("ERR"), Some("2")) => StatusCode::NOT_FOUND,
        (Some("ERR"), Some("3")) => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    Err((status, format!("the host refused the console: {msg}")))
}

/// `GET /ovirt-engine/services/websocket-proxy/{ticket}`.
pub async fn vnc(
    State(m): State<Arc<Manager>>,
    Path(ticket): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(t) = m.proxy_tickets.take(&ticket) else {
        debug!("websocket proxy: unknown, used or expired ticket");
        return fault(
            StatusCode::FORBIDDEN,
            "the proxy ticket is unknown, used or expired (POST .../graphicsconsoles/{id}/proxyticket)",
        );
    };
    let addr = format!("{}:{}", t.address.trim_matches(['[', ']']), t.port);
    let connect = tokio::net::TcpStream::connect(&addr);
    let tcp = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(s)) => s,
        _ => return fault(StatusCode::BAD_GATEWAY, "the console cannot be reached"),
    };
    let _ = tcp.set_nodelay(true);
    info!(vm = %t.vm, "VNC WebSocket proxy connected");
    // noVNC asks for the "binary" subprotocol.
    ws.protocols(["binary"])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let r = relay(socket, tcp).await;
            info!(vm = %t.vm, result = ?r, "VNC WebSocket proxy closed");
        })
}

/// Relays a WebSocket (binary or text messages in, binary out) and a byte stream
/// until either ends.
async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocket,
    stream: S,
) -> Result<(), String> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(b))) => wr.write_all(&b).await.map_err(|e| e.to_string())?,
                Some(Ok(Message::Text(t))) => wr.write_all(t.as_bytes()).await.map_err(|e| e.to_string())?,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) => {
                    let _ = ws.send(Message::Close(None)).await;
                    return Ok(());
                }
                Ok(n) => ws
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .map_err(|e| e.to_string())?,
                Err(e) => return Err(e.to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ProxyTarget {
        ProxyTarget {
            vm: "v".into(),
            address: "127.0.0.1".into(),
            port: 5900,
        }
    }

    #[test]
    fn proxy_tickets_are_one_time_and_expire() {
        let t = ProxyTickets::default();
        let a = t.issue(target(), 60);
        assert_eq!(a.len(), 64);
        assert_ne!(a, t.issue(target(), 60), "tickets are random");
        assert_eq!(t.take("guessed"), None);
        assert_eq!(t.take(&a), Some(target()));
        assert_eq!(t.take(&a), None, "a ticket is used once");
        let b = t.issue(target(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.take(&b), None, "an expired ticket is refused");
    }

    #[test]
    fn proxy_tickets_are_bounded() {
        let t = ProxyTickets::default();
        let first = t.issue(target(), 60);
        for _ in 0..MAX_PROXY_TICKETS {
            t.issue(target(), 60);
        }
        assert!(
            t.t.lock().expect("lock").len() <= MAX_PROXY_TICKETS,
            "at most {MAX_PROXY_TICKETS} wait"
        );
        assert_eq!(t.take(&first), None, "the oldest was dropped");
    }
}
