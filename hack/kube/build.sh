#!/usr/bin/env bash
# Makes sure the control plane of nftpol's end-to-end tests is built: kube-apiserver,
# kube-controller-manager, kubectl and etcd, built from the Go module proxy by
# hack/cluster/build.sh (its `kube` part, cached in ${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}/bin),
# and that the tools the hack/kube scripts run are installed.
#
# Why a wrapper: the real cluster (hack/cluster) and these scripts run the same binaries, so one
# script owns the build. Idempotent: once built, it only checks and prints the folder.
#
# Usage: hack/kube/build.sh          (prints the folder that holds the binaries on its last line)
# Env:   NFTPOL_KUBE_BIN=DIR  use the binaries in DIR as they are (no build)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# The tools up.sh and the other scripts run besides the binaries.
missing=()
for t in jq openssl curl ip setsid flock base64; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing tools (${missing[*]}); installing them needs root"
  log "installing the packages of: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
  apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
    jq openssl curl iproute2 util-linux coreutils >/dev/null
fi

if [ -n "${NFTPOL_KUBE_BIN:-}" ]; then
  BIN=$NFTPOL_KUBE_BIN
else
  BIN=$(bash "$here/../cluster/build.sh" kube | tail -n1)
fi
for b in etcd kube-apiserver kube-controller-manager kubectl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b not found after the build"
done
echo "$BIN"
