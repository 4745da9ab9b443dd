//! SPM failover end to end: two namespaced hosts (own libvirtd, sanlock and agent)
//! registered with a Manager, one shared POSIX domain. Kill the SPM host's agent, then
//! (second test) its sanlock daemon: the Manager moves the role to the other host,
//! disk creation works again, `/events` tells each step, and a watcher polling both
//! hosts every 100 ms never sees two SPMs.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::failover::{tail, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_agent_killed_role_moves() {
    let mut s = Setup::start(1).await;
    let spm = s.wait_spm(Duration::from_secs(60)).await;
    let other = 1 - spm;
    s.disk_works("before", Duration::from_secs(60)).await;
    let killed = Instant::now();
    s.cluster.kill_hostd(spm);
    s.disk_works("after-agent-kill", Duration::from_secs(120))
        .await;
    let t = killed.elapsed();
    let now = s.api_spm().await;
    eprintln!(
        "agent of the SPM killed: disk creation works again after {t:?} (SPM now host {now:?})"
    );
    assert_eq!(now, Some(other), "the other host is SPM");
    // The agent died; its sanlock daemon released the lease at once: no expiry wait.
    assert!(t < s.lease_bound(), "took {t:?}");
    let ev = s.events().await;
    let other_name = s.cluster.host_name(other);
    assert!(ev.contains("has no SPM"), "{}", tail(&ev, 40));
    assert!(
        ev.contains(&format!("Storage Pool Manager runs on Host {other_name}")),
        "{}",
        tail(&ev, 40)
    );
    // The killed agent comes back, reconnects to the pool and stays a plain host.
    s.cluster.start_hostd(spm).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = s.watch.last.lock().expect("watch").clone();
        if last[spm] == "Free" {
            break;
        }
        assert!(Instant::now() < deadline, "restarted host: {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.disk_works("after-restart", Duration::from_secs(60)).await;
    // The admin moves the role back (forceselectspm): the current SPM stops first,
    // then the chosen host takes the lease.
    let (code, body) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/forceselectspm", s.hosts[spm]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.api_spm().await != Some(spm) {
        assert!(
            Instant::now() < deadline,
            "forceselectspm did not move the role"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.disk_works("after-force-select", Duration::from_secs(60))
        .await;
    assert!(s.events().await.contains("was force selected"));
    assert_eq!(
        s.watch.max_spms.load(Ordering::Relaxed),
        1,
        "two hosts were SPM at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_sanlock_killed_role_moves_after_the_lease_expired() {
    let mut s = Setup::start(1).await;
    let spm = s.wait_spm(Duration::from_secs(60)).await;
    let other = 1 - spm;
    s.disk_works("before", Duration::from_secs(60)).await;
    let killed = Instant::now();
    s.cluster.kill_sanlock(spm);
    let bound = s.lease_bound();
    s.disk_works("after-sanlock-kill", bound * 2).await;
    let t = killed.elapsed();
    eprintln!(
        "sanlock of the SPM killed: disk creation works again after {t:?}; sanlock's expiry bound {bound:?} ({:.2}x)",
        t.as_secs_f64() / bound.as_secs_f64()
    );
    assert_eq!(s.api_spm().await, Some(other));
    assert!(
        t <= bound + Duration::from_secs(15),
        "took {t:?}, bound {bound:?}"
    );
    let ev = s.events().await;
    assert!(ev.contains("has no SPM"), "{}", tail(&ev, 40));
    assert!(ev.contains("contending for the SPM"), "{}", tail(&ev, 40));
    assert!(
        ev.contains(&format!(
            "Storage Pool Manager runs on Host {}",
            s.cluster.host_name(other)
        )),
        "{}",
        tail(&ev, 40)
    );
    assert_eq!(
        s.watch.max_spms.load(Ordering::Relaxed),
        1,
        "two hosts were SPM at the same time"
    );
}

/// A host that cannot reach the data center's storage is non_operational; once it
/// can, it connects to the pool and is up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_without_storage_is_non_operational_until_it_reaches_it() {
    let s = Setup::start_hiding(1, Some(1)).await;
    let status = |xml: &str| common::failover::text(xml, &["status"]);
    let id = s.hosts[1].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = s.m.api(&s.token, "GET", &format!("/hosts/{id}"), "").await;
        if status(&h) == "non_operational" {
            break;
        }
        assert!(Instant::now() < deadline, "host 1: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.api_spm().await,
        Some(0),
        "the host that reaches storage is SPM"
    );
    let ev = s.events().await;
    assert!(
        ev.contains("Setting Host state to Non-Operational"),
        "{}",
        tail(&ev, 30)
    );
    let shared = s.cluster.shared.to_string_lossy().into_owned();
    assert!(s.cluster.in_host(1, &["umount", &shared]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = s.m.api(&s.token, "GET", &format!("/hosts/{id}"), "").await;
        if status(&h) == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "host 1 not up again: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.events().await.contains("reaches every storage domain"));
}

/// SPM priority -1 means never: with the only other host at -1, killing the SPM's agent
/// leaves the data center without an SPM (and forceselectspm refuses that host); at
/// priority 5 it is elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spm_priority_minus_one_is_never_elected() {
    let mut s = Setup::start(1).await;
    let spm = s.wait_spm(Duration::from_secs(60)).await;
    let other = 1 - spm;
    let put_priority = |p: i32| format!("<host><spm><priority>{p}</priority></spm></host>");
    let (code, b) =
        s.m.api(
            &s.token,
            "PUT",
            &format!("/hosts/{}", s.hosts[other]),
            &put_priority(-1),
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let (code, _) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/forceselectspm", s.hosts[other]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 409, "forceselectspm of a priority -1 host");
    s.cluster.kill_hostd(spm);
    // Well past detection (SPM check every 2 s) and several elections.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(s.api_spm().await, None, "a -1 host must not become SPM");
    assert_eq!(s.watch.spm_now(), None);
    let (_, dc) =
        s.m.api(&s.token, "GET", &format!("/datacenters/{}", s.dc), "")
            .await;
    assert_eq!(common::failover::text(&dc, &["status"]), "problematic");
    let (code, b) =
        s.m.api(
            &s.token,
            "PUT",
            &format!("/hosts/{}", s.hosts[other]),
            &put_priority(5),
        )
        .await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(s.wait_spm(Duration::from_secs(60)).await, other);
    s.disk_works("after-priority", Duration::from_secs(60))
        .await;
    assert_eq!(s.watch.max_spms.load(Ordering::Relaxed), 1);
}
