//! `halyard-testguest`: builds (or finds in the cache) the tiny test guest and prints
//! where its kernel and initramfs are.

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Build Halyard's tiny test guest from Debian packages"
)]
struct Args {
    /// Cache directory (default: $HALYARD_GUEST_CACHE or /var/cache/halyard/test-guest).
    #[arg(long)]
    cache_dir: Option<std::path::PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    halyard_common::logging::init("info");
    let args = Args::parse();
    let cache = args
        .cache_dir
        .unwrap_or_else(halyard_testguest::default_cache_dir);
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
    Ok(())
}
