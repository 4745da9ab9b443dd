//! Tickets: the capabilities that let a client read or write one image for a while.
//!
//! A ticket is added by whoever controls the server (on a host the agent, asked by the
//! Manager through VDSM's `Host.add_image_ticket`; the Manager's proxy by the Manager
//! itself). Its id is the only secret a client holds: it is never logged (the transfer
//! id is logged instead), it expires, it names one target (a file, a qemu-nbd socket,
//! or, on the proxy, the host's ticket URL) and the operations it allows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Tickets one server holds, at most.
pub const MAX_TICKETS: usize = 4096;
/// The longest a ticket may live without being extended.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;
/// The largest image a ticket may cover (64 TiB, oVirt's largest disk is smaller).
pub const MAX_SIZE: u64 = 64 << 40;
/// Shortest ticket id: ids are capabilities, the Manager makes random UUIDs.
pub const MIN_ID_LEN: usize = 16;
/// Distinct ranges kept for a ticket's `transferred` count; past it, the count is
/// kept coarser (neighbouring ranges merged).
const MAX_RANGES: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TicketError {
    #[error("invalid ticket: {0}")]
    Invalid(String),
    #[error("No such ticket")]
    NoSuchTicket,
    #[error("Ticket expired")]
    Expired,
    #[error("Transfer {0} was canceled")]
    Canceled(String),
    #[error("Ticket does not allow {0}")]
    NotAllowed(&'static str),
    #[error("too many tickets (at most {MAX_TICKETS})")]
    TooMany,
}

/// A ticket as the controller gives it (imageio's ticket JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TicketSpec {
    pub uuid: String,
    pub size: u64,
    pub url: String,
    pub ops: Vec<String>,
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default)]
    pub sparse: bool,
    #[serde(default)]
    pub dirty: bool,
}

/// What a ticket gives access to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The bytes of a file (a volume served as it is: raw, or qcow2 for format=cow).
    File(PathBuf),
    /// A qemu-nbd export on a unix socket (guest data of any volume format).
    Nbd(PathBuf),
    /// Another imageio server's ticket (the proxy's targets): host, port, path.
    Remote {
        host: String,
        port: u16,
        path: String,
    },
}

/// Which targets a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A host's data server: files and qemu-nbd sockets.
    Host,
    /// The Manager's proxy: remote imageio servers only.
    Proxy,
}

fn id_ok(s: &str, min: usize) -> bool {
    (min..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses a ticket URL into its target.
pub fn parse_target(url: &str) -> Result<Target, TicketError> {
    let bad = |m: &str| TicketError::Invalid(format!("url: {m}"));
    if url.len() > 4096 || url.chars().any(char::is_control) {
        return Err(bad("too long or has control characters"));
    }
    let abs = |p: &str| -> Result<PathBuf, TicketError> {
        let path = PathBuf::from(p);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad("the path must be absolute, without '..'"));
        }
        Ok(path)
    };
    if let Some(p) = url.strip_prefix("file://") {
        return Ok(Target::File(abs(p)?));
    }
    if let Some(p) = url.strip_prefix("nbd:unix:") {
        // imageio's form; an export name (":exportname=") is not used by Halyard.
        return Ok(Target::Nbd(abs(p)?));
    }
    if let Some(rest) = url.strip_prefix("https://") {
        let (authority, path) = rest
            .find('/')
            .map(|i| (&rest[..i], &rest[i..]))
            .ok_or_else(|| bad("no path"))?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| bad("bad port"))?,
            ),
            _ => (authority, 443),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
        {
            return Err(bad("bad host"));
        }
        let id = path
            .strip_prefix("/images/")
            .ok_or_else(|| bad("the path must be /images/<ticket>"))?;
        if !id_ok(id, 1) {
            return Err(bad("the path must be /images/<ticket>"));
        }
        return Ok(Target::Remote {
            host: host.to_string(),
            port,
            path: path.to_string(),
        });
    }
    Err(bad("only file://, nbd:unix: and https:// URLs"))
}

impl TicketSpec {
    /// Checks the ticket and returns its target; `role` says which targets the server
    /// serves.
    pub fn check(&self, role: Role) -> Result<Target, TicketError> {
        let bad = |m: String| Err(TicketError::Invalid(m));
        if !id_ok(&self.uuid, MIN_ID_LEN) {
            return bad(format!(
                "uuid must be {MIN_ID_LEN}-64 characters of [A-Za-z0-9_-]"
            ));
        }
        if self.ops.is_empty()
            || self.ops.len() > 2
            || self.ops.iter().any(|o| o != "read" && o != "write")
        {
            return bad("ops must be read and/or write".into());
        }
        if self.size == 0 || self.size > MAX_SIZE {
            return bad(format!("size must be 1..{MAX_SIZE}"));
        }
        if self.timeout == 0 || self.timeout > MAX_TIMEOUT_SECS {
            return bad(format!("timeout must be 1..{MAX_TIMEOUT_SECS} seconds"));
        }
        if self
            .inactivity_timeout
            .is_some_and(|t| t > MAX_TIMEOUT_SECS)
        {
            return bad("inactivity_timeout too large".into());
        }
        if let Some(t) = &self.transfer_id {
            if !id_ok(t, 1) {
                return bad("transfer_id must be 1-64 characters of [A-Za-z0-9_-]".into());
            }
        }
        if let Some(f) = &self.filename {
            if f.is_empty()
                || f.len() > 255
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._+ ".contains(&b))
            {
                return bad("filename must be 1-255 characters of [A-Za-z0-9 ._+-]".into());
            }
        }
        let t = parse_target(&self.url)?;
        match (role, &t) {
            (Role::Host, Target::File(_) | Target::Nbd(_))
            | (Role::Proxy, Target::Remote { .. }) => Ok(t),
            (Role::Host, _) => bad("a host serves file:// and nbd:unix: URLs only".into()),
            (Role::Proxy, _) => bad("the proxy serves https:// URLs only".into()),
        }
    }
}

/// Sorted, disjoint byte ranges [start, end).
#[derive(Debug, Default, Clone)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn add(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let v = &mut self.0;
        let i = v.partition_point(|r| r.1 < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < v.len() && v[j].0 <= e {
            s = s.min(v[j].0);
            e = e.max(v[j].1);
            j += 1;
        }
        v.splice(i..j, [(s, e)]);
        if v.len() > MAX_RANGES {
            // Merge the two ranges closest to each other (over-counts the gap).
            let k = (1..v.len())
                .min_by_key(|&k| v[k].0 - v[k - 1].1)
                .unwrap_or(1);
            v[k - 1].1 = v[k].1;
            v.remove(k);
        }
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|r| r.1 - r.0).sum()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct State {
    expires: Instant,
    access: Instant,
    canceled: bool,
    ongoing: HashMap<u64, (u64, Arc<AtomicU64>)>,
    next_op: u64,
    completed: RangeSet,
    connections: u64,
}

/// A ticket the server holds.
pub struct Ticket {
    pub spec: TicketSpec,
    pub target: Target,
    state: Mutex<State>,
}

/// The operations a request may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// A running operation; its bytes count as transferred when it ends (drop).
pub struct OpGuard {
    ticket: Arc<Ticket>,
    id: u64,
    offset: u64,
    done: Arc<AtomicU64>,
}

impl OpGuard {
    /// Counts `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the ticket was canceled or removed meanwhile (the operation stops).
    pub fn check(&self) -> Result<(), TicketError> {
        let s = self.ticket.lock();
        if s.canceled {
            return Err(TicketError::Canceled(self.ticket.transfer()));
        }
        Ok(())
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let mut s = self.ticket.lock();
        s.ongoing.remove(&self.id);
        if self.ticket.spec.ops.len() == 1 {
            let done = self.done.load(Ordering::Relaxed);
            s.completed
                .add(self.offset, self.offset.saturating_add(done));
        }
        let now = Instant::now();
        s.access = now;
        s.expires = now + Duration::from_secs(self.ticket.spec.timeout);
    }
}

/// A connection using a ticket (counted in the ticket's status while it lives).
pub struct ConnGuard(Arc<Ticket>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.connections = s.connections.saturating_sub(1);
    }
}

/// A ticket's status, as imageio's `GET /tickets/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TicketInfo {
    pub active: bool,
    pub canceled: bool,
    pub connections: u64,
    /// Seconds until it expires (imageio shows a monotonic time; Halyard the rest).
    pub expires: u64,
    pub idle_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactivity_timeout: Option<u64>,
    pub ops: Vec<String>,
    pub size: u64,
    pub sparse: bool,
    pub dirty: bool,
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred: Option<u64>,
}

impl Ticket {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transfer id to log (never the ticket id).
    pub fn transfer(&self) -> String {
        self.spec.transfer_id.clone().unwrap_or_else(|| "-".into())
    }

    pub fn may(&self, op: Op) -> bool {
        match op {
            // As imageio: write implies read.
            Op::Read => self.spec.ops.iter().any(|o| o == "read" || o == "write"),
            Op::Write => self.spec.ops.iter().any(|o| o == "write"),
        }
    }

    /// Starts an operation at `offset`, if the ticket allows it now.
    pub fn begin(self: &Arc<Self>, op: Op, offset: u64) -> Result<OpGuard, TicketError> {
        let mut s = self.lock();
        let now = Instant::now();
        if s.canceled {
            return Err(TicketError::Canceled(self.transfer()));
        }
        if now >= s.expires && s.ongoing.is_empty() {
            return Err(TicketError::Expired);
        }
        if !self.may(op) {
            return Err(TicketError::NotAllowed(op.name()));
        }
        let id = s.next_op;
        s.next_op += 1;
        let done = Arc::new(AtomicU64::new(0));
        s.ongoing.insert(id, (offset, done.clone()));
        s.access = now;
        Ok(OpGuard {
            ticket: self.clone(),
            id,
            offset,
            done,
        })
    }

    /// Counts a connection for the ticket's status.
    pub fn connect(self: &Arc<Self>) -> ConnGuard {
        self.lock().connections += 1;
        ConnGuard(self.clone())
    }

    /// Extends the ticket (an OPTIONS request does, as in imageio).
    pub fn touch(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        s.access = now;
        s.expires = now + Duration::from_secs(self.spec.timeout);
    }

    pub fn extend(&self, timeout: u64) {
        self.lock().expires = Instant::now() + Duration::from_secs(timeout);
    }

    pub fn expired(&self) -> bool {
        let s = self.lock();
        Instant::now() >= s.expires && s.ongoing.is_empty()
    }

    pub fn info(&self) -> TicketInfo {
        let s = self.lock();
        let now = Instant::now();
        let transferred = (self.spec.ops.len() == 1).then(|| {
            let mut r = s.completed.clone();
            for (off, done) in s.ongoing.values() {
                r.add(*off, off.saturating_add(done.load(Ordering::Relaxed)));
            }
            r.sum()
        });
        TicketInfo {
            active: !s.ongoing.is_empty(),
            canceled: s.canceled,
            connections: s.connections,
            expires: s.expires.saturating_duration_since(now).as_secs(),
            idle_time: if s.ongoing.is_empty() {
                now.duration_since(s.access).as_secs()
            } else {
                0
            },
            inactivity_timeout: self.spec.inactivity_timeout,
            ops: self.spec.ops.clone(),
            size: self.spec.size,
            sparse: self.spec.sparse,
            dirty: self.spec.dirty,
            timeout: self.spec.timeout,
            transfer_id: self.spec.transfer_id.clone(),
            filename: self.spec.filename.clone(),
            transferred,
        }
    }
}

/// The tickets of one server.
pub struct Tickets {
    role: Role,
    map: Mutex<HashMap<String, Arc<Ticket>>>,
}

impl Tickets {
    pub fn new(role: Role) -> Arc<Tickets> {
        Arc::new(Tickets {
            role,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Ticket>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a ticket (or replaces the one with its id, as imageio does).
    pub fn add(&self, spec: TicketSpec) -> Result<Arc<Ticket>, TicketError> {
        let target = spec.check(self.role)?;
        let now = Instant::now();
        let t = Arc::new(Ticket {
            state: Mutex::new(State {
                expires: now + Duration::from_secs(spec.timeout),
                access: now,
                canceled: false,
                ongoing: HashMap::new(),
                next_op: 0,
                completed: RangeSet::default(),
                connections: 0,
            }),
            target,
            spec,
        });
        let mut m = self.map();
        m.retain(|_, t| !t.expired());
        if m.len() >= MAX_TICKETS && !m.contains_key(&t.spec.uuid) {
            return Err(TicketError::TooMany);
        }
        if let Some(old) = m.insert(t.spec.uuid.clone(), t.clone()) {
            old.lock().canceled = true;
        }
        Ok(t)
    }

    /// The ticket with this id, if it exists and has not expired.
    pub fn get(&self, id: &str) -> Result<Arc<Ticket>, TicketError> {
        let t = self
            .map()
            .get(id)
            .cloned()
            .ok_or(TicketError::NoSuchTicket)?;
        if t.expired() {
            return Err(TicketError::Expired);
        }
        Ok(t)
    }

    /// Removes a ticket: running operations stop at their next chunk. Removing a
    /// ticket that does not exist succeeds (as imageio's DELETE).
    pub fn remove(&self, id: &str) {
        if let Some(t) = self.map().remove(id) {
            t.lock().canceled = true;
        }
    }

    pub fn extend(&self, id: &str, timeout: u64) -> Result<(), TicketError> {
        if timeout > MAX_TIMEOUT_SECS {
            return Err(TicketError::Invalid("timeout too large".into()));
        }
        let t = self
            .map()
            .get(id)
            .cloned()
            .ok_or(TicketError::NoSuchTicket)?;
        t.extend(timeout);
        Ok(())
    }

    pub fn info(&self, id: &str) -> Result<TicketInfo, TicketError> {
        let t = self
            .map()
            .get(id)
            .cloned()
            .ok_or(TicketError::NoSuchTicket)?;
        Ok(t.info())
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn spec(url: &str, ops: &[&str]) -> TicketSpec {
        TicketSpec {
            uuid: "0123456789abcdef-ticket".into(),
            size: 1 << 20,
            url: url.into(),
            ops: ops.iter().map(|s| s.to_string()).collect(),
            timeout: 300,
            inactivity_timeout: None,
            transfer_id: Some("t1".into()),
            filename: None,
            sparse: true,
            dirty: false,
        }
    }

    #[test]
    fn targets_are_checked_per_role() {
        assert_eq!(
            spec("file:///rhev/x", &["write"]).check(Role::Host),
            Ok(Target::File("/rhev/x".into()))
        );
        assert_eq!(
            spec("nbd:unix:/run/x.sock", &["read"]).check(Role::Host),
            Ok(Target::Nbd("/run/x.sock".into()))
        );
        assert!(spec("https://h:54322/images/abc", &["read"])
            .check(Role::Host)
            .is_err());
        assert_eq!(
            spec("https://h:54322/images/abc", &["read"]).check(Role::Proxy),
            Ok(Target::Remote {
                host: "h".into(),
                port: 54322,
                path: "/images/abc".into()
            })
        );
        assert!(spec("file:///rhev/x", &["read"])
            .check(Role::Proxy)
            .is_err());
        assert!(spec("file://relative", &["read"])
            .check(Role::Host)
            .is_err());
        assert!(spec("file:///a/../etc/shadow", &["read"])
            .check(Role::Host)
            .is_err());
        assert!(spec("file:///a", &["delete"]).check(Role::Host).is_err());
        assert!(spec("file:///a", &[]).check(Role::Host).is_err());
        let mut s = spec("file:///a", &["read"]);
        s.uuid = "short".into();
        assert!(s.check(Role::Host).is_err());
        let mut s = spec("file:///a", &["read"]);
        s.filename = Some("a\";b".into());
        assert!(s.check(Role::Host).is_err());
    }

    #[test]
    fn ops_expiry_and_cancel() {
        let ts = Tickets::new(Role::Host);
        let mut s = spec("file:///a", &["read"]);
        s.timeout = 1;
        let t = ts.add(s).expect("add");
        assert!(t.begin(Op::Read, 0).is_ok());
        assert_eq!(
            t.begin(Op::Write, 0).err(),
            Some(TicketError::NotAllowed("write"))
        );
        {
            let g = t.begin(Op::Read, 100).expect("read");
            g.add(50);
            assert_eq!(t.info().transferred, Some(50));
            assert!(t.info().active);
        }
        assert_eq!(t.info().transferred, Some(50));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(ts.get(&t.spec.uuid).err(), Some(TicketError::Expired));
        let t = ts.add(spec("file:///a", &["write"])).expect("add");
        assert!(t.begin(Op::Read, 0).is_ok(), "write implies read");
        let g = t.begin(Op::Write, 0).expect("write");
        ts.remove(&t.spec.uuid);
        assert!(matches!(g.check(), Err(TicketError::Canceled(_))));
        assert_eq!(ts.get(&t.spec.uuid).err(), Some(TicketError::NoSuchTicket));
    }

    proptest! {
        #[test]
        fn rangeset_counts_each_byte_once(rs in proptest::collection::vec((0u64..10_000, 0u64..500), 0..300)) {
            let mut set = RangeSet::default();
            let mut bytes = vec![false; 10_500];
            for (s, l) in &rs {
                set.add(*s, s + l);
                for b in &mut bytes[*s as usize..(*s + *l) as usize] { *b = true; }
            }
            prop_assert_eq!(set.sum(), bytes.iter().filter(|b| **b).count() as u64);
        }

        #[test]
        fn any_url_parses_or_is_refused(u in "\\PC{0,80}") {
            let _ = parse_target(&u);
        }
    }
}
