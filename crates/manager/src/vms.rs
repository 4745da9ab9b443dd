//! VM lifecycle: the scheduler (up hosts of the VM's cluster with enough free memory,
//! most free memory first), the libvirt domain XML with the `ovirt-vm` metadata, and
//! the actions (start, stop, shutdown, reboot, suspend).

use std::sync::Arc;

use halyard_proto::vdsm::VmStats;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::model::*;
use crate::state::Manager;

/// Why an action cannot run (becomes an API fault).
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Where Debian's `ovmf` (and RHEL's edk2-ovmf) put the UEFI firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";
/// Where libvirt keeps VMs' UEFI variable stores (VDSM's path too).
pub const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

/// The domain XML the Manager sends with VM.create.
/// `drives`: disk devices and their ovirt-vm metadata (see [`Manager::drives_xml`]).
pub fn domain_xml(
    vm: &Vm,
    nics: &[(Nic, String)],
    drives: &(String, String),
    console_dir: &str,
    host_uuid: &str,
) -> String {
    let mem_kib = vm.memory / 1024;
    let vcpus = (vm.sockets * vm.cores * vm.threads).max(1);
    let mut os = format!(
        "<type arch=\"x86_64\" machine=\"{}\">hvm</type>",
        if vm.q35() { "q35" } else { "pc" }
    );
    // UEFI as oVirt's LibvirtVmXmlBuilder writes it: OVMF's code read-only, the VM's
    // own variables store made from the template at the first start.
    let (code, vars) = match vm.bios() {
        "q35_ovmf" => ("OVMF_CODE.fd", "OVMF_VARS.fd"),
        "q35_secure_boot" => ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd"),
        _ => ("", ""),
    };
    if !code.is_empty() {
        os.push_str(&format!(
            "<loader readonly=\"yes\" secure=\"{secure}\" type=\"pflash\">{OVMF_DIR}/{code}</loader><nvram template=\"{OVMF_DIR}/{vars}\">{NVRAM_DIR}/{id}.fd</nvram>",
            secure = if vm.bios() == "q35_secure_boot" { "yes" } else { "no" },
            id = vm.id
        ));
    }
    let smm = if vm.bios() == "q35_secure_boot" {
        "<smm state=\"on\"/>"
    } else {
        ""
    };
    if !vm.kernel.is_empty() {
        os.push_str(&format!("<kernel>{}</kernel>", esc(&vm.kernel)));
        if !vm.initrd.is_empty() {
            os.push_str(&format!("<initrd>{}</initrd>", esc(&vm.initrd)));
        }
        if !vm.cmdline.is_empty() {
            os.push_str(&format!("<cmdline>{}</cmdline>", esc(&vm.cmdline)));
        }
    }
    // The boot order (oVirt's os/boot/devices; a kernel given directly boots first, as
    // QEMU does it).
    if vm.boot_devices.is_empty() {
        os.push_str("<boot dev=\"hd\"/>");
    }
    for d in &vm.boot_devices {
        os.push_str(&format!("<boot dev=\"{}\"/>", esc(d)));
    }
    // The guest's SMBIOS system information, as oVirt writes it; the serial by the
    // VM's policy (none: the host's hardware UUID, as VDSM gives).
    os.push_str("<smbios mode=\"sysinfo\"/>");
    let serial = match &vm.serial_number {
        Some(s) => s.value_for(vm, host_uuid),
        None => host_uuid.to_string(),
    };
    let sysinfo = format!(
        "<sysinfo type=\"smbios\"><system><entry name=\"manufacturer\">oVirt</entry><entry name=\"product\">OS-NAME:</entry><entry name=\"version\">OS-VERSION:</entry><entry name=\"family\">oVirt</entry>{serial}<entry name=\"uuid\">{id}</entry></system></sysinfo>",
        serial = if serial.is_empty() {
            String::new()
        } else {
            format!("<entry name=\"serial\">{}</entry>", esc(&serial))
        },
        id = vm.id
    );
    let mut devices = if vm.console_enabled != Some(false) {
        format!(
            "<serial type=\"pty\"><log file=\"{dir}/{id}.log\" append=\"off\"/><target port=\"0\"/></serial>\
             <console type=\"pty\"><target type=\"serial\" port=\"0\"/></console>",
            dir = esc(console_dir.trim_end_matches('/')),
            id = vm.id
        )
    } else {
        String::new()
    };
    devices.push_str(
        "<channel type=\"unix\"><target type=\"virtio\" name=\"org.qemu.guest_agent.0\"/></channel>\
         <memballoon model=\"none\"/>",
    );
    devices.push_str(&drives.0);
    // The VM lease as the engine sends it: the host resolves the placeholders from the
    // domain's xleases index (VDSM's lease.prepare) and libvirt acquires it through
    // sanlock before QEMU runs.
    if let Some(sd) = &vm.lease_domain {
        devices.push_str(&format!(
            "<lease><key>{id}</key><lockspace>{sd}</lockspace><target offset=\"LEASE-OFFSET:{id}:{sd}\" path=\"LEASE-PATH:{id}:{sd}\"/></lease>",
            id = vm.id,
            sd = esc(sd)
        ));
    }
    let mut meta_devices = drives.1.clone();
    for (n, bridge) in nics {
        devices.push_str(&format!(
            "<interface type=\"bridge\"><mac address=\"{mac}\"/><model type=\"{model}\"/><source bridge=\"{br}\"/><alias name=\"ua-{id}\"/></interface>",
            mac = esc(&n.mac),
            model = if n.interface == "virtio" { "virtio" } else { "e1000" },
            br = esc(bridge),
            id = n.id
        ));
        meta_devices.push_str(&format!(
            "<ovirt-vm:device mac_address=\"{}\"><ovirt-vm:network>{}</ovirt-vm:network><ovirt-vm:custom/></ovirt-vm:device>",
            esc(&n.mac),
            esc(bridge)
        ));
    }
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<domain xmlns:ovirt-tune="http://ovirt.org/vm/tune/1.0" xmlns:ovirt-vm="http://ovirt.org/vm/1.0" type="kvm">
<name>{name}</name>
<uuid>{id}</uuid>
<memory>{mem_kib}</memory>
<currentMemory>{mem_kib}</currentMemory>
<vcpu current="{vcpus}">{vcpus}</vcpu>
{sysinfo}
<metadata><ovirt-tune:qos/><ovirt-vm:vm><ovirt-vm:clusterVersion>4.7</ovirt-vm:clusterVersion><ovirt-vm:custom/>{meta_devices}<ovirt-vm:launchPaused>false</ovirt-vm:launchPaused><ovirt-vm:resumeBehavior>auto_resume</ovirt-vm:resumeBehavior></ovirt-vm:vm></metadata>
<cpu match="exact" mode="host-passthrough"><topology cores="{cores}" sockets="{sockets}" threads="{threads}"/>{numa}</cpu>
<os>{os}</os>
<features><acpi/><apic/>{smm}</features>
<clock offset="variable" adjustment="0"><timer name="rtc" tickpolicy="catchup"/><timer name="pit" tickpolicy="delay"/></clock>
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
<devices>{devices}</devices>
</domain>"#,
        name = esc(&vm.name),
        id = vm.id,
        cores = vm.cores.max(1),
        sockets = vm.sockets.max(1),
        threads = vm.threads.max(1),
        numa = numa_cells(&vm.numa_nodes),
    )
}

/// oVirt's checks of a VM's NUMA configuration (NumaValidator.validateVmNumaConfig):
/// no more nodes than vCPUs, indexes unique and 0..n, each vCPU of the VM in at most
/// one node, the nodes' memory at most the VM's.
pub fn numa_check(vm: &Vm, nodes: &[VmNumaNode]) -> Result<(), String> {
    if nodes.is_empty() {
        return Ok(());
    }
    let vcpus = (u64::from(vm.sockets.max(1))
        * u64::from(vm.cores.max(1))
        * u64::from(vm.threads.max(1))) as usize;
    if nodes.len() > vcpus {
        return Err(format!(
            "the VM has more NUMA nodes ({}) than vCPUs ({vcpus})",
            nodes.len()
        ));
    }
    let mut seen = vec![false; nodes.len()];
    for n in nodes {
        match seen.get_mut(n.index as usize) {
            Some(s) if !*s => *s = true,
            Some(_) => return Err(format!("NUMA node index {} is used twice", n.index)),
            None => {
                return Err(format!(
                    "NUMA node indexes must be 0 to {} (continuous); {} is not",
                    nodes.len() - 1,
                    n.index
                ))
            }
        }
    }
    // A set of what the nodes name (not a flag per vCPU: a VM may have 16M of them).
    let mut used = std::collections::HashSet::new();
    for c in nodes.iter().flat_map(|n| &n.cpus) {
        if *c as usize >= vcpus {
            return Err(format!(
                "vCPU index {c} is out of range: the VM's vCPUs are 0 to {}",
                vcpus - 1
            ));
        }
        if !used.insert(*c) {
            return Err(format!("vCPU {c} is in more than one NUMA node"));
        }
    }
    let total: u64 = nodes.iter().map(|n| n.memory).sum();
    let vm_mib = vm.memory >> 20;
    if total > vm_mib {
        return Err(format!(
            "the NUMA nodes' memory ({total} MiB) exceeds the VM's ({vm_mib} MiB)"
        ));
    }
    Ok(())
}

/// The `<numa>` of a domain's `<cpu>` (empty without nodes).
pub fn numa_cells(nodes: &[VmNumaNode]) -> String {
    if nodes.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<&VmNumaNode> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.index);
    let mut s = String::from("<numa>");
    for n in sorted {
        let cpus: Vec<String> = n.cpus.iter().map(u32::to_string).collect();
        let cpus = if cpus.is_empty() {
            String::new()
        } else {
            format!(" cpus=\"{}\"", cpus.join(","))
        };
        s.push_str(&format!(
            "<cell id=\"{}\"{cpus} memory=\"{}\" unit=\"KiB\"/>",
            n.index,
            n.memory * 1024
        ));
    }
    s.push_str("</numa>");
    s
}

/// Guest agent details from a VM's stats.
pub fn apply_guest_info(g: &mut GuestInfo, s: &VmStats) {
    if let Some(f) = s.guest_fqdn.as_ref().filter(|f| !f.is_empty()) {
        g.fqdn = f.clone();
    }
    if let Some(os) = &s.guest_os_info {
        g.os = os
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
    }
    if let Some(tz) = &s.guest_timezone {
        let name = tz
            .get("zone")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let off = tz.get("offset").and_then(|v| v.as_i64()).unwrap_or(0);
        g.timezone = Some((name, off * 60));
    }
    if let Some(ifs) = &s.net_ifaces {
        g.nics = ifs
            .iter()
            .map(|i| {
                let name = i
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                let hw = i
                    .get("hw")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                let mut ips: Vec<String> = Vec::new();
                for k in ["inet", "inet6"] {
                    if let Some(a) = i.get(k).and_then(|v| v.as_array()) {
                        ips.extend(a.iter().filter_map(|x| x.as_str().map(str::to_string)));
                    }
                }
                (name, hw, ips)
            })
            .collect();
    }
    if let Some(d) = &s.display_info {
        let text = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .chars()
                .take(64)
                .collect::<String>()
        };
        let num = |m: &serde_json::Map<String, Value>, k: &str| {
            m.get(k)
                .and_then(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| v.as_i64())
                })
                .filter(|p| (-1..=65535).contains(p))
                .unwrap_or(-1)
        };
        g.display = d
            .iter()
            .take(4)
            .map(|m| {
                (
                    text(m, "type"),
                    num(m, "port"),
                    num(m, "tlsPort"),
                    text(m, "ipAddress"),
                )
            })
            .filter(|x| matches!(x.0.as_str(), "vnc" | "spice"))
            .collect();
    }
    if let Some(ips) = s.guest_ips.as_ref().filter(|s| !s.is_empty()) {
        g.ips = ips.split_whitespace().map(str::to_string).collect();
    }
    if let Some(u) = s.username.as_ref().filter(|u| *u != "Unknown") {
        g.users = u.clone();
    }
    if let Some(c) = s.guest_cpu_count.filter(|c| *c > 0) {
        g.cpu_count = Some(c);
    }
    match s.extra.get("guestAgentStatus").and_then(|v| v.as_str()) {
        Some("available") => g.agent = Some(true),
        Some("unavailable") => g.agent = Some(false),
        _ => {}
    }
}

/// A VM's graphics devices (oVirt's LibvirtVmXmlBuilder: VNC with a VGA card, SPICE
/// with QXL), listening on the host's address. Their password is random and already
/// expired: nobody connects until the Manager sets a ticket (VM.updateDevice).
pub fn graphics_xml(vm: &Vm, listen: &str) -> String {
    let mut s = String::new();
    for g in &vm.graphics {
        // VNC passwords have at most 8 characters (libvirt refuses more).
        let mut pw = uuid::Uuid::new_v4().simple().to_string();
        if g == "vnc" {
            pw.truncate(8);
        }
        let extra = if g == "spice" {
            "<channel name=\"main\" mode=\"insecure\"/><channel name=\"display\" mode=\"insecure\"/><channel name=\"inputs\" mode=\"insecure\"/><channel name=\"cursor\" mode=\"insecure\"/>"
        } else {
            ""
        };
        s.push_str(&format!(
            "<graphics type=\"{g}\" autoport=\"yes\" passwd=\"{pw}\" passwdValidTo=\"1970-01-01T00:00:01\"><listen type=\"address\" address=\"{}\"/>{extra}</graphics>",
            esc(listen)
        ));
    }
    if let Some(first) = vm.graphics.first() {
        s.push_str(if first == "spice" {
            "<video><model type=\"qxl\" ram=\"65536\" vram=\"8192\" vgamem=\"16384\" heads=\"1\"/></video>"
        } else {
            "<video><model type=\"vga\" vram=\"16384\" heads=\"1\"/></video>"
        });
    }
    s
}

/// Boot settings for one run of a VM (not kept).
#[derive(Debug, Clone, Default)]
pub struct RunOnce {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// The boot order of this run (`vm/os/boot/devices`).
    pub boot_devices: Option<Vec<String>>,
    /// The OS type of this run (`vm/os/type`; it picks sysprep or cloud-init).
    pub os_type: Option<String>,
    /// The initialization of this run (`vm/initialization`), instead of the VM's.
    pub initialization: Option<crate::vminit::Initialization>,
    /// `use_cloud_init` / `use_sysprep` / `use_initialization` (by the OS type):
    /// attach it even when the VM ran with it before. None: only at the VM's first run
    /// with an initialization, as oVirt.
    pub init: Option<InitAsk>,
}

/// What a start asks to initialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitAsk {
    CloudInit,
    Sysprep,
    /// cloud-init, or sysprep for Windows.
    ByOs,
}

/// The initialization payload a start gets (oVirt's RunVmCommand.updateVmInit): the
/// kind asked for, else at the first run of a VM with an initialization; sysprep for
/// Windows, cloud-init for the rest.
pub fn payload_for(vm: &Vm, once: &RunOnce) -> Result<Option<crate::vminit::Payload>, String> {
    use crate::vminit::Kind;
    let os = once.os_type.as_deref().unwrap_or(&vm.os_type);
    let by_os = if os.starts_with("windows") {
        Kind::Sysprep
    } else {
        Kind::CloudInit
    };
    let kind = match once.init {
        Some(InitAsk::CloudInit) => Some(Kind::CloudInit),
        Some(InitAsk::Sysprep) => Some(Kind::Sysprep),
        Some(InitAsk::ByOs) => Some(by_os),
        None if !vm.initialized
            && (vm.initialization.is_some() || once.initialization.is_some()) =>
        {
            Some(by_os)
        }
        None => None,
    };
    let init = once
        .initialization
        .clone()
        .or_else(|| vm.initialization.clone())
        .unwrap_or_default();
    match kind {
        None => Ok(None),
        Some(Kind::CloudInit) => init.cloud_init(&uuid::Uuid::new_v4().to_string()).map(Some),
        Some(Kind::Sysprep) => init.sysprep(os, vm.q35()).map(Some),
    }
}

/// A MAC in oVirt's default pool range, derived from the NIC id.
pub fn mac_for(id: &str) -> String {
    let b = uuid::Uuid::parse_str(id)
        .map(|u| *u.as_bytes())
        .unwrap_or([0u8; 16]);
    format!(
        "56:6f:{:02x}:{:02x}:{:02x}:{:02x}",
        b[12], b[13], b[14], b[15]
    )
}

/// Picks a host: up, in the VM's cluster, with enough free memory (oVirt's
/// scheduling memory: physical memory less what its VMs are given and a reserve);
/// the one with the most free memory first.
///
/// A VM with disks runs only on hosts that `reach` every domain of its disks (connected
/// to the pool, no domain reported invalid).
pub fn pick_host(
    inv: &Inventory,
    vm: &Vm,
    reach: impl Fn(&Host, &str) -> bool,
) -> Result<String, VmError> {
    pick_host_except(inv, vm, reach, &[])
}

/// [`pick_host`] among the hosts not in `except` (a migration's source).
pub fn pick_host_except(
    inv: &Inventory,
    vm: &Vm,
    reach: impl Fn(&Host, &str) -> bool,
    except: &[&str],
) -> Result<String, VmError> {
    let domains: Vec<&str> = inv
        .disks_of(&vm.id)
        .iter()
        .map(|d| d.storage_domain.as_str())
        .collect();
    let mut candidates: Vec<(&Host, u64)> = inv
        .hosts
        .values()
        .filter(|h| h.status == "up" && h.cluster == vm.cluster && !except.contains(&h.id.as_str()))
        .map(|h| (h, inv.scheduling_memory(h)))
        .collect();
    if candidates.is_empty() {
        return Err(VmError::Conflict(
            "Cannot run VM. There is no host that satisfies current scheduling constraints: no host in the VM's cluster is up.".into(),
        ));
    }
    candidates.retain(|(h, _)| domains.iter().all(|d| reach(h, d)));
    if candidates.is_empty() {
        return Err(VmError::Conflict(
            "Cannot run VM. There is no host that satisfies current scheduling constraints: no up host is connected to every storage domain of the VM's disks.".into(),
        ));
    }
    // The cluster's scheduling policy: its filters, then its weights.
    let policy = crate::scheduling::active(inv, &vm.cluster);
    if policy.filters.contains("PinToHost") && !vm.placement.hosts.is_empty() {
        candidates.retain(|(h, _)| vm.placement.hosts.contains(&h.id));
        if candidates.is_empty() {
            return Err(VmError::Conflict(
                "Cannot run VM. There is no host that satisfies current scheduling constraints: filter PinToHost: none of the hosts the VM is pinned to is up and usable.".into(),
            ));
        }
    }
    if policy.filters.contains("Memory") {
        candidates.retain(|(_, free)| *free >= vm.memory);
        if candidates.is_empty() {
            return Err(VmError::Conflict(format!(
                "Cannot run VM. There is no host that satisfies current scheduling constraints: filter Memory: no host has {} MiB of free memory.",
                vm.memory >> 20
            )));
        }
    }
    if policy.filters.contains("Network") {
        // oVirt's Network filter: every network of the VM's plugged NICs on the host.
        let mut wanted: Vec<String> = inv
            .plugged_nics(&vm.id)
            .into_iter()
            .map(|(_, net)| net)
            .collect();
        wanted.sort();
        wanted.dedup();
        let lacks = |h: &Host| -> Vec<&str> {
            wanted
                .iter()
                .filter(|w| h.networks.binary_search(w).is_err())
                .map(String::as_str)
                .collect()
        };
        let before = candidates.clone();
        candidates.retain(|(h, _)| lacks(h).is_empty());
        if candidates.is_empty() {
            // Every host lacks something: the fault says what, host by host.
            let missing: Vec<String> = before
                .iter()
                .map(|(h, _)| format!("host {} lacks network(s) {}", h.name, lacks(h).join(", ")))
                .collect();
            return Err(VmError::Conflict(format!(
                "Cannot run VM. There is no host that satisfies current scheduling constraints: filter Network: {}.",
                missing.join("; ")
            )));
        }
    }
    let mut ids: Vec<String> = candidates.iter().map(|(h, _)| h.id.clone()).collect();
    let penalty = crate::scheduling::affinity(inv, vm, &policy, &mut ids).map_err(|why| {
        VmError::Conflict(format!(
            "Cannot run VM. There is no host that satisfies current scheduling constraints: {why}."
        ))
    })?;
    let kept: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    candidates.retain(|(h, _)| kept.contains(h.id.as_str()));
    crate::scheduling::weigh(inv, &policy, &mut candidates, &penalty);
    candidates
        .first()
        .map(|(h, _)| h.id.clone())
        .ok_or_else(|| {
            VmError::Conflict(format!(
                "Cannot run VM. There is no host that satisfies current scheduling constraints: no host has {} MiB of free memory.",
                vm.memory >> 20
            ))
        })
}
impl Manager {
    /// Picks a host for `vm` (see [`pick_host`]).
    pub fn schedule(&self, vm: &Vm) -> Result<String, VmError> {
        self.schedule_except(vm, &[])
    }

    /// [`Manager::schedule`] among the hosts not in `except`.
    pub fn schedule_except(&self, vm: &Vm, except: &[&str]) -> Result<String, VmError> {
        let inv = self.read();
        pick_host_except(
            &inv,
            vm,
            |h, sd| {
                let dc = inv
                    .storage_domains
                    .get(sd)
                    .and_then(|s| s.data_center.clone())
                    .unwrap_or_default();
                self.pool_connected(&dc, &h.id) && !h.domains_bad.iter().any(|b| b == sd)
            },
            except,
        )
    }

    /// Sets a running VM's status after an action (a Down that arrived meanwhile wins).
    async fn set_vm_status_unless_down(&self, id: &str, status: &str) {
        let r = self
            .update(id, |v: &mut Vm| {
                if v.status != "down" {
                    v.status = status.into();
                }
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "cannot store a VM status");
        }
    }

    pub(crate) fn vm(&self, id: &str) -> Result<Vm, VmError> {
        self.read()
            .vms
            .get(id)
            .cloned()
            .ok_or_else(|| VmError::NotFound(format!("VM {id} not found")))
    }

    /// Starts a VM: placement under the write lock (the VM is committed to its host
    /// as wait_for_launch, so concurrent starts see its memory taken), then VM.create
    /// outside the lock; if the host refuses, the placement is undone.
    pub async fn vm_start(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        self.vm_start_once(id, &RunOnce::default()).await
    }

    /// [`Manager::vm_start`] with boot settings for this run only (oVirt's run once).
    pub async fn vm_start_once(self: &Arc<Self>, id: &str, once: &RunOnce) -> Result<(), VmError> {
        self.start_on(id, once, false, None).await
    }

    /// An HA restart of a down VM (see `ha`).
    pub async fn vm_start_ha(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        self.start_on(id, &RunOnce::default(), true, None).await
    }

    /// An HA restart of a leased VM whose host `old` does not answer, on another host:
    /// the new host's libvirt starts it only once it holds the VM's lease. Until then
    /// (a failed start) the VM stays `unknown` on `old`.
    pub async fn vm_start_ha_elsewhere(
        self: &Arc<Self>,
        id: &str,
        old: &str,
    ) -> Result<(), VmError> {
        self.start_on(id, &RunOnce::default(), true, Some(old))
            .await
    }

    async fn start_on(
        self: &Arc<Self>,
        id: &str,
        once: &RunOnce,
        by_ha: bool,
        ha_from: Option<&str>,
    ) -> Result<(), VmError> {
        let (vm, host_id, client, xml, initializing) = {
            let _g = self.write_lock.lock().await;
            let mut vm = self.vm(id)?;
            match ha_from {
                None if vm.status != "down" => {
                    return Err(VmError::Conflict(format!(
                        "Cannot run VM. VM {} is running.",
                        vm.name
                    )))
                }
                Some(old)
                    if vm.status != "unknown"
                        || vm.host.as_deref() != Some(old)
                        || vm.lease_domain.is_none() =>
                {
                    return Err(VmError::Conflict(format!(
                        "Cannot restart VM {} elsewhere: it is {} and not a leased VM of the non-responsive host.",
                        vm.name, vm.status
                    )))
                }
                _ => {}
            }
            {
                let inv = self.read();
                if inv.disks_of(id).iter().any(|d| d.status != "ok")
                    || inv
                        .snapshots
                        .values()
                        .any(|s| s.vm == id && s.status == "locked")
                    || inv
                        .templates
                        .values()
                        .any(|t| t.source_vm.as_deref() == Some(id) && t.status == "locked")
                {
                    return Err(VmError::Conflict(format!(
                        "Cannot run VM. VM {} has locked or illegal disks (an operation on them runs).",
                        vm.name
                    )));
                }
            }
            numa_check(&vm, &vm.numa_nodes)
                .map_err(|e| VmError::Conflict(format!("Cannot run VM {}: {e}.", vm.name)))?;
            let except: Vec<&str> = ha_from.into_iter().collect();
            let host_id = self.schedule_except(&vm, &except)?;
            let client = self
                .host_client(&host_id)
                .await
                .ok_or_else(|| VmError::Failed("the chosen host is not connected".into()))?;
            let nics = self.read().plugged_nics(id);
            let payload = payload_for(&vm, once)
                .map_err(|e| VmError::Conflict(format!("Cannot run VM {}: {e}.", vm.name)))?;
            let mut drives = self
                .drives_xml(id, payload.as_ref())
                .map_err(|e| VmError::Conflict(format!("Cannot run VM {}: {e}.", vm.name)))?;
            let initializing = payload.is_some();
            let listen = self
                .read()
                .hosts
                .get(&host_id)
                .map(|h| h.address.clone())
                .unwrap_or_default();
            drives.0.push_str(&graphics_xml(&vm, &listen));
            let mut boot = vm.clone();
            for (field, v) in [
                (&mut boot.kernel, &once.kernel),
                (&mut boot.initrd, &once.initrd),
                (&mut boot.cmdline, &once.cmdline),
            ] {
                if let Some(v) = v {
                    *field = v.clone();
                }
            }
            if let Some(b) = &once.boot_devices {
                boot.boot_devices = b.clone();
            }
            let host_uuid = self
                .read()
                .hosts
                .get(&host_id)
                .map(|h| h.hardware_uuid.clone())
                .unwrap_or_default();
            let xml = domain_xml(&boot, &nics, &drives, &self.cfg.vm_console_dir, &host_uuid);
            let placed = self
                .update(id, |v: &mut Vm| {
                    v.status = "wait_for_launch".into();
                    v.creating = true;
                    v.host = Some(host_id.clone());
                    v.start_time = Some(now_ms());
                    v.cdrom_current = v.cdrom.clone();
                    v.stop_time = None;
                    v.stop_reason.clear();
                    v.ha_from = ha_from.map(str::to_string);
                    v.clone()
                })
                .await
                .map_err(|e| VmError::Failed(e.to_string()))?;
            vm = placed.ok_or_else(|| VmError::NotFound(format!("VM {id} not found")))?;
            (vm, host_id, client, xml, initializing)
        };
        let host = self
            .read()
            .hosts
            .get(&host_id)
            .map(|h| h.name.clone())
            .unwrap_or_default();
        let created = client
            .call_value(
                "VM.create",
                json!({"vmID": vm.id, "vmParams": {"vmId": vm.id, "xml": xml}}),
            )
            .await;
        // The host has answered: from now on its samples tell whether the VM runs (the
        // grace for a launch counts from here).
        self.update_memory(id, |v: &mut Vm| {
            v.creating = false;
            if v.status == "wait_for_launch" {
                v.start_time = Some(now_ms());
            }
        })
        .await;
        if let Err(e) = created {
            let _g = self.write_lock.lock().await;
            let _ = self
                .update(id, |v: &mut Vm| {
                    if v.status == "wait_for_launch" && v.host.as_deref() == Some(host_id.as_str())
                    {
                        if let Some(old) = v.ha_from.take() {
                            // Still where it was: unknown on the host that does not answer.
                            v.status = "unknown".into();
                            v.host = Some(old);
                            return;
                        }
                        v.status = "down".into();
                        v.host = None;
                        v.start_time = None;
                        v.stop_time = Some(now_ms());
                    }
                })
                .await;
            self.event(
                119,
                "error",
                format!("Failed to run VM {} on Host {host}: {e}", vm.name),
                Some(&host_id),
                Some(id),
            )
            .await;
            return Err(VmError::Failed(format!(
                "VM.create failed on the host: {e}"
            )));
        }
        if initializing {
            // As oVirt's is_initialized: the next start does not initialize again
            // unless asked.
            let _ = self.update(id, |v: &mut Vm| v.initialized = true).await;
        }
        info!(vm = %vm.name, host = %host, initializing, "starting VM");
        let by = if by_ha {
            "the system (it is highly available)"
        } else {
            "admin@internal"
        };
        // A try on another host while the old one's lease may live is not a start yet
        // (event 32 says when it runs).
        if ha_from.is_none() {
            self.event(
                153,
                "normal",
                format!("VM {} was started by {by} (Host: {host}).", vm.name),
                Some(&host_id),
                Some(id),
            )
            .await;
        }
        Ok(())
    }

    async fn running_on(&self, id: &str) -> Result<(Vm, Arc<halyard_client::Client>), VmError> {
        let vm = self.vm(id)?;
        if vm.status == "down" {
            return Err(VmError::Conflict(format!(
                "Cannot stop VM. VM {} is not running.",
                vm.name
            )));
        }
        let host = vm
            .host
            .clone()
            .ok_or_else(|| VmError::Conflict("the VM runs on no host".into()))?;
        let c = self
            .host_client(&host)
            .await
            .ok_or_else(|| VmError::Failed("the VM's host is not connected".into()))?;
        Ok((vm, c))
    }

    /// Power off (VM.destroy).
    pub async fn vm_stop(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        let (vm, c) = self.running_on(id).await?;
        c.call_value("VM.destroy", json!({"vmID": id}))
            .await
            .map_err(|e| VmError::Failed(format!("VM.destroy failed: {e}")))?;
        self.vm_down(id, "Admin shut down from the engine".into(), true)
            .await;
        self.event(
            33,
            "normal",
            format!("VM {} powered off by admin@internal.", vm.name),
            None,
            Some(id),
        )
        .await;
        Ok(())
    }

    /// Guest shutdown (VM.shutdown), or reboot.
    pub async fn vm_shutdown(self: &Arc<Self>, id: &str, reboot: bool) -> Result<(), VmError> {
        let (vm, c) = self.running_on(id).await?;
        c.call_value(
            "VM.shutdown",
            json!({"vmID": id, "delay": "30", "message": "System Administrator has initiated shutdown of this VM. Virtual Machine is shutting down.", "reboot": reboot, "timeout": 120, "force": !reboot}),
        )
        .await
        .map_err(|e| VmError::Failed(format!("VM.shutdown failed: {e}")))?;
        let status = if reboot {
            "reboot_in_progress"
        } else {
            "powering_down"
        };
        self.set_vm_status_unless_down(id, status).await;
        let what = if reboot { "reboot" } else { "shutdown" };
        self.event(
            if reboot { 157 } else { 73 },
            "normal",
            format!("VM {} {what} was initiated by admin@internal.", vm.name),
            vm.host.as_deref(),
            Some(id),
        )
        .await;
        Ok(())
    }

    /// Suspend: the VM is paused on its host (memory is not saved to storage yet).
    pub async fn vm_suspend(self: &Arc<Self>, id: &str) -> Result<(), VmError> {
        let (vm, c) = self.running_on(id).await?;
        c.call_value("VM.pause", json!({"vmID": id}))
            .await
            .map_err(|e| VmError::Failed(format!("VM.pause failed: {e}")))?;
        self.set_vm_status_unless_down(id, "paused").await;
        self.event(
            34,
            "normal",
            format!("VM {} was suspended by admin@internal.", vm.name),
            vm.host.as_deref(),
            Some(id),
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, memory: u64, status: &str) -> Host {
        let mut h = crate::register::new_host(name, "10.0.0.1", 54321, name, "c", None);
        h.id = name.into();
        h.memory = memory;
        h.status = status.into();
        h
    }

    fn vm(id: &str, memory: u64, host: Option<&str>, status: &str) -> Vm {
        Vm {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            cluster: "c".into(),
            template: BLANK_TEMPLATE.into(),
            memory,
            sockets: 1,
            cores: 1,
            threads: 1,
            os_type: "other_linux".into(),
            kernel: String::new(),
            initrd: String::new(),
            cmdline: String::new(),
            status: status.into(),
            host: host.map(str::to_string),
            migrating_to: None,
            migration_start: None,
            migration_seen: Default::default(),
            start_time: None,
            stop_time: None,
            creation_time: 0,
            stop_reason: String::new(),
            vm_type: "server".into(),
            guest: GuestInfo::default(),
            tags: Vec::new(),
            pool: None,
            sample: None,
            creating: false,
            status_event_ms: 0,
            instance_type: None,
            quota: None,
            placement: Placement::default(),
            serial_number: None,
            console_enabled: None,
            numa_nodes: Vec::new(),
            boot_devices: Vec::new(),
            bios_type: String::new(),
            cdrom: String::new(),
            graphics: Vec::new(),
            cdrom_current: String::new(),
            initialization: None,
            initialized: false,
            ha_enabled: false,
            ha_priority: 0,
            lease_domain: None,
            ha_pending: false,
            ha_from: None,
        }
    }

    /// Puts a VM into the inventory as the Manager does (its indexes kept).
    fn put_vm(inv: &mut Inventory, v: Vm) {
        use crate::state::Stored as _;
        let old = inv.vms.insert(v.id.clone(), v.clone());
        Vm::reindex(inv, old.as_ref(), Some(&v));
    }

    /// A COW disk of `vm` on sd1 with `volumes` (base first).
    fn disk(id: &str, vm: &str, volumes: &[&str], size: u64) -> Disk {
        Disk {
            id: id.into(),
            name: id.into(),
            description: String::new(),
            provisioned_size: size,
            actual_size: 0,
            format: "cow".into(),
            sparse: true,
            storage_domain: "sd1".into(),
            status: "ok".into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            template_base: None,
            vm: Some(vm.into()),
            bootable: true,
            interface: "virtio".into(),
            template: None,
            creation_time: 0,
            quota: None,
            inactive: false,
            content_type: "data".into(),
        }
    }

    /// Puts a disk into the inventory as the Manager does (its indexes kept).
    fn put_disk(inv: &mut Inventory, d: Disk) {
        use crate::state::Stored as _;
        let old = inv.disks.insert(d.id.clone(), d.clone());
        Disk::reindex(inv, old.as_ref(), Some(&d));
    }

    fn pick_host_any(inv: &Inventory, vm: &Vm) -> Result<String, VmError> {
        pick_host(inv, vm, |_, _| true)
    }

    #[test]
    fn scheduler_counts_placed_vms_and_refuses_when_full() {
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        for h in [
            host("a", 4 * G, "up"),
            host("b", 3 * G, "up"),
            host("m", 64 * G, "maintenance"),
        ] {
            inv.hosts.insert(h.id.clone(), h);
        }
        // Most free first: a (4 GiB), then, with 2 GiB placed on a, b.
        let v = vm("v1", 2 * G, None, "down");
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "a");
        put_vm(&mut inv, vm("v1", 2 * G, Some("a"), "wait_for_launch"));
        assert_eq!(
            pick_host_any(&inv, &vm("v2", G, None, "down")).expect("placed"),
            "b"
        );
        // A VM that fits nowhere (b: 3 GiB - reserve; a: 2 GiB - reserve) gets a clear fault.
        let err = pick_host_any(&inv, &vm("v3", 3 * G, None, "down")).expect_err("full");
        assert!(err.to_string().contains("free memory"), "{err}");
        // Down VMs do not count; VMs in other clusters are not placed.
        put_vm(&mut inv, vm("v1", 2 * G, None, "down"));
        assert_eq!(
            pick_host_any(&inv, &vm("v4", 3 * G, None, "down")).expect("placed"),
            "a"
        );
        let mut other = vm("v5", G, None, "down");
        other.cluster = "elsewhere".into();
        assert!(pick_host_any(&inv, &other)
            .expect_err("no host")
            .to_string()
            .contains("is up"));
    }

    fn record(ty: &str, id: &str, xml: &str) -> Record {
        Record {
            id: id.into(),
            ty: ty.into(),
            doc: crate::api::node::Node::parse_xml(xml.as_bytes()).expect("xml"),
            builtin: false,
        }
    }

    #[test]
    fn affinity_groups_and_labels_steer_placement() {
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        for h in [host("a", 8 * G, "up"), host("b", 4 * G, "up")] {
            inv.hosts.insert(h.id.clone(), h);
        }
        put_vm(&mut inv, vm("p", G, Some("b"), "up"));
        fn add(inv: &mut Inventory, r: Record) {
            inv.records.insert(r.id.clone(), r);
        }
        // Hard positive VM affinity: v goes where its peer runs, though a has more memory.
        add(&mut inv, record("AffinityGroup", "g1", "<affinity_group><name>together</name><cluster id=\"c\"/><vms_rule><enabled>true</enabled><enforcing>true</enforcing><positive>true</positive></vms_rule><vms><vm id=\"p\"/><vm id=\"v\"/></vms></affinity_group>"));
        assert_eq!(
            pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed"),
            "b"
        );
        // A hard negative host rule against b as well leaves nothing, named.
        add(&mut inv, record("AffinityGroup", "g2", "<affinity_group><name>not-b</name><cluster id=\"c\"/><hosts_rule><enabled>true</enabled><enforcing>true</enforcing><positive>false</positive></hosts_rule><vms><vm id=\"v\"/></vms><hosts><host id=\"b\"/></hosts></affinity_group>"));
        let e = pick_host_any(&inv, &vm("v", G, None, "down")).expect_err("none");
        assert!(e.to_string().contains("AffinityGroups"), "{e}");
        // Made soft, the group only weighs: b breaks the host rule, a the VM rule; a
        // has more memory and wins the tie.
        inv.records.remove("g1");
        inv.records.insert("g1".into(), record("AffinityGroup", "g1", "<affinity_group><name>together</name><cluster id=\"c\"/><vms_rule><enabled>true</enabled><enforcing>false</enforcing><positive>true</positive></vms_rule><vms><vm id=\"p\"/><vm id=\"v\"/></vms></affinity_group>"));
        let e = pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed");
        assert_eq!(e, "a");
        // An affinity label on the VM: only hosts with the label.
        inv.records.clear();
        inv.records.insert("l".into(), record("AffinityLabel", "l", "<affinity_label><name>gpu</name><vms><vm id=\"v\"/></vms><hosts><host id=\"b\"/></hosts></affinity_label>"));
        assert_eq!(
            pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed"),
            "b"
        );
        inv.records.insert(
            "l".into(),
            record(
                "AffinityLabel",
                "l",
                "<affinity_label><name>gpu</name><vms><vm id=\"v\"/></vms></affinity_label>",
            ),
        );
        let e = pick_host_any(&inv, &vm("v", G, None, "down")).expect_err("none");
        assert!(e.to_string().contains("Label"), "{e}");
    }

    #[test]
    fn the_clusters_scheduling_policy_weighs_hosts() {
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        for h in [host("a", 8 * G, "up"), host("b", 4 * G, "up")] {
            inv.hosts.insert(h.id.clone(), h);
        }
        let cluster = |policy: &str| Cluster {
            id: "c".into(),
            name: "c".into(),
            description: String::new(),
            data_center: "d".into(),
            cpu_type: String::new(),
            mac_pool: String::new(),
            scheduling_policy: policy.into(),
            fencing_enabled: true,
            fencing_skip_if_sd_active: false,
            migration_bandwidth_mbps: None,
        };
        let id_of = |name: &str| {
            crate::scheduling::policies()
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.id.clone())
                .expect("policy")
        };
        // none (the default): most free memory.
        inv.clusters.insert("c".into(), cluster(""));
        assert_eq!(
            pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed"),
            "a"
        );
        // power_saving: the fullest host that fits.
        inv.clusters
            .insert("c".into(), cluster(&id_of("power_saving")));
        assert_eq!(
            pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed"),
            "b"
        );
        // vm_evenly_distributed: the host with fewer VMs, though it has less memory.
        inv.clusters
            .insert("c".into(), cluster(&id_of("vm_evenly_distributed")));
        put_vm(&mut inv, vm("w", G, Some("a"), "up"));
        assert_eq!(
            pick_host_any(&inv, &vm("v", G, None, "down")).expect("placed"),
            "b"
        );
        // Every policy has the Memory filter: a VM too big for both is refused.
        let e = pick_host_any(&inv, &vm("huge", 16 * G, None, "down")).expect_err("full");
        assert!(e.to_string().contains("filter Memory"), "{e}");
    }

    #[test]
    fn bios_types_pick_machine_and_firmware() {
        let mut v = vm("v1", 1 << 30, None, "down");
        let xml = |v: &Vm| domain_xml(v, &[], &(String::new(), String::new()), "/tmp", "");
        let x = xml(&v);
        assert!(
            x.contains(r#"machine="pc""#) && !x.contains("<loader"),
            "{x}"
        );
        v.bios_type = "q35_sea_bios".into();
        let x = xml(&v);
        assert!(
            x.contains(r#"machine="q35""#) && !x.contains("<loader"),
            "{x}"
        );
        v.bios_type = "q35_ovmf".into();
        let x = xml(&v);
        assert!(
            x.contains(r#"secure="no" type="pflash">/usr/share/OVMF/OVMF_CODE.fd</loader>"#)
                && x.contains(&format!(
                    r#"<nvram template="/usr/share/OVMF/OVMF_VARS.fd">/var/lib/libvirt/qemu/nvram/{}.fd</nvram>"#,
                    v.id
                ))
                && !x.contains("<smm"),
            "{x}"
        );
        v.bios_type = "q35_secure_boot".into();
        let x = xml(&v);
        assert!(
            x.contains("OVMF_CODE.secboot.fd")
                && x.contains(r#"secure="yes""#)
                && x.contains(r#"<smm state="on"/>"#),
            "{x}"
        );
    }

    #[test]
    fn disks_go_on_the_bus_their_interface_asks_for() {
        let mut inv = Inventory::default();
        let mut disks = Vec::new();
        for (i, iface) in [
            "virtio",
            "virtio_scsi",
            "sata",
            "ide",
            "virtio_scsi",
            "virtio",
        ]
        .iter()
        .enumerate()
        {
            let mut d = disk(&format!("d{i}"), "v1", &["vol"], 1 << 30);
            d.interface = iface.to_string();
            d.creation_time = i as i64;
            disks.push(d);
        }
        for d in &disks {
            put_disk(&mut inv, d.clone());
        }
        let plugged = crate::images::plugged_disks(&inv, "v1");
        let (dev, meta) = crate::images::drives_of(&inv, &plugged).expect("drives");
        for (img, target) in [
            ("d0", r#"<target dev="vda" bus="virtio"/>"#),
            ("d1", r#"<target dev="sda" bus="scsi"/>"#),
            ("d2", r#"<target dev="sdb" bus="sata"/>"#),
            ("d3", r#"<target dev="hda" bus="ide"/>"#),
            ("d4", r#"<target dev="sdc" bus="scsi"/>"#),
            ("d5", r#"<target dev="vdb" bus="virtio"/>"#),
        ] {
            let at = dev.find(&format!("images/{img}/")).expect(img);
            let end = at + dev[at..].find("</disk>").expect("end of the disk");
            assert!(dev[at..end].contains(target), "{img}: {dev}");
        }
        assert_eq!(dev.matches(r#"model="virtio-scsi""#).count(), 1, "{dev}");
        assert_eq!(
            dev.matches(r#"<controller type="sata""#).count(),
            1,
            "{dev}"
        );
        assert!(meta.contains(r#"name="sdc""#) && meta.contains(r#"name="hda""#));
        // The machine's IDE buses hold four disks.
        for i in 0..5 {
            let mut d = disk(&format!("i{i}"), "v2", &["vol"], 1 << 30);
            d.interface = "ide".into();
            put_disk(&mut inv, d);
        }
        let plugged = crate::images::plugged_disks(&inv, "v2");
        let e = crate::images::drives_of(&inv, &plugged).expect_err("five IDE disks");
        assert!(e.contains("more than 4 IDE disks"), "{e}");
        let xml = domain_xml(
            &vm("v1", 1 << 30, None, "down"),
            &[],
            &(dev, meta),
            "/tmp",
            "",
        );
        assert!(xml.contains(r#"<controller type="scsi" index="0" model="virtio-scsi"/>"#));
    }

    #[test]
    fn vms_with_disks_only_on_hosts_reaching_their_domains() {
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        for h in [host("big", 8 * G, "up"), host("small", 2 * G, "up")] {
            inv.hosts.insert(h.id.clone(), h);
        }
        let v = vm("v1", G, None, "down");
        put_disk(&mut inv, disk("d1", "v1", &["vol"], G));
        // A deactivated attachment is not plugged; the VM starts without it.
        assert_eq!(crate::images::plugged_disks(&inv, "v1").len(), 1);
        let mut off = inv.disks["d1"].clone();
        off.inactive = true;
        put_disk(&mut inv, off);
        assert!(crate::images::plugged_disks(&inv, "v1").is_empty());
        let mut on = inv.disks["d1"].clone();
        on.inactive = false;
        put_disk(&mut inv, on);
        // Only "small" reaches sd1: it is chosen although "big" has more memory.
        let reach = |h: &Host, sd: &str| h.id == "small" && sd == "sd1";
        assert_eq!(pick_host(&inv, &v, reach).expect("placed"), "small");
        let err = pick_host(&inv, &v, |_, _| false).expect_err("nowhere");
        assert!(err.to_string().contains("storage domain"), "{err}");
        // Without disks, storage does not matter.
        let diskless = vm("v2", G, None, "down");
        assert_eq!(
            pick_host(&inv, &diskless, |_, _| false).expect("placed"),
            "big"
        );
    }

    #[test]
    fn xml_is_valid_and_escaped() {
        let vm = Vm {
            id: "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab".into(),
            name: "a<b>&\"c'".into(),
            description: String::new(),
            cluster: "c".into(),
            template: BLANK_TEMPLATE.into(),
            memory: 128 << 20,
            sockets: 1,
            cores: 2,
            threads: 1,
            os_type: "other_linux".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0 a=<x>".into(),
            status: "down".into(),
            host: None,
            migrating_to: None,
            migration_start: None,
            migration_seen: Default::default(),
            start_time: None,
            stop_time: None,
            creation_time: 0,
            stop_reason: String::new(),
            vm_type: "server".into(),
            guest: GuestInfo::default(),
            tags: Vec::new(),
            pool: None,
            sample: None,
            creating: false,
            status_event_ms: 0,
            instance_type: None,
            quota: None,
            placement: Placement::default(),
            serial_number: None,
            console_enabled: None,
            numa_nodes: Vec::new(),
            boot_devices: Vec::new(),
            bios_type: String::new(),
            cdrom: String::new(),
            graphics: Vec::new(),
            cdrom_current: String::new(),
            initialization: None,
            initialized: false,
            ha_enabled: false,
            ha_priority: 0,
            lease_domain: None,
            ha_pending: false,
            ha_from: None,
        };
        let x = domain_xml(&vm, &[], &Default::default(), "/var/log/halyard/vms", "");
        let n = crate::api::node::Node::parse_xml(x.as_bytes()).expect("well-formed");
        assert_eq!(n.text_of("name"), Some("a<b>&\"c'"));
        assert_eq!(n.text_of("memory"), Some("131072"));
        assert_eq!(n.text_of("vcpu"), Some("2"));
        assert!(mac_for(&vm.id).starts_with("56:6f:"));
    }

    /// The SMBIOS serial a guest sees, by policy, and the serial console on or off.
    #[test]
    fn serial_number_and_console() {
        let mut v = vm(
            "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab",
            1 << 30,
            None,
            "down",
        );
        let serial = |v: &Vm| -> Option<String> {
            let x = domain_xml(v, &[], &Default::default(), "/c", "host-uuid");
            let n = crate::api::node::Node::parse_xml(x.as_bytes()).expect("well-formed");
            assert_eq!(
                n.get("os")
                    .and_then(|o| o.get("smbios"))
                    .and_then(|s| s.attr_of("mode")),
                Some("sysinfo")
            );
            n.get("sysinfo")
                .and_then(|s| s.get("system"))
                .and_then(|s| s.all("entry").find(|e| e.attr_of("name") == Some("serial")))
                .and_then(|e| e.text.clone())
        };
        assert_eq!(serial(&v).as_deref(), Some("host-uuid"));
        for (policy, want) in [
            ("host", "host-uuid"),
            ("vm", "8d2e5c8a-3f0e-4b8c-9a1b-0123456789ab"),
            ("custom", "my<serial>"),
        ] {
            v.serial_number = Some(SerialNumber {
                policy: policy.into(),
                value: "my<serial>".into(),
            });
            assert_eq!(serial(&v).as_deref(), Some(want), "{policy}");
        }
        let with_console = domain_xml(&v, &[], &Default::default(), "/c", "");
        assert!(with_console.contains("<serial type=\"pty\">"));
        v.console_enabled = Some(false);
        let without = domain_xml(&v, &[], &Default::default(), "/c", "");
        assert!(!without.contains("<serial") && !without.contains("<console"));
    }

    /// How long rendering and writing a list of 25,000 VMs takes, without HTTP (a
    /// profiling aid, not a check: `cargo test --release -p halyard-manager --lib --
    /// --ignored list_rendering_speed --nocapture`).
    #[test]
    #[ignore]
    fn list_rendering_speed() {
        use crate::api::node::Node;
        let vms: Vec<Vm> = (0..25_000)
            .map(|i| {
                let mut v = vm(
                    &format!("8d2e5c8a-3f0e-4b8c-9a1b-{i:012}"),
                    1 << 30,
                    Some("h"),
                    "up",
                );
                v.start_time = Some(1);
                v
            })
            .collect();
        let t = std::time::Instant::now();
        let nodes: usize = vms
            .iter()
            .map(|v| crate::api::render::vm(v, &[]).children.len())
            .sum();
        println!(
            "render only: {} ms ({nodes} children)",
            t.elapsed().as_millis()
        );
        // The best of five runs of each (this machine is shared and noisy).
        for (json, par) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut best = u128::MAX;
            let mut len = 0;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let render = |v: &Vm| crate::api::render::vm(v, &[]);
                let n = if par {
                    Node::list_of_par("vms", &vms, render, json)
                } else {
                    Node::list_of("vms", vms.iter().map(render), json)
                };
                len = n.raw.map(|r| r.len()).unwrap_or(0);
                best = best.min(t.elapsed().as_millis());
            }
            println!(
                "{}{}: {best} ms, {:.1} MiB",
                if json { "JSON" } else { "XML" },
                if par { ", two threads" } else { "" },
                len as f64 / 1048576.0
            );
        }
    }

    /// PinToHost: a VM pinned to hosts runs only there, and not at all when none of
    /// them can take it.
    #[test]
    fn pinned_vms_run_only_on_their_hosts() {
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        for h in [
            host("big", 8 * G, "up"),
            host("small", 2 * G, "up"),
            host("off", 8 * G, "maintenance"),
        ] {
            inv.hosts.insert(h.id.clone(), h);
        }
        let mut v = vm("v1", G, None, "down");
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "big");
        v.placement.hosts = vec!["small".into()];
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "small");
        v.placement.hosts = vec!["off".into()];
        let err = pick_host_any(&inv, &v).expect_err("its host is in maintenance");
        assert!(err.to_string().contains("PinToHost"), "{err}");
    }

    /// The Network filter: a VM runs only on hosts that have the networks of its
    /// plugged NICs; when none has them, the fault names the hosts and networks.
    #[test]
    fn vms_run_only_where_their_networks_are() {
        use crate::state::Stored as _;
        const G: u64 = 1 << 30;
        let mut inv = Inventory::default();
        let mut both = host("both", 2 * G, "up");
        both.networks = vec!["ovirtmgmt".into(), "storage".into()];
        let mut mgmt = host("mgmt", 8 * G, "up");
        mgmt.networks = vec!["ovirtmgmt".into()];
        for h in [both, mgmt] {
            inv.hosts.insert(h.id.clone(), h);
        }
        inv.networks.insert(
            "net-storage".into(),
            Network {
                id: "net-storage".into(),
                name: "storage".into(),
                description: String::new(),
                data_center: "dc".into(),
                mtu: 1500,
                vlan: None,
                usages: Vec::new(),
                clusters: None,
            },
        );
        let v = vm("v1", G, None, "down");
        put_vm(&mut inv, v.clone());
        let nic = |inv: &mut Inventory, id: &str, network: &str, plugged: bool| {
            let n = Nic {
                id: id.into(),
                vm: "v1".into(),
                name: id.into(),
                interface: "virtio".into(),
                mac: "56:6f:00:00:00:01".into(),
                network: network.into(),
                plugged,
                linked: true,
                vnic_profile: None,
                description: String::new(),
            };
            let old = inv.nics.insert(n.id.clone(), n.clone());
            Nic::reindex(inv, old.as_ref(), Some(&n));
        };
        // A NIC without a network is on ovirtmgmt: both hosts have it, the larger wins.
        nic(&mut inv, "n1", "", true);
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "mgmt");
        // An unplugged NIC asks nothing of the host.
        nic(&mut inv, "n2", "net-storage", false);
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "mgmt");
        // Plugged, only the host with the storage network can run it.
        nic(&mut inv, "n2", "net-storage", true);
        assert_eq!(pick_host_any(&inv, &v).expect("placed"), "both");
        if let Some(h) = inv.hosts.get_mut("both") {
            h.networks.retain(|n| n != "storage");
        }
        let err = pick_host_any(&inv, &v).expect_err("no host has the network");
        let text = err.to_string();
        assert!(text.contains("filter Network"), "{text}");
        assert!(
            text.contains("host both lacks network(s) storage"),
            "{text}"
        );
        assert!(
            text.contains("host mgmt lacks network(s) storage"),
            "{text}"
        );
    }

    /// oVirt's NUMA checks, and the cells a domain gets.
    #[test]
    fn numa_nodes_are_checked_and_written() {
        let node = |index: u32, memory: u64, cpus: &[u32]| VmNumaNode {
            id: format!("n{index}"),
            name: String::new(),
            index,
            memory,
            cpus: cpus.to_vec(),
        };
        let mut v = vm("v1", 1 << 30, None, "down");
        v.cores = 2;
        numa_check(&v, &[]).expect("no nodes");
        let two = [node(1, 512, &[1]), node(0, 512, &[0])];
        numa_check(&v, &two).expect("two nodes, one vCPU each");
        let err = |nodes: &[VmNumaNode]| numa_check(&v, nodes).expect_err("refused");
        assert!(err(&[node(0, 1, &[0]), node(1, 1, &[1]), node(2, 1, &[])])
            .contains("more NUMA nodes (3) than vCPUs (2)"));
        assert!(err(&[node(0, 1, &[0]), node(0, 1, &[1])]).contains("index 0 is used twice"));
        assert!(
            err(&[node(0, 1, &[0]), node(2, 1, &[1])]).contains("0 to 1 (continuous); 2 is not")
        );
        assert!(
            err(&[node(0, 1, &[0, 1]), node(1, 1, &[1])]).contains("vCPU 1 is in more than one")
        );
        assert!(err(&[node(0, 1, &[2])]).contains("vCPU index 2 is out of range"));
        assert!(err(&[node(0, 1000, &[0]), node(1, 25, &[1])])
            .contains("(1025 MiB) exceeds the VM's (1024 MiB)"));
        assert_eq!(
            numa_cells(&two),
            r#"<numa><cell id="0" cpus="0" memory="524288" unit="KiB"/><cell id="1" cpus="1" memory="524288" unit="KiB"/></numa>"#
        );
        assert_eq!(numa_cells(&[]), "");
        v.numa_nodes = two.to_vec();
        let xml = domain_xml(&v, &[], &Default::default(), "/c", "");
        assert!(
            xml.contains(r#"<topology cores="2" sockets="1" threads="1"/><numa><cell id="0""#),
            "{xml}"
        );
    }

    /// A VM's OVF is well-formed XML whatever its names hold, and has oVirt's parts:
    /// a file per volume, a disk per disk (its leaf), a hardware item per NIC.
    #[test]
    fn ovf_of_a_vm() {
        use crate::state::Stored as _;
        use proptest::prelude::*;
        const G: u64 = 1 << 30;
        let ovf_for = |name: &str| {
            let mut inv = Inventory::default();
            let mut v = vm("v1", G, None, "down");
            v.name = name.into();
            v.description = name.into();
            put_vm(&mut inv, v.clone());
            let mut d = disk("img", "v1", &["base", "leaf"], 3 * G);
            d.name = name.into();
            d.description = name.into();
            d.actual_size = G / 2;
            put_disk(&mut inv, d);
            let n = Nic {
                id: "n1".into(),
                vm: "v1".into(),
                name: name.into(),
                interface: "e1000".into(),
                mac: "56:6f:00:00:00:01".into(),
                network: String::new(),
                plugged: true,
                linked: true,
                vnic_profile: None,
                description: String::new(),
            };
            inv.nics.insert(n.id.clone(), n.clone());
            Nic::reindex(&mut inv, None, Some(&n));
            crate::ovf::vm_ovf(&inv, &v)
        };
        let text = ovf_for("myvm");
        let doc = crate::api::node::Node::parse_xml(text.as_bytes()).expect("well-formed");
        assert_eq!(doc.name.as_str(), "Envelope");
        let files = doc.get("References").map(|r| r.all("File").count());
        assert_eq!(files, Some(2), "{text}");
        assert!(text.contains(r#"ovf:diskId="leaf""#), "{text}");
        assert!(text.contains(r#"ovf:parentRef="img/base""#), "{text}");
        assert!(text.contains(r#"ovf:fileRef="img/leaf""#), "{text}");
        assert!(
            text.contains("ovf:size=\"3\" ovf:actual_size=\"1\""),
            "{text}"
        );
        assert!(text.contains("<rasd:ResourceType>10</rasd:ResourceType><rasd:OtherResourceType>ovirtmgmt</rasd:OtherResourceType><rasd:ResourceSubType>2</rasd:ResourceSubType>"), "{text}");
        assert!(text.contains("<Name>myvm</Name>"), "{text}");
        proptest!(ProptestConfig::with_cases(64), |(name in "\\PC{0,40}")| {
            let text = ovf_for(&name);
            let doc = crate::api::node::Node::parse_xml(text.as_bytes());
            prop_assert!(doc.is_ok(), "{name:?}: {text}");
        });
    }
}
