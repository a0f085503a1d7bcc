#!/usr/bin/env bash
# nftpol side by side with kube-network-policies (issue 15): one command that builds both,
# starts a real kube-apiserver, runs the conformance corpus through each engine and then the
# figures (benches/compare.rs, engines alternating round by round), and prints the tables in
# markdown with the machine, the versions and the command.
#
# kube-network-policies needs nftables' `queue` expression (CONFIG_NFT_QUEUE). When this
# machine's kernel has it, everything runs here, with hack/kube's API server under the lock
# /var/lock/nftpol-kube.use; otherwise inside a VM booting Debian trixie's kernel under TCG
# (hack/compare/vm.sh), where figures are slower than the host's, alike for both engines.
#
# Usage: hack/compare/run.sh [--short] [--corpus-only | --figures-only] [--modes bridge,routed]
#   --short: the CI run: figures only (3 rounds, 0 and 10 policies, 10 changes, 5 new pods,
#            1,000 pods / 200 policies) with the debug build the tests already made; its figures
#            only prove that the comparison still runs.
# Env:   NFTPOL_COMPARE_VM=1 forces the VM; =0 forbids it.
set -euo pipefail
cd "$(dirname "$0")/../.."
short=() corpus=1 figures=1 modes=bridge args="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --short) short=(--short) corpus=0 ;;
    --corpus-only) figures=0 ;;
    --figures-only) corpus=0 ;;
    --modes) modes=$2; shift ;;
    *) echo "usage: $0 [--short] [--corpus-only|--figures-only] [--modes bridge,routed]" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "compare/run.sh: $*" >&2; }
t0=$SECONDS

knp=$(bash hack/compare/build.sh | tail -n1)
kube=$(bash hack/kube/build.sh | tail -n1)
target=${CARGO_TARGET_DIR:-$PWD/target}
# The engines are release builds; the harness (benches/compare.rs: it only opens connections and
# writes objects) is built in the dev profile, which spares a second optimised build of the crate
# (benches unwind, release aborts on panic).
profile=release
[ ${#short[@]} -gt 0 ] && profile=debug
log "building nftpol ($profile) and the compare harness"
if [ "$profile" = release ]; then cargo build --release --bins >&2; else cargo build --bins >&2; fi
bench=$(cargo build --bench compare --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "compare") | .executable' | tail -n1)
[ -x "$bench" ] || { log "no compare bench binary"; exit 1; }

queue_here() {
  local ns=nftpol-compare-q$$ ok=1
  ip netns add "$ns" || return 1
  ip netns exec "$ns" nft -f - <<'NFT' 2>/dev/null || ok=0
table inet nftpol_compare_probe {
  chain c { type filter hook postrouting priority 0; meta l4proto tcp queue num 1 bypass; }
}
NFT
  ip netns del "$ns"
  [ "$ok" = 1 ]
}
vm=${NFTPOL_COMPARE_VM:-}
if [ -z "$vm" ]; then
  if queue_here; then vm=0; else vm=1; fi
fi
steps=()
[ "$corpus" = 1 ] && steps+=("corpus --engine both --modes $modes")
[ "$figures" = 1 ] && steps+=("figures ${short[*]}")

out=$(mktemp /tmp/nftpol-compare-out.XXXXXX)
trap 'rm -f "$out"' EXIT
if [ "$vm" = 1 ]; then
  log "this kernel ($(uname -r)) has no nft_queue: running in a VM (Debian trixie, TCG)"
  cmd=""
  for s in "${steps[@]}"; do cmd="$cmd/compare/compare $s && "; done
  NFTPOL_BIN_DIR=$target/$profile NFTPOL_COMPARE_BENCH=$bench bash hack/compare/vm.sh "${cmd}true" >"$out"
  where="a VM (qemu TCG, 2 vCPUs, 6 GiB) booting Debian's $(cat /var/cache/nftpol-kernels/trixie/release) on"
else
  export NFTPOL_KNP_BIN=$knp NFTPOL_BIN=$target/$profile/nftpol
  export bench
  STEPS=$(printf '%s\n' "${steps[@]}") bash hack/compare/with-kube.sh bash -c '
    while read -r line; do [ -n "$line" ] || continue; read -r -a a <<<"$line"; "$bench" "${a[@]}"; done <<<"$STEPS"' >"$out"
  where="this machine:"
fi
echo "# nftpol vs kube-network-policies"
echo
echo "- Machine: $where $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), shared with other jobs)"
echo "- Versions: nftpol $(git describe --always --dirty) ($profile build), kube-network-policies $(basename "$knp" | sed 's/kube-network-policies-//') (unchanged, $(go version | cut -d' ' -f3)), Kubernetes v$(cat /var/cache/nftpol-cluster/kube.version) ($kube)"
echo "- Command: hack/compare/run.sh $args; took $((SECONDS - t0)) s"
echo
cat "$out"
