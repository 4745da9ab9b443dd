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
    let m = ManagerProc::start(Database::Sqlite, FAST_POOL).await;
    let name = format!("s{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let base = host.dir.join("storage-test");
    let sd = base.join("data1");
    let not_empty = base.join("not-empty");
    std::fs::create_dir_all(&sd).expect("sd dir");
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
