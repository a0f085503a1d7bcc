#!/usr/bin/env bash
# Builds the real cluster's parts from the Go module proxy and caches them outside the repo:
#   Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#   kubectl, e2e.test, agnhost) plus ginkgo and etcd, from one wrapper module whose staging
#   `replace` lines are generated from Kubernetes' own go.mod; containerd 2.x and runc; the CNI
#   plugins bridge, host-local and loopback; helm (the chart's lint, template and install checks);
#   the conformance suite of sigs.k8s.io/network-policy-api (`go test -c ./conformance` in that
#   module, whose go.mod then decides every dependency) and its CRDs, kept beside the binary for
#   hack/cluster/cnp-conformance.sh.
#
# Idempotent: every binary is rebuilt only when missing (or built from another version). Parts
# build one after another so that a failure names its part; each part's cold time is logged to
# $CACHE/build-times. Needs root only for apt (gcc, libseccomp-dev for runc).
#
# Usage: hack/cluster/build.sh [PART...]   PART: kube e2e containerd runc cni helm cnp-conformance
#        (default: all)
#        prints the folder that holds the binaries on its last line.
# Env:   NFTPOL_CLUSTER_CACHE  (default /var/cache/nftpol-cluster)
#        NFTPOL_GOCACHE        Go's build cache (default $NFTPOL_CLUSTER_CACHE/gocache)
set -euo pipefail

KUBE_VERSION=${NFTPOL_KUBE_VERSION:-1.37.2}
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.4.0
CNI_VERSION=v1.9.1
HELM_VERSION=v4.3.2
GINKGO_PKG=github.com/onsi/ginkgo/v2/ginkgo
# The newest version the module proxy serves (`go list -m -versions sigs.k8s.io/network-policy-api`:
# v0.1.1 v0.3.0 on 2026-11-29); pinned, so that a cached build stays what was measured.
NPA_VERSION=${NFTPOL_NPA_VERSION:-v0.3.0}

CACHE=${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}
BIN=$CACHE/bin
CNI_BIN=$CACHE/cni
WORK=$CACHE/work
export GOMODCACHE=$CACHE/gomod GOCACHE=${NFTPOL_GOCACHE:-$CACHE/gocache} GOPATH=$CACHE/gopath
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

log() { echo "cluster/build.sh: $*" >&2; }
die() { echo "cluster/build.sh: error: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not installed (Go 1.26 is expected on these machines)"

mkdir -p "$BIN" "$CNI_BIN" "$WORK"
# One build at a time per cache; the lock is taken only when something must be built, so that a
# caller whose parts are ready never waits behind another caller's long build.
locked=0
take_lock() {
  [ "$locked" = 1 ] && return 0
  exec 9>"$CACHE/.lock"
  flock 9
  locked=1
}

# Runs a build step and records its wall time; the log of a failed step is printed.
timed() {
  local part=$1; shift
  local t0=$SECONDS
  log "building $part"
  if ! nice -n 5 "$@" >"$CACHE/build-$part.log" 2>&1; then
    tail -n 40 "$CACHE/build-$part.log" >&2
    die "$part failed; full log in $CACHE/build-$part.log"
  fi
  echo "$part $((SECONDS - t0))s $(date -u +%FT%TZ)" >>"$CACHE/build-times"
  log "$part done in $((SECONDS - t0)) s"
}

stamp_ok() { [ -f "$CACHE/$1.version" ] && [ "$(cat "$CACHE/$1.version")" = "$2" ]; }

# True when part $1 (version $2, binary $3) must be built; takes the lock and checks again, since
# another caller may have built it while we waited.
must_build() {
  stamp_ok "$1" "$2" && [ -x "$3" ] && return 1
  take_lock
  ! { stamp_ok "$1" "$2" && [ -x "$3" ]; }
}

kube_ldflags() {
  local minor=${KUBE_VERSION#*.}; minor=${minor%%.*}
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ld="$ld -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

# The wrapper module: k8s.io/kubernetes cannot be built with `go install`, because it requires its
# staging modules at v0.0.0 through replaces that only a main module can carry.
kube_module() {
  local mod=$WORK/kube
  if [ -f "$mod/.ready-$KUBE_VERSION" ]; then echo "$mod"; return; fi
  rm -rf "$mod"; mkdir -p "$mod"
  (
    cd "$mod"
    go mod init local/nftpol-cluster >/dev/null 2>&1
    gm=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gm" ] || die "could not download k8s.io/kubernetes@v$KUBE_VERSION"
    for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/.*|\1|p' "$gm"); do
      go mod edit "-replace=$m=$m@v0.${KUBE_VERSION#1.}"
    done
    grep '^godebug' "$gm" >>go.mod || true
    cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
GO
    go get "k8s.io/kubernetes@v$KUBE_VERSION"
    go get -t "k8s.io/kubernetes/test/e2e@v$KUBE_VERSION"
    # ginkgo, agnhost's and etcd's modules are already in Kubernetes' requirements: `go get` them
    # without a version would upgrade them (and grpc with them) past what Kubernetes ships, so
    # `tidy` only records them at the versions the graph already holds; the check below proves it.
    go mod tidy -e
    for dep in go.etcd.io/etcd/server/v3 go.etcd.io/etcd/client/v3 google.golang.org/grpc github.com/onsi/ginkgo/v2; do
      want=$(awk -v d="$dep" '$1==d {print $2; exit}' "$gm")
      have=$(go list -m -f '{{.Version}}' "$dep")
      [ -z "$want" ] || [ "$want" = "$have" ] || die "$dep is $have, Kubernetes v$KUBE_VERSION requires $want"
    done
  ) >"$CACHE/build-module.log" 2>&1 || { tail -n 40 "$CACHE/build-module.log" >&2; die "wrapper module failed"; }
  touch "$mod/.ready-$KUBE_VERSION"
  echo "$mod"
}

build_kube() {
  must_build kube "$KUBE_VERSION" "$BIN/etcd" || return 0
  local mod; mod=$(kube_module)
  timed kube bash -c "cd '$mod' && CGO_ENABLED=0 go build -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags '$(kube_ldflags)' -o '$BIN/' \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/test/images/agnhost $GINKGO_PKG \
    && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o '$BIN/etcd' go.etcd.io/etcd/server/v3"
  echo "$KUBE_VERSION" >"$CACHE/kube.version"
}

build_e2e() {
  must_build e2e "$KUBE_VERSION" "$BIN/e2e.test" || return 0
  local mod; mod=$(kube_module)
  timed e2e bash -c "cd '$mod' && CGO_ENABLED=0 go test -c -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags '$(kube_ldflags)' -o '$BIN/e2e.test' k8s.io/kubernetes/test/e2e"
  echo "$KUBE_VERSION" >"$CACHE/e2e.version"
}

build_containerd() {
  must_build containerd "$CONTAINERD_VERSION" "$BIN/containerd" || return 0
  timed containerd env CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  echo "$CONTAINERD_VERSION" >"$CACHE/containerd.version"
}

apt_need() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
  apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >/dev/null
}

build_runc() {
  must_build runc "$RUNC_VERSION" "$BIN/runc" || return 0
  apt_need gcc libc6-dev pkg-config libseccomp-dev
  # runc needs cgo (libcontainer/nsenter); libpathrs, a default tag of its Makefile, is left out.
  timed runc env CGO_ENABLED=1 GOBIN="$BIN" go install -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
  echo "$RUNC_VERSION" >"$CACHE/runc.version"
}

build_cni() {
  must_build cni "$CNI_VERSION" "$CNI_BIN/bridge" || return 0
  timed cni env CGO_ENABLED=0 GOBIN="$CNI_BIN" go install -trimpath -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_VERSION"
  echo "$CNI_VERSION" >"$CACHE/cni.version"
}

# helm v4 is a plain module (no replaces), so `go install` builds it; its version string comes from
# internal/version, which `helm version` prints.
build_helm() {
  must_build helm "$HELM_VERSION" "$BIN/helm" || return 0
  timed helm env CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION" >"$CACHE/helm.version"
}

# The network-policy-api conformance suite, built inside a writable copy of its own module (the
# module cache is read-only), so that `go test -c ./conformance` resolves exactly what upstream's
# CI resolves. Its manifests are embedded in the binary (conformance/embed.go); beside it, in
# $CACHE/cnp-conformance/, the CRDs of both channels (hack/cluster/cnp-conformance.sh installs
# one) and `images`, the images its manifests name (up.sh tags agnhost under those names).
build_cnp_conformance() {
  local out=$CACHE/cnp-conformance
  must_build cnp-conformance "$NPA_VERSION" "$BIN/cnp-conformance.test" || [ ! -s "$out/images" ] || return 0
  take_lock
  local src dir=$WORK/network-policy-api
  src=$(go mod download -json "sigs.k8s.io/network-policy-api@$NPA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src/conformance" ] || die "could not download sigs.k8s.io/network-policy-api@$NPA_VERSION"
  rm -rf "$dir" "$out"
  cp -r "$src" "$dir"
  chmod -R u+w "$dir"
  timed cnp-conformance bash -c "cd '$dir' && CGO_ENABLED=0 go test -c -trimpath -o '$BIN/cnp-conformance.test' ./conformance"
  mkdir -p "$out"
  cp -r "$dir/config/crd/standard" "$dir/config/crd/experimental" "$out/"
  grep -rhoE 'image:[[:space:]]*[^[:space:]]+' "$dir/conformance/base" "$dir/conformance/tests" \
    | sed 's/image:[[:space:]]*//' | sort -u >"$out/images"
  rm -rf "$dir"
  echo "$NPA_VERSION" >"$CACHE/cnp-conformance.version"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(cni runc containerd kube e2e helm cnp-conformance)
for p in "${parts[@]}"; do
  case $p in
    kube) build_kube ;; e2e) build_e2e ;; containerd) build_containerd ;; runc) build_runc ;; cni) build_cni ;;
    helm) build_helm ;; cnp-conformance) build_cnp_conformance ;;
    *) die "unknown part $p" ;;
  esac
done
echo "$BIN"
