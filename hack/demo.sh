#!/usr/bin/env bash
# The demo: the seeds' scenario (production frontend -> api -> postgres, monitoring, kube-dns,
# a stranger in staging) under default-deny and the allow policies of examples/demo.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
cargo build --release --quiet
bin=target/release/nftpol

echo "== What nftpol predicts for 8080/TCP (frontend and api ports)"
$bin simulate -f examples/demo --port 8080 --protocol TCP
echo
echo "== 5432/TCP (postgres)"
$bin simulate -f examples/demo --port 5432 --protocol TCP
echo
echo "== Why can the stranger in staging not reach the api?"
$bin explain -f examples/demo --from staging/stranger --to production/api --port 8080
echo
echo "== Why may the api reach postgres?"
$bin explain -f examples/demo --from production/api --to production/postgres --port 5432
