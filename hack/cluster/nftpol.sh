#!/usr/bin/env bash
# Installs nftpol on the cluster of hack/cluster/up.sh the way a user does, from its image
# (imported by up.sh from /var/cache/nftpol-images/, made by hack/images/), and removes it by
# the README's uninstall path.
#
# Usage: hack/cluster/nftpol.sh install [IMAGE]   kubectl apply -k with an overlay whose
#          Kustomization `images:` sets nftpol's image (default: the one the manifests name);
#          waits for the DaemonSet to be Ready, then checks /metrics and table inet nftpol.
#        hack/cluster/nftpol.sh uninstall          the README's uninstall commands, then checks
#          that table inet nftpol is gone.
# manifests/ holds no PrometheusRule (the alerts are manifests/monitoring/): it applies on this
# cluster, which has no Prometheus Operator, as on any other.
set -euo pipefail
SCRIPT=nftpol.sh
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
[ -f "$KUBECONFIG_ADMIN" ] || die "no cluster: run hack/cluster/up.sh"
export KUBECONFIG=$KUBECONFIG_ADMIN
M=$REPO/manifests

install() {
  local image=${1:-} t0=$SECONDS
  if [ -n "$image" ]; then
    # An overlay, so that the repository's manifests stay as they are. Kustomize takes only
    # relative paths to another kustomization.
    local ov=$STATE/nftpol-overlay
    rm -rf "$ov"; mkdir -p "$ov"
    cat >"$ov/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$(realpath --relative-to="$ov" "$M")]
images:
- {name: nftpol, newName: ${image%:*}, newTag: ${image##*:}}
EOF
    kc apply -k "$ov"
  else
    kc apply -k "$M"
  fi
  touch "$STATE/nftpol-installed" # down.sh then also deletes table inet nftpol
  echo "$image" >"$STATE/nftpol-image" # the cleanup DaemonSet of uninstall runs the same image
  kc -n kube-system rollout status ds/nftpol --timeout=180s
  log "DaemonSet Ready $((SECONDS - t0)) s after kubectl apply"
  wait_for "nftpol /metrics" 30 curl -fsS "http://$NODE_IP:9964/metrics"
  # Bound to the node's address (status.hostIP) only, not to every address of the host.
  local listen; listen=$(ss -Htln 'sport = :9964' | awk '{print $4}' | tr '\n' ' ')
  log "port 9964 listens on: $listen"
  [ "$listen" = "$NODE_IP:9964 " ] || die "expected $NODE_IP:9964 only, got: $listen"
  # awk reads the whole scrape: `head` would close the pipe early, and pipefail would fail on
  # curl's or grep's SIGPIPE once the scrape outgrows the pipe's buffer.
  curl -fsS "http://$NODE_IP:9964/metrics" | awk '/^nftpol_/ && n < 5 { print; n++ }' >&2
  wait_for "table inet nftpol" 30 nft list table inet nftpol
  log "table inet nftpol present ($(nft -a list table inet nftpol | grep -c 'handle') handles)"
}

uninstall() {
  # README "Uninstall", with the kustomize-built DaemonSet deleted by name.
  kc delete -f "$M/daemonset.yaml" --ignore-not-found
  # The image install was given, set the same way (an overlay's `images:`), for the cleanup.
  local image cleanup=(-f "$M/cleanup/")
  image=$(cat "$STATE/nftpol-image" 2>/dev/null || true)
  if [ -n "$image" ]; then
    local ov=$STATE/nftpol-cleanup-overlay
    rm -rf "$ov"; mkdir -p "$ov"
    cat >"$ov/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$(realpath --relative-to="$ov" "$M/cleanup")]
images:
- {name: nftpol, newName: ${image%:*}, newTag: ${image##*:}}
EOF
    cleanup=(-k "$ov")
  fi
  kc apply "${cleanup[@]}"
  kc -n kube-system rollout status ds/nftpol-cleanup --timeout=180s
  wait_for "table inet nftpol to go" 60 sh -c '! nft list table inet nftpol'
  kc delete "${cleanup[@]}" --ignore-not-found
  kc delete -f "$M/rbac.yaml" --ignore-not-found
  rm -f "$STATE/nftpol-installed" "$STATE/nftpol-image"
  log "uninstalled: table inet nftpol is gone"
}

case ${1:-} in
  install) shift; install "$@" ;;
  uninstall) uninstall ;;
  *) die "usage: $0 install [IMAGE] | uninstall" ;;
esac
