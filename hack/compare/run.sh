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
# The scale figures (10,000 pods / 2,000 policies, then 50,000 / 5,000) need an API server that
# holds that many objects, which the emulated one takes hours to fill: they use an API server on
# this machine (hack/compare/with-kube.sh), filled natively by `compare scale --populate-only`,
# which the VM reaches over QEMU's user-mode network (vm.sh, NFTPOL_COMPARE_REMOTE_STATE).
#
# Usage: hack/compare/run.sh [--short] [--corpus-only | --figures-only | --scale-only]
#                            [--modes bridge,routed]
#   --short: the CI run: figures and scale only (2 rounds, 0 and 10 policies, 10 changes, 5 new
#            pods, one start at 1,000 pods / 200 policies) with the debug build the tests already
#            made; its figures only prove that the comparison still runs.
# Env:   NFTPOL_COMPARE_VM=1 forces the VM; =0 forbids it.
#        NFTPOL_COMPARE_FIGURES_ARGS: more arguments of `compare figures` (--rounds N, --changes N,
#        --new-pods N), to fit a run in the time at hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
short=() corpus=1 figures=1 scale=1 modes=bridge args="$*"
scales="10000/2000 50000/5000" scale_args="--rounds 2 --idle 20"
while [ $# -gt 0 ]; do
  case $1 in
    --short) short=(--short) corpus=0 scales="1000/200" scale_args="--rounds 1 --idle 5" ;;
    --corpus-only) figures=0 scale=0 ;;
    --figures-only) corpus=0 scale=0 ;;
    --scale-only) corpus=0 figures=0 ;;
    --modes) modes=$2; shift ;;
    *) echo "usage: $0 [--short] [--corpus-only|--figures-only|--scale-only] [--modes bridge,routed]" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "compare/run.sh: $*" >&2; }
t0=$SECONDS

knp=$(bash hack/compare/build.sh | tail -n1)
# The v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy CRDs (the last two lines), for
# the AdminNetworkPolicy figures: kube-network-policies v0.8.0 reads those, not
# ClusterNetworkPolicy.
crds=$(bash hack/kube/npa-crds.sh | tail -n2 | tr '\n' ' ')
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
[ "$figures" = 1 ] && steps+=("figures ${short[*]} --scale-pods 0 ${NFTPOL_COMPARE_FIGURES_ARGS:-}")

out=$(mktemp /tmp/nftpol-compare-out.XXXXXX)
trap 'rm -f "$out"' EXIT
if [ "$vm" = 1 ]; then
  log "this kernel ($(uname -r)) has no nft_queue: running in a VM (Debian trixie, TCG)"
  export NFTPOL_BIN_DIR=$target/$profile NFTPOL_COMPARE_BENCH=$bench NFTPOL_COMPARE_FILES=$crds
  if [ ${#steps[@]} -gt 0 ]; then
    cmd="export NFTPOL_COMPARE_NPA_CRDS='$crds'; "
    for s in "${steps[@]}"; do cmd="$cmd/compare/compare $s && "; done
    bash hack/compare/vm.sh "${cmd}true" >"$out"
  fi
  where="a VM (qemu TCG, 2 vCPUs, 6 GiB) booting Debian's $(cat "${NFTPOL_KERNELS_CACHE:-/var/cache/nftpol-kernels}/trixie/release") on"
else
  export NFTPOL_KNP_BIN=$knp NFTPOL_BIN=$target/$profile/nftpol NFTPOL_COMPARE_NPA_CRDS=$crds
  export bench
  if [ ${#steps[@]} -gt 0 ]; then
    STEPS=$(printf '%s\n' "${steps[@]}") bash hack/compare/with-kube.sh bash -c '
      while read -r line; do [ -n "$line" ] || continue; read -r -a a <<<"$line"; "$bench" "${a[@]}"; done <<<"$STEPS"' >"$out"
  fi
  where="this machine:"
fi
if [ "$scale" = 1 ]; then
  # One API server on this machine grows from one scale to the next; the engines start on it
  # here, or in the VM. The rows continue the figures' table (--rows-only).
  [ "$figures" = 1 ] && rows=--rows-only || rows=
  export bench vm scales scale_args rows
  bash hack/compare/with-kube.sh bash -c '
    set -e
    for s in $scales; do
      pods=${s%/*} policies=${s#*/}
      t=$SECONDS
      "$bench" scale --pods "$pods" --policies "$policies" --populate-only
      echo "compare/run.sh: $pods pods and $policies policies in the API server in $((SECONDS - t)) s" >&2
      run="scale --no-populate --pods $pods --policies $policies $scale_args $rows"
      read -r -a a <<<"$run"
      if [ "$vm" = 1 ]; then
        NFTPOL_COMPARE_REMOTE_STATE=$NFTPOL_KUBE_STATE bash hack/compare/vm.sh "/compare/compare $run"
        # And nftpol alone on this machine'"'"'s kernel, not emulated: what its targets are about.
        NFTPOL_BIN=$NFTPOL_BIN_DIR/nftpol "$bench" "${a[@]}" --rows-only --engines nftpol \
          --note "nftpol on this machine, not emulated"
      else
        "$bench" "${a[@]}"
      fi
      rows=--rows-only
    done' >>"$out"
fi
echo "# nftpol vs kube-network-policies"
echo
echo "- Machine: $where $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), shared with other jobs)"
echo "- Versions: nftpol $(git describe --always --dirty) ($profile build), kube-network-policies $(basename "$knp" | sed 's/kube-network-policies-//') (unchanged, $(go version | cut -d' ' -f3)), Kubernetes v$(cat "${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}/kube.version") ($kube)"
echo "- Command: hack/compare/run.sh $args; took $((SECONDS - t0)) s"
echo
cat "$out"
