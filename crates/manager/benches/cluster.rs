//! Cluster benchmark: maintenance of a host running 10 VMs (time from `deactivate` to
//! `maintenance`, every VM live-migrated to the other host), and the restart of a
//! leased HA VM after its host died (agent, sanlock and QEMU killed at once) next to
//! sanlock's expiry bound. Two namespaced hosts, a shared POSIX domain, as in
//! tests/migration.rs and tests/ha.rs. Live migration itself against `virsh migrate`
//! is `cargo bench -p halyard-hostd --bench migration`.
//!
//! `cargo bench -p halyard-manager --bench cluster` (as root).
//! Env: HALYARD_CLUSTER_VMS (default 10), HALYARD_FAILOVER_IO_TIMEOUT (sanlock
//! io_timeout, default 1).

#[path = "../tests/common/failover.rs"]
mod failover;

use std::time::{Duration, Instant};

use failover::{attr_id, Setup};

/// Maintenance of host a with `n` VMs: seconds from deactivate to maintenance.
async fn maintenance(s: &Setup, n: usize) -> f64 {
    let (a, b) = (0, 1);
    // Host b in maintenance while the VMs start: they all land on host a.
    s.post_ok(&format!("/hosts/{}/deactivate", s.hosts[b]), "<action/>")
        .await;
    s.wait_host(b, "maintenance", Duration::from_secs(120), String::new)
        .await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            s.start_test_guest(&format!("hlyd-c{}-bm{i}", s.cluster.k))
                .await,
        );
    }
    for id in &ids {
        s.wait_vm(
            id,
            "up",
            Some(&s.hosts[a]),
            Duration::from_secs(300),
            String::new,
        )
        .await;
    }
    s.post_ok(&format!("/hosts/{}/activate", s.hosts[b]), "<action/>")
        .await;
    s.wait_host(b, "up", Duration::from_secs(120), String::new)
        .await;
    let t0 = Instant::now();
    s.post_ok(&format!("/hosts/{}/deactivate", s.hosts[a]), "<action/>")
        .await;
    s.wait_host(a, "maintenance", Duration::from_secs(600), String::new)
        .await;
    let t = t0.elapsed().as_secs_f64();
    for id in &ids {
        assert_eq!(s.vm_on(id).await, ("up".to_string(), s.hosts[b].clone()));
        s.post_ok(&format!("/vms/{id}/stop"), "<action/>").await;
    }
    for id in &ids {
        s.wait_vm(id, "down", None, Duration::from_secs(60), String::new)
            .await;
    }
    s.post_ok(&format!("/hosts/{}/activate", s.hosts[a]), "<action/>")
        .await;
    s.wait_host(a, "up", Duration::from_secs(120), String::new)
        .await;
    t
}

/// A leased HA VM's host dies: seconds until its guest runs on the other host.
async fn ha_restart(s: &mut Setup) -> f64 {
    let body = s.test_guest_xml(
        &format!("hlyd-c{}-bha", s.cluster.k),
        &format!(
            "<high_availability><enabled>true</enabled></high_availability><lease><storage_domain id=\"{}\"/></lease>",
            s.sd
        ),
    );
    let id = attr_id(&s.post_ok("/vms", &body).await);
    s.post_ok(&format!("/vms/{id}/start"), "<action/>").await;
    s.wait_vm(&id, "up", None, Duration::from_secs(120), String::new)
        .await;
    let host = s.vm_on(&id).await.1;
    let a = s.hosts.iter().position(|h| *h == host).expect("our host");
    let killed = Instant::now();
    s.cluster.kill_host(a);
    loop {
        let (st, h) = s.vm_on(&id).await;
        if h == s.hosts[1 - a] && (st == "powering_up" || st == "up") {
            return killed.elapsed().as_secs_f64();
        }
        assert!(killed.elapsed() < s.lease_bound() * 3, "not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("HALYARD_CLUSTER_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let io: u32 = std::env::var("HALYARD_FAILOVER_IO_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = Setup::start(io).await;
        s.wait_spm(Duration::from_secs(120)).await;
        let t_maint = maintenance(&s, n).await;
        let t_ha = ha_restart(&mut s).await;
        let bound = s.lease_bound().as_secs_f64();
        println!("Cluster, two namespaced hosts, TCG guests of 128 MiB, sanlock io_timeout {io} s");
        println!(
            "{:<64} {:>10} {:>12}",
            "", "Halyard (s)", "reference (s)"
        );
        println!(
            "{:<64} {:>10.2} {:>12}",
            format!("maintenance of a host with {n} VMs (deactivate -> maintenance)"),
            t_maint,
            "-"
        );
        println!(
            "{:<64} {:>10.2} {:>12.0}  ({:.3}x sanlock's bound)",
            "HA restart of a leased VM after its host died",
            t_ha,
            bound,
            t_ha / bound
        );
        println!("sanlock's bound = 8 x io_timeout (renewal fails) + 60 s (the dead host's watchdog); the guest may run elsewhere only after it.");
    });
}
