#!/usr/bin/env bash
# The Helm chart (charts/nftpol) on the cluster of hack/cluster/up.sh, the way an operator uses
# it: install, upgrade with a changed value, and the chart's uninstall path, each checked on the
# node (DaemonSet Ready, table inet nftpol, /metrics on the node's address only) and with real
# connections (hack/cluster/policy-check.sh). Also `kubectl apply -k manifests/` on this cluster,
# which has no Prometheus Operator, must succeed (hack/cluster/nftpol.sh install/uninstall).
#
# Usage: hack/cluster/helm-check.sh [IMAGE]   (needs the cluster up; builds helm once, cached)
#   IMAGE: the image to install (e.g. docker.io/library/nftpol:ci, packed by ci.sh); default:
#   the chart's own (`nftpol:` its appVersion)
# Prints one line per step with its time, and `helm-check: all N steps passed` at the end.
set -euo pipefail
SCRIPT=helm-check.sh
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
[ -f "$KUBECONFIG_ADMIN" ] || die "no cluster: run hack/cluster/up.sh"
export KUBECONFIG=$KUBECONFIG_ADMIN
bash "$REPO/hack/cluster/build.sh" helm >/dev/null
CHART=$REPO/charts/nftpol
NS=kube-system
image_args=()
if [ -n "${1:-}" ]; then
  image_args=(--set "image.repository=${1%:*}" --set "image.tag=${1##*:}")
fi
steps=0
step() { steps=$((steps + 1)); log "step $steps: $* ($((SECONDS - t0)) s)"; t0=$SECONDS; }
helm() { "$BIN/helm" "$@"; }
args() { kc -n $NS get ds/nftpol -o jsonpath='{.spec.template.spec.containers[0].args}'; }
enforced() {
  wait_for "table inet nftpol" 30 nft list table inet nftpol
  wait_for "nftpol /metrics on $NODE_IP" 30 curl -fsS "http://$NODE_IP:9964/metrics"
  local listen; listen=$(ss -Htln 'sport = :9964' | awk '{print $4}' | tr '\n' ' ')
  [ "$listen" = "$NODE_IP:9964 " ] || die "port 9964 should listen on $NODE_IP only, got: $listen"
  # seccompProfile RuntimeDefault in force (mode 2: filter) on the daemon, found through the pod's
  # cgroup: other nftpol processes (tests in network namespaces) may run on this machine.
  local pid seccomp=""
  for pid in $(pgrep -x nftpol); do
    grep -q kubepods "/proc/$pid/cgroup" 2>/dev/null || continue
    seccomp=$(awk '/^Seccomp:/ {print $2}' "/proc/$pid/status")
  done
  [ "$seccomp" = 2 ] || die "the daemon's Seccomp mode is '$seccomp', not 2 (filter)"
}
t0=$SECONDS

bash "$HERE/policy-check.sh" open
step "before: no enforcer, the default-deny-ingress probe goes through"

helm install nftpol "$CHART" -n $NS "${image_args[@]}" --wait --timeout 3m
kc -n $NS rollout status ds/nftpol --timeout=60s
touch "$STATE/nftpol-installed" # down.sh then also deletes table inet nftpol
enforced
log "args: $(args)"
bash "$HERE/policy-check.sh" blocked
step "helm install: DaemonSet Ready, table inet nftpol, /metrics on $NODE_IP:9964 only, seccomp filter on, probe blocked"

# README "Verify enforcement in two minutes", as written there (with a deadline for the policy
# to reach the node instead of the reader's patience).
V=nftpol-verify
kc apply -f "$REPO/examples/verify/00-pods.yaml"
kc -n $V wait --for=condition=Ready pod/server pod/client --timeout=120s
ip=$(kc -n $V get pod server -o jsonpath='{.status.podIP}')
kc -n $V exec client -- /agnhost connect "$ip:8080" --timeout=3s
kc apply -f "$REPO/examples/verify/10-default-deny.yaml"
deadline=$((SECONDS + 20))
while kc -n $V exec client -- /agnhost connect "$ip:8080" --timeout=3s; do
  [ $SECONDS -lt $deadline ] || die "still open 20 s after the default deny"
  sleep 1
done
wait_for "the drop in the flow log" 30 sh -c \
  "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' -n $NS logs ds/nftpol | grep $V"
kc -n $NS logs ds/nftpol | grep $V | tail -n 1 >&2
kc delete namespace $V --wait --timeout=60s
step "README verify: the client connects, then times out under examples/verify/'s default deny"

gen=$(kc -n $NS get ds/nftpol -o jsonpath='{.metadata.generation}')
helm upgrade nftpol "$CHART" -n $NS --reuse-values --set mode=audit --set logFormat=json --wait --timeout 3m
kc -n $NS rollout status ds/nftpol --timeout=120s
[ "$(kc -n $NS get ds/nftpol -o jsonpath='{.metadata.generation}')" -gt "$gen" ] || die "upgrade did not change the DaemonSet"
args | grep -q -- '--mode=audit' || die "--mode=audit not in $(args)"
enforced
bash "$HERE/policy-check.sh" open
wait_for "an audit line in the pod's JSON log" 30 sh -c \
  "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' -n $NS logs ds/nftpol | grep '\"action\":\"audit\"'"
curl -fsS "http://$NODE_IP:9964/metrics" | grep '^nftpol_audit_would_drop_packets' >&2
step "helm upgrade --set mode=audit --set logFormat=json: rolled, probe open, JSON audit lines, would-drop counted"

helm upgrade nftpol "$CHART" -n $NS --reuse-values --set mode=enforce --wait --timeout 3m
kc -n $NS rollout status ds/nftpol --timeout=120s
bash "$HERE/policy-check.sh" blocked
step "helm upgrade --set mode=enforce: probe blocked again"

helm upgrade nftpol "$CHART" -n $NS --reuse-values --set cleanup.enabled=true --wait --timeout 3m
kc -n $NS rollout status ds/nftpol-cleanup --timeout=120s
wait_for "table inet nftpol to go" 60 sh -c '! nft list table inet nftpol'
kc -n $NS get ds/nftpol >/dev/null 2>&1 && die "the enforcing DaemonSet is still there"
helm uninstall nftpol -n $NS --wait --timeout 3m
rm -f "$STATE/nftpol-installed"
left=$(kc get ds,sa,clusterrole,clusterrolebinding -A -l app.kubernetes.io/instance=nftpol -o name)
[ -z "$left" ] || die "left behind: $left"
nft list table inet nftpol >/dev/null 2>&1 && die "table inet nftpol is back"
bash "$HERE/policy-check.sh" open
step "uninstall (upgrade --set cleanup.enabled=true, then helm uninstall): table gone, nothing left, probe open"

bash "$HERE/nftpol.sh" install
bash "$HERE/policy-check.sh" blocked
bash "$HERE/nftpol.sh" uninstall
bash "$HERE/policy-check.sh" open
step "kubectl apply -k manifests/ without the Prometheus Operator (nftpol.sh install, uninstall)"

log "all $steps steps passed"
