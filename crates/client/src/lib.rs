//! Client of the host agent's protocol: JSON-RPC 2.0 inside STOMP 1.2 over mutual TLS,
//! as the oVirt engine speaks it to VDSM on port 54321.
//!
//! ```no_run
//! # async fn f(tls: std::sync::Arc<rustls::ClientConfig>) -> Result<(), halyard_client::ClientError> {
//! use halyard_proto::vdsm::{verbs, NoParams};
//! let c = halyard_client::Client::connect("localhost", 54321, tls).await?;
//! let stats = c.call::<verbs::HostGetStats>(&NoParams {}).await?;
//! println!("{}", stats.cpu_idle);
//! # Ok(()) }
//! ```

pub mod http;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halyard_proto::jsonrpc::{Notification, Request, Response, RpcError};
use halyard_proto::stomp::{self, Command, Frame, Item};
use halyard_proto::vdsm::{dest, Verb, CORRELATION_HEADER};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_rustls::client::TlsStream;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[source] std::io::Error),
    #[error("TLS setup: {0}")]
    Pki(#[from] halyard_pki::PkiError),
    #[error("the server sent a STOMP ERROR: {0}")]
    StompError(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("decoding the result: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Disconnected,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Response>>>>;

/// Events a connection queues for a receiver that has not read them yet (each slot
/// is allocated up front); a receiver further behind is told it lagged.
pub const EVENT_QUEUE: usize = 256;

/// A connection to one host agent.
pub struct Client {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    events: broadcast::Sender<Notification>,
    reply_to: String,
    next_id: AtomicU64,
    timeout: Duration,
    id_prefix: String,
    /// Set (under the `pending` lock) when the connection ended: no call can wait for
    /// an answer that will never come.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// Opens a TLS connection (no STOMP yet).
pub async fn connect_tls(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    connect_tls_from(None, host, port, tls).await
}

async fn tcp_from(local: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        if a.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.bind(std::net::SocketAddr::new(local, 0))?;
        match sock.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address of that family")
    }))
}

/// [`connect_tls`] from a given local address.
pub async fn connect_tls_from(
    local: Option<std::net::IpAddr>,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ClientError> {
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(Duration::from_secs(10), tcp_from(local, &addr))
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(10)))?
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let name = halyard_pki::server_name(host.trim_start_matches('[').trim_end_matches(']'))?;
    let conn = tokio_rustls::TlsConnector::from(tls);
    tokio::time::timeout(Duration::from_secs(10), conn.connect(name, tcp))
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(10)))?
        .map_err(ClientError::Tls)
}

impl Client {
    /// Connects, subscribes to the reply queue and to events, and sends CONNECT as the
    /// engine does (`heart-beat:0,24000`).
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let stream = connect_tls(host, port, tls).await?;
        Client::over(stream, host).await
    }

    /// Runs the protocol over an established stream.
    pub async fn over<S>(stream: S, host: &str) -> Result<Client, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let reply_to = dest::RESPONSES.to_string();
        let reply_sub = uuid::Uuid::new_v4().to_string();
        let event_sub = uuid::Uuid::new_v4().to_string();
        let mut hello = Vec::new();
        hello.extend(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", host)
                .header("heart-beat", "0,24000")
                .encode(),
        );
        hello.extend(
            Frame::new(Command::Subscribe)
                .header("destination", reply_to.as_str())
                .header("id", reply_sub.as_str())
                .header("ack", "auto")
                .encode(),
        );
        hello.extend(
            Frame::new(Command::Subscribe)
                .header("destination", dest::EVENTS)
                .header("id", event_sub.as_str())
                .header("ack", "auto")
                .encode(),
        );
        wr.write_all(&hello).await.map_err(ClientError::Tls)?;
        wr.flush().await.map_err(ClientError::Tls)?;

        let mut dec = stomp::Decoder::new(stomp::Limits::default());
        let mut buf = vec![0u8; 16 * 1024];
        // Wait for CONNECTED.
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(item) = dec
                    .next_item()
                    .map_err(|e| ClientError::Protocol(e.to_string()))?
                {
                    if let Item::Frame(f) = item {
                        match f.command {
                            Command::Connected => return Ok(f),
                            Command::Error => return Err(stomp_error(&f)),
                            _ => {}
                        }
                    }
                }
                let n = rd.read(&mut buf).await.map_err(ClientError::Tls)?;
                if n == 0 {
                    return Err(ClientError::Disconnected);
                }
                dec.feed(&buf[..n]);
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(Duration::from_secs(10)))??;
        if connected.headers.get("version") != Some("1.2") {
            return Err(ClientError::Protocol(format!(
                "server speaks STOMP {:?}",
                connected.headers.get("version")
            )));
        }

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(data) = out_rx.recv().await {
                if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        // Each slot is allocated up front (a Manager holds a connection per host): a
        // receiver that falls further behind is told it lagged (see `events`).
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let reader_pending = pending.clone();
        let reader_events = events.clone();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            let r = read_loop(&mut rd, dec, buf, &reader_pending, &reader_events).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "client connection ended");
            }
            // Fail everything still waiting, and every later call.
            if let Ok(mut p) = reader_pending.lock() {
                reader_closed.store(true, Ordering::SeqCst);
                p.clear();
            }
        });
        Ok(Client {
            out: out_tx,
            pending,
            events,
            reply_to,
            next_id: AtomicU64::new(1),
            timeout: Duration::from_secs(300),
            id_prefix: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            closed,
        })
    }

    /// Sets how long a call waits for its answer (default 300 s).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// Events (`|virt|VM_status|...` etc.) sent by the agent from now on.
    pub fn events(&self) -> broadcast::Receiver<Notification> {
        self.events.subscribe()
    }

    /// Calls a method with raw JSON params; VDSM errors come back as [`ClientError::Rpc`].
    pub async fn call_value(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_value_with(method, params, None).await
    }

    /// Like [`Client::call_value`], with a correlation (flow) id header.
    pub async fn call_value_with(
        &self,
        method: &str,
        params: Value,
        correlation_id: Option<&str>,
    ) -> Result<Value, ClientError> {
        let id = format!(
            "{}-{}",
            self.id_prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let req = Request::new(id.clone(), method, params);
        let body = serde_json::to_vec(&req.to_value())?;
        let rx = self.register(&id)?;
        self.send_frame(&body, correlation_id)?;
        let resp = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(ClientError::Disconnected),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
                return Err(ClientError::Timeout(self.timeout));
            }
        };
        resp.outcome.map_err(ClientError::Rpc)
    }

    /// Calls a typed verb.
    pub async fn call<V: Verb>(&self, params: &V::Params) -> Result<V::Result, ClientError> {
        let p = serde_json::to_value(params)?;
        let v = self.call_value(V::METHOD, p).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Sends a raw SEND body to the request queue and waits for the reply to `id`
    /// (for tests of malformed requests).
    pub async fn send_raw(&self, body: &[u8], id: &str) -> Result<Response, ClientError> {
        let rx = self.register(id)?;
        self.send_frame(body, None)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    fn register(&self, id: &str) -> Result<oneshot::Receiver<Response>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().map_err(|_| ClientError::Disconnected)?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(ClientError::Disconnected);
        }
        p.insert(id.to_string(), tx);
        Ok(rx)
    }

    fn send_frame(&self, body: &[u8], correlation_id: Option<&str>) -> Result<(), ClientError> {
        let mut f = Frame::new(Command::Send)
            .header("destination", dest::REQUESTS)
            .header("content-type", "application/json")
            .header("reply-to", self.reply_to.as_str());
        if let Some(c) = correlation_id {
            f = f.header(CORRELATION_HEADER, c);
        }
        let f = f.body(body.to_vec());
        self.out
            .send(f.encode())
            .map_err(|_| ClientError::Disconnected)
    }

    /// Sends DISCONNECT with a receipt and closes.
    pub async fn close(self) {
        let f = Frame::new(Command::Disconnect).header("receipt", "bye");
        let _ = self.out.send(f.encode());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stomp_error(f: &Frame) -> ClientError {
    let msg = f
        .headers
        .get("message")
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&f.body).into_owned());
    ClientError::StompError(msg)
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: &mut R,
    mut dec: stomp::Decoder,
    mut buf: Vec<u8>,
    pending: &Pending,
    events: &broadcast::Sender<Notification>,
) -> Result<(), ClientError> {
    loop {
        while let Some(item) = dec
            .next_item()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            let Item::Frame(f) = item else { continue };
            match f.command {
                Command::Message => dispatch(&f.body, pending, events),
                Command::Error => return Err(stomp_error(&f)),
                _ => {}
            }
        }
        let n = rd.read(&mut buf).await.map_err(ClientError::Tls)?;
        if n == 0 {
            return Err(ClientError::Disconnected);
        }
        dec.feed(&buf[..n]);
    }
}

fn dispatch(body: &[u8], pending: &Pending, events: &broadcast::Sender<Notification>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        tracing::warn!("undecodable message from the agent");
        return;
    };
    let items = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    for item in items {
        let is_notification = item.get("method").is_some() && item.get("id").is_none();
        if is_notification {
            let method = item
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let params = item.get("params").cloned().unwrap_or(Value::Null);
            let _ = events.send(Notification { method, params });
            continue;
        }
        match Response::from_value(item) {
            Ok(r) => {
                let key = match &r.id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let tx = pending.lock().ok().and_then(|mut p| p.remove(&key));
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                } else if let Ok(mut p) = pending.lock() {
                    // A reply with a null id (parse errors) goes to the oldest waiter.
                    if r.id.is_null() && p.len() == 1 {
                        if let Some(k) = p.keys().next().cloned() {
                            if let Some(tx) = p.remove(&k) {
                                let _ = tx.send(r);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "bad response from the agent"),
        }
    }
}
