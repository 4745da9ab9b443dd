//! The Manager's configuration file (TOML); every key has a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest an access token may live.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 30 * 86_400;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`::` = IPv6 and IPv4).
    pub address: String,
    /// HTTPS port (443 by default; the all-in-one uses a high port).
    pub port: u16,
    /// CA, database file, admin password file.
    pub data_dir: PathBuf,
    /// `postgres://user:pass@host/db`; default: SQLite in the data dir.
    pub database: Option<String>,
    /// Names on the Manager's HTTPS certificate (default: host name, localhost,
    /// 127.0.0.1, ::1).
    pub names: Vec<String>,
    /// Read the admin password from this file at the first start instead of making one.
    pub admin_password_file: Option<PathBuf>,
    /// Registrations whose connection comes from an address matching one of these
    /// patterns (`*` is a wildcard), and that ask to be reached at that same address,
    /// are approved without an admin. What a registration claims is never matched.
    pub auto_approve: Vec<String>,
    /// Cluster hosts that register land in (auto-approved or with a join token without
    /// its own cluster); it must exist.
    pub auto_approve_cluster: String,
    /// Registrations waiting for an admin, at most.
    pub max_pending_hosts: usize,
    /// Registrations that would wait for an admin, per source address and minute.
    pub pending_registrations_per_minute: u32,
    /// Seconds an access token lives (at most 30 days).
    pub token_lifetime_secs: u64,
    /// Failed logins of one user, or from one address, before each further one doubles
    /// the wait (from 1 s up to `login_max_wait_secs`).
    pub login_free_failures: u32,
    pub login_max_wait_secs: u64,
    pub limits: Limits,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    pub monitoring: Monitoring,
    /// Validity of host certificates; they are renewed when a third is left.
    pub host_cert_days: i64,
    /// Where hosts write the serial console logs of VMs the Manager starts.
    pub vm_console_dir: String,
    pub imageio: ImageIo,
    pub fencing: Fencing,
}

/// Power management and fencing of hosts (see `fencing`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fencing {
    /// Seconds a host with automatic power management must be non_responsive before
    /// the Manager fences it (oVirt waits a grace period too).
    pub grace_secs: u64,
    /// Seconds between passes of the fencing monitor.
    pub check_secs: u64,
    /// Seconds a stop or start may take to show in the power status.
    pub wait_secs: u64,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing {
            grace_secs: 30,
            check_secs: 5,
            wait_secs: 60,
        }
    }
}

/// The image transfer proxy (ovirt-imageio's proxy on the engine, port 54323) and
/// image transfers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageIo {
    /// Serve the proxy at the API's address.
    pub enabled: bool,
    /// TCP port; 0 picks a free one (tests; written to `<data_dir>/imageio.addr`).
    pub port: u16,
    /// Open proxy connections, at most.
    pub max_connections: usize,
    /// Seconds a transfer may see no client activity before its timeout policy acts
    /// (oVirt's TransferImageClientInactivityTimeoutInSeconds), when the transfer does
    /// not give one.
    pub inactivity_timeout_secs: u64,
    /// Seconds between the checks of running transfers (progress, inactivity).
    pub poll_secs: u64,
    /// Seconds a finished transfer stays listed.
    pub keep_finished_secs: u64,
    /// Image transfers not finished, at most.
    pub max_transfers: usize,
    /// Reach a host on this machine through its local service socket (the
    /// `unix_socket` its OPTIONS names) rather than TLS, as imageio's proxy does.
    pub local_hosts_by_socket: bool,
}

impl Default for ImageIo {
    fn default() -> Self {
        ImageIo {
            enabled: true,
            local_hosts_by_socket: true,
            port: 54323,
            max_connections: 64,
            inactivity_timeout_secs: 60,
            poll_secs: 2,
            keep_finished_secs: 900,
            max_transfers: 256,
        }
    }
}

/// Connections to the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections (TLS established), at most.
    pub max_connections: usize,
    /// Connections in their TLS handshake, at most (apart from `max_connections`); when
    /// full, a new one closes the oldest of the source with the most.
    pub max_handshakes: usize,
    pub max_handshakes_per_source: usize,
    /// Seconds a client has for the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds a client has to send a request's headers.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay without a request.
    pub idle_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_handshakes: 256,
            max_handshakes_per_source: 64,
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 30,
            idle_timeout_secs: 120,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Monitoring {
    /// Seconds between connectivity checks (Host.ping2).
    pub ping_interval_secs: u64,
    /// Seconds between Host.getStats / Host.getAllVmStats.
    pub stats_interval_secs: u64,
    /// Missed checks after which a host is non_responsive.
    pub missed_pings: u32,
    /// Seconds a check may take.
    pub ping_timeout_secs: u64,
    /// Seconds between StoragePool.getSpmStatus checks of each data center's SPM.
    pub spm_status_interval_secs: u64,
    /// Seconds between passes of the pool monitor (hosts to connect, SPM to elect,
    /// storage tasks to follow).
    pub pool_check_secs: u64,
    /// Seconds between passes of the VM pool monitor (prestarted VMs started again;
    /// oVirt's VmPoolMonitorIntervalInMinutes, 5 minutes).
    pub vm_pool_check_secs: u64,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            ping_interval_secs: 3,
            stats_interval_secs: 15,
            missed_pings: 2,
            ping_timeout_secs: 3,
            spm_status_interval_secs: 10,
            pool_check_secs: 2,
            vm_pool_check_secs: 300,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: "::".into(),
            port: 443,
            data_dir: PathBuf::from("/var/lib/halyard/manager"),
            database: None,
            names: Vec::new(),
            admin_password_file: None,
            auto_approve: Vec::new(),
            auto_approve_cluster: "Default".into(),
            max_pending_hosts: 100,
            pending_registrations_per_minute: 10,
            token_lifetime_secs: 10 * 3600,
            login_free_failures: 5,
            login_max_wait_secs: 60,
            limits: Limits::default(),
            max_body_bytes: 1024 * 1024,
            monitoring: Monitoring::default(),
            host_cert_days: 365,
            vm_console_dir: "/var/log/halyard/vms".into(),
            imageio: ImageIo::default(),
            fencing: Fencing::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)?;
        let c: Config = toml::from_str(&text)?;
        c.validate()?;
        Ok(c)
    }

    /// Values the Manager cannot run with are refused at start, not at first use.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.token_lifetime_secs == 0 || self.token_lifetime_secs > MAX_TOKEN_LIFETIME_SECS {
            anyhow::bail!(
                "token_lifetime_secs must be between 1 and {MAX_TOKEN_LIFETIME_SECS} (30 days)"
            );
        }
        if !(1..=3650).contains(&self.host_cert_days) {
            anyhow::bail!("host_cert_days must be between 1 and 3650");
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_handshakes == 0
            || l.max_handshakes_per_source == 0
            || l.handshake_timeout_secs == 0
            || l.header_read_timeout_secs == 0
            || l.idle_timeout_secs == 0
        {
            anyhow::bail!("[limits] values must be > 0");
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 1 << 30 {
            anyhow::bail!("max_body_bytes must be between 1 KiB and 1 GiB");
        }
        self.address
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .map_err(|_| anyhow::anyhow!("address {:?} is not an IP address", self.address))?;
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("manager.db").display()
            )
        })
    }
}
