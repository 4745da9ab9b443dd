//! The unmodified `ovirt.ovirt` Ansible collection (from the PyPI `ansible` package,
//! nothing from Galaxy) against the all-in-one: a real host, a local data domain, the
//! playbook in tests/ansible/playbook.yml; every task must end ok or changed.

use std::path::PathBuf;
use std::process::Command;

use halyard_testinfra::manager::{workspace_bin, Database, ManagerProc};
use halyard_testinfra::{HostOptions, TestHost};

fn here(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/ansible")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovirt_ansible_collection_playbook() {
    let venv = halyard_testinfra::manager::ansible_venv();
    let m = ManagerProc::start(Database::Sqlite, "[monitoring]\npool_check_secs = 1\n").await;
    let name = format!("a{}", std::process::id());
    let mut o = HostOptions::new(workspace_bin("halyard-hostd", "halyard-hostd"));
    o.manager_url = Some(m.url());
    o.host_name = name.clone();
    let host = TestHost::start(o).await;
    let sd = host.dir.join("ansible-sd");
    std::fs::create_dir_all(&sd).expect("sd dir");
    let out = m.run_sdk(
        &here("setup.py"),
        &[
            ("HALYARD_HOST_NAME", name.clone()),
            ("HALYARD_SD_PATH", sd.to_string_lossy().into_owned()),
        ],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("SETUP OK"), "setup failed:\n{text}");
    let img = halyard_testinfra::env::Env::get().guest_image().clone();
    let home = host.dir.join("ansible-home");
    std::fs::create_dir_all(&home).expect("ansible home");
    let out = Command::new(venv.join("bin/ansible-playbook"))
        .arg("-i")
        .arg("localhost,")
        .arg(here("playbook.yml"))
        .args(["-e", &format!("engine_url={}", m.api_url())])
        .args(["-e", "engine_user=admin@internal"])
        .args(["-e", &format!("engine_password={}", m.password())])
        .args(["-e", &format!("engine_cafile={}", m.ca().display())])
        .args(["-e", "storage_domain=data1"])
        .args(["-e", &format!("host_name={name}")])
        .args(["-e", &format!("prefix={}", host.domain_name("ans"))])
        .args(["-e", &format!("guest_kernel={}", img.kernel.display())])
        .args(["-e", &format!("guest_initrd={}", img.initrd.display())])
        .args(["-e", "guest_cmdline=console=ttyS0"])
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_PYTHON_INTERPRETER", venv.join("bin/python"))
        .env("ANSIBLE_LOCALHOST_WARNING", "False")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .expect("ansible-playbook");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    let recap = text
        .lines()
        .find(|l| l.starts_with("localhost"))
        .unwrap_or("")
        .to_string();
    assert!(
        out.status.success() && recap.contains("failed=0") && recap.contains("unreachable=0"),
        "the playbook failed:\n{text}"
    );
}
