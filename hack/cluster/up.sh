#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine, from the binaries of
# hack/cluster/build.sh: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd (+ runc), kubelet and kube-proxy in nftables mode. Pods sit on the bridge cni0
# (CNI bridge + host-local, no masquerade, hairpin on: a CNI that enforces no policy); the node
# and the API server use $NODE_IP on the port-less bridge $NODE_LINK. cgroup v1 without systemd:
# kubelet failCgroupV1=false and cgroupfs, containerd SystemdCgroup=false.
#
# Idempotent: what already runs is left alone. Images: every OCI archive in $IMAGES_DIR
# (hack/images/) is imported into containerd's k8s.io namespace; when none provides the
# sandbox image, a tiny pause of our own (hack/cluster/pause) is built and imported.
# State lives in /var/lib/nftpol-cluster and /run/nftpol-cluster, logs in /var/log/nftpol-cluster;
# hack/cluster/down.sh removes all of it (also after a `kill -9`).
#
# Usage: hack/cluster/up.sh        prints `export KUBECONFIG=...` on its last line.
set -euo pipefail
SCRIPT=up.sh
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl \
  containerd containerd-shim-runc-v2 ctr runc; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: run hack/cluster/build.sh first"
done
for b in bridge host-local loopback; do [ -x "$CNI_BIN/$b" ] || die "$CNI_BIN/$b missing: run hack/cluster/build.sh cni"; done
command -v nft >/dev/null || die "nft is needed by kube-proxy's nftables mode"
T0=$SECONDS
mkdir -p "$STATE" "$RUN/pids" "$LOGS" "$PKI"

# --- the host --------------------------------------------------------------------------------
# What up.sh changes on the host is recorded once, so that down.sh can put it back.
# The kubelet (protectKernelDefaults: false) sets vm.overcommit_memory, vm.panic_on_oom,
# kernel.panic, kernel.panic_on_oops and kernel.keys.root_max*: saved with ours.
if [ ! -f "$RUN/host.saved" ]; then
  {
    for k in net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables \
      vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
      kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
      echo "sysctl $k $(cat "/proc/sys/$k")"
    done
    # The propagation of /: "shared:N" in mountinfo's optional fields, or private.
    awk '$5 == "/" { print "root_shared " ($7 ~ /^shared:/ ? 1 : 0); exit }' /proc/self/mountinfo
    # Folders the kubelet, CNI and the shims create outside ours; down.sh removes them if empty.
    # Tables that exist already: down.sh deletes only iptables-nft tables that appear after this.
    echo "tables $(nft list tables 2>/dev/null | awk '{ printf "%s/%s ", $2, $3 }')"
    echo "new_dirs $(for d in /run/containerd /var/log/containers /var/lib/cni; do [ -e "$d" ] || printf '%s ' "$d"; done)"
  } >"$RUN/host.saved"
fi
mount --make-rshared /
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables

if ! ip link show "$NODE_LINK" >/dev/null 2>&1; then
  ip link add "$NODE_LINK" type bridge
fi
ip addr replace "$NODE_IP/$NODE_PREFIX" dev "$NODE_LINK"
ip link set "$NODE_LINK" up
# Pods get their own resolver file: the host's points off-box, and there is no cluster DNS.
printf 'nameserver %s\nsearch cluster.local\noptions ndots:1\n' "$NODE_IP" | put "$STATE/resolv.conf"

# --- certificates ----------------------------------------------------------------------------
ossl() { openssl "$@" 2>>"$LOGS/openssl.log"; }
# cert NAME SUBJECT USAGE [SAN]: a P-256 key and a certificate signed by the cluster's CA.
cert() {
  local name=$1 subj=$2 usage=$3 san=${4:-}
  [ -s "$PKI/$name.crt" ] && return 0
  ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" -subj "$subj"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  ossl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -out "$PKI/$name.crt" -extfile "$PKI/$name.ext"
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
if [ ! -s "$PKI/ca.crt" ]; then
  ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=nftpol-cluster-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
fi
if [ ! -s "$PKI/sa.key" ]; then
  ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$PKI/sa.key"
  ossl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
fi
cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$SVC_API_IP,IP:$NODE_IP,IP:127.0.0.1"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=nftpol-cluster-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
cert kube-proxy "/CN=system:kube-proxy" clientAuth

# kubeconfig NAME CERT: a kubeconfig for the API server with that client certificate.
kubeconfig() {
  local out=$STATE/$1.kubeconfig c=$2
  put "$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nftpol-cluster
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $c
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$c.crt")
    client-key-data: $(base64 -w0 "$PKI/$c.key")
contexts:
- name: nftpol-cluster
  context: {cluster: nftpol-cluster, user: $c}
current-context: nftpol-cluster
EOF
  chmod 600 "$out"
}
for c in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$c" "$c"; done

# --- control plane ---------------------------------------------------------------------------
start etcd --name nftpol-cluster --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "nftpol-cluster=http://127.0.0.1:$ETCD_PEER_PORT" \
  --quota-backend-bytes 4294967296 --auto-compaction-retention 1 --log-level warn
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

start kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range "$SVC_CIDR" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --profiling=false --v=1
api_ready() {
  curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz" | grep -qx ok
}
wait_for kube-apiserver 120 api_ready

start kube-controller-manager --kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
  --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --allocate-node-cidrs --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
  --service-cluster-ip-range "$SVC_CIDR" --controllers '*' --profiling=false --v=1
put "$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $STATE/scheduler.kubeconfig}
leaderElection: {leaderElect: false}
EOF
start kube-scheduler --config "$STATE/scheduler.yaml" --bind-address 127.0.0.1 \
  --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE/scheduler.kubeconfig" --profiling=false --v=1

# --- containerd ------------------------------------------------------------------------------
mkdir -p "$STATE/cni/net.d" "$STATE/containerd" "$RUN/containerd"
put "$STATE/cni/net.d/10-nftpol-cluster.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "nftpol-cluster",
  "plugins": [{
    "type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$STATE/cni/ipam",
      "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$POD_GW"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF
put "$STATE/containerd/config.toml" <<EOF
version = 3
root = '$STATE/containerd/root'
state = '$RUN/containerd/state'
[grpc]
  address = '$CONTAINERD_SOCK'
[ttrpc]
  address = '$RUN/containerd/containerd.sock.ttrpc'
[debug]
  address = ''
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = 'registry.k8s.io/pause:3.10.2'
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj (-998 for sandboxes), so it is
  # clamped to containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['$CNI_BIN']
  conf_dir = '$STATE/cni/net.d'
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '$BIN/runc'
  Root = '$RUN/runc'
  SystemdCgroup = false
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
EOF
start containerd --config "$STATE/containerd/config.toml"
wait_for containerd 60 "$BIN/ctr" --address "$CONTAINERD_SOCK" version

# --- images ----------------------------------------------------------------------------------
import_archive() {
  log "importing $1"
  ctrk images import "$1" >>"$LOGS/images.log" 2>&1 || die "could not import $1 (see $LOGS/images.log)"
}
shopt -s nullglob
for a in "$IMAGES_DIR"/*.tar; do
  import_archive "$a"
done
shopt -u nullglob
if ! ctrk images ls -q | grep -qx 'registry.k8s.io/pause:3.10.2'; then
  # No pause from hack/images/: our own, built from hack/cluster/pause.
  pause=$CACHE/images/pause
  if [ ! -x "$pause" ]; then
    mkdir -p "$CACHE/images"
    (cd "$HERE/pause" && GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE=$CACHE/gocache \
      go build -trimpath -ldflags '-s -w' -o "$pause" .) || die "could not build the fallback pause"
  fi
  python3 "$HERE/oci-archive.py" "$CACHE/images/pause.tar" registry.k8s.io/pause:3.10.2 /pause "$pause:/pause:755"
  import_archive "$CACHE/images/pause.tar"
fi
# The Netpol suite runs `/agnhost porter` and execs `/agnhost connect`: without an agnhost image
# from hack/images/, the static agnhost alone, under every agnhost name e2e.test lists (its
# order is a Go map's, so no line of it is "the" one; 2.66.1 is what the Netpol tests of v1.37.2
# ask for).
agnhost_refs=registry.k8s.io/e2e-test-images/agnhost:2.66.1
if [ -x "$BIN/e2e.test" ]; then
  agnhost_refs="$agnhost_refs $("$BIN/e2e.test" --list-images 2>/dev/null | grep '/agnhost:' || true)"
fi
if [ -x "$BIN/agnhost" ]; then
  for ref in $(printf '%s\n' $agnhost_refs | sort -u); do
    ctrk images ls -q | grep -qx "$ref" && continue
    python3 "$HERE/oci-archive.py" "$CACHE/images/agnhost.tar" "$ref" /agnhost "$BIN/agnhost:/agnhost:755"
    import_archive "$CACHE/images/agnhost.tar"
  done
fi
# network-policy-api's conformance suite asks for an agnhost of its own (2.45 in v0.3.0; build.sh
# cnp-conformance lists the images of its manifests): the agnhost of hack/images/ under that name
# too. Not the stand-in above: the suite's servers run `/bin/bash -c`, which only that one has.
if [ -s "$CACHE/cnp-conformance/images" ] && [ -s "$IMAGES_DIR/agnhost.tar" ]; then
  src=$(tar -xOf "$IMAGES_DIR/agnhost.tar" index.json | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')
  have=$(ctrk images ls -q)
  for ref in $(grep '/agnhost:' "$CACHE/cnp-conformance/images"); do
    grep -qxF "$ref" <<<"$have" && continue
    ctrk images tag "$src" "$ref" >>"$LOGS/images.log" 2>&1 || die "could not tag $src as $ref"
    log "tagged $src as $ref"
  done
fi

# --- kubelet ---------------------------------------------------------------------------------
mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
put "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: $STATE/resolv.conf
clusterDomain: cluster.local
podLogsDir: $STATE/pod-logs
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
protectKernelDefaults: false
oomScoreAdj: 0  # no CAP_SYS_RESOURCE to lower it
makeIPTablesUtilChains: false  # kube-proxy runs in nftables mode: no iptables hint chains
EOF
start kubelet --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
  --root-dir "$STATE/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_for "node $NODE_NAME" 180 node_ready

# --- kube-proxy ------------------------------------------------------------------------------
put "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
start kube-proxy --config "$STATE/kube-proxy.yaml" --v=1
wait_for kube-proxy 60 curl -fsS http://127.0.0.1:10256/healthz

# The default ServiceAccount must exist before pods can be created in a namespace.
wait_for "serviceaccount default" 60 kc -n default get serviceaccount default
log "cluster up in $((SECONDS - T0)) s; logs in $LOGS"
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
