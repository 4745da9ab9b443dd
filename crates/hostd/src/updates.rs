//! `Host.getAvailableUpdates`: which of the host's platform packages (QEMU, libvirt,
//! sanlock, firmware) have an update its package index knows — what oVirt's engine
//! asks the host's package manager for its "check for upgrade". Answered from
//! `apt-get --simulate upgrade` (no download, no lock, no change); the index is as
//! fresh as the host's last `apt-get update`.

use std::time::Duration;

use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::{errors, AvailableUpdates};

/// Package names (prefixes) that make up the host's platform (the default of
/// `[updates] packages`).
pub const PLATFORM: &[&str] = &[
    "qemu", "libvirt", "sanlock", "ovmf", "seabios", "ipxe", "libnbd", "nbdkit",
];

/// At most this many packages are reported, each name at most this long (the answer
/// stays small whatever the tool prints).
pub const MAX_PACKAGES: usize = 256;
pub const MAX_NAME: usize = 128;

/// How long the package manager may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The packages named by `prefixes` in `apt-get --simulate upgrade` output: its `Inst
/// NAME [OLD] (NEW ...)` lines.
pub fn parse_simulation(out: &str, prefixes: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        if name.len() > MAX_NAME || !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        let old = words
            .next()
            .filter(|w| w.starts_with('['))
            .map(|w| w.trim_matches(|c| c == '[' || c == ']'));
        let new = rest
            .split_once('(')
            .and_then(|(_, n)| n.split_whitespace().next());
        let text = match (old, new) {
            (Some(o), Some(n)) => format!("{name} {o} -> {n}"),
            (None, Some(n)) => format!("{name} -> {n}"),
            _ => name.to_string(),
        };
        found.push(text.chars().take(3 * MAX_NAME).collect());
        if found.len() == MAX_PACKAGES {
            break;
        }
    }
    found
}

/// Runs `cmd` for at most `limit`; past it the child is killed (`kill_on_drop`).
async fn bounded(
    mut cmd: tokio::process::Command,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let name = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.kill_on_drop(true);
    tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| format!("{name} took over {} s", limit.as_secs_f32()))?
        .map_err(|e| format!("{name}: {e}"))
}

/// Runs the simulation and reads it.
pub async fn available(prefixes: &[String]) -> Result<AvailableUpdates, RpcError> {
    let fail = |e: String| errors::GENERAL.rpc(Some(&format!("cannot check for updates: {e}")));
    let mut cmd = tokio::process::Command::new("apt-get");
    cmd.args(["--simulate", "--quiet", "upgrade"])
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = bounded(cmd, TIMEOUT).await.map_err(fail)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!(
            "apt-get: {}",
            err.trim().chars().take(300).collect::<String>()
        )));
    }
    Ok(AvailableUpdates {
        packages: parse_simulation(&String::from_utf8_lossy(&out.stdout), prefixes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The limit of the check (TIMEOUT, 120 s, for apt-get): a command that hangs is
    /// stopped at the limit and killed, and the check fails saying so.
    #[tokio::test]
    async fn a_hanging_command_is_stopped_at_the_limit() {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30");
        let t0 = std::time::Instant::now();
        let e = bounded(cmd, Duration::from_millis(300))
            .await
            .expect_err("stopped");
        assert!(e.contains("sleep took over 0.3 s"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        let ok = bounded(
            tokio::process::Command::new("true"),
            Duration::from_secs(10),
        )
        .await
        .expect("true");
        assert!(ok.status.success());
    }

    fn platform() -> Vec<String> {
        PLATFORM.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn platform_packages_of_a_simulation() {
        let out = "Reading package lists...\n\
Inst qemu-system-x86 [1:7.2+dfsg-7+deb12u5] (1:7.2+dfsg-7+deb12u6 Debian-Security:12/stable-security [amd64])\n\
Inst bash [5.2.15-2+b2] (5.2.15-2+b7 Debian:12.8/stable [amd64])\n\
Inst libvirt0 (9.0.0-4+deb12u2 Debian:12.8/stable [amd64])\n\
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u6 Debian-Security:12/stable-security [amd64])\n";
        assert_eq!(
            parse_simulation(out, &platform()),
            [
                "qemu-system-x86 1:7.2+dfsg-7+deb12u5 -> 1:7.2+dfsg-7+deb12u6",
                "libvirt0 -> 9.0.0-4+deb12u2"
            ]
        );
        assert!(parse_simulation("0 upgraded, 0 newly installed.\n", &platform()).is_empty());
        assert!(parse_simulation(out, &["halyard-".to_string()]).is_empty());
    }

    proptest! {
        /// Whatever the tool prints: no panic, at most MAX_PACKAGES short entries.
        #[test]
        fn any_output_is_read_safely(lines in proptest::collection::vec("(Inst )?(qemu|x)?[ -~]{0,300}", 0..400)) {
            let got = parse_simulation(&lines.join("\n"), &platform());
            prop_assert!(got.len() <= MAX_PACKAGES);
            prop_assert!(got.iter().all(|p| p.chars().count() <= 3 * MAX_NAME));
        }
    }
}
