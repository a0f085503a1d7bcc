#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount of a cluster made by up.sh, using
# the token secret that kube-controller-manager's serviceaccount-token controller creates (1.20
# still creates one per ServiceAccount). Waits (with a deadline) for the ServiceAccount and its
# secret, so it can run right after the manifests that create the ServiceAccount are applied.
#
# Why: the RBAC proof runs the nftpol daemon with exactly the rights of manifests/' ClusterRole,
# not as admin.
#
# Usage: hack/kube/sa-kubeconfig.sh STATE_DIR NAMESPACE SA OUT [SERVER]
#   SERVER defaults to the cluster's root-namespace address; pass NFTPOL_KUBE_PEER_SERVER from
#   connect.sh for a node namespace.
# Example: hack/kube/sa-kubeconfig.sh "$STATE" kube-system nftpol "$STATE/nftpol.kubeconfig"
set -euo pipefail
export KUBE_SCRIPT=sa-kubeconfig.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -ge 4 ] && [ $# -le 5 ] || kube_die "usage: $0 STATE_DIR NAMESPACE SA OUT [SERVER]"
kube_need_tools curl jq base64
kube_load_state "$1"
ns=$2 sa=$3 out=$4 server=${5:-$NFTPOL_KUBE_SERVER}
[ "$NFTPOL_KUBE_CONTROLLER_MANAGER" = 1 ] && kube_alive kube-controller-manager \
  || kube_die "kube-controller-manager is not running: nothing creates ServiceAccount token secrets"

# Prints the ServiceAccount's token once its token secret exists; fails before.
sa_token() {
  local names name secret
  names=$(kube_curl "/api/v1/namespaces/$ns/serviceaccounts/$sa" -f | jq -r '.secrets[]?.name') || return 1
  for name in $names; do
    secret=$(kube_curl "/api/v1/namespaces/$ns/secrets/$name" -f) || continue
    if [ "$(jq -r .type <<< "$secret")" = kubernetes.io/service-account-token ]; then
      jq -er '.data.token' <<< "$secret" | base64 -d
      return 0
    fi
  done
  return 1
}
kube_wait_for "a token secret for ServiceAccount $ns/$sa" kube-controller-manager sa_token
token=$(sa_token)
[ -n "$token" ] || kube_die "empty token for $ns/$sa"
kube_write_kubeconfig "$out" "$server" "$token" "system:serviceaccount:$ns:$sa"
kube_log "wrote $out (ServiceAccount $ns/$sa, server $server)"
