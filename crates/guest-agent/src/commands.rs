//! The commands: what the guest tells the host. Everything is read from /proc, /sys,
//! /etc and libc; nothing needs a shell.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::protocol::{b64_decode, b64_encode, Args, QgaError, Request};

pub const VERSION: &str = concat!("halyard-", env!("CARGO_PKG_VERSION"));

/// Every command the agent knows, and whether it answers (guest-shutdown does not,
/// as with qemu-ga).
pub const COMMANDS: &[(&str, bool)] = &[
    ("guest-sync-delimited", true),
    ("guest-sync", true),
    ("guest-ping", true),
    ("guest-info", true),
    ("guest-get-osinfo", true),
    ("guest-get-host-name", true),
    ("guest-get-timezone", true),
    ("guest-get-users", true),
    ("guest-network-get-interfaces", true),
    ("guest-get-fsinfo", true),
    ("guest-get-disks", true),
    ("guest-get-vcpus", true),
    ("guest-get-time", true),
    ("guest-shutdown", false),
    ("guest-fsfreeze-status", true),
    ("guest-fsfreeze-freeze", true),
    ("guest-fsfreeze-thaw", true),
    ("guest-exec", true),
    ("guest-exec-status", true),
];

/// Settings of the agent.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// guest-exec and guest-exec-status (off by default).
    pub exec_enabled: bool,
    /// Root of the file system the agent reads (tests point it elsewhere).
    pub root: String,
}

/// State kept between commands.
#[derive(Default)]
pub struct Agent {
    pub cfg: Config,
    frozen: Vec<String>,
    execs: BTreeMap<u32, Child>,
    /// A shutdown was asked for: (mode).
    pub shutdown: Option<String>,
}

fn read(root: &str, p: &str) -> Option<String> {
    fs::read_to_string(format!("{root}{p}")).ok()
}

impl Agent {
    pub fn new(cfg: Config) -> Agent {
        Agent {
            cfg,
            ..Agent::default()
        }
    }

    fn enabled(&self, cmd: &str) -> bool {
        !matches!(cmd, "guest-exec" | "guest-exec-status") || self.cfg.exec_enabled
    }

    /// Runs one request. `Ok(None)`: no answer (guest-shutdown).
    pub fn run(&mut self, r: &Request) -> Result<Option<Value>, QgaError> {
        let a = Args(&r.arguments);
        let cmd = r.execute.as_str();
        if !COMMANDS.iter().any(|(c, _)| *c == cmd) {
            return Err(QgaError::not_found(cmd));
        }
        if !self.enabled(cmd) {
            return Err(QgaError::disabled(cmd));
        }
        let v = match cmd {
            "guest-sync" | "guest-sync-delimited" => {
                json!(a.int("id")?.ok_or_else(|| QgaError::missing("id"))?)
            }
            "guest-ping" => json!({}),
            "guest-info" => self.info(),
            "guest-get-osinfo" => self.osinfo(),
            "guest-get-host-name" => json!({ "host-name": hostname() }),
            "guest-get-timezone" => timezone(),
            "guest-get-users" => self.users(),
            "guest-network-get-interfaces" => self.interfaces(),
            "guest-get-fsinfo" => json!(self.fsinfo()),
            "guest-get-disks" => self.disks(),
            "guest-get-vcpus" => self.vcpus(),
            "guest-get-time" => json!(now_ns()),
            "guest-shutdown" => {
                let mode = a.str("mode")?.unwrap_or("powerdown").to_string();
                if !matches!(mode.as_str(), "powerdown" | "halt" | "reboot") {
                    return Err(QgaError::generic(format!(
                        "Parameter 'mode' does not accept value '{mode}'"
                    )));
                }
                self.shutdown = Some(mode);
                return Ok(None);
            }
            "guest-fsfreeze-status" => json!(if self.frozen.is_empty() {
                "thawed"
            } else {
                "frozen"
            }),
            "guest-fsfreeze-freeze" => json!(self.freeze()?),
            "guest-fsfreeze-thaw" => json!(self.thaw()),
            "guest-exec" => self.exec(&a)?,
            "guest-exec-status" => {
                let pid = a.int("pid")?.ok_or_else(|| QgaError::missing("pid"))?;
                self.exec_status(pid)?
            }
            _ => return Err(QgaError::not_found(cmd)),
        };
        Ok(Some(v))
    }

    fn info(&self) -> Value {
        let cmds: Vec<Value> = COMMANDS
            .iter()
            .map(|(c, resp)| json!({"name": c, "enabled": self.enabled(c), "success-response": resp}))
            .collect();
        json!({"version": VERSION, "supported_command": cmds})
    }

    fn osinfo(&self) -> Value {
        let mut o = serde_json::Map::new();
        // SAFETY: uname fills the zeroed struct we own.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid utsname.
        if unsafe { libc::uname(&mut u) } == 0 {
            let f = |b: &[libc::c_char]| {
                // SAFETY: uname NUL-terminates its fields.
                unsafe { CStr::from_ptr(b.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            };
            o.insert("kernel-release".into(), json!(f(&u.release)));
            o.insert("kernel-version".into(), json!(f(&u.version)));
            o.insert("machine".into(), json!(f(&u.machine)));
        }
        let rel = read(&self.cfg.root, "/etc/os-release")
            .or_else(|| read(&self.cfg.root, "/usr/lib/os-release"))
            .unwrap_or_default();
        for (key, name) in [
            ("ID", "id"),
            ("NAME", "name"),
            ("PRETTY_NAME", "pretty-name"),
            ("VERSION", "version"),
            ("VERSION_ID", "version-id"),
            ("VARIANT", "variant"),
            ("VARIANT_ID", "variant-id"),
        ] {
            if let Some(v) = os_release_value(&rel, key) {
                o.insert(name.into(), json!(v));
            }
        }
        Value::Object(o)
    }

    fn users(&self) -> Value {
        let data = fs::read(format!("{}/var/run/utmp", self.cfg.root)).unwrap_or_default();
        json!(parse_utmp(&data)
            .into_iter()
            .map(|(u, t)| json!({"user": u, "login-time": t}))
            .collect::<Vec<_>>())
    }

    fn interfaces(&self) -> Value {
        let mut ifs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (name, family, addr, prefix) in ifaddrs() {
            ifs.entry(name).or_default().push(json!({
                "ip-address-type": family, "ip-address": addr, "prefix": prefix
            }));
        }
        let mut names: Vec<String> = fs::read_dir(format!("{}/sys/class/net", self.cfg.root))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for n in ifs.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        // In interface index order, as getifaddrs (and qemu-ga) give them.
        let index = |n: &str| -> u64 {
            read(&self.cfg.root, &format!("/sys/class/net/{n}/ifindex"))
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX)
        };
        names.sort_by(|a, b| index(a).cmp(&index(b)).then(a.cmp(b)));
        let stat = |n: &str, k: &str| -> u64 {
            read(
                &self.cfg.root,
                &format!("/sys/class/net/{n}/statistics/{k}"),
            )
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
        };
        let out: Vec<Value> = names
            .iter()
            .map(|n| {
                let mut v = json!({
                    "name": n,
                    "ip-addresses": ifs.get(n).cloned().unwrap_or_default(),
                    "statistics": {
                        "rx-bytes": stat(n, "rx_bytes"), "rx-packets": stat(n, "rx_packets"),
                        "rx-errs": stat(n, "rx_errors"), "rx-dropped": stat(n, "rx_dropped"),
                        "tx-bytes": stat(n, "tx_bytes"), "tx-packets": stat(n, "tx_packets"),
                        "tx-errs": stat(n, "tx_errors"), "tx-dropped": stat(n, "tx_dropped"),
                    }
                });
                if let Some(mac) = read(&self.cfg.root, &format!("/sys/class/net/{n}/address")) {
                    v["hardware-address"] = json!(mac.trim());
                }
                v
            })
            .collect();
        json!(out)
    }

    /// Mounted block-device file systems (as qemu-ga: virtual ones are left out).
    fn fsinfo(&self) -> Vec<Value> {
        let info = read(&self.cfg.root, "/proc/self/mountinfo").unwrap_or_default();
        let mut out = Vec::new();
        for m in parse_mountinfo(&info) {
            let mut v = json!({
                "name": m.device.trim_start_matches("/dev/"),
                "mountpoint": m.mountpoint,
                "type": m.fstype,
                "disk": [],
            });
            if let Some((total, used)) = statvfs(&m.mountpoint) {
                v["total-bytes"] = json!(total);
                v["used-bytes"] = json!(used);
            }
            out.push(v);
        }
        out
    }

    fn disks(&self) -> Value {
        let mut out = Vec::new();
        let base = format!("{}/sys/block", self.cfg.root);
        let mut names: Vec<String> = fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for n in names {
            if n.starts_with("loop") || n.starts_with("ram") || n.starts_with("zram") {
                continue;
            }
            let mut parts = Vec::new();
            if let Ok(d) = fs::read_dir(format!("{base}/{n}")) {
                for e in d.flatten() {
                    let p = e.file_name().to_string_lossy().into_owned();
                    if p.starts_with(&n) && e.path().join("partition").exists() {
                        parts.push(p);
                    }
                }
            }
            parts.sort();
            let serial = read(&self.cfg.root, &format!("/sys/block/{n}/serial"))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let mut d =
                json!({"name": format!("/dev/{n}"), "partition": false, "dependencies": []});
            if let Some(s) = serial {
                d["serial"] = json!(s);
            }
            out.push(d);
            for p in parts {
                out.push(json!({"name": format!("/dev/{p}"), "partition": true,
                                "dependencies": [format!("/dev/{n}")]}));
            }
        }
        json!(out)
    }

    fn vcpus(&self) -> Value {
        let base = format!("{}/sys/devices/system/cpu", self.cfg.root);
        let mut ids: Vec<u32> = fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("cpu")
                            .and_then(|n| n.parse().ok())
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        json!(ids
            .iter()
            .map(|i| {
                let online_file = format!("{base}/cpu{i}/online");
                let can_offline = Path::new(&online_file).exists();
                let online = fs::read_to_string(&online_file)
                    .map(|s| s.trim() == "1")
                    .unwrap_or(true);
                json!({"logical-id": i, "online": online, "can-offline": can_offline})
            })
            .collect::<Vec<_>>())
    }

    fn freeze(&mut self) -> Result<usize, QgaError> {
        if !self.frozen.is_empty() {
            return Err(QgaError::generic("The file systems are already frozen"));
        }
        let mut done = Vec::new();
        for fs in self.fsinfo() {
            let Some(mp) = fs["mountpoint"].as_str() else {
                continue;
            };
            match fifreeze(mp, true) {
                Ok(()) => done.push(mp.to_string()),
                Err(e) => {
                    for m in done.iter().rev() {
                        let _ = fifreeze(m, false);
                    }
                    return Err(QgaError::generic(format!("failed to freeze {mp}: {e}")));
                }
            }
        }
        let n = done.len();
        // Nothing to freeze is still a frozen state (qemu-ga returns 0 too).
        self.frozen = if done.is_empty() {
            vec![String::new()]
        } else {
            done
        };
        Ok(n)
    }

    fn thaw(&mut self) -> usize {
        let mut n = 0;
        for m in std::mem::take(&mut self.frozen).iter().rev() {
            if !m.is_empty() && fifreeze(m, false).is_ok() {
                n += 1;
            }
        }
        n
    }

    fn exec(&mut self, a: &Args<'_>) -> Result<Value, QgaError> {
        let path = a.str("path")?.ok_or_else(|| QgaError::missing("path"))?;
        let args = a.strings("arg")?;
        let env = a.strings("env")?;
        let input = match a.str("input-data")? {
            Some(s) => Some(b64_decode(s)?),
            None => None,
        };
        let capture = a.bool("capture-output")?.unwrap_or(false);
        let mut c = Command::new(path);
        c.args(&args);
        for e in &env {
            if let Some((k, v)) = e.split_once('=') {
                c.env(k, v);
            }
        }
        c.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let out = || {
            if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        c.stdout(out()).stderr(out());
        let mut child = c
            .spawn()
            .map_err(|e| QgaError::generic(format!("Failed to execute child process: {e}")))?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&data);
            });
        }
        let pid = child.id();
        self.execs.insert(pid, child);
        Ok(json!({ "pid": pid }))
    }

    fn exec_status(&mut self, pid: i64) -> Result<Value, QgaError> {
        let pid = u32::try_from(pid).map_err(|_| QgaError::generic("Invalid parameter 'pid'"))?;
        let child = self
            .execs
            .get_mut(&pid)
            .ok_or_else(|| QgaError::generic("Invalid parameter 'pid'"))?;
        match child.try_wait() {
            Ok(None) => Ok(json!({"exited": false})),
            Ok(Some(st)) => {
                let mut child = self
                    .execs
                    .remove(&pid)
                    .ok_or_else(|| QgaError::generic("Invalid parameter 'pid'"))?;
                let mut v = json!({"exited": true});
                match st.code() {
                    Some(c) => v["exitcode"] = json!(c),
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        v["signal"] = json!(st.signal().unwrap_or(0));
                    }
                }
                use std::io::Read;
                let mut buf = Vec::new();
                if let Some(mut o) = child.stdout.take() {
                    let _ = o.read_to_end(&mut buf);
                    v["out-data"] = json!(b64_encode(&buf));
                }
                buf.clear();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_end(&mut buf);
                    v["err-data"] = json!(b64_encode(&buf));
                }
                Ok(v)
            }
            Err(e) => Err(QgaError::generic(e.to_string())),
        }
    }
}

pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn timezone() -> Value {
    // SAFETY: time(NULL) has no preconditions.
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: zeroed tm we own; tzset/localtime_r fill it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    extern "C" {
        fn tzset();
    }
    // SAFETY: tzset (libc) reads TZ / /etc/localtime; localtime_r writes into `tm`.
    let ok = unsafe {
        tzset();
        !libc::localtime_r(&t, &mut tm).is_null()
    };
    if !ok {
        return json!({"offset": 0});
    }
    let mut v = json!({ "offset": tm.tm_gmtoff });
    if !tm.tm_zone.is_null() {
        // SAFETY: tm_zone points to a NUL-terminated static string of libc.
        let z = unsafe { CStr::from_ptr(tm.tm_zone) }
            .to_string_lossy()
            .into_owned();
        v["zone"] = json!(z);
    }
    v
}

/// USER_PROCESS records of utmp: (user, earliest login time in seconds).
pub fn parse_utmp(data: &[u8]) -> Vec<(String, f64)> {
    const REC: usize = 384;
    let mut users: BTreeMap<String, f64> = BTreeMap::new();
    for r in data.chunks_exact(REC) {
        let ut_type = i16::from_ne_bytes([r[0], r[1]]);
        if ut_type != 7 {
            continue;
        }
        let name = &r[44..76];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let user = String::from_utf8_lossy(&name[..end]).into_owned();
        if user.is_empty() {
            continue;
        }
        let sec = i32::from_ne_bytes([r[340], r[341], r[342], r[343]]);
        let usec = i32::from_ne_bytes([r[344], r[345], r[346], r[347]]);
        let t = f64::from(sec) + f64::from(usec) / 1e6;
        let e = users.entry(user).or_insert(t);
        if t < *e {
            *e = t;
        }
    }
    users.into_iter().collect()
}

/// A mount of /proc/self/mountinfo that is a real file system.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub mountpoint: String,
    pub fstype: String,
    pub device: String,
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for l in text.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        let lf: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        if lf.len() < 5 || rf.len() < 2 {
            continue;
        }
        let device = unescape_mount(rf[1]);
        let fstype = rf[0].to_string();
        if !device.starts_with("/dev/")
            || matches!(fstype.as_str(), "rootfs" | "autofs" | "tmpfs" | "devtmpfs")
        {
            continue;
        }
        out.push(Mount {
            mountpoint: unescape_mount(lf[4]),
            fstype,
            device,
        });
    }
    out
}

fn statvfs(path: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: zeroed struct we own, filled by statvfs.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string, `s` a valid statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let total = s.f_blocks * s.f_frsize;
    let used = (s.f_blocks - s.f_bfree) * s.f_frsize;
    Some((total, used))
}

fn fifreeze(mountpoint: &str, freeze: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const FIFREEZE: libc::c_ulong = 0xC004_5877;
    const FITHAW: libc::c_ulong = 0xC004_5878;
    let f = fs::File::open(mountpoint)?;
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW on an open directory fd; the int argument is ignored.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            if freeze { FIFREEZE } else { FITHAW },
            &mut arg,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (interface, "ipv4"/"ipv6", address, prefix) from getifaddrs.
fn ifaddrs() -> Vec<(String, &'static str, String, u32)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr points to a sockaddr of the family it states.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_INET => {
                // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    // SAFETY: the netmask has the address's family.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    u32::from_be(m.sin_addr.s_addr).count_ones()
                };
                out.push((name, "ipv4", ip.to_string(), prefix));
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6: the sockaddr is a sockaddr_in6.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                let prefix = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: the netmask has the address's family.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                };
                out.push((name, "ipv6", ip.to_string(), prefix));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse;

    fn run(a: &mut Agent, s: &str) -> Result<Option<Value>, QgaError> {
        a.run(&parse(s.as_bytes()).expect("request"))
    }

    #[test]
    fn commands_answer_and_errors_are_typed() {
        let mut a = Agent::new(Config::default());
        assert_eq!(
            run(&mut a, r#"{"execute":"guest-sync","arguments":{"id":42}}"#).expect("ok"),
            Some(json!(42))
        );
        assert_eq!(
            run(&mut a, r#"{"execute":"guest-ping"}"#).expect("ok"),
            Some(json!({}))
        );
        let e = run(&mut a, r#"{"execute":"guest-file-open"}"#).expect_err("unknown");
        assert_eq!(e.class, "CommandNotFound");
        let e = run(
            &mut a,
            r#"{"execute":"guest-exec","arguments":{"path":"/bin/true"}}"#,
        )
        .expect_err("disabled");
        assert_eq!(e.class, "CommandNotFound");
        let e =
            run(&mut a, r#"{"execute":"guest-sync","arguments":{"id":"x"}}"#).expect_err("type");
        assert_eq!(e.class, "GenericError");
        let info = run(&mut a, r#"{"execute":"guest-info"}"#)
            .expect("ok")
            .expect("v");
        let cmds = info["supported_command"].as_array().expect("list");
        assert_eq!(cmds.len(), COMMANDS.len());
        let exec = cmds
            .iter()
            .find(|c| c["name"] == "guest-exec")
            .expect("exec");
        assert_eq!(exec["enabled"], false, "guest-info tells the truth");
        let os = run(&mut a, r#"{"execute":"guest-get-osinfo"}"#)
            .expect("ok")
            .expect("v");
        assert!(os["kernel-release"].as_str().is_some_and(|s| !s.is_empty()));
        let ifs = run(&mut a, r#"{"execute":"guest-network-get-interfaces"}"#)
            .expect("ok")
            .expect("v");
        assert!(ifs
            .as_array()
            .expect("list")
            .iter()
            .any(|i| i["name"] == "lo"));
        let v = run(&mut a, r#"{"execute":"guest-get-vcpus"}"#)
            .expect("ok")
            .expect("v");
        assert!(!v.as_array().expect("list").is_empty());
        assert_eq!(
            run(&mut a, r#"{"execute":"guest-fsfreeze-status"}"#).expect("ok"),
            Some(json!("thawed"))
        );
        assert_eq!(
            run(
                &mut a,
                r#"{"execute":"guest-shutdown","arguments":{"mode":"now"}}"#
            )
            .expect_err("mode")
            .class,
            "GenericError"
        );
    }

    #[test]
    fn exec_when_enabled() {
        let mut a = Agent::new(Config {
            exec_enabled: true,
            ..Config::default()
        });
        let r = run(&mut a, r#"{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","cat; echo err >&2; exit 3"],"input-data":"aGVsbG8=","capture-output":true}}"#)
            .expect("ok").expect("v");
        let pid = r["pid"].as_i64().expect("pid");
        let st = loop {
            let st = run(
                &mut a,
                &format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#),
            )
            .expect("ok")
            .expect("v");
            if st["exited"] == true {
                break st;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(st["exitcode"], 3);
        assert_eq!(
            b64_decode(st["out-data"].as_str().expect("out")).expect("b64"),
            b"hello"
        );
        assert_eq!(
            b64_decode(st["err-data"].as_str().expect("err")).expect("b64"),
            b"err\n"
        );
        assert!(run(
            &mut a,
            &format!(r#"{{"execute":"guest-exec-status","arguments":{{"pid":{pid}}}}}"#)
        )
        .is_err());
    }

    #[test]
    fn parsers_of_system_files() {
        let mi = "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n23 22 0:5 / /dev rw - devtmpfs udev rw\n24 22 253:2 / /mnt/a\\040b rw - xfs /dev/vdb rw\nbad line\n";
        let m = parse_mountinfo(mi);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, "/mnt/a b");
        assert_eq!(
            os_release_value("NAME=\"Debian GNU/Linux\"\nID=debian\n", "NAME").as_deref(),
            Some("Debian GNU/Linux")
        );
        let mut rec = vec![0u8; 384];
        rec[0] = 7;
        rec[44..48].copy_from_slice(b"root");
        rec[340..344].copy_from_slice(&100i32.to_ne_bytes());
        let mut data = rec.clone();
        data.extend(vec![0u8; 384]);
        data.extend([1u8, 2, 3]);
        assert_eq!(parse_utmp(&data), vec![("root".to_string(), 100.0)]);
    }

    proptest::proptest! {
        #[test]
        fn system_file_parsers_never_panic(s in ".{0,400}", b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let _ = parse_mountinfo(&s);
            let _ = os_release_value(&s, "ID");
            let _ = parse_utmp(&b);
        }
    }
}
