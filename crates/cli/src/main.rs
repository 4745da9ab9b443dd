//! `halyard`: the command-line client.
//!
//! `halyard rpc [--host H] METHOD [key=value ...]` calls a host agent verb over VDSM's
//! protocol (as `vdsm-client` does) and prints the result as JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use halyard_client::{Client, ClientError};
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(version, about = "Halyard command-line client")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Conn {
    /// Host agent address.
    #[arg(long, default_value = "localhost", env = "HALYARD_HOST")]
    host: String,
    /// Host agent port.
    #[arg(long, default_value_t = 54321, env = "HALYARD_PORT")]
    port: u16,
    /// Directory with client.pem, client.key and ca.pem.
    #[arg(long, default_value = "/etc/halyard/pki", env = "HALYARD_PKI_DIR")]
    pki_dir: PathBuf,
    /// Client certificate (default: <pki-dir>/client.pem).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (default: <pki-dir>/client.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA certificate (default: <pki-dir>/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Call a host agent verb, e.g. `halyard rpc Host.getStats` or
    /// `halyard rpc VM.create --xml vm.xml` or `halyard rpc VM.getStats vmID=<uuid>`.
    Rpc {
        #[command(flatten)]
        conn: Conn,
        /// Verb name (Host.getStats, VM.create, ...).
        method: String,
        /// Named params as key=value (value read as JSON when it parses, else a string).
        params: Vec<String>,
        /// All params as one JSON object or array.
        #[arg(long)]
        json: Option<String>,
        /// For VM.create: the libvirt domain XML file.
        #[arg(long)]
        xml: Option<PathBuf>,
        /// Flow id sent as ovirtCorrelationId.
        #[arg(long)]
        flow_id: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Print the agent's events as they arrive (one JSON object per line).
    Events {
        #[command(flatten)]
        conn: Conn,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
}

/// Prints a line; a closed stdout (`| head`) ends the program quietly.
fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if writeln!(o, "{s}").and_then(|_| o.flush()).is_err() {
        std::process::exit(0);
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn connect(c: &Conn) -> anyhow::Result<Client> {
    let files = halyard_pki::TlsFiles {
        cert: c
            .cert
            .clone()
            .unwrap_or_else(|| c.pki_dir.join("client.pem")),
        key: c
            .key
            .clone()
            .unwrap_or_else(|| c.pki_dir.join("client.key")),
        ca: c.ca.clone().unwrap_or_else(|| c.pki_dir.join("ca.pem")),
    };
    let tls = halyard_pki::client_config(&files).context("loading the client certificate")?;
    Client::connect(&c.host, c.port, tls)
        .await
        .with_context(|| format!("connecting to {}:{}", c.host, c.port))
}

fn parse_params(kv: &[String], json_all: Option<&str>) -> anyhow::Result<Value> {
    if let Some(j) = json_all {
        if !kv.is_empty() {
            bail!("give params either as key=value or with --json, not both");
        }
        return serde_json::from_str(j).context("--json is not valid JSON");
    }
    let mut m = Map::new();
    for p in kv {
        let Some((k, v)) = p.split_once('=') else {
            bail!("param {p:?} is not key=value");
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(Value::Object(m))
}

fn uuid_of(xml: &str) -> Option<String> {
    let start = xml.find("<uuid>")? + "<uuid>".len();
    let end = xml[start..].find("</uuid>")? + start;
    Some(xml[start..end].trim().to_string())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Rpc {
            conn,
            method,
            params,
            json,
            xml,
            flow_id,
            timeout,
        } => {
            let mut p = parse_params(&params, json.as_deref())?;
            if let Some(file) = xml {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let id = uuid_of(&text).context("the XML has no <uuid>")?;
                if let Value::Object(m) = &mut p {
                    m.entry("vmID").or_insert_with(|| json!(id));
                    m.insert("vmParams".into(), json!({"vmId": id, "xml": text}));
                }
            }
            let mut c = connect(&conn).await?;
            c.set_timeout(Duration::from_secs(timeout));
            match c.call_value_with(&method, p, flow_id.as_deref()).await {
                Ok(v) => {
                    out(&serde_json::to_string_pretty(&v)?);
                    c.close().await;
                    Ok(())
                }
                Err(ClientError::Rpc(e)) => {
                    out(&serde_json::to_string_pretty(
                        &json!({"code": e.code, "message": e.message}),
                    )?);
                    c.close().await;
                    std::process::exit(2);
                }
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Events { conn, count } => {
            let c = connect(&conn).await?;
            let mut rx = c.events();
            let mut n = 0;
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        out(&json!({"method": ev.method, "params": ev.params}).to_string());
                        n += 1;
                        if count.is_some_and(|c| n >= c) {
                            return Ok(());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => bail!("connection closed"),
                }
            }
        }
    }
}
