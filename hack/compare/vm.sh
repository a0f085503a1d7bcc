#!/usr/bin/env bash
# Runs a command inside a virtual machine that boots Debian trixie's kernel (6.12), with a real
# kube-apiserver up inside it (hack/kube/up.sh, NFTPOL_KUBE_STATE set), and prints the command's
# output. Why a VM: kube-network-policies queues packets to userspace with nftables' `queue`
# expression, and this machine's kernel is built without it (CONFIG_NFT_QUEUE is not set), so
# it cannot enforce here; Debian's kernels have it (nft_queue.ko).
#
# Reuses hack/kernels' kernel and bookworm userland (cached in /var/cache/nftpol-kernels) and
# adds the binaries to a third initramfs fragment: nftpol and nftpol-testbed (NFTPOL_BIN_DIR,
# default target/release), kube-network-policies (hack/compare/build.sh), etcd,
# kube-apiserver, kube-controller-manager and kubectl (hack/kube/build.sh), jq/openssl/curl from
# this (bookworm) machine for up.sh, the corpus and hack/kube at this repository's path, plus
# the compare bench binary named in NFTPOL_COMPARE_BENCH (as /compare/compare), and any files
# named in NFTPOL_COMPARE_FILES (copied to the same path; not under /tmp, a tmpfs in the guest). KVM does not boot guests on
# these machines (hack/kernels/README.md), so the VM runs under TCG: figures measured inside are
# slower than on the host, the same for both engines.
#
# With NFTPOL_COMPARE_REMOTE_STATE=DIR (the state folder of a cluster hack/kube/up.sh started on
# this machine), the guest starts no API server: it gets a network link to this machine (QEMU's
# user-mode network) and reaches that API server by its own addresses, through a namespace named
# like the cluster's that routes and NATs (vm-init), so that the testbed's connect.sh works as
# it does here. The scale figures use it: this machine fills the API server natively, which the
# emulated one takes hours to hold.
#
# Usage: hack/compare/vm.sh 'SHELL COMMAND'   (runs in the repository's folder inside the VM)
# Env:   NFTPOL_COMPARE_SMP (2), NFTPOL_COMPARE_MEM (6G), NFTPOL_COMPARE_TIMEOUT (seconds, 3600),
#        NFTPOL_COMPARE_REMOTE_STATE
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
cache=${NFTPOL_KERNELS_CACHE:-/var/cache/nftpol-kernels}
suite=trixie
smp=${NFTPOL_COMPARE_SMP:-2}
mem=${NFTPOL_COMPARE_MEM:-6G}
timeout_s=${NFTPOL_COMPARE_TIMEOUT:-3600}
bindir=${NFTPOL_BIN_DIR:-${CARGO_TARGET_DIR:-$repo/target}/release}
[ $# -eq 1 ] || { echo "usage: $0 'COMMAND'" >&2; exit 2; }
log() { echo "compare/vm.sh: $*" >&2; }

if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null ||
  ! command -v mmdebstrap >/dev/null || ! command -v iperf3 >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    qemu-system-x86 cpio mmdebstrap iperf3 >/dev/null
fi
[ -e "$cache/$suite/modules-v2" ] || { bash hack/kernels/apt-suites.sh; bash hack/kernels/fetch-kernel.sh "$suite" "$cache/$suite"; }
[ -s "$cache/rootfs.cpio" ] || bash hack/kernels/rootfs.sh "$cache/rootfs.cpio"
knp=$(bash hack/compare/build.sh | tail -n1)
kube=$(bash hack/kube/build.sh | tail -n1)

work=$(mktemp -d /tmp/nftpol-compare-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/root
mkdir -p "$stage/compare" "$stage/kube" "$stage$repo/tests" "$stage$repo/hack" "$stage$repo/target"
for b in nftpol nftpol-testbed; do
  [ -x "$bindir/$b" ] || { log "$bindir/$b is missing (cargo build --release --bins)"; exit 1; }
  strip --strip-debug -o "$stage/compare/$b" "$bindir/$b"
done
cp "$knp" "$stage/compare/kube-network-policies"
if [ -n "${NFTPOL_COMPARE_BENCH:-}" ]; then
  strip --strip-debug -o "$stage/compare/compare" "$NFTPOL_COMPARE_BENCH"
fi
for b in etcd kube-apiserver kube-controller-manager kubectl; do cp "$kube/$b" "$stage/kube/"; done
# up.sh's tools, with their libraries (this machine runs the guest's bookworm).
for t in jq openssl curl iperf3; do
  p=$(command -v "$t")
  mkdir -p "$stage$(dirname "$p")"; cp -L "$p" "$stage$p"
  # Under /usr only: a /lib folder in the fragment would replace the userland's /lib -> usr/lib
  # link when the initramfs is unpacked.
  for lib in $(ldd "$p" | awk '/=> \//{print $3}'); do
    case $lib in /usr/*) dst=$lib ;; *) dst=/usr$lib ;; esac
    mkdir -p "$stage$(dirname "$dst")"; cp -Ln "$lib" "$stage$dst" 2>/dev/null || true
  done
done
# The bench's API client (rustls) wants a system root store, even with insecure-skip-tls-verify.
mkdir -p "$stage/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
cp -a hack/kube "$stage$repo/hack/"
cp -a tests/conformance "$stage$repo/tests/"
for f in ${NFTPOL_COMPARE_FILES:-}; do
  mkdir -p "$stage$(dirname "$f")"; cp -a "$f" "$stage$f"
done
net=()
remote=${NFTPOL_COMPARE_REMOTE_STATE:-}
if [ -n "$remote" ]; then
  # At /compare/kube-state in the guest (the state folder is under /tmp here, a tmpfs there),
  # with the paths in its files rewritten.
  remote=$(cd "$remote" && pwd)
  guest=/compare/kube-state
  mkdir -p "$stage$guest/certs"
  cp -a "$remote"/{.nftpol-kube,admin.token} "$stage$guest/"
  cp -a "$remote/certs/apiserver.crt" "$stage$guest/certs/"
  for f in env kubeconfig; do
    sed -e "s|$remote|$guest|g" -e 's|^NFTPOL_KUBE_BIN=.*|NFTPOL_KUBE_BIN=/kube|' \
      "$remote/$f" >"$stage$guest/$f"
  done
  echo "$guest" >"$stage/compare/remote"
  net=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0)
fi
echo "$repo" >"$stage/compare/repo"
printf '%s\n' "$1" >"$stage/compare/cmd"
install -m 0755 hack/compare/vm-init "$stage/init"
cp hack/kernels/keep-hooks.nft "$stage/compare/"
(cd "$stage" && find . | cpio -o -H newc --quiet) >"$work/compare.cpio"
cat "$cache/rootfs.cpio" "$cache/$suite/modules.cpio" "$work/compare.cpio" >"$work/initrd.cpio"
rm -f "$work/compare.cpio"
console=$work/console.log
# A guest kernel that oopses before the command ends is booted again, up to twice; the console
# of the last failed boot is kept. Seen here: int3 traps in netfilter's hook sites under
# multi-threaded TCG, twice in a row in one CI run, before hack/kernels/keep-hooks.nft held
# the hooks' static keys from boot.
for attempt in 1 2 3; do
  log "booting $suite ($(cat "$cache/$suite/release"), TCG, -smp $smp -m $mem)"
  start=$(date +%s)
  set +e
  timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -m "$mem" \
    -M q35 -nodefaults -display none -no-reboot -serial "file:$console" "${net[@]}" \
    -kernel "$cache/$suite/vmlinuz" -initrd "$work/initrd.cpio" \
    -append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off"
  qrc=$?
  set -e
  log "VM ran $(($(date +%s) - start)) s (qemu rc $qrc)"
  cp "$console" /tmp/nftpol-compare-console.log
  if [ "$attempt" -lt 3 ] && ! grep -q '^NFTPOL-CMD-END' "$console" &&
    grep -q 'Kernel panic\|Oops:' "$console"; then
    cp "$console" /tmp/nftpol-compare-console-oops.log
    log "the guest kernel crashed (/tmp/nftpol-compare-console-oops.log): booting again"
    continue
  fi
  break
done
grep -E '^NFTPOL-(KERNEL|CPUS|KUBE|MODPROBE|KEEP)' "$console" >&2 || true
sed -n 's/^NFTPOL-ERR //p' "$console" | tr -d '\r' >&2
sed -n '/^NFTPOL-CMD-BEGIN/,/^NFTPOL-CMD-END/p' "$console" | sed -e '1d' -e '$d' | tr -d '\r'
grep -q '^NFTPOL-CMD-END rc=0' "$console"
