//! The Manager with 20 simulated hosts that speak the real protocol (TLS, STOMP,
//! JSON-RPC): registration at scale, even VM placement, monitoring of 100 VMs, and a
//! host that stops answering and comes back. The 200-host figures come from
//! `cargo bench -p halyard-manager --bench scale`.

mod conform;
mod fakehost;

use std::time::{Duration, Instant};

use halyard_testinfra::manager::{Database, ManagerProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_fake_hosts_hundred_vms() {
    let m = ManagerProc::start(Database::Sqlite, "auto_approve = [\"127.0.0.1\"]").await;
    let dir = m.dir.join("fakehosts");
    let hosts = fakehost::start_hosts(&m, "fake", 20, &dir)
        .await
        .expect("fake hosts register");
    let api = fakehost::Api::new(&m).await;
    api.wait_count("hosts", "up", 20, Duration::from_secs(60))
        .await
        .expect("all hosts up");

    let (added, started) = fakehost::add_and_start_vms(&api, "svm", 100, 8)
        .await
        .expect("VMs added and started");
    eprintln!("100 VMs added in {added:?}, started in {started:?}");
    api.wait_count("vms", "up", 100, Duration::from_secs(60))
        .await
        .expect("all VMs up");
    // Equal hosts, equal VMs, most free memory first: 5 VMs on each.
    let counts: Vec<usize> = hosts.iter().map(fakehost::FakeHost::vm_count).collect();
    assert!(counts.iter().all(|c| *c == 5), "placement {counts:?}");

    // One host stops answering: non_responsive, its VMs unknown, the others untouched.
    let victim = &hosts[7];
    victim.set_down(true);
    let t0 = Instant::now();
    loop {
        let hs = api.statuses("hosts").await.expect("hosts");
        if hs
            .iter()
            .any(|h| h.0 == victim.name && h.1 == "non_responsive")
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{hs:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("{} non_responsive after {:?}", victim.name, t0.elapsed());
    let vms = api.statuses("vms").await.expect("vms");
    assert_eq!(vms.iter().filter(|v| v.1 == "unknown").count(), 5);
    assert_eq!(vms.iter().filter(|v| v.1 == "up").count(), 95);

    victim.set_down(false);
    api.wait_count("vms", "up", 100, Duration::from_secs(30))
        .await
        .expect("the VMs recover");
    api.wait_count("hosts", "up", 20, Duration::from_secs(30))
        .await
        .expect("the host recovers");
    assert!(hosts.iter().all(|h| h.requests() > 0));

    // Hosts, their NICs and statistics, VMs and theirs: only members of their model
    // types (the walk in api_model.rs has no hosts and no running VMs).
    let (_, b) = api
        .call("GET", "/vms?search=name%3Dsvm-00001", "")
        .await
        .expect("vm");
    let doc = halyard_manager::api::node::Node::parse_xml(b.as_bytes()).expect("xml");
    let vm = doc
        .children
        .first()
        .and_then(|v| v.id())
        .expect("svm-00001")
        .to_string();
    let (_, b) = api.call("GET", "/hosts", "").await.expect("hosts");
    let doc = halyard_manager::api::node::Node::parse_xml(b.as_bytes()).expect("xml");
    let host = doc
        .children
        .first()
        .and_then(|h| h.id())
        .expect("a host")
        .to_string();
    let mut off_model = Vec::new();
    for path in [
        "/hosts".to_string(),
        format!("/hosts/{host}"),
        format!("/hosts/{host}/nics"),
        format!("/hosts/{host}/statistics"),
        "/vms".to_string(),
        format!("/vms/{vm}"),
        format!("/vms/{vm}/statistics"),
        format!("/vms/{vm}/reporteddevices"),
        "/clusters".to_string(),
        "/datacenters".to_string(),
        "/events".to_string(),
    ] {
        let (code, b) = api.call("GET", &path, "").await.expect("answer");
        assert_eq!(code, 200, "GET {path}: {b}");
        let doc = halyard_manager::api::node::Node::parse_xml(b.as_bytes()).expect("xml");
        off_model.extend(conform::conforms(&path, &doc));
    }
    assert!(off_model.is_empty(), "{}", off_model.join("\n"));
}

/// A host whose events come faster than the Manager's queue of 256 (a burst, or a
/// hostile host) loses events, not the truth: the Manager samples the host at once
/// when its events lag, and at most every 5 s however long the flood lasts. Here a VM
/// goes down while its host floods events about the others; periodic stats are 10
/// minutes apart, so only the lag sample can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_flooding_events_is_sampled_at_most_every_5_s() {
    let m = ManagerProc::start(
        Database::Sqlite,
        "auto_approve = [\"127.0.0.1\"]\n[monitoring]\nstats_interval_secs = 600\n",
    )
    .await;
    let dir = m.dir.join("fakehosts");
    let hosts = fakehost::start_hosts(&m, "flood", 1, &dir)
        .await
        .expect("fake host registers");
    let api = fakehost::Api::new(&m).await;
    api.wait_count("hosts", "up", 1, Duration::from_secs(60))
        .await
        .expect("host up");
    fakehost::add_and_start_vms(&api, "fvm", 4, 2)
        .await
        .expect("VMs added and started");
    api.wait_count("vms", "up", 4, Duration::from_secs(60))
        .await
        .expect("VMs up");
    let host = &hosts[0];
    let victim = host.vm_names().first().cloned().expect("a VM");
    host.stop_silently(&victim);
    let before = host.all_vm_stats_calls();
    let t0 = Instant::now();
    // 12 s of bursts of 3,000 events (the Manager queues 256), none about the victim.
    host.flood_events(72_000, 3_000, Duration::from_millis(500), &victim)
        .await;
    let flood = t0.elapsed();
    let samples = host.all_vm_stats_calls() - before;
    eprintln!("{flood:?} of flood: {samples} lag samples");
    let vms = api.statuses("vms").await.expect("vms");
    let state = vms.iter().find(|v| v.0 == victim).map(|v| v.1.clone());
    assert_eq!(state.as_deref(), Some("down"), "{vms:?}");
    let bound = flood.as_secs() / 5 + 1;
    assert!(
        (1..=bound).contains(&samples),
        "{samples} samples in {flood:?} (at most {bound})"
    );
}
