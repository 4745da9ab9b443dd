//! The host agent's configuration file (TOML). Every key has a default; see
//! `docs/hostd.md` for the annotated file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    pub tls: Tls,
    pub libvirt: Libvirt,
    pub monitoring: Monitoring,
    pub limits: Limits,
    pub vm: VmPolicy,
    pub storage: Storage,
    pub manager: ManagerLink,
    /// One-time token that lets a Manager enroll this agent (POST /hosts with the token
    /// as root_password) when it has no certificate yet.
    pub enroll_token: Option<String>,
    /// Where the agent keeps its state (the bound address is written to
    /// `<state_dir>/listen.addr` once listening).
    pub state_dir: PathBuf,
    /// Paths whose free space Host.getStats reports in `diskStats`.
    pub disk_stats_paths: Vec<PathBuf>,
    /// Unmap library pages the kernel mapped around faults but the agent never used
    /// (see `memtrim`); keeps RSS to the real working set.
    pub trim_resident_pages: bool,
    pub updates: Updates,
    pub imageio: ImageIo,
    pub migration: Migration,
    pub fencing: Fencing,
}

/// This host as a fence proxy (`Host.fenceNode`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Fencing {
    /// Where the fence agents are (`fence_<agent>`; Debian's fence-agents).
    pub agents_dir: PathBuf,
    /// How long one agent run may take; past it the agent is killed.
    pub timeout_secs: u64,
}

impl Default for Fencing {
    fn default() -> Self {
        Fencing {
            agents_dir: PathBuf::from("/usr/sbin"),
            timeout_secs: 120,
        }
    }
}

/// Live migration (VDSM's `[vars]` migration_* keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Migration {
    /// Outgoing migrations at once (VDSM's `max_outgoing_migrations`); more wait.
    pub max_outgoing: usize,
    /// Incoming migrations at once (VDSM's `max_incoming_migrations`); more are
    /// refused with "Too many incoming migrations" (82).
    pub max_incoming: usize,
    /// libvirtd's TLS port on the other hosts (the source's libvirtd connects to the
    /// destination's, peer to peer, as `qemu+tls://<host>:<port>/system`).
    pub libvirt_tls_port: u16,
    /// Where the agent keeps the certificate files libvirt uses for that connection
    /// (`cacert.pem`, `clientcert.pem`, `clientkey.pem`, written from its identity).
    /// Default: `<state_dir>/libvirt-pki`.
    pub pki_dir: Option<PathBuf>,
    /// Keep libvirtd's own TLS files (`<libvirt_pki_root>/CA/cacert.pem`,
    /// `libvirt/servercert.pem`, `libvirt/private/serverkey.pem`, libvirt's default
    /// locations, the only ones `virt-admin server-update-tls` reloads) in line with
    /// the agent's certificate, and have libvirtd reload them after each change (as
    /// VDSM's host deploy configures libvirtd with the host's certificate).
    pub manage_libvirt_tls: bool,
    pub libvirt_pki_root: PathBuf,
    /// Maximum downtime in ms the schedule ends with when the caller sends none
    /// (VDSM's `migration_downtime`).
    pub downtime_ms: u64,
    /// Steps of the default downtime schedule (`migration_downtime_steps`).
    pub downtime_steps: u32,
    /// Seconds between two looks at a running migration's progress
    /// (`migration_monitor_interval`).
    pub monitor_interval_secs: u64,
    /// A VM that is still an incoming migration after this long is destroyed
    /// (`migration_destination_timeout`).
    pub destination_timeout_secs: u64,
    /// Bandwidth in MiB/s when the caller sends none (`migration_max_bandwidth`).
    pub max_bandwidth_mibps: u64,
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            max_outgoing: 2,
            max_incoming: 2,
            libvirt_tls_port: 16514,
            pki_dir: None,
            manage_libvirt_tls: false,
            libvirt_pki_root: PathBuf::from("/etc/pki"),
            downtime_ms: 500,
            downtime_steps: 5,
            monitor_interval_secs: 10,
            destination_timeout_secs: 21600,
            max_bandwidth_mibps: 52,
        }
    }
}

/// The image data server (ovirt-imageio's daemon role) in the agent's process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImageIo {
    /// Serve image transfers (imageio's port 54322) at the listen address.
    pub enabled: bool,
    /// TCP port; 0 picks a free one (tests). The agent reports it to the Manager
    /// (Host.getCapabilities `imageioPort`), which puts it in transfer URLs.
    pub port: u16,
    /// Open connections, at most.
    pub max_connections: usize,
    /// qemu-nbd servers (NBD.start_server) running at once, at most.
    pub max_nbd_servers: usize,
    /// Also serve imageio's local service (the same protocol without TLS, for
    /// clients on this host) on `<storage.run_dir>/imageio/sock`, in a directory only
    /// root may enter. OPTIONS names it as `unix_socket`.
    pub local_socket: bool,
}

impl Default for ImageIo {
    fn default() -> Self {
        ImageIo {
            enabled: true,
            port: 54322,
            max_connections: 64,
            max_nbd_servers: 64,
            local_socket: true,
        }
    }
}

/// The host's check for updates (`Host.getAvailableUpdates`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Updates {
    /// Name prefixes of the Debian packages that make up the host's platform (what
    /// the check reports).
    pub packages: Vec<String>,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            packages: crate::updates::PLATFORM
                .iter()
                .map(|p| p.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// Address to bind; `::` listens on IPv6 and IPv4.
    pub address: String,
    /// TCP port; 0 picks a free one (tests).
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must be signed by this CA.
    pub ca: PathBuf,
    /// Seconds a client has to finish the TLS handshake.
    pub handshake_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Libvirt {
    pub uri: String,
    /// `kvm` in production; `qemu` (TCG) where KVM cannot run guests.
    pub domain_type: String,
    /// libvirtd's QEMU driver configuration, read to know whether VM leases are
    /// enforced (`lock_manager = "sanlock"`): with libvirt's default lock manager a
    /// `<lease>` would be accepted and ignored, so the agent refuses VMs with leases.
    pub qemu_conf: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Monitoring {
    /// Seconds between VM samples (libvirt's bulk stats call).
    pub vm_stats_interval_secs: u64,
    /// Seconds between host samples (/proc and sysfs).
    pub host_stats_interval_secs: u64,
    /// Seconds after start after which a VM whose guest agent never answered is
    /// reported Up anyway (VDSM: 60).
    pub powering_up_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest STOMP frame body accepted; bigger frames are refused unread.
    pub max_frame_bytes: usize,
    /// Concurrent client connections.
    pub max_connections: usize,
    /// Requests one connection may have in flight.
    pub max_inflight_per_connection: usize,
    /// Bytes of request bodies one connection may have in flight.
    pub max_inflight_bytes_per_connection: usize,
    /// Connections in their TLS handshake (apart from `max_connections`); when full,
    /// a new one closes the oldest of the source with the most.
    pub max_handshakes: usize,
    /// Connections in their TLS handshake from one address.
    pub max_handshakes_per_source: usize,
    /// Seconds a session without heart-beats may stay silent.
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmPolicy {
    /// Default seconds VM.shutdown waits before retrying or giving up.
    pub shutdown_timeout_secs: u64,
    /// Seconds between shutdown attempts (agent, then ACPI).
    pub shutdown_retry_secs: u64,
    /// Directories whose files VMs may boot (kernels, initrds) or attach read-only
    /// (ISOs, floppy images). Disks that are written come from storage domains.
    pub image_dirs: Vec<PathBuf>,
    /// Directories of firmware images (`<loader>`, NVRAM templates).
    pub firmware_dirs: Vec<PathBuf>,
    /// Where serial console logs (and file consoles) may be written; the agent creates
    /// missing directories only below it.
    pub console_log_dir: PathBuf,
    /// Directories for unix-socket channels and consoles.
    pub socket_dirs: Vec<PathBuf>,
    /// Where NVRAM files named by a definition may be.
    pub nvram_dir: PathBuf,
    /// Allow `<disk type="block">` with a host device.
    pub allow_host_block_devices: bool,
    /// Allow `<hostdev>`, hostdev NICs and TPM passthrough.
    pub allow_host_devices: bool,
    /// Allow `<filesystem>` (a host directory shared into the guest).
    pub allow_filesystem_passthrough: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Storage connections are mounted (or linked) under `<run_dir>/mnt`.
    pub run_dir: PathBuf,
    /// sanlock io_timeout of the lockspaces this host creates and joins (sanlock's
    /// default 10; the expiry of a dead host's lease is about 8 x io_timeout + 60 s).
    pub io_timeout: u32,
    /// Seconds between domain monitor reads.
    pub monitor_interval_secs: u64,
    /// Seconds between the SPM's checks that it still holds its lease.
    pub spm_watchdog_interval_secs: u64,
}

/// Registration with a Manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerLink {
    /// `https://manager:port`; when set and no certificate exists yet, the agent
    /// registers and waits for approval.
    pub url: String,
    /// SHA-256 fingerprint of the Manager's CA (`AB:CD:...`); unset = trust on first use.
    pub ca_fingerprint: Option<String>,
    /// Name to register as (default: the host name).
    pub host_name: String,
    /// Address the Manager should connect to (default: the host name).
    pub address: String,
    /// Seconds between checks for approval.
    pub poll_secs: u64,
    /// A one-time join token an admin made (`POST /jointokens`): the registration is
    /// approved at once. Keep the config file 0600, or pass it with `--join-token` /
    /// `HALYARD_JOIN_TOKEN`.
    pub join_token: Option<String>,
}

impl Default for ManagerLink {
    fn default() -> Self {
        let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        ManagerLink {
            url: String::new(),
            ca_fingerprint: None,
            host_name: h.clone(),
            address: h,
            poll_secs: 3,
            join_token: None,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            run_dir: PathBuf::from("/run/halyard/storage"),
            io_timeout: 10,
            monitor_interval_secs: 10,
            spm_watchdog_interval_secs: 2,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            imageio: ImageIo::default(),
            listen: Listen::default(),
            tls: Tls::default(),
            libvirt: Libvirt::default(),
            monitoring: Monitoring::default(),
            limits: Limits::default(),
            vm: VmPolicy::default(),
            storage: Storage::default(),
            manager: ManagerLink::default(),
            enroll_token: None,
            state_dir: PathBuf::from("/var/lib/halyard/hostd"),
            disk_stats_paths: vec![
                PathBuf::from("/var/log"),
                PathBuf::from("/var/lib/halyard"),
                PathBuf::from("/tmp"),
            ],
            trim_resident_pages: true,
            updates: Updates::default(),
            migration: Migration::default(),
            fencing: Fencing::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: "::".into(),
            port: 54321,
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        let d = Path::new("/etc/halyard/pki");
        Tls {
            cert: d.join("hostd.pem"),
            key: d.join("hostd.key"),
            ca: d.join("ca.pem"),
            handshake_timeout_secs: 5,
        }
    }
}

impl Default for Libvirt {
    fn default() -> Self {
        Libvirt {
            uri: "qemu:///system".into(),
            domain_type: "kvm".into(),
            qemu_conf: PathBuf::from("/etc/libvirt/qemu.conf"),
        }
    }
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            vm_stats_interval_secs: 15,
            host_stats_interval_secs: 15,
            powering_up_timeout_secs: 60,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 8 * 1024 * 1024,
            max_connections: 256,
            max_inflight_per_connection: 64,
            max_inflight_bytes_per_connection: 32 * 1024 * 1024,
            max_handshakes: 64,
            max_handshakes_per_source: 16,
            idle_timeout_secs: 300,
        }
    }
}

impl Default for VmPolicy {
    fn default() -> Self {
        VmPolicy {
            shutdown_timeout_secs: 120,
            shutdown_retry_secs: 15,
            image_dirs: vec![PathBuf::from("/var/lib/halyard/images")],
            firmware_dirs: vec![
                PathBuf::from("/usr/share/OVMF"),
                PathBuf::from("/usr/share/qemu"),
                PathBuf::from("/usr/share/seabios"),
            ],
            console_log_dir: PathBuf::from("/var/log/halyard/vms"),
            socket_dirs: vec![
                PathBuf::from("/var/lib/libvirt/qemu/channels"),
                PathBuf::from("/var/run/ovirt-vmconsole-console"),
            ],
            nvram_dir: PathBuf::from("/var/lib/libvirt/qemu/nvram"),
            allow_host_block_devices: false,
            allow_host_devices: false,
            allow_filesystem_passthrough: false,
        }
    }
}

/// Config errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value: {0}")]
    Invalid(String),
}

impl Config {
    /// The VM definition policy of this host (see `vmpolicy`).
    pub fn vm_policy(&self) -> crate::vmpolicy::Policy {
        crate::vmpolicy::Policy {
            image_dirs: self.vm.image_dirs.clone(),
            firmware_dirs: self.vm.firmware_dirs.clone(),
            console_log_dir: self.vm.console_log_dir.clone(),
            socket_dirs: self.vm.socket_dirs.clone(),
            nvram_dir: self.vm.nvram_dir.clone(),
            allow_host_block_devices: self.vm.allow_host_block_devices,
            allow_host_devices: self.vm.allow_host_devices,
            allow_filesystem_passthrough: self.vm.allow_filesystem_passthrough,
            prepared: Default::default(),
            leases: Default::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.libvirt.domain_type.as_str(), "kvm" | "qemu") {
            return Err(ConfigError::Invalid(format!(
                "libvirt.domain_type must be kvm or qemu, not {:?}",
                self.libvirt.domain_type
            )));
        }
        if self.monitoring.vm_stats_interval_secs == 0
            || self.monitoring.host_stats_interval_secs == 0
        {
            return Err(ConfigError::Invalid("stats intervals must be > 0".into()));
        }
        if self.storage.io_timeout == 0
            || self.storage.monitor_interval_secs == 0
            || self.storage.spm_watchdog_interval_secs == 0
        {
            return Err(ConfigError::Invalid(
                "storage io_timeout and intervals must be > 0".into(),
            ));
        }
        if self.limits.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes must be >= 1024".into(),
            ));
        }
        if self.limits.max_inflight_bytes_per_connection < self.limits.max_frame_bytes
            || self.limits.max_inflight_bytes_per_connection > u32::MAX as usize
        {
            return Err(ConfigError::Invalid(
                "limits.max_inflight_bytes_per_connection must be >= max_frame_bytes and < 4 GiB"
                    .into(),
            ));
        }
        if self.limits.max_connections == 0
            || self.limits.max_handshakes == 0
            || self.limits.idle_timeout_secs == 0
            || self.tls.handshake_timeout_secs == 0
        {
            return Err(ConfigError::Invalid(
                "connection limits and timeouts must be > 0".into(),
            ));
        }
        for d in self
            .vm
            .image_dirs
            .iter()
            .chain(&self.vm.firmware_dirs)
            .chain(&self.vm.socket_dirs)
            .chain([&self.vm.console_log_dir, &self.vm.nvram_dir])
        {
            if !d.is_absolute() || d == Path::new("/") {
                return Err(ConfigError::Invalid(format!(
                    "[vm] directories must be absolute and not /: {}",
                    d.display()
                )));
            }
        }
        self.listen_addr()?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip: std::net::IpAddr = self
            .listen
            .address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                ConfigError::Invalid(format!("listen.address {:?}", self.listen.address))
            })?;
        Ok(SocketAddr::new(ip, self.listen.port))
    }

    /// Where the image data server listens.
    pub fn imageio_addr(&self) -> Result<SocketAddr, ConfigError> {
        let mut a = self.listen_addr()?;
        a.set_port(self.imageio.port);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().expect("valid");
        let text = toml::to_string(&c).expect("serialises");
        let back: Config = toml::from_str(&text).expect("parses");
        assert_eq!(back.listen.port, 54321);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let c: Config = toml::from_str("[libvirt]\ndomain_type = \"xen\"").expect("parses");
        assert!(c.validate().is_err());
    }
}
