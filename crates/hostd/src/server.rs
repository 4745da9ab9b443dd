//! The listener on port 54321: mutual TLS, then a STOMP 1.2 session per connection that
//! carries JSON-RPC requests (`jms.topic.vdsm_requests`), their replies (to the SEND's
//! `reply-to`) and events (`jms.queue.events`), as VDSM's stompserver does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_proto::jsonrpc::{self, Entry, Message, Notification, Response};
use halyard_proto::stomp::{self, Command, Frame, Item, StompError};
use halyard_proto::vdsm::{dest, CORRELATION_HEADER};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::agent::Agent;
use crate::api;

/// Accepts connections until the process ends.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= agent.cfg.limits.max_connections {
            warn!(%peer, "too many connections; refusing");
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let agent = agent.clone();
        // The configuration of the moment: certificates can change while we run.
        let acceptor = tokio_rustls::TlsAcceptor::from(agent.identity.server_config());
        let active = active.clone();
        active.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(
            async move {
                handle_connection(agent, acceptor, tcp, peer).await;
                active.fetch_sub(1, Ordering::AcqRel);
            }
            .instrument(tracing::info_span!("conn", %peer)),
        );
    }
}

async fn handle_connection(
    agent: Arc<Agent>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let timeout = Duration::from_secs(agent.cfg.tls.handshake_timeout_secs);
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "TLS handshake refused (a client needs a certificate signed by the configured CA)");
            return;
        }
        Err(_) => {
            warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    debug!("client connected");
    let limits = stomp::Limits {
        max_body: agent.cfg.limits.max_frame_bytes,
        ..stomp::Limits::default()
    };
    let r = Session::new(agent, limits).run(stream).await;
    match r {
        Ok(()) => debug!("client disconnected"),
        Err(e) => info!(error = %e, "connection closed"),
    }
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad STOMP input: {0}")]
    Stomp(#[from] StompError),
    #[error("STOMP version unsupported: {0:?}")]
    Version(String),
    #[error("no bytes from the client for {0:?} (heart-beat)")]
    HeartBeat(Duration),
}

struct Outgoing {
    destination: String,
    body: Vec<u8>,
}

struct Session {
    agent: Arc<Agent>,
    limits: stomp::Limits,
    /// subscription id -> destination
    subs: HashMap<String, String>,
    events: Option<broadcast::Receiver<Arc<Notification>>>,
    out_tx: mpsc::UnboundedSender<Outgoing>,
    out_rx: mpsc::UnboundedReceiver<Outgoing>,
    inflight: Arc<Semaphore>,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    closing: bool,
}

impl Session {
    fn new(agent: Arc<Agent>, limits: stomp::Limits) -> Self {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let inflight = Arc::new(Semaphore::new(agent.cfg.limits.max_inflight_per_connection));
        Session {
            agent,
            limits,
            subs: HashMap::new(),
            events: None,
            out_tx,
            out_rx,
            inflight,
            send_every: None,
            expect_every: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            closing: false,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        stream: S,
    ) -> Result<(), SessionError> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut dec = stomp::Decoder::new(self.limits);
        let mut buf = vec![0u8; 16 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.last_read = Instant::now();
                    dec.feed(&buf[..n]);
                    loop {
                        match dec.next_item() {
                            Ok(Some(Item::HeartBeat)) => {}
                            Ok(Some(Item::Frame(f))) => self.on_frame(f, &mut wr).await?,
                            Ok(None) => break,
                            Err(e) => {
                                warn!(error = %e, "malformed STOMP input; closing the connection");
                                let _ = self
                                    .write(&mut wr, &Frame::error("malformed frame", &e.to_string()))
                                    .await;
                                let _ = wr.shutdown().await;
                                return Err(e.into());
                            }
                        }
                        if self.closing {
                            let _ = wr.flush().await;
                            let _ = wr.shutdown().await;
                            return Ok(());
                        }
                    }
                }
                Some(out) = self.out_rx.recv() => {
                    self.deliver(&mut wr, &out.destination, out.body).await?;
                }
                ev = recv_event(&mut self.events) => {
                    match ev {
                        Ok(n) => {
                            let body = serde_json::to_vec(&n.to_value()).unwrap_or_default();
                            self.deliver(&mut wr, dest::EVENTS, body).await?;
                        }
                        Err(broadcast::error::RecvError::Lagged(k)) => {
                            warn!(missed = k, "client too slow; events dropped");
                        }
                        Err(broadcast::error::RecvError::Closed) => self.events = None,
                    }
                }
                _ = tick.tick() => {
                    if let Some(every) = self.send_every {
                        if self.last_write.elapsed() >= every {
                            wr.write_all(b"\n").await?;
                            wr.flush().await?;
                            self.last_write = Instant::now();
                        }
                    }
                    if let Some(every) = self.expect_every {
                        // Allow twice the promised interval before giving up.
                        if self.last_read.elapsed() > every * 2 {
                            return Err(SessionError::HeartBeat(every * 2));
                        }
                    }
                }
            }
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        f: &Frame,
    ) -> Result<(), SessionError> {
        wr.write_all(&f.encode()).await?;
        wr.flush().await?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// Sends a MESSAGE to every subscription of `destination` on this connection; with
    /// none, one MESSAGE without a subscription header.
    async fn deliver<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        destination: &str,
        body: Vec<u8>,
    ) -> Result<(), SessionError> {
        let mut ids: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, d)| d.as_str() == destination)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        if ids.is_empty() {
            if destination == dest::EVENTS {
                return Ok(());
            }
            ids.push(String::new());
        }
        let mut data = Vec::new();
        for id in ids {
            let mut f = Frame::new(Command::Message)
                .header("destination", destination)
                .header("content-type", "application/json");
            if !id.is_empty() {
                f = f.header("subscription", id);
            }
            data.extend(f.body(body.clone()).encode());
        }
        wr.write_all(&data).await?;
        wr.flush().await?;
        self.last_write = Instant::now();
        Ok(())
    }

    async fn on_frame<W: AsyncWrite + Unpin>(
        &mut self,
        f: Frame,
        wr: &mut W,
    ) -> Result<(), SessionError> {
        match f.command {
            Command::Connect | Command::Stomp => {
                let accepted = f.headers.get("accept-version").unwrap_or("");
                if !accepted.split(',').any(|v| v.trim() == "1.2") {
                    self.write(
                        wr,
                        &Frame::error("Version unsupported", "Version unsupported"),
                    )
                    .await?;
                    self.closing = true;
                    return Err(SessionError::Version(accepted.to_string()));
                }
                let (send, expect) = stomp::negotiate_heart_beat(f.headers.get("heart-beat"), 1000);
                self.send_every = (send > 0).then(|| Duration::from_millis(send));
                self.expect_every = (expect > 0).then(|| Duration::from_millis(expect));
                let reply = Frame::new(Command::Connected)
                    .header("version", "1.2")
                    .header("heart-beat", format!("{send},{expect}"))
                    .header(
                        "server",
                        concat!("halyard-hostd/", env!("CARGO_PKG_VERSION")),
                    );
                self.write(wr, &reply).await?;
            }
            Command::Subscribe => {
                let (Some(d), Some(id)) = (f.headers.get("destination"), f.headers.get("id"))
                else {
                    return self
                        .write(
                            wr,
                            &Frame::error(
                                "Missing destination or subscription id header",
                                "Missing destination or subscription id header",
                            ),
                        )
                        .await;
                };
                if self.subs.contains_key(id) {
                    return self
                        .write(
                            wr,
                            &Frame::error(
                                "Subscription id already exists",
                                "Subscription id already exists",
                            ),
                        )
                        .await;
                }
                if self.subs.len() >= 1024 {
                    return self
                        .write(
                            wr,
                            &Frame::error("Too many subscriptions", "Too many subscriptions"),
                        )
                        .await;
                }
                if d == dest::EVENTS && self.events.is_none() {
                    self.events = Some(self.agent.subscribe_events());
                }
                debug!(destination = d, id, "subscribed");
                self.subs.insert(id.to_string(), d.to_string());
            }
            Command::Unsubscribe => {
                let Some(id) = f.headers.get("id") else {
                    return self
                        .write(wr, &Frame::error("Missing id header", "Missing id header"))
                        .await;
                };
                self.subs.remove(id);
                if !self.subs.values().any(|d| d == dest::EVENTS) {
                    self.events = None;
                }
            }
            Command::Disconnect => {
                if let Some(r) = f.headers.get("receipt") {
                    let reply = Frame::new(Command::Receipt).header("receipt-id", r);
                    self.write(wr, &reply).await?;
                }
                self.closing = true;
            }
            Command::Send => {
                let destination = f.headers.get("destination").unwrap_or("");
                if !dest::is_request_queue(destination) {
                    return self
                        .write(
                            wr,
                            &Frame::error(
                                "Subscription not available",
                                &format!("no request queue {destination:?}"),
                            ),
                        )
                        .await;
                }
                let reply_to = f
                    .headers
                    .get("reply-to")
                    .unwrap_or(dest::RESPONSES)
                    .to_string();
                let flow = f.headers.get(CORRELATION_HEADER).map(str::to_string);
                self.on_request(f.body, reply_to, flow);
            }
            other => {
                self.write(
                    wr,
                    &Frame::error("Unsupported command", &format!("{other} is not supported")),
                )
                .await?;
            }
        }
        Ok(())
    }

    fn on_request(&mut self, body: Vec<u8>, reply_to: String, flow: Option<String>) {
        let msg = jsonrpc::parse_message(&body);
        let agent = self.agent.clone();
        let out = self.out_tx.clone();
        let inflight = self.inflight.clone();
        let Ok(permit) = inflight.try_acquire_owned() else {
            // Too many requests in flight on this connection: answer at once.
            let ids: Vec<Value> = match &msg {
                Message::Single(Entry::Request(r)) => r.id.clone().into_iter().collect(),
                Message::Batch(v) => v
                    .iter()
                    .filter_map(|e| match e {
                        Entry::Request(r) => r.id.clone(),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            };
            for id in ids {
                let r = Response::err(
                    id,
                    halyard_proto::vdsm::errors::UNEXPECTED
                        .rpc(Some("too many requests in flight on this connection")),
                );
                let _ = out.send(Outgoing {
                    destination: reply_to.clone(),
                    body: serde_json::to_vec(&r.to_value()).unwrap_or_default(),
                });
            }
            return;
        };
        tokio::spawn(
            async move {
                let _permit = permit;
                let body = match msg {
                    Message::Single(e) => match run_entry(&agent, e, flow).await {
                        Some(r) => r.to_value(),
                        None => return,
                    },
                    Message::Batch(entries) => {
                        let mut out = Vec::new();
                        for e in entries {
                            if let Some(r) = run_entry(&agent, e, flow.clone()).await {
                                out.push(r.to_value());
                            }
                        }
                        if out.is_empty() {
                            return;
                        }
                        Value::Array(out)
                    }
                };
                let _ = out.send(Outgoing {
                    destination: reply_to,
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                });
            }
            .in_current_span(),
        );
    }
}

async fn run_entry(agent: &Arc<Agent>, e: Entry, flow: Option<String>) -> Option<Response> {
    match e {
        Entry::Invalid(r) => {
            warn!(error = ?r.outcome.as_ref().err().map(|e| &e.message), "invalid request");
            Some(r)
        }
        Entry::Request(req) => api::handle(agent, req, flow).await,
    }
}

async fn recv_event(
    rx: &mut Option<broadcast::Receiver<Arc<Notification>>>,
) -> Result<Arc<Notification>, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
