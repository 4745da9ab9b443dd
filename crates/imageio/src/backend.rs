//! Where a ticket's bytes live: a file (the volume's bytes as they are) or a qemu-nbd
//! export (guest data, whatever the volume's format). Both give imageio's operations:
//! read, write, zero, flush, extents, size.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::nbd;

/// Connections (or concurrent file operations) of one ticket, at most: imageio's
/// max_readers / max_writers.
pub const MAX_WORKERS: usize = 8;
/// Extents one answer lists, at most; past it the rest is one data extent (reading
/// zeros as data is correct, only slower).
pub const MAX_EXTENTS: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Nbd(#[from] nbd::NbdError),
    #[error("backend task failed")]
    Join,
}

type Result<T> = std::result::Result<T, BackendError>;

/// One extent, as imageio's `/extents` lists it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    pub zero: bool,
    pub hole: bool,
}

fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.zero == e.zero && last.hole == e.hole && last.start + last.length == e.start {
            last.length += e.length;
            return;
        }
        if out.len() >= MAX_EXTENTS {
            // Coarser from here: one data extent to the end.
            let last = out.last_mut().expect("not empty");
            if last.zero {
                out.push(Extent {
                    start: e.start,
                    length: e.length,
                    zero: false,
                    hole: false,
                });
            } else {
                last.length = e.start + e.length - last.start;
            }
            return;
        }
    }
    out.push(e);
}

/// A file's bytes.
pub struct FileBackend {
    file: Arc<std::fs::File>,
    path: PathBuf,
    sparse: bool,
    workers: Arc<Semaphore>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BackendError::Join)?
        .map_err(BackendError::Io)
}

impl FileBackend {
    pub fn open(path: &Path, write: bool, sparse: bool) -> Result<FileBackend> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)?;
        Ok(FileBackend {
            file: Arc::new(file),
            path: path.to_path_buf(),
            sparse,
            workers: Arc::new(Semaphore::new(MAX_WORKERS)),
        })
    }

    fn size(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.file.clone();
        blocking(move || {
            let mut b = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let n = f.read_at(&mut b[done..], offset + done as u64)?;
                if n == 0 {
                    // Past the end of a file that is shorter: zeros, as a sparse tail.
                    b[done..].fill(0);
                    break;
                }
                done += n;
            }
            Ok(b)
        })
        .await
    }

    async fn write(&self, offset: u64, parts: Vec<bytes::Bytes>) -> Result<()> {
        let f = self.file.clone();
        blocking(move || {
            let mut at = offset;
            for p in &parts {
                f.write_all_at(p, at)?;
                at += p.len() as u64;
            }
            Ok(())
        })
        .await
    }

    async fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let f = self.file.clone();
        let sparse = self.sparse;
        blocking(move || {
            use std::os::fd::AsRawFd;
            let size = f.metadata()?.len();
            let end = offset.saturating_add(len);
            if end > size {
                f.set_len(end)?;
            }
            let (off, l) = (offset as libc::off_t, len as libc::off_t);
            let mode = if sparse {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
            // SAFETY: fallocate on a file descriptor this function owns (through the
            // Arc) for the call's duration; it takes no pointers.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, l) };
            if r == 0 {
                return Ok(());
            }
            // No fallocate mode on this file system: write zeros.
            let zeros = vec![0u8; 1 << 20];
            let mut pos = offset;
            while pos < end {
                let n = (end - pos).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        let f = self.file.clone();
        blocking(move || f.sync_all()).await
    }

    async fn extents(&self) -> Result<Vec<Extent>> {
        let f = self.file.clone();
        blocking(move || {
            use std::os::fd::AsRawFd;
            let size = f.metadata()?.len();
            let fd = f.as_raw_fd();
            let mut out = Vec::new();
            let mut pos: u64 = 0;
            while pos < size {
                // SAFETY: lseek on a descriptor kept open by the Arc; no pointers.
                let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
                let data = if data < 0 { size } else { data as u64 };
                if data > pos {
                    push_extent(
                        &mut out,
                        Extent {
                            start: pos,
                            length: data.min(size) - pos,
                            zero: true,
                            hole: true,
                        },
                    );
                    pos = data;
                    if pos >= size {
                        break;
                    }
                }
                // SAFETY: as above.
                let hole = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_HOLE) };
                let hole = if hole < 0 {
                    size
                } else {
                    (hole as u64).min(size)
                };
                let hole = hole.max(pos + 1).min(size);
                push_extent(
                    &mut out,
                    Extent {
                        start: pos,
                        length: hole - pos,
                        zero: false,
                        hole: false,
                    },
                );
                pos = hole;
            }
            Ok(out)
        })
        .await
    }
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "file {}", self.path.display())
    }
}

/// Connections to a qemu-nbd export, reused across requests.
pub struct NbdBackend {
    socket: PathBuf,
    idle: Mutex<Vec<nbd::Client>>,
    slots: Arc<Semaphore>,
    pub size: u64,
    pub multi_conn: bool,
    pub read_only: bool,
}

/// A connection taken from the pool. It goes back when dropped only if its last
/// request ended well ([`NbdConn::done`]): a request that failed, or that was dropped
/// half-way (a client gone mid-transfer), may leave its stream out of step.
pub struct NbdConn<'a> {
    pool: &'a NbdBackend,
    c: Option<nbd::Client>,
    clean: bool,
    _slot: OwnedSemaphorePermit,
}

impl NbdConn<'_> {
    pub fn get(&mut self) -> &mut nbd::Client {
        self.c.as_mut().expect("connection present until drop")
    }

    /// The request ended with its whole reply read: the connection may be reused.
    pub fn done(&mut self) {
        self.clean = true;
    }
}

impl Drop for NbdConn<'_> {
    fn drop(&mut self) {
        if !self.clean {
            return;
        }
        if let Some(c) = self.c.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
}

impl NbdBackend {
    pub async fn open(socket: &Path) -> Result<NbdBackend> {
        let c = nbd::Client::connect(socket).await?;
        Ok(NbdBackend {
            socket: socket.to_path_buf(),
            size: c.size,
            multi_conn: c.can_multi_conn(),
            read_only: c.read_only(),
            idle: Mutex::new(vec![c]),
            slots: Arc::new(Semaphore::new(MAX_WORKERS)),
        })
    }

    pub fn workers(&self) -> usize {
        if self.multi_conn || self.read_only {
            MAX_WORKERS
        } else {
            1
        }
    }

    pub async fn conn(&self) -> Result<NbdConn<'_>> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendError::Join)?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let c = match idle {
            Some(c) => c,
            None => nbd::Client::connect(&self.socket).await?,
        };
        Ok(NbdConn {
            pool: self,
            c: Some(c),
            clean: false,
            _slot: slot,
        })
    }
}

/// Runs `$body` (a future using the connection `$c`) on a pooled connection; a
/// connection that failed, or whose request was dropped before it ended, is closed,
/// not reused.
macro_rules! on_conn {
    ($n:expr, $c:ident => $body:expr) => {{
        let mut conn = $n.conn().await?;
        let r = {
            let $c = conn.get();
            $body.await
        };
        match r {
            Ok(v) => {
                conn.done();
                Ok(v)
            }
            Err(e) => Err(BackendError::from(e)),
        }
    }};
}

async fn nbd_read(
    c: &mut nbd::Client,
    offset: u64,
    len: usize,
) -> std::result::Result<Vec<u8>, nbd::NbdError> {
    let mut b = vec![0u8; len];
    let mut done = 0usize;
    while done < len {
        let k = (len - done).min(nbd::MAX_REQUEST as usize);
        c.read(offset + done as u64, &mut b[done..done + k]).await?;
        done += k;
    }
    Ok(b)
}

/// Writes `parts` at `offset` in requests of at most [`nbd::MAX_REQUEST`] bytes, the
/// parts sliced (not copied) where a request ends.
async fn nbd_write(
    c: &mut nbd::Client,
    offset: u64,
    parts: &[bytes::Bytes],
) -> std::result::Result<(), nbd::NbdError> {
    let max = nbd::MAX_REQUEST as usize;
    let mut at = offset;
    let mut req: Vec<bytes::Bytes> = Vec::new();
    let mut req_len = 0usize;
    for p in parts {
        let mut p = p.clone();
        while !p.is_empty() {
            let k = p.len().min(max - req_len);
            req.push(p.split_to(k));
            req_len += k;
            if req_len == max {
                c.write_parts(at, &req).await?;
                at += req_len as u64;
                req.clear();
                req_len = 0;
            }
        }
    }
    if req_len > 0 {
        c.write_parts(at, &req).await?;
    }
    Ok(())
}

/// A ticket's backend.
pub enum Backend {
    File(FileBackend),
    Nbd(NbdBackend),
}

impl Backend {
    pub fn size(&self) -> Result<u64> {
        match self {
            Backend::File(f) => f.size(),
            Backend::Nbd(n) => Ok(n.size),
        }
    }

    /// Concurrent readers/writers a client should use.
    pub fn workers(&self) -> usize {
        match self {
            Backend::File(_) => MAX_WORKERS,
            Backend::Nbd(n) => n.workers(),
        }
    }

    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match self {
            Backend::File(f) => {
                let _w = f.workers.acquire().await.map_err(|_| BackendError::Join)?;
                f.read(offset, len).await
            }
            Backend::Nbd(n) => on_conn!(n, c => nbd_read(c, offset, len)),
        }
    }

    /// Writes `parts`, one after the other, at `offset`.
    pub async fn write(&self, offset: u64, data: Vec<bytes::Bytes>) -> Result<()> {
        match self {
            Backend::File(f) => {
                let _w = f.workers.acquire().await.map_err(|_| BackendError::Join)?;
                f.write(offset, data).await
            }
            Backend::Nbd(n) => on_conn!(n, c => nbd_write(c, offset, &data)),
        }
    }

    pub async fn zero(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        match self {
            Backend::File(f) => f.zero(offset, len).await,
            Backend::Nbd(n) => on_conn!(n, c => c.zero(offset, len, punch)),
        }
    }

    pub async fn flush(&self) -> Result<()> {
        match self {
            Backend::File(f) => f.flush().await,
            Backend::Nbd(n) => on_conn!(n, c => c.flush()),
        }
    }

    /// Zero extents (imageio's context=zero) of the whole image.
    pub async fn extents(&self) -> Result<Vec<Extent>> {
        match self {
            Backend::File(f) => f.extents().await,
            Backend::Nbd(n) => {
                let raw: Vec<(u64, u64, u32)> = on_conn!(n, c => c.extents())?;
                let mut out = Vec::new();
                for (start, length, flags) in raw {
                    push_extent(
                        &mut out,
                        Extent {
                            start,
                            length,
                            zero: flags & nbd::STATE_ZERO != 0,
                            hole: flags & nbd::STATE_HOLE != 0,
                        },
                    );
                }
                Ok(out)
            }
        }
    }
}
