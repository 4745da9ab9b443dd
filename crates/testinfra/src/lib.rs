//! Halyard's test harness: "a host with a running guest" in one call.
//!
//! - [`env`] makes sure the machine can run guests: `/dev/kvm` permissions (no udev
//!   here), virtlogd and libvirtd (started by hand in a private directory when none
//!   runs, and stopped by the last test process that uses them), and a test bridge.
//! - [`TestHost`] runs a real `halyard-hostd` with its own PKI, state directory and
//!   port, and connects clients to it over TLS + STOMP + JSON-RPC.
//! - [`TestHost::boot_guest`] boots the tiny test guest through the agent (VM.create
//!   with engine-style domain XML) and waits for its ready line.
//!
//! Everything a test makes is removed when the [`TestHost`] is dropped, also when the
//! test panics; domains left by a killed test process are removed by the next one.

pub mod bmc;
pub mod cluster;
pub mod env;
pub mod guest;
pub mod manager;
pub mod storage;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_proto::jsonrpc::Notification;

pub use guest::{GuestSpec, RunningGuest};

/// Prefix of every domain name the harness creates: `ht<pid>-<name>`.
pub const DOMAIN_PREFIX: &str = "ht";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Options of a test host agent.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The `halyard-hostd` binary (tests pass `env!("CARGO_BIN_EXE_halyard-hostd")`).
    pub hostd_bin: PathBuf,
    /// Seconds between VM samples.
    pub vm_stats_interval_secs: u64,
    /// Seconds between host samples.
    pub host_stats_interval_secs: u64,
    /// Largest STOMP frame the agent accepts.
    pub max_frame_bytes: usize,
    /// Extra config appended to the agent's TOML.
    pub extra_config: String,
    /// RUST_LOG of the agent.
    pub log_filter: String,
    /// sanlock io_timeout for storage (1 in tests: lease expiry ~68 s).
    pub storage_io_timeout: u32,
    /// Start a sanlock daemon for the agent (storage tests).
    pub sanlock: bool,
    /// Register with this Manager instead of using a development PKI.
    pub manager_url: Option<String>,
    /// Name to register as.
    pub host_name: String,
    /// Wait for enrollment by a Manager (`POST /hosts`) with this one-time token.
    pub enroll_token: Option<String>,
    /// Register with this one-time join token.
    pub join_token: Option<String>,
    /// Environment of the agent process (e.g. a crash point).
    pub env: Vec<(String, String)>,
    /// Wait until the agent answers (false: a test that expects it to die).
    pub wait_ready: bool,
}

impl HostOptions {
    pub fn new(hostd_bin: impl Into<PathBuf>) -> Self {
        HostOptions {
            hostd_bin: hostd_bin.into(),
            vm_stats_interval_secs: 2,
            host_stats_interval_secs: 2,
            max_frame_bytes: 1024 * 1024,
            extra_config: String::new(),
            log_filter: "info,halyard_hostd=debug,halyard_storage=debug".into(),
            storage_io_timeout: 1,
            sanlock: false,
            manager_url: None,
            enroll_token: None,
            join_token: None,
            env: Vec::new(),
            wait_ready: true,
            host_name: String::new(),
        }
    }
}

/// A running host agent with its own PKI and state.
pub struct TestHost {
    pub dir: PathBuf,
    pub pki: halyard_pki::DevPki,
    pub port: u16,
    pub opts: HostOptions,
    child: Option<Child>,
    /// Prefix of this host's domain names.
    pub prefix: String,
    env: &'static env::Env,
}

impl TestHost {
    /// Prepares the environment and starts an agent.
    pub async fn start(opts: HostOptions) -> TestHost {
        let env = env::Env::get();
        if opts.sanlock {
            env.ensure_sanlock();
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{DOMAIN_PREFIX}{}-{n}-", std::process::id());
        let dir = env
            .work_dir()
            .join(format!("host-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        env::mkdir_public(&dir);
        let managed = opts.manager_url.is_some() || opts.enroll_token.is_some();
        let pki = if managed {
            // Certificates come from the Manager at registration.
            halyard_pki::DevPki {
                hostd: halyard_pki::TlsFiles {
                    cert: dir.join("pki/hostd.pem"),
                    key: dir.join("pki/hostd.key"),
                    ca: dir.join("pki/ca.pem"),
                },
                client: halyard_pki::TlsFiles {
                    cert: dir.join("pki/client.pem"),
                    key: dir.join("pki/client.key"),
                    ca: dir.join("pki/ca.pem"),
                },
            }
        } else {
            halyard_pki::init_dev_pki(
                &dir.join("pki"),
                &halyard_pki::default_host_names(&[]),
                false,
            )
            .expect("creating the test PKI")
        };
        let manager_section = match &opts.manager_url {
            Some(u) => format!(
                "[manager]\nurl = \"{u}\"\nhost_name = \"{}\"\naddress = \"127.0.0.1\"\npoll_secs = 1\n",
                if opts.host_name.is_empty() { prefix.trim_end_matches('-').to_string() } else { opts.host_name.clone() }
            ),
            None if opts.enroll_token.is_some() => {
                "[manager]\naddress = \"127.0.0.1\"\n".to_string()
            }
            None => String::new(),
        };
        let enroll = match &opts.enroll_token {
            Some(t) => format!("enroll_token = \"{t}\"\n"),
            None => String::new(),
        };
        let manager_section = match &opts.join_token {
            Some(t) => format!("{manager_section}join_token = \"{t}\"\n"),
            None => manager_section,
        };
        let config = format!(
            r#"{enroll}state_dir = "{state}"
disk_stats_paths = ["/tmp"]
[listen]
address = "127.0.0.1"
port = 0
[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
[libvirt]
domain_type = "{dt}"
[monitoring]
vm_stats_interval_secs = {vi}
host_stats_interval_secs = {hi}
[limits]
max_frame_bytes = {mf}
[vm]
image_dirs = ["{cache}", "{work}"]
console_log_dir = "{work}"
[storage]
run_dir = "{srun}"
io_timeout = {iot}
monitor_interval_secs = 2
spm_watchdog_interval_secs = 1
{manager_section}
{extra}
"#,
            state = dir.join("state").display(),
            cert = pki.hostd.cert.display(),
            key = pki.hostd.key.display(),
            ca = pki.hostd.ca.display(),
            dt = env::domain_type(),
            vi = opts.vm_stats_interval_secs,
            hi = opts.host_stats_interval_secs,
            mf = opts.max_frame_bytes,
            srun = dir.join("storage-run").display(),
            // Kernels and initrds of the test guests; console logs of this process's
            // hosts and Managers (all below the work directory).
            cache = halyard_testguest::default_cache_dir().display(),
            work = env.work_dir().display(),
            iot = opts.storage_io_timeout,
            manager_section = manager_section,
            extra = opts.extra_config,
            enroll = enroll,
        );
        let config = crate::manager::with_free_imageio_port(&config);
        std::fs::write(dir.join("hostd.toml"), config).expect("writing the agent config");
        let mut h = TestHost {
            dir,
            pki,
            port: 0,
            opts,
            child: None,
            prefix,
            env,
        };
        h.spawn_agent().await;
        h
    }

    /// Path of the agent's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("hostd.log")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn_agent(&mut self) {
        let addr_file = self.dir.join("state/listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the agent log");
        let child = Command::new(&self.opts.hostd_bin)
            .arg("--config")
            .arg(self.dir.join("hostd.toml"))
            .env("RUST_LOG", &self.opts.log_filter)
            .env("NO_COLOR", "1")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting halyard-hostd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file) {
                if let Some(p) = s.trim().rsplit(':').next().and_then(|p| p.parse().ok()) {
                    self.port = p;
                    // A restarted agent keeps its port, as a real one does.
                    let cfg = self.dir.join("hostd.toml");
                    if let Ok(t) = std::fs::read_to_string(&cfg) {
                        let _ = std::fs::write(
                            &cfg,
                            t.replacen(
                                "[listen]\naddress = \"127.0.0.1\"\nport = 0\n",
                                &format!("[listen]\naddress = \"127.0.0.1\"\nport = {p}\n"),
                                1,
                            ),
                        );
                    }
                    break;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("halyard-hostd exited with {st}; log:\n{}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "halyard-hostd did not start listening; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.opts.manager_url.is_some()
            || self.opts.enroll_token.is_some()
            || !self.opts.wait_ready
        {
            // Registered and enrolling hosts are reached through the Manager.
            return;
        }
        // Wait until recovery finished (ping answers true, not 99).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = self.client().await {
                if c.call_value("Host.ping2", serde_json::json!({}))
                    .await
                    .is_ok()
                {
                    c.close().await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits up to `timeout` for the agent to exit by itself; its status if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            } else {
                return None;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the agent (VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again after [`TestHost::kill9`].
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn_agent().await;
    }

    /// A TLS client configuration with this host's client certificate.
    pub fn client_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        halyard_pki::client_config(&self.pki.client).expect("client TLS config")
    }

    /// A connected client.
    pub async fn client(&self) -> Result<Client, halyard_client::ClientError> {
        Client::connect("127.0.0.1", self.port, self.client_tls()).await
    }

    /// Directory for a guest's files (console log).
    pub fn guest_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("vms").join(name);
        env::mkdir_public(&d);
        d
    }

    /// The libvirt domain name used for a guest of this host.
    pub fn domain_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Boots the test guest through the agent and waits for its ready line.
    pub async fn boot_guest(&self, client: &Client, spec: GuestSpec) -> RunningGuest {
        guest::boot(self, client, spec).await
    }

    /// Runs `virsh` against the host's libvirt.
    pub fn virsh(&self, args: &[&str]) -> std::process::Output {
        self.env.virsh(args)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill9();
        self.env.destroy_domains_with_prefix(&self.prefix);
        unmount_below(&self.dir.join("storage-run"));
        if std::thread::panicking() {
            eprintln!(
                "---- halyard-hostd log ({}) ----\n{}",
                self.log_path().display(),
                tail(&self.log(), 200)
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Unmounts every mount point below `dir` (storage connections of a test agent).
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `path` contains `marker`; returns the file's content.
pub async fn wait_for_file_text(path: &Path, marker: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.contains(marker) {
                return Some(s);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for the next event whose method and params satisfy `pred`.
pub async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<Notification>,
    timeout: Duration,
    mut pred: impl FnMut(&Notification) -> bool,
) -> Option<Notification> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(n)) if pred(&n) => return Some(n),
            Ok(Ok(_)) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// The status in a `|virt|VM_status|<id>` event for `vm_id`.
pub fn event_status(n: &Notification, vm_id: &str) -> Option<String> {
    if n.method != halyard_proto::vdsm::events::vm_status(vm_id) {
        return None;
    }
    n.params
        .get(vm_id)?
        .get("status")?
        .as_str()
        .map(str::to_string)
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
