# shellcheck shell=bash disable=SC2034
# Shared functions of the hack/kube/ scripts (sourced, not run). They run a real kube-apiserver
# with etcd (and optionally kube-controller-manager), built by hack/cluster/build.sh, inside a
# network namespace of their own, for nftpol's end-to-end tests. See hack/kube/README.md.
#
# Layout of a STATE_DIR (everything a cluster owns; down.sh deletes it):
#   .nftpol-kube        marker: down.sh refuses to delete a folder without it
#   env                 KEY=VALUE lines (shell- and parser-friendly): netns, addresses, paths
#   kubeconfig          admin kubeconfig (server https://ADDR:6443, token, insecure TLS)
#   admin.token         the admin token alone; tokens.csv is the apiserver's --token-auth-file
#   sa.key / sa.pub     service-account signing key pair
#   etcd/ certs/ kcm-certs/   data and self-signed serving certificates
#   *.pid, *.log, *.args      per process: pid, log, and the argument list (for restarts)
#
# Addresses: cluster slot N (1..250) owns NET.N.0/24, where NET is NFTPOL_KUBE_NET (two octets,
# default 10.250). Link 0 is a veth between the cluster's namespace and the root namespace:
# NET.N.1 (apiserver side) / NET.N.2 (root side), a /30. connect.sh adds link k (1..63) to another
# namespace: NET.N.(4k+1) / NET.N.(4k+2). The slot is claimed atomically by creating the
# namespace nftpol-kube-N, so concurrent clusters never share addresses.

KUBE_HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_NETNS_PREFIX=nftpol-kube
KUBE_NET=${NFTPOL_KUBE_NET:-10.250}
KUBE_PORT=6443
KUBE_TIMEOUT=${NFTPOL_KUBE_TIMEOUT:-120}   # seconds, for every wait

kube_log() { echo "${KUBE_SCRIPT:-kube}: $*" >&2; }
kube_die() { echo "${KUBE_SCRIPT:-kube}: error: $*" >&2; exit 1; }

kube_need_root() { [ "$(id -u)" = 0 ] || kube_die "must run as root (network namespaces)"; }

kube_need_tools() {
  local t missing=()
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || kube_die "missing tools: ${missing[*]} (run hack/kube/build.sh, which installs them)"
}

# Milliseconds since the epoch.
kube_now_ms() { date +%s%3N; }

# kube_load_state STATE_DIR: checks the folder and reads its env file into the shell.
kube_load_state() {
  local dir=$1
  [ -n "$dir" ] || kube_die "missing STATE_DIR argument"
  [ -f "$dir/.nftpol-kube" ] && [ -f "$dir/env" ] || kube_die "$dir is not a cluster state folder made by up.sh"
  # shellcheck disable=SC1091
  . "$dir/env"
  KUBE_STATE=$(cd "$dir" && pwd)
}

# kube_in_ns CMD...: runs CMD inside the cluster's namespace.
kube_in_ns() { ip netns exec "$NFTPOL_KUBE_NETNS" "$@"; }

# kube_alive NAME: true when NAME.pid names a live process that is still that program.
kube_alive() {
  local name=$1 pid
  pid=$(cat "$KUBE_STATE/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$name" ]
}

# kube_spawn NAME BINARY ARGS...: starts a daemon inside the namespace, in its own session (so
# it survives this script and ignores the caller's terminal signals), logging to NAME.log
# (appended) and writing NAME.pid. The arguments are saved in NAME.args for restarts.
kube_spawn() {
  local name=$1; shift
  printf '%s\0' "$@" > "$KUBE_STATE/$name.args"
  rm -f "$KUBE_STATE/$name.pid"
  echo "--- $(date -u +%FT%TZ) starting $name" >> "$KUBE_STATE/$name.log"
  # shellcheck disable=SC2016  # $$, $0 and $@ are the inner shell's
  ip netns exec "$NFTPOL_KUBE_NETNS" setsid sh -c 'echo $$ > "$0"; exec "$@"' \
    "$KUBE_STATE/$name.pid" "$@" < /dev/null >> "$KUBE_STATE/$name.log" 2>&1 &
  disown $!   # no "Killed" job reports from this shell when the daemon is stopped
  local deadline=$(( $(date +%s) + 10 ))
  until [ -s "$KUBE_STATE/$name.pid" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || kube_die "$name did not start"
    sleep 0.05
  done
}

# kube_respawn NAME: starts NAME again with the arguments it was last started with.
kube_respawn() {
  local name=$1 args=()
  mapfile -d '' -t args < "$KUBE_STATE/$name.args"
  kube_spawn "$name" "${args[@]}"
}

# kube_stop NAME SIGNAL_FIRST [WAIT_REAP]: sends SIGNAL_FIRST (TERM or KILL), waits up to 10 s,
# then KILLs, and waits until the process is dead.
kube_stop() {
  local name=$1 sig=${2:-TERM} reap=${3:-0} pid i
  kube_alive "$name" || { rm -f "$KUBE_STATE/$name.pid"; return 0; }
  pid=$(cat "$KUBE_STATE/$name.pid")
  kill -s "$sig" "$pid" 2>/dev/null || true
  for i in $(seq 1 150); do
    [ -d "/proc/$pid" ] || break
    # a zombie is dead enough (its parent, a finished shell, may be gone already)
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
    [ "$i" != 100 ] || kill -s KILL "$pid" 2>/dev/null || true
    sleep 0.1
  done
  [ ! -d "/proc/$pid" ] || [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] \
    || kube_die "$name (pid $pid) does not stop"
  rm -f "$KUBE_STATE/$name.pid"
  # Dead. Its parent (init, or a sandbox's pid 1 that reaps lazily) removes the zombie. With
  # WAIT_REAP=1 give it up to 10 s, so that `pgrep` shows nothing afterwards; never fail on it.
  if [ "$reap" = 1 ]; then
    for i in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
}

# kube_wait_for WHAT NAME CMD...: polls CMD every 0.2 s until it succeeds; fails after
# KUBE_TIMEOUT seconds, or at once when the daemon NAME has died (showing its log).
kube_wait_for() {
  local what=$1 name=$2; shift 2
  local deadline=$(( $(date +%s) + KUBE_TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && ! kube_alive "$name"; then
      tail -n 30 "$KUBE_STATE/$name.log" >&2 || true
      kube_die "$name died while waiting for $what (log: $KUBE_STATE/$name.log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      [ -z "$name" ] || tail -n 30 "$KUBE_STATE/$name.log" >&2 || true
      kube_die "timed out after ${KUBE_TIMEOUT}s waiting for $what"
    fi
    sleep 0.2
  done
}

# kube_curl PATH [CURL_ARGS...]: an authenticated request to the apiserver as admin.
kube_curl() {
  local path=$1; shift
  curl -sS -k --max-time 10 -H "Authorization: Bearer $(cat "$NFTPOL_KUBE_TOKEN_FILE")" \
    "$@" "$NFTPOL_KUBE_SERVER$path"
}

kube_readyz() { [ "$(curl -s -k --max-time 5 "$NFTPOL_KUBE_SERVER/readyz")" = ok ]; }
kube_etcd_healthy() { kube_in_ns curl -s --max-time 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }

kube_wait_apiserver() { kube_wait_for "the apiserver's /readyz" kube-apiserver kube_readyz; }

# kube_etcd_api PATH JSON: a call to the etcd v3 API through etcd's gRPC gateway (JSON over
# HTTP, keys and values base64), from inside the cluster's namespace. Prints the response.
# Why not etcdctl: the etcd server module that hack/cluster/build.sh builds has no etcdctl.
kube_etcd_api() {
  kube_in_ns curl -sS -f --max-time 10 -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:2379$1"
}

# kube_write_kubeconfig OUT SERVER TOKEN USER: a kubeconfig with one cluster, user and context.
kube_write_kubeconfig() {
  local out=$1 server=$2 token=$3 user=$4
  (umask 077; cat > "$out.tmp") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nftpol-kube
  cluster:
    server: $server
    insecure-skip-tls-verify: true
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@nftpol-kube
  context:
    cluster: nftpol-kube
    user: $user
    namespace: default
current-context: $user@nftpol-kube
EOF
  mv -f "$out.tmp" "$out"
}
