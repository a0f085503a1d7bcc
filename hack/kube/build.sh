#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager v1.20.2 for nftpol's end-to-end tests,
# and caches both binaries outside the repo.
#
# Why this way: no package registry we can reach ships a kube-apiserver binary. Debian bookworm's
# *source* package `kubernetes` (1.20.5+really1.20.2) ships the whole upstream tree with vendor/,
# so it builds offline. It must be built with Go 1.15 (from Debian bullseye, pinned at a low
# priority): Go >= 1.18 compiles it, but the vendored reflect2 makes the binary crash at run time.
# It must be built with `make` (GOPATH mode through hack/), not `go build`.
# See shared/research/testbed.md, "Q1: a real Kubernetes API server".
#
# Idempotent: if the cached binaries exist and report v1.20.2, it exits at once. Otherwise it
# installs what it needs through apt (adding a deb-src entry for bookworm and the bullseye suite,
# pinned at priority 100, only when missing), downloads the source package, builds, copies the
# binaries to the cache and deletes the build tree (about 2 GB). Needs root for apt.
#
# Usage: hack/kube/build.sh          (prints the folder that holds the binaries on its last line)
# Env:   NFTPOL_KUBE_CACHE  cache folder (default /var/cache/nftpol-kube)
#        NFTPOL_KUBE_KEEP_TREE=1  keep the build tree (for debugging the build)
set -euo pipefail

KUBE_VERSION=v1.20.2
CACHE_ROOT=${NFTPOL_KUBE_CACHE:-/var/cache/nftpol-kube}
CACHE=$CACHE_ROOT/$KUBE_VERSION
BIN=$CACHE/bin
SRC=$CACHE/src        # downloaded source package files (kept: about 35 MB)
TREE=$CACHE/build     # unpacked tree and Go build cache (deleted after a successful build)
GO_ROOT=/usr/lib/go-1.15
BINARIES=(kube-apiserver kube-controller-manager)

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

# True when every cached binary exists and reports the expected version, and the tools that
# up.sh and the other scripts run are installed.
cached_ok() {
  local b
  for b in etcd etcdctl jq openssl curl ip setsid flock; do
    command -v "$b" >/dev/null 2>&1 || return 1
  done
  for b in "${BINARIES[@]}"; do
    [ -x "$BIN/$b" ] || return 1
    "$BIN/$b" --version 2>/dev/null | grep -qw "$KUBE_VERSION" || return 1
  done
}

if cached_ok; then
  echo "$BIN"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "the first build needs root (apt-get); cached binaries not found in $BIN"
mkdir -p "$CACHE"

# One build at a time per cache folder (two test runs may start together).
exec 9>"$CACHE/.lock"
flock 9
if cached_ok; then   # another process built it while we waited
  echo "$BIN"
  exit 0
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-q -o DPkg::Lock::Timeout=600)

# --- apt sources: deb-src for bookworm, bullseye (low priority) for golang-1.15-go ------------
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$MIRROR" ]; then
  MIRROR=$(awk '$1=="deb" && $0 ~ /bookworm/ {for(i=2;i<=NF;i++) if ($i ~ /:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list 2>/dev/null || true)
fi

# Prints every enabled apt entry as "TYPE URI SUITE" lines, from both source formats.
apt_entries() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 ~ /^deb(-src)?$/ { t=$1; i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
         print t, $(i), $(i+1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""; FS="\n"} {
           types=""; uris=""; suites=""; enabled=1
           for (i=1;i<=NF;i++) {
             if ($i ~ /^Types:/)   { types=$i;  sub(/^Types:[ \t]*/,"",types) }
             if ($i ~ /^URIs:/)    { uris=$i;   sub(/^URIs:[ \t]*/,"",uris) }
             if ($i ~ /^Suites:/)  { suites=$i; sub(/^Suites:[ \t]*/,"",suites) }
             if ($i ~ /^Enabled:[ \t]*no/) enabled=0 }
           if (!enabled) next
           nt=split(types,T," "); nu=split(uris,U," "); ns=split(suites,S," ")
           for (a=1;a<=nt;a++) for (b=1;b<=nu;b++) for (c=1;c<=ns;c++) print T[a], U[b], S[c] }' "$f"
  done
}

sources_changed=0
if ! apt_entries | grep -qE '^deb-src [^ ]+ bookworm$'; then
  [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  log "adding deb-src for bookworm"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" > /etc/apt/sources.list.d/nftpol-kube-src.sources
  sources_changed=1
fi
if ! apt_entries | grep -qE '^deb [^ ]+ bullseye$'; then
  [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  log "adding the bullseye suite (pinned at priority 100) for golang-1.15-go"
  printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" > /etc/apt/sources.list.d/nftpol-kube-bullseye.sources
  sources_changed=1
fi
if ! grep -rqsE 'Pin:[ \t]*release[^\n]*n=bullseye' /etc/apt/preferences /etc/apt/preferences.d/; then
  log "pinning bullseye at priority 100"
  printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' > /etc/apt/preferences.d/nftpol-kube-bullseye
  sources_changed=1
fi

# --- packages ------------------------------------------------------------------------------
need=()
[ -x "$GO_ROOT/bin/go" ] || need+=(golang-1.15-go/bullseye)
for p in etcd-server etcd-client rsync jq openssl make curl iproute2 util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
updated=0
if [ "$sources_changed" = 1 ] || [ ${#need[@]} -gt 0 ]; then
  log "apt-get update"
  apt-get "${APT_OPTS[@]}" update
  updated=1
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${need[@]}"
fi
[ -x "$GO_ROOT/bin/go" ] || die "Go 1.15 not found at $GO_ROOT after installing golang-1.15-go"
if cached_ok; then   # only tools were missing
  echo "$BIN"
  exit 0
fi

# --- source package --------------------------------------------------------------------------
mkdir -p "$SRC"
orig() { ls "$SRC"/kubernetes_*really1.20.2*.orig.tar.gz 2>/dev/null | head -n1; }
if [ -z "$(orig)" ]; then
  log "downloading the kubernetes source package (bookworm)"
  [ "$updated" = 1 ] || apt-get "${APT_OPTS[@]}" update
  # _apt must be able to write there, or apt warns and downloads unsandboxed.
  chown _apt "$SRC" 2>/dev/null || true
  (cd "$SRC" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes/bookworm) \
    || die "apt-get source kubernetes failed (is there a deb-src entry for bookworm?)"
  [ -n "$(orig)" ] || die "the downloaded source package is not 1.20.2: $(ls "$SRC")"
fi

# --- build -----------------------------------------------------------------------------------
rm -rf "$TREE"
mkdir -p "$TREE"
log "unpacking $(basename "$(orig)")"
tar -xzf "$(orig)" -C "$TREE"
dir=$(find "$TREE" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -f "$dir/Makefile" ] && [ -d "$dir/vendor" ] || die "unexpected source layout in $TREE"

log "building ${BINARIES[*]} with Go 1.15 (about 5 min on 2 cores)"
(
  cd "$dir"
  # The tarball is a `git archive` export: hack/lib/version.sh has the v1.20.2 stamp built in.
  # nice: this machine is shared with other builds.
  env PATH="$GO_ROOT/bin:$PATH" HOME="$TREE/.home" GOFLAGS= GO111MODULE= CGO_ENABLED=0 \
    nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
) > "$CACHE/build.log" 2>&1 || { tail -n 40 "$CACHE/build.log" >&2; die "make failed; full log in $CACHE/build.log"; }

mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
  f="$dir/_output/bin/$b"
  [ -x "$f" ] || f=$(find "$dir/_output" -type f -name "$b" -perm -u+x | head -n1)
  [ -n "$f" ] && [ -x "$f" ] || die "$b not found under $dir/_output after make"
  install -m 0755 "$f" "$BIN/$b.tmp"
  mv -f "$BIN/$b.tmp" "$BIN/$b"
done
cached_ok || die "built binaries do not report $KUBE_VERSION: $("$BIN/kube-apiserver" --version 2>&1)"

if [ "${NFTPOL_KUBE_KEEP_TREE:-0}" != 1 ]; then
  rm -rf "$TREE"
fi
log "built in $(( $(date +%s) - start )) s"
echo "$BIN"
