//! Storage server connections (StoragePool.connectStorageServer): a local directory is
//! linked, anything else is mounted (`mount -t <vfs_type> -o <options>`), under
//! `<run_dir>/mnt/<connection with '_' doubled and '/' as '_'>` as VDSM names them.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::domain::{DomainType, FileDomain};
use crate::error::{check_uuid, io_err, Result, StorageError};

/// One entry of `connectionParams`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct ConnParams {
    pub id: String,
    pub connection: String,
    #[serde(default)]
    pub vfs_type: Option<String>,
    #[serde(default)]
    pub mnt_options: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// VDSM's path transformation of a connection string.
pub fn transform(connection: &str) -> String {
    connection.replace('_', "__").replace('/', "_")
}

pub fn mnt_root(run_dir: &Path) -> PathBuf {
    run_dir.join("mnt")
}

pub fn mount_point(run_dir: &Path, connection: &str) -> PathBuf {
    mnt_root(run_dir).join(transform(connection))
}

fn check_connection(c: &str) -> Result<()> {
    if c.is_empty() || c.len() > 1024 || c.chars().any(|ch| ch.is_control()) {
        return Err(StorageError::InvalidParameter(format!("connection {c:?}")));
    }
    // It becomes an argument of mount: never an option.
    if c.starts_with('-') {
        return Err(StorageError::InvalidParameter(format!(
            "connection {c:?} starts with '-'"
        )));
    }
    let path = c.rsplit_once(':').map(|(_, p)| p).unwrap_or(c);
    if Path::new(path)
        .components()
        .any(|x| x == Component::ParentDir)
    {
        return Err(StorageError::InvalidParameter(format!(
            "connection {c:?} contains '..'"
        )));
    }
    Ok(())
}

/// Directories of the host itself that are never a local storage domain (a domain
/// there would be written over the system).
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "root", "run", "sbin",
    "sys", "usr",
];

/// A local directory fit to hold a domain: not `/`, not a system directory (also after
/// resolving links).
fn check_local_dir(target: &Path) -> Result<()> {
    let refused = |p: &Path| -> bool {
        let mut comps = p.components().filter(|c| *c != Component::RootDir);
        match comps.next() {
            None => true,
            Some(Component::Normal(first)) => {
                let first = first.to_string_lossy();
                SYSTEM_DIRS.contains(&first.as_ref()) || (first == "var" && comps.next().is_none())
            }
            Some(_) => true,
        }
    };
    let real = target.canonicalize().map_err(io_err(target))?;
    if refused(target) || refused(&real) {
        return Err(StorageError::Connection(format!(
            "{} is / or a system directory; a local storage domain needs a directory of its own",
            target.display()
        )));
    }
    Ok(())
}

fn check_option(what: &str, s: &str) -> Result<()> {
    if s.starts_with('-') {
        return Err(StorageError::InvalidParameter(format!(
            "{what} {s:?} starts with '-'"
        )));
    }
    if s.len() > 512
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=,._-:/".contains(c))
    {
        return Err(StorageError::InvalidParameter(format!("{what} {s:?}")));
    }
    Ok(())
}

/// Whether `p` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_ref()))
}

/// Connects one storage server; returns the directory where its domains appear.
pub fn connect(run_dir: &Path, dtype: DomainType, p: &ConnParams) -> Result<PathBuf> {
    check_connection(&p.connection)?;
    let mp = mount_point(run_dir, &p.connection);
    fs::create_dir_all(mnt_root(run_dir)).map_err(io_err(mnt_root(run_dir)))?;
    match dtype {
        DomainType::LocalFs => {
            let target = Path::new(&p.connection);
            if !target.is_absolute() || !target.is_dir() {
                return Err(StorageError::Connection(format!(
                    "{} is not an existing absolute directory",
                    p.connection
                )));
            }
            check_local_dir(target)?;
            match fs::read_link(&mp) {
                Ok(t) if t == target => {}
                Ok(_) | Err(_) => {
                    let _ = fs::remove_file(&mp);
                    std::os::unix::fs::symlink(target, &mp).map_err(io_err(&mp))?;
                }
            }
        }
        _ => {
            let vfs = match (&p.vfs_type, dtype) {
                (Some(v), _) if !v.is_empty() => v.clone(),
                (_, DomainType::Nfs) => "nfs".into(),
                (_, DomainType::GlusterFs) => "glusterfs".into(),
                _ => {
                    return Err(StorageError::Connection(
                        "a POSIX connection needs vfs_type".into(),
                    ))
                }
            };
            check_option("vfs_type", &vfs)?;
            if let Some(o) = p.mnt_options.as_deref() {
                check_option("mnt_options", o)?;
            }
            if is_mounted(&mp) {
                return Ok(mp);
            }
            fs::create_dir_all(&mp).map_err(io_err(&mp))?;
            let mut cmd = Command::new("mount");
            cmd.arg("-t").arg(&vfs);
            if let Some(o) = p.mnt_options.as_deref().filter(|o| !o.is_empty()) {
                check_option("mnt_options", o)?;
                cmd.arg("-o").arg(o);
            }
            cmd.arg("--").arg(&p.connection).arg(&mp);
            let out = cmd
                .output()
                .map_err(|e| StorageError::Mount(format!("cannot run mount: {e}")))?;
            if !out.status.success() {
                let _ = fs::remove_dir(&mp);
                return Err(StorageError::Mount(format!(
                    "mount -t {vfs} {} {}: {}",
                    p.connection,
                    mp.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
    }
    Ok(mp)
}

/// Disconnects one storage server.
pub fn disconnect(run_dir: &Path, dtype: DomainType, p: &ConnParams) -> Result<()> {
    check_connection(&p.connection)?;
    let mp = mount_point(run_dir, &p.connection);
    match dtype {
        DomainType::LocalFs => {
            let _ = fs::remove_file(&mp);
        }
        _ => {
            if is_mounted(&mp) {
                let out = Command::new("umount")
                    .arg(&mp)
                    .output()
                    .map_err(|e| StorageError::Mount(format!("cannot run umount: {e}")))?;
                if !out.status.success() {
                    return Err(StorageError::Mount(format!(
                        "umount {}: {}",
                        mp.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            let _ = fs::remove_dir(&mp);
        }
    }
    Ok(())
}

/// Finds a domain in any connected mount.
pub fn find_domain(run_dir: &Path, sd_uuid: &str) -> Result<FileDomain> {
    check_uuid("storagedomainID", sd_uuid)?;
    let root = mnt_root(run_dir);
    if let Ok(rd) = fs::read_dir(&root) {
        for e in rd.flatten() {
            let cand = e.path().join(sd_uuid);
            if cand.join("dom_md").is_dir() {
                return FileDomain::open(&cand);
            }
        }
    }
    Err(StorageError::DomainDoesNotExist(sd_uuid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_checks() {
        assert_eq!(transform("srv:/a/b_c"), "srv:_a_b__c");
        assert!(check_connection("/data/../etc").is_err());
        assert!(check_connection("srv:/x/../y").is_err());
        assert!(check_connection("a\nb").is_err());
        assert!(check_connection("/data/x").is_ok());
        assert!(check_option("o", "rw,bind").is_ok());
        assert!(check_option("o", "rw;rm -rf /").is_err());
        // Nothing that mount would take as an option.
        assert!(check_connection("-oremount,rw").is_err());
        assert!(check_connection("--bind").is_err());
        assert!(check_option("vfs_type", "-t").is_err());
    }

    #[test]
    fn local_connections_to_the_system_are_refused() {
        let run = tempfile::tempdir().expect("tmp");
        let link = run.path().join("root-link");
        std::os::unix::fs::symlink("/", &link).expect("link");
        for c in [
            "/".to_string(),
            "/etc".into(),
            "/usr/lib".into(),
            "/var".into(),
            link.to_string_lossy().into_owned(),
        ] {
            let p = ConnParams {
                id: "c1".into(),
                connection: c.clone(),
                vfs_type: None,
                mnt_options: None,
                extra: Default::default(),
            };
            let e = connect(run.path(), DomainType::LocalFs, &p).expect_err(&c);
            assert!(e.to_string().contains("system directory"), "{c}: {e}");
        }
        let p = ConnParams {
            id: "c1".into(),
            connection: "-obind".into(),
            vfs_type: Some("none".into()),
            mnt_options: None,
            extra: Default::default(),
        };
        assert!(connect(run.path(), DomainType::PosixFs, &p).is_err());
    }

    #[test]
    fn local_connection() {
        let run = tempfile::tempdir().expect("tmp");
        let data = tempfile::tempdir().expect("tmp");
        let p = ConnParams {
            id: "c1".into(),
            connection: data.path().to_string_lossy().into_owned(),
            vfs_type: None,
            mnt_options: None,
            extra: Default::default(),
        };
        let mp = connect(run.path(), DomainType::LocalFs, &p).expect("connects");
        assert_eq!(fs::read_link(&mp).expect("link"), data.path());
        connect(run.path(), DomainType::LocalFs, &p).expect("idempotent");
        disconnect(run.path(), DomainType::LocalFs, &p).expect("disconnects");
        assert!(!mp.exists());
    }
}
