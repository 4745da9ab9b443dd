//! Highly available VMs on VM leases, end to end: a Manager, two namespaced hosts (own
//! libvirtd with sanlock as its lock manager, own sanlock daemon, agent), one shared
//! POSIX domain. An HA VM with a lease on that domain:
//!
//! - its lease is in the domain's xleases volume (VDSM's Lease.info on both hosts),
//!   held by the host that runs it (Lease.status), and a second copy of the VM
//!   started on the other host behind everyone's back (`virsh create` of the same
//!   domain XML) is refused by libvirt's sanlock lock manager;
//! - SIGKILL of its QEMU: the Manager restarts it;
//! - its host dies (agent, sanlock and QEMU killed at once): the Manager asks the
//!   other host at once; libvirt there starts QEMU paused and sanlock holds the lease
//!   acquisition until the dead host's lease expired, then the guest runs there; a
//!   watcher polling both hosts' QEMU processes every 100 ms never sees two, and the
//!   guest runs again within sanlock's bound + 10 s, not before the bound;
//! - a shutdown from inside the guest is not restarted.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::failover::{attr_id, tail, text, Setup};
use halyard_testinfra::cluster::{kill9, qemu_processes};
use serde_json::json;

/// The QEMU processes of VM `uuid`, on any host.
fn qemus_of(uuid: &str) -> Vec<i32> {
    qemu_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(uuid))
        .map(|(pid, _)| pid)
        .collect()
}

/// Polls the VM's QEMU processes every 100 ms: the most seen at once.
#[derive(Clone, Default)]
struct QemuWatch {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl QemuWatch {
    fn start(uuid: String) -> QemuWatch {
        let w = QemuWatch::default();
        let w2 = w.clone();
        std::thread::spawn(move || {
            while !w2.stop.load(Ordering::Relaxed) {
                let n = qemus_of(&uuid).len();
                w2.max.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        w
    }
}

impl Drop for QemuWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The Manager's log lines about HA and VM statuses.
fn hlog(s: &Setup) -> String {
    let l = s.m.log();
    let v: Vec<&str> = l
        .lines()
        .filter(|l| {
            !l.contains("api method")
                && (l.contains("HA ") || l.contains("VM status") || l.contains("WARN"))
        })
        .collect();
    v[v.len().saturating_sub(80)..].join("\n")
}

async fn events(s: &Setup) -> String {
    s.m.api(&s.token, "GET", "/events?max=300", "").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_ha_vm_restarts_after_a_crash_and_its_host_death_never_twice() {
    let mut s = Setup::start(1).await;
    s.wait_spm(Duration::from_secs(60)).await;
    let name = format!("hlyd-c{}-ha", s.cluster.k);
    let vm_body = |extra: &str| s.test_guest_xml(&name, extra);
    // Bad input: a lease on a domain that does not exist.
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            "/vms",
            &vm_body("<lease><storage_domain><name>nosuchsd</name></storage_domain></lease>"),
        )
        .await;
    assert_eq!(code, 400, "{f}");
    let ha = format!(
        "<high_availability><enabled>true</enabled><priority>50</priority></high_availability><lease><storage_domain id=\"{}\"/></lease>",
        s.sd
    );
    let (code, v) = s.m.api(&s.token, "POST", "/vms", &vm_body(&ha)).await;
    assert_eq!(code, 201, "{v}");
    let id = attr_id(&v);
    assert_eq!(text(&v, &["high_availability", "enabled"]), "true", "{v}");
    assert_eq!(text(&v, &["high_availability", "priority"]), "50", "{v}");
    assert!(
        v.contains(&format!(
            "<storage_domain href=\"/ovirt-engine/api/storagedomains/{}\" id=\"{}\"",
            s.sd, s.sd
        )),
        "{v}"
    );

    // The lease, as every host reads it from the xleases volume.
    let lease = json!({"lease": {"sd_id": s.sd, "lease_id": id}});
    let mut where_ = Vec::new();
    for i in 0..2 {
        let c = s.host_client(i).await;
        let info = c
            .call_value("Lease.info", lease.clone())
            .await
            .expect("Lease.info");
        let off = info["offset"].as_u64().expect("offset");
        assert!(
            off >= 3 << 20 && off % (1 << 20) == 0,
            "VDSM's lease offsets: {info}"
        );
        assert!(
            info["path"]
                .as_str()
                .unwrap_or("")
                .ends_with("/dom_md/xleases"),
            "{info}"
        );
        where_.push(off);
        let e = c
            .call_value(
                "Lease.info",
                json!({"lease": {"sd_id": s.sd, "lease_id": uuid::Uuid::new_v4().to_string()}}),
            )
            .await
            .expect_err("a lease that does not exist");
        assert!(e.to_string().contains("No such lease"), "{e}");
        c.close().await;
    }
    // (The test hosts mount the domain under their own run directories.)
    assert_eq!(where_[0], where_[1], "both hosts read the same slot");

    s.api_ok("POST", &format!("/vms/{id}/start"), "<action/>")
        .await;
    s.wait_vm(&id, "up", None, Duration::from_secs(120), || hlog(&s))
        .await;
    let first = s.vm_on(&id).await.1;
    let a = s.hosts.iter().position(|h| *h == first).expect("our host");
    let b_ = 1 - a;
    // Held by the host that runs it.
    let c = s.host_client(a).await;
    let st = c
        .call_value("Lease.status", lease.clone())
        .await
        .expect("Lease.status");
    assert_eq!(st["owners"].as_array().map(Vec::len), Some(1), "{st}");
    c.close().await;
    // The lease cannot change while it runs.
    let (code, f) =
        s.m.api(&s.token, "PUT", &format!("/vms/{id}"), "<vm><lease/></vm>")
            .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("only while it is down"), "{f}");

    // A second copy behind the Manager's and the agents' backs: libvirt on the other
    // host refuses it (the lease is held), so QEMU never runs there.
    let xml = s
        .cluster
        .in_host_output(a, &["virsh", "dumpxml", &name])
        .stdout;
    let xml = String::from_utf8_lossy(&xml).into_owned();
    assert!(xml.contains("<lease>"), "{xml}");
    let copy = s.cluster.dir.join("second-copy.xml");
    std::fs::write(&copy, xml).expect("copy xml");
    let out = s
        .cluster
        .in_host_output(b_, &["virsh", "create", &copy.to_string_lossy()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a second copy started");
    assert!(
        err.contains("lock") || err.contains("sanlock"),
        "refused for another reason than the lease: {err}"
    );
    assert_eq!(qemus_of(&id).len(), 1);

    // SIGKILL of its QEMU: restarted by the Manager (on whichever host).
    let pids = qemus_of(&id);
    assert_eq!(pids.len(), 1);
    kill9(pids[0]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = qemus_of(&id);
        let (st, _) = s.vm_on(&id).await;
        if st == "up" && now.len() == 1 && now[0] != pids[0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted after its QEMU was killed: {st}\n{}",
            hlog(&s)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = events(&s).await;
    assert!(
        ev.contains(&format!(
            "Highly Available VM {name} failed. It will be restarted automatically."
        )),
        "{}",
        tail(&ev, 40)
    );

    // Its host dies.
    let host = s.vm_on(&id).await.1;
    let a = s.hosts.iter().position(|h| *h == host).expect("our host");
    let b_ = 1 - a;
    let watch = QemuWatch::start(id.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    s.cluster.kill_host(a);
    // The Manager asks the other host at once (wait_for_launch there); libvirt starts
    // QEMU paused and sanlock holds its lease acquisition until the dead host's lease
    // expired; then the guest runs (powering_up).
    let mut asked = None;
    let ran = loop {
        let (st, h) = s.vm_on(&id).await;
        if h == s.hosts[b_] {
            if st == "wait_for_launch" && asked.is_none() {
                asked = Some(killed.elapsed());
            }
            if st == "powering_up" || st == "up" {
                break killed.elapsed();
            }
        }
        assert!(
            killed.elapsed() < s.lease_bound() * 2,
            "VM not restarted on the other host: {st} on {h}\n{}",
            hlog(&s)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let bound = s.lease_bound();
    let io = Duration::from_secs(u64::from(s.io_timeout));
    eprintln!(
        "host of the HA VM died: restart asked on the other host after {asked:?}, the guest runs there after {ran:?}; sanlock's bound {bound:?}"
    );
    assert_eq!(
        watch.max.load(Ordering::Relaxed),
        1,
        "two copies of the VM ran at once"
    );
    assert!(
        ran <= bound + Duration::from_secs(10),
        "took {ran:?}, bound {bound:?}"
    );
    // Not before the lease could expire (sanlock's bound from the dead host's last
    // renewal, at most one renewal period before the kill).
    assert!(
        ran + 2 * io + Duration::from_secs(3) >= bound,
        "the guest ran after {ran:?}, before the dead host's lease expired ({bound:?})"
    );
    let asked = asked.expect("the restart was asked while the lease was held");
    assert!(
        asked + Duration::from_secs(30) < ran,
        "asked after {asked:?}, ran after {ran:?}: the lease did not hold it back"
    );
    s.wait_vm(
        &id,
        "up",
        Some(&s.hosts[b_]),
        Duration::from_secs(60),
        || hlog(&s),
    )
    .await;
    drop(watch);

    // A shutdown from inside the guest: down, and it stays down.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.cluster.in_host_output(
            b_,
            &[
                "virsh",
                "qemu-agent-command",
                &name,
                r#"{"execute":"guest-exec","arguments":{"path":"/bin/busybox","arg":["poweroff","-f"]}}"#,
            ],
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "guest-exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s.wait_vm(&id, "down", None, Duration::from_secs(60), || hlog(&s))
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(s.vm_on(&id).await.0, "down", "{}", hlog(&s));
    assert!(qemus_of(&id).is_empty());
}

/// Power management: a fence agent (fence_ipmilan) on host a against its simulated BMC
/// (ipmi_sim, whose "power off" kills the host); an HA VM without a lease runs there.
/// Host a's agent dies: the host is non-responsive but still renews its storage lease,
/// so the cluster's policy (skip_if_sd_active) skips fencing and the VM is not
/// restarted (it still runs there). Its sanlock dies too: the Manager fences it through
/// host b (off, confirmed by the status, then on), the VM is down and restarted on
/// host b; a watcher never sees two QEMUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_less_ha_vm_restarts_after_its_host_was_fenced() {
    let mut s = Setup::start_with(1, None, "[fencing]\ngrace_secs = 2\ncheck_secs = 1\n").await;
    s.wait_spm(Duration::from_secs(60)).await;
    let name = format!("hlyd-c{}-fha", s.cluster.k);
    let body = s.test_guest_xml(
        &name,
        "<high_availability><enabled>true</enabled></high_availability>",
    );
    let id = attr_id(&s.post_ok("/vms", &body).await);
    s.post_ok(&format!("/vms/{id}/start"), "<action/>").await;
    s.wait_vm(&id, "up", None, Duration::from_secs(120), || hlog(&s))
        .await;
    let on = s.vm_on(&id).await.1;
    let a = s.hosts.iter().position(|h| *h == on).expect("our host");
    let b_ = 1 - a;
    let host_a = s.hosts[a].clone();
    let bmc = s.cluster.start_bmc(a);

    // Without power management a fence is refused; bad agents are refused.
    let (code, f) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{host_a}/fence"),
            "<action><fence_type>status</fence_type></action>",
        )
        .await;
    assert_eq!(code, 409, "{f}");
    assert!(f.contains("power management is not enabled"), "{f}");
    for (bad, what) in [
        (
            "<agent><type>../sh</type><address>x</address></agent>",
            "a fence agent's name",
        ),
        (
            "<agent><type>ipmilan</type></agent>",
            "<address> is required",
        ),
        (
            "<agent><type>ipmilan</type><address>a&#10;b</address></agent>",
            "control characters",
        ),
        (
            "<agent><type>ipmilan</type><address>x</address><port>70000</port></agent>",
            "1 to 65535",
        ),
    ] {
        let (code, f) =
            s.m.api(
                &s.token,
                "POST",
                &format!("/hosts/{host_a}/fenceagents"),
                bad,
            )
            .await;
        assert_eq!(code, 400, "{bad}: {f}");
        assert!(
            f.contains(&what.replace('<', "&lt;").replace('>', "&gt;")) || f.contains(what),
            "{bad}: {f}"
        );
    }
    let agent = format!(
        "<agent><type>ipmilan</type><address>{}</address><port>{}</port><username>{}</username><password>{}</password><order>1</order><options><option><name>lanplus</name><value>1</value></option><option><name>cipher</name><value>3</value></option><option><name>power_wait</name><value>0</value></option></options></agent>",
        bmc.address, bmc.port, bmc.username, bmc.password
    );
    let (code, ag) =
        s.m.api(
            &s.token,
            "POST",
            &format!("/hosts/{host_a}/fenceagents"),
            &agent,
        )
        .await;
    assert_eq!(code, 201, "{ag}");
    assert!(!ag.contains(&bmc.password), "the password is shown: {ag}");
    let (_, list) =
        s.m.api(&s.token, "GET", &format!("/hosts/{host_a}/fenceagents"), "")
            .await;
    assert!(
        list.contains("<type>ipmilan</type>") && !list.contains(&bmc.password),
        "{list}"
    );
    s.api_ok("PUT", &format!("/hosts/{host_a}"), "<host><power_management><enabled>true</enabled><automatic_pm_enabled>true</automatic_pm_enabled></power_management></host>").await;
    let (cluster, _) = s.default_cluster().await;
    s.api_ok("PUT", &format!("/clusters/{cluster}"), "<cluster><fencing_policy><enabled>true</enabled><skip_if_sd_active><enabled>true</enabled></skip_if_sd_active></fencing_policy></cluster>").await;
    // The power status through host b's fence_ipmilan.
    let st = s
        .api_ok(
            "POST",
            &format!("/hosts/{host_a}/fence"),
            "<action><fence_type>status</fence_type></action>",
        )
        .await;
    assert_eq!(text(&st, &["power_management", "status"]), "on", "{st}");

    // Host a's agent dies: non-responsive, but its storage lease lives: not fenced.
    let watch = QemuWatch::start(id.clone());
    s.cluster.kill_hostd(a);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = events(&s).await;
        if ev.contains("was skipped: it still renews its storage lease") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fencing not skipped\n{}\n{}",
            tail(&ev, 30),
            hlog(&s)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(bmc.power(), "on", "{}", bmc.log());
    assert_eq!(s.vm_on(&id).await.0, "unknown");
    assert_eq!(
        qemus_of(&id).len(),
        1,
        "the VM still runs on the host that lost the Manager"
    );

    // Its sanlock dies too: fenced (off, then on) through host b, the VM restarted there.
    let killed = Instant::now();
    s.cluster.kill_sanlock(a);
    s.wait_vm(
        &id,
        "up",
        Some(&s.hosts[b_]),
        Duration::from_secs(180),
        || format!("{}\n{}", hlog(&s), bmc.log()),
    )
    .await;
    let t = killed.elapsed();
    eprintln!("host without a storage lease fenced and its HA VM up on the other host after {t:?}");
    assert_eq!(
        watch.max.load(Ordering::Relaxed),
        1,
        "two copies of the VM ran at once"
    );
    let log = bmc.log();
    assert!(
        log.contains("set power 0") && log.contains("set power 1"),
        "{log}"
    );
    assert_eq!(bmc.power(), "on");
    let ev = events(&s).await;
    for want in [
        format!("Host {} was stopped by the system", s.cluster.host_name(a)),
        format!(
            "Host {} was restarted by the system",
            s.cluster.host_name(a)
        ),
        format!("Highly Available VM {name} failed. It will be restarted automatically."),
    ] {
        assert!(ev.contains(&want), "{want}\n{}", tail(&ev, 40));
    }
    let (_, h) =
        s.m.api(&s.token, "GET", &format!("/hosts/{host_a}"), "")
            .await;
    assert_ne!(text(&h, &["status"]), "up", "{h}");
    drop(watch);
}
