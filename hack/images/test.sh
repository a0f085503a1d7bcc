#!/usr/bin/env bash
# Proves the archives hack/images/build.sh made are images containerd can run: checks each
# archive's structure and digests, then imports all of them into a private containerd (its own
# root, state and socket under a temporary directory, CRI disabled, nothing shared with the
# cluster's) and runs them with runc: pause blocks, reaps an orphan and ends with status 0 on
# SIGTERM; agnhost answers `--help` and has bash; nftpol's binary starts (its shared libraries
# are there). Everything it started is stopped and removed on exit.
#
# Usage: hack/images/test.sh   (after hack/images/build.sh; needs containerd, ctr and runc from
#        hack/cluster/build.sh in $NFTPOL_CLUSTER_CACHE/bin)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/hack/images
CACHE=${NFTPOL_IMAGES_CACHE:-/var/cache/nftpol-images}
BIN=${NFTPOL_CLUSTER_CACHE:-/var/cache/nftpol-cluster}/bin
NS=nftpol-images-test
# `ctr run` copies stdin into the container: give it none.
exec </dev/null

log() { printf '[images-test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
# poll SECONDS CMD...: retries CMD until it succeeds or the deadline passes.
poll() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

name_of() { python3 -c 'import json,sys,tarfile; t=tarfile.open(sys.argv[1]); print(json.load(t.extractfile("index.json"))["manifests"][0]["annotations"]["io.containerd.image.name"])' "$1"; }

archives=()
for a in pause agnhost nftpol; do
  if [ -s "$CACHE/$a.tar" ]; then
    python3 "$HERE/oci.py" check "$CACHE/$a.tar" || die "$a.tar is malformed"
    archives+=("$a")
  else
    log "skipping $a: $CACHE/$a.tar missing"
  fi
done
[ ${#archives[@]} -gt 0 ] || die "no archives in $CACHE"

# pause, outside any container first: as PID 1 of its own PID namespace it must reap an orphan
# that nsenter leaves behind, and end with 0 on SIGTERM.
if [[ " ${archives[*]} " == *" pause "* ]]; then
  T=$(mktemp -d /tmp/nftpol-pause.XXXXXX)
  trap 'kill -KILL "${ppid1:-}" 2>/dev/null; rm -rf "$T"' EXIT
  tar -xf "$CACHE/pause.tar" -C "$T"
  layer=$(python3 -c 'import json,sys; d=sys.argv[1]; i=json.load(open(d+"/index.json")); m=json.load(open(d+"/blobs/sha256/"+i["manifests"][0]["digest"][7:])); print(d+"/blobs/sha256/"+m["layers"][0]["digest"][7:])' "$T")
  tar -xzf "$layer" -C "$T" pause
  unshare --pid --fork "$T/pause" &
  ushare=$!
  poll 10 pgrep -P "$ushare" -x pause || die "pause did not start"
  ppid1=$(pgrep -P "$ushare" -x pause)
  # The sleep outlives its shell, so it is reparented to the namespace's PID 1: pause.
  nsenter -t "$ppid1" -p -- sh -c 'sleep 0.3 & exit 0'
  no_children() { [ -z "$(pgrep -P "$ppid1")" ]; }
  poll 10 no_children || die "pause did not reap its orphan: $(ps -o pid,stat,comm --ppid "$ppid1")"
  kill -TERM "$ppid1"
  rc=0; wait "$ushare" || rc=$?
  [ "$rc" -eq 0 ] || die "pause exited $rc on SIGTERM"
  rm -rf "$T"
  trap - EXIT
  log "pause: reaped an orphan as PID 1 and exited 0 on SIGTERM"
fi

for b in containerd containerd-shim-runc-v2 ctr runc; do
  [ -x "$BIN/$b" ] || { log "no $BIN/$b: archives checked, not run"; exit 0; }
done

T=$(mktemp -d /tmp/nftpol-images-ctrd.XXXXXX)
SOCK=$T/containerd.sock
CTR=("$BIN/ctr" --address "$SOCK" --namespace "$NS")
cleanup() {
  local c
  if [ -S "$SOCK" ]; then
    for c in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
      poll 10 sh -c "! '$BIN/ctr' --address '$SOCK' -n $NS tasks ls -q | grep -qx '$c'" ||
        "${CTR[@]}" tasks delete --force "$c" >/dev/null 2>&1 || true
    done
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" tasks delete --force "$c" >/dev/null 2>&1 || true
      "${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  if [ -n "${CTRD_PID:-}" ]; then
    kill "$CTRD_PID" 2>/dev/null || true
    wait "$CTRD_PID" 2>/dev/null || true
  fi
  # Snapshot mounts left by a killed run would keep rm -rf from finishing.
  grep -o " $T/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT

cat >"$T/config.toml" <<EOF
version = 3
root = '$T/root'
state = '$T/state'
disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.images', 'io.containerd.cri.v1.runtime']
[grpc]
  address = '$SOCK'
[ttrpc]
  address = '$T/containerd.sock.ttrpc'
[debug]
  address = '$T/debug.sock'
[metrics]
  address = ''
EOF
# runc and the shim are found on PATH.
PATH=$BIN:$PATH "$BIN/containerd" --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
CTRD_PID=$!
poll 30 "$BIN/ctr" --address "$SOCK" version || die "containerd did not start: $(tail -n 5 "$T/containerd.log")"
log "private containerd $("$BIN/ctr" --address "$SOCK" version | sed -n 's/^ *Version: *//p' | tail -n 1) at $SOCK"

declare -A REF
for a in "${archives[@]}"; do
  REF[$a]=$(name_of "$CACHE/$a.tar")
  t0=$SECONDS
  "${CTR[@]}" images import "$CACHE/$a.tar" >"$T/import-$a.log" 2>&1 || die "import $a.tar: $(cat "$T/import-$a.log")"
  images=$("${CTR[@]}" images ls -q)
  grep -qxF "${REF[$a]}" <<<"$images" || die "$a.tar imported, but no image ${REF[$a]}: $images"
  log "imported $a.tar as ${REF[$a]} ($((SECONDS - t0)) s)"
done

status() { "${CTR[@]}" tasks ls | awk -v id="$1" '$1 == id {print $3}'; }
is_status() { [ "$(status "$1")" = "$2" ]; }

if [ -n "${REF[pause]:-}" ]; then
  "${CTR[@]}" run -d "${REF[pause]}" pause-test >/dev/null
  poll 10 is_status pause-test RUNNING || die "pause-test is $(status pause-test)"
  "${CTR[@]}" tasks kill -s SIGTERM pause-test
  poll 10 is_status pause-test STOPPED || die "pause-test did not stop on SIGTERM"
  "${CTR[@]}" tasks delete pause-test >"$T/pause-delete.log"
  "${CTR[@]}" containers delete pause-test
  log "pause: ran as the entrypoint, stopped on SIGTERM"
fi

if [ -n "${REF[agnhost]:-}" ]; then
  # ctr's own stderr (containerd's cgroup v1 deprecation warning) stays out of $out.
  out=$("${CTR[@]}" run --rm "${REF[agnhost]}" agnhost-test /agnhost --help 2>"$T/err") || die "/agnhost --help: $out $(cat "$T/err")"
  # The Netpol suites use these subcommands (agnhost calls itself "app" in its usage).
  for sub in connect porter serve-hostname; do
    grep -qE "^  $sub " <<<"$out" || die "/agnhost --help lists no $sub: $out"
  done
  out=$("${CTR[@]}" run --rm "${REF[agnhost]}" agnhost-bash /bin/bash -c 'echo "bash $BASH_VERSION"; ls /agnhost' 2>"$T/err") || die "bash in agnhost: $out $(cat "$T/err")"
  grep -qx '/agnhost' <<<"$out" || die "bash in agnhost: $out"
  log "agnhost: /agnhost --help lists connect, porter, serve-hostname; /bin/bash is ${out%%$'\n'*}"
fi

if [ -n "${REF[nftpol]:-}" ]; then
  out=$("${CTR[@]}" run --rm "${REF[nftpol]}" nftpol-test /usr/local/bin/nftpol --help 2>"$T/err") || die "nftpol --help: $out $(cat "$T/err")"
  log "nftpol: /usr/local/bin/nftpol --help ok: $(head -n 1 <<<"$out")"
fi
log "all ${#archives[@]} archive(s) imported and run"
