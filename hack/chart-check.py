#!/usr/bin/env python3
"""Checks charts/nftpol against manifests/ (part of hack/test.sh; no cluster needed).

1. `helm lint --strict` of the chart with its defaults and with every opt-in on.
2. `helm template` with the default values renders the same objects as `kubectl kustomize
   manifests/` (ServiceAccount, ClusterRole, ClusterRoleBinding and the DaemonSet, compared as
   parsed YAML), once the labels only Helm adds (instance, version, managed-by, chart) are
   taken off; the cleanup DaemonSet (cleanup.enabled) equals manifests/cleanup/ and the
   PrometheusRule (metrics.prometheusRule.enabled) equals manifests/monitoring/ the same way.
3. Every daemon flag value reaches the DaemonSet's args, and each arg parses: the rendered args
   are given to `nftpol daemon --help`-level parsing through `nftpol daemon ARGS --help`
   (clap parses every flag before it acts on --help), when a built nftpol is at hand.

Usage: hack/chart-check.py --bin DIR [--nftpol PATH]   DIR holds helm and kubectl.
Prints one line per check and exits 1 on the first difference, with a diff of the objects.
"""

import argparse
import difflib
import json
import os
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(REPO, "charts", "nftpol")
HELM_ONLY_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"chart-check: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


def objects(text):
    out = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        meta = doc.get("metadata", {})
        labels = meta.get("labels") or {}
        for k in HELM_ONLY_LABELS:
            labels.pop(k, None)
        out[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    return out


def same(what, got, want):
    if got == want:
        print(f"ok: {what}")
        return
    dump = lambda o: json.dumps(o, indent=1, sort_keys=True).splitlines()  # noqa: E731
    diff = "\n".join(difflib.unified_diff(dump(want), dump(got), "kustomize", "helm", lineterm=""))
    sys.exit(f"chart-check: {what} differs:\n{diff}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder holding helm and kubectl")
    ap.add_argument("--nftpol", help="a built nftpol binary, to parse the rendered args")
    a = ap.parse_args()
    helm, kubectl = os.path.join(a.bin, "helm"), os.path.join(a.bin, "kubectl")

    opt_ins = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true"]
    run([helm, "lint", "--strict", CHART])
    run([helm, "lint", "--strict", CHART, *opt_ins])
    run([helm, "lint", "--strict", CHART, "--set", "cleanup.enabled=true"])
    print("ok: helm lint --strict (defaults, monitoring opt-ins, cleanup)")

    def template(*args):
        return objects(run([helm, "template", "nftpol", CHART, "--namespace", "kube-system", *args]))

    def kustomize(path):
        return objects(run([kubectl, "kustomize", os.path.join(REPO, path)]))

    chart, manifests = template(), kustomize("manifests")
    same(f"default rendering = kubectl kustomize manifests/ ({len(manifests)} objects: "
         + ", ".join(sorted(k[0] for k in manifests)) + ")", chart, manifests)

    cleanup = template("--set", "cleanup.enabled=true")
    want = kustomize("manifests/cleanup")
    got = {k: v for k, v in cleanup.items() if k[0] == "DaemonSet"}
    same("cleanup.enabled=true: the DaemonSet is manifests/cleanup/'s, and the only one", got, want)

    monitored = template(*opt_ins)
    rule = {k: v for k, v in monitored.items() if k[0] == "PrometheusRule"}
    same("metrics.prometheusRule.enabled: manifests/monitoring/'s PrometheusRule", rule,
         kustomize("manifests/monitoring"))
    kinds = sorted(k[0] for k in monitored)
    if "ServiceMonitor" not in kinds or "Service" not in kinds:
        sys.exit(f"chart-check: metrics.serviceMonitor.enabled renders {kinds}")
    print("ok: metrics.serviceMonitor.enabled adds a Service and a ServiceMonitor")

    flags = {
        "mode=audit": "--mode=audit",
        "strict=true": "--strict",
        "defaultDenyUnknown=true": "--default-deny-unknown",
        "podCIDRs={10.244.0.0/16,fd00:10:244::/56}": "--pod-cidr=fd00:10:244::/56",
        "policeNodeTraffic=true": "--police-node-traffic",
        "nflogGroup=off": "--nflog-group=off",
        "logFormat=json": "--log-format=json",
        "resyncInterval=60": "--resync-interval=60",
        "coalesceMs=20": "--coalesce-ms=20",
        "metrics.address=0.0.0.0": "--metrics-addr=0.0.0.0:9964",
        "metrics.port=9965": "--metrics-addr=$(HOST_IP):9965",
    }
    def daemon_args(*sets):
        ds = template(*sets)[("DaemonSet", "kube-system", "nftpol")]
        return ds["spec"]["template"]["spec"]["containers"][0]["args"]

    for value, arg in flags.items():
        args = daemon_args("--set", value)
        if arg not in args:
            sys.exit(f"chart-check: --set {value}: {arg} not in the args {args}")
    print(f"ok: each of the {len(flags)} daemon flag values reaches the args")
    if a.nftpol:
        # Every value at once (but the port: metrics.address is set) and the defaults. clap
        # parses each flag before it acts on the trailing --help, so a flag the daemon does not
        # know or a value it rejects fails here. $(HOST_IP) is the kubelet's to expand.
        every = [x for v in list(flags)[:-1] for x in ("--set", v)]
        for args in (daemon_args(*every), daemon_args()):
            run([a.nftpol, *[x.replace("$(HOST_IP)", "10.0.0.1") for x in args], "--help"])
            print(f"ok: nftpol parses the rendered args: {' '.join(args)}")
    no_metrics = template("--set", "metrics.enabled=false")[("DaemonSet", "kube-system", "nftpol")]
    c = no_metrics["spec"]["template"]["spec"]["containers"][0]
    if "--metrics-addr=off" not in c["args"] or "livenessProbe" in c or "readinessProbe" in c:
        sys.exit(f"chart-check: metrics.enabled=false renders {c}")
    print("ok: metrics.enabled=false: --metrics-addr=off and no probes")


if __name__ == "__main__":
    main()
