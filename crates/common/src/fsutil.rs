//! Crash-safe file writes: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory. A crash at any point leaves either
//! the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically with the given mode (e.g. 0o600 for keys).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` through a temporary file and a rename, without syncing: a reader
/// never sees a partial file, but after a power loss the file may be missing, empty or
/// old. For states a crash may lose because recovery handles their absence (e.g. the
/// ILLEGAL marker of a volume being created: without it the volume's files are
/// orphans, which the SPM removes).
pub fn write_replace(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// Files and directories the process creates from now on are its owner's only (0600,
/// 0700) unless a mode says otherwise. Both daemons set it first thing.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Makes `dir` (created if missing) and everything below it its owner's only: 0700 for
/// directories, 0600 for files (an installation made before this rule had 0644 files
/// there). Symbolic links are not followed.
pub fn restrict_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    fn walk(d: &Path, depth: u32) -> io::Result<()> {
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        if depth > 8 {
            return Ok(());
        }
        for e in fs::read_dir(d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                walk(&e.path(), depth + 1)?;
            } else if t.is_file() {
                let mode = e.metadata()?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    fs::set_permissions(e.path(), fs::Permissions::from_mode(mode & 0o700))?;
                }
            }
        }
        Ok(())
    }
    walk(dir, 0)
}

/// A test hook for crash-safety tests: when the environment variable
/// `HALYARD_CRASH_POINT` names this point, the process aborts here, as a crash (or a
/// SIGKILL) between two writes would. Without the variable it does nothing.
pub fn crash_point(name: &str) {
    if std::env::var_os("HALYARD_CRASH_POINT").is_some_and(|v| v == name) {
        eprintln!("HALYARD_CRASH_POINT {name}: aborting");
        std::process::abort();
    }
}

/// fsyncs a directory so that a rename or a new entry in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_and_replaces() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("f");
        write_atomic(&p, b"one", 0o600).expect("write");
        write_atomic(&p, b"two", 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(d.path())
            .expect("readdir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }
}
