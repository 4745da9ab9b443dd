//! Scale benchmark of the Manager: 200 simulated hosts x 25 VMs.
//!
//! The hosts are simulated (tests/fakehost) but speak the real protocol: each registers
//! through host-register with a CSR and is auto-approved, then the Manager connects to
//! it over mutual TLS + STOMP 1.2 + JSON-RPC 2.0, pings it every 3 s and samples
//! Host.getStats + Host.getAllVmStats (25 VMs of VDSM-sized stats) every 15 s. The VMs
//! are added and started through the REST API, so the scheduler places them and the
//! Manager sends VM.create to the fake hosts.
//!
//! Prints: registration and VM add/start throughput, the Manager's CPU share and RSS
//! while it monitors (a window of `HALYARD_SCALE_SECONDS`, default 60), and the latency
//! of GET /vms for all VMs, next to the targets (< 25% of one core, < 300 MiB, < 1 s).
//!
//! `cargo bench -p halyard-manager --bench scale`; HALYARD_SCALE_HOSTS,
//! HALYARD_SCALE_VMS_PER_HOST, HALYARD_SCALE_DB=postgresql change the setup.

#[path = "../tests/fakehost/mod.rs"]
mod fakehost;

use std::time::{Duration, Instant};

use halyard_testinfra::manager::{Database, ManagerProc, Postgres};

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user + system CPU seconds, RSS KiB, peak RSS KiB) of a process.
fn proc_usage(pid: u32) -> (f64, u64, u64) {
    // SAFETY: sysconf only reads a configuration value.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|x| x.parse::<u64>().ok()))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks as f64 / tck, kib("VmRSS:"), kib("VmHWM:"))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    halyard_common::logging::init("warn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let n_hosts = env_usize("HALYARD_SCALE_HOSTS", 200);
    let per_host = env_usize("HALYARD_SCALE_VMS_PER_HOST", 25);
    let window = Duration::from_secs(env_usize("HALYARD_SCALE_SECONDS", 60) as u64);
    let n_vms = n_hosts * per_host;
    let pg;
    let (db, db_name) = if std::env::var("HALYARD_SCALE_DB").as_deref() == Ok("postgresql") {
        pg = Postgres::start();
        (Database::Postgres(&pg), "PostgreSQL")
    } else {
        (Database::Sqlite, "SQLite")
    };
    let m = ManagerProc::start_with_log(db, "auto_approve = [\"127.0.0.1\"]", "warn").await;
    let pid = m.pid().ok_or_else(|| anyhow::anyhow!("no Manager pid"))?;
    println!("Manager scale benchmark: {n_hosts} simulated hosts x {per_host} VMs = {n_vms} VMs ({db_name})");

    let t = Instant::now();
    let hosts = fakehost::start_hosts(&m, "fake", n_hosts, &m.dir.join("fakehosts")).await?;
    let registered = t.elapsed();
    let api = fakehost::Api::new(&m).await;
    api.wait_count("hosts", "up", n_hosts, Duration::from_secs(300))
        .await?;
    let hosts_up = t.elapsed();
    let rss_hosts = proc_usage(pid).1;

    let (added, started) = fakehost::add_and_start_vms(&api, "bvm", n_vms, 16).await?;
    let t = Instant::now();
    api.wait_count("vms", "up", n_vms, Duration::from_secs(600))
        .await?;
    let all_up = t.elapsed();
    let spread: Vec<usize> = hosts.iter().map(fakehost::FakeHost::vm_count).collect();
    let (lo, hi) = (
        spread.iter().min().copied().unwrap_or(0),
        spread.iter().max().copied().unwrap_or(0),
    );

    // Steady state: let one full stats cycle pass, then measure a window with no API use.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let req0: u64 = hosts.iter().map(fakehost::FakeHost::requests).sum();
    let (cpu0, _, _) = proc_usage(pid);
    let t = Instant::now();
    let mut rss_max = 0;
    while t.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_usage(pid).1);
    }
    let (cpu1, rss, hwm) = proc_usage(pid);
    let elapsed = t.elapsed().as_secs_f64();
    let cpu_share = (cpu1 - cpu0) / elapsed * 100.0;
    let req1: u64 = hosts.iter().map(fakehost::FakeHost::requests).sum();
    let rpc_rate = (req1 - req0) as f64 / elapsed;

    // GET /vms with every VM, XML (the SDK's format) and JSON.
    let mut lat = Vec::new();
    for accept in ["application/xml", "application/json"] {
        let mut v = Vec::new();
        let mut size = 0;
        for _ in 0..10 {
            let t = Instant::now();
            let (s, body) = api.call_as(accept, "GET", "/vms", "").await?;
            v.push(t.elapsed());
            anyhow::ensure!(s == 200, "GET /vms: HTTP {s}");
            size = body.len();
        }
        let max = v.iter().max().copied().unwrap_or_default();
        lat.push((accept, median(&mut v), max, size));
    }
    // The reference: the same GET by curl (an unmodified client, its own process), time
    // to the last byte with the body thrown away.
    let mut by_curl = Vec::new();
    for accept in ["application/xml", "application/json"] {
        let mut v = Vec::new();
        for _ in 0..5 {
            let out = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{time_total}", "--cacert"])
                .arg(m.ca())
                .args(["-H", &format!("Authorization: Bearer {}", api.token)])
                .args(["-H", &format!("Accept: {accept}"), "-H", "Version: 4"])
                .arg(format!("{}/vms", m.api_url()))
                .output()?;
            let secs: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(f64::NAN);
            v.push(Duration::from_secs_f64(if secs.is_finite() {
                secs
            } else {
                0.0
            }));
        }
        by_curl.push((accept, median(&mut v)));
    }
    let mut search = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let (s, _) = api
            .call(
                "GET",
                &format!("/vms?search=name%3Dbvm-{:05}", i * 97 % n_vms),
                "",
            )
            .await?;
        search.push(t.elapsed());
        anyhow::ensure!(s == 200, "search: HTTP {s}");
    }
    let rss_after_gets = proc_usage(pid).1;
    let mut hosts_lat = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (s, _) = api.call("GET", "/hosts", "").await?;
        hosts_lat.push(t.elapsed());
        anyhow::ensure!(s == 200, "GET /hosts: HTTP {s}");
    }
    // The Manager trims its heap every 15 s: what the large answers left behind then.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let rss_settled = proc_usage(pid).1;

    let mib = |k: u64| k as f64 / 1024.0;
    println!();
    println!("setup");
    println!("  {n_hosts} hosts registered (CSR, auto-approve, certificate) in {:.1} s; all up after {:.1} s", registered.as_secs_f64(), hosts_up.as_secs_f64());
    println!("  {n_vms} VMs added (POST /vms + nic) in {:.1} s ({:.0}/s); started (POST start) in {:.1} s ({:.0}/s); all up {:.1} s later",
        added.as_secs_f64(), n_vms as f64 / added.as_secs_f64(), started.as_secs_f64(), n_vms as f64 / started.as_secs_f64(), all_up.as_secs_f64());
    println!("  placement: {lo}..{hi} VMs per host");
    println!();
    println!(
        "{:<46} {:>14} {:>14}",
        "monitoring (Manager process)", "measured", "target"
    );
    println!(
        "{:<46} {:>13.1}% {:>14}",
        format!("CPU share of one core over {elapsed:.0} s"),
        cpu_share,
        "< 25%"
    );
    println!(
        "{:<46} {:>10.1} MiB {:>14}",
        "RSS (end of window)",
        mib(rss),
        "< 300 MiB"
    );
    println!(
        "{:<46} {:>10.1} MiB {:>14}",
        "RSS max in window / peak ever (VmHWM)",
        mib(rss_max.max(hwm)),
        ""
    );
    println!(
        "{:<46} {:>10.1} MiB",
        "RSS with the hosts up, before any VM",
        mib(rss_hosts)
    );
    println!(
        "{:<46} {:>10.1} MiB",
        "RSS right after the 20 GET /vms below",
        mib(rss_after_gets)
    );
    println!(
        "{:<46} {:>10.1} MiB",
        "RSS 20 s later (a periodic trim ran)",
        mib(rss_settled)
    );
    println!(
        "{:<46} {:>12.0}/s {:>14}",
        "JSON-RPC requests answered by the hosts", rpc_rate, ""
    );
    println!();
    println!(
        "{:<46} {:>14} {:>14}",
        "API latency (median of 10; max)", "measured", "target"
    );
    for (accept, med, max, size) in &lat {
        println!(
            "{:<46} {:>11.0} ms {:>14}",
            format!(
                "GET /vms, {n_vms} VMs, {accept} ({:.1} MiB)",
                *size as f64 / 1048576.0
            ),
            med.as_secs_f64() * 1000.0,
            "< 1000 ms"
        );
        println!("{:<46} {:>11.0} ms", "  max", max.as_secs_f64() * 1000.0);
    }
    for (accept, med) in &by_curl {
        println!(
            "{:<46} {:>11.0} ms",
            format!("  the same by curl, {accept} (median of 5)"),
            med.as_secs_f64() * 1000.0
        );
    }
    println!(
        "{:<46} {:>11.1} ms",
        "GET /vms?search=name=<one>",
        median(&mut search).as_secs_f64() * 1000.0
    );
    println!(
        "{:<46} {:>11.1} ms",
        format!("GET /hosts, {n_hosts} hosts"),
        median(&mut hosts_lat).as_secs_f64() * 1000.0
    );
    drop(hosts);
    Ok(())
}
