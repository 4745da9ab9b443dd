//! Live migration end to end: a Manager, two namespaced hosts (own libvirtd with TLS,
//! sanlock and agent) registered with it, one shared POSIX domain. A test guest with a
//! disk on that domain is migrated with the unmodified SDK (`vm_service.migrate()`) to
//! the other host and back: the same boot, its memory, and the data its disk got before
//! and during the migration; a cancelled migration leaves it where it was; the API's
//! faults for what cannot migrate.

mod common;

use std::time::{Duration, Instant};

use common::failover::{attr_id, tail, text, Setup};
use serde_json::json;

fn script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/migrate.py")
}

fn migrate(s: &Setup, vm: &str, to: &str, cancel: bool) -> String {
    let out = s.m.run_sdk(
        &script(),
        &[
            ("HALYARD_VM_NAME", vm.to_string()),
            ("HALYARD_TO", to.to_string()),
            ("HALYARD_CANCEL", if cancel { "1" } else { "0" }.to_string()),
        ],
    );
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{t}");
    assert!(
        out.status.success() && t.contains("MIGRATE OK"),
        "SDK migration failed:\n{t}\n{}",
        tail(&s.m.log(), 80)
    );
    t.lines()
        .find_map(|l| l.strip_prefix("MIGRATE OK host="))
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_migrates_a_guest_both_ways_and_cancels() {
    let s = Setup::start(1).await;
    s.wait_spm(Duration::from_secs(60)).await;
    // A disk on the shared domain.
    let body = format!(
        "<disk><name>migdisk</name><provisioned_size>67108864</provisioned_size><format>cow</format><storage_domains><storage_domain id=\"{}\"/></storage_domains></disk>",
        s.sd
    );
    let (code, d) = s.m.api(&s.token, "POST", "/disks", &body).await;
    assert_eq!(code, 201, "{d}");
    let disk = attr_id(&d);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, d) =
            s.m.api(&s.token, "GET", &format!("/disks/{disk}"), "")
                .await;
        if text(&d, &["status"]) == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "disk not ok: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let name = format!("hlyd-c{}-mig", s.cluster.k);
    let id = attr_id(&s.post_ok("/vms", &s.test_guest_xml(&name, "")).await);
    let (code, a) = s
        .m
        .api(
            &s.token,
            "POST",
            &format!("/vms/{id}/diskattachments"),
            &format!("<disk_attachment><disk id=\"{disk}\"/><interface>virtio</interface><bootable>false</bootable><active>true</active></disk_attachment>"),
        )
        .await;
    assert_eq!(code, 201, "{a}");

    // Not running: a fault, nothing changes.
    let (code, f) =
        s.m.api(&s.token, "POST", &format!("/vms/{id}/migrate"), "<action/>")
            .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("Cannot migrate VM. VM is not running."), "{f}");
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{id}/cancelmigration"),
            "<action/>",
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(
        f.contains("Cannot cancel migration for non migrating VM."),
        "{f}"
    );

    let (code, b) =
        s.m.api(&s.token, "POST", &format!("/vms/{id}/start"), "<action/>")
            .await;
    assert_eq!(code, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let first = loop {
        let (st, host) = s.vm_on(&id).await;
        if st == "up" && !host.is_empty() {
            break host;
        }
        assert!(
            Instant::now() < deadline,
            "VM not up: {st}\n{}",
            tail(&s.m.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let src = s
        .hosts
        .iter()
        .position(|h| *h == first)
        .expect("a host of ours");
    let dst = 1 - src;
    // The guest agent answers once it started.
    let deadline = Instant::now() + Duration::from_secs(120);
    let boot_id = loop {
        let req = json!({"execute": "guest-ping"}).to_string();
        if s.cluster
            .in_host_output(src, &["virsh", "qemu-agent-command", &name, &req])
            .status
            .success()
        {
            break s.cluster.guest_exec(
                src,
                &name,
                "cat /proc/sys/kernel/random/boot_id; echo in-memory > /tmp/marker",
            );
        }
        assert!(Instant::now() < deadline, "the guest agent never answered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Bad input: to the same host; to a host that does not exist.
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{id}/migrate"),
            &format!("<action><host id=\"{first}\"/></action>"),
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("source and destination is the same"), "{f}");
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{id}/migrate"),
            "<action><host id=\"00000000-0000-0000-0000-000000000077\"/></action>",
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("Invalid Host Id"), "{f}");
    assert_eq!(s.vm_on(&id).await, ("up".to_string(), first.clone()));

    // Writes to the disk while it migrates (a counter, every 20 ms, for 10 s).
    s.cluster.guest_exec(src,
        &name,
        "(i=0; while [ $i -lt 500 ]; do echo \"count $i\" | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null; i=$((i+1)); sleep 0.02; done; echo done > /tmp/writer) >/dev/null 2>&1 &",
    );
    // There: the scheduler chooses (the other host).
    let went = migrate(&s, &name, "", false);
    assert_eq!(went, s.cluster.host_name(dst));
    assert_eq!(s.vm_on(&id).await, ("up".to_string(), s.hosts[dst].clone()));
    assert_eq!(
        s.cluster.guest_exec(
            dst,
            &name,
            "cat /proc/sys/kernel/random/boot_id; cat /tmp/marker"
        ),
        format!("{boot_id}in-memory\n"),
        "the same boot and memory on the destination"
    );
    assert!(
        !s.cluster.in_host(src, &["virsh", "domstate", &name]),
        "nothing is left on the source"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while s
        .cluster
        .guest_exec(dst, &name, "cat /tmp/writer 2>/dev/null")
        .trim()
        != "done"
    {
        assert!(Instant::now() < deadline, "the writer never ended");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        s.cluster.guest_exec(dst, &name, "head -n 1 /dev/vda"),
        "count 499\n",
        "every write, before, during and after the switch, is on the disk"
    );

    // Cancelled half-way: it stays where it is.
    let stayed = migrate(&s, &name, &s.cluster.host_name(src), true);
    assert_eq!(stayed, s.cluster.host_name(dst));
    assert!(!s.cluster.in_host(src, &["virsh", "domstate", &name]));

    // Back, to the named host.
    let back = migrate(&s, &name, &s.cluster.host_name(src), false);
    assert_eq!(back, s.cluster.host_name(src));
    assert_eq!(
        s.cluster.guest_exec(
            src,
            &name,
            "cat /proc/sys/kernel/random/boot_id; cat /tmp/marker"
        ),
        format!("{boot_id}in-memory\n")
    );
    let (_, ev) = s.m.api(&s.token, "GET", "/events?max=100", "").await;
    assert!(ev.contains("Migration started (VM: "), "{}", tail(&ev, 40));
    assert!(ev.contains("Actual downtime: "), "{}", tail(&ev, 40));
    let (code, b) =
        s.m.api(&s.token, "POST", &format!("/vms/{id}/stop"), "<action/>")
            .await;
    assert_eq!(code, 200, "{b}");
}

/// The Manager's log lines about migrations, maintenance and VM statuses.
fn mlog(s: &Setup) -> String {
    let l = s.m.log();
    let v: Vec<&str> = l
        .lines()
        .filter(|l| {
            !l.contains("api method")
                && (l.contains("migrat")
                    || l.contains("aintenance")
                    || l.contains("VM status")
                    || l.contains("WARN"))
        })
        .collect();
    v[v.len().saturating_sub(80)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_empties_the_spm_host_of_three_vms_then_activate() {
    let s = Setup::start(1).await;
    let spm = s.wait_spm(Duration::from_secs(60)).await;
    let other = 1 - spm;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            s.start_test_guest(&format!("hlyd-c{}-mnt{i}", s.cluster.k))
                .await,
        );
    }
    // All three on the SPM host.
    for id in &ids {
        s.wait_vm(id, "up", None, Duration::from_secs(120), || mlog(&s))
            .await;
        if s.vm_on(id).await.1 != s.hosts[spm] {
            let (code, b) =
                s.m.api(
                    &s.token,
                    "POST",
                    &format!("/vms/{id}/migrate"),
                    &format!("<action><host id=\"{}\"/></action>", s.hosts[spm]),
                )
                .await;
            assert_eq!(code, 200, "{b}");
            s.wait_vm(
                id,
                "up",
                Some(&s.hosts[spm]),
                Duration::from_secs(120),
                || mlog(&s),
            )
            .await;
        }
    }
    // Two migrations of one VM at once: the second is refused.
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{}/migrate", ids[0]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{}/migrate", ids[0]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("VM migration is in progress"), "{f}");
    s.wait_vm(
        &ids[0],
        "up",
        Some(&s.hosts[other]),
        Duration::from_secs(120),
        || mlog(&s),
    )
    .await;
    // A host preparing for maintenance is no destination.
    let t0 = Instant::now();
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/deactivate", s.hosts[other]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    s.wait_host(other, "maintenance", Duration::from_secs(120), || mlog(&s))
        .await;
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{}/migrate", ids[1]),
            &format!("<action><host id=\"{}\"/></action>", s.hosts[other]),
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("Host status is Up"), "{f}");
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/activate", s.hosts[other]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    s.wait_host(other, "up", Duration::from_secs(120), || mlog(&s))
        .await;
    eprintln!(
        "maintenance of a host with one VM, then activate: {:?}",
        t0.elapsed()
    );
    // Its VM went back to the SPM host with that maintenance.
    s.wait_vm(
        &ids[0],
        "up",
        Some(&s.hosts[spm]),
        Duration::from_secs(30),
        || mlog(&s),
    )
    .await;
    let t0 = Instant::now();
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/deactivate", s.hosts[spm]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let mut saw_preparing = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let st = s.host_status(spm).await;
        if st == "maintenance" {
            break;
        }
        saw_preparing |= st == "preparing_for_maintenance";
        assert!(Instant::now() < deadline, "still {st}\n{}", mlog(&s));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = t0.elapsed();
    assert!(saw_preparing, "it went through preparing_for_maintenance");
    // Every VM runs on the other host.
    for id in &ids {
        s.wait_vm(
            id,
            "up",
            Some(&s.hosts[other]),
            Duration::from_secs(30),
            || mlog(&s),
        )
        .await;
    }
    assert_eq!(
        s.wait_spm(Duration::from_secs(60)).await,
        other,
        "the SPM role moved to the other host"
    );
    eprintln!("maintenance of the SPM host with 3 VMs: {took:?}");
    let (_, ev) = s.m.api(&s.token, "GET", "/events?max=200", "").await;
    assert!(
        ev.contains(&format!(
            "Host {} was switched to Maintenance Mode",
            s.cluster.host_name(spm)
        )),
        "{}",
        tail(&ev, 40)
    );
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{}/activate", s.hosts[spm]),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    s.wait_host(spm, "up", Duration::from_secs(120), || mlog(&s))
        .await;
    for id in &ids {
        let _ =
            s.m.api(&s.token, "POST", &format!("/vms/{id}/stop"), "<action/>")
                .await;
    }
}

/// Where the VM's QEMU runs: (on host i, on host 1 - i).
fn qemu_where(s: &Setup, id: &str, i: usize) -> (bool, bool) {
    let on = |h: usize| s.cluster.qemu_on(h).iter().any(|(_, c)| c.contains(id));
    (on(i), on(1 - i))
}

/// The Manager SIGKILLed mid-migration: restarted while the migration still runs, it
/// still follows it (the stored destination) and a cancel leaves the VM on the source;
/// restarted after a migration ended while it was down, it finds the VM on the
/// destination. Each time the API names the one host whose QEMU runs it. The cluster's
/// custom migration bandwidth (8 Mbps = VDSM's maxBandwidth 1 MiB/s) makes the first
/// migration long enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_restarted_mid_migration_knows_where_the_vm_runs() {
    let mut s = Setup::start(1).await;
    s.wait_spm(Duration::from_secs(60)).await;
    let id = s
        .start_test_guest(&format!("hlyd-c{}-mr", s.cluster.k))
        .await;
    s.wait_vm(&id, "up", None, Duration::from_secs(120), || mlog(&s))
        .await;
    let (cluster, cl) = s.default_cluster().await;
    let bandwidth = |m: &str, v: &str| {
        format!("<cluster><migration><bandwidth><assignment_method>{m}</assignment_method>{v}</bandwidth></migration></cluster>")
    };
    let (code, f) =
        s.m.api(
            &s.token,
            "PUT",
            &format!("/clusters/{cluster}"),
            &bandwidth("auto", ""),
        )
        .await;
    assert_eq!(code, 400, "{f}");
    let c = s
        .api_ok(
            "PUT",
            &format!("/clusters/{cluster}"),
            &bandwidth("custom", "<custom_value>8</custom_value>"),
        )
        .await;
    assert_eq!(
        text(&c, &["migration", "bandwidth", "custom_value"]),
        "8",
        "{c}"
    );
    let on = s.vm_on(&id).await.1;
    let src = s.hosts.iter().position(|h| *h == on).expect("our host");
    let dst = 1 - src;

    // 1. Restarted while it migrates.
    s.api_ok("POST", &format!("/vms/{id}/migrate"), "<action/>")
        .await;
    s.wait_vm(&id, "migrating", None, Duration::from_secs(30), || mlog(&s))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.m.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.m.restart().await;
    s.token = s.m.token().await;
    assert_eq!(
        s.vm_on(&id).await.0,
        "migrating",
        "after the restart: {}",
        mlog(&s)
    );
    let (code, b) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{id}/cancelmigration"),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}\n{}", mlog(&s));
    s.wait_vm(
        &id,
        "up",
        Some(&s.hosts[src]),
        Duration::from_secs(60),
        || mlog(&s),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_where(&s, &id, src) != (true, false) {
        assert!(
            Instant::now() < deadline,
            "QEMU on the source / destination: {:?}",
            qemu_where(&s, &id, src)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 2. Down while a migration ends.
    s.api_ok(
        "PUT",
        &format!("/clusters/{cluster}"),
        &bandwidth("hypervisor_default", ""),
    )
    .await;
    s.api_ok("POST", &format!("/vms/{id}/migrate"), "<action/>")
        .await;
    s.m.kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    while qemu_where(&s, &id, dst) != (true, false) {
        assert!(
            Instant::now() < deadline,
            "the migration did not end: QEMU on the destination / source {:?}",
            qemu_where(&s, &id, dst)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.m.restart().await;
    s.token = s.m.token().await;
    s.wait_vm(
        &id,
        "up",
        Some(&s.hosts[dst]),
        Duration::from_secs(60),
        || mlog(&s),
    )
    .await;
    assert_eq!(qemu_where(&s, &id, dst), (true, false));

    // 3. A host of another cluster is no destination: the empty host moves to one.
    let cpu = text(&cl, &["cpu", "type"]);
    let (code, o) =
        s.m.api(
            &s.token,
            "POST",
            "/clusters",
            &format!(
                "<cluster><name>other</name><data_center id=\"{}\"/><cpu><type>{cpu}</type></cpu></cluster>",
                s.dc
            ),
        )
        .await;
    assert_eq!(code, 201, "{o}");
    let other = attr_id(&o);
    let host = s.hosts[src].clone();
    s.api_ok("POST", &format!("/hosts/{host}/deactivate"), "<action/>")
        .await;
    s.wait_host(src, "maintenance", Duration::from_secs(60), || mlog(&s))
        .await;
    s.api_ok(
        "PUT",
        &format!("/hosts/{host}"),
        &format!("<host><cluster id=\"{other}\"/></host>"),
    )
    .await;
    s.api_ok("POST", &format!("/hosts/{host}/activate"), "<action/>")
        .await;
    s.wait_host(src, "up", Duration::from_secs(90), || mlog(&s))
        .await;
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/vms/{id}/migrate"),
            &format!("<action><host id=\"{host}\"/></action>"),
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("another cluster"), "{f}");
    assert_eq!(s.vm_on(&id).await, ("up".to_string(), s.hosts[dst].clone()));
    assert_eq!(qemu_where(&s, &id, dst), (true, false));
}
