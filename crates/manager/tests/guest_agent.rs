//! Guest details up to the Manager: one guest runs Halyard's guest agent, one runs
//! Debian's qemu-guest-agent; the same fields reach the API for both, and libvirt's
//! own agent commands (`virsh qemu-agent-command`, `virsh domifaddr --source agent`)
//! answer the same for both.

use std::time::{Duration, Instant};

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn parse(x: &str) -> Node {
    Node::parse_xml(x.as_bytes()).unwrap_or_else(|e| panic!("{e}: {x}"))
}

fn text(n: &Node, path: &[&str]) -> String {
    let mut cur = n.clone();
    for p in &path[..path.len() - 1] {
        match cur.get(p) {
            Some(c) => cur = c.clone(),
            None => return String::new(),
        }
    }
    cur.text_of(path[path.len() - 1]).unwrap_or("").to_string()
}

/// What the API shows of a guest, with the parts that differ by design (its address)
/// taken out.
fn guest_view(vm: &Node, devices: &Node) -> (Vec<(String, String)>, Vec<String>) {
    let fields = vec![
        ("fqdn".into(), text(vm, &["fqdn"])),
        (
            "os.kernel".into(),
            text(
                vm,
                &[
                    "guest_operating_system",
                    "kernel",
                    "version",
                    "full_version",
                ],
            ),
        ),
        (
            "os.architecture".into(),
            text(vm, &["guest_operating_system", "architecture"]),
        ),
        (
            "os.family".into(),
            text(vm, &["guest_operating_system", "family"]),
        ),
        ("tz.name".into(), text(vm, &["guest_time_zone", "name"])),
        (
            "tz.offset".into(),
            text(vm, &["guest_time_zone", "utc_offset"]),
        ),
    ];
    let mut ips = Vec::new();
    for d in &devices.children {
        for ip in d.get("ips").map(|i| i.children.clone()).unwrap_or_default() {
            ips.push(format!(
                "{} {}",
                text(d, &["name"]),
                text(&ip, &["address"])
            ));
        }
    }
    ips.sort();
    (fields, ips)
}

fn virsh(args: &[&str]) -> String {
    let out = std::process::Command::new("virsh")
        .arg("-c")
        .arg("qemu:///system")
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_agents_report_the_same_to_the_manager() {
    let m = ManagerProc::start(Database::Sqlite, "auto_approve = [\"127.0.0.1\"]\n").await;
    let name = format!("g{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let env = halyard_testinfra::env::Env::get();
    let images = [
        ("halyard", env.halyard_guest_image().clone(), "10.213.7.201"),
        ("qemu-ga", env.guest_image().clone(), "10.213.7.202"),
    ];
    let token = m.token().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, b) = m
            .api(&token, "GET", &format!("/hosts?search=name%3D{name}"), "")
            .await;
        if parse(&b).get("host").and_then(|h| h.text_of("status")) == Some("up") {
            break;
        }
        assert!(Instant::now() < deadline, "host not up: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut vms = Vec::new();
    for (agent, img, ip) in &images {
        let vname = host.domain_name(&format!("ga-{agent}"));
        let body = format!(
            "<vm><name>{vname}</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><memory>{}</memory><os><type>other_linux</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline></os></vm>",
            256u64 << 20,
            img.kernel.display(),
            img.initrd.display(),
            halyard_testguest::kernel_cmdline(Some(&format!("{ip}/24")), None),
        );
        let (code, v) = m.api(&token, "POST", "/vms", &body).await;
        assert_eq!(code, 201, "{v}");
        let id = parse(&v).id().expect("id").to_string();
        let (code, n) = m
            .api(
                &token,
                "POST",
                &format!("/vms/{id}/nics"),
                "<nic><name>nic1</name><interface>virtio</interface></nic>",
            )
            .await;
        assert_eq!(code, 201, "{n}");
        vms.push((agent.to_string(), id, vname));
    }
    let mut started = Vec::new();
    for (_, id, _) in &vms {
        let (code, b) = m
            .api(&token, "POST", &format!("/vms/{id}/start"), "<action/>")
            .await;
        assert_eq!(code, 200, "{b}");
        started.push(Instant::now());
    }
    // Until each shows its guest's details (OS, FQDN, time zone and its address).
    let mut views = Vec::new();
    for (i, (agent, id, _)) in vms.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(180);
        let (view, t) = loop {
            let (_, v) = m.api(&token, "GET", &format!("/vms/{id}"), "").await;
            let (_, d) = m
                .api(&token, "GET", &format!("/vms/{id}/reporteddevices"), "")
                .await;
            let view = guest_view(&parse(&v), &parse(&d));
            let complete = view.0.iter().all(|(k, v)| !v.is_empty() || k == "tz.name")
                && view.1.iter().any(|x| x.starts_with("eth0 "));
            if complete {
                break (view, started[i].elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "{agent}: guest details incomplete: {view:?}\n{}",
                tail(&host.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!("{agent}: guest details in the API {t:.1?} after the start request: {view:?}");
        views.push(view);
    }
    assert_eq!(
        views[0].0, views[1].0,
        "the API shows the same guest fields for both agents"
    );
    for (i, (_, _, _)) in vms.iter().enumerate() {
        let ip = images[i].2;
        assert!(
            views[i].1.contains(&format!("eth0 {ip}")),
            "{:?}",
            views[i].1
        );
    }
    // libvirt's own view through each agent.
    let mut answers = Vec::new();
    for (i, (_, _, dom)) in vms.iter().enumerate() {
        let ping = virsh(&["qemu-agent-command", dom, r#"{"execute":"guest-ping"}"#]);
        let hn = virsh(&[
            "qemu-agent-command",
            dom,
            r#"{"execute":"guest-get-host-name"}"#,
        ]);
        let addr = virsh(&["domifaddr", dom, "--source", "agent"]);
        // MACs and link-local addresses differ by design; the guest's own address too.
        let mac_free: String = addr
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter(|t| !(t.len() == 17 && t.matches(':').count() == 5))
                    .map(|t| {
                        if t.starts_with("fe80:") {
                            "LINK-LOCAL".to_string()
                        } else {
                            t.replace(images[i].2, "GUEST-IP")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        answers.push((ping.trim().to_string(), hn.trim().to_string(), mac_free));
    }
    eprintln!("virsh answers: {answers:#?}");
    assert_eq!(answers[0].0, r#"{"return":{}}"#);
    assert_eq!(
        answers[0], answers[1],
        "virsh sees the same through both agents"
    );
    let (_, ev) = m.api(&token, "GET", "/events?max=50", "").await;
    assert!(ev.contains("guest agent of VM"), "{ev}");
    for (_, id, _) in &vms {
        let _ = m
            .api(&token, "POST", &format!("/vms/{id}/stop"), "<action/>")
            .await;
    }
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}
