#!/usr/bin/env bash
# CI's run on the kubelet cluster: builds what is missing (hack/cluster/build.sh), packs the
# nftpol binary the test command just built into an image, starts the cluster (up.sh), installs
# nftpol the way a user does (nftpol.sh install: `kubectl apply -k manifests/` with the image set
# through the Kustomization), runs a subset of the upstream `[sig-network] Netpol` suite chosen
# to span the features, uninstalls by the README's path, proves the node is open again (the same
# probe that nftpol blocked now connects: nothing else enforces), and removes the cluster.
#
# The image is not the Dockerfile's (hack/images/build.sh nftpol builds that one, in a container
# build of about 15 minutes that CI cannot afford): one layer with the binary and the shared
# libraries `ldd` lists (libnftnl, libmnl, glibc) at their paths, no shell, no base. The full
# suite with the Dockerfile's image is the documented command in hack/cluster/README.md.
#
# Usage: hack/cluster/ci.sh [BINARY]   (default target/debug/nftpol, built when missing)
# Last line: the suite's `N passed, M failed`; exit status non-zero on any failure.
set -euo pipefail
SCRIPT=ci.sh
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (a kubelet, containerd, network namespaces)"
binary=${1:-$ROOT/target/debug/nftpol}
if [ -z "${1:-}" ]; then
  (cd "$ROOT" && cargo build --quiet --bin nftpol)
fi
[ -x "$binary" ] || die "$binary: no such executable"

# One test per feature the subset must span (the names are the upstream suite's, v1.37.2).
SUBSET=(
  "should support a 'default-deny-ingress' policy"                       # ingress, TCP
  "should deny egress from pods based on PodSelector"                    # egress
  "should allow ingress access on one named port"                        # named ports, ingress
  "should allow egress access on one named port"                         # named ports, egress
  "should enforce except clause while egress access to server in CIDR"   # ipBlock + except
  "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except" # ipBlock precedence
  "should support creating NetworkPolicy API with endport field"         # endPort (API)
  "should enforce policy based on PodSelector and NamespaceSelector"     # selectors, AND
  "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label"
  "should enforce updated policy"                                        # policy update
  "should allow ingress access from updated pod"                         # pod relabel
  "should stop enforcing policies after they are deleted"                # deletion
  "using UDP should enforce policy based on Ports"                       # UDP
)
focus=$(printf '%s\n' "${SUBSET[@]}" | sed -e 's/[][().*+?^$|\\]/\\&/g' | paste -sd'|')

bash "$HERE/build.sh" kube e2e containerd runc cni >/dev/null

# The image: the binary and its shared libraries, each at the path the loader looks for.
ref=docker.io/library/nftpol:ci
mkdir -p "$CACHE/images"
files=("$binary:/usr/local/bin/nftpol:755")
while read -r lib; do
  files+=("$(readlink -f "$lib"):$lib:755")
done < <(ldd "$binary" | grep -o '/[^ ]*\.so[^ ]*' | sort -u)
python3 "$HERE/oci-archive.py" "$CACHE/images/nftpol-ci.tar" "$ref" /usr/local/bin/nftpol "${files[@]}"

trap 'bash "$HERE/down.sh" >/dev/null 2>&1 || true' EXIT
bash "$HERE/up.sh" >/dev/null
export KUBECONFIG=$KUBECONFIG_ADMIN
"$BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io images import "$CACHE/images/nftpol-ci.tar" >/dev/null

bash "$HERE/nftpol.sh" install "$ref"
status=0
out=$(mktemp)
bash "$HERE/upstream-e2e.sh" --focus "$focus" --nodes 2 | tee "$out" || status=$?
bash "$HERE/nftpol.sh" uninstall
# Without nftpol the same default-deny-ingress probe connects: nothing else enforces here, so
# the suite's passes above are nftpol's.
bash "$HERE/policy-check.sh" open
tail -n 1 "$out"
rm -f "$out"
exit "$status"
