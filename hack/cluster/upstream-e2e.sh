#!/usr/bin/env bash
# Runs the upstream NetworkPolicy e2e suite (k/k test/e2e/network/netpol, `[sig-network] Netpol`)
# against the cluster of hack/cluster/up.sh, with e2e.test from hack/cluster/build.sh.
# Skipped: SCTPConnectivity (this kernel has no IP_SCTP) and LoadBalancer (no load balancer).
# Whatever enforces the policies is whatever is installed (hack/cluster/nftpol.sh install):
# without an enforcer, the suite must fail.
#
# Usage: hack/cluster/upstream-e2e.sh [--focus REGEX] [--skip REGEX] [--nodes N] [--list]
#   --focus  narrows the selection (ANDed with `\[sig-network\] Netpol`); default: all of it
#   --nodes  ginkgo parallel processes (default 1: serial)
#   --list   prints the selected tests without running them
# Prints ginkgo's summary and, last, `N passed, M failed`; exits non-zero on any failure.
# The full output goes to /var/log/nftpol-cluster/upstream-e2e-<time>.log.
set -euo pipefail
SCRIPT=upstream-e2e.sh
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"

focus='\[sig-network\] Netpol'
skip='SCTPConnectivity|LoadBalancer'
extra_focus=''
nodes=1
list=0
while [ $# -gt 0 ]; do
  case $1 in
    --focus) extra_focus=$2; shift 2 ;;
    --skip) skip="$skip|$2"; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --list) list=1; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[ -x "$BIN/e2e.test" ] || die "$BIN/e2e.test missing: run hack/cluster/build.sh e2e"
[ -f "$KUBECONFIG_ADMIN" ] || die "no cluster: run hack/cluster/up.sh"

# Ginkgo's own flags: `--ginkgo.X` for e2e.test run directly, `--X` for the ginkgo runner.
# Several --focus flags are ORed by ginkgo: an extra focus is folded into the one regex.
[ -z "$extra_focus" ] || focus="$focus.*($extra_focus)"
gflags=(--focus="$focus" --skip="$skip" --no-color --timeout=4h)
args=(--kubeconfig="$KUBECONFIG_ADMIN" --provider=local
  --disable-log-dump=true --dump-logs-on-failure=false --e2e-output-dir="$LOGS/e2e-output"
  --report-dir="$LOGS/e2e-report")
direct=("${args[@]}" "${gflags[@]/#--/--ginkgo.}")

if [ $list = 1 ]; then
  "$BIN/e2e.test" "${direct[@]}" --ginkgo.dry-run --ginkgo.v 2>/dev/null \
    | sed -n 's/^\(\[sig-network\] Netpol.*\)$/\1/p' | sort -u
  exit 0
fi

mkdir -p "$LOGS/e2e-output" "$LOGS/e2e-report"
out=$LOGS/upstream-e2e-$(date -u +%Y%m%dT%H%M%SZ).log
log "running; full output in $out"
t0=$SECONDS
set +e
if [ "$nodes" -gt 1 ]; then
  # ginkgo from the same module as e2e.test, so the versions of the runner and the suite agree.
  (cd "$LOGS/e2e-output" && "$BIN/ginkgo" --nodes="$nodes" "${gflags[@]}" "$BIN/e2e.test" -- "${args[@]}") >"$out" 2>&1
else
  (cd "$LOGS/e2e-output" && "$BIN/e2e.test" "${direct[@]}") >"$out" 2>&1
fi
rc=$?
set -e
dur=$((SECONDS - t0))

# Ginkgo's summary: failed specs, "Ran N of M Specs", "X Passed | Y Failed | ...".
sed -n '/^Summarizing [0-9]* Failure/,/^$/p; /^Ran [0-9]* of [0-9]* Specs/p; /Passed | [0-9]* Failed/p' "$out" >&2
passed=$(sed -n 's/.* \([0-9][0-9]*\) Passed | \([0-9][0-9]*\) Failed.*/\1/p' "$out" | tail -1)
failed=$(sed -n 's/.* \([0-9][0-9]*\) Passed | \([0-9][0-9]*\) Failed.*/\2/p' "$out" | tail -1)
if [ -z "$passed" ]; then
  tail -n 30 "$out" >&2
  log "no ginkgo summary (exit status $rc) after ${dur}s"
  echo "0 passed, 0 failed"
  exit 1
fi
log "took ${dur}s (exit status $rc)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$rc" = 0 ]
