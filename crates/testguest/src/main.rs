//! `halyard-testguest`: builds (or finds in the cache) the tiny test guest and prints
//! where its kernel and initramfs are; `halyard-testguest debian` does the same for the
//! Debian 12 UEFI disk image.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Build Halyard's test guests from Debian packages")]
struct Args {
    /// Cache directory (default: $HALYARD_GUEST_CACHE or /var/cache/halyard/test-guest).
    #[arg(long, global = true)]
    cache_dir: Option<std::path::PathBuf>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The tiny guest: the Debian kernel and a busybox initramfs (the default).
    Tiny,
    /// The Debian 12 disk image (UEFI, cloud-init, qemu-guest-agent, OpenSSH), as
    /// qcow2. Needs root; the first build takes several minutes.
    Debian,
}

fn main() -> anyhow::Result<()> {
    halyard_common::logging::init("info");
    let args = Args::parse();
    let cache = args
        .cache_dir
        .unwrap_or_else(halyard_testguest::default_cache_dir);
    match args.command.unwrap_or(Cmd::Tiny) {
        Cmd::Tiny => {
            let img = halyard_testguest::ensure(&cache, &halyard_testguest::Agent::QemuGa)
                .context("building the test guest")?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "kernel": img.kernel,
                        "initrd": img.initrd,
                        "manifest": img.manifest,
                    })
                );
            } else {
                println!("kernel: {}", img.kernel.display());
                println!("initrd: {}", img.initrd.display());
                println!("kernel package: {}", img.manifest.kernel_package);
            }
        }
        Cmd::Debian => {
            let img = halyard_testguest::ensure_debian(&cache)
                .context("building the Debian test image")?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "disk": img.disk,
                        "manifest": img.manifest,
                    })
                );
            } else {
                println!("disk: {}", img.disk.display());
                println!(
                    "kernel: {} {}",
                    img.manifest.kernel_package, img.manifest.kernel_version
                );
                println!("cmdline: {}", img.manifest.cmdline);
                println!("default user: {}", img.manifest.default_user);
            }
        }
    }
    Ok(())
}
