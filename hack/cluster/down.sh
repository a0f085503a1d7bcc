#!/usr/bin/env bash
# Stops the cluster of hack/cluster/up.sh and removes everything it made: its daemons and
# containerd's shims (found in the pids cgroup nftpol-cluster), every container (the kubelet's
# kubepods cgroups), the mounts under its state folders, the pod network namespaces, the links
# cni0 and $NODE_LINK, kube-proxy's nftables tables (and nftpol's table when nftpol was installed
# on this cluster by hack/cluster/nftpol.sh), the cgroups, /var/log/containers links, the state
# folders; and it restores the sysctls and the propagation of / that up.sh changed. It works
# from what is on the machine, not from pid files, so it also cleans up after a `kill -9`.
# The logs in /var/log/nftpol-cluster are kept. Running it twice is fine.
set -uo pipefail
SCRIPT=down.sh
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$HERE/lib.sh"
[ "$(id -u)" = 0 ] || die "needs root"

# procs_in CGROUP_DIR: every pid in that cgroup and below.
procs_in() { [ -d "$1" ] && find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null; }
pod_cgroups() { ls -d /sys/fs/cgroup/*/"$CG_PODS" 2>/dev/null; }

# kill_all SIGNAL SECONDS CGROUP...: signals every process of the cgroups until none is left.
kill_all() {
  local sig=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs)) pids
  while :; do
    pids=$(for cg in "$@"; do procs_in "$cg"; done | sort -u)
    [ -n "$pids" ] || return 0
    [ $SECONDS -lt $deadline ] || return 1
    # shellcheck disable=SC2086
    kill -s "$sig" $pids 2>/dev/null
    sleep 0.2
  done
}

# 1. The Kubernetes daemons, gracefully, in reverse start order (containerd stays for now).
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
  d=${DAEMONS[i]}
  [ "$d" = containerd ] && continue
  if pid=$(pid_of "$d"); then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
    log "$d stopped"
  fi
done
# A kubelet or kube-apiserver whose pid file is gone is still in the daemons' cgroup: only the
# containerd processes may remain there after this.
for pid in $(procs_in "$CG_DAEMONS"); do
  case $(readlink "/proc/$pid/exe" 2>/dev/null) in
    "$BIN/containerd" | "$BIN/containerd-shim-runc-v2" | "$BIN/runc") ;;
    *) kill -9 "$pid" 2>/dev/null ;;
  esac
done

# 2. Every container, then containerd and its shims.
# shellcheck disable=SC2046
kill_all KILL 30 $(pod_cgroups) || log "some container processes did not die"
kill_all TERM 10 "$CG_DAEMONS" || kill_all KILL 10 "$CG_DAEMONS" || log "some daemons did not die"

# 3. Mounts under the state folders (rootfs overlays, shm, pod volumes, network namespaces),
# deepest first.
for _ in 1 2 3; do
  mapfile -t mnts < <(awk -v s="$STATE/" -v r="$RUN/" \
    'index($5, s) == 1 || index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  [ ${#mnts[@]} -gt 0 ] || break
  for m in "${mnts[@]}"; do umount -l "$(printf '%b' "$m")" 2>/dev/null; done
done

# 4. cgroups, leaves first (an emptied cgroup can take a moment to become removable).
for cg in $(pod_cgroups) "$CG_DAEMONS"; do
  for _ in $(seq 25); do
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$cg" ] || break
    sleep 0.2
  done
  [ ! -d "$cg" ] || log "could not remove cgroup $cg"
done

# 5. Links: the veths of pods whose namespace was not freed yet, the pod bridge, the node link.
for l in $(ip -o link show master "$POD_BRIDGE" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
  ip link del "$l" 2>/dev/null
done
for l in "$POD_BRIDGE" "$NODE_LINK"; do
  ip link show "$l" >/dev/null 2>&1 && ip link del "$l"
done

# 6. nftables: kube-proxy's tables; nftpol's only if this cluster installed nftpol.
for t in "ip kube-proxy" "ip6 kube-proxy"; do
  # shellcheck disable=SC2086
  nft list table $t >/dev/null 2>&1 && nft delete table $t
done
# iptables-nft tables that were not there before up.sh and hold only Kubernetes' chains (the
# kubelet's KUBE-FIREWALL and canaries, should it make them).
before=$(sed -n 's/^tables //p' "$RUN/host.saved" 2>/dev/null)
for fam in ip ip6; do
  for t in filter nat mangle; do
    case " $before " in *" $fam/$t "*) continue ;; esac
    chains=$(nft list table $fam $t 2>/dev/null | awk '$1 == "chain" { print $2 }') || continue
    [ -n "$chains" ] || continue
    if ! grep -qvE '^(KUBE-.*|INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING)$' <<<"$chains"; then
      nft delete table $fam $t && log "deleted table $fam $t (the kubelet's chains)"
    fi
  done
done
if [ -f "$STATE/nftpol-installed" ] && nft list table inet nftpol >/dev/null 2>&1; then
  nft delete table inet nftpol && log "deleted table inet nftpol (nftpol was installed on this cluster)"
fi

# 7. What the kubelet, CNI and containerd's shims leave outside our folders.
for f in /var/log/containers/*.log; do
  [ -L "$f" ] && case $(readlink "$f") in "$STATE"/*) rm -f "$f" ;; esac
done
rm -f /var/lib/cni/results/nftpol-cluster-* 2>/dev/null
# Shim sockets are named by a hash: remove only those no process listens on any more (another
# containerd on the machine may own the others).
listening=$(ss -xlH 2>/dev/null | awk '{ print $5 }')
for s in /run/containerd/s/*; do
  [ -S "$s" ] && ! grep -qxF "$s" <<<"$listening" && rm -f "$s"
done
if [ -f "$RUN/host.saved" ]; then
  # 8. The host settings up.sh changed.
  while read -r k a b; do
    case $k in
      sysctl) [ -z "$b" ] || echo "$b" >"/proc/sys/$a" ;;
      root_shared) [ "$a" = 1 ] || mount --make-private / ;;
      # shellcheck disable=SC2086
      new_dirs)
        # CNI's cache (results of loopback too) is ours alone when the folder is new.
        case " $a $b " in *" /var/lib/cni "*) rm -rf /var/lib/cni ;; esac
        [ -z "$a$b" ] || find $a $b -depth -type d -empty -delete 2>/dev/null ;;
    esac
  done <"$RUN/host.saved"
fi

# A mount left under the folders could be a pod's hostPath: never delete through one.
left=$(awk -v s="$STATE/" -v r="$RUN/" 'index($5, s) == 1 || index($5, r) == 1 { print $5 }' /proc/self/mountinfo)
[ -z "$left" ] || die "mounts remain, folders kept: $left"
rm -rf --one-file-system "$RUN" "$STATE"
log "cluster removed (logs kept in $LOGS)"
