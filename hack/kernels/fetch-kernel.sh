#!/usr/bin/env bash
# fetch-kernel.sh SUITE OUTDIR: downloads the kernel Debian's SUITE installs by default
# (what linux-image-amd64 depends on), and unpacks into OUTDIR:
#   vmlinuz, release (the uname -r), modules.cpio (the modules the tests need, with their
#   modules.dep, as an initramfs fragment at /lib/modules/RELEASE).
# Skips the work when OUTDIR holds this version's set (the marker modules-v2: virtio_net added,
# for hack/compare/vm.sh's link to the host).
set -euo pipefail
suite=$1
out=$2
[[ -s $out/modules.cpio && -s $out/vmlinuz && -e $out/modules-v2 ]] && exit 0
mkdir -p "$out"
dep=$(apt-cache show "linux-image-amd64/$suite" | sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -1)
[[ -n $dep ]] || { echo "fetch-kernel: no linux-image-amd64 in $suite" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$dep/$suite" >/dev/null)
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/x"
# trixie's packages install under /usr/lib (merged /usr), older ones under /lib.
src=$work/x/lib/modules
[[ -d $src ]] || src=$work/x/usr/lib/modules
release=$(ls "$src")
cp "$work/x/boot/vmlinuz-$release" "$out/vmlinuz"
basename "$deb" >"$out/package"
# Only what nftables, conntrack, bridges, veth and the IPv6 stack need: the whole tree is
# several hundred MB and the initramfs lives in the guest's memory.
root="$work/m"
mod="lib/modules/$release"
mkdir -p "$root/$mod/kernel/drivers/net"
cp "$src/$release"/modules.builtin* "$src/$release"/modules.order "$root/$mod/"
for d in net lib crypto arch; do
	if [[ -d $src/$release/kernel/$d ]]; then
		cp -a "$src/$release/kernel/$d" "$root/$mod/kernel/"
	fi
done
cp -a "$src/$release"/kernel/drivers/net/{veth,dummy,virtio_net,net_failover}.ko* "$root/$mod/kernel/drivers/net/"
depmod -b "$root" "$release"
# The bookworm root is merged-/usr (/lib is a symlink): put the modules where it resolves.
mkdir -p "$root/usr/lib"
mv "$root/lib/modules" "$root/usr/lib/modules"
rmdir "$root/lib"
(cd "$root" && find usr | cpio -o -H newc --quiet) >"$out/modules.cpio.tmp"
mv "$out/modules.cpio.tmp" "$out/modules.cpio"
echo "$release" >"$out/release"
touch "$out/modules-v2"
