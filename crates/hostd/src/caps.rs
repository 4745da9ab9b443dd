//! Host.getCapabilities: CPU, memory, NUMA, NICs, versions, from /proc, sysfs and
//! libvirt's capabilities XML, with the keys the engine reads.

use std::collections::BTreeMap;
use std::fs;

use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::{errors, Capabilities, PackageVersion};
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::{json, Value};

use crate::config::Config;
use crate::libvirt::{version_string, Libvirt};
use crate::monitor::host::read_meminfo;

/// Cluster levels and engine versions this agent serves (as VDSM 4.50 does).
const CLUSTER_LEVELS: &[&str] = &["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"];
const ENGINES: &[&str] = &["4.2", "4.3", "4.4", "4.5"];

struct CpuInfo {
    model: String,
    flags: Vec<String>,
    mhz: String,
    threads: usize,
    cores: usize,
    sockets: usize,
}

fn cpuinfo() -> CpuInfo {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut model = String::new();
    let mut flags = Vec::new();
    let mut mhz = String::new();
    let mut threads = 0;
    let mut cores = std::collections::BTreeSet::new();
    let mut sockets = std::collections::BTreeSet::new();
    let mut phys = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" if model.is_empty() => model = v.to_string(),
            "flags" if flags.is_empty() => {
                flags = v.split_whitespace().map(str::to_string).collect()
            }
            "cpu MHz" if mhz.is_empty() => mhz = v.to_string(),
            "physical id" => {
                phys = v.to_string();
                sockets.insert(v.to_string());
            }
            "core id" => {
                cores.insert(format!("{phys}:{v}"));
            }
            _ => {}
        }
    }
    CpuInfo {
        model,
        flags,
        mhz,
        threads: threads.max(1),
        cores: cores.len().max(1),
        sockets: sockets.len().max(1),
    }
}

/// From libvirt's capabilities XML: the host UUID and the x86_64 machine types.
fn parse_libvirt_caps(xml: &str) -> (String, Vec<String>) {
    let mut r = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut uuid = String::new();
    let mut machines = Vec::new();
    let mut arch = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => {
                let n = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if n == "arch" {
                    arch = e
                        .try_get_attribute("name")
                        .ok()
                        .flatten()
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                        .unwrap_or_default();
                }
                if n == "machine" {
                    if let Ok(Some(c)) = e.try_get_attribute("canonical") {
                        if arch == "x86_64" {
                            machines.push(String::from_utf8_lossy(&c.value).into_owned());
                        }
                    }
                }
                path.push(n);
            }
            Ok(Event::Text(t)) => {
                let t = t.decode().map(|c| c.trim().to_string()).unwrap_or_default();
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                match p.as_slice() {
                    ["capabilities", "host", "uuid"] => uuid = t,
                    [.., "guest", "arch", "machine"] if arch == "x86_64" && !t.is_empty() => {
                        machines.push(t)
                    }
                    _ => {}
                }
            }
            Ok(Event::End(_)) => {
                path.pop();
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    machines.sort();
    machines.dedup();
    (uuid, machines)
}

fn os_release() -> BTreeMap<String, String> {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let kv: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    let mut out = BTreeMap::new();
    out.insert("name".into(), kv.get("NAME").cloned().unwrap_or_default());
    out.insert(
        "version".into(),
        kv.get("VERSION_ID").cloned().unwrap_or_default(),
    );
    out.insert("release".into(), String::new());
    out.insert(
        "pretty_name".into(),
        kv.get("PRETTY_NAME").cloned().unwrap_or_default(),
    );
    out
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn nics() -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let mut nics = BTreeMap::new();
    let mut bridges = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return (nics, bridges);
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = e.path();
        let read = |f: &str| {
            fs::read_to_string(base.join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let entry = json!({
            "hwaddr": read("address"),
            "mtu": read("mtu"),
            "speed": read("speed").parse::<i64>().unwrap_or(0).max(0),
        });
        if base.join("bridge").exists() {
            let ports: Vec<String> = fs::read_dir(base.join("brif"))
                .map(|d| {
                    d.flatten()
                        .map(|p| p.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let mut b = entry;
            b["ports"] = json!(ports);
            bridges.insert(name, b);
        } else if base.join("device").exists() {
            nics.insert(name, entry);
        }
    }
    (nics, bridges)
}

/// Collects the capabilities (blocking: reads files and asks libvirt).
pub fn collect(virt: &Libvirt, cfg: &Config) -> Result<Capabilities, RpcError> {
    let err = |e: crate::libvirt::VirtError| errors::GENERAL.rpc(Some(&e.message));
    let cpu = cpuinfo();
    let (uuid, machines) = parse_libvirt_caps(&virt.capabilities().map_err(err)?);
    let mem = read_meminfo();
    let mem_mib = mem.get("MemTotal").copied().unwrap_or(0) / 1024;
    let (nics, bridges) = nics();
    let mut packages2 = BTreeMap::new();
    packages2.insert(
        "libvirt".to_string(),
        PackageVersion {
            version: version_string(virt.lib_version().map_err(err)?),
            release: String::new(),
        },
    );
    packages2.insert(
        "qemu-kvm".to_string(),
        PackageVersion {
            version: version_string(virt.hyp_version().map_err(err)?),
            release: String::new(),
        },
    );
    packages2.insert(
        "kernel".to_string(),
        PackageVersion {
            version: kernel_release(),
            release: String::new(),
        },
    );
    packages2.insert(
        "vdsm".to_string(),
        PackageVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            release: "halyard".to_string(),
        },
    );
    let mut numa = BTreeMap::new();
    numa.insert(
        "0".to_string(),
        json!({"cpus": (0..cpu.threads).collect::<Vec<_>>(), "totalMemory": mem_mib.to_string()}),
    );
    let iscsi = fs::read_to_string("/etc/iscsi/initiatorname.iscsi")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("InitiatorName=").map(str::to_string))
        })
        .unwrap_or_default();
    let mut hba = BTreeMap::new();
    hba.insert(
        "iSCSI".to_string(),
        if iscsi.is_empty() {
            vec![]
        } else {
            vec![json!({"InitiatorName": iscsi})]
        },
    );
    hba.insert("FC".to_string(), vec![]);
    Ok(Capabilities {
        kvm_enabled: "true".into(),
        cpu_cores: (cpu.cores * cpu.sockets).to_string(),
        cpu_threads: cpu.threads.to_string(),
        cpu_sockets: cpu.sockets.to_string(),
        online_cpus: (0..cpu.threads)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(","),
        cpu_speed: cpu.mhz,
        cpu_model: cpu.model,
        cpu_flags: cpu.flags.join(","),
        mem_size: mem_mib.to_string(),
        reserved_mem: "321".into(),
        guest_overhead: "65".into(),
        uuid,
        software_version: "4.50".into(),
        software_revision: env!("CARGO_PKG_VERSION").into(),
        version_name: "Halyard".into(),
        supported_engines: ENGINES.iter().map(|s| s.to_string()).collect(),
        cluster_levels: CLUSTER_LEVELS.iter().map(|s| s.to_string()).collect(),
        emulated_machines: machines,
        vm_types: vec!["kvm".into()],
        hba_inventory: hba,
        iscsi_initiator_name: iscsi,
        rng_sources: vec!["random".into(), "hwrng".into()],
        numa_nodes: numa,
        operating_system: os_release(),
        packages2,
        nics,
        bridges,
        networks: BTreeMap::new(),
        vlans: BTreeMap::new(),
        bondings: BTreeMap::new(),
        hooks: BTreeMap::new(),
        domain_versions: vec![0, 2, 3, 4, 5],
        net_config_dirty: "False".into(),
        domain_type: cfg.libvirt.domain_type.clone(),
        imageio_port: 0,
        extra: serde_json::Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_caps() {
        let xml = r#"<capabilities><host><uuid>abc</uuid></host>
          <guest><arch name="x86_64"><machine maxCpus="255">pc-i440fx-7.2</machine>
          <machine canonical="pc-i440fx-7.2" maxCpus="255">pc</machine></arch></guest>
          <guest><arch name="i686"><machine>isapc</machine></arch></guest></capabilities>"#;
        let (u, m) = parse_libvirt_caps(xml);
        assert_eq!(u, "abc");
        assert_eq!(m, vec!["pc", "pc-i440fx-7.2"]);
    }

    #[test]
    fn cpu() {
        let c = cpuinfo();
        assert!(c.threads >= 1);
    }
}
