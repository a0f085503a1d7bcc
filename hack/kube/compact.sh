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
kube_need_tools jq
kube_load_state "$1"
kube_alive etcd || kube_die "etcd is not running"

rev=$(kube_etcdctl put -w json /nftpol-kube/compact-marker "$(date -u +%FT%T.%NZ)" | jq -er '.header.revision')
kube_etcdctl compact --physical "$rev" >/dev/null
kube_log "compacted etcd at revision $rev"
echo "$rev"
