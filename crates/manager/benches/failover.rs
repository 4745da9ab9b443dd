//! SPM failover benchmark: time from "SPM host killed" to "the other host is SPM" and
//! to "disk creation works again", next to sanlock's expiry bound, for the two ways
//! a host dies: its agent (sanlock releases the lease at once) and its sanlock daemon
//! (the lease must expire). Two namespaced hosts, a shared POSIX domain, as in
//! tests/spm_failover.rs.
//!
//! `cargo bench -p halyard-manager --bench failover` (as root).
//! Env: HALYARD_FAILOVER_IO_TIMEOUT (sanlock io_timeout, default 1),
//! HALYARD_FAILOVER_ROUNDS (default 1).

#[path = "../tests/common/failover.rs"]
mod failover;

use std::time::{Duration, Instant};

use failover::Setup;

async fn round(kill_sanlock: bool, io_timeout: u32) -> (Duration, Duration, Duration) {
    let mut s = Setup::start(io_timeout).await;
    let spm = s.wait_spm(Duration::from_secs(120)).await;
    let other = 1 - spm;
    s.disk_works("warmup", Duration::from_secs(60)).await;
    let bound = s.lease_bound();
    let killed = Instant::now();
    if kill_sanlock {
        s.cluster.kill_sanlock(spm);
    } else {
        s.cluster.kill_hostd(spm);
    }
    let t_spm = loop {
        if s.watch.spm_now() == Some(other) {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < bound * 3, "no new SPM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    s.disk_works("after", bound * 3).await;
    let t_disk = killed.elapsed();
    assert_eq!(
        s.watch.max_spms.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "two SPMs seen"
    );
    (t_spm, t_disk, bound)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let io: u32 = std::env::var("HALYARD_FAILOVER_IO_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rounds: usize = std::env::var("HALYARD_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("SPM failover, sanlock io_timeout {io} s, {rounds} round(s) each");
    println!(
        "{:<28} {:>12} {:>16} {:>14} {:>10}",
        "SPM host killed by", "new SPM (s)", "disk works (s)", "bound (s)", "x bound"
    );
    for kill_sanlock in [false, true] {
        for _ in 0..rounds {
            let (t_spm, t_disk, bound) = rt.block_on(round(kill_sanlock, io));
            println!(
                "{:<28} {:>12.2} {:>16.2} {:>14.0} {:>10.3}",
                if kill_sanlock {
                    "SIGKILL of its sanlock"
                } else {
                    "SIGKILL of its agent"
                },
                t_spm.as_secs_f64(),
                t_disk.as_secs_f64(),
                bound.as_secs_f64(),
                t_disk.as_secs_f64() / bound.as_secs_f64()
            );
        }
    }
    println!("bound = sanlock's: 8 x io_timeout (renewal fails) + 60 s (watchdog); the agent case does not wait for it (the daemon releases the dead agent's lease at once).");
}
