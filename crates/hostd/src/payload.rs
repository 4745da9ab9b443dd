//! VM payloads (VDSM's vmPayload): files the Manager sends in the domain XML
//! (`<ovirt-vm:payload>` of a disk whose source is `PAYLOAD:`), which the agent writes
//! into an ISO 9660 image (a CD-ROM, e.g. cloud-init's `config-2`) or a FAT floppy
//! (sysprep's answer file), attached for that run and removed with the VM.
//!
//! The files come from the network: their number, size and paths are bounded and
//! checked (relative, plain names, no `..`), they are written into a private directory
//! of the agent's, and the image tools get them as one argument each, never through a
//! shell.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

/// The most files in one payload.
pub const MAX_FILES: usize = 64;
/// The most bytes in one payload, decoded.
pub const MAX_BYTES: usize = 4 << 20;
/// A floppy's capacity (1.44 MB), less room for the FAT.
pub const MAX_FLOPPY_BYTES: usize = 1400 * 1024;
/// The longest file path, and its most components.
pub const MAX_PATH: usize = 255;
pub const MAX_DEPTH: usize = 8;
/// The source placeholder the engine writes for a payload disk.
pub const PLACEHOLDER: &str = "PAYLOAD:";

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload: {0}")]
    Invalid(String),
    #[error("payload {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("payload: {cmd} failed: {detail}")]
    Tool { cmd: String, detail: String },
}

/// A payload as the domain XML names it: the disk's target, its volume label, its
/// files (paths and base64 contents).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayloadRef {
    pub name: String,
    pub vol_id: Option<String>,
    pub files: Vec<(String, String)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PayloadError + '_ {
    move |source| PayloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A relative path of plain names (letters, digits, `._-`), none of them `.` or `..`.
pub fn check_path(p: &str) -> Result<(), PayloadError> {
    let bad = |why: &str| {
        Err(PayloadError::Invalid(format!(
            "file path {:?}: {why}",
            p.chars().take(64).collect::<String>()
        )))
    };
    if p.is_empty() || p.len() > MAX_PATH {
        return bad("empty or too long");
    }
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return bad("too deep");
    }
    for c in &parts {
        if c.is_empty() || *c == "." || *c == ".." {
            return bad("must be relative, without empty, '.' or '..' parts");
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("only letters, digits, '.', '_' and '-' in its names");
        }
    }
    Ok(())
}

/// A volume label: letters, digits, `_` and `-`, at most 32.
pub fn check_label(l: &str) -> Result<(), PayloadError> {
    if l.is_empty()
        || l.len() > 32
        || !l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(PayloadError::Invalid(format!(
            "volume id {:?}: letters, digits, '_' and '-', at most 32",
            l.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// The payload's files decoded and checked.
pub fn decode(r: &PayloadRef) -> Result<Vec<(String, Vec<u8>)>, PayloadError> {
    if r.files.len() > MAX_FILES {
        return Err(PayloadError::Invalid(format!(
            "more than {MAX_FILES} files"
        )));
    }
    if let Some(l) = &r.vol_id {
        check_label(l)?;
    }
    let mut total = 0usize;
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(r.files.len());
    for (path, b64) in &r.files {
        check_path(path)?;
        if out.iter().any(|(p, _)| {
            p == path || path.starts_with(&format!("{p}/")) || p.starts_with(&format!("{path}/"))
        }) {
            return Err(PayloadError::Invalid(format!(
                "file path {path:?} is given twice or is both a file and a directory"
            )));
        }
        if b64.len() / 4 * 3 > MAX_BYTES {
            return Err(PayloadError::Invalid(format!(
                "larger than {MAX_BYTES} bytes"
            )));
        }
        let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let data = base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map_err(|e| PayloadError::Invalid(format!("file {path:?} is not base64: {e}")))?;
        total += data.len();
        if total > MAX_BYTES {
            return Err(PayloadError::Invalid(format!(
                "larger than {MAX_BYTES} bytes"
            )));
        }
        out.push((path.clone(), data));
    }
    Ok(out)
}

/// Where a VM's payload image for disk `name` goes.
pub fn image_path(dir: &Path, vm_id: &str, name: &str) -> PathBuf {
    dir.join(format!("{vm_id}.{name}.img"))
}

fn run(cmd: &mut Command) -> Result<(), PayloadError> {
    let name = format!("{:?}", cmd.get_program());
    let out = cmd.output().map_err(|e| PayloadError::Tool {
        cmd: name.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(PayloadError::Tool {
            cmd: name,
            detail: String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(400)
                .collect(),
        });
    }
    Ok(())
}

/// Builds the image of `r` for VM `vm_id` under `dir` (made 0700): an ISO 9660 with
/// Joliet and Rock Ridge, or a FAT floppy when `floppy`. The image is 0600 (libvirt
/// gives it to QEMU at start) and is renamed into place only once complete.
pub fn build(
    dir: &Path,
    vm_id: &str,
    r: &PayloadRef,
    floppy: bool,
) -> Result<PathBuf, PayloadError> {
    halyard_proto::vdsm::is_uuid(vm_id)
        .then_some(())
        .ok_or_else(|| PayloadError::Invalid(format!("VM id {vm_id:?} is not a UUID")))?;
    check_path(&r.name)?;
    let files = decode(r)?;
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    if floppy && total > MAX_FLOPPY_BYTES {
        return Err(PayloadError::Invalid(format!(
            "{total} bytes do not fit on a floppy"
        )));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io(dir))?;
    // QEMU runs as its own user: it must pass through the directory (not list it) to
    // the image, which stays 0600 and which libvirt gives to that user for the run.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(io(dir))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{vm_id}.{}.", r.name))
        .tempdir_in(dir)
        .map_err(io(dir))?;
    let tree = work.path().join("tree");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tree)
        .map_err(io(&tree))?;
    let mut dirs: Vec<String> = Vec::new();
    for (path, data) in &files {
        let p = tree.join(path);
        if let Some(parent) = p.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io(parent))?;
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(io(&p))?;
        f.write_all(data).map_err(io(&p))?;
    }
    let img = work.path().join("image");
    if floppy {
        let mut mk = Command::new("mkfs.vfat");
        mk.arg("-C");
        if let Some(l) = &r.vol_id {
            mk.args([
                "-n",
                &l.to_ascii_uppercase().chars().take(11).collect::<String>(),
            ]);
        }
        mk.arg(&img).arg("1440");
        run(&mut mk)?;
        for d in &dirs {
            run(Command::new("mmd")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{d}")))?;
        }
        for (path, _) in &files {
            run(Command::new("mcopy")
                .arg("-i")
                .arg(&img)
                .arg(tree.join(path))
                .arg(format!("::/{path}")))?;
        }
    } else {
        let mut mk = Command::new("xorriso");
        mk.args(["-as", "mkisofs", "-quiet", "-J", "-R", "-o"])
            .arg(&img);
        if let Some(l) = &r.vol_id {
            mk.args(["-V", l]);
        }
        mk.arg(&tree);
        run(&mut mk)?;
    }
    fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io(&img))?;
    let dest = image_path(dir, vm_id, &r.name);
    fs::rename(&img, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// Removes the payload images of `vm_id` (after the VM is gone).
pub fn remove_for(dir: &Path, vm_id: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{vm_id}.");
    for e in rd.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(&prefix) {
            if let Err(err) = fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a payload image");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn paths_are_plain_and_relative() {
        for ok in ["openstack/latest/meta_data.json", "Unattend.xml", "a-b_c.d"] {
            check_path(ok).expect("test step");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/./b",
            "a b",
            "a;b",
            "a\nb",
            "é",
            &"a/".repeat(9),
            &"x".repeat(256),
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn decode_checks_everything() {
        let r = |files: Vec<(&str, String)>| PayloadRef {
            name: "hdd".into(),
            vol_id: Some("config-2".into()),
            files: files.into_iter().map(|(p, d)| (p.to_string(), d)).collect(),
        };
        let ok = decode(&r(vec![("a/b", b64(b"hi")), ("c", b64(b""))])).expect("test step");
        assert_eq!(ok[0].1, b"hi");
        assert!(decode(&r(vec![("a", "!!!".into())])).is_err());
        assert!(decode(&r(vec![("a", b64(b"1")), ("a", b64(b"2"))])).is_err());
        assert!(decode(&r(vec![("a", b64(b"1")), ("a/b", b64(b"2"))])).is_err());
        let big = b64(&vec![0u8; MAX_BYTES / 2 + 1]);
        assert!(decode(&r(vec![("a", big.clone()), ("b", big)])).is_err());
        let many: Vec<(String, String)> = (0..=MAX_FILES)
            .map(|i| (format!("f{i}"), b64(b"x")))
            .collect();
        assert!(decode(&PayloadRef {
            files: many,
            ..PayloadRef::default()
        })
        .is_err());
        let mut bad_label = r(vec![]);
        bad_label.vol_id = Some("x y".into());
        assert!(decode(&bad_label).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(
            files in proptest::collection::vec((".{0,40}", ".{0,80}"), 0..8),
            label in proptest::option::of(".{0,40}"),
        ) {
            let r = PayloadRef { name: "hdd".into(), vol_id: label, files };
            if let Ok(out) = decode(&r) {
                for (p, _) in &out {
                    proptest::prop_assert!(check_path(p).is_ok());
                }
            }
        }
    }

    #[test]
    fn builds_an_iso_and_a_floppy() {
        let have = |t: &str| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let dir = tempfile::tempdir().expect("test step");
        let id = "11111111-2222-3333-4444-555555555555";
        let r = PayloadRef {
            name: "hdd".into(),
            vol_id: Some("config-2".into()),
            files: vec![
                ("openstack/latest/meta_data.json".into(), b64(b"{}")),
                ("openstack/latest/user_data".into(), b64(b"#cloud-config\n")),
            ],
        };
        if have("xorriso") {
            let iso = build(dir.path(), id, &r, false).expect("test step");
            let data = fs::read(&iso).expect("test step");
            // The primary volume descriptor at sector 16: CD001 and the label.
            assert_eq!(&data[32769..32774], b"CD001");
            assert_eq!(&data[32808..32816], b"config-2");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&iso).expect("test step").permissions().mode() & 0o777,
                0o600
            );
        }
        if have("mkfs.vfat") && have("mcopy") {
            let f = PayloadRef {
                name: "fda".into(),
                vol_id: None,
                files: vec![("Unattend.xml".into(), b64(b"<unattend/>"))],
            };
            let img = build(dir.path(), id, &f, true).expect("test step");
            assert_eq!(fs::metadata(&img).expect("test step").len(), 1440 * 1024);
            let out = Command::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg("::/Unattend.xml")
                .output()
                .expect("test step");
            assert_eq!(out.stdout, b"<unattend/>");
        }
        remove_for(dir.path(), id);
        assert_eq!(
            fs::read_dir(dir.path()).expect("test step").count(),
            0,
            "images and work directories are gone"
        );
    }
}
