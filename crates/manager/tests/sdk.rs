//! The Manager driven by the unmodified ovirt-engine-sdk-python from PyPI, with a real
//! host agent that registers and a real guest, on SQLite and on PostgreSQL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc, Postgres};
use halyard_testinfra::{HostOptions, TestHost};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

fn guest_env(host: &str, vm: &str) -> Vec<(&'static str, String)> {
    let img = halyard_testinfra::env::Env::get().guest_image().clone();
    vec![
        ("HALYARD_HOST_NAME", host.to_string()),
        ("HALYARD_VM_NAME", vm.to_string()),
        ("HALYARD_KERNEL", img.kernel.to_string_lossy().into_owned()),
        ("HALYARD_INITRD", img.initrd.to_string_lossy().into_owned()),
    ]
}

async fn registering_host(m: &ManagerProc, name: &str) -> TestHost {
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.to_string();
    TestHost::start(o).await
}

async fn flow(db: Database<'_>) {
    let m = ManagerProc::start(db, "").await;
    let name = format!("h{}", std::process::id());
    let host = registering_host(&m, &name).await;
    // Named with the test host's prefix: the harness destroys it whatever happens.
    let out = m.run_sdk(
        &script("flow.py"),
        &guest_env(&name, &host.domain_name("sdk-vm")),
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("FLOW OK"),
        "SDK flow failed:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_flow_on_sqlite() {
    flow(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_flow_on_postgresql() {
    let pg = Postgres::start();
    flow(Database::Postgres(&pg)).await;
}

/// Kill the host agent: the host is non_responsive within 15 s and its VM unknown;
/// restart it: both recover, and the guest was never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_failure_and_recovery() {
    let m = ManagerProc::start(Database::Sqlite, "[monitoring]\nstats_interval_secs = 2\n").await;
    let name = format!("f{}", std::process::id());
    let mut host = registering_host(&m, &name).await;
    let vm_name = host.domain_name("sdk-vm");
    let mut env = guest_env(&name, &vm_name);
    env.push(("HALYARD_KEEP_VM", "1".into()));
    let out = m.run_sdk(&script("flow.py"), &env);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm_id = text
        .lines()
        .find_map(|l| l.strip_prefix("VM_ID="))
        .expect("the VM id")
        .to_string();
    let qemu_pid = |h: &TestHost| {
        String::from_utf8_lossy(&h.virsh(&["domid", &vm_name]).stdout)
            .trim()
            .to_string()
    };
    let pid_before = qemu_pid(&host);
    assert!(!pid_before.is_empty());
    let token = m.token().await;
    let status_of = |xml: &str| {
        halyard_manager::api::node::Node::parse_xml(xml.as_bytes())
            .ok()
            .and_then(|n| n.text_of("status").map(str::to_string))
            .unwrap_or_default()
    };
    let host_id = {
        let (_, body) = m
            .api(&token, "GET", &format!("/hosts?search=name%3D{name}"), "")
            .await;
        let i = body.find(" id=\"").expect("host id") + 5;
        body[i..i + 36].to_string()
    };

    // Statistics come from the agent's real samples: the host's, its NICs' (rates
    // once two samples are in), the running VM's.
    use halyard_manager::api::node::Node;
    let stat = |xml: &str, name: &str| -> Option<f64> {
        let n = Node::parse_xml(xml.as_bytes()).ok()?;
        let s = n
            .all("statistic")
            .find(|s| s.text_of("name") == Some(name))?;
        s.get("values")?
            .get("value")?
            .text_of("datum")?
            .parse()
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, hs) = m
            .api(&token, "GET", &format!("/hosts/{host_id}/statistics"), "")
            .await;
        let (_, vs) = m
            .api(&token, "GET", &format!("/vms/{vm_id}/statistics"), "")
            .await;
        let (_, nics) = m
            .api(&token, "GET", &format!("/hosts/{host_id}/nics"), "")
            .await;
        let nic = Node::parse_xml(nics.as_bytes())
            .ok()
            .and_then(|n| n.all("host_nic").find_map(|x| x.id().map(str::to_string)));
        let rates = match &nic {
            Some(nid) => {
                let (_, ns) = m
                    .api(
                        &token,
                        "GET",
                        &format!("/hosts/{host_id}/nics/{nid}/statistics"),
                        "",
                    )
                    .await;
                stat(&ns, "data.current.rx").is_some() && stat(&ns, "data.total.rx").is_some()
            }
            None => false,
        };
        let idle = stat(&hs, "cpu.current.idle");
        let used = stat(&hs, "memory.used");
        let elapsed = stat(&vs, "elapsed.time");
        if idle.is_some_and(|x| (0.0..=100.0).contains(&x))
            && used.is_some_and(|x| x > 0.0)
            && elapsed.is_some()
            && stat(&vs, "memory.installed").is_some_and(|x| x > 0.0)
            && rates
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no statistics from the samples:\n{hs}\n{vs}\n{nics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Quotas in audit mode: the running VM's vCPUs and memory are accounted against the
    // limit it consumes; going over is an event, nothing is refused.
    let (_, dcs) = m
        .api(&token, "GET", "/datacenters?search=name%3DDefault", "")
        .await;
    let dc = Node::parse_xml(dcs.as_bytes())
        .ok()
        .and_then(|n| {
            n.all("data_center")
                .next()
                .and_then(|d| d.id().map(str::to_string))
        })
        .expect("dc");
    let (c, q) = m
        .api(
            &token,
            "POST",
            &format!("/datacenters/{dc}/quotas"),
            "<quota><name>audit</name></quota>",
        )
        .await;
    assert_eq!(c, 201, "{q}");
    let q = Node::parse_xml(q.as_bytes())
        .ok()
        .and_then(|n| n.id().map(str::to_string))
        .expect("quota");
    let limits = format!("/datacenters/{dc}/quotas/{q}/quotaclusterlimits");
    let (c, b) = m
        .api(&token, "POST", &limits, "<quota_cluster_limit><vcpu_limit>0</vcpu_limit><memory_limit>-1</memory_limit></quota_cluster_limit>")
        .await;
    assert_eq!(c, 201, "{b}");
    let body: &'static str = Box::leak(format!("<vm><quota id=\"{q}\"/></vm>").into_boxed_str());
    let (c, b) = m.api(&token, "PUT", &format!("/vms/{vm_id}"), body).await;
    assert_eq!(c, 200, "{b}");
    let (_, b) = m.api(&token, "GET", &limits, "").await;
    let usage = Node::parse_xml(b.as_bytes()).ok().and_then(|n| {
        n.all("quota_cluster_limit")
            .next()
            .and_then(|l| l.text_of("vcpu_usage").map(str::to_string))
    });
    assert_eq!(usage.as_deref(), Some("1"), "{b}");
    let (_, ev) = m.api(&token, "GET", "/events?max=20", "").await;
    assert!(ev.contains("Quota audit is over its soft limit"), "{ev}");
    assert_eq!(
        m.api(
            &token,
            "DELETE",
            &format!("/datacenters/{dc}/quotas/{q}"),
            ""
        )
        .await
        .0,
        409,
        "a quota in use"
    );

    host.kill9();
    let killed = Instant::now();
    let mut non_responsive = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let (_, body) = m.api(&token, "GET", &format!("/hosts/{host_id}"), "").await;
        if status_of(&body) == "non_responsive" {
            non_responsive = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = non_responsive.expect("the host turns non_responsive");
    eprintln!("non_responsive after {t:?}");
    assert!(t <= Duration::from_secs(15), "took {t:?}");
    let (_, body) = m.api(&token, "GET", &format!("/vms/{vm_id}"), "").await;
    assert_eq!(status_of(&body), "unknown", "{body}");

    host.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, h) = m.api(&token, "GET", &format!("/hosts/{host_id}"), "").await;
        let (_, v) = m.api(&token, "GET", &format!("/vms/{vm_id}"), "").await;
        if status_of(&h) == "up" && status_of(&v) == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: host {} vm {}",
            status_of(&h),
            status_of(&v)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        qemu_pid(&host),
        pid_before,
        "the guest must not be restarted"
    );
    let (_, ev) = m.api(&token, "GET", "/events?max=50", "").await;
    assert!(ev.contains("is not responding"), "{ev}");
    assert!(ev.contains("is responding again"), "{ev}");

    // Changes made behind the Manager's back reach the API through the agent's
    // |virt|VM_status| events, long before the next 15 s sample: within 2 s.
    for (cmd, want) in [("suspend", "paused"), ("resume", "up")] {
        let out = host.virsh(&[cmd, &vm_name]);
        assert!(out.status.success(), "virsh {cmd}: {out:?}");
        let t0 = Instant::now();
        loop {
            let (_, v) = m.api(&token, "GET", &format!("/vms/{vm_id}"), "").await;
            if status_of(&v) == want {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "after virsh {cmd} the API still shows {}",
                status_of(&v)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("virsh {cmd}: the API shows {want} after {:?}", t0.elapsed());
    }
    // Certificate renewal without downtime (oVirt's "Enroll Certificate", which the
    // Manager also does by itself when a third of the certificate's life is left): the
    // agent gets a new key and certificate over the monitoring connection, the VM
    // keeps running, the host stays up, and new connections see the new certificate.
    let cert_before = std::fs::read_to_string(&host.pki.hostd.cert).expect("host cert");
    let (code, body) = m
        .api(
            &token,
            "POST",
            &format!("/hosts/{host_id}/enrollcertificate"),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let cert_after = std::fs::read_to_string(&host.pki.hostd.cert).expect("host cert");
    let key_after = std::fs::read_to_string(&host.pki.hostd.key).expect("host key");
    assert_ne!(cert_before, cert_after, "the certificate must change");
    let ca = std::fs::read_to_string(m.ca()).expect("ca");
    assert!(halyard_pki::cert_matches_key(&cert_after, &key_after));
    assert!(halyard_pki::issued_by(&cert_after, &ca));
    let manager_client = halyard_pki::TlsFiles {
        cert: m.dir.join("data/pki/manager-client.pem"),
        key: m.dir.join("data/pki/manager-client.key"),
        ca: m.ca(),
    };
    let tls = halyard_pki::client_config(&manager_client).expect("client tls");
    let fresh = halyard_client::Client::connect("127.0.0.1", host.port, tls)
        .await
        .expect("a new connection with the new certificate");
    assert_eq!(
        fresh
            .call_value("Host.ping2", serde_json::json!({}))
            .await
            .expect("ping"),
        serde_json::json!(true)
    );
    let (_, h) = m.api(&token, "GET", &format!("/hosts/{host_id}"), "").await;
    let (_, v) = m.api(&token, "GET", &format!("/vms/{vm_id}"), "").await;
    assert_eq!(
        (status_of(&h).as_str(), status_of(&v).as_str()),
        ("up", "up")
    );
    assert_eq!(
        qemu_pid(&host),
        pid_before,
        "the guest must not be restarted"
    );
    let (_, ev) = m.api(&token, "GET", "/events?max=20", "").await;
    assert!(ev.contains("was renewed"), "{ev}");
    assert_eq!(
        m.log().matches("connected to the host agent").count(),
        2,
        "one connection before the agent was killed, one after; none for the renewal"
    );

    // Clean up the guest.
    let (code, _) = m
        .api(&token, "POST", &format!("/vms/{vm_id}/stop"), "<action/>")
        .await;
    assert_eq!(code, 200);
}

/// `POST /hosts` with an address, for an agent started with `--enroll-token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_host_by_address_with_enrollment_token() {
    let m = ManagerProc::start(Database::Sqlite, "").await;
    let name = format!("e{}", std::process::id());
    let token = uuid::Uuid::new_v4().to_string();
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.enroll_token = Some(token.clone());
    let host = TestHost::start(o).await;
    let out = m.run_sdk(
        &script("enroll.py"),
        &[
            ("HALYARD_HOST_NAME", name.clone()),
            ("HALYARD_HOST_PORT", host.port.to_string()),
            ("HALYARD_TOKEN", token),
        ],
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("ENROLL OK"),
        "enrollment failed:\n{text}\nagent log:\n{}",
        host.log()
    );
    // The agent now serves a certificate of the Manager's CA.
    let cert = std::fs::read_to_string(&host.pki.hostd.cert).expect("the installed certificate");
    let ca = std::fs::read_to_string(m.ca()).expect("ca");
    assert!(halyard_pki::issued_by(&cert, &ca));
}
