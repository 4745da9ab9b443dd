//! A real guest through the real agent over TLS + STOMP + JSON-RPC: boot, ready line,
//! stats, pause/cont, status events (also for changes made behind the agent's back),
//! SIGKILL of the agent while the VM runs, reboot, shutdown and destroy.

use std::time::{Duration, Instant};

use halyard_testinfra::{event_status, wait_event, GuestSpec, HostOptions, TestHost};
use serde_json::json;

fn opts() -> HostOptions {
    HostOptions::new(env!("CARGO_BIN_EXE_halyard-hostd"))
}

fn domstate(host: &TestHost, name: &str) -> String {
    String::from_utf8_lossy(&host.virsh(&["domstate", name]).stdout)
        .trim()
        .to_string()
}

async fn status_of(c: &halyard_client::Client, id: &str) -> String {
    let l = c
        .call_value("Host.getVMList", json!({}))
        .await
        .expect("getVMList");
    l.as_array()
        .and_then(|a| a.iter().find(|v| v["vmId"] == id))
        .and_then(|v| v["status"].as_str())
        .unwrap_or("<absent>")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_lifecycle_events_stats_and_agent_restart() {
    let mut host = TestHost::start(opts()).await;
    let c = host.client().await.expect("connect");
    let mut ev = c.events();

    // Boot and see the ready line on the serial console.
    let g = host.boot_guest(&c, GuestSpec::new("life")).await;
    assert!(
        g.console.contains(&format!("ip={}/24", g.ip)),
        "{}",
        g.console
    );
    let id = g.id.clone();

    // Powering up, then Up once the guest agent connected.
    let up = wait_event(&mut ev, Duration::from_secs(90), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("an Up event");
    let payload = &up.params[&id];
    assert_eq!(payload["vmName"], g.domain_name);
    assert!(up.params["notify_time"].as_i64().expect("notify_time") > 1 << 31);
    assert_eq!(status_of(&c, &id).await, "Up");

    // The request's flow id (ovirtCorrelationId) is on every log line that served it,
    // including those of the start that finished after the reply.
    let log = host.log();
    for what in ["creating VM", "VM started"] {
        let line = log
            .lines()
            .find(|l| l.contains(what) && l.contains(&id))
            .unwrap_or_else(|| panic!("no {what:?} line in the log"));
        assert!(line.contains("flow_id=boot-life"), "{line}");
    }

    // Stats: after a sampling interval the bulk-stats values are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = c
            .call_value("VM.getStats", json!({"vmID": id}))
            .await
            .expect("getStats");
        if s[0].get("cpuUsage").is_some() && s[0].get("network").is_some() {
            break s;
        }
        assert!(Instant::now() < deadline, "no sampled stats: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let vm = &stats[0];
    assert_eq!(vm["status"], "Up");
    assert!(
        vm["cpuUsage"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .expect("cpuUsage")
            > 0
    );
    assert_eq!(vm["vcpuCount"], "1");
    let nic = vm["network"]
        .as_object()
        .expect("network")
        .values()
        .next()
        .expect("a NIC");
    assert!(nic["macAddr"]
        .as_str()
        .expect("mac")
        .starts_with("52:54:00"));
    let all = c
        .call_value("Host.getAllVmStats", json!({}))
        .await
        .expect("getAllVmStats");
    assert!(all
        .as_array()
        .expect("list")
        .iter()
        .any(|v| v["vmId"] == id));
    let hs = c
        .call_value("Host.getStats", json!({}))
        .await
        .expect("getStats");
    assert_eq!(hs["vmActive"], 1);
    assert!(hs["memFree"].as_u64().expect("memFree") > 0);

    // Pause and continue through the agent.
    let r = c
        .call_value("VM.pause", json!({"vmID": id}))
        .await
        .expect("pause");
    assert_eq!(r, json!({"vmList": {}}));
    wait_event(&mut ev, Duration::from_secs(5), |n| {
        event_status(n, &id).as_deref() == Some("Paused")
    })
    .await
    .expect("Paused event");
    assert_eq!(domstate(&host, &g.domain_name), "paused");
    c.call_value("VM.cont", json!({"vmID": id}))
        .await
        .expect("cont");
    wait_event(&mut ev, Duration::from_secs(5), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up event after cont");

    // A change behind the agent's back (virsh) reaches subscribers within 1 s.
    let t0 = Instant::now();
    assert!(host.virsh(&["suspend", &g.domain_name]).status.success());
    let virsh_done = t0.elapsed();
    wait_event(&mut ev, Duration::from_secs(1), |n| {
        event_status(n, &id).as_deref() == Some("Paused")
    })
    .await
    .expect("Paused event within 1 s of libvirt's");
    eprintln!(
        "virsh suspend took {virsh_done:?}; event after {:?}",
        t0.elapsed()
    );
    assert!(host.virsh(&["resume", &g.domain_name]).status.success());
    wait_event(&mut ev, Duration::from_secs(1), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up event within 1 s of libvirt's resume");
    c.close().await;

    // SIGKILL the agent: the guest keeps running; after a restart it is adopted Up.
    let qemu_pid_before = host.virsh(&["domid", &g.domain_name]).stdout;
    host.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        domstate(&host, &g.domain_name),
        "running",
        "the VM must survive the agent"
    );
    host.restart().await;
    let c = host.client().await.expect("reconnect");
    let mut ev = c.events();
    assert_eq!(status_of(&c, &id).await, "Up");
    assert_eq!(
        host.virsh(&["domid", &g.domain_name]).stdout,
        qemu_pid_before
    );
    let s = c
        .call_value("VM.getStats", json!({"vmID": id}))
        .await
        .expect("stats after recovery");
    assert!(s[0]["elapsedTime"]
        .as_str()
        .and_then(|e| e.parse::<u64>().ok())
        .is_some());
    assert!(host.log().contains("recovered VM"));

    // Reboot through the guest agent: RebootInProgress, then powering up / up again.
    let r = c
        .call_value(
            "VM.shutdown",
            json!({"vmID": id, "reboot": true, "message": "reboot test"}),
        )
        .await
        .expect("reboot");
    assert_eq!(r, json!(true));
    wait_event(&mut ev, Duration::from_secs(5), |n| {
        event_status(n, &id).as_deref() == Some("RebootInProgress")
    })
    .await
    .expect("RebootInProgress event");
    wait_event(&mut ev, Duration::from_secs(90), |n| {
        event_status(n, &id).as_deref() == Some("Up")
    })
    .await
    .expect("Up after reboot");

    // Graceful shutdown: Powering down, then Down with the admin exit reason.
    c.call_value(
        "VM.shutdown",
        json!({"vmID": id, "delay": "5", "message": "bye"}),
    )
    .await
    .expect("shutdown");
    let down = wait_event(&mut ev, Duration::from_secs(60), |n| {
        event_status(n, &id).as_deref() == Some("Down")
    })
    .await
    .expect("Down event");
    assert_eq!(down.params[&id]["exitReason"], 6);
    assert_eq!(down.params[&id]["exitCode"], 0);
    let s = c
        .call_value("VM.getStats", json!({"vmID": id}))
        .await
        .expect("stats of a down VM");
    assert_eq!(s[0]["status"], "Down");
    // The engine releases a down VM with destroy.
    assert_eq!(
        c.call_value("VM.destroy", json!({"vmID": id}))
            .await
            .expect("destroy"),
        json!(true)
    );
    assert_eq!(status_of(&c, &id).await, "<absent>");

    // A second guest, destroyed while running.
    let g2 = host
        .boot_guest(&c, GuestSpec::new("destroyed").memory(128))
        .await;
    let t0 = Instant::now();
    c.call_value("VM.destroy", json!({"vmID": g2.id}))
        .await
        .expect("destroy running VM");
    eprintln!("VM.destroy took {:?}", t0.elapsed());
    let down = wait_event(&mut ev, Duration::from_secs(10), |n| {
        event_status(n, &g2.id).as_deref() == Some("Down")
    })
    .await
    .expect("Down event after destroy");
    assert_eq!(down.params[&g2.id]["exitReason"], 6);
    assert!(!host
        .virsh(&["list", "--name"])
        .stdout
        .windows(g2.domain_name.len())
        .any(|w| w == g2.domain_name.as_bytes()));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_shutdown_from_inside_is_a_user_shutdown() {
    let host = TestHost::start(opts()).await;
    let c = host.client().await.expect("connect");
    let mut ev = c.events();
    let g = host
        .boot_guest(&c, GuestSpec::new("inside").memory(128))
        .await;
    // Power off from inside the guest through the guest agent's exec (not through
    // VM.shutdown): the agent reports a user shutdown.
    // The ready line can come before qemu-ga has opened its port: retry a little.
    let t0 = std::time::Instant::now();
    loop {
        let out = host.virsh(&[
            "qemu-agent-command",
            &g.domain_name,
            r#"{"execute":"guest-exec","arguments":{"path":"/bin/busybox","arg":["poweroff","-f"]}}"#,
        ]);
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let down = wait_event(&mut ev, Duration::from_secs(30), |n| {
        event_status(n, &g.id).as_deref() == Some("Down")
    })
    .await
    .expect("Down event");
    assert_eq!(down.params[&g.id]["exitReason"], 7, "{down:?}");
    c.call_value("VM.destroy", json!({"vmID": g.id}))
        .await
        .expect("release");
    c.close().await;
}
