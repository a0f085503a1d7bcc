#!/usr/bin/env bash
# Prints the paths of the network-policy-api CRDs the e2e suite installs, one a line, taken
# from the Go module sigs.k8s.io/network-policy-api (downloaded through the Go module proxy
# into the shared module cache, read-only there):
#   - ClusterNetworkPolicy, experimental channel (so that `nodes` and `domainNames` exist), of
#     the newest version the proxy serves (NFTPOL_NPA_VERSION, default `latest`);
#   - AdminNetworkPolicy and BaselineAdminNetworkPolicy v1alpha1, experimental channel, of
#     their last release (NFTPOL_NPA_V1ALPHA1_VERSION, default v0.1.7).
# Logs the versions used on stderr.
set -euo pipefail
cache=${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}
export GOMODCACHE=$cache/gomod GOCACHE=${GOCACHE:-$cache/gocache} GOTOOLCHAIN=local
command -v go >/dev/null || { echo "npa-crds.sh: go not found" >&2; exit 1; }
command -v jq >/dev/null || { echo "npa-crds.sh: jq not found" >&2; exit 1; }

# The module's folder in the cache, downloading it if needed.
module_dir() {
  local json
  json=$(cd / && go mod download -json "sigs.k8s.io/network-policy-api@$1")
  if [ -n "$(jq -r '.Error // empty' <<<"$json")" ]; then
    echo "npa-crds.sh: $(jq -r .Error <<<"$json")" >&2
    return 1
  fi
  echo "npa-crds.sh: sigs.k8s.io/network-policy-api $1 is $(jq -r .Version <<<"$json")" >&2
  jq -r .Dir <<<"$json"
}

new=$(module_dir "${NFTPOL_NPA_VERSION:-latest}")
old=$(module_dir "${NFTPOL_NPA_V1ALPHA1_VERSION:-v0.1.7}")
for f in "$new/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
         "$old/config/crd/experimental/policy.networking.k8s.io_adminnetworkpolicies.yaml" \
         "$old/config/crd/experimental/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml"; do
  [ -f "$f" ] || { echo "npa-crds.sh: $f not found" >&2; exit 1; }
  echo "$f"
done
