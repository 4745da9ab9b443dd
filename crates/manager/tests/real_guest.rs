//! A real OS end to end: the harness's Debian 12 image (UEFI, systemd, cloud-init,
//! qemu-guest-agent, OpenSSH), uploaded by the SDK's own upload_disk.py through the
//! unmodified ovirt-imageio client, booted by a Manager VM with cloud-init, reached over
//! SSH from a network namespace this test makes, its VNC console and serial console
//! read, its CD changed while it runs, and downloaded again (tests/sdk/real_guest.py).

use std::path::PathBuf;
use std::process::Command;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

/// The guest's side of the test network: the VM's NIC is on the management bridge,
/// which has no address on the host; the test reaches the guest only from this
/// namespace, through a veth on that bridge.
pub const NS_ADDR: &str = "10.213.9.1";
pub const GUEST_ADDR: &str = "10.213.9.10";

/// A network namespace with a veth whose other end is on the management bridge.
struct Netns {
    name: String,
    veth: String,
}

fn sh(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let n = Netns {
            name: format!("hlg{pid}"),
            veth: format!("hlgv{pid}"),
        };
        n.remove();
        let peer = format!("hlgp{pid}");
        let bridge = halyard_testinfra::env::MGMT_BRIDGE;
        for args in [
            &["netns", "add", n.name.as_str()][..],
            &[
                "link", "add", &n.veth, "type", "veth", "peer", "name", &peer,
            ],
            &["link", "set", &n.veth, "master", bridge],
            &["link", "set", &n.veth, "up"],
            &["link", "set", &peer, "netns", &n.name],
            &["-n", &n.name, "link", "set", &peer, "name", "eth0"],
            &[
                "-n",
                &n.name,
                "addr",
                "add",
                &format!("{NS_ADDR}/24"),
                "dev",
                "eth0",
            ],
            &["-n", &n.name, "link", "set", "eth0", "up"],
            &["-n", &n.name, "link", "set", "lo", "up"],
        ] {
            assert!(sh("ip", args), "ip {args:?} failed");
        }
        n
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_guest_with_cloud_init_ssh_consoles_and_transfers() {
    let cache = halyard_testguest::default_cache_dir();
    let t0 = std::time::Instant::now();
    let deb = tokio::task::spawn_blocking(move || halyard_testguest::debian::ensure_debian(&cache))
        .await
        .expect("the image builder")
        .expect("the Debian image");
    eprintln!(
        "Debian image {} ready in {:.1} s",
        deb.disk.display(),
        t0.elapsed().as_secs_f64()
    );
    let m = ManagerProc::start(
        Database::Sqlite,
        "[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\n[imageio]\npoll_secs = 1\n",
    )
    .await;
    let name = format!("rg{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let sd = host.dir.join("real-guest-sd");
    let work = host.dir.join("real-guest-work");
    std::fs::create_dir_all(&sd).expect("sd dir");
    std::fs::create_dir_all(&work).expect("work dir");
    let ns = Netns::new();
    let key = work.join("id_ed25519");
    assert!(
        sh(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "halyard-test",
                "-f",
                &key.to_string_lossy()
            ]
        ),
        "ssh-keygen"
    );
    let env = halyard_testinfra::env::Env::get();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/real_guest.py");
    let out = m.run_sdk(
        &script,
        &[
            ("HALYARD_HOST_NAME", name.clone()),
            ("HALYARD_SD_PATH", sd.to_string_lossy().into_owned()),
            ("HALYARD_WORK", work.to_string_lossy().into_owned()),
            ("HALYARD_IMAGE", deb.disk.to_string_lossy().into_owned()),
            ("HALYARD_SSH_KEY", key.to_string_lossy().into_owned()),
            ("HALYARD_NETNS", ns.name.clone()),
            ("HALYARD_GUEST_ADDR", GUEST_ADDR.into()),
            ("HALYARD_NS_ADDR", NS_ADDR.into()),
            (
                "HALYARD_SDIST_DIR",
                env.work_dir()
                    .join("sdk-sdist")
                    .to_string_lossy()
                    .into_owned(),
            ),
            (
                "HALYARD_CONSOLE_DIR",
                m.dir.join("consoles").to_string_lossy().into_owned(),
            ),
            ("HALYARD_VM_NAME", host.domain_name("debian")),
            (
                "HALYARD_CLI",
                workspace_bin("halyard-cli", "halyard")
                    .to_string_lossy()
                    .into_owned(),
            ),
        ],
    );
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("REAL GUEST OK"),
        "the real guest flow failed:\n{text}\nagent log (tail):\n{}\nmanager log (tail):\n{}",
        tail(&host.log(), 60),
        tail(&m.log(), 60)
    );
    // The root password cloud-init set is a secret: in no log.
    let pw = text
        .lines()
        .find_map(|l| l.strip_prefix("ROOT_PASSWORD_MARK "))
        .expect("the script names its password's marker");
    assert!(!host.log().contains(pw), "the agent logged the password");
    assert!(!m.log().contains(pw), "the Manager logged the password");
    drop(ns);
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}
