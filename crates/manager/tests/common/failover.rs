//! The SPM failover scenario shared by the test (tests/spm_failover.rs) and the
//! benchmark (benches/failover.rs): a Manager, two namespaced hosts with their own
//! libvirtd and sanlock that register with it, one shared POSIX domain attached as the
//! master; a watcher asks both hosts for their SPM status every 100 ms.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use halyard_manager::api::node::Node;
use halyard_testinfra::cluster::Cluster;
use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use serde_json::json;

pub struct Setup {
    pub m: ManagerProc,
    pub cluster: Cluster,
    pub token: String,
    pub hosts: Vec<String>,
    pub dc: String,
    pub sd: String,
    pub io_timeout: u32,
    pub watch: Watch,
}

/// What the watcher saw.
#[derive(Clone, Default)]
pub struct Watch {
    /// Most hosts reporting SPM at the same poll.
    pub max_spms: Arc<AtomicUsize>,
    /// Per host: the last status seen.
    pub last: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Watch {
    pub fn spm_now(&self) -> Option<usize> {
        let l = self.last.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().position(|s| s == "SPM")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::Relaxed);
    }
}

pub fn attr_id(xml: &str) -> String {
    Node::parse_xml(xml.as_bytes())
        .ok()
        .and_then(|n| n.id().map(str::to_string))
        .unwrap_or_default()
}

pub fn text(xml: &str, path: &[&str]) -> String {
    let Ok(mut n) = Node::parse_xml(xml.as_bytes()) else {
        return String::new();
    };
    for p in &path[..path.len() - 1] {
        match n.get(p) {
            Some(c) => n = c.clone(),
            None => return String::new(),
        }
    }
    n.text_of(path[path.len() - 1]).unwrap_or("").to_string()
}

impl Setup {
    pub async fn start(io_timeout: u32) -> Setup {
        Setup::start_hiding(io_timeout, None).await
    }

    /// Like [`Setup::start`]; host `hide` sees an empty tmpfs where the shared storage
    /// is (it cannot reach the domain) from before the domain is attached.
    pub async fn start_hiding(io_timeout: u32, hide: Option<usize>) -> Setup {
        Setup::start_with(io_timeout, hide, "").await
    }

    /// Like [`Setup::start_hiding`], with more Manager configuration (TOML sections
    /// after `[monitoring]`).
    pub async fn start_with(io_timeout: u32, hide: Option<usize>, more: &str) -> Setup {
        let mut cluster = Cluster::prepare(
            2,
            workspace_bin("halyard-hostd", "halyard-hostd"),
            io_timeout,
        );
        let extra = format!("auto_approve = [\"10.215.*\"]\n[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\n{more}");
        let m = ManagerProc::start_on(
            Database::Sqlite,
            &extra,
            "info,halyard_manager=debug",
            "0.0.0.0",
            &[cluster.bridge_ip()],
        )
        .await;
        cluster.manager_url = Some(format!("https://{}:{}", cluster.bridge_ip(), m.port));
        for i in 0..2 {
            cluster.start_hostd(i).await;
        }
        let token = m.token().await;
        let mut hosts = Vec::new();
        for i in 0..2 {
            let name = cluster.host_name(i);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let (_, body) = m
                    .api(&token, "GET", &format!("/hosts?search=name%3D{name}"), "")
                    .await;
                let host = Node::parse_xml(body.as_bytes())
                    .ok()
                    .and_then(|n| n.get("host").cloned());
                if let Some(h) = host.filter(|h| h.text_of("status") == Some("up")) {
                    hosts.push(h.id().unwrap_or_default().to_string());
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {name} not up: {body}\n{}",
                    cluster.hosts[i].log()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let (_, dcs) = m.api(&token, "GET", "/datacenters", "").await;
        let dc = Node::parse_xml(dcs.as_bytes())
            .ok()
            .and_then(|n| {
                n.get("data_center")
                    .and_then(|d| d.id().map(str::to_string))
            })
            .expect("the Default data center");
        if let Some(h) = hide {
            let shared = cluster.shared.to_string_lossy().into_owned();
            assert!(
                cluster.in_host(h, &["mount", "-t", "tmpfs", "hidden", &shared]),
                "hiding the storage from host {h}"
            );
        }
        let body = format!(
            "<storage_domain><name>shared</name><type>data</type><storage><type>posixfs</type><path>{}</path><vfs_type>none</vfs_type><mount_options>bind</mount_options></storage><host><name>{}</name></host></storage_domain>",
            cluster.shared.display(),
            cluster.host_name(0)
        );
        let (code, sd) = m.api(&token, "POST", "/storagedomains", &body).await;
        assert_eq!(code, 201, "{sd}");
        let sd = attr_id(&sd);
        let (code, a) = m
            .api(
                &token,
                "POST",
                &format!("/datacenters/{dc}/storagedomains"),
                &format!("<storage_domain id=\"{sd}\"/>"),
            )
            .await;
        assert_eq!(code, 201, "{a}");
        let watch = Watch {
            last: Arc::new(Mutex::new(vec![String::new(); 2])),
            ..Watch::default()
        };
        let s = Setup {
            m,
            cluster,
            token,
            hosts,
            dc,
            sd,
            io_timeout,
            watch,
        };
        s.start_watch();
        s
    }

    /// The Manager's client identity towards the hosts.
    pub fn manager_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        halyard_pki::client_config(&halyard_pki::TlsFiles {
            cert: self.m.dir.join("data/pki/manager-client.pem"),
            key: self.m.dir.join("data/pki/manager-client.key"),
            ca: self.m.ca(),
        })
        .expect("client tls")
    }

    /// A client of host i with the Manager's certificate.
    pub async fn host_client(&self, i: usize) -> halyard_client::Client {
        halyard_client::Client::connect(&self.cluster.hosts[i].ip, 54321, self.manager_tls())
            .await
            .unwrap_or_else(|e| panic!("connecting to host {i}: {e}"))
    }

    /// Polls both hosts' getSpmStatus every 100 ms (with the Manager's client cert).
    fn start_watch(&self) {
        let tls = self.manager_tls();
        let ips: Vec<String> = self.cluster.hosts.iter().map(|h| h.ip.clone()).collect();
        let w = self.watch.clone();
        let dc = self.dc.clone();
        tokio::spawn(async move {
            let mut clients: Vec<Option<halyard_client::Client>> = vec![None, None];
            while !w.stop.load(Ordering::Relaxed) {
                let mut spms = 0;
                for (i, ip) in ips.iter().enumerate() {
                    if clients[i].is_none() {
                        clients[i] = tokio::time::timeout(
                            Duration::from_millis(500),
                            halyard_client::Client::connect(ip, 54321, tls.clone()),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok);
                    }
                    let st = match &clients[i] {
                        None => "unreachable".to_string(),
                        Some(c) => match tokio::time::timeout(
                            Duration::from_millis(1000),
                            c.call_value("StoragePool.getSpmStatus", json!({"storagepoolID": dc})),
                        )
                        .await
                        {
                            Ok(Ok(v)) => v["spmStatus"].as_str().unwrap_or("?").to_string(),
                            _ => {
                                clients[i] = None;
                                "unreachable".to_string()
                            }
                        },
                    };
                    if st == "SPM" {
                        spms += 1;
                    }
                    w.last.lock().unwrap_or_else(|p| p.into_inner())[i] = st;
                }
                w.max_spms.fetch_max(spms, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// The index of the host the API shows as SPM.
    pub async fn api_spm(&self) -> Option<usize> {
        for (i, id) in self.hosts.iter().enumerate() {
            let (_, h) = self
                .m
                .api(&self.token, "GET", &format!("/hosts/{id}"), "")
                .await;
            if text(&h, &["spm", "status"]) == "spm" {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_spm(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.api_spm().await {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no SPM:\n{}",
                tail(&self.m.log(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a 64 MiB disk, retrying while the data center has no SPM; returns when
    /// the disk is ok.
    pub async fn disk_works(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let body = format!(
            "<disk><name>{name}</name><provisioned_size>67108864</provisioned_size><format>cow</format><storage_domains><storage_domain id=\"{}\"/></storage_domains></disk>",
            self.sd
        );
        // A creation sent to an SPM that is losing its lease fails and is cleaned up
        // (the disk goes away with an event); then it is tried again.
        'create: loop {
            let id = loop {
                let (code, d) = self.m.api(&self.token, "POST", "/disks", &body).await;
                if code == 201 {
                    break attr_id(&d);
                }
                assert!(
                    Instant::now() < deadline,
                    "disk creation still refused ({code}): {d}\n{}",
                    tail(&self.m.log(), 60)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            loop {
                let (code, d) = self
                    .m
                    .api(&self.token, "GET", &format!("/disks/{id}"), "")
                    .await;
                if code == 404 {
                    eprintln!("disk {name}: creation failed and was cleaned up; retrying");
                    continue 'create;
                }
                if text(&d, &["status"]) == "ok" {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "disk {name} not ok: {d}\n{}",
                    tail(&self.m.log(), 60)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The `<vm>` of a diskless test guest (no NIC: the hosts have no guest bridge)
    /// of 128 MiB in Default, with `extra` elements.
    pub fn test_guest_xml(&self, name: &str, extra: &str) -> String {
        let img = halyard_testinfra::env::Env::get().guest_image().clone();
        format!(
            "<vm><name>{name}</name><cluster><name>Default</name></cluster><template><name>Blank</name></template><memory>{}</memory><os><type>other_linux</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline></os>{extra}</vm>",
            128u64 << 20,
            img.kernel.display(),
            img.initrd.display(),
            halyard_testguest::kernel_cmdline(None, None),
        )
    }

    /// POST that must succeed (200 or 201); the answer.
    pub async fn post_ok(&self, path: &str, body: &str) -> String {
        let (code, b) = self.m.api(&self.token, "POST", path, body).await;
        assert!(code == 200 || code == 201, "POST {path}: {code} {b}");
        b
    }

    /// A request that must answer 200; the answer.
    pub async fn api_ok(&self, method: &str, path: &str, body: &str) -> String {
        let (code, b) = self.m.api(&self.token, method, path, body).await;
        assert_eq!(code, 200, "{method} {path}: {b}");
        b
    }

    /// The Default cluster's id and its document.
    pub async fn default_cluster(&self) -> (String, String) {
        let (_, cl) = self
            .m
            .api(&self.token, "GET", "/clusters?search=name%3DDefault", "")
            .await;
        let n = Node::parse_xml(cl.as_bytes()).expect("clusters");
        let c = n.get("cluster").expect("the Default cluster");
        (c.id().unwrap_or_default().to_string(), c.to_xml())
    }

    /// A test guest ([`Setup::test_guest_xml`]) added and started; its id.
    pub async fn start_test_guest(&self, name: &str) -> String {
        let id = attr_id(&self.post_ok("/vms", &self.test_guest_xml(name, "")).await);
        self.post_ok(&format!("/vms/{id}/start"), "<action/>").await;
        id
    }

    /// Waits for host i to be `status`; `log` says what went on.
    pub async fn wait_host(
        &self,
        i: usize,
        status: &str,
        timeout: Duration,
        log: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while self.host_status(i).await != status {
            assert!(
                Instant::now() < deadline,
                "host {i} never {status}\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Host i's status as the API shows it.
    pub async fn host_status(&self, i: usize) -> String {
        let (_, h) = self
            .m
            .api(&self.token, "GET", &format!("/hosts/{}", self.hosts[i]), "")
            .await;
        text(&h, &["status"])
    }

    /// A VM's status and host (its id) as the API shows them.
    pub async fn vm_on(&self, id: &str) -> (String, String) {
        let (_, v) = self
            .m
            .api(&self.token, "GET", &format!("/vms/{id}"), "")
            .await;
        let host = Node::parse_xml(v.as_bytes())
            .ok()
            .and_then(|n| n.get("host").and_then(|h| h.id().map(str::to_string)))
            .unwrap_or_default();
        (text(&v, &["status"]), host)
    }

    /// Waits for VM `id` to be `status` (on `host` when given); `log` says what went on.
    pub async fn wait_vm(
        &self,
        id: &str,
        status: &str,
        host: Option<&str>,
        timeout: Duration,
        log: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let (st, h) = self.vm_on(id).await;
            if st == status && host.is_none_or(|w| w == h) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VM {id}: {st} on {h}, never {status} on {host:?}\n{}",
                log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn events(&self) -> String {
        self.m
            .api(&self.token, "GET", "/events?max=200", "")
            .await
            .1
    }

    /// sanlock's bound for taking a dead host's lease: 8 x io_timeout (renewal fail)
    /// + 60 s (watchdog fire) — see docs/storage.md.
    pub fn lease_bound(&self) -> Duration {
        Duration::from_secs(8 * u64::from(self.io_timeout) + 60)
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}
