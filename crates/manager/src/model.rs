//! The Manager's inventory: data centers, clusters, networks, hosts, VMs and their NICs,
//! templates, events and jobs. Held in memory (the API answers from it) and written
//! through to the database on every change.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The Blank template's id (oVirt's null UUID).
pub const BLANK_TEMPLATE: &str = "00000000-0000-0000-0000-000000000000";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// ISO 8601 with offset, as the SDK reads dates.
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = halyard_common::text::civil_from_days(days);
    // Written digit by digit (no formatting machinery: lists of thousands of objects
    // carry several dates each).
    let mut s = String::with_capacity(29);
    let put = |s: &mut String, v: i64, width: u32| {
        if v < 0 {
            s.push('-');
        }
        let v = v.unsigned_abs();
        let digits = v.checked_ilog10().unwrap_or(0) + 1;
        for _ in digits..width {
            s.push('0');
        }
        let mut div = 10u64.pow(digits - 1);
        while div > 0 {
            s.push(char::from(b'0' + ((v / div) % 10) as u8));
            div /= 10;
        }
    };
    put(&mut s, y, 4);
    s.push('-');
    put(&mut s, i64::from(m), 2);
    s.push('-');
    put(&mut s, i64::from(d), 2);
    s.push('T');
    put(&mut s, rem / 3600, 2);
    s.push(':');
    put(&mut s, (rem / 60) % 60, 2);
    s.push(':');
    put(&mut s, rem % 60, 2);
    s.push('.');
    put(&mut s, milli, 3);
    s.push_str("+00:00");
    s
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DataCenter {
    pub id: String,
    pub name: String,
    pub description: String,
    pub local: bool,
    pub status: String,
    /// The master storage domain (the pool exists once there is one). The storage
    /// pool's id is the data center's id.
    #[serde(default)]
    pub master_domain: Option<String>,
    #[serde(default)]
    pub master_version: i64,
    /// The host holding the SPM role, as last confirmed.
    #[serde(default)]
    pub spm: Option<String>,
    /// The SPM lease version it holds (sanlock's lver), and the host id that held it:
    /// the next spmStart names them (prevID/prevLver).
    #[serde(default)]
    pub spm_lver: i64,
    #[serde(default)]
    pub spm_prev_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub description: String,
    pub data_center: String,
    pub cpu_type: String,
    /// The MAC pool its NICs take addresses from (empty: the Default pool).
    #[serde(default)]
    pub mac_pool: String,
    /// Its scheduling policy (empty: oVirt's default, `none`).
    #[serde(default)]
    pub scheduling_policy: String,
    /// fencing_policy.enabled: non-responsive hosts with power management are fenced.
    #[serde(default = "yes")]
    pub fencing_enabled: bool,
    /// fencing_policy.skip_if_sd_active: not while the host still renews its storage
    /// lease (it lost the Manager, not its storage).
    #[serde(default)]
    pub fencing_skip_if_sd_active: bool,
    /// migration.bandwidth: `custom` in Mbps (None: `hypervisor_default`, the agent's
    /// own limit).
    #[serde(default)]
    pub migration_bandwidth_mbps: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub data_center: String,
    pub mtu: u32,
    /// The VLAN tag of the logical network (applied by hosts with the host networking
    /// work; kept and shown now).
    #[serde(default)]
    pub vlan: Option<u16>,
    /// oVirt's usages (`vm`, `management`, ...); empty in documents stored before they
    /// were kept: `vm` (and `management` for ovirtmgmt).
    #[serde(default)]
    pub usages: Vec<String>,
    /// The clusters it is assigned to (`None`: every cluster of its data center, as the
    /// management network and networks stored before assignments were kept).
    #[serde(default)]
    pub clusters: Option<Vec<ClusterNetwork>>,
}

/// A network assigned to a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterNetwork {
    pub cluster: String,
    /// Hosts of the cluster lacking it are non-operational (oVirt's required network).
    pub required: bool,
}

impl Network {
    pub fn usages(&self) -> Vec<String> {
        if !self.usages.is_empty() {
            return self.usages.clone();
        }
        let mut u = vec!["vm".to_string()];
        if self.name == "ovirtmgmt" {
            u.push("management".into());
        }
        u
    }
    /// Its assignment to `cluster` (of its data center), if it has one.
    pub fn in_cluster(&self, cluster: &str) -> Option<ClusterNetwork> {
        match &self.clusters {
            None => Some(ClusterNetwork {
                cluster: cluster.to_string(),
                required: true,
            }),
            Some(l) => l.iter().find(|c| c.cluster == cluster).cloned(),
        }
    }
}

/// A host as the Manager knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    /// up, non_responsive, maintenance, non_operational, pending_approval, installing,
    /// connecting, initializing, ...
    pub status: String,
    pub cluster: String,
    /// The agent's stable id (VDSM-REG uniqueId).
    pub unique_id: String,
    /// A CSR the host sent with its registration, signed at approval.
    #[serde(default)]
    pub csr: Option<String>,
    /// The certificate signed for it.
    #[serde(default)]
    pub certificate: Option<String>,
    /// When the certificate expires (ms).
    #[serde(default)]
    pub cert_not_after: i64,
    /// SPM priority: -1 never, 0..10 (default 5).
    #[serde(default = "default_spm_priority")]
    pub spm_priority: i32,
    /// The host id in its data center's lockspaces (1..250; 0 = not given yet).
    #[serde(default)]
    pub spm_id: u32,
    /// oVirt's power_management.enabled: its fence agents may be used.
    #[serde(default)]
    pub pm_enabled: bool,
    /// power_management.automatic_pm_enabled: the Manager fences it when it stops
    /// answering (and the cluster's fencing policy allows it).
    #[serde(default = "yes")]
    pub pm_automatic: bool,
    /// When it was last fenced (ms): it is not fenced again until it answered once.
    #[serde(default)]
    pub fenced_ms: i64,
    /// Domains the host reports as not valid (Host.getStats storageDomains), memory only.
    #[serde(skip)]
    pub domains_bad: Vec<String>,
    /// The last two Host.getStats samples (memory only): statistics and NIC rates.
    #[serde(skip)]
    pub samples: Vec<HostSample>,
    #[serde(default)]
    pub spm_status: String,
    // Reported by the host.
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub free_memory: u64,
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub cpu_cores: u32,
    #[serde(default)]
    pub cpu_sockets: u32,
    #[serde(default)]
    pub cpu_threads: u32,
    #[serde(default)]
    pub cpu_speed: String,
    #[serde(default)]
    pub libvirt_version: String,
    #[serde(default)]
    pub vdsm_version: String,
    #[serde(default)]
    pub os_name: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default)]
    pub hardware_uuid: String,
    #[serde(default)]
    pub cpu_idle: f64,
    /// Why the host is not operational, when it is not.
    #[serde(default)]
    pub status_detail: String,
    /// A one-time enrollment token for a host added by address (hashed).
    #[serde(default)]
    pub enroll_token_hash: Option<String>,
    /// The address the registration came from (the connection's peer).
    #[serde(default)]
    pub registered_from: String,
    /// A later registration that asked to change the address, port or key: nothing of
    /// it applies until an admin approves it.
    #[serde(default)]
    pub pending_change: Option<PendingRegistration>,
    /// Tags assigned to it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The networks it has (Host.getCapabilities `networks` and `bridges`; a bridged
    /// network is a bridge named after it): what the scheduler's Network filter checks.
    #[serde(default)]
    pub networks: Vec<String>,
    /// What the last check for updates found (oVirt's update_available).
    #[serde(default)]
    pub update_available: bool,
    /// The port of its image data server (Host.getCapabilities `halyardImageioPort`;
    /// 0: it serves none).
    #[serde(default)]
    pub imageio_port: u16,
}

/// What the statistics show of one Host.getStats sample (only that is kept).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostSample {
    /// When the Manager took it (ms).
    pub time: i64,
    pub cpu_user: f64,
    pub cpu_sys: f64,
    pub cpu_idle: f64,
    pub cpu_load: f64,
    /// MiB.
    pub mem_free: u64,
    pub mem_shared: u64,
    pub swap_total: u64,
    pub swap_free: u64,
    pub boot_time: f64,
    pub nics: Vec<NicSample>,
}

/// One host NIC in a sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NicSample {
    pub name: String,
    pub rx: f64,
    pub tx: f64,
    pub rx_errors: f64,
    pub tx_errors: f64,
    /// Mbit/s.
    pub speed: f64,
    pub up: bool,
}

fn num(s: &str) -> f64 {
    s.trim().parse().unwrap_or(0.0)
}

impl HostSample {
    pub fn of(time: i64, s: &halyard_proto::vdsm::HostStats) -> HostSample {
        HostSample {
            time,
            cpu_user: num(&s.cpu_user),
            cpu_sys: num(&s.cpu_sys),
            cpu_idle: num(&s.cpu_idle),
            cpu_load: num(&s.cpu_load),
            mem_free: s.mem_free,
            mem_shared: s.mem_shared,
            swap_total: s.swap_total,
            swap_free: s.swap_free,
            boot_time: num(&s.boot_time),
            nics: s
                .network
                .iter()
                .map(|(name, n)| NicSample {
                    name: name.clone(),
                    rx: num(&n.rx),
                    tx: num(&n.tx),
                    rx_errors: num(&n.rx_errors),
                    tx_errors: num(&n.tx_errors),
                    speed: num(&n.speed),
                    up: n.state == "up",
                })
                .collect(),
        }
    }
}

/// What the statistics show of a VM's last stats from its host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmSample {
    pub time: i64,
    /// Percent.
    pub cpu_user: f64,
    pub cpu_sys: f64,
    pub mem_usage: f64,
    /// Seconds.
    pub elapsed: f64,
}

impl VmSample {
    pub fn of(time: i64, s: &halyard_proto::vdsm::VmStats) -> VmSample {
        let n = |x: &Option<String>| x.as_deref().map(num).unwrap_or(0.0);
        VmSample {
            time,
            cpu_user: n(&s.cpu_user),
            cpu_sys: n(&s.cpu_sys),
            mem_usage: n(&s.mem_usage),
            elapsed: n(&s.elapsed_time),
        }
    }
}

/// What a registration of a known host asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRegistration {
    pub address: String,
    pub port: u16,
    pub csr: String,
    /// `SHA256:...` of the key in the CSR.
    pub key_fingerprint: String,
    /// The connection's peer address.
    pub from: String,
    pub time: i64,
}

/// A tag: a name objects are labelled with (and searched by); tags form a tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tag {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The parent tag (none: under the root tag).
    #[serde(default)]
    pub parent: Option<String>,
}

/// An object of a declared collection of oVirt's model (`api::records`): its document
/// normalised against the model's type (model members only, references as
/// `<x href=".." id=".."/>`), kept as it is shown. Its behaviour, where it has any, is
/// in the module of its area (the scheduler reads affinity groups, NICs take MACs from
/// MAC pools, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    /// The model type (`VnicProfile`).
    pub ty: String,
    #[serde(with = "crate::api::node::as_xml")]
    pub doc: crate::api::node::Node,
    /// One of oVirt's predefined objects (roles, policies, the default MAC pool):
    /// neither changed nor removed.
    #[serde(default)]
    pub builtin: bool,
}

impl Record {
    pub fn text(&self, member: &str) -> Option<&str> {
        self.doc.text_of(member)
    }
    pub fn name(&self) -> &str {
        self.text("name").unwrap_or("")
    }
    /// The id a reference member points to.
    pub fn link(&self, member: &str) -> Option<&str> {
        self.doc.get(member).and_then(|n| n.attr_of("id"))
    }
    /// The ids a list member holds (`<vms><vm id=".."/></vms>`).
    pub fn list(&self, member: &str) -> Vec<&str> {
        self.doc
            .get(member)
            .map(|l| l.children.iter().filter_map(|c| c.attr_of("id")).collect())
            .unwrap_or_default()
    }
    pub fn flag(&self, member: &str) -> bool {
        self.text(member) == Some("true")
    }
}

/// oVirt's root tag: every tag without a parent is under it.
pub const ROOT_TAG: &str = "00000000-0000-0000-0000-000000000000";

/// A one-time token an admin makes for a host to join (as Incus and Proxmox join
/// nodes): a registration that presents it is approved at once. Only its hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinToken {
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// The host name it is for (any name when empty).
    #[serde(default)]
    pub host_name: String,
    pub cluster: String,
    pub creation_time: i64,
    pub expiration_time: i64,
}

fn default_spm_priority() -> i32 {
    5
}

fn yes() -> bool {
    true
}

/// A host's fence agent (oVirt's `Agent`, `hosts/{id}/fenceagents`): how its power is
/// controlled, run by another host of its cluster or data center (`Host.fenceNode`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct FenceAgent {
    pub id: String,
    pub host: String,
    /// Tried in this order (1 first).
    pub order: u32,
    /// The fence agent's name without `fence_` (ipmilan, ilo4, drac5, apc, ...).
    pub agent_type: String,
    pub address: String,
    pub port: Option<u16>,
    pub username: String,
    /// A secret: never shown through the API nor logged (the database file is 0600).
    pub password: String,
    /// The agent's own options (`lanplus=1`, `power_wait=3`), by name.
    pub options: Vec<(String, String)>,
    pub encrypt_options: bool,
}

impl std::fmt::Debug for FenceAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceAgent")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("agent_type", &self.agent_type)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// A storage domain (a data domain on a file connection).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageDomain {
    pub id: String,
    pub name: String,
    pub description: String,
    /// localfs, posixfs, nfs
    pub storage_type: String,
    /// NFS server (nfs only).
    pub address: String,
    pub path: String,
    pub vfs_type: String,
    pub mount_options: String,
    /// The connection id given to connectStorageServer.
    pub connection_id: String,
    pub data_center: Option<String>,
    /// unattached, locked, active, maintenance
    pub status: String,
    pub master: bool,
    pub available: u64,
    pub used: u64,
}

impl StorageDomain {
    /// VDSM's domainType code.
    pub fn domain_type(&self) -> i64 {
        match self.storage_type.as_str() {
            "nfs" => 1,
            "localfs" => 4,
            _ => 6,
        }
    }
    /// The connection string (typeArgs of StorageDomain.create).
    pub fn connection(&self) -> String {
        if self.storage_type == "nfs" {
            format!("{}:{}", self.address, self.path)
        } else {
            self.path.clone()
        }
    }
}

/// A disk: an image (id = image id) whose volumes form a chain, base first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Disk {
    pub id: String,
    pub name: String,
    pub description: String,
    pub provisioned_size: u64,
    pub actual_size: u64,
    /// cow, raw
    pub format: String,
    pub sparse: bool,
    pub storage_domain: String,
    /// locked, ok, illegal
    pub status: String,
    /// Volume ids, base first; the last is the leaf the VM writes.
    pub volumes: Vec<String>,
    /// The template volume under the chain (image, volume), for disks made from one.
    #[serde(default)]
    pub template_base: Option<(String, String)>,
    /// The VM it is attached to.
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub bootable: bool,
    #[serde(default = "default_interface")]
    pub interface: String,
    /// The template it belongs to (template disks).
    #[serde(default)]
    pub template: Option<String>,
    /// The quota it consumes (audit mode).
    #[serde(default)]
    pub quota: Option<String>,
    pub creation_time: i64,
    /// Its attachment is deactivated (oVirt's disk_attachment active=false): the VM
    /// starts without it.
    #[serde(default)]
    pub inactive: bool,
    /// data or iso (an ISO image a VM's CD-ROM can hold).
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_content_type() -> String {
    "data".into()
}

fn default_interface() -> String {
    "virtio".into()
}

impl Disk {
    pub fn leaf(&self) -> &str {
        self.volumes.last().map(String::as_str).unwrap_or("")
    }
}

/// A VM snapshot: the leaves its disks had when it was taken (they became read-only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub vm: String,
    pub description: String,
    pub date: i64,
    /// locked, ok
    pub status: String,
    /// (disk id, volume id) taken.
    pub volumes: Vec<(String, String)>,
    /// Taken while the VM ran.
    pub live: bool,
}

/// A template made from a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub description: String,
    pub cluster: String,
    pub memory: u64,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub os_type: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// locked, ok, illegal
    pub status: String,
    pub creation_time: i64,
    /// Its disks (ids of Disk records with `template` set).
    pub disks: Vec<String>,
    /// The VM it is being made from (its disks are read until the copy ended).
    #[serde(default)]
    pub source_vm: Option<String>,
    /// A template version's base template (None: it is a base, version 1).
    #[serde(default)]
    pub base_template: Option<String>,
    #[serde(default = "first_version")]
    pub version_number: u32,
    #[serde(default)]
    pub version_name: String,
}

fn first_version() -> u32 {
    1
}

/// A storage operation running on the SPM as a task, persisted so that a restarted
/// Manager finishes what it started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageTask {
    pub id: String,
    pub data_center: String,
    /// create_volume, copy_volume, delete_image, extend_volume, create_snapshot_volume
    pub kind: String,
    pub domain: String,
    pub image: String,
    pub volume: String,
    /// The disk it works for.
    pub disk: String,
    /// The VDSM task id, once the SPM accepted it.
    #[serde(default)]
    pub vdsm_task: Option<String>,
    /// The SPM host it was sent to.
    #[serde(default)]
    pub host: Option<String>,
    pub job: String,
    /// What to do when it ends: the object it belongs to (snapshot, template, vm).
    #[serde(default)]
    pub owner: Option<(String, String)>,
    pub created: i64,
    /// extend_volume: the disk's size once it ended well.
    #[serde(default)]
    pub new_size: Option<u64>,
}

impl StorageTask {
    /// A task working on `disk`'s leaf volume (recorded before it is sent).
    pub fn for_disk(
        disk: &Disk,
        data_center: &str,
        kind: &str,
        job: &str,
        owner: Option<(String, String)>,
    ) -> StorageTask {
        StorageTask {
            id: uuid::Uuid::new_v4().to_string(),
            data_center: data_center.to_string(),
            kind: kind.to_string(),
            domain: disk.storage_domain.clone(),
            image: disk.id.clone(),
            volume: disk.leaf().to_string(),
            disk: disk.id.clone(),
            vdsm_task: None,
            host: None,
            job: job.to_string(),
            owner,
            created: now_ms(),
            new_size: None,
        }
    }
}

/// A VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub description: String,
    pub cluster: String,
    pub template: String,
    /// Bytes.
    pub memory: u64,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub os_type: String,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub status: String,
    /// The host it runs on.
    #[serde(default)]
    pub host: Option<String>,
    /// The host it is migrating to (status `migrating`).
    #[serde(default)]
    pub migrating_to: Option<String>,
    /// When the migration began (ms).
    #[serde(default)]
    pub migration_start: Option<i64>,
    /// What this Manager process knows of the migration (memory only): it started it,
    /// when the source accepted it, whether the source said "Migration Source". A
    /// source's "Up" means the migration failed only when it is newer than that.
    #[serde(skip)]
    pub migration_seen: MigrationSeen,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub stop_time: Option<i64>,
    pub creation_time: i64,
    #[serde(default)]
    pub stop_reason: String,
    #[serde(default)]
    pub vm_type: String,
    #[serde(default)]
    pub guest: GuestInfo,
    /// Tags assigned to it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The VM pool it belongs to.
    #[serde(default)]
    pub pool: Option<String>,
    /// The last stats its host reported (memory only).
    #[serde(skip)]
    pub sample: Option<VmSample>,
    /// VM.create is on its way to the host (memory only): a stats sample that does not
    /// list the VM yet does not mean it went down.
    #[serde(skip)]
    pub creating: bool,
    /// When a host's event last set its status (ms, memory only): stats asked for
    /// before that are older than the status and do not change it.
    #[serde(skip)]
    pub status_event_ms: i64,
    /// The instance type it was made with.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// The quota it consumes (audit mode: accounted, never refused).
    #[serde(default)]
    pub quota: Option<String>,
    /// Where it may run (oVirt's placement_policy).
    #[serde(default)]
    pub placement: Placement,
    /// The serial number its guest sees (oVirt's serial_number; none: the host's).
    #[serde(default)]
    pub serial_number: Option<SerialNumber>,
    /// Its serial console (oVirt's console.enabled); none: on, Halyard's default (the
    /// console log is how a VM's boot is read).
    #[serde(default)]
    pub console_enabled: Option<bool>,
    /// Its virtual NUMA nodes (oVirt's VirtualNumaNode; none: one node, libvirt's).
    #[serde(default)]
    pub numa_nodes: Vec<VmNumaNode>,
    /// The boot order (`os/boot/devices`: hd, cdrom, network); empty: hd.
    #[serde(default)]
    pub boot_devices: Vec<String>,
    /// `bios/type`: i440fx_sea_bios (empty), q35_sea_bios, q35_ovmf, q35_secure_boot.
    #[serde(default)]
    pub bios_type: String,
    /// Its graphics consoles (`vnc`, `spice`; oVirt's display), for the next run.
    #[serde(default)]
    pub graphics: Vec<String>,
    /// The ISO disk in its CD-ROM for the next run (empty: none).
    #[serde(default)]
    pub cdrom: String,
    /// The ISO disk in the running VM's CD-ROM (`current=true` changes it; set from
    /// `cdrom` at each start).
    #[serde(default)]
    pub cdrom_current: String,
    /// What cloud-init or sysprep sets up in the guest (oVirt's initialization).
    #[serde(default)]
    pub initialization: Option<crate::vminit::Initialization>,
    /// It ran once with its initialization (oVirt's is_initialized): later starts do
    /// not attach it again unless asked (`use_cloud_init`, `use_sysprep`).
    #[serde(default)]
    pub initialized: bool,
    /// oVirt's high_availability: the Manager restarts it after a crash or when its
    /// host stopped answering (see `ha`).
    #[serde(default)]
    pub ha_enabled: bool,
    /// Restart order among HA VMs (higher first; oVirt's UI: 1 low, 50 medium, 100
    /// high).
    #[serde(default)]
    pub ha_priority: i32,
    /// The storage domain holding its VM lease (oVirt's lease.storage_domain).
    #[serde(default)]
    pub lease_domain: Option<String>,
    /// An HA restart is due (it went down with an error; stored, so a restarted
    /// Manager still restarts it).
    #[serde(default)]
    pub ha_pending: bool,
    /// An HA restart of it runs on another host while its old host does not answer
    /// (memory only): the old host it is restarted from.
    #[serde(skip)]
    pub ha_from: Option<String>,
}

impl Vm {
    /// Its QEMU runs and its devices can change now (CD-ROM media, console tickets).
    pub fn running(&self) -> bool {
        matches!(
            self.status.as_str(),
            "up" | "powering_up" | "paused" | "reboot_in_progress"
        )
    }

    /// Its firmware and chipset (oVirt's BiosType; the default is i440fx with SeaBIOS).
    pub fn bios(&self) -> &str {
        if self.bios_type.is_empty() {
            "i440fx_sea_bios"
        } else {
            &self.bios_type
        }
    }
    /// Whether it runs on the q35 machine.
    pub fn q35(&self) -> bool {
        self.bios().starts_with("q35")
    }
}

/// A virtual NUMA node of a VM: its index (0..n), memory and vCPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmNumaNode {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub index: u32,
    /// MiB.
    pub memory: u64,
    /// The indexes of its vCPUs.
    #[serde(default)]
    pub cpus: Vec<u32>,
}

/// oVirt's placement_policy: the hosts a VM is pinned to (the scheduler's PinToHost
/// filter; empty: any host of its cluster) and its migration affinity
/// (migratable, user_migratable, pinned).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    #[serde(default)]
    pub affinity: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// See [`Vm::migration_seen`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationSeen {
    pub local: bool,
    pub sent_ms: Option<i64>,
    pub source_said: bool,
    /// The destination won, the hand-over (the source's copy destroyed) is under way:
    /// the VM stays `migrating` until it ended, so that no new migration to the old
    /// source starts while its copy is still being destroyed there.
    pub handing_over: bool,
}

/// oVirt's serial_number: `policy` host (the host's hardware UUID), vm (the VM's id)
/// or custom (`value`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SerialNumber {
    pub policy: String,
    #[serde(default)]
    pub value: String,
}

impl SerialNumber {
    /// The serial the guest sees on `host` (its hardware UUID).
    pub fn value_for(&self, vm: &Vm, host_uuid: &str) -> String {
        match self.policy.as_str() {
            "vm" => vm.id.clone(),
            "custom" => self.value.clone(),
            _ => host_uuid.to_string(),
        }
    }
}

/// What the guest agent reports (issue 6 fills it in).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestInfo {
    #[serde(default)]
    pub fqdn: String,
    #[serde(default)]
    pub os: BTreeMap<String, String>,
    #[serde(default)]
    pub timezone: Option<(String, i64)>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub nics: Vec<(String, String, Vec<String>)>,
    /// The guest agent answers (None: not known yet).
    #[serde(default)]
    pub agent: Option<bool>,
    #[serde(default)]
    pub users: String,
    #[serde(default)]
    pub cpu_count: Option<i64>,
    /// The running VM's graphics devices as its host reports them (VDSM's
    /// displayInfo): protocol, port, TLS port (-1: none), listen address.
    #[serde(default)]
    pub display: Vec<(String, i64, i64, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Nic {
    pub id: String,
    pub vm: String,
    pub name: String,
    pub interface: String,
    pub mac: String,
    pub network: String,
    pub plugged: bool,
    pub linked: bool,
    /// Its vNIC profile (which names the network).
    #[serde(default)]
    pub vnic_profile: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub id: i64,
    pub code: i64,
    /// normal, warning, error, alert
    pub severity: String,
    pub description: String,
    pub time: i64,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub data_center: Option<String>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// External events (`POST /events`): who sent it and its id there.
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub custom_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub description: String,
    /// started, finished, failed, aborted
    pub status: String,
    pub start_time: i64,
    #[serde(default)]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub id: String,
    pub description: String,
    pub step_type: String,
    pub status: String,
    pub number: u32,
    pub start_time: i64,
    #[serde(default)]
    pub end_time: Option<i64>,
}

/// An image transfer (oVirt's ImageTransfer): a client's upload into or download of
/// a disk, through a ticket on a host's image data server and the Manager's proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageTransfer {
    pub id: String,
    pub disk: String,
    /// upload, download
    pub direction: String,
    /// raw (guest data, through qemu-nbd) or cow (the volume's qcow2 bytes)
    pub format: String,
    /// oVirt's ImageTransferPhase names.
    pub phase: String,
    #[serde(default)]
    pub host: Option<String>,
    /// The ticket id: the capability in both URLs (shown only in them).
    #[serde(default)]
    pub ticket: String,
    #[serde(default)]
    pub transfer_url: String,
    #[serde(default)]
    pub proxy_url: String,
    /// The host name clients reach the proxy at (the Host the transfer was asked with).
    #[serde(default)]
    pub proxy_host: String,
    pub inactivity_timeout: u64,
    /// legacy, pause, cancel
    pub timeout_policy: String,
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub shallow: bool,
    /// The host serves it through qemu-nbd (format raw).
    #[serde(default)]
    pub nbd: bool,
    /// Bytes the ticket covers.
    #[serde(default)]
    pub size: u64,
    pub creation_time: i64,
    /// When it reached a final phase (it is forgotten some minutes later).
    #[serde(default)]
    pub end_time: Option<i64>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: String,
}

/// Everything, in memory.
#[derive(Debug, Default)]
pub struct Inventory {
    pub data_centers: BTreeMap<String, DataCenter>,
    pub clusters: BTreeMap<String, Cluster>,
    pub networks: BTreeMap<String, Network>,
    pub hosts: BTreeMap<String, Host>,
    pub vms: BTreeMap<String, Vm>,
    pub nics: BTreeMap<String, Nic>,
    pub jobs: BTreeMap<String, Job>,
    pub storage_domains: BTreeMap<String, StorageDomain>,
    pub disks: BTreeMap<String, Disk>,
    pub snapshots: BTreeMap<String, Snapshot>,
    pub templates: BTreeMap<String, Template>,
    pub image_transfers: BTreeMap<String, ImageTransfer>,
    pub tasks: BTreeMap<String, StorageTask>,
    pub join_tokens: BTreeMap<String, JoinToken>,
    pub tags: BTreeMap<String, Tag>,
    pub records: BTreeMap<String, Record>,
    pub fence_agents: BTreeMap<String, FenceAgent>,
    /// VM name -> id (names are unique): searches by name are lookups.
    pub vm_names: HashMap<String, String>,
    /// MAC address -> how many NICs have it (addresses are checked against every NIC).
    pub macs: HashMap<u64, u32>,
    /// Host id -> memory of the VMs placed there (every state but down), kept as VMs
    /// change (see `Stored::reindex`).
    pub committed: HashMap<String, u64>,
    /// Host id -> the VMs placed there (a VM has a host from placement until it is
    /// down), kept as VMs change: a host's VMs are a lookup, not a walk over every VM.
    pub vms_on: HashMap<String, std::collections::BTreeSet<String>>,
    /// VM id -> its NICs, and VM id -> its disks (kept as NICs and disks change).
    pub nics_by_vm: HashMap<String, std::collections::BTreeSet<String>>,
    pub disks_by_vm: HashMap<String, std::collections::BTreeSet<String>>,
    pub events: std::collections::VecDeque<Event>,
    pub next_event_id: i64,
    /// The directory as last read (see `crate::directory::refresh`).
    pub directory: std::sync::Arc<crate::directory::Directory>,
}

/// Adds `member` to the set under `key` of an index (`add`) or takes it out (an empty
/// set goes).
pub fn index_set(
    index: &mut HashMap<String, std::collections::BTreeSet<String>>,
    key: &str,
    member: &str,
    add: bool,
) {
    if add {
        index
            .entry(key.to_string())
            .or_default()
            .insert(member.to_string());
    } else if let Some(set) = index.get_mut(key) {
        set.remove(member);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// Memory kept back on every host for the host itself (oVirt's reserved memory).
pub const HOST_RESERVED_MEMORY: u64 = 256 << 20;

impl Inventory {
    /// What a VM adds to its host's committed memory.
    pub fn commitment(v: &Vm) -> Option<(&str, u64)> {
        match v.host.as_deref() {
            Some(h) if v.status != "down" => Some((h, v.memory)),
            _ => None,
        }
    }

    /// Takes `mem` committed on host `h` out (`add` false) or puts it in.
    pub fn commit(&mut self, h: &str, mem: u64, add: bool) {
        let e = self.committed.entry(h.to_string()).or_default();
        *e = if add { *e + mem } else { e.saturating_sub(mem) };
        if *e == 0 {
            self.committed.remove(h);
        }
    }

    /// oVirt's max_scheduling_memory: the host's memory less what its VMs are given
    /// (the `committed` index) and less the host's reserve. It counts a VM from the
    /// moment it is placed, so back-to-back starts never overbook a host between two
    /// samples.
    pub fn scheduling_memory(&self, h: &Host) -> u64 {
        h.memory
            .saturating_sub(self.committed.get(&h.id).copied().unwrap_or(0))
            .saturating_sub(HOST_RESERVED_MEMORY)
    }

    /// The VMs placed on a host (from the `vms_on` index).
    pub fn vms_on<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a Vm> + 'a {
        self.vms_on
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|id| self.vms.get(id))
    }

    /// Whether a host has a VM in any state but down.
    pub fn host_runs_vms(&self, host: &str) -> bool {
        self.vms_on(host).any(|v| v.status != "down")
    }

    pub fn vm_by_name(&self, name: &str) -> Option<&Vm> {
        self.vm_names.get(name).and_then(|id| self.vms.get(id))
    }
    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.values().find(|h| h.name == name)
    }
    pub fn cluster_by_name(&self, name: &str) -> Option<&Cluster> {
        self.clusters.values().find(|c| c.name == name)
    }
    pub fn dc_by_name(&self, name: &str) -> Option<&DataCenter> {
        self.data_centers.values().find(|c| c.name == name)
    }
    /// A VM's disks, in the order they were made (as oVirt lists them).
    pub fn disks_of(&self, vm: &str) -> Vec<&Disk> {
        let mut v: Vec<&Disk> = self
            .disks_by_vm
            .get(vm)
            .into_iter()
            .flatten()
            .filter_map(|id| self.disks.get(id))
            .collect();
        v.sort_by(|a, b| (a.creation_time, &a.id).cmp(&(b.creation_time, &b.id)));
        v
    }
    /// Hosts of a data center (through their clusters).
    pub fn hosts_of_dc(&self, dc: &str) -> Vec<&Host> {
        self.hosts
            .values()
            .filter(|h| {
                self.clusters
                    .get(&h.cluster)
                    .is_some_and(|c| c.data_center == dc)
            })
            .collect()
    }
    pub fn dc_of_cluster(&self, cluster: &str) -> Option<&str> {
        self.clusters.get(cluster).map(|c| c.data_center.as_str())
    }
    /// The records of model type `ty`.
    pub fn records_of<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.values().filter(move |r| r.ty == ty)
    }
    pub fn record(&self, ty: &str, id: &str) -> Option<&Record> {
        self.records.get(id).filter(|r| r.ty == ty)
    }
    /// The network (a bridge of its name on the host) a VM NIC is on: its network's
    /// name, `ovirtmgmt` for a NIC without one.
    pub fn nic_network(&self, n: &Nic) -> String {
        self.networks
            .get(&n.network)
            .map(|x| x.name.clone())
            .unwrap_or_else(|| "ovirtmgmt".into())
    }

    /// The NICs a VM starts with (oVirt leaves unplugged ones out of the domain), each
    /// with its network (see [`Inventory::nic_network`]).
    pub fn plugged_nics(&self, vm: &str) -> Vec<(Nic, String)> {
        self.nics_of(vm)
            .into_iter()
            .filter(|n| n.plugged)
            .map(|n| (n.clone(), self.nic_network(n)))
            .collect()
    }

    pub fn nics_of(&self, vm: &str) -> Vec<&Nic> {
        self.nics_by_vm
            .get(vm)
            .into_iter()
            .flatten()
            .filter_map(|id| self.nics.get(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(iso8601(1_795_000_000_123), "2026-11-18T11:06:40.123+00:00");
    }

    proptest::proptest! {
        /// The digit-by-digit writer gives what the formatting machinery gives.
        #[test]
        fn dates_as_formatted(ms in -62_000_000_000_000i64..250_000_000_000_000i64) {
            let secs = ms.div_euclid(1000);
            let rem = secs.rem_euclid(86_400);
            let (y, m, d) = halyard_common::text::civil_from_days(secs.div_euclid(86_400));
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
                rem / 3600,
                (rem / 60) % 60,
                rem % 60,
                ms.rem_euclid(1000)
            );
            proptest::prop_assert_eq!(iso8601(ms), want);
        }
    }
}
