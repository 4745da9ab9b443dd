//! Host sampling from /proc and sysfs: CPU (total, per CPU, the agent's own), memory,
//! swap, load, per-NIC traffic, free space. Percentages are over the interval between
//! two samples, as VDSM computes them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use halyard_proto::vdsm::{DiskFree, HostNicStats, HostStats};

use crate::clock;

#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
    steal: u64,
}

impl CpuTimes {
    fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

#[derive(Debug, Clone, Default)]
struct NicRaw {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_dropped: u64,
    tx_dropped: u64,
    rx_errors: u64,
    tx_errors: u64,
    speed: Option<i64>,
    state: String,
    duplex: String,
}

#[derive(Debug, Clone, Default)]
struct Raw {
    mono: f64,
    cpu: CpuTimes,
    per_cpu: Vec<CpuTimes>,
    boot_time: u64,
    /// The agent's own utime and stime, in clock ticks.
    self_ticks: (u64, u64),
    nics: BTreeMap<String, NicRaw>,
}

/// Counts of VMs the stats report.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmCounts {
    pub total: u64,
    pub active: u64,
    pub migrating: u64,
}

/// Keeps the previous raw sample to compute rates.
pub struct HostSampler {
    prev: Option<Raw>,
    started_mono: f64,
    ticks_per_sec: f64,
    ncpu: f64,
    disk_paths: Vec<PathBuf>,
}

impl HostSampler {
    pub fn new(disk_paths: Vec<PathBuf>) -> Self {
        // SAFETY: sysconf has no memory-safety preconditions.
        let tps = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tps = if tps > 0 { tps as f64 } else { 100.0 };
        let mut s = HostSampler {
            prev: None,
            started_mono: clock::monotonic_secs(),
            ticks_per_sec: tps,
            ncpu: 1.0,
            disk_paths,
        };
        s.prev = read_raw().ok();
        if let Some(p) = &s.prev {
            s.ncpu = p.per_cpu.len().max(1) as f64;
        }
        s
    }

    /// Takes a sample and returns the stats over the time since the previous one.
    pub fn sample(&mut self, vms: VmCounts) -> HostStats {
        let now = match read_raw() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading host counters failed");
                Raw {
                    mono: clock::monotonic_secs(),
                    ..Raw::default()
                }
            }
        };
        let prev = self.prev.take().unwrap_or_else(|| now.clone());
        let stats = self.build(&prev, &now, vms);
        self.prev = Some(now);
        stats
    }

    fn build(&self, prev: &Raw, now: &Raw, vms: VmCounts) -> HostStats {
        let (user, sys, idle) = cpu_percent(&prev.cpu, &now.cpu);
        let mut cpu_statistics = BTreeMap::new();
        for (i, (a, b)) in prev.per_cpu.iter().zip(now.per_cpu.iter()).enumerate() {
            let (u, s, id) = cpu_percent(a, b);
            cpu_statistics.insert(
                i.to_string(),
                serde_json::json!({
                    "nodeIndex": 0,
                    "cpuUser": format!("{u:.2}"),
                    "cpuSys": format!("{s:.2}"),
                    "cpuIdle": format!("{id:.2}"),
                }),
            );
        }
        let dt = (now.mono - prev.mono).max(1e-3);
        let self_cpu = |a: u64, b: u64| {
            let ticks = b.saturating_sub(a) as f64;
            100.0 * ticks / self.ticks_per_sec / dt / self.ncpu
        };
        let cpu_user_vdsmd = self_cpu(prev.self_ticks.0, now.self_ticks.0);
        let cpu_sys_vdsmd = self_cpu(prev.self_ticks.1, now.self_ticks.1);

        let mem = read_meminfo();
        let kib = |k: &str| mem.get(k).copied().unwrap_or(0);
        let total = kib("MemTotal");
        let avail = mem
            .get("MemAvailable")
            .copied()
            .unwrap_or_else(|| kib("MemFree") + kib("Buffers") + kib("Cached"));
        let mem_used = (100 * total.saturating_sub(avail))
            .checked_div(total)
            .unwrap_or(0);
        let load = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);

        let wall = clock::wall_secs();
        let mut network = BTreeMap::new();
        let (mut rx_dropped, mut tx_dropped) = (0u64, 0u64);
        for (name, n) in &now.nics {
            rx_dropped += n.rx_dropped;
            tx_dropped += n.tx_dropped;
            network.insert(
                name.clone(),
                HostNicStats {
                    name: name.clone(),
                    rx: n.rx_bytes.to_string(),
                    tx: n.tx_bytes.to_string(),
                    rx_dropped: n.rx_dropped.to_string(),
                    tx_dropped: n.tx_dropped.to_string(),
                    rx_errors: n.rx_errors.to_string(),
                    tx_errors: n.tx_errors.to_string(),
                    speed: n.speed.filter(|s| *s > 0).unwrap_or(1000).to_string(),
                    state: n.state.clone(),
                    duplex: n.duplex.clone(),
                    sample_time: wall,
                },
            );
        }
        let mut disk_stats = BTreeMap::new();
        for p in &self.disk_paths {
            if let Some(free) = free_mib(p) {
                disk_stats.insert(
                    p.to_string_lossy().into_owned(),
                    DiskFree {
                        free: free.to_string(),
                    },
                );
            }
        }
        HostStats {
            cpu_user: format!("{user:.2}"),
            cpu_sys: format!("{sys:.2}"),
            cpu_idle: format!("{idle:.2}"),
            cpu_load: format!("{load:.2}"),
            cpu_user_vdsmd: format!("{cpu_user_vdsmd:.2}"),
            cpu_sys_vdsmd: format!("{cpu_sys_vdsmd:.2}"),
            mem_used: mem_used.to_string(),
            mem_free: avail / 1024,
            mem_shared: 0,
            swap_total: kib("SwapTotal") / 1024,
            swap_free: kib("SwapFree") / 1024,
            vm_count: vms.total,
            vm_active: vms.active,
            vm_migrating: vms.migrating,
            incoming_vm_migrations: 0,
            outgoing_vm_migrations: 0,
            network,
            disk_stats,
            storage_domains: BTreeMap::new(),
            elapsed_time: format!("{:.2}", clock::monotonic_secs() - self.started_mono),
            boot_time: now.boot_time.to_string(),
            date_time: clock::gmt_string(wall as i64),
            rx_dropped: rx_dropped.to_string(),
            tx_dropped: tx_dropped.to_string(),
            net_config_dirty: "False".into(),
            cpu_statistics,
            extra: serde_json::Map::new(),
        }
    }
}

fn cpu_percent(a: &CpuTimes, b: &CpuTimes) -> (f64, f64, f64) {
    let total = b.total().saturating_sub(a.total());
    if total == 0 {
        return (0.0, 0.0, 100.0);
    }
    let t = total as f64;
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64;
    let user = 100.0 * (d(a.user, b.user) + d(a.nice, b.nice)) / t;
    let sys = 100.0 * (d(a.system, b.system) + d(a.irq, b.irq) + d(a.softirq, b.softirq)) / t;
    let idle = 100.0 * (d(a.idle, b.idle) + d(a.iowait, b.iowait)) / t;
    (user, sys, idle)
}

fn parse_cpu_line(rest: &str) -> CpuTimes {
    let v: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    CpuTimes {
        user: g(0),
        nice: g(1),
        system: g(2),
        idle: g(3),
        iowait: g(4),
        irq: g(5),
        softirq: g(6),
        steal: g(7),
    }
}

fn read_raw() -> std::io::Result<Raw> {
    let stat = fs::read_to_string("/proc/stat")?;
    let mut raw = Raw {
        mono: clock::monotonic_secs(),
        ..Raw::default()
    };
    for line in stat.lines() {
        if let Some(rest) = line.strip_prefix("cpu ") {
            raw.cpu = parse_cpu_line(rest);
        } else if line.starts_with("cpu") {
            if let Some((_, rest)) = line.split_once(' ') {
                raw.per_cpu.push(parse_cpu_line(rest));
            }
        } else if let Some(b) = line.strip_prefix("btime ") {
            raw.boot_time = b.trim().parse().unwrap_or(0);
        }
    }
    raw.self_ticks = self_ticks().unwrap_or((0, 0));
    raw.nics = read_nics();
    Ok(raw)
}

/// utime and stime of this process from /proc/self/stat (fields 14 and 15).
fn self_ticks() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 -> index 11.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_nics() -> BTreeMap<String, NicRaw> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let base = e.path();
        let st = base.join("statistics");
        let get = |k: &str| read_u64(&st.join(k)).unwrap_or(0);
        let state = fs::read_to_string(base.join("operstate"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.insert(
            name,
            NicRaw {
                rx_bytes: get("rx_bytes"),
                tx_bytes: get("tx_bytes"),
                rx_dropped: get("rx_dropped"),
                tx_dropped: get("tx_dropped"),
                rx_errors: get("rx_errors"),
                tx_errors: get("tx_errors"),
                speed: fs::read_to_string(base.join("speed"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                state: if state == "up" || state == "unknown" {
                    "up".into()
                } else {
                    "down".into()
                },
                duplex: fs::read_to_string(base.join("duplex"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into()),
            },
        );
    }
    out
}

/// /proc/meminfo in KiB.
pub fn read_meminfo() -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Ok(s) = fs::read_to_string("/proc/meminfo") {
        for line in s.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if let Some(n) = v.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    m.insert(k.trim().to_string(), n);
                }
            }
        }
    }
    m
}

/// Free space available to unprivileged users, MiB.
pub fn free_mib(p: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid out-param; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        let a = parse_cpu_line("100 0 50 850 0 0 0 0");
        let b = parse_cpu_line("200 0 100 1500 0 0 0 0");
        let (u, s, i) = cpu_percent(&a, &b);
        assert!((u - 12.5).abs() < 1e-9 && (s - 6.25).abs() < 1e-9 && (i - 81.25).abs() < 1e-9);
    }

    #[test]
    fn real_sample_has_sane_values() {
        let mut s = HostSampler::new(vec![PathBuf::from("/tmp")]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let st = s.sample(VmCounts::default());
        let idle: f64 = st.cpu_idle.parse().expect("number");
        assert!((0.0..=100.0).contains(&idle));
        assert!(st.mem_free > 0);
        assert!(st.disk_stats.contains_key("/tmp"));
        assert!(st.boot_time.parse::<u64>().expect("number") > 0);
        assert!(self_ticks().is_some());
    }
}
