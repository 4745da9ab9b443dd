//! Host agent benchmark; prints its figures next to the reference in one run:
//!
//! 1. VM start through the agent (VM.create until the VM runs, and until the guest's
//!    ready line) vs `virsh create` of the same XML: median of N, ratio.
//! 2. The agent's RSS idle and with 10 running guests.
//! 3. Host.getAllVmStats round trip over TLS with 10 VMs: p50 / p90 / p99.
//!
//! Run: `cargo bench -p halyard-hostd --bench hostd` (as root; starts libvirtd if
//! needed). `HALYARD_BENCH_RUNS` sets N (default 10).

use std::time::{Duration, Instant};

use halyard_testinfra::{
    env, event_status, guest, rss_kib, wait_event, GuestSpec, HostOptions, TestHost,
};
use serde_json::json;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn wait_ready(log: &std::path::Path) -> bool {
    halyard_testinfra::wait_for_file_text(
        log,
        halyard_testguest::READY_MARKER,
        Duration::from_secs(120),
    )
    .await
    .is_some()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let runs: usize = std::env::var("HALYARD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(runs));
}

async fn bench(runs: usize) {
    let mut opts = HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"));
    opts.log_filter = "warn".into();
    opts.vm_stats_interval_secs = 15;
    opts.host_stats_interval_secs = 15;
    let host = TestHost::start(opts).await;
    let image = env::Env::get().guest_image().clone();
    let c = host.client().await.expect("client");
    let pid = host.pid().expect("agent pid");

    // Idle RSS after the first samples.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kib(pid).unwrap_or(0);

    // 1. VM start, alternating agent and virsh.
    let mut agent_run = Vec::new();
    let mut agent_ready = Vec::new();
    let mut virsh_run = Vec::new();
    let mut virsh_ready = Vec::new();
    let mut ev = c.events();
    for i in 0..runs {
        // Through the agent.
        let spec = GuestSpec::new(&format!("ba{i}")).memory(128);
        let id = uuid::Uuid::new_v4().to_string();
        let name = host.domain_name(&spec.name);
        let log = host.guest_dir(&spec.name).join("console.log");
        let xml = guest::domain_xml(&id, &name, &spec, &image, &log, "10.213.7.200");
        let t0 = Instant::now();
        c.call_value(
            "VM.create",
            json!({"vmID": id, "vmParams": {"vmId": id, "xml": xml.clone()}}),
        )
        .await
        .expect("VM.create");
        wait_event(&mut ev, Duration::from_secs(60), |n| {
            matches!(
                event_status(n, &id).as_deref(),
                Some("Powering up") | Some("Up")
            )
        })
        .await
        .expect("running event");
        agent_run.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(wait_ready(&log).await, "agent guest did not boot");
        agent_ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        c.call_value("VM.destroy", json!({"vmID": id}))
            .await
            .expect("destroy");

        // The same XML, prepared as the agent prepares it, through virsh.
        let spec = GuestSpec::new(&format!("bv{i}")).memory(128);
        let id = uuid::Uuid::new_v4().to_string();
        let name = host.domain_name(&spec.name);
        let log = host.guest_dir(&spec.name).join("console.log");
        let xml = guest::domain_xml(&id, &name, &spec, &image, &log, "10.213.7.201");
        let prepared = halyard_hostd::domxml::prepare(
            &xml,
            &halyard_hostd::domxml::Prepare {
                domain_type: &env::domain_type(),
                meta: halyard_hostd::domxml::HalyardMeta {
                    start_time: 0.0,
                    agent_id: String::new(),
                },
            },
        )
        .expect("prepare");
        let file = host.dir.join(format!("{name}.xml"));
        std::fs::write(&file, prepared).expect("write xml");
        let t0 = Instant::now();
        let out = host.virsh(&["create", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        virsh_run.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(wait_ready(&log).await, "virsh guest did not boot");
        virsh_ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = host.virsh(&["destroy", &name]);
    }

    // 2. Ten guests through the agent.
    let mut ids = Vec::new();
    for i in 0..10 {
        let g = host
            .boot_guest(&c, GuestSpec::new(&format!("ten{i}")).memory(128))
            .await;
        ids.push(g.id);
    }
    // Let two sampling rounds pass so the agent holds stats of all ten.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let rss_ten = rss_kib(pid).unwrap_or(0);

    // 3. getAllVmStats round trips.
    let n = 1000;
    let mut rtt = Vec::with_capacity(n);
    for _ in 0..50 {
        let _ = c.call_value("Host.getAllVmStats", json!({})).await;
    }
    for _ in 0..n {
        let t0 = Instant::now();
        let v = c
            .call_value("Host.getAllVmStats", json!({}))
            .await
            .expect("getAllVmStats");
        rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(v.as_array().map(|a| a.len()), Some(10));
    }
    for id in ids {
        let _ = c.call_value("VM.destroy", json!({"vmID": id})).await;
    }

    let (ar, vr) = (median(&mut agent_run), median(&mut virsh_run));
    let (ad, vd) = (median(&mut agent_ready), median(&mut virsh_ready));
    println!();
    println!(
        "halyard-hostd benchmark ({runs} runs, domain type {}, 2 cores)",
        env::domain_type()
    );
    println!(
        "{:<46} {:>12} {:>12} {:>8} {:>8}",
        "metric", "halyard", "reference", "ratio", "target"
    );
    println!(
        "{:<46} {:>10.0}ms {:>10.0}ms {:>8.3} {:>8}",
        "VM start until running (median; ref virsh create)",
        ar,
        vr,
        ar / vr,
        "<=1.10"
    );
    println!(
        "{:<46} {:>10.0}ms {:>10.0}ms {:>8.3} {:>8}",
        "VM start until guest ready line (median)",
        ad,
        vd,
        ad / vd,
        "<=1.10"
    );
    println!(
        "{:<46} {:>10.1}MiB {:>12} {:>8} {:>8}",
        "agent RSS idle",
        rss_idle as f64 / 1024.0,
        "-",
        "-",
        "<=20MiB"
    );
    println!(
        "{:<46} {:>10.1}MiB {:>12} {:>8} {:>8}",
        "agent RSS with 10 running guests",
        rss_ten as f64 / 1024.0,
        "-",
        "-",
        "<=40MiB"
    );
    let (p50, p90, p99) = (
        percentile(&mut rtt, 0.5),
        percentile(&mut rtt, 0.9),
        percentile(&mut rtt, 0.99),
    );
    println!(
        "{:<46} {:>10.3}ms {:>12} {:>8} {:>8}",
        "Host.getAllVmStats RTT, 10 VMs, TLS (p50)", p50, "-", "-", "<=2ms"
    );
    println!("{:<46} {:>10.3}ms", "Host.getAllVmStats RTT (p90)", p90);
    println!("{:<46} {:>10.3}ms", "Host.getAllVmStats RTT (p99)", p99);
    c.close().await;
}
