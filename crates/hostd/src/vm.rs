//! The agent's view of its VMs: status as VDSM reports it, exit information, the last
//! stats sample, and how both turn into VDSM's stats dictionaries.

use std::collections::BTreeMap;

use halyard_proto::vdsm::{exit_reason, VmStats, VmStatus};
use serde_json::{json, Map, Value};

use crate::clock;
use crate::domxml::DomainInfo;
use crate::libvirt::DomainStats;

/// Why and how a VM went down.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i64,
    pub reason: i64,
    pub message: String,
}

impl Exit {
    pub fn new(code: i64, reason: i64, message: Option<String>) -> Self {
        Exit {
            code,
            reason,
            message: message.unwrap_or_else(|| exit_reason::message(reason).to_string()),
        }
    }
}

/// One VM the agent manages.
#[derive(Debug, Clone)]
pub struct VmEntry {
    pub id: String,
    pub name: String,
    pub status: VmStatus,
    /// `event_time()` of the last status change.
    pub status_time: i64,
    /// Wall-clock start (seconds), for elapsedTime.
    pub start_wall: f64,
    /// Monotonic start (seconds), for the powering-up timeout.
    pub start_mono: f64,
    /// The guest agent has connected since the last (re)boot.
    pub guest_agent_up: bool,
    pub exit: Option<Exit>,
    /// The domain XML as started (live XML once known).
    pub xml: String,
    pub info: DomainInfo,
    pub pid: Option<u32>,
    /// The engine asked for this VM to stop (destroy or shutdown).
    pub admin_stop: bool,
    /// Bumped by each shutdown request; a shutdown task gives up when it changed.
    pub shutdown_gen: u64,
    pub sample: Option<VmSample>,
    /// What the guest agent told (see [`crate::guestinfo`]).
    pub guest: crate::guestinfo::GuestData,
    /// The last migration away from this host (its status stays for
    /// VM.getMigrationStatus after it ended).
    pub outgoing: Option<std::sync::Arc<crate::migration::Outgoing>>,
    /// Set while the VM is arriving by migration.
    pub incoming: Option<std::sync::Arc<crate::migration::Incoming>>,
    /// The certificate subject of the host that migrated the VM here, until the VM
    /// runs here (that host may destroy the copy of a migration that failed).
    pub arriving_from: Option<String>,
}

impl VmEntry {
    pub fn new(info: DomainInfo, xml: String, start_wall: f64) -> Self {
        VmEntry {
            id: info.uuid.clone(),
            name: info.name.clone(),
            status: VmStatus::WaitForLaunch,
            status_time: clock::event_time(),
            start_wall,
            start_mono: clock::monotonic_secs(),
            guest_agent_up: false,
            exit: None,
            xml,
            info,
            pid: None,
            admin_stop: false,
            shutdown_gen: 0,
            sample: None,
            guest: Default::default(),
            outgoing: None,
            incoming: None,
            arriving_from: None,
        }
    }

    /// Changes the status; returns true if it changed.
    pub fn set_status(&mut self, s: VmStatus) -> bool {
        if self.status == s {
            return false;
        }
        self.status = s;
        self.status_time = clock::event_time();
        true
    }

    pub fn set_down(&mut self, exit: Exit) -> bool {
        self.exit = Some(exit);
        self.pid = None;
        self.set_status(VmStatus::Down)
    }

    /// The short entry of getVMList.
    pub fn list_entry(&self, with_xml: bool) -> halyard_proto::vdsm::VmListEntry {
        halyard_proto::vdsm::VmListEntry {
            vm_id: self.id.clone(),
            status: self.status,
            status_time: self.status_time.to_string(),
            xml: with_xml.then(|| self.xml.clone()),
        }
    }

    /// The VM's stats dictionary (getAllVmStats / VM.getStats / events).
    pub fn stats(&self) -> VmStats {
        let mut s = VmStats {
            vm_id: self.id.clone(),
            status: Some(self.status),
            status_time: self.status_time.to_string(),
            ..VmStats::default()
        };
        if self.status == VmStatus::MigrationSource {
            s.migration_progress = self.outgoing.as_ref().map(|o| o.progress() as u64);
        }
        if self.status == VmStatus::Down {
            if let Some(e) = &self.exit {
                s.exit_code = Some(e.code);
                s.exit_message = Some(e.message.clone());
                s.exit_reason = Some(e.reason);
            }
            return s;
        }
        s.vm_name = Some(self.name.clone());
        s.vm_type = Some("kvm".into());
        s.kvm_enable = Some("true".into());
        s.acpi_enable = Some("true".into());
        s.elapsed_time = Some(format!(
            "{}",
            (clock::wall_secs() - self.start_wall).max(0.0) as i64
        ));
        s.monitor_response = Some("0".into());
        s.time_offset = Some("0".into());
        s.pid = self.pid.map(|p| p.to_string());
        s.username = Some("Unknown".into());
        s.guest_fqdn = Some(String::new());
        s.guest_ips = Some(String::new());
        s.mem_usage = Some("0".into());
        s.guest_cpu_count = Some(-1);
        s.vcpu_count = self.info.vcpus.map(|v| v.to_string());
        s.cpu_user = Some("0.00".into());
        s.cpu_sys = Some("0.00".into());
        if let Some(sample) = &self.sample {
            sample.fill(&mut s, &self.info);
        }
        crate::guestinfo::fill(&self.guest, &mut s);
        if !self.info.graphics.is_empty() {
            s.display_info = Some(
                self.info
                    .graphics
                    .iter()
                    .map(|g| {
                        let mut m = serde_json::Map::new();
                        m.insert("type".into(), g.kind.clone().into());
                        m.insert("port".into(), g.port.to_string().into());
                        m.insert("tlsPort".into(), g.tls_port.to_string().into());
                        m.insert("ipAddress".into(), g.listen.clone().into());
                        m
                    })
                    .collect(),
            );
        }
        s
    }
}

/// One VM's values from a bulk stats call, with rates against the previous call.
#[derive(Debug, Clone, Default)]
pub struct VmSample {
    pub mono: f64,
    pub raw: DomainStats,
    pub cpu_user_pct: f64,
    pub cpu_sys_pct: f64,
    /// Per block device name: (read B/s, write B/s, read latency s, write latency s,
    /// flush latency s).
    pub disk_rates: BTreeMap<String, [f64; 5]>,
}

impl VmSample {
    /// Builds a sample, computing rates against `prev` (same VM) when given.
    pub fn new(raw: DomainStats, mono: f64, prev: Option<&VmSample>) -> Self {
        let mut s = VmSample {
            mono,
            raw,
            ..VmSample::default()
        };
        let Some(p) = prev else { return s };
        let dt = mono - p.mono;
        if dt <= 0.0 {
            return s;
        }
        let d = |k: &str| {
            s.raw
                .u64(k)
                .unwrap_or(0)
                .saturating_sub(p.raw.u64(k).unwrap_or(0)) as f64
        };
        let dt_ns = dt * 1e9;
        let total = d("cpu.time");
        let sys = d("cpu.system");
        s.cpu_user_pct = (100.0 * (total - sys).max(0.0) / dt_ns).max(0.0);
        s.cpu_sys_pct = 100.0 * sys / dt_ns;
        let count = s.raw.u64("block.count").unwrap_or(0);
        for i in 0..count.min(256) {
            let Some(name) = s.raw.str(&format!("block.{i}.name")).map(str::to_string) else {
                continue;
            };
            // Match the previous sample's device of the same name.
            let pi = (0..p.raw.u64("block.count").unwrap_or(0).min(256))
                .find(|j| p.raw.str(&format!("block.{j}.name")) == Some(name.as_str()));
            let Some(pi) = pi else { continue };
            let dd = |k: &str| {
                s.raw
                    .u64(&format!("block.{i}.{k}"))
                    .unwrap_or(0)
                    .saturating_sub(p.raw.u64(&format!("block.{pi}.{k}")).unwrap_or(0))
                    as f64
            };
            let lat = |t: f64, n: f64| if n > 0.0 { t / n / 1e9 } else { 0.0 };
            s.disk_rates.insert(
                name,
                [
                    dd("rd.bytes") / dt,
                    dd("wr.bytes") / dt,
                    lat(dd("rd.times"), dd("rd.reqs")),
                    lat(dd("wr.times"), dd("wr.reqs")),
                    lat(dd("fl.times"), dd("fl.reqs")),
                ],
            );
        }
        s
    }

    fn fill(&self, s: &mut VmStats, info: &DomainInfo) {
        let r = &self.raw;
        s.cpu_user = Some(format!("{:.2}", self.cpu_user_pct));
        s.cpu_sys = Some(format!("{:.2}", self.cpu_sys_pct));
        if let Some(t) = r.u64("cpu.time") {
            s.cpu_usage = Some(t.to_string());
        }
        if let Some(v) = r.u64("vcpu.current") {
            s.vcpu_count = Some(v.to_string());
        }
        if let (Some(cur), Some(max)) = (r.u64("balloon.current"), r.u64("balloon.maximum")) {
            let mut b = Map::new();
            b.insert("balloon_cur".into(), json!(cur.to_string()));
            b.insert("balloon_max".into(), json!(max.to_string()));
            b.insert("balloon_min".into(), json!("0"));
            b.insert("balloon_target".into(), json!(cur.to_string()));
            b.insert("ballooning_enabled".into(), json!(false));
            s.balloon_info = Some(b);
        }
        let mut nets = BTreeMap::new();
        for i in 0..r.u64("net.count").unwrap_or(0).min(256) {
            let Some(name) = r.str(&format!("net.{i}.name")) else {
                continue;
            };
            let g = |k: &str| r.u64(&format!("net.{i}.{k}")).unwrap_or(0).to_string();
            let mac = info
                .nics
                .iter()
                .find(|n| n.target.as_deref() == Some(name))
                .map(|n| n.mac.clone())
                .unwrap_or_default();
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.insert("macAddr".into(), json!(mac));
            m.insert("speed".into(), json!("1000"));
            m.insert("state".into(), json!("unknown"));
            m.insert("rx".into(), json!(g("rx.bytes")));
            m.insert("tx".into(), json!(g("tx.bytes")));
            m.insert("rxErrors".into(), json!(g("rx.errs")));
            m.insert("rxDropped".into(), json!(g("rx.drop")));
            m.insert("txErrors".into(), json!(g("tx.errs")));
            m.insert("txDropped".into(), json!(g("tx.drop")));
            m.insert("sampleTime".into(), json!(self.mono));
            nets.insert(name.to_string(), m);
        }
        if !nets.is_empty() {
            s.network = Some(nets);
        }
        let mut disks = BTreeMap::new();
        for i in 0..r.u64("block.count").unwrap_or(0).min(256) {
            let Some(name) = r.str(&format!("block.{i}.name")) else {
                continue;
            };
            let g = |k: &str| r.u64(&format!("block.{i}.{k}")).unwrap_or(0).to_string();
            let rates = self.disk_rates.get(name).copied().unwrap_or_default();
            let mut m = Map::new();
            m.insert("readRate".into(), json!(format!("{:.1}", rates[0])));
            m.insert("writeRate".into(), json!(format!("{:.1}", rates[1])));
            m.insert("readLatency".into(), json!(format!("{:.6}", rates[2])));
            m.insert("writeLatency".into(), json!(format!("{:.6}", rates[3])));
            m.insert("flushLatency".into(), json!(format!("{:.6}", rates[4])));
            m.insert("readBytes".into(), json!(g("rd.bytes")));
            m.insert("writtenBytes".into(), json!(g("wr.bytes")));
            m.insert("readOps".into(), json!(g("rd.reqs")));
            m.insert("writeOps".into(), json!(g("wr.reqs")));
            m.insert("apparentsize".into(), json!(g("capacity")));
            m.insert("truesize".into(), json!(g("allocation")));
            if let Some(p) = r.str(&format!("block.{i}.path")) {
                m.insert("path".into(), Value::String(p.to_string()));
            }
            disks.insert(name.to_string(), m);
        }
        if !disks.is_empty() {
            s.disks = Some(disks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::ParamValue;

    fn raw(cpu_time: u64, sys: u64, rd: u64) -> DomainStats {
        let mut p = BTreeMap::new();
        p.insert("cpu.time".into(), ParamValue::U(cpu_time));
        p.insert("cpu.system".into(), ParamValue::U(sys));
        p.insert("block.count".into(), ParamValue::U(1));
        p.insert("block.0.name".into(), ParamValue::S("vda".into()));
        p.insert("block.0.rd.bytes".into(), ParamValue::U(rd));
        p.insert("net.count".into(), ParamValue::U(1));
        p.insert("net.0.name".into(), ParamValue::S("vnet0".into()));
        p.insert("net.0.rx.bytes".into(), ParamValue::U(42));
        DomainStats {
            uuid: "u".into(),
            params: p,
        }
    }

    #[test]
    fn rates_and_shapes() {
        let a = VmSample::new(raw(0, 0, 0), 10.0, None);
        let b = VmSample::new(raw(1_000_000_000, 250_000_000, 4096), 12.0, Some(&a));
        assert!((b.cpu_user_pct - 37.5).abs() < 1e-9);
        assert!((b.cpu_sys_pct - 12.5).abs() < 1e-9);
        let info = DomainInfo {
            uuid: "u".into(),
            name: "n".into(),
            vcpus: Some(1),
            ..DomainInfo::default()
        };
        let mut e = VmEntry::new(info, String::new(), clock::wall_secs());
        e.set_status(VmStatus::Up);
        e.sample = Some(b);
        let s = e.stats();
        assert_eq!(s.cpu_user.as_deref(), Some("37.50"));
        let disks = s.disks.expect("disks");
        assert_eq!(disks["vda"]["readRate"], json!("2048.0"));
        let net = s.network.expect("net");
        assert_eq!(net["vnet0"]["rx"], json!("42"));
        e.set_down(Exit::new(0, exit_reason::USER_SHUTDOWN, None));
        let s = e.stats();
        assert_eq!(s.exit_reason, Some(7));
        assert_eq!(s.vm_name, None);
    }
}
