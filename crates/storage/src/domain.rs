//! A file storage domain on oVirt's layout (format V5):
//!
//! ```text
//! <mount>/<sdUUID>/dom_md/{metadata,ids,leases,inbox,outbox,xleases}
//! <mount>/<sdUUID>/images/<imgUUID>/<volUUID>{,.meta,.lease}
//! <mount>/<sdUUID>/master/{tasks,vms}          (master domain of a pool)
//! ```
//!
//! Creation builds the domain under a temporary name and renames it into place, so a
//! crash leaves either no domain or a whole one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{check_uuid, io_err, Result, StorageError};
use crate::sanlock;
use crate::sdmeta::DomainMetadata;

pub const ALIGNMENT: u64 = 1024 * 1024;
pub const BLOCK_SIZE: u64 = 512;
/// Offset of the SPM lease ("SDM") in dom_md/leases: slot 1.
pub const SDM_OFFSET: u64 = ALIGNMENT;
pub const SDM_NAME: &str = "SDM";
const MAILBOX_SIZE: u64 = 16 * 1024 * 1024;

/// Storage domain types (VDSM's numeric codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Nfs,
    LocalFs,
    PosixFs,
    GlusterFs,
}

impl DomainType {
    pub fn from_code(c: i64) -> Option<DomainType> {
        match c {
            1 => Some(DomainType::Nfs),
            4 => Some(DomainType::LocalFs),
            6 => Some(DomainType::PosixFs),
            7 => Some(DomainType::GlusterFs),
            _ => None,
        }
    }
    pub fn code(self) -> i64 {
        match self {
            DomainType::Nfs => 1,
            DomainType::LocalFs => 4,
            DomainType::PosixFs => 6,
            DomainType::GlusterFs => 7,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DomainType::Nfs => "NFS",
            DomainType::LocalFs => "LOCALFS",
            DomainType::PosixFs => "POSIXFS",
            DomainType::GlusterFs => "GLUSTERFS",
        }
    }
    pub fn parse(s: &str) -> Option<DomainType> {
        match s {
            "NFS" => Some(DomainType::Nfs),
            "LOCALFS" => Some(DomainType::LocalFs),
            "POSIXFS" => Some(DomainType::PosixFs),
            "GLUSTERFS" => Some(DomainType::GlusterFs),
            _ => None,
        }
    }
    /// Shared domains use sanlock; a local domain (one host) uses local locks, as VDSM.
    pub fn uses_sanlock(self) -> bool {
        self != DomainType::LocalFs
    }
}

/// Domain classes.
pub fn class_name(code: i64) -> Option<&'static str> {
    match code {
        1 => Some("Data"),
        2 => Some("Iso"),
        3 => Some("Backup"),
        _ => None,
    }
}

/// What StorageDomain.create takes.
#[derive(Debug, Clone)]
pub struct CreateArgs {
    pub sd_uuid: String,
    pub dtype: DomainType,
    pub remote_path: String,
    pub name: String,
    pub class: String,
    /// io_timeout written into the lockspace (sanlock's default 10; tests use 1).
    pub io_timeout: u32,
}

/// An existing file domain.
#[derive(Debug, Clone)]
pub struct FileDomain {
    pub uuid: String,
    pub root: PathBuf,
}

fn create_file(path: &Path, size: u64) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(size).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir(p).map_err(io_err(p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(io_err(p))
}

impl FileDomain {
    /// Creates a domain in the mounted directory `mount`.
    pub fn create(mount: &Path, a: &CreateArgs) -> Result<FileDomain> {
        check_uuid("storagedomainID", &a.sd_uuid)?;
        if a.name.chars().count() > 50 || a.name.contains(['\n', '\r']) {
            return Err(StorageError::InvalidParameter(
                "domain name: at most 50 characters, one line".into(),
            ));
        }
        let meta_mount = fs::metadata(mount).map_err(|_| {
            StorageError::DomainAccess(format!("{} is not accessible", mount.display()))
        })?;
        if !meta_mount.is_dir() {
            return Err(StorageError::DomainAccess(format!(
                "{} is not a directory",
                mount.display()
            )));
        }
        let root = mount.join(&a.sd_uuid);
        if root.exists() {
            return Err(StorageError::DomainAlreadyExists(a.sd_uuid.clone()));
        }
        // The directory may hold only other domains (and leftovers of our own crashed
        // creations, removed here).
        for e in fs::read_dir(mount).map_err(io_err(mount))? {
            let e = e.map_err(io_err(mount))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".halyard-creating-") {
                let _ = fs::remove_dir_all(e.path());
                continue;
            }
            let is_domain = check_uuid("", &n).is_ok() && e.path().join("dom_md").is_dir();
            if !(is_domain || n == "lost+found" || n.starts_with('.')) {
                return Err(StorageError::DomainNotEmpty(format!(
                    "{} holds {n:?}, which is not a storage domain",
                    mount.display()
                )));
            }
        }
        // Writable?
        let probe = mount.join(format!(".halyard-probe-{}", std::process::id()));
        fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"x"))
            .map_err(|e| {
                StorageError::DomainAccess(format!("{} is not writable: {e}", mount.display()))
            })?;
        let _ = fs::remove_file(&probe);

        let tmp = mount.join(format!(".halyard-creating-{}", a.sd_uuid));
        let r = Self::build(&tmp, a);
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &root).map_err(io_err(&root))?;
        halyard_common::fsutil::fsync_dir(mount).map_err(io_err(mount))?;
        Ok(FileDomain {
            uuid: a.sd_uuid.clone(),
            root,
        })
    }

    fn build(tmp: &Path, a: &CreateArgs) -> Result<()> {
        mkdir(tmp)?;
        let md = tmp.join("dom_md");
        mkdir(&md)?;
        mkdir(&tmp.join("images"))?;
        for f in ["ids", "leases"] {
            create_file(&md.join(f), 0)?;
        }
        for f in ["inbox", "outbox"] {
            create_file(&md.join(f), MAILBOX_SIZE)?;
        }
        let mut m = DomainMetadata::default();
        m.set("ALIGNMENT", ALIGNMENT.to_string());
        m.set("BLOCK_SIZE", BLOCK_SIZE.to_string());
        m.set("CLASS", a.class.clone());
        m.set("DESCRIPTION", a.name.clone());
        m.set("IOOPTIMEOUTSEC", "10");
        m.set("LEASERETRIES", "3");
        m.set("LEASETIMESEC", "60");
        m.set("LOCKPOLICY", "");
        m.set("LOCKRENEWALINTERVALSEC", "5");
        m.set("POOL_UUID", "");
        m.set("REMOTE_PATH", a.remote_path.clone());
        m.set("ROLE", "Regular");
        m.set("SDUUID", a.sd_uuid.clone());
        m.set("TYPE", a.dtype.name());
        m.set("VERSION", "5");
        if a.dtype.uses_sanlock() {
            let x = md.join("xleases");
            create_file(&x, 0)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            crate::xlease::format_volume(&x, &a.sd_uuid, now)?;
            sanlock::write_lockspace(&a.sd_uuid, &md.join("ids"), a.io_timeout)
                .map_err(|e| StorageError::ClusterLockInit(e.to_string()))?;
            sanlock::write_resource(&a.sd_uuid, SDM_NAME, &md.join("leases"), SDM_OFFSET)
                .map_err(|e| StorageError::ClusterLockInit(e.to_string()))?;
        }
        m.write(&md.join("metadata"))?;
        halyard_common::fsutil::fsync_dir(tmp).map_err(io_err(tmp))?;
        Ok(())
    }

    /// Opens a domain directory, checking its metadata seal.
    pub fn open(root: &Path) -> Result<FileDomain> {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_uuid("storage domain directory", &name)?;
        let d = FileDomain {
            uuid: name.clone(),
            root: root.to_path_buf(),
        };
        let m = d.metadata()?;
        if m.get("SDUUID") != Some(name.as_str()) {
            return Err(StorageError::MetadataInvalid(format!(
                "SDUUID {:?} does not match the directory {name}",
                m.get("SDUUID")
            )));
        }
        Ok(d)
    }

    pub fn dom_md(&self) -> PathBuf {
        self.root.join("dom_md")
    }
    pub fn metadata_path(&self) -> PathBuf {
        self.dom_md().join("metadata")
    }
    pub fn ids_path(&self) -> PathBuf {
        self.dom_md().join("ids")
    }
    pub fn leases_path(&self) -> PathBuf {
        self.dom_md().join("leases")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn image_dir(&self, img: &str) -> PathBuf {
        self.images_dir().join(img)
    }
    pub fn master_dir(&self) -> PathBuf {
        self.root.join("master")
    }

    pub fn metadata(&self) -> Result<DomainMetadata> {
        DomainMetadata::read(&self.metadata_path())
    }

    /// Read-modify-write of the metadata (crash-safe).
    pub fn update_metadata(&self, f: impl FnOnce(&mut DomainMetadata) -> Result<()>) -> Result<()> {
        let mut m = self.metadata()?;
        f(&mut m)?;
        m.write(&self.metadata_path())
    }

    pub fn dtype(&self) -> Result<DomainType> {
        let m = self.metadata()?;
        let t = m.get("TYPE").unwrap_or("");
        DomainType::parse(t)
            .ok_or_else(|| StorageError::MetadataInvalid(format!("unknown domain TYPE {t:?}")))
    }

    pub fn uses_sanlock(&self) -> bool {
        self.dtype().map(|t| t.uses_sanlock()).unwrap_or(false)
    }

    /// Image ids (directories named by UUID; ignores `_remove_me_*`).
    pub fn images(&self) -> Result<Vec<String>> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if check_uuid("", &n).is_ok() && e.path().is_dir() {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Volume ids of an image (those with a `.meta`).
    pub fn volumes(&self, img: &str) -> Result<Vec<String>> {
        check_uuid("imageID", img)?;
        let dir = self.image_dir(img);
        if !dir.is_dir() {
            return Err(StorageError::ImageDoesNotExist(img.to_string()));
        }
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n.strip_suffix(".meta") {
                if check_uuid("", v).is_ok() {
                    out.push(v.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// (total, free) bytes of the file system holding the domain.
    pub fn space(&self) -> Result<(u64, u64)> {
        statvfs(&self.root)
    }
}

/// Total and available bytes of the file system holding `p`.
pub fn statvfs(p: &Path) -> Result<(u64, u64)> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| StorageError::InvalidParameter("path with NUL".into()))?;
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(StorageError::Io {
            path: p.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    let f = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * f, st.f_bavail as u64 * f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_domain_layout_and_refusals() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = CreateArgs {
            sd_uuid: "275766cb-c7d8-43d6-a663-4e52160de620".into(),
            dtype: DomainType::LocalFs,
            remote_path: d.path().to_string_lossy().into_owned(),
            name: "local".into(),
            class: "Data".into(),
            io_timeout: 10,
        };
        let dom = FileDomain::create(d.path(), &a).expect("creates");
        let m = dom.metadata().expect("metadata");
        assert_eq!(m.get("TYPE"), Some("LOCALFS"));
        assert_eq!(m.get("VERSION"), Some("5"));
        assert_eq!(
            fs::metadata(dom.dom_md().join("inbox"))
                .expect("inbox")
                .len(),
            16 << 20
        );
        assert!(!dom.dom_md().join("xleases").exists());
        assert!(FileDomain::open(&dom.root).is_ok());
        // Again: exists.
        assert_eq!(
            FileDomain::create(d.path(), &a)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(365)
        );
        // A directory with other things in it is refused, nothing written.
        fs::write(d.path().join("notes.txt"), b"x").expect("write");
        let mut b = a.clone();
        b.sd_uuid = "375766cb-c7d8-43d6-a663-4e52160de620".into();
        assert_eq!(
            FileDomain::create(d.path(), &b)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(361)
        );
        assert!(!d.path().join(&b.sd_uuid).exists());
        // Bad ids.
        let mut c = a.clone();
        c.sd_uuid = "../x".into();
        assert_eq!(
            FileDomain::create(d.path(), &c)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(1000)
        );
        // A broken seal is detected on open.
        let p = dom.metadata_path();
        let text = fs::read_to_string(&p)
            .expect("read")
            .replace("ROLE=Regular", "ROLE=Master");
        fs::write(&p, text).expect("write");
        assert_eq!(
            FileDomain::open(&dom.root)
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(752)
        );
    }
}
