//! `halyard-hostd`: the host agent daemon, and its development PKI helper.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use halyard_hostd::agent::Agent;
use halyard_hostd::config::Config;
use halyard_hostd::identity::Identity;
use halyard_hostd::libvirt::Libvirt;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "Halyard host agent: VMs through libvirt, VDSM's protocol on port 54321"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone, Default)]
struct RunArgs {
    /// Configuration file (TOML); defaults apply to missing keys.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the config).
    #[arg(long)]
    listen: Option<String>,
    /// Port to listen on (overrides the config; 0 picks a free port).
    #[arg(long)]
    port: Option<u16>,
    /// Domain type for guests: kvm or qemu (overrides the config).
    #[arg(long)]
    domain_type: Option<String>,
    /// State directory (overrides the config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory holding hostd.pem, hostd.key and ca.pem (overrides the config).
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Register with this Manager (https://host:port) when there is no certificate yet.
    #[arg(long)]
    manager: Option<String>,
    /// SHA-256 fingerprint of the Manager's CA to check at registration.
    #[arg(long)]
    manager_ca_fingerprint: Option<String>,
    /// Name and address to register with (default: the host name).
    #[arg(long)]
    host_name: Option<String>,
    #[arg(long)]
    address: Option<String>,
    /// Wait for enrollment by a Manager that presents this one-time token.
    #[arg(long)]
    enroll_token: Option<String>,
    /// A directory whose kernels, initrds and ISOs VMs may use (repeatable; replaces
    /// `vm.image_dirs`).
    #[arg(long = "image-dir")]
    image_dirs: Vec<PathBuf>,
    /// Register with a one-time join token the Manager's admin made (approved at once).
    #[arg(long, env = "HALYARD_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run(Box<RunArgs>),
    /// Development PKI until the Manager signs host certificates.
    Pki {
        #[command(subcommand)]
        cmd: PkiCmd,
    },
    /// Print the default configuration.
    DefaultConfig,
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a CA, a host certificate (hostd.pem) and a client certificate (client.pem).
    Init {
        #[arg(long, default_value = "/etc/halyard/pki")]
        dir: PathBuf,
        /// Extra names (DNS or IP) for the host certificate.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue another client certificate signed by the CA in DIR.
    IssueClient {
        #[arg(long, default_value = "/etc/halyard/pki")]
        dir: PathBuf,
        /// Base name of the files (<name>.pem, <name>.key).
        #[arg(long)]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    halyard_common::logging::init("info");
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Pki { cmd }) => pki(cmd),
        Some(Cmd::DefaultConfig) => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(())
        }
        Some(Cmd::Run(args)) => run(*args),
        None => run(cli.run),
    }
}

fn pki(cmd: PkiCmd) -> anyhow::Result<()> {
    match cmd {
        PkiCmd::Init { dir, names, force } => {
            let names = halyard_pki::default_host_names(&names);
            let p = halyard_pki::init_dev_pki(&dir, &names, force)
                .with_context(|| format!("creating the PKI in {}", dir.display()))?;
            println!("CA:     {}", p.hostd.ca.display());
            println!("host:   {} ({})", p.hostd.cert.display(), names.join(", "));
            println!("client: {}", p.client.cert.display());
        }
        PkiCmd::IssueClient { dir, name } => {
            let ca = halyard_pki::Ca::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
            let (c, _) = ca
                .issue(
                    std::slice::from_ref(&name),
                    halyard_pki::Usage::ManagerClient,
                    825,
                )?
                .save(&dir, &name)?;
            println!("client: {}", c.display());
        }
    }
    Ok(())
}

fn load_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = &args.listen {
        cfg.listen.address = l.clone();
    }
    if let Some(p) = args.port {
        cfg.listen.port = p;
    }
    if let Some(t) = &args.domain_type {
        cfg.libvirt.domain_type = t.clone();
    }
    if let Some(s) = &args.state_dir {
        cfg.state_dir = s.clone();
    }
    if let Some(d) = &args.pki_dir {
        cfg.tls.cert = d.join("hostd.pem");
        cfg.tls.key = d.join("hostd.key");
        cfg.tls.ca = d.join("ca.pem");
    }
    if let Some(m) = &args.manager {
        cfg.manager.url = m.clone();
    }
    if let Some(f) = &args.manager_ca_fingerprint {
        cfg.manager.ca_fingerprint = Some(f.clone());
    }
    if let Some(n) = &args.host_name {
        cfg.manager.host_name = n.clone();
    }
    if let Some(a) = &args.address {
        cfg.manager.address = a.clone();
    }
    if let Some(t) = &args.enroll_token {
        cfg.enroll_token = Some(t.clone());
    }
    if !args.image_dirs.is_empty() {
        cfg.vm.image_dirs = args.image_dirs.clone();
    }
    if let Some(t) = &args.join_token {
        cfg.manager.join_token = Some(t.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = load_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("hostd")
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // The state directory is the agent's own (0700, its files 0600).
    halyard_common::fsutil::restrict_dir(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let nofile = halyard_common::net::raise_nofile_limit();
    info!(nofile, "open file limit");
    let addr = cfg.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    halyard_common::fsutil::write_atomic(
        &cfg.state_dir.join("listen.addr"),
        bound.to_string().as_bytes(),
        0o600,
    )?;
    let agent_id = agent_id(&cfg.state_dir)?;
    let identity = if Identity::files_exist(&cfg).context("the TLS identity")? {
        Identity::load(&cfg).context("loading the TLS identity")?
    } else if !cfg.manager.url.is_empty() {
        halyard_hostd::identity::register(&cfg, &agent_id, bound.port())
            .await
            .context("registering with the Manager")?;
        Identity::load(&cfg).context("loading the certificate from the Manager")?
    } else if let Some(t) = cfg.enroll_token.clone() {
        info!("no certificate yet: waiting for enrollment by a Manager");
        Identity::enrollment(&cfg, t)?
    } else {
        bail!(
            "no TLS identity in {}: create a development one with `halyard-hostd pki init`, \
             register with `--manager https://...`, or wait for enrollment with `--enroll-token`",
            cfg.tls.cert.display()
        );
    };
    let identity = Arc::new(identity);
    let uri = cfg.libvirt.uri.clone();
    let virt = tokio::task::spawn_blocking(move || Libvirt::open(&uri))
        .await?
        .with_context(|| format!("connecting to libvirt at {}", cfg.libvirt.uri))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    virt.subscribe(tx)
        .context("registering libvirt event callbacks")?;
    info!(%bound, domain_type = %cfg.libvirt.domain_type, libvirt = %cfg.libvirt.uri, %agent_id, "listening");
    let agent = Agent::new(cfg, identity, agent_id, virt);
    // libvirtd's TLS listener presents the agent's certificate (live migration).
    {
        let a = agent.clone();
        tokio::spawn(async move { halyard_hostd::migration::sync_libvirt_pki(&a.cfg).await });
    }
    if agent.cfg.imageio.enabled {
        let addr = agent.cfg.imageio_addr()?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the image data server to {addr}"))?;
        let bound = l.local_addr()?;
        agent.images.set_port(bound.port());
        info!(%bound, "image data server listening");
        let id = agent.identity.clone();
        tokio::spawn(
            agent
                .images
                .server
                .clone()
                .serve(l, move || id.image_server_config()),
        );
        if agent.cfg.imageio.local_socket {
            // Without it clients use TLS, as with imageio's [local] enable = false.
            match bind_local_image_service(&agent.cfg.storage.run_dir) {
                Ok((l, path)) => {
                    info!(socket = %path, "image data server's local service listening");
                    tokio::spawn(agent.images.server.clone().serve_local(l, path));
                }
                Err(e) => warn!(error = %format!("{e:#}"), "no local image service"),
            }
        }
    }
    tokio::spawn(halyard_hostd::server::serve(agent.clone(), listener));
    match agent.recover().await {
        Ok(n) => info!(adopted = n, "recovery done; ready"),
        Err(e) => bail!("recovery failed: {}", e.message),
    }
    agent.spawn_background(rx);
    if agent.cfg.trim_resident_pages {
        // Once the libraries are loaded and initialised.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let n = tokio::task::spawn_blocking(halyard_hostd::memtrim::trim_file_mappings)
            .await
            .unwrap_or(0);
        tracing::debug!(mappings = n, "trimmed resident library pages");
    }
    wait_for_signal().await;
    info!("stopping (running VMs keep running)");
    Ok(())
}

/// imageio's local service socket: `<run_dir>/imageio/sock`, 0600 in a 0700
/// directory (root only; the ticket is still checked on every request).
fn bind_local_image_service(
    run_dir: &std::path::Path,
) -> anyhow::Result<(tokio::net::UnixListener, String)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = run_dir.join("imageio");
    halyard_common::fsutil::restrict_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((l, path.to_string_lossy().into_owned()))
}

/// The agent's identity: `<state_dir>/agent-id`, created once.
fn agent_id(state_dir: &std::path::Path) -> anyhow::Result<String> {
    let p = state_dir.join("agent-id");
    if let Ok(s) = std::fs::read_to_string(&p) {
        let s = s.trim();
        if halyard_proto::vdsm::is_uuid(s) {
            return Ok(s.to_string());
        }
        warn!(path = %p.display(), "invalid agent id; making a new one");
    }
    let id = uuid::Uuid::new_v4().to_string();
    halyard_common::fsutil::write_atomic(&p, id.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(id)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[allow(dead_code)]
fn _assert_send(a: Arc<Agent>) -> impl Send {
    a
}
