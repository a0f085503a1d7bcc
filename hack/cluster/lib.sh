# Shared by hack/cluster/*.sh: where the single-node cluster keeps its binaries, state, logs and
# addresses, and how its daemons are started, found and stopped.
#
# Every daemon the cluster starts (and every containerd shim, which inherits it) runs in the
# pids cgroup $CG_DAEMONS; every container runs under the kubelet's pids cgroup kubepods. So
# down.sh finds everything to stop from the cgroups, even after a `kill -9` lost the pid files.
# shellcheck shell=bash

CACHE=${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}
BIN=$CACHE/bin
CNI_BIN=$CACHE/cni
IMAGES_DIR=${NFTPOL_IMAGES_DIR:-/var/cache/nftpol-images}
STATE=/var/lib/nftpol-cluster
RUN=/run/nftpol-cluster
LOGS=/var/log/nftpol-cluster
PKI=$STATE/pki

NODE_NAME=nftpol-node
NODE_LINK=nftpolc0              # a bridge without ports: the node's and the API server's address
NODE_IP=10.240.0.1
NODE_PREFIX=24
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24     # the first /24 the controller-manager allocates
POD_GW=10.244.0.1
POD_BRIDGE=cni0
SVC_CIDR=10.96.0.0/16
SVC_API_IP=10.96.0.1
ETCD_PORT=23790
ETCD_PEER_PORT=23800
API_PORT=6443
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig
CG_DAEMONS=/sys/fs/cgroup/pids/nftpol-cluster
CG_PODS=kubepods                # relative to each cgroup hierarchy's root
# Started in this order, stopped in the reverse one.
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

export PATH=$BIN:$PATH

log() { echo "cluster/${SCRIPT:-lib}: $*" >&2; }
die() { echo "cluster/${SCRIPT:-lib}: error: $*" >&2; exit 1; }

pid_of() { # the live pid of daemon $1, or nothing
  local f=$RUN/pids/$1.pid pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$BIN/$1" ] || return 1
  echo "$pid"
}

# start NAME ARGS...: runs $BIN/NAME detached, in $CG_DAEMONS from its first instruction on,
# logging to $LOGS/NAME.log; does nothing when it already runs.
start() {
  local name=$1; shift
  if pid_of "$name" >/dev/null; then log "$name already runs"; return 0; fi
  mkdir -p "$RUN/pids" "$LOGS" "$CG_DAEMONS"
  setsid sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG_DAEMONS" "$BIN/$name" "$@" \
    </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$RUN/pids/$name.pid"
  disown $! 2>/dev/null || true
  log "$name started (pid $!, log $LOGS/$name.log)"
}

# wait_for WHAT SECONDS CMD...: polls CMD every 0.5 s until it succeeds or the deadline passes.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${secs}s (logs in $LOGS)"
    sleep 0.5
  done
}

# put FILE: writes stdin to FILE only when it differs, so that a second up.sh leaves a running
# daemon's configuration untouched (kube-proxy exits when its file is written, even unchanged).
put() {
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctrk() { "$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }
