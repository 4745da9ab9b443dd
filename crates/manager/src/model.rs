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
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}+00:00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataCenter {
    pub id: String,
    pub name: String,
    pub description: String,
    pub local: bool,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub description: String,
    pub data_center: String,
    pub cpu_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub description: String,
    pub data_center: String,
    pub mtu: u32,
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
    #[serde(default)]
    pub spm_priority: i32,
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
    pub events: std::collections::VecDeque<Event>,
    pub next_event_id: i64,
}

/// Memory kept back on every host for the host itself (oVirt's reserved memory).
pub const HOST_RESERVED_MEMORY: u64 = 256 << 20;

impl Inventory {
    /// Memory committed to the VMs placed on each host (every state but down), in one
    /// pass over the VMs.
    pub fn committed_memory(&self) -> HashMap<&str, u64> {
        let mut m: HashMap<&str, u64> = HashMap::new();
        for v in self.vms.values() {
            if let Some(h) = v.host.as_deref() {
                if v.status != "down" {
                    *m.entry(h).or_default() += v.memory;
                }
            }
        }
        m
    }

    /// oVirt's max_scheduling_memory: the host's memory less what its VMs are given
    /// (`committed`, from [`Inventory::committed_memory`]) and less the host's reserve.
    /// It counts a VM from the moment it is placed, so back-to-back starts never
    /// overbook a host between two samples.
    pub fn scheduling_memory_with(&self, h: &Host, committed: &HashMap<&str, u64>) -> u64 {
        h.memory
            .saturating_sub(committed.get(h.id.as_str()).copied().unwrap_or(0))
            .saturating_sub(HOST_RESERVED_MEMORY)
    }

    /// [`Inventory::scheduling_memory_with`] for one host.
    pub fn scheduling_memory(&self, h: &Host) -> u64 {
        let committed: u64 = self
            .vms
            .values()
            .filter(|v| v.host.as_deref() == Some(h.id.as_str()) && v.status != "down")
            .map(|v| v.memory)
            .sum();
        h.memory
            .saturating_sub(committed)
            .saturating_sub(HOST_RESERVED_MEMORY)
    }

    pub fn vm_by_name(&self, name: &str) -> Option<&Vm> {
        self.vms.values().find(|v| v.name == name)
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
    pub fn nics_of(&self, vm: &str) -> Vec<&Nic> {
        self.nics.values().filter(|n| n.vm == vm).collect()
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
}
