//! Guest information through the guest agent (qemu-ga or Halyard's), asked through
//! libvirt (`virDomainQemuAgentCommand`, 1 s timeout per command) on VDSM's schedule:
//! everything every 5 s for the first 2 minutes after a VM started, then users every
//! 10 s, OS, host name, time zone, network and CPUs every 120 s, disks every 300 s.
//! The answers become the VM's stats in VDSM's shapes (guestOsInfo, guestFQDN,
//! guestTimezone, netIfaces, guestIPs, disksUsage, username, guestCPUCount).
//! Everything a guest answers is untrusted: bounded, typed, never a panic.

use serde_json::{json, Map, Value};

/// What is asked, and how often after the first two minutes (seconds).
pub const KINDS: &[(Kind, f64)] = &[
    (Kind::Users, 10.0),
    (Kind::Os, 120.0),
    (Kind::HostName, 120.0),
    (Kind::Timezone, 120.0),
    (Kind::Network, 120.0),
    (Kind::Cpus, 120.0),
    (Kind::Disks, 300.0),
];

/// Seconds after start during which everything is asked every [`EARLY_INTERVAL`].
pub const EARLY_PERIOD: f64 = 120.0;
pub const EARLY_INTERVAL: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Users,
    Os,
    HostName,
    Timezone,
    Network,
    Cpus,
    Disks,
}

impl Kind {
    pub fn command(self) -> &'static str {
        match self {
            Kind::Users => "guest-get-users",
            Kind::Os => "guest-get-osinfo",
            Kind::HostName => "guest-get-host-name",
            Kind::Timezone => "guest-get-timezone",
            Kind::Network => "guest-network-get-interfaces",
            Kind::Cpus => "guest-get-vcpus",
            Kind::Disks => "guest-get-fsinfo",
        }
    }
    fn index(self) -> usize {
        KINDS.iter().position(|(k, _)| *k == self).unwrap_or(0)
    }
}

/// What the guest told, per VM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestData {
    pub os_info: Option<Map<String, Value>>,
    pub fqdn: Option<String>,
    pub timezone: Option<Map<String, Value>>,
    pub net_ifaces: Option<Vec<Map<String, Value>>>,
    pub guest_ips: Option<String>,
    pub disks_usage: Option<Vec<Map<String, Value>>>,
    pub username: Option<String>,
    pub cpu_count: Option<i64>,
    /// The agent answered the last poll (None: not asked yet).
    pub agent_ok: Option<bool>,
    /// Monotonic time each kind was last asked.
    pub asked: [f64; 7],
}

/// Kinds due at `now` for a VM started at `start` (monotonic seconds).
pub fn due(d: &GuestData, start: f64, now: f64) -> Vec<Kind> {
    let early = now - start < EARLY_PERIOD;
    KINDS
        .iter()
        .filter(|(k, every)| {
            let every = if early { EARLY_INTERVAL } else { *every };
            let last = d.asked[k.index()];
            last == 0.0 || now - last >= every
        })
        .map(|(k, _)| *k)
        .collect()
}

const MAX_ITEMS: usize = 256;

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(Value::as_str)
        .map(|x| x.chars().take(512).collect())
}

/// Records that a kind was asked (also when the agent did not answer).
pub fn mark_asked(d: &mut GuestData, kind: Kind, now: f64) {
    d.asked[kind.index()] = now;
}

/// Applies one answer (`"return"` value of the command) to the data.
pub fn apply(d: &mut GuestData, kind: Kind, now: f64, r: &Value) {
    d.asked[kind.index()] = now;
    match kind {
        Kind::Users => {
            let users: Vec<String> = r
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(MAX_ITEMS)
                        .filter_map(|u| s(u, "user"))
                        .collect()
                })
                .unwrap_or_default();
            d.username = Some(if users.is_empty() {
                "None".into()
            } else {
                users.join(", ")
            });
        }
        Kind::Os => {
            let mut o = Map::new();
            o.insert("type".into(), json!("linux"));
            for (from, to) in [
                ("machine", "arch"),
                ("kernel-release", "kernel"),
                ("name", "distribution"),
                ("version-id", "version"),
                ("variant-id", "codename"),
                ("pretty-name", "pretty_name"),
                ("id", "id"),
            ] {
                if let Some(v) = s(r, from) {
                    o.insert(to.into(), json!(v));
                }
            }
            d.os_info = Some(o);
        }
        Kind::HostName => d.fqdn = s(r, "host-name"),
        Kind::Timezone => {
            let mut o = Map::new();
            o.insert("zone".into(), json!(s(r, "zone").unwrap_or_default()));
            // VDSM reports minutes.
            let off = r.get("offset").and_then(Value::as_i64).unwrap_or(0);
            o.insert("offset".into(), json!(off.clamp(-86_400, 86_400) / 60));
            d.timezone = Some(o);
        }
        Kind::Network => {
            let mut ifs = Vec::new();
            let mut ips = Vec::new();
            for i in r.as_array().into_iter().flatten().take(MAX_ITEMS) {
                let Some(name) = s(i, "name") else { continue };
                let mut v4 = Vec::new();
                let mut v6 = Vec::new();
                for a in i
                    .get("ip-addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .take(MAX_ITEMS)
                {
                    let Some(ip) = s(a, "ip-address") else {
                        continue;
                    };
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        continue;
                    }
                    if s(a, "ip-address-type").as_deref() == Some("ipv6") {
                        v6.push(ip);
                    } else {
                        v4.push(ip);
                    }
                }
                if name != "lo" {
                    ips.extend(v4.iter().cloned());
                    ips.extend(v6.iter().cloned());
                }
                let mut m = Map::new();
                m.insert("name".into(), json!(name));
                m.insert(
                    "hw".into(),
                    json!(s(i, "hardware-address").unwrap_or_default()),
                );
                m.insert("inet".into(), json!(v4));
                m.insert("inet6".into(), json!(v6));
                ifs.push(m);
            }
            d.guest_ips = Some(ips.join(" "));
            d.net_ifaces = Some(ifs);
        }
        Kind::Cpus => {
            let n = r
                .as_array()
                .map(|a| a.iter().filter(|c| c["online"] != false).count() as i64)
                .unwrap_or(-1);
            d.cpu_count = Some(n);
        }
        Kind::Disks => {
            let mut out = Vec::new();
            for f in r.as_array().into_iter().flatten().take(MAX_ITEMS) {
                let mut m = Map::new();
                m.insert("path".into(), json!(s(f, "mountpoint").unwrap_or_default()));
                m.insert("fs".into(), json!(s(f, "type").unwrap_or_default()));
                let n = |k: &str| f.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
                m.insert("total".into(), json!(n("total-bytes")));
                m.insert("used".into(), json!(n("used-bytes")));
                out.push(m);
            }
            d.disks_usage = Some(out);
        }
    }
}

/// The `"return"` of an agent answer, or why there is none.
pub fn result_of(answer: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(answer).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("return") {
        Some(r) => Ok(r.clone()),
        None => Err(v
            .get("error")
            .and_then(|e| e.get("desc"))
            .and_then(Value::as_str)
            .unwrap_or("no return")
            .to_string()),
    }
}

/// Fills the stats of a VM from what its guest told.
pub fn fill(d: &GuestData, s: &mut halyard_proto::vdsm::VmStats) {
    if let Some(x) = &d.fqdn {
        s.guest_fqdn = Some(x.clone());
    }
    if let Some(x) = &d.guest_ips {
        s.guest_ips = Some(x.clone());
    }
    if let Some(x) = &d.username {
        s.username = Some(x.clone());
    }
    if let Some(x) = d.cpu_count {
        s.guest_cpu_count = Some(x);
    }
    s.net_ifaces = d.net_ifaces.clone();
    s.disks_usage = d.disks_usage.clone();
    s.guest_os_info = d.os_info.clone();
    s.guest_timezone = d.timezone.clone();
    if let Some(ok) = d.agent_ok {
        s.extra.insert(
            "guestAgentStatus".into(),
            json!(if ok { "available" } else { "unavailable" }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_vdsm() {
        let mut d = GuestData::default();
        assert_eq!(due(&d, 0.0, 1.0).len(), 7, "everything at first");
        for (k, _) in KINDS {
            d.asked[k.index()] = 1.0;
        }
        assert!(due(&d, 0.0, 5.0).is_empty());
        assert_eq!(due(&d, 0.0, 6.0).len(), 7, "every 5 s early");
        for (k, _) in KINDS {
            d.asked[k.index()] = 200.0;
        }
        assert_eq!(due(&d, 0.0, 210.0), vec![Kind::Users]);
        assert_eq!(due(&d, 0.0, 320.0).len(), 6);
        assert_eq!(due(&d, 0.0, 500.0).len(), 7);
    }

    #[test]
    fn answers_become_vdsm_stats() {
        let mut d = GuestData::default();
        apply(
            &mut d,
            Kind::Network,
            1.0,
            &json!([
            {"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "56:6f:00:00:00:01", "ip-addresses": [
                {"ip-address-type": "ipv4", "ip-address": "10.0.0.5", "prefix": 24},
                {"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64},
                {"ip-address-type": "ipv4", "ip-address": "not an ip", "prefix": 1}]}]),
        );
        assert_eq!(d.guest_ips.as_deref(), Some("10.0.0.5 fe80::1"));
        let ifs = d.net_ifaces.as_ref().expect("ifs");
        assert_eq!(ifs[1]["inet"], json!(["10.0.0.5"]));
        apply(
            &mut d,
            Kind::Timezone,
            1.0,
            &json!({"zone": "CET", "offset": 3600}),
        );
        assert_eq!(d.timezone.as_ref().expect("tz")["offset"], 60);
        apply(
            &mut d,
            Kind::Os,
            1.0,
            &json!({"kernel-release": "6.1", "machine": "x86_64"}),
        );
        assert_eq!(d.os_info.as_ref().expect("os")["kernel"], "6.1");
        apply(
            &mut d,
            Kind::Users,
            1.0,
            &json!([{"user": "root", "login-time": 1.0}]),
        );
        assert_eq!(d.username.as_deref(), Some("root"));
        apply(
            &mut d,
            Kind::Cpus,
            1.0,
            &json!([{"logical-id": 0, "online": true}, {"logical-id": 1, "online": false}]),
        );
        assert_eq!(d.cpu_count, Some(1));
        // Garbage from a guest: typed defaults, no panic.
        for k in KINDS.iter().map(|(k, _)| *k) {
            apply(&mut d, k, 2.0, &json!("garbage"));
            apply(&mut d, k, 2.0, &json!([1, {"name": 5}, null]));
        }
        assert_eq!(result_of(r#"{"return": {}}"#), Ok(json!({})));
        assert!(result_of(r#"{"error": {"class": "GenericError", "desc": "x"}}"#).is_err());
        assert!(result_of("nope").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_is_safe(v in proptest::arbitrary::any::<String>()) {
            let mut d = GuestData::default();
            if let Ok(r) = result_of(&v) {
                for k in KINDS.iter().map(|(k, _)| *k) {
                    apply(&mut d, k, 1.0, &r);
                }
            }
        }
    }
}
