//! Halyard's tiny test guest, built offline from Debian packages.
//!
//! - Kernel: the Debian kernel package that `linux-image-amd64` depends on, fetched with
//!   `apt-get download`, unpacked with `dpkg -x`; its vmlinuz's xz payload is extracted
//!   to an uncompressed `vmlinux`, which QEMU boots through PVH (about 40% faster under
//!   TCG than the bzImage).
//! - Initramfs (uncompressed newc cpio): busybox-static, the virtio modules (loaded in
//!   dependency order by `/init`), Debian's `qemu-ga` with its shared libraries, a
//!   `/sbin/shutdown` for qemu-ga and an ACPI power-button handler.
//! - `/init` configures `eth0` from `halyard.ip=ADDR/PFX halyard.gw=GW` on the kernel
//!   command line, links `/dev/virtio-ports/<name>`, starts the guest agent on
//!   `org.qemu.guest_agent.0`, and prints [`READY_MARKER`] on the serial console.
//!
//! Results are cached under a key made of every input (package versions, the init
//! script, the module list, the builder version): a build runs only when one changes.

pub mod cpio;
pub mod debian;

pub use debian::{ensure_debian, DebianImage, DebianManifest};

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The line the guest prints on its serial console once it is up and its agent runs.
pub const READY_MARKER: &str = "HALYARD-GUEST ready";

/// Bump when the builder's output changes for the same inputs.
const BUILDER_VERSION: u32 = 2;

/// Kernel modules loaded by `/init`, in dependency order (the Debian package ships no
/// modules.dep we could use without depmod).
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "virtio_blk",
    "virtio-rng",
    "button",
    "evdev",
];

/// Which guest agent the image carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    /// Debian's qemu-guest-agent (the host's installed package, with its libraries).
    QemuGa,
    /// Halyard's guest agent: the static executable at this path, installed as
    /// /usr/sbin/halyard-guest-agent.
    Halyard(PathBuf),
}

impl Agent {
    fn tag(&self) -> &'static str {
        match self {
            Agent::QemuGa => "qemu-ga",
            Agent::Halyard(_) => "halyard",
        }
    }
}

/// Build errors.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("running {cmd}: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

pub(crate) type Result<T> = std::result::Result<T, BuildError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A built guest.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    /// Uncompressed ELF kernel (PVH boot).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub manifest: Manifest,
}

/// What went into an image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub key: String,
    pub kernel_package: String,
    pub kernel_version: String,
    pub kernel_release: String,
    pub busybox_version: String,
    pub agent: String,
    pub agent_version: String,
    pub builder_version: u32,
}

/// Where images are cached: `$HALYARD_GUEST_CACHE`, else `/var/cache/halyard/test-guest`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("HALYARD_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/halyard/test-guest"))
}

/// The kernel command line for a guest with a static address on its first NIC.
pub fn kernel_cmdline(ip_cidr: Option<&str>, gateway: Option<&str>) -> String {
    let mut s = String::from("console=ttyS0 quiet panic=-1");
    if let Some(ip) = ip_cidr {
        s.push_str(&format!(" halyard.ip={ip}"));
    }
    if let Some(gw) = gateway {
        s.push_str(&format!(" halyard.gw={gw}"));
    }
    s
}

/// Returns the cached image for the current inputs, building it first if needed.
/// Safe to call from several processes at once (a lock file serialises builds).
pub fn ensure(cache_dir: &Path, agent: &Agent) -> Result<GuestImage> {
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    set_world_readable_dir(cache_dir)?;
    let _lock = FileLock::acquire(&cache_dir.join(".lock"))?;
    let inputs = Inputs::probe(agent)?;
    let key = inputs.key();
    let dir = cache_dir.join(&key);
    let manifest_path = dir.join("manifest.json");
    if let Ok(data) = fs::read(&manifest_path) {
        if let Ok(m) = serde_json::from_slice::<Manifest>(&data) {
            if m.key == key
                && dir.join("vmlinux").exists()
                && dir.join("vmlinuz").exists()
                && dir.join("initrd.img").exists()
            {
                return Ok(image(dir, m));
            }
        }
    }
    tracing::info!(%key, kernel = %inputs.kernel_package, "building test guest");
    let tmp = cache_dir.join(format!(".build-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let manifest = match build(cache_dir, &tmp, &inputs, agent) {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    halyard_common::fsutil::fsync_dir(cache_dir).map_err(io_err(cache_dir))?;
    Ok(image(dir, manifest))
}

fn image(dir: PathBuf, manifest: Manifest) -> GuestImage {
    GuestImage {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd.img"),
        dir,
        manifest,
    }
}

struct Inputs {
    kernel_package: String,
    kernel_version: String,
    busybox_version: String,
    agent_version: String,
    agent: String,
}

impl Inputs {
    fn probe(agent: &Agent) -> Result<Inputs> {
        let deps = run("apt-cache", &["depends", "linux-image-amd64"])?;
        let kernel_package = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
            .ok_or_else(|| {
                BuildError::Missing("apt-cache knows no kernel for linux-image-amd64".into())
            })?;
        let policy = run("apt-cache", &["policy", &kernel_package])?;
        let kernel_version = policy
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate: "))
            .next()
            .unwrap_or("unknown")
            .to_string();
        let busybox_version = installed_version("busybox-static")?;
        let agent_version = match agent {
            Agent::QemuGa => installed_version("qemu-guest-agent")?,
            Agent::Halyard(p) => {
                let data = fs::read(p).map_err(io_err(p))?;
                Sha256::digest(&data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            }
        };
        Ok(Inputs {
            kernel_package,
            kernel_version,
            busybox_version,
            agent_version,
            agent: agent.tag().to_string(),
        })
    }

    fn key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.kernel_package,
            &self.kernel_version,
            &self.busybox_version,
            &self.agent,
            &self.agent_version,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(INIT_SCRIPT.as_bytes());
        h.update(SHUTDOWN_SCRIPT.as_bytes());
        h.update(MODULES.join(",").as_bytes());
        h.update(BUILDER_VERSION.to_le_bytes());
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn installed_version(pkg: &str) -> Result<String> {
    let v = run("dpkg-query", &["-W", "-f=${Version}", pkg]).map_err(|_| {
        BuildError::Missing(format!(
            "package {pkg} is not installed (apt-get install {pkg})"
        ))
    })?;
    if v.trim().is_empty() {
        return Err(BuildError::Missing(format!(
            "package {pkg} is not installed"
        )));
    }
    Ok(v.trim().to_string())
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<String> {
    run_in(cmd, args, None)
}

fn run_in(cmd: &str, args: &[&str], cwd: Option<&Path>) -> Result<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    let out = c.output().map_err(|e| BuildError::Command {
        cmd: format!("{cmd} {}", args.join(" ")),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BuildError::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build(cache_dir: &Path, tmp: &Path, inputs: &Inputs, agent: &Agent) -> Result<Manifest> {
    // 1. The kernel package, downloaded once into the cache.
    let debs = cache_dir.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let deb = find_deb(&debs, &inputs.kernel_package)?;
    let deb = match deb {
        Some(d) => d,
        None => {
            run_in(
                "apt-get",
                &["download", "-q", &inputs.kernel_package],
                Some(&debs),
            )?;
            find_deb(&debs, &inputs.kernel_package)?.ok_or_else(|| {
                BuildError::Missing(format!(
                    "apt-get download gave no {}",
                    inputs.kernel_package
                ))
            })?
        }
    };
    let kx = tmp.join("kx");
    run(
        "dpkg",
        &["-x", &deb.to_string_lossy(), &kx.to_string_lossy()],
    )?;
    let release = inputs
        .kernel_package
        .strip_prefix("linux-image-")
        .unwrap_or(&inputs.kernel_package)
        .to_string();
    let vmlinuz = kx.join("boot").join(format!("vmlinuz-{release}"));
    let vmlinux = extract_vmlinux(&vmlinuz)?;
    fs::write(tmp.join("vmlinux"), &vmlinux).map_err(io_err(&tmp.join("vmlinux")))?;
    // The bzImage too: what a bootloader loads (the bootable ISO).
    fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(io_err(&tmp.join("vmlinuz")))?;

    // 2. The initramfs.
    let mut files = Tree::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "var",
        "var/log",
        "root",
        "lib",
        "lib/modules",
    ] {
        files.dir(d);
    }
    files.symlink("var/run", "../run");
    files.file("bin/busybox", read(Path::new("/bin/busybox"))?, 0o755);
    files.file("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755);
    files.file("sbin/shutdown", SHUTDOWN_SCRIPT.as_bytes().to_vec(), 0o755);
    files.dir("etc/acpi");
    files.dir("etc/acpi/PWRF");
    files.file(
        "etc/acpi/PWRF/00000080",
        b"#!/bin/sh\n/bin/busybox poweroff -f\n".to_vec(),
        0o755,
    );
    files.file("etc/hostname", b"halyard-guest\n".to_vec(), 0o644);
    files.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    files.file("etc/group", b"root:x:0:\n".to_vec(), 0o644);

    let moddir = kx.join("lib/modules").join(&release).join("kernel");
    let found = index_modules(&moddir)?;
    for m in MODULES {
        match found.get(*m) {
            Some(p) => {
                let data = read_module(p)?;
                files.file(&format!("lib/modules/{m}.ko"), data, 0o644);
            }
            None => tracing::debug!(module = m, "not a module in this kernel (built in?)"),
        }
    }
    match agent {
        Agent::QemuGa => add_binary_with_libs(&mut files, Path::new("/usr/sbin/qemu-ga"))?,
        Agent::Halyard(p) => {
            let data = fs::read(p).map_err(io_err(p))?;
            files.file("usr/sbin/halyard-guest-agent", data, 0o755);
        }
    }
    let archive = cpio::write(&files.entries());
    let initrd = tmp.join("initrd.img");
    fs::write(&initrd, archive).map_err(io_err(&initrd))?;
    fs::remove_dir_all(&kx).map_err(io_err(&kx))?;
    for f in ["vmlinux", "vmlinuz", "initrd.img"] {
        set_mode(&tmp.join(f), 0o644)?;
    }
    set_world_readable_dir(tmp)?;

    let manifest = Manifest {
        key: inputs.key(),
        kernel_package: inputs.kernel_package.clone(),
        kernel_version: inputs.kernel_version.clone(),
        kernel_release: release,
        busybox_version: inputs.busybox_version.clone(),
        agent: inputs.agent.clone(),
        agent_version: inputs.agent_version.clone(),
        builder_version: BUILDER_VERSION,
    };
    let mpath = tmp.join("manifest.json");
    let data = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Io {
        path: mpath.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut f = fs::File::create(&mpath).map_err(io_err(&mpath))?;
    f.write_all(&data).map_err(io_err(&mpath))?;
    f.sync_all().map_err(io_err(&mpath))?;
    Ok(manifest)
}

/// A bootable ISO 9660 image of the guest (ISOLINUX, for BIOS machines): boots the
/// guest's kernel and initramfs with `console=ttyS0`, so its serial console shows the
/// ready marker. Made once next to the image (`boot.iso`), from Debian's isolinux.
pub fn boot_iso(img: &GuestImage) -> Result<PathBuf> {
    let out = img.dir.join("boot.iso");
    if out.exists() {
        return Ok(out);
    }
    let _lock = FileLock::acquire(&img.dir.join(".iso-lock"))?;
    if out.exists() {
        return Ok(out);
    }
    let tree = img.dir.join(format!(".iso-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tree);
    for d in ["isolinux", "boot"] {
        fs::create_dir_all(tree.join(d)).map_err(io_err(&tree))?;
    }
    let copy = |from: &Path, to: &Path| fs::copy(from, to).map(|_| ()).map_err(io_err(from));
    copy(
        Path::new("/usr/lib/ISOLINUX/isolinux.bin"),
        &tree.join("isolinux/isolinux.bin"),
    )?;
    copy(
        Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        &tree.join("isolinux/ldlinux.c32"),
    )?;
    copy(&img.dir.join("vmlinuz"), &tree.join("boot/vmlinuz"))?;
    copy(&img.initrd, &tree.join("boot/initrd.img"))?;
    let cfg = format!(
        "DEFAULT guest\nPROMPT 0\nTIMEOUT 1\nLABEL guest\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initrd.img {}\n",
        kernel_cmdline(None, None)
    );
    fs::write(tree.join("isolinux/isolinux.cfg"), cfg).map_err(io_err(&tree))?;
    let tmp = img.dir.join(format!(".boot-{}.iso", std::process::id()));
    let r = run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "HALYARD_BOOT",
            "-o",
            &tmp.to_string_lossy(),
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            &tree.to_string_lossy(),
        ],
    );
    let _ = fs::remove_dir_all(&tree);
    r?;
    set_mode(&tmp, 0o644)?;
    fs::rename(&tmp, &out).map_err(io_err(&out))?;
    Ok(out)
}

fn find_deb(dir: &Path, pkg: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{pkg}_");
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(e.path()));
        }
    }
    Ok(None)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(io_err(p))
}

/// Finds the xz stream inside a bzImage and decompresses it to the ELF vmlinux.
fn extract_vmlinux(vmlinuz: &Path) -> Result<Vec<u8>> {
    let data = read(vmlinuz)?;
    const MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let off = data
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .ok_or_else(|| BuildError::Missing(format!("no xz payload in {}", vmlinuz.display())))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BuildError::Command {
            cmd: "xz -dc".into(),
            detail: e.to_string(),
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BuildError::Missing("xz stdin".into()))?;
    let payload = data[off..].to_vec();
    let writer = std::thread::spawn(move || {
        // xz stops reading after the stream ends; a broken pipe then is expected.
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().map_err(|e| BuildError::Command {
        cmd: "xz -dc".into(),
        detail: e.to_string(),
    })?;
    let _ = writer.join();
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(BuildError::Missing(format!(
            "the xz payload of {} is not an ELF kernel",
            vmlinuz.display()
        )));
    }
    Ok(out.stdout)
}

fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name
                .strip_suffix(".ko")
                .or_else(|| name.strip_suffix(".ko.xz"));
            if let Some(stem) = stem {
                out.insert(stem.to_string(), p);
            }
        }
    }
    Ok(out)
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    if p.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .args(["-dc", &p.to_string_lossy()])
            .output()
            .map_err(|e| BuildError::Command {
                cmd: "xz -dc".into(),
                detail: e.to_string(),
            })?;
        return Ok(out.stdout);
    }
    read(p)
}

/// Adds a dynamically linked binary and the libraries `ldd` names for it.
fn add_binary_with_libs(files: &mut Tree, bin: &Path) -> Result<()> {
    let rel = bin.to_string_lossy().trim_start_matches('/').to_string();
    files.file(&rel, read(bin)?, 0o755);
    let ldd = run("ldd", &[&bin.to_string_lossy()])?;
    for line in ldd.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let rel = p.to_string_lossy().trim_start_matches('/').to_string();
            files.file(&rel, read(&p)?, 0o755);
        }
    }
    Ok(())
}

/// Archive contents, with parent directories added as needed.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, cpio::Entry>,
}

impl Tree {
    fn dir(&mut self, p: &str) {
        self.entries.insert(
            p.to_string(),
            cpio::Entry::Dir {
                path: p.to_string(),
                mode: 0o755,
            },
        );
    }
    fn parents(&mut self, p: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !self.entries.contains_key(&acc) {
                self.dir(&acc.clone());
            }
        }
    }
    fn file(&mut self, p: &str, data: Vec<u8>, mode: u32) {
        self.parents(p);
        self.entries.insert(
            p.to_string(),
            cpio::Entry::File {
                path: p.to_string(),
                mode,
                data,
            },
        );
    }
    fn symlink(&mut self, p: &str, target: &str) {
        self.parents(p);
        self.entries.insert(
            p.to_string(),
            cpio::Entry::Symlink {
                path: p.to_string(),
                target: target.to_string(),
            },
        );
    }
    /// Entries sorted by path: parents come before children.
    fn entries(&self) -> Vec<cpio::Entry> {
        self.entries.values().cloned().collect()
    }
}

pub(crate) fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io_err(p))
}

/// QEMU runs as an unprivileged user and must read the kernel and initramfs.
pub(crate) fn set_world_readable_dir(p: &Path) -> Result<()> {
    set_mode(p, 0o755)
}

/// An exclusive `flock` held until dropped.
pub(crate) struct FileLock {
    _file: fs::File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(BuildError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(FileLock { _file: f })
    }
}

/// The guest's `/init`.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
echo "HALYARD-GUEST init uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover \
         net_failover virtio_net virtio_console virtio_blk virtio-rng button evdev; do
  [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
IP=; GW=; HN=halyard-guest; AGENT_ARGS=
for a in $(cat /proc/cmdline); do
  case $a in
    halyard.agent_exec=1) AGENT_ARGS=--enable-exec;;
    halyard.ip=*) IP=${a#halyard.ip=};;
    halyard.gw=*) GW=${a#halyard.gw=};;
    halyard.hostname=*) HN=${a#halyard.hostname=};;
  esac
done
hostname "$HN"
ip link set lo up
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  if [ -n "$IP" ]; then
    ip addr add "$IP" dev eth0
    [ -n "$GW" ] && ip route add default via "$GW"
  fi
fi
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -e "$p/name" ] && ln -sf /dev/${p##*/} /dev/virtio-ports/$(cat $p/name)
done
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && [ -x /usr/sbin/qemu-ga ]; then
  qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -d -f /run/qemu-ga.pid
fi
if [ -x /usr/sbin/halyard-guest-agent ]; then
  /usr/sbin/halyard-guest-agent $AGENT_ARGS > /dev/kmsg 2>&1 &
fi
acpid 2>/dev/null || true
echo "HALYARD-GUEST ready uptime=$(cut -d' ' -f1 /proc/uptime) ip=$(ip -4 -o addr show eth0 2>/dev/null | awk '{print $4}')" > /dev/ttyS0
while true; do setsid cttyhack sh -l < /dev/ttyS0 > /dev/ttyS0 2>&1 || sleep 5; done
"#;

/// qemu-ga's guest-shutdown runs `shutdown -h -P +0 ...` or `shutdown -r +0 ...`.
pub const SHUTDOWN_SCRIPT: &str = r#"#!/bin/sh
case "$*" in *-r*) /bin/busybox reboot -f ;; *) /bin/busybox poweroff -f ;; esac
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(
            kernel_cmdline(Some("10.0.0.2/24"), Some("10.0.0.1")),
            "console=ttyS0 quiet panic=-1 halyard.ip=10.0.0.2/24 halyard.gw=10.0.0.1"
        );
    }

    #[test]
    fn tree_adds_parents() {
        let mut t = Tree::default();
        t.file("a/b/c", vec![1], 0o644);
        let paths: Vec<String> = t.entries().iter().map(|e| e.path().to_string()).collect();
        assert_eq!(paths, vec!["a", "a/b", "a/b/c"]);
    }
}
