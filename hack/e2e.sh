#!/usr/bin/env bash
# The end-to-end suite against a real kube-apiserver and etcd (built once from the Go module
# proxy by hack/cluster/build.sh and cached outside the repo, see hack/kube/README.md): two nodes
# of network namespaces (one bridged, one routed), one `nftpol daemon` per node with the
# ServiceAccount and RBAC of manifests/, real packets. kubectl is the one built with the API
# server. The ClusterNetworkPolicy scenarios install the CRDs of sigs.k8s.io/network-policy-api,
# fetched with Go through the module proxy (hack/kube/npa-crds.sh, cached after the first run).
# Prints `N passed, M failed`; exits non-zero on a failure. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
bin=$(bash hack/kube/build.sh | tail -n1)
export PATH=$bin:$PATH
cargo build --quiet --bins

state=$(mktemp -d /tmp/nftpol-e2e.XXXXXX)
cleanup() { bash hack/kube/down.sh "$state" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# Without the watch cache, a watch resumed from a compacted resourceVersion gets 410 Gone
# at once (with it, the API server would answer from memory). NFTPOL_E2E_APISERVER_ARGS adds
# flags, for example --feature-gates=WatchList=false (the daemons then list instead of streaming).
NFTPOL_KUBE_BIN=$bin NFTPOL_KUBE_APISERVER_ARGS="--watch-cache=false ${NFTPOL_E2E_APISERVER_ARGS:-}" \
  bash hack/kube/up.sh "$state" >/dev/null
NFTPOL_E2E_STATE=$state cargo test --quiet --test e2e -- --ignored --nocapture
# The kubectl plugin on the same API server (its own namespaces; a fake kubelet needs python3).
NFTPOL_E2E_STATE=$state cargo test --quiet --test kubectl_plugin -- --ignored --nocapture
