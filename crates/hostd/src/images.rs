//! Image transfers on the host (VDSM's side of oVirt's image transfer): the image data
//! server (halyard-imageio on port 54322, in this process), its tickets
//! (`Host.add_image_ticket` / `remove_image_ticket` / `extend_image_ticket` /
//! `get_image_ticket`), the qemu-nbd servers that give guest data of a volume
//! (`NBD.start_server` / `stop_server`), and the check of what a client uploaded
//! (`Volume.verify_untrusted`).
//!
//! A ticket may only name what this agent made ready for it: a volume file that
//! `Image.prepare` returned, or the socket of a qemu-nbd server it started. The
//! Manager is authenticated (mutual TLS, manager role); this check keeps a ticket from
//! ever reaching another file of the host.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halyard_imageio::ticket::{Role, Target};
use halyard_imageio::{ImageServer, TicketInfo, TicketSpec};
use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::errors;
use serde::Deserialize;
use tracing::{info, warn};

/// Prepared volume paths remembered for tickets, at most.
const MAX_PREPARED: usize = 4096;

/// `NBD.start_server`'s config (VDSM's names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NbdConfig {
    pub sd_id: String,
    pub img_id: String,
    pub vol_id: String,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub discard: bool,
    #[serde(default)]
    pub detect_zeroes: bool,
    #[serde(default = "yes")]
    pub backing_chain: bool,
    #[serde(default)]
    pub bitmap: Option<String>,
}

fn yes() -> bool {
    true
}

struct NbdServer {
    child: tokio::process::Child,
    socket: PathBuf,
}

/// The agent's image transfer side.
pub struct Images {
    pub server: Arc<ImageServer>,
    port: AtomicU16,
    run_dir: PathBuf,
    max_nbd: usize,
    prepared: Mutex<HashSet<PathBuf>>,
    nbd: tokio::sync::Mutex<HashMap<String, NbdServer>>,
}

/// How long qemu-nbd has to flush and end after SIGTERM before it is killed.
const NBD_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// glibc's malloc settings for qemu-nbd: requests' buffers (up to 32 MiB) from the
/// heap, which is trimmed only past 256 MiB free.
const QEMU_NBD_MALLOC: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456";

/// Whether `path` opens with O_DIRECT (not on tmpfs, for one).
fn supports_direct_io(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

fn bad(msg: impl std::fmt::Display) -> RpcError {
    errors::INVALID_PARAMETER.rpc(Some(&msg.to_string()))
}

fn check_id(what: &str, s: &str) -> Result<(), RpcError> {
    if halyard_proto::vdsm::is_uuid(s) {
        Ok(())
    } else {
        Err(bad(format!("{what} must be a UUID")))
    }
}

impl Images {
    pub fn new(run_dir: &Path, max_connections: usize, max_nbd: usize) -> Arc<Images> {
        let limits = halyard_imageio::Limits {
            max_connections,
            ..Default::default()
        };
        Arc::new(Images {
            server: ImageServer::new(Role::Host, limits, None),
            port: AtomicU16::new(0),
            run_dir: run_dir.join("nbd"),
            max_nbd,
            prepared: Mutex::new(HashSet::new()),
            nbd: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn set_port(&self, p: u16) {
        self.port.store(p, Ordering::Relaxed);
    }

    /// The data server's port (0: not serving).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// Remembers a path `Image.prepare` returned: tickets may name it.
    pub fn prepared(&self, path: &Path) {
        let mut p = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PREPARED {
            p.clear();
        }
        p.insert(path.to_path_buf());
    }

    pub async fn add_ticket(&self, spec: TicketSpec) -> Result<(), RpcError> {
        let target = spec.check(Role::Host).map_err(bad)?;
        match &target {
            Target::File(p) => {
                let known = self
                    .prepared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(p);
                if !known {
                    return Err(bad(
                        "the ticket's file is not a volume prepared by Image.prepare",
                    ));
                }
            }
            Target::Nbd(s) => {
                if !self.nbd.lock().await.values().any(|n| &n.socket == s) {
                    return Err(bad(
                        "the ticket's socket is not one of this host's NBD servers",
                    ));
                }
            }
            Target::Remote { .. } => return Err(bad("a host serves local images only")),
        }
        let transfer = spec.transfer_id.clone().unwrap_or_default();
        let ops = spec.ops.join(",");
        self.server.tickets().add(spec).map_err(bad)?;
        info!(%transfer, %ops, "image ticket added");
        Ok(())
    }

    pub fn remove_ticket(&self, uuid: &str) {
        self.server.tickets().remove(uuid);
    }

    pub fn extend_ticket(&self, uuid: &str, timeout: u64) -> Result<(), RpcError> {
        self.server
            .tickets()
            .extend(uuid, timeout)
            .map_err(|e| errors::IMAGE_TICKETS.rpc(Some(&e.to_string())))
    }

    pub fn ticket_info(&self, uuid: &str) -> Result<TicketInfo, RpcError> {
        self.server
            .tickets()
            .info(uuid)
            .map_err(|e| errors::IMAGE_TICKETS.rpc(Some(&e.to_string())))
    }

    /// Starts qemu-nbd on a prepared volume; returns its URL (`nbd:unix:<socket>`).
    pub async fn start_nbd(
        &self,
        server_id: &str,
        path: &Path,
        qcow2: bool,
        cfg: &NbdConfig,
    ) -> Result<String, RpcError> {
        check_id("server_id", server_id)?;
        if cfg.bitmap.is_some() {
            return Err(bad(
                "NBD servers with a bitmap (incremental backup) are not supported yet",
            ));
        }
        if !cfg.backing_chain && qcow2 {
            return Err(bad(
                "NBD servers without the backing chain (shallow) are not supported yet",
            ));
        }
        let mut servers = self.nbd.lock().await;
        servers.retain(|_, s| matches!(s.child.try_wait(), Ok(None)));
        if servers.contains_key(server_id) {
            return Err(bad("an NBD server with this id runs already"));
        }
        if servers.len() >= self.max_nbd {
            return Err(bad(format!(
                "at most {} NBD servers run at once",
                self.max_nbd
            )));
        }
        halyard_common::fsutil::restrict_dir(&self.run_dir).map_err(RpcError::internal)?;
        let socket = self.run_dir.join(format!("{server_id}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = tokio::process::Command::new("qemu-nbd");
        // VDSM's: direct I/O (no copy through the page cache; qemu-img convert into
        // such a server took 2.0 s against 3.3 s with writeback here), or, where the
        // file system has no O_DIRECT (tmpfs), the page cache as imageio's "auto" does.
        let (cache, aio) = if supports_direct_io(path) {
            ("--cache=none", "--aio=native")
        } else {
            ("--cache=writeback", "--aio=threads")
        };
        cmd.arg(format!("--socket={}", socket.display()))
            .arg(format!("--format={}", if qcow2 { "qcow2" } else { "raw" }))
            .args(["--persistent", "--shared=8", cache, aio])
            .arg("--export-name=")
            // qemu-nbd allocates a buffer per request (4 MiB from the data server);
            // glibc would map and unmap each, faulting every page in again. Kept in
            // the heap instead (at most 8 connections x 8 MiB in use), qemu-img
            // convert into such a server took 0.85 s against 1.5 s here.
            .env("GLIBC_TUNABLES", QEMU_NBD_MALLOC);
        if cfg.readonly {
            cmd.arg("--read-only");
        } else {
            if cfg.discard {
                cmd.arg("--discard=unmap");
            }
            if cfg.detect_zeroes {
                cmd.arg(if cfg.discard {
                    "--detect-zeroes=unmap"
                } else {
                    "--detect-zeroes=on"
                });
            }
        }
        cmd.arg(path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl in the child between fork and exec, async-signal-safe; it asks
        // the kernel to end qemu-nbd if the agent dies, so no server outlives it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| RpcError::internal(format!("starting qemu-nbd: {e}")))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if socket.exists() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = (&mut e).take(4096).read_to_string(&mut err).await;
                }
                return Err(RpcError::internal(format!(
                    "qemu-nbd exited ({st}): {}",
                    err.trim()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(RpcError::internal("qemu-nbd did not start within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        info!(
            server_id,
            readonly = cfg.readonly,
            qcow2,
            "NBD server started"
        );
        let url = format!("nbd:unix:{}", socket.display());
        servers.insert(server_id.to_string(), NbdServer { child, socket });
        Ok(url)
    }

    pub async fn stop_nbd(&self, server_id: &str) -> Result<(), RpcError> {
        check_id("server_id", server_id)?;
        let s = self.nbd.lock().await.remove(server_id);
        if let Some(mut s) = s {
            // SIGTERM, as systemd stops VDSM's qemu-nbd: qemu-nbd then flushes its qcow2
            // metadata caches and closes the image. SIGKILL only if it does not end.
            if let Some(pid) = s.child.id() {
                // SAFETY: kill(2) on the pid of a child this agent started and has not
                // reaped yet (it is still in `s.child`), so the pid names that process.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            match tokio::time::timeout(NBD_STOP_TIMEOUT, s.child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(server_id, error = %e, "waiting for qemu-nbd"),
                Err(_) => {
                    warn!(server_id, "qemu-nbd did not end on SIGTERM; killing it");
                    if let Err(e) = s.child.kill().await {
                        warn!(server_id, error = %e, "stopping qemu-nbd");
                    }
                }
            }
            let _ = std::fs::remove_file(&s.socket);
            info!(server_id, "NBD server stopped");
        }
        Ok(())
    }
}

/// What `qemu-img info` says of an uploaded volume, checked against what the volume
/// must be (VDSM's Volume.verify_untrusted): its format, no backing file of its own
/// choosing, a virtual size within the volume's capacity; `qemu-img check` for qcow2.
/// With `iso`, the data must be an ISO 9660 image (CD001 at 0x8001).
pub async fn verify_untrusted(
    path: &Path,
    qcow2: bool,
    capacity: u64,
    parent: Option<&str>,
    iso: bool,
) -> Result<(), String> {
    let out = tokio::process::Command::new("qemu-img")
        .args([
            "info",
            "--output=json",
            "-U",
            "-f",
            if qcow2 { "qcow2" } else { "raw" },
        ])
        .arg(path)
        .output()
        .await
        .map_err(|e| format!("qemu-img info: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the uploaded data is not a valid {} image: {}",
            if qcow2 { "qcow2" } else { "raw" },
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))?;
    let vsize = info["virtual-size"].as_u64().unwrap_or(u64::MAX);
    if vsize > capacity {
        return Err(format!(
            "the uploaded image's virtual size {vsize} is larger than the disk ({capacity})"
        ));
    }
    if qcow2 {
        let backing = info["backing-filename"].as_str();
        match (backing, parent) {
            (None, _) => {}
            (Some(b), Some(p)) if b.ends_with(p) => {}
            (Some(b), _) => {
                return Err(format!(
                "the uploaded qcow2 image has a backing file of its own ({b:?}); it must have none"
            ))
            }
        }
        if info["format-specific"]["data"]["data-file"].is_string() {
            return Err("the uploaded qcow2 image names an external data file".into());
        }
        let chk = tokio::process::Command::new("qemu-img")
            .args(["check", "-U", "-f", "qcow2", "--output=json"])
            .arg(path)
            .output()
            .await
            .map_err(|e| format!("qemu-img check: {e}"))?;
        if !chk.status.success() {
            return Err(format!(
                "the uploaded qcow2 image is corrupt: {}",
                String::from_utf8_lossy(&chk.stdout)
                    .chars()
                    .chain(String::from_utf8_lossy(&chk.stderr).chars())
                    .take(400)
                    .collect::<String>()
            ));
        }
    }
    if iso {
        let sig = if qcow2 {
            read_guest(path, 0x8000, 8).await?
        } else {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
                let mut b = vec![0u8; 8];
                f.read_exact_at(&mut b, 0x8000).map_err(|e| e.to_string())?;
                Ok::<_, String>(b)
            })
            .await
            .map_err(|e| e.to_string())??
        };
        if sig != b"\x01CD001\x01\x00" {
            return Err("the uploaded disk is marked content_type=iso but is not an ISO 9660 image (no CD001 primary volume descriptor at 0x8000)".into());
        }
    }
    Ok(())
}

/// Reads guest bytes of a qcow2 image (for the ISO check of a qcow2 upload).
async fn read_guest(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let tmp = std::env::temp_dir().join(format!("halyard-iso-{}", uuid::Uuid::new_v4()));
    let st = tokio::process::Command::new("qemu-img")
        .args(["dd", "-U", "-f", "qcow2", "-O", "raw", "bs=2048"])
        .arg(format!("skip={}", offset / 2048))
        .arg("count=1")
        .arg(format!("if={}", path.display()))
        .arg(format!("of={}", tmp.display()))
        .output()
        .await
        .map_err(|e| format!("qemu-img dd: {e}"))?;
    let data = std::fs::read(&tmp).unwrap_or_default();
    let _ = std::fs::remove_file(&tmp);
    if !st.status.success() || data.len() < len {
        return Err("cannot read the uploaded image's ISO header".into());
    }
    Ok(data[..len].to_vec())
}
