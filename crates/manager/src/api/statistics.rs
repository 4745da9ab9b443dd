//! Statistics from the agents' real samples (kept in memory by the monitor): a host's
//! (Host.getStats), its NICs' (the same sample's `network`, rates from the last two
//! samples) and a VM's (Host.getAllVmStats). oVirt's statistic names, units and kinds;
//! what no sample has shown yet is not made up (a down VM has `memory.installed` only).

use std::sync::Arc;

use axum::http::Method;

use super::handlers::{check_id, ok, ApiError, Out, Req};
use super::node::Node;
use super::render::href;
use crate::model::*;
use crate::state::Manager;

/// A stable id for statistic `name` of object `owner` (oVirt's are fixed per name).
fn stat_id(owner: &str, name: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in owner.bytes().chain([0]).chain(name.bytes()) {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(5);
    }
    let x = (u128::from(a) << 64) | u128::from(b);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// One statistic: (name, description, kind, type, unit, value).
struct Stat {
    name: &'static str,
    description: &'static str,
    kind: &'static str,
    unit: &'static str,
    value: f64,
}

const fn gauge(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    value: f64,
) -> Stat {
    Stat {
        name,
        description,
        kind: "gauge",
        unit,
        value,
    }
}

fn render(stats: Vec<Stat>, owner_tag: &str, owner_href: &str, owner: &str) -> Node {
    let mut l = Node::new("statistics");
    for s in stats {
        let id = stat_id(owner, s.name);
        let integer = s.value.fract() == 0.0 && s.unit != "percent";
        let datum = if integer {
            format!("{}", s.value as i64)
        } else {
            format!("{:.2}", s.value)
        };
        l.push(
            Node::new("statistic")
                .attr("href", format!("{owner_href}/statistics/{id}"))
                .attr("id", &id)
                .with(Node::leaf("name", s.name))
                .with(Node::leaf("description", s.description))
                .with(Node::leaf("kind", s.kind))
                .with(Node::leaf(
                    "type",
                    if integer { "integer" } else { "decimal" },
                ))
                .with(Node::leaf("unit", s.unit))
                .with(Node::new("values").with(Node::new("value").with(Node::leaf("datum", datum))))
                .with(Node::reference(owner_tag.to_string(), owner_href, owner)),
        );
    }
    l
}

fn host_stats(h: &Host) -> Vec<Stat> {
    let mut out = vec![gauge(
        "memory.total",
        "Total memory",
        "bytes",
        h.memory as f64,
    )];
    let Some(s) = h.samples.last() else {
        return out;
    };
    let mib = 1024.0 * 1024.0;
    let free = s.mem_free as f64 * mib;
    out.extend([
        gauge(
            "memory.used",
            "Used memory",
            "bytes",
            (h.memory as f64 - free).max(0.0),
        ),
        gauge("memory.free", "Free memory", "bytes", free),
        gauge(
            "memory.shared",
            "Shared memory",
            "bytes",
            s.mem_shared as f64 * mib,
        ),
        gauge(
            "swap.total",
            "Total swap",
            "bytes",
            s.swap_total as f64 * mib,
        ),
        gauge("swap.free", "Free swap", "bytes", s.swap_free as f64 * mib),
        gauge(
            "swap.used",
            "Used swap",
            "bytes",
            s.swap_total.saturating_sub(s.swap_free) as f64 * mib,
        ),
        gauge("cpu.current.user", "User CPU usage", "percent", s.cpu_user),
        gauge(
            "cpu.current.system",
            "System CPU usage",
            "percent",
            s.cpu_sys,
        ),
        gauge("cpu.current.idle", "Idle CPU usage", "percent", s.cpu_idle),
        gauge(
            "cpu.load.avg.5m",
            "CPU 5 minute load average",
            "none",
            s.cpu_load,
        ),
        gauge(
            "boot.time",
            "Boot time of the machine",
            "seconds",
            s.boot_time,
        ),
    ]);
    out
}

fn nic_id(host: &str, name: &str) -> String {
    stat_id(host, &format!("nic:{name}"))
}

fn host_nic(h: &Host, n: &NicSample) -> Node {
    let id = nic_id(&h.id, &n.name);
    let hr = format!("{}/nics/{id}", href("hosts", &h.id));
    Node::new("host_nic")
        .attr("href", &hr)
        .attr("id", &id)
        .with(Node::link("statistics", format!("{hr}/statistics")))
        .with(Node::leaf("name", &n.name))
        .with(Node::leaf("speed", (n.speed * 1e6) as u64))
        .with(Node::leaf("status", if n.up { "up" } else { "down" }))
        .with(Node::reference("host", &href("hosts", &h.id), &h.id))
}

fn nic_stats(h: &Host, name: &str) -> Vec<Stat> {
    let cur = h
        .samples
        .last()
        .and_then(|s| s.nics.iter().find(|n| n.name == name).map(|n| (s, n)));
    let Some((s, n)) = cur else {
        return Vec::new();
    };
    let mut out = vec![
        gauge("data.total.rx", "Total received data", "bytes", n.rx),
        gauge("data.total.tx", "Total transmitted data", "bytes", n.tx),
        gauge(
            "errors.total.rx",
            "Total receive errors",
            "none",
            n.rx_errors,
        ),
        gauge(
            "errors.total.tx",
            "Total transmit errors",
            "none",
            n.tx_errors,
        ),
    ];
    for x in &mut out {
        x.kind = "counter";
    }
    // Rates over the last two samples.
    if let Some(prev) = h.samples.iter().rev().nth(1) {
        if let Some(p) = prev.nics.iter().find(|p| p.name == name) {
            let secs = ((s.time - prev.time) as f64 / 1000.0).max(0.001);
            out.push(gauge(
                "data.current.rx",
                "Receive data rate",
                "bytes_per_second",
                ((n.rx - p.rx) / secs).max(0.0).round(),
            ));
            out.push(gauge(
                "data.current.tx",
                "Transmit data rate",
                "bytes_per_second",
                ((n.tx - p.tx) / secs).max(0.0).round(),
            ));
        }
    }
    out
}

fn vm_stats(v: &Vm) -> Vec<Stat> {
    let mut out = vec![gauge(
        "memory.installed",
        "Total memory configured",
        "bytes",
        v.memory as f64,
    )];
    let Some(s) = v.sample.as_ref().filter(|_| v.status != "down") else {
        return out;
    };
    out.extend([
        gauge(
            "memory.used",
            "Memory used (agent)",
            "bytes",
            (v.memory as f64 * s.mem_usage / 100.0).round(),
        ),
        gauge(
            "cpu.current.guest",
            "CPU used by guest",
            "percent",
            s.cpu_user,
        ),
        gauge(
            "cpu.current.hypervisor",
            "CPU overhead",
            "percent",
            s.cpu_sys,
        ),
        gauge(
            "cpu.current.total",
            "Total CPU used",
            "percent",
            s.cpu_user + s.cpu_sys,
        ),
        gauge(
            "elapsed.time",
            "Time elapsed since the VM was started",
            "seconds",
            s.elapsed,
        ),
    ]);
    out
}

fn one(list: Node, sid: &str) -> Out {
    list.children
        .into_iter()
        .find(|c| c.attr_of("id") == Some(sid))
        .map(ok)
        .unwrap_or_else(|| Err(ApiError::not_found(format!("Statistic {sid} not found"))))
}

pub async fn route(m: &Arc<Manager>, r: &Req, s: &[&str]) -> Option<Out> {
    if r.method != Method::GET {
        return None;
    }
    let inv = m.read();
    let host = |id: &str| {
        check_id(id)?;
        inv.hosts
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("Host {id} not found")))
    };
    let vm = |id: &str| {
        check_id(id)?;
        inv.vms
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("VM {id} not found")))
    };
    let nics = |h: &Host| -> Vec<NicSample> {
        h.samples.last().map(|s| s.nics.clone()).unwrap_or_default()
    };
    let host_stat_list = |h: &Host| render(host_stats(h), "host", &href("hosts", &h.id), &h.id);
    let vm_stat_list = |v: &Vm| render(vm_stats(v), "vm", &href("vms", &v.id), &v.id);
    let nic_by_id = |h: &Host, nid: &str| {
        nics(h)
            .into_iter()
            .find(|n| nic_id(&h.id, &n.name) == nid)
            .ok_or_else(|| ApiError::not_found(format!("Host NIC {nid} not found")))
    };
    Some(match s {
        ["hosts", id, "statistics"] => host(id).map(host_stat_list).and_then(ok),
        ["hosts", id, "statistics", sid] => host(id).map(host_stat_list).and_then(|l| one(l, sid)),
        ["hosts", id, "nics"] => host(id).and_then(|h| {
            let mut l = Node::new("host_nics");
            for n in nics(h) {
                l.push(host_nic(h, &n));
            }
            ok(l)
        }),
        ["hosts", id, "nics", nid] => host(id)
            .and_then(|h| nic_by_id(h, nid).map(|n| host_nic(h, &n)))
            .and_then(ok),
        ["hosts", id, "nics", nid, "statistics"] => host(id).and_then(|h| {
            let n = nic_by_id(h, nid)?;
            let nh = format!("{}/nics/{nid}", href("hosts", &h.id));
            ok(render(nic_stats(h, &n.name), "host_nic", &nh, nid))
        }),
        ["vms", id, "statistics"] => vm(id).map(vm_stat_list).and_then(ok),
        ["vms", id, "statistics", sid] => vm(id).map(vm_stat_list).and_then(|l| one(l, sid)),
        _ => return None,
    })
}
