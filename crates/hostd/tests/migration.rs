//! Live migration between two test hosts (own network and mount namespaces, libvirtd
//! listening with TLS, sanlock, agent) sharing one POSIX domain: a guest with a disk
//! on the shared domain goes from host 0 to host 1 and back with its memory and its
//! disk; a cancelled and a failed migration leave it running where it was; another
//! host may call nothing but the migration's verbs.

use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_testinfra::cluster::Cluster;
use halyard_testinfra::guest::{self, GuestSpec};
use halyard_testinfra::storage::{
    call, connect_pool, connect_shared, create_domain_and_pool, spm_start, task_ok, volume_create,
    PoolIds, BLANK,
};
use halyard_testinfra::{event_status, wait_event};
use serde_json::{json, Value};

const IO_TIMEOUT: u32 = 1;

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn status_on(c: &Client, id: &str) -> Option<String> {
    let l = c
        .call_value("Host.getVMList", json!({"vmList": [id]}))
        .await
        .ok()?;
    l.as_array()?
        .iter()
        .find(|v| v["vmId"] == id)
        .and_then(|v| v["status"].as_str().map(str::to_string))
}

async fn wait_status(c: &Client, id: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status_on(c, id).await;
        if s.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{id}: {s:?}, never {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn migrate_params(c: &Cluster, to: usize, extra: Value) -> Value {
    let ip = &c.hosts[to].ip;
    let mut p = json!({
        "dst": format!("{ip}:54321"), "dstqemu": ip, "method": "online", "src": "x",
        "tunneled": "false", "abortOnError": "true", "autoConverge": "true",
        "compressed": "false", "maxBandwidth": 1000, "outgoingLimit": 2, "incomingLimit": 2,
        "convergenceSchedule": {"init": [{"name": "setDowntime", "params": ["100"]}],
            "stalling": [{"limit": 1, "action": {"name": "setDowntime", "params": ["150"]}},
                         {"limit": 2, "action": {"name": "setDowntime", "params": ["300"]}},
                         {"limit": -1, "action": {"name": "abort", "params": []}}]},
    });
    if let (Value::Object(p), Value::Object(e)) = (&mut p, extra) {
        p.extend(e);
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_migrates_there_and_back_with_its_memory_and_disk() {
    let c = Cluster::start(2, env!("CARGO_BIN_EXE_halyard-hostd"), IO_TIMEOUT).await;
    let ids = PoolIds::new();
    let a = c.client(0).await;
    let b = c.client(1).await;
    connect_shared(&a, &c.shared).await;
    connect_shared(&b, &c.shared).await;
    create_domain_and_pool(&a, &c.shared, &ids).await;
    connect_pool(&a, &ids, 1).await;
    connect_pool(&b, &ids, 2).await;
    task_ok(&a, &spm_start(&a, &ids).await).await;
    let img = uuid();
    let vol = uuid();
    task_ok(
        &a,
        &volume_create(&a, &ids, &img, &vol, 64 << 20, true, BLANK, BLANK).await,
    )
    .await;

    // The guest on host 0, with the shared volume as vda (no NIC: the hosts have no
    // guest bridge).
    let env = halyard_testinfra::env::Env::get();
    let image = env.guest_image().clone();
    let id = uuid();
    let name = format!("hlyd-mig-{}", &id[..8]);
    let console = c.dir.join("mig-console.log");
    let spec = GuestSpec::new("mig").memory(128);
    let xml = guest::with_drive(
        &guest::domain_xml(&id, &name, &spec, &image, &console, "10.213.7.78"),
        &ids.sp,
        &ids.sd,
        &img,
        &vol,
    );
    let xml = xml
        .lines()
        .filter(|l| !l.contains("<interface"))
        .collect::<Vec<_>>()
        .join("\n");
    call(
        &a,
        "VM.create",
        json!({"vmID": id, "vmParams": {"vmId": id, "xml": xml}}),
    )
    .await;
    halyard_testinfra::wait_for_file_text(
        &console,
        halyard_testguest::READY_MARKER,
        Duration::from_secs(120),
    )
    .await
    .expect("the guest boots on host 0");
    wait_status(&a, &id, "Up", Duration::from_secs(60)).await;
    // Something only its memory knows, something only its disk knows.
    let boot_id = c.guest_exec(
        0,
        &name,
        "cat /proc/sys/kernel/random/boot_id; echo in-memory > /tmp/marker",
    );
    c.guest_exec(0,
        &name,
        "echo on-disk-$(cat /proc/sys/kernel/random/boot_id) | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null",
    );

    // Another host's certificate may not command a host, nor destroy a VM it is not
    // migrating there.
    let intruder = c.client_as_host(0, 1).await;
    for (verb, params) in [
        ("Host.getVMList", json!({})),
        ("VM.destroy", json!({"vmID": id})),
        (
            "VM.migrate",
            json!({"vmID": id, "params": {"dst": "10.0.0.1"}}),
        ),
        ("VM.getStats", json!({"vmID": id})),
    ] {
        let e = intruder.call_value(verb, params).await.expect_err(verb);
        assert!(
            e.to_string().contains("1401") || e.to_string().contains("Not authorized"),
            "{verb}: {e}"
        );
    }
    intruder.close().await;
    assert_eq!(status_on(&a, &id).await.as_deref(), Some("Up"));

    // Bad requests change nothing.
    for bad in [
        json!({"dst": format!("{}:54321/system?no_verify=1", c.hosts[1].ip)}),
        json!({"dst": c.hosts[1].ip, "maxBandwidth": -5}),
        json!({"dst": c.hosts[1].ip, "convergenceSchedule": {"init": [{"name": "reboot", "params": []}]}}),
    ] {
        let e = a
            .call_value("VM.migrate", json!({"vmID": id, "params": bad}))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("Invalid parameter"), "{e}");
    }
    assert_eq!(status_on(&a, &id).await.as_deref(), Some("Up"));

    // A migration to an address where no agent listens fails; the VM stays Up.
    let mut ev_a = a.events();
    call(
        &a,
        "VM.migrate",
        json!({"vmID": id, "params": migrate_params(&c, 1, json!({"dst": format!("{}:1", c.hosts[1].ip)}))}),
    )
    .await;
    wait_event(&mut ev_a, Duration::from_secs(30), |n| {
        event_status(n, &id).as_deref() == Some("Migration Source")
    })
    .await
    .expect("Migration Source");
    wait_event(&mut ev_a, Duration::from_secs(60), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up again after the failure");
    let st = call(&a, "VM.getMigrationStatus", json!({"vmID": id})).await;
    assert_eq!(st["status"]["code"], 12, "{st}");
    assert!(
        st["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("destination"),
        "{st}"
    );

    // There: host 0 -> host 1.
    let mut ev_b = b.events();
    let t0 = Instant::now();
    call(
        &a,
        "VM.migrate",
        json!({"vmID": id, "params": migrate_params(&c, 1, json!({}))}),
    )
    .await;
    wait_event(&mut ev_b, Duration::from_secs(60), |n| {
        event_status(n, &id).as_deref() == Some("Migration Destination")
    })
    .await
    .expect("Migration Destination on host 1");
    wait_event(&mut ev_b, Duration::from_secs(120), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up on host 1");
    wait_status(&a, &id, "Down", Duration::from_secs(30)).await;
    let took = t0.elapsed();
    let stats = call(&a, "VM.getStats", json!({"vmID": id})).await;
    assert_eq!(stats[0]["exitReason"], 4, "{stats}");
    assert_eq!(stats[0]["exitMessage"], "Migration succeeded", "{stats}");
    let st = call(&a, "VM.getMigrationStatus", json!({"vmID": id})).await;
    assert_eq!(st["status"]["code"], 0, "{st}");
    assert_eq!(st["progress"], 100, "{st}");
    let mut saw_progress = false;
    while let Ok(n) = ev_a.try_recv() {
        if n.method == format!("|virt|VM_migration_status|{id}") {
            assert!(n.params[&id]["progress"].is_u64(), "{:?}", n.params);
            saw_progress = true;
        }
    }
    assert!(saw_progress, "progress events were sent");
    println!(
        "migration host 0 -> 1: {:.2} s, downtime {} ms",
        took.as_secs_f64(),
        st["downtime"]
    );
    // The same guest, memory and disk, now on host 1, writing host 1's path.
    assert_eq!(
        c.guest_exec(
            1,
            &name,
            "cat /proc/sys/kernel/random/boot_id; cat /tmp/marker"
        ),
        format!("{boot_id}in-memory\n")
    );
    let disk = c.guest_exec(1, &name, "head -c 64 /dev/vda | head -n 1");
    assert_eq!(disk.trim(), format!("on-disk-{}", boot_id.trim()));
    let live = String::from_utf8_lossy(&c.in_host_output(1, &["virsh", "dumpxml", &name]).stdout)
        .to_string();
    let host1_run = c.hosts[1].dir.join("storage-run");
    assert!(
        live.contains(&host1_run.to_string_lossy().to_string()),
        "host 1 prepared the volume: {live}"
    );
    // The source's VM is Down until the Manager destroys it.
    call(&a, "VM.destroy", json!({"vmID": id})).await;
    assert!(
        !c.in_host(0, &["virsh", "domstate", &name]),
        "no domain is left on host 0"
    );

    // Cancelled: a slow migration (1 MiB/s) back, cancelled; it keeps running on host 1
    // and host 0 keeps no copy.
    let mut ev_b = b.events();
    call(
        &b,
        "VM.migrate",
        json!({"vmID": id, "params": migrate_params(&c, 0, json!({"maxBandwidth": 1}))}),
    )
    .await;
    wait_event(&mut ev_b, Duration::from_secs(60), |n| {
        n.method == format!("|virt|VM_migration_status|{id}")
    })
    .await
    .expect("the slow migration runs");
    call(&b, "VM.migrateCancel", json!({"vmID": id})).await;
    wait_event(&mut ev_b, Duration::from_secs(60), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up on host 1 after the cancel");
    let st = call(&b, "VM.getMigrationStatus", json!({"vmID": id})).await;
    assert_eq!(st["status"]["code"], 47, "{st}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_on(&a, &id).await.is_some() {
        assert!(Instant::now() < deadline, "host 0 keeps the cancelled copy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!c.in_host(0, &["virsh", "domstate", &name]));
    let e = b
        .call_value("VM.migrateCancel", json!({"vmID": id}))
        .await
        .expect_err("nothing to cancel");
    assert!(e.to_string().contains("Migration not in progress"), "{e}");

    // Back: host 1 -> host 0, still the same guest.
    call(
        &b,
        "VM.migrate",
        json!({"vmID": id, "params": migrate_params(&c, 0, json!({}))}),
    )
    .await;
    wait_status(&a, &id, "Up", Duration::from_secs(120)).await;
    wait_status(&b, &id, "Down", Duration::from_secs(30)).await;
    assert_eq!(
        c.guest_exec(
            0,
            &name,
            "cat /proc/sys/kernel/random/boot_id; cat /tmp/marker"
        ),
        format!("{boot_id}in-memory\n")
    );
    call(&b, "VM.destroy", json!({"vmID": id})).await;
    call(&a, "VM.destroy", json!({"vmID": id})).await;
    a.close().await;
    b.close().await;
}
