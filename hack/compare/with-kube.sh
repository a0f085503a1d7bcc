#!/usr/bin/env bash
# Runs a command with a real kube-apiserver up (hack/kube/up.sh) and NFTPOL_KUBE_STATE pointing at
# its state folder, then tears the cluster down, also on failure. The cluster is one per machine
# for this purpose: the command runs under the lock /var/lock/nftpol-kube.use (hack/e2e.sh takes
# it too), waiting up to 50 minutes for it.
#
# Usage: hack/compare/with-kube.sh COMMAND [ARG...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
bin=$(bash "$here/../kube/build.sh" | tail -n1)
exec 8>/var/lock/nftpol-kube.use
flock -w 3000 8 || { echo "with-kube.sh: the kube lock stayed taken for 50 minutes" >&2; exit 1; }
state=$(mktemp -d /tmp/nftpol-compare-kube.XXXXXX)
trap 'bash "$here/../kube/down.sh" "$state" >/dev/null 2>&1 || true' EXIT
NFTPOL_KUBE_BIN=$bin bash "$here/../kube/up.sh" "$state" >/dev/null
export NFTPOL_KUBE_STATE=$state
"$@"
