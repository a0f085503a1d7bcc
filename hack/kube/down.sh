#!/usr/bin/env bash
# Stops a control plane started by up.sh and removes everything it made: the processes
# (SIGTERM, then SIGKILL after 10 s), any other process left in its namespace, the namespace
# (which deletes its veths), and the state folder.
#
# Why a script: e2e tests and CI must leave no namespace, process or address behind, also after
# a failure; it is idempotent, so cleanup code may call it whatever state the cluster is in.
#
# Usage: hack/kube/down.sh STATE_DIR
# Env:   NFTPOL_KUBE_KEEP_STATE=1  keep STATE_DIR (logs) after stopping
set -euo pipefail
export KUBE_SCRIPT=down.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || kube_die "usage: $0 STATE_DIR"
STATE=$1
[ -e "$STATE" ] || exit 0   # already down
[ -f "$STATE/.nftpol-kube" ] || kube_die "$STATE is not a cluster state folder made by up.sh; not touching it"
kube_need_root
KUBE_STATE=$(cd "$STATE" && pwd)

if [ -f "$KUBE_STATE/env" ]; then
  kube_load_state "$KUBE_STATE"
  for p in kube-controller-manager kube-apiserver etcd; do kube_stop "$p" TERM 1; done
  case "$NFTPOL_KUBE_NETNS" in
    "$KUBE_NETNS_PREFIX"-*) ;;
    *) kube_die "unexpected namespace name '$NFTPOL_KUBE_NETNS' in $KUBE_STATE/env" ;;
  esac
  if [ -e "/var/run/netns/$NFTPOL_KUBE_NETNS" ]; then
    # Anything else still running in the namespace was started there by us or by a test.
    for pid in $(ip netns pids "$NFTPOL_KUBE_NETNS" 2>/dev/null); do kill -s KILL "$pid" 2>/dev/null || true; done
    ip netns del "$NFTPOL_KUBE_NETNS"
  fi
  # The root side of the veth goes with the namespace (up.sh removes a leftover, if any).
fi

if [ "${NFTPOL_KUBE_KEEP_STATE:-0}" = 1 ]; then
  rm -f "$KUBE_STATE/env"
  kube_log "stopped; state kept in $KUBE_STATE"
else
  rm -rf "$KUBE_STATE"
  kube_log "stopped and removed $KUBE_STATE"
fi
