//! The Manager's configuration file (TOML); every key has a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// Hosts whose registration name or address matches one of these patterns (`*` is a
    /// wildcard) are approved without an admin.
    pub auto_approve: Vec<String>,
    /// Cluster auto-approved hosts join (default: the first cluster).
    pub auto_approve_cluster: Option<String>,
    pub token_lifetime_secs: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    pub monitoring: Monitoring,
    /// Validity of host certificates; they are renewed when a third is left.
    pub host_cert_days: i64,
    /// Where hosts write the serial console logs of VMs the Manager starts.
    pub vm_console_dir: String,
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
            auto_approve_cluster: None,
            token_lifetime_secs: 10 * 3600,
            max_body_bytes: 1024 * 1024,
            monitoring: Monitoring::default(),
            host_cert_days: 365,
            vm_console_dir: "/var/log/halyard/vms".into(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)?;
        Ok(toml::from_str(&text)?)
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
