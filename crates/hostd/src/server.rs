//! The listener on port 54321: mutual TLS, then a STOMP 1.2 session per connection that
//! carries JSON-RPC requests (`jms.topic.vdsm_requests`), their replies (to the SEND's
//! `reply-to`) and events (`jms.queue.events`), as VDSM's stompserver does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_proto::jsonrpc::{self, Entry, Message, Notification, Response};
use halyard_proto::stomp::{self, Command, Frame, Item, StompError};
use halyard_proto::vdsm::{dest, CORRELATION_HEADER};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};

use halyard_common::limits::RateLimit;
use halyard_common::net::{HandshakeGate, Ticket};

use crate::agent::Agent;
use crate::api;
use crate::authz::{self, Caller};

/// Accepts connections until the process ends. Connections in their TLS handshake go
/// through a [`HandshakeGate`] (bounded apart from sessions: idle sockets that never
/// speak cannot lock the Manager out); established sessions are bounded by
/// `limits.max_connections`; refusals are logged at a bounded rate.
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let sessions = Arc::new(Semaphore::new(agent.cfg.limits.max_connections));
    let gate = HandshakeGate::new(
        agent.cfg.limits.max_handshakes,
        agent.cfg.limits.max_handshakes_per_source,
    );
    static ACCEPT_ERRORS: RateLimit = RateLimit::new(5, Duration::from_secs(10));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_ERRORS.admit() {
                    warn!(error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let agent = agent.clone();
        // The configuration of the moment: certificates can change while we run.
        let acceptor = tokio_rustls::TlsAcceptor::from(agent.identity.server_config());
        let (ticket, evicted) = gate.enter(peer.ip());
        if evicted {
            static EVICTIONS: RateLimit = RateLimit::new(2, Duration::from_secs(10));
            if let Some(suppressed) = EVICTIONS.admit() {
                warn!(%peer, suppressed, "too many connections in their TLS handshake; the oldest was closed");
            }
        }
        let sessions = sessions.clone();
        tokio::spawn(
            async move {
                handle_connection(agent, acceptor, tcp, peer, ticket, sessions).await;
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
    mut ticket: Ticket,
    sessions: Arc<Semaphore>,
) {
    static REFUSALS: RateLimit = RateLimit::new(5, Duration::from_secs(10));
    let timeout = Duration::from_secs(agent.cfg.tls.handshake_timeout_secs);
    let accepted = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => r,
        _ = &mut ticket.evicted => return,
    };
    drop(ticket);
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(suppressed) = REFUSALS.admit() {
                warn!(%peer, error = %e, suppressed, "TLS handshake refused (a client needs a certificate signed by the configured CA)");
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) = REFUSALS.admit() {
                warn!(%peer, suppressed, "TLS handshake timed out");
            }
            return;
        }
    };
    let Ok(_permit) = sessions.try_acquire_owned() else {
        if let Some(suppressed) = REFUSALS.admit() {
            warn!(%peer, suppressed, "too many sessions; refusing");
        }
        return;
    };
    let caller = Caller::from_peer(stream.get_ref().1.peer_certificates());
    debug!(caller = %caller.describe(), "client connected");
    let limits = stomp::Limits {
        max_body: agent.cfg.limits.max_frame_bytes,
        ..stomp::Limits::default()
    };
    // As VDSM's protocol detector: a console's first byte is 'H' (HALYARD-CONSOLE),
    // which no STOMP frame (nor its heart-beat) starts with.
    let mut stream = tokio::io::BufReader::new(stream);
    let wait = Duration::from_secs(agent.cfg.tls.handshake_timeout_secs.max(1));
    let first = match tokio::time::timeout(wait, stream.fill_buf()).await {
        Ok(Ok(b)) => b.first().copied(),
        Ok(Err(e)) => {
            info!(error = %e, "connection closed");
            return;
        }
        Err(_) => {
            info!(error = %SessionError::NoConnect(wait), "connection closed");
            return;
        }
    };
    if first == Some(crate::console::MAGIC.as_bytes()[0]) {
        crate::console::serve(agent, caller, peer, stream).await;
        return;
    }
    let r = Session::new(agent, limits, caller, peer).run(stream).await;
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
    #[error("no frame from the client for {0:?}")]
    Idle(Duration),
    #[error("no CONNECT frame within {0:?}")]
    NoConnect(Duration),
    #[error("{0} before CONNECT")]
    NotConnected(String),
}

struct Outgoing {
    destination: String,
    body: Vec<u8>,
}

struct Session {
    agent: Arc<Agent>,
    caller: Caller,
    peer: SocketAddr,
    /// CONNECT was answered; nothing else is processed before.
    connected: bool,
    started: Instant,
    /// Bytes of request bodies in flight (bounded per session).
    inflight_bytes: Arc<Semaphore>,
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
    fn new(agent: Arc<Agent>, limits: stomp::Limits, caller: Caller, peer: SocketAddr) -> Self {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let inflight = Arc::new(Semaphore::new(agent.cfg.limits.max_inflight_per_connection));
        let inflight_bytes = Arc::new(Semaphore::new(
            agent.cfg.limits.max_inflight_bytes_per_connection,
        ));
        Session {
            caller,
            peer,
            connected: false,
            started: Instant::now(),
            inflight_bytes,
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
                                static MALFORMED: RateLimit = RateLimit::new(5, Duration::from_secs(10));
                                if let Some(suppressed) = MALFORMED.admit() {
                                    warn!(error = %e, suppressed, "malformed STOMP input; closing the connection");
                                }
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
                            static SLOW: RateLimit = RateLimit::new(5, Duration::from_secs(10));
                            if let Some(suppressed) = SLOW.admit() {
                                warn!(missed = k, suppressed, "client too slow; events dropped");
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => self.events = None,
                    }
                }
                _ = tick.tick() => {
                    let limits = &self.agent.cfg.limits;
                    let connect_within = Duration::from_secs(self.agent.cfg.tls.handshake_timeout_secs);
                    if !self.connected && self.started.elapsed() > connect_within {
                        return Err(SessionError::NoConnect(connect_within));
                    }
                    let idle = Duration::from_secs(limits.idle_timeout_secs);
                    if self.expect_every.is_none() && self.last_read.elapsed() > idle {
                        return Err(SessionError::Idle(idle));
                    }
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
        if !self.connected && !matches!(f.command, Command::Connect | Command::Stomp) {
            let what = f.command.to_string();
            let _ = self
                .write(
                    wr,
                    &Frame::error("Not connected", &format!("{what} before CONNECT")),
                )
                .await;
            self.closing = true;
            return Err(SessionError::NotConnected(what));
        }
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
                self.connected = true;
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
                // Events are the Manager's: another caller's subscription exists but
                // no event is visible to it (see authz).
                if d == dest::EVENTS && self.events.is_none() && authz::may_see_events(&self.caller)
                {
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
        let size = u32::try_from(body.len().max(1)).unwrap_or(u32::MAX);
        drop(body);
        let permits = inflight.try_acquire_owned().ok().and_then(|p| {
            self.inflight_bytes
                .clone()
                .try_acquire_many_owned(size)
                .ok()
                .map(|b| (p, b))
        });
        let Some(permit) = permits else {
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
                    halyard_proto::vdsm::errors::UNEXPECTED.rpc(Some(
                        "too many requests (or request bytes) in flight on this connection",
                    )),
                );
                let _ = out.send(Outgoing {
                    destination: reply_to.clone(),
                    body: serde_json::to_vec(&r.to_value()).unwrap_or_default(),
                });
            }
            return;
        };
        let caller = self.caller.clone();
        let peer = self.peer.to_string();
        tokio::spawn(
            async move {
                let _permit = permit;
                let from = (&caller, peer.as_str());
                let body = match msg {
                    Message::Single(e) => match run_entry(&agent, e, flow, from).await {
                        Some(r) => r.to_value(),
                        None => return,
                    },
                    Message::Batch(entries) => {
                        let mut out = Vec::new();
                        for e in entries {
                            if let Some(r) = run_entry(&agent, e, flow.clone(), from).await {
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

async fn run_entry(
    agent: &Arc<Agent>,
    e: Entry,
    flow: Option<String>,
    from: (&Caller, &str),
) -> Option<Response> {
    match e {
        Entry::Invalid(r) => {
            static INVALID: RateLimit = RateLimit::new(5, Duration::from_secs(10));
            if let Some(suppressed) = INVALID.admit() {
                warn!(error = ?r.outcome.as_ref().err().map(|e| &e.message), suppressed, "invalid request");
            }
            Some(r)
        }
        Entry::Request(req) => api::handle(agent, req, flow, from).await,
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
