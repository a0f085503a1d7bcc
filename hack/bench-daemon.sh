#!/usr/bin/env bash
# The daemon benchmark (benches/daemon.rs) against a real kube-apiserver and etcd (built by
# hack/cluster/build.sh, see hack/kube/README.md): policy-change-to-enforced latency, the new-pod
# window, and memory and idle CPU with 10,000 pods and 2,000 policies. Starts a cluster
# (hack/kube), a node namespace linked to it, runs the benchmark, and tears everything down
# (the daemons' logs are kept as /tmp/bench-daemon-*.log).
# Needs root; takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
bin=$(bash hack/kube/build.sh | tail -n1)
state=$(mktemp -d /tmp/nftpol-bench.XXXXXX)
node="nftpol-bench-$$"
cleanup() {
  cp "$state"/bench-daemon-*.log /tmp/ 2>/dev/null || true
  ip netns del "$node" 2>/dev/null || true
  bash hack/kube/down.sh "$state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
NFTPOL_KUBE_BIN=$bin bash hack/kube/up.sh "$state" >/dev/null
ip netns add "$node"
ip -n "$node" link set lo up
eval "$(bash hack/kube/connect.sh "$state" "$node")"
NFTPOL_E2E_STATE=$state NFTPOL_BENCH_NETNS=$node NFTPOL_BENCH_KUBECONFIG=$NFTPOL_KUBE_PEER_KUBECONFIG \
  cargo bench --bench daemon
