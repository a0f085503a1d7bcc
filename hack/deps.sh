#!/usr/bin/env bash
# Installs what nftpol needs to build and what its tests need to run, from Debian's packages;
# with --test-tools also Chromium (tests/browser.rs drives the HTML pages in it, headless), the
# Python YAML module (hack/chart-check.py, hack/doc-check.py), iperf3 (hack/compare) and
# cargo-deny (hack/test.sh's license, ban and source checks), built from crates.io at a pinned
# version; with --bench-tools also iptables and ipset (the comparison layout of
# `cargo bench --bench packets`, which runs this itself when they are missing). Idempotent:
# only installs what is missing. Needs root.
set -euo pipefail

packages=(
  pkg-config libnftnl-dev libmnl-dev   # build: the nftnl and mnl crates link these
  nftables iproute2 conntrack kmod     # tests: nft (render oracle), ip netns, conntrack
  procps                               # sysctl for br_netfilter checks
  python3 openssl                      # tests/kubectl_plugin.rs: a fake kubelet (TLS) for pods/log
)
if [ "${1:-}" = "--test-tools" ]; then
  packages+=(python3 python3-yaml)     # hack/chart-check.py, hack/doc-check.py
  packages+=(chromium)                 # tests/browser.rs: the HTML pages in a real browser
  packages+=(iperf3)                   # hack/compare/run.sh: one stream's throughput
fi
if [ "${1:-}" = "--bench-tools" ]; then
  packages+=(iptables ipset)           # benches/packets.rs: the kube-router-style layout
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust 1.89 or later: Cargo.toml's rust-version) is required and not installed" >&2
  exit 1
fi

# Built from source: several minutes the first time (no prebuilt binary can be fetched here).
CARGO_DENY_VERSION=0.20.2
if [ "${1:-}" = "--test-tools" ] &&
  [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "installing cargo-deny $CARGO_DENY_VERSION (a few minutes)"
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi
