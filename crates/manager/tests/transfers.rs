//! Image transfers end to end: a Manager, a real host agent with its image data
//! server, a local data domain, and tests/sdk/transfers.py driving the unmodified SDK
//! and the unmodified ovirt-imageio client (uploads and downloads through the host and
//! through the Manager's proxy, checksums, and the refusals: guessed, reused and
//! ended tickets, a read ticket writing, ranges past the end, a client that
//! disconnects half-way, inactivity, an ISO that is not one).

use std::path::PathBuf;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_transfers_with_the_imageio_client() {
    let m = ManagerProc::start(
        Database::Sqlite,
        "[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\n[imageio]\npoll_secs = 1\n# The proxy reaches the host over TLS here (the other tests use its socket).\nlocal_hosts_by_socket = false\n",
    )
    .await;
    let name = format!("tr{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let sd = host.dir.join("transfers-sd");
    let work = host.dir.join("transfers-work");
    std::fs::create_dir_all(&sd).expect("sd dir");
    std::fs::create_dir_all(&work).expect("work dir");
    let img = halyard_testinfra::env::Env::get().guest_image().clone();
    let iso = halyard_testguest::boot_iso(&img).expect("the bootable ISO");
    let vm_name = host.domain_name("cdvm");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/transfers.py");
    let out = m.run_sdk(
        &script,
        &[
            ("HALYARD_HOST_NAME", name.clone()),
            ("HALYARD_SD_PATH", sd.to_string_lossy().into_owned()),
            ("HALYARD_WORK", work.to_string_lossy().into_owned()),
            ("HALYARD_BOOT_ISO", iso.to_string_lossy().into_owned()),
            (
                "HALYARD_CONSOLE_DIR",
                m.dir.join("consoles").to_string_lossy().into_owned(),
            ),
            ("HALYARD_VM_NAME", vm_name),
        ],
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let log = host.log();
    assert!(
        out.status.success() && text.contains("TRANSFERS OK"),
        "image transfers failed:\n{text}\nagent log (tail):\n{}\nmanager log (tail):\n{}",
        tail(&log, 60),
        tail(&m.log(), 60)
    );
    // Tickets are secrets: the agent logs transfer ids, never a ticket id.
    // `halyard disks upload`: the CLI's own imageio client, into the same domain,
    // through the host and through the proxy; the uploads read back identical.
    let img = work.join("cli-src.qcow2");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect(args[0]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let i = img.to_string_lossy().into_owned();
    run(&["qemu-img", "create", "-q", "-f", "qcow2", &i, "32M"]);
    run(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x77 1M 3M",
        "-c",
        "write -P 0x78 31M 1M",
        &i,
    ]);
    let cli = workspace_bin("halyard-cli", "halyard");
    for (name, proxy) in [("cli-host", false), ("cli-proxy", true)] {
        let mut c = std::process::Command::new(&cli);
        c.args([
            "disks",
            "upload",
            &i,
            "--storage-domain",
            "tdata",
            "--name",
            name,
        ])
        .env("HALYARD_URL", m.url())
        .env("HALYARD_CA", m.ca())
        .env("HALYARD_PASSWORD_FILE", m.dir.join("data/admin-password"));
        if proxy {
            c.arg("--proxy");
        }
        let out = c.output().expect("halyard disks upload");
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprintln!("{o}{e}");
        assert!(
            out.status.success() && o.contains("uploaded into disk"),
            "{o}{e}"
        );
        assert!(e.contains("100%"), "no progress bar: {e}");
        let id = o
            .split("uploaded into disk ")
            .nth(1)
            .map(|s| s.trim().to_string())
            .expect("disk id");
        let vol = walk_volume(&sd, &id).expect("the uploaded disk's volume");
        run(&["qemu-img", "compare", "-U", &i, &vol]);
    }
    let ticket = text
        .lines()
        .find_map(|l| l.strip_prefix("TICKET_URL "))
        .and_then(|u| u.rsplit('/').next())
        .expect("the script prints a ticket URL");
    assert_eq!(ticket.len(), 36, "{ticket}");
    assert!(!log.contains(ticket), "the agent logged a ticket id");
    assert!(!m.log().contains(ticket), "the Manager logged a ticket id");
}

/// The volume file of disk `id` in a file domain under `root`.
fn walk_volume(root: &std::path::Path, id: &str) -> Option<String> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == id) {
                for f in std::fs::read_dir(&p).ok()?.flatten() {
                    let n = f.file_name().to_string_lossy().into_owned();
                    if !n.ends_with(".meta") && !n.ends_with(".lease") {
                        return Some(f.path().to_string_lossy().into_owned());
                    }
                }
            }
            if let Some(v) = walk_volume(&p, id) {
                return Some(v);
            }
        }
    }
    None
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}
