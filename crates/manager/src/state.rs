//! The Manager's state: configuration, database, in-memory inventory, PKI, users and
//! tokens, and the events log. Every change goes to the database before it is
//! acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use halyard_common::limits::{Backoff, KeyedRateLimit};

use crate::config::Config;
use crate::db::Db;
use crate::model::*;

/// Events kept in memory (the database has all of them).
const EVENTS_IN_MEMORY: usize = 20_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// `principal@profile`.
    pub name: String,
    /// Argon2; empty: the user cannot log in.
    pub hash: String,
    /// The directory's id of the entry (admin@internal's is `ADMIN_USER_ID`).
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Clone)]
struct Token {
    user: String,
    expires: Instant,
}

/// The PKI files of the Manager.
pub struct Pki {
    pub ca: halyard_pki::Ca,
    pub dir: PathBuf,
    /// TLS config the Manager uses to connect to host agents (its client certificate).
    pub host_client: Arc<rustls::ClientConfig>,
    /// SHA-256 fingerprint of the CA certificate (hex, colon separated).
    pub ca_fingerprint: String,
    /// The names on the Manager's own HTTPS certificate (lower case): the CA signs no
    /// other certificate for them, so no host can pass for the Manager.
    pub own_names: Vec<String>,
}

/// The names of the Manager's HTTPS certificate: the configured ones, or the host name
/// and `localhost`. Loopback addresses are not among the defaults: on an all-in-one the
/// host agent is `127.0.0.1` (see docs/security.md).
pub fn engine_names(cfg: &Config) -> Vec<String> {
    if !cfg.names.is_empty() {
        return cfg.names.clone();
    }
    let mut names = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_string());
        }
    }
    names.push("localhost".to_string());
    names
}

pub struct Manager {
    pub cfg: Config,
    pub db: Db,
    pub inv: RwLock<Inventory>,
    tokens: Mutex<HashMap<String, Token>>,
    pub pki: Pki,
    /// Per-host monitoring handles (connections to agents).
    pub monitors: Mutex<HashMap<String, crate::hosts::MonitorHandle>>,
    /// Serialises changes that read-check-write the inventory.
    pub write_lock: tokio::sync::Mutex<()>,
    /// Pool connections, elections and task sends in progress (memory only).
    pub pools: Mutex<crate::storage::PoolState>,
    /// Held by [`Manager::insert`], [`Manager::update`] and [`Manager::remove`] only,
    /// for the read-change-write of one object; never while waiting for anything else.
    store: tokio::sync::Mutex<()>,
    /// What clients may try how often (logins, registrations, join tokens).
    pub throttles: Throttles,
    /// The image transfer proxy (imageio's proxy role, port 54323): its tickets name
    /// the hosts' ticket URLs.
    pub imageio: Arc<halyard_imageio::ImageServer>,
    /// One-time tickets of the VNC WebSocket proxy.
    pub proxy_tickets: crate::consoleproxy::ProxyTickets,
    /// HA restart failures already told as an event, per VM (memory only; see `ha`).
    pub ha_told: Mutex<HashMap<String, std::time::Instant>>,
}

/// Bounds on attempts, per user and per source address.
pub struct Throttles {
    /// Registrations that would wait for an admin, per source.
    pub registrations: KeyedRateLimit<IpAddr>,
    /// Wrong join tokens, per source.
    pub join_tokens: Backoff<IpAddr>,
    /// Failed logins per user name (bounded to 64 characters) and per source.
    pub login_users: Backoff<String>,
    pub login_sources: Backoff<IpAddr>,
}

impl Throttles {
    fn new(cfg: &Config) -> Throttles {
        let max_wait = Duration::from_secs(cfg.login_max_wait_secs.max(1));
        Throttles {
            registrations: KeyedRateLimit::new(
                cfg.pending_registrations_per_minute,
                Duration::from_secs(60),
                10_000,
            ),
            join_tokens: Backoff::new(5, Duration::from_secs(1), max_wait, 10_000),
            login_users: Backoff::new(
                cfg.login_free_failures,
                Duration::from_secs(1),
                max_wait,
                10_000,
            ),
            login_sources: Backoff::new(
                cfg.login_free_failures.saturating_mul(4),
                Duration::from_secs(1),
                max_wait,
                10_000,
            ),
        }
    }
}

/// The outcome of a login.
#[derive(Debug)]
pub enum Login {
    Ok {
        token: String,
        ttl: Duration,
    },
    Denied,
    /// The password is right, but the user holds no SuperUser role on the system (the
    /// only users that may log in while finer permissions are not enforced).
    NotPermitted,
    /// Too many failures for this user or from this address: wait.
    Throttled(Duration),
}

/// A user name as logs, events and throttles see it: at most 64 characters, no
/// control characters.
pub fn user_label(user: &str) -> String {
    user.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A random token of `n` bytes, hex.
pub fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n * 2);
    while out.len() < n * 2 {
        for b in uuid::Uuid::new_v4().as_bytes() {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out.truncate(n * 2);
    out
}

pub fn hash_password(p: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&uuid::Uuid::new_v4().into_bytes())
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(p.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

/// An argon2 hash of a random password, checked against for unknown users.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password(&random_hex(16)).unwrap_or_default())
}

pub fn verify_password(p: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(p.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

fn fingerprint(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Manager {
    /// Opens the database and PKI (creating both at the first start, with the admin
    /// user) and loads the inventory.
    pub async fn open(cfg: Config) -> anyhow::Result<Arc<Manager>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let db = Db::open(&cfg.database_url()).await?;
        info!(backend = db.backend, "database ready");
        let pki = Self::open_pki(&cfg)?;
        let imageio = halyard_imageio::ImageServer::new(
            halyard_imageio::Role::Proxy,
            halyard_imageio::Limits {
                max_connections: cfg.imageio.max_connections,
                ..Default::default()
            },
            Some(halyard_pki::client_config_trusting(pki.ca.cert_pem())?),
        );
        imageio.set_local_hosts_by_socket(cfg.imageio.local_hosts_by_socket);
        let throttles = Throttles::new(&cfg);
        let m = Arc::new(Manager {
            cfg,
            db,
            inv: RwLock::new(Inventory::default()),
            tokens: Mutex::new(HashMap::new()),
            pki,
            monitors: Mutex::new(HashMap::new()),
            write_lock: tokio::sync::Mutex::new(()),
            pools: Mutex::new(Default::default()),
            store: tokio::sync::Mutex::new(()),
            throttles,
            imageio,
            proxy_tickets: Default::default(),
            ha_told: Mutex::new(HashMap::new()),
        });
        m.init_admin().await?;
        m.load().await?;
        Ok(m)
    }

    fn open_pki(cfg: &Config) -> anyhow::Result<Pki> {
        let dir = cfg.data_dir.join("pki");
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca = if cert.exists() && key.exists() {
            halyard_pki::Ca::load(&cert, &key)?
        } else {
            let ca = halyard_pki::Ca::generate("Halyard Manager CA", 3650)?;
            ca.save(&dir)?;
            info!(dir = %dir.display(), "created the Manager's CA");
            ca
        };
        let names = engine_names(cfg);
        // The HTTPS certificate is re-issued at each start (names may change).
        ca.issue(&names, halyard_pki::Usage::Server, 825)?
            .save(&dir, "engine")?;
        // The client identity hosts obey; one issued before roles existed is replaced.
        let has_role = std::fs::read_to_string(dir.join("manager-client.pem"))
            .ok()
            .and_then(|p| halyard_pki::role_of_pem(&p))
            == Some(halyard_pki::Role::Manager);
        if !has_role {
            ca.issue(
                &["halyard-manager".to_string()],
                halyard_pki::Usage::ManagerClient,
                825,
            )?
            .save(&dir, "manager-client")?;
        }
        let host_client = halyard_pki::client_config(&halyard_pki::TlsFiles {
            cert: dir.join("manager-client.pem"),
            key: dir.join("manager-client.key"),
            ca: cert.clone(),
        })?;
        let ca_fingerprint = fingerprint(ca.cert_pem());
        Ok(Pki {
            ca,
            dir,
            host_client,
            ca_fingerprint,
            own_names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        })
    }

    pub fn engine_tls(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(self.pki.dir.join("engine.pem"))?
                .collect::<Result<_, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.pki.dir.join("engine.key"))?;
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        Ok(Arc::new(cfg))
    }

    async fn init_admin(&self) -> anyhow::Result<()> {
        if self
            .db
            .get::<User>("user", "admin@internal")
            .await?
            .is_some()
        {
            return Ok(());
        }
        let (password, from_file) = match &self.cfg.admin_password_file {
            Some(p) if p.exists() => (std::fs::read_to_string(p)?.trim().to_string(), true),
            _ => (random_hex(12), false),
        };
        if password.len() < 8 {
            anyhow::bail!("the admin password must have at least 8 characters");
        }
        let user = User {
            name: "admin@internal".into(),
            hash: hash_password(&password)?,
            id: crate::api::access::ADMIN_USER_ID.into(),
        };
        self.db.put("user", &user.name, &user).await?;
        if !from_file {
            // Written 0600, never logged or printed.
            let path = self.cfg.data_dir.join("admin-password");
            halyard_common::fsutil::write_atomic(&path, format!("{password}\n").as_bytes(), 0o600)?;
            info!(file = %path.display(), "the password of admin@internal was generated into a file readable by root only");
        }
        Ok(())
    }

    async fn load(&self) -> anyhow::Result<()> {
        let mut inv = Inventory::default();
        for d in self.db.all::<DataCenter>("datacenter").await? {
            inv.data_centers.insert(d.id.clone(), d);
        }
        for c in self.db.all::<Cluster>("cluster").await? {
            inv.clusters.insert(c.id.clone(), c);
        }
        for n in self.db.all::<Network>("network").await? {
            inv.networks.insert(n.id.clone(), n);
        }
        for h in self.db.all::<Host>("host").await? {
            inv.hosts.insert(h.id.clone(), h);
        }
        for v in self.db.all::<Vm>("vm").await? {
            Vm::reindex(&mut inv, None, Some(&v));
            inv.vms.insert(v.id.clone(), v);
        }
        for n in self.db.all::<Nic>("nic").await? {
            Nic::reindex(&mut inv, None, Some(&n));
            inv.nics.insert(n.id.clone(), n);
        }
        for j in self.db.all::<Job>("job").await? {
            inv.jobs.insert(j.id.clone(), j);
        }
        for x in self.db.all::<StorageDomain>("storagedomain").await? {
            inv.storage_domains.insert(x.id.clone(), x);
        }
        for x in self.db.all::<Disk>("disk").await? {
            Disk::reindex(&mut inv, None, Some(&x));
            inv.disks.insert(x.id.clone(), x);
        }
        for x in self.db.all::<Snapshot>("snapshot").await? {
            inv.snapshots.insert(x.id.clone(), x);
        }
        for x in self.db.all::<Template>("template").await? {
            inv.templates.insert(x.id.clone(), x);
        }
        for x in self.db.all::<ImageTransfer>("imagetransfer").await? {
            inv.image_transfers.insert(x.id.clone(), x);
        }
        for x in self.db.all::<StorageTask>("task").await? {
            inv.tasks.insert(x.id.clone(), x);
        }
        for x in self.db.all::<JoinToken>("jointoken").await? {
            inv.join_tokens.insert(x.id.clone(), x);
        }
        for x in self.db.all::<Tag>("tag").await? {
            inv.tags.insert(x.id.clone(), x);
        }
        for x in self.db.all::<Record>("record").await? {
            inv.records.insert(x.id.clone(), x);
        }
        for x in self.db.all::<FenceAgent>("fenceagent").await? {
            inv.fence_agents.insert(x.id.clone(), x);
        }
        inv.events = self
            .db
            .recent_events::<Event>(EVENTS_IN_MEMORY as i64)
            .await?
            .into();
        inv.next_event_id = self.db.max_event_id().await? + 1;
        let empty = inv.data_centers.is_empty();
        *self.inv.write().unwrap_or_else(|p| p.into_inner()) = inv;
        // The predefined objects first: the defaults' companions point to them.
        crate::api::kinds::seed(self).await?;
        crate::directory::refresh(self).await?;
        if empty {
            self.create_defaults().await?;
        }
        Ok(())
    }

    /// The Default data center with its Default cluster and ovirtmgmt network.
    async fn create_defaults(&self) -> anyhow::Result<()> {
        let dc = DataCenter {
            id: uuid::Uuid::new_v4().to_string(),
            name: "Default".into(),
            description: "The default Data Center".into(),
            local: false,
            status: "uninitialized".into(),
            ..Default::default()
        };
        let cl = Cluster {
            id: uuid::Uuid::new_v4().to_string(),
            name: "Default".into(),
            description: "The default server cluster".into(),
            data_center: dc.id.clone(),
            cpu_type: "Halyard Any CPU".into(),
            mac_pool: String::new(),
            scheduling_policy: String::new(),
            fencing_enabled: true,
            fencing_skip_if_sd_active: false,
            migration_bandwidth_mbps: None,
        };
        let net = Network {
            id: uuid::Uuid::new_v4().to_string(),
            name: "ovirtmgmt".into(),
            description: "Management Network".into(),
            data_center: dc.id.clone(),
            mtu: 0,
            vlan: None,
            usages: vec!["vm".into(), "management".into()],
            clusters: None,
        };
        self.insert(&dc).await?;
        self.insert(&cl).await?;
        self.insert(&net).await?;
        crate::api::kinds::companions(self, "Cluster", &cl.id).await?;
        crate::api::kinds::companions(self, "Network", &net.id).await?;
        Ok(())
    }

    // ----- auth ------------------------------------------------------------------------

    /// Checks a password; a new token when it is right. Failures are throttled per
    /// user and per source address, with a doubling wait.
    pub async fn login(&self, user: &str, password: &str, peer: IpAddr) -> Login {
        let label = user_label(user);
        let peer = halyard_common::net::canonical(peer);
        let th = &self.throttles;
        if let Some(wait) = th
            .login_users
            .check(&label)
            .err()
            .or_else(|| th.login_sources.check(&peer).err())
        {
            return Login::Throttled(wait);
        }
        let u = if user.len() > 256 {
            None
        } else {
            self.db.get::<User>("user", user).await.ok().flatten()
        };
        let right = match &u {
            // A directory user without a password: as long as a wrong password.
            Some(u) if u.hash.is_empty() => {
                let _ = verify_password(password, dummy_hash());
                false
            }
            Some(u) => verify_password(password, &u.hash),
            None => {
                // As long as a wrong password: the answer does not tell which users exist.
                let _ = verify_password(password, dummy_hash());
                false
            }
        };
        let Some(u) = u.filter(|_| right) else {
            th.login_users.failure(&label);
            th.login_sources.failure(&peer);
            return Login::Denied;
        };
        th.login_users.success(&label);
        th.login_sources.success(&peer);
        if !crate::directory::may_log_in(&self.read(), &u.name) {
            return Login::NotPermitted;
        }
        let token = random_hex(32);
        let ttl = Duration::from_secs(self.cfg.token_lifetime_secs);
        let now = Instant::now();
        let Some(expires) = now.checked_add(ttl) else {
            return Login::Denied;
        };
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, v| v.expires > now);
        t.insert(
            token.clone(),
            Token {
                user: u.name,
                expires,
            },
        );
        Login::Ok { token, ttl }
    }

    /// The user of a valid, unexpired token.
    pub fn check_token(&self, token: &str) -> Option<String> {
        let t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.get(token)
            .filter(|v| v.expires > Instant::now())
            .map(|v| v.user.clone())
    }

    pub fn logout(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Expires a token at once (tests of expiry).
    pub fn expire_token(&self, token: &str) {
        if let Some(t) = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(token)
        {
            t.expires = Instant::now();
        }
    }

    // ----- events ----------------------------------------------------------------------

    /// Records an event (audit log).
    pub async fn event(
        &self,
        code: i64,
        severity: &str,
        description: String,
        host: Option<&str>,
        vm: Option<&str>,
    ) {
        self.event_from(code, severity, description, host, vm, None)
            .await;
    }

    /// [`Manager::event`] with an external origin (`POST /events`): (origin, custom id).
    /// Returns the event.
    pub async fn event_from(
        &self,
        code: i64,
        severity: &str,
        description: String,
        host: Option<&str>,
        vm: Option<&str>,
        external: Option<(String, i64)>,
    ) -> Event {
        let ev = {
            let mut inv = self.inv.write().unwrap_or_else(|p| p.into_inner());
            let id = inv.next_event_id.max(1);
            inv.next_event_id = id + 1;
            let cluster = vm
                .and_then(|v| inv.vms.get(v).map(|v| v.cluster.clone()))
                .or_else(|| host.and_then(|h| inv.hosts.get(h).map(|h| h.cluster.clone())));
            let data_center = cluster
                .as_ref()
                .and_then(|c| inv.clusters.get(c).map(|c| c.data_center.clone()));
            let ev = Event {
                id,
                code,
                severity: severity.into(),
                description,
                time: now_ms(),
                host: host.map(str::to_string),
                vm: vm.map(str::to_string),
                cluster,
                data_center,
                correlation_id: None,
                origin: external.as_ref().map(|e| e.0.clone()),
                custom_id: external.as_ref().map(|e| e.1),
            };
            inv.events.push_back(ev.clone());
            while inv.events.len() > EVENTS_IN_MEMORY {
                inv.events.pop_front();
            }
            ev
        };
        info!(code, severity, "{}", ev.description);
        if let Err(e) = self.db.add_event(ev.id, &ev).await {
            warn!(error = %e, "cannot store an event");
        }
        ev
    }

    // ----- persistence ------------------------------------------------------------------
    //
    // Every change of a stored object goes through `insert`, `update` or `remove`: under
    // the store lock, the current copy is read from the inventory, changed, written to
    // the database, then put back. Nothing writes a copy it read earlier (no lost
    // updates when two tasks change the same object).

    /// Stores a new object (or one its creator owns entirely), then puts it into the
    /// inventory.
    pub async fn insert<T: Stored>(&self, v: &T) -> anyhow::Result<()> {
        let _g = self.store.lock().await;
        self.db.put(T::KIND, v.key(), v).await?;
        let mut inv = self.write();
        let old = T::map_mut(&mut inv).insert(v.key().to_string(), v.clone());
        T::reindex(&mut inv, old.as_ref(), Some(v));
        Ok(())
    }

    /// Changes the current copy of object `id` with `f`; writes it when `f` changed
    /// it. `None` when there is no such object.
    pub async fn update<T: Stored, R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut T) -> R,
    ) -> anyhow::Result<Option<R>> {
        let _g = self.store.lock().await;
        let Some(mut cur) = T::map(&self.read()).get(id).cloned() else {
            return Ok(None);
        };
        let before = cur.clone();
        let r = f(&mut cur);
        if cur != before {
            self.db.put(T::KIND, id, &cur).await?;
            let mut inv = self.write();
            T::map_mut(&mut inv).insert(id.to_string(), cur.clone());
            T::reindex(&mut inv, Some(&before), Some(&cur));
        }
        Ok(Some(r))
    }

    /// Changes fields of object `id` that are kept in memory only (samples, guest
    /// details between status changes); the database copy is not written.
    pub async fn update_memory<T: Stored, R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let _g = self.store.lock().await;
        let mut inv = self.write();
        let cur = T::map_mut(&mut inv).get_mut(id)?;
        // What the indexes hold of it, not a copy of it (this is the monitor's hot path).
        let before = cur.index_key();
        let r = f(cur);
        let after = cur.index_key();
        if before != after {
            T::reindex_keys(&mut inv, before, after);
        }
        Some(r)
    }

    /// Deletes an object from the database, then from the inventory; then the
    /// records that cannot live without it (`api::kinds::orphans`).
    pub async fn remove<T: Stored>(&self, id: &str) -> anyhow::Result<Option<T>> {
        let gone = self.remove_only::<T>(id).await?;
        if gone.is_some() {
            crate::api::kinds::orphans(self, id).await?;
        }
        Ok(gone)
    }

    /// [`Manager::remove`] without the orphans.
    pub async fn remove_only<T: Stored>(&self, id: &str) -> anyhow::Result<Option<T>> {
        let _g = self.store.lock().await;
        self.db.delete(T::KIND, id).await?;
        let mut inv = self.write();
        let old = T::map_mut(&mut inv).remove(id);
        T::reindex(&mut inv, old.as_ref(), None);
        Ok(old)
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Inventory> {
        self.inv.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inventory> {
        self.inv.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a job for an action; finish it with [`Manager::finish_job`].
    pub async fn start_job(&self, description: String) -> String {
        let j = Job {
            id: uuid::Uuid::new_v4().to_string(),
            description,
            status: "started".into(),
            start_time: now_ms(),
            end_time: None,
            steps: vec![],
        };
        let id = j.id.clone();
        if let Err(e) = self.insert(&j).await {
            warn!(error = %e, "cannot store a job");
        }
        id
    }

    pub async fn finish_job(&self, id: &str, ok: bool) {
        let r = self
            .update(id, |j: &mut Job| {
                j.status = if ok { "finished" } else { "failed" }.into();
                j.end_time = Some(now_ms());
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "cannot store a job");
        }
    }
}

/// A kind of object the Manager stores: its table name and where it lives in the
/// inventory.
pub trait Stored: Serialize + Clone + PartialEq + Send + Sync + 'static {
    const KIND: &'static str;
    fn key(&self) -> &str;
    fn map(inv: &Inventory) -> &BTreeMap<String, Self>;
    fn map_mut(inv: &mut Inventory) -> &mut BTreeMap<String, Self>;
    /// What the inventory's indexes hold of an object (none for most kinds).
    fn index_key(&self) -> Option<IndexKey> {
        None
    }
    /// Keeps the indexes when an object's key changes (`None`: not there).
    fn reindex_keys(_inv: &mut Inventory, _old: Option<IndexKey>, _new: Option<IndexKey>) {}
    /// Keeps the inventory's indexes of this kind when an object changes.
    fn reindex(inv: &mut Inventory, old: Option<&Self>, new: Option<&Self>) {
        let (o, n) = (old.and_then(Self::index_key), new.and_then(Self::index_key));
        if o != n {
            Self::reindex_keys(inv, o, n);
        }
    }
}

/// What the indexes hold of an object: a VM's name and the memory it commits on its
/// host; a NIC's MAC address.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexKey {
    pub id: String,
    pub name: String,
    pub commitment: Option<(String, u64)>,
    /// The host a VM is placed on; the VM a NIC or disk belongs to.
    pub host: Option<String>,
    pub mac: Option<u64>,
}

/// Keeps an owner -> members index (`IndexKey::host`: a VM's host, a NIC's or disk's
/// VM) as an object moves from `old` to `new`.
fn reindex_owner(
    index: &mut std::collections::HashMap<String, std::collections::BTreeSet<String>>,
    old: &Option<IndexKey>,
    new: &Option<IndexKey>,
) {
    for (k, add) in [(old, false), (new, true)] {
        if let Some((owner, id)) = k.as_ref().and_then(|k| Some((k.host.as_ref()?, &k.id))) {
            crate::model::index_set(index, owner, id, add);
        }
    }
}

impl Stored for Vm {
    const KIND: &'static str = "vm";
    fn key(&self) -> &str {
        &self.id
    }
    fn map(inv: &Inventory) -> &BTreeMap<String, Self> {
        &inv.vms
    }
    fn map_mut(inv: &mut Inventory) -> &mut BTreeMap<String, Self> {
        &mut inv.vms
    }
    fn index_key(&self) -> Option<IndexKey> {
        Some(IndexKey {
            id: self.id.clone(),
            name: self.name.clone(),
            commitment: Inventory::commitment(self).map(|(h, m)| (h.to_string(), m)),
            host: self.host.clone(),
            mac: None,
        })
    }
    fn reindex_keys(inv: &mut Inventory, old: Option<IndexKey>, new: Option<IndexKey>) {
        reindex_owner(&mut inv.vms_on, &old, &new);
        if let Some(o) = old {
            if inv.vm_names.get(&o.name) == Some(&o.id) {
                inv.vm_names.remove(&o.name);
            }
            if let Some((h, m)) = &o.commitment {
                inv.commit(h, *m, false);
            }
        }
        if let Some(n) = new {
            inv.vm_names.insert(n.name.clone(), n.id.clone());
            if let Some((h, m)) = &n.commitment {
                inv.commit(h, *m, true);
            }
        }
    }
}

impl Stored for Nic {
    const KIND: &'static str = "nic";
    fn key(&self) -> &str {
        &self.id
    }
    fn map(inv: &Inventory) -> &BTreeMap<String, Self> {
        &inv.nics
    }
    fn map_mut(inv: &mut Inventory) -> &mut BTreeMap<String, Self> {
        &mut inv.nics
    }
    fn index_key(&self) -> Option<IndexKey> {
        Some(IndexKey {
            id: self.id.clone(),
            mac: crate::api::macpools::parse_mac(&self.mac),
            host: Some(self.vm.clone()),
            ..IndexKey::default()
        })
    }
    fn reindex_keys(inv: &mut Inventory, old: Option<IndexKey>, new: Option<IndexKey>) {
        reindex_owner(&mut inv.nics_by_vm, &old, &new);
        if let Some(m) = old.and_then(|k| k.mac) {
            if let Some(c) = inv.macs.get_mut(&m) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    inv.macs.remove(&m);
                }
            }
        }
        if let Some(m) = new.and_then(|k| k.mac) {
            *inv.macs.entry(m).or_default() += 1;
        }
    }
}

impl Stored for Disk {
    const KIND: &'static str = "disk";
    fn key(&self) -> &str {
        &self.id
    }
    fn map(inv: &Inventory) -> &BTreeMap<String, Self> {
        &inv.disks
    }
    fn map_mut(inv: &mut Inventory) -> &mut BTreeMap<String, Self> {
        &mut inv.disks
    }
    fn index_key(&self) -> Option<IndexKey> {
        Some(IndexKey {
            id: self.id.clone(),
            host: self.vm.clone(),
            ..IndexKey::default()
        })
    }
    fn reindex_keys(inv: &mut Inventory, old: Option<IndexKey>, new: Option<IndexKey>) {
        reindex_owner(&mut inv.disks_by_vm, &old, &new);
    }
}

macro_rules! stored {
    ($($t:ty => $kind:literal, $field:ident;)*) => {$(
        impl Stored for $t {
            const KIND: &'static str = $kind;
            fn key(&self) -> &str {
                &self.id
            }
            fn map(inv: &Inventory) -> &BTreeMap<String, Self> {
                &inv.$field
            }
            fn map_mut(inv: &mut Inventory) -> &mut BTreeMap<String, Self> {
                &mut inv.$field
            }
        }
    )*};
}

stored! {
    DataCenter => "datacenter", data_centers;
    Cluster => "cluster", clusters;
    Network => "network", networks;
    Host => "host", hosts;
    Job => "job", jobs;
    StorageDomain => "storagedomain", storage_domains;
    Snapshot => "snapshot", snapshots;
    Template => "template", templates;
    ImageTransfer => "imagetransfer", image_transfers;
    StorageTask => "task", tasks;
    JoinToken => "jointoken", join_tokens;
    Tag => "tag", tags;
    Record => "record", records;
    FenceAgent => "fenceagent", fence_agents;
}
