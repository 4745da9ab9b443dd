//! A real Manager for tests: `halyard-manager` on a free port with its own data dir,
//! on SQLite or on a private PostgreSQL; the unmodified `ovirt-engine-sdk-python` in a
//! virtualenv for tests that drive it; and workspace binaries built on demand.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::env::{self, mkdir_public};

fn lock(p: &Path) -> fs::File {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // SAFETY: flock on our own descriptor; released when the file is dropped.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    f
}

/// Path of a workspace binary, (re)built with cargo the first time a test process asks.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let path = dir.join(bin);
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(&bin.to_string()) {
        let _l = lock(&env::Env::get().work_dir().join("cargo.lock"));
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["build", "-q", "-p", package, "--bin", bin]);
        if release {
            c.arg("--release");
        }
        let st = c.status().expect("running cargo build");
        assert!(st.success(), "cargo build -p {package} --bin {bin} failed");
        built.push(bin.to_string());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Halyard's guest agent as the static executable the test guest carries: built with
/// `+crt-static` into `target/static` (the same command a release build uses).
pub fn static_guest_agent() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let out = target.join("static/x86_64-unknown-linux-gnu/release/halyard-guest-agent");
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let _l = lock(&env::Env::get().work_dir().join("cargo.lock"));
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "-q",
                "--release",
                "-p",
                "halyard-guest-agent",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(target.join("static"))
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols -C opt-level=s",
            )
            .status()
            .expect("running cargo build");
        assert!(st.success(), "building the static guest agent failed");
    });
    assert!(out.exists(), "{} was not built", out.display());
    out
}

/// `config` with `port = 0` in its `[imageio]` section (added when it has none).
pub fn with_free_imageio_port(config: &str) -> String {
    match config.find("[imageio]\n") {
        Some(i)
            if !config[i..]
                .lines()
                .skip(1)
                .take_while(|l| !l.starts_with('['))
                .any(|l| l.starts_with("port")) =>
        {
            let at = i + "[imageio]\n".len();
            format!("{}port = 0\n{}", &config[..at], &config[at..])
        }
        Some(_) => config.to_string(),
        None => format!("{config}\n[imageio]\nport = 0\n"),
    }
}

/// A virtualenv under the work directory, made once per machine: `probe` (Python
/// code) must succeed in it, else it is made anew with `packages` from PyPI.
fn venv(name: &str, probe: &str, packages: &[&str]) -> PathBuf {
    let work = env::Env::get().work_dir().to_path_buf();
    let _l = lock(&work.join(format!("{name}.lock")));
    let venv = work.join(name);
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", probe])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let _ = fs::remove_dir_all(&venv);
        let st = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(st.success(), "creating the virtualenv {name} failed");
        let out = Command::new(&py)
            .args(["-m", "pip", "install", "-q"])
            .args(packages)
            .output()
            .expect("pip");
        assert!(
            out.status.success(),
            "pip install {} failed (the SDK needs gcc, python3-dev, libxml2-dev):\n{}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    venv
}

/// The Python of a virtualenv holding the unmodified SDK from PyPI.
pub fn sdk_python() -> PathBuf {
    venv(
        "sdk-venv",
        "import ovirtsdk4.version as v, ovirt_imageio.client; assert v.VERSION.startswith('4.6')",
        &[
            "ovirt-engine-sdk-python>=4.6,<4.7",
            "ovirt-imageio>=2.5,<2.6",
        ],
    )
    .join("bin/python")
}

/// A virtualenv with Ansible (the `ansible` package of PyPI, which carries the
/// `ovirt.ovirt` collection) and the oVirt SDK it drives.
pub fn ansible_venv() -> PathBuf {
    venv(
        "ansible-venv",
        "import ovirtsdk4, ansible_collections.ovirt.ovirt, ansible, shutil, sys, os; \
         assert os.path.exists(os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'))",
        &["ansible>=12,<13", "ovirt-engine-sdk-python>=4.6,<4.7"],
    )
}

/// A private PostgreSQL server (initdb in a temporary directory, run as `postgres`).
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .last()
        .map(|v| v.join("bin").join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir =
            env::Env::get()
                .work_dir()
                .join(format!("pg-{}-{}", std::process::id(), free_port()));
        let _ = fs::remove_dir_all(&dir);
        mkdir_public(&dir);
        let data = dir.join("data");
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(
            st.success(),
            "chown of the PostgreSQL directory failed (is the postgresql package installed?)"
        );
        let run = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let initdb = pg_bin("initdb");
        run(&[
            &initdb.to_string_lossy(),
            "-D",
            &data.to_string_lossy(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        );
        let pg_ctl = pg_bin("pg_ctl");
        run(&[
            &pg_ctl.to_string_lossy(),
            "-D",
            &data.to_string_lossy(),
            "-o",
            &opts,
            "-l",
            &dir.join("log").to_string_lossy(),
            "-w",
            "start",
        ]);
        let psql = pg_bin("psql");
        run(&[
            &psql.to_string_lossy(),
            "-h",
            &dir.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-c",
            "CREATE USER halyard PASSWORD 'halyard'",
            "-c",
            "CREATE DATABASE halyard OWNER halyard",
        ]);
        Postgres {
            url: format!("postgres://halyard:halyard@127.0.0.1:{port}/halyard"),
            dir,
            port,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Which database the Manager uses.
pub enum Database<'a> {
    Sqlite,
    Postgres(&'a Postgres),
}

/// A running Manager.
pub struct ManagerProc {
    pub dir: PathBuf,
    pub port: u16,
    pub password: String,
    child: Option<Child>,
    args: Vec<String>,
    log_filter: String,
}

impl ManagerProc {
    /// Starts a Manager; `extra_config` is appended to its TOML.
    pub async fn start(db: Database<'_>, extra_config: &str) -> ManagerProc {
        ManagerProc::start_with_log(db, extra_config, "info,halyard_manager=debug").await
    }

    /// [`ManagerProc::start`] with a `RUST_LOG` filter of the caller's choice.
    pub async fn start_with_log(
        db: Database<'_>,
        extra_config: &str,
        log_filter: &str,
    ) -> ManagerProc {
        ManagerProc::start_on(db, extra_config, log_filter, "127.0.0.1", &[]).await
    }

    /// A Manager listening on `address` whose certificate also names `names` (for
    /// hosts in other network namespaces).
    pub async fn start_on(
        db: Database<'_>,
        extra_config: &str,
        log_filter: &str,
        address: &str,
        names: &[String],
    ) -> ManagerProc {
        let env = env::Env::get();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = env
            .work_dir()
            .join(format!("host-{}-m{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        mkdir_public(&dir);
        let database = match db {
            Database::Sqlite => String::new(),
            Database::Postgres(p) => format!("database = \"{}\"\n", p.url),
        };
        // The image transfer proxy on a free port (tests run side by side).
        let extra_config = with_free_imageio_port(extra_config);
        let config = format!(
            "address = \"{address}\"\nport = 0\ndata_dir = \"{}\"\nnames = [\"localhost\"{}]\n{database}vm_console_dir = \"{}\"\n{extra_config}\n",
            dir.join("data").display(),
            names
                .iter()
                .map(|n| format!(", \"{n}\""))
                .collect::<String>(),
            dir.join("consoles").display(),
        );
        fs::write(dir.join("manager.toml"), config).expect("config");
        let mut m = ManagerProc {
            dir: dir.clone(),
            port: 0,
            password: String::new(),
            child: None,
            log_filter: log_filter.to_string(),
            args: vec![
                "--config".into(),
                dir.join("manager.toml").to_string_lossy().into_owned(),
            ],
        };
        m.spawn().await;
        m.password = fs::read_to_string(dir.join("data/admin-password"))
            .expect("admin password file")
            .trim()
            .to_string();
        m
    }

    async fn spawn(&mut self) {
        let bin = workspace_bin("halyard-manager", "halyard-manager");
        let _ = fs::remove_file(self.dir.join("data/listen.addr"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("manager.log"))
            .expect("log");
        let child = Command::new(bin)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("fd"))
            .stderr(log)
            .spawn()
            .expect("starting halyard-manager");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(s) = fs::read_to_string(self.dir.join("data/listen.addr")) {
                if let Some(p) = s.trim().rsplit(':').next().and_then(|p| p.parse().ok()) {
                    self.port = p;
                    return;
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("halyard-manager exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the Manager did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn api_url(&self) -> String {
        format!("{}/ovirt-engine/api", self.url())
    }

    /// admin@internal's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("data/pki/ca.pem")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Runs a Python script with the SDK; env gets HALYARD_URL, HALYARD_CA,
    /// HALYARD_PASSWORD plus `extra`.
    pub fn run_sdk(&self, script: &Path, extra: &[(&str, String)]) -> std::process::Output {
        let py = sdk_python();
        let mut c = Command::new(py);
        c.arg(script)
            .env("HALYARD_URL", self.api_url())
            .env("HALYARD_CA", self.ca())
            .env("HALYARD_PASSWORD", &self.password);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().expect("running the SDK script")
    }

    /// An HTTPS client trusting the Manager's CA.
    pub fn tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        halyard_pki::client_config_anonymous(&self.ca()).expect("tls")
    }

    /// A token for admin@internal.
    pub async fn token(&self) -> String {
        let (status, body) = self.login("admin@internal", &self.password).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["access_token"].as_str().expect("token").to_string()
    }

    /// A password login of `user` (`name@profile`) at the SSO; (status, body).
    pub async fn login(&self, user: &str, password: &str) -> (u16, String) {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let body = format!(
            "grant_type=password&scope=ovirt-app-api&username={}&password={}",
            enc(user),
            enc(password)
        );
        let r = halyard_client::http::request(
            self.tls(),
            "POST",
            &format!("{}/ovirt-engine/sso/oauth/token", self.url()),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
        .expect("token request");
        (r.status, r.text())
    }

    /// Runs `halyard-manager --config <its config> directory <args>` (the Manager may
    /// be running); panics when it fails unless `may_fail`.
    pub fn directory(&self, args: &[&str], may_fail: bool) -> std::process::Output {
        let out = Command::new(workspace_bin("halyard-manager", "halyard-manager"))
            .args(&self.args)
            .arg("directory")
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("running halyard-manager directory");
        assert!(
            may_fail || out.status.success(),
            "directory {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// An API request with a token; returns (status, body).
    pub async fn api(&self, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
        self.api_with(token, method, path, body, &[]).await
    }

    /// [`ManagerProc::api`] with more request headers.
    pub async fn api_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
        more: &[(&str, &str)],
    ) -> (u16, String) {
        let auth = format!("Bearer {token}");
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Version", "4"),
            ("Content-Type", "application/xml"),
            ("Accept", "application/xml"),
        ];
        headers.extend_from_slice(more);
        let r = halyard_client::http::request(
            self.tls(),
            method,
            &format!("{}{path}", self.api_url()),
            &headers,
            body.as_bytes(),
        )
        .await
        .expect("API request");
        (r.status, r.text())
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let l = self.log();
            let v: Vec<&str> = l.lines().collect();
            eprintln!(
                "---- halyard-manager log ----\n{}",
                v[v.len().saturating_sub(150)..].join("\n")
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
