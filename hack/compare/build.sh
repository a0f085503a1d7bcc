#!/usr/bin/env bash
# Builds kube-network-policies (sigs.k8s.io/kube-network-policies), the SIG-network reference
# NetworkPolicy enforcer that hack/compare measures nftpol against, from the Go module proxy,
# unchanged: its standard binary (`cmd/`, as its Makefile and Dockerfile build it, CGO off), and
# caches it outside the repo.
#
# The version is the newest the module proxy serves (`go list -m -versions
# sigs.k8s.io/kube-network-policies`: v0.7.0 v0.8.0 on 2026-11-29); pinned, so that a cached
# build stays what was measured.
#
# Idempotent: returns at once when the binary of that version is cached; rebuilds it when missing.
# The cold build time is logged to $CACHE/build-times.
#
# Usage: hack/compare/build.sh     prints the binary's path on its last line
# Env:   NFTPOL_COMPARE_CACHE  (default /var/cache/nftpol-compare)
#        NFTPOL_KNP_VERSION    (default v0.8.0)
set -euo pipefail

KNP_VERSION=${NFTPOL_KNP_VERSION:-v0.8.0}
KNP_MODULE=sigs.k8s.io/kube-network-policies
CACHE=${NFTPOL_COMPARE_CACHE:-/var/cache/nftpol-compare}
BIN=$CACHE/bin
OUT=$BIN/kube-network-policies-$KNP_VERSION
# The module cache is the one hack/cluster/build.sh fills (shared with the other Go builds).
export GOMODCACHE=${NFTPOL_GOMODCACHE:-${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}/gomod}
export GOCACHE=$CACHE/gocache GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { echo "compare/build.sh: $*" >&2; }
die() { echo "compare/build.sh: error: $*" >&2; exit 1; }

if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi
command -v go >/dev/null || die "go is not installed (Go 1.26 is expected on these machines)"
mkdir -p "$BIN" "$GOCACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi

dir=$(go mod download -json "$KNP_MODULE@$KNP_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$dir" ] || die "could not download $KNP_MODULE@$KNP_VERSION"
# The module cache is read-only: build from a copy, whose own go.mod and go.sum decide every
# dependency (as `make build` in a checkout does).
work=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$dir/." "$work/"
chmod -R u+w "$work"
t0=$SECONDS
log "building $KNP_MODULE@$KNP_VERSION (cold: several minutes)"
if ! (cd "$work" && nice -n 5 go build -trimpath -o "$OUT.tmp" ./cmd) >"$CACHE/build-knp.log" 2>&1; then
  tail -n 40 "$CACHE/build-knp.log" >&2
  die "build failed; full log in $CACHE/build-knp.log"
fi
mv "$OUT.tmp" "$OUT"
echo "kube-network-policies-$KNP_VERSION $((SECONDS - t0))s $(date -u +%FT%TZ)" >>"$CACHE/build-times"
log "built in $((SECONDS - t0)) s"
echo "$OUT"
