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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The Manager's directory of users and groups (oVirt's `ovirt-aaa-jdbc-tool`); the
    /// running Manager sees changes at once.
    Directory {
        #[command(subcommand)]
        what: Directory,
    },
}

#[derive(clap::Subcommand)]
enum Directory {
    /// Profiles: `internal` always exists; a profile P is the API's domain P-authz.
    Profile {
        #[command(subcommand)]
        op: ProfileOp,
    },
    User {
        #[command(subcommand)]
        op: UserOp,
    },
    Group {
        #[command(subcommand)]
        op: GroupOp,
    },
    /// Every profile, user and group.
    List,
}

#[derive(clap::Subcommand)]
enum ProfileOp {
    Add { name: String },
}

#[derive(clap::Subcommand)]
enum UserOp {
    /// NAME@PROFILE; without a password the user cannot log in.
    Add {
        name: String,
        /// A file holding the password (never on the command line).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    Password {
        name: String,
        #[arg(long)]
        password_file: PathBuf,
    },
    Remove {
        name: String,
    },
}

#[derive(clap::Subcommand)]
enum GroupOp {
    Add {
        name: String,
    },
    Remove {
        name: String,
    },
    /// Adds USER (NAME@PROFILE) to GROUP.
    AddMember {
        group: String,
        user: String,
    },
    RemoveMember {
        group: String,
        user: String,
    },
}

fn password_from(p: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs a `directory` command against the Manager's database.
async fn directory(cfg: &Config, what: Directory) -> anyhow::Result<()> {
    use halyard_manager::directory as d;
    let db = halyard_manager::db::Db::open(&cfg.database_url()).await?;
    match what {
        Directory::Profile {
            op: ProfileOp::Add { name },
        } => {
            d::add_profile(&db, &name).await?;
            println!("profile {name} added (domain {})", d::authz(&name));
        }
        Directory::User { op } => match op {
            UserOp::Add {
                name,
                password_file,
            } => {
                let pw = password_file.as_deref().map(password_from).transpose()?;
                let u = d::add_user(&db, &name, pw.as_deref()).await?;
                println!("user {} added (id {})", u.name, u.id);
            }
            UserOp::Password {
                name,
                password_file,
            } => {
                d::set_password(&db, &name, &password_from(&password_file)?).await?;
                println!("password of {name} set");
            }
            UserOp::Remove { name } => {
                d::remove_user(&db, &name).await?;
                println!("user {name} removed");
            }
        },
        Directory::Group { op } => match op {
            GroupOp::Add { name } => {
                let g = d::add_group(&db, &name).await?;
                println!("group {} added (id {})", g.name, g.id);
            }
            GroupOp::Remove { name } => {
                d::remove_group(&db, &name).await?;
                println!("group {name} removed");
            }
            GroupOp::AddMember { group, user } => {
                d::set_member(&db, &group, &user, true).await?;
                println!("{user} is a member of {group}");
            }
            GroupOp::RemoveMember { group, user } => {
                d::set_member(&db, &group, &user, false).await?;
                println!("{user} is no longer a member of {group}");
            }
        },
        Directory::List => {
            let dir = d::load(&db).await?;
            for p in &dir.profiles {
                println!("profile {p} (domain {})", d::authz(p));
            }
            for u in &dir.users {
                let login = if u.hash.is_empty() {
                    "no password"
                } else {
                    "password set"
                };
                println!("user {} ({login})", u.name);
            }
            for g in &dir.groups {
                println!("group {} members: {}", g.name, g.members.join(" "));
            }
        }
    }
    Ok(())
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
    if let Some(Command::Directory { what }) = cli.command {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(directory(&cfg, what));
    }
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
        tokio::spawn(m.clone().ha_loop());
        tokio::spawn(m.clone().fencing_loop());
        tokio::spawn(halyard_manager::api::vmpools::monitor(m.clone()));
        m.pause_interrupted_transfers().await;
        tokio::spawn(m.clone().watch_transfers());
        info!("Manager ready");
        halyard_manager::server::serve(m).await
    })
}
