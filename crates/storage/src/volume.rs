//! Volumes and images of a file domain. Every data operation goes through `qemu-img`.
//!
//! Crash safety of creation: the `.meta` is written first with `LEGALITY=ILLEGAL`, then
//! the data file and the lease are made, then the parent (same image) becomes INTERNAL,
//! and last the `.meta` is rewritten LEGAL (each metadata write is temp + fsync +
//! rename). A crash at any point leaves an ILLEGAL volume, which the next SPM removes
//! with [`collect_garbage`] (restoring the parent to LEAF).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::domain::FileDomain;
use crate::error::{check_uuid, io_err, Result, StorageError, BLANK_UUID};
use crate::sanlock;
use crate::volmeta::{Format, Legality, Prealloc, VolType, VolumeMetadata};

/// Largest capacity accepted (1 PiB).
pub const MAX_CAPACITY: u64 = 1 << 50;
/// Longest chain accepted.
pub const MAX_CHAIN: usize = 512;

/// Runs qemu-img; the error carries its stderr.
pub fn qemu_img(args: &[&str], cwd: Option<&Path>) -> Result<String> {
    QemuImg::spawn(args, cwd)?.wait()
}

/// A running qemu-img.
pub struct QemuImg {
    child: std::process::Child,
    what: String,
}

impl QemuImg {
    /// Starts qemu-img (it dies with the agent: see below).
    pub fn spawn(args: &[&str], cwd: Option<&Path>) -> Result<QemuImg> {
        // qemu-img must not outlive the agent: a new SPM may already be rolling back
        // what this one was doing. `setpriv --pdeathsig` sets that up without a
        // pre-exec hook, so the spawn stays a cheap posix_spawn (a fork of the agent
        // costs milliseconds); without setpriv, the hook it is.
        static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let setpriv = *SETPRIV.get_or_init(|| Path::new("/usr/bin/setpriv").exists());
        let mut c = if setpriv {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--", "qemu-img"]);
            c
        } else {
            let mut c = Command::new("qemu-img");
            // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory.
            unsafe {
                use std::os::unix::process::CommandExt;
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            c
        };
        c.args(args);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c
            .spawn()
            .map_err(|e| StorageError::QemuImg(format!("cannot run qemu-img: {e}")))?;
        Ok(QemuImg {
            child,
            what: args.join(" "),
        })
    }

    /// Waits for it; returns its output.
    pub fn wait(self) -> Result<String> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| StorageError::QemuImg(format!("waiting for qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(StorageError::QemuImg(format!(
                "qemu-img {}: {}",
                self.what,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Paths of one volume.
#[derive(Debug, Clone)]
pub struct VolPaths {
    pub data: PathBuf,
    pub meta: PathBuf,
    pub lease: PathBuf,
}

pub fn vol_paths(dom: &FileDomain, img: &str, vol: &str) -> VolPaths {
    let dir = dom.image_dir(img);
    VolPaths {
        data: dir.join(vol),
        meta: dir.join(format!("{vol}.meta")),
        lease: dir.join(format!("{vol}.lease")),
    }
}

/// Reads a volume's metadata.
pub fn read_meta(dom: &FileDomain, img: &str, vol: &str) -> Result<VolumeMetadata> {
    check_uuid("imageID", img)?;
    check_uuid("volumeID", vol)?;
    let p = vol_paths(dom, img, vol);
    if !p.meta.exists() {
        return Err(StorageError::VolumeDoesNotExist(vol.to_string()));
    }
    VolumeMetadata::read(&p.meta)
}

/// The chain from `vol` up to its base: [vol, parent, ..., base]. Refuses loops, illegal
/// ids and chains longer than [`MAX_CHAIN`].
pub fn chain(dom: &FileDomain, img: &str, vol: &str) -> Result<Vec<(String, VolumeMetadata)>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = vol.to_string();
    loop {
        if !seen.insert(cur.clone()) {
            return Err(StorageError::BadChain(format!(
                "volume {cur} appears twice: the chain loops"
            )));
        }
        if out.len() >= MAX_CHAIN {
            return Err(StorageError::BadChain(format!(
                "chain longer than {MAX_CHAIN}"
            )));
        }
        let m = read_meta(dom, img, &cur)?;
        let parent = m.parent.clone();
        out.push((cur, m));
        if parent == BLANK_UUID {
            return Ok(out);
        }
        cur = parent;
    }
}

/// What Volume.create takes.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    pub img: String,
    pub vol: String,
    pub size: u64,
    pub format: Format,
    pub prealloc: Prealloc,
    pub disktype: String,
    pub description: String,
    pub src_img: String,
    pub src_vol: String,
    pub voltype: VolType,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io_err(p))
}

/// Validates everything before anything is written.
fn validate(dom: &FileDomain, a: &CreateVolume) -> Result<Option<VolumeMetadata>> {
    check_uuid("imageID", &a.img)?;
    check_uuid("volumeID", &a.vol)?;
    check_uuid("srcImgUUID", &a.src_img)?;
    check_uuid("srcVolUUID", &a.src_vol)?;
    if a.size == 0 || a.size > MAX_CAPACITY {
        return Err(StorageError::InvalidParameter(format!(
            "size {} is outside 1 B .. {MAX_CAPACITY} B",
            a.size
        )));
    }
    if a.disktype.is_empty()
        || a.disktype.len() > 8
        || !a.disktype.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(StorageError::InvalidParameter(format!(
            "diskType {:?}",
            a.disktype
        )));
    }
    let p = vol_paths(dom, &a.img, &a.vol);
    if p.meta.exists() || p.data.exists() {
        return Err(StorageError::VolumeAlreadyExists(a.vol.clone()));
    }
    if a.src_vol == BLANK_UUID {
        return Ok(None);
    }
    if a.format != Format::Cow {
        return Err(StorageError::IncorrectFormat(
            "a volume with a parent must be COW".into(),
        ));
    }
    let src_img = if a.src_img == BLANK_UUID {
        &a.img
    } else {
        &a.src_img
    };
    let parent_chain = chain(dom, src_img, &a.src_vol)?;
    for (v, m) in &parent_chain {
        if m.legality != Legality::Legal {
            return Err(StorageError::IllegalVolume(v.clone()));
        }
    }
    let parent = parent_chain[0].1.clone();
    if a.size < parent.capacity {
        return Err(StorageError::InvalidParameter(format!(
            "size {} is smaller than the parent's {}",
            a.size, parent.capacity
        )));
    }
    if src_img != &a.img && parent.voltype != VolType::Shared {
        return Err(StorageError::InvalidParameter(
            "a parent in another image must be a template (SHARED) volume".into(),
        ));
    }
    if src_img == &a.img && parent.voltype == VolType::Internal {
        return Err(StorageError::InvalidParameter(format!(
            "parent {} is not the leaf of its image",
            a.src_vol
        )));
    }
    Ok(Some(parent))
}

/// Creates a volume (see the module doc for the order of steps).
pub fn create(dom: &FileDomain, a: &CreateVolume) -> Result<()> {
    let t0 = std::time::Instant::now();
    let parent = validate(dom, a)?;
    let capacity = a.size.div_ceil(4096) * 4096;
    let dir = dom.image_dir(&a.img);
    let new_image = !dir.exists();
    if new_image {
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        set_mode(&dir, 0o755)?;
    }
    let src_img = if a.src_img == BLANK_UUID {
        a.img.clone()
    } else {
        a.src_img.clone()
    };
    // A template's volume is hard-linked into the new image.
    if parent.is_some() && src_img != a.img {
        let from = vol_paths(dom, &src_img, &a.src_vol);
        let to = vol_paths(dom, &a.img, &a.src_vol);
        for (f, t) in [
            (&from.data, &to.data),
            (&from.meta, &to.meta),
            (&from.lease, &to.lease),
        ] {
            if f.exists() && !t.exists() {
                fs::hard_link(f, t).map_err(io_err(t))?;
            }
        }
    }
    let p = vol_paths(dom, &a.img, &a.vol);
    let mut meta = VolumeMetadata {
        capacity,
        ctime: now(),
        description: a.description.clone(),
        disktype: a.disktype.clone(),
        domain: dom.uuid.clone(),
        format: a.format,
        generation: 0,
        image: a.img.clone(),
        legality: Legality::Illegal,
        parent: a.src_vol.clone(),
        sequence: 0,
        prealloc: a.prealloc,
        voltype: a.voltype,
    };
    // qemu-img starts first: it spends its first milliseconds loading, while the
    // ILLEGAL marker and the lease are written. Any order is crash-safe: files without
    // a LEGAL .meta are rolled back by the next SPM; LEGAL is written last, durably.
    let qemu = spawn_data(dom, a, &p, capacity, parent.as_ref())?;
    let marked = meta.write_unsynced(&p.meta);
    let leased = if dom.uses_sanlock() {
        fs::File::create(&p.lease)
            .map_err(io_err(&p.lease))
            .and_then(|_| set_mode(&p.lease, 0o660))
            .and_then(|_| sanlock::write_resource(&dom.uuid, &a.vol, &p.lease, 0))
    } else {
        Ok(())
    };
    let made = qemu.wait();
    let t_data = t0.elapsed();
    made?;
    marked?;
    leased?;
    set_mode(&p.data, 0o660)?;
    fs::File::open(&p.data)
        .and_then(|f| f.sync_data())
        .map_err(io_err(&p.data))?;
    let t_synced = t0.elapsed();
    if let Some(pm) = parent {
        if src_img == a.img && pm.voltype == VolType::Leaf {
            let pp = vol_paths(dom, &a.img, &a.src_vol);
            let mut pm = pm;
            pm.voltype = VolType::Internal;
            pm.write(&pp.meta)?;
        }
    }
    if new_image {
        halyard_common::fsutil::fsync_dir(&dom.images_dir()).map_err(io_err(dom.images_dir()))?;
    }
    // Durable LEGAL last (this also makes the data and lease entries durable: the same
    // directory is synced).
    meta.legality = Legality::Legal;
    meta.write(&p.meta)?;
    tracing::debug!(
        vol = %a.vol,
        data_ms = t_data.as_secs_f64() * 1e3,
        synced_ms = t_synced.as_secs_f64() * 1e3,
        total_ms = t0.elapsed().as_secs_f64() * 1e3,
        "volume created"
    );
    Ok(())
}

/// Starts qemu-img making the data file (the backing file is the bare parent id,
/// relative to the image directory, as VDSM writes it).
fn spawn_data(
    dom: &FileDomain,
    a: &CreateVolume,
    p: &VolPaths,
    capacity: u64,
    parent: Option<&VolumeMetadata>,
) -> Result<QemuImg> {
    let cap = capacity.to_string();
    let data = p.data.to_string_lossy().into_owned();
    match (a.format, parent) {
        (Format::Raw, _) => {
            let prealloc = match a.prealloc {
                Prealloc::Preallocated => "preallocation=falloc",
                Prealloc::Sparse => "preallocation=off",
            };
            QemuImg::spawn(
                &["create", "-q", "-f", "raw", "-o", prealloc, &data, &cap],
                None,
            )
        }
        (Format::Cow, None) => QemuImg::spawn(
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=1.1",
                &data,
                &cap,
            ],
            None,
        ),
        (Format::Cow, Some(pm)) => QemuImg::spawn(
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=1.1",
                "-b",
                &a.src_vol,
                "-F",
                pm.format.qemu(),
                "-u",
                &data,
                &cap,
            ],
            Some(&dom.image_dir(&a.img)),
        ),
    }
}

/// Children of `vol` within its image.
pub fn children(dom: &FileDomain, img: &str, vol: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for v in dom.volumes(img)? {
        if v == vol {
            continue;
        }
        if let Ok(m) = read_meta(dom, img, &v) {
            if m.parent == vol {
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn remove_volume_files(dom: &FileDomain, img: &str, vol: &str) -> Result<()> {
    let p = vol_paths(dom, img, vol);
    // The metadata goes last: while it exists the volume is visible (ILLEGAL).
    for f in [&p.data, &p.lease, &p.meta] {
        match fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(f.as_path())(e)),
        }
    }
    halyard_common::fsutil::fsync_dir(&dom.image_dir(img)).map_err(io_err(dom.image_dir(img)))
}

/// Deletes a leaf volume (or any volume with `force`), making its parent the leaf.
pub fn delete(dom: &FileDomain, img: &str, vol: &str, force: bool) -> Result<()> {
    let m = read_meta(dom, img, vol)?;
    if !force {
        let ch = children(dom, img, vol)?;
        if !ch.is_empty() {
            return Err(StorageError::InvalidParameter(format!(
                "volume {vol} has children {ch:?}"
            )));
        }
        if m.voltype == VolType::Shared && m.image == img {
            // A template's base may be linked into other images: the link count tells.
            let p = vol_paths(dom, img, vol);
            let links = fs::metadata(&p.data).map(|md| {
                use std::os::unix::fs::MetadataExt;
                md.nlink()
            });
            if links.unwrap_or(1) > 1 {
                return Err(StorageError::InvalidParameter(format!(
                    "template volume {vol} is still used by other images"
                )));
            }
        }
    }
    // Mark it ILLEGAL first: a crash in the middle leaves garbage the SPM collects.
    let p = vol_paths(dom, img, vol);
    let mut dead = m.clone();
    dead.legality = Legality::Illegal;
    dead.write(&p.meta)?;
    remove_volume_files(dom, img, vol)?;
    if m.parent != BLANK_UUID {
        if let Ok(mut pm) = read_meta(dom, img, &m.parent) {
            if pm.voltype == VolType::Internal && children(dom, img, &m.parent)?.is_empty() {
                pm.voltype = VolType::Leaf;
                pm.write(&vol_paths(dom, img, &m.parent).meta)?;
            }
        }
    }
    Ok(())
}

/// Deletes a whole image: renamed to `_remove_me_<img>` at once, then purged.
pub fn delete_image(dom: &FileDomain, img: &str) -> Result<PathBuf> {
    check_uuid("imageID", img)?;
    let dir = dom.image_dir(img);
    if !dir.is_dir() {
        return Err(StorageError::ImageDoesNotExist(img.to_string()));
    }
    let gone = dom.images_dir().join(format!("_remove_me_{img}"));
    fs::rename(&dir, &gone).map_err(io_err(&dir))?;
    halyard_common::fsutil::fsync_dir(&dom.images_dir()).map_err(io_err(dom.images_dir()))?;
    Ok(gone)
}

pub fn purge(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Volume.getInfo's dictionary.
pub fn info(dom: &FileDomain, img: &str, vol: &str) -> Result<serde_json::Value> {
    let m = read_meta(dom, img, vol)?;
    let p = vol_paths(dom, img, vol);
    let (apparent, true_size) = match fs::metadata(&p.data) {
        Ok(md) => {
            use std::os::unix::fs::MetadataExt;
            (md.len(), md.blocks() * 512)
        }
        Err(_) => (0, 0),
    };
    let status = match m.legality {
        Legality::Legal if p.data.exists() => "OK",
        Legality::Legal => "INVALID",
        _ => "ILLEGAL",
    };
    Ok(serde_json::json!({
        "uuid": vol,
        "type": m.prealloc.as_str(),
        "format": m.format.as_str(),
        "disktype": m.disktype,
        "voltype": m.voltype.as_str(),
        "capacity": m.capacity.to_string(),
        "parent": m.parent,
        "description": m.description,
        "pool": "",
        "domain": dom.uuid,
        "image": m.image,
        "ctime": m.ctime.to_string(),
        "mtime": "0",
        "legality": m.legality.as_str(),
        "generation": m.generation,
        "sequence": m.sequence,
        "apparentsize": apparent.to_string(),
        "truesize": true_size.to_string(),
        "status": status,
        "children": children(dom, img, vol)?,
    }))
}

/// Grows a volume's virtual size.
pub fn extend(dom: &FileDomain, img: &str, vol: &str, new_size: u64) -> Result<()> {
    let mut m = read_meta(dom, img, vol)?;
    if new_size > MAX_CAPACITY {
        return Err(StorageError::InvalidParameter(format!(
            "size {new_size} is absurd"
        )));
    }
    let cap = new_size.div_ceil(4096) * 4096;
    if cap <= m.capacity {
        return Ok(());
    }
    let p = vol_paths(dom, img, vol);
    qemu_img(
        &[
            "resize",
            "-q",
            "-f",
            m.format.qemu(),
            &p.data.to_string_lossy(),
            &cap.to_string(),
        ],
        None,
    )?;
    m.capacity = cap;
    m.generation = (m.generation + 1) % 1000;
    m.write(&p.meta)
}

pub fn set_legality(dom: &FileDomain, img: &str, vol: &str, legality: Legality) -> Result<()> {
    let mut m = read_meta(dom, img, vol)?;
    m.legality = legality;
    m.write(&vol_paths(dom, img, vol).meta)
}

/// Path of a volume after checking its whole chain is legal (Image.prepare).
pub fn prepare(dom: &FileDomain, img: &str, vol: &str, allow_illegal: bool) -> Result<PathBuf> {
    let c = chain(dom, img, vol)?;
    for (v, m) in &c {
        if m.legality != Legality::Legal && !allow_illegal {
            return Err(StorageError::IllegalVolume(v.clone()));
        }
        if !vol_paths(dom, img, v).data.exists() {
            return Err(StorageError::VolumeDoesNotExist(v.clone()));
        }
    }
    Ok(vol_paths(dom, img, vol).data)
}

/// Copies the chain ending at (img, vol) into a new standalone volume (dst_img,
/// dst_vol) of `format` and `voltype` (SHARED makes a template): created ILLEGAL,
/// filled with `qemu-img convert`, then LEGAL.
pub fn copy(dom: &FileDomain, img: &str, vol: &str, dst: &CreateVolume) -> Result<()> {
    let src = prepare(dom, img, vol, false)?;
    let src_meta = read_meta(dom, img, vol)?;
    let mut a = dst.clone();
    a.size = a.size.max(src_meta.capacity);
    a.src_img = BLANK_UUID.into();
    a.src_vol = BLANK_UUID.into();
    validate(dom, &a)?;
    // Create empty, ILLEGAL, then convert into it.
    let dir = dom.image_dir(&a.img);
    if !dir.exists() {
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        set_mode(&dir, 0o755)?;
    }
    let p = vol_paths(dom, &a.img, &a.vol);
    let mut meta = VolumeMetadata {
        capacity: a.size.div_ceil(4096) * 4096,
        ctime: now(),
        description: a.description.clone(),
        disktype: a.disktype.clone(),
        domain: dom.uuid.clone(),
        format: a.format,
        generation: 0,
        image: a.img.clone(),
        legality: Legality::Illegal,
        parent: BLANK_UUID.into(),
        sequence: 0,
        prealloc: a.prealloc,
        voltype: a.voltype,
    };
    meta.write(&p.meta)?;
    let src_fmt = src_meta.format.qemu();
    let mut args = vec!["convert", "-q", "-f", src_fmt, "-O", a.format.qemu()];
    if a.format == Format::Cow {
        args.extend(["-o", "compat=1.1"]);
    }
    let s = src.to_string_lossy().into_owned();
    let d = p.data.to_string_lossy().into_owned();
    args.extend([s.as_str(), d.as_str()]);
    qemu_img(&args, Some(&dom.image_dir(img)))?;
    set_mode(&p.data, 0o660)?;
    if dom.uses_sanlock() {
        fs::File::create(&p.lease).map_err(io_err(&p.lease))?;
        set_mode(&p.lease, 0o660)?;
        sanlock::write_resource(&dom.uuid, &a.vol, &p.lease, 0)?;
    }
    meta.legality = Legality::Legal;
    meta.write(&p.meta)
}

/// What [`collect_garbage`] removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Garbage {
    pub illegal_volumes: Vec<String>,
    pub orphan_files: Vec<String>,
    pub removed_images: Vec<String>,
}

/// Run by a new SPM: rolls back what a crashed SPM left half done. Removes ILLEGAL
/// volumes (restoring their parent to LEAF), files that belong to no volume, temporary
/// files of interrupted metadata writes, template links no volume uses any more, empty
/// images, and images left in `_remove_me_*`.
pub fn collect_garbage(dom: &FileDomain) -> Result<Garbage> {
    let mut g = Garbage::default();
    let images_dir = dom.images_dir();
    for e in fs::read_dir(&images_dir).map_err(io_err(&images_dir))? {
        let e = e.map_err(io_err(&images_dir))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("_remove_me_") {
            purge(&e.path())?;
            g.removed_images.push(n);
        }
    }
    for img in dom.images()? {
        let dir = dom.image_dir(&img);
        // 1. Temporary files and files of no volume.
        let mut metas: HashSet<String> = HashSet::new();
        let mut files = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n.strip_suffix(".meta") {
                metas.insert(v.to_string());
            }
            files.push(n);
        }
        for n in &files {
            let owner = n.strip_suffix(".lease").unwrap_or(n);
            let is_temp = n.starts_with('.') && n.contains(".tmp.");
            let orphan = !n.ends_with(".meta") && !metas.contains(owner);
            if is_temp || orphan {
                let p = dir.join(n);
                let _ = fs::remove_file(&p);
                g.orphan_files.push(format!("{img}/{n}"));
            }
        }
        // 2. ILLEGAL volumes (half created or half deleted) and unreadable metadata.
        let mut metas_now: BTreeMap<String, Option<VolumeMetadata>> = BTreeMap::new();
        for v in dom.volumes(&img)? {
            metas_now.insert(v.clone(), read_meta(dom, &img, &v).ok());
        }
        for (v, m) in &metas_now {
            let illegal = match m {
                None => true,
                Some(m) => m.legality == Legality::Illegal && m.image == img,
            };
            if illegal {
                remove_volume_files(dom, &img, v)?;
                g.illegal_volumes.push(format!("{img}/{v}"));
            }
        }
        // 3. Parents left INTERNAL without children become leaves again; template links
        //    no volume points at are removed.
        let vols = dom.volumes(&img)?;
        let metas: BTreeMap<String, VolumeMetadata> = vols
            .iter()
            .filter_map(|v| read_meta(dom, &img, v).ok().map(|m| (v.clone(), m)))
            .collect();
        for (v, m) in &metas {
            let has_children = metas.values().any(|c| c.parent == *v);
            if m.image != img {
                if !has_children {
                    remove_volume_files(dom, &img, v)?;
                    g.orphan_files.push(format!("{img}/{v} (template link)"));
                }
                continue;
            }
            if m.voltype == VolType::Internal && !has_children {
                let mut m = m.clone();
                m.voltype = VolType::Leaf;
                m.write(&vol_paths(dom, &img, v).meta)?;
            }
        }
        if fs::read_dir(&dir).map_err(io_err(&dir))?.next().is_none() {
            let _ = fs::remove_dir(&dir);
            g.removed_images.push(img.clone());
        }
    }
    Ok(g)
}

/// `qemu-img check` of a volume (qcow2 only; raw has nothing to check).
pub fn check(dom: &FileDomain, img: &str, vol: &str) -> Result<()> {
    let m = read_meta(dom, img, vol)?;
    if m.format == Format::Cow {
        let p = vol_paths(dom, img, vol);
        qemu_img(
            &["check", "-q", "-f", "qcow2", &p.data.to_string_lossy()],
            Some(&dom.image_dir(img)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CreateArgs, DomainType};

    const SD: &str = "275766cb-c7d8-43d6-a663-4e52160de620";
    const IMG: &str = "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab";
    const V1: &str = "11111111-2222-3333-4444-000000000001";
    const V2: &str = "11111111-2222-3333-4444-000000000002";
    const V3: &str = "11111111-2222-3333-4444-000000000003";
    const TIMG: &str = "8d2e5c8a-3f0e-4b8c-9a1b-00000000000f";

    fn dom(d: &Path) -> FileDomain {
        FileDomain::create(
            d,
            &CreateArgs {
                sd_uuid: SD.into(),
                dtype: DomainType::LocalFs,
                remote_path: d.to_string_lossy().into_owned(),
                name: "t".into(),
                class: "Data".into(),
                io_timeout: 10,
            },
        )
        .expect("domain")
    }

    fn args(
        img: &str,
        vol: &str,
        size: u64,
        format: Format,
        src_img: &str,
        src_vol: &str,
    ) -> CreateVolume {
        CreateVolume {
            img: img.into(),
            vol: vol.into(),
            size,
            format,
            prealloc: Prealloc::Sparse,
            disktype: "DATA".into(),
            description: "test".into(),
            src_img: src_img.into(),
            src_vol: src_vol.into(),
            voltype: VolType::Leaf,
        }
    }

    #[test]
    fn snapshot_chain_template_and_gc() {
        let d = tempfile::tempdir().expect("tmp");
        let dom = dom(d.path());
        create(
            &dom,
            &args(IMG, V1, 1 << 20, Format::Raw, BLANK_UUID, BLANK_UUID),
        )
        .expect("base");
        create(&dom, &args(IMG, V2, 1 << 20, Format::Cow, IMG, V1)).expect("snapshot");
        assert_eq!(
            read_meta(&dom, IMG, V1).expect("meta").voltype,
            VolType::Internal
        );
        assert_eq!(chain(&dom, IMG, V2).expect("chain").len(), 2);
        check(&dom, IMG, V2).expect("qemu-img check");
        let info = qemu_img(
            &[
                "info",
                "--output=json",
                &vol_paths(&dom, IMG, V2).data.to_string_lossy(),
            ],
            None,
        )
        .expect("info");
        assert!(
            info.contains(&format!("\"backing-filename\": \"{V1}\"")),
            "{info}"
        );
        // Errors, nothing written.
        assert_eq!(
            create(&dom, &args(IMG, V2, 1 << 20, Format::Cow, IMG, V1)).map_err(|e| e.code()),
            Err(212)
        );
        assert_eq!(
            create(&dom, &args(IMG, V3, 1 << 20, Format::Raw, IMG, V2)).map_err(|e| e.code()),
            Err(202)
        );
        assert_eq!(
            create(&dom, &args(IMG, V3, 0, Format::Raw, BLANK_UUID, BLANK_UUID))
                .map_err(|e| e.code()),
            Err(1000)
        );
        assert_eq!(
            create(
                &dom,
                &args(IMG, V3, u64::MAX, Format::Raw, BLANK_UUID, BLANK_UUID)
            )
            .map_err(|e| e.code()),
            Err(1000)
        );
        assert_eq!(
            create(
                &dom,
                &args("..", V3, 1, Format::Raw, BLANK_UUID, BLANK_UUID)
            )
            .map_err(|e| e.code()),
            Err(1000)
        );
        assert!(!vol_paths(&dom, IMG, V3).meta.exists());

        // Template: a SHARED copy, then a VM image on top of it.
        let mut t = args(TIMG, V3, 1 << 20, Format::Raw, BLANK_UUID, BLANK_UUID);
        t.voltype = VolType::Shared;
        copy(&dom, IMG, V2, &t).expect("template copy");
        let vm_img = "8d2e5c8a-3f0e-4b8c-9a1b-0000000000aa";
        let vm_vol = "11111111-2222-3333-4444-0000000000aa";
        create(&dom, &args(vm_img, vm_vol, 1 << 20, Format::Cow, TIMG, V3)).expect("thin VM disk");
        assert!(
            vol_paths(&dom, vm_img, V3).data.exists(),
            "template linked into the image"
        );
        assert_eq!(
            read_meta(&dom, TIMG, V3).expect("m").voltype,
            VolType::Shared
        );
        assert!(delete(&dom, TIMG, V3, false).is_err(), "template in use");

        // A half-made volume is rolled back by the garbage collector.
        let mut half = read_meta(&dom, IMG, V2).expect("m");
        half.legality = Legality::Illegal;
        half.write(&vol_paths(&dom, IMG, V2).meta).expect("write");
        std::fs::write(dom.image_dir(IMG).join(".x.meta.tmp.123"), b"junk").expect("junk");
        let g = collect_garbage(&dom).expect("gc");
        assert_eq!(g.illegal_volumes, vec![format!("{IMG}/{V2}")]);
        assert_eq!(read_meta(&dom, IMG, V1).expect("m").voltype, VolType::Leaf);
        assert!(!dom.image_dir(IMG).join(".x.meta.tmp.123").exists());
    }

    #[test]
    fn chain_loops_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let dom = dom(d.path());
        create(
            &dom,
            &args(IMG, V1, 1 << 20, Format::Cow, BLANK_UUID, BLANK_UUID),
        )
        .expect("v1");
        create(&dom, &args(IMG, V2, 1 << 20, Format::Cow, IMG, V1)).expect("v2");
        // Make V1's parent V2: a loop.
        let mut m = read_meta(&dom, IMG, V1).expect("m");
        m.parent = V2.into();
        m.write(&vol_paths(&dom, IMG, V1).meta).expect("w");
        let e = chain(&dom, IMG, V2).expect_err("loop");
        assert_eq!(e.code(), 259);
        assert!(prepare(&dom, IMG, V2, false).is_err());
        let e = create(&dom, &args(IMG, V3, 1 << 20, Format::Cow, IMG, V2)).expect_err("loop");
        assert_eq!(e.code(), 259);
        assert!(!vol_paths(&dom, IMG, V3).meta.exists(), "nothing written");
    }
}
