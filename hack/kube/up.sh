#!/usr/bin/env bash
# Starts a real Kubernetes control plane for nftpol's end-to-end tests: etcd, kube-apiserver
# and (by default) kube-controller-manager, as built by hack/cluster/build.sh, inside a network
# namespace this script creates (nftpol-kube-N), reachable from the root namespace through a
# veth /30.
#
# Why: the e2e tests need a real API server (real list/watch, resourceVersions, 410 Gone, RBAC)
# that runs on this machine only, without kubelet or scheduler. Its own namespace keeps its ports
# (2379, 6443, 10257) away from anything else on the machine and lets several clusters coexist;
# connect.sh links it to the test's node namespaces.
#
# Usage: hack/kube/up.sh STATE_DIR
#   STATE_DIR must not exist, be empty, or be a stale state folder of a cluster that is gone.
#   On success it holds env, kubeconfig, admin.token, sa.key/sa.pub, logs and pid files (see
#   lib.sh), and the script prints the env file. On failure it stops what it started, deletes
#   the namespace and keeps STATE_DIR's logs for inspection (down.sh STATE_DIR removes them).
# Env:
#   NFTPOL_KUBE_CONTROLLER_MANAGER=0  do not start kube-controller-manager (no default
#       ServiceAccounts, namespace deletion never finishes)
#   NFTPOL_KUBE_SLOT=N     use slot N (1..250) instead of the first free one
#   NFTPOL_KUBE_NET=A.B    first two octets of the cluster networks (default 10.250)
#   NFTPOL_KUBE_BIN=DIR    folder with etcd, kube-apiserver and kube-controller-manager (default:
#       the hack/cluster/build.sh cache, building it first if needed)
#   NFTPOL_KUBE_TIMEOUT=S  deadline of each wait (default 120)
#   NFTPOL_KUBE_APISERVER_ARGS="..."  extra kube-apiserver flags (split on spaces), for example
#       --watch-cache=false to make watches read etcd directly (compaction then means 410 at once)
set -euo pipefail
export KUBE_SCRIPT=up.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || kube_die "usage: $0 STATE_DIR"
kube_need_root
kube_need_tools ip setsid openssl curl jq

t0=$(kube_now_ms)
BIN=${NFTPOL_KUBE_BIN:-$(bash "$KUBE_HACK_DIR/build.sh" | tail -n1)}
for b in etcd kube-apiserver kube-controller-manager; do
  [ -x "$BIN/$b" ] || kube_die "$BIN/$b not found (run hack/kube/build.sh)"
done

# --- state folder ------------------------------------------------------------------------------
STATE=$1
if [ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ]; then
  [ -f "$STATE/.nftpol-kube" ] || kube_die "$STATE exists, is not empty and is not a cluster state folder"
  old_ns=$(sed -n 's/^NFTPOL_KUBE_NETNS=//p' "$STATE/env" 2>/dev/null || true)
  if [ -n "$old_ns" ] && [ -e "/var/run/netns/$old_ns" ]; then
    kube_die "a cluster is already up in $STATE (namespace $old_ns); run hack/kube/down.sh $STATE first"
  fi
  kube_log "removing the stale state in $STATE"
  rm -rf "$STATE"
fi
mkdir -p "$STATE"
KUBE_STATE=$(cd "$STATE" && pwd)
touch "$KUBE_STATE/.nftpol-kube"

# --- claim a slot: creating the namespace is the atomic claim ------------------------------
if [ -n "${NFTPOL_KUBE_SLOT:-}" ]; then slots=$NFTPOL_KUBE_SLOT; else slots=$(seq 1 250); fi
NFTPOL_KUBE_NETNS=
for n in $slots; do
  [ ! -e "/var/run/netns/$KUBE_NETNS_PREFIX-$n" ] || continue
  if err=$(ip netns add "$KUBE_NETNS_PREFIX-$n" 2>&1); then
    NFTPOL_KUBE_NETNS=$KUBE_NETNS_PREFIX-$n
    SLOT=$n
    break
  fi
  # Lost a race with another up.sh (the name exists now): try the next slot; else a real error.
  [ -e "/var/run/netns/$KUBE_NETNS_PREFIX-$n" ] || kube_die "ip netns add $KUBE_NETNS_PREFIX-$n: $err"
done
[ -n "$NFTPOL_KUBE_NETNS" ] || kube_die "no free slot (namespaces $KUBE_NETNS_PREFIX-{$slots} all exist)"

ok=0
cleanup() {
  [ "$ok" = 1 ] && return
  kube_log "failed; stopping what was started (logs kept in $KUBE_STATE)"
  for p in kube-controller-manager kube-apiserver etcd; do kube_stop "$p" KILL 1 || true; done
  ip netns del "$NFTPOL_KUBE_NETNS" 2>/dev/null || true
  rm -f "$KUBE_STATE/env"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ADDR=$KUBE_NET.$SLOT.1
HOST_ADDR=$KUBE_NET.$SLOT.2
NFTPOL_KUBE_SERVER=https://$ADDR:$KUBE_PORT
NFTPOL_KUBE_TOKEN_FILE=$KUBE_STATE/admin.token
HOST_IF=$NFTPOL_KUBE_NETNS   # at most 14 characters: fits IFNAMSIZ

cat > "$KUBE_STATE/env" <<EOF
NFTPOL_KUBE_NETNS=$NFTPOL_KUBE_NETNS
NFTPOL_KUBE_SLOT=$SLOT
NFTPOL_KUBE_ADDR=$ADDR
NFTPOL_KUBE_HOST_ADDR=$HOST_ADDR
NFTPOL_KUBE_HOST_IF=$HOST_IF
NFTPOL_KUBE_NET_PREFIX=$KUBE_NET.$SLOT
NFTPOL_KUBE_SERVER=$NFTPOL_KUBE_SERVER
NFTPOL_KUBE_KUBECONFIG=$KUBE_STATE/kubeconfig
NFTPOL_KUBE_TOKEN_FILE=$NFTPOL_KUBE_TOKEN_FILE
NFTPOL_KUBE_STATE=$KUBE_STATE
NFTPOL_KUBE_BIN=$BIN
NFTPOL_KUBE_CONTROLLER_MANAGER=${NFTPOL_KUBE_CONTROLLER_MANAGER:-1}
EOF

# --- network: lo, and a veth /30 to the root namespace ----------------------------------------
ip -n "$NFTPOL_KUBE_NETNS" link set lo up
ip link del "$HOST_IF" 2>/dev/null || true   # a leftover of a crashed run with this slot
ip link add "$HOST_IF" type veth peer name eth0 netns "$NFTPOL_KUBE_NETNS"
ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NFTPOL_KUBE_NETNS" addr add "$ADDR/30" dev eth0
ip -n "$NFTPOL_KUBE_NETNS" link set eth0 up

# --- credentials ------------------------------------------------------------------------------
openssl genrsa -out "$KUBE_STATE/sa.key" 2048 2>/dev/null
openssl rsa -in "$KUBE_STATE/sa.key" -pubout -out "$KUBE_STATE/sa.pub" 2>/dev/null
token=$(openssl rand -hex 24)
(umask 077; echo "$token" > "$NFTPOL_KUBE_TOKEN_FILE")
(umask 077; echo "$token,admin,admin,\"system:masters\"" > "$KUBE_STATE/tokens.csv")
kube_write_kubeconfig "$KUBE_STATE/kubeconfig" "$NFTPOL_KUBE_SERVER" "$token" admin
mkdir -p "$KUBE_STATE/etcd" "$KUBE_STATE/certs" "$KUBE_STATE/kcm-certs"
chmod 700 "$KUBE_STATE/etcd"

# --- etcd --------------------------------------------------------------------------------------
kube_spawn etcd "$BIN/etcd" --name nftpol --data-dir "$KUBE_STATE/etcd" --logger zap \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster nftpol=http://127.0.0.1:2380 --initial-cluster-state new
kube_wait_for "etcd's /health" etcd kube_etcd_healthy

# --- kube-apiserver ----------------------------------------------------------------------------
read -r -a extra_args <<< "${NFTPOL_KUBE_APISERVER_ARGS:-}"
# ServiceAccount admission is off even with the controller-manager: with it, creating a pod right
# after its namespace races the creation of the namespace's default ServiceAccount. No kubelet
# runs, so pods need no token volume. The signing key and issuer serve the TokenRequest API
# (sa-kubeconfig.sh): no controller creates token secrets any more.
kube_spawn kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --advertise-address="$ADDR" --secure-port="$KUBE_PORT" \
  --cert-dir="$KUBE_STATE/certs" \
  --service-account-key-file="$KUBE_STATE/sa.pub" \
  --service-account-signing-key-file="$KUBE_STATE/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --token-auth-file="$KUBE_STATE/tokens.csv" --authorization-mode=RBAC \
  --disable-admission-plugins=ServiceAccount \
  --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true "${extra_args[@]}"
kube_wait_apiserver
t_api=$(kube_now_ms)

# --- kube-controller-manager (namespace lifecycle, default ServiceAccounts, garbage collection) -
if [ "${NFTPOL_KUBE_CONTROLLER_MANAGER:-1}" = 1 ]; then
  kube_spawn kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$KUBE_STATE/kubeconfig" \
    --authentication-kubeconfig="$KUBE_STATE/kubeconfig" \
    --authorization-kubeconfig="$KUBE_STATE/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
    --controllers=namespace-controller,serviceaccount-controller,garbage-collector-controller \
    --cert-dir="$KUBE_STATE/kcm-certs"
  default_sa() { [ "$(kube_curl /api/v1/namespaces/default/serviceaccounts/default -o /dev/null -w '%{http_code}')" = 200 ]; }
  kube_wait_for "the controller-manager to create ServiceAccount default/default" kube-controller-manager default_sa
fi

ok=1
t1=$(kube_now_ms)
kube_log "up in $(( t1 - t0 )) ms (apiserver ready after $(( t_api - t0 )) ms): $NFTPOL_KUBE_SERVER in namespace $NFTPOL_KUBE_NETNS"
cat "$KUBE_STATE/env"
