# nftpol's image: a release build linked against Debian's libnftnl and libmnl, on a slim runtime
# with only those two libraries. The binary talks netlink itself: no nft, iptables or shell is
# needed at run time. It runs as root (the image's default user) with NET_ADMIN only: see
# manifests/daemonset.yaml. Packages are not pinned one by one (hadolint DL3008): the pinned
# Debian release (bookworm) already fixes their versions up to security updates.

FROM rust:1-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libnftnl-dev libmnl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole context as .dockerignore filters it (no .git, target/, hack/, manifests/): Cargo needs
# every workspace member and every target Cargo.toml names present, even to build one binary.
COPY . .
RUN cargo build --release --locked --bin nftpol \
 && strip target/release/nftpol

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnftnl11 libmnl0 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/nftpol /usr/local/bin/nftpol
EXPOSE 9964
ENTRYPOINT ["/usr/local/bin/nftpol"]
CMD ["daemon"]
