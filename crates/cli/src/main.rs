//! `halyard`: the command-line client.
//!
//! `halyard rpc [--host H] METHOD [key=value ...]` calls a host agent verb over VDSM's
//! protocol (as `vdsm-client` does) and prints the result as JSON.

mod console;
mod rest;
mod upload;

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
    /// Print a host agent's events as they arrive (one JSON object per line).
    AgentEvents {
        #[command(flatten)]
        conn: Conn,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Hosts of the Manager.
    Hosts {
        #[command(flatten)]
        api: rest::Api,
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// VMs of the Manager.
    Vms {
        #[command(flatten)]
        api: rest::Api,
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Storage domains of the Manager.
    Storage {
        #[command(flatten)]
        api: rest::Api,
        #[command(subcommand)]
        cmd: StorageCmd,
    },
    /// Disks of the Manager.
    Disks {
        #[command(flatten)]
        api: rest::Api,
        #[command(subcommand)]
        cmd: DiskCmd,
    },
    /// The Manager's events.
    Events {
        #[command(flatten)]
        api: rest::Api,
        #[command(subcommand)]
        cmd: EventCmd,
    },
}

#[derive(Subcommand)]
enum HostCmd {
    List,
    Show {
        name: String,
    },
    /// Add a host whose agent waits with an enrollment token.
    Add {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value = "Default")]
        cluster: String,
    },
    /// Make a one-time join token: an agent started with `--join-token` registers
    /// and is approved at once (prints only the token, for scripts).
    JoinToken {
        /// The host name it is for (default: any).
        #[arg(long)]
        host_name: Option<String>,
        #[arg(long, default_value = "Default")]
        cluster: String,
        /// Seconds it stays valid (at most 7 days).
        #[arg(long, default_value_t = 3600)]
        expires_in: u64,
    },
    /// Approve a registered host (or the change a later registration asked for):
    /// compare the key fingerprint `hosts show` prints with the agent's log first.
    Approve {
        name: String,
        #[arg(long, default_value = "Default")]
        cluster: String,
    },
    /// Move a host to maintenance.
    Stop {
        name: String,
    },
    /// Activate a host.
    Start {
        name: String,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    List,
    Show {
        name: String,
    },
    /// Add a VM from Blank (direct kernel boot with --kernel/--initrd/--cmdline).
    Add {
        name: String,
        #[arg(long, default_value = "Default")]
        cluster: String,
        #[arg(long, default_value = "512M")]
        memory: String,
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        #[arg(long)]
        kernel: Option<String>,
        #[arg(long)]
        initrd: Option<String>,
        #[arg(long)]
        cmdline: Option<String>,
        /// Add a virtio NIC on the management network.
        #[arg(long)]
        nic: bool,
    },
    /// Start and wait until it is up.
    Start {
        name: String,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Power off and wait until it is down.
    Stop {
        name: String,
    },
    /// Shut down through the guest and wait until it is down.
    Shutdown {
        name: String,
    },
    Remove {
        name: String,
    },
    /// The serial console of a running VM, through the Manager (Ctrl-] ends it).
    Console {
        name: String,
    },
}

#[derive(Subcommand)]
enum StorageCmd {
    List,
    /// Add a data domain on a directory of a host (created there, in oVirt's layout)
    /// and, with --attach-to, attach it to a data center and wait until it is active.
    Add {
        name: String,
        /// The directory (empty, writable by vdsm's uid 36 or world).
        #[arg(long)]
        path: String,
        /// The host that creates it.
        #[arg(long)]
        host: String,
        /// localfs, or posixfs (shared: host ids and the SPM lease through sanlock).
        #[arg(long, default_value = "localfs")]
        r#type: String,
        /// The file system type of a posixfs domain.
        #[arg(long)]
        vfs_type: Option<String>,
        /// Mount options of a posixfs domain (`bind` with `--vfs-type none` shares a
        /// local directory).
        #[arg(long)]
        mount_options: Option<String>,
        /// A data center to attach it to.
        #[arg(long)]
        attach_to: Option<String>,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum DiskCmd {
    /// Upload a disk image (raw, qcow2) or an ISO into a new disk (imageio's
    /// protocol, as the SDK's upload_disk.py), with a progress bar.
    Upload {
        file: std::path::PathBuf,
        #[arg(long)]
        storage_domain: String,
        /// The disk's name (default: the file's, with .qcow2, .raw or .iso).
        #[arg(long)]
        name: Option<String>,
        /// Send through the Manager's proxy instead of straight to the host.
        #[arg(long)]
        proxy: bool,
    },
}

#[derive(Subcommand)]
enum EventCmd {
    List {
        #[arg(long, default_value_t = 30)]
        max: usize,
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
        Cmd::Disks { api, cmd } => {
            let ca = api.ca.clone();
            let sess = rest::Session::open(api).await?;
            let tls = halyard_pki::client_config_anonymous(&ca)?;
            match cmd {
                DiskCmd::Upload {
                    file,
                    storage_domain,
                    name,
                    proxy,
                } => {
                    let id =
                        upload::upload(&sess, tls, &file, &storage_domain, name, proxy).await?;
                    out(&format!("uploaded into disk {id}"));
                    Ok(())
                }
            }
        }
        Cmd::Storage { api, cmd } => {
            let sess = rest::Session::open(api).await?;
            match cmd {
                StorageCmd::List => rest::storage_list(&sess).await,
                StorageCmd::Add {
                    name,
                    path,
                    host,
                    r#type,
                    vfs_type,
                    mount_options,
                    attach_to,
                    timeout,
                } => {
                    if !matches!(r#type.as_str(), "localfs" | "posixfs") {
                        bail!("--type must be localfs or posixfs, got {type:?}", type = r#type);
                    }
                    let mut storage = json!({"type": r#type, "path": path});
                    if let Some(v) = vfs_type {
                        storage["vfs_type"] = json!(v);
                    }
                    if let Some(o) = mount_options {
                        storage["mount_options"] = json!(o);
                    }
                    let sd = sess
                        .call(
                            "POST",
                            "/storagedomains",
                            Some(json!({"name": name, "type": "data", "host": {"name": host}, "storage": storage})),
                        )
                        .await?;
                    let sd_id = sd["id"].as_str().unwrap_or_default().to_string();
                    out(&format!("storage domain {name} added ({sd_id})"));
                    if let Some(dc) = attach_to {
                        let d = sess.find("datacenters", "data_center", &dc).await?;
                        let dc_id = d["id"].as_str().unwrap_or_default().to_string();
                        sess.call(
                            "POST",
                            &format!("/datacenters/{dc_id}/storagedomains"),
                            Some(json!({"id": sd_id})),
                        )
                        .await?;
                        rest::wait_status(
                            &sess,
                            &format!("storage domain {name} in {dc}"),
                            &format!("/datacenters/{dc_id}/storagedomains/{sd_id}"),
                            &["active"],
                            Duration::from_secs(timeout),
                        )
                        .await?;
                    }
                    Ok(())
                }
            }
        }
        Cmd::Hosts { api, cmd } => {
            let sess = rest::Session::open(api).await?;
            match cmd {
                HostCmd::List => rest::hosts_list(&sess).await,
                HostCmd::Show { name } => {
                    let h = sess.find("hosts", "host", &name).await?;
                    rest::show(&sess, &h)
                }
                HostCmd::Add {
                    name,
                    address,
                    token,
                    cluster,
                } => {
                    let h = sess
                        .call("POST", "/hosts", Some(json!({"name": name, "address": address, "root_password": token, "cluster": {"name": cluster}})))
                        .await?;
                    let id = h["id"].as_str().unwrap_or_default().to_string();
                    rest::wait_status(
                        &sess,
                        &format!("host {name}"),
                        &format!("/hosts/{id}"),
                        &["up"],
                        Duration::from_secs(120),
                    )
                    .await
                }
                HostCmd::JoinToken {
                    host_name,
                    cluster,
                    expires_in,
                } => {
                    let mut body =
                        json!({"cluster": {"name": cluster}, "expires_in": expires_in.to_string()});
                    if let Some(n) = host_name {
                        body["host_name"] = json!(n);
                    }
                    let t = sess.call("POST", "/jointokens", Some(body)).await?;
                    let token = t["token"]
                        .as_str()
                        .ok_or_else(|| anyhow::anyhow!("the Manager answered no token: {t}"))?;
                    println!("{token}");
                    Ok(())
                }
                HostCmd::Approve { name, cluster } => {
                    let h = sess.find("hosts", "host", &name).await?;
                    let id = h["id"].as_str().unwrap_or_default().to_string();
                    sess.call(
                        "POST",
                        &format!("/hosts/{id}/approve"),
                        Some(json!({"cluster": {"name": cluster}})),
                    )
                    .await?;
                    rest::wait_status(
                        &sess,
                        &format!("host {name}"),
                        &format!("/hosts/{id}"),
                        &["up"],
                        Duration::from_secs(120),
                    )
                    .await
                }
                HostCmd::Stop { ref name }
                | HostCmd::Start { ref name }
                | HostCmd::Remove { ref name } => {
                    let h = sess.find("hosts", "host", name).await?;
                    let id = h["id"].as_str().unwrap_or_default().to_string();
                    let (m, path) = match &cmd {
                        HostCmd::Stop { .. } => ("POST", format!("/hosts/{id}/deactivate")),
                        HostCmd::Start { .. } => ("POST", format!("/hosts/{id}/activate")),
                        _ => ("DELETE", format!("/hosts/{id}")),
                    };
                    sess.call(m, &path, if m == "POST" { Some(json!({})) } else { None })
                        .await?;
                    out(&format!("host {name}: done"));
                    Ok(())
                }
            }
        }
        Cmd::Vms { api, cmd } => {
            let sess = rest::Session::open(api).await?;
            match cmd {
                VmCmd::List => rest::vms_list(&sess).await,
                VmCmd::Show { name } => {
                    let v = sess.find("vms", "vm", &name).await?;
                    rest::show(&sess, &v)?;
                    rest::guest_summary(&sess, &v).await
                }
                VmCmd::Add {
                    name,
                    cluster,
                    memory,
                    cpus,
                    kernel,
                    initrd,
                    cmdline,
                    nic,
                } => {
                    let body = rest::vm_body(
                        &name,
                        &cluster,
                        rest::parse_size(&memory)?,
                        cpus,
                        kernel.as_deref(),
                        initrd.as_deref(),
                        cmdline.as_deref(),
                    );
                    let v = sess.call("POST", "/vms", Some(body)).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    if nic {
                        sess.call(
                            "POST",
                            &format!("/vms/{id}/nics"),
                            Some(json!({"name": "nic1", "interface": "virtio"})),
                        )
                        .await?;
                    }
                    out(&format!("vm {name} added: {id}"));
                    Ok(())
                }
                VmCmd::Start { name, timeout } => {
                    let v = sess.find("vms", "vm", &name).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    sess.call("POST", &format!("/vms/{id}/start"), Some(json!({})))
                        .await?;
                    rest::wait_status(
                        &sess,
                        &format!("vm {name}"),
                        &format!("/vms/{id}"),
                        &["up"],
                        Duration::from_secs(timeout),
                    )
                    .await
                }
                VmCmd::Stop { ref name } | VmCmd::Shutdown { ref name } => {
                    let v = sess.find("vms", "vm", name).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    let action = if matches!(cmd, VmCmd::Stop { .. }) {
                        "stop"
                    } else {
                        "shutdown"
                    };
                    sess.call("POST", &format!("/vms/{id}/{action}"), Some(json!({})))
                        .await?;
                    rest::wait_status(
                        &sess,
                        &format!("vm {name}"),
                        &format!("/vms/{id}"),
                        &["down"],
                        Duration::from_secs(180),
                    )
                    .await
                }
                VmCmd::Console { name } => {
                    let v = sess.find("vms", "vm", &name).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    console::serial(&sess, &id, &name).await
                }
                VmCmd::Remove { name } => {
                    let v = sess.find("vms", "vm", &name).await?;
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    sess.call("DELETE", &format!("/vms/{id}"), None).await?;
                    out(&format!("vm {name} removed"));
                    Ok(())
                }
            }
        }
        Cmd::Events { api, cmd } => {
            let sess = rest::Session::open(api).await?;
            match cmd {
                EventCmd::List { max } => rest::events_list(&sess, max).await,
            }
        }
        Cmd::AgentEvents { conn, count } => {
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
