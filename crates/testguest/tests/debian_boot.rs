//! Boots the Debian test image under plain QEMU (TCG, q35, OVMF) with an OpenStack
//! config drive and checks what cloud-init, qemu-guest-agent and sshd do with it.
//!
//! Ignored by default: it needs root, builds the image when the cache has none (several
//! minutes) and boots a full distribution under TCG. Run it with
//!
//! ```sh
//! cargo test -p halyard-testguest --test debian_boot -- --ignored --nocapture
//! ```
//!
//! It prints how long the guest took to answer its agent, to show a login prompt on
//! the serial console, to finish cloud-init and to accept an SSH key.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const HOSTNAME: &str = "halyard-test";
const HELLO: &str = "hello from the config drive\n";

/// Kills QEMU when the test ends, however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn timeout() -> Duration {
    let secs = std::env::var("HALYARD_DEBIAN_BOOT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    Duration::from_secs(secs)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OVMF's code and variable store templates, 4 MiB flavour first.
fn ovmf() -> (PathBuf, PathBuf) {
    for (code, vars) in [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ] {
        let dir = Path::new("/usr/share/OVMF");
        if dir.join(code).is_file() && dir.join(vars).is_file() {
            return (dir.join(code), dir.join(vars));
        }
    }
    panic!("no OVMF firmware under /usr/share/OVMF (apt-get install ovmf)");
}

/// An OpenStack config drive (ISO 9660 labelled `config-2`) with the host name, an SSH
/// key and user data that writes /root/hello.txt.
fn config_drive(work: &Path, pubkey: &str) -> PathBuf {
    let tree = work.join("config-drive");
    let latest = tree.join("openstack/latest");
    std::fs::create_dir_all(&latest).expect("mkdir");
    let meta = json!({
        "uuid": "5d3f3a8e-4f7b-4a52-9c1e-8a0d5f6b7c21",
        "hostname": HOSTNAME,
        "name": HOSTNAME,
        "launch_index": 0,
        "availability_zone": "nova",
        "public_keys": { "k": pubkey.trim() },
    });
    std::fs::write(latest.join("meta_data.json"), meta.to_string()).expect("write");
    let user_data = format!(
        "#cloud-config\nwrite_files:\n  - path: /root/hello.txt\n    permissions: '0600'\n    content: |\n      {}\n",
        HELLO.trim_end()
    );
    std::fs::write(latest.join("user_data"), user_data).expect("write");
    let iso = work.join("config2.iso");
    sh(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "config-2",
            "-J",
            "-R",
            "-o",
            &iso.to_string_lossy(),
            &tree.to_string_lossy(),
        ],
    );
    iso
}

/// A connection to qemu-ga through QEMU's chardev socket, speaking its line protocol.
struct Agent {
    sock: UnixStream,
    buf: Vec<u8>,
}

impl Agent {
    /// Connects and waits for a `guest-sync` answer: the first moment the agent runs.
    fn sync(path: &Path, deadline: Instant) -> Option<Agent> {
        let mut id: u64 = 4_711;
        while Instant::now() < deadline {
            let Ok(sock) = UnixStream::connect(path) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            let mut a = Agent { sock, buf: vec![] };
            while Instant::now() < deadline {
                id += 1;
                let req = json!({"execute": "guest-sync", "arguments": {"id": id}});
                if a.send(&req).is_err() {
                    break;
                }
                // Answers to earlier attempts may arrive first: wait for this one.
                let until = Instant::now() + Duration::from_secs(2);
                while let Some(v) = a.recv(until) {
                    if v.get("return").and_then(Value::as_u64) == Some(id) {
                        return Some(a);
                    }
                }
            }
        }
        None
    }

    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.sock.write_all(line.as_bytes())
    }

    /// The next JSON line, or None when `until` passes first.
    fn recv(&mut self, until: Instant) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(v) => return Some(v),
                    Err(_) => continue,
                }
            }
            let left = until.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .ok()?;
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {
                    if Instant::now() >= until {
                        return None;
                    }
                }
            }
        }
    }

    /// Calls a command and returns its `return` value (panics on an error answer).
    fn call(&mut self, v: Value) -> Value {
        self.send(&v).expect("send to qemu-ga");
        let until = Instant::now() + Duration::from_secs(30);
        let answer = self
            .recv(until)
            .unwrap_or_else(|| panic!("no answer to {v}"));
        match answer.get("return") {
            Some(r) => r.clone(),
            None => panic!("qemu-ga answered {answer} to {v}"),
        }
    }

    fn read_file(&mut self, path: &str) -> Vec<u8> {
        let h = self
            .call(json!({"execute": "guest-file-open", "arguments": {"path": path, "mode": "r"}}));
        let mut data = Vec::new();
        loop {
            let r = self.call(
                json!({"execute": "guest-file-read", "arguments": {"handle": h, "count": 48 * 1024}}),
            );
            let b64 = r.get("buf-b64").and_then(Value::as_str).unwrap_or("");
            data.extend(base64_decode(b64));
            if r.get("eof").and_then(Value::as_bool).unwrap_or(true) {
                break;
            }
        }
        self.call(json!({"execute": "guest-file-close", "arguments": {"handle": h}}));
        data
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn ssh(key: &Path, port: u16, user: &str, cmd: &str) -> std::process::Output {
    Command::new("ssh")
        .args(["-i", &key.to_string_lossy()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &port.to_string(),
            &format!("{user}@127.0.0.1"),
            cmd,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("ssh")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
#[ignore = "needs root and several minutes: builds and boots the Debian image under TCG"]
fn debian_image_boots_with_cloud_init() {
    let cache = halyard_testguest::default_cache_dir();
    let t = Instant::now();
    let img = halyard_testguest::ensure_debian(&cache).expect("the Debian image");
    eprintln!(
        "image: {} ({:.1} s to ensure), kernel {} {}",
        img.disk.display(),
        t.elapsed().as_secs_f32(),
        img.manifest.kernel_package,
        img.manifest.kernel_version
    );
    let before = std::fs::metadata(&img.disk).expect("disk").modified().ok();

    // HALYARD_DEBIAN_BOOT_WORKDIR keeps the overlay, serial log and config drive.
    let work = tempfile::tempdir().expect("tempdir");
    let kept = std::env::var_os("HALYARD_DEBIAN_BOOT_WORKDIR").map(PathBuf::from);
    if let Some(k) = &kept {
        let _ = std::fs::remove_dir_all(k);
        std::fs::create_dir_all(k).expect("work dir");
    }
    let w = kept.as_deref().unwrap_or(work.path());
    let overlay = w.join("overlay.qcow2");
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &img.disk.to_string_lossy(),
            &overlay.to_string_lossy(),
        ],
    );
    let (code, vars_template) = ovmf();
    let vars = w.join("OVMF_VARS.fd");
    std::fs::copy(&vars_template, &vars).expect("copy OVMF vars");
    let key = w.join("id_ed25519");
    sh(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            &key.to_string_lossy(),
        ],
    );
    let pubkey = std::fs::read_to_string(w.join("id_ed25519.pub")).expect("public key");
    let iso = config_drive(w, &pubkey);
    let serial = w.join("serial.log");
    let qga = w.join("qga.sock");
    let port = free_port();

    let started = Instant::now();
    let deadline = started + timeout();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", "tcg", "-m", "1024", "-smp", "2",
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,file={}", vars.display()),
        ])
        .args(["-drive", &format!("file={},if=virtio", overlay.display())])
        .args(["-cdrom", &iso.to_string_lossy()])
        .args(["-serial", &format!("file:{}", serial.display())])
        .args(["-display", "none"])
        .args([
            "-netdev",
            &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        // No option ROM: OVMF would otherwise try PXE before the disk.
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .args([
            "-chardev",
            &format!("socket,path={},server=on,wait=off,id=qga0", qga.display()),
        ])
        .args(["-device", "virtio-serial"])
        .args([
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut qemu = Qemu(child);
    let read_serial = || std::fs::read_to_string(&serial).unwrap_or_default();

    // The kernel's first line: the firmware and the EFI stub are done.
    let mut t_kernel = None;
    while Instant::now() < deadline && t_kernel.is_none() {
        if read_serial().contains("Linux version") {
            t_kernel = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t_kernel = t_kernel.unwrap_or_else(|| panic!("no kernel; serial:\n{}", read_serial()));
    eprintln!("kernel starts after {:.1} s", t_kernel.as_secs_f32());

    // The agent answers as soon as udev has started it.
    let mut agent = match Agent::sync(&qga, deadline) {
        Some(a) => a,
        None => panic!("qemu-ga never answered; serial console:\n{}", read_serial()),
    };
    let t_qga = started.elapsed();
    eprintln!("qemu-ga answers after {:.1} s", t_qga.as_secs_f32());

    // The serial getty's prompt, and cloud-init's final message.
    let (mut t_login, mut t_ready) = (None, None);
    while Instant::now() < deadline && (t_login.is_none() || t_ready.is_none()) {
        let log = read_serial();
        if t_login.is_none() && log.contains(" login: ") {
            t_login = Some(started.elapsed());
        }
        if t_ready.is_none() && log.contains(halyard_testguest::debian::DEBIAN_READY_MARKER) {
            t_ready = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = read_serial();
    let (Some(t_login), Some(t_ready)) = (t_login, t_ready) else {
        panic!("no login prompt or no cloud-init final message; serial console:\n{log}");
    };
    eprintln!(
        "serial login prompt after {:.1} s, cloud-init done after {:.1} s",
        t_login.as_secs_f32(),
        t_ready.as_secs_f32()
    );
    assert!(
        log.contains("Linux version"),
        "no kernel boot on the serial console"
    );
    assert!(
        log.contains(&format!("{HOSTNAME} login: ")),
        "the serial prompt does not show the host name; serial console:\n{log}"
    );

    // What cloud-init did, seen through the agent.
    let name = agent.call(json!({"execute": "guest-get-host-name"}));
    assert_eq!(
        name.get("host-name").and_then(Value::as_str),
        Some(HOSTNAME)
    );
    let hello = agent.read_file("/root/hello.txt");
    assert_eq!(String::from_utf8_lossy(&hello), HELLO);
    let cilog = String::from_utf8_lossy(&agent.read_file("/var/log/cloud-init.log")).into_owned();
    assert!(
        cilog.contains("DataSourceConfigDrive"),
        "cloud-init did not use the config drive"
    );
    assert!(
        !cilog.contains("169.254.169.254"),
        "cloud-init tried a network metadata service"
    );
    let keys =
        String::from_utf8_lossy(&agent.read_file("/etc/ssh/ssh_host_ed25519_key.pub")).into_owned();
    assert!(keys.starts_with("ssh-ed25519 "), "no host key made at boot");

    // SSH with the config drive's key: the default user works, root is turned away.
    let mut t_ssh = None;
    while Instant::now() < deadline {
        let out = ssh(
            &key,
            port,
            halyard_testguest::debian::DEFAULT_USER,
            "hostname",
        );
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), HOSTNAME);
            t_ssh = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let t_ssh = t_ssh.expect("ssh as the default user never worked");
    eprintln!(
        "ssh {}@ works after {:.1} s",
        halyard_testguest::debian::DEFAULT_USER,
        t_ssh.as_secs_f32()
    );
    let out = ssh(&key, port, "debian", "sudo cat /root/hello.txt");
    assert!(out.status.success(), "sudo: {:?}", out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO);
    // How the boot went: no failed unit, the root grown to the disk by cloud-init.
    let failed = ssh(
        &key,
        port,
        "debian",
        "systemctl --failed --no-legend --plain",
    );
    let failed = String::from_utf8_lossy(&failed.stdout).trim().to_string();
    let diag = ssh(
        &key,
        port,
        "debian",
        "systemd-analyze; systemd-analyze blame | head -n 8; df -h /; \
         echo modules: $(lsmod | wc -l); ls /dev/virtio-ports; systemctl is-active qemu-guest-agent getty@tty1 serial-getty@ttyS0 ssh; \
         systemctl is-enabled apt-daily.timer || true",
    );
    eprintln!("{}", String::from_utf8_lossy(&diag.stdout));
    assert!(failed.is_empty(), "failed units: {failed}");
    let size = ssh(&key, port, "debian", "df --output=size -B1 / | tail -n 1");
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .expect("df size");
    assert!(
        size > 3 << 29,
        "growpart did not grow the root: {size} bytes"
    );

    let root = ssh(&key, port, "root", "hostname");
    let root_out = String::from_utf8_lossy(&root.stdout);
    eprintln!(
        "ssh root@: status {:?}, says {:?}",
        root.status.code(),
        root_out.trim()
    );
    assert!(
        !root.status.success() || root_out.trim() != HOSTNAME,
        "root may log in with the key"
    );

    // A graceful shutdown through the agent (it does not answer guest-shutdown).
    let t = Instant::now();
    agent
        .send(&json!({"execute": "guest-shutdown"}))
        .expect("send guest-shutdown");
    let mut exited = None;
    while t.elapsed() < Duration::from_secs(180) {
        if let Ok(Some(status)) = qemu.0.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = exited.expect("the guest did not power off within 180 s");
    eprintln!(
        "powered off {:.1} s after guest-shutdown ({status})",
        t.elapsed().as_secs_f32()
    );
    let after = std::fs::metadata(&img.disk).expect("disk").modified().ok();
    assert_eq!(before, after, "the cached image was modified");
}
