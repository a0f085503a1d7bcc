#!/usr/bin/env bash
# The end-to-end suite against a real kube-apiserver v1.20.2 (built once from Debian's source
# package and cached outside the repo, see hack/kube/README.md): two nodes of network
# namespaces (one bridged, one routed), one `nftpol daemon` per node with the ServiceAccount and
# RBAC of manifests/, real packets. Prints `N passed, M failed`; exits non-zero on a failure.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
if ! command -v kubectl >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends kubernetes-client
fi
bash hack/kube/build.sh >/dev/null
cargo build --quiet --bins

state=$(mktemp -d /tmp/nftpol-e2e.XXXXXX)
cleanup() { bash hack/kube/down.sh "$state" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# Without the watch cache, a watch resumed from a compacted resourceVersion gets 410 Gone
# at once (with it, the API server would answer from memory).
NFTPOL_KUBE_APISERVER_ARGS=--watch-cache=false bash hack/kube/up.sh "$state" >/dev/null
NFTPOL_E2E_STATE=$state cargo test --quiet --test e2e -- --nocapture
