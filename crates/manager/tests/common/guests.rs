//! Two guests under a Manager, one with Halyard's guest agent and one with Debian's
//! qemu-guest-agent (shared by tests/guest_agent.rs and benches/guest_agent.rs).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use halyard_manager::api::node::Node;
use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

pub fn parse(x: &str) -> Node {
    Node::parse_xml(x.as_bytes()).unwrap_or_else(|e| panic!("{e}: {x}"))
}

pub fn text(n: &Node, path: &[&str]) -> String {
    let mut cur = n.clone();
    for p in &path[..path.len() - 1] {
        match cur.get(p) {
            Some(c) => cur = c.clone(),
            None => return String::new(),
        }
    }
    cur.text_of(path[path.len() - 1]).unwrap_or("").to_string()
}

pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// One guest of the pair.
pub struct Guest {
    pub agent: &'static str,
    pub id: String,
    pub domain: String,
    pub ip: &'static str,
    pub console: std::path::PathBuf,
    pub started: Instant,
}

pub struct Pair {
    pub m: ManagerProc,
    pub host: TestHost,
    pub token: String,
    pub guests: Vec<Guest>,
}

/// The fields of a guest the API shows, and its reported addresses.
pub type View = (Vec<(String, String)>, Vec<String>);

impl Pair {
    /// Manager, a registering host, and both guests started (`extra_cmdline` is added to
    /// their kernel command line).
    pub async fn start(extra_cmdline: &str) -> Pair {
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
        let mut guests = Vec::new();
        for (agent, img, ip) in images {
            let vname = host.domain_name(&format!("ga-{agent}"));
            let cmdline = format!(
                "{} {extra_cmdline}",
                halyard_testguest::kernel_cmdline(Some(&format!("{ip}/24")), None)
            );
            let body = format!(
                "<vm><name>{vname}</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><memory>{}</memory><os><type>other_linux</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline></os></vm>",
                256u64 << 20,
                img.kernel.display(),
                img.initrd.display(),
                cmdline.trim(),
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
            let console = m.dir.join("consoles").join(format!("{id}.log"));
            guests.push(Guest {
                agent,
                id,
                domain: vname,
                ip,
                console,
                started: Instant::now(),
            });
        }
        for g in &mut guests {
            let (code, b) = m
                .api(&token, "POST", &format!("/vms/{}/start", g.id), "<action/>")
                .await;
            assert_eq!(code, 200, "{b}");
            g.started = Instant::now();
        }
        Pair {
            m,
            host,
            token,
            guests,
        }
    }

    /// Waits until the API shows guest i's details (OS, FQDN, time zone, its
    /// address); returns them and the time since the start request.
    pub async fn wait_view(&self, i: usize) -> (View, Duration) {
        let g = &self.guests[i];
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let (_, v) = self
                .m
                .api(&self.token, "GET", &format!("/vms/{}", g.id), "")
                .await;
            let (_, d) = self
                .m
                .api(
                    &self.token,
                    "GET",
                    &format!("/vms/{}/reporteddevices", g.id),
                    "",
                )
                .await;
            let view = guest_view(&parse(&v), &parse(&d));
            let complete = view.0.iter().all(|(k, v)| !v.is_empty() || k == "tz.name")
                && view.1.iter().any(|x| x == &format!("eth0 {}", g.ip));
            if complete {
                return (view, g.started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "{}: guest details incomplete: {view:?}\n{}",
                g.agent,
                tail(&self.host.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When the guest's ready line appeared on its console, after the start request.
    pub fn boot_time(&self, i: usize) -> Option<Duration> {
        let g = &self.guests[i];
        let meta = std::fs::metadata(&g.console).ok()?;
        let text = std::fs::read_to_string(&g.console).ok()?;
        text.contains(halyard_testguest::READY_MARKER).then(|| {
            meta.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|ago| g.started.elapsed().saturating_sub(ago))
                .unwrap_or_default()
        })
    }

    pub async fn stop_all(&self) {
        for g in &self.guests {
            let _ = self
                .m
                .api(
                    &self.token,
                    "POST",
                    &format!("/vms/{}/stop", g.id),
                    "<action/>",
                )
                .await;
        }
    }
}

/// What the API shows of a guest, with its addresses apart.
pub fn guest_view(vm: &Node, devices: &Node) -> View {
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

pub fn virsh(args: &[&str]) -> String {
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
