//! `Host.fenceNode`: this host acts as the fence proxy for another one (the engine
//! never talks to a BMC itself). It runs Debian's fence agent
//! (`<agents_dir>/fence_<agent>`, from `fence-agents`) with its options on standard
//! input, as VDSM does (`agent=`, `ipaddr=`, `login=`, `passwd=`, `action=`, then the
//! extra options one per line), bounded in time, and answers VDSM's result: for
//! `status` the power (`on` for exit code 0, `off` for 2, else `unknown`), for
//! `on`/`off`/`reboot` `operationStatus: initiated` with the agent's exit code.
//!
//! Everything in the request is checked before it reaches the agent: the agent's name
//! is a plain word naming a file in `agents_dir`; no value holds a line break or a
//! control character (one would add options of the caller's choosing); options that
//! name a program or a file for the agent to run or write (`*_path`, `debug_file`,
//! ...) are refused, so a fence request cannot run anything but the fence agent. The
//! password goes only to the agent's standard input, never to a log.
//!
//! The fencing policy (VDSM's `storageDomainHostIdMap`): `on`/`off`/`reboot` are
//! skipped (`operationStatus: skipped`) while this host's sanlock sees the fenced
//! host's host id as live on one of the named domains — it still renews its storage
//! lease, so it is not dead, only cut off from the Manager.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use halyard_proto::jsonrpc::RpcError;
use halyard_proto::vdsm::{errors, ErrorCode, FenceNodeParams, FenceNodeResult};
use serde_json::Value;
use tracing::{info, warn};

/// VDSM's `UnsupportedFenceAgent` (43).
pub const UNSUPPORTED_AGENT: ErrorCode = ErrorCode {
    code: 43,
    message: "Unsupported fencing agent",
};

/// The actions of VDSM's `FenceNodeAction`.
pub const ACTIONS: &[&str] = &["status", "on", "off", "reboot"];

/// Longest value and most options accepted.
pub const MAX_VALUE: usize = 1024;
pub const MAX_OPTIONS: usize = 32;

/// Options that make a fence agent run or write a file of the caller's choosing.
fn dangerous(key: &str) -> bool {
    let k = key.replace('-', "_");
    k.ends_with("_path")
        || k.ends_with("_file")
        || matches!(
            k.as_str(),
            "agent" | "action" | "ipaddr" | "login" | "passwd" | "passwd_script" | "ssh_options"
        )
}

fn bad(msg: String) -> RpcError {
    errors::INVALID_PARAMETER.rpc(Some(&msg))
}

/// A value for one line of the agent's input: no control characters, bounded.
fn check_value(what: &str, v: &str) -> Result<(), RpcError> {
    if v.len() > MAX_VALUE {
        return Err(bad(format!("{what}: longer than {MAX_VALUE} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(bad(format!("{what}: control characters are not allowed")));
    }
    Ok(())
}

/// The extra options (`key=value` or `key`, separated by spaces, commas or line
/// breaks, as the engine sends them), checked.
pub fn parse_options(s: &str) -> Result<Vec<(String, Option<String>)>, RpcError> {
    let mut out = Vec::new();
    for item in s
        .split(|c: char| c == ',' || c == '\n' || c.is_whitespace())
        .filter(|x| !x.is_empty())
    {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if k.is_empty()
            || k.len() > 64
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(format!(
                "fence option {:?}: a name of letters, digits, '_' or '-'",
                k.chars().take(64).collect::<String>()
            )));
        }
        if dangerous(k) {
            return Err(bad(format!(
                "fence option {k:?} is not allowed (it names a program or file, or is set from the request's own fields)"
            )));
        }
        if let Some(v) = v {
            check_value(&format!("fence option {k}"), v)?;
        }
        out.push((k.to_string(), v.map(str::to_string)));
        if out.len() > MAX_OPTIONS {
            return Err(bad(format!("more than {MAX_OPTIONS} fence options")));
        }
    }
    Ok(out)
}

/// A JSON value as an agent option's text (`port` and `secure` come as numbers,
/// Booleans or strings).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The agent's standard input for a checked request.
pub fn agent_input(p: &FenceNodeParams) -> Result<String, RpcError> {
    if !ACTIONS.contains(&p.action.as_str()) {
        return Err(bad(format!(
            "illegal action {:?}: one of status, on, off, reboot",
            p.action.chars().take(32).collect::<String>()
        )));
    }
    check_value("addr", &p.addr)?;
    check_value("username", &p.username)?;
    check_value("password", &p.password)?;
    if p.addr.is_empty() {
        return Err(bad("addr: the fence device's address is required".into()));
    }
    let mut inp = format!(
        "agent=fence_{}\nipaddr={}\nlogin={}\naction={}\npasswd={}\n",
        p.agent, p.addr, p.username, p.action, p.password
    );
    if let Some(port) = scalar(&p.port) {
        check_value("port", &port)?;
        inp.push_str(&format!("port={port}\n"));
    }
    let secure = match &p.secure {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "True" | "yes" | "1"),
        _ => false,
    };
    if secure {
        inp.push_str("secure=yes\n");
    }
    for (k, v) in parse_options(&p.options)? {
        match v {
            Some(v) => inp.push_str(&format!("{k}={v}\n")),
            None => inp.push_str(&format!("{k}\n")),
        }
    }
    Ok(inp)
}

/// The agent's executable: a plain name, a file in `dir`.
pub fn agent_path(dir: &Path, agent: &str) -> Result<std::path::PathBuf, RpcError> {
    if agent.is_empty()
        || agent.len() > 32
        || !agent
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(UNSUPPORTED_AGENT.rpc(Some(&format!(
            "agent {:?}: a fence agent's name (ipmilan, ilo4, drac5, ...)",
            agent.chars().take(32).collect::<String>()
        ))));
    }
    let path = dir.join(format!("fence_{agent}"));
    if !path.is_file() {
        return Err(UNSUPPORTED_AGENT.rpc(Some(&format!(
            "no fence agent {} on this host (Debian's fence-agents)",
            path.display()
        ))));
    }
    Ok(path)
}

/// The result for an agent's exit code, VDSM's way.
pub fn result(action: &str, rc: i32, output: &str) -> FenceNodeResult {
    let message = if rc == 0 || (action == "status" && rc == 2) {
        "Done".to_string()
    } else {
        output.trim().chars().take(2000).collect()
    };
    if action == "status" {
        let power = match rc {
            0 => "on",
            2 => "off",
            _ => "unknown",
        };
        return FenceNodeResult {
            power: power.into(),
            operation_status: None,
            code: if matches!(rc, 0 | 2) {
                0
            } else {
                i64::from(rc)
            },
            message,
        };
    }
    FenceNodeResult {
        power: "unknown".into(),
        operation_status: Some("initiated".into()),
        code: i64::from(rc),
        message,
    }
}

/// Whether the fenced host still renews its host id on one of the named domains, as
/// this host's sanlock sees it (`live`). Domains this host does not see count as not
/// live, as in VDSM.
pub fn has_live_lease(map: &BTreeMap<String, u32>) -> Option<String> {
    for (sd, host_id) in map {
        let Ok(hosts) = halyard_storage::sanlock::get_hosts(sd) else {
            continue;
        };
        // SANLK_HOST_LIVE
        if hosts
            .iter()
            .any(|h| h.host_id == u64::from(*host_id) && h.state == 3)
        {
            return Some(sd.clone());
        }
    }
    None
}

/// Runs `Host.fenceNode`.
pub async fn fence_node(
    agents_dir: &Path,
    timeout: Duration,
    p: FenceNodeParams,
) -> Result<FenceNodeResult, RpcError> {
    let inp = agent_input(&p)?;
    let path = agent_path(agents_dir, &p.agent)?;
    if p.action != "status" {
        if let Some(map) = p
            .policy
            .as_ref()
            .and_then(|pl| pl.storage_domain_host_id_map.clone())
        {
            let live = tokio::task::spawn_blocking(move || has_live_lease(&map))
                .await
                .map_err(RpcError::internal)?;
            if let Some(sd) = live {
                info!(agent = %p.agent, addr = %p.addr, action = %p.action, domain = %sd,
                    "fencing skipped: the host still renews its lease");
                return Ok(FenceNodeResult {
                    power: "unknown".into(),
                    operation_status: Some("skipped".into()),
                    code: 0,
                    message: format!("the host has a live lease on storage domain {sd}"),
                });
            }
        }
    }
    let mut cmd = tokio::process::Command::new(&path);
    cmd.env("LC_ALL", "C")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let t0 = std::time::Instant::now();
    let run = async {
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(inp.as_bytes())
                .await
                .map_err(|e| format!("writing the agent's input: {e}"))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let out = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            warn!(agent = %p.agent, addr = %p.addr, action = %p.action, "fence agent timed out");
            return Err(errors::GENERAL.rpc(Some(&format!(
                "fence_{} did not end within {} s",
                p.agent,
                timeout.as_secs()
            ))));
        }
        Ok(Err(e)) => return Err(errors::GENERAL.rpc(Some(&e))),
        Ok(Ok(o)) => o,
    };
    let rc = out.status.code().unwrap_or(-1);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    info!(agent = %p.agent, addr = %p.addr, action = %p.action, rc,
        ms = t0.elapsed().as_millis() as u64, "fence agent ran");
    Ok(result(&p.action, rc, &text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn params(action: &str, options: &str) -> FenceNodeParams {
        serde_json::from_value(json!({
            "addr": "10.0.0.9", "port": "", "agent": "ipmilan", "username": "admin",
            "password": "s3cret", "action": action, "secure": false, "options": options,
        }))
        .expect("params")
    }

    #[test]
    fn input_is_vdsms() {
        let inp =
            agent_input(&params("status", "ipport=9623, lanplus=1 power_wait=1")).expect("ok");
        assert_eq!(
            inp,
            "agent=fence_ipmilan\nipaddr=10.0.0.9\nlogin=admin\naction=status\npasswd=s3cret\nipport=9623\nlanplus=1\npower_wait=1\n"
        );
        let mut p = params("off", "");
        p.port = json!(623);
        p.secure = json!(true);
        assert!(agent_input(&p)
            .expect("ok")
            .ends_with("port=623\nsecure=yes\n"));
    }

    #[test]
    fn injection_and_programs_are_refused() {
        for (action, opts) in [
            ("status", "ipmitool_path=/tmp/x"),
            ("status", "ipmitool-path=/tmp/x"),
            ("status", "debug_file=/etc/passwd"),
            ("status", "passwd_script=/bin/sh"),
            ("status", "action=off"),
            ("status", "ssh_options=-oProxyCommand=sh"),
            ("status", "a;b=1"),
            ("reset", ""),
        ] {
            assert!(
                agent_input(&params(action, opts)).is_err(),
                "{action} {opts}"
            );
        }
        let mut p = params("status", "");
        p.addr = "10.0.0.9\nipmitool_path=/tmp/x".into();
        assert!(agent_input(&p).is_err());
        let mut p = params("status", "");
        p.password = "a\rb".into();
        assert!(agent_input(&p).is_err());
        let many = (0..=MAX_OPTIONS)
            .map(|i| format!("o{i}=1"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(agent_input(&params("status", &many)).is_err());
        let dir = std::env::temp_dir();
        for a in ["", "../bin/sh", "IPMI", "ipmi lan", &"a".repeat(33)] {
            let e = agent_path(&dir, a).expect_err(a);
            assert_eq!(e.code, 43, "{a}");
        }
        let e = agent_path(&dir, "nosuchagent").expect_err("missing");
        assert!(e.message.contains("no fence agent"), "{}", e.message);
    }

    #[test]
    fn results_follow_vdsm() {
        let r = result("status", 0, "Status: ON");
        assert_eq!((r.power.as_str(), r.code), ("on", 0));
        let r = result("status", 2, "Status: OFF");
        assert_eq!((r.power.as_str(), r.code), ("off", 0));
        let r = result("status", 1, "Failed: Unable to obtain correct plug status");
        assert_eq!((r.power.as_str(), r.code), ("unknown", 1));
        assert!(r.message.contains("Unable"));
        let r = result("off", 0, "Success: Powered OFF");
        assert_eq!(r.operation_status.as_deref(), Some("initiated"));
        assert_eq!(r.code, 0);
    }

    /// The agent's limit: an agent that hangs is killed at the timeout.
    #[tokio::test]
    async fn a_hanging_agent_is_stopped_at_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = dir.path().join("fence_hang");
        std::fs::write(&agent, "#!/bin/sh\nsleep 30\n").expect("agent");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let mut p = params("status", "");
        p.agent = "hang".into();
        let t0 = std::time::Instant::now();
        let e = fence_node(dir.path(), Duration::from_millis(300), p)
            .await
            .expect_err("timed out");
        assert!(e.message.contains("did not end within"), "{}", e.message);
        assert!(t0.elapsed() < Duration::from_secs(10));
        // An agent that answers: its input as the agent read it, its exit code.
        let agent = dir.path().join("fence_echo");
        std::fs::write(
            &agent,
            "#!/bin/sh\ncat > \"$(dirname \"$0\")/input\"\nexit 2\n",
        )
        .expect("agent");
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let mut p = params("status", "lanplus=1");
        p.agent = "echo".into();
        let r = fence_node(dir.path(), Duration::from_secs(10), p)
            .await
            .expect("ran");
        assert_eq!(r.power, "off");
        let got = std::fs::read_to_string(dir.path().join("input")).expect("input");
        assert!(
            got.starts_with("agent=fence_echo\nipaddr=10.0.0.9\n") && got.ends_with("lanplus=1\n"),
            "{got}"
        );
    }

    proptest! {
        /// Any options string: a clear answer, never a panic; what is accepted has no
        /// line break inside a value and nothing dangerous.
        #[test]
        fn options_never_panic(s in "\\PC{0,200}") {
            if let Ok(opts) = parse_options(&s) {
                for (k, v) in opts {
                    prop_assert!(!dangerous(&k));
                    prop_assert!(!v.unwrap_or_default().contains('\n'));
                }
            }
        }
    }
}
