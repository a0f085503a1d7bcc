#!/usr/bin/env bash
# Kills, starts or restarts the kube-apiserver of a cluster made by up.sh, keeping its etcd (and
# so every object and the resourceVersion history).
#
# Why: e2e tests simulate API server outages. SIGKILL, not SIGTERM: on SIGTERM the apiserver
# shuts down gracefully and may keep open watch connections alive meanwhile, so clients would
# not see the crash the tests mean.
#
# Usage: hack/kube/apiserver.sh STATE_DIR kill      SIGKILL it and wait until it is gone
#        hack/kube/apiserver.sh STATE_DIR start     start it (same arguments) and wait for /readyz
#        hack/kube/apiserver.sh STATE_DIR restart   kill, then start; prints the time taken
set -euo pipefail
export KUBE_SCRIPT=apiserver.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ $# -eq 2 ] || kube_die "usage: $0 STATE_DIR kill|start|restart"
kube_need_root
kube_load_state "$1"

kill_it() { kube_stop kube-apiserver KILL; }
start_it() {
  kube_alive kube-apiserver && kube_die "kube-apiserver is already running (pid $(cat "$KUBE_STATE/kube-apiserver.pid"))"
  kube_respawn kube-apiserver
  kube_wait_apiserver
}

t0=$(kube_now_ms)
case "$2" in
  kill) kill_it ;;
  start) start_it ;;
  restart) kill_it; start_it ;;
  *) kube_die "unknown action '$2' (kill, start or restart)" ;;
esac
kube_log "$2 done in $(( $(kube_now_ms) - t0 )) ms"
