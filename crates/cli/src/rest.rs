//! `halyard hosts|vms|events ...`: the Manager's REST API (oVirt Engine API v4, JSON).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where the Manager is and how to log in.
#[derive(clap::Args, Clone)]
pub struct Api {
    /// Manager URL.
    #[arg(long, env = "HALYARD_URL", default_value = "https://localhost:8443")]
    pub url: String,
    #[arg(long, env = "HALYARD_USER", default_value = "admin@internal")]
    pub user: String,
    /// File holding the password (default: the all-in-one's admin-password file).
    #[arg(
        long,
        env = "HALYARD_PASSWORD_FILE",
        default_value = "/var/lib/halyard/manager/admin-password"
    )]
    pub password_file: PathBuf,
    /// The Manager's CA certificate (default: fetched from the Manager's data dir).
    #[arg(
        long,
        env = "HALYARD_CA",
        default_value = "/var/lib/halyard/manager/pki/ca.pem"
    )]
    pub ca: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Session {
    api: Api,
    tls: std::sync::Arc<rustls::ClientConfig>,
    token: String,
}

impl Session {
    pub async fn open(api: Api) -> anyhow::Result<Session> {
        let tls = halyard_pki::client_config_anonymous(&api.ca)
            .with_context(|| format!("loading the Manager's CA from {}", api.ca.display()))?;
        let password = std::fs::read_to_string(&api.password_file).with_context(|| {
            format!("reading the password from {}", api.password_file.display())
        })?;
        let body = format!(
            "grant_type=password&scope=ovirt-app-api&username={}&password={}",
            halyard_common::text::percent_encode(&api.user),
            halyard_common::text::percent_encode(password.trim())
        );
        let r = halyard_client::http::request(
            tls.clone(),
            "POST",
            &format!(
                "{}/ovirt-engine/sso/oauth/token",
                api.url.trim_end_matches('/')
            ),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        )
        .await?;
        let v: Value = serde_json::from_slice(&r.body).context("the token answer is not JSON")?;
        let token = match v.get("access_token").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => bail!(
                "login failed: {}",
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
            ),
        };
        Ok(Session { api, tls, token })
    }

    /// An API call; faults become errors with their detail.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let auth = format!("Bearer {}", self.token);
        let data = body.map(|b| b.to_string()).unwrap_or_default();
        let r = halyard_client::http::request(
            self.tls.clone(),
            method,
            &format!(
                "{}/ovirt-engine/api{path}",
                self.api.url.trim_end_matches('/')
            ),
            &[
                ("Authorization", &auth),
                ("Version", "4"),
                ("Accept", "application/json"),
                ("Content-Type", "application/json"),
            ],
            data.as_bytes(),
        )
        .await?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status >= 400 {
            let detail = v
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim_matches(['[', ']'])
                .to_string();
            bail!(
                "{} (HTTP {})",
                if detail.is_empty() { r.text() } else { detail },
                r.status
            );
        }
        Ok(v)
    }

    /// The Manager's URL, the TLS settings and the token (for WebSocket clients).
    pub fn parts(&self) -> (&str, std::sync::Arc<rustls::ClientConfig>, &str) {
        (
            self.api.url.trim_end_matches('/'),
            self.tls.clone(),
            &self.token,
        )
    }

    pub fn json(&self) -> bool {
        self.api.json
    }

    /// Finds an object by name (or id) in a collection.
    pub async fn find(&self, coll: &str, item: &str, name: &str) -> anyhow::Result<Value> {
        if uuid::Uuid::parse_str(name).is_ok() {
            return self.call("GET", &format!("/{coll}/{name}"), None).await;
        }
        let v = self
            .call(
                "GET",
                &format!(
                    "/{coll}?search={}",
                    halyard_common::text::percent_encode(&format!("name=\"{name}\""))
                ),
                None,
            )
            .await?;
        v.get(item)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .cloned()
            .with_context(|| format!("no {item} named {name}"))
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map(Vec::len).unwrap_or(0))
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        crate::out(line.join("  ").trim_end());
    }
}

fn items<'a>(v: &'a Value, item: &str) -> Vec<&'a Value> {
    v.get(item)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Waits until `path`'s status is one of `want`, printing each change.
pub async fn wait_status(
    sess: &Session,
    what: &str,
    path: &str,
    want: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let v = sess.call("GET", path, None).await?;
        let st = s(&v, &["status"]).to_string();
        if st != last {
            crate::out(&format!(
                "  {what}: {st} ({:.1} s)",
                t0.elapsed().as_secs_f64()
            ));
            last = st.clone();
        }
        if want.contains(&st.as_str()) {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{what} is still {st} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn hosts_list(sess: &Session) -> anyhow::Result<()> {
    let v = sess.call("GET", "/hosts", None).await?;
    if sess.json() {
        crate::out(&serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "ADDRESS".into(),
        "STATUS".into(),
        "MEMORY".into(),
        "ID".into(),
    ]];
    for h in items(&v, "host") {
        let mem = s(h, &["memory"]).parse::<u64>().unwrap_or(0) >> 20;
        rows.push(vec![
            s(h, &["name"]).into(),
            s(h, &["address"]).into(),
            s(h, &["status"]).into(),
            format!("{mem} MiB"),
            s(h, &["id"]).into(),
        ]);
    }
    table(rows);
    Ok(())
}

pub async fn storage_list(sess: &Session) -> anyhow::Result<()> {
    let v = sess.call("GET", "/storagedomains", None).await?;
    if sess.json() {
        crate::out(&serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "TYPE".into(),
        "STORAGE".into(),
        "STATUS".into(),
        "FREE".into(),
        "ID".into(),
    ]];
    for d in items(&v, "storage_domain") {
        let free = s(d, &["available"]).parse::<u64>().unwrap_or(0) >> 30;
        let status = match s(d, &["status"]) {
            // Attached domains show their status in their data center.
            "" => "attached".to_string(),
            x => x.to_string(),
        };
        rows.push(vec![
            s(d, &["name"]).into(),
            s(d, &["type"]).into(),
            s(d, &["storage", "type"]).into(),
            status,
            format!("{free} GiB"),
            s(d, &["id"]).into(),
        ]);
    }
    table(rows);
    Ok(())
}

pub async fn vms_list(sess: &Session) -> anyhow::Result<()> {
    let v = sess.call("GET", "/vms", None).await?;
    if sess.json() {
        crate::out(&serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let hosts = sess.call("GET", "/hosts", None).await?;
    let host_name = |id: &str| {
        items(&hosts, "host")
            .into_iter()
            .find(|h| s(h, &["id"]) == id)
            .map(|h| s(h, &["name"]).to_string())
            .unwrap_or_default()
    };
    let mut rows = vec![vec![
        "NAME".into(),
        "STATUS".into(),
        "HOST".into(),
        "MEMORY".into(),
        "ID".into(),
    ]];
    for vm in items(&v, "vm") {
        let mem = s(vm, &["memory"]).parse::<u64>().unwrap_or(0) >> 20;
        rows.push(vec![
            s(vm, &["name"]).into(),
            s(vm, &["status"]).into(),
            host_name(s(vm, &["host", "id"])),
            format!("{mem} MiB"),
            s(vm, &["id"]).into(),
        ]);
    }
    table(rows);
    Ok(())
}

pub async fn events_list(sess: &Session, max: usize) -> anyhow::Result<()> {
    let v = sess
        .call("GET", &format!("/events?max={max}"), None)
        .await?;
    if sess.json() {
        crate::out(&serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows = vec![vec!["TIME".into(), "SEVERITY".into(), "DESCRIPTION".into()]];
    let mut evs = items(&v, "event");
    evs.reverse();
    for e in evs {
        rows.push(vec![
            s(e, &["time"]).chars().take(19).collect(),
            s(e, &["severity"]).into(),
            s(e, &["description"]).into(),
        ]);
    }
    table(rows);
    Ok(())
}

pub fn show(sess: &Session, v: &Value) -> anyhow::Result<()> {
    if sess.json() {
        crate::out(&serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    if let Value::Object(m) = v {
        for (k, val) in m {
            let text = match val {
                Value::String(x) => x.clone(),
                Value::Object(o) if o.contains_key("id") && o.len() <= 2 => {
                    format!("-> {}", o["id"].as_str().unwrap_or(""))
                }
                Value::Array(_) if k == "link" => continue,
                other => other.to_string(),
            };
            rows.push(vec![k.clone(), text]);
        }
    }
    table(rows);
    Ok(())
}

/// Parses sizes like 512M, 1G, 1048576.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mul).context("size overflows")
}

pub fn vm_body(
    name: &str,
    cluster: &str,
    memory: u64,
    cpus: u32,
    kernel: Option<&str>,
    initrd: Option<&str>,
    cmdline: Option<&str>,
) -> Value {
    let mut os = json!({"type": "other_linux"});
    if let Some(k) = kernel {
        os["kernel"] = json!(k);
    }
    if let Some(i) = initrd {
        os["initrd"] = json!(i);
    }
    if let Some(c) = cmdline {
        os["cmdline"] = json!(c);
    }
    json!({
        "name": name,
        "cluster": {"name": cluster},
        "template": {"name": "Blank"},
        "memory": memory.to_string(),
        "cpu": {"topology": {"sockets": cpus.to_string(), "cores": "1", "threads": "1"}},
        "os": os,
    })
}

/// What the guest agent reported about a VM: OS, FQDN, time zone, addresses.
pub async fn guest_summary(sess: &Session, v: &Value) -> anyhow::Result<()> {
    if sess.json() {
        return Ok(());
    }
    let id = s(v, &["id"]);
    let devs = sess
        .call("GET", &format!("/vms/{id}/reporteddevices"), None)
        .await?;
    let mut ips = Vec::new();
    for d in items(&devs, "reported_device") {
        for ip in d["ips"]["ip"].as_array().into_iter().flatten() {
            ips.push(format!("{} {}", s(d, &["name"]), s(ip, &["address"])));
        }
    }
    let os = &v["guest_operating_system"];
    table(vec![
        vec!["guest".into(), String::new()],
        vec![
            "  os".into(),
            format!(
                "{} {} (kernel {})",
                s(os, &["distribution"]),
                s(os, &["version", "full_version"]),
                s(os, &["kernel", "version", "full_version"])
            ),
        ],
        vec!["  fqdn".into(), s(v, &["fqdn"]).into()],
        vec![
            "  time zone".into(),
            format!(
                "{} {}",
                s(v, &["guest_time_zone", "name"]),
                s(v, &["guest_time_zone", "utc_offset"])
            ),
        ],
        vec!["  addresses".into(), ips.join(", ")],
    ]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").expect("ok"), 256 << 20);
        assert_eq!(parse_size("1G").expect("ok"), 1 << 30);
        assert_eq!(parse_size("42").expect("ok"), 42);
        assert!(parse_size("x").is_err());
    }
}
