#!/usr/bin/env bash
# Installs what nftpol needs to build and what its tests need to run, from Debian's packages.
# Idempotent: only calls apt-get when something is missing. Needs root.
set -euo pipefail

packages=(
  pkg-config libnftnl-dev libmnl-dev   # build: the nftnl and mnl crates link these
  nftables iproute2 conntrack kmod     # tests: nft (render oracle), ip netns, conntrack
  procps                               # sysctl for br_netfilter checks
)

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
  echo "error: cargo (Rust 1.85 or later, for edition 2024) is required and not installed" >&2
  exit 1
fi
