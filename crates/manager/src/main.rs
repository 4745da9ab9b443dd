//! `halyard-manager`: the Manager daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use halyard_manager::config::Config;
use halyard_manager::state::Manager;
use tracing::info;

/// mimalloc: see `halyard_manager::memory` for why and how its memory is returned.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Halyard Manager: oVirt Engine API v4, host registration and monitoring"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (overrides the config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on (overrides the config; e.g. 127.0.0.1, or :: for every
    /// address).
    #[arg(long)]
    listen: Option<String>,
    /// HTTPS port (overrides the config).
    #[arg(long)]
    port: Option<u16>,
    /// A name (DNS name or address) of the Manager's HTTPS certificate (repeatable;
    /// replaces the configured names).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Database URL (overrides the config; default SQLite in the data dir).
    #[arg(long)]
    database: Option<String>,
    /// Auto-approve hosts whose name or address matches (repeatable; `*` wildcard).
    #[arg(long = "auto-approve")]
    auto_approve: Vec<String>,
    /// Print the default configuration and exit.
    #[arg(long)]
    default_config: bool,
}

fn main() -> anyhow::Result<()> {
    halyard_manager::memory::limit_arenas();
    halyard_common::logging::init("info");
    let cli = Cli::parse();
    if cli.default_config {
        print!("{}", toml::to_string(&Config::default())?);
        return Ok(());
    }
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Config::default(),
    };
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = cli.listen {
        cfg.address = l;
    }
    if let Some(p) = cli.port {
        cfg.port = p;
    }
    if !cli.names.is_empty() {
        cfg.names = cli.names;
    }
    if let Some(d) = cli.database {
        cfg.database = Some(d);
    }
    cfg.auto_approve.extend(cli.auto_approve);
    cfg.validate()?;
    // Everything the Manager writes (database, keys, password file) is its own.
    halyard_common::fsutil::private_umask();
    halyard_common::fsutil::restrict_dir(&cfg.data_dir)
        .with_context(|| format!("securing {}", cfg.data_dir.display()))?;
    let nofile = halyard_common::net::raise_nofile_limit();
    info!(nofile, "open file limit");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let m = Manager::open(cfg).await?;
        // Resume monitoring of the hosts it knows.
        // Until the first answer, a host that was up shows as connecting: the scheduler
        // places VMs only on hosts whose state and free memory are known.
        let hosts: Vec<(String, String)> = m
            .read()
            .hosts
            .values()
            .filter(|h| !matches!(h.status.as_str(), "pending_approval" | "maintenance"))
            .map(|h| (h.id.clone(), h.status.clone()))
            .collect();
        for (h, status) in hosts {
            if status == "up" {
                m.set_host_status(&h, "connecting").await;
            }
            m.monitor(&h);
        }
        tokio::spawn(halyard_manager::memory::trim_periodically());
        tokio::spawn(m.clone().pool_loop());
        tokio::spawn(halyard_manager::api::vmpools::monitor(m.clone()));
        info!("Manager ready");
        halyard_manager::server::serve(m).await
    })
}
