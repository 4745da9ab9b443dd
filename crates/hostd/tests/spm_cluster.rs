//! Two test hosts (own network and mount namespaces, libvirtd, sanlock daemon, agent)
//! on one shared POSIX domain: one SPM at a time; spmStop hands over; SIGKILL of the
//! SPM's agent lets the other take over within seconds; SIGKILL of the SPM host's
//! sanlock daemon lets the other take over only after the lease expired.

use std::time::{Duration, Instant};

use halyard_testinfra::cluster::Cluster;
use halyard_testinfra::storage::{
    call, call_err, connect_pool, connect_shared, create_domain_and_pool, spm_start, spm_status,
    task_ok, volume_create, wait_task, PoolIds, BLANK,
};

/// sanlock io_timeout of these tests.
const IO_TIMEOUT: u64 = 1;
/// When sanlock considers a host dead whose daemon stopped renewing (watchdog fired):
/// 8 x io_timeout (id renewal fail) + 60 s (watchdog).
const EXPIRY_BOUND: Duration = Duration::from_secs(8 * IO_TIMEOUT + 60);

async fn two_hosts() -> (Cluster, PoolIds) {
    let c = Cluster::start(2, env!("CARGO_BIN_EXE_halyard-hostd"), IO_TIMEOUT as u32).await;
    let ids = PoolIds::new();
    let a = c.client(0).await;
    let b = c.client(1).await;
    connect_shared(&a, &c.shared).await;
    connect_shared(&b, &c.shared).await;
    create_domain_and_pool(&a, &c.shared, &ids).await;
    connect_pool(&a, &ids, 1).await;
    connect_pool(&b, &ids, 2).await;
    (c, ids)
}

/// Polls both hosts' getSpmStatus; panics if both ever say SPM.
async fn roles(c: &Cluster, ids: &PoolIds) -> [String; 2] {
    let mut out = [String::new(), String::new()];
    for (i, r) in out.iter_mut().enumerate() {
        let cl = c.client(i).await;
        *r = spm_status(&cl, ids).await["spmStatus"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        cl.close().await;
    }
    assert!(!(out[0] == "SPM" && out[1] == "SPM"), "two SPMs at once");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_spm_at_a_time_stop_hands_over_and_agent_crash_fails_over() {
    let (mut c, ids) = two_hosts().await;
    let a = c.client(0).await;
    let b = c.client(1).await;

    task_ok(&a, &spm_start(&a, &ids).await).await;
    let lver_a = spm_status(&a, &ids).await["spmLver"]
        .as_i64()
        .expect("lver");
    // The other host cannot take it, and says who has it.
    let t = spm_start(&b, &ids).await;
    let s = wait_task(&b, &t, Duration::from_secs(60)).await;
    assert_eq!(s["taskResult"], "cleanFailure", "{s}");
    assert_eq!(s["code"], 651, "{s}");
    let sb = spm_status(&b, &ids).await;
    assert_eq!(sb["spmStatus"], "Free");
    assert_eq!(sb["spmId"], 1, "{sb}");
    assert_eq!(
        roles(&c, &ids).await,
        ["SPM".to_string(), "Free".to_string()]
    );

    // SPM-only verbs on the other host fail cleanly.
    let img = uuid::Uuid::new_v4().to_string();
    let vol = uuid::Uuid::new_v4().to_string();
    let code = call_err(
        &b,
        "Volume.create",
        serde_json::json!({"volumeID": vol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img,
            "size": "1048576", "volFormat": 4, "preallocate": 2, "diskType": "DATA", "desc": "",
            "srcImgUUID": BLANK, "srcVolUUID": BLANK}),
    )
    .await;
    assert_eq!(code, 654);
    assert_eq!(
        call_err(&b, "Host.getAllTasksStatuses", serde_json::json!({})).await,
        654
    );
    // Any host may read.
    task_ok(
        &a,
        &volume_create(&a, &ids, &img, &vol, 1 << 20, true, BLANK, BLANK).await,
    )
    .await;
    let vi = call(&b, "Volume.getInfo", serde_json::json!({"volumeID": vol, "storagepoolID": ids.sp, "storagedomainID": ids.sd, "imageID": img})).await;
    assert_eq!(vi["legality"], "LEGAL");

    // spmStop on A lets B start; the lease version goes up.
    call(
        &a,
        "StoragePool.spmStop",
        serde_json::json!({"storagepoolID": ids.sp}),
    )
    .await;
    task_ok(&b, &spm_start(&b, &ids).await).await;
    let sb = spm_status(&b, &ids).await;
    assert_eq!(sb["spmId"], 2);
    assert!(
        sb["spmLver"].as_i64().expect("lver") > lver_a,
        "{sb} vs {lver_a}"
    );
    assert_eq!(
        roles(&c, &ids).await,
        ["Free".to_string(), "SPM".to_string()]
    );

    // SIGKILL of the SPM's agent: sanlock releases its lease with its connection,
    // the other host takes over within seconds.
    a.close().await;
    c.kill_hostd(1);
    let killed = Instant::now();
    let mut took = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let t = spm_start(&a_client(&c).await, &ids).await;
        let s = wait_task(&a_client(&c).await, &t, Duration::from_secs(30)).await;
        if s["taskResult"] == "success" {
            took = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = took.expect("host A takes over after B's agent died");
    eprintln!("failover after SIGKILL of the SPM agent: {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // B's agent comes back (the engine reconnects it to the pool): it is not SPM.
    c.start_hostd(1).await;
    let b = c.client(1).await;
    connect_pool(&b, &ids, 2).await;
    assert_eq!(
        roles(&c, &ids).await,
        ["SPM".to_string(), "Free".to_string()]
    );
    // The new SPM can write.
    let a = a_client(&c).await;
    let v2 = uuid::Uuid::new_v4().to_string();
    task_ok(
        &a,
        &volume_create(&a, &ids, &img, &v2, 1 << 20, true, &img, &vol).await,
    )
    .await;
    b.close().await;
}

async fn a_client(c: &Cluster) -> halyard_client::Client {
    c.client(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanlock_daemon_death_fails_over_only_after_the_lease_expired() {
    let (mut c, ids) = two_hosts().await;
    let a = c.client(0).await;
    task_ok(&a, &spm_start(&a, &ids).await).await;
    let b = c.client(1).await;

    // Host A "dies": its sanlock daemon is killed (its agent lives on).
    c.kill_sanlock(0);
    let killed = Instant::now();

    // A's agent notices the lease is gone and stops being SPM at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = spm_status(&a, &ids).await;
        if s["spmStatus"] != "SPM" {
            eprintln!("A reports {} after {:?}", s["spmStatus"], killed.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A still claims SPM without its sanlock daemon"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // B tries all along; it must not succeed before the lease expired.
    let mut took = None;
    while killed.elapsed() < EXPIRY_BOUND + Duration::from_secs(60) {
        let t = spm_start(&b, &ids).await;
        let s = wait_task(&b, &t, Duration::from_secs(150)).await;
        if s["taskResult"] == "success" {
            took = Some(killed.elapsed());
            break;
        }
        let r = roles(&c, &ids).await;
        assert_ne!(r[1], "SPM");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = took.expect("B becomes SPM once A's lease expired");
    eprintln!("failover after SIGKILL of the SPM host's sanlock daemon: {took:?} (bound {EXPIRY_BOUND:?})");
    assert!(
        took >= EXPIRY_BOUND,
        "took over after {took:?}, before the lease could expire ({EXPIRY_BOUND:?})"
    );
    assert_eq!(roles(&c, &ids).await[1], "SPM");
    a.close().await;
    b.close().await;
}
