//! The HTTPS server: ovirt-imageio's `/images/{ticket}` protocol as its public client
//! (`ovirt_imageio.client`, the SDK's examples) speaks it.
//!
//! - `OPTIONS /images/{ticket}` (or `*`): `{"features": [...], "max_readers", "max_writers"}`
//! - `GET /images/{ticket}` with `Range: bytes=a-b`: 206 and the bytes
//! - `PUT /images/{ticket}` with `Content-Range: bytes a-b/*` and `Content-Length`
//!   (`?flush=y|n`)
//! - `PATCH /images/{ticket}` `{"op": "zero", "offset", "size", "flush"}` or `{"op": "flush"}`
//! - `GET /images/{ticket}/extents?context=zero`
//! - `GET /images/{ticket}/checksum[?algorithm=blake2b&block_size=N]` and
//!   `/checksum/algorithms`
//! - `GET /info/`
//!
//! On the proxy every ticket names a host's ticket URL and each request is forwarded
//! there, after the proxy's own ticket allowed it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OnceCell, Semaphore};
use tracing::{debug, info, warn};

use crate::backend::{Backend, Extent, FileBackend, NbdBackend};
use crate::ticket::{Op, Role, Target, Ticket, TicketError, Tickets};

/// Bytes read from or written to a backend at once.
pub const CHUNK: usize = 4 << 20;
/// PUT body frames at least this large are written as they came; smaller ones are
/// joined first.
const SMALL_FRAME: usize = 64 << 10;
/// Largest PATCH body.
pub const MAX_PATCH_BODY: usize = 4096;
/// Proxy connections to one remote ticket, at most.
const MAX_REMOTE_CONNS: usize = 16;
/// imageio's default checksum block size, and the range it accepts.
pub const CHECKSUM_BLOCK: u64 = 4 << 20;
const CHECKSUM_MIN: u64 = CHECKSUM_BLOCK / 4;
const CHECKSUM_MAX: u64 = CHECKSUM_BLOCK * 4;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections, at most (TLS established).
    pub max_connections: usize,
    /// Connections in their TLS handshake, at most, and per source.
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    pub handshake_timeout: Duration,
    /// Waiting for a request's headers (also an idle keep-alive connection), or for the
    /// next part of a body.
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_handshakes: 64,
            max_handshakes_per_source: 16,
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// What a ticket was opened as.
enum Opened {
    Local(Backend),
    Remote(RemotePool),
}

/// A ticket's opened backend, opened once (the ticket it belongs to, weakly).
type OpenedSlot = (std::sync::Weak<Ticket>, Arc<OnceCell<Arc<Opened>>>);

/// An image server: a host's data server or the Manager's proxy.
pub struct ImageServer {
    tickets: Arc<Tickets>,
    limits: Limits,
    /// TLS to the hosts' servers (proxy).
    remote_tls: Option<Arc<rustls::ClientConfig>>,
    opened: Mutex<std::collections::HashMap<String, OpenedSlot>>,
    /// The local (unix socket) service's path, which OPTIONS advertises as imageio's
    /// `unix_socket` once [`ImageServer::serve_local`] serves it.
    local_socket: std::sync::OnceLock<String>,
    /// The proxy may use a local host's `unix_socket` (default yes).
    local_hosts_by_socket: std::sync::atomic::AtomicBool,
}

/// Where a request came from (for the logs).
#[derive(Debug, Clone, Copy)]
enum Peer {
    Tcp(SocketAddr),
    Local,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Local => f.write_str("local"),
        }
    }
}

/// Bytes read from a TCP connection at once, under TLS (rustls asks for 4 KiB).
const TCP_READ_BUFFER: usize = 256 << 10;

/// An HTTP error as imageio answers it: a status and a plain text message.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub msg: String,
    /// Close the connection after the answer (imageio does on authorization errors).
    pub close: bool,
}

impl HttpError {
    fn new(status: StatusCode, msg: impl Into<String>) -> HttpError {
        HttpError {
            status,
            msg: msg.into(),
            close: false,
        }
    }
    fn bad(msg: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, msg)
    }
}

impl From<TicketError> for HttpError {
    fn from(e: TicketError) -> Self {
        HttpError {
            status: StatusCode::FORBIDDEN,
            msg: format!("You are not allowed to access this resource: {e}"),
            close: true,
        }
    }
}

impl From<crate::backend::BackendError> for HttpError {
    fn from(e: crate::backend::BackendError) -> Self {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backend error: {e}"),
        )
    }
}

type HResult<T> = Result<T, HttpError>;

fn full(b: impl Into<Bytes>) -> ResBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn json_response(v: serde_json::Value) -> Response<ResBody> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_response(e: HttpError) -> Response<ResBody> {
    let mut r = Response::new(full(format!("{}\n", e.msg)));
    *r.status_mut() = e.status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    if e.close {
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A response body fed by a task through a channel.
struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// `bytes=a-b` or `bytes=a-` (imageio takes no suffix ranges or lists).
pub fn parse_range(v: &str) -> HResult<(u64, Option<u64>)> {
    let bad = || {
        HttpError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("Invalid range: {v:?}"),
        )
    };
    let r = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = r.split_once('-').ok_or_else(bad)?;
    if a.is_empty() {
        return Err(HttpError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "suffix-byte-range-spec not supported",
        ));
    }
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last = if b.trim().is_empty() {
        None
    } else {
        let l: u64 = b.trim().parse().map_err(|_| bad())?;
        if l < first {
            return Err(bad());
        }
        Some(l)
    };
    Ok((first, last))
}

/// `bytes a-b/*` or `bytes a-b/total` (a PUT's place in the image).
pub fn parse_content_range(v: &str) -> HResult<(u64, u64)> {
    let bad = || HttpError::bad(format!("Invalid Content-Range: {v:?}"));
    let r = v.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, _total) = r.split_once('/').ok_or_else(bad)?;
    let (a, b) = span.split_once('-').ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok((first, last))
}

fn query_param<'a>(q: Option<&'a str>, key: &str) -> Option<&'a str> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn allowed_range(t: &Ticket, offset: u64, size: u64) -> HResult<()> {
    if offset.checked_add(size).is_none_or(|e| e > t.spec.size) {
        return Err(HttpError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "Requested range out of allowed range: offset={offset} size={size} ticket size={}",
                t.spec.size
            ),
        ));
    }
    Ok(())
}

/// The blake2b block checksum imageio computes (blkhash): the BLAKE2b-256 of the
/// BLAKE2b-256 digests of each `block`-byte block of the image.
pub struct BlockHash {
    outer: blake2::Blake2b<blake2::digest::consts::U32>,
    block: u64,
    zero_digest: Vec<u8>,
}

impl BlockHash {
    pub fn new(block: u64) -> BlockHash {
        use blake2::Digest;
        let zero_digest =
            blake2::Blake2b::<blake2::digest::consts::U32>::digest(vec![0u8; block as usize])
                .to_vec();
        BlockHash {
            outer: Default::default(),
            block,
            zero_digest,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use blake2::Digest;
        if data.len() as u64 == self.block && data.iter().all(|b| *b == 0) {
            self.outer.update(&self.zero_digest);
        } else {
            self.outer
                .update(blake2::Blake2b::<blake2::digest::consts::U32>::digest(data));
        }
    }

    pub fn zero(&mut self, len: u64) {
        use blake2::Digest;
        if len == self.block {
            self.outer.update(&self.zero_digest);
        } else {
            self.outer
                .update(blake2::Blake2b::<blake2::digest::consts::U32>::digest(
                    vec![0u8; len as usize],
                ));
        }
    }

    pub fn hexdigest(self) -> String {
        use blake2::Digest;
        self.outer
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Whether [start, start+len) lies wholly in zero extents.
fn all_zero(extents: &[Extent], start: u64, len: u64) -> bool {
    let end = start + len;
    let i = extents.partition_point(|e| e.start + e.length <= start);
    let mut pos = start;
    for e in &extents[i..] {
        if e.start > pos || !e.zero {
            return false;
        }
        pos = e.start + e.length;
        if pos >= end {
            return true;
        }
    }
    false
}

impl ImageServer {
    pub fn new(
        role: Role,
        limits: Limits,
        remote_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<ImageServer> {
        Arc::new(ImageServer {
            tickets: Tickets::new(role),
            limits,
            remote_tls,
            opened: Mutex::new(Default::default()),
            local_socket: std::sync::OnceLock::new(),
            local_hosts_by_socket: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Whether the proxy reaches a host on this machine through the host's local
    /// service socket (imageio's proxy does) or always over TLS.
    pub fn set_local_hosts_by_socket(&self, on: bool) {
        self.local_hosts_by_socket
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn tickets(&self) -> &Arc<Tickets> {
        &self.tickets
    }

    /// The ticket's opened backend (opened once per ticket, dropped with it).
    async fn open(&self, t: &Arc<Ticket>) -> HResult<Arc<Opened>> {
        let cell = {
            let mut m = self.opened.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, (w, _)| w.strong_count() > 0);
            let e = m
                .entry(t.spec.uuid.clone())
                .or_insert_with(|| (Arc::downgrade(t), Arc::new(OnceCell::new())));
            if !std::ptr::eq(e.0.as_ptr(), Arc::as_ptr(t)) {
                // A replaced ticket of the same id: open anew.
                *e = (Arc::downgrade(t), Arc::new(OnceCell::new()));
            }
            e.1.clone()
        };
        let o = cell
            .get_or_try_init(|| async {
                let o = match &t.target {
                    Target::File(p) => Opened::Local(Backend::File(FileBackend::open(
                        p,
                        t.may(Op::Write),
                        t.spec.sparse,
                    )?)),
                    Target::Nbd(p) => Opened::Local(Backend::Nbd(NbdBackend::open(p).await?)),
                    Target::Remote { host, port, path } => {
                        let tls = self.remote_tls.clone().ok_or_else(|| {
                            HttpError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "no TLS for remote tickets",
                            )
                        })?;
                        Opened::Remote(RemotePool {
                            host: host.clone(),
                            port: *port,
                            path: path.clone(),
                            tls,
                            idle: Mutex::new(Vec::new()),
                            tcp_is_local: std::sync::atomic::AtomicBool::new(false),
                            may_use_local: self
                                .local_hosts_by_socket
                                .load(std::sync::atomic::Ordering::Relaxed),
                            local: Mutex::new(None),
                        })
                    }
                };
                Ok::<_, HttpError>(Arc::new(o))
            })
            .await?;
        Ok(o.clone())
    }

    /// Serves HTTPS on `listener` until the process ends, with the TLS configuration
    /// `tls` gives at each connection (certificates may change while it runs).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static,
    ) {
        let gate = halyard_common::net::HandshakeGate::new(
            self.limits.max_handshakes,
            self.limits.max_handshakes_per_source,
        );
        let conns = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (mut place, _) = gate.enter(peer.ip());
            let acceptor = tokio_rustls::TlsAcceptor::from(tls());
            let me = self.clone();
            let conns = conns.clone();
            tokio::spawn(async move {
                let tcp = tokio::io::BufReader::with_capacity(TCP_READ_BUFFER, tcp);
                let accepted = tokio::select! {
                    r = tokio::time::timeout(me.limits.handshake_timeout, acceptor.accept(tcp)) => r,
                    _ = &mut place.evicted => return,
                };
                drop(place);
                let Ok(Ok(tls)) = accepted else {
                    return;
                };
                let Ok(_permit) = conns.try_acquire_owned() else {
                    debug!(%peer, "too many connections; refusing");
                    return;
                };
                me.serve_conn(tls, Peer::Tcp(peer)).await;
            });
        }
    }

    /// Serves imageio's local service on a unix socket until the process ends: the
    /// same protocol without TLS, for clients on this host (imageio's `[local]`
    /// service). OPTIONS then names `path` as `unix_socket`, and the imageio client
    /// switches to it when it finds itself on the server's host. Tickets are checked
    /// as on the TCP port; the socket's directory decides who may connect at all.
    pub async fn serve_local(self: Arc<Self>, listener: tokio::net::UnixListener, path: String) {
        let _ = self.local_socket.set(path);
        let conns = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let (s, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept (local)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                debug!("too many local connections; refusing");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.serve_conn(s, Peer::Local).await;
            });
        }
    }

    async fn serve_conn<I>(self: Arc<Self>, io: I, peer: Peer)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let read = self.limits.read_timeout;
        let me = self;
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req, peer).await) }
        });
        let r = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read)
            .serve_connection(TokioIo::new(io), svc)
            .await;
        if let Err(e) = r {
            debug!(%peer, error = %e, "connection ended");
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<ResBody> {
        match self.route(req, peer).await {
            Ok(r) => r,
            Err(e) => error_response(e),
        }
    }

    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> HResult<Response<ResBody>> {
        let path = req.uri().path().to_string();
        if path == "/info" || path == "/info/" {
            return Ok(json_response(json!({"version": crate::VERSION})));
        }
        let rest = path.strip_prefix("/images/").ok_or_else(|| {
            HttpError::new(StatusCode::NOT_FOUND, format!("No handler for {path:?}"))
        })?;
        let (id, sub) = match rest.split_once('/') {
            Some((id, sub)) => (id, sub),
            None => (rest, ""),
        };
        if id.is_empty() {
            return Err(HttpError::bad("Ticket id is required"));
        }
        if id == "*" && sub.is_empty() && req.method() == Method::OPTIONS {
            let mut v = json!({"features": ["checksum", "extents", "flush", "zero"]});
            self.advertise_local(&mut v);
            let mut r = json_response(v);
            r.headers_mut()
                .insert("allow", HeaderValue::from_static("OPTIONS,GET,PUT,PATCH"));
            return Ok(r);
        }
        let t = self.tickets.get(id)?;
        let _conn = t.connect();
        let opened = self.open(&t).await?;
        if let Opened::Remote(pool) = &*opened {
            return self.forward(&t, pool, req, sub).await;
        }
        let Opened::Local(b) = &*opened else {
            unreachable!("matched above")
        };
        let method = req.method().clone();
        debug!(%peer, %method, transfer = %t.transfer(), sub, "request");
        match (method, sub) {
            (Method::OPTIONS, "") => self.options(&t, b),
            (Method::GET, "") => self.get(&t, &opened, req).await,
            (Method::PUT, "") => self.put(&t, b, req).await,
            (Method::PATCH, "") => self.patch(&t, b, req).await,
            (Method::GET, "extents") => {
                let _op = t.begin(Op::Read, 0)?;
                match query_param(req.uri().query(), "context").unwrap_or("zero") {
                    "zero" => {}
                    "dirty" => {
                        return Err(HttpError::new(
                            StatusCode::NOT_FOUND,
                            "Ticket does not support dirty extents",
                        ))
                    }
                    c => return Err(HttpError::bad(format!("Invalid context: {c:?}"))),
                }
                info!(transfer = %t.transfer(), "EXTENTS");
                let ex = b.extents().await?;
                Ok(json_response(serde_json::to_value(ex).unwrap_or_default()))
            }
            (Method::GET, "checksum") => self.checksum(&t, b, req.uri().query()).await,
            (Method::GET, "checksum/algorithms") => {
                Ok(json_response(json!({"algorithms": ["blake2b"]})))
            }
            (m, s) => Err(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{m} is not allowed on /images/{{ticket}}{}{s}",
                    if s.is_empty() { "" } else { "/" }
                ),
            )),
        }
    }

    /// imageio's `unix_socket` option, when the local service runs.
    fn advertise_local(&self, v: &mut serde_json::Value) {
        if let Some(p) = self.local_socket.get() {
            v["unix_socket"] = json!(p);
        }
    }

    fn options(&self, t: &Arc<Ticket>, b: &Backend) -> HResult<Response<ResBody>> {
        if !t.may(Op::Read) {
            return Err(TicketError::NotAllowed("read").into());
        }
        t.touch();
        let (features, allow): (&[&str], &str) = if t.may(Op::Write) {
            (
                &["checksum", "extents", "flush", "zero"],
                "OPTIONS,GET,PUT,PATCH",
            )
        } else {
            (&["checksum", "extents"], "OPTIONS,GET")
        };
        let w = b.workers();
        let mut v = json!({"features": features, "max_readers": w, "max_writers": w});
        self.advertise_local(&mut v);
        let mut r = json_response(v);
        r.headers_mut()
            .insert("allow", HeaderValue::from_static(allow));
        Ok(r)
    }

    async fn get(
        &self,
        t: &Arc<Ticket>,
        opened: &Arc<Opened>,
        req: Request<Incoming>,
    ) -> HResult<Response<ResBody>> {
        let Opened::Local(b) = &**opened else {
            unreachable!("local")
        };
        let range = match req.headers().get(RANGE) {
            Some(v) => Some(parse_range(
                v.to_str().map_err(|_| HttpError::bad("bad Range"))?,
            )?),
            None => None,
        };
        let avail = b.size()?.min(t.spec.size);
        let (offset, size) = match range {
            Some((first, Some(last))) => (first, last - first + 1),
            Some((first, None)) => (first, avail.saturating_sub(first)),
            None => (0, avail),
        };
        allowed_range(t, offset, size)?;
        if offset.checked_add(size).is_none_or(|e| e > avail) {
            return Err(HttpError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("Requested range out of available range: offset={offset} size={size} image size={avail}"),
            ));
        }
        let op = t.begin(Op::Read, offset)?;
        debug!(transfer = %t.transfer(), offset, size, "READ");
        let (tx, rx) = mpsc::channel(2);
        let opened = opened.clone();
        tokio::spawn(async move {
            let Opened::Local(b) = &*opened else { return };
            let mut pos = offset;
            let end = offset + size;
            while pos < end {
                if let Err(e) = op.check() {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                let n = (end - pos).min(CHUNK as u64) as usize;
                match b.read(pos, n).await {
                    Ok(d) => {
                        op.add(n as u64);
                        if tx.send(Ok(Bytes::from(d))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "read failed");
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                pos += n as u64;
            }
        });
        let mut r = Response::new(ChannelBody(rx).boxed());
        let h = r.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let disposition = match &t.spec.filename {
            Some(f) => format!("attachment; filename={f}"),
            None => "attachment".into(),
        };
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            h.insert("content-disposition", v);
        }
        if range.is_some() {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "bytes {offset}-{}/{}",
                (offset + size).saturating_sub(1),
                t.spec.size
            )) {
                h.insert(CONTENT_RANGE, v);
            }
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        Ok(r)
    }

    async fn put(
        &self,
        t: &Arc<Ticket>,
        b: &Backend,
        req: Request<Incoming>,
    ) -> HResult<Response<ResBody>> {
        let len: u64 = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| HttpError::bad("Content-Length header is required"))?;
        let offset = match req.headers().get(CONTENT_RANGE) {
            Some(v) => {
                let (first, last) = parse_content_range(
                    v.to_str()
                        .map_err(|_| HttpError::bad("bad Content-Range"))?,
                )?;
                if last - first + 1 != len {
                    return Err(HttpError::bad(format!(
                        "Content-Range {first}-{last} does not match Content-Length {len}"
                    )));
                }
                first
            }
            None => 0,
        };
        let flush = match query_param(req.uri().query(), "flush").unwrap_or("y") {
            "y" => true,
            "n" => false,
            x => return Err(HttpError::bad(format!("Invalid flush value: {x:?}"))),
        };
        if !t.may(Op::Write) {
            return Err(TicketError::NotAllowed("write").into());
        }
        allowed_range(t, offset, len)?;
        let op = t.begin(Op::Write, offset)?;
        debug!(transfer = %t.transfer(), offset, len, flush, "WRITE");
        let mut body = req.into_body();
        let mut got: u64 = 0;
        let mut pos = offset;
        // The next chunk is received while the one before it is written.
        let mut pending: Option<Vec<Bytes>> = None;
        loop {
            let next = self.read_chunk(&mut body, len, &mut got);
            let received = match pending.take() {
                Some(data) => {
                    let n: u64 = data.iter().map(|d| d.len() as u64).sum();
                    let write = async {
                        op.check()?;
                        b.write(pos, data).await.map_err(HttpError::from)
                    };
                    let (w, r) = tokio::join!(write, next);
                    w?;
                    op.add(n);
                    pos += n;
                    r
                }
                None => next.await,
            };
            match received.map_err(|e| {
                HttpError::bad(format!("{}; written so far: {}", e.msg, pos - offset))
            })? {
                Some(chunk) => pending = Some(chunk),
                None => break,
            }
        }
        if got != len {
            return Err(HttpError::bad(format!(
                "Partial content: got {got} of {len} bytes"
            )));
        }
        if flush {
            b.flush().await?;
        }
        Ok(Response::new(full(Bytes::new())))
    }

    /// The next part of a PUT body: whole frames of [`CHUNK`] bytes or a little more,
    /// kept as they came (not joined), or `None` at its end; `got` counts what came,
    /// `len` is what may come.
    async fn read_chunk(
        &self,
        body: &mut Incoming,
        len: u64,
        got: &mut u64,
    ) -> HResult<Option<Vec<Bytes>>> {
        let mut parts = Vec::new();
        // Frames smaller than SMALL_FRAME (a client sending a byte at a time) are
        // joined, so a chunk holds at most 2 * CHUNK / SMALL_FRAME + 2 buffers.
        let mut small = bytes::BytesMut::new();
        let mut n = 0usize;
        while n < CHUNK {
            let frame = tokio::time::timeout(self.limits.read_timeout, body.frame())
                .await
                .map_err(|_| HttpError::bad("Timed out reading the request body"))?;
            let d = match frame {
                None => break,
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    return Err(HttpError::bad(format!(
                        "Partial content: got {got} of {len} bytes ({e})"
                    )))
                }
            };
            *got += d.len() as u64;
            if *got > len {
                return Err(HttpError::bad("More data than Content-Length"));
            }
            n += d.len();
            if d.len() >= SMALL_FRAME {
                if !small.is_empty() {
                    parts.push(small.split().freeze());
                }
                parts.push(d);
            } else {
                small.extend_from_slice(&d);
            }
        }
        if !small.is_empty() {
            parts.push(small.freeze());
        }
        Ok((n > 0).then_some(parts))
    }

    async fn patch(
        &self,
        t: &Arc<Ticket>,
        b: &Backend,
        req: Request<Incoming>,
    ) -> HResult<Response<ResBody>> {
        let body = http_body_util::Limited::new(req.into_body(), MAX_PATCH_BODY);
        let body = tokio::time::timeout(self.limits.read_timeout, body.collect())
            .await
            .map_err(|_| HttpError::bad("Timed out reading the request body"))?
            .map_err(|e| HttpError::bad(format!("Invalid request body: {e}")))?
            .to_bytes();
        let msg: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| HttpError::bad(format!("Invalid JSON message {e}")))?;
        let int = |k: &str, default: Option<u64>| -> HResult<u64> {
            match msg.get(k) {
                None => default
                    .ok_or_else(|| HttpError::bad(format!("Missing required value for {k:?}"))),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| HttpError::bad(format!("Invalid value for {k:?}: {v}"))),
            }
        };
        if !t.may(Op::Write) {
            return Err(TicketError::NotAllowed("write").into());
        }
        match msg.get("op").and_then(|o| o.as_str()) {
            Some("zero") => {
                let size = int("size", None)?;
                let offset = int("offset", Some(0))?;
                let flush = match msg.get("flush") {
                    None => false,
                    Some(v) => v.as_bool().ok_or_else(|| {
                        HttpError::bad(format!("Invalid value for \"flush\": {v}"))
                    })?,
                };
                allowed_range(t, offset, size)?;
                let op = t.begin(Op::Write, offset)?;
                debug!(transfer = %t.transfer(), offset, size, flush, "ZERO");
                b.zero(offset, size, t.spec.sparse).await?;
                op.add(size);
                if flush {
                    b.flush().await?;
                }
            }
            Some("flush") => {
                let _op = t.begin(Op::Write, 0)?;
                info!(transfer = %t.transfer(), "FLUSH");
                b.flush().await?;
            }
            other => {
                return Err(HttpError::bad(format!(
                    "Invalid value for \"op\": {other:?} (zero or flush)"
                )))
            }
        }
        Ok(Response::new(full(Bytes::new())))
    }

    async fn checksum(
        &self,
        t: &Arc<Ticket>,
        b: &Backend,
        q: Option<&str>,
    ) -> HResult<Response<ResBody>> {
        match query_param(q, "algorithm").unwrap_or("blake2b") {
            "blake2b" => {}
            a => {
                return Err(HttpError::bad(format!(
                    "Unsupported algorithm {a:?} (blake2b)"
                )))
            }
        }
        let block: u64 = match query_param(q, "block_size") {
            None => CHECKSUM_BLOCK,
            Some(v) => v
                .parse()
                .map_err(|_| HttpError::bad(format!("Invalid block size: {v:?}")))?,
        };
        if !(CHECKSUM_MIN..=CHECKSUM_MAX).contains(&block) {
            return Err(HttpError::bad(format!(
                "Block size out of allowed range: {CHECKSUM_MIN}-{CHECKSUM_MAX}"
            )));
        }
        if !block.is_multiple_of(4096) {
            return Err(HttpError::bad("Block size is not aligned to 4096"));
        }
        let op = t.begin(Op::Read, 0)?;
        info!(transfer = %t.transfer(), block, "CHECKSUM");
        let size = b.size()?;
        let extents = b.extents().await?;
        let mut h = BlockHash::new(block);
        let mut pos = 0u64;
        while pos < size {
            op.check()?;
            let n = (size - pos).min(block);
            if all_zero(&extents, pos, n) {
                h.zero(n);
            } else {
                let d = b.read(pos, n as usize).await?;
                h.update(&d);
            }
            pos += n;
        }
        drop(op);
        Ok(json_response(json!({
            "algorithm": "blake2b",
            "block_size": block,
            "checksum": h.hexdigest(),
        })))
    }

    /// The proxy: the request goes on to the host's ticket URL.
    async fn forward(
        &self,
        t: &Arc<Ticket>,
        pool: &RemotePool,
        req: Request<Incoming>,
        sub: &str,
    ) -> HResult<Response<ResBody>> {
        let op = match *req.method() {
            Method::GET | Method::OPTIONS => Op::Read,
            Method::PUT | Method::PATCH => Op::Write,
            ref m => {
                return Err(HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{m} is not allowed"),
                ))
            }
        };
        if !t.may(op) {
            return Err(
                TicketError::NotAllowed(if op == Op::Read { "read" } else { "write" }).into(),
            );
        }
        let offset = req
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_content_range(v).ok())
            .map(|r| r.0)
            .or_else(|| {
                req.headers()
                    .get(RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_range(v).ok())
                    .map(|r| r.0)
            })
            .unwrap_or(0);
        let guard = Arc::new(t.begin(op, offset)?);
        let is_options = *req.method() == Method::OPTIONS;
        if is_options {
            t.touch();
        }
        let mut uri = pool.path.clone();
        if !sub.is_empty() {
            uri.push('/');
            uri.push_str(sub);
        }
        if let Some(q) = req.uri().query() {
            uri.push('?');
            uri.push_str(q);
        }
        let (parts, body) = req.into_parts();
        let mut b = Request::builder().method(parts.method.clone()).uri(uri);
        for h in [CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE] {
            if let Some(v) = parts.headers.get(&h) {
                b = b.header(h, v);
            }
        }
        b = b.header(hyper::header::HOST, format!("{}:{}", pool.host, pool.port));
        let counting = {
            let g = guard.clone();
            let upload = op == Op::Write;
            body.map_frame(move |f| {
                if upload {
                    if let Some(d) = f.data_ref() {
                        g.add(d.len() as u64);
                    }
                }
                f
            })
            .map_err(BoxError::from)
            .boxed()
        };
        let fwd = b
            .body(counting)
            .map_err(|e| HttpError::bad(format!("cannot forward: {e}")))?;
        let res = pool.send(fwd).await.map_err(|e| {
            HttpError::new(
                StatusCode::BAD_GATEWAY,
                format!("Cannot reach the host's image server: {e}"),
            )
        })?;
        let (parts, body) = res.into_parts();
        if is_options && parts.status == StatusCode::OK {
            // A whole body: hyper gives its Content-Length.
            let mut r = Response::new(full(pool.options_answer(body).await?));
            for h in [CONTENT_TYPE, hyper::header::ALLOW] {
                if let Some(v) = parts.headers.get(&h) {
                    r.headers_mut().insert(h, v.clone());
                }
            }
            return Ok(r);
        }
        let download = op == Op::Read;
        let g = guard;
        let body = body
            .map_frame(move |f| {
                if download {
                    if let Some(d) = f.data_ref() {
                        g.add(d.len() as u64);
                    }
                }
                f
            })
            .map_err(BoxError::from)
            .boxed();
        let mut r = Response::new(body);
        *r.status_mut() = parts.status;
        for h in [
            "content-length",
            "content-range",
            "content-type",
            "content-disposition",
            "allow",
        ] {
            if let Some(v) = parts.headers.get(h) {
                r.headers_mut().insert(h, v.clone());
            }
        }
        Ok(r)
    }
}

/// Connections from the proxy to one remote ticket URL.
pub(crate) struct RemotePool {
    host: String,
    port: u16,
    path: String,
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<Vec<hyper::client::conn::http1::SendRequest<ResBody>>>,
    /// Whether a TCP connection to the host came from the host's own address (the
    /// Manager runs on that host: an all-in-one).
    tcp_is_local: std::sync::atomic::AtomicBool,
    may_use_local: bool,
    /// The host's local service socket, used instead of TLS once known, as imageio's
    /// proxy does through its HTTP backend.
    local: Mutex<Option<std::path::PathBuf>>,
}

/// Largest OPTIONS answer the proxy reads from a host.
const MAX_OPTIONS_BODY: usize = 64 << 10;

impl RemotePool {
    /// The host's OPTIONS answer as the proxy gives it: without the host's
    /// `unix_socket` (the client is the proxy's, not the host's), which the proxy
    /// uses itself when the host is this machine.
    async fn options_answer(&self, body: Incoming) -> HResult<Bytes> {
        let body = http_body_util::Limited::new(body, MAX_OPTIONS_BODY)
            .collect()
            .await
            .map_err(|e| {
                HttpError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("Cannot read the host's OPTIONS answer: {e}"),
                )
            })?
            .to_bytes();
        let mut v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            HttpError::new(
                StatusCode::BAD_GATEWAY,
                format!("Invalid OPTIONS answer from the host: {e}"),
            )
        })?;
        let sock = v
            .as_object_mut()
            .and_then(|o| o.remove("unix_socket"))
            .and_then(|s| s.as_str().map(std::path::PathBuf::from));
        if let Some(p) = sock {
            let usable = p.is_absolute() && p.as_os_str().len() < 108;
            if usable
                && self.may_use_local
                && self.tcp_is_local.load(std::sync::atomic::Ordering::Relaxed)
            {
                let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
                if local.is_none() {
                    debug!(socket = %p.display(), "the host is local: using its unix socket");
                    *local = Some(p);
                    // Later requests take new connections, on the socket.
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
            }
        }
        Ok(Bytes::from(v.to_string()))
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<ResBody>, BoxError> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(p) = local {
            match tokio::net::UnixStream::connect(&p).await {
                Ok(s) => return Self::handshake(s).await,
                Err(e) => debug!(socket = %p.display(), error = %e, "local socket; using TLS"),
            }
        }
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await??;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr()?.ip() == tcp.peer_addr()?.ip();
        self.tcp_is_local
            .store(local, std::sync::atomic::Ordering::Relaxed);
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
        let tcp = tokio::io::BufReader::with_capacity(TCP_READ_BUFFER, tcp);
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?;
        Self::handshake(tls).await
    }

    async fn handshake<I>(
        io: I,
    ) -> Result<hyper::client::conn::http1::SendRequest<ResBody>, BoxError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "proxy connection ended");
            }
        });
        Ok(sender)
    }

    async fn send(&self, req: Request<ResBody>) -> Result<Response<Incoming>, BoxError> {
        let mut sender = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|s| !s.is_closed());
            idle.iter()
                .position(|s| s.is_ready())
                .map(|i| idle.swap_remove(i))
        };
        if sender.is_none() {
            sender = Some(self.connect().await?);
        }
        let mut sender = sender.ok_or("no connection")?;
        sender.ready().await?;
        let res = sender.send_request(req).await?;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_REMOTE_CONNS {
            idle.push(sender);
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99").ok(), Some((0, Some(99))));
        assert_eq!(parse_range("bytes=5-").ok(), Some((5, None)));
        assert!(parse_range("bytes=-5").is_err());
        assert!(parse_range("bytes=9-5").is_err());
        assert!(parse_range("items=0-5").is_err());
        assert_eq!(parse_content_range("bytes 0-99/*").ok(), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 10-19/100").ok(), Some((10, 19)));
        assert!(parse_content_range("bytes 19-10/*").is_err());
        assert!(parse_content_range("bytes 0-99").is_err());
    }

    #[test]
    fn zero_blocks_hash_as_zeros() {
        let mut a = BlockHash::new(1 << 20);
        a.zero(1 << 20);
        a.update(&[1, 2, 3]);
        let mut b = BlockHash::new(1 << 20);
        b.update(&vec![0u8; 1 << 20]);
        b.update(&[1, 2, 3]);
        assert_eq!(a.hexdigest(), b.hexdigest());
        let ex = [
            Extent {
                start: 0,
                length: 10,
                zero: true,
                hole: true,
            },
            Extent {
                start: 10,
                length: 10,
                zero: false,
                hole: false,
            },
            Extent {
                start: 20,
                length: 10,
                zero: true,
                hole: false,
            },
        ];
        assert!(all_zero(&ex, 0, 10));
        assert!(!all_zero(&ex, 5, 10));
        assert!(all_zero(&ex, 20, 10));
        assert!(!all_zero(&ex, 20, 11));
    }

    proptest! {
        #[test]
        fn any_range_header_parses_or_is_refused(s in "\\PC{0,40}") {
            let _ = parse_range(&s);
            let _ = parse_content_range(&s);
        }

        #[test]
        fn parsed_ranges_are_ordered(a in 0u64..u64::MAX / 2, l in 0u64..1_000_000) {
            let (f, last) = parse_range(&format!("bytes={a}-{}", a + l)).expect("valid");
            prop_assert_eq!(f, a);
            prop_assert_eq!(last, Some(a + l));
        }
    }
}
