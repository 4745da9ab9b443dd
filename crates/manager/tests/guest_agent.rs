//! Guest details up to the Manager: one guest runs Halyard's guest agent, one runs
//! Debian's qemu-guest-agent; the same fields reach the API for both, and libvirt's
//! own agent commands (`virsh qemu-agent-command`, `virsh domifaddr --source agent`)
//! answer the same for both.

mod common;

use common::guests::{virsh, Pair};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_agents_report_the_same_to_the_manager() {
    let p = Pair::start("").await;
    let mut views = Vec::new();
    for i in 0..2 {
        let (view, t) = p.wait_view(i).await;
        eprintln!(
            "{}: guest details in the API {t:.1?} after the start request: {view:?}",
            p.guests[i].agent
        );
        views.push(view);
    }
    assert_eq!(
        views[0].0, views[1].0,
        "the API shows the same guest fields for both agents"
    );
    for (i, g) in p.guests.iter().enumerate() {
        assert!(
            views[i].1.contains(&format!("eth0 {}", g.ip)),
            "{:?}",
            views[i].1
        );
    }
    // libvirt's own view through each agent.
    let mut answers = Vec::new();
    for g in &p.guests {
        let ping = virsh(&[
            "qemu-agent-command",
            &g.domain,
            r#"{"execute":"guest-ping"}"#,
        ]);
        let hn = virsh(&[
            "qemu-agent-command",
            &g.domain,
            r#"{"execute":"guest-get-host-name"}"#,
        ]);
        // eth0's IPv6 link-local address appears once duplicate address detection is
        // over (a second or two after the link is up): wait for it in each guest, so
        // that both are compared in the same state.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let addr = loop {
            let a = virsh(&["domifaddr", &g.domain, "--source", "agent"]);
            let eth0_v6 = a
                .lines()
                .skip_while(|l| !l.trim_start().starts_with("eth0"))
                .any(|l| l.contains("fe80:"));
            if eth0_v6 || std::time::Instant::now() > deadline {
                eprintln!(
                    "{}: eth0 link-local {} after {:?} more",
                    g.domain,
                    if eth0_v6 { "seen" } else { "not seen" },
                    std::time::Duration::from_secs(30).saturating_sub(
                        deadline.saturating_duration_since(std::time::Instant::now())
                    )
                );
                break a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        // MACs and link-local addresses differ by design; the guest's own address too.
        let normalised: String = addr
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .filter(|t| !(t.len() == 17 && t.matches(':').count() == 5))
                    .map(|t| {
                        if t.starts_with("fe80:") {
                            "LINK-LOCAL".to_string()
                        } else {
                            t.replace(g.ip, "GUEST-IP")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        answers.push((ping.trim().to_string(), hn.trim().to_string(), normalised));
    }
    eprintln!("virsh answers: {answers:#?}");
    assert_eq!(answers[0].0, r#"{"return":{}}"#);
    assert_eq!(
        answers[0], answers[1],
        "virsh sees the same through both agents"
    );
    let (_, ev) = p.m.api(&p.token, "GET", "/events?max=50", "").await;
    assert!(ev.contains("guest agent of VM"), "{ev}");
    // Graceful shutdown goes through the agent first (ACPI only if it fails).
    let g = &p.guests[0];
    let (code, b) =
        p.m.api(
            &p.token,
            "POST",
            &format!("/vms/{}/shutdown", g.id),
            "<action/>",
        )
        .await;
    assert_eq!(code, 200, "{b}");
    let t0 = std::time::Instant::now();
    loop {
        let (_, v) =
            p.m.api(&p.token, "GET", &format!("/vms/{}", g.id), "")
                .await;
        if common::guests::text(&common::guests::parse(&v), &["status"]) == "down" {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "not down: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "Halyard-agent guest shut down through its agent in {:?}",
        t0.elapsed()
    );
    assert!(
        !p.host.log().contains("retry through ACPI"),
        "the agent's guest-shutdown was enough"
    );
    p.stop_all().await;
}
