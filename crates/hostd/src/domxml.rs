//! The libvirt domain XML the engine sends in VM.create: what the agent reads from it
//! (id, name, oVirt metadata) and how it adapts it before starting the domain (the
//! configured domain type, the agent's own metadata for recovery).
//!
//! The XML comes from the network: parsing never panics, DTDs are refused (no entity
//! expansion), and sizes are bounded by the STOMP frame limit.

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::{NsReader, Reader};
use quick_xml::writer::Writer;

/// oVirt's VM metadata namespace.
pub const OVIRT_VM_NS: &str = "http://ovirt.org/vm/1.0";
/// The host agent's own metadata namespace.
pub const HALYARD_NS: &str = "https://halyard.dev/xmlns/hostd/1.0";
const HALYARD_PREFIX: &str = "halyard";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DomXmlError {
    #[error("invalid domain XML: {0}")]
    Syntax(String),
    #[error("domain XML has no <{0}>")]
    Missing(&'static str),
    #[error("domain XML: {0}")]
    Invalid(String),
}

impl From<std::io::Error> for DomXmlError {
    fn from(e: std::io::Error) -> Self {
        DomXmlError::Syntax(e.to_string())
    }
}

impl From<quick_xml::Error> for DomXmlError {
    fn from(e: quick_xml::Error) -> Self {
        DomXmlError::Syntax(e.to_string())
    }
}

/// What the agent needs to know about a domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainInfo {
    pub uuid: String,
    pub name: String,
    pub domain_type: String,
    /// The engine's `<ovirt-vm:vm>` metadata is present.
    pub has_ovirt_metadata: bool,
    /// `<ovirt-vm:launchPaused>true</...>`.
    pub launch_paused: bool,
    /// The agent's own metadata (present on domains this agent started).
    pub halyard: Option<HalyardMeta>,
    /// `<vcpu>` count.
    pub vcpus: Option<u32>,
    /// `<memory>` in KiB.
    pub memory_kib: Option<u64>,
    pub nics: Vec<NicInfo>,
    pub disks: Vec<DiskInfo>,
    /// The serial console's `<log file=...>`.
    pub serial_log: Option<String>,
    /// Disks the engine names by (pool, domain, image, volume) in the `ovirt-vm`
    /// metadata; the agent prepares them and fills in their paths.
    pub drives: Vec<DriveRef>,
    /// `<graphics>` devices (in the live XML: with the ports QEMU got).
    pub graphics: Vec<GraphicsInfo>,
    /// Payloads (`<ovirt-vm:payload>` of a disk device), for disks whose source is
    /// `PAYLOAD:`.
    pub payloads: Vec<crate::payload::PayloadRef>,
    /// `<devices><lease>`: sanlock resources libvirt acquires for the VM.
    pub leases: Vec<LeaseRef>,
}

/// A `<devices><lease>`: `<key>`, `<lockspace>`, `<target path offset>` (the engine
/// sends `LEASE-PATH:VMID:SDID` / `LEASE-OFFSET:VMID:SDID` placeholders the host
/// resolves from the domain's xleases index, as VDSM does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseRef {
    pub key: String,
    pub lockspace: String,
    pub path: String,
    pub offset: String,
}

/// A graphics device: `vnc` or `spice`, its ports (-1: none), its listen address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphicsInfo {
    pub kind: String,
    pub port: i64,
    pub tls_port: i64,
    pub listen: String,
}

/// `<ovirt-vm:device devtype="disk" name="vda">` with its storage ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriveRef {
    pub name: String,
    pub pool: String,
    pub domain: String,
    pub image: String,
    pub volume: String,
}

/// A `<devices><interface>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NicInfo {
    pub mac: String,
    /// The host-side tap device (live XML only).
    pub target: Option<String>,
    pub model: Option<String>,
}

/// A `<devices><disk>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiskInfo {
    pub device: String,
    pub target: String,
    pub source: Option<String>,
    /// `<driver cache=...>`.
    pub cache: Option<String>,
    /// `<readonly/>`.
    pub readonly: bool,
}

pub use halyard_common::xml::MAX_ATTRIBUTES;

/// Refuses an element with more than [`MAX_ATTRIBUTES`] attributes.
pub fn check_attribute_count(e: &BytesStart<'_>) -> Result<(), DomXmlError> {
    halyard_common::xml::check_attribute_count(e).map_err(|_| {
        DomXmlError::Invalid(format!(
            "<{}> has more than {MAX_ATTRIBUTES} attributes",
            String::from_utf8_lossy(e.local_name().as_ref())
        ))
    })
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.try_get_attribute(name)
        .ok()
        .flatten()
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// What the agent stores in the domain to adopt it after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HalyardMeta {
    /// Wall-clock start, seconds since the epoch.
    pub start_time: f64,
    /// The id of the agent that started the domain (several agents may share one
    /// libvirtd in tests; each adopts only its own domains).
    pub agent_id: String,
}

fn text_of(e: &BytesText<'_>) -> String {
    e.decode().map(|c| c.into_owned()).unwrap_or_default()
}

fn resolve_ref(name: &[u8]) -> String {
    halyard_common::text::xml_reference(name)
        .map(String::from)
        .unwrap_or_default()
}

fn unit_to_kib(value: u64, unit: &str) -> Option<u64> {
    let mul: u64 = match unit {
        "b" | "bytes" => return Some(value / 1024),
        "KB" => return Some(value * 1000 / 1024),
        "k" | "KiB" | "" => 1,
        "MB" => return Some(value * 1_000_000 / 1024),
        "M" | "MiB" => 1024,
        "GB" => return Some(value * 1_000_000_000 / 1024),
        "G" | "GiB" => 1024 * 1024,
        "T" | "TiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    value.checked_mul(mul)
}

/// A first pass over the raw events (no namespace resolution, no attribute parsing):
/// every element's attribute count is bounded before anything looks at attributes.
pub fn check_attribute_counts(xml: &str) -> Result<(), DomXmlError> {
    let mut r = Reader::from_str(xml);
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => check_attribute_count(&e)?,
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Parses the parts of a domain XML the agent uses.
pub fn parse(xml: &str) -> Result<DomainInfo, DomXmlError> {
    check_attribute_counts(xml)?;
    let mut r = NsReader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut info = DomainInfo::default();
    // Stack of (namespace, local name) of open elements.
    let mut path: Vec<(Option<String>, String)> = Vec::new();
    let mut text = String::new();
    let mut memory_unit = String::new();
    let mut seen_root = false;
    let mut halyard_start: Option<f64> = None;
    let mut halyard_agent = String::new();
    let mut halyard_seen = false;
    let mut payload_file: Option<String> = None;
    loop {
        let (ns, ev) = r.read_resolved_event()?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(String::from_utf8_lossy(n.as_ref()).into_owned()),
            _ => None,
        };
        match ev {
            Event::DocType(_) => {
                return Err(DomXmlError::Invalid("DOCTYPE is not allowed".into()));
            }
            Event::Start(e) | Event::Empty(e) if path.is_empty() && seen_root => {
                let _ = e;
                return Err(DomXmlError::Invalid("more than one root element".into()));
            }
            ref ev @ (Event::Start(ref e) | Event::Empty(ref e)) => {
                // Attributes are parsed lazily; check them all so that a malformed one
                // is an error here rather than silently dropped later. Their number is
                // bounded first: the duplicate check is quadratic in it.
                check_attribute_count(e)?;
                for a in e.attributes() {
                    a.map_err(|err| DomXmlError::Syntax(err.to_string()))?;
                }
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if local != "domain" {
                        return Err(DomXmlError::Invalid(format!(
                            "root element is <{local}>, not <domain>"
                        )));
                    }
                    seen_root = true;
                    if let Ok(Some(a)) = e.try_get_attribute("type") {
                        info.domain_type = a
                            .unescape_value()
                            .map(|v| v.into_owned())
                            .unwrap_or_default();
                    }
                }
                if path.len() == 2 && path[1].1 == "devices" {
                    match local.as_str() {
                        "interface" => info.nics.push(NicInfo::default()),
                        "disk" => info.disks.push(DiskInfo {
                            device: attr(e, "device").unwrap_or_else(|| "disk".into()),
                            ..DiskInfo::default()
                        }),
                        "lease" => {
                            if info.leases.len() >= 4 {
                                return Err(DomXmlError::Invalid("more than 4 leases".into()));
                            }
                            info.leases.push(LeaseRef::default())
                        }
                        "graphics" if info.graphics.len() < 4 => {
                            let num = |k: &str| {
                                attr(e, k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1)
                            };
                            info.graphics.push(GraphicsInfo {
                                kind: attr(e, "type").unwrap_or_default(),
                                port: num("port"),
                                tls_port: num("tlsPort"),
                                listen: attr(e, "listen").unwrap_or_default(),
                            })
                        }
                        _ => {}
                    }
                }
                if path.len() == 3 && path[1].1 == "devices" {
                    match (path[2].1.as_str(), local.as_str()) {
                        ("interface", "mac") => {
                            if let Some(n) = info.nics.last_mut() {
                                n.mac = attr(e, "address").unwrap_or_default().to_ascii_lowercase();
                            }
                        }
                        ("interface", "target") => {
                            if let Some(n) = info.nics.last_mut() {
                                n.target = attr(e, "dev");
                            }
                        }
                        ("interface", "model") => {
                            if let Some(n) = info.nics.last_mut() {
                                n.model = attr(e, "type");
                            }
                        }
                        ("disk", "target") => {
                            if let Some(d) = info.disks.last_mut() {
                                d.target = attr(e, "dev").unwrap_or_default();
                            }
                        }
                        ("disk", "driver") => {
                            if let Some(d) = info.disks.last_mut() {
                                d.cache = attr(e, "cache");
                            }
                        }
                        ("disk", "readonly") => {
                            if let Some(d) = info.disks.last_mut() {
                                d.readonly = true;
                            }
                        }
                        ("disk", "source") => {
                            if let Some(d) = info.disks.last_mut() {
                                d.source = attr(e, "file")
                                    .or_else(|| attr(e, "dev"))
                                    .or_else(|| attr(e, "name"));
                            }
                        }
                        ("lease", "target") => {
                            if let Some(l) = info.leases.last_mut() {
                                l.path = attr(e, "path").unwrap_or_default();
                                l.offset = attr(e, "offset").unwrap_or_default();
                            }
                        }
                        ("serial", "log") if info.serial_log.is_none() => {
                            info.serial_log = attr(e, "file");
                        }
                        _ => {}
                    }
                }
                if path.len() == 3
                    && path[2].1 == "vm"
                    && path[2].0.as_deref() == Some(OVIRT_VM_NS)
                    && local == "device"
                    && attr(e, "devtype").as_deref() == Some("disk")
                {
                    info.drives.push(DriveRef {
                        name: attr(e, "name").unwrap_or_default(),
                        ..DriveRef::default()
                    });
                }
                if path.len() == 4
                    && path[3].1 == "device"
                    && path[2].1 == "vm"
                    && ns.as_deref() == Some(OVIRT_VM_NS)
                    && local == "payload"
                {
                    if info.payloads.len() >= 4 {
                        return Err(DomXmlError::Invalid("more than 4 payloads".into()));
                    }
                    info.payloads.push(crate::payload::PayloadRef {
                        name: info
                            .drives
                            .last()
                            .map(|d| d.name.clone())
                            .unwrap_or_default(),
                        ..Default::default()
                    });
                }
                if path.len() == 5
                    && path[4].1 == "payload"
                    && path[4].0.as_deref() == Some(OVIRT_VM_NS)
                    && local == "file"
                {
                    let p = attr(e, "path").unwrap_or_default();
                    match ev {
                        Event::Empty(_) => {
                            if let Some(pl) = info.payloads.last_mut() {
                                if pl.files.len() >= crate::payload::MAX_FILES {
                                    return Err(DomXmlError::Invalid(
                                        "a payload has too many files".into(),
                                    ));
                                }
                                pl.files.push((p, String::new()));
                            }
                        }
                        _ => payload_file = Some(p),
                    }
                }
                if path.len() == 1 && local == "memory" {
                    memory_unit = e
                        .try_get_attribute("unit")
                        .ok()
                        .flatten()
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
                        .unwrap_or_default();
                }
                if path.len() == 2
                    && path[1].1 == "metadata"
                    && ns.as_deref() == Some(OVIRT_VM_NS)
                    && local == "vm"
                {
                    info.has_ovirt_metadata = true;
                }
                if path.len() == 2
                    && path[1].1 == "metadata"
                    && ns.as_deref() == Some(HALYARD_NS)
                    && local == "vm"
                {
                    halyard_seen = true;
                }
                text.clear();
                if matches!(ev, Event::Start(_)) {
                    path.push((ns, local));
                    if path.len() > 64 {
                        return Err(DomXmlError::Invalid("nesting too deep".into()));
                    }
                }
            }
            Event::Text(t) => text.push_str(&text_of(&t)),
            Event::CData(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Event::GeneralRef(g) => text.push_str(&resolve_ref(&g)),
            Event::End(_) => {
                let Some((ens, local)) = path.pop() else {
                    return Err(DomXmlError::Syntax("unbalanced end tag".into()));
                };
                let t = text.trim();
                match (path.len(), local.as_str()) {
                    (1, "uuid") => info.uuid = t.to_string(),
                    (1, "name") => info.name = t.to_string(),
                    (1, "vcpu") => info.vcpus = t.parse().ok(),
                    (1, "memory") => {
                        info.memory_kib = t
                            .parse::<u64>()
                            .ok()
                            .and_then(|v| unit_to_kib(v, &memory_unit))
                    }
                    (3, "key" | "lockspace") if path[2].1 == "lease" && path[1].1 == "devices" => {
                        if let Some(l) = info.leases.last_mut() {
                            if local == "key" {
                                l.key = t.to_string();
                            } else {
                                l.lockspace = t.to_string();
                            }
                        }
                    }
                    (3, "launchPaused") if ens.as_deref() == Some(OVIRT_VM_NS) => {
                        info.launch_paused = t.eq_ignore_ascii_case("true")
                    }
                    (4, "domainID" | "imageID" | "poolID" | "volumeID")
                        if ens.as_deref() == Some(OVIRT_VM_NS) && path[3].1 == "device" =>
                    {
                        if let Some(d) = info.drives.last_mut() {
                            let v = t.to_ascii_lowercase();
                            match local.as_str() {
                                "domainID" => d.domain = v,
                                "imageID" => d.image = v,
                                "poolID" => d.pool = v,
                                _ => d.volume = v,
                            }
                        }
                    }
                    (5, "volId")
                        if ens.as_deref() == Some(OVIRT_VM_NS) && path[4].1 == "payload" =>
                    {
                        if let Some(pl) = info.payloads.last_mut() {
                            pl.vol_id = Some(t.to_string());
                        }
                    }
                    (5, "file")
                        if ens.as_deref() == Some(OVIRT_VM_NS) && path[4].1 == "payload" =>
                    {
                        if let (Some(pl), Some(p)) = (info.payloads.last_mut(), payload_file.take())
                        {
                            if pl.files.len() >= crate::payload::MAX_FILES {
                                return Err(DomXmlError::Invalid(
                                    "a payload has too many files".into(),
                                ));
                            }
                            pl.files.push((p, t.to_string()));
                        }
                    }
                    (3, "startTime") if ens.as_deref() == Some(HALYARD_NS) => {
                        halyard_start = t.parse().ok()
                    }
                    (3, "agentId") if ens.as_deref() == Some(HALYARD_NS) => {
                        halyard_agent = t.to_string()
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(DomXmlError::Syntax("unclosed elements".into()));
    }
    if !seen_root {
        return Err(DomXmlError::Missing("domain"));
    }
    if info.uuid.is_empty() {
        return Err(DomXmlError::Missing("uuid"));
    }
    info.uuid = info.uuid.to_ascii_lowercase();
    if !halyard_proto::vdsm::is_uuid(&info.uuid) {
        return Err(DomXmlError::Invalid(format!(
            "<uuid> {:?} is not a UUID",
            info.uuid
        )));
    }
    if info.name.is_empty() {
        return Err(DomXmlError::Missing("name"));
    }
    info.drives.retain(|d| !d.volume.is_empty());
    for d in &info.drives {
        for id in [&d.domain, &d.image, &d.volume] {
            if !halyard_proto::vdsm::is_uuid(id) {
                return Err(DomXmlError::Invalid(format!(
                    "drive {}: {id:?} is not a UUID",
                    d.name
                )));
            }
        }
    }
    if halyard_seen {
        info.halyard = Some(HalyardMeta {
            start_time: halyard_start.unwrap_or(0.0),
            agent_id: halyard_agent,
        });
    }
    Ok(info)
}

/// How to adapt a domain before starting it.
#[derive(Debug, Clone)]
pub struct Prepare<'a> {
    /// `kvm` or `qemu`.
    pub domain_type: &'a str,
    pub meta: HalyardMeta,
}

/// Returns the XML to start: root `type` set to the configured domain type; under TCG a
/// host CPU model (`host-passthrough`/`host-model`, which TCG cannot provide) dropped,
/// its topology and NUMA cells kept;
/// the agent's metadata added (replacing any old copy).
pub fn prepare(xml: &str, p: &Prepare<'_>) -> Result<String, DomXmlError> {
    // Only documents `parse` accepts are prepared.
    parse(xml)?;
    let mut r = Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut w = Writer::new(Vec::with_capacity(xml.len() + 256));
    let mut depth = 0usize;
    // Depth at which we skip a subtree (inclusive), if skipping.
    let mut skip_from: Option<usize> = None;
    let mut metadata_done = false;
    let tcg = p.domain_type == "qemu";
    let our_meta = meta_events(&p.meta);
    loop {
        let ev = r.read_event()?;
        if let Some(s) = skip_from {
            match &ev {
                Event::Start(_) => depth += 1,
                Event::End(_) => {
                    depth -= 1;
                    if depth < s {
                        skip_from = None;
                    }
                }
                Event::Eof => return Err(DomXmlError::Syntax("unexpected end".into())),
                _ => {}
            }
            continue;
        }
        match ev {
            Event::DocType(_) => {
                return Err(DomXmlError::Invalid("DOCTYPE is not allowed".into()));
            }
            Event::Start(e) => {
                let name = e.name().as_ref().to_vec();
                if depth == 0 {
                    w.write_event(Event::Start(with_type(&e, p.domain_type)))?;
                } else if depth == 1 && name == b"cpu" && tcg && is_host_cpu(&e) {
                    // The host's model goes, what the VM asks of its CPUs (topology,
                    // NUMA cells) stays.
                    w.write_event(Event::Start(BytesStart::new("cpu")))?;
                } else if depth == 2 && is_halyard_element(&e) {
                    skip_from = Some(depth + 1);
                    depth += 1;
                    continue;
                } else {
                    w.write_event(Event::Start(e))?;
                }
                depth += 1;
                if depth == 2 && name == b"metadata" {
                    for ev in &our_meta {
                        w.write_event(ev.borrow())?;
                    }
                    metadata_done = true;
                }
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_vec();
                if depth == 0 {
                    return Err(DomXmlError::Invalid("empty <domain/>".into()));
                } else if (depth == 1 && name == b"cpu" && tcg && is_host_cpu(&e))
                    || (depth == 2 && is_halyard_element(&e))
                {
                    continue;
                } else if depth == 1 && name == b"metadata" {
                    w.write_event(Event::Start(BytesStart::new("metadata")))?;
                    for ev in &our_meta {
                        w.write_event(ev.borrow())?;
                    }
                    w.write_event(Event::End(BytesEnd::new("metadata")))?;
                    metadata_done = true;
                } else {
                    w.write_event(Event::Empty(e))?;
                }
            }
            Event::End(e) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| DomXmlError::Syntax("unbalanced end tag".into()))?;
                if depth == 0 && !metadata_done {
                    w.write_event(Event::Start(BytesStart::new("metadata")))?;
                    for ev in &our_meta {
                        w.write_event(ev.borrow())?;
                    }
                    w.write_event(Event::End(BytesEnd::new("metadata")))?;
                    metadata_done = true;
                }
                w.write_event(Event::End(e))?;
            }
            Event::Eof => break,
            other => w.write_event(other)?,
        }
    }
    if depth != 0 {
        return Err(DomXmlError::Syntax("unclosed elements".into()));
    }
    String::from_utf8(w.into_inner()).map_err(|e| DomXmlError::Syntax(e.to_string()))
}

/// Removes the elements at `paths` (element names from below the root, such as
/// `devices/emulator` or `seclabel`), with their subtrees.
pub fn drop_elements(xml: &str, paths: &[&str]) -> Result<String, DomXmlError> {
    parse(xml)?;
    let mut r = Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut w = Writer::new(Vec::with_capacity(xml.len()));
    let mut stack: Vec<String> = Vec::new();
    let mut skip_depth: Option<usize> = None;
    let wanted = |stack: &[String], name: &str| {
        let mut p = stack.iter().skip(1).cloned().collect::<Vec<_>>();
        p.push(name.to_string());
        let p = p.join("/");
        !stack.is_empty() && paths.contains(&p.as_str())
    };
    loop {
        let ev = r.read_event()?;
        match &ev {
            Event::Eof => break,
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if skip_depth.is_none() && wanted(&stack, &name) {
                    skip_depth = Some(stack.len());
                }
                stack.push(name);
                if skip_depth.is_some() {
                    continue;
                }
            }
            Event::End(_) => {
                stack.pop();
                if let Some(d) = skip_depth {
                    if stack.len() == d {
                        skip_depth = None;
                    }
                    continue;
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if skip_depth.is_some() || wanted(&stack, &name) {
                    continue;
                }
            }
            _ => {
                if skip_depth.is_some() {
                    continue;
                }
            }
        }
        w.write_event(ev)?;
    }
    String::from_utf8(w.into_inner()).map_err(|e| DomXmlError::Syntax(e.to_string()))
}

/// A prepared disk: where its volume is and its qemu format.
#[derive(Debug, Clone)]
pub struct DiskSource {
    pub path: String,
    /// `qcow2` or `raw`.
    pub format: String,
}

/// Rewrites each device `<name>` (a child of `<devices>`) through `f`, which gets its
/// events, start to end, and gives the ones to write; everything else is copied.
fn rewrite_devices(
    xml: &str,
    name: &[u8],
    mut f: impl FnMut(Vec<Event<'static>>) -> Vec<Event<'static>>,
) -> Result<String, DomXmlError> {
    parse(xml)?;
    let mut r = Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut w = Writer::new(Vec::with_capacity(xml.len() + 256));
    let mut depth = 0usize;
    let mut buf: Option<Vec<Event<'static>>> = None;
    loop {
        let ev = r.read_event()?;
        if let Event::Eof = ev {
            break;
        }
        let starts = depth == 2 && matches!(&ev, Event::Start(e) if e.name().as_ref() == name);
        match &ev {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
        if starts {
            buf = Some(vec![ev.into_owned()]);
            continue;
        }
        if let Some(b) = buf.as_mut() {
            b.push(ev.into_owned());
            if depth == 2 {
                for e in f(buf.take().unwrap_or_default()) {
                    w.write_event(e)?;
                }
            }
            continue;
        }
        w.write_event(ev)?;
    }
    String::from_utf8(w.into_inner()).map_err(|e| DomXmlError::Syntax(e.to_string()))
}

/// Points each `<disk>` whose `<target dev>` is a key of `disks` at its prepared
/// volume: `type="file"`, `<source file=.../>` and the driver's format.
pub fn set_disk_sources(
    xml: &str,
    disks: &std::collections::HashMap<String, DiskSource>,
) -> Result<String, DomXmlError> {
    rewrite_devices(xml, b"disk", |events| rewrite_disk(events, disks))
}

/// Points each `<lease>` whose `<key>` is a key of `targets` at its resolved place:
/// `<target path=... offset=...>`.
pub fn set_lease_targets(
    xml: &str,
    targets: &std::collections::HashMap<String, (String, u64)>,
) -> Result<String, DomXmlError> {
    rewrite_devices(xml, b"lease", |events| {
        let mut key = String::new();
        let mut in_key = false;
        for e in &events {
            match e {
                Event::Start(s) if s.name().as_ref() == b"key" => in_key = true,
                Event::End(x) if x.name().as_ref() == b"key" => in_key = false,
                Event::Text(t) if in_key => key.push_str(&text_of(t)),
                _ => {}
            }
        }
        let Some((path, off)) = targets.get(key.trim()) else {
            return events;
        };
        let attrs = [("path", path.as_str()), ("offset", &off.to_string())];
        events
            .into_iter()
            .map(|e| match e {
                Event::Empty(s) if s.name().as_ref() == b"target" => {
                    Event::Empty(with_attrs(&s, &[b"path", b"offset"], &attrs))
                }
                Event::Start(s) if s.name().as_ref() == b"target" => {
                    Event::Start(with_attrs(&s, &[b"path", b"offset"], &attrs))
                }
                e => e,
            })
            .collect()
    })
}

fn rewrite_disk(
    events: Vec<Event<'static>>,
    disks: &std::collections::HashMap<String, DiskSource>,
) -> Vec<Event<'static>> {
    let target = events.iter().find_map(|e| match e {
        Event::Empty(s) | Event::Start(s) if s.name().as_ref() == b"target" => attr(s, "dev"),
        _ => None,
    });
    let Some(src) = target.and_then(|t| disks.get(&t)) else {
        return events;
    };
    let has_source = events
        .iter()
        .any(|e| matches!(e, Event::Empty(s) | Event::Start(s) if s.name().as_ref() == b"source"));
    let has_driver = events
        .iter()
        .any(|e| matches!(e, Event::Empty(s) | Event::Start(s) if s.name().as_ref() == b"driver"));
    let mut out = Vec::with_capacity(events.len() + 2);
    let mut depth = 0;
    for e in events {
        let e = match e {
            Event::Start(s) if depth == 0 => {
                depth += 1;
                out.push(Event::Start(with_attrs(
                    &s,
                    &[b"type"],
                    &[("type", "file")],
                )));
                if !has_source {
                    let mut n = BytesStart::new("source");
                    n.push_attribute(("file", src.path.as_str()));
                    out.push(Event::Empty(n));
                }
                if !has_driver {
                    let mut n = BytesStart::new("driver");
                    n.push_attribute(("name", "qemu"));
                    n.push_attribute(("type", src.format.as_str()));
                    out.push(Event::Empty(n));
                }
                continue;
            }
            Event::Start(s) => {
                depth += 1;
                Event::Start(fix_child(&s, src))
            }
            Event::Empty(s) => Event::Empty(fix_child(&s, src)),
            Event::End(x) => {
                depth -= 1;
                Event::End(x)
            }
            other => other,
        };
        out.push(e);
    }
    out
}

/// A copy of `s` without the attributes in `drop`, plus those in `add`.
fn with_attrs(s: &BytesStart<'_>, drop: &[&[u8]], add: &[(&str, &str)]) -> BytesStart<'static> {
    let mut out = BytesStart::new(String::from_utf8_lossy(s.name().as_ref()).into_owned());
    for a in s.attributes().flatten() {
        if drop.contains(&a.key.as_ref()) {
            continue;
        }
        out.push_attribute(a);
    }
    for (k, v) in add {
        out.push_attribute((*k, *v));
    }
    out
}

fn fix_child(s: &BytesStart<'_>, src: &DiskSource) -> BytesStart<'static> {
    match s.name().as_ref() {
        b"source" => with_attrs(s, &[b"file", b"dev", b"name"], &[("file", &src.path)]),
        b"driver" => with_attrs(s, &[b"type"], &[("type", &src.format)]),
        _ => s.to_owned(),
    }
}

fn with_type(e: &BytesStart<'_>, domain_type: &str) -> BytesStart<'static> {
    let mut out = BytesStart::new(String::from_utf8_lossy(e.name().as_ref()).into_owned());
    out.push_attribute(("type", domain_type));
    for a in e.attributes().flatten() {
        if a.key.as_ref() == b"type" {
            continue;
        }
        out.push_attribute(a);
    }
    out
}

fn is_host_cpu(e: &BytesStart<'_>) -> bool {
    e.try_get_attribute("mode")
        .ok()
        .flatten()
        .map(|a| {
            matches!(
                a.value.as_ref(),
                b"host-passthrough" | b"host-model" | b"maximum"
            )
        })
        .unwrap_or(false)
}

fn is_halyard_element(e: &BytesStart<'_>) -> bool {
    e.attributes()
        .flatten()
        .any(|a| a.key.as_ref().starts_with(b"xmlns") && a.value.as_ref() == HALYARD_NS.as_bytes())
}

fn meta_events(m: &HalyardMeta) -> Vec<Event<'static>> {
    let mut root = BytesStart::new(format!("{HALYARD_PREFIX}:vm"));
    root.push_attribute((format!("xmlns:{HALYARD_PREFIX}").as_str(), HALYARD_NS));
    vec![
        Event::Start(root),
        Event::Start(BytesStart::new(format!("{HALYARD_PREFIX}:startTime"))),
        Event::Text(BytesText::new(&format!("{:.3}", m.start_time)).into_owned()),
        Event::End(BytesEnd::new(format!("{HALYARD_PREFIX}:startTime"))),
        Event::Start(BytesStart::new(format!("{HALYARD_PREFIX}:agentId"))),
        Event::Text(BytesText::new(&m.agent_id).into_owned()),
        Event::End(BytesEnd::new(format!("{HALYARD_PREFIX}:agentId"))),
        Event::End(BytesEnd::new(format!("{HALYARD_PREFIX}:vm"))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ENGINE_XML: &str = r#"<?xml version='1.0' encoding='utf-8'?>
<domain xmlns:ovirt-tune="http://ovirt.org/vm/tune/1.0" xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm">
  <name>vm1 &amp; co</name>
  <uuid>8D2E5C8A-3F0E-4B8C-9A1B-0123456789AB</uuid>
  <memory unit="MiB">256</memory>
  <vcpu current="1">16</vcpu>
  <metadata>
    <ovirt-tune:qos/>
    <ovirt-vm:vm>
      <ovirt-vm:clusterVersion>4.7</ovirt-vm:clusterVersion>
      <ovirt-vm:launchPaused>true</ovirt-vm:launchPaused>
    </ovirt-vm:vm>
  </metadata>
  <cpu match="exact" mode="host-passthrough"><topology cores="1" sockets="16" threads="1"/></cpu>
  <os><type arch="x86_64" machine="pc">hvm</type></os>
  <devices>
    <interface type="bridge"><mac address="56:6F:00:00:00:01"/><model type="virtio"/><source bridge="ovirtmgmt"/><target dev="vnet3"/></interface>
    <disk type="file" device="disk"><source file="/a/b.img"/><target dev="vda" bus="virtio"/></disk>
    <serial type="pty"><log file="/var/log/c.log"/><target port="0"/></serial>
  </devices>
</domain>"#;

    #[test]
    fn leases_are_read_and_resolved() {
        let id = "3c3a7e30-8d5f-4a43-9f43-2c5a8a1f0001";
        let sd = "7b3c1d2e-0000-4000-8000-000000000002";
        let xml = format!(
            "<domain type='kvm'><name>v</name><uuid>{id}</uuid><memory>1024</memory><devices><lease><key>{id}</key><lockspace>{sd}</lockspace><target offset='LEASE-OFFSET:{id}:{sd}' path='LEASE-PATH:{id}:{sd}'/></lease><disk type='file' device='cdrom'><target dev='hdc'/></disk></devices></domain>"
        );
        let info = parse(&xml).expect("parsed");
        assert_eq!(info.leases.len(), 1);
        assert_eq!(
            (
                info.leases[0].key.as_str(),
                info.leases[0].lockspace.as_str()
            ),
            (id, sd)
        );
        let mut t = std::collections::HashMap::new();
        t.insert(
            id.to_string(),
            ("/rhev/x/dom_md/xleases".to_string(), 3u64 << 20),
        );
        let out = set_lease_targets(&xml, &t).expect("resolved");
        let info = parse(&out).expect("parsed again");
        assert_eq!(info.leases[0].path, "/rhev/x/dom_md/xleases");
        assert_eq!(info.leases[0].offset, (3u64 << 20).to_string());
        assert!(
            !out.contains("LEASE-PATH") && out.contains("<disk"),
            "{out}"
        );
        // More than four leases are refused.
        let many = format!(
            "<domain type='kvm'><name>v</name><uuid>{id}</uuid><devices>{}</devices></domain>",
            "<lease><key>k</key><lockspace>l</lockspace><target path='/p' offset='0'/></lease>"
                .repeat(5)
        );
        assert!(parse(&many).is_err());
    }

    #[test]
    fn parses_engine_xml() {
        let i = parse(ENGINE_XML).expect("parses");
        assert_eq!(i.uuid, "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab");
        assert_eq!(i.name, "vm1 & co");
        assert_eq!(i.domain_type, "kvm");
        assert!(i.has_ovirt_metadata);
        assert!(i.launch_paused);
        assert_eq!(i.memory_kib, Some(256 * 1024));
        assert_eq!(i.vcpus, Some(16));
        assert_eq!(i.halyard, None);
        assert_eq!(i.nics.len(), 1);
        assert_eq!(i.nics[0].mac, "56:6f:00:00:00:01");
        assert_eq!(i.nics[0].target.as_deref(), Some("vnet3"));
        assert_eq!(i.disks[0].target, "vda");
        assert_eq!(i.disks[0].source.as_deref(), Some("/a/b.img"));
        assert_eq!(i.serial_log.as_deref(), Some("/var/log/c.log"));
    }

    #[test]
    fn prepare_sets_type_drops_host_cpu_and_adds_meta() {
        let out = prepare(
            ENGINE_XML,
            &Prepare {
                domain_type: "qemu",
                meta: HalyardMeta {
                    start_time: 12.5,
                    agent_id: "a1".into(),
                },
            },
        )
        .expect("prepares");
        assert!(!out.contains("host-passthrough"));
        // The VM's own CPU shape stays: topology (and NUMA cells, if any).
        assert!(
            out.contains(r#"<cpu><topology cores="1" sockets="16" threads="1"/></cpu>"#),
            "{out}"
        );
        let i = parse(&out).expect("still parses");
        assert_eq!(i.domain_type, "qemu");
        assert_eq!(
            i.halyard,
            Some(HalyardMeta {
                start_time: 12.5,
                agent_id: "a1".into()
            })
        );
        assert!(i.has_ovirt_metadata);
        assert_eq!(i.name, "vm1 & co");
        // Preparing again replaces the metadata rather than adding a second copy.
        let again = prepare(
            &out,
            &Prepare {
                domain_type: "kvm",
                meta: HalyardMeta {
                    start_time: 20.0,
                    agent_id: "a2".into(),
                },
            },
        )
        .expect("prepares");
        assert_eq!(again.matches(HALYARD_NS).count(), 1);
        assert_eq!(
            parse(&again).expect("parses").halyard,
            Some(HalyardMeta {
                start_time: 20.0,
                agent_id: "a2".into()
            })
        );
    }

    #[test]
    fn prepare_without_metadata_adds_it() {
        let xml = "<domain type='kvm'><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid></domain>";
        let out = prepare(
            xml,
            &Prepare {
                domain_type: "kvm",
                meta: HalyardMeta {
                    start_time: 1.0,
                    agent_id: String::new(),
                },
            },
        )
        .expect("prepares");
        assert!(parse(&out).expect("parses").halyard.is_some());
        let xml = "<domain type='kvm'><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid><metadata/></domain>";
        let out = prepare(
            xml,
            &Prepare {
                domain_type: "kvm",
                meta: HalyardMeta {
                    start_time: 1.0,
                    agent_id: String::new(),
                },
            },
        )
        .expect("prepares");
        assert!(parse(&out).expect("parses").halyard.is_some());
    }

    #[test]
    fn drives_are_read_and_sources_set() {
        let xml = r#"<domain xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm"><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid>
<metadata><ovirt-vm:vm><ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:domainID>275766CB-c7d8-43d6-a663-4e52160de620</ovirt-vm:domainID><ovirt-vm:imageID>8d2e5c8a-3f0e-4b8c-9a1b-00000000000f</ovirt-vm:imageID><ovirt-vm:poolID>8d2e5c8a-3f0e-4b8c-9a1b-0000000000aa</ovirt-vm:poolID><ovirt-vm:volumeID>11111111-2222-3333-4444-000000000001</ovirt-vm:volumeID></ovirt-vm:device></ovirt-vm:vm></metadata>
<devices><disk type="block" device="disk"><source dev="/rhev/x"/><target dev="vda" bus="virtio"/><driver name="qemu" type="raw" cache="none"/></disk><disk device="cdrom"><target dev="sdc"/></disk></devices></domain>"#;
        let i = parse(xml).expect("parses");
        assert_eq!(i.drives.len(), 1);
        assert_eq!(i.drives[0].name, "vda");
        assert_eq!(i.drives[0].domain, "275766cb-c7d8-43d6-a663-4e52160de620");
        let mut m = std::collections::HashMap::new();
        m.insert(
            "vda".to_string(),
            DiskSource {
                path: "/a/b".into(),
                format: "qcow2".into(),
            },
        );
        let out = set_disk_sources(xml, &m).expect("rewrites");
        let again = parse(&out).expect("parses");
        assert_eq!(again.disks[0].source.as_deref(), Some("/a/b"));
        assert!(out.contains(r#"<disk device="disk" type="file">"#), "{out}");
        assert!(out.contains(r#"type="qcow2""#), "{out}");
        assert!(!out.contains("/rhev/x"));
        assert!(
            out.contains(r#"<disk device="cdrom"><target dev="sdc"/></disk>"#),
            "other disks untouched: {out}"
        );
        // A disk without source or driver gets both.
        let bare = xml
            .replace(r#"<source dev="/rhev/x"/>"#, "")
            .replace(r#"<driver name="qemu" type="raw" cache="none"/>"#, "");
        let out = set_disk_sources(&bare, &m).expect("rewrites");
        assert_eq!(
            parse(&out).expect("parses").disks[0].source.as_deref(),
            Some("/a/b")
        );
        assert!(out.contains(r#"<driver name="qemu" type="qcow2"/>"#));
    }

    #[test]
    fn rejects_bad_documents() {
        for bad in [
            "",
            "<domain>",
            "<vm/>",
            "<domain><name>a</name></domain>",
            "<domain><uuid>../../x</uuid><name>a</name></domain>",
            "<!DOCTYPE d [<!ENTITY a \"aaaa\">]><domain><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid><name>&a;</name></domain>",
            "<domain></domain><domain></domain>",
            "not xml at all",
            "<domain type=\"kain type=\"kvm\"><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid><name>a</name></domain>",
            "<domain><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid><name>a</nam></domain>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must fail");
        }
    }

    #[test]
    fn many_attributes_are_refused_in_linear_time() {
        let attrs: String = (0..60_000).map(|i| format!(" a{i}=\"\"")).collect();
        let xml = format!(
            "<domain{attrs}><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid></domain>"
        );
        let t = std::time::Instant::now();
        let e = parse(&xml).expect_err("refused");
        let took = t.elapsed();
        assert!(e.to_string().contains("more than 64 attributes"), "{e}");
        eprintln!(
            "60,000 attributes ({} bytes) refused in {took:?}",
            xml.len()
        );
        assert!(took < std::time::Duration::from_millis(50), "{took:?}");
        // 64 are fine.
        let attrs: String = (0..63).map(|i| format!(" a{i}=\"\"")).collect();
        let ok = format!(
            "<domain{attrs}><name>a</name><uuid>8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab</uuid></domain>"
        );
        parse(&ok).expect("64 attributes parse");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,400}") {
            let _ = parse(&s);
            let _ = prepare(&s, &Prepare { domain_type: "qemu", meta: HalyardMeta::default() });
        }

        #[test]
        fn parse_never_panics_on_xmlish(s in "(<[a-z:/]{0,6}( [a-z]{1,3}='[^']{0,4}')?/?>|[a-z&;#0-9]{0,5}){0,30}") {
            let _ = parse(&s);
            let _ = prepare(&s, &Prepare { domain_type: "qemu", meta: HalyardMeta::default() });
        }
    }

    #[test]
    fn payloads_are_read_and_their_placeholder_replaced() {
        let xml = r#"<domain xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm"><name>p</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<devices><disk type="file" device="cdrom" snapshot="no"><driver name="qemu" type="raw" error_policy="report"/><source file="PAYLOAD:" startupPolicy="optional"/><target dev="hdb" bus="ide"/><readonly/></disk></devices>
<metadata><ovirt-vm:vm><ovirt-vm:device devtype="disk" name="hdb"><ovirt-vm:payload><ovirt-vm:volId>config-2</ovirt-vm:volId><ovirt-vm:file path="openstack/latest/meta_data.json">e30=</ovirt-vm:file><ovirt-vm:file path="empty"/></ovirt-vm:payload></ovirt-vm:device></ovirt-vm:vm></metadata></domain>"#;
        let info = parse(xml).expect("parses");
        assert!(info.drives.is_empty(), "a payload is no storage drive");
        assert_eq!(
            info.payloads,
            vec![crate::payload::PayloadRef {
                name: "hdb".into(),
                vol_id: Some("config-2".into()),
                files: vec![
                    ("openstack/latest/meta_data.json".into(), "e30=".into()),
                    ("empty".into(), String::new())
                ],
            }]
        );
        assert_eq!(info.disks[0].source.as_deref(), Some("PAYLOAD:"));
        let mut m = std::collections::HashMap::new();
        m.insert(
            "hdb".to_string(),
            DiskSource {
                path: "/run/p/x.img".into(),
                format: "raw".into(),
            },
        );
        let out = set_disk_sources(xml, &m).expect("rewrites");
        assert!(
            out.contains(r#"<source startupPolicy="optional" file="/run/p/x.img"/>"#),
            "{out}"
        );
    }
}
