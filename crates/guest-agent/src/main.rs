//! `halyard-guest-agent`: finds the virtio-serial port `org.qemu.guest_agent.0` (or
//! takes `--device PATH`, or `--stdio`) and serves the QEMU guest agent protocol on it.
//!
//! Options: `--device PATH`, `--stdio`, `--enable-exec` (guest-exec is off otherwise),
//! `--config FILE` (lines `exec_enabled = true|false`; default
//! /etc/halyard/guest-agent.conf when present), `--max-message BYTES`.

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use halyard_guest_agent::commands::{Agent, Config};
use halyard_guest_agent::protocol::MAX_MESSAGE;

const PORT: &str = "org.qemu.guest_agent.0";

fn find_port() -> Option<PathBuf> {
    let direct = PathBuf::from(format!("/dev/virtio-ports/{PORT}"));
    if direct.exists() {
        return Some(direct);
    }
    for e in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT {
            return Some(PathBuf::from("/dev").join(e.file_name()));
        }
    }
    None
}

fn usage(msg: &str) -> ! {
    eprintln!("halyard-guest-agent: {msg}\nusage: halyard-guest-agent [--device PATH | --stdio] [--enable-exec] [--config FILE] [--max-message BYTES]");
    std::process::exit(2)
}

fn shutdown(mode: &str) {
    // A distribution's own shutdown first (clean stop of services), reboot(2) last.
    let args: &[&str] = match mode {
        "reboot" => &["-r", "+0", "halyard-guest-agent: reboot"],
        "halt" => &["-h", "-H", "+0", "halyard-guest-agent: halt"],
        _ => &["-h", "-P", "+0", "halyard-guest-agent: powerdown"],
    };
    for sh in ["/sbin/shutdown", "/usr/sbin/shutdown"] {
        if std::process::Command::new(sh)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
    }
    let cmd = match mode {
        "reboot" => libc::LINUX_REBOOT_CMD_RESTART,
        "halt" => libc::LINUX_REBOOT_CMD_HALT,
        _ => libc::LINUX_REBOOT_CMD_POWER_OFF,
    };
    // SAFETY: sync and reboot(2) take no pointers; the guest goes down.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
}

fn main() {
    let mut device: Option<PathBuf> = None;
    let mut stdio = false;
    let mut exec = None;
    let mut config = PathBuf::from("/etc/halyard/guest-agent.conf");
    let mut max = MAX_MESSAGE;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => {
                device = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--device needs a path"))
                        .into(),
                )
            }
            "--stdio" => stdio = true,
            "--enable-exec" => exec = Some(true),
            "--config" => {
                config = args
                    .next()
                    .unwrap_or_else(|| usage("--config needs a file"))
                    .into()
            }
            "--max-message" => {
                max = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| (1024..=16 << 20).contains(v))
                    .unwrap_or_else(|| usage("--max-message needs 1024..16777216"))
            }
            "--version" => {
                println!("{}", halyard_guest_agent::commands::VERSION);
                return;
            }
            other => usage(&format!("unknown option {other}")),
        }
    }
    let exec_enabled = exec.unwrap_or_else(|| {
        fs::read_to_string(&config)
            .map(|t| {
                t.lines().any(|l| {
                    let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                    l == "exec_enabled=true"
                })
            })
            .unwrap_or(false)
    });
    let mut agent = Agent::new(Config {
        exec_enabled,
        root: String::new(),
    });
    if stdio {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        match halyard_guest_agent::serve(&mut agent, &mut stdin.lock(), &mut stdout.lock(), max) {
            Ok(Some(mode)) => shutdown(&mode),
            Ok(None) => {}
            Err(e) => {
                eprintln!("halyard-guest-agent: {e}");
                std::process::exit(1)
            }
        }
        return;
    }
    loop {
        let Some(path) = device.clone().or_else(find_port) else {
            // The port may appear later (module loading); keep looking.
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let f = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("halyard-guest-agent: {}: {e}", path.display());
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let mut rd = match f.try_clone() {
            Ok(r) => r,
            Err(_) => continue,
        };
        let mut wr = f;
        // Reads return 0 while no host side is connected: wait and read again.
        struct Port<'a>(&'a mut fs::File);
        impl Read for Port<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                loop {
                    match self.0.read(b) {
                        Ok(0) => std::thread::sleep(Duration::from_millis(100)),
                        r => return r,
                    }
                }
            }
        }
        match halyard_guest_agent::serve(&mut agent, &mut Port(&mut rd), &mut wr, max) {
            Ok(Some(mode)) => {
                let _ = wr.flush();
                shutdown(&mode);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("halyard-guest-agent: {}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
