//! The sanlock daemon through its C library (`libsanlock`): lockspaces (host ids, delta
//! leases on `dom_md/ids`), resources (paxos leases: the SPM's `SDM`, volume leases),
//! and a registered connection whose leases the daemon releases when the connection
//! closes (the holder died) — which is what makes failover after an agent crash fast.
//!
//! Struct layouts follow `sanlock.h`; every call goes through the daemon (the socket in
//! `$SANLOCK_RUN_DIR`, default `/run/sanlock`).

use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Result, StorageError};

const NAME_LEN: usize = 48;
const PATH_LEN: usize = 1024;

/// 1 MiB alignment + 512-byte sectors (oVirt V5 domains with 512-byte blocks).
pub const ALIGN1M_SECTOR512: u32 = 0x10 | 0x100;

const SANLK_RES_LVER: u32 = 0x1;
const SANLK_REL_ALL: u32 = 0x1;

#[repr(C)]
#[derive(Clone, Copy)]
struct SanlkDisk {
    path: [c_char; PATH_LEN],
    offset: u64,
    pad1: u32,
    pad2: u32,
}

#[repr(C)]
struct SanlkLockspace {
    name: [c_char; NAME_LEN],
    host_id: u64,
    flags: u32,
    host_id_disk: SanlkDisk,
}

/// `struct sanlk_resource` with room for exactly one disk.
#[repr(C)]
struct SanlkResource {
    lockspace_name: [c_char; NAME_LEN],
    name: [c_char; NAME_LEN],
    lver: u64,
    data64: u64,
    data32: u32,
    unused: u32,
    flags: u32,
    num_disks: u32,
    disks: [SanlkDisk; 1],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SanlkHost {
    host_id: u64,
    generation: u64,
    timestamp: u64,
    io_timeout: u32,
    flags: u32,
}

#[link(name = "sanlock")]
extern "C" {
    fn sanlock_write_lockspace(
        ls: *mut SanlkLockspace,
        max_hosts: c_int,
        flags: u32,
        io_timeout: u32,
    ) -> c_int;
    fn sanlock_write_resource(
        res: *mut SanlkResource,
        max_hosts: c_int,
        num_hosts: c_int,
        flags: u32,
    ) -> c_int;
    fn sanlock_add_lockspace_timeout(ls: *mut SanlkLockspace, flags: u32, io_timeout: u32)
        -> c_int;
    fn sanlock_inq_lockspace(ls: *mut SanlkLockspace, flags: u32) -> c_int;
    fn sanlock_rem_lockspace(ls: *mut SanlkLockspace, flags: u32) -> c_int;
    fn sanlock_register() -> c_int;
    fn sanlock_acquire(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut SanlkResource,
        opt_in: *mut std::ffi::c_void,
    ) -> c_int;
    fn sanlock_release(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut SanlkResource,
    ) -> c_int;
    fn sanlock_inquire(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: *mut c_int,
        res_state: *mut *mut c_char,
    ) -> c_int;
    fn sanlock_read_resource(res: *mut SanlkResource, flags: u32) -> c_int;
    fn sanlock_read_resource_owners(
        res: *mut SanlkResource,
        flags: u32,
        hss: *mut *mut SanlkHost,
        hss_count: *mut c_int,
    ) -> c_int;
    fn sanlock_get_hosts(
        ls_name: *const c_char,
        host_id: u64,
        hss: *mut *mut SanlkHost,
        hss_count: *mut c_int,
        flags: u32,
    ) -> c_int;
    fn sanlock_killpath(sock: c_int, flags: u32, path: *const c_char, args: *mut c_char) -> c_int;
}

fn fill(dst: &mut [c_char], s: &[u8], what: &str) -> Result<()> {
    if s.len() >= dst.len() || s.contains(&0) {
        return Err(StorageError::InvalidParameter(format!(
            "sanlock {what} too long or contains NUL"
        )));
    }
    for (d, b) in dst.iter_mut().zip(s.iter()) {
        *d = *b as c_char;
    }
    dst[s.len()] = 0;
    Ok(())
}

fn disk(path: &Path, offset: u64) -> Result<SanlkDisk> {
    let mut d = SanlkDisk {
        path: [0; PATH_LEN],
        offset,
        pad1: 0,
        pad2: 0,
    };
    fill(&mut d.path, path.as_os_str().as_encoded_bytes(), "path")?;
    Ok(d)
}

fn lockspace(name: &str, host_id: u64, path: &Path, flags: u32) -> Result<SanlkLockspace> {
    let mut ls = SanlkLockspace {
        name: [0; NAME_LEN],
        host_id,
        flags,
        host_id_disk: disk(path, 0)?,
    };
    fill(&mut ls.name, name.as_bytes(), "lockspace name")?;
    Ok(ls)
}

fn resource(
    ls: &str,
    name: &str,
    path: &Path,
    offset: u64,
    flags: u32,
) -> Result<Box<SanlkResource>> {
    let mut r = Box::new(SanlkResource {
        lockspace_name: [0; NAME_LEN],
        name: [0; NAME_LEN],
        lver: 0,
        data64: 0,
        data32: 0,
        unused: 0,
        flags,
        num_disks: 1,
        disks: [disk(path, offset)?],
    });
    fill(&mut r.lockspace_name, ls.as_bytes(), "lockspace name")?;
    fill(&mut r.name, name.as_bytes(), "resource name")?;
    Ok(r)
}

/// A sanlock return code as an error.
fn err(op: &str, rc: c_int) -> StorageError {
    let what = match rc {
        -2 => "no such entry (ENOENT)".to_string(),
        -11 => "try again (EAGAIN): held by another host".to_string(),
        -16 => "busy (EBUSY)".to_string(),
        -17 => "exists (EEXIST)".to_string(),
        -111 => "connection refused: is the sanlock daemon running?".to_string(),
        -201 => "SANLK_ERROR".into(),
        -202 => "i/o timeout (SANLK_AIO_TIMEOUT)".into(),
        -223 => "no lease on disk (SANLK_LEADER_MAGIC)".into(),
        -243 => "the owner's host id is alive (SANLK_ACQUIRE_IDLIVE)".into(),
        -244 => "owned by another host (SANLK_ACQUIRE_OWNED)".into(),
        -245 => "held by another process (SANLK_ACQUIRE_OTHER)".into(),
        -247 => "owned, retry (SANLK_ACQUIRE_OWNED_RETRY)".into(),
        rc if rc < 0 && rc > -200 => std::io::Error::from_raw_os_error(-rc).to_string(),
        rc => format!("rc {rc}"),
    };
    StorageError::Sanlock(format!("{op}: {what} ({rc})"))
}

/// Return codes of a failed acquire.
pub fn is_held_elsewhere(rc: i32) -> bool {
    matches!(rc, -11 | -243 | -244 | -245 | -247)
}

/// Formats a lockspace area (delta leases) on `path` at offset 0.
pub fn write_lockspace(name: &str, path: &Path, io_timeout: u32) -> Result<()> {
    let mut ls = lockspace(name, 0, path, ALIGN1M_SECTOR512)?;
    // SAFETY: `ls` is a valid, initialised struct sanlk_lockspace for the duration of the
    // call; the library only reads it and writes into it.
    let rc = unsafe { sanlock_write_lockspace(&mut ls, 0, 0, io_timeout) };
    if rc < 0 {
        return Err(err("write_lockspace", rc));
    }
    Ok(())
}

/// Formats a resource lease `name` of lockspace `ls` on `path` at `offset`.
pub fn write_resource(ls: &str, name: &str, path: &Path, offset: u64) -> Result<()> {
    let mut r = resource(ls, name, path, offset, ALIGN1M_SECTOR512)?;
    // SAFETY: `r` is a valid sanlk_resource with num_disks = 1 and one disk entry.
    let rc = unsafe { sanlock_write_resource(&mut *r, 0, 0, 0) };
    if rc < 0 {
        return Err(err("write_resource", rc));
    }
    Ok(())
}

/// Joins lockspace `name` with `host_id` (blocks about 2·io_timeout+1 s, or ~20-30 s
/// with io_timeout 10). Joining a lockspace already joined is not an error.
pub fn add_lockspace(name: &str, host_id: u64, path: &Path, io_timeout: u32) -> Result<()> {
    let mut ls = lockspace(name, host_id, path, 0)?;
    // SAFETY: valid struct for the duration of the call.
    let rc = unsafe { sanlock_add_lockspace_timeout(&mut ls, 0, io_timeout) };
    match rc {
        0 | -17 => Ok(()),
        // Another thread is joining it: wait until it is held.
        -115 => {
            let deadline = std::time::Instant::now()
                + std::time::Duration::from_secs(u64::from(io_timeout) * 4 + 60);
            while std::time::Instant::now() < deadline {
                if inq_lockspace(name, host_id, path)? {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(StorageError::AcquireHostId(format!(
                "joining lockspace {name} timed out"
            )))
        }
        rc => Err(StorageError::AcquireHostId(
            err("add_lockspace", rc).to_string(),
        )),
    }
}

/// Whether this host holds `host_id` in lockspace `name`.
pub fn inq_lockspace(name: &str, host_id: u64, path: &Path) -> Result<bool> {
    let mut ls = lockspace(name, host_id, path, 0)?;
    // SAFETY: valid struct for the duration of the call.
    let rc = unsafe { sanlock_inq_lockspace(&mut ls, 0) };
    match rc {
        0 => Ok(true),
        // Not joined, or still being joined.
        -2 | -115 => Ok(false),
        rc => Err(err("inq_lockspace", rc)),
    }
}

/// Leaves a lockspace (kills nothing: fails with EBUSY while leases are held in it).
pub fn rem_lockspace(name: &str, host_id: u64, path: &Path) -> Result<()> {
    let mut ls = lockspace(name, host_id, path, 0)?;
    // SAFETY: valid struct for the duration of the call. SANLK_REM_UNUSED = 0x2.
    let rc = unsafe { sanlock_rem_lockspace(&mut ls, 0x2) };
    if rc < 0 && rc != -2 {
        return Err(err("rem_lockspace", rc));
    }
    Ok(())
}

/// An owner of a resource or a host of a lockspace, as sanlock reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub host_id: u64,
    pub generation: u64,
    pub timestamp: u64,
    /// SANLK_HOST_* state (1 unknown, 2 free, 3 live, 4 fail, 5 dead) for get_hosts.
    pub state: u32,
}

fn take_hosts(hss: *mut SanlkHost, n: c_int) -> Vec<Host> {
    let mut out = Vec::new();
    if hss.is_null() {
        return out;
    }
    for i in 0..n.max(0) as usize {
        // SAFETY: sanlock returned an array of `n` hosts at `hss`.
        let h = unsafe { *hss.add(i) };
        out.push(Host {
            host_id: h.host_id,
            generation: h.generation,
            timestamp: h.timestamp,
            state: h.flags & 0xf,
        });
    }
    // SAFETY: the array was malloc'ed by libsanlock and is freed once here.
    unsafe { libc::free(hss as *mut libc::c_void) };
    out
}

/// Reads a resource lease: its version (lver) and current owners.
pub fn read_resource_owners(
    ls: &str,
    name: &str,
    path: &Path,
    offset: u64,
) -> Result<(u64, Vec<Host>)> {
    let mut r = resource(ls, name, path, offset, ALIGN1M_SECTOR512)?;
    let mut hss: *mut SanlkHost = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: valid resource struct; out-params are local and freed in take_hosts.
    let rc = unsafe { sanlock_read_resource_owners(&mut *r, 0, &mut hss, &mut n) };
    let hosts = take_hosts(hss, n);
    if rc < 0 {
        return Err(err("read_resource_owners", rc));
    }
    Ok((r.lver, hosts))
}

/// Reads a resource's leader record: returns its lver.
pub fn read_resource(ls: &str, name: &str, path: &Path, offset: u64) -> Result<u64> {
    let mut r = resource(ls, name, path, offset, ALIGN1M_SECTOR512)?;
    // SAFETY: valid resource struct.
    let rc = unsafe { sanlock_read_resource(&mut *r, 0) };
    if rc < 0 {
        return Err(err("read_resource", rc));
    }
    Ok(r.lver)
}

/// Hosts of a lockspace as this host's sanlock daemon sees them.
pub fn get_hosts(ls: &str) -> Result<Vec<Host>> {
    let name = CString::new(ls).map_err(|_| StorageError::InvalidParameter("lockspace".into()))?;
    let mut hss: *mut SanlkHost = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: valid C string and out-params; the array is freed in take_hosts.
    let rc = unsafe { sanlock_get_hosts(name.as_ptr(), 0, &mut hss, &mut n, 0) };
    let hosts = take_hosts(hss, n);
    if rc < 0 {
        return Err(err("get_hosts", rc));
    }
    Ok(hosts)
}

/// A registered connection to the daemon. Leases acquired through it are released by
/// the daemon when it closes (drop, or the process dies).
pub struct Registration {
    fd: Mutex<OwnedFd>,
}

impl Registration {
    pub fn register() -> Result<Registration> {
        // SAFETY: no arguments; returns a new socket fd or a negative error.
        let fd = unsafe { sanlock_register() };
        if fd < 0 {
            return Err(err("register", fd));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Registration {
            fd: Mutex::new(owned),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_raw_fd()
    }

    /// Acquires a resource lease. With `lver`, only if the lease's version is that.
    /// Returns the error code on failure as well, for callers that retry.
    pub fn acquire(
        &self,
        ls: &str,
        name: &str,
        path: &Path,
        offset: u64,
        lver: Option<u64>,
    ) -> std::result::Result<(), (i32, StorageError)> {
        let mut r = resource(ls, name, path, offset, 0).map_err(|e| (-22, e))?;
        if let Some(v) = lver {
            r.lver = v;
            r.flags |= SANLK_RES_LVER;
        }
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let mut p: *mut SanlkResource = &mut *r;
        // SAFETY: one valid resource pointer in a one-element array; the registered fd
        // stays open while the mutex is held.
        let rc = unsafe { sanlock_acquire(fd.as_raw_fd(), -1, 0, 1, &mut p, std::ptr::null_mut()) };
        if rc < 0 {
            return Err((
                rc,
                StorageError::AcquireLock(err("acquire", rc).to_string()),
            ));
        }
        Ok(())
    }

    /// Releases a resource lease held through this connection.
    pub fn release(&self, ls: &str, name: &str, path: &Path, offset: u64) -> Result<()> {
        let mut r = resource(ls, name, path, offset, 0)?;
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let mut p: *mut SanlkResource = &mut *r;
        // SAFETY: as in acquire.
        let rc = unsafe { sanlock_release(fd.as_raw_fd(), -1, 0, 1, &mut p) };
        if rc < 0 {
            return Err(err("release", rc));
        }
        Ok(())
    }

    /// Releases everything held through this connection.
    pub fn release_all(&self) -> Result<()> {
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: SANLK_REL_ALL with no resource arguments.
        let rc =
            unsafe { sanlock_release(fd.as_raw_fd(), -1, SANLK_REL_ALL, 0, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(err("release_all", rc));
        }
        Ok(())
    }

    /// The leases held through this connection, in sanlock's state string form
    /// (`lockspace:name:path:offset:lver ...`).
    pub fn inquire(&self) -> Result<String> {
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let mut n: c_int = 0;
        let mut state: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid registered fd and out-params; `state` is malloc'ed by libsanlock.
        let rc = unsafe { sanlock_inquire(fd.as_raw_fd(), -1, 0, &mut n, &mut state) };
        if rc < 0 {
            return Err(err("inquire", rc));
        }
        let s = if state.is_null() {
            String::new()
        } else {
            // SAFETY: NUL-terminated string from libsanlock, freed right after.
            let s = unsafe { CStr::from_ptr(state) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: allocated by libsanlock with malloc.
            unsafe { libc::free(state as *mut libc::c_void) };
            s
        };
        Ok(s)
    }

    /// Makes the daemon run `path args` (instead of killing this process) when a
    /// lockspace holding one of our leases fails.
    pub fn set_killpath(&self, path: &str, args: &str) -> Result<()> {
        let p =
            CString::new(path).map_err(|_| StorageError::InvalidParameter("killpath".into()))?;
        let mut a: Vec<u8> = args.as_bytes().to_vec();
        a.push(0);
        if a.len() > 128 {
            return Err(StorageError::InvalidParameter(
                "killpath args too long".into(),
            ));
        }
        a.resize(128, 0);
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: valid C strings; sanlock copies them (args buffer is SANLK_HELPER_ARGS_LEN).
        let rc = unsafe {
            sanlock_killpath(fd.as_raw_fd(), 0, p.as_ptr(), a.as_mut_ptr() as *mut c_char)
        };
        if rc < 0 {
            return Err(err("killpath", rc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_sanlock_h() {
        assert_eq!(std::mem::size_of::<SanlkDisk>(), 1040);
        assert_eq!(std::mem::size_of::<SanlkLockspace>(), 1104);
        assert_eq!(std::mem::offset_of!(SanlkLockspace, host_id_disk), 64);
        assert_eq!(std::mem::offset_of!(SanlkResource, disks), 128);
        assert_eq!(std::mem::size_of::<SanlkHost>(), 32);
    }

    #[test]
    fn names_are_checked() {
        assert!(lockspace(&"x".repeat(48), 1, Path::new("/a"), 0).is_err());
        assert!(resource("ls", "a\0b", Path::new("/a"), 0, 0).is_err());
        assert!(lockspace("ls", 1, Path::new("/a"), 0).is_ok());
    }
}
