#!/usr/bin/env bash
# Runs every check and test of nftpol: formatting, clippy, the Dockerfile lint, the Helm chart
# against manifests/ (hack/chart-check.py), the docs' shell commands (hack/doc-check.py), `cargo test` (unit, conformance, the
# real-kernel dataplane and testbed suites: they need root for network namespaces), then the
# end-to-end suite against a real kube-apiserver (hack/e2e.sh; its first run builds Kubernetes
# and etcd from the Go module proxy through hack/cluster/build.sh and caches them), then a
# subset of the upstream Netpol suite on a real kubelet cluster with nftpol installed from the
# manifests (hack/cluster/ci.sh; its first run also builds e2e.test, containerd, runc and the
# CNI plugins), then the short side-by-side run with kube-network-policies (hack/compare/run.sh
# --short: in a QEMU VM with Debian's kernel when this one lacks nft_queue; its first run builds
# kube-network-policies and fetches that kernel).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh --test-tools
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo deny --locked check --hide-inclusion-graph licenses bans sources
bash hack/lint-dockerfile.sh
# helm and kubectl (kubectl kustomize) from hack/cluster/build.sh's cache; the first run builds them.
tools=$(bash hack/cluster/build.sh kube helm | tail -n1)
cargo build --workspace --bins --quiet
bins=${CARGO_TARGET_DIR:-target}/debug
python3 hack/chart-check.py --bin "$tools" --nftpol "$bins/nftpol"
python3 hack/doc-check.py --bin "$tools" --nftpol "$bins/nftpol" --testbed "$bins/nftpol-testbed"
cargo test --no-fail-fast
bash hack/e2e.sh
bash hack/cluster/ci.sh
bash hack/compare/run.sh --short
