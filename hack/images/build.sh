#!/usr/bin/env bash
# Makes the cluster's container images on this machine, with no registry: OCI archives in
# $NFTPOL_IMAGES_CACHE (default /var/cache/nftpol-images) that `ctr -n k8s.io images import FILE`
# loads under their full names (see hack/images/README.md):
#   pause.tar    registry.k8s.io/pause:<containerd's default sandbox tag>, our hack/images/pause
#   agnhost.tar  registry.k8s.io/e2e-test-images/agnhost:<the tag e2e.test asks for>
#   nftpol.tar   docker.io/library/nftpol:<tag of manifests/daemonset.yaml>, from ./Dockerfile
# Each archive is rebuilt only when it is missing or its inputs changed (a hash of them is kept
# beside it in NAME.inputs). Debian bases (mmdebstrap) and buildah's storage live under
# $CACHE/base/ and /var/lib/containers; only finished images are *.tar at the top of $CACHE.
#
# Usage: hack/images/build.sh [--check] [pause|agnhost|nftpol|bases]...   (default: all three)
#   --check   also verify each archive's structure and digests (hack/images/oci.py check)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/hack/images
CACHE=${NFTPOL_IMAGES_CACHE:-/var/cache/nftpol-images}
BASES=$CACHE/base
CLUSTER_CACHE=${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}
GOMODCACHE_DIR=${NFTPOL_GOMODCACHE:-$CLUSTER_CACHE/gomod}
KUBE_VERSION=${NFTPOL_KUBE_VERSION:-$(cat "$CLUSTER_CACHE/kube.version" 2>/dev/null || echo 1.37.2)}
CONTAINERD_VERSION=${NFTPOL_CONTAINERD_VERSION:-$(cat "$CLUSTER_CACHE/containerd.version" 2>/dev/null || echo v2.4.2)}
AGNHOST_BIN=${NFTPOL_AGNHOST_BIN:-$CLUSTER_CACHE/bin/agnhost}
E2E_TEST=$CLUSTER_CACHE/bin/e2e.test
SUITE=bookworm
# The mirrors apt uses on these machines (/etc/apt/sources.list.d/debian.sources).
DEBIAN_MIRROR=${NFTPOL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${NFTPOL_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Host toolchain copied into the local stand-in for rust:1-bookworm (no registry to pull it from).
RUST_TOOLCHAIN_DIR=${NFTPOL_RUST_TOOLCHAIN:-$(rustc --print sysroot 2>/dev/null || true)}
RUSTUP_BIN=${NFTPOL_RUSTUP:-$(command -v rustup || true)}
BUILDAH=(buildah --storage-driver "${NFTPOL_BUILDAH_DRIVER:-overlay}")
export BUILDAH_ISOLATION=chroot # no runc/crun needed, and no user namespaces involved
NICE=(nice -n 10)               # these machines are shared with long Go and Rust builds

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
hash_of() { sha256sum | cut -c1-64; }
WORKDIRS=()
cleanup() { [ ${#WORKDIRS[@]} -eq 0 ] || rm -rf "${WORKDIRS[@]}"; }
trap cleanup EXIT
workdir() { mktemp -d "$CACHE/.$1.XXXXXX"; } # callers add the result to WORKDIRS

# fresh NAME HASH: the cached archive NAME.tar exists and was made from inputs hashing to HASH.
fresh() { [ -s "$CACHE/$1.tar" ] && [ "$(cat "$CACHE/$1.inputs" 2>/dev/null)" = "$2" ]; }
record() { # record NAME HASH SECONDS
  echo "$2" >"$CACHE/$1.inputs"
  echo "$1 $3 s $(du -m "$CACHE/$1.tar" | cut -f1) MB $(date -u +%FT%TZ)" >>"$CACHE/build-times"
  log "$1: built in $3 s, $(du -h "$CACHE/$1.tar" | cut -f1): $CACHE/$1.tar"
}

# --- names -----------------------------------------------------------------------------------
# containerd's CRI asks the kubelet's runtime for this sandbox image unless configured otherwise.
pause_ref() {
  local src=$GOMODCACHE_DIR/github.com/containerd/containerd/v2@$CONTAINERD_VERSION/internal/cri/config/config.go
  if [ -f "$src" ]; then
    sed -n 's/^[[:space:]]*DefaultSandboxImage[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$src"
  else
    echo registry.k8s.io/pause:3.10.2
  fi
}

# The name the e2e framework gives imageutils.Agnhost: from test/utils/image/manifest.go of the
# Kubernetes the cluster runs, cross-checked against `e2e.test --list-images` once it exists
# (which also lists AgnhostPrev and the private-registry agnhost, so it cannot pick one alone).
agnhost_ref() {
  local src=$GOMODCACHE_DIR/k8s.io/kubernetes@v$KUBE_VERSION/test/utils/image/manifest.go ref
  [ -f "$src" ] || die "$src missing: run hack/cluster/build.sh first"
  local reg tag
  reg=$(sed -n 's/^[[:space:]]*PromoterE2eRegistry:[[:space:]]*"\(.*\)",/\1/p' "$src")
  tag=$(sed -n 's/^[[:space:]]*configs\[Agnhost\][[:space:]]*=[[:space:]]*Config{list.PromoterE2eRegistry, "agnhost", "\(.*\)"}/\1/p' "$src")
  [ -n "$reg" ] && [ -n "$tag" ] || die "could not read agnhost's registry/tag from $src"
  ref=$reg/agnhost:$tag
  if [ -x "$E2E_TEST" ]; then
    local listed # not piped into grep -q: with pipefail, its early exit would fail the pipe
    listed=$("$E2E_TEST" --list-images 2>/dev/null) || die "$E2E_TEST --list-images failed"
    grep -qxF "$ref" <<<"$listed" || die "$E2E_TEST --list-images does not list $ref"
  fi
  echo "$ref"
}

# What the manifests' `image: nftpol:TAG` means to containerd: a name without a registry is
# docker.io/library/NAME.
nftpol_ref() {
  local img
  img=$(sed -n 's/^[[:space:]]*image:[[:space:]]*\(nftpol:[^[:space:]]*\)/\1/p' "$REPO/manifests/daemonset.yaml" | head -n 1)
  [ -n "$img" ] || die "no 'image: nftpol:...' in manifests/daemonset.yaml"
  echo "docker.io/library/$img"
}

# --- Debian bases (mmdebstrap) ---------------------------------------------------------------
# debian:bookworm-slim is minbase as the official slim images are made (debuerreotype): /usr
# merged by symlinks with usr-is-merged (not the usrmerge package, which pulls in perl), docs,
# man pages and locales left out by dpkg (--slimify), and apt told to keep no package caches
# (the official images' /etc/apt/apt.conf.d/docker-clean). Both stay in the image, so packages
# installed later are slimmed too and an `apt-get install` layer carries no 80 MB *.bin cache.
DOCKER_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'
SLIM_DPKG=(
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # Written after the bootstrap: during it, apt runs outside the chroot and would run the hook's
  # rm on this machine's own cache.
  --customize-hook="printf '%s\n' '$DOCKER_CLEAN' >\"\$1/etc/apt/apt.conf.d/docker-clean\""
  --customize-hook='printf "Acquire::Languages \"none\";\n" >"$1/etc/apt/apt.conf.d/docker-no-languages"'
  # The merged-usr hook's apt run leaves its 75 MB package caches behind.
  --customize-hook='rm -f "$1"/var/cache/apt/*.bin'

  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/groff/*'
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/locale/*'
)
# rust:1-bookworm is buildpack-deps:bookworm plus rustup; of buildpack-deps, a Rust build needs
# a C toolchain (cc as linker, for build scripts), TLS roots (crates.io) and make.
BUILD_INCLUDE=ca-certificates,curl,gcc,libc6-dev,make,xz-utils
MIRRORS=("deb $DEBIAN_MIRROR $SUITE main" "deb $DEBIAN_MIRROR $SUITE-updates main"
  "deb $SECURITY_MIRROR $SUITE-security main")

# rootfs NAME ARGS...: $BASES/NAME.tar from `mmdebstrap --variant=minbase ARGS`, cached by ARGS.
rootfs() {
  local name=$1 h t0=$SECONDS; shift
  h=$( (mmdebstrap --version; printf '%s\n' "$SUITE" "$@" "${MIRRORS[@]}") | hash_of)
  if [ -s "$BASES/$name.tar" ] && [ "$(cat "$BASES/$name.inputs" 2>/dev/null)" = "$h" ]; then
    return 0
  fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap missing: apt-get install mmdebstrap"
  log "$name: mmdebstrap --variant=minbase $SUITE $*"
  mkdir -p "$BASES"
  "${NICE[@]}" mmdebstrap --quiet --mode=root --variant=minbase --format=tar "$@" \
    "$SUITE" "$BASES/$name.tar.partial" "${MIRRORS[@]}" >&2
  mv "$BASES/$name.tar.partial" "$BASES/$name.tar"
  echo "$h" >"$BASES/$name.inputs"
  log "$name: $((SECONDS - t0)) s, $(du -h "$BASES/$name.tar" | cut -f1)"
}

base_slim() { rootfs bookworm-slim "${SLIM_DPKG[@]}"; }
base_build() { rootfs bookworm-build --include="$BUILD_INCLUDE"; }

# --- pause -----------------------------------------------------------------------------------
build_pause() {
  local ref h t0=$SECONDS work
  ref=$(pause_ref)
  h=$( (echo "$ref"; go version; cat "$HERE/pause/go.mod" "$HERE/pause/main.go" "$HERE/oci.py") | hash_of)
  log "pause: $ref"
  fresh pause "$h" && { log "pause: up to date"; return 0; }
  work=$(workdir pause)
  WORKDIRS+=("$work")
  mkdir "$work/root"
  (cd "$HERE/pause" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 \
    "${NICE[@]}" go build -trimpath -ldflags '-s -w' -o "$work/root/pause" .)
  tar --create --file "$work/layer.tar" --directory "$work/root" --sort=name --mtime=@0 \
    --owner=0 --group=0 --numeric-owner pause
  python3 "$HERE/oci.py" pack --out "$CACHE/pause.tar" --name "$ref" --entrypoint '["/pause"]' \
    --user 65535:65535 \
    --layer "$work/layer.tar=COPY pause /pause (hack/images/pause, CGO_ENABLED=0)" >&2
  rm -rf "$work"
  record pause "$h" $((SECONDS - t0))
}

# --- agnhost ---------------------------------------------------------------------------------
# Upstream's image is Alpine with agnhost and network tools; the suites need only /agnhost and,
# for network-policy-api's `/bin/bash -c`, bash and coreutils: the slim base has both.
build_agnhost() {
  local ref h t0=$SECONDS work
  ref=$(agnhost_ref)
  log "agnhost: $ref"
  if [ ! -x "$AGNHOST_BIN" ]; then
    # hack/cluster/build.sh builds it with the other Kubernetes binaries; a second Go build of
    # it here would only compete with that one.
    log "agnhost: waiting for $AGNHOST_BIN (hack/cluster/build.sh)"
    local deadline=$((SECONDS + ${NFTPOL_AGNHOST_WAIT:-3600}))
    until [ -x "$AGNHOST_BIN" ]; do
      [ "$SECONDS" -lt "$deadline" ] || die "$AGNHOST_BIN did not appear"
      sleep 10
    done
  fi
  [[ "$(file -b "$AGNHOST_BIN")" == *"statically linked"* ]] || die "$AGNHOST_BIN is not static"
  base_slim
  h=$( (echo "$ref"; cat "$BASES/bookworm-slim.inputs"; sha256sum <"$AGNHOST_BIN"; cat "$HERE/oci.py") | hash_of)
  fresh agnhost "$h" && { log "agnhost: up to date"; return 0; }
  work=$(workdir agnhost)
  WORKDIRS+=("$work")
  mkdir -p "$work/root/uploads"
  install -m 0755 "$AGNHOST_BIN" "$work/root/agnhost"
  ln -s agnhost "$work/root/agnhost-2" # as upstream's image has it
  tar --create --file "$work/layer.tar" --directory "$work/root" --sort=name --mtime=@0 \
    --owner=0 --group=0 --numeric-owner agnhost agnhost-2 uploads
  python3 "$HERE/oci.py" pack --out "$CACHE/agnhost.tar" --name "$ref" \
    --entrypoint '["/agnhost"]' --cmd '["pause"]' \
    --layer "$BASES/bookworm-slim.tar=mmdebstrap --variant=minbase $SUITE (slim)" \
    --layer "$work/layer.tar=COPY agnhost /agnhost (k8s.io/kubernetes v$KUBE_VERSION test/images/agnhost)" >&2
  rm -rf "$work"
  record agnhost "$h" $((SECONDS - t0))
}

# --- nftpol (buildah, from ./Dockerfile) -----------------------------------------------------
# buildah_base REF HASH ROOTFS [--rust] [buildah config args...]: REF in buildah's storage,
# made from a rootfs tar, unless the image there was made from the same inputs.
buildah_base() {
  local ref=$1 h=$2 rootfs=$3 stamp c mnt old; shift 3
  stamp=$BASES/$(echo "$ref" | tr '/:' '__').buildah
  old=$("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$ref" 2>/dev/null || true)
  [ "$(cat "$stamp" 2>/dev/null)" != "$h $old" ] || return 0
  log "buildah: $ref from $rootfs"
  c=$("${BUILDAH[@]}" from scratch)
  mnt=$("${BUILDAH[@]}" mount "$c")
  tar --extract --file "$rootfs" --directory "$mnt" --numeric-owner --same-permissions \
    --xattrs --xattrs-include='*'
  if [ "${1:-}" = --rust ]; then
    shift
    install_toolchain "$mnt"
    install_host_cas "$mnt"
  fi
  "${BUILDAH[@]}" umount "$c" >/dev/null
  "${BUILDAH[@]}" config "$@" --cmd '["bash"]' "$c"
  "${BUILDAH[@]}" commit --quiet --rm "$c" "$ref" >/dev/null
  # The base it replaces, unless cached build steps still stand on it.
  [ -z "$old" ] || "${BUILDAH[@]}" rmi "$old" >/dev/null 2>&1 || true
  echo "$h $("${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$ref")" >"$stamp"
}

# The stand-in for the official image's `rustup-init --profile minimal`: this machine's
# toolchain (without its HTML docs) under the official image's RUSTUP_HOME and CARGO_HOME, with
# rustup and its proxies, so that `cargo` resolves the same way.
rust_version() { "$RUST_TOOLCHAIN_DIR/bin/rustc" --version | cut -d' ' -f2; }
install_toolchain() {
  local root=$1 name
  name=$(rust_version)-x86_64-unknown-linux-gnu
  mkdir -p "$root/usr/local/rustup/toolchains/$name" "$root/usr/local/cargo/bin"
  tar --create --directory "$RUST_TOOLCHAIN_DIR" --exclude=./share/doc . |
    tar --extract --directory "$root/usr/local/rustup/toolchains/$name"
  sed -i '/^rust-docs-/d' "$root/usr/local/rustup/toolchains/$name/lib/rustlib/components"
  rm -f "$root/usr/local/rustup/toolchains/$name"/lib/rustlib/manifest-rust-docs-*
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
    "$name" >"$root/usr/local/rustup/settings.toml"
  install -m 0755 "$RUSTUP_BIN" "$root/usr/local/cargo/bin/rustup"
  local p
  for p in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt; do
    ln -f "$root/usr/local/cargo/bin/rustup" "$root/usr/local/cargo/bin/$p"
  done
}

# Certificates this machine trusts beyond Debian's ca-certificates (here: the TLS-intercepting
# egress proxy's CA). Without them cargo cannot reach crates.io from inside the build. Only the
# build stage's base gets them; the runtime image has no CA store at all.
host_cas() {
  python3 - <<'EOF'
import glob, re
pem = r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----"
debian = set()
for f in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True):
    debian.update(re.findall(pem, open(f).read(), re.S))
try:
    host = re.findall(pem, open("/etc/ssl/certs/ca-certificates.crt").read(), re.S)
except FileNotFoundError:
    host = []
for c in host:
    if c not in debian:
        print(c)
EOF
}
install_host_cas() {
  local root=$1 n
  [ -s "$BASES/host-cas.pem" ] || return 0
  n=$(grep -c -- '-----BEGIN CERTIFICATE-----' "$BASES/host-cas.pem")
  # update-ca-certificates, should a later step run it, keeps what is in /usr/local/share.
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp "$BASES/host-cas.pem" "$root/usr/local/share/ca-certificates/build-host.crt"
  cat "$BASES/host-cas.pem" >>"$root/etc/ssl/certs/ca-certificates.crt"
  log "rust:1-bookworm: trusts $n certificate(s) of this machine beyond Debian's"
}

# The context's files as .dockerignore leaves them (plain patterns, as that file promises).
context_hash() {
  python3 - "$REPO" <<'EOF'
import fnmatch, hashlib, os, sys
root = sys.argv[1]
pats = [l.strip().rstrip("/") for l in open(os.path.join(root, ".dockerignore"))
        if l.strip() and not l.startswith("#")]
def ignored(rel):
    for p in pats:
        if p.startswith("**/"):
            if any(fnmatch.fnmatch(part, p[3:]) for part in rel.split("/")):
                return True
        elif fnmatch.fnmatch(rel, p) or rel.startswith(p + "/"):
            return True
    return False
h = hashlib.sha256()
for d, dirs, files in os.walk(root):
    rel_d = os.path.relpath(d, root)
    dirs[:] = sorted(x for x in dirs if not ignored(os.path.normpath(os.path.join(rel_d, x))))
    for f in sorted(files):
        rel = os.path.normpath(os.path.join(rel_d, f))
        if ignored(rel):
            continue
        h.update(rel.encode() + b"\0")
        with open(os.path.join(d, f), "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
print(h.hexdigest())
EOF
}

bases_buildah() {
  local h
  command -v buildah >/dev/null || die "buildah missing: apt-get install --no-install-recommends buildah"
  [ -x "$RUST_TOOLCHAIN_DIR/bin/cargo" ] || die "no Rust toolchain at '$RUST_TOOLCHAIN_DIR'"
  [ -x "$RUSTUP_BIN" ] || die "no rustup binary"
  base_slim
  base_build
  host_cas >"$BASES/host-cas.pem"
  h=$(cat "$BASES/bookworm-slim.inputs")
  buildah_base docker.io/library/debian:bookworm-slim "$h" "$BASES/bookworm-slim.tar"
  h=$( (cat "$BASES/bookworm-build.inputs"; "$RUST_TOOLCHAIN_DIR/bin/rustc" -vV;
    "$RUST_TOOLCHAIN_DIR/bin/cargo" -V; "$RUSTUP_BIN" --version 2>/dev/null;
    declare -f install_toolchain install_host_cas; cat "$BASES/host-cas.pem") | hash_of)
  buildah_base docker.io/library/rust:1-bookworm "$h" "$BASES/bookworm-build.tar" --rust \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$(rust_version)"
}

build_nftpol() {
  local ref h t0=$SECONDS
  ref=$(nftpol_ref)
  log "nftpol: $ref"
  bases_buildah
  h=$( (echo "$ref"; cat "$BASES"/*.buildah; context_hash; cat "$HERE/oci.py") | hash_of)
  fresh nftpol "$h" && { log "nftpol: up to date"; return 0; }
  # A release build's target/ and the crates take about 2 GB inside buildah's storage.
  [ "$(df --output=avail -k /var/lib/containers 2>/dev/null | tail -n 1)" -gt $((4 << 20)) ] ||
    log "nftpol: warning: less than 4 GB free under /var/lib/containers"
  # --network host: cargo fetches from crates.io and apt from the Debian mirror during the
  # build; --pull never: the bases exist only in local storage under the Dockerfile's names.
  "${NICE[@]}" "${BUILDAH[@]}" build --isolation chroot --network host --pull=never --layers --force-rm \
    --file "$REPO/Dockerfile" --tag "$ref" "$REPO" >&2
  rm -f "$BASES/nftpol.oci.tar"
  "${BUILDAH[@]}" push --quiet "$ref" "oci-archive:$BASES/nftpol.oci.tar:$ref" >&2
  python3 "$HERE/oci.py" name "$BASES/nftpol.oci.tar" --name "$ref" --out "$CACHE/nftpol.tar" >&2
  rm -f "$BASES/nftpol.oci.tar"
  record nftpol "$h" $((SECONDS - t0))
}

# --- main ------------------------------------------------------------------------------------
check=false
targets=()
for a in "$@"; do
  case $a in
    --check) check=true ;;
    pause | agnhost | nftpol | bases) targets+=("$a") ;;
    *) die "usage: $0 [--check] [pause|agnhost|nftpol|bases]..." ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(pause agnhost nftpol)
mkdir -p "$CACHE"
for t in "${targets[@]}"; do
  case $t in
    bases) bases_buildah ;;
    *) "build_$t" ;;
  esac
done
if $check; then
  for t in "${targets[@]}"; do
    case $t in
      pause) python3 "$HERE/oci.py" check "$CACHE/pause.tar" --name "$(pause_ref)" ;;
      agnhost) python3 "$HERE/oci.py" check "$CACHE/agnhost.tar" --name "$(agnhost_ref)" ;;
      nftpol) python3 "$HERE/oci.py" check "$CACHE/nftpol.tar" --name "$(nftpol_ref)" ;;
    esac
  done
fi
