#!/usr/bin/env bash
# The demo: a node made of network namespaces runs the real `nftpol run` on the walk-through scenario
# (production frontend -> api -> postgres, Prometheus and Grafana in monitoring, kube-dns, a
# stranger in staging). It measures who reaches whom with real packets before any policy and
# after examples/demo's policies, next to what `nftpol simulate` predicts, then shows two
# classic mistakes with `nftpol explain`. It ends by writing the scenario's page (the matrix,
# explain's answer for every pair, the namespace summary) and the flow page to target/demo/.
# Needs root; cleans up the namespaces after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/deps.sh
echo "building nftpol (release)..."
cargo build --release --quiet --workspace --bins
bin=target/release
demo=examples/demo
policies=("$demo"/[1-9]*.yaml)

section() { printf '\n== %s\n' "$*"; }

section "Rows are clients, columns servers. A pod to itself (the diagonal, marked -) never leaves the pod, so no node-level engine sees it; upstream e2e ignores it too."
section "Before any policy: measured with real TCP connections on 8080 (every pod is reachable)"
$bin/nftpol-testbed probe -f "$demo/00-cluster.yaml" --port 8080 --protocol TCP -o table

flows=$(mktemp /tmp/nftpol-demo-flows.XXXXXX)
trap 'rm -f "$flows"' EXIT
for port in 8080 5432; do
  section "With examples/demo's policies, $port/TCP: measured with real packets"
  $bin/nftpol-testbed probe -f "$demo" --port "$port" --protocol TCP -o table --flow-log-out "$flows"
  section "...and what nftpol simulate predicts"
  $bin/nftpol simulate -f "$demo" --port "$port" --protocol TCP
done

section "Which policy dropped it? The flow log of the last run, for the stranger's connections (one line per connection)"
grep 'drop staging/stranger' "$flows" | sed -e 's/^.*nftpol::flow: //' -e 's/ action=.*$//' | head -n 4

section "DNS (53/UDP) under default deny + allow-dns, measured"
$bin/nftpol-testbed probe -f "$demo" --port 53 --protocol UDP -o table

section "Mistake 1: default deny without the DNS allow. Why can the frontend not resolve names?"
$bin/nftpol explain -f "$demo/00-cluster.yaml" -f "$demo/10-default-deny-all.yaml" \
  -f "$demo/30-frontend.yaml" --from production/frontend --to kube-system/kube-dns \
  --port 53 --protocol UDP

section "Mistake 2: namespaceSelector OR podSelector (two peers) instead of AND (one peer)"
echo "-- with examples/mistakes/monitoring-or-instead-of-and.yaml, Grafana may scrape the api:"
$bin/nftpol explain -f "$demo/00-cluster.yaml" -f "$demo/10-default-deny-all.yaml" \
  -f examples/mistakes/monitoring-or-instead-of-and.yaml \
  --from monitoring/grafana --to production/api --port 9090
echo "-- with examples/demo/50-allow-monitoring.yaml (one peer, ANDed), only Prometheus may:"
$bin/nftpol explain -f "$demo" --from monitoring/grafana --to production/api --port 9090

section "The pages: open them in a browser (self-contained, no network needed)"
pages=target/demo
mkdir -p "$pages"
$bin/nftpol simulate -f "$demo" --port 8080 --port 5432 --port 53/UDP -o html >"$pages/reachability.html"
$bin/nftpol flows -o html "$flows" >"$pages/flows.html"
echo "$pages/reachability.html: who may reach whom on 8080/TCP, 5432/TCP and 53/UDP; click a cell for why ($(wc -c <"$pages/reachability.html") bytes)"
echo "$pages/flows.html: the flow log above, counted per pod pair and policy ($(wc -c <"$pages/flows.html") bytes)"
