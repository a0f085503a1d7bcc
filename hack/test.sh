#!/usr/bin/env bash
# Runs every check and test of nftpol: formatting, clippy, and `cargo test` (unit, conformance,
# and the real-kernel dataplane tests, which need root for network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
