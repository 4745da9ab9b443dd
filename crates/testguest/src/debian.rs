//! A real Debian 12 (bookworm) disk image that boots from its own disk under UEFI, with
//! cloud-init, qemu-guest-agent and OpenSSH: the guest for tests that need a complete
//! distribution rather than the tiny busybox guest.
//!
//! How it is made (root only, no loop devices, no mounts outside private namespaces):
//!
//! 1. `debootstrap --variant=minbase --include=`[`DEBOOTSTRAP_PACKAGES`] from [`MIRROR`]
//!    into a directory; the downloaded packages are kept under the cache so a rebuild
//!    downloads only what changed.
//! 2. In a chroot (inside its own mount namespace, so its `/proc` mount cannot outlive
//!    it): `apt-get dist-upgrade` against bookworm, bookworm-updates and
//!    bookworm-security, then `apt-get install linux-image-amd64`. The kernel is
//!    installed here rather than by debootstrap because debootstrap only sees the base
//!    suite, and the kernel the host's apt would pick usually comes from
//!    bookworm-security.
//! 3. Configuration ([`CONFIG_FILES`]): cloud-init limited to local datasources
//!    (`ConfigDrive`, `NoCloud`, `None` — never a network metadata service), no package
//!    updates, no NTP, networking rendered as ifupdown ENI; `/etc/fstab` by label;
//!    `systemd-firstboot` masked; SSH host keys removed (cloud-init's `ssh` module, or
//!    failing that `ssh.service`'s drop-in, makes new ones at first boot); an empty
//!    `/etc/machine-id` so every guest gets its own.
//! 4. Slimming: documentation, manual pages, translations, apt lists and caches, logs
//!    go; kernel modules are cut down to what a virtio q35 guest needs
//!    ([`KEEP_MODULE_DIRS`], [`KEEP_MODULES`] and their dependencies), then `depmod`
//!    and `update-initramfs -u -k all` run in the chroot.
//! 5. A unified kernel image: systemd-boot's EFI stub with `.osrel`, `.cmdline`
//!    ([`DEBIAN_CMDLINE`]), `.linux` and `.initrd` sections added by `objcopy` at
//!    addresses after the stub's own sections ([`uki_section_vmas`]).
//! 6. A FAT EFI system partition (`mkfs.vfat` on a file, filled with mtools) holding
//!    only `\EFI\BOOT\BOOTX64.EFI`, the removable-media path OVMF boots without any
//!    NVRAM entry; an ext4 root filesystem made from the directory by
//!    `mkfs.ext4 -d`.
//! 7. A GPT disk (`sfdisk` on a sparse file, [`disk_layout`]), the two filesystems copied
//!    to their partitions' offsets, converted to qcow2. The root partition is only as
//!    large as the filesystem; cloud-init's `growpart` and `resizefs` grow both into the
//!    rest of the disk at first boot.
//!
//! The result is cached under `<cache>/debian-<key>/` where the key hashes every input:
//! the package list, the candidate versions the host's apt (same mirror) reports for
//! them, every configuration file, the kernel command line, the module selection and
//! [`DEBIAN_BUILDER_VERSION`]. Run `apt-get update` on the host to pick up new package
//! versions. Guests must boot from an overlay (`qemu-img create -b disk.qcow2`): the
//! cached image is shared by every test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::{io_err, run, set_mode, set_world_readable_dir, BuildError, FileLock, Result};

/// Bump when the builder's output changes for the same inputs.
pub const DEBIAN_BUILDER_VERSION: u32 = 3;

/// The Debian mirror debootstrap and the chroot's apt use.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Where bookworm-security lives on the same host.
pub const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// The Debian release.
pub const SUITE: &str = "bookworm";

/// The root filesystem's label (the kernel finds its root by it).
pub const ROOT_LABEL: &str = "halyard-root";
/// The EFI system partition's FAT label (at most 11 characters).
pub const ESP_LABEL: &str = "HALYARD-ESP";

/// The kernel command line baked into the unified kernel image: VGA (tty1 shows a
/// login prompt) and the serial port (boot messages, then a serial getty). The last
/// `console=` is `/dev/console`, where cloud-init's messages go.
pub const DEBIAN_CMDLINE: &str =
    "root=LABEL=halyard-root ro net.ifnames=0 console=tty0 console=ttyS0,115200n8";

/// Printed on the serial console by cloud-init's final stage, once every boot stage ran.
pub const DEBIAN_READY_MARKER: &str = "HALYARD-DEBIAN ready";

/// The user cloud-init creates and gives the config drive's public keys (Debian's
/// default). Root logins over SSH are refused with a hint to use this user.
pub const DEFAULT_USER: &str = "debian";

/// The smallest virtual disk size.
const MIN_DISK_SIZE: u64 = 2 << 30;
const MIB: u64 = 1 << 20;

/// The EFI stub from `systemd-boot-efi`.
const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The kernel's metapackage, installed after the upgrade (see the module docs).
const KERNEL_META: &str = "linux-image-amd64";

/// What debootstrap installs on top of minbase. `python3-cffi-backend` is listed
/// because debootstrap cannot resolve the virtual `python3-cffi-backend-api-*`
/// packages `python3-cryptography` (cloud-init's dependency) needs;
/// `cloud-guest-utils` brings `growpart`.
pub const DEBOOTSTRAP_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "cloud-guest-utils",
    "python3-cffi-backend",
    "qemu-guest-agent",
    "openssh-server",
    "ifupdown",
    "iproute2",
    "isc-dhcp-client",
    "initramfs-tools",
    "sudo",
    "netbase",
    "procps",
];

/// Whole directories of `/lib/modules/<release>/kernel` that are kept.
pub const KEEP_MODULE_DIRS: &[&str] = &[
    "arch/",
    "crypto/",
    "lib/",
    "block/",
    "mm/",
    "virt/",
    "fs/ext4/",
    "fs/jbd2/",
    "fs/mbcache.ko",
    "fs/fat/",
    "fs/isofs/",
    "fs/nls/",
    "fs/efivarfs/",
    "fs/autofs/",
    "drivers/block/",
    "drivers/virtio/",
    "drivers/cdrom/",
    "drivers/input/",
    "drivers/char/hw_random/",
];

/// Single modules that are kept, wherever they are (`-` and `_` are the same).
/// Everything either list keeps also keeps the modules it depends on.
pub const KEEP_MODULES: &[&str] = &[
    // serial ports for the guest agent, network, SCSI and the q35 SATA CD-ROM
    "virtio_console",
    "virtio_net",
    "net_failover",
    "failover",
    "e1000",
    "e1000e",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "sg",
    "ahci",
    // VGA consoles: std VGA (bochs), QXL, virtio-gpu
    "bochs",
    "qxl",
    "virtio_gpu",
    // ACPI power button (graceful shutdown from the host), fw_cfg, binfmt_misc
    // (systemd mounts it at boot)
    "button",
    "qemu_fw_cfg",
    "binfmt_misc",
];

/// The chroot's apt sources: the release, its updates and its security fixes.
pub const SOURCES_LIST: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
";

/// Keeps documentation out of packages installed later (also inside the guest).
const DPKG_NODOC: &str = "\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
";

/// cloud-init: local datasources only, nothing installed or fetched, ENI networking.
pub const CLOUD_CFG: &str = r#"# Halyard's Debian test image. Only local datasources: a test must never send
# traffic to 169.254.169.254 or any other metadata service.
datasource_list: [ ConfigDrive, NoCloud, None ]
disable_ec2_metadata: true
manage_etc_hosts: localhost
package_update: false
package_upgrade: false
package_reboot_if_required: false
apt:
  preserve_sources_list: true
ntp:
  enabled: false
ssh_genkeytypes: [ ed25519, ecdsa ]
system_info:
  network:
    renderers: [ eni ]
final_message: "HALYARD-DEBIAN ready: cloud-init $version, datasource $datasource, up $UPTIME s"
cloud_init_modules:
  - migrator
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - users-groups
  - ssh
cloud_config_modules:
  - set-passwords
  - timezone
  - runcmd
cloud_final_modules:
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - ssh-authkey-fingerprints
  - keys-to-console
  - final-message
  - power-state-change
"#;

/// A file the builder writes into the image (path relative to its root).
#[derive(Debug, Clone, Copy)]
pub struct ConfigFile {
    pub path: &'static str,
    pub mode: u32,
    pub content: &'static str,
}

/// Files written after the packages are installed.
pub const CONFIG_FILES: &[ConfigFile] = &[
    ConfigFile {
        path: "etc/cloud/cloud.cfg.d/90_halyard.cfg",
        mode: 0o644,
        content: CLOUD_CFG,
    },
    // Run cloud-init on every boot, also without a config drive (datasource None):
    // it is what makes the SSH host keys and the default user.
    ConfigFile {
        path: "etc/cloud/ds-identify.cfg",
        mode: 0o644,
        content: "policy: enabled\n",
    },
    ConfigFile {
        path: "etc/fstab",
        mode: 0o644,
        content: "\
# <file system>      <mount point>  <type>  <options>           <dump>  <pass>
LABEL=halyard-root   /              ext4    errors=remount-ro   0       1
LABEL=HALYARD-ESP    /boot/efi      vfat    umask=0077,nofail   0       0
",
    },
    ConfigFile {
        path: "etc/hostname",
        mode: 0o644,
        content: "debian\n",
    },
    // Loaded (and so included) by the initramfs: virtio and SATA disks, ext4.
    ConfigFile {
        path: "etc/initramfs-tools/modules",
        mode: 0o644,
        content: "virtio_pci\nvirtio_blk\nvirtio_scsi\nsd_mod\nahci\next4\n",
    },
    ConfigFile {
        path: "etc/initramfs-tools/conf.d/halyard.conf",
        mode: 0o644,
        // FSTYPE: the chroot cannot probe the root device, so name its type for the
        // fsck hook (the initramfs then checks the root filesystem before mounting).
        content: "MODULES=most\nRESUME=none\nFSTYPE=ext4\n",
    },
    // Host keys come from cloud-init at first boot; should it not run, sshd makes an
    // Ed25519 key before its configuration test instead of failing for want of any.
    ConfigFile {
        path: "etc/systemd/system/ssh.service.d/halyard-host-keys.conf",
        mode: 0o644,
        content: "\
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
",
    },
    // udev starts the agent when its port appears, but with default dependencies it
    // would wait for sysinit.target, which cloud-init's first two stages hold back
    // (about a minute under TCG): start it as soon as the root is writable.
    ConfigFile {
        path: "etc/systemd/system/qemu-guest-agent.service.d/halyard-early.conf",
        mode: 0o644,
        content: "\
[Unit]
DefaultDependencies=no
After=systemd-remount-fs.service systemd-tmpfiles-setup.service
Conflicts=shutdown.target
Before=shutdown.target
",
    },
    ConfigFile {
        path: "etc/dpkg/dpkg.cfg.d/halyard-nodoc",
        mode: 0o644,
        content: DPKG_NODOC,
    },
];

/// Units masked in the image: `systemd-firstboot` would prompt on the console for a
/// locale, time zone and root password at the first boot (the empty machine-id); apt's
/// daily timers would reach out to the mirror from guests on a test network.
pub const MASKED_UNITS: &[&str] = &[
    "systemd-firstboot.service",
    "apt-daily.timer",
    "apt-daily.service",
    "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service",
];

/// Removed from the image after the packages are installed (globs: `*` at the end of
/// a path component only).
const PRUNE: &[&str] = &[
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/locale/*",
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/cache/man",
    "var/log/*",
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "etc/resolv.conf",
    "usr/sbin/policy-rc.d",
    "tmp/*",
    "root/.bash_history",
];
/// Exceptions to [`PRUNE`].
const PRUNE_KEEP: &[&str] = &["usr/share/locale/locale.alias"];

/// A cached image for tests that want a complete Debian guest.
#[derive(Debug, Clone)]
pub struct DebianImage {
    pub dir: PathBuf,
    /// The qcow2 disk. Never boot it directly: use an overlay.
    pub disk: PathBuf,
    pub manifest: DebianManifest,
}

/// What went into a Debian image.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DebianManifest {
    pub key: String,
    pub suite: String,
    pub mirror: String,
    /// The kernel's package, e.g. `linux-image-6.1.0-57-amd64`.
    pub kernel_package: String,
    pub kernel_version: String,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    pub systemd_version: String,
    pub cloud_init_version: String,
    pub qemu_guest_agent_version: String,
    pub openssh_server_version: String,
    /// The kernel command line in the unified kernel image.
    pub cmdline: String,
    /// The user cloud-init gives the SSH keys.
    pub default_user: String,
    /// The disk's virtual size in bytes.
    pub disk_size: u64,
    pub builder_version: u32,
}

/// Images not used for this long are removed by the next build.
const UNUSED_IMAGE_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// Returns the cached Debian image for the current inputs, building it first if needed
/// (several minutes: it downloads about 150 MB the first time). Needs root. Safe to call
/// from several processes at once: a lock file serialises builds, and a build goes into
/// a temporary directory renamed into place when complete.
pub fn ensure_debian(cache_dir: &Path) -> Result<DebianImage> {
    fs::create_dir_all(cache_dir).map_err(io_err(cache_dir))?;
    set_world_readable_dir(cache_dir)?;
    let _lock = FileLock::acquire(&cache_dir.join(".debian.lock"))?;
    let inputs = DebianInputs::probe()?;
    let key = inputs.key();
    let dir = cache_dir.join(format!("debian-{key}"));
    if let Some(img) = cached(&dir, &key) {
        touch(&dir.join("last-used"));
        return Ok(img);
    }
    check_host()?;
    let started = Instant::now();
    tracing::info!(%key, "building the Debian test image");
    remove_stale_builds(cache_dir, &dir);
    let tmp = cache_dir.join(format!(".debian-build-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let manifest = match build(cache_dir, &tmp, &key) {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    halyard_common::fsutil::fsync_dir(cache_dir).map_err(io_err(cache_dir))?;
    touch(&dir.join("last-used"));
    tracing::info!(
        %key,
        secs = started.elapsed().as_secs(),
        disk = %dir.join("disk.qcow2").display(),
        "Debian test image built"
    );
    Ok(image(dir, manifest))
}

fn image(dir: PathBuf, manifest: DebianManifest) -> DebianImage {
    DebianImage {
        disk: dir.join("disk.qcow2"),
        dir,
        manifest,
    }
}

/// The image in `dir` if it is complete and made from the inputs `key` names.
fn cached(dir: &Path, key: &str) -> Option<DebianImage> {
    let data = fs::read(dir.join("manifest.json")).ok()?;
    let m = serde_json::from_slice::<DebianManifest>(&data).ok()?;
    (m.key == key && dir.join("disk.qcow2").is_file()).then(|| image(dir.to_path_buf(), m))
}

/// Marks an image as used (its age decides when [`remove_stale_builds`] may drop it).
fn touch(p: &Path) {
    if let Err(e) = fs::write(p, b"") {
        tracing::debug!(path = %p.display(), error = %e, "cannot mark the image used");
    }
}

/// Removes half-made builds of processes that died (the lock is held, so no build is
/// running) and images nobody asked for in [`UNUSED_IMAGE_TTL`].
fn remove_stale_builds(cache_dir: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let stale = if name.starts_with(".debian-build-") {
            true
        } else if name.starts_with("debian-") && path != current && path.is_dir() {
            let used = fs::metadata(path.join("last-used"))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            SystemTime::now()
                .duration_since(used)
                .is_ok_and(|age| age > UNUSED_IMAGE_TTL)
        } else {
            false
        };
        if stale {
            tracing::info!(path = %path.display(), "removing a stale Debian image");
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove");
            }
        }
    }
}

/// Everything the key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DebianInputs {
    /// Candidate version of each package in [`DEBOOTSTRAP_PACKAGES`] and the kernel.
    pub(crate) versions: BTreeMap<String, String>,
}

impl DebianInputs {
    /// Asks the host's apt (configured with the same mirror) which versions a build
    /// would install.
    fn probe() -> Result<DebianInputs> {
        let mut pkgs: Vec<&str> = DEBOOTSTRAP_PACKAGES.to_vec();
        pkgs.push(KERNEL_META);
        let mut args = vec!["policy"];
        args.extend(&pkgs);
        let out = run("apt-cache", &args)?;
        let versions = parse_policy_candidates(&out);
        for p in &pkgs {
            if !versions.contains_key(*p) {
                return Err(BuildError::Missing(format!(
                    "the host's apt knows no candidate for {p}: is {SUITE} from {MIRROR} \
                     configured (apt-get update)?"
                )));
            }
        }
        Ok(DebianInputs { versions })
    }

    /// The cache key: a SHA-256 of every input, in hex (16 digits).
    pub(crate) fn key(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |s: &str| {
            h.update(s.as_bytes());
            h.update([0]);
        };
        for s in [SUITE, MIRROR, SECURITY_MIRROR, SOURCES_LIST, DEBIAN_CMDLINE] {
            part(s);
        }
        for p in DEBOOTSTRAP_PACKAGES {
            part(p);
        }
        for (p, v) in &self.versions {
            part(p);
            part(v);
        }
        for f in CONFIG_FILES {
            part(f.path);
            part(&format!("{:o}", f.mode));
            part(f.content);
        }
        for list in [
            MASKED_UNITS,
            KEEP_MODULE_DIRS,
            KEEP_MODULES,
            PRUNE,
            PRUNE_KEEP,
        ] {
            part(&list.join(","));
        }
        part(ROOT_LABEL);
        part(ESP_LABEL);
        part(&MIN_DISK_SIZE.to_string());
        part(&DEBIAN_BUILDER_VERSION.to_string());
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The `Candidate:` of each package in `apt-cache policy` output.
pub(crate) fn parse_policy_candidates(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.strip_suffix(':').map(str::to_string);
            continue;
        }
        if let (Some(pkg), Some(v)) = (&current, line.trim().strip_prefix("Candidate: ")) {
            if v != "(none)" {
                out.insert(pkg.clone(), v.to_string());
            }
        }
    }
    out
}

/// Fails early, naming what to install, when a tool the build needs is missing.
fn check_host() -> Result<()> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::Missing(
            "building the Debian image needs root (debootstrap, chroot)".into(),
        ));
    }
    let tools = [
        "debootstrap",
        "unshare",
        "chroot",
        "objcopy",
        "objdump",
        "mkfs.vfat",
        "mmd",
        "mcopy",
        "mkfs.ext4",
        "sfdisk",
        "qemu-img",
        "du",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !dirs.iter().any(|d| d.join(t).is_file()))
        .collect();
    if !missing.is_empty() {
        return Err(BuildError::Missing(format!(
            "missing tools for the Debian image: {} (scripts/install-deps.sh installs them)",
            missing.join(", ")
        )));
    }
    if !Path::new(EFI_STUB).is_file() {
        return Err(BuildError::Missing(format!(
            "{EFI_STUB} is missing (apt-get install systemd-boot-efi)"
        )));
    }
    Ok(())
}

/// Runs the build steps into `tmp`; `tmp` then holds `disk.qcow2` and `manifest.json`.
fn build(cache_dir: &Path, tmp: &Path, key: &str) -> Result<DebianManifest> {
    let root = tmp.join("root");
    let debs = cache_dir.join("debian-debs");
    let step = |name: &str, t: Instant| {
        tracing::info!(
            step = name,
            secs = t.elapsed().as_secs_f32(),
            "Debian image"
        );
    };

    let t = Instant::now();
    debootstrap(&root, &debs.join("bootstrap"))?;
    step("debootstrap", t);

    let t = Instant::now();
    install_kernel(&root, &debs.join("apt"))?;
    step("upgrade and kernel", t);

    let release = kernel_release(&root)?;
    let t = Instant::now();
    write_config(&root)?;
    prune(&root)?;
    let (kept, removed) = prune_modules(&root, &release)?;
    tracing::info!(kept, removed, "kernel modules");
    chroot_sh(
        &root,
        &format!("depmod -a {release} && update-initramfs -u -k all"),
    )?;
    check_initramfs(&root, &release)?;
    // update-initramfs may leave files behind; the image must not carry them.
    prune(&root)?;
    step("configure, slim down, initramfs", t);

    let versions = installed_versions(&root)?;
    let version = |p: &str| {
        versions
            .get(p)
            .cloned()
            .ok_or_else(|| BuildError::Missing(format!("{p} is not installed in the image")))
    };
    let kernel_package = format!("linux-image-{release}");

    let t = Instant::now();
    let uki = tmp.join("BOOTX64.EFI");
    build_uki(&root, &release, &uki)?;
    let esp = tmp.join("esp.img");
    let esp_size = esp_size_for(file_size(&uki)?);
    make_esp(&esp, esp_size, &uki, key)?;
    fs::remove_file(&uki).map_err(io_err(&uki))?;
    step("unified kernel image and ESP", t);

    let t = Instant::now();
    let rootfs = tmp.join("root.img");
    let root_size = make_rootfs(&root, &rootfs, key)?;
    fs::remove_dir_all(&root).map_err(io_err(&root))?;
    step("root filesystem", t);

    let t = Instant::now();
    let layout = disk_layout(esp_size, root_size, MIN_DISK_SIZE);
    let raw = tmp.join("disk.raw");
    make_disk(&raw, &layout, &esp, &rootfs, key)?;
    for f in [&esp, &rootfs] {
        fs::remove_file(f).map_err(io_err(f))?;
    }
    let disk = tmp.join("disk.qcow2");
    run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.to_string_lossy(),
            &disk.to_string_lossy(),
        ],
    )?;
    fs::remove_file(&raw).map_err(io_err(&raw))?;
    set_mode(&disk, 0o644)?;
    step("disk", t);

    let manifest = DebianManifest {
        key: key.to_string(),
        suite: SUITE.to_string(),
        mirror: MIRROR.to_string(),
        kernel_version: version(&kernel_package)?,
        kernel_package,
        kernel_release: release,
        systemd_version: version("systemd")?,
        cloud_init_version: version("cloud-init")?,
        qemu_guest_agent_version: version("qemu-guest-agent")?,
        openssh_server_version: version("openssh-server")?,
        cmdline: DEBIAN_CMDLINE.to_string(),
        default_user: DEFAULT_USER.to_string(),
        disk_size: layout.total,
        builder_version: DEBIAN_BUILDER_VERSION,
    };
    write_manifest(&tmp.join("manifest.json"), &manifest)?;
    set_world_readable_dir(tmp)?;
    Ok(manifest)
}

fn write_manifest(path: &Path, manifest: &DebianManifest) -> Result<()> {
    let data = serde_json::to_vec_pretty(manifest).map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    set_mode(path, 0o644)
}

/// Step 1: the minimal base system and [`DEBOOTSTRAP_PACKAGES`]. debootstrap mounts
/// `/proc` and `/sys` in the target while it works; a private mount namespace makes
/// sure nothing stays mounted if it is killed.
fn debootstrap(root: &Path, debs: &Path) -> Result<()> {
    fs::create_dir_all(debs).map_err(io_err(debs))?;
    let include = format!("--include={}", DEBOOTSTRAP_PACKAGES.join(","));
    let cache = format!("--cache-dir={}", absolute(debs)?.display());
    let root_s = root.to_string_lossy();
    let r = run_verbose(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "debootstrap",
            "--variant=minbase",
            "--components=main",
            &cache,
            &include,
            SUITE,
            &root_s,
            MIRROR,
        ],
    );
    if let Err(BuildError::Command { cmd, detail }) = r {
        // debootstrap's own log says which package failed.
        let log = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BuildError::Command {
            cmd,
            detail: format!(
                "{detail}\n--- debootstrap.log (end) ---\n{}",
                tail.join("\n")
            ),
        });
    }
    // What debootstrap left in the archive cache is what it used: drop older versions
    // from the download cache.
    let used = deb_names(&root.join("var/cache/apt/archives"))?;
    for name in deb_names(debs)? {
        if !used.contains(&name) {
            let p = debs.join(&name);
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(io_err(p))?;
    Ok(cwd.join(p))
}

/// The `.deb` file names in `dir`.
fn deb_names(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in entries {
        let name = e.map_err(io_err(dir))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".deb") {
            out.insert(name.into_owned());
        }
    }
    Ok(out)
}

/// Hard-links (or copies, across filesystems) `name` from one directory to another.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map(|_| ()).map_err(io_err(from))
}

/// Step 2: the updates and the kernel from bookworm-updates and bookworm-security.
/// Packages apt downloads are kept in `debs` (only what the last build used) and put
/// back into the chroot's archive cache before the next build, so apt downloads only
/// what changed.
fn install_kernel(root: &Path, debs: &Path) -> Result<()> {
    write_file(root, "etc/apt/sources.list", SOURCES_LIST, 0o644)?;
    write_file(root, "etc/dpkg/dpkg.cfg.d/halyard-nodoc", DPKG_NODOC, 0o644)?;
    // Keep maintainer scripts from starting services in the chroot.
    write_file(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)?;
    fs::create_dir_all(debs).map_err(io_err(debs))?;
    let archives = root.join("var/cache/apt/archives");
    let from_bootstrap = deb_names(&archives)?;
    for name in deb_names(debs)? {
        let to = archives.join(&name);
        if !to.exists() {
            link_or_copy(&debs.join(&name), &to)?;
        }
    }
    chroot_sh(
        root,
        &format!(
            "apt-get -q update \
             && apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade \
             && apt-get -q -y --no-install-recommends install {KERNEL_META}"
        ),
    )?;
    let now = deb_names(&archives)?;
    let keep: BTreeSet<&String> = now.difference(&from_bootstrap).collect();
    for name in deb_names(debs)? {
        if !keep.contains(&name) {
            let p = debs.join(&name);
            fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    for name in keep {
        let to = debs.join(name);
        if !to.exists() {
            link_or_copy(&archives.join(name), &to)?;
        }
    }
    Ok(())
}

/// Runs a command like [`run`], but a failure's detail also carries the end of its
/// standard output (apt and dpkg report many errors there).
fn run_verbose(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let lines: Vec<&str> = stdout.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    Err(BuildError::Command {
        cmd: format!("{cmd} {}", args.join(" ")),
        detail: format!(
            "{} ({})\n--- output (end) ---\n{tail}",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ),
    })
}

/// Runs a shell script in the chroot, in a private mount namespace with `/proc`
/// mounted (gone when the script ends, however it ends).
fn chroot_sh(root: &Path, script: &str) -> Result<()> {
    let root_s = root.to_string_lossy();
    let script = format!("mount -t proc proc /proc\n{script}");
    run_verbose(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--fork",
            "chroot",
            &root_s,
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND=noninteractive",
            "LC_ALL=C.UTF-8",
            "HOME=/root",
            "/bin/sh",
            "-euc",
            &script,
        ],
    )
    .map(|_| ())
}

/// The release of the one kernel in the image's `/lib/modules`.
fn kernel_release(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut found = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let e = e.map_err(io_err(&dir))?;
        if e.path().join("modules.dep").exists() {
            found.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(BuildError::Missing(format!(
            "expected one kernel in the image, found {found:?}"
        ))),
    }
}

fn write_file(root: &Path, rel: &str, content: &str, mode: u32) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    // Never write through a symlink the packages left (it could point at the host).
    if fs::symlink_metadata(&p).is_ok() {
        fs::remove_file(&p).map_err(io_err(&p))?;
    }
    fs::write(&p, content).map_err(io_err(&p))?;
    set_mode(&p, mode)
}

/// Step 3: [`CONFIG_FILES`], the masked units, an empty machine-id.
fn write_config(root: &Path) -> Result<()> {
    for f in CONFIG_FILES {
        write_file(root, f.path, f.content, f.mode)?;
    }
    for unit in MASKED_UNITS {
        let p = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/null", &p).map_err(io_err(&p))?;
    }
    // Empty: systemd makes a new one at the first boot of each guest.
    write_file(root, "etc/machine-id", "", 0o444)?;
    let efi = root.join("boot/efi");
    fs::create_dir_all(&efi).map_err(io_err(&efi))
}

/// Step 4a: removes [`PRUNE`] (except [`PRUNE_KEEP`]).
fn prune(root: &Path) -> Result<()> {
    for pattern in PRUNE {
        for p in glob_simple(root, pattern)? {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy();
            if PRUNE_KEEP.contains(&rel.as_ref()) {
                continue;
            }
            let meta = fs::symlink_metadata(&p).map_err(io_err(&p))?;
            if meta.is_dir() {
                fs::remove_dir_all(&p).map_err(io_err(&p))?;
            } else {
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    Ok(())
}

/// Paths under `root` matching `pattern`, whose last component may end in `*` (a
/// prefix match) or contain one `*` (prefix and suffix); other components are literal.
fn glob_simple(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let (dir, last) = match pattern.rsplit_once('/') {
        Some((d, l)) => (root.join(d), l),
        None => (root.to_path_buf(), pattern),
    };
    let Some((prefix, suffix)) = last.split_once('*') else {
        let p = dir.join(last);
        return Ok(if fs::symlink_metadata(&p).is_ok() {
            vec![p]
        } else {
            vec![]
        });
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(&dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(suffix) && name.len() >= last.len() - 1 {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Module file name to module name: `virtio-gpu.ko.xz` → `virtio_gpu`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Parses `modules.dep`: each module's path (relative to `/lib/modules/<release>`)
/// and the paths of the modules it needs.
pub(crate) fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((module, deps)) = line.split_once(':') {
            out.insert(
                module.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            );
        }
    }
    out
}

/// The modules (paths as in `modules.dep`) to keep: those under [`KEEP_MODULE_DIRS`],
/// those named in [`KEEP_MODULES`], and everything they depend on.
pub(crate) fn modules_to_keep(
    deps: &BTreeMap<String, Vec<String>>,
    dirs: &[&str],
    names: &[&str],
) -> BTreeSet<String> {
    let names: BTreeSet<String> = names.iter().map(|n| n.replace('-', "_")).collect();
    let mut keep = BTreeSet::new();
    let mut todo: Vec<String> = deps
        .keys()
        .filter(|m| {
            let rel = m.strip_prefix("kernel/").unwrap_or(m);
            dirs.iter().any(|d| rel.starts_with(d)) || names.contains(&module_name(m))
        })
        .cloned()
        .collect();
    while let Some(m) = todo.pop() {
        if !keep.insert(m.clone()) {
            continue;
        }
        if let Some(ds) = deps.get(&m) {
            todo.extend(ds.iter().filter(|d| !keep.contains(*d)).cloned());
        }
    }
    keep
}

/// Step 4b: deletes every kernel module [`modules_to_keep`] does not keep, and the
/// directories left empty. Returns (kept, removed).
fn prune_modules(root: &Path, release: &str) -> Result<(usize, usize)> {
    let base = root.join("lib/modules").join(release);
    let dep_path = base.join("modules.dep");
    let text = fs::read_to_string(&dep_path).map_err(io_err(&dep_path))?;
    let deps = parse_modules_dep(&text);
    let keep = modules_to_keep(&deps, KEEP_MODULE_DIRS, KEEP_MODULES);
    for wanted in KEEP_MODULES {
        let w = wanted.replace('-', "_");
        if !keep.iter().any(|m| module_name(m) == w) {
            tracing::debug!(module = wanted, "not a module in this kernel (built in?)");
        }
    }
    let mut removed = 0;
    for m in deps.keys() {
        if !keep.contains(m) {
            let p = base.join(m);
            fs::remove_file(&p).map_err(io_err(&p))?;
            removed += 1;
        }
    }
    remove_empty_dirs(&base.join("kernel"))?;
    Ok((keep.len(), removed))
}

/// Removes the empty directories below `dir` (not `dir` itself).
fn remove_empty_dirs(dir: &Path) -> Result<bool> {
    let mut empty = true;
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        if e.file_type().map_err(io_err(&p))?.is_dir() && remove_empty_dirs(&p)? {
            fs::remove_dir(&p).map_err(io_err(&p))?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

/// Checks that the initramfs can reach the root filesystem on every disk bus a test
/// may use.
fn check_initramfs(root: &Path, release: &str) -> Result<()> {
    let root_s = root.to_string_lossy();
    let list = run(
        "chroot",
        &[
            &root_s,
            "lsinitramfs",
            &format!("/boot/initrd.img-{release}"),
        ],
    )?;
    let names: BTreeSet<String> = list
        .lines()
        .filter(|l| l.contains(".ko"))
        .map(module_name)
        .collect();
    let missing: Vec<&str> = ["virtio_blk", "virtio_scsi", "virtio_pci", "ahci", "ext4"]
        .into_iter()
        .filter(|m| !names.contains(*m))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Missing(format!(
            "the initramfs lacks {}",
            missing.join(", ")
        )))
    }
}

/// Installed package versions, from the image's dpkg database.
fn installed_versions(root: &Path) -> Result<BTreeMap<String, String>> {
    let admindir = format!("--admindir={}", root.join("var/lib/dpkg").display());
    let out = run(
        "dpkg-query",
        &[
            &admindir,
            "-W",
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let (p, v, s) = (it.next()?, it.next()?, it.next()?);
            s.starts_with("ii").then(|| (p.to_string(), v.to_string()))
        })
        .collect())
}

/// A section of a PE image as `objdump -h` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    pub name: String,
    pub size: u64,
    pub vma: u64,
}

/// Parses `objdump -h` output (`Idx Name Size VMA LMA File-off Algn` rows).
pub fn parse_objdump_sections(text: &str) -> Vec<PeSection> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 7 || f[0].parse::<u32>().is_err() {
                return None;
            }
            Some(PeSection {
                name: f[1].to_string(),
                size: u64::from_str_radix(f[2], 16).ok()?,
                vma: u64::from_str_radix(f[3], 16).ok()?,
            })
        })
        .collect()
}

/// `SectionAlignment` from `objdump -p` output.
pub fn parse_section_alignment(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "SectionAlignment")
            .then(|| u64::from_str_radix(f.next()?, 16).ok())
            .flatten()
    })
}

fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// Where the unified kernel image's added sections go: one after the other, each at a
/// multiple of the stub's section alignment, after the stub's last section, so no two
/// overlap. `payloads` are (section name, size); returns (section name, VMA).
pub fn uki_section_vmas(
    stub: &[PeSection],
    align: u64,
    payloads: &[(&str, u64)],
) -> Result<Vec<(String, u64)>> {
    if align == 0 || !align.is_power_of_two() {
        return Err(BuildError::Missing(format!(
            "the EFI stub's section alignment {align:#x} is not a power of two"
        )));
    }
    let end = stub
        .iter()
        .map(|s| s.vma + s.size)
        .max()
        .ok_or_else(|| BuildError::Missing("the EFI stub has no sections".into()))?;
    let mut next = round_up(end, align);
    let mut out = Vec::new();
    for (name, size) in payloads {
        out.push((name.to_string(), next));
        next = round_up(next + size.max(&1), align);
    }
    Ok(out)
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p).map_err(io_err(p))?.len())
}

/// Step 5: systemd-boot's EFI stub + os-release + [`DEBIAN_CMDLINE`] + the kernel +
/// the initramfs = one EFI executable that boots the image.
fn build_uki(root: &Path, release: &str, out: &Path) -> Result<()> {
    let work = out.with_extension("d");
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let cmdline = work.join("cmdline");
    fs::write(&cmdline, DEBIAN_CMDLINE).map_err(io_err(&cmdline))?;
    let osrel = root.join("usr/lib/os-release");
    let linux = root.join(format!("boot/vmlinuz-{release}"));
    let initrd = root.join(format!("boot/initrd.img-{release}"));
    let payloads = [
        (".osrel", osrel),
        (".cmdline", cmdline),
        (".linux", linux),
        (".initrd", initrd),
    ];
    let sizes: Vec<(&str, u64)> = payloads
        .iter()
        .map(|(n, p)| Ok((*n, file_size(p)?)))
        .collect::<Result<_>>()?;
    let sections = parse_objdump_sections(&run("objdump", &["-h", EFI_STUB])?);
    let align = parse_section_alignment(&run("objdump", &["-p", EFI_STUB])?)
        .ok_or_else(|| BuildError::Missing(format!("no SectionAlignment in {EFI_STUB}")))?;
    let vmas = uki_section_vmas(&sections, align, &sizes)?;
    let mut args: Vec<String> = Vec::new();
    for ((name, path), (_, vma)) in payloads.iter().zip(&vmas) {
        args.push("--add-section".into());
        args.push(format!("{name}={}", path.display()));
        args.push("--change-section-vma".into());
        args.push(format!("{name}={vma:#x}"));
    }
    args.push(EFI_STUB.into());
    args.push(out.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("objcopy", &args)?;
    fs::remove_dir_all(&work).map_err(io_err(&work))?;
    // The result must carry every section, where it was meant to go.
    let got = parse_objdump_sections(&run("objdump", &["-h", &out.to_string_lossy()])?);
    for (name, vma) in &vmas {
        if !got.iter().any(|s| &s.name == name && s.vma == *vma) {
            return Err(BuildError::Missing(format!(
                "objcopy did not place {name} at {vma:#x} in {}",
                out.display()
            )));
        }
    }
    Ok(())
}

/// The ESP's size for a unified kernel image of `uki` bytes: room for it twice (an
/// update in the guest) plus FAT overhead, at least 64 MiB, whole MiB.
pub fn esp_size_for(uki: u64) -> u64 {
    round_up((uki * 2 + 16 * MIB).max(64 * MIB), MIB)
}

/// A UUID made from the image key, so one key always gives the same disk identity.
fn uuid_from(key: &str, what: &str) -> String {
    let d = Sha256::digest(format!("{key}/{what}").as_bytes());
    let h: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    // version 4 and RFC 4122 variant bits, as random UUIDs carry
    let v = format!("4{}", &h[13..16]);
    let var = format!(
        "{:x}{}",
        (u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 3) | 8,
        &h[17..20]
    );
    format!("{}-{}-{v}-{var}-{}", &h[0..8], &h[8..12], &h[20..32])
}

/// Step 6a: a FAT filesystem in a file, holding the unified kernel image at the
/// removable-media boot path.
fn make_esp(esp: &Path, size: u64, uki: &Path, key: &str) -> Result<()> {
    let esp_s = esp.to_string_lossy();
    let volid = &uuid_from(key, "esp")[..8];
    run(
        "mkfs.vfat",
        &[
            "-C",
            "-n",
            ESP_LABEL,
            "-i",
            volid,
            &esp_s,
            &(size / 1024).to_string(),
        ],
    )?;
    let mtools = |cmd: &str, args: &[&str]| -> Result<()> {
        let mut full = vec!["-i", esp_s.as_ref()];
        full.extend(args);
        let out = Command::new(cmd)
            .args(&full)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .map_err(|e| BuildError::Command {
                cmd: cmd.into(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(BuildError::Command {
                cmd: format!("{cmd} {}", full.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    };
    mtools("mmd", &["::/EFI", "::/EFI/BOOT"])?;
    mtools(
        "mcopy",
        &[&uki.to_string_lossy(), "::/EFI/BOOT/BOOTX64.EFI"],
    )
}

/// Step 6b: an ext4 filesystem made from the directory: the used size plus 30% and
/// 64 MiB (journal, inode tables), in whole MiB. Returns its size. The usage type is
/// forced to `default` (4 KiB blocks, 256-byte inodes): mke2fs would pick `small`
/// (1 KiB blocks, 128-byte inodes without post-2038 timestamps) for this size.
fn make_rootfs(root: &Path, img: &Path, key: &str) -> Result<u64> {
    if root.join("proc/self").exists() {
        return Err(BuildError::Missing(format!(
            "{} is mounted: a chroot step left it behind",
            root.join("proc").display()
        )));
    }
    let root_s = root.to_string_lossy();
    let first_number = |s: &str| -> Result<u64> {
        s.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| BuildError::Missing(format!("du printed {s:?}")))
    };
    let used = first_number(&run("du", &["-s", "-x", "-B1", &root_s])?)?;
    let inodes = first_number(&run("du", &["-s", "-x", "--inodes", &root_s])?)?;
    let size = rootfs_size_for(used);
    let uuid = uuid_from(key, "root");
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-T",
            "default",
            "-b",
            "4096",
            "-I",
            "256",
            "-L",
            ROOT_LABEL,
            "-U",
            &uuid,
            "-E",
            &format!("hash_seed={uuid}"),
            "-N",
            &(inodes * 2 + 16384).to_string(),
            "-d",
            &root_s,
            &img.to_string_lossy(),
            &format!("{}k", size / 1024),
        ],
    )?;
    Ok(size)
}

/// The root filesystem's size for `used` bytes of files.
pub fn rootfs_size_for(used: u64) -> u64 {
    round_up(used + used * 3 / 10 + 64 * MIB, MIB)
}

/// Where the partitions go on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLayout {
    pub esp_start: u64,
    pub esp_size: u64,
    pub root_start: u64,
    pub root_size: u64,
    /// The disk's size: at least `min_total`, with 1 MiB after the root partition for
    /// the backup GPT.
    pub total: u64,
}

/// The ESP at 1 MiB, the root right after it, everything MiB-aligned.
pub fn disk_layout(esp_size: u64, root_size: u64, min_total: u64) -> DiskLayout {
    let esp_start = MIB;
    let esp_size = round_up(esp_size, MIB);
    let root_start = esp_start + esp_size;
    let root_size = round_up(root_size, MIB);
    let total = round_up((root_start + root_size + MIB).max(min_total), MIB);
    DiskLayout {
        esp_start,
        esp_size,
        root_start,
        root_size,
        total,
    }
}

/// The GPT partition type of an EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The discoverable-partitions type of an x86-64 root partition.
const ROOT_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// The `sfdisk` script for `layout` (sectors of 512 bytes).
pub fn sfdisk_script(layout: &DiskLayout, disk_id: &str, esp_id: &str, root_id: &str) -> String {
    let s = |b: u64| b / 512;
    format!(
        "label: gpt\nlabel-id: {disk_id}\nunit: sectors\nfirst-lba: 2048\n\
         start={}, size={}, type={ESP_TYPE}, uuid={esp_id}, name=\"EFI System\"\n\
         start={}, size={}, type={ROOT_TYPE}, uuid={root_id}, name=\"{ROOT_LABEL}\"\n",
        s(layout.esp_start),
        s(layout.esp_size),
        s(layout.root_start),
        s(layout.root_size),
    )
}

/// Step 7: a sparse raw disk with the GPT and both filesystems in place.
fn make_disk(raw: &Path, layout: &DiskLayout, esp: &Path, rootfs: &Path, key: &str) -> Result<()> {
    let f = fs::File::create(raw).map_err(io_err(raw))?;
    f.set_len(layout.total).map_err(io_err(raw))?;
    drop(f);
    let script = sfdisk_script(
        layout,
        &uuid_from(key, "disk"),
        &uuid_from(key, "esp-part"),
        &uuid_from(key, "root-part"),
    );
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Command {
            cmd: "sfdisk".into(),
            detail: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| BuildError::Command {
                cmd: "sfdisk".into(),
                detail: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| BuildError::Command {
        cmd: "sfdisk".into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BuildError::Command {
            cmd: format!("sfdisk {}", raw.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    copy_into(esp, raw, layout.esp_start, layout.esp_size)?;
    copy_into(rootfs, raw, layout.root_start, layout.root_size)
}

/// Writes `src` into `dst` at `offset` like `dd conv=notrunc,sparse`: blocks of zeros
/// are skipped, so the disk stays sparse. Fails if `src` is larger than `max`.
pub fn copy_into(src: &Path, dst: &Path, offset: u64, max: u64) -> Result<()> {
    let len = file_size(src)?;
    if len > max {
        return Err(BuildError::Missing(format!(
            "{} ({len} bytes) does not fit its partition ({max} bytes)",
            src.display()
        )));
    }
    let mut s = fs::File::open(src).map_err(io_err(src))?;
    let mut d = fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(io_err(dst))?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match s.read(&mut buf[n..]).map_err(io_err(src))? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            d.seek(SeekFrom::Start(pos)).map_err(io_err(dst))?;
            d.write_all(&buf[..n]).map_err(io_err(dst))?;
        }
        pos += n as u64;
    }
    d.sync_all().map_err(io_err(dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB_H: &str = "
/usr/lib/systemd/boot/efi/linuxx64.efi.stub:     file format pei-x86-64

Sections:
Idx Name          Size      VMA               LMA               File off  Algn
  0 .text         0000bff0  0000000000004000  0000000000004000  00000400  2**4
                  CONTENTS, ALLOC, LOAD, READONLY, CODE
  1 .reloc        0000000c  0000000000010000  0000000000010000  0000c400  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  2 .data         000034b8  0000000000011000  0000000000011000  0000c600  2**4
                  CONTENTS, ALLOC, LOAD, DATA
  6 .sbat         000000e2  0000000000019000  0000000000019000  00011000  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
  7 .sdmagic      00000034  0000000000019100  0000000000019100  00011200  2**2
                  CONTENTS, ALLOC, LOAD, READONLY, DATA
";

    #[test]
    fn parses_objdump_sections() {
        let s = parse_objdump_sections(STUB_H);
        assert_eq!(s.len(), 5);
        assert_eq!(
            s[0],
            PeSection {
                name: ".text".into(),
                size: 0xbff0,
                vma: 0x4000
            }
        );
        assert_eq!(s[4].name, ".sdmagic");
        assert_eq!(s[4].vma, 0x19100);
    }

    #[test]
    fn parses_section_alignment() {
        let p = "Magic\t\t\t020b\t(PE32+)\nSectionAlignment\t00001000\nFileAlignment\t\t00000200\n";
        assert_eq!(parse_section_alignment(p), Some(0x1000));
        assert_eq!(parse_section_alignment("nothing"), None);
    }

    #[test]
    fn uki_sections_follow_the_stub_aligned_and_disjoint() {
        let stub = parse_objdump_sections(STUB_H);
        let sizes = [
            (".osrel", 267),
            (".cmdline", 64),
            (".linux", 8_000_000),
            (".initrd", 0x1000),
        ];
        let v = uki_section_vmas(&stub, 0x1000, &sizes).expect("layout");
        // .sdmagic ends at 0x19134: the first added section starts at the next page.
        assert_eq!(v[0], (".osrel".to_string(), 0x1a000));
        assert_eq!(v[1], (".cmdline".to_string(), 0x1b000));
        assert_eq!(v[2], (".linux".to_string(), 0x1c000));
        assert_eq!(v[3].1, round_up(0x1c000 + 8_000_000, 0x1000));
        for (i, (_, vma)) in v.iter().enumerate() {
            assert_eq!(vma % 0x1000, 0);
            assert!(stub.iter().all(|s| s.vma + s.size <= *vma));
            if let Some((_, next)) = v.get(i + 1) {
                assert!(vma + sizes[i].1 <= *next, "section {i} overlaps the next");
            }
        }
        assert!(uki_section_vmas(&stub, 0x1001, &sizes).is_err());
        assert!(uki_section_vmas(&[], 0x1000, &sizes).is_err());
    }

    #[test]
    fn policy_candidates() {
        let text = "\
linux-image-amd64:
  Installed: (none)
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
systemd:
  Installed: 252.39-1~deb12u2
  Candidate: 252.39-1~deb12u2
nothere:
  Installed: (none)
  Candidate: (none)
";
        let c = parse_policy_candidates(text);
        assert_eq!(
            c.get("linux-image-amd64").map(String::as_str),
            Some("6.1.192-3")
        );
        assert_eq!(
            c.get("systemd").map(String::as_str),
            Some("252.39-1~deb12u2")
        );
        assert!(!c.contains_key("nothere"));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn key_changes_with_any_version() {
        let mut versions = BTreeMap::new();
        versions.insert("linux-image-amd64".to_string(), "6.1.192-3".to_string());
        versions.insert("cloud-init".to_string(), "22.4.2-1+deb12u4".to_string());
        let a = DebianInputs {
            versions: versions.clone(),
        };
        assert_eq!(a.key(), a.clone().key(), "the key is deterministic");
        assert_eq!(a.key().len(), 16);
        let mut b = a.clone();
        b.versions
            .insert("linux-image-amd64".to_string(), "6.1.193-1".to_string());
        assert_ne!(a.key(), b.key());
        let mut c = a.clone();
        c.versions
            .insert("openssh-server".to_string(), "1:9.2p1-2".to_string());
        assert_ne!(a.key(), c.key());
        // Separators keep ("ab", "c") and ("a", "bc") apart.
        let mut d = DebianInputs {
            versions: BTreeMap::new(),
        };
        d.versions.insert("ab".into(), "c".into());
        let mut e = DebianInputs {
            versions: BTreeMap::new(),
        };
        e.versions.insert("a".into(), "bc".into());
        assert_ne!(d.key(), e.key());
    }

    #[test]
    fn key_covers_the_config_files() {
        // The key hashes every config file's content: a file's text appears in it.
        assert!(CONFIG_FILES.iter().any(|f| f
            .content
            .contains("datasource_list: [ ConfigDrive, NoCloud, None ]")));
        assert!(!CLOUD_CFG.contains("Ec2"));
        assert!(CLOUD_CFG.contains(DEBIAN_READY_MARKER));
    }

    #[test]
    fn modules_keep_dirs_names_and_dependencies() {
        let dep = "\
kernel/drivers/block/virtio_blk.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/gpu/drm/tiny/bochs.ko: kernel/drivers/gpu/drm/drm_vram_helper.ko kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm_vram_helper.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/drm.ko:
kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko: kernel/drivers/gpu/drm/drm.ko
kernel/drivers/gpu/drm/virtio/virtio-gpu.ko: kernel/drivers/gpu/drm/drm.ko
kernel/sound/core/snd.ko:
";
        let deps = parse_modules_dep(dep);
        assert_eq!(deps.len(), 10);
        let keep = modules_to_keep(
            &deps,
            &["drivers/block/"],
            &["virtio_net", "bochs", "virtio_gpu"],
        );
        let want: BTreeSet<String> = [
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/net/core/failover.ko",
            "kernel/drivers/gpu/drm/tiny/bochs.ko",
            "kernel/drivers/gpu/drm/drm_vram_helper.ko",
            "kernel/drivers/gpu/drm/drm.ko",
            "kernel/drivers/gpu/drm/virtio/virtio-gpu.ko",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(keep, want);
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/gpu/drm/virtio/virtio-gpu.ko"),
            "virtio_gpu"
        );
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("usr/lib/modules/x/kernel/a/sd_mod.ko"),
            "sd_mod"
        );
    }

    #[test]
    fn layout_and_partition_table() {
        let l = disk_layout(64 * MIB, 900 * MIB + 5, MIN_DISK_SIZE);
        assert_eq!(l.esp_start, MIB);
        assert_eq!(l.root_start, 65 * MIB);
        assert_eq!(l.root_size, 901 * MIB);
        assert_eq!(l.total, 2 << 30);
        // Larger than the minimum: the root's end plus a MiB for the backup GPT.
        let big = disk_layout(64 * MIB, 3 << 30, MIN_DISK_SIZE);
        assert_eq!(big.total, 65 * MIB + (3 << 30) + MIB);
        let s = sfdisk_script(&l, "D", "E", "R");
        assert!(s.contains("start=2048, size=131072, type=C12A7328"));
        assert!(s.contains(&format!("start={}, size={}", 65 * 2048, 901 * 2048)));
        assert!(s.contains("name=\"halyard-root\""));
    }

    #[test]
    fn sizes() {
        assert_eq!(esp_size_for(20 * MIB), 64 * MIB);
        assert_eq!(esp_size_for(40 * MIB + 1), 97 * MIB);
        let r = rootfs_size_for(1000 * MIB);
        assert_eq!(r, 1364 * MIB);
        assert_eq!(r % MIB, 0);
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let a = uuid_from("0123456789abcdef", "root");
        assert_eq!(a, uuid_from("0123456789abcdef", "root"));
        assert_ne!(a, uuid_from("0123456789abcdef", "esp"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(
            parts[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
    }

    #[test]
    fn sparse_copy_into_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let mut data = vec![0u8; 3 * MIB as usize];
        data[10] = 1;
        data[2 * MIB as usize + 5] = 2;
        fs::write(&src, &data).expect("write");
        let f = fs::File::create(&dst).expect("create");
        f.set_len(8 * MIB).expect("set_len");
        drop(f);
        copy_into(&src, &dst, MIB, 4 * MIB).expect("copy");
        let out = fs::read(&dst).expect("read");
        assert_eq!(out.len(), 8 * MIB as usize);
        assert_eq!(out[MIB as usize + 10], 1);
        assert_eq!(out[3 * MIB as usize + 5], 2);
        assert_eq!(out.iter().filter(|&&b| b != 0).count(), 2);
        assert!(
            copy_into(&src, &dst, 0, MIB).is_err(),
            "too large for the partition"
        );
    }

    #[test]
    fn simple_globs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        fs::create_dir_all(r.join("etc/ssh")).expect("mkdir");
        for f in ["ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config"] {
            fs::write(r.join("etc/ssh").join(f), "").expect("write");
        }
        let g = glob_simple(r, "etc/ssh/ssh_host_*").expect("glob");
        assert_eq!(g.len(), 2);
        assert!(glob_simple(r, "etc/nothere/*").expect("glob").is_empty());
        assert_eq!(
            glob_simple(r, "etc/ssh/sshd_config").expect("glob").len(),
            1
        );
        assert!(glob_simple(r, "etc/ssh/absent").expect("glob").is_empty());
    }
}
