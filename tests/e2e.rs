//! End to end against a real kube-apiserver (run by `hack/e2e.sh`; skipped unless
//! `NFTPOL_E2E_STATE` names a cluster started by `hack/kube/up.sh`).
//!
//! Two nodes, flannel host-gw style: node-a is bridged (cni0), node-b routed (/32 routes), joined
//! by an underlay link with a route to each other's pod CIDR. Each node runs the real
//! `nftpol daemon` with the ServiceAccount and RBAC of `manifests/`, so the suite also proves
//! that the ClusterRole is enough. Pods are created through the API (nodeName and status set by
//! hand: there is no kubelet) and probed with real TCP connections. Scenarios run in order on
//! the same cluster; the test prints `N passed, M failed` and fails if any scenario failed.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nftpol::policy::model::{ObjectKey, Protocol};
use nftpol_testbed::listen::Responder;
use nftpol_testbed::netns::{Netns, add_veth};
use nftpol_testbed::topology::Topology;
use nftpol_testbed::{Mode, echo};
use serde_json::{Value, json};

const NS: &str = "e2e";
const PORT: u16 = 80;
const DENIED_PORT: u16 = 81;
/// (name, node, ip)
const PODS: [(&str, &str, &str); 5] = [
    ("a1", "node-a", "10.244.1.11"),
    ("a2", "node-a", "10.244.1.12"),
    ("b1", "node-b", "10.244.2.21"),
    ("b2", "node-b", "10.244.2.22"),
    ("b3", "node-b", "10.244.2.23"),
];
const CONVERGE: Duration = Duration::from_secs(20);
const PROBE: Duration = Duration::from_millis(600);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sh(script: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(root().join("hack/kube").join(script))
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Cluster {
    state: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "kubectl {args:?}: {err}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, obj: &Value) -> anyhow::Result<()> {
        self.kubectl(&["apply", "-f", "-"], Some(&obj.to_string()))
            .map(|_| ())
    }

    fn delete(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        self.kubectl(
            &[
                "-n",
                NS,
                "delete",
                kind,
                name,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        )
        .map(|_| ())
    }

    /// Creates a pod on `node` and gives it an address, as a kubelet would.
    fn pod(&self, name: &str, node: &str, ip: &str, labels: Value) -> anyhow::Result<()> {
        self.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
                     "ports": [{"name": "http", "containerPort": PORT}]}]}
        }))?;
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.kubectl(
            &[
                "-n",
                NS,
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )
        .map(|_| ())
    }
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// A node: its topology (node namespace + pods) and its daemon.
struct Node {
    name: &'static str,
    topo: Topology,
    kubeconfig: PathBuf,
    status: PathBuf,
    log: PathBuf,
    daemon: Option<Child>,
    /// Extra `nftpol daemon` arguments (`--strict`, ...), used at the next start.
    extra_args: Vec<String>,
}

impl Node {
    fn start_daemon(&mut self) -> anyhow::Result<()> {
        let bin = std::env::var_os("NFTPOL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nftpol")));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", self.topo.node.name()])
            .arg(bin)
            .args(["daemon", "--node-name", self.name, "--resync-interval", "5"])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--status-file")
            .arg(&self.status)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        Ok(())
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Polls the status file until the daemon reports an apply made after `t`.
    fn wait_for_apply_after(&self, t: std::time::SystemTime) -> Result<(), String> {
        let deadline = Instant::now() + CONVERGE;
        while Instant::now() < deadline {
            let modified = std::fs::metadata(&self.status).and_then(|m| m.modified());
            if modified.is_ok_and(|m| m > t) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{}: no apply after the restart", self.name))
    }

    fn pod_ns(&self, name: &str) -> Option<&Netns> {
        let key = ObjectKey::new(NS, name);
        self.topo.pods.iter().find(|p| p.key == key).map(|p| &p.ns)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

struct World {
    cluster: Cluster,
    nodes: Vec<Node>,
    responder: Responder,
}

impl World {
    fn ns(&self, pod: &str) -> &Netns {
        self.nodes
            .iter()
            .find_map(|n| n.pod_ns(pod))
            .expect("pod on a node")
    }

    fn ip(pod: &str) -> IpAddr {
        PODS.iter()
            .find(|p| p.0 == pod)
            .map(|p| p.2.parse().expect("ip"))
            .expect("known pod")
    }

    fn connects(&self, from: &str, to: &str, port: u16) -> bool {
        self.ns(from)
            .tcp_connects(SocketAddr::new(Self::ip(to), port), PROBE)
    }

    /// Polls until every (from, to, port) -> expected holds at once, or the deadline.
    fn eventually(&self, want: &[(&str, &str, u16, bool)]) -> Result<(), String> {
        self.eventually_within(want, CONVERGE)
    }

    fn eventually_within(
        &self,
        want: &[(&str, &str, u16, bool)],
        within: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(f, t, p, w)| self.connects(f, t, *p) != *w)
                .map(|(f, t, p, w)| format!("{f} -> {t}:{p} expected {w}"))
                .collect();
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(wrong.join(", "));
            }
        }
    }
}

fn build_world(state: &Path) -> anyhow::Result<World> {
    let cluster = Cluster {
        state: state.to_path_buf(),
        kubeconfig: state.join("kubeconfig"),
    };
    cluster.kubectl(
        &[
            "apply",
            "-f",
            root().join("manifests/rbac.yaml").to_str().unwrap_or(""),
        ],
        None,
    )?;
    // The API server labels each namespace kubernetes.io/metadata.name itself.
    for ns in [NS, "e2e-other"] {
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    }
    for node in ["node-a", "node-b"] {
        cluster.apply(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
            "spec": {"podCIDR": if node == "node-a" { "10.244.1.0/24" } else { "10.244.2.0/24" }}}),
        )?;
    }
    let responder = Responder::start()?;
    let mut nodes = Vec::new();
    for (name, mode) in [("node-a", Mode::Bridge), ("node-b", Mode::Routed)] {
        let pods: Vec<(ObjectKey, Vec<IpAddr>)> = PODS
            .iter()
            .filter(|p| p.1 == name)
            .map(|p| (ObjectKey::new(NS, p.0), vec![p.2.parse().expect("ip")]))
            .collect();
        let topo = Topology::new(mode, &pods)?;
        for pod in &topo.pods {
            for port in [PORT, DENIED_PORT] {
                responder.listen(&pod.ns, &pod.ips, port, Protocol::Tcp)?;
            }
        }
        let vars = sh(
            "connect.sh",
            &[state.to_str().unwrap_or(""), topo.node.name()],
        )?;
        let server = vars
            .lines()
            .find_map(|l| l.strip_prefix("NFTPOL_KUBE_PEER_SERVER="))
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        let kubeconfig = state.join(format!("nftpol-{name}.kubeconfig"));
        sh(
            "sa-kubeconfig.sh",
            &[
                state.to_str().unwrap_or(""),
                "kube-system",
                "nftpol",
                kubeconfig.to_str().unwrap_or(""),
                &server,
            ],
        )?;
        nodes.push(Node {
            name,
            topo,
            kubeconfig,
            status: state.join(format!("status-{name}.json")),
            log: state.join(format!("daemon-{name}.log")),
            daemon: None,
            extra_args: Vec::new(),
        });
    }
    // The underlay: node-a 192.168.200.1/30 <-> node-b .2, each routing the other's pod CIDR.
    let (a, b) = (&nodes[0].topo.node, &nodes[1].topo.node);
    add_veth(a, "underlay", b, "underlay")?;
    a.ip(&["addr", "add", "192.168.200.1/30", "dev", "underlay"])?;
    b.ip(&["addr", "add", "192.168.200.2/30", "dev", "underlay"])?;
    a.ip(&["route", "add", "10.244.2.0/24", "via", "192.168.200.2"])?;
    b.ip(&["route", "add", "10.244.1.0/24", "via", "192.168.200.1"])?;
    for (name, node, ip) in PODS {
        cluster.pod(name, node, ip, json!({"app": name}))?;
    }
    for node in &mut nodes {
        node.start_daemon()?;
    }
    Ok(World {
        cluster,
        nodes,
        responder,
    })
}

type Scenario = fn(&mut World) -> Result<(), String>;

fn e(r: anyhow::Result<()>) -> Result<(), String> {
    r.map_err(|e| format!("{e:#}"))
}

fn baseline(w: &mut World) -> Result<(), String> {
    w.eventually(&[
        ("a1", "b1", PORT, true),
        ("b1", "a1", PORT, true),
        ("a2", "b2", PORT, true),
    ])
}

fn ingress_checked_at_the_destination(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&policy("b1-from-a1", json!({
        "podSelector": {"matchLabels": {"app": "b1"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a1"}}}], "ports": [{"port": PORT}]}]
    }))))?;
    w.eventually(&[
        ("a1", "b1", PORT, true),
        ("a2", "b1", PORT, false),
        ("b2", "b1", PORT, false),
        ("a1", "b1", DENIED_PORT, false),
        ("a2", "b2", PORT, true),
    ])
}

fn egress_checked_at_the_source(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&policy(
        "a2-egress",
        json!({
            "podSelector": {"matchLabels": {"app": "a2"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "b3"}}}]}]
        }),
    )))?;
    w.eventually(&[
        ("a2", "b2", PORT, false),
        ("a2", "b3", PORT, true),
        ("a1", "b2", PORT, true),
    ])
}

fn policy_update_and_pod_relabel(w: &mut World) -> Result<(), String> {
    // Update: b1 now also accepts app=trusted; then a2 gets that label.
    e(w.cluster.apply(&policy("b1-from-a1", json!({
        "podSelector": {"matchLabels": {"app": "b1"}},
        "ingress": [{"from": [{"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["a1", "trusted"]}]}}], "ports": [{"port": PORT}]}]
    }))))?;
    w.eventually(&[("a2", "b1", PORT, false)])?;
    e(w.cluster
        .kubectl(
            &["-n", NS, "label", "pod", "a2", "app=trusted", "--overwrite"],
            None,
        )
        .map(|_| ()))?;
    // a2 lost app=a2, so its egress policy no longer selects it either.
    w.eventually(&[("a2", "b1", PORT, true), ("a2", "b2", PORT, true)])
}

fn namespace_relabel(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&policy(
        "b2-from-blue",
        json!({
            "podSelector": {"matchLabels": {"app": "b2"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]
        }),
    )))?;
    w.eventually(&[("a1", "b2", PORT, false)])?;
    e(w.cluster
        .kubectl(&["label", "namespace", NS, "team=blue"], None)
        .map(|_| ()))?;
    w.eventually(&[("a1", "b2", PORT, true)])?;
    e(w.cluster
        .kubectl(&["label", "namespace", NS, "team-"], None)
        .map(|_| ()))?;
    w.eventually(&[("a1", "b2", PORT, false)])
}

fn end_port_range(w: &mut World) -> Result<(), String> {
    // a1 takes TCP 81-90 from the pods of namespace e2e, selected by the label the API server
    // sets itself (kubernetes.io/metadata.name); 80 and 91, just outside the range, listen too
    // and must be dropped. One source on the other node, one on the same node.
    const END_PORT: u16 = 90;
    for port in [END_PORT, END_PORT + 1] {
        echo_server(w, "a1", port)?;
    }
    e(w.cluster.apply(&policy(
        "a1-range",
        json!({
            "podSelector": {"matchLabels": {"app": "a1"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}],
                "ports": [{"protocol": "TCP", "port": DENIED_PORT, "endPort": END_PORT}]
            }]
        }),
    )))?;
    // An API server that does not know endPort drops it silently, and the policy then allows
    // port 81 alone: check that it was stored.
    let stored = w
        .cluster
        .kubectl(
            &[
                "-n",
                NS,
                "get",
                "networkpolicy",
                "a1-range",
                "-o",
                "jsonpath={.spec.ingress[0].ports[0].endPort}",
            ],
            None,
        )
        .map_err(|e| format!("{e:#}"))?;
    if stored.trim() != END_PORT.to_string() {
        return Err(format!("the API server stored endPort {stored:?}"));
    }
    w.eventually(&[
        ("b1", "a1", DENIED_PORT, true),
        ("b1", "a1", END_PORT, true),
        ("b1", "a1", PORT, false),
        ("b1", "a1", END_PORT + 1, false),
        ("a2", "a1", END_PORT, true),
        ("a2", "a1", END_PORT + 1, false),
    ])?;
    e(w.cluster.delete("networkpolicy", "a1-range"))?;
    w.eventually(&[("b1", "a1", PORT, true), ("a2", "a1", PORT, true)])
}

fn deleted_pod_address_reused_by_another(w: &mut World) -> Result<(), String> {
    // b1 accepts app=a1: delete a1 and give its address to a pod with other labels, which must
    // be denied; then bring a1 back.
    e(w.cluster.delete("pod", "a1"))?;
    e(w.cluster.pod(
        "a1-new",
        "node-a",
        "10.244.1.11",
        json!({"app": "stranger"}),
    ))?;
    w.eventually(&[("a1", "b1", PORT, false)])?;
    e(w.cluster.delete("pod", "a1-new"))?;
    e(w.cluster
        .pod("a1", "node-a", "10.244.1.11", json!({"app": "a1"})))?;
    w.eventually(&[("a1", "b1", PORT, true)])
}

/// Starts an echo server in `to` on `port`.
fn echo_server(w: &World, to: &str, port: u16) -> Result<(), String> {
    e(echo::serve(w.ns(to), SocketAddr::new(World::ip(to), port)))
}

/// A connection from `from` to the echo server of `to` on `port`.
fn established(w: &World, from: &str, to: &str, port: u16) -> Result<TcpStream, String> {
    let dst = SocketAddr::new(World::ip(to), port);
    let s = w
        .ns(from)
        .run(move || TcpStream::connect_timeout(&dst, PROBE))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("connecting {from} -> {to}:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// Counts denied connections that got through and established round trips that failed while
/// `during` runs.
/// While `during` runs: a1 -> b1:`port` (an echo server) is established before and must keep
/// flowing, and b2 -> b1:80, denied, is tried again and again.
fn under_traffic(
    w: &mut World,
    port: u16,
    during: impl FnOnce(&mut World) -> Result<(), String>,
) -> Result<(), String> {
    echo_server(w, "b1", port)?;
    w.eventually(&[("a1", "b1", port, true), ("b2", "b1", PORT, false)])?;
    let mut stream = established(w, "a1", "b1", port)?;
    let stop = Arc::new(AtomicBool::new(false));
    let passed = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let dst = SocketAddr::new(World::ip("b1"), PORT);
    let worker = {
        let (stop, passed, tries) = (stop.clone(), passed.clone(), tries.clone());
        w.ns("b2")
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tries.fetch_add(1, Ordering::Relaxed);
                    if TcpStream::connect_timeout(&dst, Duration::from_millis(50)).is_ok() {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|e| e.to_string())?
    };
    let mut echo_failures = 0;
    let result = during(w);
    // Keep the stream going a little after the event, so that its aftermath is covered too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tries.load(Ordering::Relaxed) < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..5 {
        if !echo::round_trip(&mut stream, format!("ping {i}").as_bytes()) {
            echo_failures += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let (p, t) = (
        passed.load(Ordering::Relaxed),
        tries.load(Ordering::Relaxed),
    );
    eprintln!(
        "  denied attempts: {t}, got through: {p}; established echo failures: {echo_failures}"
    );
    result?;
    if p > 0 || echo_failures > 0 || t == 0 {
        return Err(format!(
            "{p} denied connections got through, {echo_failures} echoes failed, {t} attempts"
        ));
    }
    Ok(())
}

fn daemon_restart_keeps_enforcing(w: &mut World) -> Result<(), String> {
    // b1 allows only app in (a1, trusted) on PORT: b2 -> b1 is denied throughout.
    w.eventually(&[("b2", "b1", PORT, false), ("a1", "b1", PORT, true)])?;
    e(w.cluster.apply(&policy(
        "b1-echo",
        json!({
            "podSelector": {"matchLabels": {"app": "b1"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a1"}}}],
                         "ports": [{"port": 9000}, {"port": 9001}]}]
        }),
    )))?;
    w.eventually(&[("a1", "b1", PORT, true)])?;
    under_traffic(w, 9000, |w| {
        for n in w.nodes.iter_mut() {
            let restarted = std::time::SystemTime::now();
            n.stop_daemon();
            n.start_daemon().map_err(|e| e.to_string())?;
            n.wait_for_apply_after(restarted)?;
        }
        Ok(())
    })
}

/// Makes the API server unreachable from the nodes (or reachable again): their connections to
/// port 6443 are reset at once, as by a dead server, rather than black-holed (a black-holed
/// SYN would leave a reconnecting watch waiting for the client's connect timeout).
fn set_api_reachable(w: &World, reachable: bool) -> Result<(), String> {
    for n in &w.nodes {
        let rules = if reachable {
            "delete table inet e2e-outage\n"
        } else {
            "table inet e2e-outage {\n chain out {\n  type filter hook output priority filter;\n  tcp dport 6443 reject with tcp reset\n }\n}\n"
        };
        e(n.topo
            .node
            .exec("nft", &["-f", "-"], Some(rules))
            .map(|_| ()))?;
    }
    Ok(())
}

fn api_outage_and_410(w: &mut World) -> Result<(), String> {
    let state = w.cluster.state.to_string_lossy().into_owned();
    // The outage, as the daemons see it: the API server dies (their watches break), and while
    // they cannot reach it, it comes back, policies and a pod are deleted, and etcd is
    // compacted. When they reconnect, their resourceVersion is gone: a real 410 Gone, a relist,
    // and the deletions must be enforced. Traffic flows throughout.
    under_traffic(w, 9001, |w| {
        e(sh("apiserver.sh", &[&state, "kill"]).map(|_| ()))?;
        set_api_reachable(w, false)?;
        let changes = (|| {
            e(sh("apiserver.sh", &[&state, "start"]).map(|_| ()))?;
            e(w.cluster.delete("networkpolicy", "b1-from-a1"))?;
            e(w.cluster.delete("pod", "b3"))?;
            e(sh("compact.sh", &[&state]).map(|_| ()))
        })();
        set_api_reachable(w, true)?;
        changes
    })?;
    // b1-echo still isolates b1 (port 9000-9001 from a1 only): b2 -> b1:80 stays denied until
    // it goes too, deleted normally, after the relist.
    e(w.cluster.delete("networkpolicy", "b1-echo"))?;
    // The watches reconnect on their exponential backoff (up to 30 s between attempts), which
    // grew while the API server was unreachable: convergence, not speed, is checked here.
    w.eventually_within(
        &[("b2", "b1", PORT, true), ("a2", "b1", PORT, true)],
        Duration::from_secs(60),
    )?;
    let gone = w.nodes.iter().all(|n| {
        std::fs::read_to_string(&n.log).is_ok_and(|l| {
            l.lines().any(|l| {
                l.contains("watch failed") && l.contains("too old") && l.contains("Expired")
            })
        })
    });
    if !gone {
        let seen: Vec<String> = w
            .nodes
            .iter()
            .flat_map(|n| {
                std::fs::read_to_string(&n.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("watch failed"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        return Err(format!(
            "no daemon saw 410 Gone; watch errors: {}",
            seen.join("\n")
        ));
    }
    Ok(())
}

/// Where `nftpol daemon` serves /metrics, /livez and /readyz by default (each node has its
/// own network namespace).
const METRICS_PORT: u16 = 9964;

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn daemons_serve_metrics_and_probes(w: &mut World) -> Result<(), String> {
    for n in &w.nodes {
        let get = |path: &str| {
            nftpol_testbed::daemon::http_get(&n.topo.node, METRICS_PORT, path)
                .map_err(|e| format!("{}: {e:#}", n.name))
        };
        // Ready after the API outage: a watch that failed and retried is normal.
        let deadline = Instant::now() + CONVERGE;
        loop {
            let (code, body) = get("/readyz")?;
            if code == 200 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: /readyz {code}: {body}", n.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, body) = get("/livez")?;
        if code != 200 {
            return Err(format!("{}: /livez {code}: {body}", n.name));
        }
        let (code, text) = get("/metrics")?;
        let value = |name: &str| {
            sample(&text, name).ok_or_else(|| format!("{}: no {name} in:\n{text}", n.name))
        };
        let checks = [
            (code == 200, "/metrics answers 200"),
            (
                value("nftpol_active_local_endpoints")? >= 1.0,
                "endpoints counted",
            ),
            (
                value("nftpol_int_dataplane_apply_time_seconds_count")?
                    == value("nftpol_nft_transactions")? - value("nftpol_nft_errors")?,
                "every committed transaction observed",
            ),
            (
                value("nftpol_policy_implementation_delay_seconds_count")? >= 1.0,
                "implementation delay observed",
            ),
            (
                value("nftpol_br_netfilter_enabled")? == 1.0,
                "br_netfilter on",
            ),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(format!("{}: not so: {what}:\n{text}", n.name));
        }
    }
    Ok(())
}

fn manifests_apply(w: &mut World) -> Result<(), String> {
    let crd = root().join("tests/fixtures/prometheusrule-crd.yaml");
    let dir = root().join("manifests");
    let (crd, dir) = (crd.to_string_lossy(), dir.to_string_lossy());
    e(w.cluster.kubectl(&["apply", "-f", &crd], None).map(|_| ()))?;
    e(w.cluster
        .kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd/prometheusrules.monitoring.coreos.com",
            ],
            None,
        )
        .map(|_| ()))?;
    // The alerts are a folder of their own (manifests/monitoring/, a PrometheusRule): it
    // applies once the Prometheus Operator's CRD (the stand-in above) exists.
    for d in [dir.to_string(), format!("{dir}/monitoring")] {
        e(w.cluster
            .kubectl(&["apply", "--dry-run=client", "-f", &d], None)
            .map(|_| ()))?;
        e(w.cluster
            .kubectl(
                &["apply", "--server-side", "--force-conflicts", "-f", &d],
                None,
            )
            .map(|_| ()))?;
    }
    e(w.cluster
        .kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                &format!("{dir}/cleanup"),
            ],
            None,
        )
        .map(|_| ()))?;
    for (kind, name) in [
        ("daemonset", "nftpol"),
        ("daemonset", "nftpol-cleanup"),
        ("prometheusrule", "nftpol"),
    ] {
        e(w.cluster
            .kubectl(&["-n", "kube-system", "get", kind, name], None)
            .map(|_| ()))?;
    }
    // Nothing runs them here (no kubelet); remove them so they do not linger.
    e(w.cluster
        .kubectl(
            &[
                "delete",
                "-f",
                &format!("{dir}/daemonset.yaml"),
                "-f",
                &format!("{dir}/cleanup"),
            ],
            None,
        )
        .map(|_| ()))
}

fn uninstall(w: &mut World) -> Result<(), String> {
    // b2 takes traffic only from namespaces labelled team=blue (scenario 5): a1 is denied.
    w.eventually(&[("a1", "b2", PORT, false)])?;
    for n in w.nodes.iter_mut() {
        n.stop_daemon();
    }
    // Deleting the daemons leaves the rules in force: a restart must not open the node.
    if w.connects("a1", "b2", PORT) {
        return Err("stopping the daemons opened the node".into());
    }
    let bin = env!("CARGO_BIN_EXE_nftpol");
    for n in &w.nodes {
        e(n.topo.node.exec(bin, &["cleanup"], None).map(|_| ()))?;
        if n.topo
            .node
            .exec("nft", &["list", "table", "inet", "nftpol"], None)
            .is_ok()
        {
            return Err(format!("{}: table inet nftpol still exists", n.name));
        }
    }
    w.eventually(&[("a1", "b2", PORT, true), ("b2", "b1", PORT, true)])
}

/// Restarts node-a's daemon with `args` and waits for its first apply.
fn restart_node_a(w: &mut World, args: &[&str]) -> Result<(), String> {
    let a = &mut w.nodes[0];
    a.extra_args = args.iter().map(|s| s.to_string()).collect();
    let restarted = std::time::SystemTime::now();
    a.stop_daemon();
    a.start_daemon().map_err(|e| e.to_string())?;
    a.wait_for_apply_after(restarted)
}

fn strict_and_unknown_on_node_a(w: &mut World) -> Result<(), String> {
    // The pod CIDR comes from node-a's Node object (10.244.1.0/24): no --pod-cidr.
    restart_node_a(w, &["--strict", "--default-deny-unknown"])?;
    let r = (|| {
        w.eventually(&[("a1", "a2", PORT, true), ("b1", "a2", PORT, true)])?;
        // a1's Pod object goes, its namespace and address stay: an unknown address on node-a.
        e(w.cluster.delete("pod", "a1"))?;
        w.eventually(&[("a1", "a2", PORT, false), ("b1", "a2", PORT, true)])?;
        e(w.cluster
            .pod("a1", "node-a", "10.244.1.11", json!({"app": "a1"})))?;
        w.eventually(&[("a1", "a2", PORT, true)])?;
        // --strict: an established b1 -> a1 connection is cut on node-a when a1's ingress stops
        // allowing it (node-b's daemon is not strict). (a2 was relabelled app=trusted.)
        echo_server(w, "a1", 9100)?;
        let mut s = established(w, "b1", "a1", 9100)?;
        if !echo::round_trip(&mut s, b"before") {
            return Err("no echo before the change".into());
        }
        e(w.cluster.apply(&policy(
            "a1-deny",
            json!({"podSelector": {"matchLabels": {"app": "a1"}}, "policyTypes": ["Ingress"]}),
        )))?;
        let deadline = Instant::now() + CONVERGE;
        while echo::round_trip(&mut s, b"after") {
            if Instant::now() > deadline {
                return Err("the established connection was not cut".into());
            }
        }
        e(w.cluster.delete("networkpolicy", "a1-deny"))?;
        w.eventually(&[("b1", "a1", PORT, true)])
    })();
    restart_node_a(w, &[])?;
    r
}

/// The bytes of `node`'s daemon log so far: [`wait_for_log`] looks after that offset.
fn log_len(node: &Node) -> u64 {
    std::fs::metadata(&node.log).map_or(0, |m| m.len())
}

/// Polls `node`'s daemon log, after byte `from`, for a line holding every one of `parts`.
fn wait_for_log(node: &Node, from: u64, parts: &[&str]) -> Result<String, String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let log = std::fs::read(&node.log).unwrap_or_default();
        let tail = String::from_utf8_lossy(log.get(from as usize..).unwrap_or_default());
        if let Some(line) = tail.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: no log line with {parts:?}", node.name));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn flow_logs_and_namespace_audit(w: &mut World) -> Result<(), String> {
    // b2 (node-b) takes traffic only from namespaces labelled team=blue (scenario 5): a1 is
    // dropped there, by node-b, which logs it naming both pods and the isolating policy.
    let from = log_len(&w.nodes[1]);
    w.eventually(&[("a1", "b2", PORT, false)])?;
    let denied = format!(":{PORT}): dropped");
    wait_for_log(
        &w.nodes[1],
        from,
        &[
            "nftpol::flow",
            "TCP drop e2e/a1",
            &denied,
            "e2e/b2-from-blue",
        ],
    )?;
    let annotate = |value: &str| {
        e(w.cluster
            .kubectl(&["annotate", "namespace", NS, value, "--overwrite"], None)
            .map(|_| ()))
    };
    annotate("nftpol.io/enforcement=audit")?;
    let r = (|| {
        let from = log_len(&w.nodes[1]);
        w.eventually(&[("a1", "b2", PORT, true)])?;
        wait_for_log(
            &w.nodes[1],
            from,
            &["nftpol::flow", "TCP audit e2e/a1", "would be dropped"],
        )?;
        let (_, text) =
            nftpol_testbed::daemon::http_get(&w.nodes[1].topo.node, METRICS_PORT, "/metrics")
                .map_err(|e| format!("{e:#}"))?;
        let name = "nftpol_audit_would_drop_packets{direction=\"ingress\",namespace=\"e2e\"}";
        match sample(&text, name) {
            Some(v) if v > 0.0 => Ok(()),
            other => Err(format!("node-b: {name} is {other:?}:\n{text}")),
        }
    })();
    annotate("nftpol.io/enforcement-")?;
    r?;
    w.eventually(&[("a1", "b2", PORT, false)])
}

// --- ClusterNetworkPolicy (policy.networking.k8s.io) ------------------------------------------

const CRD_NAMES: [&str; 3] = [
    "clusternetworkpolicies.policy.networking.k8s.io",
    "adminnetworkpolicies.policy.networking.k8s.io",
    "baselineadminnetworkpolicies.policy.networking.k8s.io",
];

/// The pods of namespace e2e with these labels, as a subject or a peer.
fn pods_labelled(labels: Value) -> Value {
    json!({"pods": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
        "podSelector": {"matchLabels": labels}
    }})
}

fn this_namespace() -> Value {
    json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": NS}}})
}

/// A ClusterNetworkPolicy (v1beta1, the version the newest CRD stores).
fn cnp(name: &str, tier: &str, priority: u32, subject: Value, rules: Value) -> Value {
    let mut spec = json!({"tier": tier, "priority": priority, "subject": subject});
    if let (Some(spec), Some(rules)) = (spec.as_object_mut(), rules.as_object()) {
        spec.extend(rules.clone());
    }
    json!({"apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

/// One ingress rule from `peers`.
fn ingress(name: &str, action: &str, peers: Value) -> Value {
    json!({"ingress": [{"name": name, "action": action, "from": peers}]})
}

impl Cluster {
    /// Deletes a cluster-scoped object.
    fn delete_cluster(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        self.kubectl(
            &["delete", kind, name, "--wait=false", "--ignore-not-found"],
            None,
        )
        .map(|_| ())
    }
}

/// Both daemons still run the process they started with: no restart happened.
fn not_restarted(w: &mut World) -> Result<(), String> {
    for n in &mut w.nodes {
        match n.daemon.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => {}
            other => return Err(format!("{}: the daemon is not running: {other:?}", n.name)),
        }
    }
    Ok(())
}

fn cluster_policy_crds_picked_up_without_a_restart(w: &mut World) -> Result<(), String> {
    // The daemons started before the CRDs existed: they said so, and enforce (are ready)
    // without them.
    for n in &w.nodes {
        wait_for_log(n, 0, &["ClusterNetworkPolicy", "CRD not installed"])?;
        let deadline = Instant::now() + CONVERGE;
        loop {
            let (code, body) =
                nftpol_testbed::daemon::http_get(&n.topo.node, METRICS_PORT, "/readyz")
                    .map_err(|e| format!("{}: {e:#}", n.name))?;
            if code == 200 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("{}: not ready without the CRDs: {body}", n.name));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let from: Vec<u64> = w.nodes.iter().map(log_len).collect();
    // The newest CNP CRD of the module proxy, and the v1alpha1 ones (hack/kube/npa-crds.sh).
    let crds = sh("npa-crds.sh", &[]).map_err(|e| format!("{e:#}"))?;
    for crd in crds.lines().filter(|l| !l.is_empty()) {
        e(w.cluster
            .kubectl(&["apply", "--server-side", "-f", crd], None)
            .map(|_| ()))?;
    }
    for name in CRD_NAMES {
        e(w.cluster
            .kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    &format!("crd/{name}"),
                ],
                None,
            )
            .map(|_| ()))?;
    }
    for (n, from) in w.nodes.iter().zip(from) {
        wait_for_log(
            n,
            from,
            &["ClusterNetworkPolicy", "policy.networking.k8s.io/v1beta1"],
        )?;
        wait_for_log(
            n,
            from,
            &[
                "BaselineAdminNetworkPolicy",
                "policy.networking.k8s.io/v1alpha1",
            ],
        )?;
    }
    e(w.cluster.apply(&cnp(
        "e2e-first",
        "Admin",
        10,
        pods_labelled(json!({"app": "b2"})),
        ingress(
            "no-a1",
            "Deny",
            json!([pods_labelled(json!({"app": "a1"}))]),
        ),
    )))?;
    w.eventually(&[
        ("a1", "b2", PORT, false),
        ("a2", "b2", PORT, true),
        ("a1", "b1", PORT, true),
    ])?;
    not_restarted(w)?;
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-first"))?;
    w.eventually(&[("a1", "b2", PORT, true)])
}

fn admin_deny_overrides_an_allowing_network_policy(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&policy(
        "b1-allows",
        json!({
            "podSelector": {"matchLabels": {"app": "b1"}},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["a1", "a2"]}]}}]}]
        }),
    )))?;
    w.eventually(&[("a2", "b1", PORT, true), ("b2", "b1", PORT, false)])?;
    // Ingress at b1 (checked on node-b), egress at a1 (checked on node-a).
    e(w.cluster.apply(&cnp(
        "e2e-deny",
        "Admin",
        20,
        pods_labelled(json!({"app": "b1"})),
        ingress(
            "no-a2",
            "Deny",
            json!([pods_labelled(json!({"app": "a2"}))]),
        ),
    )))?;
    e(w.cluster.apply(&cnp(
        "e2e-deny-egress",
        "Admin",
        20,
        pods_labelled(json!({"app": "a1"})),
        json!({"egress": [{"name": "not-b3", "action": "Deny",
                           "to": [pods_labelled(json!({"app": "b3"}))]}]}),
    )))?;
    let r = w.eventually(&[
        ("a1", "b1", PORT, true),
        ("a2", "b1", PORT, false),
        ("b2", "b1", PORT, false),
        ("a1", "b3", PORT, false),
        ("a2", "b3", PORT, true),
    ]);
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-deny-egress"))?;
    r?;
    w.eventually(&[("a1", "b3", PORT, true)])
}

fn admin_pass_falls_to_network_policy(w: &mut World) -> Result<(), String> {
    // Before e2e-deny (priority 20): Accept from b2 (NetworkPolicy is not consulted), then
    // Pass from the whole namespace (NetworkPolicy b1-allows decides).
    e(w.cluster.apply(&cnp(
        "e2e-pass",
        "Admin",
        10,
        pods_labelled(json!({"app": "b1"})),
        json!({"ingress": [
            {"name": "b2-in", "action": "Accept", "from": [pods_labelled(json!({"app": "b2"}))]},
            {"name": "to-np", "action": "Pass", "from": [this_namespace()]},
        ]}),
    )))?;
    let r = w.eventually(&[
        ("a2", "b1", PORT, true),
        ("a1", "b1", PORT, true),
        ("b2", "b1", PORT, true),
        ("b3", "b1", PORT, false),
    ]);
    e(w.cluster.delete_cluster("clusternetworkpolicy", "e2e-pass"))?;
    e(w.cluster.delete_cluster("clusternetworkpolicy", "e2e-deny"))?;
    r?;
    w.eventually(&[("a2", "b1", PORT, true), ("b2", "b1", PORT, false)])
}

fn baseline_deny_where_no_network_policy_isolates(w: &mut World) -> Result<(), String> {
    // b1 is isolated by b1-allows (a1, a2): NetworkPolicy decides there. b3 gets an
    // egress-only NetworkPolicy, which does not isolate its ingress: the Baseline applies.
    e(w.cluster.apply(&policy(
        "b3-egress",
        json!({"podSelector": {"matchLabels": {"app": "b3"}}, "policyTypes": ["Egress"],
               "egress": [{}]}),
    )))?;
    e(w.cluster.apply(&cnp(
        "e2e-baseline",
        "Baseline",
        10,
        this_namespace(),
        ingress("closed", "Deny", json!([{"namespaces": {}}])),
    )))?;
    let r = w.eventually(&[
        ("a1", "b1", PORT, true),
        ("b2", "b1", PORT, false),
        ("a1", "b3", PORT, false),
        ("b1", "a2", PORT, false),
        ("a1", "a2", PORT, false),
    ]);
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-baseline"))?;
    e(w.cluster.delete("networkpolicy", "b3-egress"))?;
    e(w.cluster.delete("networkpolicy", "b1-allows"))?;
    r?;
    w.eventually(&[
        ("a1", "b3", PORT, true),
        ("b1", "a2", PORT, true),
        ("b2", "b1", PORT, true),
    ])
}

fn v1alpha1_admin_and_baseline_admin_network_policies(w: &mut World) -> Result<(), String> {
    let v1alpha1 = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": kind,
               "metadata": {"name": name}, "spec": spec})
    };
    e(w.cluster.apply(&v1alpha1(
        "BaselineAdminNetworkPolicy",
        "default",
        json!({"subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": NS}}},
               "ingress": [{"name": "closed", "action": "Deny", "from": [{"namespaces": {}}]}]}),
    )))?;
    let r = (|| {
        w.eventually(&[("a1", "b3", PORT, false), ("a2", "b3", PORT, false)])?;
        e(w.cluster.apply(&v1alpha1(
            "AdminNetworkPolicy",
            "e2e-a1-to-b3",
            json!({"priority": 5, "subject": pods_labelled(json!({"app": "b3"})),
                   "ingress": [{"name": "a1", "action": "Allow",
                                "from": [pods_labelled(json!({"app": "a1"}))],
                                "ports": [{"portNumber": {"protocol": "TCP", "port": PORT}}]}]}),
        )))?;
        w.eventually(&[
            ("a1", "b3", PORT, true),
            ("a1", "b3", DENIED_PORT, false),
            ("a2", "b3", PORT, false),
        ])
    })();
    e(w.cluster
        .delete_cluster("adminnetworkpolicy", "e2e-a1-to-b3"))?;
    e(w.cluster
        .delete_cluster("baselineadminnetworkpolicy", "default"))?;
    r?;
    w.eventually(&[("a2", "b3", PORT, true)])
}

fn relabel_moves_a_pod_into_a_subject(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&cnp(
        "e2e-locked",
        "Admin",
        30,
        pods_labelled(json!({"role": "locked"})),
        ingress("nobody", "Deny", json!([{"namespaces": {}}])),
    )))?;
    let label = |value: &str| {
        e(w.cluster
            .kubectl(
                &["-n", NS, "label", "pod", "b3", value, "--overwrite"],
                None,
            )
            .map(|_| ()))
    };
    let r = (|| {
        w.eventually(&[("a1", "b3", PORT, true), ("b1", "b3", PORT, true)])?;
        label("role=locked")?;
        w.eventually(&[("a1", "b3", PORT, false), ("b1", "b3", PORT, false)])?;
        label("role-")?;
        w.eventually(&[("a1", "b3", PORT, true), ("b1", "b3", PORT, true)])
    })();
    label("role-")?;
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-locked"))?;
    r
}

fn egress_to_nodes_peers_follows_node_labels(w: &mut World) -> Result<(), String> {
    // node-b's underlay address, as a kubelet would report it in status.addresses.
    const NODE_PORT: u16 = 9400;
    let node_b = SocketAddr::new(IpAddr::from([192, 168, 200, 2]), NODE_PORT);
    e(w.responder.listen(
        &w.nodes[1].topo.node,
        &[node_b.ip()],
        NODE_PORT,
        Protocol::Tcp,
    ))?;
    let status = json!({"status": {"addresses": [
        {"type": "InternalIP", "address": node_b.ip().to_string()},
        {"type": "Hostname", "address": "node-b"}]}});
    e(w.cluster
        .kubectl(
            &[
                "patch",
                "node",
                "node-b",
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )
        .map(|_| ()))?;
    let label = |value: &str| {
        e(w.cluster
            .kubectl(&["label", "node", "node-b", value, "--overwrite"], None)
            .map(|_| ()))
    };
    let reaches = |w: &World, pod: &str| w.ns(pod).tcp_connects(node_b, PROBE);
    let until = |w: &World, want: [(&str, bool); 2]| {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let wrong: Vec<String> = want
                .iter()
                .filter(|(pod, ok)| reaches(w, pod) != *ok)
                .map(|(pod, ok)| format!("{pod} -> node-b {node_b} expected {ok}"))
                .collect();
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(wrong.join(", "));
            }
        }
    };
    until(w, [("a1", true), ("a2", true)])?;
    e(w.cluster.apply(&cnp(
        "e2e-nodes",
        "Admin",
        10,
        pods_labelled(json!({"app": "a1"})),
        json!({"egress": [{"name": "no-target-node", "action": "Deny",
                           "to": [{"nodes": {"matchLabels": {"e2e-role": "target"}}}]}]}),
    )))?;
    let r = (|| {
        // No Node has the label yet: nothing matches.
        until(w, [("a1", true), ("a2", true)])?;
        label("e2e-role=target")?;
        until(w, [("a1", false), ("a2", true)])?;
        label("e2e-role-")?;
        until(w, [("a1", true), ("a2", true)])
    })();
    label("e2e-role-")?;
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-nodes"))?;
    r
}

/// A DNS server on b1 answering `svc.e2e.example` with b2's address; a1 (node-a) may reach
/// its resolver and the name, nothing else: after resolving, a1 reaches b2 at once (the answer
/// crossed node-a's forward hook and was held until the address was in a1's rule set), never b3.
fn domain_names_learn_from_dns_answers(w: &mut World) -> Result<(), String> {
    use nftpol_testbed::dns::Record;
    use simple_dns::rdata::RData;
    use simple_dns::{CLASS, Name, Packet};
    use std::net::UdpSocket;
    let b1 = World::ip("b1");
    let b2 = World::ip("b2");
    let sock = w
        .ns("b1")
        .run(move || UdpSocket::bind(SocketAddr::new(b1, 53)))
        .map_err(|e| format!("{e:#}"))?
        .map_err(|e| format!("binding DNS on b1: {e}"))?;
    let IpAddr::V4(b2_v4) = b2 else {
        return Err("b2 has no IPv4 address".into());
    };
    std::thread::spawn(move || {
        nftpol_testbed::dns::serve_udp(sock, move |name| {
            (name == "svc.e2e.example").then_some((Record::A(b2_v4), 300))
        })
    });
    let resolve_connect = |w: &World| -> Result<bool, String> {
        w.ns("a1")
            .run(move || {
                let mut p = Packet::new_query(9);
                p.questions.push(simple_dns::Question::new(
                    Name::new_unchecked("svc.e2e.example"),
                    simple_dns::QTYPE::TYPE(simple_dns::TYPE::A),
                    simple_dns::QCLASS::CLASS(CLASS::IN),
                    false,
                ));
                let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .map_err(|e| e.to_string())?;
                let q = p.build_bytes_vec().map_err(|e| e.to_string())?;
                s.send_to(&q, SocketAddr::new(b1, 53))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 1500];
                let n = s
                    .recv(&mut buf)
                    .map_err(|e| format!("no DNS answer: {e}"))?;
                let got = Packet::parse(&buf[..n])
                    .ok()
                    .and_then(|a| {
                        a.answers.iter().find_map(|rr| match &rr.rdata {
                            RData::A(a) => Some(IpAddr::from(std::net::Ipv4Addr::from(a.address))),
                            _ => None,
                        })
                    })
                    .ok_or("an answer without the address")?;
                if got != b2 {
                    return Err(format!("resolved {got}, expected {b2}"));
                }
                Ok(TcpStream::connect_timeout(&SocketAddr::new(b2, PORT), PROBE).is_ok())
            })
            .map_err(|e| format!("{e:#}"))?
    };
    e(w.cluster.apply(&cnp(
        "e2e-domains",
        "Admin",
        10,
        pods_labelled(json!({"app": "a1"})),
        json!({"egress": [
            {"name": "dns", "action": "Accept", "to": [pods_labelled(json!({"app": "b1"}))],
             "protocols": [{"udp": {"destinationPort": {"number": 53}}}]},
            {"name": "svc", "action": "Accept", "to": [{"domainNames": ["svc.e2e.example"]}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    )))?;
    let r = (|| {
        // Enforced once b3 is out of reach; b2 too, until a1 resolves the name.
        w.eventually(&[("a1", "b3", PORT, false), ("a1", "b2", PORT, false)])?;
        if !resolve_connect(w)? {
            return Err("a1 resolved svc.e2e.example but its first connection to b2 failed".into());
        }
        w.eventually(&[("a1", "b3", PORT, false), ("a2", "b3", PORT, true)])
    })();
    e(w.cluster
        .delete_cluster("clusternetworkpolicy", "e2e-domains"))?;
    w.eventually(&[("a1", "b3", PORT, true)])?;
    r
}

fn removed_crds_stop_their_policies_without_a_restart(w: &mut World) -> Result<(), String> {
    e(w.cluster.apply(&cnp(
        "e2e-last",
        "Admin",
        10,
        pods_labelled(json!({"app": "b2"})),
        ingress(
            "no-a1",
            "Deny",
            json!([pods_labelled(json!({"app": "a1"}))]),
        ),
    )))?;
    w.eventually(&[("a1", "b2", PORT, false)])?;
    let from: Vec<u64> = w.nodes.iter().map(log_len).collect();
    for name in CRD_NAMES {
        e(w.cluster
            .kubectl(&["delete", "crd", name, "--wait=true"], None)
            .map(|_| ()))?;
    }
    // Deleting a CRD deletes its objects: the Deny goes with it.
    w.eventually(&[("a1", "b2", PORT, true)])?;
    for (n, from) in w.nodes.iter().zip(from) {
        wait_for_log(n, from, &["ClusterNetworkPolicy", "CRD removed"])?;
    }
    not_restarted(w)
}

#[test]
#[ignore = "needs the control plane hack/e2e.sh starts: run hack/e2e.sh"]
fn e2e() {
    let state = std::env::var_os("NFTPOL_E2E_STATE")
        .map(PathBuf::from)
        .expect("NFTPOL_E2E_STATE names the cluster hack/kube/up.sh started: run hack/e2e.sh");
    let mut world = build_world(&state).expect("building the two-node cluster");
    let scenarios: Vec<(&str, Scenario)> = vec![
        (
            "baseline: every pod reaches every pod across nodes",
            baseline,
        ),
        (
            "ClusterNetworkPolicy CRDs installed while the daemons run: picked up, no restart",
            cluster_policy_crds_picked_up_without_a_restart,
        ),
        (
            "an Admin Deny overrides an allowing NetworkPolicy (ingress and egress)",
            admin_deny_overrides_an_allowing_network_policy,
        ),
        (
            "an Admin Pass falls to the NetworkPolicy, an Admin Accept skips it",
            admin_pass_falls_to_network_policy,
        ),
        (
            "a Baseline Deny applies where no NetworkPolicy isolates (per direction)",
            baseline_deny_where_no_network_policy_isolates,
        ),
        (
            "v1alpha1 AdminNetworkPolicy over BaselineAdminNetworkPolicy",
            v1alpha1_admin_and_baseline_admin_network_policies,
        ),
        (
            "a pod relabel moves it into and out of a ClusterNetworkPolicy subject",
            relabel_moves_a_pod_into_a_subject,
        ),
        (
            "egress to a nodes peer follows the Nodes' labels and addresses",
            egress_to_nodes_peers_follows_node_labels,
        ),
        (
            "domainNames: an answer from a resolver on the other node opens the name's address",
            domain_names_learn_from_dns_answers,
        ),
        (
            "CRDs removed: their policies stop applying, no restart",
            removed_crds_stop_their_policies_without_a_restart,
        ),
        (
            "ingress is checked at the destination node",
            ingress_checked_at_the_destination,
        ),
        (
            "egress is checked at the source node",
            egress_checked_at_the_source,
        ),
        (
            "policy update and pod relabel",
            policy_update_and_pod_relabel,
        ),
        ("namespace relabel", namespace_relabel),
        (
            "endPort: a port range sent through the API server, enforced",
            end_port_range,
        ),
        (
            "a deleted pod's address reused by a pod with other labels",
            deleted_pod_address_reused_by_another,
        ),
        (
            "daemon restart under traffic",
            daemon_restart_keeps_enforcing,
        ),
        (
            "API server SIGKILL, restart and 410 under traffic",
            api_outage_and_410,
        ),
        (
            "each daemon is ready and its metrics add up",
            daemons_serve_metrics_and_probes,
        ),
        (
            "--strict cuts, --default-deny-unknown from the Node's podCIDR",
            strict_and_unknown_on_node_a,
        ),
        (
            "flow logs name the pods and policies; a namespace in audit mode",
            flow_logs_and_namespace_audit,
        ),
        (
            "manifests/ pass a client dry run and a server-side apply",
            manifests_apply,
        ),
        (
            "uninstall: rules stay after the daemons stop, cleanup opens the nodes",
            uninstall,
        ),
    ];
    let mut results = BTreeMap::new();
    for (i, (name, scenario)) in scenarios.into_iter().enumerate() {
        let r = scenario(&mut world);
        eprintln!(
            "e2e {}: {name}: {}",
            i + 1,
            match &r {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        results.insert(i, r.is_ok());
    }
    let passed = results.values().filter(|ok| **ok).count();
    let failed = results.len() - passed;
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        for n in &world.nodes {
            eprintln!("--- {} daemon log (tail)", n.name);
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
            // What went wrong may be far from the end: the warnings and errors, minus the
            // API client's note on the test cluster's self-signed certificate.
            let problems: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| {
                    (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("cert bypassed")
                })
                .collect();
            eprintln!("--- {} daemon warnings and errors (last 40)", n.name);
            eprintln!(
                "{}",
                problems[problems.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    assert_eq!(failed, 0, "{failed} e2e scenarios failed");
}
