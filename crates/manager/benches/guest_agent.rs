//! Guest agent benchmark: Halyard's guest agent next to Debian's qemu-guest-agent.
//! Prints the executable's size (qemu-ga with the shared libraries it loads), the
//! agent's RSS inside the running guest (read by the agent itself through guest-exec),
//! and the time from the start request, and from the guest's ready line, to the
//! guest's details in the Manager's API.
//!
//! `cargo bench -p halyard-manager --bench guest_agent` (as root).

#[path = "../tests/common/guests.rs"]
mod guests;

use std::time::Duration;

use guests::{virsh, Pair};
use serde_json::Value;

fn file_size(p: &str) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// qemu-ga and every shared library `ldd` lists for it.
fn qemu_ga_size() -> (u64, u64) {
    let bin = file_size("/usr/sbin/qemu-ga");
    let out = std::process::Command::new("ldd")
        .arg("/usr/sbin/qemu-ga")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let libs: u64 = out
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find(|t| t.starts_with('/')).map(|p| {
                std::fs::canonicalize(p)
                    .map(|c| file_size(&c.to_string_lossy()))
                    .unwrap_or(0)
            })
        })
        .sum();
    (bin, libs)
}

/// (VmRSS, VmHWM) in KiB of the agent inside the guest, through guest-exec.
fn rss_in_guest(domain: &str, process: &str) -> Option<(u64, u64)> {
    let cmd = format!(
        r#"{{"execute":"guest-exec","arguments":{{"path":"/bin/sh","arg":["-c","cat /proc/$(pidof {process})/status"],"capture-output":true}}}}"#
    );
    let r: Value = serde_json::from_str(&virsh(&["qemu-agent-command", domain, &cmd])).ok()?;
    let pid = r["return"]["pid"].as_i64()?;
    for _ in 0..50 {
        let st: Value = serde_json::from_str(&virsh(&[
            "qemu-agent-command",
            domain,
            &format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#),
        ]))
        .ok()?;
        if st["return"]["exited"] == true {
            let out = st["return"]["out-data"].as_str()?;
            let text = String::from_utf8(b64(out)?).ok()?;
            let kib = |k: &str| {
                text.lines()
                    .find(|l| l.starts_with(k))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            };
            return Some((kib("VmRSS:")?, kib("VmHWM:")?));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn b64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        acc = (acc << 6) | u32::from(val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let agent = halyard_testinfra::manager::static_guest_agent();
    let ours = file_size(&agent.to_string_lossy());
    let (ga, ga_libs) = qemu_ga_size();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = Pair::start("halyard.agent_exec=1").await;
        let mut rows = Vec::new();
        for i in 0..2 {
            let (_, t) = p.wait_view(i).await;
            let boot = p.boot_time(i);
            let g = &p.guests[i];
            let process = if g.agent == "halyard" {
                "halyard-guest-agent"
            } else {
                "qemu-ga"
            };
            let rss = rss_in_guest(&g.domain, process);
            rows.push((g.agent, t, boot, rss));
        }
        println!("guest agent                      halyard-guest-agent      qemu-ga (Debian)");
        println!(
            "executable (static / +libs)      {:>10.2} MiB          {:.2} MiB + {:.2} MiB libs",
            ours as f64 / 1048576.0,
            ga as f64 / 1048576.0,
            ga_libs as f64 / 1048576.0
        );
        let rss = |r: &Option<(u64, u64)>| {
            r.map(|(a, b)| format!("{:.2} MiB (peak {:.2})", a as f64 / 1024.0, b as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into())
        };
        println!(
            "RSS in the guest                 {:>22}  {}",
            rss(&rows[0].3),
            rss(&rows[1].3)
        );
        println!(
            "start request -> details in API  {:>18.2} s      {:.2} s",
            rows[0].1.as_secs_f64(),
            rows[1].1.as_secs_f64()
        );
        let since_boot = |r: &(&str, Duration, Option<Duration>, Option<(u64, u64)>)| {
            r.2.map(|b| format!("{:.2} s", r.1.saturating_sub(b).as_secs_f64()))
                .unwrap_or_else(|| "n/a".into())
        };
        println!(
            "guest ready line -> details      {:>20}      {}",
            since_boot(&rows[0]),
            since_boot(&rows[1])
        );
        println!("targets: static executable < 3 MiB, RSS < 4 MiB. The host agent asks every 5 s during the first 2 minutes (VDSM's schedule), so details arrive within one poll after the agent starts.");
        p.stop_all().await;
    });
}
