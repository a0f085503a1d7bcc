#!/usr/bin/env bash
# Compacts the etcd of a cluster made by up.sh at its current revision, after a write of its
# own (a key outside the apiserver's /registry prefix) so that the revision has moved past every
# resourceVersion a client has seen. Prints the compacted revision.
#
# Why: a watch resumed from a compacted resourceVersion gets 410 Gone. Note that a running
# apiserver serves watches from its watch cache, which still holds recent events: for a
# deterministic 410, compact while the apiserver is down (restart-apiserver.sh --compact), or
# start the cluster with NFTPOL_KUBE_APISERVER_ARGS=--watch-cache=false.
#
# Usage: hack/kube/compact.sh STATE_DIR
set -euo pipefail
export KUBE_SCRIPT=compact.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || kube_die "usage: $0 STATE_DIR"
kube_need_root
kube_need_tools jq curl base64
kube_load_state "$1"
kube_alive etcd || kube_die "etcd is not running"

b64() { printf %s "$1" | base64 -w0; }
put=$(jq -cn --arg k "$(b64 /nftpol-kube/compact-marker)" --arg v "$(b64 "$(date -u +%FT%T.%NZ)")" '{key: $k, value: $v}')
# The gateway prints int64 fields as strings.
rev=$(kube_etcd_api /v3/kv/put "$put" | jq -er '.header.revision | tonumber') \
  || kube_die "writing the marker key to etcd failed"
kube_etcd_api /v3/kv/compaction "{\"revision\": $rev, \"physical\": true}" >/dev/null \
  || kube_die "compacting etcd at revision $rev failed"
kube_log "compacted etcd at revision $rev"
echo "$rev"
