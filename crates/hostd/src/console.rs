//! A VM's serial console, reached through the agent's own port.
//!
//! VDSM's port 54321 tells protocols apart by a connection's first bytes (its protocol
//! detector); the agent does the same: a TLS client whose first line is
//! `HALYARD-CONSOLE <vm id>` asks for that VM's first serial port. Only the Manager may
//! (authz pseudo-verb [`VERB`]); the Manager relays it to users who logged in to it
//! (`halyard vms console`). The answer is one line, `OK` or `ERR <code> <message>`;
//! after `OK` the connection carries the serial port's bytes both ways until either
//! side closes or the VM stops. One console per VM at a time, as `virsh console`
//! without `--force`.
//!
//! The bytes come from the VM's `<serial type="pty">` (QEMU keeps the pty raw); its
//! path is taken from libvirt's live XML of a VM this agent runs and must be a
//! `/dev/pts/N`, nothing else is opened.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, info};

/// What a client writes first (then the VM id and a newline).
pub const MAGIC: &str = "HALYARD-CONSOLE ";
/// The pseudo-verb [`crate::authz::check`] is asked about.
pub const VERB: &str = "VM.console";
/// The request line's limit, newline included.
pub const MAX_LINE: usize = 128;

/// Why a console was not opened (the code goes on the `ERR` line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConsoleError {
    #[error("bad console request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("no running VM {0} on this host")]
    NoVm(String),
    #[error("VM {0} has no serial console (a <serial type=\"pty\">)")]
    NoSerial(String),
    #[error("the serial console of VM {0} is in use by another session")]
    Busy(String),
    #[error("the serial console could not be opened: {0}")]
    Open(String),
}

impl ConsoleError {
    /// VDSM-like codes: 1401 not authorized, 1 no such VM, 2 no serial, 3 busy, 4 bad
    /// request, 5 open failed.
    pub fn code(&self) -> u32 {
        match self {
            ConsoleError::NotAuthorized(_) => 1401,
            ConsoleError::NoVm(_) => 1,
            ConsoleError::NoSerial(_) => 2,
            ConsoleError::Busy(_) => 3,
            ConsoleError::BadRequest(_) => 4,
            ConsoleError::Open(_) => 5,
        }
    }

    /// The answer line.
    pub fn line(&self) -> String {
        let msg: String = self
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("ERR {} {msg}\n", self.code())
    }
}

/// The VM id of a request line (`HALYARD-CONSOLE <uuid>\n`, CRLF allowed).
pub fn parse_request(line: &[u8]) -> Result<String, ConsoleError> {
    let bad = |m: &str| ConsoleError::BadRequest(m.to_string());
    if line.len() > MAX_LINE {
        return Err(bad("the request line is too long"));
    }
    let text = std::str::from_utf8(line).map_err(|_| bad("the request is not UTF-8"))?;
    let text = text
        .strip_suffix('\n')
        .ok_or_else(|| bad("the request line has no end"))?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let id = text
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("expected HALYARD-CONSOLE <vm id>"))?;
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| bad("the VM id is not a UUID"))?;
    Ok(uuid.hyphenated().to_string())
}

/// The path of the first `<serial type="pty">`'s `<source path>` in a live domain
/// XML, when it is a `/dev/pts/N`.
pub fn pty_of(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    let mut in_pty_serial = false;
    let mut depth = 0usize;
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                if e.name().as_ref() == b"serial" {
                    in_pty_serial = e
                        .try_get_attribute("type")
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.value.as_ref() == b"pty");
                } else if in_pty_serial && e.name().as_ref() == b"source" {
                    if let Some(p) = source_path(&e) {
                        return Some(p);
                    }
                }
            }
            Ok(Event::Empty(e)) => {
                if in_pty_serial && e.name().as_ref() == b"source" {
                    if let Some(p) = source_path(&e) {
                        return Some(p);
                    }
                }
            }
            Ok(Event::End(e)) => {
                depth = depth.saturating_sub(1);
                if e.name().as_ref() == b"serial" {
                    in_pty_serial = false;
                }
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
        if depth > 64 {
            return None;
        }
    }
}

fn source_path(e: &quick_xml::events::BytesStart<'_>) -> Option<String> {
    let a = e.try_get_attribute("path").ok().flatten()?;
    let p = std::str::from_utf8(a.value.as_ref()).ok()?.to_string();
    is_pty_path(&p).then_some(p)
}

/// `/dev/pts/N` and nothing else.
pub fn is_pty_path(p: &str) -> bool {
    p.strip_prefix("/dev/pts/")
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The VMs whose console is open (one session each).
#[derive(Default)]
pub struct Consoles {
    open: Mutex<HashSet<String>>,
}

/// Holds a VM's console until dropped.
pub struct Claim {
    consoles: Arc<Consoles>,
    id: String,
}

impl Consoles {
    pub fn claim(self: &Arc<Self>, id: &str) -> Result<Claim, ConsoleError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !open.insert(id.to_string()) {
            return Err(ConsoleError::Busy(id.to_string()));
        }
        Ok(Claim {
            consoles: self.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.consoles
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Serves one console connection whose first byte said it is one.
pub async fn serve<S>(
    agent: Arc<crate::agent::Agent>,
    caller: crate::authz::Caller,
    peer: std::net::SocketAddr,
    mut stream: BufReader<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opened = open(&agent, &caller, &peer, &mut stream).await;
    let (pty, _claim, id) = match opened {
        Ok(x) => x,
        Err(e) => {
            debug!(%peer, error = %e, "console refused");
            let _ = stream.write_all(e.line().as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    if stream.write_all(b"OK\n").await.is_err() || stream.flush().await.is_err() {
        return;
    }
    info!(vm = %id, caller = %caller.describe(), "serial console opened");
    let (mut from_guest, mut to_guest) = pty;
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let r = tokio::select! {
        r = tokio::io::copy(&mut from_client, &mut to_guest) => r.map(|n| ("client", n)),
        r = tokio::io::copy(&mut from_guest, &mut to_client) => r.map(|n| ("guest", n)),
    };
    let _ = to_client.shutdown().await;
    match r {
        Ok((side, n)) => info!(vm = %id, ended_by = side, bytes = n, "serial console closed"),
        Err(e) => info!(vm = %id, error = %e, "serial console closed"),
    }
}

type Pty = (
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
);

async fn open<S>(
    agent: &Arc<crate::agent::Agent>,
    caller: &crate::authz::Caller,
    peer: &std::net::SocketAddr,
    stream: &mut BufReader<S>,
) -> Result<(Pty, Claim, String), ConsoleError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut line = Vec::with_capacity(64);
    let limit = std::time::Duration::from_secs(agent.cfg.tls.handshake_timeout_secs.max(1));
    let mut limited = (&mut *stream).take(MAX_LINE as u64 + 1);
    match tokio::time::timeout(limit, limited.read_until(b'\n', &mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(ConsoleError::BadRequest(e.to_string())),
        Err(_) => {
            return Err(ConsoleError::BadRequest(
                "no request line in time".to_string(),
            ))
        }
    }
    let id = parse_request(&line)?;
    if let Err(e) = crate::authz::check(caller, VERB, agent.identity.enrolling()) {
        agent.access_denied(caller, &peer.to_string(), VERB);
        return Err(ConsoleError::NotAuthorized(e.message));
    }
    let xml = agent
        .live_xml(&id)
        .await
        .map_err(|_| ConsoleError::NoVm(id.clone()))?;
    let path = pty_of(&xml).ok_or_else(|| ConsoleError::NoSerial(id.clone()))?;
    let claim = agent.consoles.claim(&id)?;
    let pty = open_pty(&path).map_err(|e| ConsoleError::Open(e.to_string()))?;
    Ok((pty, claim, id))
}

fn open_pty(path: &str) -> std::io::Result<Pty> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    // A pty is no FIFO, but epoll works on it as on one.
    let rd = tokio::net::unix::pipe::Receiver::from_file_unchecked(f.try_clone()?)?;
    let wr = tokio::net::unix::pipe::Sender::from_file_unchecked(f)?;
    Ok((rd, wr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests() {
        let id = "4f1c0b9e-2a53-4c1e-9d59-2b7f3c8e6a10";
        assert_eq!(
            parse_request(format!("HALYARD-CONSOLE {id}\r\n").as_bytes()),
            Ok(id.to_string())
        );
        for bad in [
            "HALYARD-CONSOLE ../../etc\n".to_string(),
            format!("HALYARD-CONSOLE {id}"),
            format!("CONNECT {id}\n"),
            format!("HALYARD-CONSOLE {id}{}\n", "x".repeat(200)),
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_pty_path_is_taken() {
        let x = r#"<domain><devices><serial type="file"><source path="/etc/passwd"/></serial>
            <serial type="pty"><source path="/dev/pts/7"/><log file="/x"/><target port="0"/></serial>
            </devices></domain>"#;
        assert_eq!(pty_of(x).as_deref(), Some("/dev/pts/7"));
        let x = r#"<domain><serial type="pty"><source path="/dev/sda"/></serial></domain>"#;
        assert_eq!(pty_of(x), None);
        let x = r#"<domain><console type="pty"><source path="/dev/pts/1"/></console></domain>"#;
        assert_eq!(pty_of(x), None);
        for p in [
            "/dev/pts/",
            "/dev/pts/1/../../sda",
            "/dev/pts/-1",
            "/dev/ptmx",
        ] {
            assert!(!is_pty_path(p), "{p}");
        }
    }

    #[test]
    fn one_session_per_vm() {
        let c = Arc::new(Consoles::default());
        let a = c.claim("a").expect("first");
        assert_eq!(
            c.claim("a").err(),
            Some(ConsoleError::Busy("a".to_string()))
        );
        let _b = c.claim("b").expect("another VM");
        drop(a);
        c.claim("a").expect("free again");
    }

    proptest! {
        #[test]
        fn any_line_is_answered_without_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_request(&b);
        }

        #[test]
        fn any_xml_is_read_without_panic(s in ".{0,400}") {
            if let Some(p) = pty_of(&s) {
                prop_assert!(is_pty_path(&p));
            }
        }
    }
}
