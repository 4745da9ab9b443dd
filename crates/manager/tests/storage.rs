//! Storage through the Manager: the SDK storage flow on a real host (local domain),
//! SPM failover with two namespaced hosts, and a Manager killed in the middle of a
//! disk creation.

use std::path::{Path, PathBuf};
use std::process::Command;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

/// A read-only bind mount of `dir` onto itself, undone on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        std::fs::create_dir_all(dir).expect("mkdir");
        let d = dir.to_string_lossy().into_owned();
        assert!(Command::new("mount")
            .args(["--bind", &d, &d])
            .status()
            .expect("mount")
            .success());
        assert!(Command::new("mount")
            .args(["-o", "remount,ro,bind", &d])
            .status()
            .expect("remount")
            .success());
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The manager config of storage tests: fast pool checks.
pub const FAST_POOL: &str = "[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_storage_flow_on_a_local_domain() {
    storage_flow(Database::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_storage_flow_on_postgresql() {
    let pg = halyard_testinfra::manager::Postgres::start();
    storage_flow(Database::Postgres(&pg)).await;
}

async fn storage_flow(db: Database<'_>) {
    let m = ManagerProc::start(db, FAST_POOL).await;
    let name = format!("s{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let base = host.dir.join("storage-test");
    let sd = base.join("data1");
    let not_empty = base.join("not-empty");
    std::fs::create_dir_all(&sd).expect("sd dir");
    let sd2 = base.join("data2");
    std::fs::create_dir_all(&sd2).expect("sd2 dir");
    std::fs::create_dir_all(&not_empty).expect("dir");
    std::fs::write(not_empty.join("somebody-elses-file"), b"keep me").expect("file");
    let ro = ReadOnly::new(&base.join("read-only"));
    let img = halyard_testinfra::env::Env::get().guest_image().clone();
    let out = m.run_sdk(
        &script("storage_flow.py"),
        &[
            ("HALYARD_HOST_NAME", name.clone()),
            ("HALYARD_VM_NAME", host.domain_name("st-vm")),
            ("HALYARD_VM2_NAME", host.domain_name("st-vm2")),
            ("HALYARD_KERNEL", img.kernel.to_string_lossy().into_owned()),
            ("HALYARD_INITRD", img.initrd.to_string_lossy().into_owned()),
            ("HALYARD_SD_PATH", sd.to_string_lossy().into_owned()),
            ("HALYARD_SD_TYPE", "localfs".into()),
            ("HALYARD_SD2_PATH", sd2.to_string_lossy().into_owned()),
            (
                "HALYARD_NOT_EMPTY",
                not_empty.to_string_lossy().into_owned(),
            ),
            ("HALYARD_READ_ONLY", ro.0.to_string_lossy().into_owned()),
        ],
    );
    drop(ro);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("STORAGE FLOW OK"),
        "SDK storage flow failed:\n{text}\nagent log (tail):\n{}",
        tail(&host.log(), 80)
    );
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// The Manager is SIGKILLed at different moments of disk creations and restarted:
/// every disk ends ok or is gone (cleaned up), its job says which, and the domain
/// holds exactly the volumes of the disks the API shows: nothing orphaned, nothing
/// illegal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_killed_during_disk_creation() {
    use halyard_manager::api::node::Node;
    use std::time::{Duration, Instant};
    let extra = format!("auto_approve = [\"127.0.0.1\"]\n{FAST_POOL}");
    let mut m = ManagerProc::start(Database::Sqlite, &extra).await;
    let name = format!("k{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let sd_path = host.dir.join("crash-sd");
    std::fs::create_dir_all(&sd_path).expect("dir");
    let mut token = m.token().await;
    let parse = |x: &str| Node::parse_xml(x.as_bytes()).expect("xml");
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
    let (code, sd) = m
        .api(
            &token,
            "POST",
            "/storagedomains",
            &format!(
                "<storage_domain><name>crash</name><type>data</type><storage><type>localfs</type><path>{}</path></storage><host><name>{name}</name></host></storage_domain>",
                sd_path.display()
            ),
        )
        .await;
    assert_eq!(code, 201, "{sd}");
    let sd = parse(&sd).id().expect("sd id").to_string();
    let (_, dcs) = m.api(&token, "GET", "/datacenters", "").await;
    let dc = parse(&dcs)
        .get("data_center")
        .and_then(|d| d.id().map(str::to_string))
        .expect("dc");
    let (code, a) = m
        .api(
            &token,
            "POST",
            &format!("/datacenters/{dc}/storagedomains"),
            &format!("<storage_domain id=\"{sd}\"/>"),
        )
        .await;
    assert_eq!(code, 201, "{a}");

    let mut outcomes = Vec::new();
    for (round, delay_ms) in [0u64, 5, 15, 30, 60, 120, 250, 500, 900]
        .into_iter()
        .enumerate()
    {
        let dname = format!("crash{round}");
        // The restarted Manager adopts the SPM first (until then: 409, retry later).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, b) = m
                .api(&token, "GET", &format!("/datacenters/{dc}"), "")
                .await;
            if parse(&b).text_of("status") == Some("up") {
                break;
            }
            assert!(Instant::now() < deadline, "data center not up: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let body = format!(
            "<disk><name>{dname}</name><provisioned_size>{}</provisioned_size><format>raw</format><sparse>false</sparse><storage_domains><storage_domain id=\"{sd}\"/></storage_domains></disk>",
            2u64 << 30
        );
        let url = m.api_url();
        let tls = m.tls();
        let auth = format!("Bearer {token}");
        let post = tokio::spawn(async move {
            halyard_client::http::request(
                tls,
                "POST",
                &format!("{url}/disks"),
                &[
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/xml"),
                    ("Version", "4"),
                ],
                body.as_bytes(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        m.kill9();
        let posted = match post.await {
            Ok(Ok(r)) => format!(
                "{} {}",
                r.status,
                r.text().chars().take(200).collect::<String>()
            ),
            Ok(Err(e)) => format!("error {e}"),
            Err(e) => format!("join {e}"),
        };
        eprintln!("round {round}: POST answered: {posted}");
        m.restart().await;
        // Sessions do not outlive the Manager process.
        token = m.token().await;
        let token2 = token.clone();
        // The disk ends ok, or is gone; never locked for good.
        let deadline = Instant::now() + Duration::from_secs(60);
        let outcome = loop {
            let (_, b) = m
                .api(&token2, "GET", &format!("/disks?search=name%3D{dname}"), "")
                .await;
            let st = parse(&b)
                .get("disk")
                .and_then(|d| d.text_of("status").map(str::to_string));
            match st.as_deref() {
                None => break "gone",
                Some("ok") => break "ok",
                Some(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "disk {dname} stuck: {b}\n{}",
                tail(&m.log(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The job tells the same (or there is none: the request never got in).
        let (_, jobs) = m.api(&token2, "GET", "/jobs", "").await;
        let job = parse(&jobs)
            .children
            .iter()
            .find(|j| j.text_of("description") == Some(&format!("Adding Disk {dname}")))
            .and_then(|j| j.text_of("status").map(str::to_string));
        match (outcome, job.as_deref()) {
            ("ok", Some("finished")) | ("gone", Some("failed")) | ("gone", None) => {}
            other => panic!("disk {dname}: outcome and job disagree: {other:?}\n{jobs}"),
        }
        eprintln!("round {round}: killed after {delay_ms} ms: disk {outcome}, job {job:?}");
        outcomes.push(outcome);
    }
    assert!(
        outcomes.contains(&"ok"),
        "no creation got through: the test did not test anything"
    );
    // Storage holds exactly the volumes of the ok disks, all LEGAL.
    let (_, disks) = m.api(&token, "GET", "/disks", "").await;
    let disks = parse(&disks);
    let mut expected: Vec<(String, String)> = disks
        .children
        .iter()
        .filter_map(|d| Some((d.id()?.to_string(), d.text_of("image_id")?.to_string())))
        .collect();
    expected.sort();
    let images = sd_path.join(&sd).join("images");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&images).expect("images").flatten() {
        let img = e.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(e.path()).expect("image").flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            if let Some(vol) = n.strip_suffix(".meta") {
                let meta = std::fs::read_to_string(f.path()).expect("meta");
                assert!(meta.contains("LEGALITY=LEGAL"), "{img}/{n}: {meta}");
                found.push((img.clone(), vol.to_string()));
            } else {
                assert!(
                    n.ends_with(".lease") || e.path().join(format!("{n}.meta")).exists(),
                    "orphan file {img}/{n}"
                );
            }
        }
    }
    found.sort();
    assert_eq!(found, expected, "storage and the API disagree");
    eprintln!(
        "outcomes: {outcomes:?}; {} disks ok on storage, nothing orphaned",
        found.len()
    );
}
