#!/usr/bin/env bash
# Simulates an API server outage: SIGKILLs the kube-apiserver of a cluster made by up.sh,
# optionally compacts etcd while it is down, starts it again with the same etcd and waits for
# /readyz. With --compact, clients that resume a watch from a resourceVersion older than the
# compaction get 410 Gone ("too old resource version") and must relist.
#
# Usage: hack/kube/restart-apiserver.sh STATE_DIR [--compact]
set -euo pipefail
export KUBE_SCRIPT=restart-apiserver.sh
here=$(dirname "$0")
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 STATE_DIR [--compact]" >&2; exit 1; }
case "${2:-}" in ""|--compact) ;; *) echo "$KUBE_SCRIPT: error: unknown option '$2'" >&2; exit 1 ;; esac

t0=$(date +%s%3N)
bash "$here/apiserver.sh" "$1" kill
[ "${2:-}" != --compact ] || bash "$here/compact.sh" "$1" >/dev/null
bash "$here/apiserver.sh" "$1" start
echo "$KUBE_SCRIPT: restarted in $(( $(date +%s%3N) - t0 )) ms" >&2
