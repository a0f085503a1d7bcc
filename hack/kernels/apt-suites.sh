#!/usr/bin/env bash
# Makes Debian's bullseye and trixie suites known to apt, pinned at priority 1 so that nothing
# on this machine is ever upgraded or installed from them unless asked for by name and suite
# (`apt-get download linux-image-.../bullseye`). Idempotent; runs `apt-get update` when it
# adds them or when the lists are missing.
set -euo pipefail

src=/etc/apt/sources.list.d/nftpol-kernels.sources
pin=/etc/apt/preferences.d/nftpol-kernels
want_src='Types: deb
URIs: http://deb.debian.org/debian
Suites: bullseye trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
want_pin='Package: *
Pin: release n=bullseye
Pin-Priority: 1

Package: *
Pin: release n=trixie
Pin-Priority: 1'

changed=0
if [[ "$(cat "$src" 2>/dev/null)" != "$want_src" ]]; then
	printf '%s\n' "$want_src" >"$src"
	changed=1
fi
if [[ "$(cat "$pin" 2>/dev/null)" != "$want_pin" ]]; then
	printf '%s\n' "$want_pin" >"$pin"
	changed=1
fi
if ((changed)) || ! apt-cache show linux-image-amd64/bullseye >/dev/null 2>&1 \
	|| ! apt-cache show linux-image-amd64/trixie >/dev/null 2>&1; then
	apt-get update -qq
fi
