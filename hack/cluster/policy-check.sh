#!/usr/bin/env bash
# One NetworkPolicy probe on the cluster of hack/cluster/up.sh: a server pod under a
# default-deny-ingress policy, a client pod beside it, and one TCP connect from the client to the
# server's pod IP and to its Service's ClusterIP (agnhost `connect`, as the upstream suite
# probes). Prints `blocked` or `open` per target and exits non-zero when the result is not the
# expected one.
#
# Usage: hack/cluster/policy-check.sh blocked|open   (namespace nftpol-check, kept between runs)
set -euo pipefail
SCRIPT=policy-check.sh
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
want=${1:-}
case $want in blocked | open) ;; *) die "usage: $0 blocked|open" ;; esac
AGNHOST=${NFTPOL_AGNHOST_IMAGE:-registry.k8s.io/e2e-test-images/agnhost:2.66.1}
NS=nftpol-check

kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: $NS, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: s, image: $AGNHOST, imagePullPolicy: IfNotPresent, command: [/agnhost, netexec, --http-port=8080]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: $AGNHOST, imagePullPolicy: IfNotPresent, command: [/agnhost, pause]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $NS}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: $NS}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
EOF
kc -n $NS wait --for=condition=Ready pod/server pod/client --timeout=120s >/dev/null
pod_ip=$(kc -n $NS get pod server -o jsonpath='{.status.podIP}')
svc_ip=$(kc -n $NS get svc server -o jsonpath='{.spec.clusterIP}')
# The policy may take a moment to reach the dataplane: poll until the expected result or 20 s.
rc=0
for target in "$pod_ip:8080" "$svc_ip:80"; do
  deadline=$((SECONDS + 20))
  while :; do
    if kc -n $NS exec client -- /agnhost connect "$target" --timeout=2s --protocol=tcp >/dev/null 2>&1; then
      got=open
    else
      got=blocked
    fi
    [ "$got" != "$want" ] && [ $SECONDS -lt $deadline ] || break
    sleep 1
  done
  echo "client -> server $target: $got"
  [ "$got" = "$want" ] || rc=1
done
exit $rc
