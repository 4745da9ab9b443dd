//! What a VM definition may ask of the host. The domain XML comes from the network;
//! libvirt would do as it says, as root: boot `/etc/shadow` as a kernel, attach
//! `/dev/sda`, share `/` into the guest, write a console log anywhere, pass arguments
//! to QEMU. Before a domain is started the agent walks the XML it is about to give
//! libvirt and refuses, naming the element, everything outside this policy:
//!
//! - elements: an allow-list of libvirt's domain elements and devices; nothing in a
//!   driver namespace (`qemu:commandline`, `qemu:capabilities`, ...); no `<emulator>`,
//!   `<bootloader>`, domain `<seclabel>`, `<shmem>`, `<pstore>`;
//! - `<lease>`: only the VM's own lease where the agent resolved it (its key, the
//!   domain's lockspace, the slot the domain's xleases index gives), nothing else;
//! - disks: a storage-domain volume the agent prepared itself, or a read-only raw file
//!   (an ISO, a floppy image) under `vm.image_dirs`; an empty CD-ROM; host block
//!   devices only with `vm.allow_host_block_devices`; no network, volume or directory
//!   disks, no `<backingStore>`/`<mirror>` and nothing inside `<source>`;
//! - kernel, initrd, DTB, firmware (`<loader>`, NVRAM template), ACPI tables: files
//!   under `vm.image_dirs` or `vm.firmware_dirs`; NVRAM files under libvirt's NVRAM
//!   directory;
//! - `<filesystem>` only with `vm.allow_filesystem_passthrough`; `<hostdev>`, hostdev
//!   interfaces and TPM passthrough only with `vm.allow_host_devices`;
//! - NICs on a bridge or a libvirt network, without scripts, ROM files or backend
//!   device paths;
//! - serial, console, channel and parallel devices: pty, null, vc, spicevmc,
//!   spiceport, qemu-vdagent; unix sockets only under `vm.socket_dirs`; files and
//!   `<log file>` only under `vm.console_log_dir`;
//! - no graphics on a socket path, no audio to a file or a sound server, random
//!   numbers only from `/dev/urandom`, `/dev/random` or `/dev/hwrng`, no EGD, smart
//!   cards and USB redirection only through SPICE, no evdev or passthrough input.
//!
//! Paths are checked lexically (absolute, no `.`/`..`) and then with symbolic links
//! resolved for the part that exists, so a link inside an allowed directory cannot
//! point out of it.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use crate::domxml::check_attribute_count;

/// The host's rules (from `[vm]` in the config) and what the agent prepared.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub image_dirs: Vec<PathBuf>,
    pub firmware_dirs: Vec<PathBuf>,
    pub console_log_dir: PathBuf,
    pub socket_dirs: Vec<PathBuf>,
    pub nvram_dir: PathBuf,
    pub allow_host_block_devices: bool,
    pub allow_host_devices: bool,
    pub allow_filesystem_passthrough: bool,
    /// Paths of the storage-domain volumes prepared for this VM.
    pub prepared: HashSet<String>,
    /// The VM's leases as the agent resolved them from the domains' xleases index:
    /// (key, lockspace, path, offset).
    pub leases: HashSet<(String, String, String, String)>,
}

/// A refusal: the element (as a path from the root) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM definition may not use <{element}>: {reason}")]
pub struct Refused {
    pub element: String,
    pub reason: String,
}

/// A parsed element (namespace resolved).
#[derive(Debug, Default)]
struct El {
    ns: Option<String>,
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<El>,
    text: String,
}

impl El {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
    fn child(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }
    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a El> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

const MAX_ELEMENTS: usize = 20_000;
const MAX_DEPTH: usize = 64;

fn refused(element: impl Into<String>, reason: impl Into<String>) -> Refused {
    Refused {
        element: element.into(),
        reason: reason.into(),
    }
}

fn tree(xml: &str) -> Result<El, Refused> {
    let bad = |e: String| refused("domain", format!("malformed XML: {e}"));
    crate::domxml::check_attribute_counts(xml).map_err(|e| bad(e.to_string()))?;
    let mut r = NsReader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut stack: Vec<El> = Vec::new();
    let mut root: Option<El> = None;
    let mut count = 0usize;
    let open = |ns: ResolveResult<'_>, e: &BytesStart<'_>| -> Result<El, Refused> {
        check_attribute_count(e).map_err(|x| bad(x.to_string()))?;
        let mut el = El {
            ns: match ns {
                ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into_owned()),
                _ => None,
            },
            name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
            ..El::default()
        };
        for a in e.attributes() {
            let a = a.map_err(|x| bad(x.to_string()))?;
            // Namespace declarations are not attributes libvirt reads.
            if a.key.as_ref().starts_with(b"xmlns") {
                continue;
            }
            let v = a.unescape_value().map_err(|x| bad(x.to_string()))?;
            el.attrs.push((
                String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned(),
                v.into_owned(),
            ));
        }
        Ok(el)
    };
    loop {
        let (ns, ev) = r.read_resolved_event().map_err(|e| bad(e.to_string()))?;
        match ev {
            Event::DocType(_) => return Err(bad("DOCTYPE".into())),
            Event::Start(ref e) | Event::Empty(ref e) => {
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(bad("too many or too deeply nested elements".into()));
                }
                let el = open(ns, e)?;
                if matches!(ev, Event::Start(_)) {
                    stack.push(el);
                } else {
                    match stack.last_mut() {
                        Some(p) => p.children.push(el),
                        None => root = Some(el),
                    }
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| bad("unbalanced".into()))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text
                        .push_str(&t.decode().map_err(|e| bad(e.to_string()))?);
                }
            }
            Event::GeneralRef(g) => {
                if let Some(top) = stack.last_mut() {
                    let c = halyard_common::text::xml_reference(&g)
                        .ok_or_else(|| bad("unknown entity".into()))?;
                    top.text.push(c);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = root.ok_or_else(|| bad("empty document".into()))?;
    trim(&mut root);
    Ok(root)
}

fn trim(e: &mut El) {
    e.text = e.text.trim().to_string();
    for c in &mut e.children {
        trim(c);
    }
}

/// Elements of `<domain>` libvirt's QEMU driver reads that the policy accepts (with the
/// checks below). Anything else is refused.
const DOMAIN_CHILDREN: &[&str] = &[
    "name",
    "uuid",
    "genid",
    "title",
    "description",
    "metadata",
    "maxMemory",
    "memory",
    "currentMemory",
    "blkiotune",
    "memtune",
    "memoryBacking",
    "vcpu",
    "vcpus",
    "iothreads",
    "iothreadids",
    "cputune",
    "numatune",
    "resource",
    "sysinfo",
    "os",
    "features",
    "cpu",
    "clock",
    "on_poweroff",
    "on_reboot",
    "on_crash",
    "on_lockfailure",
    "pm",
    "perf",
    "devices",
    "keywrap",
    "launchSecurity",
];

/// Devices the policy knows (each checked below). Anything else is refused.
const DEVICES: &[&str] = &[
    "disk",
    "controller",
    "interface",
    "input",
    "graphics",
    "video",
    "sound",
    "audio",
    "serial",
    "console",
    "channel",
    "parallel",
    "memballoon",
    "rng",
    "watchdog",
    "tpm",
    "redirdev",
    "redirfilter",
    "smartcard",
    "hub",
    "panic",
    "vsock",
    "iommu",
    "memory",
    "crypto",
    "filesystem",
    "hostdev",
    "lease",
];

/// Checks the domain XML libvirt is about to get.
pub fn check(xml: &str, p: &Policy) -> Result<(), Refused> {
    let root = tree(xml)?;
    if root.name != "domain" {
        return Err(refused(&root.name, "the root must be <domain>"));
    }
    no_driver_namespace(&root, "domain")?;
    for c in &root.children {
        let path = format!("domain/{}", c.name);
        match c.name.as_str() {
            "seclabel" => {
                return Err(refused(
                    path,
                    "security labels are the host's (sVirt/DAC); a definition cannot choose or disable them",
                ))
            }
            "bootloader" | "bootloader_args" => {
                return Err(refused(path, "a host-side boot loader runs a program on the host"))
            }
            n if !DOMAIN_CHILDREN.contains(&n) => {
                return Err(refused(path, "not an element the host accepts"))
            }
            "os" => check_os(c, p)?,
            "sysinfo" => {
                for e in c.children.iter().flat_map(|x| x.children.iter()) {
                    if e.attr("file").is_some() {
                        return Err(refused(
                            format!("{path}/{}/entry file", e.name),
                            "system information from a host file",
                        ));
                    }
                }
            }
            "devices" => {
                for d in &c.children {
                    check_device(d, p)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn no_driver_namespace(e: &El, path: &str) -> Result<(), Refused> {
    for c in &e.children {
        let here = format!("{path}/{}", c.name);
        if let Some(ns) = &c.ns {
            if ns.starts_with("http://libvirt.org/schemas/domain/") {
                return Err(refused(
                    here,
                    format!("hypervisor-specific extensions ({ns}) pass arguments to the emulator"),
                ));
            }
        }
        // <metadata> holds the engine's and the agent's own namespaces; libvirt does
        // not interpret it.
        if c.name != "metadata" {
            no_driver_namespace(c, &here)?;
        }
    }
    Ok(())
}

fn check_os(os: &El, p: &Policy) -> Result<(), Refused> {
    let boot_dirs: Vec<PathBuf> = p
        .image_dirs
        .iter()
        .chain(p.firmware_dirs.iter())
        .cloned()
        .collect();
    for c in &os.children {
        let path = format!("domain/os/{}", c.name);
        match c.name.as_str() {
            "kernel" | "initrd" | "dtb" | "loader" | "shim" if !c.text.is_empty() => {
                file_in(&path, &c.text, &boot_dirs)?;
            }
            "nvram" => {
                if let Some(t) = c.attr("template") {
                    file_in(&format!("{path} template"), t, &boot_dirs)?;
                }
                if !c.text.is_empty() {
                    file_in(&path, &c.text, std::slice::from_ref(&p.nvram_dir))?;
                }
                if c.child("source").is_some() {
                    return Err(refused(
                        format!("{path}/source"),
                        "NVRAM on another backend",
                    ));
                }
            }
            "acpi" => {
                for t in c.children_named("table") {
                    file_in(&format!("{path}/table"), &t.text, &boot_dirs)?;
                }
            }
            "init" | "initdir" | "initenv" | "inituser" | "initgroup" => {
                return Err(refused(path, "container init settings"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_device(d: &El, p: &Policy) -> Result<(), Refused> {
    let path = format!("devices/{}", d.name);
    if !DEVICES.contains(&d.name.as_str()) {
        return Err(refused(path, "not a device the host accepts"));
    }
    let kind = d.attr("type").unwrap_or("");
    match d.name.as_str() {
        "disk" => check_disk(d, p),
        "filesystem" if !p.allow_filesystem_passthrough => Err(refused(
            path,
            "sharing a host directory needs vm.allow_filesystem_passthrough",
        )),
        "hostdev" if !p.allow_host_devices => {
            Err(refused(path, "host devices need vm.allow_host_devices"))
        }
        "interface" => check_interface(d, p),
        "lease" => {
            let text = |n: &str| {
                d.child(n)
                    .map(|c| c.text.trim().to_string())
                    .unwrap_or_default()
            };
            let t = d.child("target");
            let attr = |k: &str| t.and_then(|t| t.attr(k)).unwrap_or("").to_string();
            let l = (text("key"), text("lockspace"), attr("path"), attr("offset"));
            if p.leases.contains(&l) {
                Ok(())
            } else {
                Err(refused(
                    path,
                    "a lease is the VM's own, in a storage domain's xleases volume, at the slot its index gives",
                ))
            }
        }
        "serial" | "console" | "channel" | "parallel" => check_chardev(d, &path, p),
        "graphics" => {
            if d.attr("socket").is_some() {
                return Err(refused(
                    format!("{path} socket"),
                    "a socket path on the host",
                ));
            }
            for l in d.children_named("listen") {
                if l.attr("type") == Some("socket") || l.attr("socket").is_some() {
                    return Err(refused(
                        format!("{path}/listen"),
                        "a socket path on the host",
                    ));
                }
            }
            if d.child("gl").and_then(|g| g.attr("rendernode")).is_some() {
                return Err(refused(
                    format!("{path}/gl rendernode"),
                    "a host render node",
                ));
            }
            Ok(())
        }
        "audio" => match kind {
            "none" | "spice" | "" => Ok(()),
            other => Err(refused(
                format!("{path} type={other}"),
                "audio goes to the SPICE client or nowhere",
            )),
        },
        "rng" => {
            for b in d.children_named("backend") {
                match b.attr("model").unwrap_or("") {
                    "builtin" => {}
                    "random" => {
                        if !matches!(
                            b.text.as_str(),
                            "" | "/dev/urandom" | "/dev/random" | "/dev/hwrng"
                        ) {
                            return Err(refused(
                                format!("{path}/backend"),
                                format!("{:?} is not a random number source", b.text),
                            ));
                        }
                    }
                    other => {
                        return Err(refused(
                            format!("{path}/backend model={other}"),
                            "only the host's random devices",
                        ))
                    }
                }
            }
            Ok(())
        }
        "tpm" => {
            for b in d.children_named("backend") {
                if b.attr("type") != Some("emulator") && !p.allow_host_devices {
                    return Err(refused(
                        format!("{path}/backend"),
                        "a host TPM needs vm.allow_host_devices",
                    ));
                }
                if b.child("device").is_some() && !p.allow_host_devices {
                    return Err(refused(format!("{path}/backend/device"), "a host device"));
                }
            }
            Ok(())
        }
        "smartcard" => {
            if d.attr("mode") == Some("passthrough") && kind == "spicevmc" {
                Ok(())
            } else {
                Err(refused(path, "smart cards only through SPICE"))
            }
        }
        "redirdev" => {
            if kind == "spicevmc" {
                Ok(())
            } else {
                Err(refused(
                    format!("{path} type={kind}"),
                    "USB redirection only through SPICE",
                ))
            }
        }
        "input" => match kind {
            "evdev" | "passthrough" => {
                Err(refused(format!("{path} type={kind}"), "host input devices"))
            }
            _ => {
                if d.child("source").is_some() {
                    return Err(refused(format!("{path}/source"), "a host input device"));
                }
                Ok(())
            }
        },
        "memory" => {
            if d.child("source")
                .is_some_and(|s| !s.children.is_empty() || s.attr("path").is_some())
            {
                return Err(refused(
                    format!("{path}/source"),
                    "memory backed by a host file or device",
                ));
            }
            Ok(())
        }
        "crypto" => {
            for b in d.children_named("backend") {
                if b.attr("model") != Some("builtin") {
                    return Err(refused(
                        format!("{path}/backend"),
                        "only the built-in backend",
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_disk(d: &El, p: &Policy) -> Result<(), Refused> {
    let kind = d.attr("type").unwrap_or("file");
    let device = d.attr("device").unwrap_or("disk");
    let path = "devices/disk".to_string();
    for c in ["backingStore", "mirror"] {
        if d.child(c).is_some_and(|b| !b.children.is_empty()) {
            return Err(refused(
                format!("{path}/{c}"),
                "the backing chain comes from the image, not from the definition",
            ));
        }
    }
    let source = d.child("source");
    if let Some(s) = source {
        if let Some(c) = s.children.first() {
            return Err(refused(
                format!("{path}/source/{}", c.name),
                "nothing is accepted inside a disk's source",
            ));
        }
    }
    let src = source.and_then(|s| s.attr("file").or(s.attr("dev")).or(s.attr("dir")));
    let Some(src) = src else {
        // An empty CD-ROM or floppy drive; a disk of another kind without a source.
        return match (kind, source) {
            ("file" | "block", _) if device == "cdrom" || device == "floppy" => Ok(()),
            (_, None) if kind == "file" => Ok(()),
            _ => Err(refused(
                format!("{path} type={kind}"),
                "disks are storage-domain volumes or files under vm.image_dirs",
            )),
        };
    };
    if p.prepared.contains(src) && matches!(kind, "file" | "block") {
        return Ok(());
    }
    match kind {
        "file" => {
            let read_only = matches!(device, "cdrom" | "floppy") || d.child("readonly").is_some();
            if !read_only || device == "lun" {
                return Err(refused(
                    format!("{path}/source file={src}"),
                    "only storage-domain volumes the host prepared may be writable disks; files under vm.image_dirs are attached read-only",
                ));
            }
            if let Some(t) = d.child("driver").and_then(|x| x.attr("type")) {
                if t != "raw" {
                    return Err(refused(
                        format!("{path}/driver type={t}"),
                        "image files are attached raw (a qcow2 header could name any backing file)",
                    ));
                }
            }
            file_in(&format!("{path}/source"), src, &p.image_dirs)
        }
        "block" if p.allow_host_block_devices => {
            if !src.starts_with("/dev/") {
                return Err(refused(
                    format!("{path}/source dev={src}"),
                    "not a device path",
                ));
            }
            lexically_clean(&format!("{path}/source"), src)?;
            Ok(())
        }
        "block" => Err(refused(
            format!("{path}/source dev={src}"),
            "host block devices need vm.allow_host_block_devices",
        )),
        other => Err(refused(
            format!("{path} type={other}"),
            "disks are storage-domain volumes or files under vm.image_dirs",
        )),
    }
}

fn check_interface(d: &El, p: &Policy) -> Result<(), Refused> {
    let kind = d.attr("type").unwrap_or("");
    let path = "devices/interface";
    match kind {
        "bridge" | "network" => {}
        "hostdev" if p.allow_host_devices => {}
        other => {
            return Err(refused(
                format!("{path} type={other}"),
                "NICs are on a bridge or a libvirt network",
            ))
        }
    }
    for c in &d.children {
        let bad = match c.name.as_str() {
            "script" | "downscript" => Some("runs a program on the host"),
            "backend" if !c.attrs.is_empty() => Some("host device paths"),
            "rom" if c.attr("file").is_some() => Some("a ROM file from the host"),
            "source" if c.attr("path").is_some() || c.attr("dev").is_some() && kind != "bridge" => {
                Some("a host path")
            }
            _ => None,
        };
        if let Some(why) = bad {
            return Err(refused(format!("{path}/{}", c.name), why));
        }
    }
    Ok(())
}

fn check_chardev(d: &El, path: &str, p: &Policy) -> Result<(), Refused> {
    let kind = d.attr("type").unwrap_or("pty");
    let sources: Vec<&El> = d.children_named("source").collect();
    match kind {
        "pty" | "null" | "vc" | "spicevmc" | "spiceport" | "qemu-vdagent" => {}
        "unix" => {
            for s in &sources {
                if let Some(sp) = s.attr("path") {
                    file_in(&format!("{path}/source"), sp, &p.socket_dirs)?;
                }
            }
        }
        "file" => {
            if sources.is_empty() {
                return Err(refused(format!("{path} type=file"), "a file needs a path"));
            }
            for s in &sources {
                let f = s.attr("path").unwrap_or("");
                file_in(
                    &format!("{path}/source"),
                    f,
                    std::slice::from_ref(&p.console_log_dir),
                )?;
            }
        }
        other => {
            return Err(refused(
                format!("{path} type={other}"),
                "host devices, pipes and network sockets are not console backends here",
            ))
        }
    }
    for l in d.children_named("log") {
        let f = l.attr("file").unwrap_or("");
        file_in(
            &format!("{path}/log"),
            f,
            std::slice::from_ref(&p.console_log_dir),
        )?;
    }
    Ok(())
}

/// Absolute, no `.`/`..`, no NUL.
fn lexically_clean(element: &str, path: &str) -> Result<PathBuf, Refused> {
    let pb = PathBuf::from(path);
    let clean = pb.is_absolute()
        && !path.contains('\0')
        && pb
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !clean {
        return Err(refused(
            element,
            format!("{path:?} is not a plain absolute path"),
        ));
    }
    Ok(pb)
}

/// `path` lies under one of `dirs`, lexically and with symbolic links resolved (for the
/// part of it that exists).
pub(crate) fn file_in(element: &str, path: &str, dirs: &[PathBuf]) -> Result<(), Refused> {
    let pb = lexically_clean(element, path)?;
    for dir in dirs {
        if dir.as_os_str().is_empty() || !pb.starts_with(dir) || pb == *dir {
            continue;
        }
        // The deepest part that exists, resolved, must stay under the resolved dir.
        let mut existing: &Path = &pb;
        while !existing.exists() {
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        if !existing.starts_with(dir) {
            // The allowed directory does not exist yet: nothing under it does either.
            return Ok(());
        }
        if let (Ok(real), Ok(real_dir)) = (existing.canonicalize(), dir.canonicalize()) {
            if real.starts_with(&real_dir) {
                return Ok(());
            }
        }
    }
    let allowed = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(refused(
        element,
        format!("{path:?} is not under an allowed directory ({allowed})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dir: &Path) -> Policy {
        Policy {
            image_dirs: vec![dir.join("images")],
            firmware_dirs: vec![PathBuf::from("/usr/share/OVMF")],
            console_log_dir: dir.join("logs"),
            socket_dirs: vec![PathBuf::from("/var/lib/libvirt/qemu/channels")],
            nvram_dir: PathBuf::from("/var/lib/libvirt/qemu/nvram"),
            prepared: [dir.join("sd/vol").to_string_lossy().into_owned()]
                .into_iter()
                .collect(),
            ..Policy::default()
        }
    }

    fn domain(os: &str, devices: &str) -> String {
        format!(
            r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid><metadata><ovirt-vm:vm/></metadata><os><type>hvm</type>{os}</os><devices>{devices}</devices></domain>"#
        )
    }

    #[test]
    fn what_the_engine_sends_passes() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("images")).expect("dir");
        std::fs::write(d.path().join("images/vmlinux"), b"k").expect("k");
        let p = policy(d.path());
        let xml = domain(
            &format!("<kernel>{}/images/vmlinux</kernel><loader readonly=\"yes\" type=\"pflash\">/usr/share/OVMF/OVMF_CODE.fd</loader><nvram template=\"/usr/share/OVMF/OVMF_VARS.fd\"/>", d.path().display()),
            &format!(
                r#"<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="{vol}"/><target dev="vda"/></disk>
<disk type="file" device="cdrom"><driver name="qemu" type="raw"/><source file="{iso}"/><target dev="sdc"/><readonly/></disk>
<disk type="file" device="cdrom"><target dev="sdd"/></disk>
<serial type="pty"><log file="{log}" append="off"/><target port="0"/></serial><console type="pty"/>
<channel type="unix"><target type="virtio" name="org.qemu.guest_agent.0"/></channel>
<channel type="unix"><source mode="bind" path="/var/lib/libvirt/qemu/channels/x.ovirt-guest-agent.0"/></channel>
<channel type="spicevmc"><target type="virtio" name="com.redhat.spice.0"/></channel>
<interface type="bridge"><mac address="52:54:00:00:00:01"/><source bridge="ovirtmgmt"/><model type="virtio"/></interface>
<graphics type="spice" autoport="yes"><listen type="network" network="vdsm-ovirtmgmt"/></graphics><video><model type="qxl"/></video>
<rng model="virtio"><backend model="random">/dev/urandom</backend></rng><memballoon model="virtio"/><controller type="usb"/><input type="tablet" bus="usb"/>"#,
                vol = d.path().join("sd/vol").display(),
                iso = d.path().join("images/boot.iso").display(),
                log = d.path().join("logs/vm1/console.log").display(),
            ),
        );
        check(&xml, &p).expect("the engine's XML passes");
    }

    #[test]
    fn dangerous_constructs_are_refused_naming_the_element() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("images")).expect("dir");
        std::os::unix::fs::symlink("/etc", d.path().join("images/etc")).expect("link");
        let p = policy(d.path());
        let cases: &[(&str, &str, &str)] = &[
            ("<kernel>/etc/shadow</kernel>", "", "domain/os/kernel"),
            ("<initrd>/root/.ssh/id_rsa</initrd>", "", "domain/os/initrd"),
            (
                &format!(
                    "<kernel>{}/images/../../../etc/shadow</kernel>",
                    d.path().display()
                ),
                "",
                "domain/os/kernel",
            ),
            (
                &format!("<kernel>{}/images/etc/shadow</kernel>", d.path().display()),
                "",
                "domain/os/kernel",
            ),
            (
                "",
                r#"<disk type="file" device="disk"><source file="/etc/shadow"/><target dev="vda"/></disk>"#,
                "devices/disk/source",
            ),
            (
                "",
                r#"<disk type="block" device="disk"><source dev="/dev/sda"/><target dev="vda"/></disk>"#,
                "devices/disk/source",
            ),
            (
                "",
                r#"<disk type="network" device="disk"><source protocol="nbd" name="x"><host name="10.0.0.1"/></source><target dev="vda"/></disk>"#,
                "devices/disk/source/host",
            ),
            (
                "",
                r#"<filesystem type="mount"><source dir="/"/><target dir="root"/></filesystem>"#,
                "devices/filesystem",
            ),
            (
                "",
                r#"<hostdev mode="subsystem" type="pci"><source><address domain="0" bus="0" slot="1" function="0"/></source></hostdev>"#,
                "devices/hostdev",
            ),
            (
                "",
                r#"<serial type="file"><source path="/etc/cron.d/x"/></serial>"#,
                "devices/serial/source",
            ),
            (
                "",
                r#"<serial type="pty"><log file="/etc/newdir/x.log"/></serial>"#,
                "devices/serial/log",
            ),
            (
                "",
                r#"<serial type="dev"><source path="/dev/ttyS0"/></serial>"#,
                "devices/serial type=dev",
            ),
            (
                "",
                r#"<channel type="unix"><source mode="bind" path="/etc/x.sock"/></channel>"#,
                "devices/channel/source",
            ),
            ("", r#"<emulator>/bin/sh</emulator>"#, "devices/emulator"),
            (
                "",
                r#"<interface type="ethernet"><script path="/tmp/x.sh"/></interface>"#,
                "devices/interface type=ethernet",
            ),
            (
                "",
                r#"<interface type="bridge"><source bridge="b"/><rom file="/etc/shadow"/></interface>"#,
                "devices/interface/rom",
            ),
            (
                "",
                r#"<rng model="virtio"><backend model="random">/dev/sda</backend></rng>"#,
                "devices/rng/backend",
            ),
            (
                "",
                r#"<disk type="file" device="cdrom"><source file="/etc/shadow"/><target dev="sdc"/></disk>"#,
                "devices/disk/source",
            ),
            ("", r#"<shmem name="x"/>"#, "devices/shmem"),
        ];
        for (os, dev, element) in cases {
            let e = check(&domain(os, dev), &p).expect_err(element);
            assert_eq!(
                &e.element[..element.len().min(e.element.len())],
                *element,
                "{e}"
            );
        }
        let qemu = r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>a</name><qemu:commandline><qemu:arg value="-S"/></qemu:commandline></domain>"#;
        assert_eq!(
            check(qemu, &p).expect_err("qemu").element,
            "domain/commandline"
        );
        let caps = r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><name>a</name><qemu:capabilities><qemu:add capability="x"/></qemu:capabilities></domain>"#;
        assert!(check(caps, &p).is_err());
        let sec = r#"<domain type="kvm"><name>a</name><seclabel type="none"/></domain>"#;
        assert_eq!(check(sec, &p).expect_err("sec").element, "domain/seclabel");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "(<[a-z:/]{0,8}( [a-z]{1,5}='[^']{0,8}')?/?>|[a-z/&;#0-9]{0,6}){0,40}") {
            let _ = check(&s, &Policy::default());
        }
    }
}
