#!/usr/bin/env bash
# Smoke test of the hack/kube/ control plane: builds (or reuses) kube-apiserver and etcd
# (hack/cluster/build.sh), brings a cluster up in its own network namespace, and checks what
# nftpol's e2e tests rely on:
#   - a Namespace, which the API server labels kubernetes.io/metadata.name itself, a Pod with
#     spec.nodeName and a status written through the status subresource (no kubelet), a
#     NetworkPolicy with an SCTP port and a port range (endPort), all listed back with kubectl;
#   - a node namespace linked by connect.sh reaches the API server;
#   - a ServiceAccount kubeconfig (sa-kubeconfig.sh, TokenRequest) authenticates, and RBAC
#     applies to it;
#   - SIGKILL + restart of the apiserver keeps the data; after an etcd compaction a watch
#     resumed from an old resourceVersion gets 410 Gone, and a fresh watch works;
#   - pod deletion with grace period 0, namespace deletion (controller-manager), then down.sh
#     leaves no namespace and no process behind.
# Exits non-zero on any failure (and still tears everything down). Prints timings at the end.
#
# Usage: hack/kube/smoke.sh      (as root; the first run builds, see hack/kube/README.md)
set -euo pipefail
export KUBE_SCRIPT=smoke.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
kube_need_root

step() { echo; echo "=== $*"; }
fail() { echo "smoke.sh: FAILED: $*" >&2; exit 1; }
ms() { date +%s%3N; }

STATE=$(mktemp -d /tmp/nftpol-kube-smoke.XXXXXX)
NODE_NS=nftpol-kube-smoke-$$
cleanup() {
  local rc=$?
  ip netns del "$NODE_NS" 2>/dev/null || true
  if [ $rc -ne 0 ] && [ -d "$STATE" ]; then
    for f in "$STATE"/*.log; do [ -f "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }; done
  fi
  bash "$here/down.sh" "$STATE" || true
  [ $rc -eq 0 ] || echo "smoke.sh: FAILED (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "build (cached after the first run)"
t=$(ms); BIN=$(bash "$here/build.sh" | tail -n1); t_build=$(( $(ms) - t ))
"$BIN/kube-apiserver" --version
export PATH=$BIN:$PATH   # kubectl of the same version
KUBE_VERSION=$("$BIN/kube-apiserver" --version | awk '{print $2}')

step "up"
t=$(ms); bash "$here/up.sh" "$STATE"; t_up=$(( $(ms) - t ))
kube_load_state "$STATE"
export KUBECONFIG=$NFTPOL_KUBE_KUBECONFIG
k() { kubectl "$@"; }
out=$(k version 2>&1 || true); echo "$out"
grep -q 'Server Version' <<< "$out" || fail "kubectl version shows no server"
[ "$(kube_curl /version | jq -r .gitVersion)" = "$KUBE_VERSION" ] || fail "/version is not $KUBE_VERSION"

step "objects: namespace, pod with nodeName + status, NetworkPolicy with SCTP and endPort"
k apply -f - <<'EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: smoke
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: smoke
  labels: {app: web}
spec:
  nodeName: node-a
  containers:
  - name: web
    image: registry.invalid/pause
    ports:
    - {name: http, containerPort: 80, protocol: TCP}
    - {name: sig, containerPort: 3868, protocol: SCTP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-sctp
  namespace: smoke
spec:
  podSelector:
    matchLabels: {app: web}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: smoke}
    ports:
    - {protocol: SCTP, port: 3868}
    - {protocol: TCP, port: http}
    - {protocol: TCP, port: 8000, endPort: 8080}
EOF
k -n smoke patch pod web --subresource=status --type=merge \
  -p '{"status":{"phase":"Running","podIP":"10.244.1.3","podIPs":[{"ip":"10.244.1.3"}]}}'
k get ns smoke --show-labels
k -n smoke get pods -o wide
k -n smoke get networkpolicies -o yaml | sed -n '/^  spec:/,/^  status/p'
[ "$(k -n smoke get pod web -o jsonpath='{.status.podIP} {.status.phase} {.spec.nodeName}')" = "10.244.1.3 Running node-a" ] \
  || fail "pod status/nodeName not stored"
[ "$(k -n smoke get networkpolicy allow-sctp -o jsonpath='{.spec.ingress[0].ports[0].protocol}/{.spec.ingress[0].ports[0].port}')" = SCTP/3868 ] \
  || fail "SCTP port not stored"
[ "$(k -n smoke get networkpolicy allow-sctp -o jsonpath='{.spec.ingress[0].ports[2].port}-{.spec.ingress[0].ports[2].endPort}')" = 8000-8080 ] \
  || fail "endPort not stored"
[ "$(k get ns smoke -o jsonpath='{.metadata.labels.kubernetes\.io/metadata\.name}')" = smoke ] \
  || fail "the API server did not label the namespace kubernetes.io/metadata.name"

step "a node namespace linked with connect.sh reaches the apiserver"
ip netns add "$NODE_NS"
eval "$(bash "$here/connect.sh" "$STATE" "$NODE_NS")"
[ "$(ip netns exec "$NODE_NS" curl -s -k --max-time 5 "$NFTPOL_KUBE_PEER_SERVER/readyz")" = ok ] || fail "node namespace cannot reach /readyz"
ip netns exec "$NODE_NS" kubectl --kubeconfig "$NFTPOL_KUBE_PEER_KUBECONFIG" -n smoke get pod web -o name \
  || fail "node namespace cannot list pods"

step "ServiceAccount kubeconfig and RBAC"
k -n kube-system create serviceaccount nftpol --dry-run=client -o yaml | k apply -f -
bash "$here/sa-kubeconfig.sh" "$STATE" kube-system nftpol "$STATE/nftpol.kubeconfig"
sak() { kubectl --kubeconfig "$STATE/nftpol.kubeconfig" "$@"; }
[ "$(sak auth can-i list networkpolicies -A 2>/dev/null || true)" = no ] || fail "the SA can list networkpolicies before any binding"
out=$(sak get networkpolicies -A 2>&1 || true)
grep -q Forbidden <<< "$out" || fail "the SA is not forbidden before any binding: $out"
k create clusterrole smoke-reader --verb=get,list,watch --resource=pods,namespaces,networkpolicies.networking.k8s.io
k create clusterrolebinding smoke-reader --clusterrole=smoke-reader --serviceaccount=kube-system:nftpol
[ "$(sak auth can-i list networkpolicies -A)" = yes ] || fail "the binding did not take effect"
[ "$(sak auth can-i delete pods -A 2>/dev/null || true)" = no ] || fail "the SA can delete pods"
sak get networkpolicies -A

step "410 Gone after SIGKILL + restart of the apiserver and an etcd compaction"
old_rv=$(kube_curl /api/v1/namespaces/smoke/pods | jq -er .metadata.resourceVersion)
k -n smoke label pod web step=before-restart
t=$(ms); bash "$here/restart-apiserver.sh" "$STATE"; t_restart=$(( $(ms) - t ))
k -n smoke get pod web -o name || fail "the pod is gone after the restart"
k -n smoke label pod web step=after-restart --overwrite
rev=$(bash "$here/compact.sh" "$STATE")
echo "compacted at etcd revision $rev; resuming a watch from resourceVersion $old_rv"
resp=$(kube_curl "/api/v1/namespaces/smoke/pods?watch=1&resourceVersion=$old_rv&timeoutSeconds=3" || true)
echo "$resp" | head -c 300; echo
echo "$resp" | grep -q '"code":410' || fail "no 410 Gone for a watch from a compacted resourceVersion"
new_rv=$(kube_curl /api/v1/namespaces/smoke/pods | jq -er .metadata.resourceVersion)
( sleep 1; kubectl -n smoke label pod web step=watched --overwrite >/dev/null ) &
resp=$(kube_curl "/api/v1/namespaces/smoke/pods?watch=1&resourceVersion=$new_rv&timeoutSeconds=4" || true)
wait
echo "$resp" | jq -c '{type, rv: .object.metadata.resourceVersion, step: .object.metadata.labels.step}'
echo "$resp" | grep -q '"type":"MODIFIED"' || fail "a fresh watch saw no MODIFIED event"

step "outage: apiserver down (connection refused), compaction while down, back up"
bash "$here/apiserver.sh" "$STATE" kill
kube_readyz && fail "the apiserver still answers after SIGKILL"
k -n smoke get pod web -o name 2>/dev/null && fail "kubectl still works after SIGKILL"
bash "$here/restart-apiserver.sh" "$STATE" --compact   # kill (a no-op now), compact, start
ip netns exec "$NODE_NS" kubectl --kubeconfig "$NFTPOL_KUBE_PEER_KUBECONFIG" -n smoke get pod web -o name \
  || fail "the node namespace cannot list pods after the restart"

step "deletions: pod with grace period 0, namespace (controller-manager)"
k -n smoke delete pod web --grace-period=0 --force 2>&1
k delete namespace smoke --timeout=60s
k get ns smoke >/dev/null 2>&1 && fail "namespace smoke still exists"

step "down"
ns=$NFTPOL_KUBE_NETNS
pids=$(cat "$STATE"/*.pid)
ip netns del "$NODE_NS"
bash "$here/down.sh" "$STATE"
[ ! -e "/var/run/netns/$ns" ] || fail "namespace $ns still exists"
[ ! -e "$STATE" ] || fail "$STATE still exists"
for p in $pids; do   # a zombie waiting for its reaper is dead
  [ ! -d "/proc/$p" ] || [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] \
    || fail "process $p is still running: $(ps -o pid,stat,cmd= -p "$p" | tail -n1)"
done

echo
echo "smoke.sh: OK"
echo "timings: build ${t_build} ms, up ${t_up} ms, restart after SIGKILL ${t_restart} ms"
