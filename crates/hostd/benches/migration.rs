//! Live migration benchmark; prints, side by side in one run, the migration of the same
//! guest (the test guest, 128 MiB, TCG) between two namespaced hosts through Halyard
//! (`VM.migrate` on the source agent) and with `virsh migrate --live --p2p` over the
//! same libvirtd TLS connection and migration network: total time and downtime,
//! medians of N runs each way alternately (targets: total <= 1.10x, downtime <= 1.10x
//! + 5 ms).
//!
//! Both use QEMU's default maximum downtime (300 ms) and libvirt's unlimited bandwidth:
//! Halyard gets `maxBandwidth: 0` and a schedule of one `setDowntime 300`, the virsh
//! guest `migrate-setmaxdowntime 300`. Halyard's total is from the VM.migrate call to
//! the source's migration status "done"; virsh's is the command's run time. Downtimes
//! are libvirt's measured `downtime_net` (Halyard: VM.getMigrationStatus; virsh:
//! `domjobinfo --completed` on the destination).
//!
//! Run: `cargo bench -p halyard-hostd --bench migration` (as root). `HALYARD_BENCH_RUNS`
//! sets N (default 10).

use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_testinfra::cluster::Cluster;
use halyard_testinfra::guest::{self, GuestSpec};
use serde_json::{json, Value};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn guest_xml(id: &str, name: &str, console: &std::path::Path) -> String {
    let img = halyard_testinfra::env::Env::get().guest_image().clone();
    let spec = GuestSpec::new(name).memory(128);
    guest::domain_xml(id, name, &spec, &img, console, "10.213.7.99")
        .lines()
        .filter(|l| !l.contains("<interface"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn wait_ready(console: &std::path::Path) {
    halyard_testinfra::wait_for_file_text(
        console,
        halyard_testguest::READY_MARKER,
        Duration::from_secs(120),
    )
    .await
    .expect("the guest boots");
}

/// Halyard: VM.migrate from host `from` to `to`; (total s, downtime ms).
async fn halyard_run(
    c: &Cluster,
    cl: &[Client; 2],
    id: &str,
    from: usize,
    to: usize,
) -> (f64, f64) {
    let ip = &c.hosts[to].ip;
    let params = json!({
        "dst": format!("{ip}:54321"), "dstqemu": ip, "method": "online",
        "maxBandwidth": 0,
        "convergenceSchedule": {"init": [{"name": "setDowntime", "params": ["300"]}], "stalling": []},
    });
    let t0 = Instant::now();
    cl[from]
        .call_value("VM.migrate", json!({"vmID": id, "params": params}))
        .await
        .expect("VM.migrate");
    let st: Value = loop {
        let s = cl[from]
            .call_value("VM.getMigrationStatus", json!({"vmID": id}))
            .await
            .expect("status");
        if s["status"]["message"] != "Migration in progress" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let total = t0.elapsed().as_secs_f64();
    assert_eq!(st["status"]["code"], 0, "migration failed: {st}");
    // The downtime comes with libvirt's job-completed event; wait for it.
    let mut downtime = st["downtime"].as_f64();
    for _ in 0..100 {
        if downtime.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        downtime = cl[from]
            .call_value("VM.getMigrationStatus", json!({"vmID": id}))
            .await
            .ok()
            .and_then(|s| s["downtime"].as_f64());
    }
    // The destination runs it; the source's Down entry goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = cl[to]
            .call_value("Host.getVMList", json!({"vmList": [id]}))
            .await
            .expect("list");
        if l.as_array()
            .is_some_and(|a| a.iter().any(|v| v["vmId"] == id && v["status"] == "Up"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not up on the destination: {l}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cl[from]
        .call_value("VM.destroy", json!({"vmID": id}))
        .await
        .expect("destroy the source's entry");
    (total, downtime.unwrap_or(f64::NAN))
}

/// virsh migrate --live --p2p of the plain libvirt domain; (total s, downtime ms).
fn virsh_run(c: &Cluster, name: &str, from: usize, to: usize) -> (f64, f64) {
    let ip = &c.hosts[to].ip;
    let pki = c.hosts[from].dir.join("state/libvirt-pki");
    let duri = format!("qemu+tls://{ip}:16514/system?pkipath={}", pki.display());
    let t0 = Instant::now();
    let out = c.in_host_output(
        from,
        &[
            "virsh",
            "migrate",
            "--live",
            "--p2p",
            name,
            &duri,
            "--migrateuri",
            &format!("tcp://{ip}"),
        ],
    );
    let total = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "virsh migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = c.in_host_output(to, &["virsh", "domjobinfo", "--completed", name]);
    let text = String::from_utf8_lossy(&info.stdout);
    let downtime = text
        .lines()
        .find(|l| l.starts_with("Total downtime:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    // The same maximum downtime on the next run from there.
    c.in_host_output(to, &["virsh", "migrate-setmaxdowntime", name, "300"]);
    (total, downtime)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("HALYARD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let hostd = halyard_testinfra::manager::workspace_bin("halyard-hostd", "halyard-hostd");
    let c = Cluster::start(2, hostd, 1).await;
    let cl = [c.client(0).await, c.client(1).await];
    // Halyard's guest, started by the agent.
    let id = uuid::Uuid::new_v4().to_string();
    let name = format!("hlyd-bench-mig-{}", &id[..8]);
    let console = c.dir.join("bench-h.log");
    cl[0]
        .call_value(
            "VM.create",
            json!({"vmID": id, "vmParams": {"vmId": id, "xml": guest_xml(&id, &name, &console)}}),
        )
        .await
        .expect("VM.create");
    wait_ready(&console).await;
    // The reference guest: the same definition, straight to libvirt on host 0.
    let vid = uuid::Uuid::new_v4().to_string();
    let vname = format!("hlyd-bench-virsh-{}", &vid[..8]);
    let vconsole = c.dir.join("bench-v.log");
    let dt = halyard_testinfra::env::domain_type();
    let vxml: String = guest_xml(&vid, &vname, &vconsole)
        .replace("type=\"kvm\">", &format!("type=\"{dt}\">"))
        .lines()
        .filter(|l| dt == "kvm" || !l.contains("<cpu "))
        .collect::<Vec<_>>()
        .join("\n");
    let xml_path = c.dir.join("bench-virsh.xml");
    std::fs::write(&xml_path, vxml).expect("xml");
    let out = c.in_host_output(0, &["virsh", "create", &xml_path.to_string_lossy()]);
    assert!(
        out.status.success(),
        "virsh create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&vconsole).await;
    c.in_host_output(0, &["virsh", "migrate-setmaxdowntime", &vname, "300"]);
    // Idle guests alike: a few seconds after boot.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (mut ht, mut hd, mut vt, mut vd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (from, to) = if run.is_multiple_of(2) {
            (0, 1)
        } else {
            (1, 0)
        };
        let (t, d) = halyard_run(&c, &cl, &id, from, to).await;
        println!("run {run} host {from} -> {to}: Halyard {t:.3} s, downtime {d} ms");
        ht.push(t);
        hd.push(d);
        let (t, d) = virsh_run(&c, &vname, from, to);
        println!("run {run} host {from} -> {to}: virsh   {t:.3} s, downtime {d} ms");
        vt.push(t);
        vd.push(d);
    }
    let (ht, hd, vt, vd) = (
        median(&mut ht),
        median(&mut hd),
        median(&mut vt),
        median(&mut vd),
    );
    println!();
    println!("live migration of the test guest (128 MiB, {dt}), medians of {runs}:");
    println!("                      virsh      Halyard   ratio    target");
    println!(
        "total time        {vt:8.3} s {ht:8.3} s   {:5.2}x   <= 1.10x",
        ht / vt
    );
    println!(
        "downtime          {vd:7.0} ms {hd:7.0} ms   {:5.2}x   <= 1.10x + 5 ms ({:.0} ms)",
        hd / vd,
        vd * 1.10 + 5.0
    );
    let last = if runs.is_multiple_of(2) { 0 } else { 1 };
    let _ = cl[last].call_value("VM.destroy", json!({"vmID": id})).await;
    c.in_host_output(last, &["virsh", "destroy", &vname]);
    println!("MIGRATION BENCH DONE");
}
