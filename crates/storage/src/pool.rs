//! The storage side of a host: connections, the storage pool this host is connected
//! to, the SPM role (the `SDM` lease on the master domain through sanlock, or a local
//! lock on a local domain), SPM tasks, host jobs and domain monitoring.
//!
//! SPM-only operations check the role when they are called and again between their
//! steps; when the lease is lost (the sanlock daemon dies, or no longer lists the
//! lease) the role drops to Free at once and running tasks stop at their next step,
//! leaving ILLEGAL volumes that the next SPM collects.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{debug, error, info, warn};

use crate::connection::{self, ConnParams};
use crate::domain::{self, CreateArgs, DomainType, FileDomain, SDM_NAME, SDM_OFFSET};
use crate::error::{check_uuid, Result, StorageError, BLANK_UUID};
use crate::sanlock::{self, Registration};
use crate::volmeta::{Format, Legality, Prealloc, VolType};
use crate::volume::{self, CreateVolume};
use crate::xlease;

/// Storage settings of the agent.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Where connections are mounted (`<run_dir>/mnt/...`).
    pub run_dir: PathBuf,
    /// sanlock io_timeout for lockspaces this host creates and joins (10 = sanlock's
    /// default; tests use 1).
    pub io_timeout: u32,
    /// Seconds between domain monitor reads.
    pub monitor_interval: Duration,
    /// How often the SPM checks that it still holds its lease.
    pub spm_watchdog_interval: Duration,
}

/// SPM role of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpmRole {
    Free,
    Contend,
    Spm,
}

impl SpmRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SpmRole::Free => "Free",
            SpmRole::Contend => "Contend",
            SpmRole::Spm => "SPM",
        }
    }
}

#[derive(Debug, Clone)]
struct Pool {
    sp_uuid: String,
    host_id: u64,
    master: String,
    master_version: i64,
    /// sdUUID -> "active" | "attached"
    domains: BTreeMap<String, String>,
}

/// How this host holds the SPM lease.
enum Lease {
    Sanlock(Arc<Registration>),
    Local(#[allow(dead_code)] std::fs::File), // held for its flock
}

struct Spm {
    role: SpmRole,
    lver: i64,
    lease: Option<Lease>,
    /// Bumped whenever the role is lost or given up; tasks compare it.
    epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TaskState {
    Running,
    Finished,
}

#[derive(Debug, Clone)]
struct Task {
    state: TaskState,
    result: &'static str,
    code: i64,
    message: String,
    verb: String,
}

/// A host job (SDM verbs), reported by Host.getJobs and `|jobs|status|` events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Job {
    pub id: String,
    pub status: String,
    pub description: String,
    pub job_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// Health of one domain as the monitor last saw it.
#[derive(Debug, Clone)]
struct Health {
    code: i64,
    delay: f64,
    last_check: Instant,
    valid: bool,
    acquired: bool,
    version: i64,
}

/// Emits an event (method, params); set by the agent.
pub type EventSink = Arc<dyn Fn(String, Value) + Send + Sync>;

pub struct StorageManager {
    cfg: StorageConfig,
    pool: Mutex<Option<Pool>>,
    spm: Mutex<Spm>,
    tasks: Mutex<HashMap<String, Task>>,
    jobs: Mutex<BTreeMap<String, Job>>,
    health: Mutex<HashMap<String, Health>>,
    events: Mutex<Option<EventSink>>,
    seq: AtomicU64,
}

/// Serializes index updates of every xleases volume on this host (the SPM's tasks).
static XLEASES: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        f()
    })
    .await
    .map_err(|e| StorageError::Io {
        path: PathBuf::from("<task>"),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Reads the first 4 KiB of a file with direct I/O (as VDSM's domain monitor does),
/// falling back to buffered reads where the file system refuses O_DIRECT.
fn direct_read(path: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => std::fs::File::open(path)?,
        Err(e) => return Err(e),
    };
    let layout = std::alloc::Layout::from_size_align(4096, 4096)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: non-zero size, valid alignment; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(std::io::Error::other("out of memory"));
    }
    // SAFETY: `buf` points to 4096 writable bytes aligned for O_DIRECT.
    let n = unsafe { libc::pread(f.as_raw_fd(), buf as *mut libc::c_void, 4096, 0) };
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn param_u64(v: &Value, what: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| StorageError::InvalidParameter(format!("{what} {n}"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| StorageError::InvalidParameter(format!("{what} {s:?} is not a size"))),
        other => Err(StorageError::InvalidParameter(format!("{what} {other}"))),
    }
}

/// Volume.create's arguments as the engine sends them.
#[derive(Debug, Clone)]
pub struct VolumeCreateArgs {
    pub sp: String,
    pub sd: String,
    pub img: String,
    pub vol: String,
    pub size: Value,
    pub vol_format: i64,
    pub preallocate: i64,
    pub disk_type: Value,
    pub desc: String,
    pub src_img: String,
    pub src_vol: String,
}

impl StorageManager {
    pub fn new(cfg: StorageConfig) -> Arc<StorageManager> {
        let _ = std::fs::create_dir_all(connection::mnt_root(&cfg.run_dir));
        Arc::new(StorageManager {
            cfg,
            pool: Mutex::new(None),
            spm: Mutex::new(Spm {
                role: SpmRole::Free,
                lver: -1,
                lease: None,
                epoch: 0,
            }),
            tasks: Mutex::new(HashMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            health: Mutex::new(HashMap::new()),
            events: Mutex::new(None),
            seq: AtomicU64::new(0),
        })
    }

    pub fn set_event_sink(&self, sink: EventSink) {
        *lock(&self.events) = Some(sink);
    }

    fn emit(&self, method: String, params: Value) {
        if let Some(s) = lock(&self.events).clone() {
            s(method, params);
        }
    }

    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    /// Starts the domain monitor and the SPM watchdog.
    pub fn spawn_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(me.cfg.monitor_interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                let m = me.clone();
                let _ = blocking(move || m.monitor_once()).await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(me.cfg.spm_watchdog_interval);
            loop {
                t.tick().await;
                let m = me.clone();
                let _ = blocking(move || m.spm_watchdog()).await;
            }
        });
    }

    fn find(&self, sd: &str) -> Result<FileDomain> {
        connection::find_domain(&self.cfg.run_dir, sd)
    }

    // ----- connections ----------------------------------------------------------------

    pub async fn connect_storage_server(
        &self,
        dtype: i64,
        conns: Vec<ConnParams>,
    ) -> Result<Vec<Value>> {
        let dt = DomainType::from_code(dtype)
            .ok_or_else(|| StorageError::InvalidParameter(format!("domainType {dtype}")))?;
        let run = self.cfg.run_dir.clone();
        blocking(move || {
            conns
                .iter()
                .map(|c| {
                    let status = match connection::connect(&run, dt, c) {
                        Ok(mp) => {
                            info!(id = %c.id, mount = %mp.display(), "storage server connected");
                            0
                        }
                        Err(e) => {
                            warn!(id = %c.id, error = %e, "storage server connection failed");
                            e.code()
                        }
                    };
                    json!({"id": c.id, "status": status})
                })
                .collect()
        })
        .await
    }

    pub async fn disconnect_storage_server(
        &self,
        dtype: i64,
        conns: Vec<ConnParams>,
    ) -> Result<Vec<Value>> {
        let dt = DomainType::from_code(dtype)
            .ok_or_else(|| StorageError::InvalidParameter(format!("domainType {dtype}")))?;
        let run = self.cfg.run_dir.clone();
        blocking(move || {
            conns
                .iter()
                .map(|c| {
                    let status = match connection::disconnect(&run, dt, c) {
                        Ok(()) => 0,
                        Err(e) => e.code(),
                    };
                    json!({"id": c.id, "status": status})
                })
                .collect()
        })
        .await
    }

    // ----- domains --------------------------------------------------------------------

    /// StorageDomain.create: any host may create a domain in a connected directory.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_domain(
        &self,
        sd: String,
        dtype: i64,
        type_args: String,
        name: String,
        class: i64,
        version: Option<String>,
        block_size: Option<u64>,
    ) -> Result<()> {
        check_uuid("storagedomainID", &sd)?;
        let dt = DomainType::from_code(dtype)
            .ok_or_else(|| StorageError::InvalidParameter(format!("domainType {dtype}")))?;
        let class = domain::class_name(class)
            .ok_or_else(|| StorageError::InvalidParameter(format!("domainClass {class}")))?;
        if let Some(v) = version.as_deref() {
            if v.trim() != "5" {
                return Err(StorageError::InvalidParameter(format!(
                    "only domain version 5 is created, not {v}"
                )));
            }
        }
        if let Some(b) = block_size {
            if b != 512 && b != 0 {
                return Err(StorageError::InvalidParameter(format!(
                    "block size {b} (only 512 is supported on file domains)"
                )));
            }
        }
        if self.find(&sd).is_ok() {
            return Err(StorageError::DomainAlreadyExists(sd));
        }
        let mount = connection::mount_point(&self.cfg.run_dir, &type_args);
        if !mount.exists() {
            return Err(StorageError::Connection(format!(
                "{type_args} is not connected (StoragePool.connectStorageServer first)"
            )));
        }
        let args = CreateArgs {
            sd_uuid: sd.clone(),
            dtype: dt,
            remote_path: type_args,
            name,
            class: class.to_string(),
            io_timeout: self.cfg.io_timeout,
        };
        blocking(move || FileDomain::create(&mount, &args)).await??;
        info!(sd_uuid = %sd, "storage domain created");
        Ok(())
    }

    pub async fn domain_info(&self, sd: &str) -> Result<Value> {
        let d = self.find(sd)?;
        let m = d.metadata()?;
        let role = m.get("ROLE").unwrap_or("Regular").to_string();
        let mut v = json!({
            "uuid": sd,
            "type": m.get("TYPE").unwrap_or(""),
            "class": m.get("CLASS").unwrap_or(""),
            "name": m.get("DESCRIPTION").unwrap_or(""),
            "role": role,
            "pool": m.pools(),
            "version": m.get("VERSION").unwrap_or("5"),
            "block_size": m.get_u64("BLOCK_SIZE").unwrap_or(512),
            "alignment": m.get_u64("ALIGNMENT").unwrap_or(1 << 20),
            "remotePath": m.get("REMOTE_PATH").unwrap_or(""),
        });
        if role == "Master" {
            v["master_ver"] = json!(m.get("MASTER_VERSION").unwrap_or("0"));
        }
        Ok(v)
    }

    pub async fn domain_stats(&self, sd: &str) -> Result<Value> {
        let d = self.find(sd)?;
        let (total, free) = blocking(move || d.space()).await??;
        Ok(json!({
            "disktotal": total.to_string(),
            "diskfree": free.to_string(),
            "mdavalid": true,
            "mdathreshold": true,
            "mdasize": 0,
            "mdafree": 0,
        }))
    }

    pub async fn images(&self, sd: &str) -> Result<Vec<String>> {
        self.find(sd)?.images()
    }

    pub async fn volumes(&self, sd: &str, img: &str) -> Result<Vec<String>> {
        let d = self.find(sd)?;
        if img == BLANK_UUID {
            let mut all = Vec::new();
            for i in d.images()? {
                all.extend(d.volumes(&i)?);
            }
            return Ok(all);
        }
        d.volumes(img)
    }

    /// Writes pool membership into a domain's metadata under that domain's own SDM lease
    /// (so two pools cannot attach it at once).
    fn with_domain_lease<T>(
        &self,
        d: &FileDomain,
        host_id: u64,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !d.uses_sanlock() {
            let file = std::fs::File::open(d.leases_path())
                .map_err(crate::error::io_err(d.leases_path()))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Err(StorageError::AcquireLock(format!("{} is locked", d.uuid)));
            }
            return f();
        }
        sanlock::add_lockspace(&d.uuid, host_id, &d.ids_path(), self.cfg.io_timeout)?;
        let reg = Registration::register()?;
        reg.acquire(&d.uuid, SDM_NAME, &d.leases_path(), SDM_OFFSET, None)
            .map_err(|(_, e)| e)?;
        let r = f();
        let _ = reg.release(&d.uuid, SDM_NAME, &d.leases_path(), SDM_OFFSET);
        r
    }

    fn update_pool_domains(
        &self,
        master: &FileDomain,
        sd: &str,
        state: Option<&str>,
    ) -> Result<()> {
        master.update_metadata(|m| {
            let mut entries: Vec<(String, String)> = m
                .get("POOL_DOMAINS")
                .unwrap_or("")
                .split(',')
                .filter_map(|e| e.split_once(':'))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .filter(|(a, _)| a != sd)
                .collect();
            if let Some(s) = state {
                entries.push((sd.to_string(), s.to_string()));
            }
            m.set(
                "POOL_DOMAINS",
                entries
                    .iter()
                    .map(|(a, b)| format!("{a}:{b}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            Ok(())
        })
    }

    // ----- pools ------------------------------------------------------------------------

    /// StoragePool.create: makes `master` the master domain of a new pool and attaches
    /// `domains`. Runs under the master's SDM lease, with the reserved host id 250.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_pool(
        self: &Arc<Self>,
        sp: String,
        name: String,
        master: String,
        master_version: i64,
        domains: Vec<String>,
    ) -> Result<()> {
        check_uuid("storagepoolID", &sp)?;
        check_uuid("masterSdUUID", &master)?;
        for d in &domains {
            check_uuid("domainList", d)?;
        }
        if name.contains(['\n', '\r', ',']) || name.len() > 255 {
            return Err(StorageError::InvalidParameter("pool name".into()));
        }
        let md = self.find(&master)?;
        let others: Vec<FileDomain> = domains
            .iter()
            .filter(|d| **d != master)
            .map(|d| self.find(d))
            .collect::<Result<_>>()?;
        for d in std::iter::once(&md).chain(others.iter()) {
            let pools = d.metadata()?.pools();
            if !pools.is_empty() && pools.iter().all(|p| p != &sp) {
                return Err(StorageError::DomainAlreadyAttached(d.uuid.clone()));
            }
        }
        let me = self.clone();
        blocking(move || {
            me.with_domain_lease(&md, 250, || {
                md.update_metadata(|m| {
                    if !m.pools().is_empty() && m.pools() != vec![sp.clone()] {
                        return Err(StorageError::DomainAlreadyAttached(md.uuid.clone()));
                    }
                    m.set("POOL_UUID", sp.clone());
                    m.set("ROLE", "Master");
                    m.set("MASTER_VERSION", master_version.to_string());
                    m.set("POOL_DESCRIPTION", name.clone());
                    m.set("POOL_SPM_ID", "-1");
                    m.set("POOL_SPM_LVER", "-1");
                    let mut doms = vec![format!("{}:Active", md.uuid)];
                    doms.extend(others.iter().map(|d| format!("{}:Attached", d.uuid)));
                    m.set("POOL_DOMAINS", doms.join(","));
                    Ok(())
                })?;
                for d in &others {
                    d.update_metadata(|m| {
                        m.set("POOL_UUID", sp.clone());
                        Ok(())
                    })?;
                }
                std::fs::create_dir_all(md.master_dir().join("tasks"))
                    .and_then(|_| std::fs::create_dir_all(md.master_dir().join("vms")))
                    .map_err(crate::error::io_err(md.master_dir()))
            })?;
            if md.uses_sanlock() {
                // Give the temporary host id back.
                let _ = sanlock::rem_lockspace(&md.uuid, 250, &md.ids_path());
            }
            Ok::<(), StorageError>(())
        })
        .await??;
        info!(sp_uuid = %self.pool_id_or(""), "storage pool created");
        Ok(())
    }

    fn pool_id_or(&self, d: &str) -> String {
        lock(&self.pool)
            .as_ref()
            .map(|p| p.sp_uuid.clone())
            .unwrap_or_else(|| d.to_string())
    }

    /// StoragePool.connect: remembers the pool and joins the lockspace of every active
    /// domain with `host_id` (in the background: with io_timeout 10 joining takes
    /// 20-30 s; spmStart waits for the master's).
    pub async fn connect_pool(
        self: &Arc<Self>,
        sp: String,
        host_id: u64,
        master: String,
        master_version: i64,
        domains: BTreeMap<String, String>,
    ) -> Result<()> {
        check_uuid("storagepoolID", &sp)?;
        check_uuid("masterSdUUID", &master)?;
        if !(1..=2000).contains(&host_id) {
            return Err(StorageError::InvalidParameter(format!("hostID {host_id}")));
        }
        for (d, s) in &domains {
            check_uuid("domainDict", d)?;
            if !matches!(s.to_ascii_lowercase().as_str(), "active" | "attached") {
                return Err(StorageError::InvalidParameter(format!(
                    "domain state {s:?}"
                )));
            }
        }
        let md = self.find(&master)?;
        let m = md.metadata()?;
        if !m.pools().contains(&sp) {
            return Err(StorageError::WrongMaster(format!(
                "{master} does not belong to pool {sp}"
            )));
        }
        {
            let mut p = lock(&self.pool);
            if let Some(old) = p.as_ref() {
                if old.sp_uuid != sp {
                    return Err(StorageError::InvalidParameter(format!(
                        "already connected to pool {}",
                        old.sp_uuid
                    )));
                }
            }
            let mut doms = domains.clone();
            doms.entry(master.clone())
                .or_insert_with(|| "active".into());
            *p = Some(Pool {
                sp_uuid: sp.clone(),
                host_id,
                master: master.clone(),
                master_version,
                domains: doms,
            });
        }
        info!(sp_uuid = %sp, host_id, master = %master, "connected to storage pool");
        let active: Vec<String> = lock(&self.pool)
            .as_ref()
            .map(|p| {
                p.domains
                    .iter()
                    .filter(|(_, s)| s.eq_ignore_ascii_case("active"))
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default();
        for sd in active {
            let me = self.clone();
            tokio::spawn(async move {
                let m2 = me.clone();
                let sd2 = sd.clone();
                let r = blocking(move || m2.join_lockspace(&sd2, host_id)).await;
                match r {
                    Ok(Ok(())) => info!(sd_uuid = %sd, host_id, "host id acquired"),
                    Ok(Err(e)) | Err(e) => {
                        warn!(sd_uuid = %sd, error = %e, "cannot acquire host id")
                    }
                }
            });
        }
        Ok(())
    }

    fn join_lockspace(&self, sd: &str, host_id: u64) -> Result<()> {
        let d = self.find(sd)?;
        if d.uses_sanlock() {
            sanlock::add_lockspace(sd, host_id, &d.ids_path(), self.cfg.io_timeout)?;
        }
        Ok(())
    }

    fn lockspace_held(&self, d: &FileDomain, host_id: u64) -> bool {
        if !d.uses_sanlock() {
            return true;
        }
        sanlock::inq_lockspace(&d.uuid, host_id, &d.ids_path()).unwrap_or(false)
    }

    /// StorageDomain.format: removes a domain that no connected pool uses (any host).
    /// Without `auto_detach` a domain still marked as attached to a pool is refused.
    /// The directory is renamed away first (one atomic step), then removed.
    pub async fn format_domain(self: &Arc<Self>, sd: &str, auto_detach: bool) -> Result<()> {
        check_uuid("storagedomainID", sd)?;
        if lock(&self.pool)
            .as_ref()
            .is_some_and(|p| p.domains.contains_key(sd))
        {
            return Err(StorageError::InvalidParameter(format!(
                "storage domain {sd} is part of the connected pool; disconnect the pool first"
            )));
        }
        let d = self.find(sd)?;
        let pool = d.metadata()?.get("POOL_UUID").unwrap_or("").to_string();
        if !pool.is_empty() && !auto_detach {
            return Err(StorageError::DomainAlreadyAttached(format!(
                "{sd} (pool {pool})"
            )));
        }
        blocking(move || -> Result<()> {
            let parent = d.root.parent().map(Path::to_path_buf).unwrap_or_default();
            let gone = parent.join(format!(".halyard-removing-{}", d.uuid));
            fs::rename(&d.root, &gone)
                .map_err(|e| StorageError::DomainAccess(format!("{}: {e}", d.root.display())))?;
            if let Ok(f) = fs::File::open(&parent) {
                let _ = f.sync_all();
            }
            fs::remove_dir_all(&gone)
                .map_err(|e| StorageError::DomainAccess(format!("{}: {e}", gone.display())))
        })
        .await??;
        info!(sd_uuid = %sd, "storage domain formatted (removed)");
        Ok(())
    }

    pub async fn disconnect_pool(self: &Arc<Self>, sp: &str) -> Result<()> {
        let p = self.pool_for(sp)?;
        if lock(&self.spm).role != SpmRole::Free {
            return Err(StorageError::IsSpm(sp.to_string()));
        }
        *lock(&self.pool) = None;
        let me = self.clone();
        blocking(move || {
            for sd in p.domains.keys() {
                if let Ok(d) = me.find(sd) {
                    if d.uses_sanlock() {
                        if let Err(e) = sanlock::rem_lockspace(sd, p.host_id, &d.ids_path()) {
                            warn!(sd_uuid = %sd, error = %e, "cannot leave lockspace");
                        }
                    }
                }
            }
        })
        .await?;
        lock(&self.health).clear();
        info!(sp_uuid = %sp, "disconnected from storage pool");
        Ok(())
    }

    fn pool_for(&self, sp: &str) -> Result<Pool> {
        check_uuid("storagepoolID", sp)?;
        match lock(&self.pool).as_ref() {
            Some(p) if p.sp_uuid == sp => Ok(p.clone()),
            _ => Err(StorageError::PoolUnknown(sp.to_string())),
        }
    }

    pub async fn pool_info(self: &Arc<Self>, sp: &str) -> Result<Value> {
        let p = self.pool_for(sp)?;
        let status = self.spm_status(sp).await?;
        let md = self.find(&p.master)?;
        let m = md.metadata()?;
        let mut dominfo = serde_json::Map::new();
        let mut doms = Vec::new();
        for (sd, state) in &p.domains {
            let st = if state.eq_ignore_ascii_case("active") {
                "Active"
            } else {
                "Attached"
            };
            doms.push(format!("{sd}:{st}"));
            let (total, free) = self.find(sd).and_then(|d| d.space()).unwrap_or((0, 0));
            dominfo.insert(
                sd.clone(),
                json!({"status": st, "alerts": [], "isoprefix": "", "version": 5,
                       "disktotal": total.to_string(), "diskfree": free.to_string()}),
            );
        }
        Ok(json!({
            "info": {
                "name": m.get("POOL_DESCRIPTION").unwrap_or("No Description"),
                "domains": doms.join(","),
                "master_ver": p.master_version,
                "lver": status["spmLver"],
                "spm_id": status["spmId"],
                "master_uuid": p.master,
                "type": md.dtype()?.name(),
                "version": "5",
                "isoprefix": "",
                "pool_status": "connected",
            },
            "dominfo": dominfo,
        }))
    }

    // ----- SPM ----------------------------------------------------------------------------

    pub fn role(&self) -> SpmRole {
        lock(&self.spm).role
    }

    fn spm_epoch(&self) -> Option<u64> {
        let s = lock(&self.spm);
        (s.role == SpmRole::Spm).then_some(s.epoch)
    }

    /// Fails with "Not SPM" unless this host is the SPM of `sp`.
    fn require_spm(&self, sp: &str) -> Result<(Pool, u64)> {
        let p = self.pool_for(sp)?;
        let epoch = self
            .spm_epoch()
            .ok_or_else(|| StorageError::NotSpm(sp.to_string()))?;
        Ok((p, epoch))
    }

    /// Within a task: still the SPM that started it?
    fn still_spm(&self, epoch: u64) -> Result<()> {
        if self.spm_epoch() == Some(epoch) {
            Ok(())
        } else {
            Err(StorageError::NotSpm("the SPM role was lost".into()))
        }
    }

    /// StoragePool.spmStart: a task that acquires the SDM lease of the master domain.
    pub async fn spm_start(self: &Arc<Self>, sp: &str) -> Result<String> {
        let p = self.pool_for(sp)?;
        {
            let mut s = lock(&self.spm);
            if s.role != SpmRole::Free {
                return Err(StorageError::IsSpm(sp.to_string()));
            }
            s.role = SpmRole::Contend;
        }
        let me = self.clone();
        Ok(self.spawn_task("spmStart", move || me.do_spm_start(&p)))
    }

    fn do_spm_start(&self, p: &Pool) -> Result<()> {
        let r = (|| {
            let md = self.find(&p.master)?;
            let lease = if md.uses_sanlock() {
                // The host id first (joined at connect; this waits for it).
                sanlock::add_lockspace(&md.uuid, p.host_id, &md.ids_path(), self.cfg.io_timeout)?;
                let reg = Registration::register()?;
                let started = Instant::now();
                loop {
                    match reg.acquire(&md.uuid, SDM_NAME, &md.leases_path(), SDM_OFFSET, None) {
                        Ok(()) => break,
                        // The holder's host id is still live: not ours to take.
                        Err((rc, e)) if sanlock::is_held_elsewhere(rc) => {
                            info!(rc, "SDM lease is held by another host");
                            return Err(e);
                        }
                        Err((_, e)) if started.elapsed() > Duration::from_secs(5) => return Err(e),
                        Err((rc, e)) => {
                            debug!(rc, error = %e, "acquire failed; retrying");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
                Lease::Sanlock(Arc::new(reg))
            } else {
                let file = std::fs::File::open(md.leases_path())
                    .map_err(crate::error::io_err(md.leases_path()))?;
                // SAFETY: flock on a descriptor we own; held as long as `file` lives.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                    return Err(StorageError::AcquireLock(
                        "the local SPM lock is held".into(),
                    ));
                }
                Lease::Local(file)
            };
            let lver = if md.uses_sanlock() {
                sanlock::read_resource(&md.uuid, SDM_NAME, &md.leases_path(), SDM_OFFSET)
                    .map(|v| v as i64)
                    .unwrap_or(-1)
            } else {
                -1
            };
            std::fs::create_dir_all(md.master_dir().join("tasks"))
                .and_then(|_| std::fs::create_dir_all(md.master_dir().join("vms")))
                .map_err(crate::error::io_err(md.master_dir()))?;
            Ok((lease, lver))
        })();
        let (lease, lver) = match r {
            Ok(x) => x,
            Err(e) => {
                lock(&self.spm).role = SpmRole::Free;
                warn!(error = %e, "SPM start failed");
                return Err(e);
            }
        };
        {
            let mut s = lock(&self.spm);
            s.role = SpmRole::Spm;
            s.lver = lver;
            s.lease = Some(lease);
            s.epoch += 1;
        }
        info!(sp_uuid = %p.sp_uuid, host_id = p.host_id, lver, "this host is the SPM");
        // Roll back what a previous SPM left half done.
        for sd in p.domains.keys() {
            match self.find(sd).and_then(|d| volume::collect_garbage(&d)) {
                Ok(g) if g != volume::Garbage::default() => {
                    info!(sd_uuid = %sd, ?g, "rolled back unfinished operations of a previous SPM")
                }
                Ok(_) => {}
                Err(e) => warn!(sd_uuid = %sd, error = %e, "garbage collection failed"),
            }
        }
        Ok(())
    }

    /// Drops the role at once (lease lost or given up).
    fn lose_spm(&self, why: &str) {
        let lease = {
            let mut s = lock(&self.spm);
            if s.role == SpmRole::Free {
                return;
            }
            s.role = SpmRole::Free;
            s.epoch += 1;
            s.lver = -1;
            s.lease.take()
        };
        error!(reason = why, "SPM role lost: stopping all SPM work");
        drop(lease);
    }

    /// Checks that the SPM still holds its lease.
    fn spm_watchdog(&self) {
        let reg = {
            let s = lock(&self.spm);
            match (&s.role, &s.lease) {
                (SpmRole::Spm, Some(Lease::Sanlock(r))) => r.clone(),
                _ => return,
            }
        };
        // The daemon closing our connection means it is gone, and our lease with it.
        let mut pfd = libc::pollfd {
            fd: reg.raw_fd(),
            events: libc::POLLIN | libc::POLLHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n > 0 && pfd.revents != 0 {
            self.lose_spm("the sanlock daemon closed the connection");
            return;
        }
        match reg.inquire() {
            Ok(s) if s.contains(":SDM:") => {}
            Ok(s) => self.lose_spm(&format!("sanlock no longer lists the SDM lease ({s:?})")),
            Err(e) => self.lose_spm(&format!("sanlock inquire failed: {e}")),
        }
    }

    /// StoragePool.spmStop.
    pub async fn spm_stop(&self, sp: &str) -> Result<()> {
        self.pool_for(sp)?;
        let running: Vec<String> = lock(&self.tasks)
            .iter()
            .filter(|(_, t)| t.state == TaskState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        if !running.is_empty() {
            return Err(StorageError::SpmStart(format!(
                "Error stopping SPM, SPM has unfinished task(s): {running:?}"
            )));
        }
        let lease = {
            let mut s = lock(&self.spm);
            if s.role != SpmRole::Spm {
                return Err(StorageError::NotSpm(sp.to_string()));
            }
            s.role = SpmRole::Free;
            s.epoch += 1;
            s.lver = -1;
            s.lease.take()
        };
        if let Some(Lease::Sanlock(reg)) = &lease {
            if let Err(e) = reg.release_all() {
                warn!(error = %e, "releasing the SDM lease failed (closing the connection releases it)");
            }
        }
        drop(lease);
        info!(sp_uuid = %sp, "SPM stopped");
        Ok(())
    }

    /// StoragePool.getSpmStatus: this host's role, and the lease's version and owner
    /// as sanlock has them on disk.
    pub async fn spm_status(self: &Arc<Self>, sp: &str) -> Result<Value> {
        let p = self.pool_for(sp)?;
        let (role, my_lver) = {
            let s = lock(&self.spm);
            (s.role, s.lver)
        };
        if role == SpmRole::Spm {
            return Ok(json!({"spmStatus": "SPM", "spmLver": my_lver, "spmId": p.host_id}));
        }
        let me = self.clone();
        let r = blocking(move || -> Result<(i64, i64)> {
            let md = me.find(&p.master)?;
            if !md.uses_sanlock() {
                return Ok((-1, -1));
            }
            let (lver, owners) =
                sanlock::read_resource_owners(&md.uuid, SDM_NAME, &md.leases_path(), SDM_OFFSET)?;
            let mut owner = -1;
            if let Some(o) = owners.first() {
                // An owner whose host is dead or free does not hold the role.
                let live = sanlock::get_hosts(&md.uuid)
                    .map(|hs| {
                        hs.iter().any(|h| {
                            h.host_id == o.host_id
                                && h.generation == o.generation
                                && !matches!(h.state, 2 | 5)
                        })
                    })
                    .unwrap_or(true);
                if live {
                    owner = o.host_id as i64;
                }
            }
            Ok((lver as i64, owner))
        })
        .await?;
        // Without a sanlock daemon this host knows only that it is not the SPM.
        let (lver, owner) = r.unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the SPM lease");
            (-1, -1)
        });
        Ok(json!({"spmStatus": role.as_str(), "spmLver": lver, "spmId": owner}))
    }

    // ----- tasks --------------------------------------------------------------------------

    fn spawn_task(
        self: &Arc<Self>,
        verb: &str,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        lock(&self.tasks).insert(
            id.clone(),
            Task {
                state: TaskState::Running,
                result: "",
                code: 0,
                message: "running job 1 of 1".into(),
                verb: verb.to_string(),
            },
        );
        let me = self.clone();
        let tid = id.clone();
        let span = tracing::info_span!("task", task_id = %tid, verb);
        tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let r = f();
            let mut tasks = lock(&me.tasks);
            if let Some(t) = tasks.get_mut(&tid) {
                t.state = TaskState::Finished;
                match r {
                    Ok(()) => {
                        t.result = "success";
                        t.code = 0;
                        t.message = "1 jobs completed successfully".into();
                        info!("task finished");
                    }
                    Err(e) => {
                        t.result = "cleanFailure";
                        t.code = e.code();
                        t.message = e.to_string();
                        warn!(error = %e, "task failed");
                    }
                }
            }
        });
        id
    }

    fn task_value(id: &str, t: &Task) -> Value {
        json!({
            "taskID": id,
            "taskState": match t.state { TaskState::Running => "running", TaskState::Finished => "finished" },
            "taskResult": t.result,
            "code": t.code,
            "message": t.message,
        })
    }

    pub fn task_status(&self, id: &str) -> Result<Value> {
        check_uuid("taskID", id)?;
        lock(&self.tasks)
            .get(id)
            .map(|t| Self::task_value(id, t))
            .ok_or_else(|| StorageError::UnknownTask(id.to_string()))
    }

    pub fn task_info(&self, id: &str) -> Result<Value> {
        check_uuid("taskID", id)?;
        lock(&self.tasks)
            .get(id)
            .map(|t| json!({"id": id, "verb": t.verb}))
            .ok_or_else(|| StorageError::UnknownTask(id.to_string()))
    }

    pub fn task_clear(&self, id: &str) -> Result<()> {
        check_uuid("taskID", id)?;
        let mut tasks = lock(&self.tasks);
        match tasks.get(id) {
            None => Err(StorageError::UnknownTask(id.to_string())),
            Some(t) if t.state == TaskState::Running => {
                Err(StorageError::TaskNotFinished(id.to_string()))
            }
            Some(_) => {
                tasks.remove(id);
                Ok(())
            }
        }
    }

    pub fn all_tasks_statuses(&self) -> Result<Value> {
        if self.role() != SpmRole::Spm {
            return Err(StorageError::NotSpm("getAllTasksStatuses".into()));
        }
        let tasks = lock(&self.tasks);
        Ok(Value::Object(
            tasks
                .iter()
                .map(|(id, t)| (id.clone(), Self::task_value(id, t)))
                .collect(),
        ))
    }

    // ----- SPM verbs ------------------------------------------------------------------------

    fn pool_domain(&self, p: &Pool, sd: &str) -> Result<FileDomain> {
        check_uuid("storagedomainID", sd)?;
        if !p.domains.contains_key(sd) {
            return Err(StorageError::DomainDoesNotExist(sd.to_string()));
        }
        self.find(sd)
    }

    /// StorageDomain.attach (SPM).
    pub async fn attach_domain(self: &Arc<Self>, sd: &str, sp: &str) -> Result<()> {
        let (p, epoch) = self.require_spm(sp)?;
        check_uuid("storagedomainID", sd)?;
        let d = self.find(sd)?;
        let pools = d.metadata()?.pools();
        if pools.iter().any(|x| x != sp) {
            return Err(StorageError::DomainAlreadyAttached(sd.to_string()));
        }
        let md = self.find(&p.master)?;
        let me = self.clone();
        let sp2 = sp.to_string();
        blocking(move || {
            me.still_spm(epoch)?;
            me.with_domain_lease(&d, p.host_id, || {
                d.update_metadata(|m| {
                    if m.pools().iter().any(|x| *x != sp2) {
                        return Err(StorageError::DomainAlreadyAttached(d.uuid.clone()));
                    }
                    m.set("POOL_UUID", sp2.clone());
                    Ok(())
                })
            })?;
            me.update_pool_domains(&md, &d.uuid, Some("Attached"))
        })
        .await??;
        if let Some(pool) = lock(&self.pool).as_mut() {
            pool.domains
                .entry(sd.to_string())
                .or_insert_with(|| "attached".into());
        }
        info!(sd_uuid = %sd, "storage domain attached");
        Ok(())
    }

    /// StorageDomain.detach (SPM).
    pub async fn detach_domain(self: &Arc<Self>, sd: &str, sp: &str) -> Result<()> {
        let (p, epoch) = self.require_spm(sp)?;
        if sd == p.master {
            return Err(StorageError::InvalidParameter(
                "the master domain cannot be detached".into(),
            ));
        }
        let d = self.pool_domain(&p, sd)?;
        let md = self.find(&p.master)?;
        let me = self.clone();
        blocking(move || {
            me.still_spm(epoch)?;
            d.update_metadata(|m| {
                m.set("POOL_UUID", "");
                m.set("ROLE", "Regular");
                Ok(())
            })?;
            me.update_pool_domains(&md, &d.uuid, None)
        })
        .await??;
        if let Some(pool) = lock(&self.pool).as_mut() {
            pool.domains.remove(sd);
        }
        Ok(())
    }

    /// StorageDomain.activate / deactivate (SPM).
    pub async fn set_domain_active(
        self: &Arc<Self>,
        sd: &str,
        sp: &str,
        active: bool,
    ) -> Result<()> {
        let (p, epoch) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        let md = self.find(&p.master)?;
        let me = self.clone();
        let host_id = p.host_id;
        blocking(move || {
            me.still_spm(epoch)?;
            me.update_pool_domains(
                &md,
                &d.uuid,
                Some(if active { "Active" } else { "Attached" }),
            )?;
            if active {
                me.join_lockspace(&d.uuid, host_id)?;
            }
            Ok::<(), StorageError>(())
        })
        .await??;
        if let Some(pool) = lock(&self.pool).as_mut() {
            pool.domains.insert(
                sd.to_string(),
                if active { "active" } else { "attached" }.into(),
            );
        }
        Ok(())
    }

    fn parse_create(&self, a: &VolumeCreateArgs) -> Result<CreateVolume> {
        let size = param_u64(&a.size, "size")?;
        let format = Format::from_code(a.vol_format)
            .ok_or_else(|| StorageError::InvalidParameter(format!("volFormat {}", a.vol_format)))?;
        let prealloc = Prealloc::from_code(a.preallocate).ok_or_else(|| {
            StorageError::InvalidParameter(format!("preallocate {}", a.preallocate))
        })?;
        let disktype = match &a.disk_type {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) if n.as_i64() == Some(2) => "DATA".into(),
            Value::Null => "DATA".into(),
            other => return Err(StorageError::InvalidParameter(format!("diskType {other}"))),
        };
        Ok(CreateVolume {
            img: a.img.clone(),
            vol: a.vol.clone(),
            size,
            format,
            prealloc,
            disktype,
            description: a.desc.clone(),
            src_img: if a.src_img.is_empty() {
                BLANK_UUID.into()
            } else {
                a.src_img.clone()
            },
            src_vol: if a.src_vol.is_empty() {
                BLANK_UUID.into()
            } else {
                a.src_vol.clone()
            },
            voltype: VolType::Leaf,
        })
    }

    /// Volume.create (SPM): validated now, created by a task.
    pub async fn volume_create(self: &Arc<Self>, a: VolumeCreateArgs) -> Result<String> {
        let (p, epoch) = self.require_spm(&a.sp)?;
        let d = self.pool_domain(&p, &a.sd)?;
        let c = self.parse_create(&a)?;
        check_uuid("imageID", &c.img)?;
        check_uuid("volumeID", &c.vol)?;
        check_uuid("srcImgUUID", &c.src_img)?;
        check_uuid("srcVolUUID", &c.src_vol)?;
        if c.size == 0 || c.size > volume::MAX_CAPACITY {
            return Err(StorageError::InvalidParameter(format!(
                "size {} is absurd",
                c.size
            )));
        }
        if volume::vol_paths(&d, &c.img, &c.vol).meta.exists() {
            return Err(StorageError::VolumeAlreadyExists(c.vol));
        }
        if c.src_vol != BLANK_UUID {
            let src_img = if c.src_img == BLANK_UUID {
                &c.img
            } else {
                &c.src_img
            };
            volume::chain(&d, src_img, &c.src_vol)?;
        }
        let me = self.clone();
        Ok(self.spawn_task("Volume.create", move || {
            me.still_spm(epoch)?;
            volume::create(&d, &c)?;
            me.still_spm(epoch)
        }))
    }

    // ----- external (VM) leases ------------------------------------------------------

    /// The pool this host is the SPM of, with the SPM epoch (Lease.* name no pool).
    fn require_spm_any(&self) -> Result<(Pool, u64)> {
        let sp = lock(&self.pool)
            .as_ref()
            .map(|p| p.sp_uuid.clone())
            .ok_or_else(|| StorageError::NotSpm("no storage pool is connected".into()))?;
        self.require_spm(&sp)
    }

    /// The xleases volume of domain `sd`.
    fn xleases_path(&self, sd: &str) -> Result<PathBuf> {
        check_uuid("sd_id", sd)?;
        let d = self.find(sd)?;
        if !d.uses_sanlock() {
            return Err(StorageError::Lease(format!(
                "storage domain {sd} holds no external leases (a local domain has no xleases volume)"
            )));
        }
        Ok(d.dom_md().join("xleases"))
    }

    /// Lease.create (SPM): a task that writes the sanlock resource, then the index record.
    pub async fn lease_create(self: &Arc<Self>, sd: &str, lease_id: &str) -> Result<String> {
        let (p, epoch) = self.require_spm_any()?;
        self.pool_domain(&p, sd)?;
        check_uuid("lease_id", lease_id)?;
        let path = self.xleases_path(sd)?;
        let id = lease_id.to_string();
        let me = self.clone();
        Ok(self.spawn_task("Lease.create", move || {
            let _g = lock(&XLEASES);
            me.still_spm(epoch)?;
            let info = xlease::LeasesVolume::open(&path, true)?.add(&id)?;
            info!(lease_id = %id, offset = info.offset, "lease created");
            Ok(())
        }))
    }

    /// Lease.delete (SPM): a task that frees the record, then clears the resource.
    pub async fn lease_delete(self: &Arc<Self>, sd: &str, lease_id: &str) -> Result<String> {
        let (p, epoch) = self.require_spm_any()?;
        self.pool_domain(&p, sd)?;
        let path = self.xleases_path(sd)?;
        xlease::LeasesVolume::open(&path, false)?.lookup(lease_id)?;
        let id = lease_id.to_string();
        let me = self.clone();
        Ok(self.spawn_task("Lease.delete", move || {
            let _g = lock(&XLEASES);
            me.still_spm(epoch)?;
            xlease::LeasesVolume::open(&path, true)?.remove(&id)?;
            info!(lease_id = %id, "lease removed");
            Ok(())
        }))
    }

    /// Lease.info (any host): where the lease lives.
    pub async fn lease_info(self: &Arc<Self>, sd: &str, lease_id: &str) -> Result<Value> {
        let path = self.xleases_path(sd)?;
        let id = lease_id.to_string();
        let sd = sd.to_string();
        let i = blocking(move || xlease::LeasesVolume::open(&path, false)?.lookup(&id)).await??;
        Ok(json!({
            "sd_id": sd,
            "lease_id": i.resource,
            "path": i.path,
            "offset": i.offset,
        }))
    }

    /// Lease.status (any host): the sanlock resource's owners and version.
    pub async fn lease_status(self: &Arc<Self>, sd: &str, lease_id: &str) -> Result<Value> {
        let path = self.xleases_path(sd)?;
        let id = lease_id.to_string();
        blocking(move || {
            let v = xlease::LeasesVolume::open(&path, false)?;
            let i = v.lookup(&id)?;
            let (lver, owners) =
                sanlock::read_resource_owners(v.lockspace(), &id, &i.path, i.offset)?;
            Ok(json!({
                "owners": owners.iter().map(|h| h.host_id).collect::<Vec<_>>(),
                "version": lver,
            }))
        })
        .await?
    }

    pub async fn volume_delete(
        self: &Arc<Self>,
        sp: &str,
        sd: &str,
        img: &str,
        vol: &str,
        force: bool,
    ) -> Result<String> {
        let (p, epoch) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        volume::read_meta(&d, img, vol)?;
        let (img, vol) = (img.to_string(), vol.to_string());
        let me = self.clone();
        Ok(self.spawn_task("Volume.delete", move || {
            me.still_spm(epoch)?;
            volume::delete(&d, &img, &vol, force)
        }))
    }

    pub async fn volume_extend(
        self: &Arc<Self>,
        sp: &str,
        sd: &str,
        img: &str,
        vol: &str,
        size: &Value,
    ) -> Result<String> {
        let (p, epoch) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        volume::read_meta(&d, img, vol)?;
        let size = param_u64(size, "newSize")?;
        if size > volume::MAX_CAPACITY {
            return Err(StorageError::InvalidParameter(format!(
                "size {size} is absurd"
            )));
        }
        let (img, vol) = (img.to_string(), vol.to_string());
        let me = self.clone();
        Ok(self.spawn_task("Volume.extendSize", move || {
            me.still_spm(epoch)?;
            volume::extend(&d, &img, &vol, size)
        }))
    }

    pub async fn volume_set_legality(
        &self,
        sp: &str,
        sd: &str,
        img: &str,
        vol: &str,
        legality: &str,
    ) -> Result<()> {
        let (p, _) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        let l = Legality::parse(legality)
            .ok_or_else(|| StorageError::InvalidParameter(format!("legality {legality:?}")))?;
        volume::set_legality(&d, img, vol, l)
    }

    pub async fn volume_info(&self, sd: &str, img: &str, vol: &str) -> Result<Value> {
        let d = self.find(sd)?;
        let mut v = volume::info(&d, img, vol)?;
        if let Some(p) = lock(&self.pool).as_ref() {
            if p.domains.contains_key(sd) {
                v["pool"] = json!(p.sp_uuid);
            }
        }
        Ok(v)
    }

    /// Volume.copy (SPM): copies a chain into a new standalone volume; with
    /// `vol_type` SHARED that makes a template.
    #[allow(clippy::too_many_arguments)]
    pub async fn volume_copy(
        self: &Arc<Self>,
        sp: &str,
        sd: &str,
        img: &str,
        vol: &str,
        dst_img: &str,
        dst_vol: &str,
        desc: &str,
        vol_type: i64,
        vol_format: i64,
        preallocate: i64,
    ) -> Result<String> {
        let (p, epoch) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        volume::prepare(&d, img, vol, false)?;
        let voltype = match vol_type {
            6 => VolType::Shared,
            7 | 8 => VolType::Leaf,
            other => return Err(StorageError::InvalidParameter(format!("volType {other}"))),
        };
        let c = CreateVolume {
            img: dst_img.to_string(),
            vol: dst_vol.to_string(),
            size: 1,
            format: Format::from_code(vol_format)
                .ok_or_else(|| StorageError::InvalidParameter(format!("volFormat {vol_format}")))?,
            prealloc: Prealloc::from_code(preallocate).ok_or_else(|| {
                StorageError::InvalidParameter(format!("preallocate {preallocate}"))
            })?,
            disktype: "DATA".into(),
            description: desc.to_string(),
            src_img: BLANK_UUID.into(),
            src_vol: BLANK_UUID.into(),
            voltype,
        };
        check_uuid("dstImgUUID", dst_img)?;
        check_uuid("dstVolUUID", dst_vol)?;
        let (img, vol) = (img.to_string(), vol.to_string());
        let me = self.clone();
        Ok(self.spawn_task("Volume.copy", move || {
            me.still_spm(epoch)?;
            volume::copy(&d, &img, &vol, &c)?;
            me.still_spm(epoch)
        }))
    }

    /// Image.delete (SPM): renamed away now, purged by a task.
    pub async fn image_delete(self: &Arc<Self>, sp: &str, sd: &str, img: &str) -> Result<String> {
        let (p, epoch) = self.require_spm(sp)?;
        let d = self.pool_domain(&p, sd)?;
        let gone = volume::delete_image(&d, img)?;
        let me = self.clone();
        Ok(self.spawn_task("Image.delete", move || {
            me.still_spm(epoch)?;
            volume::purge(&gone)
        }))
    }

    /// Image.prepare (any host): checks the chain, returns the leaf's path.
    pub async fn image_prepare(
        &self,
        sd: &str,
        img: &str,
        vol: &str,
        allow_illegal: bool,
    ) -> Result<PathBuf> {
        let d = self.find(sd)?;
        let (img, vol) = (img.to_string(), vol.to_string());
        blocking(move || volume::prepare(&d, &img, &vol, allow_illegal)).await?
    }

    /// A volume's format (for the disk driver type).
    pub fn volume_format(&self, sd: &str, img: &str, vol: &str) -> Result<Format> {
        let d = self.find(sd)?;
        Ok(volume::read_meta(&d, img, vol)?.format)
    }

    // ----- host jobs ------------------------------------------------------------------------

    fn set_job(&self, j: Job) {
        lock(&self.jobs).insert(j.id.clone(), j.clone());
        self.emit(
            format!("|jobs|status|{}", j.id),
            json!({ j.id.clone(): serde_json::to_value(&j).unwrap_or(Value::Null) }),
        );
    }

    pub fn jobs(&self, job_type: Option<&str>, ids: &[String]) -> Value {
        let jobs = lock(&self.jobs);
        Value::Object(
            jobs.iter()
                .filter(|(id, j)| {
                    (ids.is_empty() || ids.contains(id)) && job_type.is_none_or(|t| t == j.job_type)
                })
                .map(|(id, j)| (id.clone(), serde_json::to_value(j).unwrap_or(Value::Null)))
                .collect(),
        )
    }

    /// SDM.copy_data (any host): copies the data of the source chain into an existing
    /// destination volume, which is ILLEGAL during the copy; GEN goes up by one.
    pub async fn copy_data(
        self: &Arc<Self>,
        job_id: &str,
        source: &Value,
        dest: &Value,
    ) -> Result<()> {
        check_uuid("job_id", job_id)?;
        let ep = |v: &Value, what: &str| -> Result<(String, String, String, Option<u32>)> {
            let g = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| StorageError::InvalidParameter(format!("{what}.{k} missing")))
            };
            let (sd, img, vol) = (g("sd_id")?, g("img_id")?, g("vol_id")?);
            check_uuid("sd_id", &sd)?;
            check_uuid("img_id", &img)?;
            check_uuid("vol_id", &vol)?;
            let gen = v
                .get("generation")
                .and_then(Value::as_u64)
                .map(|g| g as u32);
            Ok((sd, img, vol, gen))
        };
        let (ssd, simg, svol, _) = ep(source, "source")?;
        let (dsd, dimg, dvol, dgen) = ep(dest, "destination")?;
        let sdom = self.find(&ssd)?;
        let ddom = self.find(&dsd)?;
        let dmeta = volume::read_meta(&ddom, &dimg, &dvol)?;
        if let Some(g) = dgen {
            if g != dmeta.generation {
                return Err(StorageError::GenerationMismatch(format!(
                    "expected {g}, found {}",
                    dmeta.generation
                )));
            }
        }
        if lock(&self.jobs).contains_key(job_id) {
            return Err(StorageError::InvalidParameter(format!(
                "job {job_id} exists"
            )));
        }
        let host_id = lock(&self.pool).as_ref().map(|p| p.host_id).unwrap_or(0);
        let job = Job {
            id: job_id.to_string(),
            status: "pending".into(),
            description: "copy_data".into(),
            job_type: "storage".into(),
            progress: Some(0),
            error: None,
        };
        self.set_job(job.clone());
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = job;
            j.status = "running".into();
            me.set_job(j.clone());
            let r = (|| -> Result<()> {
                let src = volume::prepare(&sdom, &simg, &svol, false)?;
                let dp = volume::vol_paths(&ddom, &dimg, &dvol);
                // The destination's volume lease keeps other hosts off it.
                let reg = if ddom.uses_sanlock() && host_id > 0 {
                    let reg = Registration::register()?;
                    reg.acquire(&ddom.uuid, &dvol, &dp.lease, 0, None)
                        .map_err(|(_, e)| e)?;
                    Some(reg)
                } else {
                    None
                };
                let mut m = volume::read_meta(&ddom, &dimg, &dvol)?;
                m.legality = Legality::Illegal;
                m.write(&dp.meta)?;
                let smeta = volume::read_meta(&sdom, &simg, &svol)?;
                let s = src.to_string_lossy().into_owned();
                let d = dp.data.to_string_lossy().into_owned();
                volume::qemu_img(
                    &[
                        "convert",
                        "-q",
                        "-n",
                        "-f",
                        smeta.format.qemu(),
                        "-O",
                        m.format.qemu(),
                        &s,
                        &d,
                    ],
                    Some(&sdom.image_dir(&simg)),
                )?;
                m.legality = Legality::Legal;
                m.generation = (m.generation + 1) % 1000;
                m.write(&dp.meta)?;
                drop(reg);
                Ok(())
            })();
            match r {
                Ok(()) => {
                    j.status = "done".into();
                    j.progress = Some(100);
                }
                Err(e) => {
                    j.status = "failed".into();
                    j.error = Some(json!({"code": e.code(), "message": e.to_string()}));
                }
            }
            me.set_job(j);
        });
        Ok(())
    }

    // ----- monitoring -------------------------------------------------------------------------

    fn monitor_once(&self) {
        let (domains, host_id) = match lock(&self.pool).as_ref() {
            Some(p) => (p.domains.keys().cloned().collect::<Vec<_>>(), p.host_id),
            None => return,
        };
        for sd in domains {
            let started = Instant::now();
            let (code, valid, acquired, version) = match self.find(&sd) {
                Ok(d) => match direct_read(&d.metadata_path()) {
                    Ok(_) => match d.metadata() {
                        Ok(m) => (
                            0,
                            true,
                            self.lockspace_held(&d, host_id),
                            m.get_u64("VERSION").map(|v| v as i64).unwrap_or(5),
                        ),
                        Err(e) => (e.code(), false, false, -1),
                    },
                    Err(_) => (379, false, false, -1),
                },
                Err(e) => (e.code(), false, false, -1),
            };
            lock(&self.health).insert(
                sd,
                Health {
                    code,
                    delay: started.elapsed().as_secs_f64(),
                    last_check: Instant::now(),
                    valid,
                    acquired,
                    version,
                },
            );
        }
    }

    /// Host.getStats' `storageDomains` / Host.getStorageRepoStats.
    pub fn repo_stats(&self) -> Value {
        let h = lock(&self.health);
        Value::Object(
            h.iter()
                .map(|(sd, x)| {
                    (
                        sd.clone(),
                        json!({
                            "code": x.code,
                            "delay": format!("{:.6}", x.delay),
                            "lastCheck": format!("{:.1}", x.last_check.elapsed().as_secs_f64()),
                            "valid": x.valid,
                            "acquired": x.acquired,
                            "version": x.version,
                            "actual": true,
                        }),
                    )
                })
                .collect(),
        )
    }

    /// Connected pool ids (Host.getConnectedStoragePools).
    pub fn connected_pools(&self) -> Vec<String> {
        lock(&self.pool).iter().map(|p| p.sp_uuid.clone()).collect()
    }

    /// Runs the monitor once now (tests, and right after connect).
    pub async fn monitor_now(self: &Arc<Self>) {
        let me = self.clone();
        let _ = blocking(move || me.monitor_once()).await;
    }

    /// A unique sequence number (for ids of internal operations).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}
