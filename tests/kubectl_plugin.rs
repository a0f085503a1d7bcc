//! The kubectl plugin (`kubectl-nftpol`, the nftpol binary under that name) against a real
//! kube-apiserver (run by `hack/e2e.sh`; skipped unless `NFTPOL_E2E_STATE` names a cluster
//! started by `hack/kube/up.sh`).
//!
//! - `explain` and `simulate` on live objects give the same answers as `explain -f` and
//!   `simulate -f` on the same objects written to a file;
//! - a ServiceAccount without rights gets the permission it lacks named, then, with rights in
//!   one namespace only, can simulate that namespace;
//! - `status` scrapes a real metrics exposition through the API server's `pods/proxy` (an HTTP
//!   server of this test, at the address of a host-network pod: there is no kubelet);
//! - `flows` reads `pods/log` through the API server from a fake kubelet (python3's TLS HTTP
//!   server at the Node's address and kubelet port; the API server does not check kubelet
//!   certificates unless told to).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nftpol::observe::metrics::Metrics;
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One value of the env file hack/kube/up.sh writes.
fn env_value(state: &Path, key: &str) -> String {
    let env = std::fs::read_to_string(state.join("env")).expect("the state's env file");
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {}/env", state.display()))
        .to_string()
}

struct Fixture {
    state: PathBuf,
    admin: PathBuf,
    dir: PathBuf,
    /// A folder holding `kubectl-nftpol`, a symlink to the nftpol binary.
    bin: PathBuf,
    id: u32,
    children: Vec<Child>,
}

impl Fixture {
    fn kubectl(&self, args: &[&str], stdin: Option<&Value>) -> String {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl (hack/e2e.sh puts it on PATH)");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.to_string().as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn apply(&self, obj: &Value) {
        self.kubectl(&["apply", "-f", "-"], Some(obj));
    }

    fn status(&self, kind: &str, ns: Option<&str>, name: &str, status: &Value) {
        let mut args = vec!["patch", kind, name, "--subresource=status", "--type=merge"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let patch = json!({ "status": status }).to_string();
        args.extend(["-p", &patch]);
        self.kubectl(&args, None);
    }

    /// `kubectl-nftpol ARGS` with this kubeconfig.
    fn plugin(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl-nftpol"))
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .output()
            .unwrap()
    }

    /// The plugin's stdout; it must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.plugin(&self.admin, args);
        assert!(
            out.status.success(),
            "kubectl-nftpol {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `nftpol ARGS` on files.
    fn nftpol(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_nftpol"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nftpol {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.id)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pods with a nodeName stay Terminating without a kubelet unless forced.
        for ns in ["pa", "pb", "ps"] {
            let ns = self.name(ns);
            let _ = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.admin)
                .args([
                    "-n",
                    &ns,
                    "delete",
                    "pods",
                    "--all",
                    "--grace-period=0",
                    "--force",
                ])
                .args(["--wait=false"])
                .output();
        }
        let names = [
            format!("namespace/{}", self.name("pa")),
            format!("namespace/{}", self.name("pb")),
            format!("namespace/{}", self.name("ps")),
            format!("node/{}", self.name("node")),
            format!("clusterrole/{}", self.name("plugin-ns")),
            format!("clusterrolebinding/{}", self.name("plugin-ns")),
        ];
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(["delete", "--ignore-not-found", "--wait=false"])
            .args(&names)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "somewhere", "containers": [{"name": "c", "image": "none",
                 "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"team": team, "kubernetes.io/metadata.name": name}}})
}

/// Serves `metrics` as nftpol does (/metrics, and /readyz: 200, or 503 with the reason) until
/// the process ends; returns the port.
fn serve_metrics(addr: &str, metrics: Metrics) -> u16 {
    let listener =
        TcpListener::bind((addr, 0)).expect("a port on the host end of the API server's link");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (code, body) = if request.contains(" /readyz") {
                match metrics.readyz() {
                    Ok(()) => ("200 OK", "ok".to_string()),
                    Err(reason) => ("503 Service Unavailable", reason),
                }
            } else {
                ("200 OK", metrics.encode())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

const KUBELET: &str = r#"
import http.server, ssl, sys
addr, cert, key, log, requests = sys.argv[1:]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        with open(requests, "a") as f:
            f.write(self.path + "\n")
        body = open(log, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer((addr, 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A fake kubelet serving `log` for every container log; returns its port.
fn fake_kubelet(f: &mut Fixture, addr: &str, log: &str) -> u16 {
    let (cert, key) = (f.dir.join("kubelet.crt"), f.dir.join("kubelet.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=fake-kubelet",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    std::fs::write(f.dir.join("kubelet.log"), log).unwrap();
    std::fs::write(f.dir.join("kubelet.py"), KUBELET).unwrap();
    let mut child = Command::new("python3")
        .arg(f.dir.join("kubelet.py"))
        .arg(addr)
        .args([
            &cert,
            &key,
            &f.dir.join("kubelet.log"),
            &f.dir.join("requests"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    f.children.push(child);
    port.trim().parse().expect("the fake kubelet's port")
}

/// Retries `f` until it returns `Some`, or panics at the deadline with `what`.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs the control plane hack/e2e.sh starts: run hack/e2e.sh"]
fn kubectl_plugin() {
    let state = std::env::var_os("NFTPOL_E2E_STATE")
        .map(PathBuf::from)
        .expect("NFTPOL_E2E_STATE names the cluster hack/kube/up.sh started: run hack/e2e.sh");
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("nftpol-plugin-{id}"));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_nftpol"), bin.join("kubectl-nftpol")).unwrap();
    let mut f = Fixture {
        admin: state.join("kubeconfig"),
        state,
        dir,
        bin,
        id,
        children: Vec::new(),
    };
    let (pa, pb, ps) = (f.name("pa"), f.name("pb"), f.name("ps"));

    // --- explain and simulate: live answers equal the answers on the same objects in files.
    let team_b = f.name("team-b");
    let objects_a = vec![
        namespace(&pa, "a"),
        pod(&pa, "client", "client", "10.253.0.11"),
        pod(&pa, "other", "other", "10.253.0.12"),
        pod(&pa, "server", "server", "10.253.0.13"),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "server-in", "namespace": pa},
               "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                              {"namespaceSelector": {"matchLabels": {"team": team_b}}}],
                                     "ports": [{"port": "http"}]}]}}),
    ];
    let objects_b = vec![
        namespace(&pb, &team_b),
        pod(&pb, "remote", "remote", "10.253.0.21"),
    ];
    for obj in objects_a.iter().chain(&objects_b) {
        let mut obj = obj.clone();
        let status = obj.as_object_mut().unwrap().remove("status");
        f.apply(&obj);
        if let Some(status) = status {
            let ns = obj["metadata"]["namespace"].as_str();
            f.status(
                "pod",
                ns,
                obj["metadata"]["name"].as_str().unwrap(),
                &status,
            );
        }
    }
    let file_a = f.dir.join("a.json");
    let file_all = f.dir.join("all.json");
    let list =
        |items: Vec<Value>| json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    std::fs::write(&file_a, list(objects_a.clone())).unwrap();
    std::fs::write(&file_all, list([objects_a, objects_b].concat())).unwrap();
    let file_all = file_all.to_str().unwrap();
    let file_a = file_a.to_str().unwrap();

    let client = format!("{pa}/client");
    let server = format!("{pa}/server");
    let remote = format!("{pb}/remote");
    let other = format!("{pa}/other");
    for (from, to, verdict) in [
        (&client, &server, "ALLOWED"),
        (&remote, &server, "ALLOWED"),
        (&other, &server, "DENIED"),
        (&other, &"10.253.0.13".to_string(), "DENIED"),
        (&server, &client, "ALLOWED"),
    ] {
        let args = ["--from", from, "--to", to, "--port", "80"];
        let live = f.ok(&[&["explain"][..], &args].concat());
        let file = f.nftpol(&[&["explain", "-f", file_all][..], &args].concat());
        assert_eq!(live, file, "{from} -> {to}");
        assert!(live.lines().next().unwrap().ends_with(verdict), "{live}");
    }
    // A pod given without its namespace is in -n's.
    let live = f.ok(&[
        "explain", "-n", &pa, "--from", "other", "--to", "server", "--port", "80",
    ]);
    assert!(live.lines().next().unwrap().ends_with("DENIED"), "{live}");
    let out = f.plugin(
        &f.admin,
        &[
            "explain",
            "--from",
            &format!("{pa}/nope"),
            "--to",
            &server,
            "--port",
            "80",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("no pod {pa}/nope in the cluster (namespace {pa})")),
        "{}",
        text(&out.stderr)
    );

    let live = f.ok(&["simulate", "-n", &pa, "--port", "80", "-o", "json"]);
    let file = f.nftpol(&["simulate", "-f", file_a, "--port", "80", "-o", "json"]);
    assert_eq!(live, file);
    let all: Value =
        serde_json::from_str(&f.ok(&["simulate", "-A", "--port", "80", "-o", "json"])).unwrap();
    assert_eq!(all["allowed"][&remote][&server], true, "{all}");
    assert_eq!(all["allowed"][&other][&server], false, "{all}");

    // Through kubectl itself: it finds the plugin on PATH.
    let path = format!(
        "{}:{}",
        f.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("kubectl")
        .args(["nftpol", "simulate", "-n", &pa, "--port", "80"])
        .env("PATH", &path)
        .env("KUBECONFIG", &f.admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl nftpol: {}",
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(
        table.starts_with("80/TCP: new connections") && table.contains('X'),
        "{table}"
    );

    // --- permissions: a ServiceAccount with no rights, then with rights in one namespace.
    f.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "viewer", "namespace": pa}}));
    let viewer = f.dir.join("viewer.kubeconfig");
    let out = Command::new("bash")
        .arg(root().join("hack/kube/sa-kubeconfig.sh"))
        .arg(&f.state)
        .args([&pa, "viewer"])
        .arg(&viewer)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sa-kubeconfig.sh: {}",
        text(&out.stderr)
    );
    let out = f.plugin(&viewer, &["simulate", "-n", &pa, "--port", "80"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("permission denied: you may not get namespaces/{pa} (check with `kubectl auth can-i get namespaces/{pa}`)")),
        "{err}"
    );
    let role = f.name("plugin-ns");
    f.apply(
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": role},
                    "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]}),
    );
    let subjects = json!([{"kind": "ServiceAccount", "name": "viewer", "namespace": pa}]);
    f.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": role}, "subjects": subjects,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}}));
    f.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "reader", "namespace": pa},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                              {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list"]}]}));
    f.apply(&json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "reader", "namespace": pa}, "subjects": subjects,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}}));
    // RBAC changes reach the authorizer's cache a moment later.
    let live = eventually("the viewer's new rights", || {
        let out = f.plugin(
            &viewer,
            &["simulate", "-n", &pa, "--port", "80", "-o", "json"],
        );
        out.status.success().then(|| text(&out.stdout))
    });
    assert_eq!(live, file);
    let out = f.plugin(
        &viewer,
        &[
            "explain", "--from", &remote, "--to", &server, "--port", "80",
        ],
    );
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("you may not list pods in namespace \"{pb}\" (check with `kubectl auth can-i list pods -n {pb}`)")),
        "{err}"
    );
    let out = f.plugin(&viewer, &["simulate", "-A", "--port", "80"]);
    assert!(
        text(&out.stderr).contains("you may not list namespaces cluster-wide"),
        "{}",
        text(&out.stderr)
    );

    // --- status: the metrics of a host-network nftpol pod through pods/proxy.
    let host = env_value(&f.state, "NFTPOL_KUBE_HOST_ADDR");
    let metrics = Metrics::new();
    let stats = nftpol::dataplane::Stats {
        transactions: 5,
        transaction_errors: 1,
        ..Default::default()
    };
    metrics.observe_failure(&"rejected", &stats);
    let plan = nftpol::policy::compile::NodePlan::default();
    metrics.observe_apply(
        Instant::now(),
        &nftpol::dataplane::Ruleset::build(&plan, Default::default()),
        &stats,
    );
    let metrics_port = serve_metrics(&host, metrics);
    // Not ready: /readyz says why.
    let unready = Metrics::new();
    let reason = unready
        .readyz()
        .expect_err("not ready before a first apply");
    let unready_port = serve_metrics(&host, unready);
    // Nothing listens on the port of the third one.
    let closed = TcpListener::bind((host.as_str(), 0)).unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    f.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ps}}));
    let node = f.name("node");
    for (name, node, port, ready) in [
        ("nftpol-x", node.as_str(), metrics_port, "True"),
        ("nftpol-y", "elsewhere", closed_port, "False"),
        ("nftpol-z", "syncing", unready_port, "False"),
    ] {
        f.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ps, "labels": {"app.kubernetes.io/name": "nftpol"}},
            "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "nftpol", "image": "nftpol",
                     "ports": [{"name": "metrics", "containerPort": port}]}]},
        }));
        f.status(
            "pod",
            Some(&ps),
            name,
            &json!({"phase": "Running", "podIP": host, "podIPs": [{"ip": host}],
            "conditions": [{"type": "Ready", "status": ready}]}),
        );
    }
    let table = f.ok(&["status", "--nftpol-namespace", &ps]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE"), "{table}");
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with(&node))
        .expect(&table)
        .split_whitespace()
        .collect();
    assert_eq!(row[1..3], ["nftpol-x", "yes"], "{table}");
    assert!(row[3].ends_with('s') && row[4] == "ago", "{table}");
    assert_eq!(row[5..], ["5", "1", "1", "0", "0"], "{table}");
    let row = lines
        .iter()
        .find(|l| l.starts_with("elsewhere"))
        .expect(&table);
    assert!(row.contains("nftpol-y  no") && row.contains('?'), "{table}");
    assert!(
        table.contains(&format!("elsewhere: no metrics: get pods/proxy in namespace \"{ps}\": error trying to reach service:")),
        "{table}"
    );
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("syncing"))
        .expect(&table)
        .split_whitespace()
        .collect();
    assert_eq!(
        row[1..],
        ["nftpol-z", "no", "never", "0", "0", "0", "0", "0"],
        "{table}"
    );
    assert!(
        table.contains(&format!("syncing: not ready: {reason}")),
        "{table}"
    );
    println!("{table}");
    let out = f.plugin(&viewer, &["status", "--nftpol-namespace", &ps]);
    assert!(
        text(&out.stderr).contains(&format!("you may not list pods in namespace \"{ps}\"")),
        "{}",
        text(&out.stderr)
    );

    // --- flows: the pod's log through pods/log, from a fake kubelet at the Node's address.
    let log = format!(
        "2026-11-29T10:00:00.000001Z  INFO nftpol::engine: applied\n\
         2026-11-29T10:00:01.000001Z  INFO nftpol::flow: TCP drop {other} (10.253.0.12) -> {server} (10.253.0.13:80): dropped: isolated for ingress by {pa}/server-in, and no ingress rule of it allows it action=\"drop\" direction=\"ingress\" src=10.253.0.12 src_pod=\"{other}\" dst=10.253.0.13 dst_pod=\"{server}\" protocol=TCP port=80 pod=\"{server}\" policies={pa}/server-in\n\
         {{\"timestamp\":\"2026-11-29T10:00:02.000001Z\",\"level\":\"INFO\",\"message\":\"UDP audit 10.9.9.9 -> {remote} (10.253.0.21:53): would be dropped\",\"action\":\"audit\",\"direction\":\"ingress\",\"src\":\"10.9.9.9\",\"src_pod\":\"\",\"dst\":\"10.253.0.21\",\"dst_pod\":\"{remote}\",\"protocol\":\"UDP\",\"port\":53,\"pod\":\"{remote}\",\"policies\":\"\",\"target\":\"nftpol::flow\"}}\n"
    );
    let kubelet_port = fake_kubelet(&mut f, &host, &log);
    f.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}));
    f.status(
        "node",
        None,
        &node,
        &json!({
            "addresses": [{"type": "InternalIP", "address": host}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        }),
    );
    let out = f.ok(&["flows", "--nftpol-namespace", &ps, "--node", &node]);
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{node}  2026-11-29T10:00:01.000001Z  TCP drop {other}"
        )),
        "{out}"
    );
    assert!(lines[1].contains("UDP audit"), "{out}");
    let out = f.ok(&[
        "flows",
        "--nftpol-namespace",
        &ps,
        "--node",
        &node,
        "-n",
        &pb,
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&remote), "{out}");
    // Every node: the one without a reachable kubelet is a warning, the other still read.
    let all = f.plugin(&f.admin, &["flows", "--nftpol-namespace", &ps]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert_eq!(text(&all.stdout).lines().count(), 2);
    assert!(
        text(&all.stderr).contains("warning: elsewhere:"),
        "{}",
        text(&all.stderr)
    );
    // --follow streams until the kubelet closes (this one closes after the log).
    let out = f.ok(&[
        "flows",
        "--nftpol-namespace",
        &ps,
        "--node",
        &node,
        "--follow",
        "-n",
        &pa,
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let mut requests = String::new();
    std::fs::File::open(f.dir.join("requests"))
        .unwrap()
        .read_to_string(&mut requests)
        .unwrap();
    assert!(
        requests.lines().any(
            |r| r.starts_with(&format!("/containerLogs/{ps}/nftpol-x/nftpol"))
                && r.contains("follow=true")
        ),
        "{requests}"
    );
    println!("kubectl plugin: explain, simulate, permissions, status and flows passed");
}
