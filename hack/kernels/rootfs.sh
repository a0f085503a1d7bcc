#!/usr/bin/env bash
# rootfs.sh OUT.cpio: a Debian bookworm userland for the test VMs (the libnftnl/libmnl the test
# binaries link against, plus nft, ip, conntrack and modprobe), as an initramfs fragment: the
# guest runs entirely from memory, so every kernel boots the same root without a disk driver.
# netbase is there for /etc/protocols: without it nft prints "17" where the tests expect "udp".
# Skips the work when OUT.cpio exists.
set -euo pipefail
out=$1
[[ -s $out ]] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase \
	--include=libnftnl11,libmnl0,nftables,iproute2,conntrack,kmod,procps,iputils-ping,libgcc-s1,netbase \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	bookworm "$work/root" http://deb.debian.org/debian
rm -rf "$work/root/var/cache/apt" "$work/root/var/lib/apt/lists"
(cd "$work/root" && find . | cpio -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
