//! Storage benchmark; prints its figures next to the reference in one run:
//!
//! 1. Volume.create of a 10 GiB sparse COW volume (request to task finished) vs a bare
//!    `qemu-img create` of the same volume: median of N, ratio (target <= 1.5x).
//! 2. spmStart duration (request to task finished), median of N stop/start cycles.
//! 3. Failover with two namespaced hosts: time until the other host holds the SPM role
//!    after SIGKILL of the SPM's agent, and after SIGKILL of its sanlock daemon, each
//!    next to sanlock's expiry bound for the io_timeout used (8 x io_timeout + 60 s).
//!
//! Run: `cargo bench -p halyard-hostd --bench storage` (as root). `HALYARD_BENCH_RUNS`
//! sets N (default 10); `HALYARD_BENCH_SKIP_FAILOVER=1` skips part 3 (~2 minutes).

use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_testinfra::cluster::Cluster;
use halyard_testinfra::storage::{
    call, connect_pool, connect_shared, create_domain_and_pool, shared_dir, spm_start, task_ok,
    volume_create, PoolIds, BLANK,
};
use halyard_testinfra::{HostOptions, TestHost};
use serde_json::json;

const IO_TIMEOUT: u64 = 1;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Polls a task tightly (every 250 us) so the measurement is not the polling interval.
async fn wait_task_tight(c: &Client, task: &str) {
    loop {
        let s = call(c, "Task.getStatus", json!({"taskID": task})).await;
        if s["taskState"] == "finished" {
            assert_eq!(s["taskResult"], "success", "{s}");
            return;
        }
        tokio::time::sleep(Duration::from_micros(
            std::env::var("HALYARD_BENCH_POLL_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(250),
        ))
        .await;
    }
}

fn main() {
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
    let mut o = HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"));
    o.sanlock = true;
    o.log_filter = std::env::var("HALYARD_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let host = TestHost::start(o).await;
    let c = host.client().await.expect("client");
    let dir = shared_dir("bench");
    let ids = PoolIds::new();
    connect_shared(&c, &dir).await;
    create_domain_and_pool(&c, &dir, &ids).await;
    connect_pool(&c, &ids, 1).await;
    task_ok(&c, &spm_start(&c, &ids).await).await;

    // 1. Volume.create vs qemu-img create.
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let mut agent = Vec::new();
    let mut bare = Vec::new();
    for i in 0..runs {
        let img = uuid::Uuid::new_v4().to_string();
        let vol = uuid::Uuid::new_v4().to_string();
        let t0 = Instant::now();
        let t = volume_create(&c, &ids, &img, &vol, 10 << 30, true, BLANK, BLANK).await;
        wait_task_tight(&c, &t).await;
        agent.push(t0.elapsed().as_secs_f64() * 1000.0);

        let p = scratch.join(format!("v{i}"));
        let t0 = Instant::now();
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o", "compat=1.1"])
            .arg(&p)
            .arg((10u64 << 30).to_string())
            .status()
            .expect("qemu-img");
        bare.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(st.success());
    }
    let _ = std::fs::remove_dir_all(&scratch);

    // 2. spmStart.
    let mut spm = Vec::new();
    for _ in 0..runs {
        call(&c, "StoragePool.spmStop", json!({"storagepoolID": ids.sp})).await;
        let t0 = Instant::now();
        let t = spm_start(&c, &ids).await;
        wait_task_tight(&c, &t).await;
        spm.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    c.close().await;
    if std::env::var_os("HALYARD_BENCH_LOG").is_some() {
        for l in host.log().lines().filter(|l| l.contains("volume created")) {
            println!("{l}");
        }
    }
    drop(host);

    let (a, b) = (median(&mut agent), median(&mut bare));
    let s = median(&mut spm);
    println!();
    println!("storage benchmark ({runs} runs, sanlock io_timeout {IO_TIMEOUT} s, 2 cores)");
    println!(
        "{:<58} {:>11} {:>11} {:>7} {:>8}",
        "metric", "halyard", "reference", "ratio", "target"
    );
    println!(
        "{:<58} {:>9.1}ms {:>9.1}ms {:>7.2} {:>8}",
        "Volume.create 10 GiB sparse COW vs qemu-img create",
        a,
        b,
        a / b,
        "<=1.5"
    );
    println!(
        "{:<58} {:>9.1}ms",
        "spmStart (task done; host id already held)", s
    );

    if std::env::var_os("HALYARD_BENCH_SKIP_FAILOVER").is_some() {
        return;
    }
    // 3. Failover.
    let bound = Duration::from_secs(8 * IO_TIMEOUT + 60);
    let agent_kill = failover(false).await;
    println!(
        "{:<58} {:>9.2}s {:>10}s {:>7.3} {:>8}",
        "failover after SIGKILL of the SPM agent (vs lease bound)",
        agent_kill.as_secs_f64(),
        bound.as_secs(),
        agent_kill.as_secs_f64() / bound.as_secs_f64(),
        "seconds"
    );
    let daemon_kill = failover(true).await;
    println!(
        "{:<58} {:>9.2}s {:>10}s {:>7.3} {:>8}",
        "failover after SIGKILL of the SPM's sanlock (vs bound)",
        daemon_kill.as_secs_f64(),
        bound.as_secs(),
        daemon_kill.as_secs_f64() / bound.as_secs_f64(),
        ">=1,~1"
    );
}

/// Time from the kill until host B's spmStart succeeds.
async fn failover(kill_daemon: bool) -> Duration {
    let mut cl = Cluster::start(2, env!("CARGO_BIN_EXE_halyard-hostd"), IO_TIMEOUT as u32).await;
    let ids = PoolIds::new();
    let a = cl.client(0).await;
    let b = cl.client(1).await;
    connect_shared(&a, &cl.shared).await;
    connect_shared(&b, &cl.shared).await;
    create_domain_and_pool(&a, &cl.shared, &ids).await;
    connect_pool(&a, &ids, 1).await;
    connect_pool(&b, &ids, 2).await;
    task_ok(&a, &spm_start(&a, &ids).await).await;
    // B joined its lockspace too before the clock starts.
    tokio::time::sleep(Duration::from_secs(4 * IO_TIMEOUT)).await;
    if kill_daemon {
        cl.kill_sanlock(0);
    } else {
        cl.kill_hostd(0);
    }
    let t0 = Instant::now();
    loop {
        let t = spm_start(&b, &ids).await;
        loop {
            let s = call(&b, "Task.getStatus", json!({"taskID": t})).await;
            if s["taskState"] == "finished" {
                if s["taskResult"] == "success" {
                    return t0.elapsed();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
