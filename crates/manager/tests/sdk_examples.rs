//! The oVirt Python SDK's own `examples/` against the all-in-one: a Manager on SQLite
//! and one real host agent (`myhost`, the host name the examples expect). The examples
//! come from the SDK's source distribution on PyPI (ovirt-engine-sdk-python 4.6.3,
//! checked by SHA-256) and run unchanged but for their connection settings; the runner
//! (tests/sdk_examples/run.py) prepares the fixtures they expect, runs them in order
//! with a timeout each, and prints `PASS name` / `FAIL name: reason` per example,
//! `EXAMPLES: N passed, M failed`, and `SDK EXAMPLES OK` when every example expected
//! to pass passed. What is left out, and why, is listed by the runner and in
//! tests/sdk_examples/README.md.

use std::path::PathBuf;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn here(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk_examples")
        .join(name)
}

/// Names of the VMs the examples (and the runner's fixtures) make: libvirt domains are
/// named after their VMs, so these carry no test prefix and the harness would not
/// remove them; this guard does, before the run (a killed earlier run) and after it.
const VM_NAMES: &[&str] = &[
    "myvm",
    "myclonedvm",
    "vm",
    "myvm0",
    "myvm1",
    "myvm2",
    "myvm3",
];
const VM_PREFIXES: &[&str] = &["myvmpool-"];

/// myvm's address (on its kernel command line; its guest agent reports it), apart from
/// the addresses other tests give their guests.
const GUEST_IP: &str = "10.213.7.231";

struct Domains;

impl Domains {
    fn clean() {
        let env = halyard_testinfra::env::Env::get();
        let out = env.virsh(&["list", "--all", "--name"]);
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| VM_NAMES.contains(n) || VM_PREFIXES.iter().any(|p| n.starts_with(p)))
        {
            let _ = env.virsh(&["destroy", name]);
            let _ = env.virsh(&["undefine", name]);
        }
    }
}

impl Drop for Domains {
    fn drop(&mut self) {
        Domains::clean();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovirt_sdk_examples() {
    Domains::clean();
    let _domains = Domains;
    let m = ManagerProc::start(
        Database::Sqlite,
        "[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\nvm_pool_check_secs = 2\n",
    )
    .await;
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = "myhost".into();
    // upgrade_host upgrades when the check finds updates (Halyard answers `upgrade`
    // with 501): the check runs apt for real, over packages this machine cannot have,
    // so its answer does not depend on how fresh the machine's QEMU is.
    o.extra_config = "[updates]\npackages = [\"halyard-\"]\n".into();
    let host = TestHost::start(o).await;
    // The directory principals the examples look up, written as an administrator does
    // (oVirt: ovirt-aaa-jdbc-tool, or an LDAP profile); none gets a password, so none
    // can log in.
    for args in [
        &["profile", "add", "mydomain"][..],
        &["user", "add", "myuser@mydomain"],
        &["user", "add", "user2@internal"],
        &["group", "add", "mygroup@internal"],
    ] {
        m.directory(args, false);
    }
    let sd = host.dir.join("sdk-examples-sd");
    let work = host.dir.join("sdk-examples-work");
    std::fs::create_dir_all(&sd).expect("sd dir");
    std::fs::create_dir_all(&work).expect("work dir");
    let env = halyard_testinfra::env::Env::get();
    let sdist = env.work_dir().join("sdk-sdist");
    let img = env.guest_image().clone();
    let out = m.run_sdk(
        &here("run.py"),
        &[
            ("HALYARD_HOST_NAME", "myhost".into()),
            ("HALYARD_SD_DIR", sd.to_string_lossy().into_owned()),
            ("HALYARD_WORK_DIR", work.to_string_lossy().into_owned()),
            ("HALYARD_SDIST_DIR", sdist.to_string_lossy().into_owned()),
            ("HALYARD_KERNEL", img.kernel.to_string_lossy().into_owned()),
            ("HALYARD_INITRD", img.initrd.to_string_lossy().into_owned()),
            ("HALYARD_GUEST_IP", GUEST_IP.into()),
            (
                "HALYARD_CMDLINE",
                halyard_testguest::kernel_cmdline(Some(&format!("{GUEST_IP}/24")), None),
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
        out.status.success() && text.lines().any(|l| l == "SDK EXAMPLES OK"),
        "the SDK examples failed (see above); agent log (tail):\n{}",
        tail(&host.log(), 60)
    );
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}
