//! The host agent's libvirt layer: one connection, libvirt's default event loop on its
//! own thread, domain lifecycle / reboot / guest-agent events delivered to a channel,
//! and the bulk stats call. The `virt` crate covers plain calls; events and bulk stats
//! are not wrapped by it, so those go through `virt-sys` here (each unsafe block says
//! why it is sound).

mod ffi;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::domain::Domain;

pub use ffi::{abort_job, job_stats, start_post_copy, ParamValue};

/// libvirt errors, with libvirt's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("libvirt: {message}")]
pub struct VirtError {
    pub message: String,
    /// libvirt's error number (`virErrorNumber`), 0 if unknown.
    pub code: i32,
}

impl VirtError {
    pub fn new(message: impl Into<String>) -> Self {
        VirtError {
            message: message.into(),
            code: 0,
        }
    }

    /// VIR_ERR_NO_DOMAIN.
    pub fn is_no_domain(&self) -> bool {
        self.code == 42
    }

    /// VIR_ERR_OPERATION_INVALID (e.g. domain is not running).
    pub fn is_operation_invalid(&self) -> bool {
        self.code == 55
    }
}

impl From<virt::error::Error> for VirtError {
    fn from(e: virt::error::Error) -> Self {
        use virt::enumutil::Enum;
        use virt::error::ErrorNumber;
        let code = match e.code() {
            Enum::Known(ErrorNumber::NoDomain) => 42,
            Enum::Known(ErrorNumber::OperationInvalid) => 55,
            Enum::Known(ErrorNumber::AgentUnresponsive) => 86,
            Enum::Known(_) => -1,
            Enum::Unknown(raw) => raw as i32,
        };
        VirtError {
            message: e.message().to_string(),
            code,
        }
    }
}

pub type Result<T> = std::result::Result<T, VirtError>;

/// A domain event, as delivered by libvirt's event loop.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    /// virDomainEventType + detail.
    Lifecycle {
        uuid: String,
        event: i32,
        detail: i32,
    },
    /// The guest rebooted.
    Reboot { uuid: String },
    /// The guest agent channel connected or disconnected.
    Agent { uuid: String, connected: bool },
    /// A job (a migration) ended; its final statistics (`downtime`, `downtime_net`...).
    JobCompleted {
        uuid: String,
        stats: std::collections::BTreeMap<String, ffi::ParamValue>,
    },
    /// The libvirt connection was closed.
    ConnectionClosed { reason: i32 },
}

pub mod lifecycle {
    pub const STARTED: i32 = 2;
    pub const STARTED_MIGRATED: i32 = 1;
    pub const SUSPENDED_MIGRATED: i32 = 1;
    pub const RESUMED_MIGRATED: i32 = 1;
    pub const SUSPENDED: i32 = 3;
    pub const RESUMED: i32 = 4;
    pub const STOPPED: i32 = 5;
    pub const SHUTDOWN: i32 = 6;
    pub const CRASHED: i32 = 8;

    pub const STOPPED_SHUTDOWN: i32 = 0;
    pub const STOPPED_DESTROYED: i32 = 1;
    pub const STOPPED_CRASHED: i32 = 2;
    pub const STOPPED_MIGRATED: i32 = 3;
    pub const STOPPED_SAVED: i32 = 4;
    pub const STOPPED_FAILED: i32 = 5;
}

/// One domain's sample from the bulk stats call.
#[derive(Debug, Clone, Default)]
pub struct DomainStats {
    pub uuid: String,
    pub params: BTreeMap<String, ParamValue>,
}

impl DomainStats {
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.params.get(key).and_then(ParamValue::as_u64)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.params.get(key) {
            Some(ParamValue::S(s)) => Some(s),
            _ => None,
        }
    }
}

/// State of a domain (virDomainState).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    Running,
    Paused,
    Shutdown,
    Shutoff,
    Crashed,
    Other,
}

/// The connection and its event loop.
pub struct Libvirt {
    conn: Connect,
    uri: String,
}

impl Libvirt {
    /// Opens the connection. Registers libvirt's default event loop first (required
    /// before the connection for events to flow) and starts its thread.
    pub fn open(uri: &str) -> Result<Arc<Libvirt>> {
        ffi::init_event_loop()?;
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri))?;
        // Keepalive lets libvirt notice a dead libvirtd and close the connection.
        let _ = conn.set_keep_alive(5, 3);
        Ok(Arc::new(Libvirt {
            conn,
            uri: uri.to_string(),
        }))
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn conn(&self) -> &Connect {
        &self.conn
    }

    /// Delivers lifecycle, reboot and guest-agent events of every domain, and the
    /// connection's close, to `tx`.
    pub fn subscribe(&self, tx: mpsc::UnboundedSender<DomainEvent>) -> Result<()> {
        ffi::register_events(&self.conn, tx)
    }

    pub fn lookup(&self, uuid: &str) -> Result<Domain> {
        Ok(self.conn.lookup_domain_by_uuid_string(uuid)?)
    }

    pub fn create(&self, xml: &str, paused: bool) -> Result<Domain> {
        let flags = if paused {
            virt_sys::VIR_DOMAIN_START_PAUSED
        } else {
            0
        };
        Ok(self.conn.create_domain_xml(xml, flags)?)
    }

    /// Active domains.
    pub fn list_active(&self) -> Result<Vec<Domain>> {
        Ok(self
            .conn
            .list_all_domains(virt_sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?)
    }

    /// Bulk stats of all active domains (virConnectGetAllDomainStats).
    pub fn bulk_stats(&self) -> Result<Vec<DomainStats>> {
        ffi::all_domain_stats(&self.conn)
    }

    pub fn capabilities(&self) -> Result<String> {
        Ok(self.conn.capabilities()?)
    }

    pub fn lib_version(&self) -> Result<u32> {
        Ok(self.conn.lib_version()?)
    }

    pub fn hyp_version(&self) -> Result<u32> {
        Ok(self.conn.hyp_version()?)
    }
}

/// Domain helpers.
pub fn dom_state(d: &Domain) -> DomState {
    match ffi::domain_state(d) {
        Some(1) | Some(2) => DomState::Running,
        Some(3) => DomState::Paused,
        Some(4) => DomState::Shutdown,
        Some(5) => DomState::Shutoff,
        Some(6) => DomState::Crashed,
        _ => DomState::Other,
    }
}

/// The domain's QEMU process id, from libvirt's pid file.
pub fn qemu_pid(name: &str) -> Option<u32> {
    let p = format!("/run/libvirt/qemu/{name}.pid");
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Formats libvirt's `major*1_000_000 + minor*1000 + release` versions.
pub fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}
