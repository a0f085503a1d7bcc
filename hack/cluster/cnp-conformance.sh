#!/usr/bin/env bash
# Runs the upstream ClusterNetworkPolicy conformance suite of sigs.k8s.io/network-policy-api
# (`go test -c ./conformance` of the version hack/cluster/build.sh cnp-conformance pins), its code
# unchanged, against the cluster of hack/cluster/up.sh: profile ClusterNetworkPolicy, features
# ClusterNetworkPolicy (standard), ClusterNetworkPolicyNamedPorts and
# ClusterNetworkPolicyEgressNodePeers.
#
# Around the suite it installs the module's experimental-channel CRD (the one with `nodes` peers)
# with `kubectl apply --server-side`, starts nftpol (see below), and at the end stops nftpol,
# removes table inet nftpol, the CRD (and with it every ClusterNetworkPolicy) and what it added.
#
# This kernel has no SCTP sockets (no IP_SCTP), which the suite cannot be told:
# * its base StatefulSets run `agnhost porter` SCTP servers, which exit at once on this kernel, so
#   no pod would ever be Ready and the suite's setup would fail after 300 s. A
#   MutatingAdmissionPolicy (`nftpol-cnp-conformance-no-sctp`, only for pods labelled
#   `conformance-house`, only containers with a SERVE_SCTP_PORT_* variable) runs `/agnhost pause`
#   in those containers instead: they could serve nothing here anyway. The same policy lets the
#   single node run the second replica of the host-network `centaur` (same address and ports as
#   the first, which the scheduler refuses): its servers run `/agnhost pause` without ports, and
#   centaur-0's servers answer on the address both have.
# * the subtests that probe SCTP (`agnhost connect --protocol=sctp` answers "OTHER: protocol not
#   supported", neither connected nor TIMEOUT) are left out with `-test.skip` (listed by
#   --list-sctp; the suite's feature flags cannot exempt them, SCTP is part of the standard
#   feature). 20 of them probe only SCTP; 20 also probe TCP/UDP, which then go untested.
#   --with-sctp runs them (they fail).
#
# nftpol, for the run (one of):
#   (default)             hack/cluster/nftpol.sh install, the manifests' image; uninstall after
#   --nftpol-image IMAGE  the same, with that image (hack/cluster/nftpol.sh install IMAGE)
#   --nftpol-binary PATH  PATH run on the node as a host process, as the DaemonSet runs it
#                         (`daemon --metrics-addr=0.0.0.0:9964`, NODE_NAME) with the admin
#                         kubeconfig; log in /var/log/nftpol-cluster/nftpol-host.log
#   --no-nftpol           nothing: the suite must fail
# Other options:
#   --run REGEX           only the tests whose name (CNPAdminTierEgressTCP, ...) matches
#   --with-sctp           also the subtests that probe SCTP
#   --timeout DURATION    the suite's -test.timeout (default 60m): it then stops, and reports
#                         what finished
#   --list-sctp           print the SCTP subtests left out (test/subtest) and exit
#
# Prints each failed subtest, and last `N passed, M failed` (subtests, the suite's leaves; the
# SCTP ones left out are counted in neither); exits non-zero on any failure. The full output
# (with the suite's own report) goes to /var/log/nftpol-cluster/cnp-conformance-<time>.log.
set -euo pipefail
SCRIPT=cnp-conformance.sh
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"

SUITE_BIN=$BIN/cnp-conformance.test
SUITE_DIR=$CACHE/cnp-conformance
FEATURES=ClusterNetworkPolicy,ClusterNetworkPolicyNamedPorts,ClusterNetworkPolicyEgressNodePeers
MAP_NAME=nftpol-cnp-conformance-no-sctp

# The subtests of network-policy-api v0.3.0 that probe SCTP: whole tests (only SCTP), then
# test/subtest (mixed with TCP/UDP probes), as Go names them (spaces become underscores).
SCTP_TESTS=(CNPAdminTierEgressSCTP CNPAdminTierIngressSCTP CNPBaselineTierEgressSCTP CNPBaselineTierIngressSCTP)
SCTP_SUBTESTS=(
  "CNPAdminTierEgressNodePeers/Should support a 'deny-egress' rule policy for egress-node-peer"
  "CNPAdminTierEgressInlineCIDRPeers/Should support a 'deny-egress' rule policy for egress-cidr-peer"
  "CNPAdminTierEgressInlineCIDRPeers/Should support an 'allow-egress' rule policy for egress-cidr-peer"
  "CNPAdminTierGress/Should support an 'allow-gress' policy across different protocols"
  "CNPAdminTierGress/Should support an 'allow-gress' policy across different protocols at the specified ports"
  "CNPAdminTierGress/Should support an 'deny-gress' policy across different protocols"
  "CNPAdminTierGress/Should support a 'deny-gress' policy across different protocols at the specified ports"
  "CNPAdminTierGress/Should support an 'pass-gress' policy across different protocols"
  "CNPAdminTierGress/Should support a 'pass-gress' policy across different protocols at the specified ports"
  "CNPAdminTierPortRange/Should support egress port range rules across different protocols"
  "CNPAdminTierPortRange/Should support ingress port range rules across different protocols"
  "CNPBaselineTierEgressNodePeers/Should support a 'deny-egress' rule policy for egress-node-peer"
  "CNPBaselineTierEgressInlineCIDRPeers/Should support a 'deny-egress' rule policy for egress-cidr-peer"
  "CNPBaselineTierEgressInlineCIDRPeers/Should support an 'allow-egress' rule policy for egress-cidr-peer"
  "CNPBaselineTierGress/Should support an 'allow-gress' policy across different protocols"
  "CNPBaselineTierGress/Should support an 'allow-gress' policy across different protocols at the specified ports"
  "CNPBaselineTierGress/Should support an 'deny-gress' policy across different protocols"
  "CNPBaselineTierGress/Should support a 'deny-gress' policy across different protocols at the specified ports"
  "CNPBaselineTierPortRange/Should support egress port range rules across different protocols"
  "CNPBaselineTierPortRange/Should support ingress port range rules across different protocols"
)

mode=daemonset
image=''
binary=''
run_re=''
with_sctp=0
timeout=60m
while [ $# -gt 0 ]; do
  case $1 in
    --nftpol-image) mode=daemonset image=$2; shift 2 ;;
    --nftpol-binary) mode=binary binary=$(realpath -m "$2"); shift 2 ;;
    --no-nftpol) mode=none; shift ;;
    --run) run_re=$2; shift 2 ;;
    --with-sctp) with_sctp=1; shift ;;
    --timeout) timeout=$2; shift 2 ;;
    --list-sctp)
      printf '%s\n' "${SCTP_TESTS[@]/%//*}" "${SCTP_SUBTESTS[@]}"
      exit 0 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done

[ -x "$SUITE_BIN" ] || die "$SUITE_BIN missing: run hack/cluster/build.sh cnp-conformance"
CRD=$SUITE_DIR/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml
[ -f "$CRD" ] || die "$CRD missing: run hack/cluster/build.sh cnp-conformance"
[ -f "$KUBECONFIG_ADMIN" ] || die "no cluster: run hack/cluster/up.sh"
[ "$mode" != binary ] || [ -x "$binary" ] || die "--nftpol-binary: $binary is not executable"
export KUBECONFIG=$KUBECONFIG_ADMIN
have=$(ctrk images ls -q)
for ref in $(cat "$SUITE_DIR/images"); do
  grep -qxF "$ref" <<<"$have" || die "image $ref is not in containerd: hack/images/build.sh agnhost, then up.sh"
done
if kc get ns -l conformance-house -o name | grep -q .; then
  die "namespaces of an earlier run are still there: kubectl delete ns -l conformance-house"
fi

# --- the selection -------------------------------------------------------------------------
# Go splits -test.run/-test.skip at top-level `|` into alternatives and each alternative at `/`
# into one pattern per level of the test's name.
go_name() { printf '%s' "${1// /_}"; } # what testing.T.Run makes of a name
skip=''
if [ $with_sctp = 0 ]; then
  for t in "${SCTP_TESTS[@]}"; do skip="$skip|^TestConformanceProfiles\$/^$t\$"; done
  for s in "${SCTP_SUBTESTS[@]}"; do
    n=$(go_name "$s")
    [[ "$n" != *[.\[\]\(\)*+?{}\|^\$\\]* ]] || die "a subtest name needs regex quoting: $n"
    skip="$skip|^TestConformanceProfiles\$/^${n%%/*}\$/^${n#*/}\$"
  done
  skip=${skip#|}
fi
run='^TestConformanceProfiles$'
[ -z "$run_re" ] || run="$run/$run_re"

# --- setup and teardown --------------------------------------------------------------------
host_pid=''
cleanup() {
  local rc=$?
  set +e
  case $mode in
    binary)
      if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
        kill "$host_pid"
        for _ in $(seq 50); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$host_pid" 2>/dev/null
      fi
      rm -f "$RUN/pids/nftpol-host.pid"
      # The daemon leaves its rules in place when it stops, by design: the uninstall path.
      "$binary" cleanup >&2 && rm -f "$STATE/nftpol-installed"
      ;;
    daemonset) "$HERE/nftpol.sh" uninstall ;;
  esac
  # The suite deletes its namespaces without waiting for them to go.
  kc wait --for=delete ns -l conformance-house --timeout=180s >/dev/null 2>&1
  kc delete --ignore-not-found -f "$CRD" >/dev/null
  kc delete --ignore-not-found mutatingadmissionpolicybinding/$MAP_NAME mutatingadmissionpolicy/$MAP_NAME >/dev/null
  log "cleaned up (CRD, admission policy, nftpol: $mode)"
  exit "$rc"
}
trap cleanup EXIT
trap "exit 143" TERM INT # so that the EXIT trap runs

log "installing the CRD: $CRD"
kc apply --server-side -f "$CRD" >/dev/null
# A CRD created a moment ago has no status yet, on which `kubectl wait` fails instead of waiting.
wait_for "CRD established" 60 kc wait --for condition=established --timeout=5s \
  crd/clusternetworkpolicies.policy.networking.k8s.io

log "admission policy $MAP_NAME: no SCTP servers; centaur-1 serves through centaur-0"
kc apply --server-side -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata: {name: $MAP_NAME}
spec:
  failurePolicy: Fail
  reinvocationPolicy: Never
  matchConstraints:
    objectSelector: {matchExpressions: [{key: conformance-house, operator: Exists}]}
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  variables:
  - name: sctp
    expression: >
      lists.range(size(object.spec.containers)).filter(i, has(object.spec.containers[i].env)
        && object.spec.containers[i].env.exists(e, e.name.startsWith('SERVE_SCTP_PORT_')))
  # A second host-network replica on the only node: same address as the first, same ports.
  - name: twin
    expression: >
      has(object.spec.hostNetwork) && object.spec.hostNetwork
        && has(object.metadata.labels) && object.metadata.labels[?'apps.kubernetes.io/pod-index'].orValue('0') != '0'
  # JSONPatch: an ApplyConfiguration "may not mutate atomic arrays" such as command.
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        (variables.twin
          ? lists.range(size(object.spec.containers)).filter(i, has(object.spec.containers[i].command))
          : variables.sctp
        ).map(i, JSONPatch{op: "add", path: "/spec/containers/" + string(i) + "/command",
            value: ["/agnhost", "pause"]})
        + (variables.twin
          ? lists.range(size(object.spec.containers)).filter(i, has(object.spec.containers[i].ports))
              .map(i, JSONPatch{op: "remove", path: "/spec/containers/" + string(i) + "/ports"})
          : [])
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata: {name: $MAP_NAME}
spec: {policyName: $MAP_NAME}
EOF
# A policy takes effect once the API server has loaded it: a dry-run pod shows when.
probe_sctp_shim() {
  local got
  got=$(kc -n default create --dry-run=server -o jsonpath='{.spec.containers[0].command}' -f - 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: nftpol-sctp-probe, labels: {conformance-house: probe}}
spec:
  containers:
  - name: porter
    image: $(grep '/agnhost:' "$SUITE_DIR/images" | head -n 1)
    command: ["/bin/bash", "-c", "/agnhost porter"]
    env: [{name: SERVE_SCTP_PORT_9003, value: foo}]
EOF
)
  echo "$got"
  [[ "$got" == *pause* ]]
}
deadline=$((SECONDS + 60))
until probe_sctp_shim >"$LOGS/cnp-conformance-probe.out"; do
  if [ $SECONDS -ge $deadline ]; then
    cat "$LOGS/cnp-conformance-probe.out" >&2
    kc get mutatingadmissionpolicy "$MAP_NAME" -o yaml >&2
    die "admission policy $MAP_NAME not in effect after 60 s"
  fi
  sleep 0.5
done

case $mode in
  daemonset)
    "$HERE/nftpol.sh" install ${image:+"$image"}
    ;;
  binary)
    log "starting $binary daemon on the node (log $LOGS/nftpol-host.log)"
    mkdir -p "$RUN/pids" "$LOGS" "$CG_DAEMONS"
    # In the daemons' cgroup, so that down.sh stops it too should this script be killed.
    NODE_NAME=$NODE_NAME setsid sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$CG_DAEMONS" \
      "$binary" daemon --metrics-addr=0.0.0.0:9964 --kubeconfig "$KUBECONFIG_ADMIN" \
      </dev/null >>"$LOGS/nftpol-host.log" 2>&1 &
    host_pid=$!
    echo "$host_pid" >"$RUN/pids/nftpol-host.pid"
    touch "$STATE/nftpol-installed" # down.sh then also deletes table inet nftpol
    wait_for "nftpol /readyz" 60 curl -fsS "http://$NODE_IP:9964/readyz"
    wait_for "table inet nftpol" 30 nft list table inet nftpol
    log "nftpol runs (pid $host_pid): $("$binary" --version 2>/dev/null || echo "$binary")"
    ;;
  none) log "no nftpol: the suite must fail" ;;
esac

# --- the suite -----------------------------------------------------------------------------
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$LOGS/cnp-conformance-$stamp.log
version=$(cat "$CACHE/cnp-conformance.version" 2>/dev/null || echo unknown)
log "running network-policy-api $version conformance (features $FEATURES); full output in $out"
t0=$SECONDS
set +e
(cd "$LOGS" && "$SUITE_BIN" -test.v -test.timeout "$timeout" -test.run "$run" ${skip:+-test.skip "$skip"} \
  -conformance-profiles=ClusterNetworkPolicy -supported-features="$FEATURES" \
  -organization=nftpol -project=nftpol -url=https://nftpol.invalid -version="$mode" -contact=nftpol \
  -additional-info=hack/cluster/cnp-conformance.sh) >"$out" 2>&1
rc=$?
set -e
dur=$((SECONDS - t0))

# Leaves of the result tree: subtests, or a test (or the whole run) that failed or was skipped
# before any.
python3 - "$out" >"$out.summary" <<'EOF'
import re, sys
res = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s*--- (PASS|FAIL|SKIP): (\S+) \(", line)
    if m:
        res[m.group(2)] = m.group(1)
leaves = [n for n in res if not any(o.startswith(n + "/") for o in res)]
# A test whose subtests were all left out by -test.skip passes with no subtest: not counted.
leaves = [n for n in leaves if n.count("/") == 2 or res[n] != "PASS"]
count = {"PASS": 0, "FAIL": 0, "SKIP": 0}
for n in sorted(leaves):
    count[res[n]] += 1
    if res[n] != "PASS":
        print(f"{res[n]} {n.removeprefix('TestConformanceProfiles/')}")
print(f"{count['PASS']} {count['FAIL']} {count['SKIP']}")
EOF
sed '$d' "$out.summary" >&2
read -r passed failed skipped < <(tail -n 1 "$out.summary")
rm -f "$out.summary"
if [ $with_sctp = 1 ]; then sctp_note='SCTP subtests run (--with-sctp)'; else
  sctp_note="SCTP left out: ${#SCTP_TESTS[@]} tests (20 subtests) and ${#SCTP_SUBTESTS[@]} subtests"; fi
log "took ${dur}s (exit status $rc); $skipped skipped by the suite itself; $sctp_note"
[ "$((passed + failed))" -gt 0 ] || { tail -n 30 "$out" >&2; failed=$((failed + 1)); }
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$rc" = 0 ]
