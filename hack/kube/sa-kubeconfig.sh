#!/usr/bin/env bash
# Writes a kubeconfig that authenticates as a ServiceAccount of a cluster made by up.sh, with a
# token from the TokenRequest API (the ServiceAccount's `token` subresource). Waits (with a
# deadline) for the ServiceAccount, so it can run right after the manifests that create it are
# applied.
#
# Why: the RBAC proof runs the nftpol daemon with exactly the rights of manifests/' ClusterRole,
# not as admin. Why TokenRequest: since Kubernetes 1.24 no controller creates a token secret per
# ServiceAccount; a kubelet would mount a bound token, and this is the same kind of token. It is
# valid for NFTPOL_KUBE_TOKEN_SECONDS (default 86400) and survives apiserver restarts (same key).
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
kube_need_tools curl jq
kube_load_state "$1"
ns=$2 sa=$3 out=$4 server=${5:-$NFTPOL_KUBE_SERVER}
seconds=${NFTPOL_KUBE_TOKEN_SECONDS:-86400}

sa_exists() { [ "$(kube_curl "/api/v1/namespaces/$ns/serviceaccounts/$sa" -o /dev/null -w '%{http_code}')" = 200 ]; }
kube_wait_for "ServiceAccount $ns/$sa" kube-apiserver sa_exists

request=$(jq -cn --argjson s "$seconds" \
  '{apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: {expirationSeconds: $s}}')
resp=$(kube_curl "/api/v1/namespaces/$ns/serviceaccounts/$sa/token" -X POST \
  -H 'Content-Type: application/json' -d "$request") || kube_die "TokenRequest for $ns/$sa failed"
token=$(jq -er '.status.token // empty' <<< "$resp") \
  || kube_die "no token in the TokenRequest answer for $ns/$sa: $resp"
kube_write_kubeconfig "$out" "$server" "$token" "system:serviceaccount:$ns:$sa"
kube_log "wrote $out (ServiceAccount $ns/$sa, server $server)"
