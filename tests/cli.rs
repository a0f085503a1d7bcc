//! The `nftpol` binary end to end: simulate's JSON schema, explain's words, and bad input
//! (exit code 2 for unusable input; invalid policies reported, skipped, and said so).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nftpol-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nftpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .args(args)
        .output()
        .expect("run nftpol")
}

/// `nftpol explain -f path --from from --to to --port port`.
fn explain(path: &str, from: &str, to: &str, port: &str) -> Output {
    nftpol(&[
        "explain", "-f", path, "--from", from, "--to", to, "--port", port,
    ])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn demo() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/demo")
        .display()
        .to_string()
}

#[test]
fn simulate_several_probes_gives_one_matrix_each_in_the_order_given() {
    let out = nftpol(&[
        "simulate",
        "-f",
        &demo(),
        "--port",
        "8080,53/UDP",
        "--port",
        "5432",
        "--protocol",
        "TCP",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let probes: Vec<(u64, &str)> = v
        .as_array()
        .expect("an array for several probes")
        .iter()
        .map(|m| (m["port"].as_u64().unwrap(), m["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(probes, [(8080, "TCP"), (53, "UDP"), (5432, "TCP")]);
    let out = nftpol(&["simulate", "-f", &demo(), "--port", "53/ICMP"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn simulate_json_has_the_documented_schema() {
    let out = nftpol(&["simulate", "-f", &demo(), "--port", "8080", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["allowed", "pods", "port", "protocol"]);
    assert_eq!(v["port"], 8080);
    assert_eq!(v["protocol"], "TCP");
    let pods: Vec<&str> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let mut sorted = pods.clone();
    sorted.sort();
    assert_eq!(pods, sorted);
    assert_eq!(pods.len(), 7);
    // Every ordered pair, a pod to itself included.
    for from in &pods {
        assert_eq!(v["allowed"][from].as_object().unwrap().len(), pods.len());
    }
    assert_eq!(v["allowed"]["production/frontend"]["production/api"], true);
    assert_eq!(v["allowed"]["staging/stranger"]["production/api"], false);
    assert_eq!(
        v["allowed"]["staging/stranger"]["production/frontend"],
        true
    );
}

#[test]
fn explain_names_the_policies_and_rules() {
    let out = explain(&demo(), "production/api", "production/postgres", "5432");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.starts_with(
            "production/api (10.244.0.11) -> production/postgres (10.244.0.12) 5432/TCP: ALLOWED"
        ),
        "{s}"
    );
    assert!(s.contains("production/api egress rule 0"), "{s}");
    assert!(s.contains("production/postgres ingress rule 0"), "{s}");

    let out = explain(
        &demo(),
        "production/frontend",
        "production/postgres",
        "5432",
    );
    let s = text(&out.stdout);
    assert!(s.contains("DENIED"), "{s}");
    assert!(
        s.contains("egress of production/frontend: DENIED: isolated by"),
        "{s}"
    );
}

#[test]
fn invalid_yaml_is_unusable_input() {
    let dir = Scratch::new();
    let f = dir.file("bad.yaml", "kind: Pod\nmetadata: {name: [oops\n");
    let out = nftpol(&["simulate", "-f", f.to_str().unwrap(), "--port", "80"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("invalid YAML"),
        "{err}"
    );
}

#[test]
fn duplicate_objects_are_unusable_input() {
    let dir = Scratch::new();
    let pod =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n";
    dir.file("one.yaml", pod);
    dir.file("two.yaml", pod);
    let out = nftpol(&["simulate", "-f", dir.0.to_str().unwrap(), "--port", "80"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("Pod x/a is defined twice")
            && err.contains("one.yaml")
            && err.contains("two.yaml"),
        "{err}"
    );
}

#[test]
fn invalid_pod_fields_name_the_object_and_field() {
    let dir = Scratch::new();
    let f = dir.file(
        "pods.json",
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"},
             "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 70000}]}]}}]}"#,
    );
    let out = nftpol(&["simulate", "-f", f.to_str().unwrap(), "--port", "80"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("Pod x/a: spec.containers[0].ports[0].containerPort"),
        "{err}"
    );
}

#[test]
fn invalid_policy_is_reported_and_skipped_while_valid_ones_apply() {
    let dir = Scratch::new();
    let f = dir.file(
        "all.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-cidr, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-proto, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: ICMP, port: 1}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
"#,
    );
    let out = nftpol(&["simulate", "-f", f.to_str().unwrap(), "--port", "80"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "NetworkPolicy x/bad-cidr: spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR"
        ),
        "{err}"
    );
    assert!(err.contains("NetworkPolicy x/bad-proto: spec.ingress[0].ports[0].protocol: unsupported protocol \"ICMP\""), "{err}");
    assert!(err.contains("ignoring ConfigMap x/ignored"), "{err}");
    let s = text(&out.stdout);
    assert!(s.contains("2 invalid policies skipped"), "{s}");
    // deny-b still applies: a -> b denied, b -> a open.
    let json = nftpol(&[
        "simulate",
        "-f",
        f.to_str().unwrap(),
        "--port",
        "80",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["allowed"]["x/a"]["x/b"], false);
    assert_eq!(v["allowed"]["x/b"]["x/a"], true);
}

#[test]
fn unknown_protocol_and_bad_pod_reference_exit_2() {
    let out = nftpol(&[
        "simulate",
        "-f",
        &demo(),
        "--port",
        "80",
        "--protocol",
        "ICMP",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = explain(&demo(), "nope", "production/api", "80");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not NAMESPACE/POD"));
    let out = explain(&demo(), "x/missing", "production/api", "80");
    assert_eq!(out.status.code(), Some(2));
    let out = nftpol(&["simulate", "-f", "/nonexistent/nftpol", "--port", "80"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn explain_and_render_know_audit_mode() {
    let scratch = Scratch::new();
    // The demo, with namespace production annotated for audit.
    let cluster =
        std::fs::read_to_string(Path::new(&demo()).join("00-cluster.yaml")).expect("demo cluster");
    let annotated = cluster.replacen(
        "metadata: {name: production, labels: {env: production}}",
        "metadata: {name: production, labels: {env: production}, annotations: {nftpol.io/enforcement: audit}}",
        1,
    );
    assert_ne!(annotated, cluster, "the demo declares namespace production");
    let dir = scratch.0.join("m");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("00-cluster.yaml"), annotated).expect("write");
    for entry in std::fs::read_dir(demo()).expect("demo") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "00-cluster.yaml") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).expect("copy");
        }
    }
    let dir = dir.display().to_string();
    let out = explain(&dir, "production/frontend", "production/postgres", "5432");
    let s = text(&out.stdout);
    assert!(s.contains("DENIED"), "{s}");
    assert!(s.contains("namespace production is in audit mode"), "{s}");
    let out = nftpol(&["render", "-f", &dir, "--node", "demo-node"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("log prefix \"nftpol audit ingress\" group 100"),
        "{s}"
    );
    assert!(!s.contains("counter packets 0 bytes 0 drop"), "{s}");
    // Node-wide audit mode and no logs.
    let out = nftpol(&[
        "render",
        "-f",
        &demo(),
        "--node",
        "demo-node",
        "--mode",
        "audit",
        "--nflog-group",
        "off",
    ]);
    let s = text(&out.stdout);
    assert!(s.contains("counter packets 0 bytes 0 return"), "{s}");
    assert!(!s.contains(" log "), "{s}");
    let out = nftpol(&[
        "render",
        "-f",
        &demo(),
        "--node",
        "demo-node",
        "--nflog-group",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn invalid_label_selector_is_reported_by_simulate_and_explain() {
    let dir = Scratch::new();
    let f = dir.file(
        "all.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: spaced, namespace: x}
spec:
  podSelector: {matchLabels: {app: "has space"}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
"#,
    );
    let path = f.to_str().unwrap();
    let want = "NetworkPolicy x/spaced: spec.podSelector.matchLabels: invalid value \"has space\"";
    let out = nftpol(&["simulate", "-f", path, "--port", "80"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 invalid policy skipped"),
        "{}",
        text(&out.stdout)
    );
    let out = explain(path, "x/a", "x/b", "80");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("DENIED") && s.contains("invalid policy skipped"),
        "{s}"
    );
}

/// An invalid value in an In/NotIn list (which the API server keeps in old policies) is a
/// warning: the policy is enforced, not skipped.
#[test]
fn invalid_in_value_is_a_warning_and_the_policy_applies() {
    let dir = Scratch::new();
    let f = dir.file(
        "all.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: legacy, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [b, "has space"]}]}
"#,
    );
    let path = f.to_str().unwrap();
    let want = "warning: ";
    let field = "NetworkPolicy x/legacy: spec.podSelector.matchExpressions[0].values[1]: invalid value \"has space\"";
    for out in [
        nftpol(&["simulate", "-f", path, "--port", "80"]),
        explain(path, "x/a", "x/b", "80"),
    ] {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(want) && l.contains(field)),
            "{stderr}"
        );
        assert!(!stdout.contains("invalid polic"), "{stdout}");
    }
    let s = text(&explain(path, "x/a", "x/b", "80").stdout);
    assert!(s.contains("DENIED") && s.contains("x/legacy"), "{s}");
}
