#!/usr/bin/env python3
"""Checks the shell commands of the docs where that is cheap (part of hack/test.sh).

Reads every fenced ```sh block of README.md, CONTRIBUTING.md, docs/*.md and charts/*/README.md,
and every inline code span of their prose that starts with nftpol, nftpol-testbed, helm, kubectl,
bash or cargo; joins continued lines, drops comments, splits on `&&`, `;` and `|`, and checks
each command by its first word:

  bash F / sh F / F (a path)   F exists (scripts: and is executable or run through bash/sh)
  nftpol SUB ...               SUB is a subcommand and every --flag is in `nftpol SUB --help`
                               (the synopsis' `RULESET FLAGS:` and `every command:` lines: in
                               `nftpol daemon --help`)
  nftpol-testbed SUB ...       the same with nftpol-testbed
  kubectl ... -f P / -k P      each P exists; -k P builds with `kubectl kustomize P`; every
                               file of -f P parses as YAML
  helm install|upgrade|template N CHART [--set k=v]...
                               CHART exists, `helm template` renders with those --set values,
                               and each key k is in the chart's values.yaml (Helm itself accepts
                               unknown keys silently)
  helm uninstall|lint ...      CHART (lint) exists
  cargo test --test T / cargo bench --bench B
                               tests/T.rs, benches/B.rs exist
  any word that looks like a repository path (hack/, manifests/, charts/, examples/, tests/,
  benches/, docs/, src/, .ci/)  exists

Not checked (reported as such): what a command does at run time (no cluster is started here),
and words that are placeholders (NODE, NS/POD, REGISTRY...). A command whose first word is none
of the above (curl, nft, sysctl, grep...) is only path-checked.

Usage: hack/doc-check.py --bin DIR --nftpol PATH --testbed PATH   (DIR holds helm and kubectl)
"""

import argparse
import glob
import os
import re
import shlex
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_PREFIXES = ("hack/", "manifests/", "charts/", "examples/", "tests/", "benches/", "docs/",
                 "src/", ".ci/", "testbed/")
INLINE_FIRST_WORDS = ("nftpol", "nftpol-testbed", "helm", "kubectl", "bash", "cargo")
failures = []
counts = {}


def fail(doc, cmd, why):
    failures.append(f"{doc}: `{cmd}`: {why}")


def count(kind):
    counts[kind] = counts.get(kind, 0) + 1


def blocks(path):
    text = open(path, encoding="utf-8").read()
    for m in re.finditer(r"^( *)```(sh|bash|shell)\n(.*?)^\1```", text, re.S | re.M):
        indent = len(m.group(1))
        yield "\n".join(line[indent:] for line in m.group(3).splitlines())


def inline(path):
    """Inline code spans of the prose that are commands (`nftpol explain -f ... --from ...`)."""
    text = re.sub(r"^( *)```.*?^\1```", "", open(path, encoding="utf-8").read(), flags=re.S | re.M)
    for m in re.finditer(r"`([^`]+)`", text):
        span = " ".join(m.group(1).split())
        if " " in span and span.split()[0] in INLINE_FIRST_WORDS:
            yield span


def commands(block):
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        cmd = []
        for w in words:
            if w in ("&&", ";", "|", "||"):
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(w)
        if cmd:
            yield cmd


def is_placeholder(word):
    return bool(re.search(r"[A-Z]{2,}", word.split("/")[-1])) or "$" in word or "*" in word


def check_path(doc, cmd, p):
    p = p.rstrip(",.:)")
    if is_placeholder(p) or p.startswith("/"):
        return
    if not os.path.exists(os.path.join(REPO, p)):
        fail(doc, " ".join(cmd), f"{p} does not exist")
    else:
        count("paths")


def help_flags(binary, sub):
    p = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", p.stdout))


def check_binary(doc, cmd, binary, name):
    words = [w for w in cmd[1:] if not w.startswith("[")]
    if not words or words[0].startswith("-"):
        return
    sub = words[0]
    if is_placeholder(sub):
        return
    known = help_flags(binary, sub)
    if known is None:
        fail(doc, " ".join(cmd), f"{name} {sub} is not a subcommand")
        return
    flags = {re.sub(r"[\]|].*$", "", w.lstrip("[").split("=")[0])
             for w in cmd[2:] if w.lstrip("[").startswith("--")} - {"--help"}
    unknown = sorted(f for f in flags if f not in known)
    if unknown:
        fail(doc, " ".join(cmd), f"{name} {sub} has no {', '.join(unknown)}")
    count(f"{name} flags")


def values_keys(chart):
    def walk(d, prefix):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from walk(v, prefix + k + ".")
    with open(os.path.join(REPO, chart, "values.yaml"), encoding="utf-8") as f:
        return set(walk(yaml.safe_load(f) or {}, ""))


def check_helm(doc, cmd, helm):
    if len(cmd) < 2:
        return
    verb = cmd[1]
    rest = cmd[2:]
    positional, sets, i = [], [], 0
    while i < len(rest):
        w = rest[i]
        if w in ("--set", "--set-string"):
            sets.append(rest[i + 1])
            i += 2
            continue
        if w in ("-n", "--namespace", "-f", "--values", "--timeout", "--version"):
            i += 2
            continue
        if not w.startswith("-"):
            positional.append(w)
        i += 1
    if verb in ("install", "upgrade", "template") and len(positional) >= 2:
        chart = positional[1]
        if not os.path.isdir(os.path.join(REPO, chart)):
            fail(doc, " ".join(cmd), f"chart {chart} does not exist")
            return
        keys = values_keys(chart)
        for s in sets:
            k = s.split("=")[0]
            if k not in keys:
                fail(doc, " ".join(cmd), f"--set {k}: no such value in {chart}/values.yaml")
        args = [helm, "template", "nftpol", os.path.join(REPO, chart)]
        for s in sets:
            args += ["--set", s.replace("REGISTRY", "registry.example")]
        p = subprocess.run(args, capture_output=True, text=True)
        if p.returncode != 0:
            fail(doc, " ".join(cmd), f"helm template fails: {p.stderr.strip()}")
        count("helm renders")
    elif verb == "lint" and positional:
        check_path(doc, cmd, positional[0])


def check_kubectl(doc, cmd, kubectl):
    for i, w in enumerate(cmd):
        if w in ("-f", "-k", "--filename", "--kustomize") and i + 1 < len(cmd):
            p = cmd[i + 1]
            if is_placeholder(p) or p == "-" or p.startswith("http"):
                continue
            full = os.path.join(REPO, p)
            if not os.path.exists(full):
                fail(doc, " ".join(cmd), f"{p} does not exist")
                continue
            if w in ("-k", "--kustomize"):
                r = subprocess.run([kubectl, "kustomize", full], capture_output=True, text=True)
                if r.returncode != 0:
                    fail(doc, " ".join(cmd), f"kubectl kustomize {p}: {r.stderr.strip()}")
                count("kustomize builds")
            else:
                files = [full] if os.path.isfile(full) else sorted(
                    f for f in glob.glob(os.path.join(full, "*")) if f.endswith((".yaml", ".yml", ".json")))
                for f in files:
                    try:
                        list(yaml.safe_load_all(open(f, encoding="utf-8")))
                    except yaml.YAMLError as e:
                        fail(doc, " ".join(cmd), f"{f}: {e}")
                count("manifest paths")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--nftpol", required=True)
    ap.add_argument("--testbed", required=True)
    a = ap.parse_args()
    docs = ["README.md", "CONTRIBUTING.md", *sorted(glob.glob("docs/*.md", root_dir=REPO)),
            *sorted(glob.glob("charts/*/README.md", root_dir=REPO))]
    total = 0
    unchecked = {}
    for doc in docs:
        last = None
        path = os.path.join(REPO, doc)
        if not os.path.exists(path):
            fail(doc, "", "missing")
            continue
        for block in [*blocks(path), *inline(path)]:
            for cmd in commands(block):
                total += 1
                before = sum(counts.values()) + len(failures)
                m = re.match(r"^\w+=\$\((.+)$", cmd[0])
                if m:  # ip=$(kubectl ...): the command inside
                    cmd = [m.group(1), *cmd[1:]]
                    cmd[-1] = cmd[-1].removesuffix(")")
                if cmd[0].startswith("[") and last:
                    # A synopsis' continuation line: the flags of the command above.
                    cmd = [*last, *cmd]
                last = (cmd[:2] if cmd[0] in ("nftpol", "nftpol-testbed")
                        else ["nftpol", "daemon"] if cmd[0] in ("RULESET", "every") else None)
                first = cmd[0]
                if first in ("bash", "sh") and len(cmd) > 1:
                    check_path(doc, cmd, cmd[1])
                elif first == "nftpol":
                    check_binary(doc, cmd, a.nftpol, "nftpol")
                elif first in ("RULESET", "every"):
                    # The synopsis' shared flags (`RULESET FLAGS: [--mode ...]`, `every
                    # command: [--log-format ...]`): all of them are `daemon` flags.
                    check_binary(doc, ["nftpol", "daemon", *cmd[2:]], a.nftpol, "nftpol")
                elif first == "nftpol-testbed":
                    check_binary(doc, cmd, a.testbed, "nftpol-testbed")
                elif first == "kubectl":
                    check_kubectl(doc, cmd, os.path.join(a.bin, "kubectl"))
                elif first == "helm":
                    check_helm(doc, cmd, os.path.join(a.bin, "helm"))
                elif first == "cargo" and len(cmd) > 3 and cmd[2] in ("--test", "--bench"):
                    d = "tests" if cmd[2] == "--test" else "benches"
                    check_path(doc, cmd, f"{d}/{cmd[3]}.rs")
                elif first.startswith(PATH_PREFIXES):
                    check_path(doc, cmd, first)
                for w in cmd[1:]:
                    if w.startswith(PATH_PREFIXES) and not (first in ("bash", "sh") and w == cmd[1]):
                        check_path(doc, cmd, w)
                if sum(counts.values()) + len(failures) == before:
                    unchecked[first] = unchecked.get(first, 0) + 1
                    if os.environ.get("DOC_CHECK_VERBOSE"):
                        print(f"unchecked: {doc}: {' '.join(cmd)}")
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"doc-check: {total} commands in {len(docs)} files; checked: {summary}")
    print(f"doc-check: {sum(unchecked.values())} commands with nothing cheap to check: "
          + ", ".join(f"{k} x{v}" for k, v in sorted(unchecked.items())))
    if failures:
        print("\n".join(dict.fromkeys(failures)), file=sys.stderr)
        sys.exit(f"doc-check: {len(failures)} failure(s)")


if __name__ == "__main__":
    main()
