//! Image transfer benchmark: a 2 GiB qcow2 image (1 GiB of data) uploaded into a thin
//! COW disk and downloaded again with the unmodified SDK and ovirt-imageio client,
//! through the host's data server and through the Manager's proxy, next to
//! `qemu-img convert` of the same image into and out of the same storage domain, in
//! the same run (benches/transfers.py prints the table).
//!
//! Then it uploads the harness's Debian 12 image, boots a VM from it (UEFI) and prints
//! the time from `start` to the guest agent's first report in the API.
//!
//! `cargo bench -p halyard-manager --bench transfers` (as root; `HALYARD_RUNS`, default 3).

use std::path::PathBuf;
use std::process::Command;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn qemu(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The harness's Debian 12 image (cached by its inputs): booted at the end for the
    // time from start to the guest agent's first report.
    let cache = halyard_testguest::default_cache_dir();
    let debian =
        tokio::task::spawn_blocking(move || halyard_testguest::debian::ensure_debian(&cache))
            .await
            .expect("the image builder")
            .expect("the Debian image");
    let m = ManagerProc::start(
        Database::Sqlite,
        "[monitoring]\npool_check_secs = 1\nspm_status_interval_secs = 2\n",
    )
    .await;
    let name = format!("bench{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    o.log_filter = "info".into();
    let host = TestHost::start(o).await;
    let sd = host.dir.join("bench-sd");
    let work = host.dir.join("bench-work");
    std::fs::create_dir_all(&sd).expect("sd");
    std::fs::create_dir_all(&work).expect("work");
    let img = work.join("image.qcow2");
    let i = img.to_string_lossy().into_owned();
    qemu(&["qemu-img", "create", "-q", "-f", "qcow2", &i, "2G"]);
    // 1 GiB of data in 64 MiB runs every 128 MiB, each run its own pattern.
    let mut args: Vec<String> = vec!["qemu-io".into(), "-f".into(), "qcow2".into()];
    for k in 0..16u64 {
        args.push("-c".into());
        args.push(format!("write -P {} {}M 64M", 0x11 + k, k * 128));
    }
    args.push(i.clone());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    qemu(&a);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/transfers.py");
    let out = m.run_sdk(
        &script,
        &[
            ("HALYARD_HOST_NAME", name),
            ("HALYARD_SD_PATH", sd.to_string_lossy().into_owned()),
            ("HALYARD_WORK", work.to_string_lossy().into_owned()),
            ("HALYARD_IMAGE", i),
            (
                "HALYARD_DEBIAN_IMAGE",
                debian.disk.to_string_lossy().into_owned(),
            ),
            (
                "HALYARD_RUNS",
                std::env::var("HALYARD_RUNS").unwrap_or_else(|_| "3".into()),
            ),
        ],
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the transfer benchmark failed");
}
