//! Live migration, VDSM's way (facts from oVirt/vdsm `lib/vdsm/virt/migration.py`).
//!
//! The source agent (`VM.migrate`) asks the destination agent to prepare the VM
//! (`VM.migrationCreate`, over the same mutual TLS as the Manager's calls, with this
//! host's certificate), then tells its libvirtd to migrate the domain peer to peer:
//! libvirtd connects to the destination's libvirtd (`qemu+tls://<dst>/system`, with the
//! host certificates the agent writes into [`pki_dir`]) and QEMU sends the memory
//! straight to the destination's QEMU (`tcp://<dstqemu>`). A monitor looks at the job
//! every `migration.monitor_interval_secs`: it sends `|virt|VM_migration_status|`
//! progress events and runs the convergence schedule (downtime steps, post-copy,
//! abort) one step per new memory iteration. On success the source VM is Down with
//! "Migration succeeded" (4); on failure it is Up again, the destination's copy is
//! destroyed, and VM.getMigrationStatus says why.
//!
//! The destination holds one of `migration.max_incoming` slots from
//! VM.migrationCreate until the VM runs there (Up) or is gone (Down, "VM failed to
//! migrate", 8).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::{
    errors, events, exit_reason, ConvergenceAction, ConvergenceItem, ConvergenceSchedule,
    MigrateParams, MigrationCreateParams, MigrationCreateResult, MigrationStats, StatusCode,
    VmStatus,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};

use crate::agent::{blocking, Agent};
use crate::domxml;
use crate::libvirt::{self, ParamValue, VirtError};
use crate::vm::{Exit, VmEntry};

/// Elements of a source's running domain the destination leaves to its own libvirt.
pub const INCOMING_DROPPED: &[&str] = &["devices/emulator", "seclabel"];

/// The agents' port when `dst` names none.
pub const DEFAULT_AGENT_PORT: u16 = 54321;
/// Downtime (ms) a `setDowntime` step may ask for, at most.
pub const MAX_DOWNTIME_MS: u64 = 3_600_000;
/// Bandwidth (MiB/s) a request may ask for, at most.
pub const MAX_BANDWIDTH_MIBPS: u64 = 1 << 20;
/// Concurrent migrations a request may allow (outgoingLimit, incomingLimit), at most.
pub const MAX_LIMIT: usize = 64;
/// Steps of a convergence schedule, at most.
pub const MAX_SCHEDULE_STEPS: usize = 64;
/// How long the source waits for the destination's answer to VM.migrationCreate
/// (VDSM's `migration_create_timeout`).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the source waits before asking a full destination again
/// (`migration_retry_timeout`).
pub const RETRY_WAIT: Duration = Duration::from_secs(10);

// ----- slots -----------------------------------------------------------------------------

/// A bounded number of migrations at once; the bound can change (VDSM's
/// DynamicBoundedSemaphore, moved by outgoingLimit / incomingLimit).
pub struct Slots {
    state: Mutex<(usize, usize)>,
    freed: Notify,
}

/// One taken slot, given back when dropped.
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = st.1.saturating_sub(1);
        drop(st);
        self.0.freed.notify_waiters();
    }
}

impl Slots {
    pub fn new(bound: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new((bound.max(1), 0)),
            freed: Notify::new(),
        })
    }

    pub fn set_bound(&self, bound: usize) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = bound.clamp(1, MAX_LIMIT);
        self.freed.notify_waiters();
    }

    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.1 >= st.0 {
            return None;
        }
        st.1 += 1;
        Some(Slot(self.clone()))
    }

    /// Waits for a slot, or for `cancel`.
    pub async fn take(self: &Arc<Self>, cancel: &Outgoing) -> Option<Slot> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if cancel.cancelled() {
                return None;
            }
            if let Some(s) = self.try_take() {
                return Some(s);
            }
            tokio::select! {
                _ = freed => {}
                _ = cancel.cancel_notify.notified() => {}
            }
        }
    }
}

// ----- the request -----------------------------------------------------------------------

/// A convergence action, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SetDowntime(u64),
    PostCopy,
    Abort,
}

/// A checked VM.migrate request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The destination agent.
    pub dst_host: String,
    pub dst_port: u16,
    /// Where QEMU sends the migration stream.
    pub qemu_host: String,
    pub tunneled: bool,
    pub abort_on_error: bool,
    pub auto_converge: bool,
    pub compressed: bool,
    pub encrypted: bool,
    pub zerocopy: bool,
    pub parallel: u32,
    /// MiB/s (0: libvirt's own limit).
    pub bandwidth: u64,
    /// Where console clients reconnect (`host[:port]`), turned into libvirt's
    /// graphics URI with the VM's protocol.
    pub console_address: Option<String>,
    pub init: Vec<Action>,
    /// (limit, action), in order.
    pub stalling: Vec<(i64, Action)>,
    pub outgoing_limit: Option<usize>,
    pub incoming_limit: Option<usize>,
}

fn invalid(msg: impl std::fmt::Display) -> RpcError {
    errors::INVALID_PARAMETER.rpc(Some(&msg.to_string()))
}

/// A host name or address as it may appear in a libvirt URI: an IPv4/IPv6 address or
/// DNS labels. Anything else (`/`, `?`, `@`, spaces...) could change the URI's meaning
/// and is refused.
pub fn check_host(what: &str, h: &str) -> Result<String, RpcError> {
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        });
    if ok {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(invalid(format!(
            "{what}: not a host name or address: {h:?}"
        )))
    }
}

/// `host[:port]`, IPv6 literals in brackets.
pub fn split_host_port(what: &str, s: &str) -> Result<(String, Option<u16>), RpcError> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(format!("{what}: unclosed [ in {s:?}")))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid(format!("{what}: {s:?}")))?,
            ),
        };
        (h, port)
    } else if s.matches(':').count() > 1 {
        (s, None) // a bare IPv6 address
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host = check_host(what, host)?;
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(format!("{what}: bad port in {s:?}")))?,
        ),
    };
    Ok((host, port))
}

fn uri_host(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

fn action(a: &ConvergenceAction) -> Result<Action, RpcError> {
    let param = |i: usize| -> Option<String> {
        a.params.get(i).map(|v| match v {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        })
    };
    match a.name.as_str() {
        "setDowntime" => {
            if a.params.len() != 1 {
                return Err(invalid("setDowntime takes one param (ms)"));
            }
            let ms = param(0)
                .and_then(|p| p.parse::<u64>().ok())
                .filter(|ms| (1..=MAX_DOWNTIME_MS).contains(ms))
                .ok_or_else(|| {
                    invalid(format!(
                        "setDowntime: the downtime must be 1..{MAX_DOWNTIME_MS} ms, got {:?}",
                        a.params
                    ))
                })?;
            Ok(Action::SetDowntime(ms))
        }
        "postcopy" | "abort" if !a.params.is_empty() => {
            Err(invalid(format!("{} takes no params", a.name)))
        }
        "postcopy" => Ok(Action::PostCopy),
        "abort" => Ok(Action::Abort),
        other => Err(invalid(format!(
            "unknown convergence action {:?} (setDowntime, postcopy, abort)",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// VDSM's legacy schedule for a request without one: downtime steps growing
/// exponentially to `max_ms` in `steps`, then the last one repeated up to 42
/// iterations, then abort.
pub fn legacy_schedule(max_ms: u64, steps: u32) -> (Vec<Action>, Vec<(i64, Action)>) {
    let steps = steps.max(1);
    let d = max_ms.max(1) as f64;
    let offset = d / steps as f64;
    let base = if steps > 1 {
        (d - offset).max(1.0).powf(1.0 / (steps - 1) as f64)
    } else {
        1.0
    };
    let downtimes: Vec<u64> = (0..steps)
        .map(|i| (offset + base.powi(i as i32)) as u64)
        .collect();
    let init = vec![Action::SetDowntime(downtimes[0])];
    let mut stalling: Vec<(i64, Action)> = downtimes
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, ms)| (i as i64, Action::SetDowntime(*ms)))
        .collect();
    let last = *downtimes.last().unwrap_or(&max_ms);
    stalling.push((42, Action::SetDowntime(last)));
    stalling.push((-1, Action::Abort));
    (init, stalling)
}

impl Request {
    /// Checks VM.migrate's params; what Halyard does not do is refused by name.
    pub fn from_params(
        p: &MigrateParams,
        cfg: &crate::config::Migration,
    ) -> Result<Request, RpcError> {
        if let Some(m) = p.method.as_deref().filter(|m| *m != "online") {
            return Err(invalid(format!("method {m:?}: only \"online\"")));
        }
        match p.mode.as_deref() {
            None | Some("remote") => {}
            Some(m) => {
                return Err(errors::NOT_IMPLEMENTED.rpc(Some(&format!(
                    "migration mode {:?} (hibernation is not a migration)",
                    m.chars().take(20).collect::<String>()
                ))))
            }
        }
        for (name, given) in [
            ("cpusets", p.cpusets.is_some()),
            ("numaNodesets", p.numa_nodesets.is_some()),
            ("dstparams", p.dstparams.is_some()),
        ] {
            if given {
                return Err(errors::NOT_IMPLEMENTED.rpc(Some(&format!(
                    "{name} in a migration (Halyard does not pin the destination's CPUs)"
                ))));
            }
        }
        let (dst_host, dst_port) = split_host_port("dst", &p.dst)?;
        let qemu_host = match p.dst_qemu.as_deref().filter(|q| !q.trim().is_empty()) {
            Some(q) => check_host("dstqemu", q.trim())?,
            None => dst_host.clone(),
        };
        let bandwidth = match p.max_bandwidth {
            None => cfg.max_bandwidth_mibps,
            Some(b) if (0..=MAX_BANDWIDTH_MIBPS as i64).contains(&b) => b as u64,
            Some(b) => {
                return Err(invalid(format!(
                    "maxBandwidth must be 0..{MAX_BANDWIDTH_MIBPS} MiB/s, got {b}"
                )))
            }
        };
        let limit = |what: &str, v: Option<i64>| -> Result<Option<usize>, RpcError> {
            match v {
                None => Ok(None),
                Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(Some(n as usize)),
                Some(n) => Err(invalid(format!("{what} must be 1..{MAX_LIMIT}, got {n}"))),
            }
        };
        let parallel = match p.parallel {
            None | Some(0) => 0,
            Some(n) if (2..=255).contains(&n) => n as u32,
            Some(n) => return Err(invalid(format!("parallel must be 0 or 2..255, got {n}"))),
        };
        let (init, stalling) = match &p.convergence_schedule {
            Some(ConvergenceSchedule { init, stalling }) => {
                if init.len() + stalling.len() > MAX_SCHEDULE_STEPS {
                    return Err(invalid(format!(
                        "a convergence schedule has at most {MAX_SCHEDULE_STEPS} steps"
                    )));
                }
                let init = init.iter().map(action).collect::<Result<Vec<_>, _>>()?;
                let stalling = stalling
                    .iter()
                    .map(|ConvergenceItem { limit, action: a }| {
                        if *limit < -1 || *limit > 1_000_000 {
                            return Err(invalid(format!("a stalling limit of {limit}")));
                        }
                        Ok((*limit, action(a)?))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (init, stalling)
            }
            None => {
                let max = match p.downtime {
                    Some(d) if d > 0 && d as u64 <= MAX_DOWNTIME_MS => d as u64,
                    Some(d) if d != 0 => {
                        return Err(invalid(format!("downtime must be 1..{MAX_DOWNTIME_MS} ms")))
                    }
                    _ => cfg.downtime_ms,
                };
                legacy_schedule(max, cfg.downtime_steps)
            }
        };
        if init.iter().any(|a| matches!(a, Action::PostCopy)) {
            return Err(invalid("post-copy cannot start before the migration does"));
        }
        let console_address = match p.console_address.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => {
                let (h, port) =
                    split_host_port("consoleAddress", c.split('?').next().unwrap_or(""))?;
                let mut u = uri_host(&h);
                if let Some(port) = port {
                    let _ = write!(u, ":{port}");
                }
                Some(u)
            }
        };
        Ok(Request {
            dst_host,
            dst_port: dst_port.unwrap_or(DEFAULT_AGENT_PORT),
            qemu_host,
            tunneled: p.tunneled.unwrap_or(false),
            abort_on_error: p.abort_on_error.unwrap_or(false),
            auto_converge: p.auto_converge.unwrap_or(false),
            compressed: p.compressed.unwrap_or(false),
            encrypted: p.encrypted.unwrap_or(false),
            zerocopy: p.zerocopy.unwrap_or(false),
            parallel,
            bandwidth,
            console_address,
            init,
            stalling,
            outgoing_limit: limit("outgoingLimit", p.outgoing_limit)?,
            incoming_limit: limit("incomingLimit", p.incoming_limit)?,
        })
    }

    pub fn flags(&self) -> u32 {
        use virt_sys as s;
        let mut f = s::VIR_MIGRATE_LIVE | s::VIR_MIGRATE_PEER2PEER;
        for (on, flag) in [
            (self.tunneled, s::VIR_MIGRATE_TUNNELLED),
            (self.abort_on_error, s::VIR_MIGRATE_ABORT_ON_ERROR),
            (self.auto_converge, s::VIR_MIGRATE_AUTO_CONVERGE),
            (self.compressed, s::VIR_MIGRATE_COMPRESSED),
            (self.encrypted, s::VIR_MIGRATE_TLS),
            (self.parallel > 0, s::VIR_MIGRATE_PARALLEL),
            (self.zerocopy, s::VIR_MIGRATE_ZEROCOPY),
            (
                self.stalling.iter().any(|(_, a)| *a == Action::PostCopy),
                s::VIR_MIGRATE_POSTCOPY,
            ),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }
}

// ----- state -----------------------------------------------------------------------------

/// One migration away from this host.
pub struct Outgoing {
    cancelled: AtomicBool,
    cancel_notify: Notify,
    state: Mutex<OutState>,
}

struct OutState {
    status: StatusCode,
    progress: u8,
    downtime: Option<u64>,
    postcopy: bool,
    done: bool,
}

impl Outgoing {
    fn new() -> Arc<Outgoing> {
        Arc::new(Outgoing {
            cancelled: AtomicBool::new(false),
            cancel_notify: Notify::new(),
            state: Mutex::new(OutState {
                status: StatusCode {
                    code: 0,
                    message: "Migration in progress".into(),
                },
                progress: 0,
                downtime: None,
                postcopy: false,
                done: false,
            }),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancel_notify.notify_waiters();
    }

    pub fn progress(&self) -> u8 {
        self.st().progress
    }

    pub fn running(&self) -> bool {
        !self.st().done
    }

    /// Progress never goes down.
    fn set_progress(&self, p: u8) {
        let mut st = self.st();
        st.progress = st.progress.max(p.min(100));
    }

    fn finish(&self, status: StatusCode) {
        let mut st = self.st();
        if status.code == 0 {
            st.progress = 100;
        }
        st.status = status;
        st.done = true;
    }

    pub fn stats(&self) -> MigrationStats {
        let st = self.st();
        MigrationStats {
            status: st.status.clone(),
            progress: st.progress,
            downtime: st.downtime,
        }
    }
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.stats();
        write!(f, "Outgoing({} {}%)", s.status.message, s.progress)
    }
}

/// A VM arriving by migration: who sends it and the slot it holds.
pub struct Incoming {
    /// The source's certificate subject (only it may destroy the arriving VM).
    pub from: String,
    pub since_mono: f64,
    _slot: Slot,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Incoming(from {})", self.from)
    }
}

/// The agent's migration bookkeeping.
pub struct Migrations {
    pub outgoing: Arc<Slots>,
    pub incoming: Arc<Slots>,
}

impl Migrations {
    pub fn new(cfg: &crate::config::Migration) -> Migrations {
        Migrations {
            outgoing: Slots::new(cfg.max_outgoing.clamp(1, MAX_LIMIT)),
            incoming: Slots::new(cfg.max_incoming.clamp(1, MAX_LIMIT)),
        }
    }
}

/// Progress in percent as VDSM computes it: 100 only when nothing remains, 99 at most
/// before.
pub fn percentage(total: u64, remaining: u64) -> u8 {
    if total == 0 {
        return 0;
    }
    if remaining == 0 {
        return 100;
    }
    let p = 100u64.saturating_sub(100 * remaining.min(total) / total);
    p.min(99) as u8
}

// ----- files libvirt needs -----------------------------------------------------------

/// Where the agent writes the certificate files its libvirtd presents to the
/// destination's.
pub fn pki_dir(cfg: &crate::config::Config) -> PathBuf {
    cfg.migration
        .pki_dir
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("libvirt-pki"))
}

/// Writes the certificate files the source's libvirtd presents to the destination's
/// (the `pkipath` of its URI) from the agent's identity files, each atomically, into a
/// directory only root may enter: `cacert.pem`, `clientcert.pem`, `clientkey.pem`
/// (0600).
pub fn write_pki(dir: &Path, files: &crate::identity::IdentityFiles) -> std::io::Result<()> {
    write_files(
        dir,
        &[
            (&files.ca, "cacert.pem", 0o644),
            (&files.cert, "clientcert.pem", 0o644),
            (&files.key, "clientkey.pem", 0o600),
        ],
    )
}

/// libvirtd's own TLS files under `root` (libvirt's default locations).
pub fn write_server_pki(
    root: &Path,
    files: &crate::identity::IdentityFiles,
) -> std::io::Result<()> {
    write_files(&root.join("CA"), &[(&files.ca, "cacert.pem", 0o644)])?;
    write_files(
        &root.join("libvirt"),
        &[(&files.cert, "servercert.pem", 0o644)],
    )?;
    write_files(
        &root.join("libvirt/private"),
        &[(&files.key, "serverkey.pem", 0o600)],
    )
}

fn write_files(dir: &Path, list: &[(&PathBuf, &str, u32)]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for (src, name, mode) in list {
        let data = std::fs::read(src)?;
        halyard_common::fsutil::write_atomic(&dir.join(name), &data, *mode)?;
    }
    Ok(())
}

/// Brings libvirt's certificate files in line with the agent's identity (after it
/// was installed or renewed) and asks libvirtd to reload its TLS listener's
/// (`virt-admin server-update-tls libvirtd`). Failures are logged: migration is what
/// needs them, and it reports its own error.
pub async fn sync_libvirt_pki(cfg: &crate::config::Config) {
    let files = crate::identity::IdentityFiles::of(cfg);
    if !files.exist() {
        return;
    }
    let dir = pki_dir(cfg);
    let d = dir.clone();
    let server = cfg
        .migration
        .manage_libvirt_tls
        .then(|| cfg.migration.libvirt_pki_root.clone());
    let s = server.clone();
    let written = tokio::task::spawn_blocking(move || {
        write_pki(&d, &files)?;
        match s {
            Some(root) => write_server_pki(&root, &files),
            None => Ok(()),
        }
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(dir = %dir.display(), error = %e, "cannot write libvirt's certificate files");
            return;
        }
        Err(_) => return,
    }
    if server.is_none() {
        return;
    }
    let run = tokio::process::Command::new("virt-admin")
        .args(["-c", "libvirtd:///system", "server-update-tls", "libvirtd"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(o)) if o.status.success() => info!("libvirtd reloaded its TLS certificate"),
        Ok(Ok(o)) => warn!(
            stderr = %String::from_utf8_lossy(&o.stderr).trim(),
            "libvirtd did not reload its TLS certificate (is it listening with TLS?)"
        ),
        Ok(Err(e)) => debug!(error = %e, "virt-admin could not run"),
        Err(_) => warn!("virt-admin server-update-tls did not answer within 10 s"),
    }
}

/// The URI the source's libvirtd opens to the destination's.
pub fn libvirt_uri(host: &str, port: u16, pki: &Path) -> String {
    let mut path = String::new();
    for b in pki.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            path.push(b as char);
        } else {
            let _ = write!(path, "%{b:02X}");
        }
    }
    format!("qemu+tls://{}:{port}/system?pkipath={path}", uri_host(host))
}

/// Whether every disk the VM writes is a storage-domain volume (which the destination
/// prepared itself from the same domain: shared by the pool's construction) used
/// without the host's page cache. libvirt cannot tell a POSIX domain on a local file
/// system from local storage and calls such a migration unsafe; the agent knows better
/// and says so (`VIR_MIGRATE_UNSAFE`) only then.
pub fn disks_shared(info: &domxml::DomainInfo) -> bool {
    info.disks.iter().all(|d| {
        let writable = !d.readonly && d.device != "cdrom" && d.device != "floppy";
        let empty = d.source.is_none();
        !writable
            || empty
            || (info.drives.iter().any(|r| r.name == d.target)
                && matches!(d.cache.as_deref(), Some("none") | Some("directsync")))
    })
}

fn stat_u64(s: &BTreeMap<String, ParamValue>, k: &str) -> Option<u64> {
    s.get(k).and_then(ParamValue::as_u64)
}

// ----- the agent's verbs -------------------------------------------------------------

impl Agent {
    /// VM.migrate: checks the request, marks the VM "Migration Source" and migrates it
    /// in the background.
    pub async fn vm_migrate(
        self: &Arc<Self>,
        vm_id: &str,
        p: &MigrateParams,
    ) -> Result<bool, RpcError> {
        let req = Request::from_params(p, &self.cfg.migration)?;
        let job = Outgoing::new();
        let e = self
            .update(vm_id, |e| {
                match e.status {
                    VmStatus::MigrationSource | VmStatus::MigrationDestination => {
                        return Err(errors::MIGRATION_IN_PROGRESS.rpc(None))
                    }
                    VmStatus::Up | VmStatus::PoweringUp | VmStatus::Paused => {}
                    VmStatus::Down | VmStatus::WaitForLaunch => return Err(errors::no_vm(vm_id)),
                    other => {
                        return Err(
                            errors::MIGRATE_ERR.rpc(Some(&format!("the VM is {}", other.as_str())))
                        )
                    }
                }
                let before = e.status;
                e.outgoing = Some(job.clone());
                e.set_status(VmStatus::MigrationSource);
                Ok((before, e.clone()))
            })
            .ok_or_else(|| errors::no_vm(vm_id))??;
        let (before, entry) = e;
        self.emit_vm_status(&entry, false);
        info!(vm_id, dst = %req.dst_host, qemu = %req.qemu_host, bandwidth = req.bandwidth, "migration requested");
        let me = self.clone();
        let id = vm_id.to_string();
        tokio::spawn(
            async move {
                let outcome = me.run_source(&id, &req, &job).await;
                me.end_source(&id, &job, before, outcome).await;
            }
            .in_current_span(),
        );
        Ok(true)
    }

    async fn run_source(
        self: &Arc<Self>,
        id: &str,
        req: &Request,
        job: &Arc<Outgoing>,
    ) -> Result<(), (StatusCode, Option<halyard_client::Client>)> {
        let err = |code: halyard_proto::vdsm::ErrorCode, msg: String| StatusCode {
            code: code.code,
            message: format!("{}: {msg}", code.message),
        };
        if let Some(n) = req.outgoing_limit {
            self.migrations.outgoing.set_bound(n);
        }
        // The destination agent, with this host's certificate.
        let files = crate::identity::IdentityFiles::of(&self.cfg);
        let tls = halyard_pki::client_config(&halyard_pki::TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: files.ca.clone(),
        })
        .map_err(|e| (err(errors::MIGRATE_ERR, format!("TLS: {e}")), None))?;
        let mut dest = halyard_client::Client::connect(&req.dst_host, req.dst_port, tls)
            .await
            .map_err(|e| {
                (
                    err(
                        errors::MIGRATE_ERR,
                        format!("cannot reach the destination agent: {e}"),
                    ),
                    None,
                )
            })?;
        dest.set_timeout(CREATE_TIMEOUT);
        let pki = pki_dir(&self.cfg);
        let pki_files = pki.clone();
        blocking(move || write_pki(&pki_files, &files))
            .await
            .map_err(|e| (err(errors::MIGRATE_ERR, e.message), None))?
            .map_err(|e| {
                (
                    err(
                        errors::MIGRATE_ERR,
                        format!("writing {}: {e}", pki.display()),
                    ),
                    None,
                )
            })?;
        loop {
            let Some(slot) = self.migrations.outgoing.take(job).await else {
                return Err((cancelled(), Some(dest)));
            };
            // The running domain, as the destination should define it (with the
            // console passwords: without them its consoles would be open).
            let virt = self.virt.clone();
            let vid = id.to_string();
            let xml = blocking(move || -> Result<String, VirtError> {
                let d = virt.lookup(&vid)?;
                Ok(d.xml_desc(
                    virt_sys::VIR_DOMAIN_XML_MIGRATABLE | virt_sys::VIR_DOMAIN_XML_SECURE,
                )?)
            })
            .await
            .map_err(|e| (err(errors::MIGRATE_ERR, e.message), None))?
            .map_err(|e| (err(errors::MIGRATE_ERR, e.message), None))?;
            let elapsed = self
                .entry(id)
                .map(|e| (crate::clock::wall_secs() - e.start_wall).max(0.0))
                .unwrap_or(0.0);
            let params = json!({
                "vmId": id,
                "_srcDomXML": xml,
                "elapsedTimeOffset": elapsed,
                "migrationDest": "libvirt",
            });
            let mut create = json!({"vmID": id, "params": params});
            if let Some(n) = req.incoming_limit {
                create["incomingLimit"] = json!(n);
            }
            let answer = dest.call_value("VM.migrationCreate", create).await;
            let created: MigrationCreateResult = match answer {
                Ok(v) => match serde_json::from_value(v) {
                    Ok(c) => c,
                    Err(e) => {
                        let st = err(
                            errors::MIGRATE_ERR,
                            format!("the destination's answer: {e}"),
                        );
                        return Err((st, Some(dest)));
                    }
                },
                Err(halyard_client::ClientError::Rpc(e))
                    if e.code == errors::MIGRATE_LIMIT.code =>
                {
                    drop(slot);
                    info!(vm_id = id, "the destination is full; asking again in 10 s");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_WAIT) => {}
                        _ = job.cancel_notify.notified() => {}
                    }
                    if job.cancelled() {
                        return Err((cancelled(), Some(dest)));
                    }
                    continue;
                }
                Err(e) => {
                    return Err((
                        err(
                            errors::MIGRATE_ERR,
                            format!("migration destination error: {e}"),
                        ),
                        None,
                    ))
                }
            };
            let Some(dest_xml) = created.params.xml else {
                let st = err(errors::MIGRATE_ERR, "the destination sent no domain".into());
                return Err((st, Some(dest)));
            };
            if job.cancelled() {
                return Err((cancelled(), Some(dest)));
            }
            let r = self.migrate_domain(id, req, job, &dest_xml, &pki).await;
            drop(slot);
            return r.map_err(|s| (s, Some(dest)));
        }
    }

    /// The libvirt migration with its monitor.
    async fn migrate_domain(
        self: &Arc<Self>,
        id: &str,
        req: &Request,
        job: &Arc<Outgoing>,
        dest_xml: &str,
        pki: &Path,
    ) -> Result<(), StatusCode> {
        let virt = self.virt.clone();
        let vid = id.to_string();
        let init = req.init.clone();
        blocking(move || -> Result<(), VirtError> {
            let d = virt.lookup(&vid)?;
            for a in &init {
                if let Action::SetDowntime(ms) = a {
                    d.migrate_set_max_downtime(*ms, 0)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| status(errors::MIGRATE_ERR, &e.message))?
        .map_err(|e| status(errors::MIGRATE_ERR, &e.message))?;
        let mut params = virt::domain::MigrateParameters {
            dest_xml: Some(dest_xml.to_string()),
            ..Default::default()
        };
        if !req.tunneled {
            params.uri = Some(format!("tcp://{}", uri_host(&req.qemu_host)));
        }
        if req.bandwidth > 0 {
            params.bandwidth = Some(req.bandwidth);
        }
        if req.parallel > 0 {
            params.parallel_connections = Some(req.parallel as i32);
        }
        if req.encrypted {
            params.tls_destination = Some(req.dst_host.clone());
        }
        if let Some(c) = &req.console_address {
            let spice = self.entry(id).is_ok_and(|e| {
                e.xml.contains("<graphics type=\"spice\"")
                    || e.xml.contains("<graphics type='spice'")
            });
            params.graphics_uri = Some(format!("{}://{c}", if spice { "spice" } else { "vnc" }));
        }
        let duri = libvirt_uri(&req.dst_host, self.cfg.migration.libvirt_tls_port, pki);
        let mut flags = req.flags();
        if self.entry(id).is_ok_and(|e| disks_shared(&e.info)) {
            flags |= virt_sys::VIR_MIGRATE_UNSAFE;
        }
        let virt = self.virt.clone();
        let vid = id.to_string();
        debug!(vm_id = id, uri = %duri, flags, "migrateToURI3");
        let mut migration = tokio::task::spawn_blocking(move || -> Result<(), VirtError> {
            let d = virt.lookup(&vid)?;
            d.migrate_to_uri3(Some(&duri), params, flags)?;
            Ok(())
        });
        let every = Duration::from_secs(self.cfg.migration.monitor_interval_secs.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut schedule: std::collections::VecDeque<(i64, Action)> =
            req.stalling.iter().cloned().collect();
        let mut first_iteration: Option<u64> = None;
        let mut last_iteration = 0u64;
        let result = loop {
            tokio::select! {
                r = &mut migration => break r,
                _ = tick.tick() => {}
                _ = job.cancel_notify.notified() => {}
            }
            let cancel = job.cancelled();
            let virt = self.virt.clone();
            let vid = id.to_string();
            let stats = blocking(move || -> Result<BTreeMap<String, ParamValue>, VirtError> {
                let d = virt.lookup(&vid)?;
                if cancel {
                    libvirt::abort_job(&d)?;
                }
                libvirt::job_stats(&d, false)
            })
            .await;
            let Ok(Ok(stats)) = stats else { continue };
            let (Some(total), Some(remaining)) = (
                stat_u64(&stats, "data_total"),
                stat_u64(&stats, "data_remaining"),
            ) else {
                continue;
            };
            let p = percentage(total, remaining);
            job.set_progress(p);
            let iteration = stat_u64(&stats, "memory_iteration").unwrap_or(0);
            let first = *first_iteration.get_or_insert(iteration);
            info!(
                vm_id = id,
                elapsed_ms = stat_u64(&stats, "time_elapsed").unwrap_or(0),
                progress = p,
                total_mib = total >> 20,
                remaining_mib = remaining >> 20,
                iteration,
                "migration progress"
            );
            self.emit_migration_status(id, job, None);
            if job.st().postcopy || iteration <= last_iteration {
                continue;
            }
            last_iteration = iteration;
            let current = (iteration - first) as i64;
            let due = schedule.front().is_some_and(|(limit, _)| *limit < current);
            if !due {
                continue;
            }
            let Some((_, act)) = schedule.pop_front() else {
                continue;
            };
            info!(vm_id = id, ?act, iteration = current, "convergence step");
            let virt = self.virt.clone();
            let vid = id.to_string();
            let a = act.clone();
            let r = blocking(move || -> Result<(), VirtError> {
                let d = virt.lookup(&vid)?;
                match a {
                    Action::SetDowntime(ms) => Ok(d.migrate_set_max_downtime(ms, 0)?),
                    Action::PostCopy => libvirt::start_post_copy(&d),
                    Action::Abort => libvirt::abort_job(&d),
                }
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    if act == Action::PostCopy {
                        job.st().postcopy = true;
                    }
                }
                Ok(Err(e)) => warn!(vm_id = id, ?act, error = %e, "convergence step failed"),
                Err(e) => warn!(vm_id = id, ?act, error = %e.message, "convergence step failed"),
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if job.cancelled() => {
                debug!(vm_id = id, error = %e, "migration cancelled");
                Err(cancelled())
            }
            Ok(Err(e)) => Err(status(errors::MIG_OPERATION_ERR, &e.message)),
            Err(e) => Err(status(errors::MIGRATE_ERR, &e.to_string())),
        }
    }

    /// After the migration: Down "Migration succeeded" on success; on failure the VM
    /// is what it was before and the destination's copy goes.
    async fn end_source(
        self: &Arc<Self>,
        id: &str,
        job: &Arc<Outgoing>,
        before: VmStatus,
        outcome: Result<(), (StatusCode, Option<halyard_client::Client>)>,
    ) {
        match outcome {
            Ok(()) => {
                job.finish(StatusCode {
                    code: 0,
                    message: "Migration done".into(),
                });
                let e = self.update(id, |e| {
                    let changed = e.set_down(Exit::new(0, exit_reason::MIGRATION_SUCCEEDED, None));
                    (changed, e.clone())
                });
                info!(vm_id = id, downtime_ms = ?job.stats().downtime, "migration done");
                self.emit_migration_status(id, job, None);
                if let Some((true, e)) = e {
                    self.emit_vm_status(&e, false);
                }
            }
            Err((st, dest)) => {
                warn!(vm_id = id, code = st.code, error = %st.message, "migration failed");
                job.finish(st);
                if let Some(dest) = dest {
                    // VDSM's _recover: the destination's half-made VM goes.
                    let _ = dest
                        .call_value("VM.destroy", json!({"vmID": id}))
                        .await
                        .map_err(
                            |e| debug!(vm_id = id, error = %e, "destroying the destination's copy"),
                        );
                    dest.close().await;
                }
                let virt = self.virt.clone();
                let vid = id.to_string();
                let now = blocking(move || virt.lookup(&vid).map(|d| libvirt::dom_state(&d)))
                    .await
                    .ok()
                    .and_then(Result::ok);
                let e = self.update(id, |e| {
                    if e.status != VmStatus::MigrationSource {
                        return None;
                    }
                    let s = match now {
                        Some(libvirt::DomState::Paused) => VmStatus::Paused,
                        Some(_) if before == VmStatus::Paused => VmStatus::Up,
                        Some(_) => before,
                        None => {
                            e.set_down(Exit::new(
                                1,
                                exit_reason::LOST_QEMU_CONNECTION,
                                Some("the VM ended while migrating".into()),
                            ));
                            return Some(e.clone());
                        }
                    };
                    e.set_status(s);
                    Some(e.clone())
                });
                if let Some(Some(e)) = e {
                    self.emit_vm_status(&e, true);
                }
            }
        }
    }

    /// `|virt|VM_migration_status|<id>`.
    fn emit_migration_status(&self, id: &str, job: &Outgoing, _why: Option<&str>) {
        let s = job.stats();
        let mut body = json!({"progress": s.progress, "postcopy": job.st().postcopy});
        if let Some(d) = s.downtime {
            body["downtime"] = json!(d);
        }
        let mut m = serde_json::Map::new();
        m.insert(id.to_string(), body);
        self.emit(events::vm_migration_status(id), m);
    }

    /// The libvirt job-completed event: the migration's downtime.
    pub(crate) fn on_job_completed(&self, uuid: &str, stats: &BTreeMap<String, ParamValue>) {
        let Ok(e) = self.entry(uuid) else { return };
        let Some(job) = e.outgoing.clone() else {
            return;
        };
        let downtime = if job.st().postcopy {
            stat_u64(stats, "downtime")
        } else {
            stat_u64(stats, "downtime_net").or_else(|| stat_u64(stats, "downtime"))
        };
        job.st().downtime = downtime;
        if let Some(total) = stat_u64(stats, "data_total") {
            job.set_progress(percentage(
                total,
                stat_u64(stats, "data_remaining").unwrap_or(0),
            ));
        }
        info!(vm_id = uuid, downtime_ms = ?downtime, "migration job completed");
        self.emit_migration_status(uuid, &job, None);
    }

    pub fn vm_migration_status(&self, id: &str) -> Result<MigrationStats, RpcError> {
        let e = self.entry(id)?;
        e.outgoing
            .map(|o| o.stats())
            .ok_or_else(|| errors::MIG_NOT_IN_PROGRESS.rpc(None))
    }

    pub async fn vm_migrate_cancel(&self, id: &str) -> Result<bool, RpcError> {
        let e = self.entry(id)?;
        match e.outgoing.filter(|o| o.running()) {
            Some(o) if e.status == VmStatus::MigrationSource => {
                info!(vm_id = id, "migration cancel requested");
                o.cancel();
                Ok(true)
            }
            _ => Err(errors::MIG_CANCEL_ERR.rpc(None)),
        }
    }

    pub async fn vm_migrate_change_params(
        &self,
        id: &str,
        bandwidth: Option<i64>,
    ) -> Result<bool, RpcError> {
        let e = self.entry(id)?;
        if e.status != VmStatus::MigrationSource || !e.outgoing.is_some_and(|o| o.running()) {
            return Err(errors::MIG_NOT_IN_PROGRESS.rpc(None));
        }
        let bw = match bandwidth {
            Some(b) if (1..=MAX_BANDWIDTH_MIBPS as i64).contains(&b) => b as u64,
            other => {
                return Err(invalid(format!(
                    "maxBandwidth must be 1..{MAX_BANDWIDTH_MIBPS} MiB/s, got {other:?}"
                )))
            }
        };
        let virt = self.virt.clone();
        let vid = id.to_string();
        blocking(move || -> Result<(), VirtError> {
            Ok(virt.lookup(&vid)?.migrate_set_max_speed(bw, 0)?)
        })
        .await?
        .map_err(|e| errors::MIG_OPERATION_ERR.rpc(Some(&e.message)))?;
        Ok(true)
    }

    /// VM.migrationCreate on the destination: the VM's domain prepared here (volumes,
    /// payloads, policy, this agent's metadata), held as "Migration Destination".
    pub async fn vm_migration_create(
        self: &Arc<Self>,
        from: &str,
        p: &MigrationCreateParams,
    ) -> Result<MigrationCreateResult, RpcError> {
        if let Some(n) = p.incoming_limit {
            if !(1..=MAX_LIMIT as i64).contains(&n) {
                return Err(invalid(format!("incomingLimit must be 1..{MAX_LIMIT}")));
            }
            self.migrations.incoming.set_bound(n as usize);
        }
        let xml = p
            .params
            .get("_srcDomXML")
            .and_then(Value::as_str)
            .ok_or_else(|| errors::MISS_PARAM.rpc(Some("{'name': '_srcDomXML'}")))?
            .to_string();
        let elapsed = p
            .params
            .get("elapsedTimeOffset")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e >= 0.0)
            .unwrap_or(0.0);
        // What the source's libvirt added to the running domain and this host's
        // libvirt decides for itself: its emulator, its security labels.
        let xml = domxml::drop_elements(&xml, INCOMING_DROPPED)
            .map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))?;
        let info =
            domxml::parse(&xml).map_err(|e| errors::INVALID_PARAMETER.rpc(Some(&e.to_string())))?;
        if !p.vm_id.eq_ignore_ascii_case(&info.uuid) {
            return Err(invalid(format!(
                "vmID {} does not match the domain's uuid {}",
                p.vm_id, info.uuid
            )));
        }
        if self.entry(&info.uuid).is_ok() {
            return Err(errors::EXIST.rpc(None));
        }
        let slot = self
            .migrations
            .incoming
            .try_take()
            .ok_or_else(|| errors::MIGRATE_LIMIT.rpc(None))?;
        let xml = self.build_definition(xml, &info, true).await?;
        let start_wall = crate::clock::wall_secs() - elapsed;
        let prepared = self.with_agent_meta(&xml, start_wall)?;
        let entry = {
            let mut vms = self.vms();
            if vms.contains_key(&info.uuid) {
                return Err(errors::EXIST.rpc(None));
            }
            let mut e = VmEntry::new(info.clone(), prepared.clone(), start_wall);
            e.guest_agent_up = true;
            e.arriving_from = Some(from.to_string());
            e.incoming = Some(Arc::new(Incoming {
                from: from.to_string(),
                since_mono: crate::clock::monotonic_secs(),
                _slot: slot,
            }));
            e.set_status(VmStatus::MigrationDestination);
            vms.insert(e.id.clone(), e.clone());
            e
        };
        info!(vm_id = %entry.id, name = %entry.name, from, "incoming migration prepared");
        self.emit_vm_status(&entry, false);
        let mut le = entry.list_entry(false);
        le.xml = Some(prepared);
        Ok(MigrationCreateResult {
            migration_port: 0,
            params: le,
        })
    }

    /// The certificate subject of the host sending `id` here, while it arrives.
    pub fn incoming_from(&self, id: &str) -> Option<String> {
        self.entry(id)
            .ok()
            .filter(|e| matches!(e.status, VmStatus::MigrationDestination | VmStatus::Down))
            .and_then(|e| e.arriving_from)
    }

    /// The arriving VM runs here now: its live XML and QEMU pid.
    pub(crate) fn adopt_incoming(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let virt = me.virt.clone();
            let vid = id.clone();
            let r = blocking(move || -> Result<(String, Option<u32>), VirtError> {
                let d = virt.lookup(&vid)?;
                let xml = d.xml_desc(0)?;
                Ok((xml, libvirt::qemu_pid(&d.name().unwrap_or_default())))
            })
            .await;
            if let Ok(Ok((xml, pid))) = r {
                me.update(&id, |e| {
                    if let Ok(i) = domxml::parse(&xml) {
                        e.info = i;
                    }
                    e.xml = xml;
                    e.pid = pid;
                });
            }
        });
    }
}

fn status(code: halyard_proto::vdsm::ErrorCode, msg: &str) -> StatusCode {
    StatusCode {
        code: code.code,
        message: format!("{}: {msg}", code.message),
    }
}

fn cancelled() -> StatusCode {
    StatusCode {
        code: errors::MIG_CANCEL_ERR.code,
        message: "Migration canceled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> crate::config::Migration {
        crate::config::Migration::default()
    }

    fn req(v: Value) -> Result<Request, RpcError> {
        let p: MigrateParams = serde_json::from_value(v).map_err(invalid)?;
        Request::from_params(&p, &cfg())
    }

    #[test]
    fn legacy_schedule_is_vdsms() {
        let (init, stalling) = legacy_schedule(500, 5);
        assert_eq!(init, vec![Action::SetDowntime(101)]);
        let ms: Vec<u64> = stalling
            .iter()
            .filter_map(|(_, a)| match a {
                Action::SetDowntime(ms) => Some(*ms),
                _ => None,
            })
            .collect();
        assert_eq!(ms, vec![104, 120, 189, 500, 500]);
        assert_eq!(stalling.last(), Some(&(-1, Action::Abort)));
    }

    #[test]
    fn the_engines_request_is_read() {
        let r = req(json!({
            "dst": "10.0.0.2:54321", "dstqemu": "10.1.0.2", "method": "online",
            "tunneled": "false", "abortOnError": "true", "autoConverge": "true",
            "compressed": "false", "encrypted": false, "maxBandwidth": 125,
            "src": "h1", "vmId": "x", "enableGuestEvents": true, "outgoingLimit": 2,
            "incomingLimit": 2,
            "convergenceSchedule": {"init": [{"name": "setDowntime", "params": ["100"]}],
                "stalling": [{"limit": 1, "action": {"name": "setDowntime", "params": ["150"]}},
                             {"limit": -1, "action": {"name": "abort", "params": []}}]}
        }))
        .expect("valid");
        assert_eq!((r.dst_host.as_str(), r.dst_port), ("10.0.0.2", 54321));
        assert_eq!(r.qemu_host, "10.1.0.2");
        assert_eq!(r.bandwidth, 125);
        assert_eq!(r.init, vec![Action::SetDowntime(100)]);
        assert_eq!(r.stalling.len(), 2);
        let f = r.flags();
        assert_ne!(f & virt_sys::VIR_MIGRATE_AUTO_CONVERGE, 0);
        assert_ne!(f & virt_sys::VIR_MIGRATE_ABORT_ON_ERROR, 0);
        assert_eq!(f & virt_sys::VIR_MIGRATE_POSTCOPY, 0);
        let r = req(json!({"dst": "[fd00::2]:1234"})).expect("v6");
        assert_eq!((r.dst_host.as_str(), r.dst_port), ("fd00::2", 1234));
        assert_eq!(r.bandwidth, 52, "VDSM's default");
    }

    #[test]
    fn hostile_requests_are_refused() {
        for bad in [
            json!({"dst": "10.0.0.2/system?no_verify=1"}),
            json!({"dst": "h?pkipath=/tmp"}),
            json!({"dst": "a@b"}),
            json!({"dst": ""}),
            json!({"dst": "h:0"}),
            json!({"dst": "h:99999"}),
            json!({"dst": "h", "dstqemu": "1.2.3.4:1/x"}),
            json!({"dst": "h", "dstqemu": "x y"}),
            json!({"dst": "h", "maxBandwidth": -1}),
            json!({"dst": "h", "outgoingLimit": 0}),
            json!({"dst": "h", "incomingLimit": 1000}),
            json!({"dst": "h", "method": "offline"}),
            json!({"dst": "h", "mode": "file"}),
            json!({"dst": "h", "cpusets": ["0"]}),
            json!({"dst": "h", "frobnicate": true}),
            json!({"dst": "h", "convergenceSchedule": {"init": [{"name": "rm -rf", "params": []}]}}),
            json!({"dst": "h", "convergenceSchedule": {"init": [{"name": "setDowntime", "params": ["0"]}]}}),
            json!({"dst": "h", "convergenceSchedule": {"init": [{"name": "setDowntime", "params": ["1e9"]}]}}),
            json!({"dst": "h", "convergenceSchedule": {"init": [{"name": "postcopy", "params": []}]}}),
            json!({"dst": "h", "convergenceSchedule": {"stalling": [{"limit": -5, "action": {"name": "abort", "params": []}}]}}),
        ] {
            assert!(req(bad.clone()).is_err(), "accepted {bad}");
        }
        let many: Vec<Value> = (0..65)
            .map(|_| json!({"name": "setDowntime", "params": ["100"]}))
            .collect();
        assert!(req(json!({"dst": "h", "convergenceSchedule": {"init": many}})).is_err());
    }

    #[test]
    fn progress_is_vdsms() {
        assert_eq!(percentage(0, 0), 0);
        assert_eq!(percentage(100, 100), 0);
        assert_eq!(percentage(100, 50), 50);
        assert_eq!(percentage(100, 1), 99);
        assert_eq!(percentage(1000, 1), 99);
        assert_eq!(percentage(100, 0), 100);
        assert_eq!(percentage(100, 500), 0);
    }

    #[test]
    fn the_libvirt_uri_is_escaped() {
        assert_eq!(
            libvirt_uri("10.0.0.2", 16514, Path::new("/var/lib/h pki")),
            "qemu+tls://10.0.0.2:16514/system?pkipath=/var/lib/h%20pki"
        );
        assert_eq!(
            libvirt_uri("fd00::2", 16514, Path::new("/p")),
            "qemu+tls://[fd00::2]:16514/system?pkipath=/p"
        );
    }

    #[tokio::test]
    async fn slots_bound_and_release() {
        let s = Slots::new(1);
        let a = s.try_take().expect("one");
        assert!(s.try_take().is_none());
        s.set_bound(2);
        let b = s.try_take().expect("two");
        drop(a);
        drop(b);
        assert_eq!(s.in_use(), 0);
        let job = Outgoing::new();
        let _held = s.try_take().expect("held");
        s.set_bound(1);
        let s2 = s.clone();
        let j2 = job.clone();
        let waiter = tokio::spawn(async move { s2.take(&j2).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        job.cancel();
        assert!(
            !waiter.await.expect("join"),
            "a cancelled wait gets no slot"
        );
    }
}
