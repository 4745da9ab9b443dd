//! The machine-wide part of the harness: /dev/kvm, virtlogd + libvirtd, the bridge.
//!
//! Several test processes (nextest runs one per test) share one libvirtd. Each holds a
//! shared `flock` on `users.lock` for its lifetime; setup runs under an exclusive
//! `setup.lock`. At exit a process that can take `users.lock` exclusively is the last
//! user: it stops the daemons and removes the bridge, but only those the harness itself
//! started (a libvirtd that was already running is left alone).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The bridge test guests attach to.
pub const BRIDGE: &str = "hlyd-test0";
/// The bridge of the Manager's management network (`ovirtmgmt`).
pub const MGMT_BRIDGE: &str = "ovirtmgmt";
/// The bridge's address; guests get 10.213.7.x/24.
pub const BRIDGE_ADDR: &str = "10.213.7.1/24";
pub const GATEWAY: &str = "10.213.7.1";

const LIBVIRT_SOCK: &str = "/run/libvirt/libvirt-sock";

pub struct Env {
    dir: PathBuf,
    _users: File,
    image: OnceLock<halyard_testguest::GuestImage>,
    halyard_image: OnceLock<halyard_testguest::GuestImage>,
    sanlock: OnceLock<Option<PathBuf>>,
}

const SANLOCK_SOCK: &str = "/run/sanlock/sanlock.sock";

fn sanlock_alive(sock: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

/// Starts `sanlock daemon` (watchdog off) with the environment in `envs`; returns
/// whether it came up within 5 s.
fn try_start_sanlock(
    log: &Path,
    pidfile: &Path,
    sock: &Path,
    host_name: &str,
    preload: Option<&Path>,
) -> bool {
    let Ok(out) = File::create(log) else {
        return false;
    };
    let mut c = Command::new("sanlock");
    c.args([
        "daemon", "-D", "-w", "0", "-U", "root", "-G", "root", "-e", host_name,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(out.try_clone().expect("log fd"))
    .stderr(out);
    if let Some(p) = preload {
        c.env("LD_PRELOAD", p);
    }
    let Ok(child) = c.spawn() else { return false };
    let _ = fs::write(pidfile, child.id().to_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if sanlock_alive(sock) {
            return true;
        }
        if !pid_alive(child.id())
            || fs::read_to_string(format!("/proc/{}/stat", child.id()))
                .map(|s| s.contains(") Z"))
                .unwrap_or(false)
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

static ENV: OnceLock<Env> = OnceLock::new();

/// Domain type for test guests: `$HALYARD_TEST_DOMAIN_TYPE`, default `qemu` (TCG),
/// because this machine's KVM cannot boot stock kernels.
pub fn domain_type() -> String {
    std::env::var("HALYARD_TEST_DOMAIN_TYPE").unwrap_or_else(|_| "qemu".into())
}

/// Creates a directory readable by QEMU's unprivileged user.
pub fn mkdir_public(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
}

fn flock(f: &File, op: i32) -> bool {
    // SAFETY: flock on a file descriptor owned by `f`; no memory is involved.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

fn lock_file(p: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn libvirt_alive() -> bool {
    std::os::unix::net::UnixStream::connect(LIBVIRT_SOCK).is_ok()
        && run("virsh", &["-c", "qemu:///system", "version"])
            .status
            .success()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Env {
    /// The shared environment, set up on first use.
    pub fn get() -> &'static Env {
        ENV.get_or_init(Env::setup)
    }

    pub fn work_dir(&self) -> &Path {
        &self.dir
    }

    fn setup() -> Env {
        let dir = std::env::var_os("HALYARD_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/halyard-test"));
        mkdir_public(&dir);
        let users = lock_file(&dir.join("users.lock"));
        assert!(flock(&users, libc::LOCK_SH), "locking users.lock");
        let setup = lock_file(&dir.join("setup.lock"));
        assert!(flock(&setup, libc::LOCK_EX), "locking setup.lock");

        // No udev: give /dev/kvm the group and mode udev would, or libvirt re-probes
        // QEMU on every call and KVM domains fail.
        if Path::new("/dev/kvm").exists() {
            let _ = run("chgrp", &["kvm", "/dev/kvm"]);
            let _ = run("chmod", &["0660", "/dev/kvm"]);
        }
        if !libvirt_alive() {
            start_daemons(&dir);
            let _ = fs::write(dir.join("daemons.by-harness"), b"1");
        }
        if !run("ip", &["link", "show", BRIDGE]).status.success() {
            let ok = run("ip", &["link", "add", BRIDGE, "type", "bridge"])
                .status
                .success()
                && run("ip", &["addr", "add", BRIDGE_ADDR, "dev", BRIDGE])
                    .status
                    .success()
                && run("ip", &["link", "set", BRIDGE, "up"]).status.success();
            assert!(ok, "creating bridge {BRIDGE} failed (are we root?)");
            let _ = fs::write(dir.join("bridge.by-harness"), b"1");
        }
        // The Manager's management network: VM NICs on `ovirtmgmt` need its bridge on
        // the host (oVirt's host deploy makes it; here the harness does, no address).
        if !run("ip", &["link", "show", MGMT_BRIDGE]).status.success() {
            let ok = run("ip", &["link", "add", MGMT_BRIDGE, "type", "bridge"])
                .status
                .success()
                && run("ip", &["link", "set", MGMT_BRIDGE, "up"])
                    .status
                    .success();
            assert!(ok, "creating bridge {MGMT_BRIDGE} failed (are we root?)");
            let _ = fs::write(dir.join("mgmt-bridge.by-harness"), b"1");
        }
        let env = Env {
            dir,
            _users: users,
            image: OnceLock::new(),
            halyard_image: OnceLock::new(),
            sanlock: OnceLock::new(),
        };
        env.destroy_stale_domains();
        env.remove_stale_dirs();
        drop(setup);
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe { libc::atexit(at_exit) };
        env
    }

    /// The test guest image, built on first use.
    pub fn guest_image(&self) -> &halyard_testguest::GuestImage {
        self.image.get_or_init(|| {
            halyard_testguest::ensure(
                &halyard_testguest::default_cache_dir(),
                &halyard_testguest::Agent::QemuGa,
            )
            .unwrap_or_else(|e| panic!("building the test guest: {e}"))
        })
    }

    /// The test guest carrying Halyard's guest agent instead of qemu-ga.
    pub fn halyard_guest_image(&self) -> &halyard_testguest::GuestImage {
        self.halyard_image.get_or_init(|| {
            let agent = crate::manager::static_guest_agent();
            halyard_testguest::ensure(
                &halyard_testguest::default_cache_dir(),
                &halyard_testguest::Agent::Halyard(agent),
            )
            .unwrap_or_else(|e| panic!("building the test guest: {e}"))
        })
    }

    /// The LD_PRELOAD shim sanlock needs here, if any (built from
    /// `shim/rlimit_clamp.c` with gcc the first time a plain start fails).
    pub fn sanlock_shim(&self) -> Option<PathBuf> {
        self.ensure_sanlock();
        self.sanlock.get().cloned().flatten()
    }

    /// Makes sure a sanlock daemon serves /run/sanlock (watchdog off); started by the
    /// harness when none runs, with the rlimit shim when a plain start fails.
    pub fn ensure_sanlock(&self) {
        self.sanlock.get_or_init(|| {
            let setup = lock_file(&self.dir.join("setup.lock"));
            assert!(flock(&setup, libc::LOCK_EX), "locking setup.lock");
            let shim_path = self.dir.join("rlimit_clamp.so");
            let needs_shim = self.dir.join("sanlock.needs-shim");
            let sock = Path::new(SANLOCK_SOCK);
            let _ = fs::create_dir_all("/run/sanlock");
            if sanlock_alive(sock) {
                return needs_shim.exists().then_some(shim_path);
            }
            let logs = self.dir.join("daemons");
            mkdir_public(&logs);
            let (log, pid) = (logs.join("sanlock.log"), logs.join("sanlock.pid"));
            if !needs_shim.exists() && try_start_sanlock(&log, &pid, sock, "halyard-test", None) {
                let _ = fs::write(self.dir.join("sanlock.by-harness"), b"1");
                return None;
            }
            if !shim_path.exists() {
                let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim/rlimit_clamp.c");
                let st = Command::new("gcc")
                    .args(["-O2", "-shared", "-fPIC", "-o"])
                    .arg(&shim_path)
                    .arg(&src)
                    .arg("-ldl")
                    .status()
                    .expect("running gcc for the sanlock shim");
                assert!(st.success(), "building the sanlock shim failed");
            }
            assert!(
                try_start_sanlock(&log, &pid, sock, "halyard-test", Some(&shim_path)),
                "sanlock does not start, even with the rlimit shim; see {}",
                log.display()
            );
            let _ = fs::write(&needs_shim, b"1");
            let _ = fs::write(self.dir.join("sanlock.by-harness"), b"1");
            Some(shim_path)
        });
    }

    pub fn virsh(&self, args: &[&str]) -> Output {
        let mut a = vec!["-c", "qemu:///system"];
        a.extend_from_slice(args);
        run("virsh", &a)
    }

    fn domain_names(&self) -> Vec<String> {
        let o = self.virsh(&["list", "--all", "--name"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Destroys (and undefines) every domain whose name starts with `prefix`.
    pub fn destroy_domains_with_prefix(&self, prefix: &str) {
        for name in self.domain_names() {
            if name.starts_with(prefix) {
                let _ = self.virsh(&["destroy", &name]);
                let _ = self.virsh(&["undefine", &name]);
            }
        }
    }

    /// Removes work directories of test processes that no longer exist.
    fn remove_stale_dirs(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid = ["host-", "shared-"]
                .iter()
                .find_map(|p| n.strip_prefix(p))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !pid_alive(pid) {
                    crate::unmount_below(&e.path());
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Removes domains left by test processes that no longer exist.
    fn destroy_stale_domains(&self) {
        for name in self.domain_names() {
            let Some(rest) = name.strip_prefix(crate::DOMAIN_PREFIX) else {
                continue;
            };
            let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid {
                if !pid_alive(pid) {
                    let _ = self.virsh(&["destroy", &name]);
                    let _ = self.virsh(&["undefine", &name]);
                }
            }
        }
    }
}

fn start_daemons(dir: &Path) {
    let logs = dir.join("daemons");
    mkdir_public(&logs);
    let vpid = logs.join("virtlogd.pid");
    let lpid = logs.join("libvirtd.pid");
    let virtlogd_alive =
        std::os::unix::net::UnixStream::connect("/run/libvirt/virtlogd-sock").is_ok();
    if !virtlogd_alive {
        let st = Command::new("virtlogd")
            .args(["-d", "-p"])
            .arg(&vpid)
            .status()
            .expect("starting virtlogd");
        assert!(st.success(), "virtlogd failed to start");
    }
    let st = Command::new("libvirtd")
        .args(["-d", "-p"])
        .arg(&lpid)
        .env(
            "LIBVIRT_LOG_OUTPUTS",
            format!("3:file:{}", logs.join("libvirtd.log").display()),
        )
        .status()
        .expect("starting libvirtd");
    assert!(st.success(), "libvirtd failed to start");
    // The first start probes QEMU's capabilities (about 12 s here).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !libvirt_alive() {
        assert!(Instant::now() < deadline, "libvirtd did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_pidfile(p: &Path) {
    if let Some(pid) = fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) with a pid read from a pid file; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(pid as u32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

extern "C" fn at_exit() {
    let Some(env) = ENV.get() else { return };
    let dir = env.dir.clone();
    // Drop our shared hold, then see whether anyone else still uses the environment.
    let _ = flock(&env._users, libc::LOCK_UN);
    let setup = lock_file(&dir.join("setup.lock"));
    if !flock(&setup, libc::LOCK_EX) {
        return;
    }
    let users = lock_file(&dir.join("users.lock"));
    if !flock(&users, libc::LOCK_EX | libc::LOCK_NB) {
        return; // others still run tests
    }
    if std::env::var_os("HALYARD_TEST_KEEP_DAEMONS").is_some() {
        return;
    }
    if fs::remove_file(dir.join("daemons.by-harness")).is_ok() {
        kill_pidfile(&dir.join("daemons/libvirtd.pid"));
        kill_pidfile(&dir.join("daemons/virtlogd.pid"));
    }
    if fs::remove_file(dir.join("sanlock.by-harness")).is_ok() {
        // sanlock ignores SIGTERM while lockspaces are joined; the test hosts are gone.
        if let Some(pid) = fs::read_to_string(dir.join("daemons/sanlock.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid from our own pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if fs::remove_file(dir.join("bridge.by-harness")).is_ok() {
        let _ = run("ip", &["link", "del", BRIDGE]);
    }
    if fs::remove_file(dir.join("mgmt-bridge.by-harness")).is_ok() {
        let _ = run("ip", &["link", "del", MGMT_BRIDGE]);
    }
}
