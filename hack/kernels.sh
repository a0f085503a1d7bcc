#!/usr/bin/env bash
# Runs nftpol's kernel-facing test suites (dataplane, conformance on the dataplane,
# enforcement) inside virtual machines booting Debian's own kernels: bullseye (5.10),
# bookworm (6.1) and trixie (6.12), one VM at a time, and prints one line per kernel.
#
#   hack/kernels.sh [SUITE...]        # default: bullseye bookworm trixie
#
# Needs root (apt, mmdebstrap), qemu-system-x86, mmdebstrap and cpio (installed when
# missing). The test binaries are built on the host (`cargo test --no-run`) and run in a
# bookworm userland with the same libnftnl/libmnl; the whole guest is an initramfs (see
# hack/kernels/README.md). KVM is used when it works, else software emulation (TCG).
#
# Environment: NFTPOL_KERNELS_CACHE (downloads, rootfs; default /var/cache/nftpol-kernels),
# NFTPOL_KERNELS_TESTS (test binaries, default "dataplane conformance_dataplane enforcement"),
# NFTPOL_KERNELS_TIMEOUT (seconds per VM, default 3600), NFTPOL_KERNELS_ACCEL (kvm|tcg: skip
# the probe), NFTPOL_KERNELS_SMP (2), NFTPOL_KERNELS_MEM (2G), NFTPOL_KERNELS_FILTER
# (a test-name filter passed to every test binary).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
here=$repo/hack/kernels
cache=${NFTPOL_KERNELS_CACHE:-/var/cache/nftpol-kernels}
tests=${NFTPOL_KERNELS_TESTS:-dataplane conformance_dataplane enforcement}
timeout_s=${NFTPOL_KERNELS_TIMEOUT:-3600}
smp=${NFTPOL_KERNELS_SMP:-2}
mem=${NFTPOL_KERNELS_MEM:-2G}
suites=("$@")
((${#suites[@]})) || suites=(bullseye bookworm trixie)

log() { printf '== %s\n' "$*" >&2; }

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v cpio >/dev/null || missing+=(cpio)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$cache"

log "apt suites (pinned at priority 1)"
bash "$here/apt-suites.sh"
for s in "${suites[@]}"; do
	log "kernel of $s"
	bash "$here/fetch-kernel.sh" "$s" "$cache/$s"
done
log "bookworm rootfs"
bash "$here/rootfs.sh" "$cache/rootfs.cpio"

log "test binaries (cargo test --no-run)"
args=()
for t in $tests; do args+=(--test "$t"); done
json=$(cargo test --no-run --message-format=json "${args[@]}")
bins=$(mktemp -d)
trap 'rm -rf "$bins"' EXIT
stage=$bins/root
mkdir -p "$stage/nftpol" "$stage$repo/tests"
: >"$stage/nftpol/suites"
for t in $tests; do
	exe=$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .profile.test == true
		and .target.name == $t and (.target.kind | index("test"))) | .executable' <<<"$json" | tail -1)
	[[ -n $exe && -x $exe ]] || { log "no test binary for $t"; exit 1; }
	# Debug info is most of a test binary's size, and the guest holds everything in memory.
	strip --strip-debug -o "$stage/nftpol/$t" "$exe"
	filter=${NFTPOL_KERNELS_FILTER:+ $NFTPOL_KERNELS_FILTER}
	echo "$t /nftpol/$t$filter" >>"$stage/nftpol/suites"
done
nftpol_exe=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "nftpol"
	and (.target.kind | index("bin"))) | .executable' <<<"$json" | tail -1)
strip --strip-debug -o "$stage/nftpol/nftpol" "$nftpol_exe"
# The corpus is read from CARGO_MANIFEST_DIR, compiled into the binaries as this path.
cp -a "$repo/tests/conformance" "$stage$repo/tests/"
install -m 0755 "$here/init" "$stage/init"
cp "$here/keep-hooks.nft" "$stage/nftpol/"
(cd "$stage" && find . | cpio -o -H newc --quiet) >"$bins/tests.cpio"

accel=${NFTPOL_KERNELS_ACCEL:-}
if [[ -z $accel ]]; then
	# /dev/kvm may open (and QEMU report "kvm support: enabled") on a host whose CPU does not
	# expose virtualisation: the proof is a kernel that boots, here to its "no root" panic.
	probe=$bins/kvm-probe.log
	(timeout 60 qemu-system-x86_64 -accel kvm -cpu host -smp 1 -m 512M -M q35 -nodefaults \
		-display none -no-reboot -serial "file:$probe" -kernel "$cache/${suites[0]}/vmlinuz" \
		-append "console=ttyS0 panic=-1" >"$bins/kvm-probe.err" 2>&1 || true) 2>/dev/null
	if grep -q 'Kernel panic' "$probe" 2>/dev/null; then
		accel=kvm
	else
		log "KVM does not boot a kernel here ($(tail -c 300 "$bins/kvm-probe.err" | tr '\n' ' ')); using TCG"
		accel=tcg
	fi
fi
cpu=max
[[ $accel == kvm ]] && cpu=host
log "accelerator: $accel"

results=()
for s in "${suites[@]}"; do
	release=$(cat "$cache/$s/release")
	initrd=$bins/initrd-$s.cpio
	cat "$cache/rootfs.cpio" "$cache/$s/modules.cpio" "$bins/tests.cpio" >"$initrd"
	console=$cache/console-$s.log
	log "booting $s ($release, accel $accel, -smp $smp -m $mem); console: $console"
	start=$(date +%s)
	set +e
	timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp "$smp" -m "$mem" \
		-M q35 -nodefaults -display none -no-reboot -serial "file:$console" \
		-kernel "$cache/$s/vmlinuz" -initrd "$initrd" \
		-append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 mitigations=off"
	qrc=$?
	set -e
	secs=$(($(date +%s) - start))
	rm -f "$initrd"
	line=$(bash "$here/summarize.sh" "$console" "$s" "$accel" "$secs" "$qrc")
	results+=("$line")
	echo "$line"
done
echo
printf '%s\n' "${results[@]}"
