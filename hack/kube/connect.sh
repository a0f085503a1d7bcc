#!/usr/bin/env bash
# Links another network namespace (an e2e test's node namespace, where an nftpol daemon runs)
# directly to the API server of a cluster made by up.sh, with a veth /30, and writes an admin
# kubeconfig for that namespace.
#
# Why: node namespaces must reach the API server without routes through the root namespace. Each
# link gets its own /30 inside the cluster's slot: NET.N.(4k+1) on the apiserver side (the
# apiserver listens on every address of its namespace) and NET.N.(4k+2) on the peer side.
# Deleting either namespace deletes the link.
#
# Usage: hack/kube/connect.sh STATE_DIR PEER_NETNS [OUT_KUBECONFIG]
#   OUT_KUBECONFIG defaults to STATE_DIR/kubeconfig-PEER_NETNS. Prints KEY=VALUE lines:
#   NFTPOL_KUBE_PEER_SERVER (https://NET.N.(4k+1):6443), NFTPOL_KUBE_PEER_ADDR, NFTPOL_KUBE_PEER_IF,
#   NFTPOL_KUBE_PEER_KUBECONFIG.
# Env: NFTPOL_KUBE_PEER_IF  interface name in the peer namespace (default kubeapi)
set -euo pipefail
export KUBE_SCRIPT=connect.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -ge 2 ] && [ $# -le 3 ] || kube_die "usage: $0 STATE_DIR PEER_NETNS [OUT_KUBECONFIG]"
kube_need_root
kube_load_state "$1"
peer=$2
out=${3:-$KUBE_STATE/kubeconfig-$peer}
peer_if=${NFTPOL_KUBE_PEER_IF:-kubeapi}
[ -e "/var/run/netns/$peer" ] || kube_die "namespace $peer does not exist"
[ "$peer" != "$NFTPOL_KUBE_NETNS" ] || kube_die "cannot connect the cluster's namespace to itself"
if ip -n "$peer" link show "$peer_if" >/dev/null 2>&1; then
  kube_die "namespace $peer already has an interface $peer_if (set NFTPOL_KUBE_PEER_IF)"
fi

# Link k exists when the apiserver namespace has an interface lk: creating it is the claim.
k=
for i in $(seq 1 63); do
  if ip -n "$NFTPOL_KUBE_NETNS" link add "l$i" type veth peer name "$peer_if" netns "$peer" 2>/dev/null; then
    k=$i
    break
  fi
done
[ -n "$k" ] || kube_die "could not create a link (all 63 in use, or 'ip link add' fails: try it by hand)"

api_addr=$NFTPOL_KUBE_NET_PREFIX.$(( 4 * k + 1 ))
peer_addr=$NFTPOL_KUBE_NET_PREFIX.$(( 4 * k + 2 ))
ip -n "$NFTPOL_KUBE_NETNS" addr add "$api_addr/30" dev "l$k"
ip -n "$NFTPOL_KUBE_NETNS" link set "l$k" up
ip -n "$peer" addr add "$peer_addr/30" dev "$peer_if"
ip -n "$peer" link set "$peer_if" up
ip -n "$peer" link set lo up

server=https://$api_addr:$KUBE_PORT
kube_write_kubeconfig "$out" "$server" "$(cat "$NFTPOL_KUBE_TOKEN_FILE")" admin
kube_log "linked $peer ($peer_if $peer_addr) to the apiserver at $server"
cat <<OUT
NFTPOL_KUBE_PEER_SERVER=$server
NFTPOL_KUBE_PEER_ADDR=$peer_addr
NFTPOL_KUBE_PEER_IF=$peer_if
NFTPOL_KUBE_PEER_KUBECONFIG=$out
OUT
