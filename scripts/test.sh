#!/bin/bash
# Runs Halyard's whole test suite (what CI runs), as root on Debian 12: installs the
# packages, checks formatting and lints, then runs every test with nextest. Tests that
# need libvirtd start it themselves (see crates/testinfra).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "==> tests"
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest not found; installing it"
  cargo install --locked cargo-nextest
fi
exec cargo nextest run --locked --workspace --profile ci "$@"
