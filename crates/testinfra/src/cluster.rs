//! "Start N test hosts": each in its own network and mount namespace with its own
//! virtlogd, libvirtd, sanlock daemon and host agent, all sharing one storage directory.
//!
//! Host i of cluster K lives in netns `hlc<K>h<i>` at 10.215.K.(10+i), reached from
//! the test through the bridge `hlc<K>br` (10.215.K.1). Its mount namespace binds
//! private directories over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt,
//! /var/log/libvirt, /etc/libvirt and /run/sanlock. A `sleep` process holds the
//! namespaces; the agent is started into them with `nsenter`, so it can be killed and
//! restarted while the daemons keep running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halyard_client::Client;

use crate::env::{self, mkdir_public};

/// One namespaced test host.
pub struct ClusterHost {
    pub index: usize,
    pub netns: String,
    pub ip: String,
    pub dir: PathBuf,
    holder: Option<Child>,
    hostd: Option<Child>,
}

impl ClusterHost {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("hostd.log")
    }
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    fn pid_file(&self, name: &str) -> Option<i32> {
        fs::read_to_string(self.dir.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
    pub fn hostd_pid(&self) -> Option<u32> {
        self.hostd.as_ref().map(Child::id)
    }
    pub fn sanlock_pid(&self) -> Option<i32> {
        self.pid_file("sanlock.pid")
    }
}

/// N hosts sharing `shared`.
pub struct Cluster {
    pub hosts: Vec<ClusterHost>,
    pub shared: PathBuf,
    pub dir: PathBuf,
    pub k: u32,
    pki: halyard_pki::DevPki,
    hostd_bin: PathBuf,
    io_timeout: u32,
    /// When set, agents register with this Manager (VDSM-REG) instead of using the
    /// cluster's own PKI.
    pub manager_url: Option<String>,
}

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn must(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid we started; no memory is involved.
    unsafe { libc::kill(pid, sig) };
}

/// Every QEMU process on this machine (any test host): pid and command line (NULs as
/// spaces).
pub fn qemu_processes() -> Vec<(i32, String)> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if !comm.starts_with("qemu-system") {
            return None;
        }
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        Some((pid, cmd))
    })
    .collect()
}

/// SIGKILL of a process (a test's QEMU).
pub fn kill9(pid: i32) {
    kill(pid, libc::SIGKILL);
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
}

/// Removes clusters whose test process died.
fn reap_stale(work: &Path) {
    let reg = work.join("clusters");
    let Ok(rd) = fs::read_dir(&reg) else { return };
    for e in rd.flatten() {
        let k = e.file_name().to_string_lossy().into_owned();
        let owner: Option<i32> = fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        teardown_k(&k);
        let _ = fs::remove_file(e.path());
    }
}

fn teardown_k(k: &str) {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .filter(|n| n.starts_with(&format!("hlc{k}h")))
                .collect()
        })
        .unwrap_or_default();
    for ns in names {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for p in String::from_utf8_lossy(&o.stdout).lines() {
                if let Ok(pid) = p.trim().parse() {
                    kill(pid, libc::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        run("ip", &["netns", "del", &ns]);
    }
    run("ip", &["link", "del", &format!("hlc{k}br")]);
}

impl Cluster {
    /// Starts `n` hosts (1..=9). `io_timeout` is sanlock's for the shared domain.
    pub async fn start(n: usize, hostd_bin: impl Into<PathBuf>, io_timeout: u32) -> Cluster {
        let mut c = Cluster::prepare(n, hostd_bin, io_timeout);
        for i in 0..n {
            c.start_hostd(i).await;
        }
        c
    }

    /// The bridge address of the cluster (where hosts reach the test machine).
    pub fn bridge_ip(&self) -> String {
        format!("10.215.{}.1", self.k)
    }

    /// Namespaces and daemons of `n` hosts, without their agents (start them with
    /// [`Cluster::start_hostd`], after setting [`Cluster::manager_url`] if they register
    /// with a Manager).
    pub fn prepare(n: usize, hostd_bin: impl Into<PathBuf>, io_timeout: u32) -> Cluster {
        assert!((1..=9).contains(&n));
        let env = env::Env::get();
        let shim = env.sanlock_shim();
        let work = env.work_dir().to_path_buf();
        mkdir_public(&work.join("clusters"));
        reap_stale(&work);
        // Pick a free cluster number under the setup lock.
        let k = {
            let lockf = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(work.join("setup.lock"))
                .expect("setup.lock");
            use std::os::fd::AsRawFd;
            // SAFETY: flock on our own descriptor; released when `lockf` drops.
            unsafe { libc::flock(lockf.as_raw_fd(), libc::LOCK_EX) };
            let k = (1..250u32)
                .find(|k| !work.join("clusters").join(k.to_string()).exists())
                .expect("a free cluster number");
            fs::write(
                work.join("clusters").join(k.to_string()),
                std::process::id().to_string(),
            )
            .expect("cluster registry");
            k
        };
        let dir = work.join(format!("cluster-{k}"));
        let _ = fs::remove_dir_all(&dir);
        mkdir_public(&dir);
        let shared = dir.join("shared");
        mkdir_public(&shared);
        let bridge = format!("hlc{k}br");
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        must(
            "ip",
            &["addr", "add", &format!("10.215.{k}.1/24"), "dev", &bridge],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        let ips: Vec<String> = (0..n).map(|i| format!("10.215.{k}.{}", 10 + i)).collect();
        let pki = halyard_pki::init_dev_pki(&dir.join("pki"), &ips, false).expect("cluster PKI");
        // Every host gets its own server certificate (names: its address).
        let ca =
            halyard_pki::Ca::load(&dir.join("pki/ca.pem"), &dir.join("pki/ca.key")).expect("CA");
        for d in [
            "/run/libvirt",
            "/var/lib/libvirt",
            "/var/cache/libvirt",
            "/var/log/libvirt",
            "/run/sanlock",
        ] {
            let _ = fs::create_dir_all(d);
        }
        let mut hosts = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let netns = format!("hlc{k}h{i}");
            let hdir = dir.join(format!("host{i}"));
            mkdir_public(&hdir);
            ca.issue(std::slice::from_ref(ip), halyard_pki::Usage::Host, 30)
                .expect("host cert")
                .save(&hdir, "hostd")
                .expect("save host cert");
            // Network.
            let veth = format!("hlc{k}v{i}");
            let peer = format!("hlc{k}p{i}");
            must("ip", &["netns", "add", &netns]);
            must(
                "ip",
                &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            );
            must("ip", &["link", "set", &peer, "netns", &netns]);
            must("ip", &["link", "set", &veth, "master", &bridge]);
            must("ip", &["link", "set", &veth, "up"]);
            must("ip", &["-n", &netns, "link", "set", &peer, "name", "eth0"]);
            must(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ],
            );
            must("ip", &["-n", &netns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
            // Private libvirt and sanlock directories.
            for d in [
                "libvirt-run",
                "libvirt-lib",
                "libvirt-cache",
                "libvirt-log",
                "libvirt-etc",
                "sanlock-run",
            ] {
                mkdir_public(&hdir.join(d));
            }
            must(
                "cp",
                &[
                    "-a",
                    "/etc/libvirt/.",
                    &hdir.join("libvirt-etc").to_string_lossy(),
                ],
            );
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "rm -f {etc}/qemu/*.xml; cp -a /var/cache/libvirt/qemu {cache}/ 2>/dev/null; \
                     mkdir -p {lib}/qemu; cp -a /var/lib/libvirt/qemu/. {lib}/qemu/ 2>/dev/null; \
                     rm -rf {lib}/qemu/domain-* {lib}/qemu/channel/target/domain-*; true",
                    etc = hdir.join("libvirt-etc").display(),
                    cache = hdir.join("libvirt-cache").display(),
                    lib = hdir.join("libvirt-lib").display(),
                ))
                .status();
            let host_uuid = uuid::Uuid::new_v4();
            let conf = hdir.join("libvirt-etc/libvirtd.conf");
            let mut c = fs::read_to_string(&conf).unwrap_or_default();
            c.push_str(&format!("\nhost_uuid = \"{host_uuid}\"\n"));
            // libvirtd listens with TLS on the host's address, with the host's
            // certificate (as VDSM configures it), for peer-to-peer migration.
            // libvirtd listens with TLS on the host's address, with the host's
            // certificate in libvirt's default places (a private /etc/pki per host);
            // the agent keeps them in line with its identity and has libvirtd reload
            // them. Until it starts they hold the cluster's certificate.
            let etc_pki = hdir.join("etc-pki");
            for d in ["CA", "libvirt/private"] {
                fs::create_dir_all(etc_pki.join(d)).expect("pki dir");
            }
            for (src, name) in [
                (hdir.join("hostd.key"), "libvirt/private/serverkey.pem"),
                (hdir.join("hostd.pem"), "libvirt/servercert.pem"),
                (dir.join("pki/ca.pem"), "CA/cacert.pem"),
            ] {
                fs::copy(&src, etc_pki.join(name)).expect("libvirt pki file");
            }
            c.push_str(&format!(
                "listen_tls = 1\nlisten_tcp = 0\nlisten_addr = \"{ip}\"\n"
            ));
            fs::write(&conf, c).expect("libvirtd.conf");
            let qconf = hdir.join("libvirt-etc/qemu.conf");
            let mut q = fs::read_to_string(&qconf).unwrap_or_default();
            // Two libvirtds on one cgroup tree would fight over the same cgroups.
            q.push_str("\ncgroup_controllers = [ ]\n");
            // VM leases are enforced as on an oVirt host: libvirt acquires a VM's
            // <lease> through this host's sanlock daemon before QEMU runs, and QEMU
            // cannot run without it. No automatic disk leases (oVirt's setting).
            q.push_str("lock_manager = \"sanlock\"\n");
            fs::write(&qconf, q).expect("qemu.conf");
            fs::write(
                hdir.join("libvirt-etc/qemu-sanlock.conf"),
                "auto_disk_leases = 0\nrequire_lease_for_disks = 0\nuser = \"root\"\ngroup = \"root\"\n",
            )
            .expect("qemu-sanlock.conf");
            let preload = shim
                .as_ref()
                .map(|p| format!("LD_PRELOAD={}", p.display()))
                .unwrap_or_default();
            let script = format!(
                r#"set -e
D={d}
mount --bind $D/libvirt-run /run/libvirt
mount --bind $D/libvirt-lib /var/lib/libvirt
mount --bind $D/libvirt-cache /var/cache/libvirt
mount --bind $D/libvirt-log /var/log/libvirt
mount --bind $D/libvirt-etc /etc/libvirt
mount --bind $D/sanlock-run /run/sanlock
mkdir -p /etc/pki
mount --bind $D/etc-pki /etc/pki
virtlogd -d -p $D/virtlogd.pid
LIBVIRT_LOG_OUTPUTS="3:file:$D/libvirtd.log" libvirtd -d --listen -p $D/libvirtd.pid
{preload} sanlock daemon -D -w 0 -U root -G root -e {netns} > $D/sanlock.log 2>&1 < /dev/null &
echo $! > $D/sanlock.pid
exec sleep 2147483647
"#,
                d = hdir.display(),
            );
            let holder = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(hdir.join("holder.log")).expect("log"))
                .spawn()
                .expect("starting the host namespace");
            hosts.push(ClusterHost {
                index: i,
                netns,
                ip: ip.clone(),
                dir: hdir,
                holder: Some(holder),
                hostd: None,
            });
        }
        let c = Cluster {
            hosts,
            shared,
            dir,
            k,
            pki,
            hostd_bin: hostd_bin.into(),
            io_timeout,
            manager_url: None,
        };
        for i in 0..n {
            c.wait_daemons(i);
        }
        c
    }

    /// The name host i registers with.
    pub fn host_name(&self, i: usize) -> String {
        format!("c{}h{i}", self.k)
    }

    fn wait_daemons(&self, i: usize) {
        let h = &self.hosts[i];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let lv =
                std::os::unix::net::UnixStream::connect(h.dir.join("libvirt-run/libvirt-sock"))
                    .is_ok();
            let sl =
                std::os::unix::net::UnixStream::connect(h.dir.join("sanlock-run/sanlock.sock"))
                    .is_ok();
            if lv && sl {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {i}: daemons did not start (libvirt {lv}, sanlock {sl}); see {}",
                h.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts (or restarts) host i's agent inside its namespaces.
    pub async fn start_hostd(&mut self, i: usize) {
        let io_timeout = self.io_timeout;
        let h = &mut self.hosts[i];
        if let Some(mut c) = h.hostd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let holder = h.holder.as_ref().map(Child::id).expect("holder");
        let (cert, key, ca, manager) = match &self.manager_url {
            Some(u) => (
                h.dir.join("mpki/hostd.pem"),
                h.dir.join("mpki/hostd.key"),
                h.dir.join("mpki/ca.pem"),
                format!(
                    "[manager]\nurl = \"{u}\"\nhost_name = \"c{}h{i}\"\naddress = \"{}\"\npoll_secs = 1\n",
                    self.k, h.ip
                ),
            ),
            None => (
                h.dir.join("hostd.pem"),
                h.dir.join("hostd.key"),
                self.pki.client.ca.clone(),
                String::new(),
            ),
        };
        let config = format!(
            r#"state_dir = "{d}/state"
disk_stats_paths = ["/tmp"]
[listen]
address = "0.0.0.0"
port = 54321
[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"
[libvirt]
domain_type = "{dt}"
[monitoring]
vm_stats_interval_secs = 2
host_stats_interval_secs = 2
[migration]
monitor_interval_secs = 1
manage_libvirt_tls = true
[vm]
image_dirs = ["{cache}", "{work}"]
console_log_dir = "{work}"
[storage]
run_dir = "{d}/storage-run"
io_timeout = {io_timeout}
monitor_interval_secs = 2
spm_watchdog_interval_secs = 1
{manager}"#,
            d = h.dir.display(),
            cert = cert.display(),
            key = key.display(),
            ca = ca.display(),
            dt = env::domain_type(),
            cache = halyard_testguest::default_cache_dir().display(),
            work = env::Env::get().work_dir().display(),
        );
        fs::write(h.dir.join("hostd.toml"), config).expect("config");
        let _ = fs::remove_file(h.dir.join("state/listen.addr"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(h.log_path())
            .expect("log");
        let child = Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-m", "-n", "--"])
            .arg(&self.hostd_bin)
            .arg("--config")
            .arg(h.dir.join("hostd.toml"))
            .env("RUST_LOG", "info,halyard_hostd=debug,halyard_storage=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .spawn()
            .expect("starting halyard-hostd");
        h.hostd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.manager_url.is_some() && h.dir.join("state/listen.addr").exists() {
                // A registering agent is reached through the Manager.
                return;
            }
            if h.dir.join("state/listen.addr").exists() {
                if let Ok(c) = Client::connect(
                    &h.ip,
                    54321,
                    halyard_pki::client_config(&self.pki.client).expect("tls"),
                )
                .await
                {
                    if c.call_value("Host.ping2", serde_json::json!({}))
                        .await
                        .is_ok()
                    {
                        c.close().await;
                        return;
                    }
                }
            }
            if let Some(Ok(Some(st))) = h.hostd.as_mut().map(Child::try_wait) {
                panic!("host {i}: halyard-hostd exited with {st}:\n{}", h.log());
            }
            assert!(
                Instant::now() < deadline,
                "host {i}: agent not ready:\n{}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a command in host i's mount and network namespaces; true if it succeeded.
    pub fn in_host(&self, i: usize, cmd: &[&str]) -> bool {
        let Some(holder) = self.hosts[i].holder.as_ref().map(Child::id) else {
            return false;
        };
        Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-m", "-n", "--"])
            .args(cmd)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Runs a command in host i's namespaces; its output.
    pub fn in_host_output(&self, i: usize, cmd: &[&str]) -> std::process::Output {
        let holder = self.hosts[i]
            .holder
            .as_ref()
            .map(Child::id)
            .expect("holder");
        Command::new("nsenter")
            .args(["-t", &holder.to_string(), "-m", "-n", "--"])
            .args(cmd)
            .output()
            .expect("nsenter")
    }

    /// Runs `sh -c cmd` in a guest through its qemu-ga (`guest-exec`, through host i's
    /// libvirt); its stdout.
    pub fn guest_exec(&self, i: usize, domain: &str, cmd: &str) -> String {
        use base64::Engine;
        let req = serde_json::json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", cmd], "capture-output": true}});
        let out = self.in_host_output(
            i,
            &["virsh", "qemu-agent-command", domain, &req.to_string()],
        );
        assert!(
            out.status.success(),
            "guest-exec on host {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("guest-exec answer");
        let pid = v["return"]["pid"].as_i64().expect("pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req =
                serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}});
            let out = self.in_host_output(
                i,
                &["virsh", "qemu-agent-command", domain, &req.to_string()],
            );
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            if v["return"]["exited"] == true {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v["return"]["out-data"].as_str().unwrap_or(""))
                    .expect("base64");
                return String::from_utf8_lossy(&bytes).into_owned();
            }
            assert!(Instant::now() < deadline, "{cmd} did not end in the guest");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client of host i that presents host `as_host`'s certificate (what host
    /// `as_host`'s agent would present).
    pub async fn client_as_host(&self, i: usize, as_host: usize) -> Client {
        let d = &self.hosts[as_host].dir;
        let tls = halyard_pki::client_config(&halyard_pki::TlsFiles {
            cert: d.join("hostd.pem"),
            key: d.join("hostd.key"),
            ca: self.dir.join("pki/ca.pem"),
        })
        .expect("tls");
        Client::connect(&self.hosts[i].ip, 54321, tls)
            .await
            .unwrap_or_else(|e| panic!("connecting to host {i} as host {as_host}: {e}"))
    }

    /// A client of host i.
    pub async fn client(&self, i: usize) -> Client {
        let tls = halyard_pki::client_config(&self.pki.client).expect("tls");
        Client::connect(&self.hosts[i].ip, 54321, tls)
            .await
            .unwrap_or_else(|e| panic!("connecting to host {i}: {e}"))
    }

    /// SIGKILL of host i's agent (its sanlock daemon lives on).
    pub fn kill_hostd(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].hostd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process holding host i's namespaces.
    pub(crate) fn holder_pid(&self, i: usize) -> Option<u32> {
        self.hosts[i].holder.as_ref().map(Child::id)
    }

    /// The QEMU processes running in host i (its network namespace), with their
    /// command lines.
    pub fn qemu_on(&self, i: usize) -> Vec<(i32, String)> {
        let Some(holder) = self.hosts[i].holder.as_ref().map(Child::id) else {
            return Vec::new();
        };
        let ns = fs::read_link(format!("/proc/{holder}/ns/net")).ok();
        qemu_processes()
            .into_iter()
            .filter(|(pid, _)| fs::read_link(format!("/proc/{pid}/ns/net")).ok() == ns)
            .collect()
    }

    /// Host i dies: SIGKILL of its agent, its sanlock daemon and its QEMU processes at
    /// once (what a watchdog reset does to a host whose sanlock stopped renewing; the
    /// test hosts run sanlock without a watchdog).
    pub fn kill_host(&mut self, i: usize) {
        let qemus = self.qemu_on(i);
        self.kill_sanlock(i);
        for (pid, _) in qemus {
            kill(pid, libc::SIGKILL);
        }
        self.kill_hostd(i);
    }

    /// SIGKILL of host i's sanlock daemon (as if the host died, watchdog aside).
    pub fn kill_sanlock(&mut self, i: usize) {
        if let Some(pid) = self.hosts[i].sanlock_pid() {
            kill(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for h in &mut self.hosts {
            if let Some(mut c) = h.hostd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if panicking {
                eprintln!("---- host {} agent log ----\n{}", h.index, {
                    let l = h.log();
                    let v: Vec<&str> = l.lines().collect();
                    v[v.len().saturating_sub(120)..].join("\n")
                });
            }
        }
        teardown_k(&self.k.to_string());
        for h in &mut self.hosts {
            if let Some(mut c) = h.holder.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = fs::remove_file(
            self.dir
                .parent()
                .unwrap_or(Path::new("/"))
                .join("clusters")
                .join(self.k.to_string()),
        );
        if !panicking {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
